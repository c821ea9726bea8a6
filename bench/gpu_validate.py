"""The Python half of ``bench/gpu_validate.sh``: what a GPU must show, in two subcommands.

    python bench/gpu_validate.py agree [--n 2^24] [--json FILE]
        the CUDA backend against the host (C backend, else cpu, else the NumPy reference), bit
        for bit, on large arrays, for every op held to the host's bits: the random stream,
        dropout and its masks, penalty gradients and prox, optimizer steps, all_finite, and the
        exact augmentation ops (flips, erasing, cutmix paste, the colour ops). Offsets cross 2**32 Philox blocks,
        so the 64-bit counter is exercised. Exit 1 on any difference.
    python bench/gpu_validate.py bench [--sizes 2^24,2^26] [--json FILE] [--quick]
        the GPU benchmark table: each op of ``fastreg bench`` on the CUDA backend, effective GB/s,
        the fraction of a device-to-device copy measured in the same run, and the ratio to torch
        on the GPU (when torch sees one), plus batch norm on its layer shapes.

Both run under NUMBA_ENABLE_CUDASIM=1 too (tiny sizes, meaningless timings), which is how the CPU
tests check them. Floats compare by bit pattern, except that any NaN equals any NaN: NVIDIA GPUs
return a canonical NaN from arithmetic (see fastreg.cuda.penalty).
"""
import argparse
import json
import os
import sys
import time

import numpy as np

import fastreg
from fastreg import _registry
from fastreg.bench import cases
from fastreg.bench.table import _parse_size, time_min

SEED = 0x0123456789ABCDEF
OFFSETS = (0, 2**34 - 7)      # the second: Philox block indices cross 2**32
P = 0.3
HOSTS = ("c", "cpu", "numpy")


def simulated():
    """True under NUMBA_ENABLE_CUDASIM (timings meaningless, sizes must stay tiny)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


# --- agreement ------------------------------------------------------------------------------------

def host_backend(op):
    """The first of HOSTS that runs ``op`` here."""
    for name in HOSTS:
        try:
            _registry.get(op, name)
            return name
        except fastreg.BackendUnavailableError:
            continue
    raise RuntimeError(f"no host backend runs {op}")


def mismatches(host, dev):
    """(count, first index) of elements whose bits differ (NaN == NaN); index -1 when none."""
    a, b = np.asarray(host).reshape(-1), np.asarray(dev).reshape(-1)
    if a.shape != b.shape or a.dtype != b.dtype:
        raise AssertionError(f"shape/dtype differ: host {a.shape} {a.dtype}, cuda {b.shape} "
                             f"{b.dtype}")
    if a.dtype.kind == "f":
        u = {2: np.uint16, 4: np.uint32, 8: np.uint64}[a.itemsize]
        diff = (a.view(u) != b.view(u)) & ~(np.isnan(a) & np.isnan(b))
    else:
        diff = a != b
    idx = np.flatnonzero(diff)
    return int(idx.size), int(idx[0]) if idx.size else -1


def float_input(n, dtype, rng):
    """n values of ``dtype``: normals of several scales with zeros of both signs, infinities, a
    NaN, subnormals and the largest finite values sprinkled in."""
    dt = np.dtype(dtype)
    x = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3, n)).astype(dt)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, np.finfo(dt).tiny / 4,
                         -np.finfo(dt).tiny / 4, np.finfo(dt).max, -np.finfo(dt).max], dt)
    where = rng.integers(0, n, min(n, 64))
    x[where] = specials[np.arange(where.size) % specials.size]
    return x


def agreement_cases(n, dtypes=("float32", "float64")):
    """(op, variant, dtype, run) for every exact op; ``run(fn)`` calls the backend function
    ``fn`` of ``op`` on fresh copies of fixed inputs and returns the arrays to compare."""
    from fastreg.dropout import _threshold
    rng = np.random.default_rng(1)
    thr = _threshold(P)
    out = []

    def add(op, variant, dtype, run):
        out.append((op, variant, dtype, run))

    for off in OFFSETS:
        def bits(fn, off=off):
            o = np.zeros(n, np.uint32)
            fn(SEED, off, o)
            return (o,)
        add("random_bits", f"offset {off}", "uint32", bits)

        def mask(fn, off=off):
            o = np.zeros(n, np.uint8)
            fn(SEED, off, thr, o)
            return (o,)
        add("dropout_mask", f"offset {off}", "uint8", mask)

        def packed(fn, off=off):
            o = np.zeros((n + 7) // 8, np.uint8)
            fn(SEED, off, thr, n, o)
            return (o,)
        add("dropout_mask_packed", f"offset {off}", "uint8", packed)

    # 16-bit floats (kind 0 float16, 1 bfloat16): 16-bit patterns widened (all 65536 when
    # n >= 65536, else every k-th), float32 values with specials rounded to nearest even;
    # compared as bits (NaN payloads included)
    patterns = np.arange(0, 1 << 16, max(1, (1 << 16) // n), dtype=np.uint32).astype(np.uint16)
    f32 = float_input(n, np.float32, rng)
    for kind in (0, 1):
        def widen(fn, kind=kind):
            o = np.zeros(patterns.size, np.float32)
            fn(patterns.copy(), kind, o)
            return (o.view(np.uint32),)
        add("half_to_float32", f"kind {kind}, {patterns.size} patterns", "uint16", widen)

        def narrow(fn, kind=kind):
            o = np.zeros(n, np.uint16)
            fn(f32.copy(), kind, o)
            return (o,)
        add("float32_to_half", f"kind {kind}", "float32", narrow)

    for name in dtypes:
        dt = np.dtype(name)
        x = float_input(n, dt, rng)
        g = float_input(n, dt, rng)
        for off in OFFSETS:
            def uni(fn, off=off, dt=dt):
                o = np.zeros(n, dt)
                fn(SEED, off, o)
                return (o,)
            add("uniform", f"offset {off}", name, uni)

            def drop(fn, off=off, x=x, dt=dt):
                o = np.zeros(n, dt)
                fn(x.copy(), SEED, off, thr, dt.type(1 / (1 - P)), o)
                return (o,)
            add("dropout", f"offset {off}, p={P}", name, drop)

        m2, c = 4, 8
        rows = max(1, n // (c * m2 * 2))
        x4 = x[:rows * 2 * c * m2].reshape(rows, 2, c, m2)
        keep = (rng.random((rows, c)) > P).astype(np.uint8)

        def group(fn, x4=x4, keep=keep, dt=dt):
            o = np.zeros_like(x4)
            fn(x4.copy(), keep, dt.type(2.0), o)
            return (o,)
        add("group_dropout", f"({rows}, 2, {c}, {m2})", name, group)

        for l1, c2 in ((1e-3, 0.0), (0.0, 2e-3), (1e-3, 2e-3)):
            for acc in (False, True):
                def grad(fn, l1=l1, c2=c2, acc=acc, x=x, g=g, dt=dt):
                    o = g.copy()
                    fn(x.copy(), dt.type(l1), dt.type(c2), o, acc)
                    return (o,)
                add("penalty_grad", f"l1={l1:g} c2={c2:g}{' accumulate' if acc else ''}", name,
                    grad)
        for t, s in ((1e-2, 1.0), (1e-2, 1 / (1 + 2 * 3e-3))):
            def prox(fn, t=t, s=s, x=x, dt=dt):
                o = np.zeros_like(x)
                fn(x.copy(), dt.type(t), dt.type(s), o)
                return (o,)
            add("soft_threshold", f"t={t:g} s={s:.6g}", name, prox)

        def finite(fn, x=x):
            return (np.array([fn(x), fn(np.nan_to_num(x))]),)
        add("all_finite", "with and without inf/NaN", name, finite)

        sgd_variants = (
            ("plain", False, dict(wd=0.0, decay=1.0, momentum=0.0, damp1=1.0, nesterov=False,
                                  first=False, l1t=0.0)),
            ("momentum, first step", True, dict(wd=1e-4, decay=1.0, momentum=0.9, damp1=1.0,
                                                nesterov=False, first=True, l1t=0.0)),
            ("nesterov, decoupled decay, prox L1", True,
             dict(wd=0.0, decay=1 - 1e-3, momentum=0.9, damp1=0.9, nesterov=True, first=False,
                  l1t=1e-5)),
        )
        for variant, has_buf, kw in sgd_variants:
            def sgd(fn, has_buf=has_buf, kw=kw, x=x, g=g, dt=dt):
                p = x.copy()
                buf = (g[::-1] * dt.type(0.5)).astype(dt) if has_buf else None
                fn(p, g.copy(), buf, dt.type(0.01), dt.type(kw["wd"]), dt.type(kw["decay"]),
                   dt.type(kw["momentum"]), dt.type(kw["damp1"]), kw["nesterov"], kw["first"],
                   dt.type(kw["l1t"]))
                return (p,) if buf is None else (p, buf)
            add("sgd_step", variant, name, sgd)

        adam_variants = (("adam, weight decay", False, 1e-4, 1.0),
                         ("adamw, amsgrad", True, 0.0, 1 - 1e-2 * 1e-3))
        for variant, ams, wd, decay in adam_variants:
            def adam(fn, ams=ams, wd=wd, decay=decay, x=x, g=g, dt=dt):
                p, m = x.copy(), (g * dt.type(0.1)).astype(dt)
                v = np.abs(g * dt.type(0.01)).astype(dt)
                vmax = (v * dt.type(1.5)).astype(dt) if ams else None
                b1, b2, step = 0.9, 0.999, 3
                fn(p, g.copy(), m, v, vmax, dt.type(wd), dt.type(decay), dt.type(1 - b1),
                   dt.type(b2), dt.type(1 - b2), dt.type(1e-8),
                   dt.type(1e-3 / (1 - b1 ** step)), dt.type(np.sqrt(1 - b2 ** step)))
                return (p, m, v) if vmax is None else (p, m, v, vmax)
            add("adam_step", variant, name, adam)

    for name in ("uint8", "float32"):
        h, w, ch = 32, 32, 4
        m = max(2, n // (h * w * ch))
        if name == "uint8":
            img = rng.integers(0, 256, (m, h, w, ch), dtype=np.uint8)
        else:
            img = float_input(m * h * w * ch, np.float32, rng).reshape(m, h, w, ch)
        hf = rng.integers(0, 2, m).astype(np.uint8)
        vf = rng.integers(0, 2, m).astype(np.uint8)
        rects = np.stack([rng.integers(0, h, m), rng.integers(0, w, m),
                          rng.integers(0, h // 2, m), rng.integers(0, w // 2, m)], 1)
        partner = rng.permutation(m).astype(np.int64)
        shape = f"({m}, {h}, {w}, {ch})"

        def flip(fn, img=img, hf=hf, vf=vf):
            o = np.zeros_like(img)
            fn(img, hf, vf, o)
            return (o,)
        add("aug_flip", shape, name, flip)

        def erase(fn, img=img, rects=rects, name=name):
            o = np.zeros_like(img)
            fn(img, rects, np.dtype(name).type(7), o)
            return (o,)
        add("aug_erase", shape, name, erase)

        def paste(fn, img=img, partner=partner, rects=rects):
            o = np.zeros_like(img)
            fn(img, partner, rects, o)
            return (o,)
        add("aug_paste", shape, name, paste)

    # colour augmentation (uint8, 3 channels): every aug_color op in one call (a factor near 1
    # for the rounding to odd), blur, normalization
    from fastreg.reference import augment_color as refc
    cm = max(11, n // (32 * 32 * 3))
    cimg = rng.integers(0, 256, (cm, 32, 32, 3), dtype=np.uint8)
    ccodes = np.resize(np.arange(-1, 10, dtype=np.int64), cm)
    cparams = np.resize(np.array([0, 0, 1.3, 0.9999999, 1.7, 0.2, 3, 128.0, 0, 0, -0.3]), cm)
    cshape = f"({cm}, 32, 32, 3)"

    def color(fn, img=cimg, codes=ccodes, params=cparams):
        o = np.zeros_like(img)
        fn(img, codes, params, o)
        return (o,)
    add("aug_color", cshape, "uint8", color)
    cw = np.stack([refc.gaussian_weights(s, 5) for s in np.linspace(0.2, 3.0, cm)])

    def blur(fn, img=cimg, w=cw):
        o = np.zeros_like(img)
        fn(img, w, o)
        return (o,)
    add("aug_blur", cshape, "uint8", blur)
    clut = refc.normalize_lut([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])

    def normalize(fn, img=cimg, lut=clut):
        o = np.zeros(img.shape, np.float32)
        fn(img, lut, o)
        return (o,)
    add("aug_normalize", cshape, "float32", normalize)

    # DropBlock: the seed/block mask and its exact kept count, then the masked scaling
    from fastreg.dropblock import _gamma, _threshold as _block_threshold
    bn_, bc, bh, bw = max(1, n // (4 * 28 * 28)), 4, 28, 28
    for block, channels_last in ((7, False), (4, True)):
        t = _block_threshold(_gamma(0.2, block, bh, bw, 1.0))
        shp = (bn_, bh, bw, bc) if channels_last else (bn_, bc, bh, bw)

        def blockmask(fn, t=t, block=block, channels_last=channels_last, shp=shp):
            m = np.zeros(shp, np.uint8)
            kept = fn(SEED, OFFSETS[-1], t, block, channels_last, m)
            return (m, np.array([kept], np.int64))
        add("drop_block_mask", f"{shp} block {block}", "uint8", blockmask)
    for name in dtypes:
        dt = np.dtype(name)
        x = float_input(n, dt, rng)
        mk = (rng.random(n) > P).astype(np.uint8)

        def block_apply(fn, x=x, mk=mk, dt=dt):
            o = np.zeros_like(x)
            fn(x.copy(), mk, dt.type(1.25), o)
            return (o,)
        add("drop_block_apply", "scale 1.25", name, block_apply)

        # gradient clipping: the in-place scaling of a list and of rows (AGC)
        def clip_scale(fn, x=x, dt=dt):
            parts = [x[: n // 3].copy(), x[n // 3:].copy()]
            fn(parts, dt.type(0.37))
            return tuple(parts)
        add("scale", "list of 2, s=0.37", name, clip_scale)

        rows = max(1, n // 64)
        a2 = x[: rows * 64].reshape(rows, 64)
        srow = rng.random(rows).astype(dt)

        def clip_rows(fn, a2=a2, srow=srow):
            a = a2.copy()
            fn(a, srow)
            return (a,)
        add("scale_rows", f"({rows}, 64)", name, clip_rows)
    return out


_AGREE_COLUMNS = (("op", "<", 19), ("variant", "<", 36), ("dtype", "<", 7), ("n", ">", 9),
                  ("host", "<", 5), ("differ", ">", 7), ("cuda ms*", ">", 8), ("result", "<", 6))


def _row(values, columns):
    return "  ".join(f"{str(v):{a}{w}}" for v, (_, a, w) in zip(values, columns))


def _both(run, op, host, row):
    """(host outputs, cuda outputs) of ``run``; the cuda call's time (after a warm-up call
    that compiles) into ``row``. Host arrays in and out: the cuda call includes the copies."""
    expected = run(_registry.get(op, host))
    if not simulated():     # compile before timing (the simulator compiles nothing)
        run(_registry.get(op, "cuda"))
    t0 = time.perf_counter()
    got = run(_registry.get(op, "cuda"))
    row["cuda_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
    return expected, got


def agree(n, file=sys.stdout):
    """Compare every exact op on the CUDA backend with the host; print a table. Returns
    (rows, failures)."""
    def say(text=""):
        print(text, file=file, flush=True)

    header = _row([c for c, _, _ in _AGREE_COLUMNS], _AGREE_COLUMNS)
    say(f"bitwise agreement, cuda vs host, n = {cases.size_id(n)}, seed {SEED:#x}, offsets "
        f"{', '.join(map(str, OFFSETS))}")
    say(header)
    say("-" * len(header))
    rows, failures = [], 0
    for op, variant, dtype, run in agreement_cases(n):
        host = host_backend(op)
        row = {"op": op, "variant": variant, "dtype": dtype, "n": n, "host": host}
        try:
            # inf and NaN inputs: the simulator's scalar arithmetic would warn at every element
            with np.errstate(all="ignore"):
                expected, got = _both(run, op, host, row)
            counts = [mismatches(e, g) for e, g in zip(expected, got)]
            row["differ"] = sum(c for c, _ in counts)
            firsts = [(k, i) for k, (c, i) in enumerate(counts) if c]
            if firsts:
                k, i = firsts[0]
                row["first"] = {"output": k, "index": i,
                                "host": repr(np.asarray(expected[k]).reshape(-1)[i]),
                                "cuda": repr(np.asarray(got[k]).reshape(-1)[i])}
            row["ok"] = row["differ"] == 0
        except Exception as exc:
            row.update(ok=False, differ="error", cuda_ms="-",
                       error=f"{type(exc).__name__}: {exc}"[:500])
        failures += not row["ok"]
        rows.append(row)
        say(_row([op, variant[:36], dtype, cases.size_id(n), host, row["differ"],
                  row.get("cuda_ms", "-"), "ok" if row["ok"] else "FAIL"], _AGREE_COLUMNS))
        if "first" in row:
            f = row["first"]
            say(f"    first difference: output {f['output']} index {f['index']}: host "
                f"{f['host']}, cuda {f['cuda']}")
        if "error" in row:
            say(f"    {row['error']}")
    say()
    say("cuda ms*: one cuda call on host arrays, copies to and from the device included")
    say(f"{len(rows)} comparisons: {failures} failed")
    return rows, failures


# --- benchmark ------------------------------------------------------------------------------------

_BENCH_COLUMNS = (("op", "<", 19), ("n", ">", 7), ("ms (min)", ">", 9), ("GB/s", ">", 8),
                  ("of copy", ">", 7), ("x torch", ">", 7), ("x fused", ">", 7))

#: tiny batch-norm shapes for simulator runs (added to the quick layouts of fastreg.bench.cases)
TINY_LAYOUTS = {"tiny_nchw": ((2, 4, 4, 4), 1), "tiny_nc": ((16, 8), 1)}


def copy_bandwidth(n, repeat):
    """GB/s of a device-to-device copy of n float32 (read + write: 8n bytes), min of repeat."""
    from numba import cuda
    src = cuda.to_device(np.ones(n, np.float32))
    dst = cuda.device_array(n, np.float32)
    best = float("inf")
    for i in range(repeat + 1):        # the first copy is not timed
        t0 = time.perf_counter()
        dst.copy_to_device(src)
        cuda.synchronize()
        if i:
            best = min(best, time.perf_counter() - t0)
    return 8 * n / best / 1e9


def _torch_cuda():
    try:
        import torch
    except Exception:
        return None
    return torch if torch.cuda.is_available() else None


def bench(sizes, layouts, quick=False, budget=0.1, file=sys.stdout):
    """Time every op of fastreg.bench.cases on the CUDA backend; print the table. Returns rows."""
    def say(text=""):
        print(text, file=file, flush=True)

    sim = simulated()
    copy_n = 1 << 12 if sim else 1 << 26
    copy = copy_bandwidth(copy_n, 2 if sim else 20)
    torch = _torch_cuda()
    from numba import cuda
    gpu = "simulator" if sim else cuda.get_current_device().name
    gpu = gpu.decode() if isinstance(gpu, bytes) else gpu
    peer = (f"{torch.__version__} on {torch.cuda.get_device_name()}" if torch
            else "not on a GPU here")
    say(f"GPU benchmark: {gpu}; device-to-device copy {copy:.1f} GB/s ({cases.size_id(copy_n)} "
        f"float32, 8 bytes per element, min of repetitions); torch {peer}")
    header = _row([c for c, _, _ in _BENCH_COLUMNS], _BENCH_COLUMNS)
    say(header)
    say("-" * len(header))
    rows = []

    def emit(label, size, seconds, nbytes, peer=None, fused=None):
        gbps = nbytes / seconds / 1e9
        ratio = (lambda t: f"{t / seconds:.2f}x" if t else "-")
        rows.append({"op": label, "n": size, "ms": seconds * 1e3, "gb_s": gbps,
                     "of_copy": gbps / copy, "torch_ms": peer and peer * 1e3,
                     "torch_fused_ms": fused and fused * 1e3})
        say(_row([label, size, f"{seconds * 1e3:.3f}", f"{gbps:.1f}", f"{gbps / copy:.0%}",
                  ratio(peer), ratio(fused)], _BENCH_COLUMNS))

    def timed(fn):
        return time_min(fn, budget, min_reps=1 if sim else 3, max_reps=1 if sim else 50)[0]

    for n in sizes:
        x = cases.input_array(n, np.float32)
        for op in cases.OPS:
            why = cases.unavailable(op, "cuda")
            if why:
                say(f"{op}: {why}")
                continue
            seconds = timed(cases.fastreg_call(op, "cuda", x, preallocated=True))
            peer = fused = None
            if torch is not None:
                peer = timed(cases.torch_call(op, x, device="cuda"))
                if op in cases.FUSED_OPS:
                    fused = timed(cases.torch_call(op, x, device="cuda", fused=True))
            emit(cases.OPS[op][0], cases.size_id(n), seconds, cases.nbytes(op, n), peer, fused)
    if any(layout in TINY_LAYOUTS for layout in layouts):
        cases.BN_QUICK_LAYOUTS.update(TINY_LAYOUTS)
    for layout in layouts:
        small = quick or layout in TINY_LAYOUTS
        shape, _ = cases.bn_shape(layout, small)
        for op in cases.BN_OPS:
            seconds = timed(cases.bn_fastreg_call(op, "cuda", layout, np.float32, quick=small))
            peer = None
            if torch is not None:
                peer = timed(cases.bn_torch_call(op, layout, np.float32, quick=small,
                                                 device="cuda"))
            emit(cases.BN_OPS[op][0], layout, seconds, cases.bn_nbytes(op, shape), peer)
    say()
    say("GB/s: bytes the op must move / min time (as fastreg bench counts them); of copy: GB/s "
        "/ the device-to-device copy above; x torch: torch CUDA time / fastreg time (> 1: "
        "fastreg faster); x fused: against torch's fused=True optimizer")
    if sim:
        say("note: NUMBA_ENABLE_CUDASIM is set: timings are meaningless (format check only)")
    return rows


# --- command line ---------------------------------------------------------------------------------

def _sizes(text):
    try:
        return [_parse_size(s) for s in text.split(",") if s.strip()]
    except (ValueError, AttributeError):
        raise argparse.ArgumentTypeError(f"sizes are integers >= 1 or powers like 2^24, got "
                                         f"{text!r}")


def main(argv=None):
    """Entry point; returns the exit code (0 ok, 1 a difference or error, 2 bad usage or no
    CUDA backend)."""
    parser = argparse.ArgumentParser(prog="python bench/gpu_validate.py",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("agree", help="bitwise agreement of the CUDA backend with the host")
    a.add_argument("--n", type=lambda s: _sizes(s)[0], default=None,
                   help="elements per array (default 2^24; 4096 under the simulator)")
    a.add_argument("--json", metavar="FILE")
    b = sub.add_parser("bench", help="the GPU benchmark table")
    b.add_argument("--sizes", type=_sizes, default=None,
                   help="element counts (default 2^24,2^26; 4096 under the simulator)")
    b.add_argument("--layouts", default=None,
                   help="batch-norm layouts, comma-separated, of nchw,nhwc,nc and the "
                        f"simulator's {','.join(TINY_LAYOUTS)} (default nchw,nhwc,nc; none "
                        "under the simulator)")
    b.add_argument("--quick", action="store_true", help="the quick (small) batch-norm layouts")
    b.add_argument("--budget", type=float, default=0.1, help="seconds of repetitions per row")
    b.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)

    reason = fastreg.available_backends().get("cuda")
    if reason is not None:
        print(f"gpu_validate: the CUDA backend cannot run here: {reason}", file=sys.stderr)
        return 2
    sim = simulated()
    if args.cmd == "agree":
        n = args.n or (4096 if sim else 1 << 24)
        if n < 1024:
            parser.error("--n: at least 1024 elements")
        rows, failures = agree(n)
        result = {"n": n, "rows": rows, "failures": failures}
        code = 1 if failures else 0
    else:
        sizes = args.sizes or ([4096] if sim else [1 << 24, 1 << 26])
        if args.layouts is None:
            layouts = [] if sim else list(cases.BN_LAYOUTS)
        else:
            layouts = [s.strip() for s in args.layouts.split(",") if s.strip()]
        known = set(cases.BN_LAYOUTS) | set(TINY_LAYOUTS)
        bad = [s for s in layouts if s not in known]
        if bad:
            parser.error(f"--layouts: unknown {', '.join(bad)}; choose from "
                         f"{', '.join(sorted(known))}")
        rows = bench(sizes, layouts, quick=args.quick, budget=args.budget)
        result = {"sizes": sizes, "layouts": layouts, "rows": rows}
        code = 0
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    return code


if __name__ == "__main__":
    sys.exit(main())
