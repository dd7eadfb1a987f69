"""Per-token tapped states of many requests, cached on disk in float16, for training a tower.

A tower re-runs blocks K+1..K+M on the residual stream after block K, so training it needs
that stream at every prompt position, not a pooled vector. Computing it is the slow part
(the base model's first K blocks over every prompt), so it is done once, in the batched
prefill ``classify`` uses, and kept in ``$PHASEGPT_HOME/states/<key>/``:

    index.json         {"layers", "hidden", "rows": {example key: [offset, length, pre, post]}}
    layer<K>.f16       all rows' states of block K, (total positions, hidden) float16, appended

The folder's key is the model fingerprint, adapter, template, system prompt and layers, so
another base or template never reads these states. Extraction is resumable: rows are
appended to the data files and the index is rewritten atomically every few minutes and at
the end; a writer cuts off data past the last index (an interrupted append) when it opens.

One process writes at a time: a writer holds an exclusive lock (``lock`` in the folder) while
it is open, and a second writer is refused. Readers take no lock and never change the files:
they see the rows of the last index, so they may read while a writer appends. (Before the lock,
a reader that opened the cache during an extraction cut off the writer's unindexed tail, and the
writer's later rows were indexed at offsets their data did not have: 17% of one cache's rows.)
"""

from __future__ import annotations

import fcntl
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

from phasegpt.paths import user_dir

SAVE_EVERY = 120.0  # seconds between index checkpoints during extraction


def cache_dir(model, layers: Sequence[int]) -> Path:
    """Where per-token states of ``model`` at ``layers`` are kept."""
    ident = json.dumps([model.loaded.fingerprint, model.loaded.adapter_sha256, model.template,
                        model.system, sorted(layers)])
    return user_dir() / "states" / hashlib.sha256(ident.encode()).hexdigest()[:20]


class StateCache:
    """The on-disk per-token states of one model at some layers (see the module docstring)."""

    def __init__(self, folder: str | Path, layers: Sequence[int], hidden: int, *, write: bool = False):
        self.folder = Path(folder)
        self.layers = sorted(layers)
        self.hidden = hidden
        self._files = {}
        self._views: dict[int, np.memmap] = {}
        self._lock = None
        if write:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.folder / "lock", "a")
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock.close()
                raise RuntimeError(f"another process is writing states into {self.folder}; wait for it to "
                                   "finish, or give this run its own PHASEGPT_HOME") from None
        index = self.folder / "index.json"
        self.rows: dict[str, tuple[int, int, int, int]] = {}
        if index.is_file():
            meta = json.loads(index.read_text())
            if meta["layers"] != self.layers or meta["hidden"] != hidden:
                self._unlock()
                raise ValueError(f"{self.folder} holds states of layers {meta['layers']} (hidden {meta['hidden']}), "
                                 f"not {self.layers} (hidden {hidden}); delete it or pass those layers")
            self.rows = {k: tuple(v) for k, v in meta["rows"].items()}
        self.end = max((o + n for o, n, _, _ in self.rows.values()), default=0)
        if write:
            for layer in self.layers:
                path = self._path(layer)
                with open(path, "ab") as f:  # cut off what an interrupted run appended after its last index
                    f.truncate(self.end * hidden * 2)
                self._files[layer] = open(path, "ab")
        self._saved = time.monotonic()

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    def _path(self, layer: int) -> Path:
        return self.folder / f"layer{layer}.f16"

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def append(self, key: str, states: dict[int, np.ndarray], span: tuple[int, int]) -> None:
        """Add one row: ``states`` {layer: (T, hidden)} and its (pre, post) span."""
        if not self._files:
            raise RuntimeError("this StateCache was opened for reading; open it with write=True to add rows")
        n = len(next(iter(states.values())))
        for layer in self.layers:
            if self._files[layer].tell() != self.end * self.hidden * 2:  # someone else changed the file
                raise RuntimeError(f"{self._path(layer)} changed under this writer; delete {self.folder} and extract again")
            self._files[layer].write(np.ascontiguousarray(states[layer], dtype=np.float16).tobytes())
        self.rows[key] = (self.end, n, int(span[0]), int(span[1]))
        self.end += n
        if time.monotonic() - self._saved > SAVE_EVERY:
            self.save()

    def save(self) -> None:
        """Flush the data files, then rewrite the index atomically (the checkpoint)."""
        if not self._files:
            raise RuntimeError("this StateCache was opened for reading; open it with write=True to save rows")
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump({"layers": self.layers, "hidden": self.hidden, "rows": self.rows}, f)
        os.replace(tmp, self.folder / "index.json")
        self._views.clear()  # the files grew: map them again on the next read
        self._saved = time.monotonic()

    def close(self) -> None:
        if self._files:
            self.save()
        for f in self._files.values():
            f.close()
        self._files = {}
        self._unlock()

    def view(self, layer: int) -> np.memmap:
        """All saved positions of ``layer``, (positions, hidden) float16, memory-mapped."""
        if layer not in self._views:
            self._views[layer] = np.memmap(self._path(layer), dtype=np.float16, mode="r",
                                           shape=(self.end, self.hidden))
        return self._views[layer]

    def get(self, key: str, layer: int) -> tuple[np.ndarray, tuple[int, int]]:
        """One row's states (T, hidden) float16 at ``layer`` and its span."""
        offset, n, pre, post = self.rows[key]
        return self.view(layer)[offset:offset + n], (pre, post)


def extract_states(model, examples: Sequence, layers: Sequence[int], *, batch_size: int = 16,
                   progress: bool = True) -> StateCache:
    """Per-token states at ``layers`` for every example not yet cached (the batched prefill of
    ``classify``), appended to the model's state cache; returns the cache.

    Args:
        model: a ``phasegpt.Model``.
        examples: ``train.data.Example`` objects (their ``request`` and ``context`` are used).
        layers: blocks whose output to keep.
        batch_size: prompts per forward step (``Model.rounds``).
        progress: a progress bar on stderr.
    """
    import click

    cache = StateCache(cache_dir(model, layers), layers, int(model.loaded.config["hidden_size"]), write=True)
    todo = list({e.key: e for e in examples if e.key not in cache}.items())
    if not todo:
        cache.close()
        return StateCache(cache.folder, layers, cache.hidden)
    requests = [model.prepare(e.request, e.context) for _, e in todo]
    bar = click.progressbar(length=sum(len(r.ids) for r in requests), label=f"states of {len(todo)} prompts (tokens)",
                            file=sys.stderr) if progress else None
    try:
        for idx in model.rounds([len(r.ids) for r in requests], batch_size):
            parts = model.prefill([requests[i].ids for i in idx], layers)
            at = 0
            for part, hidden, _ in parts:
                arrays = {k: np.array(v.astype(mx.float16)) for k, v in hidden.items()}  # (B, T, D)
                for b, ids in enumerate(part):
                    i = idx[at + b]
                    cache.append(todo[i][0], {k: a[b, :len(ids)] for k, a in arrays.items()}, requests[i].span)
                at += len(part)
            if bar is not None:
                bar.update(sum(len(requests[i].ids) for i in idx))
    finally:
        cache.close()
        if bar is not None:
            bar.render_finish()
    return StateCache(cache.folder, layers, cache.hidden)


def length_batches(lengths: Sequence[int] | np.ndarray, idx: Sequence[int] | None = None,
                   batch_tokens: int = 8192) -> list[list[int]]:
    """Rows ``idx`` (all by default) in length order, cut into batches of at most ``batch_tokens``
    padded positions (one row alone may exceed it): how every reader of cached states batches."""
    order = sorted(range(len(lengths)) if idx is None else idx, key=lambda i: lengths[i])
    out, batch = [], []
    for i in order:
        if batch and (len(batch) + 1) * lengths[i] > batch_tokens:
            out.append(batch)
            batch = []
        batch.append(i)
    return out + ([batch] if batch else [])


def head_probs(head, cache: StateCache, examples: Sequence, *, batch_tokens: int = 8192) -> tuple[np.ndarray, np.ndarray | None]:
    """A head's probabilities (N, C), after its OOD adjustment, and OOD scores (N,) or None, from cached
    states: what ``Model.classify`` gives, to the cache's float16 rounding, without the base model.

    Args:
        head: a ``Head`` (a tower head attached to its base) whose layers the cache holds.
        cache: the state cache of the head's base model.
        examples: rows whose states are cached.
    """
    logits, ood = head_outputs(head, cache, examples, batch_tokens=batch_tokens)
    s = logits / head.config.temperature
    p = np.exp(s - s.max(axis=1, keepdims=True))
    return head.adjust(p / p.sum(axis=1, keepdims=True), ood), ood


def head_outputs(head, cache: StateCache, examples: Sequence, *, batch_tokens: int = 8192) -> tuple[np.ndarray, np.ndarray | None]:
    """A head's raw logits (N, C) (before its temperature) and OOD scores (N,) or None, from cached states."""
    logits = np.zeros((len(examples), len(head.config.labels)))
    ood = np.zeros(len(examples)) if head.config.ood_q99 is not None else None
    for idx, feats in head_features(head, cache, examples, batch_tokens=batch_tokens):
        logits[idx] = np.array(head.logits(feats), dtype=np.float64)
        if ood is not None:
            ood[idx] = np.array(head.ood(feats), dtype=np.float64)
    return logits, ood


def head_features(head, cache: StateCache, examples: Sequence, *, batch_tokens: int = 8192):
    """``(row indices, head.pool features)`` of cached rows, batch by batch (rows of similar length together)."""
    layers = list(head.config.layers)
    if missing := sorted(set(layers) - set(cache.layers)):
        raise ValueError(f"the cache holds layers {cache.layers}, the head reads {missing} too; extract them first")
    rows = [cache.rows[e.key] for e in examples]
    for idx in length_batches([r[1] for r in rows], batch_tokens=batch_tokens):
        width = max(rows[i][1] for i in idx)
        hidden = {}
        for layer in layers:
            x = np.zeros((len(idx), width, cache.hidden), np.float16)
            for b, i in enumerate(idx):
                offset, n, _, _ = rows[i]
                x[b, :n] = cache.view(layer)[offset:offset + n]
            hidden[layer] = mx.array(x).astype(mx.float32)
        lengths = mx.array([rows[i][1] for i in idx])
        spans = mx.array([[rows[i][2], rows[i][3]] for i in idx])
        yield idx, head.pool(head.states(hidden), lengths, spans)


def pooled_features(cache: StateCache, examples: Sequence, layers: Sequence[int]) -> np.ndarray:
    """Pooled features (N, L, 2, D) float32 ([last, mean] per layer, as ``features.extract`` gives)
    of cached rows: a linear or MLP head can be fitted from the per-token cache without running
    the base model again. Equal to the computed features to the cache's float16 rounding."""
    out = np.zeros((len(examples), len(layers), 2, cache.hidden), np.float32)
    for i, e in enumerate(examples):
        offset, n, pre, post = cache.rows[e.key]
        end = max(n - post, pre + 1)  # the user's own tokens, at least one (as head.pool)
        for j, layer in enumerate(layers):
            h = cache.view(layer)[offset:offset + n].astype(np.float32)
            out[i, j, 0], out[i, j, 1] = h[n - 1], h[pre:end].mean(axis=0)
    return out
