"""``polysearch best``: the best configuration of a study, with its test accuracy."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from search.commands.options import check_output
from search.spec import DEFAULT_MLFLOW_URI, DEFAULT_STORAGE

HELP = "print the best configuration of a study (its Pareto front for two objectives)"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, help="study name")
    parser.add_argument(
        "--storage",
        default=DEFAULT_STORAGE,
        help=f"Optuna storage URL (default: {DEFAULT_STORAGE})",
    )
    parser.add_argument(
        "--mlflow-uri",
        default=DEFAULT_MLFLOW_URI,
        help=f"MLflow tracking URI (default: {DEFAULT_MLFLOW_URI})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="write the best configuration (approximation configuration file) here",
    )
    parser.add_argument(
        "--trial",
        type=int,
        default=None,
        help="with two objectives: the Pareto-front trial to write (default: most accurate)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output file"
    )


def best_trials(study: Any) -> list[Any]:
    """Return the best trial, or the Pareto front sorted by accuracy (highest first).

    Trials that repeat an earlier trial's parameters are left out in favour of that trial.
    """
    try:
        if len(study.directions) == 1:
            return [study.best_trial]
        front = study.best_trials
    except ValueError:
        front = []
    if not front:
        raise ValueError(
            f"study {study.study_name!r} has no complete trial yet: run polysearch search first"
        )
    unique: dict[str, Any] = {}
    for trial in sorted(front, key=lambda item: item.number):
        unique.setdefault(json.dumps(trial.params, sort_keys=True), trial)
    return sorted(unique.values(), key=lambda item: (-item.values[0], item.number))


def artifact_run_id(study: Any, trial: Any) -> str:
    """Return the MLflow run holding the trial's artifacts (the original of a repeat)."""
    original = trial.user_attrs.get("duplicate_of")
    if original is not None:
        trial = study.trials[int(original)]
    run_id = trial.user_attrs.get("mlflow_run_id")
    if not run_id:
        raise ValueError(
            f"trial {trial.number} of study {study.study_name!r} has no MLflow run id: it was "
            "not run by polysearch search"
        )
    return run_id


def load_launch_spec(client: Any, run: Any, folder: Path) -> Any:
    """Rebuild the specification a trial ran with from its launch run's artifact."""
    from search.spec import build_spec
    from search.tracking import download_artifact

    parent = run.data.tags.get("mlflow.parentRunId")
    if not parent:
        raise ValueError(f"MLflow run {run.info.run_id} has no parent launch run")
    path = download_artifact(client, parent, "specification.json", folder)
    raw = json.loads(path.read_text())
    return build_spec(raw)


def measure_test_accuracy(client: Any, study: Any, trial: Any, folder: Path) -> dict[str, Any]:
    """Rebuild a trial's configuration on its checkpoint and measure the test split.

    The test accuracy is logged to the trial's MLflow run as ``test_accuracy``, unless the
    run already holds that value.
    """
    from approx.config import Configuration
    from models.checkpoint import load_checkpoint
    from models.datasets import load_dataset
    from models.training import evaluate
    from search import tracking
    from search.storage import retry_locked

    run_id = artifact_run_id(study, trial)
    run = retry_locked(client.get_run)(run_id)
    spec = load_launch_spec(client, run, folder)
    destination = folder / f"trial-{trial.number}"
    destination.mkdir()
    configuration_path = tracking.download_artifact(
        client, run_id, tracking.CONFIGURATION_ARTIFACT, destination
    )
    if configuration_path.read_text().find(tracking.WEIGHTS_ARTIFACT) >= 0:
        tracking.download_artifact(client, run_id, tracking.WEIGHTS_ARTIFACT, destination)
    configuration = Configuration.load(configuration_path)
    model, _ = load_checkpoint(spec.network.checkpoint, network=spec.network.name)
    approximated = configuration.build(model)
    splits = load_dataset(
        spec.data.dataset,
        spec.data.dir,
        download=spec.data.download,
        seed=spec.seed,
        limit=spec.data.limit,
    )
    evaluation = evaluate(approximated, splits.test)
    own_run = trial.user_attrs.get("mlflow_run_id", run_id)
    for target in {own_run, run_id}:
        # A repeated call measures the same value: log it once, not a row per call.
        logged = retry_locked(client.get_run)(target).data.metrics.get("test_accuracy")
        if logged != evaluation.accuracy:
            tracking.log_batch(client, target, metrics={"test_accuracy": evaluation.accuracy})
    entry = {
        "trial": trial.number,
        "mlflow_run_id": own_run,
        "params": trial.params,
        "validation_accuracy": trial.user_attrs.get("validation_accuracy", trial.values[0]),
        "test_accuracy": evaluation.accuracy,
        "he_cost": trial.user_attrs.get("he_cost"),
        "strategy": spec.approximation.strategy,
        "network": spec.network.name,
        "checkpoint": str(spec.network.checkpoint),
        "dataset": spec.data.dataset,
    }
    configuration.metadata.update(
        {
            "checkpoint": str(spec.network.checkpoint.resolve()),
            "dataset": spec.data.dataset,
            "study": study.study_name,
            "optuna_trial_number": trial.number,
            "mlflow_run_id": own_run,
            "test_accuracy": evaluation.accuracy,
        }
    )
    return {"entry": entry, "configuration": configuration}


def run(args: argparse.Namespace) -> int:
    from search.storage import load_study, open_storage
    from search.tracking import configure_library_logging, open_client

    configure_library_logging()
    # Every option is checked before anything is measured or logged to MLflow.
    if args.output is not None:
        check_output(args.output, overwrite=args.overwrite)
    storage = open_storage(args.storage, must_exist=True)
    study = load_study(storage, args.study)
    trials = best_trials(study)
    if args.trial is not None:
        chosen = [trial for trial in trials if trial.number == args.trial]
        if not chosen:
            numbers = ", ".join(str(trial.number) for trial in trials)
            raise ValueError(f"trial {args.trial} is not among the best trials: {numbers}")
        trials = chosen
    client = open_client(args.mlflow_uri, must_exist=True)
    with tempfile.TemporaryDirectory(prefix="polysearch-best-") as folder:
        results = [measure_test_accuracy(client, study, trial, Path(folder)) for trial in trials]
        entries = [result["entry"] for result in results]
        if args.output is not None:
            results[0]["configuration"].save(args.output, overwrite=args.overwrite)
    if args.json:
        print(json.dumps(entries if len(study.directions) == 2 else entries[0], indent=2))
    else:
        title = "Pareto front" if len(study.directions) == 2 else "Best trial"
        print(f"{title} of study {args.study!r}:")
        for entry in entries:
            cost = "" if entry["he_cost"] is None else f", HE cost {entry['he_cost']:g}"
            print(
                f"  trial {entry['trial']}: validation {entry['validation_accuracy']:.2f} %, "
                f"test {entry['test_accuracy']:.2f} %{cost} (MLflow run {entry['mlflow_run_id']})"
            )
            for name, value in entry["params"].items():
                print(f"    {name} = {value}")
    if args.output is not None:
        # With --json, standard output holds the JSON document alone.
        print(
            f"Configuration of trial {entries[0]['trial']} written to {args.output}",
            file=sys.stderr if args.json else sys.stdout,
        )
    return 0
