/* DropBlock kernels (OpenMP), the C backend of fastreg.drop_block.
 *
 * Exact definition: fastreg/reference/dropblock.py.  The mask kernel runs one task per
 * (sample, channel) plane: the plane's H * W stream words (generated in tiles of DB_TILE words
 * by the generators of philox.h) give its seed flags; a sliding count along each row marks the
 * columns within reach of a seed, a sliding count down the columns then marks the dropped
 * elements.  Counts of 0/1 flags and an integer sum of kept elements: the mask and the count
 * are exact and independent of the thread count and ISA.
 *
 * The apply kernel is dropout's select: kept elements x * scale (one multiply in the array's
 * dtype; -ffp-contract=off), dropped ones exactly +0.0 (a bitwise select, also for inf/NaN).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "fastreg.h"
#include "fr_threads.h"
#include "philox.h"

#define DB_TILE 2048   /* stream words per generator call */
#define DB_PAD 64      /* words a generator may write past the tile (shift 3, rounding to 8) */

typedef struct {
    uint64_t seed, offset, threshold;
    int64_t N, C, H, W, left, right;
    int channels_last;
    int isa;
    uint8_t *mask;
} fr_db_job;

/* Per-thread scratch: the plane's seed flags and row reach (H * W bytes each), a flag per row
 * (its reach has a 1), the column counts (W), the generator's words. */
typedef struct {
    uint8_t *seeds, *reach, *row_hit;
    int32_t *cnt;
    uint32_t *words;  /* 64-byte aligned, DB_TILE + DB_PAD */
    void *block;
} fr_db_scratch;

static int fr_db_scratch_init(fr_db_scratch *s, int64_t h, int64_t w)
{
    size_t words = (DB_TILE + DB_PAD) * sizeof(uint32_t);
    size_t cnt = (size_t)w * sizeof(int32_t);
    size_t flags = 2 * (size_t)(h * w) + (size_t)h;
    s->block = aligned_alloc(64, (words + cnt + flags + 63) / 64 * 64);
    if (!s->block)
        return FR_ERR_ALLOC;
    s->words = (uint32_t *)s->block;
    s->cnt = (int32_t *)((char *)s->block + words);
    s->seeds = (uint8_t *)s->block + words + cnt;
    s->reach = s->seeds + h * w;
    s->row_hit = s->reach + h * w;
    return FR_OK;
}

/* Whether any of the n bytes is nonzero (an OR reduction the compiler vectorizes). */
static int fr_db_any(const uint8_t *a, int64_t n)
{
    unsigned acc = 0;
    for (int64_t i = 0; i < n; i++)
        acc |= a[i];
    return acc != 0;
}

/* seeds[q] = word(g0 + q) < threshold for q < count */
static void fr_db_seeds(const fr_db_job *j, uint64_t g0, int64_t count, uint8_t *seeds,
                        uint32_t *buf)
{
    for (int64_t q0 = 0; q0 < count; q0 += DB_TILE) {
        size_t len = (size_t)(count - q0 < DB_TILE ? count - q0 : DB_TILE);
        uint64_t g = g0 + (uint64_t)q0;
        unsigned skip = (unsigned)(g & 3);
        size_t nb = (skip + len + 3) / 4;
#ifdef FR_HAVE_AVX512_KERNELS
        if (j->isa == 2)
            fr_stream_blocks_avx512(j->seed, g >> 2, nb, buf, NULL);
        else
#endif
#ifdef FR_HAVE_AVX2_KERNELS
        if (j->isa == 1)
            fr_stream_blocks_avx2(j->seed, g >> 2, nb, buf, NULL);
        else
#endif
            fr_stream_blocks_portable(j->seed, g >> 2, nb, buf, NULL);
        const uint32_t *w = buf + skip;
        uint8_t *s = seeds + q0;
        const uint64_t t = j->threshold;
        for (size_t i = 0; i < len; i++)
            s[i] = (uint8_t)((uint64_t)w[i] < t);
    }
}

/* dst[c] = 1 when src has a 1 in [c - left, c + right] (clipped to [0, w)) */
static void fr_db_row(const uint8_t *src, uint8_t *dst, int64_t w, int64_t left, int64_t right)
{
    int64_t c = 0;
    for (int64_t b = 0; b < w && b <= right; b++)
        c += src[b];
    for (int64_t x = 0; x < w; x++) {
        dst[x] = (uint8_t)(c > 0);
        if (x + 1 + right < w)
            c += src[x + 1 + right];
        if (x - left >= 0)
            c -= src[x - left];
    }
}

/* Plane p = n * C + c: writes its mask entries, returns its kept count.  Seeds are sparse at
 * the usual rates (gamma ~ p / k**2), so rows without a seed and output rows with no reach in
 * their window take a shortcut (the same values: a count of zeros is zero). */
static int64_t fr_db_plane(const fr_db_job *j, int64_t p, const fr_db_scratch *s)
{
    const int64_t H = j->H, W = j->W, hw = H * W, C = j->C;
    const int64_t left = j->left, right = j->right;
    const int64_t n = p / C, ch = p % C;
    fr_db_seeds(j, j->offset + (uint64_t)p * (uint64_t)hw, hw, s->seeds, s->words);
    for (int64_t a = 0; a < H; a++) {
        s->row_hit[a] = (uint8_t)fr_db_any(s->seeds + a * W, W);
        if (s->row_hit[a])
            fr_db_row(s->seeds + a * W, s->reach + a * W, W, left, right);
    }
    int32_t *cnt = s->cnt;
    memset(cnt, 0, (size_t)W * sizeof *cnt);
    int64_t live = 0;  /* rows with reach in the window of output row i */
    for (int64_t a = 0; a < H && a <= right; a++)
        if (s->row_hit[a]) {
            live++;
            for (int64_t x = 0; x < W; x++)
                cnt[x] += s->reach[a * W + x];
        }
    int64_t kept = 0;
    for (int64_t i = 0; i < H; i++) {
        uint8_t *m = j->channels_last ? j->mask + ((n * H + i) * W) * C + ch
                                      : j->mask + (p * H + i) * W;
        const int64_t step = j->channels_last ? C : 1;
        if (live == 0) {  /* every count is 0: the whole row kept */
            if (step == 1)
                memset(m, 1, (size_t)W);
            else
                for (int64_t x = 0; x < W; x++)
                    m[x * step] = 1;
            kept += W;
        } else if (step == 1) {
            int64_t row_kept = 0;
            for (int64_t x = 0; x < W; x++) {
                uint8_t k = (uint8_t)(cnt[x] == 0);
                m[x] = k;
                row_kept += k;
            }
            kept += row_kept;
        } else {
            for (int64_t x = 0; x < W; x++) {
                uint8_t k = (uint8_t)(cnt[x] == 0);
                m[x * step] = k;
                kept += k;
            }
        }
        const int64_t in = i + 1 + right, out = i - left;
        if (in < H && s->row_hit[in]) {
            live++;
            const uint8_t *r = s->reach + in * W;
            for (int64_t x = 0; x < W; x++)
                cnt[x] += r[x];
        }
        if (out >= 0 && s->row_hit[out]) {
            live--;
            const uint8_t *r = s->reach + out * W;
            for (int64_t x = 0; x < W; x++)
                cnt[x] -= r[x];
        }
    }
    return kept;
}

int fr_drop_block_mask(uint64_t seed, uint64_t offset, uint64_t threshold, int64_t block,
                       int channels_last, uint8_t *mask, int64_t N, int64_t C, int64_t H,
                       int64_t W, int64_t *kept)
{
    if (N < 0 || C < 0 || H < 0 || W < 0)
        return FR_ERR_SIZE;
    if (!kept)
        return FR_ERR_NULL;
    *kept = 0;
    if (N == 0 || C == 0 || H == 0 || W == 0)
        return FR_OK;
    if (!mask)
        return FR_ERR_NULL;
    if (block < 1 || block > H || block > W)
        return FR_ERR_SIZE;
    fr_db_job job = {seed, offset, threshold, N, C, H, W, block / 2, (block - 1) / 2,
                     channels_last != 0, fr_get_isa(), mask};
    const int64_t planes = N * C;
    int64_t total = 0;
    int status = FR_OK;
    const int nt = fr_region_threads(planes);
    if (nt <= 1) {
        fr_db_scratch s;
        if (fr_db_scratch_init(&s, H, W) != FR_OK)
            return FR_ERR_ALLOC;
        for (int64_t p = 0; p < planes; p++)
            total += fr_db_plane(&job, p, &s);
        free(s.block);
    } else {
#pragma omp parallel num_threads(nt) reduction(+ : total)
        {
            fr_db_scratch s;
            int ok = fr_db_scratch_init(&s, H, W) == FR_OK;
            if (!ok) {
#pragma omp atomic write
                status = FR_ERR_ALLOC;
            }
            /* every thread takes part in the loop (a worksharing construct), even without
             * scratch: it then skips its planes, and the call reports FR_ERR_ALLOC */
#pragma omp for schedule(dynamic, 1)
            for (int64_t p = 0; p < planes; p++)
                if (ok)
                    total += fr_db_plane(&job, p, &s);
            if (ok)
                free(s.block);
        }
    }
    if (status != FR_OK)
        return status;
    *kept = total;
    return FR_OK;
}

/* ------------------------------------------------------------------ apply */

#define FR_DEFINE_DB_APPLY(SUF, T, UT)                                                      \
    int fr_drop_block_apply_##SUF(const T *x, const uint8_t *mask, T scale, T *out,         \
                                  int64_t n)                                                \
    {                                                                                       \
        if (n < 0)                                                                          \
            return FR_ERR_SIZE;                                                             \
        if (n == 0)                                                                         \
            return FR_OK;                                                                   \
        if (!x || !mask || !out)                                                            \
            return FR_ERR_NULL;                                                             \
        const int64_t tiles = (n + DB_TILE - 1) / DB_TILE;                                  \
        const int nt = fr_region_threads(tiles);                                            \
        FR_FOR(nt, int64_t t = 0, t < tiles, t++, {                                         \
            const int64_t lo = t * DB_TILE, hi = lo + DB_TILE < n ? lo + DB_TILE : n;       \
            for (int64_t i = lo; i < hi; i++) {                                             \
                T v = x[i] * scale;                                                         \
                UT b;                                                                       \
                memcpy(&b, &v, sizeof b);                                                   \
                b &= (UT)0 - (UT)(mask[i] != 0);                                            \
                memcpy(&v, &b, sizeof v);                                                   \
                out[i] = v;                                                                 \
            }                                                                               \
        });                                                                                 \
        return FR_OK;                                                                       \
    }
FR_DEFINE_DB_APPLY(f32, float, uint32_t)
FR_DEFINE_DB_APPLY(f64, double, uint64_t)
