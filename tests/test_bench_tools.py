"""The benchmark suite's own machinery (bench/): FLOP counts, ragged lengths, the engines it
builds for S7 (ORT ``sequence_lens``, torch packed sequences) against fastgate, the thread
watch, and report.py's per-ISA tables and target counts. No timing is asserted here."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)

import cpu_watch  # noqa: E402
import engines  # noqa: E402
import report  # noqa: E402


def test_flops_count_both_products_per_layer_and_direction():
    # S6 LSTM: 2 * T*B * (D+H) * 4H = 2 * 12800 * 768 * 2048
    assert engines.flops(engines.SHAPES["S6"], "lstm") == 2.0 * 50 * 256 * 768 * 2048
    # S4 GRU, 2 layers: the second layer's input is the first's H
    s4 = engines.SHAPES["S4"]
    tokens = s4.steps * s4.batch
    assert engines.flops(s4, "gru") == 2.0 * tokens * 3 * 256 * ((28 + 256) + (256 + 256))
    # S7: bidirectional, and only the real tokens with lengths
    s7 = engines.SHAPES["S7"]
    lengths = engines.make_lengths(s7)
    assert engines.flops(s7, "lstm", lengths) == 2 * 2.0 * lengths.sum() * (64 + 128) * 512


def test_s7_lengths_are_fixed_and_58_percent_real():
    s7 = engines.SHAPES["S7"]
    lengths = engines.make_lengths(s7)
    np.testing.assert_array_equal(lengths, engines.make_lengths(s7))
    assert lengths.shape == (32,) and lengths.min() >= 10 and lengths.max() <= 100
    assert round(lengths.sum() / (s7.steps * s7.batch), 3) == 0.581
    assert engines.make_lengths(engines.SHAPES["S5"]) is None


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_ragged_engines_agree_with_fastgate(tmp_path, cell):
    """The bench's ORT graph (sequence_lens, two bidirectional layers joined by
    Transpose + Reshape) and torch's packed run compute fastgate's answer."""
    shape = engines.Shape("tiny", "tiny ragged", 5, 7, 3, 4, 2, False, bidirectional=True,
                          ragged=True)
    layer = engines.make_layer(shape, cell)
    x = engines.make_input(shape)
    lengths = np.array([7, 1, 4, 2, 6])  # torch refuses a length of 0
    expected = layer(x, lengths=lengths)[0]
    for hot, result in (engines.ort_runner(layer, x, 1, str(tmp_path), lengths),
                        engines.torch_runner(layer, x, lengths)):
        hot()
        np.testing.assert_allclose(result(), expected, rtol=0, atol=1e-5)
    _, result = engines.fastgate_runner(layer, x, backend="python", lengths=lengths)
    np.testing.assert_allclose(result(), expected, rtol=0, atol=1e-5)


def _burn(seconds: float) -> None:
    # hashing a large buffer releases the GIL, so two burning threads really run at once
    data = b"x" * 2 ** 20
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        hashlib.sha256(data).digest()


def test_cpu_watch_counts_busy_threads_and_their_spin():
    stop = threading.Event()
    worker = threading.Thread(target=lambda: [_burn(0.01) for _ in iter(stop.is_set, True)],
                              daemon=True)
    try:
        with cpu_watch.CpuWatch() as watch:
            worker.start()
            _burn(0.5)
        assert watch.busy_threads == 2, watch.summary()
        # other tests' idle pools (torch, ORT) may show up below 5%
        assert sum(f >= 0.05 for f in watch.summary()["thread_cpu_fractions"]) == 2
        timer = threading.Timer(0.2, stop.set)
        timer.start()
        # windows of 50 ms: on a loaded machine a burning thread may wait a few time
        # slices for a core, but not a whole window
        assert 0.19 <= cpu_watch.until_quiet(window=0.05, limit=5.0) < 5.0
    finally:
        stop.set()
    worker.join()
    assert cpu_watch.until_quiet(window=0.005) < 0.5
    with cpu_watch.CpuWatch() as watch:
        time.sleep(0.05)
    assert watch.busy_threads == 0 and watch.cpu_per_wall < 0.5


def _benchmark(engine, shape, cell, threads, seconds, isa, **extra):
    info = {"engine": engine, "shape": shape, "cell": cell, "threads": threads, "isa": isa,
            **extra}
    if shape in engines.SHAPES and engine != "sgemm":
        lengths = None if engine == engines.NO_LENGTHS else engines.make_lengths(
            engines.SHAPES[shape])
        info["flops"] = engines.flops(engines.SHAPES[shape], cell, lengths)
    return {"stats": {"median": seconds}, "extra_info": info}


def test_report_has_a_table_per_isa_and_counts_targets(tmp_path):
    flops_s6 = engines.flops(engines.SHAPES["S6"], "lstm")
    runs = {
        "avx512": [
            _benchmark("fastgate", "S1", "lstm", 1, 2e-6, "avx512"),
            _benchmark("onnxruntime", "S1", "lstm", 1, 10e-6, "avx512"),   # 0.2: met
            _benchmark("fastgate", "S6", "lstm", 1, 0.40, "avx512", cpu_seconds_per_call=0.2),
            _benchmark("torch", "S6", "lstm", 1, 0.42, "avx512",            # 0.95: not met
                       cpu_seconds_per_call=0.4),
            _benchmark("sgemm", "S6", "lstm", 1, flops_s6 / 100e9 / 1e3, "avx512",
                       flops=flops_s6 / 1e3),                             # 100 GFLOP/s
            _benchmark("fastgate", "S7", "lstm", 1, 0.030, "avx512", real_tokens=1859),
            _benchmark(engines.NO_LENGTHS, "S7", "lstm", 1, 0.050, "avx512", T=100, B=32),
            _benchmark("onnxruntime", "S7", "lstm", 1, 0.040, "avx512"),
        ],
        "avx2": [_benchmark("fastgate", "S2", "gru", 2, 90e-6, "avx2"),
                 _benchmark("onnxruntime", "S2", "gru", 2, 100e-6, "avx2")],  # 0.9: not met
    }
    paths = []
    for isa, benchmarks in runs.items():
        path = tmp_path / f"{isa}.json"
        path.write_text(json.dumps({"machine_info": {"fastgate_isa": isa, "cpu_flags": ["avx2"],
                                                     "fastgate": {"python": "3"}},
                                    "benchmarks": benchmarks}))
        paths.append(str(path))
    text = report.render(paths)
    assert text.index("## ISA avx512") < text.index("## ISA avx2")
    # avx512: S1 met, S6 not, S6 vs sgemm (flops/0.40 = 100.7 GFLOP/s vs 100) met,
    # S7 vs best peer (0.75) met, S7 lengths / no lengths (0.6) met
    assert "**4 of 5** targets met with the avx512 kernels" in text
    assert "**0 of 1** targets met with the avx2 kernels" in text
    assert "| S6 | 256,50,256,512,1,1 | lstm | 1 | 400.00 ms | 420.00 ms |" in text
    assert "| <= 0.9 | **no** | 0.50 |" in text  # S6's CPU-time ratio
    assert "| 1 | 100.0 | 100.7 | 95.9 | 101% | >= 85% | yes |" in text
    assert "| S7 | lstm | 1 | 58% | 30.00 ms | 50.00 ms | 0.60 | <= 0.75 | yes |" in text
    assert "| 0.90 | <= 0.8 | **no** |" in text
    assert "SIMD flags: avx2" in text
