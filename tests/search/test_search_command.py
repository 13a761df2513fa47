"""End-to-end tests of polysearch search, best and dashboard through real subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import stat
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from search.commands.search import WORKER_STOP_SECONDS
from tests.search.conftest import polysearch, start_polysearch, write_spec

pytestmark = pytest.mark.slow


def _study(folder, name="tiny"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder}/optuna.db")


def _states(study):
    return [trial.state for trial in study.get_trials(deepcopy=False)]


def test_search_logs_runs_best_top_trial(tmp_path, tiny_checkpoint):
    spec = write_spec(tmp_path, tiny_checkpoint, n_trials=4)
    result = polysearch("search", str(spec), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("validation accuracy") >= 4
    assert "this launch: 4 trials in " in result.stdout
    assert "study: 4 of 4 finished" in result.stdout
    # A rerun of a finished study runs nothing and adds no launch run.
    rerun = polysearch("search", str(spec), cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "4 of 4 trials already finished" in rerun.stdout

    study = _study(tmp_path)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 4
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if "optuna_trial_number" not in run.data.tags]
    children = [run for run in runs if "optuna_trial_number" in run.data.tags]
    assert len(parents) == 1
    assert parents[0].info.status == "FINISHED"
    assert len(children) == 4
    for trial in complete:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        # Trial and run point at each other.
        assert run.data.tags["optuna_trial_number"] == str(trial.number)
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.params["relu1.degree"] == str(trial.params["relu1.degree"])
        assert run.data.metrics["validation_accuracy"] == pytest.approx(trial.value)
        if "duplicate_of" in trial.user_attrs:
            # A repeated configuration points at the run that contains its artifacts.
            original = study.trials[trial.user_attrs["duplicate_of"]]
            assert run.data.tags["duplicate_of_run"] == original.user_attrs["mlflow_run_id"]
            continue
        artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
        assert {"report.json", "configuration.json"} <= artifacts

    output = tmp_path / "best.json"
    best = polysearch(
        "best",
        "--study",
        "tiny",
        "--storage",
        f"sqlite:///{tmp_path}/optuna.db",
        "--mlflow-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
        "--json",
        "--output",
        str(output),
        cwd=tmp_path,
    )
    assert best.returncode == 0, best.stderr
    entry = json.loads(best.stdout)
    top = max(complete, key=lambda trial: (trial.value, -trial.number))
    assert entry["trial"] == top.number
    assert entry["validation_accuracy"] == pytest.approx(top.value)
    assert 0 <= entry["test_accuracy"] <= 100
    assert output.is_file()
    logged = client.get_run(top.user_attrs["mlflow_run_id"]).data.metrics
    assert logged["test_accuracy"] == pytest.approx(entry["test_accuracy"])

    stores = ("--storage", f"sqlite:///{tmp_path}/optuna.db")
    stores += ("--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db")
    before = (tmp_path / "mlflow.db").read_bytes()
    missing_folder = polysearch(
        "best",
        "--study",
        "tiny",
        *stores,
        "--output",
        str(tmp_path / "no" / "b.json"),
        cwd=tmp_path,
    )
    assert missing_folder.returncode == 2, missing_folder.stderr
    assert "of --output does not exist" in missing_folder.stderr
    # A rejected option changes nothing in the MLflow store.
    assert (tmp_path / "mlflow.db").read_bytes() == before
    again = polysearch("best", "--study", "tiny", *stores, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    # The same test accuracy measured twice is one row of the run's metric history.
    history = client.get_metric_history(top.user_attrs["mlflow_run_id"], "test_accuracy")
    assert len(history) == 1

    model_path = tmp_path / "approximated.pt"
    # An MLflow store that cannot be reached fails before the network file is written.
    unreachable = polysearch(
        "apply",
        str(output),
        "--output",
        str(model_path),
        "--mlflow-uri",
        "http://127.0.0.1:1",
        cwd=tmp_path,
    )
    assert unreachable.returncode == 2, unreachable.stderr
    assert "cannot open MLflow store" in unreachable.stderr
    assert not model_path.exists()
    applied = polysearch(
        "apply",
        str(output),
        "--output",
        str(model_path),
        "--mlflow-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
        cwd=tmp_path,
    )
    assert applied.returncode == 0, applied.stderr
    # The same configuration on the same test split gives the same accuracy.
    assert f"Test accuracy {entry['test_accuracy']:.2f} %" in applied.stdout
    assert model_path.is_file()
    umask = os.umask(0)
    os.umask(umask)
    # Written files get the mode of any new file under the umask, not mkstemp's 0600.
    assert stat.S_IMODE(model_path.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(output.stat().st_mode) == 0o666 & ~umask
    applied_runs = client.search_runs([client.get_experiment_by_name("applied").experiment_id])
    assert len(applied_runs) == 1
    assert applied_runs[0].data.metrics["test_accuracy"] == pytest.approx(entry["test_accuracy"])
    # The network is logged as an MLflow model, not only as the fallback file.
    assert applied_runs[0].data.tags["model_format"] == "mlflow.pytorch"
    assert "WARNING" not in applied.stderr


def test_search_resumes_after_kill(tmp_path, tiny_checkpoint):
    # The first launch's budget is far more than it can run before the kill, so the test
    # never races the search's end: it kills once a trial finished and another runs.
    spec = write_spec(tmp_path, tiny_checkpoint, n_trials=500)
    process = start_polysearch("search", str(spec), cwd=tmp_path)
    database = tmp_path / "optuna.db"
    deadline = time.monotonic() + 300
    mid_trial = False
    try:
        while not mid_trial and time.monotonic() < deadline and process.poll() is None:
            states = _trial_states(database)
            mid_trial = "RUNNING" in states and ("COMPLETE" in states or "PRUNED" in states)
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate()
    assert mid_trial, f"the search never had a finished and a running trial at once: {stderr}"
    at_kill = _trial_states(database)
    finished = at_kill.count("COMPLETE") + at_kill.count("PRUNED")
    # The trial that ran may have ended between the last look and the kill.
    assert at_kill.count("RUNNING") <= 1
    budget = finished + 2
    # Let the killed trial's heartbeat age past the grace period (2 s).
    time.sleep(3)
    result = polysearch("search", str(spec), "--n-trials", str(budget), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    states = _states(_study(tmp_path))
    assert TrialState.RUNNING not in states
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == budget
    assert states.count(TrialState.FAIL) == at_kill.count("RUNNING")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    statuses = [run.info.status for run in runs]
    assert statuses.count("RUNNING") == 0
    # The killed launch's run is failed by the next launch, which sees its process is gone.
    launches = [run for run in runs if "optuna_trial_number" not in run.data.tags]
    assert sorted(run.info.status for run in launches) == ["FAILED", "FINISHED"]


def test_search_retries_trial_without_heartbeat(tmp_path, tiny_checkpoint):
    # A process that dies after storing its trial and before the first heartbeat leaves a
    # RUNNING trial without a heartbeat. The next launch fails that trial and retries it.
    spec = write_spec(tmp_path, tiny_checkpoint, n_trials=2)
    assert polysearch("search", str(spec), cwd=tmp_path).returncode == 0
    without_heartbeat = optuna.load_study(
        study_name="tiny", storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db")
    )
    orphan = without_heartbeat.ask(_study(tmp_path).trials[0].distributions)
    orphan_params = dict(orphan.params)
    assert len(orphan_params) == 2

    result = polysearch("search", str(spec), "--n-trials", "3", cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"trial {orphan.number} was RUNNING without a heartbeat" in result.stderr
    trials = _study(tmp_path).trials
    assert trials[orphan.number].state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retried) == 1
    assert retried[0].params == orphan_params
    assert retried[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    states = [trial.state for trial in trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 3


def test_search_two_workers_share_budget(tmp_path, tiny_checkpoint):
    spec = write_spec(tmp_path, tiny_checkpoint, n_trials=6)
    result = polysearch("search", str(spec), "--workers", "2", cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    states = _states(_study(tmp_path))
    assert states.count(TrialState.COMPLETE) == 6
    assert len(states) == 6
    assert "database is locked" not in result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_dashboard_lists_study(tmp_path):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    optuna.create_study(study_name="listed", storage=storage)
    port = _free_port()
    process = start_polysearch(
        "dashboard", "--storage", storage, "--port", str(port), cwd=tmp_path
    )
    try:
        body = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and body is None:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/studies", timeout=2
                ) as r:
                    body = json.loads(r.read())
            except OSError:
                time.sleep(0.3)
        assert body is not None, "dashboard did not answer within 60 s"
        names = [summary["study_name"] for summary in body["study_summaries"]]
        assert names == ["listed"]
    finally:
        process.terminate()
        process.communicate(timeout=30)


def test_search_bad_spec_leaves_storage_untouched(tmp_path, tiny_checkpoint):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    optuna.create_study(study_name="kept", storage=storage)
    before = (tmp_path / "optuna.db").read_bytes()
    spec = write_spec(tmp_path, tiny_checkpoint, n_trials=2, extra='colour = "red"')
    result = polysearch("search", str(spec), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown key 'tracking.colour'" in result.stderr
    assert (tmp_path / "optuna.db").read_bytes() == before


def test_search_missing_data_before_training_one_line(tmp_path):
    # Without a checkpoint the search would train one, but the data set is missing first.
    spec = write_spec(tmp_path, tmp_path / "absent.pt", n_trials=2)
    (tmp_path / "empty").mkdir()
    result = polysearch(
        "search",
        str(spec),
        "--set",
        'data.dataset="cifar10"',
        "--set",
        'data.dir="empty"',
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "empty/cifar-10-batches-py" in lines[0]
    assert not (tmp_path / "absent.pt").exists()


def test_search_unreachable_storage_exit_2(tmp_path, tiny_checkpoint):
    spec = write_spec(tmp_path, tiny_checkpoint, n_trials=2)
    missing = f"sqlite:///{tmp_path}/missing/optuna.db"
    result = polysearch("search", str(spec), "--storage", missing, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "does not exist" in result.stderr
    assert not (tmp_path / "missing").exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_search_more_workers_than_cores_exit_2(tmp_path, tiny_checkpoint):
    # Each worker process imports PyTorch and loads the data, so a worker count far above
    # the cores would exhaust memory before any trial runs.
    spec = write_spec(tmp_path, tiny_checkpoint, n_trials=2)
    result = polysearch("search", str(spec), "--workers", "1000", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--workers 1000" in result.stderr
    assert "available cores" in result.stderr
    assert not (tmp_path / "optuna.db").exists()
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("network", ["nosuch", "cnn2"])
def test_search_network_mismatch_exit_2(tmp_path, tiny_checkpoint, network):
    spec = write_spec(tmp_path, tiny_checkpoint, n_trials=2)
    spec.write_text(spec.read_text().replace('name = "cnn1"', f'name = "{network}"'))
    result = polysearch("search", str(spec), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("polysearch search: error:"), result.stderr
    # The line names both the specification's network and the checkpoint's.
    assert repr(network) in error
    assert "'cnn1'" in error
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/optuna.db")
    assert storage.get_all_studies() == []
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_experiment_by_name("tiny") is None


def _trial_states(database):
    """The state names of the study's trials, read with a read-only connection, which never
    creates Optuna's tables while the search itself creates them."""
    if not database.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as db:
            return [state for (state,) in db.execute("SELECT state FROM trials")]
    except sqlite3.Error:  # the tables may not exist yet
        return []


def _interrupt_mid_trials(tmp_path, spec, *options, running, terminate=False):
    """Start a search, send SIGINT to its process group once ``running`` trials run at once,
    and return (exit status, stdout, stderr, seconds from the signal to the exit). With
    ``terminate``, send SIGTERM to the main process alone, as a service manager does."""
    process = start_polysearch("search", str(spec), *options, cwd=tmp_path, new_session=True)
    deadline = time.monotonic() + 240
    seen = False
    try:
        while not seen and time.monotonic() < deadline and process.poll() is None:
            seen = _trial_states(tmp_path / "optuna.db").count("RUNNING") >= running
            time.sleep(0.05)
        if seen and terminate:
            process.send_signal(signal.SIGTERM)
        elif seen:
            # A terminal's Ctrl-C signals every process of the foreground group.
            os.killpg(process.pid, signal.SIGINT)
        signalled = time.monotonic()
        stdout, stderr = process.communicate(timeout=120)
        stopping = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert seen, f"never {running} running trials at once: {stderr}"
    return process.returncode, stdout, stderr, stopping


def _assert_interrupt_recorded(tmp_path):
    study = _study(tmp_path)
    states = _states(study)
    # A trial interrupted while it computes is stored FAIL, one interrupted while its result
    # was stored is kept, and none is left RUNNING.
    assert TrialState.RUNNING not in states
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.status for run in runs].count("RUNNING") == 0
    for trial in study.get_trials(states=(TrialState.FAIL,)):
        # Optuna fails a trial interrupted before the objective starts without a reason.
        assert trial.user_attrs.get("fail_reason", "KeyboardInterrupt").startswith(
            "KeyboardInterrupt"
        )
        # An interrupted trial's run is KILLED, not left for the heartbeat to fail; a trial
        # interrupted before its run existed has no run.
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id is not None:
            assert client.get_run(run_id).info.status == "KILLED"
    launches = [run for run in runs if "optuna_trial_number" not in run.data.tags]
    assert [run.info.status for run in launches] == ["KILLED"]


def test_search_interrupt_two_workers_records_trials(tmp_path, tiny_checkpoint):
    spec = write_spec(tmp_path, tiny_checkpoint, n_trials=40)
    status, _, stderr, _ = _interrupt_mid_trials(tmp_path, spec, "--workers", "2", running=2)
    assert status == 130, stderr
    assert stderr.strip().splitlines()[-1] == "polysearch search: interrupted"
    _assert_interrupt_recorded(tmp_path)


def test_search_sigterm_two_workers_stops_them(tmp_path, tiny_checkpoint):
    spec = write_spec(tmp_path, tiny_checkpoint, n_trials=40)
    status, _, stderr, stopping = _interrupt_mid_trials(
        tmp_path, spec, "--workers", "2", running=2, terminate=True
    )
    assert status == 130, stderr
    assert stderr.strip().splitlines()[-1] == "polysearch search: interrupted"
    # The workers get SIGTERM at once, not after the wait meant for a Ctrl-C that reached
    # them too, and they stop on it.
    assert stopping < WORKER_STOP_SECONDS, stderr
    assert "killing" not in stderr
    _assert_interrupt_recorded(tmp_path)


def _worker_pids(parent):
    """The process ids of the spawned workers of process ``parent`` (Linux /proc)."""
    pids = []
    for status in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # The fields after the command name, which is in parentheses: state, parent id.
            fields = status.read_text().rpartition(")")[2].split()
            command = (status.parent / "cmdline").read_bytes()
            if int(fields[1]) == parent and b"spawn_main" in command:
                pids.append(int(status.parent.name))
    return pids


def _alive(pid):
    """Whether process ``pid`` runs; a zombie waiting for its parent to reap it does not."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return False
    return fields[0] != "Z"


def test_search_killed_parent_stops_workers(tmp_path, tiny_checkpoint):
    spec = write_spec(tmp_path, tiny_checkpoint, n_trials=500)
    # Files, unlike pipes, let the workers write on once the parent is gone.
    logs = tmp_path / "logs"
    process = start_polysearch("search", str(spec), "--workers", "2", cwd=tmp_path, output=logs)
    deadline = time.monotonic() + 240
    workers = []
    try:
        while _trial_states(tmp_path / "optuna.db").count("RUNNING") < 2:
            assert process.poll() is None, (logs / "stderr").read_text()
            assert time.monotonic() < deadline, "never two running trials at once"
            time.sleep(0.05)
        workers = _worker_pids(process.pid)
        assert len(workers) == 2
        process.kill()
        process.wait()
        # Each worker notices that its parent ended and stops as on SIGTERM, storing its trial.
        stop_deadline = time.monotonic() + WORKER_STOP_SECONDS
        while any(_alive(pid) for pid in workers) and time.monotonic() < stop_deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers), (logs / "stderr").read_text()
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert "RUNNING" not in _trial_states(tmp_path / "optuna.db")


def test_search_interrupt_one_worker_one_line(tmp_path, tiny_checkpoint):
    spec = write_spec(tmp_path, tiny_checkpoint, n_trials=40)
    status, stdout, stderr, _ = _interrupt_mid_trials(tmp_path, spec, running=1)
    assert status == 130, stderr
    # No traceback, no Optuna or MLflow chatter: the interrupt is one line.
    assert stderr.strip().splitlines()[-1] == "polysearch search: interrupted"
    assert "Traceback" not in stderr
    assert "KeyboardInterrupt" not in stderr
    assert "[W " not in stderr
    assert "mlflow" not in stderr
    _assert_interrupt_recorded(tmp_path)


@pytest.mark.parametrize("where", ["busy port", "foreign host"])
def test_dashboard_unusable_address_exit_2(tmp_path, where):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    optuna.create_study(study_name="listed", storage=storage)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # 10.255.255.1 is no address of this machine, so binding it fails without traffic.
        host = "127.0.0.1" if where == "busy port" else "10.255.255.1"
        options = ["--host", host, "--port", str(port if where == "busy port" else _free_port())]
        result = polysearch("dashboard", "--storage", storage, *options, cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert f"cannot listen on {host}:" in result.stderr
    # The address is printed only once the server listens.
    assert "Dashboard at" not in result.stdout


def test_search_unreachable_mlflow_server_fails_fast(tmp_path, tiny_checkpoint):
    spec = write_spec(tmp_path, tiny_checkpoint, n_trials=2)
    # Nothing listens on port 1, so the connection is refused at once.
    uri = "http://user:secret@127.0.0.1:1"
    started = time.monotonic()
    result = polysearch("search", str(spec), "--mlflow-uri", uri, cwd=tmp_path, timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "cannot open MLflow store 'http://user:***@127.0.0.1:1'" in result.stderr
    assert "no connection to the server ([Errno 111] Connection refused)" in result.stderr
    assert "start the MLflow server or check the address" in result.stderr
    assert "secret" not in result.stderr
    assert not (tmp_path / "optuna.db").exists()
    # MLflow's default of 7 retries with backoff took minutes; one attempt takes seconds
    # (the bound leaves room for the imports on a loaded machine).
    assert elapsed < 40


def test_search_logs_checkpoint_it_trains(tmp_path):
    checkpoint = tmp_path / "trained.pt"
    spec = write_spec(tmp_path, checkpoint, n_trials=1, extra="")
    spec.write_text(spec.read_text() + "[train]\nepochs = 1\n")
    result = polysearch("search", str(spec), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert checkpoint.is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("training").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["study"] == "tiny"
    assert run.data.params["epochs"] == "1"
    assert 0 <= run.data.metrics["test_accuracy"] <= 100
    artifacts = [item.path for item in client.list_artifacts(run.info.run_id, "checkpoint")]
    assert artifacts == ["checkpoint/trained.pt"]


def test_search_two_objectives_pareto_front(tmp_path, tiny_checkpoint):
    spec = write_spec(tmp_path, tiny_checkpoint, n_trials=4)
    result = polysearch(
        "search",
        str(spec),
        "--set",
        'search.objectives=["accuracy", "he_cost"]',
        "--set",
        "search.sampler=nsga2",
        "--set",
        "approximation.strategy=stepwise",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    study = _study(tmp_path)
    assert study.directions == [
        optuna.study.StudyDirection.MAXIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
    ]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    best = polysearch(
        "best",
        "--study",
        "tiny",
        "--storage",
        f"sqlite:///{tmp_path}/optuna.db",
        "--mlflow-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
        "--json",
        cwd=tmp_path,
    )
    assert best.returncode == 0, best.stderr
    front = json.loads(best.stdout)
    # A trial that repeats an earlier one's parameters is listed as that earlier trial.
    first_of_params = {}
    for trial in sorted(study.best_trials, key=lambda t: t.number):
        first_of_params.setdefault(json.dumps(trial.params, sort_keys=True), trial.number)
    assert {entry["trial"] for entry in front} == set(first_of_params.values())
    # No trial of the study dominates a member of the front.
    for entry in front:
        for trial in complete:
            accuracy, cost = trial.values
            assert not (
                accuracy >= entry["validation_accuracy"]
                and cost <= entry["he_cost"]
                and (accuracy, cost) != (entry["validation_accuracy"], entry["he_cost"])
            )
        assert 0 <= entry["test_accuracy"] <= 100
