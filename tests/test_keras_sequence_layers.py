"""The common single-input Keras layers (``fastgate.sequence_ops``) against real Keras 3.

Each case builds a small Keras 3 model (torch backend), draws its weights from normal(0, 0.3)
(moving variances from 0.5 + |normal|, so that they are valid), saves it as ``.keras``, as
``.h5``, as ``.weights.h5`` + ``to_json()``, as a Keras-2-style weights-only ``.h5`` +
``to_json()``, and reads it live; fastgate's ``predict`` must match Keras' ``predict``
(float32, atol 1e-5 on O(1) outputs). Masks: each case with a ``Masking`` layer pads some
rows (trailing, leading, interior), so that whether a layer keeps or drops the mask shows in
the outputs. Surprising Keras semantics are pinned by a case and say so.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fastgate  # noqa: E402
from fastgate import sequence_ops  # noqa: E402

from conftest import saved_keras_cases  # noqa: E402

L = keras.layers
ATOL = 1e-5  # float32 outputs of O(1)
FORMATS = ("keras", "h5", "weights_h5", "legacy_weights_h5", "live")


def randomize(model: keras.Model, seed: int) -> keras.Model:
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        values = rng.normal(0, 0.3, variable.shape).astype(np.float32)
        if "variance" in variable.path:
            values = 0.5 + np.abs(values)
        variable.assign(values)
    return model


def padded(rng, batch, steps, width):
    """normal(0, 1) inputs; rows 0-2 have all-zero steps (masked by ``Masking(0.0)``)."""
    x = rng.normal(size=(batch, steps, width)).astype(np.float32)
    x[0, steps - 3:] = 0     # post-padding
    x[1, :2] = 0             # pre-padding
    x[2, steps // 2] = 0     # a hole in the middle
    return x


# ------------------------------------------------------------------------------- cases
def case_cnn_lstm(rng):
    # The classic CNN-LSTM: causal dilated Conv1D, MaxPooling1D "same" (odd length: the
    # extra padded step is at the end and takes no part in the max), BatchNormalization.
    model = keras.Sequential([
        keras.Input((9, 4)),
        L.Conv1D(6, 3, padding="causal", dilation_rate=2, activation="relu"),
        L.MaxPooling1D(2, padding="same"), L.BatchNormalization(), L.LSTM(5), L.Dense(2)])
    return model, [rng.normal(size=(4, 9, 4)).astype(np.float32)]


def case_conv_options(rng):
    # strides + "same" (asymmetric padding, the extra zero at the end), groups, no bias,
    # softmax activation, AveragePooling1D "valid" with strides != pool_size.
    model = keras.Sequential([
        keras.Input((None, 4)),
        L.Conv1D(6, 4, strides=2, padding="same", groups=2, use_bias=False),
        L.Conv1D(4, 2, activation="softmax"),
        L.AveragePooling1D(3, strides=1, padding="same"),  # symmetric padding: see below
        L.AveragePooling1D(2, strides=1), L.GRU(3)])
    return model, [rng.normal(size=(3, 11, 4)).astype(np.float32),
                   rng.normal(size=(2, 8, 4)).astype(np.float32)]


def case_normalization_keeps_mask(rng):
    # BatchNormalization, LayerNormalization and TimeDistributed keep the mask: the LSTMs
    # after them still hold their state over the padded steps.
    model = keras.Sequential([
        keras.Input((None, 4)), L.Masking(0.0), L.LayerNormalization(epsilon=1e-2),
        L.BatchNormalization(center=False), L.LSTM(5, return_sequences=True),
        L.TimeDistributed(L.BatchNormalization(scale=False)),
        L.TimeDistributed(L.Dense(3, activation="tanh")), L.GRU(4, return_sequences=True),
        L.LayerNormalization(center=False), L.SimpleRNN(2)])
    return model, [padded(rng, 4, 7, 4)]


def case_conv_drops_mask(rng):
    # Keras 3: a layer without compute_mask (Conv1D, pooling, padding, reshaping) drops the
    # mask, so the LSTM after a Conv1D reads the padded steps as ordinary steps.
    model = keras.Sequential([
        keras.Input((None, 3)), L.Masking(0.0), L.Conv1D(4, 1), L.LSTM(3)])
    return model, [padded(rng, 4, 6, 3)]


def case_steps_edits(rng):
    model = keras.Sequential([
        keras.Input((7, 4)), L.ZeroPadding1D((1, 2)), L.Cropping1D((2, 1)), L.UpSampling1D(2),
        L.Permute((2, 1)), L.Reshape((-1, 7)), L.LSTM(3, return_sequences=True),
        L.Reshape((24,)), L.Dense(2)])
    return model, [rng.normal(size=(3, 7, 4)).astype(np.float32)]


def case_layer_norm_axes(rng):
    # LayerNormalization over (steps, features); Keras 3's rms_scaling divides by the root
    # of the variance (not of the mean square) and neither centers nor adds beta.
    model = keras.Sequential([
        keras.Input((5, 4)), L.LayerNormalization(axis=[1, 2]),
        L.LayerNormalization(rms_scaling=True), L.BatchNormalization(axis=1), L.GRU(3)])
    return model, [rng.normal(2.0, 1.5, size=(3, 5, 4)).astype(np.float32)]


def case_rnn_cells(rng):
    # RNN(cell) is the layer of that cell; RNN([cells]) runs the cells one after the other
    # at each step; go_backwards reverses the input once for the whole stack;
    # Bidirectional(RNN(cell)) is Bidirectional of the cell's layer.
    model = keras.Sequential([
        keras.Input((None, 3)), L.Masking(0.0),
        L.RNN(L.LSTMCell(4, recurrent_activation="hard_sigmoid"), return_sequences=True),
        L.RNN([L.GRUCell(3, reset_after=False), L.SimpleRNNCell(4, activation="relu")],
              return_sequences=True, go_backwards=True),
        L.RNN(L.StackedRNNCells([L.GRUCell(3), L.LSTMCell(2, use_bias=False)]),
              return_sequences=True, zero_output_for_mask=True),
        L.Bidirectional(L.RNN(L.LSTMCell(2), return_sequences=True), merge_mode="sum"),
        L.RNN(L.SimpleRNNCell(2))])
    return model, [padded(rng, 4, 6, 3), rng.normal(size=(2, 3, 3)).astype(np.float32)]


def case_time_distributed(rng):
    # TimeDistributed of a Conv1D, a pooling, a Bidirectional, an LSTM and a Dense over
    # (B, T, L, C): each runs on every step alone.
    model = keras.Sequential([
        keras.Input((4, 6, 3)), L.TimeDistributed(L.Conv1D(4, 3, activation="elu")),
        L.TimeDistributed(L.MaxPooling1D(2)),
        L.TimeDistributed(L.Bidirectional(L.GRU(2, return_sequences=True))),
        L.TimeDistributed(L.LSTM(3)),
        L.TimeDistributed(L.Dense(2, activation="softmax")), L.LSTM(2)])
    return model, [rng.normal(size=(3, 4, 6, 3)).astype(np.float32)]


def _drops_mask_case(layer_factory):
    # Keras 3: a layer without compute_mask drops the mask. Each of these leaves the shape
    # as it is, so the LSTM after it differs only by reading the padded steps unmasked.
    def case(rng):
        model = keras.Sequential([keras.Input((None, 3)), L.Masking(0.0), layer_factory(),
                                  L.LSTM(3)])
        return model, [padded(rng, 4, 6, 3)]
    return case


CASES = {
    "cnn_lstm": case_cnn_lstm,
    "conv_options": case_conv_options,
    "normalization_keeps_mask": case_normalization_keeps_mask,
    "conv_drops_mask": case_conv_drops_mask,
    "steps_edits": case_steps_edits,
    "layer_norm_axes": case_layer_norm_axes,
    "rnn_cells": case_rnn_cells,
    "time_distributed": case_time_distributed,
}
for _name, _factory in {
        "max_pooling": lambda: L.MaxPooling1D(1), "average_pooling": lambda: L.AveragePooling1D(
            1), "zero_padding": lambda: L.ZeroPadding1D(0), "cropping": lambda: L.Cropping1D(0),
        "up_sampling": lambda: L.UpSampling1D(1), "reshape": lambda: L.Reshape((-1, 3)),
        "permute": lambda: L.Permute((1, 2))}.items():
    CASES[f"{_name}_drops_mask"] = _drops_mask_case(_factory)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return saved_keras_cases(CASES, tmp_path_factory.mktemp("keras_sequence_layers"),
                             weights=randomize)


def assert_same(actual, expected, what):
    assert isinstance(actual, np.ndarray), f"{what}: got {type(actual).__name__}"
    assert actual.dtype == np.float32, f"{what}: dtype {actual.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=0, atol=ATOL, err_msg=what)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(CASES))
def test_matches_keras_predict(saved, name, fmt):
    case = saved(name)
    model = case.load(fmt)
    for k, (x, expected) in enumerate(zip(case.inputs, case.expected)):
        assert_same(model.predict(x), expected, f"{name} [{fmt}] input {k}")


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_matches_oracle_and_round_trip(saved, name, tmp_path):
    case = saved(name)
    model = case.load("keras")
    for x in case.inputs:
        with fastgate.use_backend("python"):
            oracle = model.predict(x)
        assert_same(model.predict(x), oracle, f"{name} compiled vs oracle")
    model.save(tmp_path / "m.fastgate")
    again = fastgate.load(tmp_path / "m.fastgate")
    assert repr(again) == repr(model)
    for x, expected in zip(case.inputs, case.expected):
        assert_same(again.predict(x), expected, f"{name} after .fastgate round trip")


def test_masks_matter_in_the_mask_cases(saved):
    """The masked cases would differ without their masks (so they test the masks)."""
    case = saved("normalization_keeps_mask")
    model = case.load("keras")
    assert any(isinstance(node.op, sequence_ops.TimeDistributed) for node in model.nodes)
    nodes = [node._replace(op=fastgate.Activation("linear"))
             if isinstance(node.op, fastgate.Masking) else node for node in model.nodes]
    unmasked = fastgate.Model(nodes, model.outputs, input_shape=model.input_shape)
    assert np.abs(unmasked.predict(case.inputs[0]) - case.expected[0]).max() > 1e-3


def test_average_pooling_same_asymmetric_follows_tensorflow():
    # With asymmetric "same" padding Keras' torch backend pads by repeating the edge step
    # (counted in the average), TensorFlow leaves the padded step out of the count: fastgate
    # follows TensorFlow (the tf_keras fixtures check it against tf_keras).
    pool = sequence_ops.Pooling1D("average", 2, strides=1, padding="same")
    x = np.arange(6, dtype=np.float32).reshape(1, 3, 2)
    y, mask = pool.apply(x, np.ones((1, 3), bool))
    assert mask is None
    np.testing.assert_allclose(y[0], [[1, 2], [3, 4], [4, 5]])  # last window: the step alone
    keras_y = keras.ops.convert_to_numpy(L.AveragePooling1D(2, 1, padding="same")(x))
    np.testing.assert_allclose(keras_y[0, :2], y[0, :2])


def test_streaming_through_per_step_layers(saved):
    """BatchNormalization, LayerNormalization(-1) and TimeDistributed stream step by step."""
    case = saved("normalization_keeps_mask")
    model = case.load("keras")
    x = case.inputs[0]
    state = None
    for t in range(x.shape[1]):
        y, state = model.step(x[:, t], state)
    np.testing.assert_allclose(y, case.expected[0], rtol=0, atol=ATOL)
    conv = saved("cnn_lstm").load("keras")
    with pytest.raises(fastgate.ConfigError, match="Conv1D"):
        conv.step(np.zeros((1, 4), np.float32))


# ------------------------------------------------------------------------------- refusals
def test_lambda_and_custom_layers_say_what_to_do(tmp_path):
    model = keras.Sequential([keras.Input((5, 3)), L.LSTM(4, return_sequences=True),
                              L.Lambda(lambda t: t * 2, name="doubler"), L.LSTM(2)])
    with pytest.raises(fastgate.UnsupportedLayerError) as info:
        fastgate.from_keras(model)
    message = str(info.value)
    assert "'doubler'" in message and "never runs" in message and "architecture=" in message

    @keras.saving.register_keras_serializable(package="fastgate_tests")
    class Scale(L.Layer):
        def call(self, x):
            return x * 3

    custom = keras.Sequential([keras.Input((5, 3)), Scale(name="scaler"), L.GRU(2)])
    path = tmp_path / "custom.keras"
    custom.save(path)
    with pytest.raises(fastgate.UnsupportedLayerError) as info:
        fastgate.load(path)
    message = str(info.value)
    assert "'Scale'" in message and "'scaler'" in message and "built-in layers" in message


def test_unsupported_options_are_refused():
    stacked_state = keras.Sequential([keras.Input((5, 3)), L.RNN(
        [L.GRUCell(2), L.GRUCell(2)], return_state=False, stateful=False,
        name="stack")])
    fastgate.from_keras(stacked_state)  # supported
    inputs = keras.Input((5, 3))
    outputs = L.RNN([L.GRUCell(2), L.GRUCell(2)], return_state=True, name="stack")(inputs)
    with pytest.raises(fastgate.UnsupportedLayerError, match="return_state"):
        fastgate.from_keras(keras.Model(inputs, outputs[0]))
    first = keras.Sequential([keras.Input((5, 3)), L.Conv1D(2, 2, data_format="channels_first",
                                                             name="cf")])
    with pytest.raises(fastgate.UnsupportedLayerError, match="channels_first"):
        fastgate.from_keras(first)


def test_time_distributed_recurrent_refuses_a_mask():
    op = sequence_ops.TimeDistributed(fastgate.Recurrent(fastgate.LSTM.random(3, 2),
                                                         return_sequences=False))
    x = np.zeros((2, 4, 5, 3), np.float32)
    assert op.apply(x, None)[0].shape == (2, 4, 2)
    with pytest.raises(fastgate.ShapeError, match="mask"):
        op.apply(x, np.ones((2, 4), bool))


# ------------------------------------------------------------------------------- ops alone
def test_conv1d_matches_a_direct_sum(rng):
    """Conv1D's im2col product equals the textbook sum, for every padding and grouping."""
    x = rng.normal(size=(2, 9, 4))
    kernel = rng.normal(size=(3, 2, 6))
    bias = rng.normal(size=6)
    for padding in ("valid", "same", "causal"):
        for strides, dilation in ((1, 1), (2, 1), (1, 2)):
            op = sequence_ops.Conv1D(kernel, bias, strides=strides, padding=padding,
                                     dilation_rate=dilation, groups=2, dtype=np.float64)
            y, mask = op.apply(x, None)
            span = 2 * dilation + 1
            before = {"valid": 0, "causal": span - 1,
                      "same": sequence_ops._same_padding(9, span, strides)[0]}[padding]
            xp = np.pad(x, ((0, 0), (before, span), (0, 0)))
            for t in range(y.shape[1]):
                for g in range(2):
                    window = xp[:, t * strides + np.arange(3) * dilation, 2 * g:2 * g + 2]
                    want = np.einsum("bkc,kcf->bf", window, kernel[:, :, 3 * g:3 * g + 3])
                    np.testing.assert_allclose(y[:, t, 3 * g:3 * g + 3],
                                               want + bias[3 * g:3 * g + 3], atol=1e-12)
            assert mask is None


def test_ops_validate_and_describe_themselves():
    with pytest.raises(fastgate.ConfigError):
        sequence_ops.Conv1D(np.zeros((3, 2, 5)), groups=2)
    with pytest.raises(fastgate.ShapeError):
        sequence_ops.BatchNormalization(np.zeros(3), np.ones(4))
    with pytest.raises(fastgate.ShapeError, match="fewer than the window"):
        sequence_ops.Pooling1D("max", 5).apply(np.zeros((1, 3, 2)), None)
    with pytest.raises(fastgate.ShapeError, match="leaves no step"):
        sequence_ops.Cropping1D(2, 2).apply(np.zeros((1, 4, 2)), None)
    assert repr(sequence_ops.Conv1D(np.zeros((3, 2, 4)), padding="causal")) == \
        "Conv1D(2 -> 4, kernel_size=3, padding='causal', bias=False)"
    assert repr(sequence_ops.Pooling1D("max", 2)) == \
        "Pooling1D('max', pool_size=2, strides=2, padding='valid')"
