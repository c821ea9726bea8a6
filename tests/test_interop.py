"""Interop: fastreg's Philox from users' own @njit and @cuda.jit kernels (the same masks as
fastreg's ops), foreign CUDA arrays (CuPy, torch) coming back as their own type, for real when
CuPy / a GPU is present and through a stand-in CuPy under the CUDA simulator otherwise."""
import sys
import types

import numpy as np
import pytest

import fastreg
from fastreg import _dispatch
from conftest import CUDA_SIM

SEED = 2**64 - 12345          # both key words non-zero
OFFSET = 2**33 + 3            # not a multiple of 4, above 2**32


try:  # the kernel is defined at module level: the simulator swaps the module's ``cuda`` global
    from numba import cuda
    from fastreg.cuda import philox as cuda_philox

    @cuda.jit
    def _user_mask_kernel(out, seed_lo, seed_hi, offset, threshold):
        i = cuda.grid(1)
        if i < out.size:
            w = cuda_philox.stream_word_device(seed_lo, seed_hi, offset + np.uint64(i))
            out[i] = 1 if w >= threshold else 0
except ImportError:  # numba-cuda not installed: the cuda tests skip
    cuda = None


def _cuda_or_skip():
    reason = fastreg.available_backends()["cuda"]
    if reason is not None:
        pytest.skip(f"backend 'cuda' unavailable: {reason}")


# --- @njit -------------------------------------------------------------------------------------

def test_njit_stream_word_is_the_stream():
    from numba import njit
    from fastreg.cpu import philox

    @njit
    def words(seed_lo, seed_hi, offset, out):
        for i in range(out.size):
            out[i] = philox.stream_word(seed_lo, seed_hi, offset + np.uint64(i))

    got = np.empty(37, np.uint32)
    words(*philox.split_seed(SEED), np.uint64(OFFSET), got)
    expected = fastreg.random.random_bits(37, seed=SEED, offset=OFFSET, backend="numpy")
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_njit_user_dropout_draws_fastregs_mask(p):
    from numba import njit
    from fastreg.cpu import philox

    @njit
    def fused_dropout_add(x, bias, out, seed_lo, seed_hi, offset, threshold, scale):
        # a user's fused kernel: dropout(x) + bias in one pass, fastreg's decision rule
        for i in range(x.size):
            w = philox.stream_word(seed_lo, seed_hi, offset + np.uint64(i))
            out[i] = (x[i] * scale if w >= threshold else x.dtype.type(0)) + bias[i]

    x = np.random.default_rng(0).random(101).astype(np.float32)
    bias = np.linspace(-1, 1, 101).astype(np.float32)
    out = np.empty_like(x)
    thr = philox.dropout_threshold(p)
    fused_dropout_add(x, bias, out, *philox.split_seed(SEED), np.uint64(OFFSET),
                      np.uint64(thr), np.float32(1 / (1 - p)) if p < 1 else np.float32(1))
    expected = fastreg.dropout(x, p, seed=SEED, offset=OFFSET, backend="numpy") + bias
    np.testing.assert_array_equal(out, expected)
    mask = fastreg.dropout_mask(101, p, seed=SEED, offset=OFFSET, packed=False)
    np.testing.assert_array_equal(out != bias, mask & (x != 0))


# --- @cuda.jit (simulator or GPU) -------------------------------------------------------------------

def test_cuda_user_kernel_draws_fastregs_mask():
    _cuda_or_skip()
    n = 70
    d = cuda.device_array(n, np.uint8)
    _user_mask_kernel[3, 32](d, *cuda_philox.split_seed(SEED), np.uint64(OFFSET),
                             np.uint64(cuda_philox.dropout_threshold(0.4)))
    expected = fastreg.dropout_mask(n, 0.4, seed=SEED, offset=OFFSET, packed=False,
                                    backend="numpy")
    np.testing.assert_array_equal(d.copy_to_host().astype(bool), expected)


# --- foreign device arrays come back as their own type ----------------------------------------------

class _FakeCupy(types.ModuleType):
    """A stand-in ``cupy`` module recording what ``like_caller`` hands it."""

    class ndarray:
        def __init__(self, wrapped):
            self.wrapped = wrapped

    def asarray(self, a):
        return self.ndarray(a)


@pytest.fixture
def fake_cupy(monkeypatch):
    mod = _FakeCupy("cupy")
    monkeypatch.setitem(sys.modules, "cupy", mod)
    return mod


def test_like_caller_picks_the_callers_type(fake_cupy):
    result = object()
    cupy_like = type("ndarray", (), {"__module__": "cupy._core.core"})()
    wrapped = _dispatch.like_caller(result, cupy_like)
    assert isinstance(wrapped, fake_cupy.ndarray) and wrapped.wrapped is result
    numba_like = type("DeviceNDArray", (), {"__module__": "numba.cuda.cudadrv.devicearray"})()
    assert _dispatch.like_caller(result, numba_like) is result


def test_cuda_foreign_array_comes_back_as_its_type(fake_cupy):
    """Under the simulator: a device array whose type lives in 'cupy' gets its result through
    cupy.asarray (zero-copy there); Numba arrays come back as Numba arrays."""
    _cuda_or_skip()
    if not CUDA_SIM:
        pytest.skip("the stand-in CuPy array is a simulator array; see test_cupy_* on a GPU")
    x = np.arange(1, 41, dtype=np.float32)
    d = cuda.to_device(x)
    plain = fastreg.dropout(d, 0.5, seed=SEED)
    assert type(plain) is not fake_cupy.ndarray and hasattr(plain, "copy_to_host")
    d.__class__ = type("ndarray", (type(d),), {"__module__": "cupy._core.core"})
    got = fastreg.dropout(d, 0.5, seed=SEED)
    assert isinstance(got, fake_cupy.ndarray)
    np.testing.assert_array_equal(got.wrapped.copy_to_host(),
                                  fastreg.dropout(x, 0.5, seed=SEED, backend="numpy"))


def test_cupy_array_round_trip():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    _cuda_or_skip()
    if CUDA_SIM:
        pytest.skip("CuPy cannot run under the CUDA simulator")
    x = cupy.arange(1, 1001, dtype=cupy.float32)
    y = fastreg.dropout(x, 0.5, seed=SEED, offset=OFFSET)
    assert isinstance(y, cupy.ndarray) and y.device == x.device
    np.testing.assert_array_equal(
        cupy.asnumpy(y), fastreg.dropout(cupy.asnumpy(x), 0.5, seed=SEED, offset=OFFSET))
    out = cupy.empty_like(x)
    assert fastreg.dropout(x, 0.5, seed=SEED, offset=OFFSET, out=out) is out


def test_cuda_torch_tensors():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or CUDA_SIM:
        pytest.skip("needs a real GPU and a CUDA build of torch")
    import fastreg.torch as frt
    x = torch.randn(8, 16, 4, 4, device="cuda")
    y = fastreg.dropout(x, 0.5, seed=SEED)
    assert isinstance(y, torch.Tensor) and y.device == x.device
    np.testing.assert_array_equal(y.cpu().numpy(),
                                  fastreg.dropout(x.cpu().numpy(), 0.5, seed=SEED))
    bn = frt.BatchNorm2d(16).cuda()
    ref = torch.nn.BatchNorm2d(16).cuda()
    xg = x.clone().requires_grad_()
    xr = x.clone().requires_grad_()
    torch.testing.assert_close(bn(xg), ref(xr), rtol=1e-4, atol=1e-4)
    m = frt.Dropout(0.5, seed=SEED).cuda()
    np.testing.assert_array_equal(m(x).cpu().numpy(), y.cpu().numpy())
    p = torch.zeros(10, 10, device="cuda", requires_grad=True)
    opt = frt.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones_like(p)
    opt.step()
    assert torch.all(p < 0)
    with pytest.raises(ValueError, match="is on cpu"):
        frt.BatchNorm2d(16)(x)
