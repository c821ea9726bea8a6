"""Run one backend op on validated arrays: the glue between a public wrapper and a kernel.

``Job`` makes inputs kernel-ready (host: contiguous, copying non-contiguous input; device: a
zero-copy view, non-contiguous device arrays refused), picks where the kernel writes, and hands
the result back where the caller's data lives: NumPy for host input, a device array for device
input, or ``out`` itself when one was given. A result for a foreign CUDA array (CuPy, torch)
comes back as that type (``like_caller``), zero-copy, on the same device.

Per-call cost matters for small arrays (a 64x128 dropout kernel takes a few microseconds), so
the host path is kept short: ``resolve`` remembers what ``_registry.resolve`` answered for plain
NumPy arrays (``resolve_host`` when the caller has already tested its arrays' types), ``job``
hands out one stateless ``Job`` per host backend, and ``Job.op`` (or ``host_op``, without the
Job) is an attribute lookup on the backend module. Beside a 1e5-element kernel each Python
step around it costs two to four times its isolated timeit figure (the kernel's 800 KB push the
interpreter's own data out of the caches): measure per-call changes with bench/small_ab.py.
"""
import functools
import inspect
import os
import sys

import numpy as np

from . import _arrays, _registry

_resolved = {}  # name, "auto" or ("auto", FASTREG_BACKEND) -> _registry.resolve, host arrays
_host_jobs = {}  # backend name -> its Job (a host Job holds no per-call state)
_ndarray = np.ndarray   # a module global: one lookup where np.ndarray takes two


def resolve(backend, *arrays):
    """``_registry.resolve(backend, *arrays)``, remembered for host calls.

    When every array is a plain ``np.ndarray`` (or None) the answer depends only on ``backend``
    and FASTREG_BACKEND (read at each call, so changing it takes effect), and stays valid while
    the backend is loaded (``_registry._loaded``); anything else asks ``_registry.resolve``,
    which also raises the errors.
    """
    if type(backend) is str:
        for a in arrays:
            if type(a) is not _ndarray and a is not None:
                break
        else:
            return resolve_host(backend)
    return _registry.resolve(backend, *arrays)


def resolve_host(backend):
    """``resolve`` for a call whose arrays are all plain ndarrays (or None) and ``backend`` a
    str: for wrappers that have just tested their arrays' types.

    The answer is kept per backend name, and for "auto" per FASTREG_BACKEND value (None: unset);
    other spellings ("AUTO", "C") and unknown names go to ``_registry.resolve`` every time.
    """
    if backend == "auto":
        env = _env_backend()
        key = backend if env is None else (backend, env)
    elif backend in _registry._MODULES:
        key = backend
    else:
        return _registry.resolve(backend)
    name = _resolved.get(key)
    if name is None or name not in _registry._loaded:
        name = _resolved[key] = _registry.resolve(backend)
    return name


# os.environ's key for FASTREG_BACKEND in its underlying dict (CPython: bytes on POSIX)
_ENV_KEY = (os.environ.encodekey("FASTREG_BACKEND") if hasattr(os.environ, "encodekey")
            else None)


def _env_backend():
    """FASTREG_BACKEND, or None when unset. When it is unset, ``os.environ.get`` (and ``in``)
    raise and catch a KeyError inside, 3-4 us of every backend="auto" call on the test VM; so
    the unset case is answered from os.environ's own dict first (0.1 us), which it keeps up to
    date (putenv, monkeypatch.setenv and del all go through it)."""
    data = getattr(os.environ, "_data", None)
    if _ENV_KEY is not None and type(data) is dict and _ENV_KEY not in data:
        return None
    return os.environ.get("FASTREG_BACKEND")


def job(backend, host_input):
    """A Job for ``backend`` (a resolved name): shared for host backends, new for "cuda" (which
    remembers the caller's device array type)."""
    if backend == "cuda":
        return Job(backend, host_input)
    j = _host_jobs.get(backend)
    if j is None:
        j = _host_jobs[backend] = Job(backend, True)
    return j


def host_op(backend, name):
    """``job(backend, True).op(name)`` in one call: host backend ``backend``'s (a resolved
    name's) function for op ``name``."""
    fn = getattr(_registry._loaded.get(backend), name, None)
    return fn if fn is not None else _registry.get(name, backend)


class Job:
    __slots__ = ("backend", "device", "host_input", "mod", "like")

    def __init__(self, backend, host_input):
        self.backend = backend
        self.device = backend == "cuda"
        self.host_input = host_input      # False only when the caller's arrays live on the device
        self.mod = _registry.module(backend)
        self.like = None                  # the caller's first device input (see like_caller)

    def op(self, name):
        """The backend's function for op ``name``."""
        fn = getattr(self.mod, name, None)
        return fn if fn is not None else _registry.get(name, self.backend)

    def contig(self, a):
        """A C-contiguous array the backend's kernels accept."""
        if not self.device:
            return np.ascontiguousarray(a)
        if _arrays.is_device(a):
            self.like = a if self.like is None else self.like
            if not _arrays.DeviceArrayInfo(a).c_contiguous:
                raise ValueError("non-contiguous CUDA arrays are not supported; pass a "
                                 "C-contiguous array")
            return self.mod.as_device(a)
        return self.mod.to_device(np.ascontiguousarray(a))

    def empty(self, shape, dtype):
        return self.mod.empty(shape, dtype) if self.device else np.empty(shape, dtype)

    def zeros(self, shape, dtype):
        z = np.zeros(shape, dtype)
        return self.mod.to_device(z) if self.device else z

    def target(self, out, shape, dtype):
        """Where the kernel writes: ``out`` itself when the kernel can write it directly, else a
        fresh array."""
        if out is not None:
            if self.device and not self.host_input:
                return self.mod.as_device(out)
            if not self.device and out.flags.c_contiguous:
                return out
        return self.empty(shape, dtype)

    def finish(self, result, out):
        """The value to return: ``out`` (filled) when given, else the result."""
        if self.device and self.host_input:
            result = self.mod.copy_to_host(result)
        if out is None:
            return like_caller(result, self.like) if self.like is not None else result
        if result is not out and not (self.device and not self.host_input):
            out[...] = result
        return out


def like_caller(result, like):
    """A new device result as the caller's array type: ``cupy.ndarray`` for CuPy input,
    ``torch.Tensor`` (on the input's device) for torch input, the Numba device array otherwise.

    Zero-copy: both wrap the result's memory through ``__cuda_array_interface__`` and keep it
    alive. cupy / torch are imported only when the input already is one of theirs (its type's
    module says so), so fastreg never imports them otherwise. Stream semantics: fastreg's kernels
    run on the default stream; Numba synchronizes the stream an input array declares (CUDA array
    interface v3) before using it, and the result is ready in default-stream order.
    """
    package = type(like).__module__.partition(".")[0]
    if package == "cupy":
        import cupy
        return cupy.asarray(result)
    if package == "torch":
        import torch
        return torch.as_tensor(result, device=like.device)
    return result


def flat(a):
    """A 1-D view of a C-contiguous host or device array."""
    if a.ndim == 1:
        return a
    if type(a) is np.ndarray:
        return a.ravel()  # a view for a C-contiguous array, and cheaper than reshape(-1)
    return a.reshape(-1)


NOT_TORCH = object()   # torch_call's answer when no argument is a torch CPU tensor


def torch_call(fn, args):
    """Run public op ``fn`` on torch CPU tensors, answering in kind; ``NOT_TORCH`` when no
    argument (``args``: the op's parameters by name, its ``locals()`` on entry) is one.

    A public op written for NumPy arrays starts with::

        if type(x) is not np.ndarray:
            if (r := _dispatch.torch_call(op, locals())) is not _dispatch.NOT_TORCH:
                return r

    which costs a NumPy caller one type test. The tensors among the arguments (also inside
    lists and tuples, as the list ops and ``BatchNormSaved`` hold them) are passed as zero-copy
    NumPy views (bfloat16 through ml_dtypes), and every array ``fn`` returns comes back as a
    torch tensor sharing its memory; an ``out=`` tensor (or a tensor updated in place) is
    returned as the caller's own object. CUDA tensors keep their own path (which already answers
    with torch tensors). A tensor that requires grad is refused: these functions record no
    autograd (``fastreg.torch`` has the differentiable layers).
    """
    torch = sys.modules.get("torch")
    if torch is None or not _any_cpu_tensor(torch, args.values()):
        return NOT_TORCH
    views = {}   # id(view) -> (view, the caller's tensor)
    targets = _WRITES.get(fn.__name__, ()) + ("out",)
    kwargs = {k: _to_host(torch, v, views, fn.__name__, k, targets) for k, v in args.items()}
    result = _to_torch(torch, fn(**kwargs), views)
    written = [args.get(k) for k in _WRITES.get(fn.__name__, ())]
    if fn.__name__ == "batch_norm" and not args.get("training"):
        written = []            # inference reads the running statistics only
    written.append(args.get("out"))
    bump_versions(torch, written)
    return result


def answers_torch(fn):
    """Decorator for an op that takes ``images`` (a function, or a ``__call__`` taking ``self``
    first): torch CPU tensors among its arguments go through ``torch_call`` (zero-copy views in,
    torch tensors out), as the ops that test their first argument themselves. A NumPy caller
    pays one type test and one call."""
    sig = inspect.signature(fn)
    pos = list(sig.parameters).index("images")

    @functools.wraps(fn)
    def op(*args, **kwargs):
        x = args[pos] if len(args) > pos else kwargs.get("images")
        if type(x) is not np.ndarray and "torch" in sys.modules:
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError:
                bound = None    # the call itself raises the usual error
            if bound is not None:
                bound.apply_defaults()
                if (r := torch_call(fn, bound.arguments)) is not NOT_TORCH:
                    return r
        return fn(*args, **kwargs)
    return op


# The arguments each public op writes in place, besides ``out=``: their tensors' version counters
# are bumped after the call (``bump_versions``).
_WRITES = {"prox_l1": ("w",), "prox_elastic_net": ("w",), "prox_group_lasso": ("w",),
           "clip_grad_norm": ("grads",), "clip_grads_with_norm": ("grads",),
           "adaptive_clip_grad": ("grads",), "ema_update": ("ema",),
           "batch_norm": ("running_mean", "running_var", "num_batches_tracked")}


def bump_versions(torch, items):
    """Count a write through a NumPy (or CUDA array interface) view as torch counts its own
    in-place ops: bump the version counter of every tensor in ``items`` (tensors, or lists and
    tuples of them; anything else is skipped). A backward through a graph that saved such a
    tensor before the write then raises ("modified by an inplace operation") instead of using
    the new values."""
    for a in items:
        if isinstance(a, (list, tuple)):
            bump_versions(torch, a)
        elif isinstance(a, torch.Tensor):
            torch.autograd.graph.increment_version(a)


_PLAIN = frozenset((np.ndarray, float, int, bool, str, type(None)))   # skipped at once


def _any_cpu_tensor(torch, values):
    for a in values:
        t = type(a)
        if t in _PLAIN:
            continue
        if t is list or isinstance(a, tuple):      # the list ops; a BatchNormSaved
            if _PLAIN.issuperset(map(type, a)):    # all NumPy arrays (a C loop: 4x faster)
                continue
            if any(type(b) not in _PLAIN and isinstance(b, torch.Tensor)
                   and b.device.type == "cpu" for b in a):
                return True
        elif isinstance(a, torch.Tensor) and a.device.type == "cpu":
            return True
    return False


_TAKES_GRADS = frozenset(("grad_norm", "clip_grad_norm", "clip_grads_with_norm"))


def _to_host(torch, a, views, name, arg, written=()):
    if isinstance(a, (list, tuple)):
        items = [_to_host(torch, b, views, name, arg, written) for b in a]
        return type(a)(*items) if hasattr(a, "_fields") else type(a)(items)
    if not isinstance(a, torch.Tensor) or a.device.type != "cpu":
        return a
    if name in _TAKES_GRADS and (a.requires_grad or isinstance(a, torch.nn.Parameter)):
        # torch's clip_grad_norm_ takes the parameters themselves (a frozen one too)
        raise TypeError(f"fastreg.{name} got a parameter as {arg}: it takes the gradients "
                        "([p.grad for p in model.parameters()]); fastreg.torch.clip_grad_norm_ "
                        "takes the parameters, as torch's does")
    if a.requires_grad:
        raise TypeError(f"fastreg.{name}: {arg} is a torch tensor that requires grad: it "
                        "records no autograd; pass .detach(), or use the layers of "
                        "fastreg.torch")
    if a.layout != torch.strided:
        raise TypeError(f"fastreg.{name}: {arg} is a {a.layout} tensor; pass a dense one "
                        "(.to_dense())")
    if a.is_neg() or a.is_conj():
        if arg in written:
            raise TypeError(f"fastreg.{name}: {arg} is a lazily negated or conjugated view "
                            "(its memory holds other values), which cannot be written in "
                            "place; pass .resolve_neg() / .resolve_conj() of it")
        a = a.resolve_neg().resolve_conj()   # read only: its values, in a copy
    if a.dtype == torch.bfloat16:
        if _arrays.BFLOAT16 is None:
            raise TypeError(f"fastreg.{name}: a bfloat16 tensor needs ml_dtypes on the NumPy "
                            "side (pip install \"fastreg-kernels[bf16]\")")
        v = a.view(torch.int16).numpy().view(_arrays.BFLOAT16)
    else:
        v = a.numpy()
    views[id(v)] = (v, a)   # the view is kept alive, so its id stays unique during the call
    return v


def _to_torch(torch, r, views):
    if type(r) is np.ndarray:
        own = views.get(id(r))
        if own is not None and own[0] is r:
            return own[1]
        if r.dtype.itemsize == 2 and r.dtype == _arrays._bfloat16():
            return torch.from_numpy(r.view(np.int16)).view(torch.bfloat16)
        try:
            return torch.from_numpy(r)
        except TypeError:           # a dtype torch lacks: left as NumPy
            return r
    if isinstance(r, tuple):
        items = [_to_torch(torch, b, views) for b in r]
        return type(r)(*items) if hasattr(r, "_fields") else tuple(items)
    if isinstance(r, list):
        return [_to_torch(torch, b, views) for b in r]
    return r
