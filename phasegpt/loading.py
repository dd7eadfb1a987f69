"""One way in for every model: MLX folders, Hugging Face repo ids and GGUF files, plus LoRA adapters.

The heavy lifting is mlx-lm's (``load_model``, ``load_tokenizer``, ``load_adapters``,
``dequantize_model``); this module adds the checks and the dtype policy:

* on a CPU device, quantized weights are dequantized to float32 when they fit in memory,
  because MLX's quantized and half-precision CPU kernels are scalar and single-threaded
  while float32 matmuls go through the (optimized) BLAS; on a GPU they stay quantized
  (GGUF files are decoded tensor by tensor straight into that dtype, ``phasegpt.gguf``);
* every model gets a fingerprint of its config and weights, computed before any dtype
  change or adapter, so a head or adapter trained on one base refuses to load on another
  (``phasegpt train-adapter`` records it in ``adapter_config.json``; an mlx-lm adapter
  without one loads with a warning, since only its tensor shapes can be checked).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from phasegpt.errors import MismatchError, ModelLoadError
from phasegpt.fingerprint import fingerprint_model
from phasegpt.hub import resolve

DTYPES = ("auto", "float32", "float16", "bfloat16", "native")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run.

    Attributes:
        model: the mlx-lm model (LoRA layers applied if an adapter was given).
        tokenizer: mlx-lm's TokenizerWrapper.
        config: the model's config dict (mlx-lm ``config.json`` keys).
        name: a human name for the base model (repo id, folder or file name).
        fingerprint: hex digest of config and weights of the base, before dtype changes.
        path: local folder or file the model came from.
        adapter_path: the adapter folder, if any.
        adapter_sha256: SHA-256 of ``adapters.safetensors``, if any.
        dtype: the dtype the weights were left in (``"quantized"`` if still quantized).
    """

    model: nn.Module
    tokenizer: Any
    config: dict
    name: str
    fingerprint: str
    path: Path
    adapter_path: Path | None
    adapter_sha256: str | None
    dtype: str


def load_model(
    model: str | Path,
    *,
    adapter: str | Path | None = None,
    dtype: str = "auto",
    fuse: bool = False,
    allow_base_mismatch: bool = False,
) -> LoadedModel:
    """Load a base model, optionally with a LoRA adapter.

    Args:
        model: an mlx-lm model folder, a Hugging Face repo id, or a ``.gguf`` file.
        adapter: an mlx-lm adapter folder (``adapter_config.json`` + ``adapters.safetensors``).
        dtype: ``"auto"`` (float32 on CPU when it fits, as stored on GPU), ``"float32"``,
            ``"float16"``, ``"bfloat16"``, or ``"native"`` (leave weights as stored; GGUF K- and
            I-quants, which MLX cannot run as stored, are re-quantized to MLX's affine format,
            see ``phasegpt.gguf.quants``).
        fuse: merge the adapter into the base weights (only for unquantized weights).
        allow_base_mismatch: load an adapter whose recorded base-model fingerprint is not this
            model's (with a warning) instead of refusing it; for an adapter you know fits, such
            as one trained on another copy or conversion of the same weights.

    Returns:
        The loaded model.

    Raises:
        FileNotFoundError: missing path.
        ModelLoadError: unreadable model (no config.json, corrupt weights, unsupported GGUF...).
        MismatchError: the adapter does not fit the model, or was trained on another base
            (unless ``allow_base_mismatch``).
        ValueError: a bad option.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    path = resolve(model)
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path} is a file but not a .gguf; pass an mlx-lm model folder or a .gguf file")
        name = path.stem
        gguf = _load_gguf(path, dtype, name)  # the dtype policy is applied tensor by tensor while loading
        net, tokenizer, config, fingerprint, final_dtype = gguf.model, gguf.tokenizer, gguf.config, gguf.fingerprint, gguf.dtype
    else:
        net, tokenizer, config = _load_folder(path)
        name = str(model) if not Path(model).expanduser().exists() else path.name
        fingerprint = fingerprint_model(net, config)
        final_dtype = _apply_dtype(net, dtype, name)
    adapter_path = adapter_sha = None
    if adapter is not None:
        adapter_path, adapter_sha = _apply_adapter(net, Path(adapter).expanduser(), name, fingerprint,
                                                   allow_base_mismatch)
        if fuse:
            _fuse(net, final_dtype)
    elif fuse:
        raise ValueError("fuse=True needs an adapter")
    net.eval()
    mx.eval(net.parameters())
    return LoadedModel(net, tokenizer, config, name, fingerprint, path, adapter_path, adapter_sha, final_dtype)


def _load_gguf(path: Path, dtype: str, name: str) -> Any:
    """``phasegpt.gguf.load_gguf`` with this module's dtype policy, memory checked from the header first.

    GGUF weights are decoded one tensor at a time straight into their final dtype (float32, or
    MLX's affine format for ``native``), so the policy is decided before any is decoded.
    """
    from phasegpt.gguf import load_gguf
    from phasegpt.gguf.reader import open_gguf
    from phasegpt.gguf.summary import weights_bytes

    file = open_gguf(path)
    target = _choose_dtype(dtype, name, lambda d: weights_bytes(file, d), stacklevel=4)
    return load_gguf(file, dtype=target)


def _load_folder(path: Path) -> tuple[nn.Module, Any, dict]:
    from mlx_lm.utils import load_model as mlx_load_model
    from mlx_lm.utils import load_tokenizer

    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json; pass an mlx-lm model folder (convert others with `mlx_lm.convert`)")
    if not list(path.glob("*.safetensors")):
        raise ModelLoadError(f"{path} has no .safetensors weights; convert the model with `mlx_lm.convert`")
    try:
        net, config = mlx_load_model(path)
    except (RuntimeError, OSError) as e:  # MLX's safetensors reader on corrupt/truncated files
        raise ModelLoadError(f"could not read the weights in {path}: {e}; the file is corrupt or truncated, download it again") from e
    except ValueError as e:  # unknown model_type or tensors that do not fit the architecture
        raise ModelLoadError(f"{path}: {e}") from e
    try:
        tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    except Exception as e:  # transformers raises many types here
        raise ModelLoadError(f"could not load the tokenizer in {path}: {e}; the folder needs tokenizer.json or tokenizer.model") from e
    return net, tokenizer, config


def _weights_bytes(model: nn.Module, itemsize: int) -> tuple[int, bool]:
    """Bytes the weights would take at ``itemsize`` once dequantized, and whether any are quantized."""
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))}
    total = 0
    for name, w in tree_flatten(model.parameters()):
        module, leaf = name.rsplit(".", 1) if "." in name else ("", name)
        q = quantized.get(module)
        if q is not None and leaf in ("scales", "biases"):
            continue
        total += (w.size * 32 // q.bits if q is not None and leaf == "weight" else w.size) * itemsize
    return total, bool(quantized)


def _available_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(mx.device_info().get("memory_size", 0)) if hasattr(mx, "device_info") else 0


def _choose_dtype(dtype: str, name: str, need: Callable[[str], int], *, stacklevel: int) -> str:
    """The dtype to load in: ``native`` (weights as stored) or a float dtype's name.

    ``auto`` is float32 on the CPU (as stored on a GPU) unless float32 would take over 0.8 of the
    available memory: then the weights stay as stored, with a warning. An explicit float dtype
    needing over 0.9 of it raises ``ModelLoadError``. ``need(dtype)`` gives the weights' bytes.
    """
    if dtype == "native" or (dtype == "auto" and mx.default_device() != mx.cpu):
        return "native"
    if dtype == "auto":
        bytes_, avail = need("float32"), _available_memory()
        if avail and bytes_ > 0.8 * avail:
            warnings.warn(
                f"{name}: float32 weights would take {bytes_ / 2**30:.1f} GiB of {avail / 2**30:.1f} GiB "
                "available, so they stay as stored (slow on CPU); pass dtype='native' to silence this",
                stacklevel=stacklevel + 1,
            )
            return "native"
        return "float32"
    bytes_, avail = need(dtype), _available_memory()
    if avail and bytes_ > 0.9 * avail:
        raise ModelLoadError(
            f"{name} in {dtype} needs {bytes_ / 2**30:.1f} GiB but only {avail / 2**30:.1f} GiB is available; "
            "use dtype='native' (keep weights quantized) or a smaller model"
        )
    return dtype


def _apply_dtype(model: nn.Module, dtype: str, name: str) -> str:
    from mlx_lm.utils import dequantize_model

    dtype = _choose_dtype(dtype, name, lambda d: _weights_bytes(model, getattr(mx, d).size)[0], stacklevel=3)
    if dtype == "native":
        return _current_dtype(model)
    target = getattr(mx, dtype)
    _, quantized = _weights_bytes(model, target.size)
    if quantized:
        dequantize_model(model)
    model.set_dtype(target)
    return dtype


def _current_dtype(model: nn.Module) -> str:
    for _, m in model.named_modules():
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            return "quantized"
    for _, w in tree_flatten(model.parameters()):
        return str(w.dtype).replace("mlx.core.", "")
    return "float32"


def _apply_adapter(model: nn.Module, adapter: Path, model_name: str, fingerprint: str,
                   allow_base_mismatch: bool) -> tuple[Path, str]:
    from mlx_lm.tuner.utils import load_adapters

    config_file, weights_file = adapter / "adapter_config.json", adapter / "adapters.safetensors"
    if not adapter.is_dir():
        raise FileNotFoundError(f"adapter folder not found: {adapter}")
    for f in (config_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} is missing; an adapter folder holds adapter_config.json and adapters.safetensors (as `mlx_lm.lora` writes them)")
    try:
        config = json.loads(config_file.read_text())
        weights = mx.load(str(weights_file))
    except (ValueError, RuntimeError) as e:
        raise ModelLoadError(f"could not read adapter {adapter}: {e}; the file is corrupt, train or download it again") from e
    caveat = _check_adapter_base(config, adapter, model_name, fingerprint, allow_base_mismatch)
    try:
        load_adapters(model, str(adapter))
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        raise MismatchError(f"adapter {adapter} does not fit {model_name}: {e}\nUse an adapter trained on this base model.") from e
    expected = {k for k, _ in tree_flatten(model.parameters()) if k.rsplit(".", 1)[-1] in ("lora_a", "lora_b")}
    missing = sorted(expected - set(weights))
    if missing:
        shown = "\n  ".join(missing[:20]) + (f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise MismatchError(f"adapter {adapter} does not fit {model_name}; tensors missing from it:\n  {shown}\nUse an adapter trained on this base model.")
    if caveat:
        warnings.warn(caveat, stacklevel=3)  # once it loaded: the shapes fit, the base is not proven
    return adapter, hashlib.sha256(weights_file.read_bytes()).hexdigest()


def _check_adapter_base(config: Any, adapter: Path, model_name: str, fingerprint: str, allow: bool) -> str | None:
    """Refuse an adapter that records another base model's fingerprint (unless ``allow``).

    Returns:
        The warning to give once the adapter has loaded, or None when its base is this model.
    """
    base = config.get("phasegpt", {}).get("base_model", {}) if isinstance(config, dict) else {}
    recorded = base.get("fingerprint") if isinstance(base, dict) else None
    if not recorded:
        return (f"adapter {adapter} records no base-model fingerprint (it was not written by `phasegpt "
                f"train-adapter`), so phasegpt cannot check that it was trained on {model_name}; only its tensor "
                "shapes were checked")
    if recorded == fingerprint:
        return None
    problem = (f"adapter {adapter} was trained on {base.get('name') or 'another model'} (fingerprint {recorded}), "
               f"not on {model_name} (fingerprint {fingerprint})")
    if not allow:
        raise MismatchError(f"{problem}. Load it on the base it was trained on, or pass allow_base_mismatch=True "
                            "(--allow-base-mismatch) if you know it fits this one.")
    return f"{problem}; loaded anyway (allow_base_mismatch)"


def _fuse(model: nn.Module, dtype: str) -> None:
    if dtype == "quantized":
        raise ValueError("fuse=True needs unquantized weights (dtype float32/float16/bfloat16); quantized bases keep the adapter unfused")
    fused = [(n, m.fuse()) for n, m in model.named_modules() if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
