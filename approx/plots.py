"""Figures of a site: input distribution with its range, output distribution, and the
function with its polynomial overlaid.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas, never
through ``pyplot``, so no window opens, no global figure stays registered and the code
runs on machines without a display.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from approx.calibration import ChannelDistribution, SiteStatistics
from approx.functions import get_function
from approx.substitute import SiteReport, _fit_function

_BINS = 120


def _function_values(function_name: str, params: dict, x: np.ndarray) -> np.ndarray:
    from approx.sites import Site

    site = Site(name="", function=function_name, target="", params=params)
    function, fit_params = _fit_function(site)
    if callable(function):
        return function(x)
    _, callable_function = get_function(function, **fit_params)
    return callable_function(x)


def _histogram(axes, values: np.ndarray, title: str, color: str, label: str | None = None) -> None:
    if values.size == 0:
        axes.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=axes.transAxes)
    else:
        axes.hist(values, bins=_BINS, color=color, alpha=0.8, label=label)
        axes.set_yscale("log")
    axes.set_title(title)
    axes.set_ylabel("count (sample)")


def _sample(distribution: ChannelDistribution | None, channel: int | None) -> np.ndarray:
    if distribution is None:
        return np.empty(0)
    if channel is None:
        return distribution.values()
    return distribution.samples[channel]


def _polynomial_outputs(
    fits: list, inputs: ChannelDistribution | None, channel: int | None
) -> np.ndarray:
    """Return the polynomial applied to the input sample: the site's output once substituted.

    With one polynomial per channel and no ``channel`` chosen, each channel's sample goes
    through its own polynomial.
    """
    if not fits or inputs is None:
        return np.empty(0)
    if len(fits) == 1:
        samples, channel_fits = [_sample(inputs, channel)], fits
    else:
        samples, channel_fits = inputs.samples, fits
    outputs = []
    for sample, fit in zip(samples, channel_fits, strict=True):
        t = (2.0 * sample - fit.lo - fit.hi) / (fit.hi - fit.lo)
        outputs.append(np.polynomial.chebyshev.chebval(t, fit.chebyshev))
    values = np.concatenate(outputs)
    return values[np.isfinite(values)]


def _save(figure: Figure, path: Path) -> None:
    """Render ``figure`` to PNG at ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        # mkstemp creates the file readable by its owner only; give it the usual mode.
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(temporary, 0o666 & ~mask)
        figure.savefig(temporary, format="png", dpi=100)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def plot_site(
    report: SiteReport | None,
    statistics: SiteStatistics | None,
    path: str | os.PathLike,
    *,
    channel: int | None = None,
    percentile: float | None = None,
) -> Path:
    """Write a site's figure (PNG): input histogram with the fitting range, output
    histogram, and the function with its polynomial.

    Args:
        report: The site's polynomials; None draws the distributions only (with the
            ``percentile`` range marked, if given).
        statistics: The calibration the polynomials were fitted on; None draws the
            function and polynomial only.
        path: PNG file to write (folders are created).
        channel: Draw this channel's distribution and polynomial; None draws the whole
            layer and, at channel granularity, every channel's polynomial.
        percentile: Range to mark when ``report`` is None.

    Raises:
        ValueError: Neither ``report`` nor ``statistics`` is given, or ``channel`` is out
            of range.
    """
    if report is None and statistics is None:
        raise ValueError("plot_site needs a site report, statistics or both")
    path = Path(path)
    name = report.name if report is not None else statistics.site.name
    function = report.function if report is not None else statistics.site.function
    params = report.params if report is not None else statistics.site.function_params
    if report is not None:
        fits = report.channels
        if channel is not None and report.granularity == "channel":
            if not 0 <= channel < len(fits):
                raise ValueError(f"site {name} has {len(fits)} channels, not {channel + 1}")
            fits = [fits[channel]]
    else:
        fits = []
    if statistics is not None and channel is not None and channel >= statistics.channels:
        raise ValueError(f"site {name} has {statistics.channels} channels, not {channel + 1}")

    ranges = [(fit.lo, fit.hi) for fit in fits]
    if not ranges and statistics is not None and percentile is not None:
        if channel is None:
            ranges = [statistics.range(percentile)]
        else:
            ranges = [tuple(statistics.channel_ranges(percentile)[channel])]
    inputs = _sample(statistics.inputs if statistics else None, channel)
    outputs = _sample(statistics.outputs if statistics else None, channel)
    label = name if channel is None else f"{name} channel {channel}"

    figure = Figure(figsize=(15, 4.2), layout="constrained")
    input_axes, output_axes, function_axes = figure.subplots(1, 3)
    _histogram(input_axes, inputs, f"{label}: input distribution", "tab:blue")
    for lo, hi in ranges:
        input_axes.axvspan(lo, hi, color="tab:orange", alpha=0.15 if len(ranges) > 1 else 0.25)
    if len(ranges) == 1:
        lo, hi = ranges[0]
        for edge in (lo, hi):
            input_axes.axvline(edge, color="tab:orange", linewidth=1.5)
        input_axes.set_xlabel(f"range [{lo:.4g}, {hi:.4g}]")
    _histogram(output_axes, outputs, f"{label}: output distribution", "tab:green", function)
    polynomial_outputs = _polynomial_outputs(
        fits, statistics.inputs if statistics else None, channel
    )
    if polynomial_outputs.size:
        output_axes.hist(
            polynomial_outputs, bins=_BINS, color="tab:red", histtype="step", label="polynomial"
        )
        output_axes.legend(loc="best")

    # The x span covers the fitted ranges and the central 99.8 % of the inputs.
    points = [value for pair in ranges for value in pair]
    if inputs.size:
        points += list(np.quantile(inputs, [0.001, 0.999]))
    low, high = (min(points), max(points)) if points else (-3.0, 3.0)
    margin = 0.1 * max(high - low, 1e-6)
    x = np.linspace(low - margin, high + margin, 600)
    function_axes.plot(
        x, _function_values(function, params, x), color="black", linewidth=2, label=function
    )
    for index, fit in enumerate(fits):
        t = (2.0 * x - fit.lo - fit.hi) / (fit.hi - fit.lo)
        y = np.polynomial.chebyshev.chebval(t, fit.chebyshev)
        text = f"degree {fit.degree}, max error {fit.max_error:.3g}" if index == 0 else None
        function_axes.plot(
            x,
            y,
            color="tab:red",
            linewidth=1.2 if len(fits) > 1 else 1.8,
            alpha=0.6 if len(fits) > 1 else 1.0,
            label=text,
        )
    if len(ranges) == 1:
        function_axes.axvspan(*ranges[0], color="tab:orange", alpha=0.15)
    function_axes.set_title(f"{label}: {function} and polynomial")
    function_axes.set_xlabel("x")
    function_axes.legend(loc="best")
    _save(figure, path)
    figure.clear()
    return path


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def plot_result(
    reports: list[SiteReport],
    statistics: Mapping[str, SiteStatistics],
    folder: str | os.PathLike,
) -> list[Path]:
    """Write one figure per site, and per channel at channel granularity, into ``folder``.

    Files are ``<site>.png`` and ``<site>/channel<k>.png``; characters other than letters,
    digits, ``_``, ``.`` and ``-`` in site names become ``_``.
    """
    folder = Path(folder)
    paths = []
    for report in reports:
        stats = statistics.get(report.name)
        base = _file_name(report.name)
        paths.append(plot_site(report, stats, folder / f"{base}.png"))
        if report.granularity == "channel":
            for channel in range(len(report.channels)):
                paths.append(
                    plot_site(
                        report, stats, folder / base / f"channel{channel}.png", channel=channel
                    )
                )
    return paths


def plot_statistics(
    statistics: Mapping[str, SiteStatistics],
    folder: str | os.PathLike,
    *,
    percentile: float,
    granularity: str = "layer",
) -> list[Path]:
    """Write the distribution figures of calibrated sites, with the percentile range marked."""
    folder = Path(folder)
    paths = []
    for name, stats in statistics.items():
        base = _file_name(name)
        paths.append(plot_site(None, stats, folder / f"{base}.png", percentile=percentile))
        if granularity == "channel":
            for channel in range(stats.channels):
                paths.append(
                    plot_site(
                        None,
                        stats,
                        folder / base / f"channel{channel}.png",
                        channel=channel,
                        percentile=percentile,
                    )
                )
    return paths
