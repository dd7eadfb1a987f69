"""The serving engine in-process on the tiny model: classify requests that arrive together share
one Model call, each keeping its own verdicts and audit metadata; the queue limit holds."""

from __future__ import annotations

import asyncio

import pytest

import phasegpt
from phasegpt.serve.engine import Engine, Item, Limits, QueueFull, RequestError
from phasegpt.verdict import LABELS

PROMPTS = ["hi", "How do I bake bread?", "What is the capital of France?", "Two plus two is four.",
           "The quick brown fox jumps.", "Please answer the question.", "Mix flour and water.", "Bake it hot."]


def close(a, b) -> bool:
    return a.label == b.label and max(abs(a.probs[k] - b.probs[k]) for k in LABELS) < 1e-4


class Counting:
    """The real Model, with its classify calls counted (and their sizes kept)."""

    def __init__(self, model):
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "calls", [])

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __setattr__(self, name, value):  # the engine sets the Model's audit source
        setattr(self.model, name, value)

    def classify(self, prompts, **kwargs):
        self.calls.append(len(prompts))
        return self.model.classify(prompts, **kwargs)


@pytest.fixture
def model(tiny_model, tmp_path):
    """A Model of its own on the session's tiny model and head (the engine sets its audit source)."""
    return phasegpt.Model(tiny_model.loaded, tiny_model.head, audit=phasegpt.AuditLog(tmp_path / "audit.db"))


def test_concurrent_classify_requests_share_one_prefill(model, tiny_model):
    counting = Counting(model)
    engine = Engine(counting, limits=Limits(max_batch=32))

    async def main():
        return await asyncio.gather(*[engine.classify([Item(p)], {"request_id": f"r{i}"})
                                      for i, p in enumerate(PROMPTS)])

    got = asyncio.run(main())
    log = model.audit
    want = tiny_model.classify(PROMPTS)
    assert all(close(g[0], w) for g, w in zip(got, want))
    assert counting.calls == [8]  # all eight arrived before the first call began: one call for all
    records = {r.metadata["request_id"]: r for r in log.records()}
    assert sorted(records) == sorted(f"r{i}" for i in range(len(PROMPTS)))
    assert all(records[f"r{i}"].label == want[i].label for i in range(len(PROMPTS)))
    assert all(r.source == "server" for r in records.values())


def test_batches_stop_at_max_batch(model):
    counting = Counting(model)
    engine = Engine(counting, limits=Limits(max_batch=3))

    async def main():
        return await asyncio.gather(*[engine.classify([Item(p), Item(p)], {}) for p in PROMPTS[:4]])

    got = asyncio.run(main())
    assert counting.calls == [2, 2, 2, 2]  # two requests of two would pass 3: each goes alone
    assert all(close(g[0], g[1]) for g in got)


def test_admission_and_checks(model, tiny_model):
    engine = Engine(model, limits=Limits(max_queue=2, max_documents=1, max_prompt_tokens=20))
    with engine.admitted(), engine.admitted():
        with pytest.raises(QueueFull, match="limit of 2"):
            with engine.admitted():
                pass
    with engine.admitted():  # places are given back
        assert engine.active == 1

    async def check(item):
        return await engine.check([item])

    assert asyncio.run(check(Item("hi")))[0] == len(tiny_model.encode("hi"))
    with pytest.raises(RequestError, match="at most 1") as e:
        asyncio.run(check(Item("hi", [{"text": "a"}, {"text": "b"}])))
    assert e.value.param == "documents"
    with pytest.raises(RequestError, match="at most 20"):
        asyncio.run(check(Item("word " * 50)))
    with pytest.raises(RequestError, match="empty") as e:
        asyncio.run(check(Item(" ", param="input[3]")))
    assert e.value.param == "input[3]"


def test_classify_takes_metadata_per_prompt(tiny_model, tmp_path):
    log = phasegpt.AuditLog(tmp_path / "audit.db")
    saved, tiny_model.audit = tiny_model.audit, log
    try:
        tiny_model.classify(["hi", "hello"], metadata=[{"request_id": "a"}, {"request_id": "b"}])
        tiny_model.classify(["hey"], metadata={"request_id": "c"})
        with pytest.raises(ValueError, match="one per prompt"):
            tiny_model.classify(["hi", "hello"], metadata=[{"request_id": "a"}])
    finally:
        tiny_model.audit = saved
    assert sorted(r.metadata["request_id"] for r in log.records()) == ["a", "b", "c"]
