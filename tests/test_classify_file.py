"""classify_file and `phasegpt classify` on the tiny model in one process: rows, row errors, the log, resuming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import phasegpt
from phasegpt.batch import RowError, classify_file
from phasegpt.batch.journal import Journal, journal_path
from phasegpt.cli import cli
from phasegpt.verdict import LABELS

HISTORY = [{"role": "user", "content": "Give me a slogan for a bike shop."},
           {"role": "assistant", "content": "Keep rolling."}]


def write_rows(path: Path, rows: list) -> Path:
    """Rows as JSONL; a str is written as the raw line (bad JSON), bytes as raw bytes."""
    data = b"".join((r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode()) + b"\n"
                    for r in rows)
    path.write_bytes(data)
    return path


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def many_rows(n: int) -> list[dict]:
    words = ["bread", "wifi", "lottery", "lock", "garden", "tax", "river", "poem"]
    return [{"id": i, "prompt": f"How do I {words[i % 8]} a {words[(i * 3) % 8]}" + " and then" * (i % 13) + "?",
             **({"context": [f"Document {i} says the {words[i % 8]} is blue."]} if i % 5 == 0 else {})}
            for i in range(n)]


def test_output_is_the_input_rows_plus_verdicts_in_order(tiny_model, tmp_path):
    rows = [{"id": 1, "prompt": "hello", "extra": {"keep": [1, 2]}},
            {"id": 2, "prompt": "What does it say?", "context": ["Cats purr."]},
            {"id": 3, "messages": [*HISTORY, {"role": "user", "content": "Make it rhyme."}]},
            {"id": 4, "prompt": "Who won?", "context": {"id": "kb-1", "text": "The home team won."}}]
    src = write_rows(tmp_path / "in.jsonl", rows[:2] + [""] + rows[2:])  # a blank line is not a row
    summary = classify_file(src, tmp_path / "out.jsonl", model=tiny_model, batch_size=2)
    out = read_rows(tmp_path / "out.jsonl")
    assert [{k: v for k, v in r.items() if k != "verdict"} for r in out] == rows
    expected = tiny_model.classify([r.get("prompt") or r.get("messages") for r in rows],
                                   contexts=[r.get("context") for r in rows])
    for row, v in zip(out, expected):  # batched differently, so equal to float rounding
        assert row["verdict"]["label"] == v.label and row["verdict"]["evidence"] == list(v.evidence)
        assert max(abs(row["verdict"]["probs"][k] - v.probs[k]) for k in LABELS) < 1e-4
    assert (summary.rows, summary.classified, summary.skipped, summary.resumed) == (4, 4, 0, 0)
    assert not journal_path(tmp_path / "out.jsonl").exists()  # the log goes once the output is in place


BAD_ROWS = [  # (line, field, what the message says)
    ('{"id": 2, "prompt": "hi", "context": [3]}', "context", "context document 0"),
    ('{"id": 3, "prompt": "   "}', "prompt", "the prompt is empty"),
    ('{"id": 4, "prompt": "far too long ' + "far too long " * 2000 + '"}', "prompt", "reads at most"),
    ('{"id": 5, "prompt": "hi", "context": ["' + "long document " * 2000 + '"]}', "context", "reads at most"),
    ('{"id": 6, "prompt": oops}', None, "not valid JSON"),
    (b'{"id": 7, "prompt": "\xff hack wifi"}', None, "not UTF-8"),
    ('["a", "list"]', None, "not an object"),
    ('{"id": 9, "text": "no prompt"}', "prompt", 'needs a "prompt" string or a "messages" list'),
    ('{"id": 10, "prompt": 42}', "prompt", "not a string"),
    ('{"id": 11, "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}',
     "messages", "must end with a user message"),
]


@pytest.mark.parametrize("line, field, problem", BAD_ROWS)
def test_a_bad_row_fails_naming_file_line_and_field(tiny_model, tmp_path, line, field, problem):
    src = write_rows(tmp_path / "in.jsonl", [{"prompt": "fine"}, line, {"prompt": "also fine"}])
    with pytest.raises(RowError) as e:
        classify_file(src, tmp_path / "out.jsonl", model=tiny_model)
    assert str(e.value).startswith(f"{src}:2: " + (f"{field}: " if field else ""))
    assert problem in str(e.value) and "--on-error skip" in str(e.value)
    assert (e.value.line, e.value.field) == (2, field)
    assert not (tmp_path / "out.jsonl").exists()


def test_rows_are_checked_before_the_model_loads(tmp_path):
    src = write_rows(tmp_path / "in.jsonl", [{"prompt": "fine"}] * 3 + ['{"prompt": "x", "context": 5}'])
    with pytest.raises(RowError, match=r"in.jsonl:4: context: "):
        classify_file(src, tmp_path / "out.jsonl", model=lambda: pytest.fail("loaded the model before checking"))


def test_skip_keeps_every_row_in_order_and_counts_the_bad_ones(tiny_model, tmp_path):
    lines = [{"id": 1, "prompt": "fine"}] + [line for line, _, _ in BAD_ROWS] + [{"id": 12, "prompt": "fine too"}]
    src = write_rows(tmp_path / "in.jsonl", lines)
    summary = classify_file(src, tmp_path / "out.jsonl", model=tiny_model, on_error="skip")
    out = read_rows(tmp_path / "out.jsonl")
    assert len(out) == len(lines)
    assert out[0]["id"] == 1 and "verdict" in out[0] and out[-1]["id"] == 12 and "verdict" in out[-1]
    for row, (line, field, problem) in zip(out[1:-1], BAD_ROWS):
        assert "verdict" not in row and row["error"]["field"] == field and problem in row["error"]["message"]
    assert [row["error"]["line"] for row in out[1:-1]] == list(range(2, 2 + len(BAD_ROWS)))
    assert out[1]["id"] == 2 and out[1]["context"] == [3]  # a bad row's fields are kept
    assert (summary.classified, summary.skipped) == (2, len(BAD_ROWS))
    assert [e.line for e in summary.errors] == list(range(2, 2 + len(BAD_ROWS)))


def test_cli_skip_names_each_bad_row_and_sums_up(tiny_args, tmp_path):
    src = write_rows(tmp_path / "in.jsonl", [{"prompt": "fine"}, '{"prompt": "x", "context": [3]}', {"prompt": ""}])
    out = tmp_path / "out.jsonl"
    r = CliRunner().invoke(cli, ["classify", str(src), *tiny_args, "-o", str(out), "--on-error", "skip"])
    assert r.exit_code == 0, r.output
    assert f"skipped {src}:2: context: context document 0" in r.output
    assert f"skipped {src}:3: prompt: the prompt is empty" in r.output
    assert "1 verdicts, skipped 2 bad rows" in r.output
    assert [("verdict" in row, "error" in row) for row in read_rows(out)] == [(True, False), (False, True), (False, True)]
    r = CliRunner().invoke(cli, ["classify", str(src), *tiny_args, "-o", str(out)])  # default: fail
    assert r.exit_code == 1 and f"Error: {src}:2: context: " in r.output and "Traceback" not in r.output
    assert "(1 more bad rows)" in r.output


def test_cli_bad_byte_is_one_line(tiny_args, tmp_path):
    src = write_rows(tmp_path / "in.jsonl", [b'{"prompt": "\xff hack wifi"}'])
    r = CliRunner().invoke(cli, ["classify", str(src), *tiny_args])
    assert r.exit_code == 1 and r.output.strip().splitlines() == [
        f"Error: {src}:1: not UTF-8 text (byte 0xff at column 13); save the file as UTF-8; fix the row, "
        "or skip bad rows with --on-error skip (on_error='skip')"]


def test_cli_writes_stdout_without_output(tiny_args, tmp_path):
    src = write_rows(tmp_path / "in.jsonl", [{"id": 1, "prompt": "hello"}, {"id": 2, "prompt": "bye"}])
    r = CliRunner().invoke(cli, ["classify", str(src), *tiny_args])
    assert r.exit_code == 0
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [row["id"] for row in rows] == [1, 2] and all(row["verdict"]["label"] in LABELS for row in rows)


def stopped_log(model, src: Path, out: Path, batch_size: int, verdicts: dict[int, dict]) -> Path:
    """What a run stopped after logging ``verdicts`` leaves beside ``out``, written by the job's own Journal."""
    from phasegpt.batch.classify import _header
    from phasegpt.batch.rows import Rows

    with Rows(src) as rows:
        log = Journal(journal_path(out), _header(model, rows, batch_size), len(rows), resume=False)
    log.append(verdicts.items())
    log.close()
    return log.path


def test_resume_keeps_the_logged_rows_and_drops_a_torn_line(tiny_model, tmp_path):
    src = write_rows(tmp_path / "in.jsonl", many_rows(40))
    whole, out = tmp_path / "whole.jsonl", tmp_path / "out.jsonl"
    classify_file(src, whole, model=tiny_model, batch_size=3)
    done = read_rows(whole)
    log = stopped_log(tiny_model, src, out, 3, {i: done[i]["verdict"] for i in (5, 17, 30)})
    with log.open("a") as f:
        f.write('{"i": 2, "verd')  # the write in flight when the process was killed
    summary = classify_file(src, out, model=tiny_model, batch_size=3)
    assert summary.resumed == 3 and summary.classified == 40
    assert out.read_bytes() == whole.read_bytes() and not log.exists()


def test_a_log_cut_off_in_its_header_starts_over(tiny_model, tmp_path):
    src = write_rows(tmp_path / "in.jsonl", many_rows(5))
    out = tmp_path / "out.jsonl"
    journal_path(out).write_text('{"phasegpt_journal": 1, "input_sh')  # killed while writing the header
    summary = classify_file(src, out, model=tiny_model)
    assert summary.resumed == 0 and len(read_rows(out)) == 5


def test_a_log_of_another_run_is_never_resumed(tiny_model, tmp_path):
    src = write_rows(tmp_path / "in.jsonl", many_rows(6))
    out = tmp_path / "out.jsonl"
    classify_file(src, out, model=tiny_model, batch_size=2)
    verdict = read_rows(out)[0]["verdict"]
    out.unlink()
    stopped_log(tiny_model, src, out, 2, {0: verdict})
    with pytest.raises(ValueError, match="another batch size; run with the same input and options to resume"):
        classify_file(src, out, model=tiny_model, batch_size=3)
    write_rows(src, many_rows(7))
    with pytest.raises(ValueError, match="another input file content, number of rows"):
        classify_file(src, out, model=tiny_model, batch_size=2)
    summary = classify_file(src, out, model=tiny_model, batch_size=3, resume=False)
    assert summary.resumed == 0 and len(read_rows(out)) == 7 and not journal_path(out).exists()


def test_a_second_job_on_the_same_output_is_refused(tiny_model, tmp_path):
    src = write_rows(tmp_path / "in.jsonl", many_rows(4))
    out = tmp_path / "out.jsonl"
    held = Journal(journal_path(out), {"x": 1}, 4, resume=False)
    try:
        with pytest.raises(ValueError, match="another job is writing out.jsonl"):
            classify_file(src, out, model=tiny_model)
    finally:
        held.close()


def test_bad_arguments(tiny_model, tmp_path):
    src = write_rows(tmp_path / "in.jsonl", many_rows(2))
    with pytest.raises(ValueError, match="on_error must be 'fail' or 'skip'"):
        classify_file(src, tmp_path / "o.jsonl", model=tiny_model, on_error="ignore")
    with pytest.raises(ValueError, match="batch_size must be a whole number"):
        classify_file(src, tmp_path / "o.jsonl", model=tiny_model, batch_size=0)
    with pytest.raises(ValueError, match="is the input file"):
        classify_file(src, src, model=tiny_model)
    with pytest.raises(ValueError, match="is a folder"):
        classify_file(src, tmp_path, model=tiny_model)
    with pytest.raises(FileNotFoundError):
        classify_file(tmp_path / "missing.jsonl", tmp_path / "o.jsonl", model=tiny_model)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="has no rows"):
        classify_file(tmp_path / "empty.jsonl", tmp_path / "o.jsonl", model=tiny_model)
    assert phasegpt.classify_file is classify_file


@pytest.fixture()
def tiny_args(tiny_dir, tiny_model, tmp_path):
    head = tiny_model.head.save(tmp_path / "head")
    return ["--model", str(tiny_dir), "--head", str(head)]


def test_ctrl_c_keeps_what_was_done_and_the_same_command_resumes(tiny_model, tiny_args, tmp_path):
    """A real SIGINT to a real `phasegpt classify` process, then the same command again.

    The job starts with SIGINT's default action: a process started in the background by a
    non-interactive shell (a CI script's ``cmd &``) ignores SIGINT, its children inherit that, and
    Python then installs no KeyboardInterrupt handler, so the signal was ignored and the job ran on."""
    n = 150
    src = write_rows(tmp_path / "in.jsonl", many_rows(n))
    whole, out = tmp_path / "whole.jsonl", tmp_path / "out.jsonl"
    exe = [str(Path(sys.executable).with_name("phasegpt")), "classify", str(src), *tiny_args, "--batch-size", "1"]
    classify_file(src, whole, model=tiny_model, batch_size=1)  # the same model and head, in this process
    p = subprocess.Popen([*exe, "-o", str(out)], stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = journal_path(out)
    deadline = time.monotonic() + 120
    while p.poll() is None and time.monotonic() < deadline and _records(log) < 1:
        time.sleep(0.02)
    assert p.poll() is None, "the job ended before this test saw its first logged verdicts"
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    done = _records(log)
    assert p.returncode == 130 and f"kept in {log}: run the same command again to resume" in err, err
    assert 0 < done < n and not out.exists()  # stopped midway, nothing half-written
    r = subprocess.run([*exe, "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and f"{done} of them from an earlier run" in r.stderr, r.stderr
    assert out.read_bytes() == whole.read_bytes()


def _records(log: Path) -> int:
    try:
        return max(0, log.read_bytes().count(b"\n") - 1)  # less the header
    except FileNotFoundError:
        return 0
