"""What every source file is read into: an ``Item``, its duplicate key, and the YAML checks they share."""

from __future__ import annotations

import re
import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_EDGE = string.punctuation + string.whitespace
CATEGORY = re.compile(r"[a-z][a-z_]*")


@dataclass(frozen=True)
class Item:
    """One labelled prompt before numbering.

    ``context`` is a tuple of (id, text) documents; ``lang``, ``history``, ``pair`` and ``kind``
    are set only by traffic and check files; ``where`` names the file (and item) it came from, for errors.
    """

    prompt: str
    label: str
    category: str
    context: tuple[tuple[str, str], ...] | None = None
    lang: str = "en"
    history: tuple[dict[str, str], ...] = ()
    pair: str | None = None
    kind: str | None = None  # check sets: the script or format a far-from-training item is in (zh, fmt_url ...)
    where: str = field(default="", compare=False)

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """What makes two items "the same prompt": the folded prompt and folded earlier turns.

        A follow-up with its history and the same words without it are different requests
        (that difference is what a missing_context/answer pair teaches).
        """
        return fold(self.prompt), tuple((t["role"], fold(t["content"])) for t in self.history)


def fold(text: str) -> str:
    """Casefold, collapse whitespace and strip edge punctuation: the key for duplicate checks."""
    return " ".join(text.casefold().split()).strip(_EDGE)


def load_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    """The data of a YAML file and its node tree (whose marks give line numbers for errors).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not UTF-8 or not valid YAML, naming the file.
    """
    if not path.is_file():
        raise FileNotFoundError(f"prompt source not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 ({e.reason} at byte {e.start}); save it as UTF-8") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        return (None if node is None else loader.construct_document(node)), node
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise ValueError(f"{path}{at}: not valid YAML: {' '.join(filter(None, [e.context, e.problem]))}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    finally:
        loader.dispose()


def named(value: Any, where: str) -> Mapping:
    """``value`` as a mapping with any keys (a slot name to its values, a group to its lines)."""
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"{where}: expected a non-empty mapping of names to values, got {value!r:.60}")
    return value


def mapping(value: Any, where: str, required: Collection[str], optional: Collection[str] = ()) -> Mapping:
    """``value`` as a mapping with all ``required`` keys and no keys outside ``required`` and ``optional``."""
    if not isinstance(value, Mapping):
        keys = ", ".join([*required, *optional])
        raise ValueError(f"{where}: expected a mapping with keys {keys}, got {type(value).__name__}")
    missing = [k for k in required if k not in value]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(repr(k) for k in missing)}")
    unknown = [k for k in value if k not in required and k not in optional]
    if unknown:
        allowed = ", ".join([*required, *optional])
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; the keys are {allowed}")
    return value


def text(value: Any, where: str) -> str:
    """A non-empty string (numbers and yes/no must be quoted in YAML to stay text)."""
    if not isinstance(value, str) or not value.strip():
        hint = "; quote it in the YAML" if isinstance(value, (int, float, bool)) else ""
        raise ValueError(f"{where}: expected non-empty text, got {value!r}{hint}")
    return value


def strings(value: Any, where: str) -> list[str]:
    """A list of texts, given as a YAML list or as a block of lines (one a line, blank lines skipped)."""
    if isinstance(value, str):
        out = [ln.strip() for ln in value.splitlines() if ln.strip()]
    elif isinstance(value, list):
        out = [text(v, f"{where}, entry {i}").strip() for i, v in enumerate(value, 1)]
    else:
        raise ValueError(f"{where}: expected a list or a block of lines, got {type(value).__name__}")
    if not out:
        raise ValueError(f"{where}: is empty")
    return out


def category(value: Any, where: str) -> str:
    """A snake_case category name."""
    if not isinstance(value, str) or not CATEGORY.fullmatch(value):
        raise ValueError(f"{where}: category {value!r} must be snake_case (lowercase letters and _)")
    return value
