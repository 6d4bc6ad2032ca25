"""Streaming sessions with server-side state, batched across sessions: :class:`Sessions`.

Each session is one sequence fed a chunk at a time (:meth:`fastgate.Model.step`), its state
kept here between requests. Steps of different sessions that arrive within ``max_wait_ms``
of each other run as one batched ``Model.step``: their states are stacked into one batch,
stepped once, and split back (the idea of Triton's sequence batcher with implicit state).
Two steps of one session never share a pass: the second runs after the first, in order.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from ..errors import ConfigError, FastgateError, ShapeError
from ..model import Model
from ._coalesce import Coalescer

__all__ = ["Sessions", "UnknownSessionError", "SessionLimitError"]


class UnknownSessionError(FastgateError, KeyError):
    """No live session has this id: it never existed, was deleted, or expired."""

    def __str__(self) -> str:    # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class SessionLimitError(FastgateError, RuntimeError):
    """``max_sessions`` sessions are live: no new one until some end or expire."""


class _Session:
    __slots__ = ("row", "last_used")

    def __init__(self, row: int, now: float) -> None:
        self.row = row
        self.last_used = now


class _StateTable:
    """The states of all live sessions: per state array of the model, one ``(capacity,
    units)`` array whose row ``r`` belongs to the session holding row ``r``. A batched step
    gathers its sessions' rows with one indexing per array and scatters the new states back
    the same way. Grows by doubling up to ``limit`` rows; the caller holds the lock."""

    def __init__(self, initial: tuple, limit: int) -> None:
        self.initial = initial            # the model's initial_state(1)
        self.limit = limit
        self.arrays = tuple(tuple(np.empty((0,) + part.shape[1:], part.dtype) for part in entry)
                            for entry in initial)
        self.free: list[int] = []

    @property
    def capacity(self) -> int:
        return self.arrays[0][0].shape[0] if self.arrays else 0

    def allocate(self) -> int:
        if not self.free:
            old = self.capacity
            new = min(self.limit, max(16, 2 * old))
            self.arrays = tuple(tuple(np.concatenate([part, np.empty((new - old,)
                                                                     + part.shape[1:],
                                                                     part.dtype)])
                                      for part in entry) for entry in self.arrays)
            self.free = list(range(new - 1, old - 1, -1))
        row = self.free.pop()
        for entry, start in zip(self.arrays, self.initial):
            for part, value in zip(entry, start):
                part[row] = value[0]
        return row

    def release(self, row: int) -> None:
        self.free.append(row)

    def gather(self, rows: np.ndarray) -> tuple:
        return tuple(tuple(part[rows] for part in entry) for entry in self.arrays)

    def scatter(self, rows: np.ndarray, state: tuple, keep: np.ndarray) -> None:
        """Store row ``k`` of ``state`` in row ``rows[k]`` where ``keep[k]``."""
        for entry, new in zip(self.arrays, state):
            for part, value in zip(entry, new):
                part[rows[keep]] = value[keep]


class Sessions:
    """Server-side streaming states of many sequences, stepped in batches.

    Parameters
    ----------
    model : fastgate.Model
        A model that can stream (:meth:`fastgate.Model.step`).
    ttl_s : float
        A session that has not been stepped for this many seconds is dropped.
    max_sessions : int
        The most live sessions; :meth:`create` raises :class:`SessionLimitError` beyond.
        Memory is bounded by ``max_sessions`` states (one row of ``units`` values per state
        array of the model).
    max_batch, max_wait_ms
        As for :class:`~fastgate.serving.Batcher`: the most sessions in one batched step, and
        how long the first waits for others.

    Examples
    --------
    >>> sessions = fastgate.serving.Sessions(model, ttl_s=300)
    >>> sid = sessions.create()
    >>> y1 = sessions.step(sid, x[:20])        # x: (T, D), one sequence; y1: what model(x)
    >>> y2 = sessions.step(sid, x[20:])        # gives for these steps
    >>> sessions.delete(sid)
    """

    #: How many ids of expired sessions are remembered, to say "expired" rather than "unknown".
    EXPIRED_MEMORY = 10_000

    def __init__(self, model: Model, ttl_s: float = 600.0, max_sessions: int = 10_000,
                 max_batch: int = 64, max_wait_ms: float = 2.0) -> None:
        if not isinstance(model, Model):
            raise ConfigError(f"Sessions serves a fastgate.Model, got {type(model).__name__}")
        model.initial_state(1)    # raises ConfigError naming the op if it cannot stream
        model.check_batch_first("Sessions")   # each output's rows are scattered to sessions
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not ttl_s > 0:
            raise ConfigError(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")
        if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) \
                or max_sessions < 1:
            raise ConfigError(f"max_sessions must be a positive integer, got {max_sessions!r}")
        self.model = model
        self.ttl_s = float(ttl_s)
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, _Session] = OrderedDict()   # least recently used first
        self._states = _StateTable(model.initial_state(1), max_sessions)
        self._expired: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._coalescer = Coalescer(self._run_batch, max_batch=max_batch,
                                    max_wait_ms=max_wait_ms, name=f"fastgate-sessions-{model.name}")

    @property
    def batch_sizes(self):
        """:class:`~fastgate.serving.metrics.Histogram` of the batched steps' sizes."""
        return self._coalescer.batch_sizes

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def __repr__(self) -> str:
        return (f"Sessions({self.model.name!r}, live={len(self)}, max_sessions="
                f"{self.max_sessions}, ttl_s={self.ttl_s:g}, max_batch="
                f"{self._coalescer.max_batch}, max_wait_ms={self._coalescer.max_wait_ms:g})")

    # ------------------------------------------------------------------ lifecycle
    def _evict_expired(self, now: float) -> None:
        """Drop sessions idle for ``ttl_s`` (caller holds the lock). ``_sessions`` is in
        order of last use, so the idle ones are at its front."""
        while self._sessions:
            sid, session = next(iter(self._sessions.items()))
            if now - session.last_used <= self.ttl_s:
                break
            del self._sessions[sid]
            self._states.release(session.row)
            self._expired[sid] = None
        while len(self._expired) > self.EXPIRED_MEMORY:
            self._expired.popitem(last=False)

    def create(self) -> str:
        """Start a session at the model's initial state; returns its id (random, 32 hex)."""
        now = time.monotonic()
        with self._lock:
            self._evict_expired(now)
            if len(self._sessions) >= self.max_sessions:
                raise SessionLimitError(f"{self.max_sessions} sessions are live (max_sessions):"
                                        f" delete one or wait for one to expire "
                                        f"({self.ttl_s:g} s without a step)")
            sid = secrets.token_hex(16)
            self._sessions[sid] = _Session(self._states.allocate(), now)
        return sid

    def delete(self, session_id: str) -> None:
        """End a session (raises :class:`UnknownSessionError` if it is not live)."""
        with self._lock:
            self._evict_expired(time.monotonic())
            session = self._sessions.pop(session_id, None)
            if session is None:
                raise self._unknown(session_id)
            self._states.release(session.row)

    def _unknown(self, session_id: Any) -> UnknownSessionError:
        if session_id in self._expired:
            return UnknownSessionError(f"session {session_id!r} expired: it had no step for "
                                       f"{self.ttl_s:g} s (ttl_s)")
        return UnknownSessionError(f"unknown session {session_id!r} (never created, or "
                                   f"deleted)")

    def _touch(self, session_id: Any) -> None:
        with self._lock:
            now = time.monotonic()
            self._evict_expired(now)
            session = self._sessions.get(session_id) if isinstance(session_id, str) else None
            if session is None:
                raise self._unknown(session_id)
            session.last_used = now
            self._sessions.move_to_end(session_id)

    def close(self, timeout: float | None = None) -> None:
        """Run the queued steps, then stop the worker thread."""
        self._coalescer.close(timeout)

    def __enter__(self) -> "Sessions":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ steps
    def prepare(self, chunk: Any) -> np.ndarray:
        """``chunk`` (``(T, D)``, or ``(T,)`` token ids) checked as one sequence's piece."""
        model = self.model
        what = f"model {model.name!r} session step"
        chunk, rank = model._stream_input(chunk, what)
        if chunk.ndim != rank - 1 or chunk.shape[0] < 1:
            raise ShapeError(f"{what}: expected a chunk of rank {rank - 1} with at least one "
                             f"step (steps first), got shape {chunk.shape}")
        model._check_stream_features(chunk.shape[1:], what, chunk.shape)
        return chunk

    def submit(self, session_id: str, chunk: Any):
        """Queue one chunk of a session; a :class:`concurrent.futures.Future` of its output."""
        chunk = self.prepare(chunk)
        self._touch(session_id)
        return self._coalescer.submit((session_id, chunk))

    def step(self, session_id: str, chunk: Any) -> np.ndarray | list[np.ndarray]:
        """Feed ``chunk`` to the session; what ``model`` gives for these steps of the
        sequence: ``(T, F)`` for an output with steps, ``(F,)`` for one without."""
        return self.submit(session_id, chunk).result()

    async def step_async(self, session_id: str, chunk: Any) -> np.ndarray | list[np.ndarray]:
        """:meth:`step` for coroutines."""
        chunk = self.prepare(chunk)
        self._touch(session_id)
        return await self._coalescer.submit_async((session_id, chunk))

    def _run_batch(self, items: list[tuple[str, np.ndarray]]) -> list[Any]:
        results: list[Any] = [None] * len(items)
        # rounds: a session's n-th step of this batch goes in round n, so its steps run in order
        rounds: list[dict[Any, list[int]]] = []
        seen: dict[str, int] = {}
        for index, (sid, chunk) in enumerate(items):
            round_number = seen.get(sid, 0)
            seen[sid] = round_number + 1
            if round_number == len(rounds):
                rounds.append({})
            key = (chunk.shape, chunk.dtype.str)
            rounds[round_number].setdefault(key, []).append(index)
        for groups in rounds:
            for members in groups.values():
                self._step_group(items, members, results)
        return results

    def _step_group(self, items: list[tuple[str, np.ndarray]], members: list[int],
                    results: list[Any]) -> None:
        """One batched step of the sessions ``members`` (distinct, same chunk shape)."""
        with self._lock:
            sessions = [self._sessions.get(items[k][0]) for k in members]
        for position in reversed(range(len(members))):
            if sessions[position] is None:   # deleted or expired since it was queued
                results[members[position]] = self._unknown(items[members[position]][0])
                del members[position], sessions[position]
        if not members:
            return
        try:
            answers = self._step([items[k] for k in members], sessions)
        except Exception:
            answers = []
            for k, session in zip(members, sessions):
                try:
                    answers.extend(self._step([items[k]], [session]))
                except Exception as error:
                    answers.append(error)
        for k, answer in zip(members, answers):
            results[k] = answer

    def _step(self, items: list[tuple[str, np.ndarray]], sessions: list[_Session]) -> list[Any]:
        """``Model.step`` on the stacked chunks and states; stores the new states of the
        sessions still live (one deleted or expired meanwhile may have given its row away)."""
        with self._lock:
            rows = np.array([session.row for session in sessions])
            state = self._states.gather(rows)
        predicted, new_state = self.model.step(np.stack([chunk for _, chunk in items]), state)
        with self._lock:
            live = np.array([self._sessions.get(sid) is session
                             for (sid, _), session in zip(items, sessions)])
            self._states.scatter(rows, new_state, live)
        outputs = predicted if isinstance(predicted, list) else [predicted]
        answers = []
        for row in range(len(sessions)):
            parts = [np.array(y[row]) for y in outputs]
            answers.append(parts if isinstance(predicted, list) else parts[0])
        return answers
