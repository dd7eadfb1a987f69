"""Turning a request (and retrieved documents) into the model's chat prompt.

A request is a prompt string or an OpenAI-style conversation: a list of
``{"role": "system"|"user"|"assistant", "content": str}`` turns whose last one is the
user's. The verdict is about that last user turn, read in the light of the turns
before it (the model sees them all).

RAG documents go into the last user turn through one template that tells the model to
answer only from them; that instruction is what makes ``missing_context`` mean
"the documents do not hold the answer". Pass your own ``template`` (a format string
with ``{documents}`` and ``{question}``) to change it; the head should then be
trained with the same template.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

Document = Union[str, Mapping[str, Any]]
Context = Union[None, str, Mapping[str, Any], Sequence[Document]]
Message = Mapping[str, str]
Prompt = Union[str, Sequence[Message]]
ROLES = ("system", "user", "assistant")
MAX_TURNS = 1_000

RAG_TEMPLATE = (
    "Answer the question using only the documents below. "
    "If they do not contain the answer, say that the documents do not say.\n\n"
    "{documents}\n\n"
    "Question: {question}"
)
DOCUMENT_TEMPLATE = "[Document {n}{id}]\n{text}"

# Prompts longer than this many characters are refused before tokenizing; the token
# limit (the model's context length) is checked after.
MAX_PROMPT_CHARS = 1_000_000


@dataclass(frozen=True)
class Doc:
    """One retrieved document: the caller's id (may be empty) and its text."""

    id: str
    text: str


def normalize_context(context: Context) -> list[Doc]:
    """Accept one document or a list of them (strings, or dicts with ``text`` and optional ``id``).

    Raises:
        ValueError: a document that is not a string or a dict with a string ``text``.
    """
    if context is None:
        return []
    if isinstance(context, (str, Mapping)):
        context = [context]
    if not isinstance(context, Sequence):
        raise ValueError(f"context must be a string, a dict with 'text', or a list of them; got {type(context).__name__}")
    if isinstance(context, (bytes, bytearray)):
        raise ValueError("context is bytes; decode the documents to str (UTF-8) first")
    docs = []
    for i, d in enumerate(context):
        if isinstance(d, str):
            check_text(d, f"context document {i}")
            docs.append(Doc(id="", text=d))
        elif isinstance(d, Mapping) and isinstance(d.get("text"), str):
            check_text(d["text"], f"context document {i}")
            docs.append(Doc(id=str(d.get("id", "")), text=d["text"]))
        else:
            raise ValueError(
                f"context document {i} is a {type(d).__name__}; each document must be a string "
                "or a dict like {'id': 'doc-1', 'text': '...'}"
            )
    return docs


def user_message(prompt: str, context: Context = None, *, template: str = RAG_TEMPLATE) -> str:
    """The user turn: the prompt alone, or the documents and the question through ``template``.

    Raises:
        ValueError: an empty or enormous prompt, or malformed documents.
    """
    return "".join(text for text, _ in user_segments(prompt, context, template=template))


def user_segments(prompt: str, context: Context = None, *,
                  template: str = RAG_TEMPLATE) -> list[tuple[str, bool]]:
    """The user turn in pieces, ``(text, from_caller)``: the question and the documents' texts
    are the caller's, the template's instruction and document headers are not. Joined, the
    pieces are ``user_message``; evidence is taken from the caller's pieces only.

    Raises:
        ValueError: an empty or enormous prompt, malformed documents, or a bad template
            (see ``check_template``).
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("the prompt is empty; pass the question or request to classify")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt has {len(prompt):,} characters (limit {MAX_PROMPT_CHARS:,}); shorten it")
    check_text(prompt, "the prompt")
    docs = normalize_context(context)
    if not docs:
        return [(prompt, True)]
    rendered: list[tuple[str, bool]] = []
    for i, d in enumerate(docs):
        rendered += [("\n\n", False)] if i else []
        rendered += _fill(DOCUMENT_TEMPLATE, {"n": [(str(i + 1), False)], "id": [(f" ({d.id})" if d.id else "", False)],
                                              "text": [(d.text, True)]})
    check_template(template)
    return [(text, own) for text, own in _fill(template, {"documents": rendered, "question": [(prompt, True)]}) if text]


def check_text(text: str, what: str) -> None:
    """Raise ValueError when ``text`` is not valid Unicode: bytes that were not UTF-8, kept by
    Python as lone surrogates (``surrogateescape``), which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(text[e.start])
        bad = f"the byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        raise ValueError(f"{what} is not valid UTF-8 text ({bad} at character {e.start}); decode the input "
                         "as UTF-8, or replace what is not, before passing it") from None


def check_request(prompt: Prompt, context: Context = None, *, template: str = RAG_TEMPLATE) -> None:
    """Raise ValueError for a malformed request; needs no model, so callers can check before loading one."""
    chat_messages(prompt, context, template=template)


def check_template(template: str) -> None:
    """Raise ValueError unless ``template`` uses ``{documents}`` and ``{question}`` and no other field."""
    if not isinstance(template, str):
        raise ValueError(f"the RAG template must be a string, got {type(template).__name__}")
    try:
        parsed = [(field, spec, conversion) for _, field, spec, conversion in string.Formatter().parse(template)
                  if field is not None]
    except ValueError as e:  # a lone "{" or "}"
        raise ValueError(f"the RAG template {template!r} is not a format string ({e}); write a literal brace as {{{{ or }}}}") from None
    for field, spec, conversion in parsed:
        if field not in ("documents", "question"):
            raise ValueError(f"the RAG template {template!r} has the field {{{field}}}; it may only use "
                             "{documents} and {question}")
        if spec or conversion:
            written = "{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(f"the RAG template {template!r} has {written}: write plain {{{field}}}, "
                             "without a conversion or format spec")
    if not {"documents", "question"} <= {field for field, _, _ in parsed}:
        raise ValueError(f"the RAG template {template!r} must contain both {{documents}} and {{question}}")


def _fill(template: str, fields: dict[str, list[tuple[str, bool]]]) -> list[tuple[str, bool]]:
    """``template.format`` as pieces: its literal text is not the caller's; each field's pieces are given."""
    out: list[tuple[str, bool]] = []
    for literal, field, _, _ in string.Formatter().parse(template):  # fields checked by check_template
        out.append((literal, False))
        if field is not None:
            out += fields[field]
    return out


def conversation(prompt: Prompt) -> tuple[str | None, list[dict[str, str]], str]:
    """Split a request into (system message or None, earlier turns, the last user turn's text).

    A string is a one-turn conversation. A list of messages may start with one system
    message; the rest alternate freely between user and assistant but must end with a user turn.

    Raises:
        ValueError: a malformed conversation, naming the message and the fix.
    """
    if isinstance(prompt, str):
        return None, [], prompt
    if isinstance(prompt, Mapping) or not isinstance(prompt, Sequence):
        raise ValueError(f"a request is a prompt string or a list of messages like "
                         f"[{{'role': 'user', 'content': '...'}}]; got {type(prompt).__name__}")
    if not prompt:
        raise ValueError("the conversation has no messages; pass at least one {'role': 'user', 'content': ...}")
    if len(prompt) > MAX_TURNS:
        raise ValueError(f"the conversation has {len(prompt):,} messages (limit {MAX_TURNS:,}); drop the oldest turns")
    turns: list[dict[str, str]] = []
    for i, m in enumerate(prompt):
        if not isinstance(m, Mapping):
            raise ValueError(f"message {i} is a {type(m).__name__}; each message must be a dict like "
                             "{'role': 'user', 'content': '...'}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ValueError(f"message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(f"message {i} ({role}) has content of type {type(content).__name__}; "
                             "content must be a string")
        check_text(content, f"message {i} ({role})")
        if role == "system" and i > 0:
            raise ValueError(f"message {i} is a system message; only the first message may be one")
        turns.append({"role": role, "content": content})
    if sum(len(t["content"]) for t in turns) > MAX_PROMPT_CHARS:
        raise ValueError(f"the conversation has more than {MAX_PROMPT_CHARS:,} characters; drop the oldest turns")
    system = turns.pop(0)["content"] if turns[0]["role"] == "system" else None
    if not turns or turns[-1]["role"] != "user":
        raise ValueError("the conversation must end with a user message: the verdict is about the user's last turn")
    return system, turns[:-1], turns[-1]["content"]


def chat_messages(prompt: Prompt, context: Context = None, *, system: str | None = None,
                  template: str = RAG_TEMPLATE) -> list[dict[str, str]]:
    """The messages given to the chat template: system (the conversation's own, else ``system``),
    the earlier turns, and the last user turn with any documents filled into ``template``."""
    own_system, history, question = conversation(prompt)
    system = own_system if own_system is not None else system
    messages = [{"role": "system", "content": system}] if system else []
    return messages + history + [{"role": "user", "content": user_message(question, context, template=template)}]


def prompt_tokens(tokenizer: Any, prompt: Prompt, context: Context = None, *, system: str | None = None,
                  template: str = RAG_TEMPLATE) -> list[int]:
    """Token ids of the full chat prompt, ending where the assistant's answer begins."""
    return _tokens(tokenizer, chat_messages(prompt, context, system=system, template=template))


def _tokens(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        # transformers 5 may return a BatchEncoding-like mapping
        if isinstance(ids, Mapping):
            ids = ids["input_ids"]
        return list(ids)
    text = "\n\n".join(m["content"] for m in messages)
    return list(tokenizer.encode(text))


def content_span(tokenizer: Any, *, system: str | None = None,
                 history: Sequence[Message] = ()) -> tuple[int, int]:
    """How many template tokens come before and after the last user turn's content.

    Found by templating two different one-word last turns (after ``system`` and ``history``)
    and measuring their common prefix and suffix; pooling and evidence then look at the
    user's own tokens of that turn, not the template or earlier turns.
    """
    head = ([{"role": "system", "content": system}] if system else []) + [dict(m) for m in history]
    a = _tokens(tokenizer, head + [{"role": "user", "content": "alpha"}])
    b = _tokens(tokenizer, head + [{"role": "user", "content": "zebra crossing"}])
    pre = 0
    while pre < min(len(a), len(b)) and a[pre] == b[pre]:
        pre += 1
    post = 0
    while post < min(len(a), len(b)) - pre and a[-1 - post] == b[-1 - post]:
        post += 1
    return pre, post
