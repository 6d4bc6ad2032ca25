"""Read ``torch.save`` files without PyTorch, and without ever running code from them.

A ``.pt``/``.pth`` file is a pickle, and unpickling an arbitrary pickle runs arbitrary code.
fastgate therefore unpickles with a *restricted* unpickler that knows only what a state_dict
needs:

* the globals ``collections.OrderedDict``, ``torch._utils._rebuild_tensor``,
  ``_rebuild_tensor_v2``, ``_rebuild_parameter``, ``_rebuild_parameter_with_state`` and the
  typed storage classes (``torch.FloatStorage``...), each mapped to a small fastgate
  substitute that only records its (validated) arguments; every other global
  (``os.system``, ``builtins.eval``, a pickled ``nn.Module``...) raises
  :class:`~fastgate.errors.WeightFormatError` before anything is called;
* plain containers and numbers, and ``('storage', ...)`` persistent ids;
* no ``INST``/``OBJ``/``NEWOBJ``/``EXT`` opcodes, and ``BUILD`` only on an OrderedDict,
  whose state (PyTorch's ``_metadata``) is ignored.

It subclasses the pure-Python ``pickle._Unpickler``, whose memo is a dict (the C unpickler
pre-allocates a memo array as large as the largest index a pickle names). Two containers are
understood:

* the zip format (PyTorch >= 1.6): ``<name>/data.pkl`` plus one member ``<name>/data/<key>``
  of raw little-endian bytes per storage (``<name>/byteorder`` may say ``big``);
* the legacy format (``_use_new_zipfile_serialization=False``): five pickles in a row (magic
  number, protocol version, system info, the object, the storage keys), then each storage as
  an int64 element count and its bytes. The pre-1.0 tar format is refused.

Every storage's size is checked against the bytes the file holds before it is read, and
every tensor view against its storage, so a file cannot make fastgate allocate more than it
holds. Tensors are returned as read-only NumPy views of their storage.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
import zlib
from typing import Any, Callable

import numpy as np

from .._validation import reading
from ..errors import WeightFormatError

__all__ = ["load_torch_file", "is_torch_zip"]

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_PROTOCOL_VERSION = 1001
_MAX_PICKLE_BYTES = 64 << 20
_MAX_DEPTH = 32
_MAX_DIMS = 32
#: Largest zip inflation ratio accepted for a compressed member (deflate's limit is ~1032).
_MAX_INFLATION = 1100

#: PyTorch typed storage class -> NumPy dtype of its elements ("bfloat16" is special-cased).
_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


# ---------------------------------------------------------------------- substitutes
class _StorageType:
    """Stands for ``torch.<X>Storage``: a name and an element dtype, nothing callable."""

    __slots__ = ("name", "dtype", "itemsize")

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]
        self.itemsize = 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


class _Storage:
    """A storage named by a persistent id; ``array`` is filled once its bytes are read."""

    __slots__ = ("key", "type", "numel", "array", "root", "offset")

    def __init__(self, key: str, storage_type: _StorageType, numel: int,
                 root: "_Storage | None" = None, offset: int = 0) -> None:
        self.key = key
        self.type = storage_type
        self.numel = numel
        self.array: np.ndarray | None = None
        self.root = root  # legacy storage views: a slice of another storage
        self.offset = offset

    def data(self) -> np.ndarray:
        if self.root is not None:
            return self.root.data()[self.offset:self.offset + self.numel]
        if self.array is None:
            raise WeightFormatError(f"storage {self.key!r} has no data in the file")
        return self.array


class _Tensor:
    """A tensor as a (storage, offset, size, stride) view, validated when built."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any) -> None:
        if not isinstance(storage, _Storage):
            raise WeightFormatError(f"a tensor's storage must come from a persistent id, got "
                                    f"{type(storage).__name__}")
        if not _is_count(offset):
            raise WeightFormatError(f"tensor storage offset must be a non-negative integer, "
                                    f"got {offset!r:.60}")
        for label, value in (("size", size), ("stride", stride)):
            if not isinstance(value, (tuple, list)) or not all(_is_count(v) for v in value):
                raise WeightFormatError(f"tensor {label} must be a tuple of non-negative "
                                        f"integers, got {value!r:.100}")
        if len(size) > _MAX_DIMS:
            raise WeightFormatError(f"tensor has {len(size)} dimensions, more than "
                                    f"{_MAX_DIMS}")
        if len(size) != len(stride):
            raise WeightFormatError(f"tensor size {tuple(size)} and stride {tuple(stride)} "
                                    f"differ in length")
        count = 1
        for dim in size:
            count *= dim
        if not count and any(dim >= 1 << 31 for dim in size):
            raise WeightFormatError(f"empty tensor of absurd size {tuple(size)}")
        if count:
            last = offset + sum((dim - 1) * step for dim, step in zip(size, stride))
            if last >= storage.numel:
                raise WeightFormatError(
                    f"tensor of size {tuple(size)}, stride {tuple(stride)} at offset {offset} "
                    f"reaches past its storage of {storage.numel} elements")
            if count > storage.numel:
                raise WeightFormatError(f"tensor of size {tuple(size)} is an expanded view of "
                                        f"a {storage.numel}-element storage: not supported")
        self.storage, self.offset = storage, offset
        self.size, self.stride = tuple(size), tuple(stride)

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data()
        if not all(self.size):
            return np.zeros(self.size, data.dtype)
        view = np.lib.stride_tricks.as_strided(
            data[self.offset:], shape=self.size,
            strides=tuple(step * data.itemsize for step in self.stride), writeable=False)
        return view


class _OrderedDict(collections.OrderedDict):
    """``collections.OrderedDict``; BUILD on it is ignored (PyTorch's ``_metadata``)."""


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> _Tensor:
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> _Tensor:
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                       state: Any = None) -> _Tensor:
    if not isinstance(data, _Tensor):
        raise WeightFormatError(f"a Parameter must wrap a tensor, got {type(data).__name__}")
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): _OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}

_REFUSED_OPCODES = (pickle.INST, pickle.OBJ, pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.EXT1,
                    pickle.EXT2, pickle.EXT4, pickle.PERSID)


# ---------------------------------------------------------------------- the unpickler
class _RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Pure-Python unpickler that resolves only :data:`_ALLOWED_GLOBALS`."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, file: io.BytesIO, path: Any,
                 persistent_load: Callable[[Any], Any] | None) -> None:
        super().__init__(file, encoding="utf-8")
        self._path = path
        self._persistent_load = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            hint = ""
            if "." in module and module.split(".")[0] in ("torch", "__main__") or \
                    module == "__main__":
                hint = (" (if this file holds a whole pickled model, save and load "
                        "model.state_dict() instead)")
            raise WeightFormatError(
                f"refusing to load global {module}.{name}: a weight file may hold only "
                f"tensors, numbers and plain containers{hint}", path=self._path)
        return allowed

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent_load is None:
            raise WeightFormatError("unexpected persistent id", path=self._path)
        return self._persistent_load(pid)

    def _refuse(self) -> None:
        raise WeightFormatError("refusing pickle opcodes that build arbitrary objects "
                                "(INST/OBJ/NEWOBJ/EXT/PERSID)", path=self._path)

    def _load_build(self) -> None:
        """BUILD only on an OrderedDict, ignoring the state (torch's ``_metadata``).

        BUILD on anything else could set attributes (even ``__defaults__`` of a function
        reached through an allowed global), so it is refused.
        """
        self.stack.pop()
        if type(self.stack[-1]) is not _OrderedDict:
            raise WeightFormatError(f"refusing BUILD on {type(self.stack[-1]).__name__}",
                                    path=self._path)

    for _code in _REFUSED_OPCODES:
        dispatch[_code[0]] = _refuse
    dispatch[pickle.BUILD[0]] = _load_build
    del _code


def _unpickle(file: io.BytesIO, path: Any,
              persistent_load: Callable[[Any], Any] | None = None) -> Any:
    """Run one restricted unpickling from ``file``'s current position."""
    try:
        return _RestrictedUnpickler(file, path, persistent_load).load()
    except WeightFormatError as error:
        if error.path is None:
            raise WeightFormatError(str(error), path=path) from error
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, OverflowError, MemoryError, RecursionError, UnicodeDecodeError,
            struct.error) as error:
        raise WeightFormatError(f"malformed pickle: {type(error).__name__}: {error}"[:300],
                                path=path) from error


def _storage_id(pid: Any, path: Any) -> tuple[_StorageType, str, int, Any]:
    if not isinstance(pid, tuple) or len(pid) not in (5, 6):
        raise WeightFormatError("persistent id must be ('storage', type, key, location, "
                                "numel[, view])", path=path)
    kind = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if kind != "storage" or not isinstance(storage_type, _StorageType):
        raise WeightFormatError(f"unsupported persistent id kind {kind!r:.40}", path=path)
    if isinstance(key, bytes):
        key = key.decode("ascii", "replace")
    if not isinstance(key, str) or not _is_count(numel):
        raise WeightFormatError("malformed storage persistent id", path=path)
    return storage_type, key, numel, (pid[5] if len(pid) == 6 else None)


# ---------------------------------------------------------------------- containers

def _declared_storage(storages: dict[str, _Storage], pid: Any, path: Any
                      ) -> tuple[_Storage, Any]:
    """The storage a persistent id names (registered on first use), and the id's view part.

    A key declared again with another type or size is a malformed file.
    """
    storage_type, key, numel, view = _storage_id(pid, path)
    storage = storages.get(key)
    if storage is None:
        storage = storages[key] = _Storage(key, storage_type, numel)
    elif storage.type is not storage_type or storage.numel != numel:
        raise WeightFormatError(f"storage {key!r} is declared twice, differently", path=path)
    return storage, view

def is_torch_zip(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zip archive holding a ``*/data.pkl`` (PyTorch zip format)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") and name.count("/") == 1
                       for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, size: int, path: Any,
                 what: str, archive_size: int) -> bytes:
    """Read exactly ``size`` bytes of ``info``, after checking the archive can hold them."""
    if info.file_size != size:
        raise WeightFormatError(f"{what} should be {size} bytes, the archive holds "
                                f"{info.file_size}", path=path)
    stored = info.compress_type == zipfile.ZIP_STORED
    if info.compress_size > archive_size or (
            info.file_size > (info.compress_size if stored
                              else max(info.compress_size, 1) * _MAX_INFLATION)):
        raise WeightFormatError(f"{what} claims {info.file_size} bytes, more than the "
                                f"{archive_size}-byte file can hold", path=path)
    with archive.open(info) as handle:
        data = handle.read(size)
    if len(data) != size:
        raise WeightFormatError(f"{what} is truncated", path=path)
    return data


def _storage_array(raw: bytes, storage_type: _StorageType, big_endian: bool) -> np.ndarray:
    if storage_type.dtype == "bfloat16":
        bits = np.frombuffer(raw, dtype=">u2" if big_endian else "<u2")
        return (bits.astype(np.uint32) << 16).view(np.float32)
    dtype = np.dtype(storage_type.dtype)
    if big_endian and dtype.itemsize > 1:
        return np.frombuffer(raw, dtype=dtype.newbyteorder(">")).astype(dtype)
    return np.frombuffer(raw, dtype=dtype)


def _load_zip(file: Any, path: Any) -> Any:
    try:
        return _read_zip(file, path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, KeyError,
            NotImplementedError, RuntimeError, zlib.error) as error:
        if isinstance(error, WeightFormatError):
            raise
        raise WeightFormatError(f"unreadable zip archive: {type(error).__name__}: {error}",
                                path=path) from error


def _read_zip(file: Any, path: Any) -> Any:
    archive_size = os.fstat(file.fileno()).st_size
    archive = zipfile.ZipFile(file)
    with archive:
        members = {info.filename: info for info in archive.infolist()}
        pickles = [name for name in members
                   if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise WeightFormatError(f"expected one '<name>/data.pkl' in the archive, found "
                                    f"{len(pickles)}: not a torch.save file", path=path)
        root = pickles[0][:-len("data.pkl")]
        info = members[pickles[0]]
        if info.file_size > _MAX_PICKLE_BYTES:
            raise WeightFormatError(f"data.pkl is {info.file_size} bytes, over the "
                                    f"{_MAX_PICKLE_BYTES}-byte limit", path=path)
        big_endian = False
        if root + "byteorder" in members:
            order = _read_member(archive, members[root + "byteorder"],
                                 min(members[root + "byteorder"].file_size, 8), path,
                                 "byteorder", archive_size)
            if order not in (b"little", b"big"):
                raise WeightFormatError(f"unknown byteorder {order[:20]!r}", path=path)
            big_endian = order == b"big"
        storages: dict[str, _Storage] = {}

        def persistent_load(pid: Any) -> _Storage:
            return _declared_storage(storages, pid, path)[0]

        data = _read_member(archive, info, info.file_size, path, "data.pkl", archive_size)
        obj = _unpickle(io.BytesIO(data), path, persistent_load)
        for key, storage in storages.items():
            member = members.get(f"{root}data/{key}")
            if member is None:
                raise WeightFormatError(f"storage data 'data/{key}' is missing from the "
                                        f"archive", path=path)
            raw = _read_member(archive, member, storage.numel * storage.type.itemsize, path,
                               f"storage data 'data/{key}'", archive_size)
            storage.array = _storage_array(raw, storage.type, big_endian)
    return obj


def _load_legacy(data: bytes, path: Any) -> Any:
    stream = io.BytesIO(data)
    magic = _unpickle(stream, path)
    if magic != _MAGIC_NUMBER:
        raise WeightFormatError("not a torch.save file (bad magic number)", path=path)
    version = _unpickle(stream, path)
    if version != _PROTOCOL_VERSION:
        raise WeightFormatError(f"unsupported legacy protocol version {version!r:.40}",
                                path=path)
    sys_info = _unpickle(stream, path)
    little_endian = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
    storages: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> _Storage:
        root, view = _declared_storage(storages, pid, path)
        if view is None:
            return root
        if (not isinstance(view, tuple) or len(view) != 3 or not _is_count(view[1])
                or not _is_count(view[2]) or view[1] + view[2] > root.numel):
            raise WeightFormatError(f"malformed view of storage {root.key!r}", path=path)
        return _Storage(f"{root.key}[view]", root.type, view[2], root=root, offset=view[1])

    obj = _unpickle(stream, path, persistent_load)
    keys = _unpickle(stream, path)
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise WeightFormatError("malformed storage key list", path=path)
    count_format = "<q" if little_endian else ">q"
    for key in keys:
        storage = storages.get(key)
        if storage is None:
            raise WeightFormatError(f"storage {key!r} has data but no tensor uses it",
                                    path=path)
        header = stream.read(8)
        if len(header) != 8:
            raise WeightFormatError(f"storage {key!r} is truncated", path=path)
        (numel,) = struct.unpack(count_format, header)
        if numel != storage.numel:
            raise WeightFormatError(f"storage {key!r} holds {numel} elements, its tensors "
                                    f"declare {storage.numel}", path=path)
        size = numel * storage.type.itemsize
        raw = stream.read(size)
        if len(raw) != size:
            raise WeightFormatError(f"storage {key!r} is truncated ({len(raw)} of {size} "
                                    f"bytes)", path=path)
        storage.array = _storage_array(raw, storage.type, not little_endian)
    return obj


# ---------------------------------------------------------------------- flattening
def _flatten(obj: Any, path: Any) -> dict[str, np.ndarray]:
    """Tensors of a nested mapping / list as ``{"a.b.c": array}``; other leaves dropped."""
    flat: dict[str, np.ndarray] = {}
    seen: set[int] = set()
    stack: list[tuple[str, Any, int]] = [("", obj, 0)]
    while stack:
        name, value, depth = stack.pop()
        if isinstance(value, _Tensor):
            try:
                flat[name] = value.to_numpy()
            except (ValueError, MemoryError) as error:
                raise WeightFormatError(f"cannot view tensor: {error}", path=path,
                                        tensor=name) from error
            continue
        if isinstance(value, dict):
            items = list(value.items())
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        else:
            continue
        if id(value) in seen:
            raise WeightFormatError("a container appears twice (cyclic or shared): not a "
                                    "state_dict", path=path)
        seen.add(id(value))
        if depth >= _MAX_DEPTH:
            raise WeightFormatError(f"containers nested deeper than {_MAX_DEPTH}", path=path)
        for key, item in reversed(items):
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                continue
            stack.append((f"{name}.{key}" if name else str(key), item, depth + 1))
    return flat


def load_torch_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read the tensors of a ``torch.save`` file (a state_dict or a checkpoint dict).

    Parameters
    ----------
    path : str or path-like
        A ``.pt``/``.pth`` file in PyTorch's zip format or its legacy format.

    Returns
    -------
    dict of str to ndarray
        Every tensor, keyed by its path in the saved object (nested dicts joined with ``.``,
        so ``{"model": state_dict}`` gives ``"model.lstm.weight_ih_l0"``), as read-only NumPy
        views of the file's storages. bfloat16 is widened to float32.

    Raises
    ------
    WeightFormatError
        The file is unreadable, truncated, malformed, or holds anything but tensors, numbers
        and plain containers (nothing from it is ever called).
    """
    with reading(path), open(path, "rb") as handle:
        head = handle.read(4)
        if head.startswith(b"PK"):
            obj = _load_zip(handle, path)
        else:
            if head[:1] != b"\x80":
                raise WeightFormatError("not a torch.save file (neither a zip archive nor "
                                        "a pickle; the pre-1.0 tar format is not "
                                        "supported)", path=path)
            size = os.fstat(handle.fileno()).st_size
            handle.seek(0)
            obj = _load_legacy(handle.read(size), path)
    if isinstance(obj, _Tensor):
        raise WeightFormatError("the file holds a single tensor, not a state_dict", path=path)
    tensors = _flatten(obj, path)
    if not tensors:
        raise WeightFormatError("the file holds no tensors", path=path)
    return tensors
