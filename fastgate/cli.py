"""The ``fastgate`` command line.

``fastgate demo`` runs fastgate on a small model, checks the compiled kernels against the
NumPy oracle and reports the speed-up. Errors print one line and exit non-zero (``--debug``
shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Sequence

import numpy as np

from . import __version__
from .errors import FastgateError


def _median_seconds(function: Callable[[], object], repeat: int) -> float:
    function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def command_demo(args: argparse.Namespace) -> int:
    """A short example: a 2-layer LSTM and a GRU on random input, compiled vs oracle."""
    import fastgate

    rng = np.random.default_rng(0)
    print(f"fastgate {__version__}, backend: {fastgate.backend()}")
    for name, layer in (
            ("LSTM(input_size=16, hidden_size=64, num_layers=2)",
             fastgate.LSTM.random(16, 64, num_layers=2, batch_first=True)),
            ("GRU(input_size=16, hidden_size=64, bidirectional=True)",
             fastgate.GRU.random(16, 64, bidirectional=True, batch_first=True))):
        x = rng.standard_normal((4, 50, 16)).astype(np.float32)
        out, _ = layer(x)
        with fastgate.use_backend("python"):
            reference, _ = layer(x)
            oracle_time = _median_seconds(lambda: layer(x), 3)
        fast_time = _median_seconds(lambda: layer(x), 20)
        print(f"\n{name} on x{x.shape}: output {out.shape}")
        print(f"  last step, first sequence: {np.array2string(out[0, -1, :6], precision=4)} ...")
        print(f"  max |{fastgate.backend()} - oracle| = {np.abs(out - reference).max():.2e}")
        print(f"  {fastgate.backend()}: {fast_time * 1e3:.3f} ms, oracle: "
              f"{oracle_time * 1e3:.3f} ms ({oracle_time / fast_time:.0f}x faster)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastgate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"fastgate {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="run fastgate on small models and show the speed-up")
    demo.set_defaults(handler=command_demo)
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
    except (FastgateError, OSError) as error:
        if args.debug:
            raise
        print(f"fastgate: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
