"""``fastgate.load``: one function for every file fastgate reads.

The format is recognised from the file's content first, its extension second
(:func:`fastgate.formats.detect_format`):

* fastgate's own format (a zip holding ``fastgate.json``):
  :func:`fastgate.serialization.load_native`;
* Keras: ``.keras`` archives, ``.h5`` / ``.hdf5`` full models, ``.weights.h5`` weights with an
  architecture: :func:`fastgate.importers.keras.load_keras`;
* PyTorch: ``torch.save`` files (zip or legacy) and safetensors, whatever their extension
  (``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` / ``.safetensors`` when the content says
  nothing): :func:`fastgate.importers.torch.from_torch`;
* ONNX: ``.onnx``, or a file that starts like a serialized ``ModelProto``:
  :func:`fastgate.importers.onnx.from_onnx`.
"""

from __future__ import annotations

import os
from typing import Any

from .errors import WeightFormatError
from .formats import FASTGATE, UNKNOWN, detect_format, framework_of
from .importers.torch_pickle import is_torch_zip as _is_torch_zip  # the old name, kept
from .serialization import load_native

__all__ = ["load"]


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
        Keras and ONNX files give a :class:`fastgate.Model` (``.predict(x)``; an ONNX graph's
        inputs and outputs keep their names: ``.run(output_names, input_feed)``); a
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
    file_format = detect_format(path)
    if file_format == UNKNOWN:
        raise WeightFormatError("unknown file format: expected .fastgate, a Keras file "
                                "(.keras, .h5, .weights.h5), a PyTorch file (.pt, .pth, "
                                ".safetensors) or an ONNX file (.onnx)", path=path)
    framework = framework_of(file_format)
    if architecture is not None and framework != "keras":
        raise WeightFormatError("architecture= only applies to Keras weights files",
                                path=path)
    if file_format == FASTGATE:
        return load_native(path)  # also reports what is wrong with a damaged archive
    if framework == "onnx":
        from .importers.onnx import from_onnx

        return from_onnx(path)
    if framework == "keras":
        from .importers.keras import load_keras

        return load_keras(path, architecture)
    from .importers.torch import from_torch

    return from_torch(path)
