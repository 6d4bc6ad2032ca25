"""What kind of model file a path is: one answer for :func:`fastgate.load` and the CLI.

The format is recognised from the file's content first, its extension second (the extension
only decides for files whose content says nothing, e.g. a truncated ``.pt``; the loader it
selects then reports what is wrong with the file).
"""

from __future__ import annotations

import os
import zipfile

from .importers.keras_hdf5 import is_hdf5
from .importers.safetensors import is_safetensors
from .importers.torch_pickle import is_torch_zip
from .serialization import is_native

__all__ = ["detect_format", "framework_of", "FASTGATE", "KERAS_ARCHIVE", "KERAS_HDF5",
           "SAFETENSORS", "TORCH_ZIP", "TORCH_LEGACY", "ONNX", "UNKNOWN", "TORCH_EXTENSIONS",
           "KERAS_EXTENSIONS"]

FASTGATE = "fastgate"            #: a zip holding ``fastgate.json``
KERAS_ARCHIVE = "keras_archive"  #: a Keras 3 ``.keras`` zip archive
KERAS_HDF5 = "keras_hdf5"        #: an HDF5 file: Keras full model or weights
SAFETENSORS = "safetensors"      #: a safetensors file (8-byte header size, JSON header)
TORCH_ZIP = "torch_zip"          #: ``torch.save``'s zip format (``<name>/data.pkl``)
TORCH_LEGACY = "torch_legacy"    #: ``torch.save``'s legacy format (pickles in a row)
ONNX = "onnx"                    #: a serialized ONNX ``ModelProto``
UNKNOWN = "unknown"

TORCH_EXTENSIONS = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
KERAS_EXTENSIONS = (".keras", ".h5", ".hdf5")

_FRAMEWORKS = {FASTGATE: "fastgate", KERAS_ARCHIVE: "keras", KERAS_HDF5: "keras",
               SAFETENSORS: "torch", TORCH_ZIP: "torch", TORCH_LEGACY: "torch",
               ONNX: "onnx", UNKNOWN: "unknown"}

# The first pickle of a legacy torch.save file: protocol 2, then the long
# 0x1950a86a20f9469cfc6c (torch/serialization.py MAGIC_NUMBER) as LONG1 of 10 bytes.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def _is_torch_legacy(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts with the magic number of torch's legacy format."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(_TORCH_LEGACY_MAGIC)) == _TORCH_LEGACY_MAGIC
    except OSError:
        return False


def _format_by_extension(name: str) -> str:
    """The format a file name promises (for files whose content is not recognised)."""
    if name.endswith(".safetensors"):
        return SAFETENSORS
    if name.endswith(TORCH_EXTENSIONS):
        return TORCH_LEGACY
    if name.endswith(".keras"):
        return KERAS_ARCHIVE
    if name.endswith(KERAS_EXTENSIONS):
        return KERAS_HDF5
    if name.endswith(".fastgate"):
        return FASTGATE
    if name.endswith(".onnx"):
        return ONNX
    return UNKNOWN


def _looks_like_onnx(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like a serialized ModelProto (ir_version, field 1, first)."""
    from .importers.protobuf import looks_like_onnx

    try:
        with open(path, "rb") as handle:
            return looks_like_onnx(handle.read(2))
    except OSError:
        return False


def detect_format(path: str | os.PathLike) -> str:
    """The format of the model file at ``path``, by content first and extension second.

    Parameters
    ----------
    path : str or PathLike
        A file name; a missing or unreadable file is judged by its extension alone.

    Returns
    -------
    str
        One of :data:`FASTGATE`, :data:`KERAS_ARCHIVE`, :data:`KERAS_HDF5`,
        :data:`SAFETENSORS`, :data:`TORCH_ZIP`, :data:`TORCH_LEGACY`, :data:`ONNX`,
        :data:`UNKNOWN`.

    Notes
    -----
    A zip archive is fastgate's if it holds ``fastgate.json``, PyTorch's if it holds exactly
    one ``<name>/data.pkl`` (the rule the torch reader applies) or has a PyTorch extension
    (so the torch reader explains what is missing), and a Keras archive otherwise. A file is
    ONNX by its ``.onnx`` extension, or, with no other framework's extension, by starting
    like a serialized ``ModelProto``.
    """
    name = os.fspath(path).lower()
    if is_native(path):
        return FASTGATE
    if is_torch_zip(path):
        return TORCH_ZIP
    if is_safetensors(path):
        return SAFETENSORS
    if _is_torch_legacy(path):
        return TORCH_LEGACY
    if is_hdf5(path):
        return KERAS_HDF5
    if zipfile.is_zipfile(path):
        return TORCH_ZIP if name.endswith(TORCH_EXTENSIONS) else KERAS_ARCHIVE
    by_extension = _format_by_extension(name)
    if by_extension == UNKNOWN and _looks_like_onnx(path):
        return ONNX
    return by_extension


def framework_of(file_format: str) -> str:
    """``"fastgate"``, ``"keras"``, ``"torch"`` or ``"unknown"``: who writes ``file_format``."""
    return _FRAMEWORKS[file_format]
