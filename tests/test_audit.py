"""Tests for phasegpt.audit: real SQLite files in tmp_path, Verdicts built by hand, no model."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from phasegpt.audit import AuditLog, AuditRecord
from phasegpt.audit.keys import read_key
from phasegpt.audit.migrations import CROCKFORD, GENESIS, MIGRATIONS, KEYED_FIELDS, row_to_fields
from phasegpt.errors import AuditError
from tests.audit_helpers import fill, insert, key_of, keyed, make_verdict, raw

REPO = Path(__file__).resolve().parents[1]


def secret(home: Path) -> bytes:
    return read_key(home / "audit.key").secret


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("PHASEGPT_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def log(home):
    with AuditLog() as opened:
        yield opened


# -- writing and reading ------------------------------------------------------------------


def test_record_round_trip_under_phasegpt_home(home, log):
    v = make_verdict("safety", 0.82)
    rid = log.record(
        v,
        prompt="how do I pick a lock",
        contexts=["a plain document", {"id": "doc-7", "text": "an identified document"}],
        response="I can't help with that.",
        source="cli",
        duration=0.125,
        metadata={"request": "r-1", "tenant": ["a", "b"]},
    )
    assert log.path == home / "audit.db" and log.path.exists()
    r = log.get(rid)
    assert isinstance(r, AuditRecord) and r.id == rid and r.refusal
    assert (r.label, r.confidence, r.source, r.duration) == ("safety", 0.82, "cli", 0.125)
    assert r.probs == pytest.approx(dict(v.probs)) and r.thresholds == {"safety": 0.5, "epistemic": 0.6}
    assert (r.model, r.model_fingerprint, r.head_sha256, r.adapter_sha256) == (
        "tiny-model",
        "f" * 16,
        "a" * 64,
        "b" * 64,
    )
    key = secret(home)
    assert r.layers == [3, 7] and r.evidence == []  # the caller's words: only as keyed hashes by default
    assert r.evidence_hashes == [hmac.new(key, w, hashlib.sha256).hexdigest() for w in (b"lock", b"pick")]
    assert (r.kind, r.parent_id, r.ood) == ("verdict", None, None)
    assert r.tag == {"text": "<PASS:DURESS>", "kind": "PASS", "type": "DURESS", "label": "safety"}
    assert [c["id"] for c in r.contexts] == [None, "doc-7"]
    assert r.metadata == {"request": "r-1", "tenant": ["a", "b"]}
    assert r.prev_hash == GENESIS and r.prev_id is None and len(r.hash) == 64
    assert r.created_at.endswith("+00:00") and r.version
    assert log.get("no-such-id") is None


def test_ids_increase_along_the_chain_and_link(log):
    ids = fill(log, 30)
    assert ids == sorted(ids) and len(set(ids)) == 30 and all(len(i) == 26 for i in ids)
    records = list(log)
    assert [r.id for r in records] == ids
    for before, after in itertools.pairwise(records):
        assert after.prev_id == before.id and after.prev_hash == before.hash
    assert log.count() == 30 and log.verify().ok


def test_filters_limit_and_stats(log):
    fill(log, 8)
    log.record(make_verdict("answer", model="other-model"), prompt="x")
    assert {r.label for r in log.records(label="answer")} == {"answer"}
    assert len(list(log.records(label="answer"))) == 3
    assert [r.model for r in log.records(model="other-model")] == ["other-model"]
    assert len(list(log.records(limit=4))) == 4
    newest = next(log.records(newest_first=True, limit=1))
    assert newest.model == "other-model"
    assert len(list(log.records(since="1h"))) == 9 and list(log.records(until="1h")) == []
    assert list(log.records(since="2999-01-01")) == [] and len(list(log.records(until="2999-01-01T00:00Z"))) == 9
    stats = log.stats()
    assert stats["count"] == 9 and stats["refusals"] == 6
    assert stats["labels"] == {"safety": 2, "epistemic": 2, "missing_context": 2, "answer": 3}
    assert stats["models"] == {"tiny-model": 8, "other-model": 1}
    assert log.stats(label="safety")["count"] == 2
    with pytest.raises(ValueError, match="ISO 8601"):
        log.records(since="last tuesday")
    with pytest.raises(ValueError, match="unknown label"):
        log.records(label="rude")
    with pytest.raises(ValueError, match="limit"):
        log.records(limit=-1)


def test_only_refusals_skips_answers(home):
    log = AuditLog(only_refusals=True)
    assert log.record(make_verdict("answer"), prompt="hi") is None
    assert log.record(make_verdict("epistemic"), prompt="what will the lottery draw be") is not None
    assert [r.label for r in log] == ["epistemic"]


def test_bad_arguments_are_precise_errors(log):
    with pytest.raises(ValueError, match="source"):
        log.record(make_verdict(), prompt="x", source="web")
    with pytest.raises(ValueError, match="JSON"):
        log.record(make_verdict(), prompt="x", metadata={"when": object()})
    with pytest.raises(ValueError, match="non-finite"):
        log.record(make_verdict(confidence=float("nan")), prompt="x")
    with pytest.raises(ValueError, match="'text'"):
        log.record(make_verdict(), prompt="x", contexts=[{"id": 1}])
    with pytest.raises(TypeError, match="prompt"):
        log.record(make_verdict(), prompt=12)
    with pytest.raises(ValueError, match="on_error"):
        AuditLog(log.path, on_error="ignore")
    assert log.count() == 0


# -- privacy ------------------------------------------------------------------------------


def test_hashes_are_hmac_under_a_private_key_and_text_is_opt_in(home, log):
    rid = log.record(make_verdict(), prompt="secret prompt", contexts=["secret doc"], response="secret answer")
    key_path = home / "audit.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = secret(home)
    r = log.get(rid)
    assert r.prompt_hash == hmac.new(key, b"secret prompt", hashlib.sha256).hexdigest()
    assert r.prompt_hash != hashlib.sha256(b"secret prompt").hexdigest()
    assert r.contexts[0]["hash"] == hmac.new(key, b"secret doc", hashlib.sha256).hexdigest()
    assert r.prompt is None and r.response is None and "text" not in r.contexts[0]
    raw = b"".join(p.read_bytes() for p in home.glob("audit.db*"))
    assert b"secret" not in raw
    # Same prompt, same hash (str or its UTF-8 bytes, and from another AuditLog on the same file).
    again = AuditLog(log.path).record(make_verdict(), prompt=b"secret prompt")
    assert log.get(again).prompt_hash == r.prompt_hash
    assert log.get(log.record(make_verdict(), prompt="other")).prompt_hash != r.prompt_hash


def test_store_text_opt_in(home):
    log = AuditLog(store_text=True)
    rid = log.record(make_verdict(ood=1.25), prompt="p", contexts=[{"id": "d", "text": "doc"}], response="resp")
    r = log.get(rid)
    assert (r.prompt, r.response, r.contexts[0]["text"]) == ("p", "resp", "doc")
    assert r.evidence == ["lock", "pick"] and len(r.evidence_hashes) == 2 and r.ood == 1.25
    assert log.verify().ok


def test_non_utf8_and_ten_megabyte_prompts(home):
    log = AuditLog(store_text=True)
    raw = b"\xff\xfe caf\xe9 \x00 end"
    rid = log.record(make_verdict(), prompt=raw, contexts=[b"\x80\x81"])
    key = secret(home)
    r = log.get(rid)
    assert r.prompt_hash == hmac.new(key, raw, hashlib.sha256).hexdigest()
    assert r.prompt == "\\xff\\xfe caf\\xe9 \x00 end"  # undecodable bytes kept visible, not dropped
    huge = "x" * (10 * 1024 * 1024)
    big_id = log.record(make_verdict(), prompt=huge)
    assert log.get(big_id).prompt_hash == hmac.new(key, huge.encode(), hashlib.sha256).hexdigest()
    assert len(log.get(big_id).prompt) == len(huge)
    hashed_only = AuditLog(log.path).record(make_verdict(), prompt=huge + "y")
    assert log.get(hashed_only).prompt is None
    assert log.verify().ok


def test_another_key_file_is_refused(home, log):
    fill(log, 2)
    log.close()
    (home / "audit.key").write_text(os.urandom(32).hex())
    with pytest.raises(AuditError, match="key file"):
        AuditLog().record(make_verdict(), prompt="x")


# -- migrations ---------------------------------------------------------------------------


def test_migrations_recorded_once_and_idempotent(home, log):
    fill(log, 3)
    log.close()
    AuditLog().close()
    AuditLog().close()
    db = sqlite3.connect(home / "audit.db")
    rows = db.execute("SELECT name, applied_at FROM _migrations").fetchall()
    assert [r[0] for r in rows] == [fn.__name__ for fn in MIGRATIONS] and rows[0][0] == "m001_initial"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT count(*) FROM records").fetchone()[0] == 3
    assert AuditLog().status()["migrations"] == [fn.__name__ for fn in MIGRATIONS]


def test_durable_is_fsync_per_commit(home):
    # PRAGMA synchronous: 2 = FULL (fsync every commit), 1 = NORMAL.
    assert AuditLog()._conn().execute("PRAGMA synchronous").fetchone()[0] == 2
    assert AuditLog(durable=False)._conn().execute("PRAGMA synchronous").fetchone()[0] == 1


def test_foreign_or_newer_databases_are_refused(home):
    other = home / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE logs (id INTEGER PRIMARY KEY)")
    with pytest.raises(AuditError, match="not a phasegpt audit log"):
        AuditLog(other)
    with sqlite3.connect(other) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["logs"]  # left untouched
    AuditLog().close()
    with sqlite3.connect(home / "audit.db") as db:
        db.execute("INSERT INTO _migrations VALUES ('m999_from_the_future', 'x')")
    with pytest.raises(AuditError, match="newer phasegpt"):
        AuditLog()


# -- failures -----------------------------------------------------------------------------


@contextmanager
def read_only(path: Path):
    """Make ``path`` unwritable even for root (chattr +i), undone afterwards."""
    os.chmod(path, 0o444)
    immutable = False
    if os.geteuid() == 0 and shutil.which("chattr"):
        immutable = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False).returncode == 0
    try:
        try:
            os.close(os.open(path, os.O_RDWR))
            pytest.skip("cannot make a file read-only here (root without chattr +i)")
        except PermissionError:
            pass
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        os.chmod(path, 0o644)


def test_read_only_database_fails_closed_or_warns(home, log):
    fill(log, 3)
    log.close()  # checkpoints and removes the WAL, so a write must touch the main file
    with read_only(home / "audit.db"):
        strict = AuditLog()
        assert strict.count() == 3 and strict.verify().ok  # reading still works
        with pytest.raises(AuditError, match="readonly.*writable"):
            strict.record(make_verdict(), prompt="x")
        lenient = AuditLog(on_error="warn")
        with pytest.warns(RuntimeWarning, match="audit log"):
            assert lenient.record(make_verdict(), prompt="x") is None
        strict.close()
        lenient.close()
    assert AuditLog().count() == 3


def test_lock_held_past_timeout_is_audit_error_not_locked(home, log):
    fill(log, 1)
    other = sqlite3.connect(log.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        impatient = AuditLog(log.path, timeout=0.4)
        start = time.monotonic()
        with pytest.raises(AuditError, match="still locked.*timeout"):
            impatient.record(make_verdict(), prompt="x")
        assert 0.4 <= time.monotonic() - start < 5
        with pytest.warns(RuntimeWarning, match="still locked"):
            assert AuditLog(log.path, timeout=0.1, on_error="warn").record(make_verdict(), prompt="x") is None
    finally:
        other.execute("ROLLBACK")
        other.close()
    # Released: a patient writer gets through.
    assert AuditLog(log.path, timeout=0.4).record(make_verdict(), prompt="x") is not None
    assert log.count() == 2


def test_threads_share_one_log(log):
    def write(n):
        for i in range(n):
            log.record(make_verdict(), prompt=f"{threading.get_ident()} {i}")

    threads = [threading.Thread(target=write, args=(25,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.count() == 100 and log.verify().ok


# -- concurrency and crashes --------------------------------------------------------------


def _write_many(path: str, n: int, worker: int) -> int:
    # durable=False skips the per-commit fsync only; locking and the chain are the same.
    log = AuditLog(path, timeout=60, durable=False)
    v = make_verdict()
    for i in range(n):
        log.record(v, prompt=f"worker {worker} prompt {i}", metadata={"worker": worker, "i": i})
    log.close()
    return n


@pytest.mark.slow
def test_eight_processes_write_at_once(home):
    path = str(home / "audit.db")
    AuditLog(path).close()  # creates the database but not the key: the workers race to create that
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(8) as pool:
        results = [pool.apply_async(_write_many, (path, 1000, w)) for w in range(8)]
        assert [r.get(timeout=300) for r in results] == [1000] * 8  # re-raises any worker's error
    log = AuditLog(path)
    assert log.count() == 8000
    result = log.verify()
    assert result.ok and result.checked == 8000, result
    per_worker = {}
    for r in log:
        per_worker.setdefault(r.metadata["worker"], []).append(r.metadata["i"])
    assert {w: sorted(i) for w, i in per_worker.items()} == {w: list(range(1000)) for w in range(8)}
    # One key won the race (a second key would have made its writers fail), no temp files left.
    assert sorted(p.name for p in home.iterdir() if "key" in p.name) == ["audit.key"]


WRITER = """
import sys
from phasegpt.audit import AuditLog
from phasegpt.verdict import Verdict
log = AuditLog(sys.argv[1], durable=False)  # the weaker mode: must still survive a killed process
v = Verdict(label="safety", probs={"safety": 0.9, "epistemic": 0.05, "missing_context": 0.03, "answer": 0.02},
            confidence=0.9, model="tiny-model")
with open(sys.argv[2], "a") as out:
    for i in range(1_000_000):
        out.write(log.record(v, prompt=f"p{i}", metadata={"i": i}) + "\\n")
        out.flush()
"""


@pytest.mark.slow
def test_writer_killed_mid_loop_loses_nothing_it_reported(home):
    db, committed = home / "audit.db", home / "committed.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(committed)], env=env)
        deadline = time.monotonic() + 60
        want = 150 * (round_ + 1)
        while (not committed.exists() or committed.read_text().count("\n") < want) and time.monotonic() < deadline:
            assert proc.poll() is None, "writer died on its own"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
    reported = [line for line in committed.read_text().splitlines() if len(line) == 26]
    log = AuditLog(db)
    result = log.verify()
    assert result.ok, result
    stored = [r.id for r in log]
    assert set(reported) <= set(stored)
    # Committed-but-unreported records (killed between commit and print) are at most one per kill.
    assert len(reported) <= len(stored) <= len(reported) + 3
    assert log.record(make_verdict(), prompt="after the crash") is not None and log.verify().ok


# -- tampering: naming what happened (tests/test_audit_tamper.py proves the threat-model table) --


def test_empty_and_untouched_logs_verify(log):
    assert log.verify().ok and log.verify().checked == 0
    fill(log, 5)
    assert log.verify().ok and log.verify().head_hash == list(log)[-1].hash


def test_edit_one_field_is_detected(log):
    ids = fill(log, 6)
    raw(log).execute("UPDATE records SET label = 'answer' WHERE id = ?", (ids[2],))
    result = log.verify()
    assert not result.ok and (result.problem, result.record_id, result.checked) == ("edited", ids[2], 2)


def test_edit_inside_json_field_is_detected(log):
    ids = fill(log, 4)
    raw(log).execute("UPDATE records SET probs = replace(probs, '0.7', '0.2') WHERE id = ?", (ids[0],))
    assert (log.verify().problem, log.verify().record_id) == ("edited", ids[0])


def test_edit_then_rehash_one_record_with_the_key_is_detected(log):
    ids = fill(log, 5)
    db, hash_fn = raw(log), keyed(key_of(log))
    fields = row_to_fields(db.execute("SELECT * FROM records WHERE id = ?", (ids[1],)).fetchone(), KEYED_FIELDS)
    assert fields["label"] == "answer"
    fields["label"] = "safety"  # a forger with the key who cannot rewrite what follows
    db.execute("UPDATE records SET label = 'safety', hash = ? WHERE id = ?", (hash_fn(fields), ids[1]))
    result = log.verify()
    assert (result.problem, result.record_id) == ("edited", ids[1])


def test_deleted_record_is_named(log):
    ids = fill(log, 6)
    raw(log).execute("DELETE FROM records WHERE id = ?", (ids[3],))
    result = log.verify()
    assert (result.ok, result.problem, result.record_id) == (False, "deleted", ids[3])
    assert ids[4] in result.detail


def test_deleted_first_record_is_named(log):
    ids = fill(log, 3)
    raw(log).execute("DELETE FROM records WHERE id = ?", (ids[0],))
    assert (log.verify().problem, log.verify().record_id) == ("deleted", ids[0])


def _other_id(db: sqlite3.Connection, like: str) -> str:
    """A well-formed id that differs from ``like`` only in its last character and is not in the log.

    Ids made in the same millisecond count up in their last characters, so a fixed replacement
    character can equal a neighbour's id and the insert would fail on the UNIQUE id instead of
    testing verify().
    """
    taken = {row[0] for row in db.execute("SELECT id FROM records")}
    return next(like[:-1] + c for c in CROCKFORD if like[:-1] + c not in taken)


def _forge_after(db: sqlite3.Connection, template_id: str, new_id: str, prev: sqlite3.Row | None) -> dict:
    """A well-formed record copied from another, linked after ``prev`` (hash it yourself)."""
    fields = row_to_fields(db.execute("SELECT * FROM records WHERE id = ?", (template_id,)).fetchone(), KEYED_FIELDS)
    fields.update(
        id=new_id, label="answer", prev_id=prev["id"] if prev else None, prev_hash=prev["hash"] if prev else GENESIS
    )
    return fields


def test_record_appended_without_the_head_is_inserted(log):
    ids = fill(log, 4)
    db, hash_fn = raw(log), keyed(key_of(log))  # even a forger with the key
    last = db.execute("SELECT * FROM records ORDER BY seq DESC LIMIT 1").fetchone()
    new_id = _other_id(db, ids[-1])
    forged = _forge_after(db, ids[0], new_id, last)
    insert(db, forged, hash_fn(forged))
    result = log.verify()
    assert (result.problem, result.record_id) == ("inserted", new_id)


def test_record_slipped_into_the_middle_is_inserted(log):
    ids = fill(log, 6)
    db, hash_fn = raw(log), keyed(key_of(log))
    db.execute("UPDATE records SET seq = -seq")
    db.execute("UPDATE records SET seq = -seq * 10")  # leave room between positions
    at = db.execute("SELECT * FROM records WHERE id = ?", (ids[1],)).fetchone()
    # Claims the same predecessor as ids[2] (as a copy would) and sits just before it.
    forged = _forge_after(db, ids[2], _other_id(db, ids[2]), at)
    insert(db, forged, hash_fn(forged), seq=at["seq"] + 5)
    result = log.verify()
    assert (result.problem, result.record_id) == ("inserted", forged["id"])


def test_forged_record_without_the_key_is_edited(log):
    ids = fill(log, 3)
    db = raw(log)
    last = db.execute("SELECT * FROM records ORDER BY seq DESC LIMIT 1").fetchone()
    forged = _forge_after(db, ids[0], _other_id(db, ids[-1]), last)
    from phasegpt.audit.migrations import FIELDS, record_hash

    insert(db, forged, record_hash({f: forged[f] for f in FIELDS}))  # the only hash a keyless forger has
    result = log.verify()
    assert (result.problem, result.record_id) == ("edited", forged["id"])


def test_swapped_records_are_reordered(log):
    ids = fill(log, 6)
    db = raw(log)
    seq = {r["id"]: r["seq"] for r in db.execute("SELECT id, seq FROM records")}
    db.execute("UPDATE records SET seq = -1 WHERE id = ?", (ids[1],))
    db.execute("UPDATE records SET seq = ? WHERE id = ?", (seq[ids[1]], ids[4]))
    db.execute("UPDATE records SET seq = ? WHERE id = ?", (seq[ids[4]], ids[1]))
    result = log.verify()
    assert (result.problem, result.record_id) == ("reordered", ids[4])
    assert ids[3] in result.detail


def test_truncated_tail_is_detected(log):
    ids = fill(log, 7)
    raw(log).execute("DELETE FROM records WHERE id IN (?, ?)", (ids[5], ids[6]))
    result = log.verify()
    assert (result.ok, result.problem, result.record_id, result.checked) == (False, "truncated", ids[6], 5)
    assert "2 records were cut" in result.detail


def test_missing_chain_head_is_damaged_not_truncated_none(log):
    fill(log, 2)
    raw(log).execute("DELETE FROM chain_head")
    result = log.verify()
    assert (result.ok, result.problem, result.record_id) == (False, "damaged", None)
    assert "chain_head row is missing" in result.detail


def test_verify_result_is_json_ready(log):
    ids = fill(log, 2)
    raw(log).execute("UPDATE records SET metadata = '{\"i\": 9}' WHERE id = ?", (ids[1],))
    d = json.loads(json.dumps(log.verify().to_dict()))
    assert set(d) == {"ok", "checked", "record_id", "problem", "detail", "head_hash", "unkeyed", "checkpointed", "keyed"}
    assert d["record_id"] == ids[1]
