"""Train a head end to end: data -> features (cached) -> sweep/fit/calibrate -> head folder."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from phasegpt.distributed import JobError, world
from phasegpt.head import Head
from phasegpt.paths import user_dir
from phasegpt.tap import num_layers
from phasegpt.train.data import Example, check_labels, split
from phasegpt.train.features import extract
from phasegpt.train.fit_head import FitConfig, fit_head
from phasegpt.train.states import extract_states, pooled_features
from phasegpt.train.tower import CachedStates, LiveStates, TowerFit, sweep_towers, train_tower
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


def base_identity(model: Any, training: dict[str, Any]) -> dict[str, Any]:
    """The HeadConfig fields naming the base model (and adapter) a head is trained on, and the record."""
    loaded = model.loaded
    return {"base_model": loaded.name, "base_fingerprint": loaded.fingerprint,
            "adapter_sha256": loaded.adapter_sha256, "hidden_size": int(loaded.config.get("hidden_size", 0)),
            "training": training}


def prepare_splits(model: Any, examples: Sequence[Example], dev: Sequence[Example] | None,
                   max_tokens: int | None, log) -> tuple[list[Example], list[Example], int]:
    """Train and dev rows (``split`` fields, else a stable 20% dev) that fit; and how many were skipped.

    The stable 20% does not move with the fit's seed: heads fitted with different seeds are tuned
    and compared on the same dev rows, so their difference is the seed's alone.
    """
    if dev is None:
        train, dev = split(list(examples))
    else:
        train = [e for e in examples if e.split != "test"]
    (train, long_train), (dev, long_dev) = fitting(model, train, max_tokens), fitting(model, dev, max_tokens)
    if long_train or long_dev:
        limit = f"{max_tokens} tokens" if max_tokens else "the model's context"
        log(f"skipped {len(long_train) + len(long_dev)} examples longer than {limit}")
    check_labels(train, "the training split")
    check_labels(dev, "the dev split")
    return train, list(dev), len(long_train) + len(long_dev)


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
               max_tokens: int | None = None, states: str = "features") -> Head | None:
    """Train a refusal-reason head for ``model`` and write it to ``out``.

    Under ``mlx.launch`` every process makes the same call: the ranks share the feature
    extraction (``features.extract``), then rank 0 fits the head and writes it.

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
        states: ``features`` extracts pooled features (cached in ``$PHASEGPT_HOME/features``);
            ``cache`` pools them from the per-token state cache of the candidate layers
            (``states.extract_states``, filling in missing rows), so heads and towers trained
            on the same rows share one extraction.

    Returns:
        The trained head (already saved); None on the other ranks of an ``mlx.launch`` job.

    Raises:
        ValueError: fewer than two labels in the training or dev data.
        JobError: the ranks of a job were given other data or options.
        RankLost: another process of the job stopped (the features saved so far are kept).
    """
    w = world()
    log = (lambda s: print(s, file=sys.stderr)) if progress and w.rank == 0 else (lambda s: None)
    train, dev, skipped = prepare_splits(model, examples, dev, max_tokens, log)
    n = num_layers(model.loaded.model)
    cands = list(candidates) if candidates is not None else default_candidates(n)
    if fit.layers is not None:  # fixed layers are model layer numbers
        fixed = sorted({i % n for i in fit.layers})
        if candidates is None or not set(fixed) <= set(cands):
            cands = fixed  # extract just those
        # (within the candidates, the extraction and its cache are the candidates', which a state
        # cache of those layers already holds: naming a subset must not start a new cache)
        fit = FitConfig(**{**fit.__dict__, "layers": tuple(cands.index(i) for i in fixed)})
    t0 = time.perf_counter()
    if (fit.pooling or "").endswith("+attn") and states != "cache":
        raise ValueError("last+mean+attn pooling trains its queries on the per-token state cache: add --states cache")
    if states == "cache" and w.size > 1:
        raise JobError("--states cache runs in one process (the state cache has one writer); "
                       "under mlx.launch leave --states out: the ranks then share the feature extraction")
    if states == "cache":
        cache = extract_states(model, train + dev, cands, batch_size=batch_size, progress=progress)
        xtr, xdv = pooled_features(cache, train, cands), pooled_features(cache, dev, cands)
    elif states == "features":
        xtr = extract(model, train, cands, batch_size=batch_size, use_cache=use_cache, progress=progress)
        xdv = extract(model, dev, cands, batch_size=batch_size, use_cache=use_cache, progress=progress)
    else:
        raise ValueError(f"states must be 'features' or 'cache' for a {fit.kind} head, got {states!r}")
    t1 = time.perf_counter()
    if w.rank != 0:  # every rank has every feature; rank 0 alone fits (the fit is serial) and writes
        return None
    log(f"features: {len(train)} train + {len(dev)} dev prompts, layers {cands}, {t1 - t0:.1f}s")
    ytr = np.array([LABELS.index(e.label) for e in train])
    ydv = np.array([LABELS.index(e.label) for e in dev])
    identity = base_identity(model, {**(training or {}), "seed": fit.seed, "candidates": cands, "kind": fit.kind,
                                     "skipped_too_long": skipped, "states": states,
                                     "feature_seconds": round(t1 - t0, 2)})
    head = fit_head(xtr, ytr, xdv, ydv, layers=cands, cfg=fit, identity=identity, log=log,
                    sources=[e.source or "" for e in dev], states=(cache, train, dev) if states == "cache" else None,
                    progress=progress)
    head.config.training["fit_seconds"] = round(time.perf_counter() - t1, 2)
    log(f"head: layers {list(head.config.layers)}, pooling {head.config.pooling}, "
        f"temperature {head.config.temperature:.2f}, dev macro-F1 {head.config.metrics['dev_macro_f1']:.3f}")
    head.save(out)
    return head


STATES = ("auto", "cache", "live")


def train_tower_head(model: Any, examples: Sequence[Example], out: str | Path, *, dev: Sequence[Example] | None = None,
                     fit: TowerFit = TowerFit(), sweep: Sequence[dict[str, Any]] = (), states: str = "auto",
                     batch_size: int = 16, progress: bool = True, training: dict[str, Any] | None = None,
                     max_tokens: int | None = None, cache_layers: Sequence[int] = ()) -> Head:
    """Train a tower head (``phasegpt.tower``) for ``model`` and write it to ``out``.

    Args:
        model: a ``phasegpt.Model`` (the base the head is for, with its adapter if any).
        examples: labelled examples, split as ``train_head`` splits them.
        out: folder to write ``head.json`` + ``head.safetensors`` into (atomically).
        dev: explicit validation examples.
        fit: the tower's options (tap, depth, rank, keys, epochs, ...).
        sweep: option overrides to try first, e.g. ``[{"tap": 9}, {"tap": 13, "depth": 2}]``; each
            is trained briefly on a subset and the best by dev macro-F1 is then trained in full
            (the table is kept in ``head.json``: ``metrics.sweep``).
        states: ``cache`` the tapped states on disk in float16 (fast epochs), ``live`` compute them
            from the base model every batch (no disk; for bases whose states would not fit), or
            ``auto``: cache when they take less than half the free disk.
        batch_size: prompts per forward step while caching states.
        progress: progress bars and lines on stderr.
        training: free-form record of how the head was made, kept in head.json.
        max_tokens: skip training/dev prompts longer than this.
        cache_layers: more layers to keep in the state cache beside the taps: the cache is keyed by
            its layers, so naming those of an existing cache (``train-head --states cache
            --candidates 9,13,17,21`` of a linear or MLP head) reuses it instead of extracting again.

    Returns:
        The trained head (already saved).

    Raises:
        JobError: run under ``mlx.launch`` with several processes (a tower trains in one).
    """
    if world().size > 1:
        raise JobError("a tower head trains in one process (its states and its training are not shared "
                       "out); run train-head --kind tower without mlx.launch")
    if states not in STATES:
        raise ValueError(f"states must be one of {', '.join(STATES)}, got {states!r}")
    log = (lambda s: print(s, file=sys.stderr)) if progress else (lambda s: None)
    train, dev, skipped = prepare_splits(model, examples, dev, max_tokens, log)
    trials = [TowerFit(**{**asdict(fit), **trial}) for trial in sweep]
    n = num_layers(model.loaded.model)
    for candidate in trials or [fit]:
        try:
            candidate.tower_config().check(n)
        except ValueError as e:
            raise ValueError(f"{e}; choose --tap and --depth (or the sweep's) so that tap + depth <= {n - 1}") from None
    taps = sorted({t.tap for t in trials}) if trials else [fit.tap]
    t0 = time.perf_counter()
    source_for = state_sources(model, train + dev, sorted(set(taps) | set(cache_layers)), states, batch_size,
                               progress, log)
    t1 = time.perf_counter()
    table: list[dict[str, Any]] = []
    if trials:
        log(f"sweep: {len(trials)} trials, one epoch each on a subset of the training rows")
        best, table = sweep_towers(model, train, dev, trials, source_for, log=log)
        fit = TowerFit(**{**asdict(fit), **{k: getattr(best, k) for k in ("tap", "depth", "rank", "scale", "keys")}})
    identity = base_identity(model, {**(training or {}), "seed": fit.seed, "kind": "tower", "states": states,
                                     "skipped_too_long": skipped, "state_seconds": round(t1 - t0, 1)})
    head = train_tower(model, train, dev, fit=fit, sources=(source_for(fit.tap, train), source_for(fit.tap, dev)),
                       identity=identity, progress=progress, log=log)
    head.config.metrics["sweep"] = table
    head.config.training["sweep_seconds"] = round(sum(r["seconds"] for r in table), 1)
    head.save(out)
    return head


def state_sources(model: Any, examples: Sequence[Example], taps: Sequence[int], states: str, batch_size: int,
                  progress: bool, log):
    """``source_for(tap, examples)``: cached states (extracted now, once, for every tap) or live ones."""
    hidden = int(model.loaded.config.get("hidden_size", 0))
    need = sum(len(model.encode(e.request, e.context)) for e in examples) * hidden * 2 * len(taps)
    if states == "auto":
        free = shutil.disk_usage(user_dir()).free
        states = "cache" if need < free / 2 else "live"
        log(f"tapped states: {need / 2**30:.1f} GiB for layers {list(taps)} "
            f"({'cached on disk' if states == 'cache' else 'computed live: more than half the free disk'})")
    if states == "live":
        return lambda tap, rows: LiveStates(model, tap, rows)
    cache = extract_states(model, examples, taps, batch_size=batch_size, progress=progress)
    return lambda tap, rows: CachedStates(cache, tap, [e.key for e in rows])
