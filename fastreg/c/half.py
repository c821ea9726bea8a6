"""16-bit conversions of backend "c" (csrc/half.h, fr_widen_half / fr_narrow_half in
csrc/dropout.c); same names and results as fastreg.reference.half. float16 goes through the F16C
instructions where the AVX2 kernels run (``fastreg.c.isa()``) and the CPU has F16C, with
NumPy's signalling-NaN bits restored: the same bits as the portable integer code."""
from . import _check, _plan, lib
from .philox import _call_out, _in, _out


def half_to_float32(src, kind, out):
    """out (float32, 1-D) = the 16-bit values with bits src (uint16, 1-D) of kind ``kind``."""
    n = src.size
    if n == 0:
        return
    s = _in("uint16_t", src)
    _plan(n, "elementwise")
    _call_out(out, lambda o: _check(lib.fr_widen_half(s, kind, _out("float", o), n),
                                    "fr_widen_half"))


def float32_to_half(src, kind, out):
    """out (uint16 bits, 1-D) = float32 src (1-D) rounded to nearest even to kind ``kind``."""
    n = src.size
    if n == 0:
        return
    s = _in("float", src)
    _plan(n, "elementwise")
    _call_out(out, lambda o: _check(lib.fr_narrow_half(s, kind, _out("uint16_t", o), n),
                                    "fr_narrow_half"))
