"""``fastgate convert IN OUT``: save any supported file in fastgate's own format or as ONNX."""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

from ..errors import ConfigError, FastgateError
from ._common import debug_options, load_model, loading_options, outputs, random_input

_OUTPUT_SUFFIXES = (".fastgate", ".onnx")


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``convert`` command to ``commands``."""
    parser = commands.add_parser(
        "convert", parents=[debug_options(), loading_options()],
        help="convert a model to fastgate's own format or to ONNX",
        description="Load IN (Keras, PyTorch or fastgate) and save it as OUT: .fastgate (the "
                    "copy is reloaded and checked) or .onnx (a standard ONNX graph, checked "
                    "with ONNX Runtime when it is installed).")
    parser.add_argument("input", metavar="IN")
    parser.add_argument("output", metavar="OUT", help="a .fastgate or .onnx file")
    parser.add_argument("--force", action="store_true", help="overwrite OUT")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.set_defaults(handler=command_convert)


def command_convert(args: argparse.Namespace) -> int:
    """``fastgate convert IN OUT``: save any supported file as ``.fastgate`` or ``.onnx``."""
    obj = load_model(args.input, args)
    if not str(args.output).endswith(_OUTPUT_SUFFIXES):
        raise ConfigError(f"the output file must end with .fastgate (fastgate's own format) "
                          f"or .onnx, got {args.output!r}")
    if os.path.exists(args.output) and not args.force:
        raise FileExistsError(f"{args.output} exists; pass --force to overwrite it")
    if str(args.output).endswith(".onnx"):
        return _convert_to_onnx(obj, args)
    return _convert_to_fastgate(obj, args)


def _convert_to_fastgate(obj: Any, args: argparse.Namespace) -> int:
    import fastgate

    fastgate.save(obj, args.output)
    copy = fastgate.load(args.output)
    x = random_input(copy, batch=2, steps=5, rng=np.random.default_rng(0))
    same = all(np.array_equal(a, b) for a, b in zip(outputs(obj, x), outputs(copy, x)))
    if not same:
        raise FastgateError(f"{args.output}: the saved copy does not reproduce the model's "
                            f"outputs (please report this)")
    print(f"converted {args.input} -> {args.output} ({os.path.getsize(args.output) / 1024:.1f}"
          f" kB): {obj!r}")
    print("checked: the saved copy gives identical outputs on random input")
    return 0


def _convert_to_onnx(obj: Any, args: argparse.Namespace) -> int:
    from ..export.onnx import to_onnx

    to_onnx(obj, args.output, args.opset)
    print(f"converted {args.input} -> {args.output} ({os.path.getsize(args.output) / 1024:.1f}"
          f" kB, ONNX opset {args.opset}): {obj!r}")
    difference = _onnx_runtime_difference(obj, args.output)
    if difference is None:
        print("not checked: install onnxruntime to compare the ONNX model's outputs")
    elif not difference <= 1e-4:
        raise FastgateError(f"{args.output}: ONNX Runtime's outputs differ from fastgate's by "
                            f"{difference:.1e} (please report this)")
    else:
        print(f"checked: ONNX Runtime gives fastgate's outputs on random input (max "
              f"difference {difference:.1e})")
    return 0


def _onnx_runtime_difference(obj: Any, path: str) -> float | None:
    """Max |ONNX Runtime - fastgate| / max(1, |fastgate|) over the outputs on random input
    (relative above 1: outputs of relu layers are unbounded); ``None`` without
    onnxruntime, or for a float64 model (ONNX Runtime has no float64 LSTM/GRU/RNN on CPU)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    from ..cells import _Cell

    if getattr(obj, "dtype", np.dtype(np.float32)) == np.float64:
        return None
    rng = np.random.default_rng(0)
    x = random_input(obj, batch=3, steps=7, rng=rng)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [entry.name for entry in session.get_inputs()]
    feeds = {names[0]: x.astype(np.int64) if x.dtype.kind in "iu" else x}
    expected = outputs(obj, x)
    if isinstance(obj, _Cell):  # inputs x, h (, c): the state the cell defaults to, zeros
        feeds.update({name: np.zeros((x.shape[0], obj.hidden_size), obj.dtype)
                      for name in names[1:]})
    got = session.run(None, feeds)
    if len(got) != len(expected):
        raise FastgateError(f"{path}: ONNX Runtime gives {len(got)} outputs, fastgate "
                            f"{len(expected)} (please report this)")
    return max(float(np.max(np.abs(a - b) / np.maximum(1, np.abs(b)), initial=0.0))
               for a, b in zip(got, map(np.asarray, expected)))
