/* One pass over a tile of raw tensor bytes: CRC-32, decode, power sums, min/max, zeros, both
 * sketch GEMMs and the input- and output-side Gram sketches.
 *
 * The numpy path in fingerprint.py makes about a dozen passes over each tile (decode, min,
 * max, ==0, four power sums, three GEMMs); this does the same work in one, while the tile
 * is in cache. It is optional: when it is not built, fingerprint.py uses numpy.
 *
 * Determinism. Every floating-point sum here has an order fixed by this code, never by
 * the compiler or the CPU: sums are split into 16 explicit lanes (element j goes to lane
 * j % 16) and the lanes are added in order at the end. Compiled with -ffp-contract=off
 * and without -ffast-math, the vectorised clones (AVX-512, AVX2) and the plain one give
 * bit-identical results, so the fingerprint is the same on every x86-64 machine.
 * Sketch products are exact (Q is +-1), so only the additions round.
 *
 * Accuracy. Power sums run in float32 over 128 values per lane, then in float64 (the
 * numpy path: float32 runs of 2048 values), so the two paths agree to float32 rounding,
 * not bit for bit; tests pin that agreement.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_CLMUL_X86 1
#endif

#define K 8  /* projections per block: fingerprint.K */

#ifndef CLONES /* tests define it empty to build one plain variant and compare */
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif
#endif
/* The sketches multiply by Q = +-1, an exact product, so a fused multiply-add rounds
 * exactly as a multiply then an add: contraction is safe there (and halves the work),
 * and only there. */
#if defined(__GNUC__) && !defined(__clang__)
#define EXACT_PRODUCTS __attribute__((optimize("fp-contract=fast")))
#else
#define EXACT_PRODUCTS
#endif

enum { SRC_F32 = 0, SRC_BF16 = 1, SRC_F16 = 2 };

typedef struct {
    double sums[4];
    float lowest, highest;
    long long zeros;
    int nonfinite;
} Stats;

static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0x1f) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign;
    } else { /* subnormal half: exact in float32 */
        float value = (float)mantissa * (1.0f / 16777216.0f);
        memcpy(&bits, &value, 4);
        bits |= sign;
    }
    float out;
    memcpy(&out, &bits, 4);
    return out;
}

/* Decode n values of one row into out (float32). */
CLONES static void decode_row(const void *src, int kind, Py_ssize_t n, float *restrict out) {
    if (kind == SRC_F32) {
        memcpy(out, src, (size_t)n * 4);
    } else if (kind == SRC_BF16) {
        const uint16_t *s = (const uint16_t *)src;
        uint32_t *o = (uint32_t *)out;
        for (Py_ssize_t j = 0; j < n; j++) o[j] = (uint32_t)s[j] << 16;
    } else {
        const uint16_t *s = (const uint16_t *)src;
        for (Py_ssize_t j = 0; j < n; j++) out[j] = half_to_float(s[j]);
    }
}

/* Sixteen explicit lanes: element j of a row (or t of the tile, for the statistics) is
 * summed in lane j % 16, and lanes are added in a fixed order at the end. GCC lowers these
 * vector types to one AVX-512 register, two AVX2 registers or four SSE registers; the
 * arithmetic, and so every result, is the same. */
#define L 16
typedef float vf __attribute__((vector_size(L * 4)));
typedef int32_t vi __attribute__((vector_size(L * 4)));
typedef double vd8 __attribute__((vector_size(64)));

#define RUN 128 /* vector steps (L values each) summed in float32 before float64 takes over */
#define GROUP_ELEMS 8192 /* values decoded and reduced together (32 KiB of float32) */

static inline vf loadv(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void storev(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf vmin(vf a, vf b) { vi m = a < b; return (vf)((m & (vi)a) | (~m & (vi)b)); }
static inline vf vmax(vf a, vf b) { vi m = a > b; return (vf)((m & (vi)a) | (~m & (vi)b)); }
/* The last n < L values of a row, zero-padded: the padding adds +0.0 to lanes it reaches. */
static inline vf load_tail(const float *p, Py_ssize_t n) {
    float padded[L] = {0};
    memcpy(padded, p, (size_t)n * sizeof(float));
    return loadv(padded);
}
static inline float lane_sum(vf v) {
    float total = v[0];
    for (int u = 1; u < L; u++) total += v[u];
    return total;
}

/* Running statistics of a tile, fed one group of rows at a time. */
typedef struct {
    vd8 d[4][2]; /* float64 power sums per lane */
    vf lo, hi;
    vi zeros;
    double tail[4]; /* values after a group's last whole vector */
    float tail_lo, tail_hi;
    long long tail_zeros;
} StatsAcc;

static void stats_start(StatsAcc *acc) {
    memset(acc, 0, sizeof *acc);
    acc->lo = (vf){0} + INFINITY;
    acc->hi = (vf){0} - INFINITY;
    acc->tail_lo = INFINITY;
    acc->tail_hi = -INFINITY;
}

typedef uint16_t vh __attribute__((vector_size(L * 2)));

/* Values t..t+L-1 of src decoded to float32 (the same bits decode_row gives). */
static inline __attribute__((always_inline)) vf decode_vector(const void *src, int kind, Py_ssize_t t) {
    if (kind == SRC_F32) return loadv((const float *)src + t);
    if (kind == SRC_BF16) {
        vh half;
        memcpy(&half, (const uint16_t *)src + t, sizeof half);
        return (vf)(__builtin_convertvector(half, vi) << 16);
    }
    float out[L];
    for (int u = 0; u < L; u++) out[u] = half_to_float(((const uint16_t *)src)[t + u]);
    return loadv(out);
}

static inline __attribute__((always_inline)) float decode_one(const void *src, int kind, Py_ssize_t t) {
    float out;
    decode_row((const char *)src + t * (kind == SRC_F32 ? 4 : 2), kind, 1, &out);
    return out;
}

/* Decodes n consecutive values of src into x and adds them to the statistics: whole vectors
 * of L go to lanes (float32 runs of RUN vectors, then float64), the rest one at a time to
 * the tail sums. One pass: each value is summarised while it is in a register. */
static inline __attribute__((always_inline)) void decode_stats_kind(StatsAcc *acc, const void *src, int kind,
                                                                   Py_ssize_t n, float *restrict x) {
    Py_ssize_t full = n / L * L;
    vf lo = acc->lo, hi = acc->hi;
    vi zeros = acc->zeros;
    for (Py_ssize_t t0 = 0; t0 < full; t0 += RUN * L) {
        Py_ssize_t stop = t0 + RUN * L < full ? t0 + RUN * L : full;
        vf f1 = {0}, f2 = {0}, f3 = {0}, f4 = {0};
        for (Py_ssize_t t = t0; t < stop; t += L) {
            vf v = decode_vector(src, kind, t), v2 = v * v;
            storev(x + t, v);
            f1 += v;
            f2 += v2;
            f3 += v2 * v;
            f4 += v2 * v2;
            lo = vmin(v, lo);
            hi = vmax(v, hi);
            zeros -= (v == 0.0f);
        }
        vf f[4] = {f1, f2, f3, f4};
        for (int k = 0; k < 4; k++) {
            acc->d[k][0] += __builtin_convertvector(__builtin_shufflevector(f[k], f[k], 0, 1, 2, 3, 4, 5, 6, 7), vd8);
            acc->d[k][1] += __builtin_convertvector(__builtin_shufflevector(f[k], f[k], 8, 9, 10, 11, 12, 13, 14, 15), vd8);
        }
    }
    acc->lo = lo;
    acc->hi = hi;
    acc->zeros = zeros;
    for (Py_ssize_t t = full; t < n; t++) {
        float v = decode_one(src, kind, t);
        x[t] = v;
        double e = v, q = e * e;
        acc->tail[0] += e;
        acc->tail[1] += q;
        acc->tail[2] += q * e;
        acc->tail[3] += q * q;
        acc->tail_lo = v < acc->tail_lo ? v : acc->tail_lo;
        acc->tail_hi = v > acc->tail_hi ? v : acc->tail_hi;
        acc->tail_zeros += v == 0.0f;
    }
}

/* decode_stats_kind with the kind fixed at compile time in each branch. */
CLONES static void decode_stats(StatsAcc *acc, const void *src, int kind, Py_ssize_t n, float *restrict x) {
    if (kind == SRC_BF16)
        decode_stats_kind(acc, src, SRC_BF16, n, x);
    else if (kind == SRC_F32)
        decode_stats_kind(acc, src, SRC_F32, n, x);
    else
        decode_stats_kind(acc, src, SRC_F16, n, x);
}

static void stats_finish(const StatsAcc *acc, Stats *stats) {
    double s[4] = {0, 0, 0, 0};
    float lowest = acc->tail_lo, highest = acc->tail_hi;
    long long zero_count = acc->tail_zeros;
    for (int u = 0; u < L; u++) {
        for (int k = 0; k < 4; k++) s[k] += acc->d[k][u / 8][u % 8];
        lowest = acc->lo[u] < lowest ? acc->lo[u] : lowest;
        highest = acc->hi[u] > highest ? acc->hi[u] : highest;
        zero_count += acc->zeros[u];
    }
    int nonfinite = 0;
    for (int k = 0; k < 4; k++) {
        s[k] += acc->tail[k];
        /* A NaN or Inf anywhere makes the sums non-finite, as does a float32 run that overflowed. */
        nonfinite |= !isfinite(s[k]);
    }
    memcpy(stats->sums, s, sizeof s);
    stats->lowest = lowest;
    stats->highest = highest;
    stats->zeros = zero_count;
    stats->nonfinite = nonfinite;
}

/* The row sketch walks the rows of a block (SKETCH_ELEMS values) one chunk of CHUNK columns
 * at a time, with the chunk's K rows of Q copied next to each other: they stay in L1 while
 * the rows pass over them. In place, those K rows lie 1 MiB apart in the Q cache and evict
 * each other from the same L1 sets. The order of every sum is unchanged by the chunking:
 * each lane still adds its terms in increasing column order, so the results are those of
 * a plain loop. (The column sketch keeps its sums in registers instead: see col_sketch.) */
#define CHUNK 256
#define SKETCH_ELEMS 65536 /* 256 KiB of float32: a block stays in L2 */

/* The input-side Gram sketch (fingerprint.GRAM_DIM = 32): each row's lane sums for the first
 * GRAM_PROJECTIONS projections, v[m * L + u] = sum over j = u (mod L) of Q[j, m] x[i, j], a
 * count sketch of the row that the row sketch computes anyway; gram += v v^T and lanes += v,
 * in float64, rows in order. A product of two floats is exact in double, so fused or not,
 * every build rounds alike. Whatever the other axis holds (rows permuted, rotated, pruned),
 * sum_i v_i v_i^T sketches W^T W over this axis. */
#define GRAM_PROJECTIONS 2
#define GRAM_DIM (GRAM_PROJECTIONS * L)
/* Rows whose lane sums are kept at once (40 KiB): a narrow tensor's block holds thousands of
 * rows, and per-row state for all of them would outgrow the caches (at one column, the
 * tensor itself). */
#define SKETCH_ROWS 64
/* The output-side Gram sketch (fingerprint.OUTPUT_BUCKETS, ROW_DIM): each row's lane sums for
 * all K projections (ROW_DIM numbers, a count sketch of the row over the columns) go into one
 * of OUT_BUCKETS bucket sums, bucket i mod OUT_BUCKETS with sign Q[i, 0], and into their plain
 * sum; Z Z^T of the bucket sums (centred by fingerprint.py) sketches W W^T over the rows,
 * whatever the columns hold. */
#define ROW_DIM (K * L)
#define OUT_BUCKETS 32

/* gram += V^T V and lanes += column sums of V, for n rows of V (the first GRAM_DIM of every
 * stride floats). Each
 * entry is its own sum over the rows in order, as a row-by-row update would be. Rows go in
 * batches converted to double once; for each batch a 16 x 8 strip of gram stays in
 * registers while the batch passes, instead of the whole 32 x 32 matrix being loaded and
 * stored for every row (measured 0.5 ns per value on 256-wide tensors that way). */
#define GRAM_BATCH 64
CLONES EXACT_PRODUCTS static void gram_block(const float *restrict v, Py_ssize_t n, Py_ssize_t stride,
                                             double *restrict gram, double *restrict lanes) {
    double wide[GRAM_BATCH * GRAM_DIM];
    for (Py_ssize_t i0 = 0; i0 < n; i0 += GRAM_BATCH) {
        Py_ssize_t batch = n - i0 < GRAM_BATCH ? n - i0 : GRAM_BATCH;
        for (Py_ssize_t i = 0; i < batch; i++)
            for (int p = 0; p < GRAM_DIM; p++) wide[i * GRAM_DIM + p] = v[(i0 + i) * stride + p];
        for (int p0 = 0; p0 < GRAM_DIM; p0 += 16)
            for (int q0 = 0; q0 < GRAM_DIM; q0 += 8) {
                vd8 acc[16];
                for (int p = 0; p < 16; p++) memcpy(&acc[p], gram + (p0 + p) * GRAM_DIM + q0, sizeof(vd8));
                for (Py_ssize_t i = 0; i < batch; i++) {
                    const double *row = wide + i * GRAM_DIM;
                    vd8 right;
                    memcpy(&right, row + q0, sizeof right);
                    for (int p = 0; p < 16; p++) acc[p] += row[p0 + p] * right;
                }
                for (int p = 0; p < 16; p++) memcpy(gram + (p0 + p) * GRAM_DIM + q0, &acc[p], sizeof(vd8));
            }
        for (Py_ssize_t i = 0; i < batch; i++)
            for (int p = 0; p < GRAM_DIM; p++) lanes[p] += wide[i * GRAM_DIM + p];
    }
}

/* The output-side sums for n rows of V (ROW_DIM floats each), the first being row first_row
 * of the view: out[bucket * ROW_DIM + k] += Q[i, 0] v_i[k] and out[OUT_BUCKETS * ROW_DIM + k]
 * += v_i[k], rows in order. In float32 within a tile (rows of at least 64 values make at
 * most 4,096 rows a tile, 128 a bucket; the tile's sums are then added in float64): in
 * double, the 33 x 128 sums would take all of L1. Products with +-1 are exact. */
CLONES EXACT_PRODUCTS static void out_block(const float *restrict v, Py_ssize_t n, const float *restrict qr,
                                            Py_ssize_t first_row, float *restrict out) {
    float *total = out + OUT_BUCKETS * ROW_DIM;
    for (Py_ssize_t i = 0; i < n; i++) {
        const float *row = v + i * ROW_DIM;
        float sign = qr[i * K];
        float *bucket = out + ((first_row + i) % OUT_BUCKETS) * ROW_DIM;
        for (int k = 0; k < ROW_DIM; k++) {
            bucket[k] += sign * row[k];
            total[k] += row[k];
        }
    }
}

/* Row sketch: row_out[i * K + m] = sum_j x[i, j] * qt[m * qt_stride + j]. qt is Q of the
 * tile's columns, transposed (K rows of qt_stride floats). state holds each row's 16 lane
 * sums per projection between chunks (rows * K * L floats). lanes_out receives each row's
 * lane sums v[m * L + u] for the first kept / L projections, kept floats a row (GRAM_DIM for
 * the input-side sketch alone, ROW_DIM when the output side needs them all). */
CLONES EXACT_PRODUCTS static void row_sketch(const float *restrict x, Py_ssize_t rows, Py_ssize_t cols,
                                             const float *restrict qt, Py_ssize_t qt_stride,
                                             float *restrict state, float *restrict row_out,
                                             float *restrict lanes_out, int kept) {
    if (cols < L) { /* one partial vector per row: its lane sum is this sum, in this order */
        for (Py_ssize_t i = 0; i < rows; i++) {
            float *v = lanes_out + i * kept;
            memset(v, 0, (size_t)kept * sizeof(float));
            for (int m = 0; m < K; m++) {
                float total = 0.0f;
                for (Py_ssize_t j = 0; j < cols; j++) {
                    float term = x[i * cols + j] * qt[m * qt_stride + j];
                    total += term;
                    if (m * L < kept) v[m * L + j] = term;
                }
                row_out[i * K + m] = total;
            }
        }
        return;
    }
    Py_ssize_t full = cols / L * L;
    memset(state, 0, (size_t)rows * K * L * sizeof(float));
    float qc[K * CHUNK]; /* this chunk of qt, its K rows CHUNK floats apart */
    for (Py_ssize_t c0 = 0; c0 < full; c0 += CHUNK) {
        Py_ssize_t c1 = c0 + CHUNK < full ? c0 + CHUNK : full;
        for (int m = 0; m < K; m++) memcpy(qc + m * CHUNK, qt + m * qt_stride + c0, (size_t)(c1 - c0) * sizeof(float));
        Py_ssize_t i = 0;
        for (; i + 4 <= rows; i += 4) /* four rows per load of qc, half of the projections at a time */
            for (int h = 0; h < K; h += K / 2) {
                const float *x0 = x + i * cols, *x1 = x0 + cols, *x2 = x1 + cols, *x3 = x2 + cols;
                float *s0 = state + i * K * L + h * L, *s1 = s0 + K * L, *s2 = s1 + K * L, *s3 = s2 + K * L;
                vf a0[K / 2], a1[K / 2], a2[K / 2], a3[K / 2];
                for (int m = 0; m < K / 2; m++) {
                    a0[m] = loadv(s0 + m * L);
                    a1[m] = loadv(s1 + m * L);
                    a2[m] = loadv(s2 + m * L);
                    a3[m] = loadv(s3 + m * L);
                }
                for (Py_ssize_t j = c0; j < c1; j += L) {
                    vf v0 = loadv(x0 + j), v1 = loadv(x1 + j), v2 = loadv(x2 + j), v3 = loadv(x3 + j);
                    for (int m = 0; m < K / 2; m++) {
                        vf q = loadv(qc + (h + m) * CHUNK + (j - c0));
                        a0[m] += v0 * q;
                        a1[m] += v1 * q;
                        a2[m] += v2 * q;
                        a3[m] += v3 * q;
                    }
                }
                for (int m = 0; m < K / 2; m++) {
                    storev(s0 + m * L, a0[m]);
                    storev(s1 + m * L, a1[m]);
                    storev(s2 + m * L, a2[m]);
                    storev(s3 + m * L, a3[m]);
                }
            }
        for (; i < rows; i++) {
            const float *x0 = x + i * cols;
            float *s0 = state + i * K * L;
            vf a0[K];
            for (int m = 0; m < K; m++) a0[m] = loadv(s0 + m * L);
            for (Py_ssize_t j = c0; j < c1; j += L) {
                vf v0 = loadv(x0 + j);
                for (int m = 0; m < K; m++) a0[m] += v0 * loadv(qc + m * CHUNK + (j - c0));
            }
            for (int m = 0; m < K; m++) storev(s0 + m * L, a0[m]);
        }
    }
    for (Py_ssize_t i = 0; i < rows; i++) {
        for (int m = 0; m < K; m++) {
            vf a = loadv(state + (i * K + m) * L);
            if (full < cols) /* the row's last values, zero-padded */
                a += load_tail(x + i * cols + full, cols - full) * load_tail(qt + m * qt_stride + full, cols - full);
            row_out[i * K + m] = lane_sum(a);
            if (m * L < kept) storev(lanes_out + i * kept + m * L, a);
        }
    }
}

/* Column sketch, transposed: col_t[m * cols + j] += sum_i qr[i * K + m] * x[i, j], rows
 * added in order. A strip of 32 columns keeps its K x 32 sums in registers while every row
 * of the block passes (two vector loads and K broadcasts per row), so each value is loaded
 * once and col_t is read and written once per block. */
CLONES EXACT_PRODUCTS static void col_sketch(const float *restrict x, Py_ssize_t rows, Py_ssize_t cols,
                                             const float *restrict qr, float *restrict col_t) {
    Py_ssize_t j = 0;
    for (; j + 2 * L <= cols; j += 2 * L) {
        vf a0[K], a1[K];
        for (int m = 0; m < K; m++) {
            a0[m] = loadv(col_t + m * cols + j);
            a1[m] = loadv(col_t + m * cols + j + L);
        }
        for (Py_ssize_t i = 0; i < rows; i++) {
            vf x0 = loadv(x + i * cols + j), x1 = loadv(x + i * cols + j + L);
            for (int m = 0; m < K; m++) {
                float q = qr[i * K + m];
                a0[m] += x0 * q;
                a1[m] += x1 * q;
            }
        }
        for (int m = 0; m < K; m++) {
            storev(col_t + m * cols + j, a0[m]);
            storev(col_t + m * cols + j + L, a1[m]);
        }
    }
    for (; j + L <= cols; j += L) {
        vf a0[K];
        for (int m = 0; m < K; m++) a0[m] = loadv(col_t + m * cols + j);
        for (Py_ssize_t i = 0; i < rows; i++) {
            vf x0 = loadv(x + i * cols + j);
            for (int m = 0; m < K; m++) a0[m] += x0 * qr[i * K + m];
        }
        for (int m = 0; m < K; m++) storev(col_t + m * cols + j, a0[m]);
    }
    for (; j < cols; j++)
        for (int m = 0; m < K; m++) {
            float total = col_t[m * cols + j];
            for (Py_ssize_t i = 0; i < rows; i++) total += x[i * cols + j] * qr[i * K + m];
            col_t[m * cols + j] = total;
        }
}

static int get_buffer(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t need, const char *what) {
    /* need < 0: a strided 2-D buffer whose shape the caller has checked */
    int layout = need < 0 ? PyBUF_STRIDES : PyBUF_C_CONTIGUOUS;
    if (PyObject_GetBuffer(obj, view, (writable ? PyBUF_WRITABLE : 0) | layout) < 0) return -1;
    if (view->len < need) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, needs %zd", what, view->len, need);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* ---- CRC-32 (zlib's polynomial, reflected 0xEDB88320) ------------------------------------
 * The index stores zlib.crc32 of each tensor's bytes. zlib 1.2 computes it at about 5 GB/s;
 * folding with carry-less multiplies (Gopal et al., "Fast CRC Computation for Generic
 * Polynomials Using PCLMULQDQ", Intel 2009; the constants are those of its CRC-32 example)
 * is several times faster, and is done here on the tile's bytes while they are in cache.
 * Tests check it against zlib.crc32 for every length 0..300 and random buffers. */
static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}

/* crc here is the running register (already inverted), as in zlib's inner loop. */
static uint32_t crc_bytes(uint32_t crc, const unsigned char *buf, size_t len) {
    while (len--) crc = crc_table[(crc ^ *buf++) & 0xff] ^ (crc >> 8);
    return crc;
}

#ifdef HAVE_CLMUL_X86
__attribute__((target("pclmul,sse4.1"))) static uint32_t crc_fold(uint32_t crc, const unsigned char *buf,
                                                                 size_t len) {
    /* len >= 64 and a multiple of 16 */
    const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596, 0x0154442bd4);
    const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009e, 0x01751997d0);
    const __m128i k5k0 = _mm_set_epi64x(0, 0x0163cd6124);
    const __m128i poly = _mm_set_epi64x(0x01f7011641, 0x01db710641);
    __m128i x0, x1, x2, x3, x4, x5, x6, x7, x8;
    x1 = _mm_loadu_si128((const __m128i *)(buf + 0x00));
    x2 = _mm_loadu_si128((const __m128i *)(buf + 0x10));
    x3 = _mm_loadu_si128((const __m128i *)(buf + 0x20));
    x4 = _mm_loadu_si128((const __m128i *)(buf + 0x30));
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)crc));
    x0 = k1k2;
    buf += 64;
    len -= 64;
    while (len >= 64) {
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x6 = _mm_clmulepi64_si128(x2, x0, 0x00);
        x7 = _mm_clmulepi64_si128(x3, x0, 0x00);
        x8 = _mm_clmulepi64_si128(x4, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x2 = _mm_clmulepi64_si128(x2, x0, 0x11);
        x3 = _mm_clmulepi64_si128(x3, x0, 0x11);
        x4 = _mm_clmulepi64_si128(x4, x0, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x5), _mm_loadu_si128((const __m128i *)(buf + 0x00)));
        x2 = _mm_xor_si128(_mm_xor_si128(x2, x6), _mm_loadu_si128((const __m128i *)(buf + 0x10)));
        x3 = _mm_xor_si128(_mm_xor_si128(x3, x7), _mm_loadu_si128((const __m128i *)(buf + 0x20)));
        x4 = _mm_xor_si128(_mm_xor_si128(x4, x8), _mm_loadu_si128((const __m128i *)(buf + 0x30)));
        buf += 64;
        len -= 64;
    }
    x0 = k3k4;
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, x0, 0x11), x2), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, x0, 0x11), x3), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, x0, 0x11), x4), x5);
    while (len >= 16) {
        x2 = _mm_loadu_si128((const __m128i *)buf);
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x1 = _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x1, x0, 0x11), x2), x5);
        buf += 16;
        len -= 16;
    }
    /* 128 -> 64 bits */
    x2 = _mm_clmulepi64_si128(x1, x0, 0x10);
    x3 = _mm_setr_epi32(~0, 0, ~0, 0);
    x1 = _mm_xor_si128(_mm_srli_si128(x1, 8), x2);
    x0 = k5k0;
    x2 = _mm_srli_si128(x1, 4);
    x1 = _mm_and_si128(x1, x3);
    x1 = _mm_xor_si128(_mm_clmulepi64_si128(x1, x0, 0x00), x2);
    /* Barrett reduction to 32 bits */
    x0 = poly;
    x2 = _mm_and_si128(x1, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x10);
    x2 = _mm_and_si128(x2, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    return (uint32_t)_mm_extract_epi32(x1, 1);
}

static int have_clmul = 0;
#endif

/* zlib.crc32(buf, crc) */
static uint32_t crc32_update(uint32_t crc, const unsigned char *buf, size_t len) {
    uint32_t c = ~crc;
#ifdef HAVE_CLMUL_X86
    if (have_clmul && len >= 64) {
        size_t bulk = len & ~(size_t)15;
        c = crc_fold(c, buf, bulk);
        buf += bulk;
        len -= bulk;
    }
#endif
    return ~crc_bytes(c, buf, len);
}

/* ---- Block folding ------------------------------------------------------------------------
 * part[t * t_step + m * m_step]: projections of consecutive axis positions first, first+1, ...;
 * adds P[(first + t) % BLOCK] * part[t] into out[(first + t) / BLOCK - first / BLOCK] in
 * float64, positions in order: the sums of fingerprint._fold_blocks. */
#define BLOCK 16
static void fold_blocks(const float *part, Py_ssize_t n, Py_ssize_t t_step, Py_ssize_t m_step, Py_ssize_t first,
                        const float *p, double *out) {
    /* A block's K sums are kept in registers and stored once: the same additions in the same
     * order as adding into out (zeroed by the caller), without K store-to-load chains through
     * memory per position. */
    Py_ssize_t base = first / BLOCK, block = 0;
    double total[K] = {0};
    for (Py_ssize_t t = 0; t < n; t++) {
        Py_ssize_t position = first + t;
        if (position / BLOCK - base != block) {
            for (int m = 0; m < K; m++) {
                out[block * K + m] += total[m];
                total[m] = 0.0;
            }
            block = position / BLOCK - base;
        }
        const float *weights = p + (position % BLOCK) * K;
        for (int m = 0; m < K; m++) total[m] += (double)(part[t * t_step + m * m_step] * weights[m]);
    }
    for (int m = 0; m < K; m++) out[block * K + m] += total[m];
}

PyDoc_STRVAR(reduce_tile_doc,
"reduce_tile(raw, kind, rows, cols, row0, col0, q_cols_t, q_rows, p, values, row_part, col_part,\n"
"            row_sketch, col_sketch, gram, lanes, output)\n"
"    -> (crc32, s1, s2, s3, s4, lowest, highest, zeros, nonfinite)\n\n"
"raw: the tile's little-endian bytes; kind 0 = F32, 1 = BF16, 2 = F16. q_cols_t: Q of the\n"
"tile's columns transposed, K x (row stride) float32, a 2-D buffer. values: scratch for a\n"
"block of decoded rows, min(rows * cols, max(SCRATCH_ELEMENTS, cols)) float32. Writes the\n"
"projections (row_part rows x K, col_part K x cols, scratch) and adds\n"
"the block-folded sketches into row_sketch and col_sketch (float64, zeroed by the caller),\n"
"the tile's input-side Gram sketch into gram (GRAM_DIM x GRAM_DIM) and lanes (GRAM_DIM) and,\n"
"unless output is None, its output-side sums into output ((OUT_BUCKETS + 1) x ROW_DIM; needs\n"
"cols >= 16), float64 running sums, unless nonfinite.\n"
"crc32 is zlib.crc32(raw). When nonfinite is True the statistics are not meaningful: use\n"
"the numpy path.");

static PyObject *py_reduce_tile(PyObject *self, PyObject *args) {
    PyObject *raw_o, *qc_o, *qr_o, *p_o, *values_o, *row_o, *col_o, *rs_o, *cs_o, *gram_o, *lanes_o, *out_o;
    int kind;
    Py_ssize_t rows, cols, row0, col0;
    if (!PyArg_ParseTuple(args, "OinnnnOOOOOOOOOOO", &raw_o, &kind, &rows, &cols, &row0, &col0, &qc_o, &qr_o,
                          &p_o, &values_o, &row_o, &col_o, &rs_o, &cs_o, &gram_o, &lanes_o, &out_o))
        return NULL;
    int with_output = out_o != Py_None;
    if (kind < SRC_F32 || kind > SRC_F16 || rows < 0 || cols < 0 || row0 < 0 || col0 < 0 || rows * cols < L ||
        (with_output && cols < L)) {
        PyErr_SetString(PyExc_ValueError, "bad kind or shape");
        return NULL;
    }
    Py_ssize_t n = rows * cols, itemsize = kind == SRC_F32 ? 4 : 2;
    Py_ssize_t row_blocks = (row0 + rows - 1) / BLOCK - row0 / BLOCK + 1;
    Py_ssize_t col_blocks = (col0 + cols - 1) / BLOCK - col0 / BLOCK + 1;
    Py_buffer b[12];
    PyObject *objects[12] = {raw_o, qc_o, qr_o, p_o, values_o, row_o, col_o, rs_o, cs_o, gram_o, lanes_o, out_o};
    /* Rows are decoded, summarised and projected a block at a time (see below): the decoded
     * values of one block, not the tile's, so they stay in L2 and never go back to memory. */
    Py_ssize_t group = cols >= GROUP_ELEMS ? 1 : GROUP_ELEMS / cols / 4 * 4;
    if (group == 0) group = 1;
    Py_ssize_t block = SKETCH_ELEMS / (group * cols) > 1 ? SKETCH_ELEMS / (group * cols) * group : group;
    if (block > rows) block = rows;
    const Py_ssize_t need[12] = {n * itemsize, -1, rows * K * 4, BLOCK * K * 4, block * cols * 4,
                                rows * K * 4, cols * K * 4, row_blocks * K * 8, col_blocks * K * 8,
                                GRAM_DIM * GRAM_DIM * 8, GRAM_DIM * 8, (OUT_BUCKETS + 1) * ROW_DIM * 8};
    const char *names[12] = {"raw", "q_cols", "q_rows", "p", "values", "row_part", "col_part",
                            "row_sketch", "col_sketch", "gram", "lanes", "output"};
    int wanted = with_output ? 12 : 11, got = 0;
    while (got < wanted && get_buffer(objects[got], &b[got], got >= 4, need[got], names[got]) == 0) got++;
    /* q_cols_t is a strided view of the cached transposed Q: K rows of unit-stride floats. */
    int valid = got == wanted && b[1].ndim == 2 && b[1].shape[0] == K && b[1].shape[1] >= cols && b[1].strides[1] == 4;
    if (got == wanted && !valid)
        PyErr_SetString(PyExc_ValueError, "q_cols_t must be K x cols float32 with unit column stride");
    if (!valid) {
        while (got--) PyBuffer_Release(&b[got]);
        return NULL;
    }
    Py_ssize_t qt_stride = b[1].strides[0] / 4;
    /* The row sketch's lane sums and each row's kept lane sums, SKETCH_ROWS rows at a time;
     * then the tile's output-side sums when wanted (added to the caller's only if finite). */
    int kept = with_output ? ROW_DIM : GRAM_DIM;
    size_t outputs = with_output ? (size_t)(OUT_BUCKETS + 1) * ROW_DIM : 0;
    float *tile_out = PyMem_RawMalloc((outputs + (size_t)SKETCH_ROWS * (K * L + kept)) * sizeof(float));
    if (tile_out == NULL) {
        while (got--) PyBuffer_Release(&b[got]);
        return PyErr_NoMemory();
    }
    memset(tile_out, 0, outputs * sizeof(float)); /* row_sketch zeroes its own state */
    float *state = tile_out + outputs;
    Stats stats;
    uint32_t crc = 0;
    double tile_gram[GRAM_DIM * GRAM_DIM] = {0}, tile_lanes[GRAM_DIM] = {0};
    Py_BEGIN_ALLOW_THREADS
    float *x = (float *)b[4].buf;
    StatsAcc acc;
    stats_start(&acc);
    memset(b[6].buf, 0, (size_t)cols * K * sizeof(float));
    /* Groups of rows small enough to stay in L1 while decoded and summarised, in blocks of
     * groups that stay in L2 while projected. The sizes depend on cols only, and the
     * sketches do not depend on the blocks at all (each sum runs over one row, or over
     * rows in order). The statistics' float32 runs restart at each group. */
    for (Py_ssize_t i0 = 0; i0 < rows; i0 += block) {
        Py_ssize_t n_block = rows - i0 < block ? rows - i0 : block;
        float *xb = x;
        for (Py_ssize_t g0 = 0; g0 < n_block; g0 += group) {
            Py_ssize_t g = n_block - g0 < group ? n_block - g0 : group;
            float *xg = xb + g0 * cols;
            const char *group_raw = (const char *)b[0].buf + (i0 + g0) * cols * itemsize;
            /* hashed piece by piece (zlib's running CRC), each just before it is decoded; the
             * group's rows are consecutive in raw */
            crc = crc32_update(crc, (const unsigned char *)group_raw, (size_t)(g * cols * itemsize));
            decode_stats(&acc, group_raw, kind, g * cols, xg);
        }
        float *lanes_out = state + SKETCH_ROWS * K * L;
        for (Py_ssize_t s0 = 0; s0 < n_block; s0 += SKETCH_ROWS) { /* rows in order */
            Py_ssize_t ns = n_block - s0 < SKETCH_ROWS ? n_block - s0 : SKETCH_ROWS;
            row_sketch(xb + s0 * cols, ns, cols, (const float *)b[1].buf, qt_stride, state,
                       (float *)b[5].buf + (i0 + s0) * K, lanes_out, kept);
            gram_block(lanes_out, ns, kept, tile_gram, tile_lanes);
            if (with_output)
                out_block(lanes_out, ns, (const float *)b[2].buf + (i0 + s0) * K, row0 + i0 + s0, tile_out);
        }
        col_sketch(xb, n_block, cols, (const float *)b[2].buf + i0 * K, (float *)b[6].buf);
    }
    stats_finish(&acc, &stats);
    if (!stats.nonfinite) { /* else the numpy path redoes the tile: leave gram and lanes alone */
        double *gram = (double *)b[9].buf, *lanes = (double *)b[10].buf;
        for (int t = 0; t < GRAM_DIM * GRAM_DIM; t++) gram[t] += tile_gram[t];
        for (int t = 0; t < GRAM_DIM; t++) lanes[t] += tile_lanes[t];
        if (with_output) {
            double *out = (double *)b[11].buf;
            for (size_t t = 0; t < outputs; t++) out[t] += tile_out[t];
        }
        fold_blocks((const float *)b[5].buf, rows, K, 1, row0, (const float *)b[3].buf, (double *)b[7].buf);
        fold_blocks((const float *)b[6].buf, cols, 1, cols, col0, (const float *)b[3].buf, (double *)b[8].buf);
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(tile_out);
    while (got--) PyBuffer_Release(&b[got]);
    return Py_BuildValue("kddddddLO", (unsigned long)crc, stats.sums[0], stats.sums[1], stats.sums[2],
                         stats.sums[3], (double)stats.lowest, (double)stats.highest, stats.zeros,
                         stats.nonfinite ? Py_True : Py_False);
}

PyDoc_STRVAR(crc32_doc, "crc32(data, value=0) -> int: the same as zlib.crc32, faster on x86-64 with PCLMUL.");

static PyObject *py_crc32(PyObject *self, PyObject *args) {
    Py_buffer data;
    unsigned long value = 0;
    if (!PyArg_ParseTuple(args, "y*|k", &data, &value)) return NULL;
    uint32_t crc;
    Py_BEGIN_ALLOW_THREADS
    crc = crc32_update((uint32_t)value, (const unsigned char *)data.buf, (size_t)data.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    return PyLong_FromUnsignedLong(crc);
}

PyDoc_STRVAR(signs_doc,
"signs(start, stop, seed, out): out[(i - start) * 8 + m] = +-1 from splitmix64(i * 8 + m + seed),\n"
"the sign of its top bit (fingerprint._signs without the numpy temporaries).");

static PyObject *py_signs(PyObject *self, PyObject *args) {
    Py_ssize_t start, stop;
    unsigned long long seed;
    PyObject *out_o;
    if (!PyArg_ParseTuple(args, "nnKO", &start, &stop, &seed, &out_o)) return NULL;
    if (start < 0 || stop < start) {
        PyErr_SetString(PyExc_ValueError, "bad range");
        return NULL;
    }
    Py_buffer out;
    if (get_buffer(out_o, &out, 1, (stop - start) * K * 4, "out") < 0) return NULL;
    float *o = (float *)out.buf;
    for (Py_ssize_t t = 0; t < (stop - start) * K; t++) {
        uint64_t z = (uint64_t)(start * K + t) + seed + 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        o[t] = (z >> 63) ? -1.0f : 1.0f;
    }
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"reduce_tile", py_reduce_tile, METH_VARARGS, reduce_tile_doc},
    {"crc32", py_crc32, METH_VARARGS, crc32_doc},
    {"signs", py_signs, METH_VARARGS, signs_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fused", "Fused tile reduction for weightidx (optional; numpy is the fallback).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__fused(void) {
    crc_init();
#ifdef HAVE_CLMUL_X86
    __builtin_cpu_init();
    have_clmul = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
#endif
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyModule_AddIntConstant(m, "MIN_ELEMENTS", L) < 0 ||
                      PyModule_AddIntConstant(m, "SCRATCH_ELEMENTS", SKETCH_ELEMS) < 0 ||
                      PyModule_AddIntConstant(m, "GRAM_DIM", GRAM_DIM) < 0 ||
                      PyModule_AddIntConstant(m, "ROW_DIM", ROW_DIM) < 0 ||
                      PyModule_AddIntConstant(m, "OUT_BUCKETS", OUT_BUCKETS) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
