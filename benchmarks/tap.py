"""What the verdict costs: phasegpt's tapped stream and classify versus plain mlx-lm, side by side.

    python benchmarks/tap.py                     # SmolLM2, ~12 min on 2 busy cores
    python benchmarks/tap.py --model PATH        # any model phasegpt.load reads
    python benchmarks/tap.py --rounds 2 --classify-rounds 1 --classify-n 16   # quick look

Three measurements, each interleaved (A B, B A, ... rounds) and reported as medians:

1. decode tokens/s after the first token: ``mlx_lm.stream_generate`` on the model alone
   versus ``Model.stream`` with the tap and a head (same prompt ids, greedy) -> overhead %;
2. time to verdict (``Model.stream`` until its first chunk, which carries the verdict) versus
   plain prefill (tokenising the same chat prompt + ``stream_generate`` until its first token);
3. ``Model.classify`` throughput at batch sizes 1, 8 and 32 as achieved GFLOP/s, counting only
   the blocks a lazy tapped pass really computes (0..deepest tapped layer) on every padded
   position, against fp32 sgemm GFLOP/s measured between the runs (``phasegpt.doctor``).

The head has random weights (speed does not depend on them) and taps ``--layers``; or pass
trained heads with ``--head`` (a tower head re-runs its blocks on the tapped states): the
streams use the first, and classify throughput is measured for every one in the same rounds,
with the ratio of each to the first (e.g. ``--head adapters/smollm2-135m --head old-mlp-head``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (sets PHASEGPT_HOME to a temp dir and imports phasegpt before mlx)
from common import median, order, spread, table, verdict_mark  # noqa: E402

import phasegpt  # noqa: E402
from phasegpt.head import Head  # noqa: E402

STORY = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."
QUESTION = "Using the notes, when should the garden shed be repainted and with what?"
NOTES = " ".join(
    f"Note {i}: the shed was last painted in spring with an oil-based paint; the wood is cedar; "
    "rain is frequent in autumn and the forecast says the next dry week starts on the tenth."
    for i in range(1, 8)
)  # ~210 words: a retrieved-document prompt of ~350 tokens

TARGET_DECODE = 1.0      # % slower decode allowed with the tap installed
TARGET_VERDICT = 1.10    # time to verdict / plain time to first token (a tower re-runs M blocks)
TARGET_CLASSIFY = 70.0   # % of sgemm GFLOP/s


def plain_stream(model: phasegpt.Model, prompt: str, context: str | None, max_tokens: int) -> dict:
    """mlx-lm alone on the same chat prompt: time to first token and decode rate."""
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    t0 = time.perf_counter()
    ids = model.encode(prompt, context)  # plain mlx-lm must tokenise the chat prompt too
    stamps, tokens = [], []
    for r in stream_generate(model.loaded.model, model.tokenizer, ids, max_tokens=max_tokens,
                             sampler=make_sampler(temp=0.0)):
        stamps.append(time.perf_counter())
        tokens.append(r.token)
    return {"first": stamps[0] - t0, "tps": _rate(stamps), "tokens": tokens}


def phasegpt_stream(model: phasegpt.Model, prompt: str, context: str | None, max_tokens: int) -> dict:
    """``Model.stream`` with tap and head: time to the verdict chunk and decode rate."""
    t0 = time.perf_counter()
    verdict_at, stamps, tokens = None, [], []
    for chunk in model.stream(prompt, context=context, max_tokens=max_tokens):
        now = time.perf_counter()
        if chunk.verdict is not None:
            verdict_at = now - t0
        elif chunk.token is not None:
            stamps.append(now)
            tokens.append(chunk.token)
    if verdict_at is None:
        raise RuntimeError("Model.stream yielded no verdict chunk; is the head loaded?")
    return {"first": verdict_at, "tps": _rate(stamps), "tokens": tokens}


def _rate(stamps: list[float]) -> float:
    """Tokens/s between the first and the last token (prefill excluded)."""
    if len(stamps) < 3:
        return float("nan")
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def _pair_ratios(a: list[dict], b: list[dict], key: str) -> list[float]:
    """a[i][key] / b[i][key] for each interleaved pair."""
    return [x[key] / y[key] for x, y in zip(a, b)]


def classify_run(model: phasegpt.Model, prompts: list[tuple[str, str | None]], batch_size: int) -> float:
    """Seconds for ``classify`` over all prompts (end to end: encode, forward, head, evidence)."""
    t0 = time.perf_counter()
    model.classify([p for p, _ in prompts], contexts=[c for _, c in prompts], batch_size=batch_size)
    return time.perf_counter() - t0


def forward_run(model: phasegpt.Model, encoded: list[list[int]], batch_size: int) -> float:
    """Seconds for the batched tapped forward alone (what classify computes before building verdicts),
    in ``Model.rounds`` through ``Model.prefill`` as classify runs it (split over CPU streams where that applies)."""
    import mlx.core as mx

    head = model.head
    t0 = time.perf_counter()
    for idx in model.rounds([len(e) for e in encoded], batch_size):
        parts = model.prefill([encoded[i] for i in idx], head.config.layers)
        mx.eval([head.probs(head.pool(head.states(hidden), lengths, model.span)) for _, hidden, lengths in parts])
    return time.perf_counter() - t0


def deepest_block(model: phasegpt.Model) -> int:
    """The last block a tapped classify pass computes: the deepest tapped layer, or a tower's last block."""
    n = len(model.loaded.model.layers)
    tower = model.head.config.tower
    return tower["tap"] + tower["depth"] if tower else max(layer % n for layer in model.head.config.layers)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", help="model path or repo id (default: the packaged SmolLM2 GGUF)")
    p.add_argument("--layers", type=int, nargs="+", default=[9, 18], help="layers the head taps")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens to generate per stream")
    p.add_argument("--rounds", type=int, default=6, help="interleaved plain/phasegpt stream pairs")
    p.add_argument("--classify-n", type=int, default=48, help="prompts per classify run")
    p.add_argument("--classify-rounds", type=int, default=3, help="interleaved classify rounds")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--head", action="append", type=Path, default=[],
                   help="a trained head or tower folder (repeat to compare classify throughput; default: random head)")
    args = p.parse_args()
    command = "python benchmarks/tap.py " + " ".join(sys.argv[1:])
    print(f"$ {command.strip()}", flush=True)

    base = common.load(args.model)
    heads = args.head or [common.random_head(base, Path(tempfile.mkdtemp()) / "head", layers=args.layers)]
    models = [phasegpt.Model(base.loaded, Head.load(h)) for h in heads]
    names = [str(h) if args.head else f"random head at {args.layers}" for h in heads]
    model = models[0]
    deepest = deepest_block(model)
    print(f"model {model.name} ({model.loaded.dtype}), heads: "
          + "; ".join(f"{n} ({m.head.config.kind}, blocks 0..{deepest_block(m)})" for n, m in zip(names, models)),
          flush=True)

    cases = {"chat": (STORY, None), "rag": (QUESTION, NOTES)}
    max_tokens = {"chat": args.max_tokens, "rag": 2}  # decode is timed on chat; rag times prefill only
    # Warm-up: first calls compile kernels and start BLAS threads.
    for prompt, ctx in cases.values():
        plain_stream(model, prompt, ctx, 4)
        phasegpt_stream(model, prompt, ctx, 4)

    runs: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        for case, (prompt, ctx) in cases.items():  # each case's plain/phasegpt runs are back to back: a pair
            for kind in order(r, ["plain", "phasegpt"]):
                fn = plain_stream if kind == "plain" else phasegpt_stream
                runs.setdefault((case, kind), []).append(fn(model, prompt, ctx, max_tokens[case]))
        print(f"  stream round {r + 1}/{args.rounds}: chat decode plain {runs['chat', 'plain'][-1]['tps']:.1f} "
              f"vs phasegpt {runs['chat', 'phasegpt'][-1]['tps']:.1f} tok/s", flush=True)
    same = all(a["tokens"] == b["tokens"] for c in cases
               for a, b in zip(runs[c, "plain"], runs[c, "phasegpt"]))
    n_gen = len(runs["chat", "plain"][0]["tokens"])
    n_prompt = {c: len(model.encode(*cases[c])) for c in cases}

    prompts = common.synthetic_prompts(args.classify_n, seed=1)
    encoded = [model.encode(q, c) for q, c in prompts]
    lengths = [len(e) for e in encoded]
    gemm: list[float] = [common.sgemm()]
    e2e: dict[int, list[float]] = {}
    fwd: dict[int, list[float]] = {}
    others: dict[tuple[int, int], list[float]] = {}  # (head index, batch) -> classify seconds, heads 1..
    for bs in args.batch_sizes:  # warm-up at each shape family
        for m in models:
            forward_run(m, encoded[: max(bs, 2)], bs)
    for r in range(args.classify_rounds):
        for bs in order(r, args.batch_sizes):
            for i in order(r, list(range(len(models)))):
                if i == 0:
                    e2e.setdefault(bs, []).append(classify_run(model, prompts, bs))
                    fwd.setdefault(bs, []).append(forward_run(model, encoded, bs))
                else:
                    others.setdefault((i, bs), []).append(classify_run(models[i], prompts, bs))
            gemm.append(common.sgemm())
        print(f"  classify round {r + 1}/{args.classify_rounds}: sgemm {gemm[-1]:.1f} GFLOP/s", flush=True)
    sg = median(gemm)

    rows = []
    plain_tps, pg_tps = median([x["tps"] for x in runs["chat", "plain"]]), median([x["tps"] for x in runs["chat", "phasegpt"]])
    # Ratios are taken within each interleaved pair, then the median: load drifts between rounds.
    overhead = 100.0 * (1 - median(_pair_ratios(runs["chat", "phasegpt"], runs["chat", "plain"], "tps")))
    rows.append([f"decode tok/s after the first token ({n_gen} greedy tokens, chat prompt)",
                 f"{plain_tps:.1f}", f"{pg_tps:.1f}", f"{overhead:+.1f}% slower", f"≤ {TARGET_DECODE:.0f}%",
                 verdict_mark(overhead <= TARGET_DECODE)])
    for case in cases:
        a, b = median([x["first"] for x in runs[case, "plain"]]), median([x["first"] for x in runs[case, "phasegpt"]])
        ratio = median(_pair_ratios(runs[case, "phasegpt"], runs[case, "plain"], "first"))
        rows.append([f"time to verdict vs plain first token, ms ({case}, {n_prompt[case]} prompt tokens)",
                     f"{1e3 * a:.1f}", f"{1e3 * b:.1f}", f"{ratio:.3f}×", f"≤ {TARGET_VERDICT}×",
                     verdict_mark(ratio <= TARGET_VERDICT)])
    for bs in args.batch_sizes:
        flops = common.flops_through(model, deepest, common.padded_tokens(model, lengths, bs))
        g_e2e, g_fwd = flops / median(e2e[bs]) / 1e9, flops / median(fwd[bs]) / 1e9
        rows.append([f"classify GFLOP/s, batch {bs} (forward only: {g_fwd:.1f} = {100 * g_fwd / sg:.0f}%)",
                     f"{sg:.1f} (sgemm)", f"{g_e2e:.1f}", f"{100 * g_e2e / sg:.0f}% of sgemm",
                     f"≥ {TARGET_CLASSIFY:.0f}%", verdict_mark(100 * g_e2e / sg >= TARGET_CLASSIFY)])

    for (i, bs), times in sorted(others.items()):
        ratio = median([b / a for a, b in zip(e2e[bs], times)])  # per round: the other head's time / the first's
        rows.append([f"classify prompts/s, batch {bs}: {names[0]} vs {names[i]}",
                     f"{args.classify_n / median(times):.1f}", f"{args.classify_n / median(e2e[bs]):.1f}",
                     f"{ratio:.2f}×", "≥ 1.00×", verdict_mark(ratio >= 1.0)])

    useful = sum(lengths)
    print()
    print(table(["measurement", "plain mlx-lm", "phasegpt", "ratio", "target", "result"], rows))
    print()
    print(f"Greedy tokens identical with and without the tap: {'yes' if same else 'NO'}. "
          f"Values are medians, ratios the median of per-pair ratios, over {args.rounds} interleaved stream pairs (chat decode spread: plain "
          f"{spread([x['tps'] for x in runs['chat', 'plain']])}, phasegpt {spread([x['tps'] for x in runs['chat', 'phasegpt']])} tok/s) "
          f"and {args.classify_rounds} classify rounds over {args.classify_n} synthetic prompts "
          f"({useful} tokens, {min(lengths)}-{max(lengths)} per prompt). Classify FLOPs: "
          f"2 × params of blocks 0..{deepest} ({deepest + 1} of {len(model.loaded.model.layers)} blocks, "
          f"{sum(common.block_params(model)[:deepest + 1]) / 1e6:.1f}M) × padded positions "
          f"(batch {max(args.batch_sizes)}: {common.padded_tokens(model, lengths, max(args.batch_sizes))} for {useful} real tokens); "
          f"sgemm spread {spread(gemm)} GFLOP/s.")
    print(f"Machine: {common.machine_line()}")


if __name__ == "__main__":
    main()
