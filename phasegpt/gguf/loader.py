"""Load a GGUF file as an mlx-lm model, its tokenizer and config, one tensor at a time.

The header is read first (``reader``) and checked: architecture (``architectures``), tensor types
(``quants``), every tensor name and shape against the model built from the file's own metadata,
before any tensor data is decoded. Then each tensor is decoded into its final form and the file's
bytes for it are left behind, so peak memory stays near the finished model's size.
"""

from __future__ import annotations

import importlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.tokenizer_utils import TokenizerWrapper

from phasegpt.errors import ModelLoadError
from phasegpt.gguf import quants
from phasegpt.gguf.architectures import TOP, Architecture, Metadata, architecture
from phasegpt.gguf.reader import REINSTALL, GGUFFile, Tensor, open_gguf
from phasegpt.gguf.tokenizer import tokenizer_from_metadata
from phasegpt.fingerprint import fingerprint_records, weight_record


@dataclass(frozen=True)
class GGUFModel:
    """What ``load_gguf`` returns.

    Attributes:
        model: the mlx-lm model, in eval mode, weights evaluated.
        tokenizer: mlx-lm's ``TokenizerWrapper`` (chat template included).
        config: the mlx-lm ``config.json``-style dict the model was built from (with a
            ``quantization`` entry when modules are quantized).
        fingerprint: ``phasegpt.fingerprint.fingerprint_records`` of the weights as the file holds them, the
            same whatever ``dtype`` they were loaded in.
        dtype: ``float32``/``float16``/``bfloat16``, or ``quantized`` when any module is.
    """

    model: nn.Module
    tokenizer: TokenizerWrapper
    config: dict[str, Any]
    fingerprint: str
    dtype: str


@dataclass(frozen=True)
class _Entry:
    """One file tensor headed for one model parameter."""

    tensor: Tensor
    target: str  # mlx-lm parameter name ending in .weight or .bias
    plan: quants.Plan
    rows: int = 0  # heads whose q/k rows must be put back in Hugging Face order (0: none)
    shift: float = 0.0


def load_gguf(path: str | Path | GGUFFile, *, dtype: str = "native") -> GGUFModel:
    """Load a GGUF file (llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3) as an mlx-lm model.

    Args:
        path: The ``.gguf`` file (or its header, already read by ``reader.open_gguf``), in any
            tensor types ``quants.READABLE`` lists.
        dtype: ``float32``, ``float16`` or ``bfloat16`` for every weight, or ``native``: floats as
            stored, Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 quantized exactly as MLX affine, K- and I-quants
            re-quantized to MLX affine (see ``phasegpt.gguf.quants``).

    Returns:
        The model, tokenizer, config, fingerprint and resulting dtype.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: an unknown ``dtype``.
        ModelLoadError: the file is not a readable GGUF, describes another architecture, uses an
            unsupported tensor type, or its tensors do not fit the model its metadata describes.
    """
    if dtype not in quants.TARGETS:
        raise ValueError(f"unknown GGUF dtype {dtype!r}; choose one of {', '.join(quants.TARGETS)}")
    file = path if isinstance(path, GGUFFile) else open_gguf(path)
    arch, config, model, entries = prepare(file, dtype)
    quantized = {e.target.rsplit(".", 1)[0]: e.plan for e in entries if e.plan.quantized}
    if quantized:
        modes = {name: {"group_size": p.group_size, "bits": p.bits, "mode": "affine"} for name, p in quantized.items()}
        nn.quantize(model, class_predicate=lambda name, _: modes.get(name, False))
        # mlx-lm's config convention: the commonest setting, plus per-module entries that differ.
        common = dict(Counter(tuple(sorted(m.items())) for m in modes.values()).most_common(1)[0][0])
        config["quantization"] = {**common, **{m: mode for m, mode in sorted(modes.items()) if mode != common}}

    weights, records = {}, {}
    for entry in entries:
        base, leaf = entry.target.rsplit(".", 1)
        data = _unpermute_rows(entry.tensor.data, entry.rows) if entry.rows else entry.tensor.data
        params, stored = quants.load(entry.tensor.kind, data, entry.tensor.shape, entry.plan, shift=entry.shift)
        if leaf == "bias":  # quants.load names a tensor's array "weight"; a bias is never quantized
            params, stored = {"bias": params["weight"]}, ({"bias": stored["weight"]} if stored else None)
        weights.update({f"{base}.{key}": value for key, value in params.items()})
        if stored is None:  # K- and I-quants enter the fingerprint as the file's bytes
            records[entry.target] = weight_record(entry.target, np.asarray(data), shape=entry.tensor.shape,
                                                  dtype=entry.tensor.kind)
        else:
            records.update({f"{base}.{key}": weight_record(f"{base}.{key}", value) for key, value in stored.items()})
        file.release(entry.tensor)
        mx.clear_cache()  # MLX would keep this tensor's temporaries (a float16 copy, say) for reuse
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    model.eval()
    tokenizer = tokenizer_from_metadata(file.metadata, file.path, arch.model_type)
    return GGUFModel(model, tokenizer, config, fingerprint_records(config, records), "quantized" if quantized else dtype)


def prepare(file: GGUFFile, dtype: str) -> tuple[Architecture, dict[str, Any], nn.Module, list[_Entry]]:
    """Check the header and plan every tensor, without decoding any tensor data.

    Returns:
        The architecture, the mlx-lm config, the model (its parameters still lazy and never
        computed), and one entry per file tensor that becomes a parameter.

    Raises:
        ModelLoadError: as ``load_gguf``.
    """
    arch = architecture(file)
    unreadable = [t for t in file.tensors if t.kind not in quants.READABLE]
    if unreadable:
        more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
        raise ModelLoadError(
            f"unsupported GGUF quantization {unreadable[0].kind} in tensor {unreadable[0].name}{more} of {file.path}; "
            "phasegpt reads F32/F16/BF16, Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, the K-quants and the I-quants: "
            "re-quantize it with llama.cpp's llama-quantize (e.g. to Q4_K_M)"
        )
    config = arch.config(Metadata(file, file.architecture))
    model_class = importlib.import_module(f"mlx_lm.models.{arch.model_type}")
    model = model_class.Model(model_class.ModelArgs.from_dict(config))
    if config["tie_word_embeddings"] and hasattr(model, "lm_head"):
        model.pop("lm_head")  # gemma3_text builds it and drops it in sanitize() when the file has none
        if hasattr(model, "tie_word_embeddings"):
            model.tie_word_embeddings = True
    modules = dict(model.named_modules())
    expected = {name: tuple(value.shape) for name, value in tree_flatten(model.parameters())}
    heads = {"self_attn.q_proj": config["num_attention_heads"], "self_attn.k_proj": config["num_key_value_heads"]}

    entries, unexpected, mismatched, seen = [], [], [], set()
    for tensor in file.tensors:
        target = arch.mlx_name(tensor.name)
        if target is None or target not in expected:
            if tensor.name not in arch.consumed:
                unexpected.append(tensor.name)
            continue
        seen.add(target)
        if expected[target] != tensor.shape:
            mismatched.append(f"{tensor.name} {_shape(tensor.shape)} (the metadata needs {_shape(expected[target])})")
            continue
        module = target.rsplit(".", 1)[0]
        quantizable = target.endswith(".weight") and isinstance(modules.get(module), (nn.Linear, nn.Embedding))
        plan = quants.plan(tensor.kind, tensor.shape, dtype, quantizable=quantizable)
        rows = next((count for part, count in heads.items() if module.endswith(part)), 0) if arch.permute_qk else 0
        shift = arch.norm_shift if module.endswith("norm") else 0.0
        entries.append(_Entry(tensor, target, plan, rows, shift))
    missing = sorted(_gguf_name(arch, name) for name in expected if name not in seen)
    if missing or unexpected or mismatched:
        problems = [f"{label}: {', '.join(names)}" for label, names in
                    (("missing", missing), ("unexpected", sorted(unexpected)), ("wrong shape", mismatched)) if names]
        raise ModelLoadError(f"{file.path} does not fit a {file.architecture} model built from its own metadata "
                             f"({'; '.join(problems)}); the file is incomplete or not a plain {file.architecture} "
                             f"model: {REINSTALL}")
    return arch, config, model, entries


def _gguf_name(arch: Architecture, name: str) -> str:
    """The GGUF tensor name of an mlx-lm parameter (for error messages)."""
    module, kind = name.rsplit(".", 1)
    for gguf, mlx in TOP.items():
        if module == mlx:
            return f"{gguf}.{kind}"
    parts = module.split(".", 3)  # model, layers, N, rest
    if len(parts) == 4:
        back = {mlx: gguf for gguf, mlx in arch.layer.items()}
        return f"blk.{parts[2]}.{back.get(parts[3], parts[3])}.{kind}"
    return name


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def _unpermute_rows(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo convert_hf_to_gguf's rotary permutation of q/k rows (on raw bytes: rows are independent).

    llama.cpp stores each head's rows interleaved (pairs for GPT-J style rope) where Hugging Face
    keeps them as two halves.
    """
    out = rows.shape[0]
    grouped = rows.reshape(n_heads, out // n_heads // 2, 2, *rows.shape[1:])  # heads, half, pair, ...
    return np.ascontiguousarray(grouped.swapaxes(1, 2)).reshape(rows.shape)
