"""The tokenizer and chat template load_gguf rebuilds from a file's metadata (tiny files written here)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from phasegpt.errors import ModelLoadError
from phasegpt.gguf import load_gguf
from tests import gguf_fixtures as fx

MISTRAL = fx.FAMILIES["mistral"]


def tokenizer_of(tmp_path, family=MISTRAL, meta=None, vocab=fx.VOCAB):
    path = tmp_path / "tok.gguf"
    fx.write_gguf(path, family, fx.hf_weights(family, vocab=vocab), meta=meta)
    return load_gguf(path).tokenizer


def test_byte_level_tokenizer(tmp_path):
    tokenizer = tokenizer_of(tmp_path)
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
                                             ("llama-bpe", ["12", "1", "2"]), ("qwen2", ["1", "2", "1", "2"])])
def test_pre_tokenizer_follows_tokenizer_ggml_pre(tmp_path, pre, pieces):
    """The vocabulary merges "1 2"; how "1212" is cut first decides which merges can apply."""
    meta = fx.gguf_metadata(MISTRAL)
    meta["tokenizer.ggml.pre"] = pre
    tokenizer = tokenizer_of(tmp_path, meta=meta)
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("1212")) == pieces


def test_unknown_pre_tokenizer_is_refused(tmp_path):
    meta = fx.gguf_metadata(MISTRAL)
    meta["tokenizer.ggml.pre"] = "mystery"
    with pytest.raises(ModelLoadError, match="tokenizer.ggml.pre='mystery'"):
        tokenizer_of(tmp_path, meta=meta)


@pytest.mark.parametrize(("arch", "prompt", "stop"), [
    ("mistral", "<|im_start|>[INST] Be brief.\n\nhi [/INST]", None),  # the tiny vocabulary's bos is <|im_start|>
    ("gemma3", "<|im_start|><start_of_turn>user\nBe brief.\n\nhi<end_of_turn>\n<start_of_turn>model\n",
     "<end_of_turn>"),
    ("qwen3", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
     "<|im_end|>"),
    ("phi3", "<|system|>\nBe brief.<|end|>\n<|user|>\nhi<|end|>\n<|assistant|>\n", "<|end|>"),
])
def test_file_without_a_template_gets_its_familys(tmp_path, arch, prompt, stop):
    family = fx.FAMILIES[arch]
    meta = fx.gguf_metadata(family)
    del meta["tokenizer.chat_template"]
    if stop and stop not in meta["tokenizer.ggml.tokens"]:  # the family's end-of-turn marker, as its vocabulary has it
        meta["tokenizer.ggml.tokens"] = meta["tokenizer.ggml.tokens"] + [stop]
        meta["tokenizer.ggml.token_type"] = meta["tokenizer.ggml.token_type"] + [3]
    vocab = len(meta["tokenizer.ggml.tokens"])
    tokenizer = tokenizer_of(tmp_path, family, meta, vocab=vocab)
    text = tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                                         add_generation_prompt=True, tokenize=False)
    assert text == prompt
    if stop:  # generation stops at the end of the model's turn
        assert meta["tokenizer.ggml.tokens"].index(stop) in tokenizer.eos_token_ids


def test_sentencepiece_tokenizer_matches_sentencepiece(tmp_path):
    sentencepiece = pytest.importorskip("sentencepiece")
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
    meta = fx.gguf_metadata(MISTRAL)
    for key in ("tokenizer.ggml.merges", "tokenizer.ggml.pre", "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.add_bos_token", "tokenizer.chat_template"):
        del meta[key]
    meta.update({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": pieces, "tokenizer.ggml.token_type": types,
                 "tokenizer.ggml.scores": [sp.get_score(i) for i in range(len(pieces))],
                 "tokenizer.ggml.unknown_token_id": 0})
    tokenizer = tokenizer_of(tmp_path, meta=meta, vocab=len(pieces))
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
