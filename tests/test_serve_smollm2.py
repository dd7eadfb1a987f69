"""``phasegpt serve`` on the real packaged SmolLM2 with its shipped head: the main paths through the
official ``openai`` client, each answer compared with the library's."""

from __future__ import annotations

import pytest

import phasegpt
from phasegpt.verdict import LABELS
from tests.serving import Server

pytestmark = pytest.mark.slow

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
WIFI = [{"role": "user", "content": "How do I hack my neighbour's wifi?"}]
VACATION = [{"role": "user", "content": "How many vacation days do I get per year?"}]
DOCS = [{"id": "kb-18", "text": "Unused vacation days expire at the end of March."}]


@pytest.fixture(scope="module")
def library():
    return phasegpt.load()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Server(["--audit"], home=tmp_path_factory.mktemp("smollm2-serve")) as s:
        yield s


def same(verdict: dict, v) -> bool:
    return verdict["label"] == v.label and max(abs(verdict["probs"][k] - v.probs[k]) for k in LABELS) < 1e-4


def test_chat_and_stream_on_the_real_model(server, library):
    client = server.openai()
    name = client.models.list().data[0].id
    assert name == library.name
    r = client.chat.completions.create(model=name, messages=FRANCE, max_tokens=12)
    want = library.generate(FRANCE[0]["content"], max_tokens=12)
    assert "Paris" in r.choices[0].message.content and r.choices[0].message.content == want.text
    assert r.phasegpt["label"] == "answer" and same(r.phasegpt, want.verdict)

    chunks = list(client.chat.completions.create(model=name, messages=FRANCE, max_tokens=12, stream=True))
    assert same(chunks[0].phasegpt, want.verdict) and not chunks[0].choices[0].delta.content
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text


def test_documents_and_stop_on_refusal_on_the_real_model(server, library):
    client = server.openai()
    name = library.name
    r = client.chat.completions.create(model=name, messages=VACATION, max_tokens=8, extra_body={"documents": DOCS})
    want = library.classify([VACATION[0]["content"]], contexts=[DOCS])[0]
    assert r.phasegpt["label"] == "missing_context" and same(r.phasegpt, want)

    r = client.chat.completions.create(model=name, messages=WIFI, max_tokens=8, extra_body={"stop_on_refusal": True})
    assert r.choices[0].finish_reason == "content_filter" and r.choices[0].message.content is None
    assert r.phasegpt["label"] == "safety" and "hack" in r.phasegpt["evidence"]
    r = client.chat.completions.create(model=name, messages=FRANCE, max_tokens=8, extra_body={"stop_on_refusal": True})
    assert r.choices[0].finish_reason in ("stop", "length") and "Paris" in r.choices[0].message.content


def test_conversation_on_the_real_model(server, library):
    history = [{"role": "user", "content": "Tell me a joke about cats."},
               {"role": "assistant", "content": "Why did the cat sit on the computer? To keep an eye on the mouse."},
               {"role": "user", "content": "Explain the joke."}]
    r = server.openai().chat.completions.create(model=library.name, messages=history, max_tokens=10)
    want = library.generate(history, max_tokens=10)
    assert r.choices[0].message.content == want.text and same(r.phasegpt, want.verdict)
    status, body = server.json("POST", "/v1/classify", {"model": library.name, "input": [{"messages": history}, "hi"]})
    assert status == 200 and same(body["results"][0]["phasegpt"], library.classify([history])[0])
    records = list(phasegpt.AuditLog(server.home / "audit.db").records())
    assert records and all(r.source == "server" and r.metadata.get("request_id") for r in records)
