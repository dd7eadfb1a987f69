"""A tamper-evident SQLite log of verdicts: why the model refused what it refused.

One row per verdict, written in one transaction that also advances a hash chain
(each record carries the SHA-256 of the one before it) and a one-row chain head
(count and last hash), so ``verify()`` can later tell whether a record was edited,
deleted, inserted, moved, or cut off the end. Prompts and documents are stored as
HMAC-SHA256 under a per-log secret key (``audit.key`` beside the database); their
text only with ``store_text=True``. Many processes may write to one log at once.

Schema migrations and the record hash live in ``phasegpt.audit.migrations``; what
reads return (records, stats, the chain walk behind ``verify()``) in ``phasegpt.audit.verify``.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from phasegpt.audit import migrations as fmt
from phasegpt.audit.verify import (
    AuditRecord,
    VerifyResult,
    record_from_row,
    summarize,
    walk,
    where_clause,
)
from phasegpt.errors import AuditError
from phasegpt.paths import user_dir
from phasegpt.verdict import REFUSALS, Verdict

# Per-attempt wait inside SQLite's own busy handler; our loop retries until `timeout`.
_BUSY_SLICE = 0.25
_INSERT = f"INSERT INTO records ({', '.join(fmt.FIELDS)}, hash) VALUES ({', '.join('?' * (len(fmt.FIELDS) + 1))})"


def default_path() -> Path:
    """``$PHASEGPT_HOME/audit.db`` (see ``phasegpt.paths.user_dir``)."""
    return user_dir() / "audit.db"


class AuditLog:
    """The audit log; a thin owner of one SQLite connection (thread-safe).

    Args:
        path: database file; default ``$PHASEGPT_HOME/audit.db``. Created if missing.
        store_text: also store prompt, context and response text (hashes are always stored).
        only_refusals: skip verdicts whose label is ``answer``.
        on_error: ``"raise"`` (fail closed: a failed write raises AuditError) or ``"warn"``.
        timeout: seconds to keep retrying while other writers hold the lock.
        durable: fsync every record (SQLite ``synchronous=FULL``), so a returned record
            survives a power cut; False (``NORMAL``) still survives a crashed process and
            is about 3x faster, but a power cut may drop the last records.

    Raises:
        ValueError: on a bad option.
        AuditError: when the database cannot be opened (``on_error="raise"`` only).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        store_text: bool = False,
        only_refusals: bool = False,
        on_error: str = "raise",
        timeout: float = 30.0,
        durable: bool = True,
    ) -> None:
        if on_error not in ("raise", "warn"):
            raise ValueError(f"on_error must be 'raise' or 'warn', not {on_error!r}")
        if not timeout >= 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, not {timeout!r}")
        self.path = Path(path).expanduser() if path is not None else default_path()
        self.key_path = self.path.with_suffix(".key")
        self.store_text, self.only_refusals = store_text, only_refusals
        self.on_error, self.timeout, self.durable = on_error, float(timeout), durable
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._key: bytes | None = None
        self._key_checked = False  # the key matches the log's key id (checked once per connection)
        try:
            self._conn()
        except AuditError as e:
            if on_error == "raise":
                raise
            warnings.warn(str(e), RuntimeWarning, stacklevel=2)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (the log reopens itself if used again)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db, self._key_checked = None, False

    # -- writing ----------------------------------------------------------------------

    def record(
        self,
        verdict: Verdict,
        *,
        prompt: str | bytes,
        contexts: Sequence[str | bytes | dict] | None = None,
        response: str | None = None,
        source: str = "api",
        duration: float | None = None,
        metadata: dict | None = None,
    ) -> str | None:
        """Append one verdict to the log in a single transaction.

        Args:
            verdict: the verdict to record.
            prompt: the user's prompt (bytes are hashed as given, so need not be UTF-8).
            contexts: RAG documents, each a string or ``{"id": ..., "text": ...}``.
            response: the generated text, if any.
            source: ``"cli"`` or ``"api"``.
            duration: seconds the verdict took.
            metadata: caller's own JSON-serialisable facts (request id, user group ...).

        Returns:
            The new record's id, or None when skipped by ``only_refusals`` or when the
            write failed under ``on_error="warn"``.

        Raises:
            ValueError, TypeError: on bad arguments (whatever ``on_error`` says).
            AuditError: when the write failed (disk full, read-only, locked past ``timeout``).
        """
        if self.only_refusals and verdict.label not in REFUSALS:
            return None
        body = fmt.verdict_fields(verdict, source, duration, metadata)
        try:
            with self._lock:
                key = self._secret()
            body.update(fmt.text_fields(key, prompt, contexts, response, store_text=self.store_text))
            encoded = fmt.encode(body)  # the slow part, done before taking any lock
            with self._lock:
                return self._retry(lambda: self._append(body, encoded), "write a record to")
        except AuditError as e:
            if self.on_error == "raise":
                raise
            warnings.warn(str(e), RuntimeWarning, stacklevel=2)
            return None

    def _append(self, body: dict[str, Any], encoded: dict[str, str]) -> str:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")  # take the write lock before reading the head
        try:
            count, last_id, last_hash = db.execute("SELECT count, last_id, last_hash FROM chain_head").fetchone()
            if not self._key_checked:
                self._check_key(db)
            now_ns = time.time_ns()
            rid = fmt.next_id(now_ns, last_id)
            created = datetime.fromtimestamp(now_ns / 1e9, timezone.utc).isoformat(timespec="microseconds")
            chain = {"id": rid, "created_at": created, "prev_id": last_id, "prev_hash": last_hash}
            digest = fmt.hash_encoded({**encoded, **fmt.encode(chain)})
            row = fmt.fields_to_row({**body, **chain}, encoded)
            db.execute(_INSERT, (*row, digest))
            db.execute("UPDATE chain_head SET count = ?, last_id = ?, last_hash = ?", (count + 1, rid, digest))
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        self._key_checked = True
        return rid

    def _secret(self) -> bytes:
        if self._key is None:
            self._key = fmt.load_or_create_key(self.key_path)
        return self._key

    def _check_key(self, db: sqlite3.Connection) -> None:
        # Hashes are only comparable under one key: refuse to mix keys in one log.
        key_id = hashlib.sha256(b"phasegpt-audit-key-id:" + self._secret()).hexdigest()[:16]
        row = db.execute("SELECT value FROM audit_meta WHERE name = 'key_id'").fetchone()
        if row is None:
            db.execute("INSERT INTO audit_meta (name, value) VALUES ('key_id', ?)", (key_id,))
        elif row[0] != key_id:
            raise AuditError(
                f"the key file {self.key_path} is not the one audit log {self.path} was written with "
                f"(key id {key_id}, log expects {row[0]}); restore the original key file or start a new log"
            )

    # -- connection, retries ---------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        with self._lock:
            if self._db is None:
                self._db = self._open()
            return self._db

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=min(_BUSY_SLICE, self.timeout), isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as e:
            raise AuditError(f"cannot open audit log {self.path}: {e}; check the folder exists and is writable") from e
        db.row_factory = sqlite3.Row

        def setup() -> None:
            done = fmt.applied(db)
            if not done and db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise AuditError(f"{self.path} is an SQLite database but not a phasegpt audit log; pass another path")
            if set(done) - {fn.__name__ for fn in fmt.MIGRATIONS}:
                raise AuditError(f"audit log {self.path} was written by a newer phasegpt; upgrade phasegpt to use it")
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode = WAL")  # lets readers run beside the writer
            if fmt.pending(db):
                db.execute("BEGIN IMMEDIATE")
                try:
                    fmt.migrate(db)  # re-checks inside the lock: another process may have won
                    db.execute("COMMIT")
                except BaseException:
                    _rollback(db)
                    raise

        try:
            self._retry(setup, "open")
        except BaseException:
            db.close()
            raise
        db.execute(f"PRAGMA synchronous = {'FULL' if self.durable else 'NORMAL'}")
        return db

    def _retry(self, fn: Callable[[], Any], doing: str) -> Any:
        """Run ``fn``, retrying with jittered backoff while SQLite says busy/locked, until ``timeout``."""
        deadline = time.monotonic() + self.timeout
        delay = 0.002
        while True:
            try:
                return fn()
            except sqlite3.Error as e:
                if not _is_busy(e):
                    raise AuditError(f"could not {doing} audit log {self.path}: {e}; {_hint(e)}") from e
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AuditError(
                        f"could not {doing} audit log {self.path}: still locked by another writer after "
                        f"{self.timeout:g} s; retry later or pass a larger timeout"
                    ) from e
                time.sleep(min(left, delay * (0.5 + random.random())))  # jitter: writers don't retry in step
                delay = min(delay * 2, 0.05)

    # -- reading ---------------------------------------------------------------------

    def __iter__(self) -> Iterator[AuditRecord]:
        return self.records()

    def records(
        self,
        label: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        model: str | None = None,
        limit: int | None = None,
        *,
        newest_first: bool = False,
    ) -> Iterator[AuditRecord]:
        """Records in chain order (oldest first unless ``newest_first``).

        Args:
            label: keep only this label.
            since: keep records at or after this time: a datetime, ISO 8601
                (``2025-01-31``, ``2025-01-31T14:00Z``) or an age (``30m``, ``24h``, ``7d``).
            until: keep records before this time (same forms).
            model: keep only this base model name.
            limit: at most this many records.
            newest_first: newest record first (``limit`` then keeps the newest).
        """
        where, args = where_clause(label, since, until, model)  # checked now, not at the first next()
        sql = f"SELECT * FROM records{where} ORDER BY seq {'DESC' if newest_first else 'ASC'}"
        if limit is not None:
            if not isinstance(limit, int) or limit < 0:
                raise ValueError(f"limit must be a whole number >= 0, not {limit!r}")
            sql += f" LIMIT {limit}"
        return self._select(sql, args)

    def get(self, id: str) -> AuditRecord | None:
        """The record with this id, or None."""
        return next(self._select("SELECT * FROM records WHERE id = ?", (id,)), None)

    def count(self) -> int:
        """Number of records in the log."""
        return self._query("SELECT count(*) FROM records")[0][0]

    def stats(
        self,
        label: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        model: str | None = None,
    ) -> dict[str, Any]:
        """Counts by label, model and source, first/last time, mean confidence and duration."""
        return summarize(self._query, *where_clause(label, since, until, model))

    def status(self) -> dict[str, Any]:
        """Where the log is, its size, schema migrations and chain head."""
        count, last_id, last_hash = self._query("SELECT count, last_id, last_hash FROM chain_head")[0]
        size = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file())
        return {
            "path": str(self.path),
            "key_path": str(self.key_path),
            "records": self.count(),
            "size_bytes": size,
            "migrations": fmt.applied(self._conn()),
            "head_count": count,
            "head_id": last_id,
            "head_hash": last_hash,
        }

    def verify(self) -> VerifyResult:
        """Re-hash every record and walk the chain; see ``VerifyResult``.

        Raises:
            AuditError: when the log cannot be read at all.
        """

        def check() -> VerifyResult:
            db = self._conn()
            db.execute("BEGIN")  # one snapshot for the head and all records
            try:
                return walk(db)
            finally:
                _rollback(db)

        with self._lock:
            return self._retry(check, "verify")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._retry(lambda: self._conn().execute(sql, args).fetchall(), "read")

    def _select(self, sql: str, args: Sequence[Any]) -> Iterator[AuditRecord]:
        # Fetch in batches under the lock, so a long export never holds it between yields.
        with self._lock:
            cur = self._retry(lambda: self._conn().execute(sql, args), "read")
        while True:
            with self._lock:
                rows = self._retry(lambda: cur.fetchmany(256), "read")
            if not rows:
                return
            for row in rows:
                yield record_from_row(row)


# -- helpers ---------------------------------------------------------------------------


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the original error is the one worth reporting


def _is_busy(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(e) or "busy" in str(e)


def _hint(e: sqlite3.Error) -> str:
    text = str(e).lower()
    if "readonly" in text or "read-only" in text:
        return "make the database file and its folder writable, or point PHASEGPT_HOME at a writable folder"
    if "full" in text:
        return "free some disk space"
    if "malformed" in text or "not a database" in text:
        return "the file is damaged or not an audit log; restore it from backup"
    return "check the disk and the file's permissions"

