"""Each activation of :mod:`fastgate.activations` against PyTorch's / Keras 3's definition.

Keras 3 runs on the torch backend (``KERAS_BACKEND=torch``, set in conftest). The Keras 2
``hard_sigmoid`` is written out from its source (``tf_keras/src/backend.py``:
``0.2 * x + 0.5`` clipped to ``[0, 1]``), as no installed framework in this environment
computes it outside TensorFlow.

Tolerances: float32 1e-6 relative + 1e-6 absolute (different libm / formulas); float64
1e-12 relative + 1e-12 absolute.
"""

import keras
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastgate.activations import (ACTIVATIONS, activation_code, activation_function,
                                  canonical_name)
from fastgate.errors import ConfigError

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-6, np.float64: 1e-12}


def torch_reference(name):
    return {
        "linear": lambda t: t,
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "relu": torch.relu,
        "elu": F.elu,
        "selu": F.selu,
        "softsign": F.softsign,
        # PyTorch returns x itself above `threshold` (20 by default); keep the exact formula.
        "softplus": lambda t: F.softplus(t, threshold=1000.0),
        "exponential": torch.exp,
        "hard_sigmoid": F.hardsigmoid,
        "silu": F.silu,
        "gelu": lambda t: F.gelu(t, approximate="none"),
    }.get(name)


def keras_reference(name):
    activations = keras.activations
    return {
        "linear": activations.linear,
        "tanh": activations.tanh,
        "sigmoid": activations.sigmoid,
        "relu": activations.relu,
        "elu": activations.elu,
        "selu": activations.selu,
        "softsign": activations.softsign,
        "softplus": activations.softplus,
        "exponential": activations.exponential,
        "hard_sigmoid": activations.hard_sigmoid,
        "silu": activations.silu,
        "gelu": lambda t: activations.gelu(t, approximate=False),
    }.get(name)


def sample(dtype):
    """Points covering the linear pieces, the kinks, the tails, and exact zeros."""
    grid = np.linspace(-12, 12, 2401)
    special = np.array([-3.0, -2.5, 0.0, 2.5, 3.0, -1e-8, 1e-8, -40.0, 40.0])
    return np.concatenate([grid, special]).astype(dtype)


def test_every_activation_has_a_reference():
    covered = {name for name in ACTIVATIONS if torch_reference(name) is not None}
    assert covered | {"hard_sigmoid_keras2"} == set(ACTIVATIONS)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(set(ACTIVATIONS) - {"hard_sigmoid_keras2"}))
def test_matches_torch(name, dtype):
    x = sample(dtype)
    if name == "exponential":
        x = x[np.abs(x) <= 20]
    expected = torch_reference(name)(torch.from_numpy(x)).numpy()
    actual = activation_function(name)(x)
    assert actual.dtype == dtype
    np.testing.assert_allclose(actual, expected, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(set(ACTIVATIONS) - {"hard_sigmoid_keras2"}))
def test_matches_keras3(name, dtype):
    x = sample(dtype)
    if name == "exponential":
        x = x[np.abs(x) <= 20]
    expected = keras.ops.convert_to_numpy(keras_reference(name)(torch.from_numpy(x)))
    actual = activation_function(name)(x)
    np.testing.assert_allclose(actual, expected, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_sigmoid_is_keras3_and_torch(dtype):
    """``hard_sigmoid`` is ``relu6(x + 3) / 6``: 0 below -3, 1 above 3, 0.5 + x/6 between."""
    x = np.array([-4, -3, -1.5, 0, 1.5, 3, 4], dtype)
    expected = np.array([0, 0, 0.25, 0.5, 0.75, 1, 1], dtype)
    np.testing.assert_allclose(activation_function("hard_sigmoid")(x), expected,
                               atol=TOL[dtype])
    keras_values = keras.ops.convert_to_numpy(
        keras.activations.hard_sigmoid(torch.from_numpy(x)))
    np.testing.assert_allclose(keras_values, expected, atol=TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_sigmoid_keras2(dtype):
    """Keras 2 / tf.keras (``tf_keras/src/backend.py``): ``clip(0.2 x + 0.5, 0, 1)``."""
    x = sample(dtype)
    expected = np.clip(0.2 * x.astype(np.float64) + 0.5, 0.0, 1.0)
    actual = activation_function("hard_sigmoid_keras2")(x)
    assert actual.dtype == dtype
    np.testing.assert_allclose(actual, expected, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_array_equal(
        activation_function("hard_sigmoid_keras2")(np.array([-2.5, 0, 2.5, -3, 3], dtype)),
        np.array([0, 0.5, 1, 0, 1], dtype))
    # The two variants differ: a Keras 2 model read as Keras 3 would be wrong.
    assert activation_function("hard_sigmoid")(np.array([1.0]))[0] != pytest.approx(0.7)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_no_overflow_keeps_dtype_and_propagates_nan(name, dtype):
    """Far tails never give NaN (sigmoid, softplus do not overflow); NaN stays NaN."""
    x = np.array([-1e30, -1e4, 1e4, 1e30], dtype) if dtype == np.float32 else np.array(
        [-1e300, -1e4, 1e4, 1e300], dtype)
    with np.errstate(over="ignore"):  # exponential, selu of +1e30 -> inf is IEEE, fine
        y = activation_function(name)(x)
    assert y.dtype == dtype
    assert not np.isnan(y).any(), f"{name} gives NaN at {x[np.isnan(y)]}"
    with np.errstate(invalid="ignore"):  # NumPy flags NaN inputs of logaddexp (softplus)
        nan = activation_function(name)(np.array([np.nan], dtype))
    assert np.isnan(nan).all()


def test_aliases_and_codes():
    assert canonical_name("identity") == "linear"
    assert canonical_name("swish") == "silu"
    assert canonical_name(None) == "linear"
    codes = [activation_code(name) for name in ACTIVATIONS]
    assert sorted(codes) == list(range(len(ACTIVATIONS)))  # unique, dense: the kernel ABI
    assert activation_code("tanh") == 1 and activation_code("sigmoid") == 2
    assert activation_code("swish") == activation_code("silu")


@pytest.mark.parametrize("bad", ["Tanh", "softmax", "", 3, ("tanh",)])
def test_unknown_activation_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="unknown activation"):
        canonical_name(bad)
    with pytest.raises(ConfigError):
        activation_function(bad)


# ------------------------------------------------------- parametrised activations (ONNX)
PARAMETRISED = {
    # name: (reference on x, from the ONNX spec's definitions)
    "leaky_relu(alpha=0.1)": lambda x: np.where(x >= 0, x, 0.1 * x),
    "thresholded_relu(alpha=0.5)": lambda x: np.where(x > 0.5, x, 0),
    "scaled_tanh(alpha=2.0, beta=0.5)": lambda x: 2 * np.tanh(0.5 * x),
    "affine(alpha=3.0, beta=-1.0)": lambda x: 3 * x - 1,
    "hard_sigmoid(alpha=0.3, beta=0.4)": lambda x: np.clip(0.3 * x + 0.4, 0, 1),
    "elu(alpha=0.5)": lambda x: np.where(x >= 0, x, 0.5 * np.expm1(np.minimum(x, 0))),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(PARAMETRISED))
def test_parametrised_activations(name, dtype):
    x = np.linspace(-4, 4, 81).astype(dtype)
    got = activation_function(name)(x)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, PARAMETRISED[name](x.astype(np.float64)),
                               rtol=TOL[dtype], atol=TOL[dtype])
    assert canonical_name(name) == name and canonical_name(name.replace(" ", "")) == name


def test_parametrised_names_and_codes():
    from fastgate.activations import PARAMETRIC_ACTIVATIONS, activation_parameters

    assert canonical_name("scaled_tanh(beta=1, alpha=2)") == "scaled_tanh(alpha=2.0, beta=1.0)"
    assert activation_parameters("affine(alpha=3, beta=-1)") == (3.0, -1.0)
    assert activation_parameters("tanh") == (0.0, 0.0)
    codes = {code for code, _, _ in PARAMETRIC_ACTIVATIONS.values()}
    assert codes.isdisjoint(code for code, _ in ACTIVATIONS.values())
    assert activation_code("elu(alpha=0.5)") == 18 and activation_code("elu") == 4


@pytest.mark.parametrize("bad", ["leaky_relu()", "leaky_relu(alpha=1, beta=2)",
                                 "affine(alpha=1)", "nope(alpha=1)", "elu(alpha=x)"])
def test_malformed_parametrised_names_are_config_errors(bad):
    with pytest.raises(ConfigError):
        canonical_name(bad)
