"""Typed-refusal LoRA training (phasegpt.train.adapter) on a tiny random Mistral-architecture model."""

from __future__ import annotations

import json
import os
import warnings

import phasegpt  # noqa: F401  (first: binds MLX to the optimized BLAS before mlx.core loads)

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models import llama
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
from mlx_lm.tuner.trainer import iterate_batches
from mlx_lm.tuner.utils import linear_to_lora_layers
from mlx_lm.utils import load_adapters

from phasegpt.train.adapter import (
    ATTENTION_KEYS,
    MLP_KEYS,
    AdapterConfig,
    adapter_size_bytes,
    response_loss,
    train_adapter,
)
from phasegpt.train.examples import REFUSAL_TAGS, REFUSAL_TEXTS, make_chat_examples
from phasegpt.prompting import user_message
from phasegpt.verdict import TAG_LABELS, parse_tag
from tests.tiny import make_tiny_model_dir, tiny_config

# The published config.json values of mistralai/Mistral-7B-Instruct-v0.3.
MISTRAL_7B = {
    "model_type": "mistral",
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 32768,
    "head_dim": 128,
    "rope_theta": 1e6,
}

LABEL_CYCLE = ("safety", "epistemic", "missing_context", "answer")
TOPICS = ("bread", "rivers", "chess", "clocks", "bees", "glass", "maps", "tides", "salt", "kites")


def records(n: int, offset: int = 0) -> list[dict]:
    """n labelled records cycling through the four labels; invented here, not from any data set."""
    out = []
    for i in range(offset, offset + n):
        label = LABEL_CYCLE[i % 4]
        rec = {"prompt": f"Tell me about {TOPICS[i % len(TOPICS)]} number {i}?", "label": label}
        if label == "missing_context":
            rec["context"] = f"A note about {TOPICS[(i + 3) % len(TOPICS)]}."
        if label == "answer":
            rec["response"] = f"It is about {TOPICS[i % len(TOPICS)]}."
        out.append(rec)
    return out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def no_compile():
    # On CPU, mx.compile builds C++ kernels with the system compiler on first use
    # (~40 s on a cold $TMPDIR/mlx cache); the numbers are the same without it.
    mx.disable_compile()
    yield
    if not os.environ.get("MLX_DISABLE_COMPILE"):
        mx.enable_compile()


def lora_param_count(model: nn.Module) -> int:
    return sum(v.size for k, v in tree_flatten(model.parameters()) if k.rsplit(".", 1)[-1] in ("lora_a", "lora_b"))


def base_logits(model, tokenizer, text: str) -> mx.array:
    ids = mx.array(tokenizer.encode(text))[None]
    out = model(ids)
    mx.eval(out)
    return out


# --- size formula ----------------------------------------------------------------


def test_mistral_7b_default_is_about_50_mb():
    cfg = AdapterConfig()
    size32 = adapter_size_bytes(MISTRAL_7B, cfg)
    assert 50e6 < size32 < 56e6
    assert adapter_size_bytes(MISTRAL_7B, cfg, dtype_bytes=2) * 2 == size32
    # Adding the MLP projections makes it about three times larger.
    full = adapter_size_bytes(MISTRAL_7B, AdapterConfig(keys=None))
    assert full == adapter_size_bytes(MISTRAL_7B, AdapterConfig(keys=ATTENTION_KEYS + MLP_KEYS))
    assert full > 3 * size32


@pytest.mark.parametrize(
    "cfg",
    [
        AdapterConfig(),
        AdapterConfig(rank=4, keys=None),
        AdapterConfig(rank=8, num_layers=2, keys=("self_attn.v_proj", "mlp.down_proj")),
    ],
    ids=["default", "all-linear", "last-two-layers"],
)
@pytest.mark.parametrize("quantized", [False, True], ids=["float", "4bit"])
def test_size_formula_matches_mlx_lm_lora_layers(cfg, quantized):
    # Mistral-7B's ratios at 1/32 width: 4 query heads per KV head, MLP 3.5x hidden.
    config = tiny_config(vocab_size=128, num_layers=3, hidden_size=128, num_heads=8, num_kv_heads=2)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    if quantized:
        nn.quantize(model, group_size=32, bits=4)
    linear_to_lora_layers(model, cfg.num_layers, cfg.lora_parameters())
    assert adapter_size_bytes(config, cfg) == 4 * lora_param_count(model)


def test_size_formula_reads_explicit_head_dim():
    config = tiny_config(vocab_size=128, num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=32)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    cfg = AdapterConfig(rank=2)
    linear_to_lora_layers(model, cfg.num_layers, cfg.lora_parameters())
    assert adapter_size_bytes(config, cfg) == 4 * lora_param_count(model)


def test_size_formula_rejects_unknown_keys_and_too_many_layers():
    with pytest.raises(ValueError, match="unknown projection keys"):
        adapter_size_bytes(MISTRAL_7B, AdapterConfig(keys=("self_attn.qproj",)))
    with pytest.raises(ValueError, match="33"):
        adapter_size_bytes(MISTRAL_7B, AdapterConfig(num_layers=33))
    with pytest.raises(ValueError, match="hidden_size"):
        adapter_size_bytes({"num_hidden_layers": 2}, AdapterConfig())


def test_config_validates_and_from_dict_ignores_extra_keys():
    with pytest.raises(ValueError, match="rank"):
        AdapterConfig(rank=0)
    with pytest.raises(ValueError, match="num_layers"):
        AdapterConfig(num_layers=0)
    cfg = AdapterConfig.from_dict({"rank": 4, "keys": ["mlp.up_proj"], "unknown": 1})
    assert cfg.rank == 4 and cfg.keys == ("mlp.up_proj",)


# --- examples ----------------------------------------------------------------------


def test_chat_examples_use_typed_tags_and_context(tiny_dir):
    _, tok = mlx_lm.load(str(tiny_dir))
    recs = records(8)
    examples = make_chat_examples(recs, tok)
    assert len(examples) == 8
    for rec, ex in zip(recs, examples):
        user, assistant = ex["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert user["content"] == user_message(rec["prompt"], rec.get("context"))
        assert rec["prompt"] in user["content"]
        if rec.get("context"):
            assert rec["context"] in user["content"]
        if rec["label"] == "answer":
            assert assistant["content"] == rec["response"]
        else:
            tag = parse_tag(assistant["content"])
            assert tag is not None and tag.kind == "PASS"
            assert assistant["content"] == REFUSAL_TAGS[rec["label"]]
            # The tag must map back to its label wherever verdict.TAG_LABELS knows the type.
            assert TAG_LABELS.get(tag.type, rec["label"]) == rec["label"]


def test_chat_examples_text_style_and_skipping(tiny_dir):
    _, tok = mlx_lm.load(str(tiny_dir))
    recs = records(8)
    for r in recs:
        r.pop("response", None)
    with pytest.warns(UserWarning, match="skipped 2 answer"):
        examples = make_chat_examples(recs, tok, style="text")
    assert len(examples) == 6
    replies = {ex["messages"][1]["content"] for ex in examples}
    assert replies == set(REFUSAL_TEXTS.values())
    assert all(parse_tag(r) is None for r in replies)


def test_chat_examples_reject_bad_input(tiny_dir):
    _, tok = mlx_lm.load(str(tiny_dir))
    with pytest.raises(ValueError, match="label 'other'"):
        make_chat_examples([{"prompt": "hi", "label": "other"}], tok)
    with pytest.raises(ValueError, match="no prompt"):
        make_chat_examples([{"prompt": "  ", "label": "answer"}], tok)
    with pytest.raises(ValueError, match="style"):
        make_chat_examples([], tok, style="emoji")


def test_chat_examples_generate_missing_answers_greedily(tiny_dir):
    model, tok = mlx_lm.load(str(tiny_dir))
    recs = [r for r in records(8) if r["label"] == "answer"]
    for r in recs:
        del r["response"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may be skipped: the model writes every answer
        examples = make_chat_examples(recs, tok, model=model, max_tokens=8)
    assert len(examples) == len(recs)
    for ex in examples:
        prompt = tok.apply_chat_template(ex["messages"][:1], add_generation_prompt=True, return_dict=False)
        expected = mlx_lm.generate(model, tok, prompt, max_tokens=8).strip()
        assert ex["messages"][1]["content"] == expected


# --- training ----------------------------------------------------------------------

TRAIN_CFG = AdapterConfig(
    rank=8, scale=2.0, dropout=0.0, iters=24, batch_size=4, learning_rate=2e-3,
    steps_per_report=4, steps_per_eval=12,
)


@pytest.fixture(scope="module")
def trained(tiny_dir, tmp_path_factory):
    """One training run shared by the tests that inspect its result."""
    mx.disable_compile()
    try:
        model, tok = mlx_lm.load(str(tiny_dir))
        train = make_chat_examples(records(20), tok)
        valid = make_chat_examples(records(8, offset=100), tok)
        out = tmp_path_factory.mktemp("adapters") / "typed"
        path = train_adapter(model, tok, train, valid, out, config=TRAIN_CFG, progress=False, base_model="tiny")
    finally:
        if not os.environ.get("MLX_DISABLE_COMPILE"):
            mx.enable_compile()
    return {"path": path, "model": model, "tok": tok, "valid": valid}


@pytest.mark.slow
def test_training_lowers_the_loss(trained):
    cfg = json.loads((trained["path"] / "adapter_config.json").read_text())
    val = cfg["phasegpt"]["val_losses"]
    train = cfg["phasegpt"]["train_losses"]
    assert [it for it, _ in val] == [0, 11, 23]
    assert len(train) == TRAIN_CFG.iters // TRAIN_CFG.steps_per_report
    # Same validation set each time, so the drop is the adapter's doing.
    assert val[-1][1] < 0.7 * val[0][1]
    assert train[-1][1] < train[0][1]


@pytest.mark.slow
def test_adapter_folder_is_mlx_lm_format_and_changes_logits(trained, tiny_dir):
    path = trained["path"]
    assert sorted(os.listdir(path)) == ["adapter_config.json", "adapters.safetensors"]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp folder left behind
    cfg = json.loads((path / "adapter_config.json").read_text())
    assert cfg["fine_tune_type"] == "lora" and cfg["model"] == "tiny"
    assert cfg["lora_parameters"]["rank"] == TRAIN_CFG.rank

    text = "<s>[INST] Tell me about bees? [/INST]"
    base, tok = mlx_lm.load(str(tiny_dir))
    before = base_logits(base, tok, text)
    load_adapters(base, str(path))
    after = base_logits(base, tok, text)
    adapted, _ = mlx_lm.load(str(tiny_dir), adapter_path=str(path))
    via_load = base_logits(adapted, tok, text)
    in_memory = base_logits(trained["model"], tok, text)

    assert not np.allclose(np.array(before), np.array(after), atol=1e-3)
    np.testing.assert_allclose(np.array(after), np.array(via_load), atol=1e-5)
    # What was saved is what was trained: the in-memory model, left in eval mode, agrees.
    assert not trained["model"].training
    np.testing.assert_allclose(np.array(after), np.array(in_memory), atol=1e-5)


@pytest.mark.slow
def test_adapter_file_size_matches_formula(trained, tiny_dir):
    weights = mx.load(str(trained["path"] / "adapters.safetensors"))
    model_config = json.loads((tiny_dir / "config.json").read_text())
    assert sum(w.nbytes for w in weights.values()) == adapter_size_bytes(model_config, TRAIN_CFG)
    assert all(k.endswith(("lora_a", "lora_b")) for k in weights)


def _masked_and_full_loss(model, tok, examples) -> tuple[float, float]:
    """Cross-entropy of the base model over response tokens only, and over all tokens."""
    ce_resp = n_resp = ce_all = n_all = 0.0
    for ex in examples:
        tokens = tok.apply_chat_template(ex["messages"], return_dict=False)
        prompt = tok.apply_chat_template(ex["messages"][:1], add_generation_prompt=True, return_dict=False)
        assert tokens[: len(prompt)] == prompt
        logits = model(mx.array(tokens)[None, :-1])[0]
        ce = nn.losses.cross_entropy(logits, mx.array(tokens[1:]))
        mx.eval(ce)
        ce = np.array(ce)
        resp = ce[len(prompt) - 1 :]  # predicting tokens[len(prompt):], the reply and </s>
        ce_resp += resp.sum()
        n_resp += resp.size
        ce_all += ce.sum()
        n_all += ce.size
    return ce_resp / n_resp, ce_all / n_all


@pytest.mark.slow
def test_loss_is_over_response_tokens_only(trained, tiny_dir):
    # The first validation loss is taken before any step, while lora_b is still zero,
    # so it is the base model's loss: it must be the response-only one.
    base, tok = mlx_lm.load(str(tiny_dir))
    masked, full = _masked_and_full_loss(base, tok, trained["valid"])
    recorded = json.loads((trained["path"] / "adapter_config.json").read_text())["phasegpt"]["val_losses"][0][1]
    # A random model's losses are all near log(vocab); they still differ far beyond float error.
    assert abs(masked - full) > 1e-3
    assert abs(recorded - masked) < 1e-5 * masked


def test_response_loss_scores_exactly_the_reply_tokens(tiny_dir):
    model, tok = mlx_lm.load(str(tiny_dir))
    examples = make_chat_examples(records(4), tok)
    ds = CacheDataset(ChatDataset(examples, tok, mask_prompt=True))
    batch, lengths = next(iterate_batches(ds, 4, 2048))
    loss, ntoks = response_loss(model, batch, lengths)
    mx.eval(loss, ntoks)
    # Every reply token and the closing </s>, not the prompt and not the padding.
    offsets, lens = np.array(lengths).T
    assert int(ntoks) == int((lens - offsets).sum())
    masked, full = _masked_and_full_loss(model, tok, examples)
    assert float(loss) == pytest.approx(masked, rel=1e-5)


class _Interrupt(TrainingCallback):
    def on_train_loss_report(self, info):
        raise KeyboardInterrupt


def test_interrupted_training_leaves_no_half_written_adapter(tiny_dir, tmp_path, no_compile):
    model, tok = mlx_lm.load(str(tiny_dir))
    examples = make_chat_examples(records(8), tok)
    cfg = AdapterConfig(iters=3, batch_size=4, steps_per_report=1)
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "keep.txt").write_text("previous adapter")
    with pytest.raises(KeyboardInterrupt):
        train_adapter(model, tok, examples, [], out, config=cfg, progress=False, overwrite=True, callback=_Interrupt())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert (out / "keep.txt").read_text() == "previous adapter"


def test_train_adapter_refuses_bad_setups(tiny_dir, tmp_path):
    model, tok = mlx_lm.load(str(tiny_dir))
    examples = make_chat_examples(records(8), tok)
    cfg = AdapterConfig(iters=1, batch_size=4)
    existing = tmp_path / "exists"
    existing.mkdir()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        train_adapter(model, tok, examples, [], existing, config=cfg, progress=False)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        train_adapter(model, tok, examples[:3], [], tmp_path / "a", config=cfg, progress=False)
    with pytest.raises(ValueError, match="give more or none"):
        train_adapter(model, tok, examples, examples[:2], tmp_path / "a", config=cfg, progress=False)
    with pytest.raises(ValueError, match="not in the model"):
        train_adapter(model, tok, examples, [], tmp_path / "a", config=AdapterConfig(keys=("attn.q",)), progress=False)
    with pytest.raises(ValueError, match="num_layers=3"):
        train_adapter(model, tok, examples, [], tmp_path / "a", config=AdapterConfig(num_layers=3), progress=False)
    with pytest.raises(ValueError, match="max_seq_length"):
        train_adapter(model, tok, examples, [], tmp_path / "a", config=AdapterConfig(max_seq_length=8), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]
    # None of the refusals touched the model: no LoRA layer was added.
    assert lora_param_count(model) == 0


@pytest.mark.slow
def test_qlora_on_quantized_model_round_trips(tmp_path, no_compile):
    qdir = make_tiny_model_dir(tmp_path / "q4", quantize_bits=4, group_size=32)
    model, tok = mlx_lm.load(str(qdir))
    assert isinstance(model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    examples = make_chat_examples(records(8), tok)
    cfg = AdapterConfig(iters=4, batch_size=4, learning_rate=1e-2, scale=2.0, dropout=0.0, keys=None)
    out = train_adapter(model, tok, examples, [], tmp_path / "qa", config=cfg, progress=False)
    adapted, _ = mlx_lm.load(str(qdir), adapter_path=str(out))
    text = "<s>[INST] Tell me about salt? [/INST]"
    np.testing.assert_allclose(
        np.array(base_logits(adapted, tok, text)), np.array(base_logits(model, tok, text)), atol=1e-4
    )
    model_config = json.loads((qdir / "config.json").read_text())
    weights = mx.load(str(out / "adapters.safetensors"))
    assert sum(w.nbytes for w in weights.values()) == adapter_size_bytes(model_config, cfg)


def test_progress_lines_go_to_stderr_not_stdout(tiny_dir, tmp_path, capfd, no_compile):
    model, tok = mlx_lm.load(str(tiny_dir))
    examples = make_chat_examples(records(8), tok)
    cfg = AdapterConfig(iters=2, batch_size=4, steps_per_report=1, steps_per_eval=1)
    train_adapter(model, tok, examples, examples[:4], tmp_path / "p", config=cfg, progress=True)
    captured = capfd.readouterr()
    assert captured.out == ""
    assert "iter 1/2  train loss" in captured.err and "iter 2/2  train loss" in captured.err
    assert "val loss" in captured.err
