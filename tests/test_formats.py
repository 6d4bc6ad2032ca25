"""``fastgate.formats.detect_format``: one answer to "what file is this" for ``fastgate.load``
and the CLI, content first and extension second; files saved by the real frameworks.

Tolerance: float32 outputs against Keras / PyTorch, atol 1e-5 on O(1) values.
"""

import shutil
import zipfile

import numpy as np
import pytest

import fastgate
from fastgate import formats
from fastgate.cli import main
from fastgate.importers.torch_pickle import is_torch_zip

ATOL = 1e-5


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny Keras GRU and a tiny torch LSTM, saved in every format, with their outputs."""
    import keras
    import safetensors.torch
    import torch

    folder = tmp_path_factory.mktemp("formats")
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((5, 2)), keras.layers.GRU(3, name="gru")])
    model.save(folder / "tiny.keras")
    model.save(folder / "tiny.h5")
    model.save_weights(folder / "tiny.weights.h5")
    x = np.random.default_rng(5).normal(size=(2, 5, 2)).astype(np.float32)

    torch.manual_seed(6)
    lstm = torch.nn.LSTM(2, 3, batch_first=True)
    torch.save(lstm.state_dict(), folder / "lstm.pt")
    torch.save(lstm.state_dict(), folder / "lstm_zip.weights")  # zip format, odd extension
    torch.save(lstm.state_dict(), folder / "lstm_legacy.ckpt",
               _use_new_zipfile_serialization=False)
    torch.save(lstm.state_dict(), folder / "lstm_legacy", _use_new_zipfile_serialization=False)
    safetensors.torch.save_file(lstm.state_dict(), folder / "lstm.st")
    fastgate.load(folder / "tiny.keras").save(folder / "tiny.fastgate")
    with torch.no_grad():
        torch_y = lstm(torch.from_numpy(x))[0].numpy()
    return {"folder": folder, "keras_model": model, "x": x, "keras_y": model.predict(x),
            "torch_y": torch_y}


@pytest.mark.parametrize("name, expected", [
    ("tiny.keras", formats.KERAS_ARCHIVE), ("tiny.h5", formats.KERAS_HDF5),
    ("tiny.weights.h5", formats.KERAS_HDF5), ("lstm.pt", formats.TORCH_ZIP),
    ("lstm_zip.weights", formats.TORCH_ZIP), ("lstm_legacy.ckpt", formats.TORCH_LEGACY),
    ("lstm_legacy", formats.TORCH_LEGACY), ("lstm.st", formats.SAFETENSORS),
    ("tiny.fastgate", formats.FASTGATE)])
def test_detect_format_reads_the_content(saved, name, expected):
    assert formats.detect_format(saved["folder"] / name) == expected


@pytest.mark.parametrize("name, expected", [
    ("missing.pt", formats.TORCH_LEGACY), ("missing.safetensors", formats.SAFETENSORS),
    ("missing.keras", formats.KERAS_ARCHIVE), ("missing.h5", formats.KERAS_HDF5),
    ("missing.fastgate", formats.FASTGATE), ("missing.txt", formats.UNKNOWN)])
def test_detect_format_falls_back_on_the_extension(tmp_path, name, expected):
    assert formats.detect_format(tmp_path / name) == expected
    (tmp_path / name).write_bytes(b"neither zip nor HDF5 nor pickle")
    assert formats.detect_format(tmp_path / name) == expected


@pytest.mark.parametrize("name", ["lstm_zip.weights", "lstm_legacy", "lstm.st"])
def test_torch_files_with_any_name_load_and_match_torch(saved, name):
    layer = fastgate.load(saved["folder"] / name)  # time-major, as torch's default
    out, _ = layer(saved["x"].transpose(1, 0, 2))
    np.testing.assert_allclose(out.transpose(1, 0, 2), saved["torch_y"], rtol=0, atol=ATOL)


def test_keras_archive_holding_a_data_pkl_member_is_keras(saved, tmp_path, capsys):
    """A ``.keras`` archive with an asset named ``data.pkl``: the old loading.py check (any
    member ending in ``data.pkl``) called it PyTorch while the torch reader's rule (one
    ``<name>/data.pkl``) does not; both paths now use the reader's rule."""
    path = tmp_path / "with_asset.keras"
    shutil.copy(saved["folder"] / "tiny.keras", path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("assets/tokenizer/data.pkl", b"\x80\x04N.")
    with zipfile.ZipFile(path) as archive:
        assert any(name.endswith("data.pkl") for name in archive.namelist())  # the old rule
    assert not is_torch_zip(path)
    assert formats.detect_format(path) == formats.KERAS_ARCHIVE
    y = fastgate.load(path).predict(saved["x"])
    np.testing.assert_allclose(y, saved["keras_y"], rtol=0, atol=ATOL)
    assert main(["inspect", str(path)]) == 0
    assert "Keras 3 archive (.keras)" in capsys.readouterr().out


def test_a_zip_with_a_root_data_pkl_is_not_torch(tmp_path):
    """``data.pkl`` outside a directory: torch.load refuses it ("not in a subdirectory")."""
    path = tmp_path / "loose.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data.pkl", b"\x80\x04N.")
    assert not is_torch_zip(path)
    assert formats.detect_format(path) == formats.KERAS_ARCHIVE
    with pytest.raises(fastgate.WeightFormatError):
        fastgate.load(path)
    import torch

    with pytest.raises(RuntimeError, match="not in a subdirectory"):
        torch.load(path, weights_only=True)


def test_load_and_the_cli_share_one_torch_zip_rule():
    from fastgate import loading

    assert loading._is_torch_zip is is_torch_zip
