/* One direction of a recurrent layer, for one instruction set and one dtype: a template.
 *
 * fused.h instantiates this file once per (ISA, dtype) (through variant.h) after defining
 *   FG_T        float or double
 *   FG_NAME(x)  the name of x in this instantiation (e.g. x##_f_avx512)
 *   FG_VBYTES   the vector width in bytes (64 AVX-512, 32 AVX2, 16 SSE2 / NEON)
 *   FG_ACC      how many vector accumulators a tile keeps in registers (constants.h)
 *   FG_TARGET   the function attribute selecting the ISA (empty for the baseline)
 *   FG_ACTIVATE fg_activate_f or fg_activate_d (vecmath.h)
 *
 * A call is a sequence of passes, each a small function below (the passes a plan names,
 * fastgate.plans):
 *   input_pass       x W of every step first (input mode FG_INPUT_PACKED), unless x_t W is
 *                    computed inside the step (FG_INPUT_IN_STEP) or by BLAS (FG_INPUT_BLAS,
 *                    by the caller);
 *   then per step:
 *   gates_pass       the recurrent product (h U, and x_t W in step) tile by tile, each tile
 *                    handed straight to its cells' epilogue (one per cell family, below);
 *   candidate_pass   a GRU with the reset gate before U_n: n from (r * h) U_n;
 *   projection_pass  a projected LSTM: h' = (o * act(c')) W_hr;
 *   trace_pass       with a trace: h' of each row into it (the cells wrote the gates);
 *   mask_pass        masked rows keep their state; every row's output;
 *   and final_state_pass once at the end.
 *
 * The recurrent product is a small register-blocked kernel over U packed once, when the
 * layer is built (recurrent.prepare): hidden units in blocks of W = FG_VBYTES / sizeof(FG_T),
 * and for each block, row k holds the W columns of every gate, [k][gate][w]. The input
 * kernel W is packed the same way, and all W blocks come first, then all U blocks, 64-byte
 * aligned: at batch 1 a step streams U from L2, and one contiguous run of aligned rows
 * streams ~20% faster (H = 128, AVX-512) than U blocks with W blocks between them, whose
 * gaps restart the L1 prefetcher. A tile of MR batch rows x (G gates x W units) is
 * accumulated in registers over k and handed to the cells: the gate pre-activations of a
 * step never go to memory.
 */

typedef FG_T FG_NAME(vec) __attribute__((vector_size(FG_VBYTES), aligned(sizeof(FG_T))));
/* The same vector as a view of any FG_T memory (may_alias): a load or store through it is
 * one vector move. A memcpy of a whole vector is not, except for AVX-512
 * (prefer-vector-width=512): GCC expands it in 16-byte pieces, and a 32-byte load of what
 * two 16-byte stores just wrote misses store forwarding (the AVX2 epilogues ran 2x slower:
 * each tile and operand went through the stack in halves). */
typedef FG_T FG_NAME(uvec) __attribute__((vector_size(FG_VBYTES), aligned(sizeof(FG_T)),
                                          may_alias));

FG_ALWAYS_INLINE FG_TARGET FG_NAME(vec) FG_NAME(vload)(const FG_T *p)
{
    return *(const FG_NAME(uvec) *)p;
}

FG_ALWAYS_INLINE FG_TARGET void FG_NAME(vstore)(FG_T *p, FG_NAME(vec) v)
{
    *(FG_NAME(uvec) *)p = v;
}

#define FG_W ((ptrdiff_t)(FG_VBYTES / sizeof(FG_T)))
/* The packed [W; U] of a direction that one_row_blocks reads in pairs of blocks (AVX2):
 * three quarters of a 32 KB L1 data cache. */
#define FG_PAIR_MAX_BYTES 24576
/* Tile height for G gates: as many rows as the accumulator registers allow. */
#define FG_MR(G) (FG_ACC / (G) < FG_MAX_TILE_ROWS ? FG_ACC / (G) : FG_MAX_TILE_ROWS)

/* acc[r A + g'] += sum_k a[r lda + k] * panel[(k G + g) W + :], r < MR, g < G, k < K,
 * with A accumulators per row and g' = g, except that with `last_apart` the last gate goes to
 * accumulator G (a GRU keeps h U_n apart from x W_n). G, A, MR and last_apart are constants
 * at every call site, so acc[] lives in registers. With few accumulators (batch 1), a
 * second set over odd k hides the FMA latency. */
FG_ALWAYS_INLINE void FG_NAME(accumulate)(const int G, const int A, const int MR,
                                          const int last_apart, const FG_T *restrict a,
                                          ptrdiff_t lda, const FG_T *restrict panel,
                                          ptrdiff_t K, FG_NAME(vec) *acc, FG_NAME(vec) *acc2)
{
    typedef FG_NAME(vec) V;
    ptrdiff_t k = 0;
    int r, g;
#define FG_ACC_INDEX(r, g) ((r) * A + (last_apart && (g) == G - 1 ? G : (g)))
    if (A * MR < 8) {
        for (; k + 1 < K; k += 2) {
            const V *p0 = (const V *)(panel + k * G * FG_W);
            const V *p1 = p0 + G;
#pragma GCC unroll 12
            for (r = 0; r < MR; r++) {
                const FG_T a0 = a[r * lda + k], a1 = a[r * lda + k + 1];
#pragma GCC unroll 4
                for (g = 0; g < G; g++) {
                    acc[FG_ACC_INDEX(r, g)] += a0 * p0[g];
                    acc2[FG_ACC_INDEX(r, g)] += a1 * p1[g];
                }
            }
        }
    }
    for (; k < K; k++) {
        const V *p = (const V *)(panel + k * G * FG_W);
#pragma GCC unroll 12
        for (r = 0; r < MR; r++) {
            const FG_T ak = a[r * lda + k];
#pragma GCC unroll 4
            for (g = 0; g < G; g++)
                acc[FG_ACC_INDEX(r, g)] += ak * p[g];
        }
    }
#undef FG_ACC_INDEX
}

/* The product of MR rows of [x_t | h] (a1: K1 columns, a2: K2 columns) with one block of the
 * packed W (panel1, K1 rows) and U (panel2, K2 rows): tile[(r A + g) W + w], A = G (+ 1 with
 * `last_apart`: then the last gate's x and h parts are kept apart, at g = G - 1 and g = G). */
FG_ALWAYS_INLINE void FG_NAME(tile_product)(const int G, const int MR, const int last_apart,
                                            const FG_T *restrict a1, ptrdiff_t lda1,
                                            ptrdiff_t K1, const FG_T *restrict panel1,
                                            const FG_T *restrict a2, ptrdiff_t lda2,
                                            ptrdiff_t K2, const FG_T *restrict panel2,
                                            FG_T *restrict tile)
{
    typedef FG_NAME(vec) V;
    const int A = G + last_apart;
    V acc[FG_MAX_ACC], acc2[FG_MAX_ACC];
    const V zero = {0};
    int i;
#pragma GCC unroll 24   /* FG_MAX_ACC (a pragma takes a literal) */
    for (i = 0; i < A * MR; i++) {
        acc[i] = zero;
        acc2[i] = zero;
    }
    FG_NAME(accumulate)(G, A, MR, 0, a1, lda1, panel1, K1, acc, acc2);
    FG_NAME(accumulate)(G, A, MR, last_apart, a2, lda2, panel2, K2, acc, acc2);
#pragma GCC unroll 24   /* FG_MAX_ACC (a pragma takes a literal) */
    for (i = 0; i < A * MR; i++) {
        if (A * MR < 8)
            acc[i] += acc2[i];
        *(FG_NAME(uvec) *)(tile + i * FG_W) = acc[i];   /* (vstore, without the target) */
    }
}

/* The tiles of one batch row for two adjacent whole blocks (the block of panel1 / panel2
 * and the next, panel1_size / panel2_size further): one broadcast of each x_t and h element
 * feeds both blocks' 2 A accumulators (an LSTM's 8: independent sums enough to hide the FMA
 * latency without a second set). tiles: the first block's A vectors, then the second's. */
FG_ALWAYS_INLINE void FG_NAME(pair_product)(const int G, const int last_apart,
                                            const FG_T *restrict a1, ptrdiff_t K1,
                                            const FG_T *restrict panel1,
                                            ptrdiff_t panel1_size, const FG_T *restrict a2,
                                            ptrdiff_t K2, const FG_T *restrict panel2,
                                            ptrdiff_t panel2_size, FG_T *restrict tiles)
{
    typedef FG_NAME(vec) V;
    const int A = G + last_apart;
    V acc[8];
    const V zero = {0};
    ptrdiff_t k;
    int g;
#pragma GCC unroll 8
    for (g = 0; g < 2 * A; g++)
        acc[g] = zero;
#pragma GCC unroll 2
    for (k = 0; k < K1; k++) {
        const V *p = (const V *)(panel1 + k * G * FG_W);
        const V *q = (const V *)(panel1 + panel1_size + k * G * FG_W);
        const FG_T ak = a1[k];
#pragma GCC unroll 4
        for (g = 0; g < G; g++) {
            acc[g] += ak * p[g];
            acc[A + g] += ak * q[g];
        }
    }
#pragma GCC unroll 2
    for (k = 0; k < K2; k++) {
        const V *p = (const V *)(panel2 + k * G * FG_W);
        const V *q = (const V *)(panel2 + panel2_size + k * G * FG_W);
        const FG_T ak = a2[k];
#pragma GCC unroll 4
        for (g = 0; g < G; g++) {
            const int slot = last_apart && g == G - 1 ? G : g;   /* see accumulate */
            acc[slot] += ak * p[g];
            acc[A + slot] += ak * q[g];
        }
    }
#pragma GCC unroll 8
    for (g = 0; g < 2 * A; g++)
        *(FG_NAME(uvec) *)(tiles + g * FG_W) = acc[g];   /* (vstore, without the target) */
}

#define FG_TILE_CASE(G, S, M)                                                              \
    case M: {                                                                              \
        if ((M) <= FG_MR(G + S))                                                           \
            FG_NAME(tile_product)(G, (M) <= FG_MR(G + S) ? (M) : 1, S, a1, lda1, K1,       \
                                  panel1, a2, lda2, K2, panel2, tile);                     \
        break;                                                                             \
    }

/* tile_product for G gates (S: last one kept apart) and a runtime number of rows
 * mr <= FG_MR(G + S). */
#define FG_DEFINE_TILE(G, S, NAME)                                                         \
static FG_TARGET void FG_NAME(NAME)(ptrdiff_t mr, const FG_T *restrict a1, ptrdiff_t lda1, \
                                    ptrdiff_t K1, const FG_T *restrict panel1,             \
                                    const FG_T *restrict a2, ptrdiff_t lda2, ptrdiff_t K2, \
                                    const FG_T *restrict panel2, FG_T *restrict tile)      \
{                                                                                          \
    switch (mr) {                                                                          \
    FG_TILE_CASE(G, S, 1) FG_TILE_CASE(G, S, 2) FG_TILE_CASE(G, S, 3)                      \
    FG_TILE_CASE(G, S, 4) FG_TILE_CASE(G, S, 5) FG_TILE_CASE(G, S, 6)                      \
    FG_TILE_CASE(G, S, 7) FG_TILE_CASE(G, S, 8) FG_TILE_CASE(G, S, 9)                      \
    FG_TILE_CASE(G, S, 10) FG_TILE_CASE(G, S, 11) FG_TILE_CASE(G, S, 12)                   \
    default: break;                                                                        \
    }                                                                                      \
}
FG_DEFINE_TILE(1, 0, tile_g1)
FG_DEFINE_TILE(2, 0, tile_g2)
FG_DEFINE_TILE(3, 0, tile_g3)
FG_DEFINE_TILE(3, 1, tile_g3_apart)
FG_DEFINE_TILE(4, 0, tile_g4)
#undef FG_DEFINE_TILE
#undef FG_TILE_CASE

typedef void (*FG_NAME(tile_fn))(ptrdiff_t, const FG_T *restrict, ptrdiff_t, ptrdiff_t,
                                 const FG_T *restrict, const FG_T *restrict, ptrdiff_t,
                                 ptrdiff_t, const FG_T *restrict, FG_T *restrict);
/* ------------------------------------------------------- sigmoid and tanh on vectors */
/* Sigmoid and tanh on vectors held in registers: float by a rational function (below; an
 * absolute error < 4e-7 on sigmoid and tanh, fastgate's float contract is 1e-5), double
 * exactly as vecmath.h's fg_sigmoid and fg_tanh. */
typedef __typeof__((FG_NAME(vec)){0} < (FG_NAME(vec)){0}) FG_NAME(ivec);

FG_ALWAYS_INLINE FG_TARGET FG_NAME(vec) FG_NAME(vclamp)(FG_NAME(vec) x, FG_T lo, FG_T hi)
{
    typedef FG_NAME(ivec) VI;
    VI below, above;
#if FG_X86 && FG_VBYTES == 64
    if (sizeof(FG_T) == 4)   /* NaN stays NaN: max/min return their second operand */
        return (FG_NAME(vec))_mm512_min_ps(_mm512_set1_ps(hi),
                                           _mm512_max_ps(_mm512_set1_ps(lo), (__m512)x));
    return (FG_NAME(vec))_mm512_min_pd(_mm512_set1_pd(hi),
                                       _mm512_max_pd(_mm512_set1_pd(lo), (__m512d)x));
#elif FG_X86 && FG_VBYTES == 32
    if (sizeof(FG_T) == 4)
        return (FG_NAME(vec))_mm256_min_ps(_mm256_set1_ps(hi),
                                           _mm256_max_ps(_mm256_set1_ps(lo), (__m256)x));
    return (FG_NAME(vec))_mm256_min_pd(_mm256_set1_pd(hi),
                                       _mm256_max_pd(_mm256_set1_pd(lo), (__m256d)x));
#endif
    below = x < lo;
    above = x > hi;
    const FG_NAME(vec) zero = {0}, low = zero + lo, high = zero + hi;   /* not x - x: inf */
    VI bits = ((VI)x & ~below) | ((VI)low & below);
    return (FG_NAME(vec))((bits & ~above) | ((VI)high & above));
}

/* fg_exp of vecmath.h (double) on a vector */
FG_ALWAYS_INLINE FG_TARGET FG_NAME(vec) FG_NAME(vexpd)(FG_NAME(vec) x)
{
    typedef FG_NAME(vec) V;
    typedef FG_NAME(ivec) VI;
    const double magic = 6755399441055744.0;   /* 1.5 * 2^52 */
    V t, n, r, rr, px, qx;
    x = FG_NAME(vclamp)(x, -(FG_T)708.0, (FG_T)709.0);
    t = x * (FG_T)1.4426950408889634073599 + (FG_T)magic;
    n = t - (FG_T)magic;
    r = x - n * (FG_T)6.93145751953125E-1;
    r = r - n * (FG_T)1.42860682030941723212E-6;
    rr = r * r;
    px = rr * (FG_T)1.26177193074810590878E-4 + (FG_T)3.02994407707441961300E-2;
    px = px * rr + (FG_T)9.99999999999999999910E-1;
    px = px * r;
    qx = rr * (FG_T)3.00198505138664455042E-6 + (FG_T)2.52448340349684104192E-3;
    qx = qx * rr + (FG_T)2.27265548208155028766E-1;
    qx = qx * rr + (FG_T)2.00000000000000000009E0;
    r = (FG_T)1.0 + (FG_T)2.0 * px / (qx - px);
    return r * (V)(((VI)t - (VI)(t - t + (FG_T)magic) + 1023)
               << (sizeof(FG_T) == 8 ? 52 : 0));   /* (only called for double) */
}

/* tanh(x) ~ x P(x^2) / Q(x^2) for float, P and Q of degree 4, on x clamped to [-9, 9]
 * (beyond, float's tanh is +-1 within 3e-8). The coefficients are a minimax fit of ours
 * (iteratively reweighted least squares on [0, 9]): error < 2e-8 in exact arithmetic,
 * < 4e-7 evaluated in float. Its dependency chain (clamp, x^2, 4 FMAs, a multiply and a
 * division) is about half as long as that of 1 - 2 / (1 + exp(2x)), and a batch-1 step
 * waits for two activations in a row (LSTM: c' = f c + i g, then tanh(c')). */
#define FG_TANH_P0 9.999998808e-01f
#define FG_TANH_P1 1.337321401e-01f
#define FG_TANH_P2 3.486600239e-03f
#define FG_TANH_P3 2.047212911e-05f
#define FG_TANH_P4 1.318462939e-08f
#define FG_TANH_Q1 4.670650959e-01f
#define FG_TANH_Q2 2.584205009e-02f
#define FG_TANH_Q3 3.271415480e-04f
#define FG_TANH_Q4 7.702831226e-07f

/* sigmoid and tanh of float vectors by the rational function above, of double vectors as
 * vecmath.h's (exp and a division) */
FG_ALWAYS_INLINE FG_TARGET FG_NAME(vec) FG_NAME(vtanhf)(FG_NAME(vec) x)
{
    typedef FG_NAME(vec) V;
    V u, p, q;
    if (sizeof(FG_T) == 8)
        return 1 - 2 / (1 + FG_NAME(vexpd)(2 * x));
    x = FG_NAME(vclamp)(x, -9.0f, 9.0f);
    u = x * x;
    p = u * FG_TANH_P4 + FG_TANH_P3;
    q = u * FG_TANH_Q4 + FG_TANH_Q3;
    p = p * u + FG_TANH_P2;
    q = q * u + FG_TANH_Q2;
    p = p * u + FG_TANH_P1;
    q = q * u + FG_TANH_Q1;
    p = p * u + FG_TANH_P0;
    q = q * u + 1.0f;
    return x * p / q;
}

/* sigmoid(x) = 1/2 + tanh(x / 2) / 2 = 1/2 + x P'(x^2) / Q'(x^2), with P'_k = P_k / 4^(k+1)
 * and Q'_k = Q_k / 4^k (scalings by powers of two: exact), x clamped to [-18, 18] */
FG_ALWAYS_INLINE FG_TARGET FG_NAME(vec) FG_NAME(vsigmoidf)(FG_NAME(vec) x)
{
    typedef FG_NAME(vec) V;
    V u, p, q;
    if (sizeof(FG_T) == 8)
        return 1 / (1 + FG_NAME(vexpd)(-x));
    x = FG_NAME(vclamp)(x, -18.0f, 18.0f);
    u = x * x;
    p = u * (FG_TANH_P4 / 1024) + FG_TANH_P3 / 256;
    q = u * (FG_TANH_Q4 / 256) + FG_TANH_Q3 / 64;
    p = p * u + FG_TANH_P2 / 64;
    q = q * u + FG_TANH_Q2 / 16;
    p = p * u + FG_TANH_P1 / 16;
    q = q * u + FG_TANH_Q1 / 4;
    p = p * u + FG_TANH_P0 / 4;
    q = q * u + 1.0f;
    return 0.5f + x * p / q;
}

/* ------------------------------------------------------------------------ cell epilogues */
/* Every cell family's equations are written once, below, on vectors of W units, for R = 1
 * or 2 batch rows at once (the rows' long dependency chains, exp / division / exp, are
 * independent: side by side they keep both FMA pipes busy; the loops over rows and gates
 * are unrolled by pragmas, which GCC does not do by itself here: -4% instructions at S7).
 * `full` (a constant) says the block has W units; otherwise only the first wn lanes are
 * read and written. Each is instantiated with the default activations as constants (tanh,
 * sigmoid: vtanhf / vsigmoidf inline, the cells_*_fast epilogues) and once with run-time
 * codes (cells_*_any). */

/* lanes [0, wn) of p, the others 0 (full: all W lanes) */
FG_ALWAYS_INLINE FG_TARGET FG_NAME(vec) FG_NAME(vload_n)(const FG_T *p, ptrdiff_t wn,
                                                         const int full)
{
    FG_NAME(vec) v = {0};
    if (full)
        return FG_NAME(vload)(p);
    memcpy(&v, p, wn * sizeof(FG_T));
    return v;
}

FG_ALWAYS_INLINE FG_TARGET void FG_NAME(vstore_n)(FG_T *p, FG_NAME(vec) v, ptrdiff_t wn,
                                                  const int full)
{
    if (full)
        FG_NAME(vstore)(p, v);
    else
        memcpy(p, &v, wn * sizeof(FG_T));
}

/* act(x): sigmoid and tanh on the vector, the other activations by vecmath.h's loops
 * (alpha, beta: the parameters of a parametrised one) */
FG_ALWAYS_INLINE FG_TARGET FG_NAME(vec) FG_NAME(vactivate_with)(int code, double alpha,
                                                                double beta, FG_NAME(vec) x)
{
    FG_T lanes[FG_W];
    if (code == FG_SIGMOID)
        return FG_NAME(vsigmoidf)(x);
    if (code == FG_TANH)
        return FG_NAME(vtanhf)(x);
    FG_NAME(vstore)(lanes, x);
    FG_ACTIVATE(code, alpha, beta, lanes, FG_W);
    return FG_NAME(vload)(lanes);
}

/* The operands of up to two batch rows of a tile, for the hidden units [j0, j0 + wn). */
typedef struct {
    const FG_T *tile[2];         /* the row's sums: gate g at tile + g W */
    const FG_T *input[2];        /* the row's x W at j0, gates H apart; NULL: in the tile */
    const FG_T *h_previous[2];   /* h at j0 */
    FG_T *c[2];                  /* LSTM: c at j0, updated in place */
    FG_T *h[2];                  /* where the cells write h' (o * act(c') if projected) */
    FG_T *reset_h[2];            /* GRU reset-before, first half: r * h */
    FG_T *z[2];                  /* GRU reset-before: z */
    FG_T *trace[2];              /* tracing: the row's trace at j0 (gate g at g H), else NULL */
} FG_NAME(cell_rows);

/* The constants of one block of units: biases at j0, gates H apart. */
typedef struct {
    const FG_T *bias;            /* b_i + b_h (a reset-after GRU's n gate: b_in) */
    const FG_T *new_gate_bias;   /* b_hn of a reset-after GRU */
    const FG_T *peephole;        /* an LSTM's p_i at j0 (p_f, p_o H apart), or NULL */
    const fg_direction *d;       /* the activations' parameters, clip, input_forget */
    ptrdiff_t hidden, wn;
} FG_NAME(cell_block);

/* act / rec_act / cell_act(x) with the layer's parameters (a constant code where the
 * caller instantiates the default activations) */
#define FG_VACT(code, x) FG_NAME(vactivate_with)(code, block->d->act_alpha, block->d->act_beta, x)
#define FG_VREC(code, x) FG_NAME(vactivate_with)(code, block->d->rec_alpha, block->d->rec_beta, x)
#define FG_VCELL(x) FG_NAME(vactivate_with)(block->d->cell_act, block->d->cell_alpha,          \
                                            block->d->cell_beta, x)

/* x clamped to [-clip, clip] if the layer clips its pre-activations (ONNX clip; NaN stays
 * NaN); `plain` (a constant): it does not */
FG_ALWAYS_INLINE FG_TARGET FG_NAME(vec) FG_NAME(vclip)(const FG_NAME(cell_block) *block,
                                                       FG_NAME(vec) x, const int plain)
{
    if (plain || !block->d->clipping)
        return x;
    return FG_NAME(vclamp)(x, -(FG_T)block->d->clip, (FG_T)block->d->clip);
}

/* x W + b + h U of gate g of row r: the tile's sum, the bias, and the input if apart */
FG_ALWAYS_INLINE FG_TARGET FG_NAME(vec) FG_NAME(pre_activation)(
    const FG_NAME(cell_rows) *rows, const FG_NAME(cell_block) *block, int r, int g,
    const int full)
{
    const FG_T *input = rows->input[r];
    const FG_NAME(vec) sum = FG_NAME(vload)(rows->tile[r] + g * FG_W)
                             + FG_NAME(vload_n)(block->bias + g * block->hidden, block->wn,
                                                full);
    if (input != NULL)
        return sum + FG_NAME(vload_n)(input + g * block->hidden, block->wn, full);
    return sum;
}

/* LSTM:  i, f, g, o = rec_act(.), rec_act(.), act(.), rec_act(.)  of  x W + b + h U
 *        c' = f * c + i * g;   h' = o * cell_act(c')      (h' before the projection)
 * cell_act is act but for ONNX models, whose options the non-`plain` instantiation also
 * takes: peepholes p (i and f add p_i * c and p_f * c, o adds p_o * c'), pre-activations
 * clipped to [-clip, clip] (after the peepholes), and input_forget (f = 1 - i). */
FG_ALWAYS_INLINE FG_TARGET void FG_NAME(lstm_cells)(const int R, const int full,
                                                    const int tracing, int act, int rec_act,
                                                    const FG_NAME(cell_rows) *rows,
                                                    const FG_NAME(cell_block) *block)
{
    typedef FG_NAME(vec) V;
    const ptrdiff_t wn = block->wn, H = block->hidden;
    const int plain = full && act == FG_TANH && rec_act == FG_SIGMOID;   /* (constants) */
    const FG_T *peephole = plain ? NULL : block->peephole;
    V pre[2][4], cell[2], c[2], i, f, g, o;
    int gate, r;
#pragma GCC unroll 2
    for (r = 0; r < R; r++)
#pragma GCC unroll 4
        for (gate = 0; gate < 4; gate++)
            pre[r][gate] = FG_NAME(pre_activation)(rows, block, r, gate, full);
#pragma GCC unroll 2
    for (r = 0; r < R; r++)
        c[r] = FG_NAME(vload_n)(rows->c[r], wn, full);
    if (peephole != NULL)
        for (r = 0; r < R; r++) {
            pre[r][0] += FG_NAME(vload_n)(peephole, wn, full) * c[r];
            pre[r][1] += FG_NAME(vload_n)(peephole + H, wn, full) * c[r];
        }
#pragma GCC unroll 2
    for (r = 0; r < R; r++) {
        i = FG_VREC(rec_act, FG_NAME(vclip)(block, pre[r][0], plain));
        f = FG_VREC(rec_act, FG_NAME(vclip)(block, pre[r][1], plain));
        if (!plain && block->d->input_forget)
            f = 1 - i;
        /* (untraced, the expression as it was before tracing: its FMA contraction, hence
         * its rounding, stays the same) */
        if (!tracing) {
            cell[r] = f * c[r] + i * FG_VACT(act, FG_NAME(vclip)(block, pre[r][2], plain));
            continue;
        }
        cell[r] = f * c[r] + i * (g = FG_VACT(act, FG_NAME(vclip)(block, pre[r][2], plain)));
        {   /* tracing: the gates i, f, g at 0, H, 2 H; c' at 4 H */
            FG_NAME(vstore_n)(rows->trace[r], i, wn, full);
            FG_NAME(vstore_n)(rows->trace[r] + H, f, wn, full);
            FG_NAME(vstore_n)(rows->trace[r] + 2 * H, g, wn, full);
            FG_NAME(vstore_n)(rows->trace[r] + 4 * H, cell[r], wn, full);
        }
    }
#pragma GCC unroll 2
    for (r = 0; r < R; r++)
        FG_NAME(vstore_n)(rows->c[r], cell[r], wn, full);
    if (peephole != NULL)
        for (r = 0; r < R; r++)
            pre[r][3] += FG_NAME(vload_n)(peephole + 2 * H, wn, full) * cell[r];
#pragma GCC unroll 2
    for (r = 0; r < R; r++) {
        if (!tracing) {
            cell[r] = FG_VREC(rec_act, FG_NAME(vclip)(block, pre[r][3], plain))
                      * (plain ? FG_VACT(act, cell[r]) : FG_VCELL(cell[r]));
            continue;
        }
        cell[r] = (o = FG_VREC(rec_act, FG_NAME(vclip)(block, pre[r][3], plain)))
                  * (plain ? FG_VACT(act, cell[r]) : FG_VCELL(cell[r]));
        FG_NAME(vstore_n)(rows->trace[r] + 3 * H, o, wn, full);
    }
#pragma GCC unroll 2
    for (r = 0; r < R; r++)
        FG_NAME(vstore_n)(rows->h[r], cell[r], wn, full);
}

/* GRU, reset after:  r = rec_act(x W_r + b_r + h U_r),  z = rec_act(x W_z + b_z + h U_z)
 *                    n = act(x W_n + b_in + r * (h U_n + b_hn));   h' = z * h + (1 - z) * n
 * x W_n is the input's third gate, or (in step) the tile's; h U_n is the tile's next one. */
FG_ALWAYS_INLINE FG_TARGET void FG_NAME(gru_cells)(const int R, const int full,
                                                   const int tracing, int act, int rec_act,
                                                   const FG_NAME(cell_rows) *rows,
                                                   const FG_NAME(cell_block) *block)
{
    const int plain = full && act == FG_TANH && rec_act == FG_SIGMOID;   /* see lstm */
    typedef FG_NAME(vec) V;
    const ptrdiff_t wn = block->wn, H = block->hidden;
    V reset, update, candidate, input_n, recurrent_n;
    int r;
#pragma GCC unroll 2
    for (r = 0; r < R; r++) {
        const FG_T *input = rows->input[r];
        reset = FG_VREC(rec_act, FG_NAME(vclip)(
            block, FG_NAME(pre_activation)(rows, block, r, 0, full), plain));
        update = FG_VREC(rec_act, FG_NAME(vclip)(
            block, FG_NAME(pre_activation)(rows, block, r, 1, full), plain));
        input_n = input != NULL ? FG_NAME(vload_n)(input + 2 * H, wn, full)
                                : FG_NAME(vload)(rows->tile[r] + 2 * FG_W);
        recurrent_n = FG_NAME(vload)(rows->tile[r] + (input != NULL ? 2 : 3) * FG_W);
        candidate = FG_VACT(act, FG_NAME(vclip)(
            block, input_n + FG_NAME(vload_n)(block->bias + 2 * H, wn, full)
                   + reset * (recurrent_n + FG_NAME(vload_n)(block->new_gate_bias, wn, full)),
            plain));
        if (tracing) {   /* r, z, n at 0, H, 2 H */
            FG_NAME(vstore_n)(rows->trace[r], reset, wn, full);
            FG_NAME(vstore_n)(rows->trace[r] + H, update, wn, full);
            FG_NAME(vstore_n)(rows->trace[r] + 2 * H, candidate, wn, full);
        }
        candidate = update * FG_NAME(vload_n)(rows->h_previous[r], wn, full)
                    + (1 - update) * candidate;
        FG_NAME(vstore_n)(rows->h[r], candidate, wn, full);
    }
}

/* GRU, reset before, first half:  r, z as above;  keeps r * h and z for the candidate. */
FG_ALWAYS_INLINE FG_TARGET void FG_NAME(gru_reset_cells)(const int R, const int full,
                                                         const int tracing, int act,
                                                         int rec_act,
                                                         const FG_NAME(cell_rows) *rows,
                                                         const FG_NAME(cell_block) *block)
{
    const int plain = full && act == FG_TANH && rec_act == FG_SIGMOID;   /* see lstm */
    FG_NAME(vec) reset, update;
    int r;
#pragma GCC unroll 2
    for (r = 0; r < R; r++) {
        reset = FG_VREC(rec_act, FG_NAME(vclip)(
            block, FG_NAME(pre_activation)(rows, block, r, 0, full), plain));
        update = FG_VREC(rec_act, FG_NAME(vclip)(
            block, FG_NAME(pre_activation)(rows, block, r, 1, full), plain));
        if (tracing) {   /* r, z at 0, H */
            FG_NAME(vstore_n)(rows->trace[r], reset, block->wn, full);
            FG_NAME(vstore_n)(rows->trace[r] + block->hidden, update, block->wn, full);
        }
        reset *= FG_NAME(vload_n)(rows->h_previous[r], block->wn, full);
        FG_NAME(vstore_n)(rows->reset_h[r], reset, block->wn, full);
        FG_NAME(vstore_n)(rows->z[r], update, block->wn, full);
    }
}

/* GRU, reset before, second half:  n = act(x W_n + b_n + (r * h) U_n);  h' = z h + (1 - z) n.
 * SimpleRNN (rows->z[r] == NULL):  h' = act(x W + b + h U). */
FG_ALWAYS_INLINE FG_TARGET void FG_NAME(single_gate_cells)(const int R, const int full,
                                                           const int tracing, int act,
                                                           int rec_act,
                                                           const FG_NAME(cell_rows) *rows,
                                                           const FG_NAME(cell_block) *block)
{
    const int plain = full && act == FG_TANH && rec_act == FG_SIGMOID;   /* see lstm */
    FG_NAME(vec) state, z;
    int r;
#pragma GCC unroll 2
    for (r = 0; r < R; r++) {
        state = FG_VACT(act, FG_NAME(vclip)(
            block, FG_NAME(pre_activation)(rows, block, r, 0, full), plain));
        if (rows->z[r] != NULL) {
            if (tracing)   /* a GRU's n at 2 H (a SimpleRNN's h' is traced by trace_pass) */
                FG_NAME(vstore_n)(rows->trace[r] + 2 * block->hidden, state, block->wn, full);
            z = FG_NAME(vload_n)(rows->z[r], block->wn, full);
            state = z * FG_NAME(vload_n)(rows->h_previous[r], block->wn, full)
                    + (1 - z) * state;
        }
        FG_NAME(vstore_n)(rows->h[r], state, block->wn, full);
    }
}

/* -------------------------------------------------------------------------------- passes */
/* What every pass of one call reads: the direction and its derived constants. */
typedef struct FG_NAME(pass_context) FG_NAME(pass_context);
typedef struct FG_NAME(step_state) FG_NAME(step_state);
/* A tile's epilogue: (context, step, tile, row stride, first row, rows, block index, block) */
typedef void (*FG_NAME(cells_fn))(const FG_NAME(pass_context) *, const FG_NAME(step_state) *,
                                  const FG_T *, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t,
                                  const FG_NAME(cell_block) *);
struct FG_NAME(pass_context) {
    const fg_direction *d;
    ptrdiff_t H, P, D, G, GH, A;      /* G gates in the tile, A accumulators per row */
    ptrdiff_t blocks, block_begin, block_end, row_begin, row_end;
    ptrdiff_t panel_size, panel_u_size, panel_new_size, panel_u_new_size;
    ptrdiff_t K1;                     /* x columns the tile reads (0 unless in step) */
    ptrdiff_t x_stride;               /* between batch rows of x_t */
    ptrdiff_t mr;                     /* tile rows */
    int precomputed;                  /* x W of every step is in d->projected_input */
    int family;                       /* FG_FAMILY_* of the gates pass */
    FG_NAME(tile_fn) tile_gates;
    /* the epilogues of the gates pass (and of a GRU candidate pass), for whole blocks and
     * for the last, partial one (choose_cells) */
    FG_NAME(cells_fn) cells_full, cells_partial, candidate_full, candidate_partial;
    /* one_row_blocks computes two blocks per tile (pair_product) */
    int pair_blocks;
    /* the gates pass of a step with one row, or NULL: the generic one (one_row_blocks) */
    void (*one_row)(const FG_NAME(pass_context) *, const FG_NAME(step_state) *, ptrdiff_t);
};

/* Where one step reads and writes. */
struct FG_NAME(step_state) {
    ptrdiff_t s, t, t_previous;
    const unsigned char *valid;       /* (B,) valid rows of step t, or NULL */
    const FG_T *step_input;           /* x W of step t (precomputed), else NULL */
    const FG_T *step_x;               /* x_t */
    FG_T *h_previous, *h_next;
    ptrdiff_t hp_stride, hn_stride;   /* between their batch rows */
    ptrdiff_t row_end;                /* this step computes rows [row_begin, row_end) */
};

#define FG_IS_VALID(st, b) ((st)->valid == NULL || (st)->valid[b])

/* input_pass: projected[row, gate H + j] = (x W)[row, gate H + j] for every row of the
 * layer input (all steps at once), from the packed W blocks [block_begin, block_end)
 * (`gates` gates, block stride `panel_size`), into columns starting at `column`. */
static FG_TARGET void FG_NAME(project_inputs)(const FG_T *restrict x, ptrdiff_t rows,
                                              ptrdiff_t D, const FG_T *restrict packed,
                                              ptrdiff_t panel_size, int gates, ptrdiff_t H,
                                              ptrdiff_t block_begin, ptrdiff_t block_end,
                                              FG_T *restrict projected, ptrdiff_t GH,
                                              ptrdiff_t column)
{
    FG_NAME(tile_fn) tile_gates = gates == 4 ? FG_NAME(tile_g4) : gates == 3 ? FG_NAME(tile_g3)
        : gates == 2 ? FG_NAME(tile_g2) : FG_NAME(tile_g1);
    const ptrdiff_t mr = FG_MR(gates);
    FG_T tile[FG_MAX_ACC * FG_W];
    ptrdiff_t jb, row, r, n, gate;
    for (jb = block_begin; jb < block_end; jb++) {
        const ptrdiff_t j0 = jb * FG_W, wn = H - j0 < FG_W ? H - j0 : FG_W;
        for (row = 0; row < rows; row += n) {
            n = rows - row < mr ? rows - row : mr;
            tile_gates(n, x + row * D, D, D, packed + jb * panel_size, NULL, 0, 0, NULL, tile);
            /* (whole blocks by a vector store, not a libc call) */
            for (r = 0; r < n; r++)
                for (gate = 0; gate < gates; gate++)
                    if (wn == FG_W)
                        FG_NAME(vstore)(projected + (row + r) * GH + column + gate * H + j0,
                                        FG_NAME(vload)(tile + (r * gates + gate) * FG_W));
                    else
                        memcpy(projected + (row + r) * GH + column + gate * H + j0,
                               tile + (r * gates + gate) * FG_W, wn * sizeof(FG_T));
        }
    }
}

/* The input pass of FG_INPUT_PACKED (the caller runs this mode on one thread, or on
 * threads that split the blocks: each projects the columns it reads). */
static FG_TARGET void FG_NAME(input_pass)(const FG_NAME(pass_context) *x)
{
    const fg_direction *d = x->d;
    const ptrdiff_t rows = d->steps * d->batch;
    FG_T *projected = (FG_T *)d->projected_input;
    FG_NAME(project_inputs)((const FG_T *)d->input, rows, x->D, (const FG_T *)d->recurrent,
                            x->panel_size, (int)x->G, x->H, x->block_begin, x->block_end,
                            projected, x->GH, 0);
    if (d->recurrent_new != NULL)
        FG_NAME(project_inputs)((const FG_T *)d->input, rows, x->D,
                                (const FG_T *)d->recurrent_new, x->panel_new_size, 1, x->H,
                                x->block_begin, x->block_end, projected, x->GH, 2 * x->H);
}

/* The precomputed x W of row b at block jb is not in cache (it was computed for all steps
 * at once): fetch the row's next block (or the next step's first) while the other rows of
 * this block are computed (`gates` gates of x W, a constant). */
FG_ALWAYS_INLINE FG_TARGET void FG_NAME(prefetch_input)(const FG_NAME(pass_context) *x,
                                                        const FG_NAME(step_state) *st,
                                                        const int gates,
                                                        const FG_T *row_input, ptrdiff_t b,
                                                        ptrdiff_t jb)
{
    const fg_direction *d = x->d;
    int gate;
    if (jb + 1 < x->blocks) {
        for (gate = 0; gate < gates; gate++)
            FG_PREFETCH(row_input + gate * x->H + FG_W);
    } else if (st->s + 1 < d->steps) {
        const ptrdiff_t next_t = d->reverse ? st->t - 1 : st->t + 1;
        const FG_T *next_input = (const FG_T *)d->projected_input
                                 + (next_t * d->step_stride + b * d->batch_stride) * x->GH;
        for (gate = 0; gate < gates; gate++)
            FG_PREFETCH(next_input + gate * x->H);
    }
}

/* Row b's operands in slot `slot` of `rows`, for the cells of `family` at block jb. */
FG_ALWAYS_INLINE FG_TARGET void FG_NAME(row_operands)(const FG_NAME(pass_context) *x,
                                                      const FG_NAME(step_state) *st,
                                                      const int family, const int tracing,
                                                      const FG_T *tile,
                                                      ptrdiff_t b, ptrdiff_t jb, int slot,
                                                      FG_NAME(cell_rows) *rows)
{
    const fg_direction *d = x->d;
    const ptrdiff_t j0 = jb * FG_W, H = x->H;
    const FG_T *input = NULL;
    if (x->precomputed) {
        input = st->step_input + b * d->batch_stride * x->GH + j0;
        /* (the GRU and SimpleRNN epilogues; the LSTM and candidate ones were tuned without) */
        if (family == FG_FAMILY_GRU || family == FG_FAMILY_GRU_RESET)
            FG_NAME(prefetch_input)(x, st, 3, input, b, jb);
        else if (family == FG_FAMILY_RNN)
            FG_NAME(prefetch_input)(x, st, 1, input, b, jb);
        if (family == FG_FAMILY_CANDIDATE)
            input += 2 * H;
    }
    rows->tile[slot] = tile;
    rows->input[slot] = input;
    rows->h_previous[slot] = st->h_previous + b * st->hp_stride + j0;
    rows->h[slot] = st->h_next + b * st->hn_stride + j0;
    rows->z[slot] = NULL;
    rows->trace[slot] = tracing ? (FG_T *)d->trace + (st->t * d->step_stride
                                                      + b * d->batch_stride) * d->trace_width
                                  + j0
                                : NULL;
    if (family == FG_FAMILY_LSTM) {
        rows->c[slot] = (FG_T *)d->c + b * H + j0;
        if (d->projection != NULL)
            rows->h[slot] = (FG_T *)d->cell_out + b * H + j0;
    }
    if (family == FG_FAMILY_GRU_RESET)
        rows->reset_h[slot] = (FG_T *)d->cell_out + b * H + j0;
    if (family == FG_FAMILY_GRU_RESET || family == FG_FAMILY_CANDIDATE)
        rows->z[slot] = (FG_T *)d->gate_buffer + b * H + j0;
}

/* The cells of `family` for R rows (a switch on constants: one family's code remains). */
FG_ALWAYS_INLINE FG_TARGET void FG_NAME(cells)(const int family, const int R, const int full,
                                               const int tracing, int act, int rec_act,
                                               const FG_NAME(cell_rows) *rows,
                                               const FG_NAME(cell_block) *block)
{
    if (family == FG_FAMILY_LSTM)
        FG_NAME(lstm_cells)(R, full, tracing, act, rec_act, rows, block);
    else if (family == FG_FAMILY_GRU)
        FG_NAME(gru_cells)(R, full, tracing, act, rec_act, rows, block);
    else if (family == FG_FAMILY_GRU_RESET)
        FG_NAME(gru_reset_cells)(R, full, tracing, act, rec_act, rows, block);
    else
        FG_NAME(single_gate_cells)(R, full, tracing, act, rec_act, rows, block);
}

/* The cells of rows [b, b + rows) of a tile (rows `stride` apart), two rows at a time where
 * both are valid. Masked rows are skipped, except by a GRU reset-before's first half (its
 * r * h rows feed the candidate's tile product). */
FG_ALWAYS_INLINE FG_TARGET void FG_NAME(cells_tile_rows)(
    const FG_NAME(pass_context) *x, const FG_NAME(step_state) *st, const int family,
    const int full, const int tracing, int act, int rec_act, const FG_T *tile,
    ptrdiff_t stride, ptrdiff_t b, ptrdiff_t rows, ptrdiff_t jb,
    const FG_NAME(cell_block) *block)
{
    FG_NAME(cell_rows) operands;
    const int all_rows = family == FG_FAMILY_GRU_RESET;
    ptrdiff_t r = 0;
    while (r < rows) {
        const int valid = all_rows || FG_IS_VALID(st, b + r);
        const int pair = valid && r + 1 < rows && (all_rows || FG_IS_VALID(st, b + r + 1));
        if (valid) {
            FG_NAME(row_operands)(x, st, family, tracing, tile + r * stride, b + r, jb, 0,
                                  &operands);
            if (pair) {
                FG_NAME(row_operands)(x, st, family, tracing, tile + (r + 1) * stride,
                                      b + r + 1, jb, 1, &operands);
                FG_NAME(cells)(family, 2, full, tracing, act, rec_act, &operands, block);
            } else {
                FG_NAME(cells)(family, 1, full, tracing, act, rec_act, &operands, block);
            }
        }
        r += 1 + pair;
    }
}

/* cells_<family>_fast / _any: the epilogue of one tile, the cells of `family` for rows
 * [b, b + rows) at block jb; _fast for a whole block with the default activations (tanh,
 * sigmoid) as constants, _any for any block and activations; _trace_fast / _trace_any the
 * same, also writing the trace (d->trace). A call picks its pair once (pass_context_init). */
#define FG_DEFINE_EPILOGUE(FAMILY, NAME, FULL, TRACING, ACT, REC_ACT)                      \
static FG_TARGET void FG_NAME(NAME)(const FG_NAME(pass_context) *x,                        \
                                    const FG_NAME(step_state) *st, const FG_T *tile,        \
                                    ptrdiff_t stride, ptrdiff_t b, ptrdiff_t rows,         \
                                    ptrdiff_t jb, const FG_NAME(cell_block) *block)        \
{                                                                                          \
    FG_NAME(cells_tile_rows)(x, st, FAMILY, FULL, TRACING, ACT, REC_ACT, tile, stride, b,  \
                             rows, jb, block);                                             \
}
#define FG_DEFINE_CELLS(FAMILY, NAME)                                                      \
FG_DEFINE_EPILOGUE(FAMILY, NAME##_fast, 1, 0, FG_TANH, FG_SIGMOID)                         \
FG_DEFINE_EPILOGUE(FAMILY, NAME##_any, 0, 0, x->d->act, x->d->rec_act)                     \
FG_DEFINE_EPILOGUE(FAMILY, NAME##_trace_fast, 1, 1, FG_TANH, FG_SIGMOID)                   \
FG_DEFINE_EPILOGUE(FAMILY, NAME##_trace_any, 0, 1, x->d->act, x->d->rec_act)
FG_DEFINE_CELLS(FG_FAMILY_LSTM, cells_lstm)
FG_DEFINE_CELLS(FG_FAMILY_GRU, cells_gru)
FG_DEFINE_CELLS(FG_FAMILY_GRU_RESET, cells_gru_reset)
FG_DEFINE_CELLS(FG_FAMILY_CANDIDATE, cells_candidate)
FG_DEFINE_CELLS(FG_FAMILY_RNN, cells_rnn)
#undef FG_DEFINE_CELLS
#undef FG_DEFINE_EPILOGUE

/* The epilogues of `family` for whole blocks (`full`) and the last, partial one: _fast
 * where the activations the family reads are the defaults; _trace_* with a trace. */
static FG_TARGET void FG_NAME(choose_cells)(int family, const fg_direction *d,
                                            FG_NAME(cells_fn) *full,
                                            FG_NAME(cells_fn) *partial)
{
    const int act = d->act, rec_act = d->rec_act;
    const int reads_act = family != FG_FAMILY_GRU_RESET;
    const int reads_rec_act = family == FG_FAMILY_LSTM || family == FG_FAMILY_GRU
                              || family == FG_FAMILY_GRU_RESET;
    /* ONNX's options (clip; an LSTM's peepholes, input_forget, cell activation) take _any */
    const int plain = !d->clipping
                      && (family != FG_FAMILY_LSTM
                          || (d->peephole == NULL && !d->input_forget && d->cell_act == act
                              && d->cell_alpha == d->act_alpha && d->cell_beta == d->act_beta));
    const int fast = plain && (!reads_act || act == FG_TANH)
                     && (!reads_rec_act || rec_act == FG_SIGMOID);
    const int tracing = d->trace != NULL;
#define FG_CHOOSE(FAMILY, NAME)                                                            \
    case FAMILY:                                                                           \
        *partial = tracing ? FG_NAME(NAME##_trace_any) : FG_NAME(NAME##_any);              \
        *full = tracing ? (fast ? FG_NAME(NAME##_trace_fast) : FG_NAME(NAME##_trace_any))  \
                        : (fast ? FG_NAME(NAME##_fast) : FG_NAME(NAME##_any));             \
        break;
    switch (family) {
    FG_CHOOSE(FG_FAMILY_LSTM, cells_lstm)
    FG_CHOOSE(FG_FAMILY_GRU, cells_gru)
    FG_CHOOSE(FG_FAMILY_GRU_RESET, cells_gru_reset)
    FG_CHOOSE(FG_FAMILY_CANDIDATE, cells_candidate)
    default:
    FG_CHOOSE(FG_FAMILY_RNN, cells_rnn)
    }
#undef FG_CHOOSE
}

/* The call's constants, from its direction and rows. */
static FG_TARGET void FG_NAME(pass_context_init)(FG_NAME(pass_context) *x,
                                                 const fg_direction *d,
                                                 ptrdiff_t row_begin, ptrdiff_t row_end)
{
    const int gru_reset_before = d->cell == FG_CELL_GRU && !d->reset_after;
    const int last_apart = d->cell == FG_CELL_GRU && d->reset_after
                           && d->input_mode == FG_INPUT_IN_STEP;
    x->d = d;
    x->H = d->hidden;
    x->P = d->width;
    x->D = d->input_width;
    x->G = gru_reset_before ? 2 : FG_GATES(d->cell);   /* reset-before: n in its own pass */
    x->GH = FG_GATES(d->cell) * d->hidden;
    /* a GRU reset-after with x W in the tile keeps x W_n and h U_n apart */
    x->A = x->G + last_apart;
    x->blocks = (x->H + FG_W - 1) / FG_W;
    x->block_begin = d->block_end > 0 ? d->block_begin : 0;
    x->block_end = d->block_end > 0 ? d->block_end : x->blocks;
    x->row_begin = row_begin;
    x->row_end = row_end;
    x->panel_size = x->D * x->G * FG_W;   /* packed W blocks, then U blocks (file top) */
    x->panel_u_size = x->P * x->G * FG_W;
    x->panel_new_size = x->D * FG_W;      /* W_n, U_n of a GRU reset-before */
    x->panel_u_new_size = x->H * FG_W;
    x->precomputed = d->input_mode != FG_INPUT_IN_STEP;
    x->K1 = x->precomputed ? 0 : x->D;
    x->x_stride = d->batch_stride * x->D;
    x->mr = FG_MR(x->A);
    x->family = d->cell == FG_CELL_LSTM ? FG_FAMILY_LSTM
                : d->cell == FG_CELL_RNN ? FG_FAMILY_RNN
                : gru_reset_before ? FG_FAMILY_GRU_RESET : FG_FAMILY_GRU;
    x->tile_gates = x->A == 4 && x->G == 4 ? FG_NAME(tile_g4)
                    : x->A == 4 ? FG_NAME(tile_g3_apart)
                    : x->G == 3 ? FG_NAME(tile_g3)
                    : x->G == 2 ? FG_NAME(tile_g2) : FG_NAME(tile_g1);
    FG_NAME(choose_cells)(x->family, d, &x->cells_full, &x->cells_partial);
    FG_NAME(choose_cells)(FG_FAMILY_CANDIDATE, d, &x->candidate_full, &x->candidate_partial);
    x->one_row = NULL;   /* (set by run_direction: choose_one_row is defined below) */
    /* Pairs of blocks share the broadcasts of x_t and h: fewer instructions where the step
     * runs from L1 (measured, AVX2, S3: LSTM 2.46 -> 2.39 us, GRU 2.09 -> 1.94), but where
     * [W; U] streams from L2 the two streams cost more (S1/S2 3-6% slower; with AVX-512's
     * 16-unit blocks slower at S3 too): only on AVX2, for packed weights that fit in L1. */
    x->pair_blocks = FG_VBYTES == 32
                     && (x->panel_size + x->panel_u_size) * x->blocks * sizeof(FG_T)
                        <= FG_PAIR_MAX_BYTES;
}

/* The block of units jb, with the biases at `bias_offset` (a GRU candidate: 2 H). */
FG_ALWAYS_INLINE FG_TARGET FG_NAME(cell_block) FG_NAME(block_at)(
    const FG_NAME(pass_context) *x, ptrdiff_t jb, ptrdiff_t bias_offset)
{
    FG_NAME(cell_block) block;
    const ptrdiff_t j0 = jb * FG_W;
    block.bias = (const FG_T *)x->d->bias + bias_offset + j0;
    block.new_gate_bias = x->d->new_gate_bias != NULL
                          ? (const FG_T *)x->d->new_gate_bias + j0 : NULL;
    block.peephole = x->d->peephole != NULL ? (const FG_T *)x->d->peephole + j0 : NULL;
    block.d = x->d;
    block.hidden = x->H;
    block.wn = x->H - j0 < FG_W ? x->H - j0 : FG_W;
    return block;
}

/* gates_pass of one batch row (a batch-1 call) with a _fast epilogue (default activations,
 * no ONNX options): per block, the tile product and the cells inlined at constant sizes.
 * That drops the generic loop's two indirect calls, switch over tile heights and row loop
 * per block: at batch 1 they were about a third of a step's instructions on AVX2 (H = 32:
 * four blocks a step). A masked step of the row computes nothing (mask_pass keeps its
 * state); the last, partial block takes the generic epilogue. */
FG_ALWAYS_INLINE FG_TARGET void FG_NAME(one_row_blocks)(const FG_NAME(pass_context) *x,
                                                        const FG_NAME(step_state) *st,
                                                        const int family, const int G,
                                                        const int last_apart, ptrdiff_t K2)
{
    const FG_T *recurrent = (const FG_T *)x->d->recurrent;
    const ptrdiff_t b = x->row_begin;
    const FG_T *x_row = st->step_x + b * x->x_stride, *h_row = st->h_previous
                                                               + b * st->hp_stride;
    FG_T tile[2 * 4 * FG_W];   /* two blocks' G + last_apart <= 4 accumulators */
    FG_NAME(cell_rows) rows;
    ptrdiff_t jb;
    if (!FG_IS_VALID(st, b))
        return;
    for (jb = x->block_begin; jb < x->block_end; jb++) {
        const FG_NAME(cell_block) block = FG_NAME(block_at)(x, jb, 0);
        const FG_T *panel = recurrent + jb * x->panel_size;
        const FG_T *panel_u = recurrent + x->blocks * x->panel_size + jb * x->panel_u_size;
        if (x->pair_blocks && jb + 1 < x->block_end && (jb + 2) * FG_W <= x->H) {
            const FG_NAME(cell_block) next = FG_NAME(block_at)(x, jb + 1, 0);
            FG_NAME(pair_product)(G, last_apart, x_row, x->K1, panel, x->panel_size, h_row,
                                  K2, panel_u, x->panel_u_size, tile);
            FG_NAME(row_operands)(x, st, family, 0, tile, b, jb, 0, &rows);
            FG_NAME(cells)(family, 1, 1, 0, FG_TANH, FG_SIGMOID, &rows, &block);
            FG_NAME(row_operands)(x, st, family, 0, tile + (G + last_apart) * FG_W, b, jb + 1, 0,
                                  &rows);
            FG_NAME(cells)(family, 1, 1, 0, FG_TANH, FG_SIGMOID, &rows, &next);
            jb++;
            continue;
        }
        if (block.wn != FG_W) {
            x->tile_gates(1, x_row, x->x_stride, x->K1, panel, h_row, st->hp_stride, K2,
                          panel_u, tile);
            x->cells_partial(x, st, tile, x->A * FG_W, b, 1, jb, &block);
            continue;
        }
        FG_NAME(tile_product)(G, 1, last_apart, x_row, x->x_stride, x->K1, panel, h_row,
                              st->hp_stride, K2, panel_u, tile);
        FG_NAME(row_operands)(x, st, family, 0, tile, b, jb, 0, &rows);
        FG_NAME(cells)(family, 1, 1, 0, FG_TANH, FG_SIGMOID, &rows, &block);
    }
}

#define FG_DEFINE_ONE_ROW(NAME, FAMILY, G, LAST_APART)                                     \
static FG_TARGET void FG_NAME(NAME)(const FG_NAME(pass_context) *x,                        \
                                    const FG_NAME(step_state) *st, ptrdiff_t K2)           \
{                                                                                          \
    FG_NAME(one_row_blocks)(x, st, FAMILY, G, LAST_APART, K2);                             \
}
FG_DEFINE_ONE_ROW(one_row_lstm, FG_FAMILY_LSTM, 4, 0)
FG_DEFINE_ONE_ROW(one_row_gru, FG_FAMILY_GRU, 3, 0)
FG_DEFINE_ONE_ROW(one_row_gru_apart, FG_FAMILY_GRU, 3, 1)
FG_DEFINE_ONE_ROW(one_row_rnn, FG_FAMILY_RNN, 1, 0)
#undef FG_DEFINE_ONE_ROW

/* The one-row gates pass of this call's cells, or NULL (see one_row_blocks). */
typedef void (*FG_NAME(one_row_fn))(const FG_NAME(pass_context) *,
                                    const FG_NAME(step_state) *, ptrdiff_t);
static FG_TARGET FG_NAME(one_row_fn) FG_NAME(choose_one_row)(const FG_NAME(pass_context) *x)
{
    if (x->cells_full == FG_NAME(cells_lstm_fast))
        return FG_NAME(one_row_lstm);
    if (x->cells_full == FG_NAME(cells_gru_fast))
        return x->A == 4 ? FG_NAME(one_row_gru_apart) : FG_NAME(one_row_gru);
    if (x->cells_full == FG_NAME(cells_rnn_fast))
        return FG_NAME(one_row_rnn);
    return NULL;
}

/* gates_pass: the recurrent product (and x_t W in step) tile by tile over this call's
 * blocks and rows, each tile handed to its cells. */
static FG_TARGET void FG_NAME(gates_pass)(const FG_NAME(pass_context) *x,
                                          const FG_NAME(step_state) *st)
{
    const fg_direction *d = x->d;
    const FG_T *recurrent = (const FG_T *)d->recurrent;
    /* h U is exactly 0 on the first step from a zero state (U finite): skipped */
    const ptrdiff_t K2 = st->s == 0 && d->zero_state ? 0 : x->P;
    FG_T tile[FG_MAX_ACC * FG_W];
    ptrdiff_t jb, b, rows;
    if (x->one_row != NULL && st->row_end - x->row_begin == 1) {
        x->one_row(x, st, K2);
        return;
    }
    for (jb = x->block_begin; jb < x->block_end; jb++) {
        const FG_T *panel = recurrent + jb * x->panel_size;
        const FG_T *panel_u = recurrent + x->blocks * x->panel_size + jb * x->panel_u_size;
        const FG_NAME(cell_block) block = FG_NAME(block_at)(x, jb, 0);
        for (b = x->row_begin; b < st->row_end; b += rows) {
            rows = st->row_end - b < x->mr ? st->row_end - b : x->mr;
            x->tile_gates(rows, st->step_x + b * x->x_stride, x->x_stride, x->K1, panel,
                          st->h_previous + b * st->hp_stride, st->hp_stride, K2, panel_u,
                          tile);
            (block.wn == FG_W ? x->cells_full : x->cells_partial)(x, st, tile, x->A * FG_W, b,
                                                                  rows, jb, &block);
        }
    }
}

/* candidate_pass (GRU reset-before): n = act(x W_n + b_n + (r * h) U_n) reads every r * h
 * of the row, so it follows the gates pass. */
static FG_TARGET void FG_NAME(candidate_pass)(const FG_NAME(pass_context) *x,
                                              const FG_NAME(step_state) *st)
{
    const fg_direction *d = x->d;
    const FG_T *recurrent_new = (const FG_T *)d->recurrent_new;
    const ptrdiff_t mr = FG_MR(1);
    FG_T tile[FG_MAX_ACC * FG_W];
    ptrdiff_t jb, b, rows;
    for (jb = 0; jb < x->blocks; jb++) {
        const FG_T *panel = recurrent_new + jb * x->panel_new_size;
        const FG_T *panel_u = recurrent_new + x->blocks * x->panel_new_size
                              + jb * x->panel_u_new_size;
        const FG_NAME(cell_block) block = FG_NAME(block_at)(x, jb, 2 * x->H);
        for (b = x->row_begin; b < st->row_end; b += rows) {
            rows = st->row_end - b < mr ? st->row_end - b : mr;
            FG_NAME(tile_g1)(rows, st->step_x + b * x->x_stride, x->x_stride, x->K1, panel,
                             (const FG_T *)d->cell_out + b * x->H, x->H, x->H, panel_u, tile);
            (block.wn == FG_W ? x->candidate_full : x->candidate_partial)(x, st, tile, FG_W, b,
                                                                          rows, jb, &block);
        }
    }
}

/* projection_pass (projected LSTM): h' = (o * act(c')) @ W_hr */
static FG_TARGET void FG_NAME(projection_pass)(const FG_NAME(pass_context) *x,
                                               const FG_NAME(step_state) *st)
{
    const fg_direction *d = x->d;
    const ptrdiff_t out_blocks = (x->P + FG_W - 1) / FG_W, mr = FG_MR(1);
    const FG_T *cell_out = (const FG_T *)d->cell_out;
    FG_T tile[FG_MAX_ACC * FG_W];
    ptrdiff_t jb, b, r, rows;
    for (jb = 0; jb < out_blocks; jb++) {
        const FG_T *panel = (const FG_T *)d->projection + jb * x->H * FG_W;
        const ptrdiff_t j0 = jb * FG_W, wn = x->P - j0 < FG_W ? x->P - j0 : FG_W;
        for (b = x->row_begin; b < st->row_end; b += rows) {
            rows = st->row_end - b < mr ? st->row_end - b : mr;
            FG_NAME(tile_g1)(rows, NULL, 0, 0, NULL, cell_out + b * x->H, x->H, x->H, panel,
                             tile);
            for (r = 0; r < rows; r++)
                if (FG_IS_VALID(st, b + r))
                    memcpy(st->h_next + (b + r) * st->hn_stride + j0, tile + r * FG_W,
                           wn * sizeof(FG_T));
        }
    }
}

/* mask_pass (with a mask): masked rows keep their state; outputs are h', or 0 / the
 * previous output where masked (hold_masked_output), in batch row output_rows[b] if given. */
static FG_TARGET void FG_NAME(mask_pass)(const FG_NAME(pass_context) *x,
                                         const FG_NAME(step_state) *st)
{
    const fg_direction *d = x->d;
    const ptrdiff_t P = x->P;
    FG_T *out = (FG_T *)d->out;
    ptrdiff_t b, row;
    for (b = x->row_begin; b < x->row_end; b++) {
        row = d->output_rows != NULL ? d->output_rows[b] : b;
        FG_T *out_row = out + (st->t * d->step_stride + row * d->batch_stride) * d->out_width;
        if (FG_IS_VALID(st, b)) {
            memcpy(out_row, st->h_next + b * P, P * sizeof(FG_T));
            continue;
        }
        memcpy(st->h_next + b * P, st->h_previous + b * P, P * sizeof(FG_T));
        if (d->hold_masked_output && st->t_previous >= 0)
            memcpy(out_row, out + (st->t_previous * d->step_stride + row * d->batch_stride)
                                  * d->out_width, P * sizeof(FG_T));
        else
            memset(out_row, 0, P * sizeof(FG_T));
    }
}

/* trace_pass (with a trace): h' of each valid row into its trace row (the cells wrote the
 * gates and c'), and NaN over the whole row of a masked one, which the cells skipped (or,
 * GRU reset-before's first half, computed anyway). Never inlined: inlined, it changed the
 * register allocation of the untraced step loop (+0.2% instructions at S2, callgrind). */
FG_NEVER_INLINE FG_TARGET void FG_NAME(trace_pass)(const FG_NAME(pass_context) *x,
                                          const FG_NAME(step_state) *st)
{
    const fg_direction *d = x->d;
    /* (a SimpleRNN's only gate is h' itself: no gate columns) */
    const ptrdiff_t h_column = d->cell == FG_CELL_LSTM ? x->GH + x->H
                               : d->cell == FG_CELL_GRU ? x->GH : 0;
    ptrdiff_t b, k;
    for (b = x->row_begin; b < x->row_end; b++) {
        FG_T *row = (FG_T *)d->trace + (st->t * d->step_stride + b * d->batch_stride)
                                       * d->trace_width;
        if (FG_IS_VALID(st, b)) {
            memcpy(row + h_column, st->h_next + b * st->hn_stride, x->P * sizeof(FG_T));
            continue;
        }
        for (k = 0; k < d->trace_width; k++)
            row[k] = (FG_T)NAN;
    }
}

/* The final h: this call's columns (all unless threads split the blocks) of the last h. */
static FG_TARGET void FG_NAME(final_state_pass)(const FG_NAME(pass_context) *x,
                                                const FG_NAME(step_state) *st)
{
    const fg_direction *d = x->d;
    const ptrdiff_t first = d->synchronize ? x->block_begin * FG_W : 0;
    const ptrdiff_t last = d->synchronize && x->block_end * FG_W < x->P
                           ? x->block_end * FG_W : x->P;
    ptrdiff_t b;
    if (st->h_previous == (FG_T *)d->h)
        return;
    for (b = x->row_begin; b < x->row_end; b++)
        memcpy((FG_T *)d->h + b * x->P + first, st->h_previous + b * st->hp_stride + first,
               (last - first) * sizeof(FG_T));
}

/* Step s's buffers. Without a mask, every row's h' is its output: the cells write it
 * straight into the output rows, and the next step reads it there. With a mask, h' goes
 * to a (B, P) double buffer (h, h_spare) and mask_pass copies it out. */
FG_ALWAYS_INLINE FG_TARGET void FG_NAME(begin_step)(const FG_NAME(pass_context) *x,
                                                    FG_NAME(step_state) *st, ptrdiff_t s)
{
    const fg_direction *d = x->d;
    st->s = s;
    st->t = d->reverse ? d->steps - 1 - s : s;
    st->valid = d->mask != NULL ? d->mask + st->t * d->batch : NULL;
    st->step_input = x->precomputed ? (const FG_T *)d->projected_input
                                      + st->t * d->step_stride * x->GH : NULL;
    st->step_x = (const FG_T *)d->input + st->t * d->step_stride * x->D;
    st->row_end = x->row_end;   /* the active batch shrinks as sorted sequences end */
    if (d->active_rows != NULL && d->active_rows[st->t] < st->row_end)
        st->row_end = d->active_rows[st->t] > x->row_begin ? d->active_rows[st->t]
                                                            : x->row_begin;
    if (d->mask == NULL) {
        st->h_next = (FG_T *)d->out + st->t * d->step_stride * d->out_width;
        st->hn_stride = d->batch_stride * d->out_width;
    }
}

/* After step s: h' becomes h (a masked call swaps its double buffer). */
FG_ALWAYS_INLINE FG_TARGET void FG_NAME(end_step)(const fg_direction *d,
                                                  FG_NAME(step_state) *st)
{
    FG_T *swap = st->h_previous;
    st->h_previous = st->h_next;
    st->hp_stride = st->hn_stride;
    if (d->mask != NULL)
        st->h_next = swap;
    st->t_previous = st->t;
}

/* Runs batch rows [row_begin, row_end) of one direction over every step: the passes of
 * each step in order (after the input pass of all rows, run_direction). */
static FG_TARGET void FG_NAME(run_rows)(const fg_direction *d, ptrdiff_t row_begin,
                                        ptrdiff_t row_end)
{
    FG_NAME(pass_context) x;
    FG_NAME(step_state) st;
    ptrdiff_t s;
    FG_NAME(pass_context_init)(&x, d, row_begin, row_end);
    x.one_row = FG_NAME(choose_one_row)(&x);
    st.t_previous = -1;
    st.h_previous = (FG_T *)d->h;
    st.h_next = (FG_T *)d->h_spare;
    st.hp_stride = st.hn_stride = d->width;
    for (s = 0; s < d->steps; s++) {
        FG_NAME(begin_step)(&x, &st, s);
        FG_NAME(gates_pass)(&x, &st);
        if (x.family == FG_FAMILY_GRU_RESET)
            FG_NAME(candidate_pass)(&x, &st);
        if (d->projection != NULL)
            FG_NAME(projection_pass)(&x, &st);
        if (d->trace != NULL)
            FG_NAME(trace_pass)(&x, &st);
        if (d->mask != NULL)
            FG_NAME(mask_pass)(&x, &st);
        FG_NAME(end_step)(d, &st);
        if (d->synchronize) {
            FG_BARRIER();   /* every block of h' is written: the next step may read h */
        }
    }
    FG_NAME(final_state_pass)(&x, &st);
}

/* Rows per block of FG_ROWS_BLOCKED: as many whole tiles as fit fg_row_block_bytes of
 * what a step reads and writes per row (x_t, h, h', c, x W; cell_out / gate_buffer). */
static FG_TARGET ptrdiff_t FG_NAME(row_block_rows)(const fg_direction *d, ptrdiff_t mr)
{
    const ptrdiff_t gates_width = FG_GATES(d->cell) * d->hidden;
    const ptrdiff_t per_row = (d->input_mode == FG_INPUT_IN_STEP ? d->input_width
                                                                  : gates_width)
                              + 2 * d->width + 2 * d->hidden;
    const ptrdiff_t rows = fg_row_block_bytes / (per_row * (ptrdiff_t)sizeof(FG_T));
    return rows > mr ? rows / mr * mr : mr;
}

/* Runs batch rows [row_begin, row_end) of one direction: the packed input pass (of every
 * row: the caller runs it on one thread or a hidden split), then the steps of the rows all
 * at once, or with FG_ROWS_BLOCKED block by block (rows are independent). Threads given
 * disjoint row ranges share nothing and never synchronize. Threads may instead split the
 * hidden blocks (d->block_end > 0: this call computes blocks [d->block_begin, d->block_end)
 * of every row); each step then reads the h that the others wrote, so with d->synchronize
 * they meet at a barrier after every step. The caller splits blocks only without a mask, a
 * projection or a GRU reset-before, whose steps read whole rows of what the cells just
 * wrote, and without row blocks. */
static FG_TARGET void FG_NAME(run_direction)(const fg_direction *d, ptrdiff_t row_begin,
                                             ptrdiff_t row_end)
{
    FG_NAME(pass_context) x;
    ptrdiff_t block_rows = row_end - row_begin, b;
    if (d->input_mode == FG_INPUT_PACKED || d->row_blocking == FG_ROWS_BLOCKED) {
        FG_NAME(pass_context_init)(&x, d, row_begin, row_end);
        if (d->input_mode == FG_INPUT_PACKED)
            FG_NAME(input_pass)(&x);
        if (d->row_blocking == FG_ROWS_BLOCKED)
            block_rows = FG_NAME(row_block_rows)(d, x.mr);
    }
    for (b = row_begin; b < row_end; b += block_rows)
        FG_NAME(run_rows)(d, b, row_end - b < block_rows ? row_end : b + block_rows);
}

#undef FG_IS_VALID
#undef FG_VACT
#undef FG_VREC
#undef FG_VCELL
#undef FG_W
#undef FG_PAIR_MAX_BYTES
#undef FG_MR
