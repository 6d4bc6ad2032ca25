/* The machine's ceilings for the recurrent kernels, one core: FMA peak, L2 read bandwidth,
 * and the rate of fastgate's register tiles alone (no cell equations), per ISA.
 * Built and run by bench/ceiling.py (cc -O2); prints one `name value unit` line each. */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define AVX2 __attribute__((target("avx2,fma")))
#define AVX512 __attribute__((target("avx512f,fma")))

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

volatile float seed[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};

/* 12 independent FMA chains (more than latency x throughput on any x86 core). */
#define PEAK(NAME, TARGET, V, SET1, FMA, LANES)                                            \
static TARGET double NAME(void)                                                         \
{                                                                                       \
    V a[12], b = SET1(1.0000001f), c = SET1(1e-9f), s = SET1(0);                        \
    long n = 20000000, k;                                                               \
    double t, best = 1e9;                                                               \
    for (int i = 0; i < 12; i++)                                                        \
        a[i] = SET1(seed[i]);                                                           \
    for (int rep = 0; rep < 3; rep++) {                                                 \
        t = now();                                                                      \
        for (k = 0; k < n; k++) {                                                       \
            _Pragma("GCC unroll 12") for (int i = 0; i < 12; i++) a[i] = FMA(a[i], b, c); \
        }                                                                               \
        t = now() - t;                                                                  \
        best = t < best ? t : best;                                                     \
    }                                                                                   \
    for (int i = 0; i < 12; i++)                                                        \
        s += a[i];                                                                      \
    return 2.0 * LANES * 12 * n / best / 1e9 + 0 * s[0];                                \
}
PEAK(peak_avx2, AVX2, __m256, _mm256_set1_ps, _mm256_fmadd_ps, 8)
PEAK(peak_avx512, AVX512, __m512, _mm512_set1_ps, _mm512_fmadd_ps, 16)

/* GB/s reading a 256 KB buffer (L2-resident: U of an LSTM H=128) with 32-byte loads. */
static AVX2 double l2_read(void)
{
    const long n = 65536;
    float *p = aligned_alloc(64, n * sizeof(float));
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    double t, best = 1e9;
    for (long i = 0; i < n; i++)
        p[i] = 1e-9f * i;
    for (int rep = 0; rep < 2000; rep++) {
        t = now();
        for (long i = 0; i < n; i += 32) {
            a0 += _mm256_load_ps(p + i);
            a1 += _mm256_load_ps(p + i + 8);
            a2 += _mm256_load_ps(p + i + 16);
            a3 += _mm256_load_ps(p + i + 24);
        }
        t = now() - t;
        best = t < best ? t : best;
    }
    a0 += a1 + a2 + a3;
    free(p);
    return n * sizeof(float) / best / 1e9 + 0 * a0[0];
}

/* GFLOP/s of the kernel's LSTM register tile (MR rows x 4 gates x one vector of units, as
 * packed_step.h's tile_product) over K = 384 (S5's D + H), blocks of the packed [W; U]
 * streamed from L2/L3 as in a step: 36 rows x BLOCKS blocks, repeated. */
#define TILE(NAME, TARGET, V, SET1, LOAD, STORE, FMA, ZERO, LANES, MR)                   \
static TARGET __attribute__((noinline)) void NAME##_tile(const float *a, long K,        \
                                                        const float *p, float *out)    \
{                                                                                       \
    V acc[MR][4];                                                                       \
    for (int r = 0; r < MR; r++)                                                        \
        for (int g = 0; g < 4; g++)                                                     \
            acc[r][g] = ZERO();                                                         \
    for (long k = 0; k < K; k++) {                                                      \
        V p0 = LOAD(p + k * 4 * LANES), p1 = LOAD(p + k * 4 * LANES + LANES);            \
        V p2 = LOAD(p + k * 4 * LANES + 2 * LANES), p3 = LOAD(p + k * 4 * LANES + 3 * LANES); \
        _Pragma("GCC unroll 6") for (int r = 0; r < MR; r++) {                          \
            V b = SET1(a[r * K + k]);                                                   \
            acc[r][0] = FMA(b, p0, acc[r][0]);                                          \
            acc[r][1] = FMA(b, p1, acc[r][1]);                                          \
            acc[r][2] = FMA(b, p2, acc[r][2]);                                          \
            acc[r][3] = FMA(b, p3, acc[r][3]);                                          \
        }                                                                               \
    }                                                                                   \
    for (int r = 0; r < MR; r++)                                                        \
        for (int g = 0; g < 4; g++)                                                     \
            STORE(out + (r * 4 + g) * LANES, acc[r][g]);                                \
}                                                                                       \
static TARGET double NAME(void)                                                         \
{                                                                                       \
    const long K = 384, rows = 36, blocks = 2048 / (4 * LANES);                         \
    float *p = aligned_alloc(64, blocks * K * 4 * LANES * sizeof(float));               \
    float *a = aligned_alloc(64, rows * K * sizeof(float)), out[MR * 4 * LANES];        \
    double t, best = 1e9, sink = 0;                                                     \
    for (long i = 0; i < blocks * K * 4 * LANES; i++)                                   \
        p[i] = 1e-3f * (i % 7);                                                         \
    for (long i = 0; i < rows * K; i++)                                                 \
        a[i] = 1e-2f * (i % 5);                                                         \
    for (int rep = 0; rep < 20; rep++) {                                                \
        t = now();                                                                      \
        for (long jb = 0; jb < blocks; jb++)                                            \
            for (long r = 0; r + MR <= rows; r += MR)                                   \
                NAME##_tile(a + r * K, K, p + jb * K * 4 * LANES, out), sink += out[0]; \
        t = now() - t;                                                                  \
        best = t < best ? t : best;                                                     \
    }                                                                                   \
    free(p);                                                                            \
    free(a);                                                                            \
    return 2.0 * blocks * rows * K * 4 * LANES / best / 1e9 + 0 * sink;                 \
}
TILE(tile_avx2, AVX2, __m256, _mm256_set1_ps, _mm256_loadu_ps, _mm256_storeu_ps,
     _mm256_fmadd_ps, _mm256_setzero_ps, 8, 3)
TILE(tile_avx512, AVX512, __m512, _mm512_set1_ps, _mm512_loadu_ps, _mm512_storeu_ps,
     _mm512_fmadd_ps, _mm512_setzero_ps, 16, 6)

int main(void)
{
    __builtin_cpu_init();
    printf("fma_peak_avx2 %.1f GFLOP/s\n", peak_avx2());
    printf("l2_read %.1f GB/s\n", l2_read());
    printf("tile_avx2_3x4 %.1f GFLOP/s\n", tile_avx2());
    if (__builtin_cpu_supports("avx512f")) {
        printf("fma_peak_avx512 %.1f GFLOP/s\n", peak_avx512());
        printf("tile_avx512_6x4 %.1f GFLOP/s\n", tile_avx512());
    }
    return 0;
}
