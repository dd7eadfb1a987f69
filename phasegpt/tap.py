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

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import mlx.core as mx
import mlx.nn as nn


class _Tap:
    """Calls ``layer`` and records its output (B, T, D) for the first ``budget`` positions."""

    def __init__(self, layer: nn.Module, budget: int, notify: Callable[[], None]):
        self.layer = layer
        self.budget = budget
        self.outputs: list[mx.array] = []
        self.notify = notify

    def __call__(self, x: mx.array, *args: Any, **kwargs: Any) -> Any:
        out = self.layer(x, *args, **kwargs)
        if self.budget > 0:
            h = out[0] if isinstance(out, tuple) else out
            kept = h[:, : self.budget]  # generate_step feeds the prompt in chunks: keep prompt positions only
            self.outputs.append(kept)
            self.budget -= kept.shape[1]
            if self.budget <= 0:
                self.notify()
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.layer, name)

    def hidden(self) -> mx.array:
        """The recorded hidden states, (B, T, D), chunks joined along the sequence."""
        if not self.outputs:
            raise RuntimeError("the tap recorded nothing: the model never called this layer")
        return self.outputs[0] if len(self.outputs) == 1 else mx.concatenate(self.outputs, axis=1)


class Taps:
    """The taps of one call: ``hidden()`` returns {layer index: (B, T, D)}.

    ``on_done(taps)``, if given, runs inside the forward pass as soon as every tap holds its
    whole budget: work built there (the head) is queued before anything mlx-lm schedules
    next (the first decode step), so the verdict does not wait for that step.
    """

    def __init__(self, on_done: Callable[[Taps], None] | None):
        self._taps: dict[int, _Tap] = {}
        self._on_done = on_done

    def _add(self, index: int, layer: nn.Module, budget: int) -> _Tap:
        self._taps[index] = _Tap(layer, budget, self._tap_done)
        return self._taps[index]

    def _tap_done(self) -> None:  # each tap calls this once, when its budget runs out
        if self._on_done is not None and self.done():
            self._on_done(self)

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
def tapped(model: nn.Module, layers: Sequence[int], budget: int,
           on_done: Callable[[Taps], None] | None = None) -> Iterator[Taps]:
    """Record the outputs of ``layers`` (block indices, negative from the end) for ``budget`` positions.

    Args:
        model: an mlx-lm model.
        layers: which blocks' outputs (the residual stream after them) to keep.
        budget: how many leading positions to keep (the prompt length).
        on_done: called once, inside the forward pass, when the whole budget is recorded.

    Yields:
        The taps; read them with ``hidden()`` after the forward pass.
    """
    blocks = _blocks(model)
    n = len(blocks)
    for i in layers:
        if not -n <= i < n:
            raise ValueError(f"layer {i} does not exist; the model has {n} layers (0..{n - 1})")
    taps = Taps(on_done)
    for i in sorted({i % n for i in layers}):
        blocks[i] = taps._add(i, blocks[i], budget)
    try:
        yield taps
    finally:
        for i, t in taps._taps.items():
            blocks[i] = t.layer
