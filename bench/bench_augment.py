"""Image augmentation on batches of 224x224x3 uint8 images: images/s and GB/s of random_flip,
random_rotate and gaussian_noise on the "cpu" (Numba) and "c" (OpenMP) backends at 1 and 2
threads, against albumentations 2.x (HorizontalFlip, Rotate, GaussNoise; OpenCV at one thread,
one image per call as albumentations works) on the same images in the same run.

    pytest bench/bench_augment.py --benchmark-only
    pytest bench/bench_augment.py --benchmark-disable       CI smoke: every case once, 2 images

Bytes that must move: every op reads the batch and writes the result (``2 * N * 224 * 224 * 3``).
``extra_info["images_per_s"]`` holds the throughput; the GB/s summary of fastreg's plugin gives
the fraction of this machine's bandwidth (``fastreg.bench.bandwidth``). Published single-thread
figures for albumentations 2.0: HorizontalFlip ~12,600, Rotate ~3,100, GaussianNoise ~230
images/s.
"""
import numpy as np
import pytest

import fastreg.augment as A

SHAPE = (224, 224, 3)
TIMED_BATCH = 64
SMOKE_BATCH = 2
OPS = ("flip", "rotate", "noise")


def _batch(request):
    n = SMOKE_BATCH if request.config.getoption("benchmark_disable", False) else TIMED_BATCH
    return np.random.default_rng(0).integers(0, 256, (n,) + SHAPE).astype(np.uint8)


def _fastreg_call(op, x, out, backend):
    if op == "flip":
        return lambda: A.random_flip(x, 0.5, seed=1, out=out, backend=backend)
    if op == "rotate":
        return lambda: A.random_rotate(x, 30.0, seed=1, out=out, backend=backend)
    return lambda: A.gaussian_noise(x, 10.0, seed=1, out=out, backend=backend)


def _record_rate(bb, n):
    stats = getattr(bb.benchmark, "stats", None)
    stats = getattr(stats, "stats", stats)
    seconds = getattr(stats, "min", None)
    if isinstance(seconds, (int, float)) and seconds > 0:
        bb.extra_info["images_per_s"] = n / seconds
        print(f"\n{bb.group}: {n / seconds:,.0f} images/s")


def _omp_set_num_threads(n):
    """omp_set_num_threads of the OpenMP runtime the C backend runs on (libgomp); None if it
    cannot be reached, else the previous count."""
    import ctypes
    try:
        gomp = ctypes.CDLL("libgomp.so.1")
    except OSError:
        return None
    previous = gomp.omp_get_max_threads()
    gomp.omp_set_num_threads(int(n))
    return previous


@pytest.fixture(params=["cpu", "c"])
def aug_backend(request):
    """(bench/conftest.py parametrizes any "backend" argument over every backend; augmentation
    compares the two CPU ones.)"""
    import fastreg
    reason = fastreg.available_backends()[request.param]
    if reason is not None:
        pytest.skip(f"backend {request.param!r} unavailable: {reason}")
    return request.param


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def nthreads(request, aug_backend):
    """Numba's thread count for "cpu", OpenMP's (as OMP_NUM_THREADS would set it) for "c"."""
    if aug_backend == "cpu":
        import numba
        if request.param > numba.config.NUMBA_NUM_THREADS:
            pytest.skip(f"Numba was started with {numba.config.NUMBA_NUM_THREADS} threads")
        previous = numba.get_num_threads()
        numba.set_num_threads(request.param)
        yield request.param
        numba.set_num_threads(previous)
        return
    previous = _omp_set_num_threads(request.param)
    if previous is None:
        pytest.skip("libgomp not found: cannot set the C backend's thread count")
    yield request.param
    _omp_set_num_threads(previous)


@pytest.mark.parametrize("op", OPS)
def test_fastreg_augment(bandwidth_benchmark, request, op, aug_backend, nthreads):
    x = _batch(request)
    out = np.empty_like(x)
    fn = _fastreg_call(op, x, out, aug_backend)
    fn()  # warm up: JIT compilation (or cache load) and first touch of out
    bandwidth_benchmark.group = f"augment-{op}-224x224x3-uint8"
    bandwidth_benchmark(fn, nbytes=2 * x.nbytes)
    _record_rate(bandwidth_benchmark, x.shape[0])


@pytest.mark.parametrize("op", OPS)
def test_albumentations(bandwidth_benchmark, request, op):
    """The peer, one thread: albumentations' transform applied image by image."""
    al = pytest.importorskip("albumentations", reason="albumentations is not installed")
    cv2 = pytest.importorskip("cv2", reason="opencv is not installed")
    cv2.setNumThreads(1)
    transform = {"flip": lambda: al.HorizontalFlip(p=1.0),
                 "rotate": lambda: al.Rotate(limit=30, p=1.0),
                 "noise": lambda: al.GaussNoise(std_range=(0.04, 0.04), p=1.0)}[op]()
    x = _batch(request)

    def fn():
        for img in x:
            transform(image=img)

    fn()
    bandwidth_benchmark.group = f"augment-{op}-224x224x3-uint8"
    bandwidth_benchmark(fn, nbytes=2 * x.nbytes)
    _record_rate(bandwidth_benchmark, x.shape[0])
