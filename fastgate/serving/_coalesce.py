"""The queue and worker thread that :class:`~fastgate.serving.Batcher` and
:class:`~fastgate.serving.Sessions` share: requests that arrive within ``max_wait_ms`` of
each other (up to ``max_batch``) are handed to one ``run_batch`` call.

One worker thread per coalescer runs every batch, in arrival order; the forward passes
release the GIL, so the threads that submit (a web server's event loop, say) keep running.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Sequence

from ..errors import FastgateError
from .metrics import Histogram

__all__ = ["ServingClosedError", "Coalescer", "BATCH_BUCKETS"]

#: Upper bounds of the batch-size histogram buckets.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

_STOP = object()


class ServingClosedError(FastgateError, RuntimeError):
    """A request reached a :class:`~fastgate.serving.Batcher` or
    :class:`~fastgate.serving.Sessions` after :meth:`close`."""


def _check_limits(max_batch: Any, max_wait_ms: Any) -> tuple[int, float]:
    from ..errors import ConfigError

    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ConfigError(f"max_batch must be a positive integer, got {max_batch!r}")
    if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, (int, float)) \
            or not 0 <= max_wait_ms <= 60_000:
        raise ConfigError(f"max_wait_ms must be a number of milliseconds in [0, 60000], got "
                          f"{max_wait_ms!r}")
    return max_batch, float(max_wait_ms)


class Coalescer:
    """Collects submitted items into batches for ``run_batch`` on one worker thread.

    Parameters
    ----------
    run_batch : callable
        ``run_batch(items)`` returns one result per item, in order; a result that is an
        ``Exception`` instance fails that item's future only.
    max_batch : int
        The most items in one call.
    max_wait_ms : float
        How long the first item of a batch waits for others to join it.
    name : str
        The worker thread's name.
    """

    def __init__(self, run_batch: Callable[[list[Any]], Sequence[Any]], *, max_batch: int,
                 max_wait_ms: float, name: str) -> None:
        self.max_batch, self.max_wait_ms = _check_limits(max_batch, max_wait_ms)
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        self._run_batch = run_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._submit_lock = threading.Lock()
        self._worker = threading.Thread(target=self._work, name=name, daemon=True)
        self._worker.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, item: Any) -> Future:
        """Queue ``item``; the future gets its result (or exception)."""
        future: Future = Future()
        self._put(item, future)
        return future

    def submit_async(self, item: Any) -> asyncio.Future:
        """Queue ``item`` from a coroutine; an :class:`asyncio.Future` of the running loop
        gets its result. The worker answers all of a batch's futures of one loop in one
        ``call_soon_threadsafe`` (one wake-up of the loop per batch, not per request)."""
        future = asyncio.get_running_loop().create_future()
        self._put(item, future)
        return future

    def _put(self, item: Any, future: Future | asyncio.Future) -> None:
        with self._submit_lock:   # nothing slips in behind the stop marker
            if self._closed:
                raise ServingClosedError("the batcher is closed: it takes no more requests")
            self._queue.put((item, future))

    def close(self, timeout: float | None = None) -> None:
        """Take no more items, run the ones queued, and stop the worker (idempotent)."""
        with self._submit_lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        if self._worker is not threading.current_thread():
            self._worker.join(timeout)

    def _collect(self, first: Any) -> tuple[list[tuple[Any, Future]], bool]:
        """The batch that ``first`` opens, and whether the stop marker was seen."""
        batch = [first]
        deadline = time.monotonic() + self.max_wait_ms / 1000.0
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                entry = (self._queue.get(timeout=remaining) if remaining > 0
                         else self._queue.get_nowait())
            except queue.Empty:
                break
            if entry is _STOP:
                return batch, True
            batch.append(entry)
        return batch, False

    def _work(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stopping = self._collect(first)
            self._run(batch)
        # items queued behind the stop marker cannot exist (submit checks under the lock),
        # but a batch cut short by it still ran above

    def _run(self, batch: list[tuple[Any, Future | asyncio.Future]]) -> None:
        live = [(item, future) for item, future in batch
                if (not future.cancelled() if isinstance(future, asyncio.Future)
                    else future.set_running_or_notify_cancel())]
        if not live:
            return
        self.batch_sizes.observe(len(live))
        try:
            results = self._run_batch([item for item, _ in live])
        except BaseException as error:   # a bug in run_batch fails the batch, not the worker
            results = [error] * len(live)
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for (_, future), result in zip(live, results):
            if isinstance(future, asyncio.Future):
                by_loop.setdefault(future.get_loop(), []).append((future, result))
            elif isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        for loop, answers in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, answers)
            except RuntimeError:   # the loop is closed: nobody awaits these any more
                pass


def _deliver(answers: list[tuple[asyncio.Future, Any]]) -> None:
    """Set the results of asyncio futures, in their loop's thread (skipping cancelled ones)."""
    for future, result in answers:
        if future.done():
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
