"""fastgate weights as PyTorch's: :func:`to_torch_state_dict` and :func:`torch_module`.

PyTorch's gate order is fastgate's (:data:`fastgate.layout.GATE_ORDERS`); exporting is a
transpose per matrix (fastgate stores ``x W``, PyTorch ``W x``). ``torch`` is imported only by
:func:`torch_module`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..cells import _Cell
from ..errors import ConfigError
from ..layers import RecurrentLayer
from ..layout import reorder_gates
from ..ops import Dense, Embedding

__all__ = ["to_torch_state_dict", "torch_module"]

#: Dense activations and the ``torch.nn`` module computing each (Keras 3's hard_sigmoid is
#: ``nn.Hardsigmoid``, x/6 + 1/2; GELU exact like Keras' default).
_TORCH_ACTIVATIONS = {"relu": "ReLU", "tanh": "Tanh", "sigmoid": "Sigmoid", "elu": "ELU",
                      "selu": "SELU", "softsign": "Softsign", "softplus": "Softplus",
                      "hard_sigmoid": "Hardsigmoid", "silu": "SiLU", "gelu": "GELU"}


def _recurrent_checks(obj: Any, layer: RecurrentLayer) -> None:
    """Refuse what ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (and their cells) cannot compute."""
    name = type(obj).__name__
    if layer.cell == "rnn":
        if layer.activation not in ("tanh", "relu"):
            raise ConfigError(f"{name} with activation {layer.activation!r} has no PyTorch "
                              f"equivalent (nn.RNN supports tanh and relu)")
        return
    if layer.activation != "tanh" or layer.recurrent_activation != "sigmoid":
        raise ConfigError(f"{name} with activations {layer.activation!r}/"
                          f"{layer.recurrent_activation!r} has no PyTorch equivalent")
    if layer.cell == "gru" and not layer.reset_after:
        raise ConfigError(f"{name} with reset_after=False has no PyTorch equivalent")


def _recurrent_state(obj: Any, layer: RecurrentLayer, suffixes: list[str], prefix: str,
                     bias: bool) -> dict[str, np.ndarray]:
    cell = layer.cell
    state = {}
    for suffix, w in zip(suffixes, layer.weights):
        state[prefix + "weight_ih" + suffix] = np.ascontiguousarray(
            reorder_gates(w.input_kernel, cell, "fastgate", "torch").T)
        state[prefix + "weight_hh" + suffix] = np.ascontiguousarray(
            reorder_gates(w.recurrent_kernel, cell, "fastgate", "torch").T)
        if bias:
            state[prefix + "bias_ih" + suffix] = reorder_gates(w.input_bias, cell, "fastgate",
                                                               "torch")
            state[prefix + "bias_hh" + suffix] = reorder_gates(w.recurrent_bias, cell,
                                                               "fastgate", "torch")
        elif np.any(w.input_bias) or np.any(w.recurrent_bias):
            raise ConfigError(f"bias=False, but {type(obj).__name__} has non-zero biases")
        if w.projection is not None:
            state[prefix + "weight_hr" + suffix] = np.ascontiguousarray(w.projection.T)
    return state


def to_torch_state_dict(obj: Any, prefix: str = "", *, bias: bool | None = None
                        ) -> dict[str, np.ndarray]:
    """The PyTorch state_dict of a fastgate layer, cell, Dense or Embedding.

    Parameters
    ----------
    obj : LSTM, GRU, SimpleRNN, LSTMCell, GRUCell, RNNCell, Dense or Embedding
    prefix : str
        Prepended to every key (``"lstm."`` to fill a submodule).
    bias : bool, optional
        Whether to emit ``bias_*`` tensors. Defaults to the layer's ``bias`` (``False`` for a
        PyTorch module imported with ``bias=False``). ``False`` requires zero biases.

    Returns
    -------
    dict of str to ndarray
        NumPy arrays with PyTorch's keys, shapes and gate order, in PyTorch's key order;
        ``{k: torch.from_numpy(v) for k, v in ...}`` loads with ``load_state_dict(strict=True)``.

    Raises
    ------
    ConfigError
        ``obj`` computes something the PyTorch module cannot (an activation other than
        PyTorch's, GRU ``reset_after=False``, a Dense with an activation).
    """
    if isinstance(obj, Dense):
        if obj.activation != "linear":
            raise ConfigError(f"Dense with activation {obj.activation!r} is not an nn.Linear")
        state = {prefix + "weight": np.ascontiguousarray(obj.kernel.T)}
        if obj.bias is not None:
            state[prefix + "bias"] = obj.bias.copy()
        return state
    if isinstance(obj, Embedding):
        return {prefix + "weight": obj.table.copy()}
    if isinstance(obj, _Cell):
        layer, suffixes = obj.layer, [""]
    elif isinstance(obj, RecurrentLayer):
        layer = obj
        suffixes = [f"_l{k // layer.num_directions}"
                    + ("_reverse" if k % layer.num_directions else "")
                    for k in range(len(layer.weights))]
    else:
        raise ConfigError(f"cannot export a {type(obj).__name__} to a PyTorch state_dict")
    _recurrent_checks(obj, layer)
    return _recurrent_state(obj, layer, suffixes, prefix, layer.bias if bias is None else bias)


def torch_module(obj: Any, *, batch_first: bool | None = None) -> Any:
    """A ``torch.nn`` module computing what ``obj`` computes, with its weights, in eval mode.

    Parameters
    ----------
    obj : LSTM, GRU, SimpleRNN, LSTMCell, GRUCell, RNNCell, Dense or Embedding
        A Dense with an activation becomes ``nn.Sequential(nn.Linear, activation)``.
    batch_first : bool, optional
        For a layer: the module's ``batch_first``; defaults to the layer's own.

    Returns
    -------
    torch.nn.Module
        Of the layer's dtype (float32 or float64), loaded with ``strict=True``.
    """
    import torch
    from torch import nn

    dtype = torch.float64 if obj.dtype == np.float64 else torch.float32
    if isinstance(obj, Dense):
        linear = nn.Linear(obj.in_features, obj.out_features, bias=obj.bias is not None)
        state = {"weight": np.ascontiguousarray(obj.kernel.T)}
        if obj.bias is not None:
            state["bias"] = obj.bias
        module = _loaded(linear.to(dtype), state)
        if obj.activation == "linear":
            return module
        if obj.activation not in _TORCH_ACTIVATIONS:
            raise ConfigError(f"Dense activation {obj.activation!r} has no torch.nn module")
        return nn.Sequential(module, getattr(nn, _TORCH_ACTIVATIONS[obj.activation])()).eval()
    if isinstance(obj, Embedding):
        return _loaded(nn.Embedding(obj.num_embeddings, obj.embedding_dim).to(dtype),
                       to_torch_state_dict(obj))
    if isinstance(obj, _Cell):
        layer = obj.layer
        classes = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}
        options: dict[str, Any] = {"bias": layer.bias}
    elif isinstance(obj, RecurrentLayer):
        layer = obj
        classes = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
        options = {"num_layers": layer.num_layers, "bidirectional": layer.bidirectional,
                   "bias": layer.bias,
                   "batch_first": layer.batch_first if batch_first is None else batch_first}
        if layer.proj_size:
            options["proj_size"] = layer.proj_size
    else:
        raise ConfigError(f"cannot build a torch module from a {type(obj).__name__}")
    if layer.cell == "rnn":
        options["nonlinearity"] = layer.activation
    state = to_torch_state_dict(obj)  # checks the activations first
    module = classes[layer.cell](layer.input_size, layer.hidden_size, **options)
    return _loaded(module.to(dtype), state)


def _loaded(module: Any, state: dict[str, np.ndarray]) -> Any:
    import torch

    module.load_state_dict({key: torch.from_numpy(np.ascontiguousarray(value))
                            for key, value in state.items()}, strict=True)
    return module.eval()
