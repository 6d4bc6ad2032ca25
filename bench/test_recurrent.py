"""fastgate vs PyTorch vs ONNX Runtime on the shape matrix of the performance issues.

One benchmark group per ``shape x cell x threads``, so pytest-benchmark prints the engines
side by side. Every benchmark first checks its engine's answer against fastgate's
(``atol 1e-4``), and fastgate's against the NumPy oracle: a benchmark of a wrong answer is
worthless. Each records in its ``extra_info`` the floating-point operations of one call
(``flops``, see engines.flops) for GFLOP/s, the kernels' ISA, and what bench/cpu_watch.py saw
of the timed block: how many threads were busy (with ``threads == 1`` more than one fails the
benchmark) and the pause waited before it. ``test_sgemm`` measures SciPy's BLAS sgemm on the
S6 LSTM step's GEMM in the same run: the machine's rate that report.py compares with.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np
import pytest

import engines
import fastgate
from conftest import kernel_isa
from cpu_watch import CpuWatch, until_quiet, wait_until_quiet

ATOL = 1e-4
#: Seconds of timed rounds aimed at per slow benchmark (calls >= 2 ms), within 5-30 rounds.
ROUND_BUDGET = 1.5
#: A fast call (< 2 ms) is timed in rounds of at least this many seconds, for about
#: FAST_BUDGET seconds in all.
ROUND_MIN_SECONDS = 1e-4
FAST_BUDGET = 1.0


@dataclass(frozen=True)
class Case:
    shape: engines.Shape
    layer: object
    x: np.ndarray
    lengths: np.ndarray | None  # ragged shapes only
    reference: np.ndarray       # fastgate's own output (with lengths)


def case(cache, shape_name, cell, dtype=np.float32) -> Case:
    """The benchmark case of ``(shape, cell, dtype)``, built once per session."""
    key = (shape_name, cell, np.dtype(dtype).name)
    if key not in cache:
        shape = engines.SHAPES[shape_name]
        layer = engines.make_layer(shape, cell, dtype=dtype)
        x = engines.make_input(shape, dtype=dtype)
        lengths = engines.make_lengths(shape)
        cache[key] = Case(shape, layer, x, lengths, layer(x, lengths=lengths)[0])
    return cache[key]


def measure(benchmark, hot, threads: int, pause: float, timed_rows: list) -> None:
    """Time ``hot`` once the process is quiet: auto-calibrated if it is fast, else a fixed
    number of rounds; record the block's thread use and fail if "1 thread" used more."""
    hot()
    start = time.perf_counter()
    hot()
    seconds = time.perf_counter() - start
    waited = wait_until_quiet(pause)
    with CpuWatch() as watch:
        if seconds < 2e-3:
            # calls in rounds of >= ROUND_MIN_SECONDS: the timer's and the round's own cost
            # (~0.2 us with pytest-benchmark's default calibration, which times a 2 us call
            # in rounds of 1-3) spread over many calls, for every engine alike
            iterations = max(1, math.ceil(ROUND_MIN_SECONDS / seconds))
            rounds = int(min(10000, max(20, FAST_BUDGET / (seconds * iterations))))
            benchmark.pedantic(hot, rounds=rounds, iterations=iterations, warmup_rounds=1)
        else:
            rounds = int(min(30, max(5, ROUND_BUDGET / seconds)))
            benchmark.pedantic(hot, rounds=rounds, iterations=1, warmup_rounds=1)
            # process CPU seconds per call (rounds + the warm-up round): unlike wall time,
            # not inflated by other processes taking the cores
            benchmark.extra_info["cpu_seconds_per_call"] = watch.cpu_now() / (rounds + 1)
    spin = until_quiet()  # how long this engine's worker threads spun after the block
    benchmark.extra_info.update(watch.summary(), paused=round(waited, 3),
                                spin_after=round(spin, 3))
    stats = getattr(benchmark.stats, "stats", None)  # None with --benchmark-disable
    if stats is not None:
        info = benchmark.extra_info
        timed_rows.append((benchmark.group, info["engine"], threads, stats.median,
                           info.get("flops")))
    assert threads > 1 or watch.busy_threads <= 1, (
        f"1 thread asked for, but {watch.busy_threads} threads were busy "
        f"(CPU fractions {watch.summary()['thread_cpu_fractions']})")


def describe(benchmark, case_, cell, threads, engine, backend, dtype="float32"):
    shape = case_.shape
    lengths = None if engine == engines.NO_LENGTHS else case_.lengths
    benchmark.extra_info.update(
        engine=engine, shape=shape.name, cell=cell, threads=threads, backend=backend,
        isa=kernel_isa(), dtype=dtype,  # the run's kernels, the report's table
        B=shape.batch, T=shape.steps, D=shape.input_size, H=shape.hidden_size,
        layers=shape.num_layers, directions=shape.directions,
        flops=engines.flops(shape, cell, lengths),
        real_tokens=None if case_.lengths is None else int(case_.lengths.sum()),
        loadavg_1m=round(os.getloadavg()[0], 2))


def runner(engine, case_, threads, onnx_directory):
    """``(hot, result, backend, expected)`` of ``engine`` on ``case_``."""
    layer, x, lengths = case_.layer, case_.x, case_.lengths
    if engine == "fastgate":
        hot, result = engines.fastgate_runner(layer, x, lengths=lengths)
        with fastgate.use_backend("python"):
            oracle_output = layer(x, lengths=lengths)[0]
        np.testing.assert_allclose(result(), oracle_output, rtol=0, atol=ATOL,
                                   err_msg="fastgate disagrees with its NumPy oracle")
        return hot, result, fastgate.backend(), case_.reference
    if engine == engines.NO_LENGTHS:
        hot, result = engines.fastgate_runner(layer, x)
        with fastgate.use_backend("python"):
            expected = layer(x)[0]
        return hot, result, fastgate.backend(), expected
    if engine == "oracle":
        hot, result = engines.fastgate_runner(layer, x, backend="python", lengths=lengths)
        return hot, result, "python", case_.reference
    if engine == "torch":
        hot, result = engines.torch_runner(layer, x, lengths)
        return hot, result, "torch", case_.reference
    hot, result = engines.ort_runner(layer, x, threads, onnx_directory, lengths)
    return hot, result, "onnxruntime", case_.reference


def test_forward(benchmark, shape_name, cell, engine, set_threads, pause, timed_rows,
                 case_cache, onnx_directory):
    threads = set_threads
    case_ = case(case_cache, shape_name, cell)
    benchmark.group = f"{shape_name} {cell} t{threads}"
    hot, result, backend, expected = runner(engine, case_, threads, onnx_directory)
    np.testing.assert_allclose(result(), expected, rtol=0, atol=ATOL,
                               err_msg=f"{engine} disagrees with fastgate")
    describe(benchmark, case_, cell, threads, engine, backend)
    if engine in ("fastgate", engines.NO_LENGTHS) and backend == "compiled":
        lengths = case_.lengths if engine == "fastgate" else None
        benchmark.extra_info["plan"] = str(fastgate.explain(case_.layer, case_.x,
                                                            lengths=lengths).plan)
    if engine == "torch":
        import torch
        with torch.inference_mode():
            measure(benchmark, hot, threads, pause, timed_rows)
    else:
        measure(benchmark, hot, threads, pause, timed_rows)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype(benchmark, cell, dtype, set_threads, pause, timed_rows, case_cache):
    """fastgate float64 vs float32 at S5 (target: float64 within 2.5x of float32); not
    collected unless S5 is selected (conftest.pytest_collection_modifyitems)."""
    threads = set_threads
    case_ = case(case_cache, "S5", cell)
    layer, x = case_.layer, case_.x
    if dtype == "float64":
        layer = engines.CELLS[cell](layer.weights, dtype=np.float64)
        x = x.astype(np.float64)
    benchmark.group = f"S5 {cell} t{threads} dtype"
    hot, result = engines.fastgate_runner(layer, x)
    np.testing.assert_allclose(result(), case_.reference, rtol=0, atol=ATOL)
    describe(benchmark, case_, cell, threads, f"fastgate-{dtype}", fastgate.backend(), dtype)
    measure(benchmark, hot, threads, pause, timed_rows)


def test_sgemm(benchmark, threads, pause, timed_rows):
    """SciPy's BLAS sgemm on the S6 LSTM step's GEMM, ``[x_t, h] (B, D+H) @ [W; U]
    (D+H, 4H)``, at ``threads`` BLAS threads: the machine's GEMM rate of this run."""
    import threadpoolctl
    from scipy.linalg import blas

    shape = engines.SHAPES[engines.SGEMM_SHAPE]
    rows, inner = shape.batch, shape.input_size + shape.hidden_size
    columns = engines.GATES[engines.SGEMM_CELL] * shape.hidden_size
    rng = np.random.default_rng(0)
    a = np.asfortranarray(rng.standard_normal((rows, inner), dtype=np.float32))
    b = np.asfortranarray(rng.standard_normal((inner, columns), dtype=np.float32))
    c = np.zeros((rows, columns), np.float32, order="F")

    def hot():
        blas.sgemm(1.0, a, b, beta=0.0, c=c, overwrite_c=True)

    benchmark.group = f"sgemm t{threads}"
    with threadpoolctl.threadpool_limits(limits=threads, user_api="blas"):
        hot()
        np.testing.assert_allclose(c, a.astype(np.float64) @ b, rtol=0, atol=1e-3)
        pools = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"
                 and "scipy" in os.path.basename(p["filepath"])]
        benchmark.extra_info.update(
            engine="sgemm", shape=engines.SGEMM_SHAPE, cell=engines.SGEMM_CELL,
            threads=threads, isa=kernel_isa(), M=rows, K=inner, N=columns,
            flops=2.0 * rows * inner * columns,
            blas=[f"{p['internal_api']} {p['version']} {p['architecture']} "
                  f"{p['num_threads']} threads" for p in pools],
            loadavg_1m=round(os.getloadavg()[0], 2))
        measure(benchmark, hot, threads, pause, timed_rows)
