/* Thin products y = x W^T + b for the few rows of a decoding step: fp32 (AVX2 + FMA, or
 * AVX-512); bf16 rows by bf16 weights, fp32 sums (AVX-512 BF16); and uint8 rows by int8 weights,
 * int32 sums (AVX-512 VNNI).
 *
 * A decoding step multiplies a handful of rows by every weight of the decoder, so its products
 * are bound by reading the weights from memory. The weight is packed once, by
 * attnlab.functional.kernels.thin.pack, into panels of 8 output columns, each panel's K rows of
 * 8 floats contiguous: P[n / 8][k][n % 8] = W[n][k] (zero columns past N). Up to 8 rows, one
 * pass over a panel keeps all rows' accumulators in registers, so the weight is read once, in
 * order; more rows take two panels at a time in blocks of 6 rows, the panels read from memory
 * once and from cache for each further block.
 *
 * On a CPU with AVX-512, panels of 16 output columns (P[n / 16][k][n % 16], "wide") take one
 * 512-bit multiply-add per 16 products, half the instructions of two 8-column panels; up to 8
 * rows a pass over one panel, blocks of 8 rows over two panels past that. With AVX-512 BF16, a
 * bf16 weight can be packed into pair panels of 16 output columns, each panel's K / 2 rows
 * holding 16 pairs of consecutive weights: Q[n / 16][k / 2][n % 16][k % 2] = W[n][k] (zero past
 * N and past an odd K). The rows
 * are rounded to bf16 (to nearest even, as bf16 autocast rounds them) and one vdpbf16ps adds two
 * products to each of 16 fp32 sums: the products of bf16 autocast, with the epilogues done as
 * the outputs are stored. With AVX-512 VNNI, an int8 weight (symmetric, a scale per output column)
 * can be packed into quad panels, Q[n / 16][k / 4][n % 16][k % 4] = W[n][k] (zero past N and K);
 * the rows are quantised to uint8 as PyTorch's dynamic int8 linear quantises them, and one vpdpbusd
 * adds four products to each of 16 int32 sums: that linear's products, a quarter of the fp32 bytes.
 *
 * The module exposes four functions; attnlab.functional.kernels.thin checks shapes and dtypes
 * before it calls them:
 *   supported() -> bool: whether this CPU has AVX2 and FMA;
 *   kind_supported(kind) -> bool: whether this CPU runs a kind of panels (below, 3: int8 quads);
 *   linear(x, p, b, y, rows, k, n, res, relu, threads, kind): addresses of x (rows, k), p (fp32
 *       panels with kind 0, wide fp32 panels with kind 1, bf16 pair panels with kind 2), b (n,
 *       or 0 for none), y (rows, n) and res (rows, n, or 0 for none), all else fp32 and
 *       contiguous;
 *       y = relu(x W^T + b + res) with relu true, else without the max. res may be y itself
 *       (each element is read just before it is written); x may not overlap y;
 *   linear_int8(x, p, scales, sums, b, y, rows, k, n, res, relu, threads): the same from int8
 *       quad panels p, with the columns' fp32 scales and int32 sums of their int8 weights (n).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_avx2.h"

enum { FP32_PANELS = 0, FP32_WIDE_PANELS = 1, BF16_PAIR_PANELS = 2, INT8_QUAD_PANELS = 3 };

/* Whether this CPU runs the kernels of a kind of panels: fp32 ones on AVX2 and FMA (cpu_supported),
 * wide fp32 ones on AVX-512F, bf16 pairs on AVX-512 BF16, int8 quads on AVX-512 VNNI. */
static int kind_supported_here(int kind) {
#ifdef ATTNLAB_X86
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f"), full = avx512 && __builtin_cpu_supports("avx512bw") &&
                                                           __builtin_cpu_supports("avx512vl");
    switch (kind) {
        case FP32_PANELS: return cpu_supported();
        case FP32_WIDE_PANELS: return avx512;
        case BF16_PAIR_PANELS: return full && __builtin_cpu_supports("avx512bf16");
        case INT8_QUAD_PANELS: return full && __builtin_cpu_supports("avx512vnni");
    }
#endif
    (void)kind;
    return 0;
}

#ifdef ATTNLAB_X86
#define PANEL 8
/* The panels stream from memory in order, one stream a thread: each step asks for the line
 * PREFETCH_BYTES ahead into L2 (the T1 hint). Into L1 (T0), the requests hold its few miss
 * buffers and 8-row products read slower than a plain sum over the same bytes. */
#define PREFETCH_BYTES 8192
#define PREFETCH(at) _mm_prefetch((const char *)(at) + PREFETCH_BYTES, _MM_HINT_T1)

/* y[r][c] = out[r][c] (+ res[r][c], which has y's row stride) (then max(., 0) with relu; a NaN
 * stays NaN, as in torch.relu) for R rows of cols columns. */
static inline void store_rows(const float *out, int ldo, int rows, int cols, float *y, long ldy,
                              const float *res, int relu) {
    if (!res && !relu) {
        for (int r = 0; r < rows; ++r) memcpy(y + r * ldy, out + r * ldo, sizeof(float) * cols);
        return;
    }
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) {
            float v = out[r * ldo + c];
            if (res) v += res[r * ldy + c];
            y[r * ldy + c] = relu && v < 0.0f ? 0.0f : v;
        }
}

/* acc[r] = sum_k x[r][k] * panel[k][0..7] for R rows, then y = acc + bias. The accumulators
 * are indexed by constants only (every loop over r unrolled), so they stay in registers. */
#define PANEL_ROWS(R)                                                                            \
    __attribute__((target("avx2,fma"))) static void panel_rows_##R(                              \
        const float *x, long k_dim, const float *panel, const float *bias8, float *y, long ldy, \
        int cols, const float *res, int relu) {                                                  \
        __m256 acc[R];                                                                           \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();       \
        for (long k = 0; k < k_dim; ++k) {                                                       \
            __m256 w = _mm256_loadu_ps(panel + k * PANEL);                                       \
            if ((k & 1) == 0) PREFETCH(panel + k * PANEL);                                       \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) acc[r] =                        \
                _mm256_fmadd_ps(_mm256_broadcast_ss(x + r * k_dim + k), w, acc[r]);             \
        }                                                                                        \
        float out[R][PANEL];                                                                     \
        __m256 b = bias8 ? _mm256_loadu_ps(bias8) : _mm256_setzero_ps();                         \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)                                     \
            _mm256_storeu_ps(out[r], _mm256_add_ps(acc[r], b));                                  \
        store_rows(&out[0][0], PANEL, R, cols, y, ldy, res, relu);                               \
    }

PANEL_ROWS(1)
PANEL_ROWS(2)
PANEL_ROWS(3)
PANEL_ROWS(4)
PANEL_ROWS(5)
PANEL_ROWS(6)
PANEL_ROWS(7)
PANEL_ROWS(8)

/* The same for two adjacent panels (16 columns) at once: 2 weight loads and R broadcasts feed
 * 2 R multiply-adds, where one panel takes R + 1 loads for R. From 9 rows on the products are
 * bound by arithmetic, not memory, and blocks of 6 rows (12 accumulators) keep the load ports
 * from being the limit. The first panel is always whole; the second has cols_b columns. */
#define PAIR_ROWS(R)                                                                             \
    __attribute__((target("avx2,fma"))) static void pair_rows_##R(                               \
        const float *x, long k_dim, const float *pa, const float *pb, const float *bias16,      \
        float *y, long ldy, int cols_b, const float *res, int relu) {                            \
        __m256 acc_a[R], acc_b[R];                                                               \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) {                                   \
            acc_a[r] = _mm256_setzero_ps();                                                      \
            acc_b[r] = _mm256_setzero_ps();                                                      \
        }                                                                                        \
        for (long k = 0; k < k_dim; ++k) {                                                       \
            __m256 wa = _mm256_loadu_ps(pa + k * PANEL), wb = _mm256_loadu_ps(pb + k * PANEL);   \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) {                               \
                __m256 xr = _mm256_broadcast_ss(x + r * k_dim + k);                              \
                acc_a[r] = _mm256_fmadd_ps(xr, wa, acc_a[r]);                                    \
                acc_b[r] = _mm256_fmadd_ps(xr, wb, acc_b[r]);                                    \
            }                                                                                    \
        }                                                                                        \
        float out[R][2 * PANEL];                                                                 \
        __m256 ba = bias16 ? _mm256_loadu_ps(bias16) : _mm256_setzero_ps();                      \
        __m256 bb = bias16 ? _mm256_loadu_ps(bias16 + PANEL) : _mm256_setzero_ps();              \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) {                                   \
            _mm256_storeu_ps(out[r], _mm256_add_ps(acc_a[r], ba));                               \
            _mm256_storeu_ps(out[r] + PANEL, _mm256_add_ps(acc_b[r], bb));                       \
        }                                                                                        \
        store_rows(&out[0][0], 2 * PANEL, R, PANEL + cols_b, y, ldy, res, relu);                \
    }

PAIR_ROWS(1)
PAIR_ROWS(2)
PAIR_ROWS(3)
PAIR_ROWS(4)
PAIR_ROWS(5)
PAIR_ROWS(6)

#define PAIR_BLOCK 6

typedef void (*panel_fn)(const float *, long, const float *, const float *, float *, long, int,
                         const float *, int);
static const panel_fn PANEL_FNS[PANEL + 1] = {NULL,           panel_rows_1, panel_rows_2,
                                              panel_rows_3,   panel_rows_4, panel_rows_5,
                                              panel_rows_6,   panel_rows_7, panel_rows_8};
typedef void (*pair_fn)(const float *, long, const float *, const float *, const float *, float *,
                        long, int, const float *, int);
static const pair_fn PAIR_FNS[PAIR_BLOCK + 1] = {NULL,        pair_rows_1, pair_rows_2, pair_rows_3,
                                                 pair_rows_4, pair_rows_5, pair_rows_6};

/* Columns [start, start + width) of the bias, zero-padded past n, into buf; NULL without a bias. */
static const float *bias_of(const float *b, long n, long start, int width, float *buf) {
    if (!b) return NULL;
    long cols = n - start < width ? n - start : width;
    if (cols == width) return b + start;
    memset(buf, 0, sizeof(float) * width);
    memcpy(buf, b + start, sizeof(float) * cols);
    return buf;
}

/* Up to 8 rows: one pass over each panel. */
static void thin_few(const float *x, const float *p, const float *b, float *y, long rows,
                     long k_dim, long n, const float *res, int relu, int threads) {
    long panels = (n + PANEL - 1) / PANEL;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long j = 0; j < panels; ++j) {
        float buf[PANEL];
        int cols = (int)(n - j * PANEL < PANEL ? n - j * PANEL : PANEL);
        PANEL_FNS[rows](x, k_dim, p + j * k_dim * PANEL, bias_of(b, n, j * PANEL, PANEL, buf),
                        y + j * PANEL, n, cols, res ? res + j * PANEL : NULL, relu);
    }
}

/* More rows: pairs of panels, each read once from memory and again from cache per block of 6. */
static void thin_many(const float *x, const float *p, const float *b, float *y, long rows,
                      long k_dim, long n, const float *res, int relu, int threads) {
    long panels = (n + PANEL - 1) / PANEL, pairs = (panels + 1) / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long i = 0; i < pairs; ++i) {
        long j = 2 * i;
        float buf[2 * PANEL];
        if (j + 1 < panels) {
            int cols_b = (int)(n - (j + 1) * PANEL < PANEL ? n - (j + 1) * PANEL : PANEL);
            const float *bias16 = bias_of(b, n, j * PANEL, 2 * PANEL, buf);
            for (long r0 = 0; r0 < rows; r0 += PAIR_BLOCK) {
                long r = rows - r0 < PAIR_BLOCK ? rows - r0 : PAIR_BLOCK;
                long at = r0 * n + j * PANEL;
                PAIR_FNS[r](x + r0 * k_dim, k_dim, p + j * k_dim * PANEL, p + (j + 1) * k_dim * PANEL,
                            bias16, y + at, n, cols_b, res ? res + at : NULL, relu);
            }
        } else {  /* an odd last panel */
            int cols = (int)(n - j * PANEL);
            const float *bias8 = bias_of(b, n, j * PANEL, PANEL, buf);
            for (long r0 = 0; r0 < rows; r0 += PANEL) {
                long r = rows - r0 < PANEL ? rows - r0 : PANEL;
                long at = r0 * n + j * PANEL;
                PANEL_FNS[r](x + r0 * k_dim, k_dim, p + j * k_dim * PANEL, bias8, y + at, n, cols,
                             res ? res + at : NULL, relu);
            }
        }
    }
}


/* ------------------------------------------------------- 16-column panels (AVX-512, AVX-512 BF16) */
#define WIDE_PANEL 16 /* output columns: one AVX-512 register of fp32 sums */
#define WIDE_BLOCK 8  /* rows whose sums a pass over a panel keeps in registers */
#define AVX512 __attribute__((target("avx512f")))
#define AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define AVX512VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

/* The wide layouts read, per step along K, 64 bytes of panel (16 fp32 weights, 16 pairs of bf16
 * ones or 16 quads of int8 ones) and one 4-byte element of each row (an fp32 value, a pair of bf16
 * ones or a quad of uint8 ones). */
#define WIDE_STEP_BYTES 64

/* acc[r][c] += x[r][k] * panel c[k][0..15] (fp32), the pair dot product (bf16 pairs) or the quad
 * dot product (int8 quads) for R rows and P adjacent panels over `steps` steps, then
 * y = SUMS(acc) + bias with the epilogues; the last panel has `cols` columns. Two panels a pass
 * take two multiply-adds per row element read: for blocks past the first 8 rows, where the
 * panels come from cache and the arithmetic is the limit. */
#define WIDE_ROWS(NAME, R, P, TARGET, FMA, SUMS)                                                 \
    TARGET static void NAME##_##R##_##P(const void *x_, long steps, const void *panel_,         \
                                        const float *bias, const float *mul,                     \
                                        const int32_t *offset, float *y, long ldy, int cols,     \
                                        const float *res, int relu) {                            \
        const uint32_t *x = x_;                                                                  \
        const char *panel = panel_;                                                              \
        long panel_bytes = steps * WIDE_STEP_BYTES;                                              \
        (void)mul;                                                                               \
        (void)offset;                                                                            \
        __m512 acc[R][P];                                                                        \
        _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)                                     \
            _Pragma("GCC unroll 2") for (int c = 0; c < P; ++c) acc[r][c] = _mm512_setzero_ps(); \
        for (long k = 0; k < steps; ++k) {                                                       \
            __m512i w[P];                                                                        \
            _Pragma("GCC unroll 2") for (int c = 0; c < P; ++c) {                               \
                const char *at = panel + c * panel_bytes + k * WIDE_STEP_BYTES;                  \
                w[c] = _mm512_loadu_si512(at);                                                   \
                PREFETCH(at);                                                                    \
            }                                                                                    \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)                                 \
                _Pragma("GCC unroll 2") for (int c = 0; c < P; ++c) acc[r][c] =                 \
                    FMA(acc[r][c], x + r * steps + k, w[c]);                                     \
        }                                                                                        \
        float out[R][P * WIDE_PANEL];                                                            \
        _Pragma("GCC unroll 2") for (int c = 0; c < P; ++c) {                                   \
            __m512 bc = bias ? _mm512_loadu_ps(bias + c * WIDE_PANEL) : _mm512_setzero_ps();     \
            _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)                                 \
                _mm512_storeu_ps(out[r] + c * WIDE_PANEL, _mm512_add_ps(SUMS(acc[r][c], c), bc)); \
        }                                                                                        \
        store_rows(&out[0][0], P * WIDE_PANEL, R, (P - 1) * WIDE_PANEL + cols, y, ldy, res, relu); \
    }

/* FMA(acc, address of the row element, panel step): the element broadcast from memory, which
 * the compiler folds into the multiply-add as an embedded broadcast ({1to16}) rather than a
 * separate shuffle. */
#define FMA_FP32(acc, at, w) _mm512_fmadd_ps(_mm512_set1_ps(*(const float *)(at)), _mm512_castsi512_ps(w), acc)
#define FMA_BF16_PAIRS(acc, at, w) _mm512_dpbf16_ps(acc, (__m512bh)_mm512_set1_epi32((int)*(at)), (__m512bh)(w))
/* int8: four uint8 row elements by four int8 weights a lane, summed exactly into int32 lanes
 * (held in the fp32 registers' bits). */
#define DOT_INT8_QUADS(acc, at, w)                                                               \
    _mm512_castsi512_ps(_mm512_dpbusd_epi32(_mm512_castps_si512(acc), _mm512_set1_epi32((int)*(at)), (w)))

/* SUMS(acc, c): a panel's fp32 sums before the bias. fp32 and bf16 sums are the sums; int8 ones
 * are (sum - zero point x column sum) x (row scale x column scale), the column terms (offset, mul)
 * given per call. */
#define SUMS_AS_THEY_ARE(acc, c) (acc)
#define SUMS_OF_INT8(acc, c)                                                                     \
    _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_castps_si512(acc),                  \
                                                      _mm512_loadu_si512(offset + (c) * WIDE_PANEL))), \
                  _mm512_loadu_ps(mul + (c) * WIDE_PANEL))

#define WIDE_PASSES(NAME, P, TARGET, FMA, SUMS)                                                  \
    WIDE_ROWS(NAME, 1, P, TARGET, FMA, SUMS) WIDE_ROWS(NAME, 2, P, TARGET, FMA, SUMS)            \
    WIDE_ROWS(NAME, 3, P, TARGET, FMA, SUMS) WIDE_ROWS(NAME, 4, P, TARGET, FMA, SUMS)            \
    WIDE_ROWS(NAME, 5, P, TARGET, FMA, SUMS) WIDE_ROWS(NAME, 6, P, TARGET, FMA, SUMS)            \
    WIDE_ROWS(NAME, 7, P, TARGET, FMA, SUMS) WIDE_ROWS(NAME, 8, P, TARGET, FMA, SUMS)
#define WIDE_TABLE(NAME, P)                                                                      \
    {NULL,        NAME##_1_##P, NAME##_2_##P, NAME##_3_##P, NAME##_4_##P,                        \
     NAME##_5_##P, NAME##_6_##P, NAME##_7_##P, NAME##_8_##P}
/* NAME[P - 1][R]: the kernel for R rows and P panels a pass. */
#define WIDE_KERNELS(NAME, TARGET, FMA, SUMS)                                                    \
    WIDE_PASSES(NAME, 1, TARGET, FMA, SUMS) WIDE_PASSES(NAME, 2, TARGET, FMA, SUMS)              \
    static const wide_fn NAME[2][WIDE_BLOCK + 1] = {WIDE_TABLE(NAME, 1), WIDE_TABLE(NAME, 2)};

typedef void (*wide_fn)(const void *, long, const void *, const float *, const float *, const int32_t *,
                        float *, long, int, const float *, int);
WIDE_KERNELS(WIDE_FP32, AVX512, FMA_FP32, SUMS_AS_THEY_ARE)
WIDE_KERNELS(WIDE_PAIRS, AVX512BF16, FMA_BF16_PAIRS, SUMS_AS_THEY_ARE)
WIDE_KERNELS(WIDE_QUADS, AVX512VNNI, DOT_INT8_QUADS, SUMS_OF_INT8)

/* Row r of x (k floats) rounded to bf16 (to nearest even), zero-padded to 2 pairs words. */
AVX512BF16 static void bf16_row(const float *x, long k_dim, long pairs, uint16_t *out) {
    long k = 0;
    for (; k + 16 <= k_dim; k += 16)
        _mm256_storeu_si256((__m256i *)(out + k), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + k)));
    if (k < 2 * pairs) {
        __mmask16 in = (__mmask16)((1u << (k_dim - k)) - 1), all = (__mmask16)((1u << (2 * pairs - k)) - 1);
        __m256i v = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(in, x + k));
        _mm256_mask_storeu_epi16(out + k, all, v);
    }
}

/* y = x W^T + b (+ res, relu) from 16-column panels of `steps` steps each, rows given as `steps`
 * 4-byte elements (int8 quads: with the per-column terms mul and offset, padded to whole panels);
 * blocks of 8 rows per pass, the panels read from memory once and from cache for each further
 * block. Up to 8 rows a pass takes one panel (bound by memory); more, two. */
static void thin_wide(const wide_fn (*f)[WIDE_BLOCK + 1], const uint32_t *x, long steps, const char *p,
                      const float *b, const float *mul, const int32_t *offset, float *y, long rows,
                      long n, const float *res, int relu, int threads) {
    long panels = (n + WIDE_PANEL - 1) / WIDE_PANEL, pass = rows > WIDE_BLOCK ? 2 : 1;
    long groups = (panels + pass - 1) / pass;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long g = 0; g < groups; ++g) {
        float buf[2 * WIDE_PANEL];
        long j = g * pass, width = panels - j < pass ? panels - j : pass, start = j * WIDE_PANEL;
        long last = (j + width - 1) * WIDE_PANEL;
        int cols = (int)(n - last < WIDE_PANEL ? n - last : WIDE_PANEL);
        const float *bias = bias_of(b, n, start, (int)(width * WIDE_PANEL), buf);
        for (long r0 = 0; r0 < rows; r0 += WIDE_BLOCK) {
            long r = rows - r0 < WIDE_BLOCK ? rows - r0 : WIDE_BLOCK;
            long at = r0 * n + start;
            f[width - 1][r](x + r0 * steps, steps, p + j * steps * WIDE_STEP_BYTES, bias,
                            mul ? mul + start : NULL, offset ? offset + start : NULL, y + at, n, cols,
                            res ? res + at : NULL, relu);
        }
    }
}

/* 0, or -1 where the scratch for the bf16 rows could not be allocated. */
static int thin_linear(const float *x, const void *p, int kind, const float *b, float *y, long rows,
                       long k_dim, long n, const float *res, int relu, int threads) {
    if (rows == 0) return 0;
    if (kind == FP32_WIDE_PANELS) {
        thin_wide(WIDE_FP32, (const uint32_t *)x, k_dim, p, b, NULL, NULL, y, rows, n, res, relu, threads);
        return 0;
    }
    if (kind == BF16_PAIR_PANELS) {
        long pairs = (k_dim + 1) / 2;
        uint32_t *x16 = malloc(sizeof(uint32_t) * rows * pairs);
        if (!x16) return -1;
        for (long r = 0; r < rows; ++r) bf16_row(x + r * k_dim, k_dim, pairs, (uint16_t *)(x16 + r * pairs));
        thin_wide(WIDE_PAIRS, x16, pairs, p, b, NULL, NULL, y, rows, n, res, relu, threads);
        free(x16);
        return 0;
    }
    if (rows <= PANEL)
        thin_few(x, p, b, y, rows, k_dim, n, res, relu, threads);
    else
        thin_many(x, p, b, y, rows, k_dim, n, res, relu, threads);
    return 0;
}

/* --------------------------------------------------------------------- int8 quads (AVX-512 VNNI) */
/* The rows are quantised as PyTorch's dynamic int8 linear (fbgemm) quantises its input: one scale
 * and zero point for all of x, chosen for the range [min(x, 0), max(x, 0)] over 0..255 (the zero
 * point from whichever end adds the smaller error, rounded into range; scales below
 * SMALL_SCALE widened to it), x -> clamp(round(x / scale + zero point), 0, 255). The products
 * (sum over k of q(x) W_q) are then exact in int32, and y = (sum - zero point x column sum) x
 * scale x column scale + b. */
#define QMAX 255
#define SMALL_SCALE 6.1e-5f

AVX512VNNI static void min_max(const float *x, long count, float *lo, float *hi) {
    __m512 l = _mm512_set1_ps(INFINITY), h = _mm512_set1_ps(-INFINITY);
    long i = 0;
    for (; i + 16 <= count; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        l = _mm512_min_ps(l, v);
        h = _mm512_max_ps(h, v);
    }
    if (i < count) {
        __mmask16 in = (__mmask16)((1u << (count - i)) - 1);
        l = _mm512_mask_min_ps(l, in, l, _mm512_maskz_loadu_ps(in, x + i));
        h = _mm512_mask_max_ps(h, in, h, _mm512_maskz_loadu_ps(in, x + i));
    }
    *lo = _mm512_reduce_min_ps(l);
    *hi = _mm512_reduce_max_ps(h);
}

static void choose_qparams(float lo, float hi, float *scale, int32_t *zero_point) {
    lo = lo < 0.0f ? lo : 0.0f;
    hi = hi > 0.0f ? hi : 0.0f;
    float s = (float)(((double)hi - lo) / QMAX);
    if (s == 0.0f || isinf(1.0f / s)) s = 0.1f;
    if (s < SMALL_SCALE) {
        float widen = SMALL_SCALE / s;
        s = SMALL_SCALE;
        if (lo == 0.0f)
            hi = SMALL_SCALE * QMAX;
        else if (hi == 0.0f)
            lo = -SMALL_SCALE * QMAX;
        else {
            lo *= widen;
            hi *= widen;
        }
    }
    double from_lo = -lo / (double)s, from_hi = QMAX - hi / (double)s;
    double error_lo = fabs(lo / (double)s), error_hi = QMAX + fabs(hi / (double)s);
    double zero = error_lo < error_hi ? from_lo : from_hi;
    *zero_point = zero < 0 ? 0 : zero > QMAX ? QMAX : (int32_t)nearbyint(zero);
    *scale = s;
}

/* Row r of x (k floats) quantised to uint8, zero-padded to 4 steps bytes: the zero point is added
 * before the rounding (to nearest even), as fbgemm adds it. */
AVX512VNNI static void int8_row(const float *x, long k_dim, long steps, float inverse,
                                int32_t zero_point, uint8_t *out) {
    __m512 inv = _mm512_set1_ps(inverse), zp = _mm512_set1_ps((float)zero_point);
    __m512i lo = _mm512_setzero_si512(), hi = _mm512_set1_epi32(QMAX);
    memset(out, 0, 4 * steps);
    for (long k = 0; k < k_dim; k += 16) {
        __mmask16 in = k_dim - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (k_dim - k)) - 1);
        __m512i q = _mm512_cvtps_epi32(_mm512_fmadd_ps(_mm512_maskz_loadu_ps(in, x + k), inv, zp));
        q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
        _mm_mask_storeu_epi8(out + k, in, _mm512_cvtepi32_epi8(q));
    }
}

/* 0, or -1 where the scratch could not be allocated. */
static int thin_int8(const float *x, const void *p, const float *column_scale,
                     const int32_t *column_sum, const float *b, float *y, long rows, long k_dim, long n,
                     const float *res, int relu, int threads) {
    if (rows == 0) return 0;
    long steps = (k_dim + 3) / 4, padded = (n + WIDE_PANEL - 1) / WIDE_PANEL * WIDE_PANEL;
    uint32_t *q = malloc(sizeof(uint32_t) * rows * steps);
    float *mul = malloc(sizeof(float) * padded);
    int32_t *offset = malloc(sizeof(int32_t) * padded);
    if (!q || !mul || !offset) {
        free(q), free(mul), free(offset);
        return -1;
    }
    float lo, hi, scale;
    int32_t zero_point;
    min_max(x, rows * k_dim, &lo, &hi);
    choose_qparams(lo, hi, &scale, &zero_point);
    for (long r = 0; r < rows; ++r)
        int8_row(x + r * k_dim, k_dim, steps, 1.0f / scale, zero_point, (uint8_t *)(q + r * steps));
    for (long c = 0; c < padded; ++c) {
        mul[c] = c < n ? scale * column_scale[c] : 0.0f;
        offset[c] = c < n ? -zero_point * column_sum[c] : 0;
    }
    thin_wide(WIDE_QUADS, q, steps, p, b, mul, offset, y, rows, n, res, relu, threads);
    free(q), free(mul), free(offset);
    return 0;
}
#endif /* ATTNLAB_X86 */

/* 1, or 0 with a ValueError set, for the sizes of a product: rows >= 0, positive k, n and threads. */
static int sizes_valid(long long rows, long long k_dim, long long n, int threads) {
    if (rows >= 0 && k_dim > 0 && n > 0 && threads > 0) return 1;
    PyErr_Format(PyExc_ValueError,
                 "expected rows >= 0 and positive k, n and threads, got rows=%lld k=%lld n=%lld threads=%d",
                 rows, k_dim, n, threads);
    return 0;
}

static PyObject *linear(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long x, p, b, y, res;
    long long rows, k_dim, n;
    int relu, threads, kind;
    if (!PyArg_ParseTuple(args, "KKKKLLLKpii", &x, &p, &b, &y, &rows, &k_dim, &n, &res, &relu,
                          &threads, &kind))
        return NULL;
    if (kind < 0 || kind > 2) {
        PyErr_Format(PyExc_ValueError, "expected panel kind 0 (fp32), 1 (wide fp32) or 2 (bf16 pairs), got %d", kind);
        return NULL;
    }
    if (!cpu_supported()) {
        PyErr_SetString(PyExc_RuntimeError, "the thin-product kernel needs a CPU with AVX2 and FMA");
        return NULL;
    }
    if (!kind_supported_here(kind)) {
        PyErr_SetString(PyExc_RuntimeError, kind == BF16_PAIR_PANELS ? "bf16 pair panels need a CPU with AVX-512 BF16"
                                                                     : "wide fp32 panels need a CPU with AVX-512");
        return NULL;
    }
    if (!sizes_valid(rows, k_dim, n, threads)) return NULL;
#ifdef ATTNLAB_X86
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = thin_linear((const float *)(uintptr_t)x, (const void *)(uintptr_t)p, kind,
                         (const float *)(uintptr_t)b, (float *)(uintptr_t)y, (long)rows, (long)k_dim,
                         (long)n, (const float *)(uintptr_t)res, relu, threads);
    Py_END_ALLOW_THREADS
    if (status) return PyErr_NoMemory();
#endif
    Py_RETURN_NONE;
}

static PyObject *linear_int8(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long x, p, scales, sums, b, y, res;
    long long rows, k_dim, n;
    int relu, threads;
    if (!PyArg_ParseTuple(args, "KKKKKKLLLKpi", &x, &p, &scales, &sums, &b, &y, &rows, &k_dim, &n, &res,
                          &relu, &threads))
        return NULL;
    if (!kind_supported_here(INT8_QUAD_PANELS)) {
        PyErr_SetString(PyExc_RuntimeError, "int8 quad panels need a CPU with AVX-512 VNNI");
        return NULL;
    }
    if (!sizes_valid(rows, k_dim, n, threads)) return NULL;
#ifdef ATTNLAB_X86
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = thin_int8((const float *)(uintptr_t)x, (const void *)(uintptr_t)p,
                       (const float *)(uintptr_t)scales, (const int32_t *)(uintptr_t)sums,
                       (const float *)(uintptr_t)b, (float *)(uintptr_t)y, (long)rows, (long)k_dim,
                       (long)n, (const float *)(uintptr_t)res, relu, threads);
    Py_END_ALLOW_THREADS
    if (status) return PyErr_NoMemory();
#endif
    Py_RETURN_NONE;
}

static PyObject *kind_supported(PyObject *self, PyObject *arg) {
    (void)self;
    long kind = PyLong_AsLong(arg);
    if (kind == -1 && PyErr_Occurred()) return NULL;
    return PyBool_FromLong(kind_supported_here((int)kind));
}

static PyMethodDef METHODS[] = {
    {"supported", supported, METH_NOARGS, "Whether this CPU has AVX2 and FMA."},
    {"kind_supported", kind_supported, METH_O, "Whether this CPU runs a kind of panels (0-3)."},
    {"linear", linear, METH_VARARGS, "y = x W^T + b from a packed weight (addresses)."},
    {"linear_int8", linear_int8, METH_VARARGS, "y = x W^T + b from int8 quad panels (addresses)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, .m_name = "_thin", .m_size = -1, .m_methods = METHODS};

PyMODINIT_FUNC PyInit__thin(void) { return PyModule_Create(&MODULE); }
