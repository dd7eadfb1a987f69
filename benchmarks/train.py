"""How fast a head trains: feature extraction (prompts/s, GFLOP/s vs sgemm) and fit_head time.

    python benchmarks/train.py                       # 5,000 synthetic prompts on SmolLM2 (~30+ min on 2 busy cores)
    python benchmarks/train.py --n 500               # quick look
    python benchmarks/train.py --data /work/shared/data/eval.jsonl --n 2000   # real prompts, read at run time
    python benchmarks/train.py --skip-extract        # head fitting only (~1-3 min)
    python benchmarks/train.py --skip-extract --features $PHASEGPT_HOME/features/<cache>.npz \
        --labels ../shared/data/eval.jsonl           # head fitting on real features a train-head run cached

Extraction runs ``phasegpt.train.features.extract`` (the batched tapped prefill ``classify``
uses, ``use_cache=False``) on the default candidate layers of ``train-head``, in slices, with an
fp32 sgemm measurement (``phasegpt.doctor``) between slices so each slice is set against the
machine as it was at that moment: GFLOP/s counts 2 x params of blocks 0..deepest candidate x
padded positions. Fitting runs ``phasegpt.train.fit_head`` on random features of the real shape
(N, candidates, 2, hidden) that carry a weak label signal in every layer, so the greedy layer
sweep goes as deep as it would on real data; the sweep and the final fit (fit, calibrate,
thresholds) are timed separately, alternating over ``--fit-rounds``. With ``--features`` and
``--labels`` the fit runs on real features instead: rows of a ``train-head`` feature cache whose
text appears, labelled, in the JSONL.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (sets PHASEGPT_HOME to a temp dir and imports phasegpt before mlx)
from common import median, spread, table, verdict_mark  # noqa: E402

import numpy as np  # noqa: E402

from phasegpt.train.data import Example  # noqa: E402
from phasegpt.train.features import extract  # noqa: E402
from phasegpt.train.fit_head import FitConfig, fit_head, sweep  # noqa: E402
from phasegpt.train.train_head import default_candidates  # noqa: E402
from phasegpt.verdict import LABELS  # noqa: E402

TARGET_EXTRACT = 70.0  # % of sgemm GFLOP/s, as for classify
TARGET_FIT = 10.0      # seconds for fit_head (sweep + final fit) on 5,000 examples


def read_prompts(path: Path, n: int, seed: int) -> list[tuple[str, object]]:
    """``n`` distinct (prompt, context) pairs sampled from a JSONL file at run time."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    pairs = list({json.dumps([r["prompt"], r.get("context")]): (r["prompt"], r.get("context")) for r in rows}.values())
    if len(pairs) < n:
        raise ValueError(f"{path} has {len(pairs)} distinct prompts, fewer than --n {n}; pass a smaller --n")
    idx = np.random.default_rng(seed).choice(len(pairs), n, replace=False)
    return [pairs[i] for i in idx]


def bench_extract(model, pairs, layers: list[int], batch_size: int, slices: int) -> tuple[list[str], list[dict]]:
    """Extraction in ``slices`` with sgemm between them; returns table rows and per-slice records."""
    examples = [Example(prompt=p, label="answer", context=c) for p, c in pairs]
    deepest = max(layers)
    extract(model, examples[:batch_size], layers, batch_size=batch_size, use_cache=False, progress=False)  # warm-up
    records, before = [], common.sgemm()
    size = -(-len(examples) // slices)
    for i in range(0, len(examples), size):
        part = examples[i:i + size]
        lengths = [len(model.encode(e.prompt, e.context)) for e in part]
        t0 = time.perf_counter()
        extract(model, part, layers, batch_size=batch_size, use_cache=False, progress=False)
        seconds = time.perf_counter() - t0
        after = common.sgemm()
        flops = common.flops_through(model, deepest, common.padded_tokens(model, lengths, batch_size))
        rec = {"n": len(part), "seconds": seconds, "gflops": flops / seconds / 1e9, "sgemm": (before + after) / 2,
               "tokens": sum(lengths), "padded": common.padded_tokens(model, lengths, batch_size)}
        rec["pct"] = 100 * rec["gflops"] / rec["sgemm"]
        records.append(rec)
        before = after
        print(f"  slice {len(records)}: {rec['n']} prompts in {seconds:.1f}s, {rec['gflops']:.1f} GFLOP/s "
              f"= {rec['pct']:.0f}% of sgemm {rec['sgemm']:.1f}", flush=True)
    total_s = sum(r["seconds"] for r in records)
    pct = median([r["pct"] for r in records])
    rows = [
        ["feature extraction, prompts/s", f"{len(examples) / total_s:.1f}",
         f"{len(examples):,} prompts in {total_s:.0f} s (slices {spread([r['n'] / r['seconds'] for r in records])}/s)",
         "-", "-"],
        [f"feature extraction GFLOP/s (blocks 0..{deepest}, batch {batch_size})",
         f"{median([r['gflops'] for r in records]):.1f}",
         f"{pct:.0f}% of sgemm {median([r['sgemm'] for r in records]):.1f} (slices {spread([r['pct'] for r in records])}%)",
         f"≥ {TARGET_EXTRACT:.0f}%", verdict_mark(pct >= TARGET_EXTRACT)],
    ]
    return rows, records


def synthetic_features(n: int, n_layers: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, n_layers, 2, d) with a weak, independent label signal per layer, and labels (n,)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(LABELS), n)
    x = rng.standard_normal((n, n_layers, 2, d), dtype=np.float32)
    centres = (rng.standard_normal((n_layers, 2, len(LABELS), d)) * 0.03).astype(np.float32)
    x += centres[:, :, y].transpose(2, 0, 1, 3)  # each layer alone is a noisy view: combining layers helps
    return x, y


def cached_features(npz: Path, data: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` real labelled feature rows from a ``train-head`` cache file, labels read from ``data`` at run time."""
    from phasegpt.train.data import read_jsonl

    with np.load(npz) as z:
        index = {k: i for i, k in enumerate(z["keys"].tolist())}
        feats = z["feats"]
    rows = [(index[e.key], LABELS.index(e.label)) for e in read_jsonl(data)
            if e.key in index and e.split != "test"]  # a timing, but still: never touch test rows
    if len(rows) < n:
        raise ValueError(f"{npz} holds features for {len(rows)} labelled rows of {data}, fewer than --fit-n {n}")
    pick = np.random.default_rng(seed).choice(len(rows), n, replace=False)
    return feats[[rows[i][0] for i in pick]].astype(np.float32), np.array([rows[i][1] for i in pick])


def bench_fit(x: np.ndarray, y: np.ndarray, rounds: int) -> list[str]:
    """fit_head timings on features x (N, L, 2, D), labels y (80% train, 20% dev, as train-head splits)."""
    n, n_layers, _, d = x.shape
    cut = int(0.8 * n)
    xtr, ytr, xdv, ydv = x[:cut], y[:cut], x[cut:], y[cut:]
    identity = {"base_model": "benchmark", "hidden_size": d}
    layers = list(range(n_layers))
    sweeps, finals, chosen = [], [], None
    for r in range(rounds):
        for step in common.order(r, ["sweep", "final"]):
            t0 = time.perf_counter()
            if step == "sweep":
                idx, pooling, trials = sweep(xtr, ytr, xdv, ydv, FitConfig())
                sweeps.append(time.perf_counter() - t0)
                chosen = (idx, pooling, len(trials))
            else:
                # Fixed layers and pooling: fit_head skips the sweep and times fit + calibrate + thresholds.
                fix = chosen or ((0,), "last+mean", 0)
                fit_head(xtr, ytr, xdv, ydv, layers=layers, cfg=FitConfig(layers=fix[0], pooling=fix[1]),
                         identity=identity)
                finals.append(time.perf_counter() - t0)
        print(f"  fit round {r + 1}/{rounds}: sweep {sweeps[-1]:.1f}s, final fit {finals[-1]:.1f}s", flush=True)
    total = median(sweeps) + median(finals)
    idx, pooling, probes = chosen  # every probe adds one row to the sweep table
    return [
        [f"fit_head: layer/pooling sweep ({probes} linear probes, chose {len(idx)} layers, {pooling})",
         f"{median(sweeps):.1f} s", f"spread {spread(sweeps)} s", "-", "-"],
        [f"fit_head: final fit + calibrate + thresholds ({len(idx)} layers, {pooling})",
         f"{median(finals):.1f} s", f"spread {spread(finals)} s", "-", "-"],
        [f"fit_head total on {n:,} × ({n_layers}, 2, {d}) features ({cut:,} train / {n - cut:,} dev)",
         f"{total:.1f} s", "sweep + final fit", f"≤ {TARGET_FIT:.0f} s", verdict_mark(total <= TARGET_FIT)],
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", help="model path or repo id (default: the packaged SmolLM2 GGUF)")
    p.add_argument("--n", type=int, default=5000, help="prompts to extract features for")
    p.add_argument("--data", type=Path, help="JSONL with prompt/context fields to sample prompts from (read at run time)")
    p.add_argument("--batch-size", type=int, default=16, help="extraction batch size (train-head's default)")
    p.add_argument("--slices", type=int, default=10, help="extraction slices, with an sgemm timing between each")
    p.add_argument("--fit-n", type=int, default=5000, help="examples for the fit_head timing")
    p.add_argument("--fit-rounds", type=int, default=3, help="alternating sweep/final-fit rounds")
    p.add_argument("--features", type=Path, help="fit on real features: a train-head cache file "
                   "($PHASEGPT_HOME/features/*.npz) ...")
    p.add_argument("--labels", type=Path, help="... with labels from this JSONL (read at run time)")
    p.add_argument("--skip-extract", action="store_true")
    p.add_argument("--skip-fit", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    command = "python benchmarks/train.py " + " ".join(sys.argv[1:])
    print(f"$ {command.strip()}", flush=True)

    model = common.load(args.model)
    n_layers = len(model.loaded.model.layers)
    layers = default_candidates(n_layers)
    d = int(model.loaded.config["hidden_size"])
    print(f"model {model.name} ({model.loaded.dtype}), candidate layers {layers}", flush=True)

    rows: list[list[str]] = []
    note = ""
    if not args.skip_extract:
        if args.data:
            pairs, source = read_prompts(args.data, args.n, args.seed), f"{args.n:,} prompts sampled from {args.data.name}"
        else:
            pairs, source = common.synthetic_prompts(args.n, seed=args.seed), f"{args.n:,} synthetic prompts"
        extract_rows, records = bench_extract(model, pairs, layers, args.batch_size, args.slices)
        rows += extract_rows
        tokens, padded = sum(r["tokens"] for r in records), sum(r["padded"] for r in records)
        note = (f"Extraction: {source}, {tokens / args.n:.1f} tokens per prompt on average "
                f"({padded:,} positions computed for {tokens:,} real ones), median over {len(records)} slices. ")
    if not args.skip_fit:
        if args.features:
            if not args.labels:
                p.error("--features needs --labels (the JSONL the features were extracted from)")
            x, y = cached_features(args.features, args.labels, args.fit_n, args.seed)
            note += f"Fit: {args.fit_n:,} real feature rows of {args.features.name} ({x.shape[1]} layers). "
        else:
            x, y = synthetic_features(args.fit_n, len(layers), d, args.seed)
            note += f"Fit: {args.fit_n:,} synthetic feature rows ({len(layers)} layers). "
        rows += bench_fit(x, y, args.fit_rounds)

    print()
    print(table(["measurement", "value", "detail", "target", "result"], rows))
    print()
    print(note + f"Machine: {common.machine_line()}")


if __name__ == "__main__":
    main()
