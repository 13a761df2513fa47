"""Tests of the numpy activations against scalar formulas from the math module."""

from __future__ import annotations

import math

import numpy as np
import pytest

from approx.functions import ACTIVATIONS, describe_function, get_function

POINTS = [-30.0, -3.0, -1.0, -0.25, 0.0, 0.25, 1.0, 3.0, 30.0]


def scalar_reference(name: str, x: float) -> float:
    if name == "relu":
        return max(x, 0.0)
    if name == "leaky_relu":
        return x if x >= 0.0 else 0.01 * x
    if name == "elu":
        return x if x > 0.0 else math.exp(x) - 1.0
    if name == "gelu":
        return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))
    if name == "sigmoid":
        return 1.0 / (1.0 + math.exp(-x))
    if name == "silu":
        return x / (1.0 + math.exp(-x))
    if name == "tanh":
        return math.tanh(x)
    raise AssertionError(name)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_matches_scalar_formula(name):
    x = np.array(POINTS)
    expected = [scalar_reference(name, value) for value in POINTS]
    np.testing.assert_allclose(ACTIVATIONS[name](x), expected, rtol=1e-14, atol=1e-300)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_keeps_shape_and_is_finite_at_extremes(name):
    x = np.array([[-1e6, -700.0], [700.0, 1e6]])
    with np.errstate(all="raise"):
        values = ACTIVATIONS[name](x)
    assert values.shape == x.shape
    assert np.isfinite(values).all()


def test_describe_function_leaky_relu_slope():
    spec = describe_function("leaky_relu", negative_slope=0.2)
    np.testing.assert_allclose(spec.function(np.array([-2.0, 3.0])), [-0.4, 3.0])
    assert spec.special_points == (0.0,)
    assert spec.linear_pieces[0].slope == 0.2


def test_describe_function_elu_alpha():
    _, function = get_function("elu", alpha=0.5)
    assert function(np.array([-1.0]))[0] == pytest.approx(0.5 * (math.exp(-1.0) - 1.0))


def test_describe_function_normalises_name():
    name, function = get_function("Leaky-ReLU")
    assert name == "leaky_relu"
    assert function(np.array([-1.0]))[0] == pytest.approx(-0.01)


def test_describe_function_callable_name_and_points():
    def bent(x):
        return np.abs(x - 1.0)

    spec = describe_function(bent, special_points=(1.0,))
    assert spec.name == "bent"
    assert spec.special_points == (1.0,)
    assert spec.linear_pieces == ()


def test_describe_function_rejects_bad_input():
    with pytest.raises(ValueError, match="softplus"):
        describe_function("softplus")
    with pytest.raises(ValueError, match="alpha"):
        describe_function("relu", alpha=1.0)
    with pytest.raises(ValueError, match="named activations"):
        describe_function(np.tanh, alpha=1.0)
    with pytest.raises(TypeError, match="negative_slope"):
        describe_function("leaky_relu", negative_slope="0.1")
    with pytest.raises(ValueError, match="nan"):
        describe_function("elu", alpha=float("nan"))
    with pytest.raises(TypeError, match="list"):
        describe_function([1, 2])
    with pytest.raises(ValueError, match="special points"):
        describe_function(np.tanh, special_points=(float("inf"),))
