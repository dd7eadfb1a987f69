"""Batch jobs over files: ``classify_file`` on one process or many (``mlx.launch``), resumable."""

from phasegpt.batch.classify import Summary, classify_file
from phasegpt.batch.rows import RowError

__all__ = ["RowError", "Summary", "classify_file"]
