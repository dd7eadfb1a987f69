"""The chat examples a typed-refusal adapter trains on: building them, then checking them.

``make_chat_examples`` turns labelled records into mlx-lm chat examples whose assistant
turn is the typed tag (``REFUSAL_TAGS``), a typed refusal in words (``REFUSAL_TEXTS``) or
an answer; ``tokenized_dataset`` tokenizes them with mlx-lm's ``ChatDataset`` up front so
malformed data fails before training starts. ``phasegpt.train.adapter`` trains on them.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import click
import mlx.nn as nn
from mlx_lm.tuner.datasets import CacheDataset, ChatDataset

from phasegpt.prompting import RAG_TEMPLATE, prompt_tokens, user_message
from phasegpt.verdict import LABELS

# What the adapter learns to say for each refusal label. The tags map back to the
# same labels through phasegpt.verdict.TAG_LABELS.
REFUSAL_TAGS: Mapping[str, str] = {
    "safety": "<PASS:POLICY>",
    "epistemic": "<PASS:UNKNOWABLE>",
    "missing_context": "<PASS:CONTEXT>",
}
REFUSAL_TEXTS: Mapping[str, str] = {
    "safety": "I can't help with that: it could cause real harm.",
    "epistemic": "I can't answer that: nobody can know it reliably.",
    "missing_context": "I can't answer that from what I was given: the information needed is missing.",
}
STYLES: tuple[str, ...] = ("tag", "text")


def make_chat_examples(
    records: Iterable[Mapping[str, Any]],
    tokenizer: Any,
    *,
    style: str = "tag",
    model: nn.Module | None = None,
    max_tokens: int = 64,
    template: str = RAG_TEMPLATE,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Turn labelled records into chat training examples ``{"messages": [user, assistant]}``.

    Refusals become typed tags (``style="tag"``, see ``REFUSAL_TAGS``) or a short typed
    refusal in words (``style="text"``, see ``REFUSAL_TEXTS``). An ``answer`` record
    needs a response: its own ``response`` if it has one; otherwise, when ``model`` is
    given, the base model's greedy answer (at most ``max_tokens``; training on the
    model's own answers teaches the tags without changing how it answers; read them
    first: a base model that over-refuses writes refusals here); otherwise it is
    skipped, with one warning giving the count.

    Args:
        records: dicts with ``prompt``, ``label`` (one of ``LABELS``), optional
            ``context`` (documents, as ``phasegpt.prompting.user_message`` takes them)
            and optional ``response``.
        tokenizer: the model's mlx-lm ``TokenizerWrapper``; it must have a chat template.
        style: ``"tag"`` or ``"text"``.
        model: base model to write missing answers with, or None to skip them.
        max_tokens: length cap of generated answers.
        template: the RAG template that puts context into the user turn; use the same
            one at inference.
        progress: show a progress bar on stderr while the model writes answers (a few
            seconds each on a CPU).

    Returns:
        Examples in mlx-lm's chat format, in the order of ``records``.

    Raises:
        ValueError: unknown style or label, a record without a prompt, malformed
            context, or a tokenizer without a chat template.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if not getattr(tokenizer, "has_chat_template", False):
        raise ValueError("the tokenizer has no chat template; load the model's instruct variant")
    refusals = REFUSAL_TAGS if style == "tag" else REFUSAL_TEXTS
    records = list(records)
    to_write = sum(r.get("label") == "answer" and not r.get("response") for r in records) if model is not None else 0
    # a context manager, so the bar is closed even when a record is bad
    bar_or_none = click.progressbar(length=to_write, label="writing base-model answers", file=sys.stderr) \
        if progress and to_write else contextlib.nullcontext()
    examples: list[dict[str, Any]] = []
    skipped = 0
    with bar_or_none as bar:
        for i, rec in enumerate(records):
            prompt, label = rec.get("prompt"), rec.get("label")
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"record {i} has no prompt text")
            if label not in LABELS:
                raise ValueError(f"record {i} has label {label!r}; expected one of {LABELS} (filter others out)")
            user = {"role": "user", "content": user_message(prompt, rec.get("context"), template=template)}
            if label != "answer":
                reply = refusals[label]
            elif rec.get("response"):
                reply = str(rec["response"])
            elif model is not None:
                ids = prompt_tokens(tokenizer, prompt, rec.get("context"), template=template)
                reply = _greedy_answer(model, tokenizer, ids, max_tokens)
                if bar is not None:
                    bar.update(1)
            else:
                reply = ""
            if not reply:
                skipped += 1
                continue
            examples.append({"messages": [user, {"role": "assistant", "content": reply}]})
    if skipped:
        warnings.warn(
            f"skipped {skipped} answer record(s) without a response; give them a 'response' "
            "or pass model= to generate one",
            stacklevel=2,
        )
    return examples


def _greedy_answer(model: nn.Module, tokenizer: Any, prompt: list[int], max_tokens: int) -> str:
    from mlx_lm import generate

    # mlx-lm's default sampler is argmax: greedy, so the same model gives the same data.
    return generate(model, tokenizer, prompt, max_tokens=max_tokens).strip()


def tokenized_dataset(
    examples: Sequence[Mapping[str, Any]], tokenizer: Any, *, mask_prompt: bool, max_seq_length: int, name: str
) -> CacheDataset:
    """Tokenize every example now, so bad data fails before training starts.

    Args:
        examples: ``{"messages": [..., assistant message]}`` dicts.
        tokenizer: the model's mlx-lm ``TokenizerWrapper``, with a chat template.
        mask_prompt: loss on the assistant's tokens only (sets each example's offset).
        max_seq_length: the trainer's cut; longer examples are counted in one warning.
        name: ``"training"`` or ``"validation"``, for messages.

    Returns:
        mlx-lm's ``CacheDataset`` of ``(tokens, offset)``, as its trainer takes it.

    Raises:
        ValueError: an example that is not a chat ending in an assistant message, or
            whose prompt alone fills ``max_seq_length``.
    """
    ds = CacheDataset(ChatDataset(list(examples), tokenizer, mask_prompt=mask_prompt))
    truncated = 0
    for i in range(len(ds)):
        msgs = examples[i].get("messages") if isinstance(examples[i], Mapping) else None
        if not msgs or msgs[-1].get("role") != "assistant":
            raise ValueError(f"{name} example {i} must be {{'messages': [..., assistant message]}}")
        tokens, offset = ds[i]
        # An example whose response lies past the cut contributes no loss tokens; a
        # batch of them divides by zero.
        if offset >= min(len(tokens), max_seq_length) - 1:
            raise ValueError(
                f"{name} example {i}: the prompt alone fills max_seq_length={max_seq_length}; "
                "raise max_seq_length or shorten its context"
            )
        truncated += len(tokens) > max_seq_length
    if truncated:  # stacklevel 3: blame whoever called train_adapter
        warnings.warn(f"{truncated} {name} example(s) exceed max_seq_length and will be truncated", stacklevel=3)
    return ds
