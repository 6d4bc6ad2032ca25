"""The ``fastgate`` command line: every command in-process (``main([...])``) and as a real
``python -m fastgate`` / console-script subprocess; the shipped demo models.

Tolerances: float32 models against Keras / PyTorch, atol 1e-5 on O(1) values; a ``convert``
round trip must reproduce outputs exactly.
"""

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import fastgate
from conftest import subprocess_env
from fastgate.cli import DATA_DIR, _torch_equivalent, demo_classifier, main

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-5


def run_cli(capsys, *argv):
    """``(exit code, stdout, stderr)`` of ``main(argv)`` run in this process."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_module(*argv, prelude=None, timeout=300):
    """Run ``python -m fastgate ARGV`` (or ``main`` after ``prelude`` code) in a subprocess."""
    if prelude is None:
        command = [sys.executable, "-m", "fastgate", *map(str, argv)]
    else:
        code = (f"{prelude}\nimport sys\nfrom fastgate.cli import main\n"
                f"sys.exit(main({[str(a) for a in argv]!r}))")
        command = [sys.executable, "-c", code]
    return subprocess.run(command, capture_output=True, text=True, env=subprocess_env(),
                          timeout=timeout, cwd=tempfile.gettempdir())


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny models saved in every format, with what the frameworks say about them."""
    import keras
    import safetensors.torch
    import torch

    folder = tmp_path_factory.mktemp("cli_models")
    keras.utils.set_random_seed(1)
    sequential = keras.Sequential([keras.Input((6, 1)), keras.layers.GRU(4, name="gru"),
                                   keras.layers.Dense(2, name="dense")], name="tiny")
    for layer in sequential.layers:  # std 0.3 weights, so gate order mistakes show
        layer.set_weights([np.random.default_rng(2).normal(0, 0.3, w.shape)
                           for w in layer.get_weights()])
    sequential.save(folder / "tiny.keras")
    sequential.save(folder / "tiny.h5")
    sequential.save_weights(folder / "tiny.weights.h5")
    (folder / "tiny.json").write_text(sequential.to_json())

    torch.manual_seed(3)
    lstm = torch.nn.LSTM(3, 5, batch_first=True)
    with torch.no_grad():
        for parameter in lstm.parameters():
            parameter.normal_(0, 0.3)
    torch.save(lstm.state_dict(), folder / "lstm.pt")
    gru = torch.nn.GRU(3, 4, num_layers=2, bidirectional=True)
    safetensors.torch.save_file(gru.state_dict(), folder / "gru.safetensors",
                                metadata={"format": "pt"})
    whole = torch.nn.ModuleDict({"embedding": torch.nn.Embedding(7, 3),
                                 "lstm": torch.nn.LSTM(3, 4), "fc": torch.nn.Linear(4, 2)})
    torch.save(whole.state_dict(), folder / "whole.pt")
    fastgate.load(folder / "tiny.keras").save(folder / "tiny.fastgate")
    return {"folder": folder, "keras": sequential, "lstm": lstm, "gru": gru}


# ----------------------------------------------------------------------------- inspect
@pytest.mark.parametrize("name, extra, format_text, saved_by", [
    ("tiny.keras", [], "Keras 3 archive", f"Keras {'3.'}"),
    ("tiny.h5", [], "Keras full model (HDF5)", "backend torch"),
    ("tiny.weights.h5", ["--architecture", "tiny.json"], "Keras 3 weights", "Keras"),
    ("tiny.fastgate", [], "fastgate (format version 1)", f"fastgate {fastgate.__version__}"),
])
def test_inspect_keras_files(models, capsys, name, extra, format_text, saved_by):
    folder = models["folder"]
    extra = [str(folder / e) if e.endswith(".json") else e for e in extra]
    code, out, err = run_cli(capsys, "inspect", folder / name, *extra)
    assert code == 0, err
    assert format_text in out and saved_by in out
    gru_row = next(line for line in out.splitlines() if line.strip().startswith("gru "))
    assert "GRU" in gru_row and "tanh/sigmoid" in gru_row and "reset_after" in gru_row
    # Keras stores GRU gates z r h; fastgate r z n (a .fastgate file stores fastgate's).
    assert ("zrn -> rzn" in gru_row) == (not name.endswith(".fastgate"))
    assert f"total:     {models['keras'].count_params():,} parameters" in out


def test_inspect_torch_files(models, capsys):
    folder = models["folder"]
    code, out, _ = run_cli(capsys, "inspect", folder / "lstm.pt")
    assert code == 0
    assert "PyTorch torch.save (zip" in out
    row = next(line for line in out.splitlines() if " LSTM " in line)
    assert row.split()[2:5] == ["3", "5", "1"]  # input, hidden, directions
    assert f"{sum(p.numel() for p in models['lstm'].parameters()):,} parameters" in out

    code, out, _ = run_cli(capsys, "inspect", folder / "gru.safetensors")
    assert code == 0 and "safetensors" in out and "format=pt" in out
    row = next(line for line in out.splitlines() if " GRU " in line)
    assert "x2 layers" in row and row.split()[6] == "2"  # dirs column
    assert f"{sum(p.numel() for p in models['gru'].parameters()):,} parameters" in out

    code, out, _ = run_cli(capsys, "inspect", folder / "whole.pt")
    assert code == 0 and "3 module(s)" in out
    for module in ("embedding", "lstm", "fc"):
        assert any(line.strip().startswith(module) for line in out.splitlines())
    code, out, _ = run_cli(capsys, "inspect", folder / "whole.pt", "--prefix", "lstm.")
    assert code == 0 and "LSTM(input_size=3, hidden_size=4" in out


# ----------------------------------------------------------------------------- convert
@pytest.mark.parametrize("name, extra", [("tiny.keras", []), ("tiny.h5", []),
                                         ("lstm.pt", ["--batch-first"]),
                                         ("gru.safetensors", [])])
def test_convert_round_trip(models, capsys, tmp_path, name, extra):
    source = models["folder"] / name
    target = tmp_path / "copy.fastgate"
    code, out, err = run_cli(capsys, "convert", source, target, *extra)
    assert code == 0, err
    assert "identical outputs" in out
    original = fastgate.load(source) if not extra else fastgate.from_torch(
        source, batch_first=True)
    copy = fastgate.load(target)
    x = np.random.default_rng(0).standard_normal(
        (2, 6, 1) if "tiny" in name else (6, 2, 3)).astype(np.float32)
    if isinstance(original, fastgate.Model):
        np.testing.assert_array_equal(copy.predict(x), original.predict(x))
    else:
        np.testing.assert_array_equal(copy(x)[0], original(x)[0])

    code, _, err = run_cli(capsys, "convert", source, target, *extra)
    assert code == 1 and "--force" in err
    code, _, err = run_cli(capsys, "convert", source, tmp_path / "copy.npy", *extra)
    assert code == 1 and ".fastgate" in err


@pytest.mark.parametrize("name, extra", [("tiny.keras", []), ("lstm.pt", ["--batch-first"]),
                                         ("tiny.fastgate", ["--opset", "21"])])
def test_convert_to_onnx(models, capsys, tmp_path, name, extra):
    """``convert m.keras m.onnx``: ONNX Runtime runs the file with Keras' / torch's outputs."""
    import onnxruntime
    import torch

    target = tmp_path / "model.onnx"
    code, out, err = run_cli(capsys, "convert", models["folder"] / name, target, *extra)
    assert code == 0, err
    assert "checked: ONNX Runtime gives fastgate's outputs" in out
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(5)
    if name == "lstm.pt":
        x = rng.standard_normal((4, 9, 3)).astype(np.float32)
        with torch.no_grad():
            expected = [t.numpy() for t in [models["lstm"](torch.from_numpy(x))[0],
                                            *models["lstm"](torch.from_numpy(x))[1]]]
        got = session.run(None, {"x": x})
    else:
        x = rng.standard_normal((5, 6, 1)).astype(np.float32)
        expected = [models["keras"].predict(x, verbose=0)]
        got = session.run(None, {"input": x})
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)
    code, _, err = run_cli(capsys, "convert", models["folder"] / name, target, *extra)
    assert code == 1 and "--force" in err


def test_convert_to_onnx_refuses_what_onnx_cannot_express(capsys, tmp_path):
    fastgate.LSTM.random(3, 4, proj_size=2).save(tmp_path / "projected.fastgate")
    code, _, err = run_cli(capsys, "convert", tmp_path / "projected.fastgate",
                           tmp_path / "projected.onnx")
    assert code == 1 and "proj_size=2 has no ONNX equivalent" in err
    assert not (tmp_path / "projected.onnx").exists()


# ----------------------------------------------------------------------------- predict
def test_predict_npy_npz_csv_against_keras(models, capsys, tmp_path):
    model = models["keras"]
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 6, 1)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", other=np.zeros(1), x=x)
    for source, extra in (("x.npy", []), ("x.npz", ["--key", "x"])):
        code, out, err = run_cli(capsys, "predict", models["folder"] / "tiny.keras", "--input",
                                 tmp_path / source, "--output", tmp_path / "y.npy", *extra)
        assert code == 0, err
        assert "dense: (3, 2) float32" in out   # the Keras output layer's name
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=ATOL, rtol=0)

    # CSV: one column of T values is one series (1, T, 1); B rows of T values are (B, T, 1).
    (tmp_path / "one.csv").write_text("value\n" + "\n".join(f"{v:.6f}" for v in x[0, :, 0]))
    code, out, _ = run_cli(capsys, "predict", models["folder"] / "tiny.keras", "-i",
                           tmp_path / "one.csv", "-o", tmp_path / "y1.npy")
    assert code == 0 and "(1, 6, 1)" in out
    np.testing.assert_allclose(np.load(tmp_path / "y1.npy"), expected[:1], atol=ATOL, rtol=0)
    (tmp_path / "rows.csv").write_text(
        "\n".join(",".join(f"{v:.6f}" for v in row[:, 0]) for row in x))
    code, out, _ = run_cli(capsys, "predict", models["folder"] / "tiny.keras", "-i",
                           tmp_path / "rows.csv", "-o", tmp_path / "y3.npy", "--batch-size", "2")
    assert code == 0 and "(3, 6, 1)" in out
    np.testing.assert_allclose(np.load(tmp_path / "y3.npy"), expected, atol=ATOL, rtol=0)


def test_predict_lengths_against_torch(models, capsys, tmp_path):
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    lstm = models["lstm"]
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 7, 3)).astype(np.float32)
    lengths = np.array([7, 2, 5, 1])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "lengths.npy", lengths)
    with torch.no_grad():
        packed = pack_padded_sequence(torch.from_numpy(x), torch.from_numpy(lengths),
                                      batch_first=True, enforce_sorted=False)
        out, (h_n, c_n) = lstm(packed)
        out = pad_packed_sequence(out, batch_first=True, total_length=7)[0]
        full, (full_h, _) = lstm(torch.from_numpy(x))
    pt = models["folder"] / "lstm.pt"
    code, text, err = run_cli(capsys, "predict", pt, "--batch-first", "-i", tmp_path / "x.npy",
                              "--lengths", tmp_path / "lengths.npy", "-o", tmp_path / "y.npz")
    assert code == 0, err
    assert "lengths [7, 2, 5, 1]" in text and "h_n: (1, 4, 5)" in text
    saved = np.load(tmp_path / "y.npz")
    np.testing.assert_allclose(saved["output"], out.numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(saved["h_n"], h_n.numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(saved["c_n"], c_n.numpy(), atol=ATOL, rtol=0)

    code, text, _ = run_cli(capsys, "predict", pt, "--batch-first", "-i", tmp_path / "x.npy",
                            "-o", tmp_path / "full.npz", "--batch-size", "3")
    assert code == 0
    saved = np.load(tmp_path / "full.npz")
    np.testing.assert_allclose(saved["output"], full.numpy(), atol=ATOL, rtol=0)
    np.testing.assert_allclose(saved["h_n"], full_h.numpy(), atol=ATOL, rtol=0)

    # A Keras model has no lengths: its padding comes from Masking / Embedding(mask_zero).
    code, _, err = run_cli(capsys, "predict", models["folder"] / "tiny.keras", "-i",
                           tmp_path / "x.npy", "--lengths", tmp_path / "lengths.npy")
    assert code == 1 and "--lengths" in err


# ----------------------------------------------------------------------------- bench
def test_bench_reports(models, capsys):
    code, out, err = run_cli(capsys, "bench", models["folder"] / "lstm.pt", "--batch-first",
                             "--batch", 3, "--steps", 4, "--repeat", 2, "--threads", 1,
                             "--progress")
    assert code == 0, err
    lines = out.splitlines()
    assert any(line.startswith("input:    (3, 4, 3) float32: 3 sequences x 4 steps")
               for line in lines)
    assert any(re.match(rf"{fastgate.backend()}: +median .* sequences/s, .* steps/s", line)
               for line in lines)
    assert any(line.startswith("oracle:") for line in lines)
    assert any(line.startswith("pytorch:") and "faster" in line for line in lines)
    assert "[" in err and "/" in err  # the progress bar

    code, out, _ = run_cli(capsys, "bench", models["folder"] / "tiny.keras", "--batch", 2,
                           "--steps", 3, "--repeat", 1, "--no-torch")
    assert code == 0 and "(2, 6, 1)" in out  # the model's fixed 6 steps win over --steps
    assert "pytorch" not in out


def test_torch_equivalent_matches(models):
    """The PyTorch runs that bench and demo time compute the same function."""
    import torch

    model = fastgate.load(models["folder"] / "tiny.keras")
    x = np.random.default_rng(6).standard_normal((3, 6, 1)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(_torch_equivalent(model)(x).numpy(), model.predict(x),
                                   atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- demo
def _reported(out, label):
    values = re.findall(rf"max \|{label}\| *= *([0-9.e+-]+)", out)
    assert values, f"no 'max |{label}|' line in:\n{out}"
    return [float(v) for v in values]


def test_demo(capsys):
    code, out, err = run_cli(capsys, "demo", "--repeat", 3)
    assert code == 0, err
    for label in ("fastgate - Keras", "fastgate - PyTorch", "compiled - oracle"):
        assert all(value < ATOL for value in _reported(out, label))
    assert "faster" in out and "trained for real" in out


def test_demo_with_only_numpy_and_scipy():
    """No h5py (the .fastgate copy of the Keras model is used), no torch, no keras."""
    blocked = "import sys\nfor name in ('h5py', 'torch', 'keras', 'tensorflow'):\n" \
              "    sys.modules[name] = None"
    result = run_module("demo", "--repeat", 2, prelude=blocked)
    assert result.returncode == 0, result.stderr
    assert "h5py is not installed" in result.stdout
    assert "install torch to compare" in result.stdout
    for label in ("fastgate - Keras", "fastgate - PyTorch"):
        assert all(value < ATOL for value in _reported(result.stdout, label))


# ----------------------------------------------------------------------------- shipped files
def test_shipped_demo_files_are_small_and_complete():
    names = {p.name for p in DATA_DIR.iterdir()}
    assert {"forecaster.keras", "forecaster.fastgate", "classifier.pt", "classifier.json",
            "classifier.fastgate", "demo_inputs.npz", "demo.json"} <= names
    assert sum(p.stat().st_size for p in DATA_DIR.iterdir()) < 1 << 20
    summary = json.loads((DATA_DIR / "demo.json").read_text())
    forecaster, classifier = summary["forecaster"]["metrics"], summary["classifier"]["metrics"]
    assert forecaster["mae"] < 0.9 * min(forecaster["mae_last_value"],
                                         forecaster["mae_one_season_ago"])
    assert classifier["accuracy"] > classifier["accuracy_bag_of_words"] + 0.1


def test_shipped_models_match_stored_framework_outputs():
    stored = np.load(DATA_DIR / "demo_inputs.npz")
    x, keras_y = stored["forecaster_x"], stored["forecaster_keras"]
    for name in ("forecaster.keras", "forecaster.fastgate"):
        np.testing.assert_allclose(fastgate.load(DATA_DIR / name).predict(x), keras_y,
                                   atol=ATOL, rtol=0, err_msg=name)
    ids, torch_logits = stored["classifier_ids"], stored["classifier_torch"]
    for model in (demo_classifier(DATA_DIR / "classifier.pt", DATA_DIR / "classifier.json"),
                  fastgate.load(DATA_DIR / "classifier.fastgate")):
        np.testing.assert_allclose(model.predict(ids), torch_logits, atol=ATOL, rtol=0)


def test_shipped_framework_files_reload_in_the_frameworks():
    """The shipped .keras / .pt are real framework files: reloaded, they give the stored
    outputs."""
    import keras
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence

    stored = np.load(DATA_DIR / "demo_inputs.npz")
    model = keras.saving.load_model(DATA_DIR / "forecaster.keras")
    np.testing.assert_allclose(model.predict(stored["forecaster_x"], verbose=0),
                               stored["forecaster_keras"], atol=ATOL, rtol=0)

    architecture = json.loads((DATA_DIR / "classifier.json").read_text())
    embedding = torch.nn.Embedding(architecture["embedding"]["num_embeddings"],
                                   architecture["embedding"]["embedding_dim"], padding_idx=0)
    lstm = torch.nn.LSTM(architecture["lstm"]["input_size"],
                         architecture["lstm"]["hidden_size"], batch_first=True)
    fc = torch.nn.Linear(architecture["fc"]["in_features"], architecture["fc"]["out_features"])
    state = torch.load(DATA_DIR / "classifier.pt", weights_only=True)
    for prefix, module in (("embedding.", embedding), ("lstm.", lstm), ("fc.", fc)):
        module.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                if k.startswith(prefix)})
    with torch.no_grad():
        packed = pack_padded_sequence(embedding(torch.from_numpy(stored["classifier_ids"])),
                                      torch.from_numpy(stored["classifier_lengths"]),
                                      batch_first=True, enforce_sorted=False)
        _, (h_n, _) = lstm(packed)
        logits = fc(h_n[-1]).numpy()
    np.testing.assert_allclose(logits, stored["classifier_torch"], atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- errors
def _assert_one_line_error(code, err, *fragments):
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastgate: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def test_errors_are_one_line(models, capsys, tmp_path):
    missing = tmp_path / "missing.keras"
    code, _, err = run_cli(capsys, "inspect", missing)
    _assert_one_line_error(code, err, "missing.keras")
    code, _, err = run_cli(capsys, "predict", missing, "-i", tmp_path / "x.npy")
    _assert_one_line_error(code, err, "missing.keras")

    np.save(tmp_path / "bad.npy", np.zeros((2, 6, 3), np.float32))
    code, _, err = run_cli(capsys, "predict", models["folder"] / "tiny.keras", "-i",
                           tmp_path / "bad.npy")
    _assert_one_line_error(code, err, "expected shape", "(2, 6, 3)")
    code, _, err = run_cli(capsys, "predict", models["folder"] / "tiny.keras", "-i",
                           tmp_path / "nothing.npy")
    _assert_one_line_error(code, err, "nothing.npy")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    code, _, err = run_cli(capsys, "inspect", tmp_path / "junk.pt")
    _assert_one_line_error(code, err, "junk.pt")
    code, _, err = run_cli(capsys, "predict", models["folder"] / "whole.pt", "-i",
                           tmp_path / "bad.npy")
    _assert_one_line_error(code, err, "prefix")
    code, _, err = run_cli(capsys, "bench", models["folder"] / "lstm.pt", "--threads", 0)
    _assert_one_line_error(code, err, "threads")

    with pytest.raises(SystemExit) as usage:
        main(["predict", str(models["folder"] / "tiny.keras")])  # --input is required
    assert usage.value.code == 2
    assert main([]) == 2


def test_debug_shows_the_traceback(models, capsys, tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((2, 6, 3), np.float32))
    argv = ["predict", str(models["folder"] / "tiny.keras"), "-i", str(tmp_path / "bad.npy")]
    with pytest.raises(fastgate.ShapeError):
        main(["--debug", *argv])
    with pytest.raises(fastgate.ShapeError):
        main([*argv, "--debug"])
    result = run_module(*argv, "--debug")
    assert result.returncode == 1 and "Traceback" in result.stderr
    assert "ShapeError" in result.stderr


# ----------------------------------------------------------------------------- subprocesses
@pytest.mark.slow
def test_python_m_fastgate_every_command(models, tmp_path):
    folder = models["folder"]
    np.save(tmp_path / "x.npy", np.ones((2, 6, 1), np.float32))
    runs = {
        "inspect": ["inspect", folder / "tiny.keras"],
        "convert": ["convert", folder / "lstm.pt", tmp_path / "lstm.fastgate"],
        "predict": ["predict", folder / "tiny.fastgate", "-i", tmp_path / "x.npy"],
        "bench": ["bench", folder / "tiny.fastgate", "--batch", 2, "--repeat", 1,
                  "--no-torch"],
        "demo": ["demo", "--repeat", 1],
    }
    for command, argv in runs.items():
        result = run_module(*argv)
        assert result.returncode == 0, f"{command}: {result.stderr}"
        assert result.stdout.strip(), command
    result = run_module("inspect", tmp_path / "absent.pt")
    _assert_one_line_error(result.returncode, result.stderr, "absent.pt")


def test_console_script():
    """The ``fastgate`` script, if installed; otherwise the entry point it would call."""
    from importlib.metadata import entry_points

    declared = (ROOT / "pyproject.toml").read_text()
    assert 'fastgate = "fastgate.cli:main"' in declared
    script = shutil.which("fastgate")
    installed = [ep for ep in entry_points(group="console_scripts") if ep.name == "fastgate"]
    if script and installed and installed[0].value == "fastgate.cli:main":
        result = subprocess.run([script, "--version"], capture_output=True, text=True,
                                env=subprocess_env(), timeout=120, cwd=tempfile.gettempdir())
        assert result.returncode == 0 and "fastgate" in result.stdout
        result = subprocess.run([script, "inspect", "/nonexistent.keras"], capture_output=True,
                                text=True, env=subprocess_env(), timeout=120,
                                cwd=tempfile.gettempdir())
        _assert_one_line_error(result.returncode, result.stderr, "nonexistent.keras")
    else:  # not installed here: run what the script runs, `sys.exit(fastgate.cli:main())`
        result = run_module("--version", prelude="")
        assert result.returncode == 0 and fastgate.__version__ in result.stdout
