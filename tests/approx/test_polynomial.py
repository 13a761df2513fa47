"""Polynomial activation modules against numpy evaluation of their coefficients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.polynomial import chebyshev as np_chebyshev
from numpy.polynomial import polynomial as np_polynomial

from approx.polynomial import COUNT_STRIDE, PolynomialActivation, power_coefficients


def _power_in_x(chebyshev: np.ndarray, lo: float, hi: float) -> np.ndarray:
    # Independent conversion: fit the series sampled at degree + 1 points with polyfit.
    x = np.linspace(lo, hi, len(chebyshev))
    t = (2 * x - lo - hi) / (hi - lo)
    return np_polynomial.polyfit(x, np_chebyshev.chebval(t, chebyshev), len(chebyshev) - 1)


@pytest.mark.parametrize("degree", [0, 1, 2, 5, 8])
def test_polynomial_layer_matches_numpy(degree):
    rng = np.random.default_rng(degree)
    chebyshev = rng.standard_normal(degree + 1)
    lo, hi = -2.5, 4.0
    module = PolynomialActivation(chebyshev, [lo, hi])
    x = torch.linspace(-5.0, 7.0, 301, dtype=torch.float64).reshape(1, 301)
    expected = np_chebyshev.chebval((2 * x.numpy() - lo - hi) / (hi - lo), chebyshev)
    # Outside the range the module returns the polynomial's true value, no clipping.
    assert module(x).numpy() == pytest.approx(expected, rel=1e-10, abs=1e-10)
    power = _power_in_x(chebyshev, lo, hi)
    assert np_polynomial.polyval(x.numpy(), power) == pytest.approx(expected, rel=1e-8, abs=1e-8)


def test_polynomial_power_coefficients_of_known_series():
    # On [0, 2], t = x - 1 and T2(t) = 2t^2 - 1 = 2x^2 - 4x + 1.
    assert power_coefficients(np.array([0.0, 0.0, 1.0]), 0.0, 2.0) == pytest.approx([1, -4, 2])


def test_polynomial_per_channel_and_float32():
    chebyshev = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.5]])
    ranges = np.array([[-1.0, 1.0], [10.0, 11.0]])
    module = PolynomialActivation(chebyshev, ranges)
    x = torch.zeros(3, 2, 4, 4, dtype=torch.float32)
    x[:, 0] = 0.25
    x[:, 1] = 10.75
    y = module(x)
    assert y.dtype == torch.float32
    # Channel 0: T1(t) with t = x = 0.25. Channel 1: t = 2 * 10.75 - 21 = 0.5,
    # 1 + 0.5 * T2(0.5) = 1 + 0.5 * (2 * 0.25 - 1) = 0.75.
    assert torch.allclose(y[:, 0], torch.full((3, 4, 4), 0.25))
    assert torch.allclose(y[:, 1], torch.full((3, 4, 4), 0.75), atol=1e-6)


def test_polynomial_outside_share_per_channel():
    module = PolynomialActivation(np.array([[0.0, 1.0], [0.0, 1.0]]), [[-1.0, 1.0], [0.0, 4.0]])
    x = torch.tensor([[-2.0, 1.0], [0.5, 5.0], [1.5, -1.0], [0.0, 2.0]])  # (N=4, C=2)
    module(x)
    # Channel 0: -2.0 and 1.5 are outside [-1, 1]; channel 1: 5.0 and -1.0 are outside [0, 4].
    assert module.outside_share().tolist() == [0.5, 0.5]
    module.reset_counts()
    assert module.outside_share().tolist() == [0.0, 0.0]


def test_polynomial_outside_share_large_batch_sampled():
    module = PolynomialActivation(np.array([[0.0, 1.0], [0.0, 1.0]]), [[-1.0, 1.0], [-1.0, 1.0]])
    # (N=64, C=2, 3): in channel 0 one value in three is outside [-1, 1], in channel 1 none.
    x = torch.zeros(64, 2, 3)
    x[:, 0, 0] = 2.0
    module(x)
    assert module.outside_share().tolist() == pytest.approx([1 / 3, 0.0])
    # Every COUNT_STRIDE-th sample is counted: 8 of 64, 3 values per channel each.
    assert module.seen == (64 // COUNT_STRIDE) * 3


def test_polynomial_inplace_writes_input():
    module = PolynomialActivation([0.0, 0.0, 1.0], [-1.0, 1.0], inplace=True)
    x = torch.tensor([[0.5, 1.0]])
    y = module(x)
    assert y is x
    assert x.tolist() == [[-0.5, 1.0]]  # T2(t) = 2t^2 - 1


def test_polynomial_gradient_flows():
    module = PolynomialActivation([0.0, 0.0, 1.0], [-1.0, 1.0])
    x = torch.tensor([0.5, -0.25], requires_grad=True)
    module(x).sum().backward()
    assert x.grad.tolist() == pytest.approx([2.0, -1.0])  # d/dx (2x^2 - 1) = 4x


def test_polynomial_rejects_bad_range():
    with pytest.raises(ValueError, match="lo < hi"):
        PolynomialActivation([1.0, 2.0], [1.0, 1.0])
