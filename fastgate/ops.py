"""Non-recurrent building blocks that recurrent models are served with: Dense, Embedding.

They follow the same rules as the recurrent layers: weights validated and converted once at
construction, cheap calls, fastgate errors on bad input, ``.fastgate`` serialization.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .activations import activation_function, canonical_name
from .errors import DTypeError, InputError, ShapeError
from .layers import _as_float_dtype, as_array
from .serialization import save, serializable

__all__ = ["Dense", "Embedding"]


@serializable
class Dense:
    """Affine map on the last axis, ``y = act(x @ kernel + bias)``.

    ``kernel`` is ``(in_features, out_features)`` (Keras layout; PyTorch's ``nn.Linear``
    weight transposed), ``bias`` ``(out_features,)`` or ``None``. Works on any leading shape.
    """

    def __init__(self, kernel: Any, bias: Any = None, *, activation: str = "linear",
                 dtype: Any = np.float32) -> None:
        self.dtype = _as_float_dtype(dtype)
        self.kernel = np.ascontiguousarray(as_array(kernel, self.dtype, "Dense kernel"))
        if self.kernel.ndim != 2:
            raise ShapeError(f"Dense kernel: expected (in_features, out_features), got shape "
                             f"{self.kernel.shape}")
        self.bias = None
        if bias is not None:
            self.bias = np.ascontiguousarray(as_array(bias, self.dtype, "Dense bias"))
            if self.bias.shape != (self.kernel.shape[1],):
                raise ShapeError(f"Dense bias: expected shape ({self.kernel.shape[1]},), got "
                                 f"{self.bias.shape}")
        self.activation = canonical_name(activation)
        self._act = activation_function(self.activation)

    @property
    def in_features(self) -> int:
        return self.kernel.shape[0]

    @property
    def out_features(self) -> int:
        return self.kernel.shape[1]

    def __call__(self, x: Any) -> np.ndarray:
        x = as_array(x, self.dtype, "Dense input")
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ShapeError(f"Dense input: expected last axis of width {self.in_features}, "
                             f"got shape {x.shape}")
        y = x @ self.kernel
        if self.bias is not None:
            y += self.bias
        return self._act(y) if self.activation != "linear" else y

    def _get_spec(self) -> dict[str, Any]:
        return {"kernel": self.kernel, "bias": self.bias, "activation": self.activation,
                "dtype": self.dtype.name}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "Dense":
        return cls(spec["kernel"], spec.get("bias"), activation=spec["activation"],
                   dtype=spec["dtype"])

    def save(self, path: str) -> None:
        """Save in fastgate's own format."""
        save(self, path)

    def __repr__(self) -> str:
        act = "" if self.activation == "linear" else f", activation={self.activation!r}"
        return (f"Dense(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}{act}, dtype={self.dtype.name})")


@serializable
class Embedding:
    """Lookup table: integer ids ``(...)`` -> vectors ``(..., embedding_dim)``.

    Ids must be integers in ``[0, num_embeddings)``; anything else raises
    :class:`~fastgate.errors.InputError` (never an out-of-bounds read).
    """

    def __init__(self, table: Any, *, dtype: Any = np.float32) -> None:
        self.dtype = _as_float_dtype(dtype)
        self.table = np.ascontiguousarray(as_array(table, self.dtype, "Embedding table"))
        if self.table.ndim != 2:
            raise ShapeError(f"Embedding table: expected (num_embeddings, embedding_dim), got "
                             f"shape {self.table.shape}")

    @property
    def num_embeddings(self) -> int:
        return self.table.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.table.shape[1]

    def __call__(self, ids: Any) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.dtype.kind == "f":
            if not np.all(np.isfinite(ids)) or np.any(np.mod(ids, 1)):
                raise DTypeError("Embedding ids must be integers, got non-integral floats")
            ids = ids.astype(np.int64)
        elif ids.dtype.kind not in "iub":
            raise DTypeError(f"Embedding ids must be integers, got dtype {ids.dtype}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_embeddings):
            raise InputError(f"Embedding ids must lie in [0, {self.num_embeddings}), got min "
                             f"{ids.min()} and max {ids.max()}")
        return self.table[ids]

    def _get_spec(self) -> dict[str, Any]:
        return {"table": self.table, "dtype": self.dtype.name}

    @classmethod
    def _from_spec(cls, spec: dict[str, Any]) -> "Embedding":
        return cls(spec["table"], dtype=spec["dtype"])

    def save(self, path: str) -> None:
        """Save in fastgate's own format."""
        save(self, path)

    def __repr__(self) -> str:
        return (f"Embedding(num_embeddings={self.num_embeddings}, "
                f"embedding_dim={self.embedding_dim}, dtype={self.dtype.name})")
