"""``polysearch fit``: print the minimax polynomial of an activation on a range.

Example::

    polysearch fit --function relu --degree 2 --range -3 3
    polysearch fit --function gelu --degree 8 --range=-1e4,0 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import warnings

HELP = "fit the minimax (Remez) polynomial of an activation on a range"

logger = logging.getLogger(__name__)


class _RangeAction(argparse.Action):
    """Store ``--range LO HI`` or ``--range=LO,HI`` as a (lo, hi) tuple of floats."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) == 1 and "," in values[0]:
            values = values[0].split(",")
        if len(values) != 2:
            parser.error(
                f"{option_string} expects two numbers, LO HI or LO,HI, got {' '.join(values)!r}"
            )
        try:
            bounds = tuple(float(value) for value in values)
        except ValueError:
            parser.error(f"{option_string} expects numbers, got {' '.join(values)!r}")
        setattr(namespace, self.dest, bounds)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``polysearch fit``."""
    parser.add_argument(
        "--function",
        default="relu",
        help="activation: relu, leaky_relu, elu, gelu, silu, sigmoid or tanh (default: relu)",
    )
    parser.add_argument("--degree", type=int, required=True, help="polynomial degree, 0 to 32")
    parser.add_argument(
        "--range",
        dest="bounds",
        nargs="+",
        action=_RangeAction,
        required=True,
        metavar=("LO", "HI"),
        help="the interval to fit on, as '--range -3 3' or '--range=-3,3' "
        "(write exponents as '--range=-1e4,0')",
    )
    parser.add_argument(
        "--negative-slope",
        type=float,
        default=None,
        help="slope of leaky_relu below 0 (default: 0.01)",
    )
    parser.add_argument("--alpha", type=float, default=None, help="alpha of elu (default: 1.0)")
    parser.add_argument(
        "--tol",
        type=float,
        default=1e-10,
        help="relative tolerance on the maximum error (default: 1e-10)",
    )
    parser.add_argument(
        "--max-iter", type=int, default=60, help="maximum number of Remez iterations (default: 60)"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail with exit status 2 when the iteration does not converge",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )


def _format_table(fit, params: dict[str, float]) -> str:
    parameters = "".join(f", {key} = {value:g}" for key, value in params.items())
    iterations = f"{fit.iterations} iteration{'' if fit.iterations == 1 else 's'}"
    status = f"converged in {iterations}" if fit.converged else f"NOT converged after {iterations}"
    lines = [
        f"{fit.function}{parameters}, degree {fit.degree} on [{fit.lo:g}, {fit.hi:g}]",
        f"max error: {fit.max_error:.10g} ({status})",
        "coefficients, ascending powers of x:",
    ]
    lines += [f"  x^{k:<3d} {float(value)!r:>24}" for k, value in enumerate(fit.coefficients)]
    lines.append("Chebyshev coefficients, t = (2x - lo - hi) / (hi - lo):")
    lines += [f"  T_{k:<3d} {float(value)!r:>24}" for k, value in enumerate(fit.chebyshev)]
    if len(fit.points):
        points = ", ".join(f"{point:.10g}" for point in fit.points)
        lines.append(f"alternation points: {points}")
    else:
        lines.append("alternation points: none (the error is zero)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Fit the polynomial, print it and return the exit status."""
    from approx.functions import ACTIVATIONS
    from approx.remez import ConvergenceError, fit_minimax

    # The library also accepts Python callables, which a command line cannot pass.
    name = args.function.strip().lower().replace("-", "_")
    if name not in ACTIVATIONS:
        raise ValueError(
            f"unknown --function {args.function!r}; choose one of {', '.join(ACTIVATIONS)}"
        )
    params: dict[str, float] = {}
    if args.negative_slope is not None:
        params["negative_slope"] = args.negative_slope
    if args.alpha is not None:
        params["alpha"] = args.alpha
    lo, hi = args.bounds

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fit = fit_minimax(
                args.function,
                lo,
                hi,
                args.degree,
                tol=args.tol,
                max_iter=args.max_iter,
                strict=args.strict,
                params=params,
            )
        except ConvergenceError as error:
            raise ValueError(str(error)) from None
    for warning in caught:
        logger.warning("%s", warning.message)

    if args.json:
        record = fit.to_dict()
        if params:
            record["parameters"] = params
        if not all(math.isfinite(value) for value in record["coefficients"]):
            # JSON has no infinity, so overflowed power coefficients become null.
            record["coefficients"] = [
                value if math.isfinite(value) else None for value in record["coefficients"]
            ]
        print(json.dumps(record, allow_nan=False))
    else:
        print(_format_table(fit, params))
    return 0
