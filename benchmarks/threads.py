"""How a Model is made safe for many threads, and what it costs: the designs measured side by side.

    python benchmarks/threads.py                 # SmolLM2, ~6 min on 2 busy cores
    python benchmarks/threads.py --rounds 2 --design-runs 2   # quick look

1. **Single caller** (interleaved rounds): every call through phasegpt's MLX worker thread (what
   ``Model`` does now) versus the same calls run inline in the calling thread (what it did before
   issue #14): classify of 1 and of 16 prompts, stream time to verdict and decode tokens/s.
2. **Four callers**: 4 threads x mixed calls (classify, generate, stream) on one Model, against
   the same calls one after another; and how long a classify call waits while three other
   threads stream, with the worker's token-by-token interleaving versus a lock held for each
   whole call.
3. **Per-thread streams** (the design rejected): subprocesses where threads run MLX work inline
   (streams per thread, head evaluated up front), against the same with the worker: four threads
   generating at once (does the process survive?), OS threads left behind by five short-lived
   threads, and aborts at exit over ``--design-runs`` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (sets PHASEGPT_HOME to a temp dir and imports phasegpt before mlx)
from common import median, order, spread, table, verdict_mark  # noqa: E402

import phasegpt  # noqa: E402
import phasegpt.api as api  # noqa: E402
from phasegpt.head import Head  # noqa: E402

STORY = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."
TARGET_SINGLE = 0.97  # worker / inline speed of a single caller: "unchanged", within noise


class Inline:
    """Runs "worker" calls in the calling thread: the Model as it was before issue #14."""

    def run(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    def iterate(self, gen):
        return gen


def with_worker(worker, fn, *args, **kwargs):
    """``fn`` with ``phasegpt.api`` routed through ``worker`` (the real one, or Inline)."""
    saved, api.WORKER = api.WORKER, worker
    try:
        return fn(*args, **kwargs)
    finally:
        api.WORKER = saved


def timed(fn, *args, **kwargs) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def stream_times(model, prompt: str, max_tokens: int) -> tuple[float, float]:
    """(seconds to the verdict chunk, decode tokens/s after the first token)."""
    t0 = time.perf_counter()
    first, stamps = None, []
    for chunk in model.stream(prompt, max_tokens=max_tokens):
        now = time.perf_counter()
        if chunk.token is None:
            first = now - t0
        else:
            stamps.append(now)
    return first, (len(stamps) - 1) / (stamps[-1] - stamps[0])


def single_caller(model, prompts, rounds: int, max_tokens: int) -> tuple[list[list[str]], bool]:
    arms = {"worker": api.WORKER, "inline": Inline()}
    runs: dict[tuple[str, str], list[float]] = {}
    texts: dict[str, list[str]] = {}
    for name, w in arms.items():  # warm-up
        with_worker(w, model.classify, prompts[:16])
        with_worker(w, stream_times, model, STORY, 4)
    for r in range(rounds):
        for name in order(r, list(arms)):
            w = arms[name]
            runs.setdefault(("classify 1", name), []).append(with_worker(w, timed, model.classify, prompts[:1]))
            runs.setdefault(("classify 16", name), []).append(
                with_worker(w, timed, model.classify, prompts[:16], batch_size=16))
            first, tps = with_worker(w, stream_times, model, STORY, max_tokens)
            runs.setdefault(("verdict", name), []).append(first)
            runs.setdefault(("decode", name), []).append(tps)
            texts.setdefault(name, []).append(with_worker(w, model.generate, STORY, max_tokens=16).text)
        print(f"  single-caller round {r + 1}/{rounds}: decode worker {runs['decode', 'worker'][-1]:.1f} "
              f"vs inline {runs['decode', 'inline'][-1]:.1f} tok/s", flush=True)
    rows = []
    for what, unit, faster_is_less in [("classify 1", "ms", True), ("classify 16", "ms", True),
                                       ("verdict", "ms", True), ("decode", "tok/s", False)]:
        w, i = runs[what, "worker"], runs[what, "inline"]
        # speed ratio per interleaved pair (>1: the worker is faster), then the median
        ratio = median([(b / a) if faster_is_less else (a / b) for a, b in zip(w, i)])
        scale = 1e3 if unit == "ms" else 1.0
        label = {"classify 1": "classify, 1 prompt", "classify 16": "classify, 16 prompts (batch 16)",
                 "verdict": "stream: time to verdict", "decode": f"stream: decode ({max_tokens} tokens)"}[what]
        rows.append([f"{label}, {unit}", f"{scale * median(i):.1f}", f"{scale * median(w):.1f}",
                     f"{ratio:.3f}×", f"≥ {TARGET_SINGLE}×", verdict_mark(ratio >= TARGET_SINGLE)])
    same = all(a == b for a, b in zip(texts["worker"], texts["inline"]))
    return rows, same


def four_callers(model, prompts, max_tokens: int) -> list[list[str]]:
    calls = []
    for i in range(24):  # mixed: a third each classify (4 prompts), generate, stream
        kind = ("classify", "generate", "stream")[i % 3]
        calls.append((kind, i))

    def do(kind, i):
        if kind == "classify":
            return model.classify(prompts[4 * i:4 * i + 4])
        if kind == "generate":
            return model.generate(prompts[i][0] if isinstance(prompts[i], tuple) else prompts[i],
                                  max_tokens=max_tokens).text
        return "".join(c.text for c in model.stream(STORY, max_tokens=max_tokens))

    t_serial = timed(lambda: [do(k, i) for k, i in calls])
    barrier = threading.Barrier(4)

    def client(part):
        barrier.wait()
        for k, i in part:
            do(k, i)

    threads = [threading.Thread(target=client, args=(calls[t::4],)) for t in range(4)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t_threads = time.perf_counter() - t0

    # a classify call made while three threads stream: token-by-token worker vs a lock per whole call
    waits = {}
    for arm in ("worker", "whole-call lock"):
        lock = threading.Lock() if arm != "worker" else contextlib.nullcontext()
        decoding = threading.Semaphore(0)

        def streamer():
            with lock:
                for n, _ in enumerate(model.stream(STORY, max_tokens=4 * max_tokens)):
                    if n == 2:  # past the prefill: decoding
                        decoding.release()

        ts = [threading.Thread(target=streamer) for _ in range(3)]
        for t in ts:
            t.start()
        decoding.acquire()  # with the lock only one stream runs at a time; with the worker, all three
        if arm == "worker":
            decoding.acquire(), decoding.acquire()
        t0 = time.perf_counter()
        with lock:
            model.classify(prompts[:1])
        waits[arm] = time.perf_counter() - t0
        for t in ts:
            t.join()
    alone = median([timed(model.classify, prompts[:1]) for _ in range(3)])
    return [
        [f"24 mixed calls (8 classify x 4 prompts, 8 generate, 8 stream of {max_tokens} tokens), s",
         f"{t_serial:.2f} (one thread)", f"{t_threads:.2f} (4 threads)", f"{t_serial / t_threads:.2f}×"],
        ["a classify call while 3 threads stream, s (alone: " + f"{alone:.2f})",
         f"{waits['whole-call lock']:.2f} (lock per call)", f"{waits['worker']:.2f} (worker)",
         f"{waits['whole-call lock'] / waits['worker']:.1f}× sooner"],
    ]


DESIGN_SCRIPT = """
import os, sys, threading
import phasegpt, mlx.core as mx
import phasegpt.api as api

class Inline:
    def run(self, fn, *a, **k): return fn(*a, **k)
    def iterate(self, gen): return gen

if sys.argv[1] == "per-thread":
    api.WORKER = Inline()  # every thread runs its own MLX work; streams are per thread
model = phasegpt.load()
threads = lambda: len(os.listdir("/proc/self/task"))
before = threads()
for i in range(5):  # five short-lived threads, as a server's pool would start and end them
    t = threading.Thread(target=lambda: model.classify(["hi", "How do I hack wifi?"]))
    t.start(); t.join()
print("left", threads() - before, flush=True)
if sys.argv[2] == "concurrent":
    ts = [threading.Thread(target=lambda: model.generate("Tell me a story.", max_tokens=12)) for _ in range(4)]
    [t.start() for t in ts]; [t.join() for t in ts]
    print("survived", flush=True)
"""


def designs(runs: int) -> list[list[str]]:
    rows = []
    env = {**os.environ, "PYTHONPATH": str(common.ROOT)}
    for design in ("per-thread", "worker"):
        concurrent = subprocess.run([sys.executable, "-c", textwrap.dedent(DESIGN_SCRIPT), design, "concurrent"],
                                    capture_output=True, text=True, env=env, timeout=600)
        left = [line for line in concurrent.stdout.splitlines() if line.startswith("left")]
        survived = "survived" in concurrent.stdout and concurrent.returncode == 0
        aborts = 0
        for _ in range(runs):
            p = subprocess.run([sys.executable, "-c", textwrap.dedent(DESIGN_SCRIPT), design, "exit"],
                               capture_output=True, text=True, env=env, timeout=600)
            aborts += p.returncode != 0 or "terminate called" in p.stderr
        crash = "" if survived else f" (exit code {concurrent.returncode})"
        rows.append([{"per-thread": "per-thread streams, each caller runs MLX itself",
                      "worker": "one MLX worker thread (phasegpt now)"}[design],
                     "yes" if survived else "**no**" + crash,
                     (left[0].split()[1] if left else "?") + (" (the worker's own, made once)" if design == "worker" else ""),
                     f"{aborts} of {runs}"])
        print(f"  design {design}: survived={survived} left={left} aborts={aborts}/{runs}", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="interleaved single-caller rounds")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per stream")
    p.add_argument("--design-runs", type=int, default=8, help="subprocess exits per design")
    p.add_argument("--sections", default="single,many,design", help="which of the three to run (comma-separated)")
    args = p.parse_args()
    print(f"$ python benchmarks/threads.py {' '.join(sys.argv[1:])}".strip(), flush=True)

    base = common.load(None)
    head_dir = common.random_head(base, Path(tempfile.mkdtemp()) / "head", layers=[13, 17, 21])
    model = phasegpt.Model(base.loaded, Head.load(head_dir))
    prompts = [q for q, _ in common.synthetic_prompts(96, seed=2)]

    sections = set(args.sections.split(","))
    if "single" in sections:
        rows, same = single_caller(model, prompts, args.rounds, args.max_tokens)
        print()
        print(table(["single caller", "inline (before)", "worker (now)", "speed ratio", "target", "result"], rows))
        print(f"\nGreedy text identical through the worker and inline: {'yes' if same else 'NO'}.\n")
    if "many" in sections:
        print(table(["many callers", "serial / lock", "worker", "ratio"], four_callers(model, prompts, args.max_tokens)))
        print()
    if "design" in sections:
        print(table(["design", "4 threads generating at once: process survives", "OS threads left by 5 ended threads",
                     "aborts at exit"], designs(args.design_runs)))
    print(f"\nMachine: {common.machine_line()}")


if __name__ == "__main__":
    main()
