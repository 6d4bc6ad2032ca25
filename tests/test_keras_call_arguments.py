"""No silent divergence: every argument Keras records on a layer call is reproduced or
refused.

Keras records the keyword arguments of each call in a functional configuration: ``mask``,
``initial_state``, ``training``, ``constants`` (and layer-specific ones such as
``use_causal_mask``). For each, these models (real Keras 3, torch backend) are either
reproduced by fastgate (``predict`` within 1e-5 of Keras') or refused with an
:class:`~fastgate.errors.UnsupportedLayerError` naming the layer and the argument: never
loaded and run as something else.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from keras import ops  # noqa: E402

import fastgate  # noqa: E402

L = keras.layers
ATOL = 1e-5


from conftest import randomize  # noqa: E402


def sequences(rng, batch=3, steps=5, width=3):
    x = rng.normal(size=(batch, steps, width)).astype(np.float32)
    x[0, 3:] = 0
    x[1, :1] = 0
    return x


# ---------------------------------------------------------------- reproduced
def reproduced_mask_none(rng):
    # mask=None written out is no mask (Keras then falls back to none for an RNN).
    x = keras.Input((None, 3))
    return keras.Model(x, L.LSTM(3)(x, mask=None)), [sequences(rng)]


def reproduced_mask_on_pooling(rng):
    # GlobalAveragePooling1D averages the steps its explicit mask keeps.
    x = keras.Input((None, 3))
    y = L.GRU(4, return_sequences=True)(x)
    pooled = L.GlobalAveragePooling1D()(y, mask=ops.greater(ops.sum(x, axis=-1), -1.0))
    return keras.Model(x, pooled), [sequences(rng)]


def reproduced_masked_decoder_with_initial_state(rng):
    # Keras 3 does not mask an RNN called with initial_state: the mask is given only when
    # the sequence is the call's one tensor argument. Pinned against Keras' output.
    encoder_in, decoder_in = keras.Input((None, 3)), keras.Input((None, 3))
    _, h, c = L.LSTM(4, return_state=True)(encoder_in)
    decoded = L.LSTM(4, return_sequences=True)(L.Masking()(decoder_in), initial_state=[h, c])
    return keras.Model([encoder_in, decoder_in], decoded), [[sequences(rng), sequences(rng)]]


def reproduced_explicit_mask_with_initial_state(rng):
    # ... but an explicit mask= together with initial_state is used.
    x, h = keras.Input((None, 3)), keras.Input((4,))
    y = L.GRU(4, return_sequences=True)(x, initial_state=[h],
                                        mask=ops.any(ops.not_equal(x, 0), axis=-1))
    data = [sequences(rng), rng.normal(size=(3, 4)).astype(np.float32)]
    return keras.Model([x, h], y), [data]


def reproduced_training_false(rng):
    # training=False is inference: Dropout and GaussianNoise are identity.
    x = keras.Input((None, 3))
    y = L.Dropout(0.5)(x, training=False)
    y = L.GaussianNoise(1.0)(L.LSTM(4, return_sequences=True)(y), training=False)
    return keras.Model(x, L.SimpleRNN(2)(y, training=False)), [sequences(rng)]


def reproduced_training_true_without_randomness(rng):
    # training=True changes nothing for a Dense or an RNN without dropout.
    x = keras.Input((None, 3))
    y = L.LSTM(4, return_sequences=True)(x, training=True)
    return keras.Model(x, L.Dense(2)(y, training=True)), [sequences(rng)]


def reproduced_bidirectional_initial_state(rng):
    x, h1, h2 = keras.Input((None, 3)), keras.Input((2,)), keras.Input((2,))
    y = L.Bidirectional(L.SimpleRNN(2, return_sequences=True))(x, initial_state=[h1, h2])
    data = [sequences(rng)] + [rng.normal(size=(3, 2)).astype(np.float32) for _ in range(2)]
    return keras.Model([x, h1, h2], y), [data]


REPRODUCED = {name: fn for name, fn in globals().items() if name.startswith("reproduced_")}


@pytest.mark.parametrize("name", sorted(REPRODUCED))
def test_reproduced(name, tmp_path):
    rng = np.random.default_rng(sum(map(ord, name)))
    model, inputs = REPRODUCED[name](rng)
    randomize(model)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = fastgate.load(path)
    for x in inputs:
        np.testing.assert_allclose(loaded.predict(x), model.predict(x, verbose=0), rtol=0,
                                   atol=ATOL, err_msg=name)


def test_initial_state_is_pinned_unmasked():
    # Guard for reproduced_masked_decoder_with_initial_state: in Keras 3 the masked
    # decoder's output moves on past the padding (an RNN that masked would repeat it).
    rng = np.random.default_rng(5)
    model, (data,) = reproduced_masked_decoder_with_initial_state(rng)
    randomize(model)
    y = model.predict(data, verbose=0)
    assert np.abs(y[0, 4] - y[0, 2]).max() > 1e-4


# ---------------------------------------------------------------- refused
def refused_dropout_training_true():
    # Monte-Carlo dropout: Keras drops at random in predict; fastgate cannot reproduce it.
    x = keras.Input((None, 3))
    y = L.Dropout(0.5, name="mc_dropout")(x, training=True)
    return keras.Model(x, L.LSTM(2)(y)), "mc_dropout", "training=True"


def refused_noise_training_true():
    x = keras.Input((None, 3))
    y = L.GaussianNoise(0.3, name="noise")(L.GRU(2, return_sequences=True)(x), training=True)
    return keras.Model(x, y), "noise", "training=True"


def refused_recurrent_dropout_training_true():
    x = keras.Input((None, 3))
    y = L.LSTM(3, dropout=0.2, recurrent_dropout=0.2, name="mc_lstm")(x, training=True)
    return keras.Model(x, y), "mc_lstm", "training=True"


def refused_attention_dropout_training_true():
    q, v = keras.Input((None, 3)), keras.Input((None, 3))
    y = L.Attention(dropout=0.5, name="att")([q, v], training=True)
    return keras.Model([q, v], y), "att", "training=True"


def refused_mask_operation_not_evaluable():
    x = keras.Input((None, 3))
    mask = ops.greater(ops.cumsum(ops.sum(x, axis=-1), axis=1), 0.0)
    return keras.Model(x, L.LSTM(2)(x, mask=mask)), "cumsum", "Cumsum"


REFUSED = {name: fn for name, fn in globals().items() if name.startswith("refused_")}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused(name, tmp_path):
    model, layer, argument = REFUSED[name]()
    path = tmp_path / "m.keras"
    model.save(path)
    for load in (lambda: fastgate.load(path), lambda: fastgate.from_keras(model)):
        with pytest.raises(fastgate.UnsupportedLayerError) as info:
            load()
        message = str(info.value)
        # (a keras.ops node is named by Keras' counter: 'cumsum', 'cumsum_1', ...)
        assert f"'{layer}" in message and argument in message, message


# ---------------------------------------------------------------- Keras 2 configurations
# tf.keras writes a call as [[layer, call, tensor, kwargs], ...], one entry per input
# tensor: RNN(x, initial_state=[h, c]) is a call on [x, h, c], and tensors in kwargs are
# [layer, call, tensor] (a mask= argument). No TensorFlow here: the configurations are
# written by hand in that layout, and the reference is the same computation built in
# Keras 3 with tf.keras' merge-mask rule written out (Concatenate: all() over the
# per-feature masks, an unmasked input counting as valid; Keras 3 takes any()).
def _k2_layer(kind, name, config, *calls):
    return {"class_name": kind, "name": name, "config": {"name": name, **config},
            "inbound_nodes": [[[*ref, kwargs] for ref, kwargs in call] for call in calls]}


def _k2_rnn(units, **options):
    return {"units": units, "activation": "tanh", "recurrent_activation": "sigmoid",
            "use_bias": True, "go_backwards": False, "stateful": False, **options}


def _keras2_config(extra_kwargs=None):
    seq = {"batch_input_shape": [None, None, 3], "dtype": "float32"}
    layers = [
        _k2_layer("InputLayer", "enc_in", seq), _k2_layer("InputLayer", "dec_in", seq),
        _k2_layer("InputLayer", "valid", {"batch_input_shape": [None, None],
                                          "dtype": "bool"}),
        _k2_layer("Masking", "enc_mask", {"mask_value": 0.0}, [(("enc_in", 0, 0), {})]),
        _k2_layer("LSTM", "encoder", _k2_rnn(4, return_state=True),
                  [(("enc_mask", 0, 0), {})]),
        _k2_layer("LSTM", "decoder", _k2_rnn(4, return_sequences=True),
                  [(("dec_in", 0, 0), extra_kwargs or {}), (("encoder", 0, 1), {}),
                   (("encoder", 0, 2), {})]),
        _k2_layer("Masking", "dec_mask", {"mask_value": 0.0}, [(("dec_in", 0, 0), {})]),
        _k2_layer("Concatenate", "concat", {"axis": -1},
                  [(("decoder", 0, 0), {}), (("dec_mask", 0, 0), {})]),
        _k2_layer("GRU", "gru", _k2_rnn(3, reset_after=True), [(("concat", 0, 0), {})]),
        _k2_layer("LSTM", "masked_by_input", _k2_rnn(2),
                  [(("dec_in", 0, 0), {"mask": ["valid", 0, 0]})]),
    ]
    return {"class_name": "Model", "keras_version": "2.3.1", "backend": "tensorflow",
            "config": {"name": "keras2_seq2seq", "layers": layers,
                       "input_layers": [["enc_in", 0, 0], ["dec_in", 0, 0], ["valid", 0, 0]],
                       "output_layers": [["gru", 0, 0], ["masked_by_input", 0, 0]]}}


def _keras2_reference():
    enc_in, dec_in = keras.Input((None, 3)), keras.Input((None, 3))
    valid = keras.Input((None,), dtype="bool")
    layers = {"encoder": L.LSTM(4, return_state=True),
              "decoder": L.LSTM(4, return_sequences=True), "gru": L.GRU(3),
              "masked_by_input": L.LSTM(2)}
    _, h, c = layers["encoder"](L.Masking()(enc_in))
    decoded = layers["decoder"](dec_in, initial_state=[h, c])
    joined = L.Concatenate()([decoded, L.Masking()(dec_in)])
    tf_keras_mask = ops.any(ops.not_equal(dec_in, 0), axis=-1)
    outputs = [layers["gru"](joined, mask=tf_keras_mask),
               layers["masked_by_input"](dec_in, mask=valid)]
    model = randomize(keras.Model([enc_in, dec_in, valid], outputs), seed=11)
    weights = {name: [(str(k), w) for k, w in enumerate(layer.get_weights())]
               for name, layer in layers.items()}
    return model, weights


def test_keras2_config_graph_initial_state_and_mask():
    rng = np.random.default_rng(21)
    model, weights = _keras2_reference()
    data = [sequences(rng), sequences(rng, steps=4), rng.random((3, 4)) > 0.3]
    data[1][2, 1:] = 0
    loaded = fastgate.importers.keras.from_config(_keras2_config(), weights)
    expected = model.predict(data, verbose=0)
    for actual, want in zip(loaded.predict(data), expected):
        np.testing.assert_allclose(actual, want, rtol=0, atol=ATOL)
    # the tf.keras merge-mask rule matters here: Keras 3's would give another answer
    assert loaded.nodes[[n.name for n in loaded.nodes].index("concat")].op.mask_rule == \
        "keras2"


@pytest.mark.parametrize("argument", ["constants", "training"])
def test_keras2_config_refuses_what_it_cannot_reproduce(argument):
    _, weights = _keras2_reference()
    value = [["enc_in", 0, 0]] if argument == "constants" else True
    config = _keras2_config({argument: value})
    if argument == "training":  # training=True only matters with dropout
        config["config"]["layers"][5]["config"]["dropout"] = 0.3
    with pytest.raises(fastgate.UnsupportedLayerError) as info:
        fastgate.importers.keras.from_config(config, weights)
    assert "'decoder'" in str(info.value) and argument in str(info.value)


def test_unrecorded_mask_that_travels_is_refused(tmp_path):
    # Keras 3 (3.15) records the mask of every one-input layer that takes one. A file whose
    # LSTM has none recorded although a Masking layer's mask reaches it (a Keras version
    # that did not record masks, or one that stopped passing them on) is not guessed at.
    import json

    x = keras.Input((None, 3))
    model = randomize(keras.Model(x, L.LSTM(3, name="lstm")(L.Masking()(x))))
    config = json.loads(model.to_json())
    for layer in config["config"]["layers"]:
        if layer["name"] == "lstm":
            assert layer["inbound_nodes"][0]["kwargs"].pop("mask")  # recorded in 3.15
    weights = {"lstm": [(str(k), w) for k, w in enumerate(model.layers[-1].get_weights())]}
    loaded = fastgate.importers.keras.from_config(config, weights)
    with pytest.raises(fastgate.UnsupportedLayerError, match="'lstm'.*without one"):
        loaded.predict(sequences(np.random.default_rng(0)))
    assert "mask=None (recorded)" in loaded.summary()
