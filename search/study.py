"""The Optuna side of a search: the per-site space, the objective, samplers, pruners and the
worker loop that keeps a study-wide budget.

One process runs one :class:`Worker`. It loads the network, the dataset and the calibration
inputs once, keeps one calibration cache for all its trials, and runs trials until the
study holds ``n_trials`` finished trials. Trials in the states COMPLETE and PRUNED count
towards that budget; FAIL trials do not, because a failed trial is retried or replaced. So a
network on which every configuration fails cannot loop for ever, a worker also stops after
as many failed trials of its own as the budget.

Before asking for a trial, a worker takes the study's budget lock (see :class:`BudgetLock`)
and counts finished plus running trials; if those already fill the budget it waits for the
running ones instead of starting another. Several workers on one study therefore end at
exactly ``n_trials`` finished trials. On PostgreSQL the lock is held in the database and
covers workers on every machine; on SQLite it is a file lock of the machine.

Trials whose process died are failed through Optuna's heartbeat: a running trial records a
heartbeat every ``heartbeat_interval`` seconds, and any worker fails a trial whose last
heartbeat is older than ``grace_period`` seconds, re-enqueues its parameters and marks its
MLflow run FAILED.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search import interrupts
from search.spec import StudySpec

logger = logging.getLogger(__name__)

# States that count towards the budget.
BUDGET_STATES_NAMES = ("COMPLETE", "PRUNED")
# How many times the parameters of a trial whose process died are enqueued again.
MAX_STALE_RETRIES = 2


# ---------------------------------------------------------------------------------------------
# Samplers and pruners


def build_sampler(spec: StudySpec, seed: int) -> Any:
    """Return the Optuna sampler the specification names, seeded with ``seed``."""
    import optuna

    name = spec.search.sampler
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, constant_liar=spec.search.workers > 1
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")


def build_pruner(spec: StudySpec) -> Any:
    """Return the Optuna pruner the specification names (NopPruner for ``none``)."""
    import optuna

    name = spec.search.pruner
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


# ---------------------------------------------------------------------------------------------
# Space


def site_parameter(site: str, name: str, channel: int | None = None) -> str:
    """Return the Optuna parameter name of a site (``relu1.degree``, ``relu1.c3.percentile``)."""
    return f"{site}.{name}" if channel is None else f"{site}.c{channel}.{name}"


def suggest_settings(
    trial: Any, spec: StudySpec, sites: Sequence[str], channels: dict[str, int]
) -> dict[str, Any]:
    """Suggest a degree and a percentile for every site (and channel) of the network.

    The space is the same in every trial: every site always gets both parameters, with the
    same bounds, so that a study can be resumed with the same specification.
    """
    from approx.strategies import SiteSetting

    low, high = spec.space.degree
    p_low, p_high = spec.space.percentile
    step = spec.space.percentile_step or None
    settings: dict[str, Any] = {}
    for site in sites:
        if spec.approximation.per_channel_search:
            degrees = []
            percentiles = []
            for channel in range(channels[site]):
                degree_name = site_parameter(site, "degree", channel)
                degrees.append(trial.suggest_int(degree_name, low, high))
                percentiles.append(
                    trial.suggest_float(
                        site_parameter(site, "percentile", channel), p_low, p_high, step=step
                    )
                )
            settings[site] = SiteSetting(degree=degrees, percentile=percentiles)
        else:
            degree = trial.suggest_int(site_parameter(site, "degree"), low, high)
            percentile = trial.suggest_float(
                site_parameter(site, "percentile"), p_low, p_high, step=step
            )
            settings[site] = SiteSetting(degree=degree, percentile=percentile)
    return settings


# ---------------------------------------------------------------------------------------------
# Budget


def _budget_states() -> tuple[Any, ...]:
    from optuna.trial import TrialState

    return tuple(TrialState[name] for name in BUDGET_STATES_NAMES)


def count_trials(study: Any) -> tuple[int, int]:
    """Return (finished trials that count towards the budget, running trials)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    budget_states = _budget_states()
    finished = sum(1 for trial in trials if trial.state in budget_states)
    running = sum(1 for trial in trials if trial.state == TrialState.RUNNING)
    return finished, running


class BudgetLock:
    """An exclusive lock, shared by every worker of one study, around starting a trial.

    On PostgreSQL it is a session-level advisory lock of the storage database, so workers on
    different machines share it, and the server releases it when a worker's connection ends,
    also when the worker dies. On other storages it is a file lock, shared by the processes
    of one machine only; the lock file lives in the temporary folder, named after a hash of
    storage URL and study, so it never touches the storage's own folder.

    Args:
        storage_url: the Optuna storage URL.
        study_name: the study.
        engine: the storage's SQLAlchemy engine; the advisory lock is used when it connects
            to PostgreSQL.
    """

    def __init__(self, storage_url: str, study_name: str, engine: Any = None):
        digest = hashlib.sha256(f"{storage_url}\n{study_name}".encode()).hexdigest()[:16]
        self.path = Path(tempfile.gettempdir()) / f"polysearch-{digest}.lock"
        self.engine = (
            engine if engine is not None and engine.dialect.name == "postgresql" else None
        )
        # Advisory lock keys are signed 64-bit integers; the study name alone sets the key,
        # so that every URL spelling of one database shares the lock.
        name_digest = hashlib.sha256(f"polysearch budget\n{study_name}".encode()).digest()
        self.key = int.from_bytes(name_digest[:8], "big", signed=True)
        self._stream: Any = None
        self._connection: Any = None

    def acquire(self) -> None:
        if self.engine is not None:
            if self._connection is None:
                from sqlalchemy import text

                connection = self.engine.connect()
                try:
                    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": self.key})
                    connection.commit()
                except BaseException:
                    connection.invalidate()
                    connection.close()
                    raise
                self._connection = connection
            return
        if self._stream is None:
            self._stream = self.path.open("a")
            fcntl.flock(self._stream, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._connection is not None:
            from sqlalchemy import text
            from sqlalchemy.exc import SQLAlchemyError

            from search.storage import first_line

            connection, self._connection = self._connection, None
            try:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
                connection.commit()
                connection.close()
            except SQLAlchemyError as error:
                # The server dropped the session, and with it the lock.
                logger.warning("cannot release the budget lock: %s", first_line(error))
                connection.invalidate()
                connection.close()
        if self._stream is not None:
            fcntl.flock(self._stream, fcntl.LOCK_UN)
            self._stream.close()
            self._stream = None


# ---------------------------------------------------------------------------------------------
# Per-process context


@dataclass
class SearchContext:
    """What every trial of a process shares: network, data, sites and calibration cache."""

    spec: StudySpec
    model: Any
    metadata: dict[str, Any]
    splits: Any
    sites: list[str]
    channels: dict[str, int]
    calibration_inputs: Any
    cache: Any
    reference_accuracy: float | None = None
    device: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def ensure_checkpoint(spec: StudySpec, *, client: Any = None, progress: bool = True) -> Path:
    """Train the network and save its checkpoint if the checkpoint file does not exist.

    Training uses the ``[train]`` options of the specification on the dataset's train
    split; the checkpoint records the validation and test accuracy. With an MLflow
    ``client``, the training is logged as a run of the experiment ``training``, as
    ``polysearch train`` logs it: options, per-epoch metrics, accuracies and the checkpoint.
    """
    import torch

    from models.checkpoint import save_checkpoint
    from models.datasets import load_dataset
    from models.networks import build_network
    from models.training import evaluate, train
    from search import tracking

    path = spec.network.checkpoint
    if path.exists():
        return path
    # The data are loaded before the training is announced, so missing data is one line.
    splits = load_dataset(
        spec.data.dataset,
        spec.data.dir,
        download=spec.data.download,
        seed=spec.seed,
        limit=spec.data.limit,
    )
    logger.info(
        "checkpoint %s not found: training %s on %s", path, spec.network.name, spec.data.dataset
    )
    # Seed the initial weights, as ``polysearch train`` does. The state of PyTorch's global
    # generator at this point is not fixed.
    torch.manual_seed(spec.seed)
    model = build_network(
        spec.network.name, input_shape=splits.input_shape, num_classes=splits.num_classes
    )
    options = {
        "epochs": spec.train.epochs,
        "batch_size": spec.train.batch_size,
        "lr": spec.train.lr,
        "optimizer": spec.train.optimizer,
        "seed": spec.seed,
        "limit": spec.data.limit,
    }
    run_id = None
    if client is not None:
        run_id = tracking.start_training_run(
            client,
            spec.tracking.mlflow_uri,
            network=spec.network.name,
            dataset=spec.data.dataset,
            params={"study": spec.name, **options},
        )

    def log_epoch(metrics: dict[str, Any]) -> None:
        values = {key: value for key, value in metrics.items() if key != "epoch"}
        tracking.log_batch(client, run_id, metrics=values, step=metrics["epoch"])

    try:
        train(
            model,
            splits,
            epochs=spec.train.epochs,
            batch_size=spec.train.batch_size,
            lr=spec.train.lr,
            optimizer=spec.train.optimizer,
            seed=spec.seed,
            progress=progress,
            on_epoch=None if run_id is None else log_epoch,
        )
        accuracies = {
            "validation": evaluate(model, splits.validation).accuracy,
            "test": evaluate(model, splits.test).accuracy,
        }
        save_checkpoint(
            path,
            model,
            network=spec.network.name,
            dataset=spec.data.dataset,
            input_shape=splits.input_shape,
            num_classes=splits.num_classes,
            mean=splits.mean,
            std=splits.std,
            options=options,
            accuracies=accuracies,
            overwrite=False,
        )
    except BaseException as error:
        if run_id is not None:
            status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
            tracking.end_run(client, run_id, status, reason=f"{type(error).__name__}: {error}")
        raise
    if run_id is not None:
        tracking.log_batch(client, run_id, metrics={"test_accuracy": accuracies["test"]})
        tracking.log_file(client, run_id, path, "checkpoint")
        tracking.end_run(client, run_id, "FINISHED")
    logger.info(
        "saved %s (validation %.2f %%, test %.2f %%)",
        path,
        accuracies["validation"],
        accuracies["test"],
    )
    return path


def load_context(spec: StudySpec) -> SearchContext:
    """Load the checkpoint and data, pick the calibration inputs and calibrate the original
    network once (the cache keeps the result for every trial of this process)."""
    import torch

    from approx.cache import CalibrationCache
    from models.checkpoint import load_checkpoint
    from models.datasets import load_dataset

    # The checkpoint must contain the network the specification names, or the study would
    # record trials under the wrong network.
    model, metadata = load_checkpoint(spec.network.checkpoint, network=spec.network.name)
    if metadata.get("dataset") not in (None, spec.data.dataset):
        raise ValueError(
            f"checkpoint {str(spec.network.checkpoint)!r} was trained on "
            f"{metadata['dataset']!r}, but data.dataset is {spec.data.dataset!r}: fix one of them"
        )
    splits = load_dataset(
        spec.data.dataset,
        spec.data.dir,
        download=spec.data.download,
        seed=spec.seed,
        limit=spec.data.limit,
    )
    train_inputs = splits.train.tensors[0]
    size = min(spec.data.calibration_size, len(train_inputs))
    generator = torch.Generator().manual_seed(spec.seed)
    indices = torch.randperm(len(train_inputs), generator=generator)[:size]
    calibration_inputs = train_inputs[indices]
    cache = CalibrationCache(seed=spec.seed)
    cache.bind(model, calibration_inputs)
    _, sites = cache.traced()
    if not sites:
        raise ValueError(f"network {spec.network.name!r} has no nonlinearity to approximate")
    statistics = cache.original_statistics(None)
    channels = {site.name: int(statistics[site.name].channels) for site in sites}
    return SearchContext(
        spec=spec,
        model=model,
        metadata=metadata,
        splits=splits,
        sites=[site.name for site in sites],
        channels=channels,
        calibration_inputs=calibration_inputs,
        cache=cache,
    )


# ---------------------------------------------------------------------------------------------
# Objective


class TrialFailed(RuntimeError):
    """A trial produced no usable result (non-finite accuracy, out of memory, ...)."""


@dataclass
class TrialOutcome:
    """The values of one evaluated configuration and what was logged for it."""

    values: list[float]
    accuracy: float
    he_cost: float
    steps: list[float]


def objective_values(spec: StudySpec, accuracy: float, he_cost: float) -> list[float]:
    """Return the Optuna values in the order of ``spec.search.objectives``."""
    return [accuracy if name == "accuracy" else he_cost for name in spec.search.objectives]


def find_duplicate(study: Any, trial: Any) -> Any | None:
    """Return a COMPLETE trial of the study with exactly the parameters of ``trial``."""
    from optuna.trial import TrialState

    params = trial.params
    for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if other.number != trial.number and other.params == params:
            return other
    return None


class Objective:
    """The objective of one worker: approximate, measure, log to MLflow, report to the pruner.

    Args:
        context: the process's shared network, data and calibration cache.
        tracker: logs each trial to MLflow (see :class:`search.trial_logging.TrialTracker`).
        on_start: called once the trial exists in the storage (the worker releases its
            budget lock there).
    """

    def __init__(
        self,
        context: SearchContext,
        tracker: Any,
        on_start: Callable[[], None] | None = None,
    ):
        self.context = context
        self.tracker = tracker
        self.on_start = on_start

    def __call__(self, trial: Any) -> float | list[float]:
        run_id = None
        started = time.perf_counter()
        # Everything runs inside the try, so that an interrupt at any point, also while the
        # run is being created, records the trial and ends its run.
        try:
            # A signal that arrived while Optuna stored the trial stops it before it starts.
            interrupts.raise_pending()
            if self.on_start is not None:
                self.on_start()
            spec = self.context.spec
            settings = suggest_settings(trial, spec, self.context.sites, self.context.channels)
            duplicate = find_duplicate(trial.study, trial)
            run_id = self.tracker.start(trial)
            if duplicate is not None:
                outcome = self._reuse(trial, duplicate)
            else:
                outcome = self._evaluate(trial, settings, run_id, started)
            self.tracker.finish(trial, run_id, outcome, duplicate)
        except BaseException as error:
            self.tracker.fail(trial, run_id, error)
            raise
        if len(outcome.values) == 1:
            return outcome.values[0]
        return outcome.values

    def _reuse(self, trial: Any, duplicate: Any) -> TrialOutcome:
        logger.info(
            "trial %d repeats the parameters of trial %d: reusing its values",
            trial.number,
            duplicate.number,
        )
        trial.set_user_attr("duplicate_of", duplicate.number)
        attrs = duplicate.user_attrs
        accuracy = float(attrs.get("validation_accuracy", duplicate.values[0]))
        he_cost = float(attrs.get("he_cost", math.nan))
        return TrialOutcome(
            values=list(duplicate.values),
            accuracy=accuracy,
            he_cost=he_cost,
            steps=list(attrs.get("step_accuracies", [])),
        )

    def _evaluate(
        self, trial: Any, settings: dict[str, Any], run_id: str | None, started: float
    ) -> TrialOutcome:
        import optuna

        from approx.strategies import RetrainOptions, approximate

        spec = self.context.spec
        single_objective = len(spec.search.objectives) == 1
        steps: list[float] = []

        final_step = expected_steps(spec, len(settings)) - 1

        def on_step(_step: int, accuracy: float) -> None:
            # Optuna's steps count every callback: each substitution and retraining epoch.
            steps.append(float(accuracy))
            if not (single_objective and math.isfinite(accuracy)):
                return
            # Reporting writes to the storage, so a Ctrl-C waits until the write ends.
            with interrupts.deferred():
                trial.report(float(accuracy), len(steps) - 1)
                # After the final step the result is complete: keep it rather than prune it.
                if len(steps) - 1 < final_step and trial.should_prune():
                    trial.set_user_attr("step_accuracies", steps)
                    raise optuna.TrialPruned(
                        f"accuracy {accuracy:.2f} % after step {len(steps) - 1}"
                    )

        retrain = None
        train = None
        if spec.approximation.strategy == "stepwise-retrain":
            retrain = RetrainOptions(
                epochs=spec.retrain.epochs,
                lr=spec.retrain.lr,
                optimizer=spec.retrain.optimizer,
                scope=spec.retrain.scope,
                batch_size=spec.retrain.batch_size,
                seed=spec.seed,
            )
            train = self.context.splits.train
        try:
            # The computation stops at once on Ctrl-C: it writes to no store.
            with interrupts.immediate():
                result = approximate(
                    self.context.model,
                    settings,
                    strategy=spec.approximation.strategy,
                    granularity=spec.approximation.granularity,
                    calibration_inputs=self.context.calibration_inputs,
                    validation=self.context.splits.validation,
                    train=train,
                    retrain=retrain,
                    cache=self.context.cache,
                    on_step=on_step,
                    device=self.context.device,
                )
        except MemoryError as error:
            raise TrialFailed(f"out of memory: {error}") from error
        except RuntimeError as error:
            if "out of memory" in str(error).lower():
                raise TrialFailed(f"out of memory: {str(error).splitlines()[0]}") from error
            raise
        report = result.report
        if report.failure is not None:
            raise TrialFailed(report.failure)
        accuracy = float(report.accuracy)
        he_cost = float(network_he_cost(report))
        if not math.isfinite(accuracy):
            raise TrialFailed(f"validation accuracy is {accuracy}")
        if len(spec.search.objectives) == 2 and not math.isfinite(he_cost):
            raise TrialFailed(f"HE cost is {he_cost}")
        elapsed = time.perf_counter() - started
        trial.set_user_attr("validation_accuracy", accuracy)
        trial.set_user_attr("he_cost", he_cost)
        trial.set_user_attr("step_accuracies", steps)
        self.tracker.log_result(trial, run_id, result, steps, elapsed)
        return TrialOutcome(
            values=objective_values(spec, accuracy, he_cost),
            accuracy=accuracy,
            he_cost=he_cost,
            steps=steps,
        )


def expected_steps(spec: StudySpec, n_sites: int) -> int:
    """Return how many times ``approximate`` calls ``on_step`` for ``n_sites`` sites.

    All at once: one step. Step-wise: one per site. With retraining, also one per retraining
    epoch after every site but the last.
    """
    strategy = spec.approximation.strategy
    if strategy == "all-at-once":
        return 1
    if strategy == "stepwise":
        return n_sites
    return n_sites + spec.retrain.epochs * (n_sites - 1)


def network_he_cost(report: Any) -> float:
    """Return the network's HE cost as one number: its non-scalar multiplications."""
    cost = report.he_cost
    if isinstance(cost, dict):
        return float(cost["nonscalar_multiplications"])
    return float(cost)


# ---------------------------------------------------------------------------------------------
# Study creation and the worker loop


def open_study_storage(spec: StudySpec, *, must_exist: bool = False) -> Any:
    """Open the specification's Optuna storage with heartbeats and the stale-trial handler."""
    from search.storage import open_storage
    from search.tracking import StaleTrialHandler

    return open_storage(
        spec.tracking.storage,
        must_exist=must_exist,
        heartbeat_interval=spec.search.heartbeat_interval,
        grace_period=spec.search.grace_period,
        stale_trial_callback=StaleTrialHandler(spec.tracking.mlflow_uri, MAX_STALE_RETRIES),
    )


def create_study(spec: StudySpec, storage: Any, *, seed: int | None = None) -> Any:
    """Create the study, or load it when it exists with the same objectives.

    Raises:
        ValueError: the stored study has other objectives than the specification.
    """
    import optuna

    from search.storage import retry_locked

    sampler = build_sampler(spec, spec.seed if seed is None else seed)
    pruner = build_pruner(spec)
    names = {summary.study_name: summary for summary in storage.get_all_studies()}
    if spec.name in names:
        stored = [direction.name.lower() for direction in names[spec.name].directions]
        if stored != spec.directions:
            raise ValueError(
                f"study {spec.name!r} is stored with directions {stored}, but "
                f"search.objectives {list(spec.search.objectives)} needs {spec.directions}: "
                "pass another --study name"
            )
    study = retry_locked(optuna.create_study)(
        storage=storage,
        study_name=spec.name,
        directions=spec.directions,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    if "objectives" not in study.user_attrs:
        retry_locked(study.set_user_attr)("objectives", list(spec.search.objectives))
        with warnings.catch_warnings():
            # set_metric_names is marked experimental since Optuna 3.2.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry_locked(study.set_metric_names)(list(spec.search.objectives))
    return study


def fail_stale_trials(study: Any) -> None:
    """Fail RUNNING trials whose process died, and run the storage's stale-trial callback.

    Optuna fails trials whose last heartbeat is older than the grace period. A process can
    die after storing its trial and before the first heartbeat, for example when killed or
    when the database crashes. That trial has no heartbeat, so Optuna never fails it, and it
    would hold a place in the budget for ever. It is failed here once this process has seen
    it RUNNING without a heartbeat for longer than the grace period. A live trial records
    its first heartbeat right after it is stored, long before that.
    """
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
        _fail_trials_without_heartbeat(study)


# When this process first saw a RUNNING trial without a heartbeat, by (storage URL, trial id).
_WITHOUT_HEARTBEAT_SINCE: dict[tuple[int, int], float] = {}


def _trials_without_heartbeat(storage: Any, study_id: int) -> list[int]:
    """Return the ids of the study's RUNNING trials that have no heartbeat row."""
    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    query = (
        sqlalchemy.select(models.TrialModel.trial_id)
        .outerjoin(
            models.TrialHeartbeatModel,
            models.TrialHeartbeatModel.trial_id == models.TrialModel.trial_id,
        )
        .where(models.TrialModel.study_id == study_id)
        .where(models.TrialModel.state == TrialState.RUNNING)
        .where(models.TrialHeartbeatModel.trial_heartbeat_id.is_(None))
    )
    with storage.engine.connect() as connection:
        return [row[0] for row in connection.execute(query)]


def _fail_trials_without_heartbeat(study: Any) -> None:
    import optuna
    from optuna.storages import RDBStorage
    from optuna.trial import TrialState

    storage = study._storage
    # Studies hold their RDBStorage inside Optuna's caching wrapper.
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, RDBStorage) or backend.heartbeat_interval is None:
        return
    grace_period = backend.grace_period or 2 * backend.heartbeat_interval
    now = time.monotonic()
    found = {
        (backend.url, trial_id) for trial_id in _trials_without_heartbeat(backend, study._study_id)
    }
    for key in [key for key in _WITHOUT_HEARTBEAT_SINCE if key[0] == backend.url]:
        if key not in found:
            del _WITHOUT_HEARTBEAT_SINCE[key]
    failed = []
    for key in sorted(found):
        since = _WITHOUT_HEARTBEAT_SINCE.setdefault(key, now)
        if now - since <= grace_period:
            continue
        del _WITHOUT_HEARTBEAT_SINCE[key]
        try:
            if storage.set_trial_state_values(key[1], state=TrialState.FAIL):
                failed.append(key[1])
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker failed it first
    callback = storage.get_heartbeat_stale_trial_callback()
    for trial_id in failed:
        trial = storage.get_trial(trial_id)
        logger.warning(
            "trial %d was RUNNING without a heartbeat for more than %g s: its process died "
            "before recording one",
            trial.number,
            grace_period,
        )
        if callback is not None:
            callback(study, trial)


@dataclass
class WorkerSummary:
    """What one worker did: trials it ran by final state."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0


def run_worker(
    spec: StudySpec,
    *,
    parent_run_id: str | None,
    worker_index: int = 0,
    on_trial: Callable[[Any, Any], None] | None = None,
    context: SearchContext | None = None,
) -> WorkerSummary:
    """Run trials of the study until its budget or the time limit is reached.

    Args:
        spec: the validated specification; ``spec.search.n_trials`` is the study's budget
            and ``spec.search.timeout`` (seconds, 0 = none) this worker's time limit.
        parent_run_id: the launch's MLflow run; trial runs nest under it.
        worker_index: distinguishes the sampler seeds of parallel workers.
        on_trial: called as ``(study, frozen_trial)`` after each trial of this worker.
        context: an already loaded context (tests, benchmarks); loaded here when None.
    """
    from optuna.trial import TrialState

    from search import tracking

    # Each finished trial gets its own line from the command; Optuna's INFO lines repeat it.
    tracking.configure_library_logging()
    storage = open_study_storage(spec)
    finished_before, _ = count_trials(create_study(spec, storage))
    # A different seed per worker and per launch, so that resumed and parallel samplers do
    # not repeat each other's random draws; equal histories still give equal seeds.
    seed = spec.seed + 1000 * worker_index + 7919 * finished_before
    study = create_study(spec, storage, seed=seed)
    if context is None:
        context = load_context(spec)

    client = tracking.open_client(spec.tracking.mlflow_uri)
    experiment = tracking.experiment_id(client, spec.name, spec.tracking.mlflow_uri)
    tracker = tracking.TrialTracker(
        client,
        experiment,
        parent_run_id=parent_run_id,
        study_name=spec.name,
        tags={
            "strategy": spec.approximation.strategy,
            "granularity": spec.approximation.granularity,
            "network": spec.network.name,
            "dataset": spec.data.dataset,
            "worker": worker_index,
        },
        figures=spec.tracking.figures,
        plot=plot_trial_figures,
        configuration_metadata={
            "checkpoint": str(spec.network.checkpoint.resolve()),
            "network": spec.network.name,
            "dataset": spec.data.dataset,
            "data_dir": None if spec.data.dir is None else str(spec.data.dir.resolve()),
            "data_limit": spec.data.limit,
            "seed": spec.seed,
            "study": spec.name,
        },
    )
    lock = BudgetLock(spec.tracking.storage, spec.name, storage.engine)
    objective = Objective(context, tracker, on_start=lock.release)
    summary = WorkerSummary()

    def record(study: Any, trial: Any) -> None:
        if trial.state == TrialState.COMPLETE:
            summary.complete += 1
        elif trial.state == TrialState.PRUNED:
            summary.pruned += 1
        elif trial.state == TrialState.FAIL:
            summary.failed += 1
        if on_trial is not None:
            on_trial(study, trial)

    started = time.monotonic()
    n_trials = spec.search.n_trials
    timeout = spec.search.timeout
    # Stores are written inside deferred blocks: a Ctrl-C while Optuna or MLflow writes is
    # raised where the block ends (see search.interrupts).
    while True:
        if timeout and time.monotonic() - started >= timeout:
            logger.info("worker %d: time limit of %g s reached", worker_index, timeout)
            break
        if summary.failed >= n_trials:
            logger.warning(
                "worker %d: %d trials failed, as many as the budget: stopping",
                worker_index,
                summary.failed,
            )
            break
        lock.acquire()
        try:
            with interrupts.deferred():
                fail_stale_trials(study)
                finished, running = count_trials(study)
            if finished >= n_trials:
                break
            if finished + running >= n_trials:
                # Running trials would fill the budget: wait until they finish or go stale.
                lock.release()
                time.sleep(min(spec.search.heartbeat_interval, 2.0))
                continue
            # The objective releases the lock as soon as its trial is stored as RUNNING.
            with interrupts.deferred():
                study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[record])
        finally:
            lock.release()
    return summary


def plot_trial_figures(result: Any, folder: Path) -> list[Path]:
    """Write the input distribution and fit figure of every site of a trial into ``folder``.

    Returns no figure when ``approx.plots`` is not installed with the package.
    """
    try:
        from approx.plots import plot_site
    except ImportError as error:
        logger.warning("no figures: approx.plots cannot be imported (%s)", error)
        return []
    paths = []
    for site in result.report.sites:
        path = Path(folder) / f"{site.name}.png"
        plot_site(site, result.statistics.get(site.name), path)
        paths.append(path)
    return paths
