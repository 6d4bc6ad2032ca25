"""The oracle: every recurrent cell in plain NumPy, written straight from the equations.

This module is fastgate's definition of correctness. The compiled kernels are tested
against it, and it is itself tested against PyTorch. It is also the fallback backend when
the compiled extension is not built. It favours being read next to the equations over
speed: one function per cell, one line per equation.

Notation (per step ``t``; ``@`` is a matrix product; ``*`` is elementwise; rows are batch):

LSTM (Hochreiter & Schmidhuber 1997, with forget gate; PyTorch ``nn.LSTM``)::

    i = rec_act(x W_i + b_ii + h U_i + b_hi)
    f = rec_act(x W_f + b_if + h U_f + b_hf)
    g =     act(x W_g + b_ig + h U_g + b_hg)
    o = rec_act(x W_o + b_io + h U_o + b_ho)
    c' = f * c + i * g
    h' = o * act(c')                 (with projection: h' = (o * act(c')) W_hr)

    with peepholes p (Gers & Schmidhuber 2000; ONNX ``P``), i and f also add p_i * c and
    p_f * c to their pre-activations, and o adds p_o * c'. ONNX's options: the activation of
    c' in h' may differ from act (cell_act); input_forget couples f = 1 - i.

ONNX's ``clip`` (every cell): each gate's pre-activation (as written above, peepholes
included) is clamped to [-clip, clip] before its activation, as ONNX Runtime does.

GRU (Cho et al. 2014; PyTorch ``nn.GRU``)::

    r = rec_act(x W_r + b_ir + h U_r + b_hr)
    z = rec_act(x W_z + b_iz + h U_z + b_hz)
    n = act(x W_n + b_in + r * (h U_n + b_hn))      reset after  (PyTorch, Keras reset_after=True)
    n = act(x W_n + b_in + (r * h) U_n + b_hn)      reset before (Cho et al., Keras reset_after=False)
    h' = z * h + (1 - z) * n

SimpleRNN (Elman 1990)::

    h' = act(x W + b_i + h U + b_h)

Weights are in fastgate's internal layout (:mod:`fastgate.layout`).

Tracing (:mod:`fastgate.trace`): given a dict ``gates``, a cell also stores there what it
computed, after each gate's activation: LSTM ``input, forget, cell, output`` (i, f, g, o)
and ``c`` (c'), GRU ``reset, update, candidate`` (r, z, n), and every cell's ``h`` (h').
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .activations import activation_function
from .layout import CellWeights

__all__ = ["lstm_cell", "gru_cell", "rnn_cell", "run_direction", "forward"]

Activation = Callable[[np.ndarray], np.ndarray]


def _clip(x: np.ndarray, clip: float | None) -> np.ndarray:
    return x if clip is None else np.clip(x, -clip, clip)


def lstm_cell(x: np.ndarray, h: np.ndarray, c: np.ndarray, w: CellWeights,
              act: Activation, rec_act: Activation, cell_act: Activation | None = None,
              clip: float | None = None, input_forget: bool = False,
              gates: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One LSTM step: ``(x, h, c) -> (h', c')`` (``cell_act`` defaults to ``act``)."""
    sums = x @ w.input_kernel + w.input_bias + h @ w.recurrent_kernel + w.recurrent_bias
    i, f, g, o = np.split(sums, 4, axis=-1)
    if w.peephole is not None:
        p_i, p_f, p_o = np.split(w.peephole, 3)
        i, f = i + p_i * c, f + p_f * c
    i, f, g = rec_act(_clip(i, clip)), rec_act(_clip(f, clip)), act(_clip(g, clip))
    if input_forget:
        f = 1 - i
    c_new = f * c + i * g
    if w.peephole is not None:
        o = o + p_o * c_new
    o = rec_act(_clip(o, clip))
    h_new = o * (cell_act or act)(c_new)
    if w.projection is not None:
        h_new = h_new @ w.projection
    if gates is not None:
        gates.update(input=i, forget=f, cell=g, output=o, c=c_new, h=h_new)
    return h_new, c_new


def gru_cell(x: np.ndarray, h: np.ndarray, w: CellWeights, act: Activation,
             rec_act: Activation, reset_after: bool, clip: float | None = None,
             gates: dict | None = None) -> np.ndarray:
    """One GRU step: ``(x, h) -> h'``, reset gate applied after or before ``U_n``."""
    x_r, x_z, x_n = np.split(x @ w.input_kernel + w.input_bias, 3, axis=-1)
    U_r, U_z, U_n = np.split(w.recurrent_kernel, 3, axis=-1)
    b_hr, b_hz, b_hn = np.split(w.recurrent_bias, 3)
    r = rec_act(_clip(x_r + h @ U_r + b_hr, clip))
    z = rec_act(_clip(x_z + h @ U_z + b_hz, clip))
    if reset_after:
        n = act(_clip(x_n + r * (h @ U_n + b_hn), clip))
    else:
        n = act(_clip(x_n + (r * h) @ U_n + b_hn, clip))
    h_new = z * h + (1 - z) * n
    if gates is not None:
        gates.update(reset=r, update=z, candidate=n, h=h_new)
    return h_new


def rnn_cell(x: np.ndarray, h: np.ndarray, w: CellWeights, act: Activation,
             clip: float | None = None, gates: dict | None = None) -> np.ndarray:
    """One SimpleRNN (Elman) step: ``(x, h) -> h'``."""
    h_new = act(_clip(x @ w.input_kernel + w.input_bias + h @ w.recurrent_kernel
                      + w.recurrent_bias, clip))
    if gates is not None:
        gates.update(h=h_new)
    return h_new


def run_direction(cell: str, x: np.ndarray, h0: np.ndarray, c0: np.ndarray | None,
                  w: CellWeights, *, act: Activation, rec_act: Activation,
                  reset_after: bool = True, mask: np.ndarray | None = None,
                  reverse: bool = False, hold_masked_output: bool = False,
                  cell_act: Activation | None = None, clip: float | None = None,
                  input_forget: bool = False, trace: dict | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Run one layer in one direction over a time-major sequence ``x`` of shape ``(T, B, D)``.

    ``cell_act``, ``clip`` and ``input_forget`` are ONNX's options (see the module docstring).

    ``trace``, ``{name: (T, B, width) array}`` for the cell's gate names (module docstring),
    receives at ``[t]`` what the cell computed reading ``x[t]``, NaN where ``mask`` is False.

    ``mask`` (``(T, B)`` bool) marks valid steps. At a masked step a sequence's state is
    kept unchanged, and its output is zero (PyTorch packed sequences), or with
    ``hold_masked_output`` the output of its previous step, zero before its first valid step
    (Keras masking). ``reverse`` runs from the last step to the first; outputs stay aligned
    with the input steps.

    Returns ``(outputs (T, B, P), h_n (B, P), c_n (B, H) or None)``.
    """
    steps, batch = x.shape[:2]
    h, c = h0, c0
    width = h0.shape[-1]
    outputs = np.zeros((steps, batch, width), dtype=x.dtype)
    previous_output = np.zeros((batch, width), dtype=x.dtype)
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        gates = None if trace is None else {}
        if cell == "lstm":
            h_new, c_new = lstm_cell(x[t], h, c, w, act, rec_act, cell_act, clip,
                                     input_forget, gates)
        elif cell == "gru":
            h_new, c_new = gru_cell(x[t], h, w, act, rec_act, reset_after, clip, gates), None
        else:
            h_new, c_new = rnn_cell(x[t], h, w, act, clip, gates), None
        if trace is not None:
            for name, values in trace.items():
                values[t] = gates[name] if mask is None else np.where(
                    mask[t][:, None], gates[name], np.nan)
        if mask is None:
            h, c = h_new, c_new
            outputs[t] = h
            continue
        valid = mask[t][:, None]
        h = np.where(valid, h_new, h)
        if c is not None:
            c = np.where(valid, c_new, c)
        fill = previous_output if hold_masked_output else 0
        outputs[t] = np.where(valid, h, fill)
        previous_output = outputs[t]
    return outputs, h, c


def forward(cell: str, x: np.ndarray, weights: Sequence[CellWeights], *, bidirectional: bool,
            h0: np.ndarray, c0: np.ndarray | None, activation: str = "tanh",
            recurrent_activation: str = "sigmoid", reset_after: bool = True,
            mask: np.ndarray | None = None, hold_masked_output: bool = False,
            cell_activation: str | None = None, clip: float | None = None,
            input_forget: bool = False, traces: Sequence[dict] | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Run a stacked, optionally bidirectional recurrent layer over time-major ``x``.

    ``weights`` holds one :class:`~fastgate.layout.CellWeights` per layer and direction
    (``[layer0 forward, layer0 reverse, layer1 forward, ...]``); ``h0`` is
    ``(num_layers * dirs, B, P)`` and ``c0`` (LSTM) ``(num_layers * dirs, B, H)``. Each
    layer's input is the previous layer's forward and reverse outputs, concatenated.

    ``traces``: one ``trace`` of :func:`run_direction` per layer and direction, or None.

    Returns ``(outputs (T, B, dirs * P), h_n, c_n)`` with ``h_n``/``c_n`` arranged as
    ``h0``/``c0``.
    """
    act = activation_function(activation)
    rec_act = activation_function(recurrent_activation)
    cell_act = None if cell_activation is None else activation_function(cell_activation)
    dirs = 2 if bidirectional else 1
    h_n, c_n = [], []
    layer_input = x
    for layer in range(len(weights) // dirs):
        direction_outputs = []
        for direction in range(dirs):
            k = layer * dirs + direction
            out, h, c = run_direction(
                cell, layer_input, h0[k], None if c0 is None else c0[k], weights[k],
                act=act, rec_act=rec_act, reset_after=reset_after, mask=mask,
                reverse=direction == 1, hold_masked_output=hold_masked_output,
                cell_act=cell_act, clip=clip, input_forget=input_forget,
                trace=None if traces is None else traces[k])
            direction_outputs.append(out)
            h_n.append(h)
            c_n.append(c)
        layer_input = np.concatenate(direction_outputs, axis=-1)
    return (layer_input, np.stack(h_n),
            None if c0 is None else np.stack(c_n))
