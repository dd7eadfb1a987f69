"""Heads of several fits (phasegpt merge-heads) on the tiny model: the maths of the stacked fits, the
merge calibrated on dev from the real state cache, classify through the model, and what it refuses."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

import phasegpt
from phasegpt.cli import cli
from phasegpt.errors import ModelLoadError
from phasegpt.head import Head, HeadConfig, widen
from phasegpt.train.fit_head import FitConfig
from phasegpt.train.merge import merge_heads, stack
from phasegpt.train.states import StateCache, cache_dir, head_outputs, head_probs
from phasegpt.train.train_head import train_head
from tests.test_tower import labelled

FIT = FitConfig(layers=(0, 1), pooling="last+mean+attn", kind="mlp", mlp_members=1, attn_members=1, mlp_steps=200,
                mlp_hidden=16, attn_heads=2, attn_window=8, attn_steps=60)


def random_head(rng, fits: int, *, kind="mlp", pooling="last+mean+attn", T=1.3, q99=2.0) -> Head:
    """A head of ``fits`` stacked fits with random arrays (standardisations far from 0 and 1)."""
    L, D, H, U = 2, 64, 3, 5
    n = len([k for k in pooling.split("+") if k != "attn"])
    F = L * D * (n + (H if "attn" in pooling else 0))
    lead = (fits,) if fits > 1 else ()
    a = lambda *shape, lo=-1.0, hi=1.0: mx.array(rng.uniform(lo, hi, lead + shape).astype(np.float32))  # noqa: E731
    params = {"mean": a(F, lo=-2, hi=2), "std": a(F, lo=0.5, hi=3)}
    params |= {"w1": a(F, U), "b1": a(U), "w": a(U, 4), "b": a(4), "ood_mean": a(U), "ood_whiten": a(U, U)} \
        if kind == "mlp" else {"w": a(F, 4), "b": a(4), "ood_proj": a(F, 3), "ood_mean": a(3), "ood_whiten": a(3, 3)}
    if "attn" in pooling:
        params |= {"attn_q": a(L, D, H), "attn_mean": a(L, D, lo=-2, hi=2), "attn_std": a(L, D, lo=0.5, hi=3)}
    return Head(HeadConfig(layers=(0, 1), pooling=pooling, kind=kind, temperature=T, attn_window=4, ood_q99=q99,
                           fits=fits), params)


@pytest.mark.parametrize("kind,pooling", [("mlp", "last+mean+attn"), ("linear", "last+mean")])
def test_a_head_of_several_fits_is_the_mean_of_its_fits_everywhere(kind, pooling):
    rng = np.random.default_rng(0)
    heads = [random_head(rng, 1, kind=kind, pooling=pooling, T=T, q99=q) for T, q in ((1.3, 2.0), (0.7, 5.0))]
    shared, arrays = stack(heads)
    merged = Head(HeadConfig(**shared, temperature=1.1, ood_q99=3.0), widen(arrays))
    hidden = {k: mx.array(rng.uniform(-4, 4, (3, 9, 64)).astype(np.float32)) for k in (0, 1)}
    lengths, span = mx.array([9, 6, 4]), (1, 1)

    def each(h):
        f = h.pool(hidden, lengths, span)
        return np.asarray(h.logits(f)) / h.config.temperature, np.asarray(h.ood(f)), \
            np.asarray(h.position_logits({k: v[:1] for k, v in hidden.items()}))

    got, want = each(merged), [each(h) for h in heads]
    # the first layer is stored 8-bit: the fits' logits agree to its rounding, not to float32's
    np.testing.assert_allclose(got[0] * 1.1, np.mean([w[0] for w in want], axis=0), rtol=0.02, atol=0.1)
    np.testing.assert_allclose(got[1] * 3.0, np.mean([w[1] for w in want], axis=0), rtol=0.02)
    np.testing.assert_allclose(got[2] * 1.1, np.mean([w[2] for w in want], axis=0), rtol=0.02, atol=0.1)
    assert np.abs(got[0] * 1.1 - want[0][0]).max() > 1  # and not just one of them


@pytest.fixture(scope="module")
def fitted(tiny_dir, tmp_path_factory):
    """Two attention heads of other seeds on the tiny model, sharing one state cache, and their merge."""
    base = phasegpt.load(tiny_dir)
    rows = labelled(96, "train", 0) + labelled(32, "dev", 1)
    folder = tmp_path_factory.mktemp("merge")
    home = str(folder / "home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PHASEGPT_HOME", home)
        heads = [train_head(base, rows, folder / f"seed{s}", candidates=[0, 1], states="cache", progress=False,
                            fit=FitConfig(**{**FIT.__dict__, "seed": s})) for s in (0, 5)]
        merged = merge_heads(base, heads, rows, folder / "merged", progress=False, training={"command": "test"})
    return base, heads, merged, folder, home, rows[96:]


def test_merge_heads_averages_the_calibrated_fits_and_refits_the_calibration_on_dev(fitted, monkeypatch):
    base, heads, merged, folder, home, dev = fitted
    monkeypatch.setenv("PHASEGPT_HOME", home)
    assert merged.config.fits == 2 and merged.config.layers == heads[0].config.layers
    assert tuple(merged.params["attn_q"].shape) == (2, 2, 64, 2)  # each fit keeps its own queries
    cache = StateCache(cache_dir(base, [0, 1]), [0, 1], 64)
    logits = [head_outputs(h, cache, dev)[0] / h.config.temperature for h in heads]
    mine, _ = head_outputs(merged, cache, dev)
    np.testing.assert_allclose(mine, np.mean(logits, axis=0), atol=0.05)
    m = merged.config.metrics
    assert m["n_dev"] == len(dev) and 0 < merged.config.temperature < 20 and merged.config.ood_q99 > 0
    assert m["dev_macro_f1"] > 0.6 and len(m["fits"]) == 2  # chance is 0.25
    record = merged.config.training
    assert record["command"] == "test" and [r["sha256"] for r in record["merged"]] == [h.sha256 for h in heads]
    stored = mx.load(str(folder / "merged" / "head.safetensors"))
    assert stored["w1"].dtype == mx.uint32 and "w1_scales" in stored  # 8-bit on disk
    assert merged.params["w1"].dtype == mx.float32 and tuple(merged.params["w1"].shape) == (2, 512, 32)  # per fit: one MLP on last+mean, one on everything


def test_classify_with_a_merged_head_equals_it_on_cached_states(fitted, monkeypatch):
    base, _, merged, folder, home, dev = fitted
    monkeypatch.setenv("PHASEGPT_HOME", home)
    model = phasegpt.Model(base.loaded, Head.load(folder / "merged"))
    verdicts = model.classify([e.request for e in dev])
    live = np.array([[v.probs[k] for k in merged.config.labels] for v in verdicts])
    cached, _ = head_probs(model.head, StateCache(cache_dir(base, [0, 1]), [0, 1], 64), dev)
    assert np.abs(live - cached).max() < 0.02
    assert [v.label for v in verdicts] == model.head.decide(cached)
    assert all(v.evidence and v.ood is not None for v in verdicts)


def test_merge_refuses_heads_that_read_other_features(fitted, tmp_path):
    base, heads, _, _, _, _ = fitted
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="kind 'linear'"):
        stack([heads[0], random_head(rng, 1, kind="linear", pooling="last+mean")])
    other = Head(HeadConfig(**{**heads[1].config.__dict__, "layers": (1,)}), heads[1].params)
    with pytest.raises(ValueError, match=r"layers \(1,\)"):
        stack([heads[0], other])
    with pytest.raises(ValueError, match="at least two"):
        stack([heads[0]])


def test_a_merged_head_whose_arrays_miss_its_fits_is_refused(fitted, tmp_path):
    _, _, _, folder, _, _ = fitted
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "head.safetensors").write_bytes((folder / "merged" / "head.safetensors").read_bytes())
    config = json.loads((folder / "merged" / "head.json").read_text())
    (bad / "head.json").write_text(json.dumps({**config, "fits": 3}))
    with pytest.raises(ModelLoadError, match="do not hold the 3 fits"):
        Head.load(bad)


def test_merge_heads_cli(fitted, tiny_dir, tmp_path, monkeypatch):
    _, _, _, folder, home, dev = fitted
    monkeypatch.setenv("PHASEGPT_HOME", home)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": e.prompt, "label": e.label, "split": e.split}) + "\n"
                            for e in labelled(96, "train", 0) + dev))
    one = CliRunner().invoke(cli, ["merge-heads", "-m", str(tiny_dir), str(folder / "seed0"), "-d", str(data),
                                   "-o", str(tmp_path / "m")])
    assert one.exit_code != 0 and "at least two" in one.output and not (tmp_path / "m").exists()
    args = ["merge-heads", "-m", str(tiny_dir), str(folder / "seed0"), str(folder / "merged"), "-d", str(data),
            "-o", str(tmp_path / "m")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "3 fits" in result.output  # a merged head's fits count one by one
    verdict = phasegpt.load(tiny_dir, head=tmp_path / "m").classify(["what is attached above?"])[0]
    assert abs(sum(verdict.probs.values()) - 1) < 1e-6 and verdict.ood is not None
