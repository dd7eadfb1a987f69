"""Extending the keyed chain: setting a writer's key up against the log, and appending one record.

Both run inside one ``BEGIN IMMEDIATE`` transaction each, so concurrent writers (threads or
processes) take turns: the first writer of a new log makes its key; the first writer of a log
written before the keyed chain records where the keyed chain starts (``keys``); every append
checks the chain head's MAC before it extends the chain, so a head rewritten outside phasegpt
is never signed over by an honest writer. ``phasegpt.audit.AuditLog`` owns the connection,
the lock and the retries around these.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from phasegpt.audit import keys
from phasegpt.audit import migrations as fmt
from phasegpt.audit.storage import rollback
from phasegpt.errors import AuditError

_INSERT = (f"INSERT INTO records ({', '.join(fmt.KEYED_FIELDS)}, hash) "
           f"VALUES ({', '.join('?' * (len(fmt.KEYED_FIELDS) + 1))})")


def setup_key(db: sqlite3.Connection, path: Path, key_path: Path) -> keys.LogKey:
    """The log key for writing ``db``: made for a new log, upgraded for an old one, checked otherwise.

    Raises:
        AuditError: the key file is missing or not the log's, or the log was changed outside phasegpt.
        sqlite3.Error: busy or failing database (the caller retries).
    """
    db.execute("BEGIN IMMEDIATE")  # one writer at a time decides; the others then find its key
    upgrade_at = None
    try:
        count, last_id, last_hash, mac = head(db, path)
        row = db.execute("SELECT value FROM audit_meta WHERE name = 'key_id'").fetchone()
        stored = row[0] if row else None
        key = keys.read_key(key_path)
        if key is None:
            if stored is not None or count:
                raise AuditError(f"the key file {key_path} of audit log {path} is missing; "
                                 "restore it from backup, or start a new log")
            key = keys.create_key(key_path, keyed_from=count)
        if stored is None:
            if count:
                raise AuditError(f"audit log {path} holds records but no key id: it was changed "
                                 "outside phasegpt; run `phasegpt audit verify` and start a new log")
            db.execute("INSERT INTO audit_meta (name, value) VALUES ('key_id', ?)", (key.key_id,))
        elif stored != key.key_id:
            raise AuditError(
                f"the key file {key_path} is not the one audit log {path} was written with "
                f"(key id {key.key_id}, log expects {stored}); restore the original key file or start a new log"
            )
        if key.keyed_from is None or (mac is None and count == 0 and stored is None):
            # an old log's first keyed writer, or a new log: the head gets its first MAC
            db.execute("UPDATE chain_head SET mac = ?", (fmt.head_mac(key.chain_key, count, last_id, last_hash),))
            upgrade_at = count if key.keyed_from is None else None
        else:
            check_head(path, key, count, last_id, last_hash, mac)
        db.execute("COMMIT")
    except BaseException:
        rollback(db)
        raise
    # Only after the head's MAC is committed: the key file must never announce keyed records
    # that the database cannot back (a crash here leaves an old-format key; the next writer redoes this).
    return keys.upgrade_key(key, upgrade_at) if upgrade_at is not None else key


def append(db: sqlite3.Connection, path: Path, key: keys.LogKey, body: dict[str, Any], encoded: dict[str, str]) -> str:
    """Insert one record after the chain head and advance the head, in one transaction; the new id.

    Args:
        body: the record's fields but the chain's (id, created_at, prev_id, prev_hash).
        encoded: ``migrations.encode(body)``, done by the caller before it took any lock.
    """
    db.execute("BEGIN IMMEDIATE")  # take the write lock before reading the head
    try:
        count, last_id, last_hash, mac = head(db, path)
        check_head(path, key, count, last_id, last_hash, mac)
        now_ns = time.time_ns()
        rid = fmt.next_id(now_ns, last_id)
        created = datetime.fromtimestamp(now_ns / 1e9, timezone.utc).isoformat(timespec="microseconds")
        chain = {"id": rid, "created_at": created, "prev_id": last_id, "prev_hash": last_hash}
        digest = fmt.hash_encoded({**encoded, **fmt.encode(chain)}, key.chain_key)
        db.execute(_INSERT, (*fmt.fields_to_row({**body, **chain}, encoded), digest))
        db.execute("UPDATE chain_head SET count = ?, last_id = ?, last_hash = ?, mac = ?",
                   (count + 1, rid, digest, fmt.head_mac(key.chain_key, count + 1, rid, digest)))
        db.execute("COMMIT")
    except BaseException:
        rollback(db)
        raise
    return rid


def head(db: sqlite3.Connection, path: Path) -> tuple[int, str | None, str, str | None]:
    """The chain head: (count, last id, last hash, MAC)."""
    row = db.execute("SELECT count, last_id, last_hash, mac FROM chain_head").fetchone()
    if row is None:
        raise AuditError(f"audit log {path} has lost its chain_head row: it was changed outside phasegpt; "
                         "run `phasegpt audit verify` and start a new log (nothing was written)")
    return tuple(row)


def check_head(path: Path, key: keys.LogKey, count: int, last_id: str | None, last_hash: str, mac: str | None) -> None:
    """Refuse to extend a chain whose head does not carry its key's MAC (that would sign the forgery)."""
    if mac != fmt.head_mac(key.chain_key, count, last_id, last_hash):
        raise AuditError(
            f"the chain head of audit log {path} does not carry its key's MAC: the log was changed "
            "outside phasegpt; run `phasegpt audit verify` and start a new log (nothing was written)"
        )
