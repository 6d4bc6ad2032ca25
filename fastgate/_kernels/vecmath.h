/* Branch-free exp, sigmoid and tanh over arrays, written so that compilers vectorize them.
 *
 * libm's expf/tanhf are scalar calls: in an LSTM step they cost more than the recurrent
 * product. These are the Cephes range reductions and polynomials (Moshier, "Cephes Math
 * Library", exp.c / expf.c), with no branches and no table, in plain C loops: GCC and Clang
 * vectorize the loops for whatever instruction set the calling function is compiled for
 * (see packed_step.h, compiled once per ISA). Every function here is static inline so that
 * it is inlined into, and vectorized for, each ISA-specific caller.
 *
 *   exp(x)     = 2^n * exp(r),  n = round(x / ln 2),  r = x - n ln 2 (|r| <= ln 2 / 2),
 *                exp(r) by a degree-5 minimax polynomial (float, ~1 ulp) or a Pade
 *                approximant (double, ~1 ulp); 2^n is built in the exponent bits.
 *   sigmoid(x) = 1 / (1 + exp(-x))
 *   tanh(x)    = 1 - 2 / (1 + exp(2x))
 *
 * The tanh form has an absolute error of a few ulp of 1 near x = 0 (not a relative one);
 * fastgate's contract is absolute (float32 1e-5, float64 1e-12 against the oracle).
 * Inputs are clamped so that exp never overflows: sigmoid and tanh saturate to exactly
 * 0 / 1 / -1 well inside the clamp (exp(-87) < 2^-125 ~ float's smallest normal).
 */
#ifndef FASTGATE_VECMATH_H
#define FASTGATE_VECMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "constants.h"   /* the activation codes */

#if defined(__GNUC__)
#define FG_ALWAYS_INLINE static inline __attribute__((always_inline))
#define FG_NEVER_INLINE static __attribute__((noinline))
#define FG_PREFETCH(address) __builtin_prefetch(address)
#else
#define FG_ALWAYS_INLINE static inline
#define FG_NEVER_INLINE static
#define FG_PREFETCH(address) ((void)0)
#endif

/* ------------------------------------------------------------------------------- float */
FG_ALWAYS_INLINE float fg_expf(float x)
{
    /* 1.5 * 2^23: adding it rounds to an integer kept in the low mantissa bits. */
    const float magic = 12582912.0f;
    float t, n, r, p;
    int32_t t_bits, magic_bits, scale_bits;
    float scale;
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    t = x * 1.44269504088896341f + magic;      /* n = round(x / ln 2) */
    n = t - magic;
    r = x - n * 0.693359375f;                   /* r = x - n ln 2, ln 2 split in two */
    r = r + n * 2.12194440e-4f;
    p = 1.9875691500E-4f;                       /* exp(r) = 1 + r + r^2 P(r) */
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.0f;
    memcpy(&t_bits, &t, sizeof t_bits);
    memcpy(&magic_bits, &magic, sizeof magic_bits);
    scale_bits = (t_bits - magic_bits + 127) << 23;   /* 2^n */
    memcpy(&scale, &scale_bits, sizeof scale);
    return p * scale;
}

FG_ALWAYS_INLINE float fg_sigmoidf(float x) { return 1.0f / (1.0f + fg_expf(-x)); }

FG_ALWAYS_INLINE float fg_tanhf(float x) { return 1.0f - 2.0f / (1.0f + fg_expf(2.0f * x)); }

/* ------------------------------------------------------------------------------ double */
FG_ALWAYS_INLINE double fg_exp(double x)
{
    const double magic = 6755399441055744.0;   /* 1.5 * 2^52 */
    double t, n, r, rr, px, qx;
    int64_t t_bits, magic_bits, scale_bits;
    double scale;
    x = x < -708.0 ? -708.0 : x;
    x = x > 709.0 ? 709.0 : x;
    t = x * 1.4426950408889634073599 + magic;
    n = t - magic;
    r = x - n * 6.93145751953125E-1;
    r = r - n * 1.42860682030941723212E-6;
    /* exp(r) = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)) */
    rr = r * r;
    px = 1.26177193074810590878E-4;
    px = px * rr + 3.02994407707441961300E-2;
    px = px * rr + 9.99999999999999999910E-1;
    px = px * r;
    qx = 3.00198505138664455042E-6;
    qx = qx * rr + 2.52448340349684104192E-3;
    qx = qx * rr + 2.27265548208155028766E-1;
    qx = qx * rr + 2.00000000000000000009E0;
    r = 1.0 + 2.0 * px / (qx - px);
    memcpy(&t_bits, &t, sizeof t_bits);
    memcpy(&magic_bits, &magic, sizeof magic_bits);
    scale_bits = (t_bits - magic_bits + 1023) << 52;
    memcpy(&scale, &scale_bits, sizeof scale);
    return r * scale;
}

FG_ALWAYS_INLINE double fg_sigmoid(double x) { return 1.0 / (1.0 + fg_exp(-x)); }

FG_ALWAYS_INLINE double fg_tanh(double x) { return 1.0 - 2.0 / (1.0 + fg_exp(2.0 * x)); }

#define FG_SELU_ALPHA 1.6732632423543772848170429916717
#define FG_SELU_SCALE 1.0507009873554804934193349852946
#define FG_INV_SQRT2 0.70710678118654752440084436210485

static inline double fg_clip01(double x) { return x < 0 ? 0 : (x > 1 ? 1 : x); }

/* The rarer activations, one value at a time through libm (as the oracle computes them);
 * alpha and beta are the parameters of the parametrised ones. */
static double fg_activate_scalar(int code, double x, int is_float, double alpha, double beta)
{
    switch (code) {
    case FG_LEAKY_RELU: return x >= 0 ? x : alpha * x;
    case FG_THRESHOLDED_RELU: return x > alpha ? x : 0;
    case FG_SCALED_TANH: return alpha * (is_float ? (double)tanhf((float)(beta * x))
                                                  : tanh(beta * x));
    case FG_AFFINE: return alpha * x + beta;
    case FG_HARD_SIGMOID_AFFINE: return fg_clip01(alpha * x + beta);
    case FG_ELU_ALPHA:
        return x >= 0 ? x : alpha * (is_float ? (double)expm1f((float)x) : expm1(x));
    case FG_TANH: return is_float ? (double)tanhf((float)x) : tanh(x);
    case FG_SIGMOID: return 1.0 / (1.0 + (is_float ? (double)expf((float)-x) : exp(-x)));
    case FG_RELU: return x > 0 ? x : 0;
    case FG_ELU: return x > 0 ? x : (is_float ? (double)expm1f((float)x) : expm1(x));
    case FG_SELU:
        return FG_SELU_SCALE * (x > 0 ? x : FG_SELU_ALPHA * (is_float ? (double)expm1f((float)x)
                                                                        : expm1(x)));
    case FG_SOFTSIGN: return x / (1 + fabs(x));
    case FG_SOFTPLUS:
        /* log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), without overflow */
        return (x > 0 ? x : 0) + (is_float ? (double)log1pf(expf((float)-fabs(x)))
                                           : log1p(exp(-fabs(x))));
    case FG_EXPONENTIAL: return is_float ? (double)expf((float)x) : exp(x);
    case FG_HARD_SIGMOID: return fg_clip01(x / 6 + 0.5);
    case FG_HARD_SIGMOID_KERAS2: return fg_clip01(0.2 * x + 0.5);
    case FG_SILU: return x / (1.0 + (is_float ? (double)expf((float)-x) : exp(-x)));
    case FG_GELU:
        return 0.5 * x * (1 + (is_float ? (double)erff((float)(x * FG_INV_SQRT2))
                                        : erf(x * FG_INV_SQRT2)));
    default: return x;  /* FG_LINEAR */
    }
}

/* x[0..n) = act(x[0..n)) in place: tanh / sigmoid / linear / relu vectorized, others scalar
 * (alpha, beta: the parameters of a parametrised activation). */
FG_ALWAYS_INLINE void fg_activate_f(int code, double alpha, double beta, float *restrict x,
                                    ptrdiff_t n)
{
    ptrdiff_t j;
    if (code == FG_SIGMOID) {
        for (j = 0; j < n; j++) x[j] = fg_sigmoidf(x[j]);
    } else if (code == FG_TANH) {
        for (j = 0; j < n; j++) x[j] = fg_tanhf(x[j]);
    } else if (code == FG_RELU) {
        for (j = 0; j < n; j++) x[j] = x[j] > 0 ? x[j] : 0.0f;
    } else if (code != FG_LINEAR) {
        for (j = 0; j < n; j++) {
            /* float arithmetic where the oracle computes in float32 */
            if (code == FG_HARD_SIGMOID) {
                float v = x[j] / 6 + 0.5f;
                x[j] = v < 0 ? 0 : (v > 1 ? 1 : v);
            } else if (code == FG_HARD_SIGMOID_KERAS2) {
                float v = 0.2f * x[j] + 0.5f;
                x[j] = v < 0 ? 0 : (v > 1 ? 1 : v);
            } else {
                x[j] = (float)fg_activate_scalar(code, x[j], 1, alpha, beta);
            }
        }
    }
}

FG_ALWAYS_INLINE void fg_activate_d(int code, double alpha, double beta, double *restrict x,
                                    ptrdiff_t n)
{
    ptrdiff_t j;
    if (code == FG_SIGMOID) {
        for (j = 0; j < n; j++) x[j] = fg_sigmoid(x[j]);
    } else if (code == FG_TANH) {
        for (j = 0; j < n; j++) x[j] = fg_tanh(x[j]);
    } else if (code == FG_RELU) {
        for (j = 0; j < n; j++) x[j] = x[j] > 0 ? x[j] : 0.0;
    } else if (code != FG_LINEAR) {
        for (j = 0; j < n; j++) x[j] = fg_activate_scalar(code, x[j], 0, alpha, beta);
    }
}

#endif /* FASTGATE_VECMATH_H */
