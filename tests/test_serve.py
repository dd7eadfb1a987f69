"""``phasegpt serve`` on the tiny model: the real server in a subprocess, driven with the official
``openai`` client and with raw HTTP, its answers compared with the library's own."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import replace

import pytest

import phasegpt
from phasegpt.head import Head
from phasegpt.verdict import LABELS
from tests.conftest import random_head
from tests.serving import Server, sse_events

NAME = "tiny-mistral"
DOCS = [{"id": "kb-1", "text": "Bread needs flour, water, salt and yeast."}, {"id": "kb-2", "text": "Bake it hot."}]
HISTORY = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I bake bread?"},
           {"role": "assistant", "content": "Mix flour, water, salt and yeast, then bake it."},
           {"role": "user", "content": "Say it again in fewer words."}]


@pytest.fixture(scope="module")
def head_dir(tiny_dir, tmp_path_factory):
    """A random head whose label is always ``safety`` (a threshold offset) while its probabilities
    still differ from prompt to prompt: every request is a refusal, and every verdict is checkable."""
    folder = tmp_path_factory.mktemp("refusing")
    head = Head.load(random_head(phasegpt.load(tiny_dir), folder / "random"))
    thresholds = {k: (-1.0 if k == "safety" else 0.0) for k in LABELS}
    return Head(replace(head.config, thresholds=thresholds), head.params).save(folder / "head")


@pytest.fixture(scope="module")
def library(tiny_dir, head_dir):
    return phasegpt.load(tiny_dir, head=head_dir)


@pytest.fixture(scope="module")
def server(tiny_dir, head_dir, tmp_path_factory):
    with Server(["--model", str(tiny_dir), "--head", str(head_dir), "--name", NAME, "--audit"],
                home=tmp_path_factory.mktemp("serve-home")) as s:
        yield s


def same(verdict: dict, v) -> bool:
    return (verdict["label"] == v.label and verdict["evidence"] == list(v.evidence)
            and max(abs(verdict["probs"][k] - v.probs[k]) for k in LABELS) < 1e-4
            and verdict["head_sha256"] == v.head_sha256 and verdict["refusal"] == v.refusal)


def test_health_and_models(server, library):
    status, body = server.json("GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["model"] == NAME
    models = server.openai().models.list()
    assert [m.id for m in models.data] == [NAME]
    assert models.data[0].head_sha256 == library.head.sha256


def test_chat_equals_the_library(server, library):
    r = server.openai().chat.completions.create(model=NAME, messages=[{"role": "user", "content": "How do I bake bread?"}],
                                                max_tokens=12)
    want = library.generate("How do I bake bread?", max_tokens=12)
    assert r.choices[0].message.content == want.text and r.choices[0].finish_reason == want.finish_reason
    assert r.usage.prompt_tokens == want.prompt_tokens and r.usage.completion_tokens == want.generation_tokens
    assert same(r.phasegpt, want.verdict) and r.phasegpt["model"] == library.name
    assert set(r.phasegpt) == {"label", "probs", "confidence", "evidence", "tag", "ood", "refusal", "model", "head_sha256"}


def test_stream_sends_the_verdict_first_then_the_text(server, library):
    stream = server.openai().chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=10, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    want = library.generate("hi", max_tokens=10)
    first = chunks[0]
    assert same(first.phasegpt, want.verdict) and first.choices[0].delta.role == "assistant"
    assert not first.choices[0].delta.content  # the verdict comes before any text
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want.text
    ends = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(ends) == 1 and ends[0].choices[0].finish_reason == want.finish_reason
    assert chunks[-1].usage.completion_tokens == want.generation_tokens and not chunks[-1].choices

    # the same over raw HTTP: SSE in OpenAI's chunk format, ending with [DONE]; the verdict in headers too
    status, headers, raw = server.request("POST", "/v1/chat/completions", {
        "model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "stream": True})
    events = sse_events(raw)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert headers["x-phasegpt-label"] == want.verdict.label and headers["x-phasegpt-refusal"] == "true"
    assert abs(float(headers["x-phasegpt-confidence"]) - want.verdict.confidence) < 1e-4
    assert events[-1] == "[DONE]" and all(e["object"] == "chat.completion.chunk" for e in events[:-1])
    assert "phasegpt" in events[0] and "phasegpt" not in events[1]


def test_documents_ride_in_extra_body(server, library):
    r = server.openai().chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "What does bread need?"}], max_tokens=8,
        extra_body={"documents": DOCS})
    want = library.generate("What does bread need?", context=DOCS, max_tokens=8)
    assert r.choices[0].message.content == want.text and same(r.phasegpt, want.verdict)
    assert r.usage.prompt_tokens == want.prompt_tokens  # the documents are in the prompt


def test_stop_on_refusal_gives_the_verdict_and_no_text(server, library):
    client = server.openai()
    messages = [{"role": "user", "content": "How do I bake bread?"}]
    r = client.chat.completions.create(model=NAME, messages=messages, max_tokens=8, extra_body={"stop_on_refusal": True})
    want = library.classify(["How do I bake bread?"])[0]
    assert r.choices[0].finish_reason == "content_filter" and r.choices[0].message.content is None
    assert "safety" in r.choices[0].message.refusal and same(r.phasegpt, want)
    assert r.usage.completion_tokens == 0
    chunks = list(client.chat.completions.create(model=NAME, messages=messages, max_tokens=8, stream=True,
                                                 extra_body={"stop_on_refusal": True}))
    assert same(chunks[0].phasegpt, want)
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason == "content_filter"


def test_conversation_with_history_equals_the_library(server, library):
    client = server.openai()
    r = client.chat.completions.create(model=NAME, messages=HISTORY, max_tokens=8)
    want = library.generate(HISTORY, max_tokens=8)
    assert r.choices[0].message.content == want.text and same(r.phasegpt, want.verdict)
    status, body = server.json("POST", "/v1/classify", {"model": NAME, "input": [{"messages": HISTORY}]})
    assert status == 200 and same(body["results"][0]["phasegpt"], library.classify([HISTORY])[0])


def test_classify_endpoint_equals_the_library(server, library):
    inputs = ["hi", {"prompt": "What does bread need?", "documents": DOCS}, {"messages": HISTORY[1:]}]
    status, body = server.json("POST", "/v1/classify", {"model": NAME, "input": inputs})
    want = library.classify(["hi", "What does bread need?", HISTORY[1:]], contexts=[None, DOCS, None])
    assert status == 200 and body["object"] == "classification.list" and len(body["results"]) == 3
    for result, v, i in zip(body["results"], want, range(3)):
        assert result["index"] == i and same(result["phasegpt"], v)
    assert body["usage"]["prompt_tokens"] == sum(r["prompt_tokens"] for r in body["results"])
    status, body = server.json("POST", "/v1/classify", {"model": NAME, "input": "hi"})  # a lone string
    assert status == 200 and same(body["results"][0]["phasegpt"], want[0])


def test_concurrent_clients_get_what_serial_calls_give(server, library):
    prompts = ["hi", "How do I bake bread?", "What is the capital of France?", "Two plus two is four.",
               "The quick brown fox jumps.", "Please answer the question."]
    want = {p: (library.generate(p, max_tokens=6), library.classify([p])[0]) for p in prompts}
    errors, got = [], []

    def client(k):
        c = server.openai()
        try:
            for i in range(6):
                p = prompts[(k + i) % len(prompts)]
                if i % 3 == 0:
                    status, body = server.json("POST", "/v1/classify", {"model": NAME, "input": [p]})
                    got.append(status == 200 and same(body["results"][0]["phasegpt"], want[p][1]))
                elif i % 3 == 1:
                    r = c.chat.completions.create(model=NAME, messages=[{"role": "user", "content": p}], max_tokens=6)
                    got.append(r.choices[0].message.content == want[p][0].text and same(r.phasegpt, want[p][1]))
                else:
                    chunks = list(c.chat.completions.create(model=NAME, messages=[{"role": "user", "content": p}],
                                                            max_tokens=6, stream=True))
                    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
                    got.append(text == want[p][0].text and same(chunks[0].phasegpt, want[p][1]))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(got) == 48 and all(got)


def test_audit_records_carry_the_request_id(server):
    status, headers, _ = server.request("POST", "/v1/classify", {"model": NAME, "input": ["hi", "hello"]},
                                        headers={"X-Request-ID": "req-audit-1"})
    assert status == 200 and headers["x-request-id"] == "req-audit-1"
    status, headers, _ = server.request("POST", "/v1/chat/completions", {
        "model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "user": "u-7"})
    generated = headers["x-request-id"]
    assert status == 200 and len(generated) == 32  # none sent: the server made one
    log = phasegpt.AuditLog(server.home / "audit.db")
    records = list(log.records())
    mine = [r for r in records if r.metadata.get("request_id") == "req-audit-1"]
    assert sorted(r.metadata["item"] for r in mine) == [0, 1] and all(r.source == "server" for r in mine)
    chat = [r for r in records if r.metadata.get("request_id") == generated]
    assert chat and chat[-1].metadata["user"] == "u-7"
    assert log.verify().ok


# --- errors ------------------------------------------------------------------------------------
KEY = "test-key-123"


@pytest.fixture(scope="module")
def guarded(tiny_dir, head_dir, tmp_path_factory):
    args = ["--model", str(tiny_dir), "--head", str(head_dir), "--name", NAME, "--max-documents", "2",
            "--max-body-bytes", "4096", "--max-prompt-tokens", "300", "--max-queue", "1", "--max-tokens", "2000"]
    with Server(args, home=tmp_path_factory.mktemp("guarded-home"), api_key=KEY) as s:
        yield s


def chat(**fields) -> dict:
    return {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **fields}


BAD = [  # (body, status, param, words the message must hold)
    (b'{"model": "tiny-mistral", "messages": [', 400, None, "not valid JSON"),
    (b"\xff\xfe not json", 400, None, "not valid JSON"),
    (b'["a list"]', 400, None, "JSON object"),
    (chat(messages=[{"role": "user", "content": 5}]), 400, "messages[0].content", "valid string"),
    (chat(messages=[{"role": "robot", "content": "hi"}]), 400, "messages[0].role", "'user'"),
    (chat(messages=[]), 400, "messages", "at least 1"),
    (chat(messages=[{"role": "assistant", "content": "hi"}]), 400, "messages", "last message"),
    (chat(max_tokens="lots"), 400, "max_tokens", "integer"),
    (chat(temperature=-1), 400, "temperature", "greater than or equal to 0"),
    (chat(document=[]), 400, "document", "Unrecognized request argument"),
    (chat(n=3), 400, "n", "does not support n=3"),
    (chat(max_tokens=5000), 400, "max_tokens", "at most 2000"),
    (chat(model="gpt-4o"), 404, "model", "does not exist here"),
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model", "required"),
    (chat(documents=[{"id": "a", "text": "x"}] * 3), 400, "documents", "at most 2"),
    (chat(documents=[{"id": "a"}]), 400, "documents[0].text", "required"),
    (chat(messages=[{"role": "user", "content": "word " * 400}]), 400, "messages", "at most 300"),
    (chat(messages=[{"role": "user", "content": "x" * 5000}]), 413, None, "at most 4,096"),
]


@pytest.mark.parametrize("body,status,param,words", BAD, ids=[f"{i}-{b[2] or b[3][:12]}" for i, b in enumerate(BAD)])
def test_bad_requests_get_openai_errors(guarded, body, status, param, words):
    got, headers, raw = guarded.request("POST", "/v1/chat/completions", body)
    error = json.loads(raw)["error"]
    assert got == status and error["param"] == param and words in error["message"], error
    assert set(error) == {"message", "type", "param", "code"} and b"Traceback" not in raw
    assert headers["x-request-id"]


def test_classify_errors_name_the_item(guarded):
    status, body = guarded.json("POST", "/v1/classify", {"model": NAME, "input": [{"prompt": "a", "messages": []}]})
    assert status == 400 and body["error"]["param"] == "input[0].messages"
    status, body = guarded.json("POST", "/v1/classify", {"model": NAME, "input": ["ok", {"prompt": " "}]})
    assert status == 400 and body["error"]["param"] == "input[1]" and "empty" in body["error"]["message"]


def test_api_key_is_checked_on_every_route_but_health(guarded):
    for method, path, body in [("GET", "/v1/models", None), ("POST", "/v1/chat/completions", chat()),
                               ("POST", "/v1/classify", {"model": NAME, "input": "hi"})]:
        status, resp = guarded.json(method, path, body, key=False)
        assert status == 401 and "Authorization: Bearer" in resp["error"]["message"]
        assert resp["error"]["code"] == "invalid_api_key"
        status, resp = guarded.json(method, path, body, key=False, headers={"Authorization": "Bearer wrong"})
        assert status == 401 and "wrong" in resp["error"]["message"]
    assert guarded.json("GET", "/health", key=False)[0] == 200
    import openai

    with pytest.raises(openai.AuthenticationError):
        guarded.openai(api_key="wrong").models.list()
    assert guarded.openai().models.list().data[0].id == NAME


def test_unknown_routes_and_methods_get_json(guarded):
    status, body = guarded.json("GET", "/v1/engines")
    assert status == 404 and "/v1/chat/completions" in body["error"]["message"]
    status, body = guarded.json("GET", "/v1/chat/completions")
    assert status == 405 and "GET is not allowed" in body["error"]["message"]
    status, _, raw = guarded.request("POST", "/v1/classify", {"model": NAME, "input": "hi"},
                                     headers={"X-Request-ID": "bad id with spaces"})
    assert status == 400 and json.loads(raw)["error"]["param"] == "X-Request-ID"


def test_full_queue_answers_429(guarded):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", guarded.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", json.dumps(chat(max_tokens=2000, stream=True)),
                 {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and b"phasegpt" in r.readline()  # the one place is taken, its stream under way
    status, headers, raw = guarded.request("POST", "/v1/classify", {"model": NAME, "input": "hi"})
    assert status == 429 and headers["retry-after"] == "1" and json.loads(raw)["error"]["code"] == "rate_limit_exceeded"
    conn.close()  # the client goes away: the server closes the stream and frees the place
    for _ in range(100):
        status, _, _ = guarded.request("POST", "/v1/classify", {"model": NAME, "input": "hi"})
        if status == 200:
            break
        threading.Event().wait(0.1)
    assert status == 200


def test_a_failing_audit_write_answers_503_without_text(tiny_dir, head_dir, tmp_path):
    home = tmp_path / "home"
    with Server(["--model", str(tiny_dir), "--head", str(head_dir), "--name", NAME, "--audit",
                 "--audit-timeout", "0.3"], home=home) as s:
        assert s.json("POST", "/v1/classify", {"model": NAME, "input": "hi"})[0] == 200  # the log exists
        holder = sqlite3.connect(home / "audit.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another writer holds the log past the server's timeout
        try:
            for body in [chat(), chat(stream=True), {"model": NAME, "input": ["hi", "hello"]}]:
                path = "/v1/classify" if "input" in body else "/v1/chat/completions"
                status, _, raw = s.request("POST", path, body)
                error = json.loads(raw)["error"]
                assert status == 503 and error["code"] == "audit_unavailable" and "fail closed" in error["message"]
                assert b"content" not in raw and b"data:" not in raw
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert s.json("POST", "/v1/chat/completions", chat())[0] == 200  # the log is back: so is the service
