#!/usr/bin/env python
"""Rewrite phasegpt/data/prompts.jsonl from its YAML sources: a shim over ``phasegpt.data.build``.

    python scripts/make_prompts.py            # rewrite phasegpt/data/prompts.jsonl
    python scripts/make_prompts.py --stats    # print counts per label and category (README table)

The prompts themselves are in phasegpt/data/sources/ (see phasegpt/data/README.md).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # works from a checkout, installed or not

from phasegpt.data.build import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
