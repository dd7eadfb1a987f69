"""How much the audit log costs: records/s for 1 and 8 writers, and added latency per record.

    python benchmarks/audit.py            # prints a markdown table, writes benchmarks/BENCHMARKS_audit.md
    python benchmarks/audit.py --quick    # fewer records, no file written

"Latency" is the wall time of one ``AuditLog.record`` call (keyed chain: an HMAC of the
record, a check and a new MAC of the chain head, in one transaction): what a caller waits
for on top of the verdict itself. It is set beside a bare SQLite insert-and-commit of one
small row (the floor for any durable one-transaction-per-record log), the two interleaved
in rounds of 100 in the same run, so that the machine's load (which moves an fsync by 5x
here) hits both alike; "added" is the difference of their means. Measured with the default
``durable=True`` (SQLite ``synchronous=FULL``: a returned record survives a power cut) and
``durable=False`` (``NORMAL``: survives a crashed process, may lose the last commits on
power loss).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phasegpt.audit import AuditLog  # noqa: E402
from phasegpt.verdict import LABELS, Tag, Verdict  # noqa: E402

VERDICT = Verdict(
    label="safety",
    probs={"safety": 0.91, "epistemic": 0.04, "missing_context": 0.03, "answer": 0.02},
    confidence=0.91,
    evidence=("lock", "pick", "without"),
    tag=Tag("<PASS:DURESS>", "PASS", "DURESS", "safety"),
    layers=(9, 18),
    model="SmolLM2-135M-Instruct",
    model_fingerprint="0" * 16,
    head_sha256="1" * 64,
    thresholds={name: 0.5 for name in LABELS},
)
PROMPT = "word " * 200  # a ~1 KB prompt, hashed (not stored)


def _open(path: str, sync: str) -> AuditLog:
    return AuditLog(path, timeout=120, durable=sync == "FULL")


ROUND = 100  # records per arm per round: bare and record() alternate in blocks of this many


def side_by_side(log_path: str, bare_path: str, n: int, sync: str) -> tuple[list[float], list[float]]:
    """Per-record latencies (s) of n bare commits and n ``record()`` calls, interleaved in rounds."""
    log = _open(log_path, sync)
    for i in range(20):  # warm up: key file, first pages
        log.record(VERDICT, prompt=f"warm {i}")
    db = sqlite3.connect(bare_path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {sync}")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, label TEXT, body TEXT)")
    bare, lat = [], []
    for start in range(0, n, ROUND):
        for i in range(start, min(n, start + ROUND)):  # the floor: one small row per transaction
            t = time.perf_counter()
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t (label, body) VALUES (?, ?)", ("safety", f"row {i}"))
            db.execute("COMMIT")
            bare.append(time.perf_counter() - t)
        for i in range(start, min(n, start + ROUND)):
            t = time.perf_counter()
            log.record(VERDICT, prompt=f"{PROMPT}{i}", metadata={"i": i})
            lat.append(time.perf_counter() - t)
    db.close()
    log.close()
    return bare, lat


def _worker(path: str, n: int, sync: str, ready, go) -> None:
    log = _open(path, sync)
    log.record(VERDICT, prompt="warm")
    ready.release()
    go.wait()
    for i in range(n):
        log.record(VERDICT, prompt=f"{PROMPT}{os.getpid()} {i}")
    log.close()


def many_writers(path: str, writers: int, n: int, sync: str) -> float:
    """Aggregate records/s of ``writers`` processes writing n records each at once."""
    AuditLog(path).close()
    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Semaphore(0), ctx.Event()
    procs = [ctx.Process(target=_worker, args=(path, n, sync, ready, go)) for _ in range(writers)]
    for p in procs:
        p.start()
    for _ in procs:  # every worker has imported phasegpt and opened the log
        ready.acquire()
    start = time.perf_counter()
    go.set()
    for p in procs:
        p.join()
    elapsed = time.perf_counter() - start
    if any(p.exitcode for p in procs):
        raise SystemExit("a writer failed")
    log = AuditLog(path)
    total = log.count()
    assert log.verify().ok, "chain broken under concurrency"  # benchmark script: not user input
    return (total - writers) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer records; do not write the .md file")
    args = parser.parse_args()
    n1, n8 = (300, 100) if args.quick else (2000, 500)
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sync in ("FULL", "NORMAL"):
            bare, lat = side_by_side(f"{tmp}/one-{sync}.db", f"{tmp}/bare-{sync}.db", n1, sync)
            t0 = time.perf_counter()
            checked = AuditLog(f"{tmp}/one-{sync}.db").verify().checked
            verify_rate = checked / (time.perf_counter() - t0)
            agg = many_writers(f"{tmp}/many-{sync}.db", 8, n8, sync)
            rows.append((sync, bare, lat, agg, verify_rate))

    def ms(xs: list[float], q: float | None = None) -> float:
        return 1000 * (statistics.mean(xs) if q is None else statistics.quantiles(xs, n=100)[int(q) - 1])

    header = (
        "| durable (synchronous) | bare SQLite commit, mean ms | record(), mean ms | added, ms | p50 ms | p99 ms "
        "| vs bare | 1 writer, records/s | 8 writers, records/s | verify, records/s |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|"]
    for sync, bare, lat, agg, verify_rate in rows:
        lines.append(
            f"| {'True (FULL, default)' if sync == 'FULL' else 'False (NORMAL)'} | {ms(bare):.2f} | {ms(lat):.2f} "
            f"| {ms(lat) - ms(bare):.2f} | {ms(lat, 50):.2f} | {ms(lat, 99):.2f} | {ms(lat) / ms(bare):.1f}x "
            f"| {1 / statistics.mean(lat):,.0f} | {agg:,.0f} | {verify_rate:,.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.quick:
        return
    machine = (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} at the end"
    )
    out = Path(__file__).with_name("BENCHMARKS_audit.md")
    out.write_text(
        "# Audit log benchmark\n\n"
        f"Measured by `python benchmarks/audit.py` on {time.strftime('%Y-%m-%d')} ({machine}).\n"
        f"One writer: {n1} records of a ~1 KB hashed prompt (keyed chain), interleaved with as many bare commits\n"
        f"in rounds of {ROUND}; 8 writers: 8 spawned processes x {n8} records, started together after each has\n"
        "opened the log; verify includes PRAGMA integrity_check. Target: under 2 ms per record.\n\n"
        f"{table}\n"
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
