"""Data augmentation: batch kernels keyed per sample by (seed, epoch, global index).

Images (fastreg.augment.image): ``random_flip``, ``random_rot90``, ``random_rotate``,
``random_crop``, ``random_resized_crop``, ``gaussian_noise``, ``random_erasing``, ``mixup``,
``cutmix``, and ``Compose`` with the op settings ``RandomFlip``, ``RandomRot90``,
``RandomRotate``, ``RandomCrop``, ``RandomResizedCrop``, ``GaussianNoise``, ``RandomErasing``.
Every backend ("numpy", "cpu", "c", "cuda") gives the same bits on the CPU.
Colour (fastreg.augment.color, uint8, all four backends): ``RandAugment``, ``TrivialAugmentWide``
(fastreg.augment.policies), ``ColorJitter``, ``GaussianBlur``, ``Normalize`` and the
deterministic ``adjust_*`` (hue included), ``posterize``, ``solarize``, ``autocontrast``,
``equalize``. Importing this package loads no backend.
"""
from .compose import (Compose, GaussianNoise, RandomCrop, RandomErasing, RandomFlip,
                      RandomResizedCrop, RandomRot90, RandomRotate)
from .image import (cutmix, gaussian_noise, mixup, random_crop, random_erasing, random_flip,
                    random_resized_crop, random_rot90, random_rotate)
from .color import (ColorJitter, GaussianBlur, Normalize, adjust_brightness, adjust_contrast,
                    adjust_hue, adjust_saturation, adjust_sharpness, autocontrast, equalize, gaussian_blur,
                    normalize, posterize, solarize)
from .policies import RandAugment, TrivialAugmentWide
from . import text

__all__ = ["random_flip", "random_rot90", "random_rotate", "random_crop", "random_resized_crop",
           "gaussian_noise", "random_erasing", "mixup", "cutmix", "Compose", "RandomFlip",
           "RandomRot90", "RandomRotate", "RandomCrop", "RandomResizedCrop", "GaussianNoise",
           "RandomErasing"]
__all__ += ["RandAugment", "TrivialAugmentWide", "ColorJitter", "GaussianBlur", "Normalize",
            "adjust_brightness", "adjust_saturation", "adjust_contrast", "adjust_sharpness",
            "adjust_hue", "posterize", "solarize", "autocontrast", "equalize", "gaussian_blur", "normalize"]
