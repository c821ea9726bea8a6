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
    FR_ERR_UNSUPPORTED = 3   /* e.g. asking for AVX2 kernels on a CPU without AVX2 */
};

/* Instruction set of the stream kernels: 0 portable C, 1 AVX2 (the default where the CPU has it). */
int fr_cpu_has_avx2(void);
int fr_get_isa(void);
int fr_set_isa(int isa);

/* Streaming (non-temporal) stores for large outputs: 0 never, 1 auto (large and not in place,
 * the default), 2 always where the output can be aligned (also in place; for measurements). */
int fr_get_stream_stores(void);
int fr_set_stream_stores(int mode);

int fr_omp_max_threads(void);

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

/* out[i] = w[offset + i] >= threshold (1 kept, 0 dropped), one byte each */
int fr_dropout_mask(uint64_t seed, uint64_t offset, uint32_t threshold, uint8_t *out, int64_t n);

/* bit j of out[k] = keep(8k + j), for n elements; out has (n + 7) / 8 bytes, pad bits 0 */
int fr_dropout_mask_packed(uint64_t seed, uint64_t offset, uint32_t threshold, int64_t n,
                           uint8_t *out);

/* x, out (N, M1, C, M2); keep (N, C), nonzero = kept: out = keep[n, c] ? x * scale : +0.0 */
int fr_group_dropout_f32(const float *x, const uint8_t *keep, float scale, float *out,
                         int64_t N, int64_t M1, int64_t C, int64_t M2);
int fr_group_dropout_f64(const double *x, const uint8_t *keep, double scale, double *out,
                         int64_t N, int64_t M1, int64_t C, int64_t M2);

#endif /* FASTREG_H */
