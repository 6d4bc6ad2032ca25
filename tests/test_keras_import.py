"""The Keras importer against real Keras 3 (torch backend): every layer, option and format.

Each case builds a small Keras model with weights drawn from normal(0, 0.3) (so that a gate
or bias in the wrong place shows), saves it as ``.keras``, as a Keras 3 legacy ``.h5``, as
``.weights.h5`` + ``to_json()``, as a Keras-2-style weights-only ``.h5`` + ``to_json()``, and
reads it live with ``fastgate.from_keras``; fastgate's
``predict`` must match Keras' ``predict`` on several inputs (float32, atol 1e-5).
Surprising Keras semantics are pinned by these comparisons; each case says which.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fastgate  # noqa: E402

L = keras.layers
ATOL = 1e-5  # float32 outputs of O(1)
FORMATS = ("keras", "h5", "weights_h5", "legacy_weights_h5", "live")


from conftest import randomize, saved_keras_cases  # noqa: E402


def float_inputs(rng, batch, steps, width, *, pad=True):
    """Random inputs; with ``pad`` some rows get all-zero steps (masked by Masking(0.0)):
    trailing, leading and interior padding."""
    x = rng.normal(size=(batch, steps, width)).astype(np.float32)
    if pad:
        x[0, steps - 2:] = 0     # post-padding
        x[1, :2] = 0             # pre-padding
        x[2, steps // 2] = 0     # a hole in the middle
    return x


def token_inputs(rng, batch, steps, vocab):
    ids = rng.integers(1, vocab, size=(batch, steps))
    ids[0, steps - 3:] = 0       # post-padding
    ids[1, :2] = 0               # pre-padding
    ids[2, 1] = 0                # interior zero
    ids[3, :] = 0                # an empty sequence
    return ids.astype(np.int32)


# ------------------------------------------------------------------------------- cases
def case_tutorial_lstm(rng):
    # The classic: LSTM(32) on input (10, 5) + Dense.
    model = keras.Sequential([keras.Input((10, 5)), L.LSTM(32), L.Dense(1)])
    return model, [rng.normal(size=(4, 10, 5)).astype(np.float32),
                   rng.normal(size=(1, 10, 5)).astype(np.float32)]


def case_stacked_gru_regression(rng):
    # The stacked GRU regression tutorial (GRU default reset_after=True), None timesteps.
    model = keras.Sequential([keras.Input((None, 3)), L.GRU(16, return_sequences=True),
                              L.GRU(8), L.Dense(1)])
    return model, [rng.normal(size=(3, 7, 3)).astype(np.float32),
                   rng.normal(size=(2, 2, 3)).astype(np.float32)]


def case_sentiment_embedding_lstm(rng):
    # Embedding(mask_zero) + LSTM sentiment tutorial: a masked step keeps the state and the
    # last output is the one of the last valid step; an all-padding row gives zeros.
    model = keras.Sequential([keras.Input((None,), dtype="int32"),
                              L.Embedding(50, 8, mask_zero=True), L.LSTM(16),
                              L.Dense(1, activation="sigmoid")])
    return model, [token_inputs(rng, 5, 9, 50), token_inputs(rng, 4, 4, 50)]


def case_lstm_options(rng):
    # Keras 3 hard_sigmoid is x/6 + 1/2; use_bias=False; relu cell activation.
    model = keras.Sequential([
        keras.Input((None, 4)), L.Masking(0.0),
        L.LSTM(6, activation="relu", recurrent_activation="hard_sigmoid", use_bias=False,
               return_sequences=True),
        L.LSTM(5, recurrent_activation="hard_sigmoid"), L.Dense(3)])
    return model, [float_inputs(rng, 4, 7, 4), float_inputs(rng, 3, 5, 4)]


def case_go_backwards_padding(rng):
    # go_backwards: Keras reverses the padded input, so post-padding comes first (outputs
    # zeros until the first valid step) and the output sequence stays reversed.
    model = keras.Sequential([
        keras.Input((None, 3)), L.Masking(0.0),
        L.GRU(5, go_backwards=True, return_sequences=True, reset_after=False),
        L.LSTM(4, go_backwards=True, return_sequences=True),
        L.SimpleRNN(3, go_backwards=True)])
    return model, [float_inputs(rng, 4, 6, 3), float_inputs(rng, 3, 5, 3)]


def case_gru_reset_after_both(rng):
    # reset_after=True: r * (h U_h + b_rh); reset_after=False: (r * h) U_h, one bias.
    model = keras.Sequential([
        keras.Input((None, 4)), L.Masking(0.0),
        L.GRU(6, reset_after=True, return_sequences=True, recurrent_activation="hard_sigmoid"),
        L.GRU(5, reset_after=False, activation="softsign", return_sequences=True),
        L.GRU(4, reset_after=False, use_bias=False)])
    return model, [float_inputs(rng, 4, 6, 4)]


def case_simple_rnn_masked(rng):
    # A masked step repeats the previous output (zeros before the first valid step).
    model = keras.Sequential([keras.Input((None, 3)), L.Masking(0.0),
                              L.SimpleRNN(5, activation="relu", return_sequences=True),
                              L.SimpleRNN(4, return_sequences=True),
                              L.TimeDistributed(L.Dense(2))])
    return model, [float_inputs(rng, 4, 6, 3)]


def _bidirectional_case(merge_mode, return_sequences):
    def case(rng):
        # Bidirectional(return_sequences) zeroes masked outputs (Keras forces
        # zero_output_for_mask); without return_sequences the backward output is the one
        # of step 0.
        inputs = keras.Input((None, 3))
        x = L.Masking(0.0)(inputs)
        y = L.Bidirectional(L.LSTM(4, return_sequences=return_sequences),
                            merge_mode=merge_mode)(x)
        outputs = list(y) if merge_mode is None else y
        return keras.Model(inputs, outputs), [float_inputs(rng, 4, 6, 3)]
    return case


def case_bidirectional_gru_stack(rng):
    model = keras.Sequential([
        keras.Input((None,), dtype="int32"), L.Embedding(30, 6, mask_zero=True),
        L.Bidirectional(L.GRU(5, return_sequences=True), merge_mode="sum"),
        L.Bidirectional(L.SimpleRNN(3, return_sequences=True)),
        L.GlobalAveragePooling1D(), L.Dense(2, activation="softmax")])
    ids = token_inputs(rng, 5, 7, 30)
    ids[3, 0] = 4  # keep every row non-empty: an empty row averages 0/0 = NaN in Keras
    return model, [ids]


def case_return_state_functional(rng):
    # LSTM(return_state, return_sequences) -> [o, h, c]; a Dense reading h; GRU state.
    inputs = keras.Input((None, 4))
    x = L.Masking(0.0)(inputs)
    sequence, h, c = L.LSTM(5, return_sequences=True, return_state=True)(x)
    last, gru_h = L.GRU(3, return_state=True)(sequence)
    head = L.Dense(2, activation="tanh")(h)
    model = keras.Model(inputs, [sequence, h, c, last, gru_h, head])
    return model, [float_inputs(rng, 4, 6, 4)]


def case_bidirectional_return_state(rng):
    inputs = keras.Input((None, 3))
    outputs = L.Bidirectional(L.GRU(4, return_state=True), merge_mode="ave")(inputs)
    return keras.Model(inputs, list(outputs)), [rng.normal(size=(3, 5, 3)).astype(np.float32)]


def case_everything_else(rng):
    # Identity layers at inference, TimeDistributed(Dense), Activation, pooling, RepeatVector,
    # Flatten, softmax. GlobalAveragePooling1D averages only the valid steps.
    model = keras.Sequential([
        keras.Input((6, 4)), L.Masking(0.0), L.Dropout(0.5),
        L.LSTM(5, return_sequences=True), L.SpatialDropout1D(0.3),
        L.TimeDistributed(L.Dense(3, activation="relu")), L.Activation("tanh"),
        L.GaussianNoise(1.0), L.GlobalAveragePooling1D(), L.RepeatVector(3),
        L.GRU(4, return_sequences=True), L.GaussianDropout(0.4), L.Flatten(),
        L.Dense(3, activation="softmax")])
    return model, [float_inputs(rng, 4, 6, 4)]


def case_max_pooling(rng):
    # GlobalMaxPooling1D ignores the mask (Keras 3), so the zero outputs of masked steps of
    # a Bidirectional(return_sequences) take part in the max.
    model = keras.Sequential([
        keras.Input((None, 3)), L.Masking(0.0),
        L.Bidirectional(L.LSTM(4, return_sequences=True)), L.GlobalMaxPooling1D(),
        L.Dense(2, activation="log_softmax")])
    return model, [float_inputs(rng, 4, 6, 3)]


CASES = {
    "tutorial_lstm": case_tutorial_lstm,
    "stacked_gru_regression": case_stacked_gru_regression,
    "sentiment_embedding_lstm": case_sentiment_embedding_lstm,
    "lstm_options": case_lstm_options,
    "go_backwards_padding": case_go_backwards_padding,
    "gru_reset_after_both": case_gru_reset_after_both,
    "simple_rnn_masked": case_simple_rnn_masked,
    "bidirectional_gru_stack": case_bidirectional_gru_stack,
    "return_state_functional": case_return_state_functional,
    "bidirectional_return_state": case_bidirectional_return_state,
    "everything_else": case_everything_else,
    "max_pooling": case_max_pooling,
}
for _mode in ("concat", "sum", "mul", "ave", None):
    for _sequences in (True, False):
        CASES[f"bidirectional_{_mode}_{'seq' if _sequences else 'last'}"] = \
            _bidirectional_case(_mode, _sequences)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return saved_keras_cases(CASES, tmp_path_factory.mktemp("keras_models"))


def assert_same_outputs(actual, expected, what):
    if isinstance(expected, (list, tuple)):
        assert isinstance(actual, list) and len(actual) == len(expected), what
        for k, (a, e) in enumerate(zip(actual, expected)):
            assert_same_outputs(a, e, f"{what} output {k}")
        return
    assert isinstance(actual, np.ndarray), f"{what}: got {type(actual).__name__}"
    assert actual.dtype == np.float32, f"{what}: dtype {actual.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ATOL, err_msg=what)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(CASES))
def test_matches_keras_predict(saved, name, fmt):
    case = saved(name)
    model = case.load(fmt)
    assert isinstance(model, fastgate.Model)
    for k, (x, expected) in enumerate(zip(case.inputs, case.expected)):
        assert_same_outputs(model.predict(x), expected, f"{name} [{fmt}] input {k}")


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_matches_oracle_and_round_trip(saved, name, tmp_path):
    case = saved(name)
    model = case.load("keras")
    for x in case.inputs:
        compiled = model.predict(x)
        with fastgate.use_backend("python"):
            oracle = model.predict(x)
        assert_same_outputs(compiled, oracle if isinstance(oracle, list) else oracle,
                            f"{name} compiled vs oracle")
    # fastgate's own format gives the same model back.
    model.save(tmp_path / "m.fastgate")
    again = fastgate.load(tmp_path / "m.fastgate")
    assert isinstance(again, fastgate.Model)
    for x, expected in zip(case.inputs, case.expected):
        assert_same_outputs(again.predict(x), expected, f"{name} after .fastgate round trip")


def test_predict_batches_and_call(saved):
    case = saved("return_state_functional")
    model = case.load("keras")
    x = case.inputs[0]
    assert_same_outputs(model.predict(x, batch_size=3), case.expected[0], "batch_size=3")
    assert_same_outputs(model(x), case.expected[0], "__call__")


def test_summary_and_repr(saved):
    model = saved("everything_else").load("keras")
    text = model.summary()
    for piece in ("time_distributed", "Recurrent(LSTM", "GlobalPooling1D('average')",
                  "RepeatVector(3)", ".softmax", "total weights"):
        assert piece in text
    assert "Dropout" not in text  # identity at inference: no op
    assert repr(model).startswith("Model('sequential")
    # fastgate stores a zero recurrent bias where Keras has a single bias: never fewer.
    assert model.count_params() >= saved("everything_else").model.count_params() > 0


# ------------------------------------------------------------------------------- stateful
@pytest.fixture(scope="module")
def stateful_model():
    # Stateful: the final state of a predict call (and of each batch within it) is the next
    # one's initial state until reset_states(); a masked step still outputs zeros before
    # its first valid step even when the initial state is not zero.
    model = keras.Sequential([
        keras.Input(batch_shape=(2, None, 3)), L.Masking(0.0),
        L.LSTM(5, stateful=True, return_sequences=True),
        L.Bidirectional(L.GRU(3, stateful=True, return_sequences=True)),
        L.SimpleRNN(2, stateful=True)])
    return randomize(model, seed=7)


def keras_reset_states(model):
    for layer in model.layers:
        reset = getattr(layer, "reset_states", None) or getattr(layer, "reset_state", None)
        if reset is not None:
            reset()


def test_stateful_carries_state_like_keras(stateful_model, tmp_path):
    rng = np.random.default_rng(3)
    calls = [float_inputs(rng, 2, 5, 3, pad=False) for _ in range(2)]
    calls.append(rng.normal(size=(4, 3, 3)).astype(np.float32))  # two batches of 2
    masked = rng.normal(size=(2, 4, 3)).astype(np.float32)
    masked[0, :2] = 0  # leading masked steps with a non-zero carried state
    calls.append(masked)
    keras_reset_states(stateful_model)
    expected = [stateful_model.predict(x, verbose=0, batch_size=2) for x in calls]
    keras_reset_states(stateful_model)
    after_reset = stateful_model.predict(calls[0], verbose=0, batch_size=2)
    keras_reset_states(stateful_model)

    path = tmp_path / "stateful.keras"
    stateful_model.save(path)
    model = fastgate.load(path)
    assert model.stateful
    for k, (x, want) in enumerate(zip(calls, expected)):
        assert_same_outputs(model.predict(x), want, f"stateful call {k}")
    model.reset_states()
    assert_same_outputs(model.predict(calls[0]), after_reset, "after reset_states")
    with pytest.raises(fastgate.ShapeError, match="batch size"):
        model.predict(calls[0][:1], batch_size=1)


# ------------------------------------------------------------------------------- versions
def test_hard_sigmoid_follows_saving_version(saved, tmp_path):
    import h5py
    import shutil

    path = tmp_path / "keras2.h5"
    shutil.copy(saved("lstm_options").paths["h5"], path)
    with h5py.File(path, "r+") as handle:
        handle.attrs["keras_version"] = "2.15.0"
    keras3 = saved("lstm_options").load("h5")
    keras2 = fastgate.load(path)
    recurrent3 = [n.op for n in keras3.nodes if isinstance(n.op, fastgate.Recurrent)]
    recurrent2 = [n.op for n in keras2.nodes if isinstance(n.op, fastgate.Recurrent)]
    # Keras 3 hard_sigmoid is x/6 + 1/2; Keras 2's is 0.2 x + 1/2.
    assert {r.layer.recurrent_activation for r in recurrent3} == {"hard_sigmoid"}
    assert {r.layer.recurrent_activation for r in recurrent2} == {"hard_sigmoid_keras2"}


def test_legacy_weights_pair_by_order_when_names_differ(saved):
    # Keras' load_weights (by_name=False) pairs the layers with weights in order.
    case = saved("stacked_gru_regression")
    renamed = json.loads(case.architecture)
    for k, layer in enumerate(renamed["config"]["layers"]):
        layer["config"]["name"] = f"renamed_{k}"
    model = fastgate.load(case.paths["legacy_weights_h5"], architecture=renamed)
    assert_same_outputs(model.predict(case.inputs[0]), case.expected[0], "paired by order")
