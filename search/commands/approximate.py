"""``polysearch approximate``: replace a checkpoint's nonlinearities by polynomials."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from search.commands.calibrate import (
    add_data_arguments,
    count_noun,
    load_inputs,
    parse_number,
    parse_sample_size,
)
from search.commands.options import check_output

HELP = "replace the nonlinearities of a checkpoint by minimax polynomials and measure accuracy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``polysearch approximate``."""
    add_data_arguments(parser)
    parser.add_argument(
        "--strategy",
        default="all-at-once",
        help="all-at-once, stepwise or stepwise-retrain (default: all-at-once)",
    )
    parser.add_argument(
        "--degree", default="2", help="polynomial degree of every site (default: 2)"
    )
    parser.add_argument(
        "--percentile",
        default="95",
        help="central percentile of the inputs each range covers, in (0, 100] (default: 95)",
    )
    parser.add_argument(
        "--site",
        action="append",
        default=[],
        metavar="NAME=DEGREE:PERCENTILE",
        help="setting of one site, overriding --degree and --percentile; with channel "
        "granularity DEGREE and PERCENTILE may be comma-separated lists, one per channel "
        "(repeatable)",
    )
    parser.add_argument("--retrain-epochs", default="1", help="epochs per step (default: 1)")
    parser.add_argument(
        "--retrain-lr", default="0.001", help="peak learning rate of retraining (default: 0.001)"
    )
    parser.add_argument("--retrain-optimizer", default="adam", help="adam or sgd (default: adam)")
    parser.add_argument(
        "--retrain-scope",
        default="downstream",
        help="downstream: train only what follows the site; all: train everything "
        "(default: downstream)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="apply this saved configuration instead of fitting new polynomials",
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="save the configuration (JSON) here"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output file"
    )
    parser.add_argument(
        "--plots", type=Path, default=None, help="write one figure (PNG) per site here"
    )


def parse_site_option(text: str) -> tuple[str, Any, Any]:
    """Parse ``NAME=DEGREE:PERCENTILE`` (lists allowed) into (name, degree, percentile)."""
    name, equals, value = text.rpartition("=")
    parts = value.split(":")
    if not equals or not name or len(parts) != 2:
        raise ValueError(
            f"invalid --site {text!r}; expected NAME=DEGREE:PERCENTILE, e.g. relu1=4:99"
        )
    degrees = [
        parse_number(item, f"degree of --site {text!r}", int) for item in parts[0].split(",")
    ]
    percentiles = [
        parse_number(item, f"percentile of --site {text!r}") for item in parts[1].split(",")
    ]
    degree = degrees[0] if len(degrees) == 1 else degrees
    percentile = percentiles[0] if len(percentiles) == 1 else percentiles
    return name, degree, percentile


def check_setting_options(args: argparse.Namespace) -> tuple[int, float]:
    """Check --degree, --percentile and the --site syntax before any data is loaded."""
    from approx.calibration import check_percentile
    from approx.substitute import check_degree

    degree = check_degree(parse_number(args.degree, "--degree", int))
    percentile = check_percentile(parse_number(args.percentile, "--percentile"))
    for text in args.site:
        _, site_degree, site_percentile = parse_site_option(text)
        for value in site_degree if isinstance(site_degree, list) else [site_degree]:
            check_degree(value)
        for value in site_percentile if isinstance(site_percentile, list) else [site_percentile]:
            check_percentile(value)
    return degree, percentile


def build_settings(args: argparse.Namespace, site_names: list[str]) -> dict[str, Any]:
    """Return the SiteSetting of every site from --degree, --percentile and --site."""
    from approx.strategies import SiteSetting

    degree, percentile = check_setting_options(args)
    settings = {name: SiteSetting(degree, percentile) for name in site_names}
    for text in args.site:
        name, site_degree, site_percentile = parse_site_option(text)
        if name not in settings:
            raise ValueError(
                f"unknown site {name!r} in --site; the network's sites are {', '.join(site_names)}"
            )
        settings[name] = SiteSetting(site_degree, site_percentile)
    return settings


def print_sites(report_sites: list[Any]) -> None:
    """Print one line per site (and per channel with channel granularity)."""
    print(
        f"{'site':<14} {'ch':>4} {'deg':>3} {'pct':>6} {'range':>27} {'max error':>10} "
        f"{'outside':>8}  coefficients (x^0, x^1, ...)"
    )
    for site in report_sites:
        for channel, fit in enumerate(site.channels):
            label = "-" if site.granularity == "layer" else str(channel)
            outside = "-" if fit.outside_share is None else f"{100 * fit.outside_share:.2f}%"
            coefficients = ", ".join(f"{value:.6g}" for value in fit.coefficients)
            print(
                f"{site.name:<14} {label:>4} {fit.degree:>3} {fit.percentile:>6g} "
                f"[{fit.lo:>11.5g}, {fit.hi:>11.5g}] {fit.max_error:>10.4g} {outside:>8}  "
                f"{coefficients}"
            )


def run(args: argparse.Namespace) -> int:
    """Approximate the checkpoint's network (or apply --config) and print the results."""
    from approx.cache import CalibrationCache
    from approx.config import Configuration
    from approx.plots import plot_result
    from approx.sites import trace_sites
    from approx.strategies import STRATEGIES, RetrainOptions, approximate
    from approx.substitute import evaluate_network
    from models.training import resolve_device

    device = resolve_device(args.device)
    sample_size = parse_sample_size(args)
    if args.config is None and args.strategy not in STRATEGIES:
        raise ValueError(
            f"unknown --strategy {args.strategy!r}; expected one of {', '.join(STRATEGIES)}"
        )
    if args.output is not None:
        check_output(args.output, overwrite=args.overwrite)
    if args.config is not None:
        configuration = Configuration.load(args.config)
    else:
        check_setting_options(args)
    model, metadata, splits, calibration = load_inputs(args)
    original = evaluate_network(model.to(device), splits.validation, device=device)
    print(f"original validation accuracy: {original.accuracy:.2f} %")

    if args.config is not None:
        approximated = configuration.build(model)
        report_sites = configuration.sites
        statistics: dict = {}
        print(f"applied {args.config} ({configuration.strategy}, {configuration.granularity})")
    else:
        _, sites = trace_sites(model)
        settings = build_settings(args, [site.name for site in sites])
        retrain = None
        if args.strategy == "stepwise-retrain":
            retrain = RetrainOptions(
                epochs=parse_number(args.retrain_epochs, "--retrain-epochs", int),
                lr=parse_number(args.retrain_lr, "--retrain-lr"),
                optimizer=args.retrain_optimizer,
                scope=args.retrain_scope,
            )
            retrain.check()
        result = approximate(
            model,
            settings,
            strategy=args.strategy,
            granularity=args.granularity,
            calibration_inputs=calibration,
            validation=splits.validation,
            train=splits.train if retrain is not None else None,
            retrain=retrain,
            cache=CalibrationCache(sample_size=sample_size),
            device=device,
        )
        approximated = result.model
        configuration = result.configuration
        report_sites = result.report.sites
        statistics = result.statistics
        for step in result.report.steps:
            accuracy = step.get("validation_accuracy")
            shown = "-" if accuracy is None else f"{accuracy:.2f} %"
            extra = f" epoch {step['epoch']}" if "epoch" in step else ""
            error = f" ({step['error']})" if step.get("error") else ""
            print(
                f"step {step['step']}: {step['kind']} {step['site']}{extra}: "
                f"validation {shown}{error}"
            )
        if result.report.failure:
            print(f"stopped: {result.report.failure}")

    print_sites(report_sites)
    validation = evaluate_network(approximated, splits.validation, device=device)
    test = evaluate_network(approximated, splits.test, device=device)
    print(f"validation accuracy: {validation.accuracy:.2f} % ({validation.nonfinite} non-finite)")
    print(f"test accuracy: {test.accuracy:.2f} % ({test.nonfinite} non-finite)")
    if args.output is not None:
        configuration.metadata.update(
            {
                "checkpoint": str(args.checkpoint),
                "dataset": metadata["dataset"],
                "validation_accuracy": validation.accuracy,
                "test_accuracy": test.accuracy,
            }
        )
        configuration.save(args.output, overwrite=args.overwrite)
        print(f"saved configuration to {args.output}")
    if args.plots is not None:
        paths = plot_result(report_sites, statistics, args.plots)
        print(f"wrote {count_noun(len(paths), 'figure')} to {args.plots}")
    return 0
