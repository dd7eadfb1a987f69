"""Tiny GGUF files for the loader tests, written with the ``gguf`` package the way llama.cpp's converter does.

Weights are random and in Hugging Face / mlx-lm layout. ``write_gguf`` converts them as
``convert_hf_to_gguf`` would (tensor names, the q/k row permutation of llama and mistral, Gemma's
norms stored as ``1 + w``) and stores each in a GGML type: through ``gguf.quants.quantize`` where it
can, and as random blocks with a sane scale for the K- and I-quants it cannot produce. It returns
the weights the file decodes to (``gguf.quants.dequantize``, in Hugging Face layout), from which
``reference_model`` builds the same model the ordinary mlx-lm way (``config.json`` +
``model.safetensors`` → ``mlx_lm.utils.load_model``).

Every row of a GGML tensor is quantized on its own, so quantizing Hugging Face rows and then
permuting the raw rows gives the very bytes the converter writes; the test never needs the inverse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, GGUFWriter
from gguf.quants import dequantize, quantize

HIDDEN, FFN, HEAD_DIM = 256, 512, 64  # rows of 256 and 512: every K-quant fits
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|tool|>"]  # the last has no bos/eos/pad role
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# gguf.quants.quantize makes these; the others get random blocks (see _random_blocks).
QUANTIZABLE = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
# Byte offsets of each block's float16 scale(s), from ggml's block structs; scaling them scales
# every value of the block, which is how the random blocks get weights of a sane size.
SCALE_OFFSETS = {
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "IQ4_NL": (0,),
    "IQ4_XS": (0,), "IQ2_XXS": (0,), "IQ2_XS": (0,), "IQ2_S": (0,), "IQ3_XXS": (0,), "IQ3_S": (0,),
    "IQ1_S": (0,), "TQ1_0": (52,), "TQ2_0": (64,),
    "IQ1_M": (),  # its float16 scale is spread over the top nibbles of four uint16 at byte 48 (_random_blocks)
}
ALL_TYPES = QUANTIZABLE + tuple(SCALE_OFFSETS)

_LLAMA = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}
_QK_NORM = {"self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"}
_GEMMA = {**_LLAMA, "post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
          "post_feedforward_layernorm": "post_ffw_norm"}
_PHI3 = {"self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output", "mlp.gate_up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


@dataclass(frozen=True)
class Family:
    """One architecture as Hugging Face configures it and as llama.cpp's converter writes it."""

    arch: str
    model_type: str
    layer: dict[str, str]
    heads: int = 4
    kv_heads: int = 2
    layers: int = 2
    tied: bool = True
    permute: bool = False
    norm_plus_one: bool = False
    biases: tuple[str, ...] = ()
    config: dict = field(default_factory=dict)  # extra Hugging Face config keys
    meta: dict = field(default_factory=dict)  # extra GGUF keys, without the "<arch>." prefix


FAMILIES = {
    f.arch: f for f in (
        Family("llama", "llama", _LLAMA, permute=True, tied=False, meta={"rope.dimension_count": HEAD_DIM}),
        Family("mistral", "llama", _LLAMA, permute=True, meta={"rope.dimension_count": HEAD_DIM}),
        Family("qwen2", "qwen2", _LLAMA, biases=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
               config={"rope_theta": 1e6}, meta={"rope.freq_base": 1e6}),
        # 8 heads of 64 in a hidden size of 256: head_dim is not hidden / heads, as in real Qwen 3.
        Family("qwen3", "qwen3", {**_LLAMA, **_QK_NORM}, heads=8, config={"rope_theta": 1e6},
               meta={"rope.freq_base": 1e6, "attention.key_length": HEAD_DIM, "attention.value_length": HEAD_DIM}),
        Family("gemma2", "gemma2", _GEMMA, heads=8, norm_plus_one=True,
               config={"query_pre_attn_scalar": HEAD_DIM, "attn_logit_softcapping": 50.0,
                       "final_logit_softcapping": 30.0},
               meta={"attention.key_length": HEAD_DIM, "attention.value_length": HEAD_DIM,
                     "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, "attention.sliding_window": 4096}),
        # Six layers, so llama.cpp's fixed pattern (every 6th layer global) has both kinds, and a
        # sliding window shorter than the test prompt.
        Family("gemma3", "gemma3_text", {**_GEMMA, **_QK_NORM}, heads=8, layers=6, norm_plus_one=True,
               config={"query_pre_attn_scalar": HEAD_DIM, "sliding_window": 8, "sliding_window_pattern": 6,
                       "rope_theta": 1e6, "rope_local_base_freq": 10000.0},
               meta={"attention.key_length": HEAD_DIM, "attention.value_length": HEAD_DIM,
                     "attention.sliding_window": 8, "rope.freq_base": 1e6}),
        Family("phi3", "phi3", _PHI3, tied=False,
               config={"original_max_position_embeddings": 512},
               meta={"rope.dimension_count": HEAD_DIM, "rope.scaling.original_context_length": 512}),
    )
}


def byte_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    spelled, extra = {}, 0
    for byte in range(256):
        if byte in keep:
            spelled[byte] = chr(byte)
        else:
            spelled[byte] = chr(256 + extra)
            extra += 1
    return [spelled[b] for b in range(256)]


def byte_level_vocab() -> tuple[list[str], list[str], list[int]]:
    """Tokens, merges and llama.cpp token types (3 = control) of a tiny byte-level BPE."""
    merges = ["Ġ t", "h e", "Ġt he", "l l", "ll o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "1 2"]
    merged = [m.replace(" ", "") for m in merges]
    tokens = SPECIALS + byte_alphabet() + merged
    return tokens, merges, [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))


VOCAB = len(byte_level_vocab()[0])
PROMPT = [4 + ord(c) for c in "hello, world!"]  # byte b is token 4 + b in the tiny vocabulary


def hf_config(family: Family) -> dict:
    """The Hugging Face / mlx-lm ``config.json`` of the tiny model."""
    return {
        "model_type": family.model_type, "hidden_size": HIDDEN, "num_hidden_layers": family.layers,
        "num_attention_heads": family.heads, "num_key_value_heads": family.kv_heads, "head_dim": HEAD_DIM,
        "intermediate_size": FFN, "rms_norm_eps": 1e-6, "vocab_size": VOCAB, "rope_theta": 10000.0,
        "max_position_embeddings": 512, "tie_word_embeddings": family.tied, **family.config,
    }


def hf_weights(family: Family, *, seed: int = 0, vocab: int = VOCAB) -> dict[str, np.ndarray]:
    """Random weights under mlx-lm names, in the Hugging Face (unpermuted) row order."""
    rng = np.random.default_rng(seed)
    q, kv = family.heads * HEAD_DIM, family.kv_heads * HEAD_DIM
    shapes = {
        "self_attn.q_proj": (q, HIDDEN), "self_attn.k_proj": (kv, HIDDEN), "self_attn.v_proj": (kv, HIDDEN),
        "self_attn.qkv_proj": (q + 2 * kv, HIDDEN), "self_attn.o_proj": (HIDDEN, q),
        "mlp.gate_proj": (FFN, HIDDEN), "mlp.up_proj": (FFN, HIDDEN), "mlp.gate_up_proj": (2 * FFN, HIDDEN),
        "mlp.down_proj": (HIDDEN, FFN), "self_attn.q_norm": (HEAD_DIM,), "self_attn.k_norm": (HEAD_DIM,),
    }
    weights = {"model.embed_tokens.weight": rng.normal(0, 0.5, (vocab, HIDDEN)),
               "model.norm.weight": _norm(rng, HIDDEN, family)}
    for layer in range(family.layers):
        for module in family.layer:
            shape = shapes.get(module, (HIDDEN,))
            value = _norm(rng, shape[0], family) if len(shape) == 1 else rng.normal(0, shape[1] ** -0.5, shape)
            weights[f"model.layers.{layer}.{module}.weight"] = value
            if module in family.biases:
                weights[f"model.layers.{layer}.{module}.bias"] = rng.normal(0, 0.1, shape[:1])
    if not family.tied:
        weights["lm_head.weight"] = rng.normal(0, 0.5, (vocab, HIDDEN))
    return {name: value.astype(np.float32) for name, value in weights.items()}


def _norm(rng: np.random.Generator, size: int, family: Family) -> np.ndarray:
    # Gemma's RMSNorm scales by 1 + w, so its weights sit around 0; the others' around 1.
    return rng.normal(0, 0.1, (size,)) + (0.0 if family.norm_plus_one else 1.0)


def gguf_metadata(family: Family, *, context: int = 512) -> dict:
    """The ``<arch>.*`` and tokenizer keys llama.cpp writes for the tiny model, as plain values."""
    tokens, merges, types = byte_level_vocab()
    arch = {
        "context_length": context, "embedding_length": HIDDEN, "block_count": family.layers,
        "feed_forward_length": FFN, "attention.head_count": family.heads,
        "attention.head_count_kv": family.kv_heads, "attention.layer_norm_rms_epsilon": 1e-6,
        "rope.freq_base": 10000.0, **family.meta,
    }
    return {
        **{f"{family.arch}.{key}": value for key, value in arch.items()},
        # llama.cpp names Qwen's split "qwen2"; the tiny vocabulary tokenizes the same under either.
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2" if family.arch.startswith("qwen") else "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges, "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": False, "tokenizer.chat_template": CHAT_TEMPLATE,
    }


def write_gguf(path: Path, family: Family, weights: dict[str, np.ndarray], *, kind: str = "F32",
               kinds: dict[str, str] | None = None, meta: dict | None = None, drop: tuple[str, ...] = (),
               extra: dict[str, np.ndarray] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Write ``weights`` as llama.cpp would and return what the file decodes to, in HF layout.

    Args:
        path: the ``.gguf`` to write.
        family: the architecture.
        weights: from ``hf_weights``.
        kind: GGML type of every 2-D tensor (1-D ones are F32, as llama.cpp keeps them).
        kinds: GGUF tensor name → GGML type, overriding ``kind``.
        meta: the metadata (default ``gguf_metadata(family)``).
        drop: GGUF tensor names to leave out.
        extra: raw extra tensors (GGUF name → float32 array).
        seed: for the random K-/I-quant blocks.
    """
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(str(path), family.arch)
    for key, value in (gguf_metadata(family) if meta is None else meta).items():
        _add(writer, key, value)
    decoded = {}
    for name, value in weights.items():
        target = gguf_name(family, name)
        if target in drop:
            continue
        if value.ndim == 1:
            stored = value + 1 if family.norm_plus_one and name.endswith("norm.weight") else value
            raw, decoded[name], ggml = stored, value, "F32"
        else:
            ggml = (kinds or {}).get(target, kind)
            raw, decoded[name] = encode(value, ggml, rng)
        rows = _heads(family, name)
        if rows:
            raw = permute_like_llama_cpp(raw, rows)
        writer.add_tensor(target, raw, raw_dtype=GGMLQuantizationType[ggml])
    for name, value in (extra or {}).items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return decoded


def encode(value: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``(raw data of GGML type kind, the float32 values it decodes to)`` for a 2-D array."""
    if kind in QUANTIZABLE:
        raw = quantize(value, GGMLQuantizationType[kind])
    elif kind not in SCALE_OFFSETS:  # a type phasegpt refuses: any bytes will do
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType[kind]]
        raw = rng.integers(0, 256, size=(value.shape[0], value.shape[1] // block * size), dtype=np.uint8)
        return raw, np.full(value.shape, np.nan, np.float32)
    else:
        raw = _random_blocks(kind, value.shape, float(value.std()), rng)
    return raw, dequantize(raw, GGMLQuantizationType[kind]).reshape(value.shape).astype(np.float32)


def _random_blocks(kind: str, shape: tuple[int, ...], std: float, rng: np.random.Generator) -> np.ndarray:
    """Random blocks of ``kind`` whose values have about the given standard deviation."""
    ggml = GGMLQuantizationType[kind]
    block, size = GGML_QUANT_SIZES[ggml]
    raw = rng.integers(0, 256, size=(shape[0], shape[1] // block * size), dtype=np.uint8)
    blocks = raw.reshape(shape[0], -1, size)

    def set_scale(scale: float) -> None:
        for at in SCALE_OFFSETS[kind]:
            blocks[..., at : at + 2] = np.frombuffer(np.float16(scale).tobytes(), np.uint8)
        if kind == "IQ1_M":
            bits, scales = int(np.float16(scale).view(np.uint16)), blocks[..., 48:56].view(np.uint16)
            for i in range(4):
                scales[..., i] = (scales[..., i] & 0x0FFF) | (((bits >> (4 * i)) & 0xF) << 12)

    set_scale(1.0)
    set_scale(std / float(dequantize(raw, ggml).std()))
    return raw


def llama3_rope_factors(*, factor: float = 8.0, low: float = 1.0, high: float = 4.0, context: int = 8192,
                        base: float = 10000.0, dims: int = HEAD_DIM) -> np.ndarray:
    """The ``rope_freqs.weight`` convert_hf_to_gguf writes for a Llama 3.1+ ``rope_scaling``."""
    wavelens = 2 * np.pi * base ** (np.arange(0, dims, 2, dtype=np.float64) / dims)
    smooth = (context / wavelens - low) / (high - low)
    factors = np.where(wavelens < context / high, 1.0,
                       np.where(wavelens > context / low, factor, 1 / ((1 - smooth) / factor + smooth)))
    return factors.astype(np.float32)


def permute_like_llama_cpp(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """convert_hf_to_gguf's q/k permutation (HF halves → interleaved pairs per head), on any rows."""
    return rows.reshape(n_heads, 2, rows.shape[0] // n_heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def gguf_name(family: Family, name: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if name in top:
        return top[name]
    _, _, layer, rest = name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{family.layer[module]}.{kind}"


def _heads(family: Family, name: str) -> int:
    if not family.permute:
        return 0
    if ".self_attn.q_proj." in name:
        return family.heads
    return family.kv_heads if ".self_attn.k_proj." in name else 0


def reference_model(folder: Path, family: Family, weights: dict[str, np.ndarray]):
    """mlx-lm's own model for these weights: a ``config.json`` + ``model.safetensors`` folder, loaded
    with ``mlx_lm.utils.load_model``, with no GGUF in between."""
    from mlx_lm.utils import load_model

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config(family)))
    mx.save_safetensors(str(folder / "model.safetensors"), {k: mx.array(v) for k, v in weights.items()})
    return load_model(folder)[0]


def _add(writer: GGUFWriter, key: str, value) -> None:
    if key == "general.architecture":
        return  # GGUFWriter writes it from its arch argument
    if isinstance(value, bool):
        writer.add_key_value(key, value, GGUFValueType.BOOL)
    elif isinstance(value, int):
        writer.add_key_value(key, value, GGUFValueType.UINT32)
    elif isinstance(value, float):
        writer.add_key_value(key, value, GGUFValueType.FLOAT32)
    elif isinstance(value, str):
        writer.add_key_value(key, value, GGUFValueType.STRING)
    else:
        first = value[0]
        sub = GGUFValueType.STRING if isinstance(first, str) else \
            GGUFValueType.FLOAT32 if isinstance(first, float) else GGUFValueType.INT32
        writer.add_key_value(key, list(value), GGUFValueType.ARRAY, sub_type=sub)
