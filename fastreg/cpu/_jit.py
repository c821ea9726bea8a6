"""The one place that fixes how CPU kernels are compiled: lazily (nothing at import), cached on
disk (``cache=True``), no fastmath (exact tests compare bit for bit), NumPy's error model."""
import numba

jit = numba.njit(cache=True, error_model="numpy")
pjit = numba.njit(cache=True, error_model="numpy", parallel=True)
inline = numba.njit(cache=True, error_model="numpy", inline="always")
