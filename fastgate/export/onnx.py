"""fastgate models as standard ONNX graphs: :func:`to_onnx`.

::

    model = fastgate.load("model.keras")
    model.to_onnx("model.onnx")                    # any runtime: onnxruntime, ...
    fastgate.LSTM.random(8, 16).to_onnx("lstm.onnx", initial_state=True, lengths=True)

The graph uses the ONNX recurrent ops (``LSTM``, ``GRU``, ``RNN``, gate orders of
:data:`fastgate.layout.GATE_ORDERS` ``["onnx"]``, time-major ``layout=0`` as ONNX Runtime
requires) and plain tensor ops around them; batch and time axes are dynamic. It is written by
:mod:`fastgate.export.protobuf`, without the ``onnx`` package.

What each object becomes:

* a layer (:class:`~fastgate.LSTM`, ...): inputs ``x`` (``(T, B, D)``, ``(B, T, D)`` if
  ``batch_first``), optionally ``h0`` (and ``c0``) and ``lengths`` (int64 ``(B,)``, PyTorch's
  packed sequences = ONNX ``sequence_lens``; a length of 0 keeps the initial state, as the
  layer's ``lengths=``); outputs ``output``, ``h_n`` (and ``c_n``), as the layer returns
  them. Stacked layers are chained ops with a Squeeze or Transpose/Reshape between;
* a cell: inputs ``x``, ``h`` (and ``c``); outputs ``h_next`` (and ``c_next``);
* a :class:`~fastgate.Model` (and Dense, Embedding, ... on their own): input ``input`` (int64
  token ids when an Embedding reads it), one output per model output, named after its node.
  Keras' masks (``Embedding(mask_zero=True)``, ``Masking``) are exact for any mask: the valid
  steps of each sequence are gathered to its front (``TopK`` of the mask, stable), run with
  ``sequence_lens``, and gathered back to where Keras puts them (the previous output repeated
  at a masked step, or zeros with ``zero_output_for_mask``). The ops of
  :mod:`fastgate.sequence_ops` become ONNX ``Conv``, ``MaxPool``, ``AveragePool`` (on
  ``(B, C, T)``; TensorFlow's "same" is ``SAME_UPPER``) and plain tensor ops.

What ONNX cannot express raises :class:`~fastgate.errors.UnsupportedLayerError` naming the
layer: projected LSTMs (``proj_size``), recurrent activations outside the ONNX list (SELU,
exponential, SiLU, GELU), Keras ``stateful`` layers. float64 layers give float64 graphs
(valid ONNX; ONNX Runtime has no float64 LSTM/GRU/RNN on CPU, ``onnx.reference`` runs them).
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Sequence

import numpy as np

from .._version import __version__
from ..activations import PARAMETRIC_ACTIVATIONS, activation_parameters
from ..cells import _Cell
from ..errors import ConfigError, UnsupportedLayerError
from ..layers import RecurrentLayer
from ..layout import reorder_gates
from ..model import MODEL_INPUT, Model, Node
from ..ops import (Activation, Bidirectional, Dense, Embedding, Flatten, GlobalPooling1D,
                   Masking, Recurrent, RepeatVector)
from .. import sequence_ops
from . import protobuf

__all__ = ["to_onnx", "to_onnx_bytes", "OPSETS"]

#: The opsets fastgate writes, and the IR version each needs (the oldest that has it).
OPSETS = {14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10, 22: 10}

_OP_TYPES = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}

#: Activations of the ONNX recurrent ops: fastgate name -> (ONNX name, alpha, beta).
#: HardSigmoid is alpha x + beta: Keras 3 / PyTorch x/6 + 1/2, Keras 2 0.2 x + 1/2.
_RECURRENT_ACTIVATIONS: dict[str, tuple[str, float | None, float | None]] = {
    "sigmoid": ("Sigmoid", None, None), "tanh": ("Tanh", None, None),
    "relu": ("Relu", None, None), "linear": ("Affine", 1.0, 0.0), "elu": ("Elu", 1.0, None),
    "softsign": ("Softsign", None, None), "softplus": ("Softplus", None, None),
    "hard_sigmoid": ("HardSigmoid", 1 / 6, 0.5),
    "hard_sigmoid_keras2": ("HardSigmoid", 0.2, 0.5),
}

#: Elementwise activations as ONNX ops (others are composed in :meth:`_Graph.activation`).
_ELEMENTWISE = {"tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "Relu", "elu": "Elu",
                "selu": "Selu", "softsign": "Softsign", "softplus": "Softplus",
                "exponential": "Exp"}

#: Protobuf's limit on the size of a message (a larger ONNX model needs external data).
_PROTOBUF_LIMIT = 2**31 - 1
_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min


class _Value(NamedTuple):
    """A tensor of the graph being written: its name, rank and dtype."""

    name: str
    rank: int
    dtype: np.dtype


class _Graph:
    """The nodes, initializers, inputs and outputs of the graph being written."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[bytes] = []
        self.initializers: list[bytes] = []
        self.inputs: list[bytes] = []
        self.outputs: list[bytes] = []
        self._used: set[str] = set()
        self._constants: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        """A name not used yet, from ``hint``."""
        name, count = hint, 1
        while name in self._used:
            name, count = f"{hint}_{count}", count + 1
        self._used.add(name)
        return name

    def constant(self, array: np.ndarray, hint: str) -> str:
        """An initializer holding ``array``; small ones are shared by value."""
        array = np.asarray(array)
        key = None
        if array.size <= 8:
            key = (array.dtype.str, array.shape, array.tobytes())
            if key in self._constants:
                return self._constants[key]
        name = self.fresh(hint)
        self.initializers.append(protobuf.tensor(name, array))
        if key is not None:
            self._constants[key] = name
        return name

    def ints(self, *values: int) -> str:
        """A 1-D int64 constant (axes, shapes, starts...)."""
        return self.constant(np.array(values, np.int64), "ints")

    def op(self, op_type: str, inputs: Sequence[str], hint: str, outputs: int = 1,
           **attributes: Any) -> list[str]:
        """Add a node; returns the names of its ``outputs`` outputs."""
        names = [self.fresh(f"{hint}_{k}" if outputs > 1 else hint) for k in range(outputs)]
        self.nodes.append(protobuf.node(op_type, inputs, names, self.fresh(f"{op_type}_node"),
                                        attributes))
        return names

    def one(self, op_type: str, inputs: Sequence[str], hint: str, **attributes: Any) -> str:
        return self.op(op_type, inputs, hint, **attributes)[0]

    def add_input(self, name: str, dtype: Any, shape: Sequence[int | str | None]) -> _Value:
        self._used.add(name)
        self.inputs.append(protobuf.value_info(name, np.dtype(dtype), shape))
        return _Value(name, len(shape), np.dtype(dtype))

    def add_output(self, value: _Value, name: str) -> None:
        name = self.fresh(name)
        self.nodes.append(protobuf.node("Identity", [value.name], [name],
                                        self.fresh("Identity_node"), {}))
        self.outputs.append(protobuf.value_info(name, value.dtype, [None] * value.rank))

    # ---------------------------------------------------------------- small compositions
    def squeeze(self, name: str, axis: int, hint: str) -> str:
        return self.one("Squeeze", [name, self.ints(axis)], hint)

    def unsqueeze(self, name: str, axis: int, hint: str) -> str:
        return self.one("Unsqueeze", [name, self.ints(axis)], hint)

    def transpose(self, name: str, perm: Sequence[int], hint: str) -> str:
        return self.one("Transpose", [name], hint, perm=list(perm))

    def reverse_time(self, name: str, axis: int, hint: str) -> str:
        """The steps along ``axis`` last to first (a Slice of step -1, any length)."""
        return self.one("Slice", [name, self.ints(-1), self.ints(_INT64_MIN), self.ints(axis),
                                  self.ints(-1)], hint)

    def reduce(self, op_type: str, name: str, axis: int | Sequence[int], keepdims: bool,
               hint: str) -> str:
        axes = [axis] if isinstance(axis, int) else list(axis)
        # ReduceSum takes its axes as an input from opset 13, the others from opset 18
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.one(op_type, [name, self.ints(*axes)], hint, keepdims=int(keepdims))
        return self.one(op_type, [name], hint, axes=axes, keepdims=int(keepdims))

    def dims(self, name: str, start: int, end: int | None, hint: str) -> str:
        """``Shape(name)[start:end]`` as a 1-D int64 tensor."""
        shape = self.one("Shape", [name], f"{hint}_shape")
        return self.one("Slice", [shape, self.ints(start), self.ints(
            _INT64_MAX if end is None else end), self.ints(0)], hint)

    def cast(self, value: _Value, dtype: Any) -> _Value:
        dtype = np.dtype(dtype)
        if value.dtype == dtype:
            return value
        return _Value(self.one("Cast", [value.name], "cast", to=protobuf.TENSOR_TYPES[dtype]),
                      value.rank, dtype)

    def activation(self, name: str, activation: str, dtype: np.dtype, where: str) -> str:
        """``activation`` (:mod:`fastgate.activations` name, or softmax/log_softmax over the
        last axis) applied to tensor ``name``."""
        if activation == "linear":
            return name
        if activation in ("softmax", "log_softmax"):
            op_type = "Softmax" if activation == "softmax" else "LogSoftmax"
            return self.one(op_type, [name], activation, axis=-1)
        if activation in _ELEMENTWISE:
            return self.one(_ELEMENTWISE[activation], [name], activation)
        if activation in ("hard_sigmoid", "hard_sigmoid_keras2"):
            alpha = 1 / 6 if activation == "hard_sigmoid" else 0.2
            return self.one("HardSigmoid", [name], activation, alpha=alpha, beta=0.5)
        if activation == "silu":
            return self.one("Mul", [name, self.one("Sigmoid", [name], "sigmoid")], "silu")
        if activation == "gelu":  # exact: x/2 (1 + erf(x / sqrt 2))
            scaled = self.one("Mul", [name, self.constant(np.array(1 / np.sqrt(2), dtype),
                                                          "inv_sqrt2")], "gelu_scaled")
            erf_plus_one = self.one("Add", [self.one("Erf", [scaled], "erf"),
                                            self.constant(np.array(1, dtype), "one")], "erf1")
            half = self.one("Mul", [name, self.constant(np.array(0.5, dtype), "half")], "half_x")
            return self.one("Mul", [half, erf_plus_one], "gelu")
        raise UnsupportedLayerError(f"activation {activation!r} has no ONNX equivalent",
                                    layer=where)

    def serialize(self, name: str, doc: str) -> bytes:
        body = protobuf.graph(name, self.nodes, self.initializers, self.inputs, self.outputs,
                              doc)
        if len(body) >= _PROTOBUF_LIMIT:
            raise ConfigError(f"the ONNX model would take {len(body) / 2**30:.1f} GiB; a "
                              f"protobuf message cannot exceed 2 GiB and fastgate does not "
                              f"write ONNX external data")
        return protobuf.model(body, ir_version=OPSETS[self.opset], opset=self.opset,
                              producer_name="fastgate", producer_version=__version__)


# -------------------------------------------------------------------- recurrent ops
class _RecurrentOutputs(NamedTuple):
    """Outputs of one ONNX LSTM/GRU/RNN op: ``Y`` ``(T, dirs, B, H)``, ``Y_h`` and ``Y_c``
    ``(dirs, B, H)`` (``Y_c`` is ``None`` but for an LSTM)."""

    y: str
    y_h: str
    y_c: str | None


#: fastgate's parametrised activations (fastgate.activations) as ONNX recurrent activations.
_PARAMETRISED_ACTIVATIONS = {"leaky_relu": "LeakyRelu", "thresholded_relu": "ThresholdedRelu",
                             "scaled_tanh": "ScaledTanh", "affine": "Affine",
                             "hard_sigmoid": "HardSigmoid", "elu": "Elu"}


def _onnx_activation(name: str, where: str) -> tuple[str, float | None, float | None]:
    """``(ONNX name, alpha, beta)`` of a fastgate activation inside a recurrent op."""
    if name in _RECURRENT_ACTIVATIONS:
        return _RECURRENT_ACTIVATIONS[name]
    base = name.partition("(")[0]
    if base in _PARAMETRISED_ACTIVATIONS and name != base:
        alpha, beta = activation_parameters(name)
        takes_beta = PARAMETRIC_ACTIVATIONS[base][1] == ("alpha", "beta")
        return _PARAMETRISED_ACTIVATIONS[base], alpha, (beta if takes_beta else None)
    raise UnsupportedLayerError(
        f"activation {name!r} inside a recurrent cell has no ONNX equivalent (the ONNX "
        f"recurrent ops offer {sorted(_RECURRENT_ACTIVATIONS)} and the parametrised "
        f"{sorted(_PARAMETRISED_ACTIVATIONS)})", layer=where)


def _onnx_activations(layer: RecurrentLayer, where: str
                      ) -> list[tuple[str, float | None, float | None]]:
    """The activations of one direction, in the ONNX op's order (f, g, h), as ONNX names
    with their alpha and beta (None where the activation takes none)."""
    if layer.cell == "lstm":
        names = [layer.recurrent_activation, layer.activation, layer.cell_activation]
    elif layer.cell == "gru":
        names = [layer.recurrent_activation, layer.activation]
    else:
        names = [layer.activation]
    return [_onnx_activation(name, where) for name in names]


def _onnx_peepholes(entries: Sequence[Any], cell: str, dtype: np.dtype) -> np.ndarray | None:
    """``P`` of the ONNX LSTM (``(dirs, 3H)``, gates i, o, f) from fastgate's (i, f, o)."""
    if cell != "lstm" or entries[0].peephole is None:
        return None
    rows = []
    for entry in entries:
        p_i, p_f, p_o = np.split(np.asarray(entry.peephole), 3)
        rows.append(np.concatenate([p_i, p_o, p_f]))
    return np.stack(rows).astype(dtype)


def _recurrent_op(g: _Graph, layer: RecurrentLayer, index: int, directions: int, x: str,
                  where: str, *, reverse: bool = False, h0: str = "", c0: str = "",
                  lengths: str = "") -> _RecurrentOutputs:
    """One ONNX op over ``x`` ``(T, B, D)`` with the weights ``layer.weights[index:index +
    directions]`` (one direction, or forward and reverse)."""
    if layer.proj_size:
        raise UnsupportedLayerError(
            f"an LSTM with proj_size={layer.proj_size} has no ONNX equivalent (the ONNX LSTM "
            f"has no projection)", layer=where)
    cell, dtype = layer.cell, layer.dtype
    entries = layer.weights[index:index + directions]

    def onnx_gates(array: np.ndarray) -> np.ndarray:
        return reorder_gates(array, cell, "fastgate", "onnx", axis=0)

    w = np.stack([onnx_gates(entry.input_kernel.T) for entry in entries]).astype(dtype)
    r = np.stack([onnx_gates(entry.recurrent_kernel.T) for entry in entries]).astype(dtype)
    inputs = [x, g.constant(w, f"{where}_W"), g.constant(r, f"{where}_R")]
    if layer.bias:
        b = np.stack([np.concatenate([onnx_gates(entry.input_bias),
                                      onnx_gates(entry.recurrent_bias)])
                      for entry in entries]).astype(dtype)
        inputs.append(g.constant(b, f"{where}_B"))
    else:
        inputs.append("")
    inputs += [lengths, h0] + ([c0] if cell == "lstm" else [])
    peepholes = _onnx_peepholes(entries, cell, dtype)
    if peepholes is not None:
        inputs += [""] * (7 - len(inputs)) + [g.constant(peepholes, f"{where}_P")]
    while inputs[-1] == "":
        inputs.pop()
    activations = _onnx_activations(layer, where) * directions
    attributes: dict[str, Any] = {
        "activations": [onnx_name for onnx_name, _, _ in activations],
        "direction": "bidirectional" if directions == 2 else ("reverse" if reverse
                                                              else "forward"),
        "hidden_size": layer.hidden_size}
    if layer.clip is not None:
        attributes["clip"] = float(layer.clip)
    if cell == "lstm" and layer.input_forget:
        attributes["input_forget"] = 1
    alphas = [alpha for _, alpha, _ in activations]
    betas = [beta for _, _, beta in activations]
    if any(a is not None for a in alphas):  # consumed in order by the activations taking one
        attributes["activation_alpha"] = [float(a) for a in alphas if a is not None]
    if any(b is not None for b in betas):
        attributes["activation_beta"] = [float(b) for b in betas if b is not None]
    if cell == "gru":
        attributes["linear_before_reset"] = int(layer.reset_after)
    outputs = g.op(_OP_TYPES[cell], inputs, where, outputs=3 if cell == "lstm" else 2,
                   **attributes)
    return _RecurrentOutputs(outputs[0], outputs[1], outputs[2] if cell == "lstm" else None)


# -------------------------------------------------------------------- layers and cells
class _Lengths(NamedTuple):
    """The ``lengths`` input of a layer graph: ``given`` (int64 ``(B,)``), ``run`` (what the
    ops get: int32, at least 1) and ``has_steps`` (bool ``(B,)``)."""

    given: str
    run: str
    has_steps: str


def _lengths_input(g: _Graph) -> _Lengths:
    # A sequence of length 0 keeps its initial state and outputs zeros (the layer's
    # lengths=); runtimes differ on sequence_lens = 0 (the spec does not say), so the ops run
    # it for one step and the graph puts the state and the outputs back.
    given = g.add_input("lengths", np.int64, ["batch"])
    as_int32 = g.cast(given, np.int32).name
    run = g.one("Max", [as_int32, g.constant(np.array(1, np.int32), "one_i32")], "lengths_run")
    has_steps = g.one("Greater", [as_int32, g.constant(np.array(0, np.int32), "zero_i32")],
                      "has_steps")
    return _Lengths(given.name, run, has_steps)


def _initial_state_if_empty(g: _Graph, result: _RecurrentOutputs, lengths: _Lengths,
                            states: list[str], dtype: np.dtype, where: str
                            ) -> _RecurrentOutputs:
    """``Y_h`` (``Y_c``) with the initial state (zeros if none) for rows of length 0."""
    has_steps = g.one("Unsqueeze", [lengths.has_steps, g.ints(0, 2)], "has_steps3")
    zero = g.constant(np.array(0, dtype), "zero")
    h, c = (g.one("Where", [has_steps, final, initial or zero], f"{where}_{label}_final")
            if final else None
            for final, initial, label in ((result.y_h, states[0], "h"),
                                          (result.y_c, states[1], "c")))
    return _RecurrentOutputs(result.y, h, c)


def _zero_past_lengths(g: _Graph, out: str, lengths: _Lengths, dtype: np.dtype) -> str:
    """Time-major outputs ``(T, B, W)`` with zeros at and after each row's length."""
    steps = g.one("Gather", [g.one("Shape", [out], "out_shape"),
                             g.constant(np.array(0, np.int64), "zero_i64")], "out_steps")
    step = g.one("Range", [g.constant(np.array(0, np.int64), "zero_i64"), steps,
                           g.constant(np.array(1, np.int64), "one_i64")], "step")
    valid = g.one("Less", [g.unsqueeze(step, 1, "step_column"), lengths.given], "valid")
    return g.one("Where", [g.unsqueeze(valid, 2, "valid3"), out,
                           g.constant(np.array(0, dtype), "zero")], "out_valid")


def _layer_graph(g: _Graph, layer: RecurrentLayer, initial_state: bool, lengths: bool
                 ) -> None:
    """A PyTorch-style layer: ``x [, h0, c0, lengths] -> output, h_n [, c_n]``."""
    dtype, dirs = layer.dtype, layer.num_directions
    name = type(layer).__name__
    axes = ["batch", "steps"] if layer.batch_first else ["steps", "batch"]
    x = g.add_input("x", dtype, axes + [layer.input_size]).name
    rows = layer.num_layers * dirs
    h0 = c0 = ""
    if initial_state:
        h0 = g.add_input("h0", dtype, [rows, "batch", layer.output_size]).name
        if layer.cell == "lstm":
            c0 = g.add_input("c0", dtype, [rows, "batch", layer.hidden_size]).name
    given = _lengths_input(g) if lengths else None
    if layer.batch_first:
        x = g.transpose(x, [1, 0, 2], "x_time_major")
    finals: list[list[str]] = [[], []]
    for depth in range(layer.num_layers):
        where = f"{name.lower()}_l{depth}"
        states = [g.one("Slice", [state, g.ints(depth * dirs), g.ints((depth + 1) * dirs),
                                  g.ints(0)], f"{where}_{label}")
                  if state else "" for state, label in ((h0, "h0"), (c0, "c0"))]
        result = _recurrent_op(g, layer, depth * dirs, dirs, x, where, h0=states[0],
                               c0=states[1], lengths=given.run if given else "")
        if given:
            result = _initial_state_if_empty(g, result, given, states, dtype, where)
        if dirs == 1:
            x = g.squeeze(result.y, 1, f"{where}_out")
        else:  # (T, 2, B, H) -> (T, B, 2H): forward and reverse side by side, as PyTorch
            y = g.transpose(result.y, [0, 2, 1, 3], f"{where}_y")
            x = g.one("Reshape", [y, g.ints(0, 0, -1)], f"{where}_out")
        finals[0].append(result.y_h)
        if result.y_c:
            finals[1].append(result.y_c)
    if given:  # the next layer ignores the steps past a length; the output must be zeros
        x = _zero_past_lengths(g, x, given, dtype)
    if layer.batch_first:
        x = g.transpose(x, [1, 0, 2], "out_batch_major")
    g.add_output(_Value(x, 3, dtype), "output")
    for parts, label in zip(finals, ("h_n", "c_n")):
        if parts:
            joined = parts[0] if len(parts) == 1 else g.one("Concat", parts, label, axis=0)
            g.add_output(_Value(joined, 3, dtype), label)


def _cell_graph(g: _Graph, cell: _Cell) -> None:
    """A cell: ``x, h [, c] -> h_next [, c_next]`` (a one-step recurrent op)."""
    layer, dtype = cell.layer, cell.dtype
    x = g.add_input("x", dtype, ["batch", cell.input_size]).name
    h = g.add_input("h", dtype, ["batch", cell.hidden_size]).name
    c = (g.add_input("c", dtype, ["batch", cell.hidden_size]).name
         if layer.cell == "lstm" else "")
    where = type(cell).__name__.lower()
    result = _recurrent_op(g, layer, 0, 1, g.unsqueeze(x, 0, "x_step"), where,
                           h0=g.unsqueeze(h, 0, "h0"), c0=g.unsqueeze(c, 0, "c0") if c else "")
    g.add_output(_Value(g.squeeze(result.y_h, 0, "h_last"), 2, dtype), "h_next")
    if result.y_c:
        g.add_output(_Value(g.squeeze(result.y_c, 0, "c_last"), 2, dtype), "c_next")


# -------------------------------------------------------------------- Keras-style ops
class _Tensor(NamedTuple):
    """A model value while the graph is written: the tensor and its Keras mask (a bool
    ``(B, T)`` tensor name, or ``None``)."""

    value: _Value
    mask: str | None


def _masked_run(g: _Graph, op: Recurrent, x: str, mask: str, where: str
                ) -> _RecurrentOutputs:
    """Keras masking with a masked step anywhere: each row's valid steps are gathered to its
    front in order (TopK of the mask: ties keep the lower index first, per the ONNX spec),
    run with ``sequence_lens`` = their count (``Y`` then holds the compacted outputs, valid
    up to each count; ``Y_h`` and ``Y_c`` are zeros for a row with no valid step, as the
    initial state)."""
    steps = g.one("Gather", [g.one("Shape", [x], f"{where}_shape"), g.ints(1)], f"{where}_T")
    as_float = g.one("Cast", [mask], f"{where}_mask_f", to=1)
    order = g.op("TopK", [as_float, steps], f"{where}_order", outputs=2, axis=1, largest=1,
                 sorted=1)[1]
    spread = g.one("Expand", [g.unsqueeze(order, 2, f"{where}_order3"),
                              g.one("Shape", [x], f"{where}_xshape")], f"{where}_gather_idx")
    compact = g.one("GatherElements", [x, spread], f"{where}_compact", axis=1)
    counts = g.reduce("ReduceSum", g.one("Cast", [mask], f"{where}_mask_i", to=6), 1, False,
                      f"{where}_lens")
    time_major = g.transpose(compact, [1, 0, 2], f"{where}_tm")
    # A row with no valid step runs one (masked) step, its final state set back to zeros
    # below: runtimes differ on sequence_lens = 0 (the spec does not say).
    at_least_one = g.one("Max", [counts, g.constant(np.array(1, np.int32), "one_i32")],
                         f"{where}_lens_run")
    result = _recurrent_op(g, op.layer, 0, 1, time_major, where, lengths=at_least_one)
    has_steps = g.one("Unsqueeze", [g.one("Greater", [counts, g.constant(
        np.array(0, np.int32), "zero_i32")], f"{where}_has_steps"), g.ints(0, 2)],
        f"{where}_has_steps3")
    zero = g.constant(np.array(0, op.layer.dtype), "zero")
    h, c = (g.one("Where", [has_steps, state, zero], f"{where}_{label}_final") if state else None
            for state, label in ((result.y_h, "h"), (result.y_c, "c")))
    return _RecurrentOutputs(result.y, h, c)


def _batch_major_sequence(g: _Graph, result: _RecurrentOutputs, where: str) -> str:
    """A one-direction op's ``Y`` ``(T, 1, B, H)`` as ``(B, T, H)``."""
    return g.transpose(g.squeeze(result.y, 1, f"{where}_y"), [1, 0, 2], f"{where}_seq")


def _unmask(g: _Graph, op: Recurrent, compact: str, mask: str, where: str) -> str:
    """Compacted outputs back at their steps, as Keras gives them: at step ``t`` the output
    of the last valid step ``<= t`` (zeros before the first), or zeros at every masked step
    with ``zero_output_for_mask``."""
    valid_so_far = g.one("CumSum", [g.one("Cast", [mask], f"{where}_mask_l", to=7),
                                    g.constant(np.array(1, np.int64), "axis1")],
                         f"{where}_cumsum")
    position = g.one("Sub", [valid_so_far, g.constant(np.array(1, np.int64), "one_i64")],
                     f"{where}_pos")
    index = g.one("Max", [position, g.constant(np.array(0, np.int64), "zero_i64")],
                  f"{where}_index")
    spread = g.one("Expand", [g.unsqueeze(index, 2, f"{where}_index3"),
                              g.one("Shape", [compact], f"{where}_cshape")], f"{where}_back_idx")
    gathered = g.one("GatherElements", [compact, spread], f"{where}_back", axis=1)
    keep = mask if op.zero_output_for_mask else g.one(
        "GreaterOrEqual", [position, g.constant(np.array(0, np.int64), "zero_i64")],
        f"{where}_started")
    zero = g.constant(np.array(0, op.layer.dtype), "zero")
    return g.one("Where", [g.unsqueeze(keep, 2, f"{where}_keep3"), gathered, zero],
                 f"{where}_seq_keras")


def _keras_recurrent(g: _Graph, op: Recurrent, source: _Tensor, where: str,
                     flip_sequence: bool = False) -> tuple[list[_Value], list[str | None]]:
    """A :class:`~fastgate.ops.Recurrent` op: outputs and masks as ``op.apply`` gives them
    (``flip_sequence``: the sequence output reversed in time, for Bidirectional)."""
    layer, dtype = op.layer, op.layer.dtype
    if op.stateful:
        raise UnsupportedLayerError("a stateful layer carries its state from one call to the "
                                    "next; an ONNX graph cannot", layer=where)
    x, mask = g.cast(source.value, dtype).name, source.mask
    if op.time_major:   # (T, B, D) in, (T, B, H) out: written as the batch-major op, transposed
        batch_major = Recurrent(layer, return_sequences=op.return_sequences,
                                return_state=op.return_state, go_backwards=op.go_backwards,
                                zero_output_for_mask=op.zero_output_for_mask)
        outputs, masks = _keras_recurrent(g, batch_major, _Tensor(_Value(g.transpose(
            x, [1, 0, 2], f"{where}_bm"), 3, dtype), mask), where, flip_sequence)
        if op.return_sequences:
            outputs[0] = _Value(g.transpose(outputs[0].name, [1, 0, 2], f"{where}_seq_tm"),
                                3, dtype)
        return outputs, masks
    read_mask = mask
    if mask is None:
        result = _recurrent_op(g, layer, 0, 1, g.transpose(x, [1, 0, 2], f"{where}_tm"),
                               where, reverse=op.go_backwards)
    else:
        if op.go_backwards:
            x = g.reverse_time(x, 1, f"{where}_x_backwards")
            read_mask = g.reverse_time(mask, 1, f"{where}_mask_backwards")
        result = _masked_run(g, op, x, read_mask, where)
    final_h = g.squeeze(result.y_h, 0, f"{where}_h") \
        if op.return_state or not op.return_sequences else ""
    if op.return_sequences:
        sequence = _batch_major_sequence(g, result, where)
        if read_mask is None:  # Y is in step order; Keras gives go_backwards in reading order
            flip_sequence = op.go_backwards != flip_sequence
        else:
            sequence = _unmask(g, op, sequence, read_mask, where)
        if flip_sequence:
            sequence = g.reverse_time(sequence, 1, f"{where}_seq_order")
        output = _Value(sequence, 3, dtype)
    elif read_mask is not None and op.zero_output_for_mask:  # zero if the last step is masked
        final_valid = g.one("Slice", [read_mask, g.ints(-1), g.ints(_INT64_MAX), g.ints(1)],
                            f"{where}_last_valid")
        output = _Value(g.one("Where", [final_valid, final_h, g.constant(
            np.array(0, dtype), "zero")], f"{where}_last_output"), 2, dtype)
    else:  # the output of the last step read is the final h
        output = _Value(final_h, 2, dtype)
    outputs, masks = [output], [mask if op.return_sequences else None]
    if op.return_state:
        outputs.append(_Value(final_h, 2, dtype))
        if result.y_c:
            outputs.append(_Value(g.squeeze(result.y_c, 0, f"{where}_c"), 2, dtype))
        masks += [None] * (len(outputs) - 1)
    return outputs, masks


def _bidirectional(g: _Graph, op: Bidirectional, source: _Tensor, where: str
                   ) -> tuple[list[_Value], list[str | None]]:
    forward, _ = _keras_recurrent(g, op.forward, source, f"{where}_forward")
    backward, _ = _keras_recurrent(g, op.backward, source, f"{where}_backward",
                                   flip_sequence=op.forward.return_sequences)
    y, y_rev = forward[0], backward[0]
    mask = source.mask if op.forward.return_sequences else None
    if op.merge_mode is None:
        outputs, masks = [y, y_rev], [mask, mask]
    else:
        if op.merge_mode == "concat":
            merged = g.one("Concat", [y.name, y_rev.name], where, axis=-1)
        elif op.merge_mode == "sum":
            merged = g.one("Add", [y.name, y_rev.name], where)
        elif op.merge_mode == "mul":
            merged = g.one("Mul", [y.name, y_rev.name], where)
        else:
            merged = g.one("Div", [g.one("Add", [y.name, y_rev.name], f"{where}_sum"),
                                   g.constant(np.array(2, y.dtype), "two")], where)
        outputs, masks = [_Value(merged, y.rank, y.dtype)], [mask]
    states = forward[1:] + backward[1:]
    return outputs + states, masks + [None] * len(states)


def _dense(g: _Graph, op: Dense, source: _Tensor, where: str) -> _Value:
    x = g.cast(source.value, op.dtype)
    kernel = g.constant(op.kernel, f"{where}_kernel")
    bias = [] if op.bias is None else [g.constant(op.bias, f"{where}_bias")]
    if x.rank == 2:
        y = g.one("Gemm", [x.name, kernel] + bias, f"{where}_linear")
    else:
        y = g.one("MatMul", [x.name, kernel], f"{where}_matmul")
        if bias:
            y = g.one("Add", [y] + bias, f"{where}_linear")
    return _Value(g.activation(y, op.activation, op.dtype, where), x.rank, op.dtype)


def _masking(g: _Graph, op: Masking, source: _Tensor, where: str) -> _Tensor:
    x = g.cast(source.value, op.dtype)
    differs = g.one("Not", [g.one("Equal", [x.name, g.constant(
        np.array(op.mask_value, op.dtype), f"{where}_value")], f"{where}_equal")],
        f"{where}_differs")
    keep_f = g.reduce("ReduceMax", g.one("Cast", [differs], f"{where}_differs_f",
                                         to=protobuf.TENSOR_TYPES[op.dtype]),
                      -1, True, f"{where}_keep_f")
    masked = g.one("Mul", [x.name, keep_f], where)
    keep = g.one("Cast", [g.squeeze(keep_f, -1, f"{where}_keep_2d")], f"{where}_mask", to=9)
    return _Tensor(_Value(masked, 3, op.dtype), keep)


def _pooling(g: _Graph, op: GlobalPooling1D, source: _Tensor, where: str) -> _Value:
    x = g.cast(source.value, op.dtype)
    axis, keepdims = op.steps_axis, op.keepdims
    rank = 3 if keepdims else 2
    if op.mode == "max":
        return _Value(g.reduce("ReduceMax", x.name, axis, keepdims, where), rank, op.dtype)
    if source.mask is None:
        return _Value(g.reduce("ReduceMean", x.name, axis, keepdims, where), rank, op.dtype)
    valid = g.unsqueeze(source.mask, 3 - axis, f"{where}_valid")
    zero = g.constant(np.array(0, op.dtype), "zero")
    total = g.reduce("ReduceSum", g.one("Where", [valid, x.name, zero], f"{where}_kept"),
                     axis, keepdims, f"{where}_total")
    count = g.reduce("ReduceSum", g.one("Cast", [valid], f"{where}_valid_f",
                                        to=protobuf.TENSOR_TYPES[op.dtype]),
                     axis, keepdims, f"{where}_count")
    return _Value(g.one("Div", [total, count], where), rank, op.dtype)


def _apply(g: _Graph, op: Any, source: _Tensor, where: str
           ) -> tuple[list[_Value], list[str | None]]:
    """One model op: its outputs and their masks, as ``op.apply`` gives them."""
    x, mask = source
    if isinstance(op, Recurrent):
        return _keras_recurrent(g, op, source, where)
    if isinstance(op, Bidirectional):
        return _bidirectional(g, op, source, where)
    if isinstance(op, Dense):
        return [_dense(g, op, source, where)], [mask]
    if isinstance(op, Embedding):
        ids = g.cast(x, np.int64) if x.dtype.kind != "i" else x
        vectors = g.one("Gather", [g.constant(op.table, f"{where}_table"), ids.name], where,
                        axis=0)
        new_mask = None
        if op.mask_zero:
            new_mask = g.one("Not", [g.one("Equal", [ids.name, g.constant(
                np.array(0, ids.dtype), f"zero_{ids.dtype.name}")], f"{where}_pad")],
                f"{where}_mask")
        return [_Value(vectors, ids.rank + 1, op.dtype)], [new_mask]
    if isinstance(op, Activation):
        x = g.cast(x, op.dtype)
        return [_Value(g.activation(x.name, op.activation, op.dtype, where), x.rank,
                       op.dtype)], [mask]
    if isinstance(op, Masking):
        result = _masking(g, op, source, where)
        return [result.value], [result.mask]
    if isinstance(op, Flatten):
        x = g.cast(x, op.dtype)
        return [_Value(g.one("Flatten", [x.name], where, axis=1), 2, op.dtype)], [None]
    if isinstance(op, GlobalPooling1D):
        return [_pooling(g, op, source, where)], [None]
    if isinstance(op, _SEQUENCE_OPS):
        return _sequence_op(g, op, source, where)
    if isinstance(op, RepeatVector):
        x = g.cast(x, op.dtype)
        shape = g.ints(1, op.n, 1)
        repeated = g.one("Expand", [g.unsqueeze(x.name, 1, f"{where}_1"), shape], where)
        return [_Value(repeated, 3, op.dtype)], [None]
    raise UnsupportedLayerError(f"{type(op).__name__} has no ONNX export", layer=where)


# -------------------------------------------------------------------- fastgate.sequence_ops
_SEQUENCE_OPS = (sequence_ops.BatchNormalization, sequence_ops.LayerNormalization,
                 sequence_ops.Conv1D, sequence_ops.Pooling1D, sequence_ops.ZeroPadding1D,
                 sequence_ops.Cropping1D, sequence_ops.UpSampling1D, sequence_ops.Reshape,
                 sequence_ops.Permute, sequence_ops.TimeDistributed,
                 sequence_ops.StackedRecurrent)


def _sequence_op(g: _Graph, op: Any, source: _Tensor, where: str
                 ) -> tuple[list[_Value], list[str | None]]:
    """An op of :mod:`fastgate.sequence_ops`: outputs and masks as ``op.apply`` gives them."""
    if isinstance(op, sequence_ops.TimeDistributed):
        return [_time_distributed(g, op, source, where)], [source.mask]
    if isinstance(op, sequence_ops.StackedRecurrent):
        return _stacked_recurrent(g, op, source, where)
    x = g.cast(source.value, op.dtype)
    if isinstance(op, sequence_ops.BatchNormalization):
        return [_Value(g.one("Add", [g.one("Mul", [x.name, g.constant(
            _along(op._scale, op.axis, x.rank), f"{where}_scale")], f"{where}_scaled"),
            g.constant(_along(op._shift, op.axis, x.rank), f"{where}_shift")], where),
            x.rank, op.dtype)], [source.mask]
    if isinstance(op, sequence_ops.LayerNormalization):
        return [_layer_normalization(g, op, x, where)], [source.mask]
    if isinstance(op, (sequence_ops.Conv1D, sequence_ops.Pooling1D)):
        return [_convolution(g, op, x, where)], [None]
    if isinstance(op, sequence_ops.ZeroPadding1D):
        pads = g.ints(0, op.before, 0, 0, op.after, 0)
        return [_Value(g.one("Pad", [x.name, pads], where), 3, op.dtype)], [None]
    if isinstance(op, sequence_ops.Cropping1D):
        end = -op.after if op.after else _INT64_MAX
        return [_Value(g.one("Slice", [x.name, g.ints(op.before), g.ints(end), g.ints(1)],
                             where), 3, op.dtype)], [None]
    if isinstance(op, sequence_ops.UpSampling1D):  # (B, T, C) -> (B, T, size, C) -> (B, T*size, C)
        repeated = g.one("Expand", [g.unsqueeze(x.name, 2, f"{where}_4d"),
                                    g.ints(1, 1, op.size, 1)], f"{where}_repeated")
        shape = g.one("Concat", [g.dims(x.name, 0, 1, f"{where}_b"), g.ints(-1),
                                 g.dims(x.name, 2, 3, f"{where}_c")], f"{where}_target", axis=0)
        return [_Value(g.one("Reshape", [repeated, shape], where), 3, op.dtype)], [None]
    if isinstance(op, sequence_ops.Reshape):  # 0: the batch axis as it is
        target = g.ints(0, *op.target_shape)
        return [_Value(g.one("Reshape", [x.name, target], where), 1 + len(op.target_shape),
                       op.dtype)], [None]
    return [_Value(g.transpose(x.name, (0,) + op.dims, where), x.rank, op.dtype)], [None]


def _along(vector: np.ndarray, axis: int, rank: int) -> np.ndarray:
    """``vector`` shaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
    shape = [1] * rank
    shape[axis if axis > 0 else rank + axis] = vector.shape[0]
    return vector.reshape(shape)


def _layer_normalization(g: _Graph, op: Any, x: _Value, where: str) -> _Value:
    axes = sorted(a if a > 0 else x.rank + a for a in op.axes)
    mean = g.reduce("ReduceMean", x.name, axes, True, f"{where}_mean")
    centered = g.one("Sub", [x.name, mean], f"{where}_centered")
    variance = g.reduce("ReduceMean", g.one("Mul", [centered, centered], f"{where}_sq"),
                        axes, True, f"{where}_variance")
    root = g.one("Sqrt", [g.one("Add", [variance, g.constant(
        np.array(op.epsilon, op.dtype), f"{where}_epsilon")], f"{where}_var_eps")],
        f"{where}_root")
    y = g.one("Div", [x.name if op.rms_scaling else centered, root], f"{where}_normalized")
    # Keras' rms_scaling divides by the root of the variance and adds no beta
    for label, array in (("gamma", op.gamma), ("beta", None if op.rms_scaling else op.beta)):
        if array is not None:
            constant = g.constant(_parameter(array, axes, x.rank, where), f"{where}_{label}")
            y = g.one("Mul" if label == "gamma" else "Add", [y, constant], f"{where}_{label}_y")
    return _Value(y, x.rank, op.dtype)


def _parameter(array: np.ndarray, axes: list[int], rank: int, where: str) -> np.ndarray:
    """A LayerNormalization gamma/beta (one size per normalized axis) shaped to broadcast."""
    if array.ndim != len(axes):
        raise UnsupportedLayerError(f"LayerNormalization parameters of shape {array.shape} "
                                    f"for axes {axes}: expected one size per axis",
                                    layer=where)
    shape = [1] * rank
    for axis, size in zip(axes, array.shape):
        shape[axis] = size
    return array.reshape(shape)


def _convolution(g: _Graph, op: Any, x: _Value, where: str) -> _Value:
    """Conv1D and Pooling1D on ``(B, C, T)``, as ONNX's Conv/MaxPool/AveragePool take it;
    TensorFlow's "same" (the extra padding step at the end) is ONNX's ``SAME_UPPER``."""
    channels_first = g.transpose(x.name, [0, 2, 1], f"{where}_bct")
    if isinstance(op, sequence_ops.Pooling1D):
        attributes: dict[str, Any] = {"kernel_shape": [op.pool_size], "strides": [op.strides]}
        if op.padding == "same":
            attributes["auto_pad"] = "SAME_UPPER"
        op_type = "MaxPool" if op.mode == "max" else "AveragePool"
        if op.mode == "average":
            attributes["count_include_pad"] = 0
        y = g.one(op_type, [channels_first], f"{where}_pooled", **attributes)
        return _Value(g.transpose(y, [0, 2, 1], where), 3, op.dtype)
    kernel = np.ascontiguousarray(op.kernel.transpose(2, 1, 0))  # (filters, C/groups, k)
    inputs = [channels_first, g.constant(kernel, f"{where}_kernel")]
    if op.bias is not None:
        inputs.append(g.constant(op.bias, f"{where}_bias"))
    attributes = {"kernel_shape": [op.kernel_size], "strides": [op.strides],
                  "dilations": [op.dilation_rate], "group": op.groups}
    if op.padding == "same":
        attributes["auto_pad"] = "SAME_UPPER"
    elif op.padding == "causal":
        attributes["pads"] = [(op.kernel_size - 1) * op.dilation_rate, 0]
    y = g.transpose(g.one("Conv", inputs, f"{where}_conv", **attributes), [0, 2, 1],
                    f"{where}_btc")
    return _Value(g.activation(y, op.activation, op.dtype, where), 3, op.dtype)


def _time_distributed(g: _Graph, op: Any, source: _Tensor, where: str) -> _Value:
    """The inner op on the ``B*T`` steps as one batch, reshaped back to ``(B, T, ...)``."""
    x = source.value
    merged = g.one("Reshape", [x.name, g.one("Concat", [g.ints(-1), g.dims(
        x.name, 2, None, f"{where}_inner_dims")], f"{where}_merged_shape", axis=0)],
        f"{where}_merged")
    outputs, _ = _apply(g, op.layer, _Tensor(_Value(merged, x.rank - 1, x.dtype), None),
                        f"{where}_inner")
    y = outputs[0]
    shape = g.one("Concat", [g.dims(x.name, 0, 2, f"{where}_bt"),
                             g.dims(y.name, 1, None, f"{where}_out_dims")],
                  f"{where}_split_shape", axis=0)
    return _Value(g.one("Reshape", [y.name, shape], where), y.rank + 1, y.dtype)


def _stacked_recurrent(g: _Graph, op: Any, source: _Tensor, where: str
                       ) -> tuple[list[_Value], list[str | None]]:
    """The cells as stacked Recurrent ops, all reading the same (reversed) mask."""
    value, mask = source
    if op.go_backwards:
        value = _Value(g.reverse_time(value.name, 1, f"{where}_x_backwards"), value.rank,
                       value.dtype)
        mask = None if mask is None else g.reverse_time(mask, 1, f"{where}_mask_backwards")
    for k, cell in enumerate(op.layers):
        value = _keras_recurrent(g, cell, _Tensor(value, mask), f"{where}_cell{k}")[0][0]
    return [value], [source.mask if op.return_sequences else None]


def _input_spec(model: Model) -> tuple[np.dtype, list[int | str | None]]:
    """The model input's dtype (int64 token ids for an Embedding) and shape."""
    first = model.nodes[0].op if model.nodes else None
    ids = model._feeds_embedding()
    shape: Sequence[int | None] | None = model.input_shape
    if shape is None:
        if ids:
            shape = (None, None)
        elif isinstance(first, (Recurrent, Bidirectional)):
            layer = first.layer if isinstance(first, Recurrent) else first.forward.layer
            shape = (None, None, layer.input_size)
        elif isinstance(first, Dense):
            shape = (None, first.in_features)
        else:
            raise ConfigError(f"model {model.name!r} does not record its input shape")
    names = ["batch", "steps"]
    dims = [names[k] if d is None and k < 2 else (f"dim{k}" if d is None else d)
            for k, d in enumerate(shape)]
    if model.input_dtypes[0] is not None:   # a typed input (an imported ONNX graph's)
        return model.input_dtypes[0], [f"dim{k}" if d is None else d
                                       for k, d in enumerate(shape)]
    return np.dtype(np.int64 if ids else np.float32), dims


def _model_graph(g: _Graph, model: Model) -> None:
    dtype, dims = _input_spec(model)
    produced: list[tuple[list[_Value], list[str | None]]] = []
    model_input = _Tensor(g.add_input("input", dtype, dims), None)

    def fetch(ref: tuple[int, int]) -> _Tensor:
        if ref[0] == MODEL_INPUT:
            return model_input
        values, masks = produced[ref[0]]
        return _Tensor(values[ref[1]], masks[ref[1]])

    for node in model.nodes:
        produced.append(_apply(g, node.op, fetch(node.source), _node_name(node)))
    for node_index, index in model.outputs:
        value = fetch((node_index, index)).value
        name = "input" if node_index == MODEL_INPUT else _node_name(model.nodes[node_index])
        if not model.native_dtypes and (node_index != MODEL_INPUT or value.dtype.kind == "f"):
            value = g.cast(value, np.float32)  # Model outputs are float32, as Keras'
        g.add_output(value, f"{name}_{index}" if index else f"{name}_output")


def _node_name(node: Node) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in node.name) or "node"


# -------------------------------------------------------------------- public API
def to_onnx_bytes(obj: Any, opset: int = 17, *, initial_state: bool = False,
                  lengths: bool = False) -> bytes:
    """The bytes of the ONNX model of ``obj``; see :func:`to_onnx`."""
    if isinstance(opset, bool) or opset not in OPSETS:
        raise ConfigError(f"opset must be one of {sorted(OPSETS)}, got {opset!r}")
    if (initial_state or lengths) and not isinstance(obj, RecurrentLayer):
        raise ConfigError(f"initial_state= and lengths= apply to a recurrent layer, not a "
                          f"{type(obj).__name__}")
    g = _Graph(int(opset))
    if isinstance(obj, RecurrentLayer):
        _layer_graph(g, obj, initial_state, lengths)
    elif isinstance(obj, _Cell):
        _cell_graph(g, obj)
    elif isinstance(obj, Model):
        if not obj.nodes:
            raise ConfigError(f"model {obj.name!r} has no nodes to export")
        _model_graph(g, obj)
    elif hasattr(obj, "apply"):  # one model op on its own
        _model_graph(g, _single_op_model(obj))
    else:
        raise ConfigError(f"cannot export a {type(obj).__name__} to ONNX")
    name = getattr(obj, "name", None) or type(obj).__name__
    return g.serialize(str(name), f"exported by fastgate from {obj!r}"[:1000])


def _single_op_model(op: Any) -> Model:
    """A one-node :class:`Model` around ``op`` (every output of it is a model output)."""
    if isinstance(op, Embedding):
        shape: tuple[int | None, ...] | None = (None, None)
    elif isinstance(op, Dense):
        shape = (None, op.in_features)
    else:
        shape = None
    count = 1
    if isinstance(op, (Recurrent, Bidirectional)):
        recurrent = op if isinstance(op, Recurrent) else op.forward
        states = (2 if recurrent.layer.cell == "lstm" else 1) if recurrent.return_state else 0
        count = 1 + states
        if isinstance(op, Bidirectional):
            count = (2 if op.merge_mode is None else 1) + 2 * states
    return Model([Node(type(op).__name__.lower(), op)], [(0, k) for k in range(count)],
                 input_shape=shape, name=type(op).__name__.lower())


def to_onnx(obj: Any, path: str | os.PathLike, opset: int = 17, *,
            initial_state: bool = False, lengths: bool = False) -> None:
    """Write ``obj`` as an ONNX model file.

    Parameters
    ----------
    obj : Model, LSTM, GRU, SimpleRNN, LSTMCell, GRUCell, RNNCell, or a model op
        (Dense, Embedding, Recurrent, Bidirectional, ...)
    path : str or path-like
        The ``.onnx`` file to write.
    opset : int
        The ONNX opset, one of :data:`OPSETS` (14 to 22; default 17).
    initial_state : bool
        For a layer: add the inputs ``h0`` (and ``c0``), shaped like the layer's states.
    lengths : bool
        For a layer: add the input ``lengths`` (int64 ``(B,)``), each sequence's valid steps,
        as the layer's ``lengths=`` (ONNX ``sequence_lens``).

    Raises
    ------
    UnsupportedLayerError
        A part of ``obj`` has no ONNX equivalent; the message names it.
    ConfigError
        Bad options, or an object that is not a model or layer.
    """
    data = to_onnx_bytes(obj, opset, initial_state=initial_state, lengths=lengths)
    with open(os.fspath(path), "wb") as handle:
        handle.write(data)
