"""Turning a request (and retrieved documents) into the model's chat prompt.

RAG documents go into the user turn through one template that tells the model to
answer only from them; that instruction is what makes ``missing_context`` mean
"the documents do not hold the answer". Pass your own ``template`` (a format string
with ``{documents}`` and ``{question}``) to change it; the head should then be
trained with the same template.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

Document = Union[str, Mapping[str, Any]]
Context = Union[None, str, Mapping[str, Any], Sequence[Document]]

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
    docs = []
    for i, d in enumerate(context):
        if isinstance(d, str):
            docs.append(Doc(id="", text=d))
        elif isinstance(d, Mapping) and isinstance(d.get("text"), str):
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
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("the prompt is empty; pass the question or request to classify")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"the prompt has {len(prompt):,} characters (limit {MAX_PROMPT_CHARS:,}); shorten it")
    docs = normalize_context(context)
    if not docs:
        return prompt
    rendered = "\n\n".join(
        DOCUMENT_TEMPLATE.format(n=i + 1, id=f" ({d.id})" if d.id else "", text=d.text) for i, d in enumerate(docs)
    )
    return template.format(documents=rendered, question=prompt)


def prompt_tokens(tokenizer: Any, prompt: str, context: Context = None, *, system: str | None = None,
                  template: str = RAG_TEMPLATE) -> list[int]:
    """Token ids of the full chat prompt, ending where the assistant's answer begins."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user_message(prompt, context, template=template)})
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        # transformers 5 may return a BatchEncoding-like mapping
        if isinstance(ids, Mapping):
            ids = ids["input_ids"]
        return list(ids)
    text = "\n\n".join(m["content"] for m in messages)
    return list(tokenizer.encode(text))


def content_span(tokenizer: Any) -> tuple[int, int]:
    """How many template tokens come before and after the user content in every prompt.

    Found by templating two different one-word prompts and measuring their common prefix
    and suffix; pooling and evidence then look at the user's own tokens, not the template.
    """
    a = prompt_tokens(tokenizer, "alpha")
    b = prompt_tokens(tokenizer, "zebra crossing")
    pre = 0
    while pre < min(len(a), len(b)) and a[pre] == b[pre]:
        pre += 1
    post = 0
    while post < min(len(a), len(b)) - pre and a[-1 - post] == b[-1 - post]:
        post += 1
    return pre, post
