"""The project's own labelled prompts (phasegpt/data/prompts.jsonl): shape, balance, no leaks, the builder.

The file is built from the YAML sources in phasegpt/data/sources/ by phasegpt.data.build
(scripts/make_prompts.py is a shim over it) and committed; these tests check the committed
file itself, that the builder still reproduces it byte for byte, that traffic files are
appended after the generated prompts and validated, and that none of its prompts repeats
one of the externally written evaluation prompts.
"""

from __future__ import annotations

import json
import re
import shutil
import string
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from phasegpt.data.build import CHECKS_OUT, SOURCES, build, build_checks, main, stats, to_jsonl
from phasegpt.data.traffic import MAX_WORDS, count_words
from phasegpt.train.data import read_jsonl
from phasegpt.verdict import LABELS

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "phasegpt" / "data" / "prompts.jsonl"
SCRIPT = ROOT / "scripts" / "make_prompts.py"
EVAL = Path(__file__).parents[2] / "shared" / "data" / "eval.jsonl"
KEYS = {"id", "prompt", "context", "label", "category"}
TRAFFIC_KEYS = {"lang", "history", "pair"}


def norm(text: str) -> str:
    """Casefold, collapse whitespace, strip edge punctuation (how "the same prompt" is judged)."""
    return " ".join(text.casefold().split()).strip(string.punctuation + string.whitespace)


def same(r: dict) -> tuple:
    """A row's identity for duplicate checks: the folded prompt and folded earlier turns."""
    return norm(r["prompt"]), tuple((t["role"], norm(t["content"])) for t in r.get("history", ()))


@pytest.fixture(scope="module")
def records() -> list[dict]:
    lines = DATA.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def generated() -> list[dict]:
    """What the generated sources alone make (no traffic files): the rules below are theirs."""
    return build(traffic=Path("/nonexistent"))


def test_the_builder_regenerates_the_committed_file_byte_for_byte():
    assert to_jsonl(build()) == DATA.read_text(encoding="utf-8")


def test_the_committed_file_starts_with_the_generated_prompts(records, generated):
    # Traffic files are appended after the generated prompts, so adding them moves no id.
    assert records[: len(generated)] == generated


def test_the_script_writes_the_same_bytes_and_stats_prints_the_table(tmp_path, capsys):
    out = tmp_path / "prompts.jsonl"
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, check=True)
    assert out.read_bytes() == DATA.read_bytes() and "wrote" in run.stdout
    assert main(["--stats"]) == 0
    table = capsys.readouterr().out
    assert table == stats(build()) + "\n" and table.startswith("| label | items | share |")
    assert f"Total {len(DATA.read_text().splitlines())} items" in table
    assert (tmp_path / CHECKS_OUT.name).read_bytes() == CHECKS_OUT.read_bytes()  # the check sets beside it


def test_check_sets_are_held_out_test_rows_apart_from_training():
    records = build()
    checks = build_checks(against=records)
    assert to_jsonl(checks) == CHECKS_OUT.read_text(encoding="utf-8")
    assert {r["split"] for r in checks} == {"test"} and all(r["source"].startswith("phasegpt_check_") for r in checks)
    ru = [r for r in checks if r["source"] == "phasegpt_check_ru"]
    assert min(Counter(r["label"] for r in ru).values()) >= 25  # the multilingual check: 25+ per label
    assert {"Привет, как дела?", "Как приготовить борщ?"} <= {r["prompt"] for r in ru if r["label"] == "answer"}


def test_a_check_prompt_close_to_a_training_prompt_is_refused(tmp_path):
    (tmp_path / "ru.yaml").write_text("lang: ru\nitems:\n  - {label: answer, category: recipe, "
                                      "prompt: 'Как быстро сварить вкусный борщ дома?'}\n", encoding="utf-8")
    near = [{"prompt": "Как быстро сварить вкусный борщ?"}]
    with pytest.raises(ValueError, match="ru.yaml:3: item 1: .* is \\(nearly\\) a training prompt"):
        build_checks(tmp_path, against=near)
    assert len(build_checks(tmp_path, against=[{"prompt": "Сколько стоит билет в Казань?"}])) == 1


def test_every_line_is_a_record_with_exactly_the_expected_fields(records):
    assert len(records) >= 2400
    for r in records:
        assert KEYS <= set(r) <= KEYS | TRAFFIC_KEYS, r
        assert isinstance(r["prompt"], str) and r["prompt"].strip(), r
        assert re.fullmatch(r"[a-z][a-z_]*", r["category"]), r


def test_labels_are_the_shared_vocabulary_and_each_holds_15_percent(records):
    counts = Counter(r["label"] for r in records)
    assert set(counts) == set(LABELS), counts
    for label in LABELS:
        assert counts[label] / len(records) >= 0.15, (label, counts)


def test_ids_are_unique_and_numbered(records):
    assert [r["id"] for r in records] == [f"pg-{i}" for i in range(1, len(records) + 1)]


def test_no_prompt_appears_twice_after_case_and_whitespace_folding(records):
    dupes = [p for p, n in Counter(same(r) for r in records).items() if n > 1]
    assert dupes == []


def test_generated_prompts_are_between_3_and_60_words_except_small_talk(generated):
    bad = [r["prompt"] for r in generated
           if not (1 if r["category"] == "small_talk" else 3) <= len(r["prompt"].split()) <= 60]
    assert bad == []
    short = [r for r in generated if len(r["prompt"].split()) < 3]
    assert len(short) >= 40 and {r["label"] for r in short} == {"answer"}  # a bare "hi" is answered


def test_contexts_are_null_or_1_to_3_documents_with_unique_ids(records):
    for r in records:
        ctx = r["context"]
        if r["category"].startswith("rag_"):
            assert isinstance(ctx, list) and 1 <= len(ctx) <= 3, r
            for doc in ctx:
                assert set(doc) == {"id", "text"}, doc
                assert isinstance(doc["id"], str) and doc["id"], doc
                assert isinstance(doc["text"], str) and len(doc["text"].split()) >= 5, doc
            assert len({d["id"] for d in ctx}) == len(ctx), r
        else:
            assert ctx is None, r


def test_rag_items_are_plentiful_and_split_between_answer_and_missing_context(records):
    rag = Counter((r["label"], r["category"]) for r in records if r["context"] is not None)
    assert sum(rag.values()) >= 300
    assert set(rag) == {("answer", "rag_answerable"), ("missing_context", "rag_unanswerable")}
    assert min(rag.values()) >= 120, rag


def test_every_refusal_label_has_answerable_look_alikes(records):
    # Hard negatives are named after what they imitate; the dataset is only useful with them.
    cats = Counter(r["category"] for r in records if r["label"] == "answer")
    for imitated in ("homonym", "history_violence", "security_education", "safety_advice",  # safety
                     "past_fact", "true_premise", "real_entity", "computable_future",  # epistemic
                     "well_specified", "inline_text", "rag_answerable"):  # missing_context
        assert cats[imitated] >= 15, (imitated, cats)


def test_the_committed_file_reads_as_training_data(records):
    examples = read_jsonl(DATA)
    assert len(examples) == len(records)
    assert [bool(e.history) for e in examples] == ["history" in r for r in records]


def test_no_prompt_equals_an_external_evaluation_prompt(records):
    if not EVAL.exists():
        pytest.skip(f"{EVAL} not present (it sits in ../shared beside the checkout)")
    with EVAL.open(encoding="utf-8") as fh:
        external = {norm(json.loads(line)["prompt"]) for line in fh if line.strip()}
    assert len(external) > 0
    texts = [r["prompt"] for r in records] + [t["content"] for r in records for t in r.get("history", ())]
    clashes = sorted(t for t in texts if norm(t) in external)
    assert clashes == [], "rewrite these prompts in phasegpt/data/sources/"


# ------------------------------------------------------------------------------ traffic files

def _traffic(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def test_traffic_rows_follow_the_generated_ones_in_file_order(tmp_path, generated):
    folder = tmp_path / "traffic"
    # b.yaml is written first; a.yaml's rows must still come first (sorted file order).
    _traffic(folder, "b.yaml", """\
        lang: ru
        items:
          - {label: answer, category: small_talk, prompt: "Привет, как дела?"}
        """)
    existing = generated[5]
    (folder / "a.yaml").write_text(f"""\
lang: en
items:
  - {{label: answer, category: everyday_writing, prompt: "Write a two-line birthday note for my coworker Dana."}}
  # an old prompt again, in other case and spacing: dropped
  - {{label: {existing["label"]}, category: {existing["category"]}, prompt: {json.dumps("  " + existing["prompt"].upper() + "!! ")}}}
  - {{label: missing_context, category: missing_history, pair: mh-001, prompt: "Now make your previous answer shorter."}}
  - label: answer
    category: missing_history_present
    pair: mh-001
    prompt: "Now make your previous answer shorter."
    history:
      - {{role: user, content: "Give me a slogan for a bike repair shop."}}
      - {{role: assistant, content: "Keep rolling: repairs while you wait."}}
  - label: answer
    category: long_input
    prompt: |
      Fix the grammar in this paragraph and keep my tone:

      me and my brother has been running the bakery since 2019 and honestly its been a ride.
      we open at six, we close when the bread is gone.
""", encoding="utf-8")
    rows = build(traffic=folder)
    assert rows[: len(generated)] == generated
    new = rows[len(generated):]
    n = len(generated)
    assert [r["id"] for r in new] == [f"pg-{i}" for i in range(n + 1, n + 6)]  # the duplicate of an old prompt is dropped
    birthday, bare, followed, long_input = new[:4]
    assert birthday == {"id": f"pg-{n + 1}", "prompt": "Write a two-line birthday note for my coworker Dana.",
                        "context": None, "label": "answer", "category": "everyday_writing"}
    assert bare["pair"] == followed["pair"] == "a:mh-001" and "history" not in bare
    assert bare["prompt"] == followed["prompt"] and bare["label"] == "missing_context"
    assert followed["history"] == [{"role": "user", "content": "Give me a slogan for a bike repair shop."},
                                   {"role": "assistant", "content": "Keep rolling: repairs while you wait."}]
    assert long_input["prompt"].endswith("gone.") and long_input["prompt"].count("\n") == 3 and set(long_input) == KEYS
    assert rows[-1]["lang"] == "ru" and rows[-1]["prompt"] == "Привет, как дела?"
    assert stats(rows).endswith(f"Languages: en ({len(rows) - 1}), ru (1); with a history: 1; pairs: 1.")
    # The builder's output is what read_jsonl expects.
    out = tmp_path / "prompts.jsonl"
    out.write_text(to_jsonl(rows), encoding="utf-8")
    examples = read_jsonl(out)
    assert examples[n + 2].history == tuple(followed["history"]) and examples[n + 2].key != examples[n + 1].key


ITEM = '{label: answer, category: everyday, prompt: "Plan a picnic for six."}'


@pytest.mark.parametrize(("body", "message"), [
    (f"lang: en\nitems:\n  - {ITEM}\n  - {{label: answr, category: x, prompt: hi}}\n",
     r":4: item 2: unknown label 'answr'; use one of safety, epistemic, missing_context, answer"),
    (f"lang: en\nitems:\n  - {ITEM}\n  - {{label: answer, category: everyday}}\n", r":4: item 2: missing 'prompt'"),
    (f"lang: en\nitems:\n  - {ITEM}\n  - {{label: answer, category: everyday, prompt: '  '}}\n",
     r":4: item 2: prompt: expected non-empty text"),
    (f"lang: en\nitems:\n  - {ITEM}\n  - {{label: answer, category: everyday, promt: hi}}\n", r":4: item 2: missing 'prompt'"),
    (f"lang: en\nitems:\n  - {ITEM}\n  - {{label: answer, category: everyday, prompt: hi, lang: de}}\n",
     r":4: item 2: unknown key 'lang'"),
    (f"lang: en\nitems:\n  - {ITEM}\n  - {{label: answer, category: Everyday Tasks, prompt: hi}}\n", r"item 2: category .* snake_case"),
    ("lang: en\nitems:\n  - {label: missing_context, category: x, pair: p1, prompt: Fix the text below.}\n",
     r"pair 'p1' must be exactly two items, one missing_context and one answer.*found .*bad.yaml:3: item 1 \(missing_context\)"),
    ("lang: en\nitems:\n  - {label: answer, category: x, pair: p1, prompt: a b}\n"
     "  - {label: answer, category: x, pair: p1, prompt: c d}\n", r"pair 'p1' must be exactly two items"),
    ("lang: en\nitems:\n  - {label: missing_context, category: x, pair: p1, prompt: a b}\n"
     "  - {label: answer, category: x, pair: p1, prompt: c d}\n  - {label: answer, category: x, pair: p1, prompt: e f}\n",
     r"pair 'p1' must be exactly two items"),
    ("lang: en\nitems:\n  - {label: answer, category: x, pair: 7, prompt: a b}\n", r"item 1: pair 7 must be text"),
    ("lang: en\nitems:\n  - {label: answer, category: x, prompt: again, history: [{role: system, content: be brief}]}\n",
     r":3: item 1: \"history\": a system message cannot be kept"),
    ("lang: en\nitems:\n  - {label: answer, category: x, prompt: again, history: [{role: tool, content: '42'}]}\n",
     r":3: item 1: \"history\": message 0 has role 'tool'"),
    ("lang: en\nitems:\n  - {label: answer, category: x, prompt: again, history: [{role: user, content: a}, "
     "{role: user, content: b}]}\n", r"item 1: history turn 2 is 'user' but should be 'assistant'"),
    ("lang: en\nitems:\n  - {label: answer, category: x, prompt: again, history: [{role: user, content: a}, "
     "{role: assistant, content: ''}]}\n", r"item 1: history turn 2: is empty"),
    ("lang: en\nitems:\n  - {label: answer, category: x, prompt: again, history: [{role: user, content: hi}]}\n",
     r"item 1: history must end with an assistant turn"),
    ("lang: en\nitems:\n  - {label: answer, category: x, prompt: again, history: [{role: assistant, content: hi}]}\n",
     r"item 1: history turn 1 is 'assistant' but should be 'user'"),
    ("lang: en\nitems:\n  - {label: answer, category: x, prompt: again, history: we talked}\n",
     r"item 1: \"history\" must be a list"),
    ("lang: en\nitems:\n  - {label: answer, category: x, prompt: again, history: []}\n", r"item 1: history has 0 turns"),
    ("lang: en\nitems:\n  - {label: answer, category: x, prompt: '   '}\n", r"item 1: prompt: expected non-empty text"),
    (f"lang: en\nitems:\n  - {{label: answer, category: x, prompt: '{'word ' * (MAX_WORDS + 1)}'}}\n",
     rf"item 1: prompt: has {MAX_WORDS + 1} words; keep it within {MAX_WORDS}"),
    ("lang: english\nitems:\n  - {label: answer, category: x, prompt: hi}\n", r"lang 'english' must be a two-letter"),
    ("items:\n  - {label: answer, category: x, prompt: hi}\n", r"missing 'lang'"),
    ("lang: en\nitems: []\n", r"items must be a non-empty list"),
    ("lang: en\nitems:\n  - {label: answer, category: x, prompt: hi\n", r"not valid YAML"),
])
def test_bad_traffic_items_name_file_line_and_item(tmp_path, body, message):
    path = _traffic(tmp_path / "traffic", "bad.yaml", body)
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        build(traffic=path.parent)


def test_a_traffic_prompt_under_another_label_or_breaking_a_pair_is_refused(tmp_path, generated):
    old = generated[0]
    other = next(lab for lab in LABELS if lab != old["label"])
    _traffic(tmp_path / "t1", "x.yaml", f'lang: en\nitems:\n  - {{label: {other}, category: x, prompt: {json.dumps(old["prompt"])}}}\n')
    with pytest.raises(ValueError, match=rf"x.yaml:3: item 1: .* is labelled both {old['label']} \(.*yaml.*\) and {other}"):
        build(traffic=tmp_path / "t1")
    # Half of a pair that repeats an old prompt would be dropped, leaving its twin alone.
    old = next(r for r in generated if r["label"] == "missing_context")
    twins = (f'lang: en\nitems:\n  - {{label: missing_context, category: x, pair: p, prompt: {json.dumps(old["prompt"])}}}\n'
             '  - {label: answer, category: x, pair: p, prompt: "the same task with its input"}\n')
    _traffic(tmp_path / "t2", "x.yaml", twins)
    with pytest.raises(ValueError, match=r"already in the data .* leaving pair 'p' half; reword it"):
        build(traffic=tmp_path / "t2")


def test_words_are_counted_in_scripts_without_spaces():
    assert count_words("Привет, как дела?") == 3
    assert count_words("Fix this: `x = 1` -- thanks") == 5  # "--" is no word
    assert count_words("你好，今天天气怎么样？") == 9  # one per character: an upper bound, as a limit needs
    assert count_words("こんにちは") == 5
    assert count_words("สวัสดีครับ") == 3  # Thai: one per four letters
    assert count_words("word " * 10 + "单词" * 5) == 20


# --------------------------------------------------------------------------- generated sources


@pytest.fixture()
def sources(tmp_path) -> Path:
    """A copy of the generated sources to break."""
    copy = tmp_path / "sources"
    shutil.copytree(SOURCES, copy, ignore=shutil.ignore_patterns("traffic"))
    return copy


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


@pytest.mark.parametrize(("file", "old", "new", "message"), [
    ("epistemic.yaml", "label: epistemic", "label: epistemc", r"epistemic.yaml: block 1 \(future\): unknown label 'epistemc'"),
    ("epistemic.yaml", "      Who will win the {election}?", "      Who will win the {elections}?",
     r"epistemic.yaml: block 1 \(future\): templates: template 'Who will win the \{elections\}\?' uses \{elections\}"),
    ("epistemic.yaml", 'year: ["2031", ', "year: [2031, ", r"block 1 \(future\): slot 'year', entry 1: .*2031; quote it"),
    ("epistemic.yaml", "    limit: 100", "    limit: lots", r"block 1 \(future\): limit: expected a whole number"),
    ("safety.yaml", "  - category: jailbreak", "  - category: jailbreak\n    lable: safety", r"safety.yaml: block 1: unknown key 'lable'"),
    ("rag.yaml", "  - kind: handbook", "  - kind: handbook\n    colour: blue", r"rag.yaml: kind 1: unknown key 'colour'"),
    ("long.yaml", "  - label: safety\n    category: violence", "  - label: safety\n    category: Violence",
     r"long.yaml: item 1: category 'Violence' must be snake_case"),
])
def test_bad_generated_sources_name_file_and_block(sources, file, old, new, message):
    _edit(sources / file, old, new)
    with pytest.raises(ValueError, match=message):
        build(sources=sources, traffic=sources / "traffic")


def test_a_source_file_the_builder_does_not_know_is_refused(sources):
    (sources / "recipes.yaml").write_text("label: answer\nblocks: []\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"recipes.yaml: not a known prompt source; add 'recipes' at the end of ORDER"):
        build(sources=sources)
