"""Rows with earlier conversation turns: "history" beside the prompt, or the whole "messages" list."""

from __future__ import annotations

import hashlib
import json

import pytest

from phasegpt.train.data import check_history, read_jsonl

TURNS = [{"role": "user", "content": "Give me a slogan for a bike repair shop."},
         {"role": "assistant", "content": "Keep rolling: repairs while you wait."}]
FOLLOW_UP = "Now make it shorter."


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_history_is_kept_on_the_example_and_not_in_extra(tmp_path):
    path = _write(tmp_path / "d.jsonl", [{"prompt": FOLLOW_UP, "label": "answer", "history": TURNS, "pair": "p1"},
                                         {"prompt": FOLLOW_UP, "label": "missing_context", "history": None}])
    with_history, without = read_jsonl(path)
    assert with_history.history == tuple(TURNS) and "history" not in with_history.extra
    assert with_history.extra == {"pair": "p1"}
    assert without.history == ()
    assert with_history.key != without.key  # the same words with and without their history are two requests


def test_keys_of_rows_without_history_are_unchanged(tmp_path):
    # Feature caches are keyed by Example.key: adding the history field must not move old keys.
    docs = [{"id": "d1", "text": "Opening hours are 9 to 5."}]
    ex = read_jsonl(_write(tmp_path / "d.jsonl", [{"prompt": "When do you open?", "label": "answer", "context": docs}]))[0]
    old = hashlib.sha256(json.dumps(["When do you open?", [("d1", "Opening hours are 9 to 5.")]]).encode()).hexdigest()[:24]
    assert ex.key == old


def test_messages_split_into_history_and_prompt(tmp_path):
    messages = [*TURNS, {"role": "user", "content": FOLLOW_UP}]
    path = _write(tmp_path / "d.jsonl", [{"messages": messages, "label": "answer", "id": "m1"},
                                         {"prompt": FOLLOW_UP, "history": TURNS, "label": "answer"}])
    from_messages, from_history = read_jsonl(path)
    assert from_messages.prompt == FOLLOW_UP and from_messages.history == tuple(TURNS)
    assert from_messages.extra == {"id": "m1"} and from_messages.key == from_history.key
    single = read_jsonl(_write(tmp_path / "s.jsonl", [{"messages": [{"role": "user", "content": "hi"}], "label": "answer"}]))
    assert single[0].prompt == "hi" and single[0].history == ()


@pytest.mark.parametrize(("row", "message"), [
    ({"prompt": "p", "label": "answer", "history": "earlier we talked"}, '"history" must be a list'),
    ({"prompt": "p", "label": "answer", "history": [{"role": "user"}]}, '"history": message 0 .*content must be a string'),
    ({"prompt": "p", "label": "answer", "history": [{"role": "tool", "content": "42"}]}, "message 0 has role 'tool'"),
    ({"prompt": "p", "label": "answer", "history": [{"role": "system", "content": "be nice"}]},
     "a system message cannot be kept on a training row"),
    ({"prompt": "p", "label": "answer", "history": [TURNS[0], {"role": "system", "content": "x"}]},
     "only the first message may be one"),
    ({"messages": TURNS, "label": "answer"}, '"messages": the conversation must end with a user message'),
    ({"messages": [], "label": "answer"}, '"messages" must be a non-empty list'),
    ({"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}], "label": "answer"},
     "a system message cannot be kept on a training row"),
    ({"messages": [*TURNS, {"role": "user", "content": "x"}], "prompt": "x", "label": "answer"}, "not both"),
])
def test_bad_turns_name_file_and_line(tmp_path, row, message):
    path = _write(tmp_path / "d.jsonl", [{"prompt": "fine", "label": "answer"}, row])
    with pytest.raises(ValueError, match=f"{path}:2: .*{message}"):
        read_jsonl(path)


def test_rows_take_what_the_model_takes(tmp_path):
    # The chat prompt lets user turns follow each other; a training row may too.
    two_users = [TURNS[0], {"role": "user", "content": "Something with a bike pun?"}]
    ex = read_jsonl(_write(tmp_path / "d.jsonl", [{"prompt": FOLLOW_UP, "label": "answer", "history": two_users}]))[0]
    assert ex.history == tuple(two_users) and ex.request[-1] == {"role": "user", "content": FOLLOW_UP}


def test_check_history_returns_clean_copies():
    turns = check_history([dict(t) for t in TURNS])
    assert turns == tuple(TURNS) and turns[0] is not TURNS[0]
    assert check_history([]) == ()
