/* Causal self-attention in blocks, forward and backward (fp32, AVX2 + FMA):
 *
 *     out[b, h, i] = sum_{j <= i} softmax_j(scale * q[b, h, i] . k[b, h, j] + bias[b, h, j]) v[b, h, j]
 *
 * FlashAttention-2 (Dao, 2023, Alg. 1 and 2) with the causal mask used to skip work. The sequence
 * is cut into blocks of 64 queries and 64 keys; a query block meets the key blocks up to its own
 * only, and on that diagonal block every tile of 4 queries stops at its own last key, so the
 * kernel computes about half the products of full attention (PyTorch's CPU flash kernel computes
 * every key block it enters in full, 512 keys wide). A block's scores stay in a 64 x 64 tile; the
 * softmax is online (a running maximum and sum per query) and in base 2 (the keys are packed
 * times scale * log2(e), so a weight is one 2^x), and each query's log-sum-exp is kept for the
 * backward pass, which recomputes the weights of a tile from it (with `causal` 0, full attention:
 * every query block meets every key block, none of them diagonal):
 *
 *     P = exp(S - lse),  dV += P^T dO,  dS = P * (dO V^T - rowsum(dO * O)),
 *     dQ += scale dS K,  dK += scale dS^T Q.
 *
 * Every product is one 4 x 16 register tile (c += a b with a's rows broadcast and b's rows
 * loaded 16 floats at a time). The forward pass runs the (batch, head) items in parallel, or,
 * with few of them, the (batch, head, query block) items, a (batch, head)'s blocks one after the
 * other so that its keys stay in cache. The backward
 * pass runs the (batch, head) items in parallel, each thread summing dQ of its item in its own
 * buffer; with fewer items than threads it shares out the (item, key block) pairs instead, each
 * thread summing its part of dQ in a buffer of its own, added at the end.
 *
 * attnlab.functional.kernels.causal checks shapes, dtypes and strides before calling:
 *   supported() -> bool: whether this CPU has AVX2 and FMA;
 *   forward(q, k, v, out, bias, lse, B, H, N, d, scale, threads, causal);
 *   backward(q, k, v, out, dout, bias, lse, dq, dk, dv, B, H, N, d, scale, threads, causal).
 * Each tensor is a tuple (address, stride b, stride h, stride n), strides in elements, unit
 * stride along d: q, k, v, out, dout, dq, dk, dv are (B, H, N, d), the outputs overlapping no
 * input; bias is (0, 0, 0, 0) for none or an fp32 additive key bias (B, H, N), and lse is
 * (B, H, N), both with unit stride along N. d is a multiple of 16, at most 256. A query whose
 * keys are all masked gets zeros and a log-sum-exp of -inf; the backward pass reads -inf as "no
 * weights".
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_avx2.h"

#ifndef ROWS
#define ROWS 4
#endif
#ifndef BLOCK
#define BLOCK 64
#endif
#define MAX_DIM 256

typedef struct {
    float *p;
    long sb, sh, sn;
} view;

typedef struct {
    view q, k, v, out, dout, bias, lse, dq, dk, dv;
    long batch, heads, n, dim;
    float scale;
    int causal; /* 0: every query meets every key (full attention) */
} causal_args;

static inline float *row_of(const view *x, long b, long h, long i) {
    return x->p + b * x->sb + h * x->sh + i * x->sn;
}

#ifdef ATTNLAB_X86
#define LOG2E 1.44269504088896341f
#define LN2 0.693147180559945309f

/* 2^x for a vector of x <= 0 (scores minus their maximum, in base 2): x = n + r with |r| <= 1/2,
 * 2^r by its degree-6 Taylor polynomial (relative error below 1e-7), 2^n in the exponent bits.
 * x at or below -127, -inf included, gives exactly 0 (a zero exponent field); NaN stays NaN. */
AVX2 static inline __m256 exp2_ps(__m256 x) {
    x = _mm256_max_ps(_mm256_set1_ps(-127.0f), x); /* x second: a NaN passes */
    __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_sub_ps(x, n);
    __m256 p = _mm256_set1_ps(1.5403530e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3333558e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(9.6181291e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.5504109e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(2.4022651e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(6.9314718e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

/* c[r][0..15] (+)= sum_t a[r * ar + t * at] b[t * ldb + 0..15] for r < ROWS, t < count. */
AVX2 static inline void tile(const float *a, long ar, long at, const float *b, long ldb, long count,
                             float *c, long ldc, int add) {
    __m256 acc[ROWS][2];
    _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; ++r) {
        acc[r][0] = add ? _mm256_loadu_ps(c + r * ldc) : _mm256_setzero_ps();
        acc[r][1] = add ? _mm256_loadu_ps(c + r * ldc + 8) : _mm256_setzero_ps();
    }
    for (long t = 0; t < count; ++t) {
        const float *bt = b + t * ldb, *as = a + t * at;
        __m256 b0 = _mm256_loadu_ps(bt), b1 = _mm256_loadu_ps(bt + 8);
        _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; ++r) {
            __m256 x = _mm256_broadcast_ss(as + r * ar);
            acc[r][0] = _mm256_fmadd_ps(x, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(x, b1, acc[r][1]);
        }
    }
    _Pragma("GCC unroll 8") for (int r = 0; r < ROWS; ++r) {
        _mm256_storeu_ps(c + r * ldc, acc[r][0]);
        _mm256_storeu_ps(c + r * ldc + 8, acc[r][1]);
    }
}

/* Lanes j < valid of 8 (all ones) as a mask. */
AVX2 static inline __m256i lanes_below(long valid) {
    const __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(valid < 8 ? valid : 8)), index);
}

/* s[j..j+7] + log2(e) bias[j..j+7] where j < valid, -inf beyond (scores in base 2). */
AVX2 static inline __m256 masked_scores(const float *s, const float *bias, long j, long valid) {
    if (j + 8 <= valid && !bias) return _mm256_loadu_ps(s + j);
    __m256i keep = lanes_below(valid - j);
    __m256 x = _mm256_loadu_ps(s + j);
    if (bias) x = _mm256_fmadd_ps(_mm256_maskload_ps(bias + j, keep), _mm256_set1_ps(LOG2E), x);
    return _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), x, _mm256_castsi256_ps(keep));
}

/* K of one (batch, head) times factor, transposed by blocks of 64 keys into t (blocks x d x 64):
 * t[kb][c][j] = factor k[kb * 64 + j][c], zeros past n. */
AVX2 static void transpose_keys(const float *k, long sn, long n, long blocks, long dim, float factor, float *t) {
    for (long kb = 0; kb < blocks; ++kb)
        for (long c = 0; c < dim; ++c) {
            float *panel_row = t + (kb * dim + c) * BLOCK;
            for (long j = 0; j < BLOCK; ++j) {
                long key = kb * BLOCK + j;
                panel_row[j] = key < n ? factor * k[key * sn + c] : 0.0f;
            }
        }
}

/* Rows [0, n) of x (row stride sn) into y, contiguous, and zero rows from n to padded: the
 * products then read every operand at one row stride, whatever the layout of the heads. */
static void copy_rows(const float *x, long sn, long n, long padded, long dim, float *y) {
    for (long i = 0; i < n; ++i) memcpy(y + i * dim, x + i * sn, sizeof(float) * dim);
    memset(y + n * dim, 0, sizeof(float) * (padded - n) * dim);
}

/* s (row stride 64) = x rows . panel (d x 64, one block of transposed keys) for the tiles of
 * rows below `rows`; on the diagonal block only the tiles holding some key at or before their
 * queries. */
AVX2 static void block_scores(const float *x, long ldx, long rows, const float *panel, long dim, int diagonal,
                              float *s) {
    for (long r = 0; r < rows; r += ROWS) {
        long cols = diagonal ? r + ROWS : BLOCK;
        for (long c = 0; c < cols; c += 16) tile(x + r * ldx, ldx, 1, panel + c, BLOCK, dim, s + r * BLOCK + c, BLOCK, 0);
    }
}

/* One query block of one (batch, head) against its keys kt (transposed by blocks) and values v
 * (contiguous, padded): online softmax over the key blocks, then out and lse. */
AVX2 static void forward_block(const causal_args *a, long b, long h, long qb, const float *kt, const float *v,
                               float *work) {
    long n = a->n, dim = a->dim, q0 = qb * BLOCK, queries = n - q0 < BLOCK ? n - q0 : BLOCK;
    float *s = work, *acc = s + BLOCK * BLOCK, *q = acc + BLOCK * dim, m[BLOCK], l[BLOCK];
    const float *bias = a->bias.p ? row_of(&a->bias, b, h, 0) : NULL;
    copy_rows(row_of(&a->q, b, h, q0), a->q.sn, queries, BLOCK, dim, q);
    memset(acc, 0, sizeof(float) * BLOCK * dim);
    for (long i = 0; i < BLOCK; ++i) m[i] = -INFINITY, l[i] = 0.0f;
    long last = a->causal ? qb : (n - 1) / BLOCK;
    for (long kb = 0; kb <= last; ++kb) {
        long k0 = kb * BLOCK, keys = n - k0 < BLOCK ? n - k0 : BLOCK;
        int diagonal = a->causal && kb == qb;
        const float *panel = kt + kb * dim * BLOCK;
        for (long r = 0; r < queries; r += ROWS) { /* a tile of queries: scores, softmax, values */
            long end = diagonal && r + ROWS < keys ? r + ROWS : keys, cols = (end + 7) / 8 * 8;
            for (long c = 0; c < end; c += 16)
                tile(q + r * dim, dim, 1, panel + c, BLOCK, dim, s + r * BLOCK + c, BLOCK, 0);
            for (long i = r; i < r + ROWS; ++i) {
                long valid = diagonal && i + 1 < keys ? i + 1 : keys;
                float *row = s + i * BLOCK;
                __m256 x[BLOCK / 8], top = _mm256_set1_ps(-INFINITY);
                for (long j = 0; j < cols; j += 8) {
                    x[j / 8] = masked_scores(row, bias ? bias + k0 : NULL, j, valid);
                    top = _mm256_max_ps(top, x[j / 8]);
                }
                float peak = fmaxf(m[i], hmax_ps(top)), ref = peak == -INFINITY ? 0.0f : peak;
                __m256 sum = _mm256_setzero_ps(), shift = _mm256_set1_ps(ref);
                for (long j = 0; j < cols; j += 8) {
                    __m256 p = exp2_ps(_mm256_sub_ps(x[j / 8], shift));
                    _mm256_storeu_ps(row + j, p);
                    sum = _mm256_add_ps(sum, p);
                }
                float alpha = peak == m[i] ? 1.0f : m[i] == -INFINITY ? 0.0f : exp2f(m[i] - ref);
                if (alpha != 1.0f) {
                    __m256 a8 = _mm256_set1_ps(alpha);
                    for (long c = 0; c < dim; c += 8)
                        _mm256_storeu_ps(acc + i * dim + c, _mm256_mul_ps(_mm256_loadu_ps(acc + i * dim + c), a8));
                }
                l[i] = l[i] * alpha + hsum_ps(sum);
                m[i] = peak;
            }
            for (long c = 0; c < dim; c += 16)
                tile(s + r * BLOCK, BLOCK, 1, v + k0 * dim + c, dim, end, acc + r * dim + c, dim, 1);
        }
    }
    for (long i = 0; i < BLOCK && q0 + i < n; ++i) {
        float *out = row_of(&a->out, b, h, q0 + i), inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
        __m256 inv8 = _mm256_set1_ps(inv);
        for (long c = 0; c < dim; c += 8)
            _mm256_storeu_ps(out + c, _mm256_mul_ps(_mm256_loadu_ps(acc + i * dim + c), inv8));
        row_of(&a->lse, b, h, q0 + i)[0] = l[i] > 0.0f ? (m[i] + log2f(l[i])) * LN2 : -INFINITY;
    }
}

#define WORK_FLOATS(dim) (BLOCK * BLOCK + 2 * BLOCK * (dim))

/* One (batch, head)'s keys, transposed by blocks, then its values, contiguous (2 x padded x d). */
AVX2 static void pack_item(const causal_args *a, long b, long h, long blocks, float *packed) {
    long padded = blocks * BLOCK;
    transpose_keys(row_of(&a->k, b, h, 0), a->k.sn, a->n, blocks, a->dim, a->scale * LOG2E, packed);
    copy_rows(row_of(&a->v, b, h, 0), a->v.sn, a->n, padded, a->dim, packed + padded * a->dim);
}

/* With many (batch, head) items, each is one thread's: packed once into the thread's buffer, its
 * query blocks one after the other. 0, or -1 where memory ran out. */
static int forward_by_item(const causal_args *a, int threads, long blocks) {
    long padded = blocks * BLOCK, items = a->batch * a->heads, dim = a->dim;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *packed = malloc(sizeof(float) * (size_t)(2 * padded * dim + WORK_FLOATS(dim)));
        failed |= packed == NULL;
#pragma omp for schedule(dynamic)
        for (long item = 0; item < items; ++item) {
            long b = item / a->heads, h = item % a->heads;
            if (!packed) continue;
            pack_item(a, b, h, blocks, packed);
            for (long qb = 0; qb < blocks; ++qb)
                forward_block(a, b, h, qb, packed, packed + padded * dim, packed + 2 * padded * dim);
        }
        free(packed);
    }
    return failed ? -1 : 0;
}

/* With few items, every item is packed first, then the (item, query block) pairs are shared out,
 * an item's blocks in a row so that its keys stay in cache. */
static int forward_by_block(const causal_args *a, int threads, long blocks) {
    long padded = blocks * BLOCK, items = a->batch * a->heads, per_item = 2 * padded * a->dim;
    float *packed = malloc(sizeof(float) * (size_t)(items * per_item));
    if (!packed) return -1;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
#pragma omp for schedule(static)
        for (long item = 0; item < items; ++item)
            pack_item(a, item / a->heads, item % a->heads, blocks, packed + item * per_item);
        float *work = malloc(sizeof(float) * WORK_FLOATS(a->dim));
        failed |= work == NULL;
#pragma omp for schedule(dynamic)
        for (long index = 0; index < items * blocks; ++index) {
            long item = index / blocks, qb = index % blocks;
            float *kt = packed + item * per_item;
            if (work) forward_block(a, item / a->heads, item % a->heads, qb, kt, kt + padded * a->dim, work);
        }
        free(work);
    }
    free(packed);
    return failed ? -1 : 0;
}

static int causal_forward(const causal_args *a, int threads) {
    long blocks = (a->n + BLOCK - 1) / BLOCK;
    if (a->batch * a->heads >= 4L * threads) return forward_by_item(a, threads, blocks);
    return forward_by_block(a, threads, blocks);
}

/* What the key blocks of one (batch, head) share in the backward pass: its keys (times scale and
 * log2 e) and values transposed by blocks; its queries, keys and output gradient contiguous
 * (padded rows x d); and delta_i = dO_i . O_i. */
typedef struct {
    float *kt, *vt, *q, *k, *dout, *delta;
} item_data;

/* One thread's tiles. */
typedef struct {
    float *s, *ds, *dk, *dv;
} scratch;

#define ITEM_FLOATS(padded, dim) (5 * (padded) * (dim) + (padded))
#define SCRATCH_FLOATS(dim) (2 * BLOCK * BLOCK + 2 * BLOCK * (dim))

static item_data item_at(float *memory, long padded, long dim) {
    long size = padded * dim;
    return (item_data){memory, memory + size, memory + 2 * size, memory + 3 * size, memory + 4 * size,
                       memory + 5 * size};
}

static scratch scratch_at(float *memory, long dim) {
    float *tiles = memory + 2 * BLOCK * BLOCK;
    return (scratch){memory, memory + BLOCK * BLOCK, tiles, tiles + BLOCK * dim};
}

AVX2 static void prepare_item(const causal_args *a, long b, long h, long blocks, item_data *d) {
    long n = a->n, dim = a->dim;
    transpose_keys(row_of(&a->k, b, h, 0), a->k.sn, n, blocks, dim, a->scale * LOG2E, d->kt);
    transpose_keys(row_of(&a->v, b, h, 0), a->v.sn, n, blocks, dim, 1.0f, d->vt);
    copy_rows(row_of(&a->q, b, h, 0), a->q.sn, n, blocks * BLOCK, dim, d->q);
    copy_rows(row_of(&a->k, b, h, 0), a->k.sn, n, blocks * BLOCK, dim, d->k);
    copy_rows(row_of(&a->dout, b, h, 0), a->dout.sn, n, blocks * BLOCK, dim, d->dout);
    for (long i = 0; i < n; ++i) {
        const float *o = row_of(&a->out, b, h, i), *g = row_of(&a->dout, b, h, i);
        __m256 sum = _mm256_setzero_ps();
        for (long c = 0; c < dim; c += 8) sum = _mm256_fmadd_ps(_mm256_loadu_ps(g + c), _mm256_loadu_ps(o + c), sum);
        d->delta[i] = hsum_ps(sum);
    }
}

/* Key block kb of one (batch, head) against its query blocks: writes its rows of dk and dv, adds
 * the block's share of dq / scale into dq (padded rows x d). */
AVX2 static void backward_keys(const causal_args *a, long b, long h, long kb, long blocks, const item_data *d,
                               float *dq, scratch *w) {
    long n = a->n, dim = a->dim, k0 = kb * BLOCK, keys = n - k0 < BLOCK ? n - k0 : BLOCK;
    const float *bias = a->bias.p ? row_of(&a->bias, b, h, 0) : NULL, *lse = row_of(&a->lse, b, h, 0);
    memset(w->dk, 0, sizeof(float) * BLOCK * dim);
    memset(w->dv, 0, sizeof(float) * BLOCK * dim);
    for (long qb = a->causal ? kb : 0; qb < blocks; ++qb) {
        long q0 = qb * BLOCK, queries = n - q0 < BLOCK ? n - q0 : BLOCK;
        int diagonal = a->causal && qb == kb;
        const float *qr = d->q + q0 * dim, *gr = d->dout + q0 * dim;
        block_scores(qr, dim, queries, d->kt + kb * dim * BLOCK, dim, diagonal, w->s);
        block_scores(gr, dim, queries, d->vt + kb * dim * BLOCK, dim, diagonal, w->ds); /* dP = dO V^T */
        for (long i = 0; i < BLOCK; ++i) { /* s = P, ds = P * (dP - delta), zeros where masked */
            float row_lse = i < queries ? lse[(q0 + i) * a->lse.sn] : -INFINITY;
            long valid = row_lse == -INFINITY ? 0 : (diagonal && i + 1 < keys ? i + 1 : keys);
            float *p = w->s + i * BLOCK, *dp = w->ds + i * BLOCK;
            __m256 shift = _mm256_set1_ps(valid ? row_lse * LOG2E : 0.0f);
            __m256 delta = _mm256_set1_ps(valid ? d->delta[q0 + i] : 0.0f);
            for (long j = 0; j < BLOCK; j += 8) {
                if (j >= valid) {
                    _mm256_storeu_ps(p + j, _mm256_setzero_ps());
                    _mm256_storeu_ps(dp + j, _mm256_setzero_ps());
                    continue;
                }
                __m256 x = exp2_ps(_mm256_sub_ps(masked_scores(p, bias ? bias + k0 : NULL, j, valid), shift));
                _mm256_storeu_ps(p + j, x);
                __m256 g = _mm256_blendv_ps(_mm256_setzero_ps(), _mm256_loadu_ps(dp + j),
                                            _mm256_castsi256_ps(lanes_below(valid - j)));
                _mm256_storeu_ps(dp + j, _mm256_mul_ps(x, _mm256_sub_ps(g, delta)));
            }
        }
        for (long r = 0; r < BLOCK; r += ROWS) {
            long first = diagonal ? r : 0; /* keys r.. meet queries from r on */
            long count = diagonal && r + ROWS < keys ? r + ROWS : keys;
            for (long c = 0; c < dim; c += 16) {
                if (r < keys && queries > first) {
                    tile(w->s + first * BLOCK + r, 1, BLOCK, gr + first * dim + c, dim, queries - first,
                         w->dv + r * dim + c, dim, 1);
                    tile(w->ds + first * BLOCK + r, 1, BLOCK, qr + first * dim + c, dim, queries - first,
                         w->dk + r * dim + c, dim, 1);
                }
                if (r < queries)
                    tile(w->ds + r * BLOCK, BLOCK, 1, d->k + k0 * dim + c, dim, count, dq + (q0 + r) * dim + c, dim, 1);
            }
        }
    }
    __m256 scale = _mm256_set1_ps(a->scale);
    for (long j = 0; j < keys; ++j) {
        float *dk = row_of(&a->dk, b, h, k0 + j), *dv = row_of(&a->dv, b, h, k0 + j);
        for (long c = 0; c < dim; c += 8) {
            _mm256_storeu_ps(dk + c, _mm256_mul_ps(_mm256_loadu_ps(w->dk + j * dim + c), scale));
            _mm256_storeu_ps(dv + c, _mm256_loadu_ps(w->dv + j * dim + c));
        }
    }
}

/* Row i of dq = scale * the sum of `count` partial sums, `stride` floats apart. */
AVX2 static void store_dq_row(const causal_args *a, long b, long h, long i, const float *parts, long stride,
                              int count) {
    float *dq = row_of(&a->dq, b, h, i);
    for (long c = 0; c < a->dim; c += 8) {
        __m256 sum = _mm256_loadu_ps(parts + c);
        for (int t = 1; t < count; ++t) sum = _mm256_add_ps(sum, _mm256_loadu_ps(parts + t * stride + c));
        _mm256_storeu_ps(dq + c, _mm256_mul_ps(sum, _mm256_set1_ps(a->scale)));
    }
}

/* With at least as many (batch, head) items as threads, each item is one thread's: its key blocks
 * one after the other, dq summed in the thread's buffer. Bitwise the same on any thread count. */
static int backward_by_item(const causal_args *a, int threads, long blocks) {
    long padded = blocks * BLOCK, items = a->batch * a->heads, dim = a->dim;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *memory = malloc(sizeof(float) * (ITEM_FLOATS(padded, dim) + padded * dim + SCRATCH_FLOATS(dim)));
        failed |= memory == NULL;
        item_data d = item_at(memory, padded, dim);
        float *dq = memory + ITEM_FLOATS(padded, dim);
        scratch w = scratch_at(dq + padded * dim, dim);
#pragma omp for schedule(dynamic)
        for (long item = 0; item < items; ++item) {
            long b = item / a->heads, h = item % a->heads;
            if (!memory) continue;
            prepare_item(a, b, h, blocks, &d);
            memset(dq, 0, sizeof(float) * padded * dim);
            for (long kb = 0; kb < blocks; ++kb) backward_keys(a, b, h, kb, blocks, &d, dq, &w);
            for (long i = 0; i < a->n; ++i) store_dq_row(a, b, h, i, dq + i * dim, 0, 1);
        }
        free(memory);
    }
    return failed ? -1 : 0;
}

/* With fewer items than threads, the (item, key block) pairs are spread over the threads (a
 * fixed cyclic order), each thread summing its share of dq in a buffer of its own; the buffers
 * are added at the end. Bitwise the same for one thread count. */
static int backward_by_block(const causal_args *a, int threads, long blocks) {
    long padded = blocks * BLOCK, items = a->batch * a->heads, dim = a->dim;
    size_t shared_floats = (size_t)items * (ITEM_FLOATS(padded, dim) + (size_t)threads * padded * dim);
    float *shared = malloc(sizeof(float) * shared_floats);
    if (!shared) return -1;
    float *partial = shared + items * ITEM_FLOATS(padded, dim); /* (threads, items, padded, dim) */
    memset(partial, 0, sizeof(float) * (size_t)threads * items * padded * dim);
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
#pragma omp for schedule(static)
        for (long item = 0; item < items; ++item) {
            item_data d = item_at(shared + item * ITEM_FLOATS(padded, dim), padded, dim);
            prepare_item(a, item / a->heads, item % a->heads, blocks, &d);
        }
        float *memory = malloc(sizeof(float) * SCRATCH_FLOATS(dim));
        failed |= memory == NULL;
        scratch w = scratch_at(memory, dim);
        float *mine = partial + (size_t)omp_get_thread_num() * items * padded * dim;
#pragma omp for schedule(static, 1)
        for (long index = 0; index < items * blocks; ++index) {
            long item = index % items, kb = index / items;
            item_data d = item_at(shared + item * ITEM_FLOATS(padded, dim), padded, dim);
            if (memory)
                backward_keys(a, item / a->heads, item % a->heads, kb, blocks, &d, mine + item * padded * dim, &w);
        }
        free(memory);
#pragma omp for schedule(static)
        for (long index = 0; index < items * a->n; ++index) {
            long item = index / a->n, i = index % a->n;
            store_dq_row(a, item / a->heads, item % a->heads, i, partial + (item * padded + i) * dim,
                         items * padded * dim, threads);
        }
    }
    free(shared);
    return failed ? -1 : 0;
}

static int causal_backward(const causal_args *a, int threads) {
    long blocks = (a->n + BLOCK - 1) / BLOCK;
    long items = a->batch * a->heads;
    double partial_bytes = 4.0 * threads * items * blocks * BLOCK * a->dim;
    if (items >= threads || partial_bytes > (double)(1L << 30)) return backward_by_item(a, threads, blocks);
    return backward_by_block(a, threads, blocks);
}
#endif /* ATTNLAB_X86 */

static int parse_view(PyObject *tuple, view *x) {
    unsigned long long address;
    long long sb, sh, sn;
    if (!PyArg_ParseTuple(tuple, "KLLL", &address, &sb, &sh, &sn)) return 0;
    *x = (view){(float *)(uintptr_t)address, (long)sb, (long)sh, (long)sn};
    return 1;
}

/* Parses the views named in `names` (a tuple each), then B, H, N, d, scale, threads, causal. */
static int parse(PyObject *args, int count, view *views[], causal_args *a, int *threads) {
    if (PyTuple_GET_SIZE(args) != count + 7) {
        PyErr_Format(PyExc_TypeError, "expected %d arguments, got %zd", count + 7, PyTuple_GET_SIZE(args));
        return 0;
    }
    for (int i = 0; i < count; ++i)
        if (!parse_view(PyTuple_GET_ITEM(args, i), views[i])) return 0;
    long long batch, heads, n, dim;
    PyObject *rest = PyTuple_GetSlice(args, count, count + 7);
    if (!rest) return 0;
    int ok = PyArg_ParseTuple(rest, "LLLLfip", &batch, &heads, &n, &dim, &a->scale, threads, &a->causal);
    Py_DECREF(rest);
    if (!ok) return 0;
    if (!cpu_supported()) {
        PyErr_SetString(PyExc_RuntimeError, "the causal kernel needs a CPU with AVX2 and FMA");
        return 0;
    }
    if (batch < 0 || heads < 0 || n < 0 || dim <= 0 || dim % 16 || dim > MAX_DIM || *threads <= 0) {
        PyErr_Format(PyExc_ValueError,
                     "expected B, H, N >= 0, d a positive multiple of 16 up to %d and threads > 0, "
                     "got B=%lld H=%lld N=%lld d=%lld threads=%d",
                     MAX_DIM, batch, heads, n, dim, *threads);
        return 0;
    }
    a->batch = batch, a->heads = heads, a->n = n, a->dim = dim;
    return 1;
}

typedef int (*pass_fn)(const causal_args *, int);

/* Parses the call's views and sizes and runs the pass without the GIL (none off x86, where
 * parse refuses every call). */
static PyObject *run(PyObject *args, int count, view *views[], causal_args *a, pass_fn pass) {
    int threads, status = 0;
    if (!parse(args, count, views, a, &threads)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    if (pass && a->batch > 0 && a->heads > 0 && a->n > 0) status = pass(a, threads);
    Py_END_ALLOW_THREADS
    if (status) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

#ifdef ATTNLAB_X86
#define PASS(fn) fn
#else
#define PASS(fn) NULL
#endif

static PyObject *forward(PyObject *self, PyObject *args) {
    (void)self;
    causal_args a = {0};
    view *views[] = {&a.q, &a.k, &a.v, &a.out, &a.bias, &a.lse};
    return run(args, 6, views, &a, PASS(causal_forward));
}

static PyObject *backward(PyObject *self, PyObject *args) {
    (void)self;
    causal_args a = {0};
    view *views[] = {&a.q, &a.k, &a.v, &a.out, &a.dout, &a.bias, &a.lse, &a.dq, &a.dk, &a.dv};
    return run(args, 10, views, &a, PASS(causal_backward));
}

static PyMethodDef METHODS[] = {
    {"supported", supported, METH_NOARGS, "Whether this CPU has AVX2 and FMA."},
    {"forward", forward, METH_VARARGS, "Causal attention's output and log-sum-exp (views, fp32)."},
    {"backward", backward, METH_VARARGS, "Causal attention's gradients (views, fp32)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, .m_name = "_causal", .m_size = -1, .m_methods = METHODS};

PyMODINIT_FUNC PyInit__causal(void) { return PyModule_Create(&MODULE); }
