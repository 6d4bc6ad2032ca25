"""The planner (fastgate.plans): every plan against the oracle, the modes, the cache, explain.

A plan is where each layer's ``x W`` comes from (in the step, the packed input pass, BLAS) and
how threads share the call (none, batch rows, hidden units). Every plan the kernel accepts
must compute what the oracle computes (float32 1e-5, float64 1e-12, absolute on O(1) values);
a plan it cannot run is refused with ``ValueError``, never run. test_compiled_vs_oracle runs
this file again under each ISA (FASTGATE_ISA).
"""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastgate
from fastgate import plans
from conftest import assert_close, random_cell_weights, subprocess_env

LAYERS = {"lstm": fastgate.LSTM, "gru": fastgate.GRU, "rnn": fastgate.SimpleRNN}

#: Layer and call shapes covering each pass: projection, GRU reset-before's candidate pass,
#: stacked layers (the later layers' input mode), both directions, masks, ragged blocks.
CASES = [
    dict(cell="lstm", hidden=19, batch=1, steps=7),
    dict(cell="lstm", hidden=33, batch=5, steps=6, layers=2, bidirectional=True),
    dict(cell="lstm", hidden=17, batch=3, steps=5, proj=6, masked=True),
    dict(cell="gru", hidden=21, batch=2, steps=6),
    dict(cell="gru", hidden=21, batch=4, steps=6, reset_after=False, masked=True),
    dict(cell="gru", hidden=40, batch=1, steps=4, layers=2, reset_after=False),
    dict(cell="rnn", hidden=35, batch=6, steps=5, bidirectional=True, masked=True),
    dict(cell="lstm", hidden=24, batch=2, steps=1, activation="relu"),
]

#: Every plan the tests try: 3 x 3 input modes x (one thread, 2 threads over the batch,
#: 2 threads over the hidden units) x (all rows at once, in row blocks).
ALL_PLANS = [plans.Plan(first, later, split, threads, rows)
             for first, later in itertools.product(plans.INPUT_MODES, repeat=2)
             for split, threads in (("none", 1), ("batch", 2), ("hidden", 2))
             for rows in plans.ROWS]


def build(case, dtype, seed=5):
    """The layer, input, zero states and mask of a case."""
    rng = np.random.default_rng(seed)
    cell, hidden, batch, steps = case["cell"], case["hidden"], case["batch"], case["steps"]
    layers, bidirectional = case.get("layers", 1), case.get("bidirectional", False)
    weights = random_cell_weights(cell, 11, hidden, num_layers=layers,
                                  bidirectional=bidirectional, proj_size=case.get("proj", 0),
                                  rng=rng, scale=1.0 / np.sqrt(hidden + 12), dtype=dtype)
    options = dict(bidirectional=bidirectional, dtype=dtype,
                   activation=case.get("activation", "tanh"))
    if cell == "gru":
        options["reset_after"] = case.get("reset_after", True)
    layer = LAYERS[cell](weights, **options)
    x = rng.normal(size=(steps, batch, 11)).astype(dtype)
    lengths = rng.integers(0, steps + 1, size=batch) if case.get("masked") else None
    return layer, x, lengths


def run_plan(layer, x, lengths, plan):
    """``(out, h_n, c_n)`` of the kernel forced to run ``plan`` from zero states."""
    steps, batch = x.shape[:2]
    h0, c0 = (np.zeros(s, layer.dtype) if s is not None else None
              for s in _state_shapes(layer, batch))
    mask = None
    if lengths is not None:
        mask = (np.arange(steps)[:, None] < lengths[None, :]).astype(np.uint8)
    out = layer._plan.forward(x, h0, c0, mask, False, False, 0, True, plan.codes())
    return out, h0, c0


def _state_shapes(layer, batch):
    shapes = [tuple(batch if d == -1 else d for d in s) for s in layer.state_shapes]
    return shapes[0], (shapes[1] if layer.cell == "lstm" else None)


def refusal_expected(layer, plan, batch, masked):
    """Whether the kernel must refuse ``plan`` (the rules of recurrent.pyx _plan_problem)."""
    if plan.split == "batch":
        packed = plan.first_input == "packed" or (
            layer.num_layers > 1 and plan.later_input == "packed")
        return packed or plan.threads > batch
    if plan.split == "hidden":
        return (masked or plan.rows == "blocked" or layer.output_size != layer.hidden_size
                or (layer.cell == "gru" and not layer.reset_after))
    return False


def oracle(layer, x, lengths):
    with fastgate.use_backend("python"):
        out, state = layer(x, lengths=lengths)
    states = list(state) if layer.cell == "lstm" else [state]
    return out, states


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_every_plan_matches_the_oracle(case, dtype):
    layer, x, lengths = build(case, dtype)
    expected_out, expected_states = oracle(layer, x, lengths)
    ran = 0
    for plan in ALL_PLANS:
        if refusal_expected(layer, plan, x.shape[1], lengths is not None):
            with pytest.raises(ValueError, match="plan"):
                run_plan(layer, x, lengths, plan)
            continue
        out, h_n, c_n = run_plan(layer, x, lengths, plan)
        ran += 1
        assert_close(out, expected_out, dtype, scale_with_value=True, what=f"out, {plan}")
        for actual, expected in zip((h_n, c_n), expected_states):
            assert_close(actual, expected, dtype, scale_with_value=True,
                         what=f"state, {plan}")
    assert ran >= 18  # at least every input mode pair and row order on one thread


#: Shapes for the blocked row order with its block size shrunk (small_row_blocks): several
#: row blocks, partial tiles, every pass.
BLOCKED_CASES = [
    dict(cell="lstm", hidden=37, batch=29, steps=5),
    dict(cell="lstm", hidden=21, batch=23, steps=4, proj=13, masked=True),
    dict(cell="lstm", hidden=18, batch=19, steps=3, layers=2, bidirectional=True),
    dict(cell="gru", hidden=35, batch=26, steps=4, masked=True),
    dict(cell="gru", hidden=29, batch=21, steps=4, reset_after=False, masked=True),
    dict(cell="rnn", hidden=45, batch=17, steps=5, bidirectional=True),
]


@pytest.fixture
def small_row_blocks():
    """Row blocks of 2 KB of per-row data: a few rows each on the shapes above."""
    kernels = fastgate._kernels.recurrent
    previous = kernels.set_row_block_bytes(2048)
    try:
        yield
    finally:
        kernels.set_row_block_bytes(previous)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", BLOCKED_CASES,
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_row_blocks_match_the_oracle(case, dtype, small_row_blocks):
    layer, x, lengths = build(case, dtype)
    expected_out, expected_states = oracle(layer, x, lengths)
    for first, later in [("in_step", "in_step"), ("packed", "blas"), ("blas", "in_step")]:
        for split, threads in (("none", 1), ("batch", 2)):
            plan = plans.Plan(first, later, split, threads, "blocked")
            if refusal_expected(layer, plan, x.shape[1], lengths is not None):
                continue
            out, h_n, c_n = run_plan(layer, x, lengths, plan)
            assert_close(out, expected_out, dtype, scale_with_value=True, what=f"out, {plan}")
            for actual, expected in zip((h_n, c_n), expected_states):
                assert_close(actual, expected, dtype, scale_with_value=True,
                             what=f"state, {plan}")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_row_blocks_with_ragged_lengths_match_the_oracle(cell, small_row_blocks):
    """Sorted sequences shrink the active batch across row blocks (the estimate takes row
    blocks at this batch with the block size shrunk), batch-major."""
    rng = np.random.default_rng(4)
    weights = random_cell_weights(cell, 9, 40, bidirectional=True, rng=rng, scale=0.2,
                                  dtype=np.float32)
    layer = LAYERS[cell](weights, bidirectional=True, batch_first=True)
    x = rng.normal(size=(70, 11, 9)).astype(np.float32)
    lengths = rng.integers(0, 12, size=70)
    assert plans.explain(layer, x, lengths=lengths).plan.rows == "blocked"
    with fastgate.use_backend("python"):
        expected_out, expected_state = layer(x, lengths=lengths)
    out, final = layer(x, lengths=lengths)
    assert_close(out, expected_out, np.float32, what="outputs")
    for actual, expected in zip(*(((f,) if cell != "lstm" else f)
                                  for f in (final, expected_state))):
        assert_close(actual, expected, np.float32, what="final state")


def test_the_estimate_takes_row_blocks_for_large_batches_only():
    layer = fastgate.LSTM.random(64, 256)
    large = plans.explain(layer, np.zeros((2, 4000, 64), np.float32))
    assert large.plan.rows == "blocked" and "block by block" in large.reason
    assert "rows in L2-sized blocks" in str(large.plan)
    for batch in (1, 32, 256):  # the benchmark shapes' batches keep all rows at once
        assert plans.explain(layer, np.zeros((2, batch, 64), np.float32)).plan.rows == "all"


def test_the_estimate_is_a_candidate_and_candidates_run():
    layer, x, lengths = build(dict(cell="gru", hidden=30, batch=9, steps=4), np.float32)
    found = plans.candidates(layer, x)
    assert found[0] == plans.explain(layer, x).plan
    assert len(set(found)) == len(found) >= 3
    expected_out, _ = oracle(layer, x, None)
    for plan in found:
        out, _, _ = run_plan(layer, x, None, plan)
        assert_close(out, expected_out, np.float32, what=str(plan))


def test_a_plan_the_kernel_cannot_run_is_refused():
    layer, x, _ = build(dict(cell="lstm", hidden=16, batch=2, steps=3, proj=5), np.float32)
    with pytest.raises(ValueError, match="hidden split"):
        run_plan(layer, x, None, plans.Plan("in_step", "in_step", "hidden", 2))
    with pytest.raises(ValueError, match="batch split"):
        run_plan(layer, x, None, plans.Plan("in_step", "in_step", "batch", 3))
    with pytest.raises(ValueError, match="one thread"):
        layer._plan.forward(x, *(np.zeros(s, np.float32) for s in _state_shapes(layer, 2)),
                            None, False, False, 0, True, (0, 0, 0, 2))
    with pytest.raises(ValueError, match="input mode"):
        layer._plan.forward(x, *(np.zeros(s, np.float32) for s in _state_shapes(layer, 2)),
                            None, False, False, 0, True, (7, 0, 0, 1, 0))
    with pytest.raises(ValueError, match="unknown row order"):
        layer._plan.forward(x, *(np.zeros(s, np.float32) for s in _state_shapes(layer, 2)),
                            None, False, False, 0, True, (0, 0, 0, 1, 2))
    layer, x, _ = build(dict(cell="lstm", hidden=16, batch=2, steps=3), np.float32)
    with pytest.raises(ValueError, match="hidden split runs all rows"):
        run_plan(layer, x, None, plans.Plan("in_step", "in_step", "hidden", 2, "blocked"))


def test_explain_in_estimate_mode_gives_the_cost_model_and_its_reason():
    assert plans.get_mode() == "estimate"  # the default
    layer = fastgate.LSTM.random(64, 128)
    explanation = plans.explain(layer, np.zeros((1, 1, 64), np.float32))
    assert explanation.source == "estimate" and explanation.timings == ()
    assert "cost model" in explanation.reason
    if fastgate._kernels.recurrent.isa() == "base":  # BLAS computes x W on the baseline
        assert explanation.plan == plans.Plan("blas", "blas", "none", 1)
        assert "BLAS" in explanation.reason
    else:  # one step from zeros at batch 1: x W in the step, one thread
        assert explanation.plan == plans.Plan("in_step", "in_step", "none", 1)
        assert "one step from zeros" in explanation.reason
        assert "plan: x W in_step; 1 thread (estimate)" in str(explanation)
    wide = plans.explain(layer, np.zeros((50, 1, 64), np.float32))
    assert wide.plan.first_input in ("packed", "blas")  # BLAS on the baseline ISA


@pytest.fixture
def measure_mode():
    plans.clear()
    plans.set_mode("measure")
    try:
        yield
    finally:
        plans.set_mode("estimate")
        plans.clear()


def test_measure_mode_times_the_candidates_once_per_shape_class(measure_mode, tmp_path):
    layer, x, _ = build(dict(cell="lstm", hidden=64, batch=8, steps=80), np.float32)
    assert 80 * 8 * 64 * 256 >= 2e6  # above the size measured at all
    expected_out, _ = oracle(layer, x, None)
    out, _ = layer(x)
    assert_close(out, expected_out, np.float32)
    explanation = plans.explain(layer, x)
    assert explanation.source == "measured"
    assert len(explanation.timings) >= 2
    assert explanation.plan == min(explanation.timings)[1]
    assert all(plan in plans.candidates(layer, x) for _, plan in explanation.timings)
    # the class is measured once: a second call (batch 9 rounds to the same class) reuses it
    key = explanation.shape_class
    timings = fastgate._kernels.recurrent.plan_cache[key]["timings"]
    layer(np.concatenate([x, x[:, :1]], axis=1))
    assert fastgate._kernels.recurrent.plan_cache[key]["timings"] is timings

    path = tmp_path / "plans.json"
    plans.save(path)
    plans.clear()
    assert plans.explain(layer, x).source == "estimate"
    assert plans.load(path) == 1
    loaded = plans.explain(layer, x)
    assert loaded.source == "cache" and loaded.plan == explanation.plan
    out, _ = layer(x)
    assert_close(out, expected_out, np.float32)


def test_tiny_calls_take_the_estimate_even_in_measure_mode(measure_mode):
    layer = fastgate.LSTM.random(5, 32)
    layer(np.zeros((10, 1, 5), np.float32))
    assert fastgate._kernels.recurrent.plan_cache == {}


def test_a_malformed_plan_file_is_refused(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"fastgate_plans": 1, "entries": [{"shape_class": [1],
                                                                  "plan": [9, 0, 0, 1]}]}))
    with pytest.raises(ValueError, match="malformed"):
        plans.load(path)
    path.write_text(json.dumps({"fastgate_plans": 1, "entries": [{"shape_class": [1],
                                                                  "plan": [0, 0, 0, 1, 5]}]}))
    with pytest.raises(ValueError, match="malformed"):
        plans.load(path)
    path.write_text("[]")
    with pytest.raises(ValueError, match="not a fastgate plan file"):
        plans.load(path)
    with pytest.raises(ValueError, match="estimate"):
        plans.set_mode("fastest")


SCRIPT = """
import numpy as np, sys, fastgate
layer = fastgate.GRU.random(16, 64, seed=1)
x = np.random.default_rng(0).normal(size=(60, 8, 16)).astype(np.float32)
layer(x)
print(fastgate.plans.get_mode(), fastgate.explain(layer, x).source,
      'fastgate._kernels.blas' in sys.modules)
"""


def test_environment_sets_the_mode_and_the_plan_cache_file(tmp_path):
    path = tmp_path / "wisdom.json"
    env = subprocess_env(FASTGATE_PLAN="measure", FASTGATE_PLAN_CACHE=str(path))
    first = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                           text=True, timeout=300, cwd=str(tmp_path))
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.split()[:2] == ["measure", "measured"]
    assert json.loads(path.read_text())["entries"]
    second = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300, cwd=str(tmp_path))
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.split()[:2] == ["measure", "cache"]


def test_the_blas_shim_loads_only_when_a_plan_uses_it(tmp_path):
    """Cold start: SciPy's BLAS (~0.4 s to import) is not loaded by a call whose plan does
    not use it; on the baseline ISA the estimate uses BLAS for x W."""
    env = subprocess_env()
    env.pop("FASTGATE_PLAN", None)
    env.pop("FASTGATE_PLAN_CACHE", None)
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                            text=True, timeout=300, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    mode, source, blas_loaded = result.stdout.split()
    assert (mode, source) == ("estimate", "estimate")
    uses_blas = fastgate._kernels.recurrent.isa() == "base"
    assert blas_loaded == str(uses_blas)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_ragged_batches_shrink_the_active_batch_and_match_the_oracle(cell):
    """With lengths, the sequences run sorted longest first, each step computing only the
    ones still running; outputs and states come back in the caller's order."""
    rng = np.random.default_rng(3)
    weights = random_cell_weights(cell, 6, 20, num_layers=2, bidirectional=True, rng=rng,
                                  scale=0.25, dtype=np.float32)
    layer = LAYERS[cell](weights, bidirectional=True, batch_first=True)
    x = rng.normal(size=(9, 12, 6)).astype(np.float32)
    lengths = np.array([3, 12, 0, 7, 7, 1, 12, 5, 9])
    state = rng.normal(0, 0.5, size=(4, 9, 20)).astype(np.float32)
    state = (state, state.copy()) if cell == "lstm" else state
    with fastgate.use_backend("python"):
        expected_out, expected_state = layer(x, state=state, lengths=lengths)
    out, final = layer(x, state=state, lengths=lengths)
    assert_close(out, expected_out, np.float32, what="outputs")
    for actual, expected in zip(*(((f,) if cell != "lstm" else f)
                                  for f in (final, expected_state))):
        assert_close(actual, expected, np.float32, what="final state")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_sorted_rows_written_in_the_callers_order_on_every_plan(cell, dtype):
    """The ragged kernel entry: rows sorted longest first, outputs written back to the
    caller's rows (output_rows), 2 threads splitting the rows by work, both row orders."""
    rng = np.random.default_rng(8)
    layer = LAYERS[cell](random_cell_weights(cell, 7, 26, num_layers=2, bidirectional=True,
                                             rng=rng, scale=0.25, dtype=dtype),
                         bidirectional=True, dtype=dtype)
    steps, batch = 9, 23
    x = rng.normal(size=(steps, batch, 7)).astype(dtype)
    lengths = rng.integers(0, steps + 1, size=batch)
    expected_out, expected_states = oracle(layer, x, lengths)
    order = np.argsort(-lengths, kind="stable").astype(np.intp)
    mask = (np.arange(steps)[:, None] < lengths[order][None, :]).astype(np.uint8)
    active = np.count_nonzero(mask, axis=1).astype(np.intp)
    for plan in [plans.Plan("in_step", "in_step", "none", 1),
                 plans.Plan("in_step", "blas", "batch", 2),
                 plans.Plan("blas", "in_step", "batch", 2, "blocked")]:
        h0, c0 = (np.zeros(s, dtype) if s is not None else None
                  for s in _state_shapes(layer, batch))
        out = layer._plan.forward(np.ascontiguousarray(x[:, order]), h0, c0, mask, False,
                                  False, 0, True, plan.codes(), active, order)
        assert_close(out, expected_out, dtype, what=f"out, {plan}")
        inverse = np.argsort(order)
        for actual, expected in zip((h0, c0), expected_states):
            assert_close(actual[:, inverse], expected, dtype, what=f"state, {plan}")


def test_output_rows_must_be_a_permutation_with_active_rows():
    layer, x, _ = build(dict(cell="gru", hidden=8, batch=3, steps=4), np.float32)
    h0 = np.zeros((1, 3, 8), np.float32)
    mask = np.ones((4, 3), np.uint8)
    active = np.full(4, 3, np.intp)
    with pytest.raises(ValueError, match="not a permutation"):
        layer._plan.forward(x, h0, None, mask, False, False, 0, True, None, active,
                            np.array([0, 2, 2], np.intp))
    with pytest.raises(ValueError, match="must come with active_rows"):
        layer._plan.forward(x, h0, None, mask, False, False, 0, True, None, None,
                            np.array([0, 1, 2], np.intp))


def test_active_rows_must_agree_with_the_mask():
    layer, x, _ = build(dict(cell="gru", hidden=8, batch=3, steps=4), np.float32)
    h0 = np.zeros((1, 3, 8), np.float32)
    mask = np.ones((4, 3), np.uint8)
    with pytest.raises(ValueError, match="beyond active_rows"):
        layer._plan.forward(x, h0, None, mask, False, False, 0, True, None,
                            np.array([3, 3, 2, 3], np.intp))
    with pytest.raises(ValueError, match="with a mask"):
        layer._plan.forward(x, h0, None, None, False, False, 0, True, None,
                            np.array([3, 3, 3, 3], np.intp))
