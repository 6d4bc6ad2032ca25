"""Import ONNX models: ``fastgate.from_onnx(path | bytes)`` and ``fastgate.load("m.onnx")``.

The file is read by fastgate's own protobuf reader (:mod:`fastgate.importers.protobuf`; no
``onnx`` package at run time). The graph is then

1. folded: every node whose inputs are all constants (initializers, ``Constant`` nodes, or
   what earlier folding produced) is computed once, at load;
2. mapped: each remaining node becomes a node of a :class:`fastgate.Model`
   (:mod:`fastgate.importers.onnx_graph`). ``LSTM``, ``GRU`` and ``RNN`` run on fastgate's
   recurrent layers (the compiled kernels: never op by op in Python); one forward layer run
   from zero states whose ``Y`` is read through a ``Squeeze`` (``torch.onnx.export``'s
   ``nn.LSTM``) is a :class:`fastgate.Recurrent` op, the ``Squeeze`` gone; ``Gemm`` /
   ``MatMul`` on constant weights become :class:`fastgate.Dense` (with the ``Add`` of a
   constant bias after it), ``Gather`` on a constant table an embedding; the shape plumbing
   that exporters put around them (``Shape``, ``Gather``, ``Concat``, ``Slice``...) runs as
   the small NumPy functions of :mod:`fastgate.importers.onnx_ops`.

Anything else (``Loop``, ``Scan``, unknown ops, other domains) raises
:class:`~fastgate.errors.UnsupportedLayerError` naming the op type and the node.

The recurrent ops follow the ONNX spec and ONNX Runtime (the reference the tests compare
against): gate orders through :data:`fastgate.GATE_ORDERS` ``["onnx"]`` (LSTM ``i, o, f, c``;
GRU ``z, r, h``), ``direction``, ``layout``, ``sequence_lens``, ``initial_h`` /
``initial_c``, peepholes ``P``, ``clip``, ``input_forget``, ``linear_before_reset`` and every
activation of the spec with its ``activation_alpha`` / ``activation_beta`` (ONNX Runtime's
rule of consuming them).
"""

from __future__ import annotations

import os
import threading
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, InputError, ShapeError, UnsupportedLayerError
from ..errors import WeightFormatError
from ..layers import GRU, LSTM, SimpleRNN
from ..layout import GATE_COUNT, CellWeights, reorder_gates
from ..model import Model
from ..ops import Dense, Embedding, Recurrent
from ..serialization import serializable
from .onnx_graph import GraphStep, InsertAxis, graph_model
from .onnx_ops import NUMPY_OPS, attribute_problem
from .protobuf import (GraphProto, NodeProto, OnnxModelProto, ValueInfo, parse_model,
                       read_model)

__all__ = ["from_onnx", "OnnxRecurrent"]

_RECURRENT_OPS = {"LSTM": "lstm", "GRU": "gru", "RNN": "rnn"}
_LAYER_CLASSES = {"lstm": LSTM, "gru": GRU, "rnn": SimpleRNN}
#: Activations per direction in the ONNX ``activations`` attribute, and their defaults.
_DEFAULT_ACTIVATIONS = {"lstm": ("Sigmoid", "Tanh", "Tanh"), "gru": ("Sigmoid", "Tanh"),
                        "rnn": ("Tanh",)}
#: Which ONNX activations take alpha / beta, and their defaults when the attribute runs out:
#: ONNX Runtime's table (rnn_helpers.cc), the reference the tests compare against; ScaledTanh
#: and Affine default to 0.
_ACTIVATION_PARAMETERS = {
    "affine": (True, True), "relu": (False, False), "leakyrelu": (True, False),
    "thresholdedrelu": (True, False), "tanh": (False, False), "scaledtanh": (True, True),
    "sigmoid": (False, False), "hardsigmoid": (True, True), "elu": (True, False),
    "softsign": (False, False), "softplus": (False, False)}
_ACTIVATION_DEFAULTS = {"leakyrelu": (0.01, 0.0), "hardsigmoid": (0.2, 0.5), "elu": (1.0, 0.0)}
_SUPPORTED_DOMAINS = ("", "ai.onnx")
_LOOP_OPS = ("Loop", "Scan")


# --------------------------------------------------------------------------- activations
def _activation_specs(node: NodeProto, cell: str, directions: int
                      ) -> list[tuple[tuple[str, float, float], ...]]:
    """Per direction, the ONNX activations as ``(lowercase name, alpha, beta)``: alphas and
    betas are consumed in order by the activations that take them (ONNX Runtime's rule)."""
    per_direction = len(_DEFAULT_ACTIVATIONS[cell])
    names = node.attributes.get("activations")
    if names is None:
        names = list(_DEFAULT_ACTIVATIONS[cell]) * directions
    if len(names) != per_direction * directions:
        raise WeightFormatError(f"{node.op_type} with {directions} direction(s) needs "
                                f"{per_direction * directions} activations, got {names}",
                                layer=node.name)
    alphas = list(node.attributes.get("activation_alpha", []))
    betas = list(node.attributes.get("activation_beta", []))
    specs = []
    for name in names:
        lowered = str(name).lower()
        if lowered not in _ACTIVATION_PARAMETERS:
            raise UnsupportedLayerError(f"{node.op_type}: unknown activation {name!r}; ONNX "
                                        f"defines {sorted(_ACTIVATION_PARAMETERS)}",
                                        layer=node.name)
        takes_alpha, takes_beta = _ACTIVATION_PARAMETERS[lowered]
        default_alpha, default_beta = _ACTIVATION_DEFAULTS.get(lowered, (0.0, 0.0))
        alpha = (alphas.pop(0) if alphas else default_alpha) if takes_alpha else 0.0
        beta = (betas.pop(0) if betas else default_beta) if takes_beta else 0.0
        specs.append((lowered, float(np.float32(alpha)), float(np.float32(beta))))
    return [tuple(specs[k * per_direction:(k + 1) * per_direction]) for k in range(directions)]


def _same(value: float, target: float) -> bool:
    return np.float32(value) == np.float32(target)


def fastgate_activation(name: str, alpha: float, beta: float) -> str:
    """The fastgate activation (:mod:`fastgate.activations`) computing ONNX activation
    ``name(alpha, beta)`` (lowercase name): a plain one where the parameters make it one,
    else a parametrised one."""
    if name in ("sigmoid", "tanh", "relu", "softsign", "softplus"):
        return name
    if name == "hardsigmoid":
        if _same(beta, 0.5) and _same(alpha, 0.2):
            return "hard_sigmoid_keras2"
        if _same(beta, 0.5) and _same(alpha, 1 / 6):
            return "hard_sigmoid"
        return f"hard_sigmoid(alpha={alpha!r}, beta={beta!r})"
    if name == "elu":
        return "elu" if _same(alpha, 1.0) else f"elu(alpha={alpha!r})"
    if name == "leakyrelu":
        return "relu" if _same(alpha, 0.0) else f"leaky_relu(alpha={alpha!r})"
    if name == "thresholdedrelu":
        return "relu" if _same(alpha, 0.0) else f"thresholded_relu(alpha={alpha!r})"
    if name == "scaledtanh":
        if _same(alpha, 1.0) and _same(beta, 1.0):
            return "tanh"
        return f"scaled_tanh(alpha={alpha!r}, beta={beta!r})"
    if _same(alpha, 1.0) and _same(beta, 0.0):   # affine
        return "linear"
    return f"affine(alpha={alpha!r}, beta={beta!r})"


def _layer_options(node: NodeProto, cell: str, specs: tuple) -> dict[str, Any]:
    """The layer options computing one direction's ONNX activations (f, g[, h]), clip and
    input_forget."""
    names = [fastgate_activation(*spec) for spec in specs]
    if cell == "rnn":
        options: dict[str, Any] = {"activation": names[0]}
    else:
        options = {"recurrent_activation": names[0], "activation": names[1]}
    if cell == "lstm":
        options["cell_activation"] = names[2]
        options["input_forget"] = bool(node.attributes.get("input_forget", 0))
    clip = node.attributes.get("clip")
    if clip is not None:
        options["clip"] = float(clip)
    return options


# ------------------------------------------------------------------------ recurrent ops
@serializable
class OnnxRecurrent:
    """An ONNX ``LSTM`` / ``GRU`` / ``RNN`` node, run by fastgate recurrent layers.

    ``layers`` holds ``(layer, reverse)`` pairs: one bidirectional layer, or one layer per
    direction, a reverse one reading each sequence from its last valid step (when the two
    directions of a bidirectional node use different activations, or for
    ``direction="reverse"``). Called with the node's inputs ``(X, sequence_lens, initial_h,
    initial_c)``, it returns ``[Y, Y_h, Y_c]`` (``Y_c`` for LSTM only) in the node's layout.
    """

    #: An ONNX function (OnnxOp runs only these, also from a saved file).
    onnx_function = True

    def __init__(self, cell: str, layers: Sequence[tuple[Any, bool]], *, layout: int,
                 direction: str, name: str = "") -> None:
        self.cell = cell
        self.layers = list(layers)
        self.layout = int(layout)
        self.direction = direction
        self.name = name
        first = self.layers[0][0]
        self.hidden_size = first.hidden_size
        self.input_size = first.input_size
        self.dtype = first.dtype
        self.num_directions = 2 if direction == "bidirectional" else 1

    def _get_spec(self) -> dict[str, Any]:
        return {"cell": self.cell, "layers": [[layer, reverse] for layer, reverse in self.layers],
                "layout": self.layout, "direction": self.direction, "name": self.name}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "OnnxRecurrent":
        return cls(spec["cell"], [(layer, bool(reverse)) for layer, reverse in spec["layers"]],
                   layout=spec["layout"], direction=spec["direction"], name=spec["name"])

    def __repr__(self) -> str:
        layers = ", ".join(repr(layer) + (" reversed" if reverse else "")
                           for layer, reverse in self.layers)
        return (f"OnnxRecurrent({self.cell.upper()}, direction={self.direction!r}, "
                f"layout={self.layout}, layers=[{layers}])")

    def _state(self, value: Any, batch: int, what: str) -> np.ndarray | None:
        """``initial_h`` / ``initial_c`` as ``(directions, B, H)``, or None (zeros)."""
        if value is None:
            return None
        array = np.asarray(value)
        if self.layout == 1:
            array = array.transpose(1, 0, 2) if array.ndim == 3 else array
        expected = (self.num_directions, batch, self.hidden_size)
        if array.shape != expected:
            shown = expected if self.layout == 0 else (batch, self.num_directions,
                                                       self.hidden_size)
            raise ShapeError(f"{self.cell.upper()} node {self.name!r}: {what} must have shape "
                             f"{shown}, got {np.asarray(value).shape}")
        if not array.any():   # zeros: the layers' faster zero-state path
            return None
        return np.ascontiguousarray(array, dtype=self.dtype)

    def __call__(self, x: Any, sequence_lens: Any = None, initial_h: Any = None,
                 initial_c: Any = None) -> list[np.ndarray | None]:
        x = np.asarray(x)
        if x.ndim != 3 or x.shape[2] != self.input_size:
            layout = "(T, B, D)" if self.layout == 0 else "(B, T, D)"
            raise ShapeError(f"{self.cell.upper()} node {self.name!r}: X must be {layout} with "
                             f"D={self.input_size}, got shape {x.shape}")
        batch, steps = (x.shape[1], x.shape[0]) if self.layout == 0 else x.shape[:2]
        h0 = self._state(initial_h, batch, "initial_h")
        c0 = self._state(initial_c, batch, "initial_c") if self.cell == "lstm" else None
        lengths = None
        if sequence_lens is not None:
            lengths = np.asarray(sequence_lens)
            if lengths.shape != (batch,) or lengths.dtype.kind not in "iu":
                raise ShapeError(f"{self.cell.upper()} node {self.name!r}: sequence_lens must "
                                 f"be ({batch},) integers, got {lengths.dtype} {lengths.shape}")
            if np.all(lengths == steps):
                lengths = None
        outputs, finals = [], []
        for k, (layer, reverse) in enumerate(self.layers):
            rows = slice(k, k + layer.num_directions) if len(self.layers) > 1 else slice(None)
            state = self._layer_state(h0, c0, rows, batch, layer)
            layer_x = _reverse_steps(x, lengths, self.layout) if reverse else x
            out, final = layer(layer_x, state, lengths)
            if reverse:
                out = _reverse_steps(out, lengths, self.layout)
            outputs.append(out)
            finals.append(final)
        return self._onnx_outputs(outputs, finals, steps, batch)

    def _layer_state(self, h0: np.ndarray | None, c0: np.ndarray | None, rows: slice,
                     batch: int, layer: Any) -> Any:
        if h0 is None and c0 is None:
            return None
        shape = (layer.num_directions, batch, self.hidden_size)
        h = np.zeros(shape, self.dtype) if h0 is None else h0[rows]
        if self.cell != "lstm":
            return h
        return h, (np.zeros(shape, self.dtype) if c0 is None else c0[rows])

    def _onnx_outputs(self, outputs: list, finals: list, steps: int, batch: int) -> list:
        out = outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=-1)
        dirs, hidden = self.num_directions, self.hidden_size
        if self.cell == "lstm":
            h_n = np.concatenate([final[0] for final in finals], axis=0)
            c_n = np.concatenate([final[1] for final in finals], axis=0)
        else:
            h_n, c_n = np.concatenate(finals, axis=0), None
        if self.layout == 0:   # (T, B, dirs*H) -> (T, dirs, B, H)
            y = out.reshape(steps, batch, dirs, hidden).transpose(0, 2, 1, 3)
        else:                  # (B, T, dirs*H) -> (B, T, dirs, H); states (B, dirs, H)
            y = out.reshape(batch, steps, dirs, hidden)
            h_n = h_n.transpose(1, 0, 2)
            c_n = None if c_n is None else c_n.transpose(1, 0, 2)
        return [y, h_n, c_n] if self.cell == "lstm" else [y, h_n]


def _reverse_steps(x: np.ndarray, lengths: np.ndarray | None, layout: int) -> np.ndarray:
    """``x`` with each sequence's valid steps in reverse order (padding stays in place); its
    own inverse."""
    time_axis = 0 if layout == 0 else 1
    if lengths is None:
        return np.ascontiguousarray(np.flip(x, axis=time_axis))
    steps = x.shape[time_axis]
    t = np.arange(steps)[:, None]
    lengths = lengths.astype(np.int64)[None, :]
    source = np.where(t < lengths, lengths - 1 - t, t)          # (T, B)
    batch_index = np.arange(x.shape[1 - time_axis])[None, :]
    if layout == 0:
        return x[source, batch_index]
    return x[batch_index.T, source.T]


def _recurrent_weights(node: NodeProto, cell: str, constants: dict, directions: int
                       ) -> tuple[list[CellWeights], int, np.dtype]:
    """Per direction, the node's ``W``, ``R``, ``B`` in fastgate's layout; hidden size; dtype."""
    names = node.inputs + [""] * (8 - len(node.inputs))
    if not names[1] or not names[2]:
        raise WeightFormatError(f"{node.op_type} has no W or R input", layer=node.name)
    gates = GATE_COUNT[cell]
    w, r = np.asarray(constants[names[1]]), np.asarray(constants[names[2]])
    if w.dtype not in (np.float32, np.float64):
        raise UnsupportedLayerError(f"{node.op_type}: weights of type {w.dtype} are not "
                                    f"supported (float32 and float64 are)", layer=node.name)
    hidden = node.attributes.get("hidden_size", r.shape[-1] if r.ndim == 3 else -1)
    if w.ndim != 3 or w.shape[:2] != (directions, gates * hidden):
        raise ShapeError(f"{node.op_type} node {node.name!r}: W must be ({directions}, "
                         f"{gates}*{hidden}, input_size), got {w.shape}")
    if r.shape != (directions, gates * hidden, hidden):
        raise ShapeError(f"{node.op_type} node {node.name!r}: R must be "
                         f"{(directions, gates * hidden, hidden)}, got {r.shape}")
    b = (np.asarray(constants[names[3]], w.dtype) if names[3]
         else np.zeros((directions, 2 * gates * hidden), w.dtype))
    if b.shape != (directions, 2 * gates * hidden):
        raise ShapeError(f"{node.op_type} node {node.name!r}: B must be "
                         f"{(directions, 2 * gates * hidden)}, got {b.shape}")
    weights = []
    for d in range(directions):
        gh = gates * hidden
        weights.append(CellWeights(
            reorder_gates(w[d].T, cell, "onnx"), reorder_gates(r[d].T, cell, "onnx"),
            reorder_gates(b[d, :gh], cell, "onnx"), reorder_gates(b[d, gh:], cell, "onnx")))
    return weights, hidden, w.dtype


def _peepholes(node: NodeProto, constants: dict, directions: int, hidden: int, dtype: Any
               ) -> list[np.ndarray] | None:
    """Per direction, the LSTM's ``P`` (ONNX order i, o, f) in fastgate's order (i, f, o);
    ``None`` without one, or when it is all zeros (the same equations)."""
    name = (node.inputs + [""] * 8)[7]
    if node.op_type != "LSTM" or not name:
        return None
    peepholes = np.asarray(constants[name], dtype)
    if peepholes.shape != (directions, 3 * hidden):
        raise ShapeError(f"LSTM node {node.name!r}: P must be {(directions, 3 * hidden)}, "
                         f"got {peepholes.shape}")
    if not peepholes.any():
        return None
    by_gate = dict(zip("iof", np.split(peepholes, 3, axis=1)))
    return list(np.concatenate([by_gate["i"], by_gate["f"], by_gate["o"]], axis=1))


def build_recurrent(node: NodeProto, constants: dict) -> OnnxRecurrent:
    """The :class:`OnnxRecurrent` computing an ``LSTM`` / ``GRU`` / ``RNN`` node."""
    cell = _RECURRENT_OPS[node.op_type]
    direction = node.attributes.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise WeightFormatError(f"{node.op_type}: direction must be forward, reverse or "
                                f"bidirectional, got {direction!r}", layer=node.name)
    directions = 2 if direction == "bidirectional" else 1
    layout = node.attributes.get("layout", 0)
    if layout not in (0, 1):
        raise WeightFormatError(f"{node.op_type}: layout must be 0 or 1, got {layout}",
                                layer=node.name)
    weights, hidden, dtype = _recurrent_weights(node, cell, constants, directions)
    peepholes = _peepholes(node, constants, directions, hidden, dtype)
    if peepholes is not None:
        weights = [w._replace(peephole=p) for w, p in zip(weights, peepholes)]
    options = [_layer_options(node, cell, specs)
               for specs in _activation_specs(node, cell, directions)]
    if cell == "gru":
        for option in options:
            option["reset_after"] = bool(node.attributes.get("linear_before_reset", 0))
    layer_class = _LAYER_CLASSES[cell]
    batch_first = layout == 1
    if directions == 2 and options[0] == options[1]:
        layers = [(layer_class(weights, bidirectional=True, dtype=dtype,
                               batch_first=batch_first, **options[0]), False)]
    else:
        reverse_flags = [direction == "reverse"] if directions == 1 else [False, True]
        layers = [(layer_class([w], dtype=dtype, batch_first=batch_first, **option), reverse)
                  for w, option, reverse in zip(weights, options, reverse_flags)]
    return OnnxRecurrent(cell, layers, layout=layout, direction=direction, name=node.name)


def _node_spec(node: NodeProto) -> dict[str, Any]:
    return {"op_type": node.op_type, "name": node.name, "inputs": node.inputs,
            "outputs": node.outputs, "attributes": node.attributes}


def _node_from_spec(spec: dict[str, Any], allowed: Any) -> NodeProto:
    if spec.get("op_type") not in allowed:
        raise WeightFormatError(f"unknown ONNX op {spec.get('op_type')!r} in a saved model")
    return NodeProto(op_type=spec["op_type"], name=str(spec["name"]),
                     inputs=[str(n) for n in spec["inputs"]],
                     outputs=[str(n) for n in spec["outputs"]],
                     attributes=dict(spec["attributes"]))


@serializable
class OnnxRuntimeWeightsRecurrent:
    """A recurrent node whose weights (W, R, B or P) are graph inputs, not constants: its
    layers are built from the weights of a call, and kept while later calls pass the same."""

    #: An ONNX function (OnnxOp runs only these, also from a saved file).
    onnx_function = True

    def __init__(self, node: NodeProto) -> None:
        self.node = node
        self._weights: tuple | None = None
        self._recurrent: OnnxRecurrent | None = None
        self._lock = threading.Lock()   # calls from several threads share the cache

    def __repr__(self) -> str:
        return f"{self.node.op_type} (weights given at run time)"

    def __getstate__(self) -> dict[str, Any]:
        return {"node": self.node}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["node"])

    def _get_spec(self) -> dict[str, Any]:
        return {"node": _node_spec(self.node)}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "OnnxRuntimeWeightsRecurrent":
        return cls(_node_from_spec(spec["node"], _RECURRENT_OPS))

    def __call__(self, x: Any, w: Any, r: Any, b: Any = None, sequence_lens: Any = None,
                 initial_h: Any = None, initial_c: Any = None, p: Any = None) -> list:
        weights = tuple(None if v is None else np.asarray(v) for v in (w, r, b, p))
        with self._lock:
            recurrent = self._recurrent
            if recurrent is None or not all(
                    (old is None and new is None) or (old is not None and new is not None
                                                      and np.array_equal(old, new))
                    for old, new in zip(self._weights, weights)):
                names = [name or "" for name in (self.node.inputs + [""] * 8)[:8]]
                constants = {names[k]: value for k, value in zip((1, 2, 3, 7), weights)
                             if value is not None}
                recurrent = build_recurrent(self.node, constants)
                self._weights, self._recurrent = weights, recurrent
        return recurrent(x, sequence_lens, initial_h, initial_c)


# ----------------------------------------------------------------------- mapped ops
@serializable
class OnnxDenseStep:
    """``Gemm`` / ``MatMul`` with constant weights as a :class:`fastgate.Dense`."""

    def __init__(self, dense: Dense) -> None:
        self.dense = dense

    def _get_spec(self) -> dict[str, Any]:
        return {"dense": self.dense}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "OnnxDenseStep":
        return cls(spec["dense"])

    def __call__(self, x: Any) -> list:
        return [self.dense(x)]

    def __repr__(self) -> str:
        return repr(self.dense)


@serializable
class OnnxEmbeddingStep:
    """``Gather`` (axis 0) on a constant table as a :class:`fastgate.Embedding`; negative
    ids count from the end, as ONNX says."""

    #: An ONNX function (OnnxOp runs only these, also from a saved file).
    onnx_function = True

    def __init__(self, embedding: Embedding) -> None:
        self.embedding = embedding

    def _get_spec(self) -> dict[str, Any]:
        return {"embedding": self.embedding}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "OnnxEmbeddingStep":
        return cls(spec["embedding"])

    def __call__(self, ids: Any) -> list:
        ids = np.asarray(ids)
        if ids.dtype.kind == "i" and ids.size and ids.min() < 0:
            ids = np.where(ids < 0, ids + self.embedding.num_embeddings, ids)
        return [self.embedding(ids)]

    def __repr__(self) -> str:
        return repr(self.embedding)


def _dense_step(node: NodeProto, constants: dict) -> OnnxDenseStep | None:
    """A Dense for a Gemm / MatMul whose weights (and bias) are constant floats, else None."""
    names = node.inputs + ["", ""]
    if names[0] in constants or names[1] not in constants:
        return None
    kernel = np.asarray(constants[names[1]])
    if kernel.ndim != 2 or kernel.dtype not in (np.float32, np.float64):
        return None
    if node.op_type == "MatMul":
        return OnnxDenseStep(Dense(kernel, dtype=kernel.dtype))
    attributes = node.attributes
    if attributes.get("transA", 0):
        return None
    if attributes.get("transB", 0):
        kernel = kernel.T
    kernel = kernel * np.asarray(attributes.get("alpha", 1.0), kernel.dtype)
    bias = None
    if names[2] and attributes.get("beta", 1.0) != 0.0:
        if names[2] not in constants:
            return None
        c = np.asarray(constants[names[2]], kernel.dtype)
        if c.size not in (1, kernel.shape[1]) or (c.ndim == 2 and c.shape[0] != 1) \
                or c.ndim > 2:
            return None   # a per-row C: the general Gemm
        bias = np.broadcast_to(c.reshape(-1), (kernel.shape[1],)) \
            * np.asarray(attributes.get("beta", 1.0), kernel.dtype)
    return OnnxDenseStep(Dense(kernel, bias, dtype=kernel.dtype))


def _embedding_step(node: NodeProto, constants: dict) -> OnnxEmbeddingStep | None:
    data_name, ids_name = (node.inputs + ["", ""])[:2]
    if node.attributes.get("axis", 0) != 0 or data_name not in constants \
            or ids_name in constants:
        return None
    table = np.asarray(constants[data_name])
    if table.ndim != 2 or table.dtype not in (np.float32, np.float64):
        return None
    return OnnxEmbeddingStep(Embedding(table, dtype=table.dtype))


@serializable
class OnnxNumpyStep:
    """One of :data:`fastgate.importers.onnx_ops.NUMPY_OPS` run on a node's inputs."""

    #: An ONNX function (OnnxOp runs only these, also from a saved file).
    onnx_function = True

    def __init__(self, node: NodeProto, opset: int) -> None:
        self.node, self.opset = node, int(opset)
        self.function = NUMPY_OPS[node.op_type]

    def __getstate__(self) -> dict[str, Any]:
        return {"node": self.node, "opset": self.opset}   # the function is found by name

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["node"], state["opset"])

    def _get_spec(self) -> dict[str, Any]:
        return {"node": _node_spec(self.node), "opset": self.opset}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "OnnxNumpyStep":
        return cls(_node_from_spec(spec["node"], NUMPY_OPS), spec["opset"])

    def __call__(self, *inputs: Any) -> list:
        try:
            return self.function(self.node, list(inputs), self.opset)
        except (TypeError, ValueError, IndexError, KeyError) as error:
            if isinstance(error, (ShapeError, InputError)):
                raise
            # what the file says does not fit the values it meets (e.g. a reshape to a shape
            # its input cannot take): the file, not the caller, is wrong
            raise WeightFormatError(f"{self.node.op_type} node {self.node.name!r} cannot be "
                                    f"computed: {error}", layer=self.node.name) from error

    def __repr__(self) -> str:
        return self.node.op_type


# ------------------------------------------------------------------ folding into model ops
def _squeezed_axis(step: GraphStep, constants: dict) -> int | None:
    """The one axis a ``Squeeze`` step removes (as written: maybe negative), or None."""
    if step.op_type != "Squeeze" or not isinstance(step.runner, OnnxNumpyStep):
        return None
    if step.runner.opset >= 13:   # axes is an input
        name = (step.inputs + [""])[1]
        axes = np.asarray(constants[name]).reshape(-1).tolist() if name in constants else None
    else:
        axes = step.runner.node.attributes.get("axes")
    return int(axes[0]) if axes is not None and len(axes) == 1 else None


def _readers(steps: Sequence[GraphStep]) -> dict[str, list[int]]:
    """For each value name, the positions of the steps that read it."""
    readers: dict[str, list[int]] = {}
    for position, step in enumerate(steps):
        for name in dict.fromkeys(step.inputs):
            if name:
                readers.setdefault(name, []).append(position)
    return readers


def _as_model_recurrent(step: GraphStep, steps: Sequence[GraphStep], readers: dict,
                        constants: dict, wanted: set[str]) -> tuple[Recurrent, list[int]] | None:
    """A :class:`~fastgate.ops.Recurrent` op computing a recurrent step, and the positions of
    the ``Squeeze`` steps it replaces, when the step is one forward layer run from zero states
    over every step, whose ``Y`` is only read through a ``Squeeze`` of its direction axis (as
    ``torch.onnx.export`` writes ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``); else None."""
    recurrent = step.runner
    if not isinstance(recurrent, OnnxRecurrent) or len(recurrent.layers) != 1:
        return None
    layer, reverse = recurrent.layers[0]
    x, lengths, h0, c0 = step.inputs
    if reverse or layer.num_directions != 1 or not x or x in constants or lengths or h0 or c0:
        return None
    y, y_h, y_c = (step.outputs + ["", "", ""])[:3]
    direction_axis = 1 if recurrent.layout == 0 else 2
    squeezes = readers.get(y, []) if y else []
    if y in wanted or len(squeezes) > 1 or any(
            _squeezed_axis(steps[k], constants) not in (direction_axis, direction_axis - 4)
            for k in squeezes):
        return None
    states = any(name and (name in wanted or name in readers) for name in (y_h, y_c))
    return Recurrent(layer, return_sequences=True, return_state=states,
                     time_major=recurrent.layout == 0), squeezes


def _fold_recurrent(steps: list[GraphStep], constants: dict, wanted: set[str]
                    ) -> list[GraphStep]:
    """Each recurrent step that :func:`_as_model_recurrent` maps becomes a model op: its
    ``Squeeze`` steps go, and an :class:`InsertAxis` gives ``Y_h`` / ``Y_c`` their direction
    axis back. The mapped graph of a plain export is then a chain that runs without per-call
    shape plumbing, and streams."""
    readers = _readers(steps)
    dropped: set[int] = set()
    folded: list[GraphStep] = []
    for position, step in enumerate(steps):
        if position in dropped:
            continue
        mapped = _as_model_recurrent(step, steps, readers, constants, wanted)
        if mapped is None:
            folded.append(step)
            continue
        op, squeezes = mapped
        dropped.update(squeezes)
        sequence = steps[squeezes[0]].outputs[0] if squeezes else ""
        folded.append(GraphStep(step.name, step.op_type, op, step.inputs[:1], [sequence]))
        if op.return_state:   # (B, H) -> ONNX's (1, B, H), or (B, 1, H) in layout 1
            finals = (step.outputs + ["", ""])[1:op.state_count + 1]
            inner = [f"{name} (B, H)" if name else "" for name in finals]
            folded[-1].outputs.extend(inner)
            axis = 0 if op.time_major else 1
            folded.extend(GraphStep(f"{step.name}/{name}", "Unsqueeze", InsertAxis(axis),
                                    [hidden], [name])
                          for name, hidden in zip(finals, inner) if name)
    return folded


def _swaps_steps_and_batch(step: GraphStep) -> bool:
    """Whether a step is a ``Transpose`` with ``perm=[1, 0, 2]``."""
    return (step.op_type == "Transpose" and isinstance(step.runner, OnnxNumpyStep)
            and step.runner.node.attributes.get("perm") == [1, 0, 2])


def _fold_batch_first(steps: list[GraphStep], wanted: set[str]) -> list[GraphStep]:
    """A time-major :class:`~fastgate.ops.Recurrent` step between two ``Transpose(perm=[1, 0,
    2])`` (``nn.LSTM(batch_first=True)`` as torch exports it) reads and gives batch-major
    values itself: the transposes (copies) go."""
    readers = _readers(steps)
    producers = {name: k for k, step in enumerate(steps) for name in step.outputs if name}
    dropped: set[int] = set()
    replaced: dict[int, GraphStep] = {}
    for position, step in enumerate(steps):
        op = step.runner
        if not (isinstance(op, Recurrent) and op.time_major) or not step.outputs[0]:
            continue
        before = producers.get(step.inputs[0])
        after = readers.get(step.outputs[0], [])
        if (before is None or not _swaps_steps_and_batch(steps[before])
                or readers[step.inputs[0]] != [position] or step.inputs[0] in wanted
                or len(after) != 1 or not _swaps_steps_and_batch(steps[after[0]])
                or step.outputs[0] in wanted):
            continue
        # the layer itself batch-first too: the kernel's plan then takes (B, T, D) as it is
        layer = type(op.layer)(op.layer.weights, **{**op.layer.get_config(), "batch_first": True})
        batch_major = Recurrent(layer, return_sequences=True, return_state=op.return_state)
        dropped.update((before, after[0]))
        replaced[position] = step._replace(
            runner=batch_major, inputs=[steps[before].inputs[0]],
            outputs=[steps[after[0]].outputs[0]] + step.outputs[1:])
    return [replaced.get(k, step) for k, step in enumerate(steps) if k not in dropped]


def _fold_bias(steps: list[GraphStep], constants: dict, wanted: set[str]) -> list[GraphStep]:
    """A ``Dense`` (a ``MatMul`` on constant weights) whose only reader is an ``Add`` of a
    constant vector (``nn.Linear`` on a sequence, as torch exports it) takes it as its bias."""
    readers = _readers(steps)
    dropped: set[int] = set()
    folded: list[GraphStep] = []
    for position, step in enumerate(steps):
        if position in dropped:
            continue
        dense, output = step.runner, (step.outputs + [""])[0]
        add_steps = readers.get(output, [])
        if (isinstance(dense, Dense) and dense.bias is None and output not in wanted
                and len(add_steps) == 1 and steps[add_steps[0]].op_type == "Add"):
            add = steps[add_steps[0]]
            other = [name for name in add.inputs if name != output]
            bias = constants.get(other[0]) if len(other) == 1 else None
            if bias is not None and bias.shape == (dense.out_features,) \
                    and bias.dtype == dense.dtype:
                dropped.add(add_steps[0])
                step = step._replace(runner=Dense(dense.kernel, bias, dtype=dense.dtype),
                                     outputs=list(add.outputs))
        folded.append(step)
    return folded


# ------------------------------------------------------------------ files of fastgate 0.x
@serializable
class OnnxModel:
    """Reads the ``.fastgate`` files in which fastgate 0.x saved an imported ONNX graph (its
    own class then): they load as the :class:`~fastgate.model.Model` an import now gives."""

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> Model:
        def info(value: dict[str, Any]) -> ValueInfo:
            shape = value["shape"]
            return ValueInfo(str(value["name"]), int(value["elem_type"]),
                             None if shape is None else tuple(shape))

        steps = []
        for step in spec["steps"]:
            runner = step["function"]
            if isinstance(runner, OnnxDenseStep):
                runner = runner.dense
            elif not isinstance(runner, (OnnxRecurrent, OnnxRuntimeWeightsRecurrent,
                                         OnnxEmbeddingStep, OnnxNumpyStep)):
                raise WeightFormatError(f"step {step['name']!r} of a saved ONNX model is not "
                                        f"an op")
            steps.append(GraphStep(str(step["name"]), str(step["op_type"]), runner,
                                   [str(n) for n in step["inputs"]],
                                   [str(n) for n in step["outputs"]]))
        return graph_model(steps, dict(spec["constants"]), [info(v) for v in spec["inputs"]],
                           [info(v) for v in spec["outputs"]], name=spec["name"])


# ----------------------------------------------------------------------------- import
def _loop_message(node: NodeProto) -> str:
    return (f"{node.op_type} node {node.name!r}: the exporter fell back to a loop of "
            f"elementwise ops instead of an LSTM/GRU/RNN op, and fastgate does not run "
            f"{node.op_type}. To avoid it: export the nn.LSTM / nn.GRU / nn.RNN module itself "
            f"(not a cell called in a Python loop, not torch.jit.script), from a model in "
            f"eval() mode. tf2onnx (1.17) writes a loop for SimpleRNN, GRU(reset_after=False) "
            f"and any masked layer (Masking, Embedding(mask_zero=True)); fastgate loads the "
            f"Keras file itself, and `fastgate convert model.h5 model.onnx` writes these "
            f"layers as ONNX ops")


def _map_node(node: NodeProto, constants: dict, opset: int) -> tuple[Any, list[str]]:
    """What runs a node that could not be folded (a model op reading the first name, or an
    ONNX function reading them all), and the names of the inputs it reads."""
    names = node.inputs + [""] * 7
    if node.op_type in _RECURRENT_OPS:   # X, sequence_lens, initial_h, initial_c
        if all(names[k] in constants for k in (1, 2, 3, 7) if names[k]):
            return build_recurrent(node, constants), [names[k] for k in (0, 4, 5, 6)]
        return OnnxRuntimeWeightsRecurrent(node), [names[k] for k in (0, 1, 2, 3, 4, 5, 6, 7)]
    if node.op_type in ("Gemm", "MatMul"):
        dense = _dense_step(node, constants)
        if dense is not None:
            return dense.dense, [names[0]]
    elif node.op_type == "Gather":
        embedding = _embedding_step(node, constants)
        if embedding is not None:
            return embedding, [names[1]]
    return OnnxNumpyStep(node, opset), list(node.inputs)


#: Ops whose output is all zeros when their (first) input is.
_ZERO_PRESERVING = {"Identity", "Slice", "Squeeze", "Unsqueeze", "Reshape", "Transpose", "Cast",
                    "Expand", "Flatten", "Gather"}


def _makes_zeros(node: NodeProto, constants: dict, zeros: set[str]) -> bool:
    """Whether a run-time node always outputs zeros (exporters build zero initial states
    from the input's batch size: Shape -> ... -> ConstantOfShape / Expand -> Slice)."""
    if node.op_type == "ConstantOfShape":
        value = node.attributes.get("value")
        return value is None or not np.asarray(value).any()

    def is_zero(name: str) -> bool:
        return name in zeros or (name in constants and constants[name].dtype.kind == "f"
                                 and not constants[name].any())

    if node.op_type in _ZERO_PRESERVING and node.inputs:
        return is_zero(node.inputs[0])
    return node.op_type == "Concat" and all(is_zero(name) for name in node.inputs if name)


def _skip_zero_states(step_inputs: list[str], zeros: set[str]) -> list[str]:
    """A recurrent step's inputs with the initial states known to be zeros left out (the
    same as absent), so that the subgraph building them is not run."""
    states = (2, 3) if len(step_inputs) == 4 else (5, 6)
    return ["" if k in states and name in zeros else name
            for k, name in enumerate(step_inputs)]


def _check_node(node: NodeProto, model: OnnxModelProto, opset: int) -> None:
    if node.domain not in _SUPPORTED_DOMAINS:
        raise UnsupportedLayerError(f"op {node.domain}.{node.op_type} (node {node.name!r}) is "
                                    f"not in the standard ONNX domain; fastgate runs only "
                                    f"standard ops", layer=node.name)
    if node.op_type in _LOOP_OPS:
        raise UnsupportedLayerError(_loop_message(node), layer=node.name)
    if node.op_type not in NUMPY_OPS and node.op_type not in _RECURRENT_OPS:
        raise UnsupportedLayerError(
            f"op {node.op_type} (node {node.name!r}) is not supported; fastgate runs LSTM, "
            f"GRU, RNN and {', '.join(sorted(NUMPY_OPS))}", layer=node.name)
    problem = attribute_problem(node, opset)
    if problem is not None:
        raise WeightFormatError(f"{node.op_type} node {node.name!r}: {problem}",
                                layer=node.name)


def build_model(model: OnnxModelProto, path: Any = None) -> Model:
    """Fold and map a decoded model (see the module docstring)."""
    graph: GraphProto = model.graph
    opset = model.opset_import.get("", model.opset_import.get("ai.onnx", 0))
    if graph.has_sparse_initializers:
        raise UnsupportedLayerError("sparse initializers are not supported", path=path)
    constants: dict[str, np.ndarray] = dict(graph.initializers)
    inputs = [info for info in graph.inputs if info.name not in constants]
    available = set(constants) | {info.name for info in inputs}
    loop = next((node for node in graph.nodes if node.op_type in _LOOP_OPS), None)
    if loop is not None:   # said first: no other op of the file matters then
        raise UnsupportedLayerError(_loop_message(loop), path=path, layer=loop.name)
    steps: list[GraphStep] = []
    zeros: set[str] = set()   # run-time values known to be all zeros
    for node in graph.nodes:
        try:
            _check_node(node, model, opset)
        except WeightFormatError as error:
            raise type(error)(str(error), path=path) from error
        missing = [name for name in node.inputs if name and name not in available]
        if missing:
            raise WeightFormatError(f"node {node.name!r} ({node.op_type}) reads {missing}, "
                                    f"which no earlier node, input or initializer produces",
                                    path=path, layer=node.name)
        present = [name for name in node.inputs if name]
        try:
            if node.op_type not in _RECURRENT_OPS and all(n in constants for n in present):
                results = NUMPY_OPS[node.op_type](
                    node, [constants[n] if n else None for n in node.inputs], opset)
                constants.update((n, np.asarray(v)) for n, v in zip(node.outputs, results)
                                 if n)
            else:
                function, step_inputs = _map_node(node, constants, opset)
                if node.op_type in _RECURRENT_OPS:
                    step_inputs = _skip_zero_states(step_inputs, zeros)
                elif _makes_zeros(node, constants, zeros):
                    zeros.update(name for name in node.outputs if name)
                steps.append(GraphStep(node.name, node.op_type, function, step_inputs,
                                       list(node.outputs)))
        except WeightFormatError as error:
            if error.path is not None:
                raise
            raise type(error)(str(error), path=path) from error
        except (ShapeError, InputError, ConfigError, KeyError, IndexError, TypeError) as error:
            raise WeightFormatError(f"node {node.name!r} ({node.op_type}): {error}",
                                    path=path, layer=node.name) from error
        available.update(name for name in node.outputs if name)
    for info in graph.outputs:
        if info.name not in available:
            raise WeightFormatError(f"graph output {info.name!r} is produced by no node",
                                    path=path)
    wanted = {info.name for info in graph.outputs}
    steps = _fold_recurrent(steps, constants, wanted)
    steps = _fold_bias(_fold_batch_first(steps, wanted), constants, wanted)
    return graph_model(steps, constants, inputs, list(graph.outputs), name=graph.name,
                       path=path)


def from_onnx(source: str | os.PathLike | bytes) -> Model:
    """Load an ONNX model (a ``.onnx`` file, or its bytes) into a :class:`fastgate.Model`.

    Parameters
    ----------
    source : str, path-like or bytes
        The file (external data is read from its folder, and only from there), or the
        serialized ``ModelProto`` (then without external data).

    Returns
    -------
    Model
        Inputs and outputs named as in the graph: ``model.run(output_names, input_feed)``
        like ONNX Runtime; ``model.predict(x)`` for a one-input model; ``model.step()`` where
        the mapped graph is a chain of recurrent ops and heads.

    Raises
    ------
    WeightFormatError
        The file is malformed, truncated, or claims sizes it does not hold.
    UnsupportedLayerError
        An op (or op option) fastgate does not run: the message names the op and the node.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        path = "<bytes>"
        model = parse_model(bytes(source), path, None)
    elif isinstance(source, (str, os.PathLike)):
        path = source
        if not os.path.isfile(source):
            raise WeightFormatError("no such file", path=source)
        model = read_model(source)
    else:
        raise WeightFormatError(f"from_onnx needs a path or bytes, got "
                                f"{type(source).__name__}")
    return build_model(model, path)
