"""Constants written in both Python and the kernels' C / Cython agree.

The kernels take plain integer codes and fixed-size arrays; nothing ties the Python tables
to them at build time, so these tests read the headers and the .pyx source (shipped with the
package) and compare: cell codes, gate counts, activation codes, the thread bound, and the
accumulator arrays against the largest register tile.
"""

import re
from pathlib import Path

import fastgate
from fastgate.activations import ACTIVATIONS
from fastgate.layers import _CELL_CODES
from fastgate.layout import GATE_COUNT

KERNELS = Path(fastgate.__file__).resolve().parent / "_kernels"
CELLS = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


def source(name: str) -> str:
    """The text of a kernel source file, comments removed (so old values in prose do not
    count)."""
    text = (KERNELS / name).read_text(encoding="utf-8")
    if name.endswith(".pyx"):
        return re.sub(r"#[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)


def c_enum(text: str, prefix: str) -> dict[str, int]:
    """``{NAME: value}`` of every ``PREFIX_NAME = value`` in C enums or Cython ``cdef enum``."""
    found = {name: int(value) for name, value in
             re.findall(rf"\b{prefix}(\w+)\s*=\s*(\d+)", text)}
    assert found, f"no {prefix}* constants found"
    return found


def one(pattern: str, text: str, what: str) -> re.Match:
    matches = list(re.finditer(pattern, text))
    assert len(matches) == 1, f"{what}: expected one match of {pattern!r}, got {len(matches)}"
    return matches[0]


def test_cell_codes_agree_in_python_cython_and_c():
    expected = {CELLS[cell]: code for cell, code in _CELL_CODES.items()}
    assert c_enum(source("recurrent.pyx"), "CELL_") == expected
    assert c_enum(source("fused.h"), "FG_CELL_") == expected


def test_gate_counts_agree():
    assert GATE_COUNT == {"lstm": 4, "gru": 3, "rnn": 1}  # i f g o / r z n / one
    pyx = one(r"gate_count = (\d) if cell == CELL_LSTM else \((\d) if cell == CELL_GRU "
              r"else (\d)\)", source("recurrent.pyx"), "LayerPlan.gate_count")
    assert [int(g) for g in pyx.groups()] == [GATE_COUNT[c] for c in ("lstm", "gru", "rnn")]
    c = one(r"GH = \(d->cell == FG_CELL_LSTM \? (\d) : \(d->cell == FG_CELL_GRU \? (\d) : "
            r"(\d)\)\) \* H", source("packed_step.h"), "run_direction GH")
    assert [int(g) for g in c.groups()] == [GATE_COUNT[c] for c in ("lstm", "gru", "rnn")]


def test_activation_codes_agree_with_vecmath():
    expected = {name.upper(): code for name, (code, _) in ACTIVATIONS.items()}
    codes = c_enum(source("vecmath.h"), "FG_")
    assert {name: codes.get(name) for name in expected} == expected
    assert sorted(expected.values()) == list(range(len(expected)))  # dense: a switch table


def test_thread_bounds_hold_max_threads_plus_one():
    pyx = source("recurrent.pyx")
    max_threads = int(one(r"cdef int MAX_THREADS = (\d+)", pyx, "MAX_THREADS").group(1))
    bounds = int(one(r"cdef Py_ssize_t bounds\[(\d+)\]", pyx, "bounds[]").group(1))
    assert bounds == max_threads + 1  # bounds[chunk] for chunk in 0..threads
    assert re.search(r"min\(num_threads, MAX_THREADS,", pyx)  # threads are capped by it


def test_accumulator_arrays_hold_the_largest_tile():
    fused, step = source("fused.h"), source("packed_step.h")
    per_isa = [int(n) for n in re.findall(r"#define FG_ACC (\d+)", fused)]
    assert len(per_isa) == 3  # base, AVX2, AVX-512
    arrays = {int(n) for pair in re.findall(r"V acc\[(\d+)\], acc2\[(\d+)\];", step)
              for n in pair}
    unrolled = {int(n) for n in re.findall(r"#pragma GCC unroll (\d+)\s*\n\s*for \(i = 0; "
                                           r"i < A \* MR", step)}
    # A tile holds A * MR <= FG_ACC accumulators (FG_MR caps the rows at FG_ACC / A).
    assert arrays == {max(per_isa)} and unrolled == {max(per_isa)}
    # fg_tile_rows (the thread split) repeats the accumulator counts of the ISAs.
    rows = one(r"const int acc = fg_isa\(\) == FG_ISA_AVX512 \? (\d+) : (\d+);", fused,
               "fg_tile_rows")
    assert (int(rows.group(1)), int(rows.group(2))) == (per_isa[2], per_isa[0]) \
        and per_isa[0] == per_isa[1]


def test_tile_cases_cover_the_tallest_tile():
    """FG_MR caps a tile at 12 rows; the switch over row counts must reach that cap for
    every accumulator count per row (1-4 gates, or 3 + 1 for a GRU's x W_n kept apart)."""
    step = source("packed_step.h")
    cap = one(r"#define FG_MR\(G\) \(FG_ACC / \(G\) < (\d+) \? FG_ACC / \(G\) : (\d+)\)",
              step, "FG_MR")
    assert cap.group(1) == cap.group(2)
    rows = int(cap.group(1))
    cases = {int(m) for m in re.findall(r"FG_TILE_CASE\(G, S, (\d+)\)", step)}
    assert cases == set(range(1, rows + 1))
    for accumulators in {int(n) for n in re.findall(r"#define FG_ACC (\d+)", source("fused.h"))}:
        assert {min(accumulators // per_row, rows) for per_row in (1, 2, 3, 4)} <= cases
