"""Minimax polynomial fits with the Remez exchange algorithm.

The fit of degree n to f on [lo, hi] is the polynomial p that minimises max |f(x) - p(x)|.
By Chebyshev's alternation theorem it is the unique polynomial whose error reaches its maximum
with alternating signs at n + 2 points at least. The Remez exchange algorithm finds it by
alternating two steps:

1. Solve for p and the levelled error E with ``f(x_i) - p(x_i) = (-1)^i E`` on a reference of
   n + 2 points.
2. Replace the reference by n + 2 alternating extrema of the new error, found on a fine grid
   and refined locally.

All the work happens in the variable t = (2x - lo - hi) / (hi - lo) on [-1, 1] with
Chebyshev polynomials T_k(t), which keeps the linear systems well conditioned at every degree
and range width. Coefficients in powers of x are derived at the end for export. Evaluating them
loses digits to cancellation on narrow ranges far from 0, so :class:`MinimaxFit` evaluates the
Chebyshev form.

Robustness for kinked functions such as ReLU comes from three choices:

- the error is sampled on a grid uniform in arccos(t), which is dense at the ends. The grid
  also contains the function's special points (the kink) and a geometric cluster of points
  around each, so an extremum sitting exactly on a kink is found exactly;
- the new reference keeps, for every run of equal error sign, the point of largest |error|,
  then takes n + 2 consecutive runs that include the global maximum, which also copes with
  errors that alternate at more than n + 2 points (degree 2 of ReLU on [-1, 1] alternates at 5);
- convergence is judged by de la Vallee Poussin's bracket: on an alternating reference the
  minimax error E* lies between the smallest |error| there and the maximum |error| of the
  current polynomial, so ``max - min <= tol * max`` bounds the relative excess of the reported
  maximum error over E* by ``tol``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from approx.functions import ArrayFunction, FunctionSpec, describe_function

logger = logging.getLogger(__name__)

MAX_DEGREE = 32
DEFAULT_TOL = 1e-10
DEFAULT_MAX_ITER = 60

# Relative rounding level below which an error counts as zero: the error of an exact fit
# (a polynomial fitted by itself, ReLU on one side of its kink) is pure rounding noise.
_NOISE_FACTOR = 64.0 * np.finfo(np.float64).eps
# Successive parabolic interpolation steps that refine each extremum found on the grid.
_N_REFINE_STEPS = 4
# Golden-section steps that follow for functions that may hide a kink: 0.618^56 shrinks a
# bracket of one grid step (at most 6e-3 in t) below 1e-14.
_N_GOLDEN_STEPS = 56
_INVERSE_GOLDEN_RATIO = (math.sqrt(5.0) - 1.0) / 2.0
# Distances (in t) of the points clustered around each special point, 2^-1 ... 2^-40.
_CLUSTER_OFFSETS = 2.0 ** -np.arange(1, 41)


class FitWarning(RuntimeWarning):
    """A minimax fit that is defined but needs the user's attention."""


class ConvergenceWarning(FitWarning):
    """The Remez iteration stopped at the iteration limit before meeting the tolerance."""


class DegenerateRangeWarning(FitWarning):
    """A zero-width range: the fit is the constant f(lo)."""


class ConvergenceError(RuntimeError):
    """The Remez iteration did not converge and ``strict=True`` was requested."""


@dataclass(frozen=True, eq=False)
class MinimaxFit:
    """A minimax polynomial of one function on one range.

    Attributes:
        function: name of the fitted function.
        degree: polynomial degree n.
        lo: lower end of the range.
        hi: upper end of the range.
        coefficients: (n + 1,) coefficients in powers of x, ascending: ``sum(a_k x^k)``.
        chebyshev: (n + 1,) coefficients of T_0 ... T_n in t = (2x - lo - hi) / (hi - lo).
        max_error: maximum of |f(x) - p(x)| over [lo, hi], measured on the final polynomial.
        points: alternation points in x (n + 2 of them), where the error reaches +-max_error
            with alternating signs; empty when the error is identically zero.
        iterations: Remez iterations run (0 for fits that are exact without iterating).
        converged: whether max_error is within the tolerance of the true minimax error.
    """

    function: str
    degree: int
    lo: float
    hi: float
    coefficients: np.ndarray
    chebyshev: np.ndarray
    max_error: float
    points: np.ndarray
    iterations: int
    converged: bool

    def __call__(self, x: Any) -> np.ndarray:
        """Evaluate the polynomial at x (any array shape) in its Chebyshev form."""
        x = np.asarray(x, dtype=np.float64)
        if self.hi == self.lo:
            return np.full(x.shape, self.chebyshev[0])
        t = (2.0 * x - self.lo - self.hi) / (self.hi - self.lo)
        return np.polynomial.chebyshev.chebval(t, self.chebyshev)

    def to_dict(self) -> dict[str, Any]:
        """Return the fit as plain JSON-compatible values."""
        return {
            "function": self.function,
            "degree": self.degree,
            "range": [self.lo, self.hi],
            "coefficients": [float(value) for value in self.coefficients],
            "chebyshev": [float(value) for value in self.chebyshev],
            "max_error": self.max_error,
            "points": [float(value) for value in self.points],
            "iterations": self.iterations,
            "converged": self.converged,
        }


# ---------------------------------------------------------------------------------------------
# Argument checks


def _check_degree(degree: Any) -> int:
    if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)):
        raise TypeError(f"degree must be an integer, got {degree!r} ({type(degree).__name__})")
    if not 0 <= degree <= MAX_DEGREE:
        raise ValueError(f"degree must be between 0 and {MAX_DEGREE}, got {degree}")
    return int(degree)


def _check_bound(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _check_options(tol: Any, max_iter: Any) -> tuple[float, int]:
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)):
        raise TypeError(f"tol must be a real number, got {tol!r}")
    if not 0.0 < tol < 1.0:
        raise ValueError(f"tol must be in (0, 1), got {tol}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)):
        raise TypeError(f"max_iter must be an integer, got {max_iter!r}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    return float(tol), int(max_iter)


def _check_ranges(los: Any, his: Any) -> tuple[np.ndarray, np.ndarray]:
    try:
        lo_array = np.asarray(los, dtype=np.float64)
        hi_array = np.asarray(his, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"los and his must be sequences of real numbers: {error}") from None
    if lo_array.ndim != 1 or hi_array.shape != lo_array.shape:
        raise ValueError(
            "los and his must be one-dimensional and of equal length, got shapes "
            f"{lo_array.shape} and {hi_array.shape}"
        )

    def label(index: int) -> str:
        # A single range needs no index in the message.
        return "range" if lo_array.size == 1 else f"range {index}"

    bad = ~(np.isfinite(lo_array) & np.isfinite(hi_array))
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{label(index)} must have finite bounds, got [{lo_array[index]}, {hi_array[index]}]"
        )
    reversed_rows = lo_array > hi_array
    if reversed_rows.any():
        index = int(np.flatnonzero(reversed_rows)[0])
        raise ValueError(
            f"{label(index)} has lo > hi: [{lo_array[index]}, {hi_array[index]}]; swap the bounds"
        )
    width = hi_array - lo_array
    if not np.isfinite(width).all():
        index = int(np.flatnonzero(~np.isfinite(width))[0])
        raise ValueError(
            f"{label(index)} [{lo_array[index]}, {hi_array[index]}] is too wide: its width "
            f"hi - lo must be at most {np.finfo(np.float64).max:.6g}, the largest float64"
        )
    return lo_array, hi_array


def _evaluate(spec: FunctionSpec, x: np.ndarray) -> np.ndarray:
    """Evaluate the function and check that it returned finite values of the right shape."""
    # Non-finite values raise below with the offending x, so numpy's own warnings are noise.
    with np.errstate(all="ignore"):
        values = np.asarray(spec.function(x), dtype=np.float64)
    if values.shape != x.shape:
        raise ValueError(
            f"function {spec.name} returned shape {values.shape} for input shape {x.shape}; "
            "it must be vectorised (numpy array in, array of the same shape out)"
        )
    if not np.isfinite(values).all():
        index = np.unravel_index(int(np.flatnonzero(~np.isfinite(values))[0]), x.shape)
        raise ValueError(
            f"function {spec.name} is not finite at x = {x[index]!r} ({values[index]!r}); "
            "fit it on a range where it is finite"
        )
    return values


# ---------------------------------------------------------------------------------------------
# Chebyshev helpers, vectorised over a batch of rows


def _chebyshev_matrix(t: np.ndarray, degree: int) -> np.ndarray:
    """Return T_0(t) ... T_degree(t) stacked on a new last axis: (..., degree + 1)."""
    columns = [np.ones_like(t)]
    if degree >= 1:
        columns.append(t)
    for _ in range(2, degree + 1):
        columns.append(2.0 * t * columns[-1] - columns[-2])
    return np.stack(columns, axis=-1)


def _clenshaw(coefficients: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Evaluate sum_k c[b, k] T_k(t[b, j]) for coefficients (B, n + 1) and t (B, K)."""
    n = coefficients.shape[1] - 1
    if n == 0:
        return np.broadcast_to(coefficients[:, :1], t.shape).copy()
    two_t = 2.0 * t
    b1 = np.zeros_like(t)
    b2 = np.zeros_like(t)
    for k in range(n, 0, -1):
        b1, b2 = coefficients[:, k : k + 1] + two_t * b1 - b2, b1
    return coefficients[:, :1] + t * b1 - b2


def _chebyshev_to_power(chebyshev: np.ndarray, mids: np.ndarray, halfs: np.ndarray) -> np.ndarray:
    """Convert coefficients in T_k((x - mid) / half) to ascending powers of x, row by row."""
    n_rows, n_coefficients = chebyshev.shape
    u0 = (-mids / halfs)[:, None]  # u(x) = u0 + u1 x = (x - mid) / half
    u1 = (1.0 / halfs)[:, None]

    def times_u(poly: np.ndarray) -> np.ndarray:
        shifted = np.zeros_like(poly)
        shifted[:, 1:] = poly[:, :-1]
        return u0 * poly + u1 * shifted

    previous = np.zeros((n_rows, n_coefficients))
    previous[:, 0] = 1.0  # T_0
    power = chebyshev[:, :1] * previous
    if n_coefficients == 1:
        return power
    current = times_u(previous)  # T_1
    power = power + chebyshev[:, 1:2] * current
    for k in range(2, n_coefficients):
        previous, current = current, 2.0 * times_u(current) - previous
        power = power + chebyshev[:, k : k + 1] * current
    return power


# ---------------------------------------------------------------------------------------------
# The exchange step


def _select_reference(values: np.ndarray, n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Choose n_points alternating extrema of the error sampled at sorted positions.

    Args:
        values: (B, L) error at positions sorted along each row.
        n_points: n + 2.

    Returns:
        (B, n_points) column indices of the chosen extrema, and a (B,) flag that is False for
        rows whose error changes sign fewer than n_points - 1 times.
    """
    n_rows, length = values.shape
    signs = np.where(values >= 0.0, 1, -1)
    magnitudes = np.abs(values)
    sign_change = signs[:, 1:] != signs[:, :-1]

    # A point can be the largest of its run of equal signs only if it is no smaller than its
    # neighbours in the same run. That keeps a few dozen candidates per row out of thousands.
    left_ok = np.ones((n_rows, length), dtype=bool)
    left_ok[:, 1:] = sign_change | (magnitudes[:, 1:] >= magnitudes[:, :-1])
    right_ok = np.ones((n_rows, length), dtype=bool)
    right_ok[:, :-1] = sign_change | (magnitudes[:, :-1] >= magnitudes[:, 1:])
    run_ids = np.zeros((n_rows, length), dtype=np.int64)
    run_ids[:, 1:] = np.cumsum(sign_change, axis=1)
    n_runs = run_ids[:, -1] + 1

    rows, columns = np.nonzero(left_ok & right_ok)
    runs = run_ids[rows, columns]
    order = np.lexsort((magnitudes[rows, columns], runs, rows))
    rows, columns, runs = rows[order], columns[order], runs[order]
    # The last entry of each (row, run) group has the group's largest magnitude.
    is_last = np.ones(rows.shape, dtype=bool)
    is_last[:-1] = (rows[1:] != rows[:-1]) | (runs[1:] != runs[:-1])
    rows, columns, runs = rows[is_last], columns[is_last], runs[is_last]

    max_runs = max(int(n_runs.max()), n_points)
    run_magnitude = np.full((n_rows, max_runs), -1.0)
    run_column = np.zeros((n_rows, max_runs), dtype=np.int64)
    run_magnitude[rows, runs] = magnitudes[rows, columns]
    run_column[rows, runs] = columns

    # Windows of n_points consecutive runs that contain the largest error; among them, the one
    # whose smallest |error| is largest (the best lower bound on the minimax error).
    window_min = sliding_window_view(run_magnitude, n_points, axis=1).min(axis=2)
    starts = np.arange(window_min.shape[1])[None, :]
    peak = np.argmax(run_magnitude, axis=1)[:, None]
    valid = (starts <= peak) & (peak < starts + n_points) & (window_min >= 0.0)
    window_min = np.where(valid, window_min, -np.inf)
    start = np.argmax(window_min, axis=1)
    ok = n_runs >= n_points
    chosen = np.take_along_axis(
        run_column, np.minimum(start[:, None] + np.arange(n_points), max_runs - 1), axis=1
    )
    return chosen, ok


def _refine_extrema(
    spec: FunctionSpec,
    coefficients: np.ndarray,
    mids: np.ndarray,
    halfs: np.ndarray,
    grid: np.ndarray,
    grid_error: np.ndarray,
    t: np.ndarray,
    error: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Move each chosen extremum to the peak of the error between its grid neighbours.

    Successive parabolic interpolation on (a, b, c), where a and c are the nearest grid points
    around b, maximising sign(error(b)) * error. A step that does not improve the value only
    narrows the bracket, so a kink (where the parabola is wrong) keeps the grid point.

    Args:
        grid, grid_error: (B, G) sorted grid and the error on it.
        t, error: (B, m) chosen extrema and their errors.
    """
    n_rows, n_grid = grid.shape
    direction = np.where(error >= 0.0, 1.0, -1.0)

    # Locate the neighbours on the flattened grid: rows are shifted apart by 4 so one sorted
    # search serves the whole batch.
    offsets = 4.0 * np.arange(n_rows)[:, None]
    flat_grid = (grid + offsets).ravel()
    flat_error = grid_error.ravel()
    row_start = n_grid * np.arange(n_rows)[:, None]
    left = np.searchsorted(flat_grid, (t + offsets).ravel(), side="left").reshape(t.shape) - 1
    right = np.searchsorted(flat_grid, (t + offsets).ravel(), side="right").reshape(t.shape)
    left = np.clip(left, row_start, row_start + n_grid - 1)
    right = np.clip(right, row_start, row_start + n_grid - 1)
    a, c = grid.ravel()[left], grid.ravel()[right]
    ga, gc = direction * flat_error[left], direction * flat_error[right]
    b, gb = t.copy(), direction * error
    # At the ends of [-1, 1] there is no neighbour on one side: no bracket, no refinement.
    usable = (a < b) & (b < c)

    for _ in range(_N_REFINE_STEPS):
        db_a, db_c = b - a, b - c
        numerator = db_a**2 * (gb - gc) - db_c**2 * (gb - ga)
        denominator = db_a * (gb - gc) - db_c * (gb - ga)
        with np.errstate(divide="ignore", invalid="ignore"):
            v = b - 0.5 * numerator / denominator
        step = usable & np.isfinite(v) & (a < v) & (v < c) & (v != b)
        if not step.any():
            break
        v = np.where(step, v, b)
        x = mids[:, None] + halfs[:, None] * v
        gv = direction * (_evaluate(spec, x) - _clenshaw(coefficients, v))
        better = step & (gv > gb)
        below = v < b
        # A better v becomes the centre and the old centre replaces the bracket end on its
        # side. A worse v only narrows the bracket on its own side.
        moved, g_moved = np.where(better, b, v), np.where(better, gb, gv)
        to_a = step & (better != below)
        to_c = step & (better == below)
        a, ga = np.where(to_a, moved, a), np.where(to_a, g_moved, ga)
        c, gc = np.where(to_c, moved, c), np.where(to_c, g_moved, gc)
        b, gb = np.where(better, v, b), np.where(better, gv, gb)

    if not spec.smooth_elsewhere:
        b, gb = _golden_section(spec, coefficients, mids, halfs, direction, a, c, b, gb, usable)
    return b, direction * gb


def _golden_section(spec, coefficients, mids, halfs, direction, a, c, b, gb, usable):
    """Search [a, c] for the maximum of direction * error by golden sections.

    Parabolic steps assume a smooth peak. At a kink they stall short of it, and the error there
    is understated by about slope * distance. Golden sections converge on a kink as well,
    linearly, so they run only for functions that may hide one. Returns the better of b and
    the golden-section result.
    """

    def objective(t: np.ndarray) -> np.ndarray:
        x = mids[:, None] + halfs[:, None] * t
        return direction * (_evaluate(spec, x) - _clenshaw(coefficients, t))

    lower, upper = np.where(usable, a, b), np.where(usable, c, b)
    x1 = upper - _INVERSE_GOLDEN_RATIO * (upper - lower)
    x2 = lower + _INVERSE_GOLDEN_RATIO * (upper - lower)
    g1, g2 = objective(x1), objective(x2)
    for _ in range(_N_GOLDEN_STEPS):
        left = g1 > g2  # the maximum lies in [lower, x2]
        upper = np.where(left, x2, upper)
        lower = np.where(left, lower, x1)
        new = np.where(
            left,
            upper - _INVERSE_GOLDEN_RATIO * (upper - lower),
            lower + _INVERSE_GOLDEN_RATIO * (upper - lower),
        )
        g_new = objective(new)
        x1, x2 = np.where(left, new, x2), np.where(left, x1, new)
        g1, g2 = np.where(left, g_new, g2), np.where(left, g1, g_new)
    found, g_found = np.where(g1 > g2, x1, x2), np.maximum(g1, g2)
    better = usable & (g_found > gb)
    return np.where(better, found, b), np.where(better, g_found, gb)


# ---------------------------------------------------------------------------------------------
# The Remez iteration


@dataclass
class _RowResults:
    chebyshev: np.ndarray  # (B, n + 1)
    max_error: np.ndarray  # (B,)
    points: np.ndarray  # (B, n + 2), in t
    iterations: np.ndarray  # (B,)
    converged: np.ndarray  # (B,)
    exact: np.ndarray  # (B,): error is rounding noise only


def _grid_size(degree: int) -> int:
    return max(1025, 96 * (degree + 2))


def _build_grids(spec: FunctionSpec, mids: np.ndarray, halfs: np.ndarray, degree: int):
    """Return the sorted sampling grid (B, G) in t for each row."""
    base = -np.cos(np.linspace(0.0, np.pi, _grid_size(degree)))
    n_rows = len(mids)
    extras = []
    for row in range(n_rows):
        row_points = []
        for point in spec.special_points:
            centre = (point - mids[row]) / halfs[row]
            if -1.0 < centre < 1.0:
                cluster = np.concatenate(
                    ([centre], centre - _CLUSTER_OFFSETS, centre + _CLUSTER_OFFSETS)
                )
                row_points.append(np.clip(cluster, -1.0, 1.0))
        extras.append(np.concatenate(row_points) if row_points else np.empty(0))
    width = max(len(extra) for extra in extras)
    # Rows with fewer special points are padded with -1, a harmless duplicate grid point.
    padded = np.full((n_rows, width), -1.0)
    for row, extra in enumerate(extras):
        padded[row, : len(extra)] = extra
    grid = np.concatenate([np.broadcast_to(base, (n_rows, len(base))), padded], axis=1)
    return np.sort(grid, axis=1)


def _remez(
    spec: FunctionSpec,
    mids: np.ndarray,
    halfs: np.ndarray,
    degree: int,
    tol: float,
    max_iter: int,
) -> _RowResults:
    """Run the Remez iteration on B ranges at once; every array is indexed by row first."""
    n_rows = len(mids)
    n_points = degree + 2
    grid = _build_grids(spec, mids, halfs, degree)
    grid_values = _evaluate(spec, mids[:, None] + halfs[:, None] * grid)
    noise = _NOISE_FACTOR * np.abs(grid_values).max(axis=1)

    alternating = (-1.0) ** np.arange(n_points)
    reference = np.tile(-np.cos(np.pi * np.arange(n_points) / (degree + 1)), (n_rows, 1))

    best_chebyshev = np.zeros((n_rows, degree + 1))
    best_error = np.full(n_rows, np.inf)
    best_points = reference.copy()
    iterations = np.zeros(n_rows, dtype=np.int64)
    converged = np.zeros(n_rows, dtype=bool)
    exact = np.zeros(n_rows, dtype=bool)
    active = np.arange(n_rows)

    for iteration in range(1, max_iter + 1):
        ref = reference[active]
        mid, half = mids[active], halfs[active]
        ref_values = _evaluate(spec, mid[:, None] + half[:, None] * ref)

        # Levelled system: sum_k c_k T_k(t_i) + (-1)^i E = f(x_i), one (n + 2)^2 system per row.
        matrix = np.concatenate(
            [
                _chebyshev_matrix(ref, degree),
                np.broadcast_to(alternating[:, None], ref.shape + (1,)),
            ],
            axis=2,
        )
        solution = np.linalg.solve(matrix, ref_values[:, :, None])[:, :, 0]
        coefficients = solution[:, : degree + 1]

        row_grid = grid[active]
        grid_error = grid_values[active] - _clenshaw(coefficients, row_grid)
        ref_error = ref_values - _clenshaw(coefficients, ref)
        # Merging the old reference, where the error alternates in sign, guarantees at least
        # n + 2 sign runs even when the grid misses a narrow one.
        positions = np.concatenate([row_grid, ref], axis=1)
        errors = np.concatenate([grid_error, ref_error], axis=1)
        order = np.argsort(positions, axis=1, kind="stable")
        positions = np.take_along_axis(positions, order, axis=1)
        errors = np.take_along_axis(errors, order, axis=1)

        chosen, alternates = _select_reference(errors, n_points)
        new_ref = np.take_along_axis(positions, chosen, axis=1)
        new_error = np.take_along_axis(errors, chosen, axis=1)
        new_ref, new_error = _refine_extrema(
            spec, coefficients, mid, half, row_grid, grid_error, new_ref, new_error
        )

        max_abs = np.maximum(np.abs(errors).max(axis=1), np.abs(new_error).max(axis=1))
        min_abs = np.abs(new_error).min(axis=1)
        is_exact = max_abs <= noise[active]
        done = is_exact | (alternates & (max_abs - min_abs <= tol * max_abs + noise[active]))

        improved = max_abs < best_error[active]
        rows = active[improved]
        best_chebyshev[rows] = coefficients[improved]
        best_error[rows] = max_abs[improved]
        best_points[rows] = new_ref[improved]
        iterations[active] = iteration
        converged[active[done]] = True
        exact[active[done & is_exact]] = True

        # Fallback where the error alternates too few times (expected only near rounding
        # level): swap the global maximum into the old reference, single-point exchange.
        stuck = ~alternates & ~done
        if stuck.any():
            peak = np.argmax(np.abs(errors[stuck]), axis=1)
            peak_t = positions[stuck][np.arange(len(peak)), peak]
            swapped = ref[stuck].copy()
            nearest = np.argmin(np.abs(swapped - peak_t[:, None]), axis=1)
            swapped[np.arange(len(peak)), nearest] = peak_t
            new_ref[stuck] = np.sort(swapped, axis=1)

        # A reference with repeated points has no solution; such a row stops here.
        distinct = (np.diff(new_ref, axis=1) > 0.0).all(axis=1)
        reference[active] = new_ref
        active = active[~done & distinct]
        if len(active) == 0:
            break

    return _RowResults(best_chebyshev, best_error, best_points, iterations, converged, exact)


# ---------------------------------------------------------------------------------------------
# Public API


def _exact_piece(spec: FunctionSpec, lo: float, hi: float, degree: int):
    """Return (slope, intercept) when f is linear on [lo, hi] and degree can represent it."""
    for piece in spec.linear_pieces:
        if piece.lo <= lo and hi <= piece.hi and (degree >= 1 or piece.slope == 0.0):
            return piece.slope, piece.intercept
    return None


def _row_prefix(context: str | Sequence[str] | None, row: int, n_rows: int) -> str:
    """Return the text that names range ``row`` at the start of a warning or error."""
    if context is None:
        return f"range {row}: " if n_rows > 1 else ""
    if isinstance(context, str):
        return f"{context} channel {row}: " if n_rows > 1 else f"{context}: "
    return f"{context[row]}: "


def fit_minimax_batch(
    function: str | ArrayFunction,
    los: Sequence[float] | np.ndarray,
    his: Sequence[float] | np.ndarray,
    degree: int,
    *,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    context: str | Sequence[str] | None = None,
    strict: bool = False,
    params: Mapping[str, float] | None = None,
    special_points: Sequence[float] = (),
) -> list[MinimaxFit]:
    """Fit the minimax polynomial of one degree to one function on many ranges at once.

    The Remez iterations of all ranges run together. The linear systems are solved as one
    (B, n + 2, n + 2) batch and the error is sampled on one (B, G) grid, so fitting the ranges
    of all channels of a layer costs little more than fitting one.

    Args:
        function: an activation name (relu, leaky_relu, elu, gelu, silu, sigmoid, tanh) or a
            vectorised callable (numpy array in, array of the same shape out). A callable
            receives 2-D arrays and must be element-wise.
        los, his: (B,) lower and upper ends of the ranges. ``lo == hi`` gives the constant
            f(lo) with a :class:`DegenerateRangeWarning`.
        degree: polynomial degree, 0 to ``MAX_DEGREE`` (32).
        tol: relative tolerance on the maximum error: a converged fit's max_error exceeds the
            minimax error by at most ``tol`` times itself, plus rounding noise.
        max_iter: Remez iterations before giving up on a range.
        context: names the ranges in warnings and errors: a string for the whole batch (row i
            is called "<context> channel i") or one string per range.
        strict: raise :class:`ConvergenceError` instead of warning when a range fails to
            converge.
        params: parameters of a named activation, e.g. ``{"negative_slope": 0.1}``.
        special_points: x values where a callable bends sharply (kinks); the error is always
            sampled there.

    Returns:
        One :class:`MinimaxFit` per range, in order.

    Raises:
        ValueError: bounds that are not finite, lo > hi, a degree out of range, an unknown
            function name, or a function that is not finite on a range.
        TypeError: a degree that is not an integer or a function that is not callable.
        ConvergenceError: with ``strict=True``, when some range does not converge.
    """
    spec = describe_function(function, special_points=tuple(special_points), **dict(params or {}))
    degree = _check_degree(degree)
    tol, max_iter = _check_options(tol, max_iter)
    lo_array, hi_array = _check_ranges(los, his)
    n_rows = len(lo_array)
    if not isinstance(context, (str, type(None))) and len(context) != n_rows:
        raise ValueError(f"context has {len(context)} entries for {n_rows} ranges")

    fits: list[MinimaxFit | None] = [None] * n_rows
    remez_rows = []
    for row in range(n_rows):
        lo, hi = float(lo_array[row]), float(hi_array[row])
        if lo == hi:
            value = float(_evaluate(spec, np.array([lo]))[0])
            warnings.warn(
                f"{_row_prefix(context, row, n_rows)}zero-width range [{lo}, {hi}] "
                f"(a dead input); fitted the constant {spec.name}({lo}) = {value}",
                DegenerateRangeWarning,
                stacklevel=2,
            )
            constant = np.zeros(degree + 1)
            constant[0] = value
            fits[row] = _make_fit(
                spec, degree, lo, hi, constant, constant.copy(), 0.0, np.empty(0), 0, True
            )
            continue
        piece = _exact_piece(spec, lo, hi, degree)
        if piece is not None:
            slope, intercept = piece
            power = np.zeros(degree + 1)
            power[0] = intercept
            if degree >= 1:
                power[1] = slope
            mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
            chebyshev = np.zeros(degree + 1)
            chebyshev[0] = intercept + slope * mid
            if degree >= 1:
                chebyshev[1] = slope * half
            fits[row] = _make_fit(
                spec, degree, lo, hi, power, chebyshev, 0.0, np.empty(0), 0, True
            )
            continue
        remez_rows.append(row)

    if remez_rows:
        rows = np.array(remez_rows)
        mids = 0.5 * (lo_array[rows] + hi_array[rows])
        halfs = 0.5 * (hi_array[rows] - lo_array[rows])
        results = _remez(spec, mids, halfs, degree, tol, max_iter)
        power = _chebyshev_to_power(results.chebyshev, mids, halfs)
        failed = []
        for i, row in enumerate(remez_rows):
            lo, hi = float(lo_array[row]), float(hi_array[row])
            if results.exact[i]:
                points = np.empty(0)
            else:
                points = mids[i] + halfs[i] * results.points[i]
                points = np.where(results.points[i] == -1.0, lo, points)
                points = np.where(results.points[i] == 1.0, hi, points)
            fits[row] = _make_fit(
                spec,
                degree,
                lo,
                hi,
                power[i],
                results.chebyshev[i],
                float(results.max_error[i]),
                points,
                int(results.iterations[i]),
                bool(results.converged[i]),
            )
            if not results.converged[i]:
                failed.append(row)
            if not np.isfinite(power[i]).all():
                warnings.warn(
                    f"{_row_prefix(context, row, n_rows)}the power-basis coefficients of "
                    f"degree {degree} on [{lo}, {hi}] overflow float64; use the Chebyshev form",
                    FitWarning,
                    stacklevel=2,
                )
        for row in failed:
            fit = fits[row]
            message = (
                f"{_row_prefix(context, row, n_rows)}the Remez iteration for {spec.name} of "
                f"degree {degree} on [{fit.lo}, {fit.hi}] did not converge in "
                f"{_count(fit.iterations, 'iteration')} (max error {fit.max_error:.6g}); "
                "raise max_iter or tol"
            )
            if strict:
                raise ConvergenceError(message)
            warnings.warn(message, ConvergenceWarning, stacklevel=2)

    for fit in fits:
        logger.debug(
            "fitted %s degree %d on [%g, %g]: max error %.6g, iterations %d, converged %s",
            fit.function,
            fit.degree,
            fit.lo,
            fit.hi,
            fit.max_error,
            fit.iterations,
            fit.converged,
        )
    return fits


def fit_minimax(
    function: str | ArrayFunction,
    lo: float,
    hi: float,
    degree: int,
    *,
    tol: float = DEFAULT_TOL,
    max_iter: int = DEFAULT_MAX_ITER,
    context: str | None = None,
    strict: bool = False,
    params: Mapping[str, float] | None = None,
    special_points: Sequence[float] = (),
) -> MinimaxFit:
    """Fit the minimax polynomial of a degree to a function on [lo, hi].

    Example::

        >>> fit = fit_minimax("relu", -3.0, 3.0, 2)
        >>> fit.coefficients  # 3/16 + x/2 + x^2/6
        array([0.1875    , 0.5       , 0.16666667])
        >>> round(fit.max_error, 6)
        0.1875

    Args:
        function: an activation name (relu, leaky_relu, elu, gelu, silu, sigmoid, tanh) or a
            vectorised callable (numpy array in, array of the same shape out). A callable must
            be continuous on the range. Its kinks are found by a slower search, so fitting a
            callable takes a few times longer than fitting a named activation.
        lo, hi: the range, finite, lo <= hi. ``lo == hi`` gives the constant f(lo) with zero
            error and a :class:`DegenerateRangeWarning` naming ``context``.
        degree: polynomial degree, 0 to ``MAX_DEGREE`` (32).
        tol: relative tolerance on the maximum error (default 1e-10); see
            :func:`fit_minimax_batch`.
        max_iter: Remez iterations before giving up (default 60).
        context: text naming the fit in warnings, e.g. "site relu1 channel 3".
        strict: raise :class:`ConvergenceError` instead of warning when the iteration does
            not converge.
        params: parameters of a named activation, e.g. ``{"negative_slope": 0.1}`` for
            leaky_relu or ``{"alpha": 0.5}`` for elu.
        special_points: x values where a callable bends sharply (kinks).

    Returns:
        The :class:`MinimaxFit`. Where f is exactly linear on the range (ReLU or leaky ReLU
        on one side of 0) and the degree is at least 1, the fit is that line with zero error.

    Raises:
        ValueError: non-finite bounds, lo > hi, a degree out of range, an unknown function.
        TypeError: a degree or bound of the wrong type.
        ConvergenceError: with ``strict=True``, when the iteration does not converge.
    """
    lo = _check_bound("lo", lo)
    hi = _check_bound("hi", hi)
    if lo > hi:
        raise ValueError(f"lo must not exceed hi, got lo = {lo}, hi = {hi}; swap the bounds")
    return fit_minimax_batch(
        function,
        [lo],
        [hi],
        degree,
        tol=tol,
        max_iter=max_iter,
        context=context,
        strict=strict,
        params=params,
        special_points=special_points,
    )[0]


def _make_fit(
    spec: FunctionSpec,
    degree: int,
    lo: float,
    hi: float,
    coefficients: np.ndarray,
    chebyshev: np.ndarray,
    max_error: float,
    points: np.ndarray,
    iterations: int,
    converged: bool,
) -> MinimaxFit:
    arrays = [np.array(values, dtype=np.float64) for values in (coefficients, chebyshev, points)]
    for array in arrays:
        array.setflags(write=False)
    return MinimaxFit(
        function=spec.name,
        degree=degree,
        lo=lo,
        hi=hi,
        coefficients=arrays[0],
        chebyshev=arrays[1],
        max_error=max_error,
        points=arrays[2],
        iterations=iterations,
        converged=converged,
    )


def _count(count: int, noun: str) -> str:
    """Return ``count`` and ``noun``, with an ``s`` unless the count is 1."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
