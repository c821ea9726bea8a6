"""RandAugment(2, 9), TrivialAugmentWide, ColorJitter(0.4, 0.4, 0.4) (and with hue 0.1),
GaussianBlur (kernel 7 and 23, sigma in (0.1, 2)) and Normalize on a batch of uint8 224x224x3
images (default 256): fastreg ("cpu", "c") against albumentations' equivalent
per-image ops in the same run, when albumentations is installed.

    python bench/bench_augment_policies.py [--n 256] [--reps 5] [--threads N] [--backends c]

Interleaved repetitions; min and median wall time per op, and the min process CPU time (all
threads: on a loaded machine the work done, which waiting for the cores does not inflate); the
load average before and after. ``--threads`` sets fastreg's threads and OpenCV's (default:
fastreg's default, OpenCV's own). albumentations equivalents (per image, its
own RNG): RandAugment ~ SomeOf(n=2) of Affine shear/translate/rotate, RandomBrightnessContrast,
ColorJitter(saturation), Sharpen, Posterize, Solarize, Equalize, AutoContrast (where present);
TrivialAugmentWide ~ OneOf of the same; ColorJitter; GaussianBlur with the same kernel size and
sigma range; Normalize.
"""
import argparse
import os
import statistics
import time

import numpy as np

import fastreg
import fastreg.augment as A


def _albu():
    try:
        import albumentations as alb
    except ImportError:
        return None
    ops = [alb.Affine(shear={"x": (-17, 17)}, p=1), alb.Affine(shear={"y": (-17, 17)}, p=1),
           alb.Affine(translate_px={"x": (-100, 100)}, p=1),
           alb.Affine(translate_px={"y": (-100, 100)}, p=1), alb.Affine(rotate=(-30, 30), p=1),
           alb.RandomBrightnessContrast(0.5, 0, p=1), alb.ColorJitter(0, 0, 0.5, 0, p=1),
           alb.RandomBrightnessContrast(0, 0.5, p=1), alb.Sharpen(p=1), alb.Posterize(p=1),
           alb.Solarize(p=1), alb.Equalize(p=1)]
    if hasattr(alb, "AutoContrast"):
        ops.append(alb.AutoContrast(p=1))
    return {"RandAugment": alb.SomeOf(ops, n=2, p=1), "TrivialAugmentWide": alb.OneOf(ops, p=1),
            "ColorJitter": alb.ColorJitter(0.4, 0.4, 0.4, 0, p=1),
            "ColorJitter+hue": alb.ColorJitter(0.4, 0.4, 0.4, 0.1, p=1),
            **{f"GaussianBlur{k}": alb.GaussianBlur(blur_limit=(k, k), sigma_limit=(0.1, 2.0),
                                                    p=1) for k in (7, 23)},
            "Normalize": alb.Normalize()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--backends", default="cpu,c", help="fastreg backends, comma-separated")
    args = ap.parse_args()
    if args.threads:
        fastreg.set_num_threads(args.threads)
        try:
            import cv2
            cv2.setNumThreads(args.threads)
        except ImportError:
            pass
    load0 = os.getloadavg()
    x = np.random.default_rng(0).integers(0, 256, (args.n, 224, 224, 3), dtype=np.uint8)
    ops = {"RandAugment": A.RandAugment(2, 9), "TrivialAugmentWide": A.TrivialAugmentWide(),
           "ColorJitter": A.ColorJitter(0.4, 0.4, 0.4),
           "ColorJitter+hue": A.ColorJitter(0.4, 0.4, 0.4, 0.1),
           "GaussianBlur7": A.GaussianBlur(7, (0.1, 2.0)),
           "GaussianBlur23": A.GaussianBlur(23, (0.1, 2.0))}
    norm = A.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    out8 = np.empty_like(x)
    outf = np.empty(x.shape, np.float32)
    backends = [b for b in args.backends.split(",") if fastreg.available_backends()[b] is None]
    runners = {}
    for name, op in ops.items():
        for be in backends:
            runners[(name, be)] = (lambda op=op, be=be: op(x, seed=1, epoch=0, out=out8,
                                                           backend=be))
    for be in backends:
        runners[("Normalize", be)] = lambda be=be: norm(x, out=outf, backend=be)
    albu = _albu()
    if albu is not None:
        for name, t in albu.items():
            runners[(name, "albumentations")] = lambda t=t: [t(image=img)["image"] for img in x]
    for f in runners.values():   # warm-up (JIT compile)
        f()
    times = {k: [] for k in runners}
    cpu = {k: [] for k in runners}
    for _ in range(args.reps):
        for k, f in runners.items():
            c0, t0 = time.process_time(), time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    load1 = os.getloadavg()
    print(f"batch {args.n}x224x224x3 uint8, fastreg threads {fastreg.get_num_threads()}, "
          f"albumentations {'installed' if albu else 'NOT installed'}, load average "
          f"{load0[0]:.2f} -> {load1[0]:.2f}")
    for (name, be), ts in times.items():
        peer = times.get((name, "albumentations"))
        ratio = f"  {min(peer) / min(ts):5.2f}x albumentations (min)" \
            if peer and be != "albumentations" else ""
        print(f"{name:20s} {be:15s} min {1e3 * min(ts):9.1f} ms  median "
              f"{1e3 * statistics.median(ts):9.1f} ms  cpu min {1e3 * min(cpu[(name, be)]):9.1f} ms"
              f"{ratio}")


if __name__ == "__main__":
    main()
