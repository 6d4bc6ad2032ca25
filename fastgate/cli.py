"""The ``fastgate`` command line (also ``python -m fastgate``).

Commands:

* ``fastgate inspect FILE``: what a model file holds (format, who saved it, layers, gates);
* ``fastgate convert IN OUT``: any supported file to fastgate's own format;
* ``fastgate predict FILE --input x.npy``: run a model on a saved array;
* ``fastgate bench FILE``: latency and throughput, against the NumPy oracle (and PyTorch);
* ``fastgate demo``: the pretrained models shipped in the package, checked and timed.

Errors print one line, ``fastgate: error: ...``, and exit with status 1 (``--debug`` shows
the traceback); usage errors exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from . import __version__
from .errors import ConfigError, FastgateError, InputError

__all__ = ["main", "build_parser", "demo_classifier", "DATA_DIR"]

#: Where the demo models live (package data).
DATA_DIR = Path(__file__).resolve().parent / "data"

_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


# ============================================================================ helpers
def _load(path: str, args: argparse.Namespace) -> Any:
    """The model or layer in ``path``, honouring the loading options of the command."""
    import fastgate
    from .importers.torch import from_torch

    prefix = getattr(args, "prefix", None)
    kind = getattr(args, "kind", None)
    batch_first = getattr(args, "batch_first", None)
    if prefix is not None or kind is not None or batch_first:
        if not str(path).lower().endswith(_TORCH_SUFFIXES) and not _torch_zip(path):
            raise ConfigError("--prefix, --kind and --batch-first apply to PyTorch files "
                              "(.pt, .pth, .safetensors)")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file")
        return from_torch(path, prefix=prefix or "", batch_first=batch_first or None,
                          kind=kind)
    return fastgate.load(path, architecture=getattr(args, "architecture", None))


def _torch_zip(path: str) -> bool:
    from .loading import _is_torch_zip

    return _is_torch_zip(path)


def _median_seconds(function: Callable[[], object], repeat: int,
                    progress: "_Progress | None" = None, warmup: int = 1) -> float:
    """Median wall time of ``function`` over ``repeat`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
        if progress is not None:
            progress.advance()
    return float(np.median(times))


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` BLAS threads (and PyTorch threads, if torch is loaded),
    then restore the previous counts."""
    import fastgate

    if count is None:
        yield
        return
    if count < 1:
        raise ConfigError(f"--threads must be positive, got {count}")
    try:
        import torch
    except ImportError:
        torch = None
    before = fastgate.get_num_threads(), (torch.get_num_threads() if torch else None)
    fastgate.set_num_threads(count)
    if torch:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        fastgate.set_num_threads(before[0])
        if torch:
            torch.set_num_threads(before[1])


class _Progress:
    """A text progress bar on stderr, ``[#####.....] 12/40 label``; silent if disabled."""

    def __init__(self, total: int, enabled: bool, width: int = 30) -> None:
        self.total = max(1, total)
        self.done = 0
        self.enabled = enabled
        self.width = width
        self.label = ""

    def advance(self) -> None:
        self.done += 1
        if self.enabled:
            filled = self.width * self.done // self.total
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (self.width - filled)}] "
                             f"{self.done}/{self.total} {self.label:<10}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * (self.width + 30) + "\r")
            sys.stderr.flush()


def _preview(array: np.ndarray) -> str:
    """A few values of ``array``, NumPy-style, in a few lines (the first entry of a 3-d+
    array)."""
    array = np.asarray(array)
    label = ""
    if array.ndim >= 3:
        label, array = f"[0] of {array.shape[0]}: ", array[0]
    with np.printoptions(precision=4, suppress=True, threshold=12, edgeitems=2,
                         linewidth=88):
        return label + np.array2string(array, prefix="    " + " " * len(label))


def _format_count(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _format_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _faster(ours: float, theirs: float) -> str:
    """``"4.2x faster"`` (or ``"1.5x slower"``): fastgate's time ``ours`` vs ``theirs``."""
    ratio = theirs / ours
    return f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"


def _runs(count: int) -> str:
    return f"{count} run" + ("" if count == 1 else "s")


def _table(rows: list[list[str]], indent: str = "  ") -> str:
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    return "\n".join(indent + "  ".join(cell.ljust(width) for cell, width in
                                        zip(row, widths)).rstrip() for row in rows)


# ============================================================================ describing
def _count_parameters(obj: Any) -> int:
    from .model import _count_parameters as count

    return count(obj)


def _gates(cell: str, source: str) -> str:
    """``"zrn -> rzn"``: the gate order in the file (``source``) and in fastgate."""
    from .layout import GATE_ORDERS

    stored, ours = GATE_ORDERS[source][cell], GATE_ORDERS["fastgate"][cell]
    if cell == "rnn":
        return "-"
    return stored if stored == ours else f"{stored} -> {ours}"


def _layer_row(name: str, obj: Any, source: str) -> list[str]:
    """One table row describing ``obj``: name, kind, input, hidden, dirs, activations,
    gate order, options, parameters."""
    from .cells import _Cell
    from .layers import RecurrentLayer
    from .ops import Bidirectional, Dense, Embedding, Recurrent

    options: list[str] = []
    layer = obj
    dirs = "1"
    if isinstance(obj, Bidirectional):
        layer, dirs = obj.forward.layer, "2"
        options.append(f"merge={obj.merge_mode}")
        obj_options = obj.forward
    elif isinstance(obj, Recurrent):
        layer, obj_options = obj.layer, obj
    else:
        obj_options = None
    if obj_options is not None:
        options += [key for key in ("return_sequences", "return_state", "go_backwards",
                                    "stateful") if getattr(obj_options, key)]
    if isinstance(layer, _Cell):
        options.append("one step")
        layer = layer.layer
    params = f"{_count_parameters(obj):,}"
    if isinstance(layer, RecurrentLayer):
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
        gates = _gates(layer.cell, source)
        if layer.cell == "gru":
            options.append("reset_after" if layer.reset_after else "reset_before")
        if layer.batch_first and not isinstance(obj, (Recurrent, Bidirectional)):
            options.append("batch_first")
        if layer.dtype != np.float32:
            options.append(layer.dtype.name)
        return [name, kind, str(layer.input_size), hidden, dirs, activations, gates,
                " ".join(options), params]
    if isinstance(obj, Dense):
        return [name, "Dense", str(obj.in_features), str(obj.out_features), "-",
                obj.activation, "-", "" if obj.bias is not None else "no bias", params]
    if isinstance(obj, Embedding):
        return [name, "Embedding", f"ids<{obj.num_embeddings}", str(obj.embedding_dim), "-",
                "-", "-", "mask_zero" if obj.mask_zero else "", params]
    return [name, type(obj).__name__, "-", "-", "-", getattr(obj, "activation", "-") or "-",
            "-", repr(obj), params]


_TABLE_HEADER = ["name", "kind", "input", "hidden/out", "dirs", "activations",
                 "gates (file -> fastgate)", "options", "params"]


def _describe_objects(named: list[tuple[str, Any]], source: str) -> str:
    rows = [_TABLE_HEADER] + [_layer_row(name, obj, source) for name, obj in named]
    return _table(rows)


def _file_format(path: str) -> dict[str, Any]:
    """What kind of file ``path`` is: ``{"format", "saved_by", "source"}``."""
    from .importers.keras_hdf5 import is_hdf5
    from .importers.safetensors import is_safetensors
    from .serialization import is_native

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: is a directory, expected a model file")
    if is_native(path):
        with zipfile.ZipFile(path) as archive:
            document = json.loads(archive.read("fastgate.json"))
        return {"format": f"fastgate (format version {document.get('version')})",
                "saved_by": f"fastgate {document.get('fastgate_version', '?')}",
                "source": "fastgate"}
    lowered = path.lower()
    if lowered.endswith(".safetensors") or is_safetensors(path):
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(min(size, 100_000_000)))
        metadata = header.get("__metadata__") or {}
        saved_by = ", ".join(f"{k}={v}" for k, v in metadata.items()) or "no metadata"
        return {"format": "safetensors", "saved_by": f"PyTorch? ({saved_by})",
                "source": "torch"}
    if _torch_zip(path):
        with zipfile.ZipFile(path) as archive:
            version = [archive.read(n).decode().strip() for n in archive.namelist()
                       if n.endswith(".data/version")]
        detail = f", serialization version {version[0]}" if version else ""
        return {"format": f"PyTorch torch.save (zip{detail})",
                "saved_by": "PyTorch (the file does not record the version)",
                "source": "torch"}
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            metadata = json.loads(archive.read("metadata.json")) \
                if "metadata.json" in names else {}
        saved = metadata.get("date_saved")
        return {"format": "Keras 3 archive (.keras)",
                "saved_by": f"Keras {metadata.get('keras_version', '?')}"
                            + (f", saved {saved}" if saved else ""),
                "source": "keras"}
    if is_hdf5(path):
        from .importers.keras_hdf5 import open_hdf5, read_attribute

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
        return {"format": kind, "saved_by": saved_by, "source": "keras"}
    if lowered.endswith(_TORCH_SUFFIXES):
        return {"format": "PyTorch torch.save (legacy format)",
                "saved_by": "PyTorch (the file does not record the version)",
                "source": "torch"}
    return {"format": "unknown", "saved_by": "?", "source": "fastgate"}


def _torch_modules(path: str) -> list[tuple[str, Any]]:
    """Every module of a PyTorch file, imported one by one: ``[(prefix, object)]``."""
    from .importers.torch import from_torch, load_state_dict

    state = load_state_dict(path)
    prefixes: list[str] = []
    for key in state:
        module = key.rpartition(".")[0]
        if module not in prefixes:
            prefixes.append(module)
    modules = []
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


# ============================================================================ commands
def command_inspect(args: argparse.Namespace) -> int:
    """``fastgate inspect FILE``: the format, who saved it, and a table of the layers."""
    from .model import MODEL_INPUT, Model

    path = args.file
    described = _file_format(path)
    print(f"file:      {path} ({os.path.getsize(path) / 1024:.1f} kB)")
    print(f"format:    {described['format']}")
    print(f"saved by:  {described['saved_by']}")
    source = described["source"]
    if source == "torch" and args.prefix is None and args.kind is None:
        named = _torch_modules(path)
        print(f"contents:  PyTorch state_dict of {len(named)} module(s)")
    else:
        obj = _load(path, args)
        if isinstance(obj, Model):
            shape = "any" if obj.input_shape is None else "(" + ", ".join(
                "B" if k == 0 else ("*" if d is None else str(d))
                for k, d in enumerate(obj.input_shape)) + ")"
            print(f"contents:  Model {obj.name!r}, input shape {shape}"
                  + (", stateful" if obj.stateful else ""))
            named = [(node.name, node.op) for node in obj.nodes]
            sources = [("input" if node.source[0] == MODEL_INPUT else
                        obj.nodes[node.source[0]].name) for node in obj.nodes]
            chain = all(s == ("input" if k == 0 else obj.nodes[k - 1].name)
                        for k, s in enumerate(sources))
        else:
            print(f"contents:  {obj!r}")
            named, chain = [(Path(path).stem, obj)], True
    importable = [(name, obj) for name, obj in named if not isinstance(obj, str)]
    if importable:
        print("layers:")
        print(_describe_objects(importable, source))
    for name, problem in named:
        if isinstance(problem, str):
            print(f"  {name}: {problem}")
    if importable and source != "fastgate":
        framework = {"keras": "Keras", "torch": "PyTorch"}.get(source, source)
        print(f"gates:     the file stores {framework}'s gate order; fastgate reorders once, "
              f"at load")
    if source != "torch" or args.prefix is not None or args.kind is not None:
        if not chain:
            print("graph:     not a plain chain; see fastgate.load(FILE).summary()")
    total = sum(_count_parameters(obj) for _, obj in importable)
    print(f"total:     {total:,} parameters")
    return 0


def command_convert(args: argparse.Namespace) -> int:
    """``fastgate convert IN OUT``: save any supported file in fastgate's own format."""
    import fastgate

    obj = _load(args.input, args)
    if not str(args.output).endswith(".fastgate"):
        raise ConfigError(f"the output file must end with .fastgate (fastgate's own format), "
                          f"got {args.output!r}")
    if os.path.exists(args.output) and not args.force:
        raise FileExistsError(f"{args.output} exists; pass --force to overwrite it")
    fastgate.save(obj, args.output)
    copy = fastgate.load(args.output)
    x = _random_input(copy, batch=2, steps=5, rng=np.random.default_rng(0))
    same = all(np.array_equal(a, b) for a, b in zip(_outputs(obj, x), _outputs(copy, x)))
    if not same:
        raise FastgateError(f"{args.output}: the saved copy does not reproduce the model's "
                            f"outputs (please report this)")
    print(f"converted {args.input} -> {args.output} ({os.path.getsize(args.output) / 1024:.1f}"
          f" kB): {copy!r}")
    print("checked: the saved copy gives identical outputs on random input")
    return 0


# ---------------------------------------------------------------------------- running
def _read_array(path: str, key: str | None, what: str) -> np.ndarray:
    """An array from ``.npy``, ``.npz`` (first array, or ``key``) or ``.csv``."""
    lowered = path.lower()
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path}: no such file")
    if lowered.endswith(".csv"):
        if key is not None:
            raise ConfigError("--key applies to .npz files")
        return _read_csv(path)
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            names = list(loaded.files)
            if not names:
                raise InputError(f"{what} {path}: the .npz file holds no array")
            if key is None:
                return loaded[names[0]]
            if key not in names:
                raise InputError(f"{what} {path}: no array {key!r}; it holds {names}")
            return loaded[key]
    if key is not None:
        raise ConfigError("--key applies to .npz files")
    return loaded


def _read_csv(path: str) -> np.ndarray:
    """A CSV of numbers as a batch of single-feature series: one column of ``T`` values is
    one series ``(1, T, 1)``; ``B`` rows of ``T`` values are ``(B, T, 1)``. A header line of
    names is skipped."""
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    rows = []
    for number, line in enumerate(lines):
        try:
            rows.append([float(cell) for cell in line.split(",")])
        except ValueError:
            if number == 0:
                continue  # a header
            raise InputError(f"{path} line {number + 1}: not numbers: {line[:60]!r}") from None
    if not rows or len({len(row) for row in rows}) != 1:
        raise InputError(f"{path}: expected rows of the same number of values, got "
                         f"{sorted({len(row) for row in rows})}")
    table = np.array(rows, np.float32)
    series = table.T if table.shape[1] == 1 else table
    return series[:, :, None]


def _outputs(obj: Any, x: np.ndarray, lengths: np.ndarray | None = None,
             batch_size: int | None = None) -> list[np.ndarray]:
    """The outputs of ``obj`` on ``x`` as a list of arrays (Model, layer, cell or op)."""
    from .cells import _Cell
    from .layers import RecurrentLayer
    from .model import Model

    if lengths is not None and not isinstance(obj, RecurrentLayer):
        raise ConfigError(f"--lengths applies to LSTM/GRU/RNN layers (e.g. from PyTorch "
                          f"files), not to a {type(obj).__name__}"
                          + (": a Keras model reads padding from its Masking or "
                             "Embedding(mask_zero) layer" if isinstance(obj, Model) else ""))
    if isinstance(obj, Model):
        result = obj.predict(x, batch_size=batch_size)
        return list(result) if isinstance(result, list) else [result]
    if isinstance(obj, RecurrentLayer):
        axis = 0 if obj.batch_first or x.ndim == 2 else 1
        if x.ndim == 2 or batch_size is None or x.shape[axis] <= batch_size:
            out, state = obj(x, lengths=lengths)
            return [out] + list(state if isinstance(state, tuple) else (state,))
        pieces = []
        for start in range(0, x.shape[axis], batch_size):
            rows = slice(start, start + batch_size)
            part = x[rows] if axis == 0 else x[:, rows]
            out, state = obj(part, lengths=None if lengths is None else lengths[rows])
            pieces.append([out] + list(state if isinstance(state, tuple) else (state,)))
        return [np.concatenate([p[0] for p in pieces], axis=axis)] + [
            np.concatenate([p[k] for p in pieces], axis=1) for k in range(1, len(pieces[0]))]
    if isinstance(obj, _Cell):
        result = obj(x)
        return list(result) if isinstance(result, tuple) else [result]
    if callable(obj):
        return [np.asarray(obj(x))]
    raise ConfigError(f"cannot run a {type(obj).__name__}")


def _output_names(obj: Any, count: int) -> list[str]:
    from .cells import LSTMCell
    from .layers import RecurrentLayer

    if isinstance(obj, RecurrentLayer):
        return ["output", "h_n", "c_n"][:count]
    if isinstance(obj, LSTMCell):
        return ["h", "c"]
    return ["output"] if count == 1 else [f"output_{k}" for k in range(count)]


def command_predict(args: argparse.Namespace) -> int:
    """``fastgate predict FILE --input x.npy``: run the model, print and save the outputs."""
    obj = _load(args.file, args)
    x = _read_array(args.input, args.key, "--input")
    lengths = None if args.lengths is None else _read_array(args.lengths, None, "--lengths")
    if lengths is not None:
        lengths = lengths.reshape(-1) if lengths.ndim > 1 and lengths.size == max(
            lengths.shape) else lengths
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be positive, got {args.batch_size}")
    start = time.perf_counter()
    outputs = _outputs(obj, x, lengths, args.batch_size)
    elapsed = time.perf_counter() - start
    names = _output_names(obj, len(outputs))
    print(f"model:  {obj!r}")
    print(f"input:  {args.input} {x.shape} {x.dtype}"
          + ("" if lengths is None else f", lengths {lengths.tolist()[:8]}"
             + ("..." if len(lengths) > 8 else "")))
    for name, value in zip(names, outputs):
        print(f"{name}: {value.shape} {value.dtype}")
        print("    " + _preview(value))
    print(f"time:   {_format_time(elapsed)} ({__import__('fastgate').backend()} backend)")
    if args.output:
        if str(args.output).endswith(".npz"):
            np.savez(args.output, **dict(zip(names, outputs)))
            print(f"wrote {args.output} ({', '.join(names)})")
        else:
            np.save(args.output, outputs[0])
            rest = f"; {', '.join(names[1:])} not saved: use a .npz file to keep them" \
                if len(outputs) > 1 else ""
            print(f"wrote {args.output} ({names[0]}{rest})")
    return 0


# ---------------------------------------------------------------------------- bench
def _random_input(obj: Any, batch: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Random input of the shape ``obj`` takes: ``batch`` sequences of ``steps`` steps."""
    from .cells import _Cell
    from .layers import RecurrentLayer
    from .model import MODEL_INPUT, Model
    from .ops import Bidirectional, Dense, Embedding, Recurrent

    def ids(vocabulary: int, shape: tuple[int, ...]) -> np.ndarray:
        return rng.integers(1 if vocabulary > 1 else 0, vocabulary, size=shape)

    if isinstance(obj, Model):
        first = obj.nodes[0].op if obj.nodes else None
        if isinstance(first, Embedding) and obj.nodes[0].source[0] == MODEL_INPUT:
            shape = obj.input_shape or (None, None)
            fixed = tuple(steps if d is None else d for d in shape[1:])
            return ids(first.num_embeddings, (batch,) + fixed)
        shape = obj.input_shape
        if shape is None:
            width = None
            if isinstance(first, (Recurrent, Bidirectional)):
                layer = first.layer if isinstance(first, Recurrent) else first.forward.layer
                width = layer.input_size
            if width is None:
                raise ConfigError(f"model {obj.name!r} does not record its input shape")
            shape = (None, None, width)
        fixed = [steps if d is None and k == 1 else d for k, d in enumerate(shape[1:], 1)]
        if any(d is None for d in fixed):
            raise ConfigError(f"model {obj.name!r} input shape {shape}: only the batch and "
                              f"steps may be unknown")
        return rng.standard_normal((batch, *fixed)).astype(np.float32)
    if isinstance(obj, RecurrentLayer):
        shape = (batch, steps) if obj.batch_first else (steps, batch)
        return rng.standard_normal(shape + (obj.input_size,)).astype(obj.dtype)
    if isinstance(obj, _Cell):
        return rng.standard_normal((batch, obj.input_size)).astype(obj.dtype)
    if isinstance(obj, Dense):
        return rng.standard_normal((batch, obj.in_features)).astype(obj.dtype)
    if isinstance(obj, Embedding):
        return ids(obj.num_embeddings, (batch, steps))
    raise ConfigError(f"cannot make an input for a {type(obj).__name__}")


_TORCH_ACTIVATIONS = {"linear": None, "relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid",
                      "softmax": "softmax"}


def _torch_equivalent(obj: Any) -> Callable[[np.ndarray], Any] | None:
    """A function running ``obj``'s PyTorch equivalent on a NumPy input, or ``None``.

    Covers layers and cells (through ``to_torch_state_dict``), Dense, Embedding, and models
    that are a chain of Embedding, Recurrent and Dense (padding of ``mask_zero`` ids becomes
    a packed sequence). ``None`` if torch is missing or the model has other parts.
    """
    try:
        import torch
        from torch import nn
    except ImportError:
        return None
    from .cells import _Cell
    from .importers.torch import to_torch_state_dict
    from .layers import RecurrentLayer
    from .model import MODEL_INPUT, Model
    from .ops import Activation, Dense, Embedding, Recurrent

    def tensors(state: dict) -> dict:
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}

    def recurrent_module(layer: RecurrentLayer, batch_first: bool) -> Any:
        classes = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
        options = {"num_layers": layer.num_layers, "bidirectional": layer.bidirectional,
                   "batch_first": batch_first}
        if layer.cell == "lstm" and layer.proj_size:
            options["proj_size"] = layer.proj_size
        if layer.cell == "rnn":
            options["nonlinearity"] = layer.activation
        state = layer.to_torch_state_dict(bias=True)
        module = classes[layer.cell](layer.input_size, layer.hidden_size, **options)
        module.load_state_dict(tensors(state))
        return module.to(torch.float64 if layer.dtype == np.float64 else torch.float32).eval()

    def activation(name: str) -> Callable | None:
        if name not in _TORCH_ACTIVATIONS:
            raise ConfigError(name)
        function = _TORCH_ACTIVATIONS[name]
        if function == "softmax":
            return lambda t: torch.softmax(t, -1)
        return None if function is None else getattr(torch, function)

    def linear(dense: Dense) -> Callable:
        module = nn.Linear(dense.in_features, dense.out_features, bias=dense.bias is not None)
        module.load_state_dict(tensors(to_torch_state_dict(dense)))
        act = activation(dense.activation)
        return module if act is None else (lambda t: act(module(t)))

    try:
        if isinstance(obj, RecurrentLayer):
            module = recurrent_module(obj, obj.batch_first)
            return lambda x: module(torch.from_numpy(x))
        if isinstance(obj, _Cell):
            classes = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}
            layer = obj.layer
            options = {"nonlinearity": layer.activation} if layer.cell == "rnn" else {}
            module = classes[layer.cell](layer.input_size, layer.hidden_size, **options)
            module.load_state_dict(tensors(obj.to_torch_state_dict(bias=True)))
            return lambda x: module(torch.from_numpy(x))
        if isinstance(obj, Dense):
            module = linear(obj)
            return lambda x: module(torch.from_numpy(x))
        if isinstance(obj, Embedding):
            module = nn.Embedding.from_pretrained(torch.from_numpy(obj.table))
            return lambda x: module(torch.from_numpy(x))
        if not isinstance(obj, Model) or obj.outputs != [(len(obj.nodes) - 1, 0)]:
            return None
        steps: list[tuple[str, Any]] = []
        for position, node in enumerate(obj.nodes):
            if node.source != ((MODEL_INPUT, 0) if position == 0 else (position - 1, 0)):
                return None
            op = node.op
            if isinstance(op, Embedding) and position == 0:
                steps.append(("embedding", (nn.Embedding.from_pretrained(
                    torch.from_numpy(op.table)), op.mask_zero)))
            elif isinstance(op, Recurrent) and not (op.go_backwards or op.stateful
                                                    or op.return_state):
                if op.return_sequences and obj.nodes[0].op is not None and isinstance(
                        obj.nodes[0].op, Embedding) and obj.nodes[0].op.mask_zero:
                    return None  # Keras repeats outputs at padding; PyTorch zeroes them
                steps.append(("recurrent", (recurrent_module(op.layer, True),
                                            op.return_sequences)))
            elif isinstance(op, Dense):
                steps.append(("dense", linear(op)))
            elif isinstance(op, Activation) and activation(op.activation) is not None:
                steps.append(("activation", activation(op.activation)))
            else:
                return None
    except (FastgateError, RuntimeError):
        return None

    def run(x: np.ndarray) -> Any:
        from torch.nn.utils.rnn import pack_padded_sequence

        value = torch.from_numpy(np.ascontiguousarray(x))
        lengths = None
        for kind, step in steps:
            if kind == "embedding":
                module, mask_zero = step
                if mask_zero:
                    lengths = (value != 0).sum(1).clamp(min=1)
                value = module(value)
            elif kind == "recurrent":
                module, sequences = step
                if lengths is not None and not sequences:
                    packed = pack_padded_sequence(value, lengths, batch_first=True,
                                                  enforce_sorted=False)
                    _, state = module(packed)
                    value = (state[0] if isinstance(state, tuple) else state)[-1]
                else:
                    out, _ = module(value)
                    value = out if sequences else out[:, -1]
            else:
                value = step(value)
        return value

    return run


def _torch_seconds(function: Callable[[np.ndarray], Any], x: np.ndarray, repeat: int,
                   progress: _Progress | None = None) -> float:
    import torch

    with torch.inference_mode():  # PyTorch's thread pool may need a few calls to settle
        return _median_seconds(lambda: function(x), repeat, progress, warmup=3)


def _oracle_difference(obj: Any, x: np.ndarray) -> float:
    """``max |compiled - oracle|`` over every output, on ``x``."""
    import fastgate

    fast = _outputs(obj, x)
    with fastgate.use_backend("python"):
        reference = _outputs(obj, x)
    return max((float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0)
               for a, b in zip(fast, reference))


def command_bench(args: argparse.Namespace) -> int:
    """``fastgate bench FILE``: latency and throughput on random input, vs oracle and torch."""
    for option in ("batch", "steps", "repeat"):
        if getattr(args, option) < 1:
            raise ConfigError(f"--{option} must be positive, got {getattr(args, option)}")
    with _threads(args.threads):
        return _bench(args)


def _bench(args: argparse.Namespace) -> int:
    import fastgate

    obj = _load(args.file, args)
    x = _random_input(obj, args.batch, args.steps, np.random.default_rng(0))
    torch_run = None if args.no_torch else _torch_equivalent(obj)
    compiled = fastgate.backend() == "compiled"
    oracle_repeat = max(1, args.repeat // 5)
    total = args.repeat + (oracle_repeat if compiled else 0) + \
        (args.repeat if torch_run else 0)
    start = time.perf_counter()
    _outputs(obj, x)
    first = time.perf_counter() - start
    progress = _Progress(total, args.progress or (first * total > 2.0))

    progress.label = fastgate.backend()
    fast = _median_seconds(lambda: _outputs(obj, x), args.repeat, progress)
    oracle = None
    if compiled:
        progress.label = "oracle"
        with fastgate.use_backend("python"):
            oracle = _median_seconds(lambda: _outputs(obj, x), oracle_repeat, progress)
    torch_time = None
    if torch_run is not None:
        progress.label = "pytorch"
        torch_time = _torch_seconds(torch_run, x, args.repeat, progress)
    progress.close()

    batch, steps = _batch_and_steps(obj, x)
    print(f"model:    {obj!r}")
    print(f"input:    {x.shape} {x.dtype}: {batch} sequences x {steps} steps; "
          f"{fastgate.get_num_threads()} BLAS thread(s)")
    print(f"{fastgate.backend() + ':':<9} median {_format_time(fast)} per batch "
          f"({_runs(args.repeat)}), {_format_count(batch / fast)} sequences/s, "
          f"{_format_count(batch * steps / fast)} steps/s")
    if oracle is not None:
        print(f"oracle:   median {_format_time(oracle)} per batch ({_runs(oracle_repeat)}): "
              f"compiled is {_faster(fast, oracle)}; max |compiled - oracle| = "
              f"{_oracle_difference(obj, x):.1e}")
    else:
        print("oracle:   this is the oracle (the compiled extension is not built)")
    if torch_time is not None:
        import torch

        print(f"pytorch:  median {_format_time(torch_time)} per batch ({_runs(args.repeat)}, "
              f"torch {torch.__version__.split('+')[0]}, {torch.get_num_threads()} "
              f"thread(s)): fastgate is {_faster(fast, torch_time)}")
    elif not args.no_torch:
        print("pytorch:  not compared (torch is not installed, or the model has no PyTorch "
              "equivalent)")
    return 0


def _batch_and_steps(obj: Any, x: np.ndarray) -> tuple[int, int]:
    from .layers import RecurrentLayer

    if isinstance(obj, RecurrentLayer) and not obj.batch_first:
        return x.shape[1], x.shape[0]
    return x.shape[0], (x.shape[1] if x.ndim >= 2 and not _is_step(obj) else 1)


def _is_step(obj: Any) -> bool:
    from .cells import _Cell
    from .ops import Dense

    return isinstance(obj, (_Cell, Dense))


# ---------------------------------------------------------------------------- demo
def demo_classifier(state_path: str | os.PathLike, architecture_path: str | os.PathLike
                    ) -> Any:
    """The demo's PyTorch classifier as a fastgate Model, from its state_dict and JSON.

    The PyTorch model is ``Embedding(padding_idx=0) -> LSTM(batch_first) -> Linear`` on the
    last valid state of right-padded sequences (packed); in fastgate that is
    ``Embedding(mask_zero=True) -> Recurrent(LSTM) -> Dense`` (a masked step keeps the
    state, so the last output is the last valid state).
    """
    from .importers.torch import from_torch
    from .model import Model
    from .ops import Embedding, Recurrent

    architecture = json.loads(Path(architecture_path).read_text(encoding="utf-8"))
    if architecture["embedding"].get("padding_idx") != 0:
        raise ConfigError(f"{architecture_path}: the classifier must pad with id 0")
    table = from_torch(state_path, prefix=architecture["embedding"]["prefix"],
                       kind="embedding")
    lstm = from_torch(state_path, prefix=architecture["lstm"]["prefix"], batch_first=True)
    fc = from_torch(state_path, prefix=architecture["fc"]["prefix"], kind="linear")
    nodes = [("embedding", Embedding(table.table, mask_zero=True), (-1, 0)),
             ("lstm", Recurrent(lstm), (0, 0)), ("fc", fc, (1, 0))]
    return Model(nodes, [(2, 0)], input_shape=(None, None), name="classifier")


def _load_forecaster() -> tuple[Any, str]:
    """The Keras forecaster, or its ``.fastgate`` copy when h5py is missing."""
    import fastgate

    try:
        return fastgate.load(DATA_DIR / "forecaster.keras"), "forecaster.keras"
    except ImportError:
        return (fastgate.load(DATA_DIR / "forecaster.fastgate"),
                "forecaster.fastgate (h5py is not installed, so not the .keras file)")


def _speed_line(model: Any, x: np.ndarray, repeat: int) -> str:
    """``speed on B sequences x T steps: compiled .., oracle .., PyTorch ..``."""
    import fastgate

    run = (lambda: model.predict(x))
    fast = _median_seconds(run, repeat)
    line = f"speed on {x.shape[0]} sequences x {x.shape[1]} steps: {fastgate.backend()} " \
           f"{_format_time(fast)}"
    if fastgate.backend() == "compiled":
        with fastgate.use_backend("python"):
            oracle = _median_seconds(run, max(1, repeat // 5))
        line += f", oracle {_format_time(oracle)} ({_faster(fast, oracle)})"
    torch_run = _torch_equivalent(model)
    if torch_run is None:
        return line + "\n    (install torch to compare with PyTorch's speed)"
    torch_time = _torch_seconds(torch_run, x, repeat)
    return line + f", PyTorch {_format_time(torch_time)} ({_faster(fast, torch_time)})"


def _oracle_line(model: Any, x: np.ndarray) -> str:
    import fastgate

    if fastgate.backend() != "compiled":
        return "compiled kernels not built: running the oracle itself"
    return f"{_oracle_difference(model, x):.1e}"


def command_demo(args: argparse.Namespace) -> int:
    """``fastgate demo``: the shipped models, their predictions, checks and speed-up."""
    with _threads(args.threads):
        return _demo(args)


def _demo(args: argparse.Namespace) -> int:
    import fastgate

    summary = json.loads((DATA_DIR / "demo.json").read_text(encoding="utf-8"))
    stored = np.load(DATA_DIR / "demo_inputs.npz")
    repeat = args.repeat
    print(f"fastgate {__version__} demo: {fastgate.backend()} backend, "
          f"{fastgate.get_num_threads()} BLAS thread(s); models in {DATA_DIR}")

    # ---- the Keras GRU forecaster
    info = summary["forecaster"]
    model, loaded = _load_forecaster()
    metrics = info["metrics"]
    x, truth, keras_y = (stored["forecaster_x"], stored["forecaster_y_true"],
                         stored["forecaster_keras"])
    y = model.predict(x)
    print(f"\n[1] forecaster: {info['framework']} GRU, {info['task']}")
    print(f"    loaded {loaded}")
    print(f"    trained for real: held-out MAE {metrics['mae']:.3f}, vs "
          f"{metrics['mae_last_value']:.3f} repeating the last value and "
          f"{metrics['mae_one_season_ago']:.3f} the value one season ago "
          f"(noise std {metrics['noise_std']})")
    rows = [["window ends with", "true next", "Keras", "fastgate"]]
    for k in range(len(x)):
        rows.append([np.array2string(x[k, -3:, 0], precision=2, suppress_small=True),
                     f"{truth[k]:+.3f}", f"{keras_y[k, 0]:+.3f}", f"{y[k, 0]:+.3f}"])
    print(_table(rows, "    "))
    print(f"    max |fastgate - Keras|   = {np.max(np.abs(y - keras_y)):.1e}")
    print(f"    max |compiled - oracle|  = {_oracle_line(model, x)}")
    timing_x = np.concatenate([x] * 11)[:64]
    print("    " + _speed_line(model, timing_x, repeat))

    # ---- the PyTorch LSTM classifier
    info = summary["classifier"]
    architecture = json.loads((DATA_DIR / info["architecture"]).read_text(encoding="utf-8"))
    model = demo_classifier(DATA_DIR / info["file"], DATA_DIR / info["architecture"])
    metrics = info["metrics"]
    ids, lengths, torch_logits = (stored["classifier_ids"], stored["classifier_lengths"],
                                  stored["classifier_torch"])
    logits = model.predict(ids)
    print(f"\n[2] classifier: {info['framework']} Embedding -> LSTM -> Linear, {info['task']}")
    print(f"    loaded {info['file']} + {info['architecture']} (the saved state_dict, read "
          f"without PyTorch)")
    print(f"    trained for real: held-out accuracy {metrics['accuracy']:.1%}, vs "
          f"{metrics['accuracy_bag_of_words']:.1%} counting words (ignoring 'not') and "
          f"{metrics['accuracy_majority']:.1%} always guessing the majority")
    vocabulary, labels = architecture["vocabulary"], architecture["labels"]
    rows = [["sentence", "PyTorch", "fastgate"]]
    for k in range(len(ids)):
        sentence = " ".join(vocabulary[t] for t in ids[k, :lengths[k]])
        rows.append([f'"{sentence}"', _label(torch_logits[k], labels),
                     _label(logits[k], labels)])
    print(_table(rows, "    "))
    print(f"    max |fastgate - PyTorch| = {np.max(np.abs(logits - torch_logits)):.1e} "
          f"(logits)")
    print(f"    max |compiled - oracle|  = {_oracle_line(model, ids)}")
    timing_ids = np.concatenate([ids] * 8)[:64]
    print("    " + _speed_line(model, timing_ids, repeat))
    print(f"\nNext: fastgate inspect {DATA_DIR / 'forecaster.keras'}\n"
          f"      fastgate bench {DATA_DIR / 'classifier.fastgate'} --batch 64 --steps 50")
    return 0


def _label(logits: np.ndarray, labels: list[str]) -> str:
    shifted = np.exp(logits - logits.max())
    probabilities = shifted / shifted.sum()
    best = int(np.argmax(probabilities))
    return f"{labels[best]} {probabilities[best]:.2f}"


# ============================================================================ parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (one place)."""
    # --debug before or after the command; SUPPRESS keeps a command from resetting it.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback on errors")
    loading = argparse.ArgumentParser(add_help=False)
    group = loading.add_argument_group("loading options")
    group.add_argument("--architecture", metavar="JSON",
                       help="Keras weights-only files: the model.to_json() file")
    group.add_argument("--prefix", help="PyTorch files: the module to load, e.g. 'lstm.'")
    group.add_argument("--kind", choices=("lstm", "gru", "rnn", "lstm_cell", "gru_cell",
                                          "rnn_cell", "linear", "embedding"),
                       help="PyTorch files: what the module is (if ambiguous)")
    group.add_argument("--batch-first", action="store_true", default=None,
                       help="PyTorch LSTM/GRU/RNN: inputs are (batch, steps, features)")

    parser = argparse.ArgumentParser(
        prog="fastgate",
        description="Compiled CPU inference for LSTM/GRU/SimpleRNN models trained in Keras "
                    "or PyTorch.",
        epilog="Start with: fastgate demo")
    parser.add_argument("--debug", action="store_true", help="show the traceback on errors")
    parser.add_argument("--version", action="version", version=f"fastgate {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    inspect = commands.add_parser(
        "inspect", parents=[debug, loading], help="show what a model file holds",
        description="Format, the framework (and version) that saved it, layers, sizes, "
                    "activations, gate order and parameter counts.")
    inspect.add_argument("file", help=".keras, .h5, .weights.h5, .pt, .safetensors, .fastgate")
    inspect.set_defaults(handler=command_inspect)

    convert = commands.add_parser(
        "convert", parents=[debug, loading], help="convert a model to fastgate's own format",
        description="Load IN (Keras, PyTorch or fastgate) and save it as OUT (.fastgate); "
                    "the copy is reloaded and checked.")
    convert.add_argument("input", metavar="IN")
    convert.add_argument("output", metavar="OUT", help="a .fastgate file")
    convert.add_argument("--force", action="store_true", help="overwrite OUT")
    convert.set_defaults(handler=command_convert)

    predict = commands.add_parser(
        "predict", parents=[debug, loading], help="run a model on a saved array",
        description="Run FILE on the array in --input (.npy; .npz: first array or --key; "
                    ".csv: a single-feature series, one column -> (1, T, 1), B rows -> "
                    "(B, T, 1)).")
    predict.add_argument("file")
    predict.add_argument("--input", "-i", required=True, metavar="ARRAY")
    predict.add_argument("--output", "-o", metavar="ARRAY",
                         help=".npy (the first output) or .npz (every output)")
    predict.add_argument("--key", help="the array to read from an .npz input")
    predict.add_argument("--lengths", metavar="ARRAY",
                         help="(B,) valid length of each sequence (LSTM/GRU/RNN layers)")
    predict.add_argument("--batch-size", type=int, metavar="N",
                         help="run N sequences at a time")
    predict.set_defaults(handler=command_predict)

    bench = commands.add_parser(
        "bench", parents=[debug, loading], help="measure latency and throughput",
        description="Time FILE on random input against the NumPy oracle, and against "
                    "PyTorch when it is installed and the model has a PyTorch equivalent.")
    bench.add_argument("file")
    bench.add_argument("--batch", type=int, default=32, metavar="N", help="sequences (32)")
    bench.add_argument("--steps", type=int, default=100, metavar="T", help="steps (100)")
    bench.add_argument("--threads", type=int, default=1, metavar="K",
                       help="BLAS (and PyTorch) threads (1)")
    bench.add_argument("--repeat", type=int, default=20, metavar="R",
                       help="timed runs (20; the oracle runs R/5)")
    bench.add_argument("--progress", action="store_true",
                       help="always show the progress bar (shown anyway on long runs)")
    bench.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    bench.set_defaults(handler=command_bench)

    demo = commands.add_parser(
        "demo", parents=[debug], help="run the pretrained models shipped with fastgate",
        description="A Keras GRU forecaster and a PyTorch LSTM classifier, trained by "
                    "scripts/train_demo_models.py: predictions, checks against the "
                    "frameworks' stored outputs and the oracle, and the speed-up.")
    demo.add_argument("--repeat", type=int, default=30, metavar="R", help="timed runs (30)")
    demo.add_argument("--threads", type=int, default=1, metavar="K",
                      help="BLAS (and PyTorch) threads (1: these models are small)")
    demo.set_defaults(handler=command_demo)

    serve = commands.add_parser(
        "serve", parents=[debug], help="serve a model over HTTP (TF Serving REST API)",
        description="Serve MODEL (.keras, .h5, .fastgate) over HTTP with micro-batching and "
                    "batched streaming sessions: POST /v1/models/NAME:predict, /v1/sessions, "
                    "GET /healthz, /metrics (NAME: the file's stem). Needs fastgate[serve]. "
                    "SIGTERM answers the requests in flight, then exits 0.")
    serve.add_argument("model", metavar="MODEL")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8501, help="TCP port (8501)")
    serve.add_argument("--max-batch", type=int, default=64, metavar="N",
                       help="most sequences in one batched pass (64)")
    serve.add_argument("--max-wait-ms", type=float, default=2.0, metavar="MS",
                       help="how long a request waits for others to batch with (2)")
    serve.add_argument("--max-body", type=int, default=4 * 1024 * 1024, metavar="BYTES",
                       help="largest request body; larger ones get 413 (4 MiB)")
    serve.add_argument("--threads", type=int, default=1, metavar="K",
                       help="fastgate kernel threads for each batched pass (1)")
    serve.add_argument("--session-ttl", type=float, default=600.0, metavar="S",
                       help="drop a session after S seconds without a step (600)")
    serve.add_argument("--max-sessions", type=int, default=10_000, metavar="N",
                       help="most live sessions (10000)")
    serve.add_argument("--log-level", default="warning",
                       choices=("critical", "error", "warning", "info", "debug"))
    serve.set_defaults(handler=command_serve)
    return parser


def command_serve(args: argparse.Namespace) -> int:
    """``fastgate serve MODEL``: the HTTP server of :mod:`fastgate.serving.server`."""
    from .serving.server import serve

    return serve(args.model, host=args.host, port=args.port, max_batch=args.max_batch,
                 max_wait_ms=args.max_wait_ms, max_body=args.max_body, threads=args.threads,
                 ttl_s=args.session_ttl, max_sessions=args.max_sessions,
                 log_level=args.log_level)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastgate`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except (FastgateError, OSError, ValueError, ImportError, zipfile.BadZipFile) as error:
        if args.debug:
            raise
        print(f"fastgate: error: {_message(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("fastgate: interrupted", file=sys.stderr)
        return 130


def _message(error: BaseException) -> str:
    """One line saying what went wrong."""
    if isinstance(error, ImportError):
        name = getattr(error, "name", None) or "a package"
        hint = " (HDF5 Keras files need it: pip install h5py)" if name == "h5py" else ""
        if name in ("uvicorn", "httptools", "uvloop"):
            hint = ' (fastgate serve needs it: pip install "fastgate[serve]")'

        return f"this needs {name}, which is not installed{hint}"
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    text = " ".join(str(error).split()) or type(error).__name__
    return text


if __name__ == "__main__":
    sys.exit(main())
