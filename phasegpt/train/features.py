"""Batched feature extraction for head training, with an on-disk cache.

Features are the same pooled tapped states the head reads at inference time, for every
candidate layer and both poolings at once: an array (N, L, 2, D) = (examples, layers,
[last, mean], hidden). They come from ``Model.prefill``, the batched prefill path
``classify`` uses, so training and inference cannot drift apart.

The cache lives in ``$PHASEGPT_HOME/features/`` and is keyed by the model fingerprint,
adapter, prompt template, layers and each example's text, so a second run (another
pooling, another seed, more data) only computes what is new.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import mlx.core as mx
import numpy as np

from phasegpt.api import spans_of
from phasegpt.head import pool
from phasegpt.paths import user_dir
from phasegpt.train.data import Example
from phasegpt.train.fit_head import select

SAVE_EVERY = 300.0  # seconds between cache checkpoints during a long extraction


def cache_file(model, layers: Sequence[int]) -> Path:
    """Where features of ``model`` at ``layers`` are cached."""
    ident = json.dumps([model.loaded.fingerprint, model.loaded.adapter_sha256, model.template,
                        model.system, list(layers)])
    return user_dir() / "features" / f"{hashlib.sha256(ident.encode()).hexdigest()[:20]}.npz"


def extract(model, examples: Sequence[Example], layers: Sequence[int], *, batch_size: int = 16,
            use_cache: bool = True, progress: bool = True) -> np.ndarray:
    """Pooled features (N, L, 2, D) float32 for ``examples`` at ``layers`` ([last, mean] per layer).

    Args:
        model: a ``phasegpt.Model``.
        examples: labelled or unlabelled examples (prompt and context are used).
        layers: candidate layers (block indices).
        batch_size: prompts per forward step (``Model.rounds``).
        use_cache: read and extend the on-disk cache.
        progress: show a progress bar on stderr.
    """
    layers = list(layers)
    keys = [e.key for e in examples]
    path = cache_file(model, layers)
    cached: dict[str, np.ndarray] = {}
    if use_cache and path.is_file():
        try:
            with np.load(path) as z:
                cached = dict(zip(z["keys"].tolist(), z["feats"]))
        except (OSError, ValueError, KeyError):
            cached = {}  # a damaged cache is only a cache: recompute
    todo = list({k: e for k, e in zip(keys, examples) if k not in cached}.items())  # model.rounds() orders by length
    if todo:
        encoded = [(k, model.prepare(e.request, e.context)) for k, e in todo]
        save = (lambda: _save(path, cached)) if use_cache else (lambda: None)
        _run(model, encoded, layers, batch_size, cached, progress, save)
        save()
    return np.stack([cached[k] for k in keys]).astype(np.float32)


def _run(model, encoded, layers, batch_size, out, progress, save) -> None:
    import click

    last_save = time.monotonic()
    bar = click.progressbar(length=len(encoded), label="extracting features", file=sys.stderr) if progress else None
    try:
        for idx in model.rounds([len(r.ids) for _, r in encoded], batch_size):
            chunk = [encoded[i] for i in idx]
            parts = model.prefill([r.ids for _, r in chunk], layers)
            spans = spans_of([r for _, r in chunk], [len(part) for part, _, _ in parts])
            feats = [pool(hidden, tuple(layers), "last+mean", lengths, span)  # (B, L*2*D) per part
                     for (_, hidden, lengths), span in zip(parts, spans)]
            mx.eval(feats)
            arr = np.concatenate([np.array(f) for f in feats]).reshape(len(chunk), len(layers), 2, -1)
            for (k, _), row in zip(chunk, arr):
                out[k] = row
            if bar is not None:
                bar.update(len(chunk))
            if time.monotonic() - last_save > SAVE_EVERY:  # long runs keep their progress if stopped
                save()
                last_save = time.monotonic()
    finally:
        if bar is not None:
            bar.render_finish()


def _save(path: Path, cached: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, keys=np.array(list(cached)), feats=np.stack(list(cached.values())))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def predict(model, examples: Sequence[Example], *, batch_size: int = 16, use_cache: bool = True,
            progress: bool = True) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """The head's probabilities (N, C), labels and OOD scores (None without the statistic) for
    ``examples``, as ``Model.classify`` gives them.

    A linear or MLP head reads the layers it was swept over from the feature cache (the same
    batched prefill and pooling as ``classify``, so the same numbers to float rounding):
    re-scoring a retrained head costs nothing. A tower head goes through ``Model.classify``
    itself (its tower must run on each prompt's states). Rows the per-token state cache of
    those layers holds (``train-head --states cache``) are pooled from it (float16 rounding).
    """
    head = model.head
    if head.config.kind == "tower":
        return _classify_all(model, examples, batch_size, progress)
    layers = list(head.config.training.get("candidates") or head.config.layers)
    if not set(head.config.layers) <= set(layers):
        layers = list(head.config.layers)
    feats = _features(model, examples, layers, batch_size, use_cache, progress)
    x = mx.array(select(feats, tuple(layers.index(i) for i in head.config.layers), head.config.pooling))
    ood = head.ood(x)
    ood = None if ood is None else np.array(ood)
    probs = head.adjust(np.array(head.probs(x)), ood)
    return probs, head.decide(probs), ood


def _features(model, examples: Sequence[Example], layers: list[int], batch_size: int, use_cache: bool,
              progress: bool) -> np.ndarray:
    """``extract``'s features, taking the rows the state cache of ``layers`` holds from it."""
    from phasegpt.train.states import StateCache, cache_dir, pooled_features

    folder = cache_dir(model, layers)
    if not use_cache or not (folder / "index.json").is_file():
        return extract(model, examples, layers, batch_size=batch_size, use_cache=use_cache, progress=progress)
    states = StateCache(folder, layers, int(model.loaded.config["hidden_size"]))
    hit = [i for i, e in enumerate(examples) if e.key in states]
    held = set(hit)
    miss = [i for i in range(len(examples)) if i not in held]
    feats = np.zeros((len(examples), len(layers), 2, states.hidden), np.float32)
    if hit:
        feats[hit] = pooled_features(states, [examples[i] for i in hit], sorted(layers))[:, [sorted(layers).index(l) for l in layers]]
    if miss:
        feats[miss] = extract(model, [examples[i] for i in miss], layers, batch_size=batch_size, use_cache=use_cache,
                              progress=progress)
    return feats


def _classify_all(model, examples: Sequence[Example], batch_size: int,
                  progress: bool) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    import click

    out = []
    step = 8 * batch_size  # classify sorts each call's prompts by length: give it several batches at once
    bar = click.progressbar(length=len(examples), label="classifying", file=sys.stderr) if progress else None
    try:
        for start in range(0, len(examples), step):
            chunk = examples[start:start + step]
            out += model.classify([e.request for e in chunk], contexts=[e.context for e in chunk], batch_size=batch_size)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.render_finish()
    labels = model.head.config.labels
    ood = None if out[0].ood is None else np.array([v.ood for v in out])
    return np.array([[v.probs[k] for k in labels] for v in out]), [v.label for v in out], ood
