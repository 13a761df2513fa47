"""Fitting a site's polynomials from its statistics and substituting them into a network.

``fit_site`` turns a site's calibration statistics and its setting (degree and
percentile, per site or per channel) into a ``PolynomialActivation`` and a
``SiteReport``; ``substitute`` swaps polynomial modules into the slots of a traced
network; ``evaluate_network`` measures accuracy on in-memory tensors and counts
non-finite logits as wrong.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx
from torch import nn
from torch.utils.data import TensorDataset

from approx.calibration import SiteStatistics, check_percentile
from approx.polynomial import PolynomialActivation, power_coefficients
from approx.remez import MinimaxFit, fit_minimax_batch
from approx.sites import Site, site_slots, with_slots

logger = logging.getLogger(__name__)

GRANULARITIES = ("layer", "channel")
MAX_DEGREE = 32

# A range narrower than this (relative to its magnitude, at least 1e-6 absolute) is widened
# symmetrically, because a polynomial needs lo < hi to map the range onto [-1, 1].
_MIN_RELATIVE_WIDTH = 1e-6
_WIDEN_RELATIVE = 1e-3


@dataclass
class SiteSetting:
    """Degree and percentile of one site.

    Attributes:
        degree: Polynomial degree (0 to 32), or one degree per channel (channel
            granularity only).
        percentile: Central percentile of the inputs that the fitting range covers, in
            (0, 100], or one per channel (channel granularity only).
    """

    degree: int | list[int]
    percentile: float | list[float]

    def key(self) -> tuple:
        """Return a hashable form, used to recognise equal settings in caches."""
        degree = tuple(self.degree) if isinstance(self.degree, list | tuple) else self.degree
        percentile = (
            tuple(float(p) for p in self.percentile)
            if isinstance(self.percentile, list | tuple)
            else float(self.percentile)
        )
        return (degree, percentile)

    def to_dict(self) -> dict:
        return {"degree": self.degree, "percentile": self.percentile}


def check_degree(degree: object) -> int:
    """Return ``degree`` as an int, raising unless it is an integer in 0..32."""
    if isinstance(degree, bool) or not isinstance(degree, int | np.integer):
        raise TypeError(f"degree must be an integer, got {degree!r}")
    if not 0 <= int(degree) <= MAX_DEGREE:
        raise ValueError(f"degree must be between 0 and {MAX_DEGREE}, got {degree}")
    return int(degree)


def check_setting(site: Site, setting: SiteSetting, granularity: str) -> None:
    """Raise ValueError or TypeError unless ``setting`` is valid for ``site``."""
    if not isinstance(setting, SiteSetting):
        raise TypeError(f"site {site.name}: expected a SiteSetting, got {type(setting).__name__}")
    for name, value, check in (
        ("degree", setting.degree, check_degree),
        ("percentile", setting.percentile, check_percentile),
    ):
        if isinstance(value, list | tuple):
            if granularity != "channel":
                raise ValueError(
                    f"site {site.name}: one {name} per channel needs granularity 'channel'"
                )
            if not value:
                raise ValueError(f"site {site.name}: the list of {name}s is empty")
            for item in value:
                _checked(check, item, site)
        else:
            _checked(check, value, site)


def _checked(check: Callable[[object], object], value: object, site: Site) -> None:
    try:
        check(value)
    except (TypeError, ValueError) as error:
        raise type(error)(f"site {site.name}: {error}") from None


@dataclass
class ChannelFit:
    """The polynomial of one channel (or of the whole site at layer granularity).

    Attributes:
        degree, percentile: The setting it was fitted with.
        lo, hi: Fitting range (after widening a degenerate one).
        coefficients: Ascending power-basis coefficients in x.
        chebyshev: Chebyshev coefficients in t = (2x - lo - hi) / (hi - lo).
        max_error: Maximum absolute fit error on [lo, hi].
        converged: Whether the Remez iteration converged.
        outside_share: Fraction of the validation inputs outside [lo, hi] in the final
            network, counted on every ``COUNT_STRIDE``-th sample of each batch (see
            ``approx.polynomial``); None until measured.
    """

    degree: int
    percentile: float
    lo: float
    hi: float
    coefficients: list[float]
    chebyshev: list[float]
    max_error: float
    converged: bool
    outside_share: float | None = None

    def to_dict(self) -> dict:
        return {
            "degree": self.degree,
            "percentile": self.percentile,
            "range": [self.lo, self.hi],
            "coefficients": list(self.coefficients),
            "chebyshev": list(self.chebyshev),
            "max_error": self.max_error,
            "converged": self.converged,
            "outside_share": self.outside_share,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> ChannelFit:
        return cls(
            degree=int(data["degree"]),
            percentile=float(data["percentile"]),
            lo=float(data["range"][0]),
            hi=float(data["range"][1]),
            coefficients=[float(v) for v in data["coefficients"]],
            chebyshev=[float(v) for v in data["chebyshev"]],
            max_error=float(data["max_error"]),
            converged=bool(data["converged"]),
            outside_share=None
            if data.get("outside_share") is None
            else float(data["outside_share"]),
        )


@dataclass
class SiteReport:
    """Polynomials of one site: one ChannelFit at layer granularity, one per channel else."""

    name: str
    function: str
    params: dict
    granularity: str
    channels: list[ChannelFit]
    step: int = 0
    item_shape: list[int] = field(default_factory=list)

    @property
    def degree(self) -> int:
        """Highest degree among the channels (what the site costs under HE)."""
        return max(fit.degree for fit in self.channels)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "function": self.function,
            "params": dict(self.params),
            "granularity": self.granularity,
            "step": self.step,
            "item_shape": list(self.item_shape),
            "channels": [fit.to_dict() for fit in self.channels],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> SiteReport:
        return cls(
            name=str(data["name"]),
            function=str(data["function"]),
            params=dict(data.get("params", {})),
            granularity=str(data["granularity"]),
            channels=[ChannelFit.from_dict(item) for item in data["channels"]],
            step=int(data.get("step", 0)),
            item_shape=[int(v) for v in data.get("item_shape", [])],
        )

    def build_module(self, *, inplace: bool = False) -> PolynomialActivation:
        """Build the polynomial module from the stored Chebyshev coefficients and ranges."""
        degree = self.degree
        chebyshev = np.zeros((len(self.channels), degree + 1))
        for row, fit in enumerate(self.channels):
            chebyshev[row, : len(fit.chebyshev)] = fit.chebyshev
        ranges = np.array([[fit.lo, fit.hi] for fit in self.channels], dtype=np.float64)
        return PolynomialActivation(chebyshev, ranges, inplace=inplace)


class FitCache:
    """Least-recently-used store of minimax fits keyed by function, degree and range.

    Each entry is the fit and its power-basis coefficients in x.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._fits: OrderedDict[tuple, tuple[MinimaxFit, list[float]]] = OrderedDict()

    def get(self, key: tuple) -> tuple[MinimaxFit, list[float]] | None:
        fit = self._fits.get(key)
        if fit is not None:
            self._fits.move_to_end(key)
        return fit

    def put(self, key: tuple, fit: tuple[MinimaxFit, list[float]]) -> None:
        self._fits[key] = fit
        self._fits.move_to_end(key)
        while len(self._fits) > self.max_entries:
            self._fits.popitem(last=False)


def _fit_function(site: Site) -> tuple[str | Callable[[np.ndarray], np.ndarray], dict]:
    """Return the function argument and params for the fitter."""
    params = site.function_params
    if site.function == "gelu":
        if params.get("approximate", "none") == "tanh":
            return _gelu_tanh, {}
        return "gelu", {}
    return site.function, params


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU with the tanh approximation, as ``nn.GELU(approximate="tanh")`` computes it."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _widen(lo: float, hi: float, context: str) -> tuple[float, float]:
    magnitude = max(abs(lo), abs(hi), 1.0)
    if hi - lo >= _MIN_RELATIVE_WIDTH * magnitude:
        return lo, hi
    half = _WIDEN_RELATIVE * magnitude
    logger.warning(
        "%s: the range [%g, %g] is (nearly) a single point; fitting on [%g, %g] instead",
        context,
        lo,
        hi,
        lo - half,
        hi + half,
    )
    return lo - half, hi + half


def fit_ranges(
    site: Site,
    ranges: np.ndarray,
    degrees: Sequence[int],
    percentiles: Sequence[float],
    *,
    granularity: str,
    fit_cache: FitCache | None = None,
) -> SiteReport:
    """Fit the minimax polynomial of each range and return the site's report.

    Ranges of equal degree are fitted in one batched call; fits already in ``fit_cache``
    are reused.
    """
    function, params = _fit_function(site)
    function_key = (site.function, tuple(sorted(site.function_params.items())))
    channels = ranges.shape[0]
    widened = []
    for row in range(channels):
        context = f"site {site.name}" + (f" channel {row}" if granularity == "channel" else "")
        widened.append(_widen(float(ranges[row, 0]), float(ranges[row, 1]), context))
    fits: list[tuple[MinimaxFit, list[float]] | None] = [None] * channels
    missing: dict[int, list[int]] = {}
    for row, (lo, hi) in enumerate(widened):
        key = (function_key, int(degrees[row]), lo, hi)
        cached = fit_cache.get(key) if fit_cache is not None else None
        if cached is None:
            missing.setdefault(int(degrees[row]), []).append(row)
        else:
            fits[row] = cached
    for degree, rows in missing.items():
        contexts = [
            f"site {site.name}" + (f" channel {row}" if granularity == "channel" else "")
            for row in rows
        ]
        batch = fit_minimax_batch(
            function,
            [widened[row][0] for row in rows],
            [widened[row][1] for row in rows],
            degree,
            context=contexts,
            params=params or None,
        )
        for row, fit in zip(rows, batch, strict=True):
            lo, hi = widened[row]
            power = [float(v) for v in power_coefficients(fit.chebyshev, lo, hi)]
            fits[row] = (fit, power)
            if fit_cache is not None:
                fit_cache.put((function_key, degree, lo, hi), (fit, power))
    channel_fits = []
    for row, (fit, power) in enumerate(fits):
        lo, hi = widened[row]
        chebyshev = np.asarray(fit.chebyshev, dtype=np.float64)
        channel_fits.append(
            ChannelFit(
                degree=int(degrees[row]),
                percentile=float(percentiles[row]),
                lo=lo,
                hi=hi,
                coefficients=list(power),
                chebyshev=[float(v) for v in chebyshev],
                max_error=float(fit.max_error),
                converged=bool(fit.converged),
            )
        )
    return SiteReport(
        name=site.name,
        function=site.function,
        params=dict(site.function_params),
        granularity=granularity,
        channels=channel_fits,
    )


def fit_site(
    statistics: SiteStatistics,
    setting: SiteSetting,
    *,
    granularity: str = "layer",
    fit_cache: FitCache | None = None,
) -> SiteReport:
    """Fit a site's polynomials on the central-percentile ranges of its recorded inputs.

    Raises:
        ValueError: An invalid setting, a per-channel list whose length differs from the
            channel count, or a site without finite recorded inputs.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"unknown granularity {granularity!r}; expected one of {', '.join(GRANULARITIES)}"
        )
    site = statistics.site
    check_setting(site, setting, granularity)
    if granularity == "layer":
        ranges = np.array([statistics.range(setting.percentile)])
        degrees, percentiles = [int(setting.degree)], [float(setting.percentile)]
    else:
        channels = statistics.channels
        degrees = _expand(setting.degree, channels, "degree", site)
        percentiles = _expand(setting.percentile, channels, "percentile", site)
        ranges = statistics.channel_ranges(percentiles)
    report = fit_ranges(
        site, ranges, degrees, percentiles, granularity=granularity, fit_cache=fit_cache
    )
    report.item_shape = list(statistics.inputs.item_shape)
    return report


def _expand(value: object, channels: int, name: str, site: Site) -> list:
    if isinstance(value, list | tuple):
        if len(value) != channels:
            raise ValueError(
                f"site {site.name}: expected one {name} per channel ({channels}), got {len(value)}"
            )
        return list(value)
    return [value] * channels


def substitute(
    graph_module: torch.fx.GraphModule,
    sites: Sequence[Site],
    reports: Mapping[str, SiteReport],
) -> tuple[torch.fx.GraphModule, dict[str, PolynomialActivation]]:
    """Return a copy of a traced network whose sites in ``reports`` are polynomials.

    The copy shares parameters and buffers with ``graph_module``; the polynomial modules
    are new. A site whose original call was in place stays in place.
    """
    by_name = {site.name: site for site in sites}
    modules: dict[str, PolynomialActivation] = {}
    replacements: dict[int, nn.Module] = {}
    for name, report in reports.items():
        site = by_name[name]
        module = report.build_module(inplace=site.inplace)
        modules[name] = module
        replacements[site.index] = module
    return with_slots(graph_module, replacements), modules


@dataclass
class NetworkEvaluation:
    """Accuracy (%) on a labelled set, with samples whose logits were not finite."""

    accuracy: float
    correct: int
    total: int
    nonfinite: int


def evaluate_network(
    model: nn.Module,
    dataset: TensorDataset,
    *,
    batch_size: int = 1000,
    device: torch.device | None = None,
) -> NetworkEvaluation:
    """Measure top-1 accuracy on in-memory tensors under ``torch.inference_mode``.

    A sample whose logits contain NaN or an infinity counts as wrong and is counted in
    ``nonfinite``. The network runs in evaluation mode; every module's training flag is
    restored afterwards.
    """
    inputs, labels = _tensors(dataset)
    if len(inputs) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    states = [(module, module.training) for module in model.modules()]
    correct = nonfinite = 0
    try:
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(inputs), batch_size):
                batch = inputs[start : start + batch_size].to(device, non_blocking=True)
                target = labels[start : start + batch_size].to(device, non_blocking=True)
                logits = model(batch)  # (B, classes)
                finite = torch.isfinite(logits).all(dim=1)
                correct += int(((logits.argmax(dim=1) == target) & finite).sum())
                nonfinite += int((~finite).sum())
    finally:
        for module, training in states:
            module.training = training
    return NetworkEvaluation(
        accuracy=100.0 * correct / len(inputs),
        correct=correct,
        total=len(inputs),
        nonfinite=nonfinite,
    )


def _tensors(dataset: TensorDataset | tuple) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0], dataset.tensors[1]
    if isinstance(dataset, tuple | list) and len(dataset) == 2:
        return dataset[0], dataset[1]
    raise TypeError(f"expected a TensorDataset of (inputs, labels), got {type(dataset).__name__}")


def polynomial_modules(graph_module: torch.fx.GraphModule) -> list[PolynomialActivation]:
    """Return the polynomial modules in the slots of a traced network."""
    return [m for m in site_slots(graph_module) if isinstance(m, PolynomialActivation)]
