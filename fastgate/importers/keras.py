"""Keras importer: a saved (or live) Keras model becomes a :class:`fastgate.Model`.

Reads Keras 3 ``.keras`` archives, full-model ``.h5`` files written by Keras 3 and by
Keras 2 / tf.keras, and weights-only files (``.weights.h5`` in either layout, with the
architecture given as ``model.to_json()`` text or dict), of every Keras version: the file
reading is in :mod:`fastgate.importers.keras_hdf5`, the conversion of Keras 1 and Keras
2.0-2.2 configurations and weights to their modern form in
:mod:`fastgate.importers.keras_legacy`; this module translates a Keras configuration and its
weights into fastgate ops (:mod:`fastgate.ops`, :mod:`fastgate.sequence_ops`), and computes
nothing itself:

* kernels are already ``x @ W`` (fastgate's layout); gates are reordered with
  :data:`fastgate.layout.GATE_ORDERS` ``["keras"]`` (GRU ``z r h`` -> ``r z n``);
* LSTM / SimpleRNN / GRU(``reset_after=False``) have one bias: it is the input bias and the
  recurrent bias is zero; GRU(``reset_after=True``) stores ``(2, 3H)``: input, recurrent;
* Keras 2 CuDNNLSTM / CuDNNGRU weights (bias ``8H`` / flat ``6H``) are converted the way
  tf.keras' ``_convert_rnn_weights`` did (per-gate kernel re-layout, bias halves);
* ``hard_sigmoid`` is ``0.2 x + 0.5`` in Keras 1 and 2 and ``x / 6 + 0.5`` in Keras 3: the
  saving version decides (:mod:`fastgate.activations`);
* ``RNN(cell)`` is the layer of that cell; ``RNN(StackedRNNCells)`` runs its cells as
  stacked layers (:class:`fastgate.sequence_ops.StackedRecurrent`).

Supported: ``Sequential`` and functional graphs (several inputs and outputs, shared layers,
merges, attention, ``mask=`` and ``initial_state=`` call arguments: the graph itself is
read by :mod:`fastgate.importers.keras_graph`). Anything else raises
:class:`~fastgate.errors.UnsupportedLayerError` naming the layer.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..activations import canonical_name
from ..errors import ConfigError, FastgateError, UnsupportedLayerError, WeightFormatError
from ..layers import GRU, LSTM, SimpleRNN
from ..layout import GATE_COUNT, CellWeights, reorder_gates
from ..graph_ops import Attention, Dot, Merge
from ..model import MODEL_INPUT, Model, Node
from ..ops import (AXIS_ACTIVATIONS, Activation, Bidirectional, Dense, Embedding, Flatten,
                   GlobalPooling1D, Masking, Recurrent, RepeatVector)
from ..sequence_ops import (BatchNormalization, Conv1D, Cropping1D, LayerNormalization, Permute,
                            Pooling1D, Reshape, StackedRecurrent, TimeDistributed, UpSampling1D,
                            ZeroPadding1D)
from .keras_graph import KerasCall, build_graph, is_keras_operation, parse_calls
from .keras_legacy import SavedBy, modern_config, modernize, saved_by
from .keras_hdf5 import (Keras3Weights, LegacyWeights, hdf5_errors, is_hdf5,
                         keras3_group_name, open_hdf5, read_attribute, read_keras_archive)

__all__ = ["load_keras", "from_keras", "from_config", "keras_saved_by", "SUPPORTED_LAYERS"]

_RECURRENT = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "rnn", "CuDNNLSTM": "lstm",
              "CuDNNGRU": "gru"}
_FASTGATE_LAYER = {"lstm": LSTM, "gru": GRU, "rnn": SimpleRNN}
# Identity at inference; each passes the mask on (Keras: supports_masking = True).
_IDENTITY = {"Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout"}
_MERGES = {"Concatenate": "concatenate", "Add": "add", "Subtract": "subtract",
           "Multiply": "multiply", "Average": "average", "Maximum": "maximum",
           "Minimum": "minimum"}
_POOLING = {"GlobalMaxPooling1D": "max", "GlobalMaxPool1D": "max",
            "GlobalAveragePooling1D": "average", "GlobalAvgPool1D": "average"}
_SEQUENCE_CLASSES = {"BatchNormalization", "LayerNormalization", "Conv1D", "Convolution1D",
                     "MaxPooling1D", "MaxPool1D", "AveragePooling1D", "AvgPool1D",
                     "ZeroPadding1D", "Cropping1D", "UpSampling1D", "Reshape", "Permute",
                     "RNN"}  # translated by _SEQUENCE_LAYERS (into fastgate.sequence_ops)
SUPPORTED_LAYERS = sorted({"InputLayer", "Dense", "Embedding", "Masking", "Activation",
                           "Flatten", "RepeatVector", "TimeDistributed", "Bidirectional",
                           "Dot", "Attention", "AdditiveAttention"}
                          | set(_RECURRENT) | _IDENTITY | set(_POOLING) | _SEQUENCE_CLASSES
                          | set(_MERGES))
_WEIGHTED = ({"Dense", "Embedding", "TimeDistributed", "Bidirectional", "BatchNormalization",
              "LayerNormalization", "Conv1D", "Convolution1D", "RNN"} | set(_RECURRENT))


@dataclass
class KerasLayer:
    """One layer of a Keras configuration."""

    class_name: str
    name: str
    config: dict
    calls: list[KerasCall] = field(default_factory=list)  # functional models: its calls
    weight_group: str | None = None  # Keras 3 weights layout only
    operation: bool = False  # a Keras 3 tensor operation (keras.ops), not a layer


#: ``get_weights(layer, parts)``: a layer's weights as ``(name, array)`` pairs.
WeightGetter = Callable[[KerasLayer, list[str]], list[tuple[str, np.ndarray]]]


@dataclass
class _Context:
    """What translating a layer needs besides its config: version, weights, file name."""

    keras_major: int
    get_weights: WeightGetter
    path: Any
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))

    def unsupported(self, message: str, layer: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(message, path=self.path, layer=layer)

    def bad_weights(self, message: str, layer: str, tensor: str | None = None
                    ) -> WeightFormatError:
        return WeightFormatError(message, path=self.path, layer=layer, tensor=tensor)

    def activation(self, value: Any, layer: str, *, allow_axis: bool = False) -> str:
        """The fastgate activation computing Keras activation ``value`` of this version."""
        if isinstance(value, dict):  # Keras 3 may serialize {"class_name": "function", ...}
            value = value.get("config") if isinstance(value.get("config"), str) else value
        if value is None:
            return "linear"
        if value == "hard_sigmoid":
            # Keras 2: clip(0.2 x + 0.5); Keras 3: clip(x / 6 + 0.5).
            return "hard_sigmoid_keras2" if self.keras_major < 3 else "hard_sigmoid"
        if isinstance(value, str) and value in AXIS_ACTIVATIONS:
            if allow_axis:
                return value
            raise self.unsupported(f"activation {value!r} inside a recurrent cell is not "
                                   f"supported", layer)
        try:
            return canonical_name(value)
        except ConfigError:
            raise self.unsupported(f"activation {value!r} is not supported", layer) from None


# ----------------------------------------------------------------------------- weights
def _expect(ctx: _Context, weights: list[tuple[str, np.ndarray]], count: int, layer: str,
            what: str) -> list[tuple[str, np.ndarray]]:
    if len(weights) != count:
        names = [name for name, _ in weights]
        raise ctx.bad_weights(f"expected {count} weight arrays ({what}), found "
                              f"{len(weights)}: {names}", layer)
    return weights


def _check_shape(ctx: _Context, entry: tuple[str, np.ndarray], shape: tuple, layer: str
                 ) -> np.ndarray:
    name, array = entry
    if array.shape != shape:
        raise ctx.bad_weights(f"has shape {array.shape}, expected {shape}", layer, name)
    return array


def _from_cudnn_kernels(kernel: np.ndarray, recurrent_kernel: np.ndarray, gates: int
                        ) -> tuple[np.ndarray, np.ndarray]:
    """tf.keras' CuDNN -> Keras kernel conversion (``_convert_rnn_weights``), per gate."""
    kernel = np.hstack([k.T.reshape(k.shape, order="F") for k in np.hsplit(kernel, gates)])
    recurrent_kernel = np.hstack([k.T for k in np.hsplit(recurrent_kernel, gates)])
    return kernel, recurrent_kernel


def _recurrent(ctx: _Context, class_name: str, config: dict,
               weights: list[tuple[str, np.ndarray]], layer: str, *,
               zero_output_for_mask: bool | None = None) -> Recurrent:
    cell = _RECURRENT[class_name]
    cudnn_class = class_name.startswith("CuDNN")
    if config.get("time_major"):
        raise ctx.unsupported(f"{class_name} option time_major=True is not supported", layer)
    units = int(config["units"])
    gates = GATE_COUNT[cell]
    use_bias = True if cudnn_class else bool(config.get("use_bias", True))
    weights = _expect(ctx, weights, 3 if use_bias else 2, layer,
                      "kernel, recurrent_kernel" + (", bias" if use_bias else ""))
    if cudnn_class:
        reset_after = True
    elif "reset_after" in config:
        reset_after = bool(config["reset_after"])
    else:  # Keras < 2.1 had no reset_after (its GRU was False); the bias shape decides
        reset_after = use_bias and weights[2][1].shape in ((2, 3 * units), (6 * units,))
    kernel = weights[0][1]
    if kernel.ndim != 2 or kernel.shape[1] != gates * units:
        raise ctx.bad_weights(f"has shape {kernel.shape}, expected (input_size, "
                              f"{gates * units})", layer, weights[0][0])
    recurrent_kernel = _check_shape(ctx, weights[1], (units, gates * units), layer)
    zeros = np.zeros(gates * units, kernel.dtype)
    input_bias, recurrent_bias = zeros, zeros
    from_cudnn = cudnn_class
    if use_bias:
        bias_name, bias = weights[2]
        if cell == "lstm" and bias.shape == (8 * units,):
            from_cudnn = True  # CuDNNLSTM: input biases, then recurrent biases
            input_bias, recurrent_bias = bias[:4 * units], bias[4 * units:]
        elif cell == "lstm" and bias.shape == (4 * units,) and not cudnn_class:
            input_bias = bias
        elif cell == "gru" and reset_after and bias.shape == (6 * units,):
            from_cudnn = True  # CuDNNGRU: flat (input, recurrent)
            input_bias, recurrent_bias = bias[:3 * units], bias[3 * units:]
        elif cell == "gru" and reset_after and bias.shape == (2, 3 * units) and not cudnn_class:
            input_bias, recurrent_bias = bias[0], bias[1]
        elif cell == "gru" and not reset_after and bias.shape == (3 * units,):
            input_bias = bias
        elif cell == "rnn" and bias.shape == (units,):
            input_bias = bias
        else:
            expected = {"lstm": f"({4 * units},), or ({8 * units},) from CuDNNLSTM",
                        "rnn": f"({units},)"}.get(cell)
            if cell == "gru":
                expected = (f"(2, {3 * units}), or ({6 * units},) from CuDNNGRU"
                            if reset_after else f"({3 * units},)")
                if not reset_after and bias.shape in ((6 * units,), (2, 3 * units)):
                    expected += ("; weights of a CuDNNGRU or GRU(reset_after=True) cannot be "
                                 "used by GRU(reset_after=False)")
                elif reset_after and bias.shape == (3 * units,):
                    expected += ("; weights of GRU(reset_after=False) cannot be used by "
                                 "GRU(reset_after=True)")
            raise ctx.bad_weights(f"has shape {bias.shape}, expected {expected}", layer,
                                  bias_name)
    if from_cudnn:
        kernel, recurrent_kernel = _from_cudnn_kernels(kernel, recurrent_kernel, gates)
    cell_weights = CellWeights(*(reorder_gates(array, cell, "keras") for array in
                                 (kernel, recurrent_kernel, input_bias, recurrent_bias)))
    options: dict[str, Any] = {
        "activation": "tanh" if cudnn_class else ctx.activation(
            config.get("activation", "tanh"), layer)}
    if cell != "rnn":
        options["recurrent_activation"] = "sigmoid" if cudnn_class else ctx.activation(
            config.get("recurrent_activation", "sigmoid"), layer)
    if cell == "gru":
        options["reset_after"] = reset_after
    fastgate_layer = _FASTGATE_LAYER[cell]([cell_weights], dtype=ctx.dtype, batch_first=True,
                                           bias=use_bias, **options)
    if zero_output_for_mask is None:
        zero_output_for_mask = bool(config.get("zero_output_for_mask", False))
    return Recurrent(fastgate_layer, return_sequences=bool(config.get("return_sequences")),
                     return_state=bool(config.get("return_state")),
                     go_backwards=bool(config.get("go_backwards")),
                     stateful=bool(config.get("stateful")),
                     zero_output_for_mask=zero_output_for_mask)


def _dense(ctx: _Context, config: dict, weights: list[tuple[str, np.ndarray]], layer: str
           ) -> list[tuple[str, Any]]:
    units = int(config["units"])
    use_bias = bool(config.get("use_bias", True))
    weights = _expect(ctx, weights, 2 if use_bias else 1, layer,
                      "kernel, bias" if use_bias else "kernel")
    kernel = weights[0][1]
    if kernel.ndim != 2 or kernel.shape[1] != units:
        raise ctx.bad_weights(f"has shape {kernel.shape}, expected (in_features, {units})",
                              layer, weights[0][0])
    bias = _check_shape(ctx, weights[1], (units,), layer) if use_bias else None
    activation = ctx.activation(config.get("activation", "linear"), layer, allow_axis=True)
    if activation in AXIS_ACTIVATIONS:
        return [("", Dense(kernel, bias, dtype=ctx.dtype)),
                (f".{activation}", Activation(activation, dtype=ctx.dtype))]
    return [("", Dense(kernel, bias, activation=activation, dtype=ctx.dtype))]


# ----------------------------------------------------------------------------- sequence layers
def _ints(value: Any, count: int, layer: str, ctx: "_Context", what: str) -> tuple[int, ...]:
    """A Keras int-or-tuple option as ``count`` ints (``kernel_size=3`` or ``[3]``)."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * count
    if len(values) != count or not all(isinstance(v, int) and not isinstance(v, bool)
                                       for v in values):
        raise ctx.bad_weights(f"option {what}={value!r} is not {count} integer(s)", layer)
    return tuple(values)


def _channels_last(ctx: _Context, config: dict, kind: str, layer: str) -> None:
    if config.get("data_format", "channels_last") not in (None, "channels_last"):
        raise ctx.unsupported(f"{kind} with data_format={config.get('data_format')!r} is not "
                              f"supported (channels_last only)", layer)


def _batch_normalization(ctx: _Context, layer: KerasLayer) -> list[tuple[str, Any]]:
    config, name = layer.config, layer.name
    axis = config.get("axis", -1)
    if isinstance(axis, list):
        if len(axis) != 1:
            raise ctx.unsupported(f"BatchNormalization over several axes {axis} is not "
                                  f"supported", name)
        axis = axis[0]
    if config.get("mode", 0) != 0:  # Keras 1: modes 1 and 2 use the batch's statistics
        raise ctx.unsupported(f"Keras 1 BatchNormalization(mode={config.get('mode')}) "
                              f"normalizes with each batch's statistics; only mode=0 is "
                              f"supported", name)
    scale, center = bool(config.get("scale", True)), bool(config.get("center", True))
    names = ["gamma"] * scale + ["beta"] * center + ["moving_mean", "moving_variance"]
    weights = _expect(ctx, ctx.get_weights(layer, [""]), len(names), name, ", ".join(names))
    size = weights[-1][1].shape
    if len(size) != 1:
        raise ctx.bad_weights(f"has shape {size}, expected (features,)", name, weights[-1][0])
    arrays = dict(zip(names, (_check_shape(ctx, w, size, name) for w in weights)))
    return [("", BatchNormalization(arrays["moving_mean"], arrays["moving_variance"],
                                    gamma=arrays.get("gamma"), beta=arrays.get("beta"),
                                    epsilon=float(config.get("epsilon", 1e-3)), axis=int(axis),
                                    dtype=ctx.dtype))]


def _layer_normalization(ctx: _Context, layer: KerasLayer) -> list[tuple[str, Any]]:
    config, name = layer.config, layer.name
    axes = config.get("axis", -1)
    axes = list(axes) if isinstance(axes, (list, tuple)) else [axes]
    rms_scaling = bool(config.get("rms_scaling", False))
    # Keras 3: rms_scaling makes gamma regardless of scale, and no beta regardless of center.
    scale = bool(config.get("scale", True)) or rms_scaling
    center = bool(config.get("center", True)) and not rms_scaling
    names = ["gamma"] * scale + ["beta"] * center
    weights = _expect(ctx, ctx.get_weights(layer, [""]), len(names), name,
                      ", ".join(names) or "none")
    arrays = {key: array for key, (_, array) in zip(names, weights)}
    return [("", LayerNormalization(gamma=arrays.get("gamma"), beta=arrays.get("beta"),
                                    axes=axes, epsilon=float(config.get("epsilon", 1e-3)),
                                    rms_scaling=rms_scaling,
                                    dtype=ctx.dtype))]


def _conv1d(ctx: _Context, layer: KerasLayer) -> list[tuple[str, Any]]:
    config, name = layer.config, layer.name
    _channels_last(ctx, config, "Conv1D", name)
    (size,) = _ints(config.get("kernel_size"), 1, name, ctx, "kernel_size")
    filters, groups = int(config["filters"]), int(config.get("groups", 1) or 1)
    use_bias = bool(config.get("use_bias", True))
    weights = _expect(ctx, ctx.get_weights(layer, [""]), 2 if use_bias else 1, name,
                      "kernel, bias" if use_bias else "kernel")
    kernel = weights[0][1]
    if kernel.ndim != 3 or kernel.shape[0] != size or kernel.shape[2] != filters:
        raise ctx.bad_weights(f"has shape {kernel.shape}, expected ({size}, in_channels / "
                              f"groups, {filters})", name, weights[0][0])
    bias = _check_shape(ctx, weights[1], (filters,), name) if use_bias else None
    padding = str(config.get("padding", "valid")).lower()
    if padding not in ("valid", "same", "causal"):
        raise ctx.unsupported(f"Conv1D padding {padding!r} is not supported", name)
    return [("", Conv1D(kernel, bias, strides=_ints(config.get("strides", 1), 1, name, ctx,
                                                    "strides")[0],
                        padding=padding, groups=groups,
                        dilation_rate=_ints(config.get("dilation_rate", 1), 1, name, ctx,
                                            "dilation_rate")[0],
                        activation=ctx.activation(config.get("activation", "linear"), name,
                                                  allow_axis=True),
                        dtype=ctx.dtype))]


def _pooling1d(ctx: _Context, layer: KerasLayer) -> list[tuple[str, Any]]:
    config, name = layer.config, layer.name
    _channels_last(ctx, config, layer.class_name, name)
    (size,) = _ints(config.get("pool_size", 2), 1, name, ctx, "pool_size")
    strides = config.get("strides")
    strides = size if strides is None else _ints(strides, 1, name, ctx, "strides")[0]
    padding = str(config.get("padding", "valid")).lower()
    if padding not in ("valid", "same"):
        raise ctx.unsupported(f"{layer.class_name} padding {padding!r} is not supported", name)
    mode = "max" if layer.class_name.startswith("Max") else "average"
    return [("", Pooling1D(mode, size, strides=strides, padding=padding, dtype=ctx.dtype))]


def _steps_edit(ctx: _Context, layer: KerasLayer) -> list[tuple[str, Any]]:
    """ZeroPadding1D, Cropping1D, UpSampling1D, Reshape, Permute: no weights."""
    kind, config, name = layer.class_name, layer.config, layer.name
    if kind == "ZeroPadding1D":
        return [("", ZeroPadding1D(*_ints(config.get("padding", 1), 2, name, ctx, "padding"),
                                   dtype=ctx.dtype))]
    if kind == "Cropping1D":
        return [("", Cropping1D(*_ints(config.get("cropping", 1), 2, name, ctx, "cropping"),
                                dtype=ctx.dtype))]
    if kind == "UpSampling1D":
        return [("", UpSampling1D(int(config.get("size", 2)), dtype=ctx.dtype))]
    if kind == "Reshape":
        return [("", Reshape(config["target_shape"], dtype=ctx.dtype))]
    return [("", Permute(config["dims"], dtype=ctx.dtype))]


def _time_distributed(ctx: _Context, layer: KerasLayer) -> list[tuple[str, Any]]:
    """TimeDistributed(X): X's ops, each applied to every step (its weights under layer/)."""
    inner = layer.config.get("layer") or {}
    kind = inner.get("class_name")
    if kind == "Dense":  # Dense acts on the last axis of any input: that is TimeDistributed
        return _dense(ctx, inner.get("config", {}), ctx.get_weights(layer, ["layer"]),
                      layer.name)
    if kind in ("TimeDistributed", "InputLayer") or not isinstance(inner.get("config"), dict):
        raise ctx.unsupported(f"TimeDistributed({kind}) is not supported", layer.name)

    def inner_weights(_: KerasLayer, parts: list[str]) -> list[tuple[str, np.ndarray]]:
        return ctx.get_weights(layer, ["/".join(p for p in ("layer", part) if p)
                                       for part in parts])

    inner_ctx = _Context(ctx.keras_major, inner_weights, ctx.path, ctx.dtype)
    inner_layer = KerasLayer(str(kind), layer.name, inner["config"])
    ops = _translate(inner_ctx, inner_layer)
    return [(suffix, TimeDistributed(op)) for suffix, op in ops]


_CELLS = {"LSTMCell": "LSTM", "GRUCell": "GRU", "SimpleRNNCell": "SimpleRNN"}
_RNN_OPTIONS = ("return_sequences", "return_state", "go_backwards", "stateful",
                "zero_output_for_mask", "time_major")


def _as_recurrent_layer(entry: dict) -> dict:
    """``RNN(LSTMCell(...), options)`` as the ``LSTM(..., options)`` it computes (same for
    GRUCell and SimpleRNNCell; the weights sit under ``cell`` in both); others unchanged."""
    cell = (entry.get("config") or {}).get("cell") if entry.get("class_name") == "RNN" else None
    if not isinstance(cell, dict) or cell.get("class_name") not in _CELLS:
        return entry
    options = {key: entry["config"].get(key, False) for key in _RNN_OPTIONS}
    return {"class_name": _CELLS[cell["class_name"]],
            "config": dict(cell.get("config") or {}, **options,
                           name=entry["config"].get("name", "rnn"))}


def _rnn(ctx: _Context, layer: KerasLayer) -> list[tuple[str, Any]]:
    """``RNN(cell)``, ``RNN(StackedRNNCells([...]))``, ``RNN([cells])`` with built-in cells."""
    config, name = layer.config, layer.name
    cell = config.get("cell") or {}
    cells = cell if isinstance(cell, list) else [cell]
    stacked = isinstance(cell, list) or cell.get("class_name") == "StackedRNNCells"
    if isinstance(cell, dict) and stacked:
        cells = (cell.get("config") or {}).get("cells") or []
    for entry in cells:
        if not isinstance(entry, dict) or entry.get("class_name") not in _CELLS:
            kind = entry.get("class_name") if isinstance(entry, dict) else entry
            raise ctx.unsupported(f"RNN with cell {kind!r} is not supported (built-in "
                                  f"LSTMCell, GRUCell, SimpleRNNCell, or StackedRNNCells of "
                                  f"them)", name)
    options = {key: config.get(key, False) for key in _RNN_OPTIONS}
    if not stacked:
        merged = dict(cells[0].get("config", {}), **options)
        return [("", _recurrent(ctx, _CELLS[cells[0]["class_name"]], merged,
                                ctx.get_weights(layer, ["cell"]), name))]
    if not cells or options["return_state"] or options["stateful"] or options["time_major"]:
        raise ctx.unsupported("RNN(StackedRNNCells) with return_state, stateful or time_major "
                              "(or no cells) is not supported", name)
    return [("", _stacked_cells(ctx, layer, cells, options))]


def _stacked_cells(ctx: _Context, layer: KerasLayer, cells: list[dict], options: dict
                   ) -> StackedRecurrent:
    # The Keras 3 layout finds arrays by part (no part, no arrays); the legacy layout and a
    # live model's weights list all of the layer's arrays whatever the parts asked for.
    if not ctx.get_weights(layer, []):
        used: dict[str, int] = {}
        parts = [f"cell/cells/{keras3_group_name(c['class_name'], used)}" for c in cells]
        per_cell = [ctx.get_weights(layer, [part]) for part in parts]
    else:  # legacy layout: every cell's arrays in order
        weights = ctx.get_weights(layer, ["cell"])
        counts = [3 if c.get("config", {}).get("use_bias", True) else 2 for c in cells]
        if sum(counts) != len(weights):
            raise ctx.bad_weights(f"expected {sum(counts)} weight arrays for {len(cells)} "
                                  f"cells, found {len(weights)}", layer.name)
        starts = np.cumsum([0] + counts)
        per_cell = [weights[a:b] for a, b in zip(starts[:-1], starts[1:])]
    ops = []
    for k, (cell, weights) in enumerate(zip(cells, per_cell)):
        last = k == len(cells) - 1
        merged = dict(cell.get("config", {}), go_backwards=False, return_state=False,
                      stateful=False,
                      return_sequences=options["return_sequences"] if last else True,
                      zero_output_for_mask=options["zero_output_for_mask"] if last else False)
        ops.append(_recurrent(ctx, _CELLS[cell["class_name"]], merged, weights,
                              f"{layer.name}/{cell.get('config', {}).get('name', k)}"))
    return StackedRecurrent(ops, go_backwards=bool(options["go_backwards"]))


_SEQUENCE_LAYERS: dict[str, Callable[[_Context, KerasLayer], list[tuple[str, Any]]]] = {
    "BatchNormalization": _batch_normalization, "LayerNormalization": _layer_normalization,
    "Conv1D": _conv1d, "Convolution1D": _conv1d,
    "MaxPooling1D": _pooling1d, "MaxPool1D": _pooling1d,
    "AveragePooling1D": _pooling1d, "AvgPool1D": _pooling1d,
    "ZeroPadding1D": _steps_edit, "Cropping1D": _steps_edit, "UpSampling1D": _steps_edit,
    "Reshape": _steps_edit, "Permute": _steps_edit, "RNN": _rnn,
}


def _refusal(ctx: _Context, layer: KerasLayer) -> UnsupportedLayerError:
    """Why a layer class is refused, and what the user can do instead."""
    kind = layer.class_name
    if kind == "Lambda":
        return ctx.unsupported(
            "Lambda layers hold Python code, which fastgate never runs: rebuild the model "
            "without the Lambda (a built-in layer doing the same), or pass architecture= with "
            "the inference part of the model (model.to_json() of the layers without it)",
            layer.name)
    return ctx.unsupported(
        f"layer class {kind!r} is not supported (supported: {', '.join(SUPPORTED_LAYERS)}); "
        f"fastgate never runs Python code from a file, so custom layer classes are refused "
        f"too. Rebuild the model with built-in layers, or pass architecture= with the part "
        f"fastgate supports", layer.name)

# ----------------------------------------------------------------------------- layers
def _translate(ctx: _Context, layer: KerasLayer, call: KerasCall | None = None
               ) -> list[tuple[str, Any]]:
    """The fastgate ops of one Keras layer, as ``(name suffix, op)``; ``[]`` for identity.

    ``call`` is the layer's call in a functional graph (``None`` in a Sequential model)."""
    kind, config, name = layer.class_name, layer.config, layer.name
    if kind in _IDENTITY:
        return []
    if kind == "Masking":
        return [("", Masking(config.get("mask_value", 0.0), dtype=ctx.dtype))]
    if kind == "Activation":
        return [("", Activation(ctx.activation(config.get("activation"), name,
                                               allow_axis=True), dtype=ctx.dtype))]
    if kind == "Flatten":
        if config.get("data_format", "channels_last") not in (None, "channels_last"):
            raise ctx.unsupported("Flatten with data_format='channels_first' is not "
                                  "supported", name)
        return [("", Flatten(dtype=ctx.dtype))]
    if kind in _POOLING:
        steps_axis = 2 if config.get("data_format") == "channels_first" else 1
        return [("", GlobalPooling1D(_POOLING[kind], steps_axis=steps_axis,
                                     keepdims=bool(config.get("keepdims", False)),
                                     dtype=ctx.dtype))]
    if kind == "RepeatVector":
        return [("", RepeatVector(config["n"], dtype=ctx.dtype))]
    if kind == "Dense":
        return _dense(ctx, config, ctx.get_weights(layer, [""]), name)
    if kind == "Embedding":
        shape = (int(config["input_dim"]), int(config["output_dim"]))
        weights = _expect(ctx, ctx.get_weights(layer, [""]), 1, name, "embeddings")
        table = _check_shape(ctx, weights[0], shape, name)
        return [("", Embedding(table, dtype=ctx.dtype,
                               mask_zero=bool(config.get("mask_zero", False))))]
    if kind in _RECURRENT:
        return [("", _recurrent(ctx, kind, config, ctx.get_weights(layer, ["cell"]), name))]
    if kind == "TimeDistributed":
        return _time_distributed(ctx, layer)
    if kind == "Bidirectional":
        return [("", _bidirectional(ctx, layer))]
    if kind in _SEQUENCE_LAYERS:
        return _SEQUENCE_LAYERS[kind](ctx, layer)
    if kind in _MERGES:
        mask_rule = "keras3" if ctx.keras_major >= 3 else "keras2"
        return [("", Merge(_MERGES[kind], axis=int(config.get("axis", -1)),
                           mask_rule=mask_rule, dtype=ctx.dtype))]
    if kind == "Dot":
        return [("", Dot(config.get("axes", -1), normalize=bool(config.get("normalize")),
                         dtype=ctx.dtype))]
    if kind in ("Attention", "AdditiveAttention"):
        return [("", _attention(ctx, layer, call))]
    raise _refusal(ctx, layer)


def _attention(ctx: _Context, layer: KerasLayer, call: KerasCall | None) -> Attention:
    """Keras ``Attention`` / ``AdditiveAttention``; the call says which masks are given,
    whether a key is given, ``use_causal_mask`` and ``return_attention_scores``."""
    config, name = layer.config, layer.name
    if call is None:
        raise ctx.unsupported(f"{layer.class_name} needs a functional model ([query, value] "
                              f"inputs)", name)
    additive = layer.class_name == "AdditiveAttention"
    score_mode = "additive" if additive else config.get("score_mode", "dot")
    if score_mode not in ("dot", "concat", "additive"):
        raise ctx.unsupported(f"Attention score_mode {score_mode!r} is not supported", name)
    use_scale = bool(config.get("use_scale", additive))
    count = int(use_scale) + int(score_mode == "concat")
    weights = ctx.get_weights(layer, [""]) if count else []
    weights = _expect(ctx, weights, count, name,
                      ", ".join(n for n, on in (("scale", use_scale),
                                                ("concat_score_weight",
                                                 score_mode == "concat")) if on))
    scale = weights[0][1] if use_scale else None
    concat = weights[-1][1] if score_mode == "concat" else None
    if len(call.inputs) not in (2, 3):
        raise ctx.unsupported(f"{layer.class_name} takes [query, value] or [query, value, "
                              f"key], got {len(call.inputs)} inputs", name)
    masks = call.mask or []
    if len(masks) > 2:
        raise ctx.unsupported(f"{layer.class_name} mask: [query_mask, value_mask] expected, "
                              f"got {len(masks)} entries", name)
    given = [k < len(masks) and masks[k] is not None for k in range(2)]
    causal = bool(call.options.get("use_causal_mask") or config.get("causal"))
    return Attention(score_mode, scale=scale, concat_score_weight=concat, causal=causal,
                     return_scores=bool(call.options.get("return_attention_scores")),
                     has_key=len(call.inputs) == 3, given_masks=given, dtype=ctx.dtype)


def _bidirectional(ctx: _Context, layer: KerasLayer) -> Bidirectional:
    config, name = layer.config, layer.name
    forward = _as_recurrent_layer(config.get("layer") or {})
    backward = config.get("backward_layer")
    backward = None if backward is None else _as_recurrent_layer(backward)
    if backward is None:  # Keras builds it as a copy reading the other way
        backward = {"class_name": forward.get("class_name"),
                    "config": dict(forward.get("config", {}),
                                   go_backwards=not forward.get("config", {}).get(
                                       "go_backwards", False))}
    for inner in (forward, backward):
        if inner.get("class_name") not in _RECURRENT:
            raise ctx.unsupported(f"Bidirectional({inner.get('class_name')}) is not "
                                  f"supported", name)
    weights = ctx.get_weights(layer, ["forward_layer/cell", "backward_layer/cell"])
    forward_count = 3 if forward["config"].get("use_bias", True) else 2
    if forward["class_name"].startswith("CuDNN"):
        forward_count = 3
    # Keras forces zero_output_for_mask = return_sequences on both directions.
    ops = []
    for inner, part in ((forward, weights[:forward_count]), (backward, weights[forward_count:])):
        inner_name = f"{name}/{inner['config'].get('name', inner['class_name'])}"
        ops.append(_recurrent(ctx, inner["class_name"], inner["config"], part, inner_name,
                              zero_output_for_mask=bool(
                                  inner["config"].get("return_sequences"))))
    merge_mode = config.get("merge_mode", "concat")
    if merge_mode not in ("concat", "sum", "mul", "ave", None):
        raise ctx.unsupported(f"Bidirectional merge_mode {merge_mode!r} is not supported", name)
    return Bidirectional(ops[0], ops[1], merge_mode=merge_mode)


def _output_count(op: Any) -> int:
    if isinstance(op, Attention):
        return 2 if op.return_scores else 1
    if isinstance(op, Recurrent):
        return 1 + (len(op.layer.state_shapes) if op.return_state else 0)
    if isinstance(op, Bidirectional):
        states = 2 * len(op.forward.layer.state_shapes) if op.forward.return_state else 0
        return (2 if op.merge_mode is None else 1) + states
    return 1


# ----------------------------------------------------------------------------- configs
def _batch_shape(config: dict) -> list | None:
    for key in ("batch_shape", "batch_input_shape"):
        if config.get(key) is not None:
            return list(config[key])
    return None


def _refs(value: Any) -> list[tuple[str, int, int]]:
    """Keras ``input_layers`` / ``output_layers``: one ``[name, node, index]``, a list of
    them, or a dict of them (Keras 3 dict inputs / outputs, in key order)."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list) and value and isinstance(value[0], str):
        value = [value]
    return [(str(v[0]), int(v[1]), int(v[2])) for v in (value or [])]


@dataclass
class _Architecture:
    """What :func:`_parse` reads from a model configuration."""

    name: str
    layers: list[KerasLayer]
    input_shapes: list          # per model input: its batch shape (or None)
    input_names: list[str]      # functional: the input layers; Sequential: []
    outputs: list | None        # functional: (layer, call, tensor) per output; else None
    output_names: list[str] | None = None
    dict_outputs: bool = False  # the model was built with a dict of outputs


def _parse(config: dict, path: Any) -> _Architecture:
    kind = config.get("class_name")
    body = config.get("config")
    if not isinstance(body, dict) or not isinstance(body.get("layers"), list):
        raise WeightFormatError("the architecture is not a Keras model configuration "
                                "(no config.layers)", path=path)
    model_name = str(body.get("name", "model"))
    layers = []
    for entry in body["layers"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            raise WeightFormatError(f"malformed layer entry in the configuration: "
                                    f"{str(entry)[:200]}", path=path)
        layer_name = str(entry.get("name") or entry["config"].get("name"))
        layers.append(KerasLayer(str(entry.get("class_name")), layer_name, entry["config"],
                                 operation=is_keras_operation(entry)))
    if kind == "Sequential":
        shape = None
        for layer in layers[:1]:
            shape = _batch_shape(layer.config)
        if shape is None and body.get("build_input_shape"):
            shape = list(body["build_input_shape"])
        for k, layer in enumerate(layers):
            if k and layer.class_name == "InputLayer":
                raise UnsupportedLayerError("InputLayer inside a Sequential model",
                                            path=path, layer=layer.name)
        return _Architecture(model_name, layers, [shape], [], None)
    if kind not in ("Functional", "Model"):
        raise UnsupportedLayerError(f"model class {kind!r} is not supported (Sequential or "
                                    f"functional models only; subclassed models have no "
                                    f"architecture to read)", path=path, layer=model_name)
    for entry, layer in zip(body["layers"], layers):
        layer.calls = parse_calls(entry, path) if layer.class_name != "InputLayer" else []
    inputs = _refs(body.get("input_layers"))
    if not inputs:
        raise WeightFormatError("the functional model lists no input layers", path=path)
    by_name = {layer.name: layer for layer in layers}
    shapes = []
    for name, _, _ in inputs:
        if name not in by_name:
            raise WeightFormatError(f"input layer {name!r} is not in the configuration",
                                    path=path)
        shapes.append(_batch_shape(by_name[name].config))
    outputs = _refs(body.get("output_layers"))
    output_layers = body.get("output_layers")
    names = (list(output_layers) if isinstance(output_layers, dict)
             else [f"{n}" + (f"[{t}]" if t else "") for n, _, t in outputs])
    return _Architecture(model_name, layers, shapes, [name for name, _, _ in inputs],
                         outputs, names, isinstance(output_layers, dict))


def from_config(config: dict | str, weights: Any, *, keras_version: str | None = None,
                path: Any = None) -> Model:
    """Build a :class:`~fastgate.Model` from a Keras model configuration and its weights.

    ``config`` is ``model.to_json()`` text or its dict; ``weights`` a
    :class:`~fastgate.importers.keras_hdf5.LegacyWeights`,
    :class:`~fastgate.importers.keras_hdf5.Keras3Weights`, or a mapping
    ``layer name -> list of (tensor name, array)`` in ``layer.weights`` order.

    A configuration whose values have the wrong types or shapes (a corrupt or hand-edited
    file) raises :class:`~fastgate.errors.WeightFormatError`, never a ``KeyError`` or
    ``TypeError`` from inside the translation.
    """
    try:
        return _from_config(config, weights, keras_version=keras_version, path=path)
    except FastgateError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError,
            RecursionError) as error:
        raise WeightFormatError(f"malformed Keras model configuration: "
                                f"{type(error).__name__}: {error}"[:500], path=path) from error


def _from_config(config: dict | str, weights: Any, *, keras_version: str | None,
                 path: Any) -> Model:
    """The model of a Keras model ``config`` (dict or JSON text) and its ``weights``
    (:class:`Keras3Weights`, :class:`LegacyWeights` or a dict of lists by layer name)."""
    config = _config_dict(config, path)
    keras_version = config.get("keras_version") or keras_version
    config, weights, saved_by = modernize(config, weights, keras_version=keras_version,
                                          backend=config.get("backend"))
    architecture = _parse(config, path)
    layers = architecture.layers
    ctx = _Context(saved_by.major, _weight_getter(weights, layers, path), path)

    if architecture.outputs is None:
        nodes, model_outputs = _sequential_nodes(ctx, layers)
        return Model(nodes, model_outputs, input_shape=architecture.input_shapes[0],
                     name=architecture.name)
    keras3 = any(layer.calls and isinstance(entry.get("inbound_nodes", [None])[0], dict)
                 for layer, entry in zip(layers, config["config"]["layers"]))
    nodes, model_outputs = build_graph(
        layers, architecture.input_names, architecture.outputs,
        translate=lambda layer, call: _translate(ctx, layer, call),
        output_count=_output_count, keras3=keras3, path=path)
    return Model(nodes, model_outputs, input_shapes=architecture.input_shapes,
                 input_names=architecture.input_names,
                 output_names=architecture.output_names,
                 dict_outputs=architecture.dict_outputs, name=architecture.name)


def _config_dict(config: dict | str | bytes, path: Any) -> dict:
    """A model config given as a dict or JSON text, as a dict (else WeightFormatError)."""
    if isinstance(config, (str, bytes)):
        try:
            config = json.loads(config)
        except ValueError as error:
            raise WeightFormatError(f"the architecture is not valid JSON: {error}",
                                    path=path) from error
    if not isinstance(config, dict):
        raise WeightFormatError("the architecture must be a Keras model config (dict or "
                                "JSON text)", path=path)
    return config


def _weight_getter(weights: Any, layers: list[KerasLayer], path: Any) -> WeightGetter:
    """``get_weights(layer, parts)``: a layer's ``(name, array)`` weights from ``weights``
    in whichever layout it is (Keras 3 groups, legacy HDF5 by layer name, a plain dict)."""
    if isinstance(weights, Keras3Weights):
        used: dict[str, int] = {}
        for layer in layers:
            if not layer.operation:  # keras.ops are not layers: no weights group
                layer.weight_group = keras3_group_name(layer.class_name, used)
        return lambda layer, parts: weights.get(layer.weight_group or "", parts, layer.name)
    if isinstance(weights, LegacyWeights):
        weighted = [layer.name for layer in layers if layer.class_name in _WEIGHTED]
        if not all(weights.has_layer(name) for name in weighted):
            weights.pair_by_order(weighted)
        return lambda layer, parts: weights.get(layer.name)

    def from_dict(layer: KerasLayer, parts: list[str]) -> list[tuple[str, np.ndarray]]:
        if layer.name not in weights:
            raise WeightFormatError("no weights for this layer", path=path, layer=layer.name)
        return list(weights[layer.name])
    return from_dict


def _sequential_nodes(ctx: _Context, layers: list[KerasLayer]
                      ) -> tuple[list[Node], list[tuple[int, int]]]:
    """A Sequential model: each layer reads the one before; masks travel along."""
    nodes: list[Node] = []
    previous: tuple[int, int] = (MODEL_INPUT, 0)
    for layer in layers:
        if layer.class_name == "InputLayer":
            continue
        for suffix, op in _translate(ctx, layer):
            nodes.append(Node(layer.name + suffix, op, previous))
            previous = (len(nodes) - 1, 0)
    if previous[0] == MODEL_INPUT:
        return nodes, [previous]
    return nodes, [(previous[0], k) for k in range(_output_count(nodes[-1].op))]


# ----------------------------------------------------------------------------- entry points
def _read_architecture(architecture: Any, path: Any) -> dict:
    if isinstance(architecture, dict):
        return architecture
    if isinstance(architecture, (str, bytes, os.PathLike)):
        text = architecture
        if isinstance(architecture, os.PathLike) or (
                isinstance(architecture, str) and not architecture.lstrip().startswith("{")):
            try:
                with open(architecture, "rb") as handle:
                    text = handle.read()
            except OSError as error:
                raise WeightFormatError(f"architecture is neither JSON text nor a readable "
                                        f"file: {error}", path=architecture) from error
        try:
            config = json.loads(text)
        except ValueError as error:
            raise WeightFormatError(f"the architecture is not valid JSON: {error}",
                                    path=path) from error
        if isinstance(config, dict):
            return config
    raise WeightFormatError("architecture must be model.to_json() text, its dict, or a "
                            f"JSON file, got {type(architecture).__name__}", path=path)


def load_keras(path: str | os.PathLike, architecture: Any = None) -> Model:
    """Load a Keras model file (``.keras``, ``.h5``, ``.weights.h5``) as a fastgate Model.

    Parameters
    ----------
    path : str or PathLike
        A Keras 3 ``.keras`` archive, a full-model ``.h5`` (Keras 2 or 3), or a weights-only
        HDF5 file (``save_weights``), which needs ``architecture``.
    architecture : str, dict or PathLike, optional
        The model's ``to_json()`` text (or dict, or a JSON file); overrides the file's own.

    Raises
    ------
    WeightFormatError
        The file is unreadable, truncated, or its weights do not fit the architecture.
    UnsupportedLayerError
        The model uses a layer or option fastgate does not implement.
    """
    config = _read_architecture(architecture, path) if architecture is not None else None
    if zipfile.is_zipfile(path):
        archive_config, weights_bytes, version = read_keras_archive(path)
        handle = open_hdf5(weights_bytes, path)
        with handle, hdf5_errors(path):
            weights = (Keras3Weights(handle, path) if "layers" in handle
                       else LegacyWeights(handle, path))
            return from_config(config or archive_config, weights, keras_version=version,
                               path=path)
    if not is_hdf5(path):
        raise WeightFormatError("not a Keras file: neither a .keras zip archive nor HDF5 "
                                "(truncated or corrupt?)", path=path)
    with open_hdf5(path, path) as handle, hdf5_errors(path):
        version = read_attribute(handle, "keras_version", path)
        model_config = read_attribute(handle, "model_config", path)
        if model_config is not None:
            if config is None:
                try:
                    config = json.loads(model_config)
                except ValueError as error:
                    raise WeightFormatError(f"model_config is not valid JSON: {error}",
                                            path=path) from error
            if "model_weights" not in handle:
                raise WeightFormatError("full-model file without a model_weights group",
                                        path=path)
            weights: Any = LegacyWeights(handle["model_weights"], path)
        elif read_attribute(handle, "layer_names", path) is not None:
            weights = LegacyWeights(handle, path)
        elif "layers" in handle:
            weights = Keras3Weights(handle, path)
        else:
            raise WeightFormatError("HDF5 file holds no Keras model or weights (no "
                                    "model_config, layer_names or layers group)", path=path)
        if config is None:
            raise WeightFormatError("weights-only file: pass architecture=model.to_json() "
                                    "(text or dict)", path=path)
        return from_config(config, weights, keras_version=version, path=path)


def from_keras(model: Any) -> Model:
    """Translate a live Keras model (Keras 3, or Keras 2 / tf.keras) into a fastgate Model.

    Reads ``model.to_json()`` and each layer's ``get_weights()``; keras is only needed
    because ``model`` is a Keras object.
    """
    try:
        config = json.loads(model.to_json())
    except (AttributeError, TypeError, ValueError, NotImplementedError) as error:
        raise WeightFormatError(f"cannot read the architecture of this "
                                f"{type(model).__name__}: {error}") from error
    package = sys.modules.get(type(model).__module__.split(".")[0])
    version = getattr(package, "__version__", None)
    weights: dict[str, list[tuple[str, np.ndarray]]] = {}
    for layer in model.layers:
        variables = list(layer.weights)
        values = layer.get_weights()
        names = [getattr(v, "path", None) or getattr(v, "name", str(k))
                 for k, v in enumerate(variables)]
        weights[layer.name] = [(str(n), np.asarray(a)) for n, a in zip(names, values)]
    return from_config(config, weights, keras_version=version)


def keras_saved_by(path: str | os.PathLike, architecture: Any = None) -> SavedBy:
    """Which Keras saved the file at ``path`` (or what fastgate assumes), without loading it.

    ``notes`` of the result list what loading converts from older formats (a list-style
    Sequential configuration, Keras 1 option names or weights).
    """
    config = _read_architecture(architecture, path) if architecture is not None else None
    version = backend = None
    legacy_weights_without_version = False
    if zipfile.is_zipfile(path):
        archive_config, _, version = read_keras_archive(path)
        config = config or archive_config
    else:
        with open_hdf5(path, path) as handle, hdf5_errors(path):
            version = read_attribute(handle, "keras_version", path)
            backend = read_attribute(handle, "backend", path)
            model_config = read_attribute(handle, "model_config", path)
            if config is None and model_config is not None:
                config = json.loads(model_config)
            group = handle["model_weights"] if "model_weights" in handle else handle
            if read_attribute(group, "layer_names", path) is not None:
                legacy_weights_without_version = read_attribute(
                    group, "keras_version", path) is None
    if isinstance(config, dict):
        version = version or config.get("keras_version")
        backend = backend or config.get("backend")
    found = saved_by(version, backend, config,
                     weights_attribute_missing=legacy_weights_without_version)
    notes: list[str] = []
    if isinstance(config, dict):
        modern_config(config, found.major, notes)
    if legacy_weights_without_version or found.major == 1 or found.backend == "theano":
        notes.append("Keras 1 / Theano weights are converted as tf.keras' "
                     "preprocess_weights_for_loading did")
    return SavedBy(found.keras_version, found.backend, found.major, found.assumed,
                   tuple(notes))
