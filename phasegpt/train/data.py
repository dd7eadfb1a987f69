"""Labelled prompts from JSONL: validation with file:line errors, splits, the bundled set.

A line is ``{"prompt": str, "label": str, "context": null | str | [docs], ...}``; other
fields (``id``, ``source``, ``split``, ``category``) are kept. Earlier turns of a
conversation come as ``"history"`` (OpenAI-style ``{"role", "content"}`` turns before the
prompt) or the whole conversation as ``"messages"`` (its last turn, a user turn, is the
prompt). ``label`` must be one of the four; rows labelled ``other`` are skipped when
``skip_other`` is set (the shared evaluation set has them as inspection-only items).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from phasegpt.prompting import Context, normalize_context
from phasegpt.verdict import LABELS

BUNDLED = Path(__file__).resolve().parents[1] / "data" / "prompts.jsonl"


@dataclass(frozen=True)
class Example:
    """One labelled request."""

    prompt: str
    label: str
    context: Context = None
    source: str = ""
    split: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    history: tuple[dict[str, str], ...] = ()  # earlier turns, oldest first; ends with an assistant turn

    @property
    def key(self) -> str:
        """Stable id of the text (prompt, documents, history), used to deduplicate and cache."""
        docs = [(d.id, d.text) for d in normalize_context(self.context)]
        parts: list[Any] = [self.prompt, docs]
        if self.history:  # only then, so keys (and feature caches) of single-turn rows stay as they were
            parts.append([(t["role"], t["content"]) for t in self.history])
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def check_history(turns: Any, *, ends_with: Literal["user", "assistant"] = "assistant",
                  what: str = "history") -> tuple[dict[str, str], ...]:
    """Validate OpenAI-style turns: ``{"role": "user" | "assistant", "content": str}``, alternating from a user turn.

    Args:
        turns: the list to check.
        ends_with: the role of the last turn: ``"assistant"`` for a history (the prompt is
            the next user turn), ``"user"`` for a whole conversation.
        what: the field's name, for the error message.

    Returns:
        The turns as new dicts with exactly ``role`` and ``content``.

    Raises:
        ValueError: what is wrong and with which turn (the caller adds the location).
    """
    if not isinstance(turns, list):
        raise ValueError(f"\"{what}\" must be a list of {{\"role\", \"content\"}} turns, got {type(turns).__name__}")
    out = []
    for i, turn in enumerate(turns, 1):
        expected = "user" if i % 2 else "assistant"
        if not isinstance(turn, dict) or set(turn) != {"role", "content"}:
            raise ValueError(f"\"{what}\" turn {i} must be exactly {{\"role\", \"content\"}}, got {turn!r}")
        if turn["role"] not in ("user", "assistant"):
            raise ValueError(f"\"{what}\" turn {i} has role {turn['role']!r}; use \"user\" or \"assistant\"")
        if turn["role"] != expected:
            raise ValueError(f"\"{what}\" turn {i} is {turn['role']!r} but should be {expected!r}: "
                             "turns alternate, starting with the user")
        if not isinstance(turn["content"], str) or not turn["content"].strip():
            raise ValueError(f"\"{what}\" turn {i} has no text (\"content\" must be a non-empty string)")
        out.append({"role": turn["role"], "content": turn["content"]})
    if not out and ends_with == "user":
        raise ValueError(f"\"{what}\" is empty; it needs at least the user turn to label")
    if out and out[-1]["role"] != ends_with:
        why = "the prompt is the next user turn" if ends_with == "assistant" else "the last turn is the request to label"
        raise ValueError(f"\"{what}\" must end with {'a user' if ends_with == 'user' else 'an assistant'} turn ({why})")
    return tuple(out)


def read_jsonl(path: str | Path, *, skip_other: bool = True, require_label: bool = True) -> list[Example]:
    """Read and validate a labelled JSONL file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a bad line, naming the file and line number and what to fix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg}); each line must be one JSON object") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            try:
                row, history = _conversation(row)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            prompt = row.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"{where}: missing or empty \"prompt\" (a non-empty string)")
            label = row.get("label")
            if label is None and not require_label:
                label = ""
            elif label == "other":
                if skip_other:
                    continue
            elif label not in LABELS:
                raise ValueError(f"{where}: unknown label {label!r}; use one of {', '.join(LABELS)}")
            try:
                normalize_context(row.get("context"))
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            extra = {k: v for k, v in row.items() if k not in ("prompt", "label", "context", "source", "split", "history")}
            out.append(Example(prompt, label, row.get("context"), str(row.get("source") or ""),
                               str(row.get("split") or ""), extra, history))
    if not out:
        raise ValueError(f"{path} holds no usable examples")
    return out


def _conversation(row: dict) -> tuple[dict, tuple[dict[str, str], ...]]:
    """The row with ``messages`` split into ``prompt`` + history, and its checked history."""
    if "messages" not in row:
        history = row.get("history")
        return row, () if history is None else check_history(history)
    if "prompt" in row or "history" in row:
        raise ValueError("give either \"messages\" or \"prompt\" (with an optional \"history\"), not both")
    turns = check_history(row["messages"], ends_with="user", what="messages")
    row = {k: v for k, v in row.items() if k != "messages"}
    return {**row, "prompt": turns[-1]["content"]}, turns[:-1]


def check_labels(examples: Iterable[Example], what: str = "training data") -> None:
    """Raise ValueError unless at least two labels are present (a classifier needs contrast)."""
    present = sorted({e.label for e in examples})
    if len(present) < 2:
        raise ValueError(f"{what} has only the label {present}; a head needs examples of at least two labels "
                         f"(ideally all of {', '.join(LABELS)})")


def split(examples: list[Example], *, dev_fraction: float = 0.2, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Use each example's own ``split`` field when present, else a stable hash split."""
    train, dev = [], []
    for e in examples:
        if e.split in ("train", "dev"):
            (train if e.split == "train" else dev).append(e)
        elif e.split == "test":
            continue  # never train or tune on test items
        else:
            h = int(hashlib.sha256(f"{seed}:{e.key}".encode()).hexdigest()[:8], 16) / 2**32
            (dev if h < dev_fraction else train).append(e)
    return train, dev


def cap(examples: list[Example], n: int, *, seed: int = 0) -> list[Example]:
    """At most ``n`` examples per (source, category, label, split), chosen by a stable hash of the text.

    Large single-source sets (thousands of near-identical templates) otherwise dominate the
    fit and the feature-extraction time; capping keeps every source's voice in the mix.
    """
    groups: dict[tuple[str, str, str, str], list[Example]] = {}
    for e in examples:
        groups.setdefault((e.source, str(e.extra.get("category", "")), e.label, e.split), []).append(e)
    keep = set()
    for items in groups.values():
        ranked = sorted(items, key=lambda e: hashlib.sha256(f"{seed}:{e.key}".encode()).hexdigest())
        keep.update(id(e) for e in ranked[:n])
    return [e for e in examples if id(e) in keep]
