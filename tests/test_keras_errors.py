"""Malformed or unsupported Keras files raise clear fastgate errors naming file/layer/tensor."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import json  # noqa: E402
import shutil  # noqa: E402
import zipfile  # noqa: E402

import h5py  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fastgate  # noqa: E402

L = keras.layers


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keras_bad")
    model = keras.Sequential([keras.Input((None, 3)), L.LSTM(4, name="my_lstm"),
                              L.Dense(2, name="head")])
    paths = {"keras": directory / "m.keras", "h5": directory / "m.h5",
             "weights": directory / "m.weights.h5"}
    model.save(paths["keras"])
    model.save(paths["h5"])
    model.save_weights(paths["weights"])
    return paths, model.to_json()


def copy(path, tmp_path, name=None):
    target = tmp_path / (name or os.path.basename(path))
    shutil.copy(path, target)
    return target


def truncate(path, tmp_path, keep):
    target = copy(path, tmp_path)
    data = open(path, "rb").read()
    target.write_bytes(data[:int(len(data) * keep)])
    return target


@pytest.mark.parametrize("fmt", ["keras", "h5", "weights"])
def test_truncated_files(files, tmp_path, fmt):
    paths, architecture = files
    bad = truncate(paths[fmt], tmp_path, 0.5)
    with pytest.raises(fastgate.WeightFormatError) as info:
        fastgate.load(bad, architecture=architecture if fmt == "weights" else None)
    assert str(bad) in str(info.value)
    assert "truncated" in str(info.value)


def test_keras_archive_without_weights(files, tmp_path):
    paths, _ = files
    bad = tmp_path / "noweights.keras"
    with zipfile.ZipFile(paths["keras"]) as source, zipfile.ZipFile(bad, "w") as target:
        for name in source.namelist():
            if name != "model.weights.h5":
                target.writestr(name, source.read(name))
    with pytest.raises(fastgate.WeightFormatError, match="model.weights.h5 is missing"):
        fastgate.load(bad)


def test_missing_keras3_weight_names_tensor(files, tmp_path):
    paths, architecture = files
    bad = copy(paths["weights"], tmp_path)
    with h5py.File(bad, "r+") as handle:
        del handle["layers/lstm/cell/vars/1"]
    with pytest.raises(fastgate.WeightFormatError) as info:
        fastgate.load(bad, architecture=architecture)
    message = str(info.value)
    assert "'my_lstm'" in message and "expected 3 weight arrays" in message


def test_missing_legacy_dataset_names_tensor(files, tmp_path):
    paths, _ = files
    bad = copy(paths["h5"], tmp_path)
    with h5py.File(bad, "r+") as handle:
        names = [n.decode() if isinstance(n, bytes) else n
                 for n in handle["model_weights/my_lstm"].attrs["weight_names"]]
        del handle["model_weights/my_lstm"][names[1]]
    with pytest.raises(fastgate.WeightFormatError) as info:
        fastgate.load(bad)
    message = str(info.value)
    assert "'my_lstm'" in message and names[1] in message and "missing" in message


def test_wrong_shape_names_tensor(files, tmp_path):
    paths, _ = files
    bad = copy(paths["h5"], tmp_path)
    with h5py.File(bad, "r+") as handle:
        group = handle["model_weights/my_lstm"]
        name = [n.decode() if isinstance(n, bytes) else n
                for n in group.attrs["weight_names"]][1]  # recurrent_kernel (4, 16)
        del group[name]
        group.create_dataset(name, data=np.zeros((5, 16), np.float32))
    with pytest.raises(fastgate.WeightFormatError) as info:
        fastgate.load(bad)
    message = str(info.value)
    assert "'my_lstm'" in message and name in message and "(5, 16)" in message
    assert "(4, 16)" in message


def test_unsupported_layer_names_class_and_layer(tmp_path):
    model = keras.Sequential([keras.Input((8, 3)), L.Conv1DTranspose(4, 3, name="my_conv"),
                              L.LSTM(2)])
    path = tmp_path / "conv.keras"
    model.save(path)
    with pytest.raises(fastgate.UnsupportedLayerError) as info:
        fastgate.load(path)
    assert "'Conv1DTranspose'" in str(info.value) and "'my_conv'" in str(info.value)
    with pytest.raises(fastgate.UnsupportedLayerError, match="Conv1DTranspose"):
        fastgate.from_keras(model)


def test_unsupported_structures(tmp_path):
    a, b = keras.Input((4, 3)), keras.Input((4, 3))
    two_inputs = keras.Model([a, b], L.Lambda(lambda xs: xs[0] * xs[1], name="product")(
        [L.LSTM(2)(a), L.LSTM(2)(b)]))
    with pytest.raises(fastgate.UnsupportedLayerError, match="Lambda.*|.*'product'"):
        fastgate.from_keras(two_inputs)
    inner = keras.Sequential([keras.Input((4, 5, 3)), L.TimeDistributed(
        L.Conv1DTranspose(2, 2), name="td_conv")])
    with pytest.raises(fastgate.UnsupportedLayerError, match=r"Conv1DTranspose.*|.*'td_conv'"):
        fastgate.from_keras(inner)
    relu6 = keras.Sequential([keras.Input((4, 3)), L.LSTM(2), L.Dense(2, activation="relu6",
                                                                       name="d6")])
    with pytest.raises(fastgate.UnsupportedLayerError, match="relu6.*|.*'d6'"):
        fastgate.from_keras(relu6)


def test_weights_only_needs_architecture(files):
    paths, _ = files
    with pytest.raises(fastgate.WeightFormatError, match="architecture"):
        fastgate.load(paths["weights"])


def test_architecture_that_does_not_fit(files):
    paths, _ = files
    other = keras.Sequential([keras.Input((None, 3)), L.GRU(4), L.Dense(2)])
    with pytest.raises(fastgate.WeightFormatError):
        fastgate.load(paths["weights"], architecture=other.to_json())
    with pytest.raises(fastgate.WeightFormatError, match="JSON"):
        fastgate.load(paths["weights"], architecture="{not json")


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(fastgate.WeightFormatError, match="no such file"):
        fastgate.load(tmp_path / "absent.keras")
    junk = tmp_path / "junk.txt"
    junk.write_text("hello")
    with pytest.raises(fastgate.WeightFormatError, match="unknown file format"):
        fastgate.load(junk)
    fake = tmp_path / "fake.h5"
    fake.write_bytes(b"not hdf5 at all")
    with pytest.raises(fastgate.WeightFormatError, match="not a Keras file"):
        fastgate.load(fake)
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w"):
        pass
    with pytest.raises(fastgate.WeightFormatError, match="no Keras model or weights"):
        fastgate.load(empty)


def test_bad_inputs_at_predict(files):
    paths, _ = files
    model = fastgate.load(paths["keras"])
    with pytest.raises(fastgate.ShapeError, match=r"expected shape \('B', '\*', 3\)"):
        model.predict(np.zeros((2, 5, 4), np.float32))
    with pytest.raises(fastgate.DTypeError):
        model.predict(np.array([[["a", "b", "c"]]]))
    ids_model = keras.Sequential([keras.Input((None,), dtype="int32"),
                                  L.Embedding(10, 3, mask_zero=True), L.LSTM(2)])
    fast = fastgate.from_keras(ids_model)
    with pytest.raises(fastgate.InputError, match="Embedding ids"):
        fast.predict(np.array([[1, 2, 10]]))


def test_config_json_is_a_model(tmp_path, files):
    paths, _ = files
    bad = tmp_path / "badconfig.keras"
    with zipfile.ZipFile(paths["keras"]) as source, zipfile.ZipFile(bad, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name == "config.json":
                data = json.dumps({"class_name": "Sequential", "config": {}}).encode()
            target.writestr(name, data)
    with pytest.raises(fastgate.WeightFormatError, match="config.layers"):
        fastgate.load(bad)
