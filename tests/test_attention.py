"""Attention-pooled heads (last+mean+attn) on the tiny model: the pool's mask, training from the
state cache, and one verdict whether it comes from the cache or from the model's own prefill."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import phasegpt
from phasegpt.head import Head, HeadConfig, attn_pool
from phasegpt.train.fit_head import FitConfig
from phasegpt.train.states import StateCache, cache_dir, head_probs
from phasegpt.train.train_head import train_head
from tests.test_tower import labelled

FIT = FitConfig(layers=(0, 1), pooling="last+mean+attn", kind="mlp", mlp_members=2, attn_members=2, mlp_steps=300,
                mlp_hidden=16, attn_heads=2, attn_window=8, attn_steps=120)


@pytest.fixture(scope="module")
def base(tiny_dir):
    return phasegpt.load(tiny_dir)


@pytest.fixture(scope="module")
def attn_head(base, tmp_path_factory):
    train, dev = labelled(96, "train", 0), labelled(32, "dev", 1)
    folder = tmp_path_factory.mktemp("attn")
    out, home = folder / "head", str(folder / "home")  # one home for the module: its tests read this state cache
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PHASEGPT_HOME", home)
        head = train_head(base, train + dev, out, candidates=[0, 1], fit=FIT, progress=False, states="cache")
    return head, out, dev, home


def test_pools_attend_only_to_the_window_of_the_users_turn():
    D, T = 4, 8
    x = np.zeros((1, T, D), np.float32)
    x[0, :, 0] = np.arange(T)  # feature 0 = the position
    x[0, [0, 1, 6, 7], 1] = 100.0  # the template before the turn, and padding
    x[0, 5, 1] = 5.0
    arrays = {"attn_q": mx.array(np.eye(D, 1, -1, dtype=np.float32)[None]),  # one query: looks at feature 1
              "attn_mean": mx.zeros((1, D)), "attn_std": mx.ones((1, D))}
    lengths = mx.array([6])  # positions 6, 7 are padding
    out = np.array(attn_pool({0: mx.array(x)}, (0,), arrays, 3, lengths, (2, 1)))  # turn from 2; last 3: 3, 4, 5
    assert out.shape == (1, D)
    assert 3.0 <= out[0, 0] <= 5.0  # a weighted position among 3..5, though 0, 1, 6, 7 score far higher
    assert out[0, 0] > 4.5  # and most of the weight on 5, the one the query prefers
    wide = np.array(attn_pool({0: mx.array(x)}, (0,), arrays, 64, lengths, (0, 1)))
    assert wide[0, 0] < 1.0  # with the whole prompt in the window, the template's positions win


def test_attention_head_learns_and_stores_its_queries(attn_head):
    head, out, _, _ = attn_head
    assert head.config.pooling == "last+mean+attn" and head.config.attn_window == 8
    assert head.config.metrics["dev_macro_f1"] > 0.6  # chance is 0.25
    loaded = Head.load(out)
    assert tuple(loaded.params["attn_q"].shape) == (2, 64, 2)  # (layers, hidden, queries)
    # features: per layer last+mean, then the pools: 2*2*64 + 2*2*64
    assert loaded.params["mean"].shape[0] == 4 * 64 + 2 * 2 * 64
    # two MLPs on last+mean alone, then two on everything, as one MLP: the first two read no pool
    w1 = np.array(loaded.params["w1"])
    assert w1.shape == (512, 4 * 16)
    assert not w1[256:, :32].any() and w1[:256, :32].any() and w1[256:, 32:].any()


def test_classify_equals_the_head_on_cached_states(base, attn_head, monkeypatch):
    head, out, dev, home = attn_head
    monkeypatch.setenv("PHASEGPT_HOME", home)
    model = phasegpt.Model(base.loaded, Head.load(out))
    verdicts = model.classify([e.request for e in dev])
    live = np.array([[v.probs[k] for k in head.config.labels] for v in verdicts])
    cache = StateCache(cache_dir(base, [0, 1]), [0, 1], 64)
    cached, _ = head_probs(model.head, cache, dev)
    assert np.abs(live - cached).max() < 0.02
    assert [v.label for v in verdicts] == model.head.decide(cached)
    assert all(v.evidence for v in verdicts)  # the head applied per position still names words


def test_eval_of_an_attention_head_takes_cached_rows_and_classifies_the_rest(base, attn_head, monkeypatch):
    from phasegpt.train.features import predict
    head, out, dev, home = attn_head
    monkeypatch.setenv("PHASEGPT_HOME", home)
    model = phasegpt.Model(base.loaded, Head.load(out))
    fresh = labelled(6, "test", 7)
    fresh = [type(e)(e.prompt + " today", e.label, split="test") for e in fresh]  # not in the cache
    probs, labels, _ = predict(model, dev[:5] + fresh, progress=False)
    want = model.classify([e.request for e in dev[:5] + fresh])
    assert labels == [v.label for v in want]
    assert np.abs(probs - np.array([[v.probs[k] for k in head.config.labels] for v in want])).max() < 0.02


def test_attention_pooling_without_the_state_cache_says_how(base, tmp_path):
    train, dev = labelled(16, "train", 0), labelled(8, "dev", 1)
    with pytest.raises(ValueError, match="--states cache"):
        train_head(base, train + dev, tmp_path / "h", candidates=[0, 1], fit=FIT, progress=False)


def test_train_head_cli_writes_an_attention_head_and_says_what_it_needs(tiny_dir, tmp_path):
    import json

    from click.testing import CliRunner

    from phasegpt.cli import cli

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": e.prompt, "label": e.label, "split": e.split}) + "\n"
                            for e in labelled(48, "train", 2) + labelled(16, "dev", 3)))
    out = tmp_path / "head"
    args = ["train-head", "-m", str(tiny_dir), "-d", str(data), "-o", str(out), "--kind", "mlp", "--layers", "1",
            "--pooling", "last+mean+attn", "--attn-heads", "3", "--attn-window", "5", "--attn-steps", "20",
            "--members", "1"]
    bad = CliRunner().invoke(cli, args)
    assert bad.exit_code != 0 and "--states cache" in bad.output and not out.exists()
    result = CliRunner().invoke(cli, args + ["--states", "cache"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "head.json").read_text())
    assert config["pooling"] == "last+mean+attn" and config["attn_window"] == 5
    verdict = phasegpt.load(tiny_dir, head=out).classify(["what is attached above?"])[0]
    assert abs(sum(verdict.probs.values()) - 1) < 1e-6 and verdict.ood is not None


@pytest.mark.parametrize("pooling,kind", [("last", "linear"), ("last+mean", "mlp"), ("last+mean+attn", "mlp")])
def test_position_logits_fold_the_copies_of_each_state_exactly(pooling, kind):
    # the evidence's per-position logits come from a folded first layer; they must equal the head
    # applied to each position's own features, whatever the standardisation (random, far from 0 and 1)
    rng = np.random.default_rng(0)
    L, D, H, U, T = 2, 6, 3, 5, 7
    n = len([k for k in pooling.split("+") if k != "attn"])
    F = L * D * (n + (H if "attn" in pooling else 0))
    a = lambda *shape, lo=-1.0, hi=1.0: mx.array(rng.uniform(lo, hi, shape).astype(np.float32))  # noqa: E731
    params = {"mean": a(F, lo=-2, hi=2), "std": a(F, lo=0.5, hi=3)}
    if kind == "mlp":
        params |= {"w1": a(F, U), "b1": a(U), "w": a(U, 4), "b": a(4)}
    else:
        params |= {"w": a(F, 4), "b": a(4)}
    if "attn" in pooling:
        params |= {"attn_q": a(L, D, H), "attn_mean": a(L, D, lo=-2, hi=2), "attn_std": a(L, D, lo=0.5, hi=3)}
    head = Head(HeadConfig(layers=(3, 5), pooling=pooling, kind=kind, temperature=1.7, attn_window=4), params)
    hidden = {3: a(1, T, D, lo=-4, hi=4), 5: a(1, T, D, lo=-4, hi=4)}
    # each position as the whole prompt: last and mean are its state, each pool its standardised state
    feats = [hidden[k][0] for k in (3, 5) for _ in range(n)]
    if "attn" in pooling:
        feats += [(hidden[k][0] - params["attn_mean"][j]) / params["attn_std"][j] for j, k in enumerate((3, 5))
                  for _ in range(H)]
    want = head.logits(mx.concatenate(feats, axis=-1)) / 1.7
    got = head.position_logits(hidden)
    assert got.shape == (T, 4)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
