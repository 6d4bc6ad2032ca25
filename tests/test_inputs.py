"""What a served model does with hostile or sloppy inputs: the documented rules, end to end.

* Token ids (``Embedding``, alone and inside ``Model.predict`` / ``Model.step``): integers of
  any width, ``int64`` included, are checked against the vocabulary before the lookup;
  out-of-range, negative, non-integral or non-finite ids raise ``InputError`` (never an
  out-of-bounds read, never a silent wrap of a huge ``uint64`` or ``int64``).
* Features: booleans, integers and floats of any width are converted to the model's dtype;
  complex, string and object arrays raise ``DTypeError``.
* NaN and Inf pass through as IEEE arithmetic does: a NaN poisons the outputs of its own
  sequence from its step on, and of no other sequence in the batch (the same in streaming).
"""

from __future__ import annotations

import numpy as np
import pytest

import fastgate
from fastgate import DTypeError, InputError, ShapeError
from fastgate.ops import Dense, Embedding, Recurrent

from conftest import random_cell_weights

VOCAB = 20


def token_model(rng, mask_zero=False):
    table = rng.normal(0, 0.3, (VOCAB, 4)).astype(np.float32)
    lstm = fastgate.LSTM(random_cell_weights("lstm", 4, 5, rng=rng), batch_first=True)
    nodes = [("embedding", Embedding(table, mask_zero=mask_zero), (-1, 0)),
             ("lstm", Recurrent(lstm, return_sequences=True), (0, 0)),
             ("head", Dense(rng.normal(0, 0.3, (5, 2))), (1, 0))]
    return fastgate.Model(nodes, [(2, 0)], input_shape=(None, None))


def feature_model(rng):
    gru = fastgate.GRU(random_cell_weights("gru", 3, 5, rng=rng), batch_first=True)
    nodes = [("gru", Recurrent(gru, return_sequences=True), (-1, 0)),
             ("head", Dense(rng.normal(0, 0.3, (5, 2))), (0, 0))]
    return fastgate.Model(nodes, [(1, 0)], input_shape=(None, None, 3))


# ---------------------------------------------------------------------------- token ids
@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint8,
                                   np.uint16, np.uint32, np.uint64])
def test_valid_ids_of_every_integer_width_give_the_same_output(dtype, rng):
    model = token_model(rng)
    ids = rng.integers(0, VOCAB, size=(3, 6))
    np.testing.assert_array_equal(model.predict(ids.astype(dtype)), model.predict(ids))


@pytest.mark.parametrize("bad_id", [VOCAB, VOCAB + 1, -1, 2**31, 2**40, 2**63 - 1, -2**63])
def test_out_of_vocabulary_int64_ids_are_refused(bad_id, rng):
    model = token_model(rng)
    ids = rng.integers(0, VOCAB, size=(3, 6)).astype(np.int64)
    ids[1, 4] = bad_id
    for run in (model.predict, lambda x: model.step(x, None), model.nodes[0].op):
        with pytest.raises(InputError, match=rf"\[0, {VOCAB}\)"):
            run(ids)


def test_huge_uint64_ids_are_refused_not_wrapped(rng):
    model = token_model(rng)
    ids = np.zeros((2, 3), np.uint64)
    ids[0, 0] = 2**64 - 1  # would be -1 after a cast to int64: the last row
    with pytest.raises(InputError):
        model.predict(ids)


@pytest.mark.parametrize("ids,error", [
    (np.array([[1.0, 2.5]]), DTypeError),             # not integral
    (np.array([[1.0, np.nan]]), DTypeError),          # not finite
    (np.array([[1.0, np.inf]]), DTypeError),
    (np.array([["1", "2"]]), DTypeError),             # strings
    (np.array([[1 + 0j, 2]]), DTypeError),            # complex
    (np.array([[1, None]], dtype=object), DTypeError),
])
def test_ids_that_are_not_integers_are_refused(ids, error, rng):
    with pytest.raises(error):
        token_model(rng).predict(ids)


def test_integral_float_ids_are_accepted(rng):
    model = token_model(rng)
    ids = rng.integers(0, VOCAB, size=(2, 5))
    np.testing.assert_array_equal(model.predict(ids.astype(np.float64)), model.predict(ids))


def test_mask_zero_ids_in_predict_and_step(rng):
    model = token_model(rng, mask_zero=True)
    ids = rng.integers(1, VOCAB, size=(3, 7)).astype(np.int64)
    ids[0, 3:] = 0
    full = model.predict(ids)
    np.testing.assert_array_equal(full[0, 3:], np.repeat(full[0, 2:3], 4, axis=0))
    state, steps = model.initial_state(3), []
    for t in range(7):
        y, state = model.step(ids[:, t], state)
        steps.append(y)
    np.testing.assert_allclose(np.stack(steps, axis=1), full, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- features
@pytest.mark.parametrize("dtype", [np.bool_, np.int8, np.int64, np.uint16, np.float16,
                                   np.float32, np.float64])
def test_real_feature_dtypes_are_converted(dtype, rng):
    model = feature_model(rng)
    x = rng.integers(0, 2, size=(2, 4, 3))
    expected = model.predict(x.astype(np.float32))
    np.testing.assert_array_equal(model.predict(x.astype(dtype)), expected)
    np.testing.assert_array_equal(model.step(x.astype(dtype), None)[0], expected)


@pytest.mark.parametrize("x", [
    np.ones((1, 2, 3), np.complex64), np.full((1, 2, 3), "a"),
    np.array([[[1, 2, None]]], dtype=object), np.ones((1, 2, 3), "datetime64[s]"),
])
def test_feature_dtypes_that_are_not_real_numbers_are_refused(x, rng):
    model = feature_model(rng)
    with pytest.raises(DTypeError):
        model.predict(x)
    with pytest.raises(DTypeError):
        model.step(x, None)


def test_wrong_feature_width_is_a_shape_error_naming_the_expected_shape(rng):
    with pytest.raises(ShapeError, match=r"expected shape .*3\).*got \(1, 2, 4\)"):
        feature_model(rng).predict(np.zeros((1, 2, 4)))


# -------------------------------------------------------------------------- NaN and Inf
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_stay_in_their_own_sequence(value, rng):
    model = feature_model(rng)
    x = rng.normal(size=(3, 6, 3)).astype(np.float32)
    clean = model.predict(x)
    x[1, 2, 0] = value
    with np.errstate(invalid="ignore", over="ignore"):
        dirty = model.predict(x)
        streamed = np.concatenate([model.step(x[:, :3], None)[0],
                                   model.step(x[:, 3:], model.step(x[:, :3], None)[1])[0]],
                                  axis=1)
    np.testing.assert_array_equal(dirty[[0, 2]], clean[[0, 2]])  # other sequences: untouched
    np.testing.assert_array_equal(dirty[1, :2], clean[1, :2])   # earlier steps: untouched
    if np.isnan(value):
        assert np.isnan(dirty[1, 2:]).all()
    np.testing.assert_array_equal(np.isnan(streamed), np.isnan(dirty))
