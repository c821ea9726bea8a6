"""RandAugment and TrivialAugmentWide on uint8 batches, with torchvision v2's op lists and
magnitude bins (written down in fastreg.reference.augment_color: ``POLICY_OPS``,
``magnitude_bins``).

Each sample draws its own ops (and, for TrivialAugmentWide, its magnitude bin) from the Philox
stream keyed by (seed, epoch, global index): the same sample gets the same transform however the
data set is batched. A slot of the policy is one pass over the batch: the colour ops of every
sample in one aug_color call, the geometric ones (shear, translate, rotate) resampled by the
backend's aug_affine (nearest by default, as torchvision's policies), fill outside, one call
per run of consecutive samples on host arrays (no copy of the batch).
"""
import numpy as np

from .. import _arrays
from ..reference import augment_color as refc
from . import color as _color
from . import compose as _c


class _Policy(_color._ColorOp):
    policy = None

    def _common(self, num_magnitude_bins, interpolation, fill):
        nb = _arrays.check_int(num_magnitude_bins, "num_magnitude_bins")
        if nb < 2:
            raise ValueError(f"num_magnitude_bins must be >= 2, got {nb}")
        self.num_magnitude_bins = nb
        self.interpolation = _arrays.check_choice(interpolation, "interpolation",
                                                  _c.INTERPOLATIONS)
        self.fill = _c.check_fill(fill, np.uint8)

    def params(self, seed, epoch, idx, height, width, position=0):
        """Per-sample (op index into POLICY_OPS (N, S), signed magnitude (N, S))."""
        return refc.policy_params(self.policy, seed, epoch, idx, position, self._slots(),
                                  getattr(self, "magnitude", 0), self.num_magnitude_bins,
                                  height, width)

    def apply(self, job, src, res, dims, layout, seed, epoch, idx, position):
        n, h, w, c = dims
        ops, mags = self.params(seed, epoch, idx, h, w, position)
        cur = src
        for s in range(ops.shape[1]):
            codes, params, geo, mats = refc.slot_plan(ops[:, s], mags[:, s], h, w)
            if cur is res:
                codes = np.where(codes == refc.IDENTITY, refc.SKIP, codes)
            if job.device and geo.any():
                # device arrays have no gather: colour ops (geometric samples copied), then one
                # resampling of the whole batch, identity maps (an exact copy by nearest
                # neighbour) for the colour samples
                codes = np.where(geo, refc.IDENTITY, codes)
                _color.run_color(job, cur, res, layout, codes, params)
                eye = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
                m = np.where(geo[:, None, None], mats, eye[None])
                tmp = job.empty(tuple(res.shape), res.dtype)
                job.op("aug_affine")(_c.planes(res, dims, layout), np.ascontiguousarray(
                    _c.per_plane(m, dims, layout)), 0, self.fill,
                    self.interpolation == "nearest", _c.planes(tmp, dims, layout))
                planes = dims[0] * (c if layout == "NCHW" else 1)
                no = np.zeros(planes, np.uint8)
                job.op("aug_flip")(_c.planes(tmp, dims, layout), no, no,
                                   _c.planes(res, dims, layout))    # a copy back
                cur = res
                continue
            _color.run_color(job, cur, res, layout, codes, params)
            sel = np.flatnonzero(geo)
            if sel.size:
                self._resample(job, cur, res, sel, mats[sel], dims, layout)
            cur = res
        if cur is not res:   # no slot: a copy
            res[...] = src

    def _resample(self, job, src, res, sel, mats, dims, layout):
        """res[sel[k]] = aug_affine(src[sel[k]], mats[k]) on host arrays: one call per run of
        consecutive samples, reading src's and writing res's samples where they are (no gather
        and scatter copies of the batch); in place (src is res) a run goes through a scratch of
        the longest run's size and is copied back."""
        n, h, w, c = dims
        nearest = self.interpolation == "nearest"
        contiguous = src.flags.c_contiguous and res.flags.c_contiguous
        if not contiguous:   # a copy of the selected samples, resampled, copied back
            xs = np.ascontiguousarray(src[sel])
            tmp = np.empty_like(xs)
            d = (len(sel), h, w, c)
            m = np.ascontiguousarray(_c.per_plane(mats, d, layout))
            job.op("aug_affine")(_c.planes(xs, d, layout), m, 0, self.fill, nearest,
                                 _c.planes(tmp, d, layout))
            res[sel] = tmp
            return
        inplace = np.shares_memory(src, res)
        runs = _c.id_runs(sel)
        tmp = np.empty((max(b - a for a, b in runs),) + src.shape[1:], src.dtype) \
            if inplace else None
        for a, b in runs:
            first, stop = int(sel[a]), int(sel[b - 1]) + 1
            d = (b - a, h, w, c)
            out = tmp[:b - a] if inplace else res[first:stop]
            job.op("aug_affine")(_c.planes(src[first:stop], d, layout),
                                 np.ascontiguousarray(_c.per_plane(mats[a:b], d, layout)), 0,
                                 self.fill, nearest, _c.planes(out, d, layout))
            if inplace:
                res[first:stop] = out


class RandAugment(_Policy):
    """RandAugment (Cubuk, Zoph, Shlens & Le, "RandAugment: Practical automated data
    augmentation with a reduced search space", 2020), as torchvision.transforms.v2.RandAugment.

    Parameters
    ----------
    num_ops : int
        Ops applied in sequence to each sample (>= 0).
    magnitude : int
        Magnitude bin, in [0, num_magnitude_bins).
    num_magnitude_bins : int
        >= 2.
    interpolation : {"nearest", "bilinear"}
        Of the geometric ops (fastreg's aug_affine rules).
    fill : number
        Value outside the image after shear, translate, rotate (in [0, 255]).

    Notes
    -----
    Each slot draws one of 14 ops uniformly (Identity, ShearX, ShearY, TranslateX, TranslateY,
    Rotate, Brightness, Color, Contrast, Sharpness, Posterize, Solarize, AutoContrast, Equalize)
    and, for the signed ones, a sign with probability 1/2 (torchvision: ``rand() <= 0.5``).
    Magnitudes at bin ``magnitude`` of: shear linspace(0, 0.3) (shear angle atan(m)), translate
    linspace(0, 150/331 W or H) pixels (truncated to int), rotate linspace(0, 30) degrees,
    brightness / colour / contrast / sharpness factor 1 + linspace(0, 0.9), posterize bits
    round(8 - i / ((bins - 1) / 4)), solarize threshold 255 linspace(1, 0). Slot s of sample i
    uses draws 2s (op) and 2s + 1 (sign). Geometric ops resample by nearest neighbour with
    fastreg's 1/256-pixel rule, where torchvision uses grid_sample: equal except at rounding
    ties.
    """
    policy = "randaugment"
    name = "randaugment"

    def __init__(self, num_ops=2, magnitude=9, num_magnitude_bins=31, interpolation="nearest",
                 fill=0):
        self.num_ops = _arrays.check_int(num_ops, "num_ops")
        if self.num_ops < 0:
            raise ValueError(f"num_ops must be >= 0, got {self.num_ops}")
        if self.num_ops > 1000:
            raise ValueError(f"num_ops must be <= 1000, got {self.num_ops}")
        self._common(num_magnitude_bins, interpolation, fill)
        self.magnitude = _arrays.check_int(magnitude, "magnitude")
        if not 0 <= self.magnitude < self.num_magnitude_bins:
            raise ValueError(f"magnitude must be in [0, {self.num_magnitude_bins}), got "
                             f"{self.magnitude}")

    def _slots(self):
        return self.num_ops


class TrivialAugmentWide(_Policy):
    """TrivialAugment Wide (Mueller & Hutter, "TrivialAugment: Tuning-free yet state-of-the-art
    data augmentation", ICCV 2021), as torchvision.transforms.v2.TrivialAugmentWide.

    Parameters
    ----------
    num_magnitude_bins : int
        >= 2.
    interpolation : {"nearest", "bilinear"}
    fill : number
        In [0, 255].

    Notes
    -----
    One op per sample, uniform among the 14 of ``RandAugment`` (draw 0), a magnitude bin
    uniform in [0, num_magnitude_bins) (draw 1) and a sign (draw 2). Wide ranges: shear
    linspace(0, 0.99), translate linspace(0, 32) pixels, rotate linspace(0, 135) degrees,
    brightness / colour / contrast / sharpness 1 + linspace(0, 0.99), posterize
    round(8 - i / ((bins - 1) / 6)) bits, solarize 255 linspace(1, 0).
    """
    policy = "trivialaugment"
    name = "trivialaugment"

    def __init__(self, num_magnitude_bins=31, interpolation="nearest", fill=0):
        self._common(num_magnitude_bins, interpolation, fill)

    def _slots(self):
        return 1


__all__ = ["RandAugment", "TrivialAugmentWide"]
