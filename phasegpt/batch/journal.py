"""The append log of a batch job, and the merge that turns it into the output file.

``OUT.jsonl.partial`` beside the output: line 1 is a header naming everything the verdicts depend
on (the input's SHA-256, the model, adapter and head, the template, the batch size); then one line
per classified row, ``{"i": row, "verdict": {...}}``, in the order they were done. Each step of the
job is appended with one ``write`` of whole lines, so a stop (Ctrl-C, SIGKILL, a lost host) loses at
most the step in flight, and a torn last line is dropped on resume. At the end the rows are merged
in input order into a temporary file that is renamed over the output: the output is never
half-written, and the log is removed only once it is in place.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from phasegpt.batch.rows import RowError, Rows

FORMAT = 1


def journal_path(output: Path) -> Path:
    """Where the append log of the job writing ``output`` lives."""
    return output.with_name(output.name + ".partial")


class Journal:
    """The append log of one output file, opened (and locked) by rank 0.

    Args:
        path: the log file.
        header: what the verdicts depend on; a log with another header is never resumed.
        rows: rows in the input.
        resume: keep the rows of a log that is already there (False: start it afresh).

    Raises:
        ValueError: another job holds the log, or it belongs to another input, model or batch size.
    """

    def __init__(self, path: Path, header: Mapping[str, Any], rows: int, *, resume: bool):
        self.path = path
        self.header = {"phasegpt_journal": FORMAT, **header}
        self._offsets = np.full(rows, -1, dtype=np.int64)  # where row i's line starts, -1: not done
        self._sizes = np.zeros(rows, dtype=np.int64)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ValueError(f"another job is writing {path.name.removesuffix('.partial')} (its log {path} "
                                 "is locked); wait for it to finish or write to another file") from None
            if resume and self._has_header():
                self._read()
            else:  # also a log cut off before its header was whole: nothing was logged yet
                os.ftruncate(self._fd, 0)
                self._write([json.dumps(self.header, sort_keys=True)])
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def done(self) -> np.ndarray:
        """Which rows are in the log (bool, one per input row)."""
        return self._offsets >= 0

    def append(self, results: Iterable[tuple[int, Mapping[str, Any]]]) -> None:
        """Add ``(row, verdict dict)`` pairs, in one write of whole lines."""
        results = list(results)
        if results:
            self._write([json.dumps({"i": i, "verdict": v}, ensure_ascii=False) for i, v in results],
                        [i for i, _ in results])

    def verdict(self, i: int) -> dict[str, Any]:
        """The verdict dict of row ``i`` (which must be done)."""
        return json.loads(os.pread(self._fd, int(self._sizes[i]), int(self._offsets[i])))["verdict"]

    def merge(self, rows: Rows, errors: Mapping[int, RowError], output: Path) -> None:
        """Write every row in input order to ``output`` (atomically), then remove the log.

        A row gets a ``verdict`` or, when it was skipped, an ``error``; any ``verdict`` or ``error``
        field it had in the input is replaced.
        """
        fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for i in range(len(rows)):
                    f.write(json.dumps(self._output_row(rows, errors, i), ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, output)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.path.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _output_row(self, rows: Rows, errors: Mapping[int, RowError], i: int) -> dict[str, Any]:
        error = errors.get(i)
        try:
            row = {k: v for k, v in rows.row(i).items() if k not in ("verdict", "error")}
        except RowError:  # not an object: the error alone stands for the line
            row = {}
        if error is not None:
            return {**row, "error": error.to_dict()}
        return {**row, "verdict": self.verdict(i)}

    def _write(self, lines: list[str], rows: list[int] | None = None) -> None:
        data = [(line + "\n").encode("utf-8") for line in lines]
        at = os.lseek(self._fd, 0, os.SEEK_END)
        buf = memoryview(b"".join(data))
        while buf:  # a regular file takes it in one call unless the disk is full
            buf = buf[os.write(self._fd, buf):]
        for i, d in zip(rows or [], data):
            self._offsets[i], self._sizes[i] = at, len(d)
            at += len(d)

    def _has_header(self) -> bool:
        first = os.pread(self._fd, 1 << 16, 0)
        return b"\n" in first or len(first) == 1 << 16

    def _read(self) -> None:
        """Load a log left by a stopped run: check its header, note its rows, drop a torn last line."""
        with open(self._fd, "rb", closefd=False) as f:
            first = f.readline()
            try:
                header = json.loads(first)
            except json.JSONDecodeError:
                header = None
            if not isinstance(header, dict) or header.get("phasegpt_journal") != FORMAT:
                raise ValueError(f"{self.path} is not a phasegpt job log; move it away, or start over with "
                                 "--no-resume (resume=False)")
            self._check(header)
            at, n = len(first), 2
            for line in f:
                if not line.endswith(b"\n"):  # the write in flight when the job was stopped
                    os.ftruncate(self._fd, at)
                    break
                try:
                    i = json.loads(line)["i"]
                    self._offsets[i], self._sizes[i] = at, len(line)
                except (ValueError, KeyError, IndexError, TypeError):
                    raise ValueError(f"{self.path}:{n}: not a record of this job; start over with "
                                     "--no-resume (resume=False)") from None
                at, n = at + len(line), n + 1

    def _check(self, header: Mapping[str, Any]) -> None:
        differs = [k for k in self.header if header.get(k) != self.header[k]]
        if differs:
            names = {"input_sha256": "input file content", "rows": "number of rows"}
            what = ", ".join(names.get(k, k.replace("_", " ")) for k in differs)
            raise ValueError(f"{self.path} holds the verdicts of an earlier run with another {what}; run with "
                             "the same input and options to resume it, or start over with --no-resume "
                             "(resume=False), which discards them")
