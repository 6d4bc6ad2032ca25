"""Checks shared by every layer, op and reader: dtypes, arrays of real numbers, cell weights,
reading a file.

A low module (it imports only :mod:`fastgate.errors` and :mod:`fastgate.layout`), so that
layers, cells and ops all build on it without importing each other's helpers.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Mapping

import numpy as np

from .errors import ConfigError, DTypeError, WeightFormatError
from .layout import CellWeights

__all__ = ["FLOAT_DTYPES", "as_float_dtype", "as_array", "as_kernel_array",
           "as_cell_weights", "reading", "read_file"]

#: The dtypes fastgate computes in.
FLOAT_DTYPES = frozenset({np.dtype(np.float32), np.dtype(np.float64)})


def as_float_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as a NumPy dtype, which must be float32 or float64 (else ConfigError)."""
    try:
        dtype = np.dtype(dtype)
    except TypeError as error:
        raise ConfigError(f"dtype must be float32 or float64, got {dtype!r}") from error
    if dtype not in FLOAT_DTYPES:
        raise ConfigError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def as_array(value: Any, dtype: np.dtype, what: str) -> np.ndarray:
    """``value`` as an array of ``dtype``, refusing what cannot be a real number.

    Booleans, integers and floats of any width are converted (like NumPy's ``astype``);
    complex, object, string and other dtypes raise :class:`~fastgate.errors.DTypeError`.
    """
    if type(value) is np.ndarray and value.dtype == dtype:
        return value  # the common case, already right: ~4x cheaper than the general path
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise DTypeError(f"{what} must hold real numbers, got dtype {array.dtype}")
    return array.astype(dtype, copy=False)


def as_kernel_array(array: np.ndarray) -> np.ndarray:
    """``array`` as the kernels read it in place: C-contiguous and aligned (a copy if it is
    not; a misaligned view, e.g. from ``np.frombuffer`` at an odd offset, is contiguous)."""
    array = np.ascontiguousarray(array)
    return array if array.flags.aligned else array.copy()


def as_cell_weights(entry: Any, where: str) -> CellWeights:
    """``entry`` (CellWeights, a mapping of its field names, or a 4/5-tuple) as CellWeights;
    ``where`` names the layer and direction in the error."""
    if isinstance(entry, CellWeights):
        return entry
    if isinstance(entry, Mapping):
        unknown = set(entry) - set(CellWeights._fields)
        if unknown:
            raise ConfigError(f"{where}: unknown weight names {sorted(unknown)}; expected "
                              f"{list(CellWeights._fields)}")
        return CellWeights(**entry)
    if isinstance(entry, (tuple, list)) and len(entry) in (4, 5):
        return CellWeights(*entry)
    raise ConfigError(f"{where}: expected CellWeights (input_kernel, recurrent_kernel, "
                      f"input_bias, recurrent_bias[, projection]), got {type(entry).__name__}")


@contextlib.contextmanager
def reading(path: str | os.PathLike) -> Iterator[None]:
    """Within the block, an ``OSError`` (missing file, permissions, I/O error) becomes a
    :class:`~fastgate.errors.WeightFormatError` naming ``path``: what every reader raises."""
    try:
        yield
    except OSError as error:
        raise WeightFormatError(f"cannot read: {error.strerror or error}", path=path) from error


def read_file(path: str | os.PathLike) -> bytes:
    """The bytes of the file ``path`` (:func:`reading`'s errors)."""
    with reading(path), open(path, "rb") as handle:
        return handle.read()
