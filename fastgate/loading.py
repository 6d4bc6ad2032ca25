"""``fastgate.load``: one function for every file fastgate reads.

The format is recognised from the file's content first, its extension second:

* fastgate's own format (a zip holding ``fastgate.json``): :func:`fastgate.serialization.load_native`;
* Keras: ``.keras`` archives, ``.h5`` / ``.hdf5`` full models, ``.weights.h5`` weights with an
  architecture: :func:`fastgate.importers.keras.load_keras`;
* PyTorch: ``.pt`` / ``.pth`` / ``.bin`` / ``.safetensors``:
  :func:`fastgate.importers.torch.from_torch`;
* ONNX: ``.onnx``, or a file that starts like a serialized ``ModelProto``:
  :func:`fastgate.importers.onnx.from_onnx`.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any

from .errors import WeightFormatError
from .serialization import is_native, load_native

__all__ = ["load"]

_TORCH_EXTENSIONS = (".pt", ".pth", ".bin", ".safetensors")
_KERAS_EXTENSIONS = (".keras", ".h5", ".hdf5")


def _is_torch_zip(path: str | os.PathLike) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False


def _is_onnx(path: str | os.PathLike, name: str) -> bool:
    if name.endswith(".onnx"):
        return True
    if name.endswith(_TORCH_EXTENSIONS + _KERAS_EXTENSIONS + (".fastgate",)):
        return False
    from .importers.protobuf import looks_like_onnx

    try:
        with open(path, "rb") as handle:
            return looks_like_onnx(handle.read(2))
    except OSError:
        return False


def load(path: str | os.PathLike, architecture: Any = None) -> Any:
    """Load a model or layer from a fastgate, Keras, PyTorch or ONNX file.

    Parameters
    ----------
    path : str or PathLike
        ``.fastgate`` (saved by fastgate), ``.keras`` / ``.h5`` / ``.weights.h5`` (Keras), or
        ``.pt`` / ``.pth`` / ``.safetensors`` (PyTorch), or ``.onnx``.
    architecture : str or dict, optional
        For Keras weights-only files: the model's ``to_json()`` text or dict.

    Returns
    -------
    Model or layer
        Keras files give a :class:`fastgate.Model` (call ``.predict(x)``); ONNX files an
        :class:`fastgate.OnnxModel` (``.run(output_names, input_feed)``, ``.predict(x)``); a
        ``.fastgate`` file gives back whatever was saved.

    Raises
    ------
    WeightFormatError
        The file is missing, unreadable, or in no format fastgate knows.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise WeightFormatError(f"path must be a file name, got {type(path).__name__}")
    if not os.path.exists(path):
        raise WeightFormatError("no such file", path=path)
    if os.path.isdir(path):
        raise WeightFormatError("is a directory, expected a model file (a TensorFlow "
                                "SavedModel directory is not supported)", path=path)
    name = os.fspath(path).lower()
    if is_native(path):
        if architecture is not None:
            raise WeightFormatError("architecture= only applies to Keras weights files",
                                    path=path)
        return load_native(path)

    if _is_onnx(path, name):
        if architecture is not None:
            raise WeightFormatError("architecture= only applies to Keras weights files",
                                    path=path)
        from .importers.onnx import from_onnx

        return from_onnx(path)

    from .importers.keras_hdf5 import is_hdf5

    torch_like = name.endswith(_TORCH_EXTENSIONS) or _is_torch_zip(path)
    if not torch_like and (is_hdf5(path) or zipfile.is_zipfile(path)
                           or name.endswith(_KERAS_EXTENSIONS)):
        from .importers.keras import load_keras

        return load_keras(path, architecture)
    if torch_like:
        if architecture is not None:
            raise WeightFormatError("architecture= only applies to Keras weights files",
                                    path=path)
        from .importers.torch import from_torch  # written alongside; imported when needed

        return from_torch(path)
    if name.endswith(".fastgate"):
        return load_native(path)  # reports what is wrong with the archive
    raise WeightFormatError("unknown file format: expected .fastgate, a Keras file (.keras, "
                            ".h5, .weights.h5), a PyTorch file (.pt, .pth, .safetensors) or "
                            ".onnx",
                            path=path)
