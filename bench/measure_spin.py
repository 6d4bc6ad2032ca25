"""How long each engine's worker threads keep using the CPU after a call returns.

ONNX Runtime's intra-op pool and the OpenMP runtimes (torch's bundled libgomp, the one
fastgate's kernels link, OpenBLAS's pthreads pool) spin for a while after a parallel region
ends, waiting for more work. An engine timed during that time shares the cores with those
spinning threads. This script calls each engine at ``--threads`` threads, then samples the
per-thread CPU time of the process (bench/cpu_watch.py) and prints how long any other thread
stayed busy; cpu_watch.PAUSE, the pause before each timed block of ``pytest bench/``, is picked
above the largest of these.

Usage::

    python bench/measure_spin.py [--threads 2] [--repeats 5] [--shapes S2,S5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import engines  # noqa: E402
from cpu_watch import spin_after, wait_until_quiet  # noqa: E402

import fastgate  # noqa: E402


def sgemm_call(threads: int):
    """A call of SciPy's sgemm on the S6 LSTM step's GEMM, its BLAS at ``threads``."""
    import numpy as np
    import threadpoolctl
    from scipy.linalg import blas
    threadpoolctl.threadpool_limits(limits=threads, user_api="blas")
    a = np.ones((256, 768), np.float32, order="F")
    b = np.ones((768, 2048), np.float32, order="F")
    return lambda: blas.sgemm(1.0, a, b)


def spins(shape_name: str, threads: int, repeats: int, directory: str) -> dict[str, list]:
    """Seconds each engine's threads stayed busy after a call, ``repeats`` times each."""
    import torch
    fastgate.set_num_threads(threads)
    torch.set_num_threads(threads)
    shape = engines.SHAPES[shape_name]
    layer = engines.make_layer(shape, "lstm")
    x = engines.make_input(shape)
    lengths = engines.make_lengths(shape)
    calls = {"fastgate": engines.fastgate_runner(layer, x, lengths=lengths)[0],
             "torch": engines.torch_runner(layer, x, lengths)[0],
             "onnxruntime": engines.ort_runner(layer, x, threads, directory, lengths)[0],
             "sgemm (S6 step)": sgemm_call(threads)}
    measured: dict[str, list] = {name: [] for name in calls}
    with torch.inference_mode():
        for _ in range(repeats):
            for name, call in calls.items():
                call()
                wait_until_quiet(0.0, limit=3.0)
                measured[name].append(spin_after(call))
    return measured


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", default="S2,S5")
    args = parser.parse_args(argv)
    worst = 0.0
    with tempfile.TemporaryDirectory() as directory:
        for shape_name in args.shapes.split(","):
            for name, values in spins(shape_name.strip(), args.threads, args.repeats,
                                      directory).items():
                worst = max(worst, max(values))
                print(f"{shape_name:3} t{args.threads} {name:16} busy after return: median "
                      f"{statistics.median(values) * 1e3:6.1f} ms, max {max(values) * 1e3:6.1f}"
                      f" ms")
    print(f"longest: {worst * 1e3:.1f} ms (load average {os.getloadavg()[0]:.1f}; a busy "
          f"machine delays the pools' threads and lengthens this)")


if __name__ == "__main__":
    main()
