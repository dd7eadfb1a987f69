"""GGML tensor types → MLX arrays, one tensor at a time, in the dtype the caller asks for.

Three kinds of GGML type:

* floats (F32, F16, BF16) load as they are, or cast;
* the legacy block quants (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) are MLX's affine format already:
  each block of 32 weights is ``scale * q + bias`` with float16 scale and bias. They are
  repacked bit for bit (no rounding) and kept quantized, or dequantized by MLX exactly as
  ``mx.load`` and mlx-lm's ``dequantize_model`` would (so SmolLM2 Q4_1 gives the same numbers
  as before phasegpt read GGUF through the ``gguf`` package);
* the K- and I-quants have no MLX counterpart. ``gguf.quants.dequantize`` (llama.cpp's own
  numpy decoder) turns them into float32; to stay quantized they are re-quantized with
  ``mx.quantize`` to the bits in ``REQUANT_BITS`` with groups of 64, whose float16 scale and
  bias cost 0.5 bit per weight, so the result is about as big as the file (Q4_K: 4.5 bits per
  weight in both). This is lossy; ``benchmarks/gguf_load.py`` measures how far it moves the logits.

Rows are independent in every GGML type (blocks run along a row), so a tensor is decoded in
chunks of rows, which bounds numpy's temporaries, and row permutations can be applied to the
raw bytes before decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

FLOATS = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
# Legacy types as MLX affine parameters: bits of q, and the offset folded into the bias
# (Q4_0 stores d * (q - 8), so bias = -8 d); None when the block stores its own minimum.
EXACT = {"Q4_0": (4, 8), "Q4_1": (4, None), "Q5_0": (5, 16), "Q5_1": (5, None), "Q8_0": (8, 128)}
EXACT_GROUP = 32
# MLX bits for the types that are re-quantized; MLX's affine format has 2, 3, 4, 5, 6 and 8 bits,
# so the 1.5-2 bit I-quants and ternary types take 2 (bigger than their file, never smaller).
REQUANT_BITS = {
    "Q2_K": 2, "Q3_K": 3, "Q4_K": 4, "Q5_K": 5, "Q6_K": 6,
    "IQ1_S": 2, "IQ1_M": 2, "IQ2_XXS": 2, "IQ2_XS": 2, "IQ2_S": 2, "TQ1_0": 2, "TQ2_0": 2,
    "IQ3_XXS": 3, "IQ3_S": 3, "IQ4_NL": 4, "IQ4_XS": 4,
}
REQUANT_GROUP = 64
READABLE = set(FLOATS) | set(EXACT) | set(REQUANT_BITS)
TARGETS = ("float32", "float16", "bfloat16", "native")
_CHUNK = 1 << 22  # elements decoded at once: numpy's temporaries stay at tens of MB


@dataclass(frozen=True)
class Plan:
    """How one tensor is held in MLX.

    Attributes:
        dtype: ``float32``, ``float16`` or ``bfloat16``, or ``affine`` (MLX quantized).
        bits: affine bits (0 for floats).
        group_size: affine group size (0 for floats).
        exact: False when the values are re-quantized (not the file's own numbers).
    """

    dtype: str
    bits: int = 0
    group_size: int = 0
    exact: bool = True

    @property
    def quantized(self) -> bool:
        return self.dtype == "affine"

    def nbytes(self, shape: tuple[int, ...]) -> int:
        """Bytes the tensor takes in MLX under this plan."""
        size = int(np.prod(shape, dtype=np.int64))
        if not self.quantized:
            return size * np.dtype(self.dtype if self.dtype != "bfloat16" else "float16").itemsize
        return size * self.bits // 8 + size // self.group_size * 4  # float16 scale and bias per group

    def describe(self) -> str:
        if not self.quantized:
            return self.dtype
        return f"{self.bits}-bit affine, groups of {self.group_size}" + ("" if self.exact else " (re-quantized)")


def plan(kind: str, shape: tuple[int, ...], target: str, *, quantizable: bool) -> Plan:
    """How a tensor of GGML type ``kind`` is loaded for ``target`` (see ``TARGETS``).

    ``native`` keeps quantized types quantized (re-quantizing those MLX cannot hold) and floats as
    stored; ``quantizable`` is False for tensors whose module cannot be quantized (norms, biases),
    which are then loaded as float32.
    """
    if target != "native":
        return Plan(target)
    if kind in FLOATS:
        return Plan(FLOATS[kind])
    if not quantizable or len(shape) != 2:
        return Plan("float32")
    if kind in EXACT:
        return Plan("affine", EXACT[kind][0], EXACT_GROUP)
    group = REQUANT_GROUP if shape[-1] % REQUANT_GROUP == 0 else EXACT_GROUP
    return Plan("affine", REQUANT_BITS[kind], group, exact=False)


def load(kind: str, data: np.ndarray, shape: tuple[int, ...], how: Plan, *,
         shift: float = 0.0) -> tuple[dict[str, mx.array], dict[str, mx.array] | None]:
    """Decode one tensor's raw data into MLX parameters.

    Args:
        kind: GGML type name (one of ``READABLE``).
        data: raw data as the reader maps it (``uint8`` rows for quantized types).
        shape: row-major shape of the values.
        how: the plan from ``plan``.
        shift: added to the values after decoding (llama.cpp stores Gemma's norms as 1 + w);
            only for tensors loaded as floats.

    Returns:
        ``(params, stored)``, both evaluated: ``params`` is ``{"weight": ...}`` plus ``"scales"``
        and ``"biases"`` when ``how`` is affine; ``stored`` is the tensor as MLX holds the file's
        own numbers (floats as stored, legacy types as their exact affine triple), which is what
        the fingerprint samples, or None for types that MLX cannot hold (K- and I-quants).
    """
    rows = data.reshape(-1, data.shape[-1]) if data.ndim > 1 else data.reshape(1, -1)
    chunks = range(0, rows.shape[0], max(1, _CHUNK // max(1, shape[-1])))
    stored: dict[str, mx.array] | None = None
    if kind in FLOATS:
        stored = {"weight": mx.array(_floats(kind, data)).astype(getattr(mx, FLOATS[kind])).reshape(shape)}
        params = {"weight": stored["weight"].astype(getattr(mx, how.dtype))}  # floats always plan a float dtype
    elif kind in EXACT:
        triples, halves = [], []
        for start in chunks:
            triple = [mx.array(a) for a in exact_affine(kind, rows[start : start + chunks.step])]
            if not how.quantized:
                # Dequantized a chunk at a time: MLX's CPU dequantize takes several times its output in
                # temporaries (2.4 GB for Gemma 3's 640 MB embedding at once). It computes in the scales'
                # float16, as mlx-lm's dequantize_model did on the arrays mx.load made of these types:
                # the numbers stay exactly what they were.
                halves.append(mx.dequantize(*triple, group_size=EXACT_GROUP, bits=EXACT[kind][0]))
                mx.eval(halves[-1])
            triples.append(triple)
        stored = {key: mx.concatenate([t[i] for t in triples]).reshape(*shape[:-1], -1)
                  for i, key in enumerate(("weight", "scales", "biases"))}
        params = stored
        if not how.quantized:
            half = mx.concatenate(halves).reshape(shape)
            mx.eval(stored, half)
            del triples, halves
            mx.clear_cache()  # hand the chunks back before the cast needs room for its output
            params = {"weight": half.astype(getattr(mx, how.dtype))}
    else:
        parts = [_requant_rows(kind, rows[start : start + chunks.step], how) for start in chunks]
        params = {key: mx.concatenate([p[key] for p in parts]).reshape(*shape[:-1], -1) for key in parts[0]}
    if shift:
        if how.quantized:
            raise ValueError("shift applies to tensors loaded as floats")
        params = {"weight": (params["weight"].astype(mx.float32) + shift).astype(params["weight"].dtype)}
        if kind in FLOATS:
            stored = {"weight": (stored["weight"].astype(mx.float32) + shift).astype(stored["weight"].dtype)}
    mx.eval(params, stored)
    return params, stored


def exact_affine(kind: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A legacy block type's rows as MLX affine ``(packed uint32, float16 scales, float16 biases)``."""
    bits, offset = EXACT[kind]
    blocks = rows.reshape(rows.shape[0], -1, GGML_QUANT_SIZES[GGMLQuantizationType[kind]][1])
    scale = _f16(blocks, 0)
    if kind == "Q8_0":
        q = (blocks[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    else:
        start = 4 if offset is None else 2  # after d (and m)
        high = None
        if bits == 5:
            high = np.ascontiguousarray(blocks[..., start : start + 4]).view(np.uint32)  # (rows, blocks, 1)
            start += 4
        nibbles = blocks[..., start : start + 16]
        q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1)  # element j, then j + 16
        if high is not None:
            q |= (((high >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8) << 4)
    bias = _f16(blocks, 2) if offset is None else scale * np.float16(-offset)
    return _pack(q.reshape(rows.shape[0], -1), bits), scale, bias


def _requant_rows(kind: str, rows: np.ndarray, how: Plan) -> dict[str, mx.array]:
    values = mx.array(dequantize(rows, GGMLQuantizationType[kind]))
    if how.quantized:
        weight, scales, biases = mx.quantize(values.astype(mx.float16), group_size=how.group_size, bits=how.bits)
        out = {"weight": weight, "scales": scales, "biases": biases}
    else:
        out = {"weight": values.astype(getattr(mx, how.dtype))}
    mx.eval(out)  # frees this chunk's float32 copy before the next is decoded
    return out


def _floats(kind: str, data: np.ndarray) -> np.ndarray:
    if kind == "BF16":  # numpy has no bfloat16: widen to float32 (exact)
        return dequantize(data, GGMLQuantizationType.BF16)
    return data


def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    """The float16 stored at byte ``at`` of every block, as ``(rows, blocks)``."""
    return np.ascontiguousarray(blocks[..., at : at + 2]).view(np.float16)[..., 0]


def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    """MLX's packing: values as a little-endian bit stream, read as uint32 words."""
    if bits == 8:
        packed = q
    elif bits == 4:
        packed = q[:, 0::2] | (q[:, 1::2] << 4)
    else:
        stream = ((q[..., None] >> np.arange(bits, dtype=np.uint8)) & 1).astype(np.uint8)
        packed = np.packbits(stream.reshape(q.shape[0], -1), axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view(np.uint32)
