"""MLflow tracking of studies: one experiment per study, a parent run per launch of
``polysearch search`` and a nested run per trial.

Everything goes through ``mlflow.MlflowClient`` with explicit run ids, so worker processes
log their trials into the launch's parent run without sharing MLflow's global active run.
A trial run holds the trial's parameters, validation accuracy, per-step accuracies, fit
errors, HE cost and time as metrics, the tags below, the full per-site and per-channel
report as one JSON artifact (``report.json``), the approximation configuration
(``configuration.json``) and, as the specification asks, figures.

Tags on trial runs: ``optuna_study``, ``optuna_trial_number``, ``strategy``, ``network``,
``dataset``, ``code_version`` and ``mlflow.parentRunId``. The Optuna trial stores the run id
as its user attribute ``mlflow_run_id``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from search.credentials import mask_text
from search.spec import DEFAULT_MLFLOW_URI
from search.storage import (
    check_sqlite_url,
    first_line,
    mask_url,
    retry_locked,
    schema_lock,
    sqlite_path,
    store_hint,
)

logger = logging.getLogger(__name__)

MLFLOW_HINT = "pass --mlflow-uri sqlite:///PATH/TO/mlflow.db with an existing folder"
REPORT_ARTIFACT = "report.json"
CONFIGURATION_ARTIFACT = "configuration.json"
WEIGHTS_ARTIFACT = "configuration.weights.pt"
# Experiment of the runs that train a checkpoint, the one ``polysearch train`` logs to.
TRAINING_EXPERIMENT = "training"

# MLflow rejects parameter values longer than this many characters.
MAX_PARAM_LENGTH = 6000


# Optuna's second line about a failed trial, which only repeats that its value is None.
_FAILED_VALUE_NONE = re.compile(r"Trial \d+ failed with value None\.")


def _keep_optuna_record(record: logging.LogRecord) -> bool:
    """Drop Optuna's warnings about a trial stopped by Ctrl-C and its "value None" line.

    The command already ends with one line that says it was interrupted, and the trial's
    state and MLflow run record the interrupt.
    """
    if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
        return False
    return not _FAILED_VALUE_NONE.fullmatch(record.getMessage())


def _drop_reraised_database_error(record: logging.LogRecord) -> bool:
    """Drop MLflow's traceback of a database error that it raises again right after.

    The raised error reaches the command, which reports it in one line.
    """
    return not record.getMessage().startswith("SQLAlchemy database error")


def _keep_first_line(record: logging.LogRecord) -> bool:
    """Shorten a record to the first line of its message and drop its traceback."""
    lines = record.getMessage().strip().splitlines()
    if len(lines) > 1 or record.exc_info:
        record.msg = lines[0] if lines else ""
        record.args = ()
        record.exc_info = None
        record.exc_text = None
    return True


def configure_library_logging() -> None:
    """Route Optuna's and MLflow's messages through ``logging`` at the WARNING level.

    Optuna logs at WARNING and above through the root logger's handlers (so credentials are
    masked there too), and its storage warnings keep their first line only. MLflow's INFO
    lines about creating its database tables are dropped, and so are its tracebacks of
    database errors that it raises again for the command to report. MLflow draws no progress
    bar while it downloads artifacts. Call it before MLflow logs anything; calling it again
    changes nothing.
    """
    import optuna

    # MLflow reads this variable at every download.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optimize_logger = logging.getLogger("optuna.study._optimize")
    if _keep_optuna_record not in optimize_logger.filters:
        optimize_logger.addFilter(_keep_optuna_record)
    database_logger = logging.getLogger("mlflow.store.db.utils")
    database_logger.setLevel(logging.WARNING)
    if _drop_reraised_database_error not in database_logger.filters:
        database_logger.addFilter(_drop_reraised_database_error)
    storage_logger = logging.getLogger("optuna.storages._rdb.storage")
    if _keep_first_line not in storage_logger.filters:
        storage_logger.addFilter(_keep_first_line)
    logging.getLogger("alembic").setLevel(logging.WARNING)


@functools.cache
def code_version() -> str:
    """Return the git commit of the source tree, else the installed package version."""
    source = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        if commit:
            return commit
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("polysearch")
    except PackageNotFoundError:
        return "unknown"


def artifact_root(uri: str) -> str | None:
    """Return the artifact folder URI for a SQLite tracking URI (``<db folder>/artifacts``).

    Other tracking URIs (an MLflow server) keep MLflow's own artifact location (None).
    """
    path = sqlite_path(uri)
    if path is None:
        return None
    return (path.resolve().parent / "artifacts").as_uri()


def open_client(uri: str = DEFAULT_MLFLOW_URI, *, must_exist: bool = False) -> Any:
    """Return an ``MlflowClient`` on ``uri`` after checking that the store can be reached.

    The default store's folder (``mlruns/``) is created when missing; for any other SQLite
    URI the folder must exist.

    Raises:
        ValueError: the URI cannot be used; the message holds it (password masked) and a hint.
    """
    import sqlalchemy
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if uri == DEFAULT_MLFLOW_URI and not must_exist:
        path = sqlite_path(uri)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    check_sqlite_url(uri, must_exist=must_exist, what="MLflow store", hint=MLFLOW_HINT)
    try:
        # The first client on an empty database creates MLflow's tables. A server is asked
        # once, without MLflow's retries, so that a wrong address fails in seconds.
        with schema_lock(uri), _single_http_attempt():
            client = MlflowClient(tracking_uri=uri)
            retry_locked(client.search_experiments)(max_results=1)
    except (MlflowException, sqlalchemy.exc.SQLAlchemyError) as error:
        text = str(error).strip()
        first = mask_text(text.splitlines()[0]) if text else repr(error)
        # A refused or unresolvable server comes as several hundred characters of urllib3
        # text, and the operating system's reason at its end is the part that matters.
        reason = re.search(r"\[Errno -?\d+\] [^'\")]+", first)
        if reason is not None and uri.startswith(("http://", "https://")):
            first = f"no connection to the server ({reason.group(0).strip()})"
        hint = store_hint(uri, error, "--mlflow-uri", MLFLOW_HINT)
        raise ValueError(f"cannot open MLflow store {mask_url(uri)!r}: {first}; {hint}") from None
    return client


# Seconds the first request to an MLflow server may take before the server counts as
# unreachable; MLflow's own default (MLFLOW_HTTP_REQUEST_TIMEOUT) is 120 s with 7 retries.
PROBE_TIMEOUT = 10


@contextlib.contextmanager
def _single_http_attempt() -> Iterator[None]:
    """Let MLflow's HTTP requests inside the block make one attempt of ``PROBE_TIMEOUT`` s.

    MLflow reads both variables at every request; the values before the block come back
    after it.
    """
    names = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(PROBE_TIMEOUT),
    }
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def experiment_id(client: Any, study_name: str, uri: str, *, create: bool = True) -> str | None:
    """Return the id of the study's experiment (named after the study), creating it if asked."""
    experiment = retry_locked(client.get_experiment_by_name)(study_name)
    if experiment is not None:
        return experiment.experiment_id
    if not create:
        return None
    root = artifact_root(uri)
    location = None if root is None else f"{root}/{study_name}"
    try:
        return retry_locked(client.create_experiment)(study_name, artifact_location=location)
    except Exception:
        # Another process may have created it in between.
        experiment = retry_locked(client.get_experiment_by_name)(study_name)
        if experiment is None:
            raise
        return experiment.experiment_id


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _param_text(value: Any) -> str:
    # Parameters and tags may hold storage URLs or error messages; never their passwords.
    text = mask_text(str(value))
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


def mask_value(value: Any) -> Any:
    """Return a string with its credentials masked; other values unchanged."""
    return mask_text(value) if isinstance(value, str) else value


def log_batch(
    client: Any,
    run_id: str,
    *,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    tags: Mapping[str, Any] | None = None,
    step: int = 0,
) -> None:
    """Log parameters, finite metrics and tags in batches of MLflow's maximum size."""
    from mlflow.entities import Metric, Param, RunTag

    timestamp = int(time.time() * 1000)
    param_list = [Param(key, _param_text(value)) for key, value in (params or {}).items()]
    metric_list = [
        Metric(key, float(value), timestamp, step)
        for key, value in (metrics or {}).items()
        if value is not None and math.isfinite(float(value))
    ]
    tag_list = [RunTag(key, _param_text(value)) for key, value in (tags or {}).items()]
    # MLflow accepts at most 100 parameters and 1000 metrics per batch.
    for start in range(0, max(len(param_list), 1), 100):
        retry_locked(client.log_batch)(run_id, params=param_list[start : start + 100])
    for start in range(0, len(metric_list), 1000):
        retry_locked(client.log_batch)(run_id, metrics=metric_list[start : start + 1000])
    if tag_list:
        retry_locked(client.log_batch)(run_id, tags=tag_list)


def start_launch_run(
    client: Any, experiment: str, *, study_name: str, spec: Mapping[str, Any], workers: int
) -> str:
    """Create the parent run of one launch and log the specification as its parameters."""
    tags = {
        "optuna_study": study_name,
        "code_version": code_version(),
        "workers": workers,
        **_process_tags(),
    }
    run = retry_locked(client.create_run)(
        experiment, tags={key: str(value) for key, value in tags.items()}, run_name="launch"
    )
    log_batch(client, run.info.run_id, params=flatten(spec))
    masked = {
        section: {key: mask_value(value) for key, value in values.items()}
        if isinstance(values, Mapping)
        else mask_value(values)
        for section, values in spec.items()
    }
    retry_locked(client.log_dict)(run.info.run_id, masked, "specification.json")
    return run.info.run_id


def start_training_run(
    client: Any, uri: str, *, network: str, dataset: str, params: Mapping[str, Any]
) -> str:
    """Create a run in the experiment ``TRAINING_EXPERIMENT`` for training a checkpoint.

    Training runs of this host whose process is gone (killed with SIGKILL) are marked
    FAILED first.
    """
    experiment = experiment_id(client, TRAINING_EXPERIMENT, uri)
    _fail_runs_of_ended_processes(client, experiment, "", "training")
    tags = {
        "network": network,
        "dataset": dataset,
        "code_version": code_version(),
        **_process_tags(),
    }
    run = retry_locked(client.create_run)(experiment, tags=tags, run_name=f"{network}-{dataset}")
    log_batch(client, run.info.run_id, params={"network": network, "dataset": dataset, **params})
    return run.info.run_id


def _process_tags() -> dict[str, str]:
    """Return the tags that let a later process on this host check whether a run's process runs."""
    return {"host": socket.gethostname(), "host_pid": str(os.getpid())}


def fail_stale_launch_runs(client: Any, experiment: str, study_name: str) -> list[str]:
    """Mark FAILED the RUNNING launch runs of a study whose process on this host is gone.

    A launch killed with SIGKILL cannot end its run. Launches on other hosts are left alone,
    because whether their process still runs cannot be checked from here.

    Returns:
        The ids of the runs marked FAILED.
    """
    return _fail_runs_of_ended_processes(
        client, experiment, f"tags.optuna_study = '{study_name}' and ", "launch"
    )


def _fail_runs_of_ended_processes(
    client: Any, experiment: str, condition: str, what: str
) -> list[str]:
    """Mark FAILED the RUNNING runs (not trial runs) whose process on this host is gone.

    ``condition`` is an MLflow filter clause ending in `` and ``, or empty.
    """
    filter_string = (
        f"{condition}tags.host = '{socket.gethostname()}' and attributes.status = 'RUNNING'"
    )
    runs = retry_locked(client.search_runs)([experiment], filter_string)
    failed = []
    for run in runs:
        if "optuna_trial_number" in run.data.tags:
            continue
        try:
            pid = int(run.data.tags.get("host_pid", ""))
        except ValueError:
            continue
        if pid == os.getpid() or _process_exists(pid):
            continue
        end_run(client, run.info.run_id, "FAILED", reason=f"{what} process {pid} ended")
        logger.info(
            "%s run %s of process %d failed: the process ended", what, run.info.run_id, pid
        )
        failed.append(run.info.run_id)
    return failed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # the process exists under another user
    return True


def start_trial_run(
    client: Any,
    experiment: str,
    *,
    parent_run_id: str | None,
    study_name: str,
    trial_number: int,
    tags: Mapping[str, Any],
) -> str:
    """Create the nested run of one trial and return its id."""
    all_tags = {
        "optuna_study": study_name,
        "optuna_trial_number": trial_number,
        "code_version": code_version(),
        **tags,
    }
    if parent_run_id is not None:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = retry_locked(client.create_run)(
        experiment,
        tags={key: str(value) for key, value in all_tags.items()},
        run_name=f"trial-{trial_number}",
    )
    return run.info.run_id


def end_run(client: Any, run_id: str, status: str, *, reason: str | None = None) -> None:
    """End a run with ``status`` (FINISHED, FAILED or KILLED), tagging the failure reason."""
    if reason is not None:
        retry_locked(client.set_tag)(run_id, "failure_reason", _param_text(reason))
    retry_locked(client.set_terminated)(run_id, status=status)


def fail_stale_run(client: Any, run_id: str, reason: str) -> None:
    """Mark the run of a trial that was failed for lack of heartbeats FAILED, with the reason.

    A run that already ended is changed as well, because its process can die after ending
    the run and before Optuna stores the trial's state. The trial is FAIL either way.
    """
    from mlflow.exceptions import MlflowException

    try:
        retry_locked(client.set_tag)(run_id, "optuna_state", "FAIL")
        end_run(client, run_id, "FAILED", reason=reason)
    except MlflowException as error:
        logger.warning("cannot mark MLflow run %s FAILED: %s", run_id, first_line(error))


def log_json(client: Any, run_id: str, values: Mapping[str, Any], artifact: str) -> None:
    """Log a mapping as one JSON artifact of the run."""
    retry_locked(client.log_dict)(run_id, dict(values), artifact)


def log_file(client: Any, run_id: str, path: str | Path, folder: str | None = None) -> None:
    """Log a local file as an artifact of the run."""
    retry_locked(client.log_artifact)(run_id, str(path), folder)


def find_trial_runs(client: Any, experiment: str, study_name: str) -> list[Any]:
    """Return every trial run of a study (runs tagged with a trial number), newest first."""
    filter_string = f"tags.optuna_study = '{study_name}'"
    runs: list[Any] = []
    token = None
    while True:
        page = retry_locked(client.search_runs)(
            [experiment], filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(run for run in page if "optuna_trial_number" in run.data.tags)
        token = page.token
        if not token:
            return runs


def download_artifact(client: Any, run_id: str, artifact: str, destination: str | Path) -> Path:
    """Download one artifact of a run into ``destination`` and return its local path.

    Raises:
        ValueError: the run has no such artifact.
    """
    from mlflow.exceptions import MlflowException

    try:
        local = retry_locked(client.download_artifacts)(run_id, artifact, str(destination))
    except (MlflowException, OSError) as error:
        raise ValueError(
            f"MLflow run {run_id} has no artifact {artifact!r} ({error}): the trial may have "
            "failed before logging it"
        ) from None
    return Path(local)


class TrialTracker:
    """Logs the trials of one worker as nested MLflow runs of the launch's parent run.

    Args:
        client: the ``MlflowClient``.
        experiment: the study's experiment id.
        parent_run_id: the launch's run; None logs trial runs without a parent.
        study_name: the Optuna study name (tag ``optuna_study``).
        tags: tags set on every trial run (strategy, network, dataset).
        figures: ``all`` (every trial), ``best`` (a trial that is the best so far when it
            finishes) or ``none``.
        plot: called as ``plot(result, folder)``; writes PNG files into ``folder`` and
            returns their paths. Only needed when ``figures`` is not ``none``.
        configuration_metadata: stored in every trial's configuration file (checkpoint,
            dataset, study), so that the file alone can rebuild the network.
    """

    def __init__(
        self,
        client: Any,
        experiment: str,
        *,
        parent_run_id: str | None,
        study_name: str,
        tags: Mapping[str, Any],
        figures: str = "best",
        plot: Any = None,
        configuration_metadata: Mapping[str, Any] | None = None,
    ):
        self.client = client
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.study_name = study_name
        self.tags = dict(tags)
        self.figures = figures
        self.plot = plot
        self.configuration_metadata = dict(configuration_metadata or {})

    def start(self, trial: Any) -> str:
        """Create the trial's run, log its parameters and store the run id in the trial."""
        run_id = start_trial_run(
            self.client,
            self.experiment,
            parent_run_id=self.parent_run_id,
            study_name=self.study_name,
            trial_number=trial.number,
            tags=self.tags,
        )
        trial.set_user_attr("mlflow_run_id", run_id)
        log_batch(self.client, run_id, params=trial.params)
        return run_id

    def log_result(
        self, trial: Any, run_id: str, result: Any, steps: list[float], elapsed: float
    ) -> None:
        """Log the metrics, the JSON report, the configuration and any figures of a trial."""
        import tempfile

        report = result.report
        details = report.to_dict()
        metrics: dict[str, float] = {
            "validation_accuracy": float(report.accuracy),
            "trial_seconds": elapsed,
        }
        cost = details.get("he_cost")
        if isinstance(cost, Mapping):
            for key, value in flatten(cost, "he_cost.").items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    metrics[key] = float(value)
        elif isinstance(cost, int | float):
            metrics["he_cost"] = float(cost)
        metrics.update(fit_error_metrics(details))
        log_batch(self.client, run_id, metrics=metrics)
        for index, accuracy in enumerate(steps):
            log_batch(self.client, run_id, metrics={"step_accuracy": accuracy}, step=index)
        log_json(self.client, run_id, details, REPORT_ARTIFACT)
        configuration = result.configuration
        configuration.metadata.update(self.configuration_metadata)
        configuration.metadata["optuna_trial_number"] = trial.number
        with tempfile.TemporaryDirectory(prefix="polysearch-") as folder:
            # The configuration, and its retrained weights beside it, at the artifact root.
            configuration_folder = Path(folder) / "configuration"
            configuration_folder.mkdir()
            configuration.save(configuration_folder / CONFIGURATION_ARTIFACT)
            retry_locked(self.client.log_artifacts)(run_id, str(configuration_folder))
            if self.plot is not None and self._wants_figures(trial, float(report.accuracy)):
                figure_folder = Path(folder) / "figures"
                figure_folder.mkdir()
                for figure in self.plot(result, figure_folder):
                    log_file(self.client, run_id, figure, "figures")

    def _wants_figures(self, trial: Any, accuracy: float) -> bool:
        if self.figures == "all":
            return True
        if self.figures == "none":
            return False
        from optuna.trial import TrialState

        previous = [
            other.user_attrs.get("validation_accuracy")
            for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        ]
        best = max((value for value in previous if value is not None), default=-math.inf)
        return accuracy > best

    def finish(self, trial: Any, run_id: str, outcome: Any, duplicate: Any | None) -> None:
        """End a trial's run FINISHED; a repeated configuration gets its metrics again."""
        if duplicate is not None:
            metrics = {"validation_accuracy": outcome.accuracy}
            if math.isfinite(outcome.he_cost):
                metrics["he_cost"] = outcome.he_cost
            log_batch(
                self.client,
                run_id,
                metrics=metrics,
                tags={
                    "duplicate_of_trial": duplicate.number,
                    "duplicate_of_run": duplicate.user_attrs.get("mlflow_run_id", ""),
                },
            )
        retry_locked(self.client.set_tag)(run_id, "optuna_state", "COMPLETE")
        end_run(self.client, run_id, "FINISHED")

    def fail(self, trial: Any, run_id: str | None, error: BaseException) -> None:
        """End the run of a trial that raised: PRUNED trials FINISHED, interrupts KILLED,
        everything else FAILED with the reason as a tag and a trial user attribute.

        ``run_id`` None means the error came while the run was being created: the trial's
        RUNNING runs, if any exist already, are ended instead.
        """
        import optuna

        if run_id is None:
            run_ids = running_trial_runs(self.client, self.study_name, trial.number)
        else:
            run_ids = [run_id]
        if isinstance(error, optuna.TrialPruned):
            for run_id in run_ids:
                retry_locked(self.client.set_tag)(run_id, "optuna_state", "PRUNED")
                end_run(self.client, run_id, "FINISHED")
            return
        reason = mask_text(f"{type(error).__name__}: {error}".splitlines()[0])
        try:
            trial.set_user_attr("fail_reason", reason)
        except Exception as attr_error:  # noqa: BLE001 - the run still has to end
            logger.warning(
                "cannot store the failure reason of trial %d: %s", trial.number, attr_error
            )
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        for run_id in run_ids:
            retry_locked(self.client.set_tag)(run_id, "optuna_state", "FAIL")
            end_run(self.client, run_id, status, reason=reason)


def fit_error_metrics(details: Mapping[str, Any]) -> dict[str, float]:
    """Return ``fit_error.<site>``: the largest maximum error of the site's fits."""
    metrics: dict[str, float] = {}
    sites = details.get("sites", [])
    items = sites.items() if isinstance(sites, Mapping) else ((None, site) for site in sites)
    for name, site in items:
        if not isinstance(site, Mapping):
            continue
        name = site.get("name", name)
        errors = _max_errors(site)
        if name is not None and errors:
            metrics[f"fit_error.{name}"] = max(errors)
    return metrics


def _max_errors(values: Any) -> list[float]:
    """Collect every ``max_error`` number inside a nested report entry."""
    found: list[float] = []
    if isinstance(values, Mapping):
        for key, value in values.items():
            if key == "max_error" and isinstance(value, int | float):
                found.append(float(value))
            else:
                found.extend(_max_errors(value))
    elif isinstance(values, list):
        for value in values:
            found.extend(_max_errors(value))
    return [value for value in found if math.isfinite(value)]


class StaleTrialHandler:
    """Heartbeat callback: re-enqueues a stale trial's parameters and fails its MLflow run.

    Optuna calls it after failing a RUNNING trial whose heartbeat stopped (its process died).
    """

    def __init__(self, mlflow_uri: str, max_retry: int = 2):
        self.mlflow_uri = mlflow_uri
        self.max_retry = max_retry

    def __call__(self, study: Any, trial: Any) -> None:
        import warnings

        import optuna

        logger.warning(
            "trial %d has no recent heartbeat: marked FAIL, its parameters are queued again",
            trial.number,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.max_retry)
        retry(study, trial)
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.mlflow_uri)
        run_id = trial.user_attrs.get("mlflow_run_id")
        run_ids = [run_id] if run_id else []
        if not run_ids:
            # The process died between creating the run and storing its id in the trial.
            run_ids = running_trial_runs(client, study.study_name, trial.number)
        for run_id in run_ids:
            fail_stale_run(client, run_id, "the trial's process stopped (no heartbeat)")


def running_trial_runs(client: Any, study_name: str, trial_number: int) -> list[str]:
    """Return the ids of the RUNNING MLflow runs of one trial of a study."""
    experiment = retry_locked(client.get_experiment_by_name)(study_name)
    if experiment is None:
        return []
    filter_string = (
        f"tags.optuna_study = '{study_name}' and tags.optuna_trial_number = '{trial_number}' "
        "and attributes.status = 'RUNNING'"
    )
    runs = retry_locked(client.search_runs)([experiment.experiment_id], filter_string)
    return [run.info.run_id for run in runs]
