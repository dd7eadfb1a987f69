"""The GGUF architectures phasegpt reads, each onto mlx-lm's own model class.

For each: the mlx-lm ``config.json`` equivalent of the file's ``<arch>.*`` metadata, the GGUF →
mlx-lm tensor names, and what llama.cpp's converter changed that must be undone:

* llama/mistral: q/k rows permuted for llama.cpp's rotary layout (``convert_hf_to_gguf``'s
  ``LlamaModel.permute``), the other families keep Hugging Face's row order; Llama 3.1+'s rope
  scaling arrives as a ``rope_freqs`` tensor of per-frequency factors;
* gemma2/gemma3: every norm weight stored as ``1 + w`` (Gemma's RMSNorm scales by ``1 + w``, and
  so does mlx-lm's); llama.cpp's fixed Gemma 3 settings (sliding window every 6th layer global,
  local rope base 10000) and its attention scale (``hidden / heads`` for the 27B models,
  ``head_dim`` otherwise) are filled in;
* phi3: fused ``attn_qkv`` and ``ffn_up`` (gate then up) map onto mlx-lm's fused projections,
  and long-rope factors arrive as tensors rather than metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from phasegpt.errors import ModelLoadError
from phasegpt.gguf.reader import REINSTALL, GGUFFile

TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LLAMA_LAYER = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}
_QK_NORMS = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
_GEMMA_LAYER = {
    **_LLAMA_LAYER, "post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_PHI3_LAYER = {
    "attn_qkv": "self_attn.qkv_proj", "attn_output": "self_attn.o_proj", "ffn_up": "mlp.gate_up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


class Metadata:
    """``<arch>.*`` keys of one file, with the error that names a missing key."""

    def __init__(self, file: GGUFFile, arch: str):
        self.file, self.arch = file, arch

    def __call__(self, key: str, default: Any = ...) -> Any:
        value = self.file.metadata.get(f"{self.arch}.{key}")
        if value is None and default is ...:
            raise ModelLoadError(f"{self.file.path} lacks the metadata key {self.arch}.{key}; convert it again "
                                 "with a current llama.cpp")
        return default if value is None else value

    def tie(self) -> bool:
        return self.file.tensor("output.weight") is None


@dataclass(frozen=True)
class Architecture:
    """How one GGUF architecture becomes an mlx-lm model.

    Attributes:
        names: the GGUF architecture names (``general.architecture``) this covers.
        model_type: mlx-lm's module under ``mlx_lm.models``.
        layer: GGUF per-block tensor base name → mlx-lm module path inside the block.
        config: builds the mlx-lm config dict from the file.
        permute_qk: q/k rows are in llama.cpp's rotary order and must be put back.
        norm_shift: added to every norm weight after decoding.
        consumed: tensors that feed the config rather than the model.
    """

    names: tuple[str, ...]
    model_type: str
    layer: dict[str, str]
    config: Callable[[Metadata], dict[str, Any]]
    permute_qk: bool = False
    norm_shift: float = 0.0
    consumed: tuple[str, ...] = field(default=())

    def mlx_name(self, name: str) -> str | None:
        """The mlx-lm parameter for a GGUF tensor name (``.weight``/``.bias``), or None."""
        base, _, kind = name.rpartition(".")
        if kind not in ("weight", "bias"):
            return None
        if base in TOP:
            return f"{TOP[base]}.{kind}"
        parts = base.split(".")
        if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in self.layer:
            return f"model.layers.{parts[1]}.{self.layer[parts[2]]}.{kind}"
        return None


def _core(m: Metadata, model_type: str) -> dict[str, Any]:
    """The keys every architecture shares (exactly those phasegpt's llama config always had)."""
    if m("expert_count", 0):
        raise ModelLoadError(f"{m.file.path} is a mixture-of-experts model; phasegpt reads dense models only")
    hidden, heads = int(m("embedding_length")), int(m("attention.head_count"))
    head_dim = int(m("attention.key_length", hidden // heads))
    # The embedding's rows are what the model needs; some files pad them beyond the token list.
    embedding = m.file.tensor("token_embd.weight")
    vocab = embedding.shape[0] if embedding is not None else int(m("vocab_size", 0))
    return {
        "model_type": model_type,
        "hidden_size": hidden,
        "num_hidden_layers": int(m("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(m("attention.head_count_kv", heads)),
        "intermediate_size": int(m("feed_forward_length")),
        "rms_norm_eps": m("attention.layer_norm_rms_epsilon"),
        "vocab_size": vocab or len(m.file.metadata.get("tokenizer.ggml.tokens", [])),
        "rope_theta": float(m("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(m("context_length", 4096)),
        "tie_word_embeddings": m.tie(),
        "head_dim": head_dim,
    }


def _full_rotary(m: Metadata, config: dict[str, Any]) -> None:
    if int(m("rope.dimension_count", config["head_dim"])) != config["head_dim"]:
        raise ModelLoadError(f"{m.file.path} rotates only part of each head; mlx-lm's {config['model_type']} "
                             "cannot run it")


def _head_dim_from_hidden(m: Metadata, config: dict[str, Any]) -> None:
    """mlx-lm's qwen2 and phi3 take the head size as hidden / heads."""
    if config["head_dim"] * config["num_attention_heads"] != config["hidden_size"]:
        raise ModelLoadError(f"{m.file.path} has heads of {config['head_dim']} (not hidden / heads), which "
                             f"mlx-lm's {config['model_type']} cannot run; use an MLX folder of the model instead")


def _rope_scaling(m: Metadata, config: dict[str, Any], allowed: tuple[str, ...] = ("linear",)) -> None:
    kind = m("rope.scaling.type", "none")
    if kind == "none":
        return
    if kind not in allowed:
        raise ModelLoadError(f"{m.file.path} uses {kind} rope scaling, which phasegpt cannot read from GGUF for "
                             f"{m.arch}; use an MLX folder of the model instead")
    config["rope_scaling"] = {"type": kind, "rope_type": kind, "factor": float(m("rope.scaling.factor"))}
    if kind == "yarn":
        config["rope_scaling"]["original_max_position_embeddings"] = int(m("rope.scaling.original_context_length"))
    if kind == "linear":  # phasegpt's llama config always had just these two keys
        del config["rope_scaling"]["rope_type"]


def _llama(m: Metadata) -> dict[str, Any]:
    config = _core(m, "llama")
    _full_rotary(m, config)
    _rope_scaling(m, config)
    freqs = m.file.tensor("rope_freqs.weight")
    if freqs is not None:
        config["rope_scaling"] = _llama3_rope(m, config, np.asarray(freqs.data, dtype=np.float32).reshape(-1))
    return config


def _llama3_rope(m: Metadata, config: dict[str, Any], factors: np.ndarray) -> dict[str, Any]:
    """Llama 3.1+'s rope scaling, which llama.cpp's converter stores as one factor per frequency.

    The file keeps only the factors, not the settings that made them; every Llama 3.x release so
    far used low/high frequency factors 1 and 4 over an 8192-token original context, with the
    largest factor as ``factor``. Those settings are checked by rebuilding the factors with
    mlx-lm's own ``Llama3RoPE``.
    """
    from mlx_lm.models.rope_utils import Llama3RoPE

    dims, base = config["head_dim"], config["rope_theta"]
    scaling = {"rope_type": "llama3", "factor": float(factors.max()), "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    if factors.size == dims // 2:
        rope = Llama3RoPE(dims, config["max_position_embeddings"], base=base, scaling_config=scaling)
        rebuilt = np.array(rope._freqs) / base ** (np.arange(0, dims, 2) / dims)
        if np.allclose(rebuilt, factors, rtol=1e-4):
            return scaling
    raise ModelLoadError(f"{m.file.path} scales its rope by per-frequency factors (rope_freqs.weight) that are not "
                         "Llama 3's; use an MLX folder of the model instead")


def _qwen2(m: Metadata) -> dict[str, Any]:
    config = _core(m, "qwen2")
    _full_rotary(m, config)
    _head_dim_from_hidden(m, config)
    _rope_scaling(m, config, ("linear", "yarn"))
    return config


def _qwen3(m: Metadata) -> dict[str, Any]:
    config = _core(m, "qwen3")
    _full_rotary(m, config)
    _rope_scaling(m, config, ("linear", "yarn"))
    return config


def _attention_scalar(m: Metadata, config: dict[str, Any], layers_27b: int) -> int:
    """llama.cpp's Gemma attention scale: by hidden / heads for the 27B models, by head_dim otherwise
    (an int, as in Hugging Face's config, whose class refuses a float there)."""
    if config["num_hidden_layers"] == layers_27b:
        return config["hidden_size"] // config["num_attention_heads"]
    return config["head_dim"]


def _gemma2(m: Metadata) -> dict[str, Any]:
    config = _core(m, "gemma2")
    _full_rotary(m, config)
    _no_output(m)
    config["query_pre_attn_scalar"] = _attention_scalar(m, config, 46)
    config["attn_logit_softcapping"] = float(m("attn_logit_softcapping", 50.0))
    config["final_logit_softcapping"] = float(m("final_logit_softcapping", 30.0))
    return config


def _gemma3(m: Metadata) -> dict[str, Any]:
    config = _core(m, "gemma3_text")
    _full_rotary(m, config)
    _rope_scaling(m, config)
    config["query_pre_attn_scalar"] = _attention_scalar(m, config, 62)
    config["sliding_window"] = int(m("attention.sliding_window"))
    config["sliding_window_pattern"] = 6
    config["rope_local_base_freq"] = float(m("rope.freq_base_swa", 10000.0))
    return config


def _phi3(m: Metadata) -> dict[str, Any]:
    config = _core(m, "phi3")
    _head_dim_from_hidden(m, config)
    config["partial_rotary_factor"] = int(m("rope.dimension_count", config["head_dim"])) / config["head_dim"]
    config["original_max_position_embeddings"] = int(m("rope.scaling.original_context_length",
                                                       config["max_position_embeddings"]))
    long, short = m.file.tensor("rope_factors_long.weight"), m.file.tensor("rope_factors_short.weight")
    if long is not None and short is not None:
        config["rope_scaling"] = {"type": "longrope", "long_factor": _floats(long), "short_factor": _floats(short)}
    elif m("rope.scaling.type", "none") not in ("none", "longrope"):
        _rope_scaling(m, config)
    return config


def _no_output(m: Metadata) -> None:
    if not m.tie():
        raise ModelLoadError(f"{m.file.path} has an output.weight, but mlx-lm's {m.arch} always ties it to the "
                             f"embedding: {REINSTALL}")


def _floats(tensor: Any) -> list[float]:
    return [float(str(v)) for v in np.asarray(tensor.data, dtype=np.float32).reshape(-1)]


ARCHITECTURES = (
    Architecture(("llama", "mistral"), "llama", _LLAMA_LAYER, _llama, permute_qk=True,
                 consumed=("rope_freqs.weight",)),
    Architecture(("qwen2",), "qwen2", _LLAMA_LAYER, _qwen2),
    Architecture(("qwen3",), "qwen3", {**_LLAMA_LAYER, **_QK_NORMS}, _qwen3),
    Architecture(("gemma2",), "gemma2", _GEMMA_LAYER, _gemma2, norm_shift=-1.0),
    Architecture(("gemma3",), "gemma3_text", {**_GEMMA_LAYER, **_QK_NORMS}, _gemma3, norm_shift=-1.0),
    Architecture(("phi3",), "phi3", _PHI3_LAYER, _phi3,
                 consumed=("rope_factors_long.weight", "rope_factors_short.weight")),
)
NAMES = tuple(name for arch in ARCHITECTURES for name in arch.names)


def architecture(file: GGUFFile) -> Architecture:
    """The mapping for the file's ``general.architecture``.

    Raises:
        ModelLoadError: an architecture phasegpt does not map (the message lists those it does).
    """
    name = file.architecture
    for arch in ARCHITECTURES:
        if name in arch.names:
            return arch
    raise ModelLoadError(
        f"unsupported GGUF architecture {name or '(none given)'} in {file.path} (phasegpt reads "
        f"{', '.join(NAMES)}); use an MLX folder of the model instead (`mlx_lm.convert`)"
    )
