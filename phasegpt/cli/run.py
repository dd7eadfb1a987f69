"""``phasegpt run``, ``classify`` and ``doctor``: the load -> tap -> classify half over the Python API."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import click

from phasegpt.cli.options import load_model, model_options
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


@click.command()
@click.argument("input_file", metavar="INPUT.jsonl", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@model_options
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write JSONL here (default stdout).")
@click.option("--batch-size", default=16, show_default=True,
              help="Prompts per forward step (on the CPU split over the cores, at least one prompt each).")
@click.option("--audit/--no-audit", default=None, help="Write every verdict to the audit log.")
def classify(input_file, model_, adapter, head, dtype, output, batch_size, audit):
    """Verdicts for every line of INPUT.jsonl ({"prompt": ..., "context": ...}), prefill only.

    Each output line is the input line with a "verdict" field added.

    \b
    Example:
      phasegpt classify requests.jsonl -o verdicts.jsonl
    """
    from phasegpt.api import cpu_streams

    rows = _read_rows(input_file)
    model = load_model(model_, adapter, head, dtype, _audit(audit))
    out_rows = []
    with click.progressbar(length=len(rows), label="classifying", file=sys.stderr) as bar:
        # a few forward steps per progress update: classify sorts by length and splits over the cores
        # within each call, so a call must hold more than one step's prompts
        step = 8 * max(batch_size, cpu_streams())
        for start in range(0, len(rows), step):
            chunk = rows[start:start + step]
            verdicts = model.classify([r["prompt"] for r in chunk], contexts=[r.get("context") for r in chunk],
                                      batch_size=batch_size)
            out_rows += [{**r, "verdict": v.to_dict()} for r, v in zip(chunk, verdicts)]
            bar.update(len(chunk))
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out_rows)
    if output is None:
        click.echo(text, nl=False)
    else:
        write_atomic(output, text)
        click.echo(f"wrote {len(out_rows)} verdicts to {output}", err=True)


def _read_rows(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise click.ClickException(f"{path}:{n}: not valid JSON ({e.msg}); each line must be one JSON object") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise click.ClickException(f"{path}:{n}: each line needs a \"prompt\" string")
            rows.append(row)
    if not rows:
        raise click.ClickException(f"{path} has no lines to classify")
    return rows


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and a rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
