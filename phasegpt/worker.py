"""The one thread that runs phasegpt's MLX work, so that a Model can be called from any thread.

MLX streams belong to the thread that made them, and so do the lazy arrays built on them: work
queued in one thread cannot be evaluated in another ("There is no Stream(cpu, 0) in current
thread"). Each thread that touches MLX gets streams of its own, which are OS threads that
outlive it, and a thread that ends while its streams exist can make the interpreter abort at exit
("terminate called without an active exception"). And the tap swaps ``model.layers`` for the
length of a forward pass, which another thread's pass would run through. Measured on this
project's 2-core machine (benchmarks/threads.py, BENCHMARKS.md):

* per-thread streams alone (each caller runs its own MLX work): four threads generating at once
  on one model crashed the process (a segmentation fault inside mlx-lm's decode step), and five
  short-lived calling threads left 16 OS threads behind;
* a lock around each forward pass would still need per-thread streams, so it keeps the leak and
  the exit problem, and held across a stream's tokens it stalls every other caller for a whole
  generation (a classify call waited for the streams ahead of it, not for one token);
* one worker thread that runs every forward pass, fed by a queue: the process survives, the worker's
  own few threads are made once, and a single caller runs as fast as inline; since one batched
  prefill already keeps both cores busy (split over one MLX stream per core), serving callers one
  step at a time costs no throughput.

So every Model's MLX work goes through ``run``: a call from any thread is queued, run on this
thread in arrival order, and its result or exception handed back. A stream is advanced one
token per queued step (``iterate``), so a classify call waits for the steps already queued (one
per active stream), not for whole generations. Calls made on the worker itself
(nested) run at once. The thread is a daemon started on first use; at interpreter exit it is
stopped and drops its streams before the process tears MLX down.
"""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")
_END = object()
EXIT_WAIT = 10.0  # seconds the exit hook waits for a step still running on the worker


class Worker:
    """A thread that runs queued calls one at a time (see the module docstring)."""

    def __init__(self, name: str = "phasegpt-mlx"):
        self._name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopped = False

    def on_worker(self) -> bool:
        """True when called from the worker thread itself."""
        return threading.current_thread() is self._thread

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on the worker thread; its result, or its exception raised here.

        Raises:
            RuntimeError: the worker has stopped (the interpreter is exiting).
        """
        if self.on_worker():
            return fn(*args, **kwargs)
        future: Future = Future()
        with self._start_lock:
            if self._stopped:
                raise RuntimeError("phasegpt's MLX worker has stopped because the interpreter is exiting; "
                                   "finish model calls before the program ends")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()
                atexit.register(self.stop)
            self._queue.put((future, fn, args, kwargs))
        return future.result()

    def iterate(self, gen: Iterator[T]) -> Iterator[T]:
        """Yield the items of ``gen``, advancing it one item per call on the worker.

        When the caller stops early (``close()``, garbage collection, an exception in its loop),
        ``gen`` is closed on the worker too, so its ``finally`` blocks run there.
        """
        try:
            while (item := self.run(next, gen, _END)) is not _END:
                yield item
        finally:
            try:
                self.run(gen.close)
            except RuntimeError:
                pass  # exiting interpreter: nothing left to tidy on the worker

    def stop(self) -> None:
        """Let the queued calls finish, then end the thread (registered with atexit)."""
        with self._start_lock:
            self._stopped = True
            thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(EXIT_WAIT)

    def _loop(self) -> None:
        while (task := self._queue.get()) is not None:
            future, fn, args, kwargs = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001  (handed to the caller, who re-raises it)
                future.set_exception(e)
            del task, future, fn, args, kwargs  # drop arrays the call returned before waiting again
        import mlx.core as mx

        # A thread that ends while its streams still exist can abort the process at exit
        mx.synchronize()
        mx.clear_streams()


WORKER = Worker()
