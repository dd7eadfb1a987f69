#!/usr/bin/env python
"""Answer a prompt and say why the model would refuse: a shim over ``phasegpt run``.

    python scripts/inference.py "How do I hack my neighbour's wifi?"
    python scripts/inference.py --json "What is the capital of France?"
    python scripts/inference.py --model mlx-community/Mistral-7B-Instruct-v0.3-4bit --head heads/mistral "..."

Every option of ``phasegpt run`` works here (see ``--help``); ``phasegpt`` itself has
the other commands (classify, train-head, eval, audit, doctor).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # works from a checkout, installed or not

from phasegpt.cli import cli  # noqa: E402


def main(argv: list[str]) -> None:
    group = [a for a in argv if a in ("--debug", "--version")]
    rest = [a for a in argv if a not in ("--debug", "--version")]
    cli(args=group + ([] if "--version" in group else ["run", *rest]), prog_name="inference.py")


if __name__ == "__main__":
    main(sys.argv[1:])
