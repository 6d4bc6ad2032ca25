"""``fastgate trace MODEL --input x.npy``: what every gate of the model's recurrent layers
computed at every step (:mod:`fastgate.trace`): a summary table, a picture of the gate
distributions (``--plot``, needs ``fastgate[plot]``), the values themselves (``--output``).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError
from ..trace import DEFAULT_MAX_BYTES, Trace
from ._common import debug_options, load_model, loading_options
from .predict import read_array


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``trace`` command to ``commands``."""
    parser = commands.add_parser(
        "trace", parents=[debug_options(), loading_options()],
        help="the gate values of every recurrent layer, step by step",
        description="Run MODEL on the array in --input and record what every gate of its "
                    "recurrent layers computed at every step (LSTM input, forget, cell, "
                    "output, c, h; GRU reset, update, candidate, h; SimpleRNN h): print a "
                    "summary (mean, std, saturated share per gate), draw their "
                    "distributions (--plot, needs fastgate[plot]) and save them (--output, "
                    ".npz; .h5 in the LSTMVis layout).")
    parser.add_argument("file", metavar="MODEL")
    parser.add_argument("--input", "-i", required=True, metavar="ARRAY",
                        help="the input array (.npy, .npz, .csv as for predict)")
    parser.add_argument("--key", help="the array to read from an .npz input")
    parser.add_argument("--lengths", metavar="ARRAY",
                        help="(B,) valid length of each sequence (LSTM/GRU/RNN layers)")
    parser.add_argument("--plot", metavar="PNG", help="write the gate histograms here")
    parser.add_argument("--sequence", type=int, default=0, metavar="B",
                        help="the sequence the --plot heatmaps show (default 0)")
    parser.add_argument("--output", "-o", metavar="FILE",
                        help="save the trace: .npz (fastgate.trace.Trace.load reads it) or "
                             ".h5 (LSTMVis)")
    parser.add_argument("--summary", action="store_true",
                        help="print the summary table (the default without --plot/--output)")
    parser.add_argument("--max-mib", type=float, default=DEFAULT_MAX_BYTES / 2**20,
                        metavar="MIB", help="refuse traces above this size (default 1024)")
    parser.set_defaults(handler=command_trace)


def traced(obj: Any, x: Any, lengths: Any, max_bytes: int) -> Trace:
    """The trace of ``obj`` (a model, layer or cell) on ``x``."""
    from ..layers import RecurrentLayer

    if isinstance(obj, RecurrentLayer):
        return obj.trace(x, lengths=lengths, max_bytes=max_bytes)
    if lengths is not None:
        raise ConfigError("--lengths applies to LSTM/GRU/RNN layers (a model's masks come "
                          "from its own Masking/Embedding layers)")
    if hasattr(obj, "trace"):   # a Model (Keras, ONNX, torch) or a cell
        return obj.trace(x, max_bytes=max_bytes)
    raise ConfigError(f"{type(obj).__name__} has no recurrent layers to trace")


def command_trace(args: argparse.Namespace) -> int:
    """``fastgate trace MODEL --input x.npy``: trace, then summarise / plot / save."""
    obj = load_model(args.file, args)
    x = read_array(args.input, args.key, "--input")
    lengths = None if args.lengths is None else read_array(args.lengths, None, "--lengths")
    trace = traced(obj, x, None if lengths is None else lengths.reshape(-1),
                   int(args.max_mib * 2**20))
    print(f"model: {obj!r}")
    print(f"input: {args.input} {x.shape} {x.dtype}")
    print(f"trace: {len(trace.layers)} layers x directions, "
          f"{trace.nbytes / 2**20:.1f} MiB")
    if args.summary or not (args.plot or args.output):
        print(trace.summary())
    if args.plot:
        trace.plot(args.plot, sequence=args.sequence)
        print(f"wrote {args.plot}")
    if args.output:
        if str(args.output).lower().endswith((".h5", ".hdf5")):
            trace.to_hdf5(args.output)
        else:
            trace.save(args.output)
        print(f"wrote {args.output}")
    return 0
