"""``fastgate serve``: one model behind HTTP, in TF Serving's REST convention, as a plain
ASGI application run by uvicorn (``pip install "fastgate[serve]"``).

Endpoints (``NAME`` is the model file's stem):

* ``POST /v1/models/NAME:predict`` ``{"instances": [seq, ...]}`` -> ``{"predictions": [...]}``
  (sequences may differ in length); or a binary ``.npy`` body ``(B, T, D)`` -> ``.npy``
  (``.npz`` for a model with several outputs). Every sequence goes through the
  :class:`~fastgate.serving.Batcher`, so concurrent requests share forward passes.
  ``GET /v1/models/NAME``: the model's outputs and input shape.
* ``POST /v1/sessions`` -> ``{"session": ID}``; ``POST /v1/sessions/ID:step``
  ``{"instances": [chunk]}`` -> ``{"predictions": [y]}`` (or a ``.npy`` chunk ``(T, D)``);
  ``DELETE /v1/sessions/ID``. Steps of different sessions share batched steps
  (:class:`~fastgate.serving.Sessions`).
* ``GET /healthz``; ``GET /metrics`` (Prometheus text: requests, errors, latency and
  batch-size histograms, live sessions).

Bad input is a 400 ``{"error": message}`` with fastgate's message; a body over ``max_body``
bytes a 413; an unknown or expired session, or an unknown route, a 404; a wrong method a
405; too many sessions a 503.

The application is written against the ASGI interface directly (no web framework): routing
five paths needs none, and each request costs less Python without one.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np

from ..errors import ConfigError, FastgateError
from ..model import MODEL_INPUT, Model
from ._coalesce import ServingClosedError
from .batcher import Batcher
from .metrics import (LATENCY_BUCKETS, Counter, Histogram, render_counter,
                      render_histogram)
from .sessions import SessionLimitError, Sessions, UnknownSessionError
from .wire import NPY_MAGIC, decode_instances, decode_npy, encode_json, encode_npy

__all__ = ["create_app", "serve", "ServingApp", "DEFAULT_MAX_BODY"]

#: The default limit of a request body, in bytes (4 MiB).
DEFAULT_MAX_BODY = 4 * 1024 * 1024
#: An over-limit body up to this size is read and dropped before the 413, so that the client
#: (still sending) reads the answer instead of a reset connection; a bigger one is cut off.
_DRAIN_LIMIT = 64 * 1024 * 1024
_JSON = b"application/json"

log = logging.getLogger("fastgate.serve")

#: What a handler returns: status, body, media type.
Answer = tuple[int, bytes, bytes]


class HTTPError(Exception):
    """An error answer: ``status`` and the message of ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _status_of(error: BaseException) -> int:
    if isinstance(error, HTTPError):
        return error.status
    if isinstance(error, UnknownSessionError):
        return 404
    if isinstance(error, (SessionLimitError, ServingClosedError)):
        return 503
    if isinstance(error, FastgateError):
        return 400
    return 500


def _json(document: dict[str, Any], status: int = 200) -> Answer:
    return status, encode_json(document), _JSON


def _drop(futures: list[asyncio.Future]) -> None:
    """Cancel the futures of a failed request (their errors read, so none is logged as
    never retrieved)."""
    for future in futures:
        if future.done() and not future.cancelled():
            future.exception()
        else:
            future.cancel()


def _output_names(model: Model) -> list[str]:
    names = []
    for node, index in model.outputs:
        name = "input" if node == MODEL_INPUT else model.nodes[node].name
        names.append(name if index == 0 else f"{name}:{index}")
    return names


class _Request:
    """What the handlers need of an ASGI request: method, path, headers and the body."""

    __slots__ = ("method", "path", "headers", "receive")

    def __init__(self, scope: dict, receive: Callable[[], Awaitable[dict]]) -> None:
        self.method = scope["method"]
        self.path = scope["path"]
        self.headers = dict(scope.get("headers") or ())
        self.receive = receive

    async def chunks(self):
        """The body's chunks as they arrive."""
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise HTTPError(400, "the client disconnected before sending the whole body")
            yield message.get("body", b"")
            if not message.get("more_body", False):
                return


class ServingApp:
    """The ASGI application of ``fastgate serve``: ``await app(scope, receive, send)``.

    Parameters are those of :func:`create_app`. Its batcher and session worker threads stop
    at the ASGI lifespan shutdown, after the requests in flight are answered.
    """

    def __init__(self, model: Model, name: str, *, max_batch: int, max_wait_ms: float,
                 max_body: int, ttl_s: float, max_sessions: int) -> None:
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
            raise ConfigError(f"max_body must be a positive number of bytes, got {max_body!r}")
        self.model, self.name, self.max_body = model, name, max_body
        self.output_names = _output_names(model)
        self.batcher = Batcher(model, max_batch=max_batch, max_wait_ms=max_wait_ms)
        self.sessions: Sessions | None = None
        self.sessions_error = ""
        try:
            model.initial_state(1)
        except ConfigError as error:    # the model cannot stream: predict still works
            self.sessions_error = str(error)
        else:
            try:
                self.sessions = Sessions(model, ttl_s=ttl_s, max_sessions=max_sessions,
                                         max_batch=max_batch, max_wait_ms=max_wait_ms)
            except BaseException:
                self.batcher.close()
                raise
        self.in_flight = 0     # requests received and not yet answered (event loop only)
        self.requests = Counter()
        self.errors = Counter()
        self.latency: dict[str, Histogram] = {}

    def close(self) -> None:
        """Answer what the batcher and the sessions hold, then stop their worker threads."""
        self.batcher.close()
        if self.sessions is not None:
            self.sessions.close()

    def __repr__(self) -> str:
        return (f"ServingApp({self.name!r}, max_body={self.max_body}, "
                f"{self.batcher!r}, {self.sessions!r})")

    # ------------------------------------------------------------------ plumbing
    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.get_running_loop().run_in_executor(None, self.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _route(self, method: str, path: str) -> tuple[str, Callable, tuple]:
        """``(route name, handler, arguments)`` for a request; 404 / 405 as errors."""
        parts = path.strip("/").split("/")
        routes: dict[str, tuple[str, Callable, tuple]] = {}
        if parts == ["healthz"]:
            routes = {"GET": ("healthz", self.healthz, ())}
        elif parts == ["metrics"]:
            routes = {"GET": ("metrics", self.metrics, ())}
        elif parts == ["v1", "sessions"]:
            routes = {"POST": ("session_create", self.create_session, ())}
        elif len(parts) == 3 and parts[:2] == ["v1", "sessions"]:
            target, _, verb = parts[2].rpartition(":")
            routes = {"DELETE": ("session_delete", self.delete_session, (parts[2],))}
            if verb == "step":
                routes = {"POST": ("session_step", self.step_session, (target,))}
        elif len(parts) == 3 and parts[:2] == ["v1", "models"]:
            target, _, verb = parts[2].rpartition(":")
            if verb == "predict" and target == self.name:
                routes = {"POST": ("predict", self.predict, ())}
            elif parts[2] == self.name:
                routes = {"GET": ("model_status", self.model_status, ())}
            else:
                raise HTTPError(404, f"no model {target or parts[2]!r}: this server serves "
                                     f"{self.name!r} (POST /v1/models/{self.name}:predict)")
        if not routes:
            raise HTTPError(404, f"no route {path!r}")
        if method not in routes:
            raise HTTPError(405, f"{path!r} takes {', '.join(routes)}, not {method}")
        return routes[method]

    async def _http(self, scope: dict, receive: Callable, send: Callable) -> None:
        self.in_flight += 1
        try:
            await self._answer_request(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _answer_request(self, scope: dict, receive: Callable, send: Callable) -> None:
        started = time.perf_counter()
        request = _Request(scope, receive)
        route = "unknown"
        try:
            route, handler, arguments = self._route(request.method, request.path)
            status, body, media = await handler(request, *arguments)
        except Exception as error:
            status = _status_of(error)
            if status == 500:
                log.exception("%s %s failed", request.method, request.path)
                message = f"internal error: {type(error).__name__}: {error}"
            else:
                message = str(error)
            status, body, media = _json({"error": message}, status)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", media),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        histogram = self.latency.get(route)
        if histogram is None:
            histogram = self.latency.setdefault(route, Histogram(LATENCY_BUCKETS))
        histogram.observe(time.perf_counter() - started)
        self.requests.inc((route, str(status)))
        if status >= 400:
            self.errors.inc((route,))

    async def read_body(self, request: _Request) -> bytes:
        """The body, or a 413 :class:`HTTPError` past ``max_body`` (read and dropped up to
        ``_DRAIN_LIMIT`` so that the client gets the answer)."""
        declared = request.headers.get(b"content-length")
        if declared is not None and not declared.isdigit():
            raise HTTPError(400, f"Content-Length {declared.decode(errors='replace')!r} is not "
                                 f"a byte count")
        too_big = HTTPError(413, f"the body exceeds {self.max_body} bytes (--max-body)")
        if declared is not None and int(declared) > self.max_body:
            if int(declared) <= _DRAIN_LIMIT:
                async for _ in request.chunks():
                    pass
            raise too_big
        chunks, size = [], 0
        async for chunk in request.chunks():
            size += len(chunk)
            if size > self.max_body:
                chunks = []
                if size > _DRAIN_LIMIT:
                    break
                continue
            chunks.append(chunk)
        if size > self.max_body:
            raise too_big
        return b"".join(chunks)

    def _sessions(self) -> Sessions:
        if self.sessions is None:
            raise HTTPError(400, self.sessions_error)
        return self.sessions

    # ------------------------------------------------------------------ handlers
    async def healthz(self, request: _Request) -> Answer:
        return _json({"status": "ok", "model": self.name,
                      "sessions": len(self.sessions) if self.sessions else 0})

    async def model_status(self, request: _Request) -> Answer:
        return _json({"model": self.name, "outputs": self.output_names,
                      "input_shape": list(self.model.input_shape or []),
                      "streaming": self.sessions is not None})

    async def predict(self, request: _Request) -> Answer:
        body = await self.read_body(request)
        binary = body.startswith(NPY_MAGIC)
        if binary:
            batch = decode_npy(body)
            if batch.ndim < 1 or batch.shape[0] < 1:
                raise HTTPError(400, f".npy body: expected a batch of sequences (B, T, ...), "
                                     f"got shape {batch.shape}")
            instances = list(batch)
        else:
            instances = decode_instances(body)
        futures: list[asyncio.Future] = []
        try:
            for index, x in enumerate(instances):
                try:
                    futures.append(self.batcher.submit_async(x))
                except FastgateError as error:
                    raise type(error)(f"instance {index}: {error}") from None
            results = []
            for index, future in enumerate(futures):
                try:
                    results.append(await future)
                except Exception as error:
                    raise HTTPError(_status_of(error), f"instance {index}: {error}") from None
        except BaseException:
            _drop(futures)
            raise
        return self._answer(results, binary)

    def _answer(self, results: list[Any], binary: bool) -> Answer:
        several = len(self.output_names) > 1
        if binary:
            columns = list(zip(*results)) if several else [results]
            data, media = encode_npy([np.stack(column) for column in columns])
            return 200, data, media.encode()
        if several:
            results = [dict(zip(self.output_names, (y.tolist() for y in parts)))
                       for parts in results]
        return _json({"predictions": results})

    async def create_session(self, request: _Request) -> Answer:
        return _json({"session": self._sessions().create()})

    async def delete_session(self, request: _Request, session_id: str) -> Answer:
        self._sessions().delete(session_id)
        return _json({"deleted": session_id})

    async def step_session(self, request: _Request, session_id: str) -> Answer:
        sessions = self._sessions()
        body = await self.read_body(request)
        binary = body.startswith(NPY_MAGIC)
        if binary:
            chunk = decode_npy(body)
        else:
            instances = decode_instances(body)
            if len(instances) != 1:
                raise HTTPError(400, f'a session step takes one chunk: {{"instances": '
                                     f'[chunk]}}, got {len(instances)} instances')
            chunk = instances[0]
        result = await sessions.step_async(session_id, chunk)
        return self._answer([result], binary)

    async def metrics(self, request: _Request) -> Answer:
        lines = render_counter("fastgate_requests_total", "HTTP requests by route and status.",
                               self.requests, ("route", "code"))
        lines += render_counter("fastgate_request_errors_total",
                                "HTTP requests answered with a 4xx or 5xx status.",
                                self.errors, ("route",))
        lines += render_histogram("fastgate_request_duration_seconds",
                                  "Time from request to answer, by route.",
                                  [({"route": r}, h) for r, h in sorted(self.latency.items())])
        batches = [({"kind": "predict"}, self.batcher.batch_sizes)]
        if self.sessions is not None:
            batches.append(({"kind": "session_step"}, self.sessions.batch_sizes))
        lines += render_histogram("fastgate_batch_size",
                                  "Sequences per batched forward pass (predict) or per "
                                  "batched step (session_step).", batches)
        lines += ["# HELP fastgate_requests_in_flight Requests received and not yet answered "
                  "(this one included).",
                  "# TYPE fastgate_requests_in_flight gauge",
                  f"fastgate_requests_in_flight {self.in_flight}",
                  "# HELP fastgate_sessions_live Live streaming sessions.",
                  "# TYPE fastgate_sessions_live gauge",
                  f"fastgate_sessions_live {len(self.sessions) if self.sessions else 0}"]
        return (200, ("\n".join(lines) + "\n").encode(),
                b"text/plain; version=0.0.4; charset=utf-8")


def create_app(model: Model, name: str, *, max_batch: int = 64, max_wait_ms: float = 2.0,
               max_body: int = DEFAULT_MAX_BODY, ttl_s: float = 600.0,
               max_sessions: int = 10_000) -> ServingApp:
    """The ASGI application that serves ``model`` as ``name`` (see the module docstring).

    ``max_batch`` and ``max_wait_ms`` configure its :class:`~fastgate.serving.Batcher` and
    :class:`~fastgate.serving.Sessions`; ``ttl_s`` and ``max_sessions`` the sessions;
    ``max_body`` is the largest request body in bytes.
    """
    return ServingApp(model, name, max_batch=max_batch, max_wait_ms=max_wait_ms,
                      max_body=max_body, ttl_s=ttl_s, max_sessions=max_sessions)


def serve(model_path: str, *, host: str = "127.0.0.1", port: int = 8501, max_batch: int = 64,
          max_wait_ms: float = 2.0, max_body: int = DEFAULT_MAX_BODY, threads: int = 1,
          ttl_s: float = 600.0, max_sessions: int = 10_000, log_level: str = "warning") -> int:
    """Load ``model_path`` and serve it until SIGTERM or SIGINT; returns the exit status.

    On SIGTERM the server stops accepting connections, answers the requests in flight,
    stops its worker threads and returns 0.
    """
    import uvicorn

    from ..loading import load
    from ..threads import set_num_threads

    set_num_threads(threads)
    model = load(model_path)
    if not isinstance(model, Model):
        raise ConfigError(f"{model_path}: fastgate serve serves a Keras model or a "
                          f"fastgate Model file, got a {type(model).__name__}")
    app = create_app(model, Path(model_path).stem, max_batch=max_batch,
                     max_wait_ms=max_wait_ms, max_body=max_body, ttl_s=ttl_s,
                     max_sessions=max_sessions)
    # no proxy-headers middleware (the app reads no client address) and no Server header:
    # one wrapper and one header less per request
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            access_log=False, timeout_graceful_shutdown=60,
                            proxy_headers=False, server_header=False)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully; with
    # these handlers in place that signal is a no-op, and the process exits with status 0.
    # (they stay in place: the process is about to exit)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    return 0 if server.started else 1
