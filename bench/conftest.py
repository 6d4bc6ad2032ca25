"""pytest-benchmark configuration of fastgate's benchmark suite.

Run from the repository root::

    pytest bench/ --benchmark-only --benchmark-json=bench.json
    python bench/report.py bench.json

Options: ``--shapes S1,S2,...`` (default: all with the compiled backend, S1-S3 with the
python one), ``--threads 1,2``, ``--cells lstm,gru``, ``--isa base|avx2|avx512`` (the
kernels' instruction set, through ``FASTGATE_ISA``; refused if this CPU lacks it) and
``--pause SECONDS`` (before each timed block, after which the bench also waits until no other
thread of the process uses the CPU: see bench/cpu_watch.py). Not collected by ``pytest tests/``.
At the end pytest prints each engine's GFLOP/s and the same run's sgemm GFLOP/s; report.py
makes the tables and checks the targets.

``engines`` (and so ``fastgate``) is imported only from ``pytest_configure`` on, after
``--isa`` has set ``FASTGATE_ISA``: the kernels read it once, at their first call.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from cpu_watch import PAUSE  # noqa: E402

ISAS = ("base", "avx2", "avx512")


def pytest_addoption(parser):
    group = parser.getgroup("fastgate benchmarks")
    group.addoption("--shapes", default=None,
                    help="comma-separated shapes to run (default: all if the compiled "
                         "backend is built, else S1,S2,S3)")
    group.addoption("--threads", default="1,2", help="comma-separated thread counts")
    group.addoption("--cells", default="lstm,gru", help="comma-separated cells")
    group.addoption("--isa", default=None, choices=ISAS,
                    help="the kernels' instruction set (sets FASTGATE_ISA; default: the best "
                         "this CPU runs, or FASTGATE_ISA if set)")
    group.addoption("--pause", type=float, default=PAUSE,
                    help=f"seconds to pause before each timed block, so that no engine is "
                         f"timed while another's idle worker threads spin (default {PAUSE})")


def pytest_configure(config):
    """Apply ``--isa`` before fastgate runs a kernel, and check the kernels took it."""
    isa = config.getoption("--isa", None)
    if isa is None:
        return
    os.environ["FASTGATE_ISA"] = isa
    active = kernel_isa()
    if active != isa:
        raise pytest.UsageError(
            f"--isa {isa}: the kernels run {active} (this CPU lacks {isa}, or fastgate's "
            f"kernels ran before FASTGATE_ISA was set)")


def kernel_isa() -> str:
    """The instruction set fastgate's kernels run (``"python"`` without the compiled ones)."""
    from fastgate.backend import compiled_module
    kernels = compiled_module()
    return kernels.isa() if kernels is not None else "python"


def _selected(config, option, default):
    value = config.getoption(option)
    return [v.strip() for v in (value or default).split(",") if v.strip()]


def selected_shapes(config) -> list[str]:
    """The shapes to run: ``--shapes``, else all with the compiled backend, else S1-S3."""
    import engines
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
    import engines
    config = metafunc.config
    if "engine" in metafunc.fixturenames:
        pairs = [(shape, engine) for shape in selected_shapes(config)
                 for engine in engines.engines_of(engines.SHAPES[shape])]
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
    """Give every engine ``threads`` threads (ORT takes its count per session):
    ``fastgate.set_num_threads`` also limits SciPy's and NumPy's BLAS (through threadpoolctl),
    ``torch.set_num_threads`` torch's OpenMP and MKL pools."""
    import torch

    import fastgate
    fastgate.set_num_threads(threads)
    torch.set_num_threads(threads)
    return threads


#: ``(group, engine, threads, median seconds, flops)`` of every timed block, for the summary.
TIMED: list[tuple] = []


@pytest.fixture
def timed_rows() -> list:
    """The session's list of timed blocks (:data:`TIMED`), printed as GFLOP/s at the end."""
    return TIMED


def pytest_terminal_summary(terminalreporter):
    """GFLOP/s per group and engine, and at S6 the share of the same run's sgemm."""
    import engines
    if not TIMED:
        return
    sgemm = {threads: flops / seconds for _, engine, threads, seconds, flops in TIMED
             if engine == "sgemm"}
    groups: dict[str, list[str]] = {}
    for group, engine, threads, seconds, flops in TIMED:
        if engine == "sgemm" or not flops:
            continue
        rate = flops / seconds
        share = (f" ({rate / sgemm[threads]:.0%} of sgemm)"
                 if threads in sgemm and group.startswith(engines.SGEMM_SHAPE + " ") else "")
        groups.setdefault(group, []).append(f"{engine} {rate / 1e9:.1f}{share}")
    write = terminalreporter.write_line
    terminalreporter.section("GFLOP/s (2 T B (D+H) G H per layer and direction)")
    for threads, rate in sorted(sgemm.items()):
        write(f"sgemm t{threads} (S6 LSTM step GEMM): {rate / 1e9:.1f}")
    for group, cells in groups.items():
        write(f"{group}: " + ", ".join(cells))


@pytest.fixture
def pause(request) -> float:
    """``--pause``: seconds to wait before a timed block (then until the process is quiet)."""
    return request.config.getoption("--pause")


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record the CPU model, core count and library versions in the benchmark JSON."""
    machine_info["fastgate"] = _versions()
    machine_info["fastgate_isa"] = kernel_isa()
    machine_info["fastgate_plan_mode"] = os.environ.get("FASTGATE_PLAN", "") or "estimate"
    machine_info["cpu_model"] = _cpu_model()
    machine_info["cpu_flags"] = cpu_flags()
    machine_info["pause_seconds"] = config.getoption("--pause")
    machine_info["logical_cores"] = os.cpu_count()
    machine_info["affinity_cores"] = len(os.sched_getaffinity(0)) if hasattr(
        os, "sched_getaffinity") else None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    family = _cpu_family()
                    name = line.split(":", 1)[1].strip()
                    return f"{name} ({family})" if family else name
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: The /proc/cpuinfo flags that say which kernels and BLAS paths a CPU can run.
SIMD_FLAGS = ("sse4_2", "avx", "fma", "f16c", "avx2", "avx512f", "avx512dq", "avx512vl",
              "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "hypervisor")


def cpu_flags() -> list[str]:
    """The SIMD-related flags of this CPU (:data:`SIMD_FLAGS`) from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in SIMD_FLAGS if flag in present]
    except OSError:
        pass
    return []


def _cpu_family() -> str:
    """``family F model M`` of the first CPU in /proc/cpuinfo (empty if unknown)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key = line.split(":", 1)[0].strip()
                if key in ("cpu family", "model") and key not in fields:
                    fields[key] = line.split(":", 1)[1].strip()
                if not line.strip():
                    break
    except OSError:
        return ""
    return f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"


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
