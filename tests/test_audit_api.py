"""Model + AuditLog: generate, stream and classify record every verdict; write failures fail closed."""

from __future__ import annotations

import sqlite3

import pytest

import phasegpt
from phasegpt.audit import AuditLog
from phasegpt.errors import AuditError


@pytest.fixture()
def audited(tiny_dir, tiny_model, tmp_path):
    head = tiny_model.head.save(tmp_path / "head")
    log = AuditLog(tmp_path / "audit.db")
    return phasegpt.load(tiny_dir, head=head, audit=log), log


def test_every_call_is_recorded_with_identity(audited):
    model, log = audited
    r = model.generate("How do I bake bread?", max_tokens=3, metadata={"request_id": "r-1"})
    list(model.stream("hello", context=[{"id": "doc-9", "text": "Cats purr."}], max_tokens=2))
    verdicts = model.classify(["a", "b", "c"])
    records = list(log)
    assert len(records) == 6 and log.verify().ok  # the stream: a verdict record, then its completion
    first = records[0]
    assert first.label == r.verdict.label and first.source == "api" and first.kind == "verdict"
    assert first.to_dict()["metadata"]["request_id"] == "r-1" and first.response_hash  # generate: one record
    d = records[1].to_dict()
    assert "doc-9" in str(d) and "Cats purr." not in str(d)  # document ids and keyed hashes, never text by default
    assert (records[2].kind, records[2].parent_id) == ("completion", records[1].id)
    assert [rec.label for rec in records[3:]] == [v.label for v in verdicts]
    assert all(rec.to_dict()["model_fingerprint"] == model.loaded.fingerprint for rec in records)


def test_audit_true_uses_default_path(tiny_dir, tiny_model, tmp_path):
    head = tiny_model.head.save(tmp_path / "head")
    model = phasegpt.load(tiny_dir, head=head, audit=True)
    model.classify(["hello"])
    assert AuditLog().count() == 1  # PHASEGPT_HOME points at a temp folder in tests


def test_failed_write_fails_the_call(tiny_dir, tiny_model, tmp_path):
    """A log locked by another writer past the timeout: the call fails (fail closed), or warns if asked."""
    import sqlite3

    head = tiny_model.head.save(tmp_path / "head")
    path = tmp_path / "locked.db"
    strict = phasegpt.load(tiny_dir, head=head, audit=AuditLog(path, timeout=0.3))
    strict.classify(["create the log"])
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(AuditError):
            strict.classify(["hello"])
        with pytest.raises(AuditError):
            strict.generate("hello", max_tokens=2)
        lenient = phasegpt.load(tiny_dir, head=head, audit=AuditLog(path, timeout=0.3, on_error="warn"))
        with pytest.warns(RuntimeWarning, match="still locked"):
            assert lenient.classify(["hello"])[0].label
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert AuditLog(path).count() == 1 and AuditLog(path).verify().ok


def test_stream_commits_the_verdict_before_the_first_chunk(audited):
    model, log = audited
    chunks = model.stream("Tell me about bread", max_tokens=4, metadata={"request_id": "r-9"})
    first = next(chunks)
    assert first.verdict is not None and first.token is None
    # Read back through a separate connection: the record is committed, not merely buffered.
    with AuditLog(log.path, read_only=True) as reader:
        (verdict_record,) = list(reader)
    assert verdict_record.kind == "verdict" and verdict_record.response_hash is None
    assert verdict_record.label == first.verdict.label and verdict_record.metadata == {"request_id": "r-9"}
    text = "".join(c.text for c in chunks)
    records = list(log)
    assert len(records) == 2 and log.verify().ok
    done = records[1]
    assert (done.kind, done.parent_id, done.label) == ("completion", verdict_record.id, verdict_record.label)
    assert done.response_hash is not None and done.metadata["finish_reason"] in ("length", "stop")
    assert text  # the tiny model wrote something, and it is hashed in the completion record


def test_abandoned_stream_still_completes_its_record(audited):
    model, log = audited
    chunks = model.stream("hello there", max_tokens=8)
    next(chunks), next(chunks)  # the verdict and one token
    chunks.close()
    done = list(log)[-1]
    assert done.kind == "completion" and done.metadata["finish_reason"] == "abandoned"


def test_stream_fails_closed_before_any_text_when_the_log_cannot_be_written(tiny_dir, tiny_model, tmp_path):
    head = tiny_model.head.save(tmp_path / "head")
    path = tmp_path / "locked.db"
    model = phasegpt.load(tiny_dir, head=head, audit=AuditLog(path, timeout=0.3))
    model.classify(["create the log"])
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    received = []
    try:
        with pytest.raises(AuditError, match="still locked"):
            for chunk in model.stream("How do I bake bread?", max_tokens=6):
                received.append(chunk)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert received == []  # not the verdict, not a word of text
    assert AuditLog(path).count() == 1 and AuditLog(path).verify().ok  # and no orphan completion record
