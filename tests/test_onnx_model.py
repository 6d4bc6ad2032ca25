"""An imported ONNX graph is a :class:`fastgate.Model` (one graph engine): ``run`` as ONNX
Runtime, ``predict``, save/pickle, and ``step`` where the mapped graph is a chain. The plain
``torch.onnx.export`` patterns are folded into fastgate ops at load (no per-call shape
plumbing), checked against ONNX Runtime and PyTorch at a batch and length other than the
export's.

Tolerances: float32 1e-5 absolute on O(1) outputs; step by step vs a whole call 1e-6.
"""

from __future__ import annotations

import io
import pickle
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import fastgate
from onnx_helpers import feeds, op_kinds, recurrent_model

ATOL = 1e-5


def exported(module, x, *, output_names, opset=17):
    """``module`` exported by torch.onnx.export (TorchScript) with dynamic batch and steps."""
    buffer = io.BytesIO()
    axes = {0: "batch", 1: "steps"} if getattr(module, "batch_first", False) else \
        {0: "steps", 1: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.as_tensor(x),), buffer, dynamo=False,
                          input_names=["x"], output_names=output_names,
                          dynamic_axes={"x": axes}, opset_version=opset)
    return buffer.getvalue()


def ort_outputs(data, feed):
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feed)


def assert_all_close(got, expected, atol=ATOL):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)


class Sequencer(torch.nn.Module):
    """A recurrent layer (or stack) with a Linear head on every step."""

    def __init__(self, cell, layers=1, batch_first=False):
        super().__init__()
        self.batch_first = batch_first
        self.rnn = getattr(torch.nn, cell)(5, 8, num_layers=layers, batch_first=batch_first)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        y, state = self.rnn(x)
        return (self.head(y),) + (state if isinstance(state, tuple) else (state,))


# --------------------------------------------------------------------- the folded graph
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_a_plain_export_is_a_chain_of_fastgate_ops(cell, batch_first):
    torch.manual_seed(0)
    module = Sequencer(cell, batch_first=batch_first)
    names = ["y", "h_n", "c_n"] if cell == "LSTM" else ["y", "h_n"]
    data = exported(module, np.zeros((4, 2, 5), np.float32), output_names=names)
    model = fastgate.from_onnx(data)
    assert isinstance(model, fastgate.Model)
    states = 2 if cell == "LSTM" else 1
    assert op_kinds(model) == ["Recurrent"] + ["InsertAxis"] * states + ["Dense"]
    assert model.nodes[0].op.time_major is not batch_first
    assert model.input_names == ["x"] and model.output_names == names
    x = np.random.default_rng(1).standard_normal((7, 3, 5)).astype(np.float32)  # new B, T
    got = model.run(None, {"x": x})
    assert_all_close(got, ort_outputs(data, {"x": x}))
    with torch.no_grad():
        expected = [t.numpy() for t in module(torch.as_tensor(x))]
    assert_all_close(got, expected)


def test_stacked_layers_fold_and_their_states_are_concatenated():
    torch.manual_seed(1)
    module = Sequencer("LSTM", layers=2)
    data = exported(module, np.zeros((4, 2, 5), np.float32), output_names=["y", "h", "c"])
    model = fastgate.from_onnx(data)
    assert op_kinds(model).count("Recurrent") == 2
    assert "Onnx:LSTM" not in op_kinds(model)
    x = np.random.default_rng(2).standard_normal((9, 5, 5)).astype(np.float32)
    assert_all_close(model.run(None, {"x": x}), ort_outputs(data, {"x": x}))
    with pytest.raises(fastgate.ConfigError, match="Concat.*cannot stream|cannot stream"):
        model.step(x[0])


def test_what_is_not_a_plain_export_stays_an_onnx_recurrent_op():
    """Bidirectional, sequence_lens and initial-state inputs run as the ONNX op (still on
    the kernels), with the same outputs as ONNX Runtime."""
    for options in ({"direction": "bidirectional"}, {"with_lengths": True},
                    {"with_h0": True, "with_c0": True}, {"direction": "reverse"}):
        model = recurrent_model("LSTM", **options)
        ours = fastgate.from_onnx(model.SerializeToString())
        assert op_kinds(ours) == ["Onnx:LSTM"], options
        feed = feeds(model)
        assert_all_close(ours.run(None, feed), ort_outputs(model.SerializeToString(), feed))


@pytest.mark.parametrize("layout", [0, 1])
def test_y_without_squeeze_keeps_the_onnx_op(layout):
    """Y read as it is (with its direction axis): no fold, the ONNX op gives it."""
    model = recurrent_model("GRU", layout=layout)
    ours = fastgate.from_onnx(model.SerializeToString())
    assert op_kinds(ours) == ["Onnx:GRU"]


# ------------------------------------------------------------------------ the Model API
def test_run_predict_and_errors_as_onnxruntime():
    torch.manual_seed(2)
    data = exported(Sequencer("GRU"), np.zeros((4, 2, 5), np.float32),
                    output_names=["y", "h_n"])
    model = fastgate.from_onnx(data)
    x = np.random.default_rng(3).standard_normal((6, 2, 5)).astype(np.float32)
    y, h_n = ort_outputs(data, {"x": x})
    np.testing.assert_allclose(model.run(["h_n"], {"x": x})[0], h_n, rtol=0, atol=ATOL)
    predicted = model.predict(x)
    assert isinstance(predicted, list) and len(predicted) == 2
    np.testing.assert_allclose(predicted[0], y, rtol=0, atol=ATOL)
    np.testing.assert_allclose(model.predict(x.astype(np.float64))[0], y, rtol=0, atol=ATOL)
    with pytest.raises(fastgate.ConfigError, match="unknown output names"):
        model.run(["nope"], {"x": x})
    with pytest.raises(fastgate.InputError, match="missing"):
        model.run(None, {})
    with pytest.raises(fastgate.InputError, match="unknown"):
        model.run(None, {"x": x, "extra": x})
    with pytest.raises(fastgate.ShapeError, match="expected shape"):
        model.run(None, {"x": x[..., :4]})


def test_outputs_keep_the_graph_dtypes():
    """float64 graphs give float64 (ONNX Runtime has no float64 LSTM on CPU: the oracle
    decides, 1e-12), integer outputs stay integers, inputs are converted to the declared
    types."""
    model = recurrent_model("LSTM", dtype=np.float64)
    ours = fastgate.from_onnx(model.SerializeToString())
    x = feeds(model)["X"]
    got = ours.run(None, {"X": x})
    assert [a.dtype for a in got] == [np.float64] * 3
    with fastgate.use_backend("python"):
        expected = ours.run(None, {"X": x})
    assert_all_close(got, expected, atol=1e-12)
    shape = helper.make_model(helper.make_graph(
        [helper.make_node("Shape", ["X"], ["s"])], "shape",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["B", 3])],
        [helper.make_tensor_value_info("s", TensorProto.INT64, [2])]),
        opset_imports=[helper.make_opsetid("", 17)])
    out = fastgate.from_onnx(shape.SerializeToString()).predict(np.zeros((4, 3)))
    assert out.dtype == np.int64 and out.tolist() == [4, 3]


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_step_by_step_gives_the_whole_call(cell):
    """A folded chain streams: one step (B, D) at a time, or chunks (B, T, D) batch-first
    as Model.step takes them, give the outputs of one call on the whole sequence."""
    torch.manual_seed(3)
    names = ["y", "h_n", "c_n"] if cell == "LSTM" else ["y", "h_n"]
    data = exported(Sequencer(cell), np.zeros((4, 2, 5), np.float32), output_names=names)
    model = fastgate.from_onnx(data)
    x = np.random.default_rng(4).standard_normal((8, 3, 5)).astype(np.float32)   # (T, B, D)
    whole = model.run(None, {"x": x})
    state = model.initial_state(3)
    for t in range(8):
        outputs, state = model.step(x[t], state)
        np.testing.assert_allclose(outputs[0], whole[0][t], rtol=0, atol=1e-6)
    for a, b in zip(outputs[1:], whole[1:]):   # the final state as ONNX gives it (1, B, H)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    outputs, state = model.step(x[:5].transpose(1, 0, 2))
    outputs, _ = model.step(x[5:].transpose(1, 0, 2), state)
    np.testing.assert_allclose(outputs[0], whole[0][5:].transpose(1, 0, 2), rtol=0, atol=1e-6)


def test_a_folded_model_saves_and_pickles(tmp_path):
    torch.manual_seed(4)
    module = Sequencer("LSTM", batch_first=True)
    data = exported(module, np.zeros((2, 4, 5), np.float32), output_names=["y", "h", "c"])
    model = fastgate.from_onnx(data)
    x = np.random.default_rng(5).standard_normal((3, 6, 5)).astype(np.float32)
    expected = model.run(None, {"x": x})
    model.save(tmp_path / "m.fastgate")
    for copy in (fastgate.load(tmp_path / "m.fastgate"), pickle.loads(pickle.dumps(model))):
        assert isinstance(copy, fastgate.Model) and op_kinds(copy) == op_kinds(model)
        assert copy.input_dtypes == model.input_dtypes and copy.native_dtypes
        assert_all_close(copy.run(None, {"x": x}), expected, atol=0)


def test_files_of_fastgate_0x_load_as_a_model():
    """fastgate 0.x saved an imported graph as its own OnnxModel: such a file loads."""
    from fastgate.importers.onnx import OnnxModel, build_recurrent
    from fastgate.importers.protobuf import parse_model

    source = recurrent_model("GRU", outputs=("Y_h",))
    graph = parse_model(source.SerializeToString(), "<bytes>", None).graph
    node = graph.nodes[0]
    spec = {"steps": [{"name": node.name, "op_type": "GRU",
                       "function": build_recurrent(node, dict(graph.initializers)),
                       "inputs": ["X", "", "", ""], "outputs": ["", "Y_h"]}],
            "constants": {},
            "inputs": [{"name": "X", "elem_type": 1, "shape": ["steps", "batch", 3]}],
            "outputs": [{"name": "Y_h", "elem_type": 1, "shape": None}],
            "name": "old", "producer": "", "opset": 14}
    model = OnnxModel._from_spec(spec)
    assert isinstance(model, fastgate.Model)
    feed = feeds(source)
    assert_all_close(model.run(None, feed), ort_outputs(source.SerializeToString(), feed))


def test_what_splits_or_joins_inputs_on_their_first_axis_refuses_an_onnx_graph():
    """A time-major graph's first axis is the steps: predict(batch_size=...), the serving
    Batcher and Sessions, and fastgate.dask would split or join the wrong axis."""
    from fastgate.serving import Batcher, Sessions

    torch.manual_seed(5)
    model = fastgate.from_onnx(exported(Sequencer("GRU"), np.zeros((4, 2, 5), np.float32),
                                        output_names=["y", "h_n"]))
    assert not model.inputs_batch_first
    x = np.zeros((6, 2, 5), np.float32)
    for make in (lambda: model.predict(x, batch_size=1), lambda: Batcher(model),
                 lambda: Sessions(model)):
        with pytest.raises(fastgate.ConfigError, match="first axis"):
            make()
    import dask.array as da
    import fastgate.dask as fastgate_dask

    with pytest.raises(fastgate.ConfigError, match="first axis"):
        fastgate_dask.predict(model, da.zeros((6, 2, 5), chunks=3, dtype=np.float32))


def test_a_saved_onnx_node_runs_only_onnx_functions():
    """A .fastgate file whose ONNX node would call another object (a layer, a model op)
    is refused at load."""
    from fastgate.importers.onnx_graph import OnnxOp

    for function in (fastgate.LSTM.random(2, 3), fastgate.Dense(np.ones((2, 2), np.float32))):
        with pytest.raises(fastgate.WeightFormatError, match="no ONNX function"):
            OnnxOp._from_spec({"op_type": "Add", "name": "n", "function": function,
                               "arguments": [{"value": 0}]})


@pytest.mark.parametrize("batch_first", [False, True])
def test_a_folded_chain_exports_back_to_onnx(batch_first):
    """An imported chain (time-major or batch-first Recurrent, Dense head) written again by
    fastgate's exporter gives ONNX Runtime the same outputs."""
    from fastgate.export.onnx import to_onnx_bytes

    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.batch_first = batch_first
            self.rnn = torch.nn.LSTM(5, 8, batch_first=batch_first)
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    torch.manual_seed(6)
    data = exported(Tagger(), np.zeros((4, 2, 5), np.float32), output_names=["y"])
    model = fastgate.from_onnx(data)
    assert op_kinds(model) == ["Recurrent", "Dense"]
    x = np.random.default_rng(7).standard_normal((6, 3, 5)).astype(np.float32)
    again = to_onnx_bytes(model)
    assert_all_close(ort_outputs(again, {"input": x}), ort_outputs(data, {"x": x}))
