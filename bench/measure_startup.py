"""Measure fastgate's cold start and the peak memory of a forward pass, each in a fresh process.

Usage::

    python bench/measure_startup.py [--repeats 5] [--shapes S4,S5,S6]

1. Cold start: ``import fastgate`` + load a small ``.fastgate`` model (LSTM(32) on inputs of
   width 5) + the first prediction, timed inside a fresh interpreter after ``import numpy``
   (which any user of fastgate pays anyway), with the process's RSS (current and peak).
   Targets (issue 15): at most 150 ms beyond ``import numpy``, peak RSS at most 80 MB.
   ``pytest bench/`` runs it too (bench/test_startup.py), for report.py.
2. Forward-pass memory: in a fresh process per case, the peak memory added by one call
   ``layer(x)``, measured two ways -- NumPy allocations traced by ``tracemalloc`` (all of
   fastgate's buffers are NumPy arrays), and the growth of the process's peak RSS
   (``VmHWM`` reset through ``/proc/self/clear_refs``, which also sees BLAS and ``malloc``)
   -- against the theory, on a second call (the first touches BLAS's one-off buffers): outputs + the input projection buffer (+ for stacked layers the
   inter-layer buffers) + O(B*G*H) states and scratch. Inputs exist before the call and are
   not counted. Measuring at ``T`` and ``2T`` shows that nothing else grows with the number
   of steps, i.e. no per-step allocation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import engines  # noqa: E402

STARTUP_CHILD = r"""
import json, sys, time
start = time.perf_counter()
import numpy as np
numpy_done = time.perf_counter()
numpy_cpu = time.process_time()
import fastgate
imported = time.perf_counter()
load = getattr(fastgate, "load", None)
if load is None:
    from fastgate.serialization import load_native as load
model = load(sys.argv[1])
loaded = time.perf_counter()
x = np.random.default_rng(0).standard_normal((10, 5)).astype(np.float32)
out, state = model(x)
predicted = time.perf_counter()
predicted_cpu = time.process_time()
def status(key):  # kB; VmHWM (peak RSS) starts afresh at exec, unlike ru_maxrss
    return [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)][0]
print(json.dumps({"numpy": numpy_done - start, "import": imported - numpy_done,
                  "load": loaded - imported, "predict": predicted - loaded,
                  "beyond_numpy": predicted - numpy_done, "total": predicted - start,
                  "beyond_numpy_cpu": predicted_cpu - numpy_cpu,
                  "rss_mb": status("VmRSS") / 1024, "peak_rss_mb": status("VmHWM") / 1024,
                  "backend": fastgate.backend(), "modules": len(sys.modules),
                  "heavy": sorted(m for m in ("torch", "keras", "tensorflow", "h5py", "onnx",
                                              "threadpoolctl", "scipy") if m in sys.modules)}))
"""

MEMORY_CHILD = r"""
import json, sys, tracemalloc
import numpy as np
sys.path.insert(0, sys.argv[1])
import engines
import fastgate

def status(key):
    return [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)][0] * 1024

shape = engines.SHAPES[sys.argv[2]]
shape = engines.Shape(**{**shape.__dict__, "steps": shape.steps * int(sys.argv[4])})
layer = engines.make_layer(shape, sys.argv[3])
x = engines.make_input(shape)
out, state = layer(x)   # a first call touches BLAS's own buffers (allocated once per process)
del out, state
tracemalloc.start()
before = tracemalloc.get_traced_memory()[0]
open("/proc/self/clear_refs", "w").write("5")   # reset VmHWM to the current RSS
rss_before = status("VmRSS")
out, state = layer(x)
traced_peak = tracemalloc.get_traced_memory()[1] - before
rss_peak = status("VmHWM") - rss_before
print(json.dumps({"traced": traced_peak, "rss": rss_peak, "backend": fastgate.backend(),
                  "out": out.nbytes}))
"""


def run_child(code: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code, *args], env=env,
                            capture_output=True, text=True, timeout=600)
    if result.returncode:
        raise RuntimeError(f"child failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


#: Targets of the cold start: milliseconds beyond ``import numpy``, peak RSS in MB.
TARGET_MS, TARGET_MB = 150, 80


def cold_start(repeats: int) -> dict:
    """Medians over ``repeats`` fresh processes (seconds; MB), plus the last run's backend,
    module count and heavy modules, and a bare interpreter's peak RSS."""
    import fastgate
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "small.fastgate")
        fastgate.LSTM.random(5, 32, seed=0).save(path)
        baseline = [run_child("import json; print(json.dumps({'peak': [int(l.split()[1]) "
                              "for l in open('/proc/self/status') if l.startswith('VmHWM')]"
                              "[0] / 1024}))") for _ in range(repeats)]
        runs = [run_child(STARTUP_CHILD, path) for _ in range(repeats)]
    result = {key: statistics.median(run[key] for run in runs)
              for key in ("numpy", "import", "load", "predict", "beyond_numpy",
                          "beyond_numpy_cpu", "total", "rss_mb", "peak_rss_mb")}
    result.update({key: runs[-1][key] for key in ("backend", "modules", "heavy")},
                  bare_peak_rss_mb=statistics.median(b["peak"] for b in baseline),
                  repeats=repeats)
    return result


def startup(repeats: int) -> list[str]:
    result = cold_start(repeats)
    ok_time = result["beyond_numpy"] * 1e3 <= TARGET_MS
    ok_rss = result["peak_rss_mb"] <= TARGET_MB
    return [
        f"## Cold start (fresh process, median of {repeats})", "",
        "| step | time |", "|---|---|",
        f"| import numpy | {result['numpy'] * 1e3:.0f} ms |",
        f"| import fastgate | {result['import'] * 1e3:.0f} ms |",
        f"| load small .fastgate model | {result['load'] * 1e3:.1f} ms |",
        f"| first prediction (10, 5) | {result['predict'] * 1e3:.1f} ms |",
        f"| **beyond import numpy** (target <= {TARGET_MS} ms: "
        f"{'met' if ok_time else 'NOT met'}) | **{result['beyond_numpy'] * 1e3:.0f} ms** "
        f"({result['beyond_numpy_cpu'] * 1e3:.0f} ms of CPU) |", "",
        f"RSS after the first prediction: {result['rss_mb']:.1f} MB, peak "
        f"{result['peak_rss_mb']:.1f} MB (target <= {TARGET_MB} MB: "
        f"{'met' if ok_rss else 'NOT met'}); a bare interpreter peaks at "
        f"{result['bare_peak_rss_mb']:.1f} MB. Backend: {result['backend']}; "
        f"{result['modules']} modules loaded; of the heavy ones: "
        f"{', '.join(result['heavy']) or 'none'}.",
    ]


def theory(shape: engines.Shape, cell: str, factor: int) -> dict:
    gates = 4 if cell == "lstm" else 3
    size = 4  # float32
    rows = shape.steps * factor * shape.batch
    hidden = shape.hidden_size
    parts = {
        "outputs": rows * hidden * size,
        "projection": rows * gates * hidden * size,
        "inter_layer": (2 * rows * hidden * size) if shape.num_layers > 1 else 0,
        # h0, c0 (and the final states) + per-step scratch B * (G*H + H + P)
        "state": shape.num_layers * shape.batch * hidden * size * (2 if cell == "lstm" else 1)
        + shape.batch * (gates * hidden + 2 * hidden) * size,
    }
    parts["total"] = sum(parts.values())
    return parts


def memory(shapes: list[str]) -> list[str]:
    lines = ["## Peak memory of one forward pass (float32, fresh process per row)", "",
             "Theory = outputs + input projection buffer (+ 2 inter-layer buffers when "
             "stacked) + states and per-step scratch O(B*G*H). Inputs are not counted.", "",
             "| shape | cell | T | outputs | projection | inter-layer | O(BGH) | theory | "
             "tracemalloc peak | peak-RSS growth | traced - theory |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    mb = 1 / 2 ** 20
    checks, details = [], []
    for shape_name in shapes:
        shape = engines.SHAPES[shape_name]
        for cell in ("lstm", "gru"):
            rows = []
            for factor in (1, 2):
                measured = run_child(MEMORY_CHILD, HERE, shape_name, cell, str(factor))
                parts = theory(shape, cell, factor)
                rows.append((measured, parts))
                lines.append(
                    f"| {shape_name} | {cell} | {shape.steps * factor} | "
                    f"{parts['outputs'] * mb:.1f} MB | {parts['projection'] * mb:.1f} MB | "
                    f"{parts['inter_layer'] * mb:.1f} MB | {parts['state'] / 1024:.0f} kB | "
                    f"{parts['total'] * mb:.1f} MB | {measured['traced'] * mb:.1f} MB | "
                    f"{measured['rss'] * mb:.1f} MB | "
                    f"{(measured['traced'] - parts['total']) / 1024:+.0f} kB |")
            (small, small_theory), (large, large_theory) = rows
            details.append((shape_name, cell, small, large, small_theory, large_theory))
            checks.append((shape_name, cell,
                           max(small["traced"] - small_theory["total"],
                               large["traced"] - large_theory["total"]),
                           (large["traced"] - small["traced"])
                           - (large_theory["total"] - small_theory["total"])))
    slack = 64 * 1024
    worst_excess = max(checks, key=lambda c: c[2])
    worst_growth = max(checks, key=lambda c: c[3])
    lines += [
        "", f"Largest traced - theory: {worst_excess[2] / 1024:+.0f} kB ({worst_excess[0]} "
        f"{worst_excess[1]}): " + ("every forward pass stays within the theory."
                                   if worst_excess[2] <= slack else
                                   "**a forward pass allocates more than the theory.**"),
        f"Growth from T to 2T beyond the theory's growth: at most {worst_growth[3] / 1024:+.0f} "
        f"kB ({worst_growth[0]} {worst_growth[1]}): "
        + ("nothing grows with the number of steps faster than outputs + projection buffer "
           "(no per-step allocation)." if worst_growth[3] <= slack else
           "**something grows with the number of steps beyond the theory.**"),
        "A traced peak near outputs (+ inter-layer buffers) alone means the kernel fused the "
        "input projection into the step (no (T*B, G*H) buffer).", "",
        "| shape | cell | traced growth T -> 2T | outputs + inter-layer growth | "
        "projection buffer growth |", "|---|---|---|---|---|"]
    for shape_name, cell, small, large, small_theory, large_theory in details:
        lines.append(
            f"| {shape_name} | {cell} | {(large['traced'] - small['traced']) * mb:.2f} MB | "
            f"{(large_theory['outputs'] + large_theory['inter_layer'] - small_theory['outputs'] - small_theory['inter_layer']) * mb:.2f} MB | "
            f"{(large_theory['projection'] - small_theory['projection']) * mb:.2f} MB |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", default="S4,S5,S6")
    args = parser.parse_args(argv)
    print("\n".join(startup(args.repeats)))
    print()
    print("\n".join(memory([s.strip() for s in args.shapes.split(",") if s.strip()])))


if __name__ == "__main__":
    main()
