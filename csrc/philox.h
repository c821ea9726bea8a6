/* Philox4x32-10, header-only: the scalar core and two block generators.
 *
 * Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11.
 * Same definitions as fastreg/reference/philox.py: products are formed in uint64_t and the
 * halves taken with explicit shifts and masks, so nothing relies on implicit uint32 wrap.
 *
 * The stream: word g (a 64-bit index) for a 64-bit seed is word g & 3 of Philox4x32-10 on the
 * counter (b & 0xFFFFFFFF, b >> 32, 0, 0), b = g >> 2, under the key (seed & 0xFFFFFFFF,
 * seed >> 32).  A "block" is the four words of one counter b.
 *
 * fr_stream_blocks_portable() and fr_stream_blocks_avx2() both write the words of blocks
 * b0 .. b0 + nb - 1 in stream order; they are bit-identical (the tests hold both to the NumPy
 * reference).  The AVX2 one keeps each Philox word in a 64-bit lane so that one vpmuludq forms
 * four full 32x32->64 products, and lays the counters out as (b, b+2, b+1, b+3) so that putting
 * the words back into stream order needs no lane-crossing shuffle.
 */
#ifndef FASTREG_PHILOX_H
#define FASTREG_PHILOX_H

#include <stddef.h>
#include <stdint.h>

#define FR_PHILOX_M0 UINT64_C(0xD2511F53)
#define FR_PHILOX_M1 UINT64_C(0xCD9E8D57)
#define FR_PHILOX_W0 UINT64_C(0x9E3779B9)
#define FR_PHILOX_W1 UINT64_C(0xBB67AE85)
#define FR_PHILOX_ROUNDS 10
#define FR_MASK32 UINT64_C(0xFFFFFFFF)

#define FR_HI32(p) ((uint32_t)((p) >> 32))
#define FR_LO32(p) ((uint32_t)((p) & FR_MASK32))

/* The ten rounds on words (c0, c1, c2, c3) under key (k0, k1).  Words are uint32_t and products
 * uint64_t (a widening multiply, which compilers vectorize); halves are taken explicitly. */
static inline __attribute__((always_inline)) void
fr_philox_rounds(uint32_t *c0, uint32_t *c1, uint32_t *c2, uint32_t *c3, uint32_t k0, uint32_t k1)
{
    uint32_t a = *c0, b = *c1, c = *c2, d = *c3;
#pragma GCC unroll 10
    for (int r = 0; r < FR_PHILOX_ROUNDS; r++) {
        uint64_t p0 = FR_PHILOX_M0 * (uint64_t)a;
        uint64_t p1 = FR_PHILOX_M1 * (uint64_t)c;
        a = FR_HI32(p1) ^ b ^ k0;
        b = FR_LO32(p1);
        c = FR_HI32(p0) ^ d ^ k1;
        d = FR_LO32(p0);
        k0 = FR_LO32(k0 + FR_PHILOX_W0);
        k1 = FR_LO32(k1 + FR_PHILOX_W1);
    }
    *c0 = a, *c1 = b, *c2 = c, *c3 = d;
}

/* out = Philox4x32-10(ctr, key). */
static inline void fr_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    fr_philox_rounds(&c0, &c1, &c2, &c3, key[0], key[1]);
    out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

/* Software prefetch of the 64-byte line at p into L1 (a hint: it never faults, so it may run
 * past the end of an array); nothing where the compiler has no such builtin. */
#if defined(__GNUC__)
#define FR_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 3)
#else
#define FR_PREFETCH(p) ((void)(p))
#endif

/* Prefetches the lines of [pf + lo, pf + hi) (pf NULL: nothing).  The generators below call it
 * as they go, with 4 bytes of pf per word generated, so that the lines an element loop reads
 * next (its input: 4 bytes per word for float32 and float64 alike) are fetched while the
 * Philox rounds run, instead of after them. */
static inline __attribute__((always_inline)) void
fr_prefetch_range(const char *pf, size_t lo, size_t hi)
{
    if (pf)
        for (size_t a = lo & ~(size_t)63; a < hi; a += 64)
            FR_PREFETCH((uintptr_t)pf + a);  /* integer sum: may pass the array's end */
}

/* Blocks generated between two prefetches on the portable path (4 lines of pf). */
#define FR_PORTABLE_CHUNK 16

/* Words of blocks b0 .. b0 + nb - 1, stream order, into w[0 .. 4 nb); prefetches pf (may be
 * NULL) as above.  Plain C (the portable path); iterations are independent, so the compiler
 * vectorizes the inner loop. */
static inline void fr_stream_blocks_portable(uint64_t seed, uint64_t b0, size_t nb, uint32_t *w,
                                             const char *pf)
{
    const uint32_t k0 = FR_LO32(seed), k1 = FR_HI32(seed);
    for (size_t j0 = 0; j0 < nb; j0 += FR_PORTABLE_CHUNK) {
        size_t j1 = nb - j0 < FR_PORTABLE_CHUNK ? nb : j0 + FR_PORTABLE_CHUNK;
        fr_prefetch_range(pf, 16 * j0, 16 * j1);
        for (size_t j = j0; j < j1; j++) {
            uint64_t b = b0 + j;
            uint32_t c0 = FR_LO32(b), c1 = FR_HI32(b), c2 = 0, c3 = 0;
            fr_philox_rounds(&c0, &c1, &c2, &c3, k0, k1);
            w[4 * j + 0] = c0;
            w[4 * j + 1] = c1;
            w[4 * j + 2] = c2;
            w[4 * j + 3] = c3;
        }
    }
}

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define FR_HAVE_AVX2_KERNELS 1
#include <immintrin.h>

#define FR_AVX2 __attribute__((target("avx2")))

/* Groups of four counters in flight per loop iteration: Philox is a chain of dependent
 * multiplies, and six independent chains keep the vector units busy (measured: 0.60 ns/word
 * with 2 groups, 0.43 with 6; more spill without gaining). */
#ifndef FR_AVX2_GROUPS
#define FR_AVX2_GROUPS 6
#endif

typedef struct {
    __m256i k0[FR_PHILOX_ROUNDS], k1[FR_PHILOX_ROUNDS];  /* round keys, broadcast */
} fr_avx2_keys;

/* Words of blocks b, b+1, ..., b + 4G - 1 into w[0 .. 16G) (w 32-byte aligned).  Lanes hold a
 * 32-bit word in their low half; the high halves carry junk that vpmuludq ignores and the final
 * blend drops, so no masking is needed inside the rounds. */
FR_AVX2 static inline __attribute__((always_inline)) void
fr_philox_avx2_groups(const fr_avx2_keys *k, uint64_t b, uint32_t *w, const int G)
{
    const __m256i m0 = _mm256_set1_epi64x((long long)FR_PHILOX_M0);
    const __m256i m1 = _mm256_set1_epi64x((long long)FR_PHILOX_M1);
    __m256i c0[FR_AVX2_GROUPS], c1[FR_AVX2_GROUPS], c2[FR_AVX2_GROUPS], c3[FR_AVX2_GROUPS];
#pragma GCC unroll 16
    for (int u = 0; u < G; u++) {
        /* counters b, b+2, b+1, b+3 in lanes 0..3: stream order then needs no lane crossing */
        uint64_t bu = b + 4 * (uint64_t)u;
        __m256i ctr = _mm256_add_epi64(_mm256_set1_epi64x((long long)bu),
                                       _mm256_set_epi64x(3, 1, 2, 0));
        /* round 1, where c2 = c3 = 0 makes the M1 product zero */
        __m256i p0 = _mm256_mul_epu32(ctr, m0);
        c0[u] = _mm256_xor_si256(_mm256_srli_epi64(ctr, 32), k->k0[0]);
        c1[u] = _mm256_setzero_si256();
        c2[u] = _mm256_xor_si256(_mm256_srli_epi64(p0, 32), k->k1[0]);
        c3[u] = p0;
    }
#pragma GCC unroll 16
    for (int r = 1; r < FR_PHILOX_ROUNDS; r++) {
#pragma GCC unroll 16
        for (int u = 0; u < G; u++) {
            __m256i p0 = _mm256_mul_epu32(c0[u], m0);
            __m256i p1 = _mm256_mul_epu32(c2[u], m1);
            c0[u] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), c1[u]), k->k0[r]);
            c2[u] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), c3[u]), k->k1[r]);
            c1[u] = p1;
            c3[u] = p0;
        }
    }
#pragma GCC unroll 16
    for (int u = 0; u < G; u++) {
        /* 64-bit lanes (w0 | w1 << 32) and (w2 | w3 << 32) of counters b, b+2, b+1, b+3 */
        __m256i a01 = _mm256_blend_epi32(c0[u], _mm256_slli_epi64(c1[u], 32), 0xAA);
        __m256i a23 = _mm256_blend_epi32(c2[u], _mm256_slli_epi64(c3[u], 32), 0xAA);
        _mm256_store_si256((__m256i *)(w + 16 * u), _mm256_unpacklo_epi64(a01, a23));
        _mm256_store_si256((__m256i *)(w + 16 * u + 8), _mm256_unpackhi_epi64(a01, a23));
    }
}

/* Words of blocks b0 .. b0 + nb - 1 into w (stream order, w 32-byte aligned); nb is rounded up
 * to a multiple of 4: w must have room for 4 * ((nb + 3) & ~3) words. */
FR_AVX2 static inline void fr_stream_blocks_avx2(uint64_t seed, uint64_t b0, size_t nb, uint32_t *w,
                                                 const char *pf)
{
    fr_avx2_keys k;
    uint64_t a = seed & FR_MASK32, c = seed >> 32;
    for (int r = 0; r < FR_PHILOX_ROUNDS; r++) {
        k.k0[r] = _mm256_set1_epi64x((long long)a);
        k.k1[r] = _mm256_set1_epi64x((long long)c);
        a = (a + FR_PHILOX_W0) & FR_MASK32;
        c = (c + FR_PHILOX_W1) & FR_MASK32;
    }
    size_t j = 0;
    for (; j + 4 * FR_AVX2_GROUPS <= nb; j += 4 * FR_AVX2_GROUPS) {
        fr_prefetch_range(pf, 16 * j, 16 * (j + 4 * FR_AVX2_GROUPS));
        fr_philox_avx2_groups(&k, b0 + j, w + 4 * j, FR_AVX2_GROUPS);
    }
    fr_prefetch_range(pf, 16 * j, 16 * nb);
    for (; j < nb; j += 4)
        fr_philox_avx2_groups(&k, b0 + j, w + 4 * j, 1);
}

#define FR_HAVE_AVX512_KERNELS 1
#define FR_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl")))

/* Groups of eight counters in flight per loop iteration (see FR_AVX2_GROUPS; measured on
 * Zen 4: 6 groups 10% faster than 4). */
#ifndef FR_AVX512_GROUPS
#define FR_AVX512_GROUPS 6
#endif

typedef struct {
    __m512i k0[FR_PHILOX_ROUNDS], k1[FR_PHILOX_ROUNDS];  /* round keys, broadcast */
} fr_avx512_keys;

/* The AVX2 groups above on 512-bit vectors: eight counters b .. b+7 (in order) per vector, a
 * three-way XOR per word and round (vpternlogq), and a two-source permute (vpermt2q) that puts
 * the words back into stream order.  Words of blocks b .. b + 8G - 1 into w[0 .. 32G) (w 64-byte
 * aligned). */
FR_AVX512 static inline __attribute__((always_inline)) void
fr_philox_avx512_groups(const fr_avx512_keys *k, uint64_t b, uint32_t *w, const int G)
{
    const __m512i m0 = _mm512_set1_epi64((long long)FR_PHILOX_M0);
    const __m512i m1 = _mm512_set1_epi64((long long)FR_PHILOX_M1);
    __m512i c0[FR_AVX512_GROUPS], c1[FR_AVX512_GROUPS], c2[FR_AVX512_GROUPS], c3[FR_AVX512_GROUPS];
#pragma GCC unroll 16
    for (int u = 0; u < G; u++) {
        uint64_t bu = b + 8 * (uint64_t)u;
        __m512i ctr = _mm512_add_epi64(_mm512_set1_epi64((long long)bu),
                                       _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0));
        /* round 1, where c2 = c3 = 0 makes the M1 product zero */
        __m512i p0 = _mm512_mul_epu32(ctr, m0);
        c0[u] = _mm512_xor_si512(_mm512_srli_epi64(ctr, 32), k->k0[0]);
        c1[u] = _mm512_setzero_si512();
        c2[u] = _mm512_xor_si512(_mm512_srli_epi64(p0, 32), k->k1[0]);
        c3[u] = p0;
    }
#pragma GCC unroll 16
    for (int r = 1; r < FR_PHILOX_ROUNDS; r++) {
#pragma GCC unroll 16
        for (int u = 0; u < G; u++) {
            __m512i p0 = _mm512_mul_epu32(c0[u], m0);
            __m512i p1 = _mm512_mul_epu32(c2[u], m1);
            /* 0x96: a ^ b ^ c */
            c0[u] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p1, 32), c1[u], k->k0[r], 0x96);
            c2[u] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p0, 32), c3[u], k->k1[r], 0x96);
            c1[u] = p1;
            c3[u] = p0;
        }
    }
    const __m512i lo = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
    const __m512i hi = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
#pragma GCC unroll 16
    for (int u = 0; u < G; u++) {
        /* 64-bit lanes (w0 | w1 << 32) and (w2 | w3 << 32) of counters b .. b+7 */
        __m512i a01 = _mm512_mask_blend_epi32(0xAAAA, c0[u], _mm512_slli_epi64(c1[u], 32));
        __m512i a23 = _mm512_mask_blend_epi32(0xAAAA, c2[u], _mm512_slli_epi64(c3[u], 32));
        _mm512_store_si512((__m512i *)(w + 32 * u), _mm512_permutex2var_epi64(a01, lo, a23));
        _mm512_store_si512((__m512i *)(w + 32 * u + 16), _mm512_permutex2var_epi64(a01, hi, a23));
    }
}

/* Words of blocks b0 .. b0 + nb - 1 into w (stream order, w 64-byte aligned), prefetching pf
 * as the AVX2 one does; nb is rounded up to a multiple of 8: w must have room for
 * 4 * ((nb + 7) & ~7) words. */
FR_AVX512 static inline void fr_stream_blocks_avx512(uint64_t seed, uint64_t b0, size_t nb,
                                                     uint32_t *w, const char *pf)
{
    fr_avx512_keys k;
    uint64_t a = seed & FR_MASK32, c = seed >> 32;
    for (int r = 0; r < FR_PHILOX_ROUNDS; r++) {
        k.k0[r] = _mm512_set1_epi64((long long)a);
        k.k1[r] = _mm512_set1_epi64((long long)c);
        a = (a + FR_PHILOX_W0) & FR_MASK32;
        c = (c + FR_PHILOX_W1) & FR_MASK32;
    }
    size_t j = 0;
    for (; j + 8 * FR_AVX512_GROUPS <= nb; j += 8 * FR_AVX512_GROUPS) {
        fr_prefetch_range(pf, 16 * j, 16 * (j + 8 * FR_AVX512_GROUPS));
        fr_philox_avx512_groups(&k, b0 + j, w + 4 * j, FR_AVX512_GROUPS);
    }
    fr_prefetch_range(pf, 16 * j, 16 * nb);
    for (; j < nb; j += 8)
        fr_philox_avx512_groups(&k, b0 + j, w + 4 * j, 1);
}
#endif /* x86 and GCC-compatible */

#endif /* FASTREG_PHILOX_H */
