"""Model + AuditLog: generate, stream and classify record every verdict; write failures fail closed."""

from __future__ import annotations

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
    assert len(records) == 5 and log.verify().ok
    first = records[0]
    assert first.label == r.verdict.label and first.source == "api"
    assert first.to_dict()["metadata"]["request_id"] == "r-1"
    d = records[1].to_dict()
    assert "doc-9" in str(d) and "Cats purr." not in str(d)  # document ids and keyed hashes, never text by default
    assert [rec.label for rec in records[2:]] == [v.label for v in verdicts]
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
