"""fastgate vs ONNX Runtime on the same .onnx file (exported by torch.onnx.export), 1 thread.

Two shapes of issue 12: an LSTM at batch 1 (B=1, T=50, D=64, H=128; target fastgate / ORT
<= 0.5) and a 2-layer LSTM at a medium batch (B=64, T=28, D=28, H=256; target <= 0.9). Both
engines load the same file; runs alternate between them (``--rounds`` rounds of
``--calls`` calls each), and the median time per call of each engine is reported, so that
load from other processes on the machine hits both alike. Outputs are checked to agree
(1e-5) before timing.

Each line also gives the arithmetic rate (GFLOP/s: the 2 T B 4H (D + H) multiply-adds of
each layer, elementwise work not counted) of fastgate, of ONNX Runtime and the rate a target
ratio would need, next to the same run's single-thread NumPy sgemm (a practical peak of one
core), so that a target beyond what one core computes shows as such.

    python bench/onnx_vs_ort.py [--rounds 15 --calls 50] [--clock cpu]

Needs torch (to export), onnx and onnxruntime: ``pip install ".[bench]"``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import numpy as np

import fastgate

SHAPES = {
    # name: (batch, steps, input, hidden, layers, target)
    "S2": (1, 50, 64, 128, 1, 0.5),
    "S4": (64, 28, 28, 256, 2, 0.9),
}


def export_lstm(path: str, batch: int, steps: int, width: int, hidden: int,
                layers: int) -> None:
    """An nn.LSTM (time-major, outputs y, h_n, c_n) exported with dynamic batch and steps."""
    import torch

    torch.manual_seed(0)
    module = torch.nn.LSTM(width, hidden, num_layers=layers).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(steps, batch, width),), path, dynamo=False,
                          input_names=["x"], output_names=["y", "h_n", "c_n"],
                          dynamic_axes={"x": {0: "steps", 1: "batch"}}, opset_version=17)


#: The clock timing the calls: wall time, or with ``--clock cpu`` the process's CPU time (on a
#: machine shared with other work, time the process waits for a core is then not counted).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def time_calls(call, calls: int) -> float:
    start = clock()
    for _ in range(calls):
        call()
    return (clock() - start) / calls


def lstm_flops(batch: int, steps: int, width: int, hidden: int, layers: int) -> float:
    """Floating-point operations of the layers' matrix products in one call."""
    inputs = [width] + [hidden] * (layers - 1)
    return sum(2.0 * steps * batch * 4 * hidden * (d + hidden) for d in inputs)


def sgemm_rate(size: int = 512, repeats: int = 20) -> float:
    """GFLOP/s of NumPy's float32 matrix product on one thread (its best of ``repeats``)."""
    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    best = min(time_calls(lambda: a @ a, 1) for _ in range(repeats))
    return 2.0 * size ** 3 / best / 1e9


def measure(name: str, rounds: int, calls: int) -> dict:
    import onnxruntime as ort

    batch, steps, width, hidden, layers, target = SHAPES[name]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"{name}.onnx")
        export_lstm(path, batch, steps, width, hidden, layers)
        ours = fastgate.load(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((steps, batch, width)).astype(np.float32)
    feed = {"x": x}
    for a, b in zip(ours.run(None, feed), session.run(None, feed)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    # the first recurrent layer alone, for context (the graph's other nodes cost the rest)
    layer = next(node.op.layer for node in ours.nodes if isinstance(node.op, fastgate.Recurrent))
    times: dict[str, list[float]] = {"fastgate": [], "onnxruntime": [], "layer": []}
    for _ in range(rounds):
        times["fastgate"].append(time_calls(lambda: ours.run(None, feed), calls))
        times["onnxruntime"].append(time_calls(lambda: session.run(None, feed), calls))
        if layers == 1:
            times["layer"].append(time_calls(lambda: layer(x), calls))
    result = {key: statistics.median(value) if value else float("nan")
              for key, value in times.items()}
    result.update(name=name, shape=f"B={batch} T={steps} D={width} H={hidden} L={layers}",
                  ratio=result["fastgate"] / result["onnxruntime"], target=target,
                  flops=lstm_flops(batch, steps, width, hidden, layers))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    fastgate.set_num_threads(1)
    print(f"fastgate {fastgate.__version__} ({fastgate.backend()}, ISA "
          f"{fastgate._kernels.recurrent.isa()}), 1 thread each, {os.cpu_count()} CPUs; "
          f"1-minute load average {os.getloadavg()[0]:.2f}; {args.clock} clock")
    peak = sgemm_rate()
    print(f"one core's practical peak: NumPy float32 sgemm 512^3, 1 thread: {peak:.0f} GFLOP/s")
    results = [measure(name, args.rounds, args.calls) for name in SHAPES]
    for r in results:
        alone = ("" if r["layer"] != r["layer"]
                 else f" (its LSTM layer alone {r['layer'] * 1e6:.1f} us)")
        gflops = {key: r["flops"] / r[key] / 1e9 for key in ("fastgate", "onnxruntime")}
        needed = r["flops"] / (r["target"] * r["onnxruntime"]) / 1e9
        print(f"{r['name']} {r['shape']}: fastgate {r['fastgate'] * 1e6:9.1f} us{alone}, "
              f"onnxruntime {r['onnxruntime'] * 1e6:9.1f} us")
        print(f"    GFLOP/s: fastgate {gflops['fastgate']:.0f}, onnxruntime "
              f"{gflops['onnxruntime']:.0f}; the target needs {needed:.0f} "
              f"({needed / peak:.0%} of the sgemm peak)")
    print("ratios fastgate / onnxruntime (1 thread, same .onnx file):")
    for r in results:
        met = "met" if r["ratio"] <= r["target"] else "NOT met"
        print(f"    {r['name']} ({r['shape']}): {r['ratio']:.2f}   target <= {r['target']}: {met}")


if __name__ == "__main__":
    main()
