"""Which threads of this process used the CPU, and when: the benchmarks' thread checks.

Two questions a benchmark of multi-threaded engines has to answer, read from the per-thread
CPU time Linux keeps in ``/proc/self/task/<tid>/schedstat`` (nanoseconds; ``stat``'s
``utime + stime`` in clock ticks where schedstat is missing):

* did "1 thread" run on one thread? :class:`CpuWatch` counts the threads that were busy
  during a timed block (:attr:`CpuWatch.busy_threads`) and the process's CPU time per
  wall-clock second (:attr:`CpuWatch.cpu_per_wall`, above 1 only if threads ran at once);
* has the previous engine's pool stopped spinning? ONNX Runtime's and OpenMP's worker threads
  keep spinning for a while after a call returns (waiting for more work), taking a core from
  whatever runs next. :func:`spin_after` measures how long; :func:`wait_until_quiet` waits
  until no other thread of the process uses the CPU before the next engine is timed.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

#: Seconds to pause before each timed block. Measured with `python bench/measure_spin.py`
#: and the bench's own ``spin_after`` (2 threads, Zen 4, on a machine shared with load 7-10,
#: which stretches every figure): after a call returns, fastgate's OpenMP threads stay busy
#: 13-38 ms, torch's 11-57 ms, SciPy's OpenBLAS 92-101 ms (its threads' timeout, 2^28 cycles),
#: ORT's 23-270 ms (once 630). The pause covers the common case; wait_until_quiet then waits
#: out the rest, until the process's other threads are idle.
PAUSE = 0.1

_TASKS = "/proc/self/task"
_TICK = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def _task_seconds(tid: str) -> float | None:
    try:
        with open(f"{_TASKS}/{tid}/schedstat") as handle:
            return int(handle.read().split()[0]) * 1e-9
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"{_TASKS}/{tid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * _TICK  # utime, stime
    except (OSError, ValueError, IndexError):
        return None  # the thread ended between listdir and open


def thread_cpu_seconds() -> dict[int, float]:
    """CPU seconds used so far by each live thread of this process, by native thread id
    (empty where ``/proc`` is missing)."""
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        return {}
    seconds = {}
    for tid in tids:
        value = _task_seconds(tid)
        if value is not None:
            seconds[int(tid)] = value
    return seconds


def _others_seconds(before: dict[int, float], after: dict[int, float], me: int) -> float:
    return sum(after[t] - before.get(t, 0.0) for t in after if t != me)


class CpuWatch:
    """Context manager: wall time, process CPU time and per-thread CPU time of a block.

    >>> with CpuWatch() as watch:
    ...     run()
    >>> watch.busy_threads, watch.cpu_per_wall
    """

    #: A thread counts as busy if it used at least this fraction of the block's wall time.
    BUSY_FRACTION = 0.05

    def __enter__(self) -> "CpuWatch":
        self._threads = thread_cpu_seconds()
        self._cpu = time.process_time()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        after = thread_cpu_seconds()
        self.per_thread = {tid: after[tid] - self._threads.get(tid, 0.0) for tid in after}

    def cpu_now(self) -> float:
        """Process CPU seconds since the block began (inside the block)."""
        return time.process_time() - self._cpu

    @property
    def cpu_per_wall(self) -> float:
        """Process CPU seconds per wall-clock second of the block (threads in parallel)."""
        return self.cpu / self.wall if self.wall > 0 else 0.0

    @property
    def busy_threads(self) -> int:
        """How many threads used at least :attr:`BUSY_FRACTION` of the block's wall time."""
        return sum(seconds >= self.BUSY_FRACTION * self.wall
                   for seconds in self.per_thread.values())

    def summary(self) -> dict:
        """The numbers a benchmark records in its ``extra_info``."""
        return {"cpu_per_wall": round(self.cpu_per_wall, 3), "busy_threads": self.busy_threads,
                "thread_cpu_fractions": sorted(
                    (round(s / self.wall, 3) for s in self.per_thread.values()
                     if s >= 0.01 * self.wall), reverse=True)}


def until_quiet(window: float = 0.005, limit: float = 2.0,
                idle_fraction: float = 0.05) -> float:
    """Seconds until the other threads of this process used under ``idle_fraction`` of a
    core during a ``window`` (the end of that window; ``limit`` if they never did)."""
    me = threading.get_native_id()
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        before = thread_cpu_seconds()
        time.sleep(window)
        if _others_seconds(before, thread_cpu_seconds(), me) < idle_fraction * window:
            break
    return time.perf_counter() - start


def wait_until_quiet(pause: float, window: float = 0.01, limit: float = 2.0) -> float:
    """Sleep ``pause`` seconds, then :func:`until_quiet` (at most ``limit`` seconds in all).

    Returns the seconds waited (``pause`` or more; ``limit`` means they never went quiet).
    """
    start = time.perf_counter()
    time.sleep(pause)
    until_quiet(window, max(0.0, limit - pause))
    return time.perf_counter() - start


def spin_after(call: Callable[[], object], horizon: float = 1.0,
               interval: float = 0.002) -> float:
    """Seconds after ``call()`` returns during which another thread of this process still
    used the CPU (sampled every ``interval`` for ``horizon`` seconds): how long its worker
    pool spins. 0 if no other thread ran once the call had returned."""
    me = threading.get_native_id()
    call()
    end = time.perf_counter()
    last_busy = end
    previous = thread_cpu_seconds()
    while time.perf_counter() - end < horizon:
        time.sleep(interval)
        current = thread_cpu_seconds()
        if _others_seconds(previous, current, me) > 0.1 * interval:
            last_busy = time.perf_counter()
        previous = current
    return last_busy - end
