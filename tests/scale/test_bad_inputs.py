"""Bad input through the command line: corrupted SQLite stores, invalid specifications, a
missing study and a network with nothing to approximate.

Each ends with one line on standard error and exit status 2 and leaves every stored file byte
for byte as it was. Polynomials that explode outside their range leave the study running."""

from __future__ import annotations

import json
import math
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.scale.conftest import write_spec
from tests.scale.workers import load_study
from tests.search.conftest import polysearch

pytestmark = pytest.mark.slow


def _urls(folder: Path) -> tuple[str, str]:
    return f"sqlite:///{folder}/optuna.db", f"sqlite:///{folder}/mlflow.db"


@pytest.fixture(scope="module")
def stored_study(tmp_path_factory, tiny_checkpoint) -> Path:
    """A folder with a finished two-trial study 'scale' in SQLite stores."""
    folder = tmp_path_factory.mktemp("stored")
    storage, mlflow_uri = _urls(folder)
    spec = write_spec(folder, tiny_checkpoint, n_trials=2, storage=storage, mlflow_uri=mlflow_uri)
    result = polysearch("search", str(spec), cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder


@pytest.fixture
def stores(tmp_path, stored_study) -> Path:
    """A copy of the stored study that a test may damage."""
    folder = tmp_path / "stores"
    shutil.copytree(stored_study, folder)
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _scramble_second_half(path: Path) -> None:
    data = bytearray(path.read_bytes())
    # Keep the header, so that only SQLite itself can tell the file is damaged.
    for index in range(len(data) // 2, len(data), 5):
        data[index] = (data[index] * 31 + 17) % 256
    path.write_bytes(bytes(data))


def _damage(folder: Path, fault: str) -> None:
    if fault == "storage body scrambled":
        _scramble_second_half(folder / "optuna.db")
    elif fault == "storage header overwritten":
        with (folder / "optuna.db").open("r+b") as stream:
            stream.write(b"not a database!!")
    elif fault == "storage journal garbage":
        (folder / "optuna.db-journal").write_bytes(b"\x01garbage journal" * 64)
    elif fault == "mlflow body scrambled":
        _scramble_second_half(folder / "mlflow.db")
    elif fault == "mlflow journal garbage":
        (folder / "mlflow.db-journal").write_bytes(b"\x01garbage journal" * 64)
    else:
        raise AssertionError(fault)


def _assert_one_line_error(result: subprocess.CompletedProcess, command: str, fragment: str):
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"polysearch {command}: error: ")
    assert fragment in lines[0]


@pytest.mark.parametrize(
    ("fault", "fragment"),
    [
        ("storage body scrambled", "database disk image is malformed"),
        ("storage header overwritten", "not a SQLite database"),
        ("storage journal garbage", "optuna.db-journal' is not a SQLite rollback journal"),
        ("mlflow body scrambled", "cannot open MLflow store"),
        ("mlflow journal garbage", "mlflow.db-journal' is not a SQLite rollback journal"),
    ],
)
def test_corrupted_sqlite_store_exit_2(stores, tiny_checkpoint, fault, fragment):
    _damage(stores, fault)
    before = _snapshot(stores)
    storage, mlflow_uri = _urls(stores)
    spec = write_spec(
        stores.parent, tiny_checkpoint, n_trials=3, storage=storage, mlflow_uri=mlflow_uri
    )
    result = polysearch("search", str(spec), cwd=stores.parent)
    _assert_one_line_error(result, "search", fragment)
    assert _snapshot(stores) == before


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ("space.degree=[1, 4]", "'space.degree'"),
        ("space.degree=[2, 9]", "'space.degree'"),
        ("space.degree=[6, 4]", "'space.degree'"),
        ("space.percentile=[0, 100]", "'space.percentile'"),
        ("space.percentile=[95, 101]", "'space.percentile'"),
        ("space.percentile=[99, 95]", "'space.percentile'"),
        ("space.degree=[]", "'space.degree'"),
    ],
)
def test_invalid_space_exit_2(stores, tiny_checkpoint, setting, fragment):
    before = _snapshot(stores)
    storage, mlflow_uri = _urls(stores)
    spec = write_spec(
        stores.parent, tiny_checkpoint, n_trials=3, storage=storage, mlflow_uri=mlflow_uri
    )
    result = polysearch("search", str(spec), "--study", "other", "--set", setting, cwd=stores)
    _assert_one_line_error(result, "search", fragment)
    assert _snapshot(stores) == before


def test_network_without_nonlinearity_exit_2(stores, tmp_path, mnist_small):
    from models.checkpoint import save_checkpoint
    from tests.scale.networks import linear

    network = "tests.scale.networks:linear"
    checkpoint = tmp_path / "linear.pt"
    save_checkpoint(
        checkpoint,
        linear(mnist_small.input_shape, mnist_small.num_classes),
        network=network,
        dataset="mnist",
        input_shape=mnist_small.input_shape,
        num_classes=mnist_small.num_classes,
        mean=mnist_small.mean,
        std=mnist_small.std,
        options={},
        accuracies={},
    )
    before = _snapshot(stores)
    storage, mlflow_uri = _urls(stores)
    spec = write_spec(tmp_path, checkpoint, n_trials=3, storage=storage, mlflow_uri=mlflow_uri)
    spec.write_text(spec.read_text().replace('name = "cnn1"', f'name = "{network}"'))
    result = polysearch("search", str(spec), "--study", "other", cwd=stores)
    _assert_one_line_error(result, "search", "no nonlinearity to approximate")
    assert _snapshot(stores) == before


def test_best_missing_study_exit_2(stores):
    before = _snapshot(stores)
    storage, mlflow_uri = _urls(stores)
    result = polysearch(
        "best", "--study", "absent", "--storage", storage, "--mlflow-uri", mlflow_uri, cwd=stores
    )
    _assert_one_line_error(result, "best", "study 'absent' not found")
    # The message lists the studies that exist.
    assert "scale" in result.stderr
    assert _snapshot(stores) == before


def _kill_writer_mid_transaction(database: Path) -> None:
    """Leave a hot rollback journal, as a worker killed in the middle of a write would."""
    code = f"""
import os, sqlite3
connection = sqlite3.connect({str(database)!r}, isolation_level=None)
connection.execute("PRAGMA cache_size = 1")
connection.execute("BEGIN IMMEDIATE")
connection.execute("UPDATE trial_values SET value = -1")
connection.execute("CREATE TABLE filler (data BLOB)")
for _ in range(200):
    connection.execute("INSERT INTO filler VALUES (randomblob(4096))")
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_hot_journal_rolled_back_on_resume(stores):
    database = stores / "optuna.db"
    values = sorted(trial.value for trial in load_study(f"sqlite:///{database}").trials)
    _kill_writer_mid_transaction(database)
    journal = stores / "optuna.db-journal"
    assert journal.is_file()

    storage, mlflow_uri = _urls(stores)
    result = polysearch(
        "best",
        "--study",
        "scale",
        "--storage",
        storage,
        "--mlflow-uri",
        mlflow_uri,
        "--json",
        cwd=stores,
    )
    assert result.returncode == 0, result.stderr
    # SQLite played the journal back: the half-written update is gone.
    assert not journal.exists()
    assert sorted(t.value for t in load_study(storage).trials) == values
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert "filler" not in tables


def test_exploding_polynomials_study_continues(tmp_path, tiny_checkpoint):
    storage, mlflow_uri = _urls(tmp_path)
    # Degree 8 fitted on the central 20-60 % of the inputs, applied to all of them: the
    # polynomial grows like x**8 outside its range.
    spec = write_spec(
        tmp_path,
        tiny_checkpoint,
        n_trials=3,
        storage=storage,
        mlflow_uri=mlflow_uri,
    )
    result = polysearch(
        "search",
        str(spec),
        "--set",
        "space.degree=[8, 8]",
        "--set",
        "space.percentile=[20.0, 60.0]",
        "--set",
        "space.percentile_step=0",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    study = load_study(storage)
    client = MlflowClient(tracking_uri=mlflow_uri)
    counted = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) == 3
    for trial in study.trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        if trial.state == TrialState.COMPLETE:
            assert math.isfinite(trial.value)
            assert 0 <= trial.value <= 100
            assert run.info.status == "FINISHED"
        else:
            # A failed trial names its reason in Optuna and in MLflow.
            assert trial.state == TrialState.FAIL
            assert trial.user_attrs["fail_reason"]
            assert run.data.tags["failure_reason"] == trial.user_attrs["fail_reason"]
            assert run.info.status == "FAILED"
    # The polynomials were applied outside their ranges. The share is below 1 - p for a
    # range of the central p <= 60 %, because the background pixels of MNIST give many
    # inputs equal to the convolution's bias, and a range ending on such a tie counts none of
    # them outside; measured shares ran from 0.33 to over 0.4.
    for trial in study.trials:
        if trial.state != TrialState.COMPLETE or "duplicate_of" in trial.user_attrs:
            continue
        report = client.download_artifacts(
            trial.user_attrs["mlflow_run_id"], "report.json", str(tmp_path)
        )
        sites = json.loads(Path(report).read_text())["sites"]
        for site in sites:
            for channel in site["channels"]:
                assert channel["degree"] == 8
                assert channel["outside_share"] > 0.0
