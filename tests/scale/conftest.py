"""Fixtures of the scale-out and fault tests: a real PostgreSQL server, databases on it, a tiny
trained checkpoint and study specifications that keep every trial under a second."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scale.postgres import PostgresServer, find_bindir

# The search tests' checkpoint fixture: cnn1 trained for one epoch on 2000 MNIST images.
from tests.search import conftest as search_conftest
from tests.search.conftest import LIMIT, tiny_checkpoint  # noqa: F401

_database_numbers = itertools.count()


def postgres_or_skip() -> PostgresServer:
    """Create a stopped server, skipping when PostgreSQL is absent outside CI.

    Under CI (``CI`` set to anything but empty or ``false``) a missing PostgreSQL fails the
    tests instead, because CI installs it (``make postgresql``).
    """
    bindir = find_bindir()
    if bindir is None:
        message = "PostgreSQL server binaries not found (apt-get install postgresql)"
        if os.environ.get("CI", "").lower() not in ("", "false", "0"):
            pytest.fail(f"{message}; CI must install them", pytrace=False)
        pytest.skip(message)
    return PostgresServer.create(bindir)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server shared by the tests of the session (never stopped by a test)."""
    server = postgres_or_skip()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A started PostgreSQL server of one test, which it may stop and start again."""
    server = postgres_or_skip()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def databases(postgres: PostgresServer) -> tuple[str, str]:
    """URLs of a fresh Optuna database and a fresh MLflow database on the shared server."""
    number = next(_database_numbers)
    return (
        postgres.create_database(f"optuna_{number}"),
        postgres.create_database(f"mlflow_{number}"),
    )


def write_spec(
    folder: Path,
    checkpoint: Path,
    *,
    n_trials: int,
    storage: str,
    mlflow_uri: str,
    extra: str = "",
    name: str = "scale",
    grace_period: int = 20,
) -> Path:
    """Write the search tests' small study with the given stores and a longer grace period.

    Tests that kill a worker shorten ``grace_period``.
    """
    return search_conftest.write_spec(
        folder,
        checkpoint,
        n_trials=n_trials,
        extra=extra,
        name=name,
        storage=storage,
        mlflow_uri=mlflow_uri,
        grace_period=grace_period,
    )
