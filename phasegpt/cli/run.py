"""``phasegpt run``, ``classify`` and ``doctor``: the load -> tap -> classify half over the Python API."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import click

from phasegpt.cli.options import load_model, model_options, rank0_reports
from phasegpt.errors import PhasegptError
from phasegpt.prompting import check_request, check_text


def _audit(enabled: bool | None):
    if enabled is None:
        enabled = os.environ.get("PHASEGPT_AUDIT", "") not in ("", "0", "false", "no")
    if not enabled:
        return None
    from phasegpt.audit import AuditLog

    return AuditLog()


def verdict_line(v) -> str:
    """``REFUSAL  safety  0.97  evidence: hack, password, wifi`` or ``ANSWER  0.93``, plus
    ``unfamiliar input (ood 2.31)`` when the request lies outside what the head was trained on."""
    if v is None:
        return "NO VERDICT  (no head loaded: pass --head, or train one with `phasegpt train-head`)"
    if v.refusal:
        line = f"REFUSAL  {v.label}  {v.confidence:.2f}"
        if v.evidence:
            line += "  evidence: " + ", ".join(v.evidence)
    else:
        line = f"ANSWER  {v.confidence:.2f}"
    if v.tag is not None:
        line += f"  tag: {v.tag.text}" + (f" ({v.tag.label})" if v.tag.label else "")
    if v.ood is not None and v.ood > 1:  # the head never saw anything like it: the verdict is a guess
        line += f"  unfamiliar input (ood {v.ood:.2f})"
    return line


def _read_prompt(prompt: str | None) -> str:
    """The PROMPT argument, or stdin read as bytes and decoded strictly as UTF-8 (one clear error
    naming the first bad byte, not a traceback from the tokenizer)."""
    if prompt not in (None, "-"):
        try:
            check_text(prompt, "the PROMPT argument")
        except ValueError as e:
            raise click.ClickException(str(e)) from None
        return prompt
    if sys.stdin is None or sys.stdin.isatty():
        raise click.UsageError("give a PROMPT argument or pipe one on stdin")
    raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8", "surrogateescape")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise click.ClickException(
            f"stdin is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            "convert it first, e.g. `iconv -f latin1 -t utf-8`"
        ) from None


def _read_contexts(files: tuple[Path, ...]) -> list[dict] | None:
    docs = []
    for f in files:
        try:
            docs.append({"id": f.name, "text": f.read_text(encoding="utf-8")})
        except UnicodeDecodeError:
            raise click.ClickException(f"{f} is not UTF-8 text; pass plain-text documents to --context") from None
    return docs or None


@click.command()
@click.argument("prompt", required=False)
@model_options
@click.option("--context", "-c", "contexts", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A retrieved document (text file); repeat for several.")
@click.option("--max-tokens", default=256, show_default=True, type=click.IntRange(min=1), help="Most tokens to generate.")
@click.option("--temp", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Sampling temperature (0 = greedy).")
@click.option("--top-p", default=1.0, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Nucleus sampling threshold.")
@click.option("--seed", type=click.IntRange(min=0), help="Random seed for sampling.")
@click.option("--stream/--no-stream", default=False, help="Print text as it is generated.")
@click.option("--stop-on-refusal", is_flag=True, help="Print only the verdict when it is a refusal.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: text, verdict, timings.")
@click.option("--audit/--no-audit", default=None, help="Write the verdict to the audit log (default: $PHASEGPT_AUDIT).")
def run(prompt, model_, adapter, head, dtype, contexts, max_tokens, temp, top_p, seed, stream, stop_on_refusal,
        as_json, audit):
    """Answer PROMPT (or stdin) and say whether, and why, the model should refuse.

    \b
    Examples:
      phasegpt run "How do I hack my neighbour's wifi?"
      phasegpt run --json "What is the capital of France?"
      phasegpt run -c handbook.txt "How many vacation days do I get?"
      echo "Will it rain in Oslo next year on May 3rd?" | phasegpt run --stream
    """
    prompt, docs = _read_prompt(prompt), _read_contexts(contexts)
    check_request(prompt, docs)  # before the model loads: bad input costs no seconds
    model = load_model(model_, adapter, head, dtype, _audit(audit))
    opts = dict(context=docs, max_tokens=max_tokens, temp=temp, top_p=top_p, seed=seed,
                stop_on_refusal=stop_on_refusal)
    if as_json:
        click.echo(json.dumps(model.generate(prompt, **opts).to_dict(), ensure_ascii=False))
        return
    if not stream:
        r = model.generate(prompt, **opts)
        click.echo(verdict_line(r.verdict))
        if r.text:
            click.echo(r.text)
        return
    for chunk in model.stream(prompt, **opts):
        if chunk.token is None:
            click.echo(verdict_line(chunk.verdict))
        else:
            click.echo(chunk.text, nl=False)
            sys.stdout.flush()
    click.echo()


SHOW_ERRORS = 10  # skipped rows listed on stderr; the rest are in the output's "error" fields


@click.command()
@click.argument("input_file", metavar="INPUT.jsonl", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@model_options
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="Write JSONL here (default stdout; only a file can be resumed).")
@click.option("--batch-size", default=16, show_default=True,
              help="Prompts per forward pass of one CPU stream (rows of similar length go together).")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default="fail", show_default=True,
              help="A bad row stops the job before anything is classified (fail), or gets an \"error\" "
                   "field instead of a verdict (skip).")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue from OUT.jsonl.partial, left by a stopped run of the same job.")
@click.option("--audit/--no-audit", default=None, help="Write every verdict to the audit log.")
def classify(input_file, model_, adapter, head, dtype, output, batch_size, on_error, resume, audit):
    """Verdicts for every line of INPUT.jsonl, prefill only, batched, resumable.

    A line is {"prompt": ..., "context": ...} or {"messages": [...], "context": ...};
    each output line is the input line with a "verdict" field added, in input order.
    A stopped run (Ctrl-C, a lost host, SIGKILL) keeps its verdicts in OUT.jsonl.partial
    and the same command resumes it. Under mlx.launch every process takes a share of
    the rows and rank 0 writes OUT.jsonl (every host needs the model and INPUT.jsonl).

    \b
    Examples:
      phasegpt classify requests.jsonl -o verdicts.jsonl
      phasegpt classify requests.jsonl -o verdicts.jsonl --on-error skip
      mlx.launch -n 2 -- phasegpt classify requests.jsonl -o verdicts.jsonl
      mlx.launch --hostfile hosts.json -- phasegpt classify requests.jsonl -o verdicts.jsonl
    """
    from phasegpt.batch import classify_file
    from phasegpt.batch.journal import journal_path
    from phasegpt.distributed import world

    w = world()
    loader = lambda: load_model(model_, adapter, head, dtype, _audit(audit))  # noqa: E731  (after the rows are checked)
    with tempfile.TemporaryDirectory(prefix="phasegpt-classify-") as tmp:
        out = output if output is not None else Path(tmp) / "out.jsonl"
        try:
            with rank0_reports():
                summary = classify_file(input_file, out, model=loader, batch_size=batch_size, on_error=on_error,
                                        resume=resume and output is not None, progress=True)
        except KeyboardInterrupt:
            if w.rank == 0:
                kept = f" the verdicts done so far are kept in {journal_path(out)}: run the same command again " \
                       "to resume" if output is not None else ""
                click.echo(f"stopped;{kept}" if kept else "stopped", err=True)
            raise SystemExit(130) from None
        except (PhasegptError, ValueError, OSError) as e:
            if w.rank > 0:  # say which process of the job it was
                raise click.ClickException(f"rank {w.rank}: {e}") from None
            raise
        if w.rank != 0:
            return
        if output is None:
            with out.open(encoding="utf-8") as f:
                for line in f:
                    click.echo(line, nl=False)
    for e in summary.errors[:SHOW_ERRORS]:
        click.echo(f"skipped {e}", err=True)
    if summary.skipped > SHOW_ERRORS:
        click.echo(f"... and {summary.skipped - SHOW_ERRORS} more (see their \"error\" fields)", err=True)
    resumed = f", {summary.resumed} of them from an earlier run" if summary.resumed else ""
    skipped = f", skipped {summary.skipped} bad rows" if summary.skipped else ""
    where = f" to {output}" if output is not None else ""
    click.echo(f"wrote {summary.rows} rows{where}: {summary.classified} verdicts{resumed}{skipped} "
               f"in {summary.seconds:.1f}s", err=True)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(as_json):
    """Platform, MLX version and device, the active BLAS and a measured GFLOP/s.

    \b
    Example:
      phasegpt doctor
    """
    from phasegpt.doctor import format_report, report

    d = report()
    click.echo(json.dumps(d, indent=2, default=str) if as_json else format_report(d))
