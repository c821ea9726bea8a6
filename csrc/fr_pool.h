/* fastreg's own thread pool (csrc/pool.c), for the elementwise kernels (fr_ew_run) and the
 * Philox stream's tiles (fr_run_tiles). */
#ifndef FASTREG_FR_POOL_H
#define FASTREG_FR_POOL_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* The monotonic clock in nanoseconds (the pool's timings, csrc/dropout.c's plan expiry; Python's
 * time.monotonic reads the same clock). */
static inline int64_t fr_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The most tasks a job may have (fr_pool_run runs a larger one serially). */
#define FR_POOL_MAX_TASKS ((size_t)0xFFFFF)

/* Runs task t of a job (0 <= t < ntasks); tasks write disjoint memory. */
typedef void (*fr_task_fn)(void *ctx, size_t t);

/* Runs fn(ctx, t) for every t in [0, ntasks) on up to nt threads (the caller is one) and returns
 * when all have run; serially on the calling thread for nt < 2, or while another thread's job
 * holds the pool. */
void fr_pool_run(int nt, fr_task_fn fn, void *ctx, size_t ntasks);

/* Whether a job of nt threads is worth them now: the calling thread borrows its OpenMP team
 * (csrc/pool.c), enough workers spin, or the previous
 * call that asked ended less than FR_POOL_BURST_NS ago, so that the wake (13-15 us of futex
 * syscall for the caller on this project's VMs) pays for the calls that follow, unless a wake
 * is already pending; and the pool is not backing off (csrc/pool.c: the cores were found
 * oversubscribed).  A call that asked
 * says when it ends: fr_pool_call_ended (through fr_pool_region_end, csrc/dropout.c). */
int fr_pool_burst(int nt);
void fr_pool_call_ended(void);
#define FR_POOL_BURST_NS 200000

/* Ends a call that took its count from fr_pool_region_threads (csrc/dropout.c). */
void fr_pool_region_end(void);

/* Threads for a job of `items` work items (csrc/dropout.c): the calling thread's hot count
 * (fr_set_pool_threads) while the pool is hot, else its count (fr_set_threads), capped as
 * fr_region_threads caps it. */
int fr_pool_region_threads(int64_t items);

#endif /* FASTREG_FR_POOL_H */
