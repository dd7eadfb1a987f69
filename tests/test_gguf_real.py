"""Real GGUF files: the packaged SmolLM2 (Q4_1, llama) and Gemma 3 270M base (Q4_K_M, gemma3)."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize
from mlx_lm.generate import generate_step
from mlx_lm.models import gemma3_text

import phasegpt
from phasegpt.gguf import load_gguf, quants
from phasegpt.gguf.loader import prepare
from phasegpt.gguf.reader import open_gguf
from phasegpt.hub import gemma3_gguf
from tests import gguf_fixtures as fx

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
FRANCE = "The capital of France is"
# llama.cpp's own answer for FRANCE on this file (its CPU build from llama-cpp-python 0.3.36's vendored
# source, one-off): the five likeliest next tokens and their logits. " Paris" is third, after " the"
# and " a"; greedy decoding continues " the capital of the country of France."
LLAMA_CPP_TOP5 = [506, 496, 9079, 886, 3224]  # " the", " a", " Paris", " one", " known"
LLAMA_CPP_LOGITS = [19.1317, 18.5327, 18.4528, 18.1072, 17.8750]
# Gemma 3 270M's published Hugging Face config (the parts mlx-lm's gemma3_text reads).
GEMMA3_CONFIG = {
    "model_type": "gemma3_text", "hidden_size": 640, "num_hidden_layers": 18, "intermediate_size": 2048,
    "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "rms_norm_eps": 1e-6,
    "vocab_size": 262144, "rope_theta": 1_000_000.0, "rope_local_base_freq": 10_000.0,
    "query_pre_attn_scalar": 256, "sliding_window": 512, "sliding_window_pattern": 6,
    "max_position_embeddings": 32768,
}


@pytest.fixture(scope="session")
def gemma3_path(tmp_path_factory) -> Path:
    return gemma3_gguf(tmp_path_factory.mktemp("gemma3"))  # fails with the install command when missing


@pytest.fixture(scope="session")
def gemma3(gemma3_path):
    return phasegpt.load(gemma3_path)


@pytest.fixture(scope="session")
def gemma3_file(gemma3_path):
    """The header, parsed once for the tests below (parsing Gemma's 262k-token vocabulary takes seconds)."""
    return open_gguf(gemma3_path)


@pytest.fixture(scope="session")
def gemma3_reference(gemma3_file) -> nn.Module:
    """The same weights as mlx-lm's own gemma3_text model, without phasegpt's loader: every tensor's
    bytes decoded by gguf.quants, renamed the way Hugging Face names them, Gemma's ``1 + w`` norms put back."""
    family = fx.FAMILIES["gemma3"]
    names = {gguf: hf for hf, gguf in family.layer.items()}
    top = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}
    weights = {}
    for tensor in gemma3_file.tensors:
        base = tensor.name.removesuffix(".weight")
        if base in top:
            name = top[base]
        else:
            _, layer, module = base.split(".")
            name = f"model.layers.{layer}.{names[module]}"
        values = dequantize(tensor.data, GGMLQuantizationType[tensor.kind]).reshape(tensor.shape)
        weights[f"{name}.weight"] = mx.array(values - 1 if name.endswith("norm") else values)
    model = gemma3_text.Model(gemma3_text.ModelArgs.from_dict(GEMMA3_CONFIG))
    model.load_weights(list(model.sanitize(weights).items()), strict=True)
    mx.eval(model.parameters())
    return model


def test_gemma3_loads_as_mlx_lm_gemma3_text_in_float32(gemma3):
    loaded = gemma3.loaded
    assert type(loaded.model) is gemma3_text.Model and loaded.dtype == "float32"
    assert {k: (loaded.config[k], type(loaded.config[k])) for k in GEMMA3_CONFIG} == \
        {k: (v, type(v)) for k, v in GEMMA3_CONFIG.items()}  # types too: transformers' config refuses 256.0
    assert loaded.config["tie_word_embeddings"] is True and loaded.name == "gemma-3-270m-q4_k_m"


def test_gemma3_next_token_agrees_with_llama_cpp(gemma3):
    tokenizer = gemma3.tokenizer
    ids = tokenizer.encode(FRANCE)
    assert ids == [2, 818, 5279, 529, 7001, 563]  # <bos>The▁capital▁of▁France▁is, as llama.cpp tokenizes it
    logits = gemma3.loaded.model(mx.array([ids]))[0, -1].astype(mx.float32)
    top = mx.argsort(-logits)[:5].tolist()
    assert top == LLAMA_CPP_TOP5 and tokenizer.decode([top[2]]) == " Paris"
    # llama.cpp rounds activations to 8 bits inside its quantized dot products, so logits differ a little.
    assert np.abs(np.array(logits)[top] - LLAMA_CPP_LOGITS).max() < 0.4


def test_gemma3_greedy_tokens_equal_mlx_lm_on_the_same_weights(gemma3, gemma3_reference):
    prompt = "Write one sentence about the sea."
    ours = [c.token for c in gemma3.stream(prompt, max_tokens=8) if c.token is not None]
    ids = mx.array(gemma3.encode(prompt))  # the chat prompt (phasegpt's Gemma template: the file has none)
    theirs = [int(t) for t, _ in zip((tok for tok, _ in generate_step(ids, gemma3_reference)), range(len(ours)))]
    assert len(ours) >= 4 and ours == theirs
    raw = mx.array(gemma3.tokenizer.encode(FRANCE))
    base = [int(t) for t, _ in zip((tok for tok, _ in generate_step(raw, gemma3.loaded.model)), range(8))]
    assert gemma3.tokenizer.decode(base) == " the capital of the country of France."  # llama.cpp's greedy text


def test_gemma3_native_plan_and_requantized_k_quants(gemma3_file):
    """native on the real mix, without a second whole load (the tiny files run every family native):
    llama.cpp fell back to Q5_0 where a row is not a multiple of 256 long, so Q5_0 and the Q8_0 embedding
    stay as stored, while its Q4_K and Q6_K tensors are re-quantized within one step of their values."""
    _, _, _, entries = prepare(gemma3_file, "native")
    plans = {e.target.removesuffix(".weight"): e.plan for e in entries if e.plan.quantized}
    assert (plans["model.embed_tokens"].bits, plans["model.layers.0.self_attn.q_proj"].bits) == (8, 5)
    o_proj = plans["model.layers.0.self_attn.o_proj"]
    assert (o_proj.bits, o_proj.group_size, o_proj.exact) == (4, 64, False)  # Q4_K
    for kind in ("Q4_K", "Q6_K"):
        entry = next(e for e in entries if e.tensor.kind == kind)
        params, _ = quants.load(kind, entry.tensor.data, entry.tensor.shape, entry.plan)
        ours = np.array(mx.dequantize(params["weight"], params["scales"].astype(mx.float32),
                                      params["biases"].astype(mx.float32), group_size=64, bits=entry.plan.bits))
        groups = dequantize(entry.tensor.data, GGMLQuantizationType[kind]).reshape(entry.tensor.shape[0], -1, 64)
        step = (groups.max(-1) - groups.min(-1)) / (2**entry.plan.bits - 1)
        error = np.abs(ours.reshape(groups.shape) - groups).max(-1)
        assert (error <= step + 1e-3 * np.abs(groups).max(-1)).all(), entry.tensor.name


@pytest.fixture(scope="module")
def smollm2_raw(smollm2_path):
    """The packaged SmolLM2 straight from load_gguf (conftest's ``smollm2`` goes through phasegpt.load)."""
    return load_gguf(smollm2_path)


def test_smollm2_loads_quantized_with_the_shipped_heads_fingerprint(smollm2_raw, smollm2):
    model, config = smollm2_raw.model, smollm2_raw.config
    assert all(isinstance(layer.self_attn.q_proj, nn.QuantizedLinear) for layer in model.layers)
    assert config["tie_word_embeddings"] is True and config["quantization"]["bits"] == 4
    shipped = json.loads((ROOT / "adapters" / "smollm2-135m" / "head.json").read_text())["base_fingerprint"]
    # conftest's smollm2 is the float32 load (auto on a CPU): the fingerprint must not depend on the dtype.
    assert smollm2_raw.fingerprint == shipped == smollm2.loaded.fingerprint


def test_smollm2_answers_paris(smollm2_raw):
    from mlx_lm import generate

    model, tokenizer = smollm2_raw.model, smollm2_raw.tokenizer
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True)
    assert "Paris" in generate(model, tokenizer, prompt, max_tokens=8)


def test_smollm2_tokenizer_round_trips(smollm2_raw):
    tokenizer = smollm2_raw.tokenizer
    text = "Tokenizers split 2024 words, naïvely: «ok»?\n\tYes."
    assert tokenizer.decode(tokenizer.encode(text)) == text
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<file_sep>"):
        ids = tokenizer.encode(special)
        assert len(ids) == 1 and tokenizer.decode(ids) == special
    assert tokenizer.encode("<|im_start|>user") == [1, *tokenizer.encode("user")]
    assert len(tokenizer.encode("2024")) == 4  # SmolLM2 ("smollm" pre-tokenizer) splits every digit
