"""The progress line of a batch job (classify_file, feature extraction), on rank 0: rows done over all
ranks, each rank's share, rate, time left.

click's progress bar draws only on a terminal, and under ``mlx.launch`` a rank's stderr is a pipe
to the launcher, which copies it to the terminal (and sets ``COLUMNS`` for its ranks when it has
one). So the line is redrawn with a carriage return when stderr is a terminal or ``COLUMNS`` says
the launcher has one; otherwise (a log file, CI) a plain line is written every ``QUIET_EVERY`` seconds.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

QUIET_EVERY = 60.0


class Progress:
    """``classifying  1,234/10,000 rows  (r0 620, r1 614)  45.1 rows/s  3m15s left``.

    Args:
        total: rows to do in this run.
        ranks: processes in the job (their counts are shown when there are several).
        file: where to write (default stderr).
        label: what the job does (the line's first word).
    """

    def __init__(self, total: int, ranks: int, file: TextIO | None = None, *, label: str = "classifying"):
        self.total, self.counts, self.label = total, [0] * ranks, label
        self.file = file or sys.stderr
        self.live = self.file.isatty() or bool(os.environ.get("COLUMNS"))
        self.t0 = self.last = time.monotonic()
        self._width = 0

    def __enter__(self) -> Progress:
        self._draw()
        return self

    def __exit__(self, *exc) -> None:
        self._draw(force=True)
        if self.live:
            self.file.write("\n")
            self.file.flush()

    def update(self, per_rank: list[int]) -> None:
        """Add each rank's newly finished rows."""
        self.counts = [a + b for a, b in zip(self.counts, per_rank)]
        self._draw()

    def line(self) -> str:
        done, seconds = sum(self.counts), time.monotonic() - self.t0
        text = f"{self.label}  {done:,}/{self.total:,} rows"
        if len(self.counts) > 1:
            text += "  (" + ", ".join(f"r{r} {c:,}" for r, c in enumerate(self.counts)) + ")"
        if done and seconds > 0:
            rate = done / seconds
            left = (self.total - done) / rate
            text += f"  {rate:.1f} rows/s  {int(left // 60)}m{int(left % 60):02d}s left"
        return text

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.live:
            text = self.line()
            self.file.write("\r" + text + " " * max(0, self._width - len(text)))
            self._width = len(text)
        elif force or now - self.last >= QUIET_EVERY:
            self.file.write(self.line() + "\n")
            self.last = now
        self.file.flush()
