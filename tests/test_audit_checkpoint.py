"""Signed checkpoints: what `phasegpt audit checkpoint` prints, and what `verify --checkpoint` trusts."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from phasegpt.audit import AuditLog, Checkpoint
from phasegpt.audit import checkpoint as cp
from phasegpt.audit.keys import public_key_pem, read_key
from phasegpt.cli.audit import audit
from phasegpt.errors import AuditError
from tests.audit_helpers import fill, raw


@pytest.fixture
def log(tmp_path):
    with AuditLog(tmp_path / "logs" / "audit.db") as opened:
        fill(opened, 4)
        yield opened


def cli(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(audit, list(args))
    assert result.exit_code == code, result.output
    return result.output


def test_a_checkpoint_signs_count_head_and_time(log, tmp_path):
    made = log.checkpoint()
    records = list(log)
    assert (made.count, made.head_id, made.head_hash) == (4, records[-1].id, records[-1].hash)
    assert made.key_id == read_key(log.key_path).key_id and made.log_id == log.status()["log_id"]
    assert made.time.endswith("+00:00") and made.check() is None
    assert json.loads(made.to_json())["type"] == cp.TYPE
    key_file = Path(tmp_path / "phasegpt-home" / "audit-signing.key")  # conftest's PHASEGPT_HOME
    assert key_file.read_text().startswith("-----BEGIN PRIVATE KEY-----") and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert log.checkpoint().public_key == made.public_key  # one signing key, made once


def test_verify_with_checkpoints_counts_what_they_prove(log, tmp_path):
    early = log.checkpoint()
    fill(log, 3)
    late = log.checkpoint()
    fill(log, 2)
    both = tmp_path / "checkpoints.jsonl"
    both.write_text(early.to_json() + "\n" + late.to_json() + "\n")
    result = log.verify(both)
    assert result.ok and (result.checked, result.checkpointed) == (9, 7)
    assert log.verify([early]).checkpointed == 4 and log.verify().checkpointed is None


def test_the_cli_prints_a_checkpoint_and_appends_it(log, tmp_path):
    out = tmp_path / "elsewhere" / "cps.jsonl"
    out.parent.mkdir()
    line = cli("checkpoint", "--db", str(log.path), "-o", str(out))
    cli("checkpoint", "--db", str(log.path), "-o", str(out))
    assert cp.from_dict(json.loads(line)).count == 4 and len(out.read_text().splitlines()) == 2
    pem = tmp_path / "signer.pem"
    pem.write_text(cli("public-key"))
    ok = cli("verify", "--db", str(log.path), "--checkpoint", str(out), "--public-key", str(pem))
    signer = Checkpoint(**json.loads(line)).signer()
    assert ok.startswith("OK: 4 records") and "the first 4 match the checkpoints" in ok
    from phasegpt.audit.keys import public_key_id

    assert public_key_id(signer) in ok


def test_an_altered_checkpoint_is_refused(log, tmp_path):
    made = json.loads(log.checkpoint().to_json())
    made["count"] = 3  # a forger who wants the last record out of the proof
    made["head_id"], made["head_hash"] = list(log)[2].id, list(log)[2].hash
    path = tmp_path / "altered.json"
    path.write_text(json.dumps(made))
    result = log.verify(path)
    assert (result.ok, result.problem) == (False, "checkpoint") and "valid signature" in result.detail


def test_a_pinned_key_refuses_checkpoints_signed_by_anyone_else(log, tmp_path):
    # A forger who rewrote the log and signed their own checkpoint of it: valid, but not by the pinned key.
    theirs = cp.sign(Ed25519PrivateKey.generate(), log_id=log.status()["log_id"], count=4, head_id=list(log)[-1].id,
                     head_hash=list(log)[-1].hash, key_id=read_key(log.key_path).key_id)
    assert log.verify(theirs).ok  # unpinned, a checkpoint's own key is trusted (the README says so)
    pem = tmp_path / "ours.pem"
    pem.write_text(cli("public-key"))
    result = log.verify(theirs, public_key=pem)
    assert (result.ok, result.problem) == (False, "checkpoint") and "not by the pinned key" in result.detail
    assert log.verify(log.checkpoint(), public_key=pem).ok


def test_a_checkpoint_of_another_log_is_refused(log, tmp_path):
    with AuditLog(tmp_path / "other" / "audit.db") as other:
        fill(other, 4)
        theirs = other.checkpoint()
    result = log.verify(theirs)
    assert not result.ok and result.problem in ("checkpoint", "key") and "log" in result.detail


def test_a_broken_or_empty_log_is_never_signed(log, tmp_path):
    raw(log).execute("UPDATE records SET label = 'epistemic' WHERE seq = 2")
    with pytest.raises(AuditError, match="fails verification.*edited"):
        log.checkpoint()
    out = cli("checkpoint", "--db", str(log.path), code=1)
    assert "not signed" in out and out.count("\n") == 1
    with AuditLog(tmp_path / "empty.db") as empty, pytest.raises(AuditError, match="no records yet"):
        empty.checkpoint()


def test_bad_checkpoint_files_are_one_line_errors(log, tmp_path):
    cases = {"notjson.json": "this is not json\n", "other.json": '{"type": "something else"}',
             "partial.json": json.dumps({"type": cp.TYPE, "count": 3})}
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        out = cli("verify", "--db", str(log.path), "--checkpoint", str(path), code=1)
        assert out.startswith("Error:") and out.count("\n") == 1 and name in out, out
    with pytest.raises(ValueError, match="not a phasegpt audit checkpoint"):
        log.verify(tmp_path / "other.json")


def test_the_signing_key_can_live_elsewhere(log, tmp_path, monkeypatch):
    elsewhere = tmp_path / "vault" / "signer.key"
    monkeypatch.setenv("PHASEGPT_AUDIT_SIGNING_KEY", str(elsewhere))
    made = log.checkpoint()
    assert elsewhere.is_file()
    pem = cli("public-key")
    from cryptography.hazmat.primitives import serialization

    loaded = serialization.load_pem_private_key(elsewhere.read_bytes(), password=None)
    assert pem == public_key_pem(loaded.public_key())
    assert base64.b64decode(made.public_key) == loaded.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    other = tmp_path / "explicit.key"
    assert cp.from_dict(json.loads(cli("checkpoint", "--db", str(log.path), "--signing-key", str(other)))).public_key \
        != made.public_key
