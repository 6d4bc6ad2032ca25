"""The streaming API: ``state = obj.initial_state(B)``, ``y, state = obj.step(x, state)``.

The one property everything here checks: feeding a sequence step by step, or chunk by chunk
(uneven chunks, chunks of one step), gives what one call on the whole sequence gives, for
layers (LSTM/GRU/SimpleRNN, stacked, projected), cells, and :class:`fastgate.Model` (built
from ops, imported from Keras files, with Dense heads, masking, return_state), in float32
and float64. Tolerances: the streamed and the full computation run the same kernels on the
same numbers, so they agree to rounding of the summation order (float32 1e-5 absolute on
O(1) values, float64 1e-12). Also: the ops that need the whole sequence raise a
ConfigError naming the op, states are plain picklable arrays and are never modified.
"""

from __future__ import annotations

import os
import pickle

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fastgate  # noqa: E402
from fastgate import ConfigError, ShapeError  # noqa: E402
from fastgate.ops import (Activation, Bidirectional, Dense, Embedding, Flatten,  # noqa: E402
                          GlobalPooling1D, Masking, Recurrent, RepeatVector)

from conftest import TOLERANCE, random_cell_weights  # noqa: E402

LAYERS = {"lstm": fastgate.LSTM, "gru": fastgate.GRU, "rnn": fastgate.SimpleRNN}
CELLS = {"lstm": fastgate.LSTMCell, "gru": fastgate.GRUCell, "rnn": fastgate.RNNCell}
DTYPES = (np.float32, np.float64)
#: Ways of cutting 11 steps: one at a time, uneven chunks, everything at once.
SPLITS = {"steps": list(range(12)), "chunks": [0, 1, 4, 5, 9, 11], "whole": [0, 11]}
STEPS = 11


def close(actual, expected, dtype, what=""):
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCE[np.dtype(dtype)],
                               err_msg=what)


def stream(obj, x, bounds, state=None, *, single_steps=False):
    """Feed ``x`` (B, T, ...) to ``obj.step`` cut at ``bounds``; returns the outputs and state.

    With ``single_steps`` each piece of one step is fed as ``x[:, t]`` (no steps axis).
    """
    if state is None:
        state = obj.initial_state(x.shape[0])
    outputs = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if single_steps and stop - start == 1:
            y, state = obj.step(x[:, start], state)
            y = y[:, None] if isinstance(y, np.ndarray) else [part[:, None] for part in y]
        else:
            y, state = obj.step(x[:, start:stop], state)
        outputs.append(y)
    return outputs, state


def layer_with(cell, dtype, rng, *, num_layers=1, proj_size=0, batch_first=False):
    weights = random_cell_weights(cell, 3, 6, num_layers=num_layers, proj_size=proj_size,
                                  rng=rng, dtype=dtype)
    return LAYERS[cell](weights, dtype=dtype, batch_first=batch_first)


# ------------------------------------------------------------------------------ layers
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("cell,num_layers,proj_size", [
    (cell, layers, 0) for cell in LAYERS for layers in (1, 2)] + [("lstm", 2, 4)])
def test_layer_streaming_matches_a_full_call(cell, num_layers, proj_size, split, dtype, rng):
    layer = layer_with(cell, dtype, rng, num_layers=num_layers, proj_size=proj_size,
                       batch_first=True)
    x = rng.normal(size=(3, STEPS, 3)).astype(dtype)
    full, final = layer(x)
    outputs, state = stream(layer, x, SPLITS[split], single_steps=True)
    close(np.concatenate(outputs, axis=1), full, dtype, "outputs")
    for got, want in zip(state if cell == "lstm" else (state,),
                         final if cell == "lstm" else (final,)):
        close(got, want, dtype, "final state")


@pytest.mark.parametrize("cell", list(LAYERS))
def test_layer_step_is_batch_major_whatever_batch_first_says(cell, rng):
    layer = layer_with(cell, np.float64, rng, batch_first=False)
    x = rng.normal(size=(STEPS, 2, 3))  # time-major, as the call expects
    full, _ = layer(x)
    outputs, _ = stream(layer, x.transpose(1, 0, 2), SPLITS["chunks"])
    close(np.concatenate(outputs, axis=1), full.transpose(1, 0, 2), np.float64)


def test_bidirectional_layer_cannot_stream(rng):
    layer = fastgate.GRU(random_cell_weights("gru", 3, 4, bidirectional=True, rng=rng),
                         bidirectional=True)
    with pytest.raises(ConfigError, match="bidirectional"):
        layer.step(np.zeros((1, 3)), None)


# ------------------------------------------------------------------------------- cells
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", list(CELLS))
def test_cell_step_matches_calling_the_cell(cell, dtype, rng):
    weights = random_cell_weights(cell, 3, 5, rng=rng, dtype=dtype)[0]
    cell_op = CELLS[cell](weights, dtype=dtype)
    x = rng.normal(size=(2, STEPS, 3)).astype(dtype)
    state = cell_op.initial_state(2)
    expected_state, expected = state, []
    for t in range(STEPS):
        expected_state = cell_op(x[:, t], expected_state)
        expected.append(expected_state[0] if cell == "lstm" else expected_state)
    for split in ("steps", "chunks"):
        outputs, final = stream(cell_op, x, SPLITS[split], single_steps=True)
        close(np.concatenate(outputs, axis=1), np.stack(expected, axis=1), dtype, split)
        for got, want in zip(final if cell == "lstm" else (final,),
                             expected_state if cell == "lstm" else (expected_state,)):
            assert got.shape == (2, 5)
            close(got, want, dtype, "final state")


def test_cell_state_shapes_and_errors(rng):
    cell = fastgate.LSTMCell(random_cell_weights("lstm", 3, 5, rng=rng)[0])
    h, c = cell.initial_state(4)
    assert h.shape == c.shape == (4, 5) and not h.any()
    with pytest.raises(ShapeError, match="pair"):
        cell.step(np.zeros((4, 3)), h)
    with pytest.raises(ShapeError, match=r"\(4, 5\)"):
        cell.step(np.zeros((4, 3)), (h[:2], c[:2]))
    with pytest.raises(ShapeError, match="step input"):
        cell.step(np.zeros((4, 7)), (h, c))


def test_dense_and_embedding_have_the_step_signature(rng):
    dense = Dense(rng.normal(size=(3, 2)), rng.normal(size=2))
    x = rng.normal(size=(4, 3))
    y, state = dense.step(x, dense.initial_state(4))
    assert state == ()
    np.testing.assert_array_equal(y, dense(x))
    embedding = Embedding(rng.normal(size=(10, 3)))
    ids = np.array([1, 9, 0], dtype=np.int64)
    y, state = embedding.step(ids, embedding.initial_state(3))
    np.testing.assert_array_equal(y, embedding(ids))


# ------------------------------------------------------------------------------- models
def recurrent_op(cell, input_size, units, dtype, rng, **options):
    weights = random_cell_weights(cell, input_size, units, rng=rng, dtype=dtype)
    return Recurrent(LAYERS[cell](weights, dtype=dtype, batch_first=True), **options)


def stacked_model(cells, dtype, rng, *, last_sequences=True, masking=False,
                  zero_output_for_mask=False, return_state=False):
    """[Masking] -> Recurrent(cells[0]) -> ... -> Dense(tanh) -> Dense -> [softmax]."""
    nodes, width = [], 3
    if masking:
        nodes.append(("masking", Masking(0.0, dtype=dtype), (len(nodes) - 1, 0)))
    for k, cell in enumerate(cells):
        last = k == len(cells) - 1
        nodes.append((f"rnn{k}", recurrent_op(
            cell, width, 5 + k, dtype, rng, return_sequences=last_sequences or not last,
            zero_output_for_mask=zero_output_for_mask, return_state=return_state and last),
            (len(nodes) - 1, 0)))
        width = 5 + k
    recurrent_node = len(nodes) - 1
    nodes.append(("hidden", Dense(rng.normal(0, 0.3, (width, 4)), rng.normal(0, 0.3, 4),
                                  activation="tanh", dtype=dtype), (recurrent_node, 0)))
    nodes.append(("logits", Dense(rng.normal(0, 0.3, (4, 3)), dtype=dtype),
                  (len(nodes) - 1, 0)))
    nodes.append(("softmax", Activation("softmax", dtype=dtype), (len(nodes) - 1, 0)))
    outputs = [(len(nodes) - 1, 0)]
    if return_state:
        states = 2 if cells[-1] == "lstm" else 1
        outputs += [(recurrent_node, 1 + k) for k in range(states)]
    return fastgate.Model(nodes, outputs, input_shape=(None, None, 3))


def padded_inputs(rng, batch=4, steps=STEPS, width=3):
    x = rng.normal(size=(batch, steps, width)).astype(np.float32)
    x[0, steps - 3:] = 0      # post-padding
    x[1, :4] = 0              # pre-padding, across the first chunk boundaries
    x[2, 4:6] = 0             # a hole spanning a chunk boundary
    x[3, :] = 0               # nothing valid
    return x


def check_sequence_model(model, x, dtype):
    full = model(x)
    for split, bounds in SPLITS.items():
        outputs, _ = stream(model, x, bounds, single_steps=True)
        close(np.concatenate(outputs, axis=1), full, np.float32, split)


CELL_STACKS = [("lstm",), ("gru",), ("rnn",), ("lstm", "gru"), ("gru", "rnn", "lstm")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cells", CELL_STACKS, ids="-".join)
def test_model_sequence_output_streams_like_a_full_call(cells, dtype, rng):
    model = stacked_model(cells, dtype, rng)
    check_sequence_model(model, rng.normal(size=(3, STEPS, 3)), dtype)


@pytest.mark.parametrize("zero_output_for_mask", [False, True])
@pytest.mark.parametrize("cells", [("lstm",), ("gru", "lstm"), ("rnn", "gru")], ids="-".join)
def test_masked_model_streams_like_a_full_call(cells, zero_output_for_mask, rng):
    model = stacked_model(cells, np.float32, rng, masking=True,
                          zero_output_for_mask=zero_output_for_mask)
    check_sequence_model(model, padded_inputs(rng), np.float32)


@pytest.mark.parametrize("masking", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cells", [("lstm",), ("gru",), ("rnn",), ("lstm", "gru")],
                         ids="-".join)
def test_last_step_model_gives_the_output_after_the_steps_fed(cells, dtype, masking, rng):
    model = stacked_model(cells, dtype, rng, last_sequences=False, masking=masking,
                          return_state=True)
    x = padded_inputs(rng) if masking else rng.normal(size=(3, STEPS, 3)).astype(np.float32)
    for split, bounds in SPLITS.items():
        state = model.initial_state(x.shape[0])
        for start, stop in zip(bounds[:-1], bounds[1:]):
            got, state = model.step(x[:, start:stop], state)
            want = model(x[:, :stop])  # the full call on everything fed so far
            assert len(got) == len(want)
            for part_got, part_want in zip(got, want):
                close(part_got, part_want, np.float32, f"{split}, after {stop} steps")


def token_model(rng, *, mask_zero=True):
    table = rng.normal(0, 0.3, (20, 4)).astype(np.float32)
    nodes = [("embedding", Embedding(table, mask_zero=mask_zero), (-1, 0)),
             ("lstm", recurrent_op("lstm", 4, 6, np.float32, rng, return_sequences=True),
              (0, 0)),
             ("gru", recurrent_op("gru", 6, 5, np.float32, rng, return_sequences=True), (1, 0)),
             ("head", Dense(rng.normal(0, 0.3, (5, 2)), activation="sigmoid"), (2, 0))]
    return fastgate.Model(nodes, [(3, 0)], input_shape=(None, None))


@pytest.mark.parametrize("mask_zero", [True, False])
def test_token_model_streams_ids(mask_zero, rng):
    model = token_model(rng, mask_zero=mask_zero)
    ids = rng.integers(1, 20, size=(4, STEPS)).astype(np.int64)
    ids[0, 8:] = 0
    ids[1, :5] = 0
    ids[2, 3:6] = 0
    check_sequence_model(model, ids, np.float32)
    y, state = model.step(ids[:, 0], model.initial_state(4))  # one step: ids of shape (B,)
    assert y.shape == (4, 2)


# ------------------------------------------------------------------- states and errors
def test_state_is_plain_arrays_that_survive_pickling_and_are_not_modified(rng):
    model = stacked_model(("lstm", "gru"), np.float32, rng, masking=True)
    x = padded_inputs(rng)
    full = model(x)
    first, state = model.step(x[:, :5], model.initial_state(4))
    assert isinstance(state, tuple) and len(state) == 2
    assert all(isinstance(part, np.ndarray) for entry in state for part in entry)
    assert [len(entry) for entry in state] == [3, 2]   # (h, c, output), (h, output)
    parked = pickle.dumps(state)                       # a service parks the session...
    snapshot = [part.copy() for entry in state for part in entry]
    rest, _ = model.step(x[:, 5:], pickle.loads(parked))  # ...and resumes it later
    close(np.concatenate([first, rest], axis=1), full, np.float32)
    again, _ = model.step(x[:, 5:], state)             # the same state can be used twice
    np.testing.assert_array_equal(again, rest)
    for before, after in zip(snapshot, [part for entry in state for part in entry]):
        np.testing.assert_array_equal(before, after)


def test_model_holds_no_streaming_state(rng):
    model = stacked_model(("gru",), np.float32, rng)
    x = rng.normal(size=(2, STEPS, 3))
    full = model(x)
    model.step(x[:, :3], None)  # state=None: zeros
    np.testing.assert_array_equal(model(x), full)
    interleaved_a, interleaved_b = model.initial_state(2), model.initial_state(1)
    outputs_a, outputs_b = [], []
    for t in range(STEPS):  # two sessions advanced alternately on one model
        y, interleaved_a = model.step(x[:, t], interleaved_a)
        outputs_a.append(y)
        y, interleaved_b = model.step(x[1:, t], interleaved_b)
        outputs_b.append(y)
    close(np.stack(outputs_a, axis=1), full, np.float32)
    close(np.stack(outputs_b, axis=1), full[1:], np.float32)


def test_stateful_ops_keep_their_carried_state_apart_from_streaming(rng):
    op = recurrent_op("lstm", 3, 5, np.float32, rng, return_sequences=True, stateful=True)
    model = fastgate.Model([("lstm", op, (-1, 0))], [(0, 0)])
    x = rng.normal(size=(2, 4, 3)).astype(np.float32)
    model.predict(x)
    carried = [part.copy() for part in op.states]
    streamed, _ = model.step(x, model.initial_state(2))
    for before, after in zip(carried, op.states):
        np.testing.assert_array_equal(before, after)  # step neither reads nor changes them
    model.reset_states()
    close(streamed, model.predict(x), np.float32)


@pytest.mark.parametrize("name,make", [
    ("pooling", lambda r: [("pool", GlobalPooling1D("average"), (0, 0))]),
    ("flatten", lambda r: [("flat", Flatten(), (0, 0))]),
    ("repeat", lambda r: [("last", recurrent_op("gru", 5, 4, np.float32, r), (0, 0)),
                          ("repeat", RepeatVector(3), (1, 0))]),
])
def test_ops_that_need_the_whole_sequence_refuse_to_stream(name, make, rng):
    first = ("rnn", recurrent_op("lstm", 3, 5, np.float32, rng, return_sequences=True), (-1, 0))
    nodes = [first] + make(rng)
    model = fastgate.Model(nodes, [(len(nodes) - 1, 0)])
    model(np.zeros((1, 4, 3)))  # the full call works
    op_name = nodes[-1][0]
    with pytest.raises(ConfigError, match=f"node '{op_name}'"):
        model.initial_state(1)
    with pytest.raises(ConfigError, match=f"node '{op_name}'"):
        model.step(np.zeros((1, 3)))


def test_bidirectional_and_go_backwards_refuse_to_stream(rng):
    forward = recurrent_op("gru", 3, 4, np.float32, rng, return_sequences=True)
    backward = recurrent_op("gru", 3, 4, np.float32, rng, return_sequences=True,
                            go_backwards=True)
    bidirectional = fastgate.Model([("bi", Bidirectional(forward, backward), (-1, 0))],
                                   [(0, 0)])
    with pytest.raises(ConfigError, match=r"node 'bi' \(Bidirectional\)"):
        bidirectional.step(np.zeros((1, 3)))
    backwards = fastgate.Model([("back", backward, (-1, 0))], [(0, 0)])
    with pytest.raises(ConfigError, match="go_backwards"):
        backwards.initial_state(1)


def test_flatten_after_the_last_step_streams(rng):
    nodes = [("rnn", recurrent_op("lstm", 3, 5, np.float32, rng), (-1, 0)),
             ("flat", Flatten(), (0, 0)),
             ("head", Dense(rng.normal(size=(5, 2))), (1, 0))]
    model = fastgate.Model(nodes, [(2, 0)])
    x = rng.normal(size=(2, 6, 3))
    y, _ = stream(model, x, SPLITS["chunks"][:4])
    close(y[-1], model(x[:, :5]), np.float32)


@pytest.mark.parametrize("last_sequences", [True, False])
@pytest.mark.parametrize("cells", CELL_STACKS, ids="-".join)
def test_chain_models_take_the_lean_step_and_stream_like_a_full_call(cells, last_sequences,
                                                                     rng, monkeypatch):
    # A plain chain (recurrent, Dense, Activation ops; one output) fed one float32 step runs
    # op after op (Model._chain_step), not through the graph walk: same outputs and states.
    model = stacked_model(cells, np.float32, rng, last_sequences=last_sequences)
    x = rng.normal(size=(3, STEPS, 3)).astype(np.float32)
    expected_outputs, expected_state = stream(model, x, SPLITS["whole"])
    full = model(x)

    def no_walk(*args, **kwargs):
        raise AssertionError("one float32 step of a chain must not walk the graph")

    monkeypatch.setattr(fastgate.Model, "_walk", no_walk)
    state = model.initial_state(3)
    outputs = []
    for t in range(STEPS):
        y, state = model.step(x[:, t], state)
        outputs.append(y)
    if last_sequences:
        close(np.stack(outputs, axis=1), full, np.float32, "outputs")
    else:
        close(outputs[-1], full, np.float32, "output after the last step")
    for got, want in zip(state, expected_state):
        for part_got, part_want in zip(got, want):
            close(part_got, part_want, np.float32, "state")
        assert got[-1] is not outputs[-1]  # the state does not share the returned output


def test_chain_step_refuses_what_the_general_step_refuses(rng):
    model = stacked_model(("lstm", "gru"), np.float32, rng)
    state = model.initial_state(2)
    step = np.zeros((2, 3), np.float32)
    with pytest.raises(ShapeError, match="expected features"):
        model.step(np.zeros((2, 4), np.float32), state)
    bad_last = (state[0][:2] + (np.zeros((2, 9), np.float32),), state[1])
    with pytest.raises(ShapeError, match=r"expected arrays of shape \(2, 5\), got \(2, 9\)"):
        model.step(step, bad_last)
    with pytest.raises(ShapeError, match="2 entries"):
        model.step(step, state[:1])
    # states of another dtype or as lists are converted, as by the general step
    converted = tuple([part.astype(np.float64) for part in entry] for entry in state)
    y, _ = model.step(step, converted)
    close(y, model.step(step, state)[0], np.float32, "converted state")


def test_step_input_and_state_errors(rng):
    model = stacked_model(("lstm", "gru"), np.float32, rng)
    state = model.initial_state(2)
    with pytest.raises(ShapeError, match="step input"):
        model.step(np.zeros((2, 1, 1, 3)), state)
    with pytest.raises(ShapeError, match="expected features"):
        model.step(np.zeros((2, 4)), state)
    free = fastgate.Model(model.nodes, model.outputs)  # no input_shape: the op says it
    with pytest.raises(ShapeError, match="node 'rnn0'"):
        free.step(np.zeros((2, 4)), state)
    with pytest.raises(ShapeError, match="2 entries"):
        model.step(np.zeros((2, 3)), state[:1])
    with pytest.raises(ShapeError, match=r"\(3, 5\)"):
        model.step(np.zeros((3, 3)), state)
    with pytest.raises(ConfigError, match="batch_size"):
        model.initial_state(-1)


# ----------------------------------------------------------------- imported models
@pytest.fixture(scope="module")
def keras_models(tmp_path_factory):
    """Small Keras models saved as .keras and loaded back by fastgate.load."""
    import keras

    layers = keras.layers
    rng = np.random.default_rng(7)
    built = {
        "masked_stack": keras.Sequential([
            keras.Input((None, 3)), layers.Masking(0.0),
            layers.LSTM(6, return_sequences=True), layers.GRU(5, return_sequences=True),
            layers.SimpleRNN(4, return_sequences=True),
            layers.TimeDistributed(layers.Dense(2, activation="softmax"))]),
        "classifier": keras.Sequential([
            keras.Input((STEPS, 3)), layers.GRU(6, return_sequences=True, reset_after=False),
            layers.LSTM(5), layers.Dense(3, activation="tanh"), layers.Dense(1)]),
        "tokens": keras.Sequential([
            keras.Input((None,), dtype="int32"), layers.Embedding(30, 4, mask_zero=True),
            layers.LSTM(6, return_sequences=True), layers.Dense(2)]),
    }
    loaded = {}
    for name, model in built.items():
        model.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32)
                           for w in model.get_weights()])
        path = tmp_path_factory.mktemp("keras") / f"{name}.keras"
        model.save(path)
        loaded[name] = (model, fastgate.load(path))
    return loaded


def test_keras_masked_stack_streams_like_keras(keras_models, rng):
    keras_model, model = keras_models["masked_stack"]
    x = padded_inputs(rng)
    expected = keras_model.predict(x, verbose=0)
    for split, bounds in SPLITS.items():
        outputs, _ = stream(model, x, bounds, single_steps=True)
        close(np.concatenate(outputs, axis=1), expected, np.float32, split)


def test_keras_classifier_streams_like_keras(keras_models, rng):
    keras_model, model = keras_models["classifier"]
    x = rng.normal(size=(3, STEPS, 3)).astype(np.float32)
    expected = keras_model.predict(x, verbose=0)
    state = model.initial_state(3)
    for t in range(STEPS):
        y, state = model.step(x[:, t], state)
    close(y, expected, np.float32)


def test_keras_token_model_streams_like_keras(keras_models, rng):
    keras_model, model = keras_models["tokens"]
    ids = rng.integers(1, 30, size=(3, STEPS)).astype(np.int32)
    ids[0, 6:] = 0
    ids[1, :3] = 0
    expected = keras_model.predict(ids, verbose=0)
    outputs, _ = stream(model, ids, SPLITS["steps"], single_steps=True)
    close(np.concatenate(outputs, axis=1), expected, np.float32)


@pytest.mark.parametrize("module", ["LSTM", "GRU", "RNN"])
def test_torch_import_streams_like_torch(module, rng):
    import torch

    torch.manual_seed(0)
    net = getattr(torch.nn, module)(3, 6, num_layers=2, batch_first=True)
    layer = fastgate.from_torch(net)
    x = rng.normal(size=(2, STEPS, 3)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x))[0].numpy()
    outputs, _ = stream(layer, x, SPLITS["chunks"], single_steps=True)
    close(np.concatenate(outputs, axis=1), expected, np.float32)


@pytest.mark.parametrize("backend", fastgate.available_backends())
def test_streaming_on_every_backend(backend, rng):
    model = stacked_model(("lstm", "gru"), np.float64, rng, masking=True)
    x = padded_inputs(rng)
    with fastgate.use_backend(backend):
        check_sequence_model(model, x, np.float64)
