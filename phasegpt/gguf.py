"""Read a llama-family GGUF file into an mlx-lm llama model, its tokenizer and an mlx-lm config.

MLX reads the tensors (Q4_0/Q4_1/Q8_0 arrive as affine-quantized weight/scales/biases triples, which
we keep quantized); this module renames them onto mlx-lm's llama modules and undoes llama.cpp's
rotary row permutation of q/k. ``phasegpt.gguf_tokenizer`` rebuilds the Hugging Face tokenizer
from the file's metadata.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models import llama
from mlx_lm.tokenizer_utils import TokenizerWrapper

from phasegpt.errors import ModelLoadError
from phasegpt.gguf_tokenizer import MISTRAL_CHAT_TEMPLATE, tokenizer_from_metadata  # noqa: F401  (re-exported)

ARCHITECTURES = ("llama", "mistral")

# GGML tensor type ids (ggml.h), for error messages. MLX keeps F32/F16 as floats and Q4_0/Q4_1/
# Q8_0 as affine triples; the rest it silently dequantizes to float16 (or, for Q4_K, reads into a
# layout nobody here has checked against llama.cpp), so those are refused before reading any data.
_GGML_TYPES = dict(enumerate(
    "F32 F16 Q4_0 Q4_1 Q4_2 Q4_3 Q5_0 Q5_1 Q8_0 Q8_1 Q2_K Q3_K Q4_K Q5_K Q6_K Q8_K IQ2_XXS IQ2_XS IQ3_XXS "
    "IQ1_S IQ4_NL IQ3_S IQ2_S IQ4_XS I8 I16 I32 I64 F64 IQ1_M BF16".split()
))
_READABLE_TYPES = {"F32", "F16", "Q4_0", "Q4_1", "Q8_0"}
# Byte sizes of GGUF metadata value types (8 = string and 9 = array are variable).
_VALUE_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_TOP_GGUF = {mlx: gguf for gguf, mlx in _TOP_NAMES.items()}
_LAYER_GGUF = {mlx: gguf for gguf, mlx in _LAYER_NAMES.items()}
_GGUF_NAME = re.compile(r"^(?:blk\.(\d+)\.)?(\w+)\.(weight|scales|biases)$")
_MLX_LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|scales|biases)$")


def load_gguf(path: str | Path) -> tuple[nn.Module, TokenizerWrapper, dict[str, Any]]:
    """Load a llama or mistral GGUF as an mlx-lm llama model, its tokenizer and its config.

    Args:
        path: The ``.gguf`` file. Tensors must be F32, F16, Q4_0, Q4_1 or Q8_0; quantized ones
            stay quantized (``nn.QuantizedLinear`` / ``nn.QuantizedEmbedding``).

    Returns:
        ``(model, tokenizer, config)``: an ``mlx_lm.models.llama.Model`` in eval mode with all
        weights evaluated, mlx-lm's ``TokenizerWrapper`` around a ``PreTrainedTokenizerFast``
        (chat template included), and the mlx-lm ``config.json``-style dict the model was built from.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ModelLoadError: The file is not a readable GGUF, describes another architecture, uses an
            unsupported quantization, or its tensors do not fit a llama model.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist; check the path.")
    architecture, tensor_types = _read_header(path)
    if architecture not in ARCHITECTURES:
        raise ModelLoadError(
            f"unsupported GGUF architecture {architecture or '(none given)'} (phasegpt reads llama and mistral) "
            f"in {path}"
        )
    bad = [(name, kind) for name, kind in tensor_types.items() if kind not in _READABLE_TYPES]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ModelLoadError(
            f"unsupported GGUF quantization {bad[0][1]} in tensor {bad[0][0]}{more} of {path}; "
            "convert the file to Q4_0/Q4_1/Q8_0/F16 or use an MLX folder"
        )
    try:
        weights, metadata = mx.load(str(path), return_metadata=True)
    except (RuntimeError, ValueError) as error:
        raise _corrupt(path, str(error)) from error

    config = _config(metadata, architecture, weights, path)
    model = _build_model(config, weights, path)
    tokenizer = tokenizer_from_metadata(metadata, path)
    return model, tokenizer, config


def _corrupt(path: Path, detail: str) -> ModelLoadError:
    return ModelLoadError(
        f"{path} is not a readable GGUF file ({detail}); it may be truncated or corrupt: "
        "download or convert it again"
    )


def _read_header(path: Path) -> tuple[str | None, dict[str, str]]:
    """Return the file's ``general.architecture`` and each tensor's GGML type name.

    MLX exposes neither the tensor types nor a cheap way to stop before reading every tensor, so
    this walks the header (metadata then tensor table) without touching the tensor data.
    """
    with path.open("rb") as file:
        if file.read(4) != b"GGUF":
            raise _corrupt(path, "no GGUF magic number at the start")
        buffer = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    pos = 4

    def take(fmt: str) -> Any:
        nonlocal pos
        value = struct.unpack_from("<" + fmt, buffer, pos)[0]
        pos += struct.calcsize("<" + fmt)
        return value

    def string() -> bytes:
        nonlocal pos
        length = take("Q")
        if pos + length > len(buffer):
            raise struct.error("string extends past the end of the file")
        pos += length
        return buffer[pos - length : pos]

    def skip_value(kind: int) -> None:
        nonlocal pos
        if kind == 8:
            string()
        elif kind == 9:
            item_kind, count = take("I"), take("Q")
            if item_kind in _VALUE_SIZES:
                pos += _VALUE_SIZES[item_kind] * count
            else:
                for _ in range(count):
                    skip_value(item_kind)
        elif kind in _VALUE_SIZES:
            pos += _VALUE_SIZES[kind]
        else:
            raise ValueError(f"unknown metadata value type {kind}")

    try:
        version = take("I")
        if version not in (2, 3):
            raise ModelLoadError(f"{path} is GGUF version {version}; phasegpt reads versions 2 and 3: "
                                 "convert it again with a current llama.cpp")
        tensor_count, kv_count = take("Q"), take("Q")
        architecture = None
        for _ in range(kv_count):
            key, kind = string(), take("I")
            if key == b"general.architecture" and kind == 8:
                architecture = string().decode("utf-8")
            else:
                skip_value(kind)
        types = {}
        for _ in range(tensor_count):
            name = string().decode("utf-8")
            dimensions = take("I")
            pos += 8 * dimensions
            kind = take("I")
            pos += 8  # the data offset
            types[name] = _GGML_TYPES.get(kind, f"GGML type {kind}")
    except (struct.error, ValueError, UnicodeDecodeError) as error:
        raise _corrupt(path, f"header unreadable: {error}") from error
    finally:
        buffer.close()
    return architecture, types


def _config(metadata: dict, arch: str, weights: dict[str, mx.array], path: Path) -> dict[str, Any]:
    """The mlx-lm ``config.json`` equivalent of the file's ``<arch>.*`` metadata."""

    def number(key: str, default: float | None = None) -> float:
        value = metadata.get(f"{arch}.{key}")
        if value is None and default is None:
            raise ModelLoadError(f"{path} lacks the metadata key {arch}.{key}; convert it again with a "
                                 "current llama.cpp")
        if value is None:
            return default
        # Shortest float32 spelling, so 1e-5 stays 1e-05 rather than 9.999999747378752e-06.
        return float(str(np.float32(value.item()))) if value.dtype == mx.float32 else value.item()

    if number("expert_count", 0):
        raise ModelLoadError(f"{path} is a mixture-of-experts model; phasegpt reads dense llama and "
                             "mistral models only")
    hidden, heads = int(number("embedding_length")), int(number("attention.head_count"))
    head_dim = int(number("attention.key_length", hidden // heads))
    if int(number("rope.dimension_count", head_dim)) != head_dim:
        raise ModelLoadError(f"{path} rotates only part of each head; mlx-lm's llama cannot run it")
    # The embedding's rows are what the model needs; some files pad them beyond the token list.
    embedding = weights.get("token_embd.weight")
    vocab = embedding.shape[0] if embedding is not None else int(number("vocab_size", 0))
    config: dict[str, Any] = {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": int(number("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(number("attention.head_count_kv", heads)),
        "intermediate_size": int(number("feed_forward_length")),
        "rms_norm_eps": number("attention.layer_norm_rms_epsilon"),
        "vocab_size": vocab or len(metadata.get("tokenizer.ggml.tokens", [])),
        "rope_theta": number("rope.freq_base", 10000.0),
        "max_position_embeddings": int(number("context_length", 4096)),
        "tie_word_embeddings": "output.weight" not in weights,
        "head_dim": head_dim,
    }
    scaling = metadata.get(f"{arch}.rope.scaling.type", "none")
    if scaling == "linear":
        config["rope_scaling"] = {"type": "linear", "factor": number("rope.scaling.factor")}
    elif scaling != "none":
        raise ModelLoadError(f"{path} uses {scaling} rope scaling, which phasegpt cannot read from GGUF; "
                             "use an MLX folder of the model instead")
    return config


def _mlx_name(name: str) -> str | None:
    """The mlx-lm llama parameter for a GGUF tensor name, or None if there is none."""
    match = _GGUF_NAME.match(name)
    if match is None:
        return None
    layer, base, kind = match.groups()
    if layer is None:
        return f"{_TOP_NAMES[base]}.{kind}" if base in _TOP_NAMES else None
    return f"model.layers.{layer}.{_LAYER_NAMES[base]}.{kind}" if base in _LAYER_NAMES else None


def _gguf_name(name: str) -> str:
    """The GGUF tensor name of an mlx-lm llama parameter (for error messages)."""
    match = _MLX_LAYER_NAME.match(name)
    if match is not None:
        layer, module, kind = match.groups()
        return f"blk.{layer}.{_LAYER_GGUF.get(module, module)}.{kind}"
    module, kind = name.rsplit(".", 1)
    return f"{_TOP_GGUF.get(module, module)}.{kind}"


def _unpermute_rows(rows: mx.array, n_heads: int) -> mx.array:
    """Undo convert_hf_to_gguf's rotary permutation of q/k rows.

    llama.cpp stores each head's rows interleaved (pairs for GPT-J style rope) where Hugging Face
    keeps them as two halves. Applying it to scales and biases as well is exact because affine
    groups run along the input dimension, so every row quantizes on its own.
    """
    out = rows.shape[0]
    grouped = rows.reshape(n_heads, out // n_heads // 2, 2, *rows.shape[1:])  # heads, half, pair, ...
    return grouped.swapaxes(1, 2).reshape(rows.shape)


def _build_model(config: dict[str, Any], gguf_weights: dict[str, mx.array], path: Path) -> nn.Module:
    """Build the llama model, quantize the modules whose tensors come quantized, load the weights."""
    weights, unexpected = {}, []
    for name, value in gguf_weights.items():
        target = _mlx_name(name)
        if target is None:
            unexpected.append(name)
            continue
        heads = {".q_proj.": config["num_attention_heads"], ".k_proj.": config["num_key_value_heads"]}
        for part, count in heads.items():
            # A row count that does not fit is left alone; the shape check below reports it.
            if part in target and value.shape[0] == count * config["head_dim"]:
                value = _unpermute_rows(value, count)
        weights[target] = value

    model = llama.Model(llama.ModelArgs.from_dict(config))
    float_shapes = {name: value.shape for name, value in tree_flatten(model.parameters())}
    modes, mismatched = {}, []
    for name in weights:
        module = name[: -len(".scales")]
        if not name.endswith(".scales") or f"{module}.weight" not in float_shapes:
            continue
        columns = float_shapes[f"{module}.weight"][-1]
        packed, groups = weights[f"{module}.weight"].shape[-1], weights[name].shape[-1]
        bits, group_size = packed * 32 // columns, columns // max(groups, 1)
        if packed * 32 != bits * columns or group_size * groups != columns or bits not in (2, 3, 4, 5, 6, 8):
            mismatched.append(_gguf_name(f"{module}.weight"))
            continue
        modes[module] = {"group_size": group_size, "bits": bits, "mode": "affine"}
    if modes:
        nn.quantize(model, class_predicate=lambda module, _: modes.get(module, False))
        # mlx-lm's config convention: the commonest setting, plus per-module entries that differ.
        common = dict(Counter(tuple(sorted(m.items())) for m in modes.values()).most_common(1)[0][0])
        config["quantization"] = {**common, **{m: mode for m, mode in sorted(modes.items()) if mode != common}}

    expected = {name: value.shape for name, value in tree_flatten(model.parameters())}
    missing = sorted(_gguf_name(name) for name in expected.keys() - weights.keys())
    unexpected = sorted(unexpected + [_gguf_name(name) for name in weights.keys() - expected.keys()])
    mismatched += sorted(
        _gguf_name(name) for name in expected.keys() & weights.keys()
        if tuple(weights[name].shape) != tuple(expected[name])
    )
    if missing or unexpected or mismatched:
        problems = [f"{label}: {', '.join(names)}" for label, names in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)) if names]
        raise ModelLoadError(f"{path} does not fit a llama model built from its own metadata ("
                             f"{'; '.join(problems)}); the file is incomplete or not a plain llama/mistral model")
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    model.eval()
    return model

