"""Fit the refusal-reason head on extracted features: sweep, fit, calibrate, threshold.

1. sweep  every candidate layer with a quick linear probe (last+mean pooling, fitted on at most
          2,500 training rows), scored by dev macro-F1; greedily add layers to the best one while
          dev macro-F1 improves; then try the other poolings on the chosen layers;
2. fit    class-weighted multinomial logistic regression on train: loose L-BFGS fits along a
          small grid of L2 strengths pick one by dev macro-F1, then one tight fit at that
          strength (or a small MLP, Adam, early-stopped on dev macro-F1);
3. calibrate a temperature that minimises dev negative log-likelihood;
4. threshold per-class offsets on dev (coordinate search for macro-F1).

Plain numpy (its BLAS is fast everywhere) and deterministic for a given seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from phasegpt.evaluate import EVERYDAY
from phasegpt.head import POOLINGS, Head, HeadConfig
from phasegpt.verdict import LABELS

_POOL_INDEX = {"last": [0], "mean": [1], "last+mean": [0, 1], "last+mean+attn": [0, 1]}  # +attn: pools appended (attention.py)
EVAL_EVERY = 25  # steps between dev checks when early stopping
OOD_ROWS = 4000  # training rows the OOD statistic is estimated on
OOD_SHRINK = 0.05  # covariance shrinkage towards its mean variance (stabilises the whitening)
MIN_SOURCE_ROWS = 30  # dev answer rows a source needs before its false refusals steer the thresholds
OOD_DIMS = 64  # principal components a linear head's OOD statistic measures
CHUNK_ROWS = 512  # rows per chunk in _loss_grad (256-1024 measured; 512 was fastest on 1-3 layers)


@dataclass(frozen=True)
class FitConfig:
    """Options of ``fit_head``; the defaults are ``train-head``'s (the shipped head adds ``kind="mlp"``)."""

    layers: tuple[int, ...] | None = None   # fixed layers (indices into the extracted candidates' layers); None = sweep
    pooling: str | None = None              # fixed pooling; None = sweep POOLINGS
    max_layers: int = 3                     # largest layer combination the greedy sweep tries
    probe_rows: int | None = 2500           # training rows (a seeded random subset) the sweep's probes fit on; None = all
    kind: str = "linear"                    # "linear" or "mlp"
    mlp_hidden: int = 256                   # width of the MLP's hidden layer
    mlp_members: int = 5                    # MLPs from consecutive seeds whose logits are averaged (one wide MLP)
    l2: float = 0.01                        # L2 on the weights (standardised features)
    l2_grid: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1)  # tried on dev for the chosen layers; () = just l2
    mlp_steps: int = 2000                   # Adam minibatch (256) steps for the MLP, early-stopped on dev
    mlp_lr: float = 1e-3                    # Adam learning rate for the MLP
    mlp_l2: float = 1e-3                    # L2 for the MLP (early stopping does most of its regularising)
    tune_thresholds: bool = True            # fit per-class offsets on dev
    frr_budget: float | None = 0.03         # thresholds keep false refusals of dev everyday requests within this
    source_frr_budget: float = 0.05         # ... and pull every answer source's towards this
    source_frr_weight: float = 0.05         # how hard (macro-F1 given up per unit of excess); 0 = off; chosen on dev
    attn_heads: int = 4                     # pooling "last+mean+attn": queries per layer (train.attention)
    attn_window: int = 128                  # ... the prompt's last positions they attend over
    attn_steps: int = 2000                  # ... AdamW steps of stage 1 at most (early-stopped on dev)
    attn_members: int = 5                   # ... MLPs on [last+mean, pools], beside mlp_members on last+mean alone
    seed: int = 0


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    std = x.std(axis=0) + 1e-3  # small floor: constant dims must not blow up
    return mean.astype(np.float32), std.astype(np.float32)


def _loss_grad(params: np.ndarray, z: np.ndarray, onehot: np.ndarray, weight: np.ndarray,
               l2: float) -> tuple[float, np.ndarray]:
    """Class-weighted softmax cross-entropy + L2 on the weights, and its gradient (flat [w, b]).

    Rows go through in chunks of ``CHUNK_ROWS`` so that ``z.T @ g`` reads each chunk soon after
    ``z @ w`` did, while much of it is still in the CPU's caches, instead of two full passes over
    ``z``. Both products are memory-bound (four output columns); this measured 10-25% faster.
    """
    f, c = z.shape[1], onehot.shape[1]
    w, b = params[:f * c].reshape(f, c), params[f * c:]
    share = weight / weight.sum()
    loss = 0.5 * l2 * float(np.sum(w * w))
    gw, gb = l2 * w, np.zeros(c, params.dtype)
    for start in range(0, len(z), CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        logits = z[rows] @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        loss -= float(np.sum(share[rows] * np.sum(onehot[rows] * logp, axis=1)))
        g = (np.exp(logp) - onehot[rows]) * share[rows, None]
        gw += z[rows].T @ g
        gb += g.sum(axis=0)
    return loss, np.concatenate([gw.ravel(), gb])


def lbfgs(fun, x: np.ndarray, *, iters: int = 300, memory: int = 10, tol: float = 1e-5,
          gtol: float | None = None) -> np.ndarray:
    """Minimise a smooth convex ``fun(x) -> (loss, grad)`` with L-BFGS and a backtracking line search.

    Stops when an iteration changes the loss by at most ``tol`` (relative) and, if ``gtol`` is
    given, the largest gradient entry is at most ``gtol``; or after ``iters`` iterations. A few
    dozen full passes reach the regularised optimum that full-batch Adam only circles; small
    enough to keep instead of depending on scipy.
    """
    loss, g = fun(x)
    hist: list[tuple[np.ndarray, np.ndarray, float]] = []  # (s, y, 1 / y.s)
    for _ in range(iters):
        q, alphas = g.copy(), []
        for s, y, rho in reversed(hist):  # two-loop recursion: q <- H g
            a = rho * (s @ q)
            alphas.append(a)
            q -= a * y
        if hist:
            s, y, _ = hist[-1]
            q *= (s @ y) / (y @ y)
        for (s, y, rho), a in zip(hist, reversed(alphas)):
            q += s * (a - rho * (y @ q))
        if float(g @ q) <= 0:  # not a descent direction (curvature pairs gone stale): restart from the gradient
            hist, q = [], g.copy()
        step = 1.0 if hist else 1.0 / max(float(np.linalg.norm(g)), 1e-12)
        while True:  # Armijo backtracking
            x_new = x - step * q
            loss_new, g_new = fun(x_new)
            if loss_new <= loss - 1e-4 * step * float(g @ q):
                break
            step *= 0.5
            if step < 1e-10:  # no step decreases the loss: x is as good as float precision allows
                return x
        s, y = x_new - x, g_new - g
        if s @ y > 1e-10:
            hist = (hist + [(s, y, 1.0 / float(s @ y))])[-memory:]
        small = abs(loss - loss_new) <= tol * max(1.0, abs(loss_new))
        x, g, loss = x_new, g_new, loss_new
        # a small loss change alone can stop early (after a warm start, or one short step), hence gtol
        if small and (gtol is None or float(np.max(np.abs(g))) <= gtol):
            break
    return x


def _balance(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-hot labels and per-example weights that make every class weigh the same in the loss."""
    c = len(LABELS)
    counts = np.bincount(y, minlength=c).astype(np.float32)
    return np.eye(c, dtype=np.float32)[y], (len(y) / (c * np.maximum(counts, 1)))[y].astype(np.float32)


def _solve(z: np.ndarray, y: np.ndarray, l2: float, *, tol: float = 1e-5, gtol: float | None = None,
           init: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weights (F, C) and bias (C,) of the class-weighted softmax regression on standardised ``z``."""
    f, c = z.shape[1], len(LABELS)
    onehot, weight = _balance(y)
    start = np.zeros(f * c + c, np.float32) if init is None else np.concatenate([init[0].ravel(), init[1]])
    flat = lbfgs(lambda p: _loss_grad(p, z, onehot, weight, l2), start, tol=tol, gtol=gtol)
    return flat[:f * c].reshape(f, c).astype(np.float32), flat[f * c:].astype(np.float32)


def _fit_mlp(x: np.ndarray, y: np.ndarray, cfg: FitConfig, dev: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    """``cfg.mlp_members`` MLPs (seeds ``cfg.seed``, ``cfg.seed + 1``, ...), their logits averaged.

    The average is written as one MLP, so a head stays one MLP: the members' hidden layers side
    by side, their output weights over k. Measured on the SmolLM2 dev rows (layers 9/17/21):
    single MLPs scored dev macro-F1 0.823-0.828 (argmax) and, between seeds, 0.63-0.78 on the
    German check and 0.74-0.91 on the Spanish one; five averaged scored 0.838 on dev.
    """
    members = [_fit_one_mlp(x, y, cfg, dev, seed=cfg.seed + i) for i in range(max(1, cfg.mlp_members))]
    if len(members) == 1:
        return members[0]
    k = len(members)
    return {"mean": members[0]["mean"], "std": members[0]["std"],
            "w1": np.concatenate([m["w1"] for m in members], axis=1),
            "b1": np.concatenate([m["b1"] for m in members]),
            "w": (np.concatenate([m["w"] for m in members], axis=0) / k).astype(np.float32),
            "b": np.mean([m["b"] for m in members], axis=0).astype(np.float32)}


def _fit_one_mlp(x: np.ndarray, y: np.ndarray, cfg: FitConfig, dev: tuple[np.ndarray, np.ndarray], *,
                 seed: int) -> dict[str, np.ndarray]:
    """One-hidden-layer MLP, class-weighted, minibatch Adam; returns head arrays.

    The weights are checked on ``dev`` (features, labels) every ``EVAL_EVERY`` steps and the
    best by dev macro-F1 are kept (early stopping).
    """
    l2 = cfg.mlp_l2
    rng = np.random.default_rng(seed)
    mean, std = _standardise(x)
    z = (x - mean) / std
    n, f = z.shape
    c = len(LABELS)
    onehot, weight = _balance(y)
    params = {"w1": (rng.standard_normal((f, cfg.mlp_hidden)) * np.sqrt(2 / f)).astype(np.float32),
              "b1": np.zeros(cfg.mlp_hidden, np.float32),
              "w": np.zeros((cfg.mlp_hidden, c), np.float32), "b": np.zeros(c, np.float32)}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(v) for k, v in params.items()}
    best, best_f1 = None, -1.0
    batch = min(n, 256)
    for t in range(1, cfg.mlp_steps + 1):
        idx = rng.choice(n, batch, replace=False)
        zb, ob, wb = z[idx], onehot[idx], weight[idx]
        h = np.maximum(zb @ params["w1"] + params["b1"], 0)
        logits = h @ params["w"] + params["b"]
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        g = (p - ob) * wb[:, None] / wb.sum()  # d loss / d logits
        gh = (g @ params["w"].T) * (h > 0)
        grads = {"w": h.T @ g + l2 * params["w"], "b": g.sum(axis=0),
                 "w1": zb.T @ gh + l2 * params["w1"], "b1": gh.sum(axis=0)}
        for k in params:
            m[k] = 0.9 * m[k] + 0.1 * grads[k]
            v[k] = 0.999 * v[k] + 0.001 * grads[k] ** 2
            params[k] -= cfg.mlp_lr * (m[k] / (1 - 0.9**t)) / (np.sqrt(v[k] / (1 - 0.999**t)) + 1e-8)
        if t % EVAL_EVERY == 0 or t == cfg.mlp_steps:
            f1 = macro_f1(dev[1], _logits({"mean": mean, "std": std, **params}, dev[0]).argmax(axis=1))
            if f1 > best_f1:
                best, best_f1 = {k: v.copy() for k, v in params.items()}, f1
    return {"mean": mean, "std": std, **(best or params)}


def _with_plain_members(pooled: dict[str, np.ndarray], plain: tuple[int, dict[str, np.ndarray]] | None,
                        k_pooled: int, k_plain: int) -> dict[str, np.ndarray]:
    """One MLP averaging the logits of MLPs on [last+mean, pools] and of MLPs on last+mean alone
    (their hidden units read zeros from the pools' rows). Measured on SmolLM2's dev rows, five of
    each against five on last+mean: macro-F1 0.837 -> 0.845, safety recall 0.859 -> 0.884, XSTest
    false alarms 13.5% -> 8.1%, the Russian check 0.785 -> 0.824 (the pools alone: 0.826 on dev).
    The standardisation of the shared features is the same, fitted on the same rows."""
    if plain is None:
        return pooled
    f, p = plain
    assert np.allclose(p["mean"], pooled["mean"][:f], rtol=1e-4, atol=1e-4), "both standardise the same last+mean features"
    w1 = np.zeros((pooled["w1"].shape[0], p["w1"].shape[1]), np.float32)
    w1[:f] = p["w1"]
    k = k_pooled + k_plain
    return {"mean": pooled["mean"], "std": pooled["std"],
            "w1": np.concatenate([w1, pooled["w1"]], axis=1),
            "b1": np.concatenate([p["b1"], pooled["b1"]]),
            "w": (np.concatenate([p["w"] * k_plain, pooled["w"] * k_pooled], axis=0) / k).astype(np.float32),
            "b": ((p["b"] * k_plain + pooled["b"] * k_pooled) / k).astype(np.float32)}


def _logits(arrays: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    z = (x - arrays["mean"]) / arrays["std"]
    if "w1" in arrays:
        z = np.maximum(z @ arrays["w1"] + arrays["b1"], 0)
    return z @ arrays["w"] + arrays["b"]


def _softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    s = logits / temperature
    p = np.exp(s - s.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    """Macro-F1 over the four labels (labels absent from both y and pred are skipped)."""
    f1s = []
    for k in range(len(LABELS)):
        tp = np.sum((pred == k) & (y == k))
        denom = np.sum(pred == k) + np.sum(y == k)
        if denom:
            f1s.append(2 * tp / denom)
    return float(np.mean(f1s))


def select(feats: np.ndarray, layer_idx: tuple[int, ...], pooling: str) -> np.ndarray:
    """(N, L, 2, D) -> (N, F) in the head's feature order: per layer, [last][mean]."""
    return feats[:, list(layer_idx)][:, :, _POOL_INDEX[pooling]].reshape(len(feats), -1)


def sweep(train: np.ndarray, ytr: np.ndarray, dev: np.ndarray, ydv: np.ndarray, cfg: FitConfig,
          log=lambda s: None) -> tuple[tuple[int, ...], str, list[dict[str, Any]]]:
    """Pick layers (indices into the candidate axis) and pooling by dev macro-F1.

    Layers are ranked with ``last+mean`` pooling (or ``cfg.pooling``), which beat either pooling
    alone on every layer we have measured; the other poolings are then tried on the chosen layers.
    """
    if cfg.layers is not None and cfg.pooling is not None:
        return tuple(cfg.layers), cfg.pooling, []
    if cfg.probe_rows is not None and len(train) > cfg.probe_rows:
        # probes only rank candidates, and a probe's cost grows with its rows: a fixed subset keeps
        # the sweep's time flat as the data grows (the final fit uses every row)
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(train), cfg.probe_rows, replace=False))
        train, ytr = train[keep], ytr[keep]
    # standardise once: per-feature statistics do not depend on which features a probe selects
    mean, std = _standardise(train)
    ztr, zdv = train - mean, dev - mean
    ztr /= std
    zdv /= std
    table: list[dict[str, Any]] = []

    def probe(layer_idx: tuple[int, ...], pooling: str) -> float:
        # a probe only ranks candidates: a loose tolerance is enough and several times faster. Every
        # probe starts from zero: a warm start from the smaller set stops (loosely) before the added
        # layer's weights have been fitted, which biases the sweep against adding layers
        w, b = _solve(select(ztr, layer_idx, pooling), ytr, cfg.l2, tol=1e-3)
        score = macro_f1(ydv, (select(zdv, layer_idx, pooling) @ w + b).argmax(axis=1))
        table.append({"layers": list(layer_idx), "pooling": pooling, "dev_macro_f1": score})
        log(f"  layers {list(layer_idx)} {pooling:<9} dev macro-F1 {score:.3f}")
        return score

    pooling = cfg.pooling or "last+mean"
    if cfg.layers is not None:
        layers = tuple(cfg.layers)
        score = probe(layers, pooling)
    else:
        scores = {(i,): probe((i,), pooling) for i in range(train.shape[1])}
        layers, score = max(scores.items(), key=lambda kv: kv[1])
        while len(layers) < cfg.max_layers:
            trials = {cand: probe(cand, pooling)
                      for cand in (tuple(sorted(layers + (i,))) for i in range(train.shape[1]) if i not in layers)}
            if not trials:
                break
            cand, s = max(trials.items(), key=lambda kv: kv[1])
            if s <= score + 1e-3:
                break
            layers, score = cand, s
    if cfg.pooling is None:
        for other in (p for p in POOLINGS if p != pooling):
            s = probe(layers, other)
            if s > score:
                pooling, score = other, s
    return layers, pooling, table


def calibrate(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising negative log-likelihood (grid over 0.05..20, then refined)."""
    def nll(t: float) -> float:
        return float(-np.mean(np.log(_softmax(logits, t)[np.arange(len(y)), y] + 1e-12)))

    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 60))
    best = min(grid, key=nll)
    fine = best * np.exp(np.linspace(-0.1, 0.1, 21))
    return float(min(fine, key=nll))


def tune_thresholds(probs: np.ndarray, y: np.ndarray, rounds: int = 2, *, sources: Sequence[str] | None = None,
                    budget: float | None = None, source_budget: float = 0.05, source_weight: float = 0.0) -> np.ndarray:
    """Per-class offsets subtracted from probs before argmax, by coordinate search on dev macro-F1.

    With ``sources`` (each dev row's source) and a ``budget``, the search maximises macro-F1
    minus a steep penalty for refusing more than ``budget`` of the everyday requests (the
    ``answer`` rows of ``evaluate.EVERYDAY`` sources): false refusals are the failure users
    notice first, so the operating point is chosen to keep them within the budget when it can.

    With ``source_weight`` > 0, every source with at least ``MIN_SOURCE_ROWS`` answer rows on dev
    also costs ``source_weight`` times its false-refusal rate above ``source_budget``: a gentler
    pull than the everyday budget's, which trades a little macro-F1 for fewer refusals of
    answerable maths and RAG questions.
    """
    answer = LABELS.index("answer")
    src = None if sources is None else np.asarray(sources)
    everyday = None if src is None else np.isin(src, EVERYDAY) & (y == answer)
    groups: list[np.ndarray] = []
    if src is not None and source_weight > 0:
        groups = [m for s in sorted(set(src.tolist())) if (m := (src == s) & (y == answer)).sum() >= MIN_SOURCE_ROWS]

    def score(t: np.ndarray) -> float:
        pred = (probs - t).argmax(axis=1)
        f1 = macro_f1(y, pred)
        if everyday is not None and budget is not None and everyday.any():
            f1 -= 10.0 * max(0.0, float(np.mean(pred[everyday] != answer)) - budget)
        for m in groups:
            f1 -= source_weight * max(0.0, float(np.mean(pred[m] != answer)) - source_budget)
        return f1

    t = np.zeros(probs.shape[1])
    grid = np.linspace(-0.3, 0.6, 37)
    for _ in range(rounds):
        for k in range(probs.shape[1] - 1):  # "answer" stays the reference at 0
            scores = []
            for g in grid:
                t2 = t.copy()
                t2[k] = g
                scores.append(score(t2))
            t[k] = grid[int(np.argmax(scores))] if max(scores) > score(t) else t[k]
    return t


def ood_statistic(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and whitening matrix of rows ``u`` (N, k): ``(u - mean) @ whiten`` has identity covariance
    (under a covariance shrunk a little towards its mean variance)."""
    mean = u.mean(axis=0)
    cov = np.cov(u - mean, rowvar=False)
    cov = (1 - OOD_SHRINK) * cov + OOD_SHRINK * np.eye(len(cov)) * np.trace(cov) / len(cov)
    chol = np.linalg.cholesky(cov)
    return mean.astype(np.float32), np.linalg.inv(chol).T.astype(np.float32)


def distances(u: np.ndarray, mean: np.ndarray, whiten: np.ndarray) -> np.ndarray:
    """Mahalanobis distances of rows ``u`` (see ``ood_statistic``)."""
    d = (u - mean) @ whiten
    return np.sqrt((d * d).sum(axis=1))



def head_ood(arrays: dict[str, np.ndarray], xtr: np.ndarray, xdv: np.ndarray, seed: int) -> tuple[dict[str, np.ndarray], float]:
    """The OOD arrays of a linear or MLP head and its dev 99th percentile (see ``Head.ood``).

    An MLP's statistic is on its hidden pre-activations; a linear head's on the top
    ``OOD_DIMS`` principal components of its standardised training features.
    """
    rows = np.sort(np.random.default_rng(seed).choice(len(xtr), min(len(xtr), OOD_ROWS), replace=False))
    ztr, zdv = (xtr[rows] - arrays["mean"]) / arrays["std"], (xdv - arrays["mean"]) / arrays["std"]
    extra = {}
    if "w1" in arrays:
        utr, udv = ztr @ arrays["w1"] + arrays["b1"], zdv @ arrays["w1"] + arrays["b1"]
    else:
        _, _, vt = np.linalg.svd(ztr - ztr.mean(axis=0), full_matrices=False)
        extra["ood_proj"] = vt[:OOD_DIMS].T.astype(np.float32)
        utr, udv = ztr @ extra["ood_proj"], zdv @ extra["ood_proj"]
    mean, whiten = ood_statistic(utr)
    q99 = float(np.quantile(distances(udv, mean, whiten), 0.99))
    return {**extra, "ood_mean": mean, "ood_whiten": whiten}, q99


def fit_head(train: np.ndarray, ytr: np.ndarray, dev: np.ndarray, ydv: np.ndarray, *, layers: list[int],
             cfg: FitConfig = FitConfig(), identity: dict[str, Any], log=lambda s: None,
             sources: Sequence[str] | None = None, states: tuple[Any, Sequence, Sequence] | None = None,
             progress: bool = False) -> Head:
    """Sweep, fit, calibrate and threshold a head on features from ``features.extract``.

    Args:
        train, dev: features (N, L, 2, D) for the candidate ``layers``.
        ytr, ydv: label indices into LABELS.
        layers: the model layer index of each candidate on axis 1.
        cfg: fitting options.
        identity: HeadConfig fields naming the base (base_model, base_fingerprint,
            adapter_sha256, hidden_size) and the training record.
        log: called with progress lines.
        sources: each dev row's source: the thresholds keep the everyday sources' false refusals
            within ``cfg.frr_budget`` and pull every source's towards ``cfg.source_frr_budget``
            (with ``cfg.source_frr_weight``).
        states: ``(cache, train_examples, dev_examples)``, the per-token state cache the features
            were pooled from: needed for ``last+mean+attn`` pooling, whose queries are trained on it.
        progress: a progress bar for the attention queries' training.
    """
    layer_idx, pooling, table = sweep(train, ytr, dev, ydv, cfg, log)
    xtr, xdv = select(train, layer_idx, pooling), select(dev, layer_idx, pooling)
    attn: dict[str, np.ndarray] = {}
    if pooling.endswith("+attn"):
        if states is None:
            raise ValueError("last+mean+attn pooling trains its queries on the per-token state cache: "
                             "run train-head with --states cache")
        from phasegpt.train.attention import AttnFit, attention_features, fit_queries

        cache, tr_rows, dv_rows = states
        chosen = [layers[i] for i in layer_idx]
        mean, std = _standardise(xtr)
        afit = AttnFit(heads=cfg.attn_heads, window=cfg.attn_window, steps=cfg.attn_steps, seed=cfg.seed)
        attn, score = fit_queries(cache, chosen, tr_rows, ytr, (xtr - mean) / std, dv_rows, ydv, (xdv - mean) / std,
                                  afit, progress=progress, log=log)
        log(f"attention queries: dev macro-F1 {score:.3f} (jointly with a single MLP)")
        plain = (xtr.shape[1], _fit_mlp(xtr, ytr, cfg, dev=(xdv, ydv))) \
            if cfg.kind == "mlp" and cfg.mlp_members else None
        xtr = np.concatenate([xtr, attention_features(cache, tr_rows, chosen, attn, cfg.attn_window)], axis=1)
        xdv = np.concatenate([xdv, attention_features(cache, dv_rows, chosen, attn, cfg.attn_window)], axis=1)
    l2 = cfg.l2 if cfg.kind == "linear" else cfg.mlp_l2
    if cfg.kind == "linear":
        mean, std = _standardise(xtr)
        ztr, zdv = (xtr - mean) / std, (xdv - mean) / std
        loose: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        if cfg.l2_grid:  # loose fits along the path (strong to weak, each warm-starting the next) pick l2
            scores, wb = [], None
            for strength in sorted(cfg.l2_grid, reverse=True):
                wb = loose[strength] = _solve(ztr, ytr, strength, tol=1e-3, init=wb)
                scores.append((macro_f1(ydv, (zdv @ wb[0] + wb[1]).argmax(axis=1)), strength))
                log(f"  l2 {strength:g}: dev macro-F1 {scores[-1][0]:.3f}")
            l2 = max(scores, key=lambda t: (t[0], t[1]))[1]  # ties go to the stronger L2
        w, b = _solve(ztr, ytr, l2, gtol=1e-4, init=loose.get(l2))  # then one tight fit of the chosen l2
        arrays = {"mean": mean, "std": std, "w": w, "b": b}
    elif attn:  # attn_members MLPs on [last+mean, pools] beside the mlp_members fitted above on last+mean
        pooled = _fit_mlp(xtr, ytr, FitConfig(**{**cfg.__dict__, "mlp_members": max(1, cfg.attn_members)}),
                          dev=(xdv, ydv))
        arrays = _with_plain_members(pooled, plain, max(1, cfg.attn_members), cfg.mlp_members)
        # stored in float16: on SmolLM2's three layers the MLP's first layer is 10,368 x 2,560 weights,
        # 106 MB in float32; the calibration, thresholds and OOD statistic below are fitted on these
        arrays["w1"] = arrays["w1"].astype(np.float16)
    else:
        arrays = _fit_mlp(xtr, ytr, cfg, dev=(xdv, ydv))
    extra = {"l2": l2, "sweep": table}
    return finish_head(arrays, attn, xtr, xdv, ytr, ydv, layers=tuple(layers[i] for i in layer_idx), pooling=pooling,
                       cfg=cfg, identity=identity, sources=sources, extra_metrics=extra)


def finish_head(arrays: dict[str, np.ndarray], attn: dict[str, np.ndarray], xtr: np.ndarray, xdv: np.ndarray,
                ytr: np.ndarray, ydv: np.ndarray, *, layers: tuple[int, ...], pooling: str, cfg: FitConfig,
                identity: dict[str, Any], sources: Sequence[str] | None, extra_metrics: dict[str, Any]) -> Head:
    """The fitted classifier's OOD statistic, temperature and thresholds on dev, and the Head."""
    ood_arrays, ood_q99 = head_ood(arrays, xtr, xdv, cfg.seed)
    arrays = {**arrays, **attn}
    dev_logits = _logits(arrays, xdv)
    temperature = calibrate(dev_logits, ydv)
    probs = _softmax(dev_logits, temperature)
    offsets = tune_thresholds(probs, ydv, sources=sources, budget=cfg.frr_budget,
                              source_budget=cfg.source_frr_budget, source_weight=cfg.source_frr_weight) \
        if cfg.tune_thresholds \
        else np.zeros(len(LABELS))
    pred = (probs - offsets).argmax(axis=1)
    metrics = {"dev_macro_f1": macro_f1(ydv, pred), "dev_accuracy": float(np.mean(pred == ydv)),
               "dev_macro_f1_argmax": macro_f1(ydv, probs.argmax(axis=1)),
               "n_train": int(len(ytr)), "n_dev": int(len(ydv)), **extra_metrics}
    config = HeadConfig(layers=layers, pooling=pooling, kind=cfg.kind,
                        temperature=temperature, thresholds=dict(zip(LABELS, map(float, offsets))),
                        metrics=metrics, ood_q99=ood_q99, attn_window=cfg.attn_window if attn else None, **identity)
    return Head(config, {k: mx.array(v) for k, v in {**arrays, **ood_arrays}.items()})
