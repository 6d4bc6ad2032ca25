"""The picture of a :class:`fastgate.trace.Trace` (:meth:`~fastgate.trace.Trace.plot`).

Imported only when a plot is asked for: matplotlib is an optional extra (``pip install
"fastgate[plot]"``). It draws on an Agg canvas of its own (no pyplot, no global state).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .errors import ConfigError

#: Panel size in inches (width, height).
PANEL = (4.2, 2.9)

#: Words for the traced values (fastgate.trace.GATE_NAMES) in titles.
GATE_LABELS = {
    "input": "Input Gate", "forget": "Forget Gate", "cell": "Cell Candidate (g)",
    "output": "Output Gate", "c": "Cell State (c)", "h": "Hidden State (h)",
    "reset": "Reset Gate", "update": "Update Gate", "candidate": "Candidate (n)",
}


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError('Trace.plot needs matplotlib, an optional extra: '
                          'pip install "fastgate[plot]"', name="matplotlib") from error
    return Figure, FigureCanvasAgg


def plot_trace(trace: Any, path: Any, *, sequence: int = 0, bins: int = 20,
               gates: Sequence[str] | None = None, dpi: int = 80) -> None:
    """Write ``trace`` as a PNG at ``path``: one row per gate, and per layer/direction a
    histogram of the gate's valid values and a heatmap of its units over the steps of
    ``sequence``."""
    Figure, FigureCanvasAgg = _matplotlib()
    entries = trace.layers
    if not entries:
        raise ConfigError("the trace is empty: nothing to plot")
    names = list(dict.fromkeys(g for e in entries for g in e.gates))
    if gates is not None:
        unknown = [g for g in gates if g not in names]
        if unknown:
            raise ConfigError(f"unknown gates {unknown}; the trace has {names}")
        names = list(gates)
    batch = entries[0].valid.shape[0]
    if not 0 <= sequence < batch:
        raise ConfigError(f"sequence {sequence} is out of range: the trace has {batch}")
    rows, columns = len(names), 2 * len(entries)
    figure = Figure(figsize=(PANEL[0] * columns, PANEL[1] * rows), layout="constrained")
    FigureCanvasAgg(figure)
    for row, gate in enumerate(names):
        for k, entry in enumerate(entries):
            histogram = figure.add_subplot(rows, columns, row * columns + 2 * k + 1)
            heatmap = figure.add_subplot(rows, columns, row * columns + 2 * k + 2)
            if gate not in entry.gates:
                for axes in (histogram, heatmap):
                    axes.set_axis_off()
                continue
            _histogram(histogram, entry, gate, bins)
            _heatmap(figure, heatmap, entry, gate, sequence)
    figure.savefig(path, dpi=dpi, format="png")


def _histogram(axes: Any, entry: Any, gate: str, bins: int) -> None:
    values = entry.values(gate).ravel()
    axes.hist(values, bins=bins, color="tab:blue", edgecolor="white", linewidth=0.5)
    axes.set_title(f"Distribution of {GATE_LABELS[gate]} Values\n{entry.label}",
                   fontsize=9)
    axes.set_xlabel(f"{gate} value", fontsize=8)
    axes.set_ylabel("count (unit x step)", fontsize=8)
    axes.tick_params(labelsize=7)


def _heatmap(figure: Any, axes: Any, entry: Any, gate: str, sequence: int) -> None:
    values = entry.gates[gate][sequence].T          # (H, T): units over the steps
    image = axes.imshow(values, aspect="auto", interpolation="nearest", cmap="viridis",
                        origin="lower")
    axes.set_title(f"{GATE_LABELS[gate]}, sequence {sequence}\n{entry.label}", fontsize=9)
    axes.set_xlabel("input step t", fontsize=8)
    axes.set_ylabel("unit", fontsize=8)
    axes.tick_params(labelsize=7)
    figure.colorbar(image, ax=axes).ax.tick_params(labelsize=7)
