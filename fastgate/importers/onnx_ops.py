"""The non-recurrent ONNX operators fastgate runs, in NumPy, as the ONNX spec defines them.

These are the operators exporters put around recurrent ops (``torch.onnx.export``, tf2onnx):
shape plumbing (Shape, Gather, Unsqueeze, Squeeze, Concat, Slice, Transpose, Reshape,
Flatten, Cast, ConstantOfShape, Expand, Constant, Identity), arithmetic (Add, Sub, Mul, Div,
MatMul, Gemm) and activations (Relu, Tanh, Sigmoid, Softmax, LogSoftmax); and what
fastgate's own exports use for ``sequence_lens`` (Max, Min, Greater, Less, Equal, Not, Where,
Range), and the ``ReduceSum`` / ``ReduceProd`` that tf2onnx writes for shapes. Each is a function
``op(node, inputs, opset) -> list of outputs``; the importer calls it once at load time when
every input is a constant (constant folding), or at every run otherwise. Gemm and MatMul on
constant weights, and Gather on a constant table, are mapped to fastgate's Dense and
Embedding instead (:mod:`fastgate.importers.onnx`).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..activations import activation_function
from ..errors import InputError, ShapeError, UnsupportedLayerError
from .protobuf import TENSOR_DTYPES, NodeProto, dtype_name

__all__ = ["NUMPY_OPS", "MAX_FOLDED_ELEMENTS", "ATTRIBUTE_KINDS", "attribute_problem"]

#: Largest tensor an operator may create from a shape it is given (ConstantOfShape, Expand,
#: Reshape): a file cannot make fastgate allocate more than this many elements at load time.
MAX_FOLDED_ELEMENTS = 1 << 28

OpFunction = Callable[[NodeProto, list, int], list]
NUMPY_OPS: dict[str, OpFunction] = {}

_RECURRENT_ATTRIBUTES = {"hidden_size": "int", "direction": "str", "layout": "int",
                         "activations": "strs", "activation_alpha": "floats",
                         "activation_beta": "floats", "clip": "float", "input_forget": "int",
                         "linear_before_reset": "int", "output_sequence": "int"}
#: The attributes each op reads, and their kinds: a file whose attribute has another kind is
#: refused at load (WeightFormatError), not met with a TypeError at run time.
ATTRIBUTE_KINDS: dict[str, dict[str, str]] = {
    "Constant": {"value": "tensor", "value_float": "float", "value_floats": "floats",
                 "value_int": "int", "value_ints": "ints"},
    "ConstantOfShape": {"value": "tensor"}, "Shape": {"start": "int", "end": "int"},
    "Gather": {"axis": "int"}, "Unsqueeze": {"axes": "ints"}, "Squeeze": {"axes": "ints"},
    "Concat": {"axis": "int"}, "Transpose": {"perm": "ints"},
    "Slice": {"starts": "ints", "ends": "ints", "axes": "ints"},
    "Reshape": {"shape": "ints", "allowzero": "int"}, "Flatten": {"axis": "int"},
    "Cast": {"to": "int"}, "Gemm": {"transA": "int", "transB": "int", "alpha": "float",
                                    "beta": "float"},
    "Softmax": {"axis": "int"}, "LogSoftmax": {"axis": "int"},
    "ReduceSum": {"axes": "ints", "keepdims": "int", "noop_with_empty_axes": "int"},
    "ReduceProd": {"axes": "ints", "keepdims": "int", "noop_with_empty_axes": "int"},
    "LSTM": _RECURRENT_ATTRIBUTES, "GRU": _RECURRENT_ATTRIBUTES, "RNN": _RECURRENT_ATTRIBUTES,
}
_KIND_CHECKS: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "tensor": lambda v: isinstance(v, np.ndarray),
    "ints": lambda v: isinstance(v, list) and all(_KIND_CHECKS["int"](x) for x in v),
    "floats": lambda v: isinstance(v, list) and all(_KIND_CHECKS["float"](x) for x in v),
    "strs": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
}
#: Attributes an op cannot do without (at the given opsets).
_REQUIRED = {"Concat": ("axis",), "Cast": ("to",)}


def attribute_problem(node: NodeProto, opset: int) -> str | None:
    """Why ``node``'s attributes cannot be right (a kind, a missing one), or None."""
    kinds = ATTRIBUTE_KINDS.get(node.op_type, {})
    for name, value in node.attributes.items():
        kind = kinds.get(name)
        if kind is not None and not _KIND_CHECKS[kind](value):
            return f"attribute {name!r} must be {kind}, got {type(value).__name__}"
    required = _REQUIRED.get(node.op_type, ())
    if node.op_type == "Slice" and opset < 10:
        required = ("starts", "ends")
    if node.op_type == "Reshape" and opset < 5:
        required = ("shape",)
    missing = [name for name in required if name not in node.attributes]
    return f"attribute(s) {missing} missing" if missing else None


def _op(*names: str) -> Callable[[OpFunction], OpFunction]:
    def register(function: OpFunction) -> OpFunction:
        for name in names:
            NUMPY_OPS[name] = function
        return function
    return register


def _ints(value: Any, what: str, node: NodeProto) -> list[int]:
    array = np.asarray(value)
    if array.dtype.kind not in "iu" or array.ndim > 1:
        raise ShapeError(f"node {node.name!r} ({node.op_type}): {what} must be a 1-D integer "
                         f"tensor, got {array.dtype} of shape {array.shape}")
    return [int(v) for v in array.reshape(-1)]


def _axis(axis: int, rank: int, node: NodeProto) -> int:
    if not -rank <= axis < max(rank, 1):
        raise ShapeError(f"node {node.name!r} ({node.op_type}): axis {axis} is out of range for "
                         f"rank {rank}")
    return axis % rank if rank else 0


def _check_size(shape: list[int], node: NodeProto) -> tuple[int, ...]:
    count = 1
    for dim in shape:
        if dim < 0:
            raise ShapeError(f"node {node.name!r} ({node.op_type}): negative dimension in "
                             f"{shape}")
        count *= dim
    if count > MAX_FOLDED_ELEMENTS:
        raise ShapeError(f"node {node.name!r} ({node.op_type}): shape {shape} has {count} "
                         f"elements, more than the {MAX_FOLDED_ELEMENTS} fastgate creates")
    return tuple(shape)


def _input(inputs: list, index: int) -> Any:
    return inputs[index] if index < len(inputs) else None


# ------------------------------------------------------------------------- constants
@_op("Constant")
def constant(node: NodeProto, inputs: list, opset: int) -> list:
    attributes = node.attributes
    if "value" in attributes:
        return [np.asarray(attributes["value"])]
    if "value_float" in attributes:
        return [np.array(attributes["value_float"], np.float32)]
    if "value_floats" in attributes:
        return [np.array(attributes["value_floats"], np.float32)]
    if "value_int" in attributes:
        return [np.array(attributes["value_int"], np.int64)]
    if "value_ints" in attributes:
        return [np.array(attributes["value_ints"], np.int64)]
    raise UnsupportedLayerError(f"Constant node {node.name!r}: only tensor, float and int "
                                f"values are supported, got attributes {sorted(attributes)}",
                                layer=node.name)


@_op("Identity")
def identity(node: NodeProto, inputs: list, opset: int) -> list:
    return [inputs[0]]


@_op("ConstantOfShape")
def constant_of_shape(node: NodeProto, inputs: list, opset: int) -> list:
    shape = _check_size(_ints(inputs[0], "shape", node), node)
    value = node.attributes.get("value")
    value = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    if value.size != 1:
        raise ShapeError(f"node {node.name!r} (ConstantOfShape): value must hold one element")
    return [np.full(shape, value[0], dtype=value.dtype)]


# ----------------------------------------------------------------------------- shapes
@_op("Shape")
def shape(node: NodeProto, inputs: list, opset: int) -> list:
    dims = np.asarray(inputs[0]).shape
    start = node.attributes.get("start", 0)
    end = node.attributes.get("end")
    return [np.array(dims[start:end], dtype=np.int64)]


@_op("Gather")
def gather(node: NodeProto, inputs: list, opset: int) -> list:
    data, indices = np.asarray(inputs[0]), np.asarray(inputs[1])
    axis = _axis(node.attributes.get("axis", 0), data.ndim, node)
    if indices.dtype.kind not in "iu":
        raise ShapeError(f"node {node.name!r} (Gather): indices must be integers, got "
                         f"{indices.dtype}")
    size = data.shape[axis]
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise InputError(f"node {node.name!r} (Gather): indices must lie in [{-size}, {size}), "
                         f"got min {indices.min()} and max {indices.max()}")
    return [np.take(data, indices, axis=axis)]


@_op("Unsqueeze")
def unsqueeze(node: NodeProto, inputs: list, opset: int) -> list:
    data = np.asarray(inputs[0])
    axes = (_ints(inputs[1], "axes", node) if opset >= 13
            else list(node.attributes.get("axes", [])))
    rank = data.ndim + len(axes)
    axes = sorted(_axis(a, rank, node) for a in axes)
    return [np.expand_dims(data, tuple(axes))]


@_op("Squeeze")
def squeeze(node: NodeProto, inputs: list, opset: int) -> list:
    data = np.asarray(inputs[0])
    if opset >= 13:
        axes = _input(inputs, 1)
        axes = None if axes is None else _ints(axes, "axes", node)
    else:
        axes = node.attributes.get("axes")
    if axes is None:
        return [np.squeeze(data)]
    axes = tuple(_axis(a, data.ndim, node) for a in axes)
    if any(data.shape[a] != 1 for a in axes):
        raise ShapeError(f"node {node.name!r} (Squeeze): axes {axes} of shape {data.shape} are "
                         f"not all 1")
    return [np.squeeze(data, axis=axes)]


@_op("Concat")
def concat(node: NodeProto, inputs: list, opset: int) -> list:
    arrays = [np.asarray(a) for a in inputs if a is not None]
    axis = _axis(node.attributes.get("axis", 0), arrays[0].ndim, node)
    try:
        return [np.concatenate(arrays, axis=axis)]
    except ValueError as error:
        raise ShapeError(f"node {node.name!r} (Concat): {error}") from error


@_op("Slice")
def slice_(node: NodeProto, inputs: list, opset: int) -> list:
    data = np.asarray(inputs[0])
    if opset >= 10:
        starts = _ints(inputs[1], "starts", node)
        ends = _ints(inputs[2], "ends", node)
        axes = _input(inputs, 3)
        steps = _input(inputs, 4)
        axes = list(range(len(starts))) if axes is None else _ints(axes, "axes", node)
        steps = [1] * len(starts) if steps is None else _ints(steps, "steps", node)
    else:
        starts = list(node.attributes["starts"])
        ends = list(node.attributes["ends"])
        axes = list(node.attributes.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps) or 0 in steps:
        raise ShapeError(f"node {node.name!r} (Slice): starts, ends, axes and steps must have "
                         f"one (non-zero step) entry per axis")
    index = [slice(None)] * data.ndim
    # ONNX's clamping of starts and ends is Python's slice semantics
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[_axis(axis, data.ndim, node)] = slice(start, end, step)
    return [data[tuple(index)]]


@_op("Transpose")
def transpose(node: NodeProto, inputs: list, opset: int) -> list:
    data = np.asarray(inputs[0])
    perm = node.attributes.get("perm")
    if perm is not None and sorted(perm) != list(range(data.ndim)):
        raise ShapeError(f"node {node.name!r} (Transpose): perm {perm} is not a permutation of "
                         f"{data.ndim} axes")
    return [np.transpose(data, perm)]


@_op("Reshape")
def reshape(node: NodeProto, inputs: list, opset: int) -> list:
    data = np.asarray(inputs[0])
    target = (_ints(inputs[1], "shape", node) if opset >= 5
              else list(node.attributes["shape"]))
    allow_zero = node.attributes.get("allowzero", 0)
    shape = []
    for k, dim in enumerate(target):
        if dim == 0 and not allow_zero:
            if k >= data.ndim:
                raise ShapeError(f"node {node.name!r} (Reshape): 0 at axis {k} copies a "
                                 f"dimension the input (rank {data.ndim}) does not have")
            dim = data.shape[k]
        shape.append(dim)
    try:
        return [data.reshape(shape)]
    except ValueError as error:
        raise ShapeError(f"node {node.name!r} (Reshape): cannot reshape {data.shape} to "
                         f"{target}") from error


@_op("Flatten")
def flatten(node: NodeProto, inputs: list, opset: int) -> list:
    data = np.asarray(inputs[0])
    axis = node.attributes.get("axis", 1)
    axis = _axis(axis, data.ndim + 1, node) if axis != data.ndim else axis
    rows = int(np.prod(data.shape[:axis], dtype=np.int64))
    return [data.reshape(rows, -1) if rows else data.reshape(0, int(np.prod(data.shape[axis:])))]


@_op("Cast")
def cast(node: NodeProto, inputs: list, opset: int) -> list:
    to = node.attributes.get("to")
    if to not in TENSOR_DTYPES or to == 16:
        raise UnsupportedLayerError(f"Cast node {node.name!r}: casting to "
                                    f"{dtype_name(to or 0)} is not supported", layer=node.name)
    return [np.asarray(inputs[0]).astype(np.dtype(TENSOR_DTYPES[to]).newbyteorder("="))]


@_op("Expand")
def expand(node: NodeProto, inputs: list, opset: int) -> list:
    data = np.asarray(inputs[0])
    target = _ints(inputs[1], "shape", node)
    try:
        shape = np.broadcast_shapes(data.shape, tuple(target))
    except ValueError as error:
        raise ShapeError(f"node {node.name!r} (Expand): cannot broadcast {data.shape} to "
                         f"{target}") from error
    _check_size(list(shape), node)
    return [np.broadcast_to(data, shape)]


# ------------------------------------------------------------------------- arithmetic
def _binary(function: Callable[[Any, Any], Any]) -> OpFunction:
    def apply(node: NodeProto, inputs: list, opset: int) -> list:
        a, b = np.asarray(inputs[0]), np.asarray(inputs[1])
        try:
            np.broadcast_shapes(a.shape, b.shape)
        except ValueError as error:
            raise ShapeError(f"node {node.name!r} ({node.op_type}): shapes {a.shape} and "
                             f"{b.shape} do not broadcast") from error
        with np.errstate(all="ignore"):   # IEEE arithmetic, as ONNX Runtime computes it
            return [np.asarray(function(a, b))]
    return apply


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":
        if np.any(b == 0):
            raise InputError("integer division by zero")
        quotient = np.floor_divide(a, b)
        # integer Div truncates toward zero (C++ semantics, as ONNX Runtime computes it)
        return quotient + ((quotient < 0) & (quotient * b != a))
    return np.divide(a, b)


_op("Greater")(_binary(np.greater))
_op("Less")(_binary(np.less))
_op("Equal")(_binary(np.equal))


def _variadic(function: Callable[..., Any]) -> OpFunction:
    def apply(node: NodeProto, inputs: list, opset: int) -> list:
        arrays = [np.asarray(a) for a in inputs if a is not None]
        try:
            np.broadcast_shapes(*(a.shape for a in arrays))
        except ValueError as error:
            raise ShapeError(f"node {node.name!r} ({node.op_type}): shapes "
                             f"{[a.shape for a in arrays]} do not broadcast") from error
        result = arrays[0]
        for array in arrays[1:]:
            result = function(result, array)
        return [np.asarray(result)]
    return apply


_op("Max")(_variadic(np.maximum))
_op("Min")(_variadic(np.minimum))


@_op("Not")
def not_(node: NodeProto, inputs: list, opset: int) -> list:
    return [np.logical_not(inputs[0])]


@_op("Where")
def where(node: NodeProto, inputs: list, opset: int) -> list:
    condition, a, b = (np.asarray(v) for v in inputs[:3])
    try:
        shape = np.broadcast_shapes(condition.shape, a.shape, b.shape)
    except ValueError as error:
        raise ShapeError(f"node {node.name!r} (Where): shapes {condition.shape}, {a.shape} "
                         f"and {b.shape} do not broadcast") from error
    _check_size(list(shape), node)
    return [np.where(condition.astype(bool), a, b)]


@_op("Range")
def range_(node: NodeProto, inputs: list, opset: int) -> list:
    start, limit, delta = (np.asarray(v) for v in inputs[:3])
    if delta == 0:
        raise ShapeError(f"node {node.name!r} (Range): delta is 0")
    count = max(int(np.ceil((limit - start) / delta)), 0)
    _check_size([count], node)
    return [np.arange(start, limit, delta, dtype=start.dtype)[:count]]


_op("Add")(_binary(np.add))
_op("Sub")(_binary(np.subtract))
_op("Mul")(_binary(np.multiply))
_op("Div")(_binary(_divide))


#: The opset from which a reduction takes its axes as an input instead of an attribute.
_AXES_INPUT_FROM = {"ReduceSum": 13, "ReduceProd": 18}


def _reduction(function: Callable[..., Any]) -> OpFunction:
    def apply(node: NodeProto, inputs: list, opset: int) -> list:
        data = np.asarray(inputs[0])
        if opset >= _AXES_INPUT_FROM[node.op_type]:
            axes = _input(inputs, 1)
            axes = None if axes is None else _ints(axes, "axes", node)
        else:
            axes = node.attributes.get("axes")
        if not axes:
            if node.attributes.get("noop_with_empty_axes", 0):
                return [data]
            axes = list(range(data.ndim))
        axes = tuple(sorted({_axis(a, data.ndim, node) for a in axes}))
        keepdims = bool(node.attributes.get("keepdims", 1))
        return [np.asarray(function(data, axis=axes, keepdims=keepdims), dtype=data.dtype)]
    return apply


_op("ReduceSum")(_reduction(np.sum))
_op("ReduceProd")(_reduction(np.prod))


@_op("MatMul")
def matmul(node: NodeProto, inputs: list, opset: int) -> list:
    try:
        return [np.matmul(inputs[0], inputs[1])]
    except ValueError as error:
        raise ShapeError(f"node {node.name!r} (MatMul): {error}") from error


@_op("Gemm")
def gemm(node: NodeProto, inputs: list, opset: int) -> list:
    a, b, c = np.asarray(inputs[0]), np.asarray(inputs[1]), _input(inputs, 2)
    if a.ndim != 2 or b.ndim != 2:
        raise ShapeError(f"node {node.name!r} (Gemm): A and B must be matrices, got shapes "
                         f"{a.shape} and {b.shape}")
    if node.attributes.get("transA", 0):
        a = a.T
    if node.attributes.get("transB", 0):
        b = b.T
    if a.shape[1] != b.shape[0]:
        raise ShapeError(f"node {node.name!r} (Gemm): A {a.shape} and B {b.shape} do not "
                         f"multiply")
    alpha = node.attributes.get("alpha", 1.0)
    beta = node.attributes.get("beta", 1.0)
    y = a @ b
    if alpha != 1.0:
        y = y * np.asarray(alpha, y.dtype)
    if c is not None and beta != 0.0:
        y = y + np.asarray(c) * np.asarray(beta, y.dtype)
    return [y.astype(a.dtype, copy=False)]


# ------------------------------------------------------------------------ activations
def _elementwise(name: str) -> OpFunction:
    function = activation_function(name)

    def apply(node: NodeProto, inputs: list, opset: int) -> list:
        x = np.asarray(inputs[0])
        return [function(x).astype(x.dtype, copy=False)]
    return apply


_op("Relu")(_elementwise("relu"))
_op("Tanh")(_elementwise("tanh"))
_op("Sigmoid")(_elementwise("sigmoid"))


def _softmax_family(log: bool) -> OpFunction:
    def apply(node: NodeProto, inputs: list, opset: int) -> list:
        x = np.asarray(inputs[0])
        if opset < 13:   # the input is seen as 2-D: axes before `axis` x axes from it
            axis = _axis(node.attributes.get("axis", 1), x.ndim, node)
            rows = int(np.prod(x.shape[:axis], dtype=np.int64))
            flat = x.reshape(rows, -1)
            return [_softmax(flat, -1, log).reshape(x.shape)]
        return [_softmax(x, _axis(node.attributes.get("axis", -1), x.ndim, node), log)]
    return apply


def _softmax(x: np.ndarray, axis: int, log: bool) -> np.ndarray:
    shifted = x - np.max(x, axis=axis, keepdims=True)
    if log:
        return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
    exp = np.exp(shifted)
    return exp / np.sum(exp, axis=axis, keepdims=True)


_op("Softmax")(_softmax_family(False))
_op("LogSoftmax")(_softmax_family(True))
