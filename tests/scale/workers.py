"""Helpers of the scale tests: worker processes and what they stored."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[2]


def start_worker(*args: str, cwd: Path, name: str) -> subprocess.Popen:
    """Start ``polysearch --threads 1 ARGS`` with a temporary folder of its own.

    A separate ``TMPDIR`` per worker keeps the workers from sharing the local lock file, as
    workers on separate machines would.
    """
    tmpdir = cwd / f"tmp-{name}"
    tmpdir.mkdir(exist_ok=True)
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        "TMPDIR": str(tmpdir),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "search", "--threads", "1", *args],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    """Wait for a worker and return its exit status, standard output and standard error."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(
            f"worker still running after {timeout} s:\n{stderr[-3000:]}"
        ) from None
    return process.returncode, stdout, stderr


def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition()`` until it returns a true value and return that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (KeyError, optuna.exceptions.StorageInternalError):
            # The study or its tables do not exist yet.
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def load_study(storage: str, name: str = "scale") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def trial_runs(mlflow_uri: str, study: str = "scale") -> list[Any]:
    """Return every MLflow run of the study's trials (runs tagged with a trial number)."""
    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        return []
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    return [run for run in runs if "optuna_trial_number" in run.data.tags]


def all_runs(mlflow_uri: str, study: str = "scale") -> list[Any]:
    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.get_experiment_by_name(study)
    return client.search_runs([experiment.experiment_id], max_results=5000)


def stored_texts(storage: str, mlflow_uri: str, study: str = "scale") -> list[str]:
    """Return every parameter, tag and attribute value the study stored in Optuna and MLflow."""
    texts: list[str] = []
    for run in all_runs(mlflow_uri, study):
        texts.extend(str(value) for value in run.data.params.values())
        texts.extend(str(value) for value in run.data.tags.values())
    loaded = load_study(storage, study)
    texts.extend(str(value) for value in loaded.user_attrs.values())
    for trial in loaded.trials:
        texts.extend(str(value) for value in trial.user_attrs.values())
        texts.extend(str(value) for value in trial.system_attrs.values())
    return texts
