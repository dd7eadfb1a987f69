"""The ``phasegpt`` command: run, classify, serve, train-head, train-adapter, eval, audit, doctor, inspect.

Every command is a thin layer over the Python API. Library errors become one-line
messages with a non-zero exit (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import sys

import click

from phasegpt import __version__
from phasegpt.cli import options as cli_options
from phasegpt.errors import PhasegptError

EXPECTED = (PhasegptError, ValueError, FileNotFoundError, OSError)


class Group(click.Group):
    """Turns the library's precise exceptions into one-line click errors."""

    def main(self, args=None, *a, **kw):
        cli_options.ARGV[:] = sys.argv[1:] if args is None else args  # recorded in head.json / reports
        return super().main(args, *a, **kw)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EXPECTED as e:
            if (ctx.obj or {}).get("debug") or isinstance(e, click.ClickException):
                raise
            msg = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
            raise click.ClickException(msg or e.__class__.__name__) from None


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="phasegpt")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Why does a local LLM refuse? Verdicts from an activation tap, in the same MLX forward pass.

    \b
    Example:
      phasegpt run "How do I hack my neighbour's wifi?"
    """
    ctx.obj = {"debug": debug}


def _attach() -> None:
    from phasegpt.cli.audit import audit
    from phasegpt.cli.inspect import inspect
    from phasegpt.cli.run import classify, doctor, run
    from phasegpt.cli.serve import serve
    from phasegpt.cli.train import eval_, merge_heads, train_adapter, train_head

    for cmd in (run, classify, serve, train_head, merge_heads, train_adapter, eval_, audit, doctor, inspect):
        cli.add_command(cmd)


_attach()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="phasegpt")
