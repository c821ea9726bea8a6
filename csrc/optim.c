/* One optimizer step (SGD, Adam / AdamW) on one parameter array (OpenMP), the C backend of
 * fastreg.
 *
 * Exact definitions: fastreg/reference/optim.py (PyTorch's single-tensor update rules).  One
 * pass over the arrays does the whole step per element, with every product, sum, quotient and
 * square root one IEEE operation in the array's dtype in the reference's order (-ffp-contract=off,
 * no fast-math; sqrtf for float), so results match the reference bit for bit.
 *
 * Each step is written once, as a macro instantiated for float (f32) and double (f64), and for
 * 16-bit parameters and / or gradients with float32 math and float32 state (csrc/half.h's
 * fr_load_* / fr_store_*: the 16-bit arrays are read and written once, every operation between
 * is the float32 kernel's, the parameter is rounded to nearest even on store; bit for bit the
 * result of widening to float32, the float32 step and rounding, fastreg/_half.py).  The
 * reference's per-call branches (weight decay, momentum state, Nesterov, decoupled decay, L1
 * prox, AMSGrad) are compile-time constants of separate instances of the element loop, chosen
 * from a table at each call, so every instance is a branch-free vectorized loop.  On CPUs with
 * F16C the float16 instances run the float32 instance's loop on L1 blocks converted with F16C
 * (see "float16 with F16C" below).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "fastreg.h"
#include "elementwise.h"
#include "half.h"

/* sqrt in the element type: sqrtf for float, sqrt for double (both correctly rounded). */
#define FR_SQRT_f32 sqrtf
#define FR_SQRT_f64 sqrt

/* ------------------------------------------------------------------ float16 with F16C */

/* gcc does not vectorize the integer float16 conversions of fr_load_f16 / fr_store_f16 well
 * (nor _Float16 ones at all), so on CPUs with F16C the float16 instances run their element
 * loop in blocks of FR_F16C_BLOCK elements instead: the float16 operands are widened into
 * float32 buffers on the stack (csrc/half.h, fr_f16_widen_f16c: vcvtph2ps), the float32
 * instance's element loop runs on the buffers and the float32 state, and the parameter is
 * rounded back (fr_f16_narrow_f16c: vcvtps2ph).  Same operations, so the same bits as the
 * one-pass loop (half.h: the F16C conversions are exact as the integer ones, NaN payloads
 * included).  Chosen where the AVX2 loops are (fr_get_isa() >= 1) and the CPU has F16C. */
#ifdef FR_HAVE_F16C_KERNELS
#define FR_F16C_BLOCK 512   /* 2 KiB per buffer: parameter and gradient stay in L1 */

/* A float32 view of block [k, k + len) of a stored array: widened into buf (float16), or the
 * array itself (float32).  Written back (float16 parameters) by fr_f16c_out_. */
FR_F16C FR_INLINE float *fr_f16c_in_f16(const uint16_t *a, size_t k, float *buf, size_t len)
{
    fr_f16_widen_f16c(a + k, buf, len);
    return buf;
}
FR_F16C FR_INLINE float *fr_f16c_in_f32(const float *a, size_t k, float *buf, size_t len)
{
    (void)buf, (void)len;
    return (float *)a + k;
}
FR_F16C FR_INLINE void fr_f16c_out_f16(uint16_t *a, size_t k, const float *buf, size_t len)
{
    fr_f16_narrow_f16c(buf, a + k, len);
}
FR_F16C FR_INLINE void fr_f16c_out_f32(float *a, size_t k, const float *buf, size_t len)
{
    (void)a, (void)k, (void)buf, (void)len;   /* updated in place */
}

/* An instance's F16C table (its avx2 entries are the F16C loops), NULL where none is built;
 * used when the CPU has F16C (fr_ew_pick then takes those entries where it would take AVX2). */
#define FR_F16C_TABLE(t) t
FR_INLINE const fr_ew_kernel *fr_pick_table(const fr_ew_kernel *f16c, const fr_ew_kernel *kernels)
{
    return f16c && fr_cpu_has_f16c() ? f16c : kernels;
}
#define FR_PICK_TABLE(f16c, kernels) fr_pick_table(f16c, kernels)
#else
#define FR_F16C_TABLE(t) NULL
#define FR_PICK_TABLE(f16c, kernels) (kernels)
#endif

/* ------------------------------------------------------------------ SGD */

/* WD: d = g + wd * p.  MOM: 0 no momentum buffer, 1 first step (buf = d), 2 later steps
 * (buf = momentum * buf + damp1 * d).  NEST: d = d + momentum * buf, else d = buf.
 * DEC: p = p * decay.  L1: p = soft(p, l1t) * 1.  The gradient is first g * gscale (gradient
 * clipping's factor), or g itself when gscale == 1 (a select, as the reference skips it).
 * An instance SUF: math and state type T (helper suffix MS: f32 / f64), parameters stored as
 * P and gradients as G (csrc/half.h tags: f32, f64, f16, bf16). */
#define FR_DEFINE_SGD(SUF, T, MS, P, G)                                                        \
    typedef struct {                                                                           \
        FR_ELEM_##P *p;                                                                        \
        T *buf;                                                                                \
        const FR_ELEM_##G *g;                                                                  \
        T lr, wd, decay, momentum, damp1, l1t, gscale;                                         \
    } fr_sgd_args_##SUF;                                                                       \
                                                                                               \
    FR_INLINE void fr_sgd_##SUF##_elems(const void *args, size_t lo, size_t hi, const int WD,  \
                                        const int MOM, const int NEST, const int DEC,          \
                                        const int L1)                                          \
    {                                                                                          \
        const fr_sgd_args_##SUF *a = (const fr_sgd_args_##SUF *)args;                          \
        FR_ELEM_##P *p = a->p + lo;                                                            \
        T *buf = MOM ? a->buf + lo : NULL;                                                     \
        const FR_ELEM_##G *g = a->g + lo;                                                      \
        const T lr = a->lr, wd = a->wd, decay = a->decay, momentum = a->momentum;              \
        const T damp1 = a->damp1, l1t = a->l1t, nl1t = -a->l1t, one = 1;                       \
        const T gscale = a->gscale;                                                            \
        const int gs = a->gscale != 1; /* g * 1 is g: the select keeps g itself */             \
        const size_t len = hi - lo;                                                            \
        _Pragma("omp simd")                                                                    \
        for (size_t i = 0; i < len; i++) {                                                     \
            T pi = fr_load_##P(p, i), g0 = fr_load_##G(g, i);                                  \
            T gi = fr_sel_##MS(gs, g0 * gscale, g0);                                           \
            T d = WD ? gi + wd * pi : gi;                                                      \
            if (MOM) {                                                                         \
                T b = MOM == 1 ? d : momentum * buf[i] + damp1 * d;                            \
                buf[i] = b;                                                                    \
                d = NEST ? d + momentum * b : b;                                               \
            }                                                                                  \
            if (DEC)                                                                           \
                pi = pi * decay;                                                               \
            pi = pi - lr * d;                                                                  \
            if (L1)                                                                            \
                pi = fr_soft_##MS(pi, l1t, nl1t) * one;                                        \
            fr_store_##P(p, i, pi);                                                            \
        }                                                                                      \
    }                                                                                          \
    FR_SGD_VARIANTS(FR_SGD_DEFINE_VARIANT, SUF)

/* The run function of instance SUF; F16C: its F16C table (FR_F16C_TABLE), or NULL. */
#define FR_DEFINE_SGD_RUN(SUF, T, P, G, F16C)                                                  \
    static int fr_sgd_run_##SUF(void *p, const void *g, T *buf, T lr, T wd, T decay,           \
                                T momentum, T damp1, int nesterov, int first, T l1t, T gscale, \
                                int64_t n)                                                     \
    {                                                                                          \
        static const fr_ew_kernel kernels[] = {FR_SGD_VARIANTS(FR_SGD_TABLE_ENTRY, SUF)};      \
        if (n < 0)                                                                             \
            return FR_ERR_SIZE;                                                                \
        if (!p || !g)                                                                          \
            return FR_ERR_NULL;                                                                \
        /* the reference's branches; momentum == 0 is told by buf == NULL */                   \
        int wdf = wd != 0, mom = buf == NULL ? 0 : first ? 1 : 2;                              \
        int nest = mom && nesterov, dec = decay != 1, l1 = l1t != 0;                           \
        fr_sgd_args_##SUF args = {(FR_ELEM_##P *)p, buf, (const FR_ELEM_##G *)g, lr, wd,       \
                                  decay, momentum, damp1, l1t, gscale};                        \
        size_t k = FR_SGD_INDEX(wdf, mom, nest, dec, l1);                                      \
        const fr_ew_kernel *table = FR_PICK_TABLE(F16C, kernels);                              \
        fr_ew_run(table[k], &args, NULL, sizeof(FR_ELEM_##P), (size_t)n, 0);                   \
        return FR_OK;                                                                          \
    }

/* The 48 instances, in table order: X(SUF, WD, MOM, NEST, DEC, L1) for each combination. */
#define FR_SGD_INDEX(wd, mom, nest, dec, l1)  \
    ((size_t)((((wd) * 3 + (mom)) * 2 + (nest)) * 4 + (dec) * 2 + (l1)))
#define FR_SGD_V4(X, S, W, M, N)  \
    X(S, W, M, N, 0, 0) X(S, W, M, N, 0, 1) X(S, W, M, N, 1, 0) X(S, W, M, N, 1, 1)
#define FR_SGD_V8(X, S, W, M) FR_SGD_V4(X, S, W, M, 0) FR_SGD_V4(X, S, W, M, 1)
#define FR_SGD_V24(X, S, W) FR_SGD_V8(X, S, W, 0) FR_SGD_V8(X, S, W, 1) FR_SGD_V8(X, S, W, 2)
#define FR_SGD_VARIANTS(X, S) FR_SGD_V24(X, S, 0) FR_SGD_V24(X, S, 1)

#define FR_SGD_NAME(S, W, M, N, D, L) fr_sgd_##S##_##W##M##N##D##L
#define FR_SGD_DEFINE_VARIANT(S, W, M, N, D, L)     \
    FR_EW_RANGE_FNS(FR_SGD_NAME(S, W, M, N, D, L),  \
                    ((void)dst, fr_sgd_##S##_elems(args, lo, hi, W, M, N, D, L)))
#define FR_SGD_TABLE_ENTRY(S, W, M, N, D, L) FR_EW_KERNEL(FR_SGD_NAME(S, W, M, N, D, L)),

/* The F16C loops of a float16 instance SUF (parameter P, gradient G), over blocks (see
 * FR_F16C_BLOCK above): the float32 instance's loop fr_sgd_f32_elems on float32 views. */
#ifdef FR_HAVE_F16C_KERNELS
#define FR_SGD_F16C_NAME(S, W, M, N, D, L) fr_sgd_##S##_##W##M##N##D##L##_f16c
#define FR_SGD_F16C_ENTRY(S, W, M, N, D, L) \
    {FR_SGD_NAME(S, W, M, N, D, L), FR_SGD_F16C_NAME(S, W, M, N, D, L), NULL},
#define FR_SGD_F16C(SUF, P, G)                                                                  \
    FR_SGD_VARIANTS(FR_SGD_F16C_VARIANT_##P##G, SUF)                                            \
    static const fr_ew_kernel fr_sgd_f16c_##SUF[] = {FR_SGD_VARIANTS(FR_SGD_F16C_ENTRY, SUF)};
#define FR_SGD_F16C_VARIANT_f16f16(S, W, M, N, D, L) FR_SGD_F16C_VARIANT(S, W, M, N, D, L, f16, f16)
#define FR_SGD_F16C_VARIANT_f16f32(S, W, M, N, D, L) FR_SGD_F16C_VARIANT(S, W, M, N, D, L, f16, f32)
#define FR_SGD_F16C_VARIANT_f32f16(S, W, M, N, D, L) FR_SGD_F16C_VARIANT(S, W, M, N, D, L, f32, f16)
#define FR_SGD_F16C_VARIANT(S, W, M, N, D, L, P, G)                                             \
    FR_F16C static void FR_SGD_F16C_NAME(S, W, M, N, D, L)(const void *args, void *dst,        \
                                                           size_t lo, size_t hi)                \
    {                                                                                           \
        const fr_sgd_args_##S *a = (const fr_sgd_args_##S *)args;                               \
        _Alignas(32) float pb[FR_F16C_BLOCK], gb[FR_F16C_BLOCK];                                \
        (void)dst;                                                                              \
        for (size_t k = lo; k < hi; k += FR_F16C_BLOCK) {                                       \
            size_t len = hi - k < FR_F16C_BLOCK ? hi - k : FR_F16C_BLOCK;                       \
            fr_sgd_args_f32 b = {fr_f16c_in_##P(a->p, k, pb, len), M ? a->buf + k : NULL,       \
                                 fr_f16c_in_##G(a->g, k, gb, len), a->lr, a->wd, a->decay,      \
                                 a->momentum, a->damp1, a->l1t, a->gscale};                     \
            fr_sgd_f32_elems(&b, 0, len, W, M, N, D, L);                                        \
            fr_f16c_out_##P(a->p, k, b.p, len);                                                 \
        }                                                                                       \
    }
#else
#define FR_SGD_F16C(SUF, P, G)
#endif

/* The exported step of one dtype (float32, float64) */
#define FR_SGD_EXPORT(SUF, T)                                                                 \
    int fr_sgd_step_##SUF(T *p, const T *g, T *buf, T lr, T wd, T decay, T momentum, T damp1, \
                          int nesterov, int first, T l1t, T gscale, int64_t n)                \
    {                                                                                         \
        return fr_sgd_run_##SUF(p, g, buf, lr, wd, decay, momentum, damp1, nesterov, first,   \
                                l1t, gscale, n);                                              \
    }

FR_DEFINE_SGD(f32, float, f32, f32, f32)
FR_DEFINE_SGD_RUN(f32, float, f32, f32, NULL)
FR_DEFINE_SGD(f64, double, f64, f64, f64)
FR_DEFINE_SGD_RUN(f64, double, f64, f64, NULL)
FR_SGD_EXPORT(f32, float)
FR_SGD_EXPORT(f64, double)
/* 16-bit: parameter / gradient stored as float16, bfloat16 or float32, never two 16-bit types */
FR_DEFINE_SGD(f16f16, float, f32, f16, f16)
FR_DEFINE_SGD(f16f32, float, f32, f16, f32)
FR_DEFINE_SGD(f32f16, float, f32, f32, f16)
FR_DEFINE_SGD(bf16bf16, float, f32, bf16, bf16)
FR_DEFINE_SGD(bf16f32, float, f32, bf16, f32)
FR_DEFINE_SGD(f32bf16, float, f32, f32, bf16)
FR_SGD_F16C(f16f16, f16, f16)
FR_SGD_F16C(f16f32, f16, f32)
FR_SGD_F16C(f32f16, f32, f16)
FR_DEFINE_SGD_RUN(f16f16, float, f16, f16, FR_F16C_TABLE(fr_sgd_f16c_f16f16))
FR_DEFINE_SGD_RUN(f16f32, float, f16, f32, FR_F16C_TABLE(fr_sgd_f16c_f16f32))
FR_DEFINE_SGD_RUN(f32f16, float, f32, f16, FR_F16C_TABLE(fr_sgd_f16c_f32f16))
FR_DEFINE_SGD_RUN(bf16bf16, float, bf16, bf16, NULL)
FR_DEFINE_SGD_RUN(bf16f32, float, bf16, f32, NULL)
FR_DEFINE_SGD_RUN(f32bf16, float, f32, bf16, NULL)

typedef int fr_sgd_run_fn(void *p, const void *g, float *buf, float lr, float wd, float decay,
                          float momentum, float damp1, int nesterov, int first, float l1t,
                          float gscale, int64_t n);

/* [parameter kind][gradient kind] (FR_HALF_F16, FR_HALF_BF16, FR_HALF_F32); NULL: refused */
static fr_sgd_run_fn *const fr_sgd_half_runs[3][3] = {
    {fr_sgd_run_f16f16, NULL, fr_sgd_run_f16f32},
    {NULL, fr_sgd_run_bf16bf16, fr_sgd_run_bf16f32},
    {fr_sgd_run_f32f16, fr_sgd_run_f32bf16, fr_sgd_run_f32},
};

int fr_sgd_step_half(void *p, int pkind, const void *g, int gkind, float *buf, float lr,
                     float wd, float decay, float momentum, float damp1, int nesterov, int first,
                     float l1t, float gscale, int64_t n)
{
    if (pkind < 0 || pkind > 2 || gkind < 0 || gkind > 2 || !fr_sgd_half_runs[pkind][gkind])
        return FR_ERR_UNSUPPORTED;
    return fr_sgd_half_runs[pkind][gkind](p, g, buf, lr, wd, decay, momentum, damp1, nesterov,
                                          first, l1t, gscale, n);
}

/* ------------------------------------------------------------------ Adam / AdamW */

/* g = g * gscale (g itself when gscale == 1).  WD: g = g + wd * p.  DEC: p = p * decay.
 * AMS: vmax = max(vmax, v), NaN-propagating as np.maximum (vmax if vmax > v or vmax is NaN,
 * else v), and vmax replaces v in the denominator.  SUF, T, MS, P, G: as for SGD. */
#define FR_DEFINE_ADAM(SUF, T, MS, P, G)                                                        \
    typedef struct {                                                                            \
        FR_ELEM_##P *p;                                                                         \
        T *m, *v, *vmax;                                                                        \
        const FR_ELEM_##G *g;                                                                   \
        T wd, decay, omb1, beta2, omb2, eps, step_size, bc2_sqrt, gscale;                       \
    } fr_adam_args_##SUF;                                                                       \
                                                                                                \
    FR_INLINE void fr_adam_##SUF##_elems(const void *args, size_t lo, size_t hi, const int WD,  \
                                         const int DEC, const int AMS)                          \
    {                                                                                           \
        const fr_adam_args_##SUF *a = (const fr_adam_args_##SUF *)args;                         \
        FR_ELEM_##P *p = a->p + lo;                                                             \
        T *m = a->m + lo, *v = a->v + lo, *vmax = AMS ? a->vmax + lo : NULL;                    \
        const FR_ELEM_##G *g = a->g + lo;                                                       \
        const T wd = a->wd, decay = a->decay, omb1 = a->omb1, beta2 = a->beta2;                 \
        const T omb2 = a->omb2, eps = a->eps, step_size = a->step_size;                         \
        const T bc2_sqrt = a->bc2_sqrt;                                                         \
        const T gscale = a->gscale;                                                             \
        const int gs = a->gscale != 1;                                                          \
        /* torch's lerp: g - (g - m)(1 - w) for a weight w >= 0.5 (beta1 <= 0.5) */             \
        const int lerp2 = omb1 >= (T)0.5;                                                       \
        const T c1 = (T)1 - omb1;                                                               \
        const size_t len = hi - lo;                                                             \
        _Pragma("omp simd")                                                                     \
        for (size_t i = 0; i < len; i++) {                                                      \
            T pi = fr_load_##P(p, i), g0 = fr_load_##G(g, i);                                   \
            T gi = fr_sel_##MS(gs, g0 * gscale, g0);                                            \
            if (WD)                                                                             \
                gi = gi + wd * pi;                                                              \
            if (DEC)                                                                            \
                pi = pi * decay;                                                                \
            const T d = gi - m[i];                                                              \
            T mi = fr_sel_##MS(lerp2, gi - d * c1, m[i] + omb1 * d);                            \
            T vi = beta2 * v[i] + (omb2 * gi) * gi;                                             \
            m[i] = mi;                                                                          \
            v[i] = vi;                                                                          \
            T second = vi;                                                                      \
            if (AMS) {                                                                          \
                T vm = vmax[i];                                                                 \
                second = fr_sel_##MS((vm > vi) | (vm != vm), vm, vi);                           \
                vmax[i] = second;                                                               \
            }                                                                                   \
            T denom = FR_SQRT_##MS(second) / bc2_sqrt + eps;                                    \
            fr_store_##P(p, i, pi - step_size * (mi / denom));                                  \
        }                                                                                       \
    }                                                                                           \
    FR_ADAM_VARIANTS(FR_ADAM_DEFINE_VARIANT, SUF)

#define FR_DEFINE_ADAM_RUN(SUF, T, P, G, F16C)                                                  \
    static int fr_adam_run_##SUF(void *p, const void *g, T *m, T *v, T *vmax, T wd, T decay,    \
                                 T omb1, T beta2, T omb2, T eps, T step_size, T bc2_sqrt,       \
                                 T gscale, int64_t n)                                           \
    {                                                                                           \
        static const fr_ew_kernel kernels[] = {FR_ADAM_VARIANTS(FR_ADAM_TABLE_ENTRY, SUF)};     \
        if (n < 0)                                                                              \
            return FR_ERR_SIZE;                                                                 \
        if (!p || !g || !m || !v)                                                               \
            return FR_ERR_NULL;                                                                 \
        fr_adam_args_##SUF args = {(FR_ELEM_##P *)p, m, v, vmax, (const FR_ELEM_##G *)g, wd,    \
                                   decay, omb1, beta2, omb2, eps, step_size, bc2_sqrt, gscale}; \
        size_t k = (size_t)((wd != 0) * 4 + (decay != 1) * 2 + (vmax != NULL));                 \
        const fr_ew_kernel *table = FR_PICK_TABLE(F16C, kernels);                               \
        fr_ew_run(table[k], &args, NULL, sizeof(FR_ELEM_##P), (size_t)n, 0);                    \
        return FR_OK;                                                                           \
    }

#define FR_ADAM_V2(X, S, W, D) X(S, W, D, 0) X(S, W, D, 1)
#define FR_ADAM_VARIANTS(X, S)  \
    FR_ADAM_V2(X, S, 0, 0) FR_ADAM_V2(X, S, 0, 1) FR_ADAM_V2(X, S, 1, 0) FR_ADAM_V2(X, S, 1, 1)
#define FR_ADAM_NAME(S, W, D, A) fr_adam_##S##_##W##D##A
#define FR_ADAM_DEFINE_VARIANT(S, W, D, A)         \
    FR_EW_RANGE_FNS_512(FR_ADAM_NAME(S, W, D, A),  \
                        ((void)dst, fr_adam_##S##_elems(args, lo, hi, W, D, A)))
#define FR_ADAM_TABLE_ENTRY(S, W, D, A) FR_EW_KERNEL_512(FR_ADAM_NAME(S, W, D, A)),

#ifdef FR_HAVE_F16C_KERNELS
#define FR_ADAM_F16C_NAME(S, W, D, A) fr_adam_##S##_##W##D##A##_f16c
#define FR_ADAM_F16C_ENTRY(S, W, D, A) \
    {FR_ADAM_NAME(S, W, D, A), FR_ADAM_F16C_NAME(S, W, D, A), NULL},
#define FR_ADAM_F16C(SUF, P, G)                                                                 \
    FR_ADAM_VARIANTS(FR_ADAM_F16C_VARIANT_##P##G, SUF)                                          \
    static const fr_ew_kernel fr_adam_f16c_##SUF[] = {FR_ADAM_VARIANTS(FR_ADAM_F16C_ENTRY, SUF)};
#define FR_ADAM_F16C_VARIANT_f16f16(S, W, D, A) FR_ADAM_F16C_VARIANT(S, W, D, A, f16, f16)
#define FR_ADAM_F16C_VARIANT_f16f32(S, W, D, A) FR_ADAM_F16C_VARIANT(S, W, D, A, f16, f32)
#define FR_ADAM_F16C_VARIANT_f32f16(S, W, D, A) FR_ADAM_F16C_VARIANT(S, W, D, A, f32, f16)
#define FR_ADAM_F16C_VARIANT(S, W, D, A, P, G)                                                  \
    FR_F16C static void FR_ADAM_F16C_NAME(S, W, D, A)(const void *args, void *dst, size_t lo,  \
                                                      size_t hi)                                \
    {                                                                                           \
        const fr_adam_args_##S *a = (const fr_adam_args_##S *)args;                             \
        _Alignas(32) float pb[FR_F16C_BLOCK], gb[FR_F16C_BLOCK];                                \
        (void)dst;                                                                              \
        for (size_t k = lo; k < hi; k += FR_F16C_BLOCK) {                                       \
            size_t len = hi - k < FR_F16C_BLOCK ? hi - k : FR_F16C_BLOCK;                       \
            fr_adam_args_f32 b = {fr_f16c_in_##P(a->p, k, pb, len), a->m + k, a->v + k,         \
                                  A ? a->vmax + k : NULL, fr_f16c_in_##G(a->g, k, gb, len),     \
                                  a->wd, a->decay, a->omb1, a->beta2, a->omb2, a->eps,          \
                                  a->step_size, a->bc2_sqrt, a->gscale};                        \
            fr_adam_f32_elems(&b, 0, len, W, D, A);                                             \
            fr_f16c_out_##P(a->p, k, b.p, len);                                                 \
        }                                                                                       \
    }
#else
#define FR_ADAM_F16C(SUF, P, G)
#endif

#define FR_ADAM_EXPORT(SUF, T)                                                                \
    int fr_adam_step_##SUF(T *p, const T *g, T *m, T *v, T *vmax, T wd, T decay, T omb1,      \
                           T beta2, T omb2, T eps, T step_size, T bc2_sqrt, T gscale,         \
                           int64_t n)                                                         \
    {                                                                                         \
        return fr_adam_run_##SUF(p, g, m, v, vmax, wd, decay, omb1, beta2, omb2, eps,         \
                                 step_size, bc2_sqrt, gscale, n);                             \
    }

FR_DEFINE_ADAM(f32, float, f32, f32, f32)
FR_DEFINE_ADAM_RUN(f32, float, f32, f32, NULL)
FR_DEFINE_ADAM(f64, double, f64, f64, f64)
FR_DEFINE_ADAM_RUN(f64, double, f64, f64, NULL)
FR_ADAM_EXPORT(f32, float)
FR_ADAM_EXPORT(f64, double)
FR_DEFINE_ADAM(f16f16, float, f32, f16, f16)
FR_DEFINE_ADAM(f16f32, float, f32, f16, f32)
FR_DEFINE_ADAM(f32f16, float, f32, f32, f16)
FR_DEFINE_ADAM(bf16bf16, float, f32, bf16, bf16)
FR_DEFINE_ADAM(bf16f32, float, f32, bf16, f32)
FR_DEFINE_ADAM(f32bf16, float, f32, f32, bf16)
FR_ADAM_F16C(f16f16, f16, f16)
FR_ADAM_F16C(f16f32, f16, f32)
FR_ADAM_F16C(f32f16, f32, f16)
FR_DEFINE_ADAM_RUN(f16f16, float, f16, f16, FR_F16C_TABLE(fr_adam_f16c_f16f16))
FR_DEFINE_ADAM_RUN(f16f32, float, f16, f32, FR_F16C_TABLE(fr_adam_f16c_f16f32))
FR_DEFINE_ADAM_RUN(f32f16, float, f32, f16, FR_F16C_TABLE(fr_adam_f16c_f32f16))
FR_DEFINE_ADAM_RUN(bf16bf16, float, bf16, bf16, NULL)
FR_DEFINE_ADAM_RUN(bf16f32, float, bf16, f32, NULL)
FR_DEFINE_ADAM_RUN(f32bf16, float, f32, bf16, NULL)

typedef int fr_adam_run_fn(void *p, const void *g, float *m, float *v, float *vmax, float wd,
                           float decay, float omb1, float beta2, float omb2, float eps,
                           float step_size, float bc2_sqrt, float gscale, int64_t n);

static fr_adam_run_fn *const fr_adam_half_runs[3][3] = {
    {fr_adam_run_f16f16, NULL, fr_adam_run_f16f32},
    {NULL, fr_adam_run_bf16bf16, fr_adam_run_bf16f32},
    {fr_adam_run_f32f16, fr_adam_run_f32bf16, fr_adam_run_f32},
};

int fr_adam_step_half(void *p, int pkind, const void *g, int gkind, float *m, float *v,
                      float *vmax, float wd, float decay, float omb1, float beta2, float omb2,
                      float eps, float step_size, float bc2_sqrt, float gscale, int64_t n)
{
    if (pkind < 0 || pkind > 2 || gkind < 0 || gkind > 2 || !fr_adam_half_runs[pkind][gkind])
        return FR_ERR_UNSUPPORTED;
    return fr_adam_half_runs[pkind][gkind](p, g, m, v, vmax, wd, decay, omb1, beta2, omb2, eps,
                                           step_size, bc2_sqrt, gscale, n);
}

/* ------------------------------------------------------------------ lists of parameters
 * One call for many parameters of one dtype (fastreg.torch.optim's step on the C backend, for
 * the parameters small enough to run serially): parameter k has n[k] elements, its arrays at
 * the addresses addr[cols * k ..] (SGD, cols 3: p, g, buf; Adam, cols 5: p, g, m, v, vmax; 0:
 * NULL) and its own scalars at s[rows * k ..] (SGD, 4: wd, decay, l1t, first (0 / 1); Adam,
 * 4: wd, decay, step_size, bc2_sqrt); the rest are the group's.  Each parameter's step is the
 * single-array step above (fr_*_run_SUF, with the calling thread's count), so the bits are
 * those of count single calls.  Every parameter is checked before any is updated. */
static int fr_multi_check(const uintptr_t *addr, const int64_t *n, const void *s, int64_t count,
                          int cols)
{
    if (count < 0)
        return FR_ERR_SIZE;
    if (count > 0 && (!addr || !n || !s))
        return FR_ERR_NULL;
    for (int64_t k = 0; k < count; k++) {
        if (n[k] < 0)
            return FR_ERR_SIZE;
        if (!addr[cols * k] || !addr[cols * k + 1])
            return FR_ERR_NULL;
        if (cols == 5 && (!addr[cols * k + 2] || !addr[cols * k + 3]))
            return FR_ERR_NULL;
    }
    return FR_OK;
}

#define FR_OPTIM_MULTI(SUF, T)                                                                  \
    int fr_sgd_multi_##SUF(const uintptr_t *addr, const int64_t *n, const T *s, int64_t count, \
                           T lr, T momentum, T damp1, int nesterov, T gscale)                   \
    {                                                                                           \
        int status = fr_multi_check(addr, n, s, count, 3);                                      \
        for (int64_t k = 0; status == FR_OK && k < count; k++) {                                \
            const uintptr_t *a = addr + 3 * k;                                                  \
            const T *sk = s + 4 * k;                                                            \
            status = fr_sgd_run_##SUF((T *)a[0], (const T *)a[1], (T *)a[2], lr, sk[0], sk[1], \
                                      momentum, damp1, nesterov, sk[3] != 0, sk[2], gscale,    \
                                      n[k]);                                                    \
        }                                                                                       \
        return status;                                                                          \
    }                                                                                           \
                                                                                                \
    int fr_adam_multi_##SUF(const uintptr_t *addr, const int64_t *n, const T *s, int64_t count,\
                            T omb1, T beta2, T omb2, T eps, T gscale)                           \
    {                                                                                           \
        int status = fr_multi_check(addr, n, s, count, 5);                                      \
        for (int64_t k = 0; status == FR_OK && k < count; k++) {                                \
            const uintptr_t *a = addr + 5 * k;                                                  \
            const T *sk = s + 4 * k;                                                            \
            status = fr_adam_run_##SUF((T *)a[0], (const T *)a[1], (T *)a[2], (T *)a[3],       \
                                       (T *)a[4], sk[0], sk[1], omb1, beta2, omb2, eps, sk[2],  \
                                       sk[3], gscale, n[k]);                                    \
        }                                                                                       \
        return status;                                                                          \
    }

FR_OPTIM_MULTI(f32, float)
FR_OPTIM_MULTI(f64, double)
