"""The public recurrent layers: :class:`LSTM`, :class:`GRU` and :class:`SimpleRNN`.

A layer is built from weights in fastgate's internal layout (:mod:`fastgate.layout`) and
called like its PyTorch namesake::

    layer = fastgate.LSTM(weights, bidirectional=True, batch_first=True)
    out, (h_n, c_n) = layer(x, state=None, lengths=None)

The weights are validated and converted once, at construction; a call validates its
arguments, allocates its outputs and workspace, and runs the whole forward pass in the
active backend (:func:`fastgate.backend`), without the GIL in the compiled one.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import plans
from . import trace as tracing
# as_array and the two underscore names stay importable from here, for older imports.
from ._validation import as_array
from ._validation import as_cell_weights as _cell_weights
from ._validation import as_float_dtype as _as_float_dtype
from ._validation import as_kernel_array
from .activations import activation_code, activation_parameters, canonical_name
from .backend import backend_variable, compiled_module, current_backend
from .errors import ConfigError, DTypeError, ShapeError
from .layout import GATE_COUNT, CellWeights
from .oracle_plan import OraclePlan
from .serialization import save, serializable
from .state import State, StateLayout

__all__ = ["LSTM", "GRU", "SimpleRNN", "RecurrentLayer"]

ArrayLike = Any

_CELL_CODES = {"lstm": 0, "gru": 1, "rnn": 2}


class RecurrentLayer:
    """Shared machinery of :class:`LSTM`, :class:`GRU` and :class:`SimpleRNN`.

    Not instantiated directly. Attributes: ``input_size``, ``hidden_size``, ``num_layers``,
    ``bidirectional``, ``num_directions``, ``proj_size`` (LSTM), ``output_size`` (the width of
    one direction's output), ``activation``, ``recurrent_activation``, ``dtype``,
    ``batch_first``, ``bias`` (whether the layer has biases), ``weights`` (the list of
    :class:`~fastgate.layout.CellWeights`), and ONNX's options: ``cell_activation``,
    ``clip``, ``input_forget``, ``peepholes``.
    """

    cell: str = ""

    def __init__(self, weights: Sequence[CellWeights], *, bidirectional: bool = False,
                 activation: str = "tanh", recurrent_activation: str = "sigmoid",
                 reset_after: bool = True, dtype: Any = np.float32,
                 batch_first: bool = False, bias: bool = True,
                 cell_activation: str | None = None, clip: float | None = None,
                 input_forget: bool = False) -> None:
        self.dtype = _as_float_dtype(dtype)
        self.bias = bool(bias)
        self.bidirectional = bool(bidirectional)
        self.batch_first = bool(batch_first)
        self.activation = canonical_name(activation)
        self.recurrent_activation = canonical_name(recurrent_activation)
        self.reset_after = bool(reset_after)
        self.cell_activation = (self.activation if cell_activation is None
                                else canonical_name(cell_activation))
        if clip is not None:
            clip = float(clip)
            if not clip >= 0:
                raise ConfigError(f"{type(self).__name__}: clip must be a number >= 0 (or "
                                  f"None), got {clip!r}")
        self.clip = clip
        self.input_forget = bool(input_forget)
        self.num_directions = 2 if self.bidirectional else 1
        self.weights = self._validate_weights(weights)
        self._build_runners()

    # ------------------------------------------------------------------ construction
    def _validate_weights(self, weights: Sequence[Any]) -> list[CellWeights]:
        name = type(self).__name__
        if isinstance(weights, CellWeights) or not isinstance(weights, (list, tuple)):
            raise ConfigError(f"{name}: weights must be a list of CellWeights, one per layer "
                              f"and direction, got {type(weights).__name__}")
        dirs = self.num_directions
        if len(weights) == 0 or len(weights) % dirs:
            raise ConfigError(f"{name}: expected a positive multiple of {dirs} CellWeights "
                              f"(layers x directions), got {len(weights)}")
        gates = GATE_COUNT[self.cell]
        first = _cell_weights(weights[0], f"{name} layer 0")
        input_kernel = np.asarray(first.input_kernel)
        if input_kernel.ndim != 2 or input_kernel.shape[1] % gates or input_kernel.shape[1] == 0:
            raise ShapeError(f"{name} layer 0 forward: input_kernel must be (input_size, "
                             f"{gates}*hidden_size), got shape {input_kernel.shape}")
        self.input_size = input_kernel.shape[0]
        self.hidden_size = hidden = input_kernel.shape[1] // gates
        if first.projection is not None:
            if self.cell != "lstm":
                raise ConfigError(f"{name}: only LSTM supports a projection")
            projection = np.asarray(first.projection)
            if projection.ndim != 2:
                raise ShapeError(f"{name} layer 0 forward: projection must be (hidden_size, "
                                 f"proj_size), got shape {projection.shape}")
            self.proj_size = projection.shape[1]
        else:
            self.proj_size = 0
        self.output_size = width = self.proj_size or hidden
        self.num_layers = len(weights) // dirs
        self.peepholes = first.peephole is not None
        if self.peepholes and self.cell != "lstm":
            raise ConfigError(f"{name}: only LSTM has peepholes")

        checked = []
        for k, entry in enumerate(weights):
            layer, direction = divmod(k, dirs)
            where = f"{name} layer {layer} {'reverse' if direction else 'forward'}"
            w = _cell_weights(entry, where)
            if (w.projection is None) != (self.proj_size == 0):
                raise ConfigError(f"{where}: projection must be given for every layer and "
                                  f"direction or for none")
            if (w.peephole is None) == self.peepholes:
                raise ConfigError(f"{where}: peephole must be given for every layer and "
                                  f"direction or for none")
            in_width = self.input_size if layer == 0 else dirs * width
            expected = {
                "input_kernel": (in_width, gates * hidden),
                "recurrent_kernel": (width, gates * hidden),
                "input_bias": (gates * hidden,),
                "recurrent_bias": (gates * hidden,),
                "projection": (hidden, self.proj_size),
                "peephole": (3 * hidden,),
            }
            arrays = {}
            for field, shape in expected.items():
                value = getattr(w, field)
                if value is None:
                    arrays[field] = None
                    continue
                array = as_array(value, self.dtype, f"{where} {field}")
                if array.shape != shape:
                    raise ShapeError(f"{where}: {field} has shape {array.shape}, expected "
                                     f"{shape}")
                arrays[field] = np.ascontiguousarray(array)
            if not self.bias and (np.any(arrays["input_bias"])
                                  or np.any(arrays["recurrent_bias"])):
                raise ConfigError(f"{where}: bias=False, but the biases are not zero")
            checked.append(CellWeights(**arrays))
        return checked

    def _build_runners(self) -> None:
        """The derived objects calls run by, rebuilt from the weights after unpickling: the
        state layout, the compiled kernel's arrays and plan, and the oracle's plan."""
        self._state = StateLayout(type(self).__name__, self.cell,
                                  self.num_layers * self.num_directions, self.output_size,
                                  self.hidden_size, self.dtype)
        self._prepared = self._prepare_kernel_weights()
        self._plan = self._call_plan()
        self._oracle = oracle = OraclePlan(
            self.cell, self.weights, dict(
                bidirectional=self.bidirectional, activation=self.activation,
                recurrent_activation=self.recurrent_activation, reset_after=self.reset_after,
                cell_activation=self.cell_activation, clip=self.clip,
                input_forget=self.input_forget),
            self.dtype, self.num_directions * self.output_size, self.hidden_size)
        # What calls run by, by backend name: the one place a layer chooses its backend.
        # The hot paths read it inline, ``self._runners[current_backend()]`` (a Python
        # call less than _runner(): ~2% of a small call from zeros).
        self._runners = {"python": oracle}
        if self._plan is not None:
            self._runners["compiled"] = self._plan

    def _runner(self) -> Any:
        """What this thread's calls run by: the compiled kernel's
        :class:`~fastgate._kernels.recurrent.LayerPlan`, or under the python backend the
        oracle's :class:`~fastgate.oracle_plan.OraclePlan` (the same interface)."""
        return self._runners[current_backend()]

    def _prepare_kernel_weights(self) -> list[tuple] | None:
        """Per layer and direction, the arrays the compiled kernel reads (``None`` without it).

        The kernel owns that layout (``fastgate._kernels.recurrent.prepare``): it folds the
        biases together and packs the recurrent kernel for the running CPU's vector width.
        """
        kernels = compiled_module()
        if kernels is None:
            return None
        cell = _CELL_CODES[self.cell]
        return [kernels.prepare(cell, self.reset_after, w.input_kernel, w.recurrent_kernel,
                                w.input_bias, w.recurrent_bias, w.projection, w.peephole)
                for w in self.weights]

    def _call_plan(self) -> Any:
        """The compiled kernel's :class:`~fastgate._kernels.recurrent.LayerPlan` of this layer
        (``None`` without the extension): its constants and weights, checked once."""
        kernels = compiled_module()
        if kernels is None or self._prepared is None:
            return None
        plans.configure_from_environment()
        return kernels.LayerPlan(_CELL_CODES[self.cell], self._activation_codes,
                                 self.reset_after, self._prepared, self.num_directions,
                                 self.output_size, self.batch_first,
                                 np.inf if self.clip is None else self.clip,
                                 self.input_forget)

    @classmethod
    def random(cls, input_size: int, hidden_size: int, *, num_layers: int = 1,
               bidirectional: bool = False, proj_size: int = 0, seed: int | None = 0,
               scale: float | None = None, **options: Any) -> "RecurrentLayer":
        """A layer with weights drawn uniformly from ``[-scale, scale]``.

        ``scale`` defaults to ``1 / sqrt(hidden_size)``, PyTorch's initialisation. Useful for
        benchmarks and examples. ``options`` are passed to the constructor.
        """
        if cls.cell != "lstm" and proj_size:
            raise ConfigError(f"{cls.__name__} has no proj_size")
        rng = np.random.default_rng(seed)
        scale = 1 / np.sqrt(hidden_size) if scale is None else scale
        dirs = 2 if bidirectional else 1
        gates = GATE_COUNT[cls.cell]
        width = proj_size or hidden_size

        def draw(*shape: int) -> np.ndarray:
            return rng.uniform(-scale, scale, size=shape)

        weights = []
        for layer in range(num_layers):
            in_width = input_size if layer == 0 else dirs * width
            for _ in range(dirs):
                weights.append(CellWeights(
                    draw(in_width, gates * hidden_size), draw(width, gates * hidden_size),
                    draw(gates * hidden_size), draw(gates * hidden_size),
                    draw(hidden_size, proj_size) if proj_size else None))
        return cls(weights, bidirectional=bidirectional, **options)

    # ------------------------------------------------------------------ description
    def get_config(self) -> dict[str, Any]:
        """The constructor options (everything but the weights), JSON-serialisable."""
        config = {"bidirectional": self.bidirectional, "activation": self.activation,
                  "dtype": self.dtype.name, "batch_first": self.batch_first}
        if self.cell != "rnn":
            config["recurrent_activation"] = self.recurrent_activation
        if self.cell == "gru":
            config["reset_after"] = self.reset_after
        if not self.bias:  # absent from files written before the option existed
            config["bias"] = False
        # ONNX's options, only when used
        if self.cell == "lstm" and self.cell_activation != self.activation:
            config["cell_activation"] = self.cell_activation
        if self.clip is not None:
            config["clip"] = self.clip
        if self.input_forget:
            config["input_forget"] = True
        return config

    @property
    def state_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Shapes of the state arrays for batch ``B``, with ``-1`` standing for ``B``."""
        return self._state.kernel_shapes(-1)

    def __repr__(self) -> str:
        parts = [f"input_size={self.input_size}", f"hidden_size={self.hidden_size}"]
        if self.num_layers != 1:
            parts.append(f"num_layers={self.num_layers}")
        if self.proj_size:
            parts.append(f"proj_size={self.proj_size}")
        if self.peepholes:
            parts.append("peepholes=True")
        defaults = {"bidirectional": False, "activation": "tanh",
                    "recurrent_activation": "sigmoid", "reset_after": True,
                    "batch_first": False, "bias": True}
        for key, value in self.get_config().items():
            if key != "dtype" and defaults.get(key) != value:
                parts.append(f"{key}={value!r}")
        parts.append(f"dtype={self.dtype.name}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def _get_spec(self) -> dict[str, Any]:
        weights = [{k: v for k, v in w._asdict().items() if v is not None}
                   for w in self.weights]
        return {"config": self.get_config(), "weights": weights}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "RecurrentLayer":
        return cls(spec["weights"], **spec["config"])

    def save(self, path: str) -> None:
        """Save this layer in fastgate's own format (:mod:`fastgate.serialization`)."""
        save(self, path)

    def to_torch_state_dict(self, prefix: str = "", *, bias: bool | None = None
                            ) -> dict[str, np.ndarray]:
        """The weights as the PyTorch module's state_dict (NumPy arrays, PyTorch's keys).

        See :func:`fastgate.export.torch.to_torch_state_dict`.
        """
        from .export.torch import to_torch_state_dict

        return to_torch_state_dict(self, prefix, bias=bias)

    def to_onnx(self, path: Any, opset: int = 17, *, initial_state: bool = False,
                lengths: bool = False) -> None:
        """Write this layer as an ONNX model (PyTorch semantics); see
        :func:`fastgate.export.onnx.to_onnx`."""
        from .export.onnx import to_onnx

        to_onnx(self, path, opset, initial_state=initial_state, lengths=lengths)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for derived in ("_state", "_prepared", "_plan", "_oracle", "_runners"):  # rebuilt
            state.pop(derived, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("bias", True)  # pickled before the option existed
        self._build_runners()

    # ------------------------------------------------------------------ calling
    def __call__(self, x: ArrayLike, state: State | None = None,
                 lengths: ArrayLike | None = None) -> tuple[np.ndarray, State]:
        """Run the layer over a sequence.

        Parameters
        ----------
        x : array_like
            ``(B, T, input_size)`` if ``batch_first`` else ``(T, B, input_size)``; or one
            unbatched sequence ``(T, input_size)``. Integer and float inputs are converted to
            the layer's dtype.
        state : array or (array, array), optional
            Initial state: ``h0`` of shape ``(num_layers * num_directions, B, output_size)``
            (LSTM: the pair ``(h0, c0)``, ``c0`` of width ``hidden_size``). Zeros if omitted.
        lengths : array_like of int, optional
            ``(B,)`` valid length of each sequence, ``0 <= lengths[b] <= T``. Like PyTorch's
            packed sequences: a sequence's state stops at its last valid step, outputs past
            its length are zero, and the reverse direction starts at its last valid step.

        Returns
        -------
        out : ndarray
            Outputs of the last layer at every step, ``(B, T, num_directions * output_size)``
            (time-major if not ``batch_first``).
        state : ndarray or (ndarray, ndarray)
            Final state, arranged as ``state``: ``h_n`` (LSTM: ``(h_n, c_n)``).
        """
        # (With the compiled extension, fastgate._kernels.recurrent.layer_call replaces this
        # method: its branches without a Python frame, and a lean call with lengths too; see
        # the end of this module.)
        if state is None and lengths is None and not (
                tracing.recording and tracing.current_recorder() is not None):
            # The common call, checked and allocated by the runner (S1/S3-sized calls are
            # dominated by call overhead); None: x needs converting, the general path does.
            result = self._runners[current_backend()].run(x)
            if result is not None:
                return result
        return self._general_call(x, state, lengths)

    def _general_call(self, x: ArrayLike, state: State | None,
                      lengths: ArrayLike | None) -> tuple[np.ndarray, State]:
        """:meth:`__call__` on any arguments: converted and checked here, or explained."""
        runner = self._runners[current_backend()]
        x = as_array(x, self.dtype, f"{type(self).__name__} input")
        if x.ndim not in (2, 3) or x.shape[-1] != self.input_size:
            layout = "(B, T, D)" if self.batch_first else "(T, B, D)"
            raise ShapeError(f"{type(self).__name__} input: expected {layout} or (T, D) with "
                             f"D={self.input_size}, got shape {x.shape}")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[None] if self.batch_first else x[:, None]
        steps, batch = (x.shape[1], x.shape[0]) if self.batch_first else x.shape[:2]
        h0, c0 = self._state.to_kernel(state, batch, unbatched=unbatched)
        if (lengths is not None and runner is self._plan  # the kernel skips ended sequences
                and tracing.current_recorder() is None):  # (a trace takes forward's path)
            out, h_n, c_n = self._run_ragged(x, h0, c0, lengths, steps, batch)
        else:
            mask = None if lengths is None else self._lengths_mask(lengths, steps, batch)
            out, h_n, c_n = self.forward(x, h0, c0, mask=mask, batch_major=self.batch_first)
        if unbatched:
            out = out[0] if self.batch_first else out[:, 0]
        return out, self._state.to_public(h_n, c_n, unbatched=unbatched)

    @staticmethod
    def _lengths_mask(lengths: ArrayLike, steps: int, batch: int) -> np.ndarray:
        lengths = np.asarray(lengths)
        if lengths.dtype.kind not in "iu" and not (
                lengths.dtype.kind == "f" and np.all(np.mod(lengths, 1) == 0)):
            raise DTypeError(f"lengths must be integers, got dtype {lengths.dtype}")
        if lengths.shape != (batch,):
            raise ShapeError(f"lengths: expected shape ({batch},), got {lengths.shape}")
        if batch and (lengths.min() < 0 or lengths.max() > steps):
            raise ShapeError(f"lengths must lie in [0, {steps}] (the number of steps), got "
                             f"min {lengths.min()} and max {lengths.max()}")
        return np.arange(steps)[:, None] < lengths.astype(np.int64)[None, :]

    def forward(self, x: np.ndarray, h0: np.ndarray, c0: np.ndarray | None, *,
                mask: np.ndarray | None = None, batch_major: bool = False,
                hold_masked_output: bool = False
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The forward pass on validated arrays, in the active backend.

        ``x`` is ``(T, B, D)`` (``(B, T, D)`` if ``batch_major``) of the layer's dtype; ``h0``
        and ``c0`` are fresh C-contiguous arrays of the state shapes (they are updated in
        place and returned as the final state; :meth:`StateLayout.to_kernel
        <fastgate.state.StateLayout.to_kernel>` makes them); ``mask`` is a ``(T, B)`` bool
        array of valid steps. See :func:`fastgate.oracle.run_direction` for
        ``hold_masked_output``.

        Inside a traced call (:meth:`trace`, :mod:`fastgate.trace`) it also writes the gates
        of every step into traces the active recorder allocates.
        """
        runner = self._runner()
        recorder = tracing.current_recorder()
        traces = None
        if recorder is not None:
            steps, batch = (x.shape[1], x.shape[0]) if batch_major else x.shape[:2]
            # the oracle writes only the valid steps: the others must read NaN
            traces = recorder.allocate(self, steps, batch, batch_major, mask,
                                       fill=None if runner is self._plan else np.nan)
        out = runner.forward(
            as_kernel_array(x), h0, c0,
            None if mask is None else np.ascontiguousarray(mask, dtype=np.uint8),
            batch_major, hold_masked_output, traces=traces)
        return out, h0, c0

    def _run_ragged(self, x: np.ndarray, h0: np.ndarray, c0: np.ndarray | None,
                    lengths: ArrayLike, steps: int, batch: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The compiled forward pass of sequences of ``lengths``: sorted longest first, so
        that step ``t`` computes only the sequences still running (the active batch shrinks
        as they end), their outputs and final states put back in the caller's order
        (:meth:`LayerPlan.run_lengths <fastgate._kernels.recurrent.LayerPlan.run_lengths>`).
        """
        x = as_kernel_array(x)
        out = self._plan.run_lengths(x, h0, c0, lengths, self.batch_first)
        if out is None:   # lengths not a (B,) int64 array in [0, T]: checked, or explained
            self._lengths_mask(lengths, steps, batch)
            out = self._plan.run_lengths(x, h0, c0, np.asarray(lengths).astype(np.int64),
                                         self.batch_first)
        return out, h0, c0

    # ------------------------------------------------------------------ tracing
    def trace(self, x: ArrayLike, state: State | None = None,
              lengths: ArrayLike | None = None, *, sequences: Any = None,
              max_bytes: int = tracing.DEFAULT_MAX_BYTES) -> "tracing.Trace":
        """Run the layer like ``layer(x, state, lengths)`` and return what every gate
        computed at every step (:class:`fastgate.trace.Trace`), from the same kernels.

        ``sequences`` (an index, slice or list) traces only those sequences of the batch.
        A trace holds ``B * T * (G + 2) * H`` values per layer and direction (``G`` gates);
        above ``max_bytes`` (default 1 GiB) the call raises
        :class:`~fastgate.errors.ConfigError`, saying how much it needs.
        """
        if sequences is not None:
            x, state, lengths = self._sequences(x, state, lengths, sequences)
        with tracing.Recorder(max_bytes) as recorder:
            self(x, state, lengths)
        name = type(self).__name__.lower()
        return tracing.Trace(recorder.entries(lambda layer: (name, 0, None, None)))

    def _sequences(self, x: ArrayLike, state: State | None, lengths: ArrayLike | None,
                   sequences: Any) -> tuple[np.ndarray, State | None, ArrayLike | None]:
        """``x``, ``state`` and ``lengths`` of the batch rows ``sequences`` picks."""
        x = np.asarray(x)
        if x.ndim != 3:
            raise ConfigError(f"{type(self).__name__}.trace: sequences= picks sequences of a "
                              f"batch, got an input of shape {x.shape}")
        axis = 0 if self.batch_first else 1
        rows = tracing.select_sequences(x.shape[axis], sequences)
        if state is not None:
            parts = list(state) if self.cell == "lstm" else [state]
            parts = [np.asarray(part)[:, rows] for part in parts]
            state = tuple(parts) if self.cell == "lstm" else parts[0]
        if lengths is not None:
            lengths = np.asarray(lengths)[rows]
        return np.take(x, rows, axis=axis), state, lengths

    # ------------------------------------------------------------------ streaming
    def initial_state(self, batch_size: int = 1) -> State:
        """The zero state for ``batch_size`` sequences (LSTM: the pair ``(h, c)``).

        States are plain NumPy arrays: a service may store them between requests (pickle,
        ``np.save``...) and resume a sequence later with :meth:`step`.
        """
        return self._state.initial(batch_size)

    def step(self, x: ArrayLike, state: State | None = None) -> tuple[np.ndarray, State]:
        """Advance sequences by one step ``(B, D)`` or a chunk of steps ``(B, T, D)``.

        Always batch-major, whatever ``batch_first`` says. Feeding a sequence step by step
        or chunk by chunk gives the outputs of one call on the whole sequence. ``state`` (from
        :meth:`initial_state` or a previous ``step``; zeros if ``None``) is not modified; the
        new state is returned.

        Returns ``(y, state)``: ``y`` is ``(B, output_size)`` for one step, ``(B, T,
        output_size)`` for a chunk.
        """
        # the plan's lean step takes arrays already right (a streaming service's call);
        # None: they need converting, and the general path converts them or explains
        result = self._runners[current_backend()].step(x, state, 0, False)
        if result is not None:
            return result
        return self._general_step(x, state, self._state)

    def _general_step(self, x: ArrayLike, state: State | None, layout: StateLayout
                      ) -> tuple[np.ndarray, State]:
        """:meth:`step` on any arguments (converted, or explained), ``state`` in the public
        form of ``layout`` (this layer's, or a cell's flat one)."""
        name = layout.owner
        if self.bidirectional:
            raise ConfigError(f"{name}: a bidirectional layer cannot stream: its reverse "
                              f"direction needs the whole sequence")
        x = as_array(x, self.dtype, f"{name} step input")
        if x.ndim not in (2, 3) or x.shape[-1] != self.input_size:
            raise ShapeError(f"{name} step input: expected (B, {self.input_size}) or (B, T, "
                             f"{self.input_size}), got shape {x.shape}")
        single = x.ndim == 2
        chunk = x[:, None, :] if single else x
        h0, c0 = layout.to_kernel(state, chunk.shape[0])
        out, h_n, c_n = self.forward(chunk, h0, c0, batch_major=True)
        return (out[:, 0] if single else out), layout.to_public(h_n, c_n)

    @property
    def _activation_codes(self) -> tuple[tuple[int, float, float], ...]:
        """``(code, alpha, beta)`` of the activation, the recurrent activation and the cell
        state's activation, as the kernels read them."""
        codes = self.__dict__.get("_codes")
        if codes is None:
            codes = self._codes = tuple(
                (activation_code(name),) + activation_parameters(name)
                for name in (self.activation, self.recurrent_activation,
                             self.cell_activation))
        return codes


@serializable
class LSTM(RecurrentLayer):
    """Long short-term memory layer (PyTorch ``nn.LSTM`` semantics), optionally projected.

    Parameters
    ----------
    weights : list of CellWeights
        One per layer and direction, in fastgate's internal layout (:mod:`fastgate.layout`),
        gates ``i, f, g, o``. A ``projection`` ``(hidden_size, proj_size)`` on every entry makes
        a projected LSTM (PyTorch ``proj_size``).
    bidirectional : bool
        Whether the entries alternate forward / reverse directions.
    activation, recurrent_activation : str
        Activation of the cell candidate and state (default ``"tanh"``), and of the gates
        (default ``"sigmoid"``); see :mod:`fastgate.activations`.
    dtype : float32 or float64
        The dtype of the weights, inputs and outputs.
    batch_first : bool
        Inputs and outputs are ``(B, T, ...)`` instead of ``(T, B, ...)``.
    bias : bool
        ``False``: the layer has no biases (PyTorch ``bias=False``, Keras ``use_bias=False``);
        the bias arrays must then be zero. Exporters write no bias tensors for it.
    cell_activation : str, optional
        The activation of the cell state in ``h' = o * cell_activation(c')``; ``activation``
        if omitted (ONNX lets them differ).
    clip : float, optional
        ONNX's cell clip: each gate's pre-activation is clamped to ``[-clip, clip]``.
    input_forget : bool
        ONNX's coupled gates: ``f = 1 - i``.

    Peepholes (ONNX's ``P``) are weights: ``CellWeights.peephole``.

    Call with ``out, (h_n, c_n) = lstm(x, state=(h0, c0), lengths=None)``; see
    :meth:`RecurrentLayer.__call__`.
    """

    cell = "lstm"

    def __init__(self, weights: Sequence[CellWeights], *, bidirectional: bool = False,
                 activation: str = "tanh", recurrent_activation: str = "sigmoid",
                 dtype: Any = np.float32, batch_first: bool = False, bias: bool = True,
                 cell_activation: str | None = None, clip: float | None = None,
                 input_forget: bool = False) -> None:
        super().__init__(weights, bidirectional=bidirectional, activation=activation,
                         recurrent_activation=recurrent_activation, dtype=dtype,
                         batch_first=batch_first, bias=bias, cell_activation=cell_activation,
                         clip=clip, input_forget=input_forget)


@serializable
class GRU(RecurrentLayer):
    """Gated recurrent unit layer (PyTorch ``nn.GRU`` semantics by default).

    Parameters are those of :class:`LSTM` (gates ``r, z, n``, no projection) plus
    ``reset_after``: ``True`` applies the reset gate after the recurrent product
    (PyTorch, Keras ``reset_after=True``, ONNX ``linear_before_reset=1``), ``False`` before it
    (Cho et al. 2014, Keras ``reset_after=False``).

    ``clip`` is ONNX's (see :class:`LSTM`).

    Call with ``out, h_n = gru(x, state=h0, lengths=None)``.
    """

    cell = "gru"

    def __init__(self, weights: Sequence[CellWeights], *, bidirectional: bool = False,
                 activation: str = "tanh", recurrent_activation: str = "sigmoid",
                 reset_after: bool = True, dtype: Any = np.float32,
                 batch_first: bool = False, bias: bool = True,
                 clip: float | None = None) -> None:
        super().__init__(weights, bidirectional=bidirectional, activation=activation,
                         recurrent_activation=recurrent_activation, reset_after=reset_after,
                         dtype=dtype, batch_first=batch_first, bias=bias, clip=clip)


@serializable
class SimpleRNN(RecurrentLayer):
    """Elman recurrent layer, ``h' = act(x W + b_i + h U + b_h)`` (PyTorch ``nn.RNN``).

    Parameters are those of :class:`LSTM` with a single gate, no projection and no
    recurrent activation; ``activation`` defaults to ``"tanh"`` (PyTorch's
    ``nonlinearity="relu"`` is ``activation="relu"``); ``clip`` is ONNX's (see :class:`LSTM`).

    Call with ``out, h_n = rnn(x, state=h0, lengths=None)``.
    """

    cell = "rnn"

    def __init__(self, weights: Sequence[CellWeights], *, bidirectional: bool = False,
                 activation: str = "tanh", dtype: Any = np.float32,
                 batch_first: bool = False, bias: bool = True,
                 clip: float | None = None) -> None:
        super().__init__(weights, bidirectional=bidirectional, activation=activation,
                         dtype=dtype, batch_first=batch_first, bias=bias, clip=clip)


def _install_compiled_call() -> None:
    """Make the compiled extension's ``layer_call`` ``RecurrentLayer.__call__`` (when it is
    built): the branches of the Python method without its frame (a call at S3, ~2 us,
    spends ~0.2 us less), and calls with ``lengths=`` and no state checked in C."""
    kernels = compiled_module()
    if kernels is None:
        return
    RecurrentLayer.__call__ = kernels.compiled_layer_call(  # type: ignore[method-assign]
        RecurrentLayer.__call__, backend_variable, tracing)


_install_compiled_call()
