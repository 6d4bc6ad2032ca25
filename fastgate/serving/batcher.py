"""Micro-batching of single-sequence predictions: :class:`Batcher`.

Concurrent callers each hand in one sequence; the batcher runs the sequences that arrive
within ``max_wait_ms`` of each other as one batched :meth:`fastgate.Model.predict` call.
One batched pass costs about as much as one sequence's (the weights stream through the
cache once per step for the whole batch), so a loaded service answers several times more
requests per second.

Sequences of different lengths share a pass in one of two ways, each giving what the
sequence gives alone:

* padded and masked, when the model masks its input (a first ``Masking`` or an
  ``Embedding(mask_zero=True)``) and every later op carries a masked step through unchanged
  (recurrent ops reading forwards, Dense, Activation): a masked step keeps the state and
  repeats the last output, so the padding changes nothing and is cut off the outputs;
* otherwise grouped by length: one batched pass per distinct length.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, ShapeError
from ..model import MODEL_INPUT, Model
from ..ops import Activation, Dense, Embedding, Masking, Recurrent
from ._coalesce import Coalescer

__all__ = ["Batcher"]


def padding_value(model: Model) -> float | None:
    """The value that pads a sequence of ``model`` without changing its outputs, or ``None``.

    ``None`` unless the model input feeds one masking op (``Masking`` with a finite
    ``mask_value``: that value; ``Embedding(mask_zero=True)``: id 0) and every other op
    passes a masked step through unchanged.
    """
    readers = [node for node in model.nodes if node.source[0] == MODEL_INPUT]
    if len(readers) != 1 or any(ref[0] == MODEL_INPUT for ref in model.outputs):
        return None
    first = readers[0].op
    if isinstance(first, Masking) and math.isfinite(first.mask_value):
        value = first.mask_value
    elif isinstance(first, Embedding) and first.mask_zero:
        value = 0.0
    else:
        return None
    for node in model.nodes:
        op = node.op
        if op is first or isinstance(op, (Dense, Activation)):
            continue
        # a recurrent op holds its state over masked steps; reading backwards would put the
        # padding first, and zero outputs for masked steps would replace its last output
        if not (isinstance(op, Recurrent) and not op.go_backwards and not op.stateful
                and (op.return_sequences or not op.zero_output_for_mask)):
            return None
    return value


class Batcher:
    """Coalesce concurrent single-sequence predictions into batched forward passes.

    Parameters
    ----------
    model : fastgate.Model
        The model to serve (not Keras-``stateful``: its carried state would make a request's
        answer depend on the others).
    max_batch : int
        The most sequences in one forward pass.
    max_wait_ms : float
        How long the first request of a batch waits for others to join it (milliseconds).

    Calling ``batcher(x)`` (from any number of threads) or ``await batcher.predict_async(x)``
    (from any event loop) with one sequence ``x`` (what one row of ``model.predict``'s input
    is, e.g. ``(T, D)``) returns ``model.predict(x[None])[0]`` (a list of arrays for a
    model with several outputs). A request whose input is wrong fails alone, with the
    model's error; the others in its batch are answered. :meth:`close` (or leaving a
    ``with`` block) answers the queued requests and stops the worker thread.

    Examples
    --------
    >>> batcher = fastgate.serving.Batcher(fastgate.load("model.keras"), max_wait_ms=2)
    >>> y = batcher(x)                      # in each request handler thread
    >>> y = await batcher.predict_async(x)  # or in an async handler
    """

    def __init__(self, model: Model, max_batch: int = 64, max_wait_ms: float = 2.0) -> None:
        if not isinstance(model, Model):
            raise ConfigError(f"Batcher serves a fastgate.Model, got {type(model).__name__}")
        if model.stateful:
            raise ConfigError(f"model {model.name!r} is stateful (Keras stateful=True): its "
                              f"carried state would mix the requests of a batch")
        model.check_batch_first("Batcher")
        self.model = model
        self.padding = padding_value(model)
        self._sequence_outputs = self._outputs_with_steps()
        self._coalescer = Coalescer(self._run_batch, max_batch=max_batch,
                                    max_wait_ms=max_wait_ms, name=f"fastgate-batcher-{model.name}")

    @property
    def max_batch(self) -> int:
        return self._coalescer.max_batch

    @property
    def max_wait_ms(self) -> float:
        return self._coalescer.max_wait_ms

    @property
    def batch_sizes(self):
        """:class:`~fastgate.serving.metrics.Histogram` of the forward passes' batch sizes."""
        return self._coalescer.batch_sizes

    def __repr__(self) -> str:
        state = "closed" if self._coalescer.closed else "open"
        how = "pad+mask" if self.padding is not None else "group by length"
        return (f"Batcher({self.model.name!r}, max_batch={self.max_batch}, "
                f"max_wait_ms={self.max_wait_ms:g}, mixed lengths: {how}, {state})")

    def _outputs_with_steps(self) -> list[bool]:
        """Which outputs have a steps axis (to cut the padding off); valid for the models
        that are padded, whose ops all say it right in the streaming plan."""
        flags = self.model._plan.sequence_outputs
        return [ref[0] == MODEL_INPUT or flags[ref[0]][ref[1]] for ref in self.model.outputs]

    # ------------------------------------------------------------------ requests
    def prepare(self, x: Any) -> np.ndarray:
        """``x`` checked and converted as one sequence of the model's input (raises the
        model's :class:`~fastgate.errors.ShapeError` / ``DTypeError`` if it is not one)."""
        batch = self.model._prepare_input(np.asarray(x)[None])
        if batch.ndim < 2 or batch.shape[1] < 1:
            raise ShapeError(f"model {self.model.name!r} input: a sequence needs at least one "
                             f"step, got shape {batch.shape[1:]}")
        return batch[0]

    def submit(self, x: Any):
        """Queue one sequence; returns a :class:`concurrent.futures.Future` of its output."""
        return self._coalescer.submit(self.prepare(x))

    def __call__(self, x: Any) -> np.ndarray | list[np.ndarray]:
        """``model.predict(x[None])[0]``, computed in a batch with concurrent calls."""
        return self.submit(x).result()

    def submit_async(self, x: Any) -> asyncio.Future:
        """Queue one sequence from a coroutine; an :class:`asyncio.Future` of its output
        (of the running loop)."""
        return self._coalescer.submit_async(self.prepare(x))

    async def predict_async(self, x: Any) -> np.ndarray | list[np.ndarray]:
        """:meth:`__call__` for coroutines: awaits the batch without blocking the loop."""
        return await self.submit_async(x)

    def close(self, timeout: float | None = None) -> None:
        """Answer the queued requests, then stop the worker thread; later calls raise
        :class:`~fastgate.serving.ServingClosedError`."""
        self._coalescer.close(timeout)

    def __enter__(self) -> "Batcher":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ batches
    def _run_batch(self, sequences: list[np.ndarray]) -> list[Any]:
        results: list[Any] = [None] * len(sequences)
        if self.padding is not None:
            groups = {0: list(range(len(sequences)))}
        else:
            groups = {}
            for index, x in enumerate(sequences):
                groups.setdefault((x.shape, x.dtype.str), []).append(index)
        for members in groups.values():
            try:
                outputs = self._predict([sequences[k] for k in members])
            except Exception:
                # isolate the failing request: each of the group on its own
                outputs = []
                for k in members:
                    try:
                        outputs.extend(self._predict([sequences[k]]))
                    except Exception as error:
                        outputs.append(error)
            for k, output in zip(members, outputs):
                results[k] = output
        return results

    def _predict(self, sequences: Sequence[np.ndarray]) -> list[Any]:
        """One forward pass over ``sequences``; each one's outputs, cut to its own length."""
        lengths = [x.shape[0] for x in sequences]
        longest = max(lengths)
        padded = min(lengths) != longest
        if not padded:
            batch = np.stack(sequences)
        else:   # padding (only with self.padding set: otherwise groups share one length)
            shape = (len(sequences), longest) + sequences[0].shape[1:]
            dtype = np.result_type(*sequences)
            batch = np.full(shape, self.padding, dtype=dtype)
            for row, x in enumerate(sequences):
                batch[row, :x.shape[0]] = x
        predicted = self.model.predict(batch)
        outputs = predicted if isinstance(predicted, list) else [predicted]
        answers = []
        for row, length in enumerate(lengths):
            parts = [np.array(y[row, :length] if padded and steps else y[row])
                     for y, steps in zip(outputs, self._sequence_outputs)]
            answers.append(parts if isinstance(predicted, list) else parts[0])
        return answers
