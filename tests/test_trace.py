"""Gate tracing (fastgate.trace): the compiled kernels' trace against the oracle's, against
gates recomputed step by step from PyTorch modules' and Keras models' own weights with their
frameworks' ops, and the Trace object (histogram, summary, plot, files, size limit, CLI).

Tolerances: the compiled trace vs the oracle's, float32 1e-5 and float64 1e-12, absolute on
O(1) values (scaled by |value| for c, which grows); against PyTorch / Keras recomputations
(float32 frameworks), 1e-5.
"""

import subprocess
import sys

import numpy as np
import pytest

import fastgate
from fastgate.errors import ConfigError
from fastgate.trace import GATE_NAMES, Trace
from conftest import assert_close, random_cell_weights, subprocess_env, torch_to_cellweights

LAYERS = {"lstm": fastgate.LSTM, "gru": fastgate.GRU, "rnn": fastgate.SimpleRNN}


def assert_same_trace(actual, expected, dtype):
    """Two traces of one call: the same entries, NaN where the other has NaN, values within
    the dtype's tolerance (scaled by |value|: c is not bounded)."""
    assert len(actual.layers) == len(expected.layers)
    for a, e in zip(actual.layers, expected.layers):
        assert (a.name, a.cell, a.layer, a.direction) == (e.name, e.cell, e.layer, e.direction)
        np.testing.assert_array_equal(a.valid, e.valid)
        assert list(a.gates) == list(e.gates) == list(GATE_NAMES[a.cell])
        for gate in a.gates:
            assert_close(a.gates[gate], e.gates[gate], dtype, scale_with_value=True,
                         what=f"{a.label} {gate}")


# ------------------------------------------------------------- compiled vs oracle
#: (cell, options, proj_size, layers, bidirectional, batch, lengths): batch 2 takes the
#: packed input pass (x W of all steps first), batch 5 x_t W inside each step's tile.
CASES = [
    ("lstm", {}, 0, 1, False, 5, False),
    ("lstm", {}, 3, 2, True, 2, True),
    ("lstm", {"recurrent_activation": "hard_sigmoid", "activation": "relu"}, 0, 1, True, 5,
     True),
    ("lstm", {"clip": 0.7, "cell_activation": "softsign", "input_forget": True}, 0, 1, False,
     5, True),
    ("lstm-peephole", {}, 0, 1, True, 2, True),
    ("gru", {}, 0, 2, True, 5, True),
    ("gru", {"reset_after": False}, 0, 2, True, 5, True),
    ("gru", {"reset_after": False, "recurrent_activation": "hard_sigmoid"}, 0, 1, False, 2,
     False),
    ("gru", {"clip": 0.5}, 0, 1, False, 2, True),
    ("rnn", {"activation": "relu"}, 0, 2, True, 5, True),
    ("rnn", {}, 0, 1, False, 2, False),
]


def build_case(case, dtype, rng, hidden=19, input_size=7, batch_first=False):
    cell, options, proj_size, layers, bidirectional, batch, use_lengths = case
    peepholes = cell == "lstm-peephole"
    cell = "lstm" if peepholes else cell
    weights = random_cell_weights(cell, input_size, hidden, num_layers=layers,
                                  bidirectional=bidirectional, proj_size=proj_size, rng=rng,
                                  dtype=dtype)
    if peepholes:
        weights = [w._replace(peephole=rng.normal(0, 0.3, 3 * hidden).astype(dtype))
                   for w in weights]
    layer = LAYERS[cell](weights, bidirectional=bidirectional, dtype=dtype,
                         batch_first=batch_first, **options)
    steps = 9
    shape = (batch, steps, input_size) if batch_first else (steps, batch, input_size)
    x = rng.normal(0, 1, shape).astype(dtype)
    lengths = rng.integers(0, steps + 1, batch) if use_lengths else None
    if use_lengths:
        lengths[0] = steps
    return layer, x, lengths


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case[0]}{case[1:5]}")
def test_compiled_vs_oracle_trace(case, dtype, rng):
    layer, x, lengths = build_case(case, dtype, rng, batch_first=case[5] == 2)
    compiled = layer.trace(x, lengths=lengths)
    with fastgate.use_backend("python"):
        oracle = layer.trace(x, lengths=lengths)
    assert_same_trace(compiled, oracle, dtype)
    # the traced call is the layer's call: its h is the layer's output
    out, _ = layer(x, lengths=lengths)
    out = out if layer.batch_first else out.transpose(1, 0, 2)
    width = layer.output_size
    last = compiled.layers[-layer.num_directions:]
    for k, entry in enumerate(last):
        h = np.where(entry.valid[..., None], entry.gates["h"], 0)
        assert_close(h, out[..., k * width:(k + 1) * width], dtype, what="h vs output")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_trace_with_initial_state_and_threads(cell, rng):
    """An initial state, a batch split between threads: the same trace as the oracle."""
    weights = random_cell_weights(cell, 6, 40, rng=rng, dtype=np.float32)
    layer = LAYERS[cell](weights)
    x = rng.normal(0, 1, (12, 64, 6)).astype(np.float32)
    h0 = rng.normal(0, 0.5, (1, 64, 40)).astype(np.float32)
    state = (h0, h0 * 0.3) if cell == "lstm" else h0
    original = fastgate.get_num_threads()
    try:
        fastgate.set_num_threads(2)
        compiled = layer.trace(x, state)
    finally:
        fastgate.set_num_threads(original)
    with fastgate.use_backend("python"):
        oracle = layer.trace(x, state)
    assert_same_trace(compiled, oracle, np.float32)


def test_traced_call_does_not_split_the_hidden_units(rng):
    """Batch 1 on 2 threads: untraced, the threads split the hidden units (and meet after
    every step); a traced call runs them on one thread (its trace pass copies whole rows)."""
    layer = fastgate.LSTM(random_cell_weights("lstm", 6, 128, rng=rng, dtype=np.float32))
    x = rng.normal(0, 1, (40, 1, 6)).astype(np.float32)
    original = fastgate.get_num_threads()
    try:
        fastgate.set_num_threads(2)
        assert layer._plan.estimate(40, 1)[2] == fastgate.plans.SPLITS["hidden"]
        compiled = layer.trace(x)
    finally:
        fastgate.set_num_threads(original)
    with fastgate.use_backend("python"):
        assert_same_trace(compiled, layer.trace(x), np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["base", "avx2"])
def test_every_instruction_set_traces_as_the_oracle(isa, tmp_path):
    # FASTGATE_ISA caps the kernels' instruction set for a whole process (as in
    # test_compiled_vs_oracle): the trace tests again, in a process per ISA.
    env = subprocess_env(FASTGATE_ISA=isa)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
         "compiled_vs_oracle or threads or hidden_units or cell_trace"],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-500:]


def test_cell_trace():
    rng = np.random.default_rng(3)
    for cell_class, cell in ((fastgate.LSTMCell, "lstm"), (fastgate.GRUCell, "gru"),
                             (fastgate.RNNCell, "rnn")):
        weights = random_cell_weights(cell, 4, 6, rng=rng, dtype=np.float32)[0]
        unit = cell_class(weights)
        x = rng.normal(0, 1, (3, 4)).astype(np.float32)
        h = rng.normal(0, 0.5, (3, 6)).astype(np.float32)
        state = (h, h) if cell == "lstm" else h
        tr = unit.trace(x, state)
        (entry,) = tr.layers
        assert entry.name == cell_class.__name__.lower() and entry.valid.shape == (3, 1)
        expected = unit(x, state)
        expected_h = expected[0] if cell == "lstm" else expected
        assert_close(entry.gates["h"][:, 0], expected_h, np.float32, what="cell h")
        with fastgate.use_backend("python"):
            assert_same_trace(tr, unit.trace(x, state), np.float32)


# -------------------------------------------------------------------- vs PyTorch
def torch_gates(module, x, lengths):
    """Per layer and direction, ``{gate: (B, T, H)}`` recomputed step by step with torch
    ops from the module's own weights, each sequence over its own length (packed-sequence
    semantics: the reverse direction starts at the sequence's last step); NaN elsewhere."""
    import torch

    batch, steps = x.shape[:2]
    dirs = 2 if module.bidirectional else 1
    hidden, proj = module.hidden_size, getattr(module, "proj_size", 0)
    kind = type(module).__name__.lower()
    names = GATE_NAMES["rnn" if kind == "rnn" else kind]
    result = [{g: np.full((batch, steps, proj if g == "h" and proj else hidden), np.nan)
               for g in names} for _ in range(module.num_layers * dirs)]
    with torch.no_grad():
        for b in range(batch):
            length = int(lengths[b])
            layer_input = torch.from_numpy(x[b, :length])
            for layer in range(module.num_layers):
                outputs = []
                for direction in range(dirs):
                    suffix = f"_l{layer}" + ("_reverse" if direction else "")

                    def weight(name):
                        return getattr(module, name + suffix)
                    gates = result[layer * dirs + direction]
                    h = torch.zeros(proj or hidden)
                    c = torch.zeros(hidden)
                    out = torch.zeros(length, proj or hidden)
                    order = range(length - 1, -1, -1) if direction else range(length)
                    for t in order:
                        gi = weight("weight_ih") @ layer_input[t] + weight("bias_ih")
                        gh = weight("weight_hh") @ h + weight("bias_hh")
                        if kind == "lstm":
                            i, f, g, o = (gi + gh).chunk(4)
                            i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
                            c = f * c + i * g
                            h = o * c.tanh()
                            if proj:
                                h = weight("weight_hr") @ h
                            values = dict(input=i, forget=f, cell=g, output=o, c=c, h=h)
                        elif kind == "gru":
                            ir, iz, in_ = gi.chunk(3)
                            hr, hz, hn = gh.chunk(3)
                            r, z = (ir + hr).sigmoid(), (iz + hz).sigmoid()
                            n = (in_ + r * hn).tanh()
                            h = (1 - z) * n + z * h
                            values = dict(reset=r, update=z, candidate=n, h=h)
                        else:
                            h = (gi + gh).tanh()
                            values = dict(h=h)
                        for name, value in values.items():
                            gates[name][b, t] = value.numpy()
                        out[t] = h
                    outputs.append(out)
                layer_input = torch.cat(outputs, dim=1)
    return result


@pytest.mark.parametrize("kind, options", [
    ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=3)),
    ("LSTM", dict(num_layers=1, bidirectional=False)),
    ("GRU", dict(num_layers=2, bidirectional=True)),
    ("RNN", dict(num_layers=2, bidirectional=True)),
])
def test_trace_vs_torch_recomputed_gates(kind, options):
    import torch

    torch.manual_seed(0)
    module = getattr(torch.nn, kind)(5, 8, batch_first=True, **options)
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (3, 7, 5)).astype(np.float32)
    lengths = np.array([7, 4, 1])
    layer = LAYERS[{"LSTM": "lstm", "GRU": "gru", "RNN": "rnn"}[kind]](
        torch_to_cellweights(module), bidirectional=module.bidirectional, batch_first=True)
    tr = layer.trace(x, lengths=lengths)
    expected = torch_gates(module, x, lengths)
    assert len(tr.layers) == len(expected)
    dirs = 2 if module.bidirectional else 1
    for k, (entry, gates) in enumerate(zip(tr.layers, expected)):
        assert (entry.layer, entry.direction) == (k // dirs, ("forward", "reverse")[k % dirs])
        np.testing.assert_array_equal(entry.valid, np.arange(7)[None] < lengths[:, None])
        for gate, values in gates.items():
            np.testing.assert_allclose(entry.gates[gate], values, rtol=0, atol=1e-5,
                                       err_msg=f"{entry.label} {gate}")
    # the recomputation is PyTorch's own forward pass: its h is the module's output
    packed = torch.nn.utils.rnn.pack_padded_sequence(torch.from_numpy(x), lengths,
                                                     batch_first=True)
    with torch.no_grad():
        out, _ = module(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=7)
    width = out.shape[-1] // dirs
    for k, entry in enumerate(tr.layers[-dirs:]):
        h = np.where(entry.valid[..., None], entry.gates["h"], 0)
        np.testing.assert_allclose(h, out[..., k * width:(k + 1) * width].numpy(), atol=1e-5)


# ----------------------------------------------------------------------- vs Keras
def keras_gates(layer, x, mask, reverse=False):
    """``{gate: (B, T, H)}`` of a Keras LSTM / GRU layer recomputed step by step from its
    weights with Keras' own activation functions; masked steps keep the state (Keras) and
    are NaN; ``reverse`` reads the steps last to first (go_backwards), indexed by input."""
    import keras

    def act(function, value):
        return keras.ops.convert_to_numpy(function(keras.ops.convert_to_tensor(value)))

    cell = layer.cell
    kernel, recurrent, bias = [w.numpy() if hasattr(w, "numpy") else
                               keras.ops.convert_to_numpy(w) for w in cell.weights]
    units = cell.units
    batch, steps = x.shape[:2]
    kind = type(layer).__name__.lower()
    names = GATE_NAMES[kind]
    result = {g: np.full((batch, steps, units), np.nan) for g in names}
    h = np.zeros((batch, units))
    c = np.zeros((batch, units))
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    for t in order:
        valid = mask[:, t][:, None]
        if kind == "lstm":   # Keras gate order i f c o
            z = x[:, t] @ kernel + h @ recurrent + bias
            i, f, g, o = np.split(z, 4, axis=-1)
            i, f, o = (act(cell.recurrent_activation, v) for v in (i, f, o))
            g = act(cell.activation, g)
            c_new = f * c + i * g
            h_new = o * act(cell.activation, c_new)
            values = dict(input=i, forget=f, cell=g, output=o, c=c_new, h=h_new)
            c = np.where(valid, c_new, c)
        else:                # Keras gate order z r h
            input_bias, recurrent_bias = (bias[0], bias[1]) if cell.reset_after else (bias, 0)
            xz, xr, xh = np.split(x[:, t] @ kernel + input_bias, 3, axis=-1)
            uz, ur, uh = np.split(recurrent, 3, axis=-1)
            if cell.reset_after:
                hz, hr, hh = np.split(h @ recurrent + recurrent_bias, 3, axis=-1)
                z = act(cell.recurrent_activation, xz + hz)
                r = act(cell.recurrent_activation, xr + hr)
                n = act(cell.activation, xh + r * hh)
            else:
                z = act(cell.recurrent_activation, xz + h @ uz)
                r = act(cell.recurrent_activation, xr + h @ ur)
                n = act(cell.activation, xh + (r * h) @ uh)
            h_new = z * h + (1 - z) * n
            values = dict(reset=r, update=z, candidate=n, h=h_new)
        h = np.where(valid, h_new, h)
        for name, value in values.items():
            result[name][:, t] = np.where(valid, value, np.nan)
    return result


def test_trace_vs_keras_recomputed_gates(tmp_path):
    import keras

    from conftest import randomize

    inputs = keras.Input((6, 3))
    masked = keras.layers.Masking(0.0)(inputs)
    first = keras.layers.LSTM(5, recurrent_activation="hard_sigmoid", return_sequences=True,
                              name="lstm_hard")(masked)
    second = keras.layers.GRU(4, reset_after=True, return_sequences=True,
                              name="gru_after")(first)
    third = keras.layers.GRU(3, reset_after=False, return_sequences=True, go_backwards=True,
                             name="gru_before_backwards")(second)
    model = randomize(keras.Model(inputs, third))
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (3, 6, 3)).astype(np.float32)
    x[1, 4:] = 0          # a masked tail
    x[2, 2] = 0           # a masked step inside the sequence
    path = tmp_path / "model.keras"
    model.save(path)
    tr = fastgate.load(str(path)).trace(x)
    assert [(e.name, e.direction) for e in tr.layers] == [
        ("lstm_hard", "forward"), ("gru_after", "forward"),
        ("gru_before_backwards", "reverse")]
    mask = np.any(x != 0, axis=-1)
    value = x
    for entry in tr.layers:
        keras_layer = model.get_layer(entry.name)
        reverse = keras_layer.go_backwards
        expected = keras_gates(keras_layer, value, mask, reverse=reverse)
        np.testing.assert_array_equal(entry.valid, mask)
        for gate, values in expected.items():
            np.testing.assert_allclose(entry.gates[gate], values, rtol=0, atol=1e-5,
                                       err_msg=f"{entry.name} {gate}")
        value = keras.ops.convert_to_numpy(
            keras.Model(model.inputs[0], keras_layer.output)(x))
    # the recomputed h of the last layer is what Keras returns where a step is valid
    keras_out = keras.ops.convert_to_numpy(model(x))[:, ::-1]   # go_backwards: reversed
    last = tr.layers[-1]
    np.testing.assert_allclose(np.where(mask[..., None], last.gates["h"], 0),
                               np.where(mask[..., None], keras_out, 0), atol=1e-5)


def test_keras_bidirectional_model_trace(tmp_path):
    import keras

    from conftest import randomize

    inputs = keras.Input((5, 2))
    outputs = keras.layers.Bidirectional(keras.layers.GRU(3, return_sequences=True),
                                         name="bi")(inputs)
    model = randomize(keras.Model(inputs, outputs))
    x = np.random.default_rng(4).normal(0, 1, (2, 5, 2)).astype(np.float32)
    path = tmp_path / "bi.keras"
    model.save(path)
    tr = fastgate.load(str(path)).trace(x)
    assert [(e.name, e.direction) for e in tr.layers] == [("bi", "forward"), ("bi", "reverse")]
    y = keras.ops.convert_to_numpy(model(x))
    # the reverse direction's h at t is its output for x_t, where Keras puts it
    np.testing.assert_allclose(tr.layers[0].gates["h"], y[..., :3], atol=1e-5)
    np.testing.assert_allclose(tr.layers[1].gates["h"], y[..., 3:], atol=1e-5)


def test_onnx_reverse_direction_trace_is_in_input_order():
    import onnxruntime

    from onnx_helpers import feeds, recurrent_model

    onnx_model = recurrent_model("GRU", direction="reverse", with_lengths=True,
                                 linear_before_reset=1)
    feed = feeds(onnx_model, batch=3, steps=6, lengths=[6, 3, 1])
    model = fastgate.from_onnx(onnx_model.SerializeToString())
    tr = model.trace(feed)
    (entry,) = tr.layers
    assert (entry.name, entry.direction) == ("the_gru", "reverse")
    session = onnxruntime.InferenceSession(onnx_model.SerializeToString(),
                                           providers=["CPUExecutionProvider"])
    y = session.run(["Y"], feed)[0][:, 0].transpose(1, 0, 2)      # (B, T, H)
    valid = np.arange(6)[None] < np.array([6, 3, 1])[:, None]
    np.testing.assert_array_equal(entry.valid, valid)
    np.testing.assert_allclose(np.where(valid[..., None], entry.gates["h"], 0), y, atol=1e-5)


# ------------------------------------------------------------------- Trace object
@pytest.fixture(scope="module")
def lstm_trace():
    rng = np.random.default_rng(5)
    layer = fastgate.LSTM(random_cell_weights("lstm", 3, 6, bidirectional=True, rng=rng,
                                              dtype=np.float32), bidirectional=True)
    x = rng.normal(0, 1, (8, 4, 3)).astype(np.float32)
    return layer, x, layer.trace(x, lengths=[8, 5, 2, 0])


def test_histogram_counts_each_valid_value_once(lstm_trace):
    _, _, tr = lstm_trace
    counts, edges = tr.histogram("forget", bins=20, range=(0, 1))
    valid_steps = sum(int(e.valid.sum()) for e in tr.layers)
    assert counts.sum() == valid_steps * 6 == 2 * (8 + 5 + 2) * 6
    values = np.concatenate([e.gates["forget"][e.valid].ravel() for e in tr.layers])
    np.testing.assert_array_equal(counts, np.histogram(values, 20, (0, 1))[0])
    one, _ = tr.histogram("forget", bins=edges, layer=1)
    assert one.sum() == (8 + 5 + 2) * 6
    with pytest.raises(ConfigError, match="gates are"):
        tr.histogram("reset")


def test_summary_table(lstm_trace):
    _, _, tr = lstm_trace
    text = tr.summary()
    assert "lstm layer 0 forward (lstm, 15 valid steps of 32)" in text
    assert "lstm layer 0 reverse" in text
    for gate in ("input", "forget", "cell", "output", "c", "h"):
        assert f"  {gate} " in text
    forget = tr.layers[0].gates["forget"][tr.layers[0].valid]
    share = np.mean((forget < 0.05) | (forget > 0.95))
    line = next(line for line in text.splitlines() if line.startswith("  forget"))
    assert line.split()[1] == f"{forget.mean():.4f}"
    assert line.split()[3] == f"{100 * share:.1f}%"


def test_sequences_and_max_bytes(lstm_trace):
    layer, x, tr = lstm_trace
    part = layer.trace(x, lengths=[8, 5, 2, 0], sequences=[1, 2])
    np.testing.assert_array_equal(part.layers[1].gates["c"], tr.layers[1].gates["c"][1:3])
    with pytest.raises(ConfigError, match=r"needs 9\.0 KiB \(2 layers x directions x B=4 x "
                                          r"T=8 x 36 values.*sequences=.*x\[:, :1\]"):
        layer.trace(x, max_bytes=1000)


def test_save_load_and_hdf5(lstm_trace, tmp_path):
    import h5py

    _, _, tr = lstm_trace
    tr.save(tmp_path / "t.npz")
    back = Trace.load(tmp_path / "t.npz")
    assert_same_trace(back, tr, np.float32)
    tr.to_hdf5(tmp_path / "states.h5")
    with h5py.File(tmp_path / "states.h5", "r") as file:
        group = file["lstm_l0_reverse"]
        assert group["h"].shape == (4 * 8, 6)
        np.testing.assert_array_equal(group["valid"][:], tr.layers[1].valid.ravel())
        row = 1 * 8 + 3      # sequence 1, step 3
        np.testing.assert_array_equal(group["forget"][row], tr.layers[1].gates["forget"][1, 3])
        assert file["sequence"][row] == 1 and file["step"][row] == 3


def test_plot_writes_a_png(lstm_trace, tmp_path):
    _, _, tr = lstm_trace
    path = tmp_path / "gates.png"
    tr.plot(path, sequence=1, gates=["forget", "c"])   # (the whole grid: docs/gates.png)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20000


def test_plot_without_matplotlib_names_the_extra(lstm_trace, tmp_path, monkeypatch):
    _, _, tr = lstm_trace
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r'pip install "fastgate\[plot\]"'):
        tr.plot(tmp_path / "no.png")


def test_import_fastgate_does_not_import_matplotlib(tmp_path):
    code = ("import sys, fastgate, fastgate.trace, fastgate.cli; "
            "print('matplotlib' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], env=subprocess_env(),
                            capture_output=True, text=True, cwd=tmp_path, check=True)
    assert result.stdout.strip() == "False"


def test_cli_trace_on_the_demo_forecaster(tmp_path, capsys):
    from fastgate.cli import DATA_DIR, main

    x = np.load(DATA_DIR / "demo_inputs.npz")["forecaster_x"]
    np.save(tmp_path / "x.npy", x)
    code = main(["trace", str(DATA_DIR / "forecaster.keras"), "--input",
                 str(tmp_path / "x.npy"), "--summary", "--output", str(tmp_path / "t.npz"),
                 "--plot", str(tmp_path / "g.png")])
    printed = capsys.readouterr().out
    assert code == 0
    assert "update" in printed and "saturated" in printed
    tr = Trace.load(tmp_path / "t.npz")
    assert tr.layers[0].cell == "gru" and tr.layers[0].gates["h"].shape[:2] == x.shape[:2]
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_demo_mentions_trace(capsys):
    from fastgate.cli import main

    assert main(["demo", "--repeat", "1"]) == 0
    assert "fastgate trace" in capsys.readouterr().out


def test_a_recorder_sees_only_its_own_thread(lstm_trace):
    """Tracing in one thread leaves calls made by other threads untraced (and untouched)."""
    import threading

    from fastgate.trace import Recorder

    layer, x, _ = lstm_trace
    expected, _ = layer(x)
    results = []
    with Recorder() as recorder:
        worker = threading.Thread(target=lambda: results.append(layer(x)[0]))
        worker.start()
        worker.join()
    assert recorder.records == [] and len(results) == 1
    np.testing.assert_array_equal(results[0], expected)
    with pytest.raises(ConfigError, match="already being recorded"):
        with Recorder():
            layer.trace(x)
