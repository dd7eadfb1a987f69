"""Which base model this is: a short digest of a model's config and a sample of its weights.

Heads and adapters record the fingerprint of the base they were trained on, and refuse (or
warn) when loaded onto another. ``phasegpt.loading`` fingerprints MLX models;
``phasegpt.gguf.loader`` fingerprints a GGUF file's tensors as the file holds them.
"""

from __future__ import annotations

import hashlib
import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

SAMPLE = 2048  # elements per tensor that enter the fingerprint (evenly strided)


def fingerprint_model(model: nn.Module, config: dict) -> str:
    """A short digest of the architecture config and a strided sample of every weight.

    Sampling keeps it fast on 7B models while still telling two bases (or two fine-tunes)
    apart. Computed on weights as stored, so the same file gives the same fingerprint
    whatever dtype it is later cast to.
    """
    return fingerprint_records(config, {name: weight_record(name, w) for name, w in tree_flatten(model.parameters())})


def fingerprint_records(config: dict, records: dict[str, bytes]) -> str:
    """The digest of ``config`` and one ``weight_record`` per parameter name (hashed in name order)."""
    h = hashlib.sha256()
    keys = sorted(k for k in config if k not in ("quantization", "quantization_config", "torch_dtype"))
    h.update(json.dumps({k: config[k] for k in keys}, sort_keys=True, default=str).encode())
    for name in sorted(records):
        h.update(records[name])
    return h.hexdigest()[:16]


def weight_record(name: str, w: mx.array | np.ndarray, *, shape: tuple[int, ...] | None = None,
                  dtype: str | None = None) -> bytes:
    """What one weight adds to the fingerprint: its name, shape and dtype, and a strided sample.

    ``shape``/``dtype`` override what ``w`` says (a GGUF K-quant enters as its raw bytes under its
    logical shape and type name, see ``phasegpt.gguf.loader``).
    """
    flat = w.reshape(-1)
    sample = flat[:: max(1, flat.size // SAMPLE)][:SAMPLE]
    if isinstance(sample, mx.array) and sample.dtype == mx.bfloat16:
        sample = sample.astype(mx.float32)
    label = f"{name}:{tuple(w.shape) if shape is None else shape}:{w.dtype if dtype is None else dtype}"
    return label.encode() + np.asarray(sample).tobytes()
