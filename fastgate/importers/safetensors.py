"""Read ``.safetensors`` files: fastgate's own small reader, no dependency.

We do not use the ``safetensors`` package: the format is simple and documented
(https://huggingface.co/docs/safetensors), and reading it ourselves keeps fastgate's runtime
dependencies at NumPy and SciPy. A file is

* 8 bytes: ``N``, the header length, little-endian unsigned 64-bit;
* ``N`` bytes: a UTF-8 JSON object ``{name: {"dtype": "F32", "shape": [..],
  "data_offsets": [begin, end]}, "__metadata__": {str: str}}`` (optional metadata);
* the data buffer: each tensor's little-endian, C-order bytes at ``[begin, end)`` relative to
  the start of the buffer.

Every size is checked against the real file before anything is allocated: the header length
against the file size (and a 100 MB cap, the reference implementation's), every tensor's byte
range against the data buffer and against its dtype and shape; tensors may not overlap, so
the arrays returned never take more memory than the file holds.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np

from .._validation import reading
from ..errors import WeightFormatError

__all__ = ["read_safetensors", "is_safetensors"]

#: Largest header accepted (the reference implementation's limit).
MAX_HEADER_BYTES = 100_000_000

#: safetensors dtype name -> NumPy dtype (little-endian). BF16 is widened to float32.
_DTYPES: dict[str, str] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_header(raw: bytes, path: Any) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            raise WeightFormatError("the header names a tensor twice", path=path)
        return result

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        if isinstance(error, WeightFormatError):
            raise
        raise WeightFormatError(f"the safetensors header is not valid JSON: {error}",
                                path=path) from error
    if not isinstance(header, dict):
        raise WeightFormatError(f"the safetensors header must be a JSON object, got "
                                f"{type(header).__name__}", path=path)
    return header


def _tensor_entries(header: dict[str, Any], data_size: int, path: Any
                    ) -> list[tuple[str, np.dtype, bool, tuple[int, ...], int, int]]:
    """Validate every tensor entry; return ``(name, dtype, bf16, shape, begin, end)``."""
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise WeightFormatError("entry must be an object with exactly dtype, shape and "
                                    "data_offsets", path=path, tensor=name)
        dtype_name, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
            raise WeightFormatError(f"unsupported dtype {dtype_name!r}; expected one of "
                                    f"{sorted(_DTYPES)}", path=path, tensor=name)
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise WeightFormatError(f"shape must be a list of non-negative integers, got "
                                    f"{str(shape)[:100]}", path=path, tensor=name)
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_int(v) for v in offsets)):
            raise WeightFormatError(f"data_offsets must be [begin, end], got "
                                    f"{str(offsets)[:100]}", path=path, tensor=name)
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise WeightFormatError(f"data_offsets [{begin}, {end}] lie outside the "
                                    f"{data_size}-byte data buffer", path=path, tensor=name)
        dtype = np.dtype(_DTYPES[dtype_name])
        count = 1
        for dim in shape:  # Python ints: no overflow whatever the header claims
            count *= dim
        if count * dtype.itemsize != end - begin:
            raise WeightFormatError(f"shape {shape} of {dtype_name} needs "
                                    f"{count * dtype.itemsize} bytes, but data_offsets span "
                                    f"{end - begin}", path=path, tensor=name)
        entries.append((name, dtype, dtype_name == "BF16", tuple(shape), begin, end))
    ordered = sorted(entries, key=lambda entry: (entry[4], entry[5]))
    for previous, current in zip(ordered, ordered[1:]):
        if current[4] < previous[5]:
            raise WeightFormatError(f"data overlaps tensor {previous[0]!r}", path=path,
                                    tensor=current[0])
    return entries


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every tensor of a ``.safetensors`` file into NumPy arrays.

    Parameters
    ----------
    path : str or path-like
        The file.

    Returns
    -------
    dict of str to ndarray
        Tensor name -> array in native byte order, in the header's order. ``BF16`` tensors
        are widened to float32 (exactly).

    Raises
    ------
    WeightFormatError
        The file is unreadable, truncated, or its header is malformed, claims sizes the file
        does not hold, or lets tensors overlap.
    """
    with reading(path), open(path, "rb") as handle:
        file_size = os.fstat(handle.fileno()).st_size
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise WeightFormatError(f"file is {file_size} bytes, too short for a "
                                    f"safetensors header", path=path)
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > MAX_HEADER_BYTES or header_size > file_size - 8:
            raise WeightFormatError(
                f"header length {header_size} exceeds the file ({file_size} bytes) or "
                f"the {MAX_HEADER_BYTES}-byte limit: truncated or not a safetensors file",
                path=path)
        raw_header = handle.read(header_size)
        header = _parse_header(raw_header, path)
        data_start = 8 + header_size
        entries = _tensor_entries(header, file_size - data_start, path)
        tensors = {}
        for name, dtype, bf16, shape, begin, end in entries:
            handle.seek(data_start + begin)
            data = handle.read(end - begin)
            if len(data) != end - begin:
                raise WeightFormatError("data is truncated", path=path, tensor=name)
            array = np.frombuffer(data, dtype=dtype).reshape(shape)
            tensors[name] = (_bfloat16_to_float32(array) if bf16
                             else array.astype(dtype.newbyteorder("=")))
        return tensors


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` plausibly is a safetensors file (header length fits, JSON object)."""
    try:
        with open(path, "rb") as handle:
            file_size = os.fstat(handle.fileno()).st_size
            prefix = handle.read(9)
    except OSError:
        return False
    if len(prefix) != 9:
        return False
    (header_size,) = struct.unpack("<Q", prefix[:8])
    return header_size <= min(MAX_HEADER_BYTES, file_size - 8) and prefix[8:9] == b"{"
