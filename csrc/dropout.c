/* Philox stream ops and dropout kernels (OpenMP), the C backend of fastreg.
 *
 * Exact definitions: fastreg/reference/.  Layout of every stream op:
 *   - the n elements are cut into tiles of at most FR_TILE stream words; tile 0 is the few
 *     elements before the output reaches a 64-byte boundary, so every other tile starts on one
 *     (streaming stores, and no cache line written by two threads);
 *   - OpenMP hands the tiles out in contiguous runs (schedule(guided));
 *   - a tile first generates its Philox words into a small buffer in stream order (AVX2 or
 *     portable generator, see philox.h), then runs the element loop on them.
 * Element i only ever uses stream word offset + i, so the result never depends on the thread
 * count or on where tiles fall.
 *
 * Dropped elements are a bitwise select (x * scale) & mask: exactly +0.0, even for inf or NaN.
 * Kept elements are one multiply in the array's dtype (built with -ffp-contract=off, and no
 * fast-math).
 */
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "fastreg.h"
#include "fr_pool.h"
#include "fr_threads.h"
#include "half.h"
#include "philox.h"

#ifndef FR_TILE
#define FR_TILE 2048        /* stream words per tile: 8 KiB, stays in L1 with its inputs */
#endif
#define FR_TILE_PAD 32      /* words generated beyond a tile: shift (3) and block rounding (28) */
/* Outputs at least this large bypass the cache (streaming stores) when not written in place:
 * they would not fit in the caches anyway, and streaming avoids reading the lines first. */
#define FR_STREAM_MIN_BYTES ((size_t)4 << 20)

/* ------------------------------------------------------------------ settings */

static int g_isa = -1;         /* -1: not yet detected */
static int g_stream_mode = 1;  /* auto */

int fr_cpu_has_avx2(void)
{
#ifdef FR_HAVE_AVX2_KERNELS
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") ? 1 : 0;
#else
    return 0;
#endif
}

int fr_cpu_has_avx512(void)
{
#ifdef FR_HAVE_AVX512_KERNELS
    __builtin_cpu_init();
    return (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
            __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) ? 1 : 0;
#else
    return 0;
#endif
}

int fr_get_isa(void)
{
    int isa = __atomic_load_n(&g_isa, __ATOMIC_RELAXED);
    if (isa < 0) {
        isa = fr_cpu_has_avx512() ? 2 : fr_cpu_has_avx2();
        __atomic_store_n(&g_isa, isa, __ATOMIC_RELAXED);
    }
    return isa;
}

int fr_set_isa(int isa)
{
    if (isa < 0 || isa > 2)
        return FR_ERR_UNSUPPORTED;
    if ((isa == 1 && !fr_cpu_has_avx2()) || (isa == 2 && !fr_cpu_has_avx512()))
        return FR_ERR_UNSUPPORTED;
    __atomic_store_n(&g_isa, isa, __ATOMIC_RELAXED);
    return FR_OK;
}

int fr_get_stream_stores(void) { return __atomic_load_n(&g_stream_mode, __ATOMIC_RELAXED); }

int fr_set_stream_stores(int mode)
{
    if (mode < 0 || mode > 2)
        return FR_ERR_UNSUPPORTED;
    __atomic_store_n(&g_stream_mode, mode, __ATOMIC_RELAXED);
    return FR_OK;
}

int fr_omp_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* ------------------------------------------------------------------ threads */

/* The calling thread's thread count for the next kernel (fastreg._threads.plan, through
 * fr_set_threads): thread-local, so two Python threads calling kernels at once do not see each
 * other's setting.  1 (the default) runs every kernel serially without touching OpenMP. */
static _Thread_local int fr_tls_threads = 1;
/* the same while the pool's workers spin (fr_set_pool_threads; csrc/pool.c) */
static _Thread_local int fr_tls_hot_threads = 1;
/* the last fr_pool_region_threads of this thread asked fr_pool_burst (the counts differed) */
static _Thread_local int fr_tls_asked = 0;
static int64_t g_parallel_regions = 0;

int fr_set_threads(int n)
{
    if (n < 1)
        return FR_ERR_SIZE;
    fr_tls_threads = fr_tls_hot_threads = n;
    return FR_OK;
}

int fr_set_pool_threads(int n, int n_hot)
{
    if (n < 1 || n_hot < 1)
        return FR_ERR_SIZE;
    fr_tls_threads = n;
    fr_tls_hot_threads = n_hot;
    return FR_OK;
}

int fr_get_threads(void) { return fr_tls_threads; }

int fr_get_hot_threads(void) { return fr_tls_hot_threads; }

/* fr_plan_pool's limit and the settings it was read with (fr_plan_limit), per thread. */
static _Thread_local struct {
    int64_t limit;          /* 0: none kept */
    int64_t until_ns, gen, override, fixed;
    int forked;
} fr_tls_plan;

int fr_plan_limit(int64_t limit, int64_t until_ns, int64_t gen, int64_t override, int64_t fixed,
                  int forked)
{
    if (limit < 1)
        return FR_ERR_SIZE;
    fr_tls_plan.limit = limit;
    fr_tls_plan.until_ns = until_ns;
    fr_tls_plan.gen = gen;
    fr_tls_plan.override = override;
    fr_tls_plan.fixed = fixed;
    fr_tls_plan.forked = forked;
    return FR_OK;
}

/* min(work / grain, limit), as an int (work >= 2 * grain: checked by the caller) */
static int fr_plan_count(int64_t work, int64_t grain, int64_t limit)
{
    int64_t n = work / grain;
    if (n > limit)
        n = limit;
    return n > INT_MAX ? INT_MAX : (int)n;
}

int fr_plan_pool(int64_t work, int64_t grain, int64_t spin_grain, int spinning, int pool_spins,
                 int64_t gen, int64_t override, int64_t fixed, int forked)
{
    if (grain < 1 || spin_grain < 1)
        return -2;   /* the caller plans in Python (and says what is wrong) */
    if (spin_grain > grain)
        spin_grain = grain;
    const int64_t g_cold = spinning ? spin_grain : grain;
    const int64_t g_hot = pool_spins ? spin_grain : grain;
    /* work >= 2 * g, without the overflow of 2 * g for a grain near INT64_MAX */
    const int par_cold = work / 2 >= g_cold, par_hot = work / 2 >= g_hot;
    int cold = 1, hot = 1;
    if (par_cold || par_hot) {
        const int64_t limit = fr_tls_plan.limit;
        if (limit < 1 || gen != fr_tls_plan.gen || override != fr_tls_plan.override
            || fixed != fr_tls_plan.fixed || forked != fr_tls_plan.forked
            || fr_now_ns() >= fr_tls_plan.until_ns)
            return -1;
        if (par_cold)
            cold = fr_plan_count(work, g_cold, limit);
        if (par_hot)
            hot = fr_plan_count(work, g_hot, limit);
    }
    fr_tls_threads = cold;
    fr_tls_hot_threads = hot;
    return hot > cold ? hot : cold;
}

/* n threads for `items` work items, capped (see fr_region_threads) */
static int fr_cap_threads(int n, int64_t items)
{
    if (n <= 1 || items <= 1)
        return 1;
#ifdef _OPENMP
    /* the calling thread's OpenMP limit (OMP_NUM_THREADS, omp_set_num_threads, threadpoolctl's
     * "openmp" limit) caps the count, as in any OpenMP library; read only here, on the
     * parallel path, so a serial call makes no OpenMP call at all */
    int cap = omp_get_max_threads();
    if (cap < n)
        n = cap;
#else
    n = 1;
#endif
    if (items < n)
        n = (int)items;
    if (n > 1)
        __atomic_fetch_add(&g_parallel_regions, 1, __ATOMIC_RELAXED);
    return n;
}

int fr_region_threads(int64_t items) { return fr_cap_threads(fr_tls_threads, items); }

int fr_pool_region_threads(int64_t items)
{
    /* the hot count applies while the workers spin (a job then costs no wake), or in a burst
     * of calls (fr_pool_burst: waking them pays for the calls that follow); read the pool's
     * state only when the counts differ */
    int n = fr_tls_threads;
    fr_tls_asked = fr_tls_hot_threads != n;
    if (fr_tls_asked && fr_pool_burst(fr_tls_hot_threads))
        n = fr_tls_hot_threads;
    return fr_cap_threads(n, items);
}

void fr_pool_region_end(void)
{
    if (fr_tls_asked)
        fr_pool_call_ended();
}

int64_t fr_parallel_regions(void) { return __atomic_load_n(&g_parallel_regions, __ATOMIC_RELAXED); }

/* ------------------------------------------------------------------ tiles */

typedef struct {
    uint64_t seed, offset;
    uint32_t threshold;
    int avx2;    /* use the AVX2 element loops (and generator, unless avx512) */
    int avx512;  /* use the AVX-512 generator */
    int stream;  /* streaming stores allowed */
    float scale_f;
    double scale_d;
    const void *x;
    void *out;
    size_t n;
} fr_job;

/* Process elements [lo, hi); buf holds FR_TILE + FR_TILE_PAD words, 64-byte aligned. */
typedef void (*fr_tile_fn)(const fr_job *job, size_t lo, size_t hi, uint32_t *buf);

/* Words starting at word s of block b0, nwords of them: returns buf + s.  pf (NULL: none) is
 * prefetched while they are generated, 4 bytes per word (see fr_prefetch_range). */
static const uint32_t *fr_words(const fr_job *job, uint64_t b0, unsigned s, size_t nwords,
                                uint32_t *buf, const void *pf)
{
    size_t nb = (s + nwords + 3) / 4;
#ifdef FR_HAVE_AVX512_KERNELS
    if (job->avx512) {
        fr_stream_blocks_avx512(job->seed, b0, nb, buf, pf);  /* writes up to 7 blocks more */
        return buf + s;
    }
#endif
#ifdef FR_HAVE_AVX2_KERNELS
    if (job->avx2) {
        fr_stream_blocks_avx2(job->seed, b0, nb, buf, pf);  /* writes up to 3 blocks more */
        return buf + s;
    }
#endif
    fr_stream_blocks_portable(job->seed, b0, nb, buf, pf);
    return buf + s;
}

/* Words offset + lo .. offset + hi - 1 (one per element). */
static const uint32_t *fr_tile_words(const fr_job *job, size_t lo, size_t hi, uint32_t *buf,
                                     const void *pf)
{
    uint64_t g = job->offset + lo;  /* < 2**64: the wrapper checked offset + n <= 2**64 */
    return fr_words(job, g >> 2, (unsigned)(g & 3), hi - lo, buf, pf);
}

/* Words 2 (offset + lo) .. 2 (offset + hi) - 1 (two per element). */
static const uint32_t *fr_tile_word_pairs(const fr_job *job, size_t lo, size_t hi, uint32_t *buf,
                                          const void *pf)
{
    /* element e = offset + lo uses words 2e and 2e + 1: block e >> 1, word 2 (e & 1); this
     * form never computes 2e, which can pass 2**64 */
    uint64_t e = job->offset + lo;
    return fr_words(job, e >> 1, (unsigned)(2 * (e & 1)), 2 * (hi - lo), buf, pf);
}

/* Elements before `out` reaches a 64-byte boundary (0 if out is not even itemsize-aligned). */
static size_t fr_head(const void *out, size_t itemsize, size_t n)
{
    uintptr_t a = (uintptr_t)out;
    if (a % itemsize)
        return 0;
    size_t h = ((64 - (a & 63)) & 63) / itemsize;
    return h < n ? h : n;
}

static int fr_want_stream(const void *x, const void *out, size_t bytes)
{
    switch (fr_get_stream_stores()) {
    case 0: return 0;
    case 2: return 1;
    default: return x != out && bytes >= FR_STREAM_MIN_BYTES;
    }
}

#ifdef FR_HAVE_AVX2_KERNELS
static void fr_sfence(void) { _mm_sfence(); }
#else
static void fr_sfence(void) {}
#endif

/* Tile t: tile 0 = [0, head), then tiles of `tile` elements. */
static inline void fr_tile(const fr_job *job, size_t n, size_t head, size_t tile, fr_tile_fn fn,
                           size_t t, uint32_t *buf)
{
    size_t lo = t == 0 ? 0 : head + (t - 1) * tile;
    size_t hi = t == 0 ? head : (head + t * tile < n ? head + t * tile : n);
    if (lo < hi)
        fn(job, lo, hi, buf);
}

/* One job of fr_run_tiles on fastreg's pool: task k runs tiles [k per, (k + 1) per). */
typedef struct {
    const fr_job *job;
    size_t n, head, tile, ntiles, per;
    fr_tile_fn fn;
} fr_tiles_ctx;

static void fr_tiles_task(void *ctx, size_t k)
{
    const fr_tiles_ctx *c = (const fr_tiles_ctx *)ctx;
    _Alignas(64) uint32_t buf[FR_TILE + FR_TILE_PAD];
    size_t t1 = (k + 1) * c->per < c->ntiles ? (k + 1) * c->per : c->ntiles;
    for (size_t t = k * c->per; t < t1; t++)
        fr_tile(c->job, c->n, c->head, c->tile, c->fn, t, buf);
    if (c->job->stream)
        fr_sfence();  /* order this task's streaming stores before the job ends */
}

/* Runs fn over tile 0 = [0, head) and tiles of `tile` elements after it: on the calling thread
 * when fr_pool_region_threads says 1, else as one job of fastreg's pool (csrc/pool.c: a
 * contiguous run of tiles per thread, and the runs of threads that come late are taken by the
 * others; measured on a shared machine, OpenMP's schedule(guided) was as fast as static idle
 * and faster busy, for the same reason). */
static void fr_run_tiles(const fr_job *job, size_t n, size_t head, size_t tile, fr_tile_fn fn)
{
    size_t ntiles = 1 + (n - head + tile - 1) / tile;
    int nt = fr_pool_region_threads((int64_t)ntiles);
    if (nt <= 1) {
        _Alignas(64) uint32_t buf[FR_TILE + FR_TILE_PAD];
        for (size_t t = 0; t < ntiles; t++)
            fr_tile(job, n, head, tile, fn, t, buf);
        if (job->stream)
            fr_sfence();
        fr_pool_region_end();
        return;
    }
    fr_tiles_ctx c = {job, n, head, tile, ntiles, 1, fn};
    if (ntiles > FR_POOL_MAX_TASKS)   /* over 8 GiB of words: several tiles per task */
        c.per = (ntiles + FR_POOL_MAX_TASKS - 1) / FR_POOL_MAX_TASKS;
    fr_pool_run(nt, fr_tiles_task, &c, (ntiles + c.per - 1) / c.per);
    fr_pool_region_end();
}

static void fr_job_init(fr_job *job, uint64_t seed, uint64_t offset, size_t n)
{
    memset(job, 0, sizeof *job);
    job->seed = seed;
    job->offset = offset;
    job->n = n;
    int isa = fr_get_isa();
    job->avx2 = isa >= 1;    /* AVX-512 CPUs run the AVX2 element loops: they are memory-bound */
    job->avx512 = isa == 2;
}

/* The float32 and float64 kernels share one body each: FR_DEFINE_* macros below define a
 * kernel for a suffix SUF (f32, f64) and its element type T, and are instantiated once per
 * dtype.  Preprocessor lines cannot stand inside a macro, hence _Pragma for OpenMP and
 * FR_IF_AVX2 for the run-time choice of the AVX2 element loop: on the AVX2 path it makes the
 * call and returns; without AVX2 kernels it is empty (the call is not even compiled). */
#ifdef FR_HAVE_AVX2_KERNELS
#define FR_IF_AVX2(job, call)  \
    do {                       \
        if ((job)->avx2) {     \
            call;              \
            return;            \
        }                      \
    } while (0)
#else
#define FR_IF_AVX2(job, call) do {} while (0)
#endif

/* Stream words per element of type T (1 for float32, 2 for float64). */
#define FR_WPE(T) ((unsigned)(sizeof(T) / sizeof(uint32_t)))

/* Branchless select: v where keep, +0.0 where not.  UT: the unsigned integer as wide as T. */
#define FR_DEFINE_SEL(SUF, T, UT)                \
    static inline T fr_sel_##SUF(T v, int keep)  \
    {                                            \
        UT b;                                    \
        memcpy(&b, &v, sizeof b);                \
        b &= (UT)0 - (UT)(keep != 0);            \
        memcpy(&v, &b, sizeof v);                \
        return v;                                \
    }
FR_DEFINE_SEL(f32, float, uint32_t)
FR_DEFINE_SEL(f64, double, uint64_t)

/* ------------------------------------------------------------------ philox4x32 */

int fr_philox4x32(const uint32_t *ctr, const uint32_t *key, uint32_t *out, int64_t n)
{
    if (n < 0)
        return FR_ERR_SIZE;
    if (!ctr || !key || !out)
        return FR_ERR_NULL;
    const int nt = fr_region_threads(n);
    FR_FOR(nt, int64_t j = 0, j < n, j++, {
        uint32_t w[4];
        fr_philox4x32_10(ctr + 4 * j, key + 2 * j, w);
        memcpy(out + 4 * j, w, sizeof w);
    });
    return FR_OK;
}

/* ------------------------------------------------------------------ random_bits */

#ifdef FR_HAVE_AVX2_KERNELS
FR_AVX2 static void fr_copy_words_avx2(const uint32_t *w, uint32_t *o, size_t len, int stream)
{
    size_t i = 0;
    if (stream) {
        for (; i < len && ((uintptr_t)(o + i) & 31); i++)
            o[i] = w[i];
        for (; i + 8 <= len; i += 8)
            _mm256_stream_si256((__m256i *)(o + i), _mm256_loadu_si256((const __m256i *)(w + i)));
    }
    for (; i + 8 <= len; i += 8)
        _mm256_storeu_si256((__m256i *)(o + i), _mm256_loadu_si256((const __m256i *)(w + i)));
    for (; i < len; i++)
        o[i] = w[i];
}
#endif

static void fr_random_bits_tile(const fr_job *job, size_t lo, size_t hi, uint32_t *buf)
{
    const uint32_t *w = fr_tile_words(job, lo, hi, buf, NULL);
    uint32_t *o = (uint32_t *)job->out + lo;
#ifdef FR_HAVE_AVX2_KERNELS
    if (job->avx2) {
        fr_copy_words_avx2(w, o, hi - lo, job->stream);
        return;
    }
#endif
    memcpy(o, w, (hi - lo) * sizeof *o);
}

int fr_random_bits(uint64_t seed, uint64_t offset, uint32_t *out, int64_t n)
{
    if (n < 0)
        return FR_ERR_SIZE;
    if (!out)
        return FR_ERR_NULL;
    if (n == 0)
        return FR_OK;
    fr_job job;
    fr_job_init(&job, seed, offset, (size_t)n);
    job.out = out;
    job.stream = fr_want_stream(NULL, out, (size_t)n * sizeof *out);
    fr_run_tiles(&job, (size_t)n, fr_head(out, sizeof *out, (size_t)n), FR_TILE,
                 fr_random_bits_tile);
    return FR_OK;
}

/* ------------------------------------------------------------------ uniform */

/* (w >> 8) * 2**-24: 24 bits, exact in float32; the (exact) int32 cast lets it vectorize. */
static inline __attribute__((always_inline)) void
fr_uniform_f32_elems(const uint32_t *w, float *o, size_t len)
{
    for (size_t i = 0; i < len; i++)
        o[i] = (float)(int32_t)(w[i] >> 8) * 0x1p-24f;
}

/* u = lo | hi << 32; (u >> 11) * 2**-53 = hi * 2**-32 + (lo >> 11) * 2**-53: every product
 * and the sum below are exact (a 53-bit integer times a power of two). */
static inline __attribute__((always_inline)) void
fr_uniform_f64_elems(const uint32_t *w, double *o, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        double hi = (double)w[2 * i + 1];
        double lo = (double)(int32_t)(w[2 * i] >> 11);  /* < 2**21: the int32 cast is exact */
        o[i] = hi * 0x1p-32 + lo * 0x1p-53;
    }
}

/* The element loop compiled for AVX2, then a tile and the exported fr_uniform_SUF.  WORDS: the
 * tile's stream words (fr_tile_words, one per element, or fr_tile_word_pairs, two); tiles of
 * FR_TILE / FR_WPE(T) elements then take FR_TILE words, as for the other ops. */
#ifdef FR_HAVE_AVX2_KERNELS
#define FR_DEFINE_UNIFORM_ELEMS_AVX2(SUF, T)                                                \
    FR_AVX2 static void fr_uniform_##SUF##_elems_avx2(const uint32_t *w, T *o, size_t len)  \
    {                                                                                       \
        fr_uniform_##SUF##_elems(w, o, len);                                                \
    }
FR_DEFINE_UNIFORM_ELEMS_AVX2(f32, float)
FR_DEFINE_UNIFORM_ELEMS_AVX2(f64, double)
#endif

#define FR_DEFINE_UNIFORM(SUF, T, WORDS)                                                         \
    static void fr_uniform_##SUF##_tile(const fr_job *job, size_t lo, size_t hi, uint32_t *buf)  \
    {                                                                                            \
        const uint32_t *w = WORDS(job, lo, hi, buf, NULL);                                       \
        T *o = (T *)job->out + lo;                                                               \
        FR_IF_AVX2(job, fr_uniform_##SUF##_elems_avx2(w, o, hi - lo));                           \
        fr_uniform_##SUF##_elems(w, o, hi - lo);                                                 \
    }                                                                                            \
                                                                                                 \
    int fr_uniform_##SUF(uint64_t seed, uint64_t offset, T *out, int64_t n)                      \
    {                                                                                            \
        if (n < 0)                                                                               \
            return FR_ERR_SIZE;                                                                  \
        if (!out)                                                                                \
            return FR_ERR_NULL;                                                                  \
        if (n == 0)                                                                              \
            return FR_OK;                                                                        \
        fr_job job;                                                                              \
        fr_job_init(&job, seed, offset, (size_t)n);                                              \
        job.out = out;                                                                           \
        fr_run_tiles(&job, (size_t)n, fr_head(out, sizeof *out, (size_t)n),                      \
                     FR_TILE / FR_WPE(T), fr_uniform_##SUF##_tile);                              \
        return FR_OK;                                                                            \
    }
FR_DEFINE_UNIFORM(f32, float, fr_tile_words)
FR_DEFINE_UNIFORM(f64, double, fr_tile_word_pairs)

/* ------------------------------------------------------------------ dropout */

/* The portable element loop: T the math type (suffix MS), x and out stored as X (csrc/half.h
 * tags: f32, f64, or f16 / bf16 with float32 math, rounded to nearest even on store). */
#define FR_DEFINE_DROPOUT_ELEMS(SUF, T, MS, X)                                                  \
    static inline __attribute__((always_inline)) void                                           \
    fr_dropout_##SUF##_elems(const uint32_t *w, const FR_ELEM_##X *x, FR_ELEM_##X *o,           \
                             size_t len, uint32_t t, T scale)                                   \
    {                                                                                           \
        for (size_t i = 0; i < len; i++)                                                        \
            fr_store_##X(o, i, fr_sel_##MS(fr_load_##X(x, i) * scale, w[i] >= t));              \
    }
FR_DEFINE_DROPOUT_ELEMS(f32, float, f32, f32)
FR_DEFINE_DROPOUT_ELEMS(f64, double, f64, f64)
FR_DEFINE_DROPOUT_ELEMS(f16, float, f32, f16)
FR_DEFINE_DROPOUT_ELEMS(bf16, float, f32, bf16)

#ifdef FR_HAVE_AVX2_KERNELS
/* drop where t > w (unsigned), as a signed compare after flipping the sign bits */
#define FR_DROP8(wp) _mm256_cmpgt_epi32(tv, _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(wp)), sign))
#define FR_DROP4(wp) _mm_cmpgt_epi32(tv4, _mm_xor_si128(_mm_loadu_si128((const __m128i *)(wp)), sign4))

/* Per dtype: the constants of the compare, and the drop mask of the 32 / sizeof(T) elements
 * whose words start at wp, one all-ones lane of sizeof(T) bytes per dropped element. */
#define FR_DROP_CONSTS_f32(t)                           \
    const __m256i sign = _mm256_set1_epi32(INT32_MIN);  \
    const __m256i tv = _mm256_set1_epi32((int32_t)(t ^ UINT32_C(0x80000000)))
#define FR_DROP_CONSTS_f64(t)                         \
    const __m128i sign4 = _mm_set1_epi32(INT32_MIN);  \
    const __m128i tv4 = _mm_set1_epi32((int32_t)(t ^ UINT32_C(0x80000000)))
#define FR_DROP_MASK_f32(wp) FR_DROP8(wp)
#define FR_DROP_MASK_f64(wp) _mm256_cvtepi32_epi64(FR_DROP4(wp))

/* V: the 256-bit vector of T; P: the intrinsics' suffix (ps, pd).  L = 32 / sizeof(T) lanes;
 * the streaming loop does two vectors an iteration. */
#define FR_DEFINE_DROPOUT_ELEMS_AVX2(SUF, T, V, P)                                              \
    FR_AVX2 static void fr_dropout_##SUF##_elems_avx2(const uint32_t *w, const T *x, T *o,      \
                                                      size_t len, uint32_t t, T scale,          \
                                                      int stream)                               \
    {                                                                                           \
        enum { L = 32 / sizeof(T) };                                                            \
        FR_DROP_CONSTS_##SUF(t);                                                                \
        const V sv = _mm256_set1_##P(scale);                                                    \
        size_t i = 0;                                                                           \
        if (stream) {                                                                           \
            for (; i < len && ((uintptr_t)(o + i) & 31); i++)                                   \
                o[i] = fr_sel_##SUF(x[i] * scale, w[i] >= t);                                   \
            for (; i + 2 * L <= len; i += 2 * L) {                                              \
                V a = _mm256_mul_##P(_mm256_loadu_##P(x + i), sv);                              \
                V b = _mm256_mul_##P(_mm256_loadu_##P(x + i + L), sv);                          \
                a = _mm256_andnot_##P(_mm256_castsi256_##P(FR_DROP_MASK_##SUF(w + i)), a);      \
                b = _mm256_andnot_##P(_mm256_castsi256_##P(FR_DROP_MASK_##SUF(w + i + L)), b);  \
                _mm256_stream_##P(o + i, a);                                                    \
                _mm256_stream_##P(o + i + L, b);                                                \
            }                                                                                   \
        }                                                                                       \
        for (; i + L <= len; i += L) {                                                          \
            V a = _mm256_mul_##P(_mm256_loadu_##P(x + i), sv);                                  \
            a = _mm256_andnot_##P(_mm256_castsi256_##P(FR_DROP_MASK_##SUF(w + i)), a);          \
            _mm256_storeu_##P(o + i, a);                                                        \
        }                                                                                       \
        for (; i < len; i++)                                                                    \
            o[i] = fr_sel_##SUF(x[i] * scale, w[i] >= t);                                       \
    }
FR_DEFINE_DROPOUT_ELEMS_AVX2(f32, float, __m256, ps)
FR_DEFINE_DROPOUT_ELEMS_AVX2(f64, double, __m256d, pd)
#endif

#ifdef FR_HAVE_AVX2_KERNELS
/* 16-bit: no streaming stores (job->stream is 0 for them).  bfloat16: eight elements at a time,
 * widened by a shift and rounded by fr_bf16x8_store (csrc/half.h, exact as the integer code),
 * the float32 kernel's multiply and drop mask between them. */
FR_AVX2 static void fr_dropout_bf16_elems_avx2(const uint32_t *w, const uint16_t *x, uint16_t *o,
                                               size_t len, uint32_t t, float scale, int stream)
{
    (void)stream;
    FR_DROP_CONSTS_f32(t);
    const __m256 sv = _mm256_set1_ps(scale);
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        __m256 a = _mm256_mul_ps(fr_bf16x8_load(x + i), sv);
        a = _mm256_andnot_ps(_mm256_castsi256_ps(FR_DROP8(w + i)), a);
        fr_bf16x8_store(o + i, a);
    }
    fr_dropout_bf16_elems(w + i, x + i, o + i, len - i, t, scale);
}

/* float16: eight elements at a time through the F16C conversions (csrc/half.h; exact as the
 * integer ones), the float32 kernel's multiply and drop mask between them; without F16C, the
 * portable loop compiled for AVX2. */
#ifdef FR_HAVE_F16C_KERNELS
FR_F16C static void fr_dropout_f16_elems_f16c(const uint32_t *w, const uint16_t *x, uint16_t *o,
                                              size_t len, uint32_t t, float scale)
{
    FR_DROP_CONSTS_f32(t);
    const __m256 sv = _mm256_set1_ps(scale);
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        __m256 a = _mm256_mul_ps(fr_f16x8_load(x + i), sv);
        a = _mm256_andnot_ps(_mm256_castsi256_ps(FR_DROP8(w + i)), a);
        fr_f16x8_store(o + i, a);
    }
    fr_dropout_f16_elems(w + i, x + i, o + i, len - i, t, scale);
}
#endif

FR_AVX2 static void fr_dropout_f16_elems_avx2(const uint32_t *w, const uint16_t *x, uint16_t *o,
                                              size_t len, uint32_t t, float scale, int stream)
{
    (void)stream;
#ifdef FR_HAVE_F16C_KERNELS
    if (fr_cpu_has_f16c()) {
        fr_dropout_f16_elems_f16c(w, x, o, len, t, scale);
        return;
    }
#endif
    fr_dropout_f16_elems(w, x, o, len, t, scale);
}
#endif

/* A tile of fr_dropout_SUF: E the element type of x and out, SCALE the fr_job field that holds
 * the scale in the math type. */
#define FR_DEFINE_DROPOUT_TILE(SUF, E, SCALE)                                                    \
    static void fr_dropout_##SUF##_tile(const fr_job *job, size_t lo, size_t hi, uint32_t *buf)  \
    {                                                                                            \
        const E *x = (const E *)job->x + lo;                                                     \
        /* float32: the x lines of the tile are fetched while its words are generated            \
         * (measured: 6-15% faster out of place; float64 was 10% slower with it) */               \
        const void *pf = sizeof(E) == 4 ? (const void *)x : NULL;                                \
        const uint32_t *w = fr_tile_words(job, lo, hi, buf, pf);                                 \
        E *o = (E *)job->out + lo;                                                               \
        FR_IF_AVX2(job, fr_dropout_##SUF##_elems_avx2(w, x, o, hi - lo, job->threshold,          \
                                                      job->SCALE, job->stream));                 \
        fr_dropout_##SUF##_elems(w, x, o, hi - lo, job->threshold, job->SCALE);                  \
    }
FR_DEFINE_DROPOUT_TILE(f32, float, scale_f)
FR_DEFINE_DROPOUT_TILE(f64, double, scale_d)
FR_DEFINE_DROPOUT_TILE(f16, uint16_t, scale_f)
FR_DEFINE_DROPOUT_TILE(bf16, uint16_t, scale_f)

/* Runs a dropout tile function over x -> out (n elements of itemsize bytes); stream: whether
 * the element loops may use streaming stores. */
static int fr_dropout_run(const void *x, uint64_t seed, uint64_t offset, uint32_t threshold,
                          float scale_f, double scale_d, void *out, int64_t n, size_t itemsize,
                          int stream, fr_tile_fn fn)
{
    if (n < 0)
        return FR_ERR_SIZE;
    if (!x || !out)
        return FR_ERR_NULL;
    if (n == 0)
        return FR_OK;
    fr_job job;
    fr_job_init(&job, seed, offset, (size_t)n);
    job.x = x;
    job.out = out;
    job.threshold = threshold;
    job.scale_f = scale_f;
    job.scale_d = scale_d;
    job.stream = stream && fr_want_stream(x, out, (size_t)n * itemsize);
    fr_run_tiles(&job, (size_t)n, fr_head(out, itemsize, (size_t)n), FR_TILE, fn);
    return FR_OK;
}

int fr_dropout_f32(const float *x, uint64_t seed, uint64_t offset, uint32_t threshold,
                   float scale, float *out, int64_t n)
{
    return fr_dropout_run(x, seed, offset, threshold, scale, 0, out, n, sizeof *out, 1,
                          fr_dropout_f32_tile);
}

int fr_dropout_f64(const double *x, uint64_t seed, uint64_t offset, uint32_t threshold,
                   double scale, double *out, int64_t n)
{
    return fr_dropout_run(x, seed, offset, threshold, 0, scale, out, n, sizeof *out, 1,
                          fr_dropout_f64_tile);
}

/* 16-bit x and out (uint16 bits of kind FR_HALF_F16 / FR_HALF_BF16): the float32 loop between
 * a widening load and a rounding store, so the bits of fr_widen_half, fr_dropout_f32 and
 * fr_narrow_half in one pass (same mask: element i still uses word offset + i). */
int fr_dropout_half(const uint16_t *x, int kind, uint64_t seed, uint64_t offset,
                    uint32_t threshold, float scale, uint16_t *out, int64_t n)
{
    if (kind != FR_HALF_F16 && kind != FR_HALF_BF16)
        return FR_ERR_UNSUPPORTED;
    return fr_dropout_run(x, seed, offset, threshold, scale, 0, out, n, sizeof *out, 0,
                          kind == FR_HALF_BF16 ? fr_dropout_bf16_tile : fr_dropout_f16_tile);
}

/* ------------------------------------------------------------------ dropout_mask */

static inline __attribute__((always_inline)) void
fr_mask_elems(const uint32_t *w, uint8_t *o, size_t len, uint32_t t)
{
    for (size_t i = 0; i < len; i++)
        o[i] = (uint8_t)(w[i] >= t);
}

#ifdef FR_HAVE_AVX2_KERNELS
FR_AVX2 static void fr_mask_elems_avx2(const uint32_t *w, uint8_t *o, size_t len, uint32_t t)
{
    fr_mask_elems(w, o, len, t);
}
#endif

static void fr_mask_tile(const fr_job *job, size_t lo, size_t hi, uint32_t *buf)
{
    const uint32_t *w = fr_tile_words(job, lo, hi, buf, NULL);
    uint8_t *o = (uint8_t *)job->out + lo;
#ifdef FR_HAVE_AVX2_KERNELS
    if (job->avx2) {
        fr_mask_elems_avx2(w, o, hi - lo, job->threshold);
        return;
    }
#endif
    fr_mask_elems(w, o, hi - lo, job->threshold);
}

int fr_dropout_mask(uint64_t seed, uint64_t offset, uint32_t threshold, uint8_t *out, int64_t n)
{
    if (n < 0)
        return FR_ERR_SIZE;
    if (!out)
        return FR_ERR_NULL;
    if (n == 0)
        return FR_OK;
    fr_job job;
    fr_job_init(&job, seed, offset, (size_t)n);
    job.out = out;
    job.threshold = threshold;
    fr_run_tiles(&job, (size_t)n, fr_head(out, 1, (size_t)n), FR_TILE, fr_mask_tile);
    return FR_OK;
}

/* ------------------------------------------------------------------ dropout_mask_packed */

/* Tiles here count output bytes; byte k holds elements 8k .. 8k + 7. */

static inline __attribute__((always_inline)) void
fr_packed_elems(const uint32_t *w, uint8_t *o, size_t nbytes, uint32_t t)
{
    for (size_t k = 0; k < nbytes; k++) {
        unsigned byte = 0;
        for (unsigned j = 0; j < 8; j++)
            byte |= (unsigned)(w[8 * k + j] >= t) << j;
        o[k] = (uint8_t)byte;
    }
}

#ifdef FR_HAVE_AVX2_KERNELS
FR_AVX2 static void fr_packed_elems_avx2(const uint32_t *w, uint8_t *o, size_t nbytes, uint32_t t)
{
    const __m256i sign = _mm256_set1_epi32(INT32_MIN);
    const __m256i tv = _mm256_set1_epi32((int32_t)(t ^ UINT32_C(0x80000000)));
    size_t k = 0;
    for (; k + 4 <= nbytes; k += 4) {
        /* movemask: bit j = sign of lane j = "dropped" for element 8k + j */
        uint32_t d0 = (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(FR_DROP8(w + 8 * k)));
        uint32_t d1 = (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(FR_DROP8(w + 8 * k + 8)));
        uint32_t d2 = (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(FR_DROP8(w + 8 * k + 16)));
        uint32_t d3 = (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(FR_DROP8(w + 8 * k + 24)));
        uint32_t keep = ~(d0 | d1 << 8 | d2 << 16 | d3 << 24);
        memcpy(o + k, &keep, 4);  /* little-endian: byte k first */
    }
    for (; k < nbytes; k++) {
        uint32_t d = (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(FR_DROP8(w + 8 * k)));
        o[k] = (uint8_t)~d;
    }
}
#endif

static void fr_packed_tile(const fr_job *job, size_t lo, size_t hi, uint32_t *buf)
{
    /* bytes [lo, hi): elements 8 lo .. 8 hi - 1; those past n are cleared by the caller */
    uint64_t g = job->offset + 8 * (uint64_t)lo;
    const uint32_t *w = fr_words(job, g >> 2, (unsigned)(g & 3), 8 * (hi - lo), buf, NULL);
    uint8_t *o = (uint8_t *)job->out + lo;
#ifdef FR_HAVE_AVX2_KERNELS
    if (job->avx2) {
        fr_packed_elems_avx2(w, o, hi - lo, job->threshold);
        return;
    }
#endif
    fr_packed_elems(w, o, hi - lo, job->threshold);
}

int fr_dropout_mask_packed(uint64_t seed, uint64_t offset, uint32_t threshold, int64_t n,
                           uint8_t *out)
{
    if (n < 0)
        return FR_ERR_SIZE;
    if (!out)
        return FR_ERR_NULL;
    if (n == 0)
        return FR_OK;
    size_t nbytes = ((size_t)n + 7) / 8;
    fr_job job;
    fr_job_init(&job, seed, offset, (size_t)n);
    job.out = out;
    job.threshold = threshold;
    fr_run_tiles(&job, nbytes, 0, FR_TILE / 8, fr_packed_tile);
    if (n & 7)
        out[nbytes - 1] &= (uint8_t)((1u << (n & 7)) - 1);  /* pad bits: 0 */
    return FR_OK;
}

/* ------------------------------------------------------------------ group_dropout */

/* One keep flag per (n, c); a row r of the (N * M1 * C, M2) view has n = r / (M1 C),
 * c = r % C.  M2 == 1 (channels last) takes a loop over C instead, so that it vectorizes. */

static int fr_group_check(const void *x, const void *keep, const void *out, int64_t N,
                          int64_t M1, int64_t C, int64_t M2)
{
    if (N < 0 || M1 < 0 || C < 0 || M2 < 0)
        return FR_ERR_SIZE;
    if (!x || !keep || !out)
        return FR_ERR_NULL;
    return FR_OK;
}

#define FR_DEFINE_GROUP_DROPOUT(SUF, T)                                           \
    int fr_group_dropout_##SUF(const T *x, const uint8_t *keep, T scale, T *out,  \
                               int64_t N, int64_t M1, int64_t C, int64_t M2)      \
    {                                                                             \
        int status = fr_group_check(x, keep, out, N, M1, C, M2);                  \
        int64_t total = N * M1 * C * M2;                                          \
        if (status != FR_OK || total == 0)                                        \
            return status;                                                        \
        if (M2 == 1) {                                                            \
            const int64_t rows = N * M1;                                          \
            const int nt = fr_region_threads(rows);                               \
            FR_FOR(nt, int64_t r = 0, r < rows, r++, {                            \
                const uint8_t *k = keep + (r / M1) * C;                           \
                for (int64_t c = 0; c < C; c++)                                   \
                    out[r * C + c] = fr_sel_##SUF(x[r * C + c] * scale, k[c]);    \
            });                                                                   \
        } else {                                                                  \
            const int64_t rows = N * M1 * C;                                      \
            const int nt = fr_region_threads(rows);                               \
            FR_FOR(nt, int64_t r = 0, r < rows, r++, {                            \
                int k = keep[(r / (M1 * C)) * C + r % C];                         \
                for (int64_t m = 0; m < M2; m++)                                  \
                    out[r * M2 + m] = fr_sel_##SUF(x[r * M2 + m] * scale, k);     \
            });                                                                   \
        }                                                                         \
        return FR_OK;                                                             \
    }
FR_DEFINE_GROUP_DROPOUT(f32, float)
FR_DEFINE_GROUP_DROPOUT(f64, double)

/* ------------------------------------------------------------------ 16-bit conversions */

/* The staging passes of the 16-bit ops (float32 math, fastreg/_half.py): widen the uint16 bits
 * of a float16 (kind 0) / bfloat16 (kind 1) array to float32, and round float32 back. */
#ifdef FR_HAVE_F16C_KERNELS
/* float16 on CPUs with F16C (where the AVX2 loops run): the passes below convert runs of
 * eight through F16C (csrc/half.h, exact as the integer code), one run of at most 4096
 * elements, a multiple of 64, per loop iteration, so that nt threads share the elements. */
static int fr_half_f16c(int kind)
{
    return kind == FR_HALF_F16 && fr_get_isa() >= 1 && fr_cpu_has_f16c();
}

#endif

#if defined(FR_HAVE_F16C_KERNELS) || defined(FR_HAVE_BF16_AVX2)
static int64_t fr_half_run(int64_t n, int nt)
{
    int64_t run = ((n + nt - 1) / nt + 63) / 64 * 64;
    return run < 4096 ? run : 4096;
}

/* CONVERT(src + lo, out + lo, len) over the runs of fr_half_run, shared by the threads. */
#define FR_HALF_RUNS(CONVERT, src, out, n)                                               \
    do {                                                                                 \
        const int nt_ = fr_region_threads(n);                                            \
        const int64_t run_ = fr_half_run(n, nt_), runs_ = (n + run_ - 1) / run_;         \
        FR_FOR(nt_, int64_t r = 0, r < runs_, r++, {                                     \
            int64_t lo = r * run_, len = n - lo < run_ ? n - lo : run_;                  \
            CONVERT((src) + lo, (out) + lo, (size_t)len);                                \
        });                                                                              \
    } while (0)
#endif

#ifdef FR_HAVE_BF16_AVX2
/* bfloat16 where the AVX2 loops run: fr_narrow_half's runs rounded eight at a time
 * (fr_bf16x8_store; measured, 6.4M elements on one Zen 1 core: 4.8 -> 3.3 ms).  Widening is a
 * shift the compiler vectorizes already (the AVX2 copy measured no faster: 3.0 ms either way). */
static int fr_half_bf16_avx2(int kind)
{
    return kind == FR_HALF_BF16 && fr_get_isa() >= 1;
}
#endif

int fr_widen_half(const uint16_t *src, int kind, float *out, int64_t n)
{
    if (n < 0)
        return FR_ERR_SIZE;
    if (n == 0)
        return FR_OK;
    if (!src || !out)
        return FR_ERR_NULL;
#ifdef FR_HAVE_F16C_KERNELS
    if (fr_half_f16c(kind)) {
        FR_HALF_RUNS(fr_f16_widen_f16c, src, out, n);
        return FR_OK;
    }
#endif
    const int nt = fr_region_threads(n);
    if (kind == FR_HALF_BF16)
        FR_FOR(nt, int64_t i = 0, i < n, i++, { out[i] = fr_half_to_f32(src[i], FR_HALF_BF16); });
    else
        FR_FOR(nt, int64_t i = 0, i < n, i++, { out[i] = fr_half_to_f32(src[i], FR_HALF_F16); });
    return FR_OK;
}

int fr_narrow_half(const float *src, int kind, uint16_t *out, int64_t n)
{
    if (n < 0)
        return FR_ERR_SIZE;
    if (n == 0)
        return FR_OK;
    if (!src || !out)
        return FR_ERR_NULL;
#ifdef FR_HAVE_F16C_KERNELS
    if (fr_half_f16c(kind)) {
        FR_HALF_RUNS(fr_f16_narrow_f16c, src, out, n);
        return FR_OK;
    }
#endif
#ifdef FR_HAVE_BF16_AVX2
    if (fr_half_bf16_avx2(kind)) {
        FR_HALF_RUNS(fr_bf16_narrow_avx2, src, out, n);
        return FR_OK;
    }
#endif
    const int nt = fr_region_threads(n);
    if (kind == FR_HALF_BF16)
        FR_FOR(nt, int64_t i = 0, i < n, i++, { out[i] = fr_f32_to_half(src[i], FR_HALF_BF16); });
    else
        FR_FOR(nt, int64_t i = 0, i < n, i++, { out[i] = fr_f32_to_half(src[i], FR_HALF_F16); });
    return FR_OK;
}
