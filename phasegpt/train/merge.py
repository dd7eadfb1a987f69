"""Several fits as one head: ``phasegpt merge-heads``.

Heads fitted apart on the same base, layers and pooling (other seeds, other training data)
make a better head together than any of them: on SmolLM2 the shipped fit averaged with a fit
that also saw the project's fact rows kept the shipped dev score and refused about half as many
stable facts as either alone (the model card's "What was tried"). A merged head stacks the
fits' arrays on a leading axis (``HeadConfig.fits``): each fit keeps its own attention queries
and standardisation, its logits are divided by its own temperature and its OOD distances by its
own dev percentile, and the head takes the mean of both over the fits. The mean is then
calibrated on dev like one fitted head: a temperature, the dev 99th percentile of the OOD
distance, and per-class thresholds (the same budgets as ``train-head``).

The cost of a verdict grows with the fits (an MLP head's first layer is read whole for every
prompt: on a CPU with little memory bandwidth four whole SmolLM2 fits add about 110 ms to a
verdict), so ``members`` keeps only the first few MLPs of each kind of every fit (an MLP head is
``mlp_members`` MLPs on last+mean and ``attn_members`` on the pools too, side by side). Measured
on SmolLM2's dev rows: four fits with two of each kind each (16 MLPs, 1.6 fits' weights) scored
within noise of the four whole fits (cross-fitted macro-F1 0.854 against 0.857). Their OOD
statistic is then estimated again, on the kept units, from ``OOD_ROWS`` training rows.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from phasegpt.head import TOWER_PREFIX, Head, HeadConfig, quantize_w1, widen
from phasegpt.train.data import Example
from phasegpt.train.fit_head import (OOD_ROWS, FitConfig, _softmax, calibrate, distances, macro_f1, ood_statistic,
                                     tune_thresholds)
from phasegpt.verdict import LABELS

# what every fit must share to be stacked: the features they read and the base they were fitted on
SHARED = ("kind", "layers", "pooling", "labels", "attn_window", "base_fingerprint", "adapter_sha256", "hidden_size")


def stack(heads: Sequence[Head], members: int | None = None,
          hidden: int = FitConfig().mlp_hidden) -> tuple[dict[str, Any], dict[str, mx.array]]:
    """The stacked arrays of every fit of ``heads`` (a merged head's fits count one by one), each
    fit's temperature and OOD percentile folded in, as they are stored (``quantize_w1``); and the
    HeadConfig fields they share. With ``members``, each fit keeps the first ``members`` MLPs (of
    ``hidden`` units) of each kind (``keep_members``) and no OOD arrays: ``merge_heads``
    estimates them again.

    Raises:
        ValueError: fewer than two fits, a tower head, or heads that differ in what they read
            (all differences named).
    """
    if not heads:
        raise ValueError("merge-heads needs at least two heads")
    first = heads[0].config
    problems = []
    for i, h in enumerate(heads):
        if h.config.kind not in ("linear", "mlp"):
            problems.append(f"head {i + 1} is a {h.config.kind} head; only linear and mlp heads merge")
        for key in SHARED:
            if getattr(h.config, key) != getattr(first, key):
                problems.append(f"head {i + 1} has {key} {getattr(h.config, key)!r}, head 1 {getattr(first, key)!r}")
        if (h.config.ood_q99 is None) != (first.ood_q99 is None):
            problems.append(f"head {i + 1} {'lacks' if h.config.ood_q99 is None else 'has'} an OOD statistic, head 1 does not")
        if set(h.params) != set(heads[0].params):
            problems.append(f"head {i + 1} holds arrays {sorted(h.params)}, head 1 {sorted(heads[0].params)}")
    if problems:
        raise ValueError("these heads cannot be merged: " + "; ".join(problems)
                         + ". Fit them with the same --layers, --pooling and --kind on the same base model.")
    if members is not None and first.kind != "mlp":
        raise ValueError("--members keeps some MLPs of each fit: only mlp heads have them")
    fits: list[dict[str, np.ndarray]] = []
    for h in heads:
        for g in range(h.config.fits):
            fit = {k: np.asarray(v[g], dtype=np.float32) for k, v in h._p.items() if not k.startswith(TOWER_PREFIX)}
            fit["w"], fit["b"] = fit["w"] / h.config.temperature, fit["b"] / h.config.temperature
            if members is not None:
                fit = keep_members(fit, members, hidden, states=_state_features(h.config, fit))
            elif h.config.ood_q99 is not None:
                fit["ood_whiten"] = fit["ood_whiten"] / h.config.ood_q99
            fits.append(fit)
    if len(fits) < 2:
        raise ValueError("merge-heads needs at least two fits; name two or more heads")
    shapes = {k: {f[k].shape for f in fits} for k in fits[0]}
    if odd := sorted(k for k, s in shapes.items() if len(s) > 1):
        raise ValueError(f"these heads cannot be merged: arrays {odd} differ in shape between them "
                         "(another --members, --attn-heads or hidden size); fit them with the same options")
    arrays = {k: mx.array(np.stack([f[k] for f in fits])) for k in fits[0]}
    if "ood_whiten" in arrays:  # the big ones stored small: the whitening in float16, an MLP's first
        arrays["ood_whiten"] = arrays["ood_whiten"].astype(mx.float16)  # layer 8-bit (Head.load widens both)
    if "w1" in arrays:
        arrays = quantize_w1(arrays)
    return {key: getattr(first, key) for key in SHARED} | {"fits": len(fits)}, arrays


def _state_features(config: HeadConfig, fit: dict[str, np.ndarray]) -> int:
    """How many of a fit's features are pooled states (last/mean), before the attention pools."""
    n = len([k for k in config.pooling.split("+") if k != "attn"])
    H = fit["attn_q"].shape[-1] if "attn_q" in fit else 0
    return fit["mean"].shape[0] * n // (n + H)


def keep_members(fit: dict[str, np.ndarray], members: int, hidden: int, *, states: int) -> dict[str, np.ndarray]:
    """One fit's MLP cut to the first ``members`` MLPs of each kind: those that read the states alone
    (their first-layer rows of the attention pools are zero) and those that read the pools too.

    The fit's output layer averaged all its MLPs (each MLP's rows of ``w`` divided by their number);
    the kept rows are scaled to average the kept ones. Its bias stays (the mean of all the MLPs'
    biases; the merged head's calibration and thresholds are fitted afterwards). The OOD arrays are
    dropped: they describe all the hidden units.

    Raises:
        ValueError: the hidden layer is not a whole number of ``hidden``-unit MLPs.
    """
    U = fit["w1"].shape[1]
    if U % hidden:
        raise ValueError(f"a fit has {U} hidden units, not a whole number of {hidden}-unit MLPs; "
                         "merge it without --members")
    blocks = [slice(i * hidden, (i + 1) * hidden) for i in range(U // hidden)]
    plain = [b for b in blocks if not fit["w1"][states:, b].any()]
    pooled = [b for b in blocks if fit["w1"][states:, b].any()]
    kept = plain[:members] + pooled[:members]
    cols = np.concatenate([np.arange(U)[b] for b in kept])
    out = {k: v for k, v in fit.items() if not k.startswith("ood_")}
    out["w1"], out["b1"] = fit["w1"][:, cols], fit["b1"][cols]
    out["w"] = fit["w"][cols] * (len(blocks) / len(kept))
    return out


def merge_heads(model: Any, heads: Sequence[Head], examples: Sequence[Example], out: str | Path, *,
                max_tokens: int | None = None, batch_size: int = 16, progress: bool = True,
                training: dict[str, Any] | None = None, fit: FitConfig = FitConfig(),
                members: int | None = None) -> Head:
    """Merge ``heads`` into one head of their fits, calibrated and thresholded on the dev rows of
    ``examples``, and write it to ``out``.

    Args:
        model: the ``phasegpt.Model`` every head was fitted on (checked).
        heads: the heads to merge; every fit weighs the same in the mean.
        examples: labelled rows; the dev ones (as ``train-head`` splits them) calibrate the merge.
        out: folder to write ``head.json`` + ``head.safetensors`` into (atomically).
        max_tokens: skip dev prompts longer than this (use the heads' own ``--max-tokens``).
        batch_size: prompts per forward pass when dev states are not in the state cache yet.
        progress: progress bar and lines on stderr.
        training: free-form record kept in head.json (data files, command).
        fit: the threshold budgets (``frr_budget``, ``source_frr_budget``, ``source_frr_weight``).
        members: keep only the first this many MLPs of each kind of every fit (see the module's
            docstring); their OOD statistic is estimated again on the training rows of ``examples``.

    Raises:
        MismatchError: a head was fitted on another base model.
        ValueError: the heads cannot be merged (see ``stack``).
    """
    from phasegpt.train.states import extract_states, head_outputs
    from phasegpt.train.train_head import base_identity, prepare_splits

    log = (lambda s: print(s, file=sys.stderr)) if progress else (lambda s: None)
    loaded = model.loaded
    for h in heads:
        h.check_base(name=loaded.name, fingerprint=loaded.fingerprint, adapter_sha256=loaded.adapter_sha256,
                     hidden_size=int(loaded.config.get("hidden_size", 0)))
    shared, arrays = stack(heads, members)
    train, dev, skipped = prepare_splits(model, examples, None, max_tokens, log)
    ood = heads[0].config.ood_q99 is not None
    rows = _ood_rows(train, fit.seed) if members is not None and ood else []
    # the heads' state cache, when they were fitted from one (its folder is keyed by the layers it holds)
    layers = list(shared["layers"])
    cands = heads[0].config.training.get("candidates") or layers
    cache = extract_states(model, dev + rows, cands if set(layers) <= set(cands) else layers, batch_size=batch_size,
                           progress=progress)
    if rows:
        log(f"OOD statistic of the kept units: {len(rows)} training rows, {len(dev)} dev rows")
        arrays = _with_ood(shared, arrays, cache, rows, dev)
    # calibrated with the weights as stored, so the dev numbers are those of the shipped arrays
    raw = Head(HeadConfig(**shared, ood_q99=1.0 if ood else None),
               widen(arrays))
    logits, dist = head_outputs(raw, cache, dev)
    y = np.array([LABELS.index(e.label) for e in dev])
    temperature = calibrate(logits, y)
    probs = _softmax(logits, temperature)
    offsets = tune_thresholds(probs, y, sources=[e.source or "" for e in dev], budget=fit.frr_budget,
                              source_budget=fit.source_frr_budget, source_weight=fit.source_frr_weight)
    pred = (probs - offsets).argmax(axis=1)
    metrics = {"dev_macro_f1": macro_f1(y, pred), "dev_accuracy": float(np.mean(pred == y)),
               "dev_macro_f1_argmax": macro_f1(y, probs.argmax(axis=1)), "n_dev": int(len(y)),
               "fits": [{k: h.config.metrics.get(k) for k in ("dev_macro_f1", "dev_macro_f1_argmax", "n_train")}
                        for h in heads for _ in range(h.config.fits)]}
    record = {**(training or {}), "merged": [{"sha256": h.sha256, "training": h.config.training} for h in heads],
              "members": members, "candidates": cands, "skipped_too_long": skipped}
    identity = base_identity(model, record)
    config = HeadConfig(**{**shared, **{k: identity[k] for k in ("base_model", "base_fingerprint")},
                           "temperature": temperature, "thresholds": dict(zip(LABELS, map(float, offsets))),
                           "metrics": metrics, "training": record,
                           "ood_q99": float(np.quantile(dist, 0.99)) if dist is not None else None,
                           "ood_prior": dict(heads[0].config.ood_prior)})
    Head(config, arrays).save(out)  # the stored arrays (w1 packed); what loads back is the usable head
    log(f"merged {config.fits} fits: temperature {temperature:.2f}, dev macro-F1 {metrics['dev_macro_f1']:.3f} "
        f"(argmax {metrics['dev_macro_f1_argmax']:.3f})")
    return Head.load(out)


def _ood_rows(train: Sequence[Example], seed: int) -> list[Example]:
    """The training rows an OOD statistic is estimated on (as ``fit_head.head_ood`` samples them)."""
    idx = np.sort(np.random.default_rng(seed).choice(len(train), min(len(train), OOD_ROWS), replace=False))
    return [train[i] for i in idx]


def _with_ood(shared: dict[str, Any], arrays: dict[str, mx.array], cache, rows: Sequence[Example],
              dev: Sequence[Example]) -> dict[str, mx.array]:
    """Each fit's OOD statistic on its (kept) hidden pre-activations of ``rows``, its whitening
    divided by its own dev 99th percentile (as ``stack`` folds a fitted head's in)."""
    from phasegpt.train.states import head_features

    head = Head(HeadConfig(**shared), widen(arrays))
    p = head._p

    def preacts(examples):
        u = np.zeros((shared["fits"], len(examples), p["b1"].shape[-1]), np.float32)
        for idx, feats in head_features(head, cache, examples):
            x = (feats - p["mean"][:, None]) / p["std"][:, None]
            u[:, idx] = np.asarray(x @ p["w1"] + p["b1"][:, None])
        return u

    utr, udv = preacts(rows), preacts(dev)
    means, whitens = [], []
    for g in range(shared["fits"]):
        mean, whiten = ood_statistic(utr[g])
        means.append(mean)
        whitens.append(whiten / np.quantile(distances(udv[g], mean, whiten), 0.99))
    return {**arrays, "ood_mean": mx.array(np.stack(means)),
            "ood_whiten": mx.array(np.stack(whitens)).astype(mx.float16)}
