/* One decoding step's attention in one pass (fp32, AVX2 + FMA):
 *
 *     out[b, h, i] = softmax_j(scale * q[b, h, i] . k[b, h, j] + bias[b, h, i, j]) v[b, h, j]
 *
 * for a few queries i < n against j < P cached keys. PyTorch computes this as six operators
 * (two batched products, a scale, a mask, a softmax, a clean-up of empty rows), each a pass over
 * the scores with its own fixed cost; here each (b, h) is one loop: 8 keys' dot products at a
 * time (their sums transposed into one register), the softmax with a vector exp, and the
 * weighted sum of the values. A query whose keys are all masked gets zeros, as in attnlab's
 * kernels.
 *
 * attnlab.functional.kernels.fused_step checks shapes, dtypes and strides before calling:
 *   supported() -> bool: whether this CPU has AVX2 and FMA;
 *   attention(q, k, v, mask, mask_kind, out, B, H, n, P, d, q strides (b, h, i), out strides
 *             (b, h, i), k strides (b, h, j), v strides (b, h, j), mask strides (b, h, i),
 *             lines, lines' row stride, scale, threads): addresses of q and out (B, H, n, d), k
 *             and v (B, H, P, d), all with unit stride along d, and out overlapping none of
 *             them; mask_kind 0 (none), 1 (fp32 additive bias) or 2 (bool, nonzero = may
 *             attend) with unit stride along j; lines 0, or int64 (B, P) with unit stride along
 *             j: key and value j of batch row b are then those of batch row lines[b][j] (beam
 *             hypotheses reading their ancestors' keys where they were written).
 *   layer_norm(x, w, b, y, rows, dim, eps): addresses of x and y (rows, dim), contiguous fp32 (y
 *             may be x), w and b (dim,) or 0 for none: each row normalised to zero mean and unit
 *             (biased) variance, times w plus b, as torch.nn.LayerNorm. A step's norms take
 *             about a microsecond this way; PyTorch's operator has a fixed cost ten times that.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_avx2.h"

#ifdef ATTNLAB_X86
/* The sums of a[0..7] (each a vector of partial sums) as one vector, in key order. */
AVX2 static inline __m256 transpose_sum(const __m256 a[8]) {
    __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
    __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
    __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

typedef struct {
    const float *q, *k, *v;
    const char *mask;
    int mask_kind;
    float *out;
    long batch, heads, n, keys, dim;
    long qsb, qsh, qsi, osb, osh, osi; /* in elements, unit stride along dim */
    long ksb, ksh, ksj, vsb, vsh, vsj, msb, msh, msi;
    const int64_t *lines; /* NULL, or (B, P) with row stride lsb: the batch row holding key j of b */
    long lsb;
    float scale;
} step_args;

/* Key (or value) j of batch row b, head h, from that row's base pointer: with lines, the key of
 * position j lies in batch row line[j] instead. */
static inline const float *at(const float *base, const int64_t *line, long b, long sb, long j,
                              long sj) {
    return base + j * sj + (line ? (line[j] - b) * sb : 0);
}

/* Ask for the dim floats at row into L2 (the T1 hint): the keys and values of a cache lie a cache
 * row apart, a stride the hardware's prefetchers do not follow. Into L1 (T0), the requests of a
 * block hold its few miss buffers and the kernel ran no faster than without them. */
static inline void prefetch_row(const float *row, long dim) {
    for (long c = 0; c < dim; c += 16) _mm_prefetch((const char *)(row + c), _MM_HINT_T1);
}

/* Scores of query row q against every key into s (padded to a multiple of 8 with -inf); the next
 * block's keys and this block's values (v) are fetched meanwhile. */
AVX2 static void scores(const step_args *a, const float *q, const float *k, const float *v,
                        const int64_t *line, long b, const char *mask_row, float *s) {
    long keys = a->keys, dim = a->dim, j = 0;
    __m256 scale = _mm256_set1_ps(a->scale);
    for (long t = 0; t < 8 && t < keys; ++t) prefetch_row(at(k, line, b, a->ksb, t, a->ksj), dim);
    for (; j + 8 <= keys; j += 8) {
        __m256 acc[8];
        _Pragma("GCC unroll 8") for (int t = 0; t < 8; ++t) {
            acc[t] = _mm256_setzero_ps();
            if (j + 8 + t < keys) prefetch_row(at(k, line, b, a->ksb, j + 8 + t, a->ksj), dim);
            prefetch_row(at(v, line, b, a->vsb, j + t, a->vsj), dim);
        }
        for (long c = 0; c < dim; c += 8) {
            __m256 qc = _mm256_loadu_ps(q + c);
            _Pragma("GCC unroll 8") for (int t = 0; t < 8; ++t) acc[t] =
                _mm256_fmadd_ps(qc, _mm256_loadu_ps(at(k, line, b, a->ksb, j + t, a->ksj) + c), acc[t]);
        }
        _mm256_storeu_ps(s + j, _mm256_mul_ps(transpose_sum(acc), scale));
    }
    for (; j < keys; ++j) {
        __m256 acc = _mm256_setzero_ps();
        for (long c = 0; c < dim; c += 8)
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + c),
                                  _mm256_loadu_ps(at(k, line, b, a->ksb, j, a->ksj) + c), acc);
        s[j] = hsum_ps(acc) * a->scale;
    }
    for (; j % 8; ++j) s[j] = -INFINITY;
    if (a->mask_kind == 1) {
        const float *bias = (const float *)mask_row;
        for (j = 0; j < keys; ++j) s[j] += bias[j];
    } else if (a->mask_kind == 2) {
        for (j = 0; j < keys; ++j)
            if (!mask_row[j]) s[j] = -INFINITY;
    }
}

/* out = softmax(s) v for one query row, s overwritten by the weights; zeros when every score
 * is -inf. */
AVX2 static void weighted_values(const step_args *a, const float *v, const int64_t *line, long b,
                                 float *s, float *out) {
    long padded = (a->keys + 7) / 8 * 8, dim = a->dim;
    __m256 m8 = _mm256_set1_ps(-INFINITY);
    for (long j = 0; j < padded; j += 8) m8 = _mm256_max_ps(m8, _mm256_loadu_ps(s + j));
    float m = hmax_ps(m8);
    if (m == -INFINITY) {
        memset(out, 0, sizeof(float) * dim);
        return;
    }
    __m256 sum8 = _mm256_setzero_ps(), mv = _mm256_set1_ps(m);
    for (long j = 0; j < padded; j += 8) {
        __m256 p = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(s + j), mv));
        _mm256_storeu_ps(s + j, p);
        sum8 = _mm256_add_ps(sum8, p);
    }
    __m256 inv = _mm256_set1_ps(1.0f / hsum_ps(sum8));
    for (long c0 = 0; c0 < dim; c0 += 64) { /* up to 8 registers of the output at a time */
        long width = dim - c0 < 64 ? (dim - c0) / 8 : 8;
        __m256 acc[8];
        _Pragma("GCC unroll 8") for (int t = 0; t < 8; ++t) acc[t] = _mm256_setzero_ps();
        if (width == 8) {
            for (long j = 0; j < a->keys; ++j) {
                __m256 p = _mm256_broadcast_ss(s + j);
                const float *row = at(v, line, b, a->vsb, j, a->vsj) + c0;
                _Pragma("GCC unroll 8") for (int t = 0; t < 8; ++t) acc[t] =
                    _mm256_fmadd_ps(p, _mm256_loadu_ps(row + 8 * t), acc[t]);
            }
            _Pragma("GCC unroll 8") for (int t = 0; t < 8; ++t)
                _mm256_storeu_ps(out + c0 + 8 * t, _mm256_mul_ps(acc[t], inv));
        } else {
            float part[64];
            for (long j = 0; j < a->keys; ++j) {
                __m256 p = _mm256_broadcast_ss(s + j);
                const float *row = at(v, line, b, a->vsb, j, a->vsj) + c0;
                _Pragma("GCC unroll 8") for (int t = 0; t < 8; ++t) if (t < width) acc[t] =
                    _mm256_fmadd_ps(p, _mm256_loadu_ps(row + 8 * t), acc[t]);
            }
            _Pragma("GCC unroll 8") for (int t = 0; t < 8; ++t)
                _mm256_storeu_ps(part + 8 * t, _mm256_mul_ps(acc[t], inv));
            memcpy(out + c0, part, sizeof(float) * 8 * width);
        }
    }
}

/* Every (b, h) in parallel; 0, or -1 where a thread could not allocate its scores. */
static int step_attention(const step_args *a, int threads) {
    long items = a->batch * a->heads, padded = (a->keys + 7) / 8 * 8;
    size_t mask_item = a->mask_kind == 1 ? sizeof(float) : 1;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *s = malloc(sizeof(float) * (size_t)padded);
        failed |= s == NULL;
#pragma omp for schedule(static)
        for (long item = 0; item < items; ++item) {
            long b = item / a->heads, h = item % a->heads;
            const float *k = a->k + b * a->ksb + h * a->ksh, *v = a->v + b * a->vsb + h * a->vsh;
            const int64_t *line = a->lines ? a->lines + b * a->lsb : NULL;
            for (long i = 0; i < a->n; ++i) {
                const char *mask_row =
                    a->mask ? a->mask + (b * a->msb + h * a->msh + i * a->msi) * mask_item : NULL;
                if (!s) continue;
                scores(a, a->q + b * a->qsb + h * a->qsh + i * a->qsi, k, v, line, b, mask_row, s);
                weighted_values(a, v, line, b, s, a->out + b * a->osb + h * a->osh + i * a->osi);
            }
        }
        free(s);
    }
    return failed ? -1 : 0;
}

/* Row x of dim floats: its mean and 1 / sqrt(variance + eps), two passes (the variance about the
 * mean, so a large mean costs no precision). */
AVX2 static void moments(const float *x, long dim, float eps, float *mean, float *rstd) {
    __m256 acc = _mm256_setzero_ps();
    long c = 0;
    for (; c + 8 <= dim; c += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(x + c));
    float sum = hsum_ps(acc);
    for (; c < dim; ++c) sum += x[c];
    float m = sum / (float)dim;
    __m256 mv = _mm256_set1_ps(m);
    acc = _mm256_setzero_ps();
    for (c = 0; c + 8 <= dim; c += 8) {
        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + c), mv);
        acc = _mm256_fmadd_ps(d, d, acc);
    }
    float squares = hsum_ps(acc);
    for (; c < dim; ++c) squares += (x[c] - m) * (x[c] - m);
    *mean = m;
    *rstd = 1.0f / sqrtf(squares / (float)dim + eps);
}

/* y = (x - mean) rstd w + b for every row (w, b NULL: 1 and 0); y may be x. */
AVX2 static void layer_norm_rows(const float *x, const float *w, const float *b, float *y, long rows,
                                 long dim, float eps) {
    for (long r = 0; r < rows; ++r) {
        const float *xr = x + r * dim;
        float *yr = y + r * dim, mean, rstd;
        moments(xr, dim, eps, &mean, &rstd);
        __m256 mv = _mm256_set1_ps(mean), sv = _mm256_set1_ps(rstd);
        long c = 0;
        for (; c + 8 <= dim; c += 8) {
            __m256 v = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xr + c), mv), sv);
            if (w) v = _mm256_mul_ps(v, _mm256_loadu_ps(w + c));
            if (b) v = _mm256_add_ps(v, _mm256_loadu_ps(b + c));
            _mm256_storeu_ps(yr + c, v);
        }
        for (; c < dim; ++c) {
            float v = (xr[c] - mean) * rstd;
            yr[c] = (w ? v * w[c] : v) + (b ? b[c] : 0.0f);
        }
    }
}
#endif /* ATTNLAB_X86 */

static PyObject *attention(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long q, k, v, mask, out, lines;
    int mask_kind, threads;
    long long batch, heads, n, keys, dim, qsb, qsh, qsi, osb, osh, osi, ksb, ksh, ksj, vsb, vsh, vsj,
        msb, msh, msi, lsb;
    float scale;
    if (!PyArg_ParseTuple(args, "KKKKiKLLLLLLLLLLLLLLLLLLLLKLfi", &q, &k, &v, &mask, &mask_kind, &out,
                          &batch, &heads, &n, &keys, &dim, &qsb, &qsh, &qsi, &osb, &osh, &osi, &ksb,
                          &ksh, &ksj, &vsb, &vsh, &vsj, &msb, &msh, &msi, &lines, &lsb, &scale,
                          &threads))
        return NULL;
    if (!cpu_supported()) {
        PyErr_SetString(PyExc_RuntimeError, "the fused step kernel needs a CPU with AVX2 and FMA");
        return NULL;
    }
    if (batch < 0 || heads < 0 || n < 0 || keys <= 0 || dim <= 0 || dim % 8 || threads <= 0 ||
        mask_kind < 0 || mask_kind > 2) {
        PyErr_Format(PyExc_ValueError,
                     "expected keys > 0, dim a positive multiple of 8, threads > 0 and mask_kind 0-2, "
                     "got keys=%lld dim=%lld threads=%d mask_kind=%d",
                     keys, dim, threads, mask_kind);
        return NULL;
    }
#ifdef ATTNLAB_X86
    step_args a = {
        .q = (const float *)(uintptr_t)q, .k = (const float *)(uintptr_t)k,
        .v = (const float *)(uintptr_t)v, .mask = mask_kind ? (const char *)(uintptr_t)mask : NULL,
        .mask_kind = mask_kind, .out = (float *)(uintptr_t)out, .batch = batch, .heads = heads,
        .n = n, .keys = keys, .dim = dim, .qsb = qsb, .qsh = qsh, .qsi = qsi, .osb = osb,
        .osh = osh, .osi = osi, .ksb = ksb, .ksh = ksh, .ksj = ksj, .vsb = vsb,
        .vsh = vsh, .vsj = vsj, .msb = msb, .msh = msh, .msi = msi,
        .lines = (const int64_t *)(uintptr_t)lines, .lsb = lsb, .scale = scale,
    };
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = step_attention(&a, threads);
    Py_END_ALLOW_THREADS
    if (status) return PyErr_NoMemory();
#endif
    Py_RETURN_NONE;
}

static PyObject *layer_norm(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long x, w, b, y;
    long long rows, dim;
    float eps;
    if (!PyArg_ParseTuple(args, "KKKKLLf", &x, &w, &b, &y, &rows, &dim, &eps)) return NULL;
    if (!cpu_supported()) {
        PyErr_SetString(PyExc_RuntimeError, "the fused step kernel needs a CPU with AVX2 and FMA");
        return NULL;
    }
    if (rows < 0 || dim <= 0 || !x || !y) {
        PyErr_Format(PyExc_ValueError, "expected rows >= 0, dim > 0 and both x and y, got rows=%lld dim=%lld",
                     rows, dim);
        return NULL;
    }
#ifdef ATTNLAB_X86
    layer_norm_rows((const float *)(uintptr_t)x, (const float *)(uintptr_t)w, (const float *)(uintptr_t)b,
                    (float *)(uintptr_t)y, rows, dim, eps);
#endif
    Py_RETURN_NONE;
}

static PyMethodDef METHODS[] = {
    {"supported", supported, METH_NOARGS, "Whether this CPU has AVX2 and FMA."},
    {"attention", attention, METH_VARARGS, "One decoding step's attention (addresses, fp32)."},
    {"layer_norm", layer_norm, METH_VARARGS, "Layer norm of contiguous fp32 rows (addresses)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, .m_name = "_step", .m_size = -1, .m_methods = METHODS};

PyMODINIT_FUNC PyInit__step(void) { return PyModule_Create(&MODULE); }
