"""The one dispatch point: op x backend -> function, and backend="auto" resolution.

Backends are packages with the same function names and signatures:

    "numpy"  fastreg.reference   pure NumPy, the test oracle
    "cpu"    fastreg.cpu         Numba, run in shares on fastreg's threads
    "c"      fastreg.c           C through cffi, OpenMP
    "cuda"   fastreg.cuda        Numba CUDA

A backend package is imported on first use only, so ``import fastreg`` loads neither Numba nor
the C extension nor a CUDA driver.

Kernel contract (the public wrappers have already validated everything; arrays are contiguous,
``seed`` and ``offset`` are Python ints in [0, 2**64), ``threshold`` an int in [0, 2**32 - 1],
``scale`` a scalar of the array's dtype):

    philox4x32(ctr, key, out)            uint32 (n, 4), (n, 2) -> out uint32 (n, 4)
    random_bits(seed, offset, out)       out uint32 (n,): word offset + i of the stream
    uniform(seed, offset, out)           out float32 or float64 (n,) in [0, 1)
    dropout(x, seed, offset, threshold, scale, out)
                                         x, out (n,) same float dtype, out may be x:
                                         out[i] = x[i] * scale if word(offset + i) >= threshold else 0
    dropout_mask(seed, offset, threshold, out)           out uint8 (n,): 1 = kept
    dropout_mask_packed(seed, offset, threshold, n, out) out uint8 (ceil(n / 8),), LSB first
    group_dropout(x, keep, scale, out)   x, out (N, M1, C, M2); keep uint8 (N, C)

    penalty_sums(w) -> (sum |w|, sum w**2)          float64 accumulation, any order
    penalty_grad(w, l1, c2, out, accumulate)        out (+)= l1 * sgn(w) + c2 * w (see reference)
    soft_threshold(w, t, s, out)                    out = s * soft(w, t); out may be w
    group_lasso(w, t, out)                          w, out (A, L, B): groups w[a, :, b];
                                                    t a Python float (float64 math)
    all_finite(a) -> bool
    sgd_step(p, g, buf, lr, wd, decay, momentum, damp1, nesterov, first, l1t, gscale=1)
                                                    in place on p, buf
    adam_step(p, g, m, v, vmax, wd, decay, omb1, beta2, omb2, eps, step_size, bc2_sqrt,
              gscale=1)                             in place on p, m, v, vmax
    (buf / vmax are None when momentum == 0 / without AMSGrad; float scalars are already of the
    arrays' dtype, bools are Python bools; the gradient is first multiplied by gscale, gradient
    clipping's factor, skipped when it is 1.)

    Batch norm: x, y, gy, residual, out, gx, gres are (A, C, B) views (channel axis in the
    middle); per-channel arrays are (C,); sums and statistics are float64 (fastreg.reference.
    batchnorm has the exact definitions and the tolerance policy):
    bn_stats(x, mean, m2)                           float64 per-channel mean and M2
    bn_apply(x, center, scale, shift, residual, relu, out)
                                                    out = act((x - center) * scale + shift [+ r])
    bn_forward_train(x, weight, bias, eps, residual, relu, out, mean, m2, invstd)
                                                    stats + normalization (may be fused)
    bn_backward_reduce(gy, x, y, center, s_dy, s_dyx)       y = ReLU output or None
    bn_backward_apply(gy, x, y, center, a, b, d, gx, gres)  b, d None in inference
    bn_backward(gy, x, y, mean, invstd, weight, training, gx, gres, grad_weight, grad_bias)
                                                    reduce + coefficients + apply (may be fused)
    bn_forward_coeffs / bn_running_update / bn_backward_coeffs   O(C) per-channel math

DropBlock (definition and stream layout: fastreg/reference/dropblock.py):
    drop_block_mask(seed, offset, threshold, block, channels_last, mask) -> kept
                                         mask uint8 (N, C, H, W), or (N, H, W, C) when
                                         channels_last: 1 = kept; returns the kept count (int);
                                         threshold an int in [0, 2**32], block in [1, min(H, W)]
    drop_block_apply(x, mask, scale, out)  x, out (n,) float, mask uint8 (n,), out may be x:
                                         out[i] = x[i] * scale if mask[i] else +0.0

Image augmentation (aug_flip, aug_affine, aug_noise, aug_erase, aug_mix, aug_paste): contract in
fastreg/reference/augment.py (all four backends).
Colour augmentation (aug_color, aug_blur, aug_normalize): contract in
fastreg/reference/augment_color.py (all four backends; CUDA takes NHWC batches).

Softmax cross-entropy (fastreg/reference/loss.py has the definitions): x (R, C) logits; tw, cw
float64 (C,) class coefficients of the target and smoothing terms (cw None: no smoothing);
loss float64 (R,) receives the per-row losses; grad (R, C) of x's dtype or None (loss only),
may be x; scale a Python float (the reduction's gradient factor):
    ce_hard(x, target, tw, cw, ignore_index, scale, loss, grad)   target int64 (R,)
    ce_soft(x, target, tw, cw, scale, loss, grad)                 target (R, C) of x's dtype

Weight EMA and gradient clipping (fastreg/reference/ema.py, clip.py): lists hold 1-D
contiguous arrays of one float dtype; scalars are of that dtype, p (norm_type) a Python float
> 0 or inf:
    ema_update(emas, ps, w)          in place: ema = fma(coef, p - ema, base), torch's lerp
    norm_sum(arrays, p) -> float     float64 sum |x|**p over all elements (max |x| for inf)
    scale(arrays, s)                 in place: a = a * s
    row_norm_sums(a, p, out)         a (U, K); out float64 (U,): norm_sum of each row
    scale_rows(a, s)                 a (U, K) in place: a[u] = a[u] * s[u]; s (U,) of a's dtype

16-bit floats (fastreg/reference/half.py): the staging passes of 16-bit ops (float32 math);
kind 0 is float16, 1 bfloat16; 16-bit arrays are given as their uint16 bits:
    half_to_float32(src, kind, out)  src uint16 (n,) -> out float32 (n,), exact
    float32_to_half(src, kind, out)  src float32 (n,) -> out uint16 (n,), round to nearest even

See fastreg/reference/ for the exact definitions.
"""
import importlib

from . import _config
from ._arrays import is_device

_RNG_DROPOUT_OPS = ("philox4x32", "random_bits", "uniform", "dropout", "dropout_mask",
                    "dropout_mask_packed", "group_dropout")
_PENALTY_OPTIM_OPS = ("penalty_sums", "penalty_grad", "soft_threshold", "group_lasso",
                      "all_finite", "sgd_step", "adam_step")
_BATCHNORM_OPS = ("bn_stats", "bn_apply", "bn_forward_train", "bn_backward_reduce",
                  "bn_backward_apply", "bn_backward", "bn_forward_coeffs", "bn_running_update",
                  "bn_backward_coeffs")
_AUGMENT_OPS = ("aug_flip", "aug_affine", "aug_noise", "aug_erase", "aug_mix", "aug_paste")
_AUGMENT_COLOR_OPS = ("aug_color", "aug_blur", "aug_normalize")
_LOSS_OPS = ("ce_hard", "ce_soft")
_DROPBLOCK_OPS = ("drop_block_mask", "drop_block_apply")
OPS = _RNG_DROPOUT_OPS + _PENALTY_OPTIM_OPS + _BATCHNORM_OPS + _AUGMENT_OPS
OPS += _DROPBLOCK_OPS + _LOSS_OPS
_EMA_CLIP_OPS = ("ema_update", "norm_sum", "scale", "row_norm_sums", "scale_rows")
OPS += _EMA_CLIP_OPS
OPS += _AUGMENT_COLOR_OPS
_HALF_OPS = ("half_to_float32", "float32_to_half")
OPS += _HALF_OPS

_MODULES = {"numpy": "fastreg.reference", "cpu": "fastreg.cpu", "c": "fastreg.c",
            "cuda": "fastreg.cuda"}
_HOST_ORDER = ("c", "cpu", "numpy")  # what "auto" picks for host arrays, best first

_loaded = {}    # backend -> module
_missing = {}   # backend -> reason it cannot be used


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here."""


def _load(name):
    if name in _loaded:
        return _loaded[name]
    if name in _missing:
        return None
    try:
        module = importlib.import_module(_MODULES[name])
        if not hasattr(module, "unavailable_reason"):
            reason = f"{_MODULES[name]} does not define unavailable_reason()"
        else:
            reason = module.unavailable_reason()
    except Exception as exc:  # an import failure is exactly what available_backends reports
        module, reason = None, f"{type(exc).__name__}: {exc}"
    if reason is not None:
        _missing[name] = reason
        return None
    _loaded[name] = module
    return module


def available_backends():
    """Which backends run here, and why the others do not.

    Importing a backend for this check is what loads Numba or the C extension; the result is
    cached for the process.

    Parameters
    ----------
    None

    Returns
    -------
    dict
        ``{name: None}`` for a working backend, ``{name: "reason"}`` for a missing one, in the
        order numpy, cpu, c, cuda.
    """
    out = {}
    for name in _config.BACKENDS:
        module = _load(name)
        out[name] = None if module is not None else _missing[name]
    return out


def module(name):
    """The backend package for ``name``; BackendUnavailableError with the reason if it cannot run."""
    if name not in _MODULES:
        raise ValueError(f"backend must be one of {_config.BACKENDS} or 'auto', got {name!r}")
    mod = _load(name)
    if mod is None:
        raise BackendUnavailableError(f"backend {name!r} is not available: {_missing[name]}")
    return mod


def get(op, name):
    """The function implementing ``op`` on backend ``name``."""
    if op not in OPS:
        raise KeyError(f"unknown op {op!r}")
    fn = getattr(module(name), op, None)
    if fn is None:
        raise BackendUnavailableError(f"backend {name!r} does not implement {op!r}")
    return fn


def resolve(backend, *arrays):
    """Turn ``backend`` ("auto" or a name) into the name of the backend that will run.

    "auto": "cuda" if any array exposes ``__cuda_array_interface__``; otherwise FASTREG_BACKEND
    when set, else the first available of c, cpu, numpy (the C backend compiles nothing at run
    time and matches or beats Numba on nearly every op). A device array given to a host backend by
    name is an error (fastreg never copies between devices behind your back).
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    backend = backend.lower()
    on_device = any(a is not None and is_device(a) for a in arrays)
    if backend == "auto":
        if on_device:
            backend = "cuda"
        else:
            backend = _config.default_backend()
            if backend == "auto":
                backend = next((b for b in _HOST_ORDER if _load(b) is not None), "numpy")
    elif backend not in _MODULES:
        raise ValueError(f"backend must be one of {_config.BACKENDS} or 'auto', got {backend!r}")
    if on_device and backend != "cuda":
        raise ValueError(
            f"backend {backend!r} runs on host memory but an input is a CUDA device array; "
            "use backend='cuda' or 'auto', or copy the data to the host yourself"
        )
    module(backend)  # raise now, with the reason, if it cannot run
    return backend

