"""Train the two small models that ``fastgate demo`` ships, and save them in fastgate/data/.

Run from the repository root (needs torch and keras; about half a minute on 2 cores)::

    KERAS_BACKEND=torch python scripts/train_demo_models.py

Both tasks are synthetic and generated here, with fixed seeds (no downloads):

1. **forecaster** (Keras 3, GRU): a noisy seasonal series (a daily cycle of 24 steps plus a
   slower 60-step wave and Gaussian noise); a window of 48 values predicts the next one.
   Saved as ``forecaster.keras``. Scored by its mean absolute error on the held-out end of
   the series against two naive forecasts (the last value, the value one season ago).
2. **classifier** (PyTorch, LSTM): "sentiment" of short sentences over a 30-word vocabulary
   where ``not`` flips the next sentiment word ("the food was not bad" is positive).
   Embedding -> LSTM (packed sequences) -> Linear on the last valid state. Saved as
   ``classifier.pt`` (a state_dict) and ``classifier.json`` (the architecture and the
   vocabulary). Scored by its accuracy on held-out sentences, against a bag-of-words rule
   that ignores ``not``.

Both are also saved in fastgate's own format (``.fastgate``), built from the framework files
by fastgate's importers. ``demo_inputs.npz`` holds a few held-out inputs and the framework's
own outputs on them, and ``demo.json`` the training metrics, so that ``fastgate demo`` shows
fastgate == framework without the framework installed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / "fastgate" / "data"

SEED = 20240601
WINDOW = 32
SEASON = 24

POSITIVE = ["good", "great", "nice", "fun", "happy", "love"]
NEGATIVE = ["bad", "awful", "boring", "sad", "poor", "hate"]
NEUTRAL = ["the", "movie", "food", "was", "plot", "and", "it", "a", "very", "really",
           "service", "actors", "i", "show", "so", "quite"]
VOCABULARY = ["<pad>", "not"] + POSITIVE + NEGATIVE + NEUTRAL
MAX_WORDS = 12

#: Hand-written held-out sentences shown by the demo (negations on purpose).
DEMO_SENTENCES = [
    "the movie was not good",
    "the food was not bad and the service was great",
    "i love the actors",
    "really boring plot",
    "it was not fun and not nice",
    "i really hate the food",
]


# ----------------------------------------------------------------------------- forecaster
def seasonal_series(length: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(length)
    return (np.sin(2 * np.pi * t / SEASON) + 0.4 * np.sin(2 * np.pi * t / 60)
            + rng.normal(0, 0.15, length)).astype(np.float32)


def windows(series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    count = len(series) - WINDOW
    x = np.stack([series[k:k + WINDOW] for k in range(count)])[..., None]
    return x, series[WINDOW:]


def train_forecaster() -> dict:
    import keras

    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    series = seasonal_series(3000, rng)
    split = 2400
    x_train, y_train = windows(series[:split])
    x_test, y_test = windows(series[split - WINDOW:])

    model = keras.Sequential([
        keras.Input((WINDOW, 1), name="window"),
        keras.layers.GRU(24, name="gru"),
        keras.layers.Dense(1, name="next_value"),
    ], name="forecaster")
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
    model.fit(x_train, y_train, epochs=8, batch_size=256, verbose=0, shuffle=True)

    predicted = model.predict(x_test, verbose=0)[:, 0]
    metrics = {
        "test_windows": int(len(y_test)),
        "mae": float(np.mean(np.abs(predicted - y_test))),
        "mae_last_value": float(np.mean(np.abs(x_test[:, -1, 0] - y_test))),
        "mae_one_season_ago": float(np.mean(np.abs(x_test[:, -SEASON, 0] - y_test))),
        "noise_std": 0.15,
    }
    model.save(DATA / "forecaster.keras")

    shown = np.sort(rng.choice(len(y_test), size=6, replace=False))  # at various phases
    demo_x = x_test[shown]
    return {"metrics": metrics, "x": demo_x, "y_true": y_test[shown],
            "keras": model.predict(demo_x, verbose=0).astype(np.float32),
            "keras_version": keras.__version__}


# ----------------------------------------------------------------------------- classifier
def random_sentence(rng: np.random.Generator) -> tuple[list[str], int]:
    """A sentence and its label: 1 if its sentiment words (``not`` flips one) sum > 0."""
    while True:
        length = int(rng.integers(3, MAX_WORDS + 1))
        words = list(rng.choice(NEUTRAL, size=length))
        score = 0
        for _ in range(int(rng.integers(1, 4))):
            sign = 1 if rng.random() < 0.5 else -1
            word = str(rng.choice(POSITIVE if sign > 0 else NEGATIVE))
            place = int(rng.integers(0, length))
            if rng.random() < 0.4 and place < length - 1:
                words[place], words[place + 1] = "not", word
            else:
                words[place] = word
        for k, word in enumerate(words):  # score what the sentence finally says
            if word in POSITIVE or word in NEGATIVE:
                value = 1 if word in POSITIVE else -1
                score += -value if k and words[k - 1] == "not" else value
        if score:
            return words[:MAX_WORDS], int(score > 0)


def encode(sentences: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids right-padded with 0, and the lengths."""
    index = {word: k for k, word in enumerate(VOCABULARY)}
    ids = np.zeros((len(sentences), MAX_WORDS), np.int64)
    for row, words in enumerate(sentences):
        ids[row, :len(words)] = [index[w] for w in words]
    return ids, np.array([len(w) for w in sentences], np.int64)


def bag_of_words(sentences: list[list[str]]) -> np.ndarray:
    """The baseline: count sentiment words, ignoring ``not``."""
    return np.array([int(sum((w in POSITIVE) - (w in NEGATIVE) for w in s) > 0)
                     for s in sentences])


def train_classifier() -> dict:
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED + 1)
    train = [random_sentence(rng) for _ in range(3000)]
    test = [random_sentence(rng) for _ in range(1000)]

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(len(VOCABULARY), 16, padding_idx=0)
            self.lstm = nn.LSTM(16, 32, batch_first=True)
            self.fc = nn.Linear(32, 2)

        def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            packed = pack_padded_sequence(self.embedding(ids), lengths, batch_first=True,
                                          enforce_sorted=False)
            _, (h_n, _) = self.lstm(packed)
            return self.fc(h_n[-1])

    model = Classifier()
    ids, lengths = encode([s for s, _ in train])
    labels = torch.tensor([y for _, y in train])
    ids, lengths = torch.from_numpy(ids), torch.from_numpy(lengths)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(8):
        order = torch.randperm(len(labels))
        for start in range(0, len(labels), 64):
            batch = order[start:start + 64]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(ids[batch], lengths[batch]), labels[batch])
            loss.backward()
            optimizer.step()
    model.eval()

    test_ids, test_lengths = encode([s for s, _ in test])
    test_labels = np.array([y for _, y in test])
    with torch.no_grad():
        logits = model(torch.from_numpy(test_ids), torch.from_numpy(test_lengths)).numpy()
    metrics = {
        "test_sentences": len(test),
        "accuracy": float(np.mean(logits.argmax(1) == test_labels)),
        "accuracy_bag_of_words": float(np.mean(bag_of_words([s for s, _ in test])
                                               == test_labels)),
        "accuracy_majority": float(max(test_labels.mean(), 1 - test_labels.mean())),
    }
    torch.save(model.state_dict(), DATA / "classifier.pt")
    architecture = {
        "description": "Embedding -> LSTM (packed, batch_first) -> Linear on h_n[-1]",
        "embedding": {"prefix": "embedding.", "num_embeddings": len(VOCABULARY),
                      "embedding_dim": 16, "padding_idx": 0},
        "lstm": {"prefix": "lstm.", "input_size": 16, "hidden_size": 32, "batch_first": True},
        "fc": {"prefix": "fc.", "in_features": 32, "out_features": 2},
        "labels": ["negative", "positive"],
        "vocabulary": VOCABULARY,
        "torch_version": torch.__version__.split("+")[0],
    }
    (DATA / "classifier.json").write_text(json.dumps(architecture, indent=1) + "\n")

    sentences = [s.split() for s in DEMO_SENTENCES] + [s for s, _ in test[:2]]
    demo_ids, demo_lengths = encode(sentences)
    with torch.no_grad():
        demo_logits = model(torch.from_numpy(demo_ids), torch.from_numpy(demo_lengths))
    return {"metrics": metrics, "ids": demo_ids, "lengths": demo_lengths,
            "torch": demo_logits.numpy().astype(np.float32),
            "torch_version": architecture["torch_version"]}


# ----------------------------------------------------------------------------- main
def main() -> None:
    import torch

    torch.set_num_threads(2)
    DATA.mkdir(exist_ok=True)
    start = time.perf_counter()
    forecaster = train_forecaster()
    print(f"forecaster: {forecaster['metrics']} ({time.perf_counter() - start:.0f} s)")
    start = time.perf_counter()
    classifier = train_classifier()
    print(f"classifier: {classifier['metrics']} ({time.perf_counter() - start:.0f} s)")

    import fastgate
    from fastgate.cli import demo_classifier

    fastgate.load(DATA / "forecaster.keras").save(DATA / "forecaster.fastgate")
    demo_classifier(DATA / "classifier.pt", DATA / "classifier.json").save(
        DATA / "classifier.fastgate")

    np.savez(DATA / "demo_inputs.npz",
             forecaster_x=forecaster["x"], forecaster_y_true=forecaster["y_true"],
             forecaster_keras=forecaster["keras"], classifier_ids=classifier["ids"],
             classifier_lengths=classifier["lengths"], classifier_torch=classifier["torch"])
    summary = {
        "forecaster": {"file": "forecaster.keras", "copy": "forecaster.fastgate",
                       "framework": f"Keras {forecaster['keras_version']}",
                       "task": f"next value of a noisy seasonal series (season {SEASON}) "
                               f"from a window of {WINDOW}",
                       "metrics": forecaster["metrics"]},
        "classifier": {"file": "classifier.pt", "architecture": "classifier.json",
                       "copy": "classifier.fastgate",
                       "framework": f"PyTorch {classifier['torch_version']}",
                       "task": "sentiment of short sentences, where 'not' flips the next word",
                       "metrics": classifier["metrics"]},
        "seed": SEED,
    }
    (DATA / "demo.json").write_text(json.dumps(summary, indent=1) + "\n")
    total = sum(p.stat().st_size for p in DATA.iterdir() if p.is_file())
    print(f"wrote {sorted(p.name for p in DATA.iterdir())} ({total / 1024:.0f} kB) to {DATA}")


if __name__ == "__main__":
    main()
