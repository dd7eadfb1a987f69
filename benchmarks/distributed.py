"""Rows/s and CPU per row of ``phasegpt.classify_file`` on 1 and 2 processes of this machine, side by side.

    python benchmarks/distributed.py                  # SmolLM2, 96 rows, 2 rounds
    python benchmarks/distributed.py --with-launch    # also time the two ranks under mlx.launch
    python benchmarks/distributed.py --rows 48 --rounds 1 --model TINY_MODEL_DIR --layers 0,2   # quick look

On a 2-core machine the figure that matters is the overhead of processes: two ranks of one CPU
stream each (ring backend over loopback, started with the environment ``mlx.launch`` gives them:
``MLX_RANK`` and ``MLX_HOSTFILE``) against one process that already splits every step over two CPU
streams, and one process of one stream (a single core's rate, for the scaling model). Each
configuration is a fresh process (or pair) that loads the model, warms up, waits for its peer and
times ``classify_file`` alone; configurations alternate A B C, C B A, ... and medians are reported.
Every run's output must be byte-identical to the first one's. Reported per configuration:

- rows/s (wall) and the ranks' CPU milliseconds per row (``time.process_time`` summed over the
  ranks): on a machine whose other jobs take most of the cores, wall time says more about the
  scheduler than about phasegpt, and CPU per row is the overhead itself;
- the share of time inside the collectives (``World.gather``: the verdicts to rank 0 every ~2 s of
  work, and the set-up exchanges), which includes waiting for the slower rank;
- for the 1-process run, ``Model.classify`` on the same rows in the same process.

Then, for the scaling model: the CPU cost per row of the serial parts of a job (every rank reads and
hashes the whole input; rank 0 logs and merges) on a larger file, the all-gather's wall time and
CPU at a few payload sizes and the CPU a rank spends waiting in one for a slower peer
(``--only-collectives`` times these alone), and the CPU ``mlx.launch`` itself uses around two idle ranks.

Rows are ``common.synthetic_prompts`` (made-up, realistic length spread, ~10% with a document).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (sets PHASEGPT_HOME to a temp dir and imports phasegpt before mlx)
from common import median, spread, table  # noqa: E402

import phasegpt  # noqa: E402
from phasegpt.distributed import loopback_ports  # noqa: E402

HERE = Path(__file__).resolve()
CONFIGS = {  # name: (processes, how they start, PHASEGPT_CPU_STREAMS for each or None for the default)
    "1 process x 2 streams": (1, None, None),
    "2 processes x 1 stream, ring env": (2, "env", None),
    "1 process x 1 stream": (1, None, "1"),
}
LAUNCHED = "2 processes x 1 stream, mlx.launch"  # with --with-launch (its cost is the launcher's own CPU)
BASE, TWO = "1 process x 2 streams", "2 processes x 1 stream, ring env"
WAIT = 2.0  # seconds rank 0 waits for rank 1 in the all-gather whose CPU cost is measured


def worker(args) -> None:
    """One rank of one timed run (started by ``main``, alone or under ``mlx.launch``)."""
    from phasegpt.batch import classify
    from phasegpt.distributed import World, world

    model = phasegpt.load(args.model or None, head=args.head)
    w = world()
    spent = [0.0]
    plain_gather = World.gather

    def timed(self, obj):  # every collective of the job goes through World.gather or all_sum
        t = time.perf_counter()
        try:
            return plain_gather(self, obj)
        finally:
            spent[0] += time.perf_counter() - t

    model.classify(["warm up the kernels", "and a second prompt"], batch_size=2)
    w.gather(0)  # start together
    World.gather = timed
    cpu0, t0 = time.process_time(), time.perf_counter()
    summary = classify.classify_file(args.input, args.output, model=model, batch_size=args.batch_size,
                                     resume=False)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    World.gather = plain_gather
    per_rank = w.gather({"seconds": seconds, "gather": spent[0], "cpu": cpu, "streams": w.streams()})
    result = {"rows": summary.rows, "ranks": per_rank}
    if args.plain and w.size == 1:
        rows = [json.loads(line) for line in Path(args.input).read_text().splitlines()]
        t0 = time.perf_counter()
        model.classify([r["prompt"] for r in rows], contexts=[r.get("context") for r in rows],
                       batch_size=args.batch_size)
        result["plain_seconds"] = time.perf_counter() - t0
    if w.rank == 0:
        print("RESULT " + json.dumps(result), flush=True)


def serial_costs(model, tmp: Path, n: int) -> dict[str, float]:
    """Microseconds per row of the parts of a job that do not shrink with more processes (reading,
    hashing and splitting the input on every rank; logging and merging on rank 0), and of the parts
    that are shared out (checking a row, counting its tokens), for the scaling model."""
    from phasegpt.batch.journal import Journal
    from phasegpt.batch.rows import Rows

    path = tmp / "serial.jsonl"
    write_rows(path, n, seed=1)
    verdict = model.classify(["a verdict to log"])[0].to_dict()
    out, clock = {}, time.process_time  # CPU time: the machine's other jobs stretch wall time
    t0 = clock()
    rows = Rows(path)
    out["read, hash, find the lines (every rank, every row)"] = clock() - t0
    t0 = clock()
    requests = [rows.request(i) for i in range(len(rows))]
    out["check a row (shared out)"] = clock() - t0
    t0 = clock()
    for _, prompt, context in requests:
        model.prepare(prompt, context)
    out["tokenize a row (shared out; again when it is classified)"] = clock() - t0
    log = Journal(tmp / "serial.out.partial", {"x": 1}, len(rows), resume=False)
    t0 = clock()
    for at in range(0, len(rows), 64):
        log.append((i, verdict) for i in range(at, min(at + 64, len(rows))))
    out["log a verdict (rank 0)"] = clock() - t0
    t0 = clock()
    log.merge(rows, {}, tmp / "serial.out")
    out["merge into the output (rank 0, at the end)"] = clock() - t0
    rows.close()
    return {k: 1e6 * v / n for k, v in out.items()}


def collectives_worker() -> None:
    """Time ``World.gather_bytes`` (all-gather of a payload from each rank) at a few sizes, and the
    CPU rank 0 spends waiting ``WAIT`` seconds for rank 1 in one."""
    from phasegpt.distributed import world

    w = world()
    out = {}
    for size in (1_000, 64_000, 1_000_000):
        data = b"x" * size
        w.gather_bytes(data)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(20):
            w.gather_bytes(data)
        out[str(size)] = [(time.perf_counter() - t0) / 20, (time.process_time() - c0) / 20]
    if w.rank == 1:  # rank 0 waits for it in the next all-gather: does waiting cost CPU?
        time.sleep(WAIT)
    t0, c0 = time.perf_counter(), time.process_time()
    w.gather_bytes(b"x")
    out["wait"] = [time.perf_counter() - t0, time.process_time() - c0]
    if w.rank == 0:
        print("RESULT " + json.dumps(out), flush=True)


def write_rows(path: Path, n: int, *, seed: int = 0) -> None:
    """``n`` rows of ``common.synthetic_prompts`` as a classify input file."""
    path.write_text("".join(json.dumps({"id": k, "prompt": p, "context": c}) + "\n"
                            for k, (p, c) in enumerate(common.synthetic_prompts(n, seed=seed))))


def ring(cmd: list[str], n: int, env: dict[str, str], hostfile: Path) -> tuple[int, str, str]:
    """``n`` copies of ``cmd`` as the ranks of a ring on loopback, started as ``mlx.launch`` would set
    them up (``MLX_RANK``, ``MLX_HOSTFILE``) but without it: (worst exit code, rank 0's stdout, all stderr)."""
    port = loopback_ports(n)
    hostfile.write_text(json.dumps([[f"127.0.0.1:{port + r}"] for r in range(n)]))
    ranks = [subprocess.Popen(cmd, env={**env, "MLX_RANK": str(r), "MLX_HOSTFILE": str(hostfile)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(n)]
    outs = [r.communicate() for r in ranks]
    return max(abs(r.returncode) for r in ranks), outs[0][0], "".join(e for _, e in outs)


def result(name: str, code: int, stdout: str, stderr: str) -> dict:
    """The last ``RESULT {...}`` line a run printed; exits with its output if it failed or printed none."""
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if code != 0 or not lines:
        raise SystemExit(f"{name} failed ({code}):\n{stdout[-2000:]}\n{stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def collectives(tmp: Path) -> dict[str, float]:
    return result("collectives", *ring([sys.executable, str(HERE), "--collectives"], 2, dict(os.environ),
                                       tmp / "collectives.hosts.json"))


def run(name: str, args, head: Path, data: Path, out: Path, plain: bool) -> dict:
    processes, start, streams = CONFIGS[name] if name in CONFIGS else (2, "launch", None)
    env = dict(os.environ)
    env.pop("PHASEGPT_CPU_STREAMS", None)
    if streams is not None:
        env["PHASEGPT_CPU_STREAMS"] = streams
    cmd = [sys.executable, str(HERE), "--worker", "--input", str(data), "--output", str(out), "--head", str(head),
           "--batch-size", str(args.batch_size)] + (["--model", args.model] if args.model else []) \
        + (["--plain"] if plain else [])
    before = _children_cpu()
    if start == "launch":
        cmd = [str(Path(sys.executable).with_name("mlx.launch")), "-n", str(processes), "-p",
               str(loopback_ports(processes)), "--"] + cmd
    if start == "env":  # what mlx.launch sets up for the ring backend on one host, without the launcher
        code, stdout, stderr = ring(cmd, processes, env, out.with_suffix(".hosts.json"))
    else:  # stdin: a pipe that never has data (mlx.launch forwards stdin to the ranks)
        p = subprocess.run(cmd, env=env, stdin=subprocess.PIPE, capture_output=True, text=True)
        code, stdout, stderr = p.returncode, p.stdout, p.stderr
    return {**result(name, code, stdout, stderr), "all_cpu": _children_cpu() - before}


def _children_cpu() -> float:
    """CPU seconds of every finished child process so far (launcher and ranks, model load included)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def launcher_cpu(seconds: float = 10.0) -> float:
    """Cores that ``mlx.launch -n 2`` keeps busy by itself while its two ranks sleep (CPU s / wall s)."""
    launch = str(Path(sys.executable).with_name("mlx.launch"))
    sleep = [sys.executable, "-c", f"import time; time.sleep({seconds})"]
    alone = _children_cpu()
    subprocess.run(sleep, check=True)
    bare = _children_cpu() - alone  # a rank's own start-up, counted twice below
    before, t0 = _children_cpu(), time.perf_counter()
    subprocess.run([launch, "-n", "2", "-p", str(loopback_ports(2)), "--", *sleep], stdin=subprocess.PIPE, check=True,
                   capture_output=True)
    return (_children_cpu() - before - 2 * bare) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="model folder/GGUF (default: the packaged SmolLM2)")
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--with-launch", action="store_true", help=f"also time '{LAUNCHED}'")
    ap.add_argument("--serial-rows", type=int, default=20_000, help="rows of the file the serial costs are timed on")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--layers", default="10,20", help="layers the (random) head taps")
    ap.add_argument("--only-collectives", action="store_true", help="time the all-gather alone (no model)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--collectives", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    ap.add_argument("--head", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.collectives:
        return collectives_worker()

    tmp = Path(tempfile.mkdtemp(prefix="phasegpt-dist-bench-"))
    if args.only_collectives:
        print(common.machine_line())
        print_collectives(collectives(tmp))
        return
    model = common.load(args.model)
    head = common.random_head(model, tmp / "head", layers=[int(x) for x in args.layers.split(",")])
    data = tmp / "rows.jsonl"
    write_rows(data, args.rows)
    del model
    print(common.machine_line())
    print(f"{args.rows} rows, batch size {args.batch_size}, {args.rounds} rounds, model {args.model or 'SmolLM2-135M'}")
    names = list(CONFIGS) + ([LAUNCHED] if args.with_launch else [])
    results: dict[str, list[dict]] = {name: [] for name in names}
    reference = None
    for r in range(args.rounds):
        for name in common.order(r, names):
            out = tmp / f"out-{len(results[name])}-{name.replace(' ', '_')}.jsonl"
            res = run(name, args, head, data, out, plain=name == BASE)
            text = out.read_bytes()
            reference = reference or text
            res["identical"] = text == reference
            results[name].append(res)
            rank0 = res["ranks"][0]
            print(f"  round {r}: {name}: {res['rows'] / rank0['seconds']:.2f} rows/s, identical {res['identical']}",
                  flush=True)

    base = median([res["rows"] / res["ranks"][0]["seconds"] for res in results[BASE]])
    rows = []
    for name, runs in results.items():
        rates = [res["rows"] / res["ranks"][0]["seconds"] for res in runs]
        sync = [max(rk["gather"] / rk["seconds"] for rk in res["ranks"]) for res in runs]
        cpu = [sum(rk["cpu"] for rk in res["ranks"]) / res["rows"] * 1000 for res in runs]
        whole = [res["all_cpu"] for res in runs]
        rows.append([name, f"{median(rates):.2f} ({spread(rates)})", f"{median(rates) / base:.3f}",
                     f"{100 * median(sync):.1f}%", f"{median(cpu):.0f}", f"{median(whole):.0f}",
                     "yes" if all(res["identical"] for res in runs) else "**no**"])
    print()
    print(table(["configuration", "rows/s (range)", "vs 1 x 2", "time in collectives (worst rank)",
                 "ranks' CPU ms/row", "CPU s, whole run", "output identical"], rows))
    plain = [res["rows"] / res["plain_seconds"] for res in results[BASE] if "plain_seconds" in res]
    if plain:
        print(f"\nModel.classify on the same rows in the 1 x 2 process: {median(plain):.2f} rows/s "
              f"(classify_file / Model.classify = {base / median(plain):.3f})")
    print(f"\nmlx.launch -n 2 around two sleeping ranks keeps {launcher_cpu():.2f} cores busy by itself")
    for name in [TWO] + ([LAUNCHED] if args.with_launch else []):
        two = median([res["rows"] / res["ranks"][0]["seconds"] for res in results[name]])
        print(f"{name} / {BASE} = {two / base:.3f} (target: >= 1.0 within noise)")

    model = phasegpt.load(args.model or None, head=head)
    per_row = len(json.dumps(model.classify(["one verdict"], batch_size=1)[0].to_dict()))
    print(f"\nSerial costs on a {args.serial_rows:,}-row file (microseconds per row):")
    print(table(["step", "us/row"], [[k, f"{v:.1f}"] for k, v in serial_costs(model, tmp, args.serial_rows).items()]))
    coll = collectives(tmp)
    print_collectives(coll)
    print(f"a verdict is {per_row} bytes of JSON: {1e6 * coll['1000000'][0] / (1e6 / per_row):.1f} us per row "
          "gathered, at 1 MB per exchange")


def print_collectives(coll: dict) -> None:
    wait, wait_cpu = coll.pop("wait")
    print("\nAll-gather between 2 ranks on loopback (ring), per call: " + ", ".join(
        f"{int(k) // 1000} kB {1000 * wall:.2f} ms ({1000 * cpu:.2f} ms CPU)" for k, (wall, cpu) in coll.items()))
    print(f"rank 0 waiting {wait:.2f} s for rank 1 in an all-gather used {wait_cpu:.2f} s of CPU")


if __name__ == "__main__":
    main()
