"""A log written by phasegpt before the keyed chain (tests/data/audit-ba8d989, made by its
make.py with that commit's code) keeps verifying, reading and growing after the upgrade."""

from __future__ import annotations

import hashlib
import hmac
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from phasegpt.audit import AuditLog
from phasegpt.audit.keys import read_key
from phasegpt.audit.migrations import record_hash
from phasegpt.cli.audit import audit
from phasegpt.errors import AuditError
from tests.audit_helpers import make_verdict, raw, rehash

OLD = Path(__file__).parent / "data" / "audit-ba8d989"
OLD_RECORDS = 7


@pytest.fixture
def old(tmp_path) -> Path:
    shutil.copytree(OLD, tmp_path / "old", ignore=shutil.ignore_patterns("*.py"))
    return tmp_path / "old" / "audit.db"


def test_the_fixture_is_an_old_format_log(old):
    db = sqlite3.connect(old)
    assert [r[0] for r in db.execute("SELECT name FROM _migrations")] == ["m001_initial"]
    assert len(old.with_suffix(".key").read_text().split()) == 1  # the key alone: the old key-file format
    assert read_key(old.with_suffix(".key")).keyed_from is None


def test_an_old_log_verifies_and_reads_before_any_write(old):
    with AuditLog(old, read_only=True) as log:  # read-only: not migrated, not upgraded
        result = log.verify()
        records = list(log)
        stats = log.stats()
    assert result.ok and result.checked == result.unkeyed == OLD_RECORDS and not result.keyed, result
    assert len(records) == OLD_RECORDS and all(r.kind == "verdict" and r.ood is None for r in records)
    assert records[0].evidence == ["lock", "word0"] and records[-1].prompt == "stored legacy prompt"
    assert stats["count"] == OLD_RECORDS and stats["completions"] == 0
    out = CliRunner().invoke(audit, ["verify", "--db", str(old)]).output
    assert out.startswith(f"OK: {OLD_RECORDS} records") and "not keyed yet" in out
    assert sqlite3.connect(old).execute("SELECT count(*) FROM _migrations").fetchone()[0] == 1  # untouched


def test_an_old_log_keeps_verifying_after_the_upgrade_and_grows_keyed(old):
    secret = read_key(old.with_suffix(".key")).secret
    with AuditLog(old) as log:
        rid = log.record(make_verdict(ood=0.75), prompt="after the upgrade")
        result = log.verify()
        records = list(log)
    assert result.ok and result.checked == OLD_RECORDS + 1 and result.unkeyed == OLD_RECORDS and result.keyed
    key = read_key(old.with_suffix(".key"))
    assert (key.secret, key.keyed_from) == (secret, OLD_RECORDS)  # same key, new format
    assert records[0].prompt_hash == hmac.new(secret, b"legacy prompt 0", hashlib.sha256).hexdigest()
    new = records[-1]
    assert (new.id, new.ood, new.kind, new.prev_id) == (rid, 0.75, "verdict", records[-2].id)
    out = CliRunner().invoke(audit, ["verify", "--db", str(old)]).output
    assert out.startswith(f"OK: {OLD_RECORDS + 1} records") and "covered by the keyed head" in out


def test_old_records_cannot_be_re_hashed_once_upgraded(old):
    with AuditLog(old) as log:  # the first write with this version keys the chain after the old records
        log.record(make_verdict(), prompt="keyed")

    def relabel_and_drop_the_keyed_record(records):
        records[2]["label"] = "answer"
        records.pop()

    # What the old format allowed anyone: re-hash the old records, fix the head, pass it off as before.
    rehash(raw(old), record_hash, edit=relabel_and_drop_the_keyed_record, legacy=True)
    result = AuditLog(old, read_only=True).verify()
    assert (result.ok, result.problem) == (False, "head"), result
    with pytest.raises(AuditError, match="MAC"):
        AuditLog(old).record(make_verdict(), prompt="on top of a forgery")  # and no writer extends it


def test_old_records_re_hashed_under_a_keyed_record_are_caught(old):
    with AuditLog(old) as log:
        log.record(make_verdict(), prompt="keyed")
        keyed_id = list(log)[-1].id

    def relabel(records):
        records[2]["label"] = "answer"

    rehash(raw(old), record_hash, edit=relabel, legacy=True)  # the keyed record cannot be re-keyed
    result = AuditLog(old, read_only=True).verify()
    assert (result.problem, result.record_id) == ("edited", keyed_id)


def test_an_edit_of_an_old_record_is_still_caught(old):
    with AuditLog(old) as log:
        log.record(make_verdict(), prompt="keyed")
        first = list(log)[1].id
    raw(old).execute("UPDATE records SET label = 'answer' WHERE id = ?", (first,))
    result = AuditLog(old, read_only=True).verify()
    assert (result.problem, result.record_id) == ("edited", first)


def test_writers_racing_to_upgrade_agree_on_where_the_keyed_chain_starts(old):
    logs = [AuditLog(old, durable=False) for _ in range(4)]  # each its own connection, none has set up its key
    start = threading.Barrier(len(logs))
    errors = []

    def write(log: AuditLog, w: int) -> None:
        try:
            start.wait()
            for i in range(10):
                log.record(make_verdict(), prompt=f"writer {w} record {i}")
        except Exception as e:  # reported below, with the thread's failure
            errors.append(e)

    threads = [threading.Thread(target=write, args=(log, w)) for w, log in enumerate(logs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    result = AuditLog(old, read_only=True).verify()
    assert result.ok and result.checked == OLD_RECORDS + 40 and result.unkeyed == OLD_RECORDS, result
    assert read_key(old.with_suffix(".key")).keyed_from == OLD_RECORDS
