"""The classifier tower: blocks K+1..K+M of the base model, run again on the tapped states.

During the model's own prefill the tap keeps the residual stream after block K. The tower
then runs copies of the next M blocks *on those states only*, with LoRA deltas that exist
only in this side pass, and the model's final norm; the head reads its output. Generation
never goes through the tower, so it is untouched, and the tower costs M blocks over the
prompt once, nothing per generated token.

The copies are new module trees whose arrays are the base's own (``share``): no weight is
duplicated in memory or on disk, and the artifact holds only the LoRA arrays and the head.
LoRA layers are mlx-lm's (``LoRALinear.from_base``), so quantized bases work as they do in
mlx-lm's own fine-tuning.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from phasegpt.tap import _blocks

# Projections LoRA may adapt, named as mlx-lm's llama-family blocks name them.
ATTENTION_KEYS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP_KEYS = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
ALL_KEYS = ATTENTION_KEYS + MLP_KEYS


@dataclass(frozen=True)
class TowerConfig:
    """Shape of a tower (stored in ``head.json`` under ``tower``)."""

    tap: int                                # block whose output the tower starts from (K)
    depth: int                              # blocks re-run (M): K+1 .. K+M
    rank: int = 8                           # LoRA rank
    scale: float = 20.0                     # LoRA scale (mlx-lm's default)
    keys: tuple[str, ...] = ALL_KEYS        # projections adapted in every tower block

    @classmethod
    def from_dict(cls, d: dict) -> TowerConfig:
        """Build from a dict, ignoring keys this version does not know."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "keys" in known:
            known["keys"] = tuple(known["keys"])
        return cls(**known)

    def check(self, num_layers: int) -> None:
        """Raise ValueError unless the tower fits a model of ``num_layers`` blocks."""
        if self.depth < 1:
            raise ValueError(f"a tower needs at least one block (depth {self.depth})")
        if self.tap < 0 or self.tap + self.depth > num_layers - 1:
            raise ValueError(f"a tower from block {self.tap} with {self.depth} blocks needs blocks "
                             f"{self.tap + 1}..{self.tap + self.depth}, but the model has blocks 0..{num_layers - 1}")
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be at least 1 (got {self.rank})")


def share(module: nn.Module) -> nn.Module:
    """A copy of ``module``'s tree that holds the very same arrays (nothing is duplicated)."""
    memo = {id(a): a for _, a in tree_flatten(module.parameters())}
    return copy.deepcopy(module, memo)


def inner_model(model: nn.Module) -> nn.Module:
    """The mlx-lm decoder inside a model (``model.model`` for the usual ``Model`` wrapper)."""
    inner = getattr(model, "model", None)
    return inner if isinstance(inner, nn.Module) and hasattr(inner, "norm") else model


class Tower(nn.Module):
    """Copies of blocks ``tap+1 .. tap+depth`` (base arrays shared, LoRA on ``keys``) and the final norm."""

    def __init__(self, model: nn.Module, config: TowerConfig):
        super().__init__()
        from mlx_lm.tuner.lora import LoRALinear

        blocks = _blocks(model)
        config.check(len(blocks))
        inner = inner_model(model)
        self.config = config
        self.window = getattr(inner, "sliding_window", None) or getattr(inner, "window_size", None)
        self.blocks = [share(b) for b in blocks[config.tap + 1: config.tap + 1 + config.depth]]
        self.norm = share(inner.norm)
        self.freeze()
        for block in self.blocks:
            for key in config.keys:
                parent, name = _parent(block, key)
                if parent is None:
                    raise ValueError(f"{type(block).__name__} has no {key}; choose tower keys among "
                                     f"{', '.join(k for k in ALL_KEYS if _parent(block, k)[0] is not None)}")
                setattr(parent, name, LoRALinear.from_base(getattr(parent, name), r=config.rank, scale=config.scale))

    def __call__(self, h: mx.array) -> mx.array:
        """(B, T, D) states after block ``tap`` -> (B, T, D) final-normed states of the tower."""
        from mlx_lm.models.base import create_attention_mask

        for block in self.blocks:
            sliding = getattr(block, "use_sliding", False) or getattr(getattr(block, "self_attn", None), "is_sliding", False)
            mask = create_attention_mask(h, None, window_size=self.window if sliding else None)
            h = block(h, mask, None)
        return self.norm(h)

    def lora_arrays(self) -> dict[str, mx.array]:
        """The LoRA arrays (the only arrays a tower adds), flat names as in ``trainable_parameters``."""
        return dict(tree_flatten(self.trainable_parameters()))


def _parent(block: nn.Module, key: str) -> tuple[nn.Module | None, str]:
    *path, name = key.split(".")
    node = block
    for part in path:
        node = getattr(node, part, None) if isinstance(node, nn.Module) else None
    if not isinstance(node, nn.Module) or not isinstance(getattr(node, name, None), (nn.Linear, nn.QuantizedLinear)):
        return None, name
    return node, name


def projection_shapes(model_config: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear layer of a llama/mistral-style block, from ``config.json`` alone.

    Raises:
        ValueError: the config lacks a size.
    """
    try:
        hidden = int(model_config["hidden_size"])
        heads = int(model_config["num_attention_heads"])
        inter = int(model_config["intermediate_size"])
    except KeyError as e:
        raise ValueError(f"model config has no {e.args[0]!r}: pass the model's config.json "
                         "(a llama/mistral-style dense model)") from None
    kv_heads = int(model_config.get("num_key_value_heads") or heads)
    head_dim = int(model_config.get("head_dim") or hidden // heads)
    return {
        "self_attn.q_proj": (hidden, heads * head_dim),
        "self_attn.k_proj": (hidden, kv_heads * head_dim),
        "self_attn.v_proj": (hidden, kv_heads * head_dim),
        "self_attn.o_proj": (heads * head_dim, hidden),
        "mlp.gate_proj": (hidden, inter),
        "mlp.up_proj": (hidden, inter),
        "mlp.down_proj": (inter, hidden),
    }


def lora_bytes(model_config: Mapping[str, Any], config: TowerConfig, *, dtype_bytes: int = 4) -> int:
    """Bytes of a tower's LoRA arrays (``rank * (in + out)`` numbers per adapted projection and block),
    from the model's ``config.json`` alone: no weights needed.

    Raises:
        ValueError: the config lacks a size, or a key is not a known projection.
    """
    shapes = projection_shapes(model_config)
    if unknown := sorted(set(config.keys) - set(shapes)):
        raise ValueError(f"unknown projection keys {unknown}; known: {sorted(shapes)}")
    config.check(int(model_config["num_hidden_layers"]))
    return config.depth * sum(config.rank * sum(shapes[k]) for k in config.keys) * dtype_bytes
