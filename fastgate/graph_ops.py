"""Ops of general graphs: array operations (mask chains), merges and attention.

Keras 3 records the small tensor operations of a functional model as layers of its
configuration (``keras.ops.not_equal``, ``any``, ``logical_or``, ``expand_dims``, ...): the
masks that ``Masking``, ``Embedding`` and the merge layers compute, and any ``mask=``
argument a user computed, are chains of them. :class:`ArrayOp` evaluates one such operation
with NumPy, exactly as Keras defines it. :class:`Merge` and :class:`Dot` are Keras' merge
layers, :class:`Attention` its ``Attention`` and ``AdditiveAttention`` layers.

Each class is a step of a :class:`fastgate.Model` (``op.apply(x, mask)``; the multi-input
ones have ``multi_input = True`` and take lists) and serializes to ``.fastgate``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .errors import ConfigError, ShapeError
from ._validation import as_array, as_float_dtype
from .serialization import serializable

__all__ = ["ArrayOp", "ARRAY_OPERATIONS", "OPERATION_OPTIONS", "Merge", "Dot", "Attention",
           "TENSOR"]

#: Stands for a tensor argument in :attr:`ArrayOp.arguments` (the others are constants).
TENSOR = "__tensor__"


def _reduction(function: Callable) -> Callable:
    def reduce(x: np.ndarray, axis: Any = None, keepdims: bool = False,
               initial: Any = None) -> np.ndarray:
        axis = tuple(axis) if isinstance(axis, list) else axis
        extra = {} if initial is None else {"initial": initial}
        return function(x, axis=axis, keepdims=bool(keepdims), **extra)
    return reduce


def _like(fill: Callable) -> Callable:
    def like(x: np.ndarray, dtype: Any = None) -> np.ndarray:
        return fill(np.shape(x), dtype=np.dtype(dtype) if dtype else np.asarray(x).dtype)
    return like


def _cast(x: np.ndarray, dtype: Any) -> np.ndarray:
    return np.asarray(x).astype(np.dtype(dtype))


def _convert(x: np.ndarray, dtype: Any = None, sparse: Any = None, ragged: Any = None
             ) -> np.ndarray:
    return np.asarray(x) if dtype is None else np.asarray(x).astype(np.dtype(dtype))


def _squeeze(x: np.ndarray, axis: Any = None) -> np.ndarray:
    return np.squeeze(x, axis=tuple(axis) if isinstance(axis, list) else axis)


def _concatenate(*xs: np.ndarray, axis: int = 0) -> np.ndarray:
    return np.concatenate(xs, axis=axis)


def _index(entry: Any) -> Any:
    """One entry of a Keras ``GetItem`` key as recorded: an int, ``None`` (a new axis),
    ``{"class_name": "__slice__", ...}`` or ``{"class_name": "__ellipsis__"}``."""
    if isinstance(entry, dict) and entry.get("class_name") == "__slice__":
        config = entry.get("config") or {}
        return slice(config.get("start"), config.get("stop"), config.get("step"))
    if isinstance(entry, dict) and entry.get("class_name") == "__ellipsis__":
        return Ellipsis
    if entry is None or (isinstance(entry, int) and not isinstance(entry, bool)):
        return entry
    raise ConfigError(f"GetItem: unsupported index entry {entry!r}")


def is_index_key(key: Any) -> bool:
    """Whether ``key`` is a ``GetItem`` key fastgate evaluates (basic indexing only)."""
    try:
        [_index(entry) for entry in (key if isinstance(key, list) else [key])]
    except ConfigError:
        return False
    return True


def _get_item(x: np.ndarray, key: Any) -> np.ndarray:
    if isinstance(key, list):
        return x[tuple(_index(entry) for entry in key)]
    return x[_index(key)]


#: Keras 3 operation class -> (NumPy function, acts on each step alone unless it has axes).
#: Binary operations broadcast like Keras'; comparisons and logical operations give bools.
ARRAY_OPERATIONS: dict[str, Callable] = {
    "NotEqual": np.not_equal, "Equal": np.equal, "Greater": np.greater,
    "GreaterEqual": np.greater_equal, "Less": np.less, "LessEqual": np.less_equal,
    "LogicalAnd": np.logical_and, "LogicalOr": np.logical_or,
    "LogicalXor": np.logical_xor, "LogicalNot": np.logical_not,
    "Any": _reduction(np.any), "All": _reduction(np.all), "Sum": _reduction(np.sum),
    "Max": _reduction(np.max), "Min": _reduction(np.min), "Mean": _reduction(np.mean),
    "Absolute": np.abs, "Abs": np.abs, "Add": np.add, "Subtract": np.subtract,
    "Multiply": np.multiply, "Cast": _cast, "ConvertToTensor": _convert,
    "ExpandDims": lambda x, axis: np.expand_dims(x, axis), "Squeeze": _squeeze,
    "ZerosLike": _like(np.zeros), "OnesLike": _like(np.ones), "Concatenate": _concatenate,
    "GetItem": _get_item,
}
#: The keyword options each operation takes (Keras records them in its config); an
#: operation recorded with another option is refused.
OPERATION_OPTIONS: dict[str, set[str]] = {
    **{name: {"axis", "keepdims"} for name in ("Any", "All", "Sum", "Mean")},
    "Max": {"axis", "keepdims", "initial"}, "Min": {"axis", "keepdims", "initial"},
    "Cast": {"dtype"}, "ConvertToTensor": {"dtype", "sparse", "ragged"},
    "ExpandDims": {"axis"}, "Squeeze": {"axis"}, "Concatenate": {"axis"},
    "ZerosLike": {"dtype"}, "OnesLike": {"dtype"},
}
# Operations that combine values across an axis (the others act elementwise).
_AXIS_OPERATIONS = {"Any", "All", "Sum", "Max", "Min", "Mean", "ExpandDims", "Squeeze",
                    "Concatenate", "GetItem"}


def _is_number(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float))


def _check_option(operation: str, key: str, value: Any) -> None:
    """Options are checked when the op is built, so a bad file fails at load, not later."""
    if key == "dtype":
        if value is None:
            return
        try:
            kind = np.dtype(value).kind
        except TypeError:
            kind = None
        if kind not in ("b", "i", "u", "f"):
            raise ConfigError(f"ArrayOp {operation}: dtype {value!r} is not a bool, integer "
                              f"or float type")
    elif key == "axis":
        axes = value if isinstance(value, list) else [value]
        if not all(a is None or (isinstance(a, int) and not isinstance(a, bool))
                   for a in axes):
            raise ConfigError(f"ArrayOp {operation}: axis {value!r} is not an integer")
    elif key in ("keepdims", "sparse", "ragged"):
        if not isinstance(value, bool) and value is not None:
            raise ConfigError(f"ArrayOp {operation}: {key} {value!r} is not a bool")
    elif key == "initial" and not _is_number(value):
        raise ConfigError(f"ArrayOp {operation}: initial {value!r} is not a number")


@serializable
class ArrayOp:
    """One Keras 3 tensor operation (``keras.ops``) evaluated with NumPy.

    Parameters
    ----------
    operation : str
        The Keras operation class (a key of :data:`ARRAY_OPERATIONS`), e.g. ``"NotEqual"``.
    arguments : list
        The positional arguments in order: :data:`TENSOR` where a tensor from the graph goes
        (filled from the node's inputs, in order), else the constant Keras recorded.
    options : dict
        The operation's keyword options (``axis``, ``keepdims``, ``dtype``).
    steps_axis_free : bool
        Whether the operation acts on each step alone (so a model can stream through it):
        true for elementwise operations, and for axis operations whose axes are known to
        be feature axes.

    Keras operations do not carry masks: the output has none.
    """

    multi_input = True

    def __init__(self, operation: str, arguments: list, options: dict | None = None, *,
                 steps_axis_free: bool | None = None) -> None:
        if operation not in ARRAY_OPERATIONS:
            raise ConfigError(f"ArrayOp: unknown operation {operation!r} (known: "
                              f"{', '.join(sorted(ARRAY_OPERATIONS))})")
        self.operation = operation
        self.arguments = list(arguments)
        self.options = dict(options or {})
        unknown = sorted(set(self.options) - OPERATION_OPTIONS.get(operation, set()))
        if unknown:
            raise ConfigError(f"ArrayOp {operation}: options {unknown} are not supported")
        for key, value in self.options.items():
            _check_option(operation, key, value)
        if operation == "GetItem" and not (len(self.arguments) == 2
                                           and is_index_key(self.arguments[1])):
            raise ConfigError(f"ArrayOp GetItem: unsupported key {self.arguments[1:]!r}")
        # the other arguments: tensor slots and numbers (GetItem's key is checked above)
        constants = self.arguments[:1] if operation == "GetItem" else self.arguments
        for value in constants:
            if not (_is_number(value) or (isinstance(value, str) and value == TENSOR)):
                raise ConfigError(f"ArrayOp {operation}: argument {value!r} is neither a "
                                  f"tensor nor a number")
        if steps_axis_free is None:
            steps_axis_free = operation not in _AXIS_OPERATIONS
        self.steps_axis_free = bool(steps_axis_free)
        self._function = ARRAY_OPERATIONS[operation]

    @property
    def streaming(self) -> str:
        return "per_step" if self.steps_axis_free else "whole_sequence"

    @property
    def tensor_count(self) -> int:
        """How many graph tensors the operation reads."""
        return sum(1 for a in self.arguments if isinstance(a, str) and a == TENSOR)

    def apply(self, xs: Any, masks: Any) -> tuple[np.ndarray, None]:
        values = list(xs) if isinstance(xs, list) else [xs]
        if len(values) != self.tensor_count:
            raise ShapeError(f"{self.operation}: expected {self.tensor_count} tensors, got "
                             f"{len(values)}")
        supplied = iter(values)
        arguments = [np.asarray(next(supplied)) if isinstance(a, str) and a == TENSOR else a
                     for a in self.arguments]
        try:
            with np.errstate(all="ignore"):
                return np.asarray(self._function(*arguments, **self.options)), None
        except (ValueError, IndexError, TypeError) as error:  # shapes that do not fit
            raise ShapeError(f"{self.operation}: {error}") from error

    def _get_spec(self) -> dict[str, Any]:
        return {"operation": self.operation, "arguments": self.arguments,
                "options": self.options, "steps_axis_free": self.steps_axis_free}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "ArrayOp":
        return cls(spec["operation"], spec["arguments"], spec.get("options"),
                   steps_axis_free=spec.get("steps_axis_free"))

    def __repr__(self) -> str:
        shown = ", ".join("x" if isinstance(a, str) and a == TENSOR else repr(a)
                          for a in self.arguments)
        options = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"ArrayOp({self.operation}({shown}){options})"


_MERGES = {"concatenate", "add", "subtract", "multiply", "average", "maximum", "minimum"}


@serializable
class Merge:
    """Keras' merge layers: ``Concatenate(axis)``, ``Add``, ``Subtract``, ``Multiply``,
    ``Average``, ``Maximum``, ``Minimum`` of several inputs.

    Elementwise merges broadcast like Keras (``Subtract`` takes exactly two inputs). The
    output mask follows the Keras version that saved the model (``mask_rule``):

    * ``"keras3"``: elementwise merges give ``m1 or m2 or ...`` (``None`` if an input has
      no mask); ``Concatenate`` gives ``any`` over the concatenated per-feature masks, an
      unmasked input counting as all true;
    * ``"keras2"`` (tf.keras): elementwise merges give ``all`` of the masks that exist;
      ``Concatenate`` gives ``all`` over the concatenated per-feature masks.
    """

    multi_input = True

    def __init__(self, mode: str, *, axis: int = -1, mask_rule: str = "keras3",
                 dtype: Any = np.float32) -> None:
        if mode not in _MERGES:
            raise ConfigError(f"Merge mode must be one of {sorted(_MERGES)}, got {mode!r}")
        if mask_rule not in ("keras3", "keras2"):
            raise ConfigError(f"Merge mask_rule must be 'keras3' or 'keras2', got "
                              f"{mask_rule!r}")
        self.mode = mode
        self.axis = int(axis)
        self.mask_rule = mask_rule
        self.dtype = as_float_dtype(dtype)

    @property
    def streaming(self) -> str:
        return "whole_sequence" if self.mode == "concatenate" and self.axis in (0, 1) \
            else "per_step"

    def _values(self, xs: Any) -> list[np.ndarray]:
        values = [as_array(x, self.dtype, f"{self.mode} input") for x in xs]
        if len(values) < 2 or (self.mode == "subtract" and len(values) != 2):
            wanted = "exactly 2" if self.mode == "subtract" else "at least 2"
            raise ShapeError(f"{self.mode}: expected {wanted} inputs, got {len(values)}")
        return values

    def apply(self, xs: list, masks: list) -> tuple[np.ndarray, np.ndarray | None]:
        values = self._values(xs)
        try:
            return self._merge(values, list(masks))
        except ShapeError:
            raise
        except (ValueError, IndexError) as error:  # shapes that do not fit
            raise ShapeError(f"{self.mode}: {error}; input shapes "
                             f"{[v.shape for v in values]}") from error

    def _merge(self, values: list[np.ndarray], masks: list
               ) -> tuple[np.ndarray, np.ndarray | None]:
        if self.mode == "concatenate":
            output = np.concatenate(values, axis=self.axis)
        elif self.mode == "subtract":
            output = values[0] - values[1]
        elif self.mode == "average":
            output = values[0]
            for v in values[1:]:
                output = output + v
            output = output / len(values)
        else:
            function = {"add": np.add, "multiply": np.multiply, "maximum": np.maximum,
                        "minimum": np.minimum}[self.mode]
            output = values[0]
            for v in values[1:]:
                output = function(output, v)
        return output.astype(self.dtype, copy=False), self._mask(values, masks)

    def _mask(self, values: list[np.ndarray], masks: list) -> np.ndarray | None:
        if all(m is None for m in masks):
            return None
        if self.mode == "concatenate":
            per_feature = []
            for value, mask in zip(values, masks):
                if mask is None:
                    per_feature.append(np.ones(value.shape, bool))
                elif np.ndim(mask) < value.ndim:
                    per_feature.append(np.broadcast_to(np.expand_dims(mask, -1), value.shape))
                else:
                    per_feature.append(np.asarray(mask, bool))
            joined = np.concatenate(per_feature, axis=self.axis)
            return joined.any(axis=-1) if self.mask_rule == "keras3" else joined.all(axis=-1)
        if self.mask_rule == "keras3":
            if any(m is None for m in masks):
                return None
            return np.logical_or.reduce([np.asarray(m, bool) for m in masks])
        return np.logical_and.reduce([np.asarray(m, bool) for m in masks if m is not None])

    def _get_spec(self) -> dict[str, Any]:
        return {"mode": self.mode, "axis": self.axis, "mask_rule": self.mask_rule,
                "dtype": self.dtype.name}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "Merge":
        return cls(spec["mode"], axis=spec["axis"], mask_rule=spec["mask_rule"],
                   dtype=spec["dtype"])

    def __repr__(self) -> str:
        axis = f", axis={self.axis}" if self.mode == "concatenate" else ""
        return f"Merge({self.mode!r}{axis})"


@serializable
class Dot:
    """Keras ``Dot(axes, normalize)``: sums of products of two inputs along ``axes``.

    ``axes`` is one axis for both inputs or a pair; negative axes count from the end.
    ``normalize`` L2-normalizes both inputs along those axes first (cosine proximity).
    Batch axis 0 is kept (Keras' ``batch_dot``). Gives no mask (Keras).
    """

    multi_input = True
    streaming = "whole_sequence"

    def __init__(self, axes: Any, *, normalize: bool = False,
                 dtype: Any = np.float32) -> None:
        pair = [axes, axes] if isinstance(axes, (int, np.integer)) else list(axes)
        if len(pair) != 2:
            raise ConfigError(f"Dot axes must be one axis or a pair, got {axes!r}")
        self.axes = [int(a) for a in pair]
        self.normalize = bool(normalize)
        self.dtype = as_float_dtype(dtype)

    def apply(self, xs: list, masks: list) -> tuple[np.ndarray, None]:
        if len(xs) != 2:
            raise ShapeError(f"Dot: expected 2 inputs, got {len(xs)}")
        x1, x2 = (as_array(x, self.dtype, "Dot input") for x in xs)
        if min(x1.ndim, x2.ndim) < 2:
            raise ShapeError(f"Dot: inputs need a batch axis and another, got shapes "
                             f"{x1.shape}, {x2.shape}")
        a1, a2 = (a % x.ndim for a, x in zip(self.axes, (x1, x2)))
        if self.normalize:
            x1 = x1 / np.maximum(np.sqrt(np.sum(x1 * x1, axis=a1, keepdims=True)), 1e-12)
            x2 = x2 / np.maximum(np.sqrt(np.sum(x2 * x2, axis=a2, keepdims=True)), 1e-12)
        return _batch_dot(x1, x2, a1, a2).astype(self.dtype, copy=False), None

    def _get_spec(self) -> dict[str, Any]:
        return {"axes": self.axes, "normalize": self.normalize, "dtype": self.dtype.name}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "Dot":
        return cls(spec["axes"], normalize=spec["normalize"], dtype=spec["dtype"])

    def __repr__(self) -> str:
        return f"Dot(axes={self.axes}, normalize={self.normalize})"


def _batch_dot(x1: np.ndarray, x2: np.ndarray, a1: int, a2: int) -> np.ndarray:
    """Keras ``batch_dot`` of 2-D or 3-D inputs: per batch row, contract ``a1`` with ``a2``;
    a 2-D result gets a trailing axis of 1 (Keras keeps the output at least 2-D)."""
    if 0 in (a1, a2):
        raise ShapeError("Dot: cannot contract over the batch axis")
    left = np.moveaxis(x1, a1, -1)            # (B, ..., K)
    right = np.moveaxis(x2, a2, 1)            # (B, K, ...)
    if left.shape[-1] != right.shape[1]:
        raise ShapeError(f"Dot: contracted axes differ in size: {x1.shape} axis {a1} vs "
                         f"{x2.shape} axis {a2}")
    rest_left, rest_right = left.shape[1:-1], right.shape[2:]
    out = np.einsum("bik,bkj->bij", left.reshape(left.shape[0], -1, left.shape[-1]),
                    right.reshape(right.shape[0], right.shape[1], -1))
    out = out.reshape((x1.shape[0],) + rest_left + rest_right)
    return out[:, None] if out.ndim == 1 else out


_SCORE_MODES = ("dot", "concat", "additive")


@serializable
class Attention:
    """Keras ``Attention`` (Luong: ``score_mode`` ``"dot"`` or ``"concat"``) and
    ``AdditiveAttention`` (Bahdanau: ``"additive"``) over ``[query, value]`` or
    ``[query, value, key]``, as Keras 3 computes them:

    * scores ``(B, Tq, Tv)``: ``dot``: ``q @ k^T`` (times ``scale``); ``concat``:
      ``w * sum(tanh(scale * (q_i + k_j)))``; ``additive``: ``sum(scale * tanh(q_i + k_j))``
      (``scale`` a vector there), ``1`` where there is no scale;
    * a value mask and ``causal`` (step ``i`` sees steps ``j <= i``) lower the masked
      scores by ``1e9`` before the softmax over ``Tv``; output ``softmax @ value``;
    * a query mask zeroes the output at masked query steps; the output mask is the query
      mask (Keras ``compute_mask``);
    * ``return_scores``: a second output, the softmax weights.

    ``given_masks`` says which masks (query, value) come as further inputs after the
    tensors (a Keras 3 call's recorded ``mask=[...]``); otherwise the masks are those that
    travel with the query and value.
    """

    multi_input = True
    streaming = "whole_sequence"

    def __init__(self, score_mode: str = "dot", *, scale: Any = None,
                 concat_score_weight: Any = None, causal: bool = False,
                 return_scores: bool = False, has_key: bool = False,
                 given_masks: Any = (False, False), dtype: Any = np.float32) -> None:
        if score_mode not in _SCORE_MODES:
            raise ConfigError(f"Attention score_mode must be one of {_SCORE_MODES}, got "
                              f"{score_mode!r}")
        self.dtype = as_float_dtype(dtype)
        self.score_mode = score_mode
        self.scale = None if scale is None else np.asarray(
            as_array(scale, self.dtype, "Attention scale"))
        self.concat_score_weight = None if concat_score_weight is None else np.asarray(
            as_array(concat_score_weight, self.dtype, "Attention concat_score_weight"))
        self.causal = bool(causal)
        self.return_scores = bool(return_scores)
        self.has_key = bool(has_key)
        self.given_masks = tuple(bool(g) for g in given_masks)
        if len(self.given_masks) != 2:
            raise ConfigError("Attention given_masks: two flags (query, value)")

    def _scores(self, query: np.ndarray, key: np.ndarray) -> np.ndarray:
        if self.score_mode == "dot":
            scores = query @ np.swapaxes(key, -2, -1)
            return scores * self.scale if self.scale is not None else scores
        pairs = query[:, :, None, :] + key[:, None, :, :]        # (B, Tq, Tv, dim)
        if self.score_mode == "additive":
            scale = self.scale if self.scale is not None else self.dtype.type(1)
            return np.sum(scale * np.tanh(pairs), axis=-1)
        if self.scale is not None:
            pairs = self.scale * pairs
        weight = (self.concat_score_weight if self.concat_score_weight is not None
                  else self.dtype.type(1))
        return weight * np.sum(np.tanh(pairs), axis=-1)

    def _split(self, xs: list, masks: list) -> tuple:
        count = 3 if self.has_key else 2
        given = sum(self.given_masks)
        if len(xs) != count + given:
            raise ShapeError(f"Attention: expected {count} tensors and {given} masks, got "
                             f"{len(xs)} inputs")
        tensors = [as_array(x, self.dtype, "Attention input") for x in xs[:count]]
        for t in tensors:
            if t.ndim != 3:
                raise ShapeError(f"Attention input: expected (B, T, dim), got {t.shape}")
        extra = iter(xs[count:])
        found = [np.asarray(next(extra), bool) if g else None for g in self.given_masks]
        if not any(self.given_masks):
            found = [masks[0] if masks else None, masks[1] if len(masks) > 1 else None]
        return tensors, found

    def apply(self, xs: list, masks: list) -> tuple[tuple, tuple]:
        try:
            return self._attend(list(xs), list(masks or []))
        except ShapeError:
            raise
        except (ValueError, IndexError) as error:  # shapes that do not fit
            raise ShapeError(f"Attention: {error}") from error

    def _attend(self, xs: list, masks: list) -> tuple[tuple, tuple]:
        tensors, (query_mask, value_mask) = self._split(xs, masks)
        query, value = tensors[0], tensors[1]
        key = tensors[2] if self.has_key else value
        scores = self._scores(query, key).astype(self.dtype, copy=False)
        keep = None if value_mask is None else np.asarray(value_mask, bool)[:, None, :]
        if self.causal:
            steps_q, steps_v = scores.shape[-2:]
            lower = (np.arange(steps_q)[:, None] >= np.arange(steps_v)[None, :])[None]
            keep = lower if keep is None else np.logical_and(keep, lower)
        if keep is not None:
            scores = np.where(keep, scores, scores - self.dtype.type(1e9))
        shifted = np.exp(scores - scores.max(axis=-1, keepdims=True))
        weights = (shifted / shifted.sum(axis=-1, keepdims=True)).astype(self.dtype)
        output = weights @ value
        if query_mask is not None:
            query_mask = np.asarray(query_mask, bool)
            output = np.where(query_mask[..., None], output, self.dtype.type(0))
        output = output.astype(self.dtype, copy=False)
        if self.return_scores:
            return (output, weights), (query_mask, None)
        return (output,), (query_mask,)

    def _get_spec(self) -> dict[str, Any]:
        return {"score_mode": self.score_mode, "scale": self.scale,
                "concat_score_weight": self.concat_score_weight, "causal": self.causal,
                "return_scores": self.return_scores, "has_key": self.has_key,
                "given_masks": list(self.given_masks), "dtype": self.dtype.name}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "Attention":
        spec = dict(spec)
        return cls(spec.pop("score_mode"), **spec)

    def __repr__(self) -> str:
        options = [repr(self.score_mode)]
        if self.scale is not None:
            options.append("use_scale=True")
        for key in ("causal", "return_scores", "has_key"):
            if getattr(self, key):
                options.append(f"{key}=True")
        return f"Attention({', '.join(options)})"
