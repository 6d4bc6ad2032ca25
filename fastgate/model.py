"""A whole network as one object: :class:`Model`, what the importers build.

A model is a graph of ops (:mod:`fastgate.ops`, :mod:`fastgate.graph_ops`) in an order where
every op comes after the values it reads, fed by one or more inputs. A value is named by a
reference ``(node, index)``: output ``index`` of an earlier node (an op such as an LSTM with
``return_state`` has several outputs), or ``(MODEL_INPUT, k)`` for model input ``k``. Every
node names its op and the references it reads:

* ``source``: its input (for a multi-input op, the first of its inputs);
* ``more_sources``: the further inputs of a multi-input op (merges, attention, binary ops);
* ``mask_source``: where its mask comes from: ``None`` for Keras' implicit rule (the mask
  that travels with the first input), or a reference whose value *is* the mask (Keras
  ``layer(x, mask=...)``); with ``explicit_mask`` and no ``mask_source`` the op gets none;
  with ``mask_unrecorded`` the file says the op got no mask, so one travelling with its input
  is an error (the saving framework and fastgate disagree: refuse rather than guess);
* ``state_sources``: the initial state of a recurrent op (Keras ``initial_state=``).

Each value carries a mask (``None`` or a ``(B, T)`` bool array). A one-input op is called as
``outputs, masks = op.apply(x, mask)``; an op with ``multi_input = True`` as
``op.apply([x, ...], [mask, ...])``; a recurrent op given ``state_sources`` as
``op.apply(x, mask, initial_state=[...])``. One op object may sit at several nodes (a
shared layer).

Streaming: :meth:`Model.step` feeds a sequence a step or a chunk at a time, with the state
of every recurrent op passed in and returned as plain NumPy arrays; the model object itself
keeps no per-sequence state (except Keras ``stateful`` ops in full calls, see
:meth:`Model.predict`). Which ops can stream, and how, is each op's ``streaming`` attribute
(:mod:`fastgate.ops`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from . import trace as tracing
from ._validation import as_array
from .errors import ConfigError, DTypeError, InputError, ShapeError, UnsupportedLayerError
from .ops import Activation, Dense, Embedding, Recurrent
from .serialization import save, serializable
from .state import check_batch_size

__all__ = ["Model", "Node", "MODEL_INPUT"]

#: The node index that stands for the model inputs in a reference: ``(MODEL_INPUT, k)`` is
#: model input ``k``.
MODEL_INPUT = -1

#: A reference to a value: ``(node, output index)`` or ``(MODEL_INPUT, input index)``.
Ref = tuple

ArrayLike = Any

#: A streaming state: one tuple of ``(B, units)`` arrays per recurrent op, in node order.
StreamState = tuple


class _StreamPlan(NamedTuple):
    """What :meth:`Model.step` needs to know about the chain, worked out once."""

    recurrent_nodes: tuple[int, ...]        # positions of the "recurrent" ops
    sequence_outputs: tuple[tuple[bool, ...], ...]  # per node: which outputs have steps
    error: str | None                      # why the model cannot stream, if it cannot
    feeds_embedding: bool                  # the input is token ids
    state_shapes: tuple[tuple[int, int, Any], ...]  # per recurrent op: parts, units, dtype
    # (op, state parts: 0 but for recurrent ops) per node when the model is a plain chain of
    # recurrent, Dense and Activation ops with one output (a Keras Sequential model, say),
    # else None: one step then runs op after op without the graph walk (Model._chain_step)
    chain: tuple[tuple[Any, int], ...] | None


class Node(NamedTuple):
    """One step of a :class:`Model`: ``op`` applied to output ``source[1]`` of node
    ``source[0]`` (``(MODEL_INPUT, k)``: model input ``k``), and to the further references of
    a multi-input op, mask and initial state (see the module docstring)."""

    name: str
    op: Any
    source: tuple[int, int] = (MODEL_INPUT, 0)
    more_sources: tuple[tuple[int, int], ...] = ()
    mask_source: tuple[int, int] | None = None
    state_sources: tuple[tuple[int, int], ...] = ()
    explicit_mask: bool = False
    mask_unrecorded: bool = False

    @property
    def sources(self) -> tuple[tuple[int, int], ...]:
        """Every reference the node reads: inputs, then mask, then initial state."""
        mask = () if self.mask_source is None else (self.mask_source,)
        return (self.source,) + self.more_sources + mask + self.state_sources

    @property
    def is_plain(self) -> bool:
        """One input, its implicit mask, no initial state: a link of a plain chain.
        (``mask_unrecorded`` does not matter there: no mask travels in a chain of recurrent,
        Dense and Activation ops fed by the model input.)"""
        return not (self.more_sources or self.state_sources or self.explicit_mask
                    or self.mask_source is not None)


def _as_ref(value: Any) -> tuple[int, int]:
    node, index = value
    return (int(node), int(index))


def _as_mask(value: Any) -> np.ndarray:
    """The value given as a node's ``mask=``, as Keras uses it: a bool array."""
    mask = np.asarray(value)
    if mask.dtype != np.bool_:
        mask = mask.astype(bool)
    return mask


def _typed_input(value: Any, dtype: np.dtype, what: str) -> np.ndarray:
    """``value`` as an array of ``dtype`` (a typed graph input): real numbers only; floats
    become integers only when they are integral."""
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise DTypeError(f"{what} must hold real numbers, got dtype {array.dtype}")
    if dtype.kind in "iu" and array.dtype.kind == "f" and not np.all(np.mod(array, 1) == 0):
        raise DTypeError(f"{what} holds integers ({dtype}), got non-integral floats")
    return array.astype(dtype, copy=False)


def _count_parameters(value: Any) -> int:
    """Number of weights in an op, counted from its serialization spec (floating-point
    arrays: an ONNX graph's integer constants are shapes and axes, not weights)."""
    if isinstance(value, np.ndarray):
        return int(value.size) if value.dtype.kind in "fc" else 0
    if hasattr(value, "_get_spec"):
        return _count_parameters(value._get_spec())
    if isinstance(value, dict):
        return sum(_count_parameters(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_count_parameters(v) for v in value)
    return 0


@serializable
class Model:
    """A graph of ops with one or more inputs and one or more outputs.

    Parameters
    ----------
    nodes : sequence of Node or tuple
        In order; every reference a node reads must be a model input or an earlier node.
    outputs : sequence of (node, index)
        The model outputs; several outputs make :meth:`predict` return a list.
    input_shape : sequence of int or None, optional
        The input's shape with the batch first, ``None`` for any size (Keras' ``batch_shape``);
        checked on every call. For a model of several inputs, give ``input_shapes``.
    input_shapes : sequence of (sequence of int or None) or None, optional
        One shape (or ``None``: not checked) per model input.
    input_names, output_names : sequence of str, optional
        Keras' names of the inputs (``predict`` takes a dict keyed by them) and outputs.
    dict_outputs : bool
        Return the outputs as a dict keyed by ``output_names`` (a Keras model built with a
        dict of outputs), not a list.
    input_dtypes : sequence of (str or None), optional
        Per model input, the dtype its values are converted to (an ONNX graph's declared
        input types: ``"float32"``, ``"int64"``...); ``None`` (the default): float32, or the
        token ids as given for an input an Embedding reads.
    native_dtypes : bool
        Give each output in the dtype the graph computes it (an ONNX graph: float64, int64
        ...), not float32 as Keras does.
    name : str
        Shown by ``repr`` and :meth:`summary`.

    Examples
    --------
    >>> model = fastgate.load("model.keras")
    >>> y = model.predict(x)                   # what keras' model.predict(x) returns
    >>> y = model.predict([x1, x2])            # a model of two inputs (or a dict by name)
    >>> model.save("model.fastgate")
    """

    def __init__(self, nodes: Sequence[Any], outputs: Sequence[Sequence[int]], *,
                 input_shape: Sequence[int | None] | None = None,
                 input_shapes: Sequence[Sequence[int | None] | None] | None = None,
                 input_names: Sequence[str] | None = None,
                 output_names: Sequence[str] | None = None,
                 dict_outputs: bool = False,
                 input_dtypes: Sequence[Any] | None = None,
                 native_dtypes: bool = False,
                 name: str = "model") -> None:
        if input_shapes is None:
            input_shapes = [input_shape]
        elif input_shape is not None:
            raise ConfigError("give input_shape (one input) or input_shapes, not both")
        if not input_shapes:
            raise ConfigError("a model needs at least one input")
        self.input_shapes = [None if shape is None else tuple(
            None if d is None else int(d) for d in shape) for shape in input_shapes]
        count = len(self.input_shapes)
        self.input_names = ([f"input_{k}" for k in range(count)] if input_names is None
                            else [str(n) for n in input_names])
        if len(self.input_names) != count:
            raise ConfigError(f"{len(self.input_names)} input names for {count} inputs")
        self.nodes = [self._checked_node(position, entry) for position, entry in
                      enumerate(nodes)]
        self.outputs = [_as_ref(ref) for ref in outputs]
        if not self.outputs:
            raise ConfigError("a model needs at least one output")
        for ref in self.outputs:
            if not self._refers(ref, len(self.nodes)):
                raise ConfigError(f"output {ref} does not refer to a node or model input")
        self.output_names = ([self._default_output_name(ref) for ref in self.outputs]
                             if output_names is None else [str(n) for n in output_names])
        if len(self.output_names) != len(self.outputs):
            raise ConfigError(f"{len(self.output_names)} output names for "
                              f"{len(self.outputs)} outputs")
        self.dict_outputs = bool(dict_outputs)
        if self.dict_outputs and len(set(self.output_names)) != len(self.output_names):
            raise ConfigError(f"dict_outputs needs distinct output names, got "
                              f"{self.output_names}")
        self.input_dtypes = ([None] * count if input_dtypes is None else
                             [None if d is None else np.dtype(d) for d in input_dtypes])
        if len(self.input_dtypes) != count:
            raise ConfigError(f"{len(self.input_dtypes)} input dtypes for {count} inputs")
        if any(d is not None and d.kind not in "biuf" for d in self.input_dtypes):
            raise ConfigError(f"input dtypes must be booleans, integers or floats, got "
                              f"{self.input_dtypes}")
        self.native_dtypes = bool(native_dtypes)
        self.name = str(name)
        self._plan = self._stream_plan()
        self._plain_walk = self._plain_walk_plan()

    def _refers(self, ref: tuple[int, int], before: int) -> bool:
        if ref[0] == MODEL_INPUT:
            return 0 <= ref[1] < len(self.input_shapes)
        return 0 <= ref[0] < before and ref[1] >= 0

    def _checked_node(self, position: int, entry: Any) -> Node:
        node = Node(*entry) if not isinstance(entry, Node) else entry
        node = Node(str(node.name), node.op, _as_ref(node.source),
                    tuple(_as_ref(r) for r in node.more_sources),
                    None if node.mask_source is None else _as_ref(node.mask_source),
                    tuple(_as_ref(r) for r in node.state_sources), bool(node.explicit_mask),
                    bool(node.mask_unrecorded))
        for ref in node.sources:
            if not self._refers(ref, position):
                raise ConfigError(f"node {position} ({node.name!r}): reference {ref} must be "
                                  f"a model input ({MODEL_INPUT}, k) or an earlier node")
        if not hasattr(node.op, "apply"):
            raise ConfigError(f"node {node.name!r}: {type(node.op).__name__} is not a "
                              f"model op (it has no apply(x, mask))")
        if node.more_sources and not getattr(node.op, "multi_input", False):
            raise ConfigError(f"node {node.name!r}: {type(node.op).__name__} takes one input, "
                              f"got {1 + len(node.more_sources)}")
        if node.state_sources and not hasattr(node.op, "state_count"):
            raise ConfigError(f"node {node.name!r}: {type(node.op).__name__} takes no "
                              f"initial state")
        return node

    def _default_output_name(self, ref: tuple[int, int]) -> str:
        if ref[0] == MODEL_INPUT:
            return self.input_names[ref[1]]
        return self.nodes[ref[0]].name + (f"[{ref[1]}]" if ref[1] else "")

    @property
    def input_shape(self) -> tuple | None:
        """The shape of the (first) input, batch first, ``None`` for any size."""
        return self.input_shapes[0]

    # ------------------------------------------------------------------ description
    @property
    def inputs_batch_first(self) -> bool:
        """Whether the first axis of every input is the batch: a Keras or fastgate model's
        is; an imported ONNX graph's typed inputs say no such thing (PyTorch exports its
        layers time-major, ``(T, B, D)``)."""
        return all(dtype is None for dtype in self.input_dtypes)

    def check_batch_first(self, what: str) -> None:
        """Raise :class:`~fastgate.errors.ConfigError` for ``what`` (which splits or joins
        inputs on their first axis) unless :attr:`inputs_batch_first`."""
        if not self.inputs_batch_first:
            raise ConfigError(f"{what} splits or joins the inputs of model {self.name!r} on "
                              f"their first axis, but its inputs (an ONNX graph's "
                              f"{self.input_names}) need not have the batch there (a "
                              f"time-major export has the steps); give whole batches to "
                              f"run() / predict()")

    @property
    def stateful(self) -> bool:
        """Whether some op carries state from one call to the next (Keras ``stateful``)."""
        return any(getattr(node.op, "stateful", False) for node in self.nodes)

    def count_params(self) -> int:
        """The number of weights (every array entry) in the model; a shared op counts once."""
        unique = {id(node.op): node.op for node in self.nodes}
        return sum(_count_parameters(op) for op in unique.values())

    def summary(self) -> str:
        """A table of the nodes (name, op, input, weights), as a string to print."""
        def where(ref: tuple[int, int]) -> str:
            if ref[0] == MODEL_INPUT:
                return "input" if len(self.input_shapes) == 1 else self.input_names[ref[1]]
            return self.nodes[ref[0]].name + (f"[{ref[1]}]" if ref[1] else "")

        def reads(node: Node) -> str:
            text = ", ".join(where(ref) for ref in (node.source,) + node.more_sources)
            if node.mask_source is not None:
                text += f", mask={where(node.mask_source)}"
            elif node.explicit_mask:
                text += ", mask=None"
            elif node.mask_unrecorded:
                text += ", mask=None (recorded)"
            if node.state_sources:
                text += f", initial_state=[{', '.join(map(where, node.state_sources))}]"
            return text

        rows = [("name", "op", "input", "weights")]
        for node in self.nodes:
            rows.append((node.name, repr(node.op), reads(node),
                         f"{_count_parameters(node.op):,}"))
        widths = [max(len(row[k]) for row in rows) for k in range(3)]
        shapes = (f"input shape {self.input_shape}" if len(self.input_shapes) == 1 else
                  "inputs " + ", ".join(f"{n} {s}" for n, s in zip(self.input_names,
                                                                   self.input_shapes)))
        lines = [f"Model {self.name!r}, {shapes}"]
        for row in rows:
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths))
                         + "  " + row[3])
        lines.append("outputs: " + ", ".join(
            where(ref) if name == self._default_output_name(ref) else f"{name} = {where(ref)}"
            for name, ref in zip(self.output_names, self.outputs)))
        lines.append(f"total weights: {self.count_params():,}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        ops = ", ".join(type(node.op).__name__ for node in self.nodes)
        shapes = (f"input_shape={self.input_shape}" if len(self.input_shapes) == 1
                  else f"input_shapes={self.input_shapes}")
        return f"Model({self.name!r}, {shapes}, ops=[{ops}], outputs={len(self.outputs)})"

    # ------------------------------------------------------------------ running
    def reset_states(self) -> None:
        """Forget the state that stateful recurrent ops carried over from earlier calls."""
        for node in self.nodes:
            if hasattr(node.op, "reset_states"):
                node.op.reset_states()

    def _input_list(self, x: Any) -> list:
        """Keras' ways of giving the inputs: one array, a list in order, or a dict by name."""
        count = len(self.input_shapes)
        if isinstance(x, dict):
            if len(x) == count and all(name in x for name in self.input_names):
                return [x[name] for name in self.input_names]
            missing = [n for n in self.input_names if n not in x]
            unknown = [k for k in x if k not in self.input_names]
            if missing or unknown:
                raise ShapeError(f"model {self.name!r} inputs: expected a dict with keys "
                                 f"{self.input_names}, missing {missing}, unknown {unknown}")
            return [x[n] for n in self.input_names]
        if isinstance(x, (list, tuple)) and (count > 1 or (
                len(x) == 1 and not np.isscalar(x[0]) and np.ndim(x[0]) > 0)):
            if len(x) != count:
                raise ShapeError(f"model {self.name!r} takes {count} inputs "
                                 f"{self.input_names}, got a list of {len(x)}")
            return list(x)
        if count != 1:
            raise ShapeError(f"model {self.name!r} takes {count} inputs {self.input_names}: "
                             f"give a list or a dict by name, got {type(x).__name__}")
        return [x]

    def _prepare_input(self, x: ArrayLike) -> Any:
        """``x`` checked and converted: one array for a model of one input (what
        :mod:`fastgate.serving` batches), else the list of :meth:`_prepare_inputs`."""
        arrays = self._prepare_inputs(x)
        return arrays[0] if len(arrays) == 1 else arrays

    def _prepare_inputs(self, x: ArrayLike) -> list[np.ndarray]:
        """The model inputs in ``x`` (see :meth:`_input_list`), checked and converted."""
        arrays = [self._prepare_input_k(k, value)
                  for k, value in enumerate(self._input_list(x))]
        # typed inputs are a graph's, which share no batch axis (ONNX: X (T, B, D) and
        # initial_h (1, B, H)): the graph's ops check what they combine
        if len(arrays) > 1 and all(dtype is None for dtype in self.input_dtypes) \
                and len({a.shape[0] if a.ndim else None for a in arrays}) > 1:
            raise ShapeError(f"model {self.name!r} inputs: batch sizes differ: "
                             f"{[a.shape for a in arrays]}")
        return arrays

    def _input_label(self, k: int) -> str:
        return (f"model {self.name!r} input" if len(self.input_shapes) == 1 else
                f"model {self.name!r} input {self.input_names[k]!r}")

    def _prepare_input_k(self, k: int, value: Any) -> np.ndarray:
        """Model input ``k`` checked against its declared shape and converted."""
        dtype = self.input_dtypes[k]
        if dtype is not None:
            if type(value) is not np.ndarray or value.dtype != dtype:
                value = _typed_input(value, dtype, self._input_label(k))
        elif self._feeds_embedding(k):
            value = np.asarray(value)  # token ids: Embedding checks and converts them
        else:
            value = as_array(value, np.dtype(np.float32), self._input_label(k))
        expected = self.input_shapes[k]
        if expected is None:
            return value
        # the first axis is the batch (any size), except in a typed graph input
        first = 0 if dtype is not None else 1
        if value.ndim != len(expected) or any(
                want is not None and got != want
                for want, got in zip(expected[first:], value.shape[first:])):
            shown = tuple("B" if i < first else ("*" if d is None else d)
                          for i, d in enumerate(expected))
            raise ShapeError(f"{self._input_label(k)}: expected shape {shown} (* = any), got "
                             f"{value.shape}")
        return value

    def _walk(self, inputs: list[np.ndarray], apply: Callable[..., tuple]
              ) -> list[tuple[tuple[int, int], Any]]:
        """Run the graph on ``inputs``; ``apply(node, value, mask, **extra)`` gives a node's
        (outputs, masks) (``value`` and ``mask`` are lists for a multi-input op, ``extra``
        holds ``initial_state``).

        Returns ``(ref, value)`` for each model output.
        """
        produced: list[tuple[tuple, tuple]] = []

        def fetch(ref: tuple[int, int]) -> tuple[Any, Any]:
            if ref[0] == MODEL_INPUT:
                return inputs[ref[1]], None
            outputs, masks = produced[ref[0]]
            return outputs[ref[1]], masks[ref[1]]

        for node in self.nodes:
            if node.more_sources:
                pairs = [fetch(ref) for ref in (node.source,) + node.more_sources]
                value, mask = [p[0] for p in pairs], [p[1] for p in pairs]
            else:
                value, mask = fetch(node.source)
            if node.mask_source is not None:
                mask = _as_mask(fetch(node.mask_source)[0])
            elif node.explicit_mask:
                mask = [None] * len(value) if node.more_sources else None
            elif node.mask_unrecorded and mask is not None:
                raise UnsupportedLayerError(
                    f"node {node.name!r}: a mask travels with its input, but the saved model "
                    f"records that the framework called this layer without one; fastgate "
                    f"refuses to guess which the saving version did")
            extra = {}
            if node.state_sources:
                extra["initial_state"] = [fetch(ref)[0] for ref in node.state_sources]
            try:
                outputs, masks = apply(node, value, mask, **extra)
            except ShapeError as error:
                raise type(error)(f"node {node.name!r}: {error}") from error
            if not isinstance(outputs, tuple):
                outputs, masks = (outputs,), (masks,)
            produced.append((outputs, masks))
        return [(ref, fetch(ref)[0]) for ref in self.outputs]

    def _as_output(self, ref: tuple[int, int], value: Any) -> np.ndarray:
        # Outputs are float32 like Keras', except the raw input passed through (token ids)
        # and boolean values (a mask given out as an output); with native_dtypes, as computed
        # (a fresh array: never a view of a constant or of an input the caller may edit).
        if self.native_dtypes:
            value = np.asarray(value)
            return value.copy() if value.base is not None or not value.flags.owndata \
                or ref[0] == MODEL_INPUT else value
        if value.dtype.kind == "b" or (ref[0] == MODEL_INPUT and value.dtype.kind != "f"):
            return value
        return np.ascontiguousarray(value, dtype=np.float32)

    def _run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if self._plain_walk is not None:
            return self._run_plain(inputs)
        walked = self._walk(inputs, lambda node, value, mask, **extra:
                            node.op.apply(value, mask, **extra))
        return [self._as_output(ref, value) for ref, value in walked]

    def _plain_walk_plan(self) -> list[tuple[Any, tuple]] | None:
        """``(op, references read)`` per node when no node reads a mask or a state by
        reference (most models, every imported ONNX graph), else None."""
        if any(node.mask_source is not None or node.explicit_mask or node.mask_unrecorded
               or node.state_sources for node in self.nodes):
            return None
        return [(node.op, (node.source,) + node.more_sources) for node in self.nodes]

    def _run_plain(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """:meth:`_run` by :meth:`_walk`'s rules for a graph of :meth:`_plain_walk_plan`,
        without the per-node checks that do not apply (a call of a small model costs a few
        microseconds less)."""
        produced: list[tuple[tuple, tuple]] = []
        try:
            for op, refs in self._plain_walk:
                if len(refs) == 1:
                    node, index = refs[0]
                    if node == MODEL_INPUT:
                        value, mask = inputs[index], None
                    else:
                        outputs, masks = produced[node]
                        value, mask = outputs[index], masks[index]
                else:
                    value = [inputs[i] if n == MODEL_INPUT else produced[n][0][i]
                             for n, i in refs]
                    mask = [None if n == MODEL_INPUT else produced[n][1][i] for n, i in refs]
                outputs, masks = op.apply(value, mask)
                produced.append((outputs, masks) if type(outputs) is tuple
                                else ((outputs,), (masks,)))
        except ShapeError as error:
            raise type(error)(f"node {self.nodes[len(produced)].name!r}: {error}") from error
        return [self._as_output(ref, inputs[ref[1]] if ref[0] == MODEL_INPUT
                                else produced[ref[0]][0][ref[1]]) for ref in self.outputs]

    def _result(self, results: list[np.ndarray]) -> Any:
        if self.dict_outputs:
            return dict(zip(self.output_names, results))
        return results[0] if len(results) == 1 else results

    def __call__(self, x: ArrayLike) -> np.ndarray | list[np.ndarray]:
        """Run the model on one batch ``x`` (a list or dict for several inputs) and return
        its output (a list if several)."""
        return self._result(self._run(self._prepare_inputs(x)))

    def run(self, output_names: Sequence[str] | None, input_feed: dict[str, Any]
            ) -> list[np.ndarray]:
        """Compute ``output_names`` (``None``: every output) from ``input_feed`` ``{input
        name: array}``, as ``onnxruntime.InferenceSession.run`` does: a list of arrays."""
        if output_names is not None:
            unknown = [name for name in output_names if name not in self.output_names]
            if unknown:
                raise ConfigError(f"unknown output names {unknown}; the model's outputs are "
                                  f"{self.output_names}")
        if not isinstance(input_feed, dict):
            raise InputError(f"input_feed must be a dict {{name: array}}, got "
                             f"{type(input_feed).__name__}")
        if len(input_feed) != len(self.input_names) or not all(
                name in input_feed for name in self.input_names):
            extra = sorted(set(input_feed) - set(self.input_names))
            missing = [name for name in self.input_names if name not in input_feed]
            raise InputError(f"input_feed: missing {missing}, unknown {extra}; the model's "
                             f"inputs are {self.input_names}")
        results = self._run(self._prepare_inputs(input_feed))
        if output_names is None:
            return results
        by_name = dict(zip(self.output_names, results))
        return [by_name[name] for name in output_names]

    def predict(self, x: ArrayLike, batch_size: int | None = None) -> Any:
        """What Keras' ``model.predict(x, batch_size)`` returns: the outputs for ``x``.

        ``x`` is one array, or for a model of several inputs a list of arrays in the order of
        :attr:`input_names` or a dict keyed by them (as Keras takes them). It is processed in
        batches of ``batch_size`` rows, in order. Batches only matter for a stateful model,
        whose state carries from one batch to the next as in Keras (its default batch is its
        input's fixed batch size, else 32); otherwise the whole of ``x`` runs at once unless
        ``batch_size`` is given. Outputs are float32 arrays, one array for one output, else a
        list (a dict keyed by :attr:`output_names` with ``dict_outputs``, as Keras returns
        for a model built with a dict of outputs).
        """
        inputs = self._prepare_inputs(x)
        if batch_size is None and self.stateful:
            fixed = self.input_shape[0] if self.input_shape else None
            batch_size = fixed or 32
        if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if batch_size is not None:
            self.check_batch_first("predict(batch_size=...)")
        total = inputs[0].shape[0] if inputs[0].ndim else 0
        if batch_size is None or total <= batch_size:
            return self._result(self._run(inputs))
        pieces = [self._run([a[start:start + batch_size] for a in inputs])
                  for start in range(0, total, int(batch_size))]
        return self._result([np.concatenate(parts, axis=0) for parts in zip(*pieces)])

    # ------------------------------------------------------------------ tracing
    def trace(self, x: ArrayLike, *, sequences: Any = None,
              max_bytes: int = tracing.DEFAULT_MAX_BYTES) -> "tracing.Trace":
        """Run the model on ``x`` (as :meth:`__call__`) and return what the gates of every
        recurrent layer computed at every step (:class:`fastgate.trace.Trace`): one entry
        per layer and direction, in the order the model runs them, named by their node.

        ``sequences`` (an index, slice or list) traces only those rows of the batch. Above
        ``max_bytes`` of traces (default 1 GiB) the call raises
        :class:`~fastgate.errors.ConfigError`, saying how much it needs. (A Keras
        ``stateful`` layer carries its state on, as from any call.)
        """
        inputs = self._prepare_inputs(x)
        if sequences is not None:
            rows = tracing.select_sequences(inputs[0].shape[0], sequences)
            inputs = [np.asarray(a)[rows] for a in inputs]
        with tracing.Recorder(max_bytes) as recorder:
            self._run(inputs)
        label = tracing.layer_labels((node.name, node.op) for node in self.nodes)
        return tracing.Trace(recorder.entries(label))

    # ------------------------------------------------------------------ streaming
    def _stream_plan(self) -> _StreamPlan:
        """Which values carry a steps axis when streaming, and which op (if any) cannot."""
        recurrent: list[int] = []
        sequences: list[tuple[bool, ...]] = []
        error = None

        def has_steps(ref: tuple[int, int]) -> bool:
            if ref[0] == MODEL_INPUT:
                return True
            flags = sequences[ref[0]]
            return flags[ref[1]] if ref[1] < len(flags) else False

        for position, node in enumerate(self.nodes):
            kind = getattr(node.op, "streaming", None)
            op_name = f"node {node.name!r} ({type(node.op).__name__})"
            steps = [has_steps(ref) for ref in (node.source,) + node.more_sources]
            incoming = steps[0]
            flags: tuple[bool, ...] = (incoming,)
            if len(self.input_shapes) > 1:
                error = error or "the model has several inputs"
            if node.state_sources:
                error = error or f"{op_name} is given its initial state by other nodes"
            if len(set(steps)) > 1:
                error = error or f"{op_name} combines values with and without a steps axis"
            if node.mask_source is not None and not has_steps(node.mask_source):
                error = error or f"{op_name} is given a mask with no steps axis"
            if kind == "recurrent":
                recurrent.append(position)
                if getattr(node.op, "go_backwards", False):
                    error = error or (f"{op_name} reads its sequence backwards "
                                      f"(go_backwards=True): it needs the whole sequence")
                elif not incoming:
                    error = error or f"{op_name} is fed a value with no steps axis"
                states = 2 if node.op.layer.cell == "lstm" else 1
                flags = (node.op.return_sequences,) + (False,) * states
            elif kind == "not_over_time":
                if incoming:
                    error = error or (f"{op_name} acts over the steps axis: it needs the "
                                      f"whole sequence")
                flags = (False,)
            elif kind == "whole_sequence":
                error = error or f"{op_name} needs the whole sequence"
            elif kind == "graph":
                error = error or (f"{op_name} is an ONNX op whose axes refer to the whole "
                                  f"sequence's layout; fastgate streams chains of recurrent "
                                  f"ops, Gemm/MatMul heads and activations")
            elif kind != "per_step":
                error = error or f"{op_name} does not say how it streams (no `streaming`)"
            sequences.append(flags)
        shapes = tuple((3 if self.nodes[k].op.layer.cell == "lstm" else 2,
                        self.nodes[k].op.units, self.nodes[k].op.layer.dtype)
                       for k in recurrent)
        return _StreamPlan(tuple(recurrent), tuple(sequences), error,
                           self._feeds_embedding(), shapes, self._chain())

    def _chain(self) -> tuple[tuple[Any, int], ...] | None:
        """``_StreamPlan.chain``: ``(op, state parts)`` per node, or ``None``."""
        chain = []
        for position, node in enumerate(self.nodes):
            if node.source != (position - 1 if position else MODEL_INPUT, 0) \
                    or not node.is_plain:
                return None
            if isinstance(node.op, Recurrent) and not node.op.return_state:
                chain.append((node.op, 3 if node.op.layer.cell == "lstm" else 2))
            elif isinstance(node.op, (Dense, Activation)):
                chain.append((node.op, 0))
            else:
                return None
        return tuple(chain) if self.outputs == [(len(self.nodes) - 1, 0)] else None

    def _stream_input(self, x: ArrayLike, what: str) -> tuple[np.ndarray, int]:
        """``x`` fed to :meth:`step` (or a session) as an array: float32, or token ids as
        given (Embedding checks them); and the rank of a batch-first chunk of steps."""
        if self._streaming().feeds_embedding:
            x, rank = np.asarray(x), 2
        else:
            x, rank = as_array(x, np.dtype(np.float32), what), 3
        return x, (rank if self.input_shape is None else len(self.input_shape))

    def _check_stream_features(self, features: tuple[int, ...], what: str,
                               shape: tuple[int, ...]) -> None:
        """Raise ShapeError unless ``features`` (the shape past the batch and steps axes of
        a value of ``shape``) are the model input's."""
        if self.input_shape is not None and any(
                want is not None and got != want
                for want, got in zip(self.input_shape[2:], features)):
            raise ShapeError(f"{what}: expected features {self.input_shape[2:]}, got shape "
                             f"{shape}")

    def _feeds_embedding(self, index: int = 0) -> bool:
        """Whether model input ``index`` holds token ids (an Embedding reads it)."""
        return any(isinstance(node.op, Embedding) and node.source == (MODEL_INPUT, index)
                   for node in self.nodes)

    def _streaming(self) -> _StreamPlan:
        plan = self.__dict__.get("_plan") or self._stream_plan()
        if plan.error:
            raise ConfigError(f"model {self.name!r} cannot stream: {plan.error}")
        return plan

    def initial_state(self, batch_size: int = 1) -> StreamState:
        """The streaming state at the start of ``batch_size`` sequences (zeros).

        A tuple with, per recurrent op in node order, a tuple of ``(batch_size, units)``
        NumPy arrays: ``(h, last_output)`` (LSTM ``(h, c, last_output)``; ``last_output`` is
        what a masked step repeats). Plain arrays: a service can pickle or ``np.save`` them
        between requests and resume later. Raises :class:`~fastgate.errors.ConfigError` if
        the model cannot stream (see :meth:`step`).
        """
        plan = self._streaming()
        batch_size = check_batch_size(batch_size)
        return tuple(self.nodes[k].op.initial_stream_state(batch_size)
                     for k in plan.recurrent_nodes)

    def _check_state(self, state: Any, plan: _StreamPlan, batch: int) -> StreamState:
        count = len(plan.recurrent_nodes)
        if not isinstance(state, (tuple, list)) or len(state) != count:
            raise ShapeError(f"model {self.name!r} state: expected a tuple of {count} entries "
                             f"(one per recurrent op, from initial_state()), got "
                             f"{type(state).__name__}"
                             + (f" of {len(state)}" if isinstance(state, (tuple, list)) else ""))
        for entry, (parts, units, dtype) in zip(state, plan.state_shapes):
            # The common case, arrays from a previous step, costs a few attribute checks.
            if not (type(entry) is tuple and len(entry) == parts and all(
                    type(part) is np.ndarray and part.dtype == dtype
                    and part.shape == (batch, units) for part in entry)):
                return self._convert_state(state, plan, batch)
        return state if type(state) is tuple else tuple(state)

    def _convert_state(self, state: Any, plan: _StreamPlan, batch: int) -> StreamState:
        checked = []
        for k, entry, (parts, units, dtype) in zip(plan.recurrent_nodes, state,
                                                   plan.state_shapes):
            where = f"model {self.name!r} state of node {self.nodes[k].name!r}"
            if not isinstance(entry, (tuple, list)) or len(entry) != parts:
                raise ShapeError(f"{where}: expected a tuple of {parts} arrays, got "
                                 f"{type(entry).__name__}")
            arrays = tuple(as_array(part, dtype, where) for part in entry)
            for part in arrays:
                if part.shape != (batch, units):
                    raise ShapeError(f"{where}: expected arrays of shape ({batch}, {units})"
                                     f", got {part.shape}")
            checked.append(arrays)
        return tuple(checked)

    def step(self, x: ArrayLike, state: StreamState | None = None
             ) -> tuple[np.ndarray | list[np.ndarray], StreamState]:
        """Feed one step or a chunk of steps of ``B`` sequences; return outputs and new state.

        Parameters
        ----------
        x : array_like
            One step ``(B, D)`` or a chunk ``(B, T, D)`` (for a model fed token ids by an
            Embedding: ``(B,)`` or ``(B, T)``).
        state : tuple, optional
            From :meth:`initial_state` or a previous ``step``; zeros if omitted. Not modified.

        Returns
        -------
        y : ndarray or list of ndarray
            What a full call on the whole sequence gives for the steps just fed: ``(B, F)``
            for one step, ``(B, T, F)`` for a chunk; for an output that is not a sequence (a
            recurrent op without ``return_sequences``), its value after the last step fed.
        state : tuple
            The state after these steps (new arrays).

        Feeding a sequence step by step or chunk by chunk gives the outputs of one call on the
        whole sequence, masking included (a masked step keeps the state and repeats the last
        output). Ops that need the whole sequence (Flatten over the steps axis,
        GlobalPooling1D, RepeatVector, Bidirectional, ``go_backwards``) make it raise
        :class:`~fastgate.errors.ConfigError` naming the op. The carried state of Keras
        ``stateful`` ops is neither used nor changed: streaming states are explicit.
        """
        plan = self._streaming()
        if plan.chain is not None and type(x) is np.ndarray and x.ndim == 2:
            result = self._chain_step(x, state, plan)
            if result is not None:
                return result
        what = f"model {self.name!r} step input"
        x, rank = self._stream_input(x, what)
        if x.ndim == rank - 1 and rank >= 2:
            single, chunk = True, x[:, None]
        elif x.ndim == rank:
            single, chunk = False, x
        else:
            raise ShapeError(f"{what}: expected one step of rank {rank - 1} or a chunk of rank "
                             f"{rank} (batch first), got shape {x.shape}")
        self._check_stream_features(chunk.shape[2:], what, x.shape)
        batch = chunk.shape[0]
        states = (self.initial_state(batch) if state is None
                  else self._check_state(state, plan, batch))
        new_states = list(states)
        slot = 0

        def apply(node: Node, value: Any, mask: Any, **extra: Any) -> tuple:
            nonlocal slot
            if node.op.streaming != "recurrent":
                return node.op.apply(value, mask)
            outputs, masks, new_states[slot] = node.op.apply_step(value, mask, states[slot])
            slot += 1
            return outputs, masks

        results = []
        for ref, value in self._walk([chunk], apply):
            sequence = ref[0] == MODEL_INPUT or plan.sequence_outputs[ref[0]][ref[1]]
            if single and sequence:
                value = value[:, 0]
            results.append(self._as_output(ref, value))
        return self._result(results), tuple(new_states)

    def _chain_step(self, x: np.ndarray, state: StreamState | None, plan: _StreamPlan
                    ) -> tuple[np.ndarray, StreamState] | None:
        """:meth:`step` for one step ``x`` ``(B, D)`` of float32 through a plain chain
        (``plan.chain``), op after op without the graph walk: what a streaming service calls
        most. ``None`` where it does not apply (the general path then runs, or explains)."""
        if (x.dtype != np.float32 or (self.input_shape is not None and (
                len(self.input_shape) != 3 or self.input_shape[2] not in (None, x.shape[1])))):
            return None
        if state is None:
            state = self.initial_state(x.shape[0])
        elif type(state) is not tuple or len(state) != len(plan.recurrent_nodes):
            return None
        new_states = []
        value = np.ascontiguousarray(x)   # (x[:, t] of a batch-first sequence is strided)
        for op, parts in plan.chain:
            if parts:
                # h and c are checked by the kernel's plan; the last output is not read by
                # an unmasked step, but must still be of the state's shape
                entry = state[len(new_states)]
                if (type(entry) is not tuple or len(entry) != parts
                        or type(entry[-1]) is not np.ndarray
                        or entry[-1].shape != np.shape(entry[0])):
                    return None
                result = op.step_one(value, entry)
                if result is None:
                    return None
                value, new_state = result
                new_states.append(new_state)
            else:
                try:
                    value = op.apply(value, None)[0]
                except ShapeError:
                    return None   # the general path says which node, in its words
        return self._as_output((len(self.nodes) - 1, 0), value), tuple(new_states)

    # ------------------------------------------------------------------ saving
    def save(self, path: str) -> None:
        """Save in fastgate's own format; ``fastgate.load(path)`` gives the model back."""
        save(self, path)

    def to_onnx(self, path: Any, opset: int = 17) -> None:
        """Write the model as a standard ONNX graph (ONNX Runtime runs it with the same
        outputs): input ``input``, one output per model output. See
        :func:`fastgate.export.onnx.to_onnx`."""
        from .export.onnx import to_onnx

        to_onnx(self, path, opset)

    def _get_spec(self) -> dict[str, Any]:
        nodes = []
        for node in self.nodes:
            entry: dict[str, Any] = {"name": node.name, "op": node.op,
                                     "source": list(node.source)}
            if node.more_sources:
                entry["more_sources"] = [list(ref) for ref in node.more_sources]
            if node.mask_source is not None or node.explicit_mask:
                entry["mask_source"] = (None if node.mask_source is None
                                        else list(node.mask_source))
            if node.state_sources:
                entry["state_sources"] = [list(ref) for ref in node.state_sources]
            if node.mask_unrecorded:
                entry["mask_unrecorded"] = True
            nodes.append(entry)
        spec = {"name": self.name, "input_shape": self.input_shape, "nodes": nodes,
                "outputs": [list(ref) for ref in self.outputs],
                "output_names": self.output_names, "input_names": self.input_names}
        if self.dict_outputs:
            spec["dict_outputs"] = True
        if any(dtype is not None for dtype in self.input_dtypes):
            spec["input_dtypes"] = [None if d is None else d.str for d in self.input_dtypes]
        if self.native_dtypes:
            spec["native_dtypes"] = True
        if len(self.input_shapes) > 1:
            spec["input_shapes"] = self.input_shapes
            del spec["input_shape"]
        return spec

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "Model":
        # files of fastgate <= 0.x hold one "source" per node and one input_shape
        nodes = []
        for entry in spec["nodes"]:
            def refs(key: str) -> tuple:
                return tuple(tuple(r) for r in entry[key]) if key in entry else ()

            mask = entry["mask_source"] if "mask_source" in entry else None
            nodes.append(Node(entry["name"], entry["op"], tuple(entry["source"]),
                              refs("more_sources"), None if mask is None else tuple(mask),
                              refs("state_sources"), "mask_source" in entry,
                              bool(entry["mask_unrecorded"]) if "mask_unrecorded" in entry
                              else False))
        shapes = spec.get("input_shapes")
        return cls(nodes, spec["outputs"],
                   input_shape=None if shapes is not None else spec.get("input_shape"),
                   input_shapes=shapes, input_names=spec.get("input_names"),
                   output_names=spec.get("output_names"),
                   dict_outputs=bool(spec.get("dict_outputs", False)),
                   input_dtypes=spec.get("input_dtypes"),
                   native_dtypes=bool(spec.get("native_dtypes", False)),
                   name=spec.get("name", "model"))
