/* 16-bit floats (float16, bfloat16) as their uint16 bits: the one place that converts them.
 *
 * Integer arithmetic only (no _Float16, no float operation: nothing depends on the compiler's
 * half-precision support, FTZ/DAZ or NaN quieting), exactly as NumPy (float16) and ml_dtypes
 * (bfloat16) convert, see fastreg/reference/half.py: round to nearest even, overflow to inf,
 * subnormals kept; float16 NaN keeps its sign and top 10 payload bits (never payload 0),
 * bfloat16 NaN becomes the quiet 0x7fc0 with its sign.  Same code as fastreg/cpu/half.py and
 * fastreg/cuda/half.py; tests/test_half.py checks all 65536 patterns.
 */
#ifndef FASTREG_HALF_H
#define FASTREG_HALF_H

#include <stdint.h>
#include <string.h>

#define FR_HALF_F16 0
#define FR_HALF_BF16 1

static inline uint32_t fr_f16_to_f32_bits(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    if (e == 0x1F)
        return sign | 0x7F800000u | (m << 13);
    if (e == 0) {
        if (m == 0)
            return sign;
        uint32_t e2 = 113; /* subnormal m * 2**-24: normalize */
        while ((m & 0x400u) == 0) {
            m <<= 1;
            e2--;
        }
        return sign | (e2 << 23) | ((m & 0x3FFu) << 13);
    }
    return sign | ((e + 112) << 23) | (m << 13);
}

static inline uint16_t fr_f32_to_f16_bits(uint32_t u)
{
    uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) { /* NaN */
        uint32_t m = (a >> 13) & 0x3FFu;
        return (uint16_t)(sign | 0x7C00u | (m ? m : 1u));
    }
    if (a >= 0x477FF000u) /* >= 65520: inf */
        return (uint16_t)(sign | 0x7C00u);
    if (a >= 0x38800000u) { /* normal */
        uint32_t r = a - 0x38000000u;
        r += 0xFFFu + ((r >> 13) & 1u);
        return (uint16_t)(sign | (r >> 13));
    }
    if (a <= 0x33000000u) /* <= 2**-25 */
        return (uint16_t)sign;
    uint32_t e = a >> 23, m = (a & 0x7FFFFFu) | 0x800000u, shift = 126 - e;
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u)))
        q++;
    return (uint16_t)(sign | q);
}

static inline uint32_t fr_bf16_to_f32_bits(uint16_t h) { return (uint32_t)h << 16; }

static inline uint16_t fr_f32_to_bf16_bits(uint32_t u)
{
    if ((u & 0x7FFFFFFFu) > 0x7F800000u)
        return (uint16_t)(((u >> 16) & 0x8000u) | 0x7FC0u);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static inline float fr_half_to_f32(uint16_t h, int kind)
{
    uint32_t u = kind == FR_HALF_BF16 ? fr_bf16_to_f32_bits(h) : fr_f16_to_f32_bits(h);
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t fr_f32_to_half(float f, int kind)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return kind == FR_HALF_BF16 ? fr_f32_to_bf16_bits(u) : fr_f32_to_f16_bits(u);
}

#endif
