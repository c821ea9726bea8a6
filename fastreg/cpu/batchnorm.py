"""Batch normalization on the CPU with Numba (definitions in fastreg/reference/batchnorm.py).

Decide in Python, compute in Numba. Each op starts with ``_plan(shape, itemsize)``, plain Python,
which picks the strategy and the tile sizes from the limits below; the kernels get them as ints
(a global read inside ``@jit`` is frozen at its first compile, so no limit is read there). Tests
shrink the limits, or pass ``plan=``, to reach every strategy with tiny inputs; every op returns
the ``Plan`` it ran.

Layout. Inputs are C-contiguous (A, C, B) arrays, which the kernels see flat, as a *view*
(A', C', B') of view rows, view channels and values per view row:

* rows regime (B >= ROWS_MIN_B, e.g. NCHW): the view is (A, C, B). Channel c is A rows of B
  contiguous values, cut into pieces of at most SEG values. Sums go to LANES lanes.
* columns regime (B < ROWS_MIN_B, e.g. NHWC, (N, C)): the view is (1, 1, A * K), K = C * B: one
  view channel holding every channel, whose pieces are ``rows`` whole rows of K values. Sums and
  loops are L = span * K values wide (span rows of K joined: short rows make long loops), and
  lane k belongs to channel (k % K) // B; per-channel values come as rows of L.

Work. A task is ``per_task`` consecutive pieces of one view channel (about TASK or COL_TASK
values). A kernel runs one step over its work items: SUMS (each task adds its values into its
own float64 lanes), APPLY (the element-wise formula over runs of per_task pieces in memory
order: forward streams, which the hardware prefetches), or FUSED (rows regime, training ops: one
item per channel, which sums the channel, computes its coefficients and applies them while the
channel is still in cache, so that x is read from memory once instead of twice; when a channel's
data fits in about one core's L2 and every thread gets a channel). After SUMS, the kernel (on the
calling thread) adds each channel's lanes over its tasks and computes the coefficients. An op is
one kernel launch: SUMS then APPLY, FUSED, or one step alone.

Sums. Value i of a piece goes to lane i % L (a row of partial sums, which LLVM vectorizes without
fastmath), four rows of L per pass; float64 data with Kahan's compensation, float32 data without
(its float64 sums are far more precise than it needs). Lanes and tasks are then added in a fixed
order with Neumaier's compensation. Tasks depend on the plan only, never on the thread count:
every run of a plan gives the same bits, serial or parallel. (FUSED keeps one set of lanes per
channel: its sums may differ from SUMS's in the last bits.) Once a sum is inf or NaN its
compensation is dropped, so that +-inf and NaN come out as from a plain sum, as in the reference.

Statistics are shifted sums, s1 = sum(x - x0) and s2 = sum((x - x0)**2) with x0 the channel's
first value (0 if not finite): mean = x0 + s1 / n, M2 = s2 - s1**2 / n, stable for data far from
zero. The backward sums use the saved mean as the shift. Element-wise work is in x's dtype with
the coefficients computed in float64 and cast, as in the reference; no fastmath, so no FMA.

Outputs. PLAIN writes the output directly. IN_PLACE (out is x, gx is gy) and STREAM (large
outputs) compute each chunk into a buffer and then copy it out: a loop that reads and writes the
same memory through two arrays fails LLVM's overlap check and runs scalar, and streaming stores
(fastreg/cpu/penalty.py) go from the chunk's first 64-byte boundary on.

Compile time is a budget (bench/compile_time.py): two kernels (forward, backward), each a
``twin``, whose ``prange`` bodies call the slice loops directly (every compiled function is
optimized again inside each caller, so the call tree stays shallow); optional arrays are flags
with stand-ins (a 0-size residual or gres, x as y without a ReLU) and the steps are ints, so each
kernel compiles once per dtype; helpers called only from compiled code have no CPython wrapper;
and no helper gets a literal argument (Numba compiles a specialization per literal).
"""
from collections import namedtuple

import numba
import numpy as np
from numba import prange

from .. import _threads
from ..reference import batchnorm as _ref
from ..reference.batchnorm import bn_backward_coeffs, bn_forward_coeffs
from ._jit import _OPTIONS, jit, launch, twin
from .penalty import CAN_STREAM, STREAM_ALIGN, _sfence, _stream_store

__all__ = ["bn_stats", "bn_apply", "bn_forward_train", "bn_backward_reduce", "bn_backward_apply",
           "bn_backward", "bn_forward_coeffs", "bn_running_update", "bn_backward_coeffs"]

# Limits, read by _plan only (Python): tests shrink them.
ROWS_MIN_B = 32         # B from which a channel's rows are the unit of work
SEG = 1 << 15           # longest piece of a row (rows regime)
TASK = 1 << 16          # values per task (rows regime)
LANES = 64              # lanes of the sums (rows regime)
CHUNK = 1024            # element-wise loop length (rows regime)
COL_TASK = 1 << 18      # values per task (columns regime)
SPAN = 2048             # shortest loop of joined rows (columns regime)
SMALL_SPAN = 512        # the same for a single task: lanes in L1, shorter fills (1.3x on (64, 256))
FUSE_MAX_BYTES = 1 << 20     # data a fused channel reads: about one core's L2
STREAM_MIN_BYTES = 64 << 20  # smaller outputs stay in cache (about twice the L3)
STREAM_MIN_ROW = 2048   # bytes: shorter rows would spend more on their unstreamed heads

SUMS, APPLY, FUSED, NONE = 0, 1, 2, -1  # kernel steps
PLAIN, STREAM, IN_PLACE = 0, 1, 2  # output modes

Plan = namedtuple("Plan", "regime fused nthreads stream tile mode")
Plan.__doc__ = """How one call runs: regime "rows" or "cols"; fused; nthreads (1: serially, on
the calling thread); stream (outputs big enough to stream); tile (A', C', B', seg, nb, per_task,
ntask, lanes, chunk, Cc, Bc, n): the view, piece length, pieces per view row, pieces per task,
tasks per view channel, lanes of the sums, element-wise loop length, channels per view channel
and lanes per channel in a lane row (columns regime C and B, rows regime 1 and 1), values per
channel; mode PLAIN, STREAM or IN_PLACE once an op has seen its arrays (None from _plan)."""

# Helpers called only from compiled code: no CPython or C wrapper to compile with them.
inner = numba.njit(no_cpython_wrapper=True, no_cfunc_wrapper=True, **_OPTIONS)


def _cdiv(a, b):
    return -(-a // b)


_PLANS = {}  # (shape, itemsize, arrays, nthreads) -> the Plan with each mode; tests clear it


def _plan(shape, itemsize, arrays=1):
    """The Plan for (A, C, B) data; ``arrays``: the (A, C, B) arrays a fused channel reads (1
    forward, 2 or 3 backward)."""
    return _plans(shape, itemsize, arrays)[0]


def _plans(shape, itemsize, arrays):
    """(the Plan, the same with mode PLAIN, STREAM, IN_PLACE), cached: building them costs as much
    as a small layer's kernel. Clear _PLANS after changing a limit."""
    A, C, B = shape
    size = A * C * B
    nthreads = _threads.plan(size, "batchnorm")
    key = (shape, itemsize, arrays, nthreads)
    plans = _PLANS.get(key)
    if plans is None:
        if len(_PLANS) > 1024:  # many shapes (variable batch sizes): start again
            _PLANS.clear()
        if B >= ROWS_MIN_B:
            nb = _cdiv(B, SEG)
            seg = _cdiv(B, nb)
            per_task = max(1, TASK // seg)
            tile = (A, C, B, seg, nb, per_task, _cdiv(A * nb, per_task), LANES,
                    min(CHUNK, seg), 1, 1, A * B)
            regime, fused, row = "rows", A * B * itemsize * arrays <= FUSE_MAX_BYTES and \
                C >= nthreads, B
        else:
            K = max(C * B, 1)
            rows = max(1, COL_TASK // K)
            ntask = _cdiv(A, rows)
            L = min(max(1, (SPAN if ntask > 1 else SMALL_SPAN) // K), max(A, 1)) * K
            tile = (1, 1, A * K, rows * K, ntask, 1, ntask, L, L, C, B, A * B)
            regime, fused, row = "cols", False, max(K, SPAN)
        stream = (CAN_STREAM and size * itemsize >= STREAM_MIN_BYTES
                  and row * itemsize >= STREAM_MIN_ROW)
        plans = _PLANS[key] = tuple(Plan(regime, fused, nthreads, stream, tile, m)
                                    for m in (None, PLAIN, STREAM, IN_PLACE))
    return plans


# --- loops over one slice -----------------------------------------------------------------------

@inner
def _kahan(s, c, k, v):
    """s[k] += v with Kahan's compensation in c[k], dropped once s[k] is inf or NaN."""
    y = v - c[k]
    t = s[k] + y
    c[k] = (t - s[k]) - y if abs(t) < np.inf else 0.0
    s[k] = t


@inner
def _x_sums(xs, shift, acc):
    """acc += the shifted sums of the slice xs, value i into lane i % L (L = shift.size) minus
    shift[i % L]; acc rows: s1, its compensation, s2, its compensation. Four rows of L per pass
    (a quarter of the accumulator traffic of one)."""
    precise = np.float64(xs.dtype.type(0.1)) == 0.1  # float64 data (a constant LLVM folds)
    L = shift.size
    s1, c1, s2, c2 = acc[0], acc[1], acc[2], acc[3]
    full = xs.size - xs.size % (4 * L)
    for j in range(0, full, 4 * L):
        x0, x1 = xs[j:j + L], xs[j + L:j + 2 * L]
        x2, x3 = xs[j + 2 * L:j + 3 * L], xs[j + 3 * L:j + 4 * L]
        for k in range(L):
            d0 = np.float64(x0[k]) - shift[k]
            d1 = np.float64(x1[k]) - shift[k]
            d2 = np.float64(x2[k]) - shift[k]
            d3 = np.float64(x3[k]) - shift[k]
            v1 = (d0 + d1) + (d2 + d3)
            v2 = (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
            if precise:
                _kahan(s1, c1, k, v1)
                _kahan(s2, c2, k, v2)
            else:
                s1[k] += v1
                s2[k] += v2
    for j in range(full, xs.size, L):
        xk = xs[j:j + L]
        for k in range(xk.size):
            d = np.float64(xk[k]) - shift[k]
            if precise:
                _kahan(s1, c1, k, d)
                _kahan(s2, c2, k, d * d)
            else:
                s1[k] += d
                s2[k] += d * d


@inner
def _g_sums(gs, xs, ys, mu, masked, acc):
    """acc += (g, g * (x - mu)) as _x_sums, with g = gy, or gy where y > 0 (else 0) when
    ``masked`` (ys: x without a mask, not read then: a loop over the twelve slices is not
    vectorized as well as one over eight)."""
    precise = np.float64(xs.dtype.type(0.1)) == 0.1
    zero = gs.dtype.type(0)
    L = mu.size
    s1, c1, s2, c2 = acc[0], acc[1], acc[2], acc[3]
    full = xs.size - xs.size % (4 * L)
    for j in range(0, full if masked else 0, 4 * L):
        g0, g1, g2, g3 = gs[j:j + L], gs[j + L:j + 2 * L], gs[j + 2 * L:j + 3 * L], \
            gs[j + 3 * L:j + 4 * L]
        x0, x1, x2, x3 = xs[j:j + L], xs[j + L:j + 2 * L], xs[j + 2 * L:j + 3 * L], \
            xs[j + 3 * L:j + 4 * L]
        y0, y1, y2, y3 = ys[j:j + L], ys[j + L:j + 2 * L], ys[j + 2 * L:j + 3 * L], \
            ys[j + 3 * L:j + 4 * L]
        for k in range(L):
            a0 = np.float64(g0[k] if y0[k] > zero else zero)
            a1 = np.float64(g1[k] if y1[k] > zero else zero)
            a2 = np.float64(g2[k] if y2[k] > zero else zero)
            a3 = np.float64(g3[k] if y3[k] > zero else zero)
            m = mu[k]
            v1 = (a0 + a1) + (a2 + a3)
            v2 = ((a0 * (np.float64(x0[k]) - m) + a1 * (np.float64(x1[k]) - m))
                  + (a2 * (np.float64(x2[k]) - m) + a3 * (np.float64(x3[k]) - m)))
            if precise:
                _kahan(s1, c1, k, v1)
                _kahan(s2, c2, k, v2)
            else:
                s1[k] += v1
                s2[k] += v2
    for j in range(0, 0 if masked else full, 4 * L):
        g0, g1, g2, g3 = gs[j:j + L], gs[j + L:j + 2 * L], gs[j + 2 * L:j + 3 * L], \
            gs[j + 3 * L:j + 4 * L]
        x0, x1, x2, x3 = xs[j:j + L], xs[j + L:j + 2 * L], xs[j + 2 * L:j + 3 * L], \
            xs[j + 3 * L:j + 4 * L]
        for k in range(L):
            a0, a1, a2, a3 = np.float64(g0[k]), np.float64(g1[k]), np.float64(g2[k]), \
                np.float64(g3[k])
            m = mu[k]
            v1 = (a0 + a1) + (a2 + a3)
            v2 = ((a0 * (np.float64(x0[k]) - m) + a1 * (np.float64(x1[k]) - m))
                  + (a2 * (np.float64(x2[k]) - m) + a3 * (np.float64(x3[k]) - m)))
            if precise:
                _kahan(s1, c1, k, v1)
                _kahan(s2, c2, k, v2)
            else:
                s1[k] += v1
                s2[k] += v2
    for j in range(full, xs.size, L):
        gk, xk, yk = gs[j:j + L], xs[j:j + L], ys[j:j + L]
        for k in range(xk.size):
            a = np.float64(gk[k]) if (yk[k] > 0) | (not masked) else 0.0
            v = a * (np.float64(xk[k]) - mu[k])
            if precise:
                _kahan(s1, c1, k, a)
                _kahan(s2, c2, k, v)
            else:
                s1[k] += a
                s2[k] += v


@inner
def _put(src, o, mode):
    """o = src, with streaming stores from o's first 64-byte boundary on when mode is STREAM
    (the vector loop's stores are then aligned)."""
    h = o.size
    if mode == STREAM:
        h = min(o.size, (STREAM_ALIGN - o.ctypes.data % STREAM_ALIGN) % STREAM_ALIGN // o.itemsize)
    for i in range(h):
        o[i] = src[i]
    src, o = src[h:], o[h:]
    for i in range(o.size):
        _stream_store(o, i, src[i])


@inner
def _affine_slice(xs, rs, o, coef, opts, buf, uniform):
    """o = act((xs - ce) * sc + sh [+ rs]), the reference's order; act the ReLU (floor 0: +0.0
    for v <= 0, NaN kept) or nothing (floor -inf). In chunks of L (coef: rows ce, sc, sh of L
    values, value i of a chunk takes coefficient i; ``uniform``: one channel, coefficient 0
    everywhere, kept in registers: 1.9x faster than loading a row in cache-resident loops, and
    chunks of buf.size); opts (floor, eps, has_res, mode); buf: L values, where IN_PLACE and STREAM
    compute a chunk before _put copies it out."""
    floor, has_res, mode = opts[0], opts[2], opts[3]
    ce, sc, sh = coef
    c0, s0, h0 = ce[0], sc[0], sh[0]
    L = o.size if uniform and mode == PLAIN else (buf.size if uniform else ce.size)
    for j in range(0, o.size, max(L, 1)):
        m = min(L, o.size - j)
        oc = o[j:j + m]
        xc = oc if mode == IN_PLACE else xs[j:j + m]
        dst = oc if mode == PLAIN else buf[:m]
        rc = rs[j:j + m]  # empty without a residual
        if uniform and has_res:
            for i in range(m):
                v = (xc[i] - c0) * s0 + h0 + rc[i]
                dst[i] = v if not (v <= floor) else floor
        elif uniform:
            for i in range(m):
                v = (xc[i] - c0) * s0 + h0
                dst[i] = v if not (v <= floor) else floor
        elif has_res:
            for i in range(m):
                v = (xc[i] - ce[i]) * sc[i] + sh[i] + rc[i]
                dst[i] = v if not (v <= floor) else floor
        else:
            for i in range(m):
                v = (xc[i] - ce[i]) * sc[i] + sh[i]
                dst[i] = v if not (v <= floor) else floor
        if mode != PLAIN:
            _put(dst, oc, mode)


@inner
def _gback_slice(ins, o, gr, coef, flags, buf, uniform):
    """o = g * a - (x - ce) * b - d (training) or g * a, the reference's order, with g = gy, or gy
    where y > 0 (else +0) when masked; gr = g when has_gres. ins: slices (gy, x, y); coef: rows
    (ce, a, b, d) of L values (``uniform``: value 0 everywhere, see _affine_slice); flags
    (masked, training, has_gres, mode); buf: 2 L values (the masked g; the chunk for _put)."""
    gs, xs, ys = ins
    masked, training, has_gres, mode = flags
    ce, a, b, d = coef
    c0, a0, b0, d0 = ce[0], a[0], b[0], d[0]
    if uniform and mode == PLAIN and not masked:
        L = max(o.size, 1)  # no buffer is used: one pass
    else:
        L = buf.size // 2 if uniform else ce.size
    zero = o.dtype.type(0)
    for j in range(0, o.size, L):
        m = min(L, o.size - j)
        oc = o[j:j + m]
        g = oc if mode == IN_PLACE else gs[j:j + m]
        if masked:
            yc, gm = ys[j:j + m], buf[L:L + m]
            for i in range(m):
                gm[i] = g[i] if yc[i] > zero else zero
            g = gm
        if has_gres:
            _put(g, gr[j:j + m], mode)
        dst = oc if mode == PLAIN else buf[:m]
        xc = xs[j:j + m]
        if uniform and training:
            for i in range(m):
                dst[i] = g[i] * a0 - (xc[i] - c0) * b0 - d0
        elif uniform:
            for i in range(m):
                dst[i] = g[i] * a0
        elif training:
            for i in range(m):
                dst[i] = g[i] * a[i] - (xc[i] - ce[i]) * b[i] - d[i]
        else:
            for i in range(m):
                dst[i] = g[i] * a[i]
        if mode != PLAIN:
            _put(dst, oc, mode)


@inner
def _lane_totals(acc):
    """(s1, s2) as a (2, 1) array: Neumaier sums over the lanes of acc[0] - acc[1] and
    acc[2] - acc[3] (FUSED: one channel's lanes)."""
    out = np.empty((2, 1))
    for j in range(2):
        tot, comp = 0.0, 0.0
        for k in range(acc.shape[1]):
            v = acc[2 * j, k] - acc[2 * j + 1, k]
            u = tot + v
            comp += (tot - u) + v if abs(tot) >= abs(v) else (v - u) + tot
            tot = u
        out[j, 0] = tot + comp if abs(tot) < np.inf else tot  # comp is inf - inf otherwise
    return out


@inner
def _combine(block, Cc, Bc):
    """Per-channel (s1, s2) of a view channel's task sums block (ntask, 4, L), lane k belonging to
    channel (k % (Cc * Bc)) // Bc: Neumaier sums over the tasks and span rows, lane by lane of a
    row of K = Cc * Bc, then over each channel's Bc lanes, in order."""
    T, _, L = block.shape
    K = Cc * Bc
    tot, comp = np.empty((2, K)), np.empty((2, K))
    for j in range(2):
        for k in range(K):
            tot[j, k] = comp[j, k] = 0.0
    for t in range(T):
        for j in range(2):
            for r in range(0, L, K):
                for k in range(K):
                    v = block[t, 2 * j, r + k] - block[t, 2 * j + 1, r + k]
                    s, u = tot[j, k], tot[j, k] + v
                    comp[j, k] += (s - u) + v if abs(s) >= abs(v) else (v - u) + s
                    tot[j, k] = u
    out = np.empty((2, Cc))
    for j in range(2):
        for i in range(Cc):
            s, e = 0.0, 0.0
            for k in range(i * Bc, (i + 1) * Bc):
                # once a total is inf or NaN its compensation is inf - inf: leave it out
                v = tot[j, k] + comp[j, k] if abs(tot[j, k]) < np.inf else tot[j, k]
                u = s + v
                e += (s - u) + v if abs(s) >= abs(v) else (v - u) + s
                s = u
            out[j, i] = s + e if abs(s) < np.inf else s
    return out


@inner
def _forward_coeffs(c0, sums, n, coef, stats, eps):
    """Channels c0, c0 + 1, ... from their shifted sums (s1, s2) = sums (2, channels): mean and M2
    into stats (x0, mean, m2, invstd); unless center is 0-size, invstd and the bn_apply
    coefficients into coef (weight, bias, center, scale, shift), as bn_forward_coeffs with
    fold=False. (One call per view channel: a call per channel would cost more than the math,
    in reference counts of the arrays in the tuples.)"""
    weight, bias, center, scale, shift = coef
    x0, mean, m2, invstd = stats
    for i in range(sums.shape[1]):
        c, s1, s2 = c0 + i, sums[0, i], sums[1, i]
        q = s2 - s1 * (s1 / n)
        mean[c] = x0[c] + s1 / n
        m2[c] = q if not (q < 0.0) else 0.0  # rounding may leave it below 0; NaN stays
        if center.size:
            inv = 1.0 / np.sqrt(m2[c] / n + eps)
            invstd[c] = inv
            center[c] = mean[c]
            scale[c] = np.float64(weight[c]) * inv
            shift[c] = bias[c]


@inner
def _backward_coeffs(c0, sums, n, coef, stats):
    """Channels c0, c0 + 1, ... from their sums (s_dy, s_dyx) = sums (2, channels): into stats
    (mean, invstd, s_dy, s_dyx); unless center is 0-size, the parameter gradients and (center, a,
    b, d) into coef (weight, grad_weight, grad_bias, center, a, b, d), as bn_backward_coeffs (b and
    d also in inference, unused there)."""
    weight, grad_weight, grad_bias, center, a, b, d = coef
    mean, invstd, s_dy, s_dyx = stats
    for i in range(sums.shape[1]):
        c = c0 + i
        s_dy[c] = sums[0, i]
        s_dyx[c] = sums[1, i]
        if center.size:
            inv = invstd[c]
            a64 = np.float64(weight[c]) * inv
            grad_weight[c] = s_dyx[c] * inv
            grad_bias[c] = s_dy[c]
            center[c] = mean[c]
            a[c] = a64
            b[c] = a64 * inv * inv * s_dyx[c] / n
            d[c] = a64 * s_dy[c] / n


@inner
def _lane_row(v, Bc, out):
    """out[k] = v[(k % K) // Bc], K = v.size * Bc: the values v of a view channel's channels as a
    lane row (K divides out.size), written without integer divisions (they would cost more than
    the rest of a small call)."""
    K = v.size * Bc
    for i in range(v.size):
        for b in range(Bc):
            out[i * Bc + b] = v[i]
    for k in range(K, out.size):
        out[k] = out[k - K]


# --- kernels ------------------------------------------------------------------------------------
# A kernel runs up to two steps of one op (``steps``, NONE for no step) on a tile (Plan.tile).
# Each step is one prange over its work items, the item's work written out in the loop body:
# Numba optimizes every compiled callee again inside each caller (numba/numba#8085) and parfor
# outlines the loop body into a function of its own, so a task function between the two was
# compiled five times. After SUMS the kernel finishes the statistics on the calling thread.
# Work item q: SUMS task q, pieces [p0, p1) of view channel q // ntask; FUSED all of view channel
# q; APPLY a run of per_task pieces of the whole view, in memory order (one forward stream, which
# the hardware prefetches). Piece p is view row p // nb, values [b0, b0 + seg) of it,
# b0 = (p % nb) * seg.

@twin
def _forward_kernel(arrays, coef, stats, opts, steps, tile):
    """Forward steps. arrays: flat (x, residual, out), residual 0-size when there is none, x may
    be out; coef (weight, bias, center, scale, shift): with weights, center, scale and shift are
    computed here (the 0-size ones given are not used); without, they are given (APPLY) or not
    wanted (0-size: the statistics alone); stats (mean, m2, invstd) float64; opts (floor, eps,
    has_res, mode)."""
    x, r, o = arrays
    A, Cv, B, seg, nb, per_task, ntask, lanes, chunk, Cc, Bc, n = tile
    if coef[0].size:  # (made here: a NumPy allocation costs as much as a small layer's step)
        work = np.empty((3, coef[0].size), o.dtype)
        coef = (coef[0], coef[1], work[0], work[1], work[2])
    center, scale, shift = coef[2], coef[3], coef[4]
    x0 = np.empty(stats[0].size)  # each channel's shift: its first value (0 if not finite)
    all_stats = (x0, stats[0], stats[1], stats[2])
    part = np.empty((Cv * ntask if steps[0] == SUMS else 0, 4, lanes))  # SUMS's task sums
    uniform = Cc * Bc == 1  # the rows regime: a piece has one channel, scalar coefficients
    for step in steps:
        if step == NONE:
            continue
        items = Cv * ntask if step == SUMS else Cv
        if step == APPLY:
            items = (A * Cv * nb + per_task - 1) // per_task
        for i in prange(items):
            q = np.int64(i)
            c, p0, p1 = q, 0, A * nb  # FUSED
            if step == SUMS:
                c = q // ntask
                p0 = (q - c * ntask) * per_task
                p1 = min(p0 + per_task, A * nb)
            elif step == APPLY:
                c, p0, p1 = -1, q * per_task, min((q + 1) * per_task, A * Cv * nb)
            if step != APPLY:
                # every task records the shift (tasks of a channel may run at the same time)
                first = np.empty(Cc)
                for k in range(Cc):
                    v = np.float64(x[c * B + k * Bc])
                    first[k] = v if abs(v) < np.inf else 0.0
                    if p0 == 0:
                        x0[c * Cc + k] = first[k]
                shift_row = np.empty(lanes)
                _lane_row(first, Bc, shift_row)
                acc = np.empty((4, lanes)) if step == FUSED else part[q]
                for j in range(4):
                    for k in range(lanes):
                        acc[j, k] = 0.0
                for p in range(p0, p1):
                    lo = ((p // nb) * Cv + c) * B + (p % nb) * seg
                    _x_sums(x[lo:lo + min(seg, B - (p % nb) * seg)], shift_row, acc)
                if step == FUSED:
                    _forward_coeffs(c, _lane_totals(acc), n, coef, all_stats, opts[1])
            if step != SUMS:
                rows = np.empty((3, 1 if uniform else chunk), o.dtype)
                if not uniform:  # (one view channel)
                    _lane_row(center, Bc, rows[0])
                    _lane_row(scale, Bc, rows[1])
                    _lane_row(shift, Bc, rows[2])
                buf = np.empty(chunk, o.dtype)
                for p in range(p0, p1):
                    a, ch = (p // (Cv * nb), (p // nb) % Cv) if c < 0 else (p // nb, c)
                    if uniform:
                        rows[0, 0], rows[1, 0], rows[2, 0] = center[ch], scale[ch], shift[ch]
                    b0 = (p % nb) * seg
                    lo = (a * Cv + ch) * B + b0
                    hi = lo + min(seg, B - b0)
                    _affine_slice(x[lo:hi], r[lo:hi], o[lo:hi], (rows[0], rows[1], rows[2]),
                                  opts, buf, uniform)
                if opts[3] == STREAM:
                    _sfence()
        if step == SUMS:
            for cv in range(Cv):
                _forward_coeffs(cv * Cc, _combine(part[cv * ntask:(cv + 1) * ntask], Cc, Bc),
                                n, coef, all_stats, opts[1])


@twin
def _backward_kernel(arrays, coef, stats, flags, steps, tile):
    """Backward steps. arrays: flat (gy, x, y, gx, gres), y is x without a ReLU, gres 0-size when
    not wanted, gy may be gx; coef (weight, grad_weight, grad_bias, center, a, b, d), center
    0-size for the sums alone; stats (mean, invstd, s_dy, s_dyx) float64; flags (masked,
    training, has_gres, mode). With weights, (center, a, b, d) and (s_dy, s_dyx) are made here
    (the 0-size ones given are not used)."""
    gy, x, y, gx, gr = arrays
    A, Cv, B, seg, nb, per_task, ntask, lanes, chunk, Cc, Bc, n = tile
    if coef[0].size:
        C = coef[0].size
        work, sums = np.empty((4, C), gx.dtype), np.empty((2, C))
        coef = (coef[0], coef[1], coef[2], work[0], work[1], work[2], work[3])
        stats = (stats[0], stats[1], sums[0], sums[1])
    center, ca, cb, cd = coef[3], coef[4], coef[5], coef[6]
    part = np.empty((Cv * ntask if steps[0] == SUMS else 0, 4, lanes))
    uniform = Cc * Bc == 1
    for step in steps:
        if step == NONE:
            continue
        items = Cv * ntask if step == SUMS else Cv
        if step == APPLY:
            items = (A * Cv * nb + per_task - 1) // per_task
        for i in prange(items):
            q = np.int64(i)
            c, p0, p1 = q, 0, A * nb  # FUSED
            if step == SUMS:
                c = q // ntask
                p0 = (q - c * ntask) * per_task
                p1 = min(p0 + per_task, A * nb)
            elif step == APPLY:
                c, p0, p1 = -1, q * per_task, min((q + 1) * per_task, A * Cv * nb)
            if step != APPLY:
                mu = np.empty(lanes)
                _lane_row(stats[0][c * Cc:(c + 1) * Cc], Bc, mu)
                acc = np.empty((4, lanes)) if step == FUSED else part[q]
                for j in range(4):
                    for k in range(lanes):
                        acc[j, k] = 0.0
                for p in range(p0, p1):
                    lo = ((p // nb) * Cv + c) * B + (p % nb) * seg
                    hi = lo + min(seg, B - (p % nb) * seg)
                    _g_sums(gy[lo:hi], x[lo:hi], y[lo:hi], mu, flags[0], acc)
                if step == FUSED:
                    _backward_coeffs(c, _lane_totals(acc), n, coef, stats)
            if step != SUMS:
                rows = np.empty((4, 1 if uniform else chunk), gx.dtype)
                if not uniform:
                    _lane_row(center, Bc, rows[0])
                    _lane_row(ca, Bc, rows[1])
                    _lane_row(cb, Bc, rows[2])
                    _lane_row(cd, Bc, rows[3])
                buf = np.empty(2 * chunk, gx.dtype)
                for p in range(p0, p1):
                    a, ch = (p // (Cv * nb), (p // nb) % Cv) if c < 0 else (p // nb, c)
                    if uniform:
                        rows[0, 0], rows[1, 0], rows[2, 0], rows[3, 0] = \
                            center[ch], ca[ch], cb[ch], cd[ch]
                    b0 = (p % nb) * seg
                    lo = (a * Cv + ch) * B + b0
                    hi = lo + min(seg, B - b0)
                    _gback_slice((gy[lo:hi], x[lo:hi], y[lo:hi]), gx[lo:hi], gr[lo:hi],
                                 (rows[0], rows[1], rows[2], rows[3]), flags, buf, uniform)
                if flags[3] == STREAM:
                    _sfence()
        if step == SUMS:
            for cv in range(Cv):
                _backward_coeffs(cv * Cc, _combine(part[cv * ntask:(cv + 1) * ntask], Cc, Bc),
                                 n, coef, stats)


# --- the backend's functions --------------------------------------------------------------------
# Lean on purpose: on a (64, 256) layer this Python is as long as the kernels. One launch per op.

_STAND_INS = {}  # dtype -> a 0-size array, for the optional arrays a call does not have
_F64 = np.dtype(np.float64)


def _stand_in(dtype):
    e = _STAND_INS.get(dtype)
    if e is None:
        e = _STAND_INS[dtype] = np.empty(0, dtype)
    return e


def _ready(plan, shape, itemsize, arrays, out, inputs, extra=None):
    """``plan`` (or the planned one) with its output mode: IN_PLACE when out is inputs[0]; STREAM
    when the plan wants it and out (and ``extra``, written in the same loops, at the same offset
    from a 64-byte boundary) is aligned to its itemsize and apart from every input; else
    PLAIN."""
    src = inputs[0]
    plans = (plan,) if plan is not None else _plans(shape, itemsize, arrays)
    stream = plans[0].stream
    if np.may_share_memory(src, out) and src.ctypes.data == out.ctypes.data:
        mode = IN_PLACE
    elif stream and all(_streamable(o, inputs + (out,)) for o in
                        ((out,) if extra is None else (out, extra))) and (
            extra is None or extra.ctypes.data % STREAM_ALIGN == out.ctypes.data % STREAM_ALIGN):
        mode = STREAM
    else:
        mode = PLAIN
    return plans[1 + mode] if plan is None else plan._replace(mode=mode)


def _streamable(o, arrays):
    return o.ctypes.data % o.itemsize == 0 and not any(
        a is not o and np.may_share_memory(a, o) for a in arrays)


def _steps(plan):
    """The steps of a training op: FUSED alone, or SUMS (then the finish) and APPLY."""
    return (FUSED, NONE) if plan.fused else (SUMS, APPLY)


_FLOORS = {}  # (dtype, relu) -> floor


def _opts(dtype, eps, residual, relu, mode):
    """(floor, eps, has_res, mode): floor 0 is the ReLU, -inf none (v <= -inf keeps v)."""
    floor = _FLOORS.get((dtype, relu))
    if floor is None:
        floor = _FLOORS[(dtype, relu)] = dtype.type(0.0 if relu else -np.inf)
    return (floor, float(eps), residual is not None, mode)


def bn_stats(x, mean, m2, plan=None):
    plan = plan or _plan(x.shape, x.itemsize)
    if x.size == 0:  # the reference's mean and M2 of nothing
        mean[:] = np.nan
        m2[:] = 0.0
        return plan
    e, xf = _stand_in(x.dtype), x.reshape(-1)
    launch(_forward_kernel, plan.nthreads, (xf, e, xf), (e, e, e, e, e),
           (mean, m2, _stand_in(_F64)), _opts(x.dtype, 0.0, None, False, PLAIN), (SUMS, NONE),
           plan.tile)
    return plan


def bn_apply(x, center, scale, shift, residual, relu, out, plan=None):
    plan = _ready(plan, out.shape, out.itemsize, 1, out,
                  (x,) if residual is None else (x, residual))
    if out.size:
        e, f = _stand_in(out.dtype), _stand_in(_F64)
        arrays = (x.reshape(-1), e if residual is None else residual.reshape(-1),
                  out.reshape(-1))
        launch(_forward_kernel, plan.nthreads, arrays, (e, e, center, scale, shift), (f, f, f),
               _opts(out.dtype, 0.0, residual, relu, plan.mode), (APPLY, NONE), plan.tile)
    return plan


def bn_forward_train(x, weight, bias, eps, residual, relu, out, mean, m2, invstd, plan=None):
    plan = _ready(plan, x.shape, x.itemsize, 1, out, (x,) if residual is None else (x, residual))
    if x.size == 0:
        return plan
    arrays = (x.reshape(-1), _stand_in(x.dtype) if residual is None else residual.reshape(-1),
              out.reshape(-1))
    e = _stand_in(x.dtype)
    launch(_forward_kernel, plan.nthreads, arrays, (weight, bias, e, e, e), (mean, m2, invstd),
           _opts(x.dtype, eps, residual, relu, plan.mode), _steps(plan), plan.tile)
    return plan


def bn_backward_reduce(gy, x, y, center, s_dy, s_dyx, plan=None):
    plan = plan or _plan(x.shape, x.itemsize)
    if x.size == 0:
        s_dy[:] = 0.0
        s_dyx[:] = 0.0
        return plan
    e, xf = _stand_in(x.dtype), x.reshape(-1)
    arrays = (gy.reshape(-1), xf, xf if y is None else y.reshape(-1), xf, e)
    launch(_backward_kernel, plan.nthreads, arrays, (e,) * 7,
           (center, _stand_in(center.dtype), s_dy, s_dyx), (y is not None, False, False, PLAIN),
           (SUMS, NONE), plan.tile)
    return plan


def bn_backward_apply(gy, x, y, center, a, b, d, gx, gres, plan=None):
    plan = _ready(plan, x.shape, x.itemsize, 1, gx, (gy, x) if y is None else (gy, x, y), gres)
    if x.size:
        e, f, xf = _stand_in(x.dtype), _stand_in(_F64), x.reshape(-1)
        arrays = (gy.reshape(-1), xf, xf if y is None else y.reshape(-1), gx.reshape(-1),
                  e if gres is None else gres.reshape(-1))
        training = b is not None
        coef = (e, e, e, center, a, b, d) if training else (e, e, e, center, a, a, a)
        launch(_backward_kernel, plan.nthreads, arrays, coef, (f, f, f, f),
               (y is not None, training, gres is not None, plan.mode), (APPLY, NONE), plan.tile)
    return plan


def bn_backward(gy, x, y, mean, invstd, weight, training, gx, gres, grad_weight, grad_bias,
                plan=None):
    inputs = (gy, x) if y is None else (gy, x, y)
    plan = _ready(plan, x.shape, x.itemsize, len(inputs), gx, inputs, gres)
    if x.size == 0:
        grad_weight[:] = 0
        grad_bias[:] = 0
        return plan
    xf = x.reshape(-1)
    arrays = (gy.reshape(-1), xf, xf if y is None else y.reshape(-1), gx.reshape(-1),
              _stand_in(x.dtype) if gres is None else gres.reshape(-1))
    e, f = _stand_in(x.dtype), _stand_in(_F64)
    launch(_backward_kernel, plan.nthreads, arrays, (weight, grad_weight, grad_bias, e, e, e, e),
           (mean, invstd, f, f), (y is not None, bool(training), gres is not None, plan.mode),
           _steps(plan), plan.tile)
    return plan


@jit
def _running_update_kernel(mean, m2, count, momentum, running_mean, running_var):
    """The reference's bn_running_update, its float64 operations in its order (no fastmath, so
    no FMA): the same bits, without NumPy's temporaries (a small call costs ~1 us, not ~15)."""
    keep = 1.0 - momentum
    for c in range(running_mean.size):
        running_mean[c] = keep * np.float64(running_mean[c]) + momentum * mean[c]
        running_var[c] = keep * np.float64(running_var[c]) + momentum * (m2[c] / (count - 1))


def bn_running_update(mean, m2, count, running_mean, running_var, momentum):
    """In place: running = (1 - momentum) * running + momentum * batch (PyTorch's rule with the
    unbiased variance), as fastreg.reference.batchnorm.bn_running_update, bit for bit."""
    if (running_mean is None or running_var is None or running_mean.dtype != running_var.dtype
            or mean.dtype != np.float64 or m2.dtype != np.float64):
        return _ref.bn_running_update(mean, m2, count, running_mean, running_var, momentum)
    _running_update_kernel(mean, m2, int(count), float(momentum), running_mean, running_var)

