"""The public layer API: description, copies, files, and backend selection.

Outputs of a copy (pickle, ``.fastgate`` file, rebuilt from its config) must equal the
original's exactly (same weights, same backend, same arithmetic).
"""

import json
import pickle
import subprocess
import sys
import threading
import tempfile
import textwrap

import numpy as np
import pytest

import fastgate
from conftest import assert_close, random_cell_weights, subprocess_env
from fastgate import serialization
from fastgate.errors import BackendError, ConfigError

BACKENDS = ["python", "compiled"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    with fastgate.use_backend(request.param):
        yield request.param


def example_layers():
    return [
        fastgate.LSTM.random(5, 8),
        fastgate.LSTM.random(5, 8, num_layers=2, bidirectional=True, proj_size=3,
                             dtype=np.float64, batch_first=True),
        fastgate.GRU.random(5, 8, reset_after=False, activation="relu",
                            recurrent_activation="hard_sigmoid"),
        fastgate.GRU.random(5, 8, num_layers=3, bidirectional=True),
        fastgate.SimpleRNN.random(5, 8, activation="relu", num_layers=2, batch_first=True),
    ]


def call(layer, rng, batch=3, steps=6):
    shape = (batch, steps, layer.input_size) if layer.batch_first else (
        steps, batch, layer.input_size)
    x = rng.normal(size=shape).astype(layer.dtype)
    return layer(x, lengths=rng.integers(0, steps + 1, size=batch))


def assert_same_call(a, b, rng_seed=7):
    out_a, state_a = call(a, np.random.default_rng(rng_seed))
    out_b, state_b = call(b, np.random.default_rng(rng_seed))
    np.testing.assert_array_equal(out_a, out_b)
    for x, y in zip(state_a if isinstance(state_a, tuple) else (state_a,),
                    state_b if isinstance(state_b, tuple) else (state_b,)):
        np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------------------- description

def test_repr():
    assert repr(fastgate.LSTM.random(5, 8)) == "LSTM(input_size=5, hidden_size=8, dtype=float32)"
    layer = fastgate.LSTM.random(5, 8, num_layers=2, bidirectional=True, proj_size=3,
                                 dtype=np.float64, batch_first=True)
    assert repr(layer) == ("LSTM(input_size=5, hidden_size=8, num_layers=2, proj_size=3, "
                           "bidirectional=True, batch_first=True, dtype=float64)")
    assert repr(fastgate.GRU.random(2, 3, reset_after=False, activation="relu")) == (
        "GRU(input_size=2, hidden_size=3, activation='relu', reset_after=False, "
        "dtype=float32)")
    assert repr(fastgate.SimpleRNN.random(2, 3, activation="swish")) == (
        "SimpleRNN(input_size=2, hidden_size=3, activation='silu', dtype=float32)")


def test_attributes():
    layer = fastgate.LSTM.random(5, 8, num_layers=2, bidirectional=True, proj_size=3)
    assert (layer.input_size, layer.hidden_size, layer.num_layers, layer.proj_size,
            layer.output_size, layer.num_directions) == (5, 8, 2, 3, 3, 2)
    assert layer.state_shapes == ((4, -1, 3), (4, -1, 8))
    assert len(layer.weights) == 4 and layer.weights[2].input_kernel.shape == (6, 32)
    gru = fastgate.GRU.random(5, 8)
    assert gru.state_shapes == ((1, -1, 8),) and gru.proj_size == 0


@pytest.mark.parametrize("layer", example_layers(), ids=repr)
def test_get_config_is_json_and_rebuilds_the_layer(layer):
    config = layer.get_config()
    assert json.loads(json.dumps(config)) == config
    assert config["dtype"] == layer.dtype.name
    assert ("reset_after" in config) == (layer.cell == "gru")
    assert ("recurrent_activation" in config) == (layer.cell != "rnn")
    rebuilt = type(layer)(layer.weights, **config)
    assert rebuilt.get_config() == config and repr(rebuilt) == repr(layer)
    assert_same_call(layer, rebuilt)


def test_weights_accepted_as_cellweights_dicts_or_tuples():
    weights = random_cell_weights("gru", 3, 4, num_layers=2)
    as_dicts = [w._asdict() for w in weights]
    as_tuples = [tuple(w)[:4] for w in weights]
    reference = fastgate.GRU(weights)
    assert_same_call(reference, fastgate.GRU(as_dicts))
    assert_same_call(reference, fastgate.GRU(as_tuples))


def test_weights_are_converted_and_copied_once():
    weights = random_cell_weights("rnn", 3, 4, dtype=np.float64)
    layer = fastgate.SimpleRNN(weights, dtype=np.float32)
    assert all(w.input_kernel.dtype == np.float32 and w.input_kernel.flags.c_contiguous
               for w in layer.weights)
    before, _ = call(layer, np.random.default_rng(0))
    weights[0].input_kernel[...] = 0  # the caller's arrays are not the layer's
    after, _ = call(layer, np.random.default_rng(0))
    np.testing.assert_array_equal(before, after)


# ---------------------------------------------------------------------------- copies

@pytest.mark.parametrize("layer", example_layers(), ids=repr)
def test_pickle_round_trip(backend, layer):
    copy = pickle.loads(pickle.dumps(layer))
    assert type(copy) is type(layer) and repr(copy) == repr(layer)
    assert_same_call(layer, copy)


@pytest.mark.parametrize("layer", example_layers(), ids=repr)
def test_fastgate_file_round_trip(backend, layer, tmp_path):
    path = tmp_path / "layer.fastgate"
    layer.save(path)
    assert serialization.is_native(path)
    loaded = serialization.load_native(path)
    assert type(loaded) is type(layer) and loaded.get_config() == layer.get_config()
    for a, b in zip(layer.weights, loaded.weights):
        for x, y in zip(a, b):
            if x is None:
                assert y is None
            else:
                assert y.dtype == x.dtype
                np.testing.assert_array_equal(x, y)
    assert_same_call(layer, loaded)
    from_bytes = serialization.from_bytes(serialization.to_bytes(layer))
    assert_same_call(layer, from_bytes)
    fastgate.save(layer, tmp_path / "again.fastgate")
    assert (tmp_path / "again.fastgate").read_bytes() == path.read_bytes()


# ---------------------------------------------------------------------------- random

def test_random():
    a = fastgate.LSTM.random(4, 6, num_layers=2, bidirectional=True, proj_size=2, seed=3)
    b = fastgate.LSTM.random(4, 6, num_layers=2, bidirectional=True, proj_size=2, seed=3)
    c = fastgate.LSTM.random(4, 6, num_layers=2, bidirectional=True, proj_size=2, seed=4)
    assert_same_call(a, b)
    assert not np.array_equal(a.weights[0].input_kernel, c.weights[0].input_kernel)
    assert a.proj_size == 2 and a.weights[3].projection.shape == (6, 2)
    bound = 1 / np.sqrt(6)  # PyTorch's initialisation
    assert all(np.abs(arr).max() <= bound for w in a.weights for arr in w if arr is not None)
    wide = fastgate.GRU.random(4, 6, scale=5.0)
    assert np.abs(wide.weights[0].input_kernel).max() > 1
    assert fastgate.GRU.random(4, 6, dtype=np.float64).dtype == np.float64
    with pytest.raises(ConfigError, match="has no proj_size"):
        fastgate.GRU.random(4, 6, proj_size=2)


# ---------------------------------------------------------------------------- semantics

@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_batch_first_is_a_transpose(backend, cell, rng):
    weights = random_cell_weights(cell, 3, 5, num_layers=2, bidirectional=True, rng=1)
    cls = {"lstm": fastgate.LSTM, "gru": fastgate.GRU, "rnn": fastgate.SimpleRNN}[cell]
    time_major = cls(weights, bidirectional=True)
    batch_major = cls(weights, bidirectional=True, batch_first=True)
    x = rng.normal(size=(7, 4, 3)).astype(np.float32)
    lengths = [7, 0, 3, 1]
    out_t, state_t = time_major(x, lengths=lengths)
    out_b, state_b = batch_major(x.transpose(1, 0, 2), lengths=lengths)
    assert_close(out_b, out_t.transpose(1, 0, 2), np.float32)
    for s_t, s_b in zip(state_t if cell == "lstm" else (state_t,),
                        state_b if cell == "lstm" else (state_b,)):
        assert_close(s_b, s_t, np.float32)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_lengths_equal_running_each_sequence_alone(backend, cell, rng):
    """A sequence of length L in a padded batch gives what it gives alone on its L steps."""
    weights = random_cell_weights(cell, 3, 5, num_layers=2, bidirectional=True, rng=2)
    cls = {"lstm": fastgate.LSTM, "gru": fastgate.GRU, "rnn": fastgate.SimpleRNN}[cell]
    layer = cls(weights, bidirectional=True, dtype=np.float64)
    x = rng.normal(size=(6, 4, 3))
    lengths = np.array([6, 2, 0, 5])
    out, state = layer(x, lengths=lengths)
    h_n = state[0] if cell == "lstm" else state
    for b, length in enumerate(lengths):
        alone, alone_state = layer(x[:length, b])
        alone_h = alone_state[0] if cell == "lstm" else alone_state
        assert_close(out[:length, b], alone, np.float64)
        assert not out[length:, b].any()
        assert_close(h_n[:, b], alone_h, np.float64)


def test_call_does_not_modify_the_callers_arrays(backend, rng):
    layer = fastgate.LSTM.random(3, 4, num_layers=2)
    x = rng.normal(size=(5, 2, 3)).astype(np.float32)
    h0, c0 = rng.normal(size=(2, 2, 4)).astype(np.float32), rng.normal(size=(2, 2, 4)).astype(
        np.float32)
    copies = [a.copy() for a in (x, h0, c0)]
    out, (h_n, c_n) = layer(x, state=(h0, c0))
    for array, copy in zip((x, h0, c0), copies):
        np.testing.assert_array_equal(array, copy)
    assert h_n is not h0 and c_n is not c0 and out.flags.writeable


# ---------------------------------------------------------------------------- backends

def test_backend_and_use_backend():
    default = fastgate.backend()
    assert default in fastgate.available_backends()
    with fastgate.use_backend("python") as name:
        assert name == "python" and fastgate.backend() == "python"
        with fastgate.use_backend("compiled"):
            assert fastgate.backend() == "compiled"
        assert fastgate.backend() == "python"
    assert fastgate.backend() == default
    with pytest.raises(KeyError):
        with fastgate.use_backend("python"):
            raise KeyError("restored even on error")
    assert fastgate.backend() == default
    with pytest.raises(BackendError):
        with fastgate.use_backend("numpy"):
            pass


def test_use_backend_is_thread_local():
    """A thread inside ``use_backend("python")`` does not change another thread's backend."""
    entered, release = threading.Event(), threading.Event()
    seen = {}

    def switcher():
        with fastgate.use_backend("python"):
            seen["switcher"] = fastgate.backend()
            entered.set()
            release.wait(10)
            seen["switcher_after"] = fastgate.backend()

    def observer():
        entered.wait(10)
        seen["observer"] = fastgate.backend()
        with fastgate.use_backend("compiled"):
            seen["observer_compiled"] = fastgate.backend()
        release.set()

    with fastgate.use_backend("compiled"):
        threads = [threading.Thread(target=switcher), threading.Thread(target=observer)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert fastgate.backend() == "compiled"
    assert seen == {"switcher": "python", "observer": fastgate.backend(),
                    "observer_compiled": "compiled", "switcher_after": "python"}


def run_python(code, **env):
    environment = subprocess_env(**env)
    if "FASTGATE_BACKEND" not in env:
        environment.pop("FASTGATE_BACKEND", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environment,
                          capture_output=True, text=True, timeout=120,
                          cwd=tempfile.gettempdir())


REPORT = """
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import fastgate
    runtime = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    print(fastgate.backend(), fastgate.available_backends(), len(runtime))
"""


def test_fastgate_backend_python_forces_the_oracle_at_import():
    result = run_python(REPORT + """
    import numpy as np
    layer = fastgate.GRU.random(3, 4)
    out, h = layer(np.ones((2, 1, 3)))
    print(out.shape)
    """, FASTGATE_BACKEND="python")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == "python ('compiled', 'python') 0", result.stdout
    assert lines[1] == "(2, 1, 4)"


def test_default_backend_at_import_is_compiled():
    result = run_python(REPORT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "compiled ('compiled', 'python') 0", result.stdout


def test_unknown_fastgate_backend_variable_is_an_error():
    result = run_python("import fastgate", FASTGATE_BACKEND="cuda")
    assert result.returncode != 0
    assert "BackendError" in result.stderr and "cuda" in result.stderr


HIDE_KERNELS = """
    import sys
    sys.modules["fastgate._kernels.recurrent"] = None  # as if the extension was never built
"""


def test_import_without_the_compiled_extension_warns_and_falls_back():
    result = run_python(HIDE_KERNELS + REPORT + """
    import numpy as np
    from fastgate.errors import BackendError
    print(runtime[0])
    try:
        with fastgate.use_backend("compiled"):
            pass
    except BackendError as error:
        print("BackendError", "not built" in str(error) or "not available" in str(error))
    layer = fastgate.LSTM.random(3, 4)
    out, (h, c) = layer(np.ones((2, 1, 3)))
    print(out.shape, h.shape)
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == "python ('python',) 1", result.stdout
    assert "compiled extension is not built" in lines[1]
    assert lines[2] == "BackendError True"
    assert lines[3] == "(2, 1, 4) (1, 1, 4)"


def test_forcing_compiled_without_the_extension_is_an_error():
    result = run_python(HIDE_KERNELS + "    import fastgate\n",
                        FASTGATE_BACKEND="compiled")
    assert result.returncode != 0
    assert "BackendError" in result.stderr and "not built" in result.stderr
