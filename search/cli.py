"""The ``polysearch`` command line.

Each subcommand lives in ``search/commands/<name>.py``, which defines ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. Command modules import heavy
libraries (torch, optuna, mlflow) inside ``run`` so that ``--help`` stays fast.

Errors a user can cause arrive here as ``ValueError``, ``TypeError``,
``FileNotFoundError`` or ``PermissionError``; they end with one line on standard
error and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from search import interrupts

# Subcommand name -> module that implements it, in the order ``--help`` lists them.
COMMANDS: dict[str, str] = {
    "train": "search.commands.train",
    "evaluate": "search.commands.evaluate",
    "fit": "search.commands.fit",
    "calibrate": "search.commands.calibrate",
    "approximate": "search.commands.approximate",
    "search": "search.commands.search",
    "dashboard": "search.commands.dashboard",
    "best": "search.commands.best",
    "apply": "search.commands.apply",
}

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, PermissionError)


class _OneLineParser(argparse.ArgumentParser):
    """Argument parser whose errors are one line on standard error, without the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the parser with one subparser per available subcommand."""
    parser = _OneLineParser(
        prog="polysearch",
        description="Find polynomial replacements for the nonlinearities of a PyTorch network.",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level on standard error (default: INFO)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="PyTorch CPU threads (default: OMP_NUM_THREADS, else the idle cores, at least 1)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        subparser = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(subparser)
        subparser.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from search.credentials import install_log_masking, mask_text

    install_log_masking()
    try:
        from models.threads import configure_threads

        configure_threads(args.threads)
        # SIGTERM (a service manager's or `kill`'s stop) ends a command as Ctrl-C does, so
        # that stores record the interruption.
        with interrupts.handling(signal.SIGTERM, once=False):
            return int(args.handler(args))
    except USER_ERRORS as error:
        message = mask_text(str(error) or type(error).__name__)
        print(f"polysearch {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"polysearch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
