# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Recurrent kernels: LSTM, GRU and SimpleRNN, fused over float32/float64.

The equations are those of :mod:`fastgate.oracle` (read them there). Per layer and direction:

per step, a register-blocked kernel computes ``x_t @ W + h @ U`` over ``[W; U]`` packed once
(at layer construction, :func:`prepare`) and applies the cell's equations to each tile while
it is still in registers (fused.h / packed_step.h, compiled for AVX-512, AVX2 and the
baseline; the CPU picks one at run time). A call runs by a *plan* (see "the planner"
below): where each layer's ``x @ W`` comes from (inside each step's tile, the packed
kernel's pass over all steps first, or one BLAS GEMM) and how threads share the call. The
cost model (``_estimate``) picks, e.g., ``x @ W`` of all steps first at batch < 4, where a
step is a matrix-vector product; ``fastgate.plans`` can time the candidates instead.

Rows of every ``(T*B, width)`` buffer are addressed ``t * step_stride + b * batch_stride``,
which serves time-major (``B, 1``) and batch-major (``1, T``) layouts without transposing.
Sequences of a batch are independent, so with ``num_threads > 1`` each thread runs a slice
of the batch through every step, without synchronizing; a batch too small for that may have
its hidden units split instead, the threads meeting after every step (see
``SPLIT_MIN_STEP_WORK`` and fastgate.threads). A :class:`LayerPlan` holds what a layer's
calls need, checked once. Everything after argument checking runs without the GIL; no
allocation happens inside the time loop.
"""

from cython cimport floating
from cython.parallel cimport prange
from cpython.contextvars cimport PyContextVar_Get
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_RawFree, PyMem_RawMalloc
from cpython.pycapsule cimport PyCapsule_GetPointer
from cpython.pystate cimport (PyInterpreterState, PyInterpreterState_ThreadHead,
                              PyThreadState_Next)
from cpython.ref cimport PyObject, Py_XDECREF
from libc.math cimport INFINITY
from libc.stdint cimport int64_t
from libc.string cimport memcpy

cimport numpy as cnp
import numpy as np

cdef extern from "Python.h":
    PyInterpreterState *PyInterpreterState_Get()   # (Python >= 3.9)

from .blas cimport blas_int   # (a type only: the BLAS shim itself loads on use)

cnp.import_array()

cdef extern from "constants.h" nogil:
    # the kernels' constants, written once in C (see kernel_constants)
    enum:
        FG_CELL_LSTM, FG_CELL_GRU, FG_CELL_RNN
        FG_LINEAR, FG_TANH, FG_SIGMOID, FG_RELU, FG_ELU, FG_SELU, FG_SOFTSIGN, FG_SOFTPLUS
        FG_EXPONENTIAL, FG_HARD_SIGMOID, FG_HARD_SIGMOID_KERAS2, FG_SILU, FG_GELU
        FG_LEAKY_RELU, FG_THRESHOLDED_RELU, FG_SCALED_TANH, FG_AFFINE, FG_HARD_SIGMOID_AFFINE
        FG_ELU_ALPHA
        FG_INPUT_IN_STEP, FG_INPUT_PACKED, FG_INPUT_BLAS
        FG_SPLIT_NONE, FG_SPLIT_BATCH, FG_SPLIT_HIDDEN
        FG_ROWS_ALL, FG_ROWS_BLOCKED, FG_L2_ROWS_BYTES
        FG_ISA_BASE, FG_ISA_AVX2, FG_ISA_AVX512
        FG_BASE_VBYTES, FG_BASE_ACC, FG_AVX2_VBYTES, FG_AVX2_ACC
        FG_AVX512_VBYTES, FG_AVX512_ACC, FG_MAX_ACC, FG_MAX_TILE_ROWS, FG_MAX_THREADS
    int FG_GATES(int cell)

cdef extern from "fused.h" nogil:
    ctypedef struct fg_direction:
        int cell, act, rec_act, reset_after, reverse, hold_masked_output
        Py_ssize_t steps, batch, step_stride, batch_stride, hidden, width
        const void *input
        Py_ssize_t input_width
        int input_mode
        void *projected_input
        int row_blocking
        int zero_state
        const void *bias
        const void *new_gate_bias
        const void *recurrent
        const void *recurrent_new
        const void *projection
        const void *peephole
        void *h
        void *c
        void *h_spare
        void *cell_out
        void *gate_buffer
        const unsigned char *mask
        const Py_ssize_t *active_rows
        const Py_ssize_t *output_rows
        void *out
        Py_ssize_t out_width
        Py_ssize_t block_begin, block_end
        int synchronize
        int cell_act
        double act_alpha, act_beta, rec_alpha, rec_beta, cell_alpha, cell_beta
        int clipping
        double clip
        int input_forget
        void *trace
        Py_ssize_t trace_width
    int fg_isa()
    Py_ssize_t fg_row_block_bytes
    Py_ssize_t fg_block_width(int is_double)
    Py_ssize_t fg_tile_rows(int gates)
    void fg_run_direction_f(const fg_direction *d, Py_ssize_t row_begin, Py_ssize_t row_end)
    void fg_run_direction_d(const fg_direction *d, Py_ssize_t row_begin, Py_ssize_t row_end)
    void fg_run_direction_split_f(const fg_direction *d, int threads)
    void fg_run_direction_split_d(const fg_direction *d, int threads)

#: Below this many multiply-adds per call (steps x batch x recurrent product), threads cost
#: more than they save.
cdef double THREADING_MIN_WORK = 2e6
#: Below this many multiply-adds per call (all layers and directions), a process with one
#: Python thread runs the kernel without releasing the GIL (nobody else could take it):
#: releasing and taking it back costs ~30-50 ns, ~2% of a call this small (S1, S3). With
#: other Python threads it is released at any size (they run while the kernel does: 2
#: threads calling S3 make 1.5x the calls of one, 0.97x if the GIL were kept).
cdef double KEEP_GIL_MAX_WORK = 1e5
#: When the batch is too small to split, threads share the hidden units instead if a step's
#: recurrent product has at least this many multiply-adds per batch row (each step then waits
#: for the whole previous one, which costs about as much as a step of H = 32).
cdef double SPLIT_MIN_STEP_WORK = 2e4
#: From this batch size on, the kernel computes x_t W next to h U at every step (one pass,
#: no projection buffer); below, one GEMM computes x W for all steps first (at batch 1 a
#: step is a matrix-vector product, and re-reading W at every step would dominate).
cdef Py_ssize_t FUSED_INPUT_MIN_BATCH = 4
#: ... and at any batch for a first layer input at most this wide, or a single step from a
#: zero state (no h U): then reading x_t in the step costs less than a pass over a
#: projection buffer (measured at batch 1, H=32: D=5 LSTM 97 -> 88-98 ns per step, GRU
#: 81 -> 73; D=16 about even; D=64 16-18% slower over many steps, and a step from a state
#: 3.8 -> 4.0 us at H=128, but one step of D=64, H=128 from zeros: LSTM 1.85 -> 1.73 us).
cdef Py_ssize_t FUSED_INPUT_MAX_WIDTH = 16
#: The ISA level (fg_isa) from which the packed kernel also computes x W. Below it (the
#: baseline build, without AVX2), BLAS's GEMM is 2.5-5x faster for x W of all steps at once
#: (measured on the development machine with FASTGATE_ISA=base: B=1, T=2000, D=256, H=256
#: LSTM, x W 25 ms in the packed kernel vs 9.6 ms sgemm; B=256, T=50, D=256, H=512, 317 vs
#: 129 ms), while with AVX2/AVX-512 the packed kernel is 1.5-2x faster than OpenBLAS.
cdef int PACKED_INPUT_MIN_ISA = 1
#: From this many row blocks per thread on (FG_ROWS_BLOCKED, blocks of FG_L2_ROWS_BYTES),
#: a thread runs its rows block by block through all steps (each block's state stays in L2;
#: the weights stream once per block and step).
cdef double ROW_BLOCKS_MIN = 3.0
#: The process's kernel thread count (fastgate.threads; 0: not read yet), and whether
#: threads may split the hidden units at all (only when threads were asked for explicitly).
# Arrays per layer direction in a PreparedWeights (see prepare).
cdef enum:
    WEIGHT_ARRAYS = 7
# A call's workspace up to this many doubles (8 KiB) lives on the stack (see _run).
cdef enum:
    SMALL_WORKSPACE_DOUBLES = 1024

cdef int process_threads = 0
cdef bint hidden_split_allowed = False


def configure_threads(int threads, bint hidden_split):
    """Set the thread count calls use by default, and whether threads may split the hidden
    units of a batch too small to split (called by :mod:`fastgate.threads`)."""
    global process_threads, hidden_split_allowed
    process_threads = max(1, threads)
    hidden_split_allowed = hidden_split


def thread_configuration():
    """``(thread count, hidden split allowed)`` as :func:`configure_threads` last set them
    (``(0, False)`` before the first call reads the BLAS's count)."""
    return process_threads, bool(hidden_split_allowed)


cdef int _default_threads() except -1:
    # fastgate.threads reads the BLAS thread count once, and tells us (configure_threads)
    if process_threads == 0:
        from fastgate.threads import kernel_num_threads
        kernel_num_threads()
    return process_threads


def kernel_constants():
    """The kernels' constants as the compiled module has them (constants.h): ``{table:
    {name: value}}`` for ``cells``, ``gates``, ``activations``, ``parametric_activations``,
    ``input_modes``, ``splits``,
    ``isas`` and ``limits``; tests/test_kernel_constants.py checks the Python tables
    against it."""
    return {
        "cells": {"lstm": FG_CELL_LSTM, "gru": FG_CELL_GRU, "rnn": FG_CELL_RNN},
        "gates": {"lstm": FG_GATES(FG_CELL_LSTM), "gru": FG_GATES(FG_CELL_GRU),
                  "rnn": FG_GATES(FG_CELL_RNN)},
        "activations": {
            "linear": FG_LINEAR, "tanh": FG_TANH, "sigmoid": FG_SIGMOID, "relu": FG_RELU,
            "elu": FG_ELU, "selu": FG_SELU, "softsign": FG_SOFTSIGN, "softplus": FG_SOFTPLUS,
            "exponential": FG_EXPONENTIAL, "hard_sigmoid": FG_HARD_SIGMOID,
            "hard_sigmoid_keras2": FG_HARD_SIGMOID_KERAS2, "silu": FG_SILU, "gelu": FG_GELU},
        "parametric_activations": {
            "leaky_relu": FG_LEAKY_RELU, "thresholded_relu": FG_THRESHOLDED_RELU,
            "scaled_tanh": FG_SCALED_TANH, "affine": FG_AFFINE,
            "hard_sigmoid": FG_HARD_SIGMOID_AFFINE, "elu": FG_ELU_ALPHA},
        "input_modes": {"in_step": FG_INPUT_IN_STEP, "packed": FG_INPUT_PACKED,
                        "blas": FG_INPUT_BLAS},
        "splits": {"none": FG_SPLIT_NONE, "batch": FG_SPLIT_BATCH, "hidden": FG_SPLIT_HIDDEN},
        "rows": {"all": FG_ROWS_ALL, "blocked": FG_ROWS_BLOCKED},
        "isas": {"base": FG_ISA_BASE, "avx2": FG_ISA_AVX2, "avx512": FG_ISA_AVX512},
        "limits": {"base_vector_bytes": FG_BASE_VBYTES, "base_accumulators": FG_BASE_ACC,
                   "avx2_vector_bytes": FG_AVX2_VBYTES, "avx2_accumulators": FG_AVX2_ACC,
                   "avx512_vector_bytes": FG_AVX512_VBYTES,
                   "avx512_accumulators": FG_AVX512_ACC, "max_accumulators": FG_MAX_ACC,
                   "max_tile_rows": FG_MAX_TILE_ROWS, "max_threads": FG_MAX_THREADS},
    }


def set_row_block_bytes(Py_ssize_t size):
    """Set the bytes of a row block of the blocked row order (0: constants.h's
    FG_L2_ROWS_BYTES) and return the previous value. Tests shrink it so that small shapes
    run many row blocks."""
    global fg_row_block_bytes
    previous = fg_row_block_bytes
    fg_row_block_bytes = size if size > 0 else FG_L2_ROWS_BYTES
    return previous


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
            recurrent_bias, projection, peephole=None):
    """The arrays a :class:`LayerPlan` reads, per layer direction.

    Returns ``(input_kernel, recurrent, bias, new_gate_bias, recurrent_new, projection,
    peephole)``:
    the input kernel as is (for the all-steps GEMM); ``recurrent`` the packed input kernel
    followed by the packed recurrent kernel, ``[W; U]`` (for a GRU with the reset gate before
    ``U_n``, their ``r, z`` columns only, and ``recurrent_new`` their ``n`` columns);
    ``bias = b_i + b_h``, except a reset-after GRU's ``n`` gate, where ``b_hn`` sits inside
    ``r * (...)`` and is kept apart in ``new_gate_bias``; ``projection`` packed; an LSTM's
    ``peephole`` weights ``(3H,)`` (i, f, o) as they are. Absent parts are empty arrays.
    """
    dtype = input_kernel.dtype
    gates = FG_GATES(cell)
    hidden = input_kernel.shape[1] // gates
    empty = np.zeros(0, dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN weights pass through
        bias = input_bias + recurrent_bias                # as IEEE arithmetic does
    new_gate_bias = empty
    recurrent_new = empty

    def packed(begin, end, gate_count):
        # the gate columns [begin, end) of W, packed, then those of U
        return _aligned(pack_gates(input_kernel[:, begin:end], gate_count),
                        pack_gates(recurrent_kernel[:, begin:end], gate_count))

    if cell == FG_CELL_GRU and reset_after:
        bias[2 * hidden:] = input_bias[2 * hidden:]
        new_gate_bias = recurrent_bias[2 * hidden:].copy()
        recurrent = packed(0, 3 * hidden, 3)
    elif cell == FG_CELL_GRU:
        recurrent = packed(0, 2 * hidden, 2)
        recurrent_new = packed(2 * hidden, 3 * hidden, 1)
    else:
        recurrent = packed(0, gates * hidden, gates)
    packed_projection = empty if projection is None else _aligned(pack_gates(projection, 1))
    weights = PreparedWeights(np.ascontiguousarray(input_kernel), recurrent,
                              np.ascontiguousarray(bias), new_gate_bias, recurrent_new,
                              packed_projection,
                              empty if peephole is None else np.ascontiguousarray(peephole))
    weights.recurrent_finite = bool(np.isfinite(recurrent_kernel).all())
    return weights


def _aligned(*parts):
    """The 1-D ``parts`` one after the other in a 64-byte aligned array.

    NumPy aligns to 16 bytes; with the packed weights at 16 or 48 mod 64, most vector loads
    of a block row straddle two cache lines (measured: S2 LSTM / GRU 129 / 103 us with the
    packed W blocks between the U blocks and unaligned, 112 / 82 us like this).
    """
    size = sum(part.size for part in parts)
    itemsize = parts[0].itemsize
    storage = np.empty(size + 64 // itemsize, parts[0].dtype)
    offset = (-storage.ctypes.data % 64) // itemsize
    aligned = storage[offset:offset + size]
    np.concatenate(parts, out=aligned)
    return aligned


cdef class PreparedWeights:
    """One layer direction's arrays in the kernel's layout (see :func:`prepare`).

    Holds the arrays (``input_kernel, recurrent, bias, new_gate_bias, recurrent_new,
    projection``) and their data pointers and sizes, read once here so that a call does
    not acquire a buffer per array.
    """
    cdef readonly tuple arrays
    cdef readonly object dtype
    cdef bint is_double
    #: every recurrent weight is finite: 0 @ U is exactly 0 (see LayerPlan.forward's zero_state)
    cdef public bint recurrent_finite
    cdef Py_ssize_t input_rows, input_columns
    cdef Py_ssize_t sizes[WEIGHT_ARRAYS]
    cdef void *pointers[WEIGHT_ARRAYS]

    def __init__(self, input_kernel, recurrent, bias, new_gate_bias, recurrent_new,
                 projection, peephole):
        cdef Py_ssize_t i
        self.arrays = (input_kernel, recurrent, bias, new_gate_bias, recurrent_new, projection,
                       peephole)
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
        return WEIGHT_ARRAYS

    def __getitem__(self, index):
        return self.arrays[index]


cdef inline Py_ssize_t _packed_size(Py_ssize_t rows, Py_ssize_t gates, Py_ssize_t units,
                                    Py_ssize_t width) noexcept:
    return rows * gates * ((units + width - 1) // width) * width


cdef bint _rows_prefix_valid(const Py_ssize_t *active, const unsigned char *mask,
                             Py_ssize_t steps, Py_ssize_t batch) noexcept nogil:
    # whether every step t has active[t] in [0, batch] and no valid row beyond it
    cdef Py_ssize_t t, b
    for t in range(steps):
        if active[t] < 0 or active[t] > batch:
            return False
        for b in range(active[t], batch):
            if mask[t * batch + b]:
                return False
    return True


cdef struct SortedRows:
    # a ragged call's rows, sorted by length, longest first (fastgate.layers._run_ragged)
    const Py_ssize_t *active   # (T,): the valid rows of step t are [0, active[t])
    const Py_ssize_t *output   # (B,) or NULL: row b's outputs go to batch row output[b]


cdef bint _is_permutation(const Py_ssize_t *order, Py_ssize_t n):
    # whether order[:n] holds each of 0 .. n - 1 once
    cdef bytearray seen = bytearray(n)
    cdef unsigned char *marks = seen
    cdef Py_ssize_t i
    for i in range(n):
        if order[i] < 0 or order[i] >= n or marks[order[i]]:
            return False
        marks[order[i]] = 1
    return True


cdef int _check_sorted_rows(SortedRows *sorted_rows, object active_rows, object output_rows,
                            const unsigned char *mask, Py_ssize_t steps, Py_ssize_t batch,
                            bint traced) except -1:
    # LayerPlan.forward's active_rows and output_rows, checked, into sorted_rows
    if (mask == NULL or not _is_c_array(active_rows, 1, cnp.NPY_INTP)
            or cnp.PyArray_DIMS(<cnp.ndarray> active_rows)[0] != steps):
        raise ValueError("forward: active_rows must be a C-contiguous (steps,) intp array, "
                         "with a mask")
    sorted_rows.active = <const Py_ssize_t *> cnp.PyArray_DATA(<cnp.ndarray> active_rows)
    if not _rows_prefix_valid(sorted_rows.active, mask, steps, batch):
        raise ValueError("forward: the mask has valid rows beyond active_rows")
    if output_rows is None:
        return 0
    if (not _is_c_array(output_rows, 1, cnp.NPY_INTP)
            or cnp.PyArray_DIMS(<cnp.ndarray> output_rows)[0] != batch):
        raise ValueError("forward: output_rows must be a C-contiguous (batch,) intp array")
    if traced:
        raise ValueError("forward: a traced call takes no output_rows")
    sorted_rows.output = <const Py_ssize_t *> cnp.PyArray_DATA(<cnp.ndarray> output_rows)
    if not _is_permutation(sorted_rows.output, batch):
        raise ValueError("forward: output_rows is not a permutation of the batch")
    return 0


cdef void _sort_by_length(const int64_t *lengths, Py_ssize_t batch, Py_ssize_t steps,
                          Py_ssize_t *order, Py_ssize_t *active, Py_ssize_t *counts,
                          unsigned char *mask) noexcept nogil:
    # A ragged call's rows sorted longest first, equal lengths in their order (as
    # np.argsort(-lengths, kind="stable")): order (B,) the caller's row of each sorted row,
    # active (T,) the sorted rows still running at step t (rows [0, active[t])), mask (T, B)
    # their valid steps; counts: T + 1 of scratch. Lengths lie in [0, steps].
    cdef Py_ssize_t t, j, length, start = 0
    for length in range(steps + 1):
        counts[length] = 0
    for j in range(batch):
        counts[lengths[j]] += 1
    for length in range(steps, -1, -1):   # counts[length]: the first sorted row of length
        start, counts[length] = start + counts[length], start
        if length > 0:
            active[length - 1] = start    # rows longer than length - 1
    for j in range(batch):
        order[counts[lengths[j]]] = j
        counts[lengths[j]] += 1
    for t in range(steps):
        for j in range(batch):
            mask[t * batch + j] = j < active[t]


cdef void _gather_rows(const char *source, char *target, Py_ssize_t blocks,
                       Py_ssize_t batch, Py_ssize_t row_bytes,
                       const Py_ssize_t *order) noexcept nogil:
    # target[block, j] = source[block, order[j]], rows of row_bytes, blocks of batch rows
    cdef Py_ssize_t block, j
    for block in range(blocks):
        for j in range(batch):
            memcpy(target + (block * batch + j) * row_bytes,
                   source + (block * batch + order[j]) * row_bytes, row_bytes)


cdef void _scatter_rows(const char *source, char *target, Py_ssize_t blocks,
                        Py_ssize_t batch, Py_ssize_t row_bytes,
                        const Py_ssize_t *order) noexcept nogil:
    # target[block, order[j]] = source[block, j] (the inverse of _gather_rows)
    cdef Py_ssize_t block, j
    for block in range(blocks):
        for j in range(batch):
            memcpy(target + (block * batch + order[j]) * row_bytes,
                   source + (block * batch + j) * row_bytes, row_bytes)


cdef inline bint _is_c_array(object array, int ndim, int typenum):
    # an ndarray (not a subclass) of ndim dimensions and dtype typenum, C-contiguous,
    # aligned and in the machine's byte order (a '>f4' array is NPY_FLOAT too)
    return (type(array) is cnp.ndarray
            and cnp.PyArray_NDIM(<cnp.ndarray> array) == ndim
            and cnp.PyArray_TYPE(<cnp.ndarray> array) == typenum
            and cnp.PyArray_ISCARRAY_RO(<cnp.ndarray> array)
            and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray> array))


cdef class LayerPlan:
    """A stacked, optionally bidirectional recurrent layer as the kernels run it.

    Built once per layer (see fastgate.layers) from the layer's constants and, per layer and
    direction, the arrays of :func:`prepare`, which are checked here against the layer's
    shape once, so that a call only checks its own arrays. Three entries:

    - :meth:`run`, the common call (zero initial state, no mask) and :meth:`step`, one
      streaming step: each returns ``None`` when its arguments are not exactly the arrays
      it wants, and the caller then converts them and calls :meth:`forward`;
    - :meth:`forward`, the general call.

    Calls share nothing mutable: one plan serves any number of threads at once.
    """
    cdef readonly tuple prepared
    cdef readonly object dtype
    cdef int cell, act, rec_act, cell_act, typenum
    # the activations' parameters (parametrised activations), ONNX's clip and input_forget
    cdef double act_alpha, act_beta, rec_alpha, rec_beta, cell_alpha, cell_beta, clip
    cdef bint input_forget
    cdef bint reset_after, batch_first, is_double
    cdef Py_ssize_t num_directions, num_layers, entries, input_size, hidden, width, out_width
    cdef Py_ssize_t gate_count
    #: columns of a trace row (see forward's ``traces``)
    cdef readonly Py_ssize_t trace_width
    #: what a shape class says of the layer (see shape_class)
    cdef readonly tuple layer_key
    # per entry (layer * num_directions + direction): the PreparedWeights' 6 pointers, and
    # whether its recurrent kernel is finite (then 0 @ U is exactly 0)
    cdef void **pointers
    cdef bint *recurrent_finite

    def __cinit__(self):
        self.pointers = NULL
        self.recurrent_finite = NULL

    def __init__(self, int cell, tuple activations, bint reset_after, prepared,
                 int num_directions, Py_ssize_t width, bint batch_first,
                 double clip=float("inf"), bint input_forget=False):
        cdef PreparedWeights weights
        cdef Py_ssize_t k, layer, in_width, gates_width, block
        self.prepared = tuple(prepared)
        self.entries = len(self.prepared)
        if num_directions not in (1, 2) or self.entries == 0 or self.entries % num_directions:
            raise ValueError("LayerPlan: bad number of weight entries")
        self.cell = cell
        # (code, alpha, beta) of the activation, the recurrent one and the cell state's
        (self.act, self.act_alpha, self.act_beta), \
            (self.rec_act, self.rec_alpha, self.rec_beta), \
            (self.cell_act, self.cell_alpha, self.cell_beta) = activations
        self.clip = clip
        self.input_forget = input_forget
        self.reset_after = reset_after
        self.batch_first = batch_first
        self.num_directions = num_directions
        self.num_layers = self.entries // num_directions
        self.gate_count = FG_GATES(cell)
        weights = self.prepared[0]
        self.dtype = weights.dtype
        self.is_double = weights.is_double
        self.typenum = cnp.NPY_DOUBLE if self.is_double else cnp.NPY_FLOAT
        self.input_size = weights.input_rows
        self.hidden = weights.input_columns // self.gate_count
        self.width = width
        self.out_width = num_directions * width
        # the gates (a SimpleRNN's only gate is h), an LSTM's c, then h (fused.h:
        # fg_direction.trace; fastgate.trace.trace_columns)
        self.trace_width = ((5 * self.hidden if cell == FG_CELL_LSTM
                             else 3 * self.hidden if cell == FG_CELL_GRU else 0) + width)
        self.layer_key = (cell, bool(reset_after)) + tuple(v for a in activations for v in a) + (
                          clip, bool(input_forget), bool(self.is_double),
                          self.input_size, self.hidden, width, self.num_layers, num_directions)
        gates_width = self.gate_count * self.hidden
        block = fg_block_width(self.is_double)
        self.pointers = <void **> PyMem_Malloc(WEIGHT_ARRAYS * self.entries * sizeof(void *))
        self.recurrent_finite = <bint *> PyMem_Malloc(self.entries * sizeof(bint))
        if self.pointers == NULL or self.recurrent_finite == NULL:
            raise MemoryError()
        for k in range(self.entries):
            layer = k // num_directions
            in_width = self.input_size if layer == 0 else self.out_width
            weights = self.prepared[k]
            if (weights.is_double != self.is_double or weights.input_rows != in_width
                    or weights.input_columns != gates_width
                    or weights.sizes[2] != gates_width
                    or weights.sizes[1] != _packed_size(
                        in_width + width,
                        2 if cell == FG_CELL_GRU and not reset_after else self.gate_count,
                        self.hidden, block)
                    or (cell == FG_CELL_GRU and reset_after and weights.sizes[3] != self.hidden)
                    or (cell == FG_CELL_GRU and not reset_after and weights.sizes[4]
                        != _packed_size(in_width + self.hidden, 1, self.hidden, block))
                    or (weights.sizes[5] != 0 and (
                        cell != FG_CELL_LSTM
                        or weights.sizes[5] != _packed_size(self.hidden, 1, width, block)))
                    or (weights.sizes[5] == 0 and width != self.hidden)
                    or (weights.sizes[6] != 0 and (cell != FG_CELL_LSTM
                                                   or weights.sizes[6] != 3 * self.hidden))):
                raise ValueError(f"LayerPlan: prepared weights {k} do not match the layer "
                                 f"shape (packed for another CPU?)")
            for i in range(WEIGHT_ARRAYS):
                self.pointers[WEIGHT_ARRAYS * k + i] = weights.pointers[i]
            self.recurrent_finite[k] = weights.recurrent_finite

    def __dealloc__(self):
        PyMem_Free(self.pointers)
        PyMem_Free(self.recurrent_finite)

    def __reduce__(self):
        raise TypeError("LayerPlan is rebuilt from the layer's weights, not pickled")

    cdef inline bint _is_input(self, object array, int ndim):
        # an ndarray of the plan's dtype, C-contiguous, ndim dimensions, input_size columns
        return (_is_c_array(array, ndim, self.typenum)
                and cnp.PyArray_DIMS(<cnp.ndarray> array)[ndim - 1] == self.input_size)

    cdef int _check_call(self, str caller, object x, object h_state, object c_state,
                         bint batch_major, cnp.npy_intp *dims) except -1:
        # x (3-d, this plan's dtype and width) and the states of a call, else a ValueError
        # naming `caller`; dims: x's first two axes and the output width
        cdef Py_ssize_t batch
        if not self._is_input(x, 3):
            raise ValueError(f"{caller}: x must be a C-contiguous {self.dtype} array (., ., "
                             f"{self.input_size})")
        dims[0] = cnp.PyArray_DIMS(<cnp.ndarray> x)[0]
        dims[1] = cnp.PyArray_DIMS(<cnp.ndarray> x)[1]
        dims[2] = self.out_width
        batch = dims[0] if batch_major else dims[1]
        if not self._is_state(h_state, batch, self.width):
            raise ValueError(f"{caller}: h_state does not match the layer and batch")
        if self.cell == FG_CELL_LSTM and not self._is_state(c_state, batch, self.hidden):
            raise ValueError(f"{caller}: c_state does not match the layer and batch")
        return 0

    cdef inline bint _is_state(self, object array, Py_ssize_t batch, Py_ssize_t columns,
                               bint flat=False):
        # an ndarray of the plan's dtype, shape (entries, batch, columns) (flat: (batch,
        # columns)), C-contiguous
        cdef cnp.npy_intp *dims
        if not _is_c_array(array, 2 if flat else 3, self.typenum):
            return False
        dims = cnp.PyArray_DIMS(<cnp.ndarray> array)
        if flat:
            return dims[0] == batch and dims[1] == columns
        return dims[0] == self.entries and dims[1] == batch and dims[2] == columns

    def run(self, x, int num_threads=0):
        """``(out, state)`` of a call on ``x`` from a zero state, without a mask; ``None``
        unless ``x`` is a C-contiguous array of the plan's dtype, ``(B, T, D)`` if
        ``batch_first`` else ``(T, B, D)``. ``state`` is ``h_n`` (LSTM: ``(h_n, c_n)``)."""
        return self._run_from_zeros(x, num_threads)

    cdef object _run_from_zeros(self, object x, int num_threads):
        # run's body, which layer_call reaches without a Python call
        cdef cnp.npy_intp dims[3]
        cdef Py_ssize_t steps, batch
        if not self._is_input(x, 3):
            return None
        dims[0] = cnp.PyArray_DIMS(<cnp.ndarray> x)[0]
        dims[1] = cnp.PyArray_DIMS(<cnp.ndarray> x)[1]
        steps, batch = (dims[1], dims[0]) if self.batch_first else (dims[0], dims[1])
        dims[2] = self.out_width
        out = cnp.PyArray_EMPTY(3, dims, self.typenum, 0)
        h, c = self._zero_state(batch)
        self._call(cnp.PyArray_DATA(<cnp.ndarray> x), steps, batch, self.batch_first,
                   h, c, NULL, False, cnp.PyArray_DATA(<cnp.ndarray> out), num_threads, True)
        return out, ((h, c) if self.cell == FG_CELL_LSTM else h)

    def step(self, x, state, int num_threads=0, bint flat_state=False):
        """``(y, state)`` after one step ``x`` ``(B, D)`` from ``state`` (``None``: zeros;
        not modified); ``None`` unless ``x`` is a C-contiguous array of the plan's dtype and
        ``state`` ``None`` or exactly the plan's state arrays, or if the layer is
        bidirectional. ``y`` is ``(B, output_size)``. With ``flat_state`` (one-layer plans:
        the cells), states are ``(B, width)`` instead of ``(1, B, width)``."""
        cdef cnp.npy_intp dims[2]
        cdef Py_ssize_t batch
        if (self.num_directions != 1 or (flat_state and self.entries != 1)
                or not self._is_input(x, 2)):
            return None
        batch = cnp.PyArray_DIMS(<cnp.ndarray> x)[0]
        if state is None:
            h, c = self._zero_state(batch, flat_state)
        else:
            if self.cell == FG_CELL_LSTM:
                if type(state) is not tuple or len(<tuple> state) != 2:
                    return None
                h, c = state
                if not self._is_state(c, batch, self.hidden, flat_state):
                    return None
                c = cnp.PyArray_NewCopy(<cnp.ndarray> c, cnp.NPY_CORDER)
            else:
                h, c = state, None
            if not self._is_state(h, batch, self.width, flat_state):
                return None
            h = cnp.PyArray_NewCopy(<cnp.ndarray> h, cnp.NPY_CORDER)
        dims[0] = batch
        dims[1] = self.width
        y = cnp.PyArray_EMPTY(2, dims, self.typenum, 0)
        self._call(cnp.PyArray_DATA(<cnp.ndarray> x), 1, batch, True, h, c, NULL, False,
                   cnp.PyArray_DATA(<cnp.ndarray> y), num_threads, state is None)
        return y, ((h, c) if self.cell == FG_CELL_LSTM else h)

    def forward(self, x, h_state, c_state, mask, bint batch_major, bint hold_masked_output,
                int num_threads=0, bint zero_state=False, plan=None, active_rows=None,
                output_rows=None, traces=None):
        """Run the layer on ``x`` ``(T, B, D)`` (``(B, T, D)`` if ``batch_major``); returns
        the outputs, in ``x``'s layout.

        ``h_state`` (and ``c_state`` for LSTM, else ``None``) are the initial states, C-
        contiguous arrays of the plan's dtype, overwritten with the final ones; ``mask`` is
        ``None`` or a ``(T, B)`` uint8 array of valid steps. ``zero_state`` says that the
        states are all zeros: the first step then skips ``h @ U`` (exactly zero) where ``U``
        is finite. ``num_threads`` threads split the batch (0, in every entry: the process's
        setting, :func:`fastgate.set_num_threads`). ``plan`` forces a plan, a tuple as
        :meth:`estimate` returns (``ValueError`` if the kernel cannot run it); by default
        the planner chooses (:mod:`fastgate.plans`). ``active_rows``, with a mask whose
        valid rows at step ``t`` are ``[0, active_rows[t])`` (sequences sorted by length,
        longest first), is that ``(T,)`` intp array: then a step computes only those rows;
        with it, ``output_rows`` (a permutation of the batch, ``(B,)`` intp) may say where
        each row's outputs go: row ``b`` of ``x`` to batch row ``output_rows[b]`` of the result
        (the caller's order; the final states stay in ``x``'s).

        ``traces``, one array per layer and direction (``[layer 0 forward, layer 0 reverse,
        layer 1 forward...]``), each C-contiguous of the plan's dtype and shape ``(T, B,
        trace_width)`` (``(B, T, trace_width)`` if ``batch_major``), receives what the cells
        computed at each step: the activated gates (``H`` columns each, the cell's gate
        order), an LSTM's ``c``, then ``h`` (``width`` columns); NaN where a step is masked
        (:mod:`fastgate.trace` names the columns). A traced call never splits the hidden
        units between threads, and takes no ``output_rows`` (its rows stay in ``x``'s order).
        """
        cdef cnp.npy_intp dims[3]
        cdef Py_ssize_t steps, batch
        cdef const unsigned char *mask_pointer = NULL
        cdef SortedRows sorted_rows
        cdef void **trace_pointers = NULL
        cdef Py_ssize_t k
        sorted_rows.active = sorted_rows.output = NULL
        self._check_call("forward", x, h_state, c_state, batch_major, dims)
        steps, batch = (dims[1], dims[0]) if batch_major else (dims[0], dims[1])
        if mask is not None:
            if (not _is_c_array(mask, 2, cnp.NPY_UINT8)
                    or cnp.PyArray_DIMS(<cnp.ndarray> mask)[0] != steps
                    or cnp.PyArray_DIMS(<cnp.ndarray> mask)[1] != batch):
                raise ValueError("forward: mask must be a C-contiguous (steps, batch) uint8 "
                                 "array")
            mask_pointer = <const unsigned char *> cnp.PyArray_DATA(<cnp.ndarray> mask)
        if active_rows is not None:
            _check_sorted_rows(&sorted_rows, active_rows, output_rows, mask_pointer, steps,
                               batch, traces is not None)
        elif output_rows is not None:
            raise ValueError("forward: output_rows must come with active_rows")
        if traces is not None:
            traces = self._checked_traces(traces, dims[0], dims[1])
            trace_pointers = <void **> PyMem_Malloc(self.entries * sizeof(void *))
            if trace_pointers == NULL:
                raise MemoryError()
            for k in range(self.entries):
                trace_pointers[k] = cnp.PyArray_DATA(<cnp.ndarray> traces[k])
        out = cnp.PyArray_EMPTY(3, dims, self.typenum, 0)
        try:
            self._call(cnp.PyArray_DATA(<cnp.ndarray> x), steps, batch, batch_major, h_state,
                       c_state, mask_pointer, hold_masked_output,
                       cnp.PyArray_DATA(<cnp.ndarray> out), num_threads, zero_state, plan,
                       &sorted_rows if active_rows is not None else NULL, trace_pointers)
        finally:
            PyMem_Free(trace_pointers)
        return out

    def run_lengths(self, x, h_state, c_state, lengths, bint batch_major,
                    int num_threads=0):
        """The outputs of :meth:`forward` on sequences of ``lengths`` (their valid steps the
        mask), run sorted longest first so that step ``t`` computes only the sequences still
        running (``active_rows``; ``output_rows`` puts each back in its place); ``None``
        unless ``lengths`` is a C-contiguous ``(B,)`` int64 array of values in ``[0, T]``.

        ``x``, ``h_state`` and ``c_state`` as :meth:`forward` takes them; the states, in the
        caller's row order, are overwritten with the final ones. The same arithmetic as
        :meth:`forward` with the sorted arrays, without a Python call per array.
        """
        return self._run_lengths(x, h_state, c_state, lengths, batch_major, num_threads)

    cdef object _run_lengths_from_zeros(self, object x, object lengths):
        # layer_call's call with lengths from a zero state: None unless x is as run takes it
        # and lengths as run_lengths reads them
        cdef Py_ssize_t batch
        if not self._is_input(x, 3) or not _is_c_array(lengths, 1, cnp.NPY_INT64):
            return None
        batch = cnp.PyArray_DIMS(<cnp.ndarray> x)[0 if self.batch_first else 1]
        h, c = self._zero_state(batch)
        out = self._run_lengths(x, h, c, lengths, self.batch_first, 0)
        if out is None:
            return None
        return out, ((h, c) if self.cell == FG_CELL_LSTM else h)

    cdef object _run_lengths(self, object x, object h_state, object c_state, object lengths,
                             bint batch_major, int num_threads):
        # run_lengths' body
        cdef cnp.npy_intp dims[3]
        cdef Py_ssize_t steps, batch, j, state_bytes, row_bytes, blocks
        cdef const int64_t *lengths_data
        cdef Py_ssize_t *order
        cdef unsigned char *mask
        cdef char *scratch
        cdef char *sorted_x = NULL
        cdef bint sorted_already
        cdef SortedRows sorted_rows
        self._check_call("run_lengths", x, h_state, c_state, batch_major, dims)
        steps, batch = (dims[1], dims[0]) if batch_major else (dims[0], dims[1])
        if (not _is_c_array(lengths, 1, cnp.NPY_INT64)
                or cnp.PyArray_DIMS(<cnp.ndarray> lengths)[0] != batch):
            return None
        lengths_data = <const int64_t *> cnp.PyArray_DATA(<cnp.ndarray> lengths)
        for j in range(batch):
            if lengths_data[j] < 0 or lengths_data[j] > steps:
                return None
        # scratch: order (B), active rows (T), counts (T + 1), the mask (T, B), then room
        # for one state array (its rows are permuted through it)
        state_bytes = self.entries * batch * max(self.width, self.hidden) * (
            sizeof(double) if self.is_double else sizeof(float))
        scratch = <char *> PyMem_Malloc((batch + 2 * steps + 1) * sizeof(Py_ssize_t)
                                        + steps * batch + state_bytes + 64)
        if scratch == NULL:
            raise MemoryError()
        order = <Py_ssize_t *> scratch
        sorted_rows.active = order + batch
        mask = <unsigned char *> (order + batch + 2 * steps + 1)
        try:
            _sort_by_length(lengths_data, batch, steps, order, <Py_ssize_t *> sorted_rows.active,
                            order + batch + steps, mask)
            sorted_already = True
            for j in range(batch):
                sorted_already = sorted_already and order[j] == j
            sorted_rows.output = NULL if sorted_already else order
            if not sorted_already:
                # x's rows in the sorted order; the states' rows too, in place
                row_bytes = ((steps if batch_major else 1) * self.input_size
                             * cnp.PyArray_ITEMSIZE(<cnp.ndarray> x))
                blocks = 1 if batch_major else steps
                sorted_x = <char *> PyMem_Malloc(max(1, blocks * batch * row_bytes))
                if sorted_x == NULL:
                    raise MemoryError()
                _gather_rows(<const char *> cnp.PyArray_DATA(<cnp.ndarray> x), sorted_x,
                             blocks, batch, row_bytes, order)
                self._permute_state_rows(h_state, c_state, batch, order, False,
                                         <char *> (mask + steps * batch))
            out = cnp.PyArray_EMPTY(3, dims, self.typenum, 0)
            self._call(sorted_x if sorted_x != NULL else cnp.PyArray_DATA(<cnp.ndarray> x),
                       steps, batch, batch_major, h_state, c_state, mask, False,
                       cnp.PyArray_DATA(<cnp.ndarray> out), num_threads, False, None,
                       &sorted_rows)
            if not sorted_already:
                self._permute_state_rows(h_state, c_state, batch, order, True,
                                         <char *> (mask + steps * batch))
        finally:
            PyMem_Free(sorted_x)
            PyMem_Free(scratch)
        return out

    cdef void _permute_state_rows(self, object h_state, object c_state, Py_ssize_t batch,
                                  const Py_ssize_t *order, bint inverse, char *scratch):
        # the rows of the states (entries, batch, .) in place: row j <- row order[j] (the
        # sorted order), or with inverse, row order[j] <- row j (back)
        cdef object state
        cdef Py_ssize_t row_bytes
        for state in (h_state, c_state):
            if state is None:
                continue
            row_bytes = (cnp.PyArray_DIMS(<cnp.ndarray> state)[2]
                         * cnp.PyArray_ITEMSIZE(<cnp.ndarray> state))
            if inverse:
                _scatter_rows(<const char *> cnp.PyArray_DATA(<cnp.ndarray> state), scratch,
                              self.entries, batch, row_bytes, order)
            else:
                _gather_rows(<const char *> cnp.PyArray_DATA(<cnp.ndarray> state), scratch,
                             self.entries, batch, row_bytes, order)
            memcpy(cnp.PyArray_DATA(<cnp.ndarray> state), scratch,
                   self.entries * batch * row_bytes)

    cdef list _checked_traces(self, object traces, Py_ssize_t rows, Py_ssize_t columns):
        # forward's traces: one (rows, columns, trace_width) C array of the dtype per entry
        cdef cnp.npy_intp *dims
        traces = list(traces)
        if len(traces) != self.entries:
            raise ValueError(f"forward: traces must hold {self.entries} arrays (one per layer "
                             f"and direction), got {len(traces)}")
        for array in traces:
            if not _is_c_array(array, 3, self.typenum):
                raise ValueError(f"forward: each trace must be a C-contiguous 3-d {self.dtype} "
                                 f"array")
            dims = cnp.PyArray_DIMS(<cnp.ndarray> array)
            if dims[0] != rows or dims[1] != columns or dims[2] != self.trace_width:
                raise ValueError(f"forward: each trace must have shape ({rows}, {columns}, "
                                 f"{self.trace_width})")
        return traces

    cdef inline tuple _zero_state(self, Py_ssize_t batch, bint flat=False):
        # zero (h, c) (c None but for LSTM): (entries, batch, .), or (batch, .) if flat
        cdef cnp.npy_intp dims[3]
        cdef int ndim = 2 if flat else 3
        dims[0] = self.entries
        dims[ndim - 2] = batch
        dims[ndim - 1] = self.width
        h = cnp.PyArray_ZEROS(ndim, dims, self.typenum, 0)
        if self.cell != FG_CELL_LSTM:
            return h, None
        dims[ndim - 1] = self.hidden
        return h, cnp.PyArray_ZEROS(ndim, dims, self.typenum, 0)

    def estimate(self, Py_ssize_t steps, Py_ssize_t batch, bint masked=False,
                 bint zero_state=True, int num_threads=0):
        """The plan the cost model picks for a call of this shape (``estimate`` mode), as
        ``(first_input, later_input, split, threads)`` codes (constants.h; names in
        :mod:`fastgate.plans`)."""
        return _plan_tuple(_estimate(self, steps, batch, masked, zero_state,
                                     self._threads(num_threads)))

    def candidates(self, Py_ssize_t steps, Py_ssize_t batch, bint masked=False,
                   int num_threads=0):
        """Every plan this layer can run a call of this shape with (``measure`` mode times
        them), the estimate's first; tuples as :meth:`estimate` returns."""
        cdef CallPlan call
        cdef list plans = []
        cdef int first, later, split, threads, rows
        cdef tuple modes = (FG_INPUT_IN_STEP, FG_INPUT_PACKED, FG_INPUT_BLAS)
        num_threads = self._threads(num_threads)
        plans.append(_plan_tuple(_estimate(self, steps, batch, masked, True, num_threads)))
        for first in modes:
            for later in (modes if self.num_layers > 1 else (first,)):
                for split, threads in ((FG_SPLIT_NONE, 1),
                                       (FG_SPLIT_BATCH, min(num_threads, batch)),
                                       (FG_SPLIT_HIDDEN, num_threads)):
                    for rows in (FG_ROWS_ALL, FG_ROWS_BLOCKED):
                        call.first_input, call.later_input = first, later
                        call.split, call.threads, call.rows = split, threads, rows
                        if (_plan_problem(self, call, batch, masked) is None
                                and (split != FG_SPLIT_HIDDEN or hidden_split_allowed)
                                and (rows == FG_ROWS_ALL
                                     or batch >= 2 * _row_block_rows(self, first))
                                and _plan_tuple(call) not in plans):
                            plans.append(_plan_tuple(call))
        return plans

    def shape_class(self, Py_ssize_t steps, Py_ssize_t batch, bint masked=False,
                    bint zero_state=True, int num_threads=0):
        """The key under which a measured plan is cached: the ISA, the thread setting, the
        layer's shape, and the call's batch and steps rounded to powers of two, mask and
        zero state."""
        return (("base", "avx2", "avx512")[fg_isa()], self._threads(num_threads),
                bool(hidden_split_allowed)) + self.layer_key + (
            _size_class(batch), _size_class(steps), bool(masked), bool(zero_state))

    cdef int _threads(self, int num_threads) except -1:
        if num_threads <= 0:
            return process_threads if process_threads else _default_threads()
        return num_threads

    cdef int _call(self, void *x, Py_ssize_t steps, Py_ssize_t batch, bint batch_major,
                   object h_state, object c_state, const unsigned char *mask,
                   bint hold_masked_output, void *out, int num_threads,
                   bint zero_state, object forced=None,
                   const SortedRows *sorted_rows=NULL, void **traces=NULL) except -1:
        # the plan of the call (forced, measured or estimated), then the kernel; a traced
        # call is not measured, and never splits the hidden units (its trace pass copies
        # whole rows of h)
        cdef CallPlan call
        if steps == 0 or batch == 0:
            return 0
        num_threads = self._threads(num_threads)
        if forced is not None:
            call = _plan_from_tuple(forced)
            problem = _plan_problem(self, call, batch, mask != NULL)
            if problem is None and traces != NULL and call.split == FG_SPLIT_HIDDEN:
                problem = "a traced call does not split the hidden units"
            if problem is not None:
                raise ValueError(f"plan {forced}: {problem}")
        else:
            call = _estimate(self, steps, batch, mask != NULL, zero_state, num_threads)
            if traces != NULL:
                if call.split == FG_SPLIT_HIDDEN:
                    call.split = FG_SPLIT_NONE
                    call.threads = 1
            elif (planning_mode == PLAN_MEASURE
                    and _work(self, steps, batch) >= MEASURE_MIN_WORK):
                call = self._measured(call, x, steps, batch, batch_major, h_state, c_state,
                                      mask, hold_masked_output, out, num_threads, zero_state,
                                      sorted_rows)
        return self._execute(call, x, steps, batch, batch_major, h_state, c_state, mask,
                             hold_masked_output, out, zero_state, sorted_rows, traces)

    cdef CallPlan _measured(self, CallPlan estimate, void *x, Py_ssize_t steps,
                            Py_ssize_t batch, bint batch_major, object h_state,
                            object c_state, const unsigned char *mask,
                            bint hold_masked_output, void *out, int num_threads,
                            bint zero_state, const SortedRows *sorted_rows) except *:
        # The cached plan of this shape class, or the fastest candidate timed on this call's
        # input (states copied, outputs overwritten by the real run after), within
        # max(MEASURE_BUDGET, 5 calls of the estimate).
        cdef CallPlan call
        from time import perf_counter
        key = self.shape_class(steps, batch, mask != NULL, zero_state, num_threads)
        cached = plan_cache.get(key)
        if cached is not None:
            call = _plan_from_tuple(cached["plan"])
            # (a class spans batch sizes: a plan loaded or measured for another may not fit)
            return call if _plan_problem(self, call, batch, mask != NULL) is None else estimate
        timings = []
        start = perf_counter()
        budget = MEASURE_BUDGET
        for candidate in self.candidates(steps, batch, mask != NULL, num_threads):
            if timings and perf_counter() - start > budget:
                break
            h = h_state.copy()
            c = c_state.copy() if c_state is not None else None
            began = perf_counter()
            self._execute(_plan_from_tuple(candidate), x, steps, batch, batch_major, h, c,
                          mask, hold_masked_output, out, zero_state, sorted_rows)
            timings.append((perf_counter() - began, candidate))
            if len(timings) == 1:
                budget = max(MEASURE_BUDGET, 5 * timings[0][0])
        best = min(timings)[1]
        plan_cache[key] = {"plan": best, "timings": [(t, p) for t, p in timings]}
        if measured_callback is not None:
            measured_callback(key)
        return _plan_from_tuple(best)

    cdef int _execute(self, CallPlan call, void *x, Py_ssize_t steps, Py_ssize_t batch,
                      bint batch_major, object h_state, object c_state,
                      const unsigned char *mask, bint hold_masked_output, void *out,
                      bint zero_state, const SortedRows *sorted_rows,
                      void **traces=NULL) except -1:
        # the checked arrays' pointers to the kernel, without the GIL
        cdef void *h = cnp.PyArray_DATA(<cnp.ndarray> h_state)
        cdef void *c = (cnp.PyArray_DATA(<cnp.ndarray> c_state) if self.cell == FG_CELL_LSTM
                        else NULL)
        cdef int status
        if ((call.first_input == FG_INPUT_BLAS or call.later_input == FG_INPUT_BLAS)
                and (sgemm_pointer == NULL or dgemm_pointer == NULL)):
            _load_blas()
        if (call.split == FG_SPLIT_NONE and _only_python_thread()
                and _work(self, steps, batch) * self.entries < KEEP_GIL_MAX_WORK):
            status = self._run_kernel(call, x, steps, batch, batch_major, h, c, mask,
                                      hold_masked_output, out, zero_state, sorted_rows, traces)
        else:
            with nogil:
                status = self._run_kernel(call, x, steps, batch, batch_major, h, c, mask,
                                          hold_masked_output, out, zero_state, sorted_rows,
                                          traces)
        if status:
            raise MemoryError()
        return 0

    cdef inline int _run_kernel(self, CallPlan call, void *x, Py_ssize_t steps,
                                Py_ssize_t batch, bint batch_major, void *h, void *c,
                                const unsigned char *mask, bint hold_masked_output, void *out,
                                bint zero_state, const SortedRows *sorted_rows,
                                void **traces) noexcept nogil:
        # _run of the plan's dtype (1: no memory for the workspace)
        if self.is_double:
            return _run(self, <double *> x, steps, batch, batch_major, <double *> h,
                        <double *> c, mask, hold_masked_output, <double *> out, zero_state,
                        call, sorted_rows, traces)
        return _run(self, <float *> x, steps, batch, batch_major, <float *> h, <float *> c,
                    mask, hold_masked_output, <float *> out, zero_state, call, sorted_rows,
                    traces)


cdef inline bint _only_python_thread() noexcept:
    # whether this interpreter has one thread state: the caller's (called with the GIL)
    return PyThreadState_Next(PyInterpreterState_ThreadHead(PyInterpreterState_Get())) == NULL


# ------------------------------------------------------------------------------ the planner
# A plan is data: where each layer's x W comes from (FG_INPUT_*: in the step, the packed
# kernel's input pass, or BLAS), and how threads share the call (FG_SPLIT_*). _estimate is
# the cost model; LayerPlan._measured times the candidates (fastgate.plans: modes, cache,
# explain).
cdef struct CallPlan:
    int first_input     # FG_INPUT_* of the first layer
    int later_input     # FG_INPUT_* of the layers after it
    int split           # FG_SPLIT_*
    int threads         # threads of the split (1 with FG_SPLIT_NONE)
    int rows            # FG_ROWS_*: the batch rows all at once or in blocks

cdef enum:
    PLAN_ESTIMATE = 0
    PLAN_MEASURE = 1

#: How calls choose their plan (fastgate.plans.set_mode).
cdef int planning_mode = PLAN_ESTIMATE
#: Calls of fewer multiply-adds (steps x batch x recurrent product) always take the
#: estimate: measuring would cost more than any plan could save.
cdef double MEASURE_MIN_WORK = 2e6
#: Measuring a shape class takes at most about this long (seconds), or 5 calls' worth.
cdef double MEASURE_BUDGET = 0.05
#: Measured plans, {shape_class: {"plan": tuple, "timings": [(seconds, tuple)]}}
#: (fastgate.plans saves and loads them), and a function told of each new entry.
plan_cache = {}
measured_callback = None


def set_planning(str mode, callback=None):
    """Choose plans by ``"estimate"`` (the cost model) or ``"measure"`` (time the candidates
    once per shape class); ``callback(key)`` is called after each measurement."""
    global planning_mode, measured_callback
    if mode not in ("estimate", "measure"):
        raise ValueError(f"planning mode must be 'estimate' or 'measure', not {mode!r}")
    planning_mode = PLAN_MEASURE if mode == "measure" else PLAN_ESTIMATE
    measured_callback = callback


def planning():
    """The planning mode, ``"estimate"`` or ``"measure"``."""
    return "measure" if planning_mode == PLAN_MEASURE else "estimate"


def estimate_thresholds():
    """The cost model's constants (see the comments at their definitions)."""
    return dict(threading_min_work=THREADING_MIN_WORK,
                split_min_step_work=SPLIT_MIN_STEP_WORK,
                fused_input_min_batch=FUSED_INPUT_MIN_BATCH,
                row_blocks_min=ROW_BLOCKS_MIN, row_block_bytes=fg_row_block_bytes,
                fused_input_max_width=FUSED_INPUT_MAX_WIDTH,
                packed_input_min_isa=PACKED_INPUT_MIN_ISA,
                measure_min_work=MEASURE_MIN_WORK, measure_budget=MEASURE_BUDGET)


cdef inline double _work(LayerPlan plan, Py_ssize_t steps, Py_ssize_t batch) noexcept nogil:
    # multiply-adds of the recurrent products of one layer direction
    return <double> steps * batch * plan.width * plan.gate_count * plan.hidden


cdef inline int _size_class(Py_ssize_t n) noexcept:
    # n rounded down to a power of two (0 stays 0)
    cdef int size = 1
    if n <= 0:
        return 0
    while size * 2 <= n:
        size *= 2
    return size


cdef CallPlan _estimate(LayerPlan plan, Py_ssize_t steps, Py_ssize_t batch, bint masked,
                        bint zero_state, int num_threads) noexcept nogil:
    # The cost model: the constants above, measured on the development machine.
    cdef CallPlan call
    cdef Py_ssize_t gates_width = plan.gate_count * plan.hidden
    cdef double work = _work(plan, steps, batch)
    cdef int threads
    # Threads split the batch; each needs whole tiles of rows to be worth it.
    threads = max(1, min(num_threads, FG_MAX_THREADS, batch // fg_tile_rows(plan.gate_count)))
    if work < THREADING_MIN_WORK:
        threads = 1
    call.split = FG_SPLIT_BATCH if threads > 1 else FG_SPLIT_NONE
    call.threads = threads
    # Or share the hidden units, where every step reads only h of the step before.
    if (hidden_split_allowed and threads == 1 and num_threads > 1 and not masked
            and plan.width == plan.hidden
            and not (plan.cell == FG_CELL_GRU and not plan.reset_after)
            and plan.width * gates_width >= SPLIT_MIN_STEP_WORK
            and work >= THREADING_MIN_WORK):
        call.split = FG_SPLIT_HIDDEN
        call.threads = min(num_threads, FG_MAX_THREADS)
    if fg_isa() < PACKED_INPUT_MIN_ISA:
        call.first_input = call.later_input = FG_INPUT_BLAS
    elif batch >= FUSED_INPUT_MIN_BATCH:
        call.first_input = call.later_input = FG_INPUT_IN_STEP
    else:
        call.later_input = FG_INPUT_PACKED
        call.first_input = (FG_INPUT_IN_STEP
                            if plan.input_size <= FUSED_INPUT_MAX_WIDTH
                            or (steps == 1 and zero_state) else FG_INPUT_PACKED)
    if plan.num_layers == 1:
        call.later_input = call.first_input   # (one name per plan)
    # Row blocks where a thread's rows make several (never below 64 rows: skip the sum).
    call.rows = (FG_ROWS_BLOCKED
                 if call.split != FG_SPLIT_HIDDEN and batch >= 64
                 and batch >= ROW_BLOCKS_MIN * call.threads
                              * _row_block_rows(plan, call.first_input)
                 else FG_ROWS_ALL)
    return call


cdef Py_ssize_t _row_block_rows(LayerPlan plan, int first_input) noexcept nogil:
    # about the rows of a row block of the first layer (packed_step.h row_block_rows, which
    # also rounds them to whole tiles)
    cdef Py_ssize_t item = sizeof(double) if plan.is_double else sizeof(float)
    cdef Py_ssize_t per_row = ((plan.input_size if first_input == FG_INPUT_IN_STEP
                                else plan.gate_count * plan.hidden)
                               + 2 * plan.width + 2 * plan.hidden)
    return max(1, fg_row_block_bytes // (per_row * item))


cdef object _plan_problem(LayerPlan plan, CallPlan call, Py_ssize_t batch, bint masked):
    # Why the kernel cannot run `call` (a message), or None.
    cdef int mode
    for mode in (call.first_input, call.later_input):
        if mode not in (FG_INPUT_IN_STEP, FG_INPUT_PACKED, FG_INPUT_BLAS):
            return f"unknown input mode {mode}"
    if call.rows not in (FG_ROWS_ALL, FG_ROWS_BLOCKED):
        return f"unknown row order {call.rows}"
    if call.rows == FG_ROWS_BLOCKED and call.split == FG_SPLIT_HIDDEN:
        return "a hidden split runs all rows at once (its threads meet after every step)"
    if call.split == FG_SPLIT_NONE:
        return None if call.threads == 1 else "one thread without a split"
    if call.split == FG_SPLIT_BATCH:
        if not 2 <= call.threads <= min(batch, FG_MAX_THREADS):
            return f"a batch split needs 2 to min(batch, {FG_MAX_THREADS}) threads"
        if call.first_input == FG_INPUT_PACKED or (plan.num_layers > 1
                                                   and call.later_input == FG_INPUT_PACKED):
            return "the packed input pass runs on one thread or on a hidden split"
        return None
    if call.split == FG_SPLIT_HIDDEN:
        if not 2 <= call.threads <= FG_MAX_THREADS:
            return f"a hidden split needs 2 to {FG_MAX_THREADS} threads"
        if masked or plan.width != plan.hidden or (plan.cell == FG_CELL_GRU
                                                   and not plan.reset_after):
            return ("a hidden split needs every step to read only h: no mask, projection or "
                    "GRU reset-before")
        return None
    return f"unknown split {call.split}"


cdef tuple _plan_tuple(CallPlan call):
    return (call.first_input, call.later_input, call.split, call.threads, call.rows)


cdef CallPlan _plan_from_tuple(object plan) except *:
    # (first, later, split, threads, rows), or without the row order: all rows at once
    cdef CallPlan call
    if len(plan) == 4:
        plan = tuple(plan) + (FG_ROWS_ALL,)
    call.first_input, call.later_input, call.split, call.threads, call.rows = plan
    return call


# --------------------------------------------------------------------------------- BLAS shim
# Loaded on first use (fastgate._kernels.blas imports SciPy's BLAS: ~0.4 s of a cold start).
ctypedef void (*sgemm_function)(blas_int, blas_int, blas_int, float, const float *, blas_int,
                                const float *, blas_int, float, float *,
                                blas_int) noexcept nogil
ctypedef void (*dgemm_function)(blas_int, blas_int, blas_int, double, const double *,
                                blas_int, const double *, blas_int, double, double *,
                                blas_int) noexcept nogil
cdef sgemm_function sgemm_pointer = NULL
cdef dgemm_function dgemm_pointer = NULL


cdef int _load_blas() except -1:
    global sgemm_pointer, dgemm_pointer
    from fastgate._kernels.blas import row_major_gemm
    single, double = row_major_gemm()
    sgemm_pointer = <sgemm_function> PyCapsule_GetPointer(single, b"fastgate.sgemm_row_major")
    dgemm_pointer = <dgemm_function> PyCapsule_GetPointer(double, b"fastgate.dgemm_row_major")
    return 0


cdef inline void _gemm(blas_int m, blas_int n, blas_int k, const floating *a,
                       const floating *b, floating *c) noexcept nogil:
    # c (m, n) = a (m, k) @ b (k, n), row-major, contiguous
    if floating is float:
        sgemm_pointer(m, n, k, 1, a, k, b, n, 0, c, n)
    else:
        dgemm_pointer(m, n, k, 1, a, k, b, n, 0, c, n)


# ---------------------------------------------------------------------------------- running
cdef int _run(LayerPlan plan, floating *x, Py_ssize_t steps, Py_ssize_t batch,
              bint batch_major, floating *h, floating *c, const unsigned char *mask,
              bint hold_masked_output, floating *out, bint zero_state,
              CallPlan call, const SortedRows *sorted_rows,
              void **traces) noexcept nogil:
    # The layer over checked arrays: x (steps * batch, input_size) rows, h and c
    # (entries, batch, width / hidden), out (steps * batch, out_width) rows, rows addressed
    # as fg_direction says, by the plan `call`; traces: NULL, or one trace per entry.
    # Returns 1 if the workspace cannot be allocated.
    cdef Py_ssize_t hidden = plan.hidden, width = plan.width, out_width = plan.out_width
    cdef Py_ssize_t gates_width = plan.gate_count * hidden
    cdef Py_ssize_t rows = steps * batch
    cdef Py_ssize_t layer, direction, k, in_width, workspace_size
    cdef floating *workspace
    cdef floating *projection_buffer
    cdef floating *layer_buffers
    cdef floating *layer_input
    cdef floating *layer_output
    cdef bint projecting, on_stack
    cdef fg_direction direction_args
    cdef double small_workspace[SMALL_WORKSPACE_DOUBLES + 8]

    # Workspace, allocated once per call: (B, P + 2 H) for the step (h double buffer,
    # o * act(c) or r * h, z), the input projection of all steps (unless every layer's is
    # in the step) and two layer buffers for stacked layers.
    projecting = (call.first_input != FG_INPUT_IN_STEP
                  or (plan.num_layers > 1 and call.later_input != FG_INPUT_IN_STEP))
    workspace_size = (batch * (width + 2 * hidden)
                      + (rows * gates_width if projecting else 0)
                      + (2 * rows * out_width if plan.num_layers > 1 else 0))
    on_stack = workspace_size * sizeof(floating) <= SMALL_WORKSPACE_DOUBLES * sizeof(double)
    if on_stack:
        # a small call's on the stack, 64-byte aligned (malloc + free: ~2% of an S3 call)
        workspace = <floating *> ((<size_t> small_workspace + 63) & ~(<size_t> 63))
    else:
        # (the raw allocator: callable without the GIL, and tracemalloc sees it)
        workspace = <floating *> PyMem_RawMalloc(workspace_size * sizeof(floating))
        if workspace == NULL:
            return 1
    projection_buffer = workspace + batch * (width + 2 * hidden)
    layer_buffers = projection_buffer + (rows * gates_width if projecting else 0)
    _direction_constants(plan, &direction_args, steps, batch, batch_major, mask,
                         hold_masked_output, workspace)
    direction_args.active_rows = sorted_rows.active if sorted_rows != NULL else NULL
    direction_args.row_blocking = call.rows

    layer_input = x
    for layer in range(plan.num_layers):
        if layer == plan.num_layers - 1:
            layer_output = out
        else:
            layer_output = layer_buffers + (layer % 2) * rows * out_width
        in_width = plan.input_size if layer == 0 else out_width
        direction_args.input = layer_input
        direction_args.input_width = in_width
        direction_args.input_mode = call.first_input if layer == 0 else call.later_input
        # (the last layer writes the caller's order; a layer input stays sorted)
        direction_args.output_rows = (sorted_rows.output if sorted_rows != NULL
                                      and layer == plan.num_layers - 1 else NULL)
        direction_args.projected_input = (NULL if direction_args.input_mode == FG_INPUT_IN_STEP
                                          else projection_buffer)
        for direction in range(plan.num_directions):
            k = layer * plan.num_directions + direction
            _entry_weights(plan, &direction_args, k, zero_state)
            direction_args.h = h + k * batch * width
            direction_args.c = c + k * batch * hidden if c != NULL else NULL
            direction_args.out = layer_output + direction * width
            direction_args.trace = traces[k] if traces != NULL else NULL
            if direction_args.input_mode == FG_INPUT_BLAS:
                # x W for every step by one BLAS GEMM: (T*B, D) @ (D, G*H)
                _gemm(<blas_int> rows, <blas_int> gates_width, <blas_int> in_width,
                      layer_input, <floating *> plan.pointers[WEIGHT_ARRAYS * k],
                      projection_buffer)
            _run_split(x, &direction_args, call)
        layer_input = layer_output
    if not on_stack:
        PyMem_RawFree(workspace)
    return 0


cdef inline void _entry_weights(LayerPlan plan, fg_direction *d, Py_ssize_t k,
                               bint zero_state) noexcept nogil:
    # the fields of fg_direction of entry k (layer * num_directions + direction): its
    # direction and weights, and whether its first step may skip h U
    cdef void **pointers = plan.pointers + WEIGHT_ARRAYS * k
    d.reverse = k % plan.num_directions == 1
    d.zero_state = zero_state and plan.recurrent_finite[k]
    d.bias = pointers[2]
    d.new_gate_bias = pointers[3]
    d.recurrent = pointers[1]
    d.recurrent_new = pointers[4]
    d.projection = pointers[5]
    d.peephole = pointers[6]


cdef inline void _direction_constants(LayerPlan plan, fg_direction *d, Py_ssize_t steps,
                                      Py_ssize_t batch, bint batch_major,
                                      const unsigned char *mask, bint hold_masked_output,
                                      void *workspace) noexcept nogil:
    # the fields of fg_direction that every layer and direction of a call share
    cdef Py_ssize_t item = sizeof(double) if plan.is_double else sizeof(float)
    d.cell = plan.cell
    d.act = plan.act
    d.rec_act = plan.rec_act
    d.reset_after = plan.reset_after
    d.hold_masked_output = hold_masked_output
    d.steps = steps
    d.batch = batch
    d.step_stride = 1 if batch_major else batch
    d.batch_stride = steps if batch_major else 1
    d.hidden = plan.hidden
    d.width = plan.width
    d.h_spare = workspace
    d.cell_out = <char *> workspace + batch * plan.width * item
    d.gate_buffer = <char *> workspace + batch * (plan.width + plan.hidden) * item
    d.mask = mask
    d.out_width = plan.out_width
    d.block_begin = 0
    d.block_end = 0
    d.synchronize = 0
    d.cell_act = plan.cell_act
    d.act_alpha = plan.act_alpha
    d.act_beta = plan.act_beta
    d.rec_alpha = plan.rec_alpha
    d.rec_beta = plan.rec_beta
    d.cell_alpha = plan.cell_alpha
    d.cell_beta = plan.cell_beta
    d.clipping = plan.clip < INFINITY
    d.clip = plan.clip
    d.input_forget = plan.input_forget
    d.trace = NULL
    d.trace_width = plan.trace_width


cdef inline void _run_split(floating *dtype_tag, const fg_direction *d,
                            CallPlan call) noexcept nogil:
    # One direction by the plan's thread split (``dtype_tag`` only selects the dtype).
    cdef Py_ssize_t bounds[FG_MAX_THREADS + 1]
    cdef Py_ssize_t chunk
    if call.split == FG_SPLIT_HIDDEN:
        if floating is float:
            fg_run_direction_split_f(d, call.threads)
        else:
            fg_run_direction_split_d(d, call.threads)
        return
    if call.split == FG_SPLIT_NONE:
        _run_rows(dtype_tag, d, 0, d.batch)
        return
    for chunk in range(call.threads + 1):
        bounds[chunk] = d.batch * chunk // call.threads
    if d.active_rows != NULL:
        _balance_sorted_rows(d, call.threads, bounds)
    for chunk in prange(call.threads, num_threads=call.threads, schedule="static",
                        chunksize=1):
        _run_rows(dtype_tag, d, bounds[chunk], bounds[chunk + 1])


cdef inline double _sorted_rows_work(const fg_direction *d, Py_ssize_t rows) noexcept nogil:
    # the row-steps of rows [0, rows) of a ragged call (the valid rows of step t are
    # [0, active_rows[t]))
    cdef double work = 0
    cdef Py_ssize_t t
    for t in range(d.steps):
        work += min(d.active_rows[t], rows)
    return work


cdef void _balance_sorted_rows(const fg_direction *d, int threads,
                               Py_ssize_t *bounds) noexcept nogil:
    # Thread bounds giving each thread about the same row-steps: sorted longest first, equal
    # row counts would give the first thread the longest sequences (uniform lengths: ~2.4x
    # the last one's work at 2 threads).
    cdef double total = _sorted_rows_work(d, d.batch)
    cdef Py_ssize_t low, high, middle
    cdef int chunk
    for chunk in range(1, threads):
        low, high = bounds[chunk - 1], d.batch
        while low < high:   # the first row count whose work reaches chunk / threads
            middle = (low + high) // 2
            if _sorted_rows_work(d, middle) * threads < total * chunk:
                low = middle + 1
            else:
                high = middle
        bounds[chunk] = low


cdef inline void _run_rows(floating *dtype_tag, const fg_direction *d, Py_ssize_t begin,
                           Py_ssize_t end) noexcept nogil:
    # The float or double kernel (``dtype_tag`` only selects the fused specialization).
    if floating is float:
        fg_run_direction_f(d, begin, end)
    else:
        fg_run_direction_d(d, begin, end)


# ------------------------------------------------------------------------- the layers' call
# fastgate.layers makes layer_call RecurrentLayer.__call__ (compiled_layer_call): the
# branches of the Python method it replaces, without its Python frame and attribute lookups
# (~0.2 us of a 2 us call at S3), and a lean call with lengths= too (the Python checks of
# the general call only when the lengths need them: ~2 us of 7.6 at B=4, T=10, H=32).
# What it reads, set once by compiled_layer_call:
cdef object backend_variable = None   # fastgate.backend's ContextVar of the backend name
cdef object trace_module = None       # fastgate.trace: its `recording` count, current_recorder


def compiled_layer_call(python_call, backend_var, trace):
    """:func:`layer_call`, to replace ``python_call`` (``RecurrentLayer.__call__``, whose
    docstring and signature it takes); ``backend_var`` is the context variable of the
    backend's name and ``trace`` the module :mod:`fastgate.trace`. The calls the lean paths
    do not take go to the layer's ``_general_call(x, state, lengths)``."""
    global backend_variable, trace_module
    backend_variable, trace_module = backend_var, trace
    layer_call.__doc__ = python_call.__doc__
    layer_call.__wrapped__ = python_call
    return layer_call


def layer_call(self, x, state=None, lengths=None):
    # (docstring: RecurrentLayer.__call__'s, set by compiled_layer_call)
    # The common call (no state, no trace recording in this thread), checked and allocated
    # by the runner (None: x or lengths need converting); the general call otherwise.
    cdef object runner, result = None
    cdef PyObject *backend_name = NULL
    if state is None and not (trace_module.recording
                              and trace_module.current_recorder() is not None):
        PyContextVar_Get(backend_variable, NULL, &backend_name)   # (it has a default)
        try:
            runner = self._runners[<object> backend_name]
        finally:
            Py_XDECREF(backend_name)
        if type(runner) is not LayerPlan:
            if lengths is None:
                result = runner.run(x)
        elif lengths is None:
            result = (<LayerPlan> runner)._run_from_zeros(x, 0)
        else:   # (the general call runs lengths by run_lengths too, after converting)
            result = (<LayerPlan> runner)._run_lengths_from_zeros(x, lengths)
        if result is not None:
            return result
    return self._general_call(x, state, lengths)
