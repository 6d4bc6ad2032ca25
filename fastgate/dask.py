"""Batch scoring on a Dask cluster: :func:`predict` and :func:`predict_sequences`.

``import fastgate`` never imports Dask; ``import fastgate.dask`` does (``pip install
"fastgate[dask]"``)::

    import dask.array as da, fastgate, fastgate.dask
    from dask.distributed import Client, LocalCluster

    client = Client(LocalCluster(n_workers=2, threads_per_worker=1))
    model = fastgate.load("model.keras")
    X = da.from_zarr("windows.zarr")              # (N, T, D) floats or (N, T) ids, chunked along N
    Y = fastgate.dask.predict(model, X)            # lazy, chunked along N like X
    Y.to_zarr("scores.zarr")                       # or Y.compute()

How the model travels. :func:`predict` serializes the model once, in fastgate's own format
(``.fastgate`` bytes: arrays and JSON, no pickled code), and registers them with the cluster
as a Dask *worker plugin* named after the bytes' SHA-256. The scheduler hands the plugin to
every worker once, and to every worker that joins later (a worker restarted after a crash,
say); the worker builds the model once and keeps it. A task carries only the plugin's name,
so the graph stays small however many chunks ``X`` has, and no task depends on data that
lives on one worker only: a worker lost mid-computation costs its tasks, which Dask runs
again elsewhere, and nothing else.

Threads. Each task runs fastgate with one kernel thread: the plugin calls
:func:`fastgate.set_num_threads` with ``kernel_threads`` (1 by default) in each worker process,
and Dask's nanny already starts worker processes with ``OMP_NUM_THREADS=1`` and
``OPENBLAS_NUM_THREADS=1``. A worker with ``threads_per_worker=k`` runs ``k`` tasks at once,
so it keeps ``k`` cores busy: choose ``n_workers * threads_per_worker`` equal to the cores of
the machine (``LocalCluster(n_workers=cores, threads_per_worker=1)`` is the simplest
choice; the forward pass releases the GIL, so threads also scale). The plugin's
``set_num_threads`` is process-wide: with ``LocalCluster(processes=False)`` it is the client's
own process.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from typing import Any, Sequence

import dask
import dask.array as da
import dask.bag as db
from dask.base import tokenize
import numpy as np
from distributed import Client, WorkerPlugin, default_client, get_worker

from .errors import ConfigError, ShapeError
from .layers import RecurrentLayer
from .model import MODEL_INPUT, Model
from .ops import Embedding, Masking
from .serialization import from_bytes, to_bytes
from .threads import set_num_threads

__all__ = ["predict", "predict_sequences", "score_sequences", "release", "ModelPlugin"]

#: The largest block a task reads, after chunks along time and features are merged.
DEFAULT_MAX_BLOCK_BYTES = 512 << 20

#: The most sequences a task runs in one forward pass (see ``batch_rows`` of :func:`predict`).
DEFAULT_BATCH_ROWS = 256

#: How many times each worker process built each model, by plugin name (read by the tests
#: through ``client.run``: a model is shipped to, and built on, a worker once).
_MODEL_LOADS: dict[str, int] = {}


# ============================================================================ the model plugin
class ModelPlugin(WorkerPlugin):
    """A Dask worker plugin that holds one fastgate model or layer on every worker.

    Built by :func:`predict` and :func:`predict_sequences`; registered once per model (its
    ``name`` is ``"fastgate-model-"`` and the first 16 hex digits of the SHA-256 of its
    ``.fastgate`` bytes), so scoring the same model again ships nothing new.

    Parameters
    ----------
    model_bytes : bytes
        The model in fastgate's own format (:func:`fastgate.serialization.to_bytes`).
    kernel_threads : int
        The thread count :func:`fastgate.set_num_threads` gets in each worker process.
    """

    idempotent = True   # registering the same model twice does nothing the second time

    def __init__(self, model_bytes: bytes, kernel_threads: int = 1) -> None:
        self.model_bytes: bytes | None = model_bytes
        self.size = len(model_bytes)
        self.kernel_threads = kernel_threads
        digest = hashlib.sha256(model_bytes + b"threads=%d" % kernel_threads).hexdigest()
        self.name = "fastgate-model-" + digest[:16]
        self.model: Any = None

    def setup(self, worker: Any) -> None:
        """Build the model on ``worker`` (once) and set the worker's kernel threads."""
        set_num_threads(self.kernel_threads)
        if self.model is None:
            self.model = from_bytes(self.model_bytes, path=self.name)
            self.model_bytes = None     # the worker keeps the model, not a second copy
            _MODEL_LOADS[self.name] = _MODEL_LOADS.get(self.name, 0) + 1

    def teardown(self, worker: Any) -> None:
        """Drop the model (the plugin was unregistered, or the worker is closing)."""
        self.model = None

    def __repr__(self) -> str:
        return (f"ModelPlugin({self.name!r}, {self.size:,} bytes, "
                f"kernel_threads={self.kernel_threads})")


def _worker_model(name: str) -> Any:
    """The model that plugin ``name`` built on the worker running this task."""
    try:
        worker = get_worker()
    except ValueError:
        worker = None
    plugin = None if worker is None else worker.plugins.get(name)
    if plugin is None or plugin.model is None:
        raise ConfigError(f"model {name} is not on this worker: compute the result on the "
                          f"cluster of the client given to fastgate.dask.predict (or the "
                          f"default client then), not with another scheduler")
    return plugin.model


def _resolve_client(client: Client | None) -> Client:
    if client is not None:
        if not isinstance(client, Client):
            raise ConfigError(f"client must be a dask.distributed.Client, got "
                              f"{type(client).__name__}")
        return client
    try:
        return default_client()
    except ValueError:
        raise ConfigError("no Dask client: pass client=Client(...) or create one first, "
                          "e.g. Client(LocalCluster(n_workers=2, threads_per_worker=1))"
                          ) from None


def _ship(model: Any, client: Client, kernel_threads: int) -> str:
    """Register ``model`` with the cluster of ``client`` (once); return its plugin name."""
    if isinstance(kernel_threads, bool) or not isinstance(kernel_threads, int) \
            or kernel_threads < 1:
        raise ConfigError(f"kernel_threads must be a positive int, got {kernel_threads!r}")
    plugin = ModelPlugin(to_bytes(model), kernel_threads)
    client.register_plugin(plugin, name=plugin.name)
    return plugin.name


def release(model: Any, client: Client | None = None, *, kernel_threads: int = 1) -> bool:
    """Remove ``model`` from the workers of ``client`` (by default the current client).

    The plugin that :func:`predict` registered stays on the cluster, and the model in the
    memory of every worker, until this is called (or the cluster closes). Returns whether
    the model was registered.
    """
    client = _resolve_client(client)
    name = ModelPlugin(to_bytes(model), kernel_threads).name
    registered = client.run_on_scheduler(
        lambda dask_scheduler: name in dask_scheduler.worker_plugins)
    if registered:
        client.unregister_worker_plugin(name)
    return bool(registered)


def _check_model(model: Any) -> str:
    """``"model"`` or ``"layer"``: what :func:`predict` runs, or a ConfigError."""
    if isinstance(model, Model):
        if model.stateful:
            raise ConfigError(f"model {model.name!r} is stateful (Keras stateful=True): its "
                              f"output depends on the order of the batches, which a cluster "
                              f"does not keep; run model.predict in one process")
        model.check_batch_first("fastgate.dask")
        return "model"
    if isinstance(model, RecurrentLayer):
        return "layer"
    raise ConfigError(f"fastgate.dask scores a fastgate.Model or an LSTM/GRU/SimpleRNN layer, "
                      f"got {type(model).__name__}")


# ============================================================================ one block
def _run(model: Any, kind: str, x: np.ndarray, return_state: bool) -> tuple[np.ndarray, ...]:
    """Every output of ``model`` on the batch ``x``, flattened into a tuple of arrays."""
    if kind == "model":
        result = model.predict(x)
        return tuple(result) if isinstance(result, list) else (result,)
    out, state = model(x)
    if not return_state:
        return (out,)
    return (out,) + (tuple(state) if isinstance(state, tuple) else (state,))


def _run_in_batches(model: Any, kind: str, x: np.ndarray, return_state: bool,
                    batch_rows: int | None) -> tuple[np.ndarray, ...]:
    """:func:`_run` on ``x`` cut along its batch axis into batches of ``batch_rows`` rows,
    the outputs joined again: a batch that fits in cache runs faster than one big call."""
    axis = 1 if kind == "layer" and not model.batch_first else 0
    rows = x.shape[axis]
    if batch_rows is None or rows <= batch_rows:
        return _run(model, kind, x, return_state)
    parts = [_run(model, kind, x[(slice(None),) * axis + (slice(start, start + batch_rows),)],
                  return_state)
             for start in range(0, rows, batch_rows)]
    axes = _output_batch_axes(kind, model, len(parts[0]))
    return tuple(np.concatenate([part[k] for part in parts], axis=axes[k])
                 for k in range(len(axes)))


def _score_block(block: np.ndarray, name: str, kind: str, return_state: bool,
                 batch_rows: int | None = None, single: bool = False
                 ) -> tuple[np.ndarray, ...] | np.ndarray:
    """A task: the outputs of the worker's model on one block of ``X`` (``single``: the one
    output itself, so that no task is spent taking it out of a tuple)."""
    outputs = _run_in_batches(_worker_model(name), kind, block, return_state, batch_rows)
    return outputs[0] if single else outputs


# ============================================================================ predict
def _as_dask_array(X: Any, batch_axis: int) -> da.Array:
    if isinstance(X, da.Array):
        return X
    array = np.asarray(X)
    if array.ndim <= batch_axis:
        raise ShapeError(f"X: expected an array with a batch axis {batch_axis}, got shape "
                         f"{array.shape}")
    return da.from_array(array, chunks={k: ("auto" if k == batch_axis else -1)
                                        for k in range(array.ndim)})


def _one_block_per_row(X: da.Array, batch_axis: int, max_block_bytes: int) -> da.Array:
    """``X`` with every axis but the batch in one chunk; refuse blocks over the limit."""
    if any(math.isnan(size) for sizes in X.chunks for size in sizes):
        raise ConfigError("X has unknown chunk sizes: call X.compute_chunk_sizes() first")
    whole = {axis: -1 for axis in range(X.ndim) if axis != batch_axis}
    if any(len(X.chunks[axis]) > 1 for axis in whole):
        X = X.rechunk(whole)
    row_bytes = X.dtype.itemsize * math.prod(X.shape[k] for k in whole)
    largest = max(X.chunks[batch_axis], default=0) * row_bytes
    if largest > max_block_bytes:
        rows = max(1, max_block_bytes // max(1, row_bytes))
        raise ConfigError(
            f"X: a block of {max(X.chunks[batch_axis])} sequences holds {largest / 2**20:.0f} "
            f"MiB once its steps and features are in one chunk, over max_block_bytes "
            f"({max_block_bytes / 2**20:.0f} MiB); rechunk X along axis {batch_axis}, e.g. "
            f"X.rechunk({{{batch_axis}: {rows}}}), or raise max_block_bytes")
    return X


def _probe(model: Any, kind: str, X: da.Array, batch_axis: int, return_state: bool
           ) -> list[np.ndarray]:
    """The outputs of ``model`` on one zero sequence shaped like a row of ``X``: their
    count, shapes and dtypes; a wrong width or dtype raises fastgate's own error here."""
    shape = list(X.shape)
    shape[batch_axis] = 1
    return list(_run(model, kind, np.zeros(shape, X.dtype), return_state))


def _output_batch_axes(kind: str, model: Any, count: int) -> list[int]:
    """The batch axis of each output: Model outputs and batch-first layers 0, time-major
    layer outputs 1, layer states ``(layers * directions, B, width)`` 1."""
    if kind == "model":
        return [0] * count
    return [0 if model.batch_first else 1] + [1] * (count - 1)


def predict(model: Any, X: Any, client: Client | None = None, *, return_state: bool = False,
            kernel_threads: int = 1, max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
            batch_rows: int | None = DEFAULT_BATCH_ROWS) -> Any:
    """Score ``X`` with ``model`` on a Dask cluster, block by block along the batch axis.

    Parameters
    ----------
    model : fastgate.Model or LSTM / GRU / SimpleRNN layer
        Anything :func:`fastgate.load` or :func:`fastgate.from_torch` gives but cells.
        Stateful Keras models are refused (their output depends on batch order).
    X : dask.array.Array or array_like
        What the model takes in one call: ``(N, T, D)`` floats or ``(N, T)`` token ids for
        a Model; ``(N, T, D)`` for a batch-first layer, ``(T, N, D)`` for a time-major one.
        Chunks along the batch axis become tasks; chunks along time or features are merged
        (a task needs whole sequences). A NumPy array is chunked along the batch axis.
    client : dask.distributed.Client, optional
        The cluster to run on; by default the current client. Compute the result there.
    return_state : bool
        Layers only: also return the final state, as the layer's call does.
    kernel_threads : int
        fastgate's threads per task (see the module docstring); 1 keeps one busy thread per
        Dask task thread.
    max_block_bytes : int
        The largest block a task may read (512 MiB): bigger ones raise a ConfigError saying
        how to rechunk.
    batch_rows : int or None
        A task runs its block in forward passes of at most this many sequences (256), so
        that big blocks (few tasks, little scheduling) keep the speed of cache-sized
        batches; ``None``: one pass per block.

    Returns
    -------
    dask.array.Array, or a list or tuple of them
        Lazy, chunked along the batch axis like ``X``: for a Model, what ``model.predict``
        returns (a list for several outputs); for a layer its output sequence, or with
        ``return_state`` ``(out, h_n)`` (LSTM ``(out, (h_n, c_n))``) with the states
        chunked along their batch axis 1. Computed, equal to the in-process result.

    Raises
    ------
    ShapeError, DTypeError
        ``X`` does not fit the model (checked here, on one zero row, before any task runs).
    ConfigError
        No client, a stateful model, unknown chunk sizes, or blocks over ``max_block_bytes``.
    InputError
        At compute time, from the task that met it (token ids outside the vocabulary, say).
    """
    kind = _check_model(model)
    if batch_rows is not None and (isinstance(batch_rows, bool)
                                   or not isinstance(batch_rows, int) or batch_rows < 1):
        raise ConfigError(f"batch_rows must be a positive int or None, got {batch_rows!r}")
    if return_state and kind == "model":
        raise ConfigError("return_state applies to layers; a Model returns what its outputs "
                          "are (a Keras layer's return_state outputs among them)")
    client = _resolve_client(client)
    batch_axis = 1 if kind == "layer" and not model.batch_first else 0
    X = _as_dask_array(X, batch_axis)
    if kind == "layer" and X.ndim != 3:
        layout = "(N, T, D)" if model.batch_first else "(T, N, D)"
        raise ShapeError(f"{type(model).__name__} input: expected a batch {layout} with "
                         f"D={model.input_size}, got shape {X.shape}")
    X = _one_block_per_row(X, batch_axis, max_block_bytes)
    examples = _probe(model, kind, X, batch_axis, return_state)
    name = _ship(model, client, kernel_threads)
    blocks = X.to_delayed(optimize_graph=False).ravel()
    single = len(examples) == 1
    score = dask.delayed(_score_block, pure=True, nout=None if single else len(examples))
    token = tokenize(name, kind, return_state, batch_rows, X.name)
    scored = [score(block, name, kind, return_state, batch_rows, single,
                    dask_key_name=f"fastgate-predict-{token}-{k}")
              for k, block in enumerate(blocks)]
    results = _assemble(scored, examples, _output_batch_axes(kind, model, len(examples)),
                        X.chunks[batch_axis])
    if kind == "model":
        return results[0] if len(results) == 1 else results
    if not return_state:
        return results[0]
    return (results[0], results[1] if len(results) == 2 else tuple(results[1:]))


def _assemble(scored: list, examples: list, axes: list[int], rows_per_block: tuple[int, ...]
              ) -> list:
    """One lazy dask array per output, from the delayed results of every block (``scored``:
    the output itself when there is one, else a tuple) and an ``example`` of each output,
    whose batch axis is ``axes[k]``."""
    single = len(examples) == 1
    results = []
    for index, (example, axis) in enumerate(zip(examples, axes)):
        pieces = []
        for rows, parts in zip(rows_per_block, scored):
            shape = list(example.shape)
            shape[axis] = rows
            pieces.append(da.from_delayed(parts if single else parts[index], tuple(shape),
                                          dtype=example.dtype,
                                          meta=example[:0] if example.ndim else example))
        results.append(da.concatenate(pieces, axis=axis))
    return results


# ============================================================================ ragged sequences
def _padding_value(model: Model) -> float | None:
    """The value that pads a sequence for ``model`` without changing its result: Masking's
    ``mask_value``, 0 for ids read by an ``Embedding(mask_zero=True)``; ``None`` if the
    model does not mask its input (then only sequences of one length share a batch)."""
    readers = [node.op for node in model.nodes if node.source[0] == MODEL_INPUT]
    values = set()
    for op in readers:
        if isinstance(op, Masking):
            values.add(op.mask_value)
        elif isinstance(op, Embedding) and op.mask_zero:
            values.add(0.0)
        else:
            return None
    return values.pop() if len(values) == 1 else None


def _stepped_outputs(model: Model, example: np.ndarray) -> list[bool]:
    """Which outputs of ``model`` have a steps axis (axis 1): those whose axis 1 follows the
    input's length, found by running one sequence of 1 and of 2 steps."""
    shorter = [np.shape(y) for y in _run(model, "model", example[:, :1], False)]
    longer = [np.shape(y) for y in _run(model, "model", np.concatenate(
        [example[:, :1]] * 2, axis=1), False)]
    return [len(a) > 1 and a[1] == 1 and b[1] == 2 for a, b in zip(shorter, longer)]


def _bucket_keys(lengths: np.ndarray, bucket: int | Sequence[int] | None,
                 padding: float | None) -> list[Any]:
    """The bucket of each length: sequences share a padded batch only within a bucket."""
    if padding is None or bucket is None:
        return [int(n) for n in lengths]            # one length per batch: no padding
    if isinstance(bucket, (int, np.integer)) and not isinstance(bucket, bool):
        if bucket < 1:
            raise ConfigError(f"bucket must be a positive number of steps, got {bucket}")
        return [(int(n) - 1) // int(bucket) if n else 0 for n in lengths]
    edges = [int(edge) for edge in bucket]
    if edges != sorted(edges):
        raise ConfigError(f"bucket edges must increase, got {edges}")
    return [bisect.bisect_left(edges, int(n)) for n in lengths]


def _batch(sequences: list[np.ndarray], fill: float, dtype: np.dtype, steps: int
           ) -> np.ndarray:
    """The sequences ``(T_i, ...)`` padded with ``fill`` into one ``(B, steps, ...)`` batch."""
    batch = np.full((len(sequences), steps) + sequences[0].shape[1:], fill, dtype)
    for row, sequence in enumerate(sequences):
        batch[row, :len(sequence)] = sequence
    return batch


def _score_layer_batch(layer: RecurrentLayer, sequences: list[np.ndarray],
                       return_state: bool) -> list[Any]:
    lengths = np.array([len(s) for s in sequences])
    batch = _batch(sequences, 0.0, layer.dtype, int(lengths.max()))
    out, state = layer(batch if layer.batch_first else batch.transpose(1, 0, 2),
                       lengths=lengths)
    results = []
    for row, length in enumerate(lengths):
        steps = out[row, :length] if layer.batch_first else out[:length, row]
        if not return_state:
            results.append(steps)
        elif isinstance(state, tuple):
            results.append((steps, tuple(part[:, row] for part in state)))
        else:
            results.append((steps, state[:, row]))
    return results


def _score_model_batch(model: Model, sequences: list[np.ndarray], padding: float | None
                       ) -> list[Any]:
    lengths = [len(s) for s in sequences]
    steps = max(lengths)
    fixed = model.input_shape[1] if model.input_shape and len(model.input_shape) > 1 else None
    if fixed is not None:
        if padding is None and any(n != fixed for n in lengths):
            raise ShapeError(f"model {model.name!r} takes sequences of exactly {fixed} steps "
                             f"and does not mask padding; got lengths {sorted(set(lengths))}")
        steps = fixed
    dtype = np.result_type(*[s.dtype for s in sequences])
    batch = _batch(sequences, 0.0 if padding is None else padding, dtype, steps)
    outputs = _run(model, "model", batch, False)
    stepped = ([False] * len(outputs) if fixed is not None
               else _stepped_outputs(model, batch[:1]))
    results = []
    for row, length in enumerate(lengths):
        values = [y[row, :length] if has_steps else y[row]
                  for y, has_steps in zip(outputs, stepped)]
        results.append(values[0] if len(values) == 1 else values)
    return results


def score_sequences(model: Any, sequences: Sequence[Any], *,
                    bucket: int | Sequence[int] | None = 16, batch_size: int = 256,
                    return_state: bool = False) -> list[Any]:
    """Score sequences of different lengths in this process, bucketed by length.

    What :func:`predict_sequences` runs in each task; see there for the arguments. Returns
    one result per sequence, in order.
    """
    kind = _check_model(model)
    if return_state and kind == "model":
        raise ConfigError("return_state applies to layers")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    arrays = [np.asarray(s) for s in sequences]
    for position, array in enumerate(arrays):
        if array.ndim < 1 or len(array) == 0 or (kind == "layer" and (
                array.ndim != 2 or array.shape[1] != model.input_size)):
            expected = f"(T, {model.input_size})" if kind == "layer" else "(T, ...)"
            raise ShapeError(f"sequence {position}: expected {expected} with T >= 1 steps, "
                             f"got shape {array.shape}")
    padding = 0.0 if kind == "layer" else _padding_value(model)
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    keys = _bucket_keys(lengths, bucket, padding)
    order = sorted(range(len(arrays)), key=lambda k: (keys[k], lengths[k]))
    results: list[Any] = [None] * len(arrays)
    start = 0
    while start < len(order):
        stop = start + 1
        while (stop < len(order) and stop - start < batch_size
               and keys[order[stop]] == keys[order[start]]):
            stop += 1
        members = order[start:stop]
        chunk = [arrays[k] for k in members]
        scored = (_score_layer_batch(model, chunk, return_state) if kind == "layer"
                  else _score_model_batch(model, chunk, padding))
        for k, value in zip(members, scored):
            results[k] = value
        start = stop
    return results


def _score_partition(sequences: Any, name: str, bucket: Any, batch_size: int,
                     return_state: bool) -> list[Any]:
    """A task: one bag partition of sequences scored by the worker's model, in order."""
    return score_sequences(_worker_model(name), list(sequences), bucket=bucket,
                           batch_size=batch_size, return_state=return_state)


def predict_sequences(model: Any, sequences: db.Bag | Sequence[Any],
                      client: Client | None = None, *, bucket: int | Sequence[int] | None = 16,
                      batch_size: int = 256, return_state: bool = False,
                      kernel_threads: int = 1) -> db.Bag | list[Any]:
    """Score sequences of different lengths on a Dask cluster, bucketed by length.

    Sequences of similar length are padded into one batch; each result is what the model
    gives for that sequence alone (up to float rounding: batches of other sizes may take
    another kernel path):

    * a layer (LSTM / GRU / SimpleRNN): a sequence is ``(T_i, D)``; the batch is run with
      ``lengths`` (PyTorch's packed-sequence semantics), and the result is its output
      ``(T_i, directions * width)`` (with ``return_state``: ``(out, h_n)``, LSTM
      ``(out, (h_n, c_n))``, states ``(layers * directions, width)``);
    * a Model that masks its input (a ``Masking`` or ``Embedding(mask_zero=True)`` reads
      it): padded with the mask value (0 for ids); outputs with a steps axis are cut to
      ``T_i`` steps. A Model that does not mask its input only batches sequences of equal
      length (padding would change its result), whatever ``bucket`` says.

    Parameters
    ----------
    model : fastgate.Model or LSTM / GRU / SimpleRNN layer
    sequences : dask.bag.Bag or list of array_like
        ``(T_i, D)`` floats or ``(T_i,)`` token ids. A list is sorted by length and split
        into partitions of ``batch_size``; a Bag keeps its partitions, which are bucketed
        one by one (group a bag by length upstream for less padding).
    client : dask.distributed.Client, optional
        By default the current client.
    bucket : int or sequence of int or None
        An int ``w``: lengths ``1..w``, ``w+1..2w``... share batches (at most ``w - 1``
        padded steps per sequence); a sequence of increasing edges ``[e0, e1, ...]``: the
        bands ``..e0``, ``e0+1..e1``...; ``None``: equal lengths only.
    batch_size : int
        The most sequences in one padded call.
    return_state : bool
        Layers only: also return each sequence's final state.
    kernel_threads : int
        As in :func:`predict`.

    Returns
    -------
    list or dask.bag.Bag
        For a list: the results, in order (computed). For a Bag: a lazy Bag of the results,
        partitioned and ordered like ``sequences``.
    """
    kind = _check_model(model)
    if return_state and kind == "model":
        raise ConfigError("return_state applies to layers")
    _bucket_keys(np.array([1]), bucket, 0.0)         # refuse a malformed bucket here
    client = _resolve_client(client)
    name = _ship(model, client, kernel_threads)
    options = dict(name=name, bucket=bucket, batch_size=batch_size, return_state=return_state)
    if isinstance(sequences, db.Bag):
        return sequences.map_partitions(_score_partition, **options)
    arrays = [np.asarray(s) for s in sequences]
    order = sorted(range(len(arrays)), key=lambda k: len(arrays[k]) if arrays[k].ndim else 0)
    if not arrays:
        return []
    bag = db.from_sequence([arrays[k] for k in order], partition_size=batch_size)
    scored = client.compute(bag.map_partitions(_score_partition, **options)).result()
    results: list[Any] = [None] * len(arrays)
    for k, value in zip(order, scored):
        results[k] = value
    return results
