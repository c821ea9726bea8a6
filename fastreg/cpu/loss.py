"""Softmax cross-entropy and its gradient on the CPU with Numba (definitions in
fastreg/reference/loss.py).

One pass over each row of logits, which stays in L1 while it is worked on:

1. ``m``: the row maximum (LANES running maxima, then folded in lane order);
2. ``e_c = exp(x_c - m)`` in the logits' dtype, written to a per-task scratch row, and
   ``s = sum e_c`` in float64; the smoothing / soft-target sums ``A = sum a_c`` and
   ``B = sum a_c (x_c - m)`` in float64 too; then ``loss = A log(s) - B``;
3. ``grad_c = dtype(k e_c - scale a_c)`` with ``k = scale A / s``, everything in float64 and
   rounded once (the target class of a hard row is written last, from its own ``a``).

Order of operations, shared exactly with the C backend (csrc/loss.c) so that the two give the
same bits: every float64 sum runs over L lanes (L = the smallest power of two >= C, at most
LANES), lane ``k`` adding elements ``k, k + L, k + 2 L, ...`` in order, and the lanes are then
folded pairwise (``acc[k] += acc[k + h]`` for h = L/2, ..., 1); ``exp`` is the
polynomial below (Cephes' expf for float32; a degree-13 Taylor polynomial for float64), with
the same operations in the same order in both, no fused multiply-add (no fastmath here,
-ffp-contract=off there), so both backends round identically; ``log`` is libm's on both.
Exponentials below the smallest normal number are flushed to 0 (the row sum is >= 1, so a
relative 1e-38 is lost at most).

Accuracy: the float32 exp is within 1 float32 ulp of the correctly rounded value on [-87.33, 0]
(the float64 one within 2 ulps; tests/test_loss.py checks both on 200,000 points). Why float64
sums: the sum of a row's float32 exponentials, in this lane order, measured against its exact
value (200 rows of normal logits times 1 or 5): float32 lanes err up to 1.1e-7 / 2.9e-7 relative
at C = 1000 and 1.4e-7 / 1.4e-6 (12 float32 ulps) at C = 32000; float64 lanes stay below 3e-15.
They cost little: in the C kernel, the exponential pass with its float64 adds took 18 ms on
(8192, 1000) float32, the exponentials alone 16 ms (one thread, AVX2).

Work: each row is a task unit; tasks of about TASK elements of whole rows are spread over the
threads (``_threads.plan`` with the "elementwise" grain, the work weighted by WEIGHT for the
exponential) by split kernels (share ``share`` of ``shares`` of the tasks, see
fastreg/cpu/_jit.py).

Cold compile (an empty Numba cache): the row helpers are inlined into the task functions at
Numba's IR level (``inline``), so the first call compiles the kernel and one task function (with
``_exp``) rather than a chain of functions each re-optimized by LLVM in its caller; scratch rows
are cleared by loops, not slice assignments.
"""
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from .. import _threads
from ._jit import inline, jit, launch, split

LANES = 64          # float64 partial sums (and running maxima) per row: the shared order
TASK = 1 << 15      # elements per parallel task (whole rows)
WEIGHT = 4          # work per element relative to an elementwise op (exp), for the grain


# --- bit casts --------------------------------------------------------------------------------

@intrinsic
def _bits(typingctx, x):
    """The IEEE bits of a float32 (uint32) or float64 (uint64)."""
    ut = types.uint32 if x == types.float32 else types.uint64

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(ut.bitwidth))

    return ut(x), codegen


@intrinsic
def _float(typingctx, u):
    """The float32 (uint32) or float64 (uint64) with these bits."""
    ft = types.float32 if u == types.uint32 else types.float64

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(ft))

    return ft(u), codegen


# --- exp(d) for d <= 0 (or NaN) ---------------------------------------------------------------
# k = round(d / ln 2) by adding 1.5 * 2**(mantissa bits) (the sum's low bits are k, round to
# nearest even), r = d - k ln2 with ln2 in two parts (k * hi is exact), exp(r) by a polynomial,
# times 2**k built from k's bits. Valid while k >= the smallest normal exponent: below that
# (d < MIN) the result is 0. NaN stays NaN (d < MIN is false for NaN).

F32 = np.float32
F32_LOG2E = F32(1.44269504088896341)
F32_MAGIC = F32(12582912.0)                    # 1.5 * 2**23
F32_MAGIC_BIAS = np.uint32(0x4B400000 - 127)   # bits(MAGIC) - exponent bias
F32_LN2_HI = F32(0.693359375)
F32_LN2_LO = F32(-2.12194440e-4)
F32_P = tuple(F32(v) for v in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                               4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
F32_ONE = F32(1.0)
F32_ZERO = F32(0.0)
F32_MIN = F32(-87.33)                          # exp(-87.33) ~ 1.2e-38: still normal

F64_LOG2E = 1.4426950408889634
F64_MAGIC = 6755399441055744.0                 # 1.5 * 2**52
F64_MAGIC_BIAS = np.uint64(0x4338000000000000 - 1023)
F64_LN2_HI = 6.93147180369123816490e-01        # fdlibm's split: k * hi exact for |k| < 2**20
F64_LN2_LO = 1.90821492927058770002e-10
F64_P = tuple(1.0 / float(np.prod(np.arange(1, n + 1, dtype=np.float64)))
              for n in range(13, 1, -1))        # 1/13!, ..., 1/2!
F64_MIN = -708.3                               # exp(-708.3) ~ 2.5e-308: still normal


def _exp(d):
    """exp(d) for d <= 0 in d's dtype (see above); a jit-only helper."""
    raise NotImplementedError("_exp runs inside Numba kernels only")


def _exp_f32(d):
    t = d * F32_LOG2E + F32_MAGIC
    kf = t - F32_MAGIC
    r = d - kf * F32_LN2_HI
    r = r - kf * F32_LN2_LO
    p = F32_P[0]
    p = p * r + F32_P[1]
    p = p * r + F32_P[2]
    p = p * r + F32_P[3]
    p = p * r + F32_P[4]
    p = p * r + F32_P[5]
    y = p * (r * r) + r + F32_ONE
    scale = _float(np.uint32((_bits(t) - F32_MAGIC_BIAS) << np.uint32(23)))
    e = y * scale
    return F32_ZERO if d < F32_MIN else e


def _exp_f64(d):
    t = d * F64_LOG2E + F64_MAGIC
    kf = t - F64_MAGIC
    r = d - kf * F64_LN2_HI
    r = r - kf * F64_LN2_LO
    p = F64_P[0]
    p = p * r + F64_P[1]
    p = p * r + F64_P[2]
    p = p * r + F64_P[3]
    p = p * r + F64_P[4]
    p = p * r + F64_P[5]
    p = p * r + F64_P[6]
    p = p * r + F64_P[7]
    p = p * r + F64_P[8]
    p = p * r + F64_P[9]
    p = p * r + F64_P[10]
    p = p * r + F64_P[11]
    y = (p * r + 1.0) * r + 1.0
    scale = _float(np.uint64((_bits(t) - F64_MAGIC_BIAS) << np.uint64(52)))
    e = y * scale
    return 0.0 if d < F64_MIN else e


@overload(_exp, inline="always", jit_options={"cache": True})
def _exp_overload(d):
    if d == types.float32:
        return _exp_f32
    if d == types.float64:
        return _exp_f64
    return None


# --- one row --------------------------------------------------------------------------------
# Loops over blocks of LANES elements, each block's work as short inner loops over k < LANES
# that LLVM vectorizes one by one (a single loop computing exp and adding into the float64
# lanes is not vectorized; nor are loops over blocks of 16, whose per-block overhead dominates).

@inline
def _lanes(c):
    """Lanes of a row of c classes: the smallest power of two >= c, at most LANES (short rows do
    not pay for 64 lanes); csrc/loss.c's fr_ce_lanes."""
    lanes = 1
    while lanes < c and lanes < LANES:
        lanes *= 2
    return lanes


@inline
def _fold(acc):
    """The sum of the LANES lanes, pairwise: acc[k] += acc[k + h] for h = LANES/2, ..., 1."""
    h = acc.size // 2
    while h >= 1:
        for k in range(h):
            acc[k] += acc[k + h]
        h //= 2
    return acc[0]


@inline
def _row_max(row, mx):
    """max(row) (a NaN is skipped; it reaches the loss through exp); mx: LANES scratch. The max
    of a set does not depend on the order it is taken in (but for the sign of a zero)."""
    lanes = mx.size
    for k in range(lanes):   # loops, not slice assignments (their shape checks compile slowly)
        mx[k] = -np.inf
    c = row.size
    full = c - c % lanes
    for j in range(0, full, lanes):
        blk = row[j:j + lanes]
        for k in range(lanes):
            v = blk[k]
            mx[k] = v if v > mx[k] else mx[k]
    for k in range(c - full):
        v = row[full + k]
        mx[k] = v if v > mx[k] else mx[k]
    m = mx[0]
    for k in range(1, lanes):
        m = mx[k] if mx[k] > m else m
    return m


@inline
def _row_exp(row, m, cw, smooth, e, acc, acc2):
    """e = exp(row - m) (e: scratch row); returns (sum e, sum cw (row - m)) in float64, lane
    order; the second is 0 unless ``smooth`` (a hard row's smoothing term)."""
    lanes = acc.size
    for k in range(lanes):
        acc[k] = 0.0
        acc2[k] = 0.0
    c = row.size
    for j in range(0, c, lanes):
        n = min(lanes, c - j)
        blk = row[j:j + n]
        eb = e[j:j + n]
        for k in range(n):
            eb[k] = _exp(blk[k] - m)
        for k in range(n):
            acc[k] += np.float64(eb[k])
        if smooth:
            wb = cw[j:j + n]
            for k in range(n):
                acc2[k] += wb[k] * np.float64(blk[k] - m)
    s = _fold(acc)
    b = _fold(acc2) if smooth else 0.0
    return s, b


@inline
def _row_soft(row, m, t, tw, cw, e, acc, acc2, acc3):
    """e = exp(row - m); returns (sum e, A, B) in float64, lane order: A = sum a_c,
    B = sum a_c (row_c - m), a_c = tw_c t_c + cw_c."""
    lanes = acc.size
    for k in range(lanes):
        acc[k] = 0.0
        acc2[k] = 0.0
        acc3[k] = 0.0
    c = row.size
    for j in range(0, c, lanes):
        n = min(lanes, c - j)
        blk = row[j:j + n]
        eb = e[j:j + n]
        tb = t[j:j + n]
        twb = tw[j:j + n]
        cwb = cw[j:j + n]
        for k in range(n):
            eb[k] = _exp(blk[k] - m)
        for k in range(n):
            acc[k] += np.float64(eb[k])
        for k in range(n):
            a = twb[k] * np.float64(tb[k]) + cwb[k]
            acc2[k] += a
            acc3[k] += a * np.float64(blk[k] - m)
    return _fold(acc), _fold(acc2), _fold(acc3)


@inline
def _row_grad_hard(e, k, scale, cw, smooth, g):
    """g = dtype(k e - scale cw) (smoothing) or dtype(k e)."""
    if smooth:
        for i in range(e.size):
            g[i] = g.dtype.type(k * np.float64(e[i]) - scale * cw[i])
    else:
        for i in range(e.size):
            g[i] = g.dtype.type(k * np.float64(e[i]))


@inline
def _row_grad_soft(e, t, tw, cw, k, scale, g):
    """g = dtype(k e - scale (tw t + cw)); g may be t (each element read before written)."""
    for i in range(e.size):
        a = tw[i] * np.float64(t[i]) + cw[i]
        g[i] = g.dtype.type(k * np.float64(e[i]) - scale * a)


# --- tasks and kernels --------------------------------------------------------------------------

@jit
def _hard_task(x, target, tw, cw, smooth, coef, loss, grad, has_grad, r0, r1):
    """Rows r0 .. r1 - 1; coef = (ignore_index, scale)."""
    ignore_index, scale = coef
    c = x.shape[1]
    lanes = _lanes(c)
    e = np.empty(c, x.dtype)
    acc = np.empty(lanes)
    acc2 = np.empty(lanes)
    mx = np.empty(lanes, x.dtype)
    cw_sum = 0.0
    if smooth:
        for i in range(c):
            cw_sum += cw[i]
    for r in range(r0, r1):
        y = target[r]
        if y == ignore_index:
            loss[r] = 0.0
            if has_grad:
                for i in range(c):
                    grad[r, i] = 0
            continue
        row = x[r]
        m = _row_max(row, mx)
        s, b = _row_exp(row, m, cw, smooth, e, acc, acc2)
        dy = np.float64(row[y] - m)
        if smooth:
            big_a = tw[y] + cw_sum
            big_b = tw[y] * dy + b
            a_y = tw[y] + cw[y]
        else:
            big_a = tw[y]
            big_b = tw[y] * dy
            a_y = tw[y]
        loss[r] = big_a * np.log(s) - big_b
        if has_grad:
            k = scale * big_a / s
            ey = e[y]
            g = grad[r]
            _row_grad_hard(e, k, scale, cw, smooth, g)
            g[y] = g.dtype.type(k * np.float64(ey) - scale * a_y)


@jit
def _soft_task(x, target, tw, cw, scale, loss, grad, has_grad, r0, r1):
    c = x.shape[1]
    lanes = _lanes(c)
    e = np.empty(c, x.dtype)
    acc = np.empty(lanes)
    acc2 = np.empty(lanes)
    acc3 = np.empty(lanes)
    mx = np.empty(lanes, x.dtype)
    for r in range(r0, r1):
        row = x[r]
        t = target[r]
        m = _row_max(row, mx)
        s, big_a, big_b = _row_soft(row, m, t, tw, cw, e, acc, acc2, acc3)
        loss[r] = big_a * np.log(s) - big_b
        if has_grad:
            _row_grad_soft(e, t, tw, cw, scale * big_a / s, scale, grad[r])


@split
def _hard_kernel(x, target, tw, cw, smooth, coef, loss, grad, has_grad, rows_per_task, share,
                 shares):
    nrows = x.shape[0]
    ntasks = (nrows + rows_per_task - 1) // rows_per_task
    for task in range(share * ntasks // shares, (share + 1) * ntasks // shares):
        r0 = task * rows_per_task
        _hard_task(x, target, tw, cw, smooth, coef, loss, grad, has_grad, r0,
                   min(r0 + rows_per_task, nrows))


@split
def _soft_kernel(x, target, tw, cw, scale, loss, grad, has_grad, rows_per_task, share, shares):
    nrows = x.shape[0]
    ntasks = (nrows + rows_per_task - 1) // rows_per_task
    for task in range(share * ntasks // shares, (share + 1) * ntasks // shares):
        r0 = task * rows_per_task
        _soft_task(x, target, tw, cw, scale, loss, grad, has_grad, r0,
                   min(r0 + rows_per_task, nrows))


# --- the backend's functions --------------------------------------------------------------------

def _no_grad(x):
    """A writable stand-in for grad=None (never written: has_grad is False)."""
    return np.empty((0, 0), x.dtype)


def _read_only(a):
    """``a`` as a read-only array (a view when it is writable). The kernels only read the class
    coefficients; passing them read-only always keeps one compiled version per dtype (Numba
    compiles a separate one per writability: fastreg.loss caches the unweighted coefficients
    read-only, while class-weighted ones are fresh writable arrays)."""
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def _plan(x):
    """(threads, rows per task) for logits x (R, C)."""
    r, c = x.shape
    return (_threads.plan(r * c * WEIGHT, "elementwise"),
            max(1, min(r, TASK // max(c, 1))))


def ce_hard(x, target, tw, cw, ignore_index, scale, loss, grad):
    if x.shape[0] == 0:
        return
    nthreads, rows = _plan(x)
    smooth = cw is not None
    g = _no_grad(x) if grad is None else grad
    tw = _read_only(tw)
    args = (x, target, tw, _read_only(cw) if smooth else tw, smooth,
            (np.int64(ignore_index), np.float64(scale)), loss, g, grad is not None)
    launch(_hard_kernel, nthreads, *args, rows)


def ce_soft(x, target, tw, cw, scale, loss, grad):
    if x.shape[0] == 0:
        return
    nthreads, rows = _plan(x)
    g = _no_grad(x) if grad is None else grad
    cw = np.zeros_like(tw) if cw is None else cw
    args = (x, target, _read_only(tw), _read_only(cw), np.float64(scale), loss, g,
            grad is not None)
    launch(_soft_kernel, nthreads, *args, rows)
