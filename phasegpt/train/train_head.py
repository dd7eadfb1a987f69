"""Train a head end to end: data -> features (cached) -> sweep/fit/calibrate -> head folder."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from phasegpt.head import Head
from phasegpt.tap import num_layers
from phasegpt.train.data import Example, check_labels, split
from phasegpt.train.features import extract
from phasegpt.train.fit_head import FitConfig, fit_head
from phasegpt.verdict import LABELS


def fitting(model: Any, examples: Sequence[Example], max_tokens: int | None = None) -> tuple[list[Example], list[Example]]:
    """Split examples into those whose chat prompt fits (the model's context, and ``max_tokens``) and the rest."""
    keep, long = [], []
    for e in examples:
        try:
            n = len(model.encode(e.request, e.context))  # raises beyond the model's context
            fits = max_tokens is None or n <= max_tokens
        except ValueError:
            fits = False
        (keep if fits else long).append(e)
    return keep, long


def default_candidates(n: int) -> list[int]:
    """Candidate layers for the sweep: about ten, spread over the upper three quarters of the model.

    Refusal reasons are abstract features; probes on the first quarter's token-level
    states do worse, and the very last layers specialise in next-token prediction.
    """
    start = max(1, n // 4)
    step = max(1, (n - start) // 10)
    return sorted(set(range(start, n, step)) | {n - 1})


def train_head(model: Any, examples: Sequence[Example], out: str | Path, *, dev: Sequence[Example] | None = None,
               candidates: Sequence[int] | None = None, fit: FitConfig = FitConfig(), batch_size: int = 16,
               use_cache: bool = True, progress: bool = True, training: dict[str, Any] | None = None,
               max_tokens: int | None = None) -> Head:
    """Train a refusal-reason head for ``model`` and write it to ``out``.

    Args:
        model: a ``phasegpt.Model`` (the base the head is for, with its adapter if any).
        examples: labelled examples; those whose ``split`` is ``dev`` (or a stable 20% of
            the rest, when ``dev`` is not given) tune layers, temperature and thresholds;
            ``test`` items are never used.
        out: folder to write ``head.json`` + ``head.safetensors`` into (atomically).
        dev: explicit validation examples (then ``examples`` are all used for training).
        candidates: layers to sweep (default ``default_candidates``).
        fit: fitting options.
        batch_size: prompts per forward pass during feature extraction.
        use_cache: reuse and extend the feature cache.
        progress: progress bar and sweep lines on stderr.
        training: free-form record of how the head was made (data files, command), kept in head.json.
        max_tokens: skip training/dev prompts longer than this (attention on CPU grows with the
            square of the length; the longest RAG prompts dominate extraction time).

    Returns:
        The trained head (already saved).

    Raises:
        ValueError: fewer than two labels in the training or dev data.
    """
    if dev is None:
        train, dev = split(list(examples), seed=fit.seed)
    else:
        train = [e for e in examples if e.split != "test"]
    log = (lambda s: print(s, file=sys.stderr)) if progress else (lambda s: None)
    (train, long_train), (dev, long_dev) = fitting(model, train, max_tokens), fitting(model, dev, max_tokens)
    if long_train or long_dev:
        limit = f"{max_tokens} tokens" if max_tokens else "the model's context"
        log(f"skipped {len(long_train) + len(long_dev)} examples longer than {limit}")
    check_labels(train, "the training split")
    check_labels(dev, "the dev split")
    n = num_layers(model.loaded.model)
    cands = list(candidates) if candidates is not None else default_candidates(n)
    if fit.layers is not None:  # fixed layers are model layer numbers; sweep them only
        cands = sorted({i % n for i in fit.layers})
        fit = FitConfig(**{**fit.__dict__, "layers": tuple(range(len(cands)))})
    t0 = time.perf_counter()
    xtr = extract(model, train, cands, batch_size=batch_size, use_cache=use_cache, progress=progress)
    xdv = extract(model, dev, cands, batch_size=batch_size, use_cache=use_cache, progress=progress)
    t1 = time.perf_counter()
    log(f"features: {len(train)} train + {len(dev)} dev prompts, layers {cands}, {t1 - t0:.1f}s")
    ytr = np.array([LABELS.index(e.label) for e in train])
    ydv = np.array([LABELS.index(e.label) for e in dev])
    loaded = model.loaded
    identity = {
        "base_model": loaded.name, "base_fingerprint": loaded.fingerprint,
        "adapter_sha256": loaded.adapter_sha256, "hidden_size": int(loaded.config.get("hidden_size", 0)),
        "training": {**(training or {}), "seed": fit.seed, "candidates": cands, "kind": fit.kind,
                     "skipped_too_long": len(long_train) + len(long_dev),
                     "feature_seconds": round(t1 - t0, 2)},
    }
    head = fit_head(xtr, ytr, xdv, ydv, layers=cands, cfg=fit, identity=identity, log=log)
    head.config.training["fit_seconds"] = round(time.perf_counter() - t1, 2)
    log(f"head: layers {list(head.config.layers)}, pooling {head.config.pooling}, "
        f"temperature {head.config.temperature:.2f}, dev macro-F1 {head.config.metrics['dev_macro_f1']:.3f}")
    head.save(out)
    return head
