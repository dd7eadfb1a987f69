"""Several processes, one job: the thin layer over ``mlx.distributed`` that batch work uses.

Under ``mlx.launch`` (ring backend over TCP by default, or MPI, or JACCL) every process runs the
same command; ``world()`` says which rank this process is, how many there are, and how many share
its host (and so its cores). Work is shared out by token count (``shard_by_tokens``) and results
come back in input order (``World.gather_in_order``). Batch jobs that fix their batches up front
(``batch.classify``, ``train.features``) run them with ``run_in_turns``: dealt out in steps, one
batch per CPU stream of every rank (``in_turns``), results exchanged every ``SYNC_SECONDS`` or so
of work (``steps_per_exchange``).

The collectives carry bytes: small JSON or numpy payloads next to the forward passes that make
them (on loopback an all-gather of 1 MB between two processes takes ~4 ms, of a few bytes ~0.1
ms). Every rank must make the same calls in the same order, so every decision that depends on
data one rank alone has (rank 0's journal, say) is broadcast first.

Run without ``mlx.launch``, the world is one process and every collective returns at once.
"""

from __future__ import annotations

import heapq
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cache
from typing import Any

import mlx.core as mx
import numpy as np

from phasegpt.errors import PhasegptError

SYNC_SECONDS = 2.0  # work between two exchanges of results (rank 0 sets the step count from it)
MAX_EVERY = 64      # steps between exchanges at most


class RankLost(PhasegptError):
    """Another process of the job stopped (a lost host, Ctrl-C, SIGKILL) in the middle of a collective."""


class JobError(ValueError):
    """An error that every process of a job raises alike, from data they agreed on; rank 0 reports it
    (the CLI keeps the other ranks quiet)."""


@dataclass(frozen=True)
class World:
    """The processes of one job.

    Attributes:
        group: the ``mx.distributed`` group (None when alone).
        rank: this process, 0 .. size-1; rank 0 writes the output.
        size: how many processes run the job.
        local_size: how many of them run on this host (they share its cores).
        local_rank: this process among those, 0 .. local_size-1 (0 does the host's shared writes).
    """

    group: Any
    rank: int
    size: int
    local_size: int = 1
    local_rank: int = 0

    def gather_bytes(self, data: bytes) -> list[bytes]:
        """Every rank's ``data``, by rank (on every rank)."""
        if self.size == 1:
            return [data]
        sizes = self._all_gather(np.array([len(data)], dtype=np.int64)).tolist()
        width = max(sizes)
        if width == 0:
            return [b""] * self.size
        buf = np.zeros(width, dtype=np.uint8)
        buf[:len(data)] = np.frombuffer(data, dtype=np.uint8)
        rows = self._all_gather(buf).reshape(self.size, width)
        return [rows[r, :n].tobytes() for r, n in enumerate(sizes)]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's JSON-serialisable ``obj``, by rank."""
        return [json.loads(b) for b in self.gather_bytes(json.dumps(obj).encode())]

    def broadcast(self, obj: Any, root: int = 0) -> Any:
        """``root``'s JSON-serialisable ``obj`` on every rank (the others' argument is ignored)."""
        if self.size == 1:
            return obj
        return json.loads(self.gather_bytes(json.dumps(obj).encode() if self.rank == root else b"")[root])

    def all_sum(self, x: np.ndarray) -> np.ndarray:
        """The element-wise sum of every rank's ``x`` (same shape and dtype everywhere)."""
        if self.size == 1:
            return x
        return self._collective(mx.distributed.all_sum, x)

    def gather_in_order(self, shares: Sequence[Sequence[int]], mine: Sequence[Any]) -> list[Any]:
        """Put every rank's results back in input order.

        Args:
            shares: the input indices each rank worked on (``shard_by_tokens``), the same on every rank.
            mine: this rank's results (JSON-serialisable), one per index of ``shares[rank]``, in that order.

        Returns:
            All results, ordered by input index (on every rank).
        """
        if len(mine) != len(shares[self.rank]):
            raise ValueError(f"rank {self.rank} has {len(mine)} results for {len(shares[self.rank])} inputs")
        out: list[Any] = [None] * sum(len(s) for s in shares)
        for share, results in zip(shares, self.gather(list(mine))):
            for i, r in zip(share, results):
                out[i] = r
        return out

    def check_same_job(self, params: dict[str, Any]) -> None:
        """Raise ``JobError`` on every rank unless all were given equal ``params`` (JSON-serialisable):
        every rank computes the whole plan of a job, so each must be given the same one."""
        if self.size == 1:
            return
        for r, theirs in enumerate(self.gather(params)):
            differs = [k.replace("_", " ") for k in params if theirs.get(k) != params[k]]
            if differs:
                raise JobError(f"rank {r} runs another job than rank {self.rank} (another {', '.join(differs)}); "
                               "give every process the same command, data files, model, head and MLX")

    def streams(self) -> int:
        """CPU streams this process should split a batch over: its share of the host's cores.

        Alone on a host it is ``cpu_streams()``; ``local_size`` processes on one host take
        ``cores // local_size`` each (two processes on two cores: one stream each), unless
        ``PHASEGPT_CPU_STREAMS`` sets the count for every process.
        """
        from phasegpt.api import STREAMS_ENV, cpu_streams, usable_cores

        n = cpu_streams()
        if self.local_size == 1 or os.environ.get(STREAMS_ENV, "").strip():
            return n
        return max(1, min(n, usable_cores() // self.local_size))

    def _all_gather(self, x: np.ndarray) -> np.ndarray:
        return self._collective(mx.distributed.all_gather, x)

    def _collective(self, op, x: np.ndarray) -> np.ndarray:
        """``op`` (an ``mx.distributed`` collective) on ``x`` over the group, on the CPU; a peer
        lost mid-call is a ``RankLost``."""
        try:
            out = op(mx.array(x), group=self.group, stream=mx.cpu)
            mx.eval(out)
        except RuntimeError as e:
            raise _lost(e) from None
        return np.array(out)


def _lost(e: RuntimeError) -> RankLost:
    return RankLost(f"lost contact with another process of the job ({e}); "
                    "what was done is kept: run the same command again to resume")


@cache
def world() -> World:
    """This process's place in the job: ``mx.distributed.init()`` (the backend ``mlx.launch`` set
    up, or one process alone), and how many ranks share this host.

    Raises:
        RankLost: a peer could not be reached while the ranks counted their hosts.
    """
    group = mx.distributed.init()
    alone = World(group, group.rank(), group.size())
    if alone.size == 1:
        return World(None, 0, 1)
    # the MAC address tells apart two hosts that happen to share a name (two "MacBook-Pro"s)
    host = f"{socket.gethostname()}/{uuid.getnode():x}"
    hosts = alone.gather(host)
    return World(group, alone.rank, alone.size, local_size=hosts.count(host), local_rank=hosts[:alone.rank].count(host))


def shard_by_tokens(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Indices of ``lengths`` in ``size`` shares of about equal total tokens.

    Longest first, each to the share with the fewest tokens so far (ties: the lowest rank), so
    shares differ by at most one item's length. Deterministic: every rank computes the same
    shares. Each share is in increasing index order.
    """
    heap = [(0, r) for r in range(size)]  # (tokens so far, rank)
    shares: list[list[int]] = [[] for _ in range(size)]
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        total, r = heapq.heappop(heap)
        shares[r].append(i)
        heapq.heappush(heap, (total + lengths[i], r))
    return [sorted(s) for s in shares]


def in_turns(batches: Sequence[Sequence[int]], streams: Sequence[int]) -> list[list[list[Sequence[int]]]]:
    """Deal ``batches`` out in steps, one batch to every CPU stream of every rank per step.

    Args:
        batches: the work, in the order to do it (longest first, so the last step, which may
            leave streams idle, is the cheapest).
        streams: the CPU streams of each rank (``World.gather(World.streams())``).

    Returns:
        ``steps[s][r]``: the batches rank ``r`` runs at once at step ``s`` (one per stream, or
        fewer at the last step). Every other step deals the streams in reverse (a snake), so no
        rank always gets the shortest batch of a step. The same on every rank.
    """
    slots = [r for r, n in enumerate(streams) for _ in range(n)]  # one per CPU stream of every rank
    steps = []
    for s, at in enumerate(range(0, len(batches), len(slots))):
        order = slots if s % 2 == 0 else slots[::-1]
        step: list[list[Sequence[int]]] = [[] for _ in streams]
        for b, r in zip(batches[at:at + len(slots)], order):
            step[r].append(b)
        steps.append(step)
    return steps


def run_in_turns(w: World, batches: Sequence[Sequence[int]], work: Callable[[list[Sequence[int]]], bytes],
                 collect: Callable[[list[list[int]], list[bytes], Any], None],
                 decide: Callable[[], Any] = lambda: None) -> None:
    """Run fixed ``batches`` on every rank's CPU streams in turns (``in_turns``), exchanging results
    about every ``SYNC_SECONDS``. Every rank of the job makes the same call.

    Args:
        batches: item indices, the same on every rank, in the order to run them (longest first).
        work: this rank's share of one step -> bytes: its batches at once, one per CPU stream,
            with a one-thread BLAS (a batch's numbers depend on the BLAS's thread count too,
            measured on OpenBLAS; the cores go to the streams and the ranks instead).
        collect: called on every rank at every exchange with ``done[r]`` (the items rank ``r``
            ran since the last exchange, in the order of its batches), ``blobs[r]`` (its
            ``work`` bytes for them, concatenated) and what rank 0's ``decide()`` returned
            (JSON, e.g. whether to save now: every rank acts on the same answer).
    """
    from phasegpt import blas

    steps = in_turns(batches, w.gather(w.streams()))
    single = blas.one_thread() if mx.default_device() == mx.cpu else nullcontext()
    with single:
        at, every = 0, 1
        while at < len(steps):
            t0, ran = time.perf_counter(), steps[at:at + every]
            mine = [work(step[w.rank]) for step in ran if step[w.rank]]
            said = w.broadcast({"every": steps_per_exchange((time.perf_counter() - t0) / len(ran)),
                                "decided": decide() if w.rank == 0 else None})
            done = [[i for step in ran for b in step[r] for i in b] for r in range(w.size)]  # every rank knows whose
            collect(done, w.gather_bytes(b"".join(mine)), said["decided"])
            at, every = at + every, said["every"]


def steps_per_exchange(seconds_per_step: float) -> int:
    """How many steps to run before the next exchange of results: about ``SYNC_SECONDS`` of work,
    so that a rank waits for a slower one less often (and a stop loses at most that much).
    Rank 0 decides and tells the others with the exchange."""
    return max(1, min(MAX_EVERY, int(SYNC_SECONDS / max(seconds_per_step, 1e-3))))


def loopback_ports(n: int) -> int:
    """A port ``p`` with ``p .. p+n-1`` free on 127.0.0.1 now: a ring of ``n`` ranks on this host
    (``mlx.launch -n N -p P``, or a hostfile ``[["127.0.0.1:P"], ["127.0.0.1:P+1"], ...]``).

    Raises:
        OSError: no such block was found in 100 tries (the host is out of ports).
    """
    def free(port: int) -> bool:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return True
            except OSError:
                return False

    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + n < 65535 and all(free(p + k) for k in range(n)):
            return p
    raise OSError(f"no block of {n} free ports on 127.0.0.1 in 100 tries")
