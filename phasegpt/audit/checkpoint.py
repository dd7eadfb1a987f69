"""Signed checkpoints: a statement of the log's length and head hash, to keep somewhere else.

A checkpoint says "log L had N records and the N-th had hash H at time T", signed with
Ed25519 (``phasegpt.audit.keys.signing_key``). Kept where whoever might tamper with the log
cannot write (a ticket, another machine, a log pipeline), it lets ``verify`` prove that the
first N records are exactly the ones that existed at T, even against someone who rewrote the
database *and* its key file: every record's hash covers the one before it, so changing,
adding or removing anything up to record N changes the hash of record N, whatever key it is
re-hashed with. What a checkpoint cannot vouch for is anything written after it.

The signature proves who issued a checkpoint and that it was not altered; verifiers should
pin the issuer's public key (``phasegpt audit public-key`` prints it) rather than trust the
one a checkpoint carries, or a forger able to plant checkpoints could sign their own.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from phasegpt.audit.keys import public_key_id, raw_public_key
from phasegpt.audit.migrations import canonical_json

TYPE = "phasegpt-audit-checkpoint/1"


@dataclass(frozen=True)
class Checkpoint:
    """One signed statement about a log (field names are its JSON keys).

    Attributes:
        log_id: the log's random id (``audit status`` shows it); None for a log not yet upgraded.
        count: records in the log when it was made.
        head_id: id of the last of them (None for an empty log).
        head_hash: hash of the last of them (the chain's genesis value for an empty log).
        key_id: which log key the chain was keyed with (16 hex digits, reveals nothing).
        time: when it was made (UTC, ISO 8601).
        public_key: the signer's Ed25519 public key, base64 of its 32 raw bytes.
        signature: Ed25519 signature (base64) of the canonical JSON of every other field.
    """

    log_id: str | None
    count: int
    head_id: str | None
    head_hash: str
    key_id: str
    time: str
    public_key: str
    signature: str
    type: str = TYPE

    def statement(self) -> bytes:
        """The signed bytes: canonical JSON of every field but the signature."""
        body = {k: v for k, v in asdict(self).items() if k != "signature"}
        return canonical_json(body).encode("ascii")

    def to_json(self) -> str:
        """One line of JSON (what ``phasegpt audit checkpoint`` prints)."""
        return json.dumps(asdict(self), sort_keys=True)

    def signer(self) -> Ed25519PublicKey:
        """The public key the checkpoint carries."""
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(self.public_key))

    def check(self, pinned: Ed25519PublicKey | None = None) -> str | None:
        """None when the signature holds (by ``pinned`` if given), else why not, in one sentence."""
        signer = self.signer()
        if pinned is not None and raw_public_key(pinned) != raw_public_key(signer):
            return (f"the checkpoint of {self.time} was signed by key {public_key_id(signer)}, "
                    f"not by the pinned key {public_key_id(pinned)}")
        try:
            signer.verify(base64.b64decode(self.signature), self.statement())
        except (InvalidSignature, ValueError):
            return f"the checkpoint of {self.time} does not carry a valid signature: it was altered or forged"
        return None


def sign(key: Ed25519PrivateKey, *, log_id: str | None, count: int, head_id: str | None, head_hash: str,
         key_id: str) -> Checkpoint:
    """A checkpoint of the given head, signed now by ``key``."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    public = base64.b64encode(raw_public_key(key.public_key())).decode("ascii")
    unsigned = Checkpoint(log_id, count, head_id, head_hash, key_id, now, public, "")
    signature = base64.b64encode(key.sign(unsigned.statement())).decode("ascii")
    return Checkpoint(log_id, count, head_id, head_hash, key_id, now, public, signature)


def from_dict(d: Any, where: str = "checkpoint") -> Checkpoint:
    """A Checkpoint from its JSON object.

    Raises:
        ValueError: not a phasegpt checkpoint, or a field of the wrong type.
    """
    if not isinstance(d, dict) or d.get("type") != TYPE:
        raise ValueError(f"{where} is not a phasegpt audit checkpoint (expected \"type\": \"{TYPE}\")")
    kinds = {"log_id": (str, type(None)), "count": int, "head_id": (str, type(None)), "head_hash": str,
             "key_id": str, "time": str, "public_key": str, "signature": str}
    for name, kind in kinds.items():
        if not isinstance(d.get(name), kind) or isinstance(d.get(name), bool):
            raise ValueError(f"{where}: field {name!r} is missing or of the wrong type")
    if d["count"] < 0:
        raise ValueError(f"{where}: count must be >= 0")
    try:
        if len(base64.b64decode(d["public_key"], validate=True)) != 32:
            raise ValueError
        base64.b64decode(d["signature"], validate=True)
    except ValueError:
        raise ValueError(f"{where}: public_key or signature is not base64 of an Ed25519 key/signature") from None
    return Checkpoint(**{name: d[name] for name in kinds}, type=TYPE)


def load(path: str | Path) -> list[Checkpoint]:
    """Every checkpoint in a file: one JSON object, or one per line (as a log pipeline appends them).

    Raises:
        ValueError: the file cannot be read, or a line is not a checkpoint.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        return [from_dict(json.loads(text), str(path))]
    except json.JSONDecodeError:
        pass
    found = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            found.append(from_dict(json.loads(line), f"{path}:{n}"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e.msg}); a checkpoint file holds checkpoints as JSON") from None
    if not found:
        raise ValueError(f"{path} holds no checkpoint")
    return found
