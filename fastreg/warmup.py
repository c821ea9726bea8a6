"""Compile the Numba kernels ahead of use: ``fastreg warmup`` (or ``fastreg.warmup.warmup()``).

The "cpu" backend compiles each kernel on its first call (Numba, ``cache=True``), which costs
seconds per op in a fresh environment. ``warmup`` calls every public op once on tiny inputs, in
each dtype and variant that selects another compiled specialization (float32 / float64; uint8 /
float32 images; NHWC / NCHW; optional arrays given or None), so that the machine code lands in
Numba's on-disk cache; a later process (or a container built from this one) loads it instead of
compiling. Paths that only large or unusual inputs take are reached on tiny ones too: the
streaming-store kernels of penalty gradients and proximal steps (taken for outputs of
``fastreg.cpu.penalty.STREAM_MIN_BYTES`` and more: warmup lowers that limit to 0 around those
calls, and restores it), the per-array kernels of the list ops (ema, clip: taken for
non-contiguous arrays; contiguous lists make one launch for the whole list), and the float16 /
bfloat16 conversion passes. Every kernel is compiled once (``fastreg.cpu._jit``): its parallel
launch runs the same machine code in shares on fastreg's threads, so tiny inputs, which run on
the calling thread, compile everything a large call needs. Not covered: read-only input arrays
(Numba types them apart from writable ones, so an op on a read-only array compiles its kernel
again at the first such call).

The cache goes where Numba puts it: ``NUMBA_CACHE_DIR`` when set, else ``__pycache__`` next to
fastreg's sources (or a per-user directory when those are read-only). The "c" backend is
compiled when fastreg is installed and "numpy" needs no compiling: for them ``warmup`` only says
so.
"""
import contextlib
import sys
import time

import numpy as np

from . import _registry

FLOATS = (np.float32, np.float64)
IMAGES = (np.uint8, np.float32)   # the image dtypes fastreg.augment accepts
LAYOUTS = ("NHWC", "NCHW")


def _x(shape, dtype, seed=0):
    """Tiny deterministic input: values in [-2, 2) (images: uint8 or floats in [0, 1))."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    if np.dtype(dtype) == np.float32 and len(shape) == 4:
        return rng.random(shape, dtype=np.float32)
    return (rng.random(shape) * 4 - 2).astype(dtype)


# ---- one function per public op; each runs it on tiny inputs in every dtype and variant ------

def _random(backend):
    import fastreg
    fastreg.random.philox4x32(np.zeros((3, 4), np.uint32), np.ones((3, 2), np.uint32),
                              backend=backend)
    fastreg.random.random_bits((5,), seed=1, offset=0, backend=backend)
    for dt in FLOATS:
        fastreg.random.uniform((5,), seed=1, offset=0, dtype=dt, backend=backend)


def _dropout(backend):
    import fastreg
    for dt in FLOATS:
        x = _x((4, 5), dt)
        fastreg.dropout(x, 0.5, seed=1, backend=backend)
        fastreg.dropout(x, 1.0, seed=1, backend=backend)           # p = 1: the group kernel
        fastreg.dropout_backward(x, 0.5, seed=1, out=x, backend=backend)


def _dropout_mask(backend):
    import fastreg
    for packed in (True, False):
        fastreg.dropout_mask((3, 5), 0.5, seed=1, packed=packed, backend=backend)


def _channel_dropout(backend):
    import fastreg
    for dt in FLOATS:
        x = _x((2, 3, 2, 2), dt)
        fastreg.channel_dropout(x, 0.5, seed=1, backend=backend)
        fastreg.channel_dropout(x, 0.5, seed=1, axis=-1, backend=backend)
        fastreg.channel_dropout_backward(x, 0.5, seed=1, backend=backend)


def _drop_path(backend):
    import fastreg
    for dt in FLOATS:
        x = _x((3, 4), dt)
        fastreg.drop_path(x, 0.5, seed=1, backend=backend)
        fastreg.drop_path_backward(x, 0.5, seed=1, backend=backend)


def _drop_block(backend):
    import fastreg
    for dt in FLOATS:
        for layout, shape in (("NCHW", (2, 3, 6, 6)), ("NHWC", (2, 6, 6, 3))):
            x = _x(shape, dt)
            fastreg.drop_block(x, 0.2, 3, seed=1, layout=layout, backend=backend)
            fastreg.drop_block_backward(x, 0.2, 3, seed=1, layout=layout, backend=backend)


def _penalties(backend):
    import fastreg
    for dt in FLOATS:
        w = _x((3, 4), dt)
        fastreg.l1_penalty(w, 0.1, backend=backend)
        fastreg.l2_penalty([w, w[0]], 0.1, backend=backend)
        fastreg.elastic_net_penalty(w, 0.1, 0.2, backend=backend)


@contextlib.contextmanager
def _streaming(backend):
    """On backend "cpu", penalty gradients and proximal steps stream every out-of-place output
    meanwhile (the kernels that outputs of ``fastreg.cpu.penalty.STREAM_MIN_BYTES``, 4 MiB, and
    more take), so that tiny inputs reach them; the limit is restored on exit. (It is set for
    the whole process: another thread's calls stream too meanwhile, with the same results.)"""
    if backend != "cpu":
        yield
        return
    from .cpu import penalty
    saved = penalty.STREAM_MIN_BYTES
    penalty.STREAM_MIN_BYTES = 0
    try:
        yield
    finally:
        penalty.STREAM_MIN_BYTES = saved


def _penalty_grads(backend):
    import fastreg
    for dt in FLOATS:
        for streaming in (False, True):   # ordinary stores; streamed (large outputs)
            w = _x((3, 4), dt)
            with _streaming(backend) if streaming else contextlib.nullcontext():
                g = fastreg.l1_grad(w, 0.1, backend=backend)
                fastreg.l2_grad(w, 0.1, out=g, accumulate=True, backend=backend)
                fastreg.elastic_net_grad(w, 0.1, 0.2, backend=backend)


def _prox(backend):
    import fastreg
    for dt in FLOATS:
        fastreg.prox_l1(_x((3, 4), dt), 0.1, backend=backend)
        fastreg.prox_elastic_net(_x((3, 4), dt), 0.1, 0.2, backend=backend)
        # a non-contiguous w is stepped out of place, from a contiguous copy: streamed when large
        with _streaming(backend):
            fastreg.prox_l1(_x((3, 8), dt)[:, ::2], 0.1, backend=backend)
        fastreg.prox_group_lasso(_x((3, 4), dt), 0.1, axis=1, backend=backend)   # rows
        fastreg.prox_group_lasso(_x((2, 3, 4), dt), 0.1, axis=1, backend=backend)  # columns


def _sgd(backend):
    from .optim import SGD
    for dt in FLOATS:
        for kw in (dict(), dict(momentum=0.9, nesterov=True, weight_decay=0.1),
                   dict(momentum=0.9, decoupled=True, weight_decay=0.1, l1=0.01),
                   dict(check_finite=True)):
            params = [_x((3, 4), dt), _x((4,), dt)]
            opt = SGD(params, lr=0.1, backend=backend, **kw)
            opt.step([_x((3, 4), dt, 1), _x((4,), dt, 2)])
            opt.step([_x((3, 4), dt, 1), _x((4,), dt, 2)])


def _adam(backend):
    from .optim import Adam, AdamW
    for dt in FLOATS:
        for cls, kw in ((Adam, dict()), (AdamW, dict()), (AdamW, dict(amsgrad=True)),
                        (Adam, dict(weight_decay=0.1, check_finite=True))):
            params = [_x((3, 4), dt), _x((4,), dt)]
            opt = cls(params, lr=0.1, backend=backend, **kw)
            opt.step([_x((3, 4), dt, 1), _x((4,), dt, 2)])


# batch norm: (shape, channel axis) of each layout, and a channel layout with rows of at least
# fastreg.cpu.batchnorm.ROWS_MIN_B values (its "rows" kernels; shorter rows take the "cols" ones)
BN_SHAPES = (((4, 3), 1), ((2, 3, 2, 2), 1), ((2, 2, 2, 3), -1), ((2, 3, 6, 6), 1))


def _bn_args(dt, shape, axis):
    C = shape[axis]
    return (np.zeros(C, dt), np.ones(C, dt), np.full(C, 1.5, dt), np.full(C, 0.5, dt))


def _batch_norm(backend):
    import fastreg
    for dt in FLOATS:
        for shape, axis in BN_SHAPES:
            x = _x(shape, dt)
            rm, rv, w, b = _bn_args(dt, shape, axis)
            for kw in (dict(), dict(activation="relu", residual=_x(shape, dt, 1))):
                fastreg.batch_norm(x, rm, rv, w, b, training=True, axis=axis, backend=backend,
                                   **kw)
                fastreg.batch_norm(x, rm, rv, training=True, axis=axis, momentum=None,
                                   num_batches_tracked=np.zeros(1, np.int64), backend=backend,
                                   **kw)
                fastreg.batch_norm(x, rm, rv, w, b, training=False, axis=axis, backend=backend,
                                   **kw)
                fastreg.batch_norm(x, rm, rv, training=False, axis=axis, backend=backend, **kw)


def _batch_norm_backward(backend):
    import fastreg
    for dt in FLOATS:
        for shape, axis in BN_SHAPES:
            x, gy = _x(shape, dt), _x(shape, dt, 1)
            rm, rv, w, b = _bn_args(dt, shape, axis)
            for training in (True, False):
                for kw in (dict(), dict(activation="relu", residual=_x(shape, dt, 2))):
                    y, saved = fastreg.batch_norm(x, rm, rv, w, b, training=training,
                                                  axis=axis, backend=backend, **kw)
                    extra = dict(y=y) if kw else {}
                    fastreg.batch_norm_backward(gy, x, saved, w, backend=backend, **extra)
                    fastreg.batch_norm_backward(gy, x, saved, backend=backend, **extra)


def _batch_norm_stats(backend):
    import fastreg
    for dt in FLOATS:
        for shape, axis in BN_SHAPES:
            fastreg.batch_norm_stats(_x(shape, dt), axis=axis, backend=backend)


def _batch_norm_sync(backend):
    """The kernels of synchronized batch norm (``comm=``), called as fastreg.batchnorm's
    synchronized forward and backward call them (without MPI)."""
    from . import _dispatch
    job = _dispatch.job(backend, True)
    f64 = np.float64
    for dt in FLOATS:
        for shape in ((4, 3, 2), (2, 3, 36)):  # (A, C, B): the cols and the rows kernels
            x, gy = _x(shape, dt), _x(shape, dt, 1)
            C, n = shape[1], shape[0] * shape[2]
            w, b = np.full(C, 1.5, dt), np.full(C, 0.5, dt)
            mean, m2, invstd = np.zeros(C, f64), np.zeros(C, f64), np.empty(C, f64)
            job.op("bn_stats")(x, mean, m2)
            center, scale, shift = (np.empty(C, dt) for _ in range(3))
            for wc, bc in ((w, b), (None, None)):
                job.op("bn_forward_coeffs")(mean, m2, n, wc, bc, 1e-5, False, mean.copy(), invstd,
                                            center, scale, shift)
            for res, relu in ((None, False), (_x(shape, dt, 2), True)):
                y = np.empty_like(x)
                job.op("bn_apply")(x, center, scale, shift, res, relu, y)
                s_dy, s_dyx = np.zeros(C, f64), np.zeros(C, f64)
                job.op("bn_backward_reduce")(gy, x, y if relu else None, mean, s_dy, s_dyx)
                a, bb, d, gw, gb = (np.empty(C, dt) for _ in range(5))
                coeffs = job.op("bn_backward_coeffs")
                coeffs(s_dy, s_dyx, mean, invstd, w, n, True, center, a, bb, d, gw, gb)
                coeffs(s_dy, s_dyx, mean, invstd, w, n, False, center, a, None, None, gw, gb)
                gx = np.empty_like(x)
                job.op("bn_backward_apply")(gy, x, y if relu else None, center, a, bb, d, gx,
                                            np.empty_like(x) if relu else None)
                job.op("bn_backward_apply")(gy, x, None, center, a, None, None, gx, None)


def _images(fn):
    """Run ``fn(images, layout)`` on a tiny batch of every image dtype and layout."""
    for dt in IMAGES:
        for layout in LAYOUTS:
            shape = (2, 6, 6, 3) if layout == "NHWC" else (2, 3, 6, 6)
            fn(_x(shape, dt), layout)


def _augment_geometry(backend):
    from . import augment as A
    from .augment.compose import TARGET_DTYPES

    def run(x, layout):
        kw = dict(seed=1, layout=layout, backend=backend)
        A.random_flip(x, 1.0, **kw)
        A.random_rot90(x, 1.0, **kw)
        for dt in TARGET_DTYPES:  # segmentation targets follow the geometry, in their dtype
            mask = np.zeros(x.shape[:1] + (6, 6), dt)
            A.random_flip(x, 1.0, direction="vertical", target=mask, **kw)
            A.random_rotate(x, 30.0, target=mask, **kw)
        for interpolation in ("bilinear", "nearest"):
            A.random_rotate(x, 30.0, interpolation=interpolation, **kw)
            A.random_resized_crop(x, 4, interpolation=interpolation, **kw)
        for mode in ("constant", "reflect"):
            A.random_crop(x, 4, padding=1, padding_mode=mode, **kw)
        A.Compose([A.RandomFlip(), A.RandomRotate(20.0), A.RandomCrop(5, padding=1)])(x, **kw)
    _images(run)


def _augment_noise(backend):
    from . import augment as A
    _images(lambda x, layout: A.gaussian_noise(x, 0.1, seed=1, layout=layout, backend=backend))


def _augment_erasing(backend):
    from . import augment as A
    _images(lambda x, layout: A.random_erasing(x, 1.0, seed=1, layout=layout, backend=backend))


def _augment_mix(backend):
    from . import augment as A

    def run(x, layout):
        labels = np.array([0, 1])
        A.mixup(x, labels, num_classes=2, seed=1, layout=layout, backend=backend)
        A.cutmix(x, labels, num_classes=2, seed=1, layout=layout, backend=backend)
    _images(run)


def _cross_entropy(backend):
    from .loss import cross_entropy
    for dt in FLOATS:
        x = _x((3, 4), dt)
        for target in (np.array([0, 3, -100]), np.full((3, 4), 0.25, dt)):
            cross_entropy(x, target, backend=backend)
            cross_entropy(x, target, label_smoothing=0.1, grad=False, backend=backend)


def _ema(backend):
    import fastreg
    for dt in FLOATS:
        for decay in (0.9, 0.3):   # both forms of the lerp
            # contiguous lists: one launch for the list; a non-contiguous array: per array
            fastreg.ema_update([_x((3, 4), dt)], [_x((3, 4), dt, 1)], decay, backend=backend)
            fastreg.ema_update([_x((3, 8), dt)[:, ::2]], [_x((3, 4), dt, 1)], decay,
                               backend=backend)
        ema = fastreg.EMA([_x((3, 4), dt), np.arange(3)], 0.9, backend=backend)
        ema.update([_x((3, 4), dt, 1), np.arange(3)])   # an integer array: copied


def _clip(backend):
    import fastreg
    for dt in FLOATS:
        for p in (2.0, 1.0, "inf", 3.0):
            fastreg.clip_grad_norm([_x((3, 4), dt)], 0.1, p, backend=backend)
            # a non-contiguous gradient: the per-array kernels (contiguous lists: one launch)
            fastreg.clip_grad_norm([_x((3, 8), dt)[:, ::2]], 0.1, p, backend=backend)
            fastreg.adaptive_clip_grad([_x((3, 4), dt)], [_x((3, 4), dt, 1)], 0.01, 1e-3, p,
                                       backend=backend)
        grads = [_x((3, 4), dt), _x((3, 8), dt, 1)[:, ::2]]
        fastreg.grad_norm(grads, backend=backend)
        # a given total norm above max_norm: every list scaled (whatever the gradients)
        fastreg.clip_grads_with_norm(grads, 0.1, 10.0, backend=backend)
        fastreg.clip_grads_with_norm([_x((3, 4), dt)], 0.1, 10.0, backend=backend)


def _half(backend):
    """float16 and bfloat16 (when ml_dtypes is installed): the float32 kernels between two
    conversion passes (fastreg/_half.py)."""
    import fastreg
    from . import _arrays
    from .optim import SGD
    for dt in (_arrays.FLOAT16, _arrays.BFLOAT16):
        if dt is None:
            continue
        x = _x((3, 4), np.float32).astype(dt)
        fastreg.dropout(x, 0.5, seed=1, backend=backend)
        fastreg.l1_grad(x, 0.1, backend=backend)
        fastreg.prox_l1(x.copy(), 0.1, backend=backend)
        opt = SGD([x.copy()], lr=0.1, momentum=0.9, backend=backend)
        opt.step([_x((3, 4), np.float32, 1).astype(dt)])


def _augment_color(backend):
    """The colour ops (uint8 images), RandAugment-style policies (colour and geometric ops per
    sample), Gaussian blur and Normalize."""
    from . import augment as A

    def run(x, layout):
        kw = dict(layout=layout, backend=backend)
        A.adjust_brightness(x, 1.5, **kw)   # every colour op: one kernel, op code per sample
        A.ColorJitter(0.4, 0.4, 0.4, 0.1)(x, seed=1, **kw)
        A.gaussian_blur(x, 3, 1.0, **kw)
        A.normalize(x, (0.5, 0.4, 0.3), (0.2, 0.3, 0.4), **kw)
        for interpolation in ("nearest", "bilinear"):
            A.RandAugment(num_ops=4, interpolation=interpolation)(x, seed=1, **kw)
            A.TrivialAugmentWide(interpolation=interpolation)(x, seed=1, **kw)
    for layout in LAYOUTS:
        shape = (8, 6, 6, 3) if layout == "NHWC" else (8, 3, 6, 6)
        run(_x(shape, np.uint8), layout)


OPS = {
    "random": _random,
    "dropout": _dropout,
    "dropout_mask": _dropout_mask,
    "channel_dropout": _channel_dropout,
    "drop_path": _drop_path,
    "drop_block": _drop_block,
    "penalties": _penalties,
    "penalty_grads": _penalty_grads,
    "prox": _prox,
    "sgd": _sgd,
    "adam": _adam,
    "batch_norm": _batch_norm,
    "batch_norm_backward": _batch_norm_backward,
    "batch_norm_stats": _batch_norm_stats,
    "batch_norm_sync": _batch_norm_sync,
    "augment_geometry": _augment_geometry,
    "augment_noise": _augment_noise,
    "augment_erasing": _augment_erasing,
    "augment_mix": _augment_mix,
    "augment_color": _augment_color,
    "cross_entropy": _cross_entropy,
    "ema": _ema,
    "clip": _clip,
    "half": _half,
}
"""Warm-up groups, by the public functions they run (``fastreg warmup --ops NAME,...``)."""


# ---- Numba bookkeeping --------------------------------------------------------------------------

def _cpu_modules():
    import fastreg.cpu  # noqa: F401  imports every kernel module of the backend
    return [m for name, m in sorted(sys.modules.items())
            if m is not None and (name == "fastreg.cpu" or name.startswith("fastreg.cpu."))]


def _dispatchers():
    """Every Numba CPU dispatcher of the cpu backend that Python calls: (name, dispatcher).
    Helpers compiled into their callers are left out: inline="always" ones, and those without a
    CPython wrapper (``no_cpython_wrapper``), which a cache-loaded caller never compiles."""
    from numba.core.registry import CPUDispatcher
    found = {}
    for mod in _cpu_modules():
        for attr, v in vars(mod).items():
            for suffix, d in (("", v), (".serial", getattr(v, "serial", None))):
                if (isinstance(d, CPUDispatcher) and d.targetoptions.get("inline") != "always"
                        and not d.targetoptions.get("no_cpython_wrapper")
                        and getattr(d, "__module__", mod.__name__) == mod.__name__):
                    found[id(d)] = (f"{mod.__name__}.{attr}{suffix}", d)
    return list(found.values())


def _cached_on_disk(d):
    """Whether Numba's cache holds a version of dispatcher ``d`` (a helper called from a kernel
    that was loaded from the cache is never compiled or loaded itself, so its ``signatures`` stay
    empty). Reads Numba's cache index through its private API; False when that fails."""
    try:
        return bool(d._cache._cache_file._load_index())
    except Exception:
        return False


def uncompiled():
    """Names of the cpu backend's kernels with neither a version in this process nor one in
    Numba's on-disk cache: after a full ``warmup()``, code that warmup does not reach (a gap to
    fix here), compiled at its first use instead.

    Returns
    -------
    list of str
        ``module.function`` names (``.serial`` for the compiled version of a kernel run in
        shares).
    """
    return sorted(name for name, d in _dispatchers()
                  if not d.signatures and not _cached_on_disk(d))


# ---- the entry points ---------------------------------------------------------------------------

def warmup(backend="cpu", ops=None, progress=True, file=None):
    """Compile (or load from Numba's cache) every kernel of ``backend`` by running each op once
    on tiny inputs, so that later processes start without compiling.

    Parameters
    ----------
    backend : {"cpu", "c", "numpy"}
        "cpu" compiles the Numba kernels into Numba's on-disk cache. "c" (compiled when fastreg
        was installed) and "numpy" have nothing to compile: the call checks that the backend is
        available and says so.
    ops : iterable of str, optional
        Names from ``fastreg.warmup.OPS`` (default: all of them).
    progress : bool
        Show progress: a tqdm bar when tqdm is installed and stderr is a terminal, else one
        line per op; in both cases the seconds each op took and the total.
    file : file object, optional
        Where the lines go (default ``sys.stdout``; the tqdm bar itself writes to stderr).

    Returns
    -------
    dict
        ``{op: seconds}`` in the order run (empty for "c" and "numpy").

    Raises
    ------
    ValueError
        Unknown backend or op name.
    fastreg.BackendUnavailableError
        The backend cannot run here (the message says why).

    Notes
    -----
    Every kernel has one compiled version, which serves its serial and its parallel runs
    (``fastreg.cpu._jit``), so running each op once on tiny inputs compiles all of them.
    """
    out = sys.stdout if file is None else file
    if backend not in ("cpu", "c", "numpy"):
        raise ValueError(f"backend must be 'cpu', 'c' or 'numpy', got {backend!r} (CUDA kernels "
                         "are compiled for the device at their first launch)")
    names = list(OPS) if ops is None else list(ops)
    unknown = [n for n in names if n not in OPS]
    if unknown:
        raise ValueError(f"unknown op(s) {unknown}; choose from {list(OPS)}")
    _registry.module(backend)  # BackendUnavailableError, with the reason
    if backend != "cpu":
        if progress:
            what = ("compiled ahead of time (the C extension)" if backend == "c"
                    else "plain NumPy")
            print(f"backend {backend!r} is {what}: nothing to compile", file=out)
        return {}

    bar = None
    if progress and sys.stderr.isatty():   # a log file gets the lines below, not the bar's \r
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(names), unit="op", desc="fastreg warmup (cpu)")
        except ImportError:
            bar = None
    say = (bar.write if bar is not None else (lambda line: print(line, file=out, flush=True)))
    seconds = {}
    start = time.perf_counter()
    for i, name in enumerate(names):
        if bar is not None:
            bar.set_postfix_str(name)
        t0 = time.perf_counter()
        OPS[name]("cpu")
        seconds[name] = time.perf_counter() - t0
        if bar is not None:
            bar.update(1)
        if progress:
            say(f"[{i + 1}/{len(names)}] {name:<22} {seconds[name]:7.2f} s")
    if bar is not None:
        bar.close()
    if progress:
        import numba
        where = numba.config.CACHE_DIR or "__pycache__ next to fastreg's sources"
        print(f"total {time.perf_counter() - start:.2f} s for {len(names)} op(s); "
              f"Numba cache: {where}", file=out, flush=True)
        if ops is None:
            missing = uncompiled()
            if missing:
                print(f"not reached by warmup (compiled at first use): {', '.join(missing)}",
                      file=out)
    return seconds


def add_arguments(parser):
    """The ``fastreg warmup`` options."""
    parser.add_argument("--backend", default="cpu", choices=("cpu", "c", "numpy"),
                        help="the backend to compile (default cpu; c and numpy have nothing to "
                             "compile)")
    parser.add_argument("--ops", default=None,
                        help="comma-separated op groups (default: all): " + ",".join(OPS))
    parser.add_argument("--list", action="store_true", help="list the op groups and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def run(args):
    """``fastreg warmup``: returns the exit status."""
    if args.list:
        for name in OPS:
            print(name)
        return 0
    ops = None if args.ops is None else [o.strip() for o in args.ops.split(",") if o.strip()]
    try:
        warmup(args.backend, ops, progress=not args.quiet)
    except (ValueError, _registry.BackendUnavailableError) as exc:
        print(f"fastreg warmup: {exc}", file=sys.stderr)
        return 2
    return 0
