"""Where phasegpt keeps per-user state (audit log, feature cache)."""

from __future__ import annotations

import os
from pathlib import Path


def user_dir(*, create: bool = True) -> Path:
    """``$PHASEGPT_HOME`` if set, else ``$XDG_DATA_HOME/phasegpt`` or ``~/.local/share/phasegpt``.

    Tests point ``PHASEGPT_HOME`` at a temporary folder so they never touch the real home.
    The folder is created on first use (owner-only: it holds the audit log and its keys)
    unless ``create`` is False.

    Raises:
        OSError: the folder cannot be created.
    """
    env = os.environ.get("PHASEGPT_HOME")
    if env:
        path = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        path = Path(base) / "phasegpt"
    if create:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
