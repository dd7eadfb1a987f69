"""A tamper-evident SQLite log of verdicts: why the model refused what it refused.

One row per verdict, written in one transaction that also advances a keyed hash chain
(each record carries an HMAC, under a key kept outside the database, of its fields and
of the record before it) and a one-row chain head (count, last hash and the head's own
MAC), so ``verify()`` can later tell whether a record was edited, deleted, inserted,
moved, or cut off the end, by anyone who does not hold the key. ``checkpoint()`` signs
the head with Ed25519 for keeping elsewhere; ``verify(checkpoint=...)`` then proves the
records it covers unchanged even against someone who holds or replaced the key.

Nothing of the caller's text is stored readable unless ``store_text=True``: prompts,
documents, responses and evidence words are HMAC-SHA256 under the log key (``audit.key``
beside the database). Many processes may write to one log at once.

Schema migrations and the record hashes live in ``phasegpt.audit.migrations``, the keys in
``phasegpt.audit.keys``, the write path of the chain in ``phasegpt.audit.chain``, checkpoints
in ``phasegpt.audit.checkpoint``, file handling in ``phasegpt.audit.storage``, and what reads return (records, stats, the chain walk behind
``verify()``) in ``phasegpt.audit.verify``.
"""

from __future__ import annotations

import sqlite3
import threading
import warnings
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from phasegpt.audit import chain
from phasegpt.audit import checkpoint as cp
from phasegpt.audit import keys
from phasegpt.audit import migrations as fmt
from phasegpt.audit import storage
from phasegpt.audit.verify import AuditRecord, VerifyResult, and_where, record_from_row, summarize, walk, where_clause
from phasegpt.errors import AuditError
from phasegpt.paths import user_dir
from phasegpt.verdict import REFUSALS, Verdict

def default_path() -> Path:
    """``$PHASEGPT_HOME/audit.db`` (see ``phasegpt.paths.user_dir``); nothing is created."""
    return user_dir(create=False) / "audit.db"


class AuditLog:
    """The audit log; a thin owner of one SQLite connection (thread-safe).

    Args:
        path: database file; default ``$PHASEGPT_HOME/audit.db``. Created if missing
            (owner-only, like its folder when phasegpt creates it).
        key_path: the log's key file; default beside the database (``audit.key``). Keep it
            where those who may read the database cannot (see README, threat model).
        store_text: also store prompt, context, response and evidence text (keyed hashes
            are always stored).
        only_refusals: skip verdicts whose label is ``answer``.
        on_error: ``"raise"`` (fail closed: a failed write raises AuditError) or ``"warn"``.
        timeout: seconds to keep retrying while other writers hold the lock.
        durable: fsync every record (SQLite ``synchronous=FULL``), so a returned record
            survives a power cut; False (``NORMAL``) still survives a crashed process and
            is about 3x faster, but a power cut may drop the last records.
        read_only: never write, not even the side files a writer needs: for reading and
            verifying a log on read-only storage or one that is not yours to change.

    Raises:
        ValueError: on a bad option.
        AuditError: when the database cannot be opened (``on_error="raise"`` only).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        key_path: str | Path | None = None,
        store_text: bool = False,
        only_refusals: bool = False,
        on_error: str = "raise",
        timeout: float = 30.0,
        durable: bool = True,
        read_only: bool = False,
    ) -> None:
        if on_error not in ("raise", "warn"):
            raise ValueError(f"on_error must be 'raise' or 'warn', not {on_error!r}")
        if not timeout >= 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, not {timeout!r}")
        self.path = Path(path).expanduser() if path is not None else default_path()
        self.key_path = Path(key_path).expanduser() if key_path is not None else self.path.with_suffix(".key")
        self.store_text, self.only_refusals = store_text, only_refusals
        self.on_error, self.timeout, self.durable = on_error, float(timeout), durable
        self.read_only = read_only
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._key: keys.LogKey | None = None  # set up for writing (checked against the log) on first write
        try:
            self._conn()
        except AuditError as e:
            if on_error == "raise" or read_only:
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
                self._db, self._key = None, None

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
        completes: str | None = None,
    ) -> str | None:
        """Append one verdict to the log in a single transaction.

        Args:
            verdict: the verdict to record.
            prompt: the user's prompt (bytes are hashed as given, so need not be UTF-8).
            contexts: RAG documents, each a string or ``{"id": ..., "text": ...}``; ids are
                stored as given (pass ids, not text).
            response: the generated text, if any.
            source: ``"cli"`` or ``"api"``.
            duration: seconds the verdict took.
            metadata: caller's own JSON-serialisable facts (request id, user group ...),
                stored as given.
            completes: id of the verdict record this one completes: a ``"completion"``
                record, written when a stream that logged its verdict first ends, carrying
                the response and its finish reason.

        Returns:
            The new record's id, or None when skipped by ``only_refusals`` or when the
            write failed under ``on_error="warn"``.

        Raises:
            ValueError, TypeError: on bad arguments (whatever ``on_error`` says).
            AuditError: when the write failed (disk full, read-only, locked past ``timeout``,
                or the log was tampered with: a writer never extends a chain that fails its MAC).
        """
        if self.only_refusals and verdict.label not in REFUSALS:
            return None
        if completes is not None and not isinstance(completes, str):
            raise TypeError(f"completes must be a record id (str) or None, not {type(completes).__name__}")
        body = fmt.verdict_fields(verdict, source, duration, metadata)
        body.update(kind="verdict" if completes is None else "completion", parent_id=completes)
        try:
            key = self._writer_key()
            body.update(fmt.text_fields(key.secret, prompt, contexts, response, verdict.evidence,
                                        store_text=self.store_text))
            encoded = fmt.encode(body)  # the slow part, done before taking any lock
            with self._lock:
                return self._retry(lambda: self._append(body, encoded, key), "write a record to")
        except AuditError as e:
            if self.on_error == "raise":
                raise
            warnings.warn(str(e), RuntimeWarning, stacklevel=2)
            return None

    def _append(self, body: dict[str, Any], encoded: dict[str, str], key: keys.LogKey) -> str:
        return chain.append(self._conn(), self.path, key, body, encoded)

    def _writer_key(self) -> keys.LogKey:
        """The log key, made or upgraded and checked against the log once per connection."""
        with self._lock:
            if self._key is None:
                if self.read_only:
                    raise AuditError(f"audit log {self.path} was opened read_only; open it without to write")
                self._key = self._retry(lambda: chain.setup_key(self._conn(), self.path, self.key_path),
                                        "set up the key of")
            return self._key

    # -- connection, retries ---------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        with self._lock:
            if self._db is None:
                self._db = self._open_read_only() if self.read_only else self._open()
            return self._db

    def _open(self) -> sqlite3.Connection:
        try:
            storage.prepare_files(self.path)
            db = storage.connect(self.path, self.timeout)
        except (OSError, sqlite3.Error) as e:
            raise AuditError(f"cannot open audit log {self.path}: {e}; check the folder exists and is writable") from e
        db.row_factory = sqlite3.Row

        def setup() -> None:
            self._check_schema(db)
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                db.execute("PRAGMA journal_mode = WAL")  # lets readers run beside the writer
            if fmt.pending(db):
                db.execute("BEGIN IMMEDIATE")
                try:
                    fmt.migrate(db)  # re-checks inside the lock: another process may have won
                    db.execute("COMMIT")
                except BaseException:
                    storage.rollback(db)
                    raise

        try:
            self._retry(setup, "open")
        except BaseException:
            db.close()
            raise
        db.execute(f"PRAGMA synchronous = {'FULL' if self.durable else 'NORMAL'}")
        return db

    def _open_read_only(self) -> sqlite3.Connection:
        db = storage.open_read_only(self.path, self.timeout)
        db.row_factory = sqlite3.Row
        try:
            self._retry(lambda: self._check_schema(db, empty_ok=False), "open")
        except BaseException:
            db.close()
            raise
        return db

    def _check_schema(self, db: sqlite3.Connection, *, empty_ok: bool = True) -> None:
        done = fmt.applied(db)
        if not done and (not empty_ok or db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]):
            raise AuditError(f"{self.path} is an SQLite database but not a phasegpt audit log; pass another path")
        if set(done) - {fn.__name__ for fn in fmt.MIGRATIONS}:
            raise AuditError(f"audit log {self.path} was written by a newer phasegpt; upgrade phasegpt to use it")

    def _retry(self, fn: Any, doing: str) -> Any:
        return storage.retry(fn, doing, self.path, self.timeout)

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
        """Records in chain order (oldest first unless ``newest_first``), verdicts and completions.

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
        """Number of records in the log (verdicts and completions)."""
        return self._query("SELECT count(*) FROM records")[0][0]

    def stats(
        self,
        label: str | None = None,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        model: str | None = None,
    ) -> dict[str, Any]:
        """Verdicts by label, model and source, first/last time, mean confidence and duration;
        ``completions`` counts the completion records of streams beside them."""
        where, args = where_clause(label, since, until, model)
        if not self._has_column("records", "kind"):  # a log opened read-only, not yet migrated
            return summarize(self._query, where, args)
        done = self._query(f"SELECT count(*) FROM records{and_where(where, 'kind = ?')}", [*args, "completion"])
        verdicts = and_where(where, "coalesce(kind, 'verdict') = 'verdict'")
        return summarize(self._query, verdicts, args, done[0][0])

    def status(self) -> dict[str, Any]:
        """Where the log and its key are, its size, id, schema migrations and chain head."""
        count, last_id, last_hash = self._query("SELECT count, last_id, last_hash FROM chain_head")[0]
        size = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file())
        meta = dict(self._query("SELECT name, value FROM audit_meta"))
        key = keys.read_key(self.key_path)
        return {
            "path": str(self.path),
            "key_path": str(self.key_path),
            "key_id": key.key_id if key else None,
            "log_id": meta.get("log_id"),
            "records": self.count(),
            "unkeyed_records": count if key is None or key.keyed_from is None else min(count, key.keyed_from),
            "size_bytes": size,
            "migrations": fmt.applied(self._conn()),
            "head_count": count,
            "head_id": last_id,
            "head_hash": last_hash,
        }

    def verify(
        self,
        checkpoint: str | Path | cp.Checkpoint | Sequence[cp.Checkpoint] | None = None,
        *,
        public_key: str | Path | None = None,
    ) -> VerifyResult:
        """Check the file (``PRAGMA integrity_check``), every record's keyed hash, the chain's
        links and its head's MAC; with checkpoints, also that the records each covers are the
        ones it was made over. See ``VerifyResult`` and the README's threat model.

        Args:
            checkpoint: checkpoints kept elsewhere: a file (one JSON object, or one per line),
                a Checkpoint, or a list of them.
            public_key: a PEM file of the key every checkpoint must be signed by (recommended:
                without it, a checkpoint's own key is trusted).

        Raises:
            AuditError: when the log cannot be read at all.
            ValueError, FileNotFoundError: a checkpoint or public key file that cannot be read.
        """
        found = _checkpoints(checkpoint)
        pinned = keys.read_public_key(Path(public_key)) if public_key is not None else None
        return self._snapshot(lambda db: walk(db, keys.read_key(self.key_path), found, pinned), "verify")

    def checkpoint(self, signing_key: str | Path | None = None) -> cp.Checkpoint:
        """A signed checkpoint of the log as it is now, after verifying it.

        Args:
            signing_key: the Ed25519 key file (PEM); default ``$PHASEGPT_AUDIT_SIGNING_KEY`` or
                ``$PHASEGPT_HOME/audit-signing.key``, made on first use.

        Raises:
            AuditError: the log fails verification (nothing broken is ever signed), has no
                records yet, or the signing key cannot be read or made.
        """
        signer = keys.signing_key(Path(signing_key).expanduser() if signing_key is not None else None)

        def make(db: sqlite3.Connection) -> cp.Checkpoint:
            key = keys.read_key(self.key_path)
            result = walk(db, key)
            if not result.ok:
                raise AuditError(f"audit log {self.path} fails verification, so it is not signed: "
                                 f"{result.problem}: {result.detail}")
            count, last_id, last_hash = db.execute("SELECT count, last_id, last_hash FROM chain_head").fetchone()
            if key is None or not count:
                raise AuditError(f"audit log {self.path} has no records yet: there is nothing to checkpoint")
            log_id = db.execute("SELECT value FROM audit_meta WHERE name = 'log_id'").fetchone()
            return cp.sign(signer, log_id=log_id[0] if log_id else None, count=count, head_id=last_id,
                           head_hash=last_hash, key_id=key.key_id)

        return self._snapshot(make, "checkpoint")

    def _snapshot(self, fn: Any, doing: str) -> Any:
        def run() -> Any:
            db = self._conn()
            db.execute("BEGIN")  # one snapshot for the head and all records
            try:
                return fn(db)
            finally:
                storage.rollback(db)

        with self._lock:
            return self._retry(run, doing)

    def _has_column(self, table: str, column: str) -> bool:
        return column in {r[1] for r in self._query(f"PRAGMA table_info({table})")}

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


def _checkpoints(given: Any) -> list[cp.Checkpoint]:
    if given is None:
        return []
    if isinstance(given, cp.Checkpoint):
        return [given]
    if isinstance(given, (str, Path)):
        return cp.load(given)
    found = list(given)
    if not all(isinstance(c, cp.Checkpoint) for c in found):
        raise ValueError("checkpoint must be a file, a Checkpoint or a list of Checkpoints")
    return found
