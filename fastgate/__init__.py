"""fastgate: a compiled CPU inference engine for LSTM, GRU and SimpleRNN networks.

Build layers from weights in fastgate's internal layout (:mod:`fastgate.layout`) and call
them like PyTorch's::

    import fastgate
    lstm = fastgate.LSTM.random(input_size=5, hidden_size=32)
    out, (h_n, c_n) = lstm(x)                # x: (T, B, 5) float32

Load trained models with :func:`load` (Keras files, ONNX files, fastgate's own format),
:func:`from_keras`, :func:`from_torch` and :func:`from_onnx`. The compiled kernels (Cython; packed register-blocked products for
AVX-512 and AVX2, BLAS through SciPy on other CPUs) run when the extension is built; the NumPy
oracle (:mod:`fastgate.oracle`) is the fallback and the definition of correctness.
"""

from __future__ import annotations

from ._version import __version__
from .backend import available_backends, backend, use_backend
from .errors import (BackendError, ConfigError, DTypeError, FastgateError, InputError, ShapeError,
                     UnsupportedLayerError, WeightFormatError)
from .layers import GRU, LSTM, RecurrentLayer, SimpleRNN
from .layout import GATE_ORDERS, CellWeights, reorder_gates
from .ops import (Activation, Bidirectional, Dense, Embedding, Flatten, GlobalPooling1D, Masking,
                  Recurrent, RepeatVector)
from . import sequence_ops  # its ops (Conv1D, BatchNormalization...) load from .fastgate
from .model import Model
from .loading import load
from .importers.keras import from_keras
from .cells import GRUCell, LSTMCell, RNNCell
from .importers.torch import from_torch
from .importers.onnx import from_onnx
from .serialization import save
from .trace import Trace
from .threads import get_num_threads, set_num_threads
from . import plans
from .plans import explain

__all__ = [
    # layers and models
    "LSTM", "GRU", "SimpleRNN", "RecurrentLayer", "LSTMCell", "GRUCell", "RNNCell", "Model",
    "Dense", "Embedding", "Activation", "Bidirectional", "Flatten", "GlobalPooling1D",
    "Masking", "Recurrent", "RepeatVector",
    # weights and files
    "CellWeights", "GATE_ORDERS", "reorder_gates", "load", "save", "from_keras", "from_torch",
    "from_onnx",
    # gate introspection (layer.trace, model.trace)
    "Trace",
    # backends and threads
    "backend", "use_backend", "available_backends", "set_num_threads", "get_num_threads",
    "plans", "explain",
    # errors
    "FastgateError", "ConfigError", "InputError", "ShapeError", "DTypeError",
    "WeightFormatError", "UnsupportedLayerError", "BackendError",
    "__version__",
]
