"""How many threads fastgate uses: its own kernels' and the BLAS under them.

fastgate's compiled kernels split the batch of the recurrent loop over OpenMP threads and
call BLAS through ``scipy.linalg.cython_blas`` (the OpenBLAS SciPy's wheels ship, or whatever
BLAS SciPy was built on: MKL, Accelerate...) for the input projection; the NumPy oracle calls
NumPy's BLAS. :func:`set_num_threads` sets the count the kernels read
(:func:`kernel_num_threads`) and, best-effort, the thread count of the OpenBLAS libraries in
the process, through ``threadpoolctl`` when it is installed (which also reaches MKL and
others) and otherwise through OpenBLAS's own ``*_set_num_threads`` functions (``ctypes``).
Neither is a run-time dependency, and no BLAS need be found: the kernels' count never comes
from the BLAS.

Environment variables
---------------------
Until :func:`set_num_threads` is called, the kernels use ``OPENBLAS_NUM_THREADS``, else
``OMP_NUM_THREADS`` (its first entry), else the number of CPUs this process may run on: the
count OpenBLAS itself starts with, as it reads the same variables when it is loaded.
fastgate never changes the BLAS's count at import, so::

    OPENBLAS_NUM_THREADS=1 python serve.py

runs fastgate and its BLAS single-threaded until :func:`set_num_threads` says otherwise. The
setting is process-wide: it also applies to any other SciPy / NumPy linear algebra in the
process.

How the kernels use threads
---------------------------
A batch is split across threads by sequences, once it has enough of them: the threads never
wait for each other. A batch too small to split (batch 1, say) may instead have its hidden
units split across threads, which meet after every step (each step reads all of ``h``):
twice as fast on two idle cores (a batch-1 step streams all of the recurrent weights; two
cores stream half each), but on a busy machine each step waits for a thread the OS is not
running. So the hidden units are split only when threads were asked for:
:func:`set_num_threads` with ``n > 1``, or ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS``
set above 1. A service that runs many calls at once should keep one thread per call
(``set_num_threads(1)``) and let its own threads use the cores.
"""

from __future__ import annotations

import ctypes
import glob
import os
from typing import Callable

__all__ = ["set_num_threads", "get_num_threads", "kernel_num_threads", "default_num_threads",
           "blas_num_threads", "blas_libraries"]

# Exported names of the thread-count functions, per OpenBLAS build: SciPy's and NumPy's
# wheels prefix them (scipy_openblas32 / scipy_openblas64_ with a "64_" suffix), a system
# OpenBLAS does not.
_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_", "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
            "openblas_get_num_threads64_", "openblas_get_num_threads")

_libraries: list[tuple[str, Callable, Callable]] | None = None
#: The thread count of fastgate's kernels; None until set or first read.
_num_threads: int | None = None
_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")


def _loaded_openblas_paths() -> list[str]:
    """Paths of the OpenBLAS libraries mapped into this process, SciPy's first."""
    import scipy.linalg.cython_blas  # noqa: F401  (maps SciPy's OpenBLAS)
    paths: list[str] = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.rsplit(None, 1)[-1] if "/" in line else ""
                if "openblas" in os.path.basename(path).lower() and path not in paths:
                    paths.append(path)
    except OSError:  # no /proc (macOS): look where the wheels put their libraries
        import numpy
        import scipy
        for package in (scipy, numpy):
            root = os.path.dirname(os.path.dirname(package.__file__))
            name = package.__name__
            paths += glob.glob(os.path.join(root, f"{name}.libs", "*openblas*"))
            paths += glob.glob(os.path.join(root, name, ".dylibs", "*openblas*"))
    paths.sort(key=lambda path: not _is_scipys(path))
    return paths


def _is_scipys(path: str) -> bool:
    """Whether ``path`` is inside SciPy's package or its ``scipy.libs`` folder."""
    import scipy
    return os.path.realpath(path).startswith(os.path.realpath(os.path.dirname(scipy.__file__)))


def _ctypes_libraries() -> list[tuple[str, Callable, Callable]]:
    global _libraries
    if _libraries is None:
        found = []
        for path in _loaded_openblas_paths():
            try:
                library = ctypes.CDLL(path)
            except OSError:
                continue
            setter = next((getattr(library, n) for n in _SETTERS if hasattr(library, n)), None)
            getter = next((getattr(library, n) for n in _GETTERS if hasattr(library, n)), None)
            if setter is not None and getter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                found.append((path, setter, getter))
        _libraries = found
    return _libraries


def _threadpoolctl():
    try:
        import threadpoolctl
    except ImportError:
        return None
    import scipy.linalg.cython_blas  # noqa: F401  (so threadpoolctl sees SciPy's OpenBLAS)
    return threadpoolctl


def blas_libraries() -> list[str]:
    """Paths of the OpenBLAS libraries whose thread count fastgate controls (SciPy's first)."""
    return [path for path, _, _ in _ctypes_libraries()]


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in fastgate's kernels and, best-effort, in the process's BLAS
    libraries (SciPy's and NumPy's OpenBLAS; any BLAS threadpoolctl knows, if installed).

    Parameters
    ----------
    n : int
        A positive number of threads. Process-wide; see the module docstring for the
        ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS`` environment variables.
    """
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        from .errors import ConfigError
        raise ConfigError(f"number of threads must be a positive int, got {n!r}")
    threadpoolctl = _threadpoolctl()
    if threadpoolctl is not None:
        threadpoolctl.threadpool_limits(limits=n, user_api="blas")
    else:
        for _, setter, _ in _ctypes_libraries():
            setter(n)
    _num_threads = n
    _configure_kernels(n, n > 1)


def get_num_threads() -> int:
    """The number of threads fastgate uses (:func:`set_num_threads`).

    Until :func:`set_num_threads` is called, :func:`default_num_threads`.
    """
    return _num_threads if _num_threads is not None else default_num_threads()


def _environment_num_threads() -> int | None:
    """The count ``OPENBLAS_NUM_THREADS``, else ``OMP_NUM_THREADS``, asks for (None if
    neither holds a positive integer). ``OMP_NUM_THREADS`` may list one count per nesting
    level (``"4,2"``): the first is the outer one."""
    for name in _THREAD_VARIABLES:
        value = os.environ.get(name, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def default_num_threads() -> int:
    """The kernels' thread count until :func:`set_num_threads` is called.

    ``OPENBLAS_NUM_THREADS``, else ``OMP_NUM_THREADS``, else the number of CPUs this process
    may run on (its affinity mask, where the OS has one).
    """
    asked = _environment_num_threads()
    if asked is not None:
        return asked
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity masks (macOS, Windows)
        return os.cpu_count() or 1


def kernel_num_threads() -> int:
    """The thread count for the compiled kernels; cheap enough to read on every call."""
    global _num_threads
    if _num_threads is None:
        _num_threads = default_num_threads()
        asked = _environment_num_threads()
        _configure_kernels(_num_threads, asked is not None and asked > 1)
    return _num_threads


def _configure_kernels(threads: int, hidden_split: bool) -> None:
    """Tell the compiled kernels the thread count calls use, and whether threads may split
    a small batch's hidden units (see the module docstring)."""
    from .backend import compiled_module
    kernels = compiled_module()
    if kernels is not None:
        kernels.configure_threads(threads, hidden_split)


def blas_num_threads() -> int | None:
    """The thread count of the BLAS that fastgate's compiled kernels call (SciPy's), or
    None where no BLAS thread count can be read (no OpenBLAS found and no threadpoolctl)."""
    libraries = _ctypes_libraries()
    if libraries:
        return int(libraries[0][2]())
    threadpoolctl = _threadpoolctl()
    if threadpoolctl is not None:
        pools = [pool for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]
        pools.sort(key=lambda pool: not _is_scipys(pool["filepath"]))
        if pools:
            return int(pools[0]["num_threads"])
    return None
