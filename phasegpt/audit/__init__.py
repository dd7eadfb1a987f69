"""The tamper-evident SQLite audit log: ``log`` (writes and queries), ``migrations`` (schema and the
record hash, a storage promise), ``verify`` (reading records back and walking the chain)."""

from phasegpt.audit.log import AuditLog, default_path
from phasegpt.audit.verify import AuditRecord, VerifyResult
from phasegpt.errors import AuditError

__all__ = ["AuditError", "AuditLog", "AuditRecord", "VerifyResult", "default_path"]
