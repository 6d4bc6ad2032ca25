"""Reading Keras weight files: HDF5 in both of Keras' layouts, and the ``.keras`` archive.

Only reading lives here; :mod:`fastgate.importers.keras` turns what is read into a model.
Every problem (unreadable file, missing group, truncated dataset) is a
:class:`~fastgate.errors.WeightFormatError` naming the file, layer and tensor.

Keras writes weights in two HDF5 layouts:

* legacy (Keras 2 / tf.keras ``.h5``, Keras 3 ``save(..., "x.h5")`` and ``save_weights``
  into ``.h5``): a group (the root, or ``model_weights`` of a full-model file) lists its
  layers in the attribute ``layer_names``; each layer group lists its datasets in the
  attribute ``weight_names`` (attributes over 64 kB are split into ``weight_names0``,
  ``weight_names1``...), in the order of ``layer.weights``.
* Keras 3 (``.weights.h5`` and ``model.weights.h5`` inside ``.keras``): a layer's variables
  are ``layers/<group>/vars/0, 1, ...`` (recurrent cells under ``cell/vars``, wrapped layers
  under ``layer/``, ``forward_layer/``, ``backward_layer/``), where ``<group>`` is the snake
  case of the layer's *class* with a counter (``lstm``, ``lstm_1``...), not its name.
"""

from __future__ import annotations

import contextlib
import io
import json
import mmap
import os
import re
import zipfile
from typing import Any, Iterator

import numpy as np

from ..errors import WeightFormatError

__all__ = ["HDF5_SIGNATURE", "open_hdf5", "read_attribute", "read_dataset", "LegacyWeights",
           "Keras3Weights", "read_keras_archive", "keras3_group_name", "hdf5_errors"]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MAX_CONFIG_BYTES = 64 << 20
#: Largest ratio of a dataset's size to the bytes the file stores for it (compression).
_MAX_INFLATION = 1100
#: A dataset may always claim this much, stored or not (fill values of small arrays).
_SMALL_DATASET_BYTES = 1 << 20


@contextlib.contextmanager
def hdf5_errors(path: Any, layer: str | None = None) -> Iterator[None]:
    """Turn what h5py raises on a corrupt file (``KeyError``, ``RuntimeError``, ``OSError``...)
    into :class:`~fastgate.errors.WeightFormatError`."""
    try:
        yield
    except WeightFormatError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as error:
        raise WeightFormatError(f"corrupt HDF5 content: {error}"[:300], path=path,
                                layer=layer) from error


def _check_global_heaps(data: Any, path: Any) -> None:
    """Refuse a global heap collection that libhdf5 would walk forever.

    libhdf5 (2.0 included) walks the objects of a collection ("Global Heap" in the HDF5 file
    format specification: ``GCOL``, version, 3 reserved bytes, 8-byte collection size; then
    objects of a 2-byte index, 2-byte reference count, 4 reserved bytes, 8-byte size and the
    data padded to 8 bytes) with ``p = begin + need``; a free-space object (index 0) of size
    0 makes no progress, and the first read of a variable-length string (every Keras
    attribute) then hangs. Each collection is walked here first, the same way.
    """
    start = data.find(b"GCOL")
    while start != -1:
        header = data[start:start + 16]
        size = int.from_bytes(header[8:16], "little") if len(header) == 16 else 0
        end = start + size
        if header[4:5] == b"\x01" and 16 < size and end <= len(data):
            at = start + 16
            while end - at >= 16:
                index = int.from_bytes(data[at:at + 2], "little")
                object_size = int.from_bytes(data[at + 8:at + 16], "little")
                need = 16 + (object_size + 7) // 8 * 8 if index else object_size
                if need == 0 or need > end - at:
                    raise WeightFormatError(f"corrupt global heap at byte {start}: object at "
                                            f"byte {at} has size {object_size}", path=path)
                at += need
        start = data.find(b"GCOL", start + 4)


def open_hdf5(source: Any, path: Any) -> Any:
    """Open ``source`` (a path or bytes) read-only with h5py; ``path`` names it in errors."""
    import h5py

    try:
        if isinstance(source, (bytes, bytearray)):
            _check_global_heaps(source, path)
            return h5py.File(io.BytesIO(source), "r")
        with open(source, "rb") as handle:
            if os.fstat(handle.fileno()).st_size:
                with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                    _check_global_heaps(data, path)
        return h5py.File(source, "r")
    except (OSError, ValueError, OverflowError) as error:
        # (h5py raises OverflowError for a superblock address beyond what fits in ssize_t)
        raise WeightFormatError(f"not a readable HDF5 file (truncated or corrupt?): {error}",
                                path=path) from error


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_decode(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_decode(v) for v in value]
    return value


def read_attribute(group: Any, name: str, path: Any, layer: str | None = None) -> Any:
    """Attribute ``name`` of an HDF5 group, decoded, joining Keras' split ``name0, name1...``.

    Returns ``None`` if absent.
    """
    def read(key: str) -> Any:
        claimed = attrs.get_id(key)  # what the header claims, checked before reading
        size = int(np.prod(claimed.shape or (), dtype=object)) * claimed.dtype.itemsize
        if size > _MAX_CONFIG_BYTES:
            raise WeightFormatError(f"attribute {key!r} claims {size} bytes, over the "
                                    f"{_MAX_CONFIG_BYTES}-byte limit", path=path, layer=layer)
        return _decode(attrs[key])

    try:
        attrs = group.attrs
        if name in attrs:
            return read(name)
        if f"{name}0" not in attrs:
            return None
        parts: list = []
        chunk = 0
        while f"{name}{chunk}" in attrs:
            parts.extend(read(f"{name}{chunk}"))
            chunk += 1
        return parts
    except WeightFormatError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as error:
        raise WeightFormatError(f"unreadable attribute {name!r}: {error}", path=path,
                                layer=layer) from error


def read_dataset(group: Any, key: str, path: Any, layer: str | None, tensor: str
                 ) -> np.ndarray:
    """The array stored at ``group[key]``; ``tensor`` names it in errors."""
    import h5py

    try:
        dataset = group.get(key)
    except (OSError, KeyError, ValueError, RuntimeError) as error:
        raise WeightFormatError(f"unreadable: {error}", path=path, layer=layer,
                                tensor=tensor) from error
    if dataset is None:
        raise WeightFormatError("missing from the file", path=path, layer=layer, tensor=tensor)
    if not isinstance(dataset, h5py.Dataset):
        raise WeightFormatError("is a group, expected an array", path=path, layer=layer,
                                tensor=tensor)
    try:
        if dataset.dtype.kind not in "biuf":
            raise WeightFormatError(f"has dtype {dataset.dtype}, expected numbers", path=path,
                                    layer=layer, tensor=tensor)
        # The shape is only a claim: check it against the bytes stored before reading.
        claimed = int(np.prod(dataset.shape or (), dtype=object)) * dataset.dtype.itemsize
        stored = dataset.id.get_storage_size()
        if claimed > max(_MAX_INFLATION * stored, _SMALL_DATASET_BYTES):
            raise WeightFormatError(f"claims shape {dataset.shape} ({claimed} bytes) but the "
                                    f"file stores {stored} bytes for it", path=path,
                                    layer=layer, tensor=tensor)
        return np.asarray(dataset[()])
    except WeightFormatError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError, MemoryError) as error:
        raise WeightFormatError(f"unreadable data (truncated file?): {error}", path=path,
                                layer=layer, tensor=tensor) from error


class LegacyWeights:
    """Weights in the legacy layout: ``group`` holds ``layer_names`` and one group per layer.

    :meth:`get` returns a layer's ``(tensor name, array)`` pairs in ``layer.weights`` order.
    Layers are found by name; if the architecture's names are not those of the file, the
    layers with weights are paired in order, as Keras' ``load_weights`` does.
    """

    def __init__(self, group: Any, path: Any) -> None:
        self.group = group
        self.path = path
        names = read_attribute(group, "layer_names", path)
        if names is None:
            raise WeightFormatError("no 'layer_names' attribute: not a Keras weight group",
                                    path=path)
        self.layer_names = [str(n) for n in names]
        self._by_order: dict[str, str] | None = None
        # Which Keras wrote these arrays (Keras 1's save_weights recorded neither).
        version = read_attribute(group, "keras_version", path)
        backend = read_attribute(group, "backend", path)
        self.keras_version = None if version is None else str(version)
        self.backend = None if backend is None else str(backend)

    def weight_names(self, layer_name: str) -> list[str]:
        try:
            layer_group = self.group[layer_name]
        except (KeyError, OSError, ValueError, RuntimeError) as error:
            raise WeightFormatError("layer group missing from the file", path=self.path,
                                    layer=layer_name) from error
        names = read_attribute(layer_group, "weight_names", self.path, layer_name)
        return [str(n) for n in (names or [])]

    def pair_by_order(self, weighted_layers: list[str]) -> None:
        """Use order instead of names: the k-th layer with weights gets the k-th group."""
        stored = [n for n in self.layer_names if self.weight_names(n)]
        if len(stored) != len(weighted_layers):
            raise WeightFormatError(
                f"the file has weights for {len(stored)} layers ({stored}) but the "
                f"architecture has {len(weighted_layers)} layers with weights "
                f"({weighted_layers}), and their names differ", path=self.path)
        self._by_order = dict(zip(weighted_layers, stored))

    def has_layer(self, layer_name: str) -> bool:
        return layer_name in self.layer_names

    def get(self, layer_name: str) -> list[tuple[str, np.ndarray]]:
        stored = self._by_order.get(layer_name, layer_name) if self._by_order else layer_name
        if stored not in self.layer_names:
            raise WeightFormatError("no weights for this layer in the file (layer_names: "
                                    f"{self.layer_names})", path=self.path, layer=layer_name)
        with hdf5_errors(self.path, layer_name):
            layer_group = self.group[stored]
        return [(name, read_dataset(layer_group, name, self.path, layer_name, name))
                for name in self.weight_names(stored)]


def keras3_group_name(class_name: str, used: dict[str, int]) -> str:
    """The group Keras 3 saves a layer under: snake case of its class, then ``_1``, ``_2``...

    ``used`` counts the names given so far in the same container (Keras'
    ``saving_lib._get_unique_name`` and ``naming.to_snake_case``).
    """
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
    if name in used:
        used[name] += 1
        return f"{name}_{used[name]}"
    used[name] = 0
    return name


class Keras3Weights:
    """Weights in the Keras 3 layout (``.weights.h5``, or inside a ``.keras`` archive)."""

    def __init__(self, root: Any, path: Any) -> None:
        self.root = root
        self.path = path
        if "layers" not in root:
            raise WeightFormatError("no 'layers' group: not a Keras 3 weights file", path=path)

    def has_group(self, group: str) -> bool:
        return group in self.root["layers"]

    def get(self, group: str, parts: list[str], layer_name: str
            ) -> list[tuple[str, np.ndarray]]:
        """The variables of ``layers/<group>/<part>/vars`` for each part, in order."""
        import h5py

        arrays = []
        for part in parts:
            where = "/".join(p for p in ("layers", group, part, "vars") if p)
            with hdf5_errors(self.path, layer_name):
                node = self.root.get(where)
                keys = list(node.keys()) if isinstance(node, h5py.Group) else []
            if node is None:
                raise WeightFormatError("missing from the file", path=self.path,
                                        layer=layer_name, tensor=where)
            if not isinstance(node, h5py.Group):
                raise WeightFormatError("is not a group", path=self.path, layer=layer_name,
                                        tensor=where)
            keys = sorted(keys, key=lambda k: (not k.isdigit(), int(k) if k.isdigit()
                                               else 0, k))
            for key in keys:
                arrays.append((f"{where}/{key}",
                               read_dataset(node, key, self.path, layer_name,
                                            f"{where}/{key}")))
        return arrays


def read_keras_archive(path: Any) -> tuple[dict, bytes, str | None]:
    """Read a Keras 3 ``.keras`` zip: ``(config, weights.h5 bytes, keras_version)``."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            if "config.json" not in members:
                raise WeightFormatError("zip archive without config.json: not a .keras file",
                                        path=path)
            if members["config.json"].file_size > _MAX_CONFIG_BYTES:
                raise WeightFormatError("config.json is too large", path=path)
            config = json.loads(archive.read("config.json").decode("utf-8"))
            version = None
            if "metadata.json" in members:
                metadata = json.loads(archive.read("metadata.json").decode("utf-8"))
                version = metadata.get("keras_version") if isinstance(metadata, dict) else None
            if "model.weights.h5" not in members:
                others = sorted(n for n in members if n.startswith("model.weights"))
                detail = f" (found {others}; sharded or npz weights are not supported)" \
                    if others else ""
                raise WeightFormatError(f"model.weights.h5 is missing from the archive{detail}",
                                        path=path)
            weights = archive.read("model.weights.h5")
    except WeightFormatError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, UnicodeDecodeError,
            RecursionError, zipfile.LargeZipFile) as error:
        raise WeightFormatError(f"unreadable .keras archive (truncated or corrupt?): {error}",
                                path=path) from error
    if not isinstance(config, dict):
        raise WeightFormatError("config.json does not hold a model configuration", path=path)
    return config, weights, version


def is_hdf5(path: str | os.PathLike) -> bool:
    """Whether the file at ``path`` starts with the HDF5 signature."""
    try:
        with open(path, "rb") as handle:
            return handle.read(8) == HDF5_SIGNATURE
    except OSError:
        return False
