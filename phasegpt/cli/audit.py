"""``phasegpt audit``: read, export and verify the audit log from the terminal.

A click group of its own; ``phasegpt/cli/__init__.py`` attaches it with ``cli.add_command(audit)``.
Every command takes ``--db PATH`` to read another log than ``$PHASEGPT_HOME/audit.db``;
library errors become one-line ``click.ClickException`` messages.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from phasegpt.audit import AuditLog, AuditRecord, default_path
from phasegpt.errors import AuditError
from phasegpt.verdict import LABELS


def _db_option(fn: Callable) -> Callable:
    return click.option(
        "--db",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Audit database to use instead of $PHASEGPT_HOME/audit.db.",
    )(fn)


def _json_option(fn: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(fn)


def _filter_options(fn: Callable) -> Callable:
    for option in reversed(
        [
            click.option("--label", type=click.Choice(LABELS), help="Only this label."),
            click.option(
                "--since", help="From this time on: ISO 8601 (2025-01-31, 2025-01-31T14:00Z) or an age (24h, 7d)."
            ),
            click.option("--until", help="Before this time (same forms as --since)."),
            click.option("--model", help="Only this base model name."),
        ]
    ):
        fn = option(fn)
    return fn


def _open(db: Path | None) -> AuditLog:
    """Open an existing log for reading; never creates one."""
    path = db if db is not None else default_path()
    if not path.exists():
        raise click.ClickException(
            f"no audit log at {path}; it is created by the first logged verdict, or pass --db PATH"
        )
    try:
        return AuditLog(path)
    except (AuditError, ValueError) as e:
        raise click.ClickException(str(e)) from e


def _dump(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""  # unreachable; keeps type checkers content


@click.group()
def audit() -> None:
    """Inspect, export and verify the audit log of refusal verdicts."""


@audit.command()
@_db_option
def path(db: Path | None) -> None:
    """Print the path of the audit database."""
    click.echo(str(db if db is not None else default_path()))


@audit.command()
@_db_option
@_json_option
def status(db: Path | None, as_json: bool) -> None:
    """Show where the log is, how big, its schema and its chain head."""
    target = db if db is not None else default_path()
    if not target.exists():
        if as_json:
            _dump({"path": str(target), "exists": False})
        else:
            click.echo(f"No audit log at {target} yet.")
        return
    with _open(db) as log:
        try:
            info = {"exists": True, **log.status()}
        except AuditError as e:
            raise click.ClickException(str(e)) from e
    if as_json:
        _dump(info)
        return
    click.echo(f"Audit log:  {info['path']}")
    click.echo(f"Key file:   {info['key_path']}")
    click.echo(f"Records:    {info['records']}")
    click.echo(f"Size:       {_size(info['size_bytes'])}")
    click.echo(f"Migrations: {', '.join(info['migrations'])}")
    click.echo(f"Chain head: {info['head_count']} records, last {info['head_id'] or '-'}")
    click.echo(f"Head hash:  {info['head_hash']}")


@audit.command(name="list")
@_db_option
@_filter_options
@click.option("-n", "--count", "limit", type=click.IntRange(min=0), default=20, show_default=True,
              help="Newest records to show; 0 for all.")  # fmt: skip
@_json_option
def list_(db: Path | None, label: str | None, since: str | None, until: str | None, model: str | None,
          limit: int, as_json: bool) -> None:  # fmt: skip
    """List records, newest first."""
    with _open(db) as log:
        found = list(_records(log, label, since, until, model, limit or None, newest_first=True))
    if as_json:
        _dump([r.to_dict() for r in found])
        return
    if not found:
        click.echo("No records match.")
        return
    click.echo(f"{'id':26}  {'time (UTC)':19}  {'label':15}  {'conf':>5}  {'model':20}  tag")
    for r in found:
        tag = r.tag["text"] if r.tag else ""
        click.echo(f"{r.id:26}  {r.created_at[:19]:19}  {r.label:15}  {r.confidence:5.2f}  {r.model[:20]:20}  {tag}")


@audit.command()
@click.argument("record_id")
@_db_option
@_json_option
def show(record_id: str, db: Path | None, as_json: bool) -> None:
    """Show every field of one record."""
    with _open(db) as log:
        try:
            record = log.get(record_id)
        except AuditError as e:
            raise click.ClickException(str(e)) from e
    if record is None:
        raise click.ClickException(f"no record {record_id} in the log; `phasegpt audit list` shows the ids")
    if as_json:
        _dump(record.to_dict())
        return
    for name, value in record.to_dict().items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        click.echo(f"{name + ':':19} {'' if value is None else value}")


@audit.command()
@_db_option
@_filter_options
@_json_option
def stats(db: Path | None, label: str | None, since: str | None, until: str | None, model: str | None,
          as_json: bool) -> None:  # fmt: skip
    """Count records by label, model and source."""
    with _open(db) as log:
        try:
            info = log.stats(label, since, until, model)
        except (AuditError, ValueError) as e:
            raise click.ClickException(str(e)) from e
    if as_json:
        _dump(info)
        return
    click.echo(f"Records:  {info['count']} ({info['refusals']} refusals)")
    if info["count"]:
        click.echo(f"From:     {info['first']}")
        click.echo(f"To:       {info['last']}")
        click.echo(f"Mean confidence: {info['mean_confidence']:.3f}")
    for title in ("labels", "models", "sources"):
        click.echo(f"{title.capitalize()}:")
        for name, n in info[title].items():
            click.echo(f"  {name:20} {n}")


@audit.command()
@_db_option
@_filter_options
@click.option("--jsonl", "fmt", flag_value="jsonl", default=True, help="One JSON object per line (default).")
@click.option("--json", "fmt", flag_value="json", help="One JSON array.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here, not stdout.")
def export(db: Path | None, label: str | None, since: str | None, until: str | None, model: str | None,
           fmt: str, output: Path | None) -> None:  # fmt: skip
    """Export records (every field, hashes included) oldest first."""
    with _open(db) as log:
        records = _records(log, label, since, until, model)
        try:
            out = open(output, "w", encoding="utf-8") if output else sys.stdout  # noqa: SIM115
        except OSError as e:
            raise click.ClickException(f"cannot write {output}: {e}") from e
        n = 0
        try:
            if fmt == "json":
                found = list(records)
                out.write(json.dumps([r.to_dict() for r in found], sort_keys=True) + "\n")
                n = len(found)
            else:
                for r in records:
                    out.write(json.dumps(r.to_dict(), sort_keys=True) + "\n")
                    n += 1
        finally:
            if output:
                out.close()
    if output:
        click.echo(f"Exported {n} records to {output}", err=True)


@audit.command()
@_db_option
@_json_option
def verify(db: Path | None, as_json: bool) -> None:
    """Check every record and the chain; exit 1 naming the first bad record.

    Detects records edited, deleted, inserted or reordered since they were written,
    and records cut off the end of the log.
    """
    with _open(db) as log:
        try:
            result = log.verify()
        except AuditError as e:
            raise click.ClickException(str(e)) from e
    if as_json:
        _dump(result.to_dict())
        if not result.ok:
            click.get_current_context().exit(1)
        return
    if not result.ok:
        raise click.ClickException(
            f"audit log FAILED verification: {result.problem} {result.record_id}: {result.detail}"
        )
    click.echo(f"OK: {result.checked} records, chain intact. Head hash {result.head_hash}")


def _records(log: AuditLog, *args: Any, **kwargs: Any) -> Iterator[AuditRecord]:
    """``log.records(...)`` with bad filters and read errors as one-line ClickExceptions."""
    try:
        yield from log.records(*args, **kwargs)
    except (AuditError, ValueError) as e:
        raise click.ClickException(str(e)) from e
