"""fastgate.dask on a real LocalCluster (2 worker processes, 1 thread each).

One cluster serves the whole module (starting one costs about a second); it is closed at the
end and its worker processes must be gone. Every wait on the cluster has a timeout, so a
failure is a failure, never a hang. Results are compared with fastgate in this process
(atol 1e-6; bit for bit against the same blocks run here, where the kernel's plan is the
same) and with the framework that trained the model (atol 1e-5 on O(1) float32 values).
The SIGKILL test restarts a worker: it runs last.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import dask.array as da  # noqa: E402
import dask.bag as db  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

import fastgate  # noqa: E402
import fastgate.dask as fgd  # noqa: E402
from conftest import subprocess_env  # noqa: E402

L = keras.layers
TIMEOUT = 120   # seconds for any one computation on the cluster
ATOL_SELF = 1e-6
ATOL_FRAMEWORK = 1e-5


@pytest.fixture(scope="module")
def client():
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=":0")
    client = Client(cluster)
    pids = set()
    try:
        yield client
    finally:
        pids |= set(client.run(os.getpid).values())
        pids |= {nanny.process.pid for nanny in cluster.workers.values()
                 if nanny.process is not None and nanny.process.pid}
        client.close()
        cluster.close()
    deadline = time.monotonic() + 30
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if _alive(pid)}
        time.sleep(0.1)
    assert not alive, f"worker processes left running after close: {sorted(alive)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) is gone for our purpose
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def compute(client, *collections):
    """The collections computed on ``client``, waiting at most TIMEOUT seconds."""
    futures = client.compute(list(collections))
    return [future.result(timeout=TIMEOUT) for future in futures]


def keras_randomized(model, seed):
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32)
                       for w in model.get_weights()])
    return model


def per_block(run, x, rows):
    """``run`` on each block of ``rows`` sequences of ``x`` in this process, concatenated:
    the same kernel plans as the tasks."""
    pieces = [run(x[start:start + rows]) for start in range(0, len(x), rows)]
    if isinstance(pieces[0], list):
        return [np.concatenate(parts) for parts in zip(*pieces)]
    return np.concatenate(pieces)


# ============================================================================ packaging
def test_import_fastgate_does_not_import_dask():
    code = ("import sys, fastgate, fastgate.cli; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed'));"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=subprocess_env(), cwd=tempfile.gettempdir(), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workers_run_the_fastgate_under_test_with_one_kernel_thread(client):
    layer = fastgate.GRU.random(3, 4, batch_first=True)
    compute(client, fgd.predict(layer, np.zeros((4, 2, 3), np.float32), client))

    def describe():
        return (fastgate.__file__, fastgate.backend(), fastgate.get_num_threads(),
                os.environ.get("OMP_NUM_THREADS"))

    for info in client.run(describe).values():
        assert info == (fastgate.__file__, fastgate.backend(), 1, "1")


# ============================================================================ equality
def test_keras_model_matches_in_process_and_keras(client, tmp_path, rng):
    keras_model = keras_randomized(keras.Sequential([
        keras.Input((12, 5)), L.LSTM(16, return_sequences=True), L.GRU(8), L.Dense(3)]), 1)
    keras_model.save(tmp_path / "m.keras")
    model = fastgate.load(tmp_path / "m.keras")
    x = rng.normal(size=(200, 12, 5)).astype(np.float32)
    Y = fgd.predict(model, da.from_array(x, chunks=(50, 12, 5)), client)
    assert Y.shape == (200, 3) and Y.dtype == np.float32 and Y.chunks[0] == (50,) * 4
    (y,) = compute(client, Y)
    np.testing.assert_array_equal(y, per_block(model.predict, x, 50))
    np.testing.assert_allclose(y, model.predict(x), rtol=0, atol=ATOL_SELF)
    np.testing.assert_allclose(y, keras_model.predict(x, verbose=0), rtol=0,
                               atol=ATOL_FRAMEWORK)


def test_keras_model_with_several_outputs_gives_a_list(client, tmp_path, rng):
    inputs = keras.Input((9, 4))
    sequence, h, c = L.LSTM(6, return_sequences=True, return_state=True)(inputs)
    keras_model = keras_randomized(keras.Model(inputs, [L.Dense(2)(h), sequence, c]), 2)
    keras_model.save(tmp_path / "multi.keras")
    model = fastgate.load(tmp_path / "multi.keras")
    x = rng.normal(size=(30, 9, 4)).astype(np.float32)
    outputs = fgd.predict(model, da.from_array(x, chunks=(8, 9, 4)), client)
    assert isinstance(outputs, list) and [o.shape for o in outputs] == [
        (30, 2), (30, 9, 6), (30, 6)]
    computed = compute(client, *outputs)
    for got, here, framework in zip(computed, per_block(model.predict, x, 8),
                                    keras_model.predict(x, verbose=0)):
        np.testing.assert_array_equal(got, here)
        np.testing.assert_allclose(got, framework, rtol=0, atol=ATOL_FRAMEWORK)


@pytest.mark.parametrize("batch_first", [True, False])
def test_torch_layer_with_state_matches_in_process_and_torch(client, rng, batch_first):
    torch.manual_seed(3)
    module = torch.nn.LSTM(5, 16, num_layers=2, bidirectional=True, batch_first=batch_first)
    layer = fastgate.from_torch(module)
    x = rng.normal(size=(40, 7, 5) if batch_first else (7, 40, 5)).astype(np.float32)
    chunks = (10, 7, 5) if batch_first else (7, 10, 5)
    out, (h_n, c_n) = fgd.predict(layer, da.from_array(x, chunks=chunks), client,
                                  return_state=True)
    assert h_n.shape == (4, 40, 16) and h_n.chunks[1] == (10,) * 4
    got = compute(client, out, h_n, c_n)
    axis = 0 if batch_first else 1
    blocks = [layer(np.take(x, range(k, k + 10), axis=axis)) for k in range(0, 40, 10)]
    here = [np.concatenate([b[0] for b in blocks], axis=axis),
            np.concatenate([b[1][0] for b in blocks], axis=1),
            np.concatenate([b[1][1] for b in blocks], axis=1)]
    with torch.no_grad():
        t_out, (t_h, t_c) = module(torch.from_numpy(x))
    for value, same_plan, framework in zip(got, here, (t_out, t_h, t_c)):
        np.testing.assert_array_equal(value, same_plan)
        np.testing.assert_allclose(value, framework.numpy(), rtol=0, atol=ATOL_FRAMEWORK)
    np.testing.assert_allclose(got[0], layer(x)[0], rtol=0, atol=ATOL_SELF)


@pytest.mark.parametrize("batch_first", [True, False])
def test_a_task_runs_its_block_in_passes_of_batch_rows(client, rng, batch_first):
    torch.manual_seed(5)
    module = torch.nn.GRU(5, 12, bidirectional=True, batch_first=batch_first)
    layer = fastgate.from_torch(module)
    x = rng.normal(size=(50, 6, 5) if batch_first else (6, 50, 5)).astype(np.float32)
    axis = 0 if batch_first else 1
    X = da.from_array(x, chunks={axis: 25})
    out, h_n = fgd.predict(layer, X, client, return_state=True, batch_rows=10)
    got = compute(client, out, h_n)
    passes = [layer(np.take(x, range(k, min(k + 10, k // 25 * 25 + 25)), axis=axis))
              for k in [0, 10, 20, 25, 35, 45]]          # blocks of 25: passes 10, 10, 5
    np.testing.assert_array_equal(got[0], np.concatenate([p[0] for p in passes], axis=axis))
    np.testing.assert_array_equal(got[1], np.concatenate([p[1] for p in passes], axis=1))
    with torch.no_grad():
        t_out, t_h = module(torch.from_numpy(x))
    np.testing.assert_allclose(got[0], t_out.numpy(), rtol=0, atol=ATOL_FRAMEWORK)
    np.testing.assert_allclose(got[1], t_h.numpy(), rtol=0, atol=ATOL_FRAMEWORK)
    model = fastgate.Model([("gru", fastgate.ops.Recurrent(
        fastgate.GRU.random(5, 8, batch_first=True)), (-1, 0))], [(0, 0)])
    xb = np.moveaxis(x, axis, 0)
    (y,) = compute(client, fgd.predict(model, da.from_array(xb, chunks=(25, 6, 5)), client,
                                       batch_rows=10))
    np.testing.assert_allclose(y, model.predict(xb), rtol=0, atol=ATOL_SELF)
    for bad in (0, 2.5, True):
        with pytest.raises(fastgate.errors.ConfigError, match="batch_rows"):
            fgd.predict(model, xb, client, batch_rows=bad)


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    """A Keras token-id model (Embedding(mask_zero) -> LSTM -> Dense) and fastgate's copy."""
    keras_model = keras_randomized(keras.Sequential([
        keras.Input((None,), dtype="int32"), L.Embedding(50, 8, mask_zero=True),
        L.LSTM(16), L.Dense(1, activation="sigmoid")]), 4)
    path = tmp_path_factory.mktemp("dask") / "sentiment.keras"
    keras_model.save(path)
    return keras_model, fastgate.load(path)


def test_token_id_model_matches_in_process_and_keras(client, sentiment, rng):
    keras_model, model = sentiment
    ids = rng.integers(1, 50, size=(64, 11)).astype(np.int32)
    ids[::3, 8:] = 0                        # zero padding, masked by the Embedding
    Y = fgd.predict(model, da.from_array(ids, chunks=(16, 11)), client)
    (y,) = compute(client, Y)
    np.testing.assert_array_equal(y, per_block(model.predict, ids, 16))
    np.testing.assert_allclose(y, model.predict(ids), rtol=0, atol=ATOL_SELF)
    np.testing.assert_allclose(y, keras_model.predict(ids, verbose=0), rtol=0,
                               atol=ATOL_FRAMEWORK)


def test_chunks_along_time_and_features_are_merged(client, rng):
    layer = fastgate.GRU.random(6, 12, batch_first=True)
    x = rng.normal(size=(24, 20, 6)).astype(np.float32)
    Y = fgd.predict(layer, da.from_array(x, chunks=(6, 7, 4)), client)
    assert Y.chunks == ((6,) * 4, (20,), (12,))
    (y,) = compute(client, Y)
    np.testing.assert_array_equal(y, per_block(lambda part: layer(part)[0], x, 6))


def test_numpy_input_is_chunked_along_the_batch(client, rng):
    layer = fastgate.SimpleRNN.random(3, 5, batch_first=True)
    x = rng.normal(size=(10, 4, 3)).astype(np.float32)
    (y,) = compute(client, fgd.predict(layer, x))          # client=None: the current one
    np.testing.assert_allclose(y, layer(x)[0], rtol=0, atol=ATOL_SELF)


def test_without_any_client_predict_says_how_to_make_one():
    code = ("import numpy, fastgate, fastgate.dask\n"
            "try:\n"
            "    fastgate.dask.predict(fastgate.LSTM.random(2, 3), numpy.zeros((4, 2, 2)))\n"
            "except fastgate.ConfigError as error:\n"
            "    print(error)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=subprocess_env(), cwd=tempfile.gettempdir(), timeout=120)
    assert "no Dask client: pass client=Client(...)" in result.stdout, result.stderr


# ============================================================================ refusals
def test_a_block_too_big_once_merged_is_refused_with_a_hint(client):
    layer = fastgate.LSTM.random(8, 4, batch_first=True)
    X = da.zeros((100, 50, 8), chunks=(100, 10, 8), dtype=np.float32)
    with pytest.raises(fastgate.ConfigError, match=r"max_block_bytes.*X.rechunk\(\{0: 6\}\)"):
        fgd.predict(layer, X, client, max_block_bytes=10_000)


def test_wrong_width_fails_with_fastgates_error_before_any_task(client, sentiment):
    layer = fastgate.LSTM.random(8, 4, batch_first=True)
    with pytest.raises(fastgate.ShapeError, match="D=8"):
        fgd.predict(layer, da.zeros((10, 5, 7), chunks=5), client)
    model = fastgate.Model([("dense", fastgate.Dense(np.ones((3, 2))), (-1, 0))], [(0, 0)],
                           input_shape=(None, 3))
    with pytest.raises(fastgate.ShapeError, match="expected shape"):
        fgd.predict(model, da.zeros((10, 4), chunks=5), client)
    with pytest.raises(fastgate.DTypeError):
        fgd.predict(layer, da.zeros((10, 5, 8), chunks=5, dtype=complex), client)
    with pytest.raises(fastgate.ShapeError, match=r"expected a batch \(N, T, D\)"):
        fgd.predict(layer, da.zeros((10, 8), chunks=5), client)
    with pytest.raises(fastgate.ShapeError, match=r"sequence 1: expected \(T, 8\)"):
        fgd.predict_sequences(layer, [np.zeros((3, 8)), np.zeros((3, 7))], client)


def test_ids_beyond_the_vocabulary_fail_with_fastgates_error(client, sentiment):
    _, model = sentiment
    ids = np.ones((40, 6), np.int64)
    ids[33, 2] = 50                          # the vocabulary is 0..49
    Y = fgd.predict(model, da.from_array(ids, chunks=(10, 6)), client)
    with pytest.raises(fastgate.InputError, match=r"\[0, 50\).*max 50"):
        compute(client, Y)


def test_what_cannot_be_scored_on_a_cluster_is_refused(client, sentiment, tmp_path):
    keras_model = keras.Sequential([keras.Input((3, 2), batch_size=4),
                                    L.GRU(3, stateful=True)])
    keras_model.save(tmp_path / "stateful.keras")
    stateful = fastgate.load(tmp_path / "stateful.keras")
    with pytest.raises(fastgate.ConfigError, match="stateful"):
        fgd.predict(stateful, da.zeros((8, 3, 2), chunks=4), client)
    cell = fastgate.LSTMCell(fastgate.LSTM.random(2, 3).weights[0])
    with pytest.raises(fastgate.ConfigError, match="scores a fastgate.Model"):
        fgd.predict(cell, da.zeros((8, 3), chunks=4), client)
    layer = fastgate.LSTM.random(2, 3, batch_first=True)
    with pytest.raises(fastgate.ConfigError, match="return_state applies to layers"):
        fgd.predict(sentiment[1], da.zeros((8, 3), chunks=4), client, return_state=True)
    with pytest.raises(fastgate.ConfigError, match="unknown chunk sizes"):
        X = da.zeros((8, 3, 2), chunks=4)
        fgd.predict(layer, X[X[:, 0, 0] == 0], client)


# ============================================================================ shipping
def test_the_model_is_shipped_to_each_worker_once(client):
    layer = fastgate.LSTM.random(64, 256, batch_first=True, seed=7)   # 1.3 MB of weights
    model_bytes = len(fastgate.serialization.to_bytes(layer))
    X = da.random.default_rng(0).standard_normal((96, 5, 64), chunks=(4, 5, 64),
                                                 dtype=np.float32)
    Y = fgd.predict(layer, X, client)
    again = fgd.predict(layer, X[:48], client)                      # the same model again
    graph = pickle.dumps(dict(Y.__dask_graph__()))
    assert len(graph) < model_bytes / 10, "the model is embedded in the graph"
    y, _ = compute(client, Y, again)
    name = fgd.ModelPlugin(fastgate.serialization.to_bytes(layer)).name
    loads = client.run(lambda: dict(fgd._MODEL_LOADS))
    assert len(loads) == 2 and all(count.get(name) == 1 for count in loads.values()), loads
    plugins = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.worker_plugins))
    assert plugins.count(name) == 1
    np.testing.assert_array_equal(y, per_block(lambda part: layer(part)[0], X.compute(), 4))
    assert fgd.release(layer, client) and not fgd.release(layer, client)
    assert not any(name in plugins for plugins in client.run(
        lambda dask_worker: list(dask_worker.plugins)).values())


# ============================================================================ ragged
def test_bucket_keys():
    lengths = np.array([1, 8, 9, 16, 17, 3])
    assert fgd._bucket_keys(lengths, 8, 0.0) == [0, 0, 1, 1, 2, 0]
    assert fgd._bucket_keys(lengths, [4, 10], 0.0) == [0, 1, 1, 2, 2, 0]
    assert fgd._bucket_keys(lengths, 8, None) == [1, 8, 9, 16, 17, 3]   # no masking
    with pytest.raises(fastgate.ConfigError):
        fgd._bucket_keys(lengths, [10, 4], 0.0)


def _ragged(rng, count, width, longest):
    return [rng.normal(size=(int(n), width)).astype(np.float32)
            for n in rng.integers(1, longest + 1, size=count)]


def test_ragged_sequences_through_a_layer_equal_each_sequence_alone(client, rng):
    torch.manual_seed(5)
    module = torch.nn.LSTM(4, 8, bidirectional=True)                  # time-major
    layer = fastgate.from_torch(module)
    sequences = _ragged(rng, 37, 4, 30)
    results = fgd.predict_sequences(layer, sequences, client, bucket=8, batch_size=6,
                                    return_state=True)
    for sequence, (out, (h_n, c_n)) in zip(sequences, results):
        alone_out, (alone_h, alone_c) = layer(sequence)               # unbatched (T, D)
        with torch.no_grad():
            t_out, (t_h, t_c) = module(torch.from_numpy(sequence))
        assert out.shape == alone_out.shape and h_n.shape == alone_h.shape
        for got, alone, framework in ((out, alone_out, t_out), (h_n, alone_h, t_h),
                                      (c_n, alone_c, t_c)):
            np.testing.assert_allclose(got, alone, rtol=0, atol=ATOL_SELF)
            np.testing.assert_allclose(got, framework.numpy(), rtol=0, atol=ATOL_FRAMEWORK)


def test_ragged_sequences_through_a_masking_model_from_a_bag(client, tmp_path, rng):
    keras_model = keras_randomized(keras.Sequential([
        keras.Input((None, 3)), L.Masking(0.0), L.GRU(6, return_sequences=True),
        L.Dense(2)]), 6)
    keras_model.save(tmp_path / "masked.keras")
    model = fastgate.load(tmp_path / "masked.keras")
    sequences = _ragged(rng, 25, 3, 20)
    bag = db.from_sequence(sequences, npartitions=3)
    scored = fgd.predict_sequences(model, bag, client, bucket=[5, 10, 20])
    assert isinstance(scored, db.Bag) and scored.npartitions == 3
    (results,) = compute(client, scored)
    for sequence, result in zip(sequences, results):
        alone = model.predict(sequence[None])[0]
        assert result.shape == (len(sequence), 2)
        np.testing.assert_allclose(result, alone, rtol=0, atol=ATOL_SELF)
        np.testing.assert_allclose(result, keras_model.predict(sequence[None], verbose=0)[0],
                                   rtol=0, atol=ATOL_FRAMEWORK)


def test_ragged_token_ids_and_a_model_that_does_not_mask(client, sentiment, rng):
    _, model = sentiment
    id_sequences = [rng.integers(1, 50, size=n) for n in rng.integers(1, 15, size=20)]
    results = fgd.predict_sequences(model, id_sequences, client, bucket=4)
    for sequence, result in zip(id_sequences, results):
        np.testing.assert_allclose(result, model.predict(sequence[None])[0], rtol=0,
                                   atol=ATOL_SELF)
    # no Masking: padding would change the result, so only equal lengths share a batch
    unmasked = fastgate.Model([("gru", fastgate.Recurrent(fastgate.GRU.random(
        2, 5, batch_first=True)), (-1, 0))], [(0, 0)])
    sequences = _ragged(rng, 15, 2, 6)
    results = fgd.predict_sequences(unmasked, sequences, client, bucket=100)
    for sequence, result in zip(sequences, results):
        np.testing.assert_allclose(result, unmasked.predict(sequence[None])[0], rtol=0,
                                   atol=ATOL_SELF)


# ============================================================================ failures
def test_a_worker_killed_mid_computation_loses_nothing(client):
    # last of the cluster tests but the CLI's: it restarts a worker. 100 tasks of about 15 ms
    # each on an idle core; the kill comes once 3 are done, so finished results are lost too.
    layer = fastgate.LSTM.random(64, 256, batch_first=True, seed=11)
    X = da.random.default_rng(1).standard_normal((1600, 100, 64), chunks=(16, 100, 64),
                                                 dtype=np.float32)
    expected = per_block(lambda part: layer(part)[0][:, -1], X.compute(), 16)
    Y = fgd.predict(layer, X, client)[:, -1]
    future = client.compute(Y)

    def finished(dask_scheduler):
        return sum(task.state == "memory" for key, task in dask_scheduler.tasks.items()
                   if "fastgate-predict" in str(key))   # fused: a prefix of the name

    deadline = time.monotonic() + TIMEOUT
    while client.run_on_scheduler(finished) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    victim = next(address for address, tasks in client.processing().items() if tasks)
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)
    assert not future.done(), "the computation finished before the kill: make it longer"
    y = future.result(timeout=TIMEOUT)
    np.testing.assert_array_equal(y, expected)
    client.wait_for_workers(2, timeout=TIMEOUT)
    assert pid not in client.run(os.getpid).values()


# ============================================================================ command line
@pytest.fixture
def input_directory(tmp_path, rng):
    """Three .npy inputs of different sizes and a .npz one, for a (B, T, 4) model."""
    directory = tmp_path / "inputs"
    directory.mkdir()
    arrays = {f"part{k}.npy": rng.normal(size=(5 + 7 * k, 6, 4)).astype(np.float32)
              for k in range(3)}
    for name, array in arrays.items():
        np.save(directory / name, array)
    np.savez(directory / "more.npz", x=arrays["part1.npy"][:3])
    return directory, arrays


def _cli(argv):
    from fastgate.cli import main
    return main([str(a) for a in argv])


@pytest.mark.parametrize("where", ["in-process", "scheduler"])
def test_cli_predict_scores_many_files_into_a_directory(client, tmp_path, input_directory,
                                                        capsys, where):
    directory, arrays = input_directory
    layer = fastgate.GRU.random(4, 3, batch_first=True)
    layer.save(tmp_path / "gru.fastgate")
    extra = ["--scheduler", client.scheduler.address] if where == "scheduler" else []
    code = _cli(["predict", tmp_path / "gru.fastgate", "--input", directory / "*.np[yz]",
                 "--output", tmp_path / "out", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "4/4" in captured.err and "scored 4 files" in captured.out
    assert sorted(os.listdir(tmp_path / "out")) == ["more.npz", "part0.npy", "part1.npy",
                                                    "part2.npy"]
    for name, x in arrays.items():
        np.testing.assert_array_equal(np.load(tmp_path / "out" / name), layer(x)[0])
    with np.load(tmp_path / "out" / "more.npz") as saved:
        out, h_n = layer(arrays["part1.npy"][:3])
        assert sorted(saved.files) == ["h_n", "output"]
        np.testing.assert_array_equal(saved["output"], out)
        np.testing.assert_array_equal(saved["h_n"], h_n)


def test_cli_predict_many_files_refuses_what_it_cannot_do(client, tmp_path, input_directory,
                                                          capsys):
    directory, _ = input_directory
    layer = fastgate.GRU.random(4, 3, batch_first=True)
    layer.save(tmp_path / "gru.fastgate")
    model = tmp_path / "gru.fastgate"
    cases = [
        (["--input", tmp_path / "nothing" / "*.npy", "--output", tmp_path / "o"],
         "no .npy, .npz or .csv file matches"),
        (["--input", directory / "*.npy"], "--output OUTDIR is needed"),
        (["--input", directory / "*.npy", "--output", directory / "part0.npy"],
         "expected a directory"),
        (["--input", directory, "--output", directory], "would overwrite its input"),
        (["--input", directory / "*.npy", "--output", tmp_path / "o", "--lengths", "l.npy"],
         "--lengths applies to one input file"),
    ]
    for arguments, message in cases:
        assert _cli(["predict", model, *arguments]) == 1
        assert message in capsys.readouterr().err
    # a bad file fails with fastgate's error, on the cluster too, with no hang
    np.save(directory / "wide.npy", np.zeros((2, 6, 5), np.float32))
    assert _cli(["predict", model, "--input", directory / "w*.npy", "--output",
                 tmp_path / "o", "--scheduler", client.scheduler.address]) == 1
    assert "D=4" in capsys.readouterr().err
