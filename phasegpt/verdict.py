"""What phasegpt says about a request: the Verdict, the generation Result, typed tags.

A verdict comes from the activation-tap head (probabilities for the four labels,
computed during prefill) and, when the model was fine-tuned PhaseGPT-style, from a
typed tag such as ``<PASS:DURESS>`` found in the generated text.

How the two combine: the head decides ``label``, ``probs`` and ``confidence``; a
tag never overrides it, it is reported beside it in ``tag`` (with its mapped label)
so a caller can see when the model's own words disagree with its residual stream.
Only when there is no head does a tag alone make the verdict (``source == "tag"``,
probability 1 on the mapped label).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

LABELS: tuple[str, ...] = ("safety", "epistemic", "missing_context", "answer")
REFUSALS: frozenset[str] = frozenset(LABELS[:3])

# PhaseGPT's typed-refusal tags (and phasegpt's CONTEXT). Types not listed here (SUBJECTIVE, CONTESTED,
# CREATIVE, LEGAL, PERSONA, SELF, LOOP, ...) are kept verbatim with label None:
# they are reasons of their own that fit none of our four labels.
TAG_LABELS: Mapping[str, str] = {
    "DURESS": "safety",
    "POLICY": "safety",
    "FUTURE": "epistemic",
    "UNKNOWABLE": "epistemic",
    "PRIVATE": "epistemic",
    "TEMPORAL": "epistemic",
    "FICTIONAL": "epistemic",
    "FAKE": "epistemic",
    "CONTEXT": "missing_context",  # phasegpt's own adapters (train-adapter) write this one
}

_TAG_RE = re.compile(r"<(PASS|WONDER):([A-Za-z_]+)>")


@dataclass(frozen=True)
class Tag:
    """A PhaseGPT-style typed tag found in generated text.

    Attributes:
        text: the tag as written, e.g. ``"<PASS:DURESS>"``.
        kind: ``"PASS"`` (a refusal) or ``"WONDER"`` (an open question).
        type: the tag's type, upper-cased, e.g. ``"DURESS"``.
        label: the phasegpt label it maps to, or None for types outside the map.
    """

    text: str
    kind: str
    type: str
    label: str | None


def parse_tag(text: str) -> Tag | None:
    """Return the first ``<PASS:TYPE>`` / ``<WONDER:TYPE>`` tag in ``text``, or None."""
    m = _TAG_RE.search(text)
    if m is None:
        return None
    kind, type_ = m.group(1), m.group(2).upper()
    return Tag(text=m.group(0), kind=kind, type=type_, label=TAG_LABELS.get(type_))


@dataclass(frozen=True)
class Verdict:
    """Why the model should answer or refuse one request.

    Attributes:
        label: one of ``LABELS``.
        probs: calibrated probability of every label (sums to 1).
        confidence: ``probs[label]``.
        evidence: prompt tokens that pushed most towards ``label``, strongest first.
        tag: a typed tag found in the generated text, if any.
        layers: the residual-stream layers the head read.
        source: ``"head"`` or ``"tag"`` (no head; the tag alone decided).
        model: base model name.
        model_fingerprint: fingerprint of the base model's config and weights.
        head_sha256: SHA-256 of the head's weights file ("" when source is "tag").
        adapter_sha256: SHA-256 of the LoRA adapter weights, or None.
        thresholds: per-class thresholds the head applied.
        ood: how far the request lies from everything the head was trained on, in units of the
            distance that 99% of its dev prompts stay within (above 1: outside what it saw, and
            ``confidence`` is lowered towards uniform); None when the head has no such statistic.
    """

    label: str
    probs: Mapping[str, float]
    confidence: float
    evidence: tuple[str, ...] = ()
    tag: Tag | None = None
    layers: tuple[int, ...] = ()
    source: str = "head"
    model: str = ""
    model_fingerprint: str = ""
    head_sha256: str = ""
    adapter_sha256: str | None = None
    thresholds: Mapping[str, float] = field(default_factory=dict)
    ood: float | None = None

    @property
    def refusal(self) -> bool:
        """True when the label is a reason to refuse (anything but ``answer``)."""
        return self.label in REFUSALS

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists instead of tuples, plain dicts)."""
        d = asdict(self)
        d["probs"] = dict(self.probs)
        d["thresholds"] = dict(self.thresholds)
        d["evidence"] = list(self.evidence)
        d["layers"] = list(self.layers)
        d["refusal"] = self.refusal
        return d


@dataclass(frozen=True)
class Result:
    """One generation: the text and the verdict made during its prefill.

    Attributes:
        text: generated text ("" when generation stopped on a refusal verdict).
        verdict: the verdict, or None when there is neither a head nor a tag.
        prompt_tokens: tokens in the formatted prompt.
        generation_tokens: tokens generated.
        verdict_seconds: wall time from the call until the verdict was known.
        prompt_tps: prefill tokens per second.
        generation_tps: decode tokens per second.
        finish_reason: ``"stop"``, ``"length"`` or ``"refusal"``.
    """

    text: str
    verdict: Verdict | None
    prompt_tokens: int
    generation_tokens: int
    verdict_seconds: float
    prompt_tps: float
    generation_tps: float
    finish_reason: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = asdict(self)
        d["verdict"] = self.verdict.to_dict() if self.verdict else None
        return d


@dataclass(frozen=True)
class Chunk:
    """One item of ``Model.stream``: the first carries the verdict (and no text), the rest text.

    Attributes:
        text: the next piece of generated text ("" in the verdict chunk).
        verdict: the verdict (first chunk only; None after, or when there is no head).
        token: the generated token id (None in the verdict chunk).
        prompt_tokens: tokens in the formatted prompt.
        generation_tokens: tokens generated so far.
        prompt_tps: prefill tokens per second.
        generation_tps: decode tokens per second so far.
        finish_reason: None while generating, then ``"stop"``, ``"length"`` or ``"refusal"``.
        seconds: wall time since the call began (in the verdict chunk: the time to verdict).
    """

    text: str
    verdict: Verdict | None
    token: int | None
    prompt_tokens: int
    generation_tokens: int
    prompt_tps: float
    generation_tps: float
    finish_reason: str | None
    seconds: float
