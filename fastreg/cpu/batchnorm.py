"""Batch normalization on the CPU with Numba (definitions in fastreg/reference/batchnorm.py).

Inputs are C-contiguous ``(A, C, B)`` views (channel axis in the middle). Two regimes, picked by
the shape:

* rows (``B >= ROWS_MIN_B``, e.g. NCHW): the data of channel c is A contiguous rows
  ``x[a, c, :]``. Rows longer than ``SEG`` are cut into equal pieces; a task takes up to ``TASK``
  elements of consecutive pieces of one channel. Reductions sum each task into float64 lanes
  (a row of partial sums, so LLVM vectorizes without fastmath), then the tasks of a channel in
  order. The training ops can be *fused*: one thread takes a whole channel, sums it, turns the
  sums into coefficients and applies them while the channel's data is still in its L2 cache
  (x read from memory once, out written once: 2 passes instead of 3). They fuse when the data
  a channel reads fits in ``FUSE_MAX_BYTES`` and there are at least as many channels as threads;
  fused or not, the sums are the same additions in the same order.
* columns (``B < ROWS_MIN_B``, e.g. NHWC and (N, C)): x is read as A rows of K = C * B values.
  A task takes ``rows`` consecutive rows and adds them into its own float64 row of K partial
  sums (vectorized along K); the task rows are then combined per channel in order.

Task sizes depend only on the shape, so results do not depend on the number of threads. Calls
smaller than ``PAR_MIN`` elements run their loops on the calling thread: a parallel launch costs
about 8 us, more than the whole work of a (64, 256) layer.

Statistics are shifted sums in float64: s1 = sum (x - x0), s2 = sum (x - x0)**2 with x0 the
channel's first element; mean = x0 + s1 / n, M2 = s2 - s1**2 / n (stable for data far from
zero: the deviations from x0 are of the order of the spread). Backward sums use the saved
float64 mean as the shift. Element-wise work is in x's dtype with coefficients computed in float64
and cast, as in the reference; no fastmath, so no FMA contraction.

In place (out is x, gx is gy) the task functions take one array: with two, LLVM guards the vector
loop with an overlap check that fails and falls back to scalar code. Large out-of-place outputs
are written with streaming stores (see fastreg/cpu/penalty.py), which avoid reading every output
line before overwriting it.

Optional arrays (residual, y, gres, b and d) are None or arrays: Numba compiles one variant per
combination and prunes the ``is None`` branches, so no variant tests them per element.
"""
import numba
import numpy as np
from numba import prange, types
from numba.extending import overload

from ..reference.batchnorm import bn_backward_coeffs, bn_forward_coeffs, bn_running_update
from ._jit import inline, jit, pjit
from .penalty import CAN_STREAM, STREAM_ALIGN, _sfence, _stream_store

__all__ = ["bn_stats", "bn_apply", "bn_forward_train", "bn_backward_reduce", "bn_backward_apply",
           "bn_backward", "bn_forward_coeffs", "bn_running_update", "bn_backward_coeffs"]

TASK = 1 << 16          # elements per parallel task (rows regime)
COL_TASK = 1 << 18      # elements per task in the columns regime (fewer rows of partial sums)
SEG = 1 << 15           # longest piece of a row in the rows regime
ROWS_MIN_B = 32         # B from which a channel's rows are long enough to be the unit of work
LANES = {4: 64, 8: 64}  # float64 partial sums per reduction, by itemsize
PAR_MIN = 1 << 17       # elements; smaller calls run on one thread
STREAM_MIN_BYTES = 64 << 20  # outputs smaller than about twice the L3 stay cached (not streamed)
SPAN = 2048             # columns regime: elements per element-wise loop (rows of K joined)
STREAM_MIN_ROW = 2048   # bytes: shorter rows are not streamed (see _stream)
FUSE_MAX_BYTES = 1 << 20  # bytes a fused channel reads (x; gy, x and y): about the L2 per core


# --- small helpers ------------------------------------------------------------------------------

@inline
def _put(o, i, value, stream):
    """o[i] = value, streamed when ``stream``; callers pass a constant, which LLVM folds."""
    if stream:
        _stream_store(o, i, value)
    else:
        o[i] = value


@inline
def _head(o):
    """Elements of o before its first 64-byte boundary (o's address is a multiple of its
    itemsize: the Python side checks that before streaming)."""
    address = o.ctypes.data
    return min(o.size, ((STREAM_ALIGN - address % STREAM_ALIGN) % STREAM_ALIGN) // o.itemsize)


@inline
def _pieces(A, B):
    """Rows regime: pieces per row, piece length, pieces per task, tasks per channel."""
    nb = (B + SEG - 1) // SEG
    seg = (B + nb - 1) // nb
    per_task = max(1, TASK // seg)
    return nb, seg, per_task, (A * nb + per_task - 1) // per_task


@inline
def _piece(p, nb, seg, B):
    """Piece p of a channel: row a, elements [b0, b1)."""
    a = p // nb
    b0 = (p - a * nb) * seg
    return a, b0, min(b0 + seg, B)


@inline
def _col_tasks(A, K):
    """Columns regime: rows per task and the task count."""
    rows = max(1, COL_TASK // max(K, 1))
    return rows, (A + rows - 1) // rows


@inline
def _finish_stats(x0, s1, s2, n):
    """mean and M2 from shifted sums (M2 clamped at 0 against rounding; NaN stays NaN)."""
    m2 = s2 - s1 * (s1 / n)
    if m2 < 0.0:
        m2 = 0.0
    return x0 + s1 / n, m2


@inline
def _two_sum(tot, comp, v):
    """Neumaier's compensated addition: (tot, comp) += v."""
    t = tot + v
    if abs(tot) >= abs(v):
        comp += (tot - t) + v
    else:
        comp += (v - t) + tot
    return t, comp


# --- optional arguments -------------------------------------------------------------------------
# Helpers that pass None through, so that one kernel body serves every combination of the
# optional arrays (each combination is compiled separately, with the None cases folded away).

def _sub(v, lo, hi):
    """v[lo:hi] of a 1-D array; a scalar or None unchanged."""


@overload(_sub, inline="always")
def _sub_impl(v, lo, hi):
    if isinstance(v, types.Array):
        return lambda v, lo, hi: v[lo:hi]
    return lambda v, lo, hi: v


def _at(v, i):
    """v[i] of an array (a per-channel coefficient), None for None."""


@overload(_at, inline="always")
def _at_impl(v, i):
    if isinstance(v, types.Array):
        return lambda v, i: v[i]
    return lambda v, i: v


def _row3(v, a, c, b0, b1):
    """v[a, c, b0:b1] of an (A, C, B) array, None for None."""


@overload(_row3, inline="always")
def _row3_impl(v, a, c, b0, b1):
    if isinstance(v, types.Array):
        return lambda v, a, c, b0, b1: v[a, c, b0:b1]
    return lambda v, a, c, b0, b1: None


def _row2(v, a):
    """v[a] of an (A, K) array, None for None."""


@overload(_row2, inline="always")
def _row2_impl(v, a):
    if isinstance(v, types.Array):
        return lambda v, a: v[a]
    return lambda v, a: None


def _flat2(v, A, K):
    """An (A, C, B) array as (A, K), None for None."""


@overload(_flat2, inline="always")
def _flat2_impl(v, A, K):
    if isinstance(v, types.Array):
        return lambda v, A, K: v.reshape((A, K))
    return lambda v, A, K: None


def _either(v, w):
    """v, or w when v is None (the in-place ops pass None for the input that is the output)."""


@overload(_either, inline="always")
def _either_impl(v, w):
    if isinstance(v, types.NoneType):
        return lambda v, w: w
    return lambda v, w: v


# --- reductions over slices ---------------------------------------------------------------------
# Accumulators are rows acc[0] = s1, acc[1] = its Kahan compensation, acc[2] = s2, acc[3] = its
# compensation: lanes of a task in the rows regime, columns in the columns regime. float64 data
# is summed with compensation (float64 results must be within a few ulp of a pairwise sum);
# float32 data without (its float64 sums are already far more precise than float32 needs).

@inline
def _kahan(s, c, k, v, comp):
    """s[k] += v, with Kahan's compensation in c[k] when ``comp`` (a constant)."""
    if comp:
        y = v - c[k]
        t = s[k] + y
        c[k] = (t - s[k]) - y
        s[k] = t
    else:
        s[k] += v


@inline
def _x4_body(r0, r1, r2, r3, x0, s1, c1, s2, c2, comp):
    """s1 += sum of (x - x0), s2 += sum of (x - x0)**2 over four rows of equal length, element
    k of each row into accumulator k (x0 a scalar or a row). Four rows per pass: a quarter of the
    accumulator loads and stores of one."""
    for k in range(r0.size):
        m = _at(x0, k)
        d0 = np.float64(r0[k]) - m
        d1 = np.float64(r1[k]) - m
        d2 = np.float64(r2[k]) - m
        d3 = np.float64(r3[k]) - m
        _kahan(s1, c1, k, (d0 + d1) + (d2 + d3), comp)
        _kahan(s2, c2, k, (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3), comp)


@inline
def _x1_body(r0, x0, s1, c1, s2, c2, comp):
    for k in range(r0.size):
        d0 = np.float64(r0[k]) - _at(x0, k)
        _kahan(s1, c1, k, d0, comp)
        _kahan(s2, c2, k, d0 * d0, comp)


@inline
def _gm(gs, ys, k, has_y):
    """g = gy in float64, masked by y > 0 when has_y."""
    g = np.float64(gs[k])
    if has_y:
        g = g if ys[k] > 0 else 0.0
    return g


@inline
def _g4_body(g0, g1, g2, g3, x0, x1, x2, x3, y0, y1, y2, y3, mu, s1, c1, s2, c2, has_y, comp):
    """s1 += g, s2 += g * (x - mu) over four rows (see _x4_body)."""
    for k in range(x0.size):
        m = _at(mu, k)
        a0 = _gm(g0, y0, k, has_y)
        a1 = _gm(g1, y1, k, has_y)
        a2 = _gm(g2, y2, k, has_y)
        a3 = _gm(g3, y3, k, has_y)
        _kahan(s1, c1, k, (a0 + a1) + (a2 + a3), comp)
        _kahan(s2, c2, k, ((a0 * (np.float64(x0[k]) - m) + a1 * (np.float64(x1[k]) - m))
                           + (a2 * (np.float64(x2[k]) - m) + a3 * (np.float64(x3[k]) - m))),
               comp)


@inline
def _g1_body(g0, x0, y0, mu, s1, c1, s2, c2, has_y, comp):
    for k in range(x0.size):
        a0 = _gm(g0, y0, k, has_y)
        _kahan(s1, c1, k, a0, comp)
        _kahan(s2, c2, k, a0 * (np.float64(x0[k]) - _at(mu, k)), comp)


@inline
def _x_lanes_body(xs, x0, acc, comp):
    lanes = acc.shape[1]
    s1, c1, s2, c2 = acc[0], acc[1], acc[2], acc[3]
    q = 4 * lanes
    passes = xs.size // q
    for r in range(passes):
        X = xs[r * q:(r + 1) * q]
        _x4_body(X[:lanes], X[lanes:2 * lanes], X[2 * lanes:3 * lanes], X[3 * lanes:], x0, s1,
                 c1, s2, c2, comp)
    rest = xs[passes * q:]
    for start in range(0, rest.size, lanes):
        m = min(lanes, rest.size - start)
        _x1_body(rest[start:start + m], x0, s1[:m], c1[:m], s2[:m], c2[:m], comp)


@jit
def _x_lanes(xs, x0, acc):
    """acc += the shifted sums of the slice xs (x0 a scalar), lane by lane: the slice is walked
    in rows of ``lanes`` = acc.shape[1] elements (a run-time count: a constant trip count would
    be unrolled into scalar code), row element k going to lane k. Rows of acc: s1, its Kahan
    compensation, s2, its compensation (compensated for float64 data only)."""
    if xs.itemsize == 8:
        _x_lanes_body(xs, x0, acc, True)
    else:
        _x_lanes_body(xs, x0, acc, False)


@inline
def _g_lanes_body(gs, xs, ys, mu, acc, has_y, comp):
    lanes = acc.shape[1]
    s1, c1, s2, c2 = acc[0], acc[1], acc[2], acc[3]
    q = 4 * lanes
    passes = xs.size // q
    for r in range(passes):
        G = gs[r * q:(r + 1) * q]
        X = xs[r * q:(r + 1) * q]
        Y = ys[r * q:(r + 1) * q]
        _g4_body(G[:lanes], G[lanes:2 * lanes], G[2 * lanes:3 * lanes], G[3 * lanes:],
                 X[:lanes], X[lanes:2 * lanes], X[2 * lanes:3 * lanes], X[3 * lanes:],
                 Y[:lanes], Y[lanes:2 * lanes], Y[2 * lanes:3 * lanes], Y[3 * lanes:],
                 mu, s1, c1, s2, c2, has_y, comp)
    o = passes * q
    for start in range(o, xs.size, lanes):
        m = min(lanes, xs.size - start)
        _g1_body(gs[start:start + m], xs[start:start + m], ys[start:start + m], mu, s1[:m],
                 c1[:m], s2[:m], c2[:m], has_y, comp)


@jit
def _g_lanes(gs, xs, ys, mu, acc):
    """acc += (g, g * (x - mu)) over the slice, lane by lane as _x_lanes (mu a scalar); ys None:
    no ReLU mask."""
    if ys is None:
        if xs.itemsize == 8:
            _g_lanes_body(gs, xs, xs, mu, acc, False, True)
        else:
            _g_lanes_body(gs, xs, xs, mu, acc, False, False)
    else:
        if xs.itemsize == 8:
            _g_lanes_body(gs, xs, ys, mu, acc, True, True)
        else:
            _g_lanes_body(gs, xs, ys, mu, acc, True, False)


@jit
def _lane_totals(acc):
    """(s1, s2) of lane accumulators, each a compensated sum of its lanes (value - comp)."""
    t1, k1, t2, k2 = 0.0, 0.0, 0.0, 0.0
    for k in range(acc.shape[1]):
        t1, k1 = _two_sum(t1, k1, acc[0, k] - acc[1, k])
        t2, k2 = _two_sum(t2, k2, acc[2, k] - acc[3, k])
    return t1 + k1, t2 + k2


@jit
def _x_task_sums(x, c, t, per_task, nb, seg, x0, acc):
    """(s1, s2) of task t of channel c (rows regime)."""
    A, _, B = x.shape
    acc[:] = 0.0
    for p in range(t * per_task, min((t + 1) * per_task, A * nb)):
        a, b0, b1 = _piece(p, nb, seg, B)
        _x_lanes(x[a, c, b0:b1], x0, acc)
    return _lane_totals(acc)


@jit
def _g_task_sums(gy, x, y, c, t, per_task, nb, seg, mu, acc):
    """(sum g, sum g * (x - mu)) of task t of channel c (rows regime)."""
    A, _, B = x.shape
    acc[:] = 0.0
    for p in range(t * per_task, min((t + 1) * per_task, A * nb)):
        a, b0, b1 = _piece(p, nb, seg, B)
        _g_lanes(gy[a, c, b0:b1], x[a, c, b0:b1], _row3(y, a, c, b0, b1), mu, acc)
    return _lane_totals(acc)


@jit
def _combine(p, lo, hi):
    """Compensated sum of the task totals p[lo:hi], in order."""
    tot, comp = 0.0, 0.0
    for q in range(lo, hi):
        tot, comp = _two_sum(tot, comp, p[q])
    return tot + comp


@jit
def _pilot_rows(x, c):
    """The shift of channel c's statistics (rows regime): the mean of the first (up to) 64
    values of its first row, a few cache lines. Near the channel's mean, so that
    s2 - s1**2 / n loses little to cancellation (better than one value, which may be an
    outlier)."""
    r = x[0, c, :min(x.shape[2], 64)]
    s = 0.0
    for b in range(r.size):
        s += np.float64(r[b])
    return s / r.size


@jit
def _pilots(x):
    """_pilot_rows of every channel."""
    x0 = np.empty(x.shape[1])
    for c in range(x.shape[1]):
        x0[c] = _pilot_rows(x, c)
    return x0


# --- element-wise bodies over slices ------------------------------------------------------------
# Coefficients are scalars (rows regime: one channel per slice) or rows of K values (columns
# regime); ``_at(ce, i)`` reads either. Flags are compile-time constants by the time LLVM sees the
# loops, so each variant is one branch-free loop.

@inline
def _affine_body(xs, rs, o, ce, sc, sh, relu, has_res, stream):
    zero = o.dtype.type(0)
    for i in range(o.size):
        v = (xs[i] - _at(ce, i)) * _at(sc, i) + _at(sh, i)
        if has_res:
            v = v + rs[i]
        if relu:
            v = v if not (v <= zero) else zero
        _put(o, i, v, stream)


@jit
def _affine_opt(xs, rs, o, ce, sc, sh, relu, stream):
    """The None checks, on this function's own arguments (where Numba folds them): xs None is
    in place (o holds x; one array in the loop), rs None no residual."""
    if xs is None:
        x_ = o
    else:
        x_ = xs
    if rs is None:
        r_ = x_
        has_res = False
    else:
        r_ = rs
        has_res = True
    if relu:
        if stream:
            _affine_body(x_, r_, o, ce, sc, sh, True, has_res, True)
        else:
            _affine_body(x_, r_, o, ce, sc, sh, True, has_res, False)
    else:
        if stream:
            _affine_body(x_, r_, o, ce, sc, sh, False, has_res, True)
        else:
            _affine_body(x_, r_, o, ce, sc, sh, False, has_res, False)


@jit
def _affine_slice(xs, rs, o, ce, sc, sh, relu, stream):
    """o = act((x - ce) * sc + sh [+ r]) over one slice. stream: the elements from o's first
    64-byte boundary on are streamed."""
    if stream:
        h = _head(o)
        n = o.size
        _affine_opt(_sub(xs, 0, h), _sub(rs, 0, h), o[:h], _sub(ce, 0, h), _sub(sc, 0, h),
                    _sub(sh, 0, h), relu, False)
        _affine_opt(_sub(xs, h, n), _sub(rs, h, n), o[h:], _sub(ce, h, n), _sub(sc, h, n),
                    _sub(sh, h, n), relu, True)
        _sfence()
    else:
        _affine_opt(xs, rs, o, ce, sc, sh, relu, False)


@inline
def _gback_body(gs, xs, ys, o, gr, ce, a, b, d, has_y, has_gres, training, stream):
    zero = o.dtype.type(0)
    for i in range(o.size):
        g = gs[i]
        if has_y:
            g = g if ys[i] > zero else zero
        if has_gres:
            _put(gr, i, g, stream)
        if training:
            v = g * _at(a, i) - (xs[i] - _at(ce, i)) * _at(b, i) - _at(d, i)
        else:
            v = g * _at(a, i)
        _put(o, i, v, stream)


@jit
def _gback_opt(gs, xs, ys, o, gr, ce, a, b, d, stream):
    """The None checks (see _affine_opt): gs None is in place (o holds gy), ys None no ReLU,
    gr None no residual gradient, b None inference (d is then None too)."""
    if gs is None:
        g_ = o
    else:
        g_ = gs
    if ys is None:
        y_ = xs
        has_y = False
    else:
        y_ = ys
        has_y = True
    if gr is None:
        r_ = o
        has_gres = False
    else:
        r_ = gr
        has_gres = True
    if b is None:
        b_ = a
        d_ = a
        training = False
    else:
        b_ = b
        d_ = d
        training = True
    if stream:
        _gback_body(g_, xs, y_, o, r_, ce, a, b_, d_, has_y, has_gres, training, True)
    else:
        _gback_body(g_, xs, y_, o, r_, ce, a, b_, d_, has_y, has_gres, training, False)


@jit
def _gback_slice(gs, xs, ys, o, gr, ce, a, b, d, stream):
    """o = g * a - (x - ce) * b - d (or g * a) over one slice, gr = g (see _affine_slice)."""
    if stream:
        h = _head(o)
        n = o.size
        _gback_opt(_sub(gs, 0, h), xs[:h], _sub(ys, 0, h), o[:h], _sub(gr, 0, h),
                   _sub(ce, 0, h), _sub(a, 0, h), _sub(b, 0, h), _sub(d, 0, h), False)
        _gback_opt(_sub(gs, h, n), xs[h:], _sub(ys, h, n), o[h:], _sub(gr, h, n),
                   _sub(ce, h, n), _sub(a, h, n), _sub(b, h, n), _sub(d, h, n), True)
        _sfence()
    else:
        _gback_opt(gs, xs, ys, o, gr, ce, a, b, d, False)


# --- per-channel coefficients -------------------------------------------------------------------

@inline
def _fwd_coeffs(c, x0, s1, s2, n, eps, weight, bias, mean, m2, invstd, like):
    """Statistics of channel c from its shifted sums into mean, m2, invstd; returns the
    coefficients (center, scale, shift) of bn_apply in x's dtype (as bn_forward_coeffs with
    fold=False)."""
    mu, M2 = _finish_stats(x0, s1, s2, n)
    inv = 1.0 / np.sqrt(M2 / n + eps)
    mean[c] = mu
    m2[c] = M2
    invstd[c] = inv
    dt = like.dtype.type
    return dt(mu), dt(np.float64(weight[c]) * inv), bias[c]


@inline
def _bwd_coeffs(c, s_dy, s_dyx, n, mean, invstd, weight, grad_weight, grad_bias, like):
    """bn_backward_coeffs for channel c: writes the parameter gradients, returns (center, a, b,
    d) in x's dtype (b and d are used in training only)."""
    inv = invstd[c]
    a64 = np.float64(weight[c]) * inv
    grad_weight[c] = s_dyx * inv
    grad_bias[c] = s_dy
    dt = like.dtype.type
    return (dt(mean[c]), dt(a64), dt(a64 * inv * inv * s_dyx / n), dt(a64 * s_dy / n))


@jit
def _expand(v, B):
    """(C,) per-channel values as a row of K = C * B (the columns regime's coefficient row)."""
    if B == 1:
        return v
    out = np.empty(v.size * B, v.dtype)
    for c in range(v.size):
        out[c * B:(c + 1) * B] = v[c]
    return out


@jit
def _tile(v, K):
    """A coefficient row of K values repeated over a span of rows, SPAN elements at least."""
    span = max(1, SPAN // K)
    if span == 1:
        return v
    out = np.empty(span * K, v.dtype)
    for r in range(span):
        out[r * K:(r + 1) * K] = v
    return out


@jit
def _pilot_cols(x2, C, B):
    """The shift of each column's sums (columns regime): its channel's mean over the first (up
    to) 16 rows, in float64; see _pilot_rows."""
    A, K = x2.shape
    na = min(A, 16)
    tot = np.zeros(K)
    for a in range(na):
        r = x2[a]
        for k in range(K):
            tot[k] += np.float64(r[k])
    x0k = np.empty(K)
    for c in range(C):
        s = 0.0
        for b in range(B):
            s += tot[c * B + b]
        x0k[c * B:(c + 1) * B] = s / (na * B)
    return x0k


@jit
def _col_combine(p, j, C, B):
    """Per-channel totals of accumulator j (0: s1, 2: s2) of the task blocks p (T, 4, L), L a
    multiple of K = C * B: compensated sums over the tasks in order, then over each channel's
    columns (for each of the L / K rows of a span, its B columns)."""
    T, _, L = p.shape
    K = C * B
    tot = np.zeros(L)
    comp = np.zeros(L)
    for t in range(T):
        s = p[t, j]
        c = p[t, j + 1]
        for k in range(L):
            v = s[k] - c[k]
            u = tot[k] + v
            comp[k] += ((tot[k] - u) + v) if abs(tot[k]) >= abs(v) else ((v - u) + tot[k])
            tot[k] = u
    out = np.empty(C)
    for ch in range(C):
        a, b = 0.0, 0.0
        for r in range(0, L, K):
            for k in range(r + ch * B, r + (ch + 1) * B):
                a, b = _two_sum(a, b, tot[k] + comp[k])
        out[ch] = a + b
    return out


# --- rows regime: task functions ----------------------------------------------------------------

@jit
def _stats_rows_task(x, q, ntask, per_task, nb, seg, lanes, x0, p1, p2):
    """Task q = (channel, task of the channel): its shifted sums into p1[q], p2[q]."""
    c = q // ntask
    acc = np.empty((4, lanes))
    p1[q], p2[q] = _x_task_sums(x, c, q - c * ntask, per_task, nb, seg, x0[c], acc)


@jit
def _bred_rows_task(gy, x, y, mean, q, ntask, per_task, nb, seg, lanes, p1, p2):
    c = q // ntask
    acc = np.empty((4, lanes))
    p1[q], p2[q] = _g_task_sums(gy, x, y, c, q - c * ntask, per_task, nb, seg, mean[c], acc)


@jit
def _apply_piece(x, residual, out, center, scale, shift, relu, stream, q):
    """Piece q of all A * C * nb pieces (row a, channel c, elements b0:b1) of bn_apply."""
    A, C, B = out.shape
    nb, seg, _, _ = _pieces(A, B)
    a = q // (C * nb)
    r = q - a * C * nb
    c = r // nb
    b0 = (r - c * nb) * seg
    b1 = min(b0 + seg, B)
    _affine_slice(_row3(x, a, c, b0, b1), _row3(residual, a, c, b0, b1), out[a, c, b0:b1],
                  center[c], scale[c], shift[c], relu, stream)


@jit
def _gback_piece(gy, x, y, center, a, b, d, gx, gres, stream, q):
    """Piece q of bn_backward_apply (see _apply_piece)."""
    A, C, B = gx.shape
    nb, seg, _, _ = _pieces(A, B)
    i = q // (C * nb)
    r = q - i * C * nb
    c = r // nb
    b0 = (r - c * nb) * seg
    b1 = min(b0 + seg, B)
    _gback_slice(_row3(gy, i, c, b0, b1), x[i, c, b0:b1], _row3(y, i, c, b0, b1),
                 gx[i, c, b0:b1], _row3(gres, i, c, b0, b1), center[c], a[c], _at(b, c),
                 _at(d, c), stream)


@jit
def _fwd_channel(x, weight, bias, eps, residual, relu, out, mean, m2, invstd, lanes, stream, c):
    """Fused training forward of channel c: its sums, coefficients, then the normalization while
    the channel is in cache. x None: in place. The sums are those of _stats_rows_task and
    _combine, in the same order."""
    A, C, B = out.shape
    xin = _either(x, out)
    nb, seg, per_task, ntask = _pieces(A, B)
    acc = np.empty((4, lanes))
    p1 = np.empty(ntask)
    p2 = np.empty(ntask)
    x0 = _pilot_rows(xin, c)
    for t in range(ntask):
        p1[t], p2[t] = _x_task_sums(xin, c, t, per_task, nb, seg, x0, acc)
    ce, sc, sh = _fwd_coeffs(c, x0, _combine(p1, 0, ntask), _combine(p2, 0, ntask), A * B, eps,
                             weight, bias, mean, m2, invstd, out)
    for p in range(A * nb):
        a, b0, b1 = _piece(p, nb, seg, B)
        _affine_slice(_row3(x, a, c, b0, b1), _row3(residual, a, c, b0, b1), out[a, c, b0:b1],
                      ce, sc, sh, relu, stream)


@jit
def _bwd_channel(gy, x, y, mean, invstd, weight, training, gx, gres, grad_weight, grad_bias,
                 lanes, stream, c):
    """Fused backward of channel c (gy None: in place, gx holds gy)."""
    A, C, B = gx.shape
    gin = _either(gy, gx)
    nb, seg, per_task, ntask = _pieces(A, B)
    acc = np.empty((4, lanes))
    p1 = np.empty(ntask)
    p2 = np.empty(ntask)
    for t in range(ntask):
        p1[t], p2[t] = _g_task_sums(gin, x, y, c, t, per_task, nb, seg, mean[c], acc)
    ce, ca, cb, cd = _bwd_coeffs(c, _combine(p1, 0, ntask), _combine(p2, 0, ntask), A * B, mean,
                                 invstd, weight, grad_weight, grad_bias, gx)
    for p in range(A * nb):
        i, b0, b1 = _piece(p, nb, seg, B)
        if training:
            _gback_slice(_row3(gy, i, c, b0, b1), x[i, c, b0:b1], _row3(y, i, c, b0, b1),
                         gx[i, c, b0:b1], _row3(gres, i, c, b0, b1), ce, ca, cb, cd, stream)
        else:
            _gback_slice(_row3(gy, i, c, b0, b1), x[i, c, b0:b1], _row3(y, i, c, b0, b1),
                         gx[i, c, b0:b1], _row3(gres, i, c, b0, b1), ce, ca, None, None, stream)


# --- rows regime: kernels -----------------------------------------------------------------------
# ``par`` False runs the same loops on the calling thread (small calls).

@pjit
def _stats_rows(x, mean, m2, lanes, par):
    A, C, B = x.shape
    nb, seg, per_task, ntask = _pieces(A, B)
    x0 = _pilots(x)
    p1 = np.empty(C * ntask)
    p2 = np.empty(C * ntask)
    if par:
        for q in prange(C * ntask):
            _stats_rows_task(x, q, ntask, per_task, nb, seg, lanes, x0, p1, p2)
    else:
        for q in range(C * ntask):
            _stats_rows_task(x, q, ntask, per_task, nb, seg, lanes, x0, p1, p2)
    for c in range(C):
        lo, hi = c * ntask, (c + 1) * ntask
        mean[c], m2[c] = _finish_stats(x0[c], _combine(p1, lo, hi), _combine(p2, lo, hi),
                                       A * B)


@pjit
def _apply_rows(x, center, scale, shift, residual, relu, out, stream, par):
    A, C, B = out.shape
    nb, _, _, _ = _pieces(A, B)
    if par:
        for q in prange(A * C * nb):
            _apply_piece(x, residual, out, center, scale, shift, relu, stream, q)
    else:
        for q in range(A * C * nb):
            _apply_piece(x, residual, out, center, scale, shift, relu, stream, q)


@pjit
def _fwd_rows(x, weight, bias, eps, residual, relu, out, mean, m2, invstd, lanes, fused, stream,
              par):
    A, C, B = out.shape
    if fused:
        if par:
            for c in prange(C):
                _fwd_channel(x, weight, bias, eps, residual, relu, out, mean, m2, invstd, lanes,
                             stream, c)
        else:
            for c in range(C):
                _fwd_channel(x, weight, bias, eps, residual, relu, out, mean, m2, invstd, lanes,
                             stream, c)
        return
    xin = _either(x, out)
    nb, seg, per_task, ntask = _pieces(A, B)
    x0 = _pilots(xin)
    p1 = np.empty(C * ntask)
    p2 = np.empty(C * ntask)
    if par:
        for q in prange(C * ntask):
            _stats_rows_task(xin, q, ntask, per_task, nb, seg, lanes, x0, p1, p2)
    else:
        for q in range(C * ntask):
            _stats_rows_task(xin, q, ntask, per_task, nb, seg, lanes, x0, p1, p2)
    center = np.empty(C, out.dtype)
    scale = np.empty(C, out.dtype)
    shift = np.empty(C, out.dtype)
    for c in range(C):
        lo, hi = c * ntask, (c + 1) * ntask
        center[c], scale[c], shift[c] = _fwd_coeffs(
            c, x0[c], _combine(p1, lo, hi), _combine(p2, lo, hi), A * B, eps,
            weight, bias, mean, m2, invstd, out)
    if par:
        for q in prange(A * C * nb):
            _apply_piece(x, residual, out, center, scale, shift, relu, stream,
                         A * C * nb - 1 - q)
    else:
        for q in range(A * C * nb):
            _apply_piece(x, residual, out, center, scale, shift, relu, stream,
                         A * C * nb - 1 - q)


@pjit
def _bred_rows(gy, x, y, mean, s_dy, s_dyx, lanes, par):
    A, C, B = x.shape
    nb, seg, per_task, ntask = _pieces(A, B)
    p1 = np.empty(C * ntask)
    p2 = np.empty(C * ntask)
    if par:
        for q in prange(C * ntask):
            _bred_rows_task(gy, x, y, mean, q, ntask, per_task, nb, seg, lanes, p1, p2)
    else:
        for q in range(C * ntask):
            _bred_rows_task(gy, x, y, mean, q, ntask, per_task, nb, seg, lanes, p1, p2)
    for c in range(C):
        s_dy[c] = _combine(p1, c * ntask, (c + 1) * ntask)
        s_dyx[c] = _combine(p2, c * ntask, (c + 1) * ntask)


@pjit
def _bapply_rows(gy, x, y, center, a, b, d, gx, gres, stream, par):
    A, C, B = gx.shape
    nb, _, _, _ = _pieces(A, B)
    if par:
        for q in prange(A * C * nb):
            _gback_piece(gy, x, y, center, a, b, d, gx, gres, stream, q)
    else:
        for q in range(A * C * nb):
            _gback_piece(gy, x, y, center, a, b, d, gx, gres, stream, q)


@pjit
def _bwd_rows(gy, x, y, mean, invstd, weight, training, gx, gres, grad_weight, grad_bias, lanes,
              fused, stream, par):
    A, C, B = gx.shape
    if fused:
        if par:
            for c in prange(C):
                _bwd_channel(gy, x, y, mean, invstd, weight, training, gx, gres, grad_weight,
                             grad_bias, lanes, stream, c)
        else:
            for c in range(C):
                _bwd_channel(gy, x, y, mean, invstd, weight, training, gx, gres, grad_weight,
                             grad_bias, lanes, stream, c)
        return
    gin = _either(gy, gx)
    nb, seg, per_task, ntask = _pieces(A, B)
    p1 = np.empty(C * ntask)
    p2 = np.empty(C * ntask)
    if par:
        for q in prange(C * ntask):
            _bred_rows_task(gin, x, y, mean, q, ntask, per_task, nb, seg, lanes, p1, p2)
    else:
        for q in range(C * ntask):
            _bred_rows_task(gin, x, y, mean, q, ntask, per_task, nb, seg, lanes, p1, p2)
    center = np.empty(C, gx.dtype)
    ca = np.empty(C, gx.dtype)
    cb = np.empty(C, gx.dtype)
    cd = np.empty(C, gx.dtype)
    for c in range(C):
        lo, hi = c * ntask, (c + 1) * ntask
        center[c], ca[c], cb[c], cd[c] = _bwd_coeffs(c, _combine(p1, lo, hi),
                                                     _combine(p2, lo, hi), A * B, mean, invstd,
                                                     weight, grad_weight, grad_bias, gx)
    if training:
        if par:
            for q in prange(A * C * nb):
                _gback_piece(gy, x, y, center, ca, cb, cd, gx, gres, stream,
                             A * C * nb - 1 - q)
        else:
            for q in range(A * C * nb):
                _gback_piece(gy, x, y, center, ca, cb, cd, gx, gres, stream,
                             A * C * nb - 1 - q)
    else:
        if par:
            for q in prange(A * C * nb):
                _gback_piece(gy, x, y, center, ca, None, None, gx, gres, stream,
                             A * C * nb - 1 - q)
        else:
            for q in range(A * C * nb):
                _gback_piece(gy, x, y, center, ca, None, None, gx, gres, stream,
                             A * C * nb - 1 - q)


# --- columns regime: task functions -------------------------------------------------------------

@inline
def _col_x_body(x2, a0, a1, x0k, acc, comp):
    # rows joined into spans of L = acc.shape[1] values (span rows of K, the shifts tiled to
    # match: see _tile), four spans per pass
    K = x2.shape[1]
    L = acc.shape[1]
    span = L // K
    Xf = x2.reshape(-1)
    s1, c1, s2, c2 = acc[0], acc[1], acc[2], acc[3]
    a = a0
    while a + 4 * span <= a1:
        X = Xf[a * K:a * K + 4 * L]
        _x4_body(X[:L], X[L:2 * L], X[2 * L:3 * L], X[3 * L:], x0k, s1, c1, s2, c2, comp)
        a += 4 * span
    while a < a1:
        m = min(span, a1 - a) * K
        _x1_body(Xf[a * K:a * K + m], x0k[:m], s1[:m], c1[:m], s2[:m], c2[:m], comp)
        a += span


@jit
def _col_x_task(x2, t, rows, x0k, p):
    """Rows [t * rows, (t + 1) * rows) of x2 (A, K) into the task's accumulators p[t] (4, K),
    four rows per pass."""
    acc = p[t]
    acc[:] = 0.0
    a0, a1 = t * rows, min(x2.shape[0], (t + 1) * rows)
    if x2.itemsize == 8:
        _col_x_body(x2, a0, a1, x0k, acc, True)
    else:
        _col_x_body(x2, a0, a1, x0k, acc, False)


@inline
def _col_g_body(g2, x2, y2, a0, a1, muk, acc, has_y, comp):
    # spans of rows, as _col_x_body
    K = x2.shape[1]
    L = acc.shape[1]
    span = L // K
    Gf = g2.reshape(-1)
    Xf = x2.reshape(-1)
    Yf = y2.reshape(-1)
    s1, c1, s2, c2 = acc[0], acc[1], acc[2], acc[3]
    a = a0
    while a + 4 * span <= a1:
        lo = a * K
        G = Gf[lo:lo + 4 * L]
        X = Xf[lo:lo + 4 * L]
        Y = Yf[lo:lo + 4 * L]
        _g4_body(G[:L], G[L:2 * L], G[2 * L:3 * L], G[3 * L:], X[:L], X[L:2 * L],
                 X[2 * L:3 * L], X[3 * L:], Y[:L], Y[L:2 * L], Y[2 * L:3 * L], Y[3 * L:], muk,
                 s1, c1, s2, c2, has_y, comp)
        a += 4 * span
    while a < a1:
        lo = a * K
        m = min(span, a1 - a) * K
        _g1_body(Gf[lo:lo + m], Xf[lo:lo + m], Yf[lo:lo + m], muk[:m], s1[:m], c1[:m], s2[:m],
                 c2[:m], has_y, comp)
        a += span


@jit
def _col_g_task(g2, x2, y2, t, rows, muk, p):
    acc = p[t]
    acc[:] = 0.0
    a0, a1 = t * rows, min(x2.shape[0], (t + 1) * rows)
    comp = x2.itemsize == 8
    if y2 is None:
        if comp:
            _col_g_body(g2, x2, x2, a0, a1, muk, acc, False, True)
        else:
            _col_g_body(g2, x2, x2, a0, a1, muk, acc, False, False)
    else:
        if comp:
            _col_g_body(g2, x2, y2, a0, a1, muk, acc, True, True)
        else:
            _col_g_body(g2, x2, y2, a0, a1, muk, acc, True, False)


@inline
def _affine_block_body(X, R, o2, K, a0, a1, ce, sc, sh, relu, has_res, stream):
    # Rows go by spans of ce.size // K rows, each one flat slice: the coefficient rows come
    # tiled that many times (see _tile), so short rows (NHWC: 64 values) cost one loop per span.
    span = ce.size // K
    Xf = X
    Rf = R
    Of = o2
    for a in range(a0, a1, span):
        m = min(span, a1 - a) * K
        o = Of[a * K:a * K + m]
        xs = Xf[a * K:a * K + m]
        rs = Rf[a * K:a * K + m]
        if m < ce.size:
            ce, sc, sh = ce[:m], sc[:m], sh[:m]
        if stream:
            h = _head(o)
            _affine_body(xs[:h], rs[:h], o[:h], ce[:h], sc[:h], sh[:h], relu, has_res, False)
            _affine_body(xs[h:], rs[h:], o[h:], ce[h:], sc[h:], sh[h:], relu, has_res, True)
        else:
            _affine_body(xs, rs, o, ce, sc, sh, relu, has_res, False)


@jit
def _col_apply_task(x2, r2, o2, t, rows, ce, sc, sh, relu, stream):
    """bn_apply on rows [t * rows, (t + 1) * rows) of the (A, K) views, with coefficient rows
    of K; x2 None: in place, r2 None: no residual (folded here, once per task)."""
    a0, a1 = t * rows, min(o2.shape[0], (t + 1) * rows)
    K = o2.shape[1]
    O = o2.reshape(-1)   # flat views, made once: in place, X is then O itself
    if x2 is None:
        X = O
    else:
        X = x2.reshape(-1)
    if r2 is None:
        R = X
        has_res = False
    else:
        R = r2.reshape(-1)
        has_res = True
    if relu:
        if stream:
            _affine_block_body(X, R, O, K, a0, a1, ce, sc, sh, True, has_res, True)
        else:
            _affine_block_body(X, R, O, K, a0, a1, ce, sc, sh, True, has_res, False)
    else:
        if stream:
            _affine_block_body(X, R, O, K, a0, a1, ce, sc, sh, False, has_res, True)
        else:
            _affine_block_body(X, R, O, K, a0, a1, ce, sc, sh, False, has_res, False)
    if stream:
        _sfence()


@inline
def _gback_block_body(Gf, Xf, Yf, Of, Rf, K, a0, a1, ce, a, b, d, has_y, has_gres, training,
                      stream):
    # flat views; spans of rows as flat slices, as _affine_block_body
    span = ce.size // K
    for i in range(a0, a1, span):
        lo = i * K
        m = min(span, a1 - i) * K
        if m < ce.size:
            ce, a, b, d = ce[:m], a[:m], b[:m], d[:m]
        gs, xs, ys, o, gr = Gf[lo:lo + m], Xf[lo:lo + m], Yf[lo:lo + m], Of[lo:lo + m], \
            Rf[lo:lo + m]
        if stream:
            h = _head(o)
            _gback_body(gs[:h], xs[:h], ys[:h], o[:h], gr[:h], ce[:h], a[:h], b[:h], d[:h],
                        has_y, has_gres, training, False)
            _gback_body(gs[h:], xs[h:], ys[h:], o[h:], gr[h:], ce[h:], a[h:], b[h:], d[h:],
                        has_y, has_gres, training, True)
        else:
            _gback_body(gs, xs, ys, o, gr, ce, a, b, d, has_y, has_gres, training, False)


@jit
def _col_gback_task(g2, x2, y2, gx2, gr2, t, rows, ce, a, b, d, stream):
    """bn_backward_apply on rows [t * rows, (t + 1) * rows) (see _col_apply_task): g2 None is
    in place, y2 None no ReLU, gr2 None no residual gradient, b None inference."""
    a0, a1 = t * rows, min(gx2.shape[0], (t + 1) * rows)
    K = gx2.shape[1]
    O = gx2.reshape(-1)   # flat views, made once: in place, G is then O itself
    if g2 is None:
        G = O
    else:
        G = g2.reshape(-1)
    X = x2.reshape(-1)
    if y2 is None:
        Y = X
        has_y = False
    else:
        Y = y2.reshape(-1)
        has_y = True
    if gr2 is None:
        GR = O
        has_gres = False
    else:
        GR = gr2.reshape(-1)
        has_gres = True
    if b is None:
        if stream:
            _gback_block_body(G, X, Y, O, GR, K, a0, a1, ce, a, a, a, has_y, has_gres, False,
                              True)
        else:
            _gback_block_body(G, X, Y, O, GR, K, a0, a1, ce, a, a, a, has_y, has_gres, False,
                              False)
    else:
        if stream:
            _gback_block_body(G, X, Y, O, GR, K, a0, a1, ce, a, b, d, has_y, has_gres, True,
                              True)
        else:
            _gback_block_body(G, X, Y, O, GR, K, a0, a1, ce, a, b, d, has_y, has_gres, True,
                              False)
    if stream:
        _sfence()


# --- columns regime: kernels --------------------------------------------------------------------

@pjit
def _stats_cols(x, mean, m2, par):
    A, C, B = x.shape
    K = C * B
    x2 = x.reshape((A, K))
    rows, T = _col_tasks(A, K)
    x0k = _pilot_cols(x2, C, B)
    x0t = _tile(x0k, K)
    p = np.empty((T, 4, x0t.size))
    if par:
        for t in prange(T):
            _col_x_task(x2, t, rows, x0t, p)
    else:
        for t in range(T):
            _col_x_task(x2, t, rows, x0t, p)
    s1 = _col_combine(p, 0, C, B)
    s2 = _col_combine(p, 2, C, B)
    for c in range(C):
        mean[c], m2[c] = _finish_stats(x0k[c * B], s1[c], s2[c], A * B)


@pjit
def _apply_cols(x, center, scale, shift, residual, relu, out, stream, par):
    A, C, B = out.shape
    K = C * B
    rows, T = _col_tasks(A, K)
    x2 = _flat2(x, A, K)
    r2 = _flat2(residual, A, K)
    o2 = out.reshape((A, K))
    ce = _tile(_expand(center, B), K)
    sc = _tile(_expand(scale, B), K)
    sh = _tile(_expand(shift, B), K)
    if par:
        for t in prange(T):
            _col_apply_task(x2, r2, o2, t, rows, ce, sc, sh, relu, stream)
    else:
        for t in range(T):
            _col_apply_task(x2, r2, o2, t, rows, ce, sc, sh, relu, stream)


@pjit
def _fwd_cols(x, weight, bias, eps, residual, relu, out, mean, m2, invstd, stream, par):
    A, C, B = out.shape
    K = C * B
    rows, T = _col_tasks(A, K)
    x2 = _flat2(x, A, K)
    r2 = _flat2(residual, A, K)
    o2 = out.reshape((A, K))
    xin = _either(x2, o2)
    x0k = _pilot_cols(xin, C, B)
    x0t = _tile(x0k, K)
    p = np.empty((T, 4, x0t.size))
    if par:
        for t in prange(T):
            _col_x_task(xin, t, rows, x0t, p)
    else:
        for t in range(T):
            _col_x_task(xin, t, rows, x0t, p)
    s1 = _col_combine(p, 0, C, B)
    s2 = _col_combine(p, 2, C, B)
    center = np.empty(C, out.dtype)
    scale = np.empty(C, out.dtype)
    shift = np.empty(C, out.dtype)
    for c in range(C):
        center[c], scale[c], shift[c] = _fwd_coeffs(c, x0k[c * B], s1[c], s2[c], A * B, eps,
                                                    weight, bias, mean, m2, invstd, out)
    ce = _tile(_expand(center, B), K)
    sc = _tile(_expand(scale, B), K)
    sh = _tile(_expand(shift, B), K)
    if par:
        for t in prange(T):
            _col_apply_task(x2, r2, o2, T - 1 - t, rows, ce, sc, sh, relu, stream)
    else:
        for t in range(T):
            _col_apply_task(x2, r2, o2, T - 1 - t, rows, ce, sc, sh, relu, stream)


@pjit
def _bred_cols(gy, x, y, mean, s_dy, s_dyx, par):
    A, C, B = x.shape
    K = C * B
    rows, T = _col_tasks(A, K)
    g2 = gy.reshape((A, K))
    x2 = x.reshape((A, K))
    y2 = _flat2(y, A, K)
    muk = _tile(_expand(mean, B), K)
    p = np.empty((T, 4, muk.size))
    if par:
        for t in prange(T):
            _col_g_task(g2, x2, y2, t, rows, muk, p)
    else:
        for t in range(T):
            _col_g_task(g2, x2, y2, t, rows, muk, p)
    s_dy[:] = _col_combine(p, 0, C, B)
    s_dyx[:] = _col_combine(p, 2, C, B)


@pjit
def _bapply_cols(gy, x, y, center, a, b, d, gx, gres, stream, par):
    A, C, B = gx.shape
    K = C * B
    rows, T = _col_tasks(A, K)
    g2 = _flat2(gy, A, K)
    x2 = x.reshape((A, K))
    y2 = _flat2(y, A, K)
    gx2 = gx.reshape((A, K))
    gr2 = _flat2(gres, A, K)
    ce = _tile(_expand(center, B), K)
    ca = _tile(_expand(a, B), K)
    if b is None:
        if par:
            for t in prange(T):
                _col_gback_task(g2, x2, y2, gx2, gr2, t, rows, ce, ca, None, None, stream)
        else:
            for t in range(T):
                _col_gback_task(g2, x2, y2, gx2, gr2, t, rows, ce, ca, None, None, stream)
    else:
        cb = _tile(_expand(b, B), K)
        cd = _tile(_expand(d, B), K)
        if par:
            for t in prange(T):
                _col_gback_task(g2, x2, y2, gx2, gr2, t, rows, ce, ca, cb, cd, stream)
        else:
            for t in range(T):
                _col_gback_task(g2, x2, y2, gx2, gr2, t, rows, ce, ca, cb, cd, stream)


@pjit
def _bwd_cols(gy, x, y, mean, invstd, weight, training, gx, gres, grad_weight, grad_bias, stream,
              par):
    A, C, B = gx.shape
    K = C * B
    rows, T = _col_tasks(A, K)
    g2 = _flat2(gy, A, K)
    x2 = x.reshape((A, K))
    y2 = _flat2(y, A, K)
    gx2 = gx.reshape((A, K))
    gr2 = _flat2(gres, A, K)
    gin = _either(g2, gx2)
    muk = _tile(_expand(mean, B), K)
    p = np.empty((T, 4, muk.size))
    if par:
        for t in prange(T):
            _col_g_task(gin, x2, y2, t, rows, muk, p)
    else:
        for t in range(T):
            _col_g_task(gin, x2, y2, t, rows, muk, p)
    s1 = _col_combine(p, 0, C, B)
    s2 = _col_combine(p, 2, C, B)
    center = np.empty(C, gx.dtype)
    ca = np.empty(C, gx.dtype)
    cb = np.empty(C, gx.dtype)
    cd = np.empty(C, gx.dtype)
    for c in range(C):
        center[c], ca[c], cb[c], cd[c] = _bwd_coeffs(c, s1[c], s2[c], A * B, mean, invstd,
                                                     weight, grad_weight, grad_bias, gx)
    ce = _tile(_expand(center, B), K)
    ea = _tile(_expand(ca, B), K)
    if training:
        eb = _tile(_expand(cb, B), K)
        ed = _tile(_expand(cd, B), K)
        if par:
            for t in prange(T):
                _col_gback_task(g2, x2, y2, gx2, gr2, T - 1 - t, rows, ce, ea, eb, ed, stream)
        else:
            for t in range(T):
                _col_gback_task(g2, x2, y2, gx2, gr2, T - 1 - t, rows, ce, ea, eb, ed, stream)
    else:
        if par:
            for t in prange(T):
                _col_gback_task(g2, x2, y2, gx2, gr2, T - 1 - t, rows, ce, ea, None, None, stream)
        else:
            for t in range(T):
                _col_gback_task(g2, x2, y2, gx2, gr2, T - 1 - t, rows, ce, ea, None, None, stream)


# --- the backend's functions --------------------------------------------------------------------

def _same(a, b):
    """a and b are the same memory (the in-place case; the cheap overlap test first, since
    .ctypes costs about 1.5 us)."""
    return np.may_share_memory(a, b) and a.ctypes.data == b.ctypes.data


def _stream(out, *inputs):
    """Stream the writes to ``out``: large, aligned to its itemsize, not one of the inputs, and
    written in rows long enough (``STREAM_MIN_ROW`` bytes) that the unstreamed head before each
    row's first 64-byte boundary costs little (NHWC rows of 64 float32 would spend more on their
    head than streaming saves)."""
    if not CAN_STREAM or out.nbytes < STREAM_MIN_BYTES or out.ctypes.data % out.itemsize:
        return False
    A, C, B = out.shape
    row = B if B >= ROWS_MIN_B else max(C * B, SPAN)
    if row * out.itemsize < STREAM_MIN_ROW:
        return False
    return not any(v is not None and np.may_share_memory(v, out) for v in inputs)


def _stream_too(gres, gx, *inputs):
    """gres (written in the same loop as gx) can be streamed too: None, or streamable with the
    same offset from a 64-byte boundary as gx (the loop aligns its stores on gx)."""
    if gres is None:
        return True
    return (_stream(gres, *inputs) and not np.may_share_memory(gres, gx)
            and gres.ctypes.data % STREAM_ALIGN == gx.ctypes.data % STREAM_ALIGN)


def _fuse(A, B, C, itemsize, arrays):
    """Fuse a rows-regime training op: a channel's data (``arrays`` arrays of it) fits in about
    one core's L2, and every thread gets a channel."""
    return A * B * itemsize * arrays <= FUSE_MAX_BYTES and C >= numba.get_num_threads()


def bn_stats(x, mean, m2):
    A, C, B = x.shape
    par = x.size >= PAR_MIN
    if B >= ROWS_MIN_B:
        _stats_rows(x, mean, m2, LANES[x.itemsize], par)
    else:
        _stats_cols(x, mean, m2, par)


def bn_apply(x, center, scale, shift, residual, relu, out):
    par = out.size >= PAR_MIN
    relu = bool(relu)
    if _same(x, out):
        x, stream = None, False
    else:
        stream = _stream(out, x, residual)
    if out.shape[2] >= ROWS_MIN_B:
        _apply_rows(x, center, scale, shift, residual, relu, out, stream, par)
    else:
        _apply_cols(x, center, scale, shift, residual, relu, out, stream, par)


def bn_forward_train(x, weight, bias, eps, residual, relu, out, mean, m2, invstd):
    A, C, B = x.shape
    par = x.size >= PAR_MIN
    relu = bool(relu)
    eps = float(eps)
    if _same(x, out):
        x, stream = None, False
    else:
        stream = _stream(out, x, residual)
    if B >= ROWS_MIN_B:
        fused = _fuse(A, B, C, out.itemsize, 1)
        _fwd_rows(x, weight, bias, eps, residual, relu, out, mean, m2, invstd,
                  LANES[out.itemsize], fused, stream, par)
    else:
        _fwd_cols(x, weight, bias, eps, residual, relu, out, mean, m2, invstd, stream, par)


def bn_backward_reduce(gy, x, y, center, s_dy, s_dyx):
    A, C, B = x.shape
    par = x.size >= PAR_MIN
    if B >= ROWS_MIN_B:
        _bred_rows(gy, x, y, center, s_dy, s_dyx, LANES[x.itemsize], par)
    else:
        _bred_cols(gy, x, y, center, s_dy, s_dyx, par)


def bn_backward_apply(gy, x, y, center, a, b, d, gx, gres):
    par = x.size >= PAR_MIN
    if _same(gy, gx):
        gy, stream = None, False
    else:
        stream = _stream(gx, gy, x, y) and _stream_too(gres, gx, gy, x, y)
    if x.shape[2] >= ROWS_MIN_B:
        _bapply_rows(gy, x, y, center, a, b, d, gx, gres, stream, par)
    else:
        _bapply_cols(gy, x, y, center, a, b, d, gx, gres, stream, par)


def bn_backward(gy, x, y, mean, invstd, weight, training, gx, gres, grad_weight, grad_bias):
    A, C, B = x.shape
    par = x.size >= PAR_MIN
    training = bool(training)
    if _same(gy, gx):
        gy, stream = None, False
    else:
        stream = _stream(gx, gy, x, y) and _stream_too(gres, gx, gy, x, y)
    if B >= ROWS_MIN_B:
        fused = _fuse(A, B, C, x.itemsize, 2 if y is None else 3)
        _bwd_rows(gy, x, y, mean, invstd, weight, training, gx, gres, grad_weight, grad_bias,
                  LANES[x.itemsize], fused, stream, par)
    else:
        _bwd_cols(gy, x, y, mean, invstd, weight, training, gx, gres, grad_weight, grad_bias,
                  stream, par)
