"""Conversations (OpenAI-style messages) through classify, stream and generate, on the tiny model."""

from __future__ import annotations

import mlx.core as mx
import pytest

from phasegpt.prompting import content_span, conversation, prompt_tokens
from phasegpt.verdict import LABELS

HISTORY = [{"role": "user", "content": "Give me a slogan for a bike repair shop."},
           {"role": "assistant", "content": "Keep rolling: expert bike repairs while you wait."}]
FOLLOW_UP = "Rewrite your previous answer as a limerick."


def close(a, b) -> bool:
    return a.label == b.label and max(abs(a.probs[k] - b.probs[k]) for k in LABELS) < 1e-4


def test_conversation_splits_system_history_and_last_turn():
    system, history, last = conversation([{"role": "system", "content": "Be brief."}, *HISTORY,
                                          {"role": "user", "content": FOLLOW_UP}])
    assert (system, history, last) == ("Be brief.", HISTORY, FOLLOW_UP)
    assert conversation("plain") == (None, [], "plain")


@pytest.mark.parametrize("messages, problem", [
    ([], "no messages"),
    ({"role": "user", "content": "hi"}, "list of messages"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "end with a user message"),
    ([{"role": "bot", "content": "hi"}], "role 'bot'"),
    ([{"role": "user", "content": 5}], "content must be a string"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "user", "content": "c"}],
     "only the first message"),
    (["hi"], "message 0 is a str"),
])
def test_bad_conversations_name_the_problem(tiny_model, messages, problem):
    with pytest.raises(ValueError, match=problem):
        tiny_model.prepare(messages)
    if isinstance(messages, list) and messages:
        with pytest.raises(ValueError, match=problem):
            tiny_model.classify(["fine", messages])


def test_single_conversation_passed_bare_is_caught(tiny_model):
    with pytest.raises(ValueError, match=r"wrap a single conversation as \[messages\]"):
        tiny_model.classify([*HISTORY, {"role": "user", "content": FOLLOW_UP}])


def test_one_turn_conversation_equals_the_plain_prompt(tiny_model):
    plain, convo = tiny_model.classify([FOLLOW_UP, [{"role": "user", "content": FOLLOW_UP}]])
    assert close(plain, convo) and plain.evidence == convo.evidence


def test_history_changes_the_prompt_and_the_span(tiny_model):
    messages = [*HISTORY, {"role": "user", "content": FOLLOW_UP}]
    request = tiny_model.prepare(messages)
    assert request.ids == prompt_tokens(tiny_model.tokenizer, messages)
    pre, post = request.span
    assert (pre, post) == content_span(tiny_model.tokenizer, history=HISTORY)
    assert pre > tiny_model.span[0] and post == tiny_model.span[1]
    # the span brackets exactly the last user turn's tokens
    assert tiny_model.tokenizer.decode(request.ids[pre:len(request.ids) - post]).strip() == FOLLOW_UP


def test_batched_mixed_requests_equal_one_at_a_time(tiny_model):
    requests = [FOLLOW_UP, [*HISTORY, {"role": "user", "content": FOLLOW_UP}], "hi",
                [{"role": "system", "content": "You answer in French."}, {"role": "user", "content": "hello"}]]
    batched = tiny_model.classify(requests, batch_size=4)
    for r, b in zip(requests, batched):
        one = tiny_model.classify([r])[0]
        assert close(one, b) and one.evidence == b.evidence
    assert not close(batched[0], batched[1])  # the history is read


def test_evidence_comes_from_the_last_user_turn_only(tiny_model):
    verdict = tiny_model.classify([[*HISTORY, {"role": "user", "content": FOLLOW_UP}]])[0]
    allowed = {w.strip(".,").lower() for w in FOLLOW_UP.split()}
    assert verdict.evidence and all(w.lower() in allowed for w in verdict.evidence)


def test_stream_with_history_generates_what_mlx_lm_generates(tiny_model):
    from mlx_lm import stream_generate

    messages = [*HISTORY, {"role": "user", "content": FOLLOW_UP}]
    chunks = list(tiny_model.stream(messages, max_tokens=8))
    assert chunks[0].verdict is not None and chunks[0].token is None
    ids = prompt_tokens(tiny_model.tokenizer, messages)
    plain = [r.token for r in stream_generate(tiny_model.loaded.model, tiny_model.tokenizer, mx.array(ids), max_tokens=8)]
    assert [c.token for c in chunks[1:]] == plain
    result = tiny_model.generate(messages, max_tokens=8)
    assert close(result.verdict, chunks[0].verdict)
