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

import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import mlx.core as mx
import numpy as np

from phasegpt.api import Request, batches, spans_of
from phasegpt.distributed import World, run_in_turns, shard_by_tokens, world
from phasegpt.head import pool
from phasegpt.paths import user_dir
from phasegpt.progress import Progress
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

    The examples not in the cache are sorted by token count and cut into batches of
    ``batch_size``, each one forward pass of one CPU stream with a one-thread BLAS, so a feature's
    numbers depend on its batch alone, not on how many cores or processes computed it. Under
    ``mlx.launch`` every process of the job makes the same call: the batches are dealt out to all
    of the ranks' streams in turns, the features go to every rank (and into every host's cache)
    every couple of seconds, and every rank returns them all.

    Args:
        model: a ``phasegpt.Model``.
        examples: labelled or unlabelled examples (prompt and context are used).
        layers: candidate layers (block indices).
        batch_size: prompts per forward pass of one CPU stream (examples of similar length together).
        use_cache: read and extend the on-disk cache.
        progress: show the examples done over all ranks on rank 0's stderr.

    Raises:
        JobError: the ranks of a job were given other examples, layers or batch size.
        RankLost: another process of the job stopped (what was saved is kept: run again).
    """
    layers = list(layers)
    keys = [e.key for e in examples]
    w = world()
    w.check_same_job({"examples": hashlib.sha256(json.dumps(keys).encode()).hexdigest(), "layers": layers,
                      "batch_size": batch_size, "model": model.loaded.fingerprint})
    path = cache_file(model, layers)
    cached = _load(path) if use_cache else {}
    todo = list({k: e for k, e in zip(keys, examples)}.items())
    # a prompt any rank lacks is computed again (so every rank holds the same features afterwards)
    lacking = w.all_sum(np.array([k not in cached for k, _ in todo], dtype=np.int32))
    todo = [ke for ke, n in zip(todo, lacking) if n]
    if todo:
        # every rank holds every feature: one process per host writes the host's cache
        save = (lambda: _save(path, cached)) if use_cache and w.local_rank == 0 else (lambda: None)
        _run(w, model, todo, layers, batch_size, cached, progress, save)
        save()
    return np.stack([cached[k] for k in keys]).astype(np.float32)


def _run(w: World, model, todo: list[tuple[str, Example]], layers, batch_size, out, progress, save) -> None:
    """Compute ``todo`` into ``out`` ({key: (L, 2, D)}) over the ranks (``extract``)."""
    requests: dict[int, Request] = {}
    lengths = np.zeros(len(todo), dtype=np.int64)
    for i in range(w.rank, len(todo), w.size):  # tokenizing is shared out too
        requests[i] = model.prepare(todo[i][1].request, todo[i][1].context)
        lengths[i] = len(requests[i].ids)
    lengths = w.all_sum(lengths)

    def request(i: int) -> Request:
        return requests.pop(i) if i in requests else model.prepare(todo[i][1].request, todo[i][1].context)

    def work(mine: list[list[int]]) -> bytes:
        return _pooled(model, [[request(i) for i in b] for b in mine], layers).tobytes()

    def collect(done: list[list[int]], blobs: list[bytes], save_now: bool) -> None:
        nonlocal last_save
        for items, blob in zip(done, blobs):
            if not items:  # a rank with no batch left at the last steps
                continue
            feats = np.frombuffer(blob, dtype=np.float32).reshape(len(items), len(layers), 2, -1)
            out.update((todo[i][0], row) for i, row in zip(items, feats))
        if shown is not None:
            shown.update([len(items) for items in done])
        if save_now:  # a long run keeps what it did if it is stopped; rank 0 says when, so all caches agree
            save()
            last_save = time.monotonic()

    last_save = time.monotonic()
    plan = list(batches(lengths.tolist(), batch_size))[::-1]  # longest first: the last step is the cheapest
    shown = Progress(len(todo), w.size, label="extracting features") if progress and w.rank == 0 else None
    with shown or nullcontext():
        run_in_turns(w, plan, work, collect, decide=lambda: time.monotonic() - last_save > SAVE_EVERY)


def _pooled(model, parts: list[list[Request]], layers: list[int]) -> np.ndarray:
    """Features (n, L, 2, D) float32 of one rank's batches of a step, at once, one CPU stream each."""
    flat = [r for part in parts for r in part]
    computed = model.prefill([r.ids for r in flat], layers, parts=[len(p) for p in parts])
    spans = spans_of(flat, [len(p) for p in parts])
    feats = [pool(hidden, tuple(layers), "last+mean", lengths, span)  # (B, L*2*D) per part
             for (_, hidden, lengths), span in zip(computed, spans)]
    mx.eval(feats)
    return np.concatenate([np.array(f.astype(mx.float32)) for f in feats]).reshape(len(flat), len(layers), 2, -1)


def _load(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    try:
        with np.load(path) as z:
            return dict(zip(z["keys"].tolist(), z["feats"]))
    except (OSError, ValueError, KeyError):
        return {}  # a damaged cache is only a cache: recompute


def _save(path: Path, cached: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Several processes may extend one cache at once (the ranks of an mlx.launch job on one host,
    # two evals): under a lock, keep what another one saved meanwhile, or the last writer drops it.
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        merged = {**_load(path), **cached}
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, keys=np.array(list(merged)), feats=np.stack(list(merged.values())))
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
    Under ``mlx.launch`` every process makes the same call, each computes a share, and every
    one returns the results for all examples.
    """
    head = model.head
    if head.config.kind == "tower":
        return _classify_all(model, examples, batch_size, progress)
    if head.config.pooling.endswith("+attn"):  # its pools need every position: the state cache, else classify
        return _attention_head(model, examples, batch_size, use_cache, progress)
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
    from phasegpt.train.states import pooled_features

    states = _state_cache(model, layers) if use_cache and world().size == 1 else None  # ranks must agree on the rows
    if states is None:
        return extract(model, examples, layers, batch_size=batch_size, use_cache=use_cache, progress=progress)
    hit = [i for i, e in enumerate(examples) if e.key in states]
    held = set(hit)
    miss = [i for i in range(len(examples)) if i not in held]
    feats = np.zeros((len(examples), len(layers), 2, states.hidden), np.float32)
    if hit:
        feats[hit] = pooled_features(states, [examples[i] for i in hit], layers)  # in the order asked for
    if miss:
        feats[miss] = extract(model, [examples[i] for i in miss], layers, batch_size=batch_size, use_cache=use_cache,
                              progress=progress)
    return feats


def _state_cache(model, layers: list[int]):
    """The per-token state cache of ``layers`` (``train-head --states cache``), or None when there is none."""
    from phasegpt.train.states import StateCache, cache_dir

    folder = cache_dir(model, layers)
    if not (folder / "index.json").is_file():
        return None
    return StateCache(folder, layers, int(model.loaded.config["hidden_size"]))


def _attention_head(model, examples: Sequence[Example], batch_size: int, use_cache: bool,
                    progress: bool) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """An attention-pooled head's results: the rows the state cache of its layers (or of its sweep's
    candidates) holds from there (``states.head_probs``), the rest through ``Model.classify``."""
    from phasegpt.train.states import head_probs

    head = model.head
    labels = head.config.labels
    probs = np.zeros((len(examples), len(labels)))
    ood = np.zeros(len(examples)) if head.config.ood_q99 is not None else None
    hit: list[int] = []
    if use_cache and world().size == 1:
        for layers in (list(head.config.training.get("candidates") or []), list(head.config.layers)):
            states = _state_cache(model, layers) if set(head.config.layers) <= set(layers) else None
            if states is not None:
                hit = [i for i, e in enumerate(examples) if e.key in states]
                if hit:
                    p, o = head_probs(head, states, [examples[i] for i in hit])
                    probs[hit] = p
                    if ood is not None:
                        ood[hit] = o
                break
    held = set(hit)
    miss = [i for i in range(len(examples)) if i not in held]
    if miss:
        p, _, o = _classify_all(model, [examples[i] for i in miss], batch_size, progress)
        probs[miss] = p
        if ood is not None:
            ood[miss] = o
    return probs, head.decide(probs), ood


def _classify_all(model, examples: Sequence[Example], batch_size: int,
                  progress: bool) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    """``Model.classify`` on every example; under ``mlx.launch`` each rank takes a share (by
    tokens) and every rank gets every result, in order."""
    w = world()
    everything = [list(range(len(examples)))]
    if w.size == 1:
        shares = everything
    else:  # every size-th prompt tokenized on each rank, the counts summed (as _run does)
        lengths = np.zeros(len(examples), dtype=np.int64)
        for i in range(w.rank, len(examples), w.size):
            lengths[i] = len(model.prepare(examples[i].request, examples[i].context).ids)
        shares = shard_by_tokens(w.all_sum(lengths).tolist(), w.size)
    mine = [examples[i] for i in shares[w.rank]]
    out = []
    step = 8 * batch_size  # classify sorts each call's prompts by length: give it several batches at once
    shown = Progress(len(examples), w.size) if progress and w.rank == 0 else None
    with shown or nullcontext():
        for start in range(0, max(len(s) for s in shares), step):  # as many rounds on every rank
            chunk = mine[start:start + step]
            if chunk:
                out += model.classify([e.request for e in chunk], contexts=[e.context for e in chunk],
                                      batch_size=batch_size)
            counts = w.gather(len(chunk))
            if shown is not None:
                shown.update(counts)
    labels = model.head.config.labels
    got = w.gather_in_order(shares, [[[v.probs[k] for k in labels], v.label, v.ood] for v in out])
    ood = None if got[0][2] is None else np.array([o for _, _, o in got])
    return np.array([p for p, _, _ in got]), [label for _, label, _ in got], ood
