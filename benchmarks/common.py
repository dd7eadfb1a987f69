"""Helpers shared by the tap and train benchmarks: model set-up, FLOP accounting, synthetic prompts, tables.

Every benchmark here runs on a shared, noisy 2-core machine, so each script interleaves the
things it compares (A B, B A, A B, ... rounds) and reports medians and ratios; this module only
holds what both scripts need.

FLOP accounting: a transformer block costs ``2 * params_in_block`` FLOPs per token that goes
through it (one multiply-add per weight). Attention scores (``4 * T * D`` per token per block)
are left out: for prompts under ~200 tokens they add under 3%, so the GFLOP/s quoted are a
slight underestimate. Embedding lookups cost nothing; the LM head (tied to the embedding in
SmolLM2) is counted only where logits are actually computed.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# A benchmark must never write into the user's real PHASEGPT_HOME (audit log, feature cache).
os.environ["PHASEGPT_HOME"] = tempfile.mkdtemp(prefix="phasegpt-bench-")

import phasegpt  # noqa: E402  (first: it picks the BLAS before mlx loads)
import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from phasegpt.head import Head, HeadConfig  # noqa: E402


def load(path: str | None) -> phasegpt.Model:
    """The model at ``path`` (default: the packaged SmolLM2 GGUF), without a head, as ``phasegpt.load`` loads it."""
    from phasegpt.hub import smollm2_gguf

    return phasegpt.load(path or smollm2_gguf())


def random_head(model: phasegpt.Model, out: Path, *, layers: Sequence[int], pooling: str = "last+mean",
                seed: int = 0) -> Path:
    """Save a linear head with random weights that fits ``model``; speed does not depend on the weights."""
    mx.random.seed(seed)
    d = int(model.loaded.config["hidden_size"])
    f = d * len(layers) * len(pooling.split("+"))
    params = {"mean": mx.random.normal((f,)) * 0.1, "std": mx.ones((f,)) * 2.0,
              "w": mx.random.normal((f, 4)) * 0.3, "b": mx.zeros((4,))}
    loaded = model.loaded
    config = HeadConfig(layers=tuple(layers), pooling=pooling, base_model=loaded.name,
                        base_fingerprint=loaded.fingerprint, adapter_sha256=loaded.adapter_sha256,
                        hidden_size=d)
    return Head(config, params).save(out)


def block_params(model: phasegpt.Model) -> list[int]:
    """Weights per transformer block (index = layer), counted as stored (float32 after load)."""
    return [sum(v.size for _, v in tree_flatten(block.parameters())) for block in model.loaded.model.layers]


def lm_head_params(model: phasegpt.Model) -> int:
    """Weights of the output projection (the tied embedding when there is no separate lm_head)."""
    net = model.loaded.model
    head = getattr(net, "lm_head", None)
    if head is not None:
        return sum(v.size for _, v in tree_flatten(head.parameters()))
    return int(net.model.embed_tokens.weight.size)


def flops_through(model: phasegpt.Model, deepest: int, tokens: int) -> float:
    """FLOPs for ``tokens`` positions through blocks ``0..deepest`` (what a lazy tapped pass computes)."""
    return 2.0 * sum(block_params(model)[: deepest + 1]) * tokens


def padded_tokens(model: phasegpt.Model, lengths: Sequence[int], batch_size: int) -> int:
    """Positions computed when classify (or extraction) runs prompts of ``lengths``: rounds of
    ``Model.rounds``, each split over the CPU streams as ``Model.prefill`` does, each part
    right-padded to its longest prompt."""
    from phasegpt.api import cpu_streams, split_batch

    return sum(len(part) * max(part) for idx in model.rounds(lengths, batch_size)
               for part in split_batch(sorted(lengths[i] for i in idx), cpu_streams()))


def sgemm() -> float:
    """fp32 1024^3 matmul GFLOP/s now (phasegpt.doctor's measurement; ~0.2 s)."""
    from phasegpt.doctor import measure_sgemm

    return measure_sgemm(n=1024, reps=5)


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: Sequence[float]) -> str:
    """``min-max`` of a sample, to show how noisy the machine was."""
    return f"{min(xs):.3g}-{max(xs):.3g}"


def order(round_index: int, items: Sequence) -> list:
    """Items in forward order on even rounds and reversed on odd ones, so slow drift hits all alike."""
    return list(items) if round_index % 2 == 0 else list(reversed(items))


def machine_line() -> str:
    """One line naming the machine, BLAS, MLX and the load average (from phasegpt.doctor)."""
    from phasegpt import blas
    from phasegpt.doctor import cpu_model

    load1, load5, _ = os.getloadavg()
    return (f"{cpu_model()}, {os.cpu_count()} cores, MLX {mx.__version__}, BLAS {blas.active().name}, "
            f"load average {load1:.2f} / {load5:.2f} (1 / 5 min) at {time.strftime('%Y-%m-%d %H:%M')}")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table; columns after the first are right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def verdict_mark(ok: bool) -> str:
    return "pass" if ok else "**miss**"


# --- synthetic prompts ---------------------------------------------------------------------
# Made-up requests with a realistic length spread (median ~14 words, 90th percentile ~45,
# ~10% with a retrieved document of 60-300 words): self-contained, no borrowed text.
_OPENERS = ["How do I", "Can you explain how to", "What is the best way to", "Why does", "Tell me how to",
            "Is it safe to", "What happens if I", "Could you help me", "Explain why", "Who decided to"]
_VERBS = ["repair", "measure", "store", "clean", "build", "compare", "plan", "paint", "move", "check",
          "heat", "cool", "sort", "label", "translate", "schedule", "count", "replace", "test", "open"]
_NOUNS = ["the garden shed", "a wooden table", "my bicycle chain", "the kitchen sink", "a spreadsheet",
          "the quarterly report", "an old radio", "the water heater", "a paper kite", "the office printer",
          "a sourdough starter", "the town library", "a fishing boat", "my laptop battery", "the bird feeder",
          "a wool sweater", "the train timetable", "a stone wall", "the school budget", "a jar of honey"]
_FILLER = ["before", "after", "during", "without", "with", "because of", "instead of", "near", "under", "for"]
_TIMES = ["the winter", "a long weekend", "the move", "the storm", "next year", "the holidays",
          "a tight deadline", "the inspection", "the first frost", "the meeting"]


def synthetic_prompts(n: int, *, seed: int = 0) -> list[tuple[str, str | None]]:
    """``n`` distinct (prompt, context-or-None) pairs of realistic lengths, deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, str | None]] = []
    seen: set[tuple[str, str | None]] = set()
    while len(out) < n:  # distinct pairs: feature extraction deduplicates by text
        words = int(np.clip(rng.lognormal(np.log(14), 0.95), 4, 180))
        parts = [str(rng.choice(_OPENERS)), str(rng.choice(_VERBS)), str(rng.choice(_NOUNS))]
        while sum(len(p.split()) for p in parts) < words:
            parts += [str(rng.choice(_FILLER)), str(rng.choice(_TIMES)), "and", str(rng.choice(_VERBS)),
                      str(rng.choice(_NOUNS))]
        prompt = " ".join(" ".join(parts).split()[:words]) + "?"
        context = None
        if rng.random() < 0.1:
            k = int(rng.integers(60, 300))
            doc = " ".join(str(rng.choice(_NOUNS + _TIMES + _VERBS)) for _ in range(k // 2))
            context = " ".join(doc.split()[:k]) + "."
        if (prompt, context) not in seen:
            seen.add((prompt, context))
            out.append((prompt, context))
    return out
