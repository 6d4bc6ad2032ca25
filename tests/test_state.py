"""One step path: :class:`fastgate.state.StateLayout` and the oracle behind the plan interface.

* StateLayout converts a public state (a layer's ``(entries, B, width)`` arrays, a cell's
  flat ``(B, width)`` ones, either unbatched) to fresh kernel arrays and back, and refuses
  anything else with an error naming the object, the tensor, and expected vs got shapes.
* :class:`fastgate.oracle_plan.OraclePlan` has the compiled LayerPlan's interface and gives
  its results (float32 1e-5 absolute on O(1) values, float64 1e-12).
* Every public step and call (layer, cell, cell call, Keras op through Model.step) gives the
  same answer on both backends and on both of its paths: the plan's lean step (arrays
  exactly right) and the general path (arrays converted), float64 to 1e-12.
* The backend is chosen in one place (``RecurrentLayer._runner``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import fastgate
from fastgate import ConfigError, DTypeError, ShapeError
from fastgate.ops import Dense, Recurrent
from fastgate.oracle_plan import OraclePlan
from fastgate.state import StateLayout

from conftest import FASTGATE_HOME, TOLERANCE, random_cell_weights

LAYERS = {"lstm": fastgate.LSTM, "gru": fastgate.GRU, "rnn": fastgate.SimpleRNN}
CELLS = {"lstm": fastgate.LSTMCell, "gru": fastgate.GRUCell, "rnn": fastgate.RNNCell}


# ------------------------------------------------------------------------------ StateLayout
def test_layer_state_round_trip_gives_fresh_c_arrays():
    layout = StateLayout("LSTM", "lstm", 4, 2, 3, np.float32)
    h = np.arange(4 * 5 * 2, dtype=np.float64).reshape(4, 5, 2)
    c = np.ones((4, 5, 3), np.float32)
    h0, c0 = layout.to_kernel([h, c], 5)   # a list is a pair too; float64 converted
    assert h0.dtype == c0.dtype == np.float32 and h0.flags.c_contiguous
    assert h0.shape == (4, 5, 2) and c0.shape == (4, 5, 3)
    assert not np.shares_memory(c0, c)      # the kernels write into it
    h_out, c_out = layout.to_public(h0, c0)
    np.testing.assert_array_equal(h_out, h)
    np.testing.assert_array_equal(c_out, c)
    zeros_h, zeros_c = layout.to_kernel(None, 3)
    assert zeros_h.shape == (4, 3, 2) and zeros_c.shape == (4, 3, 3) and not zeros_h.any()


def test_flat_and_unbatched_forms():
    layout = StateLayout("GRUCell", "gru", 1, 4, 4, np.float64, flat=True, labels=("h", "c"))
    h0, c0 = layout.to_kernel(np.ones((2, 4)), 2)
    assert h0.shape == (1, 2, 4) and c0 is None
    assert layout.to_public(h0, c0).shape == (2, 4)
    h0, _ = layout.to_kernel(np.ones(4), 1, unbatched=True)
    assert h0.shape == (1, 1, 4)
    assert layout.to_public(h0, None, unbatched=True).shape == (4,)
    layer_layout = StateLayout("GRU", "gru", 2, 4, 4, np.float64)
    h0, _ = layer_layout.to_kernel(np.ones((2, 4)), 1, unbatched=True)
    assert h0.shape == (2, 1, 4)
    assert layer_layout.to_public(h0, None, unbatched=True).shape == (2, 4)
    assert layout.initial(3).shape == (3, 4)
    assert "h=(B, 4)" in repr(layout) and "h=(2, B, 4)" in repr(layer_layout)


@pytest.mark.parametrize("state, error, message", [
    (np.zeros((1, 2, 4)), ShapeError, r"LSTM state: expected a pair \(h0, c0\), got ndarray"),
    ((np.zeros((1, 2, 4)),) * 3, ShapeError, r"expected a pair \(h0, c0\), got tuple"),
    ((np.zeros((1, 3, 4)), np.zeros((1, 2, 5))), ShapeError,
     r"LSTM h0: expected shape \(1, 2, 4\), got \(1, 3, 4\)"),
    ((np.zeros((1, 2, 4)), np.zeros((1, 2, 4))), ShapeError,
     r"LSTM c0: expected shape \(1, 2, 5\), got \(1, 2, 4\)"),
    ((np.zeros((1, 2, 4), complex), np.zeros((1, 2, 5))), DTypeError,
     "LSTM h0 must hold real numbers"),
])
def test_bad_states_are_named(state, error, message):
    layout = StateLayout("LSTM", "lstm", 1, 4, 5, np.float32)   # projected: h 4, c 5 wide
    with pytest.raises(error, match=message):
        layout.to_kernel(state, 2)


def test_bad_batch_sizes_and_layouts_are_refused():
    layout = StateLayout("RNNCell", "rnn", 1, 3, 3, np.float32, flat=True)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="batch_size must be a non-negative integer"):
            layout.initial(bad)
    with pytest.raises(ConfigError, match="flat state has one layer and one direction"):
        StateLayout("GRU", "gru", 2, 3, 3, np.float32, flat=True)


# ------------------------------------------------------------------------------ OraclePlan
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch_major", [False, True])
def test_oracle_plan_gives_the_kernel_plans_results(cell, dtype, batch_major, rng):
    layer = LAYERS[cell](random_cell_weights(cell, 3, 4, num_layers=2, bidirectional=True,
                                             rng=rng), bidirectional=True, dtype=dtype)
    assert isinstance(layer._oracle, OraclePlan)
    steps, batch = 6, 3
    x = rng.normal(size=(batch, steps, 3) if batch_major else (steps, batch, 3)).astype(dtype)
    mask = np.ones((steps, batch), np.uint8)
    mask[4:, 1] = 0
    h = rng.normal(size=(4, batch, 4)).astype(dtype)
    c = rng.normal(size=(4, batch, 4)).astype(dtype) if cell == "lstm" else None
    outputs = {}
    for name, plan in (("oracle", layer._oracle), ("kernel", layer._plan)):
        assert plan.run(x) is None if name == "oracle" else plan.run(x) is not None
        h_state = h.copy()
        c_state = None if c is None else c.copy()
        out = plan.forward(x, h_state, c_state, mask, batch_major, True)
        outputs[name] = (out, h_state, c_state)   # the final state lands in the buffers
    for got, want in zip(outputs["oracle"], outputs["kernel"]):
        if want is not None:
            assert got.dtype == np.dtype(dtype) and got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE[np.dtype(dtype)])
    assert layer._oracle.step(x[0], None) is None   # no lean step: the general path runs


# ------------------------------------------------------------------------------ one path
class _PlanSpy:
    """The layer's compiled plan, counting the lean steps that answered and the general
    calls (``forward``)."""

    def __init__(self, plan):
        self.plan, self.lean, self.general = plan, 0, 0

    def run(self, *args):
        return self.plan.run(*args)

    def step(self, *args):
        result = self.plan.step(*args)
        self.lean += result is not None
        return result

    def forward(self, *args, **kwargs):
        self.general += 1
        return self.plan.forward(*args, **kwargs)


def _entry_points(cell, dtype, rng):
    """``{name: (stepper, layer)}``: the public step entries of one set of weights, and the
    layer each runs."""
    weights = random_cell_weights(cell, 3, 4, rng=rng)
    layer = LAYERS[cell](weights, dtype=dtype)
    model = fastgate.Model([("rnn", Recurrent(layer, return_sequences=True), (-1, 0)),
                            ("head", Dense(np.eye(4), dtype=dtype), (0, 0))], [(1, 0)])
    cells = CELLS[cell](weights[0], dtype=dtype)
    return {"layer.step": (layer, layer), "cell.step": (cells, cells.layer),
            "cell()": (cells, cells.layer), "model.step": (model, layer)}


def _one_step(name, stepper, x, state):
    if name == "cell()":
        new = stepper(x, state)
        return (new[0] if isinstance(new, tuple) else new), new
    return stepper.step(x, state)


def _random_state(stepper, dtype, rng):
    """A random state of the shapes of ``stepper.initial_state(2)`` (nested tuples)."""
    def draw(value):
        if isinstance(value, tuple):
            return tuple(draw(part) for part in value)
        return rng.normal(size=value.shape).astype(dtype)
    return draw(stepper.initial_state(2))


def _flatten(value):
    """Every number of nested tuples of arrays, in order, as one 1-D array."""
    if isinstance(value, tuple):
        return np.concatenate([_flatten(part) for part in value])
    return np.ravel(value)


def _converted(value):
    """The same numbers as nested lists, which the lean step refuses (the general path
    converts them); tuples stay tuples."""
    if isinstance(value, tuple):
        return tuple(_converted(part) for part in value)
    return value.tolist()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_step_entry_agrees_on_both_paths_and_backends(cell, dtype, rng):
    """Lean and general paths, compiled and python backends: one answer."""
    for name, (stepper, layer) in _entry_points(cell, dtype, rng).items():
        x = rng.normal(size=(2, 3)).astype(np.float32 if name == "model.step" else dtype)
        state = _random_state(stepper, dtype, rng)
        spy = layer._plan = layer._runners["compiled"] = _PlanSpy(layer._plan)
        reference = None
        for backend in fastgate.available_backends():
            for form in ("exact", "converted"):
                lean, general = spy.lean, spy.general
                with fastgate.use_backend(backend):
                    y, new = _one_step(name, stepper, *((x, state) if form == "exact" else
                                                        (_converted(x), _converted(state))))
                flat = _flatten((y, new))
                reference = flat if reference is None else reference
                np.testing.assert_allclose(flat, reference, rtol=0,
                                           atol=TOLERANCE[np.dtype(dtype)],
                                           err_msg=f"{name} {backend} {form}")
                took_lean = spy.lean > lean and spy.general == general
                # (a model converts its input and state, then its op takes the lean step)
                lean_expected = backend == "compiled" and (form == "exact"
                                                           or name == "model.step")
                assert took_lean == lean_expected, (name, backend, form)


def test_the_backend_is_chosen_in_one_place():
    """The active backend picks a layer's runner only from the layer's table
    (``layer._runners[current_backend()]``, built once by ``_build_runners``), and only the
    oracle's plan calls the oracle's forward pass."""
    package = Path(FASTGATE_HOME) / "fastgate"
    readers, table_reads, oracle_calls = [], [], []
    for path in sorted(package.rglob("*.py")):
        if path.parent.name == "cli" or path.name == "backend.py":
            continue   # the CLI prints the backend; backend.py defines it
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("current_backend", "backend"):
                readers.append(node)
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) \
                    and node.value.attr == "_runners":
                table_reads.append(node.slice)
            if isinstance(node, ast.Attribute) and node.attr == "forward" \
                    and isinstance(node.value, ast.Name) and node.value.id == "oracle":
                oracle_calls.append(path.name)
    assert readers and all(any(reader is read for read in table_reads) for reader in readers)
    assert oracle_calls == ["oracle_plan.py"]
