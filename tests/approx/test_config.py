"""Configurations: JSON round trip, retrained weights, same accuracy when applied."""

from __future__ import annotations

import json

import pytest

from approx.config import Configuration
from approx.strategies import RetrainOptions, SiteSetting, approximate
from approx.substitute import evaluate_network


def _approximate(model, splits, calibration, strategy, **options):
    settings = {"relu1": SiteSetting(3, 97.0), "relu2": SiteSetting(2, 95.0)}
    return approximate(
        model,
        settings,
        strategy=strategy,
        calibration_inputs=calibration,
        validation=splits.validation,
        device="cpu",
        **options,
    )


def test_config_round_trip_same_accuracy(trained_cnn2, mnist_small, calibration_inputs, tmp_path):
    result = _approximate(trained_cnn2, mnist_small, calibration_inputs, "stepwise")
    path = result.configuration.save(tmp_path / "config.json")
    loaded = Configuration.load(path)
    assert [site.to_dict() for site in loaded.sites] == [
        site.to_dict() for site in result.report.sites
    ]
    rebuilt = loaded.build(trained_cnn2)
    accuracy = evaluate_network(rebuilt, mnist_small.validation).accuracy
    assert accuracy == result.report.accuracy
    assert not (tmp_path / "config.weights.pt").exists()


def test_config_retrained_weights_round_trip(
    trained_cnn2, mnist_small, calibration_inputs, tmp_path
):
    result = _approximate(
        trained_cnn2,
        mnist_small,
        calibration_inputs,
        "stepwise-retrain",
        train=mnist_small.train,
        retrain=RetrainOptions(epochs=1),
    )
    path = result.configuration.save(tmp_path / "retrained.json")
    assert (tmp_path / "retrained.weights.pt").is_file()
    rebuilt = Configuration.load(path).build(trained_cnn2)
    assert evaluate_network(rebuilt, mnist_small.validation).accuracy == result.report.accuracy
    # Without the weights the polynomials alone give another network.
    (tmp_path / "retrained.weights.pt").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="SHA-256"):
        Configuration.load(path)
    (tmp_path / "retrained.weights.pt").unlink()
    with pytest.raises(FileNotFoundError, match="weights"):
        Configuration.load(path)


def test_config_refuses_overwrite(trained_cnn2, mnist_small, calibration_inputs, tmp_path):
    result = _approximate(trained_cnn2, mnist_small, calibration_inputs, "all-at-once")
    path = tmp_path / "config.json"
    path.write_text("keep me")
    with pytest.raises(ValueError, match="already exists"):
        result.configuration.save(path)
    assert path.read_text() == "keep me"
    result.configuration.save(path, overwrite=True)
    assert json.loads(path.read_text())["strategy"] == "all-at-once"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left


def test_config_rejects_other_network(
    trained_cnn2, trained_lenet5, mnist_small, calibration_inputs, tmp_path
):
    result = _approximate(trained_cnn2, mnist_small, calibration_inputs, "all-at-once")
    with pytest.raises(ValueError, match="CNN2"):
        result.configuration.build(trained_lenet5)


def test_config_rejects_invalid_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid JSON"):
        Configuration.load(path)
    path.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="not a polysearch configuration"):
        Configuration.load(path)
    with pytest.raises(FileNotFoundError):
        Configuration.load(tmp_path / "missing.json")
