"""Several runs of ``pytest bench/`` side by side: how far each ratio moves between runs.

On a machine shared with other guests, runs minutes apart differ by more than some rows'
distance to their target; one run's table then says "met" or "not met" by luck. This prints,
per ISA, the targets each run met, and per shape x cell x threads fastgate / best peer in
every run, its range and in how many runs it met its target.

Usage::

    python bench/spread.py avx512-1.json avx512-2.json avx512-3.json avx2-1.json ...
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from report import (Targets, _order, collect, isa_section, load,  # noqa: E402
                    peer_ratio)

from engines import TARGETS  # noqa: E402


def run_ratios(path: str) -> tuple[dict, Targets]:
    """``({(isa, shape, cell, threads): ratio}, targets met)`` of one run's JSON."""
    _, benchmarks = load([path])
    tables = collect(benchmarks)
    ratios = {key: peer_ratio(benches) for key, benches in tables["forward"].items()}
    ratios = {key: ratio for key, ratio in ratios.items() if ratio is not None}
    targets = Targets()
    for isa in {key[0] for key in ratios}:
        isa_section(isa, tables, benchmarks, targets)   # (counts every target of the run)
    return ratios, targets


def render(paths: list[str]) -> str:
    runs = [(os.path.basename(path), *run_ratios(path)) for path in paths]
    known = ("avx512", "avx2", "base", "python")   # (report.py's order)
    isas = sorted({key[0] for _, ratios, _ in runs for key in ratios},
                  key=lambda isa: known.index(isa) if isa in known else len(known))
    out = []
    for isa in isas:
        mine = [(name, ratios, targets) for name, ratios, targets in runs
                if any(key[0] == isa for key in ratios)]
        counts = ", ".join(f"{name}: {targets.met[isa]} of {targets.total[isa]}"
                           for name, _, targets in mine)
        out += [f"## ISA {isa}", "", f"Targets met per run: {counts}.", "",
                "| shape | cell | threads | " + " | ".join(name for name, _, _ in mine)
                + " | range | target | runs met |",
                "|---|---|---|" + "---|" * len(mine) + "---|---|---|"]
        keys = sorted({key for _, ratios, _ in mine for key in ratios if key[0] == isa},
                      key=_order)
        for key in keys:
            values = [ratios.get(key) for _, ratios, _ in mine]
            found = [v for v in values if v is not None]
            target = TARGETS.get(key[1])
            met = sum(v <= target for v in found) if target is not None else 0
            out.append(f"| {key[1]} | {key[2]} | {key[3]} | "
                       + " | ".join("-" if v is None else f"{v:.2f}" for v in values)
                       + f" | {min(found):.2f}-{max(found):.2f} | <= {target} | "
                       f"{met} of {len(found)} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", help="pytest-benchmark JSON files, one per run")
    args = parser.parse_args(argv)
    print(render(args.json))


if __name__ == "__main__":
    main()
