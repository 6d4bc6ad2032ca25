"""``fastgate serve MODEL``: serve a model over HTTP (:mod:`fastgate.serving.server`)."""

from __future__ import annotations

import argparse

from ._common import debug_options


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``serve`` command to ``commands``."""
    parser = commands.add_parser(
        "serve", parents=[debug_options()],
        help="serve a model over HTTP (TF Serving REST API)",
        description="Serve MODEL (.keras, .h5, .fastgate) over HTTP with micro-batching and "
                    "batched streaming sessions: POST /v1/models/NAME:predict, /v1/sessions, "
                    "GET /healthz, /metrics (NAME: the file's stem). Needs fastgate[serve]. "
                    "SIGTERM answers the requests in flight, then exits 0.")
    parser.add_argument("model", metavar="MODEL")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8501, help="TCP port (8501)")
    parser.add_argument("--max-batch", type=int, default=64, metavar="N",
                        help="most sequences in one batched pass (64)")
    parser.add_argument("--max-wait-ms", type=float, default=2.0, metavar="MS",
                        help="how long a request waits for others to batch with (2)")
    parser.add_argument("--max-body", type=int, default=4 * 1024 * 1024, metavar="BYTES",
                        help="largest request body; a larger one gets 413 (4 MiB)")
    parser.add_argument("--threads", type=int, default=1, metavar="K",
                        help="fastgate kernel threads for each batched pass (1)")
    parser.add_argument("--session-ttl", type=float, default=600.0, metavar="S",
                        help="drop a session after S seconds without a step (600)")
    parser.add_argument("--max-sessions", type=int, default=10_000, metavar="N",
                        help="most live sessions (10000)")
    parser.add_argument("--log-level", default="warning",
                        choices=("critical", "error", "warning", "info", "debug"))
    parser.set_defaults(handler=command_serve)


def command_serve(args: argparse.Namespace) -> int:
    """Run the server until SIGTERM / SIGINT; 0 after a graceful shutdown."""
    from ..serving.server import serve

    return serve(args.model, host=args.host, port=args.port, max_batch=args.max_batch,
                 max_wait_ms=args.max_wait_ms, max_body=args.max_body, threads=args.threads,
                 ttl_s=args.session_ttl, max_sessions=args.max_sessions,
                 log_level=args.log_level)
