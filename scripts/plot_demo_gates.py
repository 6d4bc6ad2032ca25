"""Draw docs/gates.png, the README's "Looking inside the gates" picture: the gate
distributions of the shipped demo PyTorch LSTM classifier on its held-out sentences
(fastgate/data), traced by the compiled kernels, and print both demo models' summaries.

Run from the repository root: ``python scripts/plot_demo_gates.py`` (needs matplotlib).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import fastgate
from fastgate.cli import DATA_DIR, demo_classifier

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "gates.png"


def main() -> None:
    summary = json.loads((DATA_DIR / "demo.json").read_text(encoding="utf-8"))
    stored = np.load(DATA_DIR / "demo_inputs.npz")
    info = summary["classifier"]
    classifier = demo_classifier(DATA_DIR / info["file"], DATA_DIR / info["architecture"])
    trace = classifier.trace(stored["classifier_ids"])
    OUTPUT.parent.mkdir(exist_ok=True)
    longest = int(np.argmax(stored["classifier_lengths"]))
    trace.plot(OUTPUT, gates=["input", "forget", "cell", "output"], sequence=longest, dpi=60)
    print(f"wrote {OUTPUT}\n\nclassifier (PyTorch LSTM):\n{trace.summary()}")
    forecaster = fastgate.load(DATA_DIR / "forecaster.keras")
    print(f"\nforecaster (Keras GRU):\n{forecaster.trace(stored['forecaster_x']).summary()}")


if __name__ == "__main__":
    main()
