"""The object ``phasegpt.load`` returns: classify, generate and stream with a verdict from the same pass.

``stream`` is the core: it runs mlx-lm's ``stream_generate`` with the head's layers
tapped; when the prefill is done (the first token is sampled) the tapped prompt states
give the verdict, which is yielded before any text. ``generate`` is a thin loop over
``stream``; ``classify`` runs prefill only, batched with right padding (causal
attention means padding after a prompt cannot change its states).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import numbers
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from phasegpt import blas
from phasegpt.head import Head
from phasegpt.loading import LoadedModel
from phasegpt.prompting import (
    RAG_TEMPLATE,
    Context,
    Prompt,
    check_template,
    content_span,
    conversation,
    prompt_tokens,
    user_segments,
)
from phasegpt.tap import tapped
from phasegpt.verdict import Chunk, Result, Verdict, parse_tag
from phasegpt.worker import WORKER

STREAMS_ENV = "PHASEGPT_CPU_STREAMS"  # how many CPU streams a batched prefill is split over (1 = off)
MAX_STREAMS = 8
MAX_BATCH_TOKENS = 16_384  # padded positions per forward pass: bounds attention memory on long RAG prompts
NO_HEAD = ("no head is loaded, so there is no verdict; pass head=<folder> to phasegpt.load "
           "or train one with `phasegpt train-head`")
EVIDENCE_WORDS = 3
# Function words never make useful evidence ("hack, I, neighbour" reads worse than "hack, neighbour, wifi").
STOPWORDS = frozenset("a an the i me my we our you your it its he she they them their to of in on at for "
                      "and or but is are was were be am do does did can could would should will".split())


@dataclass(frozen=True)
class Request:
    """One request ready for the model: its chat-prompt token ids, the template tokens around the
    last user turn's content (``span``: before, after), and that turn's pieces marked as the
    caller's or the template's (``segments``, for the evidence)."""

    ids: list[int]
    span: tuple[int, int]
    segments: list[tuple[str, bool]]


def _on_worker(method):
    """Run the method on phasegpt's MLX worker thread (phasegpt.worker), whichever thread calls it."""

    @functools.wraps(method)
    def call(*args, **kwargs):
        return WORKER.run(method, *args, **kwargs)

    return call


def _on_worker_stream(method):
    """Advance the generator method on the MLX worker, one item per queued step (Worker.iterate)."""

    @functools.wraps(method)
    def call(*args, **kwargs):
        return WORKER.iterate(method(*args, **kwargs))

    return call


class Model:
    """A loaded chat model with an optional refusal-reason head and audit log.

    Build it with ``phasegpt.load``; the attributes ``loaded`` (model, tokenizer, config,
    identity), ``head`` and ``audit`` are public for advanced use.

    Thread-safe: any number of threads may call ``classify``, ``generate`` and ``stream`` on one
    Model at once, and get what serial calls would give (greedy text identical, probabilities to
    float rounding, seeded sampling the same tokens). Every forward pass runs on one MLX worker
    thread per process, in arrival order: a classify call one round of prompts at a time (it
    tokenizes and writes its audit records in the calling thread), a stream one token at a
    time (see ``phasegpt.worker`` for why, and BENCHMARKS.md for what it costs: nothing
    measurable for a single caller).
    """

    def __init__(self, loaded: LoadedModel, head: Head | None = None, *, audit: Any = None,
                 template: str = RAG_TEMPLATE, system: str | None = None):
        self.loaded, self.head, self.audit = loaded, head, audit
        self.template, self.system = template, system
        self.source = "api"  # written to audit records; the CLI sets "cli"
        if head is not None:
            head.check_base(name=loaded.name, fingerprint=loaded.fingerprint,
                            hidden_size=int(loaded.config.get("hidden_size", 0)),
                            adapter_sha256=loaded.adapter_sha256)
            head.attach(loaded.model)  # a tower head builds its tower on this model's blocks
        check_template(template)
        if head is not None:  # lazy arrays made on this thread could not be evaluated on the worker
            mx.eval(head.params, head.tower.parameters() if head.tower is not None else [])
        self._span = content_span(loaded.tokenizer, system=system)
        self._max_tokens = int(loaded.config.get("max_position_embeddings") or 0)

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    def encode(self, prompt: Prompt, context: Context = None) -> list[int]:
        """Token ids of the chat prompt for ``prompt`` (and documents), with the length checked."""
        return self.prepare(prompt, context).ids

    def prepare(self, prompt: Prompt, context: Context = None) -> Request:
        """Validate and tokenise one request (a prompt or a conversation, and its documents).

        Raises:
            ValueError: a malformed request, or one longer than the model's context.
        """
        own_system, history, question = conversation(prompt)
        segments = user_segments(question, context, template=self.template)
        ids = prompt_tokens(self.tokenizer, prompt, context, system=self.system, template=self.template)
        if self._max_tokens and len(ids) > self._max_tokens:
            raise ValueError(f"the prompt is {len(ids):,} tokens but {self.name} reads at most "
                             f"{self._max_tokens:,}; shorten it or pass fewer documents")
        system = own_system if own_system is not None else self.system
        span = self._span if not history and system == self.system else \
            content_span(self.tokenizer, system=system, history=history)
        return Request(ids, span, segments)

    # --- classify -----------------------------------------------------------------------
    def classify(self, prompts: Sequence[Prompt], *, contexts: Sequence[Context] | None = None,
                 batch_size: int = 16, metadata: dict | Sequence[dict] | None = None) -> list[Verdict]:
        """Verdicts for many requests, from prefill only (no tokens are generated).

        Args:
            prompts: the requests: prompt strings or conversations (lists of ``{"role", "content"}``
                messages ending with the user's turn), mixed freely.
            contexts: retrieved documents per prompt (None, a string, or a list), same length.
            batch_size: prompts per forward step (on the CPU a step is split over the cores, at least
                one prompt each).
            metadata: free-form caller data written to the audit log with each record: one dict
                for all, or a list of one dict (or None) per prompt.

        Returns:
            One Verdict per prompt, in order.

        Raises:
            ValueError: no head, bad prompts or contexts.
        """
        if self.head is None:
            raise ValueError(NO_HEAD)
        if isinstance(prompts, str):
            raise ValueError("classify takes a list of prompts; wrap a single prompt as [prompt]")
        if prompts and all(isinstance(p, dict) and "role" in p for p in prompts):
            raise ValueError("classify takes a list of requests; wrap a single conversation as [messages]")
        if contexts is None:
            contexts = [None] * len(prompts)
        if isinstance(contexts, (str, bytes, Mapping)) or not isinstance(contexts, Sequence):
            raise ValueError(f"contexts must be a list with one entry per prompt (None, a document or a list of "
                             f"documents), not a {type(contexts).__name__}; for one document each pass [doc, ...]")
        if len(contexts) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(contexts)} contexts; pass one context (or None) per prompt")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1, not {batch_size!r}")
        metas = [metadata] * len(prompts) if metadata is None or isinstance(metadata, dict) else list(metadata)
        if len(metas) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(metas)} metadata entries; pass one dict for all "
                             "or one per prompt")
        requests = [self.prepare(p, c) for p, c in zip(prompts, contexts)]
        verdicts: list[Verdict | None] = [None] * len(requests)
        for idx in self.rounds([len(r.ids) for r in requests], batch_size):
            t0 = time.perf_counter()
            for i, v in zip(idx, self.verdicts([requests[i] for i in idx])):
                verdicts[i] = v
            per_item = (time.perf_counter() - t0) / len(idx)
            for i in idx:
                self._record(verdicts[i], prompts[i], contexts[i], None, per_item, metas[i])
        return verdicts  # type: ignore[return-value]

    def rounds(self, lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
        """Prompt indices grouped for one ``prefill`` call each: ``batch_size`` prompts, but at least
        one per CPU stream, so that ``batch_size=1`` still keeps every core busy. (Not ``batch_size``
        per stream: bigger parts pad more, and padded attention costs the square of the length;
        on 48 prompts of 35-347 tokens that was 1.4x slower at batch 8 and 2.3x at batch 32.)"""
        return batches(lengths, max(batch_size, cpu_streams()))

    @_on_worker
    def prefill(self, batch: list[list[int]], layers: Sequence[int], *,
                parts: Sequence[int] | None = None) -> list[tuple[list[list[int]], dict[int, mx.array], mx.array]]:
        """Tapped states of ``layers`` for a batch of token lists, computed: ``(part, hidden, lengths)``
        per part of the batch, in order (``hidden_states`` of each part).

        ``parts`` gives the sizes of the consecutive parts to compute at once, one CPU stream each
        (default: the batch split evenly over ``cpu_streams()``). A prompt's numbers depend on the
        part it is computed in (its width and size, to float rounding), so a caller that fixes the
        parts gets the same bits however many cores or processes share the work (``phasegpt.batch``).

        On the CPU, MLX runs each stream's work on its own thread but its elementwise kernels
        (SwiGLU's ``silu`` is a third of a small model's forward) on one thread, while the BLAS
        threads only the matmuls. So the batch is split over one stream per core, and the BLAS is
        held to one thread meanwhile (``blas.one_thread``): every core does all of the work for its
        part (1.2-1.6x faster on 2 cores, BENCHMARKS.md). Each prompt's numbers are those of a batch
        of its part, equal to a whole-batch run to float rounding. Elsewhere (a GPU, one core,
        ``PHASEGPT_CPU_STREAMS=1``) the batch runs whole.
        """
        split = split_batch(batch, cpu_streams()) if parts is None else cut(batch, parts)
        if len(split) < 2:
            hidden, lengths = self.hidden_states(batch, layers)
            mx.eval(hidden)
            return [(batch, hidden, lengths)]
        parts = []
        for part, stream in zip(split, _streams(len(split))):
            with mx.stream(stream):
                parts.append((part, *self.hidden_states(part, layers)))
        # MLX runs the graph in the order of the arrays asked for, with few ops in flight: asking for
        # all of one part's layers before the next part's left the other core idle (measured slower
        # than one stream), so ask layer by layer, alternating parts
        with blas.one_thread():
            mx.eval([hidden[i] for i in sorted(parts[0][1]) for _, hidden, _ in parts])
        return parts

    def hidden_states(self, batch: list[list[int]], layers: Sequence[int]) -> tuple[dict[int, mx.array], mx.array]:
        """Tapped states {layer: (B, T, D)} and lengths (B,) for one batch of token lists (lazy).

        Runs in the calling thread, so only on the MLX worker (inside ``prefill``): the tap
        swaps ``model.layers`` and the lazy arrays belong to this thread's streams.
        """
        lengths = mx.array([len(t) for t in batch])
        width = max(len(t) for t in batch)
        pad = self.tokenizer.pad_token_id or 0
        x = mx.array([t + [pad] * (width - len(t)) for t in batch])  # (B, T), right-padded
        with tapped(self.loaded.model, layers, budget=width) as taps:
            self.loaded.model(x)  # lazy: only what the tapped layers need gets computed
            hidden = taps.hidden()
        return hidden, lengths

    @property
    def span(self) -> tuple[int, int]:
        """Template tokens before and after the user content (see prompting.content_span)."""
        return self._span

    @_on_worker
    def verdicts(self, requests: Sequence[Request], *, parts: Sequence[int] | None = None) -> list[Verdict]:
        """Verdicts for requests made by ``prepare``, from one ``prefill`` (``parts`` as there), on the
        MLX worker; no audit record. ``classify`` is this over length-sorted rounds, with validation
        and the log."""
        if self.head is None:
            raise ValueError(NO_HEAD)
        head = self.head
        parts = self.prefill([r.ids for r in requests], head.config.layers, parts=parts)
        spans = spans_of(requests, [len(part) for part, _, _ in parts])
        states = [head.states(hidden) for _, hidden, _ in parts]  # a tower runs here, once per part
        feats = [head.pool(st, lengths, span) for st, (_, _, lengths), span in zip(states, parts, spans)]
        probs, ood = [head.probs(f) for f in feats], [head.ood(f) for f in feats]
        z = [head.position_logits({k: h[b:b + 1, :len(ids)] for k, h in st.items()})
             for st, (part, _, _) in zip(states, parts) for b, ids in enumerate(part)]
        mx.eval(probs, z, [o for o in ood if o is not None])
        probs = np.concatenate([np.asarray(p) for p in probs])  # once, not one MLX slice per prompt
        ood = None if ood[0] is None else np.concatenate([np.asarray(o) for o in ood])
        return [self._verdict(probs[b], z[b], r, None if ood is None else ood[b]) for b, r in enumerate(requests)]

    def _verdict(self, probs: mx.array, z: mx.array, request: Request, ood: Any = None) -> Verdict:
        # numpy from here on: in `stream` the arrays are already computed, and any new MLX op
        # would queue behind mlx-lm's next decode step and delay the verdict by a whole step
        probs, z = np.asarray(probs, dtype=np.float64), np.asarray(z, dtype=np.float64)
        head = self.head
        ood = None if ood is None else float(np.asarray(ood))
        probs = head.adjust(probs, ood)  # far from the training data: less confident, leaning to answer
        labels = head.config.labels
        label = head.decide(probs[None])[0]
        p = dict(zip(labels, probs.tolist()))
        return Verdict(
            label=label, probs=p, confidence=p[label], evidence=self._evidence(z, request, labels.index(label)),
            layers=tuple(head.config.layers), source="head", model=self.loaded.name,
            model_fingerprint=self.loaded.fingerprint, head_sha256=head.sha256,
            adapter_sha256=self.loaded.adapter_sha256, thresholds=dict(head.config.thresholds),
            ood=None if ood is None else round(ood, 4),
        )

    def _evidence(self, z: np.ndarray, request: Request, k: int) -> tuple[str, ...]:
        """The caller's words of the last user turn (not the RAG template's, not earlier turns)
        where the head, applied per position, leans hardest towards class k."""
        pre, post = request.span
        ids = request.ids
        top = z.max(axis=-1, keepdims=True)
        score = (z[:, k] - (top[:, 0] + np.log(np.exp(z - top).sum(axis=-1)))).tolist()  # log p_t(k)
        words = _callers(_words(self.tokenizer, ids, pre, len(ids) - post), request.segments)
        ranked = sorted(words, key=lambda w: -max(score[i] for i in w[1]))
        seen, out = set(), []
        for text, _ in ranked:
            if len(text) > 1 and text.lower() not in seen and text.lower() not in STOPWORDS:  # not "s" of "'s"
                seen.add(text.lower())
                out.append(text)
            if len(out) == EVIDENCE_WORDS:
                break
        return tuple(out)

    # --- generate / stream --------------------------------------------------------------
    def stream(self, prompt: Prompt, *, context: Context = None, max_tokens: int = 256, temp: float = 0.0,
               top_p: float = 1.0, seed: int | None = None, stop_on_refusal: bool = False,
               metadata: dict | None = None) -> Iterator[Chunk]:
        """Yield the verdict chunk first, then one chunk per generated token.

        With an audit log, the verdict's record is committed before the verdict chunk is
        yielded: if that write fails the stream raises ``AuditError`` and yields no text (fail
        closed). When the stream ends (or is abandoned), a ``"completion"`` record linked to it
        carries the response's hash, tag and finish reason.

        Args:
            prompt: the request: a prompt string or a conversation (``{"role", "content"}`` messages
                ending with the user's turn).
            context: retrieved documents (a string, a dict with ``id``/``text``, or a list).
            max_tokens: most tokens to generate.
            temp: sampling temperature (0 = greedy).
            top_p: nucleus sampling threshold.
            seed: random seed for sampling (the same tokens whatever other calls run meanwhile).
            stop_on_refusal: stop after the verdict chunk when it is a refusal.
            metadata: free-form caller data for the audit log.

        Each step runs on the MLX worker thread (``_stream`` is advanced there, one token per
        queued step), so concurrent callers interleave token by token; closing the stream early
        closes it there too. ``generate`` runs the same steps.

        Raises:
            ValueError: a malformed request or option (options are checked at the call, the
                request at the first ``next``).
            AuditError: the verdict could not be logged (before any text).
        """
        check_sampling(max_tokens, temp, top_p, seed)
        return self._stream(prompt, context, max_tokens, temp, top_p, seed, stop_on_refusal, metadata, log_first=True)

    @_on_worker_stream
    def _stream(self, prompt: Prompt, context: Context, max_tokens: int, temp: float, top_p: float,
                seed: int | None, stop_on_refusal: bool, metadata: dict | None, *, log_first: bool) -> Iterator[Chunk]:
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        request = self.prepare(prompt, context)
        ids = request.ids
        sampler = make_sampler(temp=temp, top_p=top_p)
        if seed is not None:
            sampler = _seeded(sampler, seed)
        t0 = time.perf_counter()
        layers = self.head.config.layers if self.head else ()
        text, verdict, finish = "", None, "abandoned"
        logged, first_id = True, None  # whether the end of the stream gets its record, and what it completes
        ready: dict[str, mx.array] = {}

        def prepare(taps):  # inside the last prefill call: queue the head before the first decode step
            states = self.head.states(taps.hidden())  # a tower runs here, on the tapped block's states
            feats = self.head.pool(states, mx.array([len(ids)]), request.span)
            ready["probs"], ready["z"] = self.head.probs(feats)[0], self.head.position_logits(states)
            ood = self.head.ood(feats)
            if ood is not None:
                ready["ood"] = ood[0]
            mx.async_eval(*ready.values())

        try:
            with tapped(self.loaded.model, layers, budget=len(ids), on_done=prepare if self.head else None):
                gen = stream_generate(self.loaded.model, self.tokenizer, ids, max_tokens=max_tokens,
                                      sampler=sampler)
                first = next(gen)  # prefill done (and the first token sampled): the head has run too
            if self.head is not None:
                verdict = self._verdict(ready["probs"], ready["z"], request, ready.get("ood"))
            if log_first:  # fail closed: no chunk leaves before its verdict is in the log
                try:
                    first_id = self._record(verdict, prompt, context, None, time.perf_counter() - t0, metadata)
                except BaseException:
                    logged = False
                    gen.close()
                    raise
            stop = stop_on_refusal and verdict is not None and verdict.refusal
            yield Chunk("", verdict, None, len(ids), 0, first.prompt_tps, 0.0, "refusal" if stop else None,
                        time.perf_counter() - t0)
            if stop:
                finish = "refusal"
                gen.close()
                return
            for r in itertools.chain([first], gen):
                text += r.text
                finish = r.finish_reason or finish
                yield Chunk(r.text, None, r.token, len(ids), r.generation_tokens, r.prompt_tps, r.generation_tps,
                            r.finish_reason, time.perf_counter() - t0)
        finally:  # also when the caller abandons the stream: the record must not be lost
            if logged:
                self._record(self.with_tag(verdict, text), prompt, context, text, time.perf_counter() - t0, metadata,
                             finish, completes=first_id)

    def generate(self, prompt: Prompt, *, context: Context = None, max_tokens: int = 256, temp: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None, stop_on_refusal: bool = False,
                 metadata: dict | None = None) -> Result:
        """Generate a response and the verdict for it (a loop over the stream ``stream`` yields).

        With an audit log, one record holds the verdict and the response, written before this
        returns: if the write fails it raises ``AuditError`` and no text is returned.

        Returns:
            Result with the text, the verdict (with any typed tag found in the text),
            token counts and timings.

        Raises:
            ValueError: a malformed request or option.
            AuditError: the record could not be written.
        """
        check_sampling(max_tokens, temp, top_p, seed)
        chunks = list(self._stream(prompt, context, max_tokens, temp, top_p, seed, stop_on_refusal, metadata,
                                   log_first=False))
        first, last = chunks[0], chunks[-1]
        text = "".join(c.text for c in chunks)
        return Result(text=text, verdict=self.with_tag(first.verdict, text), prompt_tokens=first.prompt_tokens,
                      generation_tokens=last.generation_tokens, verdict_seconds=first.seconds,
                      prompt_tps=last.prompt_tps, generation_tps=last.generation_tps,
                      finish_reason=last.finish_reason or "stop")

    def with_tag(self, verdict: Verdict | None, text: str) -> Verdict | None:
        """The verdict with the typed tag found in ``text`` (or a tag-only verdict when there is no head)."""
        tag = parse_tag(text)
        if tag is None:
            return verdict
        if verdict is not None:
            return replace(verdict, tag=tag)
        if tag.label is None:
            return None
        return Verdict(label=tag.label, probs={tag.label: 1.0}, confidence=1.0, tag=tag, source="tag",
                       model=self.loaded.name, model_fingerprint=self.loaded.fingerprint,
                       adapter_sha256=self.loaded.adapter_sha256)

    def _record(self, verdict: Verdict | None, prompt: Prompt, context: Context, response: str | None,
                duration: float, metadata: dict | None, finish: str | None = None,
                completes: str | None = None) -> str | None:
        """Write one audit record (when a log is attached and there is a verdict); its id, or None.

        A conversation is recorded as its canonical JSON (the messages, keys sorted), so its
        keyed hash covers every turn and ``store_text`` keeps the whole exchange."""
        if self.audit is None or verdict is None:
            return None
        if not isinstance(prompt, str):
            prompt = json.dumps([dict(m) for m in prompt], ensure_ascii=False, sort_keys=True)
        meta = dict(metadata or {})
        if finish:
            meta.setdefault("finish_reason", finish)
        docs = None if context is None else ([context] if isinstance(context, (str, dict)) else list(context))
        return self.audit.record(verdict, prompt=prompt, contexts=docs, response=response,
                                 source=self.source, duration=duration, metadata=meta, completes=completes)


def check_sampling(max_tokens: Any, temp: Any, top_p: Any, seed: Any) -> None:
    """Raise ValueError naming the option unless the generation options make sense (checked
    before any work, so a typo costs nothing)."""
    def whole(x: Any) -> bool:
        return isinstance(x, numbers.Integral) and not isinstance(x, bool)

    def real(x: Any) -> bool:
        return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)

    if not whole(max_tokens) or max_tokens < 1:
        raise ValueError(f"max_tokens must be a whole number >= 1, not {max_tokens!r}")
    if not real(temp) or temp < 0:
        raise ValueError(f"temp must be a number >= 0 (0 = greedy), not {temp!r}")
    if not real(top_p) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be a number in (0, 1], not {top_p!r}")
    if seed is not None and (not whole(seed) or seed < 0):
        raise ValueError(f"seed must be a whole number >= 0 or None, not {seed!r}")


def cpu_streams() -> int:
    """How many CPU streams ``Model.prefill`` splits a batch over (1 = none), decided per call.

    One per core (at most ``MAX_STREAMS``) when MLX computes on the CPU and the BLAS can be held
    to one thread; 1 on a GPU. ``PHASEGPT_CPU_STREAMS`` sets the count on the CPU (1 turns the
    split off), within the same cap.
    """
    setting = os.environ.get(STREAMS_ENV, "").strip()
    if setting and (not setting.isdigit() or int(setting) < 1):
        raise ValueError(f"{STREAMS_ENV}={setting!r}: expected a whole number of streams, 1 or more (1 turns the split off)")
    if mx.default_device() != mx.cpu:
        return 1
    if setting:
        return min(int(setting), MAX_STREAMS)
    if not blas.single_threaded_ok():
        return 1
    return max(1, min(usable_cores(), MAX_STREAMS))


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# Shared by every Model; thread-local, so whichever thread runs a prefill (the worker) gets streams
# of its own: an MLX stream made on one thread cannot run work on another
_cpu_stream_pool: list[Any] = []
_cpu_stream_lock = threading.Lock()


def _streams(n: int) -> list[Any]:
    """``n`` CPU streams from the process-wide pool (none when ``n`` is 1)."""
    if n < 2:
        return []
    with _cpu_stream_lock:
        while len(_cpu_stream_pool) < n:
            _cpu_stream_pool.append(mx.new_thread_local_stream(mx.cpu))
        return _cpu_stream_pool[:n]


def _seeded(sampler: Any, seed: int) -> Any:
    """``sampler`` with the RNG re-seeded from (seed, step) before each draw: a seeded stream draws
    the same numbers however its steps interleave with other streams' on the worker (whose RNG
    they share)."""
    steps = itertools.count()

    def sample(logprobs: mx.array) -> mx.array:
        mx.random.seed(hash((seed, next(steps))) & 0xFFFF_FFFF_FFFF_FFFF)
        return sampler(logprobs)

    return sample


def split_batch(batch: list, n: int) -> list[list]:
    """``batch`` in at most ``n`` consecutive parts of equal size (the last may be smaller)."""
    if not batch:
        return []
    size = -(-len(batch) // max(1, min(n, len(batch))))
    return [batch[i:i + size] for i in range(0, len(batch), size)]


def cut(batch: list, sizes: Sequence[int]) -> list[list]:
    """``batch`` in consecutive parts of the given sizes (which must add up to its length)."""
    if any(n < 1 for n in sizes) or sum(sizes) != len(batch):
        raise ValueError(f"parts {list(sizes)} do not split a batch of {len(batch)}: each part needs "
                         "at least one prompt and together they must hold every prompt")
    out, at = [], 0
    for n in sizes:
        out.append(batch[at:at + n])
        at += n
    return out


def spans_of(requests: Sequence[Request], sizes: Sequence[int]) -> list[tuple[int, int] | mx.array]:
    """The span argument of ``head.pool`` for consecutive parts of ``requests`` of the given sizes:
    one shared ``(pre, post)`` when a part's requests agree (plain prompts), else a (B, 2) array."""
    return [part[0] if len(set(part)) == 1 else mx.array(part) for part in cut([r.span for r in requests], sizes)]


def batches(lengths: Sequence[int], batch_size: int, max_tokens: int = MAX_BATCH_TOKENS) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length (less padding), at most ``batch_size``
    prompts and ``max_tokens`` padded positions each (a long prompt goes alone if it must)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) == batch_size or (len(batch) + 1) * lengths[i] > max_tokens):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _words(tokenizer: Any, ids: list[int], start: int, end: int) -> list[tuple[str, list[int]]]:
    """The words (runs of letters and digits) of token positions [start, end): (text, positions).

    Tokens are grouped at word-start markers ("Ġ", "▁", a newline); each group is decoded and split
    into words, and a word gets the tokens whose decoded characters it overlaps. A byte-level token
    of a Cyrillic or CJK word decodes to part of a character, so splitting the pieces themselves
    would cut words apart ("приготовить" into "риготов", "ить").
    """
    pieces = tokenizer.convert_ids_to_tokens(ids[start:end])
    groups: list[list[int]] = []
    for pos, piece in zip(range(start, end), pieces):
        if not groups or (piece or "")[:1] in ("Ġ", "▁", "Ċ", " ") or len(groups[-1]) == 64:  # bounded: unspaced text
            groups.append([pos])
        else:
            groups[-1].append(pos)
    out = []
    for g in groups:
        toks = [ids[i] for i in g]
        ends = [len(tokenizer.decode(toks[:k + 1]).rstrip("\ufffd")) for k in range(len(toks))]  # chars after token k
        for m in re.finditer(r"\w+", tokenizer.decode(toks)):
            out.append((m.group(), [i for k, i in enumerate(g) if ends[k] > m.start() and (k == 0 or ends[k - 1] < m.end())]))
    return out


def _callers(words: list[tuple[str, list[int]]], segments: list[tuple[str, bool]]) -> list[tuple[str, list[int]]]:
    """The words that fall in the caller's pieces of the user turn (prompting.user_segments).

    Each word is found in the joined text after the one before it, so a word the template and
    the question share is told apart by where it is. A word not found at all (a tokenizer that
    does not decode to the same text) is dropped; one that decodes differently but matches later
    in the text can throw the words between off, so evidence is best-effort there.
    """
    if all(own for _, own in segments):
        return words
    text = "".join(piece for piece, _ in segments)
    owner = np.zeros(len(text), dtype=bool)
    at = 0
    for piece, own in segments:
        owner[at:at + len(piece)] = own
        at += len(piece)
    out, cursor = [], 0
    for word in words:
        start = text.find(word[0], cursor)
        if start < 0:
            continue
        cursor = start + len(word[0])
        if owner[start:cursor].all():
            out.append(word)
    return out


def default_head_dir() -> Path:
    """The head shipped for the embedded default model (adapters/smollm2-135m)."""
    import sys

    here = Path(__file__).resolve().parents[1] / "adapters" / "smollm2-135m"
    if here.is_dir():
        return here
    return Path(sys.prefix) / "share" / "phasegpt" / "adapters" / "smollm2-135m"


def load(model: str | Path | None = None, *, adapter: str | Path | None = None, head: str | Path | None = None,
         dtype: str = "auto", fuse: bool = False, audit: Any = None, template: str = RAG_TEMPLATE,
         system: str | None = None, allow_base_mismatch: bool = False) -> Model:
    """Load a chat model, optionally with a LoRA adapter, a refusal-reason head and an audit log.

    Args:
        model: an mlx-lm folder, a Hugging Face repo id, or a ``.gguf`` file. None loads the
            embedded default: the packaged SmolLM2-135M-Instruct with its shipped head.
        adapter: an mlx-lm LoRA adapter folder. If it also holds ``head.json``, that head is used.
        head: a head folder (``head.json`` + ``head.safetensors``).
        dtype: weight dtype policy, see ``loading.load_model``.
        fuse: merge the adapter into unquantized weights.
        audit: an ``AuditLog``, or True for the default log at ``$PHASEGPT_HOME/audit.db``.
        template: the RAG template (``{documents}`` and ``{question}``).
        system: an optional system message.
        allow_base_mismatch: load an adapter that ``phasegpt train-adapter`` trained on another
            base model (it is refused otherwise; see ``loading.load_model``).

    Returns:
        A Model with ``classify``, ``generate`` and ``stream``.
    """
    from phasegpt.hub import smollm2_gguf
    from phasegpt.loading import load_model

    if model is None:
        model = smollm2_gguf()
        shipped = default_head_dir()
        if head is None and adapter is None and (shipped / "head.json").is_file():
            if (shipped / "adapter_config.json").is_file():
                adapter = shipped
            head = shipped
    elif head is None and adapter is not None and (Path(adapter) / "head.json").is_file():
        head = adapter
    loaded = load_model(model, adapter=adapter, dtype=dtype, fuse=fuse, allow_base_mismatch=allow_base_mismatch)
    if audit is True:
        from phasegpt.audit import AuditLog

        audit = AuditLog()
    return Model(loaded, Head.load(head) if head is not None else None, audit=audit or None,
                 template=template, system=system)
