"""Tiny llama GGUF files for the loader tests: random weights, a small byte-level BPE vocabulary.

Float files are written with ``mx.save_gguf``; ``write_raw_gguf`` writes the format by hand for
tensor types MLX cannot save (Q8_0, or a K-quant the loader must refuse).
"""

from __future__ import annotations

import struct
from pathlib import Path

import mlx.core as mx
import numpy as np

CONFIG = {
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "intermediate_size": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "head_dim": 16,
}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|tool|>"]  # the last has no bos/eos/pad role
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# HF name pieces → GGUF name pieces, as convert_hf_to_gguf renames them.
LAYER_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
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


def hf_weights(vocab_size: int, *, tied: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights under mlx-lm/Hugging Face llama names, in the HF (unpermuted) row order."""
    c, rng = CONFIG, np.random.default_rng(seed)
    h, f, d = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    shapes = {
        "self_attn.q_proj": (c["num_attention_heads"] * d, h), "self_attn.k_proj": (c["num_key_value_heads"] * d, h),
        "self_attn.v_proj": (c["num_key_value_heads"] * d, h), "self_attn.o_proj": (h, c["num_attention_heads"] * d),
        "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h), "mlp.down_proj": (h, f),
        "input_layernorm": (h,), "post_attention_layernorm": (h,),
    }
    weights = {"model.embed_tokens.weight": rng.normal(0, 0.5, (vocab_size, h)),
               "model.norm.weight": 1 + rng.normal(0, 0.1, (h,))}
    for layer in range(c["num_hidden_layers"]):
        for name, shape in shapes.items():
            scale = 0.1 if len(shape) == 1 else 1 / np.sqrt(shape[1])
            value = rng.normal(0, scale, shape) + (1 if len(shape) == 1 else 0)
            weights[f"model.layers.{layer}.{name}.weight"] = value
    if not tied:
        weights["lm_head.weight"] = rng.normal(0, 0.5, (vocab_size, h))
    return {name: value.astype(np.float32) for name, value in weights.items()}


def permute_like_llama_cpp(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """convert_hf_to_gguf's q/k permutation (HF halves → interleaved pairs per head)."""
    return rows.reshape(n_heads, 2, rows.shape[0] // n_heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def gguf_tensors(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF-named weights → GGUF-named tensors, with q/k rows permuted as llama.cpp stores them."""
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    out = {}
    for name, value in weights.items():
        if name in top:
            out[top[name]] = value
            continue
        _, _, layer, rest = name.split(".", 3)
        module = rest.rsplit(".", 1)[0]
        if module == "self_attn.q_proj":
            value = permute_like_llama_cpp(value, CONFIG["num_attention_heads"])
        elif module == "self_attn.k_proj":
            value = permute_like_llama_cpp(value, CONFIG["num_key_value_heads"])
        out[f"blk.{layer}.{LAYER_NAMES[module]}.weight"] = value
    return out


def metadata(*, architecture: str = "llama") -> dict:
    """llama.cpp-style metadata for CONFIG and the byte-level vocabulary, as plain Python values."""
    c = CONFIG
    tokens, merges, types = byte_level_vocab()
    return {
        "general.architecture": architecture,
        f"{architecture}.embedding_length": c["hidden_size"],
        f"{architecture}.block_count": c["num_hidden_layers"],
        f"{architecture}.attention.head_count": c["num_attention_heads"],
        f"{architecture}.attention.head_count_kv": c["num_key_value_heads"],
        f"{architecture}.feed_forward_length": c["intermediate_size"],
        f"{architecture}.attention.layer_norm_rms_epsilon": c["rms_norm_eps"],
        f"{architecture}.rope.freq_base": c["rope_theta"],
        f"{architecture}.rope.dimension_count": c["head_dim"],
        f"{architecture}.context_length": 256,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": CHAT_TEMPLATE,
    }


def save_float_gguf(path: Path, tensors: dict[str, np.ndarray], meta: dict) -> Path:
    """Write with ``mx.save_gguf`` (float tensors only)."""
    def mx_value(value):
        if isinstance(value, bool):
            return mx.array(value)
        if isinstance(value, int):
            return mx.array(value, dtype=mx.uint32)
        if isinstance(value, float):
            return mx.array(value, dtype=mx.float32)
        if isinstance(value, list) and value and isinstance(value[0], int):
            return mx.array(value, dtype=mx.int32)
        if isinstance(value, list) and value and isinstance(value[0], float):
            return mx.array(value, dtype=mx.float32)
        return value

    mx.save_gguf(str(path), {k: mx.array(v) for k, v in tensors.items()}, {k: mx_value(v) for k, v in meta.items()})
    return path


def quantize_q8_0(rows: np.ndarray) -> tuple[bytes, np.ndarray]:
    """llama.cpp's Q8_0 blocks (f16 scale + 32 int8) for a 2-D array, and the values they decode to."""
    blocks = rows.reshape(-1, 32)
    scale = (np.abs(blocks).max(axis=1, keepdims=True) / 127).astype(np.float16)
    safe = np.where(scale == 0, 1, scale).astype(np.float32)
    quants = np.clip(np.round(blocks / safe), -127, 127).astype(np.int8)
    raw = b"".join(s.tobytes() + q.tobytes() for s, q in zip(scale, quants))
    return raw, (quants * scale.astype(np.float32)).reshape(rows.shape)


GGML_F32, GGML_Q8_0, GGML_Q4_K = 0, 8, 12


def write_raw_gguf(path: Path, tensors: dict[str, tuple[int, tuple[int, ...], bytes]], meta: dict) -> Path:
    """Write GGUF v3 by hand: ``tensors`` maps a name to (GGML type id, shape in row-major order, raw data)."""
    def string(text: str) -> bytes:
        data = text.encode("utf-8")
        return struct.pack("<Q", len(data)) + data

    def value(item) -> tuple[int, bytes]:
        if isinstance(item, bool):
            return 7, struct.pack("<?", item)
        if isinstance(item, int):
            return 4, struct.pack("<I", item)
        if isinstance(item, float):
            return 6, struct.pack("<f", item)
        if isinstance(item, str):
            return 8, string(item)
        kinds_and_data = [value(x) for x in item]
        kind = 5 if kinds_and_data[0][0] == 4 else kinds_and_data[0][0]  # arrays of ints are int32
        body = b"".join(struct.pack("<i", x) if kind == 5 else data for x, (_, data) in zip(item, kinds_and_data))
        return 9, struct.pack("<IQ", kind, len(item)) + body

    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta))
    for key, item in meta.items():
        kind, data = value(item)
        header += string(key) + struct.pack("<I", kind) + data
    offset, blobs = 0, b""
    for name, (kind, shape, data) in tensors.items():
        header += string(name) + struct.pack("<I", len(shape)) + struct.pack(f"<{len(shape)}Q", *reversed(shape))
        header += struct.pack("<IQ", kind, offset)
        padded = data + b"\0" * (-len(data) % 32)
        blobs += padded
        offset += len(padded)
    path.write_bytes(header + b"\0" * (-len(header) % 32) + blobs)
    return path
