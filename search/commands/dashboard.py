"""``polysearch dashboard``: serve optuna-dashboard for the studies of a storage."""

from __future__ import annotations

import argparse
import logging
import socket
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from search.spec import DEFAULT_STORAGE

logger = logging.getLogger(__name__)

HELP = "serve optuna-dashboard for the studies in an Optuna storage"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage",
        default=DEFAULT_STORAGE,
        help=f"Optuna storage URL (default: {DEFAULT_STORAGE})",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only)",
    )
    parser.add_argument(
        "--port", type=int, default=8080, help="TCP port to listen on (default: 8080)"
    )


def run(args: argparse.Namespace) -> int:
    import optuna_dashboard

    from search.storage import open_storage
    from search.tracking import configure_library_logging

    configure_library_logging()
    if not 0 < args.port < 65536:
        raise ValueError(f"invalid port {args.port}: expected 1-65535")
    # The dashboard only reads: it never creates a database that does not exist.
    storage = open_storage(args.storage, must_exist=True)
    names = sorted(summary.study_name for summary in storage.get_all_studies())
    host = f"[{args.host}]" if ":" in args.host else args.host
    # Bind before printing the address, so that a busy port or a foreign address fails in
    # one line instead of after the "Dashboard at" line.
    try:
        server = make_server(args.host, args.port, optuna_dashboard.wsgi(storage))
    except OSError as error:
        raise ValueError(
            f"cannot listen on {host}:{args.port}: {error.strerror or error}; pass a free "
            "--port, or a --host address of this machine"
        ) from None
    with server:
        print(f"Dashboard at http://{host}:{args.port}/ (studies: {', '.join(names) or 'none'})")
        print("Press Ctrl+C to stop.", flush=True)
        server.serve_forever()
    return 0


class _RequestHandler(WSGIRequestHandler):
    """Request handler that logs each request at DEBUG instead of printing it."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base signature
        logger.debug("%s %s", self.address_string(), format % args)


def make_server(host: str, port: int, app: Any) -> WSGIServer:
    """Bind a threaded WSGI server on ``host`` (IPv4 or IPv6) and ``port``.

    Raises:
        OSError: the address cannot be bound (port in use, address not of this machine).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_class = type(
        "DashboardServer",
        (ThreadingMixIn, WSGIServer),
        {"address_family": family, "daemon_threads": True},
    )
    server = server_class((host, port), _RequestHandler)
    server.set_app(app)
    return server
