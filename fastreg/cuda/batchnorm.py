"""Batch normalization on the GPU (Numba CUDA), as fastreg.reference.batchnorm within tolerance.

Data arrive as C-contiguous ``(A, C, B)`` arrays (see the reference): channel ``c``'s elements are
``x[a, c, b]``, at flat index ``(a * C + c) * B + b``. Every kernel works on the flat view.

Element-wise ops (``bn_apply``, ``bn_backward_apply``): one element per thread of a grid-stride
loop over the flat index, so neighbouring threads touch neighbouring addresses whatever the
layout; each thread tracks its element's channel incrementally (no division per element). An
element is read before the same thread writes it, so ``out`` may be ``x`` and ``gx`` may be ``gy``.
Arithmetic is in x's dtype with coefficients computed in float64 and cast (an FMA may be formed:
batch norm is held to a tolerance, not to bits).

Reductions (``bn_stats``, ``bn_backward_reduce``) accumulate in float64, in two passes with no
atomics, so a result depends only on the launch shape, never on scheduling:

* rows regime (``B >= 32``, e.g. NCHW; also few, long channels): a 2-D grid, ``blockIdx.x``
  over channels (grid-stride) and ``blockIdx.y`` over ``nsplit`` contiguous chunks of the
  channel's ``A * B`` elements; the block's threads walk the chunk (coalesced along ``B``), then
  a shared-memory reduction (2 ``syncthreads``: all threads store, 32 threads fold the rest,
  thread 0 adds 32) leaves one partial per (split, channel).
* columns regime (``B < 32`` with at least 128 columns ``W = C * B``, e.g. channels-last or
  ``(N, C)``, or at most 256 elements per channel): slot ``q = g * W + j`` sums column ``j`` over
  rows ``g, g + k, g + 2k, ...``; consecutive threads take consecutive columns (coalesced), no
  shared memory, no barrier; ``k * B <= 256`` partials per channel.

A per-channel finalize kernel (one thread per channel) adds a channel's partials in a fixed order
and, in the fused ops, turns them straight into the coefficients, so a training step keeps every
statistic on the device. Statistics use shifted sums: with ``s = x[0, c, 0]`` (the channel's first
element; 0 when it is not finite, so that a channel with an inf or NaN gets the reference's
statistics), ``S1 = sum (x - s)``, ``S2 = sum (x - s)**2``, mean ``s + S1 / n`` and
``M2 = S2 - S1**2 / n``: stable because ``s`` lies within the data, and the partials of one channel
add up exactly like plain sums. The backward sums need no shift (``x - mean`` is centred).

Per-channel ops (``bn_forward_coeffs``, ``bn_running_update``, ``bn_backward_coeffs``): one
thread per channel, float64 math, stored in the output arrays' dtypes. Optional arrays (None) are
replaced by a dummy and a flag, chosen on the host.

Scratch space (partials, coefficients) comes from a per-device cache grown on demand, so a
training step allocates nothing after the first call.
"""
import math

import numpy as np
from numba import cuda, float64

from .. import _config
from .philox import dev_in, dev_out, finish, launch_1d, max_blocks

_ROWS_MIN_B = 32        # B at least this: rows regime (runs of >= 32 contiguous elements)
_COLS_MIN_W = 128       # below this many columns the columns regime has too few threads
_MAX_SPLITS = 128       # rows regime: partials per channel, at most
_MAX_COL_PARTS = 256    # columns regime: partials per channel (k * B), at most
_MIN_PER_THREAD = 16    # rows regime: elements per thread per split, at least


# --- device helpers -----------------------------------------------------------------------------

@cuda.jit(device=True)
def _block_sum2_device(sh, base, s1, s2):
    """Sum of s1 and of s2 over the block, valid in thread 0 (the others get partial values).

    Uses sh[base : base + 2 * blockDim.x] and two barriers; the caller alternates ``base``
    between two halves so that the next call's stores cannot race thread 0's final reads.
    """
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    sh[base + tid] = s1
    sh[base + nt + tid] = s2
    cuda.syncthreads()
    w = min(32, nt)
    if tid < w:
        a1 = sh[base + tid]
        a2 = sh[base + nt + tid]
        j = tid + w
        while j < nt:
            a1 += sh[base + j]
            a2 += sh[base + nt + j]
            j += w
        sh[base + tid] = a1
        sh[base + nt + tid] = a2
    cuda.syncthreads()
    r1 = 0.0
    r2 = 0.0
    if tid == 0:
        for j in range(w):
            r1 += sh[base + j]
            r2 += sh[base + nt + j]
    return r1, r2


@cuda.jit(device=True)
def _shift_device(x, i):
    """The shift of a channel's statistics: its first element x[i], or 0 when that is +-inf or NaN
    (x - inf would make every sum NaN, where the reference's mean is +-inf)."""
    s = float64(x[i])
    return s if math.isfinite(s) else 0.0


@cuda.jit(device=True)
def _accumulate_device(backward, x, gy, y, has_y, i, ctr, s1, s2):
    """Add element i to the channel sums: stats (x - ctr and its square) or backward (g and
    g * (x - ctr))."""
    if backward:
        zero = gy.dtype.type(0)
        g = gy[i]
        if has_y and not (y[i] > zero):
            g = zero
        gd = float64(g)
        return s1 + gd, s2 + gd * (float64(x[i]) - ctr)
    d = float64(x[i]) - ctr
    return s1 + d, s2 + d * d


@cuda.jit(device=True)
def _sum_parts_device(part, off, c, ng, gstride, nb):
    """Sum of the partials of channel c: part[off + g * gstride + c * nb + b], g < ng, b < nb."""
    acc = 0.0
    for g in range(ng):
        base = off + g * gstride + c * nb
        for b in range(nb):
            acc += part[base + b]
    return acc


@cuda.jit(device=True)
def _forward_coeffs_device(c, mu, var, weight, has_w, bias, has_b, eps, fold, saved_mean,
                           invstd, center, scale, shift):
    inv = 1.0 / math.sqrt(var + eps)
    w = float64(weight[c]) if has_w else 1.0
    b = float64(bias[c]) if has_b else 0.0
    sc = w * inv
    saved_mean[c] = mu
    invstd[c] = inv
    scale[c] = sc
    if fold:
        center[c] = 0
        shift[c] = b - mu * sc
    else:
        center[c] = mu
        shift[c] = b


@cuda.jit(device=True)
def _backward_coeffs_device(c, sdy, sdyx, mu, inv, weight, has_w, count, training, center, a, b,
                            d, grad_weight, grad_bias):
    w = float64(weight[c]) if has_w else 1.0
    a64 = w * inv
    grad_weight[c] = sdyx * inv
    grad_bias[c] = sdy
    center[c] = mu
    a[c] = a64
    if training:
        b[c] = a64 * inv * inv * sdyx / count
        d[c] = a64 * sdy / count


@cuda.jit(device=True)
def _relu_device(v, zero):
    """max(v, 0) with NaN kept and +0.0 for v <= 0."""
    if v > zero or v != v:
        return v
    return zero


# --- reduction kernels --------------------------------------------------------------------------

@cuda.jit(cache=True)
def _reduce_rows_kernel(backward, x, gy, y, has_y, center, nrows, nch, inner, chunk, part):
    # Grid (channels, nsplit). Thread tid of split s walks elements k = s * chunk + tid + m * nt
    # (k < min(n, (s + 1) * chunk)) of channel c, k = a * inner + b; its address moves by
    # sa * C * B + sb per step, plus (C * B - B) when b wraps past B.
    sh = cuda.shared.array(0, float64)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    s = cuda.blockIdx.y
    n = nrows * inner
    row = nch * inner
    k_first = s * chunk + tid
    k_end = min(n, (s + 1) * chunk)
    sa = nt // inner
    sb = nt - sa * inner
    step = sa * row + sb
    it = 0
    for c in range(cuda.blockIdx.x, nch, cuda.gridDim.x):
        if backward:
            ctr = float64(center[c])
        else:
            ctr = _shift_device(x, c * inner)  # the shift (see _shift_device)
        s1 = 0.0
        s2 = 0.0
        k = k_first
        if k < k_end:
            a = k // inner
            b = k - a * inner
            i = a * row + c * inner + b
            while k < k_end:
                s1, s2 = _accumulate_device(backward, x, gy, y, has_y, i, ctr, s1, s2)
                k += nt
                b += sb
                i += step
                if b >= inner:
                    b -= inner
                    i += row - inner
        r1, r2 = _block_sum2_device(sh, (it & 1) * 2 * nt, s1, s2)
        if tid == 0:
            p = s * nch + c
            part[p] = r1
            part[part.size // 2 + p] = r2
        it += 1


@cuda.jit(cache=True)
def _reduce_cols_kernel(backward, x, gy, y, has_y, center, nrows, nch, inner, k, part):
    # Slot q = g * W + j (W = C * B columns) sums column j over rows g, g + k, g + 2k, ...
    width = nch * inner
    nslots = k * width
    half = part.size // 2
    for q in range(cuda.grid(1), nslots, cuda.gridsize(1)):
        g = q // width
        j = q - g * width
        c = j // inner
        if backward:
            ctr = float64(center[c])
        else:
            ctr = _shift_device(x, c * inner)
        s1 = 0.0
        s2 = 0.0
        i = g * width + j
        step = k * width
        for _ in range(g, nrows, k):
            s1, s2 = _accumulate_device(backward, x, gy, y, has_y, i, ctr, s1, s2)
            i += step
        part[q] = s1
        part[half + q] = s2


# --- per-channel kernels (one thread per channel) -------------------------------------------------

@cuda.jit(cache=True)
def _stats_finalize_kernel(x, inner, part, ng, gstride, nb, count, coeffs, weight, has_w, bias,
                           has_b, eps, mean, m2, invstd, center, scale, shift):
    half = part.size // 2
    for c in range(cuda.grid(1), mean.size, cuda.gridsize(1)):
        s1 = _sum_parts_device(part, 0, c, ng, gstride, nb)
        s2 = _sum_parts_device(part, half, c, ng, gstride, nb)
        d = s1 / count
        mu = _shift_device(x, c * inner) + d
        v = s2 - s1 * d
        if v < 0:  # S2 - S1 * d can round below 0 when the spread is nil; NaN stays NaN
            v = 0.0
        mean[c] = mu
        m2[c] = v
        if coeffs:
            _forward_coeffs_device(c, mu, v / count, weight, has_w, bias, has_b, eps, False,
                                   mean, invstd, center, scale, shift)


@cuda.jit(cache=True)
def _backward_finalize_kernel(part, ng, gstride, nb, s_dy, s_dyx, coeffs, mean, invstd, weight,
                              has_w, count, training, center, a, b, d, grad_weight, grad_bias):
    half = part.size // 2
    for c in range(cuda.grid(1), s_dy.size, cuda.gridsize(1)):
        sdy = _sum_parts_device(part, 0, c, ng, gstride, nb)
        sdyx = _sum_parts_device(part, half, c, ng, gstride, nb)
        s_dy[c] = sdy
        s_dyx[c] = sdyx
        if coeffs:
            _backward_coeffs_device(c, sdy, sdyx, float64(mean[c]), float64(invstd[c]), weight,
                                    has_w, count, training, center, a, b, d, grad_weight,
                                    grad_bias)


@cuda.jit(cache=True)
def _forward_coeffs_kernel(mean, m2, count, weight, has_w, bias, has_b, eps, fold, saved_mean,
                           invstd, center, scale, shift):
    for c in range(cuda.grid(1), mean.size, cuda.gridsize(1)):
        mu = float64(mean[c])  # read before saved_mean (which may be mean) is written
        var = float64(m2[c]) / count
        _forward_coeffs_device(c, mu, var, weight, has_w, bias, has_b, eps, fold, saved_mean,
                               invstd, center, scale, shift)


@cuda.jit(cache=True)
def _running_update_kernel(mean, m2, count, running_mean, has_rm, running_var, has_rv, momentum):
    keep = 1.0 - momentum
    for c in range(cuda.grid(1), mean.size, cuda.gridsize(1)):
        if has_rm:
            running_mean[c] = keep * float64(running_mean[c]) + momentum * float64(mean[c])
        if has_rv:
            running_var[c] = (keep * float64(running_var[c])
                              + momentum * (float64(m2[c]) / (count - 1.0)))


@cuda.jit(cache=True)
def _backward_coeffs_kernel(s_dy, s_dyx, mean, invstd, weight, has_w, count, training, center, a,
                            b, d, grad_weight, grad_bias):
    for c in range(cuda.grid(1), s_dy.size, cuda.gridsize(1)):
        _backward_coeffs_device(c, float64(s_dy[c]), float64(s_dyx[c]), float64(mean[c]),
                                float64(invstd[c]), weight, has_w, count, training, center, a,
                                b, d, grad_weight, grad_bias)


# --- element-wise kernels -----------------------------------------------------------------------

@cuda.jit(cache=True)
def _apply_kernel(x, center, scale, shift, residual, has_res, relu, out, nch, inner):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    n = x.size
    if i >= n:
        return
    # Channel of element i: (i // B) % C, then advanced by the stride's (row, column) steps.
    b = i % inner
    c = (i // inner) % nch
    sb = stride % inner
    sc = (stride // inner) % nch
    zero = x.dtype.type(0)
    while i < n:
        v = (x[i] - center[c]) * scale[c] + shift[c]
        if has_res:
            v = v + residual[i]
        if relu:
            v = _relu_device(v, zero)
        out[i] = v
        i += stride
        b += sb
        c += sc
        if b >= inner:
            b -= inner
            c += 1
        if c >= nch:
            c -= nch


@cuda.jit(cache=True)
def _backward_apply_kernel(gy, x, y, has_y, center, a, b, d, training, gx, gres, has_gres, nch,
                           inner):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    n = x.size
    if i >= n:
        return
    bb = i % inner
    c = (i // inner) % nch
    sb = stride % inner
    sc = (stride // inner) % nch
    zero = x.dtype.type(0)
    while i < n:
        g = gy[i]
        if has_y and not (y[i] > zero):
            g = zero
        if training:
            v = g * a[c] - (x[i] - center[c]) * b[c] - d[c]
        else:
            v = g * a[c]
        if has_gres:
            gres[i] = g
        gx[i] = v
        i += stride
        bb += sb
        c += sc
        if bb >= inner:
            bb -= inner
            c += 1
        if c >= nch:
            c -= nch


# --- host side ------------------------------------------------------------------------------------

_scratch = {}   # (device, name, dtype) -> the largest device array handed out so far


def _scratch_array(name, n, dtype):
    """A device array of n elements from the cache (kernels on the default stream run in order,
    so a call may reuse the previous call's scratch)."""
    dtype = np.dtype(dtype)
    key = (getattr(cuda.get_current_device(), "id", 0), name, dtype.str)
    arr = _scratch.get(key)
    if arr is None or arr.size < n:
        arr = cuda.device_array(max(n, 64), dtype=dtype)
        _scratch[key] = arr
    return arr[:n]


def _flat(a_d):
    return a_d.reshape(a_d.size)


class _Plan:
    """How a reduction over an (A, C, B) array is launched and where its partials go."""

    def __init__(self, shape):
        nrows, nch, inner = (int(s) for s in shape)
        self.shape = (nrows, nch, inner)
        tpb = _config.cuda_threads_per_block()
        self.tpb = tpb
        target = max(1, max_blocks(tpb) // 2)
        n = nrows * inner
        width = nch * inner
        if inner < _ROWS_MIN_B and (width >= _COLS_MIN_W or n <= _MAX_COL_PARTS):
            self.rows = False
            k = max(1, min(nrows, (target * tpb) // width, max(1, _MAX_COL_PARTS // inner)))
            self.k = k
            self.nparts = k * width
            # finalize: ng = k groups of W slots, channel c owns slots c * B .. c * B + B - 1
            self.ng, self.gstride, self.nb = k, width, inner
            self.blocks = min((self.nparts + tpb - 1) // tpb, max_blocks(tpb))
        else:
            self.rows = True
            nsplit = -(-target // nch)
            nsplit = max(1, min(nsplit, _MAX_SPLITS, -(-n // (tpb * _MIN_PER_THREAD))))
            self.nsplit = nsplit
            self.chunk = -(-n // nsplit)
            self.nparts = nsplit * nch
            self.ng, self.gstride, self.nb = nsplit, nch, 1
            self.grid = (min(nch, max(1, max_blocks(tpb) // nsplit)), nsplit)
        self.count = float(n)

    def reduce(self, backward, x, gy, y, has_y, center):
        """Launch the reduction; returns the partials buffer (2 * nparts float64)."""
        nrows, nch, inner = self.shape
        part = _scratch_array("part", 2 * self.nparts, np.float64)
        args = (backward, x, gy, y, has_y, center, np.int64(nrows), np.int64(nch),
                np.int64(inner))
        if self.rows:
            shmem = 4 * self.tpb * 8
            _reduce_rows_kernel[self.grid, self.tpb, 0, shmem](*args, np.int64(self.chunk), part)
        else:
            _reduce_cols_kernel[self.blocks, self.tpb](*args, np.int64(self.k), part)
        return part

    def parts_args(self):
        return np.int64(self.ng), np.int64(self.gstride), np.int64(self.nb)


def _opt(a, dummy):
    """(device array, present flag) for an optional argument."""
    if a is None:
        return dummy, False
    return a, True


def _launch_apply(x_d, center, scale, shift, res_d, relu, out_d):
    nrows, nch, inner = (int(s) for s in x_d.shape)
    xf = _flat(x_d)
    rf, has_res = (xf, False) if res_d is None else (_flat(res_d), True)
    launch_1d(_apply_kernel, xf.size, xf, center, scale, shift, rf, has_res, bool(relu),
              _flat(out_d), np.int64(nch), np.int64(inner))


def _launch_backward_apply(gy_d, x_d, y_d, center, a, b, d, training, gx_d, gres_d):
    nrows, nch, inner = (int(s) for s in x_d.shape)
    xf = _flat(x_d)
    yf, has_y = (xf, False) if y_d is None else (_flat(y_d), True)
    gf = _flat(gx_d)
    rf, has_gres = (gf, False) if gres_d is None else (_flat(gres_d), True)
    launch_1d(_backward_apply_kernel, xf.size, _flat(gy_d), xf, yf, has_y, center, a, b, d,
              bool(training), gf, rf, has_gres, np.int64(nch), np.int64(inner))


# --- ops (the backend contract, see fastreg._registry) --------------------------------------------

def bn_stats(x, mean, m2):
    """Per-channel mean and M2 = sum (x - mean)**2 of x (A, C, B), accumulated in float64.

    Parameters
    ----------
    x : device or host array (A, C, B), float32 or float64, C-contiguous, A * B >= 1
    mean, m2 : device or host arrays (C,), float64
        Outputs.

    Returns
    -------
    None
    """
    x_d = dev_in(x)
    mean_d, m2_d = dev_out(mean), dev_out(m2)
    plan = _Plan(x_d.shape)
    xf = _flat(x_d)
    part = plan.reduce(False, xf, xf, xf, False, mean_d)
    launch_1d(_stats_finalize_kernel, plan.shape[1], xf, np.int64(plan.shape[2]), part,
              *plan.parts_args(), plan.count, False, mean_d, False, mean_d, False,
              np.float64(0.0), mean_d, m2_d, mean_d, mean_d, mean_d, mean_d)
    finish(mean, mean_d)
    finish(m2, m2_d)


def bn_apply(x, center, scale, shift, residual, relu, out):
    """out = act((x - center) * scale + shift [+ residual]) per channel, in x's dtype.

    Parameters
    ----------
    x, out : device or host arrays (A, C, B), one float dtype (out may be x)
    center, scale, shift : device or host arrays (C,), x's dtype
    residual : device or host array (A, C, B) or None
    relu : bool

    Returns
    -------
    None
    """
    x_d = dev_in(x)
    res_d = None if residual is None else dev_in(residual)
    c_d, s_d, t_d = dev_in(center), dev_in(scale), dev_in(shift)
    out_d = dev_out(out)  # out may be x: each element is read before it is written
    _launch_apply(x_d, c_d, s_d, t_d, res_d, relu, out_d)
    finish(out, out_d)


def bn_forward_train(x, weight, bias, eps, residual, relu, out, mean, m2, invstd):
    """Training forward: batch statistics, then normalization with them (3 launches: partial
    sums, per-channel statistics and coefficients, element-wise apply).

    Parameters
    ----------
    x, out : device or host arrays (A, C, B), one float dtype (out may be x); A * B >= 2
    weight, bias : device or host arrays (C,) of x's dtype, or None (1 / 0)
    eps : float
    residual : device or host array (A, C, B) or None
    relu : bool
    mean, m2, invstd : device or host arrays (C,), float64
        Outputs: batch mean, M2, 1 / sqrt(M2 / n + eps).

    Returns
    -------
    None
    """
    x_d = dev_in(x)
    dt = np.dtype(x_d.dtype)
    res_d = None if residual is None else dev_in(residual)
    mean_d, m2_d, inv_d = dev_out(mean), dev_out(m2), dev_out(invstd)
    nch = int(x_d.shape[1])
    coeffs = _scratch_array("coeffs", 3 * nch, dt)
    center, scale, shift = coeffs[:nch], coeffs[nch:2 * nch], coeffs[2 * nch:]
    w_d, has_w = _opt(None if weight is None else dev_in(weight), center)
    b_d, has_b = _opt(None if bias is None else dev_in(bias), center)
    plan = _Plan(x_d.shape)
    xf = _flat(x_d)
    part = plan.reduce(False, xf, xf, xf, False, mean_d)
    launch_1d(_stats_finalize_kernel, nch, xf, np.int64(plan.shape[2]), part, *plan.parts_args(),
              plan.count, True, w_d, has_w, b_d, has_b, np.float64(eps), mean_d, m2_d, inv_d,
              center, scale, shift)
    out_d = dev_out(out)  # out may be x: each element is read before it is written
    _launch_apply(x_d, center, scale, shift, res_d, relu, out_d)
    for host, dev in ((mean, mean_d), (m2, m2_d), (invstd, inv_d), (out, out_d)):
        finish(host, dev)


def bn_backward_reduce(gy, x, y, center, s_dy, s_dyx):
    """s_dy = sum g, s_dyx = sum g * (x - center) per channel, in float64; g = gy masked by
    y > 0 when y (the ReLU output) is given.

    Parameters
    ----------
    gy, x : device or host arrays (A, C, B), one float dtype
    y : device or host array (A, C, B) or None
    center : device or host array (C,), float64 (the forward mean)
    s_dy, s_dyx : device or host arrays (C,), float64
        Outputs.

    Returns
    -------
    None
    """
    gy_d, x_d = dev_in(gy), dev_in(x)
    y_d = None if y is None else dev_in(y)
    c_d = dev_in(center)
    sdy_d, sdyx_d = dev_out(s_dy), dev_out(s_dyx)
    plan = _Plan(x_d.shape)
    xf = _flat(x_d)
    yf, has_y = (xf, False) if y_d is None else (_flat(y_d), True)
    part = plan.reduce(True, xf, _flat(gy_d), yf, has_y, c_d)
    launch_1d(_backward_finalize_kernel, plan.shape[1], part, *plan.parts_args(), sdy_d, sdyx_d,
              False, sdy_d, sdy_d, sdy_d, False, plan.count, False, sdy_d, sdy_d, sdy_d, sdy_d,
              sdy_d, sdy_d)
    finish(s_dy, sdy_d)
    finish(s_dyx, sdyx_d)


def bn_backward_apply(gy, x, y, center, a, b, d, gx, gres):
    """gx = g * a - (x - center) * b - d per channel (training), or g * a when b is None;
    gres = g when given. g as in ``bn_backward_reduce``; in x's dtype.

    Parameters
    ----------
    gy, x, gx : device or host arrays (A, C, B), one float dtype (gx may be gy)
    y : device or host array (A, C, B) or None
    center, a : device or host arrays (C,), x's dtype
    b, d : device or host arrays (C,), x's dtype, or both None (inference)
    gres : device or host array (A, C, B) or None

    Returns
    -------
    None
    """
    gy_d, x_d = dev_in(gy), dev_in(x)
    y_d = None if y is None else dev_in(y)
    c_d, a_d = dev_in(center), dev_in(a)
    training = b is not None
    b_d = dev_in(b) if training else a_d
    d_d = dev_in(d) if training else a_d
    gx_d = dev_out(gx)
    gres_d = None if gres is None else dev_out(gres)
    _launch_backward_apply(gy_d, x_d, y_d, c_d, a_d, b_d, d_d, training, gx_d, gres_d)
    finish(gx, gx_d)
    if gres is not None:
        finish(gres, gres_d)


def bn_backward(gy, x, y, mean, invstd, weight, training, gx, gres, grad_weight, grad_bias):
    """The whole backward pass in 3 launches: partial sums, per-channel sums with coefficients and
    parameter gradients, element-wise gx (and gres).

    Parameters
    ----------
    gy, x, gx : device or host arrays (A, C, B), one float dtype (gx may be gy)
    y : device or host array (A, C, B) or None (the ReLU output, when the forward ended in one)
    mean, invstd : device or host arrays (C,), float64
    weight : device or host array (C,) of x's dtype, or None (ones)
    training : bool
        Whether the forward used batch statistics (their gradient terms are included).
    gres : device or host array (A, C, B) or None
    grad_weight, grad_bias : device or host arrays (C,), x's dtype
        Outputs.

    Returns
    -------
    None
    """
    gy_d, x_d = dev_in(gy), dev_in(x)
    dt = np.dtype(x_d.dtype)
    y_d = None if y is None else dev_in(y)
    mean_d, inv_d = dev_in(mean), dev_in(invstd)
    gw_d, gb_d = dev_out(grad_weight), dev_out(grad_bias)
    nch = int(x_d.shape[1])
    coeffs = _scratch_array("coeffs", 4 * nch, dt)
    center, a, b, d = (coeffs[j * nch:(j + 1) * nch] for j in range(4))
    sums = _scratch_array("sums", 2 * nch, np.float64)
    w_d, has_w = _opt(None if weight is None else dev_in(weight), a)
    plan = _Plan(x_d.shape)
    xf = _flat(x_d)
    yf, has_y = (xf, False) if y_d is None else (_flat(y_d), True)
    part = plan.reduce(True, xf, _flat(gy_d), yf, has_y, mean_d)
    launch_1d(_backward_finalize_kernel, nch, part, *plan.parts_args(), sums[:nch], sums[nch:],
              True, mean_d, inv_d, w_d, has_w, plan.count, bool(training), center, a, b, d,
              gw_d, gb_d)
    gx_d = dev_out(gx)
    gres_d = None if gres is None else dev_out(gres)
    _launch_backward_apply(gy_d, x_d, y_d, center, a, b, d, training, gx_d, gres_d)
    finish(gx, gx_d)
    if gres is not None:
        finish(gres, gres_d)
    finish(grad_weight, gw_d)
    finish(grad_bias, gb_d)


def bn_forward_coeffs(mean, m2, count, weight, bias, eps, fold, saved_mean, invstd, center, scale,
                      shift):
    """Coefficients of ``bn_apply`` from per-channel statistics, as the reference (float64 math).

    Parameters
    ----------
    mean, m2 : device or host arrays (C,), any float dtype
    count : int or float
        Divides m2 (the element count in training, 1 in inference).
    weight, bias : device or host arrays (C,), or None (1 / 0)
    eps : float
    fold : bool
        Inference: center = 0, shift = b - mean * scale; else center = mean, shift = b.
    saved_mean, invstd : device or host arrays (C,), float64 (saved_mean may be mean)
    center, scale, shift : device or host arrays (C,), one float dtype

    Returns
    -------
    None
    """
    mean_d, m2_d = dev_in(mean), dev_in(m2)
    sm_d = dev_out(saved_mean)
    inv_d = dev_out(invstd)
    c_d, s_d, t_d = dev_out(center), dev_out(scale), dev_out(shift)
    w_d, has_w = _opt(None if weight is None else dev_in(weight), s_d)
    b_d, has_b = _opt(None if bias is None else dev_in(bias), s_d)
    launch_1d(_forward_coeffs_kernel, mean_d.size, mean_d, m2_d, np.float64(count), w_d, has_w,
              b_d, has_b, np.float64(eps), bool(fold), sm_d, inv_d, c_d, s_d, t_d)
    for host, dev in ((saved_mean, sm_d), (invstd, inv_d), (center, c_d), (scale, s_d),
                      (shift, t_d)):
        finish(host, dev)


def bn_running_update(mean, m2, count, running_mean, running_var, momentum):
    """In place: running = (1 - momentum) * running + momentum * batch, with the unbiased batch
    variance m2 / (count - 1); float64 math, stored in the running arrays' dtype.

    Parameters
    ----------
    mean, m2 : device or host arrays (C,), float64
    count : int
        Elements per channel, >= 2.
    running_mean, running_var : device or host arrays (C,), or None (left alone)
    momentum : float

    Returns
    -------
    None
    """
    if running_mean is None and running_var is None:
        return
    mean_d, m2_d = dev_in(mean), dev_in(m2)
    rm_d = None if running_mean is None else dev_out(running_mean, copy_in=True)
    rv_d = None if running_var is None else dev_out(running_var, copy_in=True)
    rm_a, has_rm = _opt(rm_d, rv_d)
    rv_a, has_rv = _opt(rv_d, rm_d)
    launch_1d(_running_update_kernel, mean_d.size, mean_d, m2_d, np.float64(count), rm_a, has_rm,
              rv_a, has_rv, np.float64(momentum))
    if has_rm:
        finish(running_mean, rm_d)
    if has_rv:
        finish(running_var, rv_d)


def bn_backward_coeffs(s_dy, s_dyx, mean, invstd, weight, count, training, center, a, b, d,
                       grad_weight, grad_bias):
    """Coefficients of ``bn_backward_apply`` and the parameter gradients, as the reference.

    Parameters
    ----------
    s_dy, s_dyx, mean, invstd : device or host arrays (C,), float64
    weight : device or host array (C,) or None (ones)
    count : int
    training : bool
        Also write b = a * invstd**2 * s_dyx / count and d = a * s_dy / count.
    center, a : device or host arrays (C,), x's dtype
    b, d : device or host arrays (C,), x's dtype (None when not training)
    grad_weight, grad_bias : device or host arrays (C,)

    Returns
    -------
    None
    """
    sdy_d, sdyx_d = dev_in(s_dy), dev_in(s_dyx)
    mean_d, inv_d = dev_in(mean), dev_in(invstd)
    c_d, a_d = dev_out(center), dev_out(a)
    training = bool(training)
    b_d = dev_out(b) if training else a_d
    d_d = dev_out(d) if training else a_d
    gw_d, gb_d = dev_out(grad_weight), dev_out(grad_bias)
    w_d, has_w = _opt(None if weight is None else dev_in(weight), a_d)
    launch_1d(_backward_coeffs_kernel, sdy_d.size, sdy_d, sdyx_d, mean_d, inv_d, w_d, has_w,
              np.float64(count), training, c_d, a_d, b_d, d_d, gw_d, gb_d)
    outs = [(center, c_d), (a, a_d), (grad_weight, gw_d), (grad_bias, gb_d)]
    if training:
        outs += [(b, b_d), (d, d_d)]
    for host, dev in outs:
        finish(host, dev)
