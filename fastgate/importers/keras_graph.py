"""Keras functional graphs: which layer call reads which tensors, as a fastgate graph.

A functional configuration lists, per layer, its calls ("inbound nodes"): Keras 3 writes
each as ``{"args": [...], "kwargs": {...}}`` with ``__keras_tensor__`` references
``[layer, call, tensor]`` inside; Keras 2 / tf.keras as ``[[layer, call, tensor, kwargs],
...]``, one entry per input tensor. This module reads those calls (:func:`parse_calls`),
keeps the ones an output depends on, orders them so that every call comes after what it
reads, and wires the ops of each call into :class:`fastgate.model.Node` s
(:func:`build_graph`). A layer called several times (a shared layer) gives one op object at
several nodes.

What a call receives, as Keras gives it:

* ``mask=``: a recorded mask tensor (computed by recorded operations) is the layer's mask.
  Keras 3 records the mask it gives every one-input layer whose call takes one, implicit
  masks (``Masking``, ``Embedding(mask_zero)``, merges) included. Without a recorded mask a
  layer gets the mask that travels with its input (each op's rule for passing masks on,
  which gives what Keras 3 records, and what Keras 3 applies unrecorded to layers called on
  a list: merges, attention; Keras 2 records only explicit masks), except that Keras 3 does
  not mask an RNN given ``initial_state`` (its sequence is then not its one tensor
  argument): pinned by a test. A Keras 3 one-input layer that takes a mask and is recorded
  without one gets none; should a mask travel to it in fastgate (the saving version did not
  record masks, or stopped passing them on), running it is refused, not guessed.
* ``initial_state=``: the initial state of a recurrent layer (Keras 2: the inputs after the
  first of a recurrent layer's call).
* ``training=True`` makes Keras run the layer as in training (dropout, noise) even in
  ``predict``: refused unless the layer is the same either way.
* anything else (``constants``, unknown arguments) is refused naming the layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ConfigError, UnsupportedLayerError, WeightFormatError
from ..graph_ops import ARRAY_OPERATIONS, OPERATION_OPTIONS, TENSOR, ArrayOp, is_index_key
from ..model import MODEL_INPUT, Node

__all__ = ["KerasCall", "parse_calls", "build_graph", "is_keras_operation"]

#: A Keras tensor reference: (layer, call index, tensor index).
KerasRef = tuple

# Layers that compute the same with training=True as in inference.
_TRAINING_NEUTRAL = {"InputLayer", "Dense", "Embedding", "Masking", "Activation", "Flatten",
                     "RepeatVector", "GlobalMaxPooling1D", "GlobalMaxPool1D",
                     "GlobalAveragePooling1D", "GlobalAvgPool1D", "Concatenate", "Add",
                     "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Dot"}
_RECURRENT_CLASSES = {"LSTM", "GRU", "SimpleRNN", "CuDNNLSTM", "CuDNNGRU"}
#: Layers whose Keras call takes a ``mask`` argument and that are called on one tensor.
MASK_CONSUMERS = _RECURRENT_CLASSES | {"RNN", "Bidirectional", "TimeDistributed",
                                       "GlobalAveragePooling1D", "GlobalAvgPool1D"}
#: Layers whose op depends on the call's arguments: one op per call.
PER_CALL_LAYERS = {"Attention", "AdditiveAttention"}
# Call arguments a layer's op reproduces, per layer class (besides mask, training and
# initial_state); any other recorded argument is refused.
_HANDLED_ARGUMENTS = {"Attention": {"return_attention_scores", "use_causal_mask"},
                      "AdditiveAttention": {"return_attention_scores", "use_causal_mask"}}


@dataclass
class KerasCall:
    """One call of a layer in a functional graph (a Keras "inbound node")."""

    inputs: list[KerasRef]                       # the tensors of the first argument
    listed: bool = False                         # the first argument was a list of tensors
    mask: list[KerasRef | None] | None = None    # the mask= argument; None: not given
    initial_state: list[KerasRef] = field(default_factory=list)
    training: Any = None
    options: dict = field(default_factory=dict)  # other keyword arguments, as recorded
    arguments: list = field(default_factory=list)  # operations: positional, TENSOR slots
    ranks: list = field(default_factory=list)    # operations: recorded rank of each tensor

    def references(self) -> list[KerasRef]:
        """Every tensor the call reads."""
        masks = [m for m in (self.mask or []) if m is not None]
        return list(self.inputs) + masks + list(self.initial_state)


def is_keras_operation(entry: dict) -> bool:
    """Whether a configuration entry is a Keras 3 tensor operation (``keras.ops``), not a
    layer: its ``module`` says so (``.keras`` archives); legacy ``.h5`` files record no
    module, and there an operation is an entry whose config has no ``trainable`` (every
    layer's has) and whose calls are Keras 3 calls."""
    module = entry.get("module")
    if module:
        return module.startswith("keras.src.ops") or module.startswith("keras.ops")
    nodes = entry.get("inbound_nodes") or []
    return (entry.get("class_name") != "InputLayer" and isinstance(entry.get("config"), dict)
            and "trainable" not in entry["config"] and bool(nodes)
            and isinstance(nodes[0], dict))


def _keras3_ref(value: Any) -> KerasRef | None:
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        history = value.get("config", {}).get("keras_history", [])
        return (str(history[0]), int(history[1]), int(history[2]))
    return None


def _keras2_ref(value: Any) -> KerasRef | None:
    ref = _keras3_ref(value)
    if ref is None and isinstance(value, list) and len(value) == 3 and isinstance(
            value[0], str) and all(isinstance(v, int) for v in value[1:]):
        ref = (value[0], value[1], value[2])
    return ref


def _tensor_list(value: Any, as_ref: Callable[[Any], KerasRef | None], what: str,
                 refuse: Callable[[str], Exception]) -> list[KerasRef | None]:
    """A tensor or a list of tensors (``None`` entries kept) as references."""
    if value is None:
        return []
    ref = as_ref(value)
    if ref is not None:
        return [ref]
    if isinstance(value, (list, tuple)):
        refs = [None if v is None else as_ref(v) for v in value]
        if all(r is not None or v is None for r, v in zip(refs, value)):
            return refs
    raise refuse(f"its {what} argument is not a tensor or a list of tensors: "
                 f"{str(value)[:120]}")


def _recorded_rank(value: Any) -> int | None:
    if isinstance(value, list) and value:
        value = value[0]
    if _keras3_ref(value) is None:
        return None
    shape = value.get("config", {}).get("shape")
    return len(shape) if isinstance(shape, list) else None


def _contains_tensor(value: Any) -> bool:
    if _keras3_ref(value) is not None:
        return True
    if isinstance(value, dict):
        return any(_contains_tensor(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_contains_tensor(v) for v in value)
    return False


def _operation_arguments(args: list, refuse: Callable[[str], Exception]
                         ) -> tuple[list, list[KerasRef]]:
    """A Keras operation's positional arguments: TENSOR slots and constants, and the tensors
    in order. A list of tensors (``ops.concatenate([a, b])``) is spread into slots."""
    template, tensors = [], []
    for value in args:
        ref = _keras3_ref(value)
        if ref is not None:
            template.append(TENSOR)
            tensors.append(ref)
        elif isinstance(value, list) and value and all(_keras3_ref(v) for v in value):
            template.extend([TENSOR] * len(value))
            tensors.extend(_keras3_ref(v) for v in value)
        elif not _contains_tensor(value) and is_index_key(value):
            template.append(value)  # a GetItem key: ints, slices, ellipsis, None
        elif _contains_tensor(value) or isinstance(value, dict):
            raise refuse(f"an argument of this operation is not supported: "
                         f"{str(value)[:120]}")
        else:
            template.append(value)
    return template, tensors


def _keras3_call(node: dict, operation: bool, refuse: Callable[[str], Exception]
                 ) -> KerasCall:
    args = list(node.get("args") or [])
    kwargs = dict(node.get("kwargs") or {})
    if operation:
        template, tensors = _operation_arguments(args, refuse)
        if _contains_tensor(kwargs):
            raise refuse(f"this operation reads tensors as keyword arguments "
                         f"{sorted(kwargs)}")
        ranks = [_recorded_rank(v) for v in args]
        return KerasCall(tensors, options=kwargs, arguments=template,
                         ranks=[r for r in ranks if r is not None] or [None])
    if not args:
        raise refuse("the call has no input")
    for extra in args[1:]:
        if extra is not None:
            raise refuse(f"the call has {len(args)} positional arguments (only the input is "
                         f"supported; pass the others by keyword)")
    first = args[0]
    listed = _keras3_ref(first) is None
    inputs = _tensor_list(first, _keras3_ref, "input", refuse)
    if not inputs or any(r is None for r in inputs):
        raise refuse("its input is not a tensor or a list of tensors")
    mask = kwargs.pop("mask", None)
    call = KerasCall(inputs, listed=listed,
                     mask=_tensor_list(mask, _keras3_ref, "mask", refuse) if mask is not None
                     else None,
                     training=kwargs.pop("training", None))
    state = kwargs.pop("initial_state", None)
    if state is not None:
        call.initial_state = [r for r in _tensor_list(state, _keras3_ref, "initial_state",
                                                      refuse)]
        if any(r is None for r in call.initial_state):
            raise refuse("an initial_state entry is None")
    call.options = kwargs
    return call


def _keras2_call(node: list, refuse: Callable[[str], Exception]) -> KerasCall:
    """``[[layer, call, tensor, kwargs], ...]``: one entry per input tensor; the call's
    keyword arguments are in the entries' kwargs (tf.keras writes them on each entry)."""
    inputs, kwargs = [], {}
    for entry in node:
        if not isinstance(entry, list) or len(entry) < 3:
            raise refuse(f"malformed inbound node entry {str(entry)[:120]}")
        inputs.append((str(entry[0]), int(entry[1]), int(entry[2])))
        if len(entry) > 3 and isinstance(entry[3], dict):
            kwargs.update(entry[3])
    mask = kwargs.pop("mask", None)
    call = KerasCall(inputs, listed=len(inputs) > 1,
                     mask=_tensor_list(mask, _keras2_ref, "mask", refuse) if mask is not None
                     else None,
                     training=kwargs.pop("training", None))
    state = kwargs.pop("initial_state", None)
    if state is not None:
        call.initial_state = _tensor_list(state, _keras2_ref, "initial_state", refuse)
    call.options = kwargs
    return call


def parse_calls(entry: dict, path: Any) -> list[KerasCall]:
    """The calls of one layer entry of a functional configuration (``[]`` for an input)."""
    name = str(entry.get("name") or entry.get("config", {}).get("name"))
    kind = entry.get("class_name")

    def refuse(message: str) -> UnsupportedLayerError:
        return UnsupportedLayerError(f"{kind}: {message}", path=path, layer=name)

    operation = is_keras_operation(entry)
    calls = []
    for node in entry.get("inbound_nodes") or []:
        if isinstance(node, dict):
            calls.append(_keras3_call(node, operation, refuse))
        elif isinstance(node, list):
            calls.append(_keras2_call(node, refuse))
        else:
            raise WeightFormatError(f"malformed inbound node {str(node)[:120]}", path=path,
                                    layer=name)
    return calls


# ----------------------------------------------------------------------------- building
def _check_call(layer: Any, call: KerasCall, refuse: Callable[[str], Exception]) -> None:
    """Refuse call arguments fastgate cannot reproduce."""
    kind = layer.class_name
    config = layer.config
    if call.training:
        neutral = kind in _TRAINING_NEUTRAL or layer.operation
        if kind in _RECURRENT_CLASSES:
            neutral = not (config.get("dropout") or config.get("recurrent_dropout"))
        if not neutral:
            raise refuse("it is called with training=True: Keras runs it as in training "
                         "(dropout or noise at predict time), which fastgate does not "
                         "reproduce")
    unknown = sorted(set(call.options) - _HANDLED_ARGUMENTS.get(kind, set()))
    if unknown and not layer.operation:
        raise refuse(f"it is called with {unknown}, which fastgate does not support")
    if call.initial_state and kind not in _RECURRENT_CLASSES | {"Bidirectional"}:
        raise refuse("initial_state is only supported for recurrent layers")


def _needed_calls(layers: dict, outputs: list[KerasRef], inputs: dict[str, int], path: Any
                  ) -> set[tuple[str, int]]:
    needed: set[tuple[str, int]] = set()
    stack = [(ref[0], ref[1]) for ref in outputs]
    while stack:
        key = stack.pop()
        if key in needed or key[0] in inputs:
            continue
        layer = layers.get(key[0])
        if layer is None:
            raise WeightFormatError(f"layer {key[0]!r} is referenced but not in the "
                                    f"configuration", path=path)
        if not 0 <= key[1] < len(layer.calls):
            if not layer.calls:
                raise UnsupportedLayerError(f"{layer.class_name} has no input and is not a "
                                            f"model input", path=path, layer=key[0])
            raise WeightFormatError(f"call {key[1]} of layer {key[0]!r} is referenced; it "
                                    f"has {len(layer.calls)}", path=path, layer=key[0])
        needed.add(key)
        stack.extend((r[0], r[1]) for r in layer.calls[key[1]].references())
    return needed


def _ordered(layers: list, needed: set[tuple[str, int]], inputs: dict[str, int], path: Any
             ) -> list[tuple[Any, int]]:
    """The needed calls, each after the calls it reads (configuration order otherwise)."""
    pending = [(layer, k) for layer in layers for k in range(len(layer.calls))
               if (layer.name, k) in needed]
    done: set[tuple[str, int]] = set()
    order = []
    while pending:
        left = []
        for layer, k in pending:
            if all(r[0] in inputs or (r[0], r[1]) in done
                   for r in layer.calls[k].references()):
                order.append((layer, k))
                done.add((layer.name, k))
            else:
                left.append((layer, k))
        if len(left) == len(pending):
            raise WeightFormatError(f"the graph has a cycle or a missing layer around "
                                    f"{left[0][0].name!r}", path=path, layer=left[0][0].name)
        pending = left
    return order


class _Wiring:
    """Keras tensor references -> fastgate references while the nodes are built."""

    def __init__(self, inputs: dict[str, int], output_count: Callable[[Any], int],
                 path: Any) -> None:
        self.inputs = inputs
        self.output_count = output_count
        self.path = path
        self.nodes: list[Node] = []
        self.produced: dict[tuple[str, int], int] = {}        # call -> its last node
        self.passthrough: dict[tuple[str, int], tuple] = {}   # identity call -> its input

    def resolve(self, ref: KerasRef, consumer: str) -> tuple[int, int]:
        name, call, index = ref
        if name in self.inputs:
            return (MODEL_INPUT, self.inputs[name])
        if (name, call) in self.passthrough:
            return self.passthrough[(name, call)]
        node = self.produced.get((name, call))
        if node is None:
            raise WeightFormatError(f"layer {consumer!r} reads {name!r}, which is not a "
                                    f"supported input", path=self.path, layer=consumer)
        count = self.output_count(self.nodes[node].op)
        if index >= count:
            raise WeightFormatError(f"layer {consumer!r} reads output {index} of {name!r}, "
                                    f"which has {count}", path=self.path, layer=consumer)
        return (node, index)


def _operation(layer: Any, call: KerasCall, refuse: Callable[[str], Exception]) -> ArrayOp:
    if layer.class_name not in ARRAY_OPERATIONS:
        raise refuse(f"the Keras operation {layer.class_name!r} cannot be evaluated by "
                     f"fastgate (supported: {', '.join(sorted(ARRAY_OPERATIONS))})")
    options = {k: v for k, v in layer.config.items() if k not in ("name", "trainable")}
    options.update(call.options)
    unknown = sorted(set(options) - OPERATION_OPTIONS.get(layer.class_name, set()))
    if unknown:
        raise refuse(f"the Keras operation {layer.class_name!r} is recorded with options "
                     f"{unknown}, which fastgate does not evaluate")
    if not call.inputs:
        raise refuse("the operation reads no tensor")
    try:
        return ArrayOp(layer.class_name, call.arguments, options,
                       steps_axis_free=_steps_axis_free(layer.class_name, options, call.ranks,
                                                        call.arguments))
    except ConfigError as error:
        raise refuse(f"the Keras operation cannot be evaluated by fastgate: {error}"
                     ) from error


def _index_keeps_steps(key: Any, rank: int | None) -> bool:
    """Whether a GetItem key leaves the batch and steps axes whole (``x[:, :, 0]``,
    ``x[..., 1:3]`` of a rank-3 input), so it acts on each step alone."""
    entries = key if isinstance(key, list) else [key]
    full = {"class_name": "__slice__", "config": {"start": None, "stop": None, "step": None}}
    if any(entry is None for entry in entries) or rank is None:
        return False
    if entries[:2] == [full, full]:
        return True
    ellipsis = {"class_name": "__ellipsis__", "config": {}}
    return bool(entries) and entries[0] == ellipsis and len(entries) - 1 <= rank - 2


def _steps_axis_free(operation: str, options: dict, ranks: list[int | None],
                     arguments: list) -> bool | None:
    """Whether an axis operation acts on feature axes only (axis >= 2), from the rank Keras
    recorded for its input; ``None`` (the class default) when it is elementwise."""
    if operation not in ("Any", "All", "Sum", "Max", "Min", "Mean", "ExpandDims", "Squeeze",
                         "Concatenate", "GetItem"):
        return None
    rank = ranks[0] if ranks else None
    if operation == "GetItem":
        return _index_keeps_steps(arguments[1] if len(arguments) > 1 else None, rank)
    axes = options.get("axis")
    if axes is None or rank is None:
        return False
    rank = rank + 1 if operation == "ExpandDims" else rank
    axes = axes if isinstance(axes, list) else [axes]
    return all(isinstance(a, int) and a % rank >= 2 for a in axes)


def build_graph(layers: list, input_names: list[str], outputs: list[KerasRef], *,
                translate: Callable[[Any, KerasCall], list[tuple[str, Any]]],
                output_count: Callable[[Any], int], keras3: bool, path: Any
                ) -> tuple[list[Node], list[tuple[int, int]]]:
    """The fastgate nodes and output references of a functional graph.

    ``layers`` carry ``calls`` (:func:`parse_calls`) and ``operation`` (a Keras operation);
    ``translate(layer, call)`` gives a layer's ops (``[]`` for identity), called once per
    layer (so a shared layer is one op object at each of its nodes), except for the layers
    configured by their call (attention: masks, ``use_causal_mask``), once per call.
    """
    by_name = {layer.name: layer for layer in layers}
    inputs = {name: k for k, name in enumerate(input_names)}
    needed = _needed_calls(by_name, outputs, inputs, path)
    wiring = _Wiring(inputs, output_count, path)
    translated: dict[Any, list[tuple[str, Any]]] = {}
    for layer, k in _ordered(layers, needed, inputs, path):
        call = layer.calls[k]

        def refuse(message: str, layer: Any = layer) -> UnsupportedLayerError:
            return UnsupportedLayerError(f"{layer.class_name}: {message}", path=path,
                                         layer=layer.name)

        _check_call(layer, call, refuse)
        if layer.operation:
            ops = [("", _operation(layer, call, refuse))]
        else:
            key = (layer.name, k) if layer.class_name in PER_CALL_LAYERS else layer.name
            if key not in translated:
                translated[key] = translate(layer, call)
            ops = translated[key]
        if not ops:
            if len(call.inputs) != 1:
                raise refuse(f"takes {len(call.inputs)} inputs; it passes one on")
            wiring.passthrough[(layer.name, k)] = wiring.resolve(call.inputs[0], layer.name)
            continue
        node_name = layer.name if k == 0 else f"{layer.name}@{k}"
        _add_call_nodes(wiring, node_name, layer, call, ops, keras3, refuse)
        wiring.produced[(layer.name, k)] = len(wiring.nodes) - 1
    model_outputs = [wiring.resolve(ref, "<model outputs>") for ref in outputs]
    return _without_recorded_masks_that_travel(wiring.nodes, model_outputs)


def _add_call_nodes(wiring: _Wiring, node_name: str, layer: Any, call: KerasCall,
                    ops: list[tuple[str, Any]], keras3: bool,
                    refuse: Callable[[str], Exception]) -> None:
    """The nodes of one call: its first op reads the call's tensors, mask and state; the
    ops after it (a Dense split from its softmax) each read the one before."""
    first = ops[0][1]
    refs = [wiring.resolve(r, layer.name) for r in call.inputs]
    states = []
    if call.initial_state:
        states = [wiring.resolve(r, layer.name) for r in call.initial_state]
    if len(refs) > 1 and hasattr(first, "state_count") and not getattr(
            first, "multi_input", False):
        # Keras 2 records RNN(x, initial_state=[h, c]) as a call on [x, h, c]
        refs, states = refs[:1], refs[1:]
    if len(refs) > 1 and not getattr(first, "multi_input", False):
        raise refuse(f"takes {len(refs)} inputs; fastgate's {type(first).__name__} takes one")
    if getattr(first, "multi_input", False) and not layer.operation and not call.listed \
            and len(refs) == 1:
        raise refuse("a merge or attention layer needs a list of inputs")
    # A recorded mask is the layer's mask. Keras 3 gives a layer that takes a mask the one
    # travelling with its input only when that input is its one tensor argument: an RNN
    # given initial_state gets none. Otherwise the travelling mask, as each op passes it
    # on: what Keras 3 applies, unrecorded, to layers called on a list, and what Keras 2,
    # which records only explicit masks, does.
    mask_source = None
    consumer = keras3 and not call.listed and layer.class_name in MASK_CONSUMERS
    explicit = consumer and bool(call.initial_state)
    # Keras 3 records the mask it gives such a layer (3.15: always); none recorded while
    # fastgate sees one travelling means the saving version and fastgate disagree (an
    # older Keras that did not record, or a newer one that stopped passing masks on):
    # refused when it happens, never guessed
    unrecorded = consumer and not call.initial_state and not call.mask
    masks = call.mask or []
    if hasattr(first, "given_masks"):
        # attention: the masks given (query, value) are further inputs of the op
        refs = refs + [wiring.resolve(m, layer.name) for m in masks if m is not None]
    elif masks:
        if getattr(first, "multi_input", False) and not layer.operation:
            raise refuse("a mask argument on a merge is not supported")
        if len(masks) != 1 or masks[0] is None:
            raise refuse(f"its mask argument holds {len(masks)} tensors; one is expected")
        mask_source, explicit = wiring.resolve(masks[0], layer.name), True
    if states and not hasattr(first, "state_count"):
        raise refuse("initial_state is only supported for recurrent layers")
    if states and len(states) != first.state_count:
        raise refuse(f"initial_state holds {len(states)} tensors; the layer has "
                     f"{first.state_count} states")
    wiring.nodes.append(Node(node_name + ops[0][0], first, refs[0], tuple(refs[1:]),
                             mask_source, tuple(states), explicit,
                             unrecorded and mask_source is None))
    for suffix, op in ops[1:]:
        wiring.nodes.append(Node(node_name + suffix, op, (len(wiring.nodes) - 1, 0)))


# ----------------------------------------------------------------------------- simplifying
_UNKNOWN = object()  # a mask fastgate cannot describe statically: never equal to another


def _recorded_mask(nodes: list[Node], ref: tuple[int, int]) -> Any:
    """What a recorded mask chain computes, when it is one of Keras' implicit masks:
    ``("masking", x, value)`` for ``any(x != value, axis=-1)`` (Masking),
    ``("embedding", ids)`` for ``ids != 0`` (Embedding(mask_zero))."""
    if ref[0] == MODEL_INPUT or ref[1] != 0:
        return _UNKNOWN
    node = nodes[ref[0]]
    op = node.op
    if not isinstance(op, ArrayOp) or node.more_sources:
        return _UNKNOWN
    if op.operation == "NotEqual" and len(op.arguments) == 2 and op.arguments[0] == TENSOR \
            and op.arguments[1] == 0 and not op.options:
        return ("embedding", node.source)
    if op.operation == "Any" and op.options == {"axis": -1, "keepdims": False} \
            and node.source[0] != MODEL_INPUT and node.source[1] == 0:
        inner = nodes[node.source[0]]
        if (isinstance(inner.op, ArrayOp) and inner.op.operation == "NotEqual"
                and not inner.more_sources and not inner.op.options
                and len(inner.op.arguments) == 2 and inner.op.arguments[0] == TENSOR
                and isinstance(inner.op.arguments[1], (int, float))):
            return ("masking", inner.source, float(inner.op.arguments[1]))
    return _UNKNOWN


def _travelling_mask(nodes: list[Node], ref: tuple[int, int], depth: int = 0) -> Any:
    """The mask fastgate's ops pass along to ``ref``, described as :func:`_recorded_mask`
    does; ``None`` for none, ``_UNKNOWN`` where the ops are not simple enough to say."""
    from ..ops import Activation, Bidirectional, Dense, Embedding, Masking, Recurrent

    if ref[0] == MODEL_INPUT:
        return None
    node = nodes[ref[0]]
    op = node.op
    if depth > 64 or node.more_sources or node.state_sources:
        return _UNKNOWN
    if node.mask_source is not None:
        received = _recorded_mask(nodes, node.mask_source)
    elif node.explicit_mask:
        received = None
    else:
        received = _travelling_mask(nodes, node.source, depth + 1)
    if isinstance(op, Masking):
        return ("masking", node.source, op.mask_value) if ref[1] == 0 else _UNKNOWN
    if isinstance(op, Embedding):
        return ("embedding", node.source) if op.mask_zero else None
    if isinstance(op, (Dense, Activation)):
        return received
    if isinstance(op, Recurrent) and ref[1] == 0:
        return received if op.return_sequences else None
    if isinstance(op, Bidirectional) and ref[1] < (2 if op.merge_mode is None else 1):
        return received if op.forward.return_sequences else None
    return _UNKNOWN


def _without_recorded_masks_that_travel(nodes: list[Node], outputs: list[tuple[int, int]]
                                        ) -> tuple[list[Node], list[tuple[int, int]]]:
    """The graph without the recorded mask chains that compute what fastgate's ops pass
    along anyway (Keras 3 records the implicit masks of Masking and Embedding on every
    layer that takes one): the same answers, a plain chain where the model is one (the
    fast streaming step, the exporters), and no mask computed twice."""
    simplified = list(nodes)
    for position, node in enumerate(nodes):
        if node.mask_source is None or node.more_sources or node.state_sources:
            continue
        recorded = _recorded_mask(simplified, node.mask_source)
        if recorded is not _UNKNOWN and recorded == _travelling_mask(simplified, node.source):
            simplified[position] = node._replace(mask_source=None, explicit_mask=False,
                                                 mask_unrecorded=False)
    needed: set[int] = set()
    stack = [ref[0] for ref in outputs if ref[0] != MODEL_INPUT]
    while stack:
        position = stack.pop()
        if position not in needed:
            needed.add(position)
            stack.extend(ref[0] for ref in simplified[position].sources
                         if ref[0] != MODEL_INPUT)
    new_index = {old: new for new, old in enumerate(sorted(needed))}

    def moved(ref: tuple[int, int]) -> tuple[int, int]:
        return ref if ref[0] == MODEL_INPUT else (new_index[ref[0]], ref[1])

    kept = []
    for old in sorted(needed):
        node = simplified[old]
        kept.append(node._replace(
            source=moved(node.source), more_sources=tuple(map(moved, node.more_sources)),
            mask_source=None if node.mask_source is None else moved(node.mask_source),
            state_sources=tuple(map(moved, node.state_sources))))
    return kept, [moved(ref) for ref in outputs]
