"""Penalties and proximal steps on the GPU (Numba CUDA), bit for bit as fastreg.reference.penalty.

Element-wise ops (``penalty_grad``, ``soft_threshold``) compute each element in the array's dtype,
in the reference's order of operations, one element per thread of a grid-stride loop (so ``out``
may be ``w``). Reductions accumulate in float64: ``penalty_sums`` keeps per-thread partials and
adds them atomically into ``_SLOTS`` slots per sum (spreading the atomics over many addresses),
which the host adds up; ``group_lasso`` runs one thread per group, its norm a sequential float64
sum. Both differ from the reference only by summation order.

No fused multiply-add. NVVM contracts ``a * b + c`` into one FMA by default and ``cuda.jit`` has
no per-kernel switch for it (``fastmath=False`` does not turn contraction off), so every multiply
whose result feeds an add or subtract goes through ``mul_rn_device``: libdevice's
``__nv_fmul_rn`` / ``__nv_dmul_rn`` (PTX ``mul.rn``, which is never contracted) on the GPU, a
plain multiply under the simulator. Divisions and square roots are IEEE-rounded (NVVM's defaults,
no fastmath).

NaN payloads: NVIDIA GPUs return a canonical NaN from arithmetic, so on hardware a NaN result may
differ in payload and sign from NumPy's (which propagates an input NaN); selects and copies keep
the payload everywhere. Under the simulator the bits match the reference exactly.
"""
import math

import numpy as np
from numba import cuda

from .. import _config
from .philox import (_simulated, dev_in, dev_out, finish, launch_1d, max_blocks, to_device,
                     to_device_args)


# --- device helpers -----------------------------------------------------------------------------

def mul_rn_device(a, b):
    """``a * b`` rounded on its own, never fused into a following add (same dtype operands).

    Usable from any ``@cuda.jit`` kernel; under the simulator it is the plain Python multiply.
    """
    return a * b


def sqrt_device(x):
    """IEEE square root in x's dtype (float32 stays float32; sqrt of a negative is NaN)."""
    return np.sqrt(x)


if not _simulated():
    # On the GPU the two helpers above are replaced, at typing time, by these implementations.
    from numba.core import types as _types
    from numba.cuda import libdevice as _libdevice
    from numba.cuda.extending import overload as _overload

    @_overload(mul_rn_device, target="cuda")
    def _mul_rn_overload(a, b):
        if a == _types.float32 and b == _types.float32:
            return lambda a, b: _libdevice.fmul_rn(a, b)
        if a == _types.float64 and b == _types.float64:
            return lambda a, b: _libdevice.dmul_rn(a, b)
        return None

    @_overload(sqrt_device, target="cuda")
    def _sqrt_overload(x):
        if isinstance(x, _types.Float):
            return lambda x: math.sqrt(x)  # sqrt.rn.f32 / sqrt.rn.f64
        return None


@cuda.jit(device=True)
def sgn_device(x, one, zero):
    """np.sign(x): +-1, +0 for +-0 (NumPy gives +0 for -0 too), x itself (the NaN) for NaN."""
    if x > 0:
        return one
    if x < 0:
        return -one
    if x == 0:
        return zero
    return x


@cuda.jit(device=True)
def soft_device(x, t, zero):
    """soft(x, t): x - t where x > t, x + t where x < -t, x where x is NaN, else +0."""
    if x > t:
        return x - t
    if x < -t:
        return x + t
    if x != x:
        return x
    return zero


# --- kernels ------------------------------------------------------------------------------------

_SLOTS = 2048  # atomic slots per sum in penalty_sums: few threads contend for one address

_MODE_L1, _MODE_L2, _MODE_BOTH = 0, 1, 2


@cuda.jit(cache=True)
def _penalty_sums_kernel(w, nslots, slots):
    # slots[k] += this thread's sum |w|, slots[nslots + k] += its sum w**2, k = thread % nslots.
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    s1 = np.float64(0.0)
    s2 = np.float64(0.0)
    for i in range(start, w.size, stride):
        x = np.float64(w[i])
        s1 += abs(x)
        s2 += x * x
    if start < w.size:
        k = start % nslots
        cuda.atomic.add(slots, k, s1)
        cuda.atomic.add(slots, nslots + k, s2)


@cuda.jit(cache=True)
def _penalty_grad_kernel(w, l1, c2, mode, accumulate, out):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    one = w.dtype.type(1)
    zero = w.dtype.type(0)
    for i in range(start, w.size, stride):
        x = w[i]
        if mode == _MODE_L1:
            g = mul_rn_device(l1, sgn_device(x, one, zero))
        elif mode == _MODE_L2:
            g = mul_rn_device(c2, x)
        else:
            g = mul_rn_device(l1, sgn_device(x, one, zero)) + mul_rn_device(c2, x)
        if accumulate:
            out[i] = out[i] + g
        else:
            out[i] = g


@cuda.jit(cache=True)
def _soft_threshold_kernel(w, t, s, out):
    # Each element is read before the same thread writes it: out may be w.
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    zero = w.dtype.type(0)
    for i in range(start, w.size, stride):
        out[i] = soft_device(w[i], t, zero) * s


@cuda.jit(cache=True)
def _group_lasso_kernel(w, length, inner, ngroups, t, out):
    # w, out: flat views of (A, L, B); group j = (a, b) = (j // B, j % B) holds w[a, :, b], the
    # elements a * L * B + b + l * B. Neighbouring threads read neighbouring addresses.
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    t64 = np.float64(t)
    for j in range(start, ngroups, stride):
        base = (j // inner) * length * inner + j % inner
        acc = np.float64(0.0)
        for l in range(length):
            x = np.float64(w[base + l * inner])
            acc += x * x
        norm = sqrt_device(acc)
        if norm > t64:
            f = 1.0 - t64 / norm
        else:
            f = 0.0
        fw = w.dtype.type(f)
        for l in range(length):
            e = base + l * inner
            out[e] = w[e] * fw


@cuda.jit(cache=True)
def _all_finite_kernel(a, flag):
    # flag[0] starts at 1; a thread that meets a NaN or inf stores 0 (every writer stores the
    # same value, so the race is benign) and stops looking.
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, a.size, stride):
        if not math.isfinite(a[i]):
            flag[0] = 0
            break


# --- ops (the backend contract, see fastreg._registry) --------------------------------------------

def penalty_sums(w):
    """``(sum |w|, sum w**2)`` of a 1-D array, accumulated in float64 (any order).

    Parameters
    ----------
    w : device or host array (n,), float32 or float64

    Returns
    -------
    (float, float)
        The two sums, as Python floats.
    """
    w_d = dev_in(w)
    n = w_d.size
    if n == 0:
        return 0.0, 0.0
    tpb = _config.cuda_threads_per_block()
    blocks = min((n + tpb - 1) // tpb, max_blocks(tpb))
    nslots = min(blocks * tpb, _SLOTS)
    slots = to_device(np.zeros(2 * nslots, np.float64))
    _penalty_sums_kernel[blocks, tpb](w_d, np.int64(nslots), slots)
    host = slots.copy_to_host()
    return float(host[:nslots].sum()), float(host[nslots:].sum())


def penalty_grad(w, l1, c2, out, accumulate):
    """Gradient of ``l1 * sum|w| + (c2 / 2) * sum w**2``, as fastreg.reference.penalty_grad.

    g = l1 * sgn(w) when c2 == 0; c2 * w when l1 == 0; l1 * sgn(w) + c2 * w otherwise.

    Parameters
    ----------
    w, out : device or host arrays (n,), the same float dtype
    l1, c2 : scalars of w's dtype
    accumulate : bool
        True: out = out + g (one add); False: out = g.

    Returns
    -------
    None
    """
    dt = np.dtype(w.dtype)
    l1, c2 = dt.type(l1), dt.type(c2)
    w_d = dev_in(w)
    out_d = dev_out(out, copy_in=bool(accumulate))
    if w_d.size == 0:
        return
    if c2 == 0:
        mode = _MODE_L1
    elif l1 == 0:
        mode = _MODE_L2
    else:
        mode = _MODE_BOTH
    launch_1d(_penalty_grad_kernel, w_d.size, w_d, l1, c2, np.int32(mode), bool(accumulate),
              out_d)
    finish(out, out_d)


def soft_threshold(w, t, s, out):
    """out = s * soft(w, t), as fastreg.reference.soft_threshold; out may be w.

    Parameters
    ----------
    w, out : device or host arrays (n,), the same float dtype
    t : scalar of w's dtype, >= 0
    s : scalar of w's dtype (1, or 1 / (1 + 2 * t2) for the elastic net)

    Returns
    -------
    None
    """
    dt = np.dtype(w.dtype)
    (w_d,), out_d = to_device_args((w,), out)
    if w_d.size == 0:
        return
    launch_1d(_soft_threshold_kernel, w_d.size, w_d, dt.type(t), dt.type(s), out_d)
    finish(out, out_d)


def group_lasso(w, t, out):
    """Group soft-thresholding of the groups ``w[a, :, b]``, as fastreg.reference.group_lasso.

    Each group is scaled by ``f = max(0, 1 - t / ||group||_2)`` (norm and f in float64, f cast
    to w's dtype, one multiply); groups with norm <= t become zeros.

    Parameters
    ----------
    w, out : device or host arrays (A, L, B), the same float dtype, C-contiguous
    t : float (float64 math, whatever w's dtype), >= 0

    Returns
    -------
    None
    """
    (w_d,), out_d = to_device_args((w,), out)
    if w_d.size == 0:
        return
    a, length, inner = (int(s) for s in w_d.shape)
    ngroups = a * inner
    launch_1d(_group_lasso_kernel, ngroups, w_d.reshape(w_d.size), np.int64(length),
              np.int64(inner), np.int64(ngroups), np.float64(t), out_d.reshape(out_d.size))
    finish(out, out_d)


def all_finite(a):
    """True when no element of the 1-D array is NaN or inf.

    Parameters
    ----------
    a : device or host array (n,)

    Returns
    -------
    bool
    """
    a_d = dev_in(a)
    if a_d.size == 0:
        return True
    flag = to_device(np.ones(1, np.int32))
    launch_1d(_all_finite_kernel, a_d.size, a_d, flag)
    return bool(flag.copy_to_host()[0])
