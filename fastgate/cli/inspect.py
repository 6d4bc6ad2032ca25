"""``fastgate inspect FILE``: the format, who saved it, and a table of the layers."""

from __future__ import annotations

import argparse
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .. import formats
from ..errors import FastgateError, UnsupportedLayerError
from ._common import count_parameters, debug_options, load_model, loading_options, table

_TABLE_HEADER = ["name", "kind", "input", "hidden/out", "dirs", "activations",
                 "gates (file -> fastgate)", "options", "params"]


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``inspect`` command to ``commands``."""
    parser = commands.add_parser(
        "inspect", parents=[debug_options(), loading_options()],
        help="show what a model file holds",
        description="Format, the framework (and version) that saved it, layers, sizes, "
                    "activations, gate order and parameter counts.")
    parser.add_argument("file",
                        help=".keras, .h5, .weights.h5, .pt, .safetensors, .fastgate, .onnx")
    parser.set_defaults(handler=command_inspect)


# ============================================================================ the file
def _describe_native(path: str) -> dict[str, str]:
    with zipfile.ZipFile(path) as archive:
        document = json.loads(archive.read("fastgate.json"))
    return {"format": f"fastgate (format version {document.get('version')})",
            "saved_by": f"fastgate {document.get('fastgate_version', '?')}"}


def _describe_safetensors(path: str) -> dict[str, str]:
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(min(size, 100_000_000)))
    metadata = header.get("__metadata__") or {}
    saved_by = ", ".join(f"{k}={v}" for k, v in metadata.items()) or "no metadata"
    return {"format": "safetensors", "saved_by": f"PyTorch? ({saved_by})"}


def _describe_torch_zip(path: str) -> dict[str, str]:
    with zipfile.ZipFile(path) as archive:
        version = [archive.read(n).decode().strip() for n in archive.namelist()
                   if n.endswith(".data/version")]
    detail = f", serialization version {version[0]}" if version else ""
    return {"format": f"PyTorch torch.save (zip{detail})",
            "saved_by": "PyTorch (the file does not record the version)"}


def _describe_torch_legacy(path: str) -> dict[str, str]:
    return {"format": "PyTorch torch.save (legacy format)",
            "saved_by": "PyTorch (the file does not record the version)"}


def _describe_keras_archive(path: str) -> dict[str, str]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        metadata = json.loads(archive.read("metadata.json")) if "metadata.json" in names \
            else {}
    saved = metadata.get("date_saved")
    return {"format": "Keras 3 archive (.keras)",
            "saved_by": f"Keras {metadata.get('keras_version', '?')}"
                        + (f", saved {saved}" if saved else "")}


def _describe_keras_hdf5(path: str) -> dict[str, str]:
    from ..importers.keras_hdf5 import open_hdf5, read_attribute

    with open_hdf5(path, path) as handle:
        version = read_attribute(handle, "keras_version", path)
        backend = read_attribute(handle, "backend", path)
        if read_attribute(handle, "model_config", path) is not None:
            kind = "Keras full model (HDF5)"
        elif "layers" in handle:
            kind = "Keras 3 weights (.weights.h5)"
        else:
            kind = "Keras weights (HDF5, legacy layout)"
    saved_by = f"Keras {version or '?'}" + (f" (backend {backend})" if backend else "")
    return {"format": kind, "saved_by": saved_by}


def _describe_onnx(path: str) -> dict[str, str]:
    from ..importers.protobuf import read_model

    model = read_model(path)
    producer = f"{model.producer_name or '?'} {model.producer_version}".strip()
    opsets = ", ".join(f"{domain or 'ai.onnx'} {version}"
                       for domain, version in model.opset_import.items())
    return {"format": f"ONNX (IR version {model.ir_version}, opset {opsets})",
            "saved_by": producer}


_DESCRIBERS = {formats.FASTGATE: _describe_native, formats.ONNX: _describe_onnx, formats.SAFETENSORS: _describe_safetensors,
               formats.TORCH_ZIP: _describe_torch_zip,
               formats.TORCH_LEGACY: _describe_torch_legacy,
               formats.KERAS_ARCHIVE: _describe_keras_archive,
               formats.KERAS_HDF5: _describe_keras_hdf5}


def describe_file(path: str) -> dict[str, str]:
    """What kind of file ``path`` is: ``{"format", "saved_by", "source"}``, ``source`` being
    ``"fastgate"``, ``"keras"``, ``"torch"`` or ``"onnx"`` (whose gate order the file
    stores)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: is a directory, expected a model file")
    file_format = formats.detect_format(path)
    if file_format == formats.UNKNOWN:
        return {"format": "unknown", "saved_by": "?", "source": "fastgate"}
    described = _DESCRIBERS[file_format](path)
    described["source"] = formats.framework_of(file_format)
    return described


# ============================================================================ the layers
def _gates(cell: str, source: str) -> str:
    """``"zrn -> rzn"``: the gate order in the file (``source``) and in fastgate."""
    from ..layout import GATE_ORDERS

    stored, ours = GATE_ORDERS[source][cell], GATE_ORDERS["fastgate"][cell]
    if cell == "rnn":
        return "-"
    return stored if stored == ours else f"{stored} -> {ours}"


def _recurrent_row(name: str, obj: Any, layer: Any, source: str, dirs: str,
                   options: list[str], params: str) -> list[str]:
    """The table row of a RecurrentLayer (alone, in a cell, Recurrent or Bidirectional)."""
    from ..cells import _Cell
    from ..ops import Bidirectional, Recurrent

    kind = {"lstm": "LSTM", "gru": "GRU", "rnn": "SimpleRNN"}[layer.cell]
    if isinstance(obj, _Cell):
        kind += "Cell"
    hidden = str(layer.hidden_size) + (f" (proj {layer.proj_size})" if layer.proj_size
                                       else "")
    if layer.num_layers > 1:
        hidden += f" x{layer.num_layers} layers"
    if layer.bidirectional:
        dirs = "2"
    activations = layer.activation if layer.cell == "rnn" else \
        f"{layer.activation}/{layer.recurrent_activation}"
    if layer.cell == "gru":
        options.append("reset_after" if layer.reset_after else "reset_before")
    if getattr(layer, "peepholes", False):
        options.append("peepholes")
    if layer.cell == "lstm" and getattr(layer, "cell_activation", layer.activation) \
            != layer.activation:
        options.append(f"cell_activation={layer.cell_activation}")
    if getattr(layer, "clip", None) is not None:
        options.append(f"clip={layer.clip:g}")
    if getattr(layer, "input_forget", False):
        options.append("input_forget")
    if layer.batch_first and not isinstance(obj, (Recurrent, Bidirectional)):
        options.append("batch_first")
    if layer.dtype != np.float32:
        options.append(layer.dtype.name)
    return [name, kind, str(layer.input_size), hidden, dirs, activations,
            _gates(layer.cell, source), " ".join(options), params]


def _layer_row(name: str, obj: Any, source: str) -> list[str]:
    """One table row describing ``obj``: name, kind, input, hidden, dirs, activations,
    gate order, options, parameters."""
    from ..cells import _Cell
    from ..layers import RecurrentLayer
    from ..ops import Bidirectional, Dense, Embedding, Recurrent

    options: list[str] = []
    layer, dirs, obj_options = obj, "1", None
    if isinstance(obj, Bidirectional):
        layer, dirs = obj.forward.layer, "2"
        options.append(f"merge={obj.merge_mode}")
        obj_options = obj.forward
    elif isinstance(obj, Recurrent):
        layer, obj_options = obj.layer, obj
    if obj_options is not None:
        options += [key for key in ("return_sequences", "return_state", "go_backwards",
                                    "stateful") if getattr(obj_options, key)]
    if isinstance(layer, _Cell):
        options.append("one step")
        layer = layer.layer
    params = f"{count_parameters(obj):,}"
    if isinstance(layer, RecurrentLayer):
        return _recurrent_row(name, obj, layer, source, dirs, options, params)
    if isinstance(obj, Dense):
        return [name, "Dense", str(obj.in_features), str(obj.out_features), "-",
                obj.activation, "-", "" if obj.bias is not None else "no bias", params]
    if isinstance(obj, Embedding):
        return [name, "Embedding", f"ids<{obj.num_embeddings}", str(obj.embedding_dim), "-",
                "-", "-", "mask_zero" if obj.mask_zero else "", params]
    return [name, type(obj).__name__, "-", "-", "-", getattr(obj, "activation", "-") or "-",
            "-", repr(obj), params]


def _torch_modules(path: str) -> list[tuple[str, Any]]:
    """Every module of a PyTorch file, imported one by one: ``[(prefix, object)]``; a module
    that cannot be imported gives ``(prefix, "not importable: why")``."""
    from ..importers.torch import from_torch, load_state_dict

    state = load_state_dict(path)
    prefixes: list[str] = []
    for key in state:
        module = key.rpartition(".")[0]
        if module not in prefixes:
            prefixes.append(module)
    modules: list[tuple[str, Any]] = []
    for prefix in prefixes:
        sub = {key: value for key, value in state.items()
               if key.rpartition(".")[0] == prefix}
        names = {key.rpartition(".")[2] for key in sub}
        kind = "embedding" if names == {"weight"} and \
            next(iter(sub.values())).ndim == 2 else None
        label = prefix or "(module)"
        try:
            obj = from_torch(sub, kind=kind)
        except FastgateError as error:
            modules.append((label, f"not importable: {error}"))
            continue
        if kind == "embedding":
            label += " (Embedding or Linear without bias)"
        modules.append((label, obj))
    return modules


def _graph_contents(model: Any) -> list[tuple[str, Any]]:
    """Print an ONNX graph as fastgate maps it (its model summary: one line per node it
    runs, constants folded); its layers."""
    from ..importers.onnx import OnnxRecurrent
    from ..ops import Dense, Recurrent

    inputs = ", ".join(f"{name} {dtype.name} {shape}" for name, shape, dtype in
                       zip(model.input_names, model.input_shapes, model.input_dtypes))
    print(f"contents:  ONNX graph {model.name!r} as a fastgate Model of {len(model.nodes)} "
          f"nodes (constants folded): inputs {inputs}; outputs {model.output_names}")
    print("graph:")
    for line in model.summary().splitlines()[1:]:
        print("  " + line)
    named: list[tuple[str, Any]] = []
    for node in model.nodes:
        op = node.op
        function = getattr(op, "function", None)
        if isinstance(op, Recurrent):
            named.append((node.name, op.layer))
        elif isinstance(op, Dense):
            named.append((node.name, op))
        elif isinstance(function, OnnxRecurrent):
            for layer, reverse in function.layers:
                named.append((node.name + (" (reverse)" if reverse else ""), layer))
        elif hasattr(function, "embedding"):
            named.append((node.name, function.embedding))
    return named


# ============================================================================ the command
def _loaded_contents(path: str, args: argparse.Namespace) -> tuple[list[tuple[str, Any]],
                                                                      bool]:
    """Print the ``contents:`` line of a loaded file; its ``[(name, object)]`` and whether
    the objects form a plain chain."""
    from ..model import MODEL_INPUT, Model

    obj = load_model(path, args)
    if isinstance(obj, Model) and any(d is not None for d in obj.input_dtypes):
        return _graph_contents(obj), True
    if not isinstance(obj, Model):
        print(f"contents:  {obj!r}")
        return [(Path(path).stem, obj)], True
    def shown(shape: Any) -> str:
        return "any" if shape is None else "(" + ", ".join(
            "B" if k == 0 else ("*" if d is None else str(d)) for k, d in enumerate(shape)) + ")"

    if len(obj.input_shapes) == 1:
        inputs = f"input shape {shown(obj.input_shape)}"
    else:
        inputs = "inputs " + ", ".join(f"{name} {shown(shape)}" for name, shape in
                                       zip(obj.input_names, obj.input_shapes))
    print(f"contents:  Model {obj.name!r}, {inputs}" + (", stateful" if obj.stateful else ""))
    named = [(node.name, node.op) for node in obj.nodes]
    sources = [("input" if node.source[0] == MODEL_INPUT else
                obj.nodes[node.source[0]].name) for node in obj.nodes]
    chain = all(s == ("input" if k == 0 else obj.nodes[k - 1].name) and node.is_plain
                for k, (s, node) in enumerate(zip(sources, obj.nodes)))
    return named, chain


def command_inspect(args: argparse.Namespace) -> int:
    """``fastgate inspect FILE``: the format, who saved it, and a table of the layers."""
    path = args.file
    described = describe_file(path)
    print(f"file:      {path} ({os.path.getsize(path) / 1024:.1f} kB)")
    print(f"format:    {described['format']}")
    source = described["source"]
    if source == "keras":
        return _inspect_keras(path, args, described)
    print(f"saved by:  {described['saved_by']}")
    if source == "torch" and args.prefix is None and args.kind is None:
        named, chain = _torch_modules(path), True
        print(f"contents:  PyTorch state_dict of {len(named)} module(s)")
    else:
        named, chain = _loaded_contents(path, args)
    return _print_layers(named, chain, source, args)


def _inspect_keras(path: str, args: argparse.Namespace, described: dict[str, str]) -> int:
    """The Keras version that saved the file (or what is assumed), what is converted from
    older formats, and the layers; for a file fastgate refuses, which layer and why."""
    from ..errors import WeightFormatError
    from ..importers.keras import keras_saved_by

    try:
        saved = keras_saved_by(path, args.architecture)
        print(f"saved by:  {saved.describe()}")
        for note in saved.notes:
            print(f"converts:  {note}")
    except (WeightFormatError, ValueError) as error:  # a weights file without architecture
        print(f"saved by:  {described['saved_by']} ({error})")
    try:
        named, chain = _loaded_contents(path, args)
    except WeightFormatError as error:  # UnsupportedLayerError included
        kind = "unsupported" if isinstance(error, UnsupportedLayerError) else "unreadable"
        print(f"refused:   {kind}: {error}")
        if error.layer is not None:
            print(f"layer:     {error.layer}")
        return 1
    return _print_layers(named, chain, "keras", args)


def _print_layers(named: list[tuple[str, Any]], chain: bool, source: str,
                  args: argparse.Namespace) -> int:
    """The table of the layers, the gate note, the graph note and the parameter count."""
    importable = [(name, obj) for name, obj in named if not isinstance(obj, str)]
    if importable:
        print("layers:")
        print(table([_TABLE_HEADER] + [_layer_row(name, obj, source)
                                       for name, obj in importable]))
    for name, problem in named:
        if isinstance(problem, str):
            print(f"  {name}: {problem}")
    if importable and source != "fastgate":
        framework = {"keras": "Keras", "torch": "PyTorch", "onnx": "ONNX"}.get(source, source)
        print(f"gates:     the file stores {framework}'s gate order; fastgate reorders once, "
              f"at load")
    if source != "torch" or args.prefix is not None or args.kind is not None:
        if not chain:
            print("graph:     not a plain chain; see fastgate.load(FILE).summary()")
    total = sum(count_parameters(obj) for _, obj in importable)
    print(f"total:     {total:,} parameters")
    return 0
