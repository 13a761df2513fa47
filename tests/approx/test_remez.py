"""Tests of the Remez minimax fitter against independently computed values.

The independent reference is the discrete minimax problem solved as a linear program: minimise E
subject to |f(x_j) - p(x_j)| <= E on a grid of 20,001 points uniform in arccos(t) plus the
function's kinks. Its optimum E_lp is a lower bound on the true minimax error E*, because the
grid is a subset of the range. The LP polynomial's maximum error on a 400,001-point grid is an
upper bound on E* (up to that grid's own resolution). Between the two, the discretisation gap
at a smooth extremum is about (n + 1)^2 h^2 / 8 relative, with h = pi / 20000 the grid step in
arccos(t): below 1e-6 for n <= 16. Extrema at kinks are grid points, so they lose nothing.
"""

from __future__ import annotations

import functools
import json
import math
import warnings

import numpy as np
import pytest
from numpy.polynomial import chebyshev as cheb
from scipy.optimize import linprog

from approx.functions import describe_function
from approx.remez import (
    ConvergenceError,
    ConvergenceWarning,
    DegenerateRangeWarning,
    MinimaxFit,
    fit_minimax,
    fit_minimax_batch,
)

NAMED = ("relu", "leaky_relu", "elu", "gelu", "silu", "sigmoid", "tanh")
# Relative discretisation allowance of the LP reference (see the module docstring), with margin.
LP_RTOL = 3e-6
# Absolute allowance for HiGHS run with primal and dual feasibility tolerances of 1e-10.
LP_ATOL = 1e-9


@functools.cache
def linear_program_minimax(name: str, lo: float, hi: float, degree: int) -> tuple[float, float]:
    """Return (E_lp, upper bound on E*) for a named function, from the discrete LP."""
    spec = describe_function(name)
    mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    t = -np.cos(np.linspace(0.0, np.pi, 20001))
    kinks = [(point - mid) / half for point in spec.special_points if lo < point < hi]
    t = np.sort(np.concatenate([t, kinks]))
    values = spec.function(mid + half * t)
    vander = cheb.chebvander(t, degree)
    ones = np.ones((len(t), 1))
    # Variables: Chebyshev coefficients c_0..c_n and the bound E; minimise E.
    a_ub = np.block([[vander, -ones], [-vander, -ones]])
    b_ub = np.concatenate([values, -values])
    objective = np.zeros(degree + 2)
    objective[-1] = 1.0
    result = linprog(
        objective,
        A_ub=a_ub,
        b_ub=b_ub,
        bounds=[(None, None)] * (degree + 1) + [(0.0, None)],
        method="highs",
        options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10},
    )
    assert result.status == 0, result.message
    dense = -np.cos(np.linspace(0.0, np.pi, 400001))
    upper = np.abs(spec.function(mid + half * dense) - cheb.chebval(dense, result.x[:-1])).max()
    return float(result.fun), float(upper)


def dense_max_error(fit: MinimaxFit, function) -> float:
    """Return max |f - p| of a fit on 400,001 points uniform in arccos plus the fit's points."""
    t = -np.cos(np.linspace(0.0, np.pi, 400001))
    x = np.concatenate([0.5 * (fit.lo + fit.hi) + 0.5 * (fit.hi - fit.lo) * t, fit.points])
    return float(np.abs(function(x) - fit(x)).max())


# Cases for the LP comparison: every named function at degrees 0..16 on the asymmetric ranges
# seen in practice, [-14.59, 1.04] and [-0.5, 1.0], and a symmetric one. High degrees of smooth
# functions use the wide ranges, where E* stays far above the LP's absolute tolerance.
LP_CASES = [
    (name, lo, hi, degree)
    for name in NAMED
    for degree, (lo, hi) in zip(
        (0, 2, 3, 5, 8, 16),
        ((-0.5, 1.0), (-14.59, 1.04), (-0.5, 1.0), (-6.0, 6.0), (-14.59, 1.04), (-6.0, 6.0)),
        strict=True,
    )
] + [
    ("relu", -0.5, 1.0, 4),
    ("relu", -0.5, 1.0, 8),
    ("relu", -14.59, 1.04, 12),
    ("leaky_relu", -0.5, 1.0, 12),
    ("elu", -0.5, 1.0, 16),
]


@pytest.mark.parametrize(("name", "lo", "hi", "degree"), LP_CASES)
def test_fit_minimax_matches_linear_program(name, lo, hi, degree):
    fit = fit_minimax(name, lo, hi, degree)
    lp_error, lp_upper = linear_program_minimax(name, lo, hi, degree)
    assert fit.converged
    # E_lp <= E* <= fit.max_error: no polynomial beats the minimax on the grid.
    assert fit.max_error >= lp_error - LP_ATOL
    # The fit is no worse than the LP polynomial itself.
    assert fit.max_error <= lp_upper * (1.0 + 1e-8) + LP_ATOL
    # E* exceeds E_lp by the discretisation gap only.
    assert fit.max_error - lp_error <= LP_RTOL * lp_error + LP_ATOL


@pytest.mark.parametrize(("name", "lo", "hi", "degree"), LP_CASES)
def test_fit_minimax_reports_true_max_error(name, lo, hi, degree):
    fit = fit_minimax(name, lo, hi, degree)
    measured = dense_max_error(fit, describe_function(name).function)
    # The reported maximum is measured after local refinement, so a denser grid never finds
    # a larger error beyond rounding.
    assert measured <= fit.max_error * (1.0 + 1e-9) + 1e-14
    assert measured >= fit.max_error * (1.0 - 1e-6)


@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize("degree", range(0, 17))
def test_fit_minimax_equioscillates(name, degree):
    lo, hi = -4.0, 2.5
    fit = fit_minimax(name, lo, hi, degree)
    error = describe_function(name).function(fit.points) - fit(fit.points)
    # Chebyshev's alternation theorem: the minimax error reaches +-E* with alternating signs at
    # n + 2 points at least; the Remez reference is such a set.
    assert fit.converged
    assert len(fit.points) == degree + 2
    assert np.all(np.diff(fit.points) > 0.0)
    assert np.all(np.sign(error[1:]) == -np.sign(error[:-1]))
    # Within the tolerance 1e-10 plus the rounding allowance of the fitter, 64 eps max |f|.
    rounding = 64.0 * np.finfo(np.float64).eps * 4.0
    assert np.all(np.abs(error) >= fit.max_error * (1.0 - 1e-9) - rounding)
    assert fit.points[0] >= lo
    assert fit.points[-1] <= hi


def test_fit_minimax_relu_closed_form_on_symmetric_range():
    fit = fit_minimax("relu", -3.0, 3.0, 2)
    # The minimax quadratic of ReLU on [-a, a] is x^2 / (2a) + x / 2 + a / 16.
    np.testing.assert_allclose(fit.coefficients, [3.0 / 16.0, 0.5, 1.0 / 6.0], rtol=0, atol=1e-9)
    assert fit.max_error == pytest.approx(0.1875, abs=1e-9)
    assert fit.converged


def test_fit_minimax_beats_published_quadratic():
    # A quadratic for ReLU on [-3, 3] that an earlier, faulty Remez fit produced.
    x = np.linspace(-3.0, 3.0, 600001)
    published = 0.28124766 * x**2 + 0.5003125 * x + 0.15625043
    published_error = np.abs(np.maximum(x, 0.0) - published).max()
    fit = fit_minimax("relu", -3.0, 3.0, 2)
    assert published_error > 0.28
    assert fit.max_error < published_error - 0.09


@pytest.mark.parametrize(
    ("degree", "expected"),
    [
        (2, 0.0625),
        (3, 0.0625),
        (4, 0.0338104496),
        (5, 0.0338104496),
        (6, 0.0229645310),
        (7, 0.0229645310),
        (8, 0.0173448640),
    ],
)
def test_fit_minimax_relu_known_errors(degree, expected):
    fit = fit_minimax("relu", -1.0, 1.0, degree)
    # ReLU(x) = (x + |x|) / 2, so these are half the minimax errors of |x|, which are the same
    # for degrees 2k and 2k + 1 because |x| is even.
    assert fit.max_error == pytest.approx(expected, abs=1e-9)
    assert fit.converged


@pytest.mark.parametrize("degree", [3, 5, 7])
def test_fit_minimax_relu_odd_degree_reduces_to_even(degree):
    odd = fit_minimax("relu", -1.0, 1.0, degree)
    even = fit_minimax("relu", -1.0, 1.0, degree - 1)
    # On a symmetric range the best odd-degree fit of (x + |x|) / 2 has no x^degree term.
    assert abs(odd.coefficients[-1]) < 1e-9
    np.testing.assert_allclose(odd.coefficients[:-1], even.coefficients, atol=1e-8)
    assert odd.max_error == pytest.approx(even.max_error, rel=1e-9)


def test_fit_minimax_callable_with_kink():
    def absolute(x):
        return np.abs(x)

    fit = fit_minimax(absolute, -1.0, 1.0, 2, special_points=(0.0,))
    # The minimax quadratic of |x| on [-1, 1] is x^2 + 1/8, error 1/8.
    assert fit.function == "absolute"
    np.testing.assert_allclose(fit.coefficients, [0.125, 0.0, 1.0], atol=1e-9)
    assert fit.max_error == pytest.approx(0.125, abs=1e-10)


@pytest.mark.parametrize("degree", [2, 3])
def test_fit_minimax_callable_hidden_kink(degree):
    def shifted_absolute(x):
        return np.abs(x - 0.3)

    fit = fit_minimax(shifted_absolute, -0.7, 1.3, degree)
    # |x - 0.3| on [-0.7, 1.3] is |u| on [-1, 1]: minimax error 1/8 at degrees 2 and 3. The
    # kink is not declared, so it must be found by the search between grid points.
    assert fit.max_error == pytest.approx(0.125, abs=1e-10)
    assert fit.converged
    assert dense_max_error(fit, shifted_absolute) <= fit.max_error * (1.0 + 1e-9)


def test_fit_minimax_exp_linear_closed_form():
    fit = fit_minimax(np.exp, 0.0, 1.0, 1)
    # Best line for exp on [0, 1]: slope e - 1, touching at x* = log(e - 1).
    slope = math.e - 1.0
    x_star = math.log(slope)
    error = 0.5 * (1.0 - (math.exp(x_star) - slope * x_star))
    assert fit.coefficients[1] == pytest.approx(slope, abs=1e-10)
    assert fit.max_error == pytest.approx(error, abs=1e-10)


def test_fit_minimax_polynomial_is_exact():
    def cubic(x):
        return 2.0 * x**3 - x + 0.5

    fit = fit_minimax(cubic, -2.0, 3.0, 5)
    np.testing.assert_allclose(fit.coefficients, [0.5, -1.0, 0.0, 2.0, 0.0, 0.0], atol=1e-12)
    assert fit.max_error < 1e-12
    assert fit.converged


@pytest.mark.parametrize("degree", range(0, 17))
@pytest.mark.parametrize(("lo", "hi"), [(0.5, 2.0), (0.0, 3.0)])
def test_fit_minimax_relu_positive_side_exact(lo, hi, degree):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fit_minimax("relu", lo, hi, degree)
    assert fit.converged
    if degree == 0:
        # A constant cannot follow x: the best one is the midpoint of the values.
        assert fit.coefficients[0] == pytest.approx(0.5 * (lo + hi), abs=1e-12)
        assert fit.max_error == pytest.approx(0.5 * (hi - lo), abs=1e-12)
        return
    expected = np.zeros(degree + 1)
    expected[1] = 1.0
    np.testing.assert_array_equal(fit.coefficients, expected)
    assert fit.max_error == 0.0


@pytest.mark.parametrize("degree", [0, 1, 2, 8, 16])
def test_fit_minimax_relu_negative_side_zero(degree):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fit_minimax("relu", -3.0, -1.0, degree)
    np.testing.assert_array_equal(fit.coefficients, np.zeros(degree + 1))
    assert fit.max_error == 0.0
    assert fit.converged
    assert np.all(fit(np.linspace(-3.0, -1.0, 11)) == 0.0)


@pytest.mark.parametrize(("slope", "lo", "hi"), [(0.01, -3.0, -1.0), (0.2, -3.0, 0.0)])
def test_fit_minimax_leaky_relu_negative_side_exact(slope, lo, hi):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fit_minimax("leaky_relu", lo, hi, 4, params={"negative_slope": slope})
    np.testing.assert_array_equal(fit.coefficients, [0.0, slope, 0.0, 0.0, 0.0])
    assert fit.max_error == 0.0


def test_fit_minimax_leaky_relu_slope_parameter():
    fit = fit_minimax("leaky_relu", -1.0, 1.0, 2, params={"negative_slope": 0.2})
    # leaky_relu = s x + (1 - s) relu(x), so its error is (1 - s) times ReLU's 1/16.
    assert fit.max_error == pytest.approx(0.8 * 0.0625, abs=1e-10)


def test_fit_minimax_zero_width_range_warns_with_context():
    with pytest.warns(DegenerateRangeWarning, match="site relu1 channel 3"):
        fit = fit_minimax("relu", 0.7, 0.7, 4, context="site relu1 channel 3")
    np.testing.assert_array_equal(fit.coefficients, [0.7, 0.0, 0.0, 0.0, 0.0])
    assert fit.max_error == 0.0
    assert fit.converged
    assert fit(np.array([0.7, 5.0])).tolist() == [0.7, 0.7]
    assert np.isfinite(fit.chebyshev).all()


def test_fit_minimax_batch_zero_width_names_channel():
    with pytest.warns(DegenerateRangeWarning, match="site relu1 channel 1"):
        fits = fit_minimax_batch(
            "gelu", [-1.0, 0.0, -2.0], [1.0, 0.0, 3.0], 3, context="site relu1"
        )
    assert fits[1].max_error == 0.0
    assert fits[1].coefficients.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert fits[0].max_error > 0.0
    assert fits[2].max_error > 0.0


@pytest.mark.parametrize(
    ("lo", "hi", "message"),
    [
        (1.0, -1.0, "lo > hi|exceed"),
        (float("nan"), 1.0, "finite"),
        (-1.0, float("inf"), "finite"),
        (float("-inf"), 0.0, "finite"),
    ],
)
def test_fit_minimax_rejects_bad_range(lo, hi, message):
    with pytest.raises(ValueError, match=message):
        fit_minimax("relu", lo, hi, 2)


def test_fit_minimax_rejects_bad_degree():
    with pytest.raises(ValueError, match="-1"):
        fit_minimax("relu", -1.0, 1.0, -1)
    with pytest.raises(ValueError, match="33"):
        fit_minimax("relu", -1.0, 1.0, 33)
    with pytest.raises(TypeError, match="2.5"):
        fit_minimax("relu", -1.0, 1.0, 2.5)
    with pytest.raises(TypeError, match="True"):
        fit_minimax("relu", -1.0, 1.0, True)


def test_fit_minimax_rejects_bad_function():
    with pytest.raises(ValueError, match="swish"):
        fit_minimax("swish", -1.0, 1.0, 2)
    with pytest.raises(TypeError, match="int"):
        fit_minimax(3, -1.0, 1.0, 2)
    with pytest.raises(ValueError, match="not finite"):
        fit_minimax(np.log, -1.0, 1.0, 2)
    with pytest.raises(ValueError, match="vectorised"):
        fit_minimax(lambda x: 0.0, -1.0, 1.0, 2)


def test_fit_minimax_batch_rejects_bad_rows():
    with pytest.raises(ValueError, match="range 1"):
        fit_minimax_batch("relu", [-1.0, 2.0], [1.0, 1.0], 2)
    with pytest.raises(ValueError, match="equal length"):
        fit_minimax_batch("relu", [-1.0, 2.0], [1.0], 2)
    with pytest.raises(ValueError, match="context"):
        fit_minimax_batch("relu", [-1.0, -2.0], [1.0, 1.0], 2, context=["only one"])


def test_fit_minimax_nonconvergence_warns_or_raises():
    with pytest.warns(ConvergenceWarning, match="site relu2 channel 0.*did not converge"):
        fit = fit_minimax("relu", -1.0, 2.0, 8, max_iter=1, context="site relu2 channel 0")
    assert not fit.converged
    assert fit.iterations == 1
    assert np.isfinite(fit.max_error)
    with pytest.raises(ConvergenceError, match="did not converge"):
        fit_minimax("relu", -1.0, 2.0, 8, max_iter=1, strict=True)


@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize(
    ("lo", "hi"),
    [(-5e-10, 5e-10), (0.3, 0.3 + 1e-9), (-1e-9, 0.0), (-5000.0, 5000.0), (-1e4, 0.0)],
)
@pytest.mark.parametrize("degree", [2, 8, 16])
def test_fit_minimax_extreme_widths_finite(name, lo, hi, degree):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fit_minimax(name, lo, hi, degree)
    x = np.linspace(lo, hi, 1001)
    values = describe_function(name).function(x)
    assert fit.converged
    assert np.isfinite(fit.coefficients).all()
    assert np.isfinite(fit.chebyshev).all()
    assert np.isfinite(fit.points).all()
    assert math.isfinite(fit.max_error)
    # The reported error bounds the error seen on a uniform grid, up to the rounding of the
    # Chebyshev evaluation (64 eps max |f|).
    rounding = 64.0 * np.finfo(np.float64).eps * np.abs(values).max()
    assert np.abs(values - fit(x)).max() <= fit.max_error * (1.0 + 1e-9) + rounding


@pytest.mark.parametrize("degree", [2, 4, 8])
def test_fit_minimax_batch_matches_single(degree):
    rng = np.random.default_rng(7)
    los = -rng.uniform(0.1, 5.0, 12)
    his = rng.uniform(0.1, 5.0, 12)
    los[3], his[3] = 0.5, 2.0  # one side of the kink: exact
    fits = fit_minimax_batch("relu", los, his, degree)
    assert len(fits) == 12
    for lo, hi, fit in zip(los, his, fits, strict=True):
        single = fit_minimax("relu", lo, hi, degree)
        assert fit.lo == lo
        assert fit.hi == hi
        assert fit.converged
        assert fit.max_error == pytest.approx(single.max_error, rel=1e-9, abs=1e-15)
        np.testing.assert_allclose(fit.chebyshev, single.chebyshev, rtol=1e-7, atol=1e-9)


def test_fit_minimax_batch_empty():
    assert fit_minimax_batch("relu", [], [], 3) == []


def test_minimax_fit_power_form_matches_chebyshev_form():
    fit = fit_minimax("gelu", -2.0, 3.0, 8)
    x = np.linspace(-2.0, 3.0, 101)
    power = np.polynomial.polynomial.polyval(x, fit.coefficients)
    np.testing.assert_allclose(power, fit(x), rtol=0, atol=1e-12)


def test_minimax_fit_to_dict_is_json():
    fit = fit_minimax("relu", -3.0, 3.0, 2)
    record = json.loads(json.dumps(fit.to_dict()))
    assert record["function"] == "relu"
    assert record["degree"] == 2
    assert record["range"] == [-3.0, 3.0]
    assert record["max_error"] == pytest.approx(0.1875, abs=1e-9)
    assert len(record["coefficients"]) == 3
    assert len(record["chebyshev"]) == 3
    assert len(record["points"]) == 4
    assert record["converged"] is True
