"""The ``fastgate`` command line (also ``python -m fastgate``).

Commands, one module each in this package:

* ``fastgate inspect FILE``: what a model file holds (format, who saved it, layers, gates);
* ``fastgate convert IN OUT``: any supported file to fastgate's own format;
* ``fastgate predict FILE --input x.npy``: run a model on a saved array (or on many:
  ``--input 'dir/*.npy' --output OUTDIR [--scheduler ADDRESS]``);
* ``fastgate bench FILE``: latency and throughput, against the NumPy oracle (and PyTorch);
* ``fastgate trace FILE --input x.npy``: every gate's values step by step (summary, plot);
* ``fastgate demo``: the pretrained models shipped in the package, checked and timed;
* ``fastgate serve MODEL``: the model over HTTP, micro-batched (needs ``fastgate[serve]``).

A command module defines ``register(commands)``, which adds its sub-parser (with
``set_defaults(handler=...)``) to the ``commands`` sub-parsers; adding a command is one new
module and one entry in :data:`COMMANDS`. What commands share is in
:mod:`fastgate.cli._common`.

Errors print one line, ``fastgate: error: ...``, and exit with status 1 (``--debug`` shows
the traceback); usage errors exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from typing import Sequence

from .._version import __version__
from ..errors import FastgateError
from . import bench, convert, demo, inspect, predict, serve, trace
from ._common import DATA_DIR
from ._torch import torch_equivalent as _torch_equivalent  # noqa: F401  (tests use it)
from .demo import demo_classifier

__all__ = ["main", "build_parser", "demo_classifier", "DATA_DIR", "COMMANDS"]

#: The command modules, in the order ``fastgate --help`` lists them.
COMMANDS = (inspect, convert, predict, trace, bench, demo, serve)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="fastgate",
        description="Compiled CPU inference for LSTM/GRU/SimpleRNN models trained in Keras "
                    "or PyTorch.",
        epilog="Start with: fastgate demo")
    parser.add_argument("--debug", action="store_true", help="show the traceback on errors")
    parser.add_argument("--version", action="version", version=f"fastgate {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(commands)
    return parser


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
        if name == "matplotlib":
            hint = ' (plots need it: pip install "fastgate[plot]")'
        if name in ("uvicorn", "httptools", "uvloop"):
            hint = ' (fastgate serve needs it: pip install "fastgate[serve]")'
        return f"this needs {name}, which is not installed{hint}"
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return " ".join(str(error).split()) or type(error).__name__
