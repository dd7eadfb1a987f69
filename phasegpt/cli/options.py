"""Options and helpers shared by the CLI modules (kept apart so the command modules import it, not each other)."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

ARGV: list[str] = []  # the command line, recorded by cli.Group.main for head.json and reports


def command_line() -> str:
    """The current command as a shell-quoted string, e.g. ``phasegpt train-head -d data.jsonl -o head``."""
    return "phasegpt " + " ".join(shlex.quote(str(a)) for a in ARGV)


_ALLOW_BASE_MISMATCH = "phasegpt.allow_base_mismatch"


def _remember(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx.meta[_ALLOW_BASE_MISMATCH] = value  # read by load_model, so no command's signature changes
    return value


def model_options(f):
    """--model/--adapter/--head/--dtype/--allow-base-mismatch, shared by every command that loads a model."""
    f = click.option("--allow-base-mismatch", is_flag=True, expose_value=False, callback=_remember,
                     help="Load an --adapter that phasegpt train-adapter trained on another base model.")(f)
    f = click.option("--dtype", default="auto", show_default=True,
                     type=click.Choice(["auto", "float32", "float16", "bfloat16", "native"]),
                     help="Weight dtype (auto: float32 on CPU, as stored on GPU).")(f)
    f = click.option("--head", type=click.Path(path_type=Path), help="Head folder (head.json + head.safetensors).")(f)
    f = click.option("--adapter", type=click.Path(path_type=Path), help="mlx-lm LoRA adapter folder.")(f)
    f = click.option("--model", "-m", "model_", metavar="PATH|REPO",
                     help="mlx-lm folder, Hugging Face repo id or .gguf file (default: packaged SmolLM2 + shipped head).")(f)
    return f


def load_model(model_, adapter, head, dtype, audit=None):
    import phasegpt

    ctx = click.get_current_context(silent=True)
    allow = bool(ctx and ctx.meta.get(_ALLOW_BASE_MISMATCH))
    model = phasegpt.load(model_, adapter=adapter, head=head, dtype=dtype, audit=audit, allow_base_mismatch=allow)
    model.source = "cli"
    return model


@contextmanager
def rank0_reports() -> Iterator[None]:
    """Under ``mlx.launch``, an error every rank raises alike (``JobError``: the same bad data or
    options) is reported by rank 0 alone, which exits 1. The others exit 0 quietly: ``mlx.launch``
    stops every rank as soon as one fails, which could cut rank 0's message short."""
    from phasegpt.distributed import JobError, world

    try:
        yield
    except JobError:
        if world().rank == 0:
            raise
        raise SystemExit(0) from None
