/* Serial or parallel loops, decided at each call (fr_region_threads, csrc/dropout.c).
 *
 * GCC compiles `#pragma omp parallel if (0)` to a call of GOMP_parallel with one thread: the
 * OpenMP runtime is still entered (a team is set up, and in a child forked after a parallel
 * region that is where GNU OpenMP hangs).  So every loop here has two copies: the OpenMP one,
 * run when nt > 1, and a plain loop on the calling thread, which calls nothing of OpenMP
 * (checked with gdb breakpoints on every GOMP_* and omp_* function the module imports: none
 * is hit by dropout, l2_grad, group lasso, l1_penalty, rotation and noise below the grain).
 *
 *     const int nt = fr_region_threads(rows);
 *     FR_FOR(nt, int64_t r = 0, r < rows, r++, { ... body ... });
 *
 * runs `for (int64_t r = 0; r < rows; r++) body` as `#pragma omp parallel for
 * schedule(static) num_threads(nt)` or serially.  The body may contain commas and `continue`,
 * not preprocessor lines.  Loops that need per-thread buffers or another schedule write both
 * copies out (see fr_run_tiles in dropout.c).
 */
#ifndef FASTREG_FR_THREADS_H
#define FASTREG_FR_THREADS_H

#define FR_FOR(NT, INIT, COND, STEP, ...)                               \
    do {                                                                \
        const int fr_for_nt_ = (NT);                                    \
        if (fr_for_nt_ > 1) {                                           \
            _Pragma("omp parallel for schedule(static) num_threads(fr_for_nt_)") \
            for (INIT; COND; STEP)                                      \
                __VA_ARGS__                                             \
        } else {                                                        \
            for (INIT; COND; STEP)                                      \
                __VA_ARGS__                                             \
        }                                                               \
    } while (0)

#endif /* FASTREG_FR_THREADS_H */
