"""One model object, many callers: threads, pickling, worker processes.

* Threads: 8 threads x 200 calls of mixed shapes on one shared object (no lock) give, call
  for call, bit-identical results to the same calls made serially: layers (lengths, stacked,
  bidirectional, projected), cells, :class:`fastgate.Model` (masking, Dense heads) and the
  streaming step API, on the compiled backend (and the python one).
* Pickling: every public object survives ``pickle`` with identical outputs (the compiled
  kernels' packed weights are rebuilt on unpickling), including imported models.
* Processes: a ``ProcessPoolExecutor`` with the ``spawn`` start method (nothing inherited
  from the parent) runs pickled models and gives the parent's results exactly.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import multiprocessing
import os
import pickle
import threading

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fastgate  # noqa: E402
from fastgate.ops import (Activation, Bidirectional, Dense, Embedding, Flatten,  # noqa: E402
                          GlobalPooling1D, Masking, Recurrent, RepeatVector)

from conftest import random_cell_weights  # noqa: E402

THREADS = 8
CALLS = 200
LAYERS = {"lstm": fastgate.LSTM, "gru": fastgate.GRU, "rnn": fastgate.SimpleRNN}
CELLS = {"lstm": fastgate.LSTMCell, "gru": fastgate.GRUCell, "rnn": fastgate.RNNCell}


def run_concurrently(function, arguments):
    """Call ``function(*arguments[k])`` for every ``k`` from ``THREADS`` threads at once.

    Thread ``i`` makes the calls ``i, i + THREADS, ...``; a barrier starts them together.
    Each thread runs in a copy of the caller's context, so it sees the backend that
    ``fastgate.use_backend`` selected (the choice is per thread). Returns the results in the
    order of ``arguments``.
    """
    results = [None] * len(arguments)
    errors = []
    barrier = threading.Barrier(THREADS)

    def worker(first):
        try:
            barrier.wait()
            for k in range(first, len(arguments), THREADS):
                results[k] = function(*arguments[k])
        except BaseException as error:  # reported in the main thread
            errors.append(error)

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(worker, i))
               for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def assert_same(actual, expected, what):
    if isinstance(expected, (tuple, list)):
        assert isinstance(actual, (tuple, list)) and len(actual) == len(expected), what
        for a, e in zip(actual, expected):
            assert_same(a, e, what)
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=what)


def check_threads_match_serial(function, arguments):
    serial = [function(*args) for args in arguments]
    threaded = run_concurrently(function, arguments)
    for k, (got, want) in enumerate(zip(threaded, serial)):
        assert_same(got, want, f"call {k}")


def mixed_inputs(rng, count, width, *, dtype=np.float32, batch_first=True, lengths=False):
    """``count`` argument tuples of random shapes: batch 1-9, steps 1-12."""
    arguments = []
    for _ in range(count):
        batch, steps = int(rng.integers(1, 10)), int(rng.integers(1, 13))
        shape = (batch, steps, width) if batch_first else (steps, batch, width)
        x = rng.normal(size=shape).astype(dtype)
        if lengths:
            arguments.append((x, None, rng.integers(0, steps + 1, size=batch)))
        else:
            arguments.append((x,))
    return arguments


@pytest.fixture(params=fastgate.available_backends())
def backend(request):
    with fastgate.use_backend(request.param):
        yield request.param


# ----------------------------------------------------------------------------- threads
@pytest.mark.parametrize("cell,options", [
    ("lstm", {}), ("gru", {"bidirectional": True}), ("rnn", {"num_layers": 2}),
    ("lstm", {"proj_size": 3, "num_layers": 2, "bidirectional": True}),
    ("gru", {"reset_after": False, "dtype": np.float64}),
])
def test_layer_from_many_threads(cell, options, rng):
    options = dict(options)
    structure = {k: options.pop(k) for k in ("num_layers", "bidirectional", "proj_size")
                 if k in options}
    weights = random_cell_weights(cell, 4, 6, rng=rng, **structure)
    layer = LAYERS[cell](weights, bidirectional=structure.get("bidirectional", False),
                         batch_first=True, **options)
    arguments = mixed_inputs(rng, THREADS * CALLS, 4, dtype=layer.dtype, lengths=True)
    check_threads_match_serial(layer, arguments)


def test_layer_on_the_python_backend_from_many_threads(rng):
    layer = fastgate.GRU(random_cell_weights("gru", 4, 6, rng=rng), batch_first=True)
    arguments = mixed_inputs(rng, THREADS * 20, 4)

    def call(x):
        with fastgate.use_backend("python"):  # per thread: the others keep theirs
            return layer(x)
    check_threads_match_serial(call, arguments)


@pytest.mark.parametrize("cell", list(CELLS))
def test_cell_from_many_threads(cell, rng, backend):
    cell_op = CELLS[cell](random_cell_weights(cell, 4, 6, rng=rng)[0])
    arguments = []
    for _ in range(THREADS * CALLS):
        batch = int(rng.integers(1, 10))
        state = cell_op.initial_state(batch)
        state = tuple(rng.normal(size=s.shape) for s in state) if cell == "lstm" else \
            rng.normal(size=state.shape)
        arguments.append((rng.normal(size=(batch, 4)), state))
    check_threads_match_serial(cell_op, arguments)


def keras_like_model(rng, dtype=np.float32):
    """Masking -> LSTM(seq) -> GRU(seq) -> Dense(tanh) -> Dense -> softmax, and a 2nd output."""
    def recurrent(cell, width, units, **options):
        weights = random_cell_weights(cell, width, units, rng=rng, dtype=dtype)
        return Recurrent(LAYERS[cell](weights, dtype=dtype, batch_first=True), **options)

    nodes = [("masking", Masking(0.0, dtype=dtype), (-1, 0)),
             ("lstm", recurrent("lstm", 4, 6, return_sequences=True), (0, 0)),
             ("gru", recurrent("gru", 6, 5, return_sequences=True), (1, 0)),
             ("hidden", Dense(rng.normal(0, 0.3, (5, 4)), rng.normal(0, 0.3, 4),
                              activation="tanh", dtype=dtype), (2, 0)),
             ("logits", Dense(rng.normal(0, 0.3, (4, 3)), dtype=dtype), (3, 0)),
             ("softmax", Activation("softmax", dtype=dtype), (4, 0)),
             ("pool", GlobalPooling1D("average", dtype=dtype), (2, 0))]
    return fastgate.Model(nodes, [(5, 0), (6, 0)], input_shape=(None, None, 4))


def padded(x, rng):
    x = x.copy()
    x[0, int(rng.integers(0, x.shape[1])):] = 0  # some masked steps
    return x


def test_model_from_many_threads(rng, backend):
    model = keras_like_model(rng)
    arguments = [(padded(x, rng),) for (x,) in mixed_inputs(rng, THREADS * CALLS, 4)]
    check_threads_match_serial(model.predict, arguments)


def test_model_streaming_from_many_threads(rng, backend):
    model = keras_like_model(rng)
    streaming = fastgate.Model(model.nodes[:6], [(5, 0)], input_shape=model.input_shape)
    arguments = []
    for (x,) in mixed_inputs(rng, THREADS * CALLS, 4):
        x = padded(x, rng)
        # a session resumed from a parked state: the state after the first half
        _, state = streaming.step(x[:, : x.shape[1] // 2 + 1], None)
        arguments.append((x[:, x.shape[1] // 2:], state))
    check_threads_match_serial(streaming.step, arguments)


def test_layer_step_from_many_threads(rng):
    layer = fastgate.LSTM(random_cell_weights("lstm", 4, 6, num_layers=2, rng=rng))
    arguments = []
    for (x,) in mixed_inputs(rng, THREADS * CALLS, 4):
        h, c = layer.initial_state(x.shape[0])
        arguments.append((x, (rng.normal(size=h.shape), rng.normal(size=c.shape))))
    check_threads_match_serial(layer.step, arguments)


# ---------------------------------------------------------------------------- pickling
def every_kind_of_object(rng):
    """``(name, object, inputs)`` for every public class, ready to call."""
    x = rng.normal(size=(3, 5, 4)).astype(np.float32)
    ids = rng.integers(0, 10, size=(3, 5))
    objects = []
    for cell, layer_class in LAYERS.items():
        layer = layer_class(random_cell_weights(cell, 4, 6, num_layers=2, bidirectional=True,
                                                rng=rng), bidirectional=True, batch_first=True)
        objects.append((f"{cell} layer", layer, lambda o: o(x, lengths=[5, 2, 0])))
        cell_op = CELLS[cell](random_cell_weights(cell, 4, 6, rng=rng)[0])
        objects.append((f"{cell} cell", cell_op, lambda o: o(x[:, 0])))
    objects.append(("projected lstm", fastgate.LSTM(
        random_cell_weights("lstm", 4, 6, proj_size=3, rng=rng), dtype=np.float64),
        lambda o: o(x.astype(np.float64))))
    objects.append(("dense", Dense(rng.normal(size=(4, 2)), rng.normal(size=2),
                                   activation="relu"), lambda o: o(x)))
    objects.append(("embedding", Embedding(rng.normal(size=(10, 3)), mask_zero=True),
                    lambda o: o.apply(ids, None)))
    gru = fastgate.GRU(random_cell_weights("gru", 4, 6, rng=rng), batch_first=True)
    gru_back = fastgate.GRU(random_cell_weights("gru", 4, 6, rng=rng), batch_first=True)
    recurrent = Recurrent(gru, return_sequences=True, return_state=True)
    objects.append(("recurrent op", recurrent, lambda o: o.apply(x, x[..., 0] > 0)))
    objects.append(("bidirectional op", Bidirectional(
        Recurrent(gru), Recurrent(gru_back, go_backwards=True), merge_mode="ave"),
        lambda o: o.apply(x, None)))
    for op in (Masking(0.5), Flatten(), GlobalPooling1D("max"), Activation("softmax")):
        objects.append((type(op).__name__, op, lambda o: o.apply(x, None)))
    objects.append(("RepeatVector", RepeatVector(3), lambda o: o.apply(x[:, 0], None)))
    model = keras_like_model(rng)
    objects.append(("model", model, lambda o: o.predict(x)))
    stateful = fastgate.Model([("gru", Recurrent(gru, stateful=True), (-1, 0))], [(0, 0)])
    stateful.predict(x)  # carries a state: pickling keeps it, like Keras' saved states
    objects.append(("stateful model", stateful, lambda o: o.predict(x)))
    return objects


def test_every_object_survives_pickling(rng):
    for name, obj, call in every_kind_of_object(rng):
        for protocol in (2, pickle.HIGHEST_PROTOCOL):
            clone = pickle.loads(pickle.dumps(obj, protocol=protocol))
            assert type(clone) is type(obj)
            assert repr(clone) == repr(obj), name
            assert_same(call(clone), call(obj), name)


def test_imported_models_survive_pickling(rng, tmp_path):
    import keras
    import torch

    torch.manual_seed(0)
    net = torch.nn.LSTM(4, 6, num_layers=2, batch_first=True)
    layer = fastgate.from_torch(net)
    x = rng.normal(size=(2, 5, 4)).astype(np.float32)
    assert_same(pickle.loads(pickle.dumps(layer))(x), layer(x), "from_torch")

    keras_model = keras.Sequential([keras.Input((None, 4)), keras.layers.Masking(),
                                    keras.layers.GRU(5, return_sequences=True),
                                    keras.layers.Dense(2)])
    keras_model.save(tmp_path / "model.keras")
    model = fastgate.load(tmp_path / "model.keras")
    clone = pickle.loads(pickle.dumps(model))
    assert_same(clone.predict(x), model.predict(x), "fastgate.load")
    assert_same(clone.step(x, None), model.step(x, None), "fastgate.load step")


def test_unpickling_rebuilds_the_packed_kernel_weights(rng):
    layer = fastgate.LSTM(random_cell_weights("lstm", 4, 6, rng=rng))
    payload = pickle.dumps(layer)
    assert b"_prepared" not in payload  # derived, machine-specific: never shipped
    clone = pickle.loads(payload)
    assert (clone._prepared is None) == (layer._prepared is None)


# --------------------------------------------------------------------------- processes
def test_spawned_worker_processes_give_identical_results(rng):
    model = keras_like_model(rng)
    layer = fastgate.GRU(random_cell_weights("gru", 4, 6, num_layers=2, rng=rng),
                         batch_first=True)
    cell = fastgate.LSTMCell(random_cell_weights("lstm", 4, 6, rng=rng)[0])
    streaming = fastgate.Model(model.nodes[:6], [(5, 0)])
    inputs = [padded(x, rng) for (x,) in mixed_inputs(rng, 6, 4)]
    jobs = ([(model.predict, (x,)) for x in inputs]
            + [(layer, (x, None, np.full(x.shape[0], x.shape[1]))) for x in inputs]
            + [(cell, (x[:, 0],)) for x in inputs]
            + [(streaming.step, (x, streaming.initial_state(x.shape[0]))) for x in inputs])
    expected = [function(*args) for function, args in jobs]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        futures = [pool.submit(function, *args) for function, args in jobs]
        results = [future.result(timeout=120) for future in futures]
    for k, (got, want) in enumerate(zip(results, expected)):
        assert_same(got, want, f"job {k}")
