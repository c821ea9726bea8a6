/* 16-bit floats (float16, bfloat16) as their uint16 bits: the one place that converts them.
 *
 * Integer arithmetic (and two exact float32 operations for float16 subnormals, see below); no
 * _Float16: nothing depends on the compiler's half-precision support or NaN quieting. Exactly
 * as NumPy (float16) and ml_dtypes
 * (bfloat16) convert, see fastreg/reference/half.py: round to nearest even, overflow to inf,
 * subnormals kept; float16 NaN keeps its sign and top 10 payload bits (never payload 0),
 * bfloat16 NaN becomes the quiet 0x7fc0 with its sign.  Same code as fastreg/cpu/half.py and
 * fastreg/cuda/half.py; tests/test_half.py checks all 65536 patterns.
 */
#ifndef FASTREG_HALF_H
#define FASTREG_HALF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FR_HALF_F16 0
#define FR_HALF_BF16 1
#define FR_HALF_F32 2   /* a float32 operand of a mixed-precision op (float32 parameter, 16-bit
                           gradient, or the other way round) */

/* Branch-free (every candidate computed, then selected bitwise by fr_half_sel) so that loops
 * with conversions vectorize, also inside the larger loops of the fused 16-bit kernels (with ?:
 * gcc sinks the float operation of the subnormal case into a branch, which it may not
 * speculate back under -ftrapping-math: "control flow in loop").  The subnormal cases use one
 * exact float operation each (F. Giesen's half <-> float conversions), which
 * flush-to-zero / denormals-are-zero cannot change: the float results there are normal
 * numbers, and float32 inputs that DAZ would read as 0 round to 0 anyway. */
static inline __attribute__((always_inline)) uint32_t fr_half_sel(int c, uint32_t a, uint32_t b)
{
    uint32_t m = 0u - (uint32_t)(c != 0);   /* c ? a : b */
    return (a & m) | (b & ~m);
}

static inline __attribute__((always_inline)) uint32_t fr_f16_to_f32_bits(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t o = (uint32_t)(h & 0x7FFFu) << 13, e = o & 0x0F800000u;
    uint32_t normal = o + (112u << 23);          /* rebias the exponent */
    uint32_t infnan = o + (224u << 23);          /* exponent 255, payload kept */
    uint32_t sb = o + (113u << 23);              /* subnormal m * 2**-24 = (1 + m/1024 - 1) 2**-14 */
    float f, magic = 0x1p-14f;
    memcpy(&f, &sb, sizeof f);
    f -= magic;                                  /* exact */
    uint32_t sub;
    memcpy(&sub, &f, sizeof sub);
    uint32_t r = fr_half_sel(e == 0x0F800000u, infnan, normal);
    r = fr_half_sel(e == 0, sub, r);
    return sign | r;
}

static inline __attribute__((always_inline)) uint16_t fr_f32_to_f16_bits(uint32_t u)
{
    uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
    uint32_t n = a - 0x38000000u;                /* normal float16: rebias, round at bit 13 */
    n = (n + 0xFFFu + ((n >> 13) & 1u)) >> 13;
    float f;                                     /* subnormal float16 (and 0): |v| + 0.5 rounds */
    memcpy(&f, &a, sizeof f);                    /* at 2**-24 to nearest even, in hardware */
    f += 0.5f;
    uint32_t sub;
    memcpy(&sub, &f, sizeof sub);
    sub -= 0x3F000000u;
    uint32_t m = (a >> 13) & 0x3FFu;             /* NaN: top 10 payload bits, never 0 */
    uint32_t nan = 0x7C00u | fr_half_sel(m != 0, m, 1u);
    uint32_t r = fr_half_sel(a >= 0x38800000u, n, sub);
    r = fr_half_sel(a >= 0x477FF000u, 0x7C00u, r);   /* >= 65520: inf */
    r = fr_half_sel(a > 0x7F800000u, nan, r);
    return (uint16_t)(sign | r);
}

static inline __attribute__((always_inline)) uint32_t fr_bf16_to_f32_bits(uint16_t h)
{
    return (uint32_t)h << 16;
}

static inline __attribute__((always_inline)) uint16_t fr_f32_to_bf16_bits(uint32_t u)
{
    uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    uint32_t nan = ((u >> 16) & 0x8000u) | 0x7FC0u;
    return (uint16_t)fr_half_sel((u & 0x7FFFFFFFu) > 0x7F800000u, nan, r);
}

static inline __attribute__((always_inline)) float fr_half_to_f32(uint16_t h, int kind)
{
    uint32_t u = kind == FR_HALF_BF16 ? fr_bf16_to_f32_bits(h) : fr_f16_to_f32_bits(h);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline __attribute__((always_inline)) uint16_t fr_f32_to_half(float f, int kind)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return kind == FR_HALF_BF16 ? fr_f32_to_bf16_bits(u) : fr_f32_to_f16_bits(u);
}

/* Element access by storage type, for kernels written once and instantiated per type (csrc/optim.c,
 * csrc/dropout.c): FR_ELEM_<tag> is the C type an array of <tag> holds, fr_load_<tag>(a, i) its
 * element i in the math type (float for the 16-bit types: exact), fr_store_<tag>(a, i, v)
 * writes v (16-bit: rounded to nearest even as fr_f32_to_half).  A 16-bit kernel then reads and
 * writes its 16-bit arrays once, with the float32 arithmetic of the float32 kernel in between:
 * the same bits as widening to float32, running the float32 kernel and rounding (the
 * conversion passes of fastreg/_half.py), in one pass. */
#define FR_ELEM_f32 float
#define FR_ELEM_f64 double
#define FR_ELEM_f16 uint16_t
#define FR_ELEM_bf16 uint16_t

static inline __attribute__((always_inline)) float fr_load_f32(const float *a, size_t i)
{
    return a[i];
}
static inline __attribute__((always_inline)) double fr_load_f64(const double *a, size_t i)
{
    return a[i];
}
static inline __attribute__((always_inline)) float fr_load_f16(const uint16_t *a, size_t i)
{
    return fr_half_to_f32(a[i], FR_HALF_F16);
}
static inline __attribute__((always_inline)) float fr_load_bf16(const uint16_t *a, size_t i)
{
    return fr_half_to_f32(a[i], FR_HALF_BF16);
}
static inline __attribute__((always_inline)) void fr_store_f32(float *a, size_t i, float v)
{
    a[i] = v;
}
static inline __attribute__((always_inline)) void fr_store_f64(double *a, size_t i, double v)
{
    a[i] = v;
}
static inline __attribute__((always_inline)) void fr_store_f16(uint16_t *a, size_t i, float v)
{
    a[i] = fr_f32_to_half(v, FR_HALF_F16);
}
static inline __attribute__((always_inline)) void fr_store_bf16(uint16_t *a, size_t i, float v)
{
    a[i] = fr_f32_to_half(v, FR_HALF_BF16);
}

#endif
