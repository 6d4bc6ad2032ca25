"""Turn pytest-benchmark JSON into fastgate's markdown ratio table.

Usage::

    pytest bench/ --benchmark-only --benchmark-json=bench.json
    python bench/report.py bench.json [more.json ...] [-o report.md]

Per shape x cell x threads: the median of every engine, fastgate / best peer (PyTorch,
ONNX Runtime), the issue's target and whether it is met; the float64 / float32 ratio at S5;
then the machine (CPU model, cores, load) and library versions (numpy, scipy, their
OpenBLAS builds, torch, onnxruntime). Ratios, not absolute times, are what matters: all
engines ran in the same process on the same weights and inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from engines import DTYPE_TARGET, SHAPES, TARGETS  # noqa: E402

PEERS = ("torch", "onnxruntime")


def format_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def load(paths: list[str]) -> tuple[dict, list[dict]]:
    machine, benchmarks = {}, []
    for path in paths:
        with open(path) as handle:
            document = json.load(handle)
        machine = document.get("machine_info", machine)
        benchmarks += document.get("benchmarks", [])
    return machine, benchmarks


def medians(benchmarks: list[dict]) -> tuple[dict, dict]:
    """``(forward, dtype)``: ``{(shape, cell, threads): {engine: median seconds}}``."""
    forward: dict = {}
    dtype: dict = {}
    for bench in benchmarks:
        info = bench.get("extra_info", {})
        if "engine" not in info or "shape" not in info:
            continue  # not a forward-pass benchmark (e.g. bench/test_streaming.py's)
        key = (info["shape"], info["cell"], int(info["threads"]))
        table = dtype if info["engine"].startswith("fastgate-float") else forward
        table.setdefault(key, {})[info["engine"]] = bench["stats"]["median"]
    return forward, dtype


def ratio_table(forward: dict) -> tuple[list[str], int, int]:
    lines = ["| shape | B,T,D,H,L | cell | threads | fastgate | torch | onnxruntime | "
             "oracle | fastgate / best peer | target | met? |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    met = total = 0
    order = list(SHAPES)
    for key in sorted(forward, key=lambda k: (order.index(k[0]), k[1] != "lstm", k[2])):
        shape_name, cell, threads = key
        times = forward[key]
        shape = SHAPES[shape_name]
        peers = [times[p] for p in PEERS if p in times]
        fast = times.get("fastgate")
        ratio = fast / min(peers) if fast is not None and peers else None
        target = TARGETS[shape_name]
        ok = ratio is not None and ratio <= target
        if ratio is not None:
            total += 1
            met += ok
        dims = f"{shape.batch},{shape.steps},{shape.input_size},{shape.hidden_size},{shape.num_layers}"
        lines.append(
            f"| {shape_name} | {dims} | {cell} | {threads} | {format_time(fast)} | "
            f"{format_time(times.get('torch'))} | {format_time(times.get('onnxruntime'))} | "
            f"{format_time(times.get('oracle'))} | "
            f"{'-' if ratio is None else f'{ratio:.2f}'} | <= {target} | "
            f"{'-' if ratio is None else ('yes' if ok else '**no**')} |")
    return lines, met, total


def dtype_table(dtype: dict) -> tuple[list[str], int, int]:
    lines = ["| shape | cell | threads | float32 | float64 | float64 / float32 | target | met? |",
             "|---|---|---|---|---|---|---|---|"]
    met = total = 0
    for (shape_name, cell, threads), times in sorted(dtype.items()):
        single, double = times.get("fastgate-float32"), times.get("fastgate-float64")
        ratio = double / single if single and double else None
        ok = ratio is not None and ratio <= DTYPE_TARGET
        if ratio is not None:
            total += 1
            met += ok
        lines.append(f"| {shape_name} | {cell} | {threads} | {format_time(single)} | "
                     f"{format_time(double)} | {'-' if ratio is None else f'{ratio:.2f}'} | "
                     f"<= {DTYPE_TARGET} | {'-' if ratio is None else ('yes' if ok else '**no**')} |")
    return lines, met, total


def environment(machine: dict, benchmarks: list[dict]) -> list[str]:
    versions = machine.get("fastgate") or _current_versions()
    loads = [b["extra_info"]["loadavg_1m"] for b in benchmarks
             if "loadavg_1m" in b.get("extra_info", {})]
    lines = ["## Machine and versions", "",
             f"- CPU: {machine.get('cpu_model') or machine.get('cpu', {}).get('brand_raw', '?')}, "
             f"{machine.get('logical_cores', machine.get('cpu', {}).get('count', '?'))} logical "
             f"cores ({machine.get('affinity_cores', '?')} usable)"]
    if loads:
        cores = machine.get("affinity_cores") or machine.get("logical_cores")
        busy = isinstance(cores, int) and max(loads) > cores
        lines.append(f"- 1-minute load average during the run: {min(loads):.2f} - "
                     f"{max(loads):.2f}" + (" (above the core count: other processes "
                     "competed for the CPU and multi-threaded timings are noisy)" if busy
                     else ""))
    lines.append("- " + ", ".join(f"{name} {versions[name]}" for name in
                                  ("python", "fastgate", "numpy", "scipy", "torch",
                                   "onnxruntime") if name in versions)
                 + f"; fastgate backend: {versions.get('fastgate_backend', '?')}")
    for pool in versions.get("blas", []):
        if isinstance(pool, dict):
            lines.append(f"- BLAS: {os.path.basename(pool.get('filepath') or '?')} "
                         f"({pool.get('internal_api')} {pool.get('version')}, "
                         f"{pool.get('architecture')}, {pool.get('threading_layer')})")
        else:
            lines.append(f"- BLAS: {pool}")
    return lines


def _current_versions() -> dict:
    import conftest
    return conftest._versions()


def render(paths: list[str]) -> str:
    machine, benchmarks = load(paths)
    forward, dtype = medians(benchmarks)
    ratio_lines, met, total = ratio_table(forward)
    dtype_lines, dmet, dtotal = dtype_table(dtype)
    out = ["# fastgate benchmark report", "",
           "Medians, same process, same weights and inputs, time-major. Ratio = fastgate / "
           "best of PyTorch and ONNX Runtime (ORT through io-binding into preallocated "
           "outputs). `oracle` is fastgate's NumPy backend (S1-S3 only).", "",
           f"**{met} of {total}** speed targets met"
           + (f"; **{dmet} of {dtotal}** float64 targets met." if dtotal else "."), "",
           "## fastgate / best peer", ""] + ratio_lines
    if dtype:
        out += ["", "## float64 vs float32 (fastgate)", ""] + dtype_lines
    out += [""] + environment(machine, benchmarks)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json files")
    parser.add_argument("-o", "--output", help="write the markdown here instead of stdout")
    args = parser.parse_args(argv)
    text = render(args.json)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
