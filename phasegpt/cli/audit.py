"""``phasegpt audit``: read, export, verify and checkpoint the audit log from the terminal.

A click group of its own; ``phasegpt/cli/__init__.py`` attaches it with ``cli.add_command(audit)``.
Every command takes ``--db PATH`` to read another log than ``$PHASEGPT_HOME/audit.db`` (and
``--key PATH`` for a key file kept elsewhere) and opens it read-only, so all of them work on
read-only storage; library errors become one-line ``click.ClickException`` messages.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from phasegpt.audit import AuditLog, AuditRecord, VerifyResult, default_path
from phasegpt.audit import keys
from phasegpt.audit.checkpoint import load as load_checkpoints
from phasegpt.errors import AuditError
from phasegpt.verdict import LABELS


def _db_option(fn: Callable) -> Callable:
    fn = click.option(
        "--key",
        "key_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="The log's key file, if not beside the database (audit.key).",
    )(fn)
    return click.option(
        "--db",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Audit database to use instead of $PHASEGPT_HOME/audit.db.",
    )(fn)


def _signing_key_option(fn: Callable) -> Callable:
    return click.option(
        "--signing-key",
        type=click.Path(dir_okay=False, path_type=Path),
        help=f"Ed25519 signing key (PEM) instead of ${keys.SIGNING_KEY_ENV} or $PHASEGPT_HOME/audit-signing.key.",
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


def _open(db: Path | None, key_path: Path | None = None) -> AuditLog:
    """Open an existing log read-only; never creates or changes one."""
    path = db if db is not None else default_path()
    if not path.exists():
        raise click.ClickException(
            f"no audit log at {path}; it is created by the first logged verdict, or pass --db PATH"
        )
    try:
        return AuditLog(path, key_path=key_path, read_only=True)
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
def path(db: Path | None, key_path: Path | None) -> None:
    """Print the path of the audit database."""
    click.echo(str(db if db is not None else default_path()))


@audit.command()
@_db_option
@_json_option
def status(db: Path | None, key_path: Path | None, as_json: bool) -> None:
    """Show where the log and its key are, how big, its schema and its chain head."""
    target = db if db is not None else default_path()
    if not target.exists():
        if as_json:
            _dump({"path": str(target), "exists": False})
        else:
            click.echo(f"No audit log at {target} yet.")
        return
    with _open(db, key_path) as log:
        try:
            info = {"exists": True, **log.status()}
        except AuditError as e:
            raise click.ClickException(str(e)) from e
    if as_json:
        _dump(info)
        return
    click.echo(f"Audit log:  {info['path']}")
    click.echo(f"Key file:   {info['key_path']} (key id {info['key_id'] or 'none yet'})")
    click.echo(f"Log id:     {info['log_id'] or '- (not upgraded yet: the next write upgrades it)'}")
    click.echo(f"Records:    {info['records']}" + (f" ({info['unkeyed_records']} from before the keyed chain)"
                                                   if info["unkeyed_records"] else ""))
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
def list_(db: Path | None, key_path: Path | None, label: str | None, since: str | None, until: str | None,
          model: str | None, limit: int, as_json: bool) -> None:  # fmt: skip
    """List records, newest first (a stream's completion record is marked "completes")."""
    with _open(db, key_path) as log:
        found = list(_records(log, label, since, until, model, limit or None, newest_first=True))
    if as_json:
        _dump([r.to_dict() for r in found])
        return
    if not found:
        click.echo("No records match.")
        return
    click.echo(f"{'id':26}  {'time (UTC)':19}  {'label':15}  {'conf':>5}  {'model':20}  tag")
    for r in found:
        tag = " ".join(filter(None, [r.tag["text"] if r.tag else "",
                                     f"(completes {r.parent_id})" if r.kind == "completion" else ""]))
        click.echo(f"{r.id:26}  {r.created_at[:19]:19}  {r.label:15}  {r.confidence:5.2f}  {r.model[:20]:20}  {tag}")


@audit.command()
@click.argument("record_id")
@_db_option
@_json_option
def show(record_id: str, db: Path | None, key_path: Path | None, as_json: bool) -> None:
    """Show every field of one record."""
    with _open(db, key_path) as log:
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
def stats(db: Path | None, key_path: Path | None, label: str | None, since: str | None, until: str | None,
          model: str | None, as_json: bool) -> None:  # fmt: skip
    """Count verdicts by label, model and source."""
    with _open(db, key_path) as log:
        try:
            info = log.stats(label, since, until, model)
        except (AuditError, ValueError) as e:
            raise click.ClickException(str(e)) from e
    if as_json:
        _dump(info)
        return
    click.echo(f"Records:  {info['count']} ({info['refusals']} refusals)"
               + (f"; {info['completions']} stream completions" if info["completions"] else ""))
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
def export(db: Path | None, key_path: Path | None, label: str | None, since: str | None, until: str | None,
           model: str | None, fmt: str, output: Path | None) -> None:  # fmt: skip
    """Export records (every field, hashes included) oldest first."""
    with _open(db, key_path) as log:
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
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A checkpoint file kept elsewhere (one JSON object, or one per line); repeat for several.")
@click.option("--public-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PEM public key every checkpoint must be signed by (from `phasegpt audit public-key`).")
@_json_option
def verify(db: Path | None, key_path: Path | None, checkpoints: tuple[Path, ...], public_key: Path | None,
           as_json: bool) -> None:  # fmt: skip
    """Check the file, every record, the chain and its head; exit 1 naming the first problem.

    Detects records edited, deleted, inserted or reordered since they were written, and
    records cut off the end, by anyone without the log's key. With --checkpoint, also
    proves the records each checkpoint covers unchanged, even against someone who rewrote
    the database and its key. Opens the log read-only (works on read-only storage).

    \b
    Example:
      phasegpt audit verify --checkpoint ~/checkpoints.jsonl --public-key signer.pem
    """
    with _open(db, key_path) as log:
        try:
            found = [c for path in checkpoints for c in load_checkpoints(path)]
            result = log.verify(found, public_key=public_key)
        except (AuditError, ValueError) as e:
            raise click.ClickException(str(e)) from e
    if as_json:
        _dump(result.to_dict())
        if not result.ok:
            click.get_current_context().exit(1)
        return
    if not result.ok:
        where = f" {result.record_id}" if result.record_id else ""
        raise click.ClickException(f"audit log FAILED verification: {result.problem}{where}: {result.detail}")
    click.echo(_verified(result, found))


def _verified(result: VerifyResult, found: list) -> str:
    line = f"OK: {result.checked} records, chain intact"
    if not result.keyed and result.checked:
        line += (" (an old log, not keyed yet: anyone could re-hash its plain SHA-256 chain; the next write "
                 "with this phasegpt keys it)")
    elif result.unkeyed:
        line += f" ({result.unkeyed} written before the chain was keyed, covered by the keyed head after them)"
    if result.checkpointed is not None:
        signers = sorted({keys.public_key_id(c.signer()) for c in found})
        line += f"; the first {result.checkpointed} match the checkpoints (signed by {', '.join(signers)})"
    return line + f". Head hash {result.head_hash}"


@audit.command()
@_db_option
@_signing_key_option
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Also append the checkpoint to this file (one JSON object per line).")
def checkpoint(db: Path | None, key_path: Path | None, signing_key: Path | None, output: Path | None) -> None:
    """Print a signed statement of the log's length and head hash, to keep elsewhere.

    Verifies the log first (nothing broken is signed). Keep what it prints where whoever
    could tamper with the log cannot write: a ticket, another machine, a log pipeline;
    `phasegpt audit verify --checkpoint FILE` then proves the records it covers unchanged.
    The signing key is made on first use (see --signing-key).

    \b
    Example:
      phasegpt audit checkpoint | ssh archive 'cat >> checkpoints.jsonl'
    """
    with _open(db, key_path) as log:
        try:
            made = log.checkpoint(signing_key)
        except (AuditError, ValueError) as e:
            raise click.ClickException(str(e)) from e
    line = made.to_json()
    if output is not None:
        try:
            with open(output, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError as e:
            raise click.ClickException(f"cannot write {output}: {e}") from e
    click.echo(line)


@audit.command(name="public-key")
@_signing_key_option
def public_key(signing_key: Path | None) -> None:
    """Print the checkpoint signing key's public half (PEM), for verifiers to pin.

    \b
    Example:
      phasegpt audit public-key > signer.pem
    """
    try:
        key = keys.signing_key(signing_key)
    except AuditError as e:
        raise click.ClickException(str(e)) from e
    click.echo(keys.public_key_pem(key.public_key()), nl=False)


def _records(log: AuditLog, *args: Any, **kwargs: Any) -> Iterator[AuditRecord]:
    """``log.records(...)`` with bad filters and read errors as one-line ClickExceptions."""
    try:
        yield from log.records(*args, **kwargs)
    except (AuditError, ValueError) as e:
        raise click.ClickException(str(e)) from e
