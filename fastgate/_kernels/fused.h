/* The fused recurrent loop of one layer direction, compiled for several instruction sets.
 *
 * packed_step.h is instantiated per dtype and per ISA: AVX-512 and AVX2+FMA through
 * function target attributes (so a default build runs on any x86-64), and the baseline
 * (SSE2 on x86-64, NEON on arm64). fg_isa() picks the best one the CPU supports, once; the
 * packed weight layout depends on it (fg_block_width), so the layer packs its weights with
 * the width the running CPU uses.
 */
#ifndef FASTGATE_FUSED_H
#define FASTGATE_FUSED_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "constants.h"
#include "vecmath.h"

/* One layer direction. Row (t, b) of the input projection and of the output is
 * t * step_stride + b * batch_stride (time-major: B, 1; batch-major: 1, T). */
typedef struct {
    int cell, act, rec_act, reset_after, reverse, hold_masked_output;
    ptrdiff_t steps, batch, step_stride, batch_stride;
    ptrdiff_t hidden;               /* H */
    ptrdiff_t width;                /* P: proj_size, else H */
    const void *input;              /* (T*B, D): the layer input rows */
    ptrdiff_t input_width;          /* D */
    int input_mode;                 /* FG_INPUT_*: where x_t W comes from (constants.h) */
    void *projected_input;          /* (T*B, G*H) x W of every row (FG_INPUT_PACKED: the
                                       kernel's input pass writes it first; FG_INPUT_BLAS:
                                       the caller did), unused in step */
    int row_blocking;               /* FG_ROWS_*: rows all at once or in L2-sized blocks */
    int zero_state;                 /* h starts at zero and U is finite: the first step
                                       skips h U (exactly 0) */
    const void *bias;               /* (G*H,): b_i + b_h, except the GRU reset-after n gate */
    const void *new_gate_bias;      /* (H,): b_hn of a GRU reset-after, else NULL */
    const void *recurrent;          /* packed [W; U] (GRU reset-before: the r and z gates) */
    const void *recurrent_new;      /* packed [W_n; U_n] of a GRU reset-before, else NULL */
    const void *projection;         /* packed W_hr of a projected LSTM, else NULL */
    const void *peephole;           /* (3H,): LSTM peephole weights on c for i, f, o, or NULL */
    void *h;                        /* (B, P): initial state in, final state out */
    void *c;                        /* (B, H): LSTM cell state, updated in place */
    void *h_spare;                  /* (B, P) workspace: the other half of h's double buffer */
    void *cell_out;                 /* (B, H) workspace: o * act(c) / r * h */
    void *gate_buffer;              /* (B, H) workspace: z of a GRU reset-before */
    const unsigned char *mask;      /* (T, B) valid steps, or NULL */
    const ptrdiff_t *active_rows;   /* (T,): with rows sorted by length, longest first, the
                                       valid rows of step t are [0, active_rows[t]): the
                                       product and cells skip the others; or NULL */
    const ptrdiff_t *output_rows;   /* (B,): with a mask, row b's outputs go to batch row
                                       output_rows[b] of `out` (sorted rows back in the
                                       caller's order); NULL: to row b */
    void *out;                      /* output rows, already offset to this direction */
    ptrdiff_t out_width;
    ptrdiff_t block_begin;          /* with block_end > 0: compute only the hidden blocks */
    ptrdiff_t block_end;            /*   [block_begin, block_end) (threads split them) */
    int synchronize;                /* threads split the blocks: a barrier ends each step */
    /* ONNX's options (fastgate.layers: cell_activation, clip, input_forget) */
    int cell_act;                   /* LSTM: the activation of c' in h' = o * cell_act(c') */
    double act_alpha, act_beta;     /* the parameters of act, rec_act and cell_act when they */
    double rec_alpha, rec_beta;     /*   are parametrised activations (vecmath.h) */
    double cell_alpha, cell_beta;
    int clipping;                   /* gate pre-activations are clamped to [-clip, clip] */
    double clip;
    int input_forget;               /* LSTM: f = 1 - i */
    /* Tracing (fastgate.trace): with trace != NULL, every step also writes what the cells
     * computed into trace row t * step_stride + b * batch_stride (trace_width columns):
     * the activated gates, H columns each in the cell's gate order (LSTM i f g o, GRU r z n;
     * a SimpleRNN's only gate is h'), then an LSTM's c', then h' (P columns); NaN in the
     * whole row where the step is masked.
     * The epilogues that write it are separate instantiations: without a trace, the
     * kernel runs exactly the code it runs untraced. */
    void *trace;
    ptrdiff_t trace_width;
} fg_direction;


#if defined(__GNUC__) && defined(__x86_64__)
#define FG_X86 1
#else
#define FG_X86 0
#endif
#if FG_X86
#include <immintrin.h>   /* the float vector clamps of packed_step.h */
#endif
#ifdef _OPENMP
#include <omp.h>
#define FG_BARRIER() _Pragma("omp barrier")
#define FG_THREAD_ID(thread, count) ((thread) = omp_get_thread_num(), \
                                     (count) = omp_get_num_threads())
#else
#define FG_BARRIER() ((void)0)
#define FG_THREAD_ID(thread, count) ((void)0)
#endif

/* The bytes of a row block of FG_ROWS_BLOCKED (constants.h; tests shrink it to run many
 * blocks on small shapes: recurrent.set_row_block_bytes). */
static ptrdiff_t fg_row_block_bytes = FG_L2_ROWS_BYTES;

/* ------------------------------------------------------------------- instantiations */
/* The cell families of a pass's epilogue (packed_step.h): LSTM, GRU reset-after, GRU
 * reset-before's r and z (then its candidate n in a pass of its own), SimpleRNN. */
enum {
    FG_FAMILY_LSTM = 0, FG_FAMILY_GRU = 1, FG_FAMILY_GRU_RESET = 2, FG_FAMILY_CANDIDATE = 3,
    FG_FAMILY_RNN = 4
};

#define FG_ISA_SUFFIX base
#define FG_TARGET
#define FG_VBYTES FG_BASE_VBYTES
#define FG_ACC FG_BASE_ACC
#include "variant.h"

#if FG_X86
#define FG_ISA_SUFFIX avx2
#define FG_TARGET __attribute__((target("avx2,fma")))
#define FG_VBYTES FG_AVX2_VBYTES
#define FG_ACC FG_AVX2_ACC
#include "variant.h"

#define FG_ISA_SUFFIX avx512
#define FG_TARGET __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma,prefer-vector-width=512")))
#define FG_VBYTES FG_AVX512_VBYTES
#define FG_ACC FG_AVX512_ACC
#include "variant.h"
#endif

/* ------------------------------------------------------------------------- dispatch */
/* The best instruction set this CPU runs; FASTGATE_ISA=base|avx2|avx512 caps it (tests). */
static int fg_detect_isa(void)
{
    int isa = FG_ISA_BASE;
#if FG_X86
    const char *cap = getenv("FASTGATE_ISA");
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        isa = FG_ISA_AVX2;
    if (isa == FG_ISA_AVX2 && __builtin_cpu_supports("avx512f")
            && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        isa = FG_ISA_AVX512;
    if (cap != NULL && strcmp(cap, "base") == 0)
        isa = FG_ISA_BASE;
    else if (cap != NULL && strcmp(cap, "avx2") == 0 && isa > FG_ISA_AVX2)
        isa = FG_ISA_AVX2;
#endif
    return isa;
}

static int fg_isa_level = -1;

static int fg_isa(void)
{
    if (fg_isa_level < 0)
        fg_isa_level = fg_detect_isa();
    return fg_isa_level;
}

/* Hidden units per packed block (the vector width in elements of the chosen ISA). */
static ptrdiff_t fg_block_width(int is_double)
{
    const ptrdiff_t bytes = fg_isa() == FG_ISA_AVX512 ? FG_AVX512_VBYTES
                            : (fg_isa() == FG_ISA_AVX2 ? FG_AVX2_VBYTES : FG_BASE_VBYTES);
    return bytes / (is_double ? 8 : 4);
}

/* fg_run_direction_f / _d: run_direction of the dtype, for the chosen ISA. */
#if FG_X86
#define FG_DEFINE_DISPATCH(T)                                                              \
static void fg_run_direction_##T(const fg_direction *d, ptrdiff_t row_begin,               \
                                 ptrdiff_t row_end)                                        \
{                                                                                          \
    if (fg_isa() == FG_ISA_AVX512)                                                         \
        run_direction_##T##_avx512(d, row_begin, row_end);                                 \
    else if (fg_isa() == FG_ISA_AVX2)                                                      \
        run_direction_##T##_avx2(d, row_begin, row_end);                                   \
    else                                                                                   \
        run_direction_##T##_base(d, row_begin, row_end);                                   \
}
#else
#define FG_DEFINE_DISPATCH(T)                                                              \
static void fg_run_direction_##T(const fg_direction *d, ptrdiff_t row_begin,               \
                                 ptrdiff_t row_end)                                        \
{                                                                                          \
    run_direction_##T##_base(d, row_begin, row_end);                                       \
}
#endif
FG_DEFINE_DISPATCH(f)
FG_DEFINE_DISPATCH(d)
#undef FG_DEFINE_DISPATCH

/* One direction on `threads` threads that split its hidden blocks, for a batch too small to
 * split: a batch-1 step streams all of U from L2, two cores stream half each. Each step reads
 * all of h, so the threads meet at a barrier after every step (see run_direction). The
 * caller does this only when threads were asked for explicitly: on a busy machine, every
 * barrier waits for a thread the OS is not running. */
#define FG_DEFINE_SPLIT(SUFFIX, IS_DOUBLE)                                                  \
static void fg_run_direction_split_##SUFFIX(const fg_direction *d, int threads)            \
{                                                                                          \
    const ptrdiff_t blocks = (d->hidden + fg_block_width(IS_DOUBLE) - 1)                   \
                             / fg_block_width(IS_DOUBLE);                                  \
    if (threads > blocks)                                                                  \
        threads = (int)blocks;                                                             \
    _Pragma("omp parallel num_threads(threads)")                                           \
    {                                                                                      \
        fg_direction part = *d;                                                            \
        int thread = 0, count = 1;                                                         \
        FG_THREAD_ID(thread, count);                                                       \
        part.block_begin = blocks * thread / count;                                        \
        part.block_end = blocks * (thread + 1) / count;                                    \
        part.synchronize = count > 1;                                                      \
        fg_run_direction_##SUFFIX(&part, 0, d->batch);                                     \
    }                                                                                      \
}
FG_DEFINE_SPLIT(f, 0)
FG_DEFINE_SPLIT(d, 1)
#undef FG_DEFINE_SPLIT

/* Rows per tile of the chosen ISA for G gates: threads split the batch in multiples of it. */
static ptrdiff_t fg_tile_rows(int gates)
{
    const int acc = fg_isa() == FG_ISA_AVX512 ? FG_AVX512_ACC
                    : (fg_isa() == FG_ISA_AVX2 ? FG_AVX2_ACC : FG_BASE_ACC);
    return acc / gates < FG_MAX_TILE_ROWS ? acc / gates : FG_MAX_TILE_ROWS;
}

#endif /* FASTGATE_FUSED_H */
