"""No memory growth in a long-running service: 10,000 calls leave the resident set flat.

Calls of random small shapes are spread over every entry point a service uses (layers with
lengths and states, cells, ``Model.predict``, ``Model.step`` with carried states, Dense,
Embedding, and calls that raise errors). The resident set size (``VmRSS``) after the last
5,000 calls may exceed the one after the first 5,000 by less than 10 MB: the first half
reaches the steady state (allocator pools, caches), a leak of even a few hundred bytes per
call shows in the second.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

import fastgate
from fastgate.ops import Dense, Embedding, Masking, Recurrent

from conftest import random_cell_weights

CALLS = 10_000
GROWTH_LIMIT = 10 << 20


def resident_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def make_workload(rng):
    """A list of functions ``call(rng)``, each one service request of a random shape."""
    lstm = fastgate.LSTM(random_cell_weights("lstm", 4, 8, num_layers=2, bidirectional=True,
                                             rng=rng), bidirectional=True, batch_first=True)
    gru = fastgate.GRU(random_cell_weights("gru", 4, 8, rng=rng), batch_first=True)
    cell = fastgate.LSTMCell(random_cell_weights("lstm", 4, 8, rng=rng)[0])
    dense = Dense(rng.normal(size=(8, 3)), rng.normal(size=3), activation="tanh")
    embedding = Embedding(rng.normal(size=(50, 4)), mask_zero=True)
    model = fastgate.Model(
        [("masking", Masking(0.0), (-1, 0)),
         ("gru", Recurrent(gru, return_sequences=True), (0, 0)),
         ("head", dense, (1, 0))], [(2, 0)])
    sessions = {}

    def features(rng, width=4):
        return rng.normal(size=(int(rng.integers(1, 6)), int(rng.integers(1, 8)), width))

    def layer_call(rng):
        x = features(rng)
        lstm(x, lengths=rng.integers(0, x.shape[1] + 1, size=x.shape[0]))

    def cell_call(rng):
        batch = int(rng.integers(1, 6))
        cell(rng.normal(size=(batch, 4)), cell.initial_state(batch))

    def predict_call(rng):
        model.predict(features(rng).astype(np.float32))

    def step_call(rng):
        session = int(rng.integers(0, 4))
        if session not in sessions:
            sessions[session] = model.initial_state(2)
        _, sessions[session] = model.step(rng.normal(size=(2, int(rng.integers(1, 4)), 4)),
                                          sessions[session])

    def embedding_call(rng):
        embedding.apply(rng.integers(0, 50, size=(3, int(rng.integers(1, 8)))), None)

    def error_call(rng):
        with pytest.raises(fastgate.FastgateError):
            if rng.random() < 0.5:
                model.predict(features(rng, width=5))
            else:
                embedding(np.array([50]))

    return [layer_call, cell_call, predict_call, step_call, embedding_call, error_call]


@pytest.mark.parametrize("backend", fastgate.available_backends()[:1])
def test_ten_thousand_calls_leave_memory_flat(backend, rng):
    workload = make_workload(rng)
    choices = rng.integers(0, len(workload), size=CALLS)
    with fastgate.use_backend(backend):
        for k in choices[:CALLS // 2]:
            workload[k](rng)
        gc.collect()
        after_first_half = resident_bytes()
        for k in choices[CALLS // 2:]:
            workload[k](rng)
        gc.collect()
        after_second_half = resident_bytes()
    growth = after_second_half - after_first_half
    assert growth < GROWTH_LIMIT, (f"RSS grew by {growth / 2**20:.1f} MB over the last "
                                   f"{CALLS // 2} calls")
