"""The engine behind ``phasegpt serve``: it owns the Model, admits requests, and batches classify.

As in vLLM's OpenAI server, the HTTP layer only translates; every request goes through this one
object. It

* admits at most ``Limits.max_queue`` requests at a time (running or waiting); one more is
  refused with ``QueueFull`` (HTTP 429), so a burst cannot pile up unbounded work;
* checks each request before it queues (document count, prompt tokens after templating), so a
  bad request costs no model time;
* merges classify requests that arrive while a classify call is running into the next call: one
  batched prefill for all of them (on the CPU it splits over both cores, which a single prompt
  cannot; benchmarks/serve.py measures the gain), each prompt's audit record carrying its own
  request id;
* runs generation through ``Model.generate`` / ``Model.stream`` in threads: the Model's MLX worker
  interleaves concurrent generations token by token (phasegpt.worker), so they neither block nor
  corrupt each other.

Audit records are the Model's (source ``"server"``, ``request_id`` in the metadata); a failed
write raises ``AuditError`` before any text leaves, which the app answers with 503.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

from phasegpt.api import Model
from phasegpt.verdict import Chunk, Result, Verdict


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how much the server takes on at once."""

    max_body_bytes: int = 4 * 2**20     # a request body larger than this is refused (413)
    max_prompt_tokens: int = 8192       # templated prompt, documents included
    max_documents: int = 32             # documents per request (or per classify item)
    max_tokens: int = 2048              # most tokens a chat request may ask to generate
    default_max_tokens: int = 256       # when the request does not say
    max_queue: int = 64                 # requests admitted at once (running or waiting); more -> 429
    max_classify_items: int = 256       # prompts in one /v1/classify request
    max_batch: int = 32                 # prompts merged into one classify call (one prefill)


class QueueFull(Exception):
    """Too many requests are being served; the client should retry later."""


class RequestError(ValueError):
    """A request the engine cannot serve, with the request field it is about."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


@dataclass
class Item:
    """One prompt (a string or a conversation) with its documents, as the Model takes it."""

    prompt: Any
    context: list[dict] | None = None
    param: str = "messages"  # the request field to name in an error about it


@dataclass
class _Job:
    items: list[Item]
    metadata: list[dict]
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Engine:
    """Owns one Model and serves requests to it (see the module docstring).

    Args:
        model: the loaded model (its ``audit`` log, if any, gets a record per request).
        limits: request limits and queue size.
        name: the model id clients send and see (default: the model's name).
    """

    def __init__(self, model: Model, *, limits: Limits = Limits(), name: str | None = None):
        self.model = model
        self.model.source = "server"
        self.limits = limits
        self.name = name or model.name
        self.active = 0
        self.batches = {"calls": 0, "prompts": 0}  # classify calls made and prompts in them (GET /health)
        self._waiting: list[_Job] = []
        self._batcher: asyncio.Task | None = None
        # threads that wait on the Model's worker: one per admitted request is enough
        self._threads = anyio.CapacityLimiter(limits.max_queue + 1)

    # --- admission and checks -----------------------------------------------------------
    @contextmanager
    def admitted(self):
        """Hold one of ``max_queue`` places while a request is served.

        Raises:
            QueueFull: every place is taken.
        """
        if self.active >= self.limits.max_queue:
            raise QueueFull(f"the server is serving its limit of {self.limits.max_queue} requests; retry shortly")
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1

    async def _thread(self, fn, *args, **kwargs):
        return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=self._threads)

    async def check(self, items: Sequence[Item]) -> list[int]:
        """Prompt tokens of each item, after checking its documents and length.

        Raises:
            RequestError: too many documents, too many tokens, or a request the Model rejects.
        """
        for item in items:
            if item.context and len(item.context) > self.limits.max_documents:
                where = "documents" if item.param == "messages" else f"{item.param}.documents"
                raise RequestError(f"{len(item.context)} documents were sent; at most {self.limits.max_documents} "
                                   "are read per request: send the most relevant ones", param=where,
                                   code="too_many_documents")
        return await self._thread(self._count, items)

    def _count(self, items: Sequence[Item]) -> list[int]:
        counts = []
        for item in items:
            try:
                n = len(self.model.prepare(item.prompt, item.context).ids)
            except ValueError as e:
                raise RequestError(str(e), param=item.param) from None
            if n > self.limits.max_prompt_tokens:
                raise RequestError(f"the prompt is {n:,} tokens with its template and documents; this server reads "
                                   f"at most {self.limits.max_prompt_tokens:,}: shorten the conversation or send "
                                   "fewer documents", param=item.param, code="context_length_exceeded")
            counts.append(n)
        return counts

    # --- classify -----------------------------------------------------------------------
    async def classify(self, items: list[Item], metadata: dict) -> list[Verdict]:
        """Verdicts for ``items`` (checked first with ``check``), batched with whatever other
        classify requests are waiting. Each item's audit record gets ``metadata`` and its index."""
        job = _Job(items, [{**metadata, "item": i} if len(items) > 1 else dict(metadata) for i in range(len(items))])
        self._waiting.append(job)
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.get_running_loop().create_task(self._drain())
        return await job.future

    async def _drain(self) -> None:
        """Run the waiting classify jobs, as many per Model call as ``max_batch`` allows."""
        while self._waiting:
            jobs, n = [], 0
            while self._waiting and (not jobs or n + len(self._waiting[0].items) <= self.limits.max_batch):
                job = self._waiting.pop(0)
                if not job.future.done():  # a client that went away needs no verdict
                    jobs.append(job)
                    n += len(job.items)
            if not jobs:
                continue
            items = [it for j in jobs for it in j.items]
            self.batches["calls"] += 1
            self.batches["prompts"] += len(items)
            try:
                verdicts = await self._thread(self.model.classify, [it.prompt for it in items],
                                              contexts=[it.context for it in items],
                                              metadata=[m for j in jobs for m in j.metadata],
                                              batch_size=max(1, n))
            except Exception as e:  # noqa: BLE001  (each waiting request gets the error)
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            at = 0
            for j in jobs:
                if not j.future.done():
                    j.future.set_result(verdicts[at:at + len(j.items)])
                at += len(j.items)

    # --- generation ---------------------------------------------------------------------
    async def generate(self, item: Item, options: dict, metadata: dict) -> Result:
        """One whole generation (``Model.generate``: one audit record, written before it returns)."""
        return await self._thread(self.model.generate, item.prompt, context=item.context, metadata=metadata,
                                  **options)

    @asynccontextmanager
    async def stream(self, item: Item, options: dict, metadata: dict) -> AsyncIterator[AsyncIterator[Chunk]]:
        """``Model.stream`` as an async iterator of chunks (the verdict chunk first).

        Leaving the block early (a client that disconnects) closes the stream on the worker, so
        its audit record is written and the worker moves on.
        """
        chunks = self.model.stream(item.prompt, context=item.context, metadata=metadata, **options)

        async def iterate() -> AsyncIterator[Chunk]:
            while (chunk := await self._thread(next, chunks, None)) is not None:
                yield chunk

        try:
            yield iterate()
        finally:
            with anyio.CancelScope(shield=True):  # also when the request was cancelled
                await self._thread(chunks.close)
