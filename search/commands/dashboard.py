"""``polysearch dashboard``: serve optuna-dashboard for the studies of a storage."""

from __future__ import annotations

import argparse

from search.spec import DEFAULT_STORAGE

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
    print(f"Dashboard at http://{host}:{args.port}/ (studies: {', '.join(names) or 'none'})")
    print("Press Ctrl+C to stop.", flush=True)
    optuna_dashboard.run_server(storage, host=args.host, port=args.port)
    return 0
