"""The benchmark shapes, and every engine built from the same fastgate weights.

Each ``make_*`` function takes a fastgate layer (``fastgate.LSTM`` / ``fastgate.GRU``) and
returns a zero-argument callable that runs one forward pass over the benchmark input and
returns the output as a ``(T, B, H)`` NumPy array (for the correctness check), plus a
"hot" callable that does only the work being timed.

* torch: ``nn.LSTM`` / ``nn.GRU`` from :func:`fastgate.export.torch.torch_module`.
* ONNX Runtime: an ONNX ``LSTM`` / ``GRU`` graph built with ``onnx.helper`` (gates reordered to
  ONNX's ``i,o,f,c`` / ``z,r,h``; GRU ``linear_before_reset=1``), run through io-binding into
  preallocated outputs, so ORT's per-call overhead is as small as it gets.
* fastgate: the layer itself, called like a user would (``out, state = layer(x)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

import fastgate
from fastgate.layout import reorder_gates

ONNX_OPSET = 21
ONNX_IR_VERSION = 10


@dataclass(frozen=True)
class Shape:
    name: str
    label: str
    batch: int
    steps: int
    input_size: int
    hidden_size: int
    num_layers: int
    small: bool  # the python oracle is benchmarked too (S1-S3)


SHAPES = {s.name: s for s in [
    Shape("S1", "stream step", 1, 1, 64, 128, 1, True),
    Shape("S2", "short sequence", 1, 50, 64, 128, 1, True),
    Shape("S3", "tiny LSTM(32) on (10,5)", 1, 10, 5, 32, 1, True),
    Shape("S4", "row classifier", 64, 28, 28, 256, 2, False),
    Shape("S5", "medium batch", 32, 100, 128, 256, 1, False),
    Shape("S6", "throughput", 256, 50, 256, 512, 1, False),
]}

#: Target of fastgate time / best peer time (median), per shape.
TARGETS = {"S1": 0.25, "S3": 0.25, "S2": 0.8, "S4": 1.0, "S5": 1.0, "S6": 1.0}
#: Target of fastgate float64 time / float32 time at S5.
DTYPE_TARGET = 2.5

CELLS = {"lstm": fastgate.LSTM, "gru": fastgate.GRU}
ENGINES = ("fastgate", "oracle", "torch", "onnxruntime")


def make_layer(shape: Shape, cell: str, dtype=np.float32, seed: int = 0):
    """The fastgate layer every engine of ``(shape, cell)`` copies its weights from."""
    return CELLS[cell].random(shape.input_size, shape.hidden_size, num_layers=shape.num_layers,
                              seed=seed, dtype=dtype)


def make_input(shape: Shape, dtype=np.float32, seed: int = 1) -> np.ndarray:
    """Time-major ``(T, B, D)`` input (ONNX Runtime's CPU LSTM/GRU take time-major only)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((shape.steps, shape.batch, shape.input_size)).astype(dtype)


# ---------------------------------------------------------------------------------- fastgate
def fastgate_runner(layer, x: np.ndarray, backend: str | None = None
                    ) -> tuple[Callable[[], None], Callable[[], np.ndarray]]:
    """``(hot, result)``: ``layer(x)`` in ``backend`` (the active one if ``None``)."""
    if backend is None:
        def hot():
            layer(x)
    else:
        def hot():
            with fastgate.use_backend(backend):
                layer(x)

    def result():
        if backend is None:
            return layer(x)[0]
        with fastgate.use_backend(backend):
            return layer(x)[0]
    return hot, result


# ---------------------------------------------------------------------------------- torch
def make_torch_module(layer):
    """``torch.nn.LSTM`` / ``GRU`` holding ``layer``'s weights (time-major)."""
    from fastgate.export.torch import torch_module

    return torch_module(layer, batch_first=False)


def torch_runner(layer, x: np.ndarray):
    import torch
    module = make_torch_module(layer)
    x_t = torch.from_numpy(x)

    def hot():
        module(x_t)  # called inside torch.inference_mode() by the benchmark

    def result():
        with torch.inference_mode():
            return module(x_t)[0].numpy().copy()
    return hot, result


# ---------------------------------------------------------------------------------- ORT
def make_onnx_model(layer):
    """An ONNX model ``X (T, B, D) -> Y (T, 1, B, H)`` with ``layer``'s weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cell = layer.cell
    op = {"lstm": "LSTM", "gru": "GRU"}[cell]
    hidden = layer.hidden_size
    nodes, initializers = [], []
    layer_input = "X"
    for k, w in enumerate(layer.weights):
        def onnx_gates(array, axis=0):
            return reorder_gates(array, cell, source="fastgate", target="onnx", axis=axis)
        weight = onnx_gates(w.input_kernel.T)[None]           # (1, G*H, D)
        recurrence = onnx_gates(w.recurrent_kernel.T)[None]   # (1, G*H, H)
        bias = np.concatenate([onnx_gates(w.input_bias), onnx_gates(w.recurrent_bias)])[None]
        names = [f"W{k}", f"R{k}", f"B{k}"]
        for name, array in zip(names, (weight, recurrence, bias)):
            initializers.append(numpy_helper.from_array(
                np.ascontiguousarray(array, dtype=np.float32), name))
        last = k == len(layer.weights) - 1
        output = "Y" if last else f"Y{k}"
        attributes = {"hidden_size": hidden, "direction": "forward"}
        if cell == "gru":
            attributes["linear_before_reset"] = 1
        nodes.append(helper.make_node(op, [layer_input] + names, [output], **attributes))
        if not last:  # (T, 1, B, H) -> (T, B, H) for the next layer
            initializers.append(numpy_helper.from_array(np.array([1], np.int64), f"axes{k}"))
            nodes.append(helper.make_node("Squeeze", [output, f"axes{k}"], [f"X{k + 1}"]))
            layer_input = f"X{k + 1}"
    graph = helper.make_graph(
        nodes, f"fastgate_{cell}",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", layer.input_size])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", 1, "B", hidden])],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              ir_version=ONNX_IR_VERSION)
    onnx.checker.check_model(model)
    return model


def ort_runner(layer, x: np.ndarray, threads: int, directory: str):
    import onnx
    import onnxruntime as ort

    path = os.path.join(directory, f"{layer.cell}_{layer.num_layers}_{layer.input_size}_"
                                   f"{layer.hidden_size}.onnx")
    if not os.path.exists(path):
        onnx.save(make_onnx_model(layer), path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    steps, batch = x.shape[:2]
    out = np.empty((steps, 1, batch, layer.hidden_size), np.float32)
    binding = session.io_binding()
    binding.bind_cpu_input("X", x)
    binding.bind_output("Y", "cpu", 0, np.float32, out.shape, out.ctypes.data)

    def hot():
        session.run_with_iobinding(binding)

    def result():
        out[...] = np.nan
        session.run_with_iobinding(binding)
        return out[:, 0].copy()
    hot.session = session  # keep it alive with the binding
    return hot, result
