"""Masks exactly as Keras 3 computes them, explicit ``mask=`` arguments included.

Keras 3 records in a functional configuration the mask each layer was called with: an
explicit ``layer(x, mask=...)`` and the implicit masks of ``Masking`` / ``Embedding`` /
merges alike, as chains of tensor operations (``NotEqual``, ``Any``, ``LogicalOr``, ...).
fastgate evaluates those chains (:class:`fastgate.graph_ops.ArrayOp`) and gives each layer
the recorded mask. Every case is a real Keras 3 model (torch backend) with random weights,
saved, loaded by fastgate and compared with Keras' ``predict`` (float32, atol 1e-5); also
compiled vs oracle and the ``.fastgate`` round trip.

Before this, an explicit ``mask=`` was dropped and the model ran unmasked (issue 10): these
cases fail on that code by up to 0.1.
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
ATOL = 1e-5  # float32 outputs of O(1)


from conftest import keras_cases  # noqa: E402


def padded(rng, batch=5, steps=7, width=3):
    """Inputs whose all-zero steps a `not_equal(x, 0)` mask drops: trailing, leading and
    interior padding, and one row with no valid step at all."""
    x = rng.normal(size=(batch, steps, width)).astype(np.float32)
    x[0, steps - 3:] = 0
    x[1, :2] = 0
    x[2, 3] = 0
    x[3] = 0
    return x


def _step_mask(x):
    return ops.any(ops.not_equal(x, 0), axis=-1)


RECURRENT = {"lstm": L.LSTM, "gru": L.GRU, "simple_rnn": L.SimpleRNN}


def case_explicit_mask(cell, return_sequences):
    def build(rng):
        # The example: LSTM(8)(x, mask=ops.any(ops.not_equal(x, 0), axis=-1)).
        x = keras.Input((None, 3))
        y = RECURRENT[cell](6, return_sequences=return_sequences)(x, mask=_step_mask(x))
        return keras.Model(x, y), [padded(rng)]
    return build


def case_explicit_mask_bidirectional(merge_mode):
    def build(rng):
        x = keras.Input((None, 3))
        y = L.Bidirectional(L.GRU(4, return_sequences=True), merge_mode=merge_mode)(
            x, mask=_step_mask(x))
        z = L.Bidirectional(L.LSTM(3))(y)  # the mask travels on through the first one
        return keras.Model(x, z), [padded(rng)]
    return build


def case_mask_chain(rng):
    # A longer chain: a step is valid when its largest feature exceeds 0.5 or its sum is
    # not zero, and not when every feature is below -2 (Greater, Sum, NotEqual,
    # LogicalOr, LogicalNot, All, Less, LogicalAnd, Cast to float and back).
    x = keras.Input((None, 3))
    first = ops.greater(ops.max(x, axis=-1), 0.5)
    summed = ops.not_equal(ops.sum(x, axis=-1), 0.0)
    low = ops.all(ops.less(x, -2.0), axis=-1)
    mask = ops.logical_and(ops.logical_or(first, summed), ops.logical_not(low))
    mask = ops.cast(ops.cast(mask, "float32"), "bool")
    y = L.LSTM(5, return_sequences=True)(x, mask=mask)
    return keras.Model(x, [y, L.SimpleRNN(2)(y)]), [padded(rng)]


def case_mask_from_one_feature(rng):
    # Indexing (GetItem): valid where feature 0 is not zero and feature 1 or 2 exceeds -1.
    x = keras.Input((None, 3))
    mask = ops.logical_and(ops.not_equal(x[:, :, 0], 0),
                           ops.any(ops.greater(x[..., 1:3], -1.0), axis=-1))
    return keras.Model(x, L.GRU(4, return_sequences=True)(x, mask=mask)), [padded(rng)]


def case_mask_from_other_input(rng):
    # The mask comes from a second model input (a (B, T) float array of 0/1).
    x = keras.Input((None, 3))
    valid = keras.Input((None,))
    y = L.GRU(4)(x, mask=ops.greater(valid, 0.5))
    x_data = rng.normal(size=(4, 6, 3)).astype(np.float32)
    valid_data = (rng.random((4, 6)) > 0.3).astype(np.float32)
    return keras.Model([x, valid], y), [[x_data, valid_data]]


def case_mask_overrides_masking(rng):
    # An explicit mask wins over the implicit one of a Masking layer (Keras: the mask
    # argument, when given, is the layer's mask).
    x = keras.Input((None, 3))
    masked = L.Masking(0.0)(x)
    y = L.LSTM(4, return_sequences=True)(masked, mask=ops.greater(ops.sum(x, axis=-1), 0.0))
    return keras.Model(x, L.GRU(3)(y)), [padded(rng)]


def case_embedding_implicit(rng):
    # Keras 3 records Embedding(mask_zero)'s implicit mask as mask=NotEqual(ids, 0).
    ids = keras.Input((None,), dtype="int32")
    e = L.Embedding(20, 4, mask_zero=True)(ids)
    y = L.Bidirectional(L.LSTM(3, return_sequences=True))(e)
    y = L.GlobalAveragePooling1D()(y)
    data = rng.integers(1, 20, size=(4, 6)).astype(np.int32)
    data[0, 3:] = 0
    data[1, :2] = 0
    return keras.Model(ids, y), [data]


CASES = {f"{cell}_{'seq' if seq else 'last'}": case_explicit_mask(cell, seq)
         for cell in RECURRENT for seq in (False, True)}
CASES.update({f"bidirectional_{mode}": case_explicit_mask_bidirectional(mode)
              for mode in ("concat", "sum")})
CASES.update(mask_chain=case_mask_chain, mask_from_one_feature=case_mask_from_one_feature,
             mask_from_other_input=case_mask_from_other_input,
             mask_overrides_masking=case_mask_overrides_masking,
             embedding_implicit=case_embedding_implicit)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    get = keras_cases(CASES, tmp_path_factory.mktemp("keras_masks"), ("keras",))

    def get_saved(name):   # (model, the .keras path, inputs, expected)
        model, paths, inputs, expected = get(name)
        return model, paths["keras"], inputs, expected
    return get_saved


from conftest import assert_same  # noqa: E402


@pytest.mark.parametrize("source", ["keras", "h5", "live"])
@pytest.mark.parametrize("name", list(CASES))
def test_masks_match_keras(built, name, source, tmp_path):
    model, path, inputs, expected = built(name)
    if source == "keras":
        loaded = fastgate.load(path)
    elif source == "h5":
        model.save(tmp_path / "m.h5")
        loaded = fastgate.load(tmp_path / "m.h5")
    else:
        loaded = fastgate.from_keras(model)
    for k, (x, want) in enumerate(zip(inputs, expected)):
        assert_same(loaded.predict(x), want, f"{name} [{source}] input {k}")


@pytest.mark.parametrize("name", list(CASES))
def test_masks_compiled_vs_oracle_and_round_trip(built, name, tmp_path):
    _, path, inputs, expected = built(name)
    loaded = fastgate.load(path)
    loaded.save(tmp_path / "m.fastgate")
    again = fastgate.load(tmp_path / "m.fastgate")
    for x, want in zip(inputs, expected):
        compiled = loaded.predict(x)
        with fastgate.use_backend("python"):
            assert_same(loaded.predict(x), compiled, f"{name} oracle vs compiled")
        assert_same(again.predict(x), want, f"{name} after .fastgate round trip")


def test_the_mask_changes_the_answer(built):
    # Guard against a vacuous pass: Keras' masked output differs from running unmasked.
    model, _, inputs, expected = built("lstm_last")
    x = keras.Input((None, 3))
    unmasked = keras.Model(x, L.LSTM(6)(x))
    unmasked.set_weights(model.get_weights())
    assert np.abs(unmasked.predict(inputs[0], verbose=0) - expected[0]).max() > 1e-2


def test_unsupported_mask_operation_is_named(tmp_path):
    x = keras.Input((None, 3))
    mask = ops.greater(ops.cumsum(ops.sum(x, axis=-1), axis=1), 0.0)
    model = keras.Model(x, L.LSTM(2)(x, mask=mask))
    path = tmp_path / "cumsum.keras"
    model.save(path)
    with pytest.raises(fastgate.UnsupportedLayerError, match="Cumsum"):
        fastgate.load(path)


@pytest.mark.parametrize("name", ["lstm_seq", "gru_last", "mask_chain",
                                  "mask_from_one_feature"])
def test_masked_graph_streams_like_a_full_call(built, name):
    # The mask chain acts on each step alone (NotEqual, then Any over the features), so
    # the model streams; chunk by chunk gives the full call's outputs.
    _, path, inputs, expected = built(name)
    model = fastgate.load(path)
    x = inputs[0]
    state = model.initial_state(x.shape[0])
    pieces = []
    for start in range(0, x.shape[1], 3):
        y, state = model.step(x[:, start:start + 3], state)
        pieces.append(y)
    want = expected[0]
    if isinstance(want, list):  # mask_chain: a sequence and a last output
        np.testing.assert_allclose(np.concatenate([p[0] for p in pieces], axis=1), want[0],
                                   rtol=0, atol=ATOL)
        np.testing.assert_allclose(pieces[-1][1], want[1], rtol=0, atol=ATOL)
    elif want.ndim == 3:
        np.testing.assert_allclose(np.concatenate(pieces, axis=1), want, rtol=0, atol=ATOL)
    else:
        np.testing.assert_allclose(pieces[-1], want, rtol=0, atol=ATOL)


def test_mask_over_the_steps_axis_cannot_stream(tmp_path):
    # A mask reduced over the steps axis needs the whole sequence: step() says so.
    x = keras.Input((None, 3))
    mask = ops.greater(ops.sum(x, axis=-1),
                       ops.mean(ops.sum(x, axis=-1), axis=1, keepdims=True))
    model = keras.Model(x, L.GRU(2)(x, mask=mask))
    model.save(tmp_path / "m.keras")
    loaded = fastgate.load(tmp_path / "m.keras")
    rng = np.random.default_rng(0)
    data = padded(rng)
    np.testing.assert_allclose(loaded.predict(data), model.predict(data, verbose=0),
                               rtol=0, atol=ATOL)
    with pytest.raises(fastgate.ConfigError, match="'mean'"):
        loaded.initial_state(2)


@pytest.mark.parametrize("operation, arguments, options", [
    ("Cast", ["__tensor__"], {"dtype": "object"}),
    ("Cast", ["__tensor__"], {"dtype": "not a dtype"}),
    ("Any", ["__tensor__"], {"axis": "1"}),
    ("NotEqual", ["__tensor__", "import os"], {}),
    ("GetItem", ["__tensor__", {"class_name": "__builtin__"}], {}),
    ("Sum", ["__tensor__"], {"where": True}),
    ("Eval", ["__tensor__"], {}),
])
def test_array_op_checks_what_a_file_says(operation, arguments, options):
    # A .fastgate file names operations from a fixed table, with checked constants and
    # options: a bad one fails when the file is read, never later.
    with pytest.raises(fastgate.ConfigError):
        fastgate.graph_ops.ArrayOp(operation, arguments, options)


def test_graph_ops_report_shapes_that_do_not_fit():
    # numpy's errors become ShapeErrors saying what did not fit
    from fastgate.graph_ops import ArrayOp, Attention, Dot, Merge

    x, y = np.zeros((2, 3, 4), np.float32), np.zeros((2, 5, 4), np.float32)
    with pytest.raises(fastgate.ShapeError, match="add"):
        Merge("add").apply([x, y], [None, None])
    with pytest.raises(fastgate.ShapeError, match="concatenate"):
        Merge("concatenate", axis=5).apply([x, x], [None, None])
    with pytest.raises(fastgate.ShapeError, match="Squeeze"):
        ArrayOp("Squeeze", ["__tensor__"], {"axis": 1}).apply(x, None)
    with pytest.raises(fastgate.ShapeError, match="Dot"):
        Dot(2).apply([x, y[:, :, :3]], [None, None])
    with pytest.raises(fastgate.ShapeError, match="Attention"):
        Attention().apply([x, y[:, :, :3]], [None, None])


def test_recorded_implicit_masks_are_not_computed_twice(built):
    # Keras 3 records Masking's / Embedding's implicit mask as a chain of operations on
    # every layer that takes it; where fastgate's ops pass that same mask along anyway,
    # the chain is dropped (a plain chain stays one); an explicit mask of its own is kept.
    implicit = fastgate.load(built("embedding_implicit")[1])
    assert not any(isinstance(n.op, fastgate.graph_ops.ArrayOp) for n in implicit.nodes)
    assert all(n.mask_source is None for n in implicit.nodes)
    explicit = fastgate.load(built("lstm_last")[1])
    assert [type(n.op).__name__ for n in explicit.nodes] == ["ArrayOp", "ArrayOp", "Recurrent"]
    overriding = fastgate.load(built("mask_overrides_masking")[1])
    lstm, gru = overriding.nodes[-2:]
    assert lstm.mask_source is not None                      # its own mask, not Masking's
    assert gru.mask_source == lstm.mask_source               # passed on to the GRU
