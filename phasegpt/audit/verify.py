"""Reading the audit log back: records as ``AuditRecord``, filters, stats, and the chain check.

``phasegpt.audit.AuditLog`` owns the connection, the lock and the retries; this module
holds what its reads return and how they are worked out from the rows: the filters
that ``records()`` and ``stats()`` turn into SQL, the decoding of a row into an
``AuditRecord``, the ``stats()`` summary, and ``walk``, which checks the file's integrity,
re-hashes every record, follows the hash chain and checks the chain head's MAC, to name the
first record that was edited, deleted, inserted, moved or cut off the end; given
checkpoints (``phasegpt.audit.checkpoint``), it also proves the records they cover unchanged.
The record hashes themselves live in ``phasegpt.audit.migrations`` (they are a storage promise).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta, timezone
from typing import Any

from phasegpt.audit.checkpoint import Checkpoint
from phasegpt.audit.keys import LogKey, public_key_id
from phasegpt.audit.migrations import FIELDS, GENESIS, KEYED_FIELDS, head_mac, keyed_record_hash, record_hash, row_to_fields
from phasegpt.errors import AuditError
from phasegpt.verdict import LABELS, REFUSALS

_AGE_RE = re.compile(r"(\d+)\s*([smhdw])")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class AuditRecord:
    """One logged verdict, as read back from the log (field names match the columns)."""

    id: str
    created_at: str
    duration: float | None
    source: str
    model: str
    model_fingerprint: str
    adapter_sha256: str | None
    head_sha256: str
    layers: list[int]
    thresholds: dict[str, float]
    label: str
    probs: dict[str, float]
    confidence: float
    evidence: list[str]  # the words themselves only with store_text (else [])
    tag: dict[str, Any] | None
    verdict_source: str
    prompt_hash: str
    response_hash: str | None
    contexts: list[dict[str, Any]]
    prompt: str | None
    response: str | None
    metadata: dict[str, Any]
    version: str
    prev_id: str | None
    prev_hash: str
    hash: str
    ood: float | None = None  # Verdict.ood; None in records written before it existed
    evidence_hashes: list[str] | None = None  # HMAC-SHA256 of each evidence word under the log key
    kind: str = "verdict"  # or "completion": the end of a streamed generation
    parent_id: str | None = None  # a completion's verdict record

    @property
    def refusal(self) -> bool:
        """True when the label is a reason to refuse."""
        return self.label in REFUSALS

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (what ``audit export`` writes)."""
        return asdict(self)


@dataclass(frozen=True)
class VerifyResult:
    """What ``AuditLog.verify`` found.

    Attributes:
        ok: True when the file, every record, the chain head and any checkpoints check out.
        checked: records that verified before the first problem (all of them when ok).
        record_id: the first bad record (for ``deleted``/``truncated``: the missing one), if one.
        problem: ``"edited"``, ``"deleted"``, ``"inserted"``, ``"reordered"``, ``"truncated"``,
            ``"head"`` (the chain head was rewritten without the key), ``"key"`` (the key
            file is missing or not the log's), ``"checkpoint"`` (the records a checkpoint
            covers were changed, or the checkpoint is not genuine) or ``"damaged"`` (SQLite's
            integrity check failed, or a table is missing).
        detail: one sentence for people.
        head_hash: hash of the last record per the chain head (what a checkpoint signs).
        unkeyed: records written before the chain was keyed (plain SHA-256: anyone could
            re-hash them, so only a checkpoint protects them from a careful forger).
        checkpointed: records proven unchanged by the checkpoints given (the largest count
            that matched), or None without checkpoints.
        keyed: the chain head carries a MAC under the log key (every log a writer of this
            version has opened); False for an old log not yet upgraded, whose records anyone
            could re-hash.
    """

    ok: bool
    checked: int
    record_id: str | None = None
    problem: str | None = None
    detail: str = ""
    head_hash: str = ""
    unkeyed: int = 0
    checkpointed: int | None = None
    keyed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


# -- reading records -------------------------------------------------------------------

_RECORD_FIELDS = tuple(f.name for f in fields(AuditRecord))


def record_from_row(row: sqlite3.Row) -> AuditRecord:
    """Decode one ``records`` row (JSON columns parsed).

    Raises:
        AuditError: a JSON column no longer parses.
    """
    present = [name for name in KEYED_FIELDS if name in row.keys()]  # a log opened read-only, not migrated
    try:
        values = row_to_fields(row, present)
    except ValueError as e:
        raise AuditError(f"record {row['id']} holds damaged JSON ({e}); run `phasegpt audit verify`") from e
    values["hash"] = row["hash"]
    values["kind"] = values.get("kind") or "verdict"  # records written before completions existed
    return AuditRecord(**{name: values.get(name) for name in _RECORD_FIELDS})


def and_where(where: str, clause: str) -> str:
    """``where`` (from ``where_clause``, maybe empty) with one more condition."""
    return f"{where} AND {clause}" if where else f" WHERE {clause}"


def where_clause(label: str | None, since: Any, until: Any, model: str | None) -> tuple[str, list[Any]]:
    """The ``WHERE`` clause (empty when no filter is set) and its arguments for a query.

    Args:
        label: keep only this label.
        since: keep records at or after this time (datetime, ISO 8601 or an age like ``24h``).
        until: keep records before this time (same forms).
        model: keep only this base model name.

    Raises:
        ValueError: an unknown label or a time that cannot be read.
    """
    clauses, args = [], []
    if label is not None:
        if label not in LABELS:
            raise ValueError(f"unknown label {label!r}; choose one of {', '.join(LABELS)}")
        clauses.append("label = ?")
        args.append(label)
    if since is not None:
        clauses.append("created_at >= ?")
        args.append(_when(since))
    if until is not None:
        clauses.append("created_at < ?")
        args.append(_when(until))
    if model is not None:
        clauses.append("model = ?")
        args.append(model)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def summarize(query: Callable[[str, Sequence[Any]], list[Any]], where: str, args: list[Any],
              completions: int = 0) -> dict[str, Any]:
    """Counts by label, model and source, first/last time, mean confidence and duration.

    Args:
        query: runs one SQL statement with its arguments and returns all rows.
        where: the clause from ``where_clause`` (verdict records only); ``args`` are its arguments.
        completions: completion records (the ends of streamed generations) matching the
            same filters, reported beside the verdicts they complete, never counted as verdicts.
    """
    ((n, first, last, conf, dur),) = query(
        f"SELECT count(*), min(created_at), max(created_at), avg(confidence), avg(duration) FROM records{where}",
        args,
    )

    def by(col: str) -> dict[str, int]:
        rows = query(f"SELECT {col}, count(*) FROM records{where} GROUP BY {col} ORDER BY 2 DESC", args)
        return {r[0]: r[1] for r in rows}

    labels = {name: 0 for name in LABELS} | by("label")
    return {
        "count": n,
        "refusals": sum(v for k, v in labels.items() if k in REFUSALS),
        "labels": labels,
        "models": by("model"),
        "sources": by("source"),
        "first": first,
        "last": last,
        "mean_confidence": conf,
        "mean_duration": dur,
        "completions": completions,
    }


def _when(value: str | datetime) -> str:
    """A time filter as the UTC ISO text that ``created_at`` compares against."""
    if isinstance(value, datetime):
        dt = value
    else:
        text = value.strip()
        age = _AGE_RE.fullmatch(text)
        if age:
            dt = datetime.now(timezone.utc) - timedelta(**{_AGE_UNITS[age.group(2)]: int(age.group(1))})
        else:
            try:
                dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                raise ValueError(
                    f"cannot read the time {value!r}: use ISO 8601 (2025-01-31, 2025-01-31T14:00Z) "
                    "or an age such as 30m, 24h, 7d"
                ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)  # naive times are taken as UTC, like the log
    return dt.astimezone(timezone.utc).isoformat(timespec="microseconds")


# -- chain check -----------------------------------------------------------------------


def walk(db: sqlite3.Connection, key: LogKey | None, checkpoints: Sequence[Checkpoint] = (),
         pinned: Any = None) -> VerifyResult:
    """Check the file, the key, every record in chain order, the chain head and the checkpoints.

    The caller holds a read transaction, so head and records are one snapshot. Records up to
    ``key.keyed_from`` are checked under plain SHA-256, later ones under the chain key.

    Args:
        db: the log, opened (read-only is enough).
        key: the log's key file, read; None when there is none.
        checkpoints: signed checkpoints kept elsewhere; the records each covers must be unchanged.
        pinned: an Ed25519 public key every checkpoint must be signed by.

    Returns:
        What was found; ``ok`` when everything checks out.
    """
    damage = [" ".join(str(r[0]).split()) for r in db.execute("PRAGMA integrity_check(5)")]  # one line each
    if damage != ["ok"]:
        return _result(0, None, "damaged", "SQLite's integrity check failed: " + "; ".join(damage)
                       + "; restore the file from backup")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not {"records", "chain_head", "audit_meta"} <= tables:
        return _result(0, None, "damaged", "a table of the log is missing (records, chain_head or audit_meta)")
    has_mac = "mac" in {r[1] for r in db.execute("PRAGMA table_info(chain_head)")}
    head = db.execute(f"SELECT count, last_id, last_hash, {'mac' if has_mac else 'NULL'} FROM chain_head").fetchone()
    if head is None:
        return _result(0, None, "damaged", "the chain_head row is missing, so a cut-off tail cannot be ruled out")
    count, last_id, last_hash, mac = head
    meta = dict(db.execute("SELECT name, value FROM audit_meta").fetchall())
    bad = _check_key(key, meta, count) or _check_checkpoints(checkpoints, pinned, key, meta)
    if bad:
        return _result(0, None, *bad, last_hash)
    keyed_from = key.keyed_from if key is not None else None
    unkeyed = count if keyed_from is None else min(count, keyed_from)
    marks = {c.count: c for c in checkpoints}
    matched = 0 if 0 in marks else None

    def result(n: int, rid: str | None, what: str | None, detail: str) -> VerifyResult:
        return _result(n, rid, what, detail, last_hash, unkeyed, matched, keyed_from is not None)

    prev, n = None, 0
    for row in db.execute("SELECT * FROM records ORDER BY seq"):
        if not _intact(row, key, n + 1):
            return result(n, row["id"], "edited", f"record {row['id']} (#{n + 1}) no longer matches its hash: "
                          "a field was changed")
        want_id, want_hash = (prev["id"], prev["hash"]) if prev else (None, GENESIS)
        if row["prev_id"] != want_id or row["prev_hash"] != want_hash:
            return result(n, *_broken_link(db, row, prev, last_id))
        prev, n = row, n + 1
        if n in marks:
            if (row["id"], row["hash"]) != (marks[n].head_id, marks[n].head_hash):
                return result(n - 1, row["id"], "checkpoint", _rewritten(marks[n], row))
            matched = n
    end_id, end_hash = (prev["id"], prev["hash"]) if prev else (None, GENESIS)
    beyond = [c for c in checkpoints if c.count > n]
    if beyond:
        c = max(beyond, key=lambda c: c.count)
        return result(n, c.head_id, "truncated", f"the checkpoint of {c.time} counts {c.count} records, ending at "
                      f"{c.head_id}, but the log holds {n}: records were cut from the end")
    if n == count and end_hash == last_hash:
        if keyed_from is not None and count < keyed_from:
            return result(n, None, "truncated", f"the key file says {keyed_from} records were written before the "
                          f"chain was keyed, but the log holds {count}: records were cut from the end")
        if keyed_from is not None and mac != head_mac(key.chain_key, count, last_id, last_hash):
            return result(n, last_id, "head", "the chain head does not carry the log key's MAC: it was rewritten "
                          "by someone without the key (records may have been cut from the end)")
        return result(n, None, None, "")
    if n < count and end_id != last_id:
        detail = (
            f"the log ends after {n} records (at {end_id or 'the start'}) but the chain head says {count}, "
            f"ending at {last_id}: {count - n} records were cut from the end"
        )
        return result(n, last_id, "truncated", detail)
    if n > count:
        # The head's last record is where the real chain ended; anything after it was added.
        extra = db.execute(
            "SELECT id FROM records WHERE seq > coalesce((SELECT seq FROM records WHERE id = ?), 0) "
            "ORDER BY seq LIMIT 1",
            (last_id,),
        ).fetchone()
        detail = f"{n - count} records more than the chain head counts; the first is {extra['id']}"
        return result(n, extra["id"], "inserted", detail)
    # Same length or same last record, yet the head disagrees: the chain was rebuilt.
    detail = f"the chain head expects record {last_id} with another hash: records were removed or re-hashed"
    return result(n, last_id, "edited" if end_id == last_id else "deleted", detail)


def _check_key(key: LogKey | None, meta: dict[str, str], count: int) -> tuple[str, str] | None:
    """("key", why) when the key file is missing or not the one this log was written with."""
    stored = meta.get("key_id")
    if key is None:
        if count or stored:
            return "key", "the log's key file is missing: restore it from backup (verifying needs it)"
    elif stored is None:
        if count:
            return "key", f"the log holds {count} records but no key id: its key file {key.path} cannot be matched"
    elif stored != key.key_id:
        return "key", (f"the key file {key.path} (key id {key.key_id}) is not the one the log was written with "
                       f"(key id {stored}): the key file was replaced")
    return None


def _check_checkpoints(checkpoints: Sequence[Checkpoint], pinned: Any, key: LogKey | None,
                       meta: dict[str, str]) -> tuple[str, str] | None:
    """(problem, why) for the first checkpoint that is not genuine or not about this log and key."""
    for c in checkpoints:
        bad = c.check(pinned)
        if bad:
            return "checkpoint", bad
        if c.log_id is not None and meta.get("log_id") not in (None, c.log_id):
            return "checkpoint", f"the checkpoint of {c.time} is for log {c.log_id}, not this one ({meta['log_id']})"
        if key is not None and c.key_id != key.key_id:
            return "key", (f"the key file {key.path} (key id {key.key_id}) is not the key the checkpoint of "
                           f"{c.time} vouched for (key id {c.key_id}): the key file was replaced since")
    return None


def _intact(row: sqlite3.Row, key: LogKey | None, position: int) -> bool:
    """Whether the record at chain ``position`` (from 1) matches its hash, in its format."""
    try:
        if key is not None and key.keyed_from is not None and position > key.keyed_from:
            return keyed_record_hash(key.chain_key, row_to_fields(row, KEYED_FIELDS)) == row["hash"]
        # An unkeyed record predates the keyed fields: a value there was added after the fact.
        added = any(name in row.keys() and row[name] is not None for name in KEYED_FIELDS[len(FIELDS):])
        return not added and record_hash(row_to_fields(row)) == row["hash"]
    except ValueError:  # a JSON column no longer parses
        return False


def _rewritten(c: Checkpoint, row: sqlite3.Row) -> str:
    signer = public_key_id(c.signer())
    return (f"record #{c.count} is {row['id']} with hash {row['hash'][:16]}..., but the checkpoint of {c.time} "
            f"(signed by {signer}) says {c.head_id} with {c.head_hash[:16]}...: records up to it were changed "
            "and the chain re-hashed")


def _broken_link(db: sqlite3.Connection, row: sqlite3.Row, prev: sqlite3.Row | None, head_id: str | None) -> tuple:
    """Name what happened where ``row`` does not link to ``prev``: (record id, problem, detail)."""
    rid, pid = row["id"], row["prev_id"]
    want = prev["id"] if prev else None
    hit = db.execute("SELECT seq FROM records WHERE id = ?", (pid,)).fetchone() if pid else None
    if hit and hit["seq"] > row["seq"]:
        return rid, "reordered", f"record {rid} comes before {pid}, the record it was written after"
    if prev is not None and pid == want:
        return want, "edited", f"record {want} was changed and re-hashed: {rid} recorded another hash for it"
    after = db.execute("SELECT prev_id FROM records WHERE seq > ? ORDER BY seq LIMIT 1", (row["seq"],)).fetchone()
    # `row` is an intruder when the chain carries on past it as if it were not there.
    if (after["prev_id"] if after else head_id) == want:
        return rid, "inserted", f"record {rid} is not part of the chain: the next record links to {want or 'the start'}"
    if pid is not None and hit is None:
        return pid, "deleted", f"record {pid} is missing: {rid} was written right after it"
    # `row` links to a record further back: what stands between is not part of the chain.
    first = db.execute(
        "SELECT id FROM records WHERE seq > ? ORDER BY seq LIMIT 1", (hit["seq"] if hit else 0,)
    ).fetchone()
    return first["id"], "inserted", f"record {first['id']} is not part of the chain: {rid} links past it"


def _result(checked: int, record_id: str | None, problem: str | None, detail: str, head: str = "",
            unkeyed: int = 0, checkpointed: int | None = None, keyed: bool = False) -> VerifyResult:
    return VerifyResult(
        ok=problem is None, checked=checked, record_id=record_id, problem=problem, detail=detail, head_hash=head,
        unkeyed=unkeyed, checkpointed=checkpointed, keyed=keyed,
    )
