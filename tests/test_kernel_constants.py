"""The constants written in Python equal the kernels' (fastgate/_kernels/constants.h).

The kernels take plain integer codes and fixed-size arrays. constants.h is their one
definition: C includes it, recurrent.pyx ``cdef extern``s it, and
``recurrent.kernel_constants()`` reports the values the module was compiled with; these tests
compare the Python tables (cell codes, gate counts, activation codes, the planner's input
modes and thread splits) against it, and check the few literals C cannot take from a
constant (a ``#pragma`` unroll count, the tile row cases) against constants.h.
"""

import re
from pathlib import Path

import fastgate
from fastgate import plans
from fastgate.activations import ACTIVATIONS, PARAMETRIC_ACTIVATIONS
from fastgate.layers import _CELL_CODES
from fastgate.layout import GATE_COUNT

KERNELS = Path(fastgate.__file__).resolve().parent / "_kernels"


def constants():
    return fastgate._kernels.recurrent.kernel_constants()


def source(name: str) -> str:
    """A kernel source file without its comments."""
    text = (KERNELS / name).read_text(encoding="utf-8")
    if name.endswith(".pyx"):
        return re.sub(r"#[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)


def test_cell_codes_and_gate_counts_agree():
    assert constants()["cells"] == _CELL_CODES
    assert constants()["gates"] == GATE_COUNT == {"lstm": 4, "gru": 3, "rnn": 1}


def test_activation_codes_agree():
    assert constants()["activations"] == {name: code for name, (code, _) in ACTIVATIONS.items()}
    assert constants()["parametric_activations"] == {
        name: code for name, (code, _, _) in PARAMETRIC_ACTIVATIONS.items()}
    codes = [code for code, _ in ACTIVATIONS.values()] + [
        code for code, _, _ in PARAMETRIC_ACTIVATIONS.values()]
    assert sorted(codes) == list(range(len(codes)))  # dense and distinct: a switch table


def test_plan_codes_agree():
    assert constants()["input_modes"] == plans.INPUT_MODES
    assert constants()["splits"] == plans.SPLITS
    assert constants()["rows"] == plans.ROWS


def test_isa_names_agree():
    isas = constants()["isas"]
    assert sorted(isas, key=isas.get) == ["base", "avx2", "avx512"]
    assert fastgate._kernels.recurrent.isa() in isas


def test_accumulator_arrays_hold_the_largest_tile():
    limits = constants()["limits"]
    per_isa = [limits[f"{isa}_accumulators"] for isa in ("base", "avx2", "avx512")]
    assert limits["max_accumulators"] == max(per_isa)
    # a #pragma takes a literal: the accumulator loops' unroll counts must be FG_MAX_ACC
    step = source("packed_step.h")
    unrolled = {int(n) for n in re.findall(r"#pragma GCC unroll (\d+)\s*\n\s*for \(i = 0; "
                                           r"i < A \* MR", step)}
    assert unrolled == {limits["max_accumulators"]}
    assert "V acc[FG_MAX_ACC], acc2[FG_MAX_ACC];" in step


def test_tile_cases_cover_the_tallest_tile():
    """The switch over a tile's row count must reach FG_MAX_TILE_ROWS."""
    rows = constants()["limits"]["max_tile_rows"]
    cases = {int(m) for m in re.findall(r"FG_TILE_CASE\(G, S, (\d+)\)", source("packed_step.h"))}
    assert cases == set(range(1, rows + 1))


def test_thread_bounds_hold_max_threads_plus_one():
    pyx = source("recurrent.pyx")
    assert re.search(r"cdef Py_ssize_t bounds\[FG_MAX_THREADS \+ 1\]", pyx)
    assert constants()["limits"]["max_threads"] >= 2
