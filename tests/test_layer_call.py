"""The layers' lean call paths give what the general path and the oracle give.

``layer(x)`` with nothing but a ready input (an ndarray of the layer's dtype, C-contiguous,
aligned, in the machine's byte order) runs a lean path: with the extension built,
``RecurrentLayer.__call__`` is the compiled ``layer_call`` (the Python method's branches
without its frame) and the plan allocates and checks (``LayerPlan.run``). A call with
``lengths=`` sorts its sequences, gathers their rows and puts them back in the kernel module
(``LayerPlan.run_lengths``); without a state and with ``(B,)`` int64 lengths, ``layer_call``
goes there directly. Here every other input takes the general path with the same
results, bit for bit (the same kernels on the same values); the lean paths step aside while
this thread records a trace; and both agree with the oracle within the suite's tolerances
(float32 1e-5, float64 1e-12 absolute, on O(1) values).
"""

import inspect

import numpy as np
import pytest

import fastgate
from conftest import assert_close
from fastgate import trace as tracing
from fastgate._kernels import recurrent
from fastgate.errors import DTypeError, ShapeError
from fastgate.layers import RecurrentLayer

CELLS = {"lstm": fastgate.LSTM, "gru": fastgate.GRU, "rnn": fastgate.SimpleRNN}


def make_layer(cell, dtype=np.float32, **options):
    return CELLS[cell].random(5, 16, seed=3, dtype=dtype, **options)


def make_input(layer, batch, steps, seed=1):
    shape = (batch, steps, layer.input_size) if layer.batch_first else (
        steps, batch, layer.input_size)
    return np.random.default_rng(seed).standard_normal(shape).astype(layer.dtype)


def parts(state):
    return state if isinstance(state, tuple) else (state,)


def assert_same_result(actual, expected):
    """Outputs and every state array equal, bit for bit."""
    np.testing.assert_array_equal(actual[0], expected[0])
    assert len(parts(actual[1])) == len(parts(expected[1]))
    for got, want in zip(parts(actual[1]), parts(expected[1])):
        np.testing.assert_array_equal(got, want)


def assert_matches_oracle(layer, result, *args, **kwargs):
    with fastgate.use_backend("python"):
        expected = layer(*args, **kwargs)
    assert_close(result[0], expected[0], layer.dtype, what="out")
    for got, want in zip(parts(result[1]), parts(expected[1])):
        assert_close(got, want, layer.dtype, what="state")


def python_call(layer, *args, **kwargs):
    """The Python ``__call__`` that the compiled one replaces."""
    return RecurrentLayer.__call__.__wrapped__(layer, *args, **kwargs)


def test_the_compiled_call_replaces_the_python_method():
    assert RecurrentLayer.__call__ is recurrent.layer_call
    assert fastgate.GRU.__call__ is recurrent.layer_call
    assert RecurrentLayer.__call__.__doc__ == RecurrentLayer.__call__.__wrapped__.__doc__
    assert RecurrentLayer.__call__.__doc__.startswith("Run the layer over a sequence.")
    assert list(inspect.signature(RecurrentLayer.__call__).parameters) == [
        "self", "x", "state", "lengths"]


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", [{}, {"batch_first": True},
                                     {"bidirectional": True, "num_layers": 2}])
def test_lean_call_equals_the_general_call_and_the_oracle(cell, dtype, options):
    layer = make_layer(cell, dtype, **options)
    for batch, steps in ((1, 10), (3, 1), (5, 7)):
        x = make_input(layer, batch, steps)
        result = layer(x)
        assert_same_result(result, layer._general_call(x, None, None))
        assert_same_result(result, python_call(layer, x))
        assert_matches_oracle(layer, result, x)


def _misaligned(x):
    # the same values in a C-contiguous array whose data sits 1 byte off alignment
    storage = np.empty(x.nbytes + 1, np.uint8)
    view = storage[1:].view(x.dtype).reshape(x.shape)
    view[...] = x
    assert not view.flags.aligned and view.flags.c_contiguous
    return view


class _Subclass(np.ndarray):
    pass


# inputs the lean path declines: converted by the general path to the array `ready` is
DECLINED_INPUTS = {
    "float64 for float32": lambda ready: ready.astype(np.float64),
    "integers": lambda ready: np.round(ready * 4).astype(np.int16),
    "list": lambda ready: ready.tolist(),
    "non-contiguous": lambda ready: np.repeat(ready, 2, axis=-1)[..., ::2],
    "Fortran order": np.asfortranarray,
    "big-endian": lambda ready: ready.astype(ready.dtype.newbyteorder(">")),
    "misaligned": _misaligned,
    "ndarray subclass": lambda ready: ready.view(_Subclass),
}


@pytest.mark.parametrize("kind", sorted(DECLINED_INPUTS))
def test_inputs_the_lean_path_declines_are_converted(kind):
    layer = make_layer("lstm", batch_first=True)
    given = DECLINED_INPUTS[kind](make_input(layer, 3, 6))
    ready = np.ascontiguousarray(np.asarray(given), dtype=layer.dtype)
    assert layer._plan.run(given) is None
    assert_same_result(layer(given), layer(ready))
    assert_same_result(layer(given), python_call(layer, given))


@pytest.mark.parametrize("kind", ["big-endian", "misaligned"])
def test_a_streaming_step_converts_what_its_lean_path_cannot_read(kind):
    """Before the lean paths checked byte order and alignment, a '>f4' input or state was
    read as native floats: a wrong answer (the same check guards LayerPlan.step)."""
    layer = make_layer("lstm")
    frame = make_input(layer, 3, 1)[0]
    h, c = layer.initial_state(3)
    state = (h + 0.25, c - 0.5)
    expected = layer.step(frame, state)
    odd = DECLINED_INPUTS[kind]
    assert_same_result(layer.step(odd(frame), state), expected)
    assert_same_result(layer.step(frame, (odd(state[0]), odd(state[1]))), expected)


def test_unbatched_input_and_given_state_take_the_general_path():
    layer = make_layer("gru")
    x = make_input(layer, 1, 8)
    out, h_n = layer(x[:, 0])
    full_out, full_h = layer(x)
    np.testing.assert_array_equal(out, full_out[:, 0])
    np.testing.assert_array_equal(h_n, full_h[:, 0])
    h0 = np.random.default_rng(5).uniform(-1, 1, (1, 1, 16)).astype(np.float32)
    result = layer(x, h0)
    assert_same_result(result, python_call(layer, x, h0))
    assert_matches_oracle(layer, result, x, h0)
    assert_same_result(layer(x, np.zeros_like(h0)), (full_out, full_h))


def test_the_python_backend_runs_the_oracle_through_the_compiled_call():
    layer = make_layer("lstm")
    x = make_input(layer, 2, 5)
    h0, c0 = layer._state.to_kernel(None, 2)
    out = layer._oracle.forward(x, h0, c0, None, False, False)
    lengths = np.array([2, 5])
    with fastgate.use_backend("python"):
        assert_same_result(layer(x), (out, (h0, c0)))
        assert_same_result(layer(x), python_call(layer, x))
        ragged = layer(x, lengths=lengths)
        assert_same_result(ragged, python_call(layer, x, lengths=lengths))
    assert not np.array_equal(ragged[0], out)   # (the oracle's, with the lengths)
    assert_matches_oracle(layer, layer(x, lengths=lengths), x, lengths=lengths)


def test_errors_are_those_of_the_python_method():
    layer = make_layer("lstm")
    for bad, error in ((np.zeros((4, 2, 3), np.float32), ShapeError),
                       (np.zeros((4, 2, 5), complex), DTypeError),
                       (np.zeros(5, np.float32), ShapeError)):
        with pytest.raises(error) as compiled:
            layer(bad)
        with pytest.raises(error) as python:
            python_call(layer, bad)
        assert str(compiled.value) == str(python.value)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_a_recording_trace_takes_the_general_path(cell):
    layer = make_layer(cell, bidirectional=True)
    x = make_input(layer, 2, 6)
    expected = layer(x)
    lengths = np.array([6, 3])
    expected_ragged = layer(x, lengths=lengths)
    with tracing.Recorder() as recorder:
        traced = layer(x)
        traced_ragged = layer(x, lengths=lengths)
    assert_same_result(traced, expected)
    # (a traced ragged call runs the mask unsorted: the same values to rounding)
    assert_close(traced_ragged[0], expected_ragged[0], layer.dtype)
    assert_close(traced_ragged[1], expected_ragged[1], layer.dtype)
    assert len(recorder.records) == 2   # the calls went through forward, which recorded them
    trace = layer.trace(x)
    assert [entry.direction for entry in trace.layers] == ["forward", "reverse"]
    out_batch_major = np.swapaxes(expected[0], 0, 1)   # (B, T, 2H)
    assert_close(trace.layers[0].gates["h"], out_batch_major[..., :16], layer.dtype)
    assert_close(trace.layers[1].gates["h"], out_batch_major[..., 16:], layer.dtype)


@pytest.mark.parametrize("dtype, batch", [(np.float32, 21), (np.float32, 22),
                                          (np.float64, 10), (np.float64, 11)])
def test_workspace_on_the_stack_and_on_the_heap(dtype, batch):
    """A call's workspace up to 8 KiB lives on the stack: (B, 3H) values for one LSTM layer
    of H=32 fit at B=21 (float32) and B=10 (float64), not at B=22 and B=11."""
    layer = fastgate.LSTM.random(5, 32, seed=4, dtype=dtype)
    x = make_input(layer, batch, 6)
    assert_matches_oracle(layer, layer(x), x)


def test_threads_calling_at_once_get_their_own_results():
    """The lean call from 4 threads at once (then the kernel runs without the GIL) gives
    each call what it gives alone (a process of one Python thread keeps the GIL through a
    call this small: most other tests run that way)."""
    from concurrent.futures import ThreadPoolExecutor

    layer = fastgate.LSTM.random(5, 32, seed=6)
    inputs = [make_input(layer, 1, 10, seed=seed) for seed in range(8)]
    alone = [layer(x) for x in inputs]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(layer, inputs * 4))
    for k, result in enumerate(together):
        assert_same_result(result, alone[k % len(inputs)])
    assert_matches_oracle(layer, alone[0], inputs[0])


# ----------------------------------------------------------------------------- lengths=
def sorted_reference(layer, x, lengths, state=None):
    """The ragged call as fastgate.layers ran it in NumPy before run_lengths: sorted longest
    first (stable), rows gathered, LayerPlan.forward with active_rows and output_rows, final
    states put back."""
    lengths = np.asarray(lengths).astype(np.int64)
    batch_axis = 0 if layer.batch_first else 1
    steps = x.shape[1 - batch_axis]
    h0, c0 = layer._state.to_kernel(state, x.shape[batch_axis])
    order = np.argsort(-lengths, kind="stable")
    mask = (np.arange(steps)[:, None] < lengths[None, :])[:, order]
    out = layer._plan.forward(
        np.ascontiguousarray(np.take(x, order, axis=batch_axis)),
        np.ascontiguousarray(h0[:, order]),
        None if c0 is None else np.ascontiguousarray(c0[:, order]),
        np.ascontiguousarray(mask, dtype=np.uint8), layer.batch_first, False, 0, False, None,
        np.count_nonzero(mask, axis=1).astype(np.intp), order.astype(np.intp))
    return out


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", [{}, {"batch_first": True},
                                     {"bidirectional": True, "num_layers": 2}])
def test_lengths_call_matches_the_numpy_sorting_and_the_oracle(cell, dtype, options):
    layer = make_layer(cell, dtype, **options)
    rng = np.random.default_rng(8)
    for lengths in ([7, 3, 7, 0, 5, 1], [0, 7, 7, 2, 2, 6], [7, 6, 4, 4, 1, 0], [0] * 6,
                    [7] * 6):
        x = make_input(layer, 6, 7, seed=len(lengths) + lengths[0])
        h0 = rng.uniform(-1, 1, (layer.num_layers * layer.num_directions, 6,
                                 layer.output_size)).astype(dtype)
        state = (h0, h0 * 0.5) if cell == "lstm" else h0
        lengths = np.array(lengths)
        for given in (None, state):
            result = layer(x, given, lengths)
            np.testing.assert_array_equal(result[0], sorted_reference(layer, x, lengths, given))
            assert_matches_oracle(layer, result, x, given, lengths)
            assert_same_result(layer(x, given, lengths.tolist()), result)
            assert_same_result(python_call(layer, x, given, lengths), result)


def test_lengths_of_any_integer_form_give_the_same_result():
    layer = make_layer("lstm", batch_first=True)
    x = make_input(layer, 4, 9)
    expected = layer(x, lengths=np.array([9, 2, 5, 5]))
    for lengths in ([9, 2, 5, 5], np.array([9, 2, 5, 5], np.int32),
                    np.array([9, 2, 5, 5], np.uint8), np.array([9.0, 2.0, 5.0, 5.0]),
                    np.array([9, 0, 2, 0, 5, 0, 5, 0])[::2],
                    np.array([9, 2, 5, 5], ">i8")):
        assert_same_result(layer(x, lengths=lengths), expected)


def test_lengths_errors_are_unchanged():
    layer = make_layer("gru")
    x = make_input(layer, 3, 4)
    cases = [([1, 2], ShapeError, r"lengths: expected shape \(3,\), got \(2,\)"),
             ([1, 2, 5], ShapeError, r"lengths must lie in \[0, 4\] \(the number of steps\), "
                                     r"got min 1 and max 5"),
             ([1, -1, 2], ShapeError, r"got min -1 and max 2"),
             ([1.5, 2, 3], DTypeError, "lengths must be integers, got dtype float64")]
    for lengths, error, message in cases:
        with pytest.raises(error, match=message):
            layer(x, lengths=lengths)


def test_lengths_on_empty_batches_and_sequences():
    layer = make_layer("lstm", bidirectional=True)
    for batch, steps in ((0, 5), (3, 0)):
        x = make_input(layer, batch, steps)
        out, (h_n, c_n) = layer(x, lengths=np.zeros(batch, np.int64))
        assert out.shape == (steps, batch, 32) and h_n.shape == (2, batch, 16)
        assert not h_n.any() and not c_n.any()


def test_run_lengths_declines_lengths_it_cannot_read():
    layer = make_layer("rnn")
    plan = layer._plan
    x = make_input(layer, 3, 4)
    h0, _ = layer._state.to_kernel(None, 3)
    for lengths in (np.array([1, 2, 5]), np.array([1, -1, 2]), np.array([1, 2], np.int64),
                    np.array([1, 2, 3], np.int32), [1, 2, 3]):
        assert plan.run_lengths(x, h0, None, lengths, False) is None
    with pytest.raises(ValueError, match="h_state does not match"):
        plan.run_lengths(x, h0[:, :2], None, np.array([1, 2, 3]), False)
