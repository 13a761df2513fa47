"""``polysearch calibrate``: the input range of every nonlinearity of a checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from search.commands.options import add_dataset_arguments

HELP = "print the input range of every nonlinearity site of a checkpoint"

DEFAULT_CALIBRATION_SIZE = 5000


def count_noun(count: int, noun: str) -> str:
    """Return ``count`` and ``noun``, with an ``s`` unless the count is 1 ("1 site", "2 sites")."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def parse_number(text: object, name: str, kind: type = float) -> Any:
    """Parse ``text`` as ``kind``, raising ValueError that names the option."""
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}"
        ) from None
    return value


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the checkpoint, data and calibration options shared with ``approximate``."""
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint file (.pt)")
    parser.add_argument(
        "--calibration-size",
        default=str(DEFAULT_CALIBRATION_SIZE),
        help="training images whose activations give the ranges "
        f"(default: {DEFAULT_CALIBRATION_SIZE})",
    )
    parser.add_argument(
        "--sample-size",
        default="32768",
        help="activation values kept per channel to estimate percentiles (default: 32768)",
    )
    add_dataset_arguments(
        parser,
        limit_help="use at most this many images of each split, for quick runs (default: all)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="torch device, e.g. cpu or cuda (default: cuda if available)",
    )
    parser.add_argument(
        "--granularity",
        default="layer",
        help="layer: one range per site; channel: one range per channel (default: layer)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``polysearch calibrate``."""
    add_data_arguments(parser)
    parser.add_argument(
        "--percentile",
        default="95",
        help="central percentile of the inputs that a range covers, in (0, 100] (default: 95)",
    )
    parser.add_argument(
        "--plots", type=Path, default=None, help="write the distribution figures (PNG) here"
    )


def parse_sample_size(args: argparse.Namespace) -> int:
    """Parse and check --sample-size before any data is loaded."""
    from approx.calibration import check_sample_size

    return check_sample_size(parse_number(args.sample_size, "--sample-size", int))


def load_inputs(args: argparse.Namespace) -> tuple[Any, dict, Any, Any]:
    """Load the checkpoint and its dataset; return (model, metadata, splits, calibration)."""
    import torch

    from models.checkpoint import load_checkpoint
    from models.datasets import load_dataset

    size = parse_number(args.calibration_size, "--calibration-size", int)
    if size < 1:
        raise ValueError(f"--calibration-size must be at least 1, got {size}")
    limit = None if args.limit is None else parse_number(args.limit, "--limit", int)
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    if args.granularity not in ("layer", "channel"):
        raise ValueError(f"--granularity must be layer or channel, got {args.granularity!r}")
    model, metadata = load_checkpoint(args.checkpoint)
    splits = load_dataset(
        metadata["dataset"],
        args.data_dir,
        download=args.download,
        seed=int(metadata.get("options", {}).get("seed", 0)),
        limit=limit,
        normalisation=(metadata["mean"], metadata["std"]),
    )
    train_inputs = splits.train.tensors[0]
    # A fixed random subset, so repeated runs calibrate on the same images.
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train_inputs), generator=generator)
    calibration = train_inputs[order[: min(size, len(train_inputs))]]
    return model, metadata, splits, calibration


def run(args: argparse.Namespace) -> int:
    """Calibrate the checkpoint's network and print each site's range."""
    from approx.calibration import calibrate, check_percentile
    from approx.plots import plot_statistics
    from approx.sites import trace_sites
    from models.training import resolve_device

    percentile = check_percentile(parse_number(args.percentile, "--percentile"))
    sample_size = parse_sample_size(args)
    device = resolve_device(args.device)
    model, _, _, calibration = load_inputs(args)
    graph_module, sites = trace_sites(model)
    statistics = calibrate(
        graph_module,
        sites,
        calibration,
        sample_size=sample_size,
        device=device,
    )
    print(
        f"{count_noun(len(sites), 'site')}, "
        f"{count_noun(len(calibration), 'calibration image')}, "
        f"{percentile:g}th percentile ranges:"
    )
    for site in sites:
        stats = statistics[site.name]
        lo, hi = stats.range(percentile)
        inputs = stats.inputs
        print(
            f"{site.name:<16} {site.function:<10} channels {stats.channels:>4}  "
            f"range [{lo:.6g}, {hi:.6g}]  min {inputs.minimum.min():.6g}  "
            f"max {inputs.maximum.max():.6g}  non-finite {inputs.nonfinite_total()}"
        )
        if args.granularity == "channel":
            for channel, (c_lo, c_hi) in enumerate(stats.channel_ranges(percentile)):
                print(f"  channel {channel:>4}  range [{c_lo:.6g}, {c_hi:.6g}]")
    if args.plots is not None:
        paths = plot_statistics(
            statistics, args.plots, percentile=percentile, granularity=args.granularity
        )
        print(f"wrote {count_noun(len(paths), 'figure')} to {args.plots}")
    return 0
