"""Stock MLX BLAS vs phasegpt's choice, side by side: fp32 matmul GFLOP/s and fp32 prefill tokens/s.

The BLAS is chosen when phasegpt is imported, before mlx.core, so each measurement runs in its
own subprocess: ``PHASEGPT_BLAS=none`` for stock, the caller's environment for phasegpt's choice.
The two are interleaved (ABBA order across rounds) so that load from other processes hits both.

Usage:
    python benchmarks/blas.py                      # ~3 min on 2 cores; writes BENCHMARKS_blas.md
    python benchmarks/blas.py --rounds 1 --matmul-rounds 1 --layers 4 --no-write   # quick look
    python benchmarks/blas.py --candidate mkl=/path/to/libmkl_rt.so.3   # also time another BLAS
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(__file__).resolve().parent / "BENCHMARKS_blas.md"

# Mistral-shaped (GQA, SwiGLU, untied head) at ~0.9B params in fp32 (~3.5 GB): big enough that
# prefill is matmul-bound like a real 1B model, small enough for a stock run in ~40 s.
MODEL = {
    "model_type": "llama",
    "hidden_size": 2048,
    "num_hidden_layers": 16,
    "intermediate_size": 5632,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-5,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
}


def child_matmul(n: int, reps: int) -> dict:
    from phasegpt import blas, doctor  # phasegpt first: it picks the BLAS before mlx loads

    return {"blas": blas.active().name, "gflops": doctor.measure_sgemm(n=n, reps=reps)}


def child_prefill(tokens: int, layers: int) -> dict:
    from phasegpt import blas  # phasegpt first: it picks the BLAS before mlx loads

    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.models.llama import Model, ModelArgs

    mx.random.seed(0)
    model = Model(ModelArgs(**{**MODEL, "num_hidden_layers": layers}))
    mx.eval(model.parameters())
    prompt = mx.random.randint(0, MODEL["vocab_size"], (1, tokens))

    def prefill(ids: mx.array) -> None:
        # As mlx_lm's generate_step does: fill the cache, then logits for the last token only.
        cache = make_prompt_cache(model)
        model(ids[:, :-1], cache=cache)
        mx.eval([c.state for c in cache])
        mx.eval(model(ids[:, -1:], cache=cache))

    prefill(prompt[:, :8])  # warm-up: thread pools, kernels
    start = time.perf_counter()
    prefill(prompt)
    seconds = time.perf_counter() - start
    return {"blas": blas.active().name, "tokens_per_s": tokens / seconds, "seconds": seconds}


STOCK = {"PHASEGPT_BLAS": "none", "LD_PRELOAD": None}  # MLX's own BLAS, whatever the caller preloads


def run_child(kind: str, env_overrides: dict[str, str | None], args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    for key, value in env_overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    cmd = [sys.executable, __file__, "--child", kind, "--n", str(args.n), "--reps", str(args.reps),
           "--tokens", str(args.tokens), "--layers", str(args.layers)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child {kind} with {env_overrides} exited {out.returncode}:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def interleaved(kind: str, arms: dict[str, dict], rounds: int,
                args: argparse.Namespace) -> dict[str, list[dict]]:
    """Run every arm ``rounds`` times, alternating the order (ABBA) against drift in load."""
    results: dict[str, list[dict]] = {name: [] for name in arms}
    for r in range(rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        for name in order:
            res = run_child(kind, arms[name], args)
            results[name].append(res)
            print(f"  {kind:8s} {name}: {res}", flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=2, help="prefill runs of each arm, interleaved")
    p.add_argument("--matmul-rounds", type=int, default=5, help="matmul runs of each arm (cheap)")
    p.add_argument("--n", type=int, default=1024, help="matmul side")
    p.add_argument("--reps", type=int, default=5, help="timed matmuls per child")
    p.add_argument("--tokens", type=int, default=64, help="prompt length for prefill")
    p.add_argument("--layers", type=int, default=MODEL["num_hidden_layers"])
    p.add_argument("--candidate", action="append", default=[], metavar="NAME=PATH",
                   help="also time matmul with PHASEGPT_BLAS=PATH (repeatable)")
    p.add_argument("--no-write", action="store_true", help=f"do not write {OUT.name}")
    p.add_argument("--child", choices=["matmul", "prefill"], help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child == "matmul":
        print(json.dumps(child_matmul(args.n, args.reps)))
        return
    if args.child == "prefill":
        print(json.dumps(child_prefill(args.tokens, args.layers)))
        return

    candidates = dict(c.split("=", 1) for c in args.candidate)
    command = ("python benchmarks/blas.py " + " ".join(sys.argv[1:])).strip()
    print(f"$ {command}")
    load_before = os.getloadavg()[0]
    arms = {"stock": STOCK, "phasegpt": {}}
    matmul = interleaved("matmul", {**arms, **{n: {"PHASEGPT_BLAS": p} for n, p in candidates.items()}},
                         args.matmul_rounds, args)
    prefill = interleaved("prefill", arms, args.rounds, args)
    load = (load_before, os.getloadavg()[0])

    chosen = matmul["phasegpt"][0]["blas"]
    rows = []
    for results, key, label in (
        (matmul, "gflops", f"fp32 matmul {args.n}^3, GFLOP/s"),
        (prefill, "tokens_per_s", f"fp32 prefill {args.tokens} tokens, tokens/s"),
    ):
        stock = statistics.median(x[key] for x in results["stock"])
        fast = statistics.median(x[key] for x in results["phasegpt"])
        rows.append((label, stock, fast, fast / stock))
    table = [
        f"| measurement | stock (`PHASEGPT_BLAS=none`) | phasegpt (`{chosen}`) | ratio |",
        "|---|---:|---:|---:|",
    ] + [f"| {label} | {s:.2f} | {f:.2f} | **{ratio:.1f}x** |" for label, s, f, ratio in rows]
    if candidates:
        stock = statistics.median(x["gflops"] for x in matmul["stock"])
        table += ["", f"| `PHASEGPT_BLAS=` | fp32 matmul {args.n}^3, GFLOP/s | vs stock |", "|---|---:|---:|"]
        for name, path in candidates.items():
            g = statistics.median(x["gflops"] for x in matmul[name])
            table.append(f"| {name} (`{path}`) | {g:.1f} | {g / stock:.1f}x |")
    print("\n" + "\n".join(table))

    if not args.no_write:
        OUT.write_text(_fragment(command, args, table, chosen, load))
        print(f"\nwrote {OUT.relative_to(ROOT)}")


def _fragment(command: str, args: argparse.Namespace, table: list[str], chosen: str,
              load: tuple[float, float]) -> str:
    from phasegpt.doctor import cpu_model  # phasegpt before mlx, as everywhere

    import mlx.core as mx

    model = {**MODEL, "num_hidden_layers": args.layers}
    shape = (f"hidden {model['hidden_size']}, {model['num_hidden_layers']} layers, "
             f"{model['num_attention_heads']} heads / {model['num_key_value_heads']} kv heads, "
             f"intermediate {model['intermediate_size']}, vocab {model['vocab_size']}")
    return "\n".join([
        "### Optimized BLAS on Linux",
        "",
        f"Measured by `{command}` on {time.strftime('%Y-%m-%d')}: {cpu_model()}, "
        f"{os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, MLX {mx.__version__}. Medians of {args.matmul_rounds} "
        f"(matmul) and {args.rounds} (prefill) interleaved subprocess runs of each arm; every run "
        "imports phasegpt before mlx. "
        f"Load average {load[0]:.1f} before, {load[1]:.1f} after (other jobs share the cores; an "
        "optimized BLAS's threads suffer more from that than the single-threaded stock one).",
        "",
        *table,
        "",
        f"Prefill: a Mistral-shaped fp32 model with random weights ({shape}), built in-process "
        "from `mlx_lm.models.llama`; the prompt fills the KV cache, then the last token's logits.",
        f"`{chosen}` is what `phasegpt.blas.ensure()` picked on this machine; run `phasegpt doctor` "
        "to see what it picks on yours.",
        "",
    ])


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
