"""Bad input raises the documented fastgate errors; odd but valid input never crashes.

Every test runs under both backends (the compiled one must be built: a missing build fails
these tests rather than skipping them). Tolerance where values are compared across backends:
float32 1e-5, float64 1e-12 (see conftest).
"""

import numpy as np
import pytest

import fastgate
from conftest import assert_close, random_cell_weights
from fastgate.errors import (BackendError, ConfigError, DTypeError, FastgateError, InputError,
                             ShapeError)

BACKENDS = ["python", "compiled"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    with fastgate.use_backend(request.param):
        yield request.param


def make(cell="lstm", *, num_layers=2, bidirectional=True, proj_size=0, dtype=np.float32,
         batch_first=False, input_size=3, hidden_size=4, **options):
    weights = random_cell_weights(cell, input_size, hidden_size, num_layers=num_layers,
                                  bidirectional=bidirectional, proj_size=proj_size, rng=0)
    cls = {"lstm": fastgate.LSTM, "gru": fastgate.GRU, "rnn": fastgate.SimpleRNN}[cell]
    return cls(weights, bidirectional=bidirectional, dtype=dtype, batch_first=batch_first,
               **options)


def test_error_hierarchy():
    """Errors also derive from the matching built-in, so NumPy-style handlers keep working."""
    assert issubclass(ShapeError, InputError) and issubclass(InputError, ValueError)
    assert issubclass(DTypeError, ShapeError) and issubclass(DTypeError, TypeError)
    assert issubclass(ConfigError, ValueError) and issubclass(BackendError, RuntimeError)
    for error in (ShapeError, DTypeError, ConfigError, BackendError):
        assert issubclass(error, FastgateError)


# ---------------------------------------------------------------------------- input

@pytest.mark.parametrize("shape", [(3,), (), (2, 2, 2, 3), (1, 1, 1, 1, 3)])
def test_wrong_rank(backend, shape):
    with pytest.raises(ShapeError, match=r"input: expected \(T, B, D\)"):
        make()(np.zeros(shape, np.float32))


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("shape", [(5, 2, 4), (5, 2, 2), (5, 0), (5, 2, 0)])
def test_wrong_input_width(backend, shape, batch_first):
    with pytest.raises(ShapeError, match=r"D=3, got shape"):
        make(batch_first=batch_first)(np.zeros(shape, np.float32))


@pytest.mark.parametrize("value", [
    np.zeros((5, 2, 3), np.complex64),
    np.zeros((5, 2, 3), object),
    np.full((5, 2, 3), "a"),
    np.zeros((5, 2, 3), "datetime64[s]"),
    [[["a", "b", "c"]]],
], ids=["complex", "object", "str", "datetime", "nested-str"])
def test_unconvertible_dtype(backend, value):
    with pytest.raises(DTypeError, match="must hold real numbers"):
        make()(value)


@pytest.mark.parametrize("layer_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("input_dtype", [np.int8, np.int64, np.uint16, np.bool_, np.float16,
                                         np.float32, np.float64])
def test_convertible_dtypes_are_converted(backend, layer_dtype, input_dtype, rng):
    layer = make(dtype=layer_dtype)
    x = (rng.integers(-2, 3, size=(5, 2, 3))).astype(input_dtype)
    out, (h_n, c_n) = layer(x)
    assert out.dtype == h_n.dtype == c_n.dtype == layer_dtype
    expected, _ = layer(x.astype(np.float64).astype(layer_dtype))
    np.testing.assert_array_equal(out, expected)
    listed, _ = layer(x.tolist())  # nested lists are arrays too
    np.testing.assert_array_equal(listed, expected)


# ---------------------------------------------------------------------------- state

def test_lstm_state_must_be_a_pair(backend):
    layer = make()
    h0 = np.zeros((4, 2, 4), np.float32)
    for state in (h0, (h0,), (h0, h0, h0), [h0]):
        with pytest.raises(ShapeError, match=r"expected a pair \(h0, c0\)"):
            layer(np.zeros((5, 2, 3)), state=state)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("bad", ["rows", "batch", "width", "rank"])
def test_state_of_wrong_shape(backend, cell, bad):
    layer = make(cell, proj_size=2 if cell == "lstm" else 0)  # LSTM: h is (.., 2), c (.., 4)
    good = [tuple(2 if d == -1 else d for d in s) for s in layer.state_shapes]
    broken = {"rows": lambda s: (s[0] + 1,) + s[1:], "batch": lambda s: (s[0], 3, s[2]),
              "width": lambda s: s[:2] + (s[2] + 1,), "rank": lambda s: s[1:]}[bad]
    for which in range(len(good)):
        shapes = [broken(s) if k == which else s for k, s in enumerate(good)]
        arrays = [np.zeros(s, np.float32) for s in shapes]
        state = tuple(arrays) if cell == "lstm" else arrays[0]
        label = ("h0", "c0")[which]
        with pytest.raises(ShapeError, match=label + ": expected shape"):
            layer(np.zeros((5, 2, 3)), state=state)


def test_lstm_c0_has_hidden_width_not_proj_width(backend):
    layer = make(proj_size=2)
    h0 = np.zeros((4, 2, 2))
    with pytest.raises(ShapeError, match="c0"):
        layer(np.zeros((5, 2, 3)), state=(h0, np.zeros((4, 2, 2))))
    out, (h_n, c_n) = layer(np.zeros((5, 2, 3)), state=(h0, np.zeros((4, 2, 4))))
    assert h_n.shape == (4, 2, 2) and c_n.shape == (4, 2, 4) and out.shape == (5, 2, 4)


def test_state_of_complex_dtype(backend):
    with pytest.raises(DTypeError, match="h0 must hold real numbers"):
        make("gru")(np.zeros((5, 2, 3)), state=np.zeros((4, 2, 4), complex))


def test_unbatched_state_shape(backend):
    layer = make("gru")
    out, h_n = layer(np.zeros((5, 3)), state=np.zeros((4, 4)))
    assert out.shape == (5, 8) and h_n.shape == (4, 4)
    with pytest.raises(ShapeError, match=r"h0: expected shape \(4, 4\)"):
        layer(np.zeros((5, 3)), state=np.zeros((4, 5)))


# ---------------------------------------------------------------------------- lengths

@pytest.mark.parametrize("lengths", [[-1, 3], [6, 3], [0, 100]])
def test_lengths_out_of_range(backend, lengths):
    with pytest.raises(ShapeError, match=r"lengths must lie in \[0, 5\]"):
        make()(np.zeros((5, 2, 3)), lengths=lengths)


@pytest.mark.parametrize("lengths", [[3], [3, 3, 3], [[3, 3]], 3, []])
def test_lengths_of_wrong_shape(backend, lengths):
    with pytest.raises(ShapeError, match=r"lengths: expected shape \(2,\)"):
        make()(np.zeros((5, 2, 3)), lengths=lengths)


@pytest.mark.parametrize("lengths", [[1.5, 3], ["a", "b"], [True, False], [np.nan, 1],
                                     np.array([1, 2], complex)])
def test_lengths_not_integers(backend, lengths):
    with pytest.raises(DTypeError, match="lengths must be integers"):
        make()(np.zeros((5, 2, 3)), lengths=lengths)


def test_integral_float_lengths_are_accepted(backend, rng):
    layer = make()
    x = rng.normal(size=(5, 2, 3))
    out, _ = layer(x, lengths=np.array([2.0, 5.0]))
    expected, _ = layer(x, lengths=np.array([2, 5], np.uint8))
    np.testing.assert_array_equal(out, expected)


# ---------------------------------------------------------------------------- construction

@pytest.mark.parametrize("index, field, layer_name, direction", [
    (0, "input_bias", "layer 0", "forward"),
    (1, "recurrent_kernel", "layer 0", "reverse"),
    (2, "input_kernel", "layer 1", "forward"),
    (3, "recurrent_bias", "layer 1", "reverse"),
    (3, "projection", "layer 1", "reverse"),
])
def test_bad_weight_shape_names_layer_direction_and_tensor(index, field, layer_name,
                                                           direction):
    weights = random_cell_weights("lstm", 3, 4, num_layers=2, bidirectional=True, proj_size=2)
    value = getattr(weights[index], field)
    weights[index] = weights[index]._replace(**{field: np.zeros(value.shape[:-1] + (
        value.shape[-1] + 1,))})
    with pytest.raises(ShapeError) as raised:
        fastgate.LSTM(weights, bidirectional=True)
    message = str(raised.value)
    assert f"{layer_name} {direction}" in message and field in message, message
    assert "expected" in message


def test_bad_first_input_kernel():
    weights = random_cell_weights("gru", 3, 4)
    weights[0] = weights[0]._replace(input_kernel=np.zeros((3, 13)))  # 13 is not 3 * H
    with pytest.raises(ShapeError, match="layer 0 forward: input_kernel"):
        fastgate.GRU(weights)
    weights[0] = weights[0]._replace(input_kernel=np.zeros(12))
    with pytest.raises(ShapeError, match="input_kernel"):
        fastgate.GRU(weights)


def test_bad_weights_container_and_count():
    weights = random_cell_weights("rnn", 3, 4, num_layers=3)
    with pytest.raises(ConfigError, match="multiple of 2"):
        fastgate.SimpleRNN(weights, bidirectional=True)
    with pytest.raises(ConfigError, match="list of CellWeights"):
        fastgate.SimpleRNN(weights[0])
    with pytest.raises(ConfigError, match="positive multiple"):
        fastgate.SimpleRNN([])
    with pytest.raises(ConfigError, match="unknown weight names"):
        fastgate.SimpleRNN([dict(weights[0]._asdict(), kernel=1)])
    with pytest.raises(ConfigError, match="expected CellWeights"):
        fastgate.SimpleRNN(["not weights"])
    with pytest.raises(DTypeError, match="input_kernel must hold real numbers"):
        fastgate.SimpleRNN([weights[0]._replace(input_kernel=weights[0].input_kernel + 0j)])


def test_projection_everywhere_or_nowhere():
    weights = random_cell_weights("lstm", 3, 4, num_layers=2, proj_size=2)
    weights[1] = weights[1]._replace(projection=None)
    with pytest.raises(ConfigError, match="projection"):
        fastgate.LSTM(weights)
    gru_weights = random_cell_weights("gru", 3, 4)
    gru_weights[0] = gru_weights[0]._replace(projection=np.zeros((4, 2)))
    with pytest.raises(ConfigError, match="only LSTM supports a projection"):
        fastgate.GRU(gru_weights)


@pytest.mark.parametrize("option", [dict(activation="tanhh"), dict(recurrent_activation="relu6"),
                                    dict(activation="softmax")])
def test_unknown_activation(option):
    with pytest.raises(ConfigError, match="unknown activation"):
        fastgate.LSTM(random_cell_weights("lstm", 3, 4), **option)


@pytest.mark.parametrize("dtype", [np.float16, np.int32, "complex64", "not a dtype", object])
def test_unsupported_layer_dtype(dtype):
    with pytest.raises(ConfigError, match="dtype must be float32 or float64"):
        fastgate.GRU(random_cell_weights("gru", 3, 4), dtype=dtype)


@pytest.mark.parametrize("name", ["gpu", "Compiled", "", None])
def test_unknown_backend(name):
    with pytest.raises(BackendError, match="unknown backend"):
        with fastgate.use_backend(name):
            pass


# ---------------------------------------------------------------------------- never a crash

@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [3, 8])  # 8: the kernels' vector paths for several rows
def test_nan_and_inf_pass_through_as_ieee(backend, cell, dtype, batch, rng):
    """A NaN poisons its own sequence from its step on, and no other sequence."""
    layer = make(cell, bidirectional=False, dtype=dtype)
    x = rng.normal(size=(6, batch, 3)).astype(dtype)
    x[2, 0, 1] = np.nan
    x[4, 1, 0] = np.inf
    x[1, 2, 2] = -np.inf
    with np.errstate(all="ignore"):
        out, state = layer(x)
        with fastgate.use_backend("python"):
            expected, expected_state = layer(x)
    assert np.isnan(out[2:, 0]).all() and not np.isnan(out[:2, 0]).any()
    for b in range(1, batch):  # +-inf through saturating gates: IEEE arithmetic, like the oracle
        np.testing.assert_array_equal(np.isnan(out[:, b]), np.isnan(expected[:, b]))
    clean = np.isfinite(expected)
    assert_close(np.where(clean, out, 0), np.where(clean, expected, 0), dtype)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_no_steps(backend, cell, batch_first, rng):
    """T = 0: empty outputs of the right shape; the final state is the initial state."""
    layer = make(cell, proj_size=2 if cell == "lstm" else 0, batch_first=batch_first)
    shapes = [tuple(3 if d == -1 else d for d in s) for s in layer.state_shapes]
    arrays = [rng.normal(size=s).astype(np.float32) for s in shapes]
    state = tuple(arrays) if cell == "lstm" else arrays[0]
    x = np.zeros((3, 0, 3) if batch_first else (0, 3, 3), np.float32)
    out, final = layer(x, state=state, lengths=[0, 0, 0])
    width = 2 * layer.output_size
    assert out.shape == ((3, 0, width) if batch_first else (0, 3, width))
    finals = final if cell == "lstm" else (final,)
    for got, initial in zip(finals, arrays):
        np.testing.assert_array_equal(got, initial)
    out, final = layer(np.zeros((0, 3)))  # unbatched, no steps
    assert out.shape == (0, width)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_empty_batch(backend, cell, batch_first):
    layer = make(cell, batch_first=batch_first)
    x = np.zeros((0, 5, 3) if batch_first else (5, 0, 3), np.float32)
    out, final = layer(x, lengths=np.zeros(0, int))
    assert out.shape == ((0, 5, 8) if batch_first else (5, 0, 8))
    finals = final if cell == "lstm" else (final,)
    for got, shape in zip(finals, layer.state_shapes):
        assert got.shape == (shape[0], 0, shape[2])


def test_zero_lengths_keep_initial_state_and_give_zero_outputs(backend, rng):
    layer = make("lstm")
    x = rng.normal(size=(5, 2, 3))
    h0, c0 = rng.normal(size=(4, 2, 4)), rng.normal(size=(4, 2, 4))
    out, (h_n, c_n) = layer(x, state=(h0, c0), lengths=[0, 5])
    assert not out[:, 0].any()
    assert_close(h_n[:, 0], h0[:, 0], np.float32)
    assert_close(c_n[:, 0], c0[:, 0], np.float32)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_large_valid_shapes(backend, cell, rng):
    """Wide inputs, long sequences, a big batch: no crash, finite, matches the oracle."""
    cases = [dict(steps=1, batch=1, input_size=3000, hidden_size=300),
             dict(steps=400, batch=2, input_size=2, hidden_size=3),
             dict(steps=3, batch=1500, input_size=5, hidden_size=7)]
    for case in cases:
        layer = make(cell, num_layers=1, bidirectional=True, input_size=case["input_size"],
                     hidden_size=case["hidden_size"])
        x = rng.normal(size=(case["steps"], case["batch"], case["input_size"]))
        x = x.astype(np.float32) / np.sqrt(case["input_size"])
        out, _ = layer(x)
        with fastgate.use_backend("python"):
            expected, _ = layer(x)
        assert np.isfinite(out).all()
        assert_close(out, expected, np.float32)
