"""The three approximation strategies: all-at-once, stepwise and stepwise-retrain.

* ``all-at-once`` fits every site from the original network's calibration and
  substitutes all polynomials together.
* ``stepwise`` substitutes site by site in execution order; before each site it
  recalibrates that site on the partly approximated network.
* ``stepwise-retrain`` is ``stepwise`` with training between steps (none after the last
  site). Scope ``downstream`` trains only the parameters used after the substituted site,
  with every module before it frozen and kept in evaluation mode; scope ``all`` trains
  every parameter.

``approximate`` runs one strategy and returns the approximated network, a report
(per site and channel: degree, percentile, range, coefficients, fit error, share of
validation inputs outside the range; the accuracy after each step; HE cost) and a
``Configuration`` that rebuilds the network from the original one.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import torch
import torch.fx
from torch import nn
from torch.utils.data import TensorDataset

from approx.cache import CalibrationCache, PrefixState
from approx.calibration import SiteStatistics
from approx.config import Configuration, network_weights
from approx.cost import network_he_cost
from approx.polynomial import PolynomialActivation
from approx.sites import SLOTS_ATTRIBUTE, Site, site_slots, with_slots
from approx.substitute import (
    GRANULARITIES,
    SiteReport,
    SiteSetting,
    check_setting,
    evaluate_network,
    fit_site,
    substitute,
)

logger = logging.getLogger(__name__)

STRATEGIES = ("all-at-once", "stepwise", "stepwise-retrain")
RETRAIN_SCOPES = ("downstream", "all")
OPTIMIZERS = ("adam", "sgd")

__all__ = [
    "STRATEGIES",
    "RETRAIN_SCOPES",
    "ApproximationReport",
    "ApproximationResult",
    "CalibrationCache",
    "RetrainOptions",
    "SiteSetting",
    "approximate",
]


@dataclass
class RetrainOptions:
    """Training between the steps of ``stepwise-retrain``.

    Attributes:
        epochs: Epochs after each substituted site except the last.
        lr: Peak learning rate of the one-cycle schedule of ``models.training.train``.
        optimizer: ``"adam"`` or ``"sgd"``.
        scope: ``"downstream"`` (only parameters used after the site; everything before it
            frozen) or ``"all"``.
        batch_size: Training batch size.
        seed: Seed of the shuffling and initialisation of each step's training.
    """

    epochs: int = 1
    lr: float = 1e-3
    optimizer: str = "adam"
    scope: str = "downstream"
    batch_size: int = 128
    seed: int = 0

    def check(self) -> None:
        """Raise ValueError or TypeError for an invalid option."""
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"retrain epochs must be a positive integer, got {self.epochs!r}")
        if not isinstance(self.lr, int | float) or not self.lr > 0:
            raise ValueError(f"retrain learning rate must be positive, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown retrain optimizer {self.optimizer!r}; expected one of "
                f"{', '.join(OPTIMIZERS)}"
            )
        if self.scope not in RETRAIN_SCOPES:
            raise ValueError(
                f"unknown retrain scope {self.scope!r}; expected one of "
                f"{', '.join(RETRAIN_SCOPES)}"
            )
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"retrain batch size must be positive, got {self.batch_size!r}")

    def key(self) -> tuple:
        return tuple(asdict(self).values())


@dataclass
class ApproximationReport:
    """What one ``approximate`` call did.

    Attributes:
        strategy, granularity: As requested.
        sites: One SiteReport per substituted site, in execution order.
        steps: One dict per step: ``step`` (running number, as passed to ``on_step``),
            ``kind`` (``substitute`` or ``retrain``), ``site``, ``validation_accuracy``
            (%), ``nonfinite`` (validation samples with NaN/inf logits), and for retraining
            ``epoch``, ``train_loss`` or ``error``.
        accuracy: Validation accuracy (%) of the final network; 0.0 when the run failed.
        nonfinite: Validation samples of the final network with non-finite logits.
        he_cost: ``approx.cost.network_he_cost`` of the polynomials.
        failure: Why the run stopped early (e.g. a site without finite inputs), or None.
        retrain: The retraining options of ``stepwise-retrain``, else None.
    """

    strategy: str
    granularity: str
    sites: list[SiteReport]
    steps: list[dict]
    accuracy: float
    nonfinite: int
    he_cost: dict
    failure: str | None = None
    retrain: dict | None = None

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "granularity": self.granularity,
            "accuracy": self.accuracy,
            "nonfinite": self.nonfinite,
            "failure": self.failure,
            "retrain": self.retrain,
            "he_cost": self.he_cost,
            "steps": [dict(step) for step in self.steps],
            "sites": [site.to_dict() for site in self.sites],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> ApproximationReport:
        return cls(
            strategy=str(data["strategy"]),
            granularity=str(data["granularity"]),
            sites=[SiteReport.from_dict(item) for item in data["sites"]],
            steps=[dict(step) for step in data.get("steps", [])],
            accuracy=float(data["accuracy"]),
            nonfinite=int(data.get("nonfinite", 0)),
            he_cost=dict(data.get("he_cost", {})),
            failure=data.get("failure"),
            retrain=data.get("retrain"),
        )


@dataclass
class ApproximationResult:
    """The approximated network, its report and the configuration that rebuilds it.

    ``statistics`` holds, per site, the calibration its polynomials were fitted on (the
    original network's for all-at-once, the partly approximated network's otherwise).
    """

    model: torch.fx.GraphModule
    report: ApproximationReport
    configuration: Configuration
    statistics: dict[str, SiteStatistics] = field(default_factory=dict)


def _check_arguments(
    sites: list[Site],
    settings: Mapping[str, SiteSetting],
    strategy: str,
    granularity: str,
    train: TensorDataset | None,
    retrain: RetrainOptions | None,
) -> list[Site]:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"unknown granularity {granularity!r}; expected one of {', '.join(GRANULARITIES)}"
        )
    if not isinstance(settings, Mapping) or not settings:
        raise ValueError("settings must map at least one site name to a SiteSetting")
    names = [site.name for site in sites]
    unknown = [name for name in settings if name not in names]
    if unknown:
        raise ValueError(
            f"unknown site {unknown[0]!r}; the network's sites are {', '.join(names)}"
        )
    chosen = [site for site in sites if site.name in settings]
    for site in chosen:
        check_setting(site, settings[site.name], granularity)
    if strategy == "stepwise-retrain":
        if train is None:
            raise ValueError("strategy stepwise-retrain needs a training set (train=...)")
        (retrain or RetrainOptions()).check()
    return chosen


def approximate(
    model: nn.Module,
    settings: Mapping[str, SiteSetting],
    *,
    strategy: str,
    granularity: str = "layer",
    calibration_inputs: torch.Tensor,
    validation: TensorDataset,
    train: TensorDataset | None = None,
    retrain: RetrainOptions | None = None,
    cache: CalibrationCache | None = None,
    on_step: Callable[[int, float], None] | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 256,
) -> ApproximationResult:
    """Replace the nonlinearities of ``model`` by minimax polynomials and measure accuracy.

    Args:
        model: The trained network; it is never modified (its parameters may be moved to
            ``device``).
        settings: Site name -> SiteSetting for every site to replace; other sites keep
            their nonlinearity.
        strategy: ``all-at-once``, ``stepwise`` or ``stepwise-retrain``.
        granularity: ``layer`` (one polynomial per site) or ``channel`` (one per channel).
        calibration_inputs: Inputs (N, C, H, W) whose activations give the ranges.
        validation: Labelled set whose accuracy is reported after each step.
        train: Training set, required by ``stepwise-retrain``.
        retrain: Retraining options (default ``RetrainOptions()``).
        cache: Reuses the original calibration and earlier equal step-wise steps across
            calls; pass the same cache to every call of a search.
        on_step: Called as ``on_step(step, validation_accuracy)`` after each step and each
            retraining epoch, with a running step number; an exception it raises (e.g.
            ``optuna.TrialPruned``) stops the run and propagates.
        device: Where to run; None means CUDA when available, else the CPU.
        batch_size: Validation images per forward pass. Batches of a few hundred images
            keep the activation tensors in the CPU cache, where the Horner passes of the
            polynomials are cheapest.

    Returns:
        The ApproximationResult. For all-at-once and stepwise, ``result.model`` is a copy
        with its own weights.

    Raises:
        ValueError, TypeError: Invalid strategy, granularity, settings or options; a
            network that cannot be traced or has no nonlinearity.
    """
    from models.training import resolve_device

    device = resolve_device(device)
    if not isinstance(calibration_inputs, torch.Tensor):
        raise TypeError(
            f"calibration_inputs must be a tensor, got {type(calibration_inputs).__name__}"
        )
    if not isinstance(validation, TensorDataset):
        raise TypeError(f"validation must be a TensorDataset, got {type(validation).__name__}")
    cache = cache if cache is not None else CalibrationCache()
    cache.bind(model, calibration_inputs)
    template, sites = cache.traced()
    chosen = _check_arguments(sites, settings, strategy, granularity, train, retrain)
    template.to(device)
    run = _Run(
        template=template,
        sites=sites,
        chosen=chosen,
        settings=settings,
        strategy=strategy,
        granularity=granularity,
        validation=validation,
        train=train,
        retrain=(retrain or RetrainOptions()) if strategy == "stepwise-retrain" else None,
        cache=cache,
        on_step=on_step,
        device=device,
        batch_size=batch_size,
    )
    if strategy == "all-at-once":
        return run.all_at_once()
    return run.stepwise()


@dataclass
class _Run:
    template: torch.fx.GraphModule
    sites: list[Site]
    chosen: list[Site]
    settings: Mapping[str, SiteSetting]
    strategy: str
    granularity: str
    validation: TensorDataset
    train: TensorDataset | None
    retrain: RetrainOptions | None
    cache: CalibrationCache
    on_step: Callable[[int, float], None] | None
    device: torch.device
    batch_size: int

    def all_at_once(self) -> ApproximationResult:
        statistics = self.cache.original_statistics(self.device)
        reports = {
            site.name: fit_site(
                statistics[site.name],
                self.settings[site.name],
                granularity=self.granularity,
                fit_cache=self.cache.fits,
            )
            for site in self.chosen
        }
        approximated, _ = substitute(self.template, self.sites, reports)
        model = copy.deepcopy(approximated)
        evaluation = self._evaluate(model, count=True)
        step = self._step_record(0, "substitute", "*", evaluation)
        self._report_step(step)
        return self._finish(
            model,
            list(reports.values()),
            [step],
            evaluation.nonfinite,
            {name: statistics[name] for name in reports},
        )

    def stepwise(self) -> ApproximationResult:
        retraining = self.retrain is not None
        base_key = (self.strategy, self.granularity, self.retrain.key() if retraining else None)

        def prefix_key(length: int) -> tuple:
            return base_key + tuple(
                (site.name, self.settings[site.name].key()) for site in self.chosen[:length]
            )

        # Resume from the longest prefix an earlier call computed with equal settings.
        start, state = 0, None
        for length in range(len(self.chosen), 0, -1):
            state = self.cache.prefix(prefix_key(length))
            if state is not None:
                start = length
                break
        # Deep copies, so that this run's out-of-range shares never touch cached reports.
        reports: list[SiteReport] = copy.deepcopy(state.reports) if state else []
        steps: list[dict] = [dict(step) for step in state.steps] if state else []
        for step in steps:
            self._report_step(step)
        current = self._network_for(reports, state.state_dict if state else None, retraining)
        statistics_used: dict[str, SiteStatistics] = {}
        failure = state.failure if state else None
        last_evaluation = None

        for position in range(start, len(self.chosen)):
            if failure is not None:
                break
            site = self.chosen[position]
            previous = self.cache.prefix(prefix_key(position)) if position else None
            try:
                statistics = self._site_statistics(current, site, position, previous)
            except ValueError as error:
                failure = f"site {site.name}: {error}"
                logger.warning("stepwise run stopped: %s", failure)
                break
            statistics_used[site.name] = statistics
            report = fit_site(
                statistics,
                self.settings[site.name],
                granularity=self.granularity,
                fit_cache=self.cache.fits,
            )
            report.step = position
            reports.append(report)
            module = report.build_module(inplace=site.inplace)
            current = with_slots(current, {site.index: module})
            is_last = position == len(self.chosen) - 1
            evaluation = self._evaluate(current, count=is_last)
            last_evaluation = evaluation
            step = self._step_record(len(steps), "substitute", site.name, evaluation)
            steps.append(step)
            if not is_last:
                _set_counting(current, False)
            self._report_step(step)
            if retraining and not is_last:
                self._retrain(current, site, steps)
            self.cache.store_prefix(
                prefix_key(position + 1),
                PrefixState(
                    reports=copy.deepcopy(reports),
                    steps=[dict(step) for step in steps],
                    state_dict=network_weights(current) if retraining else None,
                ),
            )

        if failure is not None:
            self.cache.store_prefix(
                prefix_key(len(reports)),
                PrefixState(reports=list(reports), steps=list(steps), failure=failure),
            )
            model = current if retraining else copy.deepcopy(current)
            return self._finish(model, reports, steps, 0, statistics_used, failure=failure)
        if last_evaluation is None:
            # Every step came from the cache; evaluate once to count out-of-range inputs.
            last_evaluation = self._evaluate(current, count=True)
        model = current if retraining else copy.deepcopy(current)
        return self._finish(model, reports, steps, last_evaluation.nonfinite, statistics_used)

    def _network_for(
        self,
        reports: list[SiteReport],
        state_dict: dict[str, torch.Tensor] | None,
        retraining: bool,
    ) -> torch.fx.GraphModule:
        """Return the network with ``reports`` substituted (an independent copy to train)."""
        base = copy.deepcopy(self.template) if retraining else self.template
        if state_dict is not None:
            base.load_state_dict(state_dict, strict=False)
        network, _ = substitute(base, self.sites, {report.name: report for report in reports})
        _set_counting(network, False)
        return network

    def _site_statistics(
        self,
        network: torch.fx.GraphModule,
        site: Site,
        position: int,
        previous: PrefixState | None,
    ) -> SiteStatistics:
        if position == 0:
            # Nothing is substituted or retrained yet: the original calibration applies.
            return self.cache.original_statistics(self.device)[site.name]
        if previous is not None and previous.statistics is not None:
            return previous.statistics
        statistics = self.cache.calibrate(network, [site], self.device)[site.name]
        if previous is not None:
            previous.statistics = statistics
        return statistics

    def _retrain(self, network: torch.fx.GraphModule, site: Site, steps: list[dict]) -> None:
        """Train ``network`` in place after substituting ``site``; append the epoch steps."""
        from models.training import NonFiniteLossError, train

        options = self.retrain
        if options.scope == "downstream":
            parameters, frozen = downstream_parameters(network, site)
        else:
            parameters, frozen = list(network.parameters()), []
        if not parameters:
            steps.append(
                {
                    "step": len(steps),
                    "kind": "retrain",
                    "site": site.name,
                    "validation_accuracy": None,
                    "error": "no parameters after this site to train",
                }
            )
            return
        snapshot = {key: value.clone() for key, value in network.state_dict().items()}
        trainer = _FrozenUpstream(network, frozen)

        def on_epoch(metrics: dict) -> None:
            step = {
                "step": len(steps),
                "kind": "retrain",
                "site": site.name,
                "epoch": metrics["epoch"],
                "train_loss": metrics["train_loss"],
                "validation_accuracy": metrics["validation_accuracy"],
            }
            steps.append(step)
            self._report_step(step)

        try:
            train(
                trainer,
                self.train,
                self.validation,
                epochs=options.epochs,
                batch_size=options.batch_size,
                lr=options.lr,
                optimizer=options.optimizer,
                seed=options.seed,
                device=self.device,
                parameters=parameters,
                progress=False,
                on_epoch=on_epoch,
            )
        except NonFiniteLossError as error:
            network.load_state_dict(snapshot)
            reason = f"retraining stopped, weights restored: {error}"
            logger.warning("site %s: %s", site.name, reason)
            steps.append(
                {
                    "step": len(steps),
                    "kind": "retrain",
                    "site": site.name,
                    "validation_accuracy": None,
                    "error": reason,
                }
            )

    def _evaluate(self, network: torch.fx.GraphModule, *, count: bool):
        modules = _set_counting(network, count)
        for module in modules:
            module.reset_counts()
        return evaluate_network(
            network, self.validation, batch_size=self.batch_size, device=self.device
        )

    @staticmethod
    def _step_record(number: int, kind: str, site: str, evaluation) -> dict:
        return {
            "step": number,
            "kind": kind,
            "site": site,
            "validation_accuracy": evaluation.accuracy,
            "nonfinite": evaluation.nonfinite,
        }

    def _report_step(self, step: dict) -> None:
        accuracy = step.get("validation_accuracy")
        logger.debug(
            "step %d (%s %s): validation accuracy %s",
            step["step"],
            step["kind"],
            step["site"],
            accuracy,
        )
        if self.on_step is not None and accuracy is not None:
            self.on_step(int(step["step"]), float(accuracy))

    def _finish(
        self,
        model: torch.fx.GraphModule,
        reports: list[SiteReport],
        steps: list[dict],
        nonfinite: int,
        statistics: dict[str, SiteStatistics],
        *,
        failure: str | None = None,
    ) -> ApproximationResult:
        _record_outside_shares(model, self.sites, reports)
        _set_counting(model, True)
        substitute_steps = [step for step in steps if step["kind"] == "substitute"]
        accuracy = 0.0 if failure else float(substitute_steps[-1]["validation_accuracy"])
        indices = {site.name: site.index for site in self.sites}
        he_cost = network_he_cost(
            {report.name: report.degree for report in reports},
            graph_module=self.template,
            site_indices=indices,
        )
        report = ApproximationReport(
            strategy=self.strategy,
            granularity=self.granularity,
            sites=reports,
            steps=steps,
            accuracy=accuracy,
            nonfinite=nonfinite,
            he_cost=he_cost,
            failure=failure,
            retrain=asdict(self.retrain) if self.retrain is not None else None,
        )
        configuration = Configuration.from_report(
            report,
            network=type(self.cache.model).__name__,
            weights=network_weights(model) if self.retrain is not None else None,
        )
        model.eval()
        return ApproximationResult(
            model=model, report=report, configuration=configuration, statistics=statistics
        )


class _FrozenUpstream(nn.Module):
    """Training wrapper that keeps the modules before a site in evaluation mode.

    ``models.training.train`` calls ``train()`` every epoch; this override puts the
    frozen modules back in evaluation mode, so BatchNorm layers before the site keep
    normalising with (and never update) their running statistics.
    """

    def __init__(self, network: torch.fx.GraphModule, frozen: list[nn.Module]) -> None:
        super().__init__()
        self.network = network
        self._frozen = frozen

    def train(self, mode: bool = True) -> _FrozenUpstream:
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


def downstream_parameters(
    network: torch.fx.GraphModule, site: Site
) -> tuple[list[nn.Parameter], list[nn.Module]]:
    """Return the parameters used only after ``site`` and the modules called before it.

    A parameter used both before and after the site (a shared module) counts as before,
    so it stays frozen.
    """
    slot_target = f"{SLOTS_ATTRIBUTE}.{site.index}"
    upstream_parameters: set[int] = set()
    upstream_modules: list[nn.Module] = []
    downstream: list[nn.Parameter] = []
    seen_site = False
    for node in network.graph.nodes:
        if node.op == "call_module" and node.target == slot_target:
            seen_site = True
            continue
        owned: list[nn.Parameter] = []
        if node.op == "call_module":
            module = network.get_submodule(node.target)
            owned = list(module.parameters())
            if not seen_site:
                upstream_modules.append(module)
        elif node.op == "get_attr":
            value = _attribute(network, str(node.target))
            if isinstance(value, nn.Parameter):
                owned = [value]
        if not seen_site:
            upstream_parameters.update(id(parameter) for parameter in owned)
        else:
            downstream.extend(owned)
    unique: dict[int, nn.Parameter] = {}
    for parameter in downstream:
        if id(parameter) not in upstream_parameters:
            unique.setdefault(id(parameter), parameter)
    return list(unique.values()), upstream_modules


def _attribute(module: nn.Module, path: str) -> object:
    value: object = module
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _set_counting(network: torch.fx.GraphModule, enabled: bool) -> list[PolynomialActivation]:
    modules = [m for m in site_slots(network) if isinstance(m, PolynomialActivation)]
    for module in modules:
        module.count_outside = enabled
    return modules


def _record_outside_shares(
    network: torch.fx.GraphModule, sites: list[Site], reports: list[SiteReport]
) -> None:
    """Copy the out-of-range shares counted in the last evaluation into the reports."""
    slots = site_slots(network)
    index = {site.name: site.index for site in sites}
    for report in reports:
        module = slots[index[report.name]]
        if not isinstance(module, PolynomialActivation) or module.seen == 0:
            continue
        shares = module.outside_share()
        for fit, share in zip(report.channels, shares, strict=True):
            fit.outside_share = float(share)
