"""fastgate.from_torch against PyTorch itself: every module kind, from every kind of source.

Each torch module gets random weights ~ normal(0, 0.3) (so a gate, bias or transpose mistake
shows), is imported from the live module, a state_dict of tensors, a state_dict of NumPy
arrays, a ``.pt`` zip file, a legacy ``.pt`` file and a ``.safetensors`` file (written by the
``safetensors`` package), and must reproduce torch's outputs and states; every imported model
is also run compiled vs the NumPy oracle.

Tolerances (absolute, values are O(1)): float32 1e-5, float64 1e-12 (vs torch and vs oracle).
Malformed and malicious files are in test_torch_import_safety.py.
"""

import numpy as np
import pytest
import safetensors.torch
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastgate
from conftest import assert_close
from fastgate.export.torch import to_torch_state_dict, torch_module

D, H, P, BATCH, STEPS = 5, 6, 3, 3, 7
VOCAB = 11

# name -> (constructor, options a state_dict cannot carry: from_torch kwargs)
SPECS = {
    "lstm": (lambda: torch.nn.LSTM(D, H), {}),
    "lstm_proj": (lambda: torch.nn.LSTM(D, H, proj_size=P), {}),
    "lstm_bidirectional": (lambda: torch.nn.LSTM(D, H, bidirectional=True, batch_first=True),
                           {"batch_first": True}),
    "lstm_3layers_nobias": (lambda: torch.nn.LSTM(D, H, num_layers=3, bias=False), {}),
    "lstm_3layers_bidir_proj": (
        lambda: torch.nn.LSTM(D, H, num_layers=3, bidirectional=True, proj_size=P,
                              batch_first=True), {"batch_first": True}),
    "gru": (lambda: torch.nn.GRU(D, H, num_layers=2, bidirectional=True), {}),
    "gru_nobias": (lambda: torch.nn.GRU(D, H, bias=False, batch_first=True),
                   {"batch_first": True}),
    "rnn_tanh": (lambda: torch.nn.RNN(D, H, num_layers=2), {}),
    "rnn_relu": (lambda: torch.nn.RNN(D, H, nonlinearity="relu", bidirectional=True),
                 {"nonlinearity": "relu"}),
    "lstm_cell": (lambda: torch.nn.LSTMCell(D, H), {}),
    "gru_cell": (lambda: torch.nn.GRUCell(D, H), {}),
    "rnn_cell": (lambda: torch.nn.RNNCell(D, H), {}),
    "rnn_cell_relu_nobias": (lambda: torch.nn.RNNCell(D, H, bias=False, nonlinearity="relu"),
                             {"nonlinearity": "relu"}),
    "linear": (lambda: torch.nn.Linear(D, H), {}),
    "linear_nobias": (lambda: torch.nn.Linear(D, H, bias=False), {"kind": "linear"}),
    "embedding": (lambda: torch.nn.Embedding(VOCAB, H), {"kind": "embedding"}),
}
SOURCES = ["module", "state_tensors", "state_numpy", "pt_zip", "pt_legacy", "safetensors"]
DTYPES = {"float32": torch.float32, "float64": torch.float64}
TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def make_module(name, dtype, seed=0):
    torch.manual_seed(seed)
    module = SPECS[name][0]().to(dtype).eval()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0, 0.3)
    return module


def import_from(source, module, options, tmp_path):
    """``fastgate.from_torch`` of ``module`` through ``source``."""
    state = module.state_dict()
    if source == "module":
        return fastgate.from_torch(module)
    if source == "state_tensors":
        return fastgate.from_torch(state, **options)
    if source == "state_numpy":
        return fastgate.from_torch({k: v.numpy() for k, v in state.items()}, **options)
    if source == "safetensors":
        path = tmp_path / "weights.safetensors"
        safetensors.torch.save_file(state, str(path))
    else:
        path = tmp_path / "weights.pt"
        torch.save(state, path, _use_new_zipfile_serialization=source == "pt_zip")
    return fastgate.from_torch(str(path), **options)


def run_both(fast, *args, **kwargs):
    """``fast(*args)`` in the active (compiled) backend, checked against the oracle."""
    result = fast(*args, **kwargs)
    with fastgate.use_backend("python"):
        oracle = fast(*args, **kwargs)
    for got, expected in zip(flatten(result), flatten(oracle)):
        assert_close(got, expected, fast.dtype, what="compiled vs oracle")
    return result


def flatten(value):
    if isinstance(value, (tuple, list)):
        return [item for part in value for item in flatten(part)]
    return [np.asarray(value)]


def random_state(module, batch, dtype, generator):
    """Random initial states of a torch LSTM/GRU/RNN/cell for ``batch`` sequences."""
    def draw(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    if isinstance(module, (torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN)):
        rows = module.num_layers * (2 if module.bidirectional else 1)
        h0 = draw(rows, batch, module.proj_size or module.hidden_size)
        if isinstance(module, torch.nn.LSTM):
            return (h0, draw(rows, batch, module.hidden_size))
        return h0
    h0 = draw(batch, module.hidden_size)
    return (h0, draw(batch, module.hidden_size)) if isinstance(module, torch.nn.LSTMCell) else h0


def to_numpy(value):
    if isinstance(value, tuple):
        return tuple(to_numpy(v) for v in value)
    return value.detach().numpy()


def check_equal_to_torch(module, fast, dtype):
    """Run ``module`` and ``fast`` on the same random input; compare everything returned."""
    generator = torch.Generator().manual_seed(1)
    tol = TOL[dtype]
    if isinstance(module, torch.nn.Embedding):
        ids = torch.randint(0, VOCAB, (BATCH, STEPS), generator=generator)
        pairs = [(module(ids), run_both(fast, ids.numpy()))]
    elif isinstance(module, torch.nn.Linear):
        x = torch.randn(BATCH, STEPS, D, generator=generator, dtype=dtype)
        pairs = [(module(x), run_both(fast, x.numpy()))]
    elif isinstance(module, (torch.nn.LSTMCell, torch.nn.GRUCell, torch.nn.RNNCell)):
        x = torch.randn(BATCH, D, generator=generator, dtype=dtype)
        state = random_state(module, BATCH, dtype, generator)
        pairs = [(module(x), run_both(fast, x.numpy())),
                 (module(x, state), run_both(fast, x.numpy(), to_numpy(state))),
                 (module(x[0]), run_both(fast, x[0].numpy()))]  # unbatched (D,)
    else:
        shape = (BATCH, STEPS, D) if module.batch_first else (STEPS, BATCH, D)
        x = torch.randn(*shape, generator=generator, dtype=dtype)
        state = random_state(module, BATCH, dtype, generator)
        pairs = [(module(x), run_both(fast, x.numpy())),
                 (module(x, state), run_both(fast, x.numpy(), to_numpy(state)))]
    with torch.no_grad():
        for expected, got in pairs:
            expected, got = flatten(to_numpy(expected)), flatten(got)
            assert len(expected) == len(got)
            for e, g in zip(expected, got):
                assert g.dtype == e.dtype
                np.testing.assert_allclose(g, e, rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", list(SPECS))
def test_matches_torch(name, source, dtype, tmp_path):
    module = make_module(name, DTYPES[dtype])
    fast = import_from(source, module, SPECS[name][1], tmp_path)
    expected_type = {torch.nn.LSTM: fastgate.LSTM, torch.nn.GRU: fastgate.GRU,
                     torch.nn.RNN: fastgate.SimpleRNN, torch.nn.LSTMCell: fastgate.LSTMCell,
                     torch.nn.GRUCell: fastgate.GRUCell, torch.nn.RNNCell: fastgate.RNNCell,
                     torch.nn.Linear: fastgate.Dense, torch.nn.Embedding: fastgate.Embedding}
    assert type(fast) is expected_type[type(module)]
    assert fast.dtype == np.dtype(dtype)
    check_equal_to_torch(module, fast, DTYPES[dtype])


@pytest.mark.parametrize("name", [n for n in SPECS if not n.startswith(("linear", "embed"))])
def test_inferred_configuration(name):
    module = make_module(name, torch.float32)
    fast = fastgate.from_torch({k: v.numpy() for k, v in module.state_dict().items()},
                               **SPECS[name][1])
    layer = fast.layer if hasattr(fast, "layer") else fast
    assert layer.input_size == module.input_size
    assert layer.hidden_size == module.hidden_size
    if isinstance(module, torch.nn.RNNBase):
        assert layer.num_layers == module.num_layers
        assert layer.bidirectional == module.bidirectional
        assert layer.proj_size == module.proj_size
        assert layer.batch_first == module.batch_first
    if hasattr(module, "nonlinearity"):
        assert layer.activation == module.nonlinearity


@pytest.mark.parametrize("name", list(SPECS))
def test_to_torch_state_dict_round_trip(name):
    module = make_module(name, torch.float32)
    fast = fastgate.from_torch(module)
    exported = (fast.to_torch_state_dict() if hasattr(fast, "to_torch_state_dict")
                else to_torch_state_dict(fast))
    assert list(exported) == list(module.state_dict())
    fresh = make_module(name, torch.float32, seed=99)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    for key, value in module.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    check_equal_to_torch(fresh, fast, torch.float32)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", list(SPECS))
def test_torch_module_rebuilds_the_module(name, dtype):
    """``torch_module`` (what the CLI and the benchmarks compare against) computes what the
    module the weights came from computes, with its options (batch_first, bias, ...)."""
    module = make_module(name, DTYPES[dtype])
    rebuilt = torch_module(fastgate.from_torch(module))
    assert type(rebuilt) is type(module) and repr(rebuilt) == repr(module)
    assert next(rebuilt.parameters()).dtype == DTYPES[dtype]
    for key, value in module.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


def test_torch_module_of_a_dense_with_activation():
    dense = fastgate.Dense(np.arange(6.0).reshape(3, 2) / 7, np.array([0.5, -1.0]),
                           activation="hard_sigmoid")
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    with torch.no_grad():
        expected = torch_module(dense)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(dense(x), expected, rtol=0, atol=1e-6)


def test_export_refuses_what_torch_cannot_compute():
    cases = [
        (fastgate.GRU.random(3, 4, reset_after=False), "reset_after=False has no PyTorch"),
        (fastgate.LSTM.random(3, 4, activation="relu"), "activations 'relu'/'sigmoid' has no"),
        (fastgate.SimpleRNN.random(3, 4, activation="sigmoid"), "nn.RNN supports tanh and relu"),
        (fastgate.Dense(np.ones((3, 2)), activation="relu"), "Dense with activation 'relu' is "
                                                             "not an nn.Linear"),
        (fastgate.Activation("tanh"), "cannot export a Activation"),
    ]
    for obj, message in cases:
        with pytest.raises(fastgate.ConfigError, match=message):
            to_torch_state_dict(obj)
    with pytest.raises(fastgate.ConfigError, match="'hard_sigmoid_keras2' has no torch.nn"):
        torch_module(fastgate.Dense(np.ones((3, 2)), activation="hard_sigmoid_keras2"))
    with pytest.raises(fastgate.ConfigError, match="bias=False, but LSTM has non-zero biases"):
        fastgate.LSTM.random(3, 4).to_torch_state_dict(bias=False)


def test_bias_false_requires_zero_biases():
    weights = fastgate.from_torch(make_module("lstm", torch.float32)).weights
    with pytest.raises(fastgate.ConfigError, match="bias=False, but the biases are not zero"):
        fastgate.LSTM(weights, bias=False)


def test_round_trip_with_prefix_into_a_model():
    lstm = make_module("lstm_3layers_bidir_proj", torch.float32)
    exported = fastgate.from_torch(lstm).to_torch_state_dict(prefix="encoder.")
    model = torch.nn.Module()
    model.encoder = make_module("lstm_3layers_bidir_proj", torch.float32, seed=5)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
    assert torch.equal(model.encoder.weight_hr_l2_reverse, lstm.weight_hr_l2_reverse)


@pytest.mark.parametrize("name", ["lstm_3layers_bidir_proj", "gru", "rnn_relu", "gru_nobias"])
def test_lengths_match_pack_padded_sequence(name):
    """``lengths=`` is ``pack_padded_sequence(enforce_sorted=False)`` + ``pad_packed_sequence``."""
    module = make_module(name, torch.float32)
    fast = fastgate.from_torch(module)
    batch_first = module.batch_first
    generator = torch.Generator().manual_seed(2)
    lengths = torch.tensor([4, STEPS, 1, 6])
    shape = (4, STEPS, D) if batch_first else (STEPS, 4, D)
    x = torch.randn(*shape, generator=generator)
    state = random_state(module, 4, torch.float32, generator)
    with torch.no_grad():
        packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
        packed_out, expected_state = module(packed, state)
        expected_out, _ = pad_packed_sequence(packed_out, batch_first=batch_first,
                                              total_length=STEPS)
    out, got_state = run_both(fast, x.numpy(), to_numpy(state), lengths=lengths.numpy())
    np.testing.assert_allclose(out, expected_out.numpy(), rtol=0, atol=1e-5)
    for got, expected in zip(flatten(got_state), flatten(to_numpy(expected_state))):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


class Classifier(torch.nn.Module):
    """The classic PyTorch tutorial: read an MNIST image row by row, classify the last step."""

    def __init__(self, cell):
        super().__init__()
        rnn = torch.nn.LSTM if cell == "lstm" else torch.nn.GRU
        self.rnn = rnn(28, 128, num_layers=2, batch_first=True)
        self.fc = torch.nn.Linear(128, 10)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1, :])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_row_classifier_in_three_lines(cell, dtype, tmp_path):
    """LSTM/GRU(28, 128, num_layers=2, batch_first=True) -> Linear(128, 10) on the last step.

    Tolerance: float64 1e-12 x max(1, |logit|). float32 1e-4 absolute: at this size (128
    hidden units, 28 steps, std-0.3 weights, logits ~4) torch's own float32 result is ~2e-5
    from the float64 one (measured), so 1e-5 would test rounding, not the import.
    """
    torch.manual_seed(3)
    model = Classifier(cell).to(dtype).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.3)
    torch.save(model.state_dict(), tmp_path / "classifier.pt")
    images = torch.randn(8, 28, 28, generator=torch.Generator().manual_seed(4), dtype=dtype)
    with torch.no_grad():
        expected = model(images).numpy()

    rnn = fastgate.from_torch(tmp_path / "classifier.pt", prefix="rnn.", batch_first=True)
    fc = fastgate.from_torch(tmp_path / "classifier.pt", prefix="fc.")
    logits = fc(rnn(images.numpy())[0][:, -1])

    with fastgate.use_backend("python"):
        oracle = fc(rnn(images.numpy())[0][:, -1])
    assert logits.dtype == expected.dtype
    if dtype == torch.float64:
        assert_close(logits, expected, np.float64, scale_with_value=True, what="vs torch")
        assert_close(logits, oracle, np.float64, scale_with_value=True, what="vs oracle")
    else:
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)
        np.testing.assert_allclose(logits, oracle, rtol=0, atol=1e-4)


class Tagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(VOCAB, D)
        self.lstm = torch.nn.LSTM(D, H, bidirectional=True, batch_first=True)
        self.fc = torch.nn.Linear(2 * H, 4)


def test_whole_model_state_dict_needs_a_prefix(tmp_path):
    torch.manual_seed(5)
    model = Tagger()
    path = tmp_path / "tagger.pt"
    torch.save(model.state_dict(), path)
    for source in (path, model.state_dict(), model):
        with pytest.raises(fastgate.WeightFormatError) as info:
            fastgate.from_torch(source)
        for candidate in ("'embedding.'", "'lstm.'", "'fc.'"):
            assert candidate in str(info.value)
    with pytest.raises(fastgate.WeightFormatError, match="no tensor has the prefix"):
        fastgate.from_torch(path, prefix="decoder.")
    assert isinstance(fastgate.from_torch(path, prefix="embedding.", kind="embedding"),
                      fastgate.Embedding)
    assert isinstance(fastgate.from_torch(path, prefix="fc"), fastgate.Dense)  # dot optional
    lstm_from_file = fastgate.from_torch(path, prefix="lstm.", batch_first=True)
    lstm_from_model = fastgate.from_torch(model, prefix="lstm")  # batch_first read from it
    assert lstm_from_model.batch_first
    check_equal_to_torch(model.lstm.eval(), lstm_from_file, torch.float32)
    check_equal_to_torch(model.lstm.eval(), lstm_from_model, torch.float32)


def test_checkpoint_dict_nested_keys(tmp_path):
    torch.manual_seed(6)
    model = Tagger()
    checkpoint = {"epoch": 3, "model": model.state_dict(), "note": "best"}
    torch.save(checkpoint, tmp_path / "ck.pt")
    for source in (tmp_path / "ck.pt", checkpoint):
        fast = fastgate.from_torch(source, prefix="model.lstm.", batch_first=True)
        check_equal_to_torch(model.lstm.eval(), fast, torch.float32)


def test_state_dict_options_and_kind_errors():
    lstm = make_module("lstm", torch.float32)
    state = lstm.state_dict()
    with pytest.raises(fastgate.ConfigError, match="nonlinearity"):
        fastgate.from_torch(state, nonlinearity="relu")
    with pytest.raises(fastgate.ConfigError, match="batch_first"):
        fastgate.from_torch(lstm, batch_first=True)  # the module says False
    with pytest.raises(fastgate.WeightFormatError, match="GRU"):
        fastgate.from_torch(state, kind="gru")
    with pytest.raises(fastgate.ConfigError, match="kind"):
        fastgate.from_torch(state, kind="transformer")
    with pytest.raises(fastgate.WeightFormatError, match="kind='embedding'"):
        fastgate.from_torch(torch.nn.Linear(3, 4, bias=False).state_dict())
    with pytest.raises(fastgate.UnsupportedLayerError):
        fastgate.from_torch(torch.nn.Conv1d(3, 4, 2))
    with pytest.raises(fastgate.UnsupportedLayerError):
        fastgate.from_torch(torch.nn.Embedding(4, 3, max_norm=1.0))


def test_state_dict_shape_and_missing_errors():
    lstm = make_module("lstm_3layers_nobias", torch.float32)
    state = {k: v.numpy() for k, v in lstm.state_dict().items()}
    missing = dict(state)
    del missing["weight_hh_l1"]
    with pytest.raises(fastgate.WeightFormatError, match="weight_hh_l1.*missing"):
        fastgate.from_torch(missing)
    wrong = dict(state, weight_ih_l2=np.zeros((4 * H, H + 1), np.float32))
    with pytest.raises(fastgate.WeightFormatError,
                       match=r"weight_ih_l2.*\(24, 7\), expected \(24, 6\)"):
        fastgate.from_torch(wrong)
    odd = dict(state, weight_hh_l0=np.zeros((5 * H, H), np.float32))
    with pytest.raises(fastgate.WeightFormatError, match="1, 3 or 4 times"):
        fastgate.from_torch(odd)
    extra = dict(state, bias_ih_l1=np.zeros(4 * H, np.float32))
    with pytest.raises(fastgate.WeightFormatError, match="bias_ih_l1.*unexpected"):
        fastgate.from_torch(extra)
    integer = dict(state, weight_ih_l0=state["weight_ih_l0"].astype(np.int64))
    with pytest.raises(fastgate.WeightFormatError, match="floating-point"):
        fastgate.from_torch(integer)


def test_cells_serialize_and_repr(tmp_path):
    cell = fastgate.from_torch(make_module("rnn_cell_relu_nobias", torch.float64))
    assert repr(cell) == ("RNNCell(input_size=5, hidden_size=6, activation='relu', "
                          "bias=False, dtype=float64)")
    cell.save(tmp_path / "cell.fastgate")
    from fastgate.serialization import load_native
    loaded = load_native(tmp_path / "cell.fastgate")
    assert loaded.bias is False and list(loaded.to_torch_state_dict()) == ["weight_ih",
                                                                            "weight_hh"]
    x = np.random.default_rng(0).normal(size=(2, D))
    np.testing.assert_array_equal(loaded(x), cell(x))
    with pytest.raises(fastgate.ShapeError, match=r"expected \(B, 5\) or \(5,\)"):
        cell(np.zeros((2, 4)))
    with pytest.raises(fastgate.ShapeError, match=r"h: expected shape \(2, 6\)"):
        cell(x, np.zeros((3, 6)))
