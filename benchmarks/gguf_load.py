"""What reading GGUF costs: load time and peak memory against the file's size, and prefill speed after it.

    python benchmarks/gguf_load.py                  # Gemma 3 270M Q4_K_M (scripts/setup.sh --dev), ~9 min here
    python benchmarks/gguf_load.py --model X.gguf   # any GGUF phasegpt reads
    python benchmarks/gguf_load.py --rounds 1       # quick look

1. Load: ``phasegpt.load(FILE)`` with ``dtype="auto"`` (float32 on this CPU) and ``"native"``
   (legacy types kept as MLX affine, K-quants re-quantized), each in a fresh process so its peak
   resident memory (``ru_maxrss``, which counts the file's pages that were read) is its own; the
   processes alternate (auto native, native auto, ...) and the medians are reported beside the
   file size and the loaded weights' size.
2. Prefill tokens/s of a ~300-token prompt on the float32 model phasegpt loaded versus the same
   weights saved as an MLX folder (``config.json`` + ``model.safetensors`` + tokenizer) and loaded
   with ``mlx_lm.load``, interleaved in one process: the ratio should be 1.
3. What re-quantizing costs: mean next-token loss on a few paragraphs and top-1 agreement of
   ``native`` against float32.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402  (sets PHASEGPT_HOME to a temp dir and imports phasegpt before mlx)
from common import median, order, table  # noqa: E402

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import numpy as np  # noqa: E402

import phasegpt  # noqa: E402

PARAGRAPHS = [  # written for this benchmark
    "The lighthouse stood on a rock at the mouth of the harbour, and for a hundred years its keepers climbed "
    "the spiral stairs every evening to light the lamp before the fishing boats came home.",
    "To repot a houseplant, water it the day before, ease it out of the old pot, loosen the roots with your "
    "fingers and set it a little deeper in fresh soil in a pot one size larger.",
    "The train left the station twenty minutes late because of a signal fault, but the driver made up most "
    "of the time on the long straight stretch across the plain.",
    "Honey bees communicate the direction and distance of flowers to their sisters by dancing on the "
    "honeycomb in the dark of the hive.",
]


def child(path: str, dtype: str) -> None:
    """Load once and print what it took (run in a fresh process by ``measure_load``)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    model = phasegpt.load(path, dtype=dtype)
    seconds = time.perf_counter() - start
    from mlx.utils import tree_flatten

    weights = sum(w.nbytes for _, w in tree_flatten(model.loaded.model.parameters()))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak": peak, "baseline": before, "weights": weights,
                      "dtype": model.loaded.dtype}))


def measure_load(path: Path, rounds: int) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {"auto": [], "native": []}
    for i in range(rounds):
        for dtype in order(i, ["auto", "native"]):
            out = subprocess.run([sys.executable, __file__, "--child", str(path), dtype], check=True,
                                 capture_output=True, text=True).stdout
            runs[dtype].append(json.loads(out.strip().splitlines()[-1]))
    return runs


def save_folder(model: phasegpt.Model, folder: Path) -> Path:
    """The loaded weights as an mlx-lm folder, the way mlx_lm.convert writes one."""
    from mlx.utils import tree_flatten

    folder.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in model.loaded.config.items() if k != "quantization"}
    (folder / "config.json").write_text(json.dumps(config))
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.loaded.model.parameters())))
    model.tokenizer.save_pretrained(str(folder))
    return folder


def prefill_tps(net: nn.Module, ids: mx.array) -> float:
    from mlx_lm.models.cache import make_prompt_cache

    start = time.perf_counter()
    mx.eval(net(ids[None], cache=make_prompt_cache(net)))
    return ids.size / (time.perf_counter() - start)


def loss_and_top1(net: nn.Module, tokenizer) -> tuple[float, list[np.ndarray]]:
    total, count, tops = 0.0, 0, []
    for text in PARAGRAPHS:
        ids = mx.array([tokenizer.encode(text)])
        logits = net(ids[:, :-1]).astype(mx.float32)
        total += nn.losses.cross_entropy(logits, ids[:, 1:]).sum().item()
        count += ids.shape[1] - 1
        tops.append(np.array(mx.argmax(logits, -1)))
    return total / count, tops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a .gguf file (default: Gemma 3 270M Q4_K_M, assembled into a temp dir)")
    parser.add_argument("--rounds", type=int, default=3, help="load rounds per dtype and prefill rounds x 5")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    from mlx_lm import load as mlx_load

    from phasegpt.gguf.summary import summarize
    from phasegpt.hub import gemma3_gguf

    work = Path(tempfile.mkdtemp(prefix="phasegpt-gguf-bench-"))
    path = Path(args.model) if args.model else gemma3_gguf(work)
    summary = summarize(path)
    mib = 2**20
    print(common.machine_line())
    print(f"{path.name}: {summary.file_bytes / mib:.0f} MiB on disk, {summary.parameters / 1e6:.0f}M parameters, "
          f"{summary.file_type}; {args.rounds} rounds\n")

    runs = measure_load(path, args.rounds)
    rows = []
    for dtype, results in runs.items():
        peak, base = median([r["peak"] for r in results]), median([r["baseline"] for r in results])
        weights = results[0]["weights"]
        rows.append([f"{dtype} ({results[0]['dtype']})", f"{median([r['seconds'] for r in results]):.1f} s",
                     f"{weights / mib:.0f} MiB", f"{peak / mib:.0f} MiB", f"{(peak - base) / mib:.0f} MiB",
                     f"{(peak - base) / summary.file_bytes:.2f}x", f"{(peak - base) / weights:.2f}x"])
    print("1. load (fresh process each, medians)")
    print(table(["dtype", "load time", "weights", "peak RSS", "peak - imports", "/ file", "/ weights"], rows))

    model = phasegpt.load(path)  # auto: float32 on a CPU
    folder = save_folder(model, work / "mlx-folder")
    reference, _ = mlx_load(str(folder))
    text = " ".join(PARAGRAPHS * 4)
    ids = mx.array(model.tokenizer.encode(text))
    for net in (model.loaded.model, reference):  # warm-up
        prefill_tps(net, ids)
    speeds: dict[str, list[float]] = {"phasegpt (GGUF)": [], "mlx-lm (folder)": []}
    for i in range(args.rounds * 5):
        for name in order(i, list(speeds)):
            speeds[name].append(prefill_tps(model.loaded.model if name.startswith("phasegpt") else reference, ids))
    gguf_tps, folder_tps = median(speeds["phasegpt (GGUF)"]), median(speeds["mlx-lm (folder)"])
    print(f"\n2. prefill of {ids.size} tokens, float32, {args.rounds * 5} interleaved rounds (medians)")
    print(table(["model", "tokens/s"], [[k, f"{median(v):.0f}"] for k, v in speeds.items()]))
    print(f"ratio GGUF / folder: {gguf_tps / folder_tps:.3f}")

    base_loss, base_top = loss_and_top1(model.loaded.model, model.tokenizer)
    native = phasegpt.load(path, dtype="native")
    loss, top = loss_and_top1(native.loaded.model, native.tokenizer)
    agree = float(np.mean(np.concatenate([(a == b).ravel() for a, b in zip(top, base_top)])))
    print(f"\n3. re-quantizing: next-token loss on {len(PARAGRAPHS)} paragraphs {base_loss:.3f} (float32) vs "
          f"{loss:.3f} (native); native's top-1 token equals float32's at {agree:.1%} of positions")


if __name__ == "__main__":
    main()
