"""load_gguf: tiny GGUF files written here (fast), then the packaged SmolLM2 (slow)."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx_lm.models import llama

from phasegpt.errors import ModelLoadError
from phasegpt.gguf import load_gguf
from tests import gguf_fixtures as fx

VOCAB = len(fx.byte_level_vocab()[0])
PROMPT = mx.array([[4 + ord(c) for c in "hello,world!"]])  # byte b is token 4 + b in the tiny vocabulary


def reference_model(weights: dict[str, np.ndarray], *, tied: bool) -> nn.Module:
    """mlx-lm's llama built straight from the HF-layout weights, with no GGUF in between."""
    args = llama.ModelArgs(model_type="llama", vocab_size=VOCAB, tie_word_embeddings=tied,
                           max_position_embeddings=256, **fx.CONFIG)
    model = llama.Model(args)
    model.load_weights([(k, mx.array(v)) for k, v in weights.items()], strict=True)
    return model


def write_float(tmp_path: Path, *, tied: bool = True, drop: tuple[str, ...] = (), extra: dict | None = None,
                architecture: str = "llama") -> tuple[Path, dict[str, np.ndarray]]:
    weights = fx.hf_weights(VOCAB, tied=tied)
    tensors = {k: v for k, v in fx.gguf_tensors(weights).items() if k not in drop}
    tensors.update(extra or {})
    path = fx.save_float_gguf(tmp_path / "tiny.gguf", tensors, fx.metadata(architecture=architecture))
    return path, weights


def test_tied_model_shapes_config_and_logits(tmp_path):
    path, weights = write_float(tmp_path, tied=True)
    model, _, config = load_gguf(path)

    assert isinstance(model, llama.Model)
    assert len(model.layers) == 2 and not hasattr(model, "lm_head")
    assert model.model.embed_tokens.weight.shape == (VOCAB, 64)
    assert model.layers[0].self_attn.k_proj.weight.shape == (32, 64)
    assert config == {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                      "num_key_value_heads": 2, "intermediate_size": 128, "rms_norm_eps": 1e-5,
                      "vocab_size": VOCAB, "rope_theta": 10000.0, "max_position_embeddings": 256,
                      "tie_word_embeddings": True, "head_dim": 16}
    expected, got = reference_model(weights, tied=True)(PROMPT), model(PROMPT)
    mx.eval(expected, got)
    assert np.allclose(np.array(got), np.array(expected), atol=1e-4)


def test_untied_output_becomes_lm_head(tmp_path):
    path, weights = write_float(tmp_path, tied=False)
    model, _, config = load_gguf(path)
    assert config["tie_word_embeddings"] is False
    assert np.array_equal(np.array(model.lm_head.weight), weights["lm_head.weight"])
    expected, got = reference_model(weights, tied=False)(PROMPT), model(PROMPT)
    mx.eval(expected, got)
    assert np.allclose(np.array(got), np.array(expected), atol=1e-4)


def test_qk_rows_are_unpermuted(tmp_path):
    path, weights = write_float(tmp_path)
    stored = fx.gguf_tensors(weights)["blk.1.attn_k.weight"]
    assert not np.array_equal(stored, weights["model.layers.1.self_attn.k_proj.weight"])  # the file really differs
    model, _, _ = load_gguf(path)
    for module in ("q_proj", "k_proj"):
        loaded = np.array(getattr(model.layers[1].self_attn, module).weight)
        assert np.array_equal(loaded, weights[f"model.layers.1.self_attn.{module}.weight"])


def test_q8_0_tensors_stay_quantized_and_unpermuted(tmp_path):
    weights = fx.hf_weights(VOCAB, tied=True, seed=1)
    decoded = dict(weights)
    tensors = {}
    for name, value in fx.gguf_tensors(weights).items():
        if value.ndim == 2 and name != "token_embd.weight":
            raw, _ = fx.quantize_q8_0(value)
            tensors[name] = (fx.GGML_Q8_0, value.shape, raw)
        else:
            tensors[name] = (fx.GGML_F32, value.shape, value.tobytes())
    for name, value in weights.items():  # Q8_0 works row by row, so decode the unpermuted rows
        if value.ndim == 2 and name != "model.embed_tokens.weight":
            decoded[name] = fx.quantize_q8_0(value)[1]
    path = fx.write_raw_gguf(tmp_path / "q8.gguf", tensors, fx.metadata())

    model, _, config = load_gguf(path)
    q_proj = model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, nn.QuantizedLinear) and (q_proj.bits, q_proj.group_size) == (8, 32)
    assert type(model.model.embed_tokens) is nn.Embedding
    assert config["quantization"] == {"group_size": 32, "bits": 8, "mode": "affine"}
    expected, got = reference_model(decoded, tied=True)(PROMPT), model(PROMPT)
    mx.eval(expected, got)
    assert np.allclose(np.array(got), np.array(expected), atol=2e-3)


def test_byte_level_tokenizer(tmp_path):
    path, _ = write_float(tmp_path)
    _, tokenizer, _ = load_gguf(path)
    tokens = fx.byte_level_vocab()[0]
    text = "hello the world, <|im_start|>ünïcode<|tool|><|im_end|>"
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    assert tokens.index("Ġthe") in ids and tokens.index("Ġworld") in ids  # merges applied
    assert [ids.count(i) for i in (1, 2, 3)] == [1, 1, 1]  # control tokens stay whole, no BOS added
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hello the world, ünïcode"
    assert tokenizer.eos_token_id == 2 and tokenizer.bos_token == "<|im_start|>"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert tokenizer.decode(prompt) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(("pre", "pieces"), [("default", ["12", "12"]), ("smollm", ["1", "2", "1", "2"]),
                                             ("llama-bpe", ["12", "1", "2"])])
def test_pre_tokenizer_follows_tokenizer_ggml_pre(tmp_path, pre, pieces):
    """The vocabulary merges "1 2"; how "1212" is cut first decides which merges can apply."""
    meta = fx.metadata()
    meta["tokenizer.ggml.pre"] = pre
    path = fx.save_float_gguf(tmp_path / "pre.gguf", fx.gguf_tensors(fx.hf_weights(VOCAB, tied=True)), meta)
    _, tokenizer, _ = load_gguf(path)
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("1212")) == pieces


def test_unknown_pre_tokenizer_is_refused(tmp_path):
    meta = fx.metadata()
    meta["tokenizer.ggml.pre"] = "mystery"
    path = fx.save_float_gguf(tmp_path / "pre.gguf", fx.gguf_tensors(fx.hf_weights(VOCAB, tied=True)), meta)
    with pytest.raises(ModelLoadError, match="tokenizer.ggml.pre='mystery'"):
        load_gguf(path)


def test_sentencepiece_tokenizer_matches_sentencepiece(tmp_path):
    sentencepiece = pytest.importorskip("sentencepiece")
    import io

    corpus = [f"The {w} sat on the {v} while {n} birds sang over the quiet river number {i}."
              for i, (w, v, n) in enumerate(zip(["cat", "dog", "fox", "owl"] * 8, ["mat", "log", "hill", "roof"] * 8,
                                                ["three", "seven", "many", "few"] * 8))]
    model_file = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model_file, model_type="bpe", vocab_size=350,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        hard_vocab_limit=False, bos_id=1, eos_id=2, unk_id=0, minloglevel=2,
    )
    sp = sentencepiece.SentencePieceProcessor(model_proto=model_file.getvalue())
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1
             for i in range(len(pieces))]
    meta = fx.metadata()
    for key in ("tokenizer.ggml.merges", "tokenizer.ggml.pre", "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.add_bos_token", "tokenizer.chat_template"):
        del meta[key]
    meta.update({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": pieces, "tokenizer.ggml.token_type": types,
                 "tokenizer.ggml.scores": [sp.get_score(i) for i in range(len(pieces))],
                 "tokenizer.ggml.unknown_token_id": 0})
    weights = fx.hf_weights(len(pieces), tied=True)
    path = fx.save_float_gguf(tmp_path / "spm.gguf", fx.gguf_tensors(weights), meta)

    _, tokenizer, _ = load_gguf(path)
    # Glued word fragments make merges compete, so a wrong merge order shows up.
    rng = np.random.default_rng(0)
    words = " ".join(corpus).split()
    glued = ["".join(w[rng.integers(0, 2):] for w in rng.choice(words, 3)) for _ in range(40)]
    for text in ("The cat sat on the roof.", "Über € quiet birds 42", "dog\nmat  two spaces", *glued):
        ids = tokenizer.encode(text)
        # Text that starts with a space is left out: HF's Metaspace, like the model's reference
        # tokenizer, does not add a second one, while sentencepiece and llama.cpp do.
        assert ids == [1] + sp.encode(text), text  # llama.cpp's default: BOS first
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
        detokenizer = tokenizer.detokenizer  # what mlx_lm.stream_generate decodes with
        detokenizer.reset()
        for token in ids[1:]:
            detokenizer.add_token(token)
        detokenizer.finalize()
        assert detokenizer.text == text
    prompt = tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": "Where is the cat?"}],
                                           add_generation_prompt=True, tokenize=False)
    assert prompt == "<s>[INST] Be brief.\n\nWhere is the cat? [/INST]"


def test_missing_and_leftover_tensors_listed_together(tmp_path):
    extra = {"rope_freqs.weight": np.ones(8, np.float32)}
    path, _ = write_float(tmp_path, drop=("blk.1.ffn_up.weight", "output_norm.weight"), extra=extra)
    with pytest.raises(ModelLoadError) as error:
        load_gguf(path)
    message = str(error.value)
    assert "missing: blk.1.ffn_up.weight, output_norm.weight" in message
    assert "unexpected: rope_freqs.weight" in message and str(path) in message


def test_unsupported_architecture(tmp_path):
    path, _ = write_float(tmp_path, architecture="qwen2")
    with pytest.raises(ModelLoadError, match="unsupported GGUF architecture qwen2 \\(phasegpt reads llama and mistral\\)"):
        load_gguf(path)


def test_mistral_architecture_is_accepted(tmp_path):
    path, _ = write_float(tmp_path, architecture="mistral")
    _, _, config = load_gguf(path)
    assert config["model_type"] == "llama" and config["num_key_value_heads"] == 2


def test_k_quant_is_refused_with_the_fix(tmp_path):
    tensors = {name: (fx.GGML_F32, value.shape, value.tobytes())
               for name, value in fx.gguf_tensors(fx.hf_weights(VOCAB, tied=True)).items()}
    tensors["blk.0.ffn_down.weight"] = (fx.GGML_Q4_K, (64, 256), bytes(64 * 144))  # 144 bytes per 256 weights
    path = fx.write_raw_gguf(tmp_path / "k.gguf", tensors, fx.metadata())
    with pytest.raises(ModelLoadError, match="unsupported GGUF quantization Q4_K in tensor blk.0.ffn_down.weight"
                                             ".*convert the file to Q4_0/Q4_1/Q8_0/F16 or use an MLX folder"):
        load_gguf(path)


@pytest.mark.parametrize("keep", [100, 2000, -64], ids=["in-header", "in-metadata", "in-tensor-data"])
def test_truncated_file(tmp_path, keep):
    path, _ = write_float(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(ModelLoadError, match="truncated or corrupt") as error:
        load_gguf(path)
    assert str(path) in str(error.value)


def test_not_a_gguf_and_missing_file(tmp_path):
    text = tmp_path / "notes.gguf"
    text.write_text("just some text, not a model\n")
    with pytest.raises(ModelLoadError, match="not a readable GGUF"):
        load_gguf(text)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a readable GGUF"):
        load_gguf(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_gguf(tmp_path / "absent.gguf")


@pytest.fixture(scope="module")
def smollm2_raw(smollm2_path):
    """The packaged SmolLM2 straight from load_gguf (conftest's ``smollm2`` goes through phasegpt.load)."""
    return load_gguf(smollm2_path)


@pytest.mark.slow
def test_smollm2_loads_quantized(smollm2_raw):
    model, _, config = smollm2_raw
    assert all(isinstance(layer.self_attn.q_proj, nn.QuantizedLinear) for layer in model.layers)
    assert isinstance(model.layers[0].mlp.down_proj, nn.QuantizedLinear)
    assert config["tie_word_embeddings"] is True and config["quantization"]["bits"] == 4


@pytest.mark.slow
def test_smollm2_answers_paris(smollm2_raw):
    from mlx_lm import generate

    model, tokenizer, _ = smollm2_raw
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True)
    assert "Paris" in generate(model, tokenizer, prompt, max_tokens=8)


@pytest.mark.slow
def test_smollm2_tokenizer_round_trips(smollm2_raw):
    _, tokenizer, _ = smollm2_raw
    text = "Tokenizers split 2024 words, naïvely: «ok»?\n\tYes."
    assert tokenizer.decode(tokenizer.encode(text)) == text
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<file_sep>"):
        ids = tokenizer.encode(special)
        assert len(ids) == 1 and tokenizer.decode(ids) == special
    assert tokenizer.encode("<|im_start|>user") == [1, *tokenizer.encode("user")]
    assert len(tokenizer.encode("2024")) == 4  # SmolLM2 ("smollm" pre-tokenizer) splits every digit
