"""``fastgate demo``: the pretrained models shipped in the package, their predictions,
checks against the frameworks' stored outputs and the oracle, and the speed-up."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import ConfigError
from ._common import (DATA_DIR, debug_options, faster, format_time, median_seconds,
                      oracle_difference, table, use_threads)
from ._torch import torch_equivalent, torch_seconds

__all__ = ["register", "command_demo", "demo_classifier"]


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``demo`` command to ``commands``."""
    parser = commands.add_parser(
        "demo", parents=[debug_options()], help="run the pretrained models shipped with fastgate",
        description="A Keras GRU forecaster and a PyTorch LSTM classifier, trained by "
                    "scripts/train_demo_models.py: predictions, checks against the "
                    "frameworks' stored outputs and the oracle, and the speed-up.")
    parser.add_argument("--repeat", type=int, default=30, metavar="R", help="timed runs (30)")
    parser.add_argument("--threads", type=int, default=1, metavar="K",
                        help="BLAS (and PyTorch) threads (1: these models are small)")
    parser.set_defaults(handler=command_demo)


def demo_classifier(state_path: str | os.PathLike, architecture_path: str | os.PathLike
                    ) -> Any:
    """The demo's PyTorch classifier as a fastgate Model, from its state_dict and JSON.

    The PyTorch model is ``Embedding(padding_idx=0) -> LSTM(batch_first) -> Linear`` on the
    last valid state of right-padded sequences (packed); in fastgate that is
    ``Embedding(mask_zero=True) -> Recurrent(LSTM) -> Dense`` (a masked step keeps the
    state, so the last output is the last valid state).
    """
    from ..importers.torch import from_torch
    from ..model import Model
    from ..ops import Embedding, Recurrent

    architecture = json.loads(Path(architecture_path).read_text(encoding="utf-8"))
    if architecture["embedding"].get("padding_idx") != 0:
        raise ConfigError(f"{architecture_path}: the classifier must pad with id 0")
    embedding = from_torch(state_path, prefix=architecture["embedding"]["prefix"],
                           kind="embedding")
    lstm = from_torch(state_path, prefix=architecture["lstm"]["prefix"], batch_first=True)
    fc = from_torch(state_path, prefix=architecture["fc"]["prefix"], kind="linear")
    nodes = [("embedding", Embedding(embedding.table, mask_zero=True), (-1, 0)),
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
    fast = median_seconds(run, repeat)
    line = f"speed on {x.shape[0]} sequences x {x.shape[1]} steps: {fastgate.backend()} " \
           f"{format_time(fast)}"
    if fastgate.backend() == "compiled":
        with fastgate.use_backend("python"):
            oracle = median_seconds(run, max(1, repeat // 5))
        line += f", oracle {format_time(oracle)} ({faster(fast, oracle)})"
    torch_run = torch_equivalent(model)
    if torch_run is None:
        return line + "\n    (install torch to compare with PyTorch's speed)"
    torch_time = torch_seconds(torch_run, x, repeat)
    return line + f", PyTorch {format_time(torch_time)} ({faster(fast, torch_time)})"


def _oracle_line(model: Any, x: np.ndarray) -> str:
    import fastgate

    if fastgate.backend() != "compiled":
        return "compiled kernels not built: running the oracle itself"
    return f"{oracle_difference(model, x):.1e}"


def _label(logits: np.ndarray, labels: list[str]) -> str:
    """``"positive 0.93"``: the most likely label and its softmax probability."""
    shifted = np.exp(logits - logits.max())
    probabilities = shifted / shifted.sum()
    best = int(np.argmax(probabilities))
    return f"{labels[best]} {probabilities[best]:.2f}"


def command_demo(args: argparse.Namespace) -> int:
    """``fastgate demo``: the shipped models, their predictions, checks and speed-up."""
    import fastgate

    with use_threads(args.threads):
        summary = json.loads((DATA_DIR / "demo.json").read_text(encoding="utf-8"))
        stored = np.load(DATA_DIR / "demo_inputs.npz")
        print(f"fastgate {__version__} demo: {fastgate.backend()} backend, "
              f"{fastgate.get_num_threads()} BLAS thread(s); models in {DATA_DIR}")
        _demo_forecaster(summary["forecaster"], stored, args.repeat)
        _demo_classifier(summary["classifier"], stored, args.repeat)
        print(f"\nNext: fastgate inspect {DATA_DIR / 'forecaster.keras'}\n"
              f"      fastgate bench {DATA_DIR / 'classifier.fastgate'} --batch 64 --steps 50\n"
              f"      fastgate trace {DATA_DIR / 'forecaster.keras'} --input "
              f"{DATA_DIR / 'demo_inputs.npz'} --key forecaster_x --plot gates.png"
              f"   (the gates, step by step)")
    return 0


def _demo_forecaster(info: dict, stored: Any, repeat: int) -> None:
    """Part [1] of the demo: the Keras GRU forecaster."""
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
    print(table(rows, "    "))
    print(f"    max |fastgate - Keras|   = {np.max(np.abs(y - keras_y)):.1e}")
    print(f"    max |compiled - oracle|  = {_oracle_line(model, x)}")
    timing_x = np.concatenate([x] * 11)[:64]
    print("    " + _speed_line(model, timing_x, repeat))


def _demo_classifier(info: dict, stored: Any, repeat: int) -> None:
    """Part [2] of the demo: the PyTorch LSTM classifier."""
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
    print(table(rows, "    "))
    print(f"    max |fastgate - PyTorch| = {np.max(np.abs(logits - torch_logits)):.1e} "
          f"(logits)")
    print(f"    max |compiled - oracle|  = {_oracle_line(model, ids)}")
    timing_ids = np.concatenate([ids] * 8)[:64]
    print("    " + _speed_line(model, timing_ids, repeat))
