"""What the ``fastgate`` commands share: option groups, loading, running a model, timing and
formatting."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import ConfigError
from ..formats import detect_format, framework_of

__all__ = ["DATA_DIR", "debug_options", "loading_options", "load_model", "outputs",
           "random_input", "oracle_difference", "count_parameters", "median_seconds",
           "use_threads", "Progress", "preview", "format_count", "format_time", "faster",
           "runs", "table"]

#: Where the demo models live (package data).
DATA_DIR = Path(__file__).resolve().parent.parent / "data"

#: What ``--kind`` accepts (PyTorch files).
TORCH_KINDS = ("lstm", "gru", "rnn", "lstm_cell", "gru_cell", "rnn_cell", "linear",
               "embedding")


# ============================================================================ options
def debug_options() -> argparse.ArgumentParser:
    """A parent parser with ``--debug``, accepted before or after the command."""
    # SUPPRESS keeps a command's default from resetting a --debug given before it.
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback on errors")
    return debug


def loading_options() -> argparse.ArgumentParser:
    """A parent parser with the options :func:`load_model` honours."""
    loading = argparse.ArgumentParser(add_help=False)
    group = loading.add_argument_group("loading options")
    group.add_argument("--architecture", metavar="JSON",
                       help="Keras weights-only files: the model.to_json() file")
    group.add_argument("--prefix", help="PyTorch files: the module to load, e.g. 'lstm.'")
    group.add_argument("--kind", choices=TORCH_KINDS,
                       help="PyTorch files: what the module is (if ambiguous)")
    group.add_argument("--batch-first", action="store_true", default=None,
                       help="PyTorch LSTM/GRU/RNN: inputs are (batch, steps, features)")
    return loading


# ============================================================================ loading
def load_model(path: str, args: argparse.Namespace) -> Any:
    """The model or layer in ``path``, honouring the loading options of the command."""
    import fastgate
    from ..importers.torch import from_torch

    prefix = getattr(args, "prefix", None)
    kind = getattr(args, "kind", None)
    batch_first = getattr(args, "batch_first", None)
    if prefix is not None or kind is not None or batch_first:
        if framework_of(detect_format(path)) != "torch":
            raise ConfigError("--prefix, --kind and --batch-first apply to PyTorch files "
                              "(.pt, .pth, .safetensors)")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such file")
        return from_torch(path, prefix=prefix or "", batch_first=batch_first or None,
                          kind=kind)
    return fastgate.load(path, architecture=getattr(args, "architecture", None))


def count_parameters(obj: Any) -> int:
    """The number of weights of a model, layer or op."""
    from ..model import _count_parameters

    return _count_parameters(obj)


# ============================================================================ running
def _recurrent_outputs(layer: Any, x: np.ndarray, lengths: np.ndarray | None,
                       batch_size: int | None) -> list[np.ndarray]:
    """``[output, *states]`` of a RecurrentLayer, ``batch_size`` sequences at a time."""
    def run(part: np.ndarray, part_lengths: np.ndarray | None) -> list[np.ndarray]:
        out, state = layer(part, lengths=part_lengths)
        return [out] + list(state if isinstance(state, tuple) else (state,))

    axis = 0 if layer.batch_first or x.ndim == 2 else 1
    if x.ndim == 2 or batch_size is None or x.shape[axis] <= batch_size:
        return run(x, lengths)
    pieces = []
    for start in range(0, x.shape[axis], batch_size):
        rows = slice(start, start + batch_size)
        pieces.append(run(x[rows] if axis == 0 else x[:, rows],
                          None if lengths is None else lengths[rows]))
    return [np.concatenate([p[0] for p in pieces], axis=axis)] + [
        np.concatenate([p[k] for p in pieces], axis=1) for k in range(1, len(pieces[0]))]


def outputs(obj: Any, x: np.ndarray, lengths: np.ndarray | None = None,
            batch_size: int | None = None) -> list[np.ndarray]:
    """The outputs of ``obj`` on ``x`` as a list of arrays (Model, layer, cell or op)."""
    from ..cells import _Cell
    from ..layers import RecurrentLayer
    from ..model import Model

    if lengths is not None and not isinstance(obj, RecurrentLayer):
        raise ConfigError(f"--lengths applies to LSTM/GRU/RNN layers (e.g. from PyTorch "
                          f"files), not to a {type(obj).__name__}"
                          + (": a Keras model reads padding from its Masking or "
                             "Embedding(mask_zero) layer" if isinstance(obj, Model) else ""))
    if isinstance(obj, Model):
        result = obj.predict(x, batch_size=batch_size)
        if isinstance(result, dict):  # dict_outputs: in output_names order
            return [result[name] for name in obj.output_names]
        return list(result) if isinstance(result, list) else [result]
    if isinstance(obj, RecurrentLayer):
        return _recurrent_outputs(obj, x, lengths, batch_size)
    if isinstance(obj, _Cell):
        result = obj(x)
        return list(result) if isinstance(result, tuple) else [result]
    if callable(obj):
        return [np.asarray(obj(x))]
    raise ConfigError(f"cannot run a {type(obj).__name__}")


def _random_model_input(model: Any, batch: int, steps: int, rng: np.random.Generator
                        ) -> np.ndarray:
    """Random input of the shape a fastgate Model takes."""
    from ..model import MODEL_INPUT
    from ..ops import Bidirectional, Embedding, Recurrent

    first = model.nodes[0].op if model.nodes else None
    if isinstance(first, Embedding) and model.nodes[0].source[0] == MODEL_INPUT:
        shape = model.input_shape or (None, None)
        fixed = tuple(steps if d is None else d for d in shape[1:])
        return _random_ids(rng, first.num_embeddings, (batch,) + fixed)
    shape = model.input_shape
    if shape is None:
        width = None
        if isinstance(first, (Recurrent, Bidirectional)):
            layer = first.layer if isinstance(first, Recurrent) else first.forward.layer
            width = layer.input_size
        if width is None:
            raise ConfigError(f"model {model.name!r} does not record its input shape")
        shape = (None, None, width)
    fixed = [steps if d is None and k == 1 else d for k, d in enumerate(shape[1:], 1)]
    if any(d is None for d in fixed):
        raise ConfigError(f"model {model.name!r} input shape {shape}: only the batch and "
                          f"steps may be unknown")
    return rng.standard_normal((batch, *fixed)).astype(np.float32)


def _random_ids(rng: np.random.Generator, vocabulary: int, shape: tuple[int, ...]
                ) -> np.ndarray:
    """Random token ids, avoiding the padding id 0 when the vocabulary has others."""
    return rng.integers(1 if vocabulary > 1 else 0, vocabulary, size=shape)


def random_input(obj: Any, batch: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Random input of the shape ``obj`` takes: ``batch`` sequences of ``steps`` steps."""
    from ..cells import _Cell
    from ..layers import RecurrentLayer
    from ..model import Model
    from ..ops import Dense, Embedding

    if isinstance(obj, Model) and any(d is not None for d in obj.input_dtypes):
        return _random_graph_feed(obj, min(batch, steps), rng)   # an ONNX graph's inputs
    if isinstance(obj, Model):
        return _random_model_input(obj, batch, steps, rng)
    if isinstance(obj, RecurrentLayer):
        shape = (batch, steps) if obj.batch_first else (steps, batch)
        return rng.standard_normal(shape + (obj.input_size,)).astype(obj.dtype)
    if isinstance(obj, _Cell):
        return rng.standard_normal((batch, obj.input_size)).astype(obj.dtype)
    if isinstance(obj, Dense):
        return rng.standard_normal((batch, obj.in_features)).astype(obj.dtype)
    if isinstance(obj, Embedding):
        return _random_ids(rng, obj.num_embeddings, (batch, steps))
    raise ConfigError(f"cannot make an input for a {type(obj).__name__}")


def _random_graph_feed(model: Any, size: int, rng: np.random.Generator) -> dict:
    """An input feed for a model of typed inputs (an ONNX graph): each open dimension
    ``size``; integer inputs (token ids, sequence lengths) in ``[1, size]``."""
    feed = {}
    for name, shape, dtype in zip(model.input_names, model.input_shapes, model.input_dtypes):
        shape = tuple(size if d is None else d for d in (shape or ()))
        if dtype.kind in "iu":
            feed[name] = rng.integers(1, size + 1, shape).astype(dtype)
        else:
            feed[name] = rng.standard_normal(shape).astype(dtype)
    return feed


def oracle_difference(obj: Any, x: np.ndarray) -> float:
    """``max |compiled - oracle|`` over every output, on ``x``."""
    import fastgate

    fast = outputs(obj, x)
    with fastgate.use_backend("python"):
        reference = outputs(obj, x)
    return max((float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0)
               for a, b in zip(fast, reference))


# ============================================================================ timing
class Progress:
    """A text progress bar on stderr, ``[#####.....] 12/40 label``; silent if disabled."""

    def __init__(self, total: int, enabled: bool, width: int = 30) -> None:
        self.total = max(1, total)
        self.done = 0
        self.enabled = enabled
        self.width = width
        self.label = ""

    def __repr__(self) -> str:
        return f"Progress({self.done}/{self.total}, label={self.label!r})"

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


def median_seconds(function: Callable[[], object], repeat: int,
                   progress: Progress | None = None, warmup: int = 1) -> float:
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
def use_threads(count: int | None) -> Iterator[None]:
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


# ============================================================================ formatting
def preview(array: np.ndarray) -> str:
    """A few values of ``array``, NumPy-style, in a few lines (the first entry of a 3-d+
    array)."""
    array = np.asarray(array)
    label = ""
    if array.ndim >= 3:
        label, array = f"[0] of {array.shape[0]}: ", array[0]
    with np.printoptions(precision=4, suppress=True, threshold=12, edgeitems=2,
                         linewidth=88):
        return label + np.array2string(array, prefix="    " + " " * len(label))


def format_count(value: float) -> str:
    """``12,345`` for large counts, three significant digits for small ones."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def format_time(seconds: float) -> str:
    """``12.3 us``, ``4.56 ms`` or ``1.23 s``."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def faster(ours: float, theirs: float) -> str:
    """``"4.2x faster"`` (or ``"1.5x slower"``): fastgate's time ``ours`` vs ``theirs``."""
    ratio = theirs / ours
    return f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"


def runs(count: int) -> str:
    """``"1 run"``, ``"5 runs"``."""
    return f"{count} run" + ("" if count == 1 else "s")


def table(rows: list[list[str]], indent: str = "  ") -> str:
    """``rows`` as left-aligned text columns."""
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    return "\n".join(indent + "  ".join(cell.ljust(width) for cell, width in
                                        zip(row, widths)).rstrip() for row in rows)
