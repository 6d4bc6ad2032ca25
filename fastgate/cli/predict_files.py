"""``fastgate predict FILE --input 'dir/*.npy' --output OUTDIR [--scheduler ADDRESS]``.

Scores many input files, writing one output file per input into ``OUTDIR`` under the same
name (a ``.csv`` input gives ``NAME.npy``), with a progress bar on stderr. Without
``--scheduler`` the files are scored one after the other in this process (Dask is not
imported); with ``--scheduler ADDRESS`` (``tcp://host:8786``) on that Dask cluster through
:func:`fastgate.dask.predict`. The files are read and written here and travel to the
workers as data, so the workers need not see this machine's files. Up to twice as many files
as the cluster has task threads are in flight at once.

An ``.npy`` output holds the first output (a layer's output sequence, a model's first
output); an ``.npz`` input gives an ``.npz`` output holding every output, as the
single-file command writes them.
"""

from __future__ import annotations

import argparse
import glob
import os
import time
import warnings
from collections import deque
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import ConfigError, InputError
from ._common import Progress, format_time, outputs

__all__ = ["names_many_files", "input_files", "output_path", "predict_files"]

_SUFFIXES = (".npy", ".npz", ".csv")


def names_many_files(args: argparse.Namespace) -> bool:
    """Whether ``--input`` is a glob pattern or a directory (or ``--scheduler`` is given):
    the many-files mode. A plain file name keeps the single-file command."""
    return (glob.has_magic(args.input) or os.path.isdir(args.input)
            or getattr(args, "scheduler", None) is not None)


def input_files(pattern: str) -> list[str]:
    """The input files ``pattern`` names (a directory: its .npy, .npz and .csv files), sorted."""
    if os.path.isdir(pattern):
        paths = [os.path.join(pattern, name) for name in os.listdir(pattern)
                 if name.lower().endswith(_SUFFIXES)]
    else:
        paths = glob.glob(pattern)
    paths = sorted(path for path in paths if os.path.isfile(path))
    if not paths:
        raise InputError(f"--input {pattern!r}: no .npy, .npz or .csv file matches")
    names: dict[str, str] = {}
    for path in paths:
        name = os.path.basename(output_path("", path))
        if name in names:
            raise ConfigError(f"--input {pattern!r}: {names[name]} and {path} would both "
                              f"be written to {name}")
        names[name] = path
    return paths


def output_path(directory: str, path: str) -> str:
    """Where the output of input ``path`` goes: its name in ``directory`` (``.csv`` ->
    ``.npy``)."""
    name = os.path.basename(path)
    if name.lower().endswith(".csv"):
        name = name[:-4] + ".npy"
    return os.path.join(directory, name)


def _output_directory(args: argparse.Namespace, paths: list[str]) -> list[str]:
    """Make ``--output`` (a directory) and return the output path of every input."""
    if not args.output:
        raise ConfigError("--output OUTDIR is needed when --input names several files (one "
                          "output file per input, same names)")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise ConfigError(f"--output {args.output}: expected a directory (--input names "
                          f"several files), got a file")
    if args.lengths is not None:
        raise ConfigError("--lengths applies to one input file")
    os.makedirs(args.output, exist_ok=True)
    targets = [output_path(args.output, path) for path in paths]
    for path, target in zip(paths, targets):
        if os.path.exists(target) and os.path.samefile(path, target):
            raise ConfigError(f"--output {args.output}: writing {target} would overwrite its "
                              f"input")
    return targets


def _save(target: str, names: list[str], values: list[np.ndarray]) -> None:
    if target.endswith(".npz"):
        np.savez(target, **dict(zip(names, values)))
    else:
        np.save(target, values[0])


def _in_process(obj: Any, arrays: Iterator[np.ndarray], batch_size: int | None
                ) -> Iterator[list[np.ndarray]]:
    for x in arrays:
        if hasattr(obj, "reset_states"):   # each file alone, as a command per file would
            obj.reset_states()
        yield outputs(obj, x, None, batch_size)


def _on_cluster(obj: Any, arrays: Iterator[np.ndarray], address: str,
                batch_size: int | None) -> Iterator[list[np.ndarray]]:
    """The outputs of each array, in order, scored on the cluster at ``address``."""
    import dask.array as da
    from distributed import Client

    import fastgate.dask
    from ..layers import RecurrentLayer

    layer = isinstance(obj, RecurrentLayer)
    axis = 1 if layer and not obj.batch_first else 0
    with Client(address, set_as_default=False) as client:
        window = 2 * max(1, sum(client.nthreads().values()))
        in_flight: deque = deque()

        def submit(x: np.ndarray) -> None:
            chunks = {k: (batch_size or "auto") if k == axis else -1 for k in range(x.ndim)}
            with warnings.catch_warnings():   # the array is the data: it goes with the graph
                warnings.filterwarnings("ignore", message="Sending large graph")
                result = fastgate.dask.predict(obj, da.from_array(x, chunks=chunks), client,
                                               return_state=layer)
                if layer:
                    out, state = result
                    result = [out] + list(state if isinstance(state, tuple) else (state,))
                in_flight.append(client.compute(result if isinstance(result, list)
                                                else [result]))

        for x in arrays:
            submit(x)
            if len(in_flight) >= window:
                yield [future.result() for future in in_flight.popleft()]
        while in_flight:
            yield [future.result() for future in in_flight.popleft()]


def predict_files(args: argparse.Namespace, obj: Any, read: Callable[[str], np.ndarray],
                  names: Callable[[Any, int], list[str]]) -> int:
    """Score every file ``--input`` names and write one output per file into ``--output``.

    ``read(path)`` reads an input array; ``names(obj, count)`` names the outputs.
    """
    paths = input_files(args.input)
    targets = _output_directory(args, paths)
    progress = Progress(len(paths), enabled=True)
    start = time.perf_counter()
    arrays = (read(path) for path in paths)
    scored = (_on_cluster(obj, arrays, args.scheduler, args.batch_size) if args.scheduler
              else _in_process(obj, arrays, args.batch_size))
    try:
        for target, values in zip(targets, scored):
            _save(target, names(obj, len(values)), values)
            progress.label = os.path.basename(target)
            progress.advance()
    finally:
        progress.close()
    where = f"on the cluster at {args.scheduler}" if args.scheduler else "in this process"
    shown = ", ".join(os.path.basename(t) for t in targets[:3]) + (
        ", ..." if len(targets) > 3 else "")
    print(f"model:  {obj!r}")
    print(f"scored {len(paths)} files {where} in {format_time(time.perf_counter() - start)}; "
          f"wrote {len(targets)} files to {args.output}: {shown}")
    return 0
