"""A mapped ONNX graph as a :class:`fastgate.Model`: one graph engine for every format.

:mod:`fastgate.importers.onnx` folds the constant subgraphs of a file and maps each remaining
node to a :class:`GraphStep`: either a fastgate model op (a :class:`~fastgate.ops.Recurrent`
where an ``LSTM`` / ``GRU`` / ``RNN`` node with its ``Squeeze`` is one, a
:class:`~fastgate.ops.Dense` for ``Gemm`` / ``MatMul`` on constant weights, an
:class:`InsertAxis` for a state output) reading one value, or an ONNX function (a recurrent
node in its general form, the NumPy ops of :mod:`fastgate.importers.onnx_ops`) called with the
node's inputs. :func:`graph_model` turns the steps into the nodes of a Model whose inputs and
outputs are the graph's, by name: ``model.run(output_names, input_feed)`` as ONNX Runtime,
``model.predict(x)``, and ``model.step()`` where the mapped graph is a chain of streamable ops.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from ..errors import UnsupportedLayerError, WeightFormatError
from ..model import MODEL_INPUT, Model, Node
from ..serialization import serializable
from .protobuf import TENSOR_DTYPES, ValueInfo

__all__ = ["GraphStep", "OnnxOp", "InsertAxis", "ConstantValue", "graph_model"]


class GraphStep(NamedTuple):
    """One mapped node: ``runner`` is a model op (``apply(x, mask)``, reading ``inputs[0]``)
    or an ONNX function (called with one argument per entry of ``inputs``: a value's name, or
    ``""`` for an absent optional input) returning one value per entry of ``outputs``."""

    name: str
    op_type: str
    runner: Any
    inputs: list[str]
    outputs: list[str]


@serializable
class OnnxOp:
    """An ONNX node as a :class:`~fastgate.model.Model` op: its function with the node's
    constant inputs bound at load.

    ``arguments`` holds one entry per argument of ``function``: an int ``k`` (the ``k``-th
    value the model node reads), an array (a constant), or ``None`` (an absent optional input).
    """

    multi_input = True
    #: The axes of ONNX ops refer to the whole sequence's layout: such a node cannot stream.
    streaming = "graph"

    def __init__(self, op_type: str, name: str, function: Callable[..., list],
                 arguments: Sequence[Any]) -> None:
        self.op_type, self.name, self.function = str(op_type), str(name), function
        self.arguments = list(arguments)

    def apply(self, xs: Any, masks: Any) -> tuple[tuple, tuple]:
        """Model step: the function's outputs (ONNX values carry no mask)."""
        values = xs if type(xs) is list else [xs]
        results = self.function(*[values[a] if type(a) is int else a
                                  for a in self.arguments])
        return tuple(results), (None,) * len(results)

    def _get_spec(self) -> dict[str, Any]:
        arguments = [{"value": a} if isinstance(a, int) else
                     (None if a is None else {"constant": a}) for a in self.arguments]
        return {"op_type": self.op_type, "name": self.name, "function": self.function,
                "arguments": arguments}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "OnnxOp":
        function = spec["function"]
        if not getattr(function, "onnx_function", False):
            raise WeightFormatError(f"ONNX node {spec['name']!r} of a saved model has no "
                                    f"ONNX function")
        arguments = []
        for entry in spec["arguments"]:
            if entry is None:
                arguments.append(None)
            elif "value" in entry and isinstance(entry["value"], int) and entry["value"] >= 0:
                arguments.append(entry["value"])
            elif isinstance(entry.get("constant"), np.ndarray):
                arguments.append(entry["constant"])
            else:
                raise WeightFormatError(f"ONNX node {spec['name']!r} of a saved model has a "
                                        f"bad argument {entry!r}")
        return cls(spec["op_type"], spec["name"], function, arguments)

    def __repr__(self) -> str:
        shown = repr(self.function)
        return shown if shown.startswith(self.op_type) else f"{self.op_type}: {shown}"


@serializable
class InsertAxis:
    """``np.expand_dims(x, axis)``: a final state ``(B, H)`` of a :class:`~fastgate.ops.
    Recurrent` op as ONNX gives it, ``(1, B, H)`` (layout 0) or ``(B, 1, H)`` (layout 1)."""

    streaming = "not_over_time"

    def __init__(self, axis: int) -> None:
        self.axis = int(axis)
        if self.axis < 0:
            raise WeightFormatError(f"InsertAxis needs an axis >= 0, got {self.axis}")
        self._index = (slice(None),) * self.axis + (None,)   # x[:, ..., None]

    def apply(self, x: Any, mask: Any) -> tuple[np.ndarray, None]:
        return np.asarray(x)[self._index], None

    def _get_spec(self) -> dict[str, Any]:
        return {"axis": self.axis}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "InsertAxis":
        return cls(spec["axis"])

    def __repr__(self) -> str:
        return f"InsertAxis({self.axis})"


@serializable
class ConstantValue:
    """A graph output that folding made a constant: a copy of it on every call."""

    streaming = "graph"

    def __init__(self, value: Any) -> None:
        self.value = np.asarray(value)

    def apply(self, x: Any, mask: Any) -> tuple[np.ndarray, None]:
        return self.value.copy(), None

    def _get_spec(self) -> dict[str, Any]:
        return {"value": self.value}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "ConstantValue":
        return cls(spec["value"])

    def __repr__(self) -> str:
        return f"ConstantValue({self.value.dtype.name} {self.value.shape})"


def needed_steps(steps: Sequence[GraphStep], wanted: Sequence[str]) -> list[GraphStep]:
    """The steps that some name of ``wanted`` depends on, in order (exporters build zero
    initial states that fastgate skips: those steps are dropped here)."""
    needed = set(wanted)
    kept = []
    for step in reversed(steps):
        if needed.intersection(step.outputs):
            kept.append(step)
            needed.update(name for name in step.inputs if name)
    return kept[::-1]


def _onnx_node(step: GraphStep, refs: dict[str, tuple[int, int]],
               constants: dict[str, np.ndarray]) -> Node:
    """The model node of an ONNX function: the values it reads become its sources."""
    read: list[str] = []
    arguments: list[Any] = []
    for name in step.inputs:
        if not name:
            arguments.append(None)
        elif name in refs:
            if name not in read:
                read.append(name)
            arguments.append(read.index(name))
        else:
            arguments.append(constants[name])
    sources = [refs[name] for name in read] or [(MODEL_INPUT, 0)]   # (read, unused)
    return Node(step.name, OnnxOp(step.op_type, step.name, step.runner, arguments),
                sources[0], tuple(sources[1:]))


def _input_shape(info: ValueInfo) -> tuple[int | None, ...] | None:
    if info.shape is None:
        return None
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in info.shape)


def _input_dtype(info: ValueInfo) -> np.dtype:
    return np.dtype(TENSOR_DTYPES.get(info.elem_type, "<f4")).newbyteorder("=")


def graph_model(steps: Sequence[GraphStep], constants: dict[str, np.ndarray],
                inputs: Sequence[ValueInfo], outputs: Sequence[ValueInfo], *,
                name: str = "onnx", path: Any = None) -> Model:
    """The :class:`~fastgate.model.Model` running ``steps`` (in graph order) from the graph
    ``inputs`` to its ``outputs``, named as in the file; ``constants`` are the initializers
    and folded values the steps read."""
    if not inputs:
        raise UnsupportedLayerError("the graph has no inputs (every value is a constant): "
                                    "there is nothing to run", path=path)
    refs = {info.name: (MODEL_INPUT, k) for k, info in enumerate(inputs)}
    nodes: list[Node] = []
    for step in needed_steps(steps, [info.name for info in outputs]):
        if hasattr(step.runner, "apply"):
            nodes.append(Node(step.name, step.runner, refs[step.inputs[0]]))
        else:
            nodes.append(_onnx_node(step, refs, constants))
        refs.update((output, (len(nodes) - 1, k)) for k, output in enumerate(step.outputs)
                    if output)
    model_outputs = []
    for info in outputs:
        if info.name not in refs:   # folded to a constant
            nodes.append(Node(info.name, ConstantValue(constants[info.name])))
            refs[info.name] = (len(nodes) - 1, 0)
        model_outputs.append(refs[info.name])
    return Model(nodes, model_outputs, input_shapes=[_input_shape(i) for i in inputs],
                 input_names=[i.name for i in inputs], output_names=[i.name for i in outputs],
                 input_dtypes=[_input_dtype(i) for i in inputs], native_dtypes=True,
                 name=name or "onnx")
