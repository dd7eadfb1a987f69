"""Rebuild a GGUF file's Hugging Face tokenizer from its ``tokenizer.ggml.*`` metadata.

llama.cpp stores the vocabulary, merges (or SentencePiece scores), token types, special
token ids and chat template as metadata rather than as a ``tokenizer.json``; this module
turns them back into a ``PreTrainedTokenizerFast`` wrapped in mlx-lm's ``TokenizerWrapper``,
for byte-level BPE (``gpt2``) and SentencePiece BPE (``llama``) vocabularies.
``phasegpt.gguf.loader`` calls it beside building the model.
"""

from __future__ import annotations

from functools import partial
from importlib.resources import files
from pathlib import Path
from typing import Any

from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, SPMStreamingDetokenizer, TokenizerWrapper
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from phasegpt.errors import ModelLoadError

# Byte-level BPE splits text before merging; llama.cpp names the split by `tokenizer.ggml.pre`.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")  # Qwen cuts every digit apart
_GPT2_PRE = ("default", "gpt-2", "gpt2")
_SMOLLM_PRE = ("smollm",)
_LLAMA3_PRE = ("llama-bpe", "llama3", "llama-v3", "smaug-bpe")
# What llama.cpp's converter writes for Qwen 2, 2.5 and 3 (and the DeepSeek-R1 Qwen distills).
_QWEN2_PRE = ("qwen2", "deepseek-r1-qwen")

# The template a file without one gets, by mlx-lm model type (phasegpt/data/chat_templates/).
_FALLBACK = {"llama": "mistral", "qwen2": "chatml", "qwen3": "chatml", "gemma2": "gemma", "gemma3_text": "gemma",
             "phi3": "phi3"}
# The token a fallback template ends a turn with, a stop for generation when the vocabulary has it.
_TURN_END = {"gemma": "<end_of_turn>", "chatml": "<|im_end|>", "phi3": "<|end|>"}


def fallback_template(model_type: str) -> tuple[str, str]:
    """``(name, jinja source)`` of the chat template used when a file of ``model_type`` carries none."""
    name = _FALLBACK.get(model_type, "mistral")
    return name, files("phasegpt").joinpath("data", "chat_templates", f"{name}.jinja").read_text(encoding="utf-8")


# Mistral's [INST] format, for llama/mistral files that carry no template of their own.
# A leading system message is folded into the first user turn, as Mistral's own templates do.
MISTRAL_CHAT_TEMPLATE = fallback_template("llama")[1]


def tokenizer_from_metadata(metadata: dict, path: Path, model_type: str = "llama") -> TokenizerWrapper:
    """Rebuild the file's tokenizer: byte-level BPE (``gpt2``) or SentencePiece BPE (``llama``).

    Args:
        metadata: the GGUF metadata as plain values (``phasegpt.gguf.reader.GGUFFile.metadata``).
        path: the file, for error messages.
        model_type: the mlx-lm model type, which picks the chat template for a file without one
            (``fallback_template``).

    Returns:
        mlx-lm's ``TokenizerWrapper`` around a ``PreTrainedTokenizerFast`` with the file's chat
        template (or the fallback) and its end-of-turn tokens as stops.

    Raises:
        ModelLoadError: the file carries no tokenizer, or one of a kind or split phasegpt cannot rebuild.
    """
    kind = metadata.get("tokenizer.ggml.model")
    tokens = metadata.get("tokenizer.ggml.tokens")
    if kind is None or not tokens:
        raise ModelLoadError(f"{path} carries no tokenizer (tokenizer.ggml.model/tokens); "
                             "use an MLX folder with tokenizer.json instead")
    token_types = _int_list(metadata.get("tokenizer.ggml.token_type")) or [1] * len(tokens)
    if kind == "gpt2":
        backend = _byte_level_bpe(tokens, metadata, path)
        detokenizer: Any = BPEStreamingDetokenizer
        add_bos = _flag(metadata, "tokenizer.ggml.add_bos_token", False)
    elif kind == "llama":
        add_prefix = _flag(metadata, "tokenizer.ggml.add_space_prefix", True)
        backend = _sentencepiece_bpe(tokens, metadata, token_types, add_prefix)
        detokenizer = partial(SPMStreamingDetokenizer, trim_space=add_prefix)
        # llama.cpp adds BOS to SentencePiece vocabularies unless the file says otherwise.
        add_bos = _flag(metadata, "tokenizer.ggml.add_bos_token", True)
    else:
        raise ModelLoadError(f"{path} uses tokenizer model {kind!r}; phasegpt reads 'gpt2' (byte-level BPE) "
                             "and 'llama' (SentencePiece): use an MLX folder instead")
    # Control tokens (type 3) must stay whole and count as special; user-defined ones (type 4)
    # stay whole but are ordinary text, as llama.cpp treats them.
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                for token, t in zip(tokens, token_types) if t == 3])
    backend.add_tokens([AddedToken(token, special=False, normalized=False)
                        for token, t in zip(tokens, token_types) if t == 4])

    def token(key: str) -> str | None:
        index = metadata.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(index)] if index is not None and int(index) < len(tokens) else None

    template = metadata.get("tokenizer.chat_template")
    # Chat models often end a turn with a token other than eos (Llama 3's <|eot_id|>).
    stops = [int(metadata[key]) for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
             if key in metadata]
    if not template:
        name, template = fallback_template(model_type)
        end = _TURN_END.get(name)
        if end in tokens and end != token("eos"):
            stops.append(tokens.index(end))
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=token("bos"), eos_token=token("eos"), unk_token=token("unknown"), pad_token=token("padding"),
        add_bos_token=add_bos, add_eos_token=_flag(metadata, "tokenizer.ggml.add_eos_token", False),
        chat_template=template, clean_up_tokenization_spaces=False,
    )
    return TokenizerWrapper(hf_tokenizer, detokenizer, eos_token_ids=stops)


def _byte_level_bpe(tokens: list[str], metadata: dict, path: Path) -> Tokenizer:
    pre = metadata.get("tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _GPT2_PRE:
        splitter, ignore_merges = byte_level, False
    elif pre in _SMOLLM_PRE:  # GPT-2's split after cutting every digit apart
        splitter, ignore_merges = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                           byte_level]), False
    elif pre in _LLAMA3_PRE or pre in _QWEN2_PRE:
        # llama.cpp lets a whole pre-token that is in the vocabulary skip merging for Llama 3 only.
        split, ignore_merges = (_LLAMA3_SPLIT, True) if pre in _LLAMA3_PRE else (_QWEN2_SPLIT, False)
        splitter = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        raise ModelLoadError(f"{path} splits text with tokenizer.ggml.pre={pre!r}, which phasegpt does not "
                             "know; use an MLX folder with tokenizer.json instead")
    merges = [tuple(merge.split(" ", 1)) for merge in metadata.get("tokenizer.ggml.merges", [])]
    backend = Tokenizer(models.BPE(_vocab(tokens), merges, ignore_merges=ignore_merges))
    backend.pre_tokenizer = splitter
    backend.decoder = decoders.ByteLevel()
    return backend


def _sentencepiece_bpe(tokens: list[str], metadata: dict, token_types: list[int], add_prefix: bool) -> Tokenizer:
    """SentencePiece BPE as Hugging Face's LlamaTokenizer rebuilds it: merges ranked by the score of
    the piece they produce, unknown bytes spelled as ``<0xNN>`` tokens."""
    scores = metadata.get("tokenizer.ggml.scores") or [-float(i) for i in range(len(tokens))]
    vocab = _vocab(tokens)
    find = vocab.get
    candidates = []  # (-score, left id, right id): ids, not strings, keep Gemma's 262k pieces fast to sort
    for merged, score, kind in zip(tokens, scores, token_types):
        if kind != 1:  # only normal pieces come from merges
            continue
        for cut in range(1, len(merged)):
            left = find(merged[:cut])
            if left is not None and (right := find(merged[cut:])) is not None:
                candidates.append((-score, left, right))
    merges = [(tokens[left], tokens[right]) for _, left, right in sorted(candidates)]
    unknown = metadata.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[int(unknown)] if unknown is not None else None
    backend = Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    # "first" as in transformers' LlamaTokenizer: one space before the text, none after special
    # tokens and none extra before text that already starts with a space (llama.cpp adds both).
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581",
                                                     prepend_scheme="first" if add_prefix else "never", split=False)
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if add_prefix else []))
    return backend


def _vocab(tokens: list[str]) -> dict[str, int]:
    """Token → id, keeping the first id where a file lists a token twice."""
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        vocab.setdefault(token, index)
    return vocab


def _int_list(value: Any) -> list[int]:
    return [] if value is None else [int(v) for v in value]


def _flag(metadata: dict, key: str, default: bool) -> bool:
    return bool(metadata[key]) if key in metadata else default
