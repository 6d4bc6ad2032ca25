"""Quick interleaved comparison of the engines, for profiling sessions.

pytest-benchmark times one engine after another, so a burst of load from other processes
can land on one engine only. This script runs the engines round-robin (one call each, in
turn, repeated) and prints medians and the fastgate / best-peer ratio, which holds up better
on a busy machine. It checks every engine's answer against fastgate's first. With more than
one thread it pauses before each engine's turn until the previous engine's worker threads
stopped spinning (bench/cpu_watch.py), so no engine shares the cores with another's pool.

Usage::

    python bench/compare.py S5 lstm --threads 1 --seconds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import engines  # noqa: E402
from cpu_watch import PAUSE, wait_until_quiet  # noqa: E402

import fastgate  # noqa: E402


def compare(shape_name: str, cell: str, threads: int, seconds: float,
            pause: float = 0.0) -> dict[str, float]:
    """Median seconds per engine over interleaved calls for about ``seconds`` in total,
    pausing ``pause`` (then until the process is quiet) before each engine's turn."""
    import torch
    fastgate.set_num_threads(threads)
    torch.set_num_threads(threads)
    shape = engines.SHAPES[shape_name]
    layer = engines.make_layer(shape, cell)
    x = engines.make_input(shape)
    lengths = engines.make_lengths(shape)
    reference = layer(x, lengths=lengths)[0]
    with tempfile.TemporaryDirectory() as directory:
        runners = {"fastgate": engines.fastgate_runner(layer, x, lengths=lengths),
                   "torch": engines.torch_runner(layer, x, lengths),
                   "onnxruntime": engines.ort_runner(layer, x, threads, directory, lengths)}
        if shape.small:
            runners["oracle"] = engines.fastgate_runner(layer, x, backend="python")
        expected = dict.fromkeys(runners, reference)
        if shape.ragged:
            runners[engines.NO_LENGTHS] = engines.fastgate_runner(layer, x)
            expected[engines.NO_LENGTHS] = layer(x)[0]
        for name, (_, result) in runners.items():
            np.testing.assert_allclose(result(), expected[name], rtol=0, atol=1e-4,
                                       err_msg=f"{name} disagrees with fastgate")
        times: dict[str, list[float]] = {name: [] for name in runners}
        deadline = time.perf_counter() + seconds
        with torch.inference_mode():
            for hot, _ in runners.values():
                hot()
            while time.perf_counter() < deadline or len(times["fastgate"]) < 5:
                for name, (hot, _) in runners.items():
                    if pause:
                        wait_until_quiet(pause)
                    repeat = 1
                    start = time.perf_counter()
                    hot()
                    elapsed = time.perf_counter() - start
                    if elapsed < 1e-3:  # time a batch of calls to beat timer resolution
                        repeat = max(1, int(1e-3 / max(elapsed, 1e-7)))
                        start = time.perf_counter()
                        for _ in range(repeat):
                            hot()
                        elapsed = time.perf_counter() - start
                    times[name].append(elapsed / repeat)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shape", choices=list(engines.SHAPES))
    parser.add_argument("cell", choices=list(engines.CELLS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--pause", type=float, default=None,
                        help=f"seconds to pause before each engine's turn (default: {PAUSE} "
                             f"with more than one thread, else 0)")
    args = parser.parse_args(argv)
    pause = args.pause if args.pause is not None else (PAUSE if args.threads > 1 else 0.0)
    medians = compare(args.shape, args.cell, args.threads, args.seconds, pause)
    best_peer = min(medians[p] for p in ("torch", "onnxruntime"))
    cells = "  ".join(f"{name} {value * 1e3:.3f} ms" for name, value in medians.items())
    print(f"{args.shape} {args.cell} t{args.threads}: {cells}  ratio "
          f"{medians['fastgate'] / best_peer:.2f} (target {engines.TARGETS[args.shape]})"
          + (f"  with / without lengths {medians['fastgate'] / medians[engines.NO_LENGTHS]:.2f}"
             f" (target {engines.RAGGED_TARGET})" if engines.NO_LENGTHS in medians else "")
          + f"  load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
