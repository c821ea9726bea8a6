"""Compose: a list of augmentations applied in one call, geometric ones fused into one resampling.

Each op of the list is a small settings object (``RandomFlip(p=0.5)``, ``RandomRotate(15)``,
...). Geometric ops contribute one inverse affine map per sample (3x3, float64); Compose
multiplies them (``M = M_1 M_2 ... M_k``: output pixel -> source point) and resamples every image
once; the non-geometric ops (Gaussian noise, random erasing) then run on the result, in their
order in the list. The same pipeline backs the single-op functions of fastreg.augment, so
``Compose([op])(images, ...)`` equals the function form of ``op`` exactly.
"""
import math
import numbers

import numpy as np

from .. import _arrays, _config, _dispatch, _registry
from .._dispatch import Job
from ..reference import augment as ref

LAYOUTS = ("NHWC", "NCHW")
IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))
TARGET_DTYPES = (np.dtype(np.uint8), np.dtype(np.int32), np.dtype(np.int64),
                 np.dtype(np.float32))
PADDING_MODES = ("constant", "reflect", "edge")
_BORDERS = {"constant": 0, "reflect": 1, "edge": 2}   # the kernels' border codes
INTERPOLATIONS = ("bilinear", "nearest")
MAX_INDEX = 1 << 32


# --- argument checks ------------------------------------------------------------------------------

def _real(v, name):
    v = v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    v = _arrays.real_to_float(v, name, "finite")
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


def _range(v, name, symmetric=False, lo_min=None, positive=False):
    """A (lo, hi) pair of finite floats, lo <= hi; a scalar x means (-|x|, |x|) when symmetric,
    else (x, x)."""
    if isinstance(v, (tuple, list, np.ndarray)) and np.ndim(v) == 1:
        if len(v) != 2:
            raise ValueError(f"{name} must be a number or a pair (lo, hi), got {len(v)} values")
        lo, hi = _real(v[0], name), _real(v[1], name)
        given = f"({lo}, {hi})"
    else:
        x = _real(v, name)
        lo, hi = (-abs(x), abs(x)) if symmetric else (x, x)
        given = f"{x}"    # as the caller wrote it, not the pair made of it
    if lo > hi:
        raise ValueError(f"{name} must have lo <= hi, got {given}")
    if lo_min is not None and lo < lo_min:
        raise ValueError(f"{name} must be >= {lo_min}, got {given}")
    if positive and lo <= 0:
        raise ValueError(f"{name} must be > 0, got {given}")
    return lo, hi


def _size(v, name):
    """(height, width) from an int or a pair of positive ints."""
    if isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_)):
        v = (v, v)
    try:
        h, w = v
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair (height, width), got {v!r}")
    for s in (h, w):
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (numbers.Integral, np.integer)) \
                or s <= 0:
            raise ValueError(f"{name} must hold positive integers, got {v!r}")
    return int(h), int(w)


def _nonneg_pair(v, name):
    if isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_)):
        v = (v, v)
    try:
        a, b = v
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    for s in (a, b):
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (numbers.Integral, np.integer)) \
                or s < 0:
            raise ValueError(f"{name} must hold non-negative integers, got {v!r}")
    return int(a), int(b)


def check_layout(layout):
    if not isinstance(layout, str) or layout.upper() not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout.upper()


def check_images(images, layout, name="images"):
    """(array or DeviceArrayInfo-described input, dims (N, H, W, C))."""
    arr = _arrays.describe(images, name)
    if np.dtype(arr.dtype) not in IMAGE_DTYPES:
        raise TypeError(f"{name} must be uint8 or float32, got dtype {arr.dtype}")
    if len(arr.shape) != 4:
        raise ValueError(f"{name} must be a 4-D batch ({layout}), got shape {tuple(arr.shape)}")
    n, a, b, c = arr.shape
    dims = (n, a, b, c) if layout == "NHWC" else (n, b, c, a)
    return arr, dims


def shape_of(dims, layout):
    n, h, w, c = dims
    return (n, h, w, c) if layout == "NHWC" else (n, c, h, w)


def check_keys(seed, epoch, index_offset, n):
    seed = _arrays.check_uint64(seed, "seed")
    epoch = _arrays.check_uint64(epoch, "epoch")
    index_offset = _arrays.check_uint64(index_offset, "index_offset")
    if index_offset + n > MAX_INDEX:
        raise ValueError(f"index_offset + batch size ({index_offset} + {n}) exceeds 2**32: "
                         "global sample indices must be < 2**32")
    return seed, epoch, index_offset


def sample_ids(indices, index_offset, n):
    """The global ids keying each sample's random parameters, int64 (n,): ``index_offset + i``,
    or ``indices`` (dataset ids, host integers in [0, 2**32), duplicates allowed) when given."""
    if indices is None:
        return index_offset + np.arange(n, dtype=np.int64)
    if index_offset != 0:
        raise ValueError("give either index_offset or indices, not both (indices are the "
                         "samples' global ids)")
    if _arrays.is_device(indices):
        raise TypeError("indices must be a host array (the parameters are drawn on the host)")
    ids = _arrays.as_host(indices, "indices")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"indices must be integers, got dtype {ids.dtype}")
    if ids.shape != (n,):
        raise ValueError(f"indices must have shape ({n},) (one id per sample), got "
                         f"{ids.shape}")
    if n and (ids.min() < 0 or int(ids.max()) >= MAX_INDEX):
        raise ValueError(f"indices must be in [0, 2**32), got [{ids.min()}, {ids.max()}]")
    return ids.astype(np.int64)


def id_runs(idx):
    """(start, stop) of the runs of consecutive ids in ``idx`` (ids idx[start] + k): kernels
    keyed by a first id take a run at a time."""
    cuts = np.flatnonzero(np.diff(idx) != 1) + 1
    bounds = [0, *cuts.tolist(), len(idx)]
    return list(zip(bounds[:-1], bounds[1:]))


def check_fill(fill, dtype, name="fill"):
    v = _real(fill, name)
    if np.dtype(dtype) == np.uint8:
        if not 0 <= v <= 255:
            raise ValueError(f"{name} must be in [0, 255] for uint8 images, got {v}")
        return float(np.rint(v))
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        r = round(v)
        info = np.iinfo(dtype)
        if not info.min <= r <= info.max or abs(r) > 2 ** 53:
            lo, hi = max(info.min, -2 ** 53), min(info.max, 2 ** 53)
            raise ValueError(f"{name} must be in [{lo}, {hi}] for {dtype.name} values (an "
                             f"integer the kernels carry exactly), got {v}")
        return float(r)
    try:
        top = float(np.finfo(dtype).max)
    except ValueError:   # a float type NumPy does not describe
        return v
    if abs(v) > top:
        raise ValueError(f"{name} must be within {dtype.name}'s range (|{name}| <= {top:g}), "
                         f"got {v}")
    return v


def resolve_backend(backend, *arrays):
    """A Job for the backend that runs the augmentation kernels (all ops registered as aug_*).

    backend="auto" on host arrays (FASTREG_BACKEND unset) prefers "c" where it is built: the
    same bits as "cpu" and faster for every augmentation kernel (bench/bench_augment.py); it
    falls back to "numpy" where the resolved backend has no augmentation kernels. A backend
    named explicitly that lacks them raises BackendUnavailableError before any work."""
    device_in = any(a is not None and _arrays.is_device(a) for a in arrays)
    name = _registry.resolve(backend, *arrays)
    if (str(backend).lower() == "auto" and not device_in and name == "cpu"
            and _config.default_backend() == "auto"
            and _registry.available_backends()["c"] is None):
        name = "c"
    try:
        _registry.get("aug_affine", name)
    except _registry.BackendUnavailableError:
        if str(backend).lower() != "auto" or device_in:
            raise _registry.BackendUnavailableError(
                f"backend {name!r} does not implement image augmentation: use 'numpy', 'cpu', "
                "'c' or 'cuda'")
        name = "numpy"
    return Job(name, host_input=not device_in)


def _aliases(a, b):
    """Whether two arrays (host or device) share memory."""
    if a is None or b is None:
        return False
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return np.shares_memory(a, b)
    if _arrays.is_device(a) and _arrays.is_device(b):
        ia, ib = _arrays.DeviceArrayInfo(a), _arrays.DeviceArrayInfo(b)
        return _arrays._extents_overlap(ia, ib)
    return False


def planes(a, dims, layout):
    """The kernels' (M, H, W, C) view: NHWC as is, NCHW as (N * C, H, W, 1)."""
    n, h, w, c = dims
    return a if layout == "NHWC" else a.reshape(n * c, h, w, 1)


def per_plane(p, dims, layout):
    return p if layout == "NHWC" else np.repeat(p, dims[3], axis=0)


# --- the ops --------------------------------------------------------------------------------------

class _Op:
    geometric = False
    pads = False    # reads outside the image on purpose (see run's padding_mode=None)

    def __call__(self, images, **kwargs):
        """This op alone on a batch: ``Compose([self])(images, **kwargs)`` (the function form's
        result with Compose's defaults: fill 0, bilinear; pass the op to ``Compose`` for those
        settings or several ops in one pass)."""
        return Compose([self])(images, **kwargs)

    def check(self, dims):
        """Raise for settings that do not fit images of these dims (before any work)."""

    def check_dtype(self, dtype):
        """Raise for settings that do not fit images of this dtype (before any work)."""


class RandomFlip(_Op):
    """Flip each sample left-right ("horizontal"), upside-down ("vertical") or each
    independently ("both"), with probability p (see ``fastreg.augment.random_flip``)."""
    geometric = True
    name = "flip"

    def __init__(self, p=0.5, direction="horizontal"):
        self.p = _arrays.check_probability(p)
        self.direction = _arrays.check_choice(direction, "direction",
                                              ("horizontal", "vertical", "both"))

    def matrices(self, seed, epoch, idx, hw, position):
        prm = ref.sample_params("flip", seed, epoch, idx, position, p=self.p,
                                direction=self.direction)
        return ref.flip_matrices(prm["hflip"], prm["vflip"], *hw), hw


class RandomRot90(_Op):
    """With probability p, rotate by 90, 180 or 270 degrees (uniformly) counter-clockwise, as
    ``np.rot90`` on the (H, W) axes; images must be square."""
    geometric = True
    name = "rot90"

    def __init__(self, p=0.75):
        self.p = _arrays.check_probability(p)

    def check(self, dims):
        if dims[1] != dims[2]:
            raise ValueError(f"random_rot90 needs square images (a batch keeps one shape), "
                             f"got H={dims[1]}, W={dims[2]}")

    def matrices(self, seed, epoch, idx, hw, position):
        prm = ref.sample_params("rot90", seed, epoch, idx, position, p=self.p)
        return ref.rot90_matrices(prm["k"], hw[0]), hw


class RandomRotate(_Op):
    """Rotation about the image centre by an angle uniform in ``degrees`` (a pair, or x for
    (-x, x)), counter-clockwise as displayed, applied with probability p."""
    geometric = True
    pads = True
    name = "rotate"

    def __init__(self, degrees=15.0, p=1.0):
        self.lo, self.hi = _range(degrees, "degrees", symmetric=True)
        self.p = _arrays.check_probability(p)

    def matrices(self, seed, epoch, idx, hw, position):
        prm = ref.sample_params("rotate", seed, epoch, idx, position, lo=self.lo, hi=self.hi,
                                p=self.p)
        return ref.rotate_matrices(prm["angle"], *hw), hw


class RandomCrop(_Op):
    """A crop of ``size`` at a uniform integer offset of the image padded by ``padding`` (an int,
    or (pad_y, pad_x)) on every side; with padding and size = the image size this is a random
    integer translation by up to ``padding`` pixels."""
    geometric = True
    name = "crop"

    def __init__(self, size, padding=0):
        self.size = _size(size, "size")
        self.padding = _nonneg_pair(padding, "padding")
        self.pads = any(self.padding)

    def check(self, dims):
        h, w = dims[1] + 2 * self.padding[0], dims[2] + 2 * self.padding[1]
        if self.size[0] > h or self.size[1] > w:
            raise ValueError(f"crop size {self.size} is larger than the padded image ({h}, {w})")

    def matrices(self, seed, epoch, idx, hw, position):
        py, px = self.padding
        prm = ref.sample_params("crop", seed, epoch, idx, position,
                                span_y=hw[0] + 2 * py - self.size[0],
                                span_x=hw[1] + 2 * px - self.size[1])
        return ref.translate_matrices(prm["top"] - py, prm["left"] - px), self.size


class RandomResizedCrop(_Op):
    """A box of area fraction uniform in ``scale`` and aspect ratio log-uniform in ``ratio``,
    resized to ``size`` (torchvision's RandomResizedCrop, without antialiasing)."""
    geometric = True
    name = "resized_crop"

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0)):
        self.size = _size(size, "size")
        self.scale = _range(scale, "scale", positive=True)
        if self.scale[1] > 1.0:
            raise ValueError(f"scale must be within (0, 1], got {self.scale}")
        self.ratio = _range(ratio, "ratio", positive=True)

    def matrices(self, seed, epoch, idx, hw, position):
        prm = ref.sample_params("resized_crop", seed, epoch, idx, position, height=hw[0],
                                width=hw[1], scale=self.scale, ratio=self.ratio)
        return ref.resize_matrices(prm["top"], prm["left"], prm["height"], prm["width"],
                                   *self.size), self.size


class GaussianNoise(_Op):
    """Additive N(0, std^2) noise per value, std a number or a per-sample uniform range (in the
    images' units: 0..255 for uint8)."""
    name = "noise"

    def __init__(self, std=0.1):
        self.lo, self.hi = _range(std, "std", lo_min=0.0)
        if self.hi > 1e30:
            raise ValueError(f"std must be <= 1e30, got {self.hi}")

    def apply(self, job, src, res, dims, layout, seed, epoch, idx, position):
        prm = ref.sample_params("noise", seed, epoch, idx, position, lo=self.lo, hi=self.hi)
        n = dims[0]
        std = job.contig(prm["std"]) if job.device else prm["std"]
        src2, res2 = src.reshape(n, -1), res.reshape(n, -1)
        for a, b in id_runs(idx):  # the kernel keys row r by first + r: one call per run
            job.op("aug_noise")(src2[a:b], prm["key"], int(idx[a]), std[a:b], res2[a:b])


class RandomErasing(_Op):
    """Random erasing / cutout (Zhong et al. 2017): with probability p, a box of area fraction
    uniform in ``scale`` and aspect ratio log-uniform in ``ratio`` set to ``value``."""
    name = "erasing"

    def __init__(self, p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0.0):
        self.p = _arrays.check_probability(p)
        self.scale = _range(scale, "scale", positive=True)
        if self.scale[1] > 1.0:
            raise ValueError(f"scale must be within (0, 1], got {self.scale}")
        self.ratio = _range(ratio, "ratio", positive=True)
        self.value = _real(value, "value")

    def check_dtype(self, dtype):
        check_fill(self.value, dtype, "value")

    def apply(self, job, src, res, dims, layout, seed, epoch, idx, position):
        n, h, w, c = dims
        prm = ref.sample_params("erasing", seed, epoch, idx, position, height=h, width=w,
                                p=self.p, scale=self.scale, ratio=self.ratio)
        rects = np.ascontiguousarray(per_plane(prm["rects"], dims, layout))
        value = check_fill(self.value, src.dtype, "value")
        job.op("aug_erase")(planes(src, dims, layout), rects, value, planes(res, dims, layout))


# --- the pipeline ---------------------------------------------------------------------------------

def _is_flip_only(mats, hw, out_hw):
    """Per-sample (hflip, vflip) when every map is an exact flip of a same-size image, else None."""
    if tuple(hw) != tuple(out_hw):
        return None
    h, w = hw
    a00, a01, a02 = mats[:, 0, 0], mats[:, 0, 1], mats[:, 0, 2]
    a10, a11, a12 = mats[:, 1, 0], mats[:, 1, 1], mats[:, 1, 2]
    ok = (a01 == 0) & (a10 == 0) & (np.abs(a00) == 1) & (np.abs(a11) == 1)
    ok &= a02 == np.where(a00 < 0, w - 1, 0)
    ok &= a12 == np.where(a11 < 0, h - 1, 0)
    if not np.all(ok):
        return None
    return (a00 < 0).astype(np.uint8), (a11 < 0).astype(np.uint8)


def _check_target(target, dims, layout):
    """The target's array and its own plane dims (N, H, W, Ct)."""
    arr = _arrays.describe(target, "target")
    if np.dtype(arr.dtype) not in TARGET_DTYPES:
        raise TypeError(f"target must be uint8, int32, int64 or float32, got dtype {arr.dtype}")
    n, h, w, _ = dims
    shape = tuple(arr.shape)
    if len(shape) == 3:
        if shape != (n, h, w):
            raise ValueError(f"target of shape {shape} does not match the images: expected "
                             f"(N, H, W) = {(n, h, w)} or a 4-D {layout} array")
        return arr, (n, h, w, 1), "NHWC"
    if len(shape) == 4:
        tdims = (shape[0], shape[1], shape[2], shape[3]) if layout == "NHWC" else \
            (shape[0], shape[2], shape[3], shape[1])
        if tdims[:3] != (n, h, w):
            raise ValueError(f"target of shape {shape} does not match the images: N, H, W must "
                             f"be {(n, h, w)} ({layout})")
        return arr, tdims, layout
    raise ValueError(f"target must be (N, H, W) or 4-D ({layout}), got shape {shape}")


def run(ops, images, *, seed, epoch, index_offset, layout, target, target_fill, out, backend,
        fill=0.0, padding_mode=None, interpolation="bilinear", indices=None):
    """Validate everything, then run the geometric ops as one resampling and the others after.

    ``padding_mode=None``: "constant" when an op reads outside the image on purpose (a
    rotation, a crop with padding), else "edge": then the only points outside are the
    half-pixel overhangs of interpolation (a resized crop's outer rows and columns), which take
    the edge pixel, as torchvision's resize does (a constant border would darken them).

    Returns the augmented images (``out`` when given), or ``(images, target)`` when a target is
    given (a new array, resampled with the same maps by nearest neighbour; non-geometric ops do
    not touch it)."""
    layout = check_layout(layout)
    arr, dims = check_images(images, layout)
    n, h, w, c = dims
    seed, epoch, index_offset = check_keys(seed, epoch, index_offset, n)
    idx = sample_ids(indices, index_offset, n)
    if padding_mode is None:
        padding_mode = "constant" if any(op.pads for op in ops) else "edge"
    padding_mode = _arrays.check_choice(padding_mode, "padding_mode", PADDING_MODES)
    interpolation = _arrays.check_choice(interpolation, "interpolation", INTERPOLATIONS)
    fill = check_fill(fill, arr.dtype)
    geo = [(k, op) for k, op in enumerate(ops) if op.geometric]
    other = [(k, op) for k, op in enumerate(ops) if not op.geometric]
    if len(ops) > 256:
        raise ValueError("Compose takes at most 256 ops")
    out_hw = (h, w)
    for _, op in geo:
        op.check((n,) + out_hw + (c,))
        out_hw = op.size if hasattr(op, "size") else out_hw
    if geo and n and not h * w and out_hw[0] * out_hw[1]:
        raise ValueError(f"images have no pixels (height {h}, width {w}): the geometric ops "
                         f"cannot make {out_hw[0]}x{out_hw[1]} images from them")
    for _, op in other:
        op.check((n,) + out_hw + (c,))
    for op in ops:
        op.check_dtype(arr.dtype)
    if h * w * c >= MAX_INDEX:
        raise ValueError("a sample holds 2**32 values or more: too large for the noise stream")
    out_dims = (n,) + tuple(out_hw) + (c,)
    if target is not None:
        tarr, tdims, tlayout = _check_target(target, dims, layout)
        tfill = check_fill(target_fill, tarr.dtype, "target_fill")
    job = resolve_backend(backend, images, out, target)
    device_in = not job.host_input
    xin = images if device_in else arr
    out_arr = _arrays.check_out(out, "out", shape_of(out_dims, layout), arr.dtype, [xin],
                                device_in)
    if geo and out is not None and _aliases(out, xin):
        raise ValueError("out must not share memory with images for geometric ops "
                         "(the image is read while it is written)")
    dtype = np.dtype(arr.dtype)
    xc = job.contig(xin)
    res = job.target(out_arr, shape_of(out_dims, layout), dtype)
    t_res = None
    if target is not None:
        tin = target if device_in else tarr
        tc = job.contig(tin)
        t_out_dims = (n,) + tuple(out_hw) + (tdims[3],)
        t_shape = (n,) + tuple(out_hw) if len(tarr.shape) == 3 else shape_of(t_out_dims, tlayout)
        t_res = job.empty(t_shape, tarr.dtype) if geo else None
    # images without values (N, H, W or C zero) still have a target to transform when they have
    # pixels: the maps depend on the sample's size, not on its channels
    images_empty = math.prod(out_dims) == 0
    if images_empty and (t_res is None or t_res.size == 0):
        result = job.finish(res, out_arr)
        if target is None:
            return result
        return result, (job.finish(t_res, None) if geo else target)

    src = xc
    if geo:
        mats = np.repeat(np.eye(3)[None], n, axis=0)
        hw = (h, w)
        for k, op in geo:
            m, hw = op.matrices(seed, epoch, idx, hw, k)
            mats = mats @ m
        flips = _is_flip_only(mats, (h, w), out_hw)   # exact either way: the fast kernel
        border = _BORDERS[padding_mode]
        a2 = np.ascontiguousarray(mats[:, :2, :])
        if images_empty:
            pass
        elif flips is not None:
            hf, vf = (np.ascontiguousarray(per_plane(f, dims, layout)) for f in flips)
            job.op("aug_flip")(planes(xc, dims, layout), hf, vf, planes(res, out_dims, layout))
        else:
            job.op("aug_affine")(planes(xc, dims, layout),
                                 np.ascontiguousarray(per_plane(a2, dims, layout)), border,
                                 fill, interpolation == "nearest", planes(res, out_dims, layout))
        if target is not None:
            tp = planes(tc.reshape(shape_of(tdims, tlayout)), tdims, tlayout)
            trp = planes(t_res.reshape(shape_of(t_out_dims, tlayout)), t_out_dims, tlayout)
            if flips is not None:
                hf, vf = (np.ascontiguousarray(per_plane(f, tdims, tlayout)) for f in flips)
                job.op("aug_flip")(tp, hf, vf, trp)
            else:
                job.op("aug_affine")(tp, np.ascontiguousarray(per_plane(a2, tdims, tlayout)),
                                     border, tfill, True, trp)
        src = res
    if images_empty:
        return job.finish(res, out_arr), job.finish(t_res, None)
    for k, op in other:
        op.apply(job, src, res, out_dims, layout, seed, epoch, idx, k)
        src = res
    if src is not res:  # no op at all: a copy
        job.op("aug_flip")(planes(xc, dims, layout), np.zeros(n * (c if layout == "NCHW" else 1),
                                                              np.uint8),
                           np.zeros(n * (c if layout == "NCHW" else 1), np.uint8),
                           planes(res, dims, layout))
    result = job.finish(res, out_arr)
    if target is None:
        return result
    t_result = job.finish(t_res, None) if geo else target
    return result, t_result


class Compose:
    """Several augmentations in one call: geometric ops fused into one affine map per sample and
    one resampling pass, then the others (noise, erasing) in their order.

    Parameters
    ----------
    ops : sequence of op settings
        ``RandomFlip``, ``RandomRot90``, ``RandomRotate``, ``RandomCrop``, ``RandomResizedCrop``
        (geometric), ``GaussianNoise``, ``RandomErasing``. At most 256.
    fill : float
        Value outside the source image (constant padding, rotation corners); for uint8 in
        [0, 255].
    padding_mode : {None, "constant", "reflect", "edge"}
        Border rule of the fused resampling (it applies to every geometric op of the list).
        None: "constant" when an op reads outside the image on purpose (``RandomRotate``,
        ``RandomCrop`` with padding), else "edge" (the half-pixel overhangs of a resized crop
        repeat the edge pixel, as torchvision's resize; "constant" would darken them).
    interpolation : {"bilinear", "nearest"}
        Of the images (targets always use nearest neighbour).

    Notes
    -----
    Op k of the list draws its parameters with tag ``code << 8 | k`` (see
    fastreg.reference.augment): ``Compose([op])`` gives exactly the function form of ``op``,
    and every parameter of sample i depends only on (seed, epoch, i). One resampling of the
    composed map differs (slightly, by interpolation) from resampling after each op: that is the
    point (one pass, one interpolation blur).
    """

    def __init__(self, ops, *, fill=0.0, padding_mode=None, interpolation="bilinear"):
        ops = list(ops)
        for op in ops:
            if not isinstance(op, _Op):
                raise TypeError(f"Compose takes op settings (RandomFlip(...), ...), got "
                                f"{type(op).__name__}")
        self.ops = ops
        self.fill = _real(fill, "fill")
        self.padding_mode = (None if padding_mode is None else
                             _arrays.check_choice(padding_mode, "padding_mode", PADDING_MODES))
        self.interpolation = _arrays.check_choice(interpolation, "interpolation",
                                                  INTERPOLATIONS)

    @_dispatch.answers_torch
    def __call__(self, images, *, seed, epoch=0, index_offset=0, layout="NHWC", target=None,
                 target_fill=0, out=None, backend="auto", indices=None):
        """Apply the ops to a batch.

        Parameters
        ----------
        images : array (N, H, W, C) or (N, C, H, W), uint8 or float32
            Host or CUDA device batch.
        seed, epoch : int
            Key of every random parameter, in [0, 2**64).
        index_offset : int
            Global index of the batch's first sample (indices < 2**32).
        indices : array of int (N,), optional
            The samples' global (dataset) ids instead of ``index_offset + i``: a sample then
            gets the same transform whatever its batch position, batch or worker. Host
            integers in [0, 2**32); not together with index_offset.
        layout : {"NHWC", "NCHW"}
        target : array, optional
            Aligned target (segmentation mask) (N, H, W) or 4-D in ``layout``: resampled with
            the same maps by nearest neighbour, fill ``target_fill``; noise and erasing are not
            applied to it.
        target_fill : number
            Fill value of the target outside the source.
        out : array, optional
            Result array of the output shape and images' dtype (not sharing memory with images
            when a geometric op is present).
        backend : {"auto", "numpy", "cpu", "c", "cuda"}

        Returns
        -------
        array or (array, array)
            The augmented batch, and the target when one was given.

        Raises
        ------
        TypeError, ValueError, BackendUnavailableError
            As the function forms of the ops (fastreg.augment).
        """
        return run(self.ops, images, seed=seed, epoch=epoch, index_offset=index_offset,
                   layout=layout, target=target, target_fill=target_fill, out=out,
                   backend=backend, fill=self.fill, padding_mode=self.padding_mode,
                   interpolation=self.interpolation, indices=indices)
