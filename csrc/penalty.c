/* L1 / L2 / elastic-net penalty kernels (OpenMP), the C backend of fastreg.
 *
 * Exact definitions: fastreg/reference/penalty.py.  Every product and sum below is one IEEE
 * operation in the array's dtype, in the reference's order (the build has -ffp-contract=off and
 * no fast-math), so results match it bit for bit; the exceptions are the reductions
 * (penalty_sums, the norms of group_lasso), which accumulate in double in another order.
 *
 * Each op's element loop is written once, as a macro instantiated for float (f32) and double
 * (f64); the branches that the reference takes per call (which terms exist, accumulate or not)
 * are compile-time constants of separate instances, so every loop vectorizes.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fastreg.h"
#include "elementwise.h"
#include "half.h"

/* ------------------------------------------------------------------ penalty_grad */

/* MODE 0: g = l1 * sgn(w) (c2 == 0); 1: g = c2 * w (l1 == 0); 2: l1 * sgn(w) + c2 * w
 * (sgn: elementwise.h).  ACC: out = out + g, else out = g.  `omp simd`: out may be w (the
 * only dependence is within one index). */
#define FR_DEFINE_PENALTY_GRAD(SUF, T)                                                        \
    typedef struct {                                                                          \
        const T *w;                                                                           \
        const T *out;                                                                         \
        T l1, c2;                                                                             \
    } fr_pgrad_args_##SUF;                                                                    \
                                                                                              \
    FR_INLINE void fr_pgrad_##SUF##_elems(const void *args, void *dst, size_t lo, size_t hi,  \
                                          const int MODE, const int ACC)                      \
    {                                                                                         \
        const fr_pgrad_args_##SUF *a = (const fr_pgrad_args_##SUF *)args;                     \
        const T *w = a->w + lo, *o = a->out + lo;                                             \
        T *d = (T *)dst;                                                                      \
        const T l1 = a->l1, c2 = a->c2;                                                       \
        const size_t len = hi - lo;                                                           \
        _Pragma("omp simd")                                                                   \
        for (size_t i = 0; i < len; i++) {                                                    \
            T x = w[i];                                                                       \
            T g = MODE == 0 ? l1 * fr_sgn_##SUF(x)                                            \
                : MODE == 1 ? c2 * x                                                          \
                : l1 * fr_sgn_##SUF(x) + c2 * x;                                              \
            d[i] = ACC ? o[i] + g : g;                                                        \
        }                                                                                     \
    }                                                                                         \
    FR_EW_RANGE_FNS(fr_pgrad_##SUF##_0, fr_pgrad_##SUF##_elems(args, dst, lo, hi, 0, 0))      \
    FR_EW_RANGE_FNS(fr_pgrad_##SUF##_1, fr_pgrad_##SUF##_elems(args, dst, lo, hi, 1, 0))      \
    FR_EW_RANGE_FNS(fr_pgrad_##SUF##_2, fr_pgrad_##SUF##_elems(args, dst, lo, hi, 2, 0))      \
    FR_EW_RANGE_FNS(fr_pgrad_##SUF##_0a, fr_pgrad_##SUF##_elems(args, dst, lo, hi, 0, 1))     \
    FR_EW_RANGE_FNS(fr_pgrad_##SUF##_1a, fr_pgrad_##SUF##_elems(args, dst, lo, hi, 1, 1))     \
    FR_EW_RANGE_FNS(fr_pgrad_##SUF##_2a, fr_pgrad_##SUF##_elems(args, dst, lo, hi, 2, 1))     \
                                                                                              \
    int fr_penalty_grad_##SUF(const T *w, T l1, T c2, T *out, int accumulate, int64_t n)      \
    {                                                                                         \
        static const fr_ew_kernel kernels[2][3] = {                                           \
            {FR_EW_KERNEL(fr_pgrad_##SUF##_0), FR_EW_KERNEL(fr_pgrad_##SUF##_1),              \
             FR_EW_KERNEL(fr_pgrad_##SUF##_2)},                                               \
            {FR_EW_KERNEL(fr_pgrad_##SUF##_0a), FR_EW_KERNEL(fr_pgrad_##SUF##_1a),            \
             FR_EW_KERNEL(fr_pgrad_##SUF##_2a)}};                                             \
        if (n < 0)                                                                            \
            return FR_ERR_SIZE;                                                               \
        if (!w || !out)                                                                       \
            return FR_ERR_NULL;                                                               \
        /* the reference's branches: c2 == 0 first (also when l1 == 0), then l1 == 0 */       \
        int mode = c2 == 0 ? 0 : l1 == 0 ? 1 : 2;                                             \
        fr_pgrad_args_##SUF args = {w, out, l1, c2};                                          \
        int stream = fr_ew_want_stream(accumulate || (const void *)w == (const void *)out,    \
                                       (size_t)n * sizeof(T));                                \
        fr_ew_run(kernels[accumulate != 0][mode], &args, out, sizeof(T), (size_t)n, stream);  \
        return FR_OK;                                                                         \
    }
FR_DEFINE_PENALTY_GRAD(f32, float)
FR_DEFINE_PENALTY_GRAD(f64, double)

/* ------------------------------------------------------------------ soft_threshold */

#define FR_DEFINE_SOFT_THRESHOLD(SUF, T)                                                        \
    typedef struct {                                                                            \
        const T *w;                                                                             \
        T t, s;                                                                                 \
    } fr_softthr_args_##SUF;                                                                    \
                                                                                                \
    FR_INLINE void fr_softthr_##SUF##_elems(const void *args, void *dst, size_t lo, size_t hi)  \
    {                                                                                           \
        const fr_softthr_args_##SUF *a = (const fr_softthr_args_##SUF *)args;                   \
        const T *w = a->w + lo;                                                                 \
        T *d = (T *)dst;                                                                        \
        const T t = a->t, nt = -a->t, s = a->s;                                                 \
        const size_t len = hi - lo;                                                             \
        _Pragma("omp simd")                                                                     \
        for (size_t i = 0; i < len; i++) {                                                      \
            T x = w[i];                                                                         \
            d[i] = fr_soft_##SUF(x, t, nt) * s;                                                 \
        }                                                                                       \
    }                                                                                           \
    FR_EW_RANGE_FNS(fr_softthr_##SUF, fr_softthr_##SUF##_elems(args, dst, lo, hi))              \
                                                                                                \
    int fr_soft_threshold_##SUF(const T *w, T t, T s, T *out, int64_t n)                        \
    {                                                                                           \
        static const fr_ew_kernel kernel = FR_EW_KERNEL(fr_softthr_##SUF);                      \
        if (n < 0)                                                                              \
            return FR_ERR_SIZE;                                                                 \
        if (!w || !out)                                                                         \
            return FR_ERR_NULL;                                                                 \
        fr_softthr_args_##SUF args = {w, t, s};                                                 \
        int stream = fr_ew_want_stream((const void *)w == (const void *)out,                    \
                                       (size_t)n * sizeof(T));                                  \
        fr_ew_run(kernel, &args, out, sizeof(T), (size_t)n, stream);                            \
        return FR_OK;                                                                           \
    }
FR_DEFINE_SOFT_THRESHOLD(f32, float)
FR_DEFINE_SOFT_THRESHOLD(f64, double)

/* ------------------------------------------------------------------ 16-bit, fused */

/* penalty_grad and soft_threshold of float16 (kind FR_HALF_F16) / bfloat16 (FR_HALF_BF16) arrays
 * in one pass, with the float32 instance's element loop on the exact float32 values and the
 * result rounded to nearest even: the same bits as the conversion passes around the float32
 * kernel (fastreg/_half.py), without the two float32 arrays in memory.  Eight elements at a time
 * converted in registers where the CPU allows (float16: F16C; bfloat16: AVX2; csrc/half.h),
 * else blocks of FR_H16_BLOCK elements converted by the portable integer code. */
#define FR_H16_BLOCK 512   /* 2 KiB per float32 buffer: all three stay in L1 */

typedef struct {
    const uint16_t *w, *out;   /* out: read when accumulating */
    int kind, mode, acc;       /* mode: penalty_grad's MODE; -1 for soft_threshold */
    float a, b;                /* (l1, c2), or soft_threshold's (t, s) */
} fr_h16_args;

/* g[0, len) = the float32 instance's element loop over bw (and bo when accumulating) for one
 * (MODE, ACC): penalty_grad's MODE, or -1 for soft_threshold; (p0, p1) = (l1, c2) or (t, s). */
FR_INLINE void fr_h16_elems(const float *bw, const float *bo, float *g, size_t len, float p0,
                            float p1, const int MODE, const int ACC)
{
    if (MODE < 0) {
        fr_softthr_args_f32 s = {bw, p0, p1};
        fr_softthr_f32_elems(&s, g, 0, len);
    } else {
        fr_pgrad_args_f32 p = {bw, bo, p0, p1};
        fr_pgrad_f32_elems(&p, g, 0, len, MODE, ACC);
    }
}

/* The same for a's (mode, acc), picked at run time (compile-time MODE and ACC in each call:
 * the loops vectorize). */
FR_INLINE void fr_h16_block(const fr_h16_args *a, const float *bw, const float *bo, float *g,
                            size_t len)
{
    switch (a->mode < 0 ? 6 : a->mode * 2 + (a->acc != 0)) {
    case 0: fr_h16_elems(bw, bo, g, len, a->a, a->b, 0, 0); break;
    case 1: fr_h16_elems(bw, bo, g, len, a->a, a->b, 0, 1); break;
    case 2: fr_h16_elems(bw, bo, g, len, a->a, a->b, 1, 0); break;
    case 3: fr_h16_elems(bw, bo, g, len, a->a, a->b, 1, 1); break;
    case 4: fr_h16_elems(bw, bo, g, len, a->a, a->b, 2, 0); break;
    case 5: fr_h16_elems(bw, bo, g, len, a->a, a->b, 2, 1); break;
    default: fr_h16_elems(bw, bo, g, len, a->a, a->b, -1, 0); break;
    }
}

/* Portable conversions of n values (the kind constant in each loop). */
static void fr_h16_widen(const uint16_t *src, float *dst, size_t n, int kind)
{
    if (kind == FR_HALF_BF16)
        for (size_t i = 0; i < n; i++)
            dst[i] = fr_half_to_f32(src[i], FR_HALF_BF16);
    else
        for (size_t i = 0; i < n; i++)
            dst[i] = fr_half_to_f32(src[i], FR_HALF_F16);
}

static void fr_h16_narrow(const float *src, uint16_t *dst, size_t n, int kind)
{
    if (kind == FR_HALF_BF16)
        for (size_t i = 0; i < n; i++)
            dst[i] = fr_f32_to_half(src[i], FR_HALF_BF16);
    else
        for (size_t i = 0; i < n; i++)
            dst[i] = fr_f32_to_half(src[i], FR_HALF_F16);
}

/* Elements [lo, hi) in blocks, portable conversions; results to d[0, hi - lo). */
static void fr_h16_blocks(const fr_h16_args *a, uint16_t *d, size_t lo, size_t hi)
{
    float bw[FR_H16_BLOCK], bo[FR_H16_BLOCK], g[FR_H16_BLOCK];
    for (size_t k = lo; k < hi; k += FR_H16_BLOCK) {
        size_t len = hi - k < FR_H16_BLOCK ? hi - k : FR_H16_BLOCK;
        fr_h16_widen(a->w + k, bw, len, a->kind);
        if (a->acc)
            fr_h16_widen(a->out + k, bo, len, a->kind);
        fr_h16_block(a, bw, bo, g, len);
        fr_h16_narrow(g, d + (k - lo), len, a->kind);
    }
}

/* The same eight at a time, LOAD8 / STORE8 converting in registers: NAME##_loop runs the
 * element loop of one (MODE, ACC) on eight values (MODE -1: soft_threshold), which inlines to
 * vector operations, and NAME picks the instance; the tail goes through fr_h16_blocks. */
#define FR_DEFINE_H16_X8(NAME, TARGET, LOAD8, STORE8)                                      \
    TARGET static inline __attribute__((always_inline)) size_t NAME##_loop(                 \
        const uint16_t *w, const uint16_t *o, uint16_t *d, size_t n, float p0, float p1,   \
        const int MODE, const int ACC)                                                     \
    {                                                                                      \
        size_t i = 0;                                                                      \
        for (; i + 8 <= n; i += 8) {                                                       \
            float x[8], ob[8], g[8];                                                       \
            _mm256_storeu_ps(x, LOAD8(w + i));                                             \
            if (ACC)                                                                       \
                _mm256_storeu_ps(ob, LOAD8(o + i));                                        \
            fr_h16_elems(x, ob, g, 8, p0, p1, MODE, ACC);                                 \
            STORE8(d + i, _mm256_loadu_ps(g));                                             \
        }                                                                                  \
        return i;                                                                          \
    }                                                                                      \
    TARGET static void NAME(const fr_h16_args *a, uint16_t *d, size_t lo, size_t hi)       \
    {                                                                                      \
        const uint16_t *w = a->w + lo, *o = a->out + lo;                                   \
        const size_t n = hi - lo;                                                          \
        const float p0 = a->a, p1 = a->b;                                                  \
        size_t done;                                                                       \
        switch (a->mode < 0 ? 6 : a->mode * 2 + (a->acc != 0)) {                           \
        case 0: done = NAME##_loop(w, o, d, n, p0, p1, 0, 0); break;                       \
        case 1: done = NAME##_loop(w, o, d, n, p0, p1, 0, 1); break;                       \
        case 2: done = NAME##_loop(w, o, d, n, p0, p1, 1, 0); break;                       \
        case 3: done = NAME##_loop(w, o, d, n, p0, p1, 1, 1); break;                       \
        case 4: done = NAME##_loop(w, o, d, n, p0, p1, 2, 0); break;                       \
        case 5: done = NAME##_loop(w, o, d, n, p0, p1, 2, 1); break;                       \
        default: done = NAME##_loop(w, o, d, n, p0, p1, -1, 0); break;                     \
        }                                                                                  \
        if (done < n)                                                                      \
            fr_h16_blocks(a, d + done, lo + done, hi);                                     \
    }
#ifdef FR_HAVE_F16C_KERNELS
FR_DEFINE_H16_X8(fr_h16_f16c, FR_F16C, fr_f16x8_load, fr_f16x8_store)
#endif
#ifdef FR_HAVE_BF16_AVX2
FR_DEFINE_H16_X8(fr_h16_bf16_avx2, FR_BF16_AVX2, fr_bf16x8_load, fr_bf16x8_store)
#endif

/* fr_ew_fn over elements [lo, hi): results (uint16 bits) to dst[0, hi - lo). */
static void fr_h16_range(const void *args, void *dst, size_t lo, size_t hi)
{
    const fr_h16_args *a = (const fr_h16_args *)args;
#ifdef FR_HAVE_F16C_KERNELS
    if (a->kind == FR_HALF_F16 && fr_get_isa() >= 1 && fr_cpu_has_f16c()) {
        fr_h16_f16c(a, (uint16_t *)dst, lo, hi);
        return;
    }
#endif
#ifdef FR_HAVE_BF16_AVX2
    if (a->kind == FR_HALF_BF16 && fr_get_isa() >= 1) {
        fr_h16_bf16_avx2(a, (uint16_t *)dst, lo, hi);
        return;
    }
#endif
    fr_h16_blocks(a, (uint16_t *)dst, lo, hi);
}

static int fr_h16_run(const fr_h16_args *args, uint16_t *out, int64_t n)
{
    if (n < 0)
        return FR_ERR_SIZE;
    if (args->kind != FR_HALF_F16 && args->kind != FR_HALF_BF16)
        return FR_ERR_UNSUPPORTED;
    if (n == 0)
        return FR_OK;
    if (!args->w || !out)
        return FR_ERR_NULL;
    /* one function: its loops pick their instructions (the conversions need F16C / AVX2) */
    static const fr_ew_kernel kernel = {fr_h16_range, NULL, NULL};
    int stream = fr_ew_want_stream(args->acc || (const void *)args->w == (const void *)out,
                                   (size_t)n * sizeof(uint16_t));
    fr_ew_run(kernel, args, out, sizeof(uint16_t), (size_t)n, stream);
    return FR_OK;
}

int fr_penalty_grad_half(const uint16_t *w, int kind, float l1, float c2, uint16_t *out,
                         int accumulate, int64_t n)
{
    /* the reference's branches: c2 == 0 first (also when l1 == 0), then l1 == 0 */
    fr_h16_args args = {w, out, kind, c2 == 0 ? 0 : l1 == 0 ? 1 : 2, accumulate != 0, l1, c2};
    return fr_h16_run(&args, out, n);
}

int fr_soft_threshold_half(const uint16_t *w, int kind, float t, float s, uint16_t *out,
                           int64_t n)
{
    fr_h16_args args = {w, out, kind, -1, 0, t, s};
    return fr_h16_run(&args, out, n);
}

/* ------------------------------------------------------------------ penalty_sums */

/* Partial sums of |w| and w**2 over [lo, hi), in double; `omp simd reduction` lets the
 * compiler keep several vector accumulators (any order is allowed here). */
#define FR_DEFINE_PENALTY_SUMS(SUF, T)                                                             \
    FR_INLINE void fr_sums_##SUF##_elems(const T *w, size_t len, double *sa, double *sq)           \
    {                                                                                              \
        double a = 0.0, q = 0.0;                                                                   \
        _Pragma("omp simd reduction(+ : a, q)")                                                    \
        for (size_t i = 0; i < len; i++) {                                                         \
            double x = (double)w[i];                                                               \
            a += fabs(x);                                                                          \
            q += x * x;                                                                            \
        }                                                                                          \
        *sa = a;                                                                                   \
        *sq = q;                                                                                   \
    }                                                                                              \
    static void fr_sums_##SUF##_portable(const T *w, size_t len, double *sa, double *sq)           \
    {                                                                                              \
        fr_sums_##SUF##_elems(w, len, sa, sq);                                                     \
    }                                                                                              \
    FR_EW_SUMS_AVX2(SUF, T)                                                                        \
                                                                                                   \
    int fr_penalty_sums_##SUF(const T *w, int64_t n, double *sum_abs, double *sum_sq)              \
    {                                                                                              \
        if (n < 0)                                                                                 \
            return FR_ERR_SIZE;                                                                    \
        if (!w || !sum_abs || !sum_sq)                                                             \
            return FR_ERR_NULL;                                                                    \
        void (*fn)(const T *, size_t, double *, double *) = fr_sums_##SUF##_portable;              \
        FR_EW_SUMS_PICK(SUF, fn);                                                                  \
        const size_t tile = FR_EW_TILE_BYTES / sizeof(T), un = (size_t)n;                          \
        const size_t ntiles = (un + tile - 1) / tile;                                              \
        const int nt = fr_region_threads((int64_t)ntiles);                                         \
        double sa = 0.0, sq = 0.0;                                                                 \
        if (nt <= 1) { /* tiles in order, on the calling thread */                                \
            for (size_t k = 0; k < ntiles; k++) {                                                  \
                size_t lo = k * tile, hi = lo + tile < un ? lo + tile : un;                        \
                double a, q;                                                                       \
                fn(w + lo, hi - lo, &a, &q);                                                       \
                sa += a;                                                                           \
                sq += q;                                                                           \
            }                                                                                      \
        } else {                                                                                   \
            /* per-tile partial sums, added in tile order: the same result as the serial loop,     \
             * whatever the number of threads (an OpenMP reduction would not be) */                \
            double *part = (double *)malloc(2 * ntiles * sizeof(double));                          \
            if (!part)                                                                             \
                return FR_ERR_ALLOC;                                                               \
            FR_FOR(nt, size_t k = 0, k < ntiles, k++, {                                            \
                size_t lo = k * tile, hi = lo + tile < un ? lo + tile : un;                        \
                fn(w + lo, hi - lo, part + 2 * k, part + 2 * k + 1);                               \
            });                                                                                    \
            for (size_t k = 0; k < ntiles; k++) {                                                  \
                sa += part[2 * k];                                                                 \
                sq += part[2 * k + 1];                                                             \
            }                                                                                      \
            free(part);                                                                            \
        }                                                                                          \
        *sum_abs = sa;                                                                             \
        *sum_sq = sq;                                                                              \
        return FR_OK;                                                                              \
    }

#ifdef FR_EW_X86
#define FR_EW_SUMS_AVX2(SUF, T)                                                      \
    FR_EW_AVX2 static void fr_sums_##SUF##_avx2(const T *w, size_t len, double *sa,  \
                                                double *sq)                          \
    {                                                                                \
        fr_sums_##SUF##_elems(w, len, sa, sq);                                       \
    }
#define FR_EW_SUMS_PICK(SUF, fn)        \
    do {                                \
        if (fr_get_isa() >= 1)          \
            fn = fr_sums_##SUF##_avx2;  \
    } while (0)
#else
#define FR_EW_SUMS_AVX2(SUF, T)
#define FR_EW_SUMS_PICK(SUF, fn) do {} while (0)
#endif

FR_DEFINE_PENALTY_SUMS(f32, float)
FR_DEFINE_PENALTY_SUMS(f64, double)

/* ------------------------------------------------------------------ all_finite */

/* Finite <=> the exponent bits are not all ones; an integer test vectorizes without any
 * floating-point compare.  Tiles after a found non-finite element are skipped. */
#define FR_DEFINE_ALL_FINITE(SUF, T, UT, EXP)                                  \
    int fr_all_finite_##SUF(const T *a, int64_t n, int *result)                \
    {                                                                          \
        if (n < 0)                                                             \
            return FR_ERR_SIZE;                                                \
        if (!a || !result)                                                     \
            return FR_ERR_NULL;                                                \
        const size_t tile = FR_EW_TILE_BYTES / sizeof(T), un = (size_t)n;      \
        const size_t ntiles = (un + tile - 1) / tile;                          \
        int found = 0;                                                         \
        const int nt = fr_region_threads((int64_t)ntiles);                     \
        FR_FOR(nt, size_t k = 0, k < ntiles, k++, {                            \
            if (__atomic_load_n(&found, __ATOMIC_RELAXED))                     \
                continue;                                                      \
            size_t lo = k * tile, hi = lo + tile < un ? lo + tile : un;        \
            UT bad = 0;                                                        \
            _Pragma("omp simd reduction(| : bad)")                             \
            for (size_t i = lo; i < hi; i++) {                                 \
                UT b;                                                          \
                memcpy(&b, a + i, sizeof b);                                   \
                bad |= (UT)((b & EXP) == EXP);                                 \
            }                                                                  \
            if (bad)                                                           \
                __atomic_store_n(&found, 1, __ATOMIC_RELAXED);                 \
        });                                                                    \
        *result = !found;                                                      \
        return FR_OK;                                                          \
    }
FR_DEFINE_ALL_FINITE(f32, float, uint32_t, UINT32_C(0x7F800000))
FR_DEFINE_ALL_FINITE(f64, double, uint64_t, UINT64_C(0x7FF0000000000000))

/* ------------------------------------------------------------------ group_lasso */

/* w, out (A, L, B); group (a, b) = w[a, :, b].  Work items are (a, run of up to FR_GL_RUN
 * b's): the squared norms of the run's groups accumulate row by row (contiguous, vectorized),
 * then each row is scaled.  f = norm > t ? 1 - t / norm : 0 in double, cast to T once;
 * out = w * f, one multiply in T.  out may be w: a work item reads its elements before it
 * writes them, and items are disjoint. */
#define FR_GL_RUN 512

#define FR_DEFINE_GROUP_LASSO(SUF, T)                                                    \
    int fr_group_lasso_##SUF(const T *w, double t, T *out, int64_t A, int64_t L, int64_t B)  \
    {                                                                                    \
        if (A < 0 || L < 0 || B < 0)                                                     \
            return FR_ERR_SIZE;                                                          \
        if (!w || !out)                                                                  \
            return FR_ERR_NULL;                                                          \
        const size_t uA = (size_t)A, uL = (size_t)L, uB = (size_t)B;                     \
        if (uA == 0 || uL == 0 || uB == 0)                                               \
            return FR_OK;                                                                \
        const size_t runs = (uB + FR_GL_RUN - 1) / FR_GL_RUN, items = uA * runs;         \
        const double td = t;                                                             \
        const int nt = fr_region_threads((int64_t)items);                                \
        FR_FOR(nt, size_t it = 0, it < items, it++, {                                    \
            double acc[FR_GL_RUN];                                                       \
            T f[FR_GL_RUN];                                                              \
            const size_t a = it / runs, b0 = (it % runs) * FR_GL_RUN;                    \
            const size_t nb = uB - b0 < FR_GL_RUN ? uB - b0 : FR_GL_RUN;                 \
            const T *wa = w + a * uL * uB + b0;                                          \
            T *oa = out + a * uL * uB + b0;                                              \
            if (uB == 1) { /* one contiguous group: a plain reduction */                 \
                double s = 0.0;                                                          \
                _Pragma("omp simd reduction(+ : s)")                                     \
                for (size_t l = 0; l < uL; l++)                                          \
                    s += (double)wa[l] * (double)wa[l];                                  \
                acc[0] = s;                                                              \
            } else {                                                                     \
                for (size_t j = 0; j < nb; j++)                                          \
                    acc[j] = 0.0;                                                        \
                for (size_t l = 0; l < uL; l++) {                                        \
                    const T *row = wa + l * uB;                                          \
                    for (size_t j = 0; j < nb; j++)                                      \
                        acc[j] += (double)row[j] * (double)row[j];                       \
                }                                                                        \
            }                                                                            \
            for (size_t j = 0; j < nb; j++) {                                            \
                double norm = sqrt(acc[j]);                                              \
                f[j] = (T)(norm > td ? 1.0 - td / norm : 0.0);                           \
            }                                                                            \
            for (size_t l = 0; l < uL; l++) {                                            \
                const T *row = wa + l * uB;                                              \
                T *orow = oa + l * uB;                                                   \
                _Pragma("omp simd")                                                      \
                for (size_t j = 0; j < nb; j++)                                          \
                    orow[j] = row[j] * f[j];                                             \
            }                                                                            \
        });                                                                              \
        return FR_OK;                                                                    \
    }
FR_DEFINE_GROUP_LASSO(f32, float)
FR_DEFINE_GROUP_LASSO(f64, double)
