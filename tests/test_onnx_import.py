"""ONNX import of single LSTM / GRU / RNN nodes: fastgate vs ONNX Runtime, and the ONNX
project's own backend node tests.

Tolerance: float32 1e-5 absolute (values are O(1)); float64 against the oracle 1e-12.
ONNX Runtime refuses ``layout=1`` and double precision, so those are compared with the same
model at ``layout=0`` (inputs and outputs transposed) and with float32 runs.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import fastgate
from fastgate import UnsupportedLayerError

from onnx_helpers import feeds, recurrent_model

ATOL = 1e-5


def ort_run(model, inputs, outputs=None):
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(outputs, inputs)


def assert_same_as_ort(model, inputs, atol=ATOL):
    ours = fastgate.from_onnx(model.SerializeToString())
    expected = ort_run(model, inputs)
    got = ours.run(None, inputs)
    assert len(got) == len(expected)
    for name, a, b in zip(ours.output_names, got, expected):
        np.testing.assert_allclose(a, b, rtol=0, atol=atol, err_msg=name)
    return got


VARIANTS = {
    "plain": {},
    "lengths": {"with_lengths": True},
    "initial_state": {"with_h0": True, "with_c0": True},
    "lengths_h0_only": {"with_lengths": True, "with_h0": True},
    "no_bias": {"with_bias": False, "with_c0": True},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_single_node_matches_onnxruntime(op, direction, variant):
    options = dict(VARIANTS[variant])
    if op != "LSTM":
        options.pop("with_c0", None)
    model = recurrent_model(op, direction=direction, **options)
    inputs = feeds(model, batch=4, steps=7)
    assert_same_as_ort(model, inputs)


@pytest.mark.parametrize("linear_before_reset", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_gru_linear_before_reset(linear_before_reset, direction):
    model = recurrent_model("GRU", direction=direction, with_lengths=True, with_h0=True,
                            linear_before_reset=linear_before_reset)
    assert_same_as_ort(model, feeds(model, batch=5, steps=6))


@pytest.mark.parametrize("outputs", [("Y",), ("Y_h",), ("Y_c",), ("Y_h", "Y_c"), ("Y", "Y_c")])
def test_any_subset_of_outputs(outputs):
    model = recurrent_model("LSTM", direction="bidirectional", with_lengths=True,
                            outputs=outputs)
    got = assert_same_as_ort(model, feeds(model))
    assert len(got) == len(outputs)


def test_sequence_lengths_zero_output_and_reverse_start():
    # ORT: Y is zero past each sequence's length, Y_h is the state at its last valid step,
    # and the reverse direction starts at that step (as PyTorch's packed sequences)
    model = recurrent_model("GRU", direction="bidirectional", with_lengths=True)
    inputs = feeds(model, batch=3, steps=5, lengths=[5, 1, 3])
    y, _ = assert_same_as_ort(model, inputs)
    assert not y[3:, :, 2].any() and not y[1:, :, 1].any()


ACTIVATION_CASES = [
    ("LSTM", ["HardSigmoid", "Tanh", "Tanh"], None, None),
    ("LSTM", ["Sigmoid", "Relu", "Relu"], None, None),
    ("LSTM", ["sigmoid", "softsign", "softsign"], None, None),     # names are case-blind
    ("LSTM", ["HardSigmoid", "Elu", "Elu"], [0.2, 1.0], [0.5]),
    ("GRU", ["HardSigmoid", "Softsign"], None, None),
    ("GRU", ["Sigmoid", "Softplus"], None, None),
    ("GRU", ["Affine", "Tanh"], [1.0], [0.0]),                      # Affine(1, 0) is linear
    ("RNN", ["Relu"], None, None),
    ("RNN", ["LeakyRelu"], [0.0], None),                            # LeakyRelu(0) is Relu
    ("RNN", ["ScaledTanh"], [1.0], [1.0]),
]


@pytest.mark.parametrize("op, activations, alpha, beta", ACTIVATION_CASES)
def test_activations(op, activations, alpha, beta):
    attributes = {"activations": activations}
    if alpha is not None:
        attributes["activation_alpha"] = alpha
    if beta is not None:
        attributes["activation_beta"] = beta
    model = recurrent_model(op, with_lengths=True, **attributes)
    assert_same_as_ort(model, feeds(model))


PARAMETRISED_CASES = [
    ("LSTM", ["HardSigmoid", "Tanh", "Tanh"], [0.3], [0.4]),
    ("LSTM", ["Sigmoid", "Tanh", "Relu"], None, None),               # h differs from g
    ("LSTM", ["Sigmoid", "ScaledTanh", "Affine"], [1.5, 0.8], [0.7, 0.1]),
    ("LSTM", ["Sigmoid", "Elu", "LeakyRelu"], [0.5, 0.2], None),
    ("LSTM", ["Sigmoid", "ThresholdedRelu", "Tanh"], [0.3], None),
    ("GRU", ["Sigmoid", "LeakyRelu"], None, None),                   # default alpha 0.01
    ("GRU", ["HardSigmoid", "ScaledTanh"], [0.25, 1.2], [0.45, 0.9]),
    ("RNN", ["Elu"], [0.7], None),
    ("RNN", ["ThresholdedRelu"], None, None),                        # ORT's default alpha: 0
    ("RNN", ["Affine"], [0.5], [0.2]),
]


@pytest.mark.parametrize("op, activations, alpha, beta", PARAMETRISED_CASES)
def test_parametrised_activations(op, activations, alpha, beta):
    test_activations(op, activations, alpha, beta)


@pytest.mark.parametrize("clip", [0.5, 1.5])
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_clip(op, clip):
    # ORT clamps every gate's pre-activation (peepholes included), not the LSTM cell state
    model = recurrent_model(op, direction="bidirectional", with_lengths=True, clip=clip)
    inputs = feeds(model, batch=4, steps=9)
    inputs["X"] *= 3
    assert_same_as_ort(model, inputs)


@pytest.mark.parametrize("peepholes", [False, True])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_lstm_input_forget_and_clip(direction, peepholes):
    # input_forget: f = 1 - i
    dirs = 2 if direction == "bidirectional" else 1
    p = np.random.default_rng(3).uniform(-1, 1, (dirs, 15)) if peepholes else None
    for attributes in ({"input_forget": 1}, {"input_forget": 1, "clip": 0.8}):
        model = recurrent_model("LSTM", direction=direction, with_h0=True, with_c0=True,
                                peepholes=p, **attributes)
        assert_same_as_ort(model, feeds(model, batch=3, steps=7))


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_bidirectional_with_different_activations_per_direction(op):
    per_direction = {"LSTM": (["Sigmoid", "Tanh", "Tanh"], ["HardSigmoid", "Relu", "Relu"]),
                     "GRU": (["Sigmoid", "Tanh"], ["Sigmoid", "Softsign"]),
                     "RNN": (["Tanh"], ["Relu"])}[op]
    model = recurrent_model(op, direction="bidirectional", with_lengths=True, with_h0=True,
                            activations=per_direction[0] + per_direction[1])
    ours = fastgate.from_onnx(model.SerializeToString())
    assert len(ours.nodes[0].op.function.layers) == 2   # one layer per direction
    assert_same_as_ort(model, feeds(model, batch=4, steps=6))


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_layout_1_equals_layout_0_transposed(op, direction):
    options = dict(direction=direction, with_lengths=True, with_h0=True,
                   with_c0=op == "LSTM")
    model = recurrent_model(op, layout=1, **options)
    inputs = feeds(model, batch=3, steps=5)
    ours = fastgate.from_onnx(model.SerializeToString()).run(None, inputs)
    time_major = {name: (value.transpose(1, 0, 2) if name != "sequence_lens" else value)
                  for name, value in inputs.items()}
    expected = ort_run(recurrent_model(op, layout=0, **options), time_major)  # same weights
    # layout 1: Y (B, T, dirs, H) and states (B, dirs, H)
    np.testing.assert_allclose(ours[0], expected[0].transpose(2, 0, 1, 3), atol=ATOL, rtol=0)
    for got, want in zip(ours[1:], expected[1:]):
        np.testing.assert_allclose(got, want.transpose(1, 0, 2), atol=ATOL, rtol=0)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_float64_against_the_oracle_and_float32_onnxruntime(op):
    model64 = recurrent_model(op, direction="bidirectional", with_lengths=True, with_h0=True,
                              dtype=np.float64)
    model32 = recurrent_model(op, direction="bidirectional", with_lengths=True, with_h0=True)
    inputs = feeds(model64, batch=3, steps=6)
    ours = fastgate.from_onnx(model64.SerializeToString())
    got = ours.run(None, inputs)
    assert all(value.dtype == np.float64 for value in got)
    with fastgate.use_backend("python"):
        oracle = ours.run(None, inputs)
    for a, b in zip(got, oracle):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    inputs32 = {k: (v.astype(np.float32) if v.dtype == np.float64 else v)
                for k, v in inputs.items()}
    for a, b in zip(got, ort_run(model32, inputs32)):
        np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_lstm_peepholes(direction):
    dirs = 2 if direction == "bidirectional" else 1
    peepholes = np.random.default_rng(7).uniform(-1, 1, (dirs, 15))
    model = recurrent_model("LSTM", direction=direction, with_lengths=True, with_h0=True,
                            with_c0=True, peepholes=peepholes)
    assert_same_as_ort(model, feeds(model, batch=5, steps=6))
    zero = recurrent_model("LSTM", direction=direction, peepholes=np.zeros((dirs, 15)))
    assert_same_as_ort(zero, feeds(zero))


def test_batch_and_steps_are_dynamic():
    model = fastgate.from_onnx(recurrent_model("LSTM", with_h0=True).SerializeToString())
    for batch, steps in ((1, 1), (7, 3), (2, 20)):
        inputs = feeds(model_proto := recurrent_model("LSTM", with_h0=True), batch=batch,
                       steps=steps)
        for a, b in zip(model.run(None, inputs), ort_run(model_proto, inputs)):
            np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)


def test_gate_orders_of_onnx_are_iofc_and_zrh():
    # the table every importer uses; ONNX: LSTM i, o, f, c and GRU z, r, h
    assert fastgate.GATE_ORDERS["onnx"] == {"lstm": "iofg", "gru": "zrn", "rnn": "h"}


@pytest.mark.parametrize("batch", [1, 9])   # the fused vector cells and the general ones
def test_every_option_at_once_float64_matches_the_oracle(batch):
    model = recurrent_model("LSTM", direction="bidirectional", with_lengths=True,
                            with_h0=True, with_c0=True, dtype=np.float64, clip=1.1,
                            input_forget=1, peepholes=np.full((2, 15), 0.3),
                            activations=["HardSigmoid", "ScaledTanh", "Softsign"] * 2,
                            activation_alpha=[0.3, 1.2, 0.25, 0.9],
                            activation_beta=[0.45, 0.8, 0.5, 1.1])
    inputs = feeds(model, batch=batch, steps=8)
    ours = fastgate.from_onnx(model.SerializeToString())
    assert len(ours.nodes[0].op.function.layers) == 2
    got = ours.run(None, inputs)
    with fastgate.use_backend("python"):
        expected = ours.run(None, inputs)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


# ------------------------------------------------------------ ONNX's backend node tests
@functools.lru_cache(maxsize=None)
def backend_node_cases():
    """The LSTM / GRU / RNN test cases of onnx.backend.test.case.node (models + expected
    outputs from the onnx package's reference equations): importing the modules runs their
    export_* functions, which register the cases."""
    import onnx.backend.test.case.node as node_cases
    from onnx.backend.test.case.node import gru, lstm, rnn  # noqa: F401

    return {case.name: case for case in node_cases._NodeTestCases
            if case.model is not None
            and case.model.graph.node[0].op_type in ("LSTM", "GRU", "RNN")}


BACKEND_CASES = [
    "test_lstm_defaults", "test_lstm_with_initial_bias", "test_lstm_with_peepholes",
    "test_lstm_batchwise", "test_lstm_reverse", "test_lstm_bidirectional",
    "test_gru_defaults", "test_gru_with_initial_bias", "test_gru_seq_length",
    "test_gru_batchwise", "test_gru_reverse", "test_gru_bidirectional",
    "test_rnn_seq_length", "test_simple_rnn_defaults", "test_simple_rnn_with_initial_bias",
    "test_simple_rnn_batchwise", "test_simple_rnn_reverse", "test_simple_rnn_bidirectional",
]
#: Cases whose options fastgate's kernels do not compute yet: refused, never approximated.
REFUSED_BACKEND_CASES: dict[str, str] = {}


def test_every_backend_node_case_is_listed():
    assert sorted(backend_node_cases()) == sorted(BACKEND_CASES)


@pytest.mark.parametrize("name", BACKEND_CASES)
def test_onnx_backend_node_cases(name):
    case = backend_node_cases()[name]
    if name in REFUSED_BACKEND_CASES:
        with pytest.raises(UnsupportedLayerError, match=REFUSED_BACKEND_CASES[name]):
            fastgate.from_onnx(case.model.SerializeToString()).run(
                None, dict(zip([i.name for i in case.model.graph.input], case.data_sets[0][0])))
        return
    model = fastgate.from_onnx(case.model.SerializeToString())
    assert len(case.data_sets) == 1
    inputs, expected = case.data_sets[0]
    input_names = [info.name for info in case.model.graph.input]
    got = model.run(None, dict(zip(input_names, inputs)))
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)


def test_onnx_options_survive_save_and_pickle(tmp_path):
    import pickle

    weights = fastgate.LSTM.random(3, 4).weights
    weights = [w._replace(peephole=np.linspace(-1, 1, 12)) for w in weights]
    layer = fastgate.LSTM(weights, clip=0.9, input_forget=True, cell_activation="relu",
                          activation="scaled_tanh(alpha=1.5, beta=0.7)")
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    expected = layer(x)[0]
    layer.save(tmp_path / "l.fastgate")
    for copy in (fastgate.load(tmp_path / "l.fastgate"), pickle.loads(pickle.dumps(layer))):
        assert repr(copy) == repr(layer)
        np.testing.assert_array_equal(copy(x)[0], expected)
    assert "clip=0.9" in repr(layer) and "peepholes=True" in repr(layer)


@pytest.mark.parametrize("opset", [7, 9, 14, 22])
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_recurrent_op_versions(op, opset):
    model = recurrent_model(op, direction="bidirectional", with_lengths=True, with_h0=True,
                            opset=opset)
    assert_same_as_ort(model, feeds(model, batch=2, steps=4))


# ------------------------------------------------ fastgate's export, read back by the import
def layer_with_every_onnx_option(cell, bidirectional, dtype=np.float32):
    layer_class = {"lstm": fastgate.LSTM, "gru": fastgate.GRU, "rnn": fastgate.SimpleRNN}[cell]
    options = {"clip": 1.3, "activation": "scaled_tanh(alpha=1.2, beta=0.8)"}
    if cell != "rnn":
        options["recurrent_activation"] = "hard_sigmoid(alpha=0.3, beta=0.45)"
    if cell == "lstm":
        options.update(cell_activation="softsign", input_forget=True)
    weights = layer_class.random(3, 5, bidirectional=bidirectional, seed=4).weights
    if cell == "lstm":
        rng = np.random.default_rng(5)
        weights = [w._replace(peephole=rng.uniform(-1, 1, 15)) for w in weights]
    return layer_class(weights, bidirectional=bidirectional, dtype=dtype, **options)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_export_of_every_onnx_option_round_trips_through_ort_and_the_import(
        tmp_path, cell, bidirectional):
    layer = layer_with_every_onnx_option(cell, bidirectional)
    path = tmp_path / "layer.onnx"
    layer.to_onnx(str(path), lengths=True)
    x = np.random.default_rng(6).standard_normal((7, 4, 3)).astype(np.float32) * 2
    lengths = np.array([7, 2, 5, 1])
    out, state = layer(x, lengths=lengths)
    expected = [out] + (list(state) if cell == "lstm" else [state])
    imported = fastgate.load(path)
    feed = {name: (x if name == "x" else lengths) for name in imported.input_names}
    for got_ort, got_ours, want in zip(ort_run(onnx.load(str(path)), feed),
                                       imported.run(None, feed), expected):
        np.testing.assert_allclose(got_ort, want, rtol=0, atol=ATOL)
        np.testing.assert_allclose(got_ours, want, rtol=0, atol=ATOL)
