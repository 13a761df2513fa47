"""``polysearch fit`` through a real subprocess."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest


def test_fit_command_json_relu_quadratic(run_cli):
    result = run_cli("fit", "--function", "relu", "--degree", "2", "--range", "-3", "3", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    # The minimax quadratic of ReLU on [-3, 3] is 3/16 + x/2 + x^2/6 with error 3/16.
    np.testing.assert_allclose(record["coefficients"], [3 / 16, 1 / 2, 1 / 6], atol=1e-9)
    assert record["max_error"] == pytest.approx(0.1875, abs=1e-9)
    assert record["range"] == [-3.0, 3.0]
    assert record["degree"] == 2
    assert record["function"] == "relu"
    assert record["converged"] is True
    assert record["iterations"] >= 1
    assert len(record["chebyshev"]) == 3
    assert len(record["points"]) == 4


def test_fit_command_range_with_equals_and_comma(run_cli):
    result = run_cli("fit", "--function", "gelu", "--degree", "4", "--range=-1e4,0", "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["range"] == [-10000.0, 0.0]
    assert record["converged"] is True


def test_fit_command_prints_table(run_cli):
    result = run_cli(
        "fit",
        "--function",
        "leaky_relu",
        "--negative-slope",
        "0.2",
        "--degree",
        "3",
        "--range",
        "-3",
        "-1",
    )
    assert result.returncode == 0, result.stderr
    assert "leaky_relu, negative_slope = 0.2, degree 3 on [-3, -1]" in result.stdout
    assert "max error: 0 " in result.stdout
    assert re.search(r"^  x\^0 +0\.0$", result.stdout, re.MULTILINE)
    assert re.search(r"^  x\^1 +0\.2$", result.stdout, re.MULTILINE)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--degree", "2", "--range", "3", "-3"], "lo must not exceed hi"),
        (["--degree", "-1", "--range", "-3", "3"], "got -1"),
        (["--function", "swish", "--degree", "2", "--range", "-3", "3"], "swish"),
        (["--degree", "2", "--range", "-3"], "two numbers"),
        (
            ["--degree", "8", "--range", "-1", "2", "--max-iter", "1", "--strict"],
            "did not converge",
        ),
    ],
)
def test_fit_command_bad_input_exits_2(run_cli, arguments, message):
    result = run_cli("fit", *arguments)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_fit_command_zero_width_warns(run_cli):
    result = run_cli("fit", "--degree", "4", "--range", "1", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert "zero-width range" in result.stderr
    record = json.loads(result.stdout)
    assert record["coefficients"] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert record["max_error"] == 0.0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--function", "swish", "--degree", "2", "--range", "-3", "3"],
            "unknown --function 'swish'; choose one of relu, leaky_relu, elu, gelu, silu, "
            "sigmoid, tanh",
        ),
        (
            ["--degree", "2", "--range=-1e308,1e308"],
            "range [-1e+308, 1e+308] is too wide: its width hi - lo must be at most "
            "1.79769e+308, the largest float64",
        ),
    ],
)
def test_fit_command_error_line_exact(run_cli, arguments, message):
    result = run_cli("fit", *arguments)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"polysearch fit: error: {message}"]


def test_fit_command_one_iteration_singular(run_cli):
    result = run_cli(
        "--log-level", "ERROR", "fit", "--degree", "8", "--range", "-1", "2", "--max-iter", "1"
    )

    assert result.returncode == 0, result.stderr
    assert "(NOT converged after 1 iteration)" in result.stdout
