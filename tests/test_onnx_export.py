"""``to_onnx`` against ONNX Runtime, Keras 3, PyTorch and the ONNX reference evaluator.

Every exported file passes ``onnx.checker.check_model(full_check=True)`` and runs in ONNX
Runtime (CPU) at a batch and a length other than any used to build the source model; its
outputs must equal fastgate's and the source framework's (Keras ``predict``, the torch
module) within 1e-5 absolute (float32, O(1) values). ONNX Runtime has no float64 recurrent
ops on CPU, so float64 exports are checked with ``onnx.reference`` at 1e-12.
"""

from __future__ import annotations

import os
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import fastgate  # noqa: E402
import fastgate.export.onnx  # noqa: E402
from conftest import assert_close, random_cell_weights, subprocess_env  # noqa: E402
from fastgate.export.onnx import to_onnx_bytes  # noqa: E402
import test_keras_sequence_layers as sequence_cases  # noqa: E402
from test_keras_import import CASES, float_inputs, randomize, token_inputs  # noqa: E402

ATOL = 1e-5
BATCH, STEPS = 6, 11  # no model below is built or exported with these


def ort_run(data: bytes, feeds: dict) -> list[np.ndarray]:
    """Check the model with ONNX's checker, then run it in ONNX Runtime."""
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def flat(value) -> list[np.ndarray]:
    if isinstance(value, (tuple, list)):
        return [item for part in value for item in flat(part)]
    return [np.asarray(value.detach().numpy() if hasattr(value, "detach") else value)]


def assert_all_close(actual, expected, what, atol=ATOL, scale_with_value=False):
    """Equal within ``atol`` (``atol * max(1, |expected|)`` with ``scale_with_value``, for
    unbounded activations such as relu)."""
    actual, expected = flat(actual), flat(expected)
    assert len(actual) == len(expected), f"{what}: {len(actual)} outputs, {len(expected)}"
    for k, (got, want) in enumerate(zip(actual, expected)):
        assert got.shape == want.shape, f"{what} output {k}: {got.shape} != {want.shape}"
        if scale_with_value:
            assert_close(got, want, want.dtype, scale_with_value=True, what=f"{what} {k}")
        else:
            np.testing.assert_allclose(got, want, rtol=0, atol=atol,
                                       err_msg=f"{what} output {k}")


# ------------------------------------------------------------------------------- Keras
def fresh_input(fast: fastgate.Model, rng) -> np.ndarray:
    """An input of batch BATCH and (where the model allows) STEPS steps, with pre-, post-
    and interior padding (masked by Masking(0.0) / mask_zero Embeddings)."""
    first = fast.nodes[0].op
    steps = fast.input_shape[1] or STEPS
    if isinstance(first, fastgate.Embedding):
        return token_inputs(rng, BATCH, steps, first.num_embeddings)
    return float_inputs(rng, BATCH, steps, fast.input_shape[2])


@pytest.mark.parametrize("name", list(CASES))
def test_keras_models_through_onnx_runtime(name, tmp_path):
    rng = np.random.default_rng(sum(map(ord, name)))
    model, _ = CASES[name](rng)
    model = randomize(model, seed=len(name))
    fast = fastgate.from_keras(model)
    path = tmp_path / "model.onnx"
    fast.to_onnx(path)
    x = fresh_input(fast, rng)
    if name == "bidirectional_gru_stack":
        x[3, 0] = 4  # an empty row averages 0/0 = NaN (Keras too): keep every row non-empty
    feed = x.astype(np.int64) if x.dtype.kind == "i" else x
    got = ort_run(path.read_bytes(), {"input": feed})
    assert_all_close(got, model.predict(x, verbose=0), f"{name}: ONNX Runtime vs Keras")
    assert_all_close(got, fast.predict(x), f"{name}: ONNX Runtime vs fastgate")


@pytest.mark.parametrize("name", list(sequence_cases.CASES))
def test_keras_sequence_layers_through_onnx_runtime(name):
    """Conv1D (causal, same, strides, groups), pooling, normalization, padding, cropping,
    up-sampling, Reshape, Permute, TimeDistributed, RNN(cells) as ONNX ops."""
    rng = np.random.default_rng(sum(map(ord, name)))
    model, _ = sequence_cases.CASES[name](rng)
    model = sequence_cases.randomize(model, seed=len(name))
    fast = fastgate.from_keras(model)
    shape = [BATCH] + [STEPS if d is None else d for d in fast.input_shape[1:]]
    x = (sequence_cases.padded(rng, *shape) if len(shape) == 3
         else rng.normal(size=shape).astype(np.float32))
    got = ort_run(to_onnx_bytes(fast), {"input": x})
    assert_all_close(got, model.predict(x, verbose=0), f"{name}: ONNX Runtime vs Keras")
    assert_all_close(got, fast.predict(x), f"{name}: ONNX Runtime vs fastgate")


@pytest.mark.parametrize("layer_class", ["LSTM", "GRU", "SimpleRNN"])
def test_keras_layers_without_bias_export_without_b(layer_class, tmp_path):
    """Keras ``use_bias=False`` imports as ``bias=False`` and exports with no ``B`` input
    (optional in ONNX), which ONNX Runtime reads as zero biases: the outputs are Keras'."""
    import keras

    inputs = keras.Input((None, 4))
    hidden = getattr(keras.layers, layer_class)(5, use_bias=False, return_sequences=True)(inputs)
    model = randomize(keras.Model(inputs, keras.layers.Dense(3)(hidden)), seed=3)
    fast = fastgate.from_keras(model)
    assert fast.nodes[0].op.layer.bias is False
    data = to_onnx_bytes(fast)
    recurrent = [node for node in onnx.load_from_string(data).graph.node
                 if node.op_type in ("LSTM", "GRU", "RNN")]
    assert len(recurrent) == 1 and (len(recurrent[0].input) < 4 or not recurrent[0].input[3])
    x = np.random.default_rng(4).normal(size=(BATCH, STEPS, 4)).astype(np.float32)
    got = ort_run(data, {"input": x})
    assert_all_close(got, model.predict(x, verbose=0), f"{layer_class}: ONNX Runtime vs Keras")
    assert_all_close(got, fast.predict(x), f"{layer_class}: ONNX Runtime vs fastgate")


def test_keras_stateful_layer_is_refused():
    layer = fastgate.LSTM.random(3, 4)
    model = fastgate.Model([("encoder", fastgate.Recurrent(layer, stateful=True))], [(0, 0)],
                           input_shape=(2, None, 3))
    with pytest.raises(fastgate.UnsupportedLayerError, match="'encoder'.*stateful"):
        to_onnx_bytes(model)


# ------------------------------------------------------------------------------- PyTorch
TORCH_MODULES = {
    "lstm_stacked_bidirectional_batch_first": lambda: torch.nn.LSTM(
        5, 6, num_layers=2, bidirectional=True, batch_first=True),
    "lstm_nobias": lambda: torch.nn.LSTM(5, 6, bias=False),
    "gru_stacked_bidirectional": lambda: torch.nn.GRU(5, 6, num_layers=3, bidirectional=True),
    "gru_batch_first": lambda: torch.nn.GRU(5, 6, batch_first=True),
    "rnn_relu_stacked": lambda: torch.nn.RNN(5, 6, num_layers=2, nonlinearity="relu"),
    "rnn_tanh_bidirectional_batch_first": lambda: torch.nn.RNN(
        5, 6, bidirectional=True, batch_first=True),
}


def torch_module(name):
    torch.manual_seed(sum(map(ord, name)))
    module = TORCH_MODULES[name]().eval()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0, 0.3)
    return module


@pytest.mark.parametrize("name", list(TORCH_MODULES))
def test_torch_modules_through_onnx_runtime(name):
    module = torch_module(name)
    fast = fastgate.from_torch(module)
    rows = module.num_layers * (2 if module.bidirectional else 1)
    generator = torch.Generator().manual_seed(7)
    shape = (BATCH, STEPS, 5) if module.batch_first else (STEPS, BATCH, 5)
    x = torch.randn(*shape, generator=generator)
    h0 = torch.randn(rows, BATCH, 6, generator=generator)
    state = (h0, torch.randn(rows, BATCH, 6, generator=generator)) \
        if isinstance(module, torch.nn.LSTM) else h0
    lengths = torch.tensor([STEPS, 3, 1, 7, STEPS - 1, 5])
    with torch.no_grad():
        expected_plain = module(x)
        packed = pack_padded_sequence(x, lengths, batch_first=module.batch_first,
                                      enforce_sorted=False)
        packed_out, expected_state = module(packed, state)
        expected_out, _ = pad_packed_sequence(packed_out, batch_first=module.batch_first,
                                              total_length=STEPS)
    plain = ort_run(to_onnx_bytes(fast), {"x": x.numpy()})
    assert_all_close(plain, expected_plain, f"{name}: ONNX Runtime vs torch")
    assert_all_close(plain, fast(x.numpy()), f"{name}: ONNX Runtime vs fastgate")
    feeds = {"x": x.numpy(), "h0": h0.numpy(), "lengths": lengths.numpy()}
    if isinstance(module, torch.nn.LSTM):
        feeds["c0"] = state[1].numpy()
    full = ort_run(to_onnx_bytes(fast, initial_state=True, lengths=True), feeds)
    assert_all_close(full, (expected_out, expected_state),
                     f"{name}: ONNX Runtime vs torch, packed sequences from h0")
    assert_all_close(full, fast(x.numpy(), tuple(flat(state)) if isinstance(state, tuple)
                                else h0.numpy(), lengths=lengths.numpy()),
                     f"{name}: ONNX Runtime vs fastgate, lengths and h0")


@pytest.mark.parametrize("cell_class", [torch.nn.LSTMCell, torch.nn.GRUCell, torch.nn.RNNCell])
def test_torch_cells_through_onnx_runtime(cell_class, tmp_path):
    torch.manual_seed(3)
    module = cell_class(5, 6).eval()
    fast = fastgate.from_torch(module)
    generator = torch.Generator().manual_seed(4)
    x, h = torch.randn(BATCH, 5, generator=generator), torch.randn(BATCH, 6, generator=generator)
    feeds = {"x": x.numpy(), "h": h.numpy()}
    state = h
    if cell_class is torch.nn.LSTMCell:
        state = (h, torch.randn(BATCH, 6, generator=generator))
        feeds["c"] = state[1].numpy()
    fast.to_onnx(tmp_path / "cell.onnx")
    got = ort_run((tmp_path / "cell.onnx").read_bytes(), feeds)
    with torch.no_grad():
        assert_all_close(got, module(x, state), f"{cell_class.__name__}: ORT vs torch")
    assert_all_close(got, fast(x.numpy(), tuple(flat(state)) if isinstance(state, tuple)
                               else h.numpy()), f"{cell_class.__name__}: ORT vs fastgate")


# ------------------------------------------------------------------------------- fastgate
ACTIVATION_CASES = [  # (cell, activation, recurrent_activation, reset_after)
    ("lstm", "relu", "hard_sigmoid", True), ("lstm", "softsign", "hard_sigmoid_keras2", True),
    ("lstm", "elu", "sigmoid", True), ("gru", "linear", "hard_sigmoid", False),
    ("gru", "softplus", "sigmoid", True), ("rnn", "elu", None, True),
    ("rnn", "hard_sigmoid", None, True), ("rnn", "softsign", None, True),
]


@pytest.mark.parametrize("cell,activation,recurrent_activation,reset_after", ACTIVATION_CASES)
def test_layer_options_through_onnx_runtime(cell, activation, recurrent_activation,
                                            reset_after):
    """Every ONNX activation (HardSigmoid alpha 1/6 for Keras 3, 0.2 for Keras 2; Affine for
    linear), GRU reset_after=False (linear_before_reset=0), bias=False (no B input)."""
    options = {"activation": activation, "bidirectional": True, "batch_first": True}
    if recurrent_activation:
        options["recurrent_activation"] = recurrent_activation
    if cell == "gru":
        options["reset_after"] = reset_after
    classes = {"lstm": fastgate.LSTM, "gru": fastgate.GRU, "rnn": fastgate.SimpleRNN}
    rng = np.random.default_rng(5)
    layer = classes[cell](random_cell_weights(cell, 4, 5, num_layers=2, bidirectional=True,
                                              rng=rng, scale=0.5, dtype=np.float32),
                          **options)
    no_bias = classes[cell](random_cell_weights(cell, 4, 5, bidirectional=True, rng=rng,
                                                scale=0.5, bias=False, dtype=np.float32),
                            bias=False, **options)
    x = (2 * rng.standard_normal((BATCH, STEPS, 4))).astype(np.float32)
    for fast in (layer, no_bias):
        assert_all_close(ort_run(to_onnx_bytes(fast), {"x": x}), fast(x), repr(fast),
                         scale_with_value=True)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_length_zero_keeps_the_initial_state(cell):
    """fastgate's lengths= allow 0 (the state stays h0, the outputs are zeros; PyTorch's packed
    sequences refuse it); the graph does not rely on a runtime's sequence_lens = 0."""
    classes = {"lstm": fastgate.LSTM, "gru": fastgate.GRU, "rnn": fastgate.SimpleRNN}
    layer = classes[cell].random(3, 4, num_layers=2, bidirectional=True, batch_first=True)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((BATCH, STEPS, 3)).astype(np.float32)
    h0, c0 = (rng.standard_normal((4, BATCH, 4)).astype(np.float32) for _ in range(2))
    lengths = np.array([0, STEPS, 2, 0, 1, 7])
    feeds = {"x": x, "h0": h0, "lengths": lengths} | ({"c0": c0} if cell == "lstm" else {})
    expected = layer(x, (h0, c0) if cell == "lstm" else h0, lengths=lengths)
    got = ort_run(to_onnx_bytes(layer, initial_state=True, lengths=True), feeds)
    assert_all_close(got, expected, f"{cell} with lengths 0")
    np.testing.assert_array_equal(got[1][:, 0], h0[:, 0])


def test_cells_with_keras_options_through_onnx_runtime():
    rng = np.random.default_rng(6)
    cell = fastgate.GRUCell(random_cell_weights("gru", 3, 4, rng=rng, dtype=np.float32)[0],
                            reset_after=False, recurrent_activation="hard_sigmoid")
    x, h = rng.standard_normal((BATCH, 3), np.float32), rng.standard_normal((BATCH, 4), np.float32)
    assert_all_close(ort_run(to_onnx_bytes(cell), {"x": x, "h": h}), cell(x, h), repr(cell))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_float64_layers_against_the_onnx_reference(cell):
    """ONNX Runtime has no double LSTM/GRU/RNN on CPU; ONNX's own reference evaluator does."""
    classes = {"lstm": fastgate.LSTM, "gru": fastgate.GRU, "rnn": fastgate.SimpleRNN}
    layer = classes[cell].random(3, 4, num_layers=2, bidirectional=True, dtype=np.float64)
    x = np.random.default_rng(8).standard_normal((STEPS, BATCH, 3))
    model = onnx.load_from_string(to_onnx_bytes(layer))
    onnx.checker.check_model(model, full_check=True)
    assert_all_close(ReferenceEvaluator(model).run(None, {"x": x}), layer(x), cell, atol=1e-12)


def chain_model(rng):
    """Masking -> LSTM(return_sequences) -> Dense(gelu) -> Activation(silu) -> average
    pooling (masked) -> RepeatVector -> GRU go_backwards -> Dense(selu) -> softmax."""
    lstm = fastgate.LSTM(random_cell_weights("lstm", 3, 5, rng=rng, dtype=np.float32))
    gru = fastgate.GRU(random_cell_weights("gru", 4, 3, rng=rng, dtype=np.float32))
    nodes = [("masking", fastgate.Masking(0.0)),
             ("lstm", fastgate.Recurrent(lstm, return_sequences=True)),
             ("dense_gelu", fastgate.Dense(rng.normal(size=(5, 4)), rng.normal(size=4),
                                           activation="gelu")),
             ("silu", fastgate.Activation("silu")),
             ("pool", fastgate.GlobalPooling1D("average")),
             ("repeat", fastgate.RepeatVector(4)),
             ("gru", fastgate.Recurrent(gru, go_backwards=True, return_sequences=True,
                                        zero_output_for_mask=True)),
             ("flatten", fastgate.Flatten()),
             ("dense_selu", fastgate.Dense(rng.normal(size=(12, 3)), None, activation="selu")),
             ("softmax", fastgate.Activation("softmax"))]
    nodes = [fastgate.model.Node(name, op, (k - 1 if k else -1, 0))
             for k, (name, op) in enumerate(nodes)]
    return fastgate.Model(nodes, [(9, 0), (4, 0)], input_shape=(None, None, 3))


@pytest.mark.parametrize("opset", [14, 17, 18, 22])
def test_every_op_at_every_opset(opset):
    """Reductions take their axes as an input from opset 18 (ReduceMax, ReduceMean)."""
    rng = np.random.default_rng(9)
    model = chain_model(rng)
    x = float_inputs(rng, BATCH, STEPS, 3)
    got = ort_run(to_onnx_bytes(model, opset), {"input": x})
    assert onnx.load_from_string(to_onnx_bytes(model, opset)).opset_import[0].version == opset
    assert_all_close(got, model(x), f"opset {opset}")


def test_single_ops_export_as_models():
    rng = np.random.default_rng(10)
    embedding = fastgate.Embedding(rng.normal(size=(9, 4)))
    ids = rng.integers(0, 9, size=(BATCH, STEPS))
    assert_all_close(ort_run(to_onnx_bytes(embedding), {"input": ids}), embedding(ids),
                     "Embedding")
    dense = fastgate.Dense(rng.normal(size=(4, 3)), rng.normal(size=3), activation="exponential")
    x = rng.standard_normal((BATCH, 4)).astype(np.float32)
    assert_all_close(ort_run(to_onnx_bytes(dense), {"input": x}), dense(x), "Dense")
    lstm = fastgate.LSTM(random_cell_weights("lstm", 4, 3, rng=rng, dtype=np.float32))
    both = fastgate.Bidirectional(
        fastgate.Recurrent(lstm, return_state=True),
        fastgate.Recurrent(lstm, return_state=True, go_backwards=True), merge_mode=None)
    sequences = rng.standard_normal((BATCH, STEPS, 4)).astype(np.float32)
    assert_all_close(ort_run(to_onnx_bytes(both), {"input": sequences}),
                     both.apply(sequences, None)[0], "Bidirectional")


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("zero_output_for_mask", [False, True])
def test_recurrent_options_with_and_without_a_mask(masked, go_backwards, return_sequences,
                                                   zero_output_for_mask):
    """Every combination of the Keras options the exported graph handles in its own way
    (fastgate's Recurrent is checked against Keras in test_keras_import)."""
    rng = np.random.default_rng(11)
    gru = fastgate.GRU(random_cell_weights("gru", 3, 4, rng=rng, dtype=np.float32))
    recurrent = fastgate.Recurrent(gru, return_sequences=return_sequences, return_state=True,
                                   go_backwards=go_backwards,
                                   zero_output_for_mask=zero_output_for_mask)
    nodes = [("masking", fastgate.Masking(0.0))] if masked else []
    nodes.append(("gru", recurrent))
    nodes = [fastgate.model.Node(name, op, (k - 1 if k else -1, 0))
             for k, (name, op) in enumerate(nodes)]
    last = len(nodes) - 1
    model = fastgate.Model(nodes, [(last, 0), (last, 1)], input_shape=(None, None, 3))
    x = float_inputs(rng, BATCH, STEPS, 3)
    x[3] = 0  # an empty sequence
    x[4, -1] = 0  # the last step masked: a zero output with zero_output_for_mask
    assert_all_close(ort_run(to_onnx_bytes(model), {"input": x}), model(x),
                     f"masked={masked}")


# ------------------------------------------------------------------------------- contract
def test_refusals_name_the_layer_and_the_reason():
    with pytest.raises(fastgate.UnsupportedLayerError, match="lstm_l0.*proj_size=2.*projection"):
        to_onnx_bytes(fastgate.LSTM.random(3, 4, proj_size=2))
    with pytest.raises(fastgate.UnsupportedLayerError, match="gru_l0.*'selu'.*ONNX"):
        to_onnx_bytes(fastgate.GRU.random(3, 4, activation="selu"))
    with pytest.raises(fastgate.ConfigError, match="opset must be one of"):
        to_onnx_bytes(fastgate.GRU.random(3, 4), opset=12)
    model = chain_model(np.random.default_rng(0))
    with pytest.raises(fastgate.ConfigError, match="initial_state= and lengths= apply to a "
                                                   "recurrent layer"):
        to_onnx_bytes(model, initial_state=True)
    with pytest.raises(fastgate.ConfigError, match="cannot export a str"):
        to_onnx_bytes("model.keras")


def test_models_beyond_protobufs_2_gib_are_refused(monkeypatch):
    monkeypatch.setattr(fastgate.export.onnx, "_PROTOBUF_LIMIT", 10_000)
    with pytest.raises(fastgate.ConfigError, match="cannot exceed 2 GiB.*external data"):
        to_onnx_bytes(fastgate.LSTM.random(30, 40))
    assert len(to_onnx_bytes(fastgate.LSTM.random(3, 4))) < 10_000


def test_export_is_byte_reproducible(tmp_path):
    model = chain_model(np.random.default_rng(1))
    model.to_onnx(tmp_path / "a.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == to_onnx_bytes(model)
    parsed = onnx.load(str(tmp_path / "a.onnx"))
    assert parsed.producer_name == "fastgate"
    assert [i.name for i in parsed.graph.input] == ["input"]
    assert [o.name for o in parsed.graph.output] == ["softmax_output", "pool_output"]
    dims = parsed.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", "steps", 3]


def test_core_modules_never_import_the_exporters(tmp_path):
    code = ("import sys, numpy, fastgate; fastgate.LSTM.random(2, 3)(numpy.ones((4, 1, 2))); "
            "assert not [m for m in sys.modules if m.startswith('fastgate.export')], "
            "sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], env=subprocess_env(), cwd=tmp_path,
                   check=True, timeout=120)
