/* Batch normalization kernels (OpenMP), the C backend of fastreg.
 *
 * Exact definitions: fastreg/reference/batchnorm.py.  Arrays are (A, C, B), channel c being the
 * A * B elements x[:, c, :]; per-channel arrays are (C,).
 *
 * Two layouts, chosen from B and the dtype only:
 *   - channel layout (a row of a channel, B elements, is at least 64 bytes: NCHW): the data are
 *     cut into (chunk, channel) items, a chunk being one row of a channel (rows of 4 KB or
 *     more), a few rows, or a piece of one long row.  The ops that reduce and then apply
 *     (forward_train, backward) run in one of three ways (fr_bn_set_channel_strategy):
 *       whole channels per thread, when a channel's reduction input fits in a core's L2 and
 *       the channels share out evenly: a thread reduces a channel, computes its coefficients and
 *       applies them from its cache (x read once);
 *       threads sharing each channel otherwise: each reduces its block of the channel's chunks,
 *       waits for the others' partials (a counter per channel), computes the coefficients and
 *       applies them to its block from its L2 (read once, a channel of any size);
 *       two passes (only when asked): the reduction over all items in memory order, then the
 *       apply pass.
 *     Ops that only reduce or only apply make one pass over the items in memory order.
 *   - row layout (B small: channels-last, (N, C)): rows of L = C * B contiguous elements, cut
 *     into tiles of (row chunk, column block); each tile accumulates per-column partial sums
 *     four rows at a time, combined in row-chunk order, then over the B columns of each
 *     channel; the apply pass then takes each thread's last ~2 MB first (still in its caches).
 * Reductions accumulate in double: shifted sums for the statistics (the shift 0 when a sample
 * of the channel says its mean is within its spread, then without a subtraction per element),
 * so that float32 data with a large mean keeps its variance; sum g and sum g * (x - mean) for
 * the backward.  Every partial sum covers a fixed part of the data (fixed by the shape only) and
 * partials are added in a fixed order, and no fused multiply-add is used (-ffp-contract=off):
 * the results do not depend on the number of threads, the strategy or the instruction set
 * (portable, AVX2 and AVX-512 copies of the loops give the same bits).
 *
 * Threads: the count the Python wrapper sets for the call (fr_set_threads, from
 * fastreg._threads.plan); each phase is one parallel region, or none on one thread.
 * Element-wise parts work in the array's dtype with per-channel coefficients cast to it, in the
 * reference's order of operations.  Large outputs that the op does not read are written with
 * streaming stores through a small buffer (see the setting in fastreg.h).
 *
 * 16-bit data (float16, bfloat16: the _f16 / _bf16 entry points): the same loops instantiated
 * per storage type (FR_ELEM_<tag>, csrc/half.h), with float32 math and float32 per-channel
 * arrays: each element is widened exactly when read and each result rounded to nearest even
 * when written, and the data are cut as their float32 copy would be (the same partial sums):
 * the bits of widening, the float32 op and rounding (fastreg/_half.py's conversion passes), in
 * one pass over the 16-bit arrays.
 */
#include <math.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fastreg.h"
#include "elementwise.h"
#include "half.h"

#ifdef FR_EW_X86
#define FR_BN_AVX512 \
    __attribute__((target("avx2,avx512f,avx512dq,avx512bw,avx512vl,prefer-vector-width=512")))
#endif

/* ------------------------------------------------------------------ sizes */

#define FR_BN_CHUNK ((size_t)16384)          /* elements per partial sum, about */
#define FR_BN_PIECE ((size_t)16384)          /* longest piece of one row (channel layout) */
#define FR_BN_ROW_BYTES ((size_t)64)         /* rows of a channel shorter than this: row layout */
#define FR_BN_RUN_BYTES ((size_t)4096)       /* rows of a channel this long: one per chunk */
#define FR_BN_COLS ((size_t)1024)            /* column block of the row layout */
#define FR_BN_KMAX ((size_t)32)              /* most row chunks of the row layout */
#define FR_BN_PART_BYTES ((size_t)4 << 20)   /* most bytes of row-layout partial sums */
#define FR_BN_BUF_BYTES ((size_t)4096)       /* per-thread buffer of the streaming stores */
/* bn_apply (inference; also synchronized training's normalization pass) streams its output in
 * the "auto" mode from this size on, not from FR_EW_STREAM_MIN_BYTES like the training ops: the
 * next layer reads an inference output while it is still in the caches, and not streaming
 * measured 5-10% faster at 25-32 MB here.  The Numba backend's STREAM_MIN_BYTES is the same. */
#define FR_BN_APPLY_STREAM_MIN_BYTES ((size_t)64 << 20)
/* fused ops, channel layout: whole channels per thread when the arrays a channel's reduction
 * reads take at most this many bytes (then they stay in a core's L2 for the apply pass) */
#ifndef FR_BN_FUSE_BYTES
#define FR_BN_FUSE_BYTES ((size_t)512 << 10)
#endif
/* two-pass ops: bytes of its last reduced input per thread that the apply pass takes first, in
 * reverse order, while they are still in the caches (a core's L2 and its share of the L3) */
#ifndef FR_BN_REUSE_BYTES
#define FR_BN_REUSE_BYTES ((size_t)2 << 20)
#endif
/* Channel layout, fused and shared strategies: while a thread reduces one chunk of a channel it
 * prefetches the next (fr_bn_prefetch_chunk): see there for why and what it was measured
 * against. */
#ifndef FR_BN_PF_HINT
#define FR_BN_PF_HINT 2
#endif

/* row layout reductions: rows of at most this many bytes are prefetched FR_BN_PF_ROWS ahead */
#define FR_BN_PF_ROW_BYTES ((size_t)1024)
#define FR_BN_PF_ROWS ((size_t)16)

/* Prefetch of bytes [p, p + n) into the L2 cache. */
static inline void fr_bn_prefetch(const unsigned char *p, size_t n)
{
    for (size_t o = 0; o < n; o += 64)
        __builtin_prefetch(p + o, 0, FR_BN_PF_HINT);
}

/* Per-channel loops (O(C) or O(C K) work, and the shift sample) in an AVX2 copy chosen when the
 * process loads (GCC function multiversioning): element-wise IEEE operations, the same bits. */
#if defined(FR_EW_X86) && !defined(__SANITIZE_ADDRESS__)
#define FR_BN_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FR_BN_CLONES
#endif

/* ------------------------------------------------------------------ jobs */

/* reductions: statistics (shifted sums; STATS0 when every shift is 0: the same sums without the
 * subtraction), backward (through the ReLU mask) */
enum { FR_BN_RED_STATS = 0, FR_BN_RED_BWD = 1, FR_BN_RED_BWD_MASK = 2, FR_BN_RED_STATS0 = 3 };
#define FR_BN_IS_STATS(K) ((K) == FR_BN_RED_STATS || (K) == FR_BN_RED_STATS0)
/* forward apply flags */
enum { FR_BN_F_RES = 1, FR_BN_F_RELU = 2 };
/* backward apply flags */
enum { FR_BN_B_MASK = 1, FR_BN_B_TRAIN = 2, FR_BN_B_GRES = 4 };

typedef struct {
    size_t A, C, B, L;  /* L = C * B, the row length */
    int kind;           /* reduction: FR_BN_RED_* */
    int flags;          /* apply: FR_BN_F_* or FR_BN_B_* */
    int stream;         /* streaming stores for the apply's outputs */
    const void *x, *gy, *y, *res;
    void *out, *gres;   /* forward: out; backward: out = gx, gres */
    /* per-column shift / center of the row layout's reductions (double) */
    const double *rcol;
    /* apply coefficients in the dtype, per channel (channel layout) or per column (row layout):
     * forward center, scale, shift; backward center, a, b, d */
    const void *k[4];
} fr_bn_job;

typedef struct {
    /* partial sums of one chunk: rows [0, nrows) of `stride` elements from element off, len
     * elements each; ctr the channel's shift / center */
    void (*red_seg)(const fr_bn_job *j, size_t off, size_t stride, size_t nrows, size_t len,
                    double ctr, double *out);
    /* row layout: adds the sums of rows [r0, r1), columns [j0, j1) to p1, p2 (indexed j - j0) */
    void (*red_rows)(const fr_bn_job *j, size_t r0, size_t r1, size_t j0, size_t j1, double *p1,
                     double *p2);
    /* apply to a chunk of channel c / to a row-layout tile */
    void (*fwd_seg)(const fr_bn_job *j, size_t off, size_t stride, size_t nrows, size_t len,
                    size_t c);
    void (*fwd_rows)(const fr_bn_job *j, size_t r0, size_t r1, size_t j0, size_t j1);
    void (*bwd_seg)(const fr_bn_job *j, size_t off, size_t stride, size_t nrows, size_t len,
                    size_t c);
    void (*bwd_rows)(const fr_bn_job *j, size_t r0, size_t r1, size_t j0, size_t j1);
} fr_bn_kern;

/* ------------------------------------------------------------------ element loops */

/* 4-lane vectors (GCC vector extensions): native ymm registers in the AVX2 and AVX-512 builds
 * (Zen 4 runs 512-bit operations as two 256-bit halves anyway), xmm pairs in the portable one;
 * the same operations in the same order on every instruction set. */
typedef double fr_bn_v4d __attribute__((vector_size(32)));
typedef float fr_bn_v4f __attribute__((vector_size(16)));
typedef int32_t fr_bn_v4fi __attribute__((vector_size(16)));
typedef int64_t fr_bn_v4di __attribute__((vector_size(32)));

/* One 4-element step of a chunk reduction, into accumulators a1_Q, a2_Q (see red_seg); px, pg,
 * py point at the 16 elements of the step in the math type T. */
#define FR_BN_RED_STEP(Q, VT, VI, CVT)                                               \
    {                                                                                \
        VT xv;                                                                       \
        memcpy(&xv, px + 4 * Q, sizeof xv);                                          \
        fr_bn_v4d xd = CVT(xv);                                                      \
        if (KIND != FR_BN_RED_STATS0)                                                \
            xd -= cv;                                                                \
        if (FR_BN_IS_STATS(KIND)) {                                                  \
            FR_BN_KADDV(a1_##Q, k1_##Q, xd);                                          \
            FR_BN_KADDV(a2_##Q, k2_##Q, xd * xd);                                     \
        } else {                                                                     \
            VT gv;                                                                   \
            memcpy(&gv, pg + 4 * Q, sizeof gv);                                      \
            if (KIND == FR_BN_RED_BWD_MASK) {                                        \
                VT yv;                                                               \
                memcpy(&yv, py + 4 * Q, sizeof yv);                                  \
                gv = (VT)((VI)gv & (yv > zero));                                     \
            }                                                                        \
            fr_bn_v4d gd = CVT(gv);                                                  \
            FR_BN_KADDV(a1_##Q, k1_##Q, gd);                                          \
            FR_BN_KADDV(a2_##Q, k2_##Q, gd * xd);                                     \
        }                                                                            \
    }

/* Streaming copy with 64-byte stores (AVX-512 build of the loops). */
#ifdef FR_EW_X86
FR_BN_AVX512 static void fr_bn_stream_copy_avx512(void *dst, const void *src, size_t bytes)
{
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    size_t head = (64 - ((uintptr_t)d & 63)) & 63;
    if (head > bytes)
        head = bytes;
    memcpy(d, s, head);
    d += head, s += head, bytes -= head;
    for (; bytes >= 64; d += 64, s += 64, bytes -= 64)
        _mm512_stream_si512((void *)d, _mm512_loadu_si512((const void *)s));
    memcpy(d, s, bytes);
}
#endif

/* acc += v, compensated (Kahan) when KAHAN: FR_BN_KADD for doubles, FR_BN_KADDV for 4-double
 * vectors.  Once acc is infinite, (t - acc) - u is inf - inf: the compensation is then dropped
 * (e == e is false only for NaN), so that the sum keeps the plain sum's +-inf or NaN, as the
 * reference's float64 sums (a NaN compensation would turn +inf into NaN at the next step). */
#define FR_BN_KADD(acc, comp, v)                                \
    do {                                                        \
        if (KAHAN) {                                            \
            double u_ = (v) - (comp);                           \
            double t_ = (acc) + u_;                             \
            double e_ = (t_ - (acc)) - u_;                      \
            (comp) = fr_sel_f64(e_ == e_, e_, 0.0);             \
            (acc) = t_;                                         \
        } else {                                                \
            (acc) += (v);                                       \
        }                                                       \
    } while (0)
#define FR_BN_KADDV(acc, comp, v)                               \
    do {                                                        \
        if (KAHAN) {                                            \
            fr_bn_v4d u_ = (v) - (comp);                        \
            fr_bn_v4d t_ = (acc) + u_;                          \
            fr_bn_v4d e_ = (t_ - (acc)) - u_;                   \
            (comp) = (fr_bn_v4d)((fr_bn_v4di)e_ & (e_ == e_));   \
            (acc) = t_;                                         \
        } else {                                                \
            (acc) += (v);                                       \
        }                                                       \
    } while (0)


/* float16 with F16C (csrc/half.h: vcvtph2ps / vcvtps2ph, bit for bit the integer conversions):
 * storage type f16c, the float16 kernels of the AVX2 loops where the CPU has F16C.  Its single
 * elements convert as f16; blocks of 16 (the chunk reductions and the row layout's four-row
 * step, fr_bn_red4_f16c_wide) and the element loops go through fr_f16x8_load / fr_f16x8_store
 * (see fr_bn_fwd_elems_f16c). */
#if defined(FR_EW_X86) && defined(FR_HAVE_F16C_KERNELS)
#define FR_BN_HAVE_F16C 1
#define FR_ELEM_f16c uint16_t
FR_INLINE float fr_load_f16c(const uint16_t *a, size_t i) { return fr_load_f16(a, i); }
FR_INLINE void fr_store_f16c(uint16_t *a, size_t i, float v) { fr_store_f16(a, i, v); }
#define FR_BN_LOAD16_f16c(src, buf)                                                  \
    do {                                                                             \
        _mm256_storeu_ps((buf), fr_f16x8_load(src));                                 \
        _mm256_storeu_ps((buf) + 8, fr_f16x8_load((src) + 8));                       \
    } while (0)
#endif

/* bfloat16 with AVX2 (csrc/half.h: widened by a shift, rounded by fr_bf16x8_store, bit for bit
 * the integer conversions): storage type bf16b, the bfloat16 kernels of the AVX2 loops.  Its
 * single elements convert as bf16; the element loops go through fr_bf16_widen_avx2 /
 * fr_bf16_narrow_avx2 (see fr_bn_fwd_elems_bf16b). */
#if defined(FR_EW_X86) && defined(FR_HAVE_BF16_AVX2)
#define FR_BN_HAVE_BF16B 1
#define FR_ELEM_bf16b uint16_t
FR_INLINE float fr_load_bf16b(const uint16_t *a, size_t i) { return fr_load_bf16(a, i); }
FR_INLINE void fr_store_bf16b(uint16_t *a, size_t i, float v) { fr_store_bf16(a, i, v); }
#define FR_BN_LOAD16_bf16b(src, buf)                                                 \
    do {                                                                             \
        _mm256_storeu_ps((buf), fr_bf16x8_load(src));                                \
        _mm256_storeu_ps((buf) + 8, fr_bf16x8_load((src) + 8));                      \
    } while (0)
#endif

/* buf[0 .. 16) = the 16 elements at src widened exactly (unused for float32 / float64) */
#define FR_BN_LOAD16_GENERIC(SUF, src, buf)                                          \
    for (int q_ = 0; q_ < 16; q_++)                                                  \
    (buf)[q_] = fr_load_##SUF((src), (size_t)q_)
#define FR_BN_LOAD16_f32(src, buf) FR_BN_LOAD16_GENERIC(f32, src, buf)
#define FR_BN_LOAD16_f64(src, buf) FR_BN_LOAD16_GENERIC(f64, src, buf)
#define FR_BN_LOAD16_f16(src, buf) FR_BN_LOAD16_GENERIC(f16, src, buf)
#define FR_BN_LOAD16_bf16(src, buf) FR_BN_LOAD16_GENERIC(bf16, src, buf)

/* p = the 16 elements at src (storage type FR_ELEM_##SUF) in the math type T: src itself when
 * they are the same type, else buf, filled with the exact widened values (csrc/half.h). */
#define FR_BN_WIDEN16(SUF, T, src, buf, p)                                           \
    do {                                                                             \
        if (sizeof(FR_ELEM_##SUF) == sizeof(T)) {                                    \
            (p) = (const T *)(const void *)(src);                                    \
        } else {                                                                     \
            FR_BN_LOAD16_##SUF((src), (buf));                                        \
            (p) = (buf);                                                             \
        }                                                                            \
    } while (0)

/* The chunk reduction of a dtype in one instruction-set copy: CVT(v) widens a 4-lane vector of T
 * to 4 doubles.  GCC 12 splits __builtin_convertvector(float x 4 -> double x 4) into two 2-lane
 * conversions and an insert even where one vcvtps2pd ymm exists; the conversions are most of
 * the reduction's work (measured on Zen 1, one core: 0.51 ns per element with the split, 0.37
 * with _mm256_cvtps_pd), so the x86 copies of the float32 loop use the intrinsic.  Exact either
 * way: the same bits. */
#define FR_BN_DEFINE_RED_SEG(SUF, ISA, T, MS, VT, VI, ATTR, CVT)                                \
    /* Partial sums of a chunk: element i of a row goes to lane i % 16 of four 4-double         \
     * vector accumulators (carried across the chunk's rows), the rest of a row (len % 16       \
     * elements) to a scalar one; then lanes and rest are added in a fixed order.  Storage      \
     * type FR_ELEM_##SUF, math type T (16-bit data: each step's 16 elements widened to float32 \
     * first, exactly, then the float32 loop's operations). */                                  \
    FR_INLINE ATTR void fr_bn_red_seg_##SUF##_##ISA##_body(                                  \
        const fr_bn_job *j, size_t off, size_t stride, size_t nrows, size_t len, double ctr,    \
        double *out, const int KIND)                                                            \
    {                                                                                           \
        /* float64 data: compensated sums (their rounding errors would show in the mean,        \
         * invstd and backward coefficients at the level of the dtype's ulp); float32 data      \
         * has 29 bits to spare */                                                              \
        const int KAHAN = sizeof(T) == 8;                                                       \
        typedef FR_ELEM_##SUF S;                                                                \
        const S *x = (const S *)j->x + off;                                                     \
        const S *gy = FR_BN_IS_STATS(KIND) ? NULL : (const S *)j->gy + off;                     \
        const S *y = KIND == FR_BN_RED_BWD_MASK ? (const S *)j->y + off : NULL;                 \
        fr_bn_v4d a1_0 = {0}, a1_1 = {0}, a1_2 = {0}, a1_3 = {0};                               \
        fr_bn_v4d a2_0 = {0}, a2_1 = {0}, a2_2 = {0}, a2_3 = {0};                               \
        fr_bn_v4d k1_0 = {0}, k1_1 = {0}, k1_2 = {0}, k1_3 = {0}; /* compensations */           \
        fr_bn_v4d k2_0 = {0}, k2_1 = {0}, k2_2 = {0}, k2_3 = {0};                               \
        double t1 = 0.0, t2 = 0.0, tk1 = 0.0, tk2 = 0.0;                                        \
        const fr_bn_v4d cv = (fr_bn_v4d){0} + ctr;                                              \
        const VT zero = {0};                                                                    \
        (void)zero;                                                                             \
        for (size_t r = 0; r < nrows; r++) {                                                    \
            const size_t base = r * stride;                                                     \
            size_t i = 0;                                                                       \
            for (; i + 16 <= len; i += 16) {                                                    \
                T bx[16], bg[16], by[16];                                                       \
                const T *px, *pg = NULL, *py = NULL;                                            \
                FR_BN_WIDEN16(SUF, T, x + base + i, bx, px);                                    \
                if (!FR_BN_IS_STATS(KIND))                                                      \
                    FR_BN_WIDEN16(SUF, T, gy + base + i, bg, pg);                               \
                if (KIND == FR_BN_RED_BWD_MASK)                                                 \
                    FR_BN_WIDEN16(SUF, T, y + base + i, by, py);                                \
                (void)bg, (void)by, (void)pg, (void)py;                                         \
                FR_BN_RED_STEP(0, VT, VI, CVT)                                                     \
                FR_BN_RED_STEP(1, VT, VI, CVT)                                                     \
                FR_BN_RED_STEP(2, VT, VI, CVT)                                                     \
                FR_BN_RED_STEP(3, VT, VI, CVT)                                                     \
            }                                                                                   \
            for (; i < len; i++) {                                                              \
                double xd = (double)fr_load_##SUF(x, base + i) - ctr;                           \
                if (FR_BN_IS_STATS(KIND)) {                                                  \
                    FR_BN_KADD(t1, tk1, xd);                                                    \
                    FR_BN_KADD(t2, tk2, xd * xd);                                               \
                } else {                                                                        \
                    T g = fr_load_##SUF(gy, base + i);                                          \
                    if (KIND == FR_BN_RED_BWD_MASK)                                             \
                        g = fr_sel_##MS(fr_load_##SUF(y, base + i) > 0, g, (T)0);               \
                    FR_BN_KADD(t1, tk1, (double)g);                                             \
                    FR_BN_KADD(t2, tk2, (double)g * xd);                                        \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
        if (KAHAN) {                                                                            \
            a1_0 -= k1_0, a1_1 -= k1_1, a1_2 -= k1_2, a1_3 -= k1_3;                             \
            a2_0 -= k2_0, a2_1 -= k2_1, a2_2 -= k2_2, a2_3 -= k2_3;                             \
        }                                                                                       \
        fr_bn_v4d v1 = (a1_0 + a1_1) + (a1_2 + a1_3), v2 = (a2_0 + a2_1) + (a2_2 + a2_3);       \
        out[0] = ((v1[0] + v1[1]) + (v1[2] + v1[3])) + (t1 - tk1);                              \
        out[1] = ((v2[0] + v2[1]) + (v2[2] + v2[3])) + (t2 - tk2);                              \
    }                                                                                           \

/* The element loops of a storage type SUF (elements FR_ELEM_##SUF), math type T, MS its
 * suffix. */
#define FR_BN_DEFINE_ELEMS(SUF, T, MS)                                                          \
    /* out = act((x - c) * s + h [+ res]); coefficient pointers advance with i when CS (per   \
     * column), else they are one channel's. */                                                 \
    FR_INLINE void fr_bn_fwd_elems_##SUF(const FR_ELEM_##SUF *restrict x,                       \
                                         const FR_ELEM_##SUF *restrict res,                     \
                                         FR_ELEM_##SUF *dst, const T *restrict c,               \
                                         const T *restrict s,                                   \
                                         const T *restrict h, size_t n, const int FL,           \
                                         const int CS)                                          \
    {                                                                                           \
        const T c0 = c[0], s0 = s[0], h0 = h[0];                                                \
        _Pragma("omp simd")                                                                     \
        for (size_t i = 0; i < n; i++) {                                                        \
            T v = (fr_load_##SUF(x, i) - (CS ? c[i] : c0)) * (CS ? s[i] : s0) +                 \
                  (CS ? h[i] : h0);                                                             \
            if (FL & FR_BN_F_RES)                                                               \
                v = v + fr_load_##SUF(res, i);                                                  \
            if (FL & FR_BN_F_RELU)                                                              \
                v = v <= 0 ? (T)0 : v; /* NaN stays, -0.0 becomes +0.0 */                       \
            fr_store_##SUF(dst, i, v);                                                          \
        }                                                                                       \
    }                                                                                           \
                                                                                                \
    /* g = mask ? (y > 0 ? gy : 0) : gy; gres = g; gx = g * a [- (x - c) * b - d]. */           \
    FR_INLINE void fr_bn_bwd_elems_##SUF(const FR_ELEM_##SUF *restrict gy,                      \
                                         const FR_ELEM_##SUF *restrict x,                       \
                                         const FR_ELEM_##SUF *restrict y, FR_ELEM_##SUF *gx,    \
                                         FR_ELEM_##SUF *restrict gres,                          \
                                         const T *restrict c, const T *restrict a,              \
                                         const T *restrict b, const T *restrict d, size_t n,    \
                                         const int FL, const int CS)                            \
    {                                                                                           \
        const T c0 = c ? c[0] : 0, a0 = a[0], b0 = b ? b[0] : 0, d0 = d ? d[0] : 0;             \
        _Pragma("omp simd")                                                                     \
        for (size_t i = 0; i < n; i++) {                                                        \
            T g = fr_load_##SUF(gy, i);                                                         \
            if (FL & FR_BN_B_MASK)                                                              \
                g = fr_sel_##MS(fr_load_##SUF(y, i) > 0, g, (T)0);                              \
            if (FL & FR_BN_B_GRES)                                                              \
                fr_store_##SUF(gres, i, g);                                                     \
            T v = g * (CS ? a[i] : a0);                                                         \
            if (FL & FR_BN_B_TRAIN)                                                             \
                v = v - (fr_load_##SUF(x, i) - (CS ? c[i] : c0)) * (CS ? b[i] : b0) -           \
                    (CS ? d[i] : d0);                                                           \
            fr_store_##SUF(gx, i, v);                                                           \
        }                                                                                       \
    }
FR_BN_DEFINE_ELEMS(f32, float, f32)
FR_BN_DEFINE_ELEMS(f64, double, f64)
FR_BN_DEFINE_ELEMS(f16, float, f32)
FR_BN_DEFINE_ELEMS(bf16, float, f32)

/* Element loops through float32 blocks: FR_BN_BLK elements of each 16-bit input widened into
 * float32 buffers (WIDEN), the float32 loop on them, the results rounded back (NARROW): the
 * same operations as the per-element loops of FR_BN_DEFINE_ELEMS, so the same bits.  For
 * float16 with F16C's eight-at-a-time conversions (measured, NCHW (32, 64, 56, 56) apply on one
 * Zen 1 core: 3.9 ms, the integer conversions per element 16 ms, float32 3.7 ms); for
 * bfloat16 with AVX2's (fr_bf16_widen_avx2 / fr_bf16_narrow_avx2: the same apply 6.6 -> 4.9 ms,
 * training forward 9.8 -> 8.2 ms, backward 12.4 -> 11.6 ms).  In place (dst == x, gx == gy)
 * works: a block is read whole before it is written. */
#define FR_BN_BLK ((size_t)256)
#define FR_BN_DEFINE_BLOCKS(SUF, ATTR, WIDEN, NARROW)                                            \
    ATTR FR_INLINE void fr_bn_fwd_blocks_##SUF(const uint16_t *x, const uint16_t *res,            \
                                               uint16_t *dst, const float *c, const float *s,     \
                                               const float *h, size_t n, const int FL,            \
                                               const int CS)                                      \
    {                                                                                             \
        float xf[FR_BN_BLK], rf[FR_BN_BLK], of[FR_BN_BLK];                                        \
        for (size_t k = 0; k < n; k += FR_BN_BLK) {                                               \
            size_t m = n - k < FR_BN_BLK ? n - k : FR_BN_BLK;                                     \
            WIDEN(x + k, xf, m);                                                                  \
            if (FL & FR_BN_F_RES)                                                                 \
                WIDEN(res + k, rf, m);                                                            \
            fr_bn_fwd_elems_f32(xf, rf, of, CS ? c + k : c, CS ? s + k : s, CS ? h + k : h, m,    \
                                FL, CS);                                                          \
            NARROW(of, dst + k, m);                                                               \
        }                                                                                         \
    }                                                                                             \
    ATTR FR_INLINE void fr_bn_bwd_blocks_##SUF(const uint16_t *gy, const uint16_t *x,             \
                                               const uint16_t *y, uint16_t *gx, uint16_t *gres,   \
                                               const float *c, const float *a, const float *b,    \
                                               const float *d, size_t n, const int FL,            \
                                               const int CS)                                      \
    {                                                                                             \
        float gf[FR_BN_BLK], xf[FR_BN_BLK], yf[FR_BN_BLK], of[FR_BN_BLK], rf[FR_BN_BLK];          \
        for (size_t k = 0; k < n; k += FR_BN_BLK) {                                               \
            size_t m = n - k < FR_BN_BLK ? n - k : FR_BN_BLK;                                     \
            WIDEN(gy + k, gf, m);                                                                 \
            if (FL & FR_BN_B_TRAIN)                                                               \
                WIDEN(x + k, xf, m);                                                              \
            if (FL & FR_BN_B_MASK)                                                                \
                WIDEN(y + k, yf, m);                                                              \
            fr_bn_bwd_elems_f32(gf, xf, yf, of, rf, c && CS ? c + k : c, CS ? a + k : a,          \
                                b && CS ? b + k : b, d && CS ? d + k : d, m, FL, CS);             \
            NARROW(of, gx + k, m);                                                                \
            if (FL & FR_BN_B_GRES)                                                                \
                NARROW(rf, gres + k, m);                                                          \
        }                                                                                         \
    }

/* The element loops of a block storage type: compiled for ATTR, so called, not inlined, from
 * the loops, with the flags as a switch. */
#define FR_BN_DEFINE_BLOCK_ELEMS(SUF, ATTR)                                                      \
    ATTR __attribute__((noinline)) static void fr_bn_fwd_elems_##SUF(                            \
        const uint16_t *x, const uint16_t *res, uint16_t *dst, const float *c, const float *s,   \
        const float *h, size_t n, const int FL, const int CS)                                    \
    {                                                                                            \
        switch ((FL & 3) * 2 + (CS != 0)) {                                                      \
            FR_BN_FWD_CASE(SUF, 0, 0) FR_BN_FWD_CASE(SUF, 0, 1) FR_BN_FWD_CASE(SUF, 1, 0)        \
            FR_BN_FWD_CASE(SUF, 1, 1) FR_BN_FWD_CASE(SUF, 2, 0) FR_BN_FWD_CASE(SUF, 2, 1)        \
            FR_BN_FWD_CASE(SUF, 3, 0) FR_BN_FWD_CASE(SUF, 3, 1)                                  \
        }                                                                                        \
    }                                                                                            \
    ATTR __attribute__((noinline)) static void fr_bn_bwd_elems_##SUF(                            \
        const uint16_t *gy, const uint16_t *x, const uint16_t *y, uint16_t *gx, uint16_t *gres,  \
        const float *c, const float *a, const float *b, const float *d, size_t n, const int FL,  \
        const int CS)                                                                            \
    {                                                                                            \
        switch ((FL & 7) * 2 + (CS != 0)) {                                                      \
            FR_BN_BWD_CASE(SUF, 0, 0) FR_BN_BWD_CASE(SUF, 0, 1) FR_BN_BWD_CASE(SUF, 1, 0)        \
            FR_BN_BWD_CASE(SUF, 1, 1) FR_BN_BWD_CASE(SUF, 2, 0) FR_BN_BWD_CASE(SUF, 2, 1)        \
            FR_BN_BWD_CASE(SUF, 3, 0) FR_BN_BWD_CASE(SUF, 3, 1) FR_BN_BWD_CASE(SUF, 4, 0)        \
            FR_BN_BWD_CASE(SUF, 4, 1) FR_BN_BWD_CASE(SUF, 5, 0) FR_BN_BWD_CASE(SUF, 5, 1)        \
            FR_BN_BWD_CASE(SUF, 6, 0) FR_BN_BWD_CASE(SUF, 6, 1) FR_BN_BWD_CASE(SUF, 7, 0)        \
            FR_BN_BWD_CASE(SUF, 7, 1)                                                            \
        }                                                                                        \
    }
#define FR_BN_FWD_CASE(SUF, F, C_)                                                   \
    case F * 2 + C_:                                                                 \
        fr_bn_fwd_blocks_##SUF(x, res, dst, c, s, h, n, F, C_);                      \
        break;
#define FR_BN_BWD_CASE(SUF, F, C_)                                                   \
    case F * 2 + C_:                                                                 \
        fr_bn_bwd_blocks_##SUF(gy, x, y, gx, gres, c, a, b, d, n, F, C_);            \
        break;

#ifdef FR_BN_HAVE_F16C
/* float16 with F16C (fr_f16_widen_f16c / fr_f16_narrow_f16c) */
FR_BN_DEFINE_BLOCKS(f16c, FR_F16C, fr_f16_widen_f16c, fr_f16_narrow_f16c)
FR_BN_DEFINE_BLOCK_ELEMS(f16c, FR_F16C)
#endif
#ifdef FR_BN_HAVE_BF16B
/* bfloat16 with AVX2 (fr_bf16_widen_avx2 / fr_bf16_narrow_avx2) */
FR_BN_DEFINE_BLOCKS(bf16b, FR_EW_AVX2, fr_bf16_widen_avx2, fr_bf16_narrow_avx2)
FR_BN_DEFINE_BLOCK_ELEMS(bf16b, FR_EW_AVX2)
#endif

/* The four-row column loops of the row-layout reductions (FR_BN_DEFINE_LOOPS(SUF, T, MS)): per
 * column i < w, the terms of four rows (x0 = X + O, x1 = x0 + L, ..., likewise grad_y from G and
 * y from Y) are added first, ((t0 + t1) + (t2 + t3)), then to the column's sums p1[i], p2[i]
 * (compensated in k1, k2 for float64 data).  In scope: S, L, sh, p1, p2, k1, k2, w, KIND,
 * KAHAN.  A macro, so that fr_bn_red_rows_<SUF>_body keeps the loops inline as they were
 * written there (the float32 / float64 / bfloat16 machine code did not change), and
 * fr_bn_red4_<SUF> has them as a function for fr_bn_red4_f16c_wide. */
#define FR_BN_RED4_COLS(SUF, T, MS, X, G, Y, O)                                                 \
    do {                                                                                        \
        const S *restrict x0 = (X) + (O), *restrict x1 = x0 + L;                                \
        const S *restrict x2 = x1 + L, *restrict x3 = x2 + L;                                   \
        if (FR_BN_IS_STATS(KIND)) {                                                             \
            _Pragma("omp simd")                                                                 \
            for (size_t i = 0; i < w; i++) {                                                    \
                double d0 = (double)fr_load_##SUF(x0, i), d1 = (double)fr_load_##SUF(x1, i);    \
                double d2 = (double)fr_load_##SUF(x2, i), d3 = (double)fr_load_##SUF(x3, i);    \
                if (KIND != FR_BN_RED_STATS0) {                                                 \
                    double c = sh[i];                                                           \
                    d0 -= c, d1 -= c, d2 -= c, d3 -= c;                                         \
                }                                                                               \
                FR_BN_KADD(p1[i], k1[i], (d0 + d1) + (d2 + d3));                                \
                FR_BN_KADD(p2[i], k2[i], (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3));            \
            }                                                                                   \
        } else {                                                                                \
            const S *restrict g0 = (G) + (O), *restrict g1 = g0 + L;                            \
            const S *restrict g2 = g1 + L, *restrict g3 = g2 + L;                               \
            const S *restrict y0 = (Y) ? (Y) + (O) : g0, *restrict y1 = y0 + L;                 \
            const S *restrict y2 = y1 + L, *restrict y3 = y2 + L;                               \
            _Pragma("omp simd")                                                                 \
            for (size_t i = 0; i < w; i++) {                                                    \
                double c = sh[i];                                                               \
                T h0 = fr_load_##SUF(g0, i), h1 = fr_load_##SUF(g1, i);                         \
                T h2 = fr_load_##SUF(g2, i), h3 = fr_load_##SUF(g3, i);                         \
                if (KIND == FR_BN_RED_BWD_MASK) {                                               \
                    h0 = fr_sel_##MS(fr_load_##SUF(y0, i) > 0, h0, (T)0);                       \
                    h1 = fr_sel_##MS(fr_load_##SUF(y1, i) > 0, h1, (T)0);                       \
                    h2 = fr_sel_##MS(fr_load_##SUF(y2, i) > 0, h2, (T)0);                       \
                    h3 = fr_sel_##MS(fr_load_##SUF(y3, i) > 0, h3, (T)0);                       \
                }                                                                               \
                double e0 = (double)h0, e1 = (double)h1, e2 = (double)h2, e3 = (double)h3;      \
                double d0 = (double)fr_load_##SUF(x0, i) - c;                                   \
                double d1 = (double)fr_load_##SUF(x1, i) - c;                                   \
                double d2 = (double)fr_load_##SUF(x2, i) - c;                                   \
                double d3 = (double)fr_load_##SUF(x3, i) - c;                                   \
                FR_BN_KADD(p1[i], k1[i], (e0 + e1) + (e2 + e3));                                \
                FR_BN_KADD(p2[i], k2[i], (e0 * d0 + e1 * d1) + (e2 * d2 + e3 * d3));            \
            }                                                                                   \
        }                                                                                       \
    } while (0)

/* The attribute of fr_bn_red_rows_<SUF>_body, and whether storage type SUF has its own four-row
 * step, run instead of the loops (FR_BN_WIDE4_<SUF>(args) is 1 after running it, else 0, its
 * arguments unused): float16 with F16C (fr_bn_red4_f16c_wide, below). */
#define FR_BN_RATTR_f32
#define FR_BN_RATTR_f64
#define FR_BN_RATTR_f16
#define FR_BN_RATTR_bf16
#define FR_BN_RATTR_bf16b
#define FR_BN_RATTR_f16c FR_F16C
#define FR_BN_WIDE4_f32(...) 0
#define FR_BN_WIDE4_f64(...) 0
#define FR_BN_WIDE4_f16(...) 0
#define FR_BN_WIDE4_bf16(...) 0
#define FR_BN_WIDE4_bf16b(...) 0
#define FR_BN_WIDE4_f16c(...) (fr_bn_red4_f16c_wide(__VA_ARGS__), 1)

/* Per storage type SUF (elements FR_ELEM_##SUF): T the math type, MS its suffix. */
#define FR_BN_DEFINE_LOOPS(SUF, T, MS)                                                          \
    /* the loops of FR_BN_RED4_COLS as a function: x, gy, y the first of the four rows          \
     * (fr_bn_red4_f16c_wide calls fr_bn_red4_f32 and fr_bn_red4_f16) */                        \
    FR_INLINE void fr_bn_red4_##SUF(const FR_ELEM_##SUF *x, const FR_ELEM_##SUF *gy,            \
                                    const FR_ELEM_##SUF *y, size_t L, const double *restrict sh, \
                                    double *restrict p1, double *restrict p2,                   \
                                    double *restrict k1, double *restrict k2, size_t w,         \
                                    const int KIND)                                             \
    {                                                                                           \
        typedef FR_ELEM_##SUF S;                                                                \
        const int KAHAN = sizeof(T) == 8; /* as in red_seg */                                   \
        FR_BN_RED4_COLS(SUF, T, MS, x, gy, y, 0);                                               \
    }                                                                                           \
                                                                                                \
    /* Row layout: per-column sums over rows [r0, r1), in groups of four rows (their four terms \
     * are added first, ((t0 + t1) + (t2 + t3)), then to the column's sum): the sums stay in    \
     * memory (L1) and are loaded and stored once per four rows. */                             \
    FR_INLINE FR_BN_RATTR_##SUF void fr_bn_red_rows_##SUF##_body(                               \
        const fr_bn_job *j, size_t r0, size_t r1, size_t j0, size_t j1, double *restrict p1,    \
        double *restrict p2, const int KIND)                                                    \
    {                                                                                           \
        typedef FR_ELEM_##SUF S;                                                                \
        const size_t L = j->L, w = j1 - j0;                                                     \
        const double *restrict sh = j->rcol + j0;                                               \
        const int KAHAN = sizeof(T) == 8; /* as in red_seg */                                   \
        double k1[2 * FR_BN_COLS], k2[2 * FR_BN_COLS]; /* w <= 2 * FR_BN_COLS */                \
        if (KAHAN) {                                                                            \
            memset(k1, 0, w * sizeof(double));                                                  \
            memset(k2, 0, w * sizeof(double));                                                  \
        }                                                                                       \
        const S *xb = (const S *)j->x + j0;                                                     \
        const S *gb = FR_BN_IS_STATS(KIND) ? NULL : (const S *)j->gy + j0;                      \
        const S *yb = KIND == FR_BN_RED_BWD_MASK ? (const S *)j->y + j0 : NULL;                 \
        /* short rows: the four rows' loads jump between their cache lines, which the hardware  \
         * prefetchers follow badly; fetch FR_BN_PF_ROWS rows ahead (measured, 64 columns of    \
         * float32, one thread: 3.4 ms instead of 5.3 ms per 25.7 MB, row by row 4.3 ms) */     \
        const int pf = w * sizeof(S) <= FR_BN_PF_ROW_BYTES;                                     \
        size_t r = r0;                                                                          \
        for (; r + 4 <= r1; r += 4) {                                                           \
            if (pf && r + FR_BN_PF_ROWS + 4 <= j->A) {                                          \
                const size_t ahead = (r + FR_BN_PF_ROWS) * L;                                   \
                fr_bn_prefetch((const unsigned char *)(xb + ahead), 4 * w * sizeof(S));         \
                if (gb)                                                                         \
                    fr_bn_prefetch((const unsigned char *)(gb + ahead), 4 * w * sizeof(S));     \
                if (yb)                                                                         \
                    fr_bn_prefetch((const unsigned char *)(yb + ahead), 4 * w * sizeof(S));     \
            }                                                                                   \
            if (!FR_BN_WIDE4_##SUF(xb + r * L, FR_BN_IS_STATS(KIND) ? NULL : gb + r * L,        \
                                   KIND == FR_BN_RED_BWD_MASK ? yb + r * L : NULL, L, sh, p1,   \
                                   p2, k1, k2, w, KIND))                                        \
                FR_BN_RED4_COLS(SUF, T, MS, xb, gb, yb, r * L);                                 \
        }                                                                                       \
        for (; r < r1; r++) {                                                                   \
            const S *restrict xr = xb + r * L;                                                  \
            if (FR_BN_IS_STATS(KIND)) {                                                      \
                _Pragma("omp simd")                                                             \
                for (size_t i = 0; i < w; i++) {                                                \
                    double d = (double)fr_load_##SUF(xr, i);                                    \
                    if (KIND != FR_BN_RED_STATS0)                                               \
                        d -= sh[i];                                                             \
                    FR_BN_KADD(p1[i], k1[i], d);                                                \
                    FR_BN_KADD(p2[i], k2[i], d * d);                                            \
                }                                                                               \
            } else {                                                                            \
                const S *restrict gr = gb + r * L;                                              \
                const S *restrict yr = yb ? yb + r * L : gr;                                    \
                _Pragma("omp simd")                                                             \
                for (size_t i = 0; i < w; i++) {                                                \
                    T g = fr_load_##SUF(gr, i);                                                 \
                    if (KIND == FR_BN_RED_BWD_MASK)                                             \
                        g = fr_sel_##MS(fr_load_##SUF(yr, i) > 0, g, (T)0);                     \
                    double gd = (double)g;                                                      \
                    FR_BN_KADD(p1[i], k1[i], gd);                                               \
                    FR_BN_KADD(p2[i], k2[i], gd * ((double)fr_load_##SUF(xr, i) - sh[i]));      \
                }                                                                               \
            }                                                                                   \
        }                                                                                       \
        if (KAHAN)                                                                              \
            for (size_t i = 0; i < w; i++) {                                                    \
                p1[i] -= k1[i];                                                                 \
                p2[i] -= k2[i];                                                                 \
            }                                                                                   \
    }                                                                                           \
                                                                                                \
    /* Elements [e0, e0 + n) of the output, contiguous: channel c's coefficients, or (CS, row   \
     * layout) each column's, the run then being cut where rows end.  The elements before the   \
     * output's first 64-byte boundary go first, so that the vector loop's stores are aligned   \
     * (an AVX-512 store across two lines costs two: NumPy's large arrays start 16 bytes past a \
     * boundary; in L2, float32, 0.12-0.14 against 0.09-0.11 ns per element).  With streaming   \
     * stores the results go through buf in blocks that start on those boundaries (only the     \
     * run's first and last lines are partly written, with ordinary stores). */                 \
    FR_INLINE void fr_bn_fwd_run_##SUF(const fr_bn_job *j, size_t e0, size_t n, size_t c,       \
                                       const int FL, const int CS,                              \
                                       void (*copy)(void *, const void *, size_t))              \
    {                                                                                           \
        typedef FR_ELEM_##SUF S;                                                                \
        const S *x = (const S *)j->x, *res = (FL & FR_BN_F_RES) ? (const S *)j->res : NULL;     \
        const T *k0 = (const T *)j->k[0], *k1 = (const T *)j->k[1], *k2 = (const T *)j->k[2];   \
        S *out = (S *)j->out;                                                                   \
        const int stream = j->stream;                                                           \
        _Alignas(64) S buf[FR_BN_BUF_BYTES / sizeof(S)];                                        \
        const size_t blk = stream ? FR_BN_BUF_BYTES / sizeof(S) : n;                            \
        size_t head = fr_ew_head(out + e0, sizeof(S), n); /* also unstreamed: see above */      \
        for (size_t k = 0; k < n;) {                                                            \
            size_t m = head ? head : (n - k < blk ? n - k : blk);                               \
            head = 0;                                                                           \
            S *dst = stream ? buf : out + e0 + k;                                               \
            for (size_t done = 0; done < m;) {                                                  \
                size_t e = e0 + k + done, seg = m - done, q = c;                                \
                if (CS) {                                                                       \
                    q = e % j->L;                                                               \
                    if (seg > j->L - q)                                                         \
                        seg = j->L - q;                                                         \
                }                                                                               \
                fr_bn_fwd_elems_##SUF(x + e, res ? res + e : NULL, dst + done, k0 + q, k1 + q,  \
                                      k2 + q, seg, FL, CS);                                     \
                done += seg;                                                                    \
            }                                                                                   \
            if (stream)                                                                         \
                copy(out + e0 + k, buf, m * sizeof(S));                                         \
            k += m;                                                                             \
        }                                                                                       \
    }                                                                                           \
                                                                                                \
    FR_INLINE void fr_bn_bwd_run_##SUF(const fr_bn_job *j, size_t e0, size_t n, size_t c,       \
                                       const int FL, const int CS,                              \
                                       void (*copy)(void *, const void *, size_t))              \
    {                                                                                           \
        typedef FR_ELEM_##SUF S;                                                                \
        const S *gy = (const S *)j->gy;                                                         \
        const S *x = (FL & FR_BN_B_TRAIN) ? (const S *)j->x : NULL;                             \
        const S *y = (FL & FR_BN_B_MASK) ? (const S *)j->y : NULL;                              \
        const T *k0 = (const T *)j->k[0], *k1 = (const T *)j->k[1];                             \
        const T *k2 = (const T *)j->k[2], *k3 = (const T *)j->k[3];                             \
        S *gx = (S *)j->out, *gres = (FL & FR_BN_B_GRES) ? (S *)j->gres : NULL;                 \
        const int stream = j->stream;                                                           \
        _Alignas(64) S buf[FR_BN_BUF_BYTES / sizeof(S)];                                        \
        _Alignas(64) S buf2[FR_BN_BUF_BYTES / sizeof(S)];                                       \
        const size_t blk = stream ? FR_BN_BUF_BYTES / sizeof(S) : n;                            \
        size_t head = fr_ew_head(gx + e0, sizeof(S), n); /* as in fr_bn_fwd_run */             \
        for (size_t k = 0; k < n;) {                                                            \
            size_t m = head ? head : (n - k < blk ? n - k : blk);                               \
            head = 0;                                                                           \
            S *dst = stream ? buf : gx + e0 + k;                                                \
            S *dst2 = !gres ? NULL : stream ? buf2 : gres + e0 + k;                             \
            for (size_t done = 0; done < m;) {                                                  \
                size_t e = e0 + k + done, seg = m - done, q = c;                                \
                if (CS) {                                                                       \
                    q = e % j->L;                                                               \
                    if (seg > j->L - q)                                                         \
                        seg = j->L - q;                                                         \
                }                                                                               \
                fr_bn_bwd_elems_##SUF(gy + e, x ? x + e : NULL, y ? y + e : NULL, dst + done,   \
                                      dst2 ? dst2 + done : NULL, k0 ? k0 + q : NULL, k1 + q,    \
                                      k2 ? k2 + q : NULL, k3 ? k3 + q : NULL, seg, FL, CS);     \
                done += seg;                                                                    \
            }                                                                                   \
            if (stream) {                                                                       \
                copy(gx + e0 + k, buf, m * sizeof(S));                                          \
                if (gres)                                                                       \
                    copy(gres + e0 + k, buf2, m * sizeof(S));                                   \
            }                                                                                   \
            k += m;                                                                             \
        }                                                                                       \
    }                                                                                           \
                                                                                                \
    FR_INLINE void fr_bn_fwd_seg_##SUF##_body(const fr_bn_job *j, size_t off, size_t stride,    \
                                              size_t nrows, size_t len, size_t c,               \
                                              void (*copy)(void *, const void *, size_t),       \
                                              const int FL)                                     \
    {                                                                                           \
        for (size_t r = 0; r < nrows; r++)                                                      \
            fr_bn_fwd_run_##SUF(j, off + r * stride, len, c, FL, 0, copy);                      \
    }                                                                                           \
    /* a tile of whole rows is one contiguous run */                                            \
    FR_INLINE void fr_bn_fwd_rows_##SUF##_body(const fr_bn_job *j, size_t r0, size_t r1,        \
                                               size_t j0, size_t j1,                            \
                                               void (*copy)(void *, const void *, size_t),      \
                                               const int FL)                                    \
    {                                                                                           \
        if (j0 == 0 && j1 == j->L)                                                              \
            fr_bn_fwd_run_##SUF(j, r0 * j->L, (r1 - r0) * j->L, 0, FL, 1, copy);                \
        else                                                                                    \
            for (size_t r = r0; r < r1; r++)                                                    \
                fr_bn_fwd_run_##SUF(j, r * j->L + j0, j1 - j0, 0, FL, 1, copy);                 \
    }                                                                                           \
    FR_INLINE void fr_bn_bwd_seg_##SUF##_body(const fr_bn_job *j, size_t off, size_t stride,    \
                                              size_t nrows, size_t len, size_t c,               \
                                              void (*copy)(void *, const void *, size_t),       \
                                              const int FL)                                     \
    {                                                                                           \
        for (size_t r = 0; r < nrows; r++)                                                      \
            fr_bn_bwd_run_##SUF(j, off + r * stride, len, c, FL, 0, copy);                      \
    }                                                                                           \
    FR_INLINE void fr_bn_bwd_rows_##SUF##_body(const fr_bn_job *j, size_t r0, size_t r1,        \
                                               size_t j0, size_t j1,                            \
                                               void (*copy)(void *, const void *, size_t),      \
                                               const int FL)                                    \
    {                                                                                           \
        if (j0 == 0 && j1 == j->L)                                                              \
            fr_bn_bwd_run_##SUF(j, r0 * j->L, (r1 - r0) * j->L, 0, FL, 1, copy);                \
        else                                                                                    \
            for (size_t r = r0; r < r1; r++)                                                    \
                fr_bn_bwd_run_##SUF(j, r * j->L + j0, j1 - j0, 0, FL, 1, copy);                 \
    }

/* Per storage type (FR_ELEM_<SUF>, csrc/half.h), with its math type and that type's suffix:
 * the 16-bit types load each element widened to float32 (exact) and store float32 results
 * rounded to nearest even, with the float32 loops' arithmetic in between: the bits of widening,
 * the float32 op and rounding (fastreg/_half.py's conversion passes), in one pass. */
FR_BN_DEFINE_LOOPS(f32, float, f32)
FR_BN_DEFINE_LOOPS(f64, double, f64)
FR_BN_DEFINE_LOOPS(f16, float, f32)
FR_BN_DEFINE_LOOPS(bf16, float, f32)
#ifdef FR_BN_HAVE_F16C
/* float16 with F16C, the four-row step of the row-layout reductions.  fr_load_f16c converts an
 * element at a time with the integer code (vectorized by gcc, but a dozen operations per
 * element); here each block of FR_BN_RW = 16 columns of the four rows (x, and grad_y and y
 * where KIND reads them) is widened by F16C (fr_f16x8_load) into float32 buffers on the stack
 * (768 bytes at most), then the float32 step fr_bn_red4_f32 runs on them with a constant trip
 * count (fully vectorized, no peeling); then one block of 8 columns where w % 16 >= 8, and the
 * last w % 8 columns take the portable float16 step.
 * The same float32 values (fr_f16x8_load keeps signalling NaNs as the integer code does), the
 * same operations per column in the same order: the same bits.  Measured on one core (Zen 1),
 * (8192, 1024) statistics: 7.7 ms converting each element by fr_load_f16c, 6.3 ms with blocks of
 * 256 columns (a variable trip count), 4.6 ms with these; bfloat16 4.1 ms, float32 3.6 ms. */
#define FR_BN_RW ((size_t)16)
/* columns [i, i + n) of the four rows, n = 16 or 8 (a constant once inlined) */
FR_INLINE FR_F16C void fr_bn_red4_f16c_block(const uint16_t *x, const uint16_t *gy,
                                             const uint16_t *y, size_t L, const double *sh,
                                             double *p1, double *p2, double *k1, double *k2,
                                             size_t i, const size_t n, const int KIND)
{
    float xw[4 * FR_BN_RW], gw[4 * FR_BN_RW], yw[4 * FR_BN_RW];
    for (size_t q = 0; q < 4; q++)
        for (size_t e = 0; e < n; e += 8) {
            const size_t o = q * L + i + e, ob = q * n + e;
            _mm256_storeu_ps(xw + ob, fr_f16x8_load(x + o));
            if (!FR_BN_IS_STATS(KIND))
                _mm256_storeu_ps(gw + ob, fr_f16x8_load(gy + o));
            if (KIND == FR_BN_RED_BWD_MASK)
                _mm256_storeu_ps(yw + ob, fr_f16x8_load(y + o));
        }
    fr_bn_red4_f32(xw, FR_BN_IS_STATS(KIND) ? NULL : gw, KIND == FR_BN_RED_BWD_MASK ? yw : NULL,
                   n, sh + i, p1 + i, p2 + i, k1 + i, k2 + i, n, KIND);
}
FR_INLINE FR_F16C void fr_bn_red4_f16c_wide(const uint16_t *x, const uint16_t *gy,
                                            const uint16_t *y, size_t L, const double *sh,
                                            double *p1, double *p2, double *k1, double *k2,
                                            size_t w, const int KIND)
{
    size_t i = 0;
    for (; i + FR_BN_RW <= w; i += FR_BN_RW)
        fr_bn_red4_f16c_block(x, gy, y, L, sh, p1, p2, k1, k2, i, FR_BN_RW, KIND);
    if (i + 8 <= w) {
        fr_bn_red4_f16c_block(x, gy, y, L, sh, p1, p2, k1, k2, i, 8, KIND);
        i += 8;
    }
    if (i < w)
        fr_bn_red4_f16(x + i, FR_BN_IS_STATS(KIND) ? NULL : gy + i,
                       KIND == FR_BN_RED_BWD_MASK ? y + i : NULL, L, sh + i, p1 + i, p2 + i,
                       k1 + i, k2 + i, w - i, KIND);
}
FR_BN_DEFINE_LOOPS(f16c, float, f32)
#endif
#ifdef FR_BN_HAVE_BF16B
FR_BN_DEFINE_LOOPS(bf16b, float, f32)
#endif

#define FR_BN_NOATTR
#define FR_BN_CVT_GENERIC(v) __builtin_convertvector(v, fr_bn_v4d)
FR_BN_DEFINE_RED_SEG(f32, portable, float, f32, fr_bn_v4f, fr_bn_v4fi,
                     FR_BN_NOATTR, FR_BN_CVT_GENERIC)
FR_BN_DEFINE_RED_SEG(f64, portable, double, f64, fr_bn_v4d, fr_bn_v4di,
                     FR_BN_NOATTR, FR_BN_CVT_GENERIC)
FR_BN_DEFINE_RED_SEG(f16, portable, float, f32, fr_bn_v4f, fr_bn_v4fi,
                     FR_BN_NOATTR, FR_BN_CVT_GENERIC)
FR_BN_DEFINE_RED_SEG(bf16, portable, float, f32, fr_bn_v4f, fr_bn_v4fi,
                     FR_BN_NOATTR, FR_BN_CVT_GENERIC)
#ifdef FR_EW_X86
#define FR_BN_CVT_F32_X86(v) ((fr_bn_v4d)_mm256_cvtps_pd((__m128)(v)))
FR_BN_DEFINE_RED_SEG(f32, avx2, float, f32, fr_bn_v4f, fr_bn_v4fi, FR_EW_AVX2, FR_BN_CVT_F32_X86)
FR_BN_DEFINE_RED_SEG(f64, avx2, double, f64, fr_bn_v4d, fr_bn_v4di, FR_EW_AVX2, FR_BN_CVT_GENERIC)
FR_BN_DEFINE_RED_SEG(bf16b, avx2, float, f32, fr_bn_v4f, fr_bn_v4fi, FR_EW_AVX2, FR_BN_CVT_F32_X86)
FR_BN_DEFINE_RED_SEG(f32, avx512, float, f32, fr_bn_v4f, fr_bn_v4fi,
                     FR_BN_AVX512, FR_BN_CVT_F32_X86)
FR_BN_DEFINE_RED_SEG(f64, avx512, double, f64, fr_bn_v4d, fr_bn_v4di,
                     FR_BN_AVX512, FR_BN_CVT_GENERIC)
#endif
#ifdef FR_BN_HAVE_F16C
FR_BN_DEFINE_RED_SEG(f16c, avx2, float, f32, fr_bn_v4f, fr_bn_v4fi, FR_F16C, FR_BN_CVT_F32_X86)
#endif

/* One instruction-set copy of the six kernels of a dtype: the run-time kind and flags become
 * compile-time constants of separate inlined copies of the loops. */
#define FR_BN_SW3(FN, ...)                                           \
    switch (j->kind) {                                               \
    case FR_BN_RED_STATS: FN(__VA_ARGS__, FR_BN_RED_STATS); break;   \
    case FR_BN_RED_STATS0: FN(__VA_ARGS__, FR_BN_RED_STATS0); break; \
    case FR_BN_RED_BWD: FN(__VA_ARGS__, FR_BN_RED_BWD); break;       \
    default: FN(__VA_ARGS__, FR_BN_RED_BWD_MASK); break;             \
    }
#define FR_BN_SW4(FN, ...)              \
    switch (j->flags & 3) {             \
    case 0: FN(__VA_ARGS__, 0); break;  \
    case 1: FN(__VA_ARGS__, 1); break;  \
    case 2: FN(__VA_ARGS__, 2); break;  \
    default: FN(__VA_ARGS__, 3); break; \
    }
#define FR_BN_SW8(FN, ...)              \
    switch (j->flags & 7) {             \
    case 0: FN(__VA_ARGS__, 0); break;  \
    case 1: FN(__VA_ARGS__, 1); break;  \
    case 2: FN(__VA_ARGS__, 2); break;  \
    case 3: FN(__VA_ARGS__, 3); break;  \
    case 4: FN(__VA_ARGS__, 4); break;  \
    case 5: FN(__VA_ARGS__, 5); break;  \
    case 6: FN(__VA_ARGS__, 6); break;  \
    default: FN(__VA_ARGS__, 7); break; \
    }

#define FR_BN_DEFINE_ISA(SUF, ISA, ATTR, COPY)                                                   \
    ATTR static void fr_bn_red_seg_##SUF##_##ISA(const fr_bn_job *j, size_t off, size_t stride,  \
                                                 size_t nrows, size_t len, double ctr,           \
                                                 double *out)                                    \
    {                                                                                            \
        FR_BN_SW3(fr_bn_red_seg_##SUF##_##ISA##_body, j, off, stride, nrows, len, ctr, out)      \
    }                                                                                            \
    ATTR static void fr_bn_red_rows_##SUF##_##ISA(const fr_bn_job *j, size_t r0, size_t r1,      \
                                                  size_t j0, size_t j1, double *p1, double *p2)  \
    {                                                                                            \
        FR_BN_SW3(fr_bn_red_rows_##SUF##_body, j, r0, r1, j0, j1, p1, p2)                        \
    }                                                                                            \
    ATTR static void fr_bn_fwd_seg_##SUF##_##ISA(const fr_bn_job *j, size_t off, size_t stride,  \
                                                 size_t nrows, size_t len, size_t c)             \
    {                                                                                            \
        FR_BN_SW4(fr_bn_fwd_seg_##SUF##_body, j, off, stride, nrows, len, c, COPY)               \
    }                                                                                            \
    ATTR static void fr_bn_fwd_rows_##SUF##_##ISA(const fr_bn_job *j, size_t r0, size_t r1,      \
                                                  size_t j0, size_t j1)                          \
    {                                                                                            \
        FR_BN_SW4(fr_bn_fwd_rows_##SUF##_body, j, r0, r1, j0, j1, COPY)                          \
    }                                                                                            \
    ATTR static void fr_bn_bwd_seg_##SUF##_##ISA(const fr_bn_job *j, size_t off, size_t stride,  \
                                                 size_t nrows, size_t len, size_t c)             \
    {                                                                                            \
        FR_BN_SW8(fr_bn_bwd_seg_##SUF##_body, j, off, stride, nrows, len, c, COPY)               \
    }                                                                                            \
    ATTR static void fr_bn_bwd_rows_##SUF##_##ISA(const fr_bn_job *j, size_t r0, size_t r1,      \
                                                  size_t j0, size_t j1)                          \
    {                                                                                            \
        FR_BN_SW8(fr_bn_bwd_rows_##SUF##_body, j, r0, r1, j0, j1, COPY)                          \
    }                                                                                            \
    static const fr_bn_kern fr_bn_kern_##SUF##_##ISA = {                                         \
        fr_bn_red_seg_##SUF##_##ISA, fr_bn_red_rows_##SUF##_##ISA, fr_bn_fwd_seg_##SUF##_##ISA,  \
        fr_bn_fwd_rows_##SUF##_##ISA, fr_bn_bwd_seg_##SUF##_##ISA,                               \
        fr_bn_bwd_rows_##SUF##_##ISA};

FR_BN_DEFINE_ISA(f32, portable, FR_BN_NOATTR, fr_ew_stream_copy)
FR_BN_DEFINE_ISA(f64, portable, FR_BN_NOATTR, fr_ew_stream_copy)
FR_BN_DEFINE_ISA(f16, portable, FR_BN_NOATTR, fr_ew_stream_copy)
FR_BN_DEFINE_ISA(bf16, portable, FR_BN_NOATTR, fr_ew_stream_copy)
#ifdef FR_EW_X86
FR_BN_DEFINE_ISA(f32, avx2, FR_EW_AVX2, fr_ew_stream_copy_avx2)
FR_BN_DEFINE_ISA(f64, avx2, FR_EW_AVX2, fr_ew_stream_copy_avx2)
FR_BN_DEFINE_ISA(bf16b, avx2, FR_EW_AVX2, fr_ew_stream_copy_avx2)
FR_BN_DEFINE_ISA(f32, avx512, FR_BN_AVX512, fr_bn_stream_copy_avx512)
FR_BN_DEFINE_ISA(f64, avx512, FR_BN_AVX512, fr_bn_stream_copy_avx512)
#endif
#ifdef FR_BN_HAVE_F16C
FR_BN_DEFINE_ISA(f16c, avx2, FR_F16C, fr_ew_stream_copy_avx2)
#endif

/* Storage types of the big arrays (x, grad_y, y, residual, out, grad_x, grad_residual); the
 * per-channel arrays are in the math type (float64 for FR_BN_F64, else float32). */
enum { FR_BN_F32 = 0, FR_BN_F64 = 1, FR_BN_F16 = 2, FR_BN_BF16 = 3 };

/* The kernels of storage type st for the instruction set in use (the 16-bit types have no
 * AVX-512 copy: their AVX2 one runs there; float16's AVX2 copy is the F16C one, where the CPU
 * has F16C, else the portable one runs; every copy gives the same bits). */
static const fr_bn_kern *fr_bn_pick(int st)
{
#ifdef FR_EW_X86
    int isa = fr_get_isa();
    if (st == FR_BN_F16) {
#ifdef FR_BN_HAVE_F16C
        if (isa >= 1 && fr_cpu_has_f16c())
            return &fr_bn_kern_f16c_avx2;
#endif
    } else if (isa >= 1) {
        static const fr_bn_kern *const avx512[4] = {
            &fr_bn_kern_f32_avx512, &fr_bn_kern_f64_avx512, NULL, &fr_bn_kern_bf16b_avx2};
        static const fr_bn_kern *const avx2[4] = {&fr_bn_kern_f32_avx2, &fr_bn_kern_f64_avx2,
                                                  NULL, &fr_bn_kern_bf16b_avx2};
        return isa >= 2 ? avx512[st] : avx2[st];
    }
#endif
    static const fr_bn_kern *const portable[4] = {
        &fr_bn_kern_f32_portable, &fr_bn_kern_f64_portable, &fr_bn_kern_f16_portable,
        &fr_bn_kern_bf16_portable};
    return portable[st];
}

/* ------------------------------------------------------------------ per-channel finishing */

/* What to do with a channel's two sums (s1, s2): the per-dtype finishing step of each op. */
enum { FR_BN_FIN_STATS, FR_BN_FIN_FWD, FR_BN_FIN_BRED, FR_BN_FIN_BWD };

typedef struct {
    int what;            /* FR_BN_FIN_* */
    int f64;             /* the dtype */
    double n;            /* elements per channel */
    double eps;
    int training;
    const double *ctr;   /* per channel: the shift (stats) or center (backward) of the sums */
    double *o1, *o2, *o3;          /* stats: mean, m2 (, invstd); bred: s_dy, s_dyx */
    const double *invstd;          /* backward */
    const void *weight, *bias;     /* in the dtype; NULL = 1, 0 */
    void *k[4];                    /* apply coefficients (per channel), in the dtype */
    void *gw, *gb;                 /* backward: grad_weight, grad_bias, in the dtype */
} fr_bn_fin;

/* The reference's per-channel formulas (bn_forward_coeffs, bn_backward_coeffs), float64, for
 * channels c0 .. c0 + n - 1 with sums s1[i], s2[i] (i = c - c0); T the dtype of the arrays in
 * the dtype.  Plain loops over the channels (they vectorize). */
#define FR_BN_DEFINE_FINISH(SUF, T)                                                            \
    FR_BN_CLONES static void fr_bn_finish_##SUF(const fr_bn_fin *f, size_t c0, size_t n,       \
                                                const double *s1, const double *s2)            \
    {                                                                                          \
        const double N = f->n;                                                                 \
        const T *w = (const T *)f->weight, *bias = (const T *)f->bias;                         \
        T *k0 = f->k[0] ? (T *)f->k[0] + c0 : NULL, *k1 = f->k[1] ? (T *)f->k[1] + c0 : NULL;  \
        T *k2 = f->k[2] ? (T *)f->k[2] + c0 : NULL, *k3 = f->k[3] ? (T *)f->k[3] + c0 : NULL;  \
        switch (f->what) {                                                                     \
        case FR_BN_FIN_STATS:                                                                  \
        case FR_BN_FIN_FWD:                                                                    \
            for (size_t i = 0; i < n; i++) {                                                   \
                double q = s1[i] / N;                                                          \
                double m2 = s2[i] - s1[i] * q; /* sum (x - shift)^2 - n (mean - shift)^2 */    \
                /* rounding below zero gives 0, NaN is kept */                                 \
                f->o2[c0 + i] = fr_sel_f64((m2 > 0) | (m2 != m2), m2, 0.0);                     \
                f->o1[c0 + i] = f->ctr[c0 + i] + q;                                            \
            }                                                                                  \
            if (f->what == FR_BN_FIN_STATS)                                                    \
                break;                                                                         \
            for (size_t i = 0; i < n; i++) {                                                   \
                double inv = 1.0 / sqrt(f->o2[c0 + i] / N + f->eps);                           \
                double wc = w ? (double)w[c0 + i] : 1.0;                                       \
                f->o3[c0 + i] = inv;                                                           \
                k0[i] = (T)f->o1[c0 + i];                                                      \
                k1[i] = (T)(wc * inv);                                                         \
                k2[i] = bias ? bias[c0 + i] : (T)0;                                            \
            }                                                                                  \
            break;                                                                             \
        case FR_BN_FIN_BRED:                                                                   \
            for (size_t i = 0; i < n; i++) {                                                   \
                f->o1[c0 + i] = s1[i];                                                         \
                f->o2[c0 + i] = s2[i];                                                         \
            }                                                                                  \
            break;                                                                             \
        default: { /* FR_BN_FIN_BWD: s1 = s_dy, s2 = s_dyx */                                  \
            T *gw = (T *)f->gw + c0, *gb = (T *)f->gb + c0; /* never NULL here */              \
            for (size_t i = 0; i < n; i++) {                                                   \
                double inv = f->invstd[c0 + i];                                                \
                double a = (w ? (double)w[c0 + i] : 1.0) * inv;                                \
                gw[i] = (T)(s2[i] * inv);                                                      \
                gb[i] = (T)s1[i];                                                              \
                k0[i] = (T)f->ctr[c0 + i];                                                     \
                k1[i] = (T)a;                                                                  \
                if (f->training) {                                                             \
                    k2[i] = (T)(a * inv * inv * s2[i] / N);                                    \
                    k3[i] = (T)(a * s1[i] / N);                                                \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
        }                                                                                      \
    }
FR_BN_DEFINE_FINISH(f32, float)
FR_BN_DEFINE_FINISH(f64, double)

static void fr_bn_finish(const fr_bn_fin *f, size_t c0, size_t n, const double *s1,
                         const double *s2)
{
    if (f->f64)
        fr_bn_finish_f64(f, c0, n, s1, s2);
    else
        fr_bn_finish_f32(f, c0, n, s1, s2);
}

/* ------------------------------------------------------------------ drivers */

/* Compensated (Neumaier) running sum: the partial sums of chunks, columns and channels are
 * added with it, so that only the chunks' own rounding remains. */
typedef struct {
    double s, c;
} fr_bn_acc;

static inline void fr_bn_add(fr_bn_acc *a, double v)
{
    double t = a->s + v;
    a->c += fabs(a->s) >= fabs(v) ? (a->s - t) + v : (v - t) + a->s;
    a->s = t;
}

/* Once the plain sum s is infinite or NaN, c is meaningless (inf - inf): the total is s, the
 * plain sum's value (see the reference on non-finite input). */
static inline double fr_bn_total(double s, double c) { return isfinite(s) ? s + c : s; }

/* The same step on n columns at once (s[i] += v[i], errors into c[i]), the error by Knuth's
 * TwoSum: branch-free (it vectorizes) and equal to the step above (both are the exact rounding
 * error of s + v). */
FR_BN_CLONES static void fr_bn_add_cols(double *restrict s, double *restrict c,
                                        const double *restrict v, size_t n)
{
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        double a = s[i], b = v[i], t = a + b, bp = t - a;
        c[i] += (a - (t - bp)) + (b - bp);
        s[i] = t;
    }
}

/* How an op's (A, C, B) data are cut into work items; from the shape (and the number of arrays
 * the reduction reads) only, so that results never depend on the number of threads.  The cut
 * (hence the order of the sums) depends on the math type's size (itemsize: a 16-bit array is
 * cut as its float32 copy, for the float32 bits); only the choice of whole channels per thread
 * (fused, no effect on any result) on the bytes stored (esize). */
typedef struct {
    int rows;            /* row layout */
    /* channel layout: R rows per chunk, or pieces of PL elements when nbp > 1; K chunks */
    size_t R, nbp, PL, K;
    int fused;           /* channel layout: a channel's reduction input fits in a core's L2 */
    /* row layout: row chunks of RR rows (KR of them), column blocks of W (NB of them) */
    size_t RR, KR, W, NB;
} fr_bn_plan;

static size_t fr_bn_cdiv(size_t a, size_t b) { return (a + b - 1) / b; }

static fr_bn_plan fr_bn_make_plan(size_t A, size_t C, size_t B, size_t itemsize, size_t esize,
                                  size_t nred)
{
    fr_bn_plan p;
    memset(&p, 0, sizeof p);
    p.rows = B * itemsize < FR_BN_ROW_BYTES;
    if (!p.rows) {
        if (B > FR_BN_PIECE) {
            p.nbp = fr_bn_cdiv(B, FR_BN_PIECE);
            p.PL = fr_bn_cdiv(B, p.nbp);
            p.nbp = fr_bn_cdiv(B, p.PL);
            p.R = 1;
            p.K = A * p.nbp;
        } else {
            p.nbp = 1;
            p.PL = B;
            /* rows of at least FR_BN_RUN_BYTES: one per chunk, so that the two-pass items
             * (chunk k, channel c), k major, follow memory order exactly */
            p.R = B * itemsize >= FR_BN_RUN_BYTES ? 1 : FR_BN_CHUNK / B;
            if (p.R < 1)
                p.R = 1;
            if (p.R > A)
                p.R = A;
            p.K = fr_bn_cdiv(A, p.R);
        }
        p.fused = nred * A * B * esize <= FR_BN_FUSE_BYTES;
    } else {
        size_t L = C * B;
        p.NB = L <= 2 * FR_BN_COLS ? 1 : fr_bn_cdiv(L, FR_BN_COLS);
        p.W = fr_bn_cdiv(L, p.NB);
        p.W = (p.W + 15) & ~(size_t)15;
        p.NB = fr_bn_cdiv(L, p.W);
        size_t kmax = FR_BN_PART_BYTES / (16 * L);
        if (kmax > FR_BN_KMAX)
            kmax = FR_BN_KMAX;
        if (kmax < 1)
            kmax = 1;
        size_t rr = fr_bn_cdiv(FR_BN_CHUNK, L), rk = fr_bn_cdiv(A, kmax);
        p.RR = rr > rk ? rr : rk;
        if (p.RR > A)
            p.RR = A;
        p.KR = fr_bn_cdiv(A, p.RR);
    }
    return p;
}

/* Chunk k of channel c (channel layout): first element, rows, length. */
static inline void fr_bn_chunk(const fr_bn_plan *p, const fr_bn_job *j, size_t c, size_t k,
                               size_t *off, size_t *nrows, size_t *len)
{
    size_t r0, b0, b1;
    if (p->nbp > 1) {
        r0 = k / p->nbp;
        b0 = (k % p->nbp) * p->PL;
        b1 = b0 + p->PL < j->B ? b0 + p->PL : j->B;
        *nrows = 1;
    } else {
        r0 = k * p->R;
        b0 = 0;
        b1 = j->B;
        *nrows = r0 + p->R < j->A ? p->R : j->A - r0;
    }
    *off = r0 * j->L + c * j->B + b0;
    *len = b1 - b0;
}

static inline void fr_bn_tile(const fr_bn_plan *p, const fr_bn_job *j, size_t t, size_t *r0,
                              size_t *r1, size_t *j0, size_t *j1)
{
    size_t k = t / p->NB, m = t % p->NB;
    *r0 = k * p->RR;
    *r1 = *r0 + p->RR < j->A ? *r0 + p->RR : j->A;
    *j0 = m * p->W;
    *j1 = *j0 + p->W < j->L ? *j0 + p->W : j->L;
}

static inline void fr_bn_sfence(int stream)
{
#ifdef FR_EW_X86
    if (stream)
        _mm_sfence();  /* order this thread's streaming stores before the join */
#else
    (void)stream;
#endif
}

/* ------------------------------------------------------------------ strategy */

/* How the channel layout runs an op that reduces and applies (forward training, backward):
 * auto, whole channels per thread, threads sharing each channel, or two passes over the data
 * (fr_bn_set_channel_strategy; tests reach every one with tiny inputs). */
enum { FR_BN_AUTO = 0, FR_BN_WHOLE = 1, FR_BN_SHARED = 2, FR_BN_TWO_PASS = 3 };
static int fr_bn_channel_strategy = FR_BN_AUTO;

int fr_bn_set_channel_strategy(int strategy)
{
    if (strategy < FR_BN_AUTO || strategy > FR_BN_TWO_PASS)
        return -1;
    int previous = fr_bn_channel_strategy;
    fr_bn_channel_strategy = strategy;
    return previous;
}

/* shared channels: pauses before a waiting thread yields its core */
#define FR_BN_SPINS 4096u

/* ------------------------------------------------------------------ threads */

/* Everything a phase of an op needs; a task runs its share (tid of nth) of one phase. */
typedef struct {
    fr_bn_job *j;
    const fr_bn_fin *fin;
    const double *ctr;   /* per channel: the shift / center of the sums */
    const fr_bn_kern *kn;
    fr_bn_plan p;
    int apply;           /* 0 none, 1 forward, 2 backward */
    size_t itemsize;     /* of the math type (per-channel arrays) */
    size_t esize;        /* of the storage type (the big arrays) */
    size_t nred;         /* arrays the reduction reads */
    double *part;        /* partial sums of the reduction */
    /* shared channels: per channel, the threads that have written their partials; per thread
     * but the first, room for its own copy of the finishing step's outputs (stride bytes) */
    int *arrived;
    unsigned char *scratch;
    size_t stride;
    /* row layout: per-column totals and errors (4 L), per-channel totals (2 C), per-channel
     * coefficients (the op's; j->k then holds their per-column copies when B > 1) */
    double *col, *chan;
    const void *kch[4];
} fr_bn_ctx;

typedef void (*fr_bn_task)(const fr_bn_ctx *x, int tid, int nth);

/* Runs a phase of `items` work items: on the threads fr_region_threads grants (the count the
 * Python wrapper set for this call, fastreg._threads.plan, capped by OpenMP's limit and the
 * items), or with one on the calling thread without any call into OpenMP (see fr_threads.h). */
static void fr_bn_par(fr_bn_task fn, const fr_bn_ctx *x, size_t items)
{
    const int nth = fr_region_threads((int64_t)items);
#ifdef _OPENMP
    if (nth > 1) {
#pragma omp parallel num_threads(nth)
        fn(x, omp_get_thread_num(), omp_get_num_threads());
        return;
    }
#endif
    fn(x, 0, 1);
}

/* Items [lo, hi) of n for thread tid of nth: one contiguous block each. */
static inline void fr_bn_range(size_t n, int tid, int nth, size_t *lo, size_t *hi)
{
    *lo = n * (size_t)tid / (size_t)nth;
    *hi = n * (size_t)(tid + 1) / (size_t)nth;
}

/* Prefetch of the reduction's arrays (x; gy; y) over the first FR_BN_PF_HEAD bytes of each row
 * of chunk k of channel c, issued before the reduction of the chunk ahead of it: a channel's
 * rows lie a row of all channels apart, and the hardware prefetchers start again at each.
 * Measured on the 2-vCPU Xeon VM, NCHW (32, 64, 56, 56) float32, 2 threads, min of 25 calls,
 * three rounds each, (no prefetch / whole rows / 4 KB heads / 8 KB heads):
 *   x rewritten before each call (as the layer before writes it): forward 1.80-1.90 /
 *     1.56-1.57 / 1.52-1.64 / 1.44-1.60 ms, backward 2.56-2.64 / 2.23-2.28 / 2.00-2.32 /
 *     2.07-2.18;
 *   back to back on the same data (all of it in the caches: a benchmark loop, not a network):
 *     forward 1.33-1.37 / 1.47-1.50 / 1.28-1.38 / 1.36-1.43, backward 1.82-1.96 / 2.13-2.16 /
 *     1.83-1.91 / 1.97-2.02;
 *   caches flushed before each call: forward 2.85-2.96 / 2.17-2.34 / 2.50-2.60 / 2.31-2.52.
 * Prefetching the whole next channel while one is applied (the earlier design) measured as
 * whole rows here.  FR_BN_PF_HEAD: the bytes fetched of each row, its first page (the hardware
 * prefetchers follow the rest of a row once it has started). */
#ifndef FR_BN_PF_HEAD
#define FR_BN_PF_HEAD ((size_t)4096)
#endif
static inline void fr_bn_prefetch_chunk(const fr_bn_ctx *x, size_t c, size_t k)
{
    const fr_bn_job *j = x->j;
    const unsigned char *arr[3] = {(const unsigned char *)j->x,
                                   x->nred > 1 ? (const unsigned char *)j->gy : NULL,
                                   x->nred > 2 ? (const unsigned char *)j->y : NULL};
    size_t off, nrows, len;
    fr_bn_chunk(&x->p, j, c, k, &off, &nrows, &len);
    for (int q = 0; q < 3; q++)
        if (arr[q])
            for (size_t r = 0; r < nrows; r++)
                fr_bn_prefetch(arr[q] + (off + r * j->L) * x->esize,
                               len * x->esize < FR_BN_PF_HEAD ? len * x->esize : FR_BN_PF_HEAD);
}

/* Channel layout, fused: whole channels per thread.  A thread reduces a channel (prefetching
 * each next chunk, fr_bn_prefetch_chunk), computes its coefficients and applies them while the
 * channel's data is still in its cache (x read from memory once). */
static void fr_bn_task_fused(const fr_bn_ctx *x, int tid, int nth)
{
    const fr_bn_job *j = x->j;
    const fr_bn_plan *p = &x->p;
    const size_t L = j->L, K = p->K;
    void (*app)(const fr_bn_job *, size_t, size_t, size_t, size_t, size_t) =
        x->apply == 1 ? x->kn->fwd_seg : x->kn->bwd_seg;
    size_t lo, hi;
    fr_bn_range(j->C, tid, nth, &lo, &hi);
    for (size_t c = lo; c < hi; c++) {
        fr_bn_acc s1 = {0.0, 0.0}, s2 = {0.0, 0.0};
        double o[2];
        size_t off, nrows, len;
        for (size_t k = 0; k < K; k++) {
            if (k + 1 < K)
                fr_bn_prefetch_chunk(x, c, k + 1);
            else if (c + 1 < hi)
                fr_bn_prefetch_chunk(x, c + 1, 0);
            fr_bn_chunk(p, j, c, k, &off, &nrows, &len);
            x->kn->red_seg(j, off, L, nrows, len, x->ctr[c], o);
            fr_bn_add(&s1, o[0]);
            fr_bn_add(&s2, o[1]);
        }
        const double t1 = fr_bn_total(s1.s, s1.c), t2 = fr_bn_total(s2.s, s2.c);
        fr_bn_finish(x->fin, c, 1, &t1, &t2);
        for (size_t k = 0; k < K; k++) {
            fr_bn_chunk(p, j, c, k, &off, &nrows, &len);
            app(j, off, L, nrows, len, c);
        }
    }
    fr_bn_sfence(j->stream);
}

/* Waits until `n` threads have called this on the counter (each after writing its partials). */
static void fr_bn_arrive(int *counter, int n)
{
    __atomic_add_fetch(counter, 1, __ATOMIC_ACQ_REL);
    for (unsigned spins = 0; __atomic_load_n(counter, __ATOMIC_ACQUIRE) < n; spins++) {
        if (spins < FR_BN_SPINS) {
#ifdef FR_EW_X86
            _mm_pause();
#endif
        } else {
            sched_yield();  /* the other thread may have lost its core */
        }
    }
}

/* Channel layout, threads share each channel: a thread reduces its block of the channel's
 * chunks, waits for the others' partials (one counter per channel, no barrier of the team),
 * computes the channel's coefficients from all partials in chunk order (each thread the same
 * bits; the first writes the op's outputs, the others a copy of their own), and applies them
 * to its block while that is still in its L2: a channel too large for one core's cache is read
 * from memory once. */
static void fr_bn_task_shared(const fr_bn_ctx *x, int tid, int nth)
{
    const fr_bn_job *j = x->j;
    const fr_bn_plan *p = &x->p;
    const size_t C = j->C, K = p->K, L = j->L, is = x->itemsize;
    void (*app)(const fr_bn_job *, size_t, size_t, size_t, size_t, size_t) =
        x->apply == 1 ? x->kn->fwd_seg : x->kn->bwd_seg;
    fr_bn_fin f = *x->fin;
    fr_bn_job jt = *j;
    if (tid > 0) {
        unsigned char *m = x->scratch + (size_t)(tid - 1) * x->stride;
        double **o[3] = {&f.o1, &f.o2, &f.o3};
        for (int q = 0; q < 3; q++, m += C * sizeof(double))
            if (*o[q])
                *o[q] = (double *)m;
        for (int q = 0; q < 4; q++, m += C * is) {
            if (f.k[q])
                f.k[q] = m;
            jt.k[q] = j->k[q] ? f.k[q] : NULL;
        }
        if (f.gw)
            f.gw = m;
        if (f.gb)
            f.gb = m + C * is;
    }
    size_t lo, hi, off, nrows, len;
    fr_bn_range(K, tid, nth, &lo, &hi);
    for (size_t c = 0; c < C; c++) {
        double *part = x->part + 2 * c * K;
        for (size_t k = lo; k < hi; k++) {
            if (k + 1 < hi)
                fr_bn_prefetch_chunk(x, c, k + 1);
            else if (c + 1 < C)
                fr_bn_prefetch_chunk(x, c + 1, lo);
            fr_bn_chunk(p, j, c, k, &off, &nrows, &len);
            x->kn->red_seg(j, off, L, nrows, len, x->ctr[c], part + 2 * k);
        }
        fr_bn_arrive(x->arrived + c, nth);
        fr_bn_acc s1 = {0.0, 0.0}, s2 = {0.0, 0.0};
        for (size_t k = 0; k < K; k++) {
            fr_bn_add(&s1, part[2 * k]);
            fr_bn_add(&s2, part[2 * k + 1]);
        }
        const double t1 = fr_bn_total(s1.s, s1.c), t2 = fr_bn_total(s2.s, s2.c);
        fr_bn_finish(&f, c, 1, &t1, &t2);
        for (size_t k = lo; k < hi; k++) {
            fr_bn_chunk(p, j, c, k, &off, &nrows, &len);
            app(&jt, off, L, nrows, len, c);
        }
    }
    fr_bn_sfence(j->stream);
}

/* Channel layout, reduction: items (chunk k, channel c) in memory order (k major; with R = 1
 * one row after the other), the partials of item (k, c) at part[2 (c K + k)]. */
static void fr_bn_task_chred(const fr_bn_ctx *x, int tid, int nth)
{
    const fr_bn_job *j = x->j;
    const size_t C = j->C, K = x->p.K;
    size_t lo, hi, off, nrows, len;
    fr_bn_range(C * K, tid, nth, &lo, &hi);
    for (size_t it = lo; it < hi; it++) {
        size_t k = it / C, c = it % C;
        fr_bn_chunk(&x->p, j, c, k, &off, &nrows, &len);
        x->kn->red_seg(j, off, j->L, nrows, len, x->ctr[c], x->part + 2 * (c * K + k));
    }
}

/* The order in which a thread applies its items [lo, hi) (n bytes of input each): after a
 * reduction in the same op, first its last items, about FR_BN_REUSE_BYTES of them, in reverse
 * order (the data it read last, still in its caches), then the others in memory order, which
 * the hardware prefetchers follow; without a reduction, all in memory order.  Item i of the
 * order is fr_bn_order(&o, i). */
typedef struct {
    size_t lo, hi, m;  /* reversed: [m, hi) */
} fr_bn_order_t;

static inline fr_bn_order_t fr_bn_make_order(size_t lo, size_t hi, size_t n, int reuse)
{
    fr_bn_order_t o = {lo, hi, hi};
    if (reuse) {
        size_t w = n ? FR_BN_REUSE_BYTES / n : hi - lo;
        o.m = hi - (w < hi - lo ? w : hi - lo);
    }
    return o;
}

static inline size_t fr_bn_order(const fr_bn_order_t *o, size_t i)
{
    size_t nrev = o->hi - o->m;
    return i < nrev ? o->hi - 1 - i : o->lo + (i - nrev);
}

/* Channel layout, apply: the reduction's items, each thread its own (see fr_bn_make_order). */
static void fr_bn_task_chapp(const fr_bn_ctx *x, int tid, int nth)
{
    const fr_bn_job *j = x->j;
    const fr_bn_plan *p = &x->p;
    const size_t C = j->C;
    void (*app)(const fr_bn_job *, size_t, size_t, size_t, size_t, size_t) =
        x->apply == 1 ? x->kn->fwd_seg : x->kn->bwd_seg;
    size_t lo, hi, off, nrows, len;
    fr_bn_range(C * p->K, tid, nth, &lo, &hi);
    const fr_bn_order_t o = fr_bn_make_order(lo, hi, p->R * p->PL * x->esize * x->nred,
                                             x->fin != NULL);
    for (size_t i = 0; i < hi - lo; i++) {
        size_t it = fr_bn_order(&o, i), k = it / C, c = it % C;
        fr_bn_chunk(p, j, c, k, &off, &nrows, &len);
        app(j, off, j->L, nrows, len, c);
    }
    fr_bn_sfence(j->stream);
}

/* Row layout, reduction: tile t = (row chunk k, column block m) adds its rows' terms into
 * part[k L + j] (first sums) and part[(KR + k) L + j] (second sums), j in the block. */
static void fr_bn_rows_reduce(const fr_bn_ctx *x, size_t lo, size_t hi)
{
    const fr_bn_job *j = x->j;
    const fr_bn_plan *p = &x->p;
    const size_t L = j->L;
    size_t r0, r1, j0, j1;
    for (size_t t = lo; t < hi; t++) {
        fr_bn_tile(p, j, t, &r0, &r1, &j0, &j1);
        double *p1 = x->part + (t / p->NB) * L + j0, *p2 = x->part + (p->KR + t / p->NB) * L + j0;
        memset(p1, 0, (j1 - j0) * sizeof(double));
        memset(p2, 0, (j1 - j0) * sizeof(double));
        x->kn->red_rows(j, r0, r1, j0, j1, p1, p2);
    }
}

static void fr_bn_expand(const fr_bn_ctx *x, size_t c0, size_t c1);

/* Row layout, channels [c0, c1): each column's row chunks in order, then each channel's B
 * columns in order, the finishing step, and the per-column copies of the coefficients (B > 1).
 * Element-wise over the columns, so any split of the channels gives the same bits. */
static void fr_bn_rows_combine(const fr_bn_ctx *x, size_t c0, size_t c1)
{
    const fr_bn_job *j = x->j;
    const size_t L = j->L, B = j->B, KR = x->p.KR;
    const size_t q0 = c0 * B, n = (c1 - c0) * B;
    double *t1 = x->col, *e1 = t1 + L, *t2 = e1 + L, *e2 = t2 + L;
    double *h1 = x->chan, *h2 = h1 + j->C;
    if (c1 <= c0)
        return;
    memcpy(t1 + q0, x->part + q0, n * sizeof(double));
    memcpy(t2 + q0, x->part + KR * L + q0, n * sizeof(double));
    memset(e1 + q0, 0, n * sizeof(double));
    memset(e2 + q0, 0, n * sizeof(double));
    for (size_t k = 1; k < KR; k++) {
        fr_bn_add_cols(t1 + q0, e1 + q0, x->part + k * L + q0, n);
        fr_bn_add_cols(t2 + q0, e2 + q0, x->part + (KR + k) * L + q0, n);
    }
    for (size_t c = c0; c < c1; c++) {
        if (B == 1) {  /* the sum below, of one term */
            h1[c] = fr_bn_total(t1[c], e1[c]);
            h2[c] = fr_bn_total(t2[c], e2[c]);
            continue;
        }
        fr_bn_acc s1 = {0.0, 0.0}, s2 = {0.0, 0.0};
        for (size_t b = 0; b < B; b++) {
            size_t q = c * B + b;
            fr_bn_add(&s1, fr_bn_total(t1[q], e1[q]));
            fr_bn_add(&s2, fr_bn_total(t2[q], e2[q]));
        }
        h1[c] = fr_bn_total(s1.s, s1.c);
        h2[c] = fr_bn_total(s2.s, s2.c);
    }
    fr_bn_finish(x->fin, c0, c1 - c0, h1 + c0, h2 + c0);
    if (x->apply && B > 1)
        fr_bn_expand(x, c0, c1);
}

/* Row layout with B > 1, channels [c0, c1): the per-channel coefficients x->kch copied to each
 * of the channel's B columns (j->k, per column). */
static void fr_bn_expand(const fr_bn_ctx *x, size_t c0, size_t c1)
{
    const fr_bn_job *j = x->j;
    const size_t B = j->B, is = x->itemsize;
    for (size_t c = c0; c < c1; c++)
        for (int q = 0; q < 4; q++)
            if (x->kch[q])
                for (size_t b = 0; b < B; b++)
                    memcpy((unsigned char *)j->k[q] + (c * B + b) * is,
                           (const unsigned char *)x->kch[q] + c * is, is);
}

/* Row layout, a whole op in one parallel region: the reduction of the thread's tiles, a wait
 * for the others' partials, the combine of its share of the channels, a wait for the others'
 * coefficients, then the apply pass over its tiles (see fr_bn_make_order).  Ops that only
 * apply do the last step. */
static void fr_bn_task_rows(const fr_bn_ctx *x, int tid, int nth)
{
    const fr_bn_job *j = x->j;
    const fr_bn_plan *p = &x->p;
    size_t lo, hi, r0, r1, j0, j1;
    fr_bn_range(p->KR * p->NB, tid, nth, &lo, &hi);
    if (x->fin) {
        fr_bn_rows_reduce(x, lo, hi);
        if (nth > 1)
            fr_bn_arrive(x->arrived, nth);
        size_t c0, c1;
        fr_bn_range(j->C, tid, nth, &c0, &c1);
        fr_bn_rows_combine(x, c0, c1);
        if (x->apply && nth > 1)
            fr_bn_arrive(x->arrived + 1, nth);
    }
    if (!x->apply)
        return;
    void (*app)(const fr_bn_job *, size_t, size_t, size_t, size_t) =
        x->apply == 1 ? x->kn->fwd_rows : x->kn->bwd_rows;
    const fr_bn_order_t o = fr_bn_make_order(lo, hi, p->RR * p->W * x->esize * x->nred,
                                             x->fin != NULL);
    for (size_t i = 0; i < hi - lo; i++) {
        fr_bn_tile(p, j, fr_bn_order(&o, i), &r0, &r1, &j0, &j1);
        app(j, r0, r1, j0, j1);
    }
    fr_bn_sfence(j->stream);
}

/* Runs an op on big arrays of storage type st (FR_BN_F32 ...): the reduction (when fin != NULL;
 * then the finishing step per channel) and / or the apply pass (apply = 1 forward, 2 backward).
 * ctr: per-channel shift / center of the sums.
 * The apply coefficients are j->k (per channel); the row layout with B > 1 works on per-column
 * copies of them.  Each phase is one parallel region (or none, on one thread); the per-channel
 * work between them (O(C K) additions) runs on the calling thread. */
static int fr_bn_run(fr_bn_job *j, const fr_bn_fin *fin, const double *ctr, int apply, int st)
{
    const size_t itemsize = st == FR_BN_F64 ? 8 : 4, esize = st >= FR_BN_F16 ? 2 : itemsize;
    const size_t A = j->A, C = j->C, B = j->B, L = j->L;
    const int red = fin != NULL;
    fr_bn_ctx x;
    memset(&x, 0, sizeof x);
    x.j = j;
    x.fin = fin;
    x.ctr = ctr;
    x.kn = fr_bn_pick(st);
    x.nred = FR_BN_IS_STATS(j->kind) ? 1 : j->kind == FR_BN_RED_BWD ? 2 : 3;
    x.p = fr_bn_make_plan(A, C, B, itemsize, esize, x.nred);
    x.apply = apply;
    x.itemsize = itemsize;
    x.esize = esize;
    const fr_bn_plan *p = &x.p;

    if (!p->rows) {
        const size_t K = p->K;
        const int n = fr_get_threads();
        int how = fr_bn_channel_strategy;
        if (red && apply && how == FR_BN_AUTO)
            /* whole channels per thread when a channel fits in a core's cache and the channels
             * share out evenly; else the threads share each channel */
            how = p->fused && (n <= 1 || C >= 4 * (size_t)n || C % (size_t)n == 0)
                      ? FR_BN_WHOLE : FR_BN_SHARED;
        if (red && apply && how == FR_BN_WHOLE) {
            fr_bn_par(fr_bn_task_fused, &x, C);
            return FR_OK;
        }
        if (red && apply && how == FR_BN_SHARED) {
            const size_t nt = n > 1 ? (size_t)n : 1;
            x.stride = 3 * C * sizeof(double) + 6 * C * itemsize;
            x.part = (double *)malloc(2 * C * K * sizeof(double));
            x.arrived = (int *)calloc(C, sizeof(int));
            x.scratch = (unsigned char *)malloc(nt > 1 ? (nt - 1) * x.stride : 1);
            int st = x.part && x.arrived && x.scratch ? FR_OK : FR_ERR_ALLOC;
            if (st == FR_OK)
                fr_bn_par(fr_bn_task_shared, &x, K);
            free(x.part);
            free(x.arrived);
            free(x.scratch);
            return st;
        }
        if (red) {
            /* partials (2 C K), then the channels' totals (2 C) */
            x.part = (double *)malloc(2 * C * (K + 1) * sizeof(double));
            if (!x.part)
                return FR_ERR_ALLOC;
            fr_bn_par(fr_bn_task_chred, &x, C * K);
            double *t1 = x.part + 2 * C * K, *t2 = t1 + C;
            for (size_t c = 0; c < C; c++) {
                fr_bn_acc s1 = {0.0, 0.0}, s2 = {0.0, 0.0};
                for (size_t k = 0; k < K; k++) {
                    fr_bn_add(&s1, x.part[2 * (c * K + k)]);
                    fr_bn_add(&s2, x.part[2 * (c * K + k) + 1]);
                }
                t1[c] = fr_bn_total(s1.s, s1.c);
                t2[c] = fr_bn_total(s2.s, s2.c);
            }
            fr_bn_finish(fin, 0, C, t1, t2);
            free(x.part);
        }
        if (apply)
            fr_bn_par(fr_bn_task_chapp, &x, C * K);
        return FR_OK;
    }

    /* row layout */
    const size_t KR = p->KR;
    for (int q = 0; q < 4; q++)
        x.kch[q] = j->k[q];
    unsigned char *kcol = NULL;
    if (apply && B > 1) {  /* per-column coefficients, filled by fr_bn_expand */
        kcol = (unsigned char *)malloc(4 * L * itemsize);
        if (!kcol)
            return FR_ERR_ALLOC;
        for (int q = 0; q < 4; q++)
            j->k[q] = x.kch[q] ? kcol + q * L * itemsize : NULL;
    }
    if (red) {
        /* partials (2 KR L), per-column totals and errors (4 L), per-channel totals (2 C),
         * per-column shifts (L, B > 1) */
        x.part = (double *)malloc(((2 * KR + 4 + (B > 1)) * L + 2 * C) * sizeof(double));
        x.arrived = (int *)calloc(2, sizeof(int));
        if (!x.part || !x.arrived) {
            free(x.part);
            free(x.arrived);
            free(kcol);
            return FR_ERR_ALLOC;
        }
        x.col = x.part + 2 * KR * L;
        x.chan = x.col + 4 * L;
        if (B > 1) {
            double *rcol = x.chan + 2 * C;
            for (size_t q = 0; q < L; q++)
                rcol[q] = ctr[q / B];
            j->rcol = rcol;
        } else {
            j->rcol = ctr;
        }
    } else if (kcol) {
        fr_bn_expand(&x, 0, C);
    }
    fr_bn_par(fr_bn_task_rows, &x, KR * p->NB);
    free(x.part);
    free(x.arrived);
    free(kcol);
    return FR_OK;
}

/* an array not aligned for its element type (views of raw buffers can be): FR_ERR_UNSUPPORTED,
 * and the Python wrapper goes through aligned copies */
#define FR_BN_MISALIGNED(p, n) ((uintptr_t)(const void *)(p) % (n) != 0)

static inline int fr_bn_bad_shape(int64_t A, int64_t C, int64_t B)
{
    return A < 0 || C < 0 || B < 0;
}

static inline void fr_bn_job_init(fr_bn_job *j, int64_t A, int64_t C, int64_t B)
{
    memset(j, 0, sizeof *j);
    j->A = (size_t)A;
    j->C = (size_t)C;
    j->B = (size_t)B;
    j->L = (size_t)C * (size_t)B;
}

/* Streaming stores for an output of `bytes` that none of the inputs alias, from min_bytes on. */
static inline int fr_bn_want_stream(const void *out, size_t bytes, size_t min_bytes,
                                    const void *i1, const void *i2, const void *i3)
{
    int read = out == i1 || out == i2 || out == i3;
    return fr_ew_want_stream_from(read, bytes, min_bytes);
}

/* The shifts of the statistics, from a sample of each channel (its first FR_BN_SHIFT_N
 * elements, in memory order): the sample's mean m when the channel's mean may be far from 0
 * compared with its spread (|m| > (max - min) / 2 over the sample), where shifted sums keep
 * sum (x - shift)^2 - n (mean - shift)^2 free of cancellation; else 0 (a mean within the spread
 * costs a factor of at most a few in precision, and unshifted sums need no subtraction); 0 also
 * when m is not finite.  *zero: whether every shift is 0.  Deterministic: the data only. */
#define FR_BN_SHIFT_N ((size_t)16)
#define FR_BN_DEFINE_SHIFTS(SUF, T)                                                            \
    FR_BN_CLONES static void fr_bn_sample_##SUF(const T *x, size_t na, size_t nb, size_t C,    \
                                                size_t B, double *s, double *mn, double *mx)   \
    {                                                                                          \
        for (size_t c = 0; c < C; c++)                                                         \
            mn[c] = mx[c] = (double)fr_load_##SUF(x, c * B);                                   \
        for (size_t a = 0; a < na; a++) {                                                      \
            const T *xr = x + a * C * B;                                                       \
            if (B == 1) { /* (N, C) and channels-last: one contiguous row, vectorized */       \
                for (size_t c = 0; c < C; c++) {                                               \
                    double v = (double)fr_load_##SUF(xr, c);                                   \
                    s[c] += v;                                                                 \
                    mn[c] = v < mn[c] ? v : mn[c];                                             \
                    mx[c] = v > mx[c] ? v : mx[c];                                             \
                }                                                                              \
                continue;                                                                      \
            }                                                                                  \
            for (size_t c = 0; c < C; c++)                                                     \
                for (size_t b = 0; b < nb; b++) {                                              \
                    double v = (double)fr_load_##SUF(xr, c * B + b);                           \
                    s[c] += v;                                                                 \
                    mn[c] = v < mn[c] ? v : mn[c];                                             \
                    mx[c] = v > mx[c] ? v : mx[c];                                             \
                }                                                                              \
        }                                                                                      \
    }
FR_BN_DEFINE_SHIFTS(f32, float)
FR_BN_DEFINE_SHIFTS(f64, double)
FR_BN_DEFINE_SHIFTS(f16, uint16_t)
FR_BN_DEFINE_SHIFTS(bf16, uint16_t)

static double *fr_bn_shifts(const void *x, int st, size_t A, size_t C, size_t B, int *zero)
{
    double *s = (double *)calloc(3 * (C ? C : 1), sizeof(double));
    if (!s)
        return NULL;
    double *mn = s + C, *mx = mn + C;
    size_t na = B >= FR_BN_SHIFT_N ? 1 : (FR_BN_SHIFT_N + B - 1) / B;
    if (na > A)
        na = A;
    size_t nb = B < FR_BN_SHIFT_N ? B : FR_BN_SHIFT_N;
    if (st == FR_BN_F64)
        fr_bn_sample_f64((const double *)x, na, nb, C, B, s, mn, mx);
    else if (st == FR_BN_F16)
        fr_bn_sample_f16((const uint16_t *)x, na, nb, C, B, s, mn, mx);
    else if (st == FR_BN_BF16)
        fr_bn_sample_bf16((const uint16_t *)x, na, nb, C, B, s, mn, mx);
    else
        fr_bn_sample_f32((const float *)x, na, nb, C, B, s, mn, mx);
    *zero = 1;
    for (size_t c = 0; c < C; c++) {
        double m = s[c] / (double)(na * nb);
        s[c] = isfinite(m) && 2.0 * fabs(m) > mx[c] - mn[c] ? m : 0.0;
        *zero = *zero && s[c] == 0.0;
    }
    return s;
}

/* ------------------------------------------------------------------ entry points */

/* Entry points of storage type SUF: S the element type of the big arrays, T the math type (of
 * the per-channel arrays), F64 whether T is double, ST the FR_BN_* storage tag. */
#define FR_DEFINE_BN(SUF, S, T, F64, ST)                                                       \
    int fr_bn_stats_##SUF(const S *x, double *mean, double *m2, int64_t A, int64_t C,          \
                          int64_t B)                                                           \
    {                                                                                          \
        if (fr_bn_bad_shape(A, C, B))                                                          \
            return FR_ERR_SIZE;                                                                \
        if (!x || !mean || !m2)                                                                \
            return FR_ERR_NULL;                                                                \
        if (FR_BN_MISALIGNED(x, sizeof(S)) || FR_BN_MISALIGNED(mean, 8) ||                     \
            FR_BN_MISALIGNED(m2, 8))                                                           \
            return FR_ERR_UNSUPPORTED;                                                         \
        if (A == 0 || C == 0 || B == 0)                                                        \
            return FR_OK;                                                                      \
        fr_bn_job j;                                                                           \
        fr_bn_job_init(&j, A, C, B);                                                           \
        j.kind = FR_BN_RED_STATS;                                                              \
        j.x = x;                                                                               \
        int zero;                                                                              \
        double *sh = fr_bn_shifts(x, ST, j.A, j.C, j.B, &zero);                                \
        if (!sh)                                                                               \
            return FR_ERR_ALLOC;                                                               \
        if (zero)                                                                              \
            j.kind = FR_BN_RED_STATS0;                                                         \
        fr_bn_fin f;                                                                           \
        memset(&f, 0, sizeof f);                                                               \
        f.what = FR_BN_FIN_STATS;                                                              \
        f.f64 = F64;                                                                           \
        f.n = (double)A * (double)B;                                                           \
        f.ctr = sh;                                                                            \
        f.o1 = mean;                                                                           \
        f.o2 = m2;                                                                             \
        int st = fr_bn_run(&j, &f, sh, 0, ST);                                                 \
        free(sh);                                                                              \
        return st;                                                                             \
    }                                                                                          \
                                                                                               \
    int fr_bn_apply_##SUF(const S *x, const T *center, const T *scale, const T *shift,         \
                          const S *residual, int relu, S *out, int64_t A, int64_t C,           \
                          int64_t B)                                                           \
    {                                                                                          \
        if (fr_bn_bad_shape(A, C, B))                                                          \
            return FR_ERR_SIZE;                                                                \
        if (!x || !center || !scale || !shift || !out)                                         \
            return FR_ERR_NULL;                                                                \
        if (FR_BN_MISALIGNED(x, sizeof(S)) || FR_BN_MISALIGNED(center, sizeof(T)) ||           \
            FR_BN_MISALIGNED(scale, sizeof(T)) || FR_BN_MISALIGNED(shift, sizeof(T)) ||        \
            FR_BN_MISALIGNED(residual, sizeof(S)) || FR_BN_MISALIGNED(out, sizeof(S)))         \
            return FR_ERR_UNSUPPORTED;                                                         \
        if (A == 0 || C == 0 || B == 0)                                                        \
            return FR_OK;                                                                      \
        fr_bn_job j;                                                                           \
        fr_bn_job_init(&j, A, C, B);                                                           \
        j.flags = (residual ? FR_BN_F_RES : 0) | (relu ? FR_BN_F_RELU : 0);                    \
        j.x = x;                                                                               \
        j.res = residual;                                                                      \
        j.out = out;                                                                           \
        j.k[0] = center;                                                                       \
        j.k[1] = scale;                                                                        \
        j.k[2] = shift;                                                                        \
        j.stream = fr_bn_want_stream(out, j.A * j.L * sizeof(S), FR_BN_APPLY_STREAM_MIN_BYTES, \
                                     x, residual, NULL);                                       \
        return fr_bn_run(&j, NULL, NULL, 1, ST);                                               \
    }                                                                                          \
                                                                                               \
    int fr_bn_forward_train_##SUF(const S *x, const T *weight, const T *bias, double eps,      \
                                  const S *residual, int relu, S *out, double *mean,           \
                                  double *m2, double *invstd, int64_t A, int64_t C, int64_t B) \
    {                                                                                          \
        if (fr_bn_bad_shape(A, C, B))                                                          \
            return FR_ERR_SIZE;                                                                \
        if (!x || !out || !mean || !m2 || !invstd)                                             \
            return FR_ERR_NULL;                                                                \
        if (FR_BN_MISALIGNED(x, sizeof(S)) || FR_BN_MISALIGNED(weight, sizeof(T)) ||           \
            FR_BN_MISALIGNED(bias, sizeof(T)) || FR_BN_MISALIGNED(residual, sizeof(S)) ||      \
            FR_BN_MISALIGNED(out, sizeof(S)) || FR_BN_MISALIGNED(mean, 8) ||                   \
            FR_BN_MISALIGNED(m2, 8) || FR_BN_MISALIGNED(invstd, 8))                            \
            return FR_ERR_UNSUPPORTED;                                                         \
        if (A == 0 || C == 0 || B == 0)                                                        \
            return FR_OK;                                                                      \
        fr_bn_job j;                                                                           \
        fr_bn_job_init(&j, A, C, B);                                                           \
        j.kind = FR_BN_RED_STATS;                                                              \
        j.flags = (residual ? FR_BN_F_RES : 0) | (relu ? FR_BN_F_RELU : 0);                    \
        j.x = x;                                                                               \
        j.res = residual;                                                                      \
        j.out = out;                                                                           \
        j.stream = fr_bn_want_stream(out, j.A * j.L * sizeof(S), FR_EW_STREAM_MIN_BYTES, x,    \
                                     residual, NULL);                                          \
        int zero;                                                                              \
        double *sh = fr_bn_shifts(x, ST, j.A, j.C, j.B, &zero);                                \
        T *k = (T *)malloc(3 * j.C * sizeof(T));                                               \
        if (!sh || !k) {                                                                       \
            free(sh);                                                                          \
            free(k);                                                                           \
            return FR_ERR_ALLOC;                                                               \
        }                                                                                      \
        if (zero)                                                                              \
            j.kind = FR_BN_RED_STATS0;                                                         \
        fr_bn_fin f;                                                                           \
        memset(&f, 0, sizeof f);                                                               \
        f.what = FR_BN_FIN_FWD;                                                                \
        f.f64 = F64;                                                                           \
        f.n = (double)A * (double)B;                                                           \
        f.eps = eps;                                                                           \
        f.ctr = sh;                                                                            \
        f.o1 = mean;                                                                           \
        f.o2 = m2;                                                                             \
        f.o3 = invstd;                                                                         \
        f.weight = weight;                                                                     \
        f.bias = bias;                                                                         \
        for (int q = 0; q < 3; q++)                                                            \
            j.k[q] = f.k[q] = k + q * j.C;                                                     \
        int st = fr_bn_run(&j, &f, sh, 1, ST);                                                 \
        free(sh);                                                                              \
        free(k);                                                                               \
        return st;                                                                             \
    }                                                                                          \
                                                                                               \
    int fr_bn_backward_reduce_##SUF(const S *gy, const S *x, const S *y, const double *center, \
                                    double *s_dy, double *s_dyx, int64_t A, int64_t C,         \
                                    int64_t B)                                                 \
    {                                                                                          \
        if (fr_bn_bad_shape(A, C, B))                                                          \
            return FR_ERR_SIZE;                                                                \
        if (!gy || !x || !center || !s_dy || !s_dyx)                                           \
            return FR_ERR_NULL;                                                                \
        if (FR_BN_MISALIGNED(gy, sizeof(S)) || FR_BN_MISALIGNED(x, sizeof(S)) ||               \
            FR_BN_MISALIGNED(y, sizeof(S)) || FR_BN_MISALIGNED(center, 8) ||                   \
            FR_BN_MISALIGNED(s_dy, 8) || FR_BN_MISALIGNED(s_dyx, 8))                           \
            return FR_ERR_UNSUPPORTED;                                                         \
        if (C == 0)                                                                            \
            return FR_OK;                                                                      \
        if (A == 0 || B == 0) {                                                                \
            memset(s_dy, 0, (size_t)C * sizeof(double));                                       \
            memset(s_dyx, 0, (size_t)C * sizeof(double));                                      \
            return FR_OK;                                                                      \
        }                                                                                      \
        fr_bn_job j;                                                                           \
        fr_bn_job_init(&j, A, C, B);                                                           \
        j.kind = y ? FR_BN_RED_BWD_MASK : FR_BN_RED_BWD;                                       \
        j.x = x;                                                                               \
        j.gy = gy;                                                                             \
        j.y = y;                                                                               \
        fr_bn_fin f;                                                                           \
        memset(&f, 0, sizeof f);                                                               \
        f.what = FR_BN_FIN_BRED;                                                               \
        f.f64 = F64;                                                                           \
        f.o1 = s_dy;                                                                           \
        f.o2 = s_dyx;                                                                          \
        return fr_bn_run(&j, &f, center, 0, ST);                                               \
    }                                                                                          \
                                                                                               \
    int fr_bn_backward_apply_##SUF(const S *gy, const S *x, const S *y, const T *center,       \
                                   const T *a, const T *b, const T *d, S *gx, S *gres,         \
                                   int64_t A, int64_t C, int64_t B)                            \
    {                                                                                          \
        if (fr_bn_bad_shape(A, C, B))                                                          \
            return FR_ERR_SIZE;                                                                \
        const int training = b != NULL;                                                        \
        if (!gy || !a || !gx || (training && (!x || !center || !d)))                           \
            return FR_ERR_NULL;                                                                \
        if (FR_BN_MISALIGNED(gy, sizeof(S)) || FR_BN_MISALIGNED(x, sizeof(S)) ||               \
            FR_BN_MISALIGNED(y, sizeof(S)) || FR_BN_MISALIGNED(center, sizeof(T)) ||           \
            FR_BN_MISALIGNED(a, sizeof(T)) || FR_BN_MISALIGNED(b, sizeof(T)) ||                \
            FR_BN_MISALIGNED(d, sizeof(T)) || FR_BN_MISALIGNED(gx, sizeof(S)) ||               \
            FR_BN_MISALIGNED(gres, sizeof(S)))                                                 \
            return FR_ERR_UNSUPPORTED;                                                         \
        if (A == 0 || C == 0 || B == 0)                                                        \
            return FR_OK;                                                                      \
        fr_bn_job j;                                                                           \
        fr_bn_job_init(&j, A, C, B);                                                           \
        j.flags = (y ? FR_BN_B_MASK : 0) | (training ? FR_BN_B_TRAIN : 0) |                    \
                  (gres ? FR_BN_B_GRES : 0);                                                   \
        j.gy = gy;                                                                             \
        j.x = x;                                                                               \
        j.y = y;                                                                               \
        j.out = gx;                                                                            \
        j.gres = gres;                                                                         \
        j.k[0] = training ? center : NULL;                                                     \
        j.k[1] = a;                                                                            \
        j.k[2] = training ? b : NULL;                                                          \
        j.k[3] = training ? d : NULL;                                                          \
        size_t bytes = j.A * j.L * sizeof(S);                                                  \
        const void *xr = training ? x : NULL;                                                  \
        j.stream = fr_bn_want_stream(gx, bytes, FR_EW_STREAM_MIN_BYTES, gy, xr, y) &&          \
                   (!gres || fr_bn_want_stream(gres, bytes, FR_EW_STREAM_MIN_BYTES, gy, xr, y));\
        return fr_bn_run(&j, NULL, NULL, 2, ST);                                               \
    }                                                                                          \
                                                                                               \
    int fr_bn_backward_##SUF(const S *gy, const S *x, const S *y, const double *mean,          \
                             const double *invstd, const T *weight, int training, S *gx,       \
                             S *gres, T *grad_weight, T *grad_bias, int64_t A, int64_t C,      \
                             int64_t B)                                                        \
    {                                                                                          \
        if (fr_bn_bad_shape(A, C, B))                                                          \
            return FR_ERR_SIZE;                                                                \
        if (!gy || !x || !mean || !invstd || !gx || !grad_weight || !grad_bias)                \
            return FR_ERR_NULL;                                                                \
        if (FR_BN_MISALIGNED(gy, sizeof(S)) || FR_BN_MISALIGNED(x, sizeof(S)) ||               \
            FR_BN_MISALIGNED(y, sizeof(S)) || FR_BN_MISALIGNED(weight, sizeof(T)) ||           \
            FR_BN_MISALIGNED(gx, sizeof(S)) || FR_BN_MISALIGNED(gres, sizeof(S)) ||            \
            FR_BN_MISALIGNED(grad_weight, sizeof(T)) ||                                        \
            FR_BN_MISALIGNED(grad_bias, sizeof(T)) ||                                          \
            FR_BN_MISALIGNED(mean, 8) || FR_BN_MISALIGNED(invstd, 8))                          \
            return FR_ERR_UNSUPPORTED;                                                         \
        if (A == 0 || C == 0 || B == 0)                                                        \
            return FR_OK;                                                                      \
        fr_bn_job j;                                                                           \
        fr_bn_job_init(&j, A, C, B);                                                           \
        j.kind = y ? FR_BN_RED_BWD_MASK : FR_BN_RED_BWD;                                       \
        j.flags = (y ? FR_BN_B_MASK : 0) | (training ? FR_BN_B_TRAIN : 0) |                    \
                  (gres ? FR_BN_B_GRES : 0);                                                   \
        j.gy = gy;                                                                             \
        j.x = x;                                                                               \
        j.y = y;                                                                               \
        j.out = gx;                                                                            \
        j.gres = gres;                                                                         \
        size_t bytes = j.A * j.L * sizeof(S);                                                  \
        j.stream = fr_bn_want_stream(gx, bytes, FR_EW_STREAM_MIN_BYTES, gy, x, y) &&           \
                   (!gres || fr_bn_want_stream(gres, bytes, FR_EW_STREAM_MIN_BYTES, gy, x, y));\
        T *k = (T *)malloc(4 * j.C * sizeof(T));                                               \
        if (!k)                                                                                \
            return FR_ERR_ALLOC;                                                               \
        fr_bn_fin f;                                                                           \
        memset(&f, 0, sizeof f);                                                               \
        f.what = FR_BN_FIN_BWD;                                                                \
        f.f64 = F64;                                                                           \
        f.n = (double)A * (double)B;                                                           \
        f.training = training != 0;                                                            \
        f.ctr = mean;                                                                          \
        f.invstd = invstd;                                                                     \
        f.weight = weight;                                                                     \
        f.gw = grad_weight;                                                                    \
        f.gb = grad_bias;                                                                      \
        for (int q = 0; q < 4; q++)                                                            \
            f.k[q] = k + q * j.C;                                                              \
        j.k[0] = training ? f.k[0] : NULL;                                                     \
        j.k[1] = f.k[1];                                                                       \
        j.k[2] = training ? f.k[2] : NULL;                                                     \
        j.k[3] = training ? f.k[3] : NULL;                                                     \
        int st = fr_bn_run(&j, &f, mean, 2, ST);                                               \
        free(k);                                                                               \
        return st;                                                                             \
    }

FR_DEFINE_BN(f32, FR_ELEM_f32, float, 0, FR_BN_F32)
FR_DEFINE_BN(f64, FR_ELEM_f64, double, 1, FR_BN_F64)
FR_DEFINE_BN(f16, FR_ELEM_f16, float, 0, FR_BN_F16)
FR_DEFINE_BN(bf16, FR_ELEM_bf16, float, 0, FR_BN_BF16)

/* The plan of an op (for tests: which strategy a shape takes).  nred: arrays the reduction
 * reads (1 statistics, 2 backward, 3 backward through a ReLU).  info[0] row layout, [1] fused
 * per channel (channel layout), [2] K or KR chunks, [3] R or RR rows per chunk, [4] pieces per
 * row (channel layout), [5] column blocks (row layout). */
int fr_bn_plan_info(int64_t A, int64_t C, int64_t B, int64_t itemsize, int64_t nred,
                    int64_t *info)
{
    if (A < 0 || C < 0 || B < 0 || itemsize < 1 || nred < 1)
        return FR_ERR_SIZE;
    if (!info)
        return FR_ERR_NULL;
    /* a 16-bit dtype (itemsize 2) is cut as float32 */
    fr_bn_plan p = fr_bn_make_plan((size_t)A, (size_t)C, (size_t)B,
                                   (size_t)(itemsize < 4 ? 4 : itemsize), (size_t)itemsize,
                                   (size_t)nred);
    info[0] = p.rows;
    info[1] = p.fused;
    info[2] = (int64_t)(p.rows ? p.KR : p.K);
    info[3] = (int64_t)(p.rows ? p.RR : p.R);
    info[4] = (int64_t)p.nbp;
    info[5] = (int64_t)p.NB;
    return FR_OK;
}

/* ------------------------------------------------------------------ per-channel ops
 * The reference's bn_forward_coeffs and bn_running_update, operation for operation in float64
 * (the same bits), so that a training step or an inference call makes no NumPy call. */

/* inv[i] = 1 / sqrt(q[i] / count + eps) for a block of channels: on local arrays, so that it
 * vectorizes (the divisions and square roots are most of an inference call's per-channel work;
 * C = 256: 1.28 -> 0.5 us); IEEE operations, the same bits one at a time. */
#define FR_BN_COEF_BLOCK 128
FR_BN_CLONES static void fr_bn_invstd_block(const double *restrict q, double *restrict inv,
                                            size_t n, double count, double eps)
{
    if (count == 1.0) { /* inference (running variances): q / 1 is q, one division less */
        for (size_t i = 0; i < n; i++)
            inv[i] = 1.0 / sqrt(q[i] + eps);
        return;
    }
    for (size_t i = 0; i < n; i++)
        inv[i] = 1.0 / sqrt(q[i] / count + eps);
}

#define FR_DEFINE_BN_CHANNEL_OPS(SUF, T)                                                       \
    int fr_bn_forward_coeffs_##SUF(const void *mean, const void *m2, int stats_f64,            \
                                   double count, const T *weight, const T *bias, double eps,   \
                                   int fold, double *saved_mean, double *invstd, T *center,    \
                                   T *scale, T *shift, int64_t C)                              \
    {                                                                                          \
        if (C < 0)                                                                             \
            return FR_ERR_SIZE;                                                                \
        if (C > 0 && (!mean || !m2 || !saved_mean || !invstd || !center || !scale || !shift))  \
            return FR_ERR_NULL;                                                                \
        const size_t sa = stats_f64 ? 8 : sizeof(T);                                           \
        if (FR_BN_MISALIGNED(mean, sa) || FR_BN_MISALIGNED(m2, sa) ||                          \
            FR_BN_MISALIGNED(weight, sizeof(T)) || FR_BN_MISALIGNED(bias, sizeof(T)) ||        \
            FR_BN_MISALIGNED(center, sizeof(T)) || FR_BN_MISALIGNED(scale, sizeof(T)) ||       \
            FR_BN_MISALIGNED(shift, sizeof(T)) || FR_BN_MISALIGNED(saved_mean, 8) ||           \
            FR_BN_MISALIGNED(invstd, 8))                                                       \
            return FR_ERR_UNSUPPORTED;                                                         \
        double q[FR_BN_COEF_BLOCK], inv[FR_BN_COEF_BLOCK];                                     \
        for (int64_t c0 = 0; c0 < C; c0 += FR_BN_COEF_BLOCK) {                                 \
            const size_t n = (size_t)(C - c0 < FR_BN_COEF_BLOCK ? C - c0 : FR_BN_COEF_BLOCK);  \
            for (size_t i = 0; i < n; i++)                                                     \
                q[i] = stats_f64 ? ((const double *)m2)[c0 + i]                                \
                                 : (double)((const T *)m2)[c0 + i];                            \
            fr_bn_invstd_block(q, inv, n, count, eps);                                         \
            for (size_t i = 0; i < n; i++) {                                                   \
                const int64_t c = c0 + (int64_t)i;                                             \
                double mu = stats_f64 ? ((const double *)mean)[c] : (double)((const T *)mean)[c]; \
                double w = weight ? (double)weight[c] : 1.0;                                   \
                double b = bias ? (double)bias[c] : 0.0;                                       \
                double sc = w * inv[i];                                                        \
                saved_mean[c] = mu; /* may be mean itself: read above */                       \
                invstd[c] = inv[i];                                                            \
                scale[c] = (T)sc;                                                              \
                center[c] = fold ? (T)0 : (T)mu;                                               \
                shift[c] = fold ? (T)(b - mu * sc) : (T)b;                                     \
            }                                                                                  \
        }                                                                                      \
        return FR_OK;                                                                          \
    }                                                                                          \
                                                                                               \
    int fr_bn_running_update_##SUF(const double *mean, const double *m2, int64_t count,        \
                                   double momentum, T *running_mean, T *running_var, int64_t C) \
    {                                                                                          \
        if (C < 0)                                                                             \
            return FR_ERR_SIZE;                                                                \
        if (C > 0 && (!mean || (running_var && !m2)))                                          \
            return FR_ERR_NULL;                                                                \
        if (FR_BN_MISALIGNED(running_mean, sizeof(T)) ||                                       \
            FR_BN_MISALIGNED(running_var, sizeof(T)) || FR_BN_MISALIGNED(mean, 8) ||           \
            FR_BN_MISALIGNED(m2, 8))                                                           \
            return FR_ERR_UNSUPPORTED;                                                         \
        const double keep = 1.0 - momentum, unb = (double)(count - 1);                         \
        if (running_mean)                                                                      \
            for (int64_t c = 0; c < C; c++)                                                    \
                running_mean[c] = (T)(keep * (double)running_mean[c] + momentum * mean[c]);    \
        if (running_var)                                                                       \
            for (int64_t c = 0; c < C; c++)                                                    \
                running_var[c] = (T)(keep * (double)running_var[c] + momentum * (m2[c] / unb)); \
        return FR_OK;                                                                          \
    }

FR_DEFINE_BN_CHANNEL_OPS(f32, float)
FR_DEFINE_BN_CHANNEL_OPS(f64, double)

/* The common training step: bn_forward_train, then bn_running_update with the batch's count, in
 * one call from Python (one crossing instead of two); the two ops' bits.  Unaligned running
 * arrays are refused (FR_ERR_UNSUPPORTED) before any work; an empty batch leaves them alone. */
#define FR_DEFINE_BN_TRAIN_RUNNING(SUF, S, T, MS)                                              \
    int fr_bn_forward_train_running_##SUF(                                                     \
        const S *x, const T *weight, const T *bias, double eps, const S *residual, int relu,   \
        S *out, double *mean, double *m2, double *invstd, T *running_mean, T *running_var,     \
        double momentum, int64_t A, int64_t C, int64_t B)                                      \
    {                                                                                          \
        if (FR_BN_MISALIGNED(running_mean, sizeof(T)) ||                                       \
            FR_BN_MISALIGNED(running_var, sizeof(T)))                                          \
            return FR_ERR_UNSUPPORTED;                                                         \
        int st = fr_bn_forward_train_##SUF(x, weight, bias, eps, residual, relu, out, mean,    \
                                           m2, invstd, A, C, B);                               \
        if (st != FR_OK || A == 0 || B == 0)                                                   \
            return st;                                                                         \
        return fr_bn_running_update_##MS(mean, m2, A * B, momentum, running_mean,              \
                                          running_var, C);                                     \
    }

FR_DEFINE_BN_TRAIN_RUNNING(f32, FR_ELEM_f32, float, f32)
FR_DEFINE_BN_TRAIN_RUNNING(f64, FR_ELEM_f64, double, f64)
FR_DEFINE_BN_TRAIN_RUNNING(f16, FR_ELEM_f16, float, f32)
FR_DEFINE_BN_TRAIN_RUNNING(bf16, FR_ELEM_bf16, float, f32)

/* The common inference call: bn_forward_coeffs from the running statistics (fold: center 0,
 * scale w * invstd, shift b - mean * scale, count 1), then bn_apply with them, in one call from
 * Python (the two ops' bits).  saved_mean and invstd (C,) float64 receive the statistics used,
 * as bn_forward_coeffs writes them; the coefficients live in a buffer of this call. */
#define FR_DEFINE_BN_INFER(SUF, T)                                                             \
    int fr_bn_forward_infer_##SUF(const T *x, const T *running_mean, const T *running_var,     \
                                  const T *weight, const T *bias, double eps, const T *residual, \
                                  int relu, T *out, double *saved_mean, double *invstd,        \
                                  int64_t A, int64_t C, int64_t B)                             \
    {                                                                                          \
        if (fr_bn_bad_shape(A, C, B))                                                          \
            return FR_ERR_SIZE;                                                                \
        T *coef = (T *)malloc((3 * (size_t)C + 1) * sizeof(T));                                \
        if (!coef)                                                                             \
            return FR_ERR_ALLOC;                                                               \
        int st = fr_bn_forward_coeffs_##SUF(running_mean, running_var, 0, 1.0, weight, bias,  \
                                            eps, 1, saved_mean, invstd, coef, coef + C,        \
                                            coef + 2 * C, C);                                  \
        if (st == FR_OK)                                                                       \
            st = fr_bn_apply_##SUF(x, coef, coef + C, coef + 2 * C, residual, relu, out, A, C, \
                                   B);                                                         \
        free(coef);                                                                            \
        return st;                                                                             \
    }

FR_DEFINE_BN_INFER(f32, float)
FR_DEFINE_BN_INFER(f64, double)
