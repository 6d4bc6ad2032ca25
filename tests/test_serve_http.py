"""``fastgate serve`` as a real server process on a loopback port, with real HTTP clients.

Every answer is compared with ``model.predict`` on the sequence alone (1e-6 absolute on O(1)
outputs: the server's batched pass and the batch-1 pass differ only in summation order).
Also: mixed lengths in one request, .npy bodies, sessions (chunks streamed == one pass),
concurrent sessions batched together (batch sizes read from /metrics), hostile bodies, and
SIGTERM with requests in flight. All traffic goes to 127.0.0.1; every wait has a timeout.
"""

from __future__ import annotations

import http.client
import io
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

import fastgate
from conftest import subprocess_env
from fastgate.ops import Dense, Masking, Recurrent

ATOL = 1e-6
WIDTH, UNITS, OUT = 4, 16, 3
TIMEOUT = 30


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request(port, method, path, body=None, headers=None, timeout=TIMEOUT):
    """``(status, headers, body bytes)`` of one HTTP request to 127.0.0.1:port."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def post_json(port, path, document):
    status, _, data = request(port, "POST", path, document)
    return status, json.loads(data)


class Server:
    """``python -m fastgate serve MODEL --port P ARGS`` in a subprocess, ready to answer."""

    def __init__(self, model_path, *args):
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fastgate", "serve", str(model_path), "--port",
             str(self.port), *map(str, args)],
            env=subprocess_env(), cwd=tempfile.gettempdir(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.process.stdout.read().decode()}")
            try:
                if request(self.port, "GET", "/healthz", timeout=2)[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise AssertionError("server did not answer /healthz within 60 s")

    def metrics(self):
        status, _, data = request(self.port, "GET", "/metrics")
        assert status == 200
        return data.decode()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=TIMEOUT)
        self.process.stdout.close()
        return self.process.returncode


def make_model(seed=3):
    rng = np.random.default_rng(seed)
    lstm = fastgate.LSTM.random(WIDTH, UNITS, batch_first=True)
    dense = Dense((rng.standard_normal((UNITS, OUT)) / np.sqrt(UNITS)).astype(np.float32))
    return fastgate.Model([("mask", Masking(0.0), (-1, 0)),
                           ("lstm", Recurrent(lstm, return_sequences=True), (0, 0)),
                           ("head", dense, (1, 0))], [(2, 0)],
                          input_shape=(None, None, WIDTH), name="tagger")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The model, saved as tagger.fastgate and served with a 30 ms batching window."""
    model = make_model()
    path = tmp_path_factory.mktemp("serve") / "tagger.fastgate"
    model.save(path)
    server = Server(path, "--max-wait-ms", 30, "--max-batch", 32, "--max-body", 1 << 20)
    yield model, server, path
    assert server.stop() == 0


def histogram(text, name, labels):
    """``{le: cumulative count}`` of a histogram in Prometheus text, for one label set."""
    buckets = {}
    for match in re.finditer(rf'^{name}_bucket\{{{labels},le="([^"]+)"\}} (\d+)$', text, re.M):
        buckets[float(match.group(1))] = int(match.group(2))
    return buckets


def call_concurrently(function, inputs):
    results = [None] * len(inputs)
    start = threading.Barrier(len(inputs))

    def work(k):
        start.wait(timeout=TIMEOUT)
        results[k] = function(inputs[k])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=2 * TIMEOUT)
        assert not thread.is_alive()
    return results


# ----------------------------------------------------------------------------- predict
def test_every_answer_equals_predict_with_mixed_lengths(served, rng):
    model, server, _ = served
    requests = [[rng.standard_normal((int(rng.integers(1, 20)), WIDTH)).round(4)
                 for _ in range(int(rng.integers(1, 4)))] for _ in range(24)]
    answers = call_concurrently(
        lambda seqs: post_json(server.port, "/v1/models/tagger:predict",
                               {"instances": [x.tolist() for x in seqs]}), requests)
    for seqs, (status, answer) in zip(requests, answers):
        assert status == 200, answer
        assert len(answer["predictions"]) == len(seqs)
        for x, y in zip(seqs, answer["predictions"]):
            expected = model.predict(x[None].astype(np.float32))[0]
            np.testing.assert_allclose(np.array(y), expected, rtol=0, atol=ATOL)


def test_npy_bodies(served, rng):
    model, server, _ = served
    x = rng.standard_normal((5, 7, WIDTH)).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, x)
    status, headers, data = request(server.port, "POST", "/v1/models/tagger:predict",
                                    buffer.getvalue(),
                                    {"Content-Type": "application/x-npy"})
    assert status == 200 and headers["content-type"] == "application/x-npy"
    y = np.load(io.BytesIO(data), allow_pickle=False)
    np.testing.assert_allclose(y, model.predict(x), rtol=0, atol=ATOL)


def test_model_status_and_health(served):
    _, server, _ = served
    health = json.loads(request(server.port, "GET", "/healthz")[2])
    assert health["status"] == "ok" and health["model"] == "tagger"
    status, _, data = request(server.port, "GET", "/v1/models/tagger")
    assert status == 200 and json.loads(data) == {
        "model": "tagger", "outputs": ["head"], "input_shape": [None, None, 4],
        "streaming": True}


# ----------------------------------------------------------------------------- sessions
def test_sessions_stream_like_one_pass_and_are_batched_together(served, rng):
    model, server, _ = served
    count, cuts = 8, [0, 3, 4, 10, 16]
    x = rng.standard_normal((count, cuts[-1], WIDTH)).astype(np.float32)
    before = histogram(server.metrics(), "fastgate_batch_size", 'kind="session_step"')
    ids = [post_json(server.port, "/v1/sessions", {})[1]["session"] for _ in range(count)]
    pieces = [[] for _ in range(count)]
    for start, stop in zip(cuts[:-1], cuts[1:]):
        answers = call_concurrently(
            lambda k: post_json(server.port, f"/v1/sessions/{ids[k]}:step",
                                {"instances": [x[k, start:stop].tolist()]}), list(range(count)))
        for k, (status, answer) in enumerate(answers):
            assert status == 200, answer
            pieces[k].append(np.array(answer["predictions"][0]))
    expected = model.predict(x)
    for k in range(count):
        np.testing.assert_allclose(np.concatenate(pieces[k]), expected[k], rtol=0, atol=ATOL)
    after = histogram(server.metrics(), "fastgate_batch_size", 'kind="session_step"')
    steps = count * (len(cuts) - 1)
    batches = after[float("inf")] - before.get(float("inf"), 0)
    single = after[1.0] - before.get(1.0, 0)
    assert batches < steps, f"{steps} steps ran as {batches} batched steps"
    assert single < batches, "no batched step held more than one session"
    for sid in ids:
        assert request(server.port, "DELETE", f"/v1/sessions/{sid}")[0] == 200
    status, answer = post_json(server.port, f"/v1/sessions/{ids[0]}:step",
                               {"instances": [x[0, :1].tolist()]})
    assert status == 404 and "unknown session" in answer["error"]


def test_session_errors(served):
    _, server, _ = served
    assert post_json(server.port, "/v1/sessions/nope:step", {"instances": [[[0] * 4]]})[0] == 404
    assert request(server.port, "DELETE", "/v1/sessions/nope")[0] == 404
    sid = post_json(server.port, "/v1/sessions", {})[1]["session"]
    status, answer = post_json(server.port, f"/v1/sessions/{sid}:step",
                               {"instances": [[[0] * 4], [[0] * 4]]})
    assert status == 400 and "one chunk" in answer["error"]
    status, answer = post_json(server.port, f"/v1/sessions/{sid}:step",
                               {"instances": [[[0] * 5]]})
    assert status == 400 and "expected features (4,)" in answer["error"]
    assert request(server.port, "DELETE", f"/v1/sessions/{sid}")[0] == 200


# ----------------------------------------------------------------------------- hostile
def npy_with_header(shape, dtype="<f4", data=b""):
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - len(header) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


HOSTILE = {
    "malformed JSON": (b'{"instances": [[[1, 2', "not valid JSON"),
    "not an object": (b"[1, 2, 3]", "instances"),
    "no instances": (b'{"inputs": []}', "instances"),
    "empty instances": (b'{"instances": []}', "non-empty"),
    "NaN": (b'{"instances": [[[NaN, 0, 0, 0]]]}', "NaN is not a JSON number"),
    "Infinity": (b'{"instances": [[[Infinity, 0, 0, 0]]]}', "Infinity"),
    "overflowing number": (b'{"instances": [[[1e999, 0, 0, 0]]]}', "float32's range"),
    "beyond float32": (b'{"instances": [[[1e300, 0, 0, 0]]]}', "float32's range"),
    "wrong width": (b'{"instances": [[[1, 2, 3]]]}', "expected shape ('B', '*', 4)"),
    "ragged": (b'{"instances": [[[1, 2, 3, 4], [1]]]}', "rectangular"),
    "strings": (b'{"instances": [[["a", "b", "c", "d"]]]}', "expected numbers"),
    "no steps": (b'{"instances": [[]]}', "instance 0"),
    "deep nesting": (b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                     "not valid JSON"),
    "npy claiming a huge shape": (npy_with_header((10**12, 10**9, 4)), "claims shape"),
    "npy claiming more than it holds": (npy_with_header((1000, 50, 4), data=b"\0" * 64),
                                        "claims shape"),
    "npy of objects": (npy_with_header((1,), dtype="|O", data=b"\0" * 8), "expected numbers"),
    "npy holding NaN": (npy_with_header((1, 1, 4), data=np.full(4, np.nan, "<f4").tobytes()),
                        "NaN"),
    "truncated npy header": (b"\x93NUMPY\x01\x00\xff\xff{'descr", "not a readable"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_bodies_get_400_with_fastgates_message(served, case):
    _, server, _ = served
    body, message = HOSTILE[case]
    status, headers, data = request(server.port, "POST", "/v1/models/tagger:predict", body)
    assert status == 400, data[:200]
    assert headers["content-type"] == "application/json"
    assert message in json.loads(data)["error"]


def test_oversized_bodies_get_413_and_the_server_goes_on(served, rng):
    model, server, _ = served
    big = b'{"instances": [' + b"0," * (5 * 1024 * 1024) + b"0]}"      # 10 MB
    status, _, data = request(server.port, "POST", "/v1/models/tagger:predict", big)
    assert status == 413 and "exceeds 1048576 bytes" in json.loads(data)["error"]

    def chunks():      # no Content-Length: the limit applies while reading
        for _ in range(10):
            yield b" " * (1024 * 1024)

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    try:
        connection.request("POST", "/v1/models/tagger:predict", body=chunks(),
                           encode_chunked=True)
        response = connection.getresponse()
        assert response.status == 413 and b"exceeds" in response.read()
    finally:
        connection.close()
    x = rng.standard_normal((6, WIDTH)).astype(np.float32)
    status, answer = post_json(server.port, "/v1/models/tagger:predict",
                               {"instances": [x.tolist()]})
    assert status == 200
    np.testing.assert_allclose(answer["predictions"][0], model.predict(x[None])[0], rtol=0,
                               atol=ATOL)


def test_unknown_routes_and_models(served):
    _, server, _ = served
    assert post_json(server.port, "/v1/models/other:predict", {"instances": [[[0] * 4]]})[0] \
        == 404
    assert request(server.port, "GET", "/v1/models/other")[0] == 404
    assert request(server.port, "GET", "/nowhere")[0] == 404


def test_metrics_count_requests_errors_and_latency(served):
    _, server, _ = served
    request(server.port, "POST", "/v1/models/tagger:predict", b"{")
    text = server.metrics()
    assert re.search(r'^fastgate_requests_total\{route="predict",code="400"\} [1-9]', text, re.M)
    assert re.search(r'^fastgate_request_errors_total\{route="predict"\} [1-9]', text, re.M)
    latency = histogram(text, "fastgate_request_duration_seconds", 'route="predict"')
    assert latency[float("inf")] >= 1 and list(latency.values()) == sorted(latency.values())
    assert "# TYPE fastgate_batch_size histogram" in text
    assert re.search(r"^fastgate_sessions_live \d+$", text, re.M)
    assert re.search(r"^fastgate_requests_in_flight 1$", text, re.M)    # the scrape itself


# ----------------------------------------------------------------------------- shutdown
def test_sigterm_answers_the_requests_in_flight_and_exits_0(tmp_path, rng):
    model = make_model(seed=5)
    path = tmp_path / "slow.fastgate"
    model.save(path)
    # a 3 s batching window keeps the requests in flight when SIGTERM arrives
    server = Server(path, "--max-wait-ms", 3000)
    inputs = [rng.standard_normal((int(rng.integers(1, 9)), WIDTH)).astype(np.float32)
              for _ in range(6)]
    results = [None] * len(inputs)

    def send(k):
        results[k] = post_json(server.port, "/v1/models/slow:predict",
                               {"instances": [inputs[k].tolist()]})

    threads = [threading.Thread(target=send, args=(k,)) for k in range(len(inputs))]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + TIMEOUT    # until the server holds all six (+ /metrics)
        holding = f"fastgate_requests_in_flight {len(inputs) + 1}\n"
        while holding not in server.metrics():
            assert time.monotonic() < deadline, "the requests did not reach the server"
            time.sleep(0.02)
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=TIMEOUT)
        assert server.process.wait(timeout=TIMEOUT) == 0
    finally:
        server.stop()
    for x, result in zip(inputs, results):
        assert result is not None and result[0] == 200, result
        np.testing.assert_allclose(result[1]["predictions"][0], model.predict(x[None])[0],
                                   rtol=0, atol=ATOL)
    with pytest.raises(OSError):          # and it is gone
        request(server.port, "GET", "/healthz", timeout=2)


# ----------------------------------------------------------------------------- in-process
def call_app(app, method, path, body=b""):
    """``(status, content type, body)`` of one request to the ASGI ``app``, without a socket."""
    import asyncio

    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path,
             "headers": [(b"content-length", str(len(body)).encode())]}
    asyncio.run(app(scope, receive, send))
    headers = dict(sent[0]["headers"])
    return sent[0]["status"], headers[b"content-type"], sent[1]["body"]


def test_several_outputs_answer_one_object_per_instance_or_an_npz(rng):
    from fastgate.serving.server import create_app

    lstm = Recurrent(fastgate.LSTM.random(WIDTH, UNITS, batch_first=True),
                     return_sequences=True, return_state=True)
    dense = Dense((rng.standard_normal((UNITS, OUT)) / np.sqrt(UNITS)).astype(np.float32))
    model = fastgate.Model([("lstm", lstm, (-1, 0)), ("head", dense, (0, 0))],
                           [(1, 0), (0, 1)])
    app = create_app(model, "two")
    try:
        x = rng.standard_normal((2, 5, WIDTH)).astype(np.float32)
        expected = model.predict(x)
        status, media, data = call_app(app, "POST", "/v1/models/two:predict",
                                       json.dumps({"instances": x.tolist()}).encode())
        assert status == 200 and media == b"application/json"
        answer = json.loads(data)["predictions"]
        assert [sorted(a) for a in answer] == [["head", "lstm:1"]] * 2
        for k in range(2):
            np.testing.assert_allclose(answer[k]["head"], expected[0][k], rtol=0, atol=ATOL)
            np.testing.assert_allclose(answer[k]["lstm:1"], expected[1][k], rtol=0, atol=ATOL)
        buffer = io.BytesIO()
        np.save(buffer, x)
        status, media, data = call_app(app, "POST", "/v1/models/two:predict",
                                       buffer.getvalue())
        assert status == 200 and media == b"application/x-npz"
        with np.load(io.BytesIO(data)) as arrays:
            np.testing.assert_allclose(arrays["output_0"], expected[0], rtol=0, atol=ATOL)
            np.testing.assert_allclose(arrays["output_1"], expected[1], rtol=0, atol=ATOL)
        status, _, data = call_app(app, "GET", "/v1/models/two:predict")
        assert status == 405 and b"takes POST" in json.loads(data)["error"].encode()
        status, _, data = call_app(app, "PUT", "/healthz")
        assert status == 405
    finally:
        app.close()


def test_a_model_that_cannot_stream_still_predicts_and_says_why_sessions_fail(rng):
    from fastgate.serving.server import create_app

    lstm = Recurrent(fastgate.LSTM.random(WIDTH, UNITS, batch_first=True), go_backwards=True)
    model = fastgate.Model([("lstm", lstm, (-1, 0))], [(0, 0)])
    app = create_app(model, "backwards")
    try:
        x = rng.standard_normal((6, WIDTH)).astype(np.float32)
        status, _, data = call_app(app, "POST", "/v1/models/backwards:predict",
                                   json.dumps({"instances": [x.tolist()]}).encode())
        assert status == 200
        np.testing.assert_allclose(json.loads(data)["predictions"][0],
                                   model.predict(x[None])[0], rtol=0, atol=ATOL)
        status, _, data = call_app(app, "POST", "/v1/sessions")
        assert status == 400 and "go_backwards" in json.loads(data)["error"]
    finally:
        app.close()
