"""The calibrate and approximate commands through a real subprocess."""

from __future__ import annotations

import json

import pytest

LIMIT = "1000"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, mnist_small, trained_cnn2):
    from models.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("cli") / "cnn2.pt"
    save_checkpoint(
        path,
        trained_cnn2,
        network="cnn2",
        dataset="mnist",
        input_shape=mnist_small.input_shape,
        num_classes=10,
        mean=mnist_small.mean,
        std=mnist_small.std,
        options={"seed": 0},
        accuracies={},
    )
    return path


def test_cli_calibrate_prints_channel_ranges(run_cli, checkpoint):
    completed = run_cli(
        "calibrate",
        "--checkpoint",
        str(checkpoint),
        "--limit",
        LIMIT,
        "--calibration-size",
        "200",
        "--granularity",
        "channel",
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0].startswith("2 sites, 200 calibration images")
    assert sum(line.strip().startswith("channel") for line in lines) == 6 + 12


def test_cli_approximate_saves_and_applies_config(run_cli, checkpoint, tmp_path):
    output = tmp_path / "config.json"
    completed = run_cli(
        "approximate",
        "--checkpoint",
        str(checkpoint),
        "--limit",
        LIMIT,
        "--calibration-size",
        "200",
        "--strategy",
        "stepwise",
        "--degree",
        "3",
        "--percentile",
        "99",
        "--site",
        "relu2=2:95",
        "--output",
        str(output),
    )
    assert completed.returncode == 0, completed.stderr
    stdout = completed.stdout
    assert "test accuracy:" in stdout
    data = json.loads(output.read_text())
    assert [site["channels"][0]["degree"] for site in data["sites"]] == [3, 2]
    applied = run_cli(
        "approximate", "--checkpoint", str(checkpoint), "--limit", LIMIT, "--config", str(output)
    )
    assert applied.returncode == 0, applied.stderr

    def accuracy_lines(text):
        return [line for line in text.splitlines() if line.startswith(("validation", "test"))]

    assert accuracy_lines(applied.stdout) == accuracy_lines(stdout)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--site", "relu1=2"], "expected NAME=DEGREE:PERCENTILE"),
        (["--site", "relu9=2:95"], "unknown site 'relu9'"),
        (["--percentile", "0"], "percentile must be in (0, 100]"),
        (["--percentile", "101"], "percentile must be in (0, 100]"),
        (["--degree", "-1"], "degree must be between 0 and 32"),
    ],
)
def test_cli_approximate_bad_input_exits_2(run_cli, checkpoint, options, message):
    completed = run_cli(
        "approximate",
        "--checkpoint",
        str(checkpoint),
        "--limit",
        "200",
        "--calibration-size",
        "50",
        *options,
    )
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith("polysearch approximate: error:")
    assert message in lines[0]


def test_cli_approximate_edited_config_exits_2(
    run_cli, checkpoint, trained_cnn2, mnist_small, calibration_inputs, tmp_path, snapshot_files
):
    from approx.strategies import SiteSetting, approximate

    result = approximate(
        trained_cnn2,
        {"relu1": SiteSetting(3, 97.0), "relu2": SiteSetting(2, 95.0)},
        strategy="all-at-once",
        calibration_inputs=calibration_inputs,
        validation=mnist_small.validation,
        device="cpu",
    )
    path = result.configuration.save(tmp_path / "config.json")
    data = json.loads(path.read_text())
    data["sites"][1]["channels"][0]["degree"] = 5
    path.write_text(json.dumps(data))
    before = snapshot_files(tmp_path)

    completed = run_cli(
        "approximate", "--checkpoint", str(checkpoint), "--limit", "200", "--config", str(path)
    )

    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert lines[0] == (
        f"polysearch approximate: error: {path}: site relu2 channel 0: field 'degree' is 5, "
        "so field 'coefficients' needs 6 values, got 3"
    )
    assert snapshot_files(tmp_path) == before


@pytest.mark.parametrize("command", ["calibrate", "approximate"])
@pytest.mark.parametrize(
    ("size", "message"),
    [
        ("0", "sample size must be at least 1 value per channel, got 0"),
        ("-5", "sample size must be at least 1 value per channel, got -5"),
        ("1.5", "--sample-size must be an integer, got '1.5'"),
    ],
)
def test_cli_invalid_sample_size_exits_2(run_cli, checkpoint, command, size, message):
    completed = run_cli(
        command, "--checkpoint", str(checkpoint), "--limit", "200", "--sample-size", size
    )

    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert lines[0] == f"polysearch {command}: error: {message}"
    assert completed.stdout == ""
