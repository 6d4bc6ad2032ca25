/* The kernels' constants, written once: C includes this header, Cython `cdef extern`s it
 * (recurrent.pyx), and tests/test_kernel_constants.py checks that the Python tables
 * (fastgate.layers, fastgate.activations, fastgate.layout) equal what the compiled module
 * reports from here (recurrent.kernel_constants()).
 */
#ifndef FASTGATE_CONSTANTS_H
#define FASTGATE_CONSTANTS_H

/* Cell families (fastgate.layers._CELL_CODES). */
enum { FG_CELL_LSTM = 0, FG_CELL_GRU = 1, FG_CELL_RNN = 2 };

/* Gates per cell family (fastgate.layout.GATE_COUNT): i f g o / r z n / one. */
#define FG_GATES(cell) ((cell) == FG_CELL_LSTM ? 4 : ((cell) == FG_CELL_GRU ? 3 : 1))

/* Activation codes (fastgate.activations.ACTIVATIONS), the kernel ABI. */
enum {
    FG_LINEAR = 0, FG_TANH = 1, FG_SIGMOID = 2, FG_RELU = 3, FG_ELU = 4, FG_SELU = 5,
    FG_SOFTSIGN = 6, FG_SOFTPLUS = 7, FG_EXPONENTIAL = 8, FG_HARD_SIGMOID = 9,
    FG_HARD_SIGMOID_KERAS2 = 10, FG_SILU = 11, FG_GELU = 12,
    /* parametrised (fastgate.activations.PARAMETRIC_ACTIVATIONS; ONNX's recurrent ops) */
    FG_LEAKY_RELU = 13, FG_THRESHOLDED_RELU = 14, FG_SCALED_TANH = 15, FG_AFFINE = 16,
    FG_HARD_SIGMOID_AFFINE = 17, FG_ELU_ALPHA = 18
};

/* Where a step's x_t W comes from (a plan's input pass, fastgate.plans.INPUT_MODES):
 * IN_STEP: the step's tile product reads x_t next to h and [W; U] (no projection buffer);
 * PACKED:  the packed kernel computes x W of every step first, into a buffer;
 * BLAS:    one BLAS GEMM computes x W of every step first (by the caller, recurrent.pyx). */
enum { FG_INPUT_IN_STEP = 0, FG_INPUT_PACKED = 1, FG_INPUT_BLAS = 2 };

/* How a call walks its batch rows (a plan's row order, fastgate.plans.ROWS):
 * ALL:     each step computes every row, then the next step (a step's product reads the
 *          rows' [x_t | h] once per block of hidden units: right while they stay in L2);
 * BLOCKED: the rows in blocks whose per-row data (x_t, h, c, x W) fit in FG_L2_ROWS_BYTES,
 *          each block through all steps before the next (rows are independent): a large
 *          batch's state then stays in L2 instead of streaming from L3 at every step. */
enum { FG_ROWS_ALL = 0, FG_ROWS_BLOCKED = 1 };
/* A row block's bytes of per-row data (x_t, h, h', c and the workspace rows: an
 * overestimate of what a step keeps hot; the weights stream through L2 too). Measured on
 * Zen 4 (1 MB L2), LSTM B=4000 T=50 D=64 H=256: 256 KB 79, 512 KB 78, 1 MB 91, 2 MB 88,
 * 4 MB 85 GFLOP/s, all rows at once 67 (CPU time, shared machine). */
#define FG_L2_ROWS_BYTES 1048576

/* How threads share a call (a plan's thread split, fastgate.plans.SPLITS):
 * NONE: one thread; BATCH: disjoint batch rows, never synchronizing; HIDDEN: the hidden
 * blocks of every row, meeting at a barrier after every step. */
enum { FG_SPLIT_NONE = 0, FG_SPLIT_BATCH = 1, FG_SPLIT_HIDDEN = 2 };

/* Instruction sets (recurrent.isa()), and per ISA the vector width in bytes and the vector
 * accumulators a register tile may keep (24 of 32 vector registers, 12 of 16). */
enum { FG_ISA_BASE = 0, FG_ISA_AVX2 = 1, FG_ISA_AVX512 = 2 };
#define FG_BASE_VBYTES 16
#define FG_BASE_ACC 12
#define FG_AVX2_VBYTES 32
#define FG_AVX2_ACC 12
#define FG_AVX512_VBYTES 64
#define FG_AVX512_ACC 24
/* The largest of the FG_*_ACC: the size of a tile's accumulator arrays. */
#define FG_MAX_ACC 24
/* A register tile has at most this many batch rows. */
#define FG_MAX_TILE_ROWS 12
/* Threads a call may use (the thread bounds arrays hold FG_MAX_THREADS + 1 entries). */
#define FG_MAX_THREADS 64

#endif /* FASTGATE_CONSTANTS_H */
