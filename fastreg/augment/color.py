"""Colour and intensity augmentation of uint8 image batches: torchvision's colour ops
(brightness, contrast, saturation, sharpness, hue, posterize, solarize, autocontrast, equalize),
``ColorJitter``, ``GaussianBlur`` and ``Normalize`` (uint8 -> float32 with mean / std).

The exact definitions are in fastreg.reference.augment_color (torchvision.transforms.v2's
tensor ops on uint8, reimplemented). Where they differ from torchvision:

- contrast's mean is the exact integer sum of the floored luma divided in float64 (torch sums
  float32 in its own order: the mean may differ in the last bit, and a result by 1 where the
  blend lands on an integer);
- Gaussian blur is separable (rows then columns, float32 accumulation in tap order), where
  torchvision convolves with the 2-D outer-product kernel: results differ by at most 1;
  the sigma is drawn per sample (torchvision draws one per call);
- ColorJitter draws its order and factors per sample.

Every random parameter of sample i is keyed by (seed, epoch, index_offset + i) as in
fastreg.augment.image. The ops are ``Compose`` members (after the geometric ops, in list
order) and callables on their own.

Backends: "numpy" (the reference), "cpu" (Numba), "c" (csrc/augment_color.c, the default for
host arrays where it is built) and "cuda" (Numba CUDA; NHWC batches only, tested under the
simulator) have the colour kernels (aug_color, aug_blur, aug_normalize in fastreg._registry)
and give the same bits. Images: uint8 only, 1 or 3 channels for the colour ops.
"""
import numbers

import numpy as np

from .. import _arrays, _dispatch, _registry
from ..reference import augment_color as refc
from . import compose as _c

def kernels(job):
    """The Job's backend package, which holds aug_color / aug_blur / aug_normalize
    (fastreg._registry); BackendUnavailableError for a backend without them."""
    for op in ("aug_color", "aug_blur", "aug_normalize"):
        if getattr(job.mod, op, None) is None:
            raise _registry.BackendUnavailableError(
                f"backend {job.backend!r} does not implement the colour augmentation kernels: "
                "use 'numpy', 'cpu', 'c' or 'cuda'")
    return job.mod


def nhwc(a, layout):
    """The kernels' (N, H, W, C) view of a batch in ``layout`` (CUDA: NHWC only)."""
    if layout == "NHWC":
        return a
    if not isinstance(a, np.ndarray):
        raise _registry.BackendUnavailableError(
            "the CUDA colour kernels take NHWC batches only (layout='NHWC')")
    return a.transpose(0, 2, 3, 1)


def _check_u8(dtype, what):
    if np.dtype(dtype) != np.uint8:
        raise TypeError(f"{what} takes uint8 images, got dtype {np.dtype(dtype)}")


def _check_channels(dims, what):
    if dims[3] not in (1, 3):
        raise ValueError(f"{what} takes 1 or 3 channels, got {dims[3]}")


class _ColorOp(_c._Op):
    """A non-geometric op on uint8 images; callable on a batch as the function forms are."""

    def check_dtype(self, dtype):
        _check_u8(dtype, type(self).__name__)

    def check(self, dims):
        _check_channels(dims, type(self).__name__)

    @_dispatch.answers_torch
    def __call__(self, images, *, seed, epoch=0, index_offset=0, layout="NHWC", out=None,
                 backend="auto", indices=None):
        """Apply the op to a batch.

        Parameters
        ----------
        images : array (N, H, W, C) or (N, C, H, W), uint8
            Host or CUDA batch (CUDA: NHWC); not modified (unless ``out`` is ``images``).
        seed, epoch : int
            Key of every random parameter, in [0, 2**64).
        index_offset : int
            Global index of the batch's first sample (indices < 2**32).
        layout : {"NHWC", "NCHW"}
        out : array, optional
            Result array (images' shape, uint8); may be ``images`` (in place).
        backend : {"auto", "numpy", "cpu", "c", "cuda"}
        indices : array of int (N,), optional
            The samples' global (dataset) ids instead of ``index_offset + i``: a sample gets
            the same parameters whatever its batch position. Host integers in [0, 2**32);
            not together with index_offset.

        Returns
        -------
        array
            The augmented batch.

        Raises
        ------
        TypeError, ValueError, BackendUnavailableError
            Not uint8, bad shape or keys, bad out, an NCHW batch on CUDA.
        """
        return _c.run([self], images, seed=seed, epoch=epoch, index_offset=index_offset,
                      layout=layout, target=None, target_fill=0, out=out, backend=backend,
                      indices=indices)


def run_color(job, src, res, layout, codes, params):
    """One aug_color pass: sample n of ``res`` = op codes[n] of sample n of ``src``."""
    kernels(job).aug_color(nhwc(src, layout), np.ascontiguousarray(codes, np.int64),
                           np.ascontiguousarray(params, np.float64), nhwc(res, layout))


def _jitter_range(value, name, center, lo_bound):
    """torchvision's ColorJitter._check_input: x -> (max(lo_bound, c - x), c + x); None when the
    range is the single point c."""
    if isinstance(value, (tuple, list, np.ndarray)):
        lo, hi = _c._range(value, name)
    else:
        x = _c._real(value, name)
        if x < 0:
            raise ValueError(f"{name} must be >= 0, got {x}")
        lo, hi = max(lo_bound, center - x), center + x
    if lo < lo_bound:
        raise ValueError(f"{name} must be >= {lo_bound}, got ({lo}, {hi})")
    return None if lo == hi == center else (lo, hi)


def _hue_range(value):
    """torchvision's hue check: x -> (-x, x) with 0 <= x <= 0.5, or a pair in [-0.5, 0.5];
    None when the range is (0, 0)."""
    if isinstance(value, (tuple, list, np.ndarray)):
        lo, hi = _c._range(value, "hue")
    else:
        x = _c._real(value, "hue")
        if x < 0:
            raise ValueError(f"hue must be >= 0, got {x}")
        lo, hi = -x, x
    if lo < -0.5 or hi > 0.5:
        raise ValueError(f"hue must be within [-0.5, 0.5], got ({lo}, {hi})")
    return None if lo == hi == 0.0 else (lo, hi)


class ColorJitter(_ColorOp):
    """Random brightness, contrast, saturation and hue (torchvision's ColorJitter).

    Parameters
    ----------
    brightness, contrast, saturation : float or (float, float)
        x gives factors uniform in [max(0, 1 - x), 1 + x]; a pair is the range itself (>= 0).
        0 (or (1, 1)): not applied.
    hue : float or (float, float)
        x in [0, 0.5] gives hue shifts uniform in [-x, x]; a pair within [-0.5, 0.5] is the
        range itself. 0: not applied.

    Notes
    -----
    Per sample, brightness, contrast and saturation run in a uniformly random order
    (Fisher-Yates on draws 0 and 1) with factors uniform in their ranges (draws 2, 3, 4); with
    hue, the hue shift (draw 6) is inserted at a uniform position of that order (draw 5), so
    the four orders are uniform and the results without hue do not change. Each adjustment is
    torchvision's ``adjust_*`` on uint8 (see fastreg.reference.augment_color): one aug_color
    pass over the batch per position, each sample with its own op and factor.
    """
    name = "colorjitter"

    def __init__(self, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0):
        self.ranges = {"brightness": _jitter_range(brightness, "brightness", 1.0, 0.0),
                       "contrast": _jitter_range(contrast, "contrast", 1.0, 0.0),
                       "saturation": _jitter_range(saturation, "saturation", 1.0, 0.0),
                       "hue": _hue_range(hue)}

    def apply(self, job, src, res, dims, layout, seed, epoch, idx, position):
        order, factors = refc.jitter_params(seed, epoch, idx, position, self.ranges)
        codes_of = np.array([refc.BRIGHTNESS, refc.CONTRAST, refc.SATURATION, refc.HUE],
                            np.int64)
        active = np.array([self.ranges.get(k) is not None for k in refc.JITTER_ORDER])
        rows = np.arange(dims[0])
        cur = src
        for s in range(order.shape[1]):
            k = order[:, s]
            codes = np.where(active[k], codes_of[k], refc.IDENTITY)
            if cur is res:
                codes = np.where(codes == refc.IDENTITY, refc.SKIP, codes)
            run_color(job, cur, res, layout, codes, factors[rows, k])
            cur = res


class GaussianBlur(_ColorOp):
    """Gaussian blur with a per-sample sigma uniform in ``sigma`` (torchvision's GaussianBlur).

    Parameters
    ----------
    kernel_size : int
        Odd, >= 1; at most 2 min(H, W) - 1 (reflect padding, as torchvision).
    sigma : float or (float, float)
        Standard deviation (pixels) or its range; > 0.

    Notes
    -----
    Weights ``exp(-x^2 / (2 sigma^2))`` normalized, in float32; rows then columns, NumPy
    "reflect" borders; rounded half to even (fastreg.reference.augment_color.aug_blur).
    Works on any number of channels.
    """
    name = "blur"

    def __init__(self, kernel_size, sigma=(0.1, 2.0)):
        k = _arrays.check_int(kernel_size, "kernel_size")
        if k < 1 or k % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {k}")
        self.kernel_size = k
        self.sigma = _c._range(sigma, "sigma", positive=True)

    def check(self, dims):
        r = self.kernel_size // 2
        if r >= min(dims[1], dims[2]) and r > 0:
            raise ValueError(f"kernel_size {self.kernel_size} is too large for images of "
                             f"{dims[1]}x{dims[2]} (reflect padding needs kernel_size // 2 < "
                             "min(H, W))")

    def apply(self, job, src, res, dims, layout, seed, epoch, idx, position):
        _, weights = refc.blur_params(seed, epoch, idx, position, self.sigma, self.kernel_size)
        x = src.copy() if src is res and isinstance(src, np.ndarray) else src  # cuda: copies
        kernels(job).aug_blur(nhwc(x, layout), weights, nhwc(res, layout))


# --- deterministic ops: one factor for the batch or one per sample -----------------------------

def _per_sample(value, n, name, lo=None, hi=None, integer=False):
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        a = np.asarray(float(value))
    else:   # one per sample; None, bools, strings, objects: no silent meaning
        try:
            a = np.asarray(value)
        except ValueError:   # a ragged list
            raise ValueError(f"{name} must be a number or one per sample ({n},)") from None
        if a.dtype.kind not in "iuf":
            raise TypeError(f"{name} must be a real number or one per sample, got "
                            f"{type(value).__name__}")
        a = a.astype(np.float64)
    if a.ndim == 0:
        a = np.full(n, float(a))
    if a.shape != (n,):
        raise ValueError(f"{name} must be a number or one per sample ({n},), got shape "
                         f"{a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite")
    if lo is not None and n and a.min() < lo:
        raise ValueError(f"{name} must be >= {lo}, got {a.min()}")
    if hi is not None and n and a.max() > hi:
        raise ValueError(f"{name} must be <= {hi}, got {a.max()}")
    if integer and not np.all(a == np.floor(a)):
        raise ValueError(f"{name} must hold integers")
    return a


def _host_only(images, out, name):
    if _arrays.is_device(images) or (out is not None and _arrays.is_device(out)):
        raise TypeError(f"{name} takes host arrays (backend='cuda' copies them to the device); "
                        "CUDA device batches go through the op objects (ColorJitter, "
                        "RandAugment, ...)")


def _deterministic(images, code, param, name, layout, out, backend, **limits):
    _host_only(images, out, name.split(".")[0])
    layout = _c.check_layout(layout)
    arr, dims = _c.check_images(images, layout)
    fn = name.split(".")[0]
    _check_u8(arr.dtype, f"{fn}(images)")
    _check_channels(dims, fn + ".images")
    params = _per_sample(param, dims[0], name.split(".")[-1], **limits)
    job = _c.resolve_backend(backend, images, out)
    kernels(job)
    out_arr = _arrays.check_out(out, "out", arr.shape, arr.dtype, [arr], False)
    res = out_arr if out_arr is not None else np.empty_like(arr)
    if arr.size:
        run_color(job, arr, res, layout, np.full(dims[0], code, np.int64), params)
    return res


_FN_DOC = """
    Parameters
    ----------
    images : array (N, H, W, C) or (N, C, H, W), uint8
        Batch with 1 or 3 channels (CUDA: NHWC); not modified (unless ``out`` is
        ``images``).
    {param}
    layout : {{"NHWC", "NCHW"}}
    out : array, optional
        Result array (images' shape, uint8); may be ``images``.
    backend : {{"auto", "numpy", "cpu", "c", "cuda"}}

    Returns
    -------
    ndarray
        The adjusted batch (``out`` when given).

    Raises
    ------
    TypeError, ValueError, BackendUnavailableError
        Not uint8, not 1 or 3 channels, bad parameter, bad out, a CUDA device array.
    """


def _doc(summary, param):
    return summary + "\n" + _FN_DOC.format(param=param)


@_dispatch.answers_torch
def adjust_brightness(images, factor, *, layout="NHWC", out=None, backend="auto"):
    return _deterministic(images, refc.BRIGHTNESS, factor, "adjust_brightness.factor", layout,
                          out, backend, lo=0.0)


@_dispatch.answers_torch
def adjust_saturation(images, factor, *, layout="NHWC", out=None, backend="auto"):
    return _deterministic(images, refc.SATURATION, factor, "adjust_saturation.factor", layout,
                          out, backend, lo=0.0)


@_dispatch.answers_torch
def adjust_contrast(images, factor, *, layout="NHWC", out=None, backend="auto"):
    return _deterministic(images, refc.CONTRAST, factor, "adjust_contrast.factor", layout, out,
                          backend, lo=0.0)


@_dispatch.answers_torch
def adjust_sharpness(images, factor, *, layout="NHWC", out=None, backend="auto"):
    return _deterministic(images, refc.SHARPNESS, factor, "adjust_sharpness.factor", layout,
                          out, backend, lo=0.0)


@_dispatch.answers_torch
def adjust_hue(images, factor, *, layout="NHWC", out=None, backend="auto"):
    return _deterministic(images, refc.HUE, factor, "adjust_hue.factor", layout, out, backend,
                          lo=-0.5, hi=0.5)


@_dispatch.answers_torch
def posterize(images, bits, *, layout="NHWC", out=None, backend="auto"):
    return _deterministic(images, refc.POSTERIZE, bits, "posterize.bits", layout, out, backend,
                          lo=0, hi=8, integer=True)


@_dispatch.answers_torch
def solarize(images, threshold, *, layout="NHWC", out=None, backend="auto"):
    return _deterministic(images, refc.SOLARIZE, threshold, "solarize.threshold", layout, out,
                          backend, lo=0.0, hi=255.0)


@_dispatch.answers_torch
def autocontrast(images, *, layout="NHWC", out=None, backend="auto"):
    return _deterministic(images, refc.AUTOCONTRAST, 0.0, "autocontrast", layout, out,
                          backend)


@_dispatch.answers_torch
def equalize(images, *, layout="NHWC", out=None, backend="auto"):
    return _deterministic(images, refc.EQUALIZE, 0.0, "equalize", layout, out, backend)


_F = "factor : float or array (N,)\n        Factor (>= 0) for the batch or per sample."
adjust_brightness.__doc__ = _doc("Scale intensities: ``trunc(clamp(v * f, 0, 255))`` "
                                 "(torchvision's adjust_brightness).", _F)
adjust_saturation.__doc__ = _doc("Blend each pixel with its floored luma by factor (0: grey, 1: "
                                 "unchanged; torchvision's adjust_saturation).", _F)
adjust_contrast.__doc__ = _doc("Blend each image with the mean of its floored luma by factor "
                               "(torchvision's adjust_contrast).", _F)
adjust_sharpness.__doc__ = _doc("Blend the interior pixels with a 3x3 smoothed image by factor "
                                "(torchvision's adjust_sharpness).", _F)
adjust_hue.__doc__ = _doc("Rotate the hue of every pixel by factor (in turns; torchvision's "
                          "adjust_hue on uint8: HSV in float32, back with to_dtype(uint8)).",
                          "factor : float or array (N,)\n        Hue shift in [-0.5, 0.5], for "
                          "the batch or per sample.")
posterize.__doc__ = _doc("Keep the ``bits`` high bits of every value (torchvision's posterize).",
                         "bits : int or array (N,)\n        In [0, 8].")
solarize.__doc__ = _doc("Invert values ``>= threshold`` (torchvision's solarize).",
                        "threshold : float or array (N,)\n        In [0, 255].")
autocontrast.__doc__ = _doc("Stretch each channel of each image to [0, 255] (torchvision's "
                            "autocontrast).", "")
equalize.__doc__ = _doc("Histogram-equalize each channel of each image (PIL's rule, as "
                        "torchvision's equalize).", "")


@_dispatch.answers_torch
def gaussian_blur(images, kernel_size, sigma, *, layout="NHWC", out=None, backend="auto"):
    """Gaussian blur of every sample with one sigma (see ``GaussianBlur``).

    Parameters
    ----------
    images : array (N, H, W, C) or (N, C, H, W), uint8
    kernel_size : int
        Odd, kernel_size // 2 < min(H, W).
    sigma : float
        > 0.
    layout : {"NHWC", "NCHW"}
    out : array, optional
        Result array (images' shape, uint8); must not share memory with images.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}

    Returns
    -------
    ndarray
        The blurred batch.

    Raises
    ------
    TypeError, ValueError, BackendUnavailableError
        As ``adjust_brightness``; bad kernel_size or sigma.
    """
    s = _arrays._scalar(sigma)
    if isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Real):
        # GaussianBlur's sigma pair is a range to draw from per sample; torchvision's
        # functional gaussian_blur reads a pair as (sigma_x, sigma_y): refuse it, not guess
        raise TypeError(f"sigma must be one real number > 0 (the same blur for every sample), "
                        f"got {type(sigma).__name__}; GaussianBlur(kernel_size, (lo, hi)) "
                        "draws a sigma per sample")
    op = GaussianBlur(kernel_size, sigma)
    if out is not None and isinstance(out, np.ndarray) and np.shares_memory(out, images):
        raise ValueError("out must not share memory with images for gaussian_blur")
    return op(images, seed=0, layout=layout, out=out, backend=backend)


class Normalize:
    """uint8 -> float32 ``(v / 255 - mean[c]) / std[c]`` (torchvision's ``ToDtype(float32,
    scale=True)`` then ``Normalize(mean, std)``), one table lookup per value.

    Parameters
    ----------
    mean, std : sequence of float
        One per channel (or one for all); std > 0.
    scale : bool
        Divide by 255 first (default); False: ``(v - mean) / std`` on the raw values.

    Notes
    -----
    ``Normalize(...).after(op)`` returns a callable that runs ``op`` (any Compose, op setting or
    policy) and then normalizes, the uint8 intermediate written once and read once.
    """

    def __init__(self, mean, std, scale=True):
        for name, v in (("mean", mean), ("std", std)):
            try:
                a = np.atleast_1d(np.asarray(v, np.float64))
            except (TypeError, ValueError):
                raise TypeError(f"{name} must be a number or a sequence of numbers, "
                                f"got {v!r}") from None
            if a.ndim != 1:
                raise ValueError(f"{name} must be a number or a 1-D sequence, got {a.ndim} "
                                 "dimensions")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{name} must be finite, got {a}")
            setattr(self, name, a)
        if np.any(self.std <= 0):
            raise ValueError(f"std must be > 0, got {self.std}")
        self.scale = _arrays.check_bool(scale, "scale")

    def lut(self, channels):
        m, s = self.mean, self.std
        for name, v in (("mean", m), ("std", s)):
            if len(v) not in (1, channels):
                raise ValueError(f"{name} has {len(v)} values for {channels} channels")
        m = np.broadcast_to(m, (channels,))
        s = np.broadcast_to(s, (channels,))
        return refc.normalize_lut(m, s, self.scale)

    @_dispatch.answers_torch
    def __call__(self, images, *, layout="NHWC", out=None, backend="auto"):
        """Normalize a uint8 batch to float32.

        Parameters
        ----------
        images : array (N, H, W, C) or (N, C, H, W), uint8
        layout : {"NHWC", "NCHW"}
        out : array, optional
            float32 result of images' shape.
        backend : {"auto", "numpy", "cpu", "c", "cuda"}

        Returns
        -------
        ndarray
            float32 batch.

        Raises
        ------
        TypeError, ValueError, BackendUnavailableError
            Not uint8, mean/std of the wrong length, bad out.
        """
        _host_only(images, out, "Normalize")
        layout = _c.check_layout(layout)
        arr, dims = _c.check_images(images, layout)
        _check_u8(arr.dtype, "Normalize")
        lut = self.lut(dims[3])
        job = _c.resolve_backend(backend, images, out)
        mod = kernels(job)
        out_arr = _arrays.check_out(out, "out", arr.shape, np.float32, [], False)
        res = out_arr if out_arr is not None else np.empty(arr.shape, np.float32)
        if arr.size:
            mod.aug_normalize(nhwc(arr, layout), lut, nhwc(res, layout))
        return res

    def after(self, op):
        """A callable ``f(images, *, seed, epoch=0, index_offset=0, layout="NHWC", out=None,
        backend="auto", indices=None)`` that applies ``op`` and then this normalization (out:
        float32); ``indices`` (the samples' ids in the data set) go to ``op`` as given.

        Parameters
        ----------
        op : callable
            A Compose, op setting or policy taking ``(images, seed=..., ...)``.

        Returns
        -------
        callable
            The fused pipeline.
        """
        def pipeline(images, *, seed, epoch=0, index_offset=0, layout="NHWC", out=None,
                     backend="auto", indices=None):
            kw = {} if indices is None else {"indices": indices}
            mid = op(images, seed=seed, epoch=epoch, index_offset=index_offset, layout=layout,
                     backend=backend, **kw)
            return self(mid, layout=layout, out=out, backend=backend)
        return pipeline


@_dispatch.answers_torch
def normalize(images, mean, std, *, scale=True, layout="NHWC", out=None, backend="auto"):
    """uint8 -> float32 ``(v / 255 - mean[c]) / std[c]`` (see ``Normalize``).

    Parameters
    ----------
    images : array (N, H, W, C) or (N, C, H, W), uint8
    mean, std : float or sequence of float
        Per channel (in [0, 1] units when scale is True); std > 0.
    scale : bool
        Divide by 255 first.
    layout : {"NHWC", "NCHW"}
    out : array, optional
        float32 result of images' shape.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}

    Returns
    -------
    ndarray
        float32 batch.

    Raises
    ------
    TypeError, ValueError, BackendUnavailableError
        As ``Normalize``.
    """
    return Normalize(mean, std, scale)(images, layout=layout, out=out, backend=backend)


__all__ = ["adjust_brightness", "adjust_saturation", "adjust_contrast", "adjust_sharpness",
           "adjust_hue", "posterize", "solarize", "autocontrast", "equalize", "gaussian_blur", "normalize",
           "ColorJitter", "GaussianBlur", "Normalize"]
