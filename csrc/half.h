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

/* ------------------------------------------------------------------ float16 with F16C
 *
 * Eight float16 at a time with the F16C instructions (vcvtph2ps, vcvtps2ph), bit for bit the
 * integer conversions above.  The hardware rounds float32 -> float16 to nearest even, overflows
 * to inf and keeps subnormals, in both directions exactly as the integer code; it differs only on
 * signalling NaNs, which it quiets (sets the quiet bit), where NumPy keeps them signalling:
 *   - float16 -> float32: the 1022 signalling float16 NaNs (exponent 31, payload bit 9 clear,
 *     payload not 0) come out with float32 bit 22 set; it is cleared again (a select on those
 *     lanes, only in blocks that hold a NaN);
 *   - float32 -> float16: float32 NaNs with bit 22 clear come out as sign | 0x7E00 | top payload
 *     bits, NumPy's are sign | 0x7C00 | top payload bits (or 1 where those are 0); a block of
 *     eight that holds any NaN is converted by fr_f32_to_f16_bits instead.
 * Checked on this project's Zen 1 CPU for all 65536 float16 and all 2**32 float32 patterns,
 * with MXCSR's DAZ and FTZ clear and set (torch.set_flush_denormal): the conversions ignore
 * both (float32 subnormal inputs round to a float16 zero of the same sign either way), and
 * these were the only differences.  tests/test_half.py and tests/test_half_fused.py repeat the
 * check through every kernel that uses them.
 *
 * Only in functions compiled for FR_F16C (target "avx2,f16c"; no FMA, so float32 arithmetic
 * inlined next to these is not contracted either), called where fr_cpu_has_f16c() says so.
 * -DFR_NO_F16C builds without them (the integer code everywhere). */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(FR_NO_F16C)
#define FR_HAVE_F16C_KERNELS 1
#include <immintrin.h>
#define FR_F16C __attribute__((target("avx2,f16c")))

/* Whether the CPU has AVX2 and F16C (the kernels built for FR_F16C use both). */
static inline int fr_cpu_has_f16c(void)
{
    static int has = -1;
    int h = __atomic_load_n(&has, __ATOMIC_RELAXED);
    if (h < 0) {
        __builtin_cpu_init();
        h = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
        __atomic_store_n(&has, h, __ATOMIC_RELAXED);
    }
    return h;
}

/* The float16 at src[0 .. 8) as float32, exactly as fr_f16_to_f32_bits. */
FR_F16C static inline __attribute__((always_inline)) __m256 fr_f16x8_load(const uint16_t *src)
{
    __m128i h = _mm_loadu_si128((const __m128i *)src);
    __m256 f = _mm256_cvtph_ps(h);
    __m128i a = _mm_and_si128(h, _mm_set1_epi16(0x7FFF));
    __m128i nan = _mm_cmpgt_epi16(a, _mm_set1_epi16(0x7C00));
    if (__builtin_expect(_mm_movemask_epi8(nan) != 0, 0)) {
        /* signalling: NaN with payload bit 9 clear; clear float32 bit 22 again there */
        __m128i snan = _mm_andnot_si128(_mm_cmpgt_epi16(a, _mm_set1_epi16(0x7DFF)), nan);
        __m256i quiet = _mm256_and_si256(_mm256_cvtepi16_epi32(snan),
                                         _mm256_set1_epi32(0x00400000));
        f = _mm256_andnot_ps(_mm256_castsi256_ps(quiet), f);
    }
    return f;
}

/* v rounded to float16 into dst[0 .. 8), exactly as fr_f32_to_f16_bits. */
FR_F16C static inline __attribute__((always_inline)) void fr_f16x8_store(uint16_t *dst, __m256 v)
{
    /* immediate rounding (not MXCSR.RC): to nearest even */
    __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128((__m128i *)dst, h);
    if (__builtin_expect(_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0, 0)) {
        uint32_t u[8];
        _mm256_storeu_si256((__m256i *)u, _mm256_castps_si256(v));
        for (int j = 0; j < 8; j++)
            dst[j] = fr_f32_to_f16_bits(u[j]);
    }
}

/* dst[i] = float16 src[i] widened, i < n (fr_widen_half's loop). */
FR_F16C static inline void fr_f16_widen_f16c(const uint16_t *src, float *dst, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, fr_f16x8_load(src + i));
    for (; i < n; i++)
        dst[i] = fr_half_to_f32(src[i], FR_HALF_F16);
}

/* dst[i] = float32 src[i] rounded to float16, i < n (fr_narrow_half's loop). */
FR_F16C static inline void fr_f16_narrow_f16c(const float *src, uint16_t *dst, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        fr_f16x8_store(dst + i, _mm256_loadu_ps(src + i));
    for (; i < n; i++)
        dst[i] = fr_f32_to_half(src[i], FR_HALF_F16);
}
#endif

/* ------------------------------------------------------------------ bfloat16 with AVX2
 *
 * Eight bfloat16 at a time with AVX2 integer instructions on the float32 bits: the same
 * arithmetic as fr_f32_to_bf16_bits lane by lane (round to nearest even by adding
 * 0x7FFF + bit 16, NaN -> sign | 0x7FC0), then packed 32 -> 16 bits (packus: every lane is
 * <= 0xFFFF, so nothing saturates) and the lane order fixed up (permute4x64).  Checked against
 * fr_f32_to_bf16_bits for all 2**32 float32 patterns; tests/test_half_fused.py repeats the
 * edge cases through every kernel that uses it.  Widening is a shift (fr_bf16_to_f32_bits).
 * Only in functions compiled for target "avx2", called where the AVX2 kernels are chosen. */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define FR_HAVE_BF16_AVX2 1
#include <immintrin.h>
#define FR_BF16_AVX2 __attribute__((target("avx2")))

/* v rounded to bfloat16 into dst[0 .. 8), exactly as fr_f32_to_bf16_bits. */
FR_BF16_AVX2 static inline __attribute__((always_inline)) void fr_bf16x8_store(uint16_t *dst,
                                                                               __m256 v)
{
    const __m256i u = _mm256_castps_si256(v);
    const __m256i hi = _mm256_srli_epi32(u, 16);
    __m256i r = _mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF));
    r = _mm256_srli_epi32(_mm256_add_epi32(r, _mm256_and_si256(hi, _mm256_set1_epi32(1))), 16);
    const __m256i nan = _mm256_or_si256(_mm256_and_si256(hi, _mm256_set1_epi32(0x8000)),
                                        _mm256_set1_epi32(0x7FC0));
    const __m256i a = _mm256_and_si256(u, _mm256_set1_epi32(0x7FFFFFFF));
    const __m256i isnan = _mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x7F800000));  /* a >= 0 */
    r = _mm256_blendv_epi8(r, nan, isnan);
    /* packus per 128-bit half: [r0..r3 r0..r3 | r4..r7 r4..r7]; quadwords 0 and 2 in order */
    const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_storeu_si128((__m128i *)dst, _mm256_castsi256_si128(p));
}

/* The bfloat16 at src[0 .. 8) as float32 (exact: a shift). */
FR_BF16_AVX2 static inline __attribute__((always_inline)) __m256 fr_bf16x8_load(const uint16_t *src)
{
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)src));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

/* dst[i] = bfloat16 src[i] widened, i < n (batch norm's float32 blocks). */
FR_BF16_AVX2 static inline void fr_bf16_widen_avx2(const uint16_t *src, float *dst, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, fr_bf16x8_load(src + i));
    for (; i < n; i++)
        dst[i] = fr_half_to_f32(src[i], FR_HALF_BF16);
}

/* dst[i] = float32 src[i] rounded to bfloat16, i < n (fr_narrow_half's loop). */
FR_BF16_AVX2 static inline void fr_bf16_narrow_avx2(const float *src, uint16_t *dst, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        fr_bf16x8_store(dst + i, _mm256_loadu_ps(src + i));
    for (; i < n; i++)
        dst[i] = fr_f32_to_half(src[i], FR_HALF_BF16);
}
#endif

#endif
