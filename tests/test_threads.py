"""One Model used from many threads at once: results equal serial calls, nothing left behind.

Regression tests for issue #14: classify from a non-main thread failed with "There is no
Stream(cpu, 0) in current thread" (MLX streams and lazy arrays belong to the thread that made
them), and two threads corrupted each other through the tap's swap of ``model.layers``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import phasegpt
from phasegpt.api import STREAMS_ENV
from phasegpt.tap import _Tap
from phasegpt.verdict import LABELS
from tests.conftest import random_head

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["What is the capital of France?", "How do I bake bread?", "hi", "Two plus two is four.",
           "Please answer the question using the document below.", "The quick brown fox jumps."]
DOCS = [{"id": "d1", "text": "Bread needs flour, water, salt and yeast."}]


def in_thread(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` run on a fresh thread; its result, or its exception re-raised here."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001  (re-raised in the calling thread)
            out["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def same_verdict(a, b) -> bool:
    return (a.label == b.label and a.evidence == b.evidence
            and max(abs(a.probs[k] - b.probs[k]) for k in LABELS) < 1e-4)


@pytest.fixture
def fresh_model(tiny_dir, tmp_path):
    """A Model whose head was just loaded (lazy arrays made in this thread, as phasegpt.load leaves them)."""
    base = phasegpt.load(tiny_dir)
    return phasegpt.load(tiny_dir, head=random_head(base, tmp_path / "head"))


@pytest.mark.parametrize("streams", ["1", "2"])
def test_classify_from_another_thread_equals_main_thread(fresh_model, monkeypatch, streams):
    # "1": the whole batch on one stream; "2": the batch split over two CPU streams
    monkeypatch.setenv(STREAMS_ENV, streams)
    threaded = in_thread(fresh_model.classify, PROMPTS, batch_size=4)
    main = fresh_model.classify(PROMPTS, batch_size=4)
    assert all(same_verdict(a, b) for a, b in zip(threaded, main))


def test_generate_and_stream_from_another_thread(fresh_model):
    threaded = in_thread(fresh_model.generate, "How do I bake bread?", max_tokens=8)
    chunks = in_thread(lambda: list(fresh_model.stream("hi", context=DOCS, max_tokens=6)))
    main = fresh_model.generate("How do I bake bread?", max_tokens=8)
    assert threaded.text == main.text and threaded.generation_tokens == main.generation_tokens
    assert same_verdict(threaded.verdict, main.verdict)
    assert chunks[0].verdict is not None and chunks[0].token is None
    assert "".join(c.text for c in chunks) == fresh_model.generate("hi", context=DOCS, max_tokens=6).text


def _call(model, kind: str, i: int):
    """One of four kinds of call; returns something comparable between a serial and a threaded run."""
    p = PROMPTS[i % len(PROMPTS)]
    if kind == "classify":
        return model.classify([p, PROMPTS[(i + 1) % len(PROMPTS)]], contexts=[None, DOCS], batch_size=2)
    if kind == "generate":
        r = model.generate(p, max_tokens=5 + i % 4)
        return r.text, r.verdict
    if kind == "stream":
        chunks = list(model.stream(p, context=DOCS, max_tokens=4 + i % 3))
        return "".join(c.text for c in chunks), chunks[0].verdict
    r = model.generate(p, max_tokens=6, temp=0.9, seed=i)  # seeded sampling: same tokens in any interleaving
    return r.text, r.verdict


KINDS = ("classify", "generate", "stream", "sampled")


def _same(a, b) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(same_verdict(x, y) for x, y in zip(a, b))
    return a[0] == b[0] and same_verdict(a[1], b[1])


def test_four_threads_of_mixed_calls_equal_serial(tiny_model, monkeypatch):
    monkeypatch.setenv(STREAMS_ENV, "2")  # classify splits its batch over streams while others decode
    plan = [[(KINDS[(t + i) % 4], 20 * t + i) for i in range(20)] for t in range(4)]
    serial = {i: _call(tiny_model, kind, i) for calls in plan for kind, i in calls}
    got: dict = {}
    errors: list = []
    start = threading.Barrier(4)

    def client(calls):
        start.wait()  # all four begin together, so their calls overlap
        try:
            for kind, i in calls:
                got[i] = _call(tiny_model, kind, i)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=client, args=(calls,)) for calls in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(got) == sorted(serial)
    bad = [i for i in serial if not _same(got[i], serial[i])]
    assert not bad, f"calls {bad} differ from their serial results"
    assert not any(isinstance(layer, _Tap) for layer in tiny_model.loaded.model.layers)  # no tap left behind


def test_abandoned_stream_in_one_thread_does_not_block_others(tiny_model):
    stream = tiny_model.stream("How do I bake bread?", max_tokens=50)
    next(stream), next(stream)  # prefill done, one token out; then left hanging
    other = in_thread(tiny_model.generate, "hi", max_tokens=4)
    assert other.text == tiny_model.generate("hi", max_tokens=4).text
    stream.close()
    assert not any(isinstance(layer, _Tap) for layer in tiny_model.loaded.model.layers)


def test_two_streams_interleaved_in_one_thread(tiny_model):
    a, b = tiny_model.stream("hi", max_tokens=6), tiny_model.stream("How do I bake bread?", max_tokens=6)
    texts = {"a": "", "b": ""}
    for ca, cb in zip(a, b):
        texts["a"] += ca.text
        texts["b"] += cb.text
    texts["a"] += "".join(c.text for c in a)
    texts["b"] += "".join(c.text for c in b)
    assert texts["a"] == tiny_model.generate("hi", max_tokens=6).text
    assert texts["b"] == tiny_model.generate("How do I bake bread?", max_tokens=6).text


EXIT_SCRIPT = """
import sys, threading
import phasegpt
from tests.conftest import random_head
from tests.tiny import make_tiny_model_dir

folder = make_tiny_model_dir(sys.argv[1] + "/model", num_layers=3)
model = phasegpt.load(folder, head=random_head(phasegpt.load(folder), __import__("pathlib").Path(sys.argv[1]) / "head"))
out = []

def work(i):
    out.append(model.classify(["hi", "How do I bake bread?"])[0].label)
    out.append(model.generate("hi", max_tokens=3).text)

for round_ in range(3):  # threads that come and go, as a server's do
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
print("calls", len(out))
"""


def test_no_abort_at_interpreter_exit(tmp_path):
    # Threads that ran MLX work and then ended used to leave their streams behind, and the
    # interpreter could abort as it exited ("terminate called without an active exception").
    for run in range(2):
        p = subprocess.run([sys.executable, "-c", textwrap.dedent(EXIT_SCRIPT), str(tmp_path / str(run))],
                           cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env={**os.environ, STREAMS_ENV: "2"})
        assert p.returncode == 0 and "calls 24" in p.stdout, p.stderr[-2000:]
        assert "terminate called" not in p.stderr
