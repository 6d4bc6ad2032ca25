"""PyTorch equivalents of fastgate models, for the speed comparisons of ``bench`` and
``demo`` (torch is optional: every function here imports it when called)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import ConfigError, FastgateError
from ._common import Progress, median_seconds

__all__ = ["torch_equivalent", "torch_seconds"]

_TORCH_ACTIVATIONS = {"linear": None, "relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid",
                      "softmax": "softmax"}


def _activation(name: str) -> Callable | None:
    """The torch function of an Activation op's activation (None: the identity)."""
    import torch

    if name not in _TORCH_ACTIVATIONS:
        raise ConfigError(name)
    function = _TORCH_ACTIVATIONS[name]
    if function == "softmax":
        return lambda t: torch.softmax(t, -1)
    return None if function is None else getattr(torch, function)


def _single_module(obj: Any) -> Any:
    """The torch module equivalent to a layer, cell, Dense or Embedding (else None)."""
    from ..cells import _Cell
    from ..export.torch import torch_module
    from ..layers import RecurrentLayer
    from ..ops import Dense, Embedding

    if isinstance(obj, (RecurrentLayer, _Cell, Dense, Embedding)):
        return torch_module(obj)
    return None


def _chain_steps(model: Any) -> list[tuple[str, Any]] | None:
    """``[(kind, step)]`` running a Model's chain of Embedding, Recurrent, Dense and
    Activation nodes in PyTorch, or None if the model is not such a chain."""
    from ..export.torch import torch_module
    from ..model import MODEL_INPUT
    from ..ops import Activation, Dense, Embedding, Recurrent

    if model.outputs != [(len(model.nodes) - 1, 0)]:
        return None
    steps: list[tuple[str, Any]] = []
    for position, node in enumerate(model.nodes):
        if node.source != ((MODEL_INPUT, 0) if position == 0 else (position - 1, 0)):
            return None
        op = node.op
        if isinstance(op, Embedding) and position == 0:
            steps.append(("embedding", (torch_module(op), op.mask_zero)))
        elif isinstance(op, Recurrent) and not (op.go_backwards or op.stateful
                                                or op.return_state):
            first = model.nodes[0].op
            if op.return_sequences and isinstance(first, Embedding) and first.mask_zero:
                return None  # Keras repeats outputs at padding; PyTorch zeroes them
            steps.append(("recurrent", (torch_module(op.layer, batch_first=True),
                                        op.return_sequences)))
        elif isinstance(op, Dense):
            steps.append(("dense", torch_module(op)))
        elif isinstance(op, Activation) and _activation(op.activation) is not None:
            steps.append(("activation", _activation(op.activation)))
        else:
            return None
    return steps


def _run_chain(steps: list[tuple[str, Any]], x: np.ndarray) -> Any:
    """Run :func:`_chain_steps`'s steps on ``x``; padding of ``mask_zero`` ids becomes a
    packed sequence, so a recurrent layer's last output is its last valid state."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence

    value = torch.from_numpy(np.ascontiguousarray(x))
    lengths = None
    for kind, step in steps:
        if kind == "embedding":
            module, mask_zero = step
            if mask_zero:
                lengths = (value != 0).sum(1).clamp(min=1)
            value = module(value)
        elif kind == "recurrent":
            module, sequences = step
            if lengths is not None and not sequences:
                packed = pack_padded_sequence(value, lengths, batch_first=True,
                                              enforce_sorted=False)
                _, state = module(packed)
                value = (state[0] if isinstance(state, tuple) else state)[-1]
            else:
                out, _ = module(value)
                value = out if sequences else out[:, -1]
        else:
            value = step(value)
    return value


def torch_equivalent(obj: Any) -> Callable[[np.ndarray], Any] | None:
    """A function running ``obj``'s PyTorch equivalent on a NumPy input, or ``None``.

    Covers layers and cells (:func:`fastgate.export.torch.torch_module`), Dense, Embedding,
    and models
    that are a chain of Embedding, Recurrent and Dense (padding of ``mask_zero`` ids becomes
    a packed sequence). ``None`` if torch is missing or the model has other parts.
    """
    try:
        import torch
    except ImportError:
        return None
    from ..model import Model

    try:
        module = _single_module(obj)
        if module is not None:
            return lambda x: module(torch.from_numpy(x))
        if not isinstance(obj, Model):
            return None
        steps = _chain_steps(obj)
    except (FastgateError, RuntimeError):
        return None
    if steps is None:
        return None
    return lambda x: _run_chain(steps, x)


def torch_seconds(function: Callable[[np.ndarray], Any], x: np.ndarray, repeat: int,
                  progress: Progress | None = None) -> float:
    """Median seconds of a :func:`torch_equivalent` on ``x`` (in inference mode)."""
    import torch

    with torch.inference_mode():  # PyTorch's thread pool may need a few calls to settle
        return median_seconds(lambda: function(x), repeat, progress, warmup=3)
