"""The NumPy oracle behind the compiled kernel's plan interface: :class:`OraclePlan`.

A layer runs every call through one object with the interface of the compiled
:class:`fastgate._kernels.recurrent.LayerPlan`, chosen by the active backend in one place
(``RecurrentLayer._runners``, built by ``_build_runners``):

* ``run(x)`` / ``step(x, state, num_threads, flat_state)``: the fast paths, which return
  ``None`` when their arguments need converting. The oracle has no fast path: they always
  return ``None``, and the layer's general path converts and calls ``forward``;
* ``forward(x, h_state, c_state, mask, batch_major, hold_masked_output, ...)``: the general
  call on checked arrays, writing the final state into ``h_state`` / ``c_state``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import oracle
from .trace import column_views
from .layout import CellWeights

__all__ = ["OraclePlan"]


class OraclePlan:
    """:func:`fastgate.oracle.forward` with the calling convention of the compiled plan.

    Parameters
    ----------
    cell : str
        ``"lstm"``, ``"gru"`` or ``"rnn"``.
    weights : sequence of CellWeights
        The layer's validated weights, one per layer and direction.
    options : dict
        The layer's options as :func:`fastgate.oracle.forward` takes them (``bidirectional``,
        ``activation``, ``recurrent_activation``, ``reset_after``, ``cell_activation``,
        ``clip``, ``input_forget``).
    dtype : numpy dtype
        The layer's dtype (of the outputs).
    out_width : int
        The width of the output: ``num_directions * output_size``.
    hidden_size : int, optional
        The cell's hidden size (the width of its gates), for traces; ``output_size`` (the
        width of ``h``) is ``out_width`` over the directions.
    """

    def __init__(self, cell: str, weights: Sequence[CellWeights], options: dict[str, Any],
                 dtype: np.dtype, out_width: int, hidden_size: int | None = None) -> None:
        self.cell = cell
        self.weights = list(weights)
        self.options = dict(options)
        self.dtype = np.dtype(dtype)
        self.out_width = int(out_width)
        self.output_size = self.out_width // (2 if self.options.get("bidirectional") else 1)
        self.hidden_size = self.output_size if hidden_size is None else int(hidden_size)

    def run(self, x: Any, num_threads: int = 0) -> None:
        """No fast path: ``None`` (the caller's general path converts and calls forward)."""
        return None

    def step(self, x: Any, state: Any, num_threads: int = 0, flat_state: bool = False
             ) -> None:
        """No fast path: ``None`` (the caller's general path converts and calls forward)."""
        return None

    def forward(self, x: np.ndarray, h_state: np.ndarray, c_state: np.ndarray | None,
                mask: np.ndarray | None, batch_major: bool, hold_masked_output: bool,
                num_threads: int = 0, zero_state: bool = False, plan: Any = None,
                active_rows: Any = None, traces: Sequence[np.ndarray] | None = None
                ) -> np.ndarray:
        """The outputs of the layer on ``x`` ``(T, B, D)`` (``(B, T, D)`` if
        ``batch_major``), in ``x``'s layout; the final state overwrites ``h_state`` and
        ``c_state``. ``mask`` is ``None`` or ``(T, B)`` (nonzero: a valid step).
        ``num_threads``, ``zero_state``, ``plan`` and ``active_rows`` choose how the
        compiled kernel computes, not what: the oracle ignores them. ``traces``: one buffer
        per layer and direction (:mod:`fastgate.trace`) the gates of every valid step are
        written into."""
        steps, batch = (x.shape[1], x.shape[0]) if batch_major else x.shape[:2]
        time_major = x.transpose(1, 0, 2) if batch_major else x
        out, h_n, c_n = oracle.forward(
            self.cell, time_major, self.weights, h0=h_state, c0=c_state,
            mask=None if mask is None else np.asarray(mask, bool),
            hold_masked_output=hold_masked_output, **self.options,
            traces=None if traces is None else [
                column_views(t, self.cell, self.hidden_size, self.output_size, batch_major)
                for t in traces])
        if out.shape[0] != steps:  # no steps: the oracle's loop never ran
            out = np.zeros((steps, batch, self.out_width), self.dtype)
        h_state[...] = h_n
        if c_state is not None:
            c_state[...] = c_n
        out = out.transpose(1, 0, 2) if batch_major else out
        return np.ascontiguousarray(out, dtype=self.dtype)

    def __repr__(self) -> str:
        return f"OraclePlan({self.cell!r}, entries={len(self.weights)}, dtype={self.dtype})"
