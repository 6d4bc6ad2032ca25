"""Writing fastgate models in other frameworks' formats.

* :mod:`fastgate.export.torch`: PyTorch state_dicts (:func:`to_torch_state_dict`) and live
  ``torch.nn`` modules (:func:`torch_module`) holding a fastgate layer's weights;
* :mod:`fastgate.export.onnx`: ONNX models (:func:`to_onnx`), written by a small protobuf
  writer of its own (:mod:`fastgate.export.protobuf`), without the ``onnx`` package.

fastgate's core modules never import this package; the layers' ``to_torch_state_dict`` and
``to_onnx`` methods import it when called.
"""

from __future__ import annotations

from .onnx import to_onnx, to_onnx_bytes
from .torch import to_torch_state_dict, torch_module

__all__ = ["to_onnx", "to_onnx_bytes", "to_torch_state_dict", "torch_module"]
