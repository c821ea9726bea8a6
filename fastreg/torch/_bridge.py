"""Tensors as fastreg arrays, without copies, and the checks that keep it that way.

CPU tensors are viewed through NumPy (``t.detach().numpy()`` shares the tensor's memory); CUDA
tensors are handed over as they are (they expose ``__cuda_array_interface__``, which fastreg's
CUDA backend views zero-copy). Results are written into tensors allocated here through ``out=``,
so nothing is copied back. Nothing is ever moved between devices: a tensor on another device
than the one it must match is an error naming it.
"""
import torch

from .. import _registry
from .._registry import BackendUnavailableError

FLOAT_DTYPES = (torch.float32, torch.float64)

# Channel-axis permutations of channels-last layouts: a channels-last tensor permuted so that the
# channel axis is last is C-contiguous, i.e. the kernels see it as (N, H, W, C) with axis=-1.
_TO_LAST = {4: (0, 2, 3, 1), 5: (0, 2, 3, 4, 1)}
_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}


def check_float(t, name):
    """TypeError unless ``t`` is a dense float32/float64 tensor (half precision included)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    if t.dtype not in FLOAT_DTYPES:
        hint = (" (half precision is not supported by fastreg's kernels: cast with .float(), "
                "or keep the torch module for this layer)"
                if t.dtype in (torch.float16, torch.bfloat16) else "")
        raise TypeError(f"{name} must be float32 or float64, got {t.dtype}{hint}")
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} is on {t.device}: fastreg runs on CPU and CUDA tensors only")
    return t


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
    """The fastreg view of a tensor: a NumPy view (CPU) or the detached tensor (CUDA)."""
    if t is None:
        return None
    t = t.detach()
    return t.numpy() if t.device.type == "cpu" else t


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


def empty_like(t, perm):
    """A new tensor shaped like t, channels-last when ``perm`` says so, else C-contiguous."""
    if perm is not None:
        return torch.empty_like(t, memory_format=_FORMATS[t.dim()])
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
    if t.device.type == "cuda":
        if backend not in ("auto", "cuda"):
            raise ValueError(f"backend {backend!r} runs on host memory but the tensor is on "
                             f"{t.device}; use backend='auto' or 'cuda'")
        return "cuda"
    if backend != "auto":
        _registry.get(op, _registry.resolve(backend))
        return backend
    first = _registry.resolve("auto")
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
