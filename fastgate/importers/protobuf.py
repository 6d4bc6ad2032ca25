"""Read ONNX model files: a reader of the protobuf wire format for the subset ONNX needs.

fastgate reads ``.onnx`` files without the ``onnx`` or ``protobuf`` packages. The wire format
is documented (https://protobuf.dev/programming-guides/encoding/): a message is a sequence of
fields, each a varint key ``(field_number << 3) | wire_type`` followed by a varint (type 0),
8 bytes (type 1), a varint length and that many bytes (type 2: strings, bytes, embedded
messages, packed repeated numbers) or 4 bytes (type 5). Unknown fields are skipped, as
protobuf does; of a non-repeated field the last occurrence wins.

The messages read (field numbers from ``onnx/onnx.proto``) are ``ModelProto``,
``GraphProto``, ``NodeProto``, ``AttributeProto``, ``TensorProto`` (``raw_data``, the typed
``*_data`` fields and external data), ``ValueInfoProto`` / ``TypeProto`` (input and output
names, element types and shapes) and ``OperatorSetIdProto``.

Hardened like fastgate's other readers: every length is checked against the bytes that hold
it before anything is allocated; a varint is at most 10 bytes; subgraphs nest at most
:data:`MAX_DEPTH` deep; a tensor has at most :data:`MAX_RANK` dimensions and its element count
(computed with Python integers) must match the bytes present; external data files must lie
inside the model's folder and hold the bytes claimed. Every problem is a
:class:`~fastgate.errors.WeightFormatError` naming the file, node and tensor.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from .._validation import read_file
from ..errors import UnsupportedLayerError, WeightFormatError

__all__ = ["OnnxModelProto", "GraphProto", "NodeProto", "ValueInfo", "parse_model",
           "read_model", "MAX_DEPTH", "MAX_RANK"]

#: Deepest nesting of graphs inside attributes (Loop / If bodies) accepted.
MAX_DEPTH = 16
#: Most dimensions a tensor may have.
MAX_RANK = 64
#: Most entries of any repeated field of one message (nodes, initializers, attributes, ...).
MAX_COUNT = 10_000_000

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5

#: ONNX TensorProto.DataType -> NumPy dtype (little-endian). BFLOAT16 is widened to float32.
TENSOR_DTYPES: dict[int, str] = {
    1: "<f4", 2: "u1", 3: "i1", 4: "<u2", 5: "<i2", 6: "<i4", 7: "<i8", 9: "?",
    10: "<f2", 11: "<f8", 12: "<u4", 13: "<u8", 16: "<u2",
}
_BFLOAT16 = 16
#: Data types whose values a TensorProto keeps in int32_data (as int32 or as bit patterns).
_INT32_DATA_TYPES = {2, 3, 4, 5, 6, 9, 10, 16}
_TYPE_NAMES = {0: "UNDEFINED", 8: "STRING", 14: "COMPLEX64", 15: "COMPLEX128"}


def dtype_name(data_type: int) -> str:
    """A readable name of an ONNX data type code (for messages)."""
    if data_type in TENSOR_DTYPES:
        return "BFLOAT16" if data_type == _BFLOAT16 else np.dtype(TENSOR_DTYPES[data_type]).name
    return _TYPE_NAMES.get(data_type, f"data type {data_type}")


# --------------------------------------------------------------------------- the messages
@dataclass
class ValueInfo:
    """A graph input or output: name, element type code (0 if absent) and shape (``None`` if
    absent; each dimension an int, a symbolic name, or ``None``)."""

    name: str
    elem_type: int = 0
    shape: tuple[Any, ...] | None = None


@dataclass
class NodeProto:
    """One node: ``op_type`` in ``domain`` from ``inputs`` to ``outputs`` (``""``: absent
    optional argument), with ``attributes`` decoded to Python values."""

    op_type: str = ""
    name: str = ""
    domain: str = ""
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class GraphProto:
    """A graph: nodes in order, initializers (name -> array), inputs and outputs."""

    name: str = ""
    nodes: list[NodeProto] = field(default_factory=list)
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    inputs: list[ValueInfo] = field(default_factory=list)
    outputs: list[ValueInfo] = field(default_factory=list)
    has_sparse_initializers: bool = False


@dataclass
class OnnxModelProto:
    """A model: IR version, producer, operator sets (domain -> version) and the graph."""

    ir_version: int = 0
    producer_name: str = ""
    producer_version: str = ""
    opset_import: dict[str, int] = field(default_factory=dict)
    graph: GraphProto | None = None
    local_functions: set[tuple[str, str]] = field(default_factory=set)


# ------------------------------------------------------------------------ the wire format
class _Context:
    """Where we are (for error messages) and where external data may be read from."""

    def __init__(self, path: Any, base_dir: str | None) -> None:
        self.path = path
        self.base_dir = base_dir
        self.node: str | None = None

    def error(self, message: str, tensor: str | None = None) -> WeightFormatError:
        return WeightFormatError(message, path=self.path, layer=self.node, tensor=tensor)


def _varint(buf: bytes, pos: int, end: int, ctx: _Context) -> tuple[int, int]:
    """The varint at ``buf[pos:]`` (at most 10 bytes, within ``end``) and the next position."""
    result = 0
    shift = 0
    for index in range(pos, min(pos + 10, end)):
        byte = buf[index]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if result >= 1 << 64:
                raise ctx.error(f"varint at byte {pos} exceeds 64 bits")
            return result, index + 1
        shift += 7
    if pos + 10 <= end:
        raise ctx.error(f"varint at byte {pos} is longer than 10 bytes")
    raise ctx.error(f"varint at byte {pos} runs past the end of its message (byte {end}): "
                    f"the file is truncated or corrupt")


def _signed(value: int) -> int:
    """A varint read as a two's-complement int64 (how int32 and int64 fields are encoded)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _fields(buf: bytes, start: int, end: int, ctx: _Context
            ) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(field_number, wire_type, value)`` for each field of ``buf[start:end]``.

    ``value`` is an int (varint, fixed64, fixed32 as raw bits) or, for length-delimited
    fields, a ``(begin, end)`` pair of positions checked to lie inside the message.
    """
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end, ctx)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ctx.error(f"field number 0 at byte {pos}: not a protobuf message")
        if wire_type == _VARINT:
            value, pos = _varint(buf, pos, end, ctx)
        elif wire_type == _LENGTH:
            length, pos = _varint(buf, pos, end, ctx)
            if length > end - pos:
                raise ctx.error(f"field {number} at byte {pos} claims {length} bytes but its "
                                f"message has {end - pos} left: truncated or corrupt")
            value = (pos, pos + length)
            pos += length
        elif wire_type == _FIXED64 or wire_type == _FIXED32:
            size = 8 if wire_type == _FIXED64 else 4
            if size > end - pos:
                raise ctx.error(f"field {number} at byte {pos} runs past the end of its "
                                f"message: truncated or corrupt")
            value = int.from_bytes(buf[pos:pos + size], "little")
            pos += size
        else:
            raise ctx.error(f"field {number} has wire type {wire_type}, which ONNX never uses "
                            f"(not an ONNX file, or corrupt)")
        yield number, wire_type, value


def _text(buf: bytes, span: tuple[int, int], ctx: _Context) -> str:
    try:
        return bytes(buf[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError as error:
        raise ctx.error(f"a string field is not valid UTF-8: {error}") from error


def _packed_varints(buf: bytes, wire_type: int, value: Any, ctx: _Context) -> list[int]:
    """The signed int64 values of a repeated varint field occurrence (packed or not)."""
    if wire_type == _VARINT:
        return [_signed(value)]
    if wire_type != _LENGTH:
        raise ctx.error(f"a repeated integer field has wire type {wire_type}")
    values = []
    pos, end = value
    while pos < end:
        item, pos = _varint(buf, pos, end, ctx)
        values.append(_signed(item))
    return values


def _float32(bits: int) -> float:
    return struct.unpack("<f", bits.to_bytes(4, "little"))[0]


class _Counter:
    """Counts the entries of a repeated field, refusing more than :data:`MAX_COUNT`."""

    def __init__(self, what: str, ctx: _Context) -> None:
        self.what, self.ctx, self.count = what, ctx, 0

    def add(self, number: int = 1) -> None:
        self.count += number
        if self.count > MAX_COUNT:
            raise self.ctx.error(f"more than {MAX_COUNT} {self.what}")


# ------------------------------------------------------------------------------- tensors
def _parse_tensor(buf: bytes, span: tuple[int, int], ctx: _Context) -> tuple[str, np.ndarray]:
    """Decode a TensorProto to ``(name, array)``; every size checked before allocating."""
    dims: list[int] = []
    data_type = 0
    name = ""
    raw: tuple[int, int] | None = None
    typed: dict[int, list[Any]] = {}
    external: dict[str, str] = {}
    location = 0
    has_segment = False
    for number, wire_type, value in _fields(buf, span[0], span[1], ctx):
        if number == 1:
            dims.extend(_packed_varints(buf, wire_type, value, ctx))
            if len(dims) > MAX_RANK:
                raise ctx.error(f"tensor has more than {MAX_RANK} dimensions")
        elif number == 2 and wire_type == _VARINT:
            data_type = _signed(value)
        elif number == 3:
            has_segment = True
        elif number == 8 and wire_type == _LENGTH:
            name = _text(buf, value, ctx)
        elif number == 9 and wire_type == _LENGTH:
            raw = value
        elif number in (4, 5, 7, 10, 11):
            typed.setdefault(number, []).append((wire_type, value))
        elif number == 6:
            raise UnsupportedLayerError("string tensors are not supported", path=ctx.path,
                                        layer=ctx.node, tensor=name or None)
        elif number == 13 and wire_type == _LENGTH:
            key, entry = _string_entry(buf, value, ctx)
            external[key] = entry
        elif number == 14 and wire_type == _VARINT:
            location = value
    if has_segment:
        raise ctx.error("segmented tensors are not supported", tensor=name)
    if any(dim < 0 for dim in dims):
        raise ctx.error(f"negative dimension in shape {dims}", tensor=name)
    if data_type not in TENSOR_DTYPES:
        raise UnsupportedLayerError(f"tensors of type {dtype_name(data_type)} are not supported",
                                    path=ctx.path, layer=ctx.node, tensor=name or None)
    dtype = np.dtype(TENSOR_DTYPES[data_type])
    count = 1
    for dim in dims:  # Python ints: no overflow whatever the file claims
        count *= dim
    nbytes = count * dtype.itemsize
    if location == 1 or external:
        data = _external_bytes(external, nbytes, name, ctx)
        array = np.frombuffer(data, dtype=dtype)
    elif raw is not None:
        if raw[1] - raw[0] != nbytes:
            raise ctx.error(f"shape {dims} of {dtype_name(data_type)} needs {nbytes} bytes, "
                            f"raw_data holds {raw[1] - raw[0]}", tensor=name)
        array = np.frombuffer(buf, dtype=dtype, count=count, offset=raw[0])
    else:
        array = _typed_data(buf, typed, data_type, dtype, count, dims, name, ctx)
    array = array.reshape(dims)
    if data_type == _BFLOAT16:
        return name, (array.astype(np.uint32) << 16).view(np.float32)
    return name, array.astype(dtype.newbyteorder("="), copy=True)


def _typed_data(buf: bytes, typed: dict[int, list[Any]], data_type: int, dtype: np.dtype,
                count: int, dims: list[int], name: str, ctx: _Context) -> np.ndarray:
    """The values of a tensor held in float_data / int32_data / int64_data / double_data /
    uint64_data, checked to number exactly ``count``."""
    if data_type == 1:
        number, item_size, item_format = 4, 4, "<f4"
    elif data_type == 11:
        number, item_size, item_format = 10, 8, "<f8"
    else:
        number = 5 if data_type in _INT32_DATA_TYPES else (7 if data_type == 7 else 11)
        item_size, item_format = 0, None
    occurrences = typed.get(number, [])
    if item_format is not None:
        # packed fixed-width values: their byte count tells their number, before decoding
        total = sum((value[1] - value[0]) if wire_type == _LENGTH else item_size
                    for wire_type, value in occurrences)
        if total != count * item_size:
            raise ctx.error(f"shape {dims} needs {count} values, the tensor holds "
                            f"{total // item_size}", tensor=name)
        parts = []
        for wire_type, value in occurrences:
            if wire_type == _LENGTH:
                parts.append(bytes(buf[value[0]:value[1]]))
            else:
                parts.append(value.to_bytes(item_size, "little"))
        return np.frombuffer(b"".join(parts), dtype=item_format)
    # varints: each takes at least one byte, so more values than bytes cannot be claimed
    available = sum((value[1] - value[0]) if wire_type == _LENGTH else 1
                    for wire_type, value in occurrences)
    if count > available:
        raise ctx.error(f"shape {dims} needs {count} values, the tensor holds fewer",
                        tensor=name)
    values: list[int] = []
    for wire_type, value in occurrences:
        values.extend(_packed_varints(buf, wire_type, value, ctx))
    if len(values) != count:
        raise ctx.error(f"shape {dims} needs {count} values, the tensor holds {len(values)}",
                        tensor=name)
    if number == 5 and data_type in (10, _BFLOAT16):   # bit patterns of 16-bit floats
        return np.array(values, dtype=np.int64).astype(np.uint16).view(dtype)
    if number == 11:
        return np.array([v & ((1 << 64) - 1) for v in values], dtype=np.uint64).astype(dtype)
    return np.array(values, dtype=np.int64).astype(dtype)


def _two_strings(buf: bytes, span: tuple[int, int], ctx: _Context, first: int,
                 second: int) -> tuple[str, str]:
    """The string fields numbered ``first`` and ``second`` of a message (``""`` if absent)."""
    texts = {first: "", second: ""}
    for number, wire_type, item in _fields(buf, span[0], span[1], ctx):
        if number in texts and wire_type == _LENGTH:
            texts[number] = _text(buf, item, ctx)
    return texts[first], texts[second]


def _string_entry(buf: bytes, span: tuple[int, int], ctx: _Context) -> tuple[str, str]:
    """A ``StringStringEntryProto``: ``(key, value)``."""
    return _two_strings(buf, span, ctx, 1, 2)


def _external_bytes(external: dict[str, str], nbytes: int, name: str, ctx: _Context) -> bytes:
    """The bytes of an external tensor: ``location`` confined to the model's folder,
    ``offset`` and ``length`` checked against that file before reading."""
    location = external.get("location")
    if not location:
        raise ctx.error("external data without a location", tensor=name)
    if ctx.base_dir is None:
        raise ctx.error("the tensor's data is in an external file, which a model given as "
                        "bytes cannot refer to: load the model from its file", tensor=name)
    if os.path.isabs(location) or "\0" in location:
        raise ctx.error(f"external data location {location!r} must be a relative path inside "
                        f"the model's folder", tensor=name)
    base = os.path.realpath(ctx.base_dir)
    target = os.path.realpath(os.path.join(base, location))
    if os.path.commonpath([base, target]) != base:
        raise ctx.error(f"external data location {location!r} lies outside the model's "
                        f"folder {base!r}: refused", tensor=name)
    try:
        offset = int(external.get("offset", "0") or 0)
        length = int(external["length"]) if external.get("length") else None
    except ValueError as error:
        raise ctx.error(f"external data offset/length are not integers: {error}",
                        tensor=name) from error
    if offset < 0 or (length is not None and length < 0):
        raise ctx.error("negative external data offset or length", tensor=name)
    if length is not None and length != nbytes:
        raise ctx.error(f"external data length {length} does not match the {nbytes} bytes the "
                        f"shape needs", tensor=name)
    try:
        with open(target, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if offset + nbytes > size:
                raise ctx.error(f"external data [{offset}, {offset + nbytes}) lies beyond the "
                                f"end of {location!r} ({size} bytes)", tensor=name)
            handle.seek(offset)
            data = handle.read(nbytes)
    except OSError as error:
        raise ctx.error(f"cannot read external data {location!r}: "
                        f"{error.strerror or error}", tensor=name) from error
    if len(data) != nbytes:
        raise ctx.error(f"external data {location!r} is truncated", tensor=name)
    return data


# ---------------------------------------------------------------------------- attributes
_ATTRIBUTE_TYPES = {1: "f", 2: "i", 3: "s", 4: "t", 5: "g", 6: "floats", 7: "ints",
                    8: "strings", 9: "tensors", 10: "graphs"}


def _parse_attribute(buf: bytes, span: tuple[int, int], ctx: _Context, depth: int
                     ) -> tuple[str, Any]:
    """Decode an AttributeProto to ``(name, value)``: float, int, str, array, GraphProto or
    a list of them, as its ``type`` says (or, without one, as its single value field says)."""
    name = ""
    attr_type = 0
    values: dict[str, Any] = {}
    lists: dict[str, list[Any]] = {"floats": [], "ints": [], "strings": [], "tensors": [],
                                   "graphs": []}
    counter = _Counter("attribute values", ctx)
    for number, wire_type, value in _fields(buf, span[0], span[1], ctx):
        if number == 1 and wire_type == _LENGTH:
            name = _text(buf, value, ctx)
        elif number == 20 and wire_type == _VARINT:
            attr_type = value
        elif number == 2 and wire_type == _FIXED32:
            values["f"] = _float32(value)
        elif number == 3 and wire_type == _VARINT:
            values["i"] = _signed(value)
        elif number == 4 and wire_type == _LENGTH:
            values["s"] = bytes(buf[value[0]:value[1]])
        elif number == 5 and wire_type == _LENGTH:
            values["t"] = _parse_tensor(buf, value, ctx)[1]
        elif number == 6 and wire_type == _LENGTH:
            values["g"] = _parse_graph(buf, value, ctx, depth + 1)
        elif number == 7:
            if wire_type == _LENGTH:
                if (value[1] - value[0]) % 4:
                    raise ctx.error(f"attribute {name!r}: packed floats of "
                                    f"{value[1] - value[0]} bytes")
                counter.add((value[1] - value[0]) // 4)
                lists["floats"].extend(np.frombuffer(buf, "<f4", (value[1] - value[0]) // 4,
                                                     value[0]).tolist())
            elif wire_type == _FIXED32:
                counter.add()
                lists["floats"].append(_float32(value))
        elif number == 8:
            ints = _packed_varints(buf, wire_type, value, ctx)
            counter.add(len(ints))
            lists["ints"].extend(ints)
        elif number == 9 and wire_type == _LENGTH:
            counter.add()
            lists["strings"].append(bytes(buf[value[0]:value[1]]))
        elif number == 10 and wire_type == _LENGTH:
            counter.add()
            lists["tensors"].append(_parse_tensor(buf, value, ctx)[1])
        elif number == 11 and wire_type == _LENGTH:
            counter.add()
            lists["graphs"].append(_parse_graph(buf, value, ctx, depth + 1))
        elif number in (14, 15, 22, 23):
            values.setdefault("unsupported", number)
    kind = _ATTRIBUTE_TYPES.get(attr_type)
    if kind is None:   # no (known) type: the one value field present says
        present = [key for key in ("f", "i", "s", "t", "g") if key in values]
        present += [key for key, items in lists.items() if items]
        if len(present) != 1:
            if "unsupported" in values or attr_type:
                return name, _UnsupportedAttribute(attr_type)
            raise ctx.error(f"attribute {name!r} has no type and {len(present)} value fields")
        kind = present[0]
    if kind in lists:
        value = lists[kind]
        if kind == "strings":
            value = [item.decode("utf-8", "replace") for item in value]
        return name, value
    if kind not in values:   # a typed attribute whose value is the default (0, "", ...)
        return name, {"f": 0.0, "i": 0, "s": ""}.get(kind)
    value = values[kind]
    return name, value.decode("utf-8", "replace") if kind == "s" else value


class _UnsupportedAttribute:
    """An attribute of a kind fastgate does not read (sparse tensors, type protos)."""

    def __init__(self, attr_type: int) -> None:
        self.attr_type = attr_type

    def __repr__(self) -> str:
        return f"<unsupported attribute type {self.attr_type}>"


# ------------------------------------------------------------------------ nodes, graphs
def _parse_node(buf: bytes, span: tuple[int, int], ctx: _Context, depth: int) -> NodeProto:
    node = NodeProto()
    attribute_spans = []
    for number, wire_type, value in _fields(buf, span[0], span[1], ctx):
        if wire_type != _LENGTH:
            continue
        if number == 1:
            node.inputs.append(_text(buf, value, ctx))
        elif number == 2:
            node.outputs.append(_text(buf, value, ctx))
        elif number == 3:
            node.name = _text(buf, value, ctx)
        elif number == 4:
            node.op_type = _text(buf, value, ctx)
        elif number == 7:
            node.domain = _text(buf, value, ctx)
        elif number == 5:
            attribute_spans.append(value)
    if len(node.inputs) + len(node.outputs) > MAX_COUNT:
        raise ctx.error(f"node {node.name!r} has more than {MAX_COUNT} inputs and outputs")
    outer, ctx.node = ctx.node, node.name or node.op_type
    try:
        for attribute_span in attribute_spans:
            key, value = _parse_attribute(buf, attribute_span, ctx, depth)
            node.attributes[key] = value
    finally:
        ctx.node = outer
    return node


def _parse_dimension(buf: bytes, span: tuple[int, int], ctx: _Context) -> Any:
    dim: Any = None
    for number, wire_type, value in _fields(buf, span[0], span[1], ctx):
        if number == 1 and wire_type == _VARINT:
            dim = _signed(value)
        elif number == 2 and wire_type == _LENGTH:
            dim = _text(buf, value, ctx) or None
    return dim


def _parse_value_info(buf: bytes, span: tuple[int, int], ctx: _Context) -> ValueInfo:
    info = ValueInfo("")
    for number, wire_type, value in _fields(buf, span[0], span[1], ctx):
        if number == 1 and wire_type == _LENGTH:
            info.name = _text(buf, value, ctx)
        elif number == 2 and wire_type == _LENGTH:       # TypeProto
            for t_number, t_wire, t_value in _fields(buf, value[0], value[1], ctx):
                if t_number != 1 or t_wire != _LENGTH:   # only tensor_type
                    continue
                for n_number, n_wire, n_value in _fields(buf, t_value[0], t_value[1], ctx):
                    if n_number == 1 and n_wire == _VARINT:
                        info.elem_type = _signed(n_value)
                    elif n_number == 2 and n_wire == _LENGTH:   # TensorShapeProto
                        dims = []
                        for d_number, d_wire, d_value in _fields(buf, n_value[0], n_value[1],
                                                                 ctx):
                            if d_number == 1 and d_wire == _LENGTH:
                                dims.append(_parse_dimension(buf, d_value, ctx))
                                if len(dims) > MAX_RANK:
                                    raise ctx.error(f"value {info.name!r} has more than "
                                                    f"{MAX_RANK} dimensions")
                        info.shape = tuple(dims)
    return info


def _parse_graph(buf: bytes, span: tuple[int, int], ctx: _Context, depth: int) -> GraphProto:
    if depth > MAX_DEPTH:
        raise ctx.error(f"graphs nested more than {MAX_DEPTH} deep")
    graph = GraphProto()
    nodes = _Counter("nodes", ctx)
    for number, wire_type, value in _fields(buf, span[0], span[1], ctx):
        if wire_type != _LENGTH:
            continue
        if number == 1:
            nodes.add()
            graph.nodes.append(_parse_node(buf, value, ctx, depth))
        elif number == 2:
            graph.name = _text(buf, value, ctx)
        elif number == 5:
            nodes.add()
            name, array = _parse_tensor(buf, value, ctx)
            graph.initializers[name] = array
        elif number == 15:
            graph.has_sparse_initializers = True
        elif number == 11:
            nodes.add()
            graph.inputs.append(_parse_value_info(buf, value, ctx))
        elif number == 12:
            nodes.add()
            graph.outputs.append(_parse_value_info(buf, value, ctx))
    return graph


def _parse_function_id(buf: bytes, span: tuple[int, int], ctx: _Context) -> tuple[str, str]:
    """A ``FunctionProto``'s ``(domain, name)``."""
    name, domain = _two_strings(buf, span, ctx, 1, 10)
    return domain, name


def parse_model(data: bytes, path: Any = None, base_dir: str | None = None) -> OnnxModelProto:
    """Decode a serialized ``ModelProto``.

    Parameters
    ----------
    data : bytes
        The file's content.
    path : optional
        Named in error messages.
    base_dir : str, optional
        The folder external data files are looked up in (and confined to); ``None`` refuses
        external data.

    Raises
    ------
    WeightFormatError
        Malformed, truncated, or claiming sizes its bytes do not hold; no graph.
    UnsupportedLayerError
        A tensor of a type fastgate does not read (strings, complex, 8-bit floats...).
    """
    ctx = _Context(path, base_dir)
    buf = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    model = OnnxModelProto()
    graph_span = None
    try:
        for number, wire_type, value in _fields(buf, 0, len(buf), ctx):
            if number == 1 and wire_type == _VARINT:
                model.ir_version = _signed(value)
            elif number == 2 and wire_type == _LENGTH:
                model.producer_name = _text(buf, value, ctx)
            elif number == 3 and wire_type == _LENGTH:
                model.producer_version = _text(buf, value, ctx)
            elif number == 8 and wire_type == _LENGTH:
                domain, version = "", 0
                for o_number, o_wire, o_value in _fields(buf, value[0], value[1], ctx):
                    if o_number == 1 and o_wire == _LENGTH:
                        domain = _text(buf, o_value, ctx)
                    elif o_number == 2 and o_wire == _VARINT:
                        version = _signed(o_value)
                model.opset_import[domain] = version
            elif number == 7 and wire_type == _LENGTH:
                graph_span = value
            elif number == 25 and wire_type == _LENGTH:
                model.local_functions.add(_parse_function_id(buf, value, ctx))
        if graph_span is None:
            raise ctx.error("no graph: not an ONNX model file (or an empty one)")
        model.graph = _parse_graph(buf, graph_span, ctx, 0)
    except RecursionError as error:   # cannot happen below MAX_DEPTH; belt and braces
        raise ctx.error("messages nested too deeply") from error
    return model


def read_model(path: str | os.PathLike) -> OnnxModelProto:
    """Read and decode an ``.onnx`` file; external data is read from its folder."""
    return parse_model(read_file(path), path, os.path.dirname(os.path.abspath(path)))


def looks_like_onnx(data: bytes) -> bool:
    """Whether ``data`` (a file's first bytes) plausibly starts a serialized ``ModelProto``:
    field 1 (ir_version, a varint) first, as every ONNX writer emits it."""
    return len(data) >= 2 and data[0] == 0x08 and 1 <= data[1] <= 0x7F
