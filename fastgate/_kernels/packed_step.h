/* One direction of a recurrent layer, for one instruction set and one dtype.
 *
 * A template: fused.h includes this file once per (ISA, dtype) after defining
 *   FG_T        float or double
 *   FG_NAME(x)  the name of x in this instantiation (e.g. x##_f_avx512)
 *   FG_VBYTES   the vector width in bytes (64 AVX-512, 32 AVX2, 16 SSE2 / NEON)
 *   FG_ACC      how many vector accumulators a tile keeps in registers (24 with 32
 *               vector registers, 12 with 16)
 *   FG_TARGET   the function attribute selecting the ISA (empty for the baseline)
 *   FG_ACTIVATE fg_activate_f or fg_activate_d (vecmath.h)
 *
 * The recurrent product h @ U is computed by a small register-blocked kernel over U packed
 * once, when the layer is built (RecurrentLayer._prepare_kernel_weights): hidden units in
 * blocks of W = FG_VBYTES / sizeof(FG_T), and for each block, row k holds the W columns of
 * every gate, [k][gate][w]. The input kernel W is packed the same way, and all W blocks come
 * first, then all U blocks (recurrent.prepare), 64-byte aligned: at batch 1 a step streams
 * U from L2, and one contiguous run of aligned rows streams ~20% faster (H = 128, AVX-512)
 * than U blocks with W blocks between them, whose gaps restart the L1 prefetcher. A tile of
 * MR batch rows x (G gates x W units) is accumulated in
 * registers over k and handed straight to the cell's equations (the "epilogue"): the gate
 * pre-activations of a step never go to memory. The input projection x @ W of all steps
 * was computed before, by one BLAS GEMM.
 */

typedef FG_T FG_NAME(vec) __attribute__((vector_size(FG_VBYTES), aligned(sizeof(FG_T))));

#define FG_W ((ptrdiff_t)(FG_VBYTES / sizeof(FG_T)))
/* Tile height for G gates: as many rows as the accumulator registers allow (at most 12). */
#define FG_MR(G) (FG_ACC / (G) < 12 ? FG_ACC / (G) : 12)

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
    V acc[24], acc2[24];
    const V zero = {0};
    int i;
#pragma GCC unroll 24
    for (i = 0; i < A * MR; i++) {
        acc[i] = zero;
        acc2[i] = zero;
    }
    FG_NAME(accumulate)(G, A, MR, 0, a1, lda1, panel1, K1, acc, acc2);
    FG_NAME(accumulate)(G, A, MR, last_apart, a2, lda2, panel2, K2, acc, acc2);
#pragma GCC unroll 24
    for (i = 0; i < A * MR; i++) {
        if (A * MR < 8)
            acc[i] += acc2[i];
        memcpy(tile + i * FG_W, &acc[i], sizeof(V));
    }
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

/* ----------------------------------------------------------------------------- epilogues */
/* The layer's activations, with their parameters (ONNX's parametrised ones), in place. */
#define FG_ACT(d, x, n) FG_ACTIVATE((d)->act, (d)->act_alpha, (d)->act_beta, x, n)
#define FG_REC_ACT(d, x, n) FG_ACTIVATE((d)->rec_act, (d)->rec_alpha, (d)->rec_beta, x, n)
#define FG_CELL_ACT(d, x, n) FG_ACTIVATE((d)->cell_act, (d)->cell_alpha, (d)->cell_beta, x, n)

/* x[0..n) clamped to [-clip, clip] if the layer clips its pre-activations (ONNX clip; NaN
 * stays NaN) */
FG_ALWAYS_INLINE void FG_NAME(clip)(const fg_direction *d, FG_T *restrict x, ptrdiff_t n)
{
    ptrdiff_t w;
    if (d->clipping) {
        const FG_T bound = (FG_T)d->clip;
        for (w = 0; w < n; w++)
            x[w] = x[w] < -bound ? -bound : (x[w] > bound ? bound : x[w]);
    }
}

/* Whether an LSTM step is the plain one the whole-vector cells compute: no peepholes, no
 * clip, no coupled input and forget gates, c' activated by the candidate's activation. */
FG_ALWAYS_INLINE int FG_NAME(plain_lstm)(const fg_direction *d, const FG_T *peephole)
{
    return peephole == NULL && !d->clipping && !d->input_forget && d->cell_act == d->act
           && d->cell_alpha == d->act_alpha && d->cell_beta == d->act_beta;
}

/* Each takes one batch row's tile (per gate, W sums of x W + h U, or of h U only when the
 * input projection was computed beforehand: then `input` points at the row's x W, gates H
 * apart; else it is NULL), for the hidden units [j0, j0 + wn). */

/* pre[w] = tile[w] (+ input[w]) + bias[w] */
FG_ALWAYS_INLINE void FG_NAME(pre_activation)(FG_T *restrict pre, const FG_T *restrict tile,
                                              const FG_T *restrict input,
                                              const FG_T *restrict bias, ptrdiff_t wn)
{
    ptrdiff_t w;
    if (input != NULL)
        for (w = 0; w < wn; w++)
            pre[w] = tile[w] + input[w] + bias[w];
    else
        for (w = 0; w < wn; w++)
            pre[w] = tile[w] + bias[w];
}

/* ------------------------------------------------- whole-vector float sigmoid and tanh */
/* The cells of a whole block of units with the default activations, on vectors held in
 * registers: float by a rational function (below; an absolute error < 4e-7 on sigmoid and
 * tanh, fastgate's float contract is 1e-5), double exactly as vecmath.h's fg_sigmoid and
 * fg_tanh. */
typedef __typeof__((FG_NAME(vec)){0} < (FG_NAME(vec)){0}) FG_NAME(ivec);

FG_ALWAYS_INLINE FG_TARGET FG_NAME(vec) FG_NAME(vload)(const FG_T *p)
{
    FG_NAME(vec) v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* pre_activation of a whole block on a vector: tile + bias (+ input) */
FG_ALWAYS_INLINE FG_TARGET FG_NAME(vec) FG_NAME(vpre_activation)(const FG_T *tile,
                                                                 const FG_T *input,
                                                                 const FG_T *bias)
{
    if (input != NULL)
        return FG_NAME(vload)(tile) + FG_NAME(vload)(bias) + FG_NAME(vload)(input);
    return FG_NAME(vload)(tile) + FG_NAME(vload)(bias);
}

FG_ALWAYS_INLINE FG_TARGET FG_NAME(vec) FG_NAME(vclamp)(FG_NAME(vec) x, FG_T lo, FG_T hi)
{
    typedef FG_NAME(ivec) VI;
    VI below, above;
#if FG_X86 && FG_VBYTES == 64
    if (sizeof(FG_T) == 4)   /* NaN stays NaN: max/min return their second operand */
        return (FG_NAME(vec))_mm512_min_ps(_mm512_set1_ps(hi),
                                           _mm512_max_ps(_mm512_set1_ps(lo), (__m512)x));
#elif FG_X86 && FG_VBYTES == 32
    if (sizeof(FG_T) == 4)
        return (FG_NAME(vec))_mm256_min_ps(_mm256_set1_ps(hi),
                                           _mm256_max_ps(_mm256_set1_ps(lo), (__m256)x));
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

/* lstm_epilogue for wn = W float units, sigmoid gates and tanh */
FG_ALWAYS_INLINE FG_TARGET void FG_NAME(lstm_block_f)(const FG_T *restrict tile,
                                            const FG_T *restrict input,
                                            const FG_T *restrict bias, ptrdiff_t hidden,
                                            FG_T *restrict c, FG_T *restrict h)
{
    typedef FG_NAME(vec) V;
    V pre[4], cell;
    int gate;
    for (gate = 0; gate < 4; gate++)
        pre[gate] = FG_NAME(vpre_activation)(tile + gate * FG_W,
                                             input != NULL ? input + gate * hidden : NULL,
                                             bias + gate * hidden);
    cell = FG_NAME(vsigmoidf)(pre[1]) * FG_NAME(vload)(c)
           + FG_NAME(vsigmoidf)(pre[0]) * FG_NAME(vtanhf)(pre[2]);
    memcpy(c, &cell, sizeof cell);
    cell = FG_NAME(vsigmoidf)(pre[3]) * FG_NAME(vtanhf)(cell);
    memcpy(h, &cell, sizeof cell);
}

/* lstm_block_f for R rows at once (R = 1 or 2, a constant): rows of the tile `tile_stride`
 * apart, of the input projection (or NULL) `input_stride`, of c and h `c_stride` and
 * `h_stride` apart. The
 * rows' long dependency chains (exp, reciprocal, exp) are independent: computing them side
 * by side keeps both FMA pipes busy. */
FG_ALWAYS_INLINE FG_TARGET void FG_NAME(lstm_rows_f)(const int R, const FG_T *restrict tile,
                                                     ptrdiff_t tile_stride,
                                                     const FG_T *restrict input,
                                                     ptrdiff_t input_stride,
                                                     const FG_T *restrict bias,
                                                     ptrdiff_t hidden, FG_T *restrict c,
                                                     ptrdiff_t c_stride, FG_T *restrict h,
                                                     ptrdiff_t h_stride)
{
    typedef FG_NAME(vec) V;
    V pre[2][4], cell[2];
    int gate, r;
    for (r = 0; r < R; r++)
        for (gate = 0; gate < 4; gate++)
            pre[r][gate] = FG_NAME(vpre_activation)(
                tile + r * tile_stride + gate * FG_W,
                input != NULL ? input + r * input_stride + gate * hidden : NULL,
                bias + gate * hidden);
    for (r = 0; r < R; r++)
        cell[r] = FG_NAME(vsigmoidf)(pre[r][1]) * FG_NAME(vload)(c + r * c_stride)
                  + FG_NAME(vsigmoidf)(pre[r][0]) * FG_NAME(vtanhf)(pre[r][2]);
    for (r = 0; r < R; r++)
        memcpy(c + r * c_stride, &cell[r], sizeof(V));
    for (r = 0; r < R; r++)
        cell[r] = FG_NAME(vsigmoidf)(pre[r][3]) * FG_NAME(vtanhf)(cell[r]);
    for (r = 0; r < R; r++)
        memcpy(h + r * h_stride, &cell[r], sizeof(V));
}

/* The LSTM cells of `rows` rows of a tile (see lstm_rows_f). */
static FG_TARGET void FG_NAME(lstm_tile_f)(ptrdiff_t rows, const FG_T *restrict tile,
                                           ptrdiff_t tile_stride, const FG_T *restrict input,
                                           ptrdiff_t input_stride, const FG_T *restrict bias,
                                           ptrdiff_t hidden, FG_T *restrict c,
                                           ptrdiff_t c_stride, FG_T *restrict h,
                                           ptrdiff_t h_stride)
{
    ptrdiff_t r;
    for (r = 0; r + 1 < rows; r += 2)
        FG_NAME(lstm_rows_f)(2, tile + r * tile_stride, tile_stride,
                             input != NULL ? input + r * input_stride : NULL, input_stride,
                             bias, hidden, c + r * c_stride, c_stride, h + r * h_stride,
                             h_stride);
    if (r < rows)
        FG_NAME(lstm_rows_f)(1, tile + r * tile_stride, tile_stride,
                             input != NULL ? input + r * input_stride : NULL, input_stride,
                             bias, hidden, c + r * c_stride, c_stride, h + r * h_stride,
                             h_stride);
}

/* LSTM:  i, f, g, o = rec_act(.), rec_act(.), act(.), rec_act(.)  of  x W + b + h U
 *        c' = f * c + i * g;   h' = o * cell_act(c')      (h' before the projection)
 * (cell_act is act but for ONNX models.) With peepholes p (ONNX's P; `peephole` points at
 * this block's p_i, gates `hidden` apart), i and f also add p_i * c and p_f * c, and o adds
 * p_o * c'. With clip, the pre-activations are clamped first; with input_forget, f = 1 - i. */
static FG_TARGET void FG_NAME(lstm_epilogue)(const FG_T *restrict tile,
                                             const FG_T *restrict input,
                                             const FG_T *restrict bias, ptrdiff_t hidden,
                                             ptrdiff_t wn, const fg_direction *d,
                                             const FG_T *restrict peephole,
                                             FG_T *restrict c, FG_T *restrict h)
{
    FG_T gates[4 * FG_W], cell[FG_W];
    ptrdiff_t gate, w;
    if (sizeof(FG_T) == 4 && wn == FG_W && d->act == FG_TANH && d->rec_act == FG_SIGMOID
            && FG_NAME(plain_lstm)(d, peephole)) {
        FG_NAME(lstm_block_f)(tile, input, bias, hidden, c, h);
        return;
    }
    for (gate = 0; gate < 4; gate++)
        FG_NAME(pre_activation)(gates + gate * FG_W, tile + gate * FG_W,
                                input != NULL ? input + gate * hidden : NULL,
                                bias + gate * hidden, wn);
    if (peephole != NULL)
        for (w = 0; w < wn; w++) {
            gates[w] += peephole[w] * c[w];
            gates[FG_W + w] += peephole[hidden + w] * c[w];
        }
    for (gate = 0; gate < 3; gate++)
        FG_NAME(clip)(d, gates + gate * FG_W, wn);
    if (wn == FG_W) {
        FG_REC_ACT(d, gates, 2 * FG_W);
    } else {
        FG_REC_ACT(d, gates, wn);
        FG_REC_ACT(d, gates + FG_W, wn);
    }
    if (d->input_forget)
        for (w = 0; w < wn; w++)
            gates[FG_W + w] = 1 - gates[w];
    FG_ACT(d, gates + 2 * FG_W, wn);
    for (w = 0; w < wn; w++) {
        cell[w] = gates[FG_W + w] * c[w] + gates[w] * gates[2 * FG_W + w];
        c[w] = cell[w];
    }
    if (peephole != NULL)
        for (w = 0; w < wn; w++)
            gates[3 * FG_W + w] += peephole[2 * hidden + w] * cell[w];
    FG_NAME(clip)(d, gates + 3 * FG_W, wn);
    FG_REC_ACT(d, gates + 3 * FG_W, wn);
    FG_CELL_ACT(d, cell, wn);
    for (w = 0; w < wn; w++)
        h[w] = gates[3 * FG_W + w] * cell[w];
}

/* gru_epilogue for wn = W units, sigmoid gates and tanh */
FG_ALWAYS_INLINE FG_TARGET void FG_NAME(gru_block)(const FG_T *restrict tile,
                                                   const FG_T *restrict input,
                                                   const FG_T *restrict input_n,
                                                   const FG_T *restrict recurrent_n,
                                                   const FG_T *restrict bias,
                                                   const FG_T *restrict new_gate_bias,
                                                   ptrdiff_t hidden,
                                                   const FG_T *restrict h_previous,
                                                   FG_T *restrict h)
{
    typedef FG_NAME(vec) V;
    V reset, update, candidate;
    reset = FG_NAME(vsigmoidf)(FG_NAME(vpre_activation)(tile, input, bias));
    update = FG_NAME(vsigmoidf)(FG_NAME(vpre_activation)(
        tile + FG_W, input != NULL ? input + hidden : NULL, bias + hidden));
    candidate = FG_NAME(vtanhf)(FG_NAME(vload)(input_n) + FG_NAME(vload)(bias + 2 * hidden)
                                + reset * (FG_NAME(vload)(recurrent_n)
                                           + FG_NAME(vload)(new_gate_bias)));
    candidate = update * FG_NAME(vload)(h_previous) + (1 - update) * candidate;
    memcpy(h, &candidate, sizeof(V));
}

/* GRU, reset after:  r = rec_act(x W_r + b_r + h U_r),  z = rec_act(x W_z + b_z + h U_z)
 *                    n = act(x W_n + b_in + r * (h U_n + b_hn));   h' = z * h + (1 - z) * n
 * x W_n is at `input_n`, h U_n at `recurrent_n`. */
static FG_TARGET void FG_NAME(gru_epilogue)(const FG_T *restrict tile,
                                            const FG_T *restrict input,
                                            const FG_T *restrict input_n,
                                            const FG_T *restrict recurrent_n,
                                            const FG_T *restrict bias,
                                            const FG_T *restrict new_gate_bias,
                                            ptrdiff_t hidden, ptrdiff_t wn,
                                            const fg_direction *d,
                                            const FG_T *restrict h_previous, FG_T *restrict h)
{
    FG_T gates[3 * FG_W];
    ptrdiff_t gate, w;
    if (wn == FG_W && d->act == FG_TANH && d->rec_act == FG_SIGMOID && !d->clipping) {
        FG_NAME(gru_block)(tile, input, input_n, recurrent_n, bias, new_gate_bias, hidden,
                           h_previous, h);
        return;
    }
    for (gate = 0; gate < 2; gate++)
        FG_NAME(pre_activation)(gates + gate * FG_W, tile + gate * FG_W,
                                input != NULL ? input + gate * hidden : NULL,
                                bias + gate * hidden, wn);
    FG_NAME(clip)(d, gates, wn);
    FG_NAME(clip)(d, gates + FG_W, wn);
    if (wn == FG_W) {
        FG_REC_ACT(d, gates, 2 * FG_W);
    } else {
        FG_REC_ACT(d, gates, wn);
        FG_REC_ACT(d, gates + FG_W, wn);
    }
    for (w = 0; w < wn; w++)
        gates[2 * FG_W + w] = input_n[w] + bias[2 * hidden + w]
                              + gates[w] * (recurrent_n[w] + new_gate_bias[w]);
    FG_NAME(clip)(d, gates + 2 * FG_W, wn);
    FG_ACT(d, gates + 2 * FG_W, wn);
    for (w = 0; w < wn; w++) {
        const FG_T z = gates[FG_W + w];
        h[w] = z * h_previous[w] + (1 - z) * gates[2 * FG_W + w];
    }
}

/* GRU, reset before, first half:  r, z as above;  keeps r * h and z for the second half. */
static FG_TARGET void FG_NAME(gru_reset_epilogue)(const FG_T *restrict tile,
                                                  const FG_T *restrict input,
                                                  const FG_T *restrict bias, ptrdiff_t hidden,
                                                  ptrdiff_t wn, const fg_direction *d,
                                                  const FG_T *restrict h_previous,
                                                  FG_T *restrict reset_h, FG_T *restrict z)
{
    FG_T gates[2 * FG_W];
    ptrdiff_t gate, w;
    if (wn == FG_W && d->rec_act == FG_SIGMOID && !d->clipping) {   /* as gru_block */
        FG_NAME(vec) reset, update;
        reset = FG_NAME(vsigmoidf)(FG_NAME(vpre_activation)(tile, input, bias));
        update = FG_NAME(vsigmoidf)(FG_NAME(vpre_activation)(
            tile + FG_W, input != NULL ? input + hidden : NULL, bias + hidden));
        reset *= FG_NAME(vload)(h_previous);
        memcpy(reset_h, &reset, sizeof reset);
        memcpy(z, &update, sizeof update);
        return;
    }
    for (gate = 0; gate < 2; gate++)
        FG_NAME(pre_activation)(gates + gate * FG_W, tile + gate * FG_W,
                                input != NULL ? input + gate * hidden : NULL,
                                bias + gate * hidden, wn);
    FG_NAME(clip)(d, gates, wn);
    FG_NAME(clip)(d, gates + FG_W, wn);
    FG_REC_ACT(d, gates, wn);
    FG_REC_ACT(d, gates + FG_W, wn);
    for (w = 0; w < wn; w++) {
        reset_h[w] = gates[w] * h_previous[w];
        z[w] = gates[FG_W + w];
    }
}

/* GRU, reset before, second half:  n = act(x W_n + b_n + (r * h) U_n);  h' = z h + (1 - z) n.
 * SimpleRNN, with z = NULL:        h' = act(x W + b + h U). */
static FG_TARGET void FG_NAME(single_gate_epilogue)(const FG_T *restrict tile,
                                                    const FG_T *restrict input,
                                                    const FG_T *restrict bias, ptrdiff_t wn,
                                                    const fg_direction *d,
                                                    const FG_T *restrict z,
                                                    const FG_T *restrict h_previous,
                                                    FG_T *restrict h)
{
    FG_T gate[FG_W];
    ptrdiff_t w;
    if (wn == FG_W && d->act == FG_TANH && !d->clipping) {   /* on vectors, as gru_block */
        FG_NAME(vec) state = FG_NAME(vtanhf)(FG_NAME(vpre_activation)(tile, input, bias));
        if (z != NULL)
            state = FG_NAME(vload)(z) * FG_NAME(vload)(h_previous)
                    + (1 - FG_NAME(vload)(z)) * state;
        memcpy(h, &state, sizeof state);
        return;
    }
    FG_NAME(pre_activation)(gate, tile, input, bias, wn);
    FG_NAME(clip)(d, gate, wn);
    FG_ACT(d, gate, wn);
    if (z == NULL) {
        for (w = 0; w < wn; w++)
            h[w] = gate[w];
    } else {
        for (w = 0; w < wn; w++)
            h[w] = z[w] * h_previous[w] + (1 - z[w]) * gate[w];
    }
}

/* ------------------------------------------------------------------------------ the loop */
/* projected[row, gate H + j] = (x W)[row, gate H + j] for every row of the layer input (all
 * steps at once), from the packed W blocks [block_begin, block_end) (`gates` gates, block
 * stride `panel_size`), into columns starting at `column`. */
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
    FG_T tile[24 * FG_W];
    ptrdiff_t jb, row, r, n, gate;
    for (jb = block_begin; jb < block_end; jb++) {
        const ptrdiff_t j0 = jb * FG_W, wn = H - j0 < FG_W ? H - j0 : FG_W;
        for (row = 0; row < rows; row += n) {
            n = rows - row < mr ? rows - row : mr;
            tile_gates(n, x + row * D, D, D, packed + jb * panel_size, NULL, 0, 0, NULL, tile);
            /* (whole blocks by a copy of constant size: a vector store, not a libc call) */
            for (r = 0; r < n; r++)
                for (gate = 0; gate < gates; gate++)
                    if (wn == FG_W)
                        memcpy(projected + (row + r) * GH + column + gate * H + j0,
                               tile + (r * gates + gate) * FG_W, FG_W * sizeof(FG_T));
                    else
                        memcpy(projected + (row + r) * GH + column + gate * H + j0,
                               tile + (r * gates + gate) * FG_W, wn * sizeof(FG_T));
        }
    }
}

/* Runs batch rows [row_begin, row_end) of one direction over every step. Rows are
 * independent: threads given disjoint row ranges share nothing and never synchronize.
 * Threads may instead split the hidden blocks (d->block_end > 0: this call computes blocks
 * [d->block_begin, d->block_end) of every row); each step then reads the h that the others
 * wrote, so with d->synchronize they meet at a barrier after every step. The caller splits
 * blocks only without a mask, a projection or a GRU reset-before, whose steps read whole
 * rows of what the cells just wrote.
 *
 * Two ways to get x_t W: with d->projected_input, it was computed for every step by one
 * GEMM beforehand (best at batch 1, where a step is a matrix-vector product); without, the
 * tile product reads the layer input rows x_t next to h and the packed [W; U] (no
 * projection buffer, and no pass over it). */
static FG_TARGET void FG_NAME(run_direction)(const fg_direction *d, ptrdiff_t row_begin,
                                             ptrdiff_t row_end)
{
    const ptrdiff_t H = d->hidden, P = d->width, B = d->batch, D = d->input_width;
    const int G = d->cell == FG_CELL_LSTM ? 4 : (d->cell == FG_CELL_RNN ? 1
                 : (d->reset_after ? 3 : 2));
    const ptrdiff_t GH = (d->cell == FG_CELL_LSTM ? 4 : (d->cell == FG_CELL_GRU ? 3 : 1)) * H;
    const int precomputed = d->projected_input != NULL;
    /* a GRU reset-after with x W in the tile keeps x W_n and h U_n apart */
    const int last_apart = d->cell == FG_CELL_GRU && d->reset_after && !precomputed;
    const ptrdiff_t blocks = (H + FG_W - 1) / FG_W, out_blocks = (P + FG_W - 1) / FG_W;
    const ptrdiff_t block_begin = d->block_end > 0 ? d->block_begin : 0;
    const ptrdiff_t block_end = d->block_end > 0 ? d->block_end : blocks;
    /* packed W blocks, then packed U blocks (see the top of this file) */
    const ptrdiff_t panel_size = D * G * FG_W, panel_u_size = P * G * FG_W;
    const ptrdiff_t panel_new_size = D * FG_W, panel_u_new_size = H * FG_W;   /* W_n, U_n */
    const ptrdiff_t K1 = precomputed ? 0 : D;             /* x columns read by the tile */
    const ptrdiff_t x_stride = d->batch_stride * D;       /* between batch rows of x_t */
    const ptrdiff_t A = G + last_apart;
    const ptrdiff_t mr = FG_MR(A), mr_single = FG_MR(1);
    const FG_T *projected_input = (const FG_T *)d->projected_input;
    const FG_T *layer_input = (const FG_T *)d->input;
    const FG_T *bias = (const FG_T *)d->bias;
    const FG_T *new_gate_bias = (const FG_T *)d->new_gate_bias;
    const FG_T *recurrent = (const FG_T *)d->recurrent;
    const FG_T *recurrent_new = (const FG_T *)d->recurrent_new;
    const FG_T *projection = (const FG_T *)d->projection;
    const FG_T *peephole = (const FG_T *)d->peephole;
    FG_T *c = (FG_T *)d->c;
    FG_T *cell_out = (FG_T *)d->cell_out;   /* (B, H) */
    FG_T *z_buffer = (FG_T *)d->gate_buffer;  /* (B, H) */
    FG_T *out = (FG_T *)d->out;
    FG_T *h_previous = (FG_T *)d->h, *h_next = (FG_T *)d->h_spare, *swap;
    /* Without a mask, every row's h' is its output: the cells write it straight into the
     * output rows, and the next step reads it there (rows hn_stride apart). With a mask,
     * h' goes to a (B, P) double buffer and is copied out. */
    const int direct = d->mask == NULL;
    const ptrdiff_t out_row_stride = d->batch_stride * d->out_width;
    ptrdiff_t hp_stride = P, hn_stride = P;
    FG_NAME(tile_fn) tile_gates = G == 4 ? FG_NAME(tile_g4)
        : G == 3 ? (last_apart ? FG_NAME(tile_g3_apart) : FG_NAME(tile_g3))
        : G == 2 ? FG_NAME(tile_g2) : FG_NAME(tile_g1);
    FG_NAME(tile_fn) tile_single = FG_NAME(tile_g1);
    FG_T tile[24 * FG_W];
    ptrdiff_t s, t, t_previous = -1, b, r, rows, jb, j0, wn;
    /* the LSTM cells of whole tiles at once (default activations) */
    const int fast_lstm = d->cell == FG_CELL_LSTM && FG_NAME(plain_lstm)(d, peephole)
                          && d->act == FG_TANH && d->rec_act == FG_SIGMOID;

    if (precomputed && !d->input_projected) {
        /* x W for every step at once (the caller runs this mode on one thread, or on
         * threads that split the blocks: each projects the columns it reads) */
        FG_NAME(project_inputs)(layer_input, d->steps * B, D, recurrent, panel_size, G, H,
                                block_begin, block_end, (FG_T *)d->projected_input, GH, 0);
        if (recurrent_new != NULL)
            FG_NAME(project_inputs)(layer_input, d->steps * B, D, recurrent_new,
                                    panel_new_size, 1, H, block_begin, block_end,
                                    (FG_T *)d->projected_input, GH, 2 * H);
    }
    for (s = 0; s < d->steps; s++) {
        const unsigned char *valid;
        const FG_T *step_input = NULL, *step_x;
        t = d->reverse ? d->steps - 1 - s : s;
        valid = d->mask != NULL ? d->mask + t * B : NULL;
        if (precomputed)
            step_input = projected_input + t * d->step_stride * GH;
        if (direct) {
            h_next = out + t * d->step_stride * d->out_width;
            hn_stride = out_row_stride;
        }
        step_x = layer_input + t * d->step_stride * D;
#define FG_ROW_INPUT(b) (precomputed ? step_input + (b) * d->batch_stride * GH : NULL)
#define FG_IS_VALID(b) (valid == NULL || valid[b])

        /* the recurrent product and the cell equations, block by block of hidden units */
        for (jb = block_begin; jb < block_end; jb++) {
            const FG_T *panel = recurrent + jb * panel_size;
            const FG_T *panel_u = recurrent + blocks * panel_size + jb * panel_u_size;
            j0 = jb * FG_W;
            wn = H - j0 < FG_W ? H - j0 : FG_W;
            for (b = row_begin; b < row_end; b += rows) {
                rows = row_end - b < mr ? row_end - b : mr;
                tile_gates(rows, step_x + b * x_stride, x_stride, K1, panel,
                           h_previous + b * hp_stride, hp_stride,
                           s == 0 && d->zero_state ? 0 : P, panel_u, tile);
                if (fast_lstm && wn == FG_W && valid == NULL) {
                    FG_NAME(lstm_tile_f)(rows, tile, A * FG_W,
                                         precomputed ? FG_ROW_INPUT(b) + j0 : NULL,
                                         d->batch_stride * GH, bias + j0, H, c + b * H + j0, H,
                                         (projection != NULL ? cell_out + b * H
                                                             : h_next + b * hn_stride) + j0,
                                         projection != NULL ? H : hn_stride);
                    continue;
                }
                for (r = 0; r < rows; r++) {
                    const FG_T *row_tile = tile + r * A * FG_W;
                    const FG_T *row_input = precomputed ? FG_ROW_INPUT(b + r) + j0 : NULL;
                    if (precomputed) {
                        /* The input projection of the step is not in cache (it was
                         * computed for all steps at once); fetch this row's next block
                         * while the other rows of this block are computed. */
                        int gate;
                        if (jb + 1 < blocks) {
                            for (gate = 0; gate < G + (G == 2); gate++)
                                FG_PREFETCH(row_input + gate * H + FG_W);
                        } else if (s + 1 < d->steps) {
                            const ptrdiff_t next_t = d->reverse ? t - 1 : t + 1;
                            const FG_T *next_input = projected_input
                                + (next_t * d->step_stride + (b + r) * d->batch_stride) * GH;
                            for (gate = 0; gate < G + (G == 2); gate++)
                                FG_PREFETCH(next_input + gate * H);
                        }
                    }
                    if (d->cell == FG_CELL_GRU && !d->reset_after) {
                        FG_NAME(gru_reset_epilogue)(
                            row_tile, row_input, bias + j0, H, wn, d,
                            h_previous + (b + r) * hp_stride + j0, cell_out + (b + r) * H + j0,
                            z_buffer + (b + r) * H + j0);
                        continue;
                    }
                    if (!FG_IS_VALID(b + r))
                        continue;
                    if (d->cell == FG_CELL_LSTM)
                        FG_NAME(lstm_epilogue)(
                            row_tile, row_input, bias + j0, H, wn, d, peephole != NULL ? peephole + j0 : NULL, c + (b + r) * H + j0,
                            (projection != NULL ? cell_out + (b + r) * H
                                                : h_next + (b + r) * hn_stride) + j0);
                    else if (d->cell == FG_CELL_GRU)
                        FG_NAME(gru_epilogue)(
                            row_tile, row_input,
                            precomputed ? row_input + 2 * H : row_tile + 2 * FG_W,
                            row_tile + (precomputed ? 2 : 3) * FG_W,
                            bias + j0, new_gate_bias + j0, H, wn, d, h_previous + (b + r) * hp_stride + j0,
                            h_next + (b + r) * hn_stride + j0);
                    else
                        FG_NAME(single_gate_epilogue)(
                            row_tile, row_input, bias + j0, wn, d, NULL, NULL,
                            h_next + (b + r) * hn_stride + j0);
                }
            }
        }
        if (d->cell == FG_CELL_GRU && !d->reset_after) {
            /* n = act(x W_n + b_n + (r * h) U_n) needs every r * h of the row first */
            for (jb = 0; jb < blocks; jb++) {
                const FG_T *panel = recurrent_new + jb * panel_new_size;
                const FG_T *panel_u = recurrent_new + blocks * panel_new_size
                                      + jb * panel_u_new_size;
                j0 = jb * FG_W;
                wn = H - j0 < FG_W ? H - j0 : FG_W;
                for (b = row_begin; b < row_end; b += rows) {
                    rows = row_end - b < mr_single ? row_end - b : mr_single;
                    tile_single(rows, step_x + b * x_stride, x_stride, K1, panel,
                                cell_out + b * H, H, H, panel_u, tile);
                    for (r = 0; r < rows; r++) {
                        if (!FG_IS_VALID(b + r))
                            continue;
                        FG_NAME(single_gate_epilogue)(
                            tile + r * FG_W,
                            precomputed ? FG_ROW_INPUT(b + r) + 2 * H + j0 : NULL,
                            bias + 2 * H + j0, wn, d, z_buffer + (b + r) * H + j0,
                            h_previous + (b + r) * hp_stride + j0, h_next + (b + r) * hn_stride + j0);
                    }
                }
            }
        }
        if (projection != NULL) {
            /* h' = (o * act(c')) @ W_hr */
            for (jb = 0; jb < out_blocks; jb++) {
                const FG_T *panel = projection + jb * H * FG_W;
                j0 = jb * FG_W;
                wn = P - j0 < FG_W ? P - j0 : FG_W;
                for (b = row_begin; b < row_end; b += rows) {
                    rows = row_end - b < mr_single ? row_end - b : mr_single;
                    tile_single(rows, NULL, 0, 0, NULL, cell_out + b * H, H, H, panel, tile);
                    for (r = 0; r < rows; r++)
                        if (FG_IS_VALID(b + r))
                            memcpy(h_next + (b + r) * hn_stride + j0, tile + r * FG_W,
                                   wn * sizeof(FG_T));
                }
            }
        }
        /* masked rows keep their state; outputs: h', or 0 / the previous output if masked */
        for (b = direct ? row_end : row_begin; b < row_end; b++) {
            FG_T *out_row = out + (t * d->step_stride + b * d->batch_stride) * d->out_width;
            if (FG_IS_VALID(b)) {
                memcpy(out_row, h_next + b * P, P * sizeof(FG_T));
                continue;
            }
            memcpy(h_next + b * P, h_previous + b * P, P * sizeof(FG_T));
            if (d->hold_masked_output && t_previous >= 0)
                memcpy(out_row, out + (t_previous * d->step_stride + b * d->batch_stride)
                                      * d->out_width, P * sizeof(FG_T));
            else
                memset(out_row, 0, P * sizeof(FG_T));
        }
        if (direct) {
            h_previous = h_next;
            hp_stride = hn_stride;
        } else {
            swap = h_previous;
            h_previous = h_next;
            h_next = swap;
        }
        t_previous = t;
        if (d->synchronize) {
            FG_BARRIER();   /* every block of h' is written: the next step may read h */
        }
#undef FG_ROW_INPUT
#undef FG_IS_VALID
    }
    if (h_previous != (FG_T *)d->h) {
        /* this call's columns of the final h (all of them unless threads split the blocks) */
        const ptrdiff_t first = d->synchronize ? block_begin * FG_W : 0;
        const ptrdiff_t last = d->synchronize && block_end * FG_W < P ? block_end * FG_W : P;
        for (b = row_begin; b < row_end; b++)
            memcpy((FG_T *)d->h + b * P + first, h_previous + b * hp_stride + first,
                   (last - first) * sizeof(FG_T));
    }
}

#undef FG_W
#undef FG_MR
#undef FG_ACT
#undef FG_REC_ACT
#undef FG_CELL_ACT
