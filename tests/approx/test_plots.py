"""Site figures: PNG files, no figure left open."""

from __future__ import annotations

import stat

import matplotlib.pyplot as plt

from approx.plots import plot_result, plot_statistics
from approx.strategies import SiteSetting, approximate
from tests.approx.conftest import umask

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plots_write_png_and_close_figures(
    trained_cnn2, mnist_small, calibration_inputs, tmp_path
):
    settings = {"relu1": SiteSetting([2, 3, 4, 2, 3, 4], 95.0), "relu2": SiteSetting(2, 95.0)}
    result = approximate(
        trained_cnn2,
        settings,
        strategy="all-at-once",
        granularity="channel",
        calibration_inputs=calibration_inputs,
        validation=mnist_small.validation,
        device="cpu",
    )
    result.report.sites[1].channels = result.report.sites[1].channels[:2]  # fewer figures
    with umask(0o022):
        paths = plot_result(result.report.sites[:1], result.statistics, tmp_path / "fits")
    # One figure for the site and one per channel.
    assert len(paths) == 1 + 6
    for path in paths:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        # The mode a plain open() gives under umask 022, not mkstemp's 0600.
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    distributions = plot_statistics(result.statistics, tmp_path / "distributions", percentile=95.0)
    assert sorted(path.name for path in distributions) == ["relu1.png", "relu2.png"]
    assert plt.get_fignums() == []
