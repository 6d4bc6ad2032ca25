"""fastgate's one internal weight layout, and the gate-order table of every framework.

Internal layout
---------------
A recurrent layer is a list of :class:`CellWeights`, one per layer and direction, in
PyTorch's order: ``[layer0 forward, layer0 reverse, layer1 forward, ...]`` (no reverse
entries for a unidirectional layer). With ``G`` gates, hidden size ``H``, input width ``D``
and output width ``P`` (``P = proj_size`` for a projected LSTM, else ``P = H``):

==================  ===========  ===================================================
field               shape        meaning
==================  ===========  ===================================================
input_kernel        (D, G*H)     ``x @ input_kernel`` is the input projection
recurrent_kernel    (P, G*H)     ``h @ recurrent_kernel`` is the recurrent projection
input_bias          (G*H,)       added to the input projection
recurrent_bias      (G*H,)       added to the recurrent projection
projection          (H, P)       LSTM with ``proj_size`` only: ``h = (o * act(c)) @ projection``
peephole            (3*H,)       LSTM with peepholes only (ONNX ``P``): weights on the cell
                                 state for the ``i``, ``f`` and ``o`` gates, in that order
==================  ===========  ===================================================

Gates are stacked along the last axis in the order of :data:`GATE_ORDERS` ``["fastgate"]``:

* LSTM ``i, f, g, o`` (input, forget, cell candidate, output),
* GRU ``r, z, n`` (reset, update, new),
* SimpleRNN: one gate.

Kernels are stored ``x @ W`` style (rows are inputs), as Keras stores them; PyTorch stores
the transpose. Importers translate into this layout with :func:`reorder_gates` and a
transpose; they compute nothing else.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["CellWeights", "GATE_ORDERS", "GATE_COUNT", "reorder_gates"]

#: Number of gates per cell family.
GATE_COUNT = {"lstm": 4, "gru": 3, "rnn": 1}

#: Gate order of each framework, per cell family, in fastgate's gate letters
#: (LSTM: i input, f forget, g cell candidate, o output; GRU: r reset, z update, n new).
#: Keras calls g "c" and n "h"; ONNX calls g "c" and n "h".
GATE_ORDERS: dict[str, dict[str, str]] = {
    "fastgate": {"lstm": "ifgo", "gru": "rzn", "rnn": "h"},
    "torch": {"lstm": "ifgo", "gru": "rzn", "rnn": "h"},
    "keras": {"lstm": "ifgo", "gru": "zrn", "rnn": "h"},
    "onnx": {"lstm": "iofg", "gru": "zrn", "rnn": "h"},
}


class CellWeights(NamedTuple):
    """Weights of one layer and one direction, in fastgate's internal layout.

    See the module docstring for the shapes. ``projection`` is ``None`` except for an LSTM
    with ``proj_size > 0``; ``peephole`` is ``None`` except for an LSTM with peepholes.
    """

    input_kernel: np.ndarray
    recurrent_kernel: np.ndarray
    input_bias: np.ndarray
    recurrent_bias: np.ndarray
    projection: np.ndarray | None = None
    peephole: np.ndarray | None = None


def reorder_gates(array: np.ndarray, cell: str, source: str, target: str = "fastgate",
                  axis: int = -1) -> np.ndarray:
    """Reorder the gate blocks of ``array`` along ``axis`` from ``source``'s to ``target``'s order.

    ``array`` has ``G*H`` entries along ``axis``, gate blocks of ``H`` stacked in the order
    ``GATE_ORDERS[source][cell]``. Returns a new array with the blocks in
    ``GATE_ORDERS[target][cell]`` order.
    """
    source_order = GATE_ORDERS[source][cell]
    target_order = GATE_ORDERS[target][cell]
    array = np.asarray(array)
    if source_order == target_order:
        return array.copy()
    blocks = np.split(array, len(source_order), axis=axis)
    by_gate = dict(zip(source_order, blocks))
    return np.concatenate([by_gate[gate] for gate in target_order], axis=axis)
