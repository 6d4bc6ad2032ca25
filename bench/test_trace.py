"""The cost of gate tracing (issue 11): ``layer.trace(x)`` against the plain forward pass
``layer(x)`` at S5 (B32 T100 D128 H256), one thread, LSTM and GRU. The target: a trace costs
at most 1.5x the forward pass (it writes B*T*(G+2)*H values besides the outputs).

Run with ``pytest bench/test_trace.py --benchmark-only``; both engines of a cell share a
benchmark group, and :func:`test_trace_ratio` times them interleaved and checks the ratio.
Every trace is first checked against the layer's own output (its ``h``).

Untraced calls do not pay for tracing (its epilogues are separate instantiations): callgrind,
FASTGATE_ISA=avx2, instructions of run_direction_f_avx2 for one call, before tracing existed
/ after: S5 LSTM 319,046,020 / 319,046,390; S2 LSTM 1,554,336 / 1,554,764, GRU 1,303,857 /
1,304,218 (the difference: one trace check per step).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import engines
import fastgate

#: The issue's bound on trace time / forward time at S5.
TARGET_RATIO = 1.5


@pytest.fixture(scope="module", params=["lstm", "gru"])
def s5_case(request):
    shape = engines.SHAPES["S5"]
    layer = engines.make_layer(shape, request.param)
    x = engines.make_input(shape)
    out, _ = layer(x)
    trace = layer.trace(x)
    h = trace.layers[0].gates["h"]                      # (B, T, H), batch-major
    expected = out if layer.batch_first else out.transpose(1, 0, 2)
    np.testing.assert_allclose(h, expected, atol=1e-6)
    return request.param, layer, x


@pytest.fixture
def one_thread():
    original = fastgate.get_num_threads()
    fastgate.set_num_threads(1)
    yield
    fastgate.set_num_threads(original)


@pytest.mark.parametrize("engine", ["forward", "trace"])
def test_trace_cost(benchmark, s5_case, engine, one_thread):
    cell, layer, x = s5_case
    benchmark.group = f"S5 {cell} t1: trace vs forward"
    benchmark.extra_info.update(cell=cell, engine=engine, shape="S5", threads=1)
    run = (lambda: layer(x)) if engine == "forward" else (lambda: layer.trace(x))
    benchmark.pedantic(run, rounds=15, iterations=1, warmup_rounds=2)


def test_trace_ratio(s5_case, one_thread):
    """Forward and trace timed alternately (a shared machine drifts): the median ratio."""
    cell, layer, x = s5_case
    ratios = []
    for _ in range(15):
        start = time.perf_counter()
        layer(x)
        middle = time.perf_counter()
        layer.trace(x)
        ratios.append((time.perf_counter() - middle) / (middle - start))
    ratio = float(np.median(ratios))
    print(f"S5 {cell}, 1 thread: trace / forward = {ratio:.2f} (median of 15 interleaved)")
    assert ratio <= TARGET_RATIO, f"trace costs {ratio:.2f}x the forward pass"
