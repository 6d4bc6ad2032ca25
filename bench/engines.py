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

A ragged shape (S7) gives each sequence its own length: fastgate gets ``lengths=``, ORT the
graph input ``sequence_lens``, torch a ``PackedSequence`` (packing and unpacking timed too, as
a user of padded batches pays them).
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
    bidirectional: bool = False
    ragged: bool = False  # lengths drawn from [RAGGED_MIN_LENGTH, steps] (make_lengths)

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1


SHAPES = {s.name: s for s in [
    Shape("S1", "stream step", 1, 1, 64, 128, 1, True),
    Shape("S2", "short sequence", 1, 50, 64, 128, 1, True),
    Shape("S3", "tiny LSTM(32) on (10,5)", 1, 10, 5, 32, 1, True),
    Shape("S4", "row classifier", 64, 28, 28, 256, 2, False),
    Shape("S5", "medium batch", 32, 100, 128, 256, 1, False),
    Shape("S6", "throughput", 256, 50, 256, 512, 1, False),
    Shape("S7", "ragged bidirectional", 32, 100, 64, 128, 1, False, bidirectional=True,
          ragged=True),
]}

#: Target of fastgate time / best peer time (median), per shape (issue 15).
TARGETS = {"S1": 0.25, "S3": 0.25, "S2": 0.8, "S4": 0.9, "S5": 0.9, "S6": 0.9, "S7": 0.9}
#: Target of fastgate float64 time / float32 time at S5.
DTYPE_TARGET = 2.5
#: Target of fastgate's S6 LSTM GFLOP/s as a fraction of the same run's sgemm GFLOP/s.
SGEMM_SHAPE, SGEMM_CELL, SGEMM_TARGET = "S6", "lstm", 0.85
#: Target of fastgate's S7 time with ``lengths=`` / its time on the same batch without.
RAGGED_TARGET = 0.75
#: Ragged lengths: drawn uniformly from [10, T] with this seed (S7: 58.1% of tokens real).
RAGGED_MIN_LENGTH, RAGGED_SEED = 10, 7

CELLS = {"lstm": fastgate.LSTM, "gru": fastgate.GRU}
ENGINES = ("fastgate", "oracle", "torch", "onnxruntime")
#: The ragged shapes' extra engine: fastgate on the same padded batch without ``lengths=``.
NO_LENGTHS = "fastgate-no-lengths"
GATES = {"lstm": 4, "gru": 3}


def engines_of(shape: Shape) -> tuple[str, ...]:
    """The engines benchmarked at ``shape`` (the oracle on the small shapes only)."""
    names = tuple(e for e in ENGINES if e != "oracle" or shape.small)
    return names + (NO_LENGTHS,) if shape.ragged else names


def flops(shape: Shape, cell: str, lengths: np.ndarray | None = None) -> float:
    """Floating-point operations of one forward pass: ``2 * tokens * (D + H) * G * H`` per
    layer and direction (``x W`` and ``h U``; the cell's element-wise work not counted),
    tokens being ``T * B``, or ``sum(lengths)`` (the real work of a ragged batch)."""
    tokens = shape.steps * shape.batch if lengths is None else int(np.sum(lengths))
    gates, hidden = GATES[cell], shape.hidden_size
    total = 0.0
    for layer in range(shape.num_layers):
        width = shape.input_size if layer == 0 else hidden * shape.directions
        total += shape.directions * 2.0 * tokens * (width + hidden) * gates * hidden
    return total


def make_lengths(shape: Shape) -> np.ndarray | None:
    """``(B,)`` int64 lengths of a ragged shape (fixed seed), else ``None``."""
    if not shape.ragged:
        return None
    rng = np.random.default_rng(RAGGED_SEED)
    return rng.integers(RAGGED_MIN_LENGTH, shape.steps + 1, shape.batch).astype(np.int64)


def make_layer(shape: Shape, cell: str, dtype=np.float32, seed: int = 0):
    """The fastgate layer every engine of ``(shape, cell)`` copies its weights from."""
    return CELLS[cell].random(shape.input_size, shape.hidden_size, num_layers=shape.num_layers,
                              bidirectional=shape.bidirectional, seed=seed, dtype=dtype)


def make_input(shape: Shape, dtype=np.float32, seed: int = 1) -> np.ndarray:
    """Time-major ``(T, B, D)`` input (ONNX Runtime's CPU LSTM/GRU take time-major only)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((shape.steps, shape.batch, shape.input_size)).astype(dtype)


# ---------------------------------------------------------------------------------- fastgate
def fastgate_runner(layer, x: np.ndarray, backend: str | None = None,
                    lengths: np.ndarray | None = None
                    ) -> tuple[Callable[[], None], Callable[[], np.ndarray]]:
    """``(hot, result)``: ``layer(x, lengths=lengths)`` in ``backend`` (the active one if
    ``None``)."""
    if backend is None and lengths is None:
        def hot():
            layer(x)
    elif backend is None:
        def hot():
            layer(x, lengths=lengths)
    else:
        def hot():
            with fastgate.use_backend(backend):
                layer(x, lengths=lengths)

    def result():
        if backend is None:
            return layer(x, lengths=lengths)[0]
        with fastgate.use_backend(backend):
            return layer(x, lengths=lengths)[0]
    return hot, result


# ---------------------------------------------------------------------------------- torch
def make_torch_module(layer):
    """``torch.nn.LSTM`` / ``GRU`` holding ``layer``'s weights (time-major)."""
    from fastgate.export.torch import torch_module

    return torch_module(layer, batch_first=False)


def torch_runner(layer, x: np.ndarray, lengths: np.ndarray | None = None):
    """``(hot, result)``: the torch module on ``x``; with ``lengths``, packed
    (``enforce_sorted=False``: torch sorts) and padded back to ``(T, B, dirs*H)``."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    module = make_torch_module(layer)
    x_t = torch.from_numpy(x)
    steps = x.shape[0]

    if lengths is None:
        def forward():
            return module(x_t)[0]
    else:
        lengths_t = torch.from_numpy(np.asarray(lengths, np.int64))

        def forward():
            packed = pack_padded_sequence(x_t, lengths_t, enforce_sorted=False)
            return pad_packed_sequence(module(packed)[0], total_length=steps)[0]

    def hot():
        forward()  # called inside torch.inference_mode() by the benchmark

    def result():
        with torch.inference_mode():
            return forward().numpy().copy()
    return hot, result


# ---------------------------------------------------------------------------------- ORT
def _onnx_direction_weights(layer, weights) -> tuple[np.ndarray, ...]:
    """``W (dirs, G*H, D)``, ``R (dirs, G*H, H)``, ``B (dirs, 2*G*H)`` in ONNX's gate order."""
    def onnx_gates(array):
        return reorder_gates(array, layer.cell, source="fastgate", target="onnx", axis=0)
    arrays = ([onnx_gates(w.input_kernel.T) for w in weights],
              [onnx_gates(w.recurrent_kernel.T) for w in weights],
              [np.concatenate([onnx_gates(w.input_bias), onnx_gates(w.recurrent_bias)])
               for w in weights])
    return tuple(np.ascontiguousarray(np.stack(a), dtype=np.float32) for a in arrays)


def make_onnx_model(layer, ragged: bool = False):
    """An ONNX model ``X (T, B, D) [, sequence_lens (B,)] -> Y (T, dirs, B, H)`` with
    ``layer``'s weights (stacked layers joined by Transpose + Reshape to ``(T, B, dirs*H)``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cell = layer.cell
    op = {"lstm": "LSTM", "gru": "GRU"}[cell]
    hidden, dirs = layer.hidden_size, layer.num_directions
    nodes, initializers = [], []
    layer_input = "X"
    lengths_input = "sequence_lens" if ragged else ""
    for k in range(layer.num_layers):
        names = [f"W{k}", f"R{k}", f"B{k}"]
        arrays = _onnx_direction_weights(layer, layer.weights[k * dirs:(k + 1) * dirs])
        initializers += [numpy_helper.from_array(a, n) for n, a in zip(names, arrays)]
        last = k == layer.num_layers - 1
        output = "Y" if last else f"Y{k}"
        attributes = {"hidden_size": hidden,
                      "direction": "bidirectional" if dirs == 2 else "forward"}
        if cell == "gru":
            attributes["linear_before_reset"] = 1
        inputs = [layer_input] + names + ([lengths_input] if ragged else [])
        nodes.append(helper.make_node(op, inputs, [output], **attributes))
        if not last:  # (T, dirs, B, H) -> (T, B, dirs*H) for the next layer
            initializers.append(numpy_helper.from_array(
                np.array([0, 0, dirs * hidden], np.int64), f"shape{k}"))
            nodes.append(helper.make_node("Transpose", [output], [f"T{k}"], perm=[0, 2, 1, 3]))
            nodes.append(helper.make_node("Reshape", [f"T{k}", f"shape{k}"], [f"X{k + 1}"]))
            layer_input = f"X{k + 1}"
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT,
                                                  ["T", "B", layer.input_size])]
    if ragged:
        graph_inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32,
                                                          ["B"]))
    graph = helper.make_graph(
        nodes, f"fastgate_{cell}", graph_inputs,
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", dirs, "B", hidden])],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                              ir_version=ONNX_IR_VERSION)
    onnx.checker.check_model(model)
    return model


def ort_session_options(threads: int):
    """ORT options for ``threads`` threads: ``intra_op_num_threads`` (the caller's thread is
    one of them), no inter-op pool, sequential execution."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def ort_runner(layer, x: np.ndarray, threads: int, directory: str,
               lengths: np.ndarray | None = None):
    """``(hot, result)``: the ONNX graph of ``layer`` through io-binding (``sequence_lens``
    bound too when ``lengths`` is given); ``result`` is ``(T, B, dirs*H)``."""
    import onnx
    import onnxruntime as ort

    ragged = lengths is not None
    path = os.path.join(directory, f"{layer.cell}_{layer.num_layers}_{layer.input_size}_"
                                   f"{layer.hidden_size}_{layer.num_directions}"
                                   f"{'_ragged' if ragged else ''}.onnx")
    if not os.path.exists(path):
        onnx.save(make_onnx_model(layer, ragged), path)
    session = ort.InferenceSession(path, ort_session_options(threads),
                                   providers=["CPUExecutionProvider"])
    steps, batch = x.shape[:2]
    dirs = layer.num_directions
    out = np.empty((steps, dirs, batch, layer.hidden_size), np.float32)
    binding = session.io_binding()
    binding.bind_cpu_input("X", x)
    if ragged:
        sequence_lens = np.ascontiguousarray(lengths, dtype=np.int32)
        binding.bind_cpu_input("sequence_lens", sequence_lens)
    binding.bind_output("Y", "cpu", 0, np.float32, out.shape, out.ctypes.data)

    def hot():
        session.run_with_iobinding(binding)

    def result():
        out[...] = np.nan
        session.run_with_iobinding(binding)
        return out.transpose(0, 2, 1, 3).reshape(steps, batch, dirs * layer.hidden_size)
    hot.session = session  # keep it alive with the binding
    # the binding holds raw addresses: hot keeps the bound arrays alive as long as it lives
    hot.buffers = (x, out, sequence_lens) if ragged else (x, out)
    return hot, result
