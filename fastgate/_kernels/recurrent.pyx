# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Recurrent kernels: LSTM, GRU and SimpleRNN, fused over float32/float64.

The equations are those of :mod:`fastgate.oracle` (read them there). Per layer and direction:

per step, a register-blocked kernel computes ``x_t @ W + h @ U`` over ``[W; U]`` packed once
(at layer construction, :func:`prepare`) and applies the cell's equations to each tile while
it is still in registers (fused.h / packed_step.h, compiled for AVX-512, AVX2 and the
baseline; the CPU picks one at run time). At batch < 4, where a step is a matrix-vector
product, ``x @ W`` is computed for all steps first by the same kernel, and steps only read
``U``.

Rows of every ``(T*B, width)`` buffer are addressed ``t * step_stride + b * batch_stride``,
which serves time-major (``B, 1``) and batch-major (``1, T``) layouts without transposing.
Sequences of a batch are independent, so with ``num_threads > 1`` each thread runs a slice
of the batch through every step, without synchronizing. Everything after argument checking
runs without the GIL; no allocation happens inside the time loop.
"""

from cython cimport floating
from cython.parallel cimport prange
from cpython.mem cimport PyMem_Free, PyMem_Malloc

import numpy as np

from .blas cimport blas_int, gemm

cdef extern from "fused.h" nogil:
    ctypedef struct fg_direction:
        int cell, act, rec_act, reset_after, reverse, hold_masked_output
        Py_ssize_t steps, batch, step_stride, batch_stride, hidden, width
        const void *input
        Py_ssize_t input_width
        void *projected_input
        int input_projected
        int zero_state
        const void *bias
        const void *new_gate_bias
        const void *recurrent
        const void *recurrent_new
        const void *projection
        void *h
        void *c
        void *h_spare
        void *cell_out
        void *gate_buffer
        const unsigned char *mask
        void *out
        Py_ssize_t out_width
    int fg_isa()
    Py_ssize_t fg_block_width(int is_double)
    Py_ssize_t fg_tile_rows(int gates)
    void fg_run_direction_f(const fg_direction *d, Py_ssize_t row_begin, Py_ssize_t row_end)
    void fg_run_direction_d(const fg_direction *d, Py_ssize_t row_begin, Py_ssize_t row_end)

# Cell codes (fastgate.layers._CELL_CODES).
cdef enum:
    CELL_LSTM = 0
    CELL_GRU = 1
    CELL_RNN = 2

cdef int MAX_THREADS = 64
#: Below this many multiply-adds per call (steps x batch x recurrent product), threads cost
#: more than they save.
cdef double THREADING_MIN_WORK = 2e6
#: From this batch size on, the kernel computes x_t W next to h U at every step (one pass,
#: no projection buffer); below, one GEMM computes x W for all steps first (at batch 1 a
#: step is a matrix-vector product, and re-reading W at every step would dominate).
cdef Py_ssize_t FUSED_INPUT_MIN_BATCH = 4
#: The ISA level (fg_isa) from which the packed kernel also computes x W. Below it (the
#: baseline build, without AVX2), BLAS's GEMM is 2.5-5x faster for x W of all steps at once
#: (measured on the development machine with FASTGATE_ISA=base: B=1, T=2000, D=256, H=256
#: LSTM, x W 25 ms in the packed kernel vs 9.6 ms sgemm; B=256, T=50, D=256, H=512, 317 vs
#: 129 ms), while with AVX2/AVX-512 the packed kernel is 1.5-2x faster than OpenBLAS.
cdef int PACKED_INPUT_MIN_ISA = 1


def isa():
    """The instruction set the kernels run with: ``"avx512"``, ``"avx2"`` or ``"base"``."""
    return ("base", "avx2", "avx512")[fg_isa()]


def pack_gates(matrix, int gates):
    """``matrix (K, gates*N)`` in the packed layout of the kernels (a flat array).

    Gate columns are cut into blocks of ``W`` units (``W`` = the vector width of the
    running CPU, :func:`block_width`; ``N`` is padded with zeros to a multiple of it); block
    ``j`` holds, for every row ``k``, the ``W`` columns of each gate:
    ``packed[j, k, gate, w] = matrix[k, gate*N + j*W + w]``.
    """
    matrix = np.asarray(matrix)
    rows, columns = matrix.shape
    units = columns // gates
    width = fg_block_width(matrix.dtype == np.float64)
    blocks = -(-units // width)
    padded = np.zeros((rows, gates, blocks * width), matrix.dtype)
    padded[:, :, :units] = matrix.reshape(rows, gates, units)
    return np.ascontiguousarray(
        padded.reshape(rows, gates, blocks, width).transpose(2, 0, 1, 3)).ravel()


def block_width(dtype):
    """Hidden units per packed block for ``dtype`` on this CPU."""
    return fg_block_width(np.dtype(dtype) == np.float64)


def prepare(int cell, bint reset_after, input_kernel, recurrent_kernel, input_bias,
            recurrent_bias, projection):
    """The arrays :func:`forward_float` / :func:`forward_double` read, per layer direction.

    Returns ``(input_kernel, recurrent, bias, new_gate_bias, recurrent_new, projection)``:
    the input kernel as is (for the all-steps GEMM); ``recurrent`` the input and recurrent
    kernels stacked, ``[W; U]``, and packed (for a GRU with the reset gate before ``U_n``,
    their ``r, z`` columns only, and ``recurrent_new`` their ``n`` columns);
    ``bias = b_i + b_h``, except a reset-after GRU's ``n`` gate, where ``b_hn`` sits inside
    ``r * (...)`` and is kept apart in ``new_gate_bias``; ``projection`` packed. Absent parts
    are empty arrays.
    """
    dtype = input_kernel.dtype
    gates = 4 if cell == CELL_LSTM else (3 if cell == CELL_GRU else 1)
    hidden = input_kernel.shape[1] // gates
    empty = np.zeros(0, dtype)
    stacked = np.concatenate([input_kernel, recurrent_kernel])
    bias = input_bias + recurrent_bias
    new_gate_bias = empty
    recurrent_new = empty
    if cell == CELL_GRU and reset_after:
        bias[2 * hidden:] = input_bias[2 * hidden:]
        new_gate_bias = recurrent_bias[2 * hidden:].copy()
        recurrent = pack_gates(stacked, 3)
    elif cell == CELL_GRU:
        recurrent = pack_gates(stacked[:, :2 * hidden], 2)
        recurrent_new = pack_gates(stacked[:, 2 * hidden:], 1)
    else:
        recurrent = pack_gates(stacked, gates)
    packed_projection = empty if projection is None else pack_gates(projection, 1)
    weights = PreparedWeights(np.ascontiguousarray(input_kernel), recurrent,
                              np.ascontiguousarray(bias), new_gate_bias, recurrent_new,
                              packed_projection)
    weights.recurrent_finite = bool(np.isfinite(recurrent_kernel).all())
    return weights


cdef class PreparedWeights:
    """One layer direction's arrays in the kernel's layout (see :func:`prepare`).

    Holds the arrays (``input_kernel, recurrent, bias, new_gate_bias, recurrent_new,
    projection``) and their data pointers and sizes, read once here so that a call does
    not acquire a buffer per array.
    """
    cdef readonly tuple arrays
    cdef readonly object dtype
    cdef bint is_double
    #: every recurrent weight is finite: 0 @ U is exactly 0 (see forward_float's zero_state)
    cdef public bint recurrent_finite
    cdef Py_ssize_t input_rows, input_columns
    cdef Py_ssize_t sizes[6]
    cdef void *pointers[6]

    def __init__(self, input_kernel, recurrent, bias, new_gate_bias, recurrent_new,
                 projection):
        cdef Py_ssize_t i
        self.arrays = (input_kernel, recurrent, bias, new_gate_bias, recurrent_new, projection)
        self.dtype = input_kernel.dtype
        if self.dtype not in (np.float32, np.float64):
            raise ValueError("PreparedWeights: arrays must be float32 or float64")
        self.is_double = self.dtype == np.float64
        self.input_rows, self.input_columns = input_kernel.shape
        for i, array in enumerate(self.arrays):
            if (array.dtype != self.dtype or not array.flags.c_contiguous
                    or (i > 0 and array.ndim != 1)):
                raise ValueError("PreparedWeights: arrays must be C-contiguous, of one dtype")
            self.sizes[i] = array.size
            self.pointers[i] = <void *> <size_t> array.ctypes.data if array.size else NULL

    def __len__(self):
        return 6

    def __getitem__(self, index):
        return self.arrays[index]


cdef inline Py_ssize_t _packed_size(Py_ssize_t rows, Py_ssize_t gates, Py_ssize_t units,
                                    Py_ssize_t width) noexcept:
    return rows * gates * ((units + width - 1) // width) * width


def forward_float(int cell, tuple activation_codes, bint reset_after,
                  float[:, :, ::1] x, Py_ssize_t steps, Py_ssize_t batch, bint batch_major,
                  list prepared, int num_directions,
                  float[:, :, ::1] h_state, object c_state, object mask,
                  bint hold_masked_output, float[:, :, ::1] out, int num_threads=1,
                  bint zero_state=False):
    """Run a stacked, optionally bidirectional recurrent layer (see fastgate.layers), float32.

    ``x`` is ``(T, B, D)`` (time-major) or ``(B, T, D)`` (``batch_major``); ``prepared`` holds
    per layer and direction the arrays of :func:`prepare`; ``h_state`` (and ``c_state`` for
    LSTM) are the initial states, overwritten with the final ones; ``mask`` is ``None`` or a
    ``(T, B)`` uint8 array of valid steps; ``out`` receives the outputs, in ``x``'s layout.
    ``num_threads`` threads split the batch. ``zero_state`` says that ``h_state`` is all
    zeros: the first step then skips ``h @ U`` (exactly zero) where ``U`` is finite.

    One entry per dtype rather than a fused function: the fused dispatch on the arrays'
    dtype costs about a microsecond per call.
    """
    _forward(cell, activation_codes, reset_after,
             &x[0, 0, 0] if x.shape[0] and x.shape[1] else NULL, x.shape[0] * x.shape[1],
             x.shape[2], steps, batch, batch_major, prepared, num_directions, h_state,
             c_state, mask, hold_masked_output,
             &out[0, 0, 0] if out.shape[0] and out.shape[1] else NULL,
             out.shape[0] * out.shape[1], out.shape[2], num_threads, zero_state)


def forward_double(int cell, tuple activation_codes, bint reset_after,
                   double[:, :, ::1] x, Py_ssize_t steps, Py_ssize_t batch, bint batch_major,
                   list prepared, int num_directions,
                   double[:, :, ::1] h_state, object c_state, object mask,
                   bint hold_masked_output, double[:, :, ::1] out, int num_threads=1,
                   bint zero_state=False):
    """:func:`forward_float` for float64 arrays."""
    _forward(cell, activation_codes, reset_after,
             &x[0, 0, 0] if x.shape[0] and x.shape[1] else NULL, x.shape[0] * x.shape[1],
             x.shape[2], steps, batch, batch_major, prepared, num_directions, h_state,
             c_state, mask, hold_masked_output,
             &out[0, 0, 0] if out.shape[0] and out.shape[1] else NULL,
             out.shape[0] * out.shape[1], out.shape[2], num_threads, zero_state)


cdef object _forward(int cell, tuple activation_codes, bint reset_after,
                     floating *x_data, Py_ssize_t x_rows, Py_ssize_t x_columns,
                     Py_ssize_t steps, Py_ssize_t batch,
                     bint batch_major, list prepared, int num_directions,
                     floating[:, :, ::1] h_state, object c_state, object mask,
                     bint hold_masked_output, floating *out_data, Py_ssize_t out_rows,
                     Py_ssize_t out_columns, int num_threads, bint zero_state):
    # x and out: x_rows x x_columns and out_rows x out_columns C-contiguous arrays
    cdef int act = activation_codes[0], rec_act = activation_codes[1]
    cdef Py_ssize_t entries = len(prepared), num_layers, k, layer, direction
    cdef Py_ssize_t gate_count = 4 if cell == CELL_LSTM else (3 if cell == CELL_GRU else 1)
    cdef Py_ssize_t rows = steps * batch
    cdef Py_ssize_t gates_width, hidden, width, out_width, in_width, block
    cdef Py_ssize_t step_stride = 1 if batch_major else batch
    cdef Py_ssize_t batch_stride = steps if batch_major else 1
    cdef PreparedWeights weights
    cdef bint is_double = floating is double
    cdef floating[:, :, ::1] c_view
    cdef const unsigned char[:, ::1] mask_view
    cdef const unsigned char *mask_pointer = NULL
    cdef floating *c_pointer = NULL
    cdef floating *projection_buffer
    cdef floating *layer_buffers
    cdef floating *workspace
    cdef fg_direction direction_args
    cdef floating *layer_input
    cdef floating *layer_output
    cdef Py_ssize_t threads, chunk, work
    cdef bint fused_input, blas_input
    cdef Py_ssize_t bounds[65]
    cdef char *workspace_memory = NULL
    cdef Py_ssize_t workspace_size

    if num_directions not in (1, 2) or entries == 0 or entries % num_directions:
        raise ValueError("forward: bad number of weight entries")
    num_layers = entries // num_directions
    weights = prepared[0]
    hidden = weights.input_columns // gate_count
    gates_width = gate_count * hidden
    width = h_state.shape[2]
    out_width = num_directions * width
    block = fg_block_width(floating is double)
    # Shapes are checked here, before any pointer reaches the kernels.
    if x_rows != rows or out_rows != rows or out_columns != out_width:
        raise ValueError(f"forward: x ({x_rows}, {x_columns}) / out ({out_rows}, "
                         f"{out_columns}) do not match {steps} steps x {batch} batch x "
                         f"{out_width}")
    if h_state.shape[0] != entries or h_state.shape[1] != batch:
        raise ValueError("forward: h_state shape does not match the weights")
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
    for k in range(entries):
        layer = k // num_directions
        in_width = x_columns if layer == 0 else out_width
        weights = prepared[k]
        if (weights.is_double != is_double or weights.input_rows != in_width
                or weights.input_columns != gates_width
                or weights.sizes[2] != gates_width
                or weights.sizes[1] != _packed_size(
                    in_width + width,
                    2 if cell == CELL_GRU and not reset_after else gate_count, hidden, block)
                or (cell == CELL_GRU and reset_after and weights.sizes[3] != hidden)
                or (cell == CELL_GRU and not reset_after and weights.sizes[4]
                    != _packed_size(in_width + hidden, 1, hidden, block))
                or (weights.sizes[5] != 0 and (
                    cell != CELL_LSTM
                    or weights.sizes[5] != _packed_size(hidden, 1, width, block)))
                or (weights.sizes[5] == 0 and width != hidden)):
            raise ValueError(f"forward: prepared weights {k} do not match the layer shape "
                             f"(packed for another CPU?)")
    if rows == 0:
        return

    # Threads split the batch; each needs whole tiles of rows to be worth it.
    threads = max(1, min(num_threads, MAX_THREADS, batch // fg_tile_rows(gate_count)))
    work = steps * batch * width * gates_width
    if work < THREADING_MIN_WORK:
        threads = 1
    for chunk in range(threads + 1):
        bounds[chunk] = batch * chunk // threads

    # Workspace, allocated once per call: the input projection of all steps (unless fused
    # into the step), two layer
    # buffers for stacked layers, and (B, P + 2 H) for the step (h double buffer, o*act(c)
    # or r*h, z).
    blas_input = fg_isa() < PACKED_INPUT_MIN_ISA
    fused_input = batch >= FUSED_INPUT_MIN_BATCH and not blas_input
    workspace_size = ((0 if fused_input else rows * gates_width)
                      + (2 * rows * out_width if num_layers > 1 else 0)
                      + batch * (width + 2 * hidden))
    workspace_memory = <char *> PyMem_Malloc(workspace_size * sizeof(floating))
    if workspace_memory == NULL:
        raise MemoryError()
    workspace = <floating *> workspace_memory
    projection_buffer = workspace + batch * (width + 2 * hidden)
    layer_buffers = projection_buffer + (0 if fused_input else rows * gates_width)

    direction_args.cell = cell
    direction_args.act = act
    direction_args.rec_act = rec_act
    direction_args.reset_after = reset_after
    direction_args.hold_masked_output = hold_masked_output
    direction_args.steps = steps
    direction_args.batch = batch
    direction_args.step_stride = step_stride
    direction_args.batch_stride = batch_stride
    direction_args.hidden = hidden
    direction_args.width = width
    direction_args.projected_input = NULL if fused_input else projection_buffer
    direction_args.input_projected = blas_input
    direction_args.h_spare = workspace
    direction_args.cell_out = workspace + batch * width
    direction_args.gate_buffer = workspace + batch * (width + hidden)
    direction_args.mask = mask_pointer
    direction_args.out_width = out_width

    try:
        layer_input = x_data
        for layer in range(num_layers):
            if layer == num_layers - 1:
                layer_output = out_data
            else:
                layer_output = layer_buffers + (layer % 2) * rows * out_width
            in_width = x_columns if layer == 0 else out_width
            for direction in range(num_directions):
                k = layer * num_directions + direction
                weights = prepared[k]
                direction_args.reverse = direction == 1
                direction_args.zero_state = zero_state and weights.recurrent_finite
                direction_args.bias = weights.pointers[2]
                direction_args.new_gate_bias = weights.pointers[3]
                direction_args.recurrent = weights.pointers[1]
                direction_args.recurrent_new = weights.pointers[4]
                direction_args.projection = weights.pointers[5]
                direction_args.h = &h_state[k, 0, 0]
                direction_args.c = c_pointer + k * batch * hidden if c_pointer != NULL else NULL
                direction_args.out = layer_output + direction * width
                direction_args.input = layer_input
                direction_args.input_width = in_width
                if blas_input:
                    # x W for every step by one BLAS GEMM: (T*B, D) @ (D, G*H)
                    with nogil:
                        gemm(<blas_int> rows, <blas_int> gates_width, <blas_int> in_width,
                             <floating> 1, layer_input, <blas_int> in_width,
                             <floating *> weights.pointers[0], <blas_int> gates_width,
                             <floating> 0, projection_buffer, <blas_int> gates_width)
                with nogil:
                    if threads == 1:
                        _run_rows(<floating *> NULL, &direction_args, 0, batch)
                    else:
                        for chunk in prange(threads, num_threads=threads, schedule="static",
                                            chunksize=1):
                            _run_rows(<floating *> NULL, &direction_args, bounds[chunk],
                                      bounds[chunk + 1])
            layer_input = layer_output
    finally:
        PyMem_Free(workspace_memory)


cdef inline void _run_rows(floating *dtype_tag, const fg_direction *d, Py_ssize_t begin,
                           Py_ssize_t end) noexcept nogil:
    # The float or double kernel (``dtype_tag`` only selects the fused specialization).
    if floating is float:
        fg_run_direction_f(d, begin, end)
    else:
        fg_run_direction_d(d, begin, end)
