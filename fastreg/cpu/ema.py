"""The weight-EMA update on the CPU with Numba (definition in fastreg/reference/ema.py).

One pass per array: a parallel driver over tasks of TASK elements and a task function over
slice views (as in fastreg/cpu/penalty.py), in place on ``ema``. The fused multiply-add is
LLVM's ``llvm.fma`` intrinsic (``_fma``): correctly rounded on every CPU (one vfmadd
instruction where the CPU has FMA, which Numba targets; a libm call otherwise), so the result
is the reference's, bit for bit. Which form (``ema`` or ``p`` as the base) is decided once per
call, outside the loops.
"""
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .. import _threads
from ._jit import jit, launch, twin
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


@twin
def _ema_kernel(e, p, coef, small):
    n = e.size
    for task in prange((n + TASK - 1) // TASK):
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
