"""The audit log's storage format: what a record holds, its hash, migrations.

Everything here is a promise to logs already written, so none of it changes once
released: a schema change is a *new* migration appended at the end of this file
(never an edit to an old one), and ``record_hash`` and ``keyed_record_hash`` must keep
giving the same digest for the same fields, or every existing chain would stop verifying.

Two record formats live side by side in one chain. Records written before the chain was
keyed (the log key file says how many: ``phasegpt.audit.keys``) hold ``FIELDS`` under plain
SHA-256 (``record_hash``); every later record holds ``KEYED_FIELDS`` under HMAC-SHA256 with
the log's chain key (``keyed_record_hash``), and the one-row chain head carries a MAC too
(``head_mac``), so that only the key's holder can re-hash records or move the head.

Migrations run in order inside one write transaction, each recorded by name in the
``_migrations`` table (as simonw/llm does), so reopening a log is idempotent and
many processes may open the same new log at once. ``phasegpt.audit`` is the API;
``phasegpt.audit.verify`` walks the chain these hashes form.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from phasegpt.verdict import LABELS, Verdict

# prev_hash of the first record in every chain.
GENESIS = "0" * 64

# The fields of a record, in column order. Every one of them is covered by the hash;
# the table's rowid `seq` (chain position) is deliberately not, so that moving a
# record shows up as a broken link ("reordered") rather than as an edit.
FIELDS: tuple[str, ...] = (
    "id", "created_at", "duration", "source",
    "model", "model_fingerprint", "adapter_sha256", "head_sha256", "layers", "thresholds",
    "label", "probs", "confidence", "evidence", "tag", "verdict_source",
    "prompt_hash", "response_hash", "contexts", "prompt", "response",
    "metadata", "version", "prev_id", "prev_hash",
)  # fmt: skip

# What a keyed record holds and its MAC covers (m003's columns added): the head's distance
# from its training data, the evidence words as keyed hashes, and whether the record is a
# verdict or the completion of a streamed one (with the id of the verdict record it completes).
KEYED_FIELDS: tuple[str, ...] = (*FIELDS, "ood", "evidence_hashes", "kind", "parent_id")
KINDS = ("verdict", "completion")

# Fields stored as JSON text in their column (the rest are plain SQL values).
JSON_FIELDS: frozenset[str] = frozenset(
    {"layers", "thresholds", "probs", "evidence", "tag", "contexts", "metadata", "evidence_hashes"}
)
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # ULID alphabet
_FROM_CROCKFORD = str.maketrans(CROCKFORD, "0123456789abcdefghijklmnopqrstuv")  # to int(..., 32) digits


# -- record content ------------------------------------------------------------------


def canonical_json(value: Any) -> str:
    """JSON with sorted keys, no spaces and ASCII only: the bytes the chain hashes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def record_hash(fields: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of an unkeyed record's ``FIELDS`` in canonical JSON, ``prev_hash`` included.

    The format of records written before the chain was keyed: anyone can recompute it,
    so on its own it only catches accidental or careless edits.
    """
    return hashlib.sha256(canonical_json(dict(fields)).encode("ascii")).hexdigest()


def keyed_record_hash(chain_key: bytes, fields: Mapping[str, Any]) -> str:
    """HMAC-SHA256 (hex) under the chain key of a keyed record's ``KEYED_FIELDS`` in canonical JSON."""
    return hmac.new(chain_key, canonical_json(dict(fields)).encode("ascii"), hashlib.sha256).hexdigest()


def head_mac(chain_key: bytes, count: int, last_id: str | None, last_hash: str) -> str:
    """The chain head's MAC: without the key, nobody can cut records off the end and fix the head.

    The message starts with a tag no record's canonical JSON can start with (those start
    with ``{``), so a record MAC is never a valid head MAC.
    """
    message = "phasegpt-audit-head\x00" + canonical_json([count, last_id, last_hash])
    return hmac.new(chain_key, message.encode("ascii"), hashlib.sha256).hexdigest()


def encode(fields: Mapping[str, Any]) -> dict[str, str]:
    """Each field's value in canonical JSON: the pieces ``hash_encoded`` joins."""
    return {name: canonical_json(value) for name, value in fields.items()}


def hash_encoded(encoded: Mapping[str, str], chain_key: bytes) -> str:
    """``keyed_record_hash`` from values already encoded by ``encode``, so the writer can encode
    (a 10 MB prompt, say) before taking the lock. Same bytes as ``canonical_json``: field
    names are plain ASCII identifiers, so quoting them is all their encoding does."""
    text = "{" + ",".join(f'"{name}":{encoded[name]}' for name in sorted(encoded)) + "}"
    return hmac.new(chain_key, text.encode("ascii"), hashlib.sha256).hexdigest()


def row_to_fields(row: Mapping[str, Any] | sqlite3.Row, names: Sequence[str] = FIELDS) -> dict[str, Any]:
    """The hashed fields of a ``records`` row (``FIELDS``, or ``KEYED_FIELDS``), JSON columns decoded."""
    return {f: (json.loads(row[f]) if f in JSON_FIELDS and row[f] is not None else row[f]) for f in names}


def fields_to_row(fields: Mapping[str, Any], encoded: Mapping[str, str] | None = None) -> tuple[Any, ...]:
    """Column values for ``INSERT INTO records`` in ``KEYED_FIELDS`` order (JSON columns from ``encoded`` if given)."""
    enc = encoded if encoded is not None else encode({f: fields[f] for f in JSON_FIELDS})
    return tuple(enc[f] if f in JSON_FIELDS else fields[f] for f in KEYED_FIELDS)


def verdict_fields(verdict: Verdict, source: str, duration: float | None, metadata: dict | None) -> dict[str, Any]:
    """The record fields that come from the verdict and the caller (validated)."""
    if verdict.label not in LABELS:
        raise ValueError(f"verdict label {verdict.label!r} is not one of {', '.join(LABELS)}")
    if source not in ("cli", "api", "server"):  # server: phasegpt serve
        raise ValueError(f"source must be 'cli', 'api' or 'server', not {source!r}")
    if duration is not None and not (math.isfinite(duration) and duration >= 0):
        raise ValueError(f"duration must be seconds >= 0, not {duration!r}")
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None, not {type(metadata).__name__}")
    ood = verdict.ood
    if ood is not None and not (isinstance(ood, (int, float)) and math.isfinite(ood) and ood >= 0):
        raise ValueError(f"verdict ood must be a distance >= 0 or None, not {ood!r}")
    numbers = {"confidence": verdict.confidence, **{f"probs[{k}]": v for k, v in verdict.probs.items()}}
    for name, value in numbers.items():
        if not math.isfinite(float(value)):
            raise ValueError(f"verdict {name} is {value}; the head produced a non-finite probability")
    try:
        # Round-trip through JSON so what is hashed now is exactly what is read back later.
        meta = json.loads(canonical_json(metadata or {}))
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata must be JSON-serialisable (str, numbers, lists, dicts): {e}") from e
    tag = verdict.tag
    return {
        "duration": None if duration is None else float(duration),
        "source": source,
        "model": verdict.model,
        "model_fingerprint": verdict.model_fingerprint,
        "adapter_sha256": verdict.adapter_sha256,
        "head_sha256": verdict.head_sha256,
        "layers": [int(x) for x in verdict.layers],
        "thresholds": {str(k): float(v) for k, v in verdict.thresholds.items()},
        "label": verdict.label,
        "probs": {str(k): float(v) for k, v in verdict.probs.items()},
        "confidence": float(verdict.confidence),
        "ood": None if ood is None else float(ood),
        "tag": None if tag is None else {"text": tag.text, "kind": tag.kind, "type": tag.type, "label": tag.label},
        "verdict_source": verdict.source,
        "metadata": meta,
        "version": _version(),
    }


def text_fields(
    key: bytes,
    prompt: Any,
    contexts: Sequence[Any] | None,
    response: Any,
    evidence: Sequence[str],
    *,
    store_text: bool,
) -> dict[str, Any]:
    """Keyed hashes of the prompt, documents, response and evidence words; their text only if
    ``store_text`` (evidence words are the caller's words, so they are text too)."""
    docs = []
    for i, doc in enumerate(contexts or ()):
        if isinstance(doc, dict):
            if "text" not in doc:
                raise ValueError(f"context #{i} is a dict without 'text'; pass {{'id': ..., 'text': ...}}")
            doc_id, text = doc.get("id"), doc["text"]
            doc_id = doc_id if doc_id is None or isinstance(doc_id, (int, str)) else str(doc_id)
        else:
            doc_id, text = None, doc
        entry = {"id": doc_id, "hash": keyed_hash(key, text, f"context #{i}")}
        if store_text:
            entry["text"] = as_text(text)
        docs.append(entry)
    return {
        "prompt_hash": keyed_hash(key, prompt, "prompt"),
        "response_hash": None if response is None else keyed_hash(key, response, "response"),
        "contexts": docs,
        "prompt": as_text(prompt) if store_text else None,
        "response": as_text(response) if store_text and response is not None else None,
        "evidence": [str(w) for w in evidence] if store_text else [],
        "evidence_hashes": [keyed_hash(key, str(w), "evidence") for w in evidence],
    }


def _version() -> str:
    import phasegpt  # at call time: the package may import this module

    return getattr(phasegpt, "__version__", "unknown")


def keyed_hash(key: bytes, value: Any, what: str) -> str:
    """HMAC-SHA256 (hex) of a str (as UTF-8) or bytes under the log's key."""
    if isinstance(value, str):
        # surrogatepass: a str decoded with surrogateescape still hashes instead of crashing.
        value = value.encode("utf-8", "surrogatepass")
    elif not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")
    return hmac.new(key, value, hashlib.sha256).hexdigest()


def as_text(value: str | bytes) -> str:
    """Text safe to store: undecodable bytes become visible \\x.. escapes."""
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogatepass")
    return bytes(value).decode("utf-8", "backslashreplace")


def next_id(now_ns: int, last_id: str | None) -> str:
    """A ULID (48-bit ms time + 80 random bits), made strictly greater than ``last_id``.

    Called under the write lock, so ids increase along the chain even when several
    processes write in the same millisecond or the clock steps back.
    """
    value = ((now_ns // 1_000_000) << 80) | secrets.randbits(80)
    if last_id is not None:
        value = max(value, int(last_id.translate(_FROM_CROCKFORD), 32) + 1)
    return "".join(CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


# -- migrations: append new ones at the end, never edit a released one -------------------

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    """Register ``fn`` as the next migration (its name is what gets recorded)."""
    MIGRATIONS.append(fn)
    return fn


def applied(db: sqlite3.Connection) -> list[str]:
    """Names of the migrations already applied to ``db`` (empty for a new file)."""
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_migrations'").fetchone()
    if not exists:
        return []
    return [r[0] for r in db.execute("SELECT name FROM _migrations ORDER BY rowid")]


def pending(db: sqlite3.Connection) -> list[Migration]:
    """The migrations not yet applied to ``db``, in order."""
    done = set(applied(db))
    return [fn for fn in MIGRATIONS if fn.__name__ not in done]


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply the pending migrations; the caller holds the write transaction.

    Returns:
        The names of the migrations applied now (empty when already up to date).
    """
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    names = []
    for fn in pending(db):
        fn(db)
        now = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (fn.__name__, now))
        names.append(fn.__name__)
    return names


@migration
def m001_initial(db: sqlite3.Connection) -> None:
    """Records, the chain head, and a small key/value table for the log's own facts."""
    db.execute(
        """
        CREATE TABLE records (
            seq INTEGER PRIMARY KEY,        -- chain position; not hashed
            id TEXT NOT NULL UNIQUE,        -- ULID, increasing along the chain
            created_at TEXT NOT NULL,       -- UTC ISO 8601, microseconds
            duration REAL,                  -- seconds the verdict took, if known
            source TEXT NOT NULL,           -- "cli" or "api"
            model TEXT NOT NULL,
            model_fingerprint TEXT NOT NULL,
            adapter_sha256 TEXT,
            head_sha256 TEXT NOT NULL,
            layers TEXT NOT NULL,           -- JSON list of ints
            thresholds TEXT NOT NULL,       -- JSON object label -> float
            label TEXT NOT NULL,
            probs TEXT NOT NULL,            -- JSON object label -> float
            confidence REAL NOT NULL,
            evidence TEXT NOT NULL,         -- JSON list of tokens
            tag TEXT,                       -- JSON object, or NULL
            verdict_source TEXT NOT NULL,   -- "head" or "tag"
            prompt_hash TEXT NOT NULL,      -- HMAC-SHA256 under the log's key
            response_hash TEXT,
            contexts TEXT NOT NULL,         -- JSON list of {"id", "hash"[, "text"]}
            prompt TEXT,                    -- only with store_text=True
            response TEXT,                  -- only with store_text=True
            metadata TEXT NOT NULL,         -- caller's JSON object
            version TEXT NOT NULL,          -- phasegpt version that wrote it
            prev_id TEXT,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX records_label ON records (label)")
    db.execute("CREATE INDEX records_created_at ON records (created_at)")
    db.execute("CREATE INDEX records_model ON records (model)")
    # One row, updated in the same transaction as every insert: lets verify() notice
    # records cut off the end of the chain, which links alone cannot show.
    db.execute(
        """
        CREATE TABLE chain_head (
            one INTEGER PRIMARY KEY CHECK (one = 1),
            count INTEGER NOT NULL,
            last_id TEXT,
            last_hash TEXT NOT NULL
        )
        """
    )
    db.execute("INSERT INTO chain_head (one, count, last_id, last_hash) VALUES (1, 0, NULL, ?)", (GENESIS,))
    db.execute("CREATE TABLE audit_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")


@migration
def m002_keyed_chain(db: sqlite3.Connection) -> None:
    """The chain head gains a MAC under the log's chain key, and the log a random id that its
    checkpoints name (records already written keep their plain SHA-256 hashes)."""
    db.execute("ALTER TABLE chain_head ADD COLUMN mac TEXT")  # NULL until a keyed writer opens the log
    db.execute("INSERT OR IGNORE INTO audit_meta (name, value) VALUES ('log_id', ?)", (secrets.token_hex(16),))


@migration
def m003_ood_evidence_hashes_completions(db: sqlite3.Connection) -> None:
    """Keyed records' new fields (see ``KEYED_FIELDS``); all NULL in records written before."""
    db.execute("ALTER TABLE records ADD COLUMN ood REAL")                # Verdict.ood, if the head measured it
    db.execute("ALTER TABLE records ADD COLUMN evidence_hashes TEXT")    # JSON list of HMAC-SHA256 of each word
    db.execute("ALTER TABLE records ADD COLUMN kind TEXT")               # "verdict" or "completion"
    db.execute("ALTER TABLE records ADD COLUMN parent_id TEXT")          # a completion's verdict record
    db.execute("CREATE INDEX records_parent_id ON records (parent_id)")
