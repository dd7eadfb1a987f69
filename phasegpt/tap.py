"""Capture the residual stream of chosen layers during the model's own forward pass.

MLX has no hooks, so for the length of one call we swap each chosen block in
``model.layers`` for a thin wrapper that calls it, keeps its output for the first
``budget`` positions (the prompt), and passes every other attribute through to the
block (mlx-lm reads attributes such as ``use_sliding`` off its layers). The wrapper
never touches the block's output, so generation is bit-for-bit what it would be
without the tap; when the context exits, the original blocks are back in place.

The wrapper is a plain object, not an ``nn.Module``, so while installed it adds no
parameters and cannot end up in a saved weight file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import mlx.core as mx
import mlx.nn as nn


class _Tap:
    """Calls ``layer`` and records its output (B, T, D) for the first ``budget`` positions."""

    def __init__(self, layer: nn.Module, budget: int):
        self.layer = layer
        self.budget = budget
        self.outputs: list[mx.array] = []

    def __call__(self, x: mx.array, *args: Any, **kwargs: Any) -> Any:
        out = self.layer(x, *args, **kwargs)
        if self.budget > 0:
            h = out[0] if isinstance(out, tuple) else out
            kept = h[:, : self.budget]  # generate_step feeds the prompt in chunks: keep prompt positions only
            self.outputs.append(kept)
            self.budget -= kept.shape[1]
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.layer, name)

    def hidden(self) -> mx.array:
        """The recorded hidden states, (B, T, D), chunks joined along the sequence."""
        if not self.outputs:
            raise RuntimeError("the tap recorded nothing: the model never called this layer")
        return self.outputs[0] if len(self.outputs) == 1 else mx.concatenate(self.outputs, axis=1)


class Taps:
    """The taps of one call: ``hidden()`` returns {layer index: (B, T, D)}."""

    def __init__(self, taps: dict[int, _Tap]):
        self._taps = taps

    def done(self) -> bool:
        """True once every tap has recorded its whole budget (the prompt is consumed)."""
        return all(t.budget <= 0 for t in self._taps.values())

    def hidden(self) -> dict[int, mx.array]:
        return {i: t.hidden() for i, t in self._taps.items()}


def num_layers(model: nn.Module) -> int:
    """Number of transformer blocks mlx-lm exposes as ``model.layers``."""
    return len(_blocks(model))


def _blocks(model: nn.Module) -> list:
    blocks = getattr(model, "layers", None)
    if not isinstance(blocks, list):
        raise ValueError(f"{type(model).__name__} exposes no list of blocks as .layers; phasegpt taps mlx-lm decoder models")
    return blocks


@contextmanager
def tapped(model: nn.Module, layers: Sequence[int], budget: int) -> Iterator[Taps]:
    """Record the outputs of ``layers`` (block indices, negative from the end) for ``budget`` positions.

    Args:
        model: an mlx-lm model.
        layers: which blocks' outputs (the residual stream after them) to keep.
        budget: how many leading positions to keep (the prompt length).

    Yields:
        The taps; read them with ``hidden()`` after the forward pass.
    """
    blocks = _blocks(model)
    n = len(blocks)
    for i in layers:
        if not -n <= i < n:
            raise ValueError(f"layer {i} does not exist; the model has {n} layers (0..{n - 1})")
    taps = {i % n: _Tap(blocks[i % n], budget) for i in layers}
    for i, t in taps.items():
        blocks[i] = t
    try:
        yield Taps(taps)
    finally:
        for i, t in taps.items():
            blocks[i] = t.layer
