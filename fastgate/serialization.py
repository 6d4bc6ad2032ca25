"""fastgate's own file format (``.fastgate``): how a service ships a model.

A ``.fastgate`` file is an uncompressed zip archive with

* ``fastgate.json``: ``{"format": "fastgate", "version": 1, "fastgate_version": ...,
  "object": SPEC}``, where ``SPEC`` is ``{"__object__": class name, "spec": {...}}``
  and arrays inside it are ``{"__array__": "arrays/<n>.npy"}`` references;
* ``arrays/<n>.npy``: one NumPy ``.npy`` file per array (never pickled objects).

Loading needs only NumPy and reads each array straight from the archive. Only classes
registered with :func:`serializable` can be built from a file, and every size is checked
against the archive before anything is allocated.

A class takes part by defining ``_get_spec(self) -> dict`` (JSON values, NumPy arrays and
other serializable objects, nested in dicts and lists) and ``_from_spec(cls, spec)``.
"""

from __future__ import annotations

import io
import json
import os
import tokenize
import zipfile
from typing import Any, TypeVar

import numpy as np

from ._validation import read_file
from ._version import __version__
from .errors import WeightFormatError

__all__ = ["serializable", "save", "load_native", "to_bytes", "from_bytes", "is_native"]

FORMAT_NAME = "fastgate"
FORMAT_VERSION = 1
_MAX_JSON_BYTES = 64 << 20
_MAX_DEPTH = 64
_REGISTRY: dict[str, type] = {}

T = TypeVar("T", bound=type)


def serializable(cls: T) -> T:
    """Class decorator: register ``cls`` as buildable from a ``.fastgate`` file."""
    _REGISTRY[cls.__name__] = cls
    return cls


def _encode(value: Any, arrays: dict[str, np.ndarray], depth: int = 0) -> Any:
    if depth > _MAX_DEPTH:
        raise ValueError("object nesting too deep to save")
    if isinstance(value, np.ndarray):
        name = f"arrays/{len(arrays)}.npy"
        arrays[name] = value
        return {"__array__": name}
    if type(value).__name__ in _REGISTRY and hasattr(value, "_get_spec"):
        return {"__object__": type(value).__name__,
                "spec": _encode(value._get_spec(), arrays, depth + 1)}
    if isinstance(value, dict):
        return {str(k): _encode(v, arrays, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, arrays, depth + 1) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save a value of type {type(value).__name__}")


def to_bytes(obj: Any) -> bytes:
    """Serialize ``obj`` (a fastgate layer or model) to the bytes of a ``.fastgate`` file."""
    arrays: dict[str, np.ndarray] = {}
    document = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
                "fastgate_version": __version__, "object": _encode(obj, arrays)}
    buffer = io.BytesIO()

    def member(name: str) -> zipfile.ZipInfo:
        # a fixed timestamp (the zip epoch): the same object always gives the same bytes
        # (writestr(name) would stamp the clock, which ticks in 2-second steps mid-save)
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o600 << 16   # what writestr(name) gives
        return info

    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(member("fastgate.json"), json.dumps(document, indent=1))
        for name, array in arrays.items():
            data = io.BytesIO()
            # (asarray, not ascontiguousarray: that one turns a 0-d array into a 1-d one)
            np.lib.format.write_array(data, np.asarray(array, order="C"), allow_pickle=False)
            archive.writestr(member(name), data.getvalue())
    return buffer.getvalue()


def save(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` to ``path`` in fastgate's own format (see the module docstring)."""
    data = to_bytes(obj)
    with open(path, "wb") as handle:
        handle.write(data)


class _Reader:
    def __init__(self, archive: zipfile.ZipFile, path: Any) -> None:
        self.archive = archive
        self.path = path
        self.members = {info.filename: info for info in archive.infolist()}

    def error(self, message: str, tensor: str | None = None) -> WeightFormatError:
        return WeightFormatError(message, path=self.path, tensor=tensor)

    def array(self, name: Any) -> np.ndarray:
        info = self.members.get(name) if isinstance(name, str) else None
        if info is None:
            raise self.error(f"array {name!r} is referenced but missing from the archive")
        try:
            with self.archive.open(info) as handle:
                version = np.lib.format.read_magic(handle)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(handle, max_header_size=10000)
                if dtype.hasobject or dtype.kind not in "biuf":
                    raise self.error(f"array has unsupported dtype {dtype}", tensor=name)
                count = int(np.prod(shape, dtype=np.int64)) if shape else 1
                if count < 0 or count * dtype.itemsize > info.file_size:
                    raise self.error(f"array header claims shape {shape} of {dtype}, more "
                                     f"than the {info.file_size} bytes stored", tensor=name)
                data = handle.read(count * dtype.itemsize)
        except WeightFormatError:
            raise
        except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError, TypeError,
                SyntaxError, tokenize.TokenError, RecursionError, OverflowError) as error:
            # NumPy parses the .npy header with ast/tokenize: a mangled one raises these
            raise self.error(f"unreadable array: {error}", tensor=name) from error
        if len(data) != count * dtype.itemsize:
            raise self.error("array data is truncated", tensor=name)
        array = np.frombuffer(data, dtype=dtype, count=count)
        array = array.reshape(shape[::-1]).T if fortran else array.reshape(shape)
        return array.copy() if not array.flags.writeable else array

    def decode(self, value: Any, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise self.error("object nesting too deep")
        if isinstance(value, dict):
            if set(value) == {"__array__"}:
                return self.array(value["__array__"])
            if "__object__" in value:
                name = value["__object__"]
                cls = _REGISTRY.get(name) if isinstance(name, str) else None
                if cls is None:
                    raise self.error(f"unknown object type {name!r}")
                spec = self.decode(value.get("spec"), depth + 1)
                if not isinstance(spec, dict):
                    raise self.error(f"{name}: spec must be an object")
                try:
                    return cls._from_spec(spec)
                except WeightFormatError:
                    raise
                except (ValueError, TypeError, KeyError, IndexError) as error:
                    raise self.error(f"cannot build {name}: {error}") from error
            return {k: self.decode(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [self.decode(v, depth + 1) for v in value]
        return value


def from_bytes(data: bytes, path: Any = "<bytes>") -> Any:
    """Build the object stored in the bytes of a ``.fastgate`` file."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise WeightFormatError(f"not a fastgate archive: {error}", path=path) from error
    with archive:
        reader = _Reader(archive, path)
        info = reader.members.get("fastgate.json")
        if info is None:
            raise reader.error("fastgate.json is missing: not a fastgate file")
        if info.file_size > _MAX_JSON_BYTES:
            raise reader.error(f"fastgate.json is {info.file_size} bytes, over the "
                               f"{_MAX_JSON_BYTES} limit")
        try:
            document = json.loads(archive.read(info).decode("utf-8"))
        except (ValueError, UnicodeDecodeError, zipfile.BadZipFile, OSError, EOFError,
                RecursionError) as error:
            raise reader.error(f"fastgate.json is unreadable: {error}") from error
        if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
            raise reader.error("fastgate.json does not describe a fastgate file")
        if document.get("version") != FORMAT_VERSION:
            raise reader.error(f"format version {document.get('version')!r} is not supported "
                               f"(this fastgate reads version {FORMAT_VERSION})")
        spec = document.get("object")
        if not isinstance(spec, dict) or "__object__" not in spec:
            # (a document whose object is null, a number or a list decodes to no model)
            raise reader.error("fastgate.json holds no fastgate object (a layer or a model)")
        try:
            return reader.decode(spec)
        except RecursionError as error:
            raise reader.error("object nesting too deep") from error


def load_native(path: str | os.PathLike) -> Any:
    """Load a layer or model saved with :func:`save` (``.fastgate`` file)."""
    return from_bytes(read_file(path), path)


def is_native(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zip archive holding ``fastgate.json``."""
    try:
        with zipfile.ZipFile(path) as archive:
            return "fastgate.json" in archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False

