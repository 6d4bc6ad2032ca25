"""The per-call cost of tiny recurrent calls (S1, S3, a small ragged batch), in nanoseconds.

Each case is timed as a user calls it, ``layer(x)`` (or ``layer(x, lengths=...)``), in
repetitions of many calls; the minimum over repetitions is the robust statistic on a shared
machine (other load only ever adds time), the median is printed next to it.

    python bench/call_overhead.py                       # this checkout
    python bench/call_overhead.py --compare /other/tree  # interleaved A/B in fresh processes

``--compare`` runs this checkout and another source tree (its ``fastgate`` built in place)
alternately, in fresh processes, ``--rounds`` times each, and prints both and their ratio.
``FASTGATE_ISA=avx2`` in the environment times the AVX2 kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from time import perf_counter_ns

import numpy as np

#: (name, cell, input size, hidden size, steps, batch, layer options, lengths)
CASES = (
    ("S1 lstm", "LSTM", 64, 128, 1, 1, {}, None),
    ("S1 gru", "GRU", 64, 128, 1, 1, {}, None),
    ("S3 lstm", "LSTM", 5, 32, 10, 1, {}, None),
    ("S3 gru", "GRU", 5, 32, 10, 1, {}, None),
    ("S3 lstm bidirectional x2", "LSTM", 5, 32, 10, 1,
     {"bidirectional": True, "num_layers": 2}, None),
    ("S3 lstm B4 lengths", "LSTM", 5, 32, 10, 4, {}, [10, 7, 3, 9]),
)


def time_calls(call, calls: int, repeats: int) -> list[float]:
    """Nanoseconds per call of ``call()``, one figure per repetition of ``calls`` calls."""
    for _ in range(min(calls, 2000)):
        call()
    figures = []
    for _ in range(repeats):
        start = perf_counter_ns()
        for _ in range(calls):
            call()
        figures.append((perf_counter_ns() - start) / calls)
    return figures


def measure(calls: int, repeats: int) -> dict[str, list[float]]:
    """``{case: [ns per call per repetition]}`` of the :data:`CASES` in this process."""
    import fastgate

    results = {}
    for name, cell, inputs, hidden, steps, batch, options, lengths in CASES:
        layer = getattr(fastgate, cell).random(inputs, hidden, seed=0, **options)
        x = np.random.default_rng(1).standard_normal((steps, batch, inputs)).astype(np.float32)
        if lengths is None:
            results[name] = time_calls(lambda: layer(x), calls, repeats)
        else:
            given = np.array(lengths)
            results[name] = time_calls(lambda: layer(x, lengths=given), calls, repeats)
    return results


def run_in(tree: Path, calls: int, repeats: int) -> dict[str, list[float]]:
    """:func:`measure` in a fresh process importing fastgate from ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); import call_overhead; "
            "print(json.dumps(call_overhead.measure(int(sys.argv[2]), int(sys.argv[3]))))")
    output = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(calls), str(repeats)],
        env=env, cwd=tree, capture_output=True, text=True, check=True).stdout
    return json.loads(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="calls per repetition")
    parser.add_argument("--repeats", type=int, default=4, help="repetitions per process")
    parser.add_argument("--rounds", type=int, default=6, help="processes per tree")
    parser.add_argument("--compare", type=Path, default=None, help="another source tree")
    args = parser.parse_args()
    trees = {"this": Path(__file__).resolve().parent.parent}
    if args.compare is not None:
        trees["other"] = args.compare.resolve()
    figures: dict[str, dict[str, list[float]]] = {label: {} for label in trees}
    for round_ in range(args.rounds):
        order = list(trees) if round_ % 2 == 0 else list(reversed(trees))
        for label in order:
            for name, values in run_in(trees[label], args.calls, args.repeats).items():
                figures[label].setdefault(name, []).extend(values)
    print(f"ns per call, min / median (FASTGATE_ISA={os.environ.get('FASTGATE_ISA', '')!r})")
    for name, *_ in CASES:
        line = f"{name:26s}"
        for label in trees:
            values = np.array(figures[label][name])
            line += f"  {label} {values.min():8.0f} / {np.median(values):8.0f}"
        if args.compare is not None:
            this, other = (np.array(figures[label][name]) for label in ("this", "other"))
            line += f"  this/other min {this.min() / other.min():.3f}"
        print(line)


if __name__ == "__main__":
    main()
