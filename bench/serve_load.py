"""Load test: ``fastgate serve`` vs the naive per-request service, and batched sessions.

    python bench/serve_load.py [--clients 32] [--seconds 8] [--threads 1]

1. HTTP: an LSTM 16 -> 128 over 50 steps with a Dense head, served two ways from the same
   .fastgate file, each in its own process on 127.0.0.1: (a) the naive service of issue 14,
   the stdlib ``ThreadingHTTPServer`` (its default HTTP/1.0; ``--naive-keep-alive`` gives
   it HTTP/1.1 keep-alive), JSON in and out, one
   ``model.predict`` per request; (b) ``fastgate serve``. ``--clients`` threads (one
   keep-alive connection each) send one 50-step sequence per request for ``--seconds``,
   after a warm-up; the phases alternate (naive, fastgate, naive, fastgate) and the table
   shows each phase: requests/s, p50 and p99 latency, errors, and the answers checked
   against ``model.predict`` (1e-5).
2. Sessions, in-process, 64 live sessions fed one step each: one batched step of the 64
   through :class:`fastgate.serving.Sessions` (gather the states, one ``Model.step``,
   scatter) vs 64 separate batch-1 ``Model.step`` calls; and end to end, 64 threads each
   stepping its session through ``Sessions`` vs each calling ``Model.step`` itself.

Not a timed test (bench/ is not collected by the test suite's run of tests/). On a shared
machine the numbers are indicative: rerun the command.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

INPUT, UNITS, STEPS = 16, 128, 50


def build_model():
    import fastgate
    from fastgate.ops import Dense, Recurrent

    rng = np.random.default_rng(0)
    lstm = fastgate.LSTM.random(INPUT, UNITS, batch_first=True)
    dense = Dense((rng.standard_normal((UNITS, 1)) / np.sqrt(UNITS)).astype(np.float32))
    return fastgate.Model([("lstm", Recurrent(lstm), (-1, 0)), ("head", dense, (0, 0))],
                          [(1, 0)], input_shape=(None, None, INPUT), name="lstm")


# ----------------------------------------------------------------------------- naive server
def run_naive_server(model_path: str, port: int, keep_alive: bool) -> None:
    """The naive service: stdlib threads, JSON, one ``model.predict`` per request; HTTP/1.0
    (the stdlib's default: a connection per request) unless ``keep_alive``."""
    import fastgate

    fastgate.set_num_threads(1)
    model = fastgate.load(model_path)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

        def do_POST(self):
            try:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                instances = json.loads(body)["instances"]
                predictions = [model.predict(np.asarray(x, np.float32)[None])[0].tolist()
                               for x in instances]
                data, status = json.dumps({"predictions": predictions}).encode(), 200
            except Exception as error:
                data, status = json.dumps({"error": str(error)}).encode(), 400
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


# ----------------------------------------------------------------------------- load
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(port: int, path: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                connection.close()
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LoadConnection:
    """The load generator's HTTP client: one connection sending prebuilt requests.

    It reads the status line, ``Content-Length`` and the body, nothing else, and reconnects
    when the server closes the connection (HTTP/1.0 answers). Per request it costs a few
    times less Python than ``http.client``: the 32 client threads share the machine's cores
    with the server under test, so a heavy client would cap what the faster server can
    show (``--stdlib-client`` measures with ``http.client`` instead).
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.pending = b""

    @staticmethod
    def prebuilt(path: str, body: bytes, media: str) -> bytes:
        """The bytes of one ``POST path`` request carrying ``body``."""
        return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {media}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    def _receive(self, buffer: bytes) -> bytes:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection mid-answer")
        return buffer + chunk

    def send(self, request: bytes) -> tuple[int, bytes]:
        """``(status, body)`` of the answer to ``request``."""
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.pending = b""
        self.sock.sendall(request)
        buffer = self.pending
        while (head_end := buffer.find(b"\r\n\r\n")) < 0:
            buffer = self._receive(buffer)
        head = buffer[:head_end].decode("latin-1").lower()
        lines = head.split("\r\n")
        end = head_end + 4 + next(int(line[15:]) for line in lines
                                  if line.startswith("content-length:"))
        while len(buffer) < end:
            buffer = self._receive(buffer)
        self.pending = buffer[end:]
        if lines[0].startswith("http/1.0") or "connection: close" in lines:
            self.close()
        return int(lines[0][9:12]), buffer[head_end + 4:end]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class StdlibConnection:
    """The same interface on ``http.client`` (``--stdlib-client``)."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    @staticmethod
    def prebuilt(path: str, body: bytes, media: str) -> tuple[str, bytes, dict]:
        return path, body, {"Content-Type": media}

    def send(self, request: tuple[str, bytes, dict]) -> tuple[int, bytes]:
        self.connection.request("POST", *request)
        response = self.connection.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        self.connection.close()


def load(port: int, path: str, bodies: list[bytes], expected: list[np.ndarray],
         clients: int, seconds: float, server_pid: int, stdlib_client: bool = False) -> dict:
    """``clients`` threads posting ``bodies`` for ``seconds``: throughput, latency, errors.

    Throughput counts the answers that arrived within the ``seconds`` window (a request
    stuck past it, in a SYN retransmission say, counts in the latencies, not in the
    throughput); the server's CPU time is read over the same window.
    """
    latencies: list[list[float]] = [[] for _ in range(clients)]
    finished: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    binary = bodies[0].startswith(b"\x93NUMPY")
    media = "application/x-npy" if binary else "application/json"
    kind = StdlibConnection if stdlib_client else LoadConnection
    requests = [kind.prebuilt(path, body, media) for body in bodies]
    worst = [0.0] * clients
    start_line = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(k: int) -> None:
        connection = kind(port)
        start_line.wait()
        index = k
        while time.perf_counter() < stop_at[0]:
            began = time.perf_counter()
            try:
                status, data = connection.send(requests[index % len(bodies)])
                ok = status == 200
            except OSError:
                connection.close()
                ok, data = False, b""
            finished[k].append(time.perf_counter())
            latencies[k].append(finished[k][-1] - began)
            if not ok:
                errors[k] += 1
            else:
                got = (np.load(io.BytesIO(data))[0] if binary
                       else np.array(json.loads(data)["predictions"][0], np.float32))
                worst[k] = max(worst[k], float(np.abs(got - expected[index % len(bodies)]).max()))
            index += clients
        connection.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + seconds
    cpu_began = cpu_seconds(server_pid)
    start_line.wait()
    time.sleep(max(0.0, stop_at[0] - time.perf_counter()))
    cpu_used = cpu_seconds(server_pid) - cpu_began
    for thread in threads:
        thread.join(seconds + 60)
    flat = np.array([t for per_client in latencies for t in per_client])
    in_window = sum(t <= stop_at[0] for per_client in finished for t in per_client)
    return {"requests/s": in_window / seconds, "p50 ms": 1e3 * np.percentile(flat, 50),
            "p99 ms": 1e3 * np.percentile(flat, 99), "errors": sum(errors),
            "requests": len(flat), "max |diff|": max(worst),
            "server CPU ms/request": 1e3 * cpu_used / max(in_window, 1)}


def http_benchmark(args: argparse.Namespace, model, model_path: Path) -> list[tuple[str, dict]]:
    rng = np.random.default_rng(1)
    sequences = [rng.standard_normal((STEPS, INPUT)).astype(np.float32) for _ in range(64)]
    bodies = [json.dumps({"instances": [x.round(5).tolist()]}).encode() for x in sequences]
    expected = [model.predict(np.round(x, 5)[None])[0] for x in sequences]
    npy_bodies = []
    for x in sequences:
        buffer = io.BytesIO()
        np.save(buffer, np.round(x, 5)[None])
        npy_bodies.append(buffer.getvalue())
    naive_port, fast_port = free_port(), free_port()
    here = os.path.abspath(__file__)
    naive = subprocess.Popen([sys.executable, here, "--naive-server", str(model_path),
                              str(naive_port), "keep-alive" if args.naive_keep_alive
                              else "http/1.0"])
    fast = subprocess.Popen([sys.executable, "-m", "fastgate", "serve", str(model_path),
                             "--port", str(fast_port), "--threads", str(args.threads),
                             "--max-wait-ms", str(args.max_wait_ms)])
    rows = []
    try:
        wait_ready(naive_port, "/", naive)
        wait_ready(fast_port, "/healthz", fast)
        path = "/v1/models/lstm:predict"
        targets = {"naive ThreadingHTTPServer": (naive_port, naive.pid, bodies),
                   "fastgate serve": (fast_port, fast.pid, bodies),
                   "fastgate serve, .npy bodies": (fast_port, fast.pid, npy_bodies)}
        for name, (port, pid, sent) in targets.items():        # warm-up
            load(port, path, sent, expected, args.clients, 1.0, pid, args.stdlib_client)
        for _ in range(args.rounds):
            for name, (port, pid, sent) in targets.items():
                result = load(port, path, sent, expected, args.clients, args.seconds, pid,
                              args.stdlib_client)
                rows.append((name, result))
                print(f"  {name:28s} " + "  ".join(
                    f"{k} {v:.1e}" if k == "max |diff|" else f"{k} {v:.2f}" if k.startswith(
                        "server") else f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in result.items()), flush=True)
    finally:
        for process in (naive, fast):
            process.terminate()
            process.wait(30)
    return rows


# ----------------------------------------------------------------------------- sessions
def sessions_benchmark(model, count: int = 64, seconds: float = 3.0) -> dict:
    """Steps per second of ``count`` live sessions fed one step each, four ways."""
    from fastgate.serving import Sessions

    rng = np.random.default_rng(2)
    frames = rng.standard_normal((count, 1, INPUT)).astype(np.float32)
    states = [model.initial_state(1) for _ in range(count)]

    def own_step(k: int) -> None:
        _, states[k] = model.step(frames[k], states[k])

    def rate(function, steps_per_call: int) -> float:
        calls, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            function()
            calls += 1
        return calls * steps_per_call / (time.perf_counter() - began)

    def run_threads(step_for: list) -> float:
        done = [0] * count
        stop_at = [0.0]
        start_line = threading.Barrier(count + 1)

        def work(k: int) -> None:
            start_line.wait()
            while time.perf_counter() < stop_at[0]:
                step_for[k]()
                done[k] += 1

        threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(count)]
        for thread in threads:
            thread.start()
        stop_at[0] = time.perf_counter() + seconds
        began = time.perf_counter()
        start_line.wait()
        for thread in threads:
            thread.join(seconds + 60)
        return sum(done) / (time.perf_counter() - began)

    results = {}
    with Sessions(model, max_batch=count, max_wait_ms=1.0) as sessions:
        ids = [sessions.create() for _ in range(count)]
        items = [(ids[k], frames[k]) for k in range(count)]
        results["one batched step of the 64 sessions (Sessions: gather, Model.step, "
                "scatter)"] = rate(lambda: sessions._run_batch(items), count)
        results["64 separate batch-1 Model.step calls, one thread"] = rate(
            lambda: [own_step(k) for k in range(count)], count)
        results["end to end: 64 threads each stepping its session through Sessions"] = \
            run_threads([lambda k=k: sessions.step(ids[k], frames[k]) for k in range(count)])
        sizes = sessions.batch_sizes.snapshot()
    results["64 threads each calling batch-1 Model.step on its own state"] = run_threads(
        [lambda k=k: own_step(k) for k in range(count)])
    results["(mean sessions per batched step, end to end)"] = sizes[1] / max(sizes[2], 1)
    return results


def print_targets(rows: list[tuple[str, dict]]) -> None:
    """Issue 14's targets, from the rounds of :func:`http_benchmark` (each round's ratio is
    taken between its own interleaved phases)."""
    def rates(name: str) -> np.ndarray:
        return np.array([r["requests/s"] for n, r in rows if n == name])

    naive = rates("naive ThreadingHTTPServer")
    ratios = rates("fastgate serve") / naive
    npy_ratios = rates("fastgate serve, .npy bodies") / naive
    fast = [r for name, r in rows if name.startswith("fastgate")]
    p99 = max(r["p99 ms"] for r in fast)
    errors = sum(r["errors"] for r in fast)

    def verdict(ok: bool) -> str:
        return "MET" if ok else "NOT MET"

    print(f"TARGETS ({len(naive)} interleaved rounds; 32 clients):\n"
          f"  throughput fastgate serve / naive, JSON: {np.median(ratios):.2f}x median "
          f"(rounds {', '.join(f'{r:.2f}' for r in ratios)}) >= 3: "
          f"{verdict(np.median(ratios) >= 3)}\n"
          f"  fastgate serve p99, worst phase: {p99:.1f} ms <= 100: {verdict(p99 <= 100)}\n"
          f"  fastgate serve errors: {errors} == 0: {verdict(errors == 0)}\n"
          f"  (.npy bodies / naive: {np.median(npy_ratios):.2f}x median; naive errors "
          f"{sum(r['errors'] for n, r in rows if n.startswith('naive'))})")


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--naive-server":
        run_naive_server(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "keep-alive")
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="fastgate serve --threads")
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--stdlib-client", action="store_true",
                        help="send the load with http.client (heavier: it takes more of the "
                             "cores the server runs on)")
    parser.add_argument("--skip-sessions", action="store_true")
    parser.add_argument("--naive-keep-alive", action="store_true",
                        help="give the naive service HTTP/1.1 keep-alive (default: the "
                             "stdlib's HTTP/1.0, a connection per request)")
    args = parser.parse_args()

    import fastgate

    fastgate.set_num_threads(1)
    model = build_model()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
          f"load average {os.getloadavg()[0]:.2f} (shared machine: indicative)")
    print(f"# LSTM {INPUT}->{UNITS} over {STEPS} steps + Dense head; {args.clients} clients; "
          f"fastgate serve --threads {args.threads} --max-wait-ms {args.max_wait_ms:g}")
    if not args.skip_http:
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "lstm.fastgate"
            model.save(path)
            rows = http_benchmark(args, model, path)
        print_targets(rows)
    if args.skip_sessions:
        return 0
    print("# sessions: one step (1, 16) per call, 64 live sessions")
    for name, value in sessions_benchmark(model).items():
        print(f"  {name:78s} {value:10.1f}" + ("" if "mean" in name else " steps/s"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
