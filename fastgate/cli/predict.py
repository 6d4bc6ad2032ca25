"""``fastgate predict FILE --input x.npy``: run a model, print and save the outputs.

``--input 'dir/*.npy' --output OUTDIR [--scheduler ADDRESS]`` scores many files
(:mod:`fastgate.cli.predict_files`).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError
from ._common import debug_options, format_time, load_model, loading_options, outputs, preview
from .predict_files import names_many_files, predict_files


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``predict`` command to ``commands``."""
    parser = commands.add_parser(
        "predict", parents=[debug_options(), loading_options()],
        help="run a model on a saved array",
        description="Run FILE on the array in --input (.npy; .npz: first array or --key; "
                    ".csv: a single-feature series, one column -> (1, T, 1), B rows -> "
                    "(B, T, 1)). With a pattern such as 'dir/*.npy' (or a directory), score "
                    "every file into --output OUTDIR, one output per input under the same "
                    "name, in this process or on a Dask cluster (--scheduler).")
    parser.add_argument("file")
    parser.add_argument("--input", "-i", required=True, metavar="ARRAY",
                        help="an array file, or a pattern / directory of them (quote it)")
    parser.add_argument("--output", "-o", metavar="ARRAY",
                        help=".npy (the first output) or .npz (every output); for many "
                             "inputs, a directory")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="score the files on the Dask cluster at ADDRESS "
                             "(tcp://host:8786; needs fastgate[dask])")
    parser.add_argument("--key", help="the array to read from an .npz input")
    parser.add_argument("--lengths", metavar="ARRAY",
                        help="(B,) valid length of each sequence (LSTM/GRU/RNN layers)")
    parser.add_argument("--batch-size", type=int, metavar="N",
                        help="run N sequences at a time (with --scheduler: per task)")
    parser.set_defaults(handler=command_predict)


def read_array(path: str, key: str | None, what: str) -> np.ndarray:
    """An array from ``.npy``, ``.npz`` (first array, or ``key``) or ``.csv``."""
    lowered = path.lower()
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path}: no such file")
    if lowered.endswith(".csv"):
        if key is not None:
            raise ConfigError("--key applies to .npz files")
        return read_csv(path)
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


def read_csv(path: str) -> np.ndarray:
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
    values = np.array(rows, np.float32)
    series = values.T if values.shape[1] == 1 else values
    return series[:, :, None]


def output_names(obj: Any, count: int) -> list[str]:
    """Names of the ``count`` outputs of ``obj`` (``output``, ``h_n``, ``c_n``...)."""
    from ..cells import LSTMCell
    from ..layers import RecurrentLayer

    if isinstance(obj, RecurrentLayer):
        return ["output", "h_n", "c_n"][:count]
    if isinstance(obj, LSTMCell):
        return ["h", "c"]
    if hasattr(obj, "output_names"):   # a Model (Keras layer names) or an ONNX graph
        return list(obj.output_names)
    return ["output"] if count == 1 else [f"output_{k}" for k in range(count)]


def _save_outputs(path: str, names: list[str], values: list[np.ndarray]) -> None:
    """Write every output to an ``.npz`` file, or the first one to an ``.npy`` file."""
    if str(path).endswith(".npz"):
        np.savez(path, **dict(zip(names, values)))
        print(f"wrote {path} ({', '.join(names)})")
        return
    np.save(path, values[0])
    rest = f"; {', '.join(names[1:])} not saved: use a .npz file to keep them" \
        if len(values) > 1 else ""
    print(f"wrote {path} ({names[0]}{rest})")


def command_predict(args: argparse.Namespace) -> int:
    """``fastgate predict FILE --input x.npy``: run the model, print and save the outputs."""
    import fastgate

    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be positive, got {args.batch_size}")
    obj = load_model(args.file, args)
    if names_many_files(args):
        return predict_files(args, obj, lambda path: read_array(path, args.key, "--input"),
                             output_names)
    x = read_array(args.input, args.key, "--input")
    lengths = None if args.lengths is None else read_array(args.lengths, None, "--lengths")
    if lengths is not None:
        lengths = lengths.reshape(-1) if lengths.ndim > 1 and lengths.size == max(
            lengths.shape) else lengths
    start = time.perf_counter()
    values = outputs(obj, x, lengths, args.batch_size)
    elapsed = time.perf_counter() - start
    names = output_names(obj, len(values))
    print(f"model:  {obj!r}")
    print(f"input:  {args.input} {x.shape} {x.dtype}"
          + ("" if lengths is None else f", lengths {lengths.tolist()[:8]}"
             + ("..." if len(lengths) > 8 else "")))
    for name, value in zip(names, values):
        print(f"{name}: {value.shape} {value.dtype}")
        print("    " + preview(value))
    print(f"time:   {format_time(elapsed)} ({fastgate.backend()} backend)")
    if args.output:
        _save_outputs(args.output, names, values)
    return 0
