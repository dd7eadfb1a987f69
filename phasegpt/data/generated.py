"""The generated sources (``sources/*.yaml``): prompt blocks with templates, harm cores, RAG kinds, items.

Every source file holds exactly one of four things, and each reader below turns it into
items, drawing from one shared random generator in a fixed order (so the output, and every
id, only changes when the data does):

- ``blocks``: per category, ``templates`` filled from ``slots`` (up to ``limit``), then ``prompts``;
- ``cores``: harmful cores, each asked with direct ``asks`` and wrapped in ``framings``;
- ``kinds``: RAG document kinds (entities, titles, facts, filler, open questions);
- ``items``: literal items, each with its own label and category.
"""

from __future__ import annotations

import itertools
import random
import string
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phasegpt.data.items import Item, category, fold, load_yaml, mapping, named, strings, text

# Direct asks and framings are assigned to cores with these strides (keep them coprime to the numbers
# of templates, 18 and 22 now) so each core meets different phrasings and every phrasing is used about equally.
ASK_STRIDE, FRAMING_STRIDE = 7, 5


def _slots(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def expand(rng: random.Random, templates: Sequence[str], slots: Mapping[str, Sequence[str]], limit: int) -> list[str]:
    """Up to ``limit`` distinct fillings of ``templates``, spread evenly over the templates.

    Every template contributes in turn (round-robin over shuffled fillings) so that no
    single template dominates a category however many fillers it has.
    """
    pools = []
    for t in templates:
        names = _slots(t)
        combos = [t.format(**dict(zip(names, vals, strict=True))) for vals in itertools.product(*(slots[n] for n in names))]
        rng.shuffle(combos)
        pools.append(combos)
    out: list[str] = []
    seen: set[str] = set()
    for row in itertools.zip_longest(*pools):
        for p in row:
            if p is not None and fold(p) not in seen:
                seen.add(fold(p))
                out.append(p[0].upper() + p[1:] if p[0].islower() and rng.random() < 0.8 else p)
            if len(out) >= limit:
                return out
    return out


def _count(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{where}: expected a whole number of at least 1, got {value!r}")
    return value


def _templates(value: Any, where: str, slots: Collection[str]) -> list[str]:
    """Lines of ``value`` whose ``{fields}`` are all among ``slots`` (checked now, not as a KeyError later)."""
    templates = strings(value, where)
    for t in templates:
        try:
            fields = [name for _, name, _, _ in string.Formatter().parse(t) if name is not None]
        except ValueError as e:
            raise ValueError(f"{where}: template {t!r}: {e} (write a literal brace as {{{{ or }}}})") from None
        unknown = [f for f in fields if f not in slots]
        if unknown:
            raise ValueError(f"{where}: template {t!r} uses {{{unknown[0]}}}, which is not among {sorted(slots)}")
    return templates


def block_items(rng: random.Random, doc: Mapping, where: str) -> list[Item]:
    """A ``blocks`` file: per block, its templates expanded first, then its literal prompts."""
    items: list[Item] = []
    for n, raw in enumerate(doc["blocks"], 1):
        w = f"{where}: block {n}"
        block = mapping(raw, w, ["category"], ["label", "limit", "templates", "slots", "prompts"])
        cat = category(block["category"], w)
        w = f"{w} ({cat})"
        label = text(block.get("label", doc.get("label")), f"{w}: label")
        prompts = []
        if "templates" in block or "slots" in block or "limit" in block:
            slots = named(block.get("slots"), f"{w}: slots")
            slots = {k: strings(v, f"{w}: slot {k!r}") for k, v in slots.items()}
            templates = _templates(block.get("templates"), f"{w}: templates", slots)
            prompts += expand(rng, templates, slots, _count(block.get("limit"), f"{w}: limit"))
        if "prompts" in block:
            prompts += strings(block["prompts"], f"{w}: prompts")
        if not prompts:
            raise ValueError(f"{w}: has neither templates nor prompts")
        items += [Item(p, label, cat, where=w) for p in prompts]
    return items


def core_items(rng: random.Random, doc: Mapping, where: str) -> list[Item]:
    """A ``cores`` file: every core asked ``asks.per_core`` times directly and framed ``framings.per_core`` times."""
    label = text(doc.get("label"), f"{where}: label")
    groups = named(doc["cores"], f"{where}: cores")
    cores = [(category(cat, f"{where}: cores"), c) for cat, cs in groups.items() for c in strings(cs, f"{where}: cores.{cat}")]
    asks = mapping(doc.get("asks"), f"{where}: asks", ["per_core", "templates"])
    framings = mapping(doc.get("framings"), f"{where}: framings", ["per_core", "templates"])
    direct = _templates(asks["templates"], f"{where}: asks.templates", {"c"})
    framed = [(category(cat, f"{where}: framings"), t)
              for cat, ts in named(framings["templates"], f"{where}: framings.templates").items()
              for t in _templates(ts, f"{where}: framings.templates.{cat}", {"c"})]
    rng.shuffle(cores)
    items = []
    for i, (cat, core) in enumerate(cores * _count(asks["per_core"], f"{where}: asks.per_core")):
        t = direct[(i * ASK_STRIDE + i // len(cores)) % len(direct)]
        items.append(Item(t.format(c=core), label, cat, where=f"{where}: cores"))
    for i, (_cat, core) in enumerate(cores * _count(framings["per_core"], f"{where}: framings.per_core")):
        fcat, t = framed[(i * FRAMING_STRIDE + i // len(cores)) % len(framed)]
        items.append(Item(t.format(c=core), label, fcat, where=f"{where}: framings"))
    return items


@dataclass(frozen=True)
class _Fact:
    """One fact a document may state: ``sentence`` (with {name}, {v}), questions asking it, values."""

    sentence: str
    questions: tuple[str, ...]
    values: tuple[str, ...]


@dataclass(frozen=True)
class _Kind:
    """A kind of document: its entities, titles, facts, filler sentences and questions no fact answers."""

    slug: str
    names: tuple[str, ...]
    titles: tuple[str, ...]
    facts: tuple[_Fact, ...]
    filler: tuple[str, ...]
    open_questions: tuple[str, ...]


def _kind(raw: Any, where: str, per_kind: int) -> _Kind:
    k = mapping(raw, where, ["kind", "names", "titles", "facts", "filler", "open_questions"])
    w = f"{where} ({text(k['kind'], f'{where}: kind')})"
    names = mapping(k["names"], f"{w}: names", ["first", "second"], ["join"])
    join = text(names.get("join", "{} {}"), f"{w}: names.join")
    firsts, seconds = strings(names["first"], f"{w}: names.first"), strings(names["second"], f"{w}: names.second")
    if not isinstance(k["facts"], list):
        raise ValueError(f"{w}: facts must be a list of {{sentence, questions, values}}")
    facts = []
    for i, raw_fact in enumerate(k["facts"], 1):
        fw = f"{w}: fact {i}"
        f = mapping(raw_fact, fw, ["sentence", "questions", "values"])
        facts.append(_Fact(_templates([text(f["sentence"], f"{fw}: sentence")], f"{fw}: sentence", {"name", "v"})[0],
                           tuple(_templates(f["questions"], f"{fw}: questions", {"name"})),
                           tuple(strings(f["values"], f"{fw}: values"))))
    kind = _Kind(k["kind"], tuple(join.format(a, b) for a in firsts for b in seconds),
                 tuple(_templates(k["titles"], f"{w}: titles", {"name"})), tuple(facts),
                 tuple(strings(k["filler"], f"{w}: filler")), tuple(_templates(k["open_questions"], f"{w}: open_questions", {"name"})))
    # The draws in rag_items need this much to choose from.
    for what, have, need in (("names", len(kind.names), per_kind), ("facts", len(facts), 5),
                             ("titles", len(kind.titles), 3), ("filler sentences", len(kind.filler), 2)):
        if have < need:
            raise ValueError(f"{w}: has {have} {what}; it needs at least {need}")
    return kind


def _split(rng: random.Random, sentences: list[str], parts: int) -> list[list[str]]:
    """Cut ``sentences`` into ``parts`` non-empty contiguous chunks at random points."""
    cuts = sorted(rng.sample(range(1, len(sentences)), parts - 1))
    bounds = [0, *cuts, len(sentences)]
    return [sentences[a:b] for a, b in itertools.pairwise(bounds)]


def rag_items(rng: random.Random, doc: Mapping, where: str) -> list[Item]:
    """Questions over invented documents; half answerable from them, half on topic but not answerable.

    Every item gets its own entity, so no two RAG questions read the same, and its own
    random subset of facts, so the same kind of question is answerable in one item and
    not in another: only the documents decide the label.
    """
    per_kind = _count(doc.get("per_kind"), f"{where}: per_kind")
    items: list[Item] = []
    for n, raw in enumerate(doc["kinds"], 1):
        kind = _kind(raw, f"{where}: kind {n}", per_kind)
        for k, name in enumerate(rng.sample(kind.names, per_kind)):
            answerable = k % 2 == 0
            chosen = rng.sample(kind.facts, rng.randint(3, len(kind.facts) - 2))
            sentences = [f.sentence.format(name=name, v=rng.choice(f.values)) for f in chosen]
            sentences += rng.sample(kind.filler, rng.randint(0, 2))
            rng.shuffle(sentences)
            parts = min(rng.choice([1, 2, 2, 3]), len(sentences))
            titles = rng.sample(kind.titles, parts)
            docs = tuple(
                (f"{kind.slug}-{j + 1}", " ".join([titles[j].format(name=name), *chunk]))
                for j, chunk in enumerate(_split(rng, sentences, parts))
            )
            if answerable:
                question = rng.choice(rng.choice(chosen).questions)
            elif rng.random() < 0.7:
                question = rng.choice(rng.choice([f for f in kind.facts if f not in chosen]).questions)
            else:
                question = rng.choice(kind.open_questions)
            label, cat = ("answer", "rag_answerable") if answerable else ("missing_context", "rag_unanswerable")
            items.append(Item(question.format(name=name), label, cat, docs, where=f"{where}: {kind.slug}"))
    return items


def listed_items(rng: random.Random, doc: Mapping, where: str) -> list[Item]:
    """An ``items`` file: one mapping per prompt with its own label and category (no random draws)."""
    out = []
    for n, raw in enumerate(doc["items"], 1):
        w = f"{where}: item {n}"
        it = mapping(raw, w, ["label", "category", "prompt"])
        out.append(Item(text(it["prompt"], f"{w}: prompt"), text(it["label"], f"{w}: label"), category(it["category"], w), where=w))
    return out


# The top-level keys each kind of file may have, beside the one that names its kind.
_READERS = {
    "blocks": (block_items, {"label"}),
    "cores": (core_items, {"label", "asks", "framings"}),
    "kinds": (rag_items, {"per_kind"}),
    "items": (listed_items, set()),
}


def read_source(rng: random.Random, path: Path) -> list[Item]:
    """The items of one generated source file, drawing from ``rng`` in the file's order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a malformed file, naming the file and the block, kind or item to fix.
    """
    doc, _ = load_yaml(path)
    where = path.name
    kinds = [k for k in _READERS if isinstance(doc, Mapping) and k in doc]
    if len(kinds) != 1:
        raise ValueError(f"{where}: a prompt source holds exactly one of {', '.join(_READERS)} at the top")
    reader, optional = _READERS[kinds[0]]
    mapping(doc, where, kinds, optional)
    shape = dict if kinds[0] == "cores" else list
    if not isinstance(doc[kinds[0]], shape) or not doc[kinds[0]]:
        raise ValueError(f"{where}: {kinds[0]!r} must be a non-empty {'mapping' if shape is dict else 'list'}")
    return reader(rng, doc, where)
