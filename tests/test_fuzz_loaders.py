"""Fuzzing every loader: mutated real files must load or raise a FastgateError, nothing else.

Seeds are real files written by the real tools (``torch.save`` zip and legacy formats,
``safetensors``, Keras 3 ``.keras`` and ``.h5``, tf.keras 2 ``.h5`` fixtures, fastgate's own
format). Hypothesis mutates them in two ways:

* raw bytes: flips, overwrites with boundary integers (0, -1, 2**31, 2**63...), truncation,
  insertion, duplicated ranges, at any offset of the file;
* structure-aware: the member *inside* a zip (the pickle ``data.pkl``, ``fastgate.json``, a
  ``.npy`` header, Keras' ``config.json`` and ``model.weights.h5``) is mutated and the archive
  rebuilt, so that the mutation reaches the parser behind the zip's CRC check; the
  safetensors JSON header and the Keras model configuration are mutated as JSON values.

Every example must end in a normal return or a :class:`fastgate.FastgateError`: any other
exception (``KeyError``, ``TypeError``, ``MemoryError``, ``RecursionError``...) is a bug.
Runs are derandomized (the same examples every run) and bounded (``max_examples`` per
target, no deadline; the whole file stays well under a minute). The crafted cases at the
end check that claims of huge sizes are refused *before* anything is allocated (tracemalloc).
"""

from __future__ import annotations

import io
import json
import os
import struct
import tracemalloc
import zipfile

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastgate  # noqa: E402
from conftest import subprocess_env  # noqa: E402
from fastgate import FastgateError, WeightFormatError  # noqa: E402
from fastgate.importers.keras import from_config  # noqa: E402
from fastgate.importers.safetensors import read_safetensors  # noqa: E402
from fastgate.importers.torch_pickle import load_torch_file  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "keras2")
EXAMPLES = 150  # per fuzz target: enough to find shallow bugs, cheap enough to run always

FUZZ = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


# ------------------------------------------------------------------------------ seeds
@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """``name -> (bytes, suffix)`` of the real files the mutations start from."""
    import keras
    import safetensors.numpy
    import torch

    directory = tmp_path_factory.mktemp("seeds")
    files = {}
    torch.manual_seed(0)
    net = torch.nn.LSTM(3, 4, num_layers=2)
    state = net.state_dict()
    torch.save(state, directory / "zip.pt")
    torch.save(state, directory / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save({"epoch": 3, "model": state, "fc": torch.nn.Linear(4, 2).state_dict()},
               directory / "checkpoint.pt")
    safetensors.numpy.save_file({k: v.numpy() for k, v in state.items()},
                                str(directory / "weights.safetensors"))
    # Fixed names and weights, fixed zip timestamps: the seeds are the same bytes every run,
    # so that the derandomized examples are too.
    layers = keras.layers
    model = keras.Sequential([keras.Input((None, 3)), layers.Masking(name="masking"),
                              layers.GRU(4, return_sequences=True, name="gru"),
                              layers.LSTM(3, name="lstm"), layers.Dense(2, name="dense")],
                             name="seed")
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32)
                       for w in model.get_weights()])
    model.save(directory / "model.keras")
    (directory / "model.keras").write_bytes(fixed_zip((directory / "model.keras").read_bytes()))
    model.save(directory / "model.h5")
    fastgate.load(directory / "model.keras").save(directory / "model.fastgate")
    for name in ("zip.pt", "checkpoint.pt", "model.fastgate"):
        (directory / name).write_bytes(fixed_zip((directory / name).read_bytes()))
    for name, suffix in [("zip.pt", ".pt"), ("legacy.pt", ".pt"), ("checkpoint.pt", ".pt"),
                         ("weights.safetensors", ".safetensors"), ("model.keras", ".keras"),
                         ("model.h5", ".h5"), ("model.fastgate", ".fastgate")]:
        files[name] = ((directory / name).read_bytes(), suffix)
    with open(os.path.join(FIXTURES, "lstm_tutorial.h5"), "rb") as handle:
        files["keras2.h5"] = (handle.read(), ".h5")
    return files


def fixed_zip(data: bytes) -> bytes:
    """The archive with every member dated 1980 and Keras' save date blanked."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            member = source.read(info)
            if info.filename == "metadata.json":
                metadata = json.loads(member)
                metadata["date_saved"] = "1980-01-01@00:00:00"
                member = json.dumps(metadata).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type = info.compress_type
            target.writestr(fixed, member)
    return out.getvalue()


# --------------------------------------------------------------------------- harness
def must_load_or_refuse(path, loader=fastgate.load):
    """Call ``loader(path)``: a result, or a FastgateError; anything else fails the test."""
    try:
        loader(path)
    except FastgateError:
        pass


def write(tmp_path, data: bytes, suffix: str, name: str = "fuzzed"):
    path = tmp_path / f"{name}{suffix}"
    path.write_bytes(data)
    return path


BOUNDARY_INTEGERS = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF,
                     2**63 - 1, 2**64 - 1, 100 << 30]


@st.composite
def mutations(draw):
    """A list of byte-level edits, applied by :func:`mutate`."""
    kinds = st.sampled_from(["flip", "integer", "truncate", "insert", "duplicate", "zero"])
    return draw(st.lists(st.tuples(kinds, st.floats(0, 1), st.integers(0, 2**16),
                                   st.sampled_from(BOUNDARY_INTEGERS)),
                         min_size=1, max_size=4))


def mutate(data: bytes, edits) -> bytes:
    data = bytearray(data)
    for kind, where, amount, integer in edits:
        if not data:
            break
        at = int(where * (len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << (amount % 8)
        elif kind == "integer":
            width = (4, 8)[amount % 2]
            data[at:at + width] = integer.to_bytes(16, "little")[:width]
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = bytes([amount % 256]) * (1 + amount % 64)
        elif kind == "duplicate":
            data[at:at] = data[at:at + 1 + amount % 512]
        else:
            data[at:at + 1 + amount % 64] = bytes(len(data[at:at + 1 + amount % 64]))
    return bytes(data)


def rezip(archive_bytes: bytes, member_filter, change) -> bytes:
    """The zip with ``change(data)`` applied to each member for which ``member_filter`` holds."""
    source = zipfile.ZipFile(io.BytesIO(archive_bytes))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if member_filter(info.filename):
                data = change(data)
            target.writestr(info, data)
    return out.getvalue()


# ------------------------------------------------------------------- byte-level fuzzing
SEED_NAMES = ["zip.pt", "legacy.pt", "checkpoint.pt", "weights.safetensors", "model.keras",
              "model.h5", "keras2.h5", "model.fastgate"]


@pytest.mark.parametrize("seed_name", SEED_NAMES)
def test_mutated_files(seeds, tmp_path, seed_name):
    data, suffix = seeds[seed_name]

    @FUZZ
    @given(mutations())
    def check(edits):
        must_load_or_refuse(write(tmp_path, mutate(data, edits), suffix))

    check()


# -------------------------------------------------------------- structure-aware fuzzing
@pytest.mark.parametrize("seed_name,member", [
    ("zip.pt", "data.pkl"), ("checkpoint.pt", "data.pkl"), ("zip.pt", "/data/"),
    ("model.fastgate", "fastgate.json"), ("model.fastgate", ".npy"),
    ("model.keras", "config.json"), ("model.keras", "model.weights.h5"),
    ("model.keras", "metadata.json"),
])
def test_mutated_zip_members(seeds, tmp_path, seed_name, member):
    data, suffix = seeds[seed_name]

    @FUZZ
    @given(mutations())
    def check(edits):
        fuzzed = rezip(data, lambda name: member in name, lambda raw: mutate(raw, edits))
        must_load_or_refuse(write(tmp_path, fuzzed, suffix))

    check()


def test_mutated_legacy_pickle_stream(seeds, tmp_path):
    """The legacy format is five pickles in a row: mutate within the pickles region."""
    data, suffix = seeds["legacy.pt"]

    @FUZZ
    @given(mutations())
    def check(edits):
        edits = [(kind, where * 0.3, amount, integer) for kind, where, amount, integer in edits]
        must_load_or_refuse(write(tmp_path, mutate(data, edits), suffix), load_torch_file)

    check()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


def json_paths(value, prefix=()):
    """Every path (tuple of keys / indices) inside a JSON value."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from json_paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from json_paths(item, prefix + (index,))


def replaced(value, path, new):
    if not path:
        return new
    value = json.loads(json.dumps(value))
    target = value
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = new
    return value


@st.composite
def json_edits(draw, document):
    """``document`` with 1-3 values (anywhere in it) replaced by random JSON values."""
    paths = list(json_paths(document))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        document = replaced(document, path, draw(JSON_VALUES))
        paths = list(json_paths(document))
    return document


@pytest.mark.slow
def test_mutated_keras_configuration(seeds, tmp_path):
    """The Keras model config (config.json of .keras, to_json()) with values replaced."""
    data, suffix = seeds["model.keras"]
    config = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("config.json"))
    weights = zipfile.ZipFile(io.BytesIO(data)).read("model.weights.h5")

    @settings(FUZZ, max_examples=3 * EXAMPLES)
    @given(json_edits(config))
    def check(document):
        fuzzed = rezip(data, lambda name: name == "config.json",
                       lambda raw: json.dumps(document, allow_nan=True).encode())
        must_load_or_refuse(write(tmp_path, fuzzed, suffix))
        from fastgate.importers.keras_hdf5 import Keras3Weights, open_hdf5

        with open_hdf5(weights, "<weights>") as handle:
            try:
                from_config(document, Keras3Weights(handle, "<weights>"))
            except FastgateError:
                pass

    check()


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header, allow_nan=True).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def test_mutated_safetensors_header(seeds, tmp_path):
    data, suffix = seeds["weights.safetensors"]
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    body = data[8 + size:]

    @settings(FUZZ, max_examples=2 * EXAMPLES)
    @given(json_edits(header))
    def check(document):
        path = write(tmp_path, safetensors_bytes(document, body), suffix)
        must_load_or_refuse(path, read_safetensors)
        must_load_or_refuse(path)

    check()


def test_mutated_fastgate_document(seeds, tmp_path):
    data, suffix = seeds["model.fastgate"]
    document = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("fastgate.json"))

    @settings(FUZZ, max_examples=2 * EXAMPLES)
    @given(json_edits(document))
    def check(edited):
        fuzzed = rezip(data, lambda name: name == "fastgate.json",
                       lambda raw: json.dumps(edited, allow_nan=True).encode())
        must_load_or_refuse(write(tmp_path, fuzzed, suffix))

    check()


@pytest.mark.parametrize("spec", [None, 3, [], "LSTM", {"spec": {}}])
def test_fastgate_document_without_an_object_is_refused(seeds, tmp_path, spec):
    # found by the fuzzer in CI: {"object": null} loaded as None instead of a refusal
    data, suffix = seeds["model.fastgate"]
    document = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("fastgate.json"))
    document["object"] = spec
    fuzzed = rezip(data, lambda name: name == "fastgate.json",
                   lambda raw: json.dumps(document).encode())
    with pytest.raises(WeightFormatError, match="holds no fastgate object"):
        fastgate.load(write(tmp_path, fuzzed, suffix))


# ------------------------------------------------------------------ claims of huge sizes
HUGE = 100 << 30  # 100 GB


def peak_allocation(function):
    """Bytes allocated at the peak while ``function()`` ran (tracemalloc sees NumPy's)."""
    tracemalloc.start()
    try:
        function()
    except FastgateError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def refused_cheaply(path, loader=fastgate.load):
    with pytest.raises(FastgateError):
        loader(path)
    assert peak_allocation(lambda: loader(path)) < 50 << 20


def test_safetensors_claiming_100_gb_is_refused_before_allocating(tmp_path):
    header = {"w": {"dtype": "F32", "shape": [HUGE // 4], "data_offsets": [0, HUGE]}}
    refused_cheaply(write(tmp_path, safetensors_bytes(header, b"\0" * 64), ".safetensors"))
    huge_header = struct.pack("<Q", HUGE) + b"{}"
    refused_cheaply(write(tmp_path, huge_header, ".safetensors", "header"))


def test_fastgate_array_claiming_100_gb_is_refused_before_allocating(seeds, tmp_path):
    data, suffix = seeds["model.fastgate"]

    def huge_npy(raw):
        header = {"descr": "<f4", "fortran_order": False, "shape": (HUGE // 4,)}
        out = io.BytesIO()
        np.lib.format.write_array_header_1_0(out, header)
        return out.getvalue() + raw[-16:]
    refused_cheaply(write(tmp_path, rezip(data, lambda n: n.endswith(".npy"), huge_npy),
                          suffix))


def zip_claiming(data: bytes, member: str, size: int) -> bytes:
    """``data`` (a zip) with ``member``'s uncompressed size claimed to be ``size`` (ZIP64)."""
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info), zipfile.ZIP_DEFLATED)
    raw = bytearray(out.getvalue())
    archive = zipfile.ZipFile(io.BytesIO(bytes(raw)))
    info = archive.getinfo(member)
    # Patch the central directory's uncompressed size (what ZipFile believes).
    central = raw.find(b"PK\x01\x02")
    while central != -1:
        name_length = struct.unpack("<H", raw[central + 28:central + 30])[0]
        name = bytes(raw[central + 46:central + 46 + name_length]).decode()
        if name == member:
            raw[central + 24:central + 28] = struct.pack("<I", min(size, 0xFFFFFFFE))
            break
        central = raw.find(b"PK\x01\x02", central + 4)
    assert info.filename == member
    return bytes(raw)


@pytest.mark.parametrize("seed_name,member", [
    ("zip.pt", "zip/data.pkl"), ("model.keras", "model.weights.h5"),
    ("model.keras", "config.json"), ("model.keras", "metadata.json"),
    ("model.fastgate", "fastgate.json"), ("model.fastgate", "arrays/0.npy"),
])
def test_zip_members_claiming_4_gb_are_refused_or_read_within_bounds(seeds, tmp_path,
                                                                     seed_name, member):
    data, suffix = seeds[seed_name]
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    member = next(name for name in names if name.endswith(member.split("/", 1)[-1])
                  or name == member)
    path = write(tmp_path, zip_claiming(data, member, 0xFFFFFFFE), suffix)
    assert peak_allocation(lambda: must_load_or_refuse(path)) < 50 << 20


def test_hdf5_dataset_claiming_100_gb_is_refused_before_allocating(tmp_path):
    import h5py

    path = tmp_path / "huge.weights.h5"
    with h5py.File(path, "w") as handle:  # chunked, never written: the file stays tiny
        handle.attrs["layer_names"] = [b"dense"]
        group = handle.create_group("dense")
        group.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
        group.create_dataset("dense/kernel:0", shape=(HUGE // 4 // 2, 2), dtype="f4",
                             chunks=(1024, 2))
        group.create_dataset("dense/bias:0", shape=(2,), dtype="f4")
    assert os.path.getsize(path) < 1 << 20
    architecture = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"batch_shape": [None, 3], "name": "in"}},
        {"class_name": "Dense", "config": {"name": "dense", "units": 2}}]}}
    refused_cheaply(path, lambda p: fastgate.load(p, architecture=architecture))


def test_deeply_nested_documents_are_refused(seeds, tmp_path):
    nested = "[" * 100_000 + "]" * 100_000
    data, suffix = seeds["model.keras"]
    fuzzed = rezip(data, lambda name: name == "config.json", lambda raw: nested.encode())
    with pytest.raises(WeightFormatError):
        fastgate.load(write(tmp_path, fuzzed, suffix))
    header = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
    with pytest.raises(WeightFormatError):
        read_safetensors(write(tmp_path, struct.pack("<Q", len(header)) + header,
                               ".safetensors"))


# ------------------------------------------------------- regressions found by the fuzzer
def test_safetensors_dtype_that_is_not_a_string_is_refused(tmp_path):
    # was: TypeError (unhashable type: 'list') from the dtype table lookup
    header = {"w": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}
    with pytest.raises(WeightFormatError, match="unsupported dtype"):
        read_safetensors(write(tmp_path, safetensors_bytes(header, b"\0" * 4), ".safetensors"))


@pytest.mark.parametrize("edit", [
    lambda c: c["config"]["layers"][1]["config"].update(units=None),
    lambda c: c["config"]["layers"][1]["config"].update(units="many"),
    lambda c: c["config"]["layers"][1].update(inbound_nodes=True),
    lambda c: c["config"].update(input_layers=[[]]),
    lambda c: c["config"]["layers"][0]["config"].update(batch_shape=False),
])
def test_malformed_keras_configuration_values_are_weight_format_errors(edit):
    # were: TypeError / ValueError / IndexError from inside the translation
    config = {"class_name": "Functional", "config": {
        "name": "m", "input_layers": [["in", 0, 0]], "output_layers": [["dense", 0, 0]],
        "layers": [
            {"class_name": "InputLayer", "name": "in",
             "config": {"batch_shape": [None, 3], "name": "in"}, "inbound_nodes": []},
            {"class_name": "Dense", "name": "dense", "config": {"name": "dense", "units": 2},
             "inbound_nodes": [[["in", 0, 0, {}]]]}]}}
    weights = {"dense": [("kernel", np.zeros((3, 2))), ("bias", np.zeros(2))]}
    assert from_config(config, weights).predict(np.ones((1, 3))).shape == (1, 2)
    edit(config)
    with pytest.raises(WeightFormatError):
        from_config(config, weights)


@pytest.mark.parametrize("header", [
    b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,\x00), }",   # SyntaxError
    b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,",            # TokenError
    b"{'descr': ['<f4'], 'fortran_order': False, 'shape': (2,), }",     # TypeError
])
def test_mangled_npy_header_in_fastgate_file_is_a_weight_format_error(seeds, tmp_path, header):
    # were: SyntaxError / tokenize.TokenError / TypeError from NumPy's header parser
    data, suffix = seeds["model.fastgate"]

    def mangled(raw):
        padded = header + b" " * (-(len(header) + 11) % 64) + b"\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(padded)) + padded + b"\0" * 8
    path = write(tmp_path, rezip(data, lambda n: n.endswith(".npy"), mangled), suffix)
    with pytest.raises(WeightFormatError, match="unreadable array"):
        fastgate.load(path)


def test_hdf5_global_heap_that_libhdf5_would_loop_on_is_refused(seeds, tmp_path):
    # was: a hang inside libhdf5 (reading any string attribute walks the heap forever when
    # a free-space object has size 0). Run in a subprocess so that a regression fails the
    # test instead of hanging the suite.
    import subprocess
    import sys

    data = bytearray(seeds["model.h5"][0])

    def free_space_object():
        """Offset of the first free-space object (index 0) of a heap collection."""
        start = data.find(b"GCOL")
        while start != -1:
            end = start + int.from_bytes(data[start + 8:start + 16], "little")
            at = start + 16
            while end - at >= 16:
                if int.from_bytes(data[at:at + 2], "little") == 0:
                    return at
                at += 16 + (int.from_bytes(data[at + 8:at + 16], "little") + 7) // 8 * 8
            start = data.find(b"GCOL", start + 4)
        raise AssertionError("no free space in the seed's global heaps")

    at = free_space_object()
    data[at + 8:at + 16] = bytes(8)
    path = write(tmp_path, bytes(data), ".h5")
    code = ("import sys, fastgate\n"
            "try:\n    fastgate.load(sys.argv[1])\n"
            "except fastgate.WeightFormatError as error:\n    print(error)\n")
    # from another directory: `python -c` puts the cwd first on the path
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                            text=True, timeout=60, env=subprocess_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "corrupt global heap" in result.stdout
