"""Cold start in ``pytest bench/``: measure_startup.py's fresh-process measurement, recorded in
the benchmark JSON (``extra_info``, engine ``"startup"``) for report.py.

Targets (issue 15): ``import fastgate`` + load a small ``.fastgate`` + first prediction at
most 150 ms beyond ``import numpy``, peak RSS at most 80 MB. The benchmark's own time is the
whole measurement (several interpreters); the numbers that count are in ``extra_info``.
"""

from __future__ import annotations

import os

import measure_startup
from conftest import kernel_isa

REPEATS = 5


def test_cold_start(benchmark):
    result = {}

    def run():
        result.update(measure_startup.cold_start(REPEATS))

    benchmark.group = "cold start"
    benchmark.pedantic(run, rounds=1, iterations=1)
    assert result["backend"] == ("python" if kernel_isa() == "python" else "compiled")
    benchmark.extra_info.update(
        engine="startup", isa=kernel_isa(), repeats=REPEATS,
        numpy_ms=round(result["numpy"] * 1e3, 1),
        beyond_numpy_ms=round(result["beyond_numpy"] * 1e3, 1),
        beyond_numpy_cpu_ms=round(result["beyond_numpy_cpu"] * 1e3, 1),
        import_ms=round(result["import"] * 1e3, 1), load_ms=round(result["load"] * 1e3, 2),
        predict_ms=round(result["predict"] * 1e3, 2), peak_rss_mb=round(result["peak_rss_mb"], 1),
        bare_peak_rss_mb=round(result["bare_peak_rss_mb"], 1),
        heavy=", ".join(result["heavy"]), loadavg_1m=round(os.getloadavg()[0], 2))
