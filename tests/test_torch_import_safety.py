"""Malformed and malicious weight files: each must be a clear fastgate error, nothing else.

A weight file must never run code (pickles whose ``__reduce__`` calls ``os.system``/``open``/
``eval`` are refused, and the file they would create must not exist), never allocate what it
merely claims (sizes are checked against the bytes present first; checked with tracemalloc),
never hang, and loading ``.pt``/``.safetensors`` must work without torch installed.
"""

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import textwrap
import tracemalloc
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import safetensors.torch
import torch

import fastgate
from conftest import subprocess_env
from fastgate.importers.safetensors import read_safetensors
from fastgate.importers.torch_pickle import load_torch_file



def lstm_state(seed=0):
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(3, 4, num_layers=2)
    with torch.no_grad():
        for parameter in lstm.parameters():
            parameter.normal_(0, 0.3)
    return lstm, lstm.state_dict()


def saved_bytes(obj, legacy=False):
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


def write(path, data):
    path.write_bytes(data)
    return path


def rezip(data, replace=None, drop=()):
    """The torch zip ``data`` with members replaced (name suffix -> bytes) or dropped."""
    replace = replace or {}
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            suffix = info.filename.split("/", 1)[1]
            if suffix in drop:
                continue
            target.writestr(info.filename, replace.get(suffix, source.read(info)))
    return out.getvalue()


class Reduce:
    """Pickles as ``function(*args)``: what a malicious file would contain."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


class StorageRef:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class TorchLikePickler(pickle.Pickler):
    """Writes ``StorageRef`` as torch's ``('storage', torch.FloatStorage, key, 'cpu', n)``."""

    def persistent_id(self, obj):
        if isinstance(obj, StorageRef):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
        return None


def crafted_zip(obj, storages):
    """A torch zip archive whose data.pkl is ``obj`` and data/<key> the given bytes."""
    pickled = io.BytesIO()
    TorchLikePickler(pickled, protocol=2).dump(obj)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickled.getvalue())
        archive.writestr("archive/byteorder", "little")
        for key, raw in storages.items():
            archive.writestr(f"archive/data/{key}", raw)
        archive.writestr("archive/version", "3\n")
    return out.getvalue()


def tensor(storage, offset, size, stride):
    return Reduce(torch._utils._rebuild_tensor_v2, storage, offset, size, stride, False,
                  OrderedDict())


# ---------------------------------------------------------------------- code execution
def malicious_payloads(marker):
    return {
        "os.system": Reduce(os.system, f"touch {marker}"),
        "open": Reduce(open, str(marker), "w"),
        "builtins.eval": Reduce(eval, f"open({str(marker)!r}, 'w')"),
        "builtins.exec": Reduce(exec, f"open({str(marker)!r}, 'w')"),
        "subprocess.Popen": Reduce(subprocess.Popen, ["touch", str(marker)]),
    }


@pytest.mark.parametrize("container", ["pt_zip", "pt_legacy", "raw_pickle_p2",
                                       "raw_pickle_p5", "zip_member_p0"])
@pytest.mark.parametrize("payload", ["os.system", "open", "builtins.eval", "builtins.exec",
                                     "subprocess.Popen"])
def test_pickle_cannot_run_code(payload, container, tmp_path):
    marker = tmp_path / "pwned"
    evil = malicious_payloads(marker)[payload]
    _, state = lstm_state()
    obj = OrderedDict(state, weight_ih_l0=evil)
    if container == "pt_zip":
        data = saved_bytes(obj)
    elif container == "pt_legacy":
        data = saved_bytes(obj, legacy=True)
    elif container == "zip_member_p0":
        data = rezip(saved_bytes(state),
                     replace={"data.pkl": pickle.dumps({"weight": evil}, protocol=0)})
    else:
        data = pickle.dumps({"weight": evil}, protocol=int(container[-1]))
    path = write(tmp_path / "evil.pt", data)
    with pytest.raises(fastgate.WeightFormatError, match="refusing to load global"):
        fastgate.from_torch(path)
    assert not marker.exists()


def test_handwritten_global_eval_and_inst_opcodes(tmp_path):
    marker = tmp_path / "pwned"
    command = f"open({str(marker)!r}, 'w')".encode()
    global_eval = b"\x80\x02cbuiltins\neval\nq\x00X" + struct.pack("<I", len(command)) + \
        command + b"\x85R."
    inst_system = b"(S'touch " + str(marker).encode() + b"'\nios\nsystem\n."
    stack_global = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93X" + \
        struct.pack("<I", len(command)) + command + b"\x85R."
    for name, pickled in [("global", global_eval), ("inst", inst_system),
                          ("stack_global", stack_global)]:
        zipped = rezip(saved_bytes(lstm_state()[1]), replace={"data.pkl": pickled})
        # A protocol-0 pickle on its own does not even look like a torch.save file.
        for data, message in [(pickled, "refusing|not a torch.save file"),
                              (zipped, "refusing")]:
            path = write(tmp_path / f"{name}.pt", data)
            with pytest.raises(fastgate.WeightFormatError, match=message):
                load_torch_file(path)
            assert not marker.exists()


def test_build_on_allowed_globals_is_refused(tmp_path):
    """BUILD could set ``__defaults__`` of an allowed function: only OrderedDict may BUILD."""
    rebuild = b"ctorch._utils\n_rebuild_tensor_v2\n"
    slot_state = b"(N}X\x0c\x00\x00\x00__defaults__(K\x01tst"  # (None, {...: (1,)})
    for target in (rebuild, b"ctorch\nFloatStorage\n"):
        pickled = b"\x80\x02" + target + slot_state + b"b."
        data = rezip(saved_bytes(lstm_state()[1]), replace={"data.pkl": pickled})
        with pytest.raises(fastgate.WeightFormatError, match="refusing BUILD"):
            load_torch_file(write(tmp_path / "build.pt", data))
    assert torch._utils._rebuild_tensor_v2.__defaults__ == (None,)
    from fastgate.importers import torch_pickle
    assert torch_pickle._rebuild_tensor_v2.__defaults__ == (False, None, None)


def test_whole_pickled_model_is_refused_with_a_hint(tmp_path):
    lstm, _ = lstm_state()
    torch.save(lstm, tmp_path / "model.pt")
    with pytest.raises(fastgate.WeightFormatError, match=r"torch\.nn\..*state_dict\(\)"):
        fastgate.from_torch(tmp_path / "model.pt")


def test_mutated_pickles_fail_cleanly(tmp_path):
    """Random byte flips in data.pkl: a fastgate error or a load, never anything else."""
    _, state = lstm_state()
    data = saved_bytes(state)
    pickled = zipfile.ZipFile(io.BytesIO(data)).read("archive/data.pkl")
    rng = np.random.default_rng(0)
    outcomes = set()
    for trial in range(150):
        mutated = bytearray(pickled)
        for position in rng.integers(0, len(mutated), size=rng.integers(1, 4)):
            mutated[position] = rng.integers(0, 256)
        path = write(tmp_path / "mutated.pt", rezip(data, replace={"data.pkl": bytes(mutated)}))
        try:
            fastgate.from_torch(path)
            outcomes.add("loaded")
        except fastgate.FastgateError:
            outcomes.add("error")
    assert "error" in outcomes


# ---------------------------------------------------------------------- malformed .pt
@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_files(legacy, tmp_path):
    _, state = lstm_state()
    data = saved_bytes(state, legacy=legacy)
    for cut in sorted({0, 1, 7, 30, len(data) // 3, len(data) // 2, len(data) - 20,
                       len(data) - 1}):
        path = write(tmp_path / "cut.pt", data[:cut])
        with pytest.raises(fastgate.WeightFormatError):
            fastgate.from_torch(path)


def test_missing_and_short_storages(tmp_path):
    _, state = lstm_state()
    data = saved_bytes(state)
    path = write(tmp_path / "missing.pt", rezip(data, drop={"data/3"}))
    with pytest.raises(fastgate.WeightFormatError, match="'data/3' is missing"):
        fastgate.from_torch(path)
    path = write(tmp_path / "short.pt", rezip(data, replace={"data/0": b"\0" * 12}))
    with pytest.raises(fastgate.WeightFormatError, match="should be 192 bytes"):
        fastgate.from_torch(path)
    path = write(tmp_path / "nopickle.pt", rezip(data, drop={"data.pkl"}))
    with pytest.raises(fastgate.WeightFormatError, match="data.pkl"):
        fastgate.from_torch(path)


def test_missing_tensor_and_wrong_shape_in_file(tmp_path):
    _, state = lstm_state()
    missing = OrderedDict((k, v) for k, v in state.items() if k != "bias_hh_l1")
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(fastgate.WeightFormatError, match=r"missing\.pt.*bias_hh_l1.*missing"):
        fastgate.from_torch(tmp_path / "missing.pt")
    wrong = OrderedDict(state, weight_hh_l1=torch.zeros(16, 5))
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(fastgate.WeightFormatError, match=r"weight_hh_l1.*\(16, 5\)"):
        fastgate.from_torch(tmp_path / "wrong.pt")


def test_claimed_sizes_are_checked_before_allocation(tmp_path):
    storage = StorageRef("0", 4)
    cases = {
        "past its storage": crafted_zip({"w": tensor(storage, 2, (3,), (1,))},
                                        {"0": b"\0" * 16}),
        "expanded view": crafted_zip({"w": tensor(storage, 0, (10**6, 10**6), (0, 0))},
                                     {"0": b"\0" * 16}),
        "should be 4000000000000 bytes": crafted_zip(
            {"w": tensor(StorageRef("0", 10**12), 0, (10**12,), (1,))}, {"0": b"\0" * 16}),
        "non-negative integer": crafted_zip({"w": tensor(storage, -1, (3,), (1,))},
                                            {"0": b"\0" * 16}),
    }
    tracemalloc.start()
    try:
        for message, data in cases.items():
            path = write(tmp_path / "crafted.pt", data)
            with pytest.raises(fastgate.WeightFormatError, match=message):
                load_torch_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20


def test_lying_zip_directory_is_checked_against_the_file_size(tmp_path):
    """A central directory claiming a 4 GB member in a tiny file: refused, never read."""
    claimed = 0xFFFFFFFC
    data = bytearray(crafted_zip({"w": tensor(StorageRef("0", claimed // 4), 0, (4,), (1,))},
                                 {"0": b"\0" * 16}))
    entry = data.index(b"PK\x01\x02" + data[data.index(b"PK\x01\x02") + 4:][:0])
    while not data[entry + 46:].startswith(b"archive/data/0"):
        entry = data.index(b"PK\x01\x02", entry + 4)
    data[entry + 20:entry + 28] = struct.pack("<II", claimed, claimed)
    tracemalloc.start()
    try:
        with pytest.raises(fastgate.WeightFormatError, match="more than the .*-byte file"):
            load_torch_file(write(tmp_path / "liar.pt", bytes(data)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20


def test_crafted_zip_reader_itself_works(tmp_path):
    """The crafting helper builds files the reader accepts when they are well-formed."""
    raw = np.arange(6, dtype="<f4").tobytes()
    data = crafted_zip({"w": tensor(StorageRef("0", 6), 1, (2, 2), (1, 2))}, {"0": raw})
    loaded = load_torch_file(write(tmp_path / "ok.pt", data))
    np.testing.assert_array_equal(loaded["w"], [[1, 3], [2, 4]])


def test_huge_memo_index_does_not_allocate(tmp_path):
    pickled = b"\x80\x02}r\xf0\xff\xff\x7f."  # EMPTY_DICT, LONG_BINPUT 2**31 - 16, STOP
    data = rezip(saved_bytes(lstm_state()[1]), replace={"data.pkl": pickled})
    tracemalloc.start()
    try:
        with pytest.raises(fastgate.WeightFormatError, match="no tensors"):
            load_torch_file(write(tmp_path / "memo.pt", data))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20


@pytest.mark.parametrize("data", [b"", b"garbage!", b"PK\x03\x04 not really a zip",
                                  b"\x80\x02K\x01."])
def test_not_a_weight_file(data, tmp_path):
    with pytest.raises(fastgate.WeightFormatError):
        fastgate.from_torch(write(tmp_path / "junk.pt", data))


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(fastgate.WeightFormatError, match="nothing.pt"):
        fastgate.from_torch(tmp_path / "nothing.pt")


# ---------------------------------------------------------------------- malformed safetensors
def safetensors_file(header, data=b"", header_size=None):
    raw = json.dumps(header).encode()
    size = len(raw) if header_size is None else header_size
    return struct.pack("<Q", size) + raw + data


@pytest.mark.parametrize("case, message", [
    ("huge_header", "header length 100000000000 exceeds"),
    ("huge_tensor", "outside the 16-byte data buffer"),
    ("offset_out_of_range", "outside the 16-byte data buffer"),
    ("size_mismatch", "needs 12 bytes, but data_offsets span 16"),
    ("overlap", "overlaps"),
    ("bad_json", "not valid JSON"),
    ("not_object", "must be a JSON object"),
    ("bad_dtype", "unsupported dtype"),
    ("negative_shape", "non-negative integers"),
    ("duplicate", "twice"),
    ("short", "too short"),
])
def test_malformed_safetensors(case, message, tmp_path):
    ok = {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}
    data = b"\0" * 16
    files = {
        "huge_header": safetensors_file({"w": ok}, data, header_size=100 * 10**9),
        "huge_tensor": safetensors_file(
            {"w": {"dtype": "F32", "shape": [10**12], "data_offsets": [0, 4 * 10**12]}}, data),
        "offset_out_of_range": safetensors_file(
            {"w": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}, data),
        "size_mismatch": safetensors_file(
            {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}}, data),
        "overlap": safetensors_file(
            {"a": ok, "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, data),
        "bad_json": b"\x05\0\0\0\0\0\0\0{\"w\":" + data,
        "not_object": safetensors_file([1, 2], data),
        "bad_dtype": safetensors_file({"w": dict(ok, dtype="F8_E4M3")}, data),
        "negative_shape": safetensors_file({"w": dict(ok, shape=[-4])}, data),
        "duplicate": b"".join([struct.pack("<Q", 2 * len(json.dumps(ok)) + 11),
                               b'{"w":', json.dumps(ok).encode(), b',"w":',
                               json.dumps(ok).encode(), b"}", data]),
        "short": b"\x10\0\0",
    }
    path = write(tmp_path / "bad.safetensors", files[case])
    tracemalloc.start()
    try:
        with pytest.raises(fastgate.WeightFormatError, match=message):
            fastgate.from_torch(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20


def test_safetensors_metadata_bf16_and_sniffing(tmp_path):
    _, state = lstm_state()
    tensors = dict(state, extra=torch.tensor([1.5, -2.25]).bfloat16())
    path = tmp_path / "weights.bin"  # not named .safetensors: recognised by content
    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt"})
    loaded = read_safetensors(path)
    np.testing.assert_array_equal(loaded["extra"], [1.5, -2.25])
    assert loaded["extra"].dtype == np.float32
    fast = fastgate.from_torch(path, prefix="weight_")  # a raw prefix, not a module path
    assert isinstance(fast, fastgate.LSTM)
    truncated = write(tmp_path / "cut.safetensors", path.read_bytes()[:-10])
    with pytest.raises(fastgate.WeightFormatError, match="outside"):
        fastgate.from_torch(truncated)


# ---------------------------------------------------------------------- without torch
def test_files_load_without_torch(tmp_path):
    lstm, state = lstm_state()
    torch.save(state, tmp_path / "zip.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    safetensors.torch.save_file(state, str(tmp_path / "w.safetensors"))
    x = np.random.default_rng(0).normal(size=(5, 2, 3)).astype(np.float32)
    with torch.no_grad():
        expected, _ = lstm(torch.from_numpy(x))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", expected.numpy())
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        import fastgate
        x = np.load({str(tmp_path / "x.npy")!r})
        expected = np.load({str(tmp_path / "expected.npy")!r})
        for name in ("zip.pt", "legacy.pt", "w.safetensors"):
            lstm = fastgate.from_torch({str(tmp_path)!r} + "/" + name)
            out, _ = lstm(x)
            assert np.abs(out - expected).max() < 1e-5, name
        assert sys.modules["torch"] is None
        print("loaded without torch")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, env=subprocess_env(),
                            cwd=tempfile.gettempdir())
    assert result.returncode == 0, result.stderr
    assert "loaded without torch" in result.stdout
