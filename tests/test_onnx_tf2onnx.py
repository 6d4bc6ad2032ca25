"""ONNX files written by tf2onnx from tf.keras models (``tests/fixtures/tf2onnx``, made by
``tests/fixtures/make_tf2onnx_fixtures.py`` with TensorFlow 2.21, tf_keras 2.21 and tf2onnx
1.17; the tests need none of them), loaded by fastgate and compared with TensorFlow's own
outputs at two batch sizes and lengths, and with ONNX Runtime on the same file.

Tolerance: float32 1e-5 absolute on O(1) outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import fastgate
from fastgate import UnsupportedLayerError

from onnx_helpers import op_kinds

ATOL = 1e-5
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tf2onnx"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())["models"]
#: tf2onnx 1.17 rewrites these Keras layers into LSTM / GRU ops ...
CONVERTED = ["lstm_sequence", "lstm_stacked_last", "gru_last", "bidirectional_lstm",
             "bidirectional_gru_last", "lstm_with_states"]
#: ... and these into a Loop of elementwise ops (its rewriters do not match them).
LOOPED = ["gru_reset_before", "simple_rnn_sequence", "masked_lstm", "embedding_masked_gru"]


def test_every_fixture_is_listed():
    assert sorted(CONVERTED + LOOPED) == sorted(MANIFEST)


def stored(name):
    data = np.load(FIXTURES / f"{name}.npz")
    cases = []
    for k in range(2):
        outputs = [data[f"output_{k}_{j}"] for j in range(len(MANIFEST[name]["outputs"]))]
        cases.append((data[f"inputs_{k}"], outputs))
    return cases


@pytest.mark.parametrize("name", CONVERTED)
def test_converted_models_match_tensorflow(name):
    path = FIXTURES / f"{name}.onnx"
    model = fastgate.load(path)
    assert isinstance(model, fastgate.Model) and model.output_names == MANIFEST[name]["outputs"]
    kinds = op_kinds(model)
    assert any(kind in ("Recurrent", "Onnx:LSTM", "Onnx:GRU") for kind in kinds)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x, expected in stored(name):
        got = model.run(None, {"x": x})
        for k, (a, b) in enumerate(zip(got, expected)):
            assert a.shape == b.shape, f"{name} output {k}"
            np.testing.assert_allclose(a, b, rtol=0, atol=ATOL, err_msg=f"{name} vs TensorFlow")
        for a, b in zip(got, session.run(None, {"x": x})):
            np.testing.assert_allclose(a, b, rtol=0, atol=ATOL, err_msg=f"{name} vs ORT")


def test_tf2onnx_forward_layers_fold_to_fastgate_ops():
    """tf2onnx's one-direction LSTM/GRU (zero initial states from Shape/Expand, Y read
    through Squeeze) run as fastgate Recurrent ops, as torch's exports do."""
    for name in ("lstm_sequence", "lstm_stacked_last", "gru_last", "lstm_with_states"):
        kinds = op_kinds(fastgate.load(FIXTURES / f"{name}.onnx"))
        assert "Recurrent" in kinds and "Onnx:LSTM" not in kinds and "Onnx:GRU" not in kinds


@pytest.mark.parametrize("name", LOOPED)
def test_looped_models_are_refused_saying_why_and_what_to_do(name):
    with pytest.raises(UnsupportedLayerError, match="fell back to a loop") as raised:
        fastgate.load(FIXTURES / f"{name}.onnx")
    assert "while_loop" in str(raised.value) and "fastgate convert" in str(raised.value)
