"""fastgate.set_num_threads / get_num_threads: the kernels' count (by default from the
environment) and SciPy's OpenBLAS thread count, both code paths (threadpoolctl and ctypes)."""

import os
import subprocess
import sys

import pytest

import fastgate
from conftest import subprocess_env
from fastgate import threads


@pytest.fixture
def restore_threads():
    original = fastgate.get_num_threads()
    yield
    fastgate.set_num_threads(original)


@pytest.fixture(params=["threadpoolctl", "ctypes"])
def path(request, monkeypatch):
    """Run a test through threadpoolctl, then again as if threadpoolctl were not installed."""
    if request.param == "ctypes":
        monkeypatch.setattr(threads, "_threadpoolctl", lambda: None)
    return request.param


def test_blas_libraries_finds_scipys_openblas_first():
    libraries = threads.blas_libraries()
    assert libraries, "no OpenBLAS found in the process"
    assert "scipy" in os.path.dirname(libraries[0])


@pytest.mark.usefixtures("restore_threads")
def test_set_then_get(path):
    fastgate.set_num_threads(1)
    assert fastgate.get_num_threads() == 1
    assert threads.kernel_num_threads() == 1
    assert threads.blas_num_threads() == 1
    fastgate.set_num_threads(2)
    assert fastgate.get_num_threads() == 2
    assert threads.kernel_num_threads() == 2
    assert threads.blas_num_threads() == 2


@pytest.mark.usefixtures("restore_threads")
def test_both_paths_agree_on_scipys_library(monkeypatch):
    fastgate.set_num_threads(1)
    scipy_getter = threads._ctypes_libraries()[0][2]
    assert scipy_getter() == 1
    fastgate.set_num_threads(2)
    assert scipy_getter() == 2
    monkeypatch.setattr(threads, "_threadpoolctl", lambda: None)
    fastgate.set_num_threads(1)
    assert fastgate.get_num_threads() == 1
    assert all(getter() == 1 for _, _, getter in threads._ctypes_libraries())


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_rejects_a_non_positive_int(bad):
    with pytest.raises(fastgate.ConfigError, match="positive int"):
        fastgate.set_num_threads(bad)


@pytest.mark.parametrize("variable", ["OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"])
def test_environment_is_respected_at_import(variable, tmp_path):
    env = subprocess_env()
    env.pop("OPENBLAS_NUM_THREADS", None)
    env.pop("OMP_NUM_THREADS", None)
    env[variable] = "1"
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c",
         "import fastgate; print(fastgate.get_num_threads(), "
         "fastgate.threads.kernel_num_threads(), fastgate.threads.blas_num_threads())"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["1", "1", "1"]


@pytest.mark.parametrize("variable,count,asked", [
    (None, "2", False), ("OMP_NUM_THREADS", "2", True), ("OPENBLAS_NUM_THREADS", "2", True),
    ("OMP_NUM_THREADS", "1", False)])
def test_hidden_units_are_split_only_when_threads_were_asked_for(variable, count, asked,
                                                                 tmp_path):
    # Threads splitting a small batch's hidden units meet after every step, which on a busy
    # machine waits for a time slice at every step: only with threads asked for explicitly.
    env = subprocess_env()
    env.pop("OPENBLAS_NUM_THREADS", None)
    env.pop("OMP_NUM_THREADS", None)
    if variable is not None:
        env[variable] = count
    code = ("import fastgate; from fastgate._kernels import recurrent as r; "
            "fastgate.threads.kernel_num_threads(); print(*r.thread_configuration()); "
            "fastgate.set_num_threads(2); print(*r.thread_configuration()); "
            "fastgate.set_num_threads(1); print(*r.thread_configuration())")
    # (from a temporary directory: the installed fastgate, not a source tree in the cwd)
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=True)
    first, explicit, single = [line.split() for line in result.stdout.splitlines()]
    assert first[1] == str(asked) and int(first[0]) >= 1
    assert explicit == ["2", "True"] and single == ["1", "False"]


# Run before fastgate is imported: threadpoolctl cannot be imported, and ctypes cannot open
# any OpenBLAS, as where SciPy is built on MKL or Accelerate.
_WITHOUT_OPENBLAS = """
import ctypes, sys
sys.modules["threadpoolctl"] = None
_cdll = ctypes.CDLL
class _NoOpenBLAS(_cdll):
    def __init__(self, name, *args, **kwargs):
        if name and "openblas" in str(name).lower():
            raise OSError(f"{name}: hidden by the test")
        super().__init__(name, *args, **kwargs)
ctypes.CDLL = _NoOpenBLAS
import numpy as np
import fastgate
assert fastgate.backend() == "compiled", fastgate.backend()
assert fastgate.threads.blas_libraries() == []
"""


@pytest.mark.parametrize("variable", [None, "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"])
def test_no_openblas_and_no_threadpoolctl(variable, tmp_path):
    """Bug 6: with no OpenBLAS to read the default from, the first call must still run, on
    the thread count the environment (or the CPUs this process may use) gives."""
    env = subprocess_env()
    env.pop("OPENBLAS_NUM_THREADS", None)
    env.pop("OMP_NUM_THREADS", None)
    if variable is not None:
        env[variable] = "3"
    code = _WITHOUT_OPENBLAS + (
        "from conftest import random_cell_weights\n"
        "layer = fastgate.LSTM(random_cell_weights('lstm', 3, 32, rng=1, dtype=np.float32))\n"
        "x = np.random.default_rng(0).normal(size=(50, 64, 3)).astype(np.float32)\n"
        "out, _ = layer(x)\n"
        "with fastgate.use_backend('python'):\n"
        "    expected, _ = layer(x)\n"
        "assert np.max(np.abs(out - expected)) <= 1e-5\n"
        "first = fastgate.get_num_threads()\n"
        "fastgate.set_num_threads(2)\n"
        "assert fastgate.get_num_threads() == 2 and fastgate.threads.blas_num_threads() is None\n"
        "print(first)\n")
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), env["PYTHONPATH"]])
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = 3 if variable else len(os.sched_getaffinity(0))
    assert result.stdout.split() == [str(expected)]

