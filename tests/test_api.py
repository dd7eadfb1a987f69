"""Model.classify / generate / stream on the tiny model with a random head."""

from __future__ import annotations

import json
import re
import shutil

import mlx.core as mx
import pytest

import phasegpt
from phasegpt.api import STREAMS_ENV, cpu_streams
from phasegpt.errors import MismatchError, ModelLoadError
from phasegpt.head import Head
from phasegpt.verdict import LABELS, Verdict, parse_tag
from tests.conftest import random_head
from tests.tiny import make_tiny_model_dir

PROMPTS = ["What is the capital of France?", "How do I bake bread?", "hi", "Please answer the question using the document below."]


def test_classify_batched_equals_one_at_a_time(tiny_model):
    contexts = [None, "Bread needs flour.", [{"id": "d1", "text": "The capital is Paris."}, "Second doc"], None]
    batched = tiny_model.classify(PROMPTS, contexts=contexts, batch_size=4)
    single = [tiny_model.classify([p], contexts=[c])[0] for p, c in zip(PROMPTS, contexts)]
    for a, b in zip(batched, single):
        assert a.label == b.label
        assert max(abs(a.probs[k] - b.probs[k]) for k in LABELS) < 1e-4
        assert a.evidence == b.evidence


@pytest.mark.parametrize("streams", ["1", "2", "3"])
def test_classify_split_over_cpu_streams_equals_one_at_a_time(tiny_dir, tmp_path, monkeypatch, streams):
    # 1: the whole batch on the default stream; 2 and 3: parts on streams (3 splits 4 prompts 2 + 2)
    monkeypatch.setenv(STREAMS_ENV, streams)
    base = phasegpt.load(tiny_dir)
    model = phasegpt.load(tiny_dir, head=random_head(base, tmp_path / "head"))
    batched = model.classify(PROMPTS, batch_size=4)
    assert cpu_streams() == (int(streams) if mx.default_device() == mx.cpu else 1)  # never on a GPU
    monkeypatch.setenv(STREAMS_ENV, "1")
    single = phasegpt.load(tiny_dir, head=tmp_path / "head")
    for a, p in zip(batched, PROMPTS):
        b = single.classify([p])[0]
        assert a.label == b.label and a.evidence == b.evidence
        assert max(abs(a.probs[k] - b.probs[k]) for k in LABELS) < 1e-4


def test_rounds_keep_every_stream_busy(tiny_model, monkeypatch):
    monkeypatch.setenv(STREAMS_ENV, "2")
    n = cpu_streams()  # 1 on a GPU: no split, one batch per round
    lengths = [9, 3, 7, 5, 4]
    assert [len(r) for r in tiny_model.rounds(lengths, 1)] == [n] * (5 // n) + [1] * (5 % n)
    assert [len(r) for r in tiny_model.rounds(lengths, 4)] == [4, 1]  # batch_size >= streams: as given
    assert sorted(i for r in tiny_model.rounds(lengths, 1) for i in r) == list(range(5))
    parts = tiny_model.prefill([[1, 5, 6], [1, 7, 8, 9]], (0,))  # a round of two at batch_size=1
    assert [len(part) for part, _, _ in parts] == ([1, 1] if n == 2 else [2])
    monkeypatch.setenv(STREAMS_ENV, "1")
    assert [len(r) for r in tiny_model.rounds(lengths, 1)] == [1] * 5


def test_cpu_streams_are_shared_and_capped(monkeypatch):
    from phasegpt.api import MAX_STREAMS, _streams

    monkeypatch.setenv(STREAMS_ENV, "1000")
    assert cpu_streams() == (MAX_STREAMS if mx.default_device() == mx.cpu else 1)
    first = _streams(2)
    assert _streams(3)[:2] == first  # every Model reuses the same stream threads
    assert _streams(1) == []


def test_bad_cpu_streams_setting(tiny_model, monkeypatch):
    monkeypatch.setenv(STREAMS_ENV, "two")
    with pytest.raises(ValueError, match="PHASEGPT_CPU_STREAMS='two'"):
        cpu_streams()


def test_verdict_fields(tiny_model):
    v = tiny_model.classify(["What is the capital of France?"])[0]
    assert isinstance(v, Verdict) and v.label in LABELS
    assert abs(sum(v.probs.values()) - 1) < 1e-5 and v.confidence == v.probs[v.label]
    assert v.layers == (0, 2) and v.source == "head" and v.model_fingerprint == tiny_model.loaded.fingerprint
    assert len(v.head_sha256) == 64 and 1 <= len(v.evidence) <= 3
    words = "what is the capital of france".split()
    assert all(e.lower() in words for e in v.evidence)  # evidence comes from the user's words, not the template
    json.dumps(v.to_dict())


def test_rag_evidence_is_the_callers_words_not_the_template(tiny_model):
    # the template alone has ~25 words; with only the caller's five to choose from, a random head
    # would almost never pick its three from them unless the template's words are kept out
    question, ctx = "Capital city museums?", [{"id": "kb-7", "text": "Paris hosts museums."}]
    callers = {"capital", "city", "museums", "paris", "hosts"}
    for v in tiny_model.classify([question], contexts=[ctx]) + [
            tiny_model.generate(question, context=ctx, max_tokens=2).verdict]:
        assert v.evidence and {e.lower() for e in v.evidence} <= callers, v.evidence


def test_callers_words_are_told_apart_by_position():
    from phasegpt.api import _callers
    from phasegpt.prompting import user_segments

    segs = user_segments("Question: which documents?", [{"id": "a", "text": "Documents list none."}],
                         template="{documents}\nQuestion: {question}")
    text = "[Document 1 (a)]\nDocuments list none.\nQuestion: Question: which documents?"
    assert "".join(t for t, _ in segs) == text
    words = "Document 1 a Documents list none Question Question which documents".split()
    kept = _callers([(w, [i]) for i, w in enumerate(words)], segs)
    assert [i for _, (i,) in kept] == [3, 4, 5, 7, 8, 9]  # the template's "Question" (6) is not the caller's
    assert _callers([("Question", [0])], user_segments("Question and Documents")) == [("Question", [0])]


def test_system_prompt_is_template_not_content(tiny_dir, tmp_path):
    base = phasegpt.load(tiny_dir)
    head = random_head(base, tmp_path / "head")
    plain = phasegpt.load(tiny_dir, head=head)
    system = "Stay brief, careful, polite."
    model = phasegpt.load(tiny_dir, head=head, system=system)
    grew = len(model.encode("hi")) - len(plain.encode("hi"))
    assert grew > 0 and model.span[0] == plain.span[0] + grew and model.span[1] == plain.span[1]
    v = model.classify(["What is the capital of France?"])[0]
    assert {e.lower() for e in v.evidence} <= set("what is the capital of france".split())


def test_mlp_head_and_mean_pooling(tiny_dir, tmp_path):
    base = phasegpt.load(tiny_dir)
    for pooling, kind in [("mean", "mlp"), ("last", "linear")]:
        head = random_head(base, tmp_path / pooling, layers=(1,), pooling=pooling, kind=kind)
        model = phasegpt.load(tiny_dir, head=head)
        a = model.classify(PROMPTS, batch_size=3)
        b = [model.classify([p])[0] for p in PROMPTS]
        assert all(max(abs(x.probs[k] - y.probs[k]) for k in LABELS) < 1e-4 for x, y in zip(a, b))


def test_stream_yields_verdict_first_then_text(tiny_model):
    chunks = list(tiny_model.stream("How do I bake bread?", max_tokens=6))
    assert chunks[0].verdict is not None and chunks[0].text == "" and chunks[0].token is None
    assert all(c.verdict is None and c.token is not None for c in chunks[1:])
    assert chunks[-1].finish_reason == "length" and chunks[-1].generation_tokens == 6
    result = tiny_model.generate("How do I bake bread?", max_tokens=6)
    assert result.text == "".join(c.text for c in chunks)
    assert result.verdict.probs == chunks[0].verdict.probs
    assert result.prompt_tokens == chunks[0].prompt_tokens and result.generation_tokens == 6
    assert result.verdict_seconds > 0


def test_stop_on_refusal_returns_no_text(tiny_dir, tmp_path):
    base = phasegpt.load(tiny_dir)
    path = random_head(base, tmp_path / "h")
    cfg = json.loads((path / "head.json").read_text())
    cfg["thresholds"] = {"safety": -5.0, "epistemic": 0.0, "missing_context": 0.0, "answer": 0.0}  # always safety
    (path / "head.json").write_text(json.dumps(cfg))
    model = phasegpt.load(tiny_dir, head=path)
    r = model.generate("How do I bake bread?", max_tokens=20, stop_on_refusal=True)
    assert r.verdict.label == "safety" and r.text == "" and r.finish_reason == "refusal" and r.generation_tokens == 0
    assert model.generate("How do I bake bread?", max_tokens=4).generation_tokens == 4


def test_no_head_still_generates(tiny_dir):
    model = phasegpt.load(tiny_dir)
    r = model.generate("hello", max_tokens=3)
    assert r.verdict is None and r.generation_tokens == 3
    with pytest.raises(ValueError, match="train-head"):
        model.classify(["hello"])


def test_bad_input(tiny_model):
    with pytest.raises(ValueError, match="empty"):
        tiny_model.classify(["   "])
    with pytest.raises(ValueError, match="empty"):
        tiny_model.generate("")
    with pytest.raises(ValueError, match="2 prompts but 1 contexts"):
        tiny_model.classify(["a", "b"], contexts=[None])
    with pytest.raises(ValueError, match="document 1"):
        tiny_model.classify(["a"], contexts=[["fine", 42]])
    with pytest.raises(ValueError, match="list of prompts"):
        tiny_model.classify("a single string")
    with pytest.raises(ValueError, match="tokens but"):
        tiny_model.classify(["word " * 5000])


@pytest.mark.parametrize("template, problem", [("{documents} {foo} {question}", "field {foo}"),
                                               ("Only {question}", "both {documents} and {question}"),
                                               ("{documents} {question} }", "not a format string"),
                                               ("{documents!r} {question}", "{documents!r}: write plain"),
                                               ("{documents} {question:>9}", "{question:>9}: write plain")])
def test_bad_rag_template_fails_at_load(tiny_dir, template, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        phasegpt.load(tiny_dir, template=template)


def test_head_refuses_another_base(tiny_model, tmp_path):
    other = make_tiny_model_dir(tmp_path / "other", num_layers=3, seed=3)
    head_dir = tmp_path / "head"
    tiny_model.head.save(head_dir)
    with pytest.raises(MismatchError, match="train-head"):
        phasegpt.load(other, head=head_dir)


def test_head_roundtrip_and_corruption(tiny_model, tmp_path):
    d = tiny_model.head.save(tmp_path / "h")
    again = Head.load(d)
    assert again.config == tiny_model.head.config
    w = d / "head.safetensors"
    w.write_bytes(w.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ModelLoadError, match="SHA-256"):
        Head.load(d)
    shutil.rmtree(d)
    with pytest.raises(FileNotFoundError, match="train-head"):
        Head.load(d)


def test_adapter_folder_with_head_is_picked_up(tiny_dir, tiny_adapter, tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(tiny_adapter, folder)
    random_head(phasegpt.load(tiny_dir, adapter=tiny_adapter), folder)
    model = phasegpt.load(tiny_dir, adapter=folder)
    assert model.head is not None and model.classify(["hi"])[0].adapter_sha256 == model.loaded.adapter_sha256


def test_typed_tags():
    t = parse_tag("Sorry. <PASS:DURESS> I will not.")
    assert (t.kind, t.type, t.label) == ("PASS", "DURESS", "safety")
    assert parse_tag("<PASS:FAKE>").label == "epistemic"
    assert parse_tag("<WONDER:SUBJECTIVE>").label is None
    assert parse_tag("no tags here") is None


def test_batches_bound_prompts_and_padded_tokens():
    from phasegpt.api import batches

    lengths = [5, 300, 7, 6, 5000, 290, 8]
    got = list(batches(lengths, 3, max_tokens=900))
    assert sorted(i for b in got for i in b) == list(range(len(lengths)))
    for b in got:
        assert len(b) <= 3 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 900)
    assert [4] in got  # too long to share a batch: goes alone
