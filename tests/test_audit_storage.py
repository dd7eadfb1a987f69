"""The audit log's files on disk: what they hold, who may read them, and reading them read-only."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from phasegpt.audit import AuditLog
from phasegpt.cli import cli
from phasegpt.cli.audit import audit
from phasegpt.errors import AuditError
from tests.audit_helpers import fill, make_verdict, raw

CARD = "4111111111111111"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def files_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.iterdir() if p.is_file())


# -- nothing readable without store_text ---------------------------------------------------------


def test_no_caller_text_is_stored_readable_without_store_text(tmp_path):
    folder = tmp_path / "logs"
    with AuditLog(folder / "audit.db") as log:
        log.record(make_verdict(evidence=(CARD, "card")), prompt=f"My card is {CARD}, is that safe?",
                   contexts=[{"id": "doc-1", "text": f"card {CARD} on file"}], response=f"Your card {CARD}")
        on_disk = files_bytes(folder)  # the -wal file too, while the writer is open
    assert CARD.encode() not in on_disk and b"card" not in on_disk
    assert CARD.encode() not in files_bytes(folder)  # and after the WAL was folded into the database
    record = AuditLog(folder / "audit.db", read_only=True).records().__next__()
    assert record.evidence == [] and len(record.evidence_hashes) == 2 and record.prompt is None


def test_store_text_keeps_the_words(tmp_path):
    with AuditLog(tmp_path / "audit.db", store_text=True) as log:
        rid = log.record(make_verdict(evidence=(CARD,)), prompt=f"My card is {CARD}")
        assert log.get(rid).evidence == [CARD] and log.get(rid).prompt == f"My card is {CARD}"


def test_cli_run_audit_leaves_no_card_number_on_disk(tiny_dir, tiny_model, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("PHASEGPT_HOME", str(home))
    head = tiny_model.head.save(tmp_path / "head")
    prompt = f"My card is {CARD}, is that safe?"
    r = CliRunner().invoke(cli, ["run", "--model", str(tiny_dir), "--head", str(head), "--audit", "--max-tokens", "3",
                                 prompt])
    assert r.exit_code == 0, r.output
    assert CARD.encode() not in files_bytes(home) and b"My card" not in files_bytes(home)
    shown = json.loads(CliRunner().invoke(audit, ["list", "--json"]).output)
    assert len(shown) == 1 and shown[0]["evidence"] == [] and shown[0]["prompt"] is None


# -- owner-only permissions ------------------------------------------------------------------------


def test_database_side_files_key_and_folder_are_owner_only(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("PHASEGPT_HOME", str(home))
    old = os.umask(0o022)  # the usual umask, which would make all of these world-readable
    try:
        with AuditLog() as log:
            fill(log, 3)
            names = {p.name: mode(p) for p in home.iterdir()}
    finally:
        os.umask(old)
    assert names == {"audit.db": 0o600, "audit.db-wal": 0o600, "audit.db-shm": 0o600, "audit.key": 0o600}
    assert mode(home) == 0o700


def test_an_existing_world_readable_log_is_tightened(tmp_path):
    shutil.copytree(Path(__file__).parent / "data" / "audit-ba8d989", tmp_path / "old")
    db = tmp_path / "old" / "audit.db"
    os.chmod(db, 0o644)
    os.chmod(tmp_path / "old", 0o755)
    AuditLog(db).close()
    assert mode(db) == 0o600
    assert mode(tmp_path / "old") == 0o755  # a folder you chose keeps its permissions


def test_a_home_that_cannot_be_created_warns_instead_of_raising_oserror(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PHASEGPT_HOME", str(blocker / "phasegpt"))
    with pytest.warns(RuntimeWarning, match="cannot open audit log"):
        log = AuditLog(on_error="warn")
    with pytest.warns(RuntimeWarning, match="cannot open audit log"):
        assert log.record(make_verdict(), prompt="x") is None
    with pytest.raises(AuditError, match="cannot open audit log"):
        AuditLog()


# -- read-only storage ------------------------------------------------------------------------


@contextmanager
def read_only_folder(folder: Path):
    """Make ``folder`` and its files unwritable even for root (chattr +i), undone afterwards."""
    paths = [folder, *folder.iterdir()]
    chattr = os.geteuid() == 0 and shutil.which("chattr") is not None
    for p in paths:
        os.chmod(p, 0o555 if p.is_dir() else 0o444)
    if chattr and subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True).returncode != 0:
        chattr = False
    try:
        try:
            (folder / ".probe").write_text("x")
            (folder / ".probe").unlink()
            pytest.skip("cannot make a folder read-only here (root without chattr +i)")
        except OSError:
            pass
        yield
    finally:
        if chattr:
            subprocess.run(["chattr", "-i", *map(str, paths)], check=True)
        for p in paths:
            os.chmod(p, 0o700 if p.is_dir() else 0o600)


def _verify_cli(db: Path, *extra: str):
    return CliRunner().invoke(audit, ["verify", "--db", str(db), *extra])


def test_verify_a_closed_log_on_read_only_storage(tmp_path):
    folder = tmp_path / "archive"
    with AuditLog(folder / "audit.db") as log:
        ids = fill(log, 4)
    assert sorted(p.name for p in folder.iterdir()) == ["audit.db", "audit.key"]  # the WAL was folded in
    with read_only_folder(folder):
        r = _verify_cli(folder / "audit.db")
        assert r.exit_code == 0 and r.output.startswith("OK: 4 records"), r.output
        listed = CliRunner().invoke(audit, ["list", "--db", str(folder / "audit.db"), "--json"])
        assert [row["id"] for row in json.loads(listed.output)] == ids[::-1]
        with AuditLog(folder / "audit.db", read_only=True) as log:
            with pytest.raises(AuditError, match="read_only"):
                log.record(make_verdict(), prompt="x")
        assert sorted(p.name for p in folder.iterdir()) == ["audit.db", "audit.key"]  # nothing was written


def test_verify_a_log_copied_with_its_wal_onto_read_only_storage(tmp_path):
    live, copy = tmp_path / "live", tmp_path / "copy"
    with AuditLog(live / "audit.db") as log:
        fill(log, 3)
        shutil.copytree(live, copy)  # -wal and -shm come along, records still in the WAL
    assert (copy / "audit.db-wal").stat().st_size > 0
    with read_only_folder(copy):
        r = _verify_cli(copy / "audit.db")
        assert r.exit_code == 0 and r.output.startswith("OK: 3 records"), r.output


def test_a_wal_without_its_shm_on_read_only_storage_is_one_clear_error(tmp_path):
    live, copy = tmp_path / "live", tmp_path / "copy"
    with AuditLog(live / "audit.db") as log:
        fill(log, 3)
        shutil.copytree(live, copy)
    (copy / "audit.db-shm").unlink()
    with read_only_folder(copy):
        r = _verify_cli(copy / "audit.db")
    assert r.exit_code == 1 and "audit.db-wal" in r.output and "writable storage" in r.output
    assert r.output.count("\n") == 1


def test_verify_runs_sqlites_integrity_check(tmp_path):
    db_path = tmp_path / "audit.db"
    with AuditLog(db_path) as log:
        fill(log, 40)
    db = raw(db_path)
    page = db.execute("PRAGMA page_size").fetchone()[0]
    root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'records_label'").fetchone()[0]
    db.close()
    with open(db_path, "r+b") as f:  # damage an index page: every record still reads back fine
        f.seek((root - 1) * page + 8)
        f.write(b"\xff" * 64)
    with AuditLog(db_path, read_only=True) as log:
        assert len(list(log)) == 40  # a plain walk of the records would not notice
        result = log.verify()
    assert (result.ok, result.problem) == (False, "damaged") and "integrity check" in result.detail
    r = _verify_cli(db_path)
    assert r.exit_code == 1 and "damaged" in r.output and r.output.count("\n") == 1


def test_missing_chain_head_is_one_line_without_none(tmp_path):
    db_path = tmp_path / "audit.db"
    with AuditLog(db_path) as log:
        fill(log, 2)
    raw(db_path).execute("DELETE FROM chain_head")
    r = _verify_cli(db_path)
    assert r.exit_code == 1 and "None" not in r.output and "chain_head row is missing" in r.output
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and the writer refuses to go on from it, cleanly
        with pytest.raises(AuditError):
            AuditLog(db_path).record(make_verdict(), prompt="x")
