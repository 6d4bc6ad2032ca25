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
 * every gate, [k][gate][w]. A tile of MR batch rows x (G gates x W units) is accumulated in
 * registers over k and handed straight to the cell's equations (the "epilogue"): the gate
 * pre-activations of a step never go to memory. The input projection x @ W of all steps
 * was computed before, by one BLAS GEMM.
 */

typedef FG_T FG_NAME(vec) __attribute__((vector_size(FG_VBYTES), aligned(sizeof(FG_T))));

#define FG_W ((ptrdiff_t)(FG_VBYTES / sizeof(FG_T)))
/* Tile height for G gates: as many rows as the accumulator registers allow (at most 12). */
#define FG_MR(G) (FG_ACC / (G) < 12 ? FG_ACC / (G) : 12)

/* tile[(r G + g) W + w] = sum_k a[r lda + k] * panel[(k G + g) W + w], r < MR, g < G.
 * G and MR are constants at every call site, so acc[] lives in registers. With few
 * accumulators (batch 1), two sets over even / odd k hide the FMA latency. */
FG_ALWAYS_INLINE void FG_NAME(tile_product)(const int G, const int MR,
                                            const FG_T *restrict a, ptrdiff_t lda,
                                            const FG_T *restrict panel, ptrdiff_t K,
                                            FG_T *restrict tile)
{
    typedef FG_NAME(vec) V;
    V acc[24], acc2[24];
    const V zero = {0};
    ptrdiff_t k = 0;
    int i, r, g;
#pragma GCC unroll 24
    for (i = 0; i < G * MR; i++) {
        acc[i] = zero;
        acc2[i] = zero;
    }
    if (G * MR < 8) {
        for (; k + 1 < K; k += 2) {
            const V *p0 = (const V *)(panel + k * G * FG_W);
            const V *p1 = p0 + G;
#pragma GCC unroll 12
            for (r = 0; r < MR; r++) {
                const FG_T a0 = a[r * lda + k], a1 = a[r * lda + k + 1];
#pragma GCC unroll 4
                for (g = 0; g < G; g++) {
                    acc[r * G + g] += a0 * p0[g];
                    acc2[r * G + g] += a1 * p1[g];
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
                acc[r * G + g] += ak * p[g];
        }
    }
#pragma GCC unroll 24
    for (i = 0; i < G * MR; i++) {
        if (G * MR < 8)
            acc[i] += acc2[i];
        memcpy(tile + i * FG_W, &acc[i], sizeof(V));
    }
}

#define FG_TILE_CASE(G, M) \
    case M: if ((M) <= FG_MR(G)) FG_NAME(tile_product)(G, (M) <= FG_MR(G) ? (M) : 1, \
                                                      a, lda, panel, K, tile); break;

/* tile_product for G gates and a runtime number of rows mr <= FG_MR(G). */
#define FG_DEFINE_TILE(G)                                                                  \
static FG_TARGET void FG_NAME(tile_g##G)(ptrdiff_t mr, const FG_T *restrict a,             \
                                         ptrdiff_t lda, const FG_T *restrict panel,        \
                                         ptrdiff_t K, FG_T *restrict tile)                 \
{                                                                                          \
    switch (mr) {                                                                          \
    FG_TILE_CASE(G, 1) FG_TILE_CASE(G, 2) FG_TILE_CASE(G, 3) FG_TILE_CASE(G, 4)           \
    FG_TILE_CASE(G, 5) FG_TILE_CASE(G, 6) FG_TILE_CASE(G, 7) FG_TILE_CASE(G, 8)           \
    FG_TILE_CASE(G, 9) FG_TILE_CASE(G, 10) FG_TILE_CASE(G, 11) FG_TILE_CASE(G, 12)        \
    default: break;                                                                        \
    }                                                                                      \
}
FG_DEFINE_TILE(1)
FG_DEFINE_TILE(2)
FG_DEFINE_TILE(3)
FG_DEFINE_TILE(4)
#undef FG_DEFINE_TILE
#undef FG_TILE_CASE

typedef void (*FG_NAME(tile_fn))(ptrdiff_t, const FG_T *restrict, ptrdiff_t,
                                 const FG_T *restrict, ptrdiff_t, FG_T *restrict);

static FG_NAME(tile_fn) FG_NAME(tile_for)(int G)
{
    return G == 4 ? FG_NAME(tile_g4) : G == 3 ? FG_NAME(tile_g3)
         : G == 2 ? FG_NAME(tile_g2) : FG_NAME(tile_g1);
}

/* ----------------------------------------------------------------------------- epilogues */
/* Each takes one batch row's tile (G x W recurrent sums), the hidden units [j0, j0 + wn). */

/* LSTM:  i, f, g, o = rec_act(.), rec_act(.), act(.), rec_act(.)  of  x W + b + h U
 *        c' = f * c + i * g;   h' = o * act(c')      (h' before the projection) */
static FG_TARGET void FG_NAME(lstm_epilogue)(const FG_T *restrict tile,
                                             const FG_T *restrict projected_input,
                                             const FG_T *restrict bias, ptrdiff_t hidden,
                                             ptrdiff_t wn, int act, int rec_act,
                                             FG_T *restrict c, FG_T *restrict h)
{
    FG_T gates[4 * FG_W], cell[FG_W];
    ptrdiff_t gate, w;
    for (gate = 0; gate < 4; gate++)
        for (w = 0; w < wn; w++)
            gates[gate * FG_W + w] = tile[gate * FG_W + w] + projected_input[gate * hidden + w]
                                     + bias[gate * hidden + w];
    if (wn == FG_W) {
        FG_ACTIVATE(rec_act, gates, 2 * FG_W);
    } else {
        FG_ACTIVATE(rec_act, gates, wn);
        FG_ACTIVATE(rec_act, gates + FG_W, wn);
    }
    FG_ACTIVATE(act, gates + 2 * FG_W, wn);
    FG_ACTIVATE(rec_act, gates + 3 * FG_W, wn);
    for (w = 0; w < wn; w++) {
        cell[w] = gates[FG_W + w] * c[w] + gates[w] * gates[2 * FG_W + w];
        c[w] = cell[w];
    }
    FG_ACTIVATE(act, cell, wn);
    for (w = 0; w < wn; w++)
        h[w] = gates[3 * FG_W + w] * cell[w];
}

/* GRU, reset after:  r = rec_act(x W_r + b_r + h U_r),  z = rec_act(x W_z + b_z + h U_z)
 *                    n = act(x W_n + b_in + r * (h U_n + b_hn));   h' = z * h + (1 - z) * n */
static FG_TARGET void FG_NAME(gru_epilogue)(const FG_T *restrict tile,
                                            const FG_T *restrict projected_input,
                                            const FG_T *restrict bias,
                                            const FG_T *restrict new_gate_bias,
                                            ptrdiff_t hidden, ptrdiff_t wn, int act,
                                            int rec_act, const FG_T *restrict h_previous,
                                            FG_T *restrict h)
{
    FG_T gates[3 * FG_W];
    ptrdiff_t gate, w;
    for (gate = 0; gate < 2; gate++)
        for (w = 0; w < wn; w++)
            gates[gate * FG_W + w] = tile[gate * FG_W + w] + projected_input[gate * hidden + w]
                                     + bias[gate * hidden + w];
    if (wn == FG_W) {
        FG_ACTIVATE(rec_act, gates, 2 * FG_W);
    } else {
        FG_ACTIVATE(rec_act, gates, wn);
        FG_ACTIVATE(rec_act, gates + FG_W, wn);
    }
    for (w = 0; w < wn; w++)
        gates[2 * FG_W + w] = projected_input[2 * hidden + w] + bias[2 * hidden + w]
                              + gates[w] * (tile[2 * FG_W + w] + new_gate_bias[w]);
    FG_ACTIVATE(act, gates + 2 * FG_W, wn);
    for (w = 0; w < wn; w++) {
        const FG_T z = gates[FG_W + w];
        h[w] = z * h_previous[w] + (1 - z) * gates[2 * FG_W + w];
    }
}

/* GRU, reset before, first half:  r, z as above;  keeps r * h and z for the second half. */
static FG_TARGET void FG_NAME(gru_reset_epilogue)(const FG_T *restrict tile,
                                                  const FG_T *restrict projected_input,
                                                  const FG_T *restrict bias, ptrdiff_t hidden,
                                                  ptrdiff_t wn, int rec_act,
                                                  const FG_T *restrict h_previous,
                                                  FG_T *restrict reset_h, FG_T *restrict z)
{
    FG_T gates[2 * FG_W];
    ptrdiff_t gate, w;
    for (gate = 0; gate < 2; gate++)
        for (w = 0; w < wn; w++)
            gates[gate * FG_W + w] = tile[gate * FG_W + w] + projected_input[gate * hidden + w]
                                     + bias[gate * hidden + w];
    FG_ACTIVATE(rec_act, gates, wn);
    FG_ACTIVATE(rec_act, gates + FG_W, wn);
    for (w = 0; w < wn; w++) {
        reset_h[w] = gates[w] * h_previous[w];
        z[w] = gates[FG_W + w];
    }
}

/* GRU, reset before, second half:  n = act(x W_n + b_n + (r * h) U_n);  h' = z h + (1 - z) n.
 * SimpleRNN, with z = NULL:        h' = act(x W + b + h U). */
static FG_TARGET void FG_NAME(single_gate_epilogue)(const FG_T *restrict tile,
                                                    const FG_T *restrict projected_input,
                                                    const FG_T *restrict bias, ptrdiff_t wn,
                                                    int act, const FG_T *restrict z,
                                                    const FG_T *restrict h_previous,
                                                    FG_T *restrict h)
{
    FG_T gate[FG_W];
    ptrdiff_t w;
    for (w = 0; w < wn; w++)
        gate[w] = tile[w] + projected_input[w] + bias[w];
    FG_ACTIVATE(act, gate, wn);
    if (z == NULL) {
        for (w = 0; w < wn; w++)
            h[w] = gate[w];
    } else {
        for (w = 0; w < wn; w++)
            h[w] = z[w] * h_previous[w] + (1 - z[w]) * gate[w];
    }
}

/* ------------------------------------------------------------------------------ the loop */
/* Runs batch rows [row_begin, row_end) of one direction over every step. Rows are
 * independent: threads given disjoint row ranges share nothing and never synchronize. */
static FG_TARGET void FG_NAME(run_direction)(const fg_direction *d, ptrdiff_t row_begin,
                                             ptrdiff_t row_end)
{
    const ptrdiff_t H = d->hidden, P = d->width, B = d->batch;
    const int G = d->cell == FG_CELL_LSTM ? 4 : (d->cell == FG_CELL_RNN ? 1
                 : (d->reset_after ? 3 : 2));
    const ptrdiff_t GH = (d->cell == FG_CELL_LSTM ? 4 : (d->cell == FG_CELL_GRU ? 3 : 1)) * H;
    const ptrdiff_t blocks = (H + FG_W - 1) / FG_W, out_blocks = (P + FG_W - 1) / FG_W;
    const ptrdiff_t panel_size = P * G * FG_W;          /* one block of packed U */
    const ptrdiff_t mr = FG_MR(G), mr_single = FG_MR(1);
    const FG_T *projected_input = (const FG_T *)d->projected_input;
    const FG_T *bias = (const FG_T *)d->bias;
    const FG_T *new_gate_bias = (const FG_T *)d->new_gate_bias;
    const FG_T *recurrent = (const FG_T *)d->recurrent;
    const FG_T *recurrent_new = (const FG_T *)d->recurrent_new;
    const FG_T *projection = (const FG_T *)d->projection;
    FG_T *c = (FG_T *)d->c;
    FG_T *cell_out = (FG_T *)d->cell_out;   /* (B, H) */
    FG_T *z_buffer = (FG_T *)d->gate_buffer;  /* (B, H) */
    FG_T *out = (FG_T *)d->out;
    FG_T *h_previous = (FG_T *)d->h, *h_next = (FG_T *)d->h_spare, *swap;
    FG_NAME(tile_fn) tile_gates = FG_NAME(tile_for)(G), tile_single = FG_NAME(tile_for)(1);
    FG_T tile[24 * FG_W];
    ptrdiff_t s, t, t_previous = -1, b, r, rows, jb, j0, wn;

    for (s = 0; s < d->steps; s++) {
        const unsigned char *valid;
        const FG_T *step_input;
        t = d->reverse ? d->steps - 1 - s : s;
        valid = d->mask != NULL ? d->mask + t * B : NULL;
        step_input = projected_input + t * d->step_stride * GH;
#define FG_ROW_INPUT(b) (step_input + (b) * d->batch_stride * GH)
#define FG_IS_VALID(b) (valid == NULL || valid[b])

        /* the recurrent product and the cell equations, block by block of hidden units */
        for (jb = 0; jb < blocks; jb++) {
            const FG_T *panel = recurrent + jb * panel_size;
            j0 = jb * FG_W;
            wn = H - j0 < FG_W ? H - j0 : FG_W;
            for (b = row_begin; b < row_end; b += rows) {
                rows = row_end - b < mr ? row_end - b : mr;
                tile_gates(rows, h_previous + b * P, P, panel, P, tile);
                for (r = 0; r < rows; r++) {
                    const FG_T *row_tile = tile + r * G * FG_W;
                    const FG_T *row_input = FG_ROW_INPUT(b + r) + j0;
                    if (d->cell == FG_CELL_GRU && !d->reset_after) {
                        FG_NAME(gru_reset_epilogue)(
                            row_tile, row_input, bias + j0, H, wn, d->rec_act,
                            h_previous + (b + r) * P + j0, cell_out + (b + r) * H + j0,
                            z_buffer + (b + r) * H + j0);
                        continue;
                    }
                    if (!FG_IS_VALID(b + r))
                        continue;
                    if (d->cell == FG_CELL_LSTM)
                        FG_NAME(lstm_epilogue)(
                            row_tile, row_input, bias + j0, H, wn, d->act, d->rec_act,
                            c + (b + r) * H + j0,
                            (projection != NULL ? cell_out + (b + r) * H
                                                : h_next + (b + r) * P) + j0);
                    else if (d->cell == FG_CELL_GRU)
                        FG_NAME(gru_epilogue)(
                            row_tile, row_input, bias + j0, new_gate_bias + j0, H, wn, d->act,
                            d->rec_act, h_previous + (b + r) * P + j0,
                            h_next + (b + r) * P + j0);
                    else
                        FG_NAME(single_gate_epilogue)(
                            row_tile, row_input, bias + j0, wn, d->act, NULL, NULL,
                            h_next + (b + r) * P + j0);
                }
            }
        }
        if (d->cell == FG_CELL_GRU && !d->reset_after) {
            /* n = act(x W_n + b_n + (r * h) U_n) needs every r * h of the row first */
            for (jb = 0; jb < blocks; jb++) {
                const FG_T *panel = recurrent_new + jb * H * FG_W;
                j0 = jb * FG_W;
                wn = H - j0 < FG_W ? H - j0 : FG_W;
                for (b = row_begin; b < row_end; b += rows) {
                    rows = row_end - b < mr_single ? row_end - b : mr_single;
                    tile_single(rows, cell_out + b * H, H, panel, H, tile);
                    for (r = 0; r < rows; r++) {
                        if (!FG_IS_VALID(b + r))
                            continue;
                        FG_NAME(single_gate_epilogue)(
                            tile + r * FG_W, FG_ROW_INPUT(b + r) + 2 * H + j0,
                            bias + 2 * H + j0, wn, d->act, z_buffer + (b + r) * H + j0,
                            h_previous + (b + r) * P + j0, h_next + (b + r) * P + j0);
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
                    tile_single(rows, cell_out + b * H, H, panel, H, tile);
                    for (r = 0; r < rows; r++)
                        if (FG_IS_VALID(b + r))
                            memcpy(h_next + (b + r) * P + j0, tile + r * FG_W,
                                   wn * sizeof(FG_T));
                }
            }
        }
        /* masked rows keep their state; outputs: h', or 0 / the previous output if masked */
        for (b = row_begin; b < row_end; b++) {
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
        swap = h_previous;
        h_previous = h_next;
        h_next = swap;
        t_previous = t;
#undef FG_ROW_INPUT
#undef FG_IS_VALID
    }
    if (h_previous != (FG_T *)d->h)
        memcpy((FG_T *)d->h + row_begin * P, h_previous + row_begin * P,
               (row_end - row_begin) * P * sizeof(FG_T));
}

#undef FG_W
#undef FG_MR
