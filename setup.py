"""Build script for the compiled hot path (gateway/_fast).

Everything else is declared in pyproject.toml. Set VOTE_FAST_DEBUG=1 to build with
Cython annotations (gateway/_fast/*.html) and line tracing for profiling.
"""

import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("VOTE_FAST_DEBUG") == "1"

extensions = [
    Extension(
        "gateway._fast._core",
        ["gateway/_fast/_core.pyx"],
        # The parts _core.pyx includes and its declarations: a change to any of them
        # rebuilds the extension.
        depends=["gateway/_fast/_core.pxd", *sorted(glob.glob("gateway/_fast/_*.pxi"))],
        # libcrypto gives us HMAC-SHA256, Ed25519 and CRYPTO_memcmp (constant time).
        libraries=["crypto"],
        # -ffp-contract=off: no fused multiply-add (the default on aarch64), so the rate
        # limiter's float arithmetic rounds exactly as the pure-Python reference does.
        extra_compile_args=(["-O2"] if not DEBUG else ["-O0", "-g"]) + ["-ffp-contract=off"],
        define_macros=[("CYTHON_TRACE_NOGIL", "1")] if DEBUG else [],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        annotate=DEBUG,
        compiler_directives={
            "boundscheck": DEBUG,
            "wraparound": DEBUG,
            "linetrace": DEBUG,
            "embedsignature": True,
        },
    )
)
