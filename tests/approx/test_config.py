"""Configurations: JSON round trip, retrained weights, same accuracy when applied."""

from __future__ import annotations

import json
import stat

import pytest

from approx.config import Configuration
from approx.strategies import RetrainOptions, SiteSetting, approximate
from approx.substitute import evaluate_network
from tests.approx.conftest import umask


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
    with umask(0o022):
        path = result.configuration.save(tmp_path / "retrained.json")
    assert (tmp_path / "retrained.weights.pt").is_file()
    # Both files get the mode a plain open() gives under umask 022, not mkstemp's 0600.
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "retrained.weights.pt").stat().st_mode) == 0o644
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
    # The message uses the networks' command-line names, not their class names.
    with pytest.raises(ValueError, match="^the configuration is for network cnn2, got lenet5$"):
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


@pytest.fixture(scope="module")
def saved_config(trained_cnn2, mnist_small, calibration_inputs, tmp_path_factory):
    """The JSON of a channel-granularity all-at-once configuration of cnn2."""
    result = approximate(
        trained_cnn2,
        {"relu1": SiteSetting(3, 97.0), "relu2": SiteSetting(2, 95.0)},
        strategy="all-at-once",
        granularity="channel",
        calibration_inputs=calibration_inputs,
        validation=mnist_small.validation,
        device="cpu",
    )
    path = result.configuration.save(tmp_path_factory.mktemp("config") / "config.json")
    return json.loads(path.read_text())


def _set(data, site, channel, field, value):
    changed = json.loads(json.dumps(data))
    changed["sites"][site]["channels"][channel][field] = value
    return changed


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("coefficients", [5.0, 0.0, 0.0, 0.0], "does not describe the polynomial"),
        ("coefficients", [float("nan"), 0.0, 0.0, 0.0], "list of finite numbers"),
        (
            "coefficients",
            [0.0, 1.0],
            "'degree' is 3, so field 'coefficients' needs 4 values, got 2",
        ),
        ("chebyshev", [0.0, "1", 0.0, 0.0], "list of finite numbers"),
        ("chebyshev", [float("inf"), 0.0, 0.0, 0.0], "list of finite numbers"),
        ("degree", 5, "'degree' is 5, so field 'coefficients' needs 6 values, got 4"),
        ("degree", 2.5, "must be an integer from 0 to 32"),
        ("degree", True, "must be an integer from 0 to 32"),
        ("percentile", 0, "must be in (0, 100]"),
        ("range", [2.0, 1.0], "finite lo < hi"),
        ("range", [float("-inf"), 1.0], "finite lo < hi"),
        ("max_error", float("nan"), "finite number >= 0"),
        ("converged", "yes", "true or false"),
        ("outside_share", 1.5, "must be in [0, 1]"),
    ],
)
def test_config_load_rejects_invalid_channel_field(saved_config, tmp_path, field, value, message):
    path = tmp_path / "edited.json"
    # Channel 4 of relu1 (degree 3), so the message must name that exact spot.
    path.write_text(json.dumps(_set(saved_config, 0, 4, field, value)))

    with pytest.raises(ValueError) as error:
        Configuration.load(path)

    text = str(error.value)
    assert text.startswith(f"{path}: site relu1 channel 4: field '")
    assert f"field '{field}'" in text
    assert message in text


def test_config_load_rejects_slightly_changed_coefficient(saved_config, tmp_path):
    data = json.loads(json.dumps(saved_config))
    coefficients = data["sites"][1]["channels"][0]["coefficients"]
    # A relative change of 1e-6 in one coefficient is far above the rounding of the
    # conversion (about 1e-15) and must be caught.
    coefficients[2] *= 1 + 1e-6
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))

    with pytest.raises(ValueError, match="site relu2 channel 0: field 'coefficients'"):
        Configuration.load(path)


def test_config_load_accepts_saved_file(saved_config, tmp_path):
    path = tmp_path / "same.json"
    path.write_text(json.dumps(saved_config))

    loaded = Configuration.load(path)

    assert [len(site.channels) for site in loaded.sites] == [6, 12]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strategy": "greedy"}, "field 'strategy' must be one of all-at-once"),
        ({"granularity": "block"}, "field 'granularity' must be one of layer, channel"),
        ({"accuracy": 120.0}, "field 'accuracy' must be a percentage"),
        ({"sites": []}, "field 'sites' must be a non-empty list"),
        ({"network": ""}, "field 'network' must be a network class name"),
    ],
)
def test_config_load_rejects_invalid_top_field(saved_config, tmp_path, change, message):
    path = tmp_path / "edited.json"
    path.write_text(json.dumps({**saved_config, **change}))

    with pytest.raises(ValueError, match=message):
        Configuration.load(path)


def test_config_load_rejects_site_granularity_mismatch(saved_config, tmp_path):
    data = json.loads(json.dumps(saved_config))
    data["sites"][1]["granularity"] = "layer"
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))

    with pytest.raises(ValueError, match="site relu2: field 'granularity' must be 'channel'"):
        Configuration.load(path)


def test_config_agreement_holds_for_wide_and_offset_ranges():
    from approx.config_checks import AGREEMENT_TOLERANCE, _check_agreement
    from approx.polynomial import power_coefficients
    from approx.remez import fit_minimax

    # Ranges far from zero make the power coefficients ill-conditioned; the check must
    # still accept the fitter's own conversion.
    for lo, hi, degree in [(-1e4, 0.0, 32), (1e3, 1e3 + 1, 8), (-1e-3, 1e-3, 16)]:
        fit = fit_minimax("gelu", lo, hi, degree)
        power = power_coefficients(fit.chebyshev, lo, hi)
        entry = {"range": [lo, hi], "coefficients": list(power), "chebyshev": list(fit.chebyshev)}
        _check_agreement(entry, "test")
    assert AGREEMENT_TOLERANCE == 1e-9
