"""pytest-benchmark configuration of fastgate's benchmark suite.

Run from the repository root::

    pytest bench/ --benchmark-only --benchmark-json=bench.json
    python bench/report.py bench.json

Options: ``--shapes S1,S2,...`` (default: all with the compiled backend, S1-S3 with the
python one), ``--threads 1,2``, ``--cells lstm,gru``. Not collected by ``pytest tests/``.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import engines  # noqa: E402


def pytest_addoption(parser):
    group = parser.getgroup("fastgate benchmarks")
    group.addoption("--shapes", default=None,
                    help="comma-separated shapes to run (default: all if the compiled "
                         "backend is built, else S1,S2,S3)")
    group.addoption("--threads", default="1,2", help="comma-separated thread counts")
    group.addoption("--cells", default="lstm,gru", help="comma-separated cells")


def _selected(config, option, default):
    value = config.getoption(option)
    return [v.strip() for v in (value or default).split(",") if v.strip()]


def selected_shapes(config) -> list[str]:
    """The shapes to run: ``--shapes``, else all with the compiled backend, else S1-S3."""
    import fastgate
    default = ",".join(engines.SHAPES) if fastgate.backend() == "compiled" else "S1,S2,S3"
    shapes = _selected(config, "--shapes", default)
    unknown = set(shapes) - set(engines.SHAPES)
    if unknown:
        raise pytest.UsageError(f"--shapes: unknown {sorted(unknown)}; "
                                f"expected some of {list(engines.SHAPES)}")
    return shapes


def pytest_generate_tests(metafunc):
    if not metafunc.module.__name__.endswith("test_recurrent"):
        return  # other benchmark modules parametrize themselves
    config = metafunc.config
    if "engine" in metafunc.fixturenames:  # the python oracle runs on the small shapes only
        pairs = [(shape, engine) for shape in selected_shapes(config)
                 for engine in engines.ENGINES
                 if engine != "oracle" or engines.SHAPES[shape].small]
        metafunc.parametrize(("shape_name", "engine"), pairs,
                             ids=[f"{shape}-{engine}" for shape, engine in pairs])
    if "cell" in metafunc.fixturenames:
        metafunc.parametrize("cell", _selected(config, "--cells", "lstm,gru"))
    if "threads" in metafunc.fixturenames:
        metafunc.parametrize("threads", [int(t) for t in _selected(config, "--threads", "1,2")],
                             ids=lambda t: f"t{t}")


def pytest_collection_modifyitems(config, items):
    # the float64 / float32 benchmark is defined at S5: without S5, deselect it (not a skip)
    if "S5" in selected_shapes(config):
        return
    dropped = [item for item in items if item.name.startswith("test_dtype")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]


@pytest.fixture(scope="session")
def onnx_directory():
    with tempfile.TemporaryDirectory(prefix="fastgate_bench_") as directory:
        yield directory


@pytest.fixture(scope="session")
def case_cache():
    """(shape, cell, dtype) -> (layer, x, reference output): built once per session."""
    return {}


@pytest.fixture
def set_threads(threads):
    """Give every engine ``threads`` threads (ORT takes its count per session)."""
    import torch

    import fastgate
    fastgate.set_num_threads(threads)
    torch.set_num_threads(threads)
    return threads


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record the CPU model, core count and library versions in the benchmark JSON."""
    machine_info["fastgate"] = _versions()
    machine_info["cpu_model"] = _cpu_model()
    machine_info["logical_cores"] = os.cpu_count()
    machine_info["affinity_cores"] = len(os.sched_getaffinity(0)) if hasattr(
        os, "sched_getaffinity") else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict:
    import numpy
    import onnxruntime
    import scipy
    import torch

    import fastgate
    versions = {"python": platform.python_version(), "fastgate": fastgate.__version__,
                "fastgate_backend": fastgate.backend(), "numpy": numpy.__version__,
                "scipy": scipy.__version__, "torch": torch.__version__,
                "onnxruntime": onnxruntime.__version__}
    try:
        import threadpoolctl
        versions["blas"] = [
            {k: pool.get(k) for k in ("filepath", "internal_api", "version", "architecture",
                                      "threading_layer", "num_threads")}
            for pool in threadpoolctl.threadpool_info()]
    except ImportError:
        versions["blas"] = fastgate.threads.blas_libraries()
    return versions
