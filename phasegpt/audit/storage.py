"""Opening the log's SQLite file: owner-only permissions, read-only opens, retries while busy.

The log's words are hashed, but its metadata, labels and timings are still nobody else's
business, so the database and the ``-wal``/``-shm`` files SQLite keeps beside it are made
owner-only (0600; SQLite gives the side files the database file's mode), and so is the
folder when phasegpt created it or it is phasegpt's own ``$PHASEGPT_HOME``. A folder you
chose yourself keeps its permissions: only the files in it are tightened.

Reading needs no write access: ``open_read_only`` uses SQLite's ``mode=ro``, and on storage
where not even the ``-shm`` file can be created (a read-only mount, an archived copy),
``immutable=1``, which is exact there because nothing can be changing the file.
"""

from __future__ import annotations

import os
import random
import sqlite3
import stat
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from phasegpt.errors import AuditError
from phasegpt.paths import user_dir

BUSY_SLICE = 0.25  # per-attempt wait inside SQLite's own busy handler; `retry` loops until its timeout


def prepare_files(path: Path) -> None:
    """Create the log's folder and empty database file owner-only, and tighten existing ones.

    Raises:
        OSError: the folder or file cannot be created.
    """
    folder = path.parent
    if not folder.exists():
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    if folder.resolve() == user_dir(create=False).resolve():
        _owner_only(folder)
    try:
        # SQLite makes a missing file with the umask's mode (often 0644); an empty file it
        # opens as a new database, and its -wal and -shm files then copy this file's 0600.
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        _owner_only(p)


def _owner_only(path: Path) -> None:
    """Drop group and other permissions on ``path`` if it exists and is ours (best effort)."""
    try:
        st = path.stat()
        if st.st_uid == os.geteuid() and st.st_mode & 0o077:
            os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)
    except OSError:
        pass  # read-only storage, or another user's file: nothing we may change


def connect(path: Path, timeout: float) -> sqlite3.Connection:
    """A read-write connection in autocommit mode (transactions are explicit)."""
    return sqlite3.connect(path, timeout=min(BUSY_SLICE, timeout), isolation_level=None, check_same_thread=False)


def open_read_only(path: Path, timeout: float) -> sqlite3.Connection:
    """A connection that never writes, even on read-only storage.

    Raises:
        AuditError: the file is missing or unreadable, or its newest changes sit in a
            ``-wal`` file that read-only storage without its ``-shm`` file cannot replay.
    """
    if not path.is_file():
        raise AuditError(f"no audit log at {path}; it is created by the first logged verdict, or pass another path")
    uri = "file:" + urllib.parse.quote(str(path.resolve()))
    try:
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=min(BUSY_SLICE, timeout), isolation_level=None,
                             check_same_thread=False)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens the file (and the WAL index)
        return db
    except sqlite3.DatabaseError as e:
        if "unable to open" not in str(e):
            raise AuditError(f"cannot read audit log {path}: {e}; {hint(e)}") from e
    # mode=ro needs a -shm file it can use or create; where it cannot, the storage is read-only
    # and nothing is writing: immutable is exact unless committed changes wait in the WAL.
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise AuditError(
            f"cannot read audit log {path}: its latest changes are in {wal.name}, which read-only storage "
            f"without {path.name}-shm cannot replay; copy the folder to writable storage and read it there"
        )
    try:
        db = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None, check_same_thread=False)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as e:
        raise AuditError(f"cannot read audit log {path}: {e}; {hint(e)}") from e
    return db


def retry(fn: Callable[[], Any], doing: str, path: Path, timeout: float) -> Any:
    """Run ``fn``, retrying with jittered backoff while SQLite says busy/locked, until ``timeout``.

    Raises:
        AuditError: any other SQLite error, or still busy at the deadline.
    """
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            return fn()
        except sqlite3.Error as e:
            if not is_busy(e):
                raise AuditError(f"could not {doing} audit log {path}: {e}; {hint(e)}") from e
            left = deadline - time.monotonic()
            if left <= 0:
                raise AuditError(
                    f"could not {doing} audit log {path}: still locked by another writer after "
                    f"{timeout:g} s; retry later or pass a larger timeout"
                ) from e
            time.sleep(min(left, delay * (0.5 + random.random())))  # jitter: writers don't retry in step
            delay = min(delay * 2, 0.05)


def rollback(db: sqlite3.Connection) -> None:
    """Roll back an open transaction, keeping whatever error got us here the one reported."""
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def is_busy(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(e) or "busy" in str(e)


def hint(e: sqlite3.Error) -> str:
    text = str(e).lower()
    if "readonly" in text or "read-only" in text:
        return "make the database file and its folder writable, or point PHASEGPT_HOME at a writable folder"
    if "full" in text:
        return "free some disk space"
    if "malformed" in text or "not a database" in text:
        return "the file is damaged or not an audit log; restore it from backup"
    return "check the disk and the file's permissions"
