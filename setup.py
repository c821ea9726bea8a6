"""Only here to pass cffi_modules (setuptools refuses them in pyproject.toml).

FASTREG_NO_C=1 installs without the C extension; fastreg then runs on its other backends.
"""
import os

from setuptools import setup

if os.environ.get("FASTREG_NO_C", "") not in ("", "0"):
    setup()
else:
    setup(cffi_modules=["csrc/ffi_build.py:ffibuilder"])
