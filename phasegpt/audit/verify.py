"""Reading the audit log back: records as ``AuditRecord``, filters, stats, and the chain check.

``phasegpt.audit.AuditLog`` owns the connection, the lock and the retries; this module
holds what its reads return and how they are worked out from the rows: the filters
that ``records()`` and ``stats()`` turn into SQL, the decoding of a row into an
``AuditRecord``, the ``stats()`` summary, and ``walk``, which re-hashes every record and
follows the hash chain to name the first record that was edited, deleted, inserted,
moved or cut off the end.
The record hash itself lives in ``phasegpt.audit.migrations`` (it is a storage promise).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta, timezone
from typing import Any

from phasegpt.audit.migrations import GENESIS, record_hash, row_to_fields
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
    evidence: list[str]
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
        ok: True when every record and the chain head check out.
        checked: records that verified before the first problem (all of them when ok).
        record_id: the first bad record (for ``deleted``/``truncated``: the missing one).
        problem: ``"edited"``, ``"deleted"``, ``"inserted"``, ``"reordered"`` or ``"truncated"``.
        detail: one sentence for people.
        head_hash: hash of the last record per the chain head; publish it elsewhere to
            also catch a rewrite of the whole file.
    """

    ok: bool
    checked: int
    record_id: str | None = None
    problem: str | None = None
    detail: str = ""
    head_hash: str = ""

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
    try:
        values = row_to_fields(row)
    except ValueError as e:
        raise AuditError(f"record {row['id']} holds damaged JSON ({e}); run `phasegpt audit verify`") from e
    return AuditRecord(**{name: values.get(name, row[name]) for name in _RECORD_FIELDS})


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


def summarize(query: Callable[[str, Sequence[Any]], list[Any]], where: str, args: list[Any]) -> dict[str, Any]:
    """Counts by label, model and source, first/last time, mean confidence and duration.

    Args:
        query: runs one SQL statement with its arguments and returns all rows.
        where: the clause from ``where_clause``; ``args`` are its arguments.
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


def walk(db: sqlite3.Connection) -> VerifyResult:
    """Re-hash every record in chain order, follow the links, then compare with the head.

    The caller holds a read transaction, so head and records are one snapshot.

    Returns:
        What was found; ``ok`` when every record and the chain head check out.
    """
    head = db.execute("SELECT count, last_id, last_hash FROM chain_head").fetchone()
    if head is None:
        return _result(0, None, "truncated", "the chain_head row is missing, so a cut-off tail cannot be ruled out")
    count, last_id, last_hash = head
    prev, n = None, 0
    for row in db.execute("SELECT * FROM records ORDER BY seq"):
        try:
            intact = record_hash(row_to_fields(row)) == row["hash"]
        except ValueError:  # a JSON column no longer parses
            intact = False
        if not intact:
            detail = f"record {row['id']} (#{n + 1}) no longer matches its hash: a field was changed"
            return _result(n, row["id"], "edited", detail, last_hash)
        want_id, want_hash = (prev["id"], prev["hash"]) if prev else (None, GENESIS)
        if row["prev_id"] != want_id or row["prev_hash"] != want_hash:
            return _result(n, *_broken_link(db, row, prev, last_id), last_hash)
        prev, n = row, n + 1
    end_id, end_hash = (prev["id"], prev["hash"]) if prev else (None, GENESIS)
    if n == count and end_hash == last_hash:
        return _result(n, None, None, "", last_hash)
    if n < count and end_id != last_id:
        detail = (
            f"the log ends after {n} records (at {end_id or 'the start'}) but the chain head says {count}, "
            f"ending at {last_id}: {count - n} records were cut from the end"
        )
        return _result(n, last_id, "truncated", detail, last_hash)
    if n > count:
        # The head's last record is where the real chain ended; anything after it was added.
        extra = db.execute(
            "SELECT id FROM records WHERE seq > coalesce((SELECT seq FROM records WHERE id = ?), 0) "
            "ORDER BY seq LIMIT 1",
            (last_id,),
        ).fetchone()
        detail = f"{n - count} records more than the chain head counts; the first is {extra['id']}"
        return _result(n, extra["id"], "inserted", detail, last_hash)
    # Same length or same last record, yet the head disagrees: the chain was rebuilt.
    detail = f"the chain head expects record {last_id} with another hash: records were removed or re-hashed"
    return _result(n, last_id, "edited" if end_id == last_id else "deleted", detail, last_hash)


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


def _result(checked: int, record_id: str | None, problem: str | None, detail: str, head: str = "") -> VerifyResult:
    return VerifyResult(
        ok=problem is None, checked=checked, record_id=record_id, problem=problem, detail=detail, head_hash=head
    )
