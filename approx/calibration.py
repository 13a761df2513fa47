"""Activation statistics: the input and output distribution of every site.

``calibrate`` runs a traced network over a calibration set and records, for every site
and every channel (dimension 1 of NCHW and of NxF inputs), a uniform random sample of
bounded size together with the exact minimum, maximum and count. The sample is a
bottom-k sample: every value gets an independent uniform random key and each channel
keeps the ``sample_size`` values with the smallest keys, which is a uniform sample
without replacement however many values pass. Every channel of a site sees the same
number of values, so the union of the channel samples is a uniform (stratified) sample
of the whole layer.

Percentiles are central intervals: percentile ``p`` covers
``[q((100 - p) / 2), q((100 + p) / 2)]`` of the recorded values, with ``q`` the
linear-interpolation quantile of ``numpy.quantile``. While a channel has seen at most
``sample_size`` values its sample contains all of them, so the ranges equal
``numpy.percentile`` of the full data; percentile 100 always uses the exact extremes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from approx.sites import Site, trace_sites, with_slots
from models.training import resolve_device

logger = logging.getLogger(__name__)

DEFAULT_SAMPLE_SIZE = 32768
DEFAULT_BATCH_SIZE = 500


def check_percentile(percentile: float) -> float:
    """Return ``percentile`` as a float, raising ValueError unless 0 < percentile <= 100."""
    if isinstance(percentile, bool) or not isinstance(percentile, int | float | np.floating):
        raise TypeError(f"percentile must be a number, got {type(percentile).__name__}")
    value = float(percentile)
    if not 0.0 < value <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    return value


def check_sample_size(sample_size: object) -> int:
    """Return ``sample_size`` as an int, raising unless it is an integer of at least 1.

    Raises:
        TypeError: ``sample_size`` is not an integer.
        ValueError: ``sample_size`` is below 1.
    """
    if isinstance(sample_size, bool) or not isinstance(sample_size, int | np.integer):
        raise TypeError(f"sample size must be an integer, got {sample_size!r}")
    if sample_size < 1:
        raise ValueError(f"sample size must be at least 1 value per channel, got {sample_size}")
    return int(sample_size)


def central_interval(values: np.ndarray, percentile: float) -> tuple[float, float]:
    """Return the central ``percentile`` % interval of ``values`` (linear quantiles)."""
    p = check_percentile(percentile)
    lo, hi = np.quantile(values, [(100.0 - p) / 200.0, (100.0 + p) / 200.0])
    return float(lo), float(hi)


class ChannelSampler:
    """Bounded uniform sample, exact extremes and counts of a tensor stream, per channel.

    Args:
        sample_size: Values kept per channel.
        generator: Source of the random keys (seeded by ``calibrate``).
    """

    def __init__(self, sample_size: int, generator: torch.Generator) -> None:
        self.sample_size = sample_size
        self.generator = generator
        self.values: torch.Tensor | None = None  # (C, <= sample_size), float32
        self.keys: torch.Tensor | None = None  # (C, <= sample_size)
        self.minimum: torch.Tensor | None = None  # (C,), float64
        self.maximum: torch.Tensor | None = None
        self.count = 0  # finite and non-finite values per channel (equal for all channels)
        self.nonfinite: torch.Tensor | None = None  # (C,), int64
        self.item_shape: tuple[int, ...] | None = None

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add one batch of shape (N, C, ...) or (N,)."""
        if x.dim() == 0:
            x = x.reshape(1)
        item_shape = tuple(x.shape[1:])
        if self.item_shape is None:
            self.item_shape = item_shape
        elif (item_shape[:1] or (1,)) != (self.item_shape[:1] or (1,)):
            raise ValueError(
                f"channel count changed between batches: {self.item_shape} then {item_shape}"
            )
        values = x.detach().to(torch.float32)
        if values.dim() == 1:
            values = values.reshape(1, -1)  # (1, N)
        else:
            values = values.transpose(0, 1).reshape(values.shape[1], -1)  # (C, N * rest)
        channels, length = values.shape
        finite = torch.isfinite(values)
        keys = torch.rand((channels, length), generator=self.generator, device=values.device)
        all_finite = bool(finite.all())
        if not all_finite:
            keys = keys.masked_fill(~finite, float("inf"))
        low = values if all_finite else values.masked_fill(~finite, float("inf"))
        high = values if all_finite else values.masked_fill(~finite, float("-inf"))
        batch_min = low.amin(dim=1).to(torch.float64)
        batch_max = high.amax(dim=1).to(torch.float64)
        batch_nonfinite = (~finite).sum(dim=1)
        if self.values is None:
            self.values = values.new_empty((channels, 0))
            self.keys = keys.new_empty((channels, 0))
            self.minimum = batch_min
            self.maximum = batch_max
            self.nonfinite = batch_nonfinite
        else:
            self.minimum = torch.minimum(self.minimum, batch_min)
            self.maximum = torch.maximum(self.maximum, batch_max)
            self.nonfinite = self.nonfinite + batch_nonfinite
        self.count += length
        all_keys = torch.cat([self.keys, keys], dim=1)
        all_values = torch.cat([self.values, values], dim=1)
        if all_keys.shape[1] > self.sample_size:
            kept = torch.topk(all_keys, self.sample_size, dim=1, largest=False, sorted=False)
            all_keys = kept.values
            all_values = all_values.gather(1, kept.indices)
        self.keys = all_keys
        self.values = all_values

    def finish(self) -> ChannelDistribution:
        """Return the recorded distribution as numpy arrays."""
        if self.values is None:
            raise ValueError("no values were recorded; the calibration set is empty")
        keys = self.keys.cpu().numpy()
        values = self.values.cpu().numpy().astype(np.float64)
        samples = [row[np.isfinite(key)] for row, key in zip(values, keys, strict=True)]
        return ChannelDistribution(
            samples=samples,
            count=self.count,
            minimum=self.minimum.cpu().numpy(),
            maximum=self.maximum.cpu().numpy(),
            nonfinite=self.nonfinite.cpu().numpy().astype(np.int64),
            item_shape=self.item_shape or (),
        )


@dataclass
class ChannelDistribution:
    """Recorded distribution of one tensor (a site's input or output), per channel.

    Attributes:
        samples: Per channel, a uniform sample of its finite values (all of them when the
            channel saw at most ``sample_size`` values), float64.
        count: Values seen per channel, non-finite ones included.
        minimum, maximum: Exact extremes of the finite values per channel (+inf and -inf
            for a channel without finite values), shape (C,).
        nonfinite: NaN and infinite values seen per channel, shape (C,).
        item_shape: Shape of one sample without the batch dimension, e.g. (6, 26, 26).
    """

    samples: list[np.ndarray]
    count: int
    minimum: np.ndarray
    maximum: np.ndarray
    nonfinite: np.ndarray
    item_shape: tuple[int, ...]

    @property
    def channels(self) -> int:
        return len(self.samples)

    def values(self) -> np.ndarray:
        """Return the sample of the whole layer (the union of the channel samples)."""
        return np.concatenate(self.samples)

    def range(self, percentile: float) -> tuple[float, float]:
        """Return the central ``percentile`` % interval of the whole layer."""
        p = check_percentile(percentile)
        finite_minimum = self.minimum[np.isfinite(self.minimum)]
        if finite_minimum.size == 0:
            raise ValueError(
                f"no finite values were recorded (all {self.count * self.channels} are NaN "
                "or infinite)"
            )
        if p == 100.0:
            return float(finite_minimum.min()), float(
                self.maximum[np.isfinite(self.maximum)].max()
            )
        return central_interval(self.values(), p)

    def channel_range(self, channel: int, percentile: float) -> tuple[float, float]:
        """Return the central ``percentile`` % interval of one channel."""
        p = check_percentile(percentile)
        sample = self.samples[channel]
        if sample.size == 0:
            raise ValueError(
                f"channel {channel}: no finite values were recorded (all {self.count} are NaN "
                "or infinite)"
            )
        if p == 100.0:
            return float(self.minimum[channel]), float(self.maximum[channel])
        return central_interval(sample, p)

    def channel_ranges(self, percentile: float | Sequence[float]) -> np.ndarray:
        """Return the (C, 2) array of per-channel central intervals.

        ``percentile`` is one value for all channels or one value per channel.
        """
        percentiles = _per_channel(percentile, self.channels, "percentile")
        return np.array(
            [self.channel_range(c, p) for c, p in enumerate(percentiles)], dtype=np.float64
        ).reshape(self.channels, 2)

    def nonfinite_total(self) -> int:
        return int(self.nonfinite.sum())


def _per_channel(value: float | Sequence[float], channels: int, what: str) -> list[float]:
    if isinstance(value, int | float | np.floating | np.integer):
        return [value] * channels
    values = list(value)
    if len(values) != channels:
        raise ValueError(f"expected one {what} per channel ({channels}), got {len(values)}")
    return values


@dataclass
class SiteStatistics:
    """Input and output distribution of one site over a calibration set."""

    site: Site
    inputs: ChannelDistribution
    outputs: ChannelDistribution | None

    @property
    def channels(self) -> int:
        return self.inputs.channels

    def range(self, percentile: float) -> tuple[float, float]:
        """Return the central ``percentile`` % interval of the site's inputs."""
        try:
            return self.inputs.range(percentile)
        except ValueError as error:
            raise ValueError(f"site {self.site.name}: {error}") from None

    def channel_ranges(self, percentile: float | Sequence[float]) -> np.ndarray:
        """Return the (C, 2) per-channel central intervals of the site's inputs."""
        try:
            return self.inputs.channel_ranges(percentile)
        except ValueError as error:
            raise ValueError(f"site {self.site.name}: {error}") from None


class _Probe(nn.Module):
    """Slot wrapper that records a site's input before the activation and its output after.

    The input is sampled before the inner activation runs, so an in-place activation
    cannot overwrite it first.
    """

    def __init__(
        self, inner: nn.Module, inputs: ChannelSampler, outputs: ChannelSampler | None
    ) -> None:
        super().__init__()
        self.inner = inner
        self.input_sampler = inputs
        self.output_sampler = outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.input_sampler.update(x)
        y = self.inner(x)
        if self.output_sampler is not None:
            self.output_sampler.update(y)
        return y


def _batches(inputs: torch.Tensor | Iterable, batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        for start in range(0, inputs.shape[0], batch_size):
            yield inputs[start : start + batch_size]
        return
    if isinstance(inputs, torch.utils.data.TensorDataset):
        yield from _batches(inputs.tensors[0], batch_size)
        return
    for batch in inputs:
        yield batch[0] if isinstance(batch, list | tuple) else batch


def _module_states(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    return [(module, module.training) for module in model.modules()]


def calibrate(
    graph_module: torch.fx.GraphModule | nn.Module,
    sites: Sequence[Site] | None,
    inputs: torch.Tensor | torch.utils.data.TensorDataset | Iterable,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    device: str | torch.device | None = None,
    outputs: bool = True,
    seed: int = 0,
) -> dict[str, SiteStatistics]:
    """Record the input (and output) distribution of every site over a calibration set.

    The network runs in evaluation mode under ``torch.inference_mode`` and is left exactly
    as it was: parameters, buffers (BatchNorm running statistics included) and the
    training flag of every module.

    Args:
        graph_module: A network traced by ``approx.sites.trace_sites`` (a plain module is
            traced here).
        sites: Sites to record, a subset of the traced sites; None records all of them.
        inputs: Calibration inputs: a tensor (N, ...), a TensorDataset (its first tensor)
            or an iterable of batches.
        batch_size: Images per forward pass when ``inputs`` is a tensor or TensorDataset.
        sample_size: Values kept per channel; memory is bounded by
            ``sample_size * channels`` per site and tensor, however large the set.
        device: Where to run; None keeps the device of the network's parameters.
        outputs: Also record each site's output distribution.
        seed: Seed of the sampling keys.

    Returns:
        Site name -> SiteStatistics, in execution order.

    Raises:
        ValueError: ``batch_size`` or ``sample_size`` below 1, an unknown site, or an
            empty calibration set.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    sample_size = check_sample_size(sample_size)
    if not isinstance(graph_module, torch.fx.GraphModule) or not hasattr(
        graph_module, "polysearch_sites"
    ):
        graph_module, traced_sites = trace_sites(graph_module)
        if sites is None:
            sites = traced_sites
    if sites is None:
        raise ValueError("pass the sites returned by trace_sites with a traced network")
    device = _device_of(graph_module) if device is None else resolve_device(device)

    samplers: dict[str, tuple[ChannelSampler, ChannelSampler | None]] = {}
    probes: dict[int, nn.Module] = {}
    slots = graph_module.polysearch_sites
    for site in sites:
        if not 0 <= site.index < len(slots):
            raise ValueError(f"site {site.name} (index {site.index}) is not in this network")
        generator = torch.Generator(device=device).manual_seed(seed + 7919 * site.index)
        input_sampler = ChannelSampler(sample_size, generator)
        output_sampler = ChannelSampler(sample_size, generator) if outputs else None
        samplers[site.name] = (input_sampler, output_sampler)
        probes[site.index] = _Probe(slots[site.index], input_sampler, output_sampler)
    probed = with_slots(graph_module, probes)

    states = _module_states(graph_module)
    original_device = _device_of(graph_module)
    try:
        probed.to(device)
        probed.eval()
        with torch.inference_mode():
            for batch in _batches(inputs, batch_size):
                probed(batch.to(device, non_blocking=True))
    finally:
        for module, training in states:
            module.training = training
        if original_device != device:
            graph_module.to(original_device)

    statistics: dict[str, SiteStatistics] = {}
    for site in sites:
        input_sampler, output_sampler = samplers[site.name]
        statistics[site.name] = SiteStatistics(
            site=site,
            inputs=input_sampler.finish(),
            outputs=output_sampler.finish() if output_sampler is not None else None,
        )
        nonfinite = statistics[site.name].inputs.nonfinite_total()
        if nonfinite:
            logger.warning(
                "site %s: %d non-finite inputs during calibration", site.name, nonfinite
            )
    return statistics


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")
