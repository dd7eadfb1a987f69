"""Two ranks on 127.0.0.1 with the ring backend: `phasegpt classify` and `phasegpt eval` under mlx.launch, and a
lost rank whose job is resumed, on the tiny model (real processes, real sockets, real SIGKILL)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from phasegpt.batch import classify_file
from phasegpt.batch.journal import journal_path
from phasegpt.distributed import World, loopback_ports, shard_by_tokens
from tests.test_classify_file import many_rows, write_rows

BIN = Path(sys.executable).parent
TIMEOUT = 180


def launch(*args: str, n: int = 2, env: dict | None = None) -> subprocess.CompletedProcess:
    """``mlx.launch -n N -- phasegpt ARGS`` (ring backend over loopback), as a user types it."""
    cmd = [str(BIN / "mlx.launch"), "-n", str(n), "-p", str(loopback_ports(n)), "--", str(BIN / "phasegpt"), *args]
    # a pipe that never has data on stdin: mlx.launch forwards stdin to the ranks
    return subprocess.run(cmd, stdin=subprocess.PIPE, capture_output=True, text=True, timeout=TIMEOUT,
                          env=env or os.environ.copy())


@pytest.fixture()
def tiny_args(tiny_dir, tiny_model, tmp_path):
    head = tiny_model.head.save(tmp_path / "head")
    return ["--model", str(tiny_dir), "--head", str(head)]


def test_two_ranks_write_what_one_process_writes(tiny_model, tiny_args, tmp_path):
    src = write_rows(tmp_path / "in.jsonl", many_rows(60) + ['{"prompt": ""}'])
    single = tmp_path / "single.jsonl"
    classify_file(src, single, model=tiny_model, batch_size=3, on_error="skip")
    out = tmp_path / "two.jsonl"
    r = launch("classify", str(src), *tiny_args, "-o", str(out), "--batch-size", "3", "--on-error", "skip")
    assert "exited with code" not in r.stderr, r.stderr  # mlx.launch exits 0 even when a rank fails
    assert out.read_bytes() == single.read_bytes()  # row for row, bit for bit
    assert r.stderr.count("wrote 61 rows") == 1 and r.stderr.count("skipped") == 2  # rank 0 reports, once
    shown = re.findall(r"classifying  60/60 rows  \(r0 (\d+), r1 (\d+)\)", r.stderr)  # rank 0 shows both ranks'
    assert shown and all(int(a) > 0 and int(b) > 0 and int(a) + int(b) == 60 for a, b in shown), r.stderr


def test_a_bad_row_is_reported_once_and_nothing_is_written(tiny_args, tmp_path):
    src = write_rows(tmp_path / "in.jsonl", many_rows(6) + ['{"prompt": "x", "context": [1]}'])
    out = tmp_path / "out.jsonl"
    r = launch("classify", str(src), *tiny_args, "-o", str(out))
    # mlx.launch itself exits 0 whatever its ranks do; rank 0 reports (and exits 1), the others stay quiet
    assert r.stderr.count(f"Error: {src}:7: context: ") == 1 and r.stderr.count("Error") == 1, r.stderr
    assert "rank 0 exited with code 1" in r.stderr and "rank 1 exited with code 1" not in r.stderr
    assert not out.exists() and not journal_path(out).exists()


def test_a_lost_rank_stops_the_job_and_a_rerun_resumes_it(tiny_model, tiny_args, tmp_path):
    """Rank 1 is SIGKILLed mid-job (a lost host); rank 0 stops with the resume hint; one process finishes the
    job and the output equals an uninterrupted run's."""
    n = 150
    src = write_rows(tmp_path / "in.jsonl", many_rows(n))
    whole, out = tmp_path / "whole.jsonl", tmp_path / "out.jsonl"
    classify_file(src, whole, model=tiny_model, batch_size=1)
    port = loopback_ports(2)
    hosts = tmp_path / "hosts.json"  # what mlx.launch hands the ring backend: one "ip:port" list per rank
    hosts.write_text(json.dumps([[f"127.0.0.1:{port}"], [f"127.0.0.1:{port + 1}"]]))
    cmd = [str(BIN / "phasegpt"), "classify", str(src), *tiny_args, "-o", str(out), "--batch-size", "1"]
    ranks = [subprocess.Popen(cmd, env={**os.environ, "MLX_RANK": str(r), "MLX_HOSTFILE": str(hosts)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        log = journal_path(out)
        deadline = time.monotonic() + TIMEOUT
        while ranks[0].poll() is None and time.monotonic() < deadline and _records(log) < 1:
            time.sleep(0.02)
        ranks[1].send_signal(signal.SIGKILL)
        _, err = ranks[0].communicate(timeout=60)
    finally:
        for p in ranks:
            p.kill()
            p.communicate()
    done = _records(log)
    assert ranks[0].returncode == 1 and "lost contact with another process of the job" in err, err
    assert "run the same command again to resume" in err
    assert 0 < done < n and not out.exists()  # stopped midway; nothing half-written
    summary = classify_file(src, out, model=tiny_model, batch_size=1)  # one process takes over
    assert summary.resumed == done and out.read_bytes() == whole.read_bytes()


def test_ranks_running_different_jobs_are_stopped_before_any_work(tiny_args, tmp_path):
    src = write_rows(tmp_path / "in.jsonl", many_rows(8))
    out = tmp_path / "out.jsonl"
    port = loopback_ports(2)
    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps([[f"127.0.0.1:{port}"], [f"127.0.0.1:{port + 1}"]]))
    ranks = [subprocess.Popen([str(BIN / "phasegpt"), "classify", str(src), *tiny_args, "-o", str(out),
                               "--batch-size", str(2 + r)], stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "MLX_RANK": str(r), "MLX_HOSTFILE": str(hosts)}) for r in range(2)]
    errs = [p.communicate(timeout=TIMEOUT)[1] for p in ranks]
    assert ranks[0].returncode == 1 and "rank 1 runs another job than rank 0 (another batch size)" in errs[0]
    assert ranks[1].returncode == 0 and "Error" not in errs[1]  # rank 0 reports
    assert not out.exists() and not journal_path(out).exists()


def _records(log: Path) -> int:
    try:
        return max(0, log.read_bytes().count(b"\n") - 1)  # less the header
    except FileNotFoundError:
        return 0


def test_eval_over_two_ranks_reports_the_metrics_of_all_rows(tiny_dir, tiny_model, tmp_path):
    from click.testing import CliRunner

    from phasegpt.cli import cli

    labels = ["safety", "epistemic", "missing_context", "answer"]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({**row, "label": labels[row["id"] % 4], "source": "tiny"}) + "\n"
                            for row in many_rows(40)))
    head = str(tiny_model.head.save(tmp_path / "head"))
    args = ["eval", "--model", str(tiny_dir), "--head", head, "-d", str(data), "--split", "all"]
    one = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert one.exit_code == 0, one.output
    home = tmp_path / "home-two"  # its own feature cache: the two ranks must compute, not read the one above
    two = launch(*args, env={**os.environ, "PHASEGPT_HOME": str(home)})
    assert "exited with code" not in two.stderr, two.stderr
    assert two.stdout.count("n=40 (excluded 0)") == 1  # rank 0 reports, over all rows
    assert two.stdout == one.stdout  # accuracy, macro-F1, ECE, per class and source (to 3 decimals)
    # both ranks' features landed in the one cache their host shares
    keys = [k for f in (home / "features").glob("*.npz") for k in np.load(f)["keys"].tolist()]
    assert len(set(keys)) == 40


def test_train_head_over_two_ranks_writes_the_head_one_process_writes(tiny_dir, tmp_path):
    """The ranks share the feature extraction (each computes its batches, all get every feature); rank 0 fits
    the head from the same bits a single process extracts, so the heads are equal byte for byte."""
    from click.testing import CliRunner

    from phasegpt.cli import cli
    from tests.test_cli import _write_data

    data = _write_data(tmp_path / "data.jsonl")
    args = ["train-head", "--model", str(tiny_dir), "-d", str(data), "--batch-size", "4"]
    one = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "one")], catch_exceptions=False)
    assert one.exit_code == 0, one.output
    home = tmp_path / "home-two"
    two = launch(*args, "-o", str(tmp_path / "two"), env={**os.environ, "PHASEGPT_HOME": str(home)})
    assert "exited with code" not in two.stderr, two.stderr
    assert two.stdout.count("wrote ") == 1 and two.stderr.count("skipped 1 examples longer") == 1  # rank 0 says it
    assert "extracting features  36/36 rows  (r0 " in two.stderr  # the training rows, over both ranks
    assert (tmp_path / "two" / "head.safetensors").read_bytes() == (tmp_path / "one" / "head.safetensors").read_bytes()
    config = {k: v for k, v in json.loads((tmp_path / "two" / "head.json").read_text()).items() if k != "training"}
    assert config == {k: v for k, v in json.loads((tmp_path / "one" / "head.json").read_text()).items()
                      if k != "training"}
    keys = [k for f in (home / "features").glob("*.npz") for k in np.load(f)["keys"].tolist()]
    assert len(keys) == 48  # both ranks' features, in the one cache the two share on this host


def test_shard_by_tokens_balances_tokens_not_rows():
    lengths = [500, 20, 20, 20, 20, 20, 480, 30, 10]
    shares = shard_by_tokens(lengths, 2)
    assert sorted(i for s in shares for i in s) == list(range(len(lengths)))
    totals = [sum(lengths[i] for i in s) for s in shares]
    assert totals == [560, 560] and shares == [[0, 1, 3, 5], [2, 4, 6, 7, 8]]
    alone = World(None, 0, 1)
    assert alone.gather_in_order([[2, 0, 1]], ["c", "a", "b"]) == ["a", "b", "c"]
    assert alone.gather({"x": 1}) == [{"x": 1}] and alone.broadcast(5) == 5
