"""``polysearch evaluate``: accuracy of a checkpoint on its dataset's test or validation split."""

from __future__ import annotations

import argparse
from pathlib import Path

from search.commands.options import add_dataset_arguments, positive_int

HELP = "print the accuracy of a checkpoint on its dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``polysearch evaluate``."""
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint file (.pt)")
    parser.add_argument(
        "--model",
        default=None,
        help="network the checkpoint must contain, e.g. cnn2 (default: any)",
    )
    parser.add_argument(
        "--split",
        choices=["test", "validation"],
        default="test",
        help="split to measure (default: test)",
    )
    add_dataset_arguments(
        parser, limit_help="use at most this many images of the split (default: all)"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=1000, help="samples per batch (default: 1000)"
    )
    parser.add_argument(
        "--device",
        default=None,
        help="torch device, e.g. cpu or cuda (default: cuda if available)",
    )


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint and its dataset split, and print the accuracy."""
    from models.checkpoint import load_checkpoint
    from models.datasets import load_dataset
    from models.training import evaluate, resolve_device

    device = resolve_device(args.device)
    model, metadata = load_checkpoint(args.checkpoint, network=args.model)
    # The checkpoint's seed gives back the split it was trained with, and its mean and std
    # normalise the inputs exactly as during training.
    splits = load_dataset(
        metadata["dataset"],
        args.data_dir,
        download=args.download,
        seed=int(metadata["options"].get("seed", 0)),
        limit=args.limit,
        normalisation=(metadata["mean"], metadata["std"]),
    )
    if tuple(splits.input_shape) != tuple(metadata["input_shape"]):
        raise ValueError(
            f"checkpoint {args.checkpoint} expects inputs {metadata['input_shape']}, "
            f"dataset {metadata['dataset']} has {splits.input_shape}"
        )
    model.to(device)
    result = evaluate(
        model, getattr(splits, args.split), batch_size=args.batch_size, device=device
    )
    print(
        f"{args.split} accuracy: {result.accuracy:.2f} % "
        f"({result.correct}/{result.total}, {result.nonfinite} non-finite)"
    )
    return 0
