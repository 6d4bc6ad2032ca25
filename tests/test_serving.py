"""fastgate.serving in-process: the Batcher and Sessions.

The property checked throughout: what comes out of a batched pass is what the sequence gives
alone. Batcher: ``batcher(x)`` equals ``model.predict(x[None])[0]`` within 1e-6 absolute on
O(1) outputs (the batched and the batch-1 pass differ only in summation order), for every
request of many concurrent ones of mixed lengths, through both ways of batching mixed lengths
(pad+mask, group by length), and against Keras' own predict on each sequence alone.
Sessions: chunks streamed through batched steps equal one pass of the whole sequence (1e-6).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fastgate  # noqa: E402
from fastgate import ConfigError, ShapeError  # noqa: E402
from fastgate.ops import Bidirectional, Dense, Embedding, Masking, Recurrent  # noqa: E402
from fastgate.serving import (Batcher, ServingClosedError, SessionLimitError,  # noqa: E402
                              Sessions, UnknownSessionError)
from fastgate.serving.batcher import padding_value  # noqa: E402

ATOL = 1e-6
WIDTH, UNITS, OUT = 5, 24, 3


def head(rng, units=UNITS, out=OUT):
    """A Dense head with O(1) outputs."""
    return Dense((rng.standard_normal((units, out)) / np.sqrt(units)).astype(np.float32),
                 rng.standard_normal(out).astype(np.float32) * 0.1)


def lstm_model(rng, *, masking=False, return_sequences=False, input_shape=(None, None, WIDTH)):
    nodes = []
    if masking:
        nodes.append(("mask", Masking(0.0), (-1, 0)))
    nodes.append(("lstm", Recurrent(fastgate.LSTM.random(WIDTH, UNITS, batch_first=True),
                                    return_sequences=return_sequences), (len(nodes) - 1, 0)))
    nodes.append(("head", head(rng), (len(nodes) - 1, 0)))
    return fastgate.Model(nodes, [(len(nodes) - 1, 0)], input_shape=input_shape)


def sequences(rng, count, longest=30, width=WIDTH):
    return [rng.standard_normal((int(rng.integers(1, longest + 1)), width)).astype(np.float32)
            for _ in range(count)]


def call_concurrently(function, inputs, threads=16):
    """``[function(x) for x in inputs]``, each call in its own thread, all started together;
    an exception is returned in place of its result."""
    results = [None] * len(inputs)
    start = threading.Barrier(min(threads, len(inputs)))

    def work(indices):
        start.wait(timeout=30)
        for k in indices:
            try:
                results[k] = function(inputs[k])
            except Exception as error:
                results[k] = error

    workers = [threading.Thread(target=work, args=(list(range(t, len(inputs), threads)),))
               for t in range(min(threads, len(inputs)))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert not worker.is_alive()
    return results


# ----------------------------------------------------------------------------- Batcher
@pytest.mark.parametrize("masking", [False, True], ids=["group-by-length", "pad+mask"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_batched_answers_equal_predict_alone(masking, return_sequences, rng):
    model = lstm_model(rng, masking=masking, return_sequences=return_sequences)
    inputs = sequences(rng, 96)
    with Batcher(model, max_batch=32, max_wait_ms=20) as batcher:
        assert (batcher.padding is not None) == masking
        results = call_concurrently(batcher, inputs)
        # batching happened: fewer passes than requests, none above max_batch
        buckets, total, passes = batcher.batch_sizes.snapshot()
    assert total == len(inputs) and passes < len(inputs)
    assert dict(buckets)[32.0] == passes
    for x, y in zip(inputs, results):
        expected = model.predict(x[None])[0]
        assert y.shape == expected.shape
        np.testing.assert_allclose(y, expected, rtol=0, atol=ATOL)


def test_several_outputs_and_token_ids(rng):
    embedding = Embedding(rng.standard_normal((20, WIDTH)).astype(np.float32), mask_zero=True)
    lstm = Recurrent(fastgate.LSTM.random(WIDTH, UNITS, batch_first=True),
                     return_sequences=True, return_state=True)
    model = fastgate.Model([("embed", embedding, (-1, 0)), ("lstm", lstm, (0, 0)),
                            ("head", head(rng), (1, 0))], [(2, 0), (1, 1), (1, 2)])
    inputs = [rng.integers(1, 20, size=int(rng.integers(1, 15))) for _ in range(40)]
    with Batcher(model, max_wait_ms=20) as batcher:
        assert batcher.padding == 0.0
        results = call_concurrently(batcher, inputs)
    for ids, answer in zip(inputs, results):
        expected = model.predict(ids[None])
        assert isinstance(answer, list) and len(answer) == 3
        for got, want in zip(answer, expected):
            np.testing.assert_allclose(got, want[0], rtol=0, atol=ATOL)


def test_padding_only_where_the_model_masks_it_away(rng):
    lstm = fastgate.LSTM.random(WIDTH, UNITS, batch_first=True)
    assert padding_value(lstm_model(rng)) is None
    assert padding_value(lstm_model(rng, masking=True)) == 0.0
    reads_backwards = fastgate.Model([("mask", Masking(0.0), (-1, 0)),
                                      ("lstm", Recurrent(lstm, go_backwards=True), (0, 0))],
                                     [(1, 0)])
    zero_last_output = fastgate.Model(
        [("mask", Masking(0.0), (-1, 0)),
         ("lstm", Recurrent(lstm, zero_output_for_mask=True), (0, 0))], [(1, 0)])
    both_ways = fastgate.Model(
        [("mask", Masking(0.0), (-1, 0)),
         ("bi", Bidirectional(Recurrent(lstm), Recurrent(lstm, go_backwards=True)), (0, 0))],
        [(1, 0)])
    nan_mask = fastgate.Model([("mask", Masking(float("nan")), (-1, 0)),
                               ("lstm", Recurrent(lstm), (0, 0))], [(1, 0)])
    for model in (reads_backwards, zero_last_output, both_ways, nan_mask):
        assert padding_value(model) is None
        with Batcher(model, max_wait_ms=10) as batcher:   # grouped by length: still exact
            inputs = sequences(rng, 12)
            for x, y in zip(inputs, call_concurrently(batcher, inputs)):
                np.testing.assert_allclose(y, model.predict(x[None])[0], rtol=0, atol=ATOL)


def test_batched_keras_masked_model_equals_keras_on_each_sequence_alone(tmp_path, rng):
    import keras

    layers = keras.layers
    keras_model = keras.Sequential([
        keras.Input((None, WIDTH)), layers.Masking(0.0),
        layers.GRU(12, return_sequences=True), layers.LSTM(10), layers.Dense(2)])
    keras_model.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32)
                             for w in keras_model.get_weights()])
    keras_model.save(tmp_path / "masked.keras")
    model = fastgate.load(tmp_path / "masked.keras")
    inputs = sequences(rng, 24, longest=12)
    with Batcher(model, max_wait_ms=20) as batcher:
        assert batcher.padding == 0.0
        results = call_concurrently(batcher, inputs)
    for x, y in zip(inputs, results):
        # float32 against Keras: 1e-5 on O(1) values
        np.testing.assert_allclose(y, keras_model.predict(x[None], verbose=0)[0], rtol=0,
                                   atol=1e-5)


def test_a_bad_request_fails_alone(rng):
    model = lstm_model(rng, input_shape=None)   # widths are only checked by the LSTM
    good = sequences(rng, 30, longest=5)
    bad = [np.zeros((3, WIDTH + 2), np.float32), np.array([["a"]]), np.zeros((0, WIDTH))]
    inputs = good[:10] + bad[:1] + good[10:20] + bad[1:] + good[20:]
    with Batcher(model, max_wait_ms=30) as batcher:
        results = call_concurrently(batcher, inputs)
    outcomes = [type(r).__name__ if isinstance(r, Exception) else "ok" for r in results]
    assert outcomes.count("ok") == len(good)
    assert [o for o in outcomes if o != "ok"] == ["ShapeError", "DTypeError", "ShapeError"]
    assert "expected (B, T, 5)" in str(results[10])
    for x, y in zip(good, [r for r in results if not isinstance(r, Exception)]):
        np.testing.assert_allclose(y, model.predict(x[None])[0], rtol=0, atol=ATOL)


def test_asyncio_callers_share_batches(rng):
    model = lstm_model(rng)
    inputs = sequences(rng, 40)

    async def main(batcher):
        return await asyncio.gather(*(batcher.predict_async(x) for x in inputs))

    with Batcher(model, max_wait_ms=20) as batcher:
        results = asyncio.run(main(batcher))
        assert batcher.batch_sizes.count < len(inputs)
    for x, y in zip(inputs, results):
        np.testing.assert_allclose(y, model.predict(x[None])[0], rtol=0, atol=ATOL)


def test_an_awaited_request_cancelled_before_its_batch_is_skipped(rng):
    model = lstm_model(rng)
    inputs = sequences(rng, 6)

    async def main(batcher):
        futures = [batcher.submit_async(x) for x in inputs]
        futures[2].cancel()                  # its client went away before the batch ran
        return await asyncio.gather(*futures, return_exceptions=True)

    with Batcher(model, max_wait_ms=50) as batcher:
        results = asyncio.run(main(batcher))
        assert batcher.batch_sizes.snapshot()[1] == len(inputs) - 1   # not computed
    assert isinstance(results[2], asyncio.CancelledError)
    for k, (x, y) in enumerate(zip(inputs, results)):
        if k != 2:
            np.testing.assert_allclose(y, model.predict(x[None])[0], rtol=0, atol=ATOL)


def test_close_answers_the_queued_requests_then_refuses(rng):
    model = lstm_model(rng)
    inputs = sequences(rng, 8)
    batcher = Batcher(model, max_wait_ms=300)
    futures = [batcher.submit(x) for x in inputs]
    batcher.close(timeout=30)
    for x, future in zip(inputs, futures):
        np.testing.assert_allclose(future.result(timeout=0), model.predict(x[None])[0],
                                   rtol=0, atol=ATOL)
    with pytest.raises(ServingClosedError, match="closed"):
        batcher(inputs[0])
    assert "closed" in repr(batcher)
    batcher.close()   # idempotent


def test_batcher_configuration_errors(rng):
    model = lstm_model(rng)
    with pytest.raises(ConfigError, match="max_batch"):
        Batcher(model, max_batch=0)
    with pytest.raises(ConfigError, match="max_wait_ms"):
        Batcher(model, max_wait_ms=-1)
    with pytest.raises(ConfigError, match="fastgate.Model"):
        Batcher(fastgate.LSTM.random(WIDTH, UNITS))
    lstm = fastgate.LSTM.random(WIDTH, UNITS, batch_first=True)
    stateful = fastgate.Model([("lstm", Recurrent(lstm, stateful=True), (-1, 0))], [(0, 0)])
    with pytest.raises(ConfigError, match="stateful"):
        Batcher(stateful)
    with Batcher(model) as batcher, pytest.raises(ShapeError, match="at least one step"):
        batcher(np.zeros((0, WIDTH), np.float32))


# ----------------------------------------------------------------------------- Sessions
def test_sessions_streamed_in_batched_steps_equal_one_pass(rng):
    model = lstm_model(rng, masking=True, return_sequences=True)
    count, steps = 12, 24
    x = rng.standard_normal((count, steps, WIDTH)).astype(np.float32)
    x[3, 5:9] = 0.0     # masked steps inside a sequence, carried across chunk bounds
    cuts = [0, 1, 2, 7, 8, 16, 24]
    with Sessions(model, max_wait_ms=20) as sessions:
        ids = [sessions.create() for _ in range(count)]
        rounds = []
        for start, stop in zip(cuts[:-1], cuts[1:]):
            rounds.append(call_concurrently(lambda k: sessions.step(ids[k], x[k, start:stop]),
                                            list(range(count))))
        buckets, total, passes = sessions.batch_sizes.snapshot()
    assert total == count * (len(cuts) - 1) and passes < total   # sessions shared steps
    expected = model.predict(x)
    for k in range(count):
        streamed = np.concatenate([outputs[k] for outputs in rounds])
        np.testing.assert_allclose(streamed, expected[k], rtol=0, atol=ATOL)


def test_steps_of_one_session_run_in_order_even_in_one_batch(rng):
    model = lstm_model(rng, return_sequences=True)
    x = rng.standard_normal((1, 10, WIDTH)).astype(np.float32)
    with Sessions(model, max_wait_ms=200) as sessions:
        sid = sessions.create()
        futures = [sessions.submit(sid, x[0, t:t + 1]) for t in range(10)]
        streamed = np.concatenate([f.result(timeout=30) for f in futures])
    np.testing.assert_allclose(streamed, model.predict(x)[0], rtol=0, atol=ATOL)


def test_last_step_model_gives_the_output_after_each_chunk(rng):
    model = lstm_model(rng)
    x = rng.standard_normal((1, 9, WIDTH)).astype(np.float32)
    with Sessions(model) as sessions:
        sid = sessions.create()
        sessions.step(sid, x[0, :4])
        last = sessions.step(sid, x[0, 4:])
    np.testing.assert_allclose(last, model.predict(x)[0], rtol=0, atol=ATOL)


def test_session_limits_expiry_and_unknown_ids(rng):
    model = lstm_model(rng)
    chunk = np.zeros((2, WIDTH), np.float32)
    with Sessions(model, ttl_s=0.3, max_sessions=2) as sessions:
        first, second = sessions.create(), sessions.create()
        with pytest.raises(SessionLimitError, match="2 sessions are live"):
            sessions.create()
        sessions.delete(first)
        with pytest.raises(UnknownSessionError, match="unknown session"):
            sessions.step(first, chunk)
        with pytest.raises(UnknownSessionError, match="unknown session"):
            sessions.delete("no-such-session")
        time.sleep(0.5)
        with pytest.raises(UnknownSessionError, match="expired"):
            sessions.step(second, chunk)
        assert len(sessions) == 0
        sessions.create()              # room again
        with pytest.raises(ShapeError, match="features"):
            sessions.step(sessions.create(), np.zeros((2, WIDTH + 1)))
        assert "live=2" in repr(sessions)


def test_models_that_cannot_stream_are_refused(rng):
    lstm = fastgate.LSTM.random(WIDTH, UNITS, batch_first=True)
    backwards = fastgate.Model([("lstm", Recurrent(lstm, go_backwards=True), (-1, 0))],
                               [(0, 0)])
    with pytest.raises(ConfigError, match="go_backwards"):
        Sessions(backwards)
    with pytest.raises(ConfigError, match="ttl_s"):
        Sessions(lstm_model(rng), ttl_s=0)


def test_import_fastgate_imports_neither_serving_nor_a_web_server(tmp_path):
    import subprocess
    import sys

    from conftest import subprocess_env

    code = ("import sys, fastgate; loaded = [m for m in ('fastgate.serving', 'uvicorn', "
            "'httptools', 'uvloop') if m in sys.modules]; print(loaded)")
    result = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


def test_token_sessions_and_a_bad_chunk_failing_alone(rng):
    embedding = Embedding(rng.standard_normal((30, WIDTH)).astype(np.float32), mask_zero=True)
    lstm = Recurrent(fastgate.LSTM.random(WIDTH, UNITS, batch_first=True),
                     return_sequences=True)
    model = fastgate.Model([("embed", embedding, (-1, 0)), ("lstm", lstm, (0, 0)),
                            ("head", head(rng), (1, 0))], [(2, 0)])
    ids = rng.integers(0, 30, size=(6, 12))
    with Sessions(model, max_wait_ms=50) as sessions:
        sids = [sessions.create() for _ in range(6)]
        chunks = [ids[k, :7] for k in range(6)]
        chunks[2] = np.array([1, 2, 99])          # out of the vocabulary: fails alone
        first = call_concurrently(lambda k: sessions.step(sids[k], chunks[k]), list(range(6)))
        assert isinstance(first[2], fastgate.InputError) and "[0, 30)" in str(first[2])
        second = call_concurrently(lambda k: sessions.step(sids[k], ids[k, 7:]),
                                   [0, 1, 3, 4, 5])
    expected = model.predict(ids)
    for k, later in zip([0, 1, 3, 4, 5], second):
        np.testing.assert_allclose(np.concatenate([first[k], later]), expected[k], rtol=0,
                                   atol=ATOL)
