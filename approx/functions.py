"""Scalar activation functions in numpy, described for the minimax fitter.

Every function takes a float64 array and returns an array of the same shape. The fitter also
needs to know where a function bends sharply (a kink of ReLU, the centre of the transition of
tanh), because the extrema of the approximation error cluster there. It also needs to know
where a function is exactly linear, because a polynomial of degree 1 or more then fits it with
zero error.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import special

ArrayFunction = Callable[[np.ndarray], np.ndarray]


def relu(x: np.ndarray) -> np.ndarray:
    """Return max(x, 0)."""
    return np.maximum(x, 0.0)


def leaky_relu(x: np.ndarray, negative_slope: float = 0.01) -> np.ndarray:
    """Return x for x >= 0 and ``negative_slope * x`` below 0."""
    return np.where(x >= 0.0, x, negative_slope * x)


def elu(x: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    """Return x for x > 0 and ``alpha * (exp(x) - 1)`` otherwise."""
    # expm1 receives only non-positive values, so large positive inputs cannot overflow.
    return np.where(x > 0.0, x, alpha * np.expm1(np.minimum(x, 0.0)))


def gelu(x: np.ndarray) -> np.ndarray:
    """Return the exact GELU, ``x * Phi(x)`` with the normal distribution function Phi."""
    return 0.5 * x * (1.0 + special.erf(x / math.sqrt(2.0)))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Return the logistic function 1 / (1 + exp(-x)) without overflow."""
    return special.expit(x)


def silu(x: np.ndarray) -> np.ndarray:
    """Return the SiLU (swish), ``x * sigmoid(x)``."""
    return x * special.expit(x)


def tanh(x: np.ndarray) -> np.ndarray:
    """Return the hyperbolic tangent."""
    return np.tanh(x)


# The named activations with their default parameters (leaky_relu slope 0.01, elu alpha 1).
ACTIVATIONS: dict[str, ArrayFunction] = {
    "relu": relu,
    "leaky_relu": leaky_relu,
    "elu": elu,
    "gelu": gelu,
    "silu": silu,
    "sigmoid": sigmoid,
    "tanh": tanh,
}

# Keyword parameters each named activation accepts.
PARAMETERS: dict[str, tuple[str, ...]] = {
    "relu": (),
    "leaky_relu": ("negative_slope",),
    "elu": ("alpha",),
    "gelu": (),
    "silu": (),
    "sigmoid": (),
    "tanh": (),
}


@dataclass(frozen=True)
class LinearPiece:
    """An interval ``[lo, hi]`` of x on which a function equals ``slope * x + intercept``."""

    lo: float
    hi: float
    slope: float
    intercept: float


@dataclass(frozen=True)
class FunctionSpec:
    """A scalar function with the facts about its shape that the minimax fitter uses.

    Attributes:
        name: the activation name, or the ``__name__`` of a user callable.
        function: vectorised function, float64 array in, array of the same shape out.
        special_points: x values where the function bends sharply: kinks, and the centre of a
            smooth transition. The fitter always samples the error there and close around them.
        linear_pieces: intervals on which the function is exactly linear.
        smooth_elsewhere: True when the function is smooth away from its special points, as
            for the named activations. For a callable the fitter cannot know, so it locates
            every extremum with a search that also works at a hidden kink, at more cost.
    """

    name: str
    function: ArrayFunction
    special_points: tuple[float, ...] = ()
    linear_pieces: tuple[LinearPiece, ...] = ()
    smooth_elsewhere: bool = True


def _check_parameters(name: str, params: dict[str, float]) -> None:
    unknown = sorted(set(params) - set(PARAMETERS[name]))
    if unknown:
        accepted = ", ".join(PARAMETERS[name]) or "none"
        raise ValueError(
            f"{name} does not take the parameter(s) {', '.join(unknown)}; accepted: {accepted}"
        )
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} parameter {key} must be a real number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ValueError(f"{name} parameter {key} must be finite, got {value!r}")


def describe_function(
    function: str | ArrayFunction,
    *,
    special_points: tuple[float, ...] = (),
    **params: float,
) -> FunctionSpec:
    """Build the :class:`FunctionSpec` of a named activation or of a vectorised callable.

    Args:
        function: a name from :data:`ACTIVATIONS` or a callable taking and returning a numpy
            array of the same shape (applied element-wise).
        special_points: extra x values where the function bends sharply (for example the
            kinks of a user callable); added to those a named activation already has.
        **params: parameters of a named activation: ``negative_slope`` for leaky_relu
            (default 0.01), ``alpha`` for elu (default 1.0). Not accepted with a callable.

    Raises:
        ValueError: for an unknown name, an unknown parameter or a non-finite value.
        TypeError: when ``function`` is neither a string nor a callable, or a parameter is not
            a real number.
    """
    extra = tuple(float(point) for point in special_points)
    if any(not math.isfinite(point) for point in extra):
        raise ValueError(f"special points must be finite, got {special_points!r}")

    if callable(function) and not isinstance(function, str):
        if params:
            raise ValueError(
                f"parameters {sorted(params)} apply only to named activations; "
                "bind them into the callable instead"
            )
        name = getattr(function, "__name__", type(function).__name__)
        return FunctionSpec(
            name=name, function=function, special_points=extra, smooth_elsewhere=False
        )

    if not isinstance(function, str):
        raise TypeError(
            f"function must be an activation name or a callable, got {type(function).__name__}"
        )
    name = function.strip().lower().replace("-", "_")
    if name not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {function!r}; expected one of {', '.join(ACTIVATIONS)} "
            "or a vectorised callable"
        )
    _check_parameters(name, params)

    if name == "relu":
        pieces = (
            LinearPiece(-math.inf, 0.0, 0.0, 0.0),
            LinearPiece(0.0, math.inf, 1.0, 0.0),
        )
        return FunctionSpec(name, relu, (0.0, *extra), pieces)
    if name == "leaky_relu":
        slope = float(params.get("negative_slope", 0.01))
        pieces = (
            LinearPiece(-math.inf, 0.0, slope, 0.0),
            LinearPiece(0.0, math.inf, 1.0, 0.0),
        )

        def leaky_relu_bound(x: np.ndarray) -> np.ndarray:
            return leaky_relu(x, slope)

        leaky_relu_bound.__name__ = "leaky_relu"
        return FunctionSpec(name, leaky_relu_bound, (0.0, *extra), pieces)
    if name == "elu":
        alpha = float(params.get("alpha", 1.0))
        pieces = (LinearPiece(0.0, math.inf, 1.0, 0.0),)

        def elu_bound(x: np.ndarray) -> np.ndarray:
            return elu(x, alpha)

        elu_bound.__name__ = "elu"
        return FunctionSpec(name, elu_bound, (0.0, *extra), pieces)
    # gelu, silu, sigmoid, tanh: smooth, with the transition centred at 0.
    return FunctionSpec(name, ACTIVATIONS[name], (0.0, *extra))


def get_function(function: str | ArrayFunction, **params: float) -> tuple[str, ArrayFunction]:
    """Return ``(name, vectorised function)`` for an activation name or a callable.

    ``params`` are the parameters of a named activation (``negative_slope`` for leaky_relu,
    ``alpha`` for elu). Raises ValueError/TypeError as :func:`describe_function` does.
    """
    spec = describe_function(function, **params)
    return spec.name, spec.function
