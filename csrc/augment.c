/* Image augmentation kernels of the C backend (OpenMP): flips, affine resampling, Gaussian
 * noise, erasing, mixup and cutmix pasting.
 *
 * Exact definitions (the kernel contract): fastreg/reference/augment.py.  Every kernel gives the
 * reference's bits: the same fixed-point bilinear formula (source coordinates quantized to 1/256
 * pixel in double, per pixel, in the reference's order of operations), the same float32
 * Box-Muller with polynomial log/sin/cos, the same float32 mixing; built with
 * -ffp-contract=off and no fast-math.
 *
 * Run-time ISA choice (fr_get_isa(), csrc/dropout.c): on "avx2" and "avx512" the hot loops use
 * copies compiled for AVX2 (target attribute, no -march=native needed):
 *   - flips of 3-byte and 1-byte pixels reverse a row with byte shuffles;
 *   - uint8 bilinear resampling of 3-channel images gathers the four taps of 8 output pixels
 *     (32-bit gathers) and interpolates in 16-bit lanes, exactly (see fr_bilinear8_rgb_avx2);
 *   - Gaussian noise draws its Philox words with the AVX-512 / AVX2 generators of philox.h and
 *     runs Box-Muller vectorized by the compiler (bitwise selects, no branches).
 * The portable copies do the same integer and IEEE operations, so every path gives the same bits.
 *
 * Parallel over (image, row) for the geometric kernels (static schedule: a thread's rows are
 * contiguous, so an image's rows stay in its caches) and over (sample, tile of values) for noise.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "elementwise.h"
#include "fastreg.h"
#include "philox.h"

#define FR_AUG_INLINE static inline __attribute__((always_inline))
/* values per noise tile: a multiple of 8 (tiles start on Philox blocks) */
#define FR_AUG_NOISE_TILE 2048
#define FR_AUG_NOISE_PAD 32  /* words the block generators may write past a tile */
#define FR_AUG_FLIP_AHEAD 3  /* rows: source prefetch distance of flips */
#define FR_AUG_STREAM_MIN_BYTES ((int64_t)24 << 20)  /* flips' "auto" streaming threshold */
#define FR_AUG_FLIP_BUF 8192 /* bytes: rows up to this long are streamed from an L1 buffer */

#if defined(FR_HAVE_AVX2_KERNELS)
#define FR_AUG_X86 1
#define FR_AUG_AVX2 __attribute__((target("avx2")))
#endif

static int fr_aug_avx2(void) { return fr_get_isa() >= 1; }

/* ------------------------------------------------------------------ flips */

/* dst = src with its n pixels of P bytes in reverse order */
FR_AUG_INLINE void fr_reverse_pixels(const uint8_t *src, uint8_t *dst, int64_t n, int64_t P)
{
    switch (P) {
    case 1:
        for (int64_t u = 0; u < n; u++)
            dst[u] = src[n - 1 - u];
        break;
    case 3:
        for (int64_t u = 0; u < n; u++) {
            const uint8_t *s = src + 3 * (n - 1 - u);
            dst[3 * u] = s[0];
            dst[3 * u + 1] = s[1];
            dst[3 * u + 2] = s[2];
        }
        break;
    case 4: {
        for (int64_t u = 0; u < n; u++)
            memcpy(dst + 4 * u, src + 4 * (n - 1 - u), 4);
        break;
    }
    case 8: {
        for (int64_t u = 0; u < n; u++)
            memcpy(dst + 8 * u, src + 8 * (n - 1 - u), 8);
        break;
    }
    default:
        for (int64_t u = 0; u < n; u++)
            memcpy(dst + P * u, src + P * (n - 1 - u), (size_t)P);
    }
}

#ifdef FR_AUG_X86
/* 3-byte pixels: 8 per step, two 16-byte loads of 4 pixels each (read from 4 bytes before the
 * pixels, so that no load passes the row's end), one byte shuffle each, two 16-byte stores (the
 * second one's last 4 bytes are rewritten by the next step). */
FR_AUG_AVX2 static void fr_reverse_rgb_avx2(const uint8_t *src, uint8_t *dst, int64_t n)
{
    const __m128i rev = _mm_setr_epi8(13, 14, 15, 10, 11, 12, 7, 8, 9, 4, 5, 6,
                                      -128, -128, -128, -128);
    int64_t u = 0;
    for (; u + 10 <= n; u += 8) {
        /* dst pixels u .. u+3 are src pixels n-1-u .. n-4-u: bytes [3(n-4-u), 3(n-u)) */
        __m128i b = _mm_loadu_si128((const __m128i *)(src + 3 * (n - 4 - u) - 4));
        __m128i a = _mm_loadu_si128((const __m128i *)(src + 3 * (n - 8 - u) - 4));
        _mm_storeu_si128((__m128i *)(dst + 3 * u), _mm_shuffle_epi8(b, rev));
        _mm_storeu_si128((__m128i *)(dst + 3 * u + 12), _mm_shuffle_epi8(a, rev));
    }
    for (; u < n; u++) {
        const uint8_t *s = src + 3 * (n - 1 - u);
        dst[3 * u] = s[0];
        dst[3 * u + 1] = s[1];
        dst[3 * u + 2] = s[2];
    }
}

/* 1-byte pixels: 32 per step (reverse within 128-bit lanes, then swap the lanes). */
FR_AUG_AVX2 static void fr_reverse_bytes_avx2(const uint8_t *src, uint8_t *dst, int64_t n)
{
    const __m256i rev = _mm256_setr_epi8(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
                                         15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    int64_t u = 0;
    for (; u + 32 <= n; u += 32) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(src + n - 32 - u));
        v = _mm256_shuffle_epi8(v, rev);
        _mm256_storeu_si256((__m256i *)(dst + u), _mm256_permute4x64_epi64(v, 0x4E));
    }
    for (; u < n; u++)
        dst[u] = src[n - 1 - u];
}
#endif

typedef struct {
    const uint8_t *x, *hflip, *vflip;
    uint8_t *out;
    int64_t H, W, P, row, rows;
    int avx2, stream;
} fr_flip_job;

/* Output row r (image r / H) of fr_aug_flip; buf: FR_AUG_FLIP_BUF + 64 bytes, 64-aligned. */
static void fr_flip_row(const fr_flip_job *j, int64_t r, uint8_t *buf)
{
    const int64_t H = j->H, row = j->row, rows = j->rows;
    int64_t m = r / H, v = r - m * H;
    int64_t sv = j->vflip[m] ? H - 1 - v : v;
    const uint8_t *src = j->x + (m * H + sv) * row;
    uint8_t *dst = j->out + r * row;
    if (r + FR_AUG_FLIP_AHEAD < rows) {
        /* the source row FR_AUG_FLIP_AHEAD rows on: a reversed row is read backwards, which
         * the hardware prefetchers do not follow from DRAM */
        int64_t ma = (r + FR_AUG_FLIP_AHEAD) / H, va = r + FR_AUG_FLIP_AHEAD - ma * H;
        const uint8_t *pa = j->x + (ma * H + (j->vflip[ma] ? H - 1 - va : va)) * row;
        for (int64_t b = 0; b < row; b += 64)
            FR_PREFETCH(pa + b);
    }
    if (!j->hflip[m]) {
        if (j->stream)
            fr_ew_stream_copy(dst, src, (size_t)row);
        else
            memcpy(dst, src, (size_t)row);
        return;
    }
    uint8_t *d = j->stream ? buf : dst;
#ifdef FR_AUG_X86
    if (j->avx2 && j->P == 3)
        fr_reverse_rgb_avx2(src, d, j->W);
    else if (j->avx2 && j->P == 1)
        fr_reverse_bytes_avx2(src, d, j->W);
    else
#endif
        fr_reverse_pixels(src, d, j->W, j->P);
    if (j->stream)
        fr_ew_stream_copy(dst, buf, (size_t)row);
}

int fr_aug_flip(const uint8_t *x, const uint8_t *hflip, const uint8_t *vflip, uint8_t *out,
                int64_t M, int64_t H, int64_t W, int64_t P)
{
    if (M < 0 || H < 0 || W < 0 || P < 0)
        return FR_ERR_SIZE;
    if (M == 0 || H == 0 || W == 0 || P == 0)
        return FR_OK;
    if (!x || !hflip || !vflip || !out)
        return FR_ERR_NULL;
    const int64_t row = W * P, rows = M * H;
    /* large outputs: streaming stores (a reversed row goes through an L1 buffer first), which
     * save the read of every output line; "auto" streams only outputs that would not stay in
     * the last-level cache with their input (measured: 64 images 224x224x3, 9.6 MB, are 25%
     * faster with ordinary stores, 256 images as fast either way) */
    const int smode = fr_get_stream_stores();
    const int stream = row <= FR_AUG_FLIP_BUF &&
                       (smode == 2 || (smode == 1 && rows * row >= FR_AUG_STREAM_MIN_BYTES));
    const fr_flip_job job = {x, hflip, vflip, out, H, W, P, row, rows, fr_aug_avx2(), stream};
    const int nt = fr_region_threads(rows);
    if (nt <= 1) {
        _Alignas(64) uint8_t buf[FR_AUG_FLIP_BUF + 64];
        for (int64_t r = 0; r < rows; r++)
            fr_flip_row(&job, r, buf);
#ifdef FR_AUG_X86
        if (stream)
            _mm_sfence();
#endif
        return FR_OK;
    }
#pragma omp parallel num_threads(nt)
    {
        _Alignas(64) uint8_t buf[FR_AUG_FLIP_BUF + 64];
        /* guided: contiguous runs of rows (an image's rows stay in one thread's caches), then
         * short ones that let a thread pick up the work of one the OS has preempted */
#pragma omp for schedule(guided, 16)
        for (int64_t r = 0; r < rows; r++)
            fr_flip_row(&job, r, buf);
#ifdef FR_AUG_X86
        if (stream)
            _mm_sfence();  /* order this thread's streaming stores before the join */
#endif
    }
    return FR_OK;
}

/* ------------------------------------------------------------------ affine resampling */

#define FR_AUG_LIM 1048576.0 /* 2**20 */

/* floor(s * 256 + 0.5) of s clamped to [-2**20, 2**20] (NaN: -2**20), as int32 (|q| <= 2**28) */
FR_AUG_INLINE int32_t fr_quantize(double s)
{
    s = s >= -FR_AUG_LIM ? s : -FR_AUG_LIM;
    s = s <= FR_AUG_LIM ? s : FR_AUG_LIM;
    return (int32_t)floor(s * 256.0 + 0.5);
}

/* The quantized source points of output row v: ((a00 u + a01 v) + a02, (a10 u + a11 v) + a12),
 * per pixel, in double, as the reference. */
FR_AUG_INLINE void fr_row_coords(const double *a, int64_t v, int64_t wo, int32_t *qx,
                                 int32_t *qy)
{
    const double fv = (double)v;
    const double a00 = a[0], bx = a[1] * fv, a02 = a[2];
    const double a10 = a[3], by = a[4] * fv, a12 = a[5];
    for (int64_t u = 0; u < wo; u++) {
        double fu = (double)(int32_t)u;
        qx[u] = fr_quantize((a00 * fu + bx) + a02);
        qy[u] = fr_quantize((a10 * fu + by) + a12);
    }
}

static void fr_row_coords_portable(const double *a, int64_t v, int64_t wo, int32_t *qx,
                                   int32_t *qy)
{
    fr_row_coords(a, v, wo, qx, qy);
}

#ifdef FR_AUG_X86
/* the same, 4 pixels per step: max_pd(s, -lim) is s > -lim ? s : -lim (NaN: -lim) and
 * min_pd(s, lim) is s < lim ? s : lim, as fr_quantize; every other step is one IEEE operation */
FR_AUG_AVX2 static void fr_row_coords_avx2(const double *a, int64_t v, int64_t wo, int32_t *qx,
                                           int32_t *qy)
{
    const double fv = (double)v;
    const __m256d a00 = _mm256_set1_pd(a[0]), bx = _mm256_set1_pd(a[1] * fv);
    const __m256d a02 = _mm256_set1_pd(a[2]);
    const __m256d a10 = _mm256_set1_pd(a[3]), by = _mm256_set1_pd(a[4] * fv);
    const __m256d a12 = _mm256_set1_pd(a[5]);
    const __m256d lo = _mm256_set1_pd(-FR_AUG_LIM), hi = _mm256_set1_pd(FR_AUG_LIM);
    const __m256d k256 = _mm256_set1_pd(256.0), half = _mm256_set1_pd(0.5);
    __m256d fu = _mm256_setr_pd(0.0, 1.0, 2.0, 3.0);
    const __m256d four = _mm256_set1_pd(4.0);
    int64_t u = 0;
    for (; u + 4 <= wo; u += 4, fu = _mm256_add_pd(fu, four)) {
        __m256d sx = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(a00, fu), bx), a02);
        __m256d sy = _mm256_add_pd(_mm256_add_pd(_mm256_mul_pd(a10, fu), by), a12);
        sx = _mm256_min_pd(_mm256_max_pd(sx, lo), hi);
        sy = _mm256_min_pd(_mm256_max_pd(sy, lo), hi);
        sx = _mm256_floor_pd(_mm256_add_pd(_mm256_mul_pd(sx, k256), half));
        sy = _mm256_floor_pd(_mm256_add_pd(_mm256_mul_pd(sy, k256), half));
        _mm_storeu_si128((__m128i *)(qx + u), _mm256_cvttpd_epi32(sx));
        _mm_storeu_si128((__m128i *)(qy + u), _mm256_cvttpd_epi32(sy));
    }
    for (; u < wo; u++) {
        double fu1 = (double)(int32_t)u;
        qx[u] = fr_quantize((a[0] * fu1 + a[1] * fv) + a[2]);
        qy[u] = fr_quantize((a[3] * fu1 + a[4] * fv) + a[5]);
    }
}
#endif

/* NumPy's "reflect": ... 2 1 | 0 1 .. n-1 | n-2 ... */
FR_AUG_INLINE int64_t fr_reflect(int64_t i, int64_t n)
{
    if (n == 1)
        return 0;
    int64_t period = 2 * (n - 1);
    i %= period;
    if (i < 0)
        i += period;
    return i >= n ? period - i : i;
}

/* index of tap i along an axis of n: reflected (border 1), clamped (2, edge), or -1 outside
 * (0, constant border) */
FR_AUG_INLINE int64_t fr_tap(int64_t i, int64_t n, int border)
{
    if (border == 1)
        return fr_reflect(i, n);
    if (border == 2)
        return i < 0 ? 0 : (i >= n ? n - 1 : i);
    return (i >= 0 && i < n) ? i : -1;
}

typedef struct {
    const void *x;
    const double *mats;
    void *out;
    const uint8_t *fill;  /* one value of the dtype (nearest) */
    int64_t M, H, W, C, Ho, Wo, itemsize;
    int border;
    int32_t fill_u8;
    float fill_f32;
} fr_affine_args;

/* one uint8 output pixel at (qx, qy), any border, any C */
FR_AUG_INLINE void fr_bilinear_u8_pixel(const fr_affine_args *g, const uint8_t *img, int32_t qx,
                                        int32_t qy, uint8_t *d)
{
    const int64_t H = g->H, W = g->W, C = g->C;
    int64_t x0 = qx >> 8, y0 = qy >> 8;
    int32_t fx = qx & 255, fy = qy & 255, gx = 256 - fx, gy = 256 - fy;
    if (x0 >= 0 && y0 >= 0 && x0 + 1 < W && y0 + 1 < H) {
        const uint8_t *p0 = img + (y0 * W + x0) * C, *p1 = p0 + W * C;
        for (int64_t k = 0; k < C; k++) {
            int32_t top = (int32_t)p0[k] * gx + (int32_t)p0[k + C] * fx;
            int32_t bot = (int32_t)p1[k] * gx + (int32_t)p1[k + C] * fx;
            d[k] = (uint8_t)((top * gy + bot * fy + 32768) >> 16);
        }
        return;
    }
    int64_t ix0 = fr_tap(x0, W, g->border), ix1 = fr_tap(x0 + 1, W, g->border);
    int64_t iy0 = fr_tap(y0, H, g->border), iy1 = fr_tap(y0 + 1, H, g->border);
    const int32_t f = g->fill_u8;
    for (int64_t k = 0; k < C; k++) {
        int32_t v00 = (iy0 >= 0 && ix0 >= 0) ? img[(iy0 * W + ix0) * C + k] : f;
        int32_t v01 = (iy0 >= 0 && ix1 >= 0) ? img[(iy0 * W + ix1) * C + k] : f;
        int32_t v10 = (iy1 >= 0 && ix0 >= 0) ? img[(iy1 * W + ix0) * C + k] : f;
        int32_t v11 = (iy1 >= 0 && ix1 >= 0) ? img[(iy1 * W + ix1) * C + k] : f;
        int32_t top = v00 * gx + v01 * fx, bot = v10 * gx + v11 * fx;
        d[k] = (uint8_t)((top * gy + bot * fy + 32768) >> 16);
    }
}

#ifdef FR_AUG_X86
/* Eight uint8 RGB output pixels (qx, qy: their quantized source points, all of whose four taps
 * are inside the image) into d[0 .. 24).  img_bytes_left: bytes readable from img (a 32-bit
 * gather reads the 3 bytes of a pixel and one more); the caller checked that every gather stays
 * inside.  Returns nothing; exact:
 *
 *   top = v00 gx + v01 fx <= 255 * 256 fits 16 bits, so each channel is a 16-bit lane (R and B
 *   of a pixel in the even lanes, G in the odd ones) and the products are exact mod 2**16;
 *   value = (top gy + bot fy + 32768) >> 16 with top = 256 th + tl (bytes), bot likewise:
 *   top gy + bot fy = 256 h + l, h = th gy + bh fy, l = tl gy + bl fy (both <= 255 * 256), and
 *   value = (h + (l >> 8) + 128) >> 8, where h + (l >> 8) <= (top gy + bot fy) / 256 <= 65280:
 *   no 16-bit lane overflows. */
FR_AUG_AVX2 FR_AUG_INLINE void fr_bilinear8_rgb_avx2(const uint8_t *img, int64_t W, __m256i qx,
                                                     __m256i qy, uint8_t *d)
{
    const __m256i m8 = _mm256_set1_epi32(0x00FF00FF);
    const __m256i c256 = _mm256_set1_epi32(256);
    __m256i x0 = _mm256_srai_epi32(qx, 8), y0 = _mm256_srai_epi32(qy, 8);
    __m256i fx = _mm256_and_si256(qx, _mm256_set1_epi32(255));
    __m256i fy = _mm256_and_si256(qy, _mm256_set1_epi32(255));
    __m256i gx = _mm256_sub_epi32(c256, fx), gy = _mm256_sub_epi32(c256, fy);
    /* weights in both 16-bit halves of each lane */
    fx = _mm256_or_si256(fx, _mm256_slli_epi32(fx, 16));
    gx = _mm256_or_si256(gx, _mm256_slli_epi32(gx, 16));
    fy = _mm256_or_si256(fy, _mm256_slli_epi32(fy, 16));
    gy = _mm256_or_si256(gy, _mm256_slli_epi32(gy, 16));
    __m256i o = _mm256_mullo_epi32(_mm256_add_epi32(_mm256_mullo_epi32(y0, _mm256_set1_epi32(
        (int)W)), x0), _mm256_set1_epi32(3));
    const __m256i three = _mm256_set1_epi32(3), row = _mm256_set1_epi32((int)(3 * W));
    const int *base = (const int *)img;
    __m256i o2 = _mm256_add_epi32(o, row);
    __m256i v00 = _mm256_i32gather_epi32(base, o, 1);
    __m256i v01 = _mm256_i32gather_epi32(base, _mm256_add_epi32(o, three), 1);
    __m256i v10 = _mm256_i32gather_epi32(base, o2, 1);
    __m256i v11 = _mm256_i32gather_epi32(base, _mm256_add_epi32(o2, three), 1);
    __m256i r[2];
    for (int odd = 0; odd < 2; odd++) {
        __m256i a00 = odd ? _mm256_srli_epi32(v00, 8) : v00;
        __m256i a01 = odd ? _mm256_srli_epi32(v01, 8) : v01;
        __m256i a10 = odd ? _mm256_srli_epi32(v10, 8) : v10;
        __m256i a11 = odd ? _mm256_srli_epi32(v11, 8) : v11;
        a00 = _mm256_and_si256(a00, m8), a01 = _mm256_and_si256(a01, m8);
        a10 = _mm256_and_si256(a10, m8), a11 = _mm256_and_si256(a11, m8);
        __m256i top = _mm256_add_epi16(_mm256_mullo_epi16(a00, gx), _mm256_mullo_epi16(a01, fx));
        __m256i bot = _mm256_add_epi16(_mm256_mullo_epi16(a10, gx), _mm256_mullo_epi16(a11, fx));
        __m256i th = _mm256_srli_epi16(top, 8), tl = _mm256_and_si256(top, m8);
        __m256i bh = _mm256_srli_epi16(bot, 8), bl = _mm256_and_si256(bot, m8);
        __m256i h = _mm256_add_epi16(_mm256_mullo_epi16(th, gy), _mm256_mullo_epi16(bh, fy));
        __m256i l = _mm256_add_epi16(_mm256_mullo_epi16(tl, gy), _mm256_mullo_epi16(bl, fy));
        __m256i s = _mm256_add_epi16(_mm256_add_epi16(h, _mm256_srli_epi16(l, 8)),
                                     _mm256_set1_epi16(128));
        r[odd] = _mm256_srli_epi16(s, 8);
    }
    /* bytes R G B x per lane, then the 8 pixels' 24 bytes packed */
    __m256i px = _mm256_or_si256(r[0], _mm256_slli_epi32(r[1], 8));
    const __m256i pack = _mm256_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -128, -128,
                                          -128, -128, 0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14,
                                          -128, -128, -128, -128);
    px = _mm256_shuffle_epi8(px, pack);
    px = _mm256_permutevar8x32_epi32(px, _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 3, 7));
    _mm_storeu_si128((__m128i *)d, _mm256_castsi256_si128(px));
    _mm_storel_epi64((__m128i *)(d + 16), _mm256_extracti128_si256(px, 1));
}

/* One row of uint8 RGB output: vector groups of 8 pixels where all taps are inside and every
 * gather stays inside the readable bytes, the per-pixel path elsewhere. */
FR_AUG_AVX2 static void fr_affine_u8_rgb_row_avx2(const fr_affine_args *g, const uint8_t *img,
                                                  int64_t readable, const int32_t *qx,
                                                  const int32_t *qy, uint8_t *d)
{
    const int64_t W = g->W, H = g->H, wo = g->Wo;
    const __m256i wm1 = _mm256_set1_epi32((int)(W - 1)), hm1 = _mm256_set1_epi32((int)(H - 1));
    const __m256i neg1 = _mm256_set1_epi32(-1);
    /* a gather at byte o reads o .. o+3: the bottom-right tap reads up to 3 (p + W + 1) + 3,
     * p = y0 W + x0; safe while that is < readable */
    const __m256i plim = _mm256_set1_epi32((int)((readable - 4) / 3 - W - 1));
    int64_t u = 0;
    for (; u + 8 <= wo; u += 8) {
        __m256i vx = _mm256_loadu_si256((const __m256i *)(qx + u));
        __m256i vy = _mm256_loadu_si256((const __m256i *)(qy + u));
        __m256i x0 = _mm256_srai_epi32(vx, 8), y0 = _mm256_srai_epi32(vy, 8);
        __m256i ok = _mm256_and_si256(
            _mm256_and_si256(_mm256_cmpgt_epi32(x0, neg1), _mm256_cmpgt_epi32(wm1, x0)),
            _mm256_and_si256(_mm256_cmpgt_epi32(y0, neg1), _mm256_cmpgt_epi32(hm1, y0)));
        __m256i p = _mm256_add_epi32(_mm256_mullo_epi32(y0, _mm256_set1_epi32((int)W)), x0);
        ok = _mm256_andnot_si256(_mm256_cmpgt_epi32(p, plim), ok);
        if (_mm256_movemask_epi8(ok) == -1) {
            fr_bilinear8_rgb_avx2(img, W, vx, vy, d + 3 * u);
            continue;
        }
        for (int64_t k = u; k < u + 8; k++)
            fr_bilinear_u8_pixel(g, img, qx[k], qy[k], d + 3 * k);
    }
    for (; u < wo; u++)
        fr_bilinear_u8_pixel(g, img, qx[u], qy[u], d + 3 * u);
}
#endif

FR_AUG_INLINE void fr_bilinear_f32_pixel(const fr_affine_args *g, const float *img, int32_t qx,
                                         int32_t qy, float *d)
{
    const int64_t H = g->H, W = g->W, C = g->C;
    const float inv = 1.0f / 256.0f;
    int64_t x0 = qx >> 8, y0 = qy >> 8;
    int32_t fx = qx & 255, fy = qy & 255;
    float wx0 = (float)(256 - fx) * inv, wx1 = (float)fx * inv;
    float wy0 = (float)(256 - fy) * inv, wy1 = (float)fy * inv;
    int64_t ix0 = fr_tap(x0, W, g->border), ix1 = fr_tap(x0 + 1, W, g->border);
    int64_t iy0 = fr_tap(y0, H, g->border), iy1 = fr_tap(y0 + 1, H, g->border);
    const float f = g->fill_f32;
    for (int64_t k = 0; k < C; k++) {
        float v00 = (iy0 >= 0 && ix0 >= 0) ? img[(iy0 * W + ix0) * C + k] : f;
        float top, bot;
        if (fx == 0) {
            top = v00;
        } else {
            float v01 = (iy0 >= 0 && ix1 >= 0) ? img[(iy0 * W + ix1) * C + k] : f;
            top = v00 * wx0 + v01 * wx1;
        }
        if (fy == 0) {
            d[k] = top;
            continue;
        }
        float v10 = (iy1 >= 0 && ix0 >= 0) ? img[(iy1 * W + ix0) * C + k] : f;
        if (fx == 0) {
            bot = v10;
        } else {
            float v11 = (iy1 >= 0 && ix1 >= 0) ? img[(iy1 * W + ix1) * C + k] : f;
            bot = v10 * wx0 + v11 * wx1;
        }
        d[k] = top * wy0 + bot * wy1;
    }
}

/* mode 0: uint8 bilinear, 1: float32 bilinear, 2: nearest (any itemsize) */
typedef struct {
    const fr_affine_args *g;
    int mode, vec_rgb;
    int64_t img_bytes, total_bytes;
    void (*coords)(const double *, int64_t, int64_t, int32_t *, int32_t *);
    /* nearest: the fill value repeated over one pixel (pixels of up to 16 bytes) */
    _Alignas(16) uint8_t fill_pixel[16];
} fr_affine_job;

/* Nearest neighbour: the source pixel of output point (qx, qy) (quantized, 1/256 pixel) is
 * (round-half-up qx / 256, ... qy) through the border rule; its index, or -1 (fill). */
FR_AUG_INLINE int64_t fr_nearest_src(const fr_affine_args *g, int32_t qx, int32_t qy)
{
    const int64_t ix = fr_tap(((int64_t)qx + 128) >> 8, g->W, g->border);
    const int64_t iy = fr_tap(((int64_t)qy + 128) >> 8, g->H, g->border);
    return (ix >= 0 && iy >= 0) ? iy * g->W + ix : -1;
}

/* one nearest row of P-byte pixels, P a constant where inlined: fixed-size copies, not a
 * memcpy call per pixel (measured: 224x224 RGB, the per-pixel call cost 6x the row) */
FR_AUG_INLINE void fr_nearest_row_p(const fr_affine_job *j, const uint8_t *img,
                                    const int32_t *qx, const int32_t *qy, int64_t u0,
                                    uint8_t *d, const int64_t P)
{
    const fr_affine_args *g = j->g;
    for (int64_t u = u0; u < g->Wo; u++) {
        const int64_t s = fr_nearest_src(g, qx[u], qy[u]);
        memcpy(d + u * P, s >= 0 ? img + s * P : j->fill_pixel, (size_t)P);
    }
}

static void fr_nearest_row(const fr_affine_job *j, const uint8_t *img, const int32_t *qx,
                           const int32_t *qy, int64_t u0, uint8_t *d)
{
    const fr_affine_args *g = j->g;
    const int64_t isz = g->itemsize, pix = g->C * isz;
    switch (pix) {
    case 1: fr_nearest_row_p(j, img, qx, qy, u0, d, 1); return;
    case 3: fr_nearest_row_p(j, img, qx, qy, u0, d, 3); return;
    case 4: fr_nearest_row_p(j, img, qx, qy, u0, d, 4); return;
    case 12: fr_nearest_row_p(j, img, qx, qy, u0, d, 12); return;
    default:
        break;
    }
    for (int64_t u = u0; u < g->Wo; u++) {
        const int64_t s = fr_nearest_src(g, qx[u], qy[u]);
        uint8_t *dp = d + u * pix;
        if (s >= 0) {
            memcpy(dp, img + s * pix, (size_t)pix);
        } else {
            for (int64_t k = 0; k < g->C; k++)
                memcpy(dp + k * isz, g->fill, (size_t)isz);
        }
    }
}

#ifdef FR_AUG_X86
/* One nearest row of 3-byte pixels, constant border: 8 pixels per step, one masked 32-bit
 * gather (points outside the image keep the fill pixel) and the bilinear path's packing; the
 * source index is the scalar one (fr_nearest_src) lane by lane, so the bits are the same.
 * readable: bytes readable from img (a gather reads a pixel's 3 bytes and one more); a group
 * that would read past them goes through the scalar row. */
FR_AUG_AVX2 static void fr_nearest_rgb_row_avx2(const fr_affine_job *j, const uint8_t *img,
                                                int64_t readable, const int32_t *qx,
                                                const int32_t *qy, uint8_t *d)
{
    const fr_affine_args *g = j->g;
    const int64_t wo = g->Wo;
    const __m256i wv = _mm256_set1_epi32((int)g->W), hv = _mm256_set1_epi32((int)g->H);
    const __m256i neg1 = _mm256_set1_epi32(-1), c128 = _mm256_set1_epi32(128);
    const __m256i three = _mm256_set1_epi32(3);
    const __m256i olim = _mm256_set1_epi32((int)(readable - 4));
    int32_t fp;
    memcpy(&fp, j->fill_pixel, 4);
    const __m256i fillv = _mm256_set1_epi32(fp);
    const int *base = (const int *)img;
    const __m256i pack = _mm256_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -128, -128,
                                          -128, -128, 0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14,
                                          -128, -128, -128, -128);
    const __m256i perm = _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 3, 7);
    int64_t u = 0;
    for (; u + 8 <= wo; u += 8) {
        /* qx + 128 cannot overflow: |q| <= 2**28 */
        const __m256i ix = _mm256_srai_epi32(
            _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(qx + u)), c128), 8);
        const __m256i iy = _mm256_srai_epi32(
            _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(qy + u)), c128), 8);
        const __m256i ok = _mm256_and_si256(
            _mm256_and_si256(_mm256_cmpgt_epi32(ix, neg1), _mm256_cmpgt_epi32(wv, ix)),
            _mm256_and_si256(_mm256_cmpgt_epi32(iy, neg1), _mm256_cmpgt_epi32(hv, iy)));
        /* lanes outside the image may wrap here: they are masked out of the gather */
        const __m256i o = _mm256_mullo_epi32(
            _mm256_add_epi32(_mm256_mullo_epi32(iy, wv), ix), three);
        if (!_mm256_testz_si256(ok, _mm256_cmpgt_epi32(o, olim))) {
            fr_nearest_row_p(j, img, qx, qy, u, d, 3);   /* the rest of the row */
            return;
        }
        __m256i px = _mm256_mask_i32gather_epi32(fillv, base, o, ok, 1);
        px = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(px, pack), perm);
        _mm_storeu_si128((__m128i *)(d + 3 * u), _mm256_castsi256_si128(px));
        _mm_storel_epi64((__m128i *)(d + 3 * u + 16), _mm256_extracti128_si256(px, 1));
    }
    if (u < wo)
        fr_nearest_row_p(j, img, qx, qy, u, d, 3);
}
#endif

/* Output row r (image r / Ho) of fr_aug_affine; q: 2 Wo int32 of scratch. */
static void fr_affine_row(const fr_affine_job *j, int64_t r, int32_t *q)
{
    const fr_affine_args *g = j->g;
    const int64_t M = g->M, C = g->C, Ho = g->Ho, Wo = g->Wo;
    const int64_t pix = C * g->itemsize, img_bytes = j->img_bytes;
    int64_t m = r / Ho, v = r - m * Ho;
    int32_t *qx = q, *qy = q + Wo;
    j->coords(g->mats + 6 * m, v, Wo, qx, qy);
    const uint8_t *img = (const uint8_t *)g->x + m * img_bytes;
    uint8_t *d = (uint8_t *)g->out + r * Wo * pix;
    if (m + 1 < M) {
        /* the taps of a rotated row cross many source rows, which no hardware prefetcher
         * follows: each output row prefetches its share of the next image (measured: 64
         * images 224x224x3 not in cache, 2.2x faster) */
        int64_t per = (img_bytes + Ho - 1) / Ho, lo = v * per;
        int64_t hi = lo + per < img_bytes ? lo + per : img_bytes;
        for (int64_t b = lo & ~(int64_t)63; b < hi; b += 64)
            FR_PREFETCH(img + img_bytes + b);
    }
    if (j->mode == 0) {
#ifdef FR_AUG_X86
        if (j->vec_rgb) {
            fr_affine_u8_rgb_row_avx2(g, img, j->total_bytes - m * img_bytes, qx, qy, d);
            return;
        }
#endif
        for (int64_t u = 0; u < Wo; u++)
            fr_bilinear_u8_pixel(g, img, qx[u], qy[u], d + u * C);
    } else if (j->mode == 1) {
        for (int64_t u = 0; u < Wo; u++)
            fr_bilinear_f32_pixel(g, (const float *)img, qx[u], qy[u], (float *)d + u * C);
    } else {
#ifdef FR_AUG_X86
        if (j->vec_rgb) {
            fr_nearest_rgb_row_avx2(j, img, j->total_bytes - m * img_bytes, qx, qy, d);
            return;
        }
#endif
        fr_nearest_row(j, img, qx, qy, 0, d);
    }
}

/* mode 0: uint8 bilinear, 1: float32 bilinear, 2: nearest (any itemsize) */
static int fr_aug_affine(const fr_affine_args *g, int mode)
{
    const int64_t M = g->M, H = g->H, W = g->W, C = g->C, Ho = g->Ho, Wo = g->Wo;
    if (M < 0 || H < 0 || W < 0 || C < 0 || Ho < 0 || Wo < 0 || g->itemsize <= 0)
        return FR_ERR_SIZE;
    if (M == 0 || Ho == 0 || Wo == 0 || C == 0)
        return FR_OK;
    if (H == 0 || W == 0)
        return FR_ERR_SIZE;
    if (!g->x || !g->mats || !g->out || (mode == 2 && !g->fill))
        return FR_ERR_NULL;
    const int64_t pix = C * g->itemsize;
    const int64_t img_bytes = H * W * pix, total_bytes = M * img_bytes;
    const int64_t rows = M * Ho;
    int status = FR_OK;
    int avx2 = fr_aug_avx2();
    fr_affine_job job = {g, mode, 0, img_bytes, total_bytes, fr_row_coords_portable, {0}};
    if (mode == 2 && pix <= 16)
        for (int64_t k = 0; k < C; k++)
            memcpy(job.fill_pixel + k * g->itemsize, g->fill, (size_t)g->itemsize);
#ifdef FR_AUG_X86
    if (avx2)
        job.coords = fr_row_coords_avx2;
    /* the gather paths index bytes with int32; nearest: 3-byte pixels, constant border */
    job.vec_rgb = avx2 && total_bytes < ((int64_t)1 << 31) - 64
                  && ((mode == 0 && C == 3)
                      || (mode == 2 && pix == 3 && g->border == 0 && H < ((int64_t)1 << 30)
                          && W < ((int64_t)1 << 30)));
#else
    (void)avx2;
#endif
    const int nt = fr_region_threads(rows);
    if (nt <= 1) {
        int32_t *q = (int32_t *)malloc(2 * (size_t)Wo * sizeof(int32_t));
        if (!q)
            return FR_ERR_ALLOC;
        for (int64_t r = 0; r < rows; r++)
            fr_affine_row(&job, r, q);
        free(q);
        return FR_OK;
    }
#pragma omp parallel num_threads(nt)
    {
        int32_t *q = (int32_t *)malloc(2 * (size_t)Wo * sizeof(int32_t));
        if (!q) {
#pragma omp atomic write
            status = FR_ERR_ALLOC;
        }
#pragma omp for schedule(guided, 8)
        for (int64_t r = 0; r < rows; r++) {
            if (q)
                fr_affine_row(&job, r, q);
        }
        free(q);
    }
    return status;
}

int fr_aug_affine_u8(const uint8_t *x, const double *mats, int border, int fill, uint8_t *out,
                     int64_t M, int64_t H, int64_t W, int64_t C, int64_t Ho, int64_t Wo)
{
    fr_affine_args g = {x, mats, out, NULL, M, H, W, C, Ho, Wo, 1, border, fill, 0.0f};
    return fr_aug_affine(&g, 0);
}

int fr_aug_affine_f32(const float *x, const double *mats, int border, float fill, float *out,
                      int64_t M, int64_t H, int64_t W, int64_t C, int64_t Ho, int64_t Wo)
{
    fr_affine_args g = {x, mats, out, NULL, M, H, W, C, Ho, Wo, 4, border, 0, fill};
    return fr_aug_affine(&g, 1);
}

int fr_aug_affine_nearest(const void *x, const double *mats, int border, const void *fill,
                          void *out, int64_t M, int64_t H, int64_t W, int64_t C, int64_t Ho,
                          int64_t Wo, int64_t itemsize)
{
    fr_affine_args g = {x, mats, out, (const uint8_t *)fill, M, H, W, C, Ho, Wo, itemsize,
                        border, 0, 0.0f};
    return fr_aug_affine(&g, 2);
}

/* ------------------------------------------------------------------ Gaussian noise */

#define FR_F32(v) ((float)(v))
#define FR_SQRT2 FR_F32(1.41421356)
#define FR_LN2 FR_F32(0.693147180559945)
#define FR_TWO_PI_2M24 FR_F32(2.0 * 3.141592653589793 / 16777216.0)
#define FR_MAGIC 12582912.0f

FR_AUG_INLINE uint32_t fr_f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

FR_AUG_INLINE float fr_u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* c ? a : b, bitwise (c 0 or 1) */
FR_AUG_INLINE float fr_self(uint32_t c, float a, float b)
{
    uint32_t m = 0u - c;
    return fr_u2f((fr_f2u(a) & m) | (fr_f2u(b) & ~m));
}

/* fastreg.reference.augment.box_muller: two float32 normals from words w0, w1 */
FR_AUG_INLINE void fr_box_muller(uint32_t w0, uint32_t w1, float *z0, float *z1)
{
    const float L3 = FR_F32(1.0 / 3.0), L5 = FR_F32(1.0 / 5.0), L7 = FR_F32(1.0 / 7.0),
                L9 = FR_F32(1.0 / 9.0);
    const float S3 = FR_F32(-1.0 / 6.0), S5 = FR_F32(1.0 / 120.0), S7 = FR_F32(-1.0 / 5040.0),
                S9 = FR_F32(1.0 / 362880.0);
    const float C2 = FR_F32(-0.5), C4 = FR_F32(1.0 / 24.0), C6 = FR_F32(-1.0 / 720.0),
                C8 = FR_F32(1.0 / 40320.0), C10 = FR_F32(-1.0 / 3628800.0);
    float a = (float)(int32_t)((w0 >> 8) + 1u);  /* in [1, 2**24]: exact */
    uint32_t bits = fr_f2u(a);
    int32_t e = (int32_t)(bits >> 23) - 127;
    float m = fr_u2f((bits & 0x7FFFFFu) | 0x3F800000u);
    uint32_t big = m > FR_SQRT2;
    m = fr_self(big, m * 0.5f, m);
    e += (int32_t)big;
    float f = (m - 1.0f) / (m + 1.0f);
    float f2 = f * f;
    float p = L7 + f2 * L9;
    p = L5 + f2 * p;
    p = L3 + f2 * p;
    p = 1.0f + f2 * p;
    float lnu = (float)(e - 24) * FR_LN2 + 2.0f * f * p;
    float r = sqrtf(-2.0f * lnu);
    int32_t v = (int32_t)(w1 >> 8);
    int32_t k = (v + (1 << 21)) >> 22;
    int32_t d = v - k * (1 << 22);
    float phi = (float)d * FR_TWO_PI_2M24;
    float p2 = phi * phi;
    float s = S7 + p2 * S9;
    s = S5 + p2 * s;
    s = S3 + p2 * s;
    s = phi + phi * (p2 * s);
    float c = C8 + p2 * C10;
    c = C6 + p2 * c;
    c = C4 + p2 * c;
    c = C2 + p2 * c;
    c = 1.0f + p2 * c;
    uint32_t q = (uint32_t)k & 3u;
    /* quadrant q: (cos, sin) = (c, s), (-s, c), (-c, -s), (s, -c) */
    uint32_t swap = q & 1u;
    float ct = fr_self(swap, s, c), st = fr_self(swap, c, s);
    ct = fr_u2f(fr_f2u(ct) ^ (((q + 1u) & 2u) << 30));
    st = fr_u2f(fr_f2u(st) ^ ((q & 2u) << 30));
    *z0 = r * ct;
    *z1 = r * st;
}

/* clip to [0, 255], round half to even */
FR_AUG_INLINE uint8_t fr_finish_u8(float y)
{
    y = y > 0.0f ? y : 0.0f;
    y = y < 255.0f ? y : 255.0f;
    return (uint8_t)(int32_t)((y + FR_MAGIC) - FR_MAGIC);
}

/* values [0, count) of a tile: z from word pairs w[2p], w[2p+1]; y = x + std z */
FR_AUG_INLINE void fr_noise_elems(const uint32_t *w, const void *xv, void *ov, size_t count,
                                  float std, int u8, float *z)
{
    size_t np = (count + 1) / 2;
    for (size_t p = 0; p < np; p++) {
        float z0, z1;
        fr_box_muller(w[2 * p], w[2 * p + 1], &z0, &z1);
        z[2 * p] = z0;
        z[2 * p + 1] = z1;
    }
    if (u8) {
        const uint8_t *x = (const uint8_t *)xv;
        uint8_t *o = (uint8_t *)ov;
        for (size_t j = 0; j < count; j++)
            o[j] = fr_finish_u8((float)x[j] + std * z[j]);
    } else {
        const float *x = (const float *)xv;
        float *o = (float *)ov;
        for (size_t j = 0; j < count; j++)
            o[j] = x[j] + std * z[j];
    }
}

static void fr_noise_elems_u8(const uint32_t *w, const void *x, void *o, size_t n, float s,
                              float *z)
{
    fr_noise_elems(w, x, o, n, s, 1, z);
}

static void fr_noise_elems_f32(const uint32_t *w, const void *x, void *o, size_t n, float s,
                               float *z)
{
    fr_noise_elems(w, x, o, n, s, 0, z);
}

#ifdef FR_AUG_X86
/* fr_box_muller on 8 pairs: the same float32 operations in the same order (max/min, blend and
 * sign flips are exact selections) */
FR_AUG_AVX2 FR_AUG_INLINE void fr_box_muller8_avx2(__m256i w0, __m256i w1, __m256 *z0,
                                                   __m256 *z1)
{
#define FR_PS(v) _mm256_set1_ps(FR_F32(v))
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256i ai = _mm256_add_epi32(_mm256_srli_epi32(w0, 8), _mm256_set1_epi32(1));
    __m256i bits = _mm256_castps_si256(_mm256_cvtepi32_ps(ai));
    __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127));
    __m256 m = _mm256_castsi256_ps(_mm256_or_si256(
        _mm256_and_si256(bits, _mm256_set1_epi32(0x7FFFFF)), _mm256_set1_epi32(0x3F800000)));
    __m256 big = _mm256_cmp_ps(m, _mm256_set1_ps(FR_SQRT2), _CMP_GT_OQ);
    m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), big);
    e = _mm256_sub_epi32(e, _mm256_castps_si256(big));   /* big: all ones = -1 */
    __m256 f = _mm256_div_ps(_mm256_sub_ps(m, one), _mm256_add_ps(m, one));
    __m256 f2 = _mm256_mul_ps(f, f);
    __m256 p = _mm256_add_ps(FR_PS(1.0 / 7.0), _mm256_mul_ps(f2, FR_PS(1.0 / 9.0)));
    p = _mm256_add_ps(FR_PS(1.0 / 5.0), _mm256_mul_ps(f2, p));
    p = _mm256_add_ps(FR_PS(1.0 / 3.0), _mm256_mul_ps(f2, p));
    p = _mm256_add_ps(one, _mm256_mul_ps(f2, p));
    __m256 ef = _mm256_cvtepi32_ps(_mm256_sub_epi32(e, _mm256_set1_epi32(24)));
    __m256 lnu = _mm256_add_ps(_mm256_mul_ps(ef, _mm256_set1_ps(FR_LN2)),
                               _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(2.0f), f), p));
    __m256 r = _mm256_sqrt_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), lnu));
    __m256i v = _mm256_srli_epi32(w1, 8);
    __m256i k = _mm256_srai_epi32(_mm256_add_epi32(v, _mm256_set1_epi32(1 << 21)), 22);
    __m256i d = _mm256_sub_epi32(v, _mm256_slli_epi32(k, 22));
    __m256 phi = _mm256_mul_ps(_mm256_cvtepi32_ps(d), _mm256_set1_ps(FR_TWO_PI_2M24));
    __m256 p2 = _mm256_mul_ps(phi, phi);
    __m256 sn = _mm256_add_ps(FR_PS(-1.0 / 5040.0), _mm256_mul_ps(p2, FR_PS(1.0 / 362880.0)));
    sn = _mm256_add_ps(FR_PS(1.0 / 120.0), _mm256_mul_ps(p2, sn));
    sn = _mm256_add_ps(FR_PS(-1.0 / 6.0), _mm256_mul_ps(p2, sn));
    sn = _mm256_add_ps(phi, _mm256_mul_ps(phi, _mm256_mul_ps(p2, sn)));
    __m256 cs = _mm256_add_ps(FR_PS(1.0 / 40320.0), _mm256_mul_ps(p2, FR_PS(-1.0 / 3628800.0)));
    cs = _mm256_add_ps(FR_PS(-1.0 / 720.0), _mm256_mul_ps(p2, cs));
    cs = _mm256_add_ps(FR_PS(1.0 / 24.0), _mm256_mul_ps(p2, cs));
    cs = _mm256_add_ps(FR_PS(-0.5), _mm256_mul_ps(p2, cs));
    cs = _mm256_add_ps(one, _mm256_mul_ps(p2, cs));
    __m256i q = _mm256_and_si256(k, _mm256_set1_epi32(3));
    __m256 swap = _mm256_castsi256_ps(_mm256_cmpeq_epi32(
        _mm256_and_si256(q, _mm256_set1_epi32(1)), _mm256_set1_epi32(1)));
    __m256 ct = _mm256_blendv_ps(cs, sn, swap), st = _mm256_blendv_ps(sn, cs, swap);
    const __m256i two = _mm256_set1_epi32(2);
    __m256i sc = _mm256_slli_epi32(_mm256_and_si256(_mm256_add_epi32(q, _mm256_set1_epi32(1)),
                                                    two), 30);
    __m256i ss = _mm256_slli_epi32(_mm256_and_si256(q, two), 30);
    ct = _mm256_xor_ps(ct, _mm256_castsi256_ps(sc));
    st = _mm256_xor_ps(st, _mm256_castsi256_ps(ss));
    *z0 = _mm256_mul_ps(r, ct);
    *z1 = _mm256_mul_ps(r, st);
#undef FR_PS
}

/* values [0, count) of a tile, 16 per step: words w[0 .. 16) are the pairs of values 0 .. 15;
 * shuffle_ps takes the pairs in the order (0 1 4 5 | 2 3 6 7), which unpacklo / unpackhi of
 * (cos, sin) turn back into values 0 .. 7 and 8 .. 15 without crossing 128-bit lanes. */
FR_AUG_AVX2 FR_AUG_INLINE void fr_noise_tile_avx2(const uint32_t *w, const void *xv, void *ov,
                                                  size_t count, float std, int u8, float *z)
{
    const __m256 sd = _mm256_set1_ps(std);
    size_t j = 0;
    for (; j + 16 <= count; j += 16) {
        __m256 a = _mm256_loadu_ps((const float *)(w + j));
        __m256 b = _mm256_loadu_ps((const float *)(w + j + 8));
        __m256i w0 = _mm256_castps_si256(_mm256_shuffle_ps(a, b, 0x88));
        __m256i w1 = _mm256_castps_si256(_mm256_shuffle_ps(a, b, 0xDD));
        __m256 z0, z1;
        fr_box_muller8_avx2(w0, w1, &z0, &z1);
        __m256 za = _mm256_unpacklo_ps(z0, z1), zb = _mm256_unpackhi_ps(z0, z1);
        if (u8) {
            const uint8_t *x = (const uint8_t *)xv + j;
            __m128i xb = _mm_loadu_si128((const __m128i *)x);
            __m256 xa = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(xb));
            __m256 xc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(xb, 8)));
            const __m256 zero = _mm256_setzero_ps(), top = _mm256_set1_ps(255.0f);
            const __m256 magic = _mm256_set1_ps(FR_MAGIC);
            __m256 ya = _mm256_add_ps(xa, _mm256_mul_ps(sd, za));
            __m256 yb = _mm256_add_ps(xc, _mm256_mul_ps(sd, zb));
            ya = _mm256_min_ps(_mm256_max_ps(ya, zero), top);
            yb = _mm256_min_ps(_mm256_max_ps(yb, zero), top);
            ya = _mm256_sub_ps(_mm256_add_ps(ya, magic), magic);
            yb = _mm256_sub_ps(_mm256_add_ps(yb, magic), magic);
            __m256i i16 = _mm256_packus_epi32(_mm256_cvttps_epi32(ya), _mm256_cvttps_epi32(yb));
            i16 = _mm256_permute4x64_epi64(i16, 0xD8);
            _mm_storeu_si128((__m128i *)((uint8_t *)ov + j),
                             _mm_packus_epi16(_mm256_castsi256_si128(i16),
                                              _mm256_extracti128_si256(i16, 1)));
        } else {
            const float *x = (const float *)xv + j;
            float *o = (float *)ov + j;
            _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(x), _mm256_mul_ps(sd, za)));
            _mm256_storeu_ps(o + 8, _mm256_add_ps(_mm256_loadu_ps(x + 8), _mm256_mul_ps(sd, zb)));
        }
    }
    if (j < count)
        fr_noise_elems(w + j, u8 ? (const void *)((const uint8_t *)xv + j)
                                  : (const void *)((const float *)xv + j),
                       u8 ? (void *)((uint8_t *)ov + j) : (void *)((float *)ov + j), count - j,
                       std, u8, z);
}

FR_AUG_AVX2 static void fr_noise_elems_u8_avx2(const uint32_t *w, const void *x, void *o,
                                               size_t n, float s, float *z)
{
    fr_noise_tile_avx2(w, x, o, n, s, 1, z);
}

FR_AUG_AVX2 static void fr_noise_elems_f32_avx2(const uint32_t *w, const void *x, void *o,
                                                size_t n, float s, float *z)
{
    fr_noise_tile_avx2(w, x, o, n, s, 0, z);
}
#endif

typedef struct {
    const void *x;
    void *out;
    const float *stds;
    uint64_t key, first;
    int64_t L, chunks;
    size_t isz;
    int isa;
    void (*elems)(const uint32_t *, const void *, void *, size_t, float, float *);
} fr_noise_job;

/* Task t of fr_aug_noise: values j0 .. j0 + FR_AUG_NOISE_TILE - 1 of row t / chunks; w and z:
 * FR_AUG_NOISE_TILE + FR_AUG_NOISE_PAD words and FR_AUG_NOISE_TILE + 2 floats of scratch. */
static void fr_noise_task(const fr_noise_job *j, int64_t t, uint32_t *w, float *z)
{
    const int64_t L = j->L;
    int64_t n = t / j->chunks, j0 = (t - n * j->chunks) * FR_AUG_NOISE_TILE;
    size_t count = (size_t)(L - j0 < FR_AUG_NOISE_TILE ? L - j0 : FR_AUG_NOISE_TILE);
    size_t nb = (count + 3) / 4;
    /* word ((first + n) << 32) + j lies in Philox block ((first + n) << 30) + (j >> 2) */
    uint64_t b0 = ((j->first + (uint64_t)n) << 30) + ((uint64_t)j0 >> 2);
#ifdef FR_HAVE_AVX512_KERNELS
    if (j->isa == 2)
        fr_stream_blocks_avx512(j->key, b0, nb, w, NULL);
    else
#endif
#ifdef FR_HAVE_AVX2_KERNELS
    if (j->isa == 1)
        fr_stream_blocks_avx2(j->key, b0, nb, w, NULL);
    else
#endif
        fr_stream_blocks_portable(j->key, b0, nb, w, NULL);
    size_t at = ((size_t)n * (size_t)L + (size_t)j0) * j->isz;
    j->elems(w, (const uint8_t *)j->x + at, (uint8_t *)j->out + at, count, j->stds[n], z);
}

static int fr_aug_noise(const void *x, uint64_t key, uint64_t first, const float *stds, void *out,
                        int64_t N, int64_t L, int u8)
{
    if (N < 0 || L < 0 || L > ((int64_t)1 << 32))
        return FR_ERR_SIZE;
    if (N == 0 || L == 0)
        return FR_OK;
    if (!x || !stds || !out)
        return FR_ERR_NULL;
    const int64_t chunks = (L + FR_AUG_NOISE_TILE - 1) / FR_AUG_NOISE_TILE;
    const int64_t tasks = N * chunks;
    fr_noise_job job = {x, out, stds, key, first, L, chunks, u8 ? 1 : 4, fr_get_isa(),
                        u8 ? fr_noise_elems_u8 : fr_noise_elems_f32};
#ifdef FR_AUG_X86
    if (job.isa >= 1)
        job.elems = u8 ? fr_noise_elems_u8_avx2 : fr_noise_elems_f32_avx2;
#endif
    const int nt = fr_region_threads(tasks);
    if (nt <= 1) {
        _Alignas(64) uint32_t w[FR_AUG_NOISE_TILE + FR_AUG_NOISE_PAD];
        _Alignas(64) float z[FR_AUG_NOISE_TILE + 2];
        for (int64_t t = 0; t < tasks; t++)
            fr_noise_task(&job, t, w, z);
        return FR_OK;
    }
#pragma omp parallel num_threads(nt)
    {
        _Alignas(64) uint32_t w[FR_AUG_NOISE_TILE + FR_AUG_NOISE_PAD];
        _Alignas(64) float z[FR_AUG_NOISE_TILE + 2];
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; t++)
            fr_noise_task(&job, t, w, z);
    }
    return FR_OK;
}

int fr_aug_noise_u8(const uint8_t *x, uint64_t key, uint64_t first, const float *stds,
                    uint8_t *out, int64_t N, int64_t L)
{
    return fr_aug_noise(x, key, first, stds, out, N, L, 1);
}

int fr_aug_noise_f32(const float *x, uint64_t key, uint64_t first, const float *stds, float *out,
                     int64_t N, int64_t L)
{
    return fr_aug_noise(x, key, first, stds, out, N, L, 0);
}

/* ------------------------------------------------------------------ erasing, mixing, pasting */

int fr_aug_erase(const void *x, const int64_t *rects, const void *value, void *out, int64_t M,
                 int64_t H, int64_t W, int64_t C, int64_t itemsize)
{
    if (M < 0 || H < 0 || W < 0 || C < 0 || itemsize <= 0)
        return FR_ERR_SIZE;
    if (M == 0 || H == 0 || W == 0 || C == 0)
        return FR_OK;
    if (!x || !rects || !value || !out)
        return FR_ERR_NULL;
    const int64_t pix = C * itemsize, row = W * pix, rows = M * H;
    uint8_t v[16];
    int small = itemsize <= 16;
    if (small)
        memcpy(v, value, (size_t)itemsize);
    const int nt = fr_region_threads(rows);
    FR_FOR(nt, int64_t r = 0, r < rows, r++, {
        int64_t m = r / H, y = r - m * H;
        const uint8_t *src = (const uint8_t *)x + r * row;
        uint8_t *dst = (uint8_t *)out + r * row;
        if (src != dst)
            memcpy(dst, src, (size_t)row);
        const int64_t *rc = rects + 4 * m;
        int64_t y0 = rc[0], x0 = rc[1], eh = rc[2], ew = rc[3];
        if (eh <= 0 || ew <= 0 || y < y0 || y >= y0 + eh)
            continue;
        int64_t a = x0 < 0 ? 0 : x0, b = x0 + ew > W ? W : x0 + ew;
        uint8_t *p = dst + a * pix;
        int64_t cnt = (b - a) * C;
        if (cnt <= 0)
            continue;
        if (itemsize == 1) {
            memset(p, ((const uint8_t *)value)[0], (size_t)cnt);
        } else if (itemsize == 4) {
            uint32_t v4;
            memcpy(&v4, value, 4);
            for (int64_t i = 0; i < cnt; i++)
                memcpy(p + 4 * i, &v4, 4);
        } else {
            for (int64_t i = 0; i < cnt; i++)
                memcpy(p + i * itemsize, small ? (const void *)v : value, (size_t)itemsize);
        }
    });
    return FR_OK;
}

FR_AUG_INLINE void fr_mix_row_u8(const uint8_t *a, const uint8_t *b, float l, float ml,
                                 uint8_t *o, int64_t L)
{
    for (int64_t i = 0; i < L; i++)
        o[i] = fr_finish_u8((float)a[i] * l + (float)b[i] * ml);
}

FR_AUG_INLINE void fr_mix_row_f32(const float *a, const float *b, float l, float ml, float *o,
                                  int64_t L)
{
    for (int64_t i = 0; i < L; i++)
        o[i] = a[i] * l + b[i] * ml;
}

static void fr_mix_u8_portable(const uint8_t *a, const uint8_t *b, float l, float ml, uint8_t *o,
                               int64_t L)
{
    fr_mix_row_u8(a, b, l, ml, o, L);
}

static void fr_mix_f32_portable(const float *a, const float *b, float l, float ml, float *o,
                                int64_t L)
{
    fr_mix_row_f32(a, b, l, ml, o, L);
}

#ifdef FR_AUG_X86
FR_AUG_AVX2 static void fr_mix_u8_avx2(const uint8_t *a, const uint8_t *b, float l, float ml,
                                       uint8_t *o, int64_t L)
{
    fr_mix_row_u8(a, b, l, ml, o, L);
}

FR_AUG_AVX2 static void fr_mix_f32_avx2(const float *a, const float *b, float l, float ml,
                                        float *o, int64_t L)
{
    fr_mix_row_f32(a, b, l, ml, o, L);
}
#endif

#define FR_AUG_MIX_BLOCK ((int64_t)4096)

int fr_aug_mix_u8(const uint8_t *x, const int64_t *partner, const float *lam, uint8_t *out,
                  int64_t N, int64_t L)
{
    if (N < 0 || L < 0)
        return FR_ERR_SIZE;
    if (N == 0 || L == 0)
        return FR_OK;
    if (!x || !partner || !lam || !out)
        return FR_ERR_NULL;
    void (*fn)(const uint8_t *, const uint8_t *, float, float, uint8_t *, int64_t) =
        fr_mix_u8_portable;
#ifdef FR_AUG_X86
    if (fr_aug_avx2())
        fn = fr_mix_u8_avx2;
#endif
    const int64_t blocks = (L + FR_AUG_MIX_BLOCK - 1) / FR_AUG_MIX_BLOCK, tasks = N * blocks;
    const int nt = fr_region_threads(tasks);
    FR_FOR(nt, int64_t t = 0, t < tasks, t++, {
        int64_t n = t / blocks, i0 = (t - n * blocks) * FR_AUG_MIX_BLOCK;
        int64_t cnt = L - i0 < FR_AUG_MIX_BLOCK ? L - i0 : FR_AUG_MIX_BLOCK;
        float l = lam[n];
        fn(x + n * L + i0, x + partner[n] * L + i0, l, 1.0f - l, out + n * L + i0, cnt);
    });
    return FR_OK;
}

int fr_aug_mix_f32(const float *x, const int64_t *partner, const float *lam, float *out,
                   int64_t N, int64_t L)
{
    if (N < 0 || L < 0)
        return FR_ERR_SIZE;
    if (N == 0 || L == 0)
        return FR_OK;
    if (!x || !partner || !lam || !out)
        return FR_ERR_NULL;
    void (*fn)(const float *, const float *, float, float, float *, int64_t) =
        fr_mix_f32_portable;
#ifdef FR_AUG_X86
    if (fr_aug_avx2())
        fn = fr_mix_f32_avx2;
#endif
    const int64_t blocks = (L + FR_AUG_MIX_BLOCK - 1) / FR_AUG_MIX_BLOCK, tasks = N * blocks;
    const int nt = fr_region_threads(tasks);
    FR_FOR(nt, int64_t t = 0, t < tasks, t++, {
        int64_t n = t / blocks, i0 = (t - n * blocks) * FR_AUG_MIX_BLOCK;
        int64_t cnt = L - i0 < FR_AUG_MIX_BLOCK ? L - i0 : FR_AUG_MIX_BLOCK;
        float l = lam[n];
        fn(x + n * L + i0, x + partner[n] * L + i0, l, 1.0f - l, out + n * L + i0, cnt);
    });
    return FR_OK;
}

int fr_aug_paste(const void *x, const int64_t *partner, const int64_t *rects, void *out,
                 int64_t M, int64_t H, int64_t W, int64_t P)
{
    if (M < 0 || H < 0 || W < 0 || P < 0)
        return FR_ERR_SIZE;
    if (M == 0 || H == 0 || W == 0 || P == 0)
        return FR_OK;
    if (!x || !partner || !rects || !out)
        return FR_ERR_NULL;
    const int64_t row = W * P, rows = M * H;
    const int nt = fr_region_threads(rows);
    FR_FOR(nt, int64_t r = 0, r < rows, r++, {
        int64_t m = r / H, y = r - m * H;
        uint8_t *dst = (uint8_t *)out + r * row;
        memcpy(dst, (const uint8_t *)x + r * row, (size_t)row);
        const int64_t *rc = rects + 4 * m;
        int64_t y0 = rc[0], x0 = rc[1], eh = rc[2], ew = rc[3];
        if (eh <= 0 || ew <= 0 || y < y0 || y >= y0 + eh)
            continue;
        int64_t a = x0 < 0 ? 0 : x0, b = x0 + ew > W ? W : x0 + ew;
        if (b <= a)
            continue;
        const uint8_t *src = (const uint8_t *)x + (partner[m] * H + y) * row;
        memcpy(dst + a * P, src + a * P, (size_t)((b - a) * P));
    });
    return FR_OK;
}
