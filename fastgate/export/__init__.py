"""Writing fastgate models in other frameworks' formats.

* :mod:`fastgate.export.torch`: PyTorch state_dicts (:func:`to_torch_state_dict`) and live
  ``torch.nn`` modules (:func:`torch_module`) holding a fastgate layer's weights;

fastgate's core modules never import this package; the layers' ``to_torch_state_dict`` and
``to_onnx`` methods import it when called.
"""

from __future__ import annotations

from .torch import to_torch_state_dict, torch_module

__all__ = ["to_torch_state_dict", "torch_module"]
