"""Single-step cells: :class:`LSTMCell`, :class:`GRUCell` and :class:`RNNCell`.

A cell runs one time step, like PyTorch's ``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.RNNCell``::

    h, c = lstm_cell(x, (h, c))      # x: (B, input_size) or (input_size,)
    h = gru_cell(x, h)

Each cell is a one-layer, one-direction fastgate layer (:mod:`fastgate.layers`) run over a
single step, so it uses the same weights layout (:class:`~fastgate.layout.CellWeights`), the
same validation and the same backends.

Cells also have the streaming signature of the layers and of :class:`fastgate.Model`::

    state = cell.initial_state(batch_size)      # h, or (h, c) for LSTMCell: (B, hidden_size)
    y, state = cell.step(x, state)              # x: (B, input_size) or a chunk (B, T, input_size)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import trace as tracing
from ._validation import as_array, as_cell_weights
from .errors import ConfigError, ShapeError
from .layers import GRU, LSTM, RecurrentLayer, SimpleRNN
from .layout import CellWeights
from .backend import current_backend
from .serialization import save, serializable
from .state import State, StateLayout

__all__ = ["LSTMCell", "GRUCell", "RNNCell"]


class _Cell:
    """Shared machinery of the cells: a one-layer fastgate layer run for one step."""

    layer_class: type[RecurrentLayer] = RecurrentLayer

    def __init__(self, weights: CellWeights, **options: Any) -> None:
        name = type(self).__name__
        if isinstance(weights, (list, tuple)) and len(weights) == 1 and not isinstance(
                weights, CellWeights):
            weights = weights[0]
        weights = as_cell_weights(weights, name)
        if options.get("bidirectional") or options.get("batch_first"):
            raise ConfigError(f"{name} is one step of one direction: no bidirectional or "
                              f"batch_first")
        self.layer = self.layer_class([weights], **options)
        self._state = self._state_layout()

    def _state_layout(self) -> StateLayout:
        return StateLayout(type(self).__name__, self.layer.cell, 1, self.hidden_size,
                           self.hidden_size, self.dtype, flat=True, labels=("h", "c"))

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._state = self._state_layout()   # (absent from older pickles)

    # ------------------------------------------------------------------ description
    @property
    def weights(self) -> CellWeights:
        """The cell's weights in fastgate's internal layout."""
        return self.layer.weights[0]

    @property
    def input_size(self) -> int:
        return self.layer.input_size

    @property
    def hidden_size(self) -> int:
        return self.layer.hidden_size

    @property
    def dtype(self) -> np.dtype:
        return self.layer.dtype

    @property
    def activation(self) -> str:
        return self.layer.activation

    @property
    def bias(self) -> bool:
        """Whether the cell has biases (PyTorch ``bias``)."""
        return self.layer.bias

    def get_config(self) -> dict[str, Any]:
        """The constructor options (everything but the weights), JSON-serialisable."""
        config = self.layer.get_config()
        del config["bidirectional"], config["batch_first"]
        return config

    def __repr__(self) -> str:
        parts = [f"input_size={self.input_size}", f"hidden_size={self.hidden_size}"]
        defaults = {"activation": "tanh", "recurrent_activation": "sigmoid",
                    "reset_after": True, "bias": True}
        for key, value in self.get_config().items():
            if key != "dtype" and defaults.get(key) != value:
                parts.append(f"{key}={value!r}")
        parts.append(f"dtype={self.dtype.name}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def _get_spec(self) -> dict[str, Any]:
        weights = {k: v for k, v in self.weights._asdict().items() if v is not None}
        return {"config": self.get_config(), "weights": weights}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "_Cell":
        return cls(CellWeights(**spec["weights"]), **spec["config"])

    def save(self, path: str) -> None:
        """Save this cell in fastgate's own format (:mod:`fastgate.serialization`)."""
        save(self, path)

    def to_torch_state_dict(self, prefix: str = "", *, bias: bool | None = None
                            ) -> dict[str, np.ndarray]:
        """The weights as a PyTorch cell's state_dict (NumPy arrays, PyTorch's keys).

        See :func:`fastgate.export.torch.to_torch_state_dict`.
        """
        from .export.torch import to_torch_state_dict

        return to_torch_state_dict(self, prefix, bias=bias)

    def to_onnx(self, path: Any, opset: int = 17) -> None:
        """Write this cell as an ONNX model: inputs ``x`` and the state, outputs the new
        state; see :func:`fastgate.export.onnx.to_onnx`."""
        from .export.onnx import to_onnx

        to_onnx(self, path, opset)

    # ------------------------------------------------------------------ streaming
    def initial_state(self, batch_size: int = 1) -> State:
        """The zero state of ``batch_size`` sequences: ``h`` (LSTMCell: ``(h, c)``), each
        ``(batch_size, hidden_size)``; plain NumPy arrays, to store between requests."""
        return self._state.initial(batch_size)

    def step(self, x: Any, state: State | None = None) -> tuple[np.ndarray, State]:
        """Advance by one step ``(B, input_size)`` or a chunk ``(B, T, input_size)``.

        Returns ``(y, state)``: ``y`` is the new ``h`` ``(B, hidden_size)`` for one step, or
        the ``h`` of every step ``(B, T, hidden_size)`` for a chunk; ``state`` is the new ``h``
        (LSTMCell ``(h, c)``). Feeding a chunk gives what calling the cell step after step
        gives. ``state`` (zeros if ``None``) is not modified.
        """
        # the layer's path, with states of the cells' flat form (B, hidden_size)
        result = self.layer._runners[current_backend()].step(x, state, 0, True)
        if result is not None:
            return result
        return self.layer._general_step(x, state, self._state)

    # ------------------------------------------------------------------ tracing
    def trace(self, x: Any, state: State | None = None, *,
              max_bytes: int = tracing.DEFAULT_MAX_BYTES) -> "tracing.Trace":
        """One step like ``cell(x, state)``, returning what its gates computed
        (:class:`fastgate.trace.Trace`, one entry, ``T = 1``; an unbatched ``x`` is a batch
        of one)."""
        x, unbatched, batch = self._checked_input(x)
        h0, c0 = self._state.to_kernel(state, batch, unbatched=unbatched)
        with tracing.Recorder(max_bytes) as recorder:
            self.layer(x.reshape(1, batch, self.input_size),
                       (h0, c0) if c0 is not None else h0)
        label = type(self).__name__.lower()
        return tracing.Trace(recorder.entries(lambda layer: (label, 0, None, None)))

    # ------------------------------------------------------------------ calling
    def _checked_input(self, x: Any) -> tuple[np.ndarray, bool, int]:
        """``(x, unbatched, batch)``: ``x`` ``(B, input_size)`` or ``(input_size,)`` as an
        array of the cell's dtype, or a :class:`~fastgate.errors.ShapeError` naming it."""
        name = type(self).__name__
        x = as_array(x, self.dtype, f"{name} input")
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ShapeError(f"{name} input: expected (B, {self.input_size}) or "
                             f"({self.input_size},), got shape {x.shape}")
        unbatched = x.ndim == 1
        return x, unbatched, 1 if unbatched else x.shape[0]

    def _step(self, x: Any, state: State | None) -> State:
        """The new state after one step ``x`` ``(B, input_size)`` or ``(input_size,)`` (then
        with an unbatched state, and one returned)."""
        result = self.layer._runners[current_backend()].step(x, state, 0, True)
        if result is not None:
            return result[1]
        x, unbatched, batch = self._checked_input(x)
        h0, c0 = self._state.to_kernel(state, batch, unbatched=unbatched)
        steps = np.ascontiguousarray(x.reshape(1, batch, self.input_size))
        _, h_n, c_n = self.layer.forward(steps, h0, c0)
        return self._state.to_public(h_n, c_n, unbatched=unbatched)


@serializable
class LSTMCell(_Cell):
    """One LSTM step (PyTorch ``nn.LSTMCell``): ``h', c' = cell(x, (h, c))``.

    Parameters
    ----------
    weights : CellWeights
        Gates ``i, f, g, o`` in fastgate's internal layout (:mod:`fastgate.layout`).
    activation, recurrent_activation : str
        As for :class:`fastgate.LSTM` (defaults ``"tanh"`` and ``"sigmoid"``).
    dtype : float32 or float64
    bias : bool
        ``False``: no biases (PyTorch ``bias=False``); the bias arrays must be zero.

    Call with ``x`` of shape ``(B, input_size)`` or ``(input_size,)`` and an optional state
    ``(h, c)`` of shapes ``(B, hidden_size)`` (or ``(hidden_size,)``); zeros if omitted.
    Returns the new ``(h, c)``.
    """

    layer_class = LSTM

    def __init__(self, weights: CellWeights, *, activation: str = "tanh",
                 recurrent_activation: str = "sigmoid", dtype: Any = np.float32,
                 bias: bool = True) -> None:
        super().__init__(weights, activation=activation,
                         recurrent_activation=recurrent_activation, dtype=dtype, bias=bias)
        if self.layer.proj_size:
            raise ConfigError("LSTMCell has no projection (PyTorch's LSTMCell has no proj_size)")

    def __call__(self, x: Any, state: State | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self._step(x, state)


@serializable
class GRUCell(_Cell):
    """One GRU step (PyTorch ``nn.GRUCell``): ``h' = cell(x, h)``.

    Parameters are those of :class:`LSTMCell` (gates ``r, z, n``) plus ``reset_after``
    (default ``True``, PyTorch's equations); see :class:`fastgate.GRU`.
    """

    layer_class = GRU

    def __init__(self, weights: CellWeights, *, activation: str = "tanh",
                 recurrent_activation: str = "sigmoid", reset_after: bool = True,
                 dtype: Any = np.float32, bias: bool = True) -> None:
        super().__init__(weights, activation=activation,
                         recurrent_activation=recurrent_activation, reset_after=reset_after,
                         dtype=dtype, bias=bias)

    def __call__(self, x: Any, state: np.ndarray | None = None) -> np.ndarray:
        return self._step(x, state)


@serializable
class RNNCell(_Cell):
    """One Elman step (PyTorch ``nn.RNNCell``): ``h' = act(x W + b_i + h U + b_h)``.

    ``activation`` defaults to ``"tanh"``; PyTorch's ``nonlinearity="relu"`` is
    ``activation="relu"``.
    """

    layer_class = SimpleRNN

    def __init__(self, weights: CellWeights, *, activation: str = "tanh",
                 dtype: Any = np.float32, bias: bool = True) -> None:
        super().__init__(weights, activation=activation, dtype=dtype, bias=bias)

    def __call__(self, x: Any, state: np.ndarray | None = None) -> np.ndarray:
        return self._step(x, state)
