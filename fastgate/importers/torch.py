"""Import PyTorch modules, state_dicts and weight files: :func:`from_torch`.

::

    lstm = fastgate.from_torch("model.pt", prefix="lstm.", batch_first=True)
    fc = fastgate.from_torch("model.pt", prefix="fc.")
    out, (h_n, c_n) = lstm(x)
    logits = fc(out[:, -1])

What a module is comes from its state_dict's keys and shapes alone:

* ``weight_ih_l{k}[_reverse]``, ``weight_hh_l..``, ``bias_ih_l..``, ``bias_hh_l..``,
  ``weight_hr_l..``: :class:`~fastgate.LSTM` (4 gates), :class:`~fastgate.GRU` (3) or
  :class:`~fastgate.SimpleRNN` (1), with ``num_layers``, ``bidirectional``, ``bias`` and
  ``proj_size`` read from which keys exist;
* ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``: :class:`~fastgate.LSTMCell`,
  :class:`~fastgate.GRUCell` or :class:`~fastgate.RNNCell`;
* ``weight`` (2-D) and ``bias``: :class:`~fastgate.Dense` (``nn.Linear``);
* ``weight`` (2-D) alone: ``nn.Embedding`` or ``nn.Linear(bias=False)``, which a state_dict
  cannot tell apart: say which with ``kind="embedding"`` or ``kind="linear"``.

The number of gates is ``weight_hh.shape[0] / hidden_size``, with ``hidden_size`` the width
of ``weight_hh`` (of ``weight_hr`` for a projected LSTM). What a state_dict cannot say,
``batch_first`` and an ``nn.RNN``'s ``nonlinearity``, are arguments defaulting like PyTorch;
a live module says them itself.

PyTorch's gate order is fastgate's (:data:`fastgate.layout.GATE_ORDERS`); importing is a
transpose per matrix (PyTorch stores ``W`` for ``W x``, fastgate ``x W``). Files are read
without PyTorch (:mod:`fastgate.importers.torch_pickle`, :mod:`fastgate.importers.safetensors`).
The way back, a state_dict or a live module, is :mod:`fastgate.export.torch`.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from ..cells import GRUCell, LSTMCell, RNNCell, _Cell
from ..errors import ConfigError, UnsupportedLayerError, WeightFormatError
from ..layers import GRU, LSTM, RecurrentLayer, SimpleRNN
from ..layout import GATE_COUNT, CellWeights, reorder_gates
from ..ops import Dense, Embedding

__all__ = ["from_torch", "load_state_dict", "KINDS"]

#: The values of ``kind=``: what a module can be imported as.
KINDS = ("lstm", "gru", "rnn", "lstm_cell", "gru_cell", "rnn_cell", "linear", "embedding")

_CELL_OF_GATES = {count: cell for cell, count in GATE_COUNT.items()}
_LAYER_CLASSES: dict[str, type[RecurrentLayer]] = {"lstm": LSTM, "gru": GRU, "rnn": SimpleRNN}
_CELL_CLASSES: dict[str, type[_Cell]] = {"lstm": LSTMCell, "gru": GRUCell, "rnn": RNNCell}
_LAYER_PARAM = re.compile(r"(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?")
_CELL_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")

Imported = Any  # LSTM | GRU | SimpleRNN | LSTMCell | GRUCell | RNNCell | Dense | Embedding


# ---------------------------------------------------------------------- reading sources
def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every tensor of a ``.pt``/``.pth`` or ``.safetensors`` file, without PyTorch.

    ``.safetensors`` files are recognised by suffix or content; anything else is read as a
    ``torch.save`` file (zip or legacy format). Raises
    :class:`~fastgate.errors.WeightFormatError` on any malformed or unsafe file.
    """
    from .safetensors import is_safetensors, read_safetensors
    from .torch_pickle import load_torch_file

    if str(path).endswith(".safetensors") or is_safetensors(path):
        return read_safetensors(path)
    return load_torch_file(path)


def _to_numpy(value: Any, name: str, where: Any) -> np.ndarray:
    """A tensor or array of a state_dict as a NumPy array."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch.Tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    if not isinstance(value, np.ndarray):
        raise WeightFormatError(f"expected a tensor or array, got {type(value).__name__}",
                                path=where, tensor=name)
    return value


def _flatten_mapping(state: Mapping[Any, Any]) -> dict[Any, Any]:
    """Nested mappings (a checkpoint ``{"model": state_dict, "epoch": 3}``) joined with dots.

    Numbers, strings and ``None`` are dropped, as when reading a file; anything else is kept
    for :func:`_to_numpy` to accept or refuse.
    """
    flat: dict[Any, Any] = {}
    stack: list[tuple[str, Mapping[Any, Any], int]] = [("", state, 0)]
    while stack:
        name, mapping, depth = stack.pop()
        if depth > 32:
            raise WeightFormatError("mappings nested deeper than 32 levels")
        for key, value in mapping.items():
            full = f"{name}{key}" if isinstance(key, str) else key
            if isinstance(value, Mapping):
                stack.append((f"{full}.", value, depth + 1))
            elif value is None or isinstance(value, (int, float, str, bytes)):
                continue
            else:
                flat[full] = value
    return flat


def _is_torch_module(value: Any) -> bool:
    """Whether ``value`` is a ``torch.nn.Module``, without importing torch."""
    return any(cls.__module__ == "torch.nn.modules.module" and cls.__name__ == "Module"
               for cls in type(value).__mro__)


# ---------------------------------------------------------------------- choosing a module
def _module_of(key: str) -> tuple[str, str]:
    module, _, param = key.rpartition(".")
    return (module + "." if module else ""), param


def _select(state: Mapping[str, Any], prefix: str, where: Any
            ) -> tuple[str, dict[str, Any]]:
    """The one module of ``state`` under ``prefix``: ``(module prefix, {param: value})``."""
    if prefix and not prefix.endswith(".") and any(k.startswith(prefix + ".") for k in state):
        prefix += "."
    keys = [key for key in state if key.startswith(prefix)]
    if not keys:
        candidates = sorted({_module_of(key)[0] for key in state})
        raise WeightFormatError(f"no tensor has the prefix {prefix!r}; modules in the "
                                f"state_dict: {candidates}", path=where)
    modules: dict[str, dict[str, Any]] = {}
    for key in keys:
        module, param = _module_of(key)
        modules.setdefault(module, {})[param] = state[key]
    if len(modules) > 1:
        described = ", ".join(f"{module!r} ({', '.join(list(params)[:3])}"
                              f"{', ...' if len(params) > 3 else ''})"
                              for module, params in sorted(modules.items()))
        raise WeightFormatError(
            f"the state_dict holds {len(modules)} modules"
            f"{' under prefix ' + repr(prefix) if prefix else ''}; pick one with prefix=, "
            f"one of: {described}", path=where)
    ((module, params),) = modules.items()
    return module, params


def _infer_kind(params: Mapping[str, np.ndarray], module: str, where: Any) -> str:
    """The kind (:data:`KINDS`) a module's parameters describe."""
    names = set(params)
    if any(_LAYER_PARAM.fullmatch(name) for name in names):
        return "layer"
    if "weight_ih" in names or "weight_hh" in names:
        return "cell"
    if names in ({"weight", "bias"},) and params["weight"].ndim == 2:
        return "linear"
    if names == {"weight"} and params["weight"].ndim == 2:
        raise WeightFormatError(
            "a lone 2-D 'weight' is either nn.Embedding or nn.Linear(bias=False); say which "
            "with kind='embedding' or kind='linear'", path=where, layer=module or None)
    raise UnsupportedLayerError(
        f"tensors {sorted(names)} are not an LSTM/GRU/RNN, a cell, a Linear or an Embedding",
        path=where, layer=module or None)


# ---------------------------------------------------------------------- building
class _Builder:
    """Translates one module's parameters into fastgate weights, naming what is wrong."""

    def __init__(self, params: Mapping[str, np.ndarray], module: str, where: Any) -> None:
        self.params = params
        self.module = module
        self.where = where

    def error(self, message: str, name: str | None = None) -> WeightFormatError:
        return WeightFormatError(message, path=self.where, layer=self.module or None,
                                 tensor=None if name is None else self.module + name)

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.params:
            raise self.error("missing", name)
        array = self.params[name]
        if array.dtype.kind != "f":
            raise self.error(f"expected floating-point weights, got dtype {array.dtype}", name)
        if array.shape != shape:
            raise self.error(f"has shape {array.shape}, expected {shape}", name)
        return array

    def dtype(self, name: str) -> type:
        return np.float64 if self.params[name].dtype == np.float64 else np.float32

    def matrix(self, name: str) -> np.ndarray:
        array = self.params.get(name)
        if array is None:
            raise self.error("missing", name)
        if array.ndim != 2:
            raise self.error(f"expected a matrix, got shape {array.shape}", name)
        return array

    def cell_weights(self, cell: str, suffix: str, in_width: int, hidden: int, width: int,
                     proj_size: int, bias: bool, dtype: type) -> CellWeights:
        """One layer and direction, PyTorch ``W`` (``G*H x in``) -> fastgate ``x W``."""
        rows = GATE_COUNT[cell] * hidden

        def kernel(name: str, columns: int) -> np.ndarray:
            matrix = self.get(name + suffix, (rows, columns))
            return reorder_gates(matrix.T.astype(dtype), cell, "torch")

        def bias_vector(name: str) -> np.ndarray:
            if not bias:
                return np.zeros(rows, dtype)
            return reorder_gates(self.get(name + suffix, (rows,)).astype(dtype), cell, "torch")

        projection = None
        if proj_size:
            projection = self.get("weight_hr" + suffix, (proj_size, hidden)).T.astype(dtype)
        return CellWeights(kernel("weight_ih", in_width), kernel("weight_hh", width),
                           bias_vector("bias_ih"), bias_vector("bias_hh"), projection)

    def gates_and_hidden(self, suffix: str) -> tuple[str, int, int]:
        """``(cell, hidden_size, proj_size)`` from ``weight_hh`` (and ``weight_hr``)."""
        weight_hh = self.matrix("weight_hh" + suffix)
        proj_size = 0
        hidden = weight_hh.shape[1]
        if "weight_hr" + suffix in self.params:
            weight_hr = self.matrix("weight_hr" + suffix)
            proj_size, hidden = weight_hr.shape
            if weight_hh.shape[1] != proj_size:
                raise self.error(f"has shape {weight_hh.shape}, expected (4*{hidden}, "
                                 f"{proj_size}) for weight_hr{suffix} of shape "
                                 f"{weight_hr.shape}", "weight_hh" + suffix)
        if hidden == 0 or weight_hh.shape[0] % hidden or \
                weight_hh.shape[0] // hidden not in _CELL_OF_GATES:
            raise self.error(f"has shape {weight_hh.shape}: its rows must be 1, 3 or 4 times "
                             f"the hidden size {hidden} (RNN, GRU, LSTM)", "weight_hh" + suffix)
        cell = _CELL_OF_GATES[weight_hh.shape[0] // hidden]
        if proj_size and cell != "lstm":
            raise self.error("only an LSTM has a projection", "weight_hr" + suffix)
        return cell, hidden, proj_size

    def layer(self, expected_cell: str | None, batch_first: bool, activation: str
              ) -> RecurrentLayer:
        entries: dict[tuple[int, int], set[str]] = {}
        for name in self.params:
            match = _LAYER_PARAM.fullmatch(name)
            if match is None:
                raise self.error("unexpected tensor for an LSTM/GRU/RNN layer", name)
            entries.setdefault((int(match[2]), int(bool(match[3]))), set()).add(match[1])
        num_layers = max(layer for layer, _ in entries) + 1
        dirs = 2 if any(direction for _, direction in entries) else 1
        cell, hidden, proj_size = self.gates_and_hidden("_l0")
        self._check_cell(cell, expected_cell)
        bias = "bias_ih_l0" in self.params
        expected_names = {"weight_ih", "weight_hh"} | ({"bias_ih", "bias_hh"} if bias else set()) \
            | ({"weight_hr"} if proj_size else set())
        width = proj_size or hidden
        input_size = self.matrix("weight_ih_l0").shape[1]
        dtype = self.dtype("weight_ih_l0")
        weights = []
        for layer in range(num_layers):
            for direction in range(dirs):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                names = entries.get((layer, direction), set())
                for name in sorted(expected_names - names):
                    raise self.error("missing", name + suffix)
                for name in sorted(names - expected_names):
                    raise self.error(f"unexpected (layer 0 has {sorted(expected_names)})",
                                     name + suffix)
                weights.append(self.cell_weights(
                    cell, suffix, input_size if layer == 0 else dirs * width, hidden, width,
                    proj_size, bias, dtype))
        options: dict[str, Any] = {"bidirectional": dirs == 2, "dtype": dtype,
                                   "batch_first": batch_first, "bias": bias}
        if cell == "rnn":
            options["activation"] = activation
        return _LAYER_CLASSES[cell](weights, **options)

    def cell(self, expected_cell: str | None, activation: str) -> _Cell:
        for name in self.params:
            if name not in _CELL_PARAMS:
                raise self.error("unexpected tensor for an LSTM/GRU/RNN cell", name)
        cell, hidden, _ = self.gates_and_hidden("")
        self._check_cell(cell, expected_cell)
        bias = "bias_ih" in self.params or "bias_hh" in self.params
        input_size = self.matrix("weight_ih").shape[1]
        dtype = self.dtype("weight_ih")
        weights = self.cell_weights(cell, "", input_size, hidden, hidden, 0, bias, dtype)
        options: dict[str, Any] = {"dtype": dtype, "bias": bias}
        if cell == "rnn":
            options["activation"] = activation
        return _CELL_CLASSES[cell](weights, **options)

    def _check_cell(self, cell: str, expected: str | None) -> None:
        if expected is not None and cell != expected:
            raise self.error(f"the weights describe a {cell.upper()} "
                             f"({GATE_COUNT[cell]} gates), not the {expected.upper()} "
                             f"that was asked for")

    def linear(self) -> Dense:
        weight = self.matrix("weight")
        unexpected = set(self.params) - {"weight", "bias"}
        if unexpected:
            raise self.error("unexpected tensor for a Linear", sorted(unexpected)[0])
        dtype = self.dtype("weight")
        bias = None
        if "bias" in self.params:
            bias = self.get("bias", (weight.shape[0],))
        self.get("weight", weight.shape)  # dtype check
        return Dense(weight.T.astype(dtype), None if bias is None else bias.astype(dtype),
                     dtype=dtype)

    def embedding(self) -> Embedding:
        weight = self.matrix("weight")
        if set(self.params) != {"weight"}:
            raise self.error("unexpected tensor for an Embedding",
                             sorted(set(self.params) - {"weight"})[0])
        self.get("weight", weight.shape)
        return Embedding(np.array(weight, dtype=self.dtype("weight")), dtype=self.dtype("weight"))


def _build(params: Mapping[str, np.ndarray], module: str, where: Any, kind: str | None,
           batch_first: bool, nonlinearity: str) -> Imported:
    builder = _Builder(params, module, where)
    found = _infer_kind(params, module, where) if kind is None or kind in (
        "lstm", "gru", "rnn", "lstm_cell", "gru_cell", "rnn_cell") else kind
    expected_cell = None
    if kind is not None and kind not in ("linear", "embedding"):
        expected_cell = kind.replace("_cell", "")
        wanted = "cell" if kind.endswith("_cell") else "layer"
        if found != wanted:
            raise builder.error(f"kind={kind!r} was asked for, but the tensors "
                                f"{sorted(params)} describe a {found}")
    if nonlinearity not in ("tanh", "relu"):
        raise ConfigError(f"nonlinearity must be 'tanh' or 'relu' (nn.RNN), got "
                          f"{nonlinearity!r}")
    if found == "layer":
        result = builder.layer(expected_cell, batch_first, nonlinearity)
    elif found == "cell":
        result = builder.cell(expected_cell, nonlinearity)
    elif found == "linear":
        return builder.linear()
    else:
        return builder.embedding()
    cell = result.layer.cell if isinstance(result, _Cell) else result.cell
    if cell != "rnn" and nonlinearity != "tanh":
        raise ConfigError(f"nonlinearity={nonlinearity!r} applies to nn.RNN / nn.RNNCell, but "
                          f"the weights describe an {cell.upper()}")
    return result


# ---------------------------------------------------------------------- live modules
def _module_kind(module: Any) -> str | None:
    """:data:`KINDS` entry of a live torch module, or ``None`` for any other module."""
    import torch.nn as nn

    table = ((nn.LSTM, "lstm"), (nn.GRU, "gru"), (nn.RNN, "rnn"), (nn.LSTMCell, "lstm_cell"),
             (nn.GRUCell, "gru_cell"), (nn.RNNCell, "rnn_cell"), (nn.Linear, "linear"),
             (nn.Embedding, "embedding"))
    for cls, kind in table:
        if isinstance(module, cls):
            return kind
    return None


def _live_options(module: Any, kind: str | None, batch_first: bool | None,
                  nonlinearity: str | None) -> tuple[bool | None, str | None]:
    """Options read from a live module, checked against those passed explicitly."""
    name = type(module).__name__
    if kind in ("lstm", "gru", "rnn"):
        if batch_first is not None and batch_first != module.batch_first:
            raise ConfigError(f"batch_first={batch_first} was passed, but the {name} module "
                              f"has batch_first={module.batch_first}")
        batch_first = module.batch_first  # dropout is ignored: inference runs eval mode
    if kind in ("rnn", "rnn_cell"):
        if nonlinearity is not None and nonlinearity != module.nonlinearity:
            raise ConfigError(f"nonlinearity={nonlinearity!r} was passed, but the {name} "
                              f"module has nonlinearity={module.nonlinearity!r}")
        nonlinearity = module.nonlinearity
    if kind == "embedding" and module.max_norm is not None:
        raise UnsupportedLayerError(f"{name} with max_norm renormalises its table at lookup; "
                                    f"not supported")
    return batch_first, nonlinearity


def _live_module(source: Any, prefix: str, kind: str | None, batch_first: bool | None,
                 nonlinearity: str | None
                 ) -> tuple[Mapping[str, Any], str, str, bool | None, str | None]:
    """``(state_dict, kind, prefix, batch_first, nonlinearity)`` of a live torch module, or
    of its submodule named by ``prefix`` (then the returned prefix is ``""``)."""
    module = source
    live_kind = _module_kind(source)
    if live_kind is None:  # a whole model: find the submodule named by prefix
        state_keys = list(source.state_dict())
        path = _select({key: None for key in state_keys}, prefix, None)[0]
        try:
            module = source.get_submodule(path.rstrip("."))
        except AttributeError as error:
            raise WeightFormatError(f"no submodule {path!r}: {error}") from error
        live_kind = _module_kind(module)
        if live_kind is None:
            raise UnsupportedLayerError(f"{type(module).__name__} is not a supported "
                                        f"module", layer=path or None)
        prefix = ""
    if kind is not None and kind != live_kind:
        raise ConfigError(f"kind={kind!r} was asked for, but the module is a "
                          f"{type(module).__name__}")
    batch_first, nonlinearity = _live_options(module, live_kind, batch_first, nonlinearity)
    return module.state_dict(), live_kind, prefix, batch_first, nonlinearity


def _check_keys(state: Mapping[str, Any], where: Any) -> None:
    """A state_dict must hold something, under string keys (else WeightFormatError)."""
    if not state:
        raise WeightFormatError("the state_dict is empty", path=where)
    for key in state:
        if not isinstance(key, str):
            raise WeightFormatError(f"state_dict keys must be strings, got {key!r:.60}",
                                    path=where)


# ---------------------------------------------------------------------- public API
def from_torch(source: Any, prefix: str = "", batch_first: bool | None = None,
               nonlinearity: str | None = None, *, kind: str | None = None) -> Imported:
    """Build the fastgate equivalent of a PyTorch module, state_dict or weight file.

    Parameters
    ----------
    source : torch module, mapping, str or path-like
        An ``nn.LSTM``/``nn.GRU``/``nn.RNN``/``nn.LSTMCell``/``nn.GRUCell``/``nn.RNNCell``/
        ``nn.Linear``/``nn.Embedding`` (or any module holding one, with ``prefix``); a
        state_dict of tensors or NumPy arrays; or the path of a ``.pt``/``.pth`` file
        (``torch.save`` zip or legacy format) or ``.safetensors`` file. Files are read
        without PyTorch and without running code from them.
    prefix : str
        Key prefix of the module to import from a larger state_dict, e.g. ``"lstm."``
        (nested checkpoint dicts are joined with dots: ``"model.lstm."``). Without it the
        state_dict must hold a single module; otherwise the error lists the candidates.
    batch_first : bool, optional
        For LSTM/GRU/RNN: the layout of inputs and outputs. A state_dict cannot say it;
        defaults to PyTorch's ``False``. A live module's own value is used (passing a
        different one is an error).
    nonlinearity : {"tanh", "relu"}, optional
        For ``nn.RNN``/``nn.RNNCell``; defaults to ``"tanh"``, or the live module's.
    kind : str, optional
        One of :data:`KINDS`, to assert what the weights are, or to choose between
        ``"linear"`` and ``"embedding"`` for a lone 2-D ``weight``.

    Returns
    -------
    LSTM, GRU, SimpleRNN, LSTMCell, GRUCell, RNNCell, Dense or Embedding
        Called like the PyTorch module: ``out, h_n = gru(x, h0)``,
        ``out, (h_n, c_n) = lstm(x, (h0, c0))`` (``lengths=`` for packed sequences),
        ``h = gru_cell(x, h)``, ``h, c = lstm_cell(x, (h, c))``, ``y = linear(x)``,
        ``v = embedding(ids)``. The dtype is float64 for float64 weights, else float32.

    Raises
    ------
    WeightFormatError
        Malformed, unsafe, truncated or inconsistent weights (missing tensors, wrong
        shapes), or an ambiguous prefix; the message names the file, module and tensor.
    UnsupportedLayerError
        The module is none of the supported kinds.
    ConfigError
        Options that contradict the module (e.g. ``nonlinearity`` for an LSTM).
    """
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(prefix, str):
        raise ConfigError(f"prefix must be a string, got {type(prefix).__name__}")
    where: Any = None
    if isinstance(source, (str, os.PathLike)):
        where = os.fspath(source)
        state: Mapping[str, Any] = load_state_dict(source)
    elif isinstance(source, Mapping):
        state = _flatten_mapping(source)
    elif _is_torch_module(source):
        state, kind, prefix, batch_first, nonlinearity = _live_module(
            source, prefix, kind, batch_first, nonlinearity)
    else:
        raise ConfigError(f"source must be a torch module, a state_dict or a file path, got "
                          f"{type(source).__name__}")
    _check_keys(state, where)
    module_prefix, params = _select(state, prefix, where)
    arrays = {name: _to_numpy(value, module_prefix + name, where)
              for name, value in params.items()}
    return _build(arrays, module_prefix, where, kind,
                  False if batch_first is None else bool(batch_first),
                  "tanh" if nonlinearity is None else nonlinearity)
