"""The few exceptions of phasegpt's own; everything else is a ValueError or FileNotFoundError.

Every message names the problem and the fix, so the CLI can print it as one line.
"""


class PhasegptError(Exception):
    """Base class of phasegpt's own errors."""


class ModelLoadError(PhasegptError):
    """A model could not be loaded (unsupported format, corrupt file, offline repo id...)."""


class MismatchError(PhasegptError):
    """An adapter or head does not fit the base model it is loaded onto."""


class AuditError(PhasegptError):
    """An audit record could not be written or read."""
