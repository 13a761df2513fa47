"""A network for the tests: a linear classifier, which has no nonlinearity to approximate."""

from __future__ import annotations

import math

from torch import nn


def linear(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Return ``Flatten`` followed by one ``Linear`` layer."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))
