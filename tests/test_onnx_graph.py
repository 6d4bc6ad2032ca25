"""ONNX import: the graph around recurrent ops (vs ONNX Runtime), refusals, and hostile files.

A loader reproduces the framework or refuses: malformed, truncated or lying files raise
WeightFormatError (never another exception, never a huge allocation); ops fastgate does not
run raise UnsupportedLayerError naming the op and the node.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import fastgate
from fastgate import UnsupportedLayerError, WeightFormatError
from fastgate.importers.protobuf import MAX_DEPTH

from onnx_helpers import op_kinds, recurrent_model

ATOL = 1e-5
F = TensorProto.FLOAT


def const(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def plumbing_model(opset):
    """X (B, T, 4) -> assorted shape / arithmetic ops -> GRU -> head, as exporters write."""
    rng = np.random.default_rng(0)
    unsqueeze_axes = {"axes": [0]} if opset < 13 else {}
    squeeze_axes = {"axes": [1]} if opset < 13 else {}
    nodes = [
        helper.make_node("Shape", ["X"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch"] + ([] if opset < 13 else ["axis0"]),
                         ["batch1"], **unsqueeze_axes),
        helper.make_node("Concat", ["one", "batch1", "hidden"], ["h_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["h_shape"], ["h0"],
                         value=numpy_helper.from_array(np.array([0.25], np.float32))),
        helper.make_node("Sub", ["X", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "scale"], ["scaled"]),
        helper.make_node("Mul", ["scaled", "two"], ["doubled"]),
        helper.make_node("Add", ["doubled", "shift"], ["shifted"]),
        helper.make_node("Transpose", ["shifted"], ["time_major"], perm=[1, 0, 2]),
        helper.make_node("Identity", ["time_major"], ["gru_in"]),
        helper.make_node("GRU", ["gru_in", "W", "R", "B", "", "h0"], ["Y", "Y_h"],
                         hidden_size=5, linear_before_reset=1),
        helper.make_node("Squeeze", ["Y"] + ([] if opset < 13 else ["axis1"]), ["Y3"],
                         **squeeze_axes),
        helper.make_node("Slice", ["Y3", "last", "end", "axis0"] if opset >= 10 else ["Y3"],
                         ["Y_last"], **({} if opset >= 10 else
                                        {"starts": [-1], "ends": [2 ** 62], "axes": [0]})),
        helper.make_node("Reshape", ["Y_last", "flat_shape"], ["features"]),
        helper.make_node("Cast", ["features"], ["features64"], to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["features64"], ["features32"], to=F),
        helper.make_node("MatMul", ["features32", "K"], ["projected"]),
        helper.make_node("Add", ["projected", "kb"], ["biased"]),
        helper.make_node("Relu", ["biased"], ["relu"]),
        helper.make_node("Gemm", ["relu", "G", "gb"], ["logits"], transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Tanh", ["logits"], ["tanh"]),
        helper.make_node("Sigmoid", ["tanh"], ["sig"]),
        helper.make_node("Flatten", ["sig"], ["flat"], axis=1),
        helper.make_node("Expand", ["flat", "expand_shape"], ["expanded"]),
        helper.make_node("Softmax", ["expanded"], ["probabilities"], axis=1),
        helper.make_node("LogSoftmax", ["expanded"], ["log_probabilities"], axis=1),
    ]
    initializers = [
        const("zero", np.array(0, np.int64)), const("one", np.array([1], np.int64)),
        const("hidden", np.array([5], np.int64)), const("axis0", np.array([0], np.int64)),
        const("axis1", np.array([1], np.int64)), const("last", np.array([-1], np.int64)),
        const("end", np.array([2 ** 62], np.int64)),
        const("flat_shape", np.array([-1, 5], np.int64)),
        const("mean", rng.standard_normal(4).astype(np.float32)),
        const("scale", rng.uniform(0.5, 2, 4).astype(np.float32)),
        const("two", np.array(2.0, np.float32)), const("shift", np.array([0.1], np.float32)),
        const("W", rng.uniform(-0.5, 0.5, (1, 15, 4)).astype(np.float32)),
        const("R", rng.uniform(-0.5, 0.5, (1, 15, 5)).astype(np.float32)),
        const("B", rng.uniform(-0.5, 0.5, (1, 30)).astype(np.float32)),
        const("K", rng.standard_normal((5, 6)).astype(np.float32)),
        const("kb", rng.standard_normal(6).astype(np.float32)),
        const("G", rng.standard_normal((3, 6)).astype(np.float32)),
        const("gb", rng.standard_normal(3).astype(np.float32)),
        const("expand_shape", np.array([1, 3], np.int64)),
    ]
    graph = helper.make_graph(
        nodes, "plumbing", [helper.make_tensor_value_info("X", F, ["B", "T", 4])],
        [helper.make_tensor_value_info("probabilities", F, ["B", 3]),
         helper.make_tensor_value_info("log_probabilities", F, ["B", 3]),
         helper.make_tensor_value_info("Y_h", F, [1, "B", 5])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [9, 11, 13, 17, 22])
def test_exporter_plumbing_matches_onnxruntime(opset):
    model = plumbing_model(opset)
    x = np.random.default_rng(1).standard_normal((3, 7, 4)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"X": x})
    ours = fastgate.from_onnx(model.SerializeToString())
    for a, b in zip(ours.run(None, {"X": x}), expected):
        np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)
    kinds = op_kinds(ours)   # MatMul + Add: one Dense; the GRU starts from h0 = 0.25: ONNX op
    assert kinds.count("Dense") == 2 and "Onnx:MatMul" not in kinds and "Onnx:GRU" in kinds
    assert kinds.index("Onnx:Relu") == kinds.index("Dense") + 1   # the Add is the Dense's bias
    assert ours.run(["Y_h"], {"X": x})[0].shape == (1, 3, 5)   # only what is asked is run


def test_constant_subgraphs_are_folded_at_load():
    model = fastgate.from_onnx(plumbing_model(17).SerializeToString())
    assert op_kinds(model).count("Onnx:Cast") == 2   # the casts of run-time values only
    folded = helper.make_model(helper.make_graph(
        [helper.make_node("Shape", ["c"], ["s"]), helper.make_node("Cast", ["s"], ["f"], to=F),
         helper.make_node("Add", ["X", "f"], ["Y"])], "fold",
        [helper.make_tensor_value_info("X", F, ["B", 2])],
        [helper.make_tensor_value_info("Y", F, ["B", 2])],
        [const("c", np.zeros((3, 4), np.float32))]),
        opset_imports=[helper.make_opsetid("", 17)])
    ours = fastgate.from_onnx(folded.SerializeToString())
    assert op_kinds(ours) == ["Onnx:Add"]
    np.testing.assert_array_equal(ours.predict(np.zeros((1, 2), np.float32)), [[3, 4]])


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("op", ["ReduceSum", "ReduceProd"])
def test_reductions_match_onnxruntime(op, opset):
    """tf2onnx computes shapes with ReduceProd; axes are an attribute before opset 13
    (ReduceSum) / 18 (ReduceProd), an input from then on."""
    axes_input = opset >= {"ReduceSum": 13, "ReduceProd": 18}[op]
    nodes = [helper.make_node(op, ["X", "axes"] if axes_input else ["X"], ["Y"], keepdims=0,
                              **({} if axes_input else {"axes": [0, -1]})),
             helper.make_node(op, ["X"], ["Z"])]   # every axis, kept
    model = helper.make_model(helper.make_graph(
        nodes, "reduce", [helper.make_tensor_value_info("X", F, ["A", 3, "C"])],
        [helper.make_tensor_value_info(name, F, None) for name in ("Y", "Z")],
        [const("axes", np.array([0, -1], np.int64))] if axes_input else []),
        opset_imports=[helper.make_opsetid("", opset)])
    x = np.random.default_rng(4).uniform(0.5, 1.5, (2, 3, 4)).astype(np.float32)
    expected = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, {"X": x})
    got = fastgate.from_onnx(model.SerializeToString()).run(None, {"X": x})
    for a, b in zip(got, expected):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)


def test_gather_on_a_table_is_an_embedding_with_negative_ids():
    table = np.random.default_rng(2).standard_normal((7, 3)).astype(np.float32)
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["vectors"], axis=0)], "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "T"])],
        [helper.make_tensor_value_info("vectors", F, ["B", "T", 3])], [const("table", table)]),
        opset_imports=[helper.make_opsetid("", 13)])
    ours = fastgate.from_onnx(model.SerializeToString())
    assert type(ours.nodes[0].op.function).__name__ == "OnnxEmbeddingStep"
    ids = np.array([[0, 6, -1], [3, -7, 2]])
    np.testing.assert_array_equal(ours.predict(ids), table[ids])
    with pytest.raises(fastgate.InputError):
        ours.predict(np.array([[7]]))


# ------------------------------------------------------------------------- refusals
def single_node_model(node, inputs=("X",), opset=17):
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, F, [2])
                                            for n in inputs],
                              [helper.make_tensor_value_info(node.output[0], F, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_loop_and_scan_say_the_exporter_fell_back_to_a_loop():
    body = helper.make_graph([helper.make_node("Identity", ["c"], ["c_out"])], "body",
                             [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                              helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                             [helper.make_tensor_value_info("c_out", TensorProto.BOOL, [])])
    node = helper.make_node("Loop", ["", ""], ["Y"], name="the_loop", body=body)
    with pytest.raises(UnsupportedLayerError, match="Loop node 'the_loop'.*fell back to a "
                                                    "loop.*nn.LSTM"):
        fastgate.from_onnx(single_node_model(node, ()).SerializeToString())


def test_unknown_op_and_domain_are_named():
    with pytest.raises(UnsupportedLayerError, match="op Erf .node 'the_erf'. is not supported"):
        fastgate.from_onnx(single_node_model(helper.make_node(
            "Erf", ["X"], ["Y"], name="the_erf")).SerializeToString())
    node = helper.make_node("LSTM", ["X"], ["Y"], name="custom", domain="com.example")
    model = single_node_model(node)
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedLayerError, match="com.example.LSTM .node 'custom'"):
        fastgate.from_onnx(model.SerializeToString())


@pytest.mark.parametrize("node, match", [
    (helper.make_node("Concat", ["X", "X"], ["Y"]), r"\['axis'\] missing"),
    (helper.make_node("Transpose", ["X"], ["Y"], perm="01"), "'perm' must be ints"),
    (helper.make_node("Gemm", ["X", "X"], ["Y"], alpha="big"), "'alpha' must be float"),
])
def test_attributes_of_the_wrong_kind_are_refused_at_load(node, match):
    with pytest.raises(WeightFormatError, match=match):
        fastgate.from_onnx(single_node_model(node).SerializeToString())


def test_an_op_the_values_do_not_fit_is_a_weight_format_error():
    node = helper.make_node("Reshape", ["X", "shape"], ["Y"], name="bad_reshape")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", F, [2])],
                              [helper.make_tensor_value_info("Y", F, None)],
                              [const("shape", np.array([3, -1], np.int64))])
    model = fastgate.from_onnx(helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    with pytest.raises(fastgate.FastgateError, match="bad_reshape"):
        model.run(None, {"X": np.ones(2, np.float32)})


def test_unknown_activation_is_refused():
    model = recurrent_model("LSTM", activations=["Sigmoid", "Gelu", "Gelu"])
    with pytest.raises(UnsupportedLayerError, match="unknown activation 'Gelu'"):
        fastgate.from_onnx(model.SerializeToString())


# ---------------------------------------------------------------------- hostile files
@pytest.fixture(scope="module")
def model_bytes():
    return recurrent_model("LSTM", direction="bidirectional", with_lengths=True).SerializeToString()


def load_or_refuse(data):
    """Loading ``data`` gives a model or a WeightFormatError, nothing else."""
    try:
        return fastgate.from_onnx(data)
    except WeightFormatError:
        return None


def test_truncated_files_are_refused(model_bytes):
    for end in list(range(0, 200)) + list(range(200, len(model_bytes), 37)):
        load_or_refuse(model_bytes[:end])
    with pytest.raises(WeightFormatError, match="truncated|no graph"):
        fastgate.from_onnx(model_bytes[:len(model_bytes) // 2])


def test_bad_varints_and_lengths_beyond_the_file():
    with pytest.raises(WeightFormatError, match="longer than 10 bytes"):
        fastgate.from_onnx(b"\x08" + b"\xff" * 11)
    with pytest.raises(WeightFormatError, match="exceeds 64 bits"):
        fastgate.from_onnx(b"\x08" + b"\xff" * 9 + b"\x7f")
    with pytest.raises(WeightFormatError, match=r"claims 1099511627776 bytes"):
        fastgate.from_onnx(b"\x08\x07\x3a\x80\x80\x80\x80\x80\x20")   # graph: 2^40 bytes
    with pytest.raises(WeightFormatError, match="wire type 3"):
        fastgate.from_onnx(b"\x08\x07\x3b")


def tensor_model(tensor, tmp_path=None):
    """Y = X + T, T the initializer ``tensor``."""
    graph = helper.make_graph([helper.make_node("Add", ["X", "T"], ["Y"])], "g",
                              [helper.make_tensor_value_info("X", F, None)],
                              [helper.make_tensor_value_info("Y", F, None)], [tensor])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_graph_without_inputs_is_refused():
    graph = helper.make_graph([helper.make_node("Identity", ["T"], ["Y"])], "g", [],
                              [helper.make_tensor_value_info("Y", F, None)],
                              [const("T", np.ones(2, np.float32))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedLayerError, match="no inputs"):
        fastgate.from_onnx(model.SerializeToString())


def test_huge_claimed_dimensions_are_refused_before_allocating():
    tensor = TensorProto(name="T", data_type=F, dims=[1 << 40, 1 << 40], raw_data=b"\0" * 16)
    with pytest.raises(WeightFormatError, match="needs 4835703278458516698824704 bytes"):
        fastgate.from_onnx(tensor_model(tensor).SerializeToString())
    tensor = TensorProto(name="T", data_type=F, dims=[1 << 30], float_data=[1.0, 2.0])
    with pytest.raises(WeightFormatError, match="needs 1073741824 values"):
        fastgate.from_onnx(tensor_model(tensor).SerializeToString())
    tensor = TensorProto(name="T", data_type=TensorProto.INT64, dims=[1 << 30],
                         int64_data=[1, 2])
    with pytest.raises(WeightFormatError, match="holds fewer"):
        fastgate.from_onnx(tensor_model(tensor).SerializeToString())


def test_huge_constant_of_shape_is_refused_at_load():
    model = helper.make_model(helper.make_graph(
        [helper.make_node("ConstantOfShape", ["s"], ["Y"])], "g", [],
        [helper.make_tensor_value_info("Y", F, None)],
        [const("s", np.array([1 << 20, 1 << 20], np.int64))]),
        opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(WeightFormatError, match="more than the"):
        fastgate.from_onnx(model.SerializeToString())


def external_model(tmp_path, location, offset=0, length=None):
    tensor = helper.make_tensor("T", F, [4], vals=[0.0] * 4)
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": str(offset)}
    if length is not None:
        entries["length"] = str(length)
    for key, value in entries.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    path = tmp_path / "model" / "m.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(tensor_model(tensor).SerializeToString())
    return path


def test_external_data_is_read_from_the_model_folder(tmp_path):
    path = external_model(tmp_path, "weights.bin", offset=8, length=16)
    values = np.arange(4, dtype="<f4")
    (path.parent / "weights.bin").write_bytes(b"\0" * 8 + values.tobytes())
    np.testing.assert_array_equal(
        fastgate.load(path).run(None, {"X": np.zeros(4, np.float32)})[0], values)
    with pytest.raises(WeightFormatError, match="as bytes cannot refer"):
        fastgate.from_onnx(path.read_bytes())


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin",
                                      "link/secret.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 16)
    path = external_model(tmp_path, location, length=16)
    os.symlink(tmp_path, path.parent / "link")
    with pytest.raises(WeightFormatError, match="relative path inside|outside the model's"):
        fastgate.load(path)


def test_external_data_beyond_the_end_of_its_file(tmp_path):
    path = external_model(tmp_path, "weights.bin", offset=4)
    (path.parent / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(WeightFormatError, match="beyond the end"):
        fastgate.load(path)
    path = external_model(tmp_path, "weights.bin", length=1 << 40)
    with pytest.raises(WeightFormatError, match="does not match"):
        fastgate.load(path)


def test_graphs_nested_too_deep_are_refused():
    graph = helper.make_graph([], "leaf", [], [])
    for _ in range(MAX_DEPTH + 2):
        node = helper.make_node("If", ["c"], [], then_branch=graph, else_branch=graph)
        graph = helper.make_graph([node], "g", [], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(WeightFormatError, match="nested more than"):
        fastgate.from_onnx(model.SerializeToString())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_files_load_or_raise_weight_format_error(model_bytes, data):
    mutated = bytearray(model_bytes)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        mutated[position] = data.draw(st.integers(0, 255))
    model = load_or_refuse(bytes(mutated))
    if model is not None and model.input_names == ["X", "sequence_lens"]:
        try:
            model.run(None, {"X": np.zeros((2, 1, 3), np.float32),
                             "sequence_lens": np.array([2], np.int32)})
        except fastgate.FastgateError:
            pass


def test_onnx_is_recognised_by_content_and_extension(tmp_path, model_bytes):
    (tmp_path / "model.bin.onnx").write_bytes(model_bytes)
    (tmp_path / "model.data").write_bytes(model_bytes)
    for name in ("model.bin.onnx", "model.data"):
        assert isinstance(fastgate.load(tmp_path / name), fastgate.Model)
    from fastgate import formats

    assert formats.detect_format(tmp_path / "model.data") == formats.ONNX
    (tmp_path / "model.pt").write_bytes(model_bytes)   # another framework's extension wins
    assert formats.detect_format(tmp_path / "model.pt") != formats.ONNX
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(WeightFormatError, match="no graph"):
        fastgate.load(tmp_path / "empty.onnx")


def test_cli_inspect_shows_the_graph_as_fastgate_maps_it(tmp_path, capsys):
    from fastgate.cli import main

    path = tmp_path / "plumbing.onnx"
    path.write_bytes(plumbing_model(17).SerializeToString())
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "format:    ONNX (IR version" in out and "opset ai.onnx 17" in out
    assert "GRU" in out and "OnnxRecurrent(GRU" in out and "Dense(in_features=5" in out
    assert "zrn -> rzn" in out and "reset_after" in out
    lstm = tmp_path / "lstm.onnx"
    lstm.write_bytes(recurrent_model("LSTM", clip=0.5, input_forget=1,
                                     peepholes=np.ones((1, 15))).SerializeToString())
    assert main(["inspect", str(lstm)]) == 0
    out = capsys.readouterr().out
    assert "peepholes clip=0.5 input_forget" in out and "iofg -> ifgo" in out


def test_an_imported_model_saves_in_fastgate_format_and_pickles(tmp_path, capsys):
    import pickle

    from fastgate.cli import main

    source = tmp_path / "plumbing.onnx"
    source.write_bytes(plumbing_model(13).SerializeToString())
    model = fastgate.load(source)
    x = np.random.default_rng(3).standard_normal((2, 6, 4)).astype(np.float32)
    expected = model.run(None, {"X": x})
    assert main(["convert", str(source), str(tmp_path / "m.fastgate")]) == 0
    for copy in (fastgate.load(tmp_path / "m.fastgate"), pickle.loads(pickle.dumps(model))):
        assert isinstance(copy, fastgate.Model)
        assert copy.input_names == model.input_names
        for a, b in zip(copy.run(None, {"X": x}), expected):
            np.testing.assert_array_equal(a, b)
    weights_as_inputs = recurrent_model("GRU")
    moved = [i for i in weights_as_inputs.graph.initializer]
    weights_as_inputs.graph.input.extend(
        helper.make_tensor_value_info(t.name, F, list(t.dims)) for t in moved)
    del weights_as_inputs.graph.initializer[:]
    runtime = fastgate.from_onnx(weights_as_inputs.SerializeToString())
    copy = pickle.loads(pickle.dumps(runtime))
    feed = {"X": np.ones((2, 1, 3), np.float32)}
    feed.update((t.name, numpy_helper.to_array(t)) for t in moved)
    np.testing.assert_array_equal(copy.run(None, feed)[0], runtime.run(None, feed)[0])


def test_cli_predict_and_bench_run_an_onnx_model(tmp_path, capsys):
    from fastgate.cli import main

    path = tmp_path / "gru.onnx"
    model = recurrent_model("GRU", with_lengths=False)
    path.write_bytes(model.SerializeToString())
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["predict", str(path), "-i", str(tmp_path / "x.npy"), "-o",
                 str(tmp_path / "y.npz")]) == 0
    saved = np.load(tmp_path / "y.npz")
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"X": x})
    assert sorted(saved.files) == ["Y", "Y_h"]
    np.testing.assert_allclose(saved["Y"], expected[0], atol=ATOL, rtol=0)
    assert main(["bench", str(path), "--batch", "2", "--steps", "3", "--repeat", "3"]) == 0
    assert "max |compiled - oracle|" in capsys.readouterr().out
