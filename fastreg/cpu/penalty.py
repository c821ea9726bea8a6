"""Penalty gradients, proximal steps and checks on the CPU with Numba (definitions in
fastreg/reference/penalty.py).

Each op is a split kernel (``*_kernel``: share ``share`` of ``shares`` of the tasks of TASK
elements, see fastreg/cpu/_jit.py) and a plain
``@jit`` task function (``*_task``) that runs one loop over slice views of its task (slices, not
``w[lo + i]``, are what let LLVM vectorize; a task function can be checked alone with
``inspect_asm``). The flags that pick a formula are tested once per task, outside the loops.
Arithmetic stays in the array's dtype, in the reference's order, without fastmath (so no FMA
contraction): bit for bit the reference.

In place (``out`` is ``w``), soft_threshold's task function takes one array: given two array
arguments LLVM guards the vector loop with an overlap check, which fails when they are the same
memory and falls back to a scalar loop, about 25x slower.

Large out-of-place outputs bypass the cache with streaming stores (as the C backend does):
otherwise every line of ``out`` is read from memory before it is overwritten, 12 bytes moved per
float32 element instead of 8 (measured 1.2-1.3x). Numba has no streaming store, so
``_stream_store`` emits one (an LLVM store with !nontemporal metadata), which LLVM's vectorizer
widens to vmovntps. The widened store keeps the scalar's declared alignment, so the scalar declares
64 bytes, and only slices that start 64-byte aligned are streamed: the vector loop steps whole
vectors from index 0, so every vector store really is aligned; its scalar remainder (movntss, or a
plain store) needs no alignment. Loops store through ``_put(o, i, v, stream)`` with a constant
``stream``, which LLVM folds. (Computing a block into an L1 buffer and then streaming it out, as
the C backend does, measured 1.5x slower here: the reads and the writes no longer overlap.)

Reductions (penalty_sums, group_lasso's norms) accumulate in float64 over several partial sums:
without fastmath LLVM keeps a single running sum in order (scalar, latency-bound), but it does
vectorize the elementwise update of a row of accumulators. Their results differ from NumPy's
pairwise / BLAS sums in the last bits.
"""
import platform

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .. import _threads
from ._jit import inline, jit, launch, split

TASK = 1 << 16          # elements per parallel task
LANES = {4: 32, 8: 64}  # float64 partial sums per reduction, by itemsize (measured best)
COLS = 1024             # group_lasso: columns b per task
STREAM_MIN_BYTES = 4 << 20  # smaller outputs are likely read again soon: keep them in cache
STREAM_ALIGN = 64       # bytes; the widest vector store (zmm)
CAN_STREAM = platform.machine().lower() in ("x86_64", "amd64")

L1_ONLY, L2_ONLY, ELASTIC = 0, 1, 2   # penalty_grad's formulas


# --- streaming stores ---------------------------------------------------------------------------

@intrinsic
def _stream_store(typingctx, arr, i, value):
    """arr[i] = value as a non-temporal store declared 64-byte aligned (see the module doc)."""
    sig = types.void(arr, types.intp, arr.dtype)

    def codegen(context, builder, signature, args):
        aty = signature.args[0]
        ary = context.make_array(aty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aty, ary, [args[1]])
        store = builder.store(args[2], ptr, align=STREAM_ALIGN)
        store.set_metadata("nontemporal",
                           builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _sfence(typingctx):
    """Order this thread's streaming stores before the join (they are weakly ordered)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if CAN_STREAM:  # elsewhere nothing is streamed, and the x86 intrinsic would not compile
            fnty = ir.FunctionType(ir.VoidType(), [])
            builder.call(cgutils.get_or_insert_function(builder.module, fnty,
                                                        "llvm.x86.sse.sfence"), [])
        return context.get_dummy_value()

    return sig, codegen


@inline
def _put(o, i, value, stream):
    """o[i] = value, streamed when ``stream``; callers pass a constant, which LLVM folds."""
    if stream:
        _stream_store(o, i, value)
    else:
        o[i] = value


def _stream_head(w, out):
    """Elements before ``out`` is 64-byte aligned, or -1 when ``out`` should not be streamed."""
    if not CAN_STREAM or out.nbytes < STREAM_MIN_BYTES or np.may_share_memory(w, out):
        return -1
    address = out.ctypes.data
    if address % out.itemsize:
        return -1
    return (-address % STREAM_ALIGN) // out.itemsize


# --- elementwise --------------------------------------------------------------------------------

@inline
def _sgn(x, one, zero):
    """What np.sign returns: 1, -1, +0 for both zeros (np.sign(-0.0) is +0.0), x for NaN."""
    return one if x > zero else (-one if x < zero else (zero if x == zero else x))


@inline
def _soft(x, t, mt, zero):
    """soft(x, t), with mt = -t: x - t above t, x + t below -t, NaN kept, else +0."""
    return x - t if x > t else (x + t if x < mt else (x if x != x else zero))


@inline
def _grad_store(ws, o, l1, c2, mode, stream):
    """o = g(ws), the formula picked by mode."""
    one = ws.dtype.type(1)
    zero = ws.dtype.type(0)
    if mode == L1_ONLY:
        for i in range(ws.size):
            _put(o, i, l1 * _sgn(ws[i], one, zero), stream)
    elif mode == L2_ONLY:
        for i in range(ws.size):
            _put(o, i, c2 * ws[i], stream)
    else:
        for i in range(ws.size):
            x = ws[i]
            _put(o, i, l1 * _sgn(x, one, zero) + c2 * x, stream)


@jit
def _grad_task(ws, o, l1, c2, mode, accumulate):
    """One task's slice: o (+)= g(ws), ordinary stores."""
    if not accumulate:
        _grad_store(ws, o, l1, c2, mode, False)
        return
    one = ws.dtype.type(1)
    zero = ws.dtype.type(0)
    if mode == L1_ONLY:
        for i in range(ws.size):
            o[i] = o[i] + l1 * _sgn(ws[i], one, zero)
    elif mode == L2_ONLY:
        for i in range(ws.size):
            o[i] = o[i] + c2 * ws[i]
    else:
        for i in range(ws.size):
            x = ws[i]
            o[i] = o[i] + (l1 * _sgn(x, one, zero) + c2 * x)


@jit
def _grad_task_stream(ws, o, l1, c2, mode):
    _grad_store(ws, o, l1, c2, mode, True)
    _sfence()


@inline
def _task_bounds(task, n, head):
    """Task ``task``'s elements [lo, hi) and whether to stream them. head < 0: tasks of TASK
    elements from 0. head >= 0: task 0 is the ``head`` elements before out is 64-byte aligned,
    then tasks of TASK elements, streamed."""
    if head < 0:
        lo = task * TASK
        return lo, min(lo + TASK, n), False
    if task == 0:
        return 0, head, False
    lo = head + (task - 1) * TASK
    return lo, min(lo + TASK, n), True


@inline
def _task_count(n, head):
    return (n + TASK - 1) // TASK if head < 0 else 1 + (n - head + TASK - 1) // TASK


@split
def _grad_kernel(w, l1, c2, out, mode, accumulate, share, shares):
    """Tasks of TASK elements, ordinary stores."""
    n = w.size
    ntasks = (n + TASK - 1) // TASK
    for task in range(share * ntasks // shares, (share + 1) * ntasks // shares):
        lo = task * TASK
        hi = min(lo + TASK, n)
        _grad_task(w[lo:hi], out[lo:hi], l1, c2, mode, accumulate)


@split
def _grad_stream_kernel(w, l1, c2, out, mode, head, share, shares):
    """Streamed stores (head >= 0: see _task_bounds). A kernel of its own, so that a call that
    does not stream never compiles the streaming task (0.7 s of cold compile)."""
    n = w.size
    ntasks = _task_count(n, head)
    for task in range(share * ntasks // shares, (share + 1) * ntasks // shares):
        lo, hi, stream = _task_bounds(task, n, head)
        if stream:
            _grad_task_stream(w[lo:hi], out[lo:hi], l1, c2, mode)
        else:
            _grad_task(w[lo:hi], out[lo:hi], l1, c2, mode, False)


@inline
def _soft_store(ws, o, t, s, stream):
    zero = ws.dtype.type(0)
    mt = -t
    for i in range(ws.size):
        _put(o, i, _soft(ws[i], t, mt, zero) * s, stream)


@jit
def _soft_task(ws, o, t, s):
    _soft_store(ws, o, t, s, False)


@jit
def _soft_task_inplace(ws, t, s):
    _soft_store(ws, ws, t, s, False)


@jit
def _soft_task_stream(ws, o, t, s):
    _soft_store(ws, o, t, s, True)
    _sfence()


@split
def _soft_kernel(w, t, s, out, inplace, share, shares):
    """Tasks of TASK elements, ordinary stores; inplace: out is w (one array in the loop, see
    the module doc)."""
    n = w.size
    ntasks = (n + TASK - 1) // TASK
    for task in range(share * ntasks // shares, (share + 1) * ntasks // shares):
        lo = task * TASK
        hi = min(lo + TASK, n)
        if inplace:
            _soft_task_inplace(w[lo:hi], t, s)
        else:
            _soft_task(w[lo:hi], out[lo:hi], t, s)


@split
def _soft_stream_kernel(w, t, s, out, head, share, shares):
    """Streamed stores (head >= 0: see _task_bounds); a kernel of its own, as
    _grad_stream_kernel."""
    n = w.size
    ntasks = _task_count(n, head)
    for task in range(share * ntasks // shares, (share + 1) * ntasks // shares):
        lo, hi, stream = _task_bounds(task, n, head)
        if stream:
            _soft_task_stream(w[lo:hi], out[lo:hi], t, s)
        else:
            _soft_task(w[lo:hi], out[lo:hi], t, s)


# --- reductions ---------------------------------------------------------------------------------

@jit
def _block_sums(ws, lanes):
    """(sum |x|, sum x**2) of a slice, in float64 over ``lanes`` partial sums.

    Each pass adds four rows of ``lanes`` elements into the row of accumulators (4x fewer
    accumulator loads and stores than one row). ``lanes`` is an argument, not a constant: a
    constant trip count would be fully unrolled into scalar code (Numba leaves LLVM's SLP
    vectorizer off), a loop gets vectorized. On 2**24 float32, 32 lanes (a pass reads 512
    contiguous bytes) stream at the speed of all_finite; 256 lanes (four rows 1 KiB apart) at
    60% of it.
    """
    acc1 = np.zeros(lanes)
    acc2 = np.zeros(lanes)
    passes = ws.size // (4 * lanes)
    for r in range(passes):
        rows = ws[4 * r * lanes:4 * (r + 1) * lanes]
        r0 = rows[:lanes]
        r1 = rows[lanes:2 * lanes]
        r2 = rows[2 * lanes:3 * lanes]
        r3 = rows[3 * lanes:]
        for k in range(lanes):
            x0 = np.float64(r0[k])
            x1 = np.float64(r1[k])
            x2 = np.float64(r2[k])
            x3 = np.float64(r3[k])
            acc1[k] += (abs(x0) + abs(x1)) + (abs(x2) + abs(x3))
            acc2[k] += (x0 * x0 + x1 * x1) + (x2 * x2 + x3 * x3)
    s1 = 0.0
    s2 = 0.0
    for v in ws[passes * 4 * lanes:]:
        x = np.float64(v)
        s1 += abs(x)
        s2 += x * x
    for k in range(lanes):
        s1 += acc1[k]
        s2 += acc2[k]
    return s1, s2


@split
def _sums_kernel(w, lanes, parts, share, shares):
    """parts[task] = (sum |x|, sum x**2) of each task of TASK elements (penalty_sums adds them
    in task order)."""
    n = w.size
    ntasks = parts.shape[0]
    for task in range(share * ntasks // shares, (share + 1) * ntasks // shares):
        lo = task * TASK
        s1, s2 = _block_sums(w[lo:min(lo + TASK, n)], lanes)
        parts[task, 0] = s1
        parts[task, 1] = s2


@jit
def _finite_task(bits, exponent):
    """The largest exponent field (an integer max reduction: vectorizes without fastmath)."""
    m = bits.dtype.type(0)
    for i in range(bits.size):
        m = max(m, bits[i] & exponent)
    return m


@split
def _finite_kernel(bits, exponent, worst, share, shares):
    """worst[task]: the largest exponent field of each task of TASK elements (all_finite:
    none has all exponent bits set, inf or NaN)."""
    n = bits.size
    ntasks = worst.size
    for task in range(share * ntasks // shares, (share + 1) * ntasks // shares):
        lo = task * TASK
        worst[task] = _finite_task(bits[lo:min(lo + TASK, n)], exponent)


# --- group lasso --------------------------------------------------------------------------------

@jit
def _scale_factor(sumsq, t):
    """max(0, 1 - t / norm) in float64, as the reference: 0 unless norm > t (NaN norm: 0)."""
    norm = np.sqrt(sumsq)
    t64 = np.float64(t)
    return 1.0 - t64 / norm if norm > t64 else 0.0


@jit
def _group_rows_task(row, o, t, lanes):
    """B == 1: one group, the contiguous row."""
    f = row.dtype.type(_scale_factor(_block_sums(row, lanes)[1], t))
    for i in range(row.size):
        o[i] = row[i] * f


@jit
def _group_cols_task(w, t, out, a, b0, b1):
    """B > 1: the groups w[a, :, b] for b0 <= b < b1, a float64 row of sums down the L rows.
    (Rows indexed as w[a, l, b0:b1] keep Numba's contiguous layout; w[a, :, b0:b1] would not.)"""
    nl = w.shape[1]
    acc = np.zeros(b1 - b0)
    for l in range(nl):
        row = w[a, l, b0:b1]
        for k in range(b1 - b0):
            x = np.float64(row[k])
            acc[k] += x * x
    f = np.empty(b1 - b0, w.dtype)   # f in float64, rounded once to w's dtype
    for k in range(b1 - b0):
        f[k] = _scale_factor(acc[k], t)
    for l in range(nl):
        row = w[a, l, b0:b1]
        o = out[a, l, b0:b1]
        for k in range(b1 - b0):
            o[k] = row[k] * f[k]


@split
def _group_rows_kernel(w2, out2, t, lanes, share, shares):
    """B == 1: the groups are the contiguous rows of w2 (A, L), one task each."""
    na = w2.shape[0]
    for a in range(share * na // shares, (share + 1) * na // shares):
        _group_rows_task(w2[a], out2[a], t, lanes)


@split
def _group_cols_kernel(w, t, out, share, shares):
    """B > 1: groups w[a, :, b]; a task takes one a and up to COLS columns."""
    na, nl, nb = w.shape
    nblocks = (nb + COLS - 1) // COLS
    ntasks = na * nblocks
    for task in range(share * ntasks // shares, (share + 1) * ntasks // shares):
        a = task // nblocks
        b0 = (task - a * nblocks) * COLS
        b1 = min(b0 + COLS, nb)
        _group_cols_task(w, t, out, a, b0, b1)


# --- the backend's functions --------------------------------------------------------------------

def _plan(n):
    return _threads.plan(n, "elementwise")


def penalty_sums(w):
    parts = np.empty(((w.size + TASK - 1) // TASK, 2))
    launch(_sums_kernel, _plan(w.size), w, LANES[w.itemsize], parts)
    s1 = s2 = 0.0
    for p1, p2 in parts.tolist():  # in task order, float64 adds: the same bits for any split
        s1 += p1
        s2 += p2
    return s1, s2


def penalty_grad(w, l1, c2, out, accumulate):
    # the reference's choice of formula: c2 == 0 first, then l1 == 0
    mode = L1_ONLY if c2 == 0 else (L2_ONLY if l1 == 0 else ELASTIC)
    head = -1 if accumulate else _stream_head(w, out)
    if head < 0:
        launch(_grad_kernel, _plan(w.size), w, l1, c2, out, mode, bool(accumulate))
    else:
        launch(_grad_stream_kernel, _plan(w.size), w, l1, c2, out, mode, head)


def soft_threshold(w, t, s, out):
    # the same array (flat() of a 1-D array is the array), else the same address: ctypes.data
    # costs ~3 us per array
    inplace = out is w or out.ctypes.data == w.ctypes.data
    head = -1 if inplace else _stream_head(w, out)
    if head < 0:
        launch(_soft_kernel, _plan(w.size), w, t, s, out, inplace)
    else:
        launch(_soft_stream_kernel, _plan(w.size), w, t, s, out, head)


def group_lasso(w, t, out):
    # t: a Python float, so the norms are compared with the float64 threshold
    # two kernels, not one with a branch: a cold call compiles only the one it runs
    na, nl, nb = w.shape
    if nb == 1:   # C-contiguous rows (w[a, :, 0] would be typed as strided)
        out2 = out.view()
        out2.shape = (na, nl)   # a view or an error, never a copy (the result would be lost)
        launch(_group_rows_kernel, _plan(w.size), w.reshape(na, nl), out2, float(t),
               LANES[w.itemsize])
    else:
        launch(_group_cols_kernel, _plan(w.size), w, float(t), out)


def all_finite(a):
    if a.dtype == np.float32:
        bits, exponent = a.view(np.uint32), np.uint32(0x7F800000)
    else:
        bits, exponent = a.view(np.uint64), np.uint64(0x7FF0000000000000)
    # zeros, not empty: a kernel skipped by test_warmup's stand-in (it fills float arrays only)
    # leaves all finite
    worst = np.zeros((a.size + TASK - 1) // TASK, bits.dtype)
    launch(_finite_kernel, _plan(a.size), bits, exponent, worst)
    return int(exponent) not in worst.tolist()  # (a list: ~2 us less than NumPy's ``in``)
