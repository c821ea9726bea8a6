"""Python floats as NumPy scalars of an array's dtype, the scalar arguments of the kernels.

``np.float32(x)`` costs about 2 us with NumPy 2.4 on the 2-core test VM, and a call passes
several (an l2_grad two, an Adam step nine per parameter): a tenth of a small call's time.
The values repeat from call to call (a penalty strength, a learning rate, betas), so the
scalars of recent values are kept, per dtype; a lookup costs about 0.1 us.
"""
import math

_LIMIT = 256        # values kept per dtype; the cache starts afresh when full
_cache = {}         # dtype -> {key: scalar}
_ZERO_KEYS = ("+0", "-0")   # the keys of +0.0 and -0.0 (floats key the other values)
_copysign = math.copysign


def typed(dtype, x):
    """``dtype.type(x)``: the same type and value (bit for bit: -0.0 stays -0.0). A scalar that
    already has the type is returned as it is (``dtype.type(x)`` of a NumPy scalar: ~3 us)."""
    if type(x) is not float:
        return x if type(x) is dtype.type else dtype.type(x)
    per = _cache.get(dtype)
    if per is None:
        per = _cache[dtype] = {}
    key = x if x else _ZERO_KEYS[_copysign(1.0, x) < 0.0]   # 0.0 == -0.0 as a dict key
    s = per.get(key)
    if s is None:
        if len(per) >= _LIMIT:
            per.clear()
        s = per[key] = dtype.type(x)
    return s
