"""Where a batched CPU prefill spends its time: matmuls versus the rest, one versus two MLX streams.

    python benchmarks/forward_split.py                              # the BLAS thread count as set up
    OPENBLAS_NUM_THREADS=1 python benchmarks/forward_split.py       # one BLAS thread per stream

On the packaged SmolLM2 (float32), blocks 0..--depth on a random (batch, tokens, hidden) input:

1. the blocks' forward (what ``classify`` computes), with its GFLOP/s;
2. the blocks' matmuls alone (their own weights, random inputs), with their GFLOP/s (attention's
   score/value products, ~4% of the FLOPs, are not counted anywhere);
3. SwiGLU's ``silu(gate) * up`` alone, the largest elementwise cost;
4. the forward with the batch split in two halves on two MLX CPU streams (each stream is a thread),
   as set up and with the BLAS held to one thread (what ``Model.prefill`` does);
5. the matmuls alone, split the same way with one BLAS thread each: the ceiling of the split
   forward if everything but the matmuls cost nothing.

Medians of --rounds, every measurement in the same process, interleaved round by round.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (sets PHASEGPT_HOME to a temp dir and imports phasegpt before mlx)
from common import median  # noqa: E402

from phasegpt import blas  # noqa: E402

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", help="model path or repo id (default: the packaged SmolLM2 GGUF)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--depth", type=int, default=19, help="blocks to run (classify's deepest tapped layer + 1)")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    model = common.load(args.model)
    blocks = model.loaded.model.model.layers[:args.depth]
    d = int(model.loaded.config["hidden_size"])
    x = mx.random.normal((args.batch, args.tokens, d))
    linears = [(n, m.weight) for b in blocks for n, m in b.named_modules() if isinstance(m, nn.Linear)]
    flops = sum(2 * args.batch * args.tokens * w.shape[0] * w.shape[1] for _, w in linears)
    rows = mx.random.normal((args.batch * args.tokens, max(max(w.shape) for _, w in linears)))
    gate, up = mx.random.normal((2, args.batch * args.tokens, blocks[0].mlp.gate_proj.weight.shape[0]))
    mx.eval(x, rows, gate, up)
    streams = [mx.new_stream(mx.cpu), mx.new_stream(mx.cpu)]

    def forward(h):
        for b in blocks:
            h = b(h, "causal", None)
        return h

    def split(h):
        half = h.shape[0] // 2
        out = []
        for s, part in zip(streams, (h[:half], h[half:])):
            with mx.stream(s):
                out.append(forward(part))
        return out

    def matmuls_split():
        half = rows.shape[0] // 2
        out = []
        for s, part in zip(streams, (rows[:half], rows[half:])):
            with mx.stream(s):
                out.append([part[:, :w.shape[1]] @ w.T for _, w in linears])
        return [m for pair in zip(*out) for m in pair]  # ask for them alternating, as Model.prefill does

    def one_blas_thread(fn):  # what Model.prefill does around the split
        def run():
            with blas.one_thread():
                mx.eval(fn())
        return run

    tests = {
        "forward": lambda: forward(x),
        "matmuls only": lambda: [rows[:, :w.shape[1]] @ w.T for _, w in linears],
        "silu(gate) * up only": lambda: [nn.silu(gate) * up for _ in blocks],
        "forward, batch split over 2 streams": lambda: split(x),
        "forward, split, 1 BLAS thread each": one_blas_thread(lambda: split(x)),
        "matmuls only, split, 1 BLAS thread each": one_blas_thread(matmuls_split),
    }
    times: dict[str, list[float]] = {k: [] for k in tests}
    for r in range(args.rounds + 1):
        for name, fn in tests.items():
            t0 = time.perf_counter()
            mx.eval(fn())  # (the one-BLAS-thread runs evaluate inside and return None)
            if r:  # round 0 warms up
                times[name].append(time.perf_counter() - t0)
    base = median(times["forward"])
    print(f"model {model.name}, blocks 0..{args.depth - 1}, batch {args.batch} x {args.tokens} tokens, "
          f"{flops / 1e9:.1f} GFLOP per forward")
    for name, ts in times.items():
        t = median(ts)
        rate = f"{flops / t / 1e9:6.1f} GFLOP/s" if name != "silu(gate) * up only" else " " * 14
        print(f"  {name:<38} {t * 1e3:8.0f} ms  {rate}  {t / base:5.2f}x of forward")
    print(f"  sgemm (doctor): {common.sgemm():.1f} GFLOP/s; machine: {common.machine_line()}")


if __name__ == "__main__":
    main()
