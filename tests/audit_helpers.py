"""What the audit tests share: hand-made verdicts, raw SQLite access, and a forger's tools.

The forger works on the database file with plain sqlite3, the way someone with write
access to it would: ``rehash`` recomputes every record's hash (and the chain head) with
whichever hash function it is given, so the same code plays a forger without the key
(the plain ``record_hash`` that ships in phasegpt) and one who holds it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from phasegpt.audit import AuditLog
from phasegpt.audit.keys import LogKey, read_key
from phasegpt.audit.migrations import (
    FIELDS,
    GENESIS,
    KEYED_FIELDS,
    fields_to_row,
    head_mac,
    keyed_record_hash,
    record_hash,
    row_to_fields,
)
from phasegpt.verdict import LABELS, Tag, Verdict


def make_verdict(label: str = "safety", confidence: float = 0.7, model: str = "tiny-model",
                 evidence: tuple[str, ...] = ("lock", "pick"), ood: float | None = None) -> Verdict:
    rest = (1.0 - confidence) / 3
    probs = {name: (confidence if name == label else rest) for name in LABELS}
    return Verdict(
        label=label,
        probs=probs,
        confidence=confidence,
        evidence=evidence,
        tag=Tag("<PASS:DURESS>", "PASS", "DURESS", "safety") if label == "safety" else None,
        layers=(3, 7),
        model=model,
        model_fingerprint="f" * 16,
        head_sha256="a" * 64,
        adapter_sha256="b" * 64,
        thresholds={"safety": 0.5, "epistemic": 0.6},
        ood=ood,
    )


def fill(log: AuditLog, n: int) -> list[str]:
    labels = ["safety", "answer", "epistemic", "missing_context"]
    return [log.record(make_verdict(labels[i % 4]), prompt=f"prompt {i}", metadata={"i": i}) for i in range(n)]


def raw(log: AuditLog | Path) -> sqlite3.Connection:
    """The log's file opened with plain sqlite3 (the AuditLog closed first)."""
    if isinstance(log, AuditLog):
        log.close()
        log = log.path
    db = sqlite3.connect(log, isolation_level=None)
    db.row_factory = sqlite3.Row
    return db


def key_of(log: AuditLog) -> LogKey:
    key = read_key(log.key_path)
    assert key is not None
    return key


def keyed(key: LogKey) -> Callable[[dict[str, Any]], str]:
    """The hash function of a forger who holds ``key``."""
    return lambda fields: keyed_record_hash(key.chain_key, fields)


def rows(db: sqlite3.Connection) -> list[dict[str, Any]]:
    return [row_to_fields(r, KEYED_FIELDS) | {"seq": r["seq"]} for r in db.execute("SELECT * FROM records ORDER BY seq")]


def rehash(db: sqlite3.Connection, hash_fn: Callable[[dict[str, Any]], str], *, key: LogKey | None = None,
           edit: Callable[[list[dict[str, Any]]], None] = lambda records: None, legacy: bool = False) -> None:
    """Rewrite every record with ``hash_fn`` after ``edit`` changes the list (fields, order, length),
    relinking the chain and rewriting the chain head (its MAC too when ``key`` is given).

    ``legacy`` writes the records as the old, unkeyed format (``FIELDS`` only, new columns NULL).
    """
    records = rows(db)
    edit(records)
    db.execute("BEGIN")
    db.execute("DELETE FROM records")
    prev_id, prev_hash = None, GENESIS
    for seq, fields in enumerate(records, 1):
        fields.pop("seq", None)
        fields.update(prev_id=prev_id, prev_hash=prev_hash)
        if legacy:
            fields.update(ood=None, evidence_hashes=None, kind=None, parent_id=None)
        digest = hash_fn({f: fields[f] for f in (FIELDS if legacy else KEYED_FIELDS)})
        insert(db, fields, digest, seq)
        prev_id, prev_hash = fields["id"], digest
    mac = head_mac(key.chain_key, len(records), prev_id, prev_hash) if key else None
    db.execute("UPDATE chain_head SET count = ?, last_id = ?, last_hash = ?, mac = ?", (len(records), prev_id, prev_hash, mac))
    db.execute("COMMIT")


def insert(db: sqlite3.Connection, fields: dict[str, Any], digest: str, seq: int | None = None) -> None:
    cols = ", ".join(("seq", *KEYED_FIELDS, "hash"))
    values = [None if name in KEYED_FIELDS[len(FIELDS):] and fields[name] is None else value  # SQL NULL, as old rows
              for name, value in zip(KEYED_FIELDS, fields_to_row(fields))]
    db.execute(f"INSERT INTO records ({cols}) VALUES ({', '.join('?' * (len(KEYED_FIELDS) + 2))})",
               (seq, *values, digest))


__all__ = ["GENESIS", "fill", "head_mac", "insert", "key_of", "keyed", "make_verdict", "raw", "record_hash",
           "rehash", "rows"]
