# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Recurrent kernels: one per cell family (LSTM, GRU, SimpleRNN), fused over float32/float64.

The equations are those of :mod:`fastgate.oracle` (read them there). Per layer and direction:

1. one GEMM projects every timestep at once: ``P_x = X (T*B, D) @ W (D, G*H)``;
2. per step, one GEMM (GEMV at batch 1) adds the recurrent term into that step's rows of
   ``P_x`` (GRU reset-after: into a scratch row, as ``r`` multiplies it);
3. a fused elementwise loop applies the bias, the gate activations and the state update.

Rows of every ``(T*B, width)`` buffer are addressed ``t * step_stride + b * batch_stride``,
which serves time-major (``B, 1``) and batch-major (``1, T``) layouts without transposing.
The states ``h``/``c`` are updated in place in the caller's final-state arrays. Everything
after argument checking runs without the GIL; no allocation happens inside the time loop.
"""

from cython cimport floating
from libc.math cimport erf, erff, exp, expf, expm1, expm1f, fabs, fabsf, log1p, log1pf, tanh, tanhf
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

import numpy as np

from .blas cimport blas_int, gemm, gemv

# Cell codes (fastgate.layers._CELL_CODES) and activation codes (fastgate.activations).
cdef enum:
    CELL_LSTM = 0
    CELL_GRU = 1
    CELL_RNN = 2

cdef enum:
    ACT_LINEAR = 0
    ACT_TANH = 1
    ACT_SIGMOID = 2
    ACT_RELU = 3
    ACT_ELU = 4
    ACT_SELU = 5
    ACT_SOFTSIGN = 6
    ACT_SOFTPLUS = 7
    ACT_EXPONENTIAL = 8
    ACT_HARD_SIGMOID = 9
    ACT_HARD_SIGMOID_KERAS2 = 10
    ACT_SILU = 11
    ACT_GELU = 12

cdef double SELU_ALPHA = 1.6732632423543772848170429916717
cdef double SELU_SCALE = 1.0507009873554804934193349852946
cdef double INV_SQRT2 = 0.70710678118654752440084436210485
cdef Py_ssize_t BLAS_INT_MAX = 2147483647


cdef struct CellArrays:
    # Pointers into one layer-direction's prepared weights (kept alive by the caller).
    void *input_kernel      # (D, G*H)
    void *recurrent_kernel  # (P, G*H)
    void *bias              # (G*H,) input + recurrent bias, except GRU reset-after n gate
    void *new_gate_bias     # (H,) GRU reset-after only: b_hn, inside r * (h U_n + b_hn)
    void *projection        # (H, P) projected LSTM only, else NULL
    Py_ssize_t input_width  # D


# --------------------------------------------------------------------------- activations
cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating _tanh(floating x) noexcept nogil:
    if floating is float:
        return tanhf(x)
    else:
        return tanh(x)


cdef inline floating _expm1(floating x) noexcept nogil:
    if floating is float:
        return expm1f(x)
    else:
        return expm1(x)


cdef inline floating _sigmoid(floating x) noexcept nogil:
    # 1 / (1 + exp(-x)): exp overflows to inf for very negative x, giving exactly 0.
    return 1 / (1 + _exp(-x))


cdef inline floating _clip01(floating x) noexcept nogil:
    return 0 if x < 0 else (1 if x > 1 else x)


cdef inline floating activate(int code, floating x) noexcept nogil:
    """The activation ``code`` of one value (codes as in fastgate.activations)."""
    if code == ACT_TANH:
        return _tanh(x)
    if code == ACT_SIGMOID:
        return _sigmoid(x)
    if code == ACT_LINEAR:
        return x
    if code == ACT_RELU:
        return x if x > 0 else 0
    if code == ACT_ELU:
        return x if x > 0 else _expm1(x)
    if code == ACT_SELU:
        return <floating> SELU_SCALE * (x if x > 0 else <floating> SELU_ALPHA * _expm1(x))
    if code == ACT_SOFTSIGN:
        if floating is float:
            return x / (1 + fabsf(x))
        else:
            return x / (1 + fabs(x))
    if code == ACT_SOFTPLUS:
        # log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), without overflow.
        if floating is float:
            return (x if x > 0 else 0) + log1pf(expf(-fabsf(x)))
        else:
            return (x if x > 0 else 0) + log1p(exp(-fabs(x)))
    if code == ACT_EXPONENTIAL:
        return _exp(x)
    if code == ACT_HARD_SIGMOID:
        return _clip01(x / 6 + <floating> 0.5)
    if code == ACT_HARD_SIGMOID_KERAS2:
        return _clip01(<floating> 0.2 * x + <floating> 0.5)
    if code == ACT_SILU:
        return x * _sigmoid(x)
    if code == ACT_GELU:
        if floating is float:
            return <floating> 0.5 * x * (1 + erff(x * <float> INV_SQRT2))
        else:
            return 0.5 * x * (1 + erf(x * INV_SQRT2))
    return x


# --------------------------------------------------------------------------- cells
# Each step function advances the rows of one timestep: ``gates`` points at row (t, 0) of the
# input projection, consecutive batch rows ``gate_stride`` apart; ``h``/``c`` are (B, P)/(B, H)
# contiguous states; ``valid`` is the step's (B,) mask row or NULL; ``scratch`` has room for
# B * (G*H + H + P) values.

cdef void lstm_step(Py_ssize_t batch, Py_ssize_t hidden, Py_ssize_t width,
                    const CellArrays *w, floating *gates, Py_ssize_t gate_stride,
                    floating *h, floating *c, const unsigned char *valid,
                    int act, int rec_act, floating *scratch) noexcept nogil:
    cdef Py_ssize_t gh = 4 * hidden, b, j
    cdef const floating *bias = <const floating *> w.bias
    cdef floating *g
    cdef floating *h_row
    cdef floating *c_row
    cdef floating i_t, f_t, g_t, o_t, c_t
    cdef floating *pre_projection = scratch            # (B, H): o * act(c) before W_hr
    cdef floating *projected = scratch + batch * hidden  # (B, P)
    cdef bint fast = act == ACT_TANH and rec_act == ACT_SIGMOID
    # gates += h @ U
    if batch == 1:
        gemv(<blas_int> width, <blas_int> gh, <floating> 1, h,
             <const floating *> w.recurrent_kernel, <blas_int> gh, <floating> 1, gates)
    else:
        gemm(<blas_int> batch, <blas_int> gh, <blas_int> width, <floating> 1, h,
             <blas_int> width, <const floating *> w.recurrent_kernel, <blas_int> gh,
             <floating> 1, gates, <blas_int> gate_stride)
    for b in range(batch):
        if valid != NULL and not valid[b]:
            continue
        g = gates + b * gate_stride
        c_row = c + b * hidden
        h_row = pre_projection + b * hidden if w.projection != NULL else h + b * width
        for j in range(hidden):
            # i, f, g, o = rec_act(.), rec_act(.), act(.), rec_act(.)
            if fast:
                i_t = _sigmoid(g[j] + bias[j])
                f_t = _sigmoid(g[hidden + j] + bias[hidden + j])
                g_t = _tanh(g[2 * hidden + j] + bias[2 * hidden + j])
                o_t = _sigmoid(g[3 * hidden + j] + bias[3 * hidden + j])
                # c' = f * c + i * g;  h' = o * act(c')
                c_t = f_t * c_row[j] + i_t * g_t
                c_row[j] = c_t
                h_row[j] = o_t * _tanh(c_t)
            else:
                i_t = activate(rec_act, g[j] + bias[j])
                f_t = activate(rec_act, g[hidden + j] + bias[hidden + j])
                g_t = activate(act, g[2 * hidden + j] + bias[2 * hidden + j])
                o_t = activate(rec_act, g[3 * hidden + j] + bias[3 * hidden + j])
                c_t = f_t * c_row[j] + i_t * g_t
                c_row[j] = c_t
                h_row[j] = o_t * activate(act, c_t)
    if w.projection != NULL:
        # h' = (o * act(c')) @ W_hr, for the valid rows only
        gemm(<blas_int> batch, <blas_int> width, <blas_int> hidden, <floating> 1,
             pre_projection, <blas_int> hidden, <const floating *> w.projection,
             <blas_int> width, <floating> 0, projected, <blas_int> width)
        for b in range(batch):
            if valid == NULL or valid[b]:
                memcpy(h + b * width, projected + b * width, width * sizeof(floating))


cdef void gru_step(Py_ssize_t batch, Py_ssize_t hidden, bint reset_after,
                   const CellArrays *w, floating *gates, Py_ssize_t gate_stride,
                   floating *h, const unsigned char *valid, int act, int rec_act,
                   floating *scratch) noexcept nogil:
    cdef Py_ssize_t gh = 3 * hidden, b, j
    cdef const floating *bias = <const floating *> w.bias
    cdef const floating *new_gate_bias = <const floating *> w.new_gate_bias
    cdef const floating *recurrent_kernel = <const floating *> w.recurrent_kernel
    cdef floating *g
    cdef floating *h_row
    cdef floating *rec
    cdef floating *reset_h = scratch   # (B, H) r * h, reset-before form
    cdef floating r_t, z_t, n_t
    if reset_after:
        # rec = h @ U (B, 3H); n = act(x W_n + b_in + r * (h U_n + b_hn))
        rec = scratch
        if batch == 1:
            gemv(<blas_int> hidden, <blas_int> gh, <floating> 1, h, recurrent_kernel,
                 <blas_int> gh, <floating> 0, rec)
        else:
            gemm(<blas_int> batch, <blas_int> gh, <blas_int> hidden, <floating> 1, h,
                 <blas_int> hidden, recurrent_kernel, <blas_int> gh, <floating> 0, rec,
                 <blas_int> gh)
        for b in range(batch):
            if valid != NULL and not valid[b]:
                continue
            g = gates + b * gate_stride
            rec_row = rec + b * gh
            h_row = h + b * hidden
            for j in range(hidden):
                r_t = activate(rec_act, g[j] + bias[j] + rec_row[j])
                z_t = activate(rec_act, g[hidden + j] + bias[hidden + j] + rec_row[hidden + j])
                n_t = activate(act, g[2 * hidden + j] + bias[2 * hidden + j]
                               + r_t * (rec_row[2 * hidden + j] + new_gate_bias[j]))
                # h' = z * h + (1 - z) * n
                h_row[j] = z_t * h_row[j] + (1 - z_t) * n_t
        return
    # Reset before: gates[r, z] += h @ U[:, r z]; then n = act(x W_n + (r * h) U_n + b_n)
    gemm(<blas_int> batch, <blas_int> (2 * hidden), <blas_int> hidden, <floating> 1, h,
         <blas_int> hidden, recurrent_kernel, <blas_int> gh, <floating> 1, gates,
         <blas_int> gate_stride)
    for b in range(batch):
        g = gates + b * gate_stride
        h_row = h + b * hidden
        for j in range(2 * hidden):
            g[j] = activate(rec_act, g[j] + bias[j])        # r, z in place
        for j in range(hidden):
            reset_h[b * hidden + j] = g[j] * h_row[j]
    gemm(<blas_int> batch, <blas_int> hidden, <blas_int> hidden, <floating> 1, reset_h,
         <blas_int> hidden, recurrent_kernel + 2 * hidden, <blas_int> gh, <floating> 1,
         gates + 2 * hidden, <blas_int> gate_stride)
    for b in range(batch):
        if valid != NULL and not valid[b]:
            continue
        g = gates + b * gate_stride
        h_row = h + b * hidden
        for j in range(hidden):
            z_t = g[hidden + j]
            n_t = activate(act, g[2 * hidden + j] + bias[2 * hidden + j])
            h_row[j] = z_t * h_row[j] + (1 - z_t) * n_t


cdef void rnn_step(Py_ssize_t batch, Py_ssize_t hidden, const CellArrays *w,
                   floating *gates, Py_ssize_t gate_stride, floating *h,
                   const unsigned char *valid, int act) noexcept nogil:
    cdef Py_ssize_t b, j
    cdef const floating *bias = <const floating *> w.bias
    cdef floating *g
    # h' = act(x W + b + h U)
    if batch == 1:
        gemv(<blas_int> hidden, <blas_int> hidden, <floating> 1, h,
             <const floating *> w.recurrent_kernel, <blas_int> hidden, <floating> 1, gates)
    else:
        gemm(<blas_int> batch, <blas_int> hidden, <blas_int> hidden, <floating> 1, h,
             <blas_int> hidden, <const floating *> w.recurrent_kernel, <blas_int> hidden,
             <floating> 1, gates, <blas_int> gate_stride)
    for b in range(batch):
        if valid != NULL and not valid[b]:
            continue
        g = gates + b * gate_stride
        for j in range(hidden):
            h[b * hidden + j] = activate(act, g[j] + bias[j])


# --------------------------------------------------------------------------- layers
cdef void run_direction(int cell, Py_ssize_t steps, Py_ssize_t batch,
                        Py_ssize_t step_stride, Py_ssize_t batch_stride,
                        Py_ssize_t hidden, Py_ssize_t width, Py_ssize_t gates_width,
                        const CellArrays *w, bint reverse, bint reset_after,
                        int act, int rec_act,
                        const floating *layer_input, floating *projection_buffer,
                        floating *h, floating *c, const unsigned char *mask,
                        bint hold_masked_output, floating *out, Py_ssize_t out_width,
                        floating *scratch) noexcept nogil:
    """One layer, one direction: writes columns [0, width) of ``out`` rows (caller offsets)."""
    cdef Py_ssize_t rows = steps * batch, s, t, t_previous, b
    cdef Py_ssize_t gate_stride = batch_stride * gates_width
    cdef Py_ssize_t out_stride = batch_stride * out_width
    cdef const unsigned char *valid
    cdef floating *gates
    cdef floating *out_row
    # P_x = X @ W for every step at once
    gemm(<blas_int> rows, <blas_int> gates_width, <blas_int> w.input_width, <floating> 1,
         layer_input, <blas_int> w.input_width, <const floating *> w.input_kernel,
         <blas_int> gates_width, <floating> 0, projection_buffer, <blas_int> gates_width)
    t_previous = -1
    for s in range(steps):
        t = steps - 1 - s if reverse else s
        gates = projection_buffer + t * step_stride * gates_width
        valid = mask + t * batch if mask != NULL else NULL
        if cell == CELL_LSTM:
            lstm_step(batch, hidden, width, w, gates, gate_stride, h, c, valid, act, rec_act,
                      scratch)
        elif cell == CELL_GRU:
            gru_step(batch, hidden, reset_after, w, gates, gate_stride, h, valid, act,
                     rec_act, scratch)
        else:
            rnn_step(batch, hidden, w, gates, gate_stride, h, valid, act)
        out_row = out + t * step_stride * out_width
        for b in range(batch):
            if valid == NULL or valid[b]:
                memcpy(out_row + b * out_stride, h + b * width, width * sizeof(floating))
            elif hold_masked_output and t_previous >= 0:
                # Keras masking: a masked step repeats the previous step's output
                memcpy(out_row + b * out_stride,
                       out + t_previous * step_stride * out_width + b * out_stride,
                       width * sizeof(floating))
            else:
                memset(out_row + b * out_stride, 0, width * sizeof(floating))
        t_previous = t


cdef inline void *_pointer(floating[:, ::1] array) noexcept:
    return <void *> &array[0, 0] if array.shape[0] and array.shape[1] else NULL


def forward(int cell, tuple activation_codes, bint reset_after,
            floating[:, ::1] x, Py_ssize_t steps, Py_ssize_t batch, bint batch_major,
            list prepared, int num_directions,
            floating[:, :, ::1] h_state, object c_state, object mask,
            bint hold_masked_output, floating[:, ::1] out):
    """Run a stacked, optionally bidirectional recurrent layer (see fastgate.layers).

    ``x`` is ``(T*B, D)`` rows in time-major (``t*B + b``) or batch-major (``b*T + t``) order;
    ``prepared`` holds per layer and direction ``(input_kernel, recurrent_kernel, bias,
    new_gate_bias, projection)`` as built by ``RecurrentLayer._prepare_kernel_weights``;
    ``h_state`` (and ``c_state`` for LSTM) are the initial states, overwritten with the final
    ones; ``mask`` is ``None`` or a ``(T, B)`` uint8 array of valid steps; ``out`` receives
    ``(T*B, dirs*P)`` outputs in ``x``'s row order.
    """
    cdef int act = activation_codes[0], rec_act = activation_codes[1]
    cdef Py_ssize_t entries = len(prepared), num_layers, k, layer, direction
    cdef Py_ssize_t gate_count = 4 if cell == CELL_LSTM else (3 if cell == CELL_GRU else 1)
    cdef Py_ssize_t rows = steps * batch
    cdef Py_ssize_t gates_width, hidden, width, out_width, in_width
    cdef Py_ssize_t step_stride = 1 if batch_major else batch
    cdef Py_ssize_t batch_stride = steps if batch_major else 1
    cdef floating[:, ::1] input_kernel, recurrent_kernel, projection
    cdef floating[::1] bias, new_gate_bias
    cdef floating[:, :, ::1] c_view
    cdef const unsigned char[:, ::1] mask_view
    cdef const unsigned char *mask_pointer = NULL
    cdef floating *c_pointer = NULL
    cdef floating[:, ::1] projection_buffer, layer_buffers, scratch
    cdef CellArrays *cells
    cdef floating *layer_input
    cdef floating *layer_output
    cdef Py_ssize_t layer_output_width

    if num_directions not in (1, 2) or entries == 0 or entries % num_directions:
        raise ValueError("forward: bad number of weight entries")
    num_layers = entries // num_directions
    input_kernel = prepared[0][0]
    hidden = input_kernel.shape[1] // gate_count
    gates_width = gate_count * hidden
    width = h_state.shape[2]
    out_width = num_directions * width
    # Shapes are checked here, before any pointer reaches BLAS.
    if x.shape[0] != rows or out.shape[0] != rows or out.shape[1] != out_width:
        raise ValueError(f"forward: x ({x.shape[0]}, {x.shape[1]}) / out ({out.shape[0]}, "
                         f"{out.shape[1]}) do not match {steps} steps x {batch} batch x "
                         f"{out_width}")
    if h_state.shape[0] != entries or h_state.shape[1] != batch:
        raise ValueError("forward: h_state shape does not match the weights")
    if rows > BLAS_INT_MAX // max(gates_width, out_width, x.shape[1], 1):
        raise OverflowError("forward: input too large for 32-bit BLAS indices")
    if cell == CELL_LSTM:
        c_view = c_state
        if c_view.shape[0] != entries or c_view.shape[1] != batch or c_view.shape[2] != hidden:
            raise ValueError("forward: c_state shape does not match the weights")
        c_pointer = &c_view[0, 0, 0] if rows else NULL
    if mask is not None:
        mask_view = mask
        if mask_view.shape[0] != steps or mask_view.shape[1] != batch:
            raise ValueError("forward: mask must be (steps, batch)")
        mask_pointer = &mask_view[0, 0] if rows else NULL
    if rows == 0:
        return

    cells = <CellArrays *> malloc(entries * sizeof(CellArrays))
    if cells == NULL:
        raise MemoryError()
    try:
        for k in range(entries):
            layer = k // num_directions
            in_width = x.shape[1] if layer == 0 else out_width
            input_kernel = prepared[k][0]
            recurrent_kernel = prepared[k][1]
            bias = prepared[k][2]
            new_gate_bias = prepared[k][3]
            projection = prepared[k][4]
            if (input_kernel.shape[0] != in_width or input_kernel.shape[1] != gates_width
                    or recurrent_kernel.shape[0] != width
                    or recurrent_kernel.shape[1] != gates_width
                    or bias.shape[0] != gates_width
                    or (cell == CELL_GRU and reset_after and new_gate_bias.shape[0] != hidden)
                    or (projection.shape[0] != 0 and (cell != CELL_LSTM
                        or projection.shape[0] != hidden or projection.shape[1] != width))
                    or (projection.shape[0] == 0 and width != hidden)):
                raise ValueError(f"forward: prepared weights {k} do not match the layer shape")
            cells[k].input_kernel = _pointer(input_kernel)
            cells[k].recurrent_kernel = _pointer(recurrent_kernel)
            cells[k].bias = <void *> &bias[0]
            cells[k].new_gate_bias = <void *> &new_gate_bias[0] if new_gate_bias.shape[0] else NULL
            cells[k].projection = _pointer(projection)
            cells[k].input_width = in_width

        dtype = np.float32 if floating is float else np.float64
        # Workspace, allocated once per call: the input projection of all steps, two layer
        # buffers for stacked layers, and per-step scratch of B * (G*H + H + P).
        projection_buffer = np.empty((rows, gates_width), dtype)
        layer_buffers = np.empty((2 * rows if num_layers > 1 else 1, out_width), dtype)
        scratch = np.zeros((batch, gates_width + hidden + width), dtype)

        with nogil:
            layer_input = &x[0, 0]
            for layer in range(num_layers):
                if layer == num_layers - 1:
                    layer_output = &out[0, 0]
                else:
                    layer_output = &layer_buffers[(layer % 2) * rows, 0]
                for direction in range(num_directions):
                    k = layer * num_directions + direction
                    run_direction(
                        cell, steps, batch, step_stride, batch_stride, hidden, width,
                        gates_width, &cells[k], direction == 1, reset_after, act, rec_act,
                        layer_input, &projection_buffer[0, 0], &h_state[k, 0, 0],
                        c_pointer + k * batch * hidden if c_pointer != NULL else NULL,
                        mask_pointer, hold_masked_output, layer_output + direction * width,
                        out_width, &scratch[0, 0])
                layer_input = layer_output
    finally:
        free(cells)
