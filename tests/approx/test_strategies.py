"""The three strategies on a small MNIST split with a quickly trained network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from approx.cache import CalibrationCache
from approx.strategies import RetrainOptions, SiteSetting, approximate
from approx.substitute import evaluate_network


def _settings(degree=4, percentile=99.0):
    return {"relu1": SiteSetting(degree, percentile), "relu2": SiteSetting(degree, percentile)}


def _run(model, splits, strategy, calibration, **options):
    return approximate(
        model,
        options.pop("settings", _settings()),
        strategy=strategy,
        calibration_inputs=calibration,
        validation=splits.validation,
        device="cpu",
        **options,
    )


def test_strategy_all_at_once(trained_cnn2, mnist_small, calibration_inputs):
    before = {k: v.clone() for k, v in trained_cnn2.state_dict().items()}
    steps = []
    result = _run(
        trained_cnn2,
        mnist_small,
        "all-at-once",
        calibration_inputs,
        on_step=lambda step, accuracy: steps.append((step, accuracy)),
    )
    report = result.report
    original = evaluate_network(trained_cnn2, mnist_small.validation).accuracy
    # Degree 4 on the 99th percentile keeps a one-epoch network well above chance.
    assert 50.0 < report.accuracy <= 100.0
    assert report.accuracy == evaluate_network(result.model, mnist_small.validation).accuracy
    assert report.accuracy != original or report.nonfinite == 0
    assert steps == [(0, report.accuracy)]
    assert [site.name for site in report.sites] == ["relu1", "relu2"]
    for site in report.sites:
        fit = site.channels[0]
        assert fit.degree == 4 and fit.percentile == 99.0
        assert fit.lo < 0 < fit.hi
        assert 0.0 <= fit.outside_share < 0.05
        assert len(fit.coefficients) == 5
    assert report.he_cost["nonscalar_multiplications"] == 6
    # The original network is untouched.
    for key, value in trained_cnn2.state_dict().items():
        assert torch.equal(value, before[key])


def test_strategy_channel_granularity(trained_cnn2, mnist_small, calibration_inputs):
    settings = {"relu1": SiteSetting([2, 3, 4, 2, 3, 4], 95.0), "relu2": SiteSetting(3, 99.0)}
    result = _run(
        trained_cnn2,
        mnist_small,
        "all-at-once",
        calibration_inputs,
        settings=settings,
        granularity="channel",
    )
    relu1, relu2 = result.report.sites
    assert [fit.degree for fit in relu1.channels] == [2, 3, 4, 2, 3, 4]
    assert len(relu2.channels) == 12
    assert len({(fit.lo, fit.hi) for fit in relu2.channels}) > 1
    assert result.report.he_cost["sites"]["relu1"]["nonscalar_multiplications"] == 3


def test_strategy_stepwise_recalibrates(trained_cnn2, mnist_small, calibration_inputs):
    once = _run(trained_cnn2, mnist_small, "all-at-once", calibration_inputs)
    stepwise = _run(trained_cnn2, mnist_small, "stepwise", calibration_inputs)
    # relu1 is fitted on the original calibration in both strategies.
    assert stepwise.report.sites[0].channels[0].lo == once.report.sites[0].channels[0].lo
    # relu2 sees relu1's polynomial in stepwise, so its range differs.
    assert stepwise.report.sites[1].channels[0].lo != once.report.sites[1].channels[0].lo
    assert [step["site"] for step in stepwise.report.steps] == ["relu1", "relu2"]
    assert stepwise.report.accuracy == stepwise.report.steps[-1]["validation_accuracy"]


def test_strategy_cache_reuses_calibration(trained_cnn2, mnist_small, calibration_inputs):
    cache = CalibrationCache()
    first = _run(trained_cnn2, mnist_small, "stepwise", calibration_inputs, cache=cache)
    assert cache.calibrations == 2  # original network, then relu2 after relu1
    _run(trained_cnn2, mnist_small, "all-at-once", calibration_inputs, cache=cache)
    assert cache.calibrations == 2
    changed = _settings()
    changed["relu2"] = SiteSetting(2, 95.0)
    second = _run(
        trained_cnn2, mnist_small, "stepwise", calibration_inputs, cache=cache, settings=changed
    )
    # relu1 had equal settings, so the calibration of relu2 after it is reused.
    assert cache.calibrations == 2
    assert second.report.sites[0].to_dict() == first.report.sites[0].to_dict()
    assert second.statistics["relu2"] is first.statistics["relu2"]


def test_strategy_stepwise_retrain_downstream(trained_cnn2, mnist_small, calibration_inputs):
    before = {k: v.clone() for k, v in trained_cnn2.state_dict().items()}
    steps = []
    result = _run(
        trained_cnn2,
        mnist_small,
        "stepwise-retrain",
        calibration_inputs,
        settings=_settings(2, 95.0),
        train=mnist_small.train,
        retrain=RetrainOptions(epochs=1, lr=1e-3),
        on_step=lambda s, a: steps.append(s),
    )
    kinds = [step["kind"] for step in result.report.steps]
    # No retraining after the last site.
    assert kinds == ["substitute", "retrain", "substitute"]
    assert steps == [0, 1, 2]
    weights = result.model.state_dict()
    # Everything before relu1 is frozen; what follows it was trained.
    assert torch.equal(weights["conv1.weight"], before["conv1.weight"])
    assert not torch.equal(weights["conv2.weight"], before["conv2.weight"])
    assert not torch.equal(weights["fc1.weight"], before["fc1.weight"])
    for key, value in trained_cnn2.state_dict().items():
        assert torch.equal(value, before[key])
    assert result.configuration.weights is not None


def test_strategy_retrain_keeps_upstream_batchnorm(
    trained_lenet5, mnist_small, calibration_inputs
):
    settings = {"relu2": SiteSetting(2, 95.0), "relu3": SiteSetting(2, 95.0)}
    result = _run(
        trained_lenet5,
        mnist_small,
        "stepwise-retrain",
        calibration_inputs,
        settings=settings,
        train=mnist_small.train,
        retrain=RetrainOptions(epochs=1),
    )
    weights = result.model.state_dict()
    original = trained_lenet5.state_dict()
    # bn2 runs before relu2: frozen and in evaluation mode, so its statistics stay.
    assert torch.equal(weights["bn2.running_mean"], original["bn2.running_mean"])
    assert not torch.equal(weights["fc1.weight"], original["fc1.weight"])


def test_strategy_nonfinite_loss_stops_step(trained_cnn2, mnist_small, calibration_inputs):
    result = _run(
        trained_cnn2,
        mnist_small,
        "stepwise-retrain",
        calibration_inputs,
        settings=_settings(2, 95.0),
        train=mnist_small.train,
        retrain=RetrainOptions(epochs=1, lr=1e30, optimizer="sgd"),
    )
    retrain_steps = [step for step in result.report.steps if step["kind"] == "retrain"]
    assert len(retrain_steps) == 1
    assert (
        "non-finite" in retrain_steps[0]["error"].lower()
        or "nan" in retrain_steps[0]["error"].lower()
    )
    assert retrain_steps[0]["validation_accuracy"] is None
    assert np.isfinite(result.report.accuracy)


def test_strategy_nonfinite_logits_count_wrong():
    class Broken(torch.nn.Module):
        def forward(self, x):
            logits = torch.zeros(x.shape[0], 2)
            logits[:, 1] = 1.0
            logits[0, 0] = float("nan")  # sample 0 would be right by argmax otherwise
            return logits

    data = TensorDataset(torch.zeros(4, 1), torch.ones(4, dtype=torch.int64))
    evaluation = evaluate_network(Broken(), data)
    assert evaluation.nonfinite == 1
    assert evaluation.correct == 3
    assert evaluation.accuracy == 75.0


@pytest.mark.parametrize(
    ("settings", "options", "message"),
    [
        ({"relu9": SiteSetting(2, 95.0)}, {}, "unknown site"),
        ({"relu1": SiteSetting(-1, 95.0)}, {}, "degree"),
        ({"relu1": SiteSetting(2, 0)}, {}, "percentile"),
        ({"relu1": SiteSetting([2, 2], 95.0)}, {}, "granularity"),
        ({"relu1": SiteSetting(2, 95.0)}, {"strategy": "sideways"}, "strategy"),
        ({"relu1": SiteSetting(2, 95.0)}, {"strategy": "stepwise-retrain"}, "training set"),
    ],
)
def test_strategy_rejects_bad_arguments(
    trained_cnn2, mnist_small, calibration_inputs, settings, options, message
):
    strategy = options.pop("strategy", "all-at-once")
    with pytest.raises(ValueError, match=message):
        _run(trained_cnn2, mnist_small, strategy, calibration_inputs, settings=settings)
