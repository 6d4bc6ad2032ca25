# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Recurrent kernels: LSTM, GRU and SimpleRNN, fused over float32/float64.

The equations are those of :mod:`fastgate.oracle` (read them there). Per layer and direction:

per step, a register-blocked kernel computes ``x_t @ W + h @ U`` over ``[W; U]`` packed once
(at layer construction, :func:`prepare`) and applies the cell's equations to each tile while
it is still in registers (fused.h / packed_step.h, compiled for AVX-512, AVX2 and the
baseline; the CPU picks one at run time). At batch < 4, where a step is a matrix-vector
product, ``x @ W`` is computed for all steps first by the same kernel, and steps only read
``U`` (except for a first-layer input at most 16 wide, or one step from zeros).

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
from libc.math cimport INFINITY
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_RawFree, PyMem_RawMalloc

cimport numpy as cnp
import numpy as np

from .blas cimport blas_int, gemm

cnp.import_array()

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
        const void *peephole
        void *h
        void *c
        void *h_spare
        void *cell_out
        void *gate_buffer
        const unsigned char *mask
        void *out
        Py_ssize_t out_width
        Py_ssize_t block_begin, block_end
        int synchronize
        int cell_act
        double act_alpha, act_beta, rec_alpha, rec_beta, cell_alpha, cell_beta
        int clipping
        double clip
        int input_forget
    int fg_isa()
    Py_ssize_t fg_block_width(int is_double)
    Py_ssize_t fg_tile_rows(int gates)
    void fg_run_direction_f(const fg_direction *d, Py_ssize_t row_begin, Py_ssize_t row_end)
    void fg_run_direction_d(const fg_direction *d, Py_ssize_t row_begin, Py_ssize_t row_end)
    void fg_run_direction_split_f(const fg_direction *d, int threads)
    void fg_run_direction_split_d(const fg_direction *d, int threads)

# Cell codes (fastgate.layers._CELL_CODES).
cdef enum:
    CELL_LSTM = 0
    CELL_GRU = 1
    CELL_RNN = 2

# Arrays per layer direction in a PreparedWeights (see prepare).
cdef enum:
    WEIGHT_ARRAYS = 7

cdef int MAX_THREADS = 64
#: Below this many multiply-adds per call (steps x batch x recurrent product), threads cost
#: more than they save.
cdef double THREADING_MIN_WORK = 2e6
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
#: The process's kernel thread count (fastgate.threads; 0: not read yet), and whether
#: threads may split the hidden units at all (only when threads were asked for explicitly).
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
    gates = 4 if cell == CELL_LSTM else (3 if cell == CELL_GRU else 1)
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

    if cell == CELL_GRU and reset_after:
        bias[2 * hidden:] = input_bias[2 * hidden:]
        new_gate_bias = recurrent_bias[2 * hidden:].copy()
        recurrent = packed(0, 3 * hidden, 3)
    elif cell == CELL_GRU:
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
    projection, peephole``) and their data pointers and sizes, read once here so that a call does
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


cdef inline bint _is_c_array(object array, int ndim, int typenum):
    # an ndarray (not a subclass) of ndim dimensions and dtype typenum, C-contiguous
    return (type(array) is cnp.ndarray
            and cnp.PyArray_NDIM(<cnp.ndarray> array) == ndim
            and cnp.PyArray_TYPE(<cnp.ndarray> array) == typenum
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray> array))


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
    # per entry (layer * num_directions + direction): the PreparedWeights' 7 pointers, and
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
        self.gate_count = 4 if cell == CELL_LSTM else (3 if cell == CELL_GRU else 1)
        weights = self.prepared[0]
        self.dtype = weights.dtype
        self.is_double = weights.is_double
        self.typenum = cnp.NPY_DOUBLE if self.is_double else cnp.NPY_FLOAT
        self.input_size = weights.input_rows
        self.hidden = weights.input_columns // self.gate_count
        self.width = width
        self.out_width = num_directions * width
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
                        2 if cell == CELL_GRU and not reset_after else self.gate_count,
                        self.hidden, block)
                    or (cell == CELL_GRU and reset_after and weights.sizes[3] != self.hidden)
                    or (cell == CELL_GRU and not reset_after and weights.sizes[4]
                        != _packed_size(in_width + self.hidden, 1, self.hidden, block))
                    or (weights.sizes[5] != 0 and (
                        cell != CELL_LSTM
                        or weights.sizes[5] != _packed_size(self.hidden, 1, width, block)))
                    or (weights.sizes[5] == 0 and width != self.hidden)
                    or (weights.sizes[6] != 0 and (cell != CELL_LSTM
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
        return out, ((h, c) if self.cell == CELL_LSTM else h)

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
            if self.cell == CELL_LSTM:
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
        return y, ((h, c) if self.cell == CELL_LSTM else h)

    def forward(self, x, h_state, c_state, mask, bint batch_major, bint hold_masked_output,
                int num_threads=0, bint zero_state=False):
        """Run the layer on ``x`` ``(T, B, D)`` (``(B, T, D)`` if ``batch_major``); returns
        the outputs, in ``x``'s layout.

        ``h_state`` (and ``c_state`` for LSTM, else ``None``) are the initial states, C-
        contiguous arrays of the plan's dtype, overwritten with the final ones; ``mask`` is
        ``None`` or a ``(T, B)`` uint8 array of valid steps. ``zero_state`` says that the
        states are all zeros: the first step then skips ``h @ U`` (exactly zero) where ``U``
        is finite. ``num_threads`` threads split the batch (0, in every entry: the process's
        setting, :func:`fastgate.set_num_threads`).
        """
        cdef cnp.npy_intp dims[3]
        cdef Py_ssize_t steps, batch
        cdef const unsigned char *mask_pointer = NULL
        if not self._is_input(x, 3):
            raise ValueError(f"forward: x must be a C-contiguous {self.dtype} array (., ., "
                             f"{self.input_size})")
        dims[0] = cnp.PyArray_DIMS(<cnp.ndarray> x)[0]
        dims[1] = cnp.PyArray_DIMS(<cnp.ndarray> x)[1]
        dims[2] = self.out_width
        steps, batch = (dims[1], dims[0]) if batch_major else (dims[0], dims[1])
        if not self._is_state(h_state, batch, self.width):
            raise ValueError("forward: h_state does not match the layer and batch")
        if self.cell == CELL_LSTM and not self._is_state(c_state, batch, self.hidden):
            raise ValueError("forward: c_state does not match the layer and batch")
        if mask is not None:
            if (not _is_c_array(mask, 2, cnp.NPY_UINT8)
                    or cnp.PyArray_DIMS(<cnp.ndarray> mask)[0] != steps
                    or cnp.PyArray_DIMS(<cnp.ndarray> mask)[1] != batch):
                raise ValueError("forward: mask must be a C-contiguous (steps, batch) uint8 "
                                 "array")
            mask_pointer = <const unsigned char *> cnp.PyArray_DATA(<cnp.ndarray> mask)
        out = cnp.PyArray_EMPTY(3, dims, self.typenum, 0)
        self._call(cnp.PyArray_DATA(<cnp.ndarray> x), steps, batch, batch_major, h_state,
                   c_state, mask_pointer, hold_masked_output,
                   cnp.PyArray_DATA(<cnp.ndarray> out), num_threads, zero_state)
        return out

    cdef inline tuple _zero_state(self, Py_ssize_t batch, bint flat=False):
        # zero (h, c) (c None but for LSTM): (entries, batch, .), or (batch, .) if flat
        cdef cnp.npy_intp dims[3]
        cdef int ndim = 2 if flat else 3
        dims[0] = self.entries
        dims[ndim - 2] = batch
        dims[ndim - 1] = self.width
        h = cnp.PyArray_ZEROS(ndim, dims, self.typenum, 0)
        if self.cell != CELL_LSTM:
            return h, None
        dims[ndim - 1] = self.hidden
        return h, cnp.PyArray_ZEROS(ndim, dims, self.typenum, 0)

    cdef int _call(self, void *x, Py_ssize_t steps, Py_ssize_t batch, bint batch_major,
                   object h_state, object c_state, const unsigned char *mask,
                   bint hold_masked_output, void *out, int num_threads,
                   bint zero_state) except -1:
        # the checked arrays' pointers to the kernel, without the GIL
        cdef void *h = cnp.PyArray_DATA(<cnp.ndarray> h_state)
        cdef void *c = (cnp.PyArray_DATA(<cnp.ndarray> c_state) if self.cell == CELL_LSTM
                        else NULL)
        cdef int status
        if steps == 0 or batch == 0:
            return 0
        if num_threads <= 0:
            num_threads = process_threads if process_threads else _default_threads()
        with nogil:
            if self.is_double:
                status = _run(self, <double *> x, steps, batch, batch_major, <double *> h,
                              <double *> c, mask, hold_masked_output, <double *> out,
                              num_threads, zero_state)
            else:
                status = _run(self, <float *> x, steps, batch, batch_major, <float *> h,
                              <float *> c, mask, hold_masked_output, <float *> out,
                              num_threads, zero_state)
        if status:
            raise MemoryError()
        return 0


cdef int _run(LayerPlan plan, floating *x, Py_ssize_t steps, Py_ssize_t batch,
              bint batch_major, floating *h, floating *c, const unsigned char *mask,
              bint hold_masked_output, floating *out, int num_threads,
              bint zero_state) noexcept nogil:
    # The layer over checked arrays: x (steps * batch, input_size) rows, h and c
    # (entries, batch, width / hidden), out (steps * batch, out_width) rows, rows addressed
    # as fg_direction says. Returns 1 if the workspace cannot be allocated.
    cdef Py_ssize_t hidden = plan.hidden, width = plan.width, out_width = plan.out_width
    cdef Py_ssize_t gates_width = plan.gate_count * hidden
    cdef Py_ssize_t rows = steps * batch
    cdef Py_ssize_t layer, direction, k, in_width, threads, chunk, workspace_size
    cdef int split_threads
    cdef Py_ssize_t bounds[65]
    cdef void **pointers
    cdef floating *workspace
    cdef floating *projection_buffer
    cdef floating *layer_buffers
    cdef floating *layer_input
    cdef floating *layer_output
    cdef bint fused_input, blas_input, first_fused, projecting
    cdef fg_direction direction_args

    # Threads split the batch; each needs whole tiles of rows to be worth it.
    threads = max(1, min(num_threads, MAX_THREADS, batch // fg_tile_rows(plan.gate_count)))
    if steps * batch * width * gates_width < THREADING_MIN_WORK:
        threads = 1
    for chunk in range(threads + 1):
        bounds[chunk] = batch * chunk // threads
    # Or share the hidden units (see fg_block_queue in fused.h), where every step reads only
    # h of the step before.
    split_threads = 1
    if (hidden_split_allowed and threads == 1 and num_threads > 1 and mask == NULL
            and width == hidden
            and not (plan.cell == CELL_GRU and not plan.reset_after)
            and width * gates_width >= SPLIT_MIN_STEP_WORK
            and steps * batch * width * gates_width >= THREADING_MIN_WORK):
        split_threads = min(num_threads, MAX_THREADS)

    # Workspace, allocated once per call: (B, P + 2 H) for the step (h double buffer,
    # o * act(c) or r * h, z), the input projection of all steps (unless fused into the
    # step) and two layer buffers for stacked layers.
    blas_input = fg_isa() < PACKED_INPUT_MIN_ISA
    fused_input = batch >= FUSED_INPUT_MIN_BATCH and not blas_input
    first_fused = fused_input or ((plan.input_size <= FUSED_INPUT_MAX_WIDTH
                                   or (steps == 1 and zero_state)) and not blas_input)
    # whether some layer computes x W for all steps into the projection buffer
    projecting = not fused_input and (plan.num_layers > 1 or not first_fused)
    workspace_size = (batch * (width + 2 * hidden)
                      + (rows * gates_width if projecting else 0)
                      + (2 * rows * out_width if plan.num_layers > 1 else 0))
    # (the raw allocator: callable without the GIL, and tracemalloc sees it)
    workspace = <floating *> PyMem_RawMalloc(workspace_size * sizeof(floating))
    if workspace == NULL:
        return 1
    projection_buffer = workspace + batch * (width + 2 * hidden)
    layer_buffers = projection_buffer + (rows * gates_width if projecting else 0)

    direction_args.cell = plan.cell
    direction_args.act = plan.act
    direction_args.rec_act = plan.rec_act
    direction_args.cell_act = plan.cell_act
    direction_args.act_alpha = plan.act_alpha
    direction_args.act_beta = plan.act_beta
    direction_args.rec_alpha = plan.rec_alpha
    direction_args.rec_beta = plan.rec_beta
    direction_args.cell_alpha = plan.cell_alpha
    direction_args.cell_beta = plan.cell_beta
    direction_args.clipping = plan.clip < INFINITY
    direction_args.clip = plan.clip
    direction_args.input_forget = plan.input_forget
    direction_args.reset_after = plan.reset_after
    direction_args.hold_masked_output = hold_masked_output
    direction_args.steps = steps
    direction_args.batch = batch
    direction_args.step_stride = 1 if batch_major else batch
    direction_args.batch_stride = steps if batch_major else 1
    direction_args.hidden = hidden
    direction_args.width = width
    direction_args.input_projected = blas_input
    direction_args.h_spare = workspace
    direction_args.cell_out = workspace + batch * width
    direction_args.gate_buffer = workspace + batch * (width + hidden)
    direction_args.mask = mask
    direction_args.out_width = out_width
    direction_args.block_begin = 0
    direction_args.block_end = 0
    direction_args.synchronize = 0

    layer_input = x
    for layer in range(plan.num_layers):
        if layer == plan.num_layers - 1:
            layer_output = out
        else:
            layer_output = layer_buffers + (layer % 2) * rows * out_width
        in_width = plan.input_size if layer == 0 else out_width
        for direction in range(plan.num_directions):
            k = layer * plan.num_directions + direction
            pointers = plan.pointers + WEIGHT_ARRAYS * k
            direction_args.reverse = direction == 1
            direction_args.zero_state = zero_state and plan.recurrent_finite[k]
            direction_args.bias = pointers[2]
            direction_args.new_gate_bias = pointers[3]
            direction_args.recurrent = pointers[1]
            direction_args.recurrent_new = pointers[4]
            direction_args.projection = pointers[5]
            direction_args.peephole = pointers[6]
            direction_args.h = h + k * batch * width
            direction_args.c = c + k * batch * hidden if c != NULL else NULL
            direction_args.out = layer_output + direction * width
            direction_args.input = layer_input
            direction_args.input_width = in_width
            direction_args.projected_input = (NULL if fused_input or (layer == 0 and first_fused)
                                              else projection_buffer)
            if blas_input:
                # x W for every step by one BLAS GEMM: (T*B, D) @ (D, G*H)
                gemm(<blas_int> rows, <blas_int> gates_width, <blas_int> in_width,
                     <floating> 1, layer_input, <blas_int> in_width,
                     <floating *> pointers[0], <blas_int> gates_width,
                     <floating> 0, projection_buffer, <blas_int> gates_width)
            if split_threads > 1:
                _run_split(x, &direction_args, split_threads)
            elif threads == 1:
                _run_rows(x, &direction_args, 0, batch)
            else:
                for chunk in prange(threads, num_threads=threads, schedule="static",
                                    chunksize=1):
                    _run_rows(x, &direction_args, bounds[chunk], bounds[chunk + 1])
        layer_input = layer_output
    PyMem_RawFree(workspace)
    return 0


cdef inline void _run_split(floating *dtype_tag, const fg_direction *d,
                            int threads) noexcept nogil:
    # The float or double kernel on threads that split the hidden units.
    if floating is float:
        fg_run_direction_split_f(d, threads)
    else:
        fg_run_direction_split_d(d, threads)


cdef inline void _run_rows(floating *dtype_tag, const fg_direction *d, Py_ssize_t begin,
                           Py_ssize_t end) noexcept nogil:
    # The float or double kernel (``dtype_tag`` only selects the fused specialization).
    if floating is float:
        fg_run_direction_f(d, begin, end)
    else:
        fg_run_direction_d(d, begin, end)
