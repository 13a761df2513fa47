"""Several workers on one study in a shared PostgreSQL storage and MLflow store, and a worker
killed in the middle of a trial."""

from __future__ import annotations

import signal
from collections import Counter

import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.scale.conftest import write_spec
from tests.scale.workers import (
    all_runs,
    finish,
    load_study,
    start_worker,
    stored_texts,
    trial_runs,
    wait_for,
)

pytestmark = pytest.mark.slow

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


def test_three_workers_fill_budget_exactly(tmp_path, tiny_checkpoint, postgres, databases):
    storage, mlflow_uri = databases
    n_trials = 9
    spec = write_spec(
        tmp_path, tiny_checkpoint, n_trials=n_trials, storage=storage, mlflow_uri=mlflow_uri
    )
    # Three separate launches, as on three machines: no shared process, no shared lock file.
    processes = [start_worker("search", str(spec), cwd=tmp_path, name=f"w{i}") for i in range(3)]
    results = [finish(process) for process in processes]
    for status, _, stderr in results:
        assert status == 0, stderr[-3000:]

    study = load_study(storage)
    states = Counter(trial.state for trial in study.trials)
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == n_trials
    assert states[TrialState.RUNNING] == 0
    # No worker died, so no trial failed and none was retried.
    assert states[TrialState.FAIL] == 0
    assert len(study.trials) == n_trials

    runs = trial_runs(mlflow_uri)
    runs_by_trial = Counter(int(run.data.tags["optuna_trial_number"]) for run in runs)
    # Every trial has exactly one run and every run belongs to one trial.
    assert sorted(runs_by_trial) == [trial.number for trial in study.trials]
    assert set(runs_by_trial.values()) == {1}
    for trial in study.trials:
        run = next(r for r in runs if r.data.tags["optuna_trial_number"] == str(trial.number))
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.tags["optuna_state"] == trial.state.name

    launches = [run for run in all_runs(mlflow_uri) if "optuna_trial_number" not in run.data.tags]
    # A worker that starts after the budget is met runs nothing and opens no launch run. On
    # a loaded machine the third worker can start that late.
    late = [stdout for _, stdout, _ in results if "trials already finished" in stdout]
    assert len(late) <= 1
    assert len(launches) == 3 - len(late)
    assert {run.info.status for run in launches} == {"FINISHED"}
    # Every trial run nests under one of the three launches.
    assert {run.data.tags["mlflow.parentRunId"] for run in runs} <= {
        run.info.run_id for run in launches
    }

    # The password is in both URLs but in no output and nothing stored.
    for _, stdout, stderr in results:
        assert postgres.password not in stdout
        assert postgres.password not in stderr
    texts = stored_texts(storage, mlflow_uri)
    assert any("polysearch:***@127.0.0.1" in text for text in texts)
    assert not [text for text in texts if postgres.password in text]


def _sampled_trial_after_complete(storage: str) -> bool:
    """Return whether a trial with sampled parameters runs while an earlier one has finished.

    A trial is stored RUNNING before its parameters are sampled. A trial killed in that
    moment has no parameters to retry, so its retry samples new ones.
    """
    trials = load_study(storage).trials
    return any(t.state == TrialState.COMPLETE for t in trials) and any(
        t.state == TrialState.RUNNING and t.params for t in trials
    )


def _kill_in_trial(spec, storage: str, folder) -> object:
    """Kill a worker with SIGKILL while it runs a trial; return that trial (FrozenTrial).

    The kill can land between two trials; then another worker is started and killed, up to
    three times.
    """
    for attempt in range(3):
        victim = start_worker("search", str(spec), cwd=folder, name=f"victim{attempt}")
        try:
            wait_for(lambda: _sampled_trial_after_complete(storage), 180, "a second trial sampled")
        finally:
            victim.send_signal(signal.SIGKILL)
            victim.communicate()
        running = [t for t in load_study(storage).trials if t.state == TrialState.RUNNING]
        if running:
            assert len(running) == 1
            return running[0]
    raise AssertionError("three kills in a row landed between trials")


def test_killed_worker_trial_fails_and_retries(tmp_path, tiny_checkpoint, postgres, databases):
    storage, mlflow_uri = databases
    n_trials = 8
    # Retraining makes each trial last about a second, so the kill lands inside one.
    spec = write_spec(
        tmp_path,
        tiny_checkpoint,
        n_trials=n_trials,
        storage=storage,
        mlflow_uri=mlflow_uri,
        grace_period=3,
        extra='[approximation]\nstrategy = "stepwise-retrain"\n[retrain]\nepochs = 1\n',
    )
    killed_trial = _kill_in_trial(spec, storage, tmp_path)

    # Two other workers finish the budget; one of them fails the killed trial once its
    # heartbeat is older than the grace period and runs its parameters again.
    others = [start_worker("search", str(spec), cwd=tmp_path, name=f"w{i}") for i in range(2)]
    for status, _, stderr in [finish(process) for process in others]:
        assert status == 0, stderr[-3000:]

    study = load_study(storage)
    states = Counter(trial.state for trial in study.trials)
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == n_trials
    assert states[TrialState.RUNNING] == 0
    failed = study.trials[killed_trial.number]
    assert failed.state == TrialState.FAIL
    retried = [
        trial
        for trial in study.trials
        if trial.system_attrs.get("failed_trial") == killed_trial.number
    ]
    assert len(retried) == 1
    assert retried[0].params == killed_trial.params
    assert retried[0].state in COUNTED

    client = MlflowClient(tracking_uri=mlflow_uri)
    killed_runs = [
        run
        for run in trial_runs(mlflow_uri)
        if run.data.tags["optuna_trial_number"] == str(killed_trial.number)
    ]
    # The run exists unless the kill came before it was created; either way none is RUNNING.
    assert len(killed_runs) <= 1
    for run in killed_runs:
        assert client.get_run(run.info.run_id).info.status == "FAILED"
        assert "no heartbeat" in run.data.tags["failure_reason"]
    assert [run for run in trial_runs(mlflow_uri) if run.info.status == "RUNNING"] == []
