"""Build phasegpt/data/prompts.jsonl from the YAML sources beside it.

    python scripts/make_prompts.py            # rewrite phasegpt/data/prompts.jsonl and checks.jsonl
    python scripts/make_prompts.py --stats    # print counts per label and category (README table)

The generated sources (``sources/*.yaml``, read in ``ORDER``) are expanded, given register
noise, deduplicated, shuffled with one seeded generator and numbered ``pg-1``...; the
traffic files (``sources/traffic/*.yaml``) follow, in sorted file order, unshuffled, so
adding them never moves an earlier id. Same sources, same bytes: tests check the committed
file against this builder.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from phasegpt.data.generated import read_source
from phasegpt.data.items import Item, fold, load_yaml, mapping, strings
from phasegpt.data.traffic import as_row, read_traffic_dir
from phasegpt.verdict import LABELS

SEED = 20251122
HERE = Path(__file__).resolve().parent
OUT = HERE / "prompts.jsonl"
SOURCES = HERE / "sources"
CHECKS = HERE / "checks"  # held-out check sets: written for testing, never trained on
CHECKS_OUT = HERE / "checks.jsonl"
# Every generated item's place in the random draws, and so every id, follows this order:
# put a new source file at the end, never in between.
ORDER = ("harm_cores", "safety", "epistemic", "missing_context", "answer", "rag", "long", "contrast", "small_talk")
NOISE = "noise"  # register noise phrases, not prompts
MIN_WORDS, MAX_WORDS = 3, 60  # generated prompts (small talk may be 1 word); traffic files have their own limits


def _vary(rng: random.Random, text: str, prefixes: Sequence[str], suffixes: Sequence[str]) -> str:
    """Register noise for about a third of prompts: lowercase, a typo, casual or formal framing.

    Prompts that quote text or code are left alone, because a typo there would change what
    is being asked.
    """
    if "`" in text or '"' in text or ": '" in text or "= " in text:
        return text
    r = rng.random()
    if r < 0.12:
        return text.lower().rstrip(".?!")
    if r < 0.20:
        words = text.split()
        long_ = [i for i, w in enumerate(words) if len(w) >= 6 and w.isalpha()]
        if long_:
            i = rng.choice(long_)
            w = words[i]
            j = rng.randrange(1, len(w) - 2)
            words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
        return " ".join(words)
    if r < 0.28:
        pre = rng.choice(prefixes) + " "
        # Keep capitals where lowering them would mangle a word ("SYSTEM", "I", "DAN").
        first = text.split()[0]
        keep = pre.endswith(". ") or first.isupper() or first[1:2].isupper()
        return pre + (text if keep else text[0].lower() + text[1:])
    if r < 0.33:
        return text.rstrip(".") + " " + rng.choice(suffixes)
    return text


def _check_sources(sources: Path) -> None:
    """Refuse a source file the builder would silently skip."""
    known = {*ORDER, NOISE}
    for path in sorted(sources.glob("*.y*ml")):
        if path.stem not in known or path.suffix != ".yaml":
            raise ValueError(f"{path}: not a known prompt source; add {path.stem!r} at the end of ORDER in "
                             f"phasegpt/data/build.py, or put literal prompts in {sources / 'traffic'}")


def _keep(kept: dict[tuple, Item], item: Item) -> bool:
    """Record ``item`` unless it repeats a kept one; the same prompt under two labels is an error."""
    first = kept.get(item.key)
    if first is None:
        kept[item.key] = item
        return True
    if first.label != item.label:
        raise ValueError(f"{item.where}: {item.prompt!r} is labelled both {first.label} ({first.where}) and "
                         f"{item.label}; keep one")
    if item.pair is not None:
        raise ValueError(f"{item.where}: this prompt is already in the data ({first.where}) and would be dropped, "
                         f"leaving pair {item.pair.split(':', 1)[1]!r} half; reword it")
    return False


def build(seed: int = SEED, *, sources: Path = SOURCES, traffic: Path | None = None) -> list[dict]:
    """All items as JSON-ready records: generated ones varied, deduplicated, shuffled; then traffic ones.

    Args:
        seed: seed of the one random generator every choice draws from.
        sources: the folder of generated source files (``ORDER``, plus ``noise.yaml``).
        traffic: the folder of traffic files; default ``sources/traffic``.

    Returns:
        Records with keys id, prompt, context, label, category (traffic items: also lang
        when not English, history and pair when given).

    Raises:
        FileNotFoundError: a source file in ``ORDER`` is missing.
        ValueError: a malformed source or traffic file (named with file and block or item), a
            generated prompt outside 3..60 words (1..60 for small talk), an unknown label, one
            prompt written twice with different labels, or half of a traffic pair repeating an
            earlier prompt.
    """
    _check_sources(sources)
    # Traffic files are read first so that a mistake in one is reported before any work is done.
    literal = read_traffic_dir(sources / "traffic" if traffic is None else traffic)
    rng = random.Random(seed)
    noise = mapping(load_yaml(sources / f"{NOISE}.yaml")[0], f"{NOISE}.yaml", ["prefixes", "suffixes"])
    prefixes, suffixes = strings(noise["prefixes"], "noise.yaml: prefixes"), strings(noise["suffixes"], "noise.yaml: suffixes")
    raw = [item for name in ORDER for item in read_source(rng, sources / f"{name}.yaml")]
    kept: dict[tuple, Item] = {}
    for item in raw:
        prompt = _vary(rng, item.prompt, prefixes, suffixes)
        if item.label not in LABELS:
            raise ValueError(f"{item.where}: unknown label {item.label!r} for {prompt!r}; use one of {LABELS}")
        n = len(prompt.split())
        if not (1 if item.category == "small_talk" else MIN_WORDS) <= n <= MAX_WORDS:
            raise ValueError(f"{item.where}: {prompt!r} has {n} words; keep prompts within {MIN_WORDS}..{MAX_WORDS}")
        _keep(kept, dataclasses.replace(item, prompt=prompt))
    items = list(kept.values())
    rng.shuffle(items)
    items += [item for item in literal if _keep(kept, item)]
    return [
        {
            "id": f"pg-{i}",
            "prompt": it.prompt,
            "context": None if it.context is None else [{"id": d, "text": t} for d, t in it.context],
            "label": it.label,
            "category": it.category,
            **as_row(it),
        }
        for i, it in enumerate(items, start=1)
    ]


NEAR, NEAR_MIN_WORDS = 0.6, 4  # word-set overlap (Jaccard) at which a check prompt of 4+ words counts as a training prompt (shorter ones: exact only)


def _word_set(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.casefold()))


def build_checks(folder: Path = CHECKS, *, against: Sequence[Mapping] = ()) -> list[dict]:
    """The held-out check sets (``checks/*.yaml``, the traffic schema) as records: ids ``ck-<n>``,
    ``split: test``, ``source: phasegpt_check_<file>``; never read by training (``split`` is test).

    Raises:
        ValueError: a malformed file, or a check prompt that is also a training prompt in ``against``.
    """
    items = read_traffic_dir(folder)
    index: dict[str, list[set[str]]] = {}  # word -> word sets of the training prompts that hold it
    for r in against:
        words = _word_set(r["prompt"])
        for w in words:
            index.setdefault(w, []).append(words)
    exact = {fold(r["prompt"]) for r in against}
    for it in items:
        words = _word_set(it.prompt)
        if it.history:
            continue
        near = [words] if fold(it.prompt) and fold(it.prompt) in exact else [] if len(words) < NEAR_MIN_WORDS else \
            [t for w in words for t in index.get(w, ()) if len(words & t) >= NEAR * len(words | t)]
        if near:
            raise ValueError(f"{it.where}: {it.prompt!r} is (nearly) a training prompt ({' '.join(sorted(near[0]))!r}); "
                             "a check set must be held out: reword one of them or drop the training item")
    return [{"id": f"ck-{i}", "prompt": it.prompt, "context": None, "label": it.label, "category": it.category,
             "split": "test", "source": "phasegpt_check_" + it.where.split(":")[0].rsplit("/", 1)[-1][:-len(".yaml")],
             **as_row(it)}
            for i, it in enumerate(items, start=1)]


def to_jsonl(records: Sequence[Mapping]) -> str:
    """One compact JSON object per line, UTF-8 characters kept as written."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def stats(records: Sequence[Mapping]) -> str:
    """A Markdown table of counts per label and category (the README's numbers)."""
    by_label = Counter(r["label"] for r in records)
    by_cat = Counter((r["label"], r["category"]) for r in records)
    lines = ["| label | items | share | categories (items) |", "|---|---:|---:|---|"]
    for label in LABELS:
        cats = ", ".join(f"{c} ({n})" for (lab, c), n in sorted(by_cat.items(), key=lambda kv: -kv[1]) if lab == label)
        lines.append(f"| `{label}` | {by_label[label]} | {by_label[label] / len(records):.1%} | {cats} |")
    rag = sum(1 for r in records if r["context"] is not None)
    lines.append(f"\nTotal {len(records)} items, {rag} of them RAG items with documents in `context`.")
    langs = Counter(r.get("lang", "en") for r in records)
    if len(langs) > 1 or any("history" in r or "pair" in r for r in records):
        lines.append(f"Languages: {', '.join(f'{k} ({n})' for k, n in langs.most_common())}; "
                     f"with a history: {sum('history' in r for r in records)}; "
                     f"pairs: {len({r['pair'] for r in records if 'pair' in r})}.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the JSONL (default) or print its statistics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the JSONL")
    parser.add_argument("--seed", type=int, default=SEED, help="random seed (the committed file uses the default)")
    parser.add_argument("--traffic", type=Path, default=None, help="folder of traffic files (default sources/traffic)")
    parser.add_argument("--stats", action="store_true", help="print counts per label and category instead of writing")
    args = parser.parse_args(argv)
    try:
        records = build(args.seed, traffic=args.traffic)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(1, f"error: {e}\n")
    if args.stats:
        print(stats(records))
        return 0
    try:
        checks = build_checks(against=records)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(1, f"error: {e}\n")
    for out, rows, what in ((args.out, records, "prompts"), (args.out.with_name(CHECKS_OUT.name), checks, "check prompts")):
        out.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target and rename, so a failure never leaves half a file.
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(to_jsonl(rows), encoding="utf-8")
        tmp.replace(out)
        print(f"wrote {len(rows)} {what} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
