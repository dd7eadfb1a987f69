"""``phasegpt inspect``: what a GGUF file holds and how phasegpt would load it, without loading weights."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def inspect(file, as_json):
    """Architecture, quantization mix, context length, chat template and memory of a GGUF FILE.

    Reads only the header: no weight is decoded, so it takes a second or two even for a 70B file.
    "loads as" names the mlx-lm model phasegpt builds (or why it cannot); the memory lines are
    what the weights take with --dtype float32 (auto on a CPU), float16 and native (auto on a GPU:
    K-quants re-quantized to MLX's affine format).

    \b
    Example:
      phasegpt inspect ~/models/Qwen2.5-7B-Instruct-Q4_K_M.gguf
    """
    from phasegpt.gguf.summary import format_summary, summarize

    summary = summarize(file)
    click.echo(json.dumps(summary.to_dict(), indent=2) if as_json else format_summary(summary))
