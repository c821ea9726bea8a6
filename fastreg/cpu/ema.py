"""The weight-EMA update on the CPU with Numba (definition in fastreg/reference/ema.py).

One pass per array: a split kernel over tasks of TASK elements (share ``share`` of ``shares`` of
them, see fastreg/cpu/_jit.py) and a task function over slice views (as in
fastreg/cpu/penalty.py), in place on ``ema``. The fused multiply-add is LLVM's ``llvm.fma``
intrinsic (``_fma``): correctly rounded on every CPU (one vfmadd instruction where the CPU has
FMA, which Numba targets; a libm call otherwise), so the result is the reference's, bit for
bit. Which form (``ema`` or ``p`` as the base) is decided once per call, outside the loops.

``address_lists`` and the ``*_at`` functions (here and in clip.py) run the same task functions
over the tiles of a whole list at once (one launch, small arrays sharing the threads, as the C
backend does): fastreg/_multi.py's plans give the arrays' data addresses, which the kernels turn
back into arrays with ``_as_pointer`` and ``numba.carray``. The tiles are the per-array tasks of
TASK elements, so the results are the per-array kernels' bits (reductions included: their
partials are merged array by array, in order).
"""
import numpy as np
from llvmlite import ir
from numba import carray, types
from numba.core import cgutils
from numba.extending import intrinsic

from .. import _threads
from ._jit import jit, launch, split
from .penalty import TASK


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once (``llvm.fma``); three operands of one float type."""
    if not (isinstance(a, types.Float) and a == b == c):
        return None
    sig = a(a, b, c)

    def codegen(context, builder, signature, args):
        ty = context.get_value_type(signature.return_type)
        name = "llvm.fma.f32" if signature.return_type == types.float32 else "llvm.fma.f64"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty] * 3), name)
        return builder.call(fn, args)

    return sig, codegen


@jit
def _ema_task(es, ps, coef, small):
    """One task's slices: es = fma(coef, ps - es, es or ps)."""
    if small:
        for i in range(es.size):
            e = es[i]
            es[i] = _fma(coef, ps[i] - e, e)
    else:
        for i in range(es.size):
            q = ps[i]
            es[i] = _fma(coef, q - es[i], q)


@split
def _ema_kernel(e, p, coef, small, share, shares):
    n = e.size
    ntasks = (n + TASK - 1) // TASK
    for task in range(share * ntasks // shares, (share + 1) * ntasks // shares):
        lo = task * TASK
        hi = min(lo + TASK, n)
        _ema_task(e[lo:hi], p[lo:hi], coef, small)


def ema_update(emas, ps, w):
    if not emas:
        return
    t = emas[0].dtype.type
    w = t(w)
    small = bool(abs(w) < t(0.5))
    coef = w if small else w - t(1)
    for e, p in zip(emas, ps):
        if e.size:
            launch(_ema_kernel, _threads.plan(e.size, "elementwise"), e, p, coef, small)


@intrinsic
def _as_pointer(typingctx, addr, like):
    """The integer ``addr`` as a pointer to elements of ``like``'s dtype (``like``: any array
    of that dtype; only its type is used)."""
    if not (isinstance(addr, types.Integer) and isinstance(like, types.Array)):
        return None
    ptr = types.CPointer(like.dtype)
    sig = ptr(addr, like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(ptr))

    return sig, codegen


class AddressLists:
    """Lists of contiguous 1-D arrays of one dtype given by data address, cut into the
    per-array tasks of TASK elements: ``addrs[c][t]`` the first byte of tile t of column c
    (e.g. ema and p), ``lengths[t]`` its elements, ``first[k]`` array k's first tile (and
    ``first[count]`` the number of tiles). Holds no reference to the arrays: whoever passes it
    to a kernel makes sure that they are alive and unchanged (fastreg/_multi.py's plans)."""
    __slots__ = ("dtype", "addrs", "lengths", "first", "like", "total")

    def __init__(self, dtype, columns, sizes):
        n = np.asarray(sizes, np.int64)
        tiles = (n + TASK - 1) // TASK
        self.first = np.concatenate(([0], np.cumsum(tiles))).astype(np.int64)
        k = np.repeat(np.arange(n.size), tiles)                 # each tile's array
        lo = (np.arange(k.size) - self.first[k]) * TASK          # its first element there
        self.lengths = np.minimum(TASK, n[k] - lo).astype(np.int64)
        offset = (lo * dtype.itemsize).astype(np.uint64)         # addresses: unsigned
        self.addrs = [np.asarray(col, np.uint64)[k] + offset for col in columns]
        self.dtype = dtype
        self.like = np.empty(0, dtype)
        self.total = int(n.sum())


def address_lists(dtype, columns, sizes):
    """AddressLists of ``columns`` (lists of addresses: one per array list, every address of a
    live array, the same ``sizes`` > 0 for each column)."""
    return AddressLists(dtype, columns, sizes)


@split
def _ema_tiles_kernel(ea, pa, lengths, like, coef, small, share, shares):
    ntiles = lengths.size
    for t in range(share * ntiles // shares, (share + 1) * ntiles // shares):
        n = lengths[t]
        _ema_task(carray(_as_pointer(ea[t], like), n), carray(_as_pointer(pa[t], like), n),
                  coef, small)


def ema_update_at(lists, w):
    """ema_update on AddressLists of (ema, p): one launch for the list."""
    t = lists.dtype.type
    w = t(w)
    small = bool(abs(w) < t(0.5))
    coef = w if small else w - t(1)
    launch(_ema_tiles_kernel, _threads.plan(lists.total, "elementwise"), lists.addrs[0],
           lists.addrs[1], lists.lengths, lists.like, coef, small)
