"""``polysearch search``: run or resume the Optuna study a specification describes."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from typing import Any

from search.credentials import mask_url

HELP = "run (or continue) the search a study specification describes"

logger = logging.getLogger(__name__)

# Exit status of a worker process stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells use).
INTERRUPTED_EXIT_STATUS = 130
# Signals that stop a search: a terminal's Ctrl-C and a service manager's stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Seconds the parent waits for interrupted workers to store their trials before SIGKILL.
WORKER_STOP_SECONDS = 20.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="study specification (TOML), e.g. studies/cnn2-mnist.toml")
    parser.add_argument(
        "--n-trials",
        type=int,
        default=None,
        help="finished trials the study should hold, all workers together (search.n_trials)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local worker processes on the study, at most the available cores (search.workers)",
    )
    parser.add_argument("--storage", default=None, help="Optuna storage URL (tracking.storage)")
    parser.add_argument(
        "--mlflow-uri", default=None, help="MLflow tracking URI (tracking.mlflow_uri)"
    )
    parser.add_argument("--study", default=None, help="study name (name; default: file stem)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds after which no new trial starts, 0 for none (search.timeout)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any specification field, e.g. --set space.degree=[2,6] (repeatable)",
    )


def spec_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Return the specification overrides the command line sets (dotted key -> value).

    Raises:
        ValueError: a named option and ``--set`` give one key two different values.
    """
    from search.spec import parse_override

    overrides: dict[str, Any] = {}
    for text in args.overrides:
        key, value = parse_override(text)
        overrides[key] = value
    named = {
        "search.n_trials": ("--n-trials", args.n_trials),
        "search.workers": ("--workers", args.workers),
        "search.timeout": ("--timeout", args.timeout),
        "tracking.storage": ("--storage", args.storage),
        "tracking.mlflow_uri": ("--mlflow-uri", args.mlflow_uri),
        "name": ("--study", args.study),
    }
    for key, (option, value) in named.items():
        if value is None:
            continue
        if key in overrides and overrides[key] != value:
            raise ValueError(
                f"{option} {value!r} and --set {key}={overrides[key]!r} disagree: pass one of them"
            )
        overrides[key] = value
    return overrides


class ProgressPrinter:
    """Prints one line per finished trial and advances a progress bar on standard error."""

    def __init__(self, study: Any, n_trials: int):
        from optuna.trial import TrialState
        from tqdm import tqdm

        self.finished_states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        trials = study.get_trials(deepcopy=False, states=self.finished_states)
        self.seen = {trial.number for trial in trials}
        # Trials of any final state that finished since this printer was created.
        self.launched = 0
        counted = sum(1 for trial in trials if trial.state != TrialState.FAIL)
        self.single = len(study.directions) == 1
        self.bar = tqdm(
            total=n_trials,
            initial=min(counted, n_trials),
            unit="trial",
            file=sys.stderr,
            disable=None,
            dynamic_ncols=True,
        )

    def on_trial(self, study: Any, trial: Any) -> None:
        from optuna.trial import TrialState

        if trial.number in self.seen or trial.state not in self.finished_states:
            return
        self.seen.add(trial.number)
        self.launched += 1
        if trial.state != TrialState.FAIL:
            self.bar.update(1)
        self.bar.write(self.describe(study, trial), file=sys.stdout)
        sys.stdout.flush()

    def poll(self, study: Any) -> None:
        """Report the trials other processes finished since the last call."""
        trials = study.get_trials(deepcopy=False, states=self.finished_states)
        for trial in sorted(trials, key=lambda item: item.number):
            self.on_trial(study, trial)

    def describe(self, study: Any, trial: Any) -> str:
        from optuna.trial import TrialState

        head = f"trial {trial.number} {trial.state.name.lower()}"
        if trial.state == TrialState.FAIL:
            reason = trial.user_attrs.get("fail_reason", "its process stopped")
            return f"{head}: {reason}"
        accuracy = trial.user_attrs.get("validation_accuracy")
        if accuracy is None and trial.state == TrialState.COMPLETE:
            # A trial that repeats earlier parameters stores only its values; validation
            # accuracy is always the first objective.
            accuracy = trial.values[0]
        if trial.state == TrialState.PRUNED:
            steps = trial.user_attrs.get("step_accuracies") or []
            accuracy = steps[-1] if steps else None
        text = head if accuracy is None else f"{head}: validation accuracy {accuracy:.2f} %"
        if trial.state == TrialState.COMPLETE and not self.single:
            text += f", HE cost {trial.values[1]:g}"
        return f"{text}; {best_so_far(study)}"

    def close(self) -> None:
        self.bar.close()


def best_so_far(study: Any) -> str:
    """Describe the best trial (one objective) or the Pareto front size (two)."""
    try:
        if len(study.directions) == 1:
            best = study.best_trial
            return f"best {best.value:.2f} % (trial {best.number})"
        return f"Pareto front {count_noun(len(study.best_trials), 'trial')}"
    except ValueError:
        return "no complete trial yet"


def count_noun(count: int, noun: str) -> str:
    """Return ``count`` with ``noun``, plural unless the count is 1 (``1 trial``, ``2 trials``)."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _worker_process(
    spec: Any,
    parent_run_id: str,
    index: int,
    threads: int,
    log_level: str,
    handled: tuple[int, ...],
) -> None:
    """Entry point of a spawned worker process; exits with status 2 when a store fails.

    ``handled``: the stop signals the parent handles. The others stay ignored, like Ctrl-C in
    a background job.
    """
    # Ctrl-C reaches every process of the terminal's group, and the parent sends SIGTERM to
    # its workers when it stops: both end the running trial as interrupted, so that the trial
    # is stored FAIL and its MLflow run KILLED. The worker starts with Ctrl-C ignored (see
    # _start_ignoring_ctrl_c) until this handler is installed.
    from search import interrupts

    interrupts.install(*handled, once=True)
    _stop_with_parent()
    try:
        logging.basicConfig(
            level=log_level,
            format=f"%(asctime)s %(levelname)s worker {index} %(name)s: %(message)s",
            stream=sys.stderr,
        )
        from search.credentials import install_log_masking

        install_log_masking()
        from search.tracking import configure_library_logging

        configure_library_logging()
        import torch

        from search.study import run_worker

        torch.set_num_threads(threads)
        run_worker(spec, parent_run_id=parent_run_id, worker_index=index)
    except KeyboardInterrupt:
        logger.debug("worker %d interrupted", index)
        sys.exit(INTERRUPTED_EXIT_STATUS)
    except Exception as error:
        converted = store_failure(error, spec)
        if converted is None:
            raise
        logger.error("%s", converted)
        sys.exit(2)


def _stop_with_parent() -> None:
    """Send this worker SIGTERM once its parent process ends.

    A parent killed with SIGKILL cannot stop its workers, which would otherwise go on
    searching on their own until the budget is met.
    """
    import multiprocessing
    import threading

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        logger.warning("the search process %s ended: stopping this worker", parent.pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="polysearch-parent-watch", daemon=True).start()


def _run_workers(
    spec: Any,
    parent_run_id: str,
    study: Any,
    printer: ProgressPrinter,
    workers: int,
    threads: int,
    level: str,
    handled: tuple[int, ...],
) -> None:
    """Run ``workers`` spawned processes and print their trials as they finish."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_worker_process,
            args=(spec, parent_run_id, index, threads, level, handled),
            name=f"polysearch-worker-{index}",
        )
        for index in range(workers)
    ]
    try:
        _start_ignoring_ctrl_c(processes)
        while any(process.is_alive() for process in processes):
            time.sleep(1.0)
            printer.poll(study)
    except BaseException:
        _stop_workers(processes)
        try:
            printer.poll(study)
        except Exception as error:  # noqa: BLE001 - the interrupt is the one to report
            logger.warning("cannot read the trials the workers finished: %s", error)
        raise
    printer.poll(study)
    failed = [process.name for process in processes if process.exitcode != 0]
    if failed and all(process.exitcode == 2 for process in processes if process.exitcode):
        raise ValueError(
            f"worker processes {', '.join(failed)} stopped because a store failed (see the log); "
            "the study is kept as stored: run the same command again to resume"
        )
    if failed:
        raise RuntimeError(f"worker processes {', '.join(failed)} ended with an error (see log)")


def _start_ignoring_ctrl_c(processes: list[Any]) -> None:
    """Start worker processes that ignore Ctrl-C until they install their own handler.

    Without it, a Ctrl-C while a worker imports its modules ends it with a traceback. Ctrl-C
    stays blocked in this process meanwhile, so it is handled here once the workers started,
    and the workers are then stopped with SIGTERM.
    """
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    previous_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for process in processes:
            process.start()
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


def _stop_workers(processes: list[Any]) -> None:
    """Stop the worker processes after an interrupt or an error of the parent.

    Every worker is sent SIGTERM, which it treats like Ctrl-C (one that a Ctrl-C reached
    already ignores it), and gets ``WORKER_STOP_SECONDS`` to store its running trial as
    failed. Workers still alive then are killed. A further Ctrl-C skips the wait.
    """
    for action in ("terminate", "kill"):
        alive = [process for process in processes if process.is_alive()]
        if not alive:
            return
        if action == "terminate":
            for process in alive:
                process.terminate()
        else:
            logger.warning(
                "killing %d worker processes still running %g s after SIGTERM",
                len(alive),
                WORKER_STOP_SECONDS,
            )
            for process in alive:
                process.kill()
        deadline = time.monotonic() + WORKER_STOP_SECONDS
        try:
            for process in alive:
                process.join(timeout=max(0.0, deadline - time.monotonic()))
        except KeyboardInterrupt:
            continue


def store_failure(error: BaseException, spec: Any) -> ValueError | None:
    """Return a one-line ValueError for an Optuna storage or MLflow store failure, else None.

    Connection losses and server errors reach the worker loop as SQLAlchemy or Optuna storage
    errors (Optuna storage) or as ``MlflowException`` (MLflow store). Each write of both
    stores is one transaction, so what is stored stays consistent; a trial that was running
    is failed by the heartbeat of the next worker and its parameters are retried.
    """
    import optuna
    import sqlalchemy
    from mlflow.exceptions import MlflowException

    from search.credentials import mask_text

    # Optuna can replace a storage error by one of its own while it cleans up after a trial
    # (Optuna 5.1 raises UnboundLocalError when it cannot read the trial back), so the
    # store error may sit further down the chain of causes.
    found: BaseException | None = error
    seen: set[int] = set()
    while found is not None and id(found) not in seen:
        seen.add(id(found))
        if isinstance(
            found,
            MlflowException
            | optuna.exceptions.StorageInternalError
            | sqlalchemy.exc.SQLAlchemyError,
        ):
            break
        found = found.__cause__ or found.__context__
    else:
        return None
    if isinstance(found, MlflowException):
        what, url = "MLflow store", spec.tracking.mlflow_uri
    else:
        what, url = "Optuna storage", spec.tracking.storage
    # Optuna's own message is generic; the driver's error below it names the cause.
    if isinstance(found, optuna.exceptions.StorageInternalError) and found.__cause__:
        found = found.__cause__
    text = str(found).strip() or type(found).__name__
    return ValueError(
        f"the {what} {mask_url(url)!r} failed: {mask_text(text.splitlines()[0])}; the study is "
        "kept as stored: once the store is reachable again, run the same command to resume"
    )


def _end_launch_run(client: Any, run_id: str, status: str, reason: str) -> None:
    """End the launch's run, logging instead of raising when the MLflow store fails too."""
    from search import tracking
    from search.storage import first_line

    try:
        tracking.end_run(client, run_id, status, reason=reason)
    except Exception as error:  # noqa: BLE001 - the original error is the one to report
        logger.warning("cannot end MLflow run %s as %s: %s", run_id, status, first_line(error))


def run(args: argparse.Namespace) -> int:
    from models.threads import available_cores
    from search import interrupts, tracking
    from search.spec import load_spec
    from search.storage import check_storage_url
    from search.study import (
        count_trials,
        create_study,
        ensure_checkpoint,
        fail_stale_trials,
        load_context,
        open_study_storage,
        run_worker,
    )

    tracking.configure_library_logging()
    spec = load_spec(args.spec, overrides=spec_overrides(args))
    cores = available_cores()
    if spec.search.workers > cores:
        raise ValueError(
            f"--workers {spec.search.workers} (search.workers) exceeds the {cores} available "
            f"cores, and each worker needs one: use --workers {cores} or fewer here, and start "
            "more workers on other machines against a shared --storage"
        )
    # Reach both stores before training or loading anything, so a wrong URL fails at once.
    # The storage's file is checked first and created last, so that an MLflow store that
    # cannot be opened leaves no new study database behind.
    check_storage_url(spec.tracking.storage)
    client = tracking.open_client(spec.tracking.mlflow_uri)
    storage = open_study_storage(spec)
    ensure_checkpoint(spec, client=client)
    # Load the network and data before the study exists, so that a checkpoint, dataset or
    # network without nonlinearities fails without storing anything.
    context = load_context(spec)
    study = create_study(spec, storage)
    fail_stale_trials(study)
    finished, running = count_trials(study)
    if running:
        logger.info(
            "found %s in state RUNNING, in another process or stopped less than %d s ago: "
            "each is failed and retried once its heartbeat is older than that",
            count_noun(running, "trial"),
            spec.search.grace_period,
        )
    storage_url = mask_url(spec.tracking.storage)
    experiment = tracking.experiment_id(client, spec.name, spec.tracking.mlflow_uri, create=False)
    if experiment is not None:
        tracking.fail_stale_launch_runs(client, experiment, spec.name)
    if finished >= spec.search.n_trials:
        # Nothing to run: no launch run, so that reruns of a finished study leave no trace.
        print(
            f"Study {spec.name!r}: {finished} of {spec.search.n_trials} trials already "
            f"finished; {best_so_far(study)}. Pass a larger --n-trials to run more."
        )
        _print_next_steps(spec, storage_url)
        return 0
    if experiment is None:
        experiment = tracking.experiment_id(client, spec.name, spec.tracking.mlflow_uri)
    # A worker runs one trial at a time, so more workers than missing trials would idle.
    workers = max(1, min(spec.search.workers, spec.search.n_trials - finished))
    parent_run_id = tracking.start_launch_run(
        client, experiment, study_name=spec.name, spec=spec.to_dict(), workers=workers
    )
    print(
        f"Study {spec.name!r}: {finished} of {spec.search.n_trials} trials finished, "
        f"{count_noun(workers, 'worker')}; MLflow run {parent_run_id}",
        flush=True,
    )
    printer = ProgressPrinter(study, spec.search.n_trials)
    started = time.monotonic()
    try:
        # A repeated Ctrl-C is raised wherever it lands, as the user may insist.
        with interrupts.handling(*STOP_SIGNALS, once=False) as handled:
            if workers == 1:
                run_worker(
                    spec, parent_run_id=parent_run_id, on_trial=printer.on_trial, context=context
                )
            else:
                total = args.threads if args.threads else cores
                threads = max(1, total // workers)
                _run_workers(
                    spec, parent_run_id, study, printer, workers, threads, args.log_level, handled
                )
    except KeyboardInterrupt:
        _end_launch_run(client, parent_run_id, "KILLED", "interrupted")
        raise
    except BaseException as error:
        converted = store_failure(error, spec)
        reason = f"{type(error).__name__}: {error}" if converted is None else str(converted)
        _end_launch_run(client, parent_run_id, "FAILED", reason)
        if converted is None:
            raise
        raise converted from None
    finally:
        printer.close()
    elapsed = time.monotonic() - started
    finished, _ = count_trials(study)
    tracking.log_batch(client, parent_run_id, metrics={"launch_seconds": elapsed})
    tracking.end_run(client, parent_run_id, "FINISHED")
    print(
        f"Study {spec.name!r}: this launch: {count_noun(printer.launched, 'trial')} in "
        f"{elapsed:.0f} s; study: {finished} of {spec.search.n_trials} finished; "
        f"{best_so_far(study)}"
    )
    _print_next_steps(spec, storage_url)
    return 0


def _print_next_steps(spec: Any, storage_url: str) -> None:
    """Print the commands that show the study and pull its best configuration."""
    print(f"Open the dashboard:  polysearch dashboard --storage {storage_url}")
    print(
        f"Pull the best result: polysearch best --study {spec.name} "
        f"--storage {storage_url} --mlflow-uri {mask_url(spec.tracking.mlflow_uri)} "
        f"--output {spec.name}-best.json"
    )
