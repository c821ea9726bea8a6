"""``python -m fastreg.cuda.check``: compile every CUDA kernel of fastreg for real GPUs, no GPU.

Numba's simulator runs the kernels as Python, so it cannot see what NVVM or ptxas would reject,
register spills, local memory or compiler contractions. This command closes that gap:

1. **Signatures.** Every ``@cuda.jit`` kernel of every module of ``fastreg.cuda`` is found, and
   the argument types it is launched with are *recorded*, not written by hand: a child process
   runs every op under ``NUMBA_ENABLE_CUDASIM=1`` on tiny inputs in each dtype (``_exercise``),
   and each launch is recorded (and skipped) instead of run. A kernel that is never launched, or
   that has no entry in ``POLICY``, fails the check.
2. **Compile.** Each (kernel, signature) is lowered by numba-cuda exactly as a launch would lower
   it (the kernel's own options; LTO through nvJitLink when the kernel uses it, as it does when
   nvJitLink is installed), and NVVM emits the PTX for each target (``--arch``, default sm_80 and
   sm_90, compiled for sm_90a as Numba does on such a device): the post-link-time-optimization
   PTX, i.e. what the driver would assemble.
3. **Assemble.** ``ptxas -v`` (from the ``nvidia-cuda-nvcc`` wheel, or ``--ptxas``) gives the
   registers, spill stores and loads, local (stack) memory and static shared memory per thread.
4. **Promises of the design, read off the PTX.**

   * ``exact`` kernels (results bit-identical to the host: dropout, RNG, penalty gradients and
     prox, optimizer steps, integer augmentation): no ``fma`` on floats, and no plain
     ``mul.f32``/``mul.f64`` feeding a plain ``add``/``sub`` (ptxas may contract such a pair into
     an FMA; ``mul.rn`` is never contracted, see fastreg.cuda.penalty's ``mul_rn_device``).
   * ``hot`` kernels (dropout, batch-norm passes, optimizer steps and the element-wise penalty
     kernels): no register spills.
   * counter kernels (a ``first`` argument: the 64-bit Philox block index): ``first``, the seed
     words and the threshold are typed uint64; in the PTX, the counter derived from ``first``
     (by integer adds, shifts and masks, up to the first multiply: Philox's rounds) is split into
     its high 32-bit word (``shr`` by 32, or an unpacking ``mov.b64``), and never reaches a
     floating-point instruction (a float64 holds 53 bits; older Numba versions typed
     ``uint64 + int64`` as float64).

It prints one row per kernel, dtype and architecture and exits 1 on any compile failure or broken
promise (with the reason), 3 when the tools are missing (0 with ``--skip-if-missing``, for
developers without the ``cuda-build`` extra). Install the tools with
``pip install "fastreg-kernels[cuda-build]"`` (numba-cuda with NVVM, NVRTC and nvJitLink, and the
``nvidia-cuda-nvcc`` wheel for ptxas; about 600 MB). No GPU or driver is needed.
"""
import argparse
import contextlib
import fnmatch
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_MISSING = 0, 1, 2, 3

#: target name -> the compute capability Numba compiles for on such a device (sm_90 and newer get
#: the architecture-specific "a" variant, see numba.cuda.codegen's ``_ensure_cc``)
ARCHS = {"80": (8, 0, ""), "86": (8, 6, ""), "89": (8, 9, ""), "90": (9, 0, "a"),
         "100": (10, 0, "a"), "120": (12, 0, "a")}
DEFAULT_ARCHS = ("80", "90")

#: element types each op is exercised in when signatures are recorded (add float16 / bfloat16
#: here when the backend gains them)
FLOAT_DTYPES = ("float32", "float64")

HOT, EXACT = "hot", "exact"

#: ``module.kernel`` -> promises checked: HOT (a spill fails the check), EXACT (no contractible
#: floating-point multiply-add: the kernel is held to the host's bits). Every kernel of
#: fastreg.cuda must have an entry, so that a new kernel is classified when it is written.
POLICY = {
    "philox._philox4x32_kernel": (EXACT,),
    "philox._random_bits_kernel": (HOT, EXACT),
    "philox._uniform_f32_kernel": (HOT, EXACT),
    "philox._uniform_f64_kernel": (HOT, EXACT),
    "dropout._dropout_kernel": (HOT, EXACT),
    "dropout._dropout_mask_kernel": (HOT, EXACT),
    "dropout._dropout_mask_packed_kernel": (HOT, EXACT),
    "dropout._group_dropout_kernel": (HOT, EXACT),
    "penalty._penalty_sums_kernel": (),                 # float64 sums, any order (a tolerance)
    "penalty._penalty_grad_kernel": (HOT, EXACT),
    "penalty._soft_threshold_kernel": (HOT, EXACT),
    "penalty._group_lasso_kernel": (),                  # float64 norm: a tolerance
    "penalty._all_finite_kernel": (EXACT,),
    "optim._sgd_kernel": (HOT, EXACT),
    "optim._adam_kernel": (HOT, EXACT),
    "batchnorm._reduce_rows_kernel": (HOT,),            # batch norm: held to a tolerance
    "batchnorm._reduce_cols_kernel": (HOT,),
    "batchnorm._apply_kernel": (HOT,),
    "batchnorm._backward_apply_kernel": (HOT,),
    "batchnorm._stats_finalize_kernel": (),
    "batchnorm._backward_finalize_kernel": (),
    "batchnorm._forward_coeffs_kernel": (),
    "batchnorm._running_update_kernel": (),
    "batchnorm._backward_coeffs_kernel": (),
    "augment._flip_kernel": (EXACT,),
    "augment._affine_u8_kernel": (),    # float64 source coordinates: FMA allowed (documented)
    "augment._affine_f32_kernel": (),
    "augment._affine_nearest_kernel": (),
    "augment._noise_kernel": (),
    "augment._erase_kernel": (EXACT,),
    "augment._mix_kernel": (),
    "augment._paste_kernel": (EXACT,),
    # colour augmentation: the definitions' fused multiply-adds are float64 sums rounded to odd
    # (no fma instruction), every other product through mul_rn_device
    # fma32_device's math.frexp scales subnormals as y = x * 2**54 followed by y + y: ptxas
    # may contract that pair, which is exact either way (a power-of-two product), but the
    # contraction check cannot tell, so these three carry no promise here; bench/gpu_validate.py
    # still compares their results with the host's bit for bit on a GPU
    "augment_color._color_stats_kernel": (),
    "augment_color._color_lut_kernel": (),
    "augment_color._color_apply_kernel": (),
    "augment_color._blur_rows_kernel": (EXACT,),
    "augment_color._blur_cols_kernel": (EXACT,),
    "augment_color._normalize_kernel": (EXACT,),
    "loss._ce_hard_kernel": (HOT,),     # exp and float64 sums: a tolerance
    "loss._ce_soft_kernel": (HOT,),
    "ema._ema_kernel": (HOT,),          # fma by definition (cuda.fma: fma.rn, the host's bits)
    "clip._norm_kernel": (),            # float64 sums, any order (a tolerance)
    "clip._row_norm_kernel": (),
    "clip._scale_kernel": (HOT, EXACT),
    "clip._scale_rows_kernel": (HOT, EXACT),
    "dropblock._seeds_kernel": (HOT, EXACT),
    "dropblock._reach_kernel": (EXACT,),
    "dropblock._mask_kernel": (EXACT,),
    "dropblock._apply_kernel": (HOT, EXACT),
    "half._widen_kernel": (HOT, EXACT),     # 16-bit <-> float32 bits: integer code only
    "half._narrow_kernel": (HOT, EXACT),
}

#: arguments that must be typed uint64 wherever a kernel has them (64-bit counter, key words,
#: threshold compared with uint64 words)
UINT64_ARGS = ("first", "seed_lo", "seed_hi", "k0", "k1", "threshold")
COUNTER_ARG = "first"


class ToolsMissing(Exception):
    """The compilers this check needs are not installed (or not usable)."""


# --- discovery ----------------------------------------------------------------------------------

def kernel_modules():
    """Names of the modules of fastreg.cuda that can hold kernels (all but this one)."""
    import fastreg.cuda as pkg
    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)
                  if m.name != "check" and not m.name.startswith("__"))


def discover():
    """Every kernel (not device function) defined in a module of fastreg.cuda.

    Returns
    -------
    dict
        ``"module.kernel"`` -> the dispatcher (a FakeCUDAKernel under the simulator).
    """
    found = {}
    for short in kernel_modules():
        mod = importlib.import_module(f"fastreg.cuda.{short}")
        for name, obj in vars(mod).items():
            py_func = getattr(obj, "py_func", None)
            if py_func is None or getattr(py_func, "__module__", None) != mod.__name__:
                continue
            if hasattr(obj, "targetoptions"):          # numba.cuda dispatcher
                is_kernel = not obj.targetoptions.get("device", False)
            elif hasattr(obj, "_device"):              # the simulator's FakeCUDAKernel
                is_kernel = not obj._device
            else:
                continue
            if is_kernel:
                found[f"{short}.{name}"] = obj
    return found


# --- recording the signatures under the simulator -------------------------------------------------

def _encode_type(value):
    """A JSON-able description of the Numba type a launch gives ``value``."""
    import numba
    ty = numba.typeof(value)
    if isinstance(ty, numba.types.Array):
        return ["array", str(ty.dtype), ty.ndim, ty.layout]
    return ["scalar", str(ty)]


def decode_type(desc):
    """The Numba type of an ``_encode_type`` description."""
    import numpy as np
    from numba.core import types
    from numba.np.numpy_support import from_dtype
    if desc[0] == "array":
        return types.Array(from_dtype(np.dtype(desc[1])), int(desc[2]), desc[3])
    name = desc[1]
    if name == "bool":
        return types.boolean
    try:
        return from_dtype(np.dtype(name))
    except Exception:
        raise ValueError(f"unsupported kernel argument type {name!r} in a recorded signature")


def type_str(desc):
    """Short text of an encoded type: ``float32[::1]``, ``uint64``."""
    if desc[0] == "array":
        dims = ", ".join([":"] * (desc[2] - 1) + ["::1" if desc[3] == "C" else ":"])
        return f"{desc[1]}[{dims}]"
    return desc[1]


def _record_launches():
    """Patch the simulator so that a kernel launch records its argument types and runs nothing.

    Returns the dict it fills: ``"module.kernel"`` -> list of encoded signatures.
    """
    from numba.cuda.simulator import kernel as simkernel
    seen = {}
    original = simkernel.FakeCUDAKernel.__call__

    def record(self, *args):
        if self._device or simkernel._kernel_context is not None:
            return original(self, *args)
        mod = self.fn.__module__
        if mod.startswith("fastreg.cuda."):
            key = f"{mod[len('fastreg.cuda.'):]}.{self.fn.__name__}"
            sig = [_encode_type(a) for a in args]
            if sig not in seen.setdefault(key, []):
                seen[key].append(sig)
            return None
        return original(self, *args)

    simkernel.FakeCUDAKernel.__call__ = record
    return seen


def _exercise(dtypes=FLOAT_DTYPES):
    """Call every op of the CUDA backend on tiny inputs, in each dtype and in each mode that
    reaches another kernel (batch-norm regimes, uint8 images, ...). Under ``_record_launches``
    this runs no kernel: it only shows how each is launched. Public functions are called too
    (backend="cuda"), so that the types their wrappers pass are the ones recorded."""
    import numpy as np

    import fastreg
    from fastreg import optim
    fc = importlib.import_module("fastreg.cuda")

    u32 = np.uint32
    fc.philox4x32(np.zeros((3, 4), u32), np.zeros((3, 2), u32), np.zeros((3, 4), u32))
    fc.random_bits(7, 3, np.zeros(9, u32))
    fc.dropout_mask(7, 3, 1 << 31, np.zeros(9, np.uint8))
    fc.dropout_mask(7, 3, 1 << 31, np.zeros(9, np.bool_))
    fc.dropout_mask_packed(7, 3, 1 << 31, 9, np.zeros(2, np.uint8))
    fastreg.dropout_mask((9,), 0.5, seed=7, packed=True, backend="cuda")
    fastreg.dropout_mask((9,), 0.5, seed=7, packed=False, backend="cuda")
    # 16-bit floats: the conversion passes around the float32 kernels (fastreg/_half.py)
    for kind in (0, 1):
        fc.half_to_float32(np.zeros(9, np.uint16), kind, np.zeros(9, np.float32))
        fc.float32_to_half(np.zeros(9, np.float32), kind, np.zeros(9, np.uint16))
    fastreg.dropout(np.ones(9, np.float16), 0.5, seed=7, backend="cuda")
    for name in dtypes:
        dt = np.dtype(name)
        v = np.linspace(-1, 1, 9).astype(dt)
        fc.uniform(7, 3, np.zeros(9, dt))
        fc.dropout(v, 7, 3, 1 << 31, 2.0, np.zeros(9, dt))
        fastreg.dropout(v, 0.5, seed=7, backend="cuda")
        fastreg.dropout_backward(v, 0.5, seed=7, backend="cuda")
        x4 = np.ones((2, 3, 2, 2), dt)
        fc.group_dropout(x4, np.ones((2, 2), np.uint8), 2.0, np.zeros_like(x4))
        fastreg.channel_dropout(x4, 0.5, seed=7, backend="cuda")
        fastreg.drop_path(x4, 0.5, seed=7, backend="cuda")

        fc.penalty_sums(v)
        fastreg.l1_penalty(v, 0.1, backend="cuda")
        for l1, c2 in ((0.1, 0.0), (0.0, 0.2), (0.1, 0.2)):
            for acc in (False, True):
                fc.penalty_grad(v, l1, c2, np.zeros(9, dt), acc)
        fastreg.elastic_net_grad(v, 0.1, 0.2, backend="cuda")
        fc.soft_threshold(v, 0.1, 1.0, np.zeros(9, dt))
        fastreg.prox_elastic_net(v.copy(), 0.1, 0.2, backend="cuda")
        w3 = np.ones((2, 3, 2), dt)
        fc.group_lasso(w3, 0.1, np.zeros_like(w3))
        fastreg.prox_group_lasso(w3.copy(), 0.1, axis=1, backend="cuda")
        fc.all_finite(v)

        g = v[::-1].copy()
        fc.sgd_step(v.copy(), g, None, 0.1, 0.0, 1.0, 0.0, 1.0, False, False, 0.0)
        fc.sgd_step(v.copy(), g, np.zeros(9, dt), 0.1, 0.01, 0.99, 0.9, 0.9, True, False, 0.01)
        fc.adam_step(v.copy(), g, np.zeros(9, dt), np.zeros(9, dt), None, 0.0, 0.99, 0.1, 0.999,
                     0.001, 1e-8, 0.01, 0.5)
        fc.adam_step(v.copy(), g, np.zeros(9, dt), np.zeros(9, dt), np.zeros(9, dt), 0.01, 1.0,
                     0.1, 0.999, 0.001, 1e-8, 0.01, 0.5)
        for opt in (optim.SGD([v.copy()], lr=0.1, momentum=0.9, nesterov=True,
                              weight_decay=0.01, l1=0.001, backend="cuda"),
                    optim.AdamW([v.copy()], lr=0.01, amsgrad=True, backend="cuda")):
            opt.step([g])
            opt.step([g])

        # batch norm: (A, C, B) with B >= 32 (rows regime) and B < 32 (columns regime)
        for shape in ((2, 3, 40), (4, 3, 2)):
            x = np.linspace(-1, 1, int(np.prod(shape))).astype(dt).reshape(shape)
            c = shape[1]
            f64 = lambda: np.zeros(c, np.float64)   # noqa: E731
            own = lambda: np.zeros(c, dt)            # noqa: E731
            mean, m2, inv = f64(), f64(), f64()
            fc.bn_stats(x, mean, m2)
            fc.bn_forward_train(x, np.ones(c, dt), np.zeros(c, dt), 1e-5, x.copy(), True,
                                np.zeros_like(x), mean, m2, inv)
            fc.bn_forward_train(x, None, None, 1e-5, None, False, np.zeros_like(x), mean, m2, inv)
            fc.bn_apply(x, own(), own(), own(), None, False, np.zeros_like(x))
            fc.bn_apply(x, own(), own(), own(), x.copy(), True, np.zeros_like(x))
            fc.bn_backward_reduce(x, x, x.copy(), f64(), f64(), f64())
            fc.bn_backward_reduce(x, x, None, f64(), f64(), f64())
            fc.bn_backward_apply(x, x, x.copy(), own(), own(), own(), own(), np.zeros_like(x),
                                 np.zeros_like(x))
            fc.bn_backward_apply(x, x, None, own(), own(), None, None, np.zeros_like(x), None)
            fc.bn_backward(x, x, x.copy(), f64(), np.ones(c), np.ones(c, dt), True,
                           np.zeros_like(x), np.zeros_like(x), own(), own())
            fc.bn_forward_coeffs(f64(), np.ones(c), 4, np.ones(c, dt), np.zeros(c, dt), 1e-5,
                                 False, f64(), f64(), own(), own(), own())
            fc.bn_forward_coeffs(own(), np.ones(c, dt), 1, None, None, 1e-5, True, f64(), f64(),
                                 own(), own(), own())
            fc.bn_running_update(f64(), np.ones(c), 4, own(), np.ones(c, dt), 0.1)
            fc.bn_running_update(f64(), np.ones(c), 4, f64(), None, 0.1)
            fc.bn_backward_coeffs(f64(), f64(), f64(), np.ones(c), np.ones(c, dt), 4, True, own(),
                                  own(), own(), own(), own(), own())
            # the public functions, as a layer calls them (train, backward, eval)
            rm, rv = np.zeros(c, dt), np.ones(c, dt)
            y, saved = fastreg.batch_norm(x, rm, rv, np.ones(c, dt), np.zeros(c, dt),
                                          training=True, activation="relu", backend="cuda")
            fastreg.batch_norm_backward(x, x, saved, np.ones(c, dt), activation="relu", y=y,
                                        backend="cuda")
            fastreg.batch_norm(x, rm, rv, training=False, backend="cuda")
            fastreg.batch_norm_stats(x, backend="cuda")

    # augmentation: images (M, H, W, C) in uint8 and float32 (integer targets for flips and
    # nearest resampling), rows (N, L) for noise and mixup
    mats = np.tile(np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]]), (2, 1, 1))
    flags = np.array([1, 0], np.uint8)
    rects = np.array([[0, 0, 1, 1], [1, 1, 1, 1]], np.int64)
    partner = np.array([1, 0], np.int64)
    for name in ("uint8", "float32", "int32", "int64"):
        img = np.ones((2, 3, 3, 2), name)
        fc.aug_flip(img, flags, flags, np.zeros_like(img))
        fc.aug_affine(img, mats, 1, 0, True, np.zeros_like(img))
        if name in ("uint8", "float32"):
            fc.aug_affine(img, mats, 0, 0, False, np.zeros_like(img))
            fc.aug_erase(img, rects, 0, np.zeros_like(img))
            fc.aug_paste(img, partner, rects, np.zeros_like(img))
            rows = np.ones((2, 5), name)
            fc.aug_noise(rows, 7, 3, np.ones(2, np.float32), np.zeros_like(rows))
            fc.aug_mix(rows, partner, np.full(2, 0.3, np.float32), np.zeros_like(rows))

    # colour augmentation (uint8 NHWC): statistics (contrast), tables and per-pixel ops, blur,
    # normalization
    img = np.ones((2, 3, 3, 3), np.uint8)
    fc.aug_color(img, np.array([3, 2], np.int64), np.array([0.5, 1.5]), np.zeros_like(img))
    fc.aug_blur(img, np.full((2, 3), 1 / 3, np.float32), np.zeros_like(img))
    fc.aug_normalize(img, np.ones((3, 256), np.float32), np.zeros(img.shape, np.float32))

    # softmax cross-entropy: hard targets with and without smoothing, soft targets, loss only
    for name in dtypes:
        dt = np.dtype(name)
        x = np.linspace(-1, 1, 12).astype(dt).reshape(3, 4)
        rows, tw = np.zeros(3), np.ones(4)
        fc.ce_hard(x, np.array([0, 3, 1]), tw, None, -100, 1.0, rows, np.zeros_like(x))
        fc.ce_hard(x, np.array([0, 3, 1]), tw, tw / 4, -100, 1.0, rows, None)
        fc.ce_soft(x, np.full_like(x, 0.25), tw, None, 1.0, rows, np.zeros_like(x))
        fc.ce_soft(x, np.full_like(x, 0.25), tw, tw / 4, 1.0, rows, None)
        fastreg.cross_entropy(x, np.array([0, 3, 1]), label_smoothing=0.1, backend="cuda")

    # weight EMA (both lerp forms) and gradient norms / scaling, kernels and public functions
    for name in dtypes:
        dt = np.dtype(name)
        v = np.linspace(-1, 1, 9).astype(dt)
        for w in (0.1, 0.7):
            fc.ema_update([v.copy()], [v[::-1].copy()], dt.type(w))
        fastreg.ema_update([v.copy()], [v], 0.9, backend="cuda")
        for p in (2.0, 1.0, float("inf"), 3.0):
            fc.norm_sum([v], p)
            fc.row_norm_sums(v.reshape(3, 3), p, np.zeros(3))
        fc.scale([v.copy()], dt.type(0.5))
        fc.scale_rows(v.reshape(3, 3).copy(), np.ones(3, dt))
        fastreg.clip_grad_norm([v.copy()], 0.1, backend="cuda")
        fastreg.adaptive_clip_grad([v.reshape(3, 3)], [v.reshape(3, 3).copy()], backend="cuda")

    # DropBlock: the mask in both layouts, then the public forward and backward
    fc.drop_block_mask(7, 3, 1 << 30, 2, False, np.zeros((2, 3, 4, 5), np.uint8))
    fc.drop_block_mask(7, 3, 1 << 30, 2, True, np.zeros((2, 4, 5, 3), np.uint8))
    for name in dtypes:
        x4 = np.linspace(-1, 1, 120).astype(name).reshape(2, 3, 4, 5)
        fastreg.drop_block(x4, 0.3, 3, seed=7, backend="cuda")
        fastreg.drop_block_backward(x4, 0.3, 3, seed=7, backend="cuda")


def record_signatures(timeout=300):
    """The argument types each kernel is launched with, from ``_exercise`` under the simulator
    in a child process (the simulator must be chosen before Numba is imported).

    Returns
    -------
    dict
        ``"module.kernel"`` -> list of encoded signatures (see ``decode_type``).
    """
    import fastreg
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", FASTREG_CUDA_TPB="32")
    # the child, started in a scratch folder, imports this very fastreg: an installed one as
    # usual, one from a source tree through PYTHONPATH
    home = os.path.dirname(os.path.dirname(os.path.abspath(fastreg.__file__)))
    if os.path.basename(home) not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = os.pathsep.join([home] + [p for p in [env.get("PYTHONPATH")] if p])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "signatures.json")
        code = ("import sys; from fastreg.cuda import check; "
                "check._record_to(sys.argv[1])")
        proc = subprocess.run([sys.executable, "-c", code, path], env=env, cwd=tmp,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError("recording the kernel signatures under the simulator failed:\n"
                               + (proc.stdout + proc.stderr)[-4000:])
        with open(path) as f:
            return json.load(f)


def _record_to(path):
    """Child-process side of ``record_signatures``: write the recorded signatures to path."""
    seen = _record_launches()
    _exercise()
    with open(path, "w") as f:
        json.dump(seen, f)


# --- tools ----------------------------------------------------------------------------------------

def find_tools(ptxas=None):
    """Check that numba-cuda can compile without a GPU, and find ptxas.

    Parameters
    ----------
    ptxas : str, optional
        Path of the ptxas to use; by default the one of the nvidia-cuda-nvcc wheel (found by
        cuda.pathfinder, which then looks at CUDA_HOME / CUDA_PATH and the system toolkit).

    Returns
    -------
    dict
        Versions and paths (``ptxas``, ``ptxas_version``, ``nvvm``, ``numba_cuda``, ``lto``).

    Raises
    ------
    ToolsMissing
        With the reason and the install command.
    """
    hint = 'install them with: pip install "fastreg-kernels[cuda-build]"'
    try:
        from numba import config
        if config.ENABLE_CUDASIM:
            raise ToolsMissing("NUMBA_ENABLE_CUDASIM is set: the simulator cannot compile for a "
                               "GPU; run without it")
        from numba import cuda  # noqa: F401
        from numba.cuda.cudadrv import driver, nvrtc, nvvm
    except ToolsMissing:
        raise
    except Exception as exc:
        raise ToolsMissing(f"numba-cuda does not import ({type(exc).__name__}: {exc}); {hint}")
    info = {}
    try:
        from importlib import metadata
        info["numba_cuda"] = metadata.version("numba-cuda")
    except Exception:
        info["numba_cuda"] = "?"
    try:
        info["nvvm"] = ".".join(map(str, nvvm.NVVM().get_version()))
    except Exception as exc:
        raise ToolsMissing(f"NVVM (libnvvm) not found ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); {hint}")
    try:
        nvrtc.get_supported_ccs()
    except Exception as exc:
        raise ToolsMissing(f"NVRTC (libnvrtc) not found ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); {hint}")
    info["lto"] = bool(driver._have_nvjitlink())
    if ptxas is None:
        try:
            from cuda.pathfinder import find_nvidia_binary_utility
            ptxas = find_nvidia_binary_utility("ptxas")
        except Exception:
            ptxas = None
    if not ptxas or not os.path.isfile(ptxas):
        raise ToolsMissing(f"ptxas not found{' at ' + ptxas if ptxas else ''} (the "
                           f"nvidia-cuda-nvcc wheel ships it; or pass --ptxas PATH); {hint}")
    try:
        out = subprocess.run([ptxas, "--version"], capture_output=True, text=True, timeout=60)
        version = re.search(r"release [\d.]+, V([\d.]+)", out.stdout)
    except OSError as exc:
        raise ToolsMissing(f"ptxas at {ptxas} does not run ({exc})")
    info["ptxas"] = ptxas
    info["ptxas_version"] = version.group(1) if version else "?"
    return info


# --- compiling ------------------------------------------------------------------------------------

@contextlib.contextmanager
def _as_device(cc):
    """Device functions called from a kernel are compiled for the current device's compute
    capability: stand in for a device of capability ``cc`` (no driver is loaded). Their LLVM IR
    does not depend on the capability from 6.0 on (only float64 atomics and fastmath tanh do), so
    the overloads compiled for one target are valid for the others."""
    from types import SimpleNamespace

    from numba.cuda import dispatcher
    saved = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=cc[:2])
    try:
        yield
    finally:
        dispatcher.get_current_device = saved


def lower(kernel, argtypes, cc):
    """Type and lower ``kernel`` for ``argtypes`` as a launch would (its own target options).

    Returns
    -------
    (library, compile result)
        The CUDACodeLibrary (call ``ptx_for`` on it) and numba's CompileResult.
    """
    from numba.core import types
    from numba.cuda.compiler import compile_cuda, kernel_fixup
    from numba.cuda.cudadrv import nvvm
    opts = kernel.targetoptions
    debug = bool(opts.get("debug"))
    fastmath = bool(opts.get("fastmath"))
    nvvm_options = {"fastmath": fastmath, "opt": 3 if opts.get("opt", True) else 0}
    if debug:
        nvvm_options["g"] = None
    with _as_device(cc):
        cres = compile_cuda(kernel.py_func, types.void, tuple(argtypes), debug=debug,
                            lineinfo=bool(opts.get("lineinfo")),
                            forceinline=bool(opts.get("forceinline")), fastmath=fastmath,
                            nvvm_options=nvvm_options, cc=cc[:2],
                            max_registers=opts.get("max_registers"), lto=bool(opts.get("lto")))
    lib = cres.library
    entry = lib.get_function(cres.fndesc.llvm_func_name)
    lib._entry_name = cres.fndesc.llvm_func_name
    kernel_fixup(entry, debug)
    nvvm.set_launch_bounds(entry, opts.get("launch_bounds"))
    return lib, cres


def ptx_for(lib, cc):
    """The PTX the driver would assemble for target ``cc``: after link-time optimization when the
    library uses LTO (nvJitLink), else NVVM's PTX."""
    if lib._lto:
        ptx = lib.get_lto_ptx(cc=cc)
    else:
        ptx = lib.get_asm_str(cc=cc)
    return ptx.rstrip("\x00").strip() + "\n"


_RESOURCE_PATTERNS = {
    "stack": r"(\d+) bytes stack frame",
    "spill_st": r"(\d+) bytes spill stores",
    "spill_ld": r"(\d+) bytes spill loads",
    "regs": r"Used (\d+) registers",
    "barriers": r"used (\d+) barriers",
    "shared": r"(\d+) bytes smem",
    "lmem": r"(\d+) bytes lmem",
}


def parse_ptxas(log):
    """Resources of the (single) entry function from ``ptxas -v`` output: regs, spill_st,
    spill_ld, stack (local memory per thread, bytes; older ptxas report it as lmem), shared
    (static shared memory per block, bytes), barriers. Absent figures are 0."""
    res = {}
    for key, pattern in _RESOURCE_PATTERNS.items():
        m = re.search(pattern, log)
        res[key] = int(m.group(1)) if m else 0
    res["local"] = max(res.pop("stack"), res.pop("lmem"))
    if not re.search(_RESOURCE_PATTERNS["regs"], log):
        raise ValueError("no 'Used N registers' line in the ptxas output:\n" + log[-2000:])
    return res


def assemble(ptx, cc, ptxas):
    """``ptxas -arch=sm_XY[a] -v``; returns (resources, log). Raises RuntimeError on failure."""
    arch = f"sm_{cc[0]}{cc[1]}{cc[2]}"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([ptxas, f"-arch={arch}", "-v", src, "-o",
                               os.path.join(tmp, "kernel.cubin")],
                              capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas -arch={arch} failed (exit {proc.returncode}):\n"
                           + log[-3000:])
    return parse_ptxas(log), log


# --- reading the PTX ------------------------------------------------------------------------------

_INSTR = re.compile(r"^(?:@!?%\w+\s+)?([a-z][\w.]*)\s*(.*?);\s*(?://.*)?$")
_REG = re.compile(r"%[a-zA-Z]+\d*")
_NO_DEST = ("st.", "red.", "bra", "ret", "bar", "membar", "fence", "call", "exit", "trap",
            "prefetch")
_FLOAT_SUFFIX = re.compile(r"\.(f16|f16x2|bf16|bf16x2|f32|f64)$")


def instructions(ptx):
    """(opcode, [destination registers], [source registers], operand text) per instruction."""
    out = []
    for line in ptx.splitlines():
        line = line.strip()
        if not line or line.startswith(("//", ".", "{", "}", "$")) or line.endswith(":"):
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        op, rest = m.group(1), m.group(2)
        ops, depth, cur = [], 0, ""
        for ch in rest:
            if ch in "{[":
                depth += 1
            elif ch in "}]":
                depth -= 1
            if ch == "," and depth == 0:
                ops.append(cur.strip())
                cur = ""
            else:
                cur += ch
        if cur.strip():
            ops.append(cur.strip())
        if not ops or op.startswith(_NO_DEST):
            dests, srcs = [], [r for o in ops for r in _REG.findall(o)]
        else:
            dests = _REG.findall(ops[0]) if not ops[0].startswith("[") else []
            srcs = [r for o in ops[1:] for r in _REG.findall(o)]
        out.append((op, dests, srcs, rest))
    return out


def _float_op(op):
    return bool(_FLOAT_SUFFIX.search(op))


def _rounded(op):
    """An explicit rounding modifier: the instruction is never contracted by ptxas."""
    return any(f".{r}." in op + "." for r in ("rn", "rz", "rm", "rp"))


def fma_findings(ptx):
    """Floating-point multiply-adds in the PTX, and pairs ptxas may contract into one.

    Returns
    -------
    (int, int)
        Explicit ``fma``/``mad`` float instructions; plain ``mul`` results (possibly negated)
        used by a plain ``add``/``sub``.
    """
    instrs = instructions(ptx)
    fmas = sum(1 for op, *_ in instrs if op.split(".")[0] in ("fma", "mad") and _float_op(op))
    products = set()
    changed = True
    while changed:   # plain products, and negations of them
        changed = False
        for op, dests, srcs, _ in instrs:
            root = op.split(".")[0]
            if not (_float_op(op) and dests):
                continue
            if (root == "mul" and not _rounded(op)) or (root == "neg" and products & set(srcs)):
                if dests[0] not in products:
                    products.add(dests[0])
                    changed = True
    pairs = sum(1 for op, dests, srcs, _ in instrs
                if op.split(".")[0] in ("add", "sub") and _float_op(op) and not _rounded(op)
                and products & set(srcs))
    return fmas, pairs


def param_index(argtypes, position, target_context):
    """Index of the first PTX kernel parameter of argument ``position`` (arguments are flattened:
    an array is 5 + 2 * ndim parameters)."""
    def leaves(t):
        return sum(leaves(e) for e in t) if isinstance(t, (list, tuple)) else 1

    dmm = target_context.data_model_manager
    return sum(leaves(dmm.lookup(t).get_argument_type()) for t in argtypes[:position])


def counter_findings(ptx, param):
    """Problems with the 64-bit counter loaded from kernel parameter ``param`` (an index).

    The counter's values are followed from the parameter through every instruction except
    multiplies (Philox's rounds, where the counter ends and random words begin).

    Returns
    -------
    list of str
        Empty when the high 32-bit word of the counter is taken (a 64-bit ``shr`` by 32 or an
        unpacking ``mov.b64``) and no floating-point instruction reads the counter.
    """
    instrs = instructions(ptx)
    suffix = f"_param_{param}]"
    tainted = set()
    for op, dests, srcs, rest in instrs:
        if op.startswith("ld.param") and rest.replace(" ", "").endswith(suffix):
            tainted.update(dests)
    if not tainted:
        return [f"kernel parameter {param} (the counter) is never loaded"]
    changed = True
    while changed:
        changed = False
        for op, dests, srcs, _ in instrs:
            if op.split(".")[0] in ("mul", "mad", "mul24", "mad24"):
                continue
            if dests and tainted & set(srcs) and not set(dests) <= tainted:
                tainted.update(dests)
                changed = True
    problems = []
    high = False
    floats = set()
    for op, dests, srcs, rest in instrs:
        if not tainted & set(srcs):
            continue
        parts = op.split(".")
        if parts[0] == "shr" and parts[-1] in ("u64", "b64", "s64") and \
                rest.replace(" ", "").endswith(",32"):
            high = True
        if op == "mov.b64" and rest.lstrip().startswith("{"):
            high = True
        if _float_op(op) or (parts[0] == "cvt" and any(p in ("f16", "bf16", "f32", "f64")
                                                       for p in parts[1:])):
            floats.add(op)
    if not high:
        problems.append("the counter's high 32-bit word is never taken (no 64-bit shift by 32): "
                        "was it narrowed to 32 bits?")
    if floats:
        problems.append("the counter reaches floating-point instructions "
                        f"({', '.join(sorted(floats))}): it went through a float")
    return problems


# --- the check ------------------------------------------------------------------------------------

_SHORT = {"float": "f", "bfloat": "bf", "uint": "u", "int": "i"}


def dtype_label(sig):
    """The element types of a specialization's arrays, in argument order, without repeats and
    abbreviated: ``f32`` (float32 only), ``u8/f64`` (uint8 images, float64 matrices)."""
    seen = []
    for d in sig:
        if d[0] == "array":
            m = re.fullmatch(r"([a-z]+?)(\d+)", d[1])
            name = _SHORT.get(m.group(1), m.group(1)) + m.group(2) if m else d[1]
            if name not in seen:
                seen.append(name)
    return "/".join(seen) or "-"


def check_kernel(key, kernel, sigs, archs, tools, keep_ptx=None):
    """Compile one kernel in each recorded signature for each target and check its promises.

    Returns
    -------
    list of dict
        One row per (signature, target): kernel, dtype, signature, arch, regs, spill_st,
        spill_ld, local, shared, fma, contractible, seconds, and ``problems`` (strings; empty
        when the row passes) and ``error`` (None, or the compile failure).
    """
    import inspect
    flags = POLICY.get(key, ())
    names = list(inspect.signature(kernel.py_func).parameters)
    rows = []
    labels = {}
    for sig in sigs:
        label = dtype_label(sig)
        labels[label] = labels.get(label, 0) + 1
        if labels[label] > 1:
            label = f"{label}#{labels[label]}"
        base = {"kernel": key, "dtype": label, "signature": ", ".join(map(type_str, sig)),
                "flags": list(flags)}
        sig_problems = [f"argument {n!r} is typed {type_str(d)}, not uint64"
                        for n, d in zip(names, sig)
                        if n in UINT64_ARGS and d != ["scalar", "uint64"]]
        try:
            argtypes = [decode_type(d) for d in sig]
            t0 = time.perf_counter()
            lib, cres = lower(kernel, argtypes, archs[0])
            lowered = time.perf_counter() - t0
        except Exception as exc:
            for cc in archs:
                rows.append(dict(base, arch=_arch_name(cc), error=_short_error(exc),
                                 problems=[f"does not compile: {_short_error(exc)}"]))
            continue
        for cc in archs:
            row = dict(base, arch=_arch_name(cc), error=None, problems=list(sig_problems))
            t0 = time.perf_counter()
            try:
                ptx = ptx_for(lib, cc)
                if keep_ptx:
                    os.makedirs(keep_ptx, exist_ok=True)
                    fname = f"{key}.{label}.{_arch_name(cc)}.ptx".replace("#", "-").replace("/", "-")
                    with open(os.path.join(keep_ptx, fname), "w") as f:
                        f.write(ptx)
                res, _ = assemble(ptx, cc, tools["ptxas"])
            except Exception as exc:
                row.update(error=_short_error(exc))
                row["problems"].append(f"does not compile: {_short_error(exc)}")
                rows.append(row)
                continue
            row.update(res)
            row["fma"], row["contractible"] = fma_findings(ptx)
            row["seconds"] = round(time.perf_counter() - t0 + lowered, 2)
            lowered = 0.0
            if HOT in flags and (res["spill_st"] or res["spill_ld"]):
                row["problems"].append(
                    f"hot kernel spills registers ({res['spill_st']} bytes stored, "
                    f"{res['spill_ld']} loaded per thread, {res['regs']} registers)")
            if EXACT in flags and (row["fma"] or row["contractible"]):
                row["problems"].append(
                    f"exact kernel has {row['fma']} fused multiply-add(s) and {row['contractible']}"
                    " plain multiply -> add/sub pair(s) ptxas may contract: its results can "
                    "differ from the host's (use mul_rn_device)")
            if COUNTER_ARG in names:
                pos = names.index(COUNTER_ARG)
                index = param_index(argtypes, pos, cres.target_context)
                row["problems"] += counter_findings(ptx, index)
            rows.append(row)
    return rows


def _arch_name(cc):
    return f"sm_{cc[0]}{cc[1]}{cc[2]}"


def _short_error(exc):
    text = f"{type(exc).__name__}: {exc}".strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[:6])[:600]


_COLUMNS = (("kernel", "<", 36), ("dtype", "<", 11), ("arch", "<", 6), ("regs", ">", 4),
            ("spill st/ld", ">", 11), ("local", ">", 5), ("shared", ">", 6), ("fma", ">", 4),
            ("promises", "<", 9), ("result", "<", 6))


def format_row(values):
    """One line of the table."""
    return "  ".join(f"{str(v):{align}{width}}" for v, (_, align, width) in zip(values, _COLUMNS))


def table_lines(rows):
    """The table of ``rows`` (see ``check_kernel``): header, rule, one line per row."""
    header = format_row([name for name, _, _ in _COLUMNS])
    lines = [header, "-" * len(header)]
    for r in rows:
        if r.get("error"):
            cells = [r["kernel"], r["dtype"], r["arch"], "-", "-", "-", "-", "-"]
        else:
            cells = [r["kernel"], r["dtype"], r["arch"], r["regs"],
                     f"{r['spill_st']}/{r['spill_ld']}", r["local"], r["shared"],
                     r["fma"] + r["contractible"]]
        cells += [",".join(r["flags"]) or "-", "FAIL" if r["problems"] else "ok"]
        lines.append(format_row(cells))
    return lines


def coverage_problems(kernels, sigs, selected):
    """Kernels without a POLICY entry, never launched by ``_exercise``, and stale POLICY
    entries (only among ``selected`` keys, and all stale entries when nothing is filtered)."""
    problems = []
    for key in selected:
        if key not in POLICY:
            problems.append(f"{key}: no entry in fastreg.cuda.check.POLICY (say whether it is "
                            "hot and exact)")
        if key not in sigs:
            problems.append(f"{key}: never launched by fastreg.cuda.check._exercise, so never "
                            "compiled (add a call of its op there)")
    if set(selected) == set(kernels):
        for key in POLICY:
            if key not in kernels:
                problems.append(f"POLICY names {key}, which is not a kernel of fastreg.cuda "
                                "(renamed or removed?)")
    return problems


def run(archs=DEFAULT_ARCHS, patterns=None, ptxas=None, keep_ptx=None, file=None,
        signatures=None):
    """Run the whole check and print the table; returns (exit code, rows, problems).

    Parameters
    ----------
    archs : sequence of str
        Keys of ``ARCHS`` ("80", "90", ...).
    patterns : sequence of str, optional
        fnmatch patterns on ``module.kernel`` (or on the kernel name alone): check only those.
    ptxas : str, optional
        ptxas to use (see ``find_tools``).
    keep_ptx : str, optional
        Write each PTX file into this folder.
    file : file, optional
        Where to print (stdout).
    signatures : dict, optional
        Recorded signatures to use instead of recording them now (see ``record_signatures``).
    """
    file = file or sys.stdout

    def say(text=""):
        print(text, file=file, flush=True)

    kernels = discover()
    selected = [k for k in sorted(kernels)
                if not patterns or any(fnmatch.fnmatch(k, p) or fnmatch.fnmatch(k.split(".")[1], p)
                                       for p in patterns)]
    if patterns and not selected:
        raise ValueError(f"no kernel matches {', '.join(patterns)}; kernels: "
                         + ", ".join(sorted(kernels)))
    tools = find_tools(ptxas)
    ccs = [ARCHS[a] for a in archs]
    t0 = time.perf_counter()
    sigs = signatures if signatures is not None else record_signatures()
    t_record = time.perf_counter() - t0
    say(f"fastreg.cuda.check: numba-cuda {tools['numba_cuda']}, NVVM IR {tools['nvvm']}, "
        f"ptxas {tools['ptxas_version']} ({tools['ptxas']}), link-time optimization "
        f"{'on (nvJitLink)' if tools['lto'] else 'off'}")
    say(f"targets: {', '.join(_arch_name(c) for c in ccs)}; {len(selected)} kernels; "
        f"signatures recorded under the simulator in {t_record:.1f} s")
    say()
    rows = []
    lines = iter(())
    for i, key in enumerate(selected):
        new = check_kernel(key, kernels[key], sigs.get(key, []), ccs, tools, keep_ptx)
        rows += new
        lines = table_lines(rows)
        if i == 0:
            say(lines[0])
            say(lines[1])
        for line in lines[len(lines) - len(new):]:
            say(line)
    problems = coverage_problems(kernels, sigs, selected)
    for r in rows:
        problems += [f"{r['kernel']} [{r['dtype']}, {r['arch']}]: {p}" for p in r["problems"]]
    say()
    say("regs: registers per thread; spill st/ld: bytes of spill stores / loads per thread; "
        "local: local (stack) memory per thread, bytes; shared: static shared memory per block, "
        "bytes (dynamic shared memory is set at launch); fma: fused multiply-adds plus plain "
        "multiply -> add pairs ptxas may fuse; promises: hot = no spills, exact = no FMA "
        "contraction (bitwise agreement with the host)")
    nsig = sum(len(sigs.get(k, [])) for k in selected)
    say(f"{len(selected)} kernels, {nsig} signatures, {len(rows)} compiles in "
        f"{time.perf_counter() - t0:.0f} s: {len(problems)} problem(s)")
    for p in problems:
        say(f"FAIL {p}")
    return (EXIT_FAILED if problems else EXIT_OK), rows, problems


def main(argv=None):
    """Entry point of ``python -m fastreg.cuda.check``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m fastreg.cuda.check",
        description="Compile every CUDA kernel of fastreg to PTX for real GPUs (NVVM), assemble "
                    "it with ptxas, print registers, spills, local and shared memory, and check "
                    "the design's promises (no spills in hot kernels, no FMA contraction in "
                    "exact kernels, 64-bit Philox counters). Needs no GPU: "
                    'pip install "fastreg-kernels[cuda-build]".',
        epilog="exit status: 0 passed (or tools missing with --skip-if-missing), 1 a kernel "
               "failed, 2 bad arguments, 3 tools missing")
    parser.add_argument("--arch", default=",".join(DEFAULT_ARCHS), metavar="CC[,CC...]",
                        help=f"targets, of {','.join(ARCHS)} (default "
                             f"{','.join(DEFAULT_ARCHS)}; 90 and newer compile as sm_90a etc., "
                             "as Numba does on such a GPU)")
    parser.add_argument("--kernels", nargs="+", metavar="PATTERN",
                        help="check only these kernels (fnmatch patterns on module.kernel or the "
                             "kernel name, e.g. 'dropout.*' '_sgd_kernel'); coverage is then "
                             "checked for these only")
    parser.add_argument("--ptxas", metavar="PATH",
                        help="the ptxas to use (default: the nvidia-cuda-nvcc wheel's)")
    parser.add_argument("--keep-ptx", metavar="DIR", help="write each PTX file into DIR")
    parser.add_argument("--json", metavar="FILE", help="also write the rows and problems as JSON")
    parser.add_argument("--skip-if-missing", action="store_true",
                        help="exit 0 (after saying why) when the compilers are not installed")
    args = parser.parse_args(argv)
    archs = [a.strip().removeprefix("sm_").rstrip("a") for a in args.arch.split(",") if a.strip()]
    bad = [a for a in archs if a not in ARCHS]
    if bad or not archs:
        parser.error(f"--arch: unknown {', '.join(bad) or 'empty list'}; choose from "
                     f"{', '.join(ARCHS)}")
    try:
        code, rows, problems = run(archs, args.kernels, args.ptxas, args.keep_ptx)
    except ToolsMissing as exc:
        if args.skip_if_missing:
            print(f"fastreg.cuda.check: SKIPPED, tools missing: {exc}")
            return EXIT_OK
        print(f"fastreg.cuda.check: tools missing: {exc}", file=sys.stderr)
        return EXIT_MISSING
    except ValueError as exc:
        print(f"fastreg.cuda.check: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "problems": problems}, f, indent=1)
    return code


if __name__ == "__main__":
    sys.exit(main())
