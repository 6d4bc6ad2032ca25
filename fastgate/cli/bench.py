"""``fastgate bench FILE``: latency and throughput on random input, against the NumPy
oracle and (when installed) PyTorch."""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from ..errors import ConfigError
from ._common import (Progress, debug_options, faster, format_count, format_time,
                      load_model, loading_options, median_seconds, oracle_difference, outputs,
                      random_input, runs, use_threads)
from ._torch import torch_equivalent, torch_seconds


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``bench`` command to ``commands``."""
    parser = commands.add_parser(
        "bench", parents=[debug_options(), loading_options()],
        help="measure latency and throughput",
        description="Time FILE on random input against the NumPy oracle, and against "
                    "PyTorch when it is installed and the model has a PyTorch equivalent.")
    parser.add_argument("file")
    parser.add_argument("--batch", type=int, default=32, metavar="N", help="sequences (32)")
    parser.add_argument("--steps", type=int, default=100, metavar="T", help="steps (100)")
    parser.add_argument("--threads", type=int, default=1, metavar="K",
                        help="BLAS (and PyTorch) threads (1)")
    parser.add_argument("--repeat", type=int, default=20, metavar="R",
                        help="timed runs (20; the oracle runs R/5)")
    parser.add_argument("--progress", action="store_true",
                        help="always show the progress bar (shown anyway on long runs)")
    parser.add_argument("--no-torch", action="store_true",
                        help="skip the PyTorch comparison")
    parser.set_defaults(handler=command_bench)


def command_bench(args: argparse.Namespace) -> int:
    """``fastgate bench FILE``: latency and throughput on random input, vs oracle and torch."""
    for option in ("batch", "steps", "repeat"):
        if getattr(args, option) < 1:
            raise ConfigError(f"--{option} must be positive, got {getattr(args, option)}")
    with use_threads(args.threads):
        return _bench(args)


def _bench(args: argparse.Namespace) -> int:
    import fastgate

    obj = load_model(args.file, args)
    x = random_input(obj, args.batch, args.steps, np.random.default_rng(0))
    torch_run = None if args.no_torch else torch_equivalent(obj)
    compiled = fastgate.backend() == "compiled"
    oracle_repeat = max(1, args.repeat // 5)
    total = args.repeat + (oracle_repeat if compiled else 0) + \
        (args.repeat if torch_run else 0)
    start = time.perf_counter()
    outputs(obj, x)
    first = time.perf_counter() - start
    progress = Progress(total, args.progress or (first * total > 2.0))

    progress.label = fastgate.backend()
    fast = median_seconds(lambda: outputs(obj, x), args.repeat, progress)
    oracle = None
    if compiled:
        progress.label = "oracle"
        with fastgate.use_backend("python"):
            oracle = median_seconds(lambda: outputs(obj, x), oracle_repeat, progress)
    torch_time = None
    if torch_run is not None:
        progress.label = "pytorch"
        torch_time = torch_seconds(torch_run, x, args.repeat, progress)
    progress.close()
    _report(args, obj, x, fast, (oracle, oracle_repeat), torch_time)
    return 0


def _report(args: argparse.Namespace, obj: Any, x: np.ndarray, fast: float,
            oracle: tuple[float | None, int], torch_time: float | None) -> None:
    """Print the timings of :func:`_bench`."""
    import fastgate

    batch, steps = _batch_and_steps(obj, x)
    print(f"model:    {obj!r}")
    shape = ({k: v.shape for k, v in x.items()} if isinstance(x, dict)
             else f"{x.shape} {x.dtype}")
    print(f"input:    {shape}: {batch} sequences x {steps} steps; "
          f"{fastgate.get_num_threads()} BLAS thread(s)")
    print(f"{fastgate.backend() + ':':<9} median {format_time(fast)} per batch "
          f"({runs(args.repeat)}), {format_count(batch / fast)} sequences/s, "
          f"{format_count(batch * steps / fast)} steps/s")
    oracle_time, oracle_repeat = oracle
    if oracle_time is not None:
        print(f"oracle:   median {format_time(oracle_time)} per batch "
              f"({runs(oracle_repeat)}): compiled is {faster(fast, oracle_time)}; "
              f"max |compiled - oracle| = {oracle_difference(obj, x):.1e}")
    else:
        print("oracle:   this is the oracle (the compiled extension is not built)")
    if torch_time is not None:
        import torch

        print(f"pytorch:  median {format_time(torch_time)} per batch ({runs(args.repeat)}, "
              f"torch {torch.__version__.split('+')[0]}, {torch.get_num_threads()} "
              f"thread(s)): fastgate is {faster(fast, torch_time)}")
    elif not args.no_torch:
        print("pytorch:  not compared (torch is not installed, or the model has no PyTorch "
              "equivalent)")


def _batch_and_steps(obj: Any, x: np.ndarray) -> tuple[int, int]:
    """``(sequences, steps)`` in the input ``x`` of ``obj``."""
    from ..cells import _Cell
    from ..layers import RecurrentLayer
    from ..ops import Dense

    if isinstance(x, dict):   # an ONNX model's feed: every open dimension has one size
        size = min((d for a in x.values() for d in a.shape), default=1)
        return size, size
    if isinstance(obj, RecurrentLayer) and not obj.batch_first:
        return x.shape[1], x.shape[0]
    one_step = isinstance(obj, (_Cell, Dense))
    return x.shape[0], (x.shape[1] if x.ndim >= 2 and not one_step else 1)
