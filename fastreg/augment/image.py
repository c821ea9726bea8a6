"""Batch image augmentation: flips, rotations, crops, noise, erasing, mixup and cutmix.

Every function takes a batch ``(N, H, W, C)`` (``layout="NHWC"``) or ``(N, C, H, W)``
(``layout="NCHW"``) of uint8 or float32 images, on the host or on a CUDA device, and keys every
random parameter of sample i by ``(seed, epoch, index_offset + i)`` through Philox
(fastreg.reference.augment): the same sample gets the same transform however the data set is
split into batches or workers, on every backend. ``indices=`` (the samples' dataset ids, one per
batch entry) keys them by id instead, so a shuffled sample gets the same transform whatever
its position, batch or worker (mixup and cutmix: its lambda and box; its partner is another
sample of the batch).

Backends: "numpy" (the reference), "cpu" (Numba), "c" (C, OpenMP, AVX2 / AVX-512 chosen at run
time) and "cuda" (Numba CUDA) implement every op; "auto" on host arrays picks "c" where it is
built (the same bits as "cpu", faster), else "cpu". Agreement with the reference:

=======================================  ===============  ======================================
op                                       "cpu", "c"       "cuda"
=======================================  ===============  ======================================
flips, rot90, integer crops/translation  exact            exact
rotate, resized crop (bilinear)          exact            uint8: +-1; float32: 1e-5 max |x| (FMA)
Gaussian noise, mixup                    exact            uint8: +-1; float32: 1e-5 max |x| (FMA)
erasing, cutmix                          exact            exact
=======================================  ===============  ======================================

Interpolation (fastreg.reference.augment has the exact definition): source points from a
float64 inverse affine map per sample, quantized to 1/256 pixel; bilinear weights in 1/256
steps; uint8 results rounded half up (bilinear) or half to even (noise, mixup) and clipped to
[0, 255].
"""
import numbers

import numpy as np

from .. import _arrays, _dispatch
from ..reference import augment as ref
from . import compose as _c
from .compose import (GaussianNoise, RandomCrop, RandomErasing, RandomFlip, RandomResizedCrop,
                      RandomRot90, RandomRotate)

_COMMON_DOC = """seed : int
        Key of the random parameters, in [0, 2**64).
    epoch : int
        Second key (a new epoch gives new transforms of the same samples), in [0, 2**64).
    index_offset : int
        Global index of the batch's first sample; sample i of the batch is keyed by
        ``index_offset + i`` (< 2**32).
    layout : {"NHWC", "NCHW"}
        Axis order of ``images`` (and of a 4-D ``target``).
    out : array, optional
        Where to write the result (output shape, images' dtype, same device).
    indices : array of int (N,), optional
        The samples' global ids (host integers in [0, 2**32), duplicates allowed) in place of
        ``index_offset + i``; not together with a nonzero index_offset."""


@_dispatch.answers_torch
def random_flip(images, p=0.5, *, direction="horizontal", seed, epoch=0, index_offset=0,
                layout="NHWC", target=None, target_fill=0, out=None, backend="auto", indices=None):
    """Flip each sample with probability p (independently per sample).

    Parameters
    ----------
    images : array (N, H, W, C) or (N, C, H, W), uint8 or float32
        Host (NumPy-viewable) or CUDA device batch; not modified.
    p : float
        Flip probability in [0, 1]: sample i flips when draw 0 (horizontal) / 1 (vertical) of
        its stream is ``< round(p * 2**32)``.
    direction : {"horizontal", "vertical", "both"}
        Left-right, upside-down, or each independently.
    seed, epoch, index_offset, layout
        See the module docstring: parameters are keyed by (seed, epoch, global index).
    target : array, optional
        Aligned mask (N, H, W) or 4-D in ``layout``; flipped the same way.
    target_fill : number
        Unused by flips (kept for a uniform signature).
    out : array, optional
        Result array (images' shape and dtype); must not share memory with images.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}
    indices : array of int (N,), optional
        The samples' global (dataset) ids, keying their parameters in place of
        ``index_offset + i``: host integers in [0, 2**32), duplicates allowed (equal ids get
        equal transforms); not together with a nonzero index_offset.

    Returns
    -------
    array or (array, array)
        The flipped batch (``out`` when given); with ``target``, also the flipped target.

    Raises
    ------
    TypeError
        images not uint8/float32, bad argument types.
    ValueError
        p outside [0, 1], unknown direction or layout, images not 4-D, target of mismatched
        shape, seed/epoch/index_offset out of range, bad out.
    BackendUnavailableError
        A backend that cannot run here.

    Notes
    -----
    Exact copies on every backend.
    """
    return _c.run([RandomFlip(p, direction)], images, seed=seed, epoch=epoch,
                  index_offset=index_offset, layout=layout, target=target,
                  target_fill=target_fill, out=out, backend=backend, indices=indices)


@_dispatch.answers_torch
def random_rot90(images, p=0.75, *, seed, epoch=0, index_offset=0, layout="NHWC", target=None,
                 target_fill=0, out=None, backend="auto", indices=None):
    """Rotate each sample by k quarter turns counter-clockwise (``np.rot90`` on H, W).

    Parameters
    ----------
    images : array (N, S, S, C) or (N, C, S, S), uint8 or float32
        Square images (a batch has one shape, and odd k swap H and W).
    p : float
        Probability of a rotation; a rotated sample turns by 1, 2 or 3 quarters uniformly
        (p = 0.75: k uniform in {0, 1, 2, 3}).
    seed, epoch, index_offset, layout, target, target_fill, out, backend, indices
        As in ``random_flip``.

    Returns
    -------
    array or (array, array)
        The rotated batch, and the rotated target when given.

    Raises
    ------
    ValueError
        Non-square images; otherwise as ``random_flip``.

    Notes
    -----
    Exact copies on every backend.
    """
    return _c.run([RandomRot90(p)], images, seed=seed, epoch=epoch, index_offset=index_offset,
                  layout=layout, target=target, target_fill=target_fill, out=out,
                  backend=backend, indices=indices)


@_dispatch.answers_torch
def random_rotate(images, degrees=15.0, *, p=1.0, fill=0, interpolation="bilinear", seed,
                  epoch=0, index_offset=0, layout="NHWC", target=None, target_fill=0, out=None,
                  backend="auto", indices=None):
    """Rotate each sample about its centre by a random angle, resampling bilinearly.

    Parameters
    ----------
    images : array (N, H, W, C) or (N, C, H, W), uint8 or float32
    degrees : float or (float, float)
        Angle range in degrees, counter-clockwise as displayed; x means (-x, x). Finite.
    p : float
        Probability that a sample is rotated (else angle 0: an exact copy).
    fill : float
        Value of the corners that come from outside the image (uint8: in [0, 255]).
    interpolation : {"bilinear", "nearest"}
    seed, epoch, index_offset, layout, target, target_fill, out, backend, indices
        As in ``random_flip``; the target is resampled by nearest neighbour with
        ``target_fill`` outside.

    Returns
    -------
    array or (array, array)
        The rotated batch (same shape), and the target when given.

    Raises
    ------
    ValueError
        Non-finite or reversed ``degrees``, fill out of range; otherwise as ``random_flip``.

    Notes
    -----
    Angle = lo + (hi - lo) u, u = draw 0 / 2**32 (float64). The inverse map is
    ``src = c + R(angle) (dst - c)``, c = ((W - 1) / 2, (H - 1) / 2). "cpu" equals the reference
    exactly; "cuda" within +-1 (uint8) or 1e-5 relative (float32).
    """
    return _c.run([RandomRotate(degrees, p)], images, seed=seed, epoch=epoch,
                  index_offset=index_offset, layout=layout, target=target,
                  target_fill=target_fill, out=out, backend=backend, fill=fill,
                  interpolation=interpolation, indices=indices)


@_dispatch.answers_torch
def random_crop(images, size, *, padding=0, padding_mode="constant", fill=0, seed, epoch=0,
                index_offset=0, layout="NHWC", target=None, target_fill=0, out=None,
                backend="auto", indices=None):
    """Crop each sample at a random integer offset, after padding (random translation).

    Parameters
    ----------
    images : array (N, H, W, C) or (N, C, H, W), uint8 or float32
    size : int or (int, int)
        Output (height, width); at most the padded size.
    padding : int or (int, int)
        Pixels added on each side (top/bottom, left/right) before cropping. With ``size`` equal
        to the image size this is a translation by up to ``padding`` pixels (CIFAR-style).
    padding_mode : {"constant", "reflect", "edge"}
        ``fill`` outside the image, NumPy's "reflect" (edge pixel not repeated) or "edge" (the
        edge pixel repeated).
    fill : float
        Constant padding value (uint8: in [0, 255]).
    seed, epoch, index_offset, layout, target, target_fill, out, backend, indices
        As in ``random_flip``; the target is padded with ``target_fill`` (constant), reflected
        or repeated (edge).

    Returns
    -------
    array or (array, array)
        The crops ``(N, h, w, C)`` / ``(N, C, h, w)``, and the target crops when given.

    Raises
    ------
    ValueError
        size larger than the padded image, negative padding, unknown padding_mode; otherwise as
        ``random_flip``.

    Notes
    -----
    Offsets (top, left) uniform in [0, H + 2 pad_y - h] x [0, W + 2 pad_x - w] (``(w * n) >>
    32`` of draws 0 and 1): exact copies on every backend, equal to
    ``np.pad(x, mode=padding_mode)[top:top + h, left:left + w]``.
    """
    return _c.run([RandomCrop(size, padding)], images, seed=seed, epoch=epoch,
                  index_offset=index_offset, layout=layout, target=target,
                  target_fill=target_fill, out=out, backend=backend, fill=fill,
                  padding_mode=padding_mode, indices=indices)


@_dispatch.answers_torch
def random_resized_crop(images, size, *, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0),
                        interpolation="bilinear", seed, epoch=0, index_offset=0, layout="NHWC",
                        target=None, target_fill=0, out=None, backend="auto", indices=None):
    """Crop a random box (area fraction and aspect ratio) of each sample and resize it to size.

    Parameters
    ----------
    images : array (N, H, W, C) or (N, C, H, W), uint8 or float32
    size : int or (int, int)
        Output (height, width).
    scale : (float, float)
        Range of the box area as a fraction of the image, within (0, 1].
    ratio : (float, float)
        Range of the box aspect ratio (width / height), sampled log-uniformly; > 0.
    interpolation : {"bilinear", "nearest"}
    seed, epoch, index_offset, layout, target, target_fill, out, backend, indices
        As in ``random_flip``.

    Returns
    -------
    array or (array, array)
        The resized crops, and the target's when given.

    Raises
    ------
    ValueError
        Bad size, scale or ratio; otherwise as ``random_flip``.

    Notes
    -----
    Szegedy et al., "Going deeper with convolutions", CVPR 2015 (torchvision's
    RandomResizedCrop: 10 tries, then a centre crop). No antialiasing when shrinking. Sample
    points of the outer output rows and columns that fall outside the image (by up to half a
    pixel of the source) take the edge pixel, as in torchvision; those that fall outside the
    box but inside the image interpolate with the pixels just beyond the box, where
    torchvision repeats the box's edge pixel (a difference in the outer rows and columns of an
    upscaled interior box only).
    """
    return _c.run([RandomResizedCrop(size, scale, ratio)], images, seed=seed, epoch=epoch,
                  index_offset=index_offset, layout=layout, target=target,
                  target_fill=target_fill, out=out, backend=backend,
                  interpolation=interpolation, indices=indices)


@_dispatch.answers_torch
def gaussian_noise(images, std=0.1, *, seed, epoch=0, index_offset=0, layout="NHWC",
                   target=None, out=None, backend="auto", indices=None):
    """Add N(0, std^2) noise to every value (uint8: then clipped and rounded).

    Parameters
    ----------
    images : array (N, H, W, C) or (N, C, H, W), uint8 or float32
    std : float or (float, float)
        Standard deviation in the images' units (0..255 for uint8), or a range from which each
        sample draws its own (uniformly). Finite, >= 0.
    seed, epoch, index_offset, layout, indices
        As in ``random_flip``.
    target : array, optional
        Passed through unchanged (no noise on masks); returned as is.
    out : array, optional
        Result array; ``out=images`` works in place.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}

    Returns
    -------
    array or (array, array)
        The noisy batch, and ``target`` when given.

    Raises
    ------
    ValueError
        Negative, non-finite or reversed std; otherwise as ``random_flip``.

    Notes
    -----
    Value j (flat index within the sample, in its layout) of global sample i uses stream word
    ``(i << 32) + j`` of the op's noise key: Box-Muller on word pairs, in float32 with
    polynomial log/sin/cos (fastreg.reference.augment.box_muller), identical on "numpy" and
    "cpu". uint8: ``clip(x + std z, 0, 255)`` rounded half to even.
    """
    return _c.run([GaussianNoise(std)], images, seed=seed, epoch=epoch,
                  index_offset=index_offset, layout=layout, target=target, target_fill=0,
                  out=out, backend=backend, indices=indices)


@_dispatch.answers_torch
def random_erasing(images, p=0.5, *, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0.0, seed,
                   epoch=0, index_offset=0, layout="NHWC", target=None, out=None,
                   backend="auto", indices=None):
    """Random erasing (cutout): with probability p, set a random box of each sample to value.

    Parameters
    ----------
    images : array (N, H, W, C) or (N, C, H, W), uint8 or float32
    p : float
        Probability of erasing a sample.
    scale : (float, float)
        Range of the box area as a fraction of the image, within (0, 1].
    ratio : (float, float)
        Aspect ratio range (height / width), log-uniform; > 0.
    value : float
        Value written into the box, all channels (uint8: in [0, 255]).
    seed, epoch, index_offset, layout, indices
        As in ``random_flip``.
    target : array, optional
        Not erased (a mask keeps its labels under the box); returned as is.
    out : array, optional
        Result array; ``out=images`` works in place.
    backend : {"auto", "numpy", "cpu", "c", "cuda"}

    Returns
    -------
    array or (array, array)
        The batch with boxes erased, and ``target`` when given.

    Raises
    ------
    ValueError
        Bad p, scale, ratio or value; otherwise as ``random_flip``.

    Notes
    -----
    Zhong, Zheng, Kang, Li & Yang, "Random erasing data augmentation", AAAI 2020: up to 10
    tries for a box that fits, else nothing is erased. A box fits when it is strictly smaller
    than the image in both directions (``h < H and w < W``, torchvision's
    ``RandomErasing.get_params``), so the whole image is never erased; its position is uniform
    over the ``(H - h + 1) * (W - w + 1)`` places. Exact on every backend.
    """
    return _c.run([RandomErasing(p, scale, ratio, value)], images, seed=seed, epoch=epoch,
                  index_offset=index_offset, layout=layout, target=target, target_fill=0,
                  out=out, backend=backend, indices=indices)


# --- mixup and cutmix -----------------------------------------------------------------------------

def _labels(labels, n, num_classes):
    """Soft labels (N, K) float32 (or float64 when given float64) from class indices or soft."""
    if _arrays.is_device(labels):
        raise TypeError("labels must be a host array (N,) or (N, K); they are mixed on the host")
    y = _arrays.as_host(labels, "labels")
    if y.ndim == 1:
        if y.dtype.kind not in "iu":
            raise TypeError(f"class labels (N,) must be integers, got dtype {y.dtype}")
        if y.shape[0] != n:
            raise ValueError(f"labels has {y.shape[0]} entries for a batch of {n}")
        if isinstance(num_classes, (bool, np.bool_)) or not isinstance(
                num_classes, (numbers.Integral, np.integer)) or num_classes <= 0:
            raise ValueError("num_classes (a positive int) is needed with class-index labels, "
                             f"got {num_classes!r}")
        if n and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"labels must be in [0, {num_classes}), got [{y.min()}, {y.max()}]")
        soft = np.zeros((n, int(num_classes)), np.float32)
        soft[np.arange(n), y] = 1.0
        return soft
    if y.ndim == 2:
        if y.dtype not in _arrays.FLOAT_DTYPES:
            raise TypeError(f"soft labels (N, K) must be float32 or float64, got {y.dtype}")
        if y.shape[0] != n:
            raise ValueError(f"labels has {y.shape[0]} rows for a batch of {n}")
        if not np.all(np.isfinite(y)):
            raise ValueError("soft labels must be finite")
        return y
    raise ValueError(f"labels must be (N,) class indices or (N, K) soft labels, got shape "
                     f"{y.shape}")


def _mix_common(images, labels, alpha, num_classes, seed, epoch, index_offset, layout, out,
                backend, indices, extra=()):
    layout = _c.check_layout(layout)
    arr, dims = _c.check_images(images, layout)
    n = dims[0]
    seed, epoch, index_offset = _c.check_keys(seed, epoch, index_offset, n)
    idx = _c.sample_ids(indices, index_offset, n)
    alpha = _c._real(alpha, "alpha")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    soft = _labels(labels, n, num_classes)
    job = _c.resolve_backend(backend, images, out, *extra)
    device_in = not job.host_input
    xin = images if device_in else arr
    out_arr = _arrays.check_out(out, "out", arr.shape, arr.dtype, [xin], device_in)
    if out is not None and _c._aliases(out, xin):
        raise ValueError("out must not share memory with images (samples read each other)")
    return layout, arr, dims, seed, epoch, idx, soft, job, xin, out_arr


def _mixed_labels(soft, lam, partner):
    w = lam.astype(soft.dtype)[:, None]
    return soft * w + soft[partner] * (soft.dtype.type(1) - w)


@_dispatch.answers_torch
def mixup(images, labels, alpha=0.2, *, num_classes=None, seed, epoch=0, index_offset=0,
          layout="NHWC", out=None, backend="auto", indices=None):
    """Mixup: each sample blended with a partner of the batch, labels blended alike.

    Parameters
    ----------
    images : array (N, H, W, C) or (N, C, H, W), uint8 or float32
    labels : array (N,) of int, or (N, K) float32/float64
        Class indices (one-hot encoded with ``num_classes``) or soft labels; host arrays.
    alpha : float
        lambda ~ Beta(alpha, alpha) per sample, alpha > 0.
    num_classes : int, optional
        Needed with class-index labels.
    seed, epoch, index_offset, layout, out, backend, indices
        As in ``random_flip`` (out must not share memory with images). With ``indices`` a
        sample's lambda follows its id; its partner is drawn among the batch's ids.

    Returns
    -------
    (array, ndarray)
        Mixed images ``lam x_i + (1 - lam) x_partner(i)`` (float32 math; uint8 rounded half to
        even) and mixed soft labels (N, K), float32 (float64 for float64 soft labels).

    Raises
    ------
    TypeError, ValueError
        Bad labels (shape, dtype, range), num_classes missing, alpha <= 0; otherwise as
        ``random_flip``.

    Notes
    -----
    Zhang, Cisse, Dauphin & Lopez-Paz, "mixup: Beyond empirical risk minimization", ICLR 2018.
    lambda is per sample, keyed by its global index: Beta(alpha, alpha) as the ratio of two
    Gamma variates (Marsaglia & Tsang) from the sample's Philox draws, computed for the whole
    batch in vectorized NumPy on the host (``fastreg.reference.augment.beta`` has the exact
    definition), so every backend mixes with the same lambdas. The partner is a cyclic shift of
    the batch
    in a random order keyed by the samples' global indices (no sample is its own partner when
    N > 1): it depends on which samples share the batch, unavoidably.
    """
    layout, arr, dims, seed, epoch, idx, soft, job, xin, out_arr = _mix_common(
        images, labels, alpha, num_classes, seed, epoch, index_offset, layout, out, backend,
        indices)
    n = dims[0]
    lam = ref.sample_params("mixup", seed, epoch, idx, alpha=alpha)["lam"].astype(np.float32)
    partner = ref.partner_of(seed, epoch, idx)
    res = job.target(out_arr, arr.shape, arr.dtype)
    if n and arr.size:
        xc = job.contig(xin)
        job.op("aug_mix")(xc.reshape(n, -1), partner, lam, res.reshape(n, -1))
    return job.finish(res, out_arr), _mixed_labels(soft, lam, partner)


@_dispatch.answers_torch
def cutmix(images, labels, alpha=1.0, *, num_classes=None, seed, epoch=0, index_offset=0,
           layout="NHWC", target=None, out=None, backend="auto", indices=None):
    """CutMix: a box of each sample replaced by the same box of a partner; labels weighted by
    area.

    Parameters
    ----------
    images : array (N, H, W, C) or (N, C, H, W), uint8 or float32
    labels : array (N,) of int, or (N, K) float32/float64
        As in ``mixup``.
    alpha : float
        lambda ~ Beta(alpha, alpha) sets the box area (1 - lambda) H W; alpha > 0.
    num_classes : int, optional
        Needed with class-index labels.
    seed, epoch, index_offset, layout, out, backend, indices
        As in ``mixup``.
    target : array, optional
        Aligned mask (N, H, W) or 4-D in ``layout``: the same boxes are pasted from the
        partner's mask.

    Returns
    -------
    (array, ndarray) or (array, ndarray, array)
        Mixed images, soft labels weighted by the actual (clipped) box area, and the mixed
        target when given.

    Raises
    ------
    TypeError, ValueError
        As ``mixup``; target of mismatched shape.

    Notes
    -----
    Yun, Han, Oh, Chun, Choe & Yoo, "CutMix", ICCV 2019. Box centre uniform over the image,
    clipped at the border; partner as in ``mixup``. Exact on every backend.
    """
    layout, arr, dims, seed, epoch, idx, soft, job, xin, out_arr = _mix_common(
        images, labels, alpha, num_classes, seed, epoch, index_offset, layout, out, backend,
        indices, extra=(target,))
    n, h, w, c = dims
    if target is not None:
        tarr, tdims, tlayout = _c._check_target(target, dims, layout)
    prm = ref.sample_params("cutmix", seed, epoch, idx, alpha=alpha, height=h, width=w)
    partner = ref.partner_of(seed, epoch, idx)
    lam = prm["lam"]
    res = job.target(out_arr, arr.shape, arr.dtype)

    def paste(src, d, lay, dst):
        k = d[3] if lay == "NCHW" else 1
        p = (np.repeat(partner * k, k) + np.tile(np.arange(k), n)).astype(np.int64)
        rects = np.ascontiguousarray(np.repeat(prm["rects"], k, axis=0))
        job.op("aug_paste")(_c.planes(src, d, lay), p, rects, _c.planes(dst, d, lay))

    t_res = None
    if n and arr.size:
        paste(job.contig(xin), dims, layout, res)
    if target is not None:
        tin = target if not job.host_input else tarr
        t_res = job.empty(tarr.shape, tarr.dtype)
        if n and tarr.size:
            paste(job.contig(tin).reshape(_c.shape_of(tdims, tlayout)), tdims, tlayout,
                  t_res.reshape(_c.shape_of(tdims, tlayout)))
    result = (job.finish(res, out_arr), _mixed_labels(soft, lam, partner))
    if target is None:
        return result
    return result + (job.finish(t_res, None),)
