"""fastgate.load on legacy Keras 2 (tf.keras / tf_keras) ``.h5`` files vs tf_keras' own outputs.

The files in ``tests/fixtures/keras2/`` were written once by tf_keras 2.21
(``tests/fixtures/make_keras2_fixtures.py``, which needs TensorFlow; these tests do not).
``manifest.json`` lists each file, what it covers, its inputs and tf_keras' ``predict``
outputs (``.npz``), or, for files that must not load, the error tf_keras raised.

Tolerances: fastgate float32 vs tf_keras float32, ``atol = 1e-5`` on outputs of size O(1)
(weights are normal(0, 0.3)); compiled vs oracle backends, same.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

import fastgate

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "keras2"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
ENTRIES = MANIFEST["fixtures"]
LOADABLE = [entry for entry in ENTRIES if entry["error"] is None]
BROKEN = [entry for entry in ENTRIES if entry["error"] is not None]

#: fastgate float32 vs tf_keras float32 (and compiled vs oracle), absolute, on O(1) outputs.
ATOL = 1e-5


def _ids(entries: list[dict]) -> list[str]:
    return [entry["name"] for entry in entries]


def _load(entry: dict):
    architecture = None
    if entry["architecture"] is not None:
        architecture = (FIXTURES / entry["architecture"]).read_text()
    return fastgate.load(FIXTURES / entry["file"], architecture=architecture)


def _data(entry: dict) -> tuple[np.ndarray, list[np.ndarray]]:
    with np.load(FIXTURES / entry["data"]) as data:
        inputs = data["inputs"]
        outputs = [data[f"output_{i}"] for i in range(entry["num_outputs"])]
    assert str(inputs.dtype) == entry["input_dtype"]
    return inputs, outputs


def _as_list(result) -> list[np.ndarray]:
    """``predict``'s result as a list: one array for one output, a list for several (Keras)."""
    if isinstance(result, (list, tuple)):
        return [np.asarray(r) for r in result]
    return [np.asarray(result)]


def _assert_outputs_close(got: list[np.ndarray], expected: list[np.ndarray], what: str) -> None:
    assert len(got) == len(expected), f"{what}: {len(got)} outputs, expected {len(expected)}"
    for index, (actual, wanted) in enumerate(zip(got, expected)):
        assert actual.shape == wanted.shape, (
            f"{what}: output {index} has shape {actual.shape}, expected {wanted.shape}")
        assert actual.dtype == np.float32, f"{what}: output {index} is {actual.dtype}"
        np.testing.assert_allclose(actual, wanted, rtol=0, atol=ATOL,
                                   err_msg=f"{what}: output {index}")


@pytest.mark.parametrize("entry", LOADABLE, ids=_ids(LOADABLE))
def test_predict_matches_tf_keras(entry):
    inputs, expected = _data(entry)
    model = _load(entry)
    result = model.predict(inputs)
    # Keras' convention: a bare array for a one-output model, a list for several.
    if entry["num_outputs"] == 1:
        assert isinstance(result, np.ndarray), type(result)
    else:
        assert isinstance(result, list), type(result)
    _assert_outputs_close(_as_list(result), expected, f"{entry['name']} vs tf_keras")


@pytest.mark.parametrize("entry", LOADABLE, ids=_ids(LOADABLE))
def test_compiled_matches_oracle(entry):
    inputs, _ = _data(entry)
    model = _load(entry)
    with fastgate.use_backend("python"):
        oracle = _as_list(model.predict(inputs))
    with fastgate.use_backend("compiled"):
        compiled = _as_list(model.predict(inputs))
    _assert_outputs_close(compiled, oracle, f"{entry['name']}: compiled vs oracle")


@pytest.mark.parametrize("entry", LOADABLE, ids=_ids(LOADABLE))
def test_predict_one_sample_at_a_time(entry):
    """Row b of a batched predict equals predicting row b alone (padding/masks are per row)."""
    inputs, expected = _data(entry)
    model = _load(entry)
    for row in (0, len(inputs) - 1):
        got = _as_list(model.predict(inputs[row:row + 1]))
        _assert_outputs_close(got, [e[row:row + 1] for e in expected],
                              f"{entry['name']}: row {row} alone")


@pytest.mark.parametrize("entry", BROKEN, ids=_ids(BROKEN))
def test_unconvertible_cudnn_weights_raise(entry):
    assert entry["error"]["fastgate"] == "WeightFormatError"
    with pytest.raises(fastgate.WeightFormatError) as raised:
        model = _load(entry)
        # Should already have raised; if the importer defers conversion, the first call must.
        inputs = np.zeros(entry["input_shape"], entry["input_dtype"])
        model.predict(inputs)
    message = str(raised.value)
    assert entry["file"] in message, f"the error does not name the file: {message}"
    assert raised.value.layer is not None, f"the error does not name the layer: {message}"


def test_manifest_covers_the_issue():
    """Every Keras 2 feature the importer must handle has at least one fixture."""
    covered = {tag for entry in ENTRIES for tag in entry["covers"]}
    required = {
        "lstm", "gru", "simplernn", "dense", "embedding", "mask_zero", "masking_layer",
        "reset_after_false", "reset_after_true", "hard_sigmoid_keras2", "relu",
        "bidirectional", "merge_concat", "merge_sum", "merge_mul", "merge_ave", "merge_none",
        "go_backwards", "return_state", "multi_output", "weights_only", "architecture_json",
        "split_layer_names", "split_weight_names", "cudnn_lstm", "cudnn_gru", "error",
    }
    assert required <= covered, f"not covered: {sorted(required - covered)}"
    assert MANIFEST["tf_keras_version"].startswith("2.")
    assert MANIFEST["hard_sigmoid_check"]["definition"] == "clip(0.2 x + 0.5, 0, 1)"


def test_fixture_files_are_what_the_manifest_says():
    """The files exist, stay small, and hold the legacy-HDF5 features they claim."""
    files = {entry["file"] for entry in ENTRIES}
    files |= {entry[key] for entry in ENTRIES for key in ("architecture", "data") if entry[key]}
    for name in files:
        assert (FIXTURES / name).is_file(), name
    total = sum(path.stat().st_size for path in FIXTURES.iterdir())
    assert total < 1024 * 1024, f"fixtures take {total} bytes"

    def attributes(path, group=None):
        with h5py.File(FIXTURES / path, "r") as f:
            node = f[group] if group else f
            return set(node.attrs), {name: set(node[name].attrs) for name in node
                                     if isinstance(node[name], h5py.Group)}

    top, _ = attributes("lstm_tutorial.h5")
    assert {"model_config", "keras_version", "backend"} <= top
    top, _ = attributes("gru_stacked_reset_after_false_weights_only.h5")
    assert "model_config" not in top and "layer_names" in top
    top, _ = attributes("long_layer_list_split_layer_names.h5", "model_weights")
    assert {"layer_names0", "layer_names1"} <= top and "layer_names" not in top
    top, layers = attributes("split_weight_names_h5py.h5", "model_weights")
    assert "layer_names0" in top and "layer_names" not in top
    assert {"weight_names0", "weight_names1", "weight_names2"} <= layers["lstm"]
    with h5py.File(FIXTURES / "cudnn_lstm.h5", "r") as f:
        config = json.loads(f.attrs["model_config"])
        assert [layer["class_name"] for layer in config["config"]["layers"]].count(
            "CuDNNLSTM") == 2
        bias = f["model_weights/cu_dnnlstm/cu_dnnlstm/bias:0"]
        assert bias.shape == (8 * 8,)    # 8H: cuDNN keeps input and recurrent biases
