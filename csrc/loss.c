/* Softmax cross-entropy and its gradient (OpenMP), the C backend of fastreg.cross_entropy.
 *
 * Exact definitions: fastreg/reference/loss.py.  The order of operations is the one of the Numba
 * kernel (fastreg/cpu/loss.py, which documents it): per row, the maximum m; e = exp(x - m) in the
 * logits' dtype into a per-thread scratch row, by the polynomial below; float64 sums over
 * FR_CE_LANES lanes (lane k adds elements k, k + LANES, ... in order) folded pairwise; then
 * loss = A log(s) - B and grad = dtype(k e - scale a), k = scale A / s.  With -ffp-contract=off
 * and no fast-math both backends round every operation identically: the same bits.
 *
 * Each row function is compiled three times (portable, AVX2, AVX-512 with 512-bit vectors) from
 * one macro; fr_get_isa() picks one per call.  Work is split over whole rows (tasks of about
 * FR_CE_TASK elements), thread count from fr_region_threads (fastreg._threads.plan).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fastreg.h"
#include "fr_threads.h"

#define FR_CE_LANES 64
#define FR_CE_TASK ((int64_t)1 << 15)
#define FR_CE_INLINE static inline __attribute__((always_inline))

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define FR_CE_X86 1
#define FR_CE_AVX2 __attribute__((target("avx2")))
#define FR_CE_AVX512                                                                           \
    __attribute__((target("avx2,avx512f,avx512dq,avx512bw,avx512vl,prefer-vector-width=512")))
#endif

/* c ? a : b as a bitwise select: under the default -ftrapping-math GCC keeps a branch around
 * a floating-point ?: and the loop does not vectorize (as in elementwise.h). */
FR_CE_INLINE float fr_ce_sel_f32(int c, float a, float b)
{
    uint32_t ia, ib, m = (uint32_t)0 - (uint32_t)(c != 0);
    memcpy(&ia, &a, sizeof ia);
    memcpy(&ib, &b, sizeof ib);
    ia = (ia & m) | (ib & ~m);
    memcpy(&a, &ia, sizeof a);
    return a;
}

FR_CE_INLINE double fr_ce_sel_f64(int c, double a, double b)
{
    uint64_t ia, ib, m = (uint64_t)0 - (uint64_t)(c != 0);
    memcpy(&ia, &a, sizeof ia);
    memcpy(&ib, &b, sizeof ib);
    ia = (ia & m) | (ib & ~m);
    memcpy(&a, &ia, sizeof a);
    return a;
}

/* ------------------------------------------------------------------ exp(d), d <= 0 or NaN
 * k = round(d / ln2) from the low bits of d log2(e) + 1.5 * 2**mant (round to nearest even),
 * r = d - k ln2 (ln2 in two parts, k * hi exact), exp(r) by a polynomial, times 2**k from k's
 * bits.  d < MIN (below the smallest normal result) gives 0; NaN gives NaN.  The constants are
 * the exact values of fastreg/cpu/loss.py (hexadecimal: no decimal rounding in between). */

FR_CE_INLINE float fr_ce_exp_f32(float d)
{
    const float t = d * 0x1.715476p+0f + 0x1.8p+23f;
    const float kf = t - 0x1.8p+23f;
    float r = d - kf * 0x1.63p-1f;
    r = r - kf * -0x1.bd0106p-13f;
    float p = 0x1.a0d2cep-13f;
    p = p * r + 0x1.6e879cp-10f;
    p = p * r + 0x1.111210p-7f;
    p = p * r + 0x1.555382p-5f;
    p = p * r + 0x1.555554p-3f;
    p = p * r + 0x1p-1f;
    const float y = p * (r * r) + r + 1.0f;
    uint32_t tb, sb;
    memcpy(&tb, &t, sizeof tb);
    sb = (tb - (uint32_t)(0x4B400000u - 127u)) << 23;
    float scale;
    memcpy(&scale, &sb, sizeof scale);
    const float e = y * scale;
    return fr_ce_sel_f32(d < -0x1.5d51ecp+6f, 0.0f, e);
}

FR_CE_INLINE double fr_ce_exp_f64(double d)
{
    const double t = d * 0x1.71547652b82fep+0 + 0x1.8p+52;
    const double kf = t - 0x1.8p+52;
    double r = d - kf * 0x1.62e42fee00000p-1;
    r = r - kf * 0x1.a39ef35793c76p-33;
    double p = 0x1.6124613a86d09p-33;
    p = p * r + 0x1.1eed8eff8d898p-29;
    p = p * r + 0x1.ae64567f544e4p-26;
    p = p * r + 0x1.27e4fb7789f5cp-22;
    p = p * r + 0x1.71de3a556c734p-19;
    p = p * r + 0x1.a01a01a01a01ap-16;
    p = p * r + 0x1.a01a01a01a01ap-13;
    p = p * r + 0x1.6c16c16c16c17p-10;
    p = p * r + 0x1.1111111111111p-7;
    p = p * r + 0x1.5555555555555p-5;
    p = p * r + 0x1.5555555555555p-3;
    p = p * r + 0x1p-1;
    const double y = (p * r + 1.0) * r + 1.0;
    uint64_t tb, sb;
    memcpy(&tb, &t, sizeof tb);
    sb = (tb - (uint64_t)(0x4338000000000000ull - 1023u)) << 52;
    double scale;
    memcpy(&scale, &sb, sizeof scale);
    const double e = y * scale;
    return fr_ce_sel_f64(d < -0x1.6226666666666p+9, 0.0, e);
}

/* ------------------------------------------------------------------ one call's arguments */

typedef struct {
    const void *x;
    const void *target;   /* int64 (R,) or dtype (R, C) */
    const double *tw, *cw;
    int smooth;           /* hard: cw given */
    int64_t ignore_index;
    double scale;
    double cw_sum;        /* sum of cw in order (hard with smoothing) */
    double *loss;
    void *grad;           /* NULL: loss only */
    int64_t C;
    int64_t lanes;        /* fr_ce_lanes(C) */
} fr_ce_args;

/* Lanes of a row of c classes: the smallest power of two >= c, at most FR_CE_LANES (short rows
 * do not pay for 64 lanes); the Numba backend's _lanes. */
static int64_t fr_ce_lanes(int64_t c)
{
    int64_t lanes = 1;
    while (lanes < c && lanes < FR_CE_LANES)
        lanes *= 2;
    return lanes;
}

/* Pairwise fold of the lanes: acc[k] += acc[k + h], h = lanes / 2, ..., 1. */
FR_CE_INLINE double fr_ce_fold(double *acc, int64_t lanes)
{
    for (int64_t h = lanes / 2; h >= 1; h /= 2)
        for (int64_t k = 0; k < h; k++)
            acc[k] += acc[k + h];
    return acc[0];
}

/* The row functions of one dtype and one instruction set.  ATTR: the target attribute. */
#define FR_CE_DEFINE_ROWS(SUF, T, EXP, SEL, ISA, ATTR)                                         \
    ATTR static T fr_ce_max_##SUF##ISA(const T *row, int64_t c, int64_t lanes)                 \
    {                                                                                          \
        T mx[FR_CE_LANES];                                                                     \
        for (int64_t k = 0; k < lanes; k++)                                                    \
            mx[k] = -(T)INFINITY;                                                              \
        for (int64_t j = 0; j < c; j += lanes) {                                               \
            const int64_t n = c - j < lanes ? c - j : lanes;                                   \
            const T *b = row + j;                                                              \
            for (int64_t k = 0; k < n; k++)                                                    \
                mx[k] = SEL(b[k] > mx[k], b[k], mx[k]);                                        \
        }                                                                                      \
        T m = mx[0];                                                                           \
        for (int64_t k = 1; k < lanes; k++)                                                    \
            m = SEL(mx[k] > m, mx[k], m);                                                      \
        return m;                                                                              \
    }                                                                                          \
                                                                                               \
    /* e = exp(row - m); *s = sum e; *b = sum cw (row - m) when smooth (else 0) */             \
    ATTR static void fr_ce_rowexp_##SUF##ISA(const T *row, T m, const double *cw, int smooth,  \
                                          int64_t c, int64_t lanes, T *e, double *s,           \
                                             double *b)                                        \
    {                                                                                          \
        double acc[FR_CE_LANES], acc2[FR_CE_LANES];                                            \
        for (int64_t k = 0; k < lanes; k++)                                                    \
            acc[k] = acc2[k] = 0.0;                                                            \
        for (int64_t j = 0; j < c; j += lanes) {                                               \
            const int64_t n = c - j < lanes ? c - j : lanes;                                   \
            const T *xb = row + j;                                                             \
            T *eb = e + j;                                                                     \
            for (int64_t k = 0; k < n; k++)                                                    \
                eb[k] = EXP(xb[k] - m);                                                        \
            for (int64_t k = 0; k < n; k++)                                                    \
                acc[k] += (double)eb[k];                                                       \
            if (smooth) {                                                                      \
                const double *wb = cw + j;                                                     \
                for (int64_t k = 0; k < n; k++)                                                \
                    acc2[k] += wb[k] * (double)(xb[k] - m);                                    \
            }                                                                                  \
        }                                                                                      \
        *s = fr_ce_fold(acc, lanes);                                                           \
        *b = smooth ? fr_ce_fold(acc2, lanes) : 0.0;                                           \
    }                                                                                          \
                                                                                               \
    ATTR static void fr_ce_hard_rows_##SUF##ISA(const fr_ce_args *a, int64_t r0, int64_t r1,   \
                                                T *e)                                          \
    {                                                                                          \
        const int64_t c = a->C;                                                                \
        const T *x = (const T *)a->x;                                                          \
        const int64_t *target = (const int64_t *)a->target;                                    \
        const double *tw = a->tw, *cw = a->cw;                                                 \
        const double scale = a->scale;                                                         \
        T *grad = (T *)a->grad;                                                                \
        for (int64_t r = r0; r < r1; r++) {                                                    \
            const int64_t y = target[r];                                                       \
            T *g = grad ? grad + r * c : NULL;                                                 \
            if (y == a->ignore_index) {                                                        \
                a->loss[r] = 0.0;                                                              \
                if (g)                                                                         \
                    memset(g, 0, (size_t)c * sizeof(T));                                       \
                continue;                                                                      \
            }                                                                                  \
            const T *row = x + r * c;                                                          \
            const T m = fr_ce_max_##SUF##ISA(row, c, a->lanes);                                \
            double s, b;                                                                       \
            fr_ce_rowexp_##SUF##ISA(row, m, cw, a->smooth, c, a->lanes, e, &s, &b);            \
            const double dy = (double)(row[y] - m);                                            \
            double big_a, big_b, a_y;                                                          \
            if (a->smooth) {                                                                   \
                big_a = tw[y] + a->cw_sum;                                                     \
                big_b = tw[y] * dy + b;                                                        \
                a_y = tw[y] + cw[y];                                                           \
            } else {                                                                           \
                big_a = tw[y];                                                                 \
                big_b = tw[y] * dy;                                                            \
                a_y = tw[y];                                                                   \
            }                                                                                  \
            a->loss[r] = big_a * log(s) - big_b;                                               \
            if (!g)                                                                            \
                continue;                                                                      \
            const double k = scale * big_a / s;                                                \
            const double ey = (double)e[y];                                                    \
            if (a->smooth) {                                                                   \
                for (int64_t i = 0; i < c; i++)                                                \
                    g[i] = (T)(k * (double)e[i] - scale * cw[i]);                              \
            } else {                                                                           \
                for (int64_t i = 0; i < c; i++)                                                \
                    g[i] = (T)(k * (double)e[i]);                                              \
            }                                                                                  \
            g[y] = (T)(k * ey - scale * a_y);                                                  \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    ATTR static void fr_ce_soft_rows_##SUF##ISA(const fr_ce_args *a, int64_t r0, int64_t r1,   \
                                                T *e)                                          \
    {                                                                                          \
        const int64_t c = a->C, lanes = a->lanes;                                              \
        const double *tw = a->tw, *cw = a->cw;                                                 \
        const double scale = a->scale;                                                         \
        for (int64_t r = r0; r < r1; r++) {                                                    \
            const T *row = (const T *)a->x + r * c;                                            \
            const T *t = (const T *)a->target + r * c;                                         \
            const T m = fr_ce_max_##SUF##ISA(row, c, a->lanes);                                \
            double acc[FR_CE_LANES], acc2[FR_CE_LANES], acc3[FR_CE_LANES];                     \
            for (int64_t k = 0; k < lanes; k++)                                                \
                acc[k] = acc2[k] = acc3[k] = 0.0;                                              \
            for (int64_t j = 0; j < c; j += lanes) {                                           \
                const int64_t n = c - j < lanes ? c - j : lanes;                               \
                const T *xb = row + j, *tb = t + j;                                            \
                const double *twb = tw + j, *cwb = cw + j;                                     \
                T *eb = e + j;                                                                 \
                for (int64_t k = 0; k < n; k++)                                                \
                    eb[k] = EXP(xb[k] - m);                                                    \
                for (int64_t k = 0; k < n; k++)                                                \
                    acc[k] += (double)eb[k];                                                   \
                for (int64_t k = 0; k < n; k++) {                                              \
                    const double av = twb[k] * (double)tb[k] + cwb[k];                         \
                    acc2[k] += av;                                                             \
                    acc3[k] += av * (double)(xb[k] - m);                                       \
                }                                                                              \
            }                                                                                  \
            const double s = fr_ce_fold(acc, lanes);                                           \
            const double big_a = fr_ce_fold(acc2, lanes);                                      \
            const double big_b = fr_ce_fold(acc3, lanes);                                      \
            a->loss[r] = big_a * log(s) - big_b;                                               \
            if (!a->grad)                                                                      \
                continue;                                                                      \
            T *g = (T *)a->grad + r * c;                                                       \
            const double k = scale * big_a / s;                                                \
            for (int64_t i = 0; i < c; i++) {                                                  \
                const double av = tw[i] * (double)t[i] + cw[i];                                \
                g[i] = (T)(k * (double)e[i] - scale * av);                                     \
            }                                                                                  \
        }                                                                                      \
    }

FR_CE_DEFINE_ROWS(f32, float, fr_ce_exp_f32, fr_ce_sel_f32, , )
FR_CE_DEFINE_ROWS(f64, double, fr_ce_exp_f64, fr_ce_sel_f64, , )
#ifdef FR_CE_X86
FR_CE_DEFINE_ROWS(f32, float, fr_ce_exp_f32, fr_ce_sel_f32, _avx2, FR_CE_AVX2)
FR_CE_DEFINE_ROWS(f64, double, fr_ce_exp_f64, fr_ce_sel_f64, _avx2, FR_CE_AVX2)
FR_CE_DEFINE_ROWS(f32, float, fr_ce_exp_f32, fr_ce_sel_f32, _avx512, FR_CE_AVX512)
FR_CE_DEFINE_ROWS(f64, double, fr_ce_exp_f64, fr_ce_sel_f64, _avx512, FR_CE_AVX512)
#endif

typedef void (*fr_ce_rows_fn)(const fr_ce_args *a, int64_t r0, int64_t r1, void *e);

/* Rows in tasks of whole rows over the threads of fr_region_threads; scratch row per thread. */
static int fr_ce_run(fr_ce_rows_fn fn, const fr_ce_args *a, int64_t R, size_t itemsize)
{
    const int64_t c = a->C;
    int64_t per = FR_CE_TASK / c;
    per = per < 1 ? 1 : per;
    const int64_t ntasks = (R + per - 1) / per;
    const int nt = fr_region_threads(ntasks);
    int failed = 0;
    if (nt <= 1) {
        void *e = malloc((size_t)c * itemsize);
        if (!e)
            return FR_ERR_ALLOC;
        for (int64_t t = 0; t < ntasks; t++)
            fn(a, t * per, (t + 1) * per < R ? (t + 1) * per : R, e);
        free(e);
        return FR_OK;
    }
#pragma omp parallel num_threads(nt) reduction(| : failed)
    {
        void *e = malloc((size_t)c * itemsize);
        if (!e)
            failed = 1;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < ntasks; t++)
            if (e)
                fn(a, t * per, (t + 1) * per < R ? (t + 1) * per : R, e);
        free(e);
    }
    return failed ? FR_ERR_ALLOC : FR_OK;
}

#ifdef FR_CE_X86
#define FR_CE_PICK(NAME)                                                                       \
    (fr_get_isa() >= 2   ? (fr_ce_rows_fn)NAME##_avx512                                        \
     : fr_get_isa() == 1 ? (fr_ce_rows_fn)NAME##_avx2                                          \
                         : (fr_ce_rows_fn)NAME)
#else
#define FR_CE_PICK(NAME) ((fr_ce_rows_fn)NAME)
#endif

#define FR_CE_DEFINE_API(SUF, T)                                                               \
    int fr_ce_hard_##SUF(const T *x, const int64_t *target, const double *tw,                  \
                         const double *cw, int64_t ignore_index, double scale, double *loss,   \
                         T *grad, int64_t R, int64_t C)                                        \
    {                                                                                          \
        if (R < 0 || C < 1)                                                                    \
            return FR_ERR_SIZE;                                                                \
        if (R == 0)                                                                            \
            return FR_OK;                                                                      \
        if (!x || !target || !tw || !loss)                                                     \
            return FR_ERR_NULL;                                                                \
        fr_ce_args a = {x, target, tw, cw, cw != NULL, ignore_index, scale, 0.0, loss, grad,   \
                        C, fr_ce_lanes(C)};                                                    \
        if (cw)                                                                                \
            for (int64_t i = 0; i < C; i++)                                                    \
                a.cw_sum += cw[i];                                                             \
        return fr_ce_run(FR_CE_PICK(fr_ce_hard_rows_##SUF), &a, R, sizeof(T));                 \
    }                                                                                          \
                                                                                               \
    int fr_ce_soft_##SUF(const T *x, const T *target, const double *tw, const double *cw,      \
                         double scale, double *loss, T *grad, int64_t R, int64_t C)            \
    {                                                                                          \
        if (R < 0 || C < 1)                                                                    \
            return FR_ERR_SIZE;                                                                \
        if (R == 0)                                                                            \
            return FR_OK;                                                                      \
        if (!x || !target || !tw || !cw || !loss)                                              \
            return FR_ERR_NULL;                                                                \
        fr_ce_args a = {x, target, tw, cw, 1, 0, scale, 0.0, loss, grad, C, fr_ce_lanes(C)};   \
        return fr_ce_run(FR_CE_PICK(fr_ce_soft_rows_##SUF), &a, R, sizeof(T));                 \
    }
FR_CE_DEFINE_API(f32, float)
FR_CE_DEFINE_API(f64, double)
