"""Tensors as fastreg arrays, without copies, and the checks that keep it that way.

CPU tensors are viewed through NumPy (``t.detach().numpy()`` shares the tensor's memory); CUDA
tensors are handed over as they are (they expose ``__cuda_array_interface__``, which fastreg's
CUDA backend views zero-copy). Results are written into tensors allocated here through ``out=``,
so nothing is copied back. Nothing is ever moved between devices: a tensor on another device
than the one it must match is an error naming it.
"""
import numpy as np
import torch

from .. import _dispatch, _registry
from .._registry import BackendUnavailableError

FLOAT_DTYPES = (torch.float32, torch.float64)
HALF_DTYPES = (torch.float16, torch.bfloat16)

# Channel-axis permutations of channels-last layouts: a channels-last tensor permuted so that the
# channel axis is last is C-contiguous, i.e. the kernels see it as (N, H, W, C) with axis=-1.
_TO_LAST = {4: (0, 2, 3, 1), 5: (0, 2, 3, 4, 1)}
_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}


def check_float(t, name, half=False):
    """TypeError unless ``t`` is a dense float32/float64 tensor, or with ``half=True`` (ops with
    16-bit kernels: the dropout family, penalties, optimizers) also float16/bfloat16."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    if t.dtype not in FLOAT_DTYPES:
        if half and t.dtype in HALF_DTYPES:
            _check_half(t, name)
        else:
            hint = (" (half precision is not supported by this layer's fastreg kernels: cast "
                    "with .float(), or keep the torch module for this layer)"
                    if t.dtype in HALF_DTYPES else "")
            allowed = "float32, float64, float16 or bfloat16" if half else "float32 or float64"
            raise TypeError(f"{name} must be {allowed}, got {t.dtype}{hint}")
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} is on {t.device}: fastreg runs on CPU and CUDA tensors only")
    return t


def _check_half(t, name):
    """What a 16-bit tensor needs to be viewed zero-copy (see ``array``)."""
    if t.dtype == torch.bfloat16:
        if t.device.type == "cuda":
            raise TypeError(f"{name}: bfloat16 CUDA tensors are not supported (the CUDA array "
                            "interface has no bfloat16 type); float16 CUDA tensors are")
        from .._arrays import BFLOAT16
        if BFLOAT16 is None:
            raise TypeError(f"{name} is bfloat16: fastreg views it as an ml_dtypes array; "
                            'install it (pip install "fastreg-kernels[bf16]")')


def check_same_device(t, name, like, like_name):
    """ValueError when ``t`` is not on ``like``'s device (never a silent copy)."""
    if t is not None and t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but {like_name} is on {like.device}: move "
                         f"the module or the tensor with .to({like.device!s})")


def check_same_dtype(t, name, like, like_name):
    if t is not None and t.dtype != like.dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but {like_name} has {like.dtype}: they "
                        "must match (fastreg never casts behind your back)")


def array(t):
    """The fastreg view of a tensor: a NumPy view (CPU) or the detached tensor (CUDA).

    Zero-copy also for 16-bit tensors: float16 is NumPy's float16; a bfloat16 CPU tensor is
    viewed through its bits as an ``ml_dtypes.bfloat16`` array (``check_float(half=True)``
    says when that is impossible)."""
    if t is None:
        return None
    t = t.detach()
    if t.device.type != "cpu":
        return t
    if t.dtype == torch.bfloat16:
        from .._arrays import BFLOAT16
        return t.view(torch.int16).numpy().view(BFLOAT16)
    return t.numpy()


def device_array(t):
    """For CUDA: the tensor itself, made C-contiguous on its own device when it is not (fastreg's
    CUDA kernels take contiguous arrays). For CPU: the NumPy view (fastreg copies strided host
    input itself)."""
    if t.device.type == "cuda" and not t.is_contiguous():
        t = t.contiguous()
    return array(t)


def to_tensor(a, like):
    """A tensor for an array fastreg returned (NumPy: shares memory; a CUDA array: through
    ``__cuda_array_interface__``, on ``like``'s device)."""
    if isinstance(a, torch.Tensor):
        return a
    if like.device.type == "cpu":
        if a.dtype.kind == "V" and a.dtype.itemsize == 2:  # ml_dtypes bfloat16 (see array)
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)
    return torch.as_tensor(a, device=like.device)


def channels_last_perm(t):
    """The permutation that shows a channels-last tensor as C-contiguous (channel axis last), or
    None when the tensor is C-contiguous already or is not channels-last."""
    if t.is_contiguous():
        return None
    perm = _TO_LAST.get(t.dim())
    if perm is not None and t.is_contiguous(memory_format=_FORMATS[t.dim()]):
        return perm
    return None


def number(v, name):
    """A one-element tensor's value (torch takes ``lr=torch.tensor(0.1)`` or
    ``max_norm=torch.tensor(1.0)``, as its ``float(v)`` does), else ``v`` itself, for fastreg's
    checks of the number."""
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"{name} must be a number or a one-element tensor, got a tensor of "
                             f"shape {tuple(v.shape)}")
        return v.item()
    return v


def host_float(t):
    """Whether ``t`` is a C-contiguous float32/float64 CPU tensor: the common case, which the
    eager paths view through NumPy with no further conversion (``host_array``)."""
    return t.is_cpu and t.dtype in FLOAT_DTYPES and t.is_contiguous()


_VIEW_DTYPES = FLOAT_DTYPES + (torch.int64,)


def host_array(t):
    """``array(t)``, or None for None, with the common case first: a float32/float64/int64 CPU
    tensor's NumPy view (detached only when it requires grad: 1 us less than ``array``)."""
    if t is None:
        return None
    if t.is_cpu and t.dtype in _VIEW_DTYPES:
        return t.detach().numpy() if t.requires_grad else t.numpy()
    return array(t)


def empty_like(t, perm):
    """A new tensor shaped like t, channels-last when ``perm`` says so, else C-contiguous."""
    if perm is not None:
        return torch.empty_like(t, memory_format=_FORMATS[t.dim()])
    if t.is_contiguous():  # torch.empty_like keeps a dense tensor's strides: C-contiguous
        return torch.empty_like(t)
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


def permuted(t, perm):
    return t if perm is None else t.permute(*perm)


_host_backend_cache = {}


def backend_for(op, backend, t):
    """The backend that runs ``op`` on tensor ``t``'s device.

    ``"auto"``: "cuda" for CUDA tensors; for CPU tensors the first host backend (FASTREG_BACKEND,
    then c, cpu, numpy) that implements ``op``, so a kernel still missing from the fastest
    backend falls back to the next one instead of failing. A backend named explicitly is used as
    it is (and raises BackendUnavailableError if it cannot run ``op``).
    """
    if t.is_cuda:
        if backend not in ("auto", "cuda"):
            raise ValueError(f"backend {backend!r} runs on host memory but the tensor is on "
                             f"{t.device}; use backend='auto' or 'cuda'")
        return "cuda"
    if backend != "auto":
        # resolve_host: _registry.resolve's answer, remembered while the backend is loaded
        name = (_dispatch.resolve_host(backend) if type(backend) is str
                else _registry.resolve(backend))
        _registry.get(op, name)
        return backend
    first = _dispatch.resolve_host("auto")  # follows FASTREG_BACKEND at each call
    key = (op, first)
    if key not in _host_backend_cache:
        for name in (first, *_registry._HOST_ORDER):
            try:
                _registry.get(op, _registry.resolve(name))
            except (BackendUnavailableError, ValueError):
                continue
            _host_backend_cache[key] = name
            break
        else:  # pragma: no cover - the numpy reference implements every op
            raise BackendUnavailableError(f"no host backend implements {op!r}")
    return _host_backend_cache[key]
