"""``classify_file``: a verdict for every row of a JSONL file, on one process or on many.

The plan of the job depends only on the input, the model and ``batch_size``: the rows are sorted
by token count over the whole file and cut into batches (``phasegpt.api.batches``), and each batch
is one forward pass of one CPU stream. A rank with S streams runs S batches at once; under
``mlx.launch`` the ranks take the batches in turn, S each, so every step gives every stream a batch
of about the same length (balanced by tokens, not rows). Since a prompt's numbers depend on the
batch it is computed in and on nothing else, the output is the same, bit for bit, for any number
of processes or cores, and when a stopped job is resumed with another number of them.

Every ``distributed.SYNC_SECONDS`` or so of work (``distributed.run_in_turns``) the ranks' verdicts go to rank 0; rank 0
appends them to the job's log (``journal``) and, at the end, merges the log in input order into the
output file.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from phasegpt.batch.journal import Journal, journal_path
from phasegpt.batch.rows import RowError, Rows
from phasegpt.distributed import JobError, World, run_in_turns, world
from phasegpt.progress import Progress
from phasegpt.prompting import normalize_context

ON_ERROR = ("fail", "skip")


@dataclass(frozen=True)
class Summary:
    """What ``classify_file`` did.

    Attributes:
        output: the file written.
        rows: rows in the input (blank lines are not rows).
        classified: rows that got a verdict.
        skipped: rows that got an ``error`` instead (``on_error="skip"``).
        resumed: verdicts taken from the log of an earlier, stopped run.
        seconds: wall time of this run.
        errors: the skipped rows' errors, in input order.
    """

    output: Path
    rows: int
    classified: int
    skipped: int
    resumed: int
    seconds: float
    errors: tuple[RowError, ...] = ()


def classify_file(input: str | Path, output: str | Path, *, model: Any = None, batch_size: int = 16,
                  on_error: str = "fail", resume: bool = True, progress: bool = False,
                  metadata: Mapping[str, Any] | None = None) -> Summary:
    """Write ``output``: every row of the JSONL file ``input`` with a ``verdict`` (``Verdict.to_dict()``).

    Rows are ``{"prompt": ..., "context": ...}`` or ``{"messages": [...], "context": ...}``; other
    fields pass through. Run the same call in every process of an ``mlx.launch`` job to share the
    work; rank 0 writes ``output``. The output is written atomically at the end; until then the
    verdicts are kept in ``OUT.partial`` beside it, which a new call with the same input, model
    and ``batch_size`` resumes (with any number of processes) and which is removed at the end.

    Args:
        input: the JSONL file (every rank reads it: give each host the same file).
        output: the JSONL file to write (on rank 0).
        model: a loaded ``Model``, anything ``phasegpt.load`` takes (None: the default model), or
            a function returning a Model (called once the input's rows have been checked).
        batch_size: prompts per forward pass of one CPU stream (rows of similar length are batched).
        on_error: ``"fail"``: raise on the first bad row, before anything is classified;
            ``"skip"``: give bad rows an ``error`` (``{"line", "field", "message"}``) instead.
        resume: continue the log of an earlier, stopped run (False: start over).
        progress: show the rows done over all ranks on rank 0's stderr (``phasegpt.progress``).
        metadata: free-form data written to the audit log with each record (if the model has one).

    Returns:
        A Summary (on every rank).

    Raises:
        RowError: a bad row (``on_error="fail"``): ``FILE:LINE: field: problem and fix``.
        ValueError: bad arguments, no rows, a log another job holds or that belongs to another run.
        FileNotFoundError: no input file.
        RankLost: another process of the job stopped; run again to resume.
    """
    t0 = time.perf_counter()
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be 'fail' or 'skip', not {on_error!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number of prompts, 1 or more, not {batch_size!r}")
    src, out = Path(input), Path(output)
    if not src.is_file():
        raise FileNotFoundError(f"{src} not found; pass a JSONL file with one request per line")
    if out.is_dir():
        raise ValueError(f"the output {out} is a folder; name the JSONL file to write")
    if out.exists() and out.resolve() == src.resolve():
        raise ValueError(f"the output {out} is the input file; write the verdicts to another file")
    w = world()
    with Rows(src) as rows:
        shas = w.gather(rows.sha256)
        if len(set(shas)) > 1:
            other = next(r for r, s in enumerate(shas) if s != shas[0])
            raise JobError(f"rank {other} reads a different {src} than rank 0; give every host the same file")
        if not len(rows):
            raise JobError(f"{src} has no rows; each line must be a JSON object with a \"prompt\"")
        errors = _each(w, rows, lambda i: rows.request(i))  # before the model loads: bad input fails fast
        _fail_on(errors, on_error)
        m = _load(model)
        if m.head is None:
            from phasegpt.api import NO_HEAD

            raise ValueError(NO_HEAD)
        header = _header(m, rows, batch_size)
        w.check_same_job({**header, "on_error": on_error, "mlx": mx.__version__})
        lengths = np.zeros(len(rows), dtype=np.int64)
        errors |= _each(w, rows, lambda i: _count(m, rows, i, lengths), skip=errors)
        _fail_on(errors, on_error)
        lengths = w.all_sum(lengths)
        journal, done = _open(w, out, header, len(rows), resume)
        try:
            _run(w, m, rows, _plan(lengths, errors, done, batch_size), journal, progress, metadata)
            if journal is not None:
                journal.merge(rows, errors, out)
        finally:
            if journal is not None:
                journal.close()
        skipped = tuple(errors[i] for i in sorted(errors))
        return Summary(output=out, rows=len(rows), classified=len(rows) - len(skipped), skipped=len(skipped),
                       resumed=int(done.sum()), seconds=time.perf_counter() - t0, errors=skipped)


def _load(model: Any):
    from phasegpt.api import Model, load

    if isinstance(model, Model):
        return model
    return model() if callable(model) else load(model)


def _each(w: World, rows: Rows, check: Callable[[int], object], skip: Mapping[int, RowError] = {}) -> dict[int, RowError]:
    """Run ``check`` on every row not in ``skip``, shared over the ranks (every size-th row each);
    the rows that raised RowError, gathered on every rank."""
    mine = []
    for i in range(w.rank, len(rows), w.size):
        if i not in skip:
            try:
                check(i)
            except RowError as e:
                mine.append([i, e.field, e.message])
    return {i: rows.error(i, field, message) for part in w.gather(mine) for i, field, message in part}


def _count(m, rows: Rows, i: int, lengths: np.ndarray) -> None:
    """Row i's tokens into ``lengths`` (raises RowError when the model cannot read that many)."""
    row, prompt, context = rows.request(i)
    try:
        lengths[i] = len(m.prepare(prompt, context).ids)
    except ValueError as e:
        field = "context" if normalize_context(context) else ("prompt" if "prompt" in row else "messages")
        raise rows.error(i, field, str(e)) from None


def _fail_on(errors: Mapping[int, RowError], on_error: str) -> None:
    if errors and on_error == "fail":
        first = errors[min(errors)]
        more = f" ({len(errors) - 1} more bad rows)" if len(errors) > 1 else ""
        raise RowError(first.path, first.line, first.field,
                       f"{first.message}{more}; fix the row, or skip bad rows with --on-error skip (on_error='skip')")


def _header(m, rows: Rows, batch_size: int) -> dict[str, Any]:
    fmt = hashlib.sha256(json.dumps([m.template, m.system]).encode()).hexdigest()
    return {"input_sha256": rows.sha256, "rows": len(rows), "model": m.name,
            "model_fingerprint": m.loaded.fingerprint, "adapter_sha256": m.loaded.adapter_sha256,
            "head_sha256": m.head.sha256, "prompt_format": fmt, "batch_size": batch_size}


def _open(w: World, out: Path, header: dict, n: int, resume: bool) -> tuple[Journal | None, np.ndarray]:
    """Rank 0 opens the log; every rank learns which rows it already holds (or why it could not)."""
    journal, problem = None, None
    if w.rank == 0:
        try:
            journal = Journal(journal_path(out), header, n, resume=resume)
        except (ValueError, OSError) as e:
            problem = e
    said = w.broadcast(None if problem is None else str(problem))
    if problem is not None:
        raise problem
    if said is not None:
        raise JobError(f"rank 0 stopped: {said}")
    done = journal.done.astype(np.uint8) if journal is not None else np.zeros(n, dtype=np.uint8)
    return journal, w.all_sum(done).astype(bool)


def _plan(lengths: np.ndarray, errors: Mapping[int, RowError], done: np.ndarray, batch_size: int) -> list[list[int]]:
    """The batches still to do: all good rows, sorted by tokens and batched (a batch is logged
    whole, so it is either done or not), longest first, so that the last step, which may leave
    streams idle, is the cheapest (attention costs the square of the length)."""
    from phasegpt.api import batches

    good = [i for i in range(len(lengths)) if i not in errors]
    plan = [[good[j] for j in b] for b in batches([int(lengths[i]) for i in good], batch_size)]
    return [b for b in reversed(plan) if not done[b].all()]


def _run(w: World, m, rows: Rows, todo: list[list[int]], journal: Journal | None, progress: bool,
         metadata: Mapping[str, Any] | None) -> None:
    def collect(done: list[list[int]], blobs: list[bytes], _) -> None:
        if journal is not None:
            journal.append((i, json.loads(line)) for items, blob in zip(done, blobs)
                           for i, line in zip(items, blob.decode().split("\n")))
        if shown is not None:
            shown.update([len(items) for items in done])

    shown = Progress(sum(len(b) for b in todo), w.size) if progress and w.rank == 0 else None
    with shown or nullcontext():
        run_in_turns(w, todo, lambda mine: _verdicts(m, rows, mine, metadata), collect)


def _verdicts(m, rows: Rows, batches: list[list[int]], metadata) -> bytes:
    """This rank's share of one step, its batches at once (one CPU stream each): a JSON line per verdict."""
    requests = [rows.request(i) for b in batches for i in b]
    prepared = [m.prepare(prompt, context) for _, prompt, context in requests]
    t0 = time.perf_counter()
    verdicts = m.verdicts(prepared, parts=[len(b) for b in batches])
    per_item = (time.perf_counter() - t0) / len(prepared)
    for v, (_, prompt, context) in zip(verdicts, requests):  # before rank 0 logs it: a stop re-records, never loses
        m._record(v, prompt, context, None, per_item, dict(metadata or {}))
    return "".join(json.dumps(v.to_dict()) + "\n" for v in verdicts).encode()
