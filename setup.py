"""Build fastgate's Cython kernels.

BLAS comes only through ``scipy.linalg.cython_blas``: nothing is linked. Newer SciPy
declares a ``blas_int`` type there; this script checks whether the installed SciPy does and
writes ``fastgate/_kernels/_config.pxi`` accordingly (``int`` otherwise).

The recurrent kernels (``fused.h``) are compiled for AVX-512, AVX2 and the baseline ISA in one
build, through function target attributes; the CPU picks one at run time, so the default
build runs on any x86-64. Set ``FASTGATE_NATIVE=1`` at build time to compile everything else
with ``-march=native`` too (the result then runs only on CPUs like the build machine's).

Threads (``fastgate.set_num_threads``) come from OpenMP where the compiler has it (GCC,
``-fopenmp``); elsewhere the kernels run single-threaded. ``FASTGATE_OPENMP=0`` turns it off.
``FASTGATE_SANITIZE=1`` builds with ``-fsanitize=address,undefined`` (CI's sanitizer step).

The kernels use GCC / Clang vector extensions and attributes: MSVC cannot compile them.
"""

import os
import sys
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).parent
KERNELS = HERE / "fastgate" / "_kernels"


def scipy_declares_blas_int() -> bool:
    import scipy

    pxd = Path(scipy.__file__).parent / "linalg" / "cython_blas.pxd"
    return "blas_int" in pxd.read_text()


def write_config() -> None:
    if scipy_declares_blas_int():
        text = "from scipy.linalg.cython_blas cimport blas_int\n"
    else:
        text = "ctypedef int blas_int\n"
    path = KERNELS / "_config.pxi"
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def compiler_flags() -> tuple[list, list]:
    """``(compile args, link args)`` for GCC / Clang, from the FASTGATE_* build variables."""
    compile_args = ["-O3", "-fno-math-errno"]
    link_args = []
    if os.environ.get("FASTGATE_NATIVE", "") not in ("", "0"):
        compile_args.append("-march=native")
    if sys.platform.startswith("linux") and os.environ.get("FASTGATE_OPENMP", "1") != "0":
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
    if os.environ.get("FASTGATE_SANITIZE", "") not in ("", "0"):
        # AddressSanitizer + UndefinedBehaviorSanitizer (CI's sanitizer step); the Python
        # that loads these modules must preload libasan. -O1, as the sanitizers advise: at
        # -O3 the instrumented kernels take GCC over 15 minutes to compile.
        sanitize = "-fsanitize=address,undefined"
        compile_args = ["-O1" if arg == "-O3" else arg for arg in compile_args]
        compile_args += [sanitize, "-fno-omit-frame-pointer", "-g"]
        link_args.append(sanitize)
    return compile_args, link_args


def extensions() -> list:
    import numpy
    from Cython.Build import cythonize

    write_config()
    compile_args, link_args = compiler_flags()
    headers = [str(KERNELS / name)
               for name in ("constants.h", "fused.h", "packed_step.h", "variant.h", "vecmath.h")]
    modules = [
        Extension(f"fastgate._kernels.{name}", [f"fastgate/_kernels/{name}.pyx"],
                  extra_compile_args=compile_args, extra_link_args=link_args,
                  depends=headers if name == "recurrent" else [],
                  include_dirs=[numpy.get_include()],
                  define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
        for name in ("blas", "recurrent")
    ]
    return cythonize(modules, compiler_directives={"language_level": 3},
                     include_path=[str(KERNELS)])


setup(ext_modules=extensions())
