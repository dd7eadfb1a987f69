"""Traffic files (``sources/traffic/*.yaml``): literal prompts written to look like real requests.

A file is ``{lang: <ISO 639-1>, items: [{label, category, prompt, pair?, history?}, ...]}``
(see phasegpt/data/README.md). Unlike the generated sources, a prompt may be several
pasted paragraphs, in any script, and may follow earlier turns of a conversation; a
``pair`` links a missing_context item to its answerable twin (the same task with its input
or its history present), and the pair id is unique within the file.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path

import yaml

from phasegpt.data.items import Item, category, load_yaml, mapping, text
from phasegpt.train.data import check_history
from phasegpt.verdict import LABELS

MAX_WORDS = 2000  # per prompt and per history turn: several pasted pages, not a whole document
MAX_TURNS = 20  # earlier turns a history may hold
_LANG = re.compile(r"[a-z]{2}")
# Scripts written without spaces between words: Chinese and Japanese characters count one word
# each (a word there is one or two characters), Thai, Lao, Myanmar and Khmer one per four letters.
_EACH = re.compile("[\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0003134f]")
_RUN = re.compile("[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff]+")


def count_words(s: str) -> int:
    """Words in ``s`` for length limits, in any script.

    Space-separated tokens with a letter, digit or pictograph (emoji) count one each; scripts that do not put
    spaces between words are counted by characters (see ``_EACH`` and ``_RUN``).
    """
    n = len(_EACH.findall(s)) + sum(-(-len(run) // 4) for run in _RUN.findall(s))
    rest = _RUN.sub(" ", _EACH.sub(" ", s))
    # a letter, a digit or a pictograph makes a word: "👋😊" is a whole message
    return n + sum(1 for token in rest.split() if any(c.isalnum() or unicodedata.category(c) == "So" for c in token))


def _words(s: str, where: str) -> str:
    if not s.strip():
        raise ValueError(f"{where}: is empty; write the request")
    n = count_words(s)  # Morse code or a bare "???" has no words but is a message all the same
    if n > MAX_WORDS:
        raise ValueError(f"{where}: has {n} words; keep it within {MAX_WORDS}")
    return s


def _item_lines(node: yaml.Node | None) -> list[int]:
    """1-based line of every entry under the file's ``items`` key (for error messages)."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == "items" and isinstance(value, yaml.SequenceNode):
                return [v.start_mark.line + 1 for v in value.value]
    return []


def _history(turns: object, where: str) -> tuple[dict[str, str], ...]:
    """A written conversation: what the model accepts, and also alternating from the user to a last assistant turn."""
    try:
        history = check_history(turns)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if not 1 <= len(history) <= MAX_TURNS:
        raise ValueError(f"{where}: history has {len(history)} turns; give 1..{MAX_TURNS} or leave it out")
    # The model would take two user turns in a row; in a written file they are a slip.
    for i, turn in enumerate(history, 1):
        expected = "user" if i % 2 else "assistant"
        if turn["role"] != expected:
            raise ValueError(f"{where}: history turn {i} is {turn['role']!r} but should be {expected!r}: "
                             "turns alternate, starting with the user")
        _words(turn["content"], f"{where}: history turn {i}")
    if history[-1]["role"] != "assistant":
        raise ValueError(f"{where}: history must end with an assistant turn (the prompt is the next user turn)")
    return tuple({"role": t["role"], "content": t["content"].strip()} for t in history)


def _item(raw: object, where: str, lang: str, stem: str) -> Item:
    it = mapping(raw, where, ["label", "category", "prompt"], ["pair", "history", "kind"])
    if it["label"] not in LABELS:
        raise ValueError(f"{where}: unknown label {it['label']!r}; use one of {', '.join(LABELS)}")
    cat = category(it["category"], where)
    # Surrounding whitespace (the newline a YAML "|" block ends with) is not part of the request.
    prompt = _words(text(it["prompt"], f"{where}: prompt").strip(), f"{where}: prompt")
    pair = it.get("pair")
    if pair is not None and (not isinstance(pair, str) or not pair.strip()):
        raise ValueError(f"{where}: pair {pair!r} must be text such as mi-001 (quote numbers)")
    history = _history(it["history"], where) if "history" in it else ()
    # Pair ids are unique within a file only; the file's name makes them unique in the output.
    kind = it.get("kind")
    if kind is not None and not (isinstance(kind, str) and re.fullmatch(r"[a-z][a-z0-9_]*", kind)):
        raise ValueError(f"{where}: kind {kind!r} must be a snake_case name such as zh or fmt_url")
    return Item(prompt, it["label"], cat, lang=lang, history=history,
                pair=None if pair is None else f"{stem}:{pair}", kind=kind, where=where)


def read_traffic(path: Path) -> list[Item]:
    """The validated items of one traffic file, in file order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a malformed file or item (unknown label, missing prompt, a prompt or
            turn outside 1..MAX_WORDS words, a malformed history, a pair id that is not
            exactly one missing_context and one answer item), naming the file, line and item.
    """
    doc, node = load_yaml(path)
    doc = mapping(doc, str(path), ["lang", "items"])
    lang = doc["lang"]
    if not isinstance(lang, str) or not (_LANG.fullmatch(lang) or lang == "mul"):
        raise ValueError(f"{path}: lang {lang!r} must be a two-letter ISO 639-1 code such as en, ru or de "
                         "(or mul for a file of many, each item naming its own in kind)")
    if not isinstance(doc["items"], list) or not doc["items"]:
        raise ValueError(f"{path}: items must be a non-empty list")
    lines = _item_lines(node)
    items = []
    for n, raw in enumerate(doc["items"], 1):
        line = f":{lines[n - 1]}" if len(lines) == len(doc["items"]) else ""
        items.append(_item(raw, f"{path}{line}: item {n}", lang, path.stem))
    pairs: dict[str, list[Item]] = {}
    for item in items:
        if item.pair is not None:
            pairs.setdefault(item.pair, []).append(item)
    for pair, members in pairs.items():
        if sorted(m.label for m in members) != ["answer", "missing_context"]:
            found = ", ".join(f"{m.where} ({m.label})" for m in members)
            raise ValueError(f"{path}: pair {pair.split(':', 1)[1]!r} must be exactly two items, one missing_context "
                             f"and one answer (the same task without and with what it needs); found {found}")
    return items


def read_traffic_dir(folder: Path) -> list[Item]:
    """The items of every ``*.yaml`` file in ``folder``, files in sorted name order (none if it does not exist)."""
    if not folder.is_dir():
        return []
    strays = sorted(p.name for p in folder.iterdir() if p.suffix == ".yml")
    if strays:
        raise ValueError(f"{folder}: {strays[0]} is not read; traffic files end in .yaml")
    return [item for path in sorted(folder.glob("*.yaml")) for item in read_traffic(path)]


def as_row(item: Item) -> Mapping[str, object]:
    """The output fields a traffic item adds to ``{id, prompt, context, label, category}``."""
    extra: dict[str, object] = {}
    if item.lang != "en":
        extra["lang"] = item.lang
    if item.history:
        extra["history"] = [dict(t) for t in item.history]
    if item.pair is not None:
        extra["pair"] = item.pair
    if item.kind is not None:
        extra["kind"] = item.kind
    return extra
