"""Calibration cache shared by the trials of a search in one process.

The original network's trace and calibration do not depend on a trial, so they are
computed once. A step-wise trial reuses every earlier step of an earlier trial whose
sites up to that step had equal settings (and equal retraining options): the cache stores,
per such prefix, the site reports, the step reports, the calibration of the next site
and, after retraining, the network's weights.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx
from torch import nn

from approx.calibration import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SAMPLE_SIZE,
    SiteStatistics,
    calibrate,
    check_sample_size,
)
from approx.sites import Site, trace_sites
from approx.substitute import FitCache, SiteReport

logger = logging.getLogger(__name__)


@dataclass
class PrefixState:
    """What a step-wise run has computed after its first sites (a prefix of its steps).

    Attributes:
        reports: Site reports of the substituted sites, in order.
        steps: Step reports so far (dicts, as in ApproximationReport.steps).
        statistics: Calibration of the next site on the network after this prefix
            (None until computed).
        state_dict: Network weights after retraining (None when not retrained).
        failure: Reason the run stopped at this prefix, if it did.
    """

    reports: list[SiteReport]
    steps: list[dict]
    statistics: SiteStatistics | None = None
    state_dict: dict[str, torch.Tensor] | None = None
    failure: str | None = None


class CalibrationCache:
    """Trace, calibration and fits reused across ``approximate`` calls in one process.

    A cache serves one network and one calibration set: calling ``approximate`` with a
    different model object or calibration tensor clears it. The network's weights must
    not change between calls (train a copy instead).

    Args:
        sample_size: Values kept per channel and site during calibration.
        batch_size: Calibration images per forward pass.
        max_prefixes: Step-wise prefixes kept (least recently used ones are dropped).
        seed: Seed of the calibration sampling.

    Raises:
        ValueError, TypeError: ``sample_size`` is not an integer of at least 1.
    """

    def __init__(
        self,
        *,
        sample_size: int = DEFAULT_SAMPLE_SIZE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_prefixes: int = 256,
        seed: int = 0,
    ) -> None:
        self.sample_size = check_sample_size(sample_size)
        self.batch_size = batch_size
        self.max_prefixes = max_prefixes
        self.seed = seed
        self.fits = FitCache()
        self._model: nn.Module | None = None
        self._inputs: torch.Tensor | None = None
        self._traced: tuple[torch.fx.GraphModule, list[Site]] | None = None
        self._original: dict[str, SiteStatistics] | None = None
        self._prefixes: OrderedDict[tuple, PrefixState] = OrderedDict()
        self.calibrations = 0  # forward passes over the calibration set, for tests and logs

    @property
    def model(self) -> nn.Module | None:
        """The network this cache serves (None before ``bind``)."""
        return self._model

    def bind(self, model: nn.Module, calibration_inputs: torch.Tensor) -> None:
        """Serve ``model`` and ``calibration_inputs``, clearing what another pair stored."""
        if self._model is model and self._inputs is calibration_inputs:
            return
        if self._model is not None:
            logger.info("calibration cache: new network or calibration set, clearing it")
        self._model = model
        self._inputs = calibration_inputs
        self._traced = None
        self._original = None
        self._prefixes.clear()

    def traced(self) -> tuple[torch.fx.GraphModule, list[Site]]:
        """Return the traced network (shares weights with the bound model) and its sites."""
        self._check_bound()
        if self._traced is None:
            self._traced = trace_sites(self._model)
        return self._traced

    def calibrate(
        self,
        graph_module: torch.fx.GraphModule,
        sites: Sequence[Site],
        device: torch.device | None,
    ) -> dict[str, SiteStatistics]:
        """Calibrate ``sites`` of ``graph_module`` on the bound calibration inputs."""
        self._check_bound()
        self.calibrations += 1
        return calibrate(
            graph_module,
            sites,
            self._inputs,
            batch_size=self.batch_size,
            sample_size=self.sample_size,
            device=device,
            seed=self.seed,
        )

    def original_statistics(self, device: torch.device | None) -> dict[str, SiteStatistics]:
        """Return the calibration of every site of the original network (computed once)."""
        if self._original is None:
            graph_module, sites = self.traced()
            self._original = self.calibrate(graph_module, sites, device)
        return self._original

    def prefix(self, key: tuple) -> PrefixState | None:
        state = self._prefixes.get(key)
        if state is not None:
            self._prefixes.move_to_end(key)
        return state

    def store_prefix(self, key: tuple, state: PrefixState) -> None:
        self._prefixes[key] = state
        self._prefixes.move_to_end(key)
        while len(self._prefixes) > self.max_prefixes:
            self._prefixes.popitem(last=False)

    def _check_bound(self) -> None:
        if self._model is None:
            raise ValueError("the calibration cache is not bound to a network; call bind first")
