"""Activation statistics: percentiles, channels, bounded samples, an unchanged network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from approx.calibration import calibrate, check_percentile
from approx.sites import trace_sites


def _identity_relu() -> nn.Module:
    # The site's input is the network input itself, so its distribution is known exactly.
    return nn.Sequential(nn.Identity(), nn.ReLU())


def test_calibration_percentiles_match_numpy():
    rng = np.random.default_rng(1)
    values = rng.standard_normal((1000, 3)).astype(np.float32)  # (N, C)
    statistics = calibrate(_identity_relu(), None, torch.from_numpy(values), batch_size=128)
    site = statistics["1"]
    flat = values.astype(np.float64).ravel()
    for percentile in (50.0, 90.0, 95.0, 99.9):
        expected = np.percentile(flat, [(100 - percentile) / 2, (100 + percentile) / 2])
        # All 1000 values per channel fit in the sample, so the quantiles are exact.
        assert site.range(percentile) == pytest.approx(tuple(expected), abs=1e-12)
    assert site.range(100) == (float(flat.min()), float(flat.max()))


def test_calibration_per_channel_ranges():
    values = np.stack([np.arange(100.0), 10.0 * np.arange(100.0) - 500.0], axis=1)  # (100, 2)
    statistics = calibrate(_identity_relu(), None, torch.tensor(values, dtype=torch.float32))
    ranges = statistics["1"].channel_ranges(90)
    for channel in range(2):
        expected = np.percentile(values[:, channel], [5, 95])
        assert ranges[channel] == pytest.approx(expected, abs=1e-4)
    # Per-channel percentiles are accepted as a list.
    mixed = statistics["1"].channel_ranges([100, 50])
    assert mixed[0] == pytest.approx([0.0, 99.0])
    assert mixed[1] == pytest.approx(np.percentile(values[:, 1], [25, 75]), abs=1e-4)


def test_calibration_nchw_channels_and_outputs():
    x = torch.zeros(4, 2, 3, 3)
    x[:, 0] = -1.0
    x[:, 1] = torch.arange(9.0).reshape(3, 3)
    statistics = calibrate(_identity_relu(), None, x)["1"]
    assert statistics.channels == 2
    assert statistics.inputs.count == 4 * 9
    assert statistics.inputs.minimum.tolist() == [-1.0, 0.0]
    assert statistics.inputs.maximum.tolist() == [-1.0, 8.0]
    # The output is the ReLU of the input: channel 0 becomes all zeros.
    assert statistics.outputs.maximum.tolist() == [0.0, 8.0]


def test_calibration_sample_is_bounded_and_uniform():
    rng = np.random.default_rng(2)
    values = rng.uniform(0.0, 1.0, size=(20000, 2)).astype(np.float32)
    statistics = calibrate(
        _identity_relu(), None, torch.from_numpy(values), batch_size=1000, sample_size=2000
    )["1"]
    assert [sample.size for sample in statistics.inputs.samples] == [2000, 2000]
    assert statistics.inputs.count == 20000
    # Exact extremes despite sampling.
    assert statistics.inputs.minimum[0] == pytest.approx(values[:, 0].min())
    assert statistics.inputs.maximum[1] == pytest.approx(values[:, 1].max())
    # A uniform sample of 2000 from U(0, 1): quantile errors are about 0.01 (3 sigma 0.03).
    lo, hi = statistics.channel_ranges(80)[0]
    assert lo == pytest.approx(0.1, abs=0.03)
    assert hi == pytest.approx(0.9, abs=0.03)


def test_calibration_records_inplace_input_before_overwrite():
    model = nn.Sequential(nn.Identity(), nn.ReLU(inplace=True))
    x = torch.linspace(-2.0, 2.0, 50).reshape(50, 1)
    statistics = calibrate(model, None, x)["1"]
    assert statistics.inputs.minimum[0] == pytest.approx(-2.0)
    assert statistics.outputs.minimum[0] == pytest.approx(0.0)


def test_calibration_counts_nonfinite_inputs():
    x = torch.tensor([[1.0], [float("nan")], [float("inf")], [-3.0]])
    statistics = calibrate(_identity_relu(), None, x)["1"]
    assert statistics.inputs.nonfinite.tolist() == [2]
    assert statistics.range(100) == (-3.0, 1.0)


def test_calibration_leaves_network_unchanged(trained_lenet5, calibration_inputs):
    model = trained_lenet5
    model.train()  # BatchNorm would update its running statistics in training mode
    model.relu3.eval()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    flags = {name: module.training for name, module in model.named_modules()}
    graph_module, sites = trace_sites(model)
    calibrate(graph_module, sites, calibration_inputs, batch_size=100)
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert {name: module.training for name, module in model.named_modules()} == flags
    model.eval()


@pytest.mark.parametrize("percentile", [0, -1, 101, float("nan")])
def test_calibration_rejects_bad_percentile(percentile):
    with pytest.raises(ValueError, match="percentile"):
        check_percentile(percentile)


@pytest.mark.parametrize(("size", "error"), [(0, ValueError), (-5, ValueError), (2.0, TypeError)])
def test_sample_size_rejected_everywhere(trained_cnn2, calibration_inputs, size, error):
    from approx.cache import CalibrationCache
    from approx.calibration import check_sample_size

    with pytest.raises(error, match="sample size"):
        check_sample_size(size)
    with pytest.raises(error, match="sample size"):
        CalibrationCache(sample_size=size)
    with pytest.raises(error, match="sample size"):
        calibrate(trained_cnn2, None, calibration_inputs[:10], sample_size=size)
