"""Builders of small ONNX models for the ONNX import tests (uses the ``onnx`` package, which
fastgate itself never imports)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
ONNX_DTYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}


def recurrent_model(op, *, input_size=3, hidden=5, direction="forward", layout=0,
                    with_bias=True, with_lengths=False, with_h0=False, with_c0=False,
                    peepholes=None, outputs=("Y", "Y_h", "Y_c"), dtype=np.float32,
                    seed=0, opset=14, **attributes):
    """A one-node LSTM / GRU / RNN model with random weights as initializers.

    Graph inputs: ``X`` and, if asked, ``sequence_lens``, ``initial_h``, ``initial_c``
    (dynamic batch and steps). ``peepholes``: a ``(dirs, 3H)`` array for ``P``.
    """
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    gates = GATES[op]
    dtype = np.dtype(dtype)
    elem = ONNX_DTYPES[dtype]
    initializers = [
        numpy_helper.from_array(rng.uniform(-0.6, 0.6, (dirs, gates * hidden, input_size))
                                .astype(dtype), "W"),
        numpy_helper.from_array(rng.uniform(-0.6, 0.6, (dirs, gates * hidden, hidden))
                                .astype(dtype), "R")]
    names = ["X", "W", "R", "", "", "", "", ""]
    if with_bias:
        initializers.append(numpy_helper.from_array(
            rng.uniform(-0.5, 0.5, (dirs, 2 * gates * hidden)).astype(dtype), "B"))
        names[3] = "B"
    batch, steps = ("batch", "steps")
    x_shape = [steps, batch, input_size] if layout == 0 else [batch, steps, input_size]
    state_shape = [dirs, batch, hidden] if layout == 0 else [batch, dirs, hidden]
    inputs = [helper.make_tensor_value_info("X", elem, x_shape)]
    if with_lengths:
        names[4] = "sequence_lens"
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32,
                                                    [batch]))
    if with_h0:
        names[5] = "initial_h"
        inputs.append(helper.make_tensor_value_info("initial_h", elem, state_shape))
    if with_c0:
        names[6] = "initial_c"
        inputs.append(helper.make_tensor_value_info("initial_c", elem, state_shape))
    if peepholes is not None:
        names[7] = "P"
        initializers.append(numpy_helper.from_array(np.asarray(peepholes, dtype), "P"))
    while names and names[-1] == "":
        names.pop()
    if op != "LSTM":
        outputs = tuple(o for o in outputs if o != "Y_c")
    node_outputs = ["Y", "Y_h", "Y_c"][:3 if op == "LSTM" else 2]
    node_outputs = [name if name in outputs else "" for name in node_outputs]
    while node_outputs[-1] == "":
        node_outputs.pop()
    if layout:
        attributes["layout"] = layout
    node = helper.make_node(op, names, node_outputs, name=f"the_{op.lower()}",
                            hidden_size=hidden, direction=direction, **attributes)
    y_shape = [steps, dirs, batch, hidden] if layout == 0 else [batch, steps, dirs, hidden]
    graph_outputs = [helper.make_tensor_value_info(name, elem, y_shape if name == "Y"
                                                   else state_shape)
                     for name in node_outputs if name]
    graph = helper.make_graph([node], "single_op", inputs, graph_outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def feeds(model, *, batch=3, steps=6, seed=1, lengths=None):
    """Random inputs for ``recurrent_model``'s graph inputs (layout 0 or 1 from the shapes)."""
    rng = np.random.default_rng(seed)
    node = model.graph.node[0]
    layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
    hidden = next(a.i for a in node.attribute if a.name == "hidden_size")
    direction = next((a.s.decode() for a in node.attribute if a.name == "direction"),
                     "forward")
    dirs = 2 if direction == "bidirectional" else 1
    result = {}
    for info in model.graph.input:
        elem = info.type.tensor_type.elem_type
        dtype = np.float64 if elem == TensorProto.DOUBLE else np.float32
        if info.name == "X":
            width = info.type.tensor_type.shape.dim[2].dim_value
            shape = (steps, batch, width) if layout == 0 else (batch, steps, width)
            result["X"] = rng.standard_normal(shape).astype(dtype)
        elif info.name == "sequence_lens":
            result["sequence_lens"] = np.asarray(
                lengths if lengths is not None else rng.integers(1, steps + 1, batch),
                np.int32)
        else:
            shape = (dirs, batch, hidden) if layout == 0 else (batch, dirs, hidden)
            result[info.name] = (0.5 * rng.standard_normal(shape)).astype(dtype)
    return result


def op_kinds(model):
    """What runs each node of an imported model: the fastgate op's class name, or
    ``Onnx:<op type>`` for an ONNX function."""
    from fastgate.importers.onnx_graph import OnnxOp

    return [f"Onnx:{node.op.op_type}" if isinstance(node.op, OnnxOp) else type(node.op).__name__
            for node in model.nodes]

