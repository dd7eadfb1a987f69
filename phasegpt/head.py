"""The refusal-reason head: a small classifier on tapped residual-stream features.

states    = the tapped hidden states; for a ``tower`` head, the tapped block's states run
            again through the tower (phasegpt.tower: the next blocks with LoRA, final norm)
features  = concat over layers of pooled states (last prompt token and/or the mean over
            the user's own tokens; with ``+attn`` also learned attention pools over the
            prompt's last positions, one per query), standardised with training mean/std
logits    = linear (W, b) or a one-hidden-layer MLP over the features
probs     = softmax(logits / temperature)          (temperature fitted on dev data)
ood       = Mahalanobis distance of the features' projection (the MLP's pre-activations,
            or principal components) from the training rows, / its dev 99th percentile
label     = argmax(probs' - thresholds)            (per-class offsets, 0 = plain argmax;
            probs' = probs moved towards ``ood_prior`` as ood grows past 1)

A head may hold several fits (``fits`` > 1, made by ``phasegpt merge-heads``): each fit's arrays
stacked on a leading axis, each with its own attention queries and standardisation; the logits
and OOD distances are the mean over the fits (each fit's temperature and OOD percentile folded
into its arrays), then calibrated and thresholded on dev as one head.

A head is a folder artifact: ``head.safetensors`` (arrays, a tower's LoRA arrays among
them) beside ``head.json`` (everything else, including the base model's name and
fingerprint and the SHA-256 of the weights file). Loading a head onto another base model
raises MismatchError.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from phasegpt.errors import MismatchError, ModelLoadError
from phasegpt.verdict import LABELS

POOLINGS = ("last", "mean", "last+mean", "last+mean+attn")
KINDS = ("linear", "mlp", "tower")
WEIGHTS, CONFIG = "head.safetensors", "head.json"
TOWER_PREFIX = "tower."  # names of a tower's LoRA arrays in head.safetensors
# What a verdict leans towards when the request is far from everything the head saw: mostly
# "answer", because refusing what one cannot read is the failure users notice first.
OOD_PRIOR = {"safety": 0.1, "epistemic": 0.1, "missing_context": 0.1, "answer": 0.7}

# A merged head's first layers are stored 8-bit (mx.quantize over groups of 64 inputs): four fits of
# SmolLM2's attention head take 106 MB so, not 212 MB in float16. Head.load widens them again.
W1_GROUP, W1_BITS = 64, 8


def quantize_w1(params: dict[str, Any]) -> dict[str, Any]:
    """``w1`` (..., F, U) as ``w1`` (packed, along F), ``w1_scales`` and ``w1_biases``; in float16
    when F is not a multiple of the group. ``widen`` undoes it."""
    w = mx.array(params["w1"]).astype(mx.float16)
    if w.shape[-2] % W1_GROUP:
        return {**params, "w1": w}
    q, scales, biases = mx.quantize(w.swapaxes(-1, -2), group_size=W1_GROUP, bits=W1_BITS)
    return {**params, "w1": q, "w1_scales": scales, "w1_biases": biases}


def widen(params: dict[str, Any]) -> dict[str, Any]:
    """Arrays as stored (``quantize_w1``; ``w1`` and ``ood_whiten`` in float16) as used: float32,
    widened once at load rather than on every matmul of every verdict."""
    out = {k: v for k, v in params.items() if k not in ("w1_scales", "w1_biases")}
    if "w1_scales" in params:
        w = mx.dequantize(params["w1"], params["w1_scales"], params["w1_biases"], group_size=W1_GROUP, bits=W1_BITS)
        out["w1"] = w.swapaxes(-1, -2)
    for k in ("w1", "ood_whiten"):
        if k in out and out[k].dtype == mx.float16:
            out[k] = out[k].astype(mx.float32)
    return out


@dataclass(frozen=True)
class HeadConfig:
    """Everything about a head except its arrays (stored as ``head.json``)."""

    layers: tuple[int, ...]                 # blocks whose output is tapped
    pooling: str = "last+mean"              # one of POOLINGS
    kind: str = "linear"                    # "linear", "mlp", or "tower" (an MLP on a tower's output)
    labels: tuple[str, ...] = LABELS        # column order of the logits
    temperature: float = 1.0                # divides logits; fitted on the dev split
    thresholds: dict[str, float] = field(default_factory=lambda: {k: 0.0 for k in LABELS})
    base_model: str = ""                    # name of the model the head was trained on
    base_fingerprint: str = ""              # fingerprint.fingerprint_model of that model
    adapter_sha256: str | None = None       # adapter the features were taken with, if any
    hidden_size: int = 0                    # residual width of the base model
    weights_sha256: str = ""                # SHA-256 of head.safetensors, checked on load
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # data, seed, command
    tower: dict[str, Any] | None = None     # phasegpt.tower.TowerConfig fields, for kind "tower"
    ood_q99: float | None = None            # dev 99th percentile of the OOD distance (None: no OOD statistic)
    ood_prior: dict[str, float] = field(default_factory=lambda: dict(OOD_PRIOR))
    attn_window: int | None = None          # "+attn" pooling: how many of the prompt's last positions it attends over
    fits: int = 1                           # fits stacked on the arrays' leading axis (1: arrays unstacked)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadConfig:
        """Build from a dict, ignoring keys this version does not know."""
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        for k in ("layers", "labels"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)


def pool(hidden: dict[int, mx.array], layers: tuple[int, ...], pooling: str, lengths: mx.array,
         span: tuple[int, int] | mx.array) -> mx.array:
    """Pooled features (B, F) from tapped hidden states {layer: (B, T, D)} of right-padded prompts.

    For each layer in order: the last prompt token's state and/or the mean over the user's
    own tokens (positions ``[pre, length - post)``), concatenated.

    Args:
        hidden: the tap's output per layer.
        layers: which layers, in feature order.
        pooling: one of POOLINGS.
        lengths: (B,) real length of each prompt (positions past it are padding).
        span: template tokens before and after the user's last turn (prompting.content_span):
            one ``(pre, post)`` for every prompt, or a (B, 2) array of them (conversations differ).
    """
    if isinstance(span, mx.array):
        pre, post = span[:, 0:1], span[:, 1]  # (B, 1), (B,)
    else:
        pre, post = span
    kinds = [k for k in pooling.split("+") if k != "attn"]  # attention pools need a head's arrays (attn_pool)
    weights = None
    if "mean" in kinds:
        T = next(iter(hidden.values())).shape[1]
        pos = mx.arange(T)[None]  # (1, T)
        end = mx.maximum(lengths - post, pre + 1 if isinstance(pre, int) else pre[:, 0] + 1)[:, None]  # at least one token
        mask = ((pos >= pre) & (pos < end)).astype(mx.float32)
        # the mean as a matmul (B, 1, T) @ (B, T, D): written as a broadcast multiply and a sum it
        # made a batch split over two CPU streams (Model.prefill) slower than one stream, measured
        weights = (mask / mask.sum(axis=1, keepdims=True))[:, None, :]
    parts = []
    for layer in layers:
        h = hidden[layer].astype(mx.float32)  # (B, T, D)
        B = h.shape[0]
        if "last" in kinds:
            idx = (lengths - 1).reshape(B, 1, 1)
            parts.append(mx.take_along_axis(h, idx, axis=1)[:, 0])  # (B, D)
        if weights is not None:
            parts.append((weights @ h)[:, 0])  # (B, D)
    return mx.concatenate(parts, axis=-1)


def attn_pool(hidden: dict[int, mx.array], layers: tuple[int, ...], arrays: dict[str, mx.array], window: int,
              lengths: mx.array, span: tuple[int, int] | mx.array) -> mx.array:
    """Attention pools (B, L*H*D) of right-padded prompts: for each layer, its states standardised
    (``attn_mean``, ``attn_std``: (L, D)), scored by H learned queries (``attn_q``: (L, D, H)), softmax over the prompt's positions from the user's turn on
    (``pre``) and among the last ``window``, and the states averaged with those weights, one pool
    per query. With the arrays of G fits stacked ((G, L, D, H) and so on), the pools (G, B, L*H*D).

    The pools see where in the prompt the signal is (a missing input, a harmful phrase) instead of
    only its last token and its mean; the queries are trained with the head (train.attention).
    Written without a standardised copy of the states: a query's scores on ``(h - mean) / std``
    are ``h @ (q / std)`` up to a constant (which the softmax drops), and the weights sum to one,
    so the pool of the standardised states is the standardised pool.
    """
    pre = span[:, 0:1] if isinstance(span, mx.array) else span[0]
    T = next(iter(hidden.values())).shape[1]
    pos = mx.arange(T)[None]  # (1, T)
    n = lengths[:, None]
    keep = (pos >= pre) & (pos < n) & (pos >= n - window)
    keep = keep | (pos == n - 1)  # at least the last token
    stacked = arrays["attn_q"].ndim == 4
    if not stacked:
        arrays = {k: arrays[k][None] for k in ("attn_q", "attn_mean", "attn_std")}
    G, _, D, H = arrays["attn_q"].shape
    parts = []
    for j, layer in enumerate(layers):
        h = hidden[layer].astype(mx.float32)  # (B, T, D)
        mean, std = arrays["attn_mean"][:, j], arrays["attn_std"][:, j]  # (G, D)
        q = (arrays["attn_q"][:, j] / std[:, :, None]).transpose(1, 0, 2).reshape(D, G * H)
        scores = mx.where(keep[:, :, None], h @ q, -1e9)  # (B, T, G*H)
        w = mx.softmax(scores, axis=1).reshape(h.shape[0], T, G, H).transpose(2, 0, 3, 1)  # (G, B, H, T)
        pooled = (w @ h[None] - mean[:, None, None]) / std[:, None, None]  # (G, B, H, D)
        parts.append(pooled.reshape(G, h.shape[0], H * D))
    out = mx.concatenate(parts, axis=-1)
    return out if stacked else out[0]


class Head:
    """A trained head: config plus arrays ``mean``, ``std``, ``w``, ``b`` (``w1``, ``b1`` for an MLP;
    a tower's LoRA arrays under ``tower.``; ``ood_*`` for the out-of-distribution statistic).

    A tower head must be attached to its base model (``attach``) before use: the tower is built
    from the base's own blocks. ``Model`` does that when it is given the head.
    """

    def __init__(self, config: HeadConfig, params: dict[str, mx.array]):
        if config.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {config.pooling!r}; choose one of {POOLINGS}")
        if config.kind not in KINDS:
            raise ValueError(f"unknown head kind {config.kind!r}; choose one of {KINDS}")
        if config.fits > 1 and config.kind == "tower":
            raise ValueError("a tower head holds one fit; merge linear or mlp heads only")
        self.config = config
        self.params = params  # as stored: unstacked when ``fits`` is 1
        # what the maths reads: every array with the fits' leading axis (a view when there is one fit)
        self._p = params if config.fits > 1 else \
            {k: v if k.startswith(TOWER_PREFIX) else v[None] for k, v in params.items()}
        mx.eval(self._p)  # evaluated here: a lazy view would belong to this thread's stream, and verdicts run on others
        self.tower: Any = None
        self._fold: tuple[list[mx.array], mx.array] | None = None  # position_logits' first layer

    def attach(self, model: Any) -> None:
        """Build a tower head's tower on ``model`` (an mlx-lm model; the tower shares its arrays) and
        load the LoRA arrays into it. Nothing to do for other kinds.

        Raises:
            ModelLoadError: the head's LoRA arrays do not fit the tower it describes (all mismatches listed).
        """
        if self.config.kind != "tower":
            return
        from mlx.utils import tree_unflatten

        from phasegpt.tower import Tower, TowerConfig

        tower = Tower(model, TowerConfig.from_dict(self.config.tower or {}))
        want = tower.lora_arrays()
        have = {k[len(TOWER_PREFIX):]: v for k, v in self.params.items() if k.startswith(TOWER_PREFIX)}
        problems = [f"missing {k}" for k in sorted(set(want) - set(have))]
        problems += [f"unexpected {k}" for k in sorted(set(have) - set(want))]
        problems += [f"{k} has shape {tuple(have[k].shape)}, the tower needs {tuple(want[k].shape)}"
                     for k in sorted(set(want) & set(have)) if have[k].shape != want[k].shape]
        if problems:
            raise ModelLoadError("the head's tower arrays do not fit its tower: " + "; ".join(problems)
                                 + ". Train the tower again with `phasegpt train-head --kind tower`.")
        tower.update(tree_unflatten(list(have.items())))
        self.tower = tower

    # --- features ---------------------------------------------------------------------
    def states(self, hidden: dict[int, mx.array]) -> dict[int, mx.array]:
        """What the head pools: the tapped states, or for a tower the tower's output on them."""
        if self.config.kind != "tower":
            return hidden
        if self.tower is None:
            raise RuntimeError("a tower head must be attached to its base model first (Head.attach)")
        layer = self.config.layers[0]
        return {layer: self.tower(hidden[layer])}

    def pool(self, hidden: dict[int, mx.array], lengths: mx.array, span: tuple[int, int] | mx.array) -> mx.array:
        """Pooled features for this head's layers and pooling (see ``pool`` and ``attn_pool``): (B, F),
        or (G, B, F) with attention pools, which differ between the G fits."""
        feats = pool(hidden, self.config.layers, self.config.pooling, lengths, span)
        if not self.config.pooling.endswith("+attn"):
            return feats
        pools = attn_pool(hidden, self.config.layers, self._p, self.config.attn_window or 1, lengths, span)
        return mx.concatenate([mx.broadcast_to(feats[None], (pools.shape[0], *feats.shape)), pools], axis=-1)

    def position_logits(self, hidden: dict[int, mx.array]) -> mx.array:
        """Calibrated logits (T, C) of the head at every position of one prompt (B=1), as if that
        position were the whole prompt: its last token, its mean and every attention pool (which over
        one position is that position, standardised) are all its state. The evidence for a verdict.

        Those features repeat each state, so the first layer is folded over the copies (``_folded``):
        one (D, U) matmul per tapped layer, on SmolLM2's attention head 1,728 inputs per position
        instead of 10,368.
        """
        fold, bias, out = self._folded()
        x = bias
        for j, layer in enumerate(self.config.layers):
            x = x + hidden[layer][0].astype(mx.float32) @ fold[j]  # (T, D) @ (D, U)
        if out is not None:
            x = mx.maximum(x, 0) @ out[0] + out[1]
        return x.astype(mx.float32) / self.config.temperature

    def _folded(self) -> tuple[list[mx.array], mx.array, tuple[mx.array, mx.array] | None]:
        """The first layer (``w1``, or ``w`` of a linear head) folded for ``position_logits``:
        per tapped layer a (D, U) matrix summing the rows of every copy of that layer's state,
        the standardisations (``mean``/``std``, and ``attn_mean``/``attn_std``) taken in; the bias;
        and an MLP's output layer. Several fits are one wider MLP here (their hidden units side by
        side, their output weights averaged), or one linear map (their weights averaged).
        Computed once, in numpy (no MLX stream of any thread), and kept; ``load`` does it, so the
        first verdict does not wait for it (about a second on SmolLM2's attention head)."""
        if self._fold is None:
            folds, biases = [], []
            for g in range(self.config.fits):
                p = {k: np.asarray(v[g], dtype=np.float32) for k, v in self._p.items()
                     if k in ("mean", "std", "w1", "b1", "w", "b", "attn_mean", "attn_std")}
                fold, bias = self._fold_one(p)
                folds.append(fold)
                biases.append(bias)
            G = self.config.fits
            if "w1" in self._p:  # hidden units side by side; the output layer averages the fits
                fold = [np.concatenate([f[j] for f in folds], axis=1) for j in range(len(folds[0]))]
                bias = np.concatenate(biases)
                w = np.concatenate([np.asarray(v, np.float32) for v in self._p["w"]]) / G
                out = (mx.array(w), mx.array(np.asarray(self._p["b"], np.float32).mean(axis=0)))
            else:
                fold = [sum(f[j] for f in folds) / G for j in range(len(folds[0]))]
                bias, out = sum(biases) / G, None
            self._fold = ([mx.array(f) for f in fold], mx.array(bias), out)
        return self._fold

    def _fold_one(self, p: dict[str, np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
        """``_folded``'s first layer of one fit (numpy arrays of that fit)."""
        first, bias = (p["w1"], p["b1"]) if "w1" in p else (p["w"], p["b"])
        scaled = first / p["std"][:, None]
        bias = bias - (p["mean"] / p["std"]) @ first
        layers = self.config.layers
        n = len([k for k in self.config.pooling.split("+") if k != "attn"])
        H = self._p["attn_q"].shape[-1] if "attn_q" in self._p else 0  # queries per layer
        D = p["mean"].shape[0] // (len(layers) * (n + H))  # features: L*n states, then L*H pools
        block = lambda i: scaled[i * D:(i + 1) * D]  # noqa: E731 - the i-th D-wide slice of the features
        fold = [sum(block(j * n + c) for c in range(n)) for j in range(len(layers))]
        if H:
            base = len(layers) * n
            for j in range(len(layers)):
                s = sum(block(base + j * H + q) for q in range(H))  # x = (h - attn_mean) / attn_std
                fold[j] = fold[j] + s / p["attn_std"][j][:, None]
                bias = bias - (p["attn_mean"][j] / p["attn_std"][j]) @ s
        return fold, bias

    # --- classifier -------------------------------------------------------------------
    def logits(self, feats: mx.array) -> mx.array:
        """Raw logits (B, C) for features (B, F) or (G, B, F): the mean over the fits."""
        p = self._p
        x = (feats - p["mean"][:, None]) / p["std"][:, None]  # (G, B, F)
        if "w1" in p:
            x = mx.maximum(x @ p["w1"] + p["b1"][:, None], 0)
        return (x @ p["w"] + p["b"][:, None]).mean(axis=0).astype(mx.float32)  # float32 whatever the stored dtype: verdicts go through numpy

    def probs(self, feats: mx.array) -> mx.array:
        """Calibrated probabilities (B, C)."""
        return mx.softmax(self.logits(feats) / self.config.temperature, axis=-1)

    def ood(self, feats: mx.array) -> mx.array | None:
        """Out-of-distribution score (B,) of features (B, F): 1 is the dev 99th percentile; None
        when the head carries no OOD statistic (heads trained before it existed)."""
        if self.config.ood_q99 is None:
            return None
        p = self._p
        x = (feats - p["mean"][:, None]) / p["std"][:, None]  # (G, B, F)
        u = x @ p["w1"] + p["b1"][:, None] if "w1" in p else x @ p["ood_proj"]  # (G, B, k)
        d = (u - p["ood_mean"][:, None]) @ p["ood_whiten"]
        return (mx.sqrt((d * d).sum(axis=-1)).mean(axis=0) / self.config.ood_q99).astype(mx.float32)

    def adjust(self, probs: np.ndarray, ood: np.ndarray | None) -> np.ndarray:
        """Probabilities moved towards ``ood_prior`` as the OOD score grows from 1 to 2 (numpy)."""
        if ood is None:
            return probs
        prior = np.array([self.config.ood_prior.get(k, 0.0) for k in self.config.labels], dtype=np.float64)
        alpha = np.clip(np.asarray(ood, dtype=np.float64) - 1.0, 0.0, 1.0)[..., None]
        return (1 - alpha) * probs + alpha * prior / prior.sum()

    def decide(self, probs: mx.array | np.ndarray) -> list[str]:
        """Labels after the per-class threshold offsets, for probabilities (N, C).

        In numpy on purpose: during ``stream`` an MLX op here would queue behind the decode
        step mlx-lm has already scheduled, and the verdict would wait for it.
        """
        t = np.array([self.config.thresholds.get(k, 0.0) for k in self.config.labels])
        return [self.config.labels[i] for i in np.argmax(np.asarray(probs) - t, axis=-1).tolist()]

    # --- identity and storage ---------------------------------------------------------
    @property
    def sha256(self) -> str:
        return self.config.weights_sha256

    def check_base(self, *, name: str, fingerprint: str, hidden_size: int, adapter_sha256: str | None) -> None:
        """Raise MismatchError unless this head was trained on this base model (and adapter)."""
        c = self.config
        problems = []
        if c.base_fingerprint and c.base_fingerprint != fingerprint:
            problems.append(f"it was trained on {c.base_model or '?'} (fingerprint {c.base_fingerprint}) "
                            f"but the model is {name} (fingerprint {fingerprint})")
        if c.hidden_size and c.hidden_size != hidden_size:
            problems.append(f"it expects hidden size {c.hidden_size}, the model has {hidden_size}")
        if c.adapter_sha256 != adapter_sha256:
            problems.append(f"it was trained with adapter {c.adapter_sha256 or 'none'} "
                            f"but the model has adapter {adapter_sha256 or 'none'}")
        if problems:
            raise MismatchError("this head does not fit the model: " + "; ".join(problems)
                                + ". Train a head for this model with `phasegpt train-head`.")

    def save(self, folder: str | Path) -> Path:
        """Write ``head.safetensors`` and ``head.json`` into ``folder`` (atomically, each by rename)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".head-") as tmp:
            tmp_w = Path(tmp) / WEIGHTS
            mx.save_safetensors(str(tmp_w), self.params)
            digest = hashlib.sha256(tmp_w.read_bytes()).hexdigest()
            self.config = HeadConfig.from_dict({**asdict(self.config), "weights_sha256": digest})
            tmp_c = Path(tmp) / CONFIG
            tmp_c.write_text(json.dumps(asdict(self.config), indent=2, sort_keys=True) + "\n")
            os.replace(tmp_w, folder / WEIGHTS)
            os.replace(tmp_c, folder / CONFIG)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Head:
        """Read a head folder (or the head files inside an adapter folder)."""
        folder = Path(folder).expanduser()
        cfg_file, w_file = folder / CONFIG, folder / WEIGHTS
        for f in (cfg_file, w_file):
            if not f.is_file():
                raise FileNotFoundError(f"{f} not found; a head folder holds {CONFIG} and {WEIGHTS} (write one with `phasegpt train-head`)")
        try:
            config = HeadConfig.from_dict(json.loads(cfg_file.read_text()))
        except (ValueError, TypeError) as e:
            raise ModelLoadError(f"{cfg_file} is not a valid head config: {e}; train the head again") from e
        data = w_file.read_bytes()
        if config.weights_sha256 and hashlib.sha256(data).hexdigest() != config.weights_sha256:
            raise ModelLoadError(f"{w_file} does not match the SHA-256 recorded in {cfg_file}; the head is corrupt or half-copied, train or copy it again")
        try:
            params = mx.load(str(w_file))
        except (RuntimeError, ValueError) as e:
            raise ModelLoadError(f"could not read {w_file}: {e}; train or copy the head again") from e
        required = {"mean", "std", "w", "b"} | ({"w1", "b1"} if config.kind == "mlp" else set())
        if config.pooling.endswith("+attn"):
            required |= {"attn_q", "attn_mean", "attn_std"}
        if config.ood_q99 is not None:
            required |= {"ood_mean", "ood_whiten"} | (set() if "w1" in params else {"ood_proj"})
        if missing := sorted(required - set(params)):
            raise ModelLoadError(f"{w_file} lacks arrays {missing}; train the head again")
        if config.fits > 1 and (odd := sorted(k for k, v in params.items()
                                              if not k.startswith(TOWER_PREFIX) and (v.ndim < 2 or v.shape[0] != config.fits))):
            raise ModelLoadError(f"{w_file}: arrays {odd} do not hold the {config.fits} fits {cfg_file} names; "
                                 "merge the heads again with `phasegpt merge-heads`")
        params = widen(params)  # stored small (fit_head, merge-heads)
        head = cls(config, params)
        head._folded()  # the evidence's first layer, at start-up rather than on the first verdict
        return head
