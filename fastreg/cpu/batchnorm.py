"""Batch normalization on the CPU with Numba (definitions in fastreg/reference/batchnorm.py).

Decide in Python, compute in Numba. Each op starts with ``_plan(shape, itemsize)``, plain Python,
which picks the strategy and the tile sizes from the limits below; the kernels get them as ints
(a global read inside ``@jit`` is frozen at its first compile, so no limit is read there). Tests
shrink the limits, or pass ``plan=``, to reach every strategy with tiny inputs; every op returns
the ``Plan`` it ran.

Layout. Inputs are C-contiguous (A, C, B) arrays, which the kernels see flat, as a *view*
(A', C', B') of view rows, view channels and values per view row:

* rows regime (B >= ROWS_MIN_B, e.g. NCHW): the view is (A, C, B). Channel c is A rows of B
  contiguous values, cut into pieces of at most SEG values. Sums go to LANES lanes (half that
  for pieces shorter than 4 * LANES values).
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
data fits in about one core's L2 and every thread gets a channel). After SUMS, FINISH (one item
per view channel) adds each channel's lanes over its tasks and computes the coefficients. An op
is one kernel launch: SUMS, FINISH, APPLY; FUSED; SUMS, FINISH (the statistics); or APPLY.

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

Compile time is a budget (bench/compile_time.py): each direction (forward, backward) has one kernel
source, made into three kernels per regime (_kernels): every step (the training ops), SUMS + FINISH
alone (bn_stats, bn_backward_reduce) and APPLY alone (bn_apply, bn_backward_apply), the other steps'
and the other regime's branches pruned by Numba before typing, so that an op's first call compiles
only what its shape can run. The kernels are ``stepped`` (fastreg/cpu/_jit.py): compiled once,
serially, and run in shares on fastreg's threads, every share of a step before the next step (a
``prange`` over the work items would have Numba compile the loop body four more times). The kernels
call the loops over runs of pieces directly (every compiled function is optimized again inside each
caller, so the call tree stays shallow; one call per run, not per piece: a call takes and drops a
reference to each array it is given, atomic operations); the loops index flat arrays with plain
arithmetic, no slices; optional arrays are flags with stand-ins (a 0-size residual or gres, x as y
without a ReLU) and the steps are ints, so each kernel compiles once per dtype; helpers called only
from compiled code have no CPython wrapper; and no helper gets a literal argument (Numba compiles a
specialization per literal).
"""
from collections import namedtuple

import numpy as np

from .. import _threads
from ..reference import batchnorm as _ref
from ..reference.batchnorm import bn_backward_coeffs
from ._jit import inner, jit, launch, stepped
from .penalty import CAN_STREAM, STREAM_ALIGN, _sfence, _stream_store

__all__ = ["bn_stats", "bn_apply", "bn_forward_train", "bn_backward_reduce", "bn_backward_apply",
           "bn_backward", "bn_forward_coeffs", "bn_running_update", "bn_backward_coeffs",
           "bn_forward_infer"]

# Limits, read by _plan only (Python): tests shrink them.
ROWS_MIN_B = 32         # B from which a channel's rows are the unit of work
SEG = 1 << 15           # longest piece of a row (rows regime)
TASK = 1 << 16          # values per task (rows regime)
LANES = 32              # lanes of the sums (rows regime); half that for pieces under 4 * LANES
CHUNK = 1024            # element-wise loop length (rows regime)
COL_TASK = 1 << 18      # values per task (columns regime)
SPAN = 2048             # shortest loop of joined rows (columns regime)
SMALL_SPAN = 512        # the same for a single task: lanes in L1, shorter fills (1.3x on (64, 256))
FUSE_MAX_BYTES = 1 << 20     # data a fused channel reads: about one core's L2
STREAM_MIN_BYTES = 64 << 20  # smaller outputs stay in cache (about twice the L3)
STREAM_MIN_ROW = 2048   # bytes: shorter rows would spend more on their unstreamed heads

SUMS, FINISH, APPLY, FUSED, NONE = 0, 1, 2, 3, -1  # kernel steps
PLAIN, STREAM, IN_PLACE = 0, 1, 2  # output modes

Plan = namedtuple("Plan", "regime fused nthreads stream tile mode")
Plan.__doc__ = """How one call runs: regime "rows" or "cols"; fused; nthreads (1: serially, on
the calling thread); stream (outputs big enough to stream); tile (A', C', B', seg, nb, per_task,
ntask, lanes, chunk, Cc, Bc, n): the view, piece length, pieces per view row, pieces per task,
tasks per view channel, lanes of the sums, element-wise loop length, channels per view channel
and lanes per channel in a lane row (columns regime C and B, rows regime 1 and 1), values per
channel; mode PLAIN, STREAM or IN_PLACE once an op has seen its arrays (None from _plan)."""


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
            # 32 lanes against 64 (forward, one thread): float64 (32, 64, 3136) 4.1 against 5.3
            # ms, float32 even. A piece shorter than one pass of the sums' loop (4 rows of lanes)
            # runs in its tail loop, and each channel's lanes are added one by one: 16 lanes on
            # rows of 64 values, (8, 64, 64) float32, 61 against 86 us (64 lanes)
            lanes = LANES if seg >= 4 * LANES else max(1, LANES // 2)
            tile = (A, C, B, seg, nb, per_task, _cdiv(A * nb, per_task), lanes,
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


# --- loops over runs of pieces --------------------------------------------------------------------
# Flat arrays indexed by plain arithmetic, not slices (Numba types and lowers a slice as much code
# as a loop, and that code, not LLVM's, was most of the kernels' compile time). The hot loops
# index with unsigned ints (U): Numba tests a signed index for a negative value, which keeps
# LLVM from seeing consecutive accesses and vectorizing (1.5-2x slower loops).

U = np.uint64
Z = np.int64  # Z(0): a 0 that is not a literal (a literal argument gets a compile of its own)


@inner
def _kahan(acc, i, ci, v):
    """acc[i] += v with Kahan's compensation in acc[ci], dropped once acc[i] is inf or NaN."""
    y = v - acc[ci]
    t = acc[i] + y
    acc[ci] = (t - acc[i]) - y if abs(t) < np.inf else 0.0
    acc[i] = t


@inner
def _x_sums(x, c, p0, p1, tile, shift, acc, a):
    """acc += the shifted sums of pieces [p0, p1) of view channel c (see the kernels), value i
    of a piece x[lo:lo + n] into lane i % L (L = shift.size) minus shift[i % L]; acc's rows of L
    from a: s1, its compensation, s2, its compensation. Four rows of L per pass (a quarter of the
    accumulator traffic of one). a: uint64. One call for all the pieces: each call takes and
    drops a reference to each array (atomic operations), which cost more than a row of 64 values
    when it was a call per piece."""
    Cv, B, seg, nb = tile[1], tile[2], tile[3], tile[4]
    precise = np.float64(x.dtype.type(0.1)) == 0.1  # float64 data (a constant LLVM folds)
    L = U(shift.size)
    L2, L3 = L + L, L + L + L
    s1, c1, s2, c2 = a, a + L, a + L2, a + L3
    for p in range(p0, p1):
        b0 = (p % nb) * seg
        lo, n = U(((p // nb) * Cv + c) * B + b0), U(min(seg, B - b0))
        full = n - n % (L2 + L2)
        for j in range(lo, lo + full, L2 + L2):
            for k in range(L):
                m = shift[k]
                d0 = np.float64(x[j + k]) - m
                d1 = np.float64(x[j + L + k]) - m
                d2 = np.float64(x[j + L2 + k]) - m
                d3 = np.float64(x[j + L3 + k]) - m
                v1 = (d0 + d1) + (d2 + d3)
                v2 = (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
                if precise:
                    _kahan(acc, s1 + k, c1 + k, v1)
                    _kahan(acc, s2 + k, c2 + k, v2)
                else:
                    acc[s1 + k] += v1
                    acc[s2 + k] += v2
        for j in range(lo + full, lo + n, L):
            for k in range(min(L, lo + n - j)):
                d = np.float64(x[j + k]) - shift[k]
                if precise:
                    _kahan(acc, s1 + k, c1 + k, d)
                    _kahan(acc, s2 + k, c2 + k, d * d)
                else:
                    acc[s1 + k] += d
                    acc[s2 + k] += d * d


@inner
def _g_sums(gy, x, y, c, p0, p1, tile, mu, masked, acc, a):
    """acc += (g, g * (x - mu)) over pieces [p0, p1) of view channel c as _x_sums, with g = gy,
    or gy where y > 0 (else 0) when ``masked`` (y: x without a mask, not read then: a loop over
    twelve arrays is not vectorized as well as one over eight)."""
    Cv, B, seg, nb = tile[1], tile[2], tile[3], tile[4]
    precise = np.float64(x.dtype.type(0.1)) == 0.1
    zero = gy.dtype.type(0)
    L = U(mu.size)
    L2, L3 = L + L, L + L + L
    s1, c1, s2, c2 = a, a + L, a + L2, a + L3
    for p in range(p0, p1):
        b0 = (p % nb) * seg
        lo, n = U(((p // nb) * Cv + c) * B + b0), U(min(seg, B - b0))
        full = n - n % (L2 + L2)
        for j in range(lo, lo + (full if masked else U(0)), L2 + L2):
            for k in range(L):
                i0, i1, i2, i3 = j + k, j + L + k, j + L2 + k, j + L3 + k
                a0 = np.float64(gy[i0] if y[i0] > zero else zero)
                a1 = np.float64(gy[i1] if y[i1] > zero else zero)
                a2 = np.float64(gy[i2] if y[i2] > zero else zero)
                a3 = np.float64(gy[i3] if y[i3] > zero else zero)
                m = mu[k]
                v1 = (a0 + a1) + (a2 + a3)
                v2 = ((a0 * (np.float64(x[i0]) - m) + a1 * (np.float64(x[i1]) - m))
                      + (a2 * (np.float64(x[i2]) - m) + a3 * (np.float64(x[i3]) - m)))
                if precise:
                    _kahan(acc, s1 + k, c1 + k, v1)
                    _kahan(acc, s2 + k, c2 + k, v2)
                else:
                    acc[s1 + k] += v1
                    acc[s2 + k] += v2
        for j in range(lo, lo + (U(0) if masked else full), L2 + L2):
            for k in range(L):
                i0, i1, i2, i3 = j + k, j + L + k, j + L2 + k, j + L3 + k
                a0, a1, a2, a3 = np.float64(gy[i0]), np.float64(gy[i1]), np.float64(gy[i2]), \
                    np.float64(gy[i3])
                m = mu[k]
                v1 = (a0 + a1) + (a2 + a3)
                v2 = ((a0 * (np.float64(x[i0]) - m) + a1 * (np.float64(x[i1]) - m))
                      + (a2 * (np.float64(x[i2]) - m) + a3 * (np.float64(x[i3]) - m)))
                if precise:
                    _kahan(acc, s1 + k, c1 + k, v1)
                    _kahan(acc, s2 + k, c2 + k, v2)
                else:
                    acc[s1 + k] += v1
                    acc[s2 + k] += v2
        for j in range(lo + full, lo + n, L):
            for k in range(min(L, lo + n - j)):
                g = np.float64(gy[j + k]) if (y[j + k] > zero) | (not masked) else 0.0
                v = g * (np.float64(x[j + k]) - mu[k])
                if precise:
                    _kahan(acc, s1 + k, c1 + k, g)
                    _kahan(acc, s2 + k, c2 + k, v)
                else:
                    acc[s1 + k] += g
                    acc[s2 + k] += v


@inner
def _put(src, s, o, lo, n, mode):
    """o[lo:lo + n] = src[s:s + n], with streaming stores from o's first 64-byte boundary on when
    mode is STREAM (the vector loop's stores are then aligned). s, lo, n: uint64."""
    h = n
    if mode == STREAM:
        address = o.ctypes.data + np.int64(lo) * o.itemsize
        h = min(n, U((STREAM_ALIGN - address % STREAM_ALIGN) % STREAM_ALIGN // o.itemsize))
    for i in range(h):
        o[lo + i] = src[s + i]
    for i in range(h, n):
        _stream_store(o, lo + i, src[s + i])


def _helper(fn, rows):
    """fn compiled as a helper named for its regime (Numba's cache is keyed by the name)."""
    fn.__name__ = fn.__qualname__ = fn.__name__ + ("_rows" if rows else "_cols")
    return inner(fn)


def _affine_for(uniform):
    """_affine of one regime: ``uniform`` (the rows regime) is a constant whose branches Numba
    prunes, so a kernel compiles the loops of its regime only."""
    def _affine(x, r, o, c, p0, p1, tile, coefs, cf, W, opts, buf):
        """o[lo:lo + n] = act((x - ce) * sc + sh [+ r]) on pieces [p0, p1) of view channel c, or of
        the whole view in memory order when c < 0 (see the kernels), the reference's order; act the
        ReLU (floor 0: +0.0 for v <= 0, NaN kept) or nothing (floor -inf). In chunks of W (cf: rows
        ce, sc, sh of W values, value i of a chunk takes coefficient i; ``uniform``: one channel,
        its coefficients from coefs (center, scale, shift) at each piece, kept in registers: 1.9x
        faster than loading a row in cache-resident loops, and chunks of buf.size); opts (floor,
        eps, has_res, mode); buf: where IN_PLACE and STREAM compute a chunk before _put copies it
        out. W: uint64. One call for all the pieces, and no array variable assigned in its loops:
        each takes and drops a reference (atomic operations), which cost more than a row of 64
        values when it was done per piece."""
        Cv, B, seg, nb = tile[1], tile[2], tile[3], tile[4]
        floor, has_res, mode = opts[0], opts[2], opts[3]
        W2 = W + W
        dst = o if mode == PLAIN else buf
        for p in range(p0, p1):
            a, ch = (p // (Cv * nb), (p // nb) % Cv) if c < 0 else (p // nb, c)
            v0 = (p % nb) * seg
            lo, n = U((a * Cv + ch) * B + v0), U(min(seg, B - v0))
            if uniform:
                cf[0], cf[1], cf[2] = coefs[0][ch], coefs[1][ch], coefs[2][ch]
            c0, s0, h0 = cf[0], cf[W], cf[W2]
            L = n if uniform and mode == PLAIN else (U(buf.size) if uniform else W)
            for j in range(lo, lo + n, max(L, U(1))):
                m = min(L, lo + n - j)
                d = j if mode == PLAIN else U(0)
                if uniform and has_res:
                    for i in range(m):
                        v = (x[j + i] - c0) * s0 + h0 + r[j + i]
                        dst[d + i] = v if not (v <= floor) else floor
                elif uniform:
                    for i in range(m):
                        v = (x[j + i] - c0) * s0 + h0
                        dst[d + i] = v if not (v <= floor) else floor
                elif has_res:
                    for i in range(m):
                        v = (x[j + i] - cf[i]) * cf[W + i] + cf[W2 + i] + r[j + i]
                        dst[d + i] = v if not (v <= floor) else floor
                else:
                    for i in range(m):
                        v = (x[j + i] - cf[i]) * cf[W + i] + cf[W2 + i]
                        dst[d + i] = v if not (v <= floor) else floor
                if mode != PLAIN:
                    _put(buf, U(0), o, j, m, mode)

    return _helper(_affine, uniform)


_affine_rows, _affine_cols = _affine_for(True), _affine_for(False)


def _gback_for(uniform):
    """_gback of one regime: ``uniform`` (the rows regime) is a constant whose branches Numba
    prunes, so a kernel compiles the loops of its regime only."""
    def _gback(gy, x, y, gx, gr, c, p0, p1, tile, coefs, cf, W, flags, buf):
        """gx[lo:lo + n] = g * a - (x - ce) * b - d (training) or g * a on pieces [p0, p1) as
        _affine, the reference's order, with g = gy, or gy where y > 0 (else +0) when masked; gr = g
        when has_gres. cf: rows (ce, a, b, d) of W values (``uniform``: one value, from coefs
        (center, a, b, d) at each piece, see _affine); flags (masked, training, has_gres, mode);
        buf: 2 chunks (the chunk for _put; the masked g). W: uint64."""
        Cv, B, seg, nb = tile[1], tile[2], tile[3], tile[4]
        masked, training, has_gres, mode = flags
        W2, W3 = W + W, W + W + W
        zero = gx.dtype.type(0)
        g = buf if masked else gy
        dst = gx if mode == PLAIN else buf
        for p in range(p0, p1):
            a, ch = (p // (Cv * nb), (p // nb) % Cv) if c < 0 else (p // nb, c)
            v0 = (p % nb) * seg
            lo, n = U((a * Cv + ch) * B + v0), U(min(seg, B - v0))
            if uniform:
                cf[0], cf[1], cf[2], cf[3] = coefs[0][ch], coefs[1][ch], coefs[2][ch], coefs[3][ch]
            c0, a0, b0, d0 = cf[0], cf[W], cf[W2], cf[W3]
            if uniform and mode == PLAIN and not masked:
                L = max(n, U(1))  # no buffer is used: one pass
            else:
                L = U(buf.size // 2) if uniform else W
            for j in range(lo, lo + n, L):
                m = min(L, lo + n - j)
                e = L if masked else j
                if masked:
                    for i in range(m):
                        buf[L + i] = gy[j + i] if y[j + i] > zero else zero
                if has_gres:
                    _put(g, e, gr, j, m, mode)
                d = j if mode == PLAIN else U(0)
                if uniform and training:
                    for i in range(m):
                        dst[d + i] = g[e + i] * a0 - (x[j + i] - c0) * b0 - d0
                elif uniform:
                    for i in range(m):
                        dst[d + i] = g[e + i] * a0
                elif training:
                    for i in range(m):
                        dst[d + i] = (g[e + i] * cf[W + i] - (x[j + i] - cf[i]) * cf[W2 + i]
                                      - cf[W3 + i])
                else:
                    for i in range(m):
                        dst[d + i] = g[e + i] * cf[W + i]
                if mode != PLAIN:
                    _put(buf, U(0), gx, j, m, mode)

    return _helper(_gback, uniform)


_gback_rows, _gback_cols = _gback_for(True), _gback_for(False)


@inner
def _combine(block, a, T, L, Cc, Bc):
    """Per-channel (s1, s2) (flat: Cc values of s1, then Cc of s2) of T task sums (4 rows of L
    each from block[a], as _x_sums leaves them), lane k belonging to channel (k % (Cc * Bc)) //
    Bc: Neumaier sums over the tasks and span rows, lane by lane of a row of K = Cc * Bc, then
    over each channel's Bc lanes, in order."""
    K = Cc * Bc
    w = np.empty(4 * K)  # totals (2 rows of K), then their compensations
    for k in range(4 * K):
        w[k] = 0.0
    for t in range(T):
        for j in range(2):
            for r in range(0, L, K):
                for k in range(K):
                    i = a + (4 * t + 2 * j) * L + r + k
                    v = block[i] - block[i + L]
                    s, u = w[j * K + k], w[j * K + k] + v
                    w[(2 + j) * K + k] += (s - u) + v if abs(s) >= abs(v) else (v - u) + s
                    w[j * K + k] = u
    out = np.empty(2 * Cc)
    for j in range(2):
        for i in range(Cc):
            s, e = 0.0, 0.0
            for k in range(j * K + i * Bc, j * K + (i + 1) * Bc):
                # once a total is inf or NaN its compensation is inf - inf: leave it out
                v = w[k] + w[k + 2 * K] if abs(w[k]) < np.inf else w[k]
                u = s + v
                e += (s - u) + v if abs(s) >= abs(v) else (v - u) + s
                s = u
            out[j * Cc + i] = s + e if abs(s) < np.inf else s
    return out


@inner
def _lane_row(v, v0, nv, Bc, out, o, W):
    """out[o + k] = v[v0 + (k % K) // Bc] for k < W, K = nv * Bc: the values of a view channel's
    channels as a lane row (K divides W), written without integer divisions (they would cost
    more than the rest of a small call)."""
    K = nv * Bc
    for i in range(nv):
        for b in range(Bc):
            out[o + i * Bc + b] = v[v0 + i]
    for k in range(o + K, o + W):
        out[k] = out[k - K]


# --- kernels ------------------------------------------------------------------------------------
# A kernel runs up to three steps of one op (``steps``, NONE for no step) on a tile (Plan.tile):
# SUMS, FINISH, APPLY or FUSED alone. Each step is a loop over share t of T of its work items
# (T threads run one share each, _jit.stepped), the item's work written out in one loop body that
# holds each part once (Numba optimizes every compiled callee again inside each caller,
# numba/numba#8085). Items of a step never write the same memory. Work item q: SUMS task q,
# pieces [p0, p1) of view channel c = q // ntask, its sums into part's block q (4 rows of lanes);
# FINISH view channel q: its tasks' blocks added and the coefficients computed; FUSED all of view
# channel q (its sums in the channel's first block, then FINISH, then APPLY on it while it is in
# cache); APPLY a run of per_task pieces of the whole view, in memory order (one forward stream,
# which the hardware prefetches). Piece p is view row p // nb, values [b0, b0 + seg) of it,
# b0 = (p % nb) * seg.

@inner
def _items(step, tile):
    """The work items of ``step`` on ``tile``."""
    A, Cv, nb, per_task, ntask = tile[0], tile[1], tile[4], tile[5], tile[6]
    if step == SUMS:
        return Cv * ntask
    if step == APPLY:
        return (A * Cv * nb + per_task - 1) // per_task
    return Cv


def _forward(do_sums, do_apply, uniform):
    """The forward kernel's source, compiling the steps SUMS and FINISH when ``do_sums``, APPLY
    when ``do_apply``, FUSED when both, for the rows regime when ``uniform`` (a piece has one
    channel, scalar coefficients), else the columns regime (see _kernels)."""
    def kernel(arrays, coef, stats, scratch, opts, tile, steps, t, T):
        """Forward steps, share t of T of each. arrays: flat (x, residual, out), residual 0-size
        when there is none, x may be out; coef (weight, bias, center, scale, shift): with
        weights, center, scale and shift are computed here into scratch (the 0-size ones given
        are not used); without, they are given (APPLY) or not wanted (0-size: the statistics
        alone); stats (mean, m2, invstd) float64; scratch (float64: x0 then the tasks' sums,
        out's dtype: 3 * C), see _scratch; opts (floor, eps, has_res, mode)."""
        x, r, o = arrays
        A, Cv, B, seg, nb, per_task, ntask, lanes, chunk, Cc, Bc, n = tile
        weight, bias, center, scale, shift = coef
        mean, m2, invstd = stats
        C = weight.size
        if C:
            work = scratch[1]
            center, scale, shift = work[:C], work[C:2 * C], work[2 * C:3 * C]
        x0 = scratch[0][:mean.size]  # each channel's shift: its first value (0 if not finite)
        part = scratch[0][mean.size:]  # the tasks' sums
        W = 1 if uniform else chunk
        # a share's scratch, allocated once (an allocation per item cost as much as a short
        # channel's work)
        first, shift_row = np.empty(Cc), np.empty(lanes)
        cf, buf = np.empty(3 * W, o.dtype), np.empty(chunk, o.dtype)
        for step in steps:
            if step == NONE:
                continue
            items = _items(step, tile)
            for q in range(t * items // T, (t + 1) * items // T):
                c, p0, p1 = q, 0, A * nb  # FUSED, FINISH
                if step == SUMS:
                    c = q // ntask
                    p0 = (q - c * ntask) * per_task
                    p1 = min(p0 + per_task, A * nb)
                elif step == APPLY:
                    c, p0, p1 = -1, q * per_task, min((q + 1) * per_task, A * Cv * nb)
                if do_sums and (step == SUMS or step == FUSED):
                    # every task records the shift (tasks of a channel may run at the same time)
                    for k in range(Cc):
                        v = np.float64(x[c * B + k * Bc])
                        first[k] = v if abs(v) < np.inf else 0.0
                        if p0 == 0:
                            x0[c * Cc + k] = first[k]
                    _lane_row(first, Z(0), Cc, Bc, shift_row, Z(0), lanes)
                    at = (q if step == SUMS else c * ntask) * 4 * lanes
                    for k in range(at, at + 4 * lanes):
                        part[k] = 0.0
                    _x_sums(x, c, p0, p1, tile, shift_row, part, U(at))
                if do_sums and (step == FINISH or step == FUSED):
                    sums = _combine(part, c * ntask * 4 * lanes, ntask if step == FINISH else 1,
                                    lanes, Cc, Bc)
                    for k in range(Cc):
                        ch, s1, s2 = c * Cc + k, sums[k], sums[Cc + k]
                        q2 = s2 - s1 * (s1 / n)
                        mean[ch] = x0[ch] + s1 / n
                        m2[ch] = q2 if not (q2 < 0.0) else 0.0  # rounding may leave it below 0
                        if C:  # the coefficients, as bn_forward_coeffs with fold=False
                            inv = 1.0 / np.sqrt(m2[ch] / n + opts[1])
                            invstd[ch] = inv
                            center[ch] = mean[ch]
                            scale[ch] = np.float64(weight[ch]) * inv
                            shift[ch] = bias[ch]
                if do_apply and (step == APPLY or step == FUSED):
                    if not uniform:  # (one view channel)
                        _lane_row(center, Z(0), Cc, Bc, cf, Z(0), W)
                        _lane_row(scale, Z(0), Cc, Bc, cf, W, W)
                        _lane_row(shift, Z(0), Cc, Bc, cf, 2 * W, W)
                    # (a module-level helper per branch: a helper held in the closure would put
                    # its dispatcher, whose uuid is new in each process, into the cache key)
                    if uniform:
                        _affine_rows(x, r, o, c, p0, p1, tile, (center, scale, shift), cf, U(W),
                                     opts, buf)
                    else:
                        _affine_cols(x, r, o, c, p0, p1, tile, (center, scale, shift), cf, U(W),
                                     opts, buf)
                    if opts[3] == STREAM:
                        _sfence()
    return kernel


def _backward(do_sums, do_apply, uniform):
    """The backward kernel's source, as _forward's."""
    def kernel(arrays, coef, stats, scratch, flags, tile, steps, t, T):
        """Backward steps, share t of T of each. arrays: flat (gy, x, y, gx, gres), y is x
        without a ReLU, gres 0-size when not wanted, gy may be gx; coef (weight, grad_weight,
        grad_bias, center, a, b, d), center 0-size for the sums alone; stats (mean, invstd, s_dy,
        s_dyx) float64; scratch (float64: s_dy and s_dyx then the tasks' sums, gx's dtype: 4 *
        C), see _scratch; flags (masked, training, has_gres, mode). With weights, (center, a, b,
        d) and (s_dy, s_dyx) are made here (the 0-size ones given are not used)."""
        gy, x, y, gx, gr = arrays
        A, Cv, B, seg, nb, per_task, ntask, lanes, chunk, Cc, Bc, n = tile
        weight, grad_weight, grad_bias, center, ca, cb, cd = coef
        mean, invstd, s_dy, s_dyx = stats
        C = weight.size
        if C:
            work = scratch[1]
            center, ca, cb, cd = work[:C], work[C:2 * C], work[2 * C:3 * C], work[3 * C:4 * C]
            s_dy, s_dyx = scratch[0][:C], scratch[0][C:2 * C]
        part = scratch[0][2 * C:]
        W = 1 if uniform else chunk
        mu = np.empty(lanes)  # a share's scratch, as in _forward
        cf, buf = np.empty(4 * W, gx.dtype), np.empty(2 * chunk, gx.dtype)
        for step in steps:
            if step == NONE:
                continue
            items = _items(step, tile)
            for q in range(t * items // T, (t + 1) * items // T):
                c, p0, p1 = q, 0, A * nb  # FUSED, FINISH
                if step == SUMS:
                    c = q // ntask
                    p0 = (q - c * ntask) * per_task
                    p1 = min(p0 + per_task, A * nb)
                elif step == APPLY:
                    c, p0, p1 = -1, q * per_task, min((q + 1) * per_task, A * Cv * nb)
                if do_sums and (step == SUMS or step == FUSED):
                    _lane_row(mean, c * Cc, Cc, Bc, mu, Z(0), lanes)
                    at = (q if step == SUMS else c * ntask) * 4 * lanes
                    for k in range(at, at + 4 * lanes):
                        part[k] = 0.0
                    _g_sums(gy, x, y, c, p0, p1, tile, mu, flags[0], part, U(at))
                if do_sums and (step == FINISH or step == FUSED):
                    sums = _combine(part, c * ntask * 4 * lanes, ntask if step == FINISH else 1,
                                    lanes, Cc, Bc)
                    for k in range(Cc):
                        ch = c * Cc + k
                        s_dy[ch] = sums[k]
                        s_dyx[ch] = sums[Cc + k]
                        if C:  # the gradients and coefficients, as bn_backward_coeffs (b and d
                            inv = invstd[ch]  # also in inference, unused there)
                            a64 = np.float64(weight[ch]) * inv
                            grad_weight[ch] = s_dyx[ch] * inv
                            grad_bias[ch] = s_dy[ch]
                            center[ch] = mean[ch]
                            ca[ch] = a64
                            cb[ch] = a64 * inv * inv * s_dyx[ch] / n
                            cd[ch] = a64 * s_dy[ch] / n
                if do_apply and (step == APPLY or step == FUSED):
                    if not uniform:
                        _lane_row(center, Z(0), Cc, Bc, cf, Z(0), W)
                        _lane_row(ca, Z(0), Cc, Bc, cf, W, W)
                        _lane_row(cb, Z(0), Cc, Bc, cf, 2 * W, W)
                        _lane_row(cd, Z(0), Cc, Bc, cf, 3 * W, W)
                    if uniform:  # (as in _forward)
                        _gback_rows(gy, x, y, gx, gr, c, p0, p1, tile, (center, ca, cb, cd), cf,
                                    U(W), flags, buf)
                    else:
                        _gback_cols(gy, x, y, gx, gr, c, p0, p1, tile, (center, ca, cb, cd), cf,
                                    U(W), flags, buf)
                    if flags[3] == STREAM:
                        _sfence()
    return kernel


def _kernels(source, name, regime):
    """Three stepped kernels of one regime ("rows" or "cols") from one source: ``name_<regime>``
    (every step), ``name_<regime>_stats`` (SUMS, FINISH: bn_stats, bn_backward_reduce) and
    ``name_<regime>_apply`` (APPLY: bn_apply, bn_backward_apply). The ``do_sums``, ``do_apply``
    and ``uniform`` of a source are constants, whose branches Numba prunes before typing: the
    first call of an op compiles only the steps it can run, in the regime of its shape."""
    made = []
    for suffix, do_sums, do_apply in (("", True, True), ("_stats", True, False),
                                      ("_apply", False, True)):
        fn = source(do_sums, do_apply, regime == "rows")
        fn.__name__ = fn.__qualname__ = f"{name}_{regime}{suffix}"
        made.append(stepped(fn))
    return made


_forward_rows, _forward_rows_stats, _forward_rows_apply = _kernels(_forward, "_forward", "rows")
_forward_cols, _forward_cols_stats, _forward_cols_apply = _kernels(_forward, "_forward", "cols")
_backward_rows, _backward_rows_stats, _backward_rows_apply = _kernels(_backward, "_backward",
                                                                      "rows")
_backward_cols, _backward_cols_stats, _backward_cols_apply = _kernels(_backward, "_backward",
                                                                      "cols")
# (op, regime) -> its kernel
_KERNELS = {
    ("forward", "rows"): _forward_rows, ("forward", "cols"): _forward_cols,
    ("stats", "rows"): _forward_rows_stats, ("stats", "cols"): _forward_cols_stats,
    ("apply", "rows"): _forward_rows_apply, ("apply", "cols"): _forward_cols_apply,
    ("backward", "rows"): _backward_rows, ("backward", "cols"): _backward_cols,
    ("backward_reduce", "rows"): _backward_rows_stats,
    ("backward_reduce", "cols"): _backward_cols_stats,
    ("backward_apply", "rows"): _backward_rows_apply,
    ("backward_apply", "cols"): _backward_cols_apply,
}


# --- the backend's functions --------------------------------------------------------------------
# Lean on purpose: on a (64, 256) layer this Python is as long as the kernels. One launch per op.

_STAND_INS = {}  # dtype -> a 0-size array, for the optional arrays a call does not have
_F64 = np.dtype(np.float64)
_FLOATS = (np.dtype(np.float32), _F64)


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


def _scratch(plan, head, C, per_channel, dtype):
    """The work memory of a kernel that sums: (float64: ``head`` values, then the tasks' sums;
    ``dtype``: ``per_channel`` rows of C coefficients). APPLY alone needs none (0-size
    stand-ins)."""
    Cv, ntask, lanes = plan.tile[1], plan.tile[6], plan.tile[7]
    return np.empty(head + Cv * ntask * 4 * lanes), np.empty(per_channel * C, dtype)


def _steps(plan):
    """The steps of a training op: FUSED alone, or SUMS, FINISH and APPLY."""
    return (FUSED, NONE, NONE) if plan.fused else (SUMS, FINISH, APPLY)


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
    launch(_KERNELS["stats", plan.regime], plan.nthreads, (xf, e, xf), (e, e, e, e, e),
           (mean, m2, _stand_in(_F64)), _scratch(plan, mean.size, 0, 0, x.dtype),
           _opts(x.dtype, 0.0, None, False, PLAIN), plan.tile, (SUMS, FINISH, NONE))
    return plan


def bn_apply(x, center, scale, shift, residual, relu, out, plan=None):
    plan = _ready(plan, out.shape, out.itemsize, 1, out,
                  (x,) if residual is None else (x, residual))
    if out.size:
        e, f = _stand_in(out.dtype), _stand_in(_F64)
        arrays = (x.reshape(-1), e if residual is None else residual.reshape(-1),
                  out.reshape(-1))
        launch(_KERNELS["apply", plan.regime], plan.nthreads, arrays, (e, e, center, scale, shift),
               (f, f, f), (f, e), _opts(out.dtype, 0.0, residual, relu, plan.mode), plan.tile,
               (APPLY, NONE, NONE))
    return plan


def bn_forward_train(x, weight, bias, eps, residual, relu, out, mean, m2, invstd, plan=None):
    plan = _ready(plan, x.shape, x.itemsize, 1, out, (x,) if residual is None else (x, residual))
    if x.size == 0:
        return plan
    arrays = (x.reshape(-1), _stand_in(x.dtype) if residual is None else residual.reshape(-1),
              out.reshape(-1))
    e = _stand_in(x.dtype)
    launch(_KERNELS["forward", plan.regime], plan.nthreads, arrays, (weight, bias, e, e, e),
           (mean, m2, invstd), _scratch(plan, mean.size, weight.size, 3, x.dtype),
           _opts(x.dtype, eps, residual, relu, plan.mode), plan.tile, _steps(plan))
    return plan


def bn_backward_reduce(gy, x, y, center, s_dy, s_dyx, plan=None):
    plan = plan or _plan(x.shape, x.itemsize)
    if x.size == 0:
        s_dy[:] = 0.0
        s_dyx[:] = 0.0
        return plan
    e, xf = _stand_in(x.dtype), x.reshape(-1)
    arrays = (gy.reshape(-1), xf, xf if y is None else y.reshape(-1), xf, e)
    launch(_KERNELS["backward_reduce", plan.regime], plan.nthreads, arrays, (e,) * 7,
           (center, _stand_in(center.dtype), s_dy, s_dyx), _scratch(plan, 0, 0, 0, x.dtype),
           (y is not None, False, False, PLAIN), plan.tile, (SUMS, FINISH, NONE))
    return plan


def bn_backward_apply(gy, x, y, center, a, b, d, gx, gres, plan=None):
    plan = _ready(plan, x.shape, x.itemsize, 1, gx, (gy, x) if y is None else (gy, x, y), gres)
    if x.size:
        e, f, xf = _stand_in(x.dtype), _stand_in(_F64), x.reshape(-1)
        arrays = (gy.reshape(-1), xf, xf if y is None else y.reshape(-1), gx.reshape(-1),
                  e if gres is None else gres.reshape(-1))
        training = b is not None
        coef = (e, e, e, center, a, b, d) if training else (e, e, e, center, a, a, a)
        launch(_KERNELS["backward_apply", plan.regime], plan.nthreads, arrays, coef, (f, f, f, f),
               (f, e), (y is not None, training, gres is not None, plan.mode), plan.tile,
               (APPLY, NONE, NONE))
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
    launch(_KERNELS["backward", plan.regime], plan.nthreads, arrays,
           (weight, grad_weight, grad_bias, e, e, e, e), (mean, invstd, f, f),
           _scratch(plan, 2 * weight.size, weight.size, 4, x.dtype),
           (y is not None, bool(training), gres is not None, plan.mode), plan.tile, _steps(plan))
    return plan


@jit
def _forward_coeffs_kernel(mean, m2, count, weight, bias, eps, fold, saved_mean, invstd, center,
                           scale, shift):
    """The reference's bn_forward_coeffs (weight, bias 0-size for none: w = 1, b = 0), its
    float64 operations in its order (no fastmath): the same bits, without NumPy's temporaries
    (a small call ~1 us, not ~8). saved_mean may be mean (read first)."""
    has_w, has_b = weight.size > 0, bias.size > 0
    for c in range(saved_mean.size):
        mu = np.float64(mean[c])
        inv = 1.0 / np.sqrt(np.float64(m2[c]) / count + eps)
        w = np.float64(weight[c]) if has_w else 1.0
        b = np.float64(bias[c]) if has_b else 0.0
        sc = w * inv
        saved_mean[c] = mu
        invstd[c] = inv
        scale[c] = sc
        if fold:
            center[c] = 0.0
            shift[c] = b - mu * sc
        else:
            center[c] = mu
            shift[c] = b


def bn_forward_coeffs(mean, m2, count, weight, bias, eps, fold, saved_mean, invstd, center, scale,
                      shift):
    """Coefficients of ``bn_apply`` from per-channel statistics, as
    fastreg.reference.batchnorm.bn_forward_coeffs, bit for bit (one compiled loop for float32
    and float64 arrays of C values; the reference for anything else)."""
    dt, C = center.dtype, saved_mean.size
    if not (dt in _FLOATS and scale.dtype == dt and shift.dtype == dt
            and mean.dtype in _FLOATS and m2.dtype == mean.dtype
            and saved_mean.dtype == _F64 and invstd.dtype == _F64
            and (weight is None or weight.dtype == dt) and (bias is None or bias.dtype == dt)
            and all(a is None or (a.ndim == 1 and a.size == C)
                    for a in (mean, m2, weight, bias, invstd, center, scale, shift))):
        return _ref.bn_forward_coeffs(mean, m2, count, weight, bias, eps, fold, saved_mean,
                                      invstd, center, scale, shift)
    e = _stand_in(dt)
    _forward_coeffs_kernel(mean, m2, float(count), e if weight is None else weight,
                           e if bias is None else bias, float(eps), bool(fold), saved_mean,
                           invstd, center, scale, shift)


def bn_forward_infer(x, running_mean, running_var, weight, bias, eps, residual, relu, out,
                     saved_mean, invstd):
    """``bn_forward_coeffs(running_mean, running_var, 1, weight, bias, eps, True, saved_mean,
    invstd, ...)`` then ``bn_apply`` with those coefficients: batch_norm's common inference
    call (as the C backend's one-call version; not a registry op)."""
    coef = np.empty((3, saved_mean.size), out.dtype)
    bn_forward_coeffs(running_mean, running_var, 1, weight, bias, eps, True, saved_mean, invstd,
                      coef[0], coef[1], coef[2])
    bn_apply(x, coef[0], coef[1], coef[2], residual, relu, out)


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

