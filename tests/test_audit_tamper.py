"""The tamper suite: every row of the README's threat-model table, with and without a checkpoint.

Each case tampers with a real log the way someone with write access to its folder would
(plain sqlite3 on the file, and the key file where the row says so), then runs the same
commands the README shows: ``phasegpt audit verify``, and ``phasegpt audit verify
--checkpoint FILE --public-key PEM`` with a checkpoint kept in another folder. The expected
outcome of each cell is the table's; a cell that says "not detected" is asserted too, so the
table cannot promise more than the code does.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from phasegpt.audit import AuditLog
from phasegpt.audit.keys import create_key
from phasegpt.audit.migrations import FIELDS, KEYED_FIELDS, record_hash
from phasegpt.cli.audit import audit
from tests.audit_helpers import fill, insert, key_of, keyed, make_verdict, raw, rehash, rows


@dataclass
class Setting:
    """One log, written in two halves: 5 records (then a backup copy), 3 more, then a checkpoint."""

    db: Path
    backup: Path
    checkpoint: Path
    public_key: Path
    ids: list[str]


@pytest.fixture
def setting(tmp_path) -> Setting:
    folder, elsewhere = tmp_path / "logs", tmp_path / "elsewhere"  # the checkpoint lives outside the log's folder
    db = folder / "audit.db"
    with AuditLog(db) as log:
        ids = fill(log, 5)
    shutil.copytree(folder, tmp_path / "backup")
    with AuditLog(db) as log:
        ids += fill(log, 3)
    elsewhere.mkdir()
    runner = CliRunner()
    made = runner.invoke(audit, ["checkpoint", "--db", str(db), "-o", str(elsewhere / "checkpoints.jsonl")])
    assert made.exit_code == 0, made.output
    pem = runner.invoke(audit, ["public-key"])
    assert pem.exit_code == 0 and pem.output.startswith("-----BEGIN PUBLIC KEY-----")
    (elsewhere / "signer.pem").write_text(pem.output)
    return Setting(db, tmp_path / "backup", elsewhere / "checkpoints.jsonl", elsewhere / "signer.pem", ids)


def _log(s: Setting) -> AuditLog:
    return AuditLog(s.db)


# -- the tampering, one function per row of the table ----------------------------------------


def edit_a_field(s: Setting) -> None:
    raw(s.db).execute("UPDATE records SET label = 'answer' WHERE id = ?", (s.ids[2],))


def delete_a_row(s: Setting) -> None:
    raw(s.db).execute("DELETE FROM records WHERE id = ?", (s.ids[3],))


def insert_a_row(s: Setting) -> None:
    db = raw(s.db)
    db.execute("UPDATE records SET seq = seq * 10")
    before = db.execute("SELECT * FROM records WHERE id = ?", (s.ids[2],)).fetchone()
    forged = next(r for r in rows(db) if r["id"] == s.ids[2])
    taken = {r["id"] for r in rows(db)}  # ids made in one millisecond differ in the last character only
    forged_id = next(s.ids[2][:-1] + c for c in "0123456789ABCDEFGHJKMNPQRSTVWXYZ" if s.ids[2][:-1] + c not in taken)
    forged.update(id=forged_id, label="answer", prev_id=before["id"], prev_hash=before["hash"])
    insert(db, forged, record_hash({f: forged[f] for f in KEYED_FIELDS}), seq=before["seq"] + 5)


def reorder(s: Setting) -> None:
    db = raw(s.db)
    db.execute("UPDATE records SET seq = -1 WHERE id = ?", (s.ids[1],))
    db.execute("UPDATE records SET seq = 2 WHERE id = ?", (s.ids[3],))
    db.execute("UPDATE records SET seq = 4 WHERE id = ?", (s.ids[1],))


def truncate_and_fix_head(s: Setting) -> None:
    db = raw(s.db)
    db.execute("DELETE FROM records WHERE id IN (?, ?)", (s.ids[-1], s.ids[-2]))
    last = db.execute("SELECT id, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
    db.execute("UPDATE chain_head SET count = ?, last_id = ?, last_hash = ?", (len(s.ids) - 2, last["id"], last["hash"]))


def _relabel(records: list[dict]) -> None:
    records[2]["label"] = "answer"


def rehash_with_the_codes_hash(s: Setting) -> None:
    # phasegpt's own record_hash over every field: all a forger without the key can compute
    rehash(raw(s.db), record_hash, edit=_relabel)


def rehash_as_an_old_unkeyed_log(s: Setting) -> None:
    # ...and pass the log off as one written before the keyed chain (old format, no head MAC)
    db = raw(s.db)
    rehash(db, record_hash, edit=_relabel, legacy=True)
    db.execute("DELETE FROM _migrations WHERE name != 'm001_initial'")


def replace_the_key_file(s: Setting) -> None:
    key = s.db.with_suffix(".key")
    key.unlink()
    create_key(key, keyed_from=0)


def replace_the_key_and_rehash(s: Setting) -> None:
    key_file = s.db.with_suffix(".key")
    key_file.unlink()
    new = create_key(key_file, keyed_from=0)
    db = raw(s.db)
    db.execute("UPDATE audit_meta SET value = ? WHERE name = 'key_id'", (new.key_id,))
    rehash(db, keyed(new), key=new, edit=_relabel)


def rehash_with_the_real_key(s: Setting) -> None:
    with _log(s) as log:
        key = key_of(log)
    rehash(raw(s.db), keyed(key), key=key, edit=_relabel)


def roll_back_to_an_earlier_copy(s: Setting) -> None:
    shutil.rmtree(s.db.parent)
    shutil.copytree(s.backup, s.db.parent)


def change_records_after_the_checkpoint(s: Setting) -> None:
    with _log(s) as log:
        later = [log.record(make_verdict("safety"), prompt=f"later {i}") for i in range(2)]
        key = key_of(log)

    def relabel_later(records: list[dict]) -> None:
        next(r for r in records if r["id"] == later[0])["label"] = "answer"

    rehash(raw(s.db), keyed(key), key=key, edit=relabel_later)


@dataclass(frozen=True)
class Row:
    tamper: Callable[[Setting], None]
    without_checkpoint: bool  # detected by `phasegpt audit verify`
    with_checkpoint: bool  # detected by `phasegpt audit verify --checkpoint FILE --public-key PEM`


TABLE = {
    "edit a field": Row(edit_a_field, True, True),
    "delete a row": Row(delete_a_row, True, True),
    "insert a row": Row(insert_a_row, True, True),
    "reorder rows": Row(reorder, True, True),
    "truncate the tail and fix chain_head": Row(truncate_and_fix_head, True, True),
    "re-hash the whole chain with the code's hash function": Row(rehash_with_the_codes_hash, True, True),
    "... and pass it off as a log from before the keyed chain": Row(rehash_as_an_old_unkeyed_log, True, True),
    "replace the key file": Row(replace_the_key_file, True, True),
    "replace the key file and re-hash everything under the new key": Row(replace_the_key_and_rehash, False, True),
    "re-hash everything with the real key (the forger read it)": Row(rehash_with_the_real_key, False, True),
    "roll the folder back to an earlier copy": Row(roll_back_to_an_earlier_copy, False, True),
    "change records written after the last checkpoint, with the real key": Row(
        change_records_after_the_checkpoint, False, False),
}  # fmt: skip


@pytest.mark.parametrize("with_checkpoint", [False, True], ids=["verify", "verify --checkpoint"])
@pytest.mark.parametrize("name", list(TABLE))
def test_threat_model_table(setting, name, with_checkpoint):
    runner = CliRunner()
    assert runner.invoke(audit, ["verify", "--db", str(setting.db)]).exit_code == 0  # intact before
    row = TABLE[name]
    row.tamper(setting)
    args = ["verify", "--db", str(setting.db)]
    if with_checkpoint:
        args += ["--checkpoint", str(setting.checkpoint), "--public-key", str(setting.public_key)]
    result = runner.invoke(audit, args)
    detected = row.with_checkpoint if with_checkpoint else row.without_checkpoint
    assert result.exit_code == (1 if detected else 0), result.output
    if detected:
        assert result.output.startswith("Error: audit log FAILED verification") and result.output.count("\n") == 1
    else:
        assert result.output.startswith("OK: ")


def test_the_table_is_the_one_in_the_readme():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name, row in TABLE.items():
        cells = ["detected" if row.without_checkpoint else "**not detected**",
                 "detected" if row.with_checkpoint else "**not detected**"]
        assert f"| {name} | {cells[0]} | {cells[1]} |" in readme, name


def test_the_legacy_disguise_really_is_an_old_format_log(setting):
    # The forgery above is sound: it verifies when the key file says the log is an old, unkeyed one.
    rehash_as_an_old_unkeyed_log(setting)
    key = setting.db.with_suffix(".key")
    key.write_text(key.read_text().split()[3] + "\n")  # the old key-file format: the key alone
    with AuditLog(setting.db, read_only=True) as log:
        result = log.verify()
    assert result.ok and result.unkeyed == len(setting.ids), result
    assert [r.label for r in log][2] == "answer" and all(r.evidence_hashes is None for r in log)
    assert set(FIELDS) < set(KEYED_FIELDS)
