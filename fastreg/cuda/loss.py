"""Softmax cross-entropy and its gradient on the GPU (Numba CUDA), as fastreg.reference.loss
within tolerance.

One block per row (grid-stride over the rows): the block's threads walk the row's classes
(consecutive threads, consecutive addresses), each keeping a running maximum, then float64
partial sums; a block reduction through shared memory (thread 0 adds the ``blockDim`` partials
in order, so a result depends only on the launch shape) gives the row's max, ``s = sum exp(x -
m)`` and the smoothing or soft-target sums; the gradient pass recomputes ``exp`` (the row is in
cache) and writes ``grad = dtype(k e - scale a)``. ``grad`` may be ``x``: every element is read
by the thread that writes it, after the block's last barrier of the row (the target logit is
read before it).

``exp`` is CUDA's (libdevice) in the logits' dtype, sums in float64, FMAs allowed: held to a
tolerance (fastreg.cuda.check's policy has no "exact" promise for these kernels), not to the
host backends' bits.
"""
import math

import numpy as np
from numba import cuda, float64

from .. import _config
from .philox import dev_in, dev_out, finish, max_blocks

_SLOTS = 4   # shared float64 values per thread: three sums and the maximum


@cuda.jit(device=True)
def _block_max_device(sh, v):
    """The maximum of v over the block, in every thread (NaN-skipping, as the host kernels)."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    base = 3 * nt
    sh[base + tid] = v
    cuda.syncthreads()
    if tid == 0:
        m = sh[base]
        for j in range(1, nt):
            if sh[base + j] > m:
                m = sh[base + j]
        sh[base] = m
    cuda.syncthreads()
    return sh[base]


@cuda.jit(device=True)
def _block_sum3_device(sh, v0, v1, v2):
    """The sums of v0, v1, v2 over the block (thread 0 adds in thread order), in every thread."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    sh[tid] = v0
    sh[nt + tid] = v1
    sh[2 * nt + tid] = v2
    cuda.syncthreads()
    if tid == 0:
        a0 = 0.0
        a1 = 0.0
        a2 = 0.0
        for j in range(nt):
            a0 += sh[j]
            a1 += sh[nt + j]
            a2 += sh[2 * nt + j]
        sh[0] = a0
        sh[nt] = a1
        sh[2 * nt] = a2
    cuda.syncthreads()
    return sh[0], sh[nt], sh[2 * nt]


@cuda.jit(device=True)
def _row_max_device(x, r, sh):
    """The maximum of row r (in x's dtype: exact through float64)."""
    m = -math.inf
    for i in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
        v = float64(x[r, i])
        if v > m:
            m = v
    return x.dtype.type(_block_max_device(sh, m))


@cuda.jit(cache=True)
def _ce_hard_kernel(x, target, tw, cw, smooth, ignore_index, scale, loss, grad, has_grad):
    sh = cuda.shared.array(0, float64)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    c = x.shape[1]
    cw_sum = 0.0
    if smooth:
        for i in range(c):
            cw_sum += cw[i]
    for r in range(cuda.blockIdx.x, x.shape[0], cuda.gridDim.x):
        y = target[r]
        if y == ignore_index:       # the same in every thread of the block: no barrier skipped
            if tid == 0:
                loss[r] = 0.0
            if has_grad:
                for i in range(tid, c, nt):
                    grad[r, i] = 0
            continue
        m = _row_max_device(x, r, sh)
        dy = float64(x[r, y] - m)   # before the barriers below (grad may be x)
        s = 0.0
        b = 0.0
        for i in range(tid, c, nt):
            d = x[r, i] - m
            s += float64(math.exp(d))
            if smooth:
                b += cw[i] * float64(d)
        s, b, _ = _block_sum3_device(sh, s, b, 0.0)
        if smooth:
            big_a = tw[y] + cw_sum
            big_b = tw[y] * dy + b
        else:
            big_a = tw[y]
            big_b = tw[y] * dy
        if tid == 0:
            loss[r] = big_a * math.log(s) - big_b
        if has_grad:
            k = scale * big_a / s
            for i in range(tid, c, nt):
                e = float64(math.exp(x[r, i] - m))
                a = cw[i] if smooth else 0.0
                if i == y:
                    a = tw[y] + a
                grad[r, i] = k * e - scale * a


@cuda.jit(cache=True)
def _ce_soft_kernel(x, target, tw, cw, scale, loss, grad, has_grad):
    sh = cuda.shared.array(0, float64)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    c = x.shape[1]
    for r in range(cuda.blockIdx.x, x.shape[0], cuda.gridDim.x):
        m = _row_max_device(x, r, sh)
        s = 0.0
        sa = 0.0
        sb = 0.0
        for i in range(tid, c, nt):
            d = x[r, i] - m
            s += float64(math.exp(d))
            a = tw[i] * float64(target[r, i]) + cw[i]
            sa += a
            sb += a * float64(d)
        s, big_a, big_b = _block_sum3_device(sh, s, sa, sb)
        if tid == 0:
            loss[r] = big_a * math.log(s) - big_b
        if has_grad:
            k = scale * big_a / s
            for i in range(tid, c, nt):
                e = float64(math.exp(x[r, i] - m))
                a = tw[i] * float64(target[r, i]) + cw[i]
                grad[r, i] = k * e - scale * a


# --- ops (the backend contract, see fastreg._registry) --------------------------------------------

def _launch(kernel, nrows, *args):
    tpb = _config.cuda_threads_per_block()
    blocks = min(nrows, max_blocks(tpb))
    kernel[blocks, tpb, 0, _SLOTS * tpb * 8](*args)


def _grad_args(x_d, grad):
    """(device grad, has_grad): a 0 x 0 stand-in when there is none (never written)."""
    if grad is None:
        return cuda.device_array((0, 0), dtype=x_d.dtype), False
    return dev_out(grad), True


def ce_hard(x, target, tw, cw, ignore_index, scale, loss, grad):
    """Per-row losses (and the gradient) for class-index targets (int64), as
    fastreg.reference.ce_hard; host or device arrays (host ones are copied)."""
    x_d = dev_in(x)
    if x_d.shape[0] == 0:
        return
    t_d, tw_d = dev_in(target), dev_in(tw)
    smooth = cw is not None
    cw_d = dev_in(cw) if smooth else tw_d
    loss_d = dev_out(loss)
    grad_d, has_grad = _grad_args(x_d, grad) if grad is not x else (x_d, True)
    _launch(_ce_hard_kernel, x_d.shape[0], x_d, t_d, tw_d, cw_d, smooth, np.int64(ignore_index),
            np.float64(scale), loss_d, grad_d, has_grad)
    finish(loss, loss_d)
    if has_grad:
        finish(grad, grad_d)


def ce_soft(x, target, tw, cw, scale, loss, grad):
    """Per-row losses (and the gradient) for probability targets, as
    fastreg.reference.ce_soft; host or device arrays."""
    x_d = dev_in(x)
    if x_d.shape[0] == 0:
        return
    t_d, tw_d = dev_in(target), dev_in(tw)
    cw_d = dev_in(np.zeros_like(tw) if cw is None else cw)
    loss_d = dev_out(loss)
    grad_d, has_grad = _grad_args(x_d, grad) if grad is not x else (x_d, True)
    _launch(_ce_soft_kernel, x_d.shape[0], x_d, t_d, tw_d, cw_d, np.float64(scale), loss_d,
            grad_d, has_grad)
    finish(loss, loss_d)
    if has_grad:
        finish(grad, grad_d)
