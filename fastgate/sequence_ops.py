"""Model steps that act on sequences besides the recurrent layers: the common Keras layers
around an LSTM or GRU (normalization, 1-D convolution and pooling, padding, reshaping, a
layer applied at every step, stacked recurrent cells).

Every class follows :mod:`fastgate.ops`: validated once at construction, ``.fastgate``
serializable, called inside a :class:`fastgate.Model` as ``outputs, mask = op.apply(x, mask)``
on batch-major values (``(B, T, C)``, Keras' ``channels_last``), with a ``streaming``
attribute and a ``repr``. Which op keeps, drops or makes the mask is Keras 3's rule for the
layer of the same name: normalization and :class:`TimeDistributed` keep it; convolution,
pooling, padding, cropping, up-sampling, reshaping and permuting drop it (Keras 3 layers
without ``compute_mask`` "destroy the mask information"; Keras 2 refused a mask there).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .activations import activation_function, canonical_name
from .errors import ConfigError, ShapeError
from ._validation import as_array, as_float_dtype
from .ops import AXIS_ACTIVATIONS, Bidirectional, GlobalPooling1D, Recurrent
from .serialization import serializable

__all__ = ["BatchNormalization", "LayerNormalization", "Conv1D", "Pooling1D", "ZeroPadding1D",
           "Cropping1D", "UpSampling1D", "Reshape", "Permute", "TimeDistributed",
           "StackedRecurrent"]

_PADDINGS = ("valid", "same", "causal")


def _float_input(x: Any, dtype: np.dtype, what: str, ndim: tuple[int, ...]) -> np.ndarray:
    x = as_array(x, dtype, what)
    if x.ndim not in ndim:
        raise ShapeError(f"{what}: expected a {' or '.join(f'{n}-d' for n in ndim)} array, "
                         f"got shape {x.shape}")
    return x


def _positive_int(value: Any, what: str, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or int(value) != value or value < (0 if allow_zero else 1):
        kind = "non-negative" if allow_zero else "positive"
        raise ConfigError(f"{what} must be a {kind} integer, got {value!r}")
    return int(value)


def _vector(value: Any, dtype: np.dtype, what: str, size: int | None) -> np.ndarray | None:
    if value is None:
        return None
    array = np.ascontiguousarray(as_array(value, dtype, what))
    if array.ndim != 1 or (size is not None and array.shape[0] != size):
        expected = f"({size},)" if size is not None else "a vector"
        raise ShapeError(f"{what}: expected {expected}, got shape {array.shape}")
    return array


def _apply_activation(name: str, y: np.ndarray) -> np.ndarray:
    if name == "linear":
        return y
    function = AXIS_ACTIVATIONS.get(name) or activation_function(name)
    with np.errstate(over="ignore"):
        return function(y).astype(y.dtype, copy=False)


# ------------------------------------------------------------------------ normalization
@serializable
class BatchNormalization:
    """Keras ``BatchNormalization`` at inference, on one axis of the input.

    ``y = (x - moving_mean) / sqrt(moving_variance + epsilon) * gamma + beta`` with the
    statistics, ``gamma`` (``scale``) and ``beta`` (``center``) broadcast along ``axis``
    (``-1``, the features, by default; ``gamma`` / ``beta`` ``None`` when absent). Keeps the
    mask (Keras uses it only when training). Per step when ``axis`` is the last axis.
    """

    def __init__(self, moving_mean: Any, moving_variance: Any, *, gamma: Any = None,
                 beta: Any = None, epsilon: float = 1e-3, axis: int = -1,
                 dtype: Any = np.float32) -> None:
        self.dtype = as_float_dtype(dtype)
        self.moving_mean = _vector(moving_mean, self.dtype, "BatchNormalization moving_mean",
                                   None)
        size = self.moving_mean.shape[0]
        self.moving_variance = _vector(moving_variance, self.dtype,
                                       "BatchNormalization moving_variance", size)
        self.gamma = _vector(gamma, self.dtype, "BatchNormalization gamma", size)
        self.beta = _vector(beta, self.dtype, "BatchNormalization beta", size)
        self.epsilon = float(epsilon)
        if int(axis) != axis or axis == 0:
            raise ConfigError(f"BatchNormalization axis must be a non-batch axis, got {axis!r}")
        self.axis = int(axis)
        self.streaming = "per_step" if self.axis == -1 else "whole_sequence"
        # x * scale + shift is the same affine map, worked out once.
        scale = 1.0 / np.sqrt(self.moving_variance.astype(np.float64) + self.epsilon)
        if self.gamma is not None:
            scale = scale * self.gamma
        shift = -self.moving_mean * scale
        if self.beta is not None:
            shift = shift + self.beta
        self._scale = scale.astype(self.dtype)
        self._shift = shift.astype(self.dtype)

    @property
    def features(self) -> int:
        return self.moving_mean.shape[0]

    def apply(self, x: Any, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        x = as_array(x, self.dtype, "BatchNormalization input")
        axis = self.axis if self.axis > 0 else x.ndim + self.axis
        if not 0 < axis < x.ndim or x.shape[axis] != self.features:
            raise ShapeError(f"BatchNormalization input: expected axis {self.axis} of width "
                             f"{self.features}, got shape {x.shape}")
        shape = [1] * x.ndim
        shape[axis] = self.features
        return x * self._scale.reshape(shape) + self._shift.reshape(shape), mask

    def _get_spec(self) -> dict[str, Any]:
        return {"moving_mean": self.moving_mean, "moving_variance": self.moving_variance,
                "gamma": self.gamma, "beta": self.beta, "epsilon": self.epsilon,
                "axis": self.axis, "dtype": self.dtype.name}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "BatchNormalization":
        spec = dict(spec)
        return cls(spec.pop("moving_mean"), spec.pop("moving_variance"), **spec)

    def __repr__(self) -> str:
        axis = "" if self.axis == -1 else f", axis={self.axis}"
        return (f"BatchNormalization({self.features}, epsilon={self.epsilon:g}, "
                f"scale={self.gamma is not None}, center={self.beta is not None}{axis})")


@serializable
class LayerNormalization:
    """Keras ``LayerNormalization``: each sample normalized over ``axes`` (the features).

    ``y = (x - mean) / sqrt(variance + epsilon) * gamma + beta``, the moments taken over
    ``axes`` (Keras' numbering: ``1`` is the axis after the batch, ``-1`` the last),
    ``gamma`` / ``beta`` of the sizes of those axes, or ``None``. With ``rms_scaling``
    (Keras 3) it is ``x / sqrt(variance + epsilon) * gamma``: Keras divides by the root of
    the variance and neither subtracts the mean nor adds ``beta``. Keeps the mask. Per step
    when it normalizes the last axis only.
    """

    def __init__(self, *, gamma: Any = None, beta: Any = None, axes: Sequence[int] = (-1,),
                 epsilon: float = 1e-3, rms_scaling: bool = False,
                 dtype: Any = np.float32) -> None:
        self.dtype = as_float_dtype(dtype)
        self.axes = tuple(int(a) for a in axes)
        if not self.axes or 0 in self.axes or len(set(self.axes)) != len(self.axes):
            raise ConfigError(f"LayerNormalization axes must be distinct non-batch axes, got "
                              f"{axes!r}")
        self.gamma = None if gamma is None else np.ascontiguousarray(
            as_array(gamma, self.dtype, "LayerNormalization gamma"))
        self.beta = None if beta is None else np.ascontiguousarray(
            as_array(beta, self.dtype, "LayerNormalization beta"))
        if self.gamma is not None and self.beta is not None and (
                self.gamma.shape != self.beta.shape):
            raise ShapeError(f"LayerNormalization gamma {self.gamma.shape} and beta "
                             f"{self.beta.shape} differ in shape")
        self.epsilon = float(epsilon)
        self.rms_scaling = bool(rms_scaling)
        self.streaming = "per_step" if self.axes == (-1,) else "whole_sequence"

    def _resolve(self, x: np.ndarray) -> tuple[tuple[int, ...], list[int]]:
        """The sorted axes of ``x`` to normalize, and the broadcast shape of gamma/beta."""
        axes = tuple(sorted(a if a > 0 else x.ndim + a for a in self.axes))
        if not all(0 < a < x.ndim for a in axes) or len(set(axes)) != len(axes):
            raise ShapeError(f"LayerNormalization input: axes {list(self.axes)} do not fit "
                             f"shape {x.shape}")
        shape = [1] * x.ndim
        for axis in axes:
            shape[axis] = x.shape[axis]
        parameter = self.gamma if self.gamma is not None else self.beta
        if parameter is not None and parameter.size != int(np.prod([x.shape[a] for a in axes])):
            raise ShapeError(f"LayerNormalization input: axes {list(self.axes)} of shape "
                             f"{x.shape} do not match the {parameter.shape} parameters")
        return axes, shape

    def apply(self, x: Any, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        x = as_array(x, self.dtype, "LayerNormalization input")
        axes, shape = self._resolve(x)
        variance = np.var(x, axis=axes, keepdims=True)
        inverse = 1.0 / np.sqrt(variance + self.dtype.type(self.epsilon))
        if self.rms_scaling:
            y = x * inverse
        else:
            y = (x - np.mean(x, axis=axes, keepdims=True)) * inverse
        if self.gamma is not None:
            y = y * self.gamma.reshape(shape)
        if self.beta is not None and not self.rms_scaling:
            y = y + self.beta.reshape(shape)
        return y.astype(self.dtype, copy=False), mask

    def _get_spec(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "beta": self.beta, "axes": list(self.axes),
                "epsilon": self.epsilon, "rms_scaling": self.rms_scaling,
                "dtype": self.dtype.name}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "LayerNormalization":
        return cls(**spec)

    def __repr__(self) -> str:
        rms = ", rms_scaling=True" if self.rms_scaling else ""
        return (f"LayerNormalization(axes={list(self.axes)}, epsilon={self.epsilon:g}, "
                f"scale={self.gamma is not None}, center={self.beta is not None}{rms})")


# ------------------------------------------------------------------ convolution, pooling
def _same_padding(length: int, window: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding (Keras' on every backend): the output has
    ``ceil(length / stride)`` steps and the extra padding step goes at the end."""
    steps = -(-length // stride)
    total = max((steps - 1) * stride + window - length, 0)
    return total // 2, total - total // 2


def _windows(steps: int, window: int, stride: int, dilation: int, what: str) -> np.ndarray:
    """``(T_out, window)`` indices of the steps each output step reads."""
    span = (window - 1) * dilation + 1
    count = (steps - span) // stride + 1 if steps >= span else 0
    if count <= 0:
        raise ShapeError(f"{what}: {steps} steps (after padding) are fewer than the window of "
                         f"{span}")
    return np.arange(count)[:, None] * stride + np.arange(window)[None, :] * dilation


@serializable
class Conv1D:
    """Keras ``Conv1D`` (``channels_last``): ``(B, T, C_in) -> (B, T_out, filters)``.

    ``kernel`` is Keras' ``(kernel_size, C_in / groups, filters)``; ``padding`` is
    ``"valid"``, ``"same"`` (TensorFlow's, extra step at the end) or ``"causal"`` (all the
    padding before the first step). Computed as one matrix product of the gathered windows
    (im2col) per group. Drops the mask.
    """

    streaming = "whole_sequence"

    def __init__(self, kernel: Any, bias: Any = None, *, strides: int = 1,
                 padding: str = "valid", dilation_rate: int = 1, groups: int = 1,
                 activation: str = "linear", dtype: Any = np.float32) -> None:
        self.dtype = as_float_dtype(dtype)
        self.kernel = np.ascontiguousarray(as_array(kernel, self.dtype, "Conv1D kernel"))
        if self.kernel.ndim != 3:
            raise ShapeError(f"Conv1D kernel: expected (kernel_size, in_channels / groups, "
                             f"filters), got shape {self.kernel.shape}")
        self.groups = _positive_int(groups, "Conv1D groups")
        if self.filters % self.groups:
            raise ConfigError(f"Conv1D: {self.filters} filters do not split into "
                              f"{self.groups} groups")
        self.bias = _vector(bias, self.dtype, "Conv1D bias", self.filters)
        self.strides = _positive_int(strides, "Conv1D strides")
        self.dilation_rate = _positive_int(dilation_rate, "Conv1D dilation_rate")
        if padding not in _PADDINGS:
            raise ConfigError(f"Conv1D padding must be one of {_PADDINGS}, got {padding!r}")
        self.padding = padding
        self.activation = (activation if activation in AXIS_ACTIVATIONS
                           else canonical_name(activation))

    @property
    def kernel_size(self) -> int:
        return self.kernel.shape[0]

    @property
    def filters(self) -> int:
        return self.kernel.shape[2]

    @property
    def in_channels(self) -> int:
        return self.kernel.shape[1] * self.groups

    def _padded(self, x: np.ndarray) -> np.ndarray:
        span = (self.kernel_size - 1) * self.dilation_rate + 1
        if self.padding == "valid":
            return x
        if self.padding == "causal":
            before, after = span - 1, 0
        else:
            before, after = _same_padding(x.shape[1], span, self.strides)
        return np.pad(x, ((0, 0), (before, after), (0, 0)))

    def apply(self, x: Any, mask: np.ndarray | None) -> tuple[np.ndarray, None]:
        x = _float_input(x, self.dtype, "Conv1D input", (3,))
        if x.shape[2] != self.in_channels:
            raise ShapeError(f"Conv1D input: expected (B, T, {self.in_channels}), got shape "
                             f"{x.shape}")
        padded = self._padded(x)
        index = _windows(padded.shape[1], self.kernel_size, self.strides, self.dilation_rate,
                         "Conv1D input")
        batch, steps = x.shape[0], index.shape[0]
        columns = padded[:, index, :]                      # (B, T_out, k, C_in)
        if self.groups == 1:
            y = columns.reshape(batch * steps, -1) @ self.kernel.reshape(-1, self.filters)
        else:
            width, per_group = self.kernel.shape[1], self.filters // self.groups
            columns = columns.reshape(batch, steps, self.kernel_size, self.groups, width)
            kernel = self.kernel.reshape(self.kernel_size, width, self.groups, per_group)
            y = np.einsum("btkgc,kcgf->btgf", columns, kernel, optimize=True)
        y = y.reshape(batch, steps, self.filters)
        if self.bias is not None:
            y = y + self.bias
        return _apply_activation(self.activation, y.astype(self.dtype, copy=False)), None

    def _get_spec(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "bias": self.bias, "strides": self.strides,
                "padding": self.padding, "dilation_rate": self.dilation_rate,
                "groups": self.groups, "activation": self.activation,
                "dtype": self.dtype.name}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "Conv1D":
        spec = dict(spec)
        return cls(spec.pop("kernel"), spec.pop("bias"), **spec)

    def __repr__(self) -> str:
        options = [f"{self.in_channels} -> {self.filters}", f"kernel_size={self.kernel_size}"]
        for key, default in (("strides", 1), ("padding", "valid"), ("dilation_rate", 1),
                             ("groups", 1), ("activation", "linear")):
            if getattr(self, key) != default:
                options.append(f"{key}={getattr(self, key)!r}")
        if self.bias is None:
            options.append("bias=False")
        return f"Conv1D({', '.join(options)})"


@serializable
class Pooling1D:
    """Keras ``MaxPooling1D`` / ``AveragePooling1D`` (``channels_last``).

    ``mode`` ``"max"`` or ``"average"``; ``padding`` ``"valid"`` or ``"same"``
    (TensorFlow's: the padded steps take no part, in the maximum nor in the average's
    count). Drops the mask (the pooled steps no longer line up with it).
    """

    streaming = "whole_sequence"

    def __init__(self, mode: str, pool_size: int = 2, *, strides: int | None = None,
                 padding: str = "valid", dtype: Any = np.float32) -> None:
        if mode not in ("max", "average"):
            raise ConfigError(f"Pooling1D mode must be 'max' or 'average', got {mode!r}")
        if padding not in ("valid", "same"):
            raise ConfigError(f"Pooling1D padding must be 'valid' or 'same', got {padding!r}")
        self.mode = mode
        self.pool_size = _positive_int(pool_size, "Pooling1D pool_size")
        self.strides = self.pool_size if strides is None else _positive_int(
            strides, "Pooling1D strides")
        self.padding = padding
        self.dtype = as_float_dtype(dtype)

    def apply(self, x: Any, mask: np.ndarray | None) -> tuple[np.ndarray, None]:
        x = _float_input(x, self.dtype, f"Pooling1D({self.mode!r}) input", (3,))
        before = after = 0
        if self.padding == "same":
            before, after = _same_padding(x.shape[1], self.pool_size, self.strides)
        fill = -np.inf if self.mode == "max" else 0.0
        padded = np.pad(x, ((0, 0), (before, after), (0, 0)), constant_values=fill)
        index = _windows(padded.shape[1], self.pool_size, self.strides, 1,
                         f"Pooling1D({self.mode!r}) input")
        windows = padded[:, index, :]                       # (B, T_out, pool, C)
        if self.mode == "max":
            return np.max(windows, axis=2), None
        real = (index >= before) & (index < before + x.shape[1])  # not a padded step
        count = real.sum(axis=1).astype(self.dtype)[None, :, None]
        return (np.sum(windows, axis=2) / count).astype(self.dtype, copy=False), None

    def _get_spec(self) -> dict[str, Any]:
        return {"mode": self.mode, "pool_size": self.pool_size, "strides": self.strides,
                "padding": self.padding, "dtype": self.dtype.name}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "Pooling1D":
        spec = dict(spec)
        return cls(spec.pop("mode"), spec.pop("pool_size"), **spec)

    def __repr__(self) -> str:
        return (f"Pooling1D({self.mode!r}, pool_size={self.pool_size}, strides={self.strides}, "
                f"padding={self.padding!r})")


# ------------------------------------------------------------------------ steps axis edits
@serializable
class ZeroPadding1D:
    """Keras ``ZeroPadding1D``: ``before`` / ``after`` zero steps around ``(B, T, C)``.
    Drops the mask."""

    streaming = "whole_sequence"

    def __init__(self, before: int = 1, after: int = 1, *, dtype: Any = np.float32) -> None:
        self.before = _positive_int(before, "ZeroPadding1D before", allow_zero=True)
        self.after = _positive_int(after, "ZeroPadding1D after", allow_zero=True)
        self.dtype = as_float_dtype(dtype)

    def apply(self, x: Any, mask: np.ndarray | None) -> tuple[np.ndarray, None]:
        x = _float_input(x, self.dtype, "ZeroPadding1D input", (3,))
        return np.pad(x, ((0, 0), (self.before, self.after), (0, 0))), None

    def _get_spec(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "dtype": self.dtype.name}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "ZeroPadding1D":
        return cls(**spec)

    def __repr__(self) -> str:
        return f"ZeroPadding1D(({self.before}, {self.after}))"


@serializable
class Cropping1D:
    """Keras ``Cropping1D``: drops ``before`` steps at the start and ``after`` at the end.
    Drops the mask."""

    streaming = "whole_sequence"

    def __init__(self, before: int = 1, after: int = 1, *, dtype: Any = np.float32) -> None:
        self.before = _positive_int(before, "Cropping1D before", allow_zero=True)
        self.after = _positive_int(after, "Cropping1D after", allow_zero=True)
        self.dtype = as_float_dtype(dtype)

    def apply(self, x: Any, mask: np.ndarray | None) -> tuple[np.ndarray, None]:
        x = _float_input(x, self.dtype, "Cropping1D input", (3,))
        if self.before + self.after >= x.shape[1]:
            raise ShapeError(f"Cropping1D input: cropping ({self.before}, {self.after}) "
                             f"leaves no step of {x.shape[1]}")
        return x[:, self.before:x.shape[1] - self.after], None

    def _get_spec(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "dtype": self.dtype.name}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "Cropping1D":
        return cls(**spec)

    def __repr__(self) -> str:
        return f"Cropping1D(({self.before}, {self.after}))"


@serializable
class UpSampling1D:
    """Keras ``UpSampling1D``: every step repeated ``size`` times. Drops the mask."""

    streaming = "whole_sequence"

    def __init__(self, size: int = 2, *, dtype: Any = np.float32) -> None:
        self.size = _positive_int(size, "UpSampling1D size")
        self.dtype = as_float_dtype(dtype)

    def apply(self, x: Any, mask: np.ndarray | None) -> tuple[np.ndarray, None]:
        x = _float_input(x, self.dtype, "UpSampling1D input", (3,))
        return np.repeat(x, self.size, axis=1), None

    def _get_spec(self) -> dict[str, Any]:
        return {"size": self.size, "dtype": self.dtype.name}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "UpSampling1D":
        return cls(**spec)

    def __repr__(self) -> str:
        return f"UpSampling1D({self.size})"


@serializable
class Reshape:
    """Keras ``Reshape``: ``(B, ...) -> (B, *target_shape)``, one entry may be ``-1``.
    Drops the mask."""

    streaming = "whole_sequence"

    def __init__(self, target_shape: Sequence[int], *, dtype: Any = np.float32) -> None:
        self.target_shape = tuple(int(d) for d in target_shape)
        if sum(d == -1 for d in self.target_shape) > 1 or any(
                d < -1 or d == 0 for d in self.target_shape):
            raise ConfigError(f"Reshape target_shape must hold positive sizes and at most one "
                              f"-1, got {target_shape!r}")
        self.dtype = as_float_dtype(dtype)

    def apply(self, x: Any, mask: np.ndarray | None) -> tuple[np.ndarray, None]:
        x = as_array(x, self.dtype, "Reshape input")
        if x.ndim == 0:
            raise ShapeError("Reshape input: expected a batch, got a scalar")
        try:
            return x.reshape((x.shape[0],) + self.target_shape), None
        except ValueError:
            raise ShapeError(f"Reshape input: shape {x.shape} cannot become (B, "
                             f"{', '.join(map(str, self.target_shape))})") from None

    def _get_spec(self) -> dict[str, Any]:
        return {"target_shape": list(self.target_shape), "dtype": self.dtype.name}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "Reshape":
        return cls(spec["target_shape"], dtype=spec["dtype"])

    def __repr__(self) -> str:
        return f"Reshape({self.target_shape})"


@serializable
class Permute:
    """Keras ``Permute``: ``dims`` is a permutation of the non-batch axes, counted from 1.
    Drops the mask."""

    streaming = "whole_sequence"

    def __init__(self, dims: Sequence[int], *, dtype: Any = np.float32) -> None:
        self.dims = tuple(int(d) for d in dims)
        if sorted(self.dims) != list(range(1, len(self.dims) + 1)):
            raise ConfigError(f"Permute dims must be a permutation of 1..{len(self.dims)}, "
                              f"got {dims!r}")
        self.dtype = as_float_dtype(dtype)

    def apply(self, x: Any, mask: np.ndarray | None) -> tuple[np.ndarray, None]:
        x = as_array(x, self.dtype, "Permute input")
        if x.ndim != len(self.dims) + 1:
            raise ShapeError(f"Permute input: expected {len(self.dims) + 1} dimensions, got "
                             f"shape {x.shape}")
        return np.ascontiguousarray(np.transpose(x, (0,) + self.dims)), None

    def _get_spec(self) -> dict[str, Any]:
        return {"dims": list(self.dims), "dtype": self.dtype.name}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "Permute":
        return cls(spec["dims"], dtype=spec["dtype"])

    def __repr__(self) -> str:
        return f"Permute({self.dims})"


# ------------------------------------------------------------------------ wrappers
@serializable
class TimeDistributed:
    """Keras ``TimeDistributed``: ``layer`` applied to every step of ``(B, T, ...)`` alone.

    Runs ``layer`` once on the ``B * T`` steps stacked as a batch. Keeps the mask (Keras 3);
    ``layer`` itself gets none, so a layer that reads a mask (a recurrent layer, an average
    pooling) refuses to run under one rather than ignore it.
    """

    streaming = "per_step"

    def __init__(self, layer: Any) -> None:
        if not hasattr(layer, "apply") or getattr(layer, "streaming", None) is None:
            raise ConfigError(f"TimeDistributed wraps a model op, got {type(layer).__name__}")
        if getattr(layer, "return_state", False) or getattr(layer, "merge_mode", "") is None:
            raise ConfigError("TimeDistributed wraps a layer with one output")
        self.layer = layer
        self._reads_mask = isinstance(layer, (Recurrent, Bidirectional, StackedRecurrent)) or (
            isinstance(layer, GlobalPooling1D) and layer.mode == "average")

    def apply(self, x: Any, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        x = np.asarray(x)
        if x.ndim < 3:
            raise ShapeError(f"TimeDistributed input: expected (B, T, ...), got shape "
                             f"{x.shape}")
        if mask is not None and self._reads_mask:
            raise ShapeError(f"TimeDistributed({self.layer!r}) under a mask: Keras would pass "
                             f"each step's mask to the inner layer, which fastgate does not do")
        batch, steps = x.shape[:2]
        y, _ = self.layer.apply(x.reshape((batch * steps,) + x.shape[2:]), None)
        if isinstance(y, tuple):  # Bidirectional gives a tuple, here of one output
            (y,) = y
        return y.reshape((batch, steps) + y.shape[1:]), mask

    def _get_spec(self) -> dict[str, Any]:
        return {"layer": self.layer}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "TimeDistributed":
        return cls(spec["layer"])

    def __repr__(self) -> str:
        return f"TimeDistributed({self.layer!r})"


@serializable
class StackedRecurrent:
    """Keras ``RNN(StackedRNNCells([...]))`` (or ``RNN([cell, cell, ...])``): the cells one
    after the other at every step, which is the same as running them as stacked layers
    over the whole sequence.

    ``layers`` are one-direction :class:`~fastgate.ops.Recurrent` ops in cell order, each
    built with ``return_sequences=True`` but the last, which carries the RNN's
    ``return_sequences`` and ``zero_output_for_mask``. With ``go_backwards`` the sequence
    (and its mask) is reversed once, before the first cell, and every cell reads it
    forwards, as Keras' loop does. A masked step holds every cell's state. The mask passed on
    is the input's (not reversed) if ``return_sequences``, else none.
    """

    streaming = "whole_sequence"

    def __init__(self, layers: Sequence[Recurrent], *, go_backwards: bool = False) -> None:
        self.layers = list(layers)
        if not self.layers or not all(isinstance(op, Recurrent) for op in self.layers):
            raise ConfigError("StackedRecurrent needs one or more Recurrent ops")
        for op in self.layers:
            if op.go_backwards or op.return_state or op.stateful:
                raise ConfigError(f"StackedRecurrent cells read forwards, without "
                                  f"return_state or stateful; got {op!r}")
        if not all(op.return_sequences for op in self.layers[:-1]):
            raise ConfigError("StackedRecurrent: every cell but the last returns sequences")
        self.go_backwards = bool(go_backwards)

    @property
    def return_sequences(self) -> bool:
        return self.layers[-1].return_sequences

    def apply(self, x: Any, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        reading_mask = mask
        if self.go_backwards:
            x = np.asarray(x)[:, ::-1]
            reading_mask = None if mask is None else np.asarray(mask)[:, ::-1]
        for op in self.layers:
            x, _ = op.apply(x, reading_mask)
        return x, (mask if self.return_sequences else None)

    def _get_spec(self) -> dict[str, Any]:
        return {"layers": self.layers, "go_backwards": self.go_backwards}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "StackedRecurrent":
        return cls(spec["layers"], go_backwards=spec["go_backwards"])

    def __repr__(self) -> str:
        cells = ", ".join(repr(op.layer) for op in self.layers)
        options = "".join(f", {key}=True" for key in ("return_sequences", "go_backwards")
                          if getattr(self, key))
        return f"StackedRecurrent([{cells}]{options})"
