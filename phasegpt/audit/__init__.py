"""The tamper-evident SQLite audit log: ``log`` (writes and queries), ``migrations`` (schema and the
record hashes, a storage promise), ``keys`` (the log key and the checkpoint signing key),
``checkpoint`` (signed statements of the chain head, to keep elsewhere), ``storage`` (opening
the file: permissions, read-only), ``verify`` (reading records back and walking the chain)."""

from phasegpt.audit.checkpoint import Checkpoint
from phasegpt.audit.log import AuditLog, default_path
from phasegpt.audit.verify import AuditRecord, VerifyResult
from phasegpt.errors import AuditError

__all__ = ["AuditError", "AuditLog", "AuditRecord", "Checkpoint", "VerifyResult", "default_path"]
