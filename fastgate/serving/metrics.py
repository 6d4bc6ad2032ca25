"""Counters and histograms for the Prometheus text format (version 0.0.4), with no
dependency: what ``GET /metrics`` of ``fastgate serve`` shows.

Each metric is thread-safe; :func:`render` writes a family of them as text.
"""

from __future__ import annotations

import bisect
import math
import threading
from typing import Iterable, Mapping, Sequence

__all__ = ["Histogram", "Counter", "render_counter", "render_histogram", "LATENCY_BUCKETS"]

#: Upper bounds (seconds) of the request-latency histogram buckets.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)


class Histogram:
    """Observations counted into buckets ``value <= bound`` (cumulative on output)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError(f"histogram bounds must increase, got {bounds}")
        self._counts = [0] * (len(self.bounds) + 1)   # the last one is +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.bounds, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def snapshot(self) -> tuple[list[tuple[float, int]], float, int]:
        """``([(bound, cumulative count), ...], sum, count)``, ``bound`` ending with inf."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for bound, count in zip(self.bounds + (math.inf,), counts):
            running += count
            cumulative.append((bound, running))
        return cumulative, total, running

    @property
    def count(self) -> int:
        return self.snapshot()[2]

    def __repr__(self) -> str:
        buckets, total, count = self.snapshot()
        return f"Histogram(count={count}, sum={total:g}, bounds={self.bounds})"


class Counter:
    """Counts per label set (a tuple of label values)."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, labels: tuple[str, ...] = (), amount: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def items(self) -> list[tuple[tuple[str, ...], float]]:
        with self._lock:
            return sorted(self._values.items())

    def __repr__(self) -> str:
        return f"Counter({dict(self.items())})"


def _label_text(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    parts = [f'{name}="{escape(str(value))}"' for name, value in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return repr(int(value)) if float(value).is_integer() else repr(float(value))


def render_counter(name: str, help_text: str, counter: Counter,
                   label_names: Sequence[str] = ()) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
    for values, amount in counter.items():
        lines.append(f"{name}{_label_text(label_names, values)} {_number(amount)}")
    return lines


def render_histogram(name: str, help_text: str,
                     histograms: Iterable[tuple[Mapping[str, str], Histogram]]) -> list[str]:
    """The lines of one histogram family: one :class:`Histogram` per label set."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    for labels, histogram in histograms:
        names, values = list(labels), [labels[k] for k in labels]
        buckets, total, count = histogram.snapshot()
        for bound, cumulative in buckets:
            le = 'le="' + _number(bound) + '"'
            lines.append(f"{name}_bucket{_label_text(names, values, le)} {cumulative}")
        lines.append(f"{name}_sum{_label_text(names, values)} {_number(total)}")
        lines.append(f"{name}_count{_label_text(names, values)} {count}")
    return lines
