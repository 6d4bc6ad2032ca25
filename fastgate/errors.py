"""The exceptions fastgate raises.

Every error fastgate raises on purpose is a :class:`FastgateError`. The subclasses also
derive from the matching built-in exception (``ValueError``, ``TypeError``...) so that code
written against NumPy-style errors keeps working.
"""

from __future__ import annotations

__all__ = [
    "FastgateError",
    "ConfigError",
    "InputError",
    "ShapeError",
    "DTypeError",
    "WeightFormatError",
    "UnsupportedLayerError",
    "BackendError",
]


class FastgateError(Exception):
    """Base class of every error fastgate raises on purpose."""


class ConfigError(FastgateError, ValueError):
    """A layer or model was configured with values fastgate cannot honour."""


class InputError(FastgateError, ValueError):
    """A call's input is unusable (wrong shape, dtype, or values such as token ids)."""


class ShapeError(InputError):
    """An array has the wrong rank, width or length; the message says expected vs got."""


class DTypeError(ShapeError, TypeError):
    """An array has a dtype fastgate cannot convert (complex, object, strings...)."""


class WeightFormatError(FastgateError, ValueError):
    """A weight file or state_dict is malformed, truncated or unsafe.

    ``path``, ``layer`` and ``tensor`` name where the problem is, when known.
    """

    def __init__(self, message: str, *, path: object = None, layer: str | None = None,
                 tensor: str | None = None) -> None:
        where = []
        if path is not None:
            where.append(f"file {str(path)!r}")
        if layer is not None:
            where.append(f"layer {layer!r}")
        if tensor is not None:
            where.append(f"tensor {tensor!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.path = path
        self.layer = layer
        self.tensor = tensor


class UnsupportedLayerError(WeightFormatError):
    """A saved model uses a layer (or layer option) fastgate does not implement."""


class BackendError(FastgateError, RuntimeError):
    """The requested backend is unknown or not available in this installation."""
