"""The building blocks that recurrent models are served with, besides the recurrent layers.

Dense and Embedding are usable on their own; every class here is also a step of a
:class:`fastgate.Model` (``op.apply(x, mask)``), including :class:`Recurrent` and
:class:`Bidirectional`, which run the recurrent layers with Keras' options.

They follow the same rules as the recurrent layers: weights validated and converted once at
construction, cheap calls, fastgate errors on bad input, ``.fastgate`` serialization.

Streaming (:meth:`fastgate.Model.step`): every op says in ``streaming`` how it behaves when a
sequence arrives a step or a chunk at a time: ``"per_step"`` ops (Dense, Embedding, Activation,
Masking) act on each step alone, so they run on the chunk as it is; ``"recurrent"`` ops
(:class:`Recurrent`) carry a state from chunk to chunk (:meth:`Recurrent.initial_stream_state`,
:meth:`Recurrent.apply_step`); ``"not_over_time"`` ops (Flatten) only accept a value that has
no steps axis any more; ``"whole_sequence"`` ops (GlobalPooling1D, RepeatVector,
Bidirectional) need the whole sequence and cannot stream.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from . import trace as tracing
from ._validation import as_array, as_float_dtype
from .activations import activation_function, canonical_name
from .errors import ConfigError, DTypeError, InputError, ShapeError
from .backend import current_backend
from .serialization import save, serializable
from .state import StateLayout

__all__ = ["Dense", "Embedding", "Activation", "Masking", "Flatten", "GlobalPooling1D",
           "RepeatVector", "Recurrent", "Bidirectional", "AXIS_ACTIVATIONS"]


@serializable
class Dense:
    """Affine map on the last axis, ``y = act(x @ kernel + bias)``.

    ``kernel`` is ``(in_features, out_features)`` (Keras layout; PyTorch's ``nn.Linear``
    weight transposed), ``bias`` ``(out_features,)`` or ``None``. Works on any leading shape.

    Like the recurrent layers it has ``initial_state(batch_size)`` / ``step(x, state)``, with an
    empty state: a Dense head can sit in a streaming loop next to a layer.
    """

    streaming = "per_step"

    def __init__(self, kernel: Any, bias: Any = None, *, activation: str = "linear",
                 dtype: Any = np.float32) -> None:
        self.dtype = as_float_dtype(dtype)
        self.kernel = np.ascontiguousarray(as_array(kernel, self.dtype, "Dense kernel"))
        if self.kernel.ndim != 2:
            raise ShapeError(f"Dense kernel: expected (in_features, out_features), got shape "
                             f"{self.kernel.shape}")
        self.bias = None
        if bias is not None:
            self.bias = np.ascontiguousarray(as_array(bias, self.dtype, "Dense bias"))
            if self.bias.shape != (self.kernel.shape[1],):
                raise ShapeError(f"Dense bias: expected shape ({self.kernel.shape[1]},), got "
                                 f"{self.bias.shape}")
        self.activation = canonical_name(activation)
        self._act = activation_function(self.activation)

    @property
    def in_features(self) -> int:
        return self.kernel.shape[0]

    @property
    def out_features(self) -> int:
        return self.kernel.shape[1]

    def __call__(self, x: Any) -> np.ndarray:
        x = as_array(x, self.dtype, "Dense input")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ShapeError(f"Dense input: expected last axis of width {self.in_features}, "
                             f"got shape {x.shape}")
        # ndarray.dot has less per-call overhead than @ on a 2-D input (one streaming step);
        # on more axes dot does not go through BLAS, so those take @
        y = x.dot(self.kernel) if x.ndim == 2 else x @ self.kernel
        if self.bias is not None:
            y += self.bias
        return self._act(y) if self.activation != "linear" else y

    def apply(self, x: Any, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Model step (see :class:`fastgate.Model`): the mask passes through unchanged."""
        return self(x), mask

    def initial_state(self, batch_size: int = 1) -> tuple:
        """The (empty) streaming state: Dense has none."""
        return ()

    def step(self, x: Any, state: tuple = ()) -> tuple[np.ndarray, tuple]:
        """``(self(x), state)``: the streaming signature of the recurrent layers."""
        return self(x), state

    def _get_spec(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "bias": self.bias, "activation": self.activation,
                "dtype": self.dtype.name}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "Dense":
        return cls(spec["kernel"], spec.get("bias"), activation=spec["activation"],
                   dtype=spec["dtype"])

    def save(self, path: str) -> None:
        """Save in fastgate's own format."""
        save(self, path)

    def __repr__(self) -> str:
        act = "" if self.activation == "linear" else f", activation={self.activation!r}"
        return (f"Dense(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}{act}, dtype={self.dtype.name})")


@serializable
class Embedding:
    """Lookup table: integer ids ``(...)`` -> vectors ``(..., embedding_dim)``.

    Ids must be integers in ``[0, num_embeddings)``; anything else raises
    :class:`~fastgate.errors.InputError` (never an out-of-bounds read). With ``mask_zero``
    (Keras), id 0 is padding: inside a :class:`fastgate.Model` it masks its step.

    Integer ids of any width (``int64`` included) are checked against the vocabulary before
    the lookup; floats are accepted only when they hold integers. ``initial_state`` /
    ``step`` give it the streaming signature of the recurrent layers (with an empty state).
    """

    streaming = "per_step"

    def __init__(self, table: Any, *, dtype: Any = np.float32, mask_zero: bool = False) -> None:
        self.dtype = as_float_dtype(dtype)
        self.mask_zero = bool(mask_zero)
        self.table = np.ascontiguousarray(as_array(table, self.dtype, "Embedding table"))
        if self.table.ndim != 2:
            raise ShapeError(f"Embedding table: expected (num_embeddings, embedding_dim), got "
                             f"shape {self.table.shape}")

    @property
    def num_embeddings(self) -> int:
        return self.table.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.table.shape[1]

    def __call__(self, ids: Any) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.dtype.kind == "f":
            if not np.all(np.isfinite(ids)) or np.any(np.mod(ids, 1)):
                raise DTypeError("Embedding ids must be integers, got non-integral floats")
            ids = ids.astype(np.int64)
        elif ids.dtype.kind not in "iub":
            raise DTypeError(f"Embedding ids must be integers, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_embeddings):
            raise InputError(f"Embedding ids must lie in [0, {self.num_embeddings}), got min "
                             f"{ids.min()} and max {ids.max()}")
        return self.table[ids]

    def apply(self, ids: Any, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Model step: ``mask_zero`` makes the mask ``ids != 0``; otherwise there is none."""
        vectors = self(ids)
        return vectors, (np.asarray(ids) != 0 if self.mask_zero else None)

    def initial_state(self, batch_size: int = 1) -> tuple:
        """The (empty) streaming state: Embedding has none."""
        return ()

    def step(self, ids: Any, state: tuple = ()) -> tuple[np.ndarray, tuple]:
        """``(self(ids), state)``: the streaming signature of the recurrent layers."""
        return self(ids), state

    def _get_spec(self) -> dict[str, Any]:
        return {"table": self.table, "dtype": self.dtype.name, "mask_zero": self.mask_zero}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "Embedding":
        return cls(spec["table"], dtype=spec["dtype"], mask_zero=spec.get("mask_zero", False))

    def save(self, path: str) -> None:
        """Save in fastgate's own format."""
        save(self, path)

    def __repr__(self) -> str:
        zero = ", mask_zero=True" if self.mask_zero else ""
        return (f"Embedding(num_embeddings={self.num_embeddings}, "
                f"embedding_dim={self.embedding_dim}{zero}, dtype={self.dtype.name})")


# ---------------------------------------------------------------------------------------
# Model steps. Inside a :class:`fastgate.Model` every op is called as
# ``outputs, mask = op.apply(x, mask)``: ``mask`` is ``None`` or a ``(B, T)`` bool array of
# valid steps, and an op with several outputs returns a tuple of outputs and a tuple of
# masks. The rules of which op keeps, makes or drops the mask are Keras' (Keras is the
# framework that has masks); each class says which it follows.
# ---------------------------------------------------------------------------------------

def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return shifted / np.sum(shifted, axis=-1, keepdims=True)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - np.max(x, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


#: Activations over the last axis, not elementwise (so not usable inside a recurrent cell).
AXIS_ACTIVATIONS = {"softmax": _softmax, "log_softmax": _log_softmax}


def _float_input(x: Any, dtype: np.dtype, what: str, ndim: tuple[int, ...]) -> np.ndarray:
    x = as_array(x, dtype, what)
    if x.ndim not in ndim:
        expected = " or ".join(f"{n}-d" for n in ndim)
        raise ShapeError(f"{what}: expected a {expected} array, got shape {x.shape}")
    return x


@serializable
class Activation:
    """An activation on its own: elementwise (:mod:`fastgate.activations`) or ``"softmax"`` /
    ``"log_softmax"`` over the last axis. Keeps the mask (Keras ``Activation``)."""

    streaming = "per_step"

    def __init__(self, activation: str, *, dtype: Any = np.float32) -> None:
        self.dtype = as_float_dtype(dtype)
        if activation in AXIS_ACTIVATIONS:
            self.activation = activation
            self._act = AXIS_ACTIVATIONS[activation]
        else:
            self.activation = canonical_name(activation)
            self._act = activation_function(self.activation)

    def apply(self, x: Any, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        x = as_array(x, self.dtype, "Activation input")
        with np.errstate(over="ignore"):
            return self._act(x).astype(self.dtype, copy=False), mask

    def _get_spec(self) -> dict[str, Any]:
        return {"activation": self.activation, "dtype": self.dtype.name}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "Activation":
        return cls(spec["activation"], dtype=spec["dtype"])

    def __repr__(self) -> str:
        return f"Activation({self.activation!r})"


@serializable
class Masking:
    """Keras ``Masking``: a step whose features all equal ``mask_value`` is masked.

    Makes the mask ``any(x != mask_value, axis=-1)`` and zeroes the masked steps of ``x``.
    """

    streaming = "per_step"

    def __init__(self, mask_value: float = 0.0, *, dtype: Any = np.float32) -> None:
        self.dtype = as_float_dtype(dtype)
        self.mask_value = float(mask_value)

    def apply(self, x: Any, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        x = _float_input(x, self.dtype, "Masking input", (3,))
        keep = np.any(x != self.mask_value, axis=-1)
        return x * keep[..., None].astype(self.dtype), keep

    def _get_spec(self) -> dict[str, Any]:
        return {"mask_value": self.mask_value, "dtype": self.dtype.name}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "Masking":
        return cls(spec["mask_value"], dtype=spec["dtype"])

    def __repr__(self) -> str:
        return f"Masking(mask_value={self.mask_value!r})"


@serializable
class Flatten:
    """``(B, ...) -> (B, prod(...))``. Drops the mask (Keras ``Flatten``)."""

    streaming = "not_over_time"

    def __init__(self, *, dtype: Any = np.float32) -> None:
        self.dtype = as_float_dtype(dtype)

    def apply(self, x: Any, mask: np.ndarray | None) -> tuple[np.ndarray, None]:
        x = as_array(x, self.dtype, "Flatten input")
        if x.ndim == 0:
            raise ShapeError("Flatten input: expected a batch, got a scalar")
        return x.reshape(x.shape[0], -1), None

    def _get_spec(self) -> dict[str, Any]:
        return {"dtype": self.dtype.name}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "Flatten":
        return cls(dtype=spec["dtype"])

    def __repr__(self) -> str:
        return "Flatten()"


@serializable
class GlobalPooling1D:
    """Max or average over the steps axis of ``(B, T, F)`` (``steps_axis=2``: ``(B, F, T)``).

    ``"average"`` counts only the valid steps when a mask is given (Keras
    ``GlobalAveragePooling1D``: ``sum(x * mask) / sum(mask)``, NaN when no step is valid);
    ``"max"`` ignores the mask (Keras ``GlobalMaxPooling1D``). Both drop the mask.
    """

    streaming = "whole_sequence"

    def __init__(self, mode: str, *, steps_axis: int = 1, keepdims: bool = False,
                 dtype: Any = np.float32) -> None:
        if mode not in ("max", "average"):
            raise ConfigError(f"GlobalPooling1D mode must be 'max' or 'average', got {mode!r}")
        if steps_axis not in (1, 2):
            raise ConfigError(f"GlobalPooling1D steps_axis must be 1 or 2, got {steps_axis!r}")
        self.mode = mode
        self.steps_axis = int(steps_axis)
        self.keepdims = bool(keepdims)
        self.dtype = as_float_dtype(dtype)

    def apply(self, x: Any, mask: np.ndarray | None) -> tuple[np.ndarray, None]:
        x = _float_input(x, self.dtype, f"GlobalPooling1D({self.mode!r}) input", (3,))
        axis = self.steps_axis
        if self.mode == "max":
            return np.max(x, axis=axis, keepdims=self.keepdims), None
        if mask is None:
            return np.mean(x, axis=axis, keepdims=self.keepdims), None
        valid = np.expand_dims(mask, 3 - axis).astype(self.dtype)  # (B,T,1) or (B,1,T)
        with np.errstate(invalid="ignore", divide="ignore"):
            total = np.sum(np.where(valid > 0, x, 0), axis=axis, keepdims=self.keepdims)
            return (total / np.sum(valid, axis=axis, keepdims=self.keepdims)).astype(
                self.dtype, copy=False), None

    def _get_spec(self) -> dict[str, Any]:
        return {"mode": self.mode, "steps_axis": self.steps_axis, "keepdims": self.keepdims,
                "dtype": self.dtype.name}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "GlobalPooling1D":
        return cls(spec["mode"], steps_axis=spec["steps_axis"], keepdims=spec["keepdims"],
                   dtype=spec["dtype"])

    def __repr__(self) -> str:
        extra = "" if self.steps_axis == 1 else f", steps_axis={self.steps_axis}"
        extra += ", keepdims=True" if self.keepdims else ""
        return f"GlobalPooling1D({self.mode!r}{extra})"


@serializable
class RepeatVector:
    """``(B, F) -> (B, n, F)``: the same vector at every step (Keras ``RepeatVector``)."""

    streaming = "whole_sequence"

    def __init__(self, n: int, *, dtype: Any = np.float32) -> None:
        if int(n) != n or n < 0:
            raise ConfigError(f"RepeatVector n must be a non-negative integer, got {n!r}")
        self.n = int(n)
        self.dtype = as_float_dtype(dtype)

    def apply(self, x: Any, mask: np.ndarray | None) -> tuple[np.ndarray, None]:
        x = _float_input(x, self.dtype, "RepeatVector input", (2,))
        return np.repeat(x[:, None, :], self.n, axis=1), None

    def _get_spec(self) -> dict[str, Any]:
        return {"n": self.n, "dtype": self.dtype.name}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "RepeatVector":
        return cls(spec["n"], dtype=spec["dtype"])

    def __repr__(self) -> str:
        return f"RepeatVector({self.n})"


@serializable
class Recurrent:
    """A one-layer, one-direction recurrent layer run the way Keras runs its RNN layers.

    Wraps a :class:`~fastgate.layers.LSTM`, :class:`~fastgate.layers.GRU` or
    :class:`~fastgate.layers.SimpleRNN` (``num_layers=1``, unidirectional) over batch-major
    ``(B, T, D)`` inputs, with Keras' options:

    * ``return_sequences``: all outputs ``(B, T, H)``, else the last one ``(B, H)``;
    * ``return_state``: outputs ``(output, h)`` (LSTM ``(output, h, c)``);
    * ``go_backwards``: read the steps last to first; the outputs stay in reading order
      (reversed), as Keras returns them, and the mask passed on is *not* reversed (Keras);
    * ``stateful``: the final state is kept and is the next call's initial state, until
      :meth:`reset_states`;
    * masking: a masked step keeps the state and repeats the previous output (zeros before
      the first valid step), or outputs zeros with ``zero_output_for_mask``;
    * ``time_major``: whole-sequence calls take ``(T, B, D)`` and give ``(T, B, H)`` (an ONNX
      graph's layout 0, as PyTorch exports it); the mask stays ``(B, T)``, and streaming
      (:meth:`apply_step`, :meth:`fastgate.Model.step`) stays batch-first.

    The mask is passed on if ``return_sequences``, else dropped (Keras).

    Streaming (:meth:`apply_step`, used by :meth:`fastgate.Model.step`): the state is the tuple
    ``(h, output)`` (LSTM ``(h, c, output)``) of ``(B, units)`` arrays, ``output`` being the
    last output given, which a masked step repeats. ``go_backwards`` cannot stream.
    """

    streaming = "recurrent"

    def __init__(self, layer: Any, *, return_sequences: bool = False,
                 return_state: bool = False, go_backwards: bool = False,
                 stateful: bool = False, zero_output_for_mask: bool = False,
                 time_major: bool = False) -> None:
        from .layers import RecurrentLayer

        if not isinstance(layer, RecurrentLayer):
            raise ConfigError(f"Recurrent wraps an LSTM, GRU or SimpleRNN, got "
                              f"{type(layer).__name__}")
        if layer.num_layers != 1 or layer.bidirectional or layer.proj_size:
            raise ConfigError(f"Recurrent wraps one layer, one direction, no projection; got "
                              f"{layer!r}")
        self.layer = layer
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.stateful = bool(stateful)
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self.time_major = bool(time_major)
        self.states: tuple[np.ndarray, ...] | None = None

    @property
    def units(self) -> int:
        return self.layer.hidden_size

    def reset_states(self) -> None:
        """Forget the state a stateful layer carried over (the next call starts at zeros)."""
        self.states = None

    @property
    def state_count(self) -> int:
        """How many state arrays the layer has: 2 for an LSTM (``h, c``), else 1."""
        return 2 if self.layer.cell == "lstm" else 1

    @functools.cached_property
    def _state(self) -> StateLayout:
        """The layer's state in Keras' form: ``h`` (LSTM ``(h, c)``), each ``(B, units)``."""
        layer = self.layer
        return StateLayout(type(layer).__name__, layer.cell, 1, layer.hidden_size,
                           layer.hidden_size, layer.dtype, flat=True,
                           labels=("initial_state h", "initial_state c"))

    def _given_state(self, initial_state: Any, batch: int
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(h0, c0)`` from Keras' ``initial_state=[h]`` / ``[h, c]`` (each ``(B, units)``)."""
        states = list(initial_state)
        if len(states) != self.state_count:
            raise ShapeError(f"{type(self.layer).__name__} initial_state: expected "
                             f"{self.state_count} arrays "
                             f"({'h, c' if self.state_count == 2 else 'h'}), got {len(states)}")
        return self._state.to_kernel(tuple(states) if self.state_count == 2 else states[0],
                                     batch)

    def _initial_state(self, batch: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``(h0, c0)``: zeros, or a stateful layer's carried state."""
        if self.states is not None and self.states[0].shape[0] != batch:
            raise ShapeError(f"stateful {type(self.layer).__name__}: the batch size must stay "
                             f"{self.states[0].shape[0]} (the batch of the carried state), "
                             f"got {batch}; call reset_states() to change it")
        carried = self.states
        if carried is not None:
            carried = carried if self.state_count == 2 else carried[0]
        return self._state.to_kernel(carried, batch)

    def __call__(self, x: Any, initial_state: Any = None, mask: Any = None) -> Any:
        """Run over a whole batch-major sequence ``x`` ``(B, T, D)``, as Keras'
        ``layer(x, initial_state=..., mask=...)``: the output (``(output, h)`` /
        ``(output, h, c)`` with ``return_state``), arrays as :meth:`apply` gives them.

        ``initial_state`` is ``[h]`` (LSTM ``[h, c]``), each ``(B, units)``; ``mask`` a
        ``(B, T)`` bool array of valid steps.
        """
        outputs, _ = self.apply(x, None if mask is None else np.asarray(mask, bool),
                                initial_state)
        return outputs

    def apply(self, x: Any, mask: np.ndarray | None, initial_state: Any = None
              ) -> tuple[Any, Any]:
        """Model step: run the layer over ``x`` ``(B, T, D)`` with ``mask`` ``(B, T)``; the
        state starts at ``initial_state`` (Keras ``initial_state=[h]``, LSTM ``[h, c]``) when
        given, else at zeros (or a stateful layer's carried state)."""
        layer = self.layer
        if (mask is None and initial_state is None and not self.go_backwards
                and not self.stateful and layer.batch_first is not self.time_major
                and type(x) is np.ndarray and x.ndim == 3 and x.shape[0] and x.shape[1]
                and not (tracing.recording and tracing.current_recorder() is not None)):
            # the common call (from zeros, no mask) straight to the layer's plan; None: x
            # needs converting or checking, the general path below does it (and a traced
            # call takes it: the layer's forward writes the trace)
            result = layer._runners[current_backend()].run(x)
            if result is not None:
                out, final = result
                return self._outputs(out, final if layer.cell == "lstm" else (final,), mask)
        name = type(layer).__name__
        x = _float_input(x, layer.dtype, f"{name} input", (3,))
        time_major = self.time_major
        steps, batch, width = x.shape if time_major else (x.shape[1], x.shape[0], x.shape[2])
        if width != layer.input_size:
            raise ShapeError(f"{name} input: expected ({'T, B' if time_major else 'B, T'}, "
                             f"{layer.input_size}), got shape {x.shape}")
        if steps == 0:
            raise ShapeError(f"{name} input: a sequence needs at least one step, got shape "
                             f"{x.shape}")
        reading_mask = mask
        if self.go_backwards:
            x = x[::-1] if time_major else x[:, ::-1]
            reading_mask = None if mask is None else mask[:, ::-1]
        if initial_state is not None:
            h0, c0 = self._given_state(initial_state, batch)
        else:
            h0, c0 = self._initial_state(batch)
        time_major_mask = (None if reading_mask is None
                           else np.ascontiguousarray(np.asarray(reading_mask, bool).T))
        out, h_n, c_n = layer.forward(
            np.ascontiguousarray(x), h0, c0, mask=time_major_mask, batch_major=not time_major,
            hold_masked_output=not self.zero_output_for_mask)
        if self.stateful:
            self.states = (h_n[0].copy(),) + ((c_n[0].copy(),) if c_n is not None else ())
        return self._outputs(out, (h_n,) if c_n is None else (h_n, c_n), mask)

    def _outputs(self, out: np.ndarray, finals: tuple[np.ndarray, ...],
                 mask: np.ndarray | None) -> tuple[Any, Any]:
        """:meth:`apply`'s result from the layer's ``out`` and final states ``(1, B, H)``."""
        states = (finals[0][0],) if len(finals) == 1 else (finals[0][0], finals[1][0])
        if self.return_sequences:
            output = out
        else:
            output = out[-1] if self.time_major else out[:, -1]
        output_mask = mask if self.return_sequences else None
        if self.return_state:
            return (output,) + states, (output_mask,) + (None,) * len(states)
        return output, output_mask

    # ------------------------------------------------------------------ streaming
    def initial_stream_state(self, batch_size: int) -> tuple[np.ndarray, ...]:
        """The streaming state at the start of ``batch_size`` sequences: zeros.

        ``(h, output)``, LSTM ``(h, c, output)``, each ``(batch_size, units)``. A stateful
        op's carried state (:attr:`states`) is not used: streaming states are explicit.
        """
        state = self._state.initial(batch_size)
        last_output = np.zeros((batch_size, self.layer.hidden_size), self.layer.dtype)
        return (state if self.state_count == 2 else (state,)) + (last_output,)

    def apply_step(self, x: Any, mask: np.ndarray | None, state: tuple[np.ndarray, ...]
                   ) -> tuple[Any, Any, tuple[np.ndarray, ...]]:
        """Advance the sequences by the chunk ``x`` ``(B, T, D)`` from ``state``.

        Returns ``(outputs, masks, new_state)``: ``outputs`` and ``masks`` are what
        :meth:`apply` gives for these steps when the sequences so far had been fed in one
        call (the last step's output if not ``return_sequences``); ``state`` is not modified.
        """
        layer = self.layer
        name = type(layer).__name__
        if self.go_backwards:
            raise ConfigError(f"{name} with go_backwards=True cannot stream: it reads the "
                              f"sequence from its last step")
        x = _float_input(x, layer.dtype, f"{name} input", (3,))
        batch, steps, width = x.shape
        if width != layer.input_size or steps == 0:
            raise ShapeError(f"{name} input: expected (B, T, {layer.input_size}) with T >= 1, "
                             f"got shape {x.shape}")
        is_lstm = layer.cell == "lstm"
        if mask is None and steps == 1:
            result = self.step_one(x[:, 0], state)
            if result is not None:
                y, new_state = result
                return (y[:, None] if self.return_sequences else y), None, new_state
        h0, c0 = self._state.to_kernel(state[:-1] if is_lstm else state[0], batch)
        hold = not self.zero_output_for_mask
        valid = None if mask is None else np.asarray(mask, bool)
        out, h_n, c_n = layer.forward(
            np.ascontiguousarray(x), h0, c0,
            mask=None if valid is None else np.ascontiguousarray(valid.T), batch_major=True,
            hold_masked_output=hold)
        if valid is not None and hold:
            # The kernels hold zeros before a chunk's first valid step; the sequence's output
            # before that step is the last output of the previous chunk.
            leading = ~np.logical_or.accumulate(valid, axis=1)
            if leading.any():
                out = np.where(leading[:, :, None], state[-1][:, None, :], out)
        new_state = (h_n[0],) + ((c_n[0],) if is_lstm else ()) + (out[:, -1].copy(),)
        output = out if self.return_sequences else out[:, -1]
        output_mask = mask if self.return_sequences else None
        if self.return_state:
            finals = tuple(part.copy() for part in new_state[:-1])  # outputs may be edited
            return (output,) + finals, (output_mask,) + (None,) * len(finals), new_state
        return output, output_mask, new_state

    def step_one(self, x: np.ndarray, state: tuple[np.ndarray, ...]
                 ) -> tuple[np.ndarray, tuple[np.ndarray, ...]] | None:
        """:meth:`apply_step` for one unmasked step ``x`` ``(B, D)``, by the layer's plan's
        lean step: ``(y, new_state)``, ``y`` ``(B, units)``; ``None`` unless the arrays are
        exactly the layer's dtype and shapes (and no ``return_state``), and under the python
        backend (the oracle has no lean step)."""
        if self.return_state or self.go_backwards:
            return None
        is_lstm = self.layer.cell == "lstm"
        result = self.layer._runners[current_backend()].step(
            x, state[:-1] if is_lstm else state[0], 0, True)
        if result is None:
            return None
        y, new = result
        # the state's last output (what a masked step repeats) must not be the y returned
        return y, (new if is_lstm else (new,)) + (y.copy(),)

    def _get_spec(self) -> dict[str, Any]:
        spec = {"layer": self.layer, "return_sequences": self.return_sequences,
                "return_state": self.return_state, "go_backwards": self.go_backwards,
                "stateful": self.stateful, "zero_output_for_mask": self.zero_output_for_mask}
        if self.time_major:
            spec["time_major"] = True
        return spec

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "Recurrent":
        spec = dict(spec)
        return cls(spec.pop("layer"), **spec)

    def __repr__(self) -> str:
        options = [repr(self.layer)]
        for key in ("return_sequences", "return_state", "go_backwards", "stateful",
                    "zero_output_for_mask", "time_major"):
            if getattr(self, key):
                options.append(f"{key}=True")
        return f"Recurrent({', '.join(options)})"


_MERGE_MODES = ("concat", "sum", "mul", "ave", None)


@serializable
class Bidirectional:
    """Keras ``Bidirectional``: a forward and a backward :class:`Recurrent`, merged.

    ``backward`` reads the steps last to first (``go_backwards=True``); with
    ``return_sequences`` its outputs are flipped back into step order before the merge.
    ``merge_mode`` is ``"concat"``, ``"sum"``, ``"mul"``, ``"ave"`` or ``None`` (the two
    outputs separately). With ``return_state`` the states follow: forward's, then backward's.
    It cannot stream: the backward direction needs the whole sequence.
    """

    streaming = "whole_sequence"

    def __init__(self, forward: Recurrent, backward: Recurrent, *,
                 merge_mode: str | None = "concat") -> None:
        if merge_mode not in _MERGE_MODES:
            raise ConfigError(f"Bidirectional merge_mode must be one of {_MERGE_MODES}, got "
                              f"{merge_mode!r}")
        for which, op in (("forward", forward), ("backward", backward)):
            if not isinstance(op, Recurrent):
                raise ConfigError(f"Bidirectional {which} must be a Recurrent op, got "
                                  f"{type(op).__name__}")
        if (forward.return_sequences, forward.return_state) != (
                backward.return_sequences, backward.return_state):
            raise ConfigError("Bidirectional: forward and backward must agree on "
                              "return_sequences and return_state")
        self.forward = forward
        self.backward = backward
        self.merge_mode = merge_mode

    @property
    def stateful(self) -> bool:
        return self.forward.stateful or self.backward.stateful

    def reset_states(self) -> None:
        """Reset both directions' carried states."""
        self.forward.reset_states()
        self.backward.reset_states()

    @property
    def state_count(self) -> int:
        """State arrays of ``initial_state``: the forward layer's, then the backward's."""
        return 2 * self.forward.state_count

    def __call__(self, x: Any, initial_state: Any = None, mask: Any = None) -> Any:
        """Run over a whole batch-major sequence ``x`` ``(B, T, D)``, as Keras'
        ``Bidirectional(...)(x, initial_state=..., mask=...)``: the merged output (a tuple
        with ``merge_mode=None`` or ``return_state``). ``initial_state``: the forward
        layer's states, then the backward layer's."""
        outputs, _ = self.apply(x, None if mask is None else np.asarray(mask, bool),
                                initial_state)
        return outputs[0] if len(outputs) == 1 else outputs

    def apply(self, x: Any, mask: np.ndarray | None, initial_state: Any = None
              ) -> tuple[tuple, tuple]:
        """Model step; ``initial_state`` holds the forward states, then the backward ones."""
        forward_state = backward_state = None
        if initial_state is not None:
            states = list(initial_state)
            if len(states) != self.state_count:
                raise ShapeError(f"Bidirectional initial_state: expected {self.state_count} "
                                 f"arrays (forward states, then backward), got {len(states)}")
            half = self.forward.state_count
            forward_state, backward_state = states[:half], states[half:]
        y, _ = self.forward.apply(x, mask, forward_state)
        y_rev, _ = self.backward.apply(x, mask, backward_state)
        states: tuple = ()
        if self.forward.return_state:
            states = y[1:] + y_rev[1:]
            y, y_rev = y[0], y_rev[0]
        sequences = self.forward.return_sequences
        if sequences:
            y_rev = y_rev[:, ::-1]
        output_mask = mask if sequences else None
        if self.merge_mode is None:
            outputs, masks = (y, np.ascontiguousarray(y_rev)), (output_mask, output_mask)
        else:
            if self.merge_mode == "concat":
                merged = np.concatenate([y, y_rev], axis=-1)
            elif self.merge_mode == "sum":
                merged = y + y_rev
            elif self.merge_mode == "ave":
                merged = (y + y_rev) / 2
            else:
                merged = y * y_rev
            outputs, masks = (merged,), (output_mask,)
        return outputs + states, masks + (None,) * len(states)

    def _get_spec(self) -> dict[str, Any]:
        return {"forward": self.forward, "backward": self.backward,
                "merge_mode": self.merge_mode}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "Bidirectional":
        return cls(spec["forward"], spec["backward"], merge_mode=spec["merge_mode"])

    def __repr__(self) -> str:
        layer = self.forward.layer
        options = [f"{type(layer).__name__}(input_size={layer.input_size}, "
                   f"hidden_size={layer.hidden_size})", f"merge_mode={self.merge_mode!r}"]
        for key in ("return_sequences", "return_state", "stateful"):
            if getattr(self.forward, key):
                options.append(f"{key}=True")
        return f"Bidirectional({', '.join(options)})"
