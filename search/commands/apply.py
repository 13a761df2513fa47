"""``polysearch apply``: rebuild an approximated network from a configuration file."""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from search.commands.options import check_output
from search.spec import DEFAULT_MLFLOW_URI

HELP = "rebuild the approximated network of a configuration, measure it on test and save it"

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="configuration file (from polysearch best)")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint of the original network (default: the one the configuration names)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="file for the approximated network (default: CONFIG with suffix .pt)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output file"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="dataset folder (default: data)"
    )
    parser.add_argument(
        "--mlflow-uri",
        default=DEFAULT_MLFLOW_URI,
        help=f"MLflow tracking URI (default: {DEFAULT_MLFLOW_URI})",
    )
    parser.add_argument(
        "--experiment", default="applied", help="MLflow experiment of the run (default: applied)"
    )
    parser.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")


def save_model(path: Path, model: Any, payload: dict[str, Any], *, overwrite: bool) -> None:
    """Save the approximated network's state dict and its configuration atomically."""
    import torch

    check_output(path, overwrite=overwrite)
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(descriptor)
    try:
        torch.save({**payload, "state_dict": state}, temporary)
        # mkstemp creates the file for its owner only; give it the mode of a plain new file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def log_model(
    uri: str,
    experiment: str,
    model: Any,
    path: Path,
    params: dict[str, Any],
    accuracy: float,
    input_example: Any,
) -> str:
    """Log the approximated network to MLflow as a model, beside the saved file.

    The model is pickled (``serialization_format="pickle"``). MLflow 3.17's default format
    ``pt2`` exports the network with ``torch.export``, and the export of the polynomial
    modules (which count out-of-range inputs under ``torch.no_grad``) fails to load again
    ("Node.meta wrap_with_set_grad_enabled is missing val field"). Loading the pickled model
    needs this project's ``approx`` package installed. MLflow's caution about pickle is left
    out of the log because the command pickles its own network, not foreign input. The pip
    requirements are given as the installed torch distribution, so MLflow infers nothing,
    and ``input_example`` (a batch of inputs, numpy) sets the model's signature. Should the
    logging still fail (an unpicklable custom module, for instance), only the saved state
    dict is logged and the run is tagged ``model_format=state_dict``.
    """
    from importlib.metadata import version

    import mlflow

    from search import tracking

    client = tracking.open_client(uri)
    experiment_id = tracking.experiment_id(client, experiment, uri)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name=path.stem) as run:
        mlflow.set_tags({"code_version": tracking.code_version()})
        tracking.log_batch(client, run.info.run_id, params=params)
        mlflow.log_metric("test_accuracy", accuracy)
        try:
            pytorch_logger = logging.getLogger("mlflow.pytorch")
            pytorch_logger.addFilter(_drop_pickle_caution)
            try:
                mlflow.pytorch.log_model(
                    model,
                    name="model",
                    serialization_format="pickle",
                    pip_requirements=[f"torch=={version('torch')}"],
                    input_example=input_example,
                )
            finally:
                pytorch_logger.removeFilter(_drop_pickle_caution)
            mlflow.set_tag("model_format", "mlflow.pytorch")
        except Exception as error:  # noqa: BLE001 - any failure falls back to the file
            logger.warning(
                "mlflow.pytorch.log_model failed (%s): logging %s as an artifact", error, path
            )
            mlflow.set_tag("model_format", "state_dict")
        mlflow.log_artifact(str(path))
        return run.info.run_id


def _drop_pickle_caution(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Saving pytorch model by Pickle")


def run(args: argparse.Namespace) -> int:
    from approx.config import Configuration
    from models.checkpoint import load_checkpoint
    from models.datasets import load_dataset
    from models.training import evaluate
    from search.tracking import configure_library_logging, open_client

    configure_library_logging()
    if not args.config.is_file():
        raise FileNotFoundError(f"configuration file {str(args.config)!r} not found")
    output = args.output if args.output is not None else args.config.with_suffix(".pt")
    check_output(output, overwrite=args.overwrite)
    if not args.no_mlflow:
        # Reach the store before writing the output, so that a wrong URI writes nothing.
        open_client(args.mlflow_uri)
    configuration = Configuration.load(args.config)
    checkpoint = args.checkpoint or configuration_checkpoint(configuration)
    if checkpoint is None:
        raise ValueError(
            f"configuration {str(args.config)!r} names no checkpoint: pass --checkpoint FILE"
        )
    model, metadata = load_checkpoint(checkpoint)
    approximated = configuration.build(model)
    # The split the search used: same seed and image limit, as the configuration records.
    recorded = configuration.metadata
    data_dir = args.data_dir or recorded.get("data_dir")
    splits = load_dataset(
        metadata["dataset"],
        data_dir,
        seed=int(recorded.get("seed", 0)),
        limit=recorded.get("data_limit"),
    )
    evaluation = evaluate(approximated, splits.test)
    payload = {
        "configuration": configuration.to_dict(),
        "checkpoint": str(checkpoint),
        "metadata": metadata,
        "test_accuracy": evaluation.accuracy,
    }
    save_model(output, approximated, payload, overwrite=args.overwrite)
    print(
        f"Test accuracy {evaluation.accuracy:.2f} % ({evaluation.correct}/{evaluation.total}, "
        f"original {metadata.get('accuracies', {}).get('test', float('nan')):.2f} %)"
    )
    print(f"Approximated network saved to {output}")
    if not args.no_mlflow:
        params = {
            "configuration": str(args.config),
            "checkpoint": str(checkpoint),
            "network": metadata.get("network"),
            "dataset": metadata.get("dataset"),
        }
        run_id = log_model(
            args.mlflow_uri,
            args.experiment,
            approximated,
            output,
            params,
            evaluation.accuracy,
            input_example=splits.test.tensors[0][:2].numpy(),
        )
        print(f"MLflow run {run_id} (experiment {args.experiment!r})")
    return 0


def configuration_checkpoint(configuration: Any) -> Path | None:
    """Return the checkpoint a configuration records, if it records one."""
    for name in ("checkpoint",):
        value = getattr(configuration, name, None)
        if value:
            return Path(value)
    metadata = getattr(configuration, "metadata", None) or {}
    value = metadata.get("checkpoint") if isinstance(metadata, dict) else None
    return Path(value) if value else None
