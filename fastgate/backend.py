"""Which backend runs the forward passes: the compiled kernels or the NumPy oracle.

The compiled backend is used when the extension was built; otherwise fastgate warns once at
import and falls back to the oracle. ``FASTGATE_BACKEND=python`` (or ``compiled``) in the
environment forces a backend at import; :func:`use_backend` switches within a block, for the
current thread (or asyncio task) only.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from types import ModuleType
from typing import Iterator

from .errors import BackendError

__all__ = ["backend", "use_backend", "available_backends", "compiled_module"]

BACKENDS = ("compiled", "python")

try:
    from ._kernels import recurrent as _compiled
    _import_error: ImportError | None = None
except ImportError as error:  # the extension was not built
    _compiled = None
    _import_error = error


def _default_backend() -> str:
    requested = os.environ.get("FASTGATE_BACKEND", "").strip().lower()
    if requested and requested not in BACKENDS:
        raise BackendError(
            f"FASTGATE_BACKEND={requested!r} is not a backend; expected one of {BACKENDS}")
    if requested == "python":
        return "python"
    if _compiled is None:
        if requested == "compiled":
            raise BackendError(
                f"FASTGATE_BACKEND=compiled but the compiled extension is not built "
                f"({_import_error}); reinstall with `pip install .`")
        warnings.warn(
            f"fastgate's compiled extension is not built ({_import_error}); using the "
            f"pure-NumPy backend, which is much slower. Reinstall with `pip install .`.",
            RuntimeWarning, stacklevel=3)
        return "python"
    return "compiled"


_DEFAULT = _default_backend()
_current: contextvars.ContextVar[str] = contextvars.ContextVar("fastgate_backend",
                                                               default=_DEFAULT)


def available_backends() -> tuple[str, ...]:
    """The backends this installation can run (``"compiled"`` only if it was built)."""
    return BACKENDS if _compiled is not None else ("python",)


def backend() -> str:
    """The name of the active backend in this thread: ``"compiled"`` or ``"python"``."""
    return _current.get()


#: The context variable of the active backend's name (the compiled layers' call reads it
#: from C: fastgate._kernels.recurrent.layer_call).
backend_variable = _current

#: :func:`backend` as the context variable's bound method, without a Python frame: the
#: per-call fast paths of the layers read it.
current_backend = _current.get


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Run the enclosed block with backend ``name`` (``"compiled"`` or ``"python"``).

    The switch is local to the current thread (and asyncio task); other threads keep their
    backend. Raises :class:`~fastgate.errors.BackendError` if ``name`` is unknown or not built.

    >>> with fastgate.use_backend("python"):
    ...     out, state = layer(x)          # runs the NumPy oracle
    """
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    if name not in available_backends():
        raise BackendError(f"backend {name!r} is not available: the compiled extension "
                           f"is not built ({_import_error})")
    token = _current.set(name)
    try:
        yield name
    finally:
        _current.reset(token)


def compiled_module() -> ModuleType | None:
    """The compiled kernel module, or ``None`` when it is not built."""
    return _compiled
