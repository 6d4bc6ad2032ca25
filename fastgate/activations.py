"""Activation functions, by name, as written in the equations.

Each activation has a name (what layers and importers use), a small integer code (what the
compiled kernels switch on; the codes are part of the kernel ABI and must match
``fastgate/_kernels/recurrent.pyx``) and a NumPy definition (what the oracle computes).

Two different functions have been called ``hard_sigmoid``:

* ``"hard_sigmoid"``: ``clip(x / 6 + 1/2, 0, 1)``: Keras 3 and ``torch.nn.Hardsigmoid``.
* ``"hard_sigmoid_keras2"``: ``clip(0.2 x + 1/2, 0, 1)``: Keras 2 / tf.keras and Theano.

The Keras importer picks the one the saving Keras version computed.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import ConfigError

__all__ = ["ACTIVATIONS", "activation_code", "activation_function", "canonical_name"]

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

_ALIASES = {"identity": "linear", "swish": "silu", None: "linear"}


def canonical_name(name: str | None) -> str:
    """Return the canonical activation name for ``name`` (aliases resolved).

    Raises :class:`~fastgate.errors.ConfigError` for an unknown name.
    """
    name = _ALIASES.get(name, name)
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ConfigError(
            f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return name


def activation_code(name: str) -> int:
    """The integer code the compiled kernels use for activation ``name``."""
    return ACTIVATIONS[canonical_name(name)][0]


def activation_function(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The NumPy function of activation ``name`` (as used by the oracle)."""
    return ACTIVATIONS[canonical_name(name)][1]
