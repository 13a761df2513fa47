"""Checks of a configuration file's JSON content, field by field, before it is used.

A configuration rebuilds a network without refitting, so a damaged or hand-edited
value would silently change the network. :func:`check_configuration_data` checks the
type and range of every field, that each channel's ``degree`` matches its coefficient
lists, and that the power-basis ``coefficients`` describe the same polynomial as the
``chebyshev`` coefficients the network evaluates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from approx.substitute import GRANULARITIES, MAX_DEGREE

# The power-basis and Chebyshev forms of a channel must agree on its range within this
# share of the evaluation's rounding scale, sum_k |a_k| |x|^k + sum_k |c_k|. Fits of
# degree 0 to 32 from the Remez fitter agree within 1e-14 of that scale, on ranges from
# [-1e-3, 1e-3] to [-1e8, 1e8], so only a changed coefficient exceeds it.
AGREEMENT_TOLERANCE = 1e-9


def check_configuration_data(data: Mapping, path: Path) -> None:
    """Raise ValueError naming the field (and site and channel) of the first invalid value.

    Args:
        data: The decoded JSON object of a configuration file.
        path: The file, named in the message.
    """
    from approx.strategies import STRATEGIES

    _check_choice(data, "strategy", STRATEGIES, f"{path}")
    _check_choice(data, "granularity", GRANULARITIES, f"{path}")
    network = data.get("network")
    if not isinstance(network, str) or not network:
        raise ValueError(f"{path}: field 'network' must be a network class name, got {network!r}")
    accuracy = data.get("accuracy")
    if accuracy is not None and not (_is_number(accuracy) and 0.0 <= accuracy <= 100.0):
        raise ValueError(f"{path}: field 'accuracy' must be a percentage, got {accuracy!r}")
    for name in ("retrain", "metadata"):
        value = data.get(name)
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"{path}: field {name!r} must be an object, got {value!r}")
    sites = data.get("sites")
    if not isinstance(sites, list) or not sites:
        raise ValueError(f"{path}: field 'sites' must be a non-empty list, got {sites!r}")
    for index, site in enumerate(sites):
        _check_site(site, index, data["granularity"], path)


def _check_site(site: object, index: int, granularity: str, path: Path) -> None:
    if not isinstance(site, dict):
        raise ValueError(f"{path}: site {index} must be an object, got {site!r}")
    name = site.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{path}: site {index}: field 'name' must be a string, got {name!r}")
    where = f"{path}: site {name}"
    function = site.get("function")
    if not isinstance(function, str) or not function:
        raise ValueError(f"{where}: field 'function' must be a string, got {function!r}")
    if not isinstance(site.get("params", {}), dict):
        raise ValueError(f"{where}: field 'params' must be an object, got {site['params']!r}")
    if site.get("granularity") != granularity:
        raise ValueError(
            f"{where}: field 'granularity' must be {granularity!r} as for the whole "
            f"configuration, got {site.get('granularity')!r}"
        )
    step = site.get("step", 0)
    if not _is_integer(step) or step < 0:
        raise ValueError(f"{where}: field 'step' must be a non-negative integer, got {step!r}")
    item_shape = site.get("item_shape", [])
    if not isinstance(item_shape, list) or not all(
        _is_integer(size) and size >= 1 for size in item_shape
    ):
        raise ValueError(
            f"{where}: field 'item_shape' must be a list of positive integers, got {item_shape!r}"
        )
    channels = site.get("channels")
    if not isinstance(channels, list) or not channels:
        raise ValueError(f"{where}: field 'channels' must be a non-empty list, got {channels!r}")
    if granularity == "layer" and len(channels) != 1:
        raise ValueError(
            f"{where}: layer granularity needs one polynomial in 'channels', got {len(channels)}"
        )
    for channel, fit in enumerate(channels):
        _check_channel(fit, f"{where} channel {channel}")


def _check_channel(fit: object, where: str) -> None:
    if not isinstance(fit, dict):
        raise ValueError(f"{where}: must be an object, got {fit!r}")
    degree = fit.get("degree")
    if not _is_integer(degree) or not 0 <= degree <= MAX_DEGREE:
        raise ValueError(
            f"{where}: field 'degree' must be an integer from 0 to {MAX_DEGREE}, got {degree!r}"
        )
    percentile = fit.get("percentile")
    if not (_is_number(percentile) and 0.0 < percentile <= 100.0):
        raise ValueError(f"{where}: field 'percentile' must be in (0, 100], got {percentile!r}")
    bounds = fit.get("range")
    if not (
        isinstance(bounds, list)
        and len(bounds) == 2
        and all(_is_number(value) for value in bounds)
        and bounds[0] < bounds[1]
    ):
        raise ValueError(
            f"{where}: field 'range' must be [lo, hi] with finite lo < hi, got {bounds!r}"
        )
    for name in ("coefficients", "chebyshev"):
        values = fit.get(name)
        if not isinstance(values, list) or not all(_is_number(value) for value in values):
            raise ValueError(f"{where}: field {name!r} must be a list of finite numbers")
        if len(values) != degree + 1:
            raise ValueError(
                f"{where}: field 'degree' is {degree}, so field {name!r} needs "
                f"{_values(degree + 1)}, got {len(values)}"
            )
    max_error = fit.get("max_error")
    if not (_is_number(max_error) and max_error >= 0.0):
        raise ValueError(
            f"{where}: field 'max_error' must be a finite number >= 0, got {max_error!r}"
        )
    if not isinstance(fit.get("converged"), bool):
        raise ValueError(f"{where}: field 'converged' must be true or false")
    share = fit.get("outside_share")
    if share is not None and not (_is_number(share) and 0.0 <= share <= 1.0):
        raise ValueError(f"{where}: field 'outside_share' must be in [0, 1], got {share!r}")
    _check_agreement(fit, where)


def _check_agreement(fit: dict, where: str) -> None:
    """Raise unless the power and Chebyshev coefficients give the same polynomial."""
    lo, hi = (float(value) for value in fit["range"])
    power = np.asarray(fit["coefficients"], dtype=np.float64)
    chebyshev = np.asarray(fit["chebyshev"], dtype=np.float64)
    # Chebyshev points of the second kind, four per coefficient, include both ends.
    count = 4 * len(chebyshev) + 1
    t = np.cos(np.linspace(0.0, math.pi, count))
    x = 0.5 * (lo + hi) + 0.5 * (hi - lo) * t
    with np.errstate(over="ignore", invalid="ignore"):
        expected = np.polynomial.chebyshev.chebval(t, chebyshev)
        actual = np.polynomial.polynomial.polyval(x, power)
        scale = (
            np.polynomial.polynomial.polyval(np.abs(x), np.abs(power)) + np.abs(chebyshev).sum()
        )
        difference = np.abs(actual - expected)
    worst = int(np.argmax(np.where(np.isnan(difference), np.inf, difference / scale)))
    if not difference[worst] <= AGREEMENT_TOLERANCE * scale[worst]:
        raise ValueError(
            f"{where}: field 'coefficients' does not describe the polynomial of field "
            f"'chebyshev': at x = {x[worst]:.6g} they give {actual[worst]:.6g} and "
            f"{expected[worst]:.6g} (allowed difference {AGREEMENT_TOLERANCE:g} of "
            f"{scale[worst]:.3g})"
        )


def _check_choice(data: Mapping, name: str, choices: tuple[str, ...], where: str) -> None:
    value = data.get(name)
    if value not in choices:
        raise ValueError(
            f"{where}: field {name!r} must be one of {', '.join(choices)}, got {value!r}"
        )


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """Return whether ``value`` is a finite JSON number (booleans excluded)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _values(count: int) -> str:
    return "1 value" if count == 1 else f"{count} values"
