"""Turn pytest-benchmark JSON into fastgate's markdown report: one table per ISA.

Usage::

    pytest bench/ --benchmark-only --benchmark-json=avx512.json
    pytest bench/ --benchmark-only --isa avx2 --benchmark-json=avx2.json
    python bench/report.py avx512.json avx2.json [-o report.md]

Per ISA (the ``--isa`` of the run, recorded per benchmark) and per shape x cell x threads:
the median of every engine, fastgate's and the best peer's GFLOP/s, fastgate / best peer
(PyTorch, ONNX Runtime), the issue's target and whether it is met. Then the other targets:
S6 LSTM GFLOP/s as a fraction of the same run's sgemm, S7 with ``lengths=`` / without, float64
/ float32 at S5, and the cold start; what the thread check saw; the machine (CPU model and
SIMD flags, cores, load) and library versions. Ratios, not absolute times, are what matters:
all engines ran in the same process on the same weights and inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from engines import (DTYPE_TARGET, NO_LENGTHS, RAGGED_TARGET, SGEMM_CELL,  # noqa: E402
                     SGEMM_SHAPE, SGEMM_TARGET, SHAPES, TARGETS)

from measure_startup import TARGET_MB as STARTUP_TARGET_MB  # noqa: E402
from measure_startup import TARGET_MS as STARTUP_TARGET_MS  # noqa: E402

PEERS = ("torch", "onnxruntime")


def format_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


class Targets:
    """Counts met targets, per ISA."""

    def __init__(self):
        self.met: dict[str, int] = defaultdict(int)
        self.total: dict[str, int] = defaultdict(int)

    def add(self, isa: str, ok: bool) -> bool:
        self.total[isa] += 1
        self.met[isa] += ok
        return ok


def load(paths: list[str]) -> tuple[list[dict], list[dict]]:
    """``(machines, benchmarks)``; each benchmark's ``extra_info`` gets its run's ISA if it
    has none (JSON of older runs)."""
    machines, benchmarks = [], []
    for path in paths:
        with open(path) as handle:
            document = json.load(handle)
        machine = document.get("machine_info", {})
        machines.append(machine)
        for bench in document.get("benchmarks", []):
            info = bench.setdefault("extra_info", {})
            info.setdefault("isa", machine.get("fastgate_isa", "?"))
            benchmarks.append(bench)
    return machines, benchmarks


def collect(benchmarks: list[dict]) -> dict:
    """``{kind: {key: {engine: bench}}}`` for kinds forward, dtype, sgemm, startup."""
    tables: dict = {"forward": {}, "dtype": {}, "sgemm": {}, "startup": {}}
    for bench in benchmarks:
        info = bench["extra_info"]
        engine = info.get("engine")
        if engine == "startup":
            tables["startup"][info["isa"]] = {"startup": bench}
            continue
        if engine is None or "shape" not in info:
            continue  # not one of test_recurrent's benchmarks (e.g. test_streaming's)
        key = (info["isa"], info["shape"], info["cell"], int(info["threads"]))
        if engine == "sgemm":
            kind = "sgemm"
        elif engine.startswith("fastgate-float"):
            kind = "dtype"
        else:
            kind = "forward"
        tables[kind].setdefault(key, {})[engine] = bench
    return tables


def median(bench: dict | None) -> float | None:
    return None if bench is None else bench["stats"]["median"]


def gflops(bench: dict | None) -> float | None:
    if bench is None or not bench["extra_info"].get("flops"):
        return None
    return bench["extra_info"]["flops"] / bench["stats"]["median"] / 1e9


def gflops_per_core_second(bench: dict | None) -> float | None:
    """GFLOP per process CPU second (all threads'): a busy machine's time slices don't
    lower it, so it shows what a core does while it runs the engine."""
    info = {} if bench is None else bench["extra_info"]
    if not info.get("flops") or not info.get("cpu_seconds_per_call"):
        return None
    return info["flops"] / info["cpu_seconds_per_call"] / 1e9


def _gf(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _order(key: tuple) -> tuple:
    order = list(SHAPES)
    isa, shape, cell, threads = key
    return (order.index(shape) if shape in order else len(order), cell != "lstm", threads)


def peer_ratio(benches: dict) -> float | None:
    """fastgate's median / the best peer's, of one shape x cell x threads' benchmarks."""
    peers = [benches[p] for p in PEERS if p in benches]
    fast = benches.get("fastgate")
    return median(fast) / min(median(p) for p in peers) if fast and peers else None


def ratio_table(forward: dict, isa: str, targets: Targets) -> list[str]:
    lines = ["| shape | B,T,D,H,L,dirs | cell | threads | fastgate | torch | onnxruntime | "
             "oracle | fastgate GFLOP/s | best peer GFLOP/s | fastgate / best peer | target | "
             "met? | same, CPU time |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted((k for k in forward if k[0] == isa), key=_order):
        _, shape_name, cell, threads = key
        benches = forward[key]
        peers = [benches[p] for p in PEERS if p in benches]
        best = min(peers, key=median) if peers else None
        fast = benches.get("fastgate")
        ratio = peer_ratio(benches)
        target = TARGETS.get(shape_name)
        ok = ratio is not None and target is not None and targets.add(isa, ratio <= target)
        shape = SHAPES.get(shape_name)
        dims = "?" if shape is None else (f"{shape.batch},{shape.steps},{shape.input_size},"
                                          f"{shape.hidden_size},{shape.num_layers},"
                                          f"{shape.directions}")
        lines.append(
            f"| {shape_name} | {dims} | {cell} | {threads} | {format_time(median(fast))} | "
            f"{format_time(median(benches.get('torch')))} | "
            f"{format_time(median(benches.get('onnxruntime')))} | "
            f"{format_time(median(benches.get('oracle')))} | {_gf(gflops(fast))} | "
            f"{_gf(gflops(best))} | {'-' if ratio is None else f'{ratio:.2f}'} | "
            f"<= {target} | {'-' if ratio is None or target is None else verdict(ok)} | "
            f"{cpu_ratio(fast, peers, threads)} |")
    return lines


def cpu_ratio(fast: dict | None, peers: list[dict], threads: int) -> str:
    """fastgate / best peer in process CPU seconds per call, for one-thread rows timed in
    fixed rounds (calls >= 2 ms): other processes on the machine do not inflate CPU time,
    so this ratio holds up on a shared machine where the wall-time ratio does not."""
    if threads != 1 or fast is None or not peers:
        return "-"
    values = [b["extra_info"].get("cpu_seconds_per_call") for b in [fast] + peers]
    if any(v is None for v in values):
        return "-"
    return f"{values[0] / min(values[1:]):.2f}"


def sgemm_table(tables: dict, isa: str, targets: Targets) -> list[str]:
    """fastgate's S6 LSTM GFLOP/s / the same run's sgemm GFLOP/s, per thread count."""
    lines = [f"| threads | sgemm ({SGEMM_SHAPE} {SGEMM_CELL} step GEMM) GFLOP/s | "
             f"fastgate {SGEMM_SHAPE} {SGEMM_CELL} GFLOP/s | best peer GFLOP/s | "
             f"fastgate / sgemm | target | met? | sgemm, fastgate GFLOP per core-second |",
             "|---|---|---|---|---|---|---|---|"]
    for key in sorted(k for k in tables["sgemm"] if k[0] == isa):
        threads = key[3]
        sgemm = gflops(tables["sgemm"][key]["sgemm"])
        benches = tables["forward"].get((isa, SGEMM_SHAPE, SGEMM_CELL, threads), {})
        fast = gflops(benches.get("fastgate"))
        peers = [gflops(benches[p]) for p in PEERS if p in benches]
        fraction = fast / sgemm if fast and sgemm else None
        ok = fraction is not None and targets.add(isa, fraction >= SGEMM_TARGET)
        per_core = (gflops_per_core_second(tables["sgemm"][key]["sgemm"]),
                    gflops_per_core_second(benches.get("fastgate")))
        lines.append(f"| {threads} | {_gf(sgemm)} | {_gf(fast)} | "
                     f"{_gf(max(peers) if peers else None)} | "
                     f"{'-' if fraction is None else f'{fraction:.0%}'} | "
                     f">= {SGEMM_TARGET:.0%} | {'-' if fraction is None else verdict(ok)} | "
                     f"{_gf(per_core[0])}, {_gf(per_core[1])} |")
    return lines


def ragged_table(forward: dict, isa: str, targets: Targets) -> list[str]:
    """fastgate with ``lengths=`` / fastgate on the same padded batch without."""
    lines = ["| shape | cell | threads | real tokens | with lengths | without | "
             "with / without | target | met? |", "|---|---|---|---|---|---|---|---|---|"]
    for key in sorted((k for k in forward if k[0] == isa and NO_LENGTHS in forward[k]),
                      key=_order):
        _, shape_name, cell, threads = key
        fast, full = forward[key].get("fastgate"), forward[key][NO_LENGTHS]
        ratio = median(fast) / median(full) if fast else None
        ok = ratio is not None and targets.add(isa, ratio <= RAGGED_TARGET)
        info = full["extra_info"]
        real = fast["extra_info"].get("real_tokens") if fast else None
        share = f"{real / (info['T'] * info['B']):.0%}" if real else "-"
        lines.append(f"| {shape_name} | {cell} | {threads} | {share} | "
                     f"{format_time(median(fast))} | {format_time(median(full))} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}'} | <= {RAGGED_TARGET} | "
                     f"{'-' if ratio is None else verdict(ok)} |")
    return lines


def dtype_table(dtype: dict, isa: str, targets: Targets) -> list[str]:
    lines = ["| shape | cell | threads | float32 | float64 | float64 / float32 | target | met? |",
             "|---|---|---|---|---|---|---|---|"]
    for key in sorted((k for k in dtype if k[0] == isa), key=_order):
        _, shape_name, cell, threads = key
        single = median(dtype[key].get("fastgate-float32"))
        double = median(dtype[key].get("fastgate-float64"))
        ratio = double / single if single and double else None
        ok = ratio is not None and targets.add(isa, ratio <= DTYPE_TARGET)
        lines.append(f"| {shape_name} | {cell} | {threads} | {format_time(single)} | "
                     f"{format_time(double)} | {'-' if ratio is None else f'{ratio:.2f}'} | "
                     f"<= {DTYPE_TARGET} | {'-' if ratio is None else verdict(ok)} |")
    return lines


def startup_lines(tables: dict, isa: str, targets: Targets) -> list[str]:
    entry = tables["startup"].get(isa)
    if not entry:
        return []
    info = entry["startup"]["extra_info"]
    beyond, peak = info["beyond_numpy_ms"], info["peak_rss_mb"]
    time_ok = targets.add(isa, beyond <= STARTUP_TARGET_MS)
    rss_ok = targets.add(isa, peak <= STARTUP_TARGET_MB)
    return [f"Cold start (fresh process, median of {info['repeats']}): `import fastgate` + "
            f"load a small `.fastgate` + first prediction took **{beyond:.0f} ms** beyond "
            f"`import numpy` ({info['numpy_ms']:.0f} ms; CPU time "
            f"{info.get('beyond_numpy_cpu_ms', float('nan')):.0f} ms, which other processes do "
            f"not inflate), target <= {STARTUP_TARGET_MS} ms: "
            f"{verdict(time_ok)}; peak RSS **{peak:.1f} MB**, target <= {STARTUP_TARGET_MB} "
            f"MB: {verdict(rss_ok)}. Heavy modules loaded: {info['heavy'] or 'none'}."]


def thread_check(benchmarks: list[dict], isa: str) -> list[str]:
    rows = [b["extra_info"] for b in benchmarks if b["extra_info"].get("isa") == isa
            and "busy_threads" in b["extra_info"]]
    if not rows:
        return []
    single = [r for r in rows if int(r.get("threads", 0)) == 1]
    excess = [r for r in single if r["busy_threads"] > 1]
    worst = max((r["cpu_per_wall"] for r in single), default=0)
    pauses = [r.get("paused", 0) for r in rows]
    spins: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if "spin_after" in r and int(r.get("threads", 0)) > 1:
            spins[r["engine"]].append(r["spin_after"])
    spin_text = ", ".join(f"{engine} up to {max(values) * 1e3:.0f} ms"
                          for engine, values in sorted(spins.items()))
    return [f"Thread check: {len(single) - len(excess)} of {len(single)} one-thread blocks "
            f"ran on one busy thread (largest process CPU / wall time {worst:.2f})"
            + ("" if not excess else ": **not** " + ", ".join(
                f"{r['shape']} {r['cell']} {r['engine']}" for r in excess))
            + f". Pause before each timed block: {min(pauses):.2f}-{max(pauses):.2f} s "
            f"(until no other thread of the process used the CPU)"
            + (f"; after a 2-thread block, the engine's threads stayed busy: {spin_text}."
               if spin_text else ".")]


def isa_section(isa: str, tables: dict, benchmarks: list[dict], targets: Targets) -> list[str]:
    out = [f"## ISA {isa}", "", "### fastgate / best peer", ""]
    out += ratio_table(tables["forward"], isa, targets)
    if any(k[0] == isa for k in tables["sgemm"]):
        out += ["", f"### {SGEMM_SHAPE} {SGEMM_CELL.upper()} against the same run's sgemm", "",
                "GFLOP/s = 2 T B (D + H) G H per layer and direction (the recurrent and input "
                "products), per median call; sgemm: SciPy's BLAS on the step's GEMM "
                "`[x_t, h] @ [W; U]`, its thread count set by threadpoolctl. GFLOP per "
                "core-second divides by the process's CPU time instead (all its threads'): "
                "what a core does while it runs the engine, whatever else shares the machine.",
                ""]
        out += sgemm_table(tables, isa, targets)
    ragged = ragged_table(tables["forward"], isa, targets)
    if len(ragged) > 2:
        out += ["", "### Ragged batch: with `lengths=` / without (fastgate, same batch)", "",
                "GFLOP/s of the rows with lengths count the real tokens only."] + [""] + ragged
    dtype = dtype_table(tables["dtype"], isa, targets)
    if len(dtype) > 2:
        out += ["", "### float64 vs float32 (fastgate)", ""] + dtype
    extra = startup_lines(tables, isa, targets) + thread_check(benchmarks, isa)
    if extra:
        out += [""] + [line for item in extra for line in (item, "")][:-1]
    return out


def environment(machines: list[dict], benchmarks: list[dict]) -> list[str]:
    machine = machines[-1] if machines else {}
    versions = machine.get("fastgate") or _current_versions()
    loads = [b["extra_info"]["loadavg_1m"] for b in benchmarks
             if "loadavg_1m" in b.get("extra_info", {})]
    lines = ["## Machine and versions", "",
             f"- CPU: {machine.get('cpu_model') or machine.get('cpu', {}).get('brand_raw', '?')}, "
             f"{machine.get('logical_cores', machine.get('cpu', {}).get('count', '?'))} logical "
             f"cores ({machine.get('affinity_cores', '?')} usable)",
             f"- SIMD flags: {' '.join(machine.get('cpu_flags', [])) or '?'}; kernels' ISA "
             f"per run: {', '.join(sorted({m.get('fastgate_isa', '?') for m in machines}))}; "
             f"plans: {', '.join(sorted({m.get('fastgate_plan_mode', '?') for m in machines}))}"]
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
    machines, benchmarks = load(paths)
    tables = collect(benchmarks)
    isas = sorted({key[0] for kind in tables.values() for key in kind
                   if isinstance(key, tuple)} | set(tables["startup"]),
                  key=lambda isa: ("avx512", "avx2", "base", "python").index(isa)
                  if isa in ("avx512", "avx2", "base", "python") else 9)
    targets = Targets()
    sections = [line for isa in isas
                for line in isa_section(isa, tables, benchmarks, targets) + [""]]
    summary = "; ".join(f"**{targets.met[isa]} of {targets.total[isa]}** targets met with "
                        f"the {isa} kernels" for isa in isas)
    out = ["# fastgate benchmark report", "",
           "Medians, same process, same weights and inputs, time-major. Ratio = fastgate / "
           "best of PyTorch and ONNX Runtime (ORT through io-binding into preallocated "
           "outputs). `oracle` is fastgate's NumPy backend (S1-S3 only). S7 is ragged: "
           "fastgate `lengths=`, ORT `sequence_lens`, torch a PackedSequence (packing and "
           "padding included).", "", (summary or "No benchmarks found") + ".", ""]
    out += sections + environment(machines, benchmarks)
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
