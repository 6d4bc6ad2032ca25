"""A minimal writer of the protobuf wire format, for the ONNX messages fastgate emits.

Only what :mod:`fastgate.export.onnx` needs: ``ModelProto``, ``GraphProto``, ``NodeProto``,
``AttributeProto``, ``TensorProto`` (``raw_data``, little-endian), ``ValueInfoProto`` and
``OperatorSetIdProto``, with the field numbers of ``onnx/onnx.proto``. A message is built as
bytes from its fields, in field order, so the same model always gives the same bytes.

Wire format (https://protobuf.dev/programming-guides/encoding/): each field is a key
``(number << 3) | wire_type`` as a varint, then a varint (type 0), 4 little-endian bytes
(type 5) or a varint length and that many bytes (type 2: strings, bytes, sub-messages).
Repeated scalars are written unpacked, as proto2 (ONNX's syntax) does by default.
"""

from __future__ import annotations

import struct
from typing import Iterable, Sequence

import numpy as np

__all__ = ["TENSOR_TYPES", "tensor", "attribute", "node", "value_info", "graph", "model"]

_VARINT, _FIXED32, _LENGTH = 0, 5, 2

#: ``TensorProto.DataType`` of the NumPy dtypes fastgate writes.
TENSOR_TYPES = {np.dtype(np.float32): 1, np.dtype(np.int32): 6, np.dtype(np.int64): 7,
                np.dtype(np.bool_): 9, np.dtype(np.float64): 11}

# AttributeProto.AttributeType
_FLOAT, _INT, _STRING, _TENSOR, _FLOATS, _INTS, _STRINGS = 1, 2, 3, 4, 6, 7, 8


def _varint(value: int) -> bytes:
    """``value`` as a base-128 varint; negative integers as their 64-bit two's complement."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


def _int(number: int, value: int) -> bytes:
    return _key(number, _VARINT) + _varint(int(value))


def _float(number: int, value: float) -> bytes:
    return _key(number, _FIXED32) + struct.pack("<f", value)


def _bytes(number: int, data: bytes) -> bytes:
    return _key(number, _LENGTH) + _varint(len(data)) + data


def _string(number: int, text: str) -> bytes:
    return _bytes(number, text.encode("utf-8"))


def tensor(name: str, array: np.ndarray) -> bytes:
    """``TensorProto``: dims (1), data_type (2), name (8), raw_data (9)."""
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    fields = [_int(1, dim) for dim in array.shape]
    fields.append(_int(2, TENSOR_TYPES[np.dtype(dtype.name)]))
    fields.append(_string(8, name))
    fields.append(_bytes(9, np.ascontiguousarray(array, dtype=dtype.newbyteorder("<")).tobytes()))
    return b"".join(fields)


def attribute(name: str, value: object) -> bytes:
    """``AttributeProto`` of an int, float, string, tensor, or a list of ints/floats/strings:
    name (1), f (2), i (3), s (4), t (5), floats (7), ints (8), strings (9), type (20)."""
    fields = [_string(1, name)]
    if isinstance(value, (bool, int, np.integer)):
        fields += [_int(3, int(value)), _int(20, _INT)]
    elif isinstance(value, (float, np.floating)):
        fields += [_float(2, float(value)), _int(20, _FLOAT)]
    elif isinstance(value, str):
        fields += [_string(4, value), _int(20, _STRING)]
    elif isinstance(value, np.ndarray):
        fields += [_bytes(5, tensor("", value)), _int(20, _TENSOR)]
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        fields += [_string(9, v) for v in value] + [_int(20, _STRINGS)]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, np.integer))
                                                  and not isinstance(v, bool) for v in value):
        fields += [_int(8, v) for v in value] + [_int(20, _INTS)]
    elif isinstance(value, (list, tuple)) and all(isinstance(v, (float, int)) for v in value):
        fields += [_float(7, v) for v in value] + [_int(20, _FLOATS)]
    else:
        raise TypeError(f"attribute {name!r}: cannot write a {type(value).__name__}")
    return b"".join(fields)


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: str,
         attributes: dict[str, object]) -> bytes:
    """``NodeProto``: input (1), output (2), name (3), op_type (4), attribute (5)."""
    fields = [_string(1, value) for value in inputs] + [_string(2, value) for value in outputs]
    fields += [_string(3, name), _string(4, op_type)]
    fields += [_bytes(5, attribute(key, value)) for key, value in attributes.items()]
    return b"".join(fields)


def value_info(name: str, dtype: np.dtype, shape: Sequence[int | str | None] | None) -> bytes:
    """``ValueInfoProto`` of a tensor: name (1), type (2) = ``TypeProto.tensor_type`` (1) =
    elem_type (1), shape (2) of dims: dim_value (1) or dim_param (2)."""
    tensor_type = _int(1, TENSOR_TYPES[np.dtype(dtype)])
    if shape is not None:
        dims = []
        for dim in shape:
            if isinstance(dim, str):
                dims.append(_bytes(1, _string(2, dim)))
            elif dim is None:
                dims.append(_bytes(1, b""))
            else:
                dims.append(_bytes(1, _int(1, dim)))
        tensor_type += _bytes(2, b"".join(dims))
    return _string(1, name) + _bytes(2, _bytes(1, tensor_type))


def graph(name: str, nodes: Iterable[bytes], initializers: Iterable[bytes],
          inputs: Iterable[bytes], outputs: Iterable[bytes], doc_string: str = "") -> bytes:
    """``GraphProto``: node (1), name (2), initializer (5), doc_string (10), input (11),
    output (12)."""
    fields = [_bytes(1, entry) for entry in nodes] + [_string(2, name)]
    fields += [_bytes(5, entry) for entry in initializers]
    if doc_string:
        fields.append(_string(10, doc_string))
    fields += [_bytes(11, entry) for entry in inputs] + [_bytes(12, entry) for entry in outputs]
    return b"".join(fields)


def model(graph_bytes: bytes, *, ir_version: int, opset: int, producer_name: str,
          producer_version: str) -> bytes:
    """``ModelProto``: ir_version (1), producer_name (2), producer_version (3), graph (7),
    opset_import (8) = ``OperatorSetIdProto`` domain (1) "" and version (2)."""
    return b"".join([_int(1, ir_version), _string(2, producer_name),
                     _string(3, producer_version), _bytes(7, graph_bytes),
                     _bytes(8, _string(1, "") + _int(2, opset))])
