"""``fastgate convert IN OUT``: save any supported file in fastgate's own format."""

from __future__ import annotations

import argparse
import os

import numpy as np

from ..errors import ConfigError, FastgateError
from ._common import debug_options, load_model, loading_options, outputs, random_input


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``convert`` command to ``commands``."""
    parser = commands.add_parser(
        "convert", parents=[debug_options(), loading_options()],
        help="convert a model to fastgate's own format",
        description="Load IN (Keras, PyTorch or fastgate) and save it as OUT (.fastgate); "
                    "the copy is reloaded and checked.")
    parser.add_argument("input", metavar="IN")
    parser.add_argument("output", metavar="OUT", help="a .fastgate file")
    parser.add_argument("--force", action="store_true", help="overwrite OUT")
    parser.set_defaults(handler=command_convert)


def command_convert(args: argparse.Namespace) -> int:
    """``fastgate convert IN OUT``: save any supported file in fastgate's own format."""
    import fastgate

    obj = load_model(args.input, args)
    if not str(args.output).endswith(".fastgate"):
        raise ConfigError(f"the output file must end with .fastgate (fastgate's own format), "
                          f"got {args.output!r}")
    if os.path.exists(args.output) and not args.force:
        raise FileExistsError(f"{args.output} exists; pass --force to overwrite it")
    fastgate.save(obj, args.output)
    copy = fastgate.load(args.output)
    x = random_input(copy, batch=2, steps=5, rng=np.random.default_rng(0))
    same = all(np.array_equal(a, b) for a, b in zip(outputs(obj, x), outputs(copy, x)))
    if not same:
        raise FastgateError(f"{args.output}: the saved copy does not reproduce the model's "
                            f"outputs (please report this)")
    print(f"converted {args.input} -> {args.output} ({os.path.getsize(args.output) / 1024:.1f}"
          f" kB): {copy!r}")
    print("checked: the saved copy gives identical outputs on random input")
    return 0
