"""DropBlock forward on a ResNet stage-2 sized batch (32, 64, 56, 56) float32, block 7, p 0.1, on
the "c", "cpu" and "numpy" backends in both layouts, against timm's ``drop_block_fast_2d``
written out in torch (``bernoulli_`` + ``max_pool2d`` + normalization) on the same data; and
mixup (the vectorized Beta draw) on 256 8x8x3 uint8 images against plain NumPy with
``np.random.beta``.

    pytest bench/bench_dropblock.py --benchmark-only
    pytest bench/bench_dropblock.py --benchmark-disable       CI smoke: every case once, tiny

Bytes that must move for DropBlock: read x, write the result, write and read the uint8 block
mask (``2 * 4 n + 2 n``); ``extra_info["gb_per_s"]`` holds the rate.
"""
import numpy as np
import pytest

import fastreg
import fastreg.augment as A

TIMED = (32, 64, 56, 56)
SMOKE = (2, 4, 9, 9)


def _shape(request):
    return SMOKE if request.config.getoption("benchmark_disable", False) else TIMED


def _need(backend):
    reason = fastreg.available_backends()[backend]
    if reason is not None:
        pytest.skip(f"backend {backend!r} unavailable: {reason}")


def _record(benchmark, nbytes):
    stats = getattr(benchmark, "stats", None)
    stats = getattr(stats, "stats", stats)
    seconds = getattr(stats, "min", None)
    if isinstance(seconds, (int, float)) and seconds > 0:
        benchmark.extra_info["gb_per_s"] = nbytes / seconds / 1e9


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("host", ["c", "cpu", "numpy"])
def test_drop_block(benchmark, request, host, layout):
    _need(host)
    shape = _shape(request)
    if host == "numpy" and shape == TIMED:
        shape = (4,) + shape[1:]  # the reference takes ~2 s on the full batch
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    out = np.empty_like(x)
    block = min(7, *shape[2:])

    def run():
        return fastreg.drop_block(x, 0.1, block, seed=1, layout=layout, out=out, backend=host)

    run()  # JIT compilation, first touch
    benchmark.group = f"drop_block {shape}"
    benchmark(run)
    _record(benchmark, 10 * x.size)


def test_torch_timm_drop_block_fast_2d(benchmark, request):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    shape = _shape(request)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    _, _, h, w = shape
    bs = min(7, h, w)
    k = min(bs, h, w)
    gamma = 0.1 * (w * h) / k ** 2 / ((w - bs + 1) * (h - bs + 1))

    def run():
        seeds = torch.empty_like(x).bernoulli_(gamma)
        keep = 1 - F.max_pool2d(seeds, kernel_size=k, stride=1, padding=k // 2)
        scale = (keep.numel() / keep.sum().add(1e-6)).to(x.dtype)
        return x * keep * scale

    run()
    benchmark.group = f"drop_block {shape}"
    benchmark(run)
    _record(benchmark, 10 * x.numel())


@pytest.mark.parametrize("host", ["c", "cpu", "numpy"])
def test_mixup(benchmark, host):
    _need(host)
    x = np.random.default_rng(0).integers(0, 256, (256, 8, 8, 3)).astype(np.uint8)
    y = np.arange(256) % 10

    def run():
        return A.mixup(x, y, 0.2, num_classes=10, seed=1, backend=host)

    run()
    benchmark.group = "mixup 256 8x8x3 uint8"
    benchmark(run)


def test_plain_numpy_mixup(benchmark):
    """The peer: np.random.beta lambdas, a random permutation, float32 blend, uint8 rounding."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (256, 8, 8, 3)).astype(np.uint8)

    def run():
        lam = rng.beta(0.2, 0.2, 256).astype(np.float32)[:, None, None, None]
        xf = x.astype(np.float32)
        mixed = xf * lam + xf[rng.permutation(256)] * (np.float32(1) - lam)
        return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)

    benchmark.group = "mixup 256 8x8x3 uint8"
    benchmark(run)
