"""Labelled JSONL reading, splits and caps, and the head fitting math on synthetic features."""

from __future__ import annotations

import json

import numpy as np
import pytest

from phasegpt.train.data import BUNDLED, cap, check_labels, read_jsonl, split
from phasegpt.train import fit_head as fit_head_module
from phasegpt.train.fit_head import FitConfig, _loss_grad, calibrate, fit_head, lbfgs, macro_f1, sweep
from phasegpt.verdict import LABELS


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_bad_lines_name_file_and_line(tmp_path):
    cases = [
        ('{"prompt": "a", "label": "answer"}', "{not json", "not valid JSON"),
        ('{"prompt": "a", "label": "answer"}', '{"label": "answer"}', "missing or empty \\\"prompt\\\""),
        ('{"prompt": "a", "label": "answer"}', '{"prompt": "b", "label": "rude"}', "unknown label 'rude'"),
        ('{"prompt": "a", "label": "answer"}', '{"prompt": "b", "label": "answer", "context": [3]}', "document 0"),
        ('{"prompt": "a", "label": "answer"}', "[1, 2]", "expected a JSON object"),
    ]
    for good, bad, message in cases:
        path = _write(tmp_path / "d.jsonl", [good, bad])
        with pytest.raises(ValueError, match=f"{path}:2: .*{message}"):
            read_jsonl(path)
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "missing.jsonl")


def test_other_rows_skipped_or_kept(tmp_path):
    path = _write(tmp_path / "d.jsonl", [{"prompt": "a", "label": "other"}, {"prompt": "b", "label": "answer"}])
    assert [e.prompt for e in read_jsonl(path)] == ["b"]
    assert [e.label for e in read_jsonl(path, skip_other=False)] == ["other", "answer"]


def test_split_uses_given_splits_and_never_test(tmp_path):
    rows = [{"prompt": f"p{i}", "label": LABELS[i % 4], "split": s} for i, s in enumerate(["train", "dev", "test"] * 4)]
    rows += [{"prompt": f"q{i}", "label": LABELS[i % 4]} for i in range(200)]
    train, dev = split(read_jsonl(_write(tmp_path / "d.jsonl", rows)))
    assert not any(e.split == "test" for e in train + dev)
    assert {e.prompt for e in dev if e.split} == {"p1", "p4", "p7", "p10"}
    unsplit_dev = [e for e in dev if not e.split]
    assert 20 < len(unsplit_dev) < 60  # about 20% of 200, by a stable hash
    assert split(read_jsonl(tmp_path / "d.jsonl"))[1] == dev


def test_cap_is_per_group_and_stable(tmp_path):
    rows = [{"prompt": f"p{i}", "label": "answer", "source": "big", "split": "train"} for i in range(50)]
    rows += [{"prompt": f"s{i}", "label": "safety", "source": "small", "split": "train"} for i in range(5)]
    ex = read_jsonl(_write(tmp_path / "d.jsonl", rows))
    capped = cap(ex, 10)
    assert sum(e.source == "big" for e in capped) == 10 and sum(e.source == "small" for e in capped) == 5
    assert cap(ex, 10) == capped and cap(ex, 10, seed=1) != capped


def test_single_label_is_refused(tmp_path):
    ex = read_jsonl(_write(tmp_path / "d.jsonl", [{"prompt": f"p{i}", "label": "answer"} for i in range(5)]))
    with pytest.raises(ValueError, match="at least two labels"):
        check_labels(ex)


def test_bundled_prompts_read_cleanly():
    ex = read_jsonl(BUNDLED)
    assert len(ex) > 2000 and {e.label for e in ex} == set(LABELS)


def _synthetic(n, d=24, layers=3, seed=0):
    """Features where class k shifts dimension k of layer 1 (the others are noise)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.standard_normal((n, layers, 2, d)).astype(np.float32)
    x[np.arange(n), 1, 0, y] += 3.0
    return x, y


def test_fit_head_finds_the_informative_layer_and_is_deterministic():
    xtr, ytr = _synthetic(400)
    xdv, ydv = _synthetic(200, seed=1)
    identity = {"base_model": "synthetic", "base_fingerprint": "0" * 16, "hidden_size": 24}
    head = fit_head(xtr, ytr, xdv, ydv, layers=[4, 8, 12], cfg=FitConfig(max_layers=1), identity=identity)
    assert head.config.layers == (8,) and "last" in head.config.pooling
    assert head.config.metrics["dev_macro_f1"] > 0.9
    again = fit_head(xtr, ytr, xdv, ydv, layers=[4, 8, 12], cfg=FitConfig(max_layers=1), identity=identity)
    assert np.array_equal(np.array(head.params["w"]), np.array(again.params["w"]))


def test_sweep_probes_on_a_row_subset_still_find_the_informative_layer():
    xtr, ytr = _synthetic(400)
    xdv, ydv = _synthetic(200, seed=1)
    layer_idx, pooling, table = sweep(xtr, ytr, xdv, ydv, FitConfig(max_layers=1, probe_rows=120))
    assert layer_idx == (1,) and "last" in pooling
    assert table == sweep(xtr, ytr, xdv, ydv, FitConfig(max_layers=1, probe_rows=120))[2]  # same subset every run
    assert table != sweep(xtr, ytr, xdv, ydv, FitConfig(max_layers=1, probe_rows=None))[2]  # and it is a subset


def test_lbfgs_reaches_the_regularised_optimum():
    # an ill-conditioned quadratic: the minimiser is known in closed form
    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 30))
    h = a @ a.T + np.diag(np.logspace(-2, 2, 30))
    target = rng.standard_normal(30)
    x = lbfgs(lambda v: (0.5 * v @ h @ v - target @ v, h @ v - target), np.zeros(30), tol=1e-9, gtol=1e-8, iters=2000)
    np.testing.assert_allclose(x, np.linalg.solve(h, target), rtol=1e-4, atol=1e-6)
    # the head's own loss: the gradient vanishes at what lbfgs returns
    x, y = _synthetic(300)
    z = x.reshape(300, -1)
    onehot = np.eye(4)[y]
    weight = np.ones(300)
    p = lbfgs(lambda v: _loss_grad(v, z, onehot, weight, 0.01), np.zeros(z.shape[1] * 4 + 4), tol=1e-8, gtol=1e-6, iters=2000)
    assert np.linalg.norm(_loss_grad(p, z, onehot, weight, 0.01)[1]) < 1e-4


@pytest.mark.parametrize("chunk", [7, 512])  # rows split over several chunks, and one chunk
def test_loss_gradient_matches_finite_differences_with_class_weights(monkeypatch, chunk):
    monkeypatch.setattr(fit_head_module, "CHUNK_ROWS", chunk)
    rng = np.random.default_rng(3)
    z = rng.standard_normal((50, 6))
    y = rng.integers(0, 4, 50)
    onehot, weight = np.eye(4)[y], rng.uniform(0.2, 5.0, 50)  # uneven, as class balancing makes them
    p = rng.standard_normal(6 * 4 + 4)
    _, grad = _loss_grad(p, z, onehot, weight, 0.05)
    eps = 1e-6
    numeric = [(_loss_grad(p + eps * e, z, onehot, weight, 0.05)[0] - _loss_grad(p - eps * e, z, onehot, weight, 0.05)[0])
               / (2 * eps) for e in np.eye(len(p))]
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def test_mlp_head_fits_a_nonlinear_rule():
    # class = two XORs of signs: no linear head can separate it, one hidden layer can
    def data(n, seed):
        r = np.random.default_rng(seed)
        x = r.standard_normal((n, 1, 2, 8)).astype(np.float32)
        s = x[:, 0, 0, :4] > 0
        y = (s[:, 0] ^ s[:, 1]).astype(int) * 2 + (s[:, 2] ^ s[:, 3]).astype(int)
        return x, y

    xtr, ytr = data(2000, 1)
    xdv, ydv = data(500, 2)
    identity = {"base_model": "synthetic", "base_fingerprint": "0" * 16, "hidden_size": 8}
    fixed = {"layers": (0,), "pooling": "last"}
    linear = fit_head(xtr, ytr, xdv, ydv, layers=[3], cfg=FitConfig(**fixed), identity=identity)
    mlp = fit_head(xtr, ytr, xdv, ydv, layers=[3], cfg=FitConfig(kind="mlp", mlp_steps=600, **fixed),
                   identity=identity)
    assert linear.config.metrics["dev_macro_f1_argmax"] < 0.7
    assert mlp.config.metrics["dev_macro_f1_argmax"] > 0.9


def test_temperature_calibration_undoes_overconfidence():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 2000)
    true_logits = rng.standard_normal((2000, 4))
    true_logits[np.arange(2000), y] += 1.0
    # labels drawn from softmax(true_logits); the model reports 5x sharper logits
    p = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    y = np.array([rng.choice(4, p=row) for row in p])
    t = calibrate(5 * true_logits, y)
    assert 3.5 < t < 6.5


def test_macro_f1_by_hand():
    y = np.array([0, 0, 1, 1, 2, 3])
    pred = np.array([0, 1, 1, 1, 2, 2])
    # class 0: P=1, R=.5 -> 2/3; class 1: P=2/3, R=1 -> .8; class 2: P=.5, R=1 -> 2/3; class 3: 0
    assert macro_f1(y, pred) == pytest.approx((2 / 3 + 0.8 + 2 / 3 + 0) / 4)


def test_thresholds_keep_everyday_false_refusals_within_the_budget():
    from phasegpt.train.fit_head import macro_f1, tune_thresholds

    rng = np.random.default_rng(0)
    y = np.array([0, 1, 2, 3] * 50)
    probs = np.eye(4)[y] * 0.3 + rng.dirichlet(np.ones(4), len(y)) * 0.7  # a noisy but useful classifier
    sources = np.array(["arena_hard"] * len(y))  # every answer row is an everyday request
    everyday = y == LABELS.index("answer")
    answer = LABELS.index("answer")
    free = tune_thresholds(probs, y)
    capped = tune_thresholds(probs, y, sources=sources, budget=0.02)
    frr = lambda t: float(np.mean((probs - t).argmax(axis=1)[everyday] != answer))
    assert frr(capped) <= 0.02 < frr(free)
    assert macro_f1(y, (probs - capped).argmax(axis=1)) > 0.5  # still a classifier, not "answer" for all


def test_thresholds_pull_a_refused_source_towards_its_budget():
    from phasegpt.train.fit_head import tune_thresholds

    rng = np.random.default_rng(1)
    answer = LABELS.index("answer")
    y = np.array([0, 1, 2, 3] * 100)
    probs = np.eye(4)[y] * 0.35 + rng.dirichlet(np.ones(4), len(y)) * 0.65
    sources = np.array(["a", "b"] * 200)
    hard = (sources == "b") & (y == answer)
    probs[hard] = probs[hard][:, [0, 1, 3, 2]]  # source b's answer rows lean to missing_context
    frr = lambda t: float(np.mean((probs - t).argmax(axis=1)[hard] != answer))
    plain = tune_thresholds(probs, y, sources=sources, source_weight=0.0)
    pulled = tune_thresholds(probs, y, sources=sources, source_weight=1.0)
    assert frr(pulled) < frr(plain)
    assert pulled[LABELS.index("missing_context")] > plain[LABELS.index("missing_context")]


def test_mlp_members_are_one_mlp_whose_logits_are_their_mean():
    from phasegpt.train.fit_head import FitConfig, _fit_mlp, _fit_one_mlp, _logits

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 240)
    x = rng.standard_normal((240, 12)).astype(np.float32) + np.eye(4, 12)[y] * 2
    cfg = FitConfig(kind="mlp", mlp_hidden=8, mlp_steps=60, mlp_members=3, seed=4)
    wide = _fit_mlp(x, y, cfg, dev=(x, y))
    members = [_fit_one_mlp(x, y, cfg, (x, y), seed=s) for s in (4, 5, 6)]
    assert wide["w1"].shape == (12, 24)
    assert not np.allclose(_logits(members[0], x), _logits(members[1], x))  # the seeds differ
    np.testing.assert_allclose(_logits(wide, x), np.mean([_logits(m, x) for m in members], axis=0), atol=1e-4)
