"""Files of every Keras version: Keras 1, Keras 2.0-2.2 layouts, tf_keras' newer layers.

The files in ``tests/fixtures/keras_legacy/`` were made once by
``tests/fixtures/make_keras2_fixtures.py legacy`` (tf_keras 2.21; these tests need neither
TensorFlow nor tf_keras): Keras 1 files written from the documented layout (per-gate arrays,
Keras 1 option names, no ``keras_version`` on the weights), which tf_keras' own
``load_weights`` read back and reproduced; a Keras 2.0-style file (list-style Sequential, GRU
without ``reset_after``) that tf_keras itself can no longer load; tf_keras' saves of the
common layers. ``manifest.json`` says how each was made and holds tf_keras' ``predict``
outputs (``.npz``).

Tolerance: fastgate float32 vs tf_keras float32, ``atol = 1e-5`` on O(1) outputs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import fastgate
import fastgate.importers.keras
import fastgate.sequence_ops
from fastgate.importers import keras_legacy

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "keras_legacy"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
ENTRIES = MANIFEST["fixtures"]
ATOL = 1e-5


def _load(entry: dict, path: Path | None = None):
    architecture = None
    if entry["architecture"] is not None:
        architecture = (FIXTURES / entry["architecture"]).read_text()
    return fastgate.load(path or FIXTURES / entry["file"], architecture=architecture)


def _data(entry: dict) -> tuple[np.ndarray, list[np.ndarray]]:
    with np.load(FIXTURES / entry["data"]) as data:
        return data["inputs"], [data[f"output_{i}"] for i in range(entry["num_outputs"])]


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_predict_matches_tf_keras(entry):
    inputs, expected = _data(entry)
    model = _load(entry)
    got = model.predict(inputs)
    np.testing.assert_allclose(got, expected[0], rtol=0, atol=ATOL, err_msg=entry["name"])
    with fastgate.use_backend("python"):
        np.testing.assert_allclose(model.predict(inputs), got, rtol=0, atol=ATOL,
                                   err_msg=f"{entry['name']}: oracle vs compiled")


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_fastgate_round_trip(entry, tmp_path):
    inputs, expected = _data(entry)
    _load(entry).save(tmp_path / "m.fastgate")
    again = fastgate.load(tmp_path / "m.fastgate")
    np.testing.assert_allclose(again.predict(inputs), expected[0], rtol=0, atol=ATOL)


def test_manifest_covers_the_old_formats():
    covered = {tag for entry in ENTRIES for tag in entry["covers"]}
    required = {"keras1_per_gate_lstm", "keras1_per_gate_gru", "keras1_bidirectional",
                "keras1_config", "keras1_conv1d", "list_sequential", "no_reset_after",
                "no_keras_version", "theano_backend", "stacked_rnn_cells",
                "batch_normalization", "layer_normalization", "average_pooling1d_same"}
    assert required <= covered, sorted(required - covered)
    total = sum(path.stat().st_size for path in FIXTURES.iterdir())
    assert total < 512 * 1024, f"fixtures take {total} bytes"
    with h5py.File(FIXTURES / "keras1_lstm_weights_only.h5", "r") as f:
        assert "keras_version" not in f.attrs
        names = [n.decode() for n in f["lstm_1"].attrs["weight_names"]]
        assert names[:4] == ["lstm_1_W_i:0", "lstm_1_U_i:0", "lstm_1_b_i:0", "lstm_1_W_c:0"]
    with h5py.File(FIXTURES / "keras20_gru_list_sequential.h5", "r") as f:
        config = json.loads(f.attrs["model_config"])
        assert isinstance(config["config"], list)
        assert not any("reset_after" in layer["config"] for layer in config["config"])


def test_keras1_semantics():
    """Keras 1 LSTM/GRU default to hard_sigmoid = clip(0.2 x + 0.5); GRU has no reset_after;
    per-gate arrays become one kernel."""
    entry = next(e for e in ENTRIES if e["name"] == "keras1_embedding_bidirectional_gru")
    model = _load(entry)
    recurrent = [node.op for node in model.nodes if isinstance(node.op, fastgate.Recurrent)]
    assert recurrent[0].layer.recurrent_activation == "hard_sigmoid_keras2"
    assert recurrent[0].layer.reset_after is False
    bidirectional = model.nodes[1].op
    assert bidirectional.forward.layer.weights[0].input_kernel.shape == (5, 16)


def test_saved_by_says_which_keras():
    keras1 = keras_legacy.saved_by(None, None, None, weights_attribute_missing=True)
    assert keras1.major == 1 and "save_weights" in keras1.describe()
    assert keras_legacy.saved_by("2.1.2", "tensorflow", None).describe() == \
        "Keras 2.1.2, backend tensorflow"
    old_names = {"config": [{"class_name": "LSTM", "config": {"inner_activation": "tanh"}}]}
    assert keras_legacy.saved_by(None, None, old_names).major == 1
    assert keras_legacy.saved_by(None, None, {"config": {"layers": []}}).major == 3


def test_gru_without_reset_after_follows_its_bias():
    """A GRU config without reset_after predates Keras 2.1 (False then, 3H bias); the bias
    shape decides, so a (2, 3H) bias under such a config is reset_after=True."""
    entry = next(e for e in ENTRIES if e["name"] == "keras20_gru_list_sequential")
    grus = [node.op.layer for node in _load(entry).nodes
            if isinstance(node.op, fastgate.Recurrent)]
    assert [g.reset_after for g in grus] == [False, False]
    rng = np.random.default_rng(5)
    config = {"class_name": "Sequential", "config": [
        {"class_name": "GRU", "config": {"name": "gru", "units": 2, "batch_input_shape":
                                         [None, 3, 4], "recurrent_activation": "sigmoid"}}]}
    weights = {"gru": [("kernel", rng.normal(size=(4, 6))), ("recurrent", rng.normal(
        size=(2, 6))), ("bias", rng.normal(size=(2, 6)))]}
    model = fastgate.importers.keras.from_config(config, weights, keras_version="2.0.8")
    assert model.nodes[0].op.layer.reset_after is True


def test_theano_kernels_are_flipped():
    """The same weights read as a TensorFlow file give other outputs: the flip matters."""
    entry = next(e for e in ENTRIES if e["name"] == "keras2_sequence_layers_theano_backend")
    inputs, expected = _data(entry)
    model = _load(entry)
    np.testing.assert_allclose(model.predict(inputs), expected[0], rtol=0, atol=ATOL)
    kernel = next(node.op for node in model.nodes
                  if isinstance(node.op, fastgate.sequence_ops.Conv1D)).kernel
    tensorflow = next(node.op for node in _load(ENTRIES[-2]).nodes
                      if isinstance(node.op, fastgate.sequence_ops.Conv1D)).kernel
    np.testing.assert_array_equal(kernel, tensorflow)
    with h5py.File(FIXTURES / entry["file"], "r") as f:
        stored = [np.asarray(v) for k, v in f["model_weights/conv1d/conv1d"].items()
                  if "kernel" in k][0]
    assert not np.allclose(stored, kernel)


def test_bad_keras1_arrays_name_the_layer(tmp_path):
    entry = next(e for e in ENTRIES if e["name"] == "keras1_lstm_weights_only")
    bad = tmp_path / "bad.h5"
    shutil.copy(FIXTURES / entry["file"], bad)
    with h5py.File(bad, "r+") as f:
        del f["lstm_1/lstm_1_U_f:0"]
        f["lstm_1"].create_dataset("lstm_1_U_f:0", data=np.zeros((8, 7), np.float32))
    with pytest.raises(fastgate.WeightFormatError) as info:
        _load(entry, bad)
    assert "'lstm_1'" in str(info.value) and "per-gate" in str(info.value)


# ------------------------------------------------------------------------------- inspect
def _inspect(capsys, *argv):
    from fastgate.cli import main

    code = main(["inspect", *map(str, argv)])
    return code, capsys.readouterr().out


def test_inspect_says_which_keras_saved_a_file(capsys):
    entry = next(e for e in ENTRIES if e["name"] == "keras1_lstm_weights_only")
    code, out = _inspect(capsys, FIXTURES / entry["file"], "--architecture",
                         FIXTURES / entry["architecture"])
    assert code == 0
    assert "no Keras version recorded; assumed Keras 1" in out
    assert "converts:  Sequential configuration as a bare list" in out
    assert "hard_sigmoid_keras2" in out
    code, out = _inspect(capsys, FIXTURES / "keras20_gru_list_sequential.h5")
    assert code == 0 and "saved by:  Keras 2.0.8, backend tensorflow" in out
    code, out = _inspect(capsys, FIXTURES / "keras2_sequence_layers_theano_backend.h5")
    assert code == 0 and "backend theano" in out and "Theano weights" in out


def test_inspect_names_the_refused_layer(capsys, tmp_path):
    path = tmp_path / "lambda.h5"
    shutil.copy(FIXTURES / "keras2_sequence_layers.h5", path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        layer = config["config"]["layers"][3]
        layer["class_name"], layer["config"]["name"] = "Lambda", "my_lambda"
        f.attrs["model_config"] = json.dumps(config)
    code, out = _inspect(capsys, path)
    assert code == 1
    assert "refused:   unsupported" in out and "layer:     my_lambda" in out
    assert "never runs" in out and "saved by:  Keras 2.21.0" in out


def test_keras1_functional_config():
    """A Keras 1 functional ("Model") configuration: inbound nodes of three entries, Keras 1
    options, the per-gate weights of the Sequential fixture."""
    entry = next(e for e in ENTRIES if e["name"] == "keras1_lstm_weights_only")
    sequential = json.loads((FIXTURES / entry["architecture"]).read_text())
    layers = [{"name": "input_1", "class_name": "InputLayer", "inbound_nodes": [],
               "config": {"batch_input_shape": [None, 6, 4], "input_dtype": "float32",
                          "sparse": False, "name": "input_1"}}]
    for layer in sequential["config"]:
        layers.append({"name": layer["config"]["name"], "class_name": layer["class_name"],
                       "config": layer["config"],
                       "inbound_nodes": [[[layers[-1]["name"], 0, 0]]]})
    functional = {"class_name": "Model", "config": {
        "name": "model_1", "layers": layers, "input_layers": [["input_1", 0, 0]],
        "output_layers": [[layers[-1]["name"], 0, 0]]}}
    model = fastgate.load(FIXTURES / entry["file"], architecture=functional)
    inputs, expected = _data(entry)
    np.testing.assert_allclose(model.predict(inputs), expected[0], rtol=0, atol=ATOL)


def test_keras1_time_distributed_dense_options(rng):
    """Keras 1 TimeDistributed(Dense(output_dim, bias)) from its configuration alone."""
    config = {"class_name": "Sequential", "config": [{"class_name": "TimeDistributed", "config": {
        "name": "td", "batch_input_shape": [None, 5, 4], "layer": {"class_name": "Dense",
                                                                    "config": {
            "name": "dense_1", "output_dim": 3, "bias": False, "activation": "tanh",
            "W_regularizer": None, "init": "glorot_uniform"}}}}]}
    kernel = rng.normal(size=(4, 3)).astype(np.float32)
    model = fastgate.importers.keras.from_config(config, {"td": [("dense_1_W:0", kernel)]})
    x = rng.normal(size=(2, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(model.predict(x), np.tanh(x @ kernel), rtol=0, atol=1e-6)
