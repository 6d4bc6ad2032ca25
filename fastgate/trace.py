"""Gate introspection: what every gate of a recurrent layer computed, at every step.

The tutorials compute each gate by hand to plot its distribution (``plt.hist(i, bins=20)``);
fastgate's kernels have the equations, so they write the gates out in the same pass::

    tr = layer.trace(x)                  # same arguments as layer(x, state, lengths)
    tr = model.trace(x)                  # every recurrent layer of a loaded model, in order
    e = tr.layers[0]
    e.name, e.cell, e.layer, e.direction # e.g. "lstm", "lstm", 0, "forward"
    e.gates["forget"]                    # (B, T, H): batch-major, by INPUT time step
    e.valid                              # (B, T) bool: the steps this direction processed
    counts, edges = tr.histogram("forget", bins=20)
    print(tr.summary())
    tr.plot("gates.png")                 # needs matplotlib: pip install "fastgate[plot]"

Gates are the values after each gate's activation, exactly what the cell used: LSTM
``input, forget, cell`` (the candidate g) ``, output`` and the states ``c`` and ``h``; GRU
``reset, update, candidate`` (n) and ``h``; SimpleRNN ``h``. ``h`` is the step's output
(after the projection of a projected LSTM). Steps a direction did not process (past a
sequence's length, Keras-masked steps) are NaN and ``valid`` is False there; the reverse
direction's value at ``t`` is the one it computed reading ``x_t``.

How: a traced call is the layer's own call (the compiled kernels, or the oracle under the
python backend) with a :class:`Recorder` active. Each recurrent layer call then allocates a
trace per layer and direction, ``(T, B, trace_width)`` rows (:func:`trace_columns` names the
columns), which the kernel fills in the pass that computes the step. A trace holds
``B * T * (G + 2) * H`` values per layer and direction; above ``max_bytes`` (1 GiB by
default) the call is refused with a :class:`~fastgate.errors.ConfigError` before anything
is allocated.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import ConfigError

__all__ = ["Trace", "TraceEntry", "Recorder", "trace_columns", "GATE_NAMES",
           "DEFAULT_MAX_BYTES"]

#: A trace's size limit unless the call gives ``max_bytes``: 1 GiB.
DEFAULT_MAX_BYTES = 1 << 30

#: The traced values of each cell family, in the order of a trace row's columns.
GATE_NAMES = {
    "lstm": ("input", "forget", "cell", "output", "c", "h"),
    "gru": ("reset", "update", "candidate", "h"),
    "rnn": ("h",),
}

#: Which activation each gate went through: the layer's ``recurrent_activation`` (rec) or
#: ``activation`` (act). States (c, and h but for SimpleRNN's) went through none of their own.
_GATE_ACTIVATION = {
    "lstm": {"input": "rec", "forget": "rec", "cell": "act", "output": "rec"},
    "gru": {"reset": "rec", "update": "rec", "candidate": "act"},
    "rnn": {"h": "act"},
}

#: Activations with values in [0, 1] (saturated: < 0.05 or > 0.95) and in [-1, 1]
#: (saturated: |v| > 0.95); the others have no saturation.
_UNIT_RANGE = {"sigmoid", "hard_sigmoid", "hard_sigmoid_keras2"}
_SYMMETRIC_RANGE = {"tanh", "softsign"}
SATURATION = 0.05


def trace_columns(cell: str, hidden: int, width: int) -> dict[str, slice]:
    """The columns of each traced value in a trace row of a ``cell`` layer (``hidden``
    units, ``width`` output columns: ``proj_size`` of a projected LSTM, else ``hidden``):
    the gates in the cell's order, ``H`` columns each, an LSTM's ``c``, then ``h``."""
    names = GATE_NAMES[cell]
    columns, start = {}, 0
    for name in names:
        size = width if name == "h" else hidden
        columns[name] = slice(start, start + size)
        start += size
    return columns


def trace_width(cell: str, hidden: int, width: int) -> int:
    """The columns of a trace row (see :func:`trace_columns`)."""
    return list(trace_columns(cell, hidden, width).values())[-1].stop


def _saturation_bounds(activation: str | None) -> tuple[float, float] | None:
    """``(low, high)``: values outside are saturated; None for an unbounded activation."""
    if activation in _UNIT_RANGE:
        return SATURATION, 1 - SATURATION
    if activation in _SYMMETRIC_RANGE:
        return -1 + SATURATION, 1 - SATURATION
    return None


class TraceEntry:
    """One layer and direction of a :class:`Trace`.

    Attributes
    ----------
    name : str
        The layer's name (a model's node name; a layer's own class name, e.g. ``"lstm"``).
    cell : str
        ``"lstm"``, ``"gru"`` or ``"rnn"``.
    layer : int
        The layer's index in its stack (0 for one layer).
    direction : str
        ``"forward"`` or ``"reverse"``.
    gates : dict of str to ndarray
        ``(B, T, H)`` per traced value (:data:`GATE_NAMES`), batch-major, by input step;
        NaN where ``valid`` is False.
    valid : ndarray of bool
        ``(B, T)``: the steps this direction processed.
    activations : dict of str to str
        The activation each gate went through (its saturation depends on it).
    """

    def __init__(self, name: str, cell: str, layer: int, direction: str,
                 gates: dict[str, np.ndarray], valid: np.ndarray,
                 activations: dict[str, str]) -> None:
        self.name = name
        self.cell = cell
        self.layer = int(layer)
        self.direction = direction
        self.gates = gates
        self.valid = valid
        self.activations = activations

    @property
    def label(self) -> str:
        """``"<name> layer <k> <direction>"``, as the plots title it."""
        return f"{self.name} layer {self.layer} {self.direction}"

    def values(self, gate: str) -> np.ndarray:
        """The valid values of ``gate``, ``(valid steps, H)``: each once."""
        return self.gates[gate][self.valid]

    def saturation(self, gate: str) -> np.ndarray | None:
        """Per unit, the share of valid steps where ``gate`` is saturated (``(H,)``), or
        None if its activation is unbounded (or it is a state)."""
        bounds = _saturation_bounds(self.activations.get(gate))
        if bounds is None:
            return None
        values = self.values(gate)
        if values.shape[0] == 0:
            return np.zeros(values.shape[1])
        return np.mean((values < bounds[0]) | (values > bounds[1]), axis=0)

    def __repr__(self) -> str:
        batch, steps = self.valid.shape
        hidden = next(iter(self.gates.values())).shape[-1]
        return (f"TraceEntry({self.name!r}, cell={self.cell!r}, layer={self.layer}, "
                f"direction={self.direction!r}, B={batch}, T={steps}, H={hidden}, "
                f"gates={list(self.gates)})")


class Trace:
    """The gates of every traced layer and direction (:attr:`layers`), in call order.

    Built by ``layer.trace(x)``, ``cell.trace(x)``, ``model.trace(x)`` (see the module
    docstring); :meth:`load` reads one written by :meth:`save`.
    """

    def __init__(self, layers: Sequence[TraceEntry]) -> None:
        self.layers = list(layers)

    @property
    def nbytes(self) -> int:
        """Bytes the traced values hold."""
        seen, total = set(), 0
        for entry in self.layers:
            for values in entry.gates.values():
                base = values.base if values.base is not None else values
                if id(base) not in seen:
                    seen.add(id(base))
                    total += base.nbytes
        return total

    def __repr__(self) -> str:
        entries = ", ".join(f"{e.name}[{e.layer}] {e.direction}" for e in self.layers)
        return f"Trace({len(self.layers)} layers x directions: {entries})"

    def _entries(self, layer: Any) -> list[TraceEntry]:
        """The entries ``layer`` selects: all (None), ``layers[k]`` (an int), those of a
        name (a str), or a :class:`TraceEntry`."""
        if layer is None:
            return self.layers
        if isinstance(layer, TraceEntry):
            return [layer]
        if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
            if not -len(self.layers) <= layer < len(self.layers):
                raise ConfigError(f"layer {layer} is out of range: the trace has "
                                  f"{len(self.layers)} entries")
            return [self.layers[layer]]
        chosen = [e for e in self.layers if e.name == layer]
        if not chosen:
            raise ConfigError(f"no traced layer is named {layer!r}; the trace has "
                              f"{sorted({e.name for e in self.layers})}")
        return chosen

    def histogram(self, gate: str, bins: int | Sequence[float] = 20,
                  range: tuple[float, float] | None = None, layer: Any = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """``(counts, edges)`` of ``gate``'s valid values (``np.histogram``), over every
        entry that has it, or those ``layer`` selects (an index into :attr:`layers`, a
        name, or an entry). Each valid value counts once; masked steps not at all."""
        entries = [e for e in self._entries(layer) if gate in e.gates]
        if not entries:
            names = sorted({g for e in self._entries(layer) for g in e.gates})
            raise ConfigError(f"no traced layer has a gate {gate!r}; the gates are {names}")
        values = np.concatenate([e.values(gate).ravel() for e in entries])
        return np.histogram(values, bins=bins, range=range)

    def summary(self) -> str:
        """A text table per layer and gate: mean, standard deviation and the share of
        saturated values (sigmoid-like gates: < 0.05 or > 0.95; tanh-like: |v| > 0.95),
        then each layer's most saturated units."""
        lines = []
        for entry in self.layers:
            steps = int(entry.valid.sum())
            lines.append(f"{entry.label} ({entry.cell}, {steps} valid steps of "
                         f"{entry.valid.size})")
            lines.append(f"  {'gate':<10} {'mean':>9} {'std':>9} {'saturated':>10}")
            worst = []
            for gate in entry.gates:
                values = entry.values(gate)
                share = entry.saturation(gate)
                mean = float(np.mean(values)) if values.size else float("nan")
                std = float(np.std(values)) if values.size else float("nan")
                shown = "-" if share is None else f"{100 * float(np.mean(share)):9.1f}%"
                lines.append(f"  {gate:<10} {mean:9.4f} {std:9.4f} {shown:>10}")
                if share is not None and share.size:
                    worst += [(float(share[u]), gate, int(u)) for u in np.argsort(-share)[:3]]
            worst = sorted(worst, reverse=True)[:5]
            if worst and worst[0][0] > 0:
                units = ", ".join(f"{gate}[{unit}] {100 * share:.0f}%"
                                  for share, gate, unit in worst if share > 0)
                lines.append(f"  most saturated units: {units}")
        return "\n".join(lines)

    def plot(self, path: Any, *, sequence: int = 0, bins: int = 20,
             gates: Sequence[str] | None = None, dpi: int = 80) -> None:
        """Write a PNG: per gate (rows) and layer/direction, a histogram of its valid values
        titled like the tutorials ("Distribution of Forget Gate Values"), next to a heatmap
        of its units over time for sequence ``sequence``. Needs matplotlib (``pip install
        "fastgate[plot]"``)."""
        from ._trace_plot import plot_trace

        plot_trace(self, path, sequence=sequence, bins=bins, gates=gates, dpi=dpi)

    # ------------------------------------------------------------------ files
    def save(self, path: Any) -> None:
        """Write the trace as a ``.npz`` (NumPy only): ``<k>/<gate>`` and ``<k>/valid`` per
        entry ``k``, and ``meta`` (JSON); :meth:`load` reads it back."""
        arrays: dict[str, np.ndarray] = {}
        meta = []
        for k, entry in enumerate(self.layers):
            meta.append({"name": entry.name, "cell": entry.cell, "layer": entry.layer,
                         "direction": entry.direction, "gates": list(entry.gates),
                         "activations": entry.activations})
            arrays[f"{k}/valid"] = entry.valid
            for gate, values in entry.gates.items():
                arrays[f"{k}/{gate}"] = values
        arrays["meta"] = np.array(json.dumps(meta))
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: Any) -> "Trace":
        """A trace written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            entries = [TraceEntry(m["name"], m["cell"], m["layer"], m["direction"],
                                  {g: data[f"{k}/{g}"] for g in m["gates"]},
                                  data[f"{k}/valid"], m["activations"])
                       for k, m in enumerate(meta)]
        return cls(entries)

    def to_hdf5(self, path: Any) -> None:
        """Write the states in the per-timestep layout LSTMVis reads (``states.h5``): per
        entry and value a dataset ``<name>_l<layer>_<direction>/<gate>`` of shape
        ``(B * T, H)``, row ``b * T + t`` (the sequences one after the other), masked steps
        0; ``valid``, ``sequence`` and ``step`` (``(B * T,)``) say which row is which. Needs
        h5py."""
        import h5py

        with h5py.File(path, "w") as file:
            for entry in self.layers:
                group = file.require_group(f"{entry.name}_l{entry.layer}_{entry.direction}")
                for gate, values in entry.gates.items():
                    rows = values.reshape(-1, values.shape[-1])
                    group.create_dataset(gate, data=np.where(np.isnan(rows), 0, rows))
                group.create_dataset("valid", data=entry.valid.reshape(-1))
            if self.layers:
                batch, steps = self.layers[0].valid.shape
                file.create_dataset("sequence", data=np.repeat(np.arange(batch), steps))
                file.create_dataset("step", data=np.tile(np.arange(steps), batch))


# ---------------------------------------------------------------------------- recording
# A traced call is the layer's own call with a Recorder active in the calling thread: the
# layers ask it for trace buffers (RecurrentLayer.forward) and it keeps them. `recording`
# counts the active recorders of the process, so that an untraced call checks one integer.
recording = 0
_local = threading.local()
_lock = threading.Lock()


class _Record:
    """One recurrent layer call: its traces (one per layer and direction), as allocated."""

    __slots__ = ("layer", "traces", "batch_major", "mask")

    def __init__(self, layer: Any, traces: list[np.ndarray], batch_major: bool,
                 mask: np.ndarray | None) -> None:
        self.layer, self.traces, self.batch_major, self.mask = layer, traces, batch_major, mask


class Recorder:
    """Collects the traces of the recurrent layer calls made in its ``with`` block (in this
    thread), refusing with :class:`~fastgate.errors.ConfigError` once they would hold more
    than ``max_bytes``."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) \
                or max_bytes < 0:
            raise ConfigError(f"max_bytes must be a non-negative integer, got {max_bytes!r}")
        self.max_bytes = int(max_bytes)
        self.records: list[_Record] = []
        self.nbytes = 0

    def __enter__(self) -> "Recorder":
        global recording
        if getattr(_local, "recorder", None) is not None:
            raise ConfigError("a trace is already being recorded in this thread")
        _local.recorder = self
        with _lock:
            recording += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        global recording
        _local.recorder = None
        with _lock:
            recording -= 1

    def allocate(self, layer: Any, steps: int, batch: int, batch_major: bool,
                 mask: np.ndarray | None, fill: float | None = None) -> list[np.ndarray]:
        """One trace buffer per layer and direction of ``layer`` for a call of this shape
        (``(T, B, width)``, ``(B, T, width)`` if ``batch_major``), kept for the result;
        ``fill``: their initial value (the kernel writes every entry, the oracle not)."""
        width = trace_width(layer.cell, layer.hidden_size, layer.output_size)
        entries = layer.num_layers * layer.num_directions
        size = entries * steps * batch * width * layer.dtype.itemsize
        if self.nbytes + size > self.max_bytes:
            raise ConfigError(
                f"tracing {type(layer).__name__} needs {_size(size)} ({entries} layers x "
                f"directions x B={batch} x T={steps} x {width} values of {layer.dtype.name}"
                + (f", after {_size(self.nbytes)} for earlier layers" if self.nbytes else "")
                + f"), more than max_bytes={_size(self.max_bytes)}: trace fewer sequences "
                f"(sequences=slice(0, {max(1, batch // 8)})) or a time window (x[:, :"
                f"{max(1, steps // 8)}]), or raise max_bytes")
        shape = (batch, steps, width) if batch_major else (steps, batch, width)
        traces = [np.empty(shape, layer.dtype) if fill is None
                  else np.full(shape, fill, layer.dtype) for _ in range(entries)]
        self.nbytes += size
        self.records.append(_Record(layer, traces, batch_major, mask))
        return traces

    def entries(self, label: Any) -> list[TraceEntry]:
        """The recorded calls as :class:`TraceEntry` objects; ``label(layer)`` gives
        ``(name, layer offset, direction or None, reorder)`` of a recorded layer:
        ``reorder(rows, valid)`` maps its (B, T, ...) arrays from reading order to input
        order (None: they are in input order); see :func:`layer_labels`."""
        result = []
        for record in self.records:
            result.extend(_record_entries(record, *label(record.layer)))
        return result


def current_recorder() -> Recorder | None:
    """The recorder active in this thread, if any."""
    return getattr(_local, "recorder", None) if recording else None


def _size(nbytes: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def _record_entries(record: _Record, name: str, layer_offset: int, direction: str | None,
                    reorder: Any) -> Iterator[TraceEntry]:
    """The entries of one recorded call: per layer and direction, views of its trace."""
    layer = record.layer
    columns = trace_columns(layer.cell, layer.hidden_size, layer.output_size)
    kinds = _GATE_ACTIVATION[layer.cell]
    activations = {gate: layer.recurrent_activation if kind == "rec" else layer.activation
                   for gate, kind in kinds.items()}
    for k, trace in enumerate(record.traces):
        rows = trace if record.batch_major else trace.transpose(1, 0, 2)   # (B, T, width)
        batch, steps = rows.shape[:2]
        valid = (np.ones((batch, steps), bool) if record.mask is None
                 else np.ascontiguousarray(np.asarray(record.mask, bool).T))
        if reorder is not None:
            rows, valid = reorder(rows, valid)
        gates = {gate: rows[..., where] for gate, where in columns.items()}
        own_direction = "reverse" if k % layer.num_directions else "forward"
        yield TraceEntry(name, layer.cell, layer_offset + k // layer.num_directions,
                         direction or own_direction, gates, valid, activations)


def layer_labels(named_ops: Iterator[tuple[str, Any]]) -> Any:
    """``label(layer)`` for :meth:`Recorder.entries` from a model's ``(name, op)`` pairs:
    the name of the op that holds the layer, its index in the op's stack, and for an op that
    reads its sequence backwards (Keras ``go_backwards``, the backward half of
    ``Bidirectional``, an ONNX reverse direction run by a layer of its own) direction
    "reverse" and the map from reading order back to input order."""
    table: dict[int, tuple] = {}
    for name, op in named_ops:
        _label_op(table, name, op)

    def label(layer: Any) -> tuple:
        return table.get(id(layer), (type(layer).__name__.lower(), 0, None, None))

    return label


def _label_op(table: dict[int, tuple], name: str, op: Any) -> None:
    kind = type(op).__name__
    if kind == "Recurrent":
        table.setdefault(id(op.layer), (name, 0, "reverse", _flip_steps) if op.go_backwards
                         else (name, 0, None, None))
    elif kind == "Bidirectional":
        _label_op(table, name, op.forward)
        _label_op(table, name, op.backward)
    elif kind == "StackedRecurrent":
        for position, cell in enumerate(op.layers):
            table.setdefault(id(cell.layer), (name, position, "reverse", _flip_steps)
                             if op.go_backwards else (name, position, None, None))
    elif kind == "OnnxOp":   # an ONNX node: its function computes it
        _label_op(table, name, op.function)
    elif kind == "OnnxRecurrent":
        for layer, reverse in op.layers:
            table.setdefault(id(layer), (name, 0, "reverse", _reverse_valid_steps) if reverse
                             else (name, 0, None, None))


def _flip_steps(rows: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Steps read last to first (Keras go_backwards) back in input order."""
    return rows[:, ::-1], valid[:, ::-1]


def _reverse_valid_steps(rows: np.ndarray, valid: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Each sequence's valid steps (a prefix) read last to first (ONNX reverse) back in
    input order; the padding after them stays."""
    steps = valid.shape[1]
    lengths = valid.sum(axis=1)[:, None]
    t = np.arange(steps)[None, :]
    source = np.where(t < lengths, lengths - 1 - t, t)
    batch = np.arange(valid.shape[0])[:, None]
    return rows[batch, source], valid[batch, source]


def column_views(trace: np.ndarray, cell: str, hidden: int, width: int, batch_major: bool
                 ) -> dict[str, np.ndarray]:
    """``{gate: (T, B, columns) view}`` of a trace buffer (the oracle's ``trace``)."""
    rows = trace.transpose(1, 0, 2) if batch_major else trace
    return {gate: rows[..., where]
            for gate, where in trace_columns(cell, hidden, width).items()}


def select_sequences(count: int, sequences: Any) -> np.ndarray:
    """The batch rows ``sequences`` (an index, a slice, a list or a bool mask) picks."""
    rows = np.arange(count)[sequences]
    return np.atleast_1d(rows)
