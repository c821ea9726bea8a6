"""cffi (API mode) build of the C backend: the extension module ``fastreg.c._fastreg_c``.

Used two ways:

* by setuptools at install time: setup.py passes ``cffi_modules=["csrc/ffi_build.py:ffibuilder"]``;
* directly, for development: ``python csrc/ffi_build.py`` compiles in a build/ folder and copies
  the module into fastreg/c/.

Environment:
    FASTREG_NATIVE=1    add -march=native (the AVX2 kernels are chosen at run time without it)
    FASTREG_SANITIZE=1  -O1 -g with AddressSanitizer and UndefinedBehaviorSanitizer (the module
                        then needs the ASan runtime preloaded; see .ci/c_sanitize.sh)
"""
import os
import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODULE = "fastreg.c._fastreg_c"
SOURCES = ["dropout.c", "penalty.c", "optim.c", "batchnorm.c", "augment.c", "augment_color.c",
           "dropblock.c", "multi_tensor.c", "loss.c", "pool.c"]
HEADERS = ["fastreg.h", "fr_threads.h", "philox.h", "elementwise.h", "half.h", "fr_pool.h"]


def _flag(name):
    return os.environ.get(name, "") not in ("", "0")


def _cdef_text():
    """fastreg.h without preprocessor lines (cdef does not take #include or #ifndef)."""
    with open(os.path.join(HERE, "fastreg.h")) as f:
        text = f.read()
    return "\n".join(line for line in text.splitlines() if not re.match(r"\s*#", line))


def _flags():
    if sys.platform == "win32":
        return ["/O2", "/openmp", "/fp:precise"], []
    if _flag("FASTREG_SANITIZE"):
        san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
        # -fno-wrapv: Python's CFLAGS carry -fwrapv, which would hide signed overflow from UBSan
        compile_args = ["-O1", "-g", "-fno-omit-frame-pointer", "-fno-wrapv", "-fopenmp",
                        "-ffp-contract=off", "-fno-math-errno"] + san
        return compile_args, ["-fopenmp"] + san
    # -ffp-contract=off: no fused multiply-add may change a rounding (results are bit-exact)
    # -fno-math-errno: sqrt need not set errno, so it is one instruction and loops with it
    # vectorize (no effect on any result)
    compile_args = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno"]
    if _flag("FASTREG_NATIVE"):
        compile_args.append("-march=native")
    return compile_args, ["-fopenmp"]


def _parallel_compile():
    """Compile the sources on every core of this build: distutils compiles an extension's
    sources one after another, which made the C build take minutes. Its ``CCompiler.compile``
    (what the Unix compilers use; MSVC has its own) is replaced, in this build process only, by
    the same steps with the per-file ``_compile`` calls (one compiler process each) on a thread
    pool; errors are raised as before."""
    import importlib

    import setuptools  # noqa: F401  (makes ``distutils`` setuptools' copy, the one it builds with)
    bases = set()
    for name in ("distutils.ccompiler", "setuptools._distutils.ccompiler"):
        try:   # the same file, imported under both names (two module objects)
            bases.add(importlib.import_module(name).CCompiler)
        except ImportError:
            pass

    def compile(self, sources, output_dir=None, macros=None, include_dirs=None, debug=False,
                extra_preargs=None, extra_postargs=None, depends=None):
        macros, objects, extra_postargs, pp_opts, build = self._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs)
        cc_args = self._get_cc_args(pp_opts, debug, extra_preargs)
        jobs = [(obj, *build[obj]) for obj in objects if obj in build]
        workers = max(1, min(len(jobs), len(os.sched_getaffinity(0))
                             if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(lambda j: self._compile(j[0], j[1], j[2], cc_args, extra_postargs,
                                                      pp_opts), jobs):
                pass
        return objects

    for base in bases:
        base.compile = compile


def make_builder(relative=True):
    """The FFI builder; ``relative`` gives source paths relative to the current directory (what
    setuptools wants: it runs from the project root, also for sdists), else absolute paths."""
    def path(name):
        p = os.path.join(HERE, name)
        return os.path.relpath(p) if relative else p

    compile_args, link_args = _flags()
    _parallel_compile()
    ffibuilder = FFI()
    ffibuilder.cdef(_cdef_text())
    ffibuilder.set_source(
        MODULE,
        '#include "fastreg.h"\n',
        sources=[path(s) for s in SOURCES],
        depends=[path(h) for h in HEADERS],
        include_dirs=[HERE],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    return ffibuilder


ffibuilder = make_builder()


def build_in_place(verbose=False):
    """Compile in ROOT/build/cffi and copy the module into ROOT/fastreg/c/; returns its path."""
    tmpdir = os.path.join(ROOT, "build", "cffi-sanitize" if _flag("FASTREG_SANITIZE") else "cffi")
    built = make_builder(relative=False).compile(tmpdir=tmpdir, verbose=verbose)
    dest = os.path.join(ROOT, "fastreg", "c", os.path.basename(built))
    for old in os.listdir(os.path.dirname(dest)):  # a stale build for another ABI tag
        if old.startswith("_fastreg_c.") and old.endswith((".so", ".pyd")):
            os.remove(os.path.join(os.path.dirname(dest), old))
    shutil.copy2(built, dest)
    return dest


if __name__ == "__main__":
    print(build_in_place(verbose="-v" in sys.argv[1:]))
