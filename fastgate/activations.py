"""Activation functions, by name, as written in the equations.

Each activation has a name (what layers and importers use), a small integer code (what the
compiled kernels switch on; the codes are part of the kernel ABI and must match
``fastgate/_kernels/recurrent.pyx``) and a NumPy definition (what the oracle computes).

Two different functions have been called ``hard_sigmoid``:

* ``"hard_sigmoid"``: ``clip(x / 6 + 1/2, 0, 1)``: Keras 3 and ``torch.nn.Hardsigmoid``.
* ``"hard_sigmoid_keras2"``: ``clip(0.2 x + 1/2, 0, 1)``: Keras 2 / tf.keras and Theano.

The Keras importer picks the one the saving Keras version computed.

Parametrised activations (ONNX's recurrent ops use them) are named with their parameters,
``"name(alpha=a, beta=b)"``, e.g. ``"leaky_relu(alpha=0.1)"``; see
:data:`PARAMETRIC_ACTIVATIONS`. ``"hard_sigmoid(alpha=a, beta=b)"`` is ``clip(a x + b, 0,
1)`` and ``"elu(alpha=a)"`` is ``x if x >= 0 else a (exp(x) - 1)``.
"""

from __future__ import annotations

from typing import Callable

import re

import numpy as np

from .errors import ConfigError

__all__ = ["ACTIVATIONS", "PARAMETRIC_ACTIVATIONS", "activation_code", "activation_function",
           "activation_parameters", "canonical_name"]

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def linear(x: np.ndarray) -> np.ndarray:
    return x


def tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x)


def sigmoid(x: np.ndarray) -> np.ndarray:
    # 1 / (1 + exp(-x)), written through tanh so that it never overflows.
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def elu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def selu(x: np.ndarray) -> np.ndarray:
    return _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0)))


def softsign(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.abs(x))


def softplus(x: np.ndarray) -> np.ndarray:
    # log(1 + exp(x)) without overflow.
    return np.logaddexp(0, x).astype(x.dtype, copy=False)


def exponential(x: np.ndarray) -> np.ndarray:
    return np.exp(x)


def hard_sigmoid(x: np.ndarray) -> np.ndarray:
    # Keras 3 / PyTorch Hardsigmoid: relu6(x + 3) / 6.
    return np.clip(x / 6 + 0.5, 0, 1).astype(x.dtype, copy=False)


def hard_sigmoid_keras2(x: np.ndarray) -> np.ndarray:
    # Keras 2 / tf.keras: clip(0.2 x + 0.5, 0, 1).
    return np.clip(0.2 * x + 0.5, 0, 1).astype(x.dtype, copy=False)


def silu(x: np.ndarray) -> np.ndarray:
    return x * sigmoid(x)


def gelu(x: np.ndarray) -> np.ndarray:
    # Exact GELU (Keras default approximate=False, torch default approximate="none").
    # (SciPy imported here, on first use: scipy.special is ~0.3 s of `import fastgate`.)
    from scipy.special import erf
    return (0.5 * x * (1 + erf(x / np.sqrt(2)))).astype(x.dtype, copy=False)


# name -> (kernel code, NumPy function). Codes are the kernel ABI: never renumber.
ACTIVATIONS: dict[str, tuple[int, Callable[[np.ndarray], np.ndarray]]] = {
    "linear": (0, linear),
    "tanh": (1, tanh),
    "sigmoid": (2, sigmoid),
    "relu": (3, relu),
    "elu": (4, elu),
    "selu": (5, selu),
    "softsign": (6, softsign),
    "softplus": (7, softplus),
    "exponential": (8, exponential),
    "hard_sigmoid": (9, hard_sigmoid),
    "hard_sigmoid_keras2": (10, hard_sigmoid_keras2),
    "silu": (11, silu),
    "gelu": (12, gelu),
}


def _leaky_relu(alpha: float, beta: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: np.where(x >= 0, x, x * x.dtype.type(alpha))


def _thresholded_relu(alpha: float, beta: float) -> Callable[[np.ndarray], np.ndarray]:
    # x if x > alpha else 0 (the ONNX operator and ONNX Runtime; the RNN doc says >=)
    return lambda x: np.where(x > x.dtype.type(alpha), x, 0).astype(x.dtype, copy=False)


def _scaled_tanh(alpha: float, beta: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: x.dtype.type(alpha) * np.tanh(x.dtype.type(beta) * x)


def _affine(alpha: float, beta: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: x.dtype.type(alpha) * x + x.dtype.type(beta)


def _hard_sigmoid_affine(alpha: float, beta: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: np.clip(x.dtype.type(alpha) * x + x.dtype.type(beta), 0, 1).astype(
        x.dtype, copy=False)


def _elu_alpha(alpha: float, beta: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: np.where(x >= 0, x, x.dtype.type(alpha) * np.expm1(np.minimum(x, 0)))


# name -> (kernel code, parameter names, factory (alpha, beta) -> NumPy function). Codes are
# the kernel ABI (vecmath.h): never renumber.
PARAMETRIC_ACTIVATIONS: dict[str, tuple[int, tuple[str, ...], Callable]] = {
    "leaky_relu": (13, ("alpha",), _leaky_relu),
    "thresholded_relu": (14, ("alpha",), _thresholded_relu),
    "scaled_tanh": (15, ("alpha", "beta"), _scaled_tanh),
    "affine": (16, ("alpha", "beta"), _affine),
    "hard_sigmoid": (17, ("alpha", "beta"), _hard_sigmoid_affine),
    "elu": (18, ("alpha",), _elu_alpha),
}

_ALIASES = {"identity": "linear", "swish": "silu", None: "linear"}
_PARAMETRISED = re.compile(r"^\s*([a-z_]+)\s*\((.*)\)\s*$")


def _parse_parametrised(name: str) -> tuple[str, dict[str, float]] | None:
    """``("leaky_relu", {"alpha": 0.1})`` for ``"leaky_relu(alpha=0.1)"``; None if ``name``
    has no parameter list; ConfigError if it is malformed."""
    match = _PARAMETRISED.match(name)
    if match is None:
        return None
    base, arguments = match.group(1), match.group(2)
    if base not in PARAMETRIC_ACTIVATIONS:
        raise ConfigError(f"unknown parametrised activation {name!r}; expected one of "
                          f"{sorted(PARAMETRIC_ACTIVATIONS)}")
    expected = PARAMETRIC_ACTIVATIONS[base][1]
    values: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in arguments.split(","))):
        key, _, value = part.partition("=")
        try:
            values[key.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"activation {name!r}: {part!r} is not key=number") from None
    if sorted(values) != sorted(expected):
        raise ConfigError(f"activation {name!r}: expected parameters {list(expected)}, got "
                          f"{sorted(values)}")
    return base, values


def canonical_name(name: str | None) -> str:
    """Return the canonical activation name for ``name`` (aliases resolved; parametrised
    names written ``"base(alpha=..., beta=...)"`` with their parameters as Python floats).

    Raises :class:`~fastgate.errors.ConfigError` for an unknown name.
    """
    name = _ALIASES.get(name, name)
    if isinstance(name, str) and name not in ACTIVATIONS:
        parsed = _parse_parametrised(name)
        if parsed is not None:
            base, values = parsed
            arguments = ", ".join(f"{key}={values[key]!r}"
                                  for key in PARAMETRIC_ACTIVATIONS[base][1])
            return f"{base}({arguments})"
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ConfigError(
            f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}, or "
            f"{sorted(PARAMETRIC_ACTIVATIONS)} with parameters, e.g. 'leaky_relu(alpha=0.1)'")
    return name


def activation_parameters(name: str) -> tuple[float, float]:
    """``(alpha, beta)`` of a parametrised activation (``(0, 0)`` for the others)."""
    parsed = _parse_parametrised(canonical_name(name))
    if parsed is None:
        return 0.0, 0.0
    return parsed[1].get("alpha", 0.0), parsed[1].get("beta", 0.0)


def activation_code(name: str) -> int:
    """The integer code the compiled kernels use for activation ``name``."""
    name = canonical_name(name)
    if name in ACTIVATIONS:
        return ACTIVATIONS[name][0]
    return PARAMETRIC_ACTIVATIONS[_parse_parametrised(name)[0]][0]


def activation_function(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The NumPy function of activation ``name`` (as used by the oracle)."""
    name = canonical_name(name)
    if name in ACTIVATIONS:
        return ACTIVATIONS[name][1]
    base, _ = _parse_parametrised(name)
    return PARAMETRIC_ACTIVATIONS[base][2](*activation_parameters(name))
