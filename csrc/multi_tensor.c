/* Multi-tensor ops over lists of arrays (OpenMP): the weight-EMA update, gradient norms and
 * scaling, and AGC's per-row norms and scaling; the C backend of fastreg.ema and fastreg.clip.
 *
 * Exact definitions: fastreg/reference/ema.py and clip.py.  A list op sees `count` arrays
 * (pointers and sizes) of one dtype and splits them, all together, into tiles of
 * FR_EW_TILE_BYTES of one array each; the tiles are the work items of one parallel region, so
 * many small arrays (a model's biases) share the threads as well as one large one.
 *
 * The EMA update is fma(coef, p - ema, base) with C's fma / fmaf (correctly rounded, never
 * contracted otherwise: -ffp-contract=off), in a portable loop and in a loop compiled for
 * AVX2 + FMA (target attribute), chosen at each call by fr_get_isa() and a CPU check; both give
 * the reference's bits.  Reductions accumulate in double per tile (any order inside a tile,
 * `omp simd reduction`), and the tiles' results are combined in tile order: the same result
 * for any number of threads.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "fastreg.h"
#include "elementwise.h"

/* the reductions of fr_norm_sum / fr_row_norm_sums (fastreg/cpu/clip.py uses the same codes) */
enum { FR_NORM_SQ = 0, FR_NORM_ABS = 1, FR_NORM_MAX = 2, FR_NORM_POW = 3 };

/* Two partial results: a sum, or a maximum that keeps NaN. */
static double fr_norm_merge(double a, double b, int mode)
{
    if (mode != FR_NORM_MAX)
        return a + b;
    if (a != a || b != b)
        return NAN;
    return a >= b ? a : b;
}

/* Tile t of the list: array *k, elements [*lo, *hi).  first[k] is the first tile of array k
 * (first[count] the number of tiles); the array is found by binary search. */
static void fr_mt_tile(const int64_t *first, int64_t count, const int64_t *n, size_t tile,
                       int64_t t, int64_t *k, size_t *lo, size_t *hi)
{
    int64_t a = 0, b = count - 1;
    while (a < b) { /* the last array whose first tile is <= t */
        int64_t m = (a + b + 1) / 2;
        if (first[m] <= t)
            a = m;
        else
            b = m - 1;
    }
    *k = a;
    *lo = (size_t)(t - first[a]) * tile;
    *hi = *lo + tile < (size_t)n[a] ? *lo + tile : (size_t)n[a];
}

/* first[0..count]: tile offsets of the arrays (malloc'ed; NULL on failure or bad sizes). */
static int64_t *fr_mt_first(const int64_t *n, int64_t count, size_t tile, int *status)
{
    int64_t *first = (int64_t *)malloc((size_t)(count + 1) * sizeof(int64_t));
    if (!first) {
        *status = FR_ERR_ALLOC;
        return NULL;
    }
    first[0] = 0;
    for (int64_t k = 0; k < count; k++) {
        if (n[k] < 0) {
            free(first);
            *status = FR_ERR_SIZE;
            return NULL;
        }
        first[k + 1] = first[k] + (int64_t)(((size_t)n[k] + tile - 1) / tile);
    }
    *status = FR_OK;
    return first;
}

#ifdef FR_EW_X86
#define FR_MT_FMA __attribute__((target("avx2,fma")))
#define FR_MT_AVX2 FR_EW_AVX2
static int fr_mt_has_fma(void)
{
    static int has = -1;
    if (has < 0)
        has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return has;
}
#endif

#define FR_DEFINE_MULTI_TENSOR(SUF, T, FMA)                                                       \
    /* ---- EMA: e = fma(coef, p - e, small ? e : p) */                                           \
    FR_INLINE void fr_ema_##SUF##_elems(T *e, const T *p, size_t len, T coef, int small)          \
    {                                                                                             \
        if (small) {                                                                              \
            _Pragma("omp simd")                                                                   \
            for (size_t i = 0; i < len; i++) {                                                    \
                T ei = e[i];                                                                      \
                e[i] = FMA(coef, p[i] - ei, ei);                                                  \
            }                                                                                     \
        } else {                                                                                  \
            _Pragma("omp simd")                                                                   \
            for (size_t i = 0; i < len; i++) {                                                    \
                T pi = p[i];                                                                      \
                e[i] = FMA(coef, pi - e[i], pi);                                                  \
            }                                                                                     \
        }                                                                                         \
    }                                                                                             \
    typedef void (*fr_ema_fn_##SUF)(T *, const T *, size_t, T, int);                              \
    static void fr_ema_##SUF##_portable(T *e, const T *p, size_t len, T coef, int small)          \
    {                                                                                             \
        fr_ema_##SUF##_elems(e, p, len, coef, small);                                             \
    }                                                                                             \
    FR_MT_EMA_FMA(SUF, T)                                                                         \
                                                                                                  \
    int fr_ema_update_##SUF(T *const *ema, const T *const *p, const int64_t *n, int64_t count,   \
                            T w)                                                                  \
    {                                                                                             \
        if (count < 0)                                                                            \
            return FR_ERR_SIZE;                                                                   \
        if (count == 0)                                                                           \
            return FR_OK;                                                                         \
        if (!ema || !p || !n)                                                                     \
            return FR_ERR_NULL;                                                                   \
        for (int64_t k = 0; k < count; k++)                                                       \
            if (n[k] > 0 && (!ema[k] || !p[k]))                                                   \
                return FR_ERR_NULL;                                                               \
        const T one = 1;                                                                          \
        const int small = fabs((double)w) < 0.5;                                                  \
        const T coef = small ? w : w - one;                                                       \
        fr_ema_fn_##SUF fn = fr_ema_##SUF##_portable;                                             \
        FR_MT_EMA_PICK(SUF, fn);                                                                  \
        const size_t tile = FR_EW_TILE_BYTES / sizeof(T);                                         \
        int status;                                                                               \
        int64_t *first = fr_mt_first(n, count, tile, &status);                                   \
        if (!first)                                                                               \
            return status;                                                                        \
        const int64_t ntiles = first[count];                                                      \
        const int nt = fr_region_threads(ntiles);                                                 \
        FR_FOR(nt, int64_t t = 0, t < ntiles, t++, {                                              \
            int64_t k;                                                                            \
            size_t lo, hi;                                                                        \
            fr_mt_tile(first, count, n, tile, t, &k, &lo, &hi);                                   \
            fn(ema[k] + lo, p[k] + lo, hi - lo, coef, small);                                     \
        });                                                                                       \
        free(first);                                                                              \
        return FR_OK;                                                                             \
    }                                                                                             \
                                                                                                  \
    /* ---- norms: the float64 reduction of a range (fastreg/reference/clip.py) */               \
    FR_INLINE double fr_norm_##SUF##_elems(const T *a, size_t len, int mode, double pw)           \
    {                                                                                             \
        double s = 0.0;                                                                           \
        if (mode == FR_NORM_SQ) {                                                                 \
            _Pragma("omp simd reduction(+ : s)")                                                  \
            for (size_t i = 0; i < len; i++) {                                                    \
                double x = (double)a[i];                                                          \
                s += x * x;                                                                       \
            }                                                                                     \
        } else if (mode == FR_NORM_ABS) {                                                         \
            _Pragma("omp simd reduction(+ : s)")                                                  \
            for (size_t i = 0; i < len; i++)                                                      \
                s += fabs((double)a[i]);                                                          \
        } else if (mode == FR_NORM_MAX) {                                                         \
            /* NaN is told apart by a flag: a max reduction does not keep it */                  \
            double m = 0.0;                                                                       \
            int bad = 0;                                                                          \
            _Pragma("omp simd reduction(max : m) reduction(| : bad)")                             \
            for (size_t i = 0; i < len; i++) {                                                    \
                double x = fabs((double)a[i]);                                                    \
                bad |= x != x;                                                                    \
                m = m > x ? m : x;                                                                \
            }                                                                                     \
            s = bad ? (double)NAN : m;                                                            \
        } else {                                                                                  \
            for (size_t i = 0; i < len; i++)                                                      \
                s += pow(fabs((double)a[i]), pw);                                                 \
        }                                                                                         \
        return s;                                                                                 \
    }                                                                                             \
    typedef double (*fr_norm_fn_##SUF)(const T *, size_t, int, double);                           \
    static double fr_norm_##SUF##_portable(const T *a, size_t len, int mode, double pw)           \
    {                                                                                             \
        return fr_norm_##SUF##_elems(a, len, mode, pw);                                           \
    }                                                                                             \
    FR_MT_NORM_AVX2(SUF, T)                                                                       \
                                                                                                  \
    int fr_norm_sum_##SUF(const T *const *a, const int64_t *n, int64_t count, int mode,           \
                          double pw, double *result)                                              \
    {                                                                                             \
        if (count < 0)                                                                            \
            return FR_ERR_SIZE;                                                                   \
        if (!result || (count > 0 && (!a || !n)))                                                 \
            return FR_ERR_NULL;                                                                   \
        *result = 0.0;                                                                            \
        if (count == 0)                                                                           \
            return FR_OK;                                                                         \
        for (int64_t k = 0; k < count; k++)                                                       \
            if (n[k] > 0 && !a[k])                                                                \
                return FR_ERR_NULL;                                                               \
        fr_norm_fn_##SUF fn = fr_norm_##SUF##_portable;                                           \
        FR_MT_NORM_PICK(SUF, fn);                                                                 \
        const size_t tile = FR_EW_TILE_BYTES / sizeof(T);                                         \
        int status;                                                                               \
        int64_t *first = fr_mt_first(n, count, tile, &status);                                    \
        if (!first)                                                                               \
            return status;                                                                        \
        const int64_t ntiles = first[count];                                                      \
        const int nt = fr_region_threads(ntiles);                                                 \
        double s = 0.0;                                                                           \
        if (nt <= 1) { /* tiles in order, on the calling thread */                               \
            for (int64_t t = 0; t < ntiles; t++) {                                                \
                int64_t k;                                                                        \
                size_t lo, hi;                                                                    \
                fr_mt_tile(first, count, n, tile, t, &k, &lo, &hi);                               \
                s = fr_norm_merge(s, fn(a[k] + lo, hi - lo, mode, pw), mode);                     \
            }                                                                                     \
        } else { /* per-tile results, merged in tile order: the serial loop's result */          \
            double *part = (double *)malloc((size_t)ntiles * sizeof(double));                     \
            if (!part) {                                                                          \
                free(first);                                                                      \
                return FR_ERR_ALLOC;                                                              \
            }                                                                                     \
            FR_FOR(nt, int64_t t = 0, t < ntiles, t++, {                                          \
                int64_t k;                                                                        \
                size_t lo, hi;                                                                    \
                fr_mt_tile(first, count, n, tile, t, &k, &lo, &hi);                               \
                part[t] = fn(a[k] + lo, hi - lo, mode, pw);                                       \
            });                                                                                   \
            for (int64_t t = 0; t < ntiles; t++)                                                  \
                s = fr_norm_merge(s, part[t], mode);                                              \
            free(part);                                                                           \
        }                                                                                         \
        free(first);                                                                              \
        *result = s;                                                                              \
        return FR_OK;                                                                             \
    }                                                                                             \
                                                                                                  \
    int fr_row_norm_sums_##SUF(const T *a, int64_t U, int64_t K, int mode, double pw,             \
                               double *out)                                                       \
    {                                                                                             \
        if (U < 0 || K < 0)                                                                       \
            return FR_ERR_SIZE;                                                                   \
        if (U == 0)                                                                               \
            return FR_OK;                                                                         \
        if (!out || (K > 0 && !a))                                                                \
            return FR_ERR_NULL;                                                                   \
        fr_norm_fn_##SUF fn = fr_norm_##SUF##_portable;                                           \
        FR_MT_NORM_PICK(SUF, fn);                                                                 \
        const int nt = fr_region_threads(U);                                                      \
        FR_FOR(nt, int64_t u = 0, u < U, u++, {                                                   \
            out[u] = K > 0 ? fn(a + (size_t)u * (size_t)K, (size_t)K, mode, pw) : 0.0;            \
        });                                                                                       \
        return FR_OK;                                                                             \
    }                                                                                             \
                                                                                                  \
    /* ---- scaling: one multiply in T */                                                         \
    FR_INLINE void fr_scale_##SUF##_elems(T *a, size_t len, T s)                                  \
    {                                                                                             \
        _Pragma("omp simd")                                                                       \
        for (size_t i = 0; i < len; i++)                                                          \
            a[i] = a[i] * s;                                                                      \
    }                                                                                             \
    typedef void (*fr_scale_fn_##SUF)(T *, size_t, T);                                            \
    static void fr_scale_##SUF##_portable(T *a, size_t len, T s)                                  \
    {                                                                                             \
        fr_scale_##SUF##_elems(a, len, s);                                                        \
    }                                                                                             \
    FR_MT_SCALE_AVX2(SUF, T)                                                                      \
                                                                                                  \
    int fr_scale_##SUF(T *const *a, const int64_t *n, int64_t count, T s)                         \
    {                                                                                             \
        if (count < 0)                                                                            \
            return FR_ERR_SIZE;                                                                   \
        if (count == 0)                                                                           \
            return FR_OK;                                                                         \
        if (!a || !n)                                                                             \
            return FR_ERR_NULL;                                                                   \
        for (int64_t k = 0; k < count; k++)                                                       \
            if (n[k] > 0 && !a[k])                                                                \
                return FR_ERR_NULL;                                                               \
        fr_scale_fn_##SUF fn = fr_scale_##SUF##_portable;                                         \
        FR_MT_SCALE_PICK(SUF, fn);                                                                \
        const size_t tile = FR_EW_TILE_BYTES / sizeof(T);                                         \
        int status;                                                                               \
        int64_t *first = fr_mt_first(n, count, tile, &status);                                    \
        if (!first)                                                                               \
            return status;                                                                        \
        const int64_t ntiles = first[count];                                                      \
        const int nt = fr_region_threads(ntiles);                                                 \
        FR_FOR(nt, int64_t t = 0, t < ntiles, t++, {                                              \
            int64_t k;                                                                            \
            size_t lo, hi;                                                                        \
            fr_mt_tile(first, count, n, tile, t, &k, &lo, &hi);                                   \
            fn(a[k] + lo, hi - lo, s);                                                            \
        });                                                                                       \
        free(first);                                                                              \
        return FR_OK;                                                                             \
    }                                                                                             \
                                                                                                  \
    int fr_scale_rows_##SUF(T *a, const T *s, int64_t U, int64_t K)                               \
    {                                                                                             \
        if (U < 0 || K < 0)                                                                       \
            return FR_ERR_SIZE;                                                                   \
        if (U == 0 || K == 0)                                                                     \
            return FR_OK;                                                                         \
        if (!a || !s)                                                                             \
            return FR_ERR_NULL;                                                                   \
        fr_scale_fn_##SUF fn = fr_scale_##SUF##_portable;                                         \
        FR_MT_SCALE_PICK(SUF, fn);                                                                \
        const int nt = fr_region_threads(U);                                                      \
        FR_FOR(nt, int64_t u = 0, u < U, u++, {                                                   \
            fn(a + (size_t)u * (size_t)K, (size_t)K, s[u]);                                       \
        });                                                                                       \
        return FR_OK;                                                                             \
    }

#ifdef FR_EW_X86
#define FR_MT_EMA_FMA(SUF, T)                                                            \
    FR_MT_FMA static void fr_ema_##SUF##_fma(T *e, const T *p, size_t len, T coef,       \
                                             int small)                                  \
    {                                                                                    \
        fr_ema_##SUF##_elems(e, p, len, coef, small);                                    \
    }
#define FR_MT_EMA_PICK(SUF, fn)                         \
    do {                                                \
        if (fr_get_isa() >= 1 && fr_mt_has_fma())       \
            fn = fr_ema_##SUF##_fma;                    \
    } while (0)
#define FR_MT_NORM_AVX2(SUF, T)                                                          \
    FR_MT_AVX2 static double fr_norm_##SUF##_avx2(const T *a, size_t len, int mode,      \
                                                  double pw)                             \
    {                                                                                    \
        return fr_norm_##SUF##_elems(a, len, mode, pw);                                  \
    }
#define FR_MT_NORM_PICK(SUF, fn)        \
    do {                                \
        if (fr_get_isa() >= 1)          \
            fn = fr_norm_##SUF##_avx2;  \
    } while (0)
#define FR_MT_SCALE_AVX2(SUF, T)                                                 \
    FR_MT_AVX2 static void fr_scale_##SUF##_avx2(T *a, size_t len, T s)          \
    {                                                                            \
        fr_scale_##SUF##_elems(a, len, s);                                       \
    }
#define FR_MT_SCALE_PICK(SUF, fn)        \
    do {                                 \
        if (fr_get_isa() >= 1)           \
            fn = fr_scale_##SUF##_avx2;  \
    } while (0)
#else
#define FR_MT_EMA_FMA(SUF, T)
#define FR_MT_EMA_PICK(SUF, fn) do {} while (0)
#define FR_MT_NORM_AVX2(SUF, T)
#define FR_MT_NORM_PICK(SUF, fn) do {} while (0)
#define FR_MT_SCALE_AVX2(SUF, T)
#define FR_MT_SCALE_PICK(SUF, fn) do {} while (0)
#endif

FR_DEFINE_MULTI_TENSOR(f32, float, fmaf)
FR_DEFINE_MULTI_TENSOR(f64, double, fma)
