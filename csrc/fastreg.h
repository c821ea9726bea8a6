/* The C backend's entry points: plain declarations, read both by ffi.cdef (after
 * csrc/ffi_build.py strips the preprocessor lines) and by the compiler.
 *
 * Every kernel returns FR_OK (0) or a nonzero status for bad arguments (a NULL pointer, a
 * negative size).  Arrays are contiguous; n counts elements.  Element i of a stream op uses
 * stream word offset + i only, whatever the number of OpenMP threads.  Exact definitions:
 * fastreg/reference/.
 */
#ifndef FASTREG_H
#define FASTREG_H
#include <stdint.h>

enum {
    FR_OK = 0,
    FR_ERR_NULL = 1,         /* a required pointer is NULL */
    FR_ERR_SIZE = 2,         /* a negative size */
    FR_ERR_UNSUPPORTED = 3,  /* e.g. asking for AVX2 kernels on a CPU without AVX2 */
    FR_ERR_ALLOC = 4         /* out of memory for a work buffer */
};

/* Instruction set of the stream kernels: 0 portable C, 1 AVX2, 2 AVX-512 (the Philox generator
 * on AVX-512F/DQ/BW/VL, element loops as AVX2); the default is the best the CPU has. */
int fr_cpu_has_avx2(void);
int fr_cpu_has_avx512(void);
int fr_get_isa(void);
int fr_set_isa(int isa);

/* Streaming (non-temporal) stores for large outputs: 0 never, 1 auto (large and not in place,
 * the default), 2 always where the output can be aligned (also in place; for measurements). */
int fr_get_stream_stores(void);
int fr_set_stream_stores(int mode);

int fr_omp_max_threads(void);

/* Threads (csrc/dropout.c).  Every kernel of this library (batch norm too) reads the thread
 * count of the calling thread (thread-local, default 1), set by the Python wrapper right before
 * the call from fastreg._threads.plan: 1 runs the kernel serially on the calling thread without
 * any call into the OpenMP runtime (safe in a forked child); n > 1 opens one parallel region of
 * min(n, omp_get_max_threads(), work items) threads.  fr_set_threads: FR_ERR_SIZE for n < 1. */
int fr_set_threads(int n);
int fr_get_threads(void);
/* The threads a parallel region over `items` independent work items uses now (1: serial). */
int fr_region_threads(int64_t items);
/* Parallel regions entered so far by the kernels above (for tests: which path ran). */
int64_t fr_parallel_regions(void);

/* fastreg's own pool (csrc/pool.c), which runs the elementwise kernels (penalties, prox steps,
 * optimizer steps) and the Philox stream's tiles (dropout, masks, uniform).  fr_set_pool_threads(n, n_hot): the calling thread's counts for the next
 * kernel when the pool's workers sleep (n; as fr_set_threads) and when they spin (n_hot).
 * fr_pool_set_spin_ns: how long a worker spins after a job before it sleeps (< 0: forever).
 * fr_pool_stats: out[0], out[1] the jobs run so far with the workers asleep / spinning at the
 * start; out[2], out[3], out[4] the back-offs (csrc/pool.c) after a preempted worker / missed
 * jobs / a call that waited for a preempted worker's task; out[5] the jobs run on their calling
 * threads' OpenMP teams instead (all threads); out[6] those of them that started or ended late
 * (borrowing then pauses, unless that one is let pass: csrc/pool.c FR_POOL_OMP_FORGIVE).
 * fr_pool_set_omp_borrow(on): after missed jobs, run jobs on the OpenMP team while the pool
 * backs off (for a runtime whose team spins long after its regions, as when torch loaded it
 * first: that team's spinning threads are what takes the workers' CPUs). */
int fr_set_pool_threads(int n, int n_hot);
int fr_get_hot_threads(void);   /* n_hot as set (for tests) */
/* The same counts planned here, for the pool's op families (fastreg.c._plan; the rule of
 * fastreg._threads.plan, for the workers asleep and spinning: 1 below two grains, else
 * min(limit, work / grain)).  grain, spin_grain: the family's GRAIN and SPIN_GRAIN; spinning:
 * the OpenMP team spins (the cold count takes the smaller grain); pool_spins: the pool's workers
 * spin after a job (the hot count does).  limit: fastreg._threads.get_num_threads() of the
 * calling thread, kept by fr_plan_limit with the settings it was read with (gen:
 * fastreg._threads.settings_gen(); the thread's threads(n) and set_num_threads values as
 * passed, 0 for none; whether this is a fork child that runs serially) and until_ns (monotonic
 * clock; the affinity read's age limit).  Returns the larger count (set for the next kernel),
 * -1 when work needs the limit and the one kept does not stand (the caller reads it and passes
 * it to fr_plan_limit), -2 for a grain below 1. */
int fr_plan_pool(int64_t work, int64_t grain, int64_t spin_grain, int spinning, int pool_spins,
                 int64_t gen, int64_t override, int64_t fixed, int forked);
int fr_plan_limit(int64_t limit, int64_t until_ns, int64_t gen, int64_t override, int64_t fixed,
                  int forked);
int fr_pool_set_spin_ns(int64_t ns);
int fr_pool_set_omp_borrow(int on);
/* For tests: the calling thread's jobs run on its OpenMP team for the next ns (0: stop);
 * forced: whatever fr_pool_set_omp_borrow says, else as after missed jobs. */
int fr_pool_borrow_ns(int64_t ns, int forced);
/* For tests: the calling thread's next n borrowed jobs count as late (as a team thread that lost
 * its CPU), whatever their timing, after `good` good ones in a row; fr_pool_borrowing: whether
 * its jobs run on its OpenMP team now. */
int fr_pool_borrow_late(int n, int good);
int fr_pool_borrowing(void);
void fr_pool_stats(int64_t *out);

/* ctr (n, 4), key (n, 2), out (n, 4), uint32 */
int fr_philox4x32(const uint32_t *ctr, const uint32_t *key, uint32_t *out, int64_t n);

/* out[i] = stream word offset + i */
int fr_random_bits(uint64_t seed, uint64_t offset, uint32_t *out, int64_t n);

/* float32: (w[offset + i] >> 8) * 2**-24;
 * float64: u = w[2(offset + i)] | w[2(offset + i) + 1] << 32, value (u >> 11) * 2**-53 */
int fr_uniform_f32(uint64_t seed, uint64_t offset, float *out, int64_t n);
int fr_uniform_f64(uint64_t seed, uint64_t offset, double *out, int64_t n);

/* out[i] = w[offset + i] >= threshold ? x[i] * scale : +0.0; out may be x */
int fr_dropout_f32(const float *x, uint64_t seed, uint64_t offset, uint32_t threshold,
                   float scale, float *out, int64_t n);
int fr_dropout_f64(const double *x, uint64_t seed, uint64_t offset, uint32_t threshold,
                   double scale, double *out, int64_t n);
/* The same on 16-bit x and out (uint16 bits, kind 0 float16 / 1 bfloat16, csrc/half.h): the
 * float32 result on the widened x, rounded to nearest even, in one pass */
int fr_dropout_half(const uint16_t *x, int kind, uint64_t seed, uint64_t offset,
                    uint32_t threshold, float scale, uint16_t *out, int64_t n);

/* out[i] = w[offset + i] >= threshold (1 kept, 0 dropped), one byte each */
int fr_dropout_mask(uint64_t seed, uint64_t offset, uint32_t threshold, uint8_t *out, int64_t n);

/* bit j of out[k] = keep(8k + j), for n elements; out has (n + 7) / 8 bytes, pad bits 0 */
int fr_dropout_mask_packed(uint64_t seed, uint64_t offset, uint32_t threshold, int64_t n,
                           uint8_t *out);

/* 16-bit floats as uint16 bits, kind 0 float16 / 1 bfloat16 (csrc/half.h): out = float32(src);
 * out = src rounded to nearest even */
int fr_widen_half(const uint16_t *src, int kind, float *out, int64_t n);
int fr_narrow_half(const float *src, int kind, uint16_t *out, int64_t n);

/* x, out (N, M1, C, M2); keep (N, C), nonzero = kept: out = keep[n, c] ? x * scale : +0.0 */
int fr_group_dropout_f32(const float *x, const uint8_t *keep, float scale, float *out,
                         int64_t N, int64_t M1, int64_t C, int64_t M2);
int fr_group_dropout_f64(const double *x, const uint8_t *keep, double scale, double *out,
                         int64_t N, int64_t M1, int64_t C, int64_t M2);

/* ------------------------------------------------------------------ penalties (csrc/penalty.c)
 * Elementwise ops below use the AVX2 element loops where fr_get_isa() says so (same bits either
 * way) and, for an output they do not read, the streaming-store setting above.  Reductions
 * (penalty_sums, group_lasso's norms) accumulate in double, not in the reference's order
 * (penalty_sums: the same result for any number of threads). */

/* *sum_abs = sum |w|, *sum_sq = sum w**2 */
int fr_penalty_sums_f32(const float *w, int64_t n, double *sum_abs, double *sum_sq);
int fr_penalty_sums_f64(const double *w, int64_t n, double *sum_abs, double *sum_sq);

/* g = l1 * sgn(w) if c2 == 0, c2 * w if l1 == 0, else l1 * sgn(w) + c2 * w;
 * out = accumulate ? out + g : g.  out may be w. */
int fr_penalty_grad_f32(const float *w, float l1, float c2, float *out, int accumulate, int64_t n);
int fr_penalty_grad_f64(const double *w, double l1, double c2, double *out, int accumulate,
                        int64_t n);

/* out = s * soft(w, t); out may be w */
int fr_soft_threshold_f32(const float *w, float t, float s, float *out, int64_t n);
int fr_soft_threshold_f64(const double *w, double t, double s, double *out, int64_t n);
/* penalty_grad and soft_threshold on float16 (kind 0) / bfloat16 (kind 1) arrays, given as their
 * uint16 bits, in one pass (float32 math on each element, rounded to nearest even: the bits of
 * the conversion passes around the float32 kernel); out may be w. */
int fr_penalty_grad_half(const uint16_t *w, int kind, float l1, float c2, uint16_t *out,
                         int accumulate, int64_t n);
int fr_soft_threshold_half(const uint16_t *w, int kind, float t, float s, uint16_t *out,
                           int64_t n);

/* w, out (A, L, B): group w[a, :, b] times (T)max(0, 1 - t / ||group||); out may be w.
 * t is double for both dtypes: the norm, its comparison with t and the factor are float64 math
 * (a float32 t would round the threshold, and zero or keep the wrong groups). */
int fr_group_lasso_f32(const float *w, double t, float *out, int64_t A, int64_t L, int64_t B);
int fr_group_lasso_f64(const double *w, double t, double *out, int64_t A, int64_t L, int64_t B);

/* *result = 1 if no element is NaN or inf, else 0 */
int fr_all_finite_f32(const float *a, int64_t n, int *result);
int fr_all_finite_f64(const double *a, int64_t n, int *result);

/* ------------------------------------------------------------------ optimizers (csrc/optim.c)
 * One step, in place on p and the state arrays; buf == NULL: no momentum; vmax == NULL: no
 * AMSGrad.  Bools are ints (nonzero = true).  The gradient is first multiplied by gscale
 * (gradient clipping's factor; g itself when gscale == 1). */
int fr_sgd_step_f32(float *p, const float *g, float *buf, float lr, float wd, float decay,
                    float momentum, float damp1, int nesterov, int first, float l1t, float gscale,
                    int64_t n);
int fr_sgd_step_f64(double *p, const double *g, double *buf, double lr, double wd, double decay,
                    double momentum, double damp1, int nesterov, int first, double l1t,
                    double gscale, int64_t n);

int fr_adam_step_f32(float *p, const float *g, float *m, float *v, float *vmax, float wd,
                     float decay, float omb1, float beta2, float omb2, float eps,
                     float step_size, float bc2_sqrt, float gscale, int64_t n);
int fr_adam_step_f64(double *p, const double *g, double *m, double *v, double *vmax, double wd,
                     double decay, double omb1, double beta2, double omb2, double eps,
                     double step_size, double bc2_sqrt, double gscale, int64_t n);

/* Lists of parameters of one dtype in one call: parameter k has n[k] elements, its arrays at
 * addr[3k ..] (SGD: p, g, buf) or addr[5k ..] (Adam: p, g, m, v, vmax; 0 for NULL) and its
 * scalars at s[4k ..] (SGD: wd, decay, l1t, first as 0 / 1; Adam: wd, decay, step_size,
 * bc2_sqrt); each step as the single-array call (the same bits).  All are checked first. */
int fr_sgd_multi_f32(const uintptr_t *addr, const int64_t *n, const float *s, int64_t count,
                     float lr, float momentum, float damp1, int nesterov, float gscale);
int fr_sgd_multi_f64(const uintptr_t *addr, const int64_t *n, const double *s, int64_t count,
                     double lr, double momentum, double damp1, int nesterov, double gscale);
int fr_adam_multi_f32(const uintptr_t *addr, const int64_t *n, const float *s, int64_t count,
                      float omb1, float beta2, float omb2, float eps, float gscale);
int fr_adam_multi_f64(const uintptr_t *addr, const int64_t *n, const double *s, int64_t count,
                      double omb1, double beta2, double omb2, double eps, double gscale);

/* 16-bit parameters and / or gradients (uint16 bits; kinds 0 float16, 1 bfloat16, 2 float32,
 * csrc/half.h), float32 math and float32 state (buf, m, v, vmax): the float32 step, with each
 * 16-bit array read (and the parameter written, rounded to nearest even) once.  Kinds: one
 * 16-bit type, or float32 with one 16-bit type (else FR_ERR_UNSUPPORTED). */
int fr_sgd_step_half(void *p, int pkind, const void *g, int gkind, float *buf, float lr,
                     float wd, float decay, float momentum, float damp1, int nesterov, int first,
                     float l1t, float gscale, int64_t n);
int fr_adam_step_half(void *p, int pkind, const void *g, int gkind, float *m, float *v,
                      float *vmax, float wd, float decay, float omb1, float beta2, float omb2,
                      float eps, float step_size, float bc2_sqrt, float gscale, int64_t n);

/* ------------------------------------------------------------------ batch norm (csrc/batchnorm.c)
 * x, y, gy, residual, out, gx, gres: (A, C, B) contiguous, channel c = x[:, c, :]; per-channel
 * arrays (C,); statistics and sums double.  Optional arrays are NULL: residual, y (the ReLU
 * output, for the backward mask), gres, weight / bias (1 / 0), b and d of backward_apply
 * (inference).  out may be x, gx may be gy.  Bools are ints.  Exact definitions:
 * fastreg/reference/batchnorm.py; sums in double in a fixed order (no dependence on the number
 * of threads), shifted for the statistics by the mean of each channel's first few elements (0
 * if not finite).  Threads as the other kernels (fr_set_threads): each phase of an op (reduce,
 * apply) is one parallel region of fr_region_threads(work items), or none.  An array not
 * aligned for its element type: FR_ERR_UNSUPPORTED, before any work. */
int fr_bn_stats_f32(const float *x, double *mean, double *m2, int64_t A, int64_t C, int64_t B);
int fr_bn_stats_f64(const double *x, double *mean, double *m2, int64_t A, int64_t C, int64_t B);

/* out = act((x - center) * scale + shift [+ residual]) */
int fr_bn_apply_f32(const float *x, const float *center, const float *scale, const float *shift,
                    const float *residual, int relu, float *out, int64_t A, int64_t C,
                    int64_t B);
int fr_bn_apply_f64(const double *x, const double *center, const double *scale,
                    const double *shift, const double *residual, int relu, double *out,
                    int64_t A, int64_t C, int64_t B);

/* statistics, then out as bn_apply with center = mean, scale = w * invstd, shift = b */
int fr_bn_forward_train_f32(const float *x, const float *weight, const float *bias, double eps,
                            const float *residual, int relu, float *out, double *mean,
                            double *m2, double *invstd, int64_t A, int64_t C, int64_t B);
int fr_bn_forward_train_f64(const double *x, const double *weight, const double *bias,
                            double eps, const double *residual, int relu, double *out,
                            double *mean, double *m2, double *invstd, int64_t A, int64_t C,
                            int64_t B);

/* s_dy = sum g, s_dyx = sum g * (x - center); g = gy, or gy where y > 0 */
int fr_bn_backward_reduce_f32(const float *gy, const float *x, const float *y,
                              const double *center, double *s_dy, double *s_dyx, int64_t A,
                              int64_t C, int64_t B);
int fr_bn_backward_reduce_f64(const double *gy, const double *x, const double *y,
                              const double *center, double *s_dy, double *s_dyx, int64_t A,
                              int64_t C, int64_t B);

/* gres = g; gx = g * a - (x - center) * b - d, or g * a when b is NULL */
int fr_bn_backward_apply_f32(const float *gy, const float *x, const float *y, const float *center,
                             const float *a, const float *b, const float *d, float *gx,
                             float *gres, int64_t A, int64_t C, int64_t B);
int fr_bn_backward_apply_f64(const double *gy, const double *x, const double *y,
                             const double *center, const double *a, const double *b,
                             const double *d, double *gx, double *gres, int64_t A, int64_t C,
                             int64_t B);

/* backward_reduce, the coefficients (and grad_weight, grad_bias), backward_apply */
int fr_bn_backward_f32(const float *gy, const float *x, const float *y, const double *mean,
                       const double *invstd, const float *weight, int training, float *gx,
                       float *gres, float *grad_weight, float *grad_bias, int64_t A, int64_t C,
                       int64_t B);
int fr_bn_backward_f64(const double *gy, const double *x, const double *y, const double *mean,
                       const double *invstd, const double *weight, int training, double *gx,
                       double *gres, double *grad_weight, double *grad_bias, int64_t A,
                       int64_t C, int64_t B);

/* The work split of an (A, C, B) op with itemsize-byte elements whose reduction reads nred
 * arrays (1 statistics, 2 backward, 3 backward with the ReLU mask), for tests: info[0] row
 * layout, [1] fused per channel, [2] chunks per channel (or row chunks), [3] rows per chunk,
 * [4] pieces per row, [5] column blocks. */
int fr_bn_plan_info(int64_t A, int64_t C, int64_t B, int64_t itemsize, int64_t nred,
                    int64_t *info);

/* How the channel layout (B * itemsize >= 64) runs forward training and backward: 0 auto,
 * 1 whole channels per thread, 2 the threads share each channel, 3 two passes over the data
 * (the same bits every way; for tests and measurements).  Returns the previous, or -1 for an
 * unknown value (nothing changed). */
int fr_bn_set_channel_strategy(int strategy);

/* Per-channel ops, (C,) arrays, float64 math as the reference's (the same bits).
 * forward_coeffs: mean, m2 double when stats_f64, else in the dtype; var = m2 / count,
 * invstd = 1 / sqrt(var + eps), scale = w * invstd, center = fold ? 0 : mean,
 * shift = fold ? b - mean * scale : b.  saved_mean may be mean. */
int fr_bn_forward_coeffs_f32(const void *mean, const void *m2, int stats_f64, double count,
                             const float *weight, const float *bias, double eps, int fold,
                             double *saved_mean, double *invstd, float *center, float *scale,
                             float *shift, int64_t C);
int fr_bn_forward_coeffs_f64(const void *mean, const void *m2, int stats_f64, double count,
                             const double *weight, const double *bias, double eps, int fold,
                             double *saved_mean, double *invstd, double *center, double *scale,
                             double *shift, int64_t C);
/* r = (1 - momentum) * r + momentum * batch (running_var: the unbiased m2 / (count - 1));
 * either running array may be NULL */
int fr_bn_running_update_f32(const double *mean, const double *m2, int64_t count,
                             double momentum, float *running_mean, float *running_var,
                             int64_t C);
int fr_bn_running_update_f64(const double *mean, const double *m2, int64_t count,
                             double momentum, double *running_mean, double *running_var,
                             int64_t C);
/* fr_bn_forward_train, then fr_bn_running_update with count A * B (not for A * B == 0), in one
 * call: the common training step */
int fr_bn_forward_train_running_f32(const float *x, const float *weight, const float *bias,
                                    double eps, const float *residual, int relu, float *out,
                                    double *mean, double *m2, double *invstd,
                                    float *running_mean, float *running_var, double momentum,
                                    int64_t A, int64_t C, int64_t B);
int fr_bn_forward_train_running_f64(const double *x, const double *weight, const double *bias,
                                    double eps, const double *residual, int relu, double *out,
                                    double *mean, double *m2, double *invstd,
                                    double *running_mean, double *running_var, double momentum,
                                    int64_t A, int64_t C, int64_t B);

/* The common inference call: fr_bn_forward_coeffs(running_mean, running_var, stats_f64 0,
 * count 1, weight, bias, eps, fold 1, saved_mean, invstd, ...) into a buffer of its own, then
 * fr_bn_apply with those coefficients, in one call (the two ops' bits) */
int fr_bn_forward_infer_f32(const float *x, const float *running_mean, const float *running_var,
                            const float *weight, const float *bias, double eps,
                            const float *residual, int relu, float *out, double *saved_mean,
                            double *invstd, int64_t A, int64_t C, int64_t B);
int fr_bn_forward_infer_f64(const double *x, const double *running_mean,
                            const double *running_var, const double *weight, const double *bias,
                            double eps, const double *residual, int relu, double *out,
                            double *saved_mean, double *invstd, int64_t A, int64_t C, int64_t B);

/* The same ops on 16-bit big arrays (x, gy, y, residual, out, gx, gres as uint16 bits, _f16
 * float16, _bf16 bfloat16; csrc/half.h) with float32 per-channel arrays (weight, bias, center,
 * scale, shift, a, b, d, grad_weight, grad_bias, running statistics): each element is widened
 * exactly when read and the result rounded to nearest even when written, the float32 op's
 * arithmetic and order of sums in between: the bits of the float32 op on the widened arrays,
 * rounded (fastreg/_half.py's conversion passes), in one pass. */
int fr_bn_stats_f16(const uint16_t *x, double *mean, double *m2, int64_t A, int64_t C,
                    int64_t B);
int fr_bn_stats_bf16(const uint16_t *x, double *mean, double *m2, int64_t A, int64_t C,
                     int64_t B);
int fr_bn_apply_f16(const uint16_t *x, const float *center, const float *scale,
                    const float *shift, const uint16_t *residual, int relu, uint16_t *out,
                    int64_t A, int64_t C, int64_t B);
int fr_bn_apply_bf16(const uint16_t *x, const float *center, const float *scale,
                     const float *shift, const uint16_t *residual, int relu, uint16_t *out,
                     int64_t A, int64_t C, int64_t B);
int fr_bn_forward_train_f16(const uint16_t *x, const float *weight, const float *bias,
                            double eps, const uint16_t *residual, int relu, uint16_t *out,
                            double *mean, double *m2, double *invstd, int64_t A, int64_t C,
                            int64_t B);
int fr_bn_forward_train_bf16(const uint16_t *x, const float *weight, const float *bias,
                             double eps, const uint16_t *residual, int relu, uint16_t *out,
                             double *mean, double *m2, double *invstd, int64_t A, int64_t C,
                             int64_t B);
int fr_bn_backward_reduce_f16(const uint16_t *gy, const uint16_t *x, const uint16_t *y,
                              const double *center, double *s_dy, double *s_dyx, int64_t A,
                              int64_t C, int64_t B);
int fr_bn_backward_reduce_bf16(const uint16_t *gy, const uint16_t *x, const uint16_t *y,
                               const double *center, double *s_dy, double *s_dyx, int64_t A,
                               int64_t C, int64_t B);
int fr_bn_backward_apply_f16(const uint16_t *gy, const uint16_t *x, const uint16_t *y,
                             const float *center, const float *a, const float *b,
                             const float *d, uint16_t *gx, uint16_t *gres, int64_t A,
                             int64_t C, int64_t B);
int fr_bn_backward_apply_bf16(const uint16_t *gy, const uint16_t *x, const uint16_t *y,
                              const float *center, const float *a, const float *b,
                              const float *d, uint16_t *gx, uint16_t *gres, int64_t A,
                              int64_t C, int64_t B);
int fr_bn_backward_f16(const uint16_t *gy, const uint16_t *x, const uint16_t *y,
                       const double *mean, const double *invstd, const float *weight,
                       int training, uint16_t *gx, uint16_t *gres, float *grad_weight,
                       float *grad_bias, int64_t A, int64_t C, int64_t B);
int fr_bn_backward_bf16(const uint16_t *gy, const uint16_t *x, const uint16_t *y,
                        const double *mean, const double *invstd, const float *weight,
                        int training, uint16_t *gx, uint16_t *gres, float *grad_weight,
                        float *grad_bias, int64_t A, int64_t C, int64_t B);
int fr_bn_forward_train_running_f16(const uint16_t *x, const float *weight, const float *bias,
                                    double eps, const uint16_t *residual, int relu,
                                    uint16_t *out, double *mean, double *m2, double *invstd,
                                    float *running_mean, float *running_var, double momentum,
                                    int64_t A, int64_t C, int64_t B);
int fr_bn_forward_train_running_bf16(const uint16_t *x, const float *weight, const float *bias,
                                     double eps, const uint16_t *residual, int relu,
                                     uint16_t *out, double *mean, double *m2, double *invstd,
                                     float *running_mean, float *running_var, double momentum,
                                     int64_t A, int64_t C, int64_t B);

/* ------------------------------------------------------------------ image augmentation
 * (csrc/augment.c; contract: fastreg/reference/augment.py).  Images are (M, H, W, C)
 * contiguous; P = bytes per pixel; mats (M, 2, 3) float64 inverse maps; rects (M, 4) int64
 * (y0, x0, h, w); flags uint8; partner int64; border 0 constant, 1 reflect.  Bit-identical to
 * the reference for any thread count and ISA. */
int fr_aug_flip(const uint8_t *x, const uint8_t *hflip, const uint8_t *vflip, uint8_t *out,
                int64_t M, int64_t H, int64_t W, int64_t P);
int fr_aug_affine_u8(const uint8_t *x, const double *mats, int border, int fill, uint8_t *out,
                     int64_t M, int64_t H, int64_t W, int64_t C, int64_t Ho, int64_t Wo);
int fr_aug_affine_f32(const float *x, const double *mats, int border, float fill, float *out,
                      int64_t M, int64_t H, int64_t W, int64_t C, int64_t Ho, int64_t Wo);
/* fill: one value of itemsize bytes */
int fr_aug_affine_nearest(const void *x, const double *mats, int border, const void *fill,
                          void *out, int64_t M, int64_t H, int64_t W, int64_t C, int64_t Ho,
                          int64_t Wo, int64_t itemsize);
/* x, out (N, L); out may be x */
int fr_aug_noise_u8(const uint8_t *x, uint64_t key, uint64_t first, const float *stds,
                    uint8_t *out, int64_t N, int64_t L);
int fr_aug_noise_f32(const float *x, uint64_t key, uint64_t first, const float *stds, float *out,
                     int64_t N, int64_t L);
/* value: one value of itemsize bytes; out may be x */
int fr_aug_erase(const void *x, const int64_t *rects, const void *value, void *out, int64_t M,
                 int64_t H, int64_t W, int64_t C, int64_t itemsize);
int fr_aug_mix_u8(const uint8_t *x, const int64_t *partner, const float *lam, uint8_t *out,
                  int64_t N, int64_t L);
int fr_aug_mix_f32(const float *x, const int64_t *partner, const float *lam, float *out,
                   int64_t N, int64_t L);
int fr_aug_paste(const void *x, const int64_t *partner, const int64_t *rects, void *out,
                 int64_t M, int64_t H, int64_t W, int64_t P);

/* ------------------------------------------------------------------ colour augmentation
 * (csrc/augment_color.c; contract: fastreg/reference/augment_color.py).  uint8 images
 * (N, H, W, C) with element strides xs / os (4 each) and dims = (N, H, W, C); C <= 3 for
 * fr_aug_color_u8 (else FR_ERR_UNSUPPORTED).  codes int64 (N,) (-1: sample not written),
 * params float64 (N,); out may be x for fr_aug_color_u8 only.  weights float32 (N, K), K odd,
 * K / 2 < min(H, W); lut float32 (C, 256).  Bit-identical to the reference for any thread count. */
int fr_aug_color_u8(const uint8_t *x, const int64_t *xs, const int64_t *codes,
                    const double *params, uint8_t *out, const int64_t *os, const int64_t *dims);
int fr_aug_blur_u8(const uint8_t *x, const int64_t *xs, const float *weights, int64_t K,
                   uint8_t *out, const int64_t *os, const int64_t *dims);
int fr_aug_normalize_u8(const uint8_t *x, const int64_t *xs, const float *lut, float *out,
                        const int64_t *os, const int64_t *dims);

/* ------------------------------------------------------------------ weight EMA, gradient norms
 * (csrc/multi_tensor.c; definitions: fastreg/reference/ema.py, clip.py).  List ops take `count`
 * arrays of one dtype (pointers and element counts n[k]).  mode: 0 sum x**2, 1 sum |x|,
 * 2 max |x| (NaN if any is NaN), 3 sum |x|**pw; accumulated in double. */
/* ema[k] = fma(coef, p[k] - ema[k], base): coef = w, base = ema if |w| < 0.5, else w - 1, p */
int fr_ema_update_f32(float *const *ema, const float *const *p, const int64_t *n, int64_t count,
                      float w);
int fr_ema_update_f64(double *const *ema, const double *const *p, const int64_t *n,
                      int64_t count, double w);
int fr_norm_sum_f32(const float *const *a, const int64_t *n, int64_t count, int mode, double pw,
                    double *result);
int fr_norm_sum_f64(const double *const *a, const int64_t *n, int64_t count, int mode,
                    double pw, double *result);
/* a (U, K): out[u] = the reduction of row u */
int fr_row_norm_sums_f32(const float *a, int64_t U, int64_t K, int mode, double pw, double *out);
int fr_row_norm_sums_f64(const double *a, int64_t U, int64_t K, int mode, double pw,
                         double *out);
/* a[k][i] = a[k][i] * s */
int fr_scale_f32(float *const *a, const int64_t *n, int64_t count, float s);
int fr_scale_f64(double *const *a, const int64_t *n, int64_t count, double s);
/* a (U, K): a[u, :] = a[u, :] * s[u] */
int fr_scale_rows_f32(float *a, const float *s, int64_t U, int64_t K);
int fr_scale_rows_f64(double *a, const double *s, int64_t U, int64_t K);

/* ------------------------------------------------------------------ DropBlock
 * (csrc/dropblock.c; definition and stream layout: fastreg/reference/dropblock.py).  mask
 * uint8 (N, C, H, W), or (N, H, W, C) when channels_last: 1 = kept; seed position
 * (n, c, h, w) is word offset + ((n C + c) H + h) W + w < threshold (threshold in [0, 2**32]);
 * block = the clipped block size, 1 <= block <= min(H, W); *kept = the kept count. */
int fr_drop_block_mask(uint64_t seed, uint64_t offset, uint64_t threshold, int64_t block,
                       int channels_last, uint8_t *mask, int64_t N, int64_t C, int64_t H,
                       int64_t W, int64_t *kept);
/* out[i] = mask[i] ? x[i] * scale : +0.0; out may be x */
int fr_drop_block_apply_f32(const float *x, const uint8_t *mask, float scale, float *out,
                            int64_t n);
int fr_drop_block_apply_f64(const double *x, const uint8_t *mask, double scale, double *out,
                            int64_t n);

/* ------------------------------------------------------------------ softmax cross-entropy
 * (csrc/loss.c; contract: fastreg/reference/loss.py).  x (R, C) contiguous; tw, cw (C,) double
 * (cw NULL: no smoothing, hard targets only); loss (R,) double receives the per-row losses;
 * grad (R, C) or NULL (loss only), may be x.  Bit-identical to the Numba backend. */
int fr_ce_hard_f32(const float *x, const int64_t *target, const double *tw, const double *cw,
                   int64_t ignore_index, double scale, double *loss, float *grad, int64_t R,
                   int64_t C);
int fr_ce_hard_f64(const double *x, const int64_t *target, const double *tw, const double *cw,
                   int64_t ignore_index, double scale, double *loss, double *grad, int64_t R,
                   int64_t C);
int fr_ce_soft_f32(const float *x, const float *target, const double *tw, const double *cw,
                   double scale, double *loss, float *grad, int64_t R, int64_t C);
int fr_ce_soft_f64(const double *x, const double *target, const double *tw, const double *cw,
                   double scale, double *loss, double *grad, int64_t R, int64_t C);

#endif /* FASTREG_H */
