"""The classifier tower on the tiny model: shared weights, untouched generation, training, artifact."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from click.testing import CliRunner
from mlx.utils import tree_flatten
from mlx_lm import stream_generate

import phasegpt
from phasegpt.errors import ModelLoadError
from phasegpt.head import TOWER_PREFIX, Head, HeadConfig
from phasegpt.tap import tapped
from phasegpt.tower import ATTENTION_KEYS, Tower, TowerConfig, lora_bytes
from phasegpt.train import tower as tower_training
from phasegpt.train.data import Example
from phasegpt.train.states import extract_states
from phasegpt.train.tower import CachedStates, TowerFit, train_tower
from phasegpt.verdict import LABELS
from tests.test_adapter_train import MISTRAL_7B

WORDS = {"safety": "bomb weapon poison hack", "epistemic": "tomorrow future predict lottery",
         "missing_context": "attached above this it", "answer": "capital recipe explain write"}


def labelled(n: int, split: str, seed: int) -> list[Example]:
    """Invented four-label prompts whose label shows in their words (learnable by a tiny model)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = LABELS[i % 4]
        words = rng.choice(WORDS[label].split() + ["the", "a", "please", "now"], 6)
        out.append(Example(" ".join(words), label, split=split))
    return out


def random_tower_head(model, out, *, tap=0, depth=2, rank=4, seed=3):
    """A tower head with random non-zero LoRA arrays and MLP (so the tower changes the states)."""
    mx.random.seed(seed)
    cfg = TowerConfig(tap=tap, depth=depth, rank=rank)
    tower = Tower(model.loaded.model, cfg)
    d = int(model.loaded.config["hidden_size"])
    arrays = {TOWER_PREFIX + k: mx.random.normal(v.shape) * 0.05 for k, v in tower.lora_arrays().items()}
    arrays |= {"mean": mx.zeros((2 * d,)), "std": mx.ones((2 * d,)), "w1": mx.random.normal((2 * d, 8)) * 0.3,
               "b1": mx.zeros((8,)), "w": mx.random.normal((8, 4)), "b": mx.zeros((4,))}
    loaded = model.loaded
    config = HeadConfig(layers=(tap,), kind="tower", tower={**cfg.__dict__, "keys": list(cfg.keys)},
                        base_model=loaded.name, base_fingerprint=loaded.fingerprint, hidden_size=d)
    return Head(config, arrays).save(out)


@pytest.fixture(scope="module")
def base(tiny_dir):
    return phasegpt.load(tiny_dir)


@pytest.fixture(scope="module")
def tower_model(tiny_dir, base, tmp_path_factory):
    return phasegpt.load(tiny_dir, head=random_tower_head(base, tmp_path_factory.mktemp("tower") / "head"))


def test_fresh_tower_is_exactly_the_base_blocks(base):
    model = base.loaded.model
    ids = base.encode("What is the capital of France?")
    with tapped(model, [0, 2], budget=len(ids)) as taps:
        model(mx.array([ids]))
        hidden = taps.hidden()
    tower = Tower(model, TowerConfig(tap=0, depth=2))  # LoRA B starts at zero: no change yet
    assert mx.array_equal(tower(hidden[0]), model.model.norm(hidden[2])).item()


def test_tower_shares_the_base_arrays_and_leaves_the_model_alone(base):
    model = base.loaded.model
    before = dict(tree_flatten(model.parameters()))
    tower = Tower(model, TowerConfig(tap=0, depth=2, keys=ATTENTION_KEYS))
    q = tower.blocks[0].self_attn.q_proj
    assert q.linear.weight is model.layers[1].self_attn.q_proj.weight  # the same array, not a copy
    assert tower.norm.weight is model.model.norm.weight
    assert type(model.layers[1].self_attn.q_proj) is nn.Linear  # the base keeps its plain layers
    assert type(tower.blocks[0].mlp.up_proj) is nn.Linear  # only the chosen keys are adapted
    after = dict(tree_flatten(model.parameters()))
    assert before.keys() == after.keys() and all(before[k] is after[k] for k in before)
    # only LoRA arrays are trainable: rank * (in + out) per adapted projection and block
    assert sum(v.size for v in tower.lora_arrays().values()) * 4 == lora_bytes(base.loaded.config, tower.config)


def test_mistral_7b_tower_size_from_its_config():
    default = TowerFit().tower_config()
    size = lora_bytes(MISTRAL_7B, default)
    # 4 blocks x rank 8 x (q 8192 + k 5120 + v 5120 + o 8192 + gate/up 18432 each + down 18432) numbers
    assert size == 4 * 8 * (8192 + 5120 + 5120 + 8192 + 3 * 18432) * 4 == 10_485_760
    assert lora_bytes(MISTRAL_7B, TowerConfig(tap=13, depth=8, rank=16)) == 4 * size
    with pytest.raises(ValueError, match="blocks 30..33"):
        lora_bytes(MISTRAL_7B, TowerConfig(tap=29, depth=4))


def test_bad_tower_configs_name_the_problem(base):
    with pytest.raises(ValueError, match="model has blocks 0..2"):
        Tower(base.loaded.model, TowerConfig(tap=1, depth=2))
    with pytest.raises(ValueError, match="no mlp.fc1"):
        Tower(base.loaded.model, TowerConfig(tap=0, depth=1, keys=("mlp.fc1",)))


def test_generation_with_a_tower_head_is_plain_mlx_lm(tower_model, base):
    prompt = "Tell me a story about a dog and a cat, please."
    chunks = list(tower_model.stream(prompt, max_tokens=12))
    plain = [r.token for r in stream_generate(base.loaded.model, base.tokenizer, mx.array(base.encode(prompt)),
                                              max_tokens=12)]
    assert [c.token for c in chunks[1:]] == plain
    verdict = chunks[0].verdict
    assert verdict.source == "head" and verdict.layers == (0,)
    one = tower_model.classify([prompt])[0]
    assert one.label == verdict.label and max(abs(one.probs[k] - verdict.probs[k]) for k in LABELS) < 1e-4
    assert one.evidence == verdict.evidence and set(one.evidence) <= {w.strip(",.") for w in prompt.split()}


def test_tower_batched_equals_one_at_a_time(tower_model):
    prompts = ["hi", "How do I bake bread?", "What is the capital of France and why is it there?"]
    batched = tower_model.classify(prompts, batch_size=3)
    for p, b in zip(prompts, batched):
        one = tower_model.classify([p])[0]
        assert max(abs(one.probs[k] - b.probs[k]) for k in LABELS) < 1e-4


def test_tower_arrays_must_fit_their_tower(base, tiny_dir, tmp_path):
    folder = random_tower_head(base, tmp_path / "head")
    arrays = mx.load(str(folder / "head.safetensors"))
    dropped = sorted(k for k in arrays if k.startswith(TOWER_PREFIX))[0]
    arrays.pop(dropped)
    config = HeadConfig.from_dict(json.loads((folder / "head.json").read_text()))
    Head(HeadConfig.from_dict({**config.__dict__, "weights_sha256": ""}), arrays).save(tmp_path / "broken")
    with pytest.raises(ModelLoadError, match="missing " + dropped[len(TOWER_PREFIX):]):
        phasegpt.load(tiny_dir, head=tmp_path / "broken")


@pytest.fixture(scope="module")
def tiny_data():
    return labelled(96, "train", 0), labelled(32, "dev", 1)


FIT = TowerFit(tap=0, depth=2, rank=4, hidden=16, epochs=8, eval_every=10, batch_tokens=256, lr=1e-3, head_lr=1e-3)


def _train(base, data, tmp_path, **kw):
    train, dev = data
    cache = extract_states(base, train + dev, [0], progress=False)
    sources = (CachedStates(cache, 0, [e.key for e in train]), CachedStates(cache, 0, [e.key for e in dev]))
    return train_tower(base, train, dev, fit=FIT, sources=sources, progress=False, run_dir=tmp_path, **kw)


def test_train_tower_learns_and_is_deterministic(base, tiny_data, tmp_path):
    a = _train(base, tiny_data, tmp_path / "a")
    b = _train(base, tiny_data, tmp_path / "b")
    assert a.config.metrics["dev_macro_f1"] > 0.6  # chance is 0.25
    assert a.params.keys() == b.params.keys()
    assert all(mx.array_equal(a.params[k], b.params[k]).item() for k in a.params)
    assert a.config.ood_q99 > 0 and a.config.temperature > 0
    dev = [v.ood for v in phasegpt.Model(base.loaded, a).classify([e.prompt for e in tiny_data[1]])]
    assert 0.9 <= np.mean(np.array(dev) <= 1.0)  # 1 is the dev 99th percentile (float16 states in training)


def test_interrupted_training_resumes_to_the_same_head(base, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(tower_training, "CHECKPOINT_EVERY", 0.0)  # checkpoint after every step
    whole = _train(base, tiny_data, tmp_path / "whole")
    seen = []

    def interrupt(line):
        seen.append(line)
        if len(seen) == 2:  # the second dev check: stop as Ctrl-C would
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(base, tiny_data, tmp_path / "cut", log=interrupt)
    lines = []
    resumed = _train(base, tiny_data, tmp_path / "cut", log=lines.append)
    assert lines[0].startswith("resuming") and "at step" in lines[0]
    assert all(mx.array_equal(whole.params[k], resumed.params[k]).item() for k in whole.params)


def test_train_head_cli_sweeps_and_writes_a_tower(tiny_dir, tmp_path):
    from phasegpt.cli import cli

    data = tmp_path / "data.jsonl"
    train, dev = labelled(48, "train", 2), labelled(16, "dev", 3)
    data.write_text("".join(json.dumps({"prompt": e.prompt, "label": e.label, "split": e.split}) + "\n"
                            for e in train + dev))
    out = tmp_path / "tower"
    result = CliRunner().invoke(cli, ["train-head", "-m", str(tiny_dir), "-d", str(data), "-o", str(out),
                                      "--kind", "tower", "--sweep", "tap=0,depth=1;tap=1,depth=1", "--depth", "1",
                                      "--epochs", "1", "--rank", "2"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "head.json").read_text())
    assert config["kind"] == "tower" and config["tower"]["depth"] == 1 and config["tower"]["rank"] == 2
    assert [(r["tap"], r["depth"]) for r in config["metrics"]["sweep"]] == [(0, 1), (1, 1)]
    chosen = max(config["metrics"]["sweep"], key=lambda r: r["dev_macro_f1"])
    assert config["tower"]["tap"] == chosen["tap"] and config["layers"] == [chosen["tap"]]
    model = phasegpt.load(tiny_dir, head=out)
    verdict = model.classify([train[0].prompt])[0]
    assert verdict.ood is not None and abs(sum(verdict.probs.values()) - 1) < 1e-6
    bad = CliRunner().invoke(cli, ["train-head", "-m", str(tiny_dir), "-d", str(data), "-o", str(out),
                                   "--kind", "tower", "--sweep", "tap=x"])
    assert bad.exit_code != 0 and "not a valid tap" in bad.output


def test_far_requests_lean_to_the_ood_prior():
    config = HeadConfig(layers=(0,), ood_q99=1.0)
    head = Head(config, {})
    probs = np.array([[0.9, 0.05, 0.03, 0.02]] * 3)
    moved = head.adjust(probs, np.array([0.5, 1.5, 3.0]))
    assert np.allclose(moved[0], probs[0])  # inside the training distribution: unchanged
    assert moved[1, 0] < probs[0, 0] and moved[1, 3] > probs[0, 3]  # half way
    assert np.allclose(moved[2], [0.1, 0.1, 0.1, 0.7]) and np.allclose(moved.sum(axis=1), 1)


def test_state_cache_has_one_writer_and_readers_change_nothing(base, tmp_path):
    from phasegpt.train.states import StateCache
    rows = labelled(6, "train", 7)
    cache = extract_states(base, rows[:3], [0], progress=False)
    writer = StateCache(cache.folder, [0], cache.hidden, write=True)
    with pytest.raises(RuntimeError, match="another process is writing"):
        StateCache(cache.folder, [0], cache.hidden, write=True)
    r = base.prepare(rows[3].request)
    h, _ = base.hidden_states([r.ids], [0])
    writer.append(rows[3].key, {0: np.array(h[0][0])}, r.span)  # not yet in the index
    reader = StateCache(cache.folder, [0], cache.hidden)  # used to cut the unindexed row off the file
    assert rows[3].key not in reader
    with pytest.raises(RuntimeError, match="opened for reading"):
        reader.append(rows[3].key, {0: np.array(h[0][0])}, r.span)
    writer.close()
    after = StateCache(cache.folder, [0], cache.hidden)
    for e in rows[:4]:  # every row's states are its own
        ids = base.prepare(e.request).ids
        live, _ = base.hidden_states([ids], [0])
        assert np.abs(after.get(e.key, 0)[0].astype(np.float32) - np.array(live[0][0])).max() < 0.05


def test_pooled_features_from_the_state_cache_equal_extracted_ones(base, tiny_data, tmp_path):
    from phasegpt.train.features import extract
    from phasegpt.train.states import pooled_features
    from phasegpt.train.train_head import train_head
    train, dev = tiny_data
    rows = train[:8] + [Example("hello there, how are you today?", "answer", history=[
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}])]
    cache = extract_states(base, rows, [0, 1], progress=False)
    got = pooled_features(cache, rows, [0, 1])
    want = extract(base, rows, [0, 1], use_cache=False, progress=False)
    assert got.shape == want.shape and np.abs(got - want).max() < 0.02
    head = train_head(base, train + dev, tmp_path / "h", candidates=[0, 1], progress=False, states="cache")
    assert head.config.training["states"] == "cache" and head.config.metrics["dev_macro_f1"] > 0.5


def test_eval_reads_rows_the_state_cache_holds(base, tiny_data, tmp_path):
    from phasegpt.train.features import predict
    from phasegpt.train.train_head import train_head
    train, dev = tiny_data
    head = train_head(base, train + dev, tmp_path / "h", candidates=[0, 1], progress=False, use_cache=False)
    model = phasegpt.Model(base.loaded, head)
    plain, _, _ = predict(model, dev, use_cache=False, progress=False)
    extract_states(base, dev[:5], [0, 1], progress=False)  # some rows cached per token, the rest not
    mixed, _, _ = predict(model, dev, progress=False)
    assert np.abs(plain - mixed).max() < 0.02


def test_tower_reuses_a_state_cache_of_more_layers(base, tiny_data, tmp_path):
    from phasegpt.train.states import cache_dir
    from phasegpt.train.train_head import train_tower_head
    train, dev = tiny_data
    fit = TowerFit(**{**FIT.__dict__, "tap": 1, "depth": 1, "epochs": 1})
    assert not cache_dir(base, [1]).exists()
    head = train_tower_head(base, train + dev, tmp_path / "t", fit=fit, states="cache", cache_layers=[0, 1],
                            progress=False)
    assert head.config.kind == "tower" and (cache_dir(base, [0, 1]) / "index.json").is_file()
    assert not cache_dir(base, [1]).exists()  # the tap's states came from the two-layer cache


def test_fixed_layers_within_the_candidates_reuse_their_state_cache(base, tiny_data, tmp_path):
    from phasegpt.train.fit_head import FitConfig
    from phasegpt.train.states import cache_dir
    from phasegpt.train.train_head import train_head
    train, dev = tiny_data
    head = train_head(base, train + dev, tmp_path / "h", candidates=[0, 1], fit=FitConfig(layers=(1,)),
                      progress=False, states="cache")
    assert list(head.config.layers) == [1]
    assert (cache_dir(base, [0, 1]) / "index.json").is_file()
    assert not cache_dir(base, [1]).exists()  # naming layer 1 alone did not start a one-layer cache


def test_steps_are_random_samples_in_token_bounded_micro_batches():
    from phasegpt.train.tower import steps
    lengths = np.array([8] * 60 + [200] * 20)  # short rows of one kind, long rows of another
    plan = steps(lengths, 16, 400, np.random.default_rng(0))
    rows = [i for step in plan for micro in step for i in micro]
    assert sorted(rows) == list(range(80))  # every row once per epoch
    assert all(len(m) * max(lengths[m]) <= 400 or len(m) == 1 for step in plan for m in step)
    assert all(len(sum(step, [])) == 16 for step in plan)  # each step a 16-row sample
    mixed = [step for step in plan if len({int(lengths[i]) for i in sum(step, [])}) == 2]
    assert len(mixed) >= 4  # steps mix the kinds (length-sorted batches alone would not)


def test_warm_start_reads_the_untrained_towers_output_from_the_cache(base, tiny_data):
    # The states after block K+M in the cache are what the untrained tower computes from those
    # after block K: the warm start reads them for every row instead of running the tower.
    from phasegpt.tower import Tower
    from phasegpt.train.tower import _untrained_features

    train, dev = tiny_data
    fit = TowerFit(**{**FIT.__dict__, "tap": 0, "depth": 2})
    ys = (np.arange(len(train)) % 4, np.arange(len(dev)) % 4)
    tower = Tower(base.loaded.model, fit.tower_config())
    both = extract_states(base, train + dev, [0, 1, 2], progress=False)
    tap_only = extract_states(base, train + dev, [0], progress=False)
    read = _untrained_features(tower, [(CachedStates(both, 0, [e.key for e in rows]), y, np.arange(len(y)))
                                       for rows, y in zip(tiny_data, ys)], fit, np.random.default_rng(0))
    run = _untrained_features(tower, [(CachedStates(tap_only, 0, [e.key for e in rows]), y, np.arange(len(y)))
                                      for rows, y in zip(tiny_data, ys)], fit, np.random.default_rng(0))
    for (x_read, y_read), (x_run, y_run) in zip(read, run):
        assert x_read.shape == x_run.shape and np.array_equal(y_read, y_run)  # every row, in order, both ways
        assert np.abs(x_read - x_run).max() < 0.05 * np.abs(x_run).max()  # float16 states either way


def test_warm_share_splits_the_training_rows_once():
    from phasegpt.train.tower import split_rows

    warm, fine = split_rows(100, 0.5, seed=3)
    assert len(warm) == len(fine) == 50 and not set(warm) & set(fine) and set(warm) | set(fine) == set(range(100))
    assert np.array_equal(warm, split_rows(100, 0.5, seed=3)[0])  # the same rows again (a resumed run)
    assert not np.array_equal(warm, split_rows(100, 0.5, seed=4)[0])
    both = split_rows(100, 1.0, seed=3)
    assert np.array_equal(both[0], np.arange(100)) and np.array_equal(both[1], np.arange(100))


def test_tower_fine_tunes_on_the_rows_its_warm_start_did_not_fit(base, tiny_data, tmp_path):
    train, dev = tiny_data
    cache = extract_states(base, train + dev, [0], progress=False)
    sources = (CachedStates(cache, 0, [e.key for e in train]), CachedStates(cache, 0, [e.key for e in dev]))
    fit = TowerFit(**{**FIT.__dict__, "warm_share": 0.5, "step_rows": 16})
    head = train_tower(base, train, dev, fit=fit, sources=sources, progress=False, run_dir=tmp_path)
    assert head.config.metrics["steps"] == 8 * 3  # 48 fine-tuning rows in steps of 16, for 8 epochs
    assert head.config.metrics["dev_macro_f1"] > 0.5  # chance is 0.25
