"""Adapter from the Trainer's ``augment`` hook to fastreg.augment's image kernels.

The Trainer calls ``augment(batch, seed, epoch, index_offset)`` with a batch of flat feature rows
``(N, H*W)``; fastreg.augment works on image batches ``(N, H, W, C)`` keyed by
``(seed, epoch, index_offset + i)``. ``image_augment`` bridges the two: it reshapes, applies a
random translation (``RandomCrop`` with padding), a small rotation and Gaussian noise, and
reshapes back, writing into a buffer it reuses.

The Trainer's ``mix`` hook, ``mix(batch, labels, seed, epoch, index_offset) -> (batch,
soft_labels)``, mixes samples and their labels; ``image_mixup`` and ``image_cutmix`` build one
from ``fastreg.augment.mixup`` / ``cutmix`` (the soft labels then train through
``fastreg.cross_entropy``).

fastreg.augment may be missing (it is optional): ``unavailable_reason()`` says why, and
``image_augment`` raises ``AugmentUnavailableError`` with that reason.
"""
import numpy as np

from ._xp import array_module


class AugmentUnavailableError(RuntimeError):
    """fastreg.augment cannot be imported (or lacks what the adapter needs)."""


def _module():
    try:
        from fastreg import augment
    except Exception as exc:   # any import failure means: no augmentation here
        raise AugmentUnavailableError(f"fastreg.augment is not available: "
                                      f"{type(exc).__name__}: {exc}") from None
    if all(hasattr(augment, n) for n in ("Compose", "RandomCrop", "RandomRotate",
                                         "GaussianNoise")):
        return augment
    if all(hasattr(augment, n) for n in ("random_crop", "random_rotate", "gaussian_noise")):
        return augment
    raise AugmentUnavailableError("fastreg.augment has neither Compose/RandomCrop/RandomRotate/"
                                  "GaussianNoise nor random_crop/random_rotate/gaussian_noise")


def unavailable_reason():
    """Why ``image_augment`` cannot work here, or None if it can.

    Parameters
    ----------
    None

    Returns
    -------
    str or None
    """
    try:
        _module()
    except AugmentUnavailableError as exc:
        return str(exc)
    return None


def image_augment(image_shape, *, shift=1, degrees=10.0, noise_std=0.05, backend="auto"):
    """An ``augment`` callable for the Trainer: translate, rotate and add noise to images.

    Parameters
    ----------
    image_shape : (int, int)
        (H, W) of the images; batches arrive as rows of ``H * W`` float32 values (float64
        rows, a float64 model's, are augmented in float32 and returned as float64).
    shift : int
        Random translation by up to ``shift`` pixels in each direction (a crop of the image
        padded with ``shift`` zeros on every side).
    degrees : float
        Rotation by an angle uniform in ``[-degrees, degrees]``.
    noise_std : float
        Standard deviation of the additive Gaussian noise (in the inputs' units).
    backend : str
        fastreg backend.

    Returns
    -------
    callable
        ``augment(batch, seed, epoch, index_offset) -> batch``: sample ``i`` of the batch is
        transformed with the random draws of key ``(seed, epoch, index_offset + i)``; the result
        is a reused buffer (valid until the next call).

    Raises
    ------
    AugmentUnavailableError
        fastreg.augment cannot be imported.
    """
    aug = _module()
    h, w = (int(s) for s in image_shape)
    bufs = {}
    if hasattr(aug, "Compose"):
        # geometric ops fused into one resampling pass, then the noise
        pipeline = aug.Compose([aug.RandomCrop((h, w), padding=shift),
                                aug.RandomRotate(degrees), aug.GaussianNoise(noise_std)])

        def run(images, seed, epoch, index_offset, out):
            return pipeline(images, seed=seed, epoch=epoch, index_offset=index_offset,
                            layout="NHWC", out=out, backend=backend)
    else:
        def run(images, seed, epoch, index_offset, out):
            # one seed per op, so that the draws of different ops are independent
            keys = np.random.SeedSequence([int(seed), 2]).generate_state(3, np.uint64)
            kw = dict(epoch=epoch, index_offset=index_offset, layout="NHWC", backend=backend)
            y = aug.random_crop(images, (h, w), padding=shift, seed=int(keys[0]), **kw)
            y = aug.random_rotate(y, degrees, seed=int(keys[1]), **kw)
            return aug.gaussian_noise(y, noise_std, seed=int(keys[2]), out=out, **kw)

    def augment(batch, seed, epoch, index_offset):
        xp = array_module(batch)
        n = batch.shape[0]
        images = batch.reshape(n, h, w, 1)
        if images.dtype == np.float64:   # a float64 model: augmented in float32, as the mixes
            images = images.astype(np.float32)
        key = (n, images.dtype)
        out = bufs.get(key)
        if out is None:
            out = bufs[key] = xp.empty((n, h, w, 1), images.dtype)
        y = run(images, seed, epoch, index_offset, out)
        return y.reshape(n, h * w).astype(batch.dtype, copy=False)

    return augment


def _image_mix(kind, image_shape, num_classes, alpha, backend):
    aug = _module()
    fn = getattr(aug, kind, None)
    if fn is None:
        raise AugmentUnavailableError(f"fastreg.augment has no {kind}")
    h, w = (int(s) for s in image_shape)
    k = int(num_classes)
    if k < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
    bufs, keys = {}, {}

    def mix(batch, labels, seed, epoch, index_offset):
        xp = array_module(batch)
        n = batch.shape[0]
        key = keys.get(seed)
        if key is None:   # a key of its own: draws independent of image_augment's
            key = keys[seed] = int(np.random.SeedSequence([int(seed), 3]).generate_state(
                1, np.uint64)[0])
        images = batch.reshape(n, h, w, 1)
        if images.dtype != np.float32:     # fastreg.augment mixes uint8 or float32 images
            images = images.astype(np.float32)
        out = bufs.get(n)
        if out is None:
            out = bufs[n] = xp.empty((n, h, w, 1), np.float32)
        mixed, soft = fn(images, labels, alpha, num_classes=k, seed=key, epoch=epoch,
                         index_offset=index_offset, layout="NHWC", out=out, backend=backend)
        return mixed.reshape(n, h * w).astype(batch.dtype, copy=False), soft

    return mix


def image_mixup(image_shape, num_classes, alpha=0.2, *, backend="auto"):
    """A ``mix`` callable for the Trainer: mixup (``fastreg.augment.mixup``) of image rows.

    Parameters
    ----------
    image_shape : (int, int)
        (H, W) of the images; batches arrive as rows of ``H * W`` values.
    num_classes : int
        K: the soft labels are (N, K).
    alpha : float
        lambda ~ Beta(alpha, alpha) per sample, alpha > 0 (timm's default mixup_alpha is 0.8,
        the paper's ImageNet setting 0.2).
    backend : str
        fastreg backend.

    Returns
    -------
    callable
        ``mix(batch, labels, seed, epoch, index_offset) -> (batch, soft_labels)``: sample
        ``i`` is mixed with the draws of key ``(seed, epoch, index_offset + i)`` (the seed
        derived from the Trainer's, independent of ``image_augment``'s); the mixing is done in
        float32 (as fastreg.augment does) and the batch returned in its own dtype.

    Raises
    ------
    AugmentUnavailableError
        fastreg.augment cannot be imported.
    ValueError
        num_classes < 1.
    """
    return _image_mix("mixup", image_shape, num_classes, alpha, backend)


def image_cutmix(image_shape, num_classes, alpha=1.0, *, backend="auto"):
    """A ``mix`` callable for the Trainer: CutMix (``fastreg.augment.cutmix``) of image rows.

    Parameters
    ----------
    image_shape : (int, int)
        (H, W) of the images; batches arrive as rows of ``H * W`` values.
    num_classes : int
        K: the soft labels are (N, K), weighted by the pasted box's area.
    alpha : float
        lambda ~ Beta(alpha, alpha) sets the box area, alpha > 0 (timm's default 1.0).
    backend : str
        fastreg backend.

    Returns
    -------
    callable
        ``mix(batch, labels, seed, epoch, index_offset) -> (batch, soft_labels)``, keyed as
        ``image_mixup``'s.

    Raises
    ------
    AugmentUnavailableError
        fastreg.augment cannot be imported.
    ValueError
        num_classes < 1.
    """
    return _image_mix("cutmix", image_shape, num_classes, alpha, backend)
