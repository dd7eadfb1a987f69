"""Train a tower head: LoRA on blocks K+1..K+M and an MLP head, jointly, on tapped states.

1. states   the residual stream after block K for every training and dev prompt, from the
            on-disk cache (``states.extract_states``), or computed batch by batch from the base
            model when the cache would not fit (``LiveStates``; Mistral-7B on a laptop);
2. warm     MLPs fitted (as ``fit_head`` fits them, ``members`` seeds averaged into one wide
            MLP) on the untrained tower's features, the base's own blocks K+1..K+M: the
            fine-tuning starts from the frozen-feature head. With the states after block K+M in
            the cache those features are read from it for every row (the untrained tower
            computes exactly them); otherwise the tower runs over ``WARM_ROWS`` rows;
3. fit      class-weighted cross-entropy through the tower (mlx-lm's LoRA layers), the final
            norm, last+mean pooling and a one-hidden-layer MLP; Adam for the LoRA arrays and
            for the head (its own learning rate), warm-up then cosine decay; dev macro-F1 every
            ``eval_every`` steps, the best weights kept, early stopping on ``patience``;
4. calibrate a temperature on dev, per-class thresholds on dev (as ``fit_head`` does), and the
            OOD statistic: the MLP's pre-activations on training rows (mean, whitening) and
            the 99th percentile of their distance on dev.

Deterministic for a seed (batch order from numpy's generator, LoRA initialised from MLX's
seeded generator). Resumable: every ``CHECKPOINT_EVERY`` seconds the trainable arrays, the
best ones so far, the optimiser state and the position in the schedule are written, as one
file replaced atomically, to a run folder keyed by the data and the options; a rerun of the
same command continues from there and ends where an uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from phasegpt.head import TOWER_PREFIX, Head, HeadConfig, pool
from phasegpt.paths import user_dir
from phasegpt.tower import ALL_KEYS, Tower, TowerConfig
from phasegpt.train.fit_head import (
    OOD_ROWS,
    FitConfig,
    _balance,
    _fit_mlp,
    _softmax,
    calibrate,
    distances,
    macro_f1,
    ood_statistic,
    tune_thresholds,
)
from phasegpt.train.states import length_batches
from phasegpt.verdict import LABELS

CHECKPOINT_EVERY = 300.0  # seconds between resumable checkpoints
WARM_ROWS = 4000          # rows the warm-start MLP is fitted on when the tower has to compute its features


@dataclass(frozen=True)
class TowerFit:
    """Options of ``train_tower`` (``phasegpt train-head --kind tower``); every default is commented."""

    tap: int = 13                       # K: the tapped block; the tower re-runs K+1..K+depth
    depth: int = 4                      # M: blocks in the tower
    rank: int = 8                       # LoRA rank
    scale: float = 20.0                 # LoRA scale (mlx-lm's default)
    keys: tuple[str, ...] = ALL_KEYS    # adapted projections (all seven: attention and MLP)
    hidden: int = 256                   # MLP hidden width (of each member)
    members: int = 5                    # warm-start MLPs (seeds) averaged into one MLP of members * hidden
    epochs: float = 3.0                 # passes over the fine-tuning rows (early stopping may end sooner)
    warm_share: float = 1.0             # training rows the warm-start MLP is fitted on (the rest are fine-tuned on; 1: all, both)
    lr: float = 2e-4                    # Adam learning rate of the LoRA arrays
    head_lr: float = 3e-4               # Adam learning rate of the MLP (1e-3 undid the warm start: measured; 0 freezes it)
    warmup: int = 20                    # steps of linear warm-up
    step_rows: int = 128                # rows per optimiser step: a random sample of the training rows
    batch_tokens: int = 4096            # padded positions per micro-batch (a step's rows, length-sorted)
    eval_every: int = 35                # steps between dev checks (about three per epoch of 13k rows)
    patience: int = 4                   # dev checks without a better macro-F1 before stopping
    seed: int = 0
    tune_thresholds: bool = True        # per-class offsets on dev
    frr_budget: float | None = 0.03     # thresholds keep false refusals of dev everyday requests within this
    source_frr_budget: float = 0.05     # ... and pull every answer source's towards this
    source_frr_weight: float = 0.05     # how hard (as FitConfig's)

    def tower_config(self) -> TowerConfig:
        return TowerConfig(tap=self.tap, depth=self.depth, rank=self.rank, scale=self.scale, keys=tuple(self.keys))


# --- where the states come from ------------------------------------------------------------
class CachedStates:
    """Batches of states at one layer from a ``states.StateCache`` (float16 on disk -> float32)."""

    def __init__(self, cache, layer: int, keys: Sequence[str]):
        missing = [k for k in keys if k not in cache]
        if missing:
            raise ValueError(f"{len(missing)} examples have no cached states; run states.extract_states first")
        self.cache, self.keys = cache, list(keys)
        self.view = cache.view(layer)
        self.rows = [cache.rows[k] for k in keys]
        self.lengths = np.array([n for _, n, _, _ in self.rows])

    def batch(self, idx: Sequence[int]) -> tuple[mx.array, mx.array, mx.array]:
        rows = [self.rows[i] for i in idx]
        width = max(n for _, n, _, _ in rows)
        x = np.zeros((len(rows), width, self.view.shape[1]), np.float16)
        for b, (offset, n, _, _) in enumerate(rows):
            x[b, :n] = self.view[offset:offset + n]
        return (mx.array(x).astype(mx.float32), mx.array([n for _, n, _, _ in rows]),
                mx.array([[pre, post] for _, _, pre, post in rows]))


class LiveStates:
    """The same batches computed from the base model's first K blocks (when a cache would not fit)."""

    def __init__(self, model, layer: int, examples: Sequence):
        self.model, self.layer = model, layer
        self.requests = [model.prepare(e.request, e.context) for e in examples]
        self.lengths = np.array([len(r.ids) for r in self.requests])

    def batch(self, idx: Sequence[int]) -> tuple[mx.array, mx.array, mx.array]:
        reqs = [self.requests[i] for i in idx]
        hidden, lengths = self.model.hidden_states([r.ids for r in reqs], [self.layer])
        return mx.stop_gradient(hidden[self.layer]), lengths, mx.array([list(r.span) for r in reqs])


def steps(lengths: np.ndarray, step_rows: int, batch_tokens: int, rng: np.random.Generator) -> list[list[list[int]]]:
    """One epoch of optimiser steps: each a random sample of ``step_rows`` rows, cut into
    length-sorted micro-batches of at most ``batch_tokens`` padded positions whose gradients add up.

    Every step sees a fair sample of the training rows. Batches of similar length, which keep
    padding low, are mostly one source (short XSTest prompts, long RAG ones) and so mostly one
    label: stepping on each of them dragged the head from class to class, and from a warm start
    at dev macro-F1 0.789 to 0.50 within 50 steps (measured on the frozen tower's features).
    """
    order = rng.permutation(len(lengths))
    return [length_batches(lengths, order[i:i + step_rows].tolist(), batch_tokens) for i in range(0, len(order), step_rows)]


# --- the trained module ----------------------------------------------------------------------
class TowerHead(nn.Module):
    """Tower, final norm, last+mean pooling, standardisation (fixed) and a one-hidden-layer MLP."""

    def __init__(self, tower: Tower, mean: mx.array, std: mx.array, hidden: int):
        super().__init__()
        self.tower = tower
        self.fc1 = nn.Linear(mean.shape[0], hidden)
        self.out = nn.Linear(hidden, len(LABELS))
        self.out.weight = mx.zeros_like(self.out.weight)  # start from uniform predictions
        self.out.bias = mx.zeros_like(self.out.bias)
        self._mean, self._std = mean, std  # private: not parameters, never trained

    def features(self, h: mx.array, lengths: mx.array, spans: mx.array) -> mx.array:
        return pool({0: self.tower(h)}, (0,), "last+mean", lengths, spans)

    def pre(self, h: mx.array, lengths: mx.array, spans: mx.array) -> mx.array:
        """The MLP's pre-activations (B, hidden): what the OOD statistic measures."""
        return self.fc1((self.features(h, lengths, spans) - self._mean) / self._std)

    def __call__(self, h: mx.array, lengths: mx.array, spans: mx.array) -> mx.array:
        return self.out(nn.relu(self.pre(h, lengths, spans)))

    def head_arrays(self) -> dict[str, mx.array]:
        """The arrays of a kind-"tower" ``Head``: standardisation, MLP and the tower's LoRA arrays."""
        arrays = {"mean": self._mean, "std": self._std, "w1": self.fc1.weight.T, "b1": self.fc1.bias,
                  "w": self.out.weight.T, "b": self.out.bias}
        arrays.update({TOWER_PREFIX + k: v for k, v in self.tower.lora_arrays().items()})
        return arrays


def _pooled(run: Callable[[mx.array], mx.array], source, idx: Sequence[int], batch_tokens: int) -> np.ndarray:
    """Pooled last+mean features (len(idx), 2D) of ``run(states)`` for rows ``idx``, in order."""
    feats: dict[int, np.ndarray] = {}
    for b in length_batches(source.lengths, idx, batch_tokens):
        h, n, s = source.batch(b)
        feats.update(zip(b, np.array(pool({0: run(h)}, (0,), "last+mean", n, s))))
    return np.stack([feats[i] for i in idx])


def _untrained_features(tower: Tower, parts, fit: TowerFit, rng) -> list[tuple[np.ndarray, np.ndarray]]:
    """(features, labels) of the untrained tower for each ``(source, labels, rows)`` of ``parts``.

    Cached states after block K+M are what the untrained tower computes from those after
    block K (to float16 rounding), so with them only the final norm runs, over every row, in
    seconds. Otherwise the tower runs, on a sample of ``WARM_ROWS`` of the rows.
    """
    after = fit.tap + fit.depth
    if all(isinstance(s, CachedStates) and after in s.cache.layers for s, _, _ in parts):
        return [(_pooled(tower.norm, CachedStates(s.cache, after, s.keys), idx, fit.batch_tokens), y[idx])
                for s, y, idx in parts]
    out = []
    for s, y, idx in parts:
        idx = np.sort(rng.choice(idx, min(len(idx), WARM_ROWS), replace=False)).tolist()
        out.append((_pooled(tower, s, idx, fit.batch_tokens), y[idx]))
    return out


def _warm_start(tower: Tower, src_tr, src_dv, ytr, ydv, rows: np.ndarray, fit: TowerFit, rng) -> dict[str, np.ndarray]:
    """Standardisation and MLP fitted on the untrained tower's features (the base's own blocks)
    for training ``rows``: probing first, then fine-tuning everything from there, converges in
    far fewer steps than fine-tuning from a random head, and never starts below the
    frozen-feature head."""
    (xtr, y_tr), dev = _untrained_features(tower, [(src_tr, ytr, rows), (src_dv, ydv, np.arange(len(ydv)))], fit, rng)
    cfg = FitConfig(kind="mlp", mlp_hidden=fit.hidden, mlp_members=fit.members, seed=fit.seed)
    return _fit_mlp(xtr, y_tr, cfg, dev=dev)


def split_rows(n: int, warm_share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(warm-start rows, fine-tuning rows) of ``n`` training rows: all of them for both when
    ``warm_share`` is 1, else a seeded random ``warm_share`` of them and the rest.

    An MLP fitted on a row has all but learned it (on SmolLM2 its weighted training loss is
    about 0.06): fine-tuning on those same rows is led by the few it misfits, and from a head
    fitted on all training rows it lowered dev macro-F1 (0.832 -> 0.820 in 35 steps, measured).
    """
    if warm_share >= 1.0:
        return np.arange(n), np.arange(n)
    order = np.random.default_rng([seed, n]).permutation(n)
    cut = max(1, min(n - 1, int(round(warm_share * n))))
    return np.sort(order[:cut]), np.sort(order[cut:])


def outputs(net: TowerHead, source, idx: Sequence[int] | None = None, *, batch_tokens: int = 8192,
            what: str = "logits") -> np.ndarray:
    """Logits (or ``what="pre"``: the MLP's pre-activations) for rows ``idx`` (all by default), in order."""
    idx = list(range(len(source.lengths))) if idx is None else list(idx)
    where = {i: k for k, i in enumerate(idx)}
    out = None
    for b in length_batches(source.lengths, idx, batch_tokens):
        h, n, s = source.batch(b)
        y = np.array(net(h, n, s) if what == "logits" else net.pre(h, n, s))
        if out is None:
            out = np.zeros((len(idx), y.shape[1]), np.float32)
        out[[where[i] for i in b]] = y
    return out


# --- training -------------------------------------------------------------------------------
def train_tower(model, train: Sequence, dev: Sequence, *, fit: TowerFit = TowerFit(), sources=None,
                identity: dict[str, Any] | None = None, run_dir: Path | None = None, progress: bool = True,
                log: Callable[[str], None] = lambda s: None) -> Head:
    """Train a tower head for ``model`` on labelled ``train`` rows, tuned on ``dev`` rows.

    Args:
        model: a ``phasegpt.Model`` (the base, with its adapter if any).
        train, dev: ``train.data.Example`` rows with labels.
        fit: the options.
        sources: (train, dev) state sources (``CachedStates`` / ``LiveStates``); by default
            live states from ``model``.
        identity: HeadConfig fields naming the base and the training record.
        run_dir: where checkpoints go (default: a folder in ``$PHASEGPT_HOME/runs`` keyed by
            the data and the options, so rerunning the same command resumes).
        progress: a progress bar on stderr with the running dev macro-F1.
        log: called with progress lines.

    Returns:
        The head (attached to ``model``'s blocks), not yet saved.
    """
    import click

    ytr = np.array([LABELS.index(e.label) for e in train])
    ydv = np.array([LABELS.index(e.label) for e in dev])
    src_tr, src_dv = sources or (LiveStates(model, fit.tap, train), LiveStates(model, fit.tap, dev))
    run_dir = run_dir or _run_dir(model, train, dev, fit)
    run_dir.mkdir(parents=True, exist_ok=True)
    mx.random.seed(fit.seed)
    tower = Tower(model.loaded.model, fit.tower_config())
    rng = np.random.default_rng(fit.seed)
    warm_rows, fine_rows = split_rows(len(ytr), fit.warm_share, fit.seed)
    warm = _warm_start(tower, src_tr, src_dv, ytr, ydv, warm_rows, fit, rng)
    net = TowerHead(tower, mx.array(warm["mean"]), mx.array(warm["std"]), warm["w1"].shape[1])
    net.fc1.weight, net.fc1.bias = mx.array(warm["w1"].T), mx.array(warm["b1"])
    net.out.weight, net.out.bias = mx.array(warm["w"].T), mx.array(warm["b"])
    _, weight = _balance(ytr)
    weight = mx.array(weight)
    per_epoch = int(math.ceil(len(fine_rows) / fit.step_rows))
    total = max(1, int(math.ceil(fit.epochs * per_epoch)))

    def schedule(lr: float):
        warm = min(fit.warmup, max(1, total // 10))
        return optim.join_schedules([optim.linear_schedule(lr * 0.01, lr, warm), optim.cosine_decay(lr, max(1, total - warm))], [warm])

    opt = optim.MultiOptimizer([optim.Adam(schedule(fit.lr)), optim.Adam(schedule(fit.head_lr))],
                               [lambda path, _: path.startswith("tower")])

    def loss_fn(net, h, n, s, y, w):  # the micro-batch's share of the step's loss (summed, not averaged)
        return (nn.losses.cross_entropy(net(h, n, s), y) * w).sum()

    grad_fn = nn.value_and_grad(net, loss_fn)

    def step(micro: list[list[int]]) -> float:
        """Gradients of a step's micro-batches, added up and divided by the step's weight: one update."""
        total_w = float(weight[mx.array([i for b in micro for i in b])].sum())
        loss, grads = 0.0, None
        for b in micro:
            h, n, s = src_tr.batch(b)
            value, g = grad_fn(net, h, n, s, mx.array(ytr[b]), weight[mx.array(b)])
            grads = g if grads is None else tree_map(mx.add, grads, g)
            mx.eval(grads, value)
            loss += float(value)
        opt.update(net, tree_map(lambda g: g / total_w, grads))
        mx.eval(net.parameters(), opt.state)
        return loss / total_w

    state = {"step": 0, "best_f1": -1.0, "bad": 0, "history": []}
    best = dict(tree_flatten(net.trainable_parameters()))
    ckpt = run_dir / "checkpoint.safetensors"
    if ckpt.is_file():  # resume where the last checkpoint left off (an interrupted run)
        arrays, meta = mx.load(str(ckpt), return_metadata=True)
        state = json.loads(meta["state"])
        part = {p: {k[len(p) + 1:]: v for k, v in arrays.items() if k.startswith(p + ".")} for p in ("now", "best", "opt")}
        net.update(tree_unflatten(list(part["now"].items())))
        best = part["best"]
        opt.init(net.trainable_parameters())
        opt.state = tree_unflatten(list(part["opt"].items()))
        log(f"resuming {run_dir} at step {state['step']} of {total} (best dev macro-F1 {state['best_f1']:.3f})")

    def evaluate() -> float:
        return macro_f1(ydv, outputs(net, src_dv, batch_tokens=2 * fit.batch_tokens).argmax(axis=1))

    def checkpoint() -> None:  # one file, written atomically: weights, best weights, optimiser, schedule position
        arrays = {f"now.{k}": v for k, v in tree_flatten(net.trainable_parameters())}
        arrays |= {f"best.{k}": v for k, v in best.items()}
        arrays |= {f"opt.{k}": v for k, v in tree_flatten(opt.state)}
        _save_arrays(ckpt, arrays, {"state": json.dumps(state)})

    bar = click.progressbar(length=total, label="training tower", file=sys.stderr) if progress else None
    t0, saved = time.perf_counter(), time.monotonic()
    try:
        if bar is not None:
            bar.update(state["step"])
        if state["step"] == 0:  # the warm-started head alone: what fine-tuning has to beat
            state["best_f1"] = evaluate()
            state["history"].append({"step": 0, "loss": None, "dev_macro_f1": state["best_f1"]})
            log(f"  step 0/{total}: dev macro-F1 {state['best_f1']:.3f} (the frozen-feature head)")
        epoch = state["step"] // per_epoch
        while state["step"] < total and state["bad"] < fit.patience:
            order = [[fine_rows[b].tolist() for b in micro] for micro in
                     steps(src_tr.lengths[fine_rows], fit.step_rows, fit.batch_tokens, np.random.default_rng([fit.seed, epoch]))]
            for micro in order[state["step"] - epoch * per_epoch:]:
                loss = step(micro)
                state["step"] += 1
                if bar is not None:
                    bar.update(1)
                if state["step"] % fit.eval_every == 0 or state["step"] == total:
                    f1 = evaluate()
                    state["history"].append({"step": state["step"], "loss": loss, "dev_macro_f1": f1})
                    if f1 > state["best_f1"]:
                        state["best_f1"], state["bad"] = f1, 0
                        best = {k: mx.array(v) for k, v in tree_flatten(net.trainable_parameters())}
                    else:
                        state["bad"] += 1
                    log(f"  step {state['step']}/{total}: loss {loss:.3f}, dev macro-F1 {f1:.3f} "
                        f"(best {state['best_f1']:.3f})")
                    if bar is not None:
                        bar.label = f"training tower (dev macro-F1 {state['best_f1']:.3f})"
                if time.monotonic() - saved > CHECKPOINT_EVERY:
                    checkpoint()
                    saved = time.monotonic()
                if state["step"] >= total or state["bad"] >= fit.patience:
                    break
            epoch += 1
        checkpoint()
    finally:
        if bar is not None:
            bar.render_finish()
    net.update(tree_unflatten(list(best.items())))
    seconds = time.perf_counter() - t0
    return _finish(net, src_tr, src_dv, ytr, ydv, fit, identity or {}, state, seconds, log, model,
                   [e.source or "" for e in dev])


def _finish(net, src_tr, src_dv, ytr, ydv, fit, identity, state, seconds, log, model, sources) -> Head:
    """Temperature, thresholds and the OOD statistic on the best weights; the Head."""
    dev_logits = outputs(net, src_dv, batch_tokens=2 * fit.batch_tokens)
    temperature = calibrate(dev_logits, ydv)
    probs = _softmax(dev_logits, temperature)
    offsets = tune_thresholds(probs, ydv, sources=sources, budget=fit.frr_budget,
                              source_budget=fit.source_frr_budget, source_weight=fit.source_frr_weight) \
        if fit.tune_thresholds \
        else np.zeros(len(LABELS))
    pred = (probs - offsets).argmax(axis=1)
    rows = np.sort(np.random.default_rng(fit.seed).choice(len(ytr), min(len(ytr), OOD_ROWS), replace=False))
    mean, whiten = ood_statistic(outputs(net, src_tr, rows, what="pre"))
    dist = distances(outputs(net, src_dv, what="pre"), mean, whiten)
    q99 = float(np.quantile(dist, 0.99))
    arrays = {**net.head_arrays(), "ood_mean": mx.array(mean), "ood_whiten": mx.array(whiten)}
    metrics = {"dev_macro_f1": macro_f1(ydv, pred), "dev_accuracy": float(np.mean(pred == ydv)),
               "dev_macro_f1_argmax": macro_f1(ydv, probs.argmax(axis=1)), "n_train": int(len(ytr)),
               "n_dev": int(len(ydv)), "steps": state["step"], "history": state["history"],
               "train_seconds": round(seconds, 1)}
    log(f"tower: dev macro-F1 {metrics['dev_macro_f1']:.3f} (argmax {metrics['dev_macro_f1_argmax']:.3f}), "
        f"temperature {temperature:.2f}, {state['step']} steps, {seconds:.0f}s")
    training = {**identity.pop("training", {}), "fit": {**asdict(fit), "keys": list(fit.keys)}}
    config = HeadConfig(layers=(fit.tap,), pooling="last+mean", kind="tower", temperature=temperature,
                        thresholds=dict(zip(LABELS, map(float, offsets))), metrics=metrics, training=training,
                        tower={**asdict(fit.tower_config()), "keys": list(fit.keys)}, ood_q99=q99, **identity)
    head = Head(config, {k: mx.array(v) for k, v in arrays.items()})
    head.attach(model.loaded.model)
    return head


def _run_dir(model, train, dev, fit: TowerFit) -> Path:
    ident = json.dumps([model.loaded.fingerprint, model.loaded.adapter_sha256, model.template, model.system,
                        sorted(e.key + e.label for e in train), sorted(e.key + e.label for e in dev),
                        {**asdict(fit), "keys": list(fit.keys)}])
    return user_dir() / "runs" / ("tower-" + hashlib.sha256(ident.encode()).hexdigest()[:16])


def _save_arrays(path: Path, arrays: dict[str, mx.array], metadata: dict[str, str]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".safetensors")
    os.close(fd)
    try:
        mx.save_safetensors(tmp, arrays, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise




# --- choosing K, M, rank and keys -----------------------------------------------------------
def sweep_towers(model, train: Sequence, dev: Sequence, trials: Sequence[TowerFit], source_for: Callable,
                 *, rows: int = 3000, epochs: float = 1.0, log: Callable[[str], None] = lambda s: None,
                 ) -> tuple[TowerFit, list[dict[str, Any]]]:
    """Short runs of every trial on one seeded subset of ``rows`` training rows; the best by dev macro-F1.

    Args:
        trials: the candidate options (tap, depth, rank, keys, ...); each is trained for ``epochs``.
        source_for: ``source_for(tap, examples)`` -> a state source for those examples at that tap.

    Returns:
        The winning options (with the caller's epochs restored) and the table of every trial.
    """
    rng = np.random.default_rng(trials[0].seed if trials else 0)
    sub = [train[i] for i in np.sort(rng.choice(len(train), min(rows, len(train)), replace=False))]
    table, best = [], None
    for fit in trials:
        short = TowerFit(**{**asdict(fit), "epochs": epochs, "patience": 10**6, "tune_thresholds": False})
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="phasegpt-sweep-") as tmp:  # trials are short: no resuming
            head = train_tower(model, sub, dev, fit=short, sources=(source_for(fit.tap, sub), source_for(fit.tap, dev)),
                               progress=False, run_dir=Path(tmp))
        score = head.config.metrics["dev_macro_f1_argmax"]
        row = {"tap": fit.tap, "depth": fit.depth, "rank": fit.rank, "keys": list(fit.keys),
               "dev_macro_f1": score, "seconds": round(time.perf_counter() - t0, 1)}
        table.append(row)
        log(f"  tap {fit.tap} depth {fit.depth} rank {fit.rank} keys {len(fit.keys)}: dev macro-F1 {score:.3f} "
            f"({row['seconds']:.0f}s)")
        if best is None or score > best[0]:
            best = (score, fit)
    return best[1], table
