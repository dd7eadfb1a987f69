"""The audit log's two secrets: its HMAC key file and the Ed25519 key that signs checkpoints.

**The log key** (``audit.key`` beside ``audit.db``, mode 0600) is 32 random bytes. Text is
hashed under it directly (HMAC-SHA256 of the prompt, documents, response and evidence words);
the record chain and the chain head are keyed with a second key derived from it by HKDF, so no
text a caller chooses can ever make the log store a chain MAC (a prompt's HMAC under the chain
key would be one). The file also says from which record on the chain is keyed
(``keyed-from N``): logs written before phasegpt keyed its chain keep their first N records
under plain SHA-256, and because that boundary lives in the key file rather than in the
database, whoever rewrites the database cannot pass keyed records off as old, unkeyed ones.
A key file of the old format (one line of hex) is rewritten in the new one, same key, the
first time a writer opens its log.

**The signing key** (``$PHASEGPT_HOME/audit-signing.key`` or ``$PHASEGPT_AUDIT_SIGNING_KEY``,
PEM, mode 0600) belongs to the person or service that issues checkpoints, not to one log; its
public half is written into every checkpoint and printed by ``phasegpt audit public-key`` for
verifiers to pin (``phasegpt audit verify --checkpoint FILE --public-key FILE``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from phasegpt.errors import AuditError
from phasegpt.paths import user_dir

SIGNING_KEY_ENV = "PHASEGPT_AUDIT_SIGNING_KEY"
_HEADER = "phasegpt-audit-key 2"
_CHAIN_INFO = b"phasegpt audit chain v2"


@dataclass(frozen=True)
class LogKey:
    """One log's key file, read.

    Attributes:
        path: where it was read from.
        secret: the 32-byte key that text hashes use.
        keyed_from: chain positions up to this one hold plain SHA-256 records written before
            the chain was keyed; None for an old-format file (its log has no keyed records).
        chain_key: the HKDF-derived key of record and chain-head MACs.
        key_id: 16 hex digits that name the key without revealing it (stored in the log).
    """

    path: Path
    secret: bytes = field(repr=False)
    keyed_from: int | None
    chain_key: bytes = field(init=False, repr=False)
    key_id: str = field(init=False)

    def __post_init__(self) -> None:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_CHAIN_INFO)
        object.__setattr__(self, "chain_key", hkdf.derive(self.secret))
        object.__setattr__(self, "key_id", key_id(self.secret))


def key_id(secret: bytes) -> str:
    """The public name of a log key (as logs written before the keyed chain stored it)."""
    return hashlib.sha256(b"phasegpt-audit-key-id:" + secret).hexdigest()[:16]


def read_key(path: Path) -> LogKey | None:
    """The key file at ``path``, or None when there is none.

    Raises:
        AuditError: the file cannot be read or is damaged.
    """
    try:
        text = path.read_text("ascii")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise AuditError(f"cannot read audit key file {path}: {e}; restore it from backup") from e
    lines = text.split()
    try:
        if len(lines) == 1:  # the old format: the key alone, no keyed records yet
            secret, keyed_from = bytes.fromhex(lines[0]), None
        else:
            fields = dict(zip(lines[2::2], lines[3::2]))
            if " ".join(lines[:2]) != _HEADER:
                raise ValueError("unknown header")
            secret, keyed_from = bytes.fromhex(fields["key"]), int(fields["keyed-from"])
        if len(secret) != 32 or (keyed_from is not None and keyed_from < 0):
            raise ValueError("wrong length")
    except (ValueError, KeyError):
        raise AuditError(f"audit key file {path} is damaged; restore it from backup") from None
    return LogKey(path, secret, keyed_from)


def create_key(path: Path, keyed_from: int) -> LogKey:
    """Make a new key file (mode 0600); if another process made one first, return that one."""
    text = f"{_HEADER}\nkey {secrets.token_hex(32)}\nkeyed-from {keyed_from}\n"
    _publish(path, text, replace=False)
    found = read_key(path)
    if found is None:
        raise AuditError(f"audit key file {path} vanished right after it was written; check the folder")
    return found


def upgrade_key(key: LogKey, keyed_from: int) -> LogKey:
    """Rewrite an old-format key file in the new format, same key, keyed from ``keyed_from``."""
    _publish(key.path, f"{_HEADER}\nkey {key.secret.hex()}\nkeyed-from {keyed_from}\n", replace=True)
    return LogKey(key.path, key.secret, keyed_from)


def _publish(path: Path, text: str, *, replace: bool) -> None:
    """Write ``text`` to ``path`` whole or not at all: a 0600 temp file, fsync, then link or rename."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # mkstemp makes the file 0600; link() publishes it complete, or fails if another
        # process got there first (then its key is the one to use).
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".audit-key-")
        try:
            os.write(fd, text.encode("ascii"))
            os.fsync(fd)
            os.close(fd)
            if replace:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    pass
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:
        raise AuditError(f"cannot write audit key file {path}: {e}; check the folder is writable") from e


# -- checkpoint signing key --------------------------------------------------------------


def default_signing_key_path() -> Path:
    """``$PHASEGPT_AUDIT_SIGNING_KEY``, else ``$PHASEGPT_HOME/audit-signing.key``."""
    env = os.environ.get(SIGNING_KEY_ENV)
    return Path(env).expanduser() if env else user_dir(create=False) / "audit-signing.key"


def signing_key(path: Path | None = None, *, create: bool = True) -> Ed25519PrivateKey:
    """The Ed25519 key that signs checkpoints, made (mode 0600) on first use when ``create``.

    Raises:
        AuditError: the file is missing (``create=False``), unreadable or not an Ed25519 key.
    """
    path = path if path is not None else default_signing_key_path()
    if not path.exists():
        if not create:
            raise AuditError(f"no checkpoint signing key at {path}; `phasegpt audit checkpoint` makes one")
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _publish(path, pem.decode("ascii"), replace=False)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as e:
        raise AuditError(f"cannot read the checkpoint signing key {path}: {e}") from e
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise AuditError(f"{path} is not an unencrypted PEM private key ({e}); restore it from backup") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"{path} holds a {type(key).__name__}, not an Ed25519 key; pass an Ed25519 signing key")
    return key


def public_key_pem(key: Ed25519PublicKey) -> str:
    """The public key as PEM (SubjectPublicKeyInfo): what ``--public-key`` reads."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def read_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file (as ``phasegpt audit public-key`` prints it).

    Raises:
        ValueError: the file is unreadable or holds no Ed25519 public key.
    """
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as e:
        raise ValueError(f"cannot read the public key {path}: {e}") from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ValueError(f"{path} is not a PEM public key ({e}); `phasegpt audit public-key` prints one") from e
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_id(key: Ed25519PublicKey) -> str:
    """16 hex digits naming a public key (SHA-256 of its raw bytes), for people to compare."""
    return hashlib.sha256(raw_public_key(key)).hexdigest()[:16]
