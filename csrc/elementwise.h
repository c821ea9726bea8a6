/* Shared machinery of the elementwise kernels (penalty.c, optim.c): the tile driver (on
 * fastreg's pool, csrc/pool.c), the run-time choice between portable and AVX2 element loops,
 * and streaming stores.
 *
 * An op defines its element loop once, as an always_inline function of its arguments struct
 * (with its branches as compile-time constant parameters), and wraps it twice with
 * FR_EW_RANGE_FNS: a portable copy and a copy compiled for AVX2 (target attribute, no
 * -march=native needed), and for a few ops an AVX-512 copy (FR_EW_RANGE_FNS_512).  All do the
 * same IEEE operations in the same order (the build has -ffp-contract=off, so no fused
 * multiply-add even where the target has FMA), so they give the same bits; fr_get_isa()
 * (csrc/dropout.c, also set_isa() in Python) picks one at each call.
 */
#ifndef FASTREG_ELEMENTWISE_H
#define FASTREG_ELEMENTWISE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "fastreg.h"
#include "fr_pool.h"
#include "fr_threads.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define FR_EW_X86 1
#include <immintrin.h>
#define FR_EW_AVX2 __attribute__((target("avx2")))
#define FR_EW_AVX512 __attribute__((target("avx2,avx512f,avx512vl,avx512bw,avx512dq")))
#endif

#define FR_INLINE static inline __attribute__((always_inline))

/* The reference's elementwise helpers, as per-dtype inline functions.  Every comparison and
 * every candidate value is computed unconditionally and the result picked by a bitwise select:
 * with ?: the compiler keeps branches around the compares and subtractions (under the default
 * -ftrapping-math it may not speculate them), and the loops would not vectorize. */
#define FR_DEFINE_EW_HELPERS(SUF, T, UT)                                                \
    /* c ? a : b, bitwise (UT: the unsigned integer as wide as T) */                    \
    FR_INLINE T fr_sel_##SUF(int c, T a, T b)                                           \
    {                                                                                   \
        UT ia, ib, m = (UT)0 - (UT)(c != 0);                                            \
        memcpy(&ia, &a, sizeof ia);                                                     \
        memcpy(&ib, &b, sizeof ib);                                                     \
        ia = (ia & m) | (ib & ~m);                                                      \
        memcpy(&a, &ia, sizeof a);                                                      \
        return a;                                                                       \
    }                                                                                   \
    /* np.sign: +1 / -1 for nonzero numbers, +0 for +-0 (numpy maps -0.0 to +0.0), the  \
     * NaN itself for a NaN */                                                          \
    FR_INLINE T fr_sgn_##SUF(T x)                                                       \
    {                                                                                   \
        int pos = x > 0, neg = x < 0, nan = x != x;                                     \
        T s = fr_sel_##SUF(pos, (T)1, (T)0);                                            \
        s = fr_sel_##SUF(neg, (T)-1, s);                                                \
        return fr_sel_##SUF(nan, x, s);                                                 \
    }                                                                                   \
    /* soft(x, t): x - t where x > t, x + t where x < -t (nt = -t), x where x is NaN,   \
     * else +0 */                                                                       \
    FR_INLINE T fr_soft_##SUF(T x, T t, T nt)                                           \
    {                                                                                   \
        int above = x > t, below = x < nt, nan = x != x;                                \
        T r = fr_sel_##SUF(nan, x, (T)0);                                               \
        r = fr_sel_##SUF(below, x + t, r);                                              \
        return fr_sel_##SUF(above, x - t, r);                                           \
    }
FR_DEFINE_EW_HELPERS(f32, float, uint32_t)
FR_DEFINE_EW_HELPERS(f64, double, uint64_t)

/* Tiles of this many output bytes are the tasks of a job (fr_ew_run); every tile but the first
 * starts on a 64-byte boundary of the output, so no cache line is written by two threads. */
#define FR_EW_TILE_BYTES ((size_t)64 << 10)
/* Streaming stores go through a per-thread buffer of this many bytes (stays in L1). */
#define FR_EW_BLOCK_BYTES ((size_t)4096)
/* An output at least this large, and not read by the op, is written with streaming stores in
 * the default ("auto") mode: it would not stay in the caches, and streaming saves the read of
 * each output line before it is written (write-allocate). */
#define FR_EW_STREAM_MIN_BYTES ((size_t)4 << 20)

/* An element loop over elements [lo, hi) of the op described by args; results that go to the
 * op's single output are written to dst[0 .. hi - lo) (the output itself, or a buffer). */
typedef void (*fr_ew_fn)(const void *args, void *dst, size_t lo, size_t hi);

typedef struct {
    fr_ew_fn portable, avx2;  /* avx2 may be NULL (not x86) */
    fr_ew_fn avx512;          /* NULL but for the ops defined with FR_EW_RANGE_FNS_512 */
} fr_ew_kernel;

/* Defines NAME (portable) and NAME##_avx2 around the statement BODY, which sees args, dst, lo,
 * hi; and FR_EW_KERNEL(NAME) makes the pair.  FR_EW_RANGE_FNS_512 and FR_EW_KERNEL_512 add an
 * AVX-512 copy (NAME##_avx512), for the loops whose arithmetic, not memory, bounds them: the
 * Adam step (a square root and two divisions per element: 46.4 -> 41.3 us for its kernel on
 * 1e5 float32, one thread, the Zen 4 VM; l2_grad's loop was 4% slower with it). */
#define FR_EW_RANGE_FNS(NAME, BODY) FR_EW_RANGE_FNS_(NAME, BODY)  /* NAME may be a macro call */
#define FR_EW_KERNEL(NAME) FR_EW_KERNEL_(NAME)
#define FR_EW_RANGE_FNS_512(NAME, BODY) FR_EW_RANGE_FNS_512_(NAME, BODY)
#define FR_EW_KERNEL_512(NAME) FR_EW_KERNEL_512_(NAME)
#ifdef FR_EW_X86
#define FR_EW_RANGE_FNS_(NAME, BODY)                                                       \
    static void NAME(const void *args, void *dst, size_t lo, size_t hi) { BODY; }          \
    FR_EW_AVX2 static void NAME##_avx2(const void *args, void *dst, size_t lo, size_t hi)  \
    {                                                                                      \
        BODY;                                                                              \
    }
#define FR_EW_KERNEL_(NAME) {NAME, NAME##_avx2, NULL}
#define FR_EW_RANGE_FNS_512_(NAME, BODY)                                                   \
    FR_EW_RANGE_FNS_(NAME, BODY)                                                           \
    FR_EW_AVX512 static void NAME##_avx512(const void *args, void *dst, size_t lo,         \
                                           size_t hi)                                      \
    {                                                                                      \
        BODY;                                                                              \
    }
#define FR_EW_KERNEL_512_(NAME) {NAME, NAME##_avx2, NAME##_avx512}
#else
#define FR_EW_RANGE_FNS_(NAME, BODY)  \
    static void NAME(const void *args, void *dst, size_t lo, size_t hi) { BODY; }
#define FR_EW_KERNEL_(NAME) {NAME, NULL, NULL}
#define FR_EW_RANGE_FNS_512_(NAME, BODY) FR_EW_RANGE_FNS_(NAME, BODY)
#define FR_EW_KERNEL_512_(NAME) FR_EW_KERNEL_(NAME)
#endif

/* The loop for the instruction set chosen now (fr_get_isa(): 2 AVX-512, 1 AVX2, 0 portable),
 * or the best one below it that the op has. */
static inline fr_ew_fn fr_ew_pick(fr_ew_kernel k)
{
    const int isa = fr_get_isa();
    if (k.avx512 && isa >= 2)
        return k.avx512;
    return (k.avx2 && isa >= 1) ? k.avx2 : k.portable;
}

/* Stream (in the default mode) only outputs that the op does not read and that are at least
 * min_bytes. */
static inline int fr_ew_want_stream_from(int out_is_read, size_t out_bytes, size_t min_bytes)
{
#ifdef FR_EW_X86
    switch (fr_get_stream_stores()) {
    case 0: return 0;
    case 2: return 1;
    default: return !out_is_read && out_bytes >= min_bytes;
    }
#else
    (void)out_is_read;
    (void)out_bytes;
    (void)min_bytes;
    return 0;
#endif
}

/* The same from FR_EW_STREAM_MIN_BYTES. */
static inline int fr_ew_want_stream(int out_is_read, size_t out_bytes)
{
    return fr_ew_want_stream_from(out_is_read, out_bytes, FR_EW_STREAM_MIN_BYTES);
}

/* Copies bytes from src to dst, with streaming stores where dst is 16-byte aligned. */
static inline void fr_ew_stream_copy(void *dst, const void *src, size_t bytes)
{
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
#ifdef FR_EW_X86
    size_t head = (16 - ((uintptr_t)d & 15)) & 15;
    if (head > bytes)
        head = bytes;
    memcpy(d, s, head);
    d += head, s += head, bytes -= head;
    for (; bytes >= 64; d += 64, s += 64, bytes -= 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)s);
        __m128i b = _mm_loadu_si128((const __m128i *)(s + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(s + 32));
        __m128i e = _mm_loadu_si128((const __m128i *)(s + 48));
        _mm_stream_si128((__m128i *)d, a);
        _mm_stream_si128((__m128i *)(d + 16), b);
        _mm_stream_si128((__m128i *)(d + 32), c);
        _mm_stream_si128((__m128i *)(d + 48), e);
    }
    for (; bytes >= 16; d += 16, s += 16, bytes -= 16)
        _mm_stream_si128((__m128i *)d, _mm_loadu_si128((const __m128i *)s));
#endif
    memcpy(d, s, bytes);
}

#ifdef FR_EW_X86
/* The same with 32-byte streaming stores (measured: 97 against 84 GB/s for 16-byte ones, in an
 * out-of-place kernel over 2^24 float32 on 2 threads). */
FR_EW_AVX2 static void fr_ew_stream_copy_avx2(void *dst, const void *src, size_t bytes)
{
    unsigned char *d = (unsigned char *)dst;
    const unsigned char *s = (const unsigned char *)src;
    size_t head = (32 - ((uintptr_t)d & 31)) & 31;
    if (head > bytes)
        head = bytes;
    memcpy(d, s, head);
    d += head, s += head, bytes -= head;
    for (; bytes >= 64; d += 64, s += 64, bytes -= 64) {
        __m256i a = _mm256_loadu_si256((const __m256i *)s);
        __m256i b = _mm256_loadu_si256((const __m256i *)(s + 32));
        _mm256_stream_si256((__m256i *)d, a);
        _mm256_stream_si256((__m256i *)(d + 32), b);
    }
    memcpy(d, s, bytes);
}
#endif

/* Elements before `out` reaches a 64-byte boundary (0 if out is not itemsize-aligned). */
static inline size_t fr_ew_head(const void *out, size_t itemsize, size_t n)
{
    uintptr_t a = (uintptr_t)out;
    if (out == NULL || a % itemsize)
        return 0;
    size_t h = ((64 - (a & 63)) & 63) / itemsize;
    return h < n ? h : n;
}

/* Tile t of fr_ew_run (tile 0 up to out's first 64-byte boundary, then tiles of `tile`). */
static inline void fr_ew_tile(fr_ew_fn fn, void (*copy)(void *, const void *, size_t),
                              const void *args, unsigned char *o, size_t itemsize, size_t n,
                              size_t head, size_t tile, int stream, size_t t, unsigned char *buf)
{
    size_t lo = t == 0 ? 0 : head + (t - 1) * tile;
    size_t hi = t == 0 ? head : (head + t * tile < n ? head + t * tile : n);
    if (lo >= hi)
        return;
    if (!stream) {
        fn(args, o ? o + lo * itemsize : NULL, lo, hi);
        return;
    }
    const size_t block = FR_EW_BLOCK_BYTES / itemsize;
    for (size_t k = lo; k < hi; k += block) {
        size_t e = hi - k < block ? hi : k + block;
        fn(args, buf, k, e);
        copy(o + k * itemsize, buf, (e - k) * itemsize);
    }
}

/* One job of fr_ew_run: task t is tile t. */
typedef struct {
    fr_ew_fn fn;
    void (*copy)(void *, const void *, size_t);
    const void *args;
    unsigned char *o;
    size_t itemsize, n, head, tile;
    int stream;
} fr_ew_job;

static void fr_ew_task(void *ctx, size_t t)
{
    const fr_ew_job *j = (const fr_ew_job *)ctx;
    _Alignas(64) unsigned char buf[FR_EW_BLOCK_BYTES];
    fr_ew_tile(j->fn, j->copy, j->args, j->o, j->itemsize, j->n, j->head, j->tile, j->stream, t,
               buf);
#ifdef FR_EW_X86
    if (j->stream)
        _mm_sfence();  /* order this task's streaming stores before the job ends */
#endif
}

/* Runs fn over elements [0, n): tile 0 up to out's first 64-byte boundary, then tiles of
 * FR_EW_TILE_BYTES of output; on fastreg's pool (csrc/pool.c: each thread a contiguous run of
 * tiles, and a late thread's run is taken by the others), or on the calling thread alone when
 * fr_pool_region_threads says 1.  out: the op's single output (NULL for ops whose loop writes
 * its arrays itself; stream must then be 0).  stream: results go through an L1 buffer and reach
 * out with streaming stores. */
static inline void fr_ew_run(fr_ew_kernel kernel, const void *args, void *out, size_t itemsize,
                             size_t n, int stream)
{
    if (n == 0)
        return;
    fr_ew_job job = {fr_ew_pick(kernel), fr_ew_stream_copy, args, (unsigned char *)out,
                     itemsize, n, fr_ew_head(out, itemsize, n), FR_EW_TILE_BYTES / itemsize,
                     stream};
#ifdef FR_EW_X86
    if (job.fn == kernel.avx2)
        job.copy = fr_ew_stream_copy_avx2;
#endif
    size_t ntiles = 1 + (n - job.head + job.tile - 1) / job.tile;
    /* work items: 64-byte lines (plan() has decided that the work is worth the threads; below
     * 2 tiles per thread, a thread then takes runs of whole lines) */
    int nt = fr_pool_region_threads((int64_t)(n / (64 / itemsize)));
    /* other tiles, of a 1 / parts share in whole lines: with fewer than 2 tiles per thread,
     * 2 per thread (a thread that comes late leaves half as much to the others); over 64 GiB
     * of output, larger ones (a job has at most FR_POOL_MAX_TASKS tasks) */
    size_t parts = 0;
    if (nt > 1 && ntiles < 2 * (size_t)nt)
        parts = 2 * (size_t)nt;
    else if (nt > 1 && ntiles > FR_POOL_MAX_TASKS)
        parts = FR_POOL_MAX_TASKS - 1;
    if (parts) {
        size_t line = 64 / itemsize;
        job.tile = ((n - job.head + parts - 1) / parts + line - 1) / line * line;
        ntiles = 1 + (n - job.head + job.tile - 1) / job.tile;
    }
    fr_pool_run(nt, fr_ew_task, &job, ntiles);
    fr_pool_region_end();
}

#endif /* FASTREG_ELEMENTWISE_H */
