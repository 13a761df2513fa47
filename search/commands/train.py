"""``polysearch train``: train a network, save its checkpoint and log an MLflow run."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.commands.options import add_dataset_arguments, positive_int
from search.spec import DEFAULT_MLFLOW_URI

HELP = "train a network on a dataset and save the checkpoint"

# Folder of the default checkpoint path, created when missing.
DEFAULT_CHECKPOINT_DIR = Path("checkpoints")


def positive_float(text: str) -> float:
    """Parse a positive, finite number for argparse."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``polysearch train``."""
    parser.add_argument(
        "--model",
        required=True,
        help="network: cnn1, cnn2, lenet5, or an import path package.module:factory",
    )
    parser.add_argument("--dataset", required=True, help="dataset: mnist, cifar10 or caltech101")

    parser.add_argument(
        "--epochs", type=positive_int, default=10, help="passes over the train split (default: 10)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=128, help="samples per step (default: 128)"
    )
    parser.add_argument(
        "--lr",
        type=positive_float,
        default=None,
        help="peak learning rate of the one-cycle schedule (default: 0.007 Adam, 0.1 SGD)",
    )
    parser.add_argument(
        "--optimizer", choices=["adam", "sgd"], default="adam", help="optimizer (default: adam)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the splits, weights and order (default: 0)"
    )

    add_dataset_arguments(
        parser, limit_help="use at most this many images of each split (default: all)"
    )

    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="checkpoint file in an existing folder (default: checkpoints/<model>-<dataset>.pt; "
        "the checkpoints folder is created when missing)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing checkpoint file"
    )
    parser.add_argument(
        "--mlflow-uri",
        default=DEFAULT_MLFLOW_URI,
        help=f"MLflow tracking URI (default: {DEFAULT_MLFLOW_URI})",
    )
    parser.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    parser.add_argument(
        "--device",
        default=None,
        help="torch device, e.g. cpu or cuda (default: cuda if available)",
    )


def default_checkpoint_path(model: str, dataset: str) -> Path:
    """Return ``checkpoints/<model>-<dataset>.pt``, with an import path made file-safe."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in model)
    return DEFAULT_CHECKPOINT_DIR / f"{safe}-{dataset}.pt"


def run(args: argparse.Namespace) -> int:
    """Train, evaluate, save the checkpoint and log the MLflow run; return the exit status."""
    import torch

    from models.checkpoint import save_checkpoint
    from models.datasets import load_dataset
    from models.networks import build_network, resolve_network
    from models.training import DEFAULT_LR, evaluate, resolve_device, train

    # Check the cheap inputs before loading data, so a typo fails at once.
    resolve_network(args.model)
    device = resolve_device(args.device)
    output = args.output or default_checkpoint_path(args.model, args.dataset)
    # Only the default folder is created; any other missing folder is most likely a typo.
    if output.parent != DEFAULT_CHECKPOINT_DIR and not output.parent.is_dir():
        raise FileNotFoundError(
            f"folder {output.parent} of --output does not exist; create it first "
            f"(only the default {DEFAULT_CHECKPOINT_DIR}/ folder is created)"
        )
    if output.exists() and not args.overwrite:
        raise ValueError(f"checkpoint {output} already exists; pass --overwrite to replace it")

    splits = load_dataset(
        args.dataset, args.data_dir, download=args.download, seed=args.seed, limit=args.limit
    )
    torch.manual_seed(args.seed)
    model = build_network(args.model, splits.input_shape, splits.num_classes)
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    options = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": lr,
        "optimizer": args.optimizer,
        "seed": args.seed,
        "limit": args.limit,
    }

    tracker = None if args.no_mlflow else _TrainingRun(args.mlflow_uri)
    if tracker is not None:
        tracker.start(args.model, args.dataset, options)
    try:
        history = train(
            model,
            splits,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=lr,
            optimizer=args.optimizer,
            seed=args.seed,
            device=device,
            on_epoch=tracker.log_epoch if tracker is not None else None,
        )
        validation = history[-1]["validation_accuracy"]
        test = evaluate(model, splits.test).accuracy
        save_checkpoint(
            output,
            model,
            network=args.model,
            dataset=args.dataset,
            input_shape=splits.input_shape,
            num_classes=splits.num_classes,
            mean=splits.mean,
            std=splits.std,
            options=options,
            accuracies={"validation": validation, "test": test},
            overwrite=args.overwrite,
        )
    except BaseException as error:
        if tracker is not None:
            tracker.end("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise

    print(f"validation accuracy: {validation:.2f} %")
    print(f"test accuracy: {test:.2f} %")
    print(f"checkpoint: {output}")
    if tracker is not None:
        # validation_accuracy already has one value per epoch; the test split is measured once.
        tracker.finish(output, {"test_accuracy": test})
        print(f"mlflow run: {tracker.run_id} ({args.mlflow_uri})")
    return 0


class _TrainingRun:
    """One MLflow run of ``polysearch train`` in the experiment ``training``."""

    def __init__(self, uri: str):
        from search import tracking

        self.tracking = tracking
        self.uri = uri
        # open_client checks the store before training starts, so a bad URI costs no time.
        self.client = tracking.open_client(uri)
        self.run_id: str | None = None

    def start(self, network: str, dataset: str, options: dict) -> None:
        self.run_id = self.tracking.start_training_run(
            self.client, self.uri, network=network, dataset=dataset, params=options
        )

    def log_epoch(self, metrics: dict) -> None:
        values = {key: value for key, value in metrics.items() if key != "epoch"}
        self.tracking.log_batch(self.client, self.run_id, metrics=values, step=metrics["epoch"])

    def finish(self, checkpoint: Path, accuracies: dict[str, float]) -> None:
        self.tracking.log_batch(self.client, self.run_id, metrics=accuracies)
        self.tracking.log_file(self.client, self.run_id, checkpoint, "checkpoint")
        self.end("FINISHED")

    def end(self, status: str) -> None:
        if self.run_id is not None:
            self.tracking.end_run(self.client, self.run_id, status)
