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
from typing import Any

from phasegpt.prompting import Context, conversation, normalize_context
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
    history: tuple[dict[str, str], ...] = ()  # earlier turns of a conversation, OpenAI-style

    @property
    def request(self) -> str | list[dict[str, str]]:
        """What the model is given: the prompt, or the conversation ending with it."""
        return [*map(dict, self.history), {"role": "user", "content": self.prompt}] if self.history else self.prompt

    @property
    def key(self) -> str:
        """Stable id of the text (prompt, documents and any history), used to deduplicate and cache."""
        docs = [(d.id, d.text) for d in normalize_context(self.context)]
        parts: list[Any] = [self.prompt, docs]
        if self.history:  # plain prompts keep the keys they always had
            parts.append([[m["role"], m["content"]] for m in self.history])
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def check_history(turns: Any, *, what: str = "history") -> tuple[dict[str, str], ...]:
    """Earlier turns of a conversation, checked by the rules the model's chat prompt applies.

    Args:
        turns: a list of ``{"role": "user" | "assistant", "content": str}``, oldest first.
        what: the field's name, for the error message.

    Returns:
        The turns as new dicts with exactly ``role`` and ``content``.

    Raises:
        ValueError: what is wrong and with which message (the caller adds the location).
    """
    if not isinstance(turns, list):
        raise ValueError(f"\"{what}\" must be a list of {{\"role\", \"content\"}} turns, got {type(turns).__name__}")
    try:
        system, history, _ = conversation([*turns, {"role": "user", "content": "?"}])
    except ValueError as e:
        raise ValueError(f"\"{what}\": {e}") from None
    if system is not None:
        raise ValueError(f"\"{what}\": a system message cannot be kept on a training row; drop it")
    return tuple(history)


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
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError("\"messages\" must be a non-empty list of {\"role\", \"content\"} turns ending with the user's")
    try:
        system, history, prompt = conversation(messages)
    except ValueError as e:
        raise ValueError(f"\"messages\": {e}") from None
    if system is not None:
        raise ValueError("\"messages\": a system message cannot be kept on a training row; drop it")
    return {**{k: v for k, v in row.items() if k != "messages"}, "prompt": prompt}, tuple(history)


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
