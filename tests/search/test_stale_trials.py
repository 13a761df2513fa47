"""Tests of failing the trials and MLflow runs whose process died."""

from __future__ import annotations

import os
import socket
import subprocess

import optuna
import pytest
from mlflow import MlflowClient

from search.tracking import StaleTrialHandler, start_training_run


@pytest.mark.parametrize("run_status", ["RUNNING", "FINISHED"])
def test_stale_handler_fails_run_and_requeues(tmp_path, run_status):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("study")
    run = client.create_run(experiment, tags={"optuna_state": "COMPLETE"})
    if run_status != "RUNNING":
        # The process ended the run and died before Optuna stored the trial's state.
        client.set_terminated(run.info.run_id, status=run_status)

    study = optuna.create_study(study_name="study")
    distribution = optuna.distributions.IntDistribution(2, 8)
    trial = optuna.trial.create_trial(
        state=optuna.trial.TrialState.FAIL,
        params={"relu1.degree": 5},
        distributions={"relu1.degree": distribution},
        user_attrs={"mlflow_run_id": run.info.run_id},
    )
    study.add_trial(trial)
    StaleTrialHandler(uri)(study, study.trials[0])

    stored = client.get_run(run.info.run_id)
    assert stored.info.status == "FAILED"
    assert stored.data.tags["optuna_state"] == "FAIL"
    assert "no heartbeat" in stored.data.tags["failure_reason"]
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1
    assert waiting[0].params == {"relu1.degree": 5}
    assert waiting[0].system_attrs["failed_trial"] == 0


def test_training_run_of_ended_process_failed(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("training")
    ended = subprocess.Popen(["true"])
    ended.wait()
    host = socket.gethostname()
    killed = client.create_run(experiment, tags={"host": host, "host_pid": str(ended.pid)})
    alive = client.create_run(experiment, tags={"host": host, "host_pid": str(os.getppid())})
    elsewhere = client.create_run(
        experiment, tags={"host": f"not-{host}", "host_pid": str(ended.pid)}
    )

    run_id = start_training_run(client, uri, network="cnn1", dataset="mnist", params={})

    failed = client.get_run(killed.info.run_id)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["failure_reason"] == f"training process {ended.pid} ended"
    # A live process, or one on another host that cannot be checked, keeps its run.
    assert client.get_run(alive.info.run_id).info.status == "RUNNING"
    assert client.get_run(elsewhere.info.run_id).info.status == "RUNNING"
    new = client.get_run(run_id)
    assert new.info.status == "RUNNING"
    assert new.data.tags["host_pid"] == str(os.getpid())
