"""Every Keras version's files as Keras 3-style configurations and weights.

:func:`modernize` is the one call the Keras importer makes before translating: an old
configuration becomes the modern one, old weights the modern arrays, and the saving version
is worked out once (:class:`SavedBy`). What it converts, each as the Keras of the time (or
tf.keras' ``preprocess_weights_for_loading``, which loads old files) did:

* Keras <= 2.2.2 wrote a ``Sequential`` configuration as a bare list of layers;
* Keras 1 layer options: ``output_dim`` (units), ``inner_activation``
  (recurrent_activation), ``bias`` (use_bias), ``input_dim`` / ``input_length`` (the input
  shape), ``Convolution1D`` (``nb_filter``, ``filter_length``, ``border_mode``,
  ``subsample_length``), pooling ``pool_length`` / ``stride``; initializers, regularizers,
  constraints, dropout and ``consume_less`` do not matter at inference;
* Keras 1 ``save_weights`` of an LSTM with per-gate arrays ``W_i, U_i, b_i, W_c, U_c, b_c,
  W_f, U_f, b_f, W_o, U_o, b_o`` (12, gate order i, c, f, o) become ``kernel,
  recurrent_kernel, bias`` in Keras 2's order i, f, c, o; a GRU's 9 (``z, r, h``) are
  concatenated in that order; Keras 1 ``Convolution1D`` kernels ``(k, 1, in, filters)`` or
  ``(filters, in, k, 1)`` become ``(k, in, filters)``;
* convolution kernels saved with the Theano backend are flipped along the steps axis
  (Theano convolves, TensorFlow correlates: Keras' ``convert_kernel``).

A file without a ``keras_version`` attribute was written by Keras 1 (tf.keras assumes the
same). A GRU whose configuration has no ``reset_after`` predates the option (added in
Keras 2.1, keras-team/keras pull request 9112 of January 2018, default False throughout
Keras 2; tf.keras 2 made True the default); its bias shape decides (``3H``:
``reset_after=False``), see :func:`fastgate.importers.keras._recurrent`.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import WeightFormatError
from .keras_hdf5 import LegacyWeights

__all__ = ["SavedBy", "saved_by", "modernize", "Keras1Weights"]

#: Keras 1 option -> Keras 2 option, for the layers fastgate translates.
_RENAMED_OPTIONS = {
    "output_dim": "units", "inner_activation": "recurrent_activation", "bias": "use_bias",
    "nb_filter": "filters", "filter_length": "kernel_size", "border_mode": "padding",
    "subsample_length": "strides", "pool_length": "pool_size", "stride": "strides",
    "p": "rate",
}
_RENAMED_CLASSES = {"Convolution1D": "Conv1D"}
_RECURRENT_CLASSES = {"LSTM", "GRU", "SimpleRNN"}
# Keras 1 recurrent layers' default inner activation, when a config does not record it.
_KERAS1_DEFAULTS = {"LSTM": {"recurrent_activation": "hard_sigmoid"},
                    "GRU": {"recurrent_activation": "hard_sigmoid"}}
_LSTM_GATES = ("i", "c", "f", "o")   # Keras 1 order of the 12 per-gate arrays
_GRU_GATES = ("z", "r", "h")


@dataclass(frozen=True)
class SavedBy:
    """Which Keras wrote a file, as far as the file says.

    ``keras_version`` and ``backend`` are what the file records (``None`` if nothing);
    ``major`` the version fastgate follows; ``assumed`` says what was inferred and why,
    ``None`` when the file recorded its version; ``notes`` lists what :func:`modernize`
    converted.
    """

    keras_version: str | None
    backend: str | None
    major: int
    assumed: str | None = None
    notes: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        """One line for ``fastgate inspect``: the version recorded, or what was assumed."""
        if self.assumed is None:
            text = f"Keras {self.keras_version}"
        else:
            text = f"no Keras version recorded; assumed Keras {self.major} ({self.assumed})"
        return text + (f", backend {self.backend}" if self.backend else "")


def _is_keras1_config(config: Any) -> bool:
    """Whether a configuration uses Keras 1 option names (``output_dim`` on a recurrent or
    Dense layer, ``inner_activation``, ``nb_filter``...)."""
    text = repr(config)
    return any(f"'{key}'" in text for key in ("inner_activation", "nb_filter", "consume_less",
                                              "border_mode", "W_regularizer"))


def saved_by(keras_version: Any, backend: Any, config: Any, *,
             weights_attribute_missing: bool = False) -> SavedBy:
    """The saving version of a file from its attributes, else from its configuration.

    ``weights_attribute_missing``: the weights group has no ``keras_version`` attribute,
    which Keras 1's ``save_weights`` never wrote (tf.keras then assumes Keras 1).
    """
    version = str(keras_version) if keras_version else None
    backend = str(backend) if backend else None
    if version:
        match = re.match(r"\s*(\d+)", version)
        if match:
            return SavedBy(version, backend, int(match.group(1)))
    if config is not None and _is_keras1_config(config):
        return SavedBy(None, backend, 1, "the configuration uses Keras 1 option names")
    text = repr(config)
    if weights_attribute_missing and config is None:
        return SavedBy(None, backend, 1, "a weights file without keras_version is Keras 1's "
                                         "save_weights")
    if "'batch_input_shape'" in text or "'time_major'" in text:
        return SavedBy(None, backend, 2, "the configuration uses Keras 2 option names")
    if weights_attribute_missing:
        return SavedBy(None, backend, 1, "a weights file without keras_version is Keras 1's "
                                         "save_weights")
    return SavedBy(None, backend, 3, "nothing in the file or its configuration says older")


# ----------------------------------------------------------------------------- configs
def _modern_layer(entry: dict, major: int, notes: list[str]) -> dict:
    """One layer entry (``{"class_name", "config", ...}``) with modern names."""
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
        return entry
    entry = dict(entry)
    kind = entry.get("class_name")
    config = dict(entry["config"])
    if kind in _RENAMED_CLASSES:
        notes.append(f"{config.get('name')}: Keras 1 {kind} read as {_RENAMED_CLASSES[kind]}")
        kind = entry["class_name"] = _RENAMED_CLASSES[kind]
    if major == 1:
        for old, new in _RENAMED_OPTIONS.items():
            if old in config and new not in config and not (
                    kind == "Embedding" and old == "output_dim"):
                config[new] = config.pop(old)
        for key, value in _KERAS1_DEFAULTS.get(kind, {}).items():
            config.setdefault(key, value)
        _keras1_input_shape(kind, config)
        if kind == "Conv1D" or kind in ("MaxPooling1D", "AveragePooling1D"):
            for key in ("kernel_size", "strides", "pool_size"):
                if isinstance(config.get(key), int):
                    config[key] = [config[key]]
    for wrapped in ("layer", "backward_layer"):
        if isinstance(config.get(wrapped), dict):
            config[wrapped] = _modern_layer(config[wrapped], major, notes)
    entry["config"] = config
    return entry


def _keras1_input_shape(kind: str | None, config: dict) -> None:
    """Keras 1 ``input_dim`` / ``input_length`` -> ``batch_input_shape``."""
    if config.get("batch_input_shape") is not None:
        return
    if kind == "Embedding":
        if "input_length" in config:
            config["batch_input_shape"] = [None, config.get("input_length")]
        return
    if config.get("input_dim") is not None and kind != "InputLayer":
        if kind in _RECURRENT_CLASSES or kind == "Conv1D":
            config["batch_input_shape"] = [None, config.get("input_length"),
                                           config["input_dim"]]
        elif kind == "Dense":
            config["batch_input_shape"] = [None, config["input_dim"]]


def modern_config(config: dict, major: int, notes: list[str]) -> dict:
    """``config`` (a model configuration of any Keras version) in Keras 2.2.3+ form."""
    config = copy.deepcopy(config)
    body = config.get("config")
    if config.get("class_name") == "Sequential" and isinstance(body, list):
        notes.append("Sequential configuration as a bare list of layers (Keras 1 to 2.2.2)")
        body = config["config"] = {"name": "sequential", "layers": body}
    if isinstance(body, dict) and isinstance(body.get("layers"), list):
        body["layers"] = [_modern_layer(entry, major, notes) for entry in body["layers"]]
    return config


# ----------------------------------------------------------------------------- weights
def _gate_of(name: str, gates: tuple[str, ...]) -> tuple[str, str] | None:
    """``('W', 'i')`` for a Keras 1 array name such as ``lstm_1_W_i:0``."""
    match = re.search(r"_([WUb])_([a-z])(?::\d+)?$", name)
    if match and match.group(2) in gates:
        return match.group(1), match.group(2)
    return None


def merge_gate_arrays(weights: list[tuple[str, np.ndarray]], cell: str, path: Any,
                      layer: str) -> list[tuple[str, np.ndarray]]:
    """Keras 1 per-gate arrays (LSTM 12, GRU 9) as ``kernel, recurrent_kernel, bias``.

    Arrays are found by their names (``..._W_i``) when every name says its gate, else taken
    in Keras 1's order (per gate: W, U, b). LSTM gates become Keras 2's order i, f, c, o;
    GRU's stay z, r, h.
    """
    gates = _LSTM_GATES if cell == "LSTM" else _GRU_GATES
    by_part: dict[tuple[str, str], np.ndarray] = {}
    named = [_gate_of(name, gates) for name, _ in weights]
    if all(named) and len(set(named)) == len(weights):
        by_part = {part: array for part, (_, array) in zip(named, weights)}
    else:
        by_part = {(kind, gate): weights[3 * g + k][1] for g, gate in enumerate(gates)
                   for k, kind in enumerate("WUb")}
    order = ("i", "f", "c", "o") if cell == "LSTM" else gates
    merged = []
    for kind, label in (("W", "kernel"), ("U", "recurrent_kernel"), ("b", "bias")):
        parts = [by_part[(kind, gate)] for gate in order]
        if len({p.shape for p in parts}) != 1:
            raise WeightFormatError(f"Keras 1 per-gate {kind} arrays differ in shape: "
                                    f"{[p.shape for p in parts]}", path=path, layer=layer,
                                    tensor=label)
        merged.append((f"{layer}/{label} (Keras 1 per-gate arrays)",
                       np.concatenate(parts, axis=-1)))
    return merged


def keras1_conv1d_kernel(kernel: np.ndarray, filters: int, size: int, path: Any,
                         layer: str) -> np.ndarray:
    """A Keras 1 ``Convolution1D`` kernel as ``(kernel_size, in_channels, filters)``."""
    shape = kernel.shape
    if shape[:2] != (size, 1) or shape[3] != filters:
        if shape[0] != filters or shape[2:] != (size, 1):
            raise WeightFormatError(f"Keras 1 Convolution1D kernel has shape {shape}, "
                                    f"expected ({size}, 1, in, {filters}) or ({filters}, in, "
                                    f"{size}, 1)", path=path, layer=layer, tensor="kernel")
        kernel = np.transpose(kernel, (2, 3, 1, 0))
    return kernel[:, 0, :, :]


class Keras1Weights(LegacyWeights):
    """Legacy-layout weights read as the Keras 2 arrays of each layer.

    Wraps a :class:`~fastgate.importers.keras_hdf5.LegacyWeights`: per-gate recurrent arrays
    are merged, Keras 1 and Theano convolution kernels converted, inside ``Bidirectional``
    and ``TimeDistributed`` too. ``layers`` maps each layer name of the (modern)
    configuration to its ``(class_name, config)``.
    """

    def __init__(self, weights: LegacyWeights, layers: dict[str, tuple[str, dict]],
                 backend: str | None) -> None:
        self.__dict__.update(weights.__dict__)
        self.layers = layers
        self.backend = backend

    def get(self, layer_name: str) -> list[tuple[str, np.ndarray]]:
        weights = super().get(layer_name)
        kind, config = self.layers.get(layer_name, (None, {}))
        return self._convert(kind, config, weights, layer_name)

    def _convert(self, kind: str | None, config: dict, weights: list, layer: str) -> list:
        if kind == "Bidirectional":
            half = len(weights) // 2
            inner = config.get("layer") or {}
            backward = config.get("backward_layer") or inner
            return (self._convert(inner.get("class_name"), inner.get("config", {}),
                                  weights[:half], layer)
                    + self._convert(backward.get("class_name"), backward.get("config", {}),
                                    weights[half:], layer))
        if kind == "TimeDistributed":
            inner = config.get("layer") or {}
            return self._convert(inner.get("class_name"), inner.get("config", {}), weights,
                                 layer)
        if kind == "LSTM" and len(weights) == 12 or kind == "GRU" and len(weights) == 9:
            return merge_gate_arrays(weights, kind, self.path, layer)
        if kind == "Conv1D" and weights:
            name, kernel = weights[0]
            if kernel.ndim == 4:
                (size,) = config.get("kernel_size") or [kernel.shape[0]]
                kernel = keras1_conv1d_kernel(kernel, int(config.get("filters", 0)), int(size),
                                              self.path, layer)
            if self.backend == "theano":
                kernel = np.ascontiguousarray(kernel[::-1])  # Theano convolves: flip steps
            return [(name, kernel)] + list(weights[1:])
        return weights


def _layer_table(config: dict) -> dict[str, tuple[str, dict]]:
    body = config.get("config")
    layers = body.get("layers", []) if isinstance(body, dict) else []
    table = {}
    for entry in layers:
        if isinstance(entry, dict) and isinstance(entry.get("config"), dict):
            name = entry.get("name") or entry["config"].get("name")
            table[str(name)] = (str(entry.get("class_name")), entry["config"])
    return table


def modernize(config: dict, weights: Any, *, keras_version: Any = None, backend: Any = None,
              weights_attribute_missing: bool = False
              ) -> tuple[dict, Any, SavedBy]:
    """``(config, weights, saved_by)`` of a file of any Keras version, in modern form.

    ``config`` is a model configuration dict; ``weights`` what the importer reads arrays
    from (a :class:`~fastgate.importers.keras_hdf5.LegacyWeights` is wrapped in
    :class:`Keras1Weights` when old arrays may need converting; other kinds are returned
    as they are). ``keras_version`` / ``backend`` are the file's attributes.
    """
    if isinstance(weights, LegacyWeights):
        keras_version = keras_version or weights.keras_version
        backend = backend or weights.backend
        weights_attribute_missing = weights_attribute_missing or weights.keras_version is None
    found = saved_by(keras_version, backend, config,
                     weights_attribute_missing=weights_attribute_missing)
    notes: list[str] = []
    config = modern_config(config, found.major, notes)
    if isinstance(weights, LegacyWeights) and (found.major == 1 or found.backend == "theano"):
        weights = Keras1Weights(weights, _layer_table(config), found.backend)
        notes.append("Keras 1 / Theano weights converted as tf.keras' "
                     "preprocess_weights_for_loading did")
    found = SavedBy(found.keras_version, found.backend, found.major, found.assumed,
                    tuple(notes))
    return config, weights, found
