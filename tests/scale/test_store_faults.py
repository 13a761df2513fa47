"""A PostgreSQL storage or MLflow store that cannot be reached at start, or that stops while
a worker runs: one line on standard error, exit status 2, no password shown, and a study that
resumes once the server is back."""

from __future__ import annotations

import time
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

from tests.scale.conftest import write_spec
from tests.scale.postgres import free_port
from tests.scale.workers import finish, load_study, start_worker, trial_runs, wait_for

pytestmark = pytest.mark.slow


def _broken_urls(server, database: str) -> dict[str, str]:
    return {
        "wrong password": server.url(database, password="not-the-password"),
        "missing database": server.url("absent_database"),
        "refused port": server.url(database).replace(f":{server.port}/", f":{free_port()}/"),
    }


@pytest.mark.parametrize("store", ["storage", "mlflow"])
@pytest.mark.parametrize("fault", ["wrong password", "missing database", "refused port"])
def test_unreachable_store_at_start_exit_2(
    tmp_path, tiny_checkpoint, postgres, databases, store, fault
):
    storage, mlflow_uri = databases
    broken = _broken_urls(postgres, storage.rsplit("/", 1)[1])[fault]
    if store == "mlflow":
        mlflow_uri = broken
    else:
        storage = broken
    spec = write_spec(
        tmp_path, tiny_checkpoint, n_trials=2, storage=storage, mlflow_uri=mlflow_uri
    )
    status, stdout, stderr = finish(start_worker("search", str(spec), cwd=tmp_path, name="w"))

    assert status == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    what = "MLflow store" if store == "mlflow" else "Optuna storage"
    assert lines[0].startswith(f"polysearch search: error: cannot open {what} ")
    # The message names the server with the password masked, and never shows the password.
    assert "'postgresql://polysearch:***@127.0.0.1:" in lines[0]
    assert postgres.password not in stderr
    assert postgres.password not in stdout
    assert "not-the-password" not in stderr
    # No study was created in the storage that could be reached.
    if store == "mlflow":
        assert optuna.get_all_study_names(storage) == []


def test_storage_lost_mid_run_resumes(tmp_path, tiny_checkpoint, own_postgres):
    storage = own_postgres.create_database("optuna")
    mlflow_uri = own_postgres.create_database("mlflow")
    spec = write_spec(
        tmp_path,
        tiny_checkpoint,
        n_trials=60,
        storage=storage,
        mlflow_uri=mlflow_uri,
        grace_period=3,
    )
    worker = start_worker("search", str(spec), cwd=tmp_path, name="w")
    try:
        wait_for(
            lambda: sum(t.state == TrialState.COMPLETE for t in load_study(storage).trials) >= 3,
            180,
            "three complete trials",
        )
        # An immediate stop is a crash of the server: sessions end without a goodbye.
        own_postgres.stop("immediate")
        status, stdout, stderr = finish(worker, timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()

    assert status == 2, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("polysearch search: error: the ")
    assert " failed: " in last
    assert "run the same command to resume" in last
    assert "polysearch:***@127.0.0.1" in last
    # Warnings before the error are one line each, without the libraries' tracebacks.
    assert "Traceback" not in stderr
    assert own_postgres.password not in stderr
    assert own_postgres.password not in stdout

    # Back up: the study loads as it was and a new launch finishes a smaller budget.
    own_postgres.start()
    study = load_study(storage)
    finished = sum(
        trial.state in (TrialState.COMPLETE, TrialState.PRUNED) for trial in study.trials
    )
    assert finished >= 3
    for trial in study.trials:
        if trial.state == TrialState.COMPLETE:
            assert 0 <= trial.value <= 100
            assert "mlflow_run_id" in trial.user_attrs
    target = finished + 2
    started = time.monotonic()
    status, _, stderr = finish(
        start_worker("search", str(spec), "--n-trials", str(target), cwd=tmp_path, name="resume")
    )
    assert status == 0, stderr[-3000:]
    assert time.monotonic() - started < 180

    states = Counter(trial.state for trial in load_study(storage).trials)
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == target
    # The trial cut short by the crash was failed by its heartbeat, not left running.
    assert states[TrialState.RUNNING] == 0
    assert [run for run in trial_runs(mlflow_uri) if run.info.status == "RUNNING"] == []
