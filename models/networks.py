"""The reference networks and user networks by import path.

``cnn1`` (one convolution), ``cnn2`` (two convolutions) and ``lenet5`` are the
reference networks whose ReLUs the project replaces by polynomials. Every nonlinearity
is its own ``nn.ReLU`` module (not in place) with a distinct attribute name (``relu1``,
``relu2``, ...), so each one is a separate site that can be replaced. Dense input sizes
follow from ``input_shape``: 4056 (cnn1) and 6912 (cnn2) for 1x28x28 MNIST images, 400
(lenet5) for both 1x28x28 and 3x32x32 images.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import torch
from torch import nn


def _conv_output(size: int, kernel: int, padding: int = 0) -> int:
    return size + 2 * padding - kernel + 1


class CNN1(nn.Module):
    """One convolution (C->6, kernel 3), ReLU and a dense layer to the classes."""

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10):
        super().__init__()
        channels, height, width = _check_shape(input_shape, min_size=3)
        self.conv1 = nn.Conv2d(channels, 6, kernel_size=3)
        self.relu1 = nn.ReLU()
        self.flatten = nn.Flatten()
        features = 6 * _conv_output(height, 3) * _conv_output(width, 3)
        self.fc1 = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))  # (B, 6, H-2, W-2)
        return self.fc1(self.flatten(x))


class CNN2(nn.Module):
    """Two convolutions (C->6->12, kernel 3), each followed by ReLU, and a dense layer."""

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10):
        super().__init__()
        channels, height, width = _check_shape(input_shape, min_size=5)
        self.conv1 = nn.Conv2d(channels, 6, kernel_size=3)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 12, kernel_size=3)
        self.relu2 = nn.ReLU()
        self.flatten = nn.Flatten()
        features = 12 * _conv_output(height, 3 + 2) * _conv_output(width, 3 + 2)
        self.fc1 = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))  # (B, 6, H-2, W-2)
        x = self.relu2(self.conv2(x))  # (B, 12, H-4, W-4)
        return self.fc1(self.flatten(x))


class LeNet5(nn.Module):
    """LeNet-5 with batch normalisation: (conv k5, BN, ReLU, max-pool 2) x2, dense 120-84.

    Classic LeNet-5 pads 28x28 digits to 32x32, so inputs smaller than 32 pixels get
    padding 2 on the first convolution; 28x28 and 32x32 inputs both reach 16x5x5 = 400
    features before the dense layers.
    """

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10):
        super().__init__()
        channels, height, width = _check_shape(input_shape, min_size=8)
        padding = 2 if min(height, width) < 32 else 0
        self.conv1 = nn.Conv2d(channels, 6, kernel_size=5, padding=padding)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        out_height = (_conv_output(height, 5, padding) // 2 - 4) // 2
        out_width = (_conv_output(width, 5, padding) // 2 - 4) // 2
        if out_height < 1 or out_width < 1:
            raise ValueError(f"input_shape {tuple(input_shape)} is too small for lenet5")
        self.fc1 = nn.Linear(16 * out_height * out_width, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))  # (B, 6, 14, 14) for 28 or 32
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))  # (B, 16, 5, 5)
        x = self.relu3(self.fc1(self.flatten(x)))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "cnn1": CNN1,
    "cnn2": CNN2,
    "lenet5": LeNet5,
}


def _check_shape(input_shape: Sequence[int], *, min_size: int) -> tuple[int, int, int]:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(size, int) and size > 0 for size in shape):
        raise ValueError(f"input_shape must be three positive integers (C, H, W), got {shape}")
    if shape[1] < min_size or shape[2] < min_size:
        raise ValueError(
            f"input_shape {shape} is too small: height and width must be >= {min_size}"
        )
    return shape


def build_network(
    name: str, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10
) -> nn.Module:
    """Build a network by name, or a user's network by import path.

    Args:
        name: A key of :data:`NETWORKS`, or ``package.module:factory`` where ``factory``
            is called as ``factory(input_shape=..., num_classes=...)`` and returns an
            ``nn.Module``.
        input_shape: ``(C, H, W)`` of one input image.
        num_classes: Number of outputs.

    Raises:
        ValueError: Unknown name, an import path whose module or factory is missing, or an
            invalid shape or class count.
        TypeError: The factory is not callable or does not return an ``nn.Module``.
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    input_shape = tuple(int(size) for size in input_shape)
    factory = resolve_network(name)
    model = factory(input_shape=input_shape, num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise TypeError(f"network factory {name!r} returned {type(model).__name__}, not nn.Module")
    return model


def resolve_network(name: str) -> Callable[..., object]:
    """Return the factory of a network name or import path without building the network.

    Raises:
        ValueError: Unknown name, or an import path whose module or factory is missing.
        TypeError: The import path names something that is not callable.
    """
    if not isinstance(name, str):
        raise TypeError(f"network name must be a string, got {type(name).__name__}")
    if name in NETWORKS:
        return NETWORKS[name]
    if ":" not in name:
        raise ValueError(
            f"unknown network {name!r}; choose one of {', '.join(NETWORKS)} "
            "or give an import path package.module:factory"
        )
    return _import_factory(name)


def _import_factory(path: str) -> Callable[..., object]:
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"invalid network import path {path!r}; expected package.module:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"failed to import module {module_name!r} of network {path!r}: {error}"
        ) from error
    factory = module
    for part in attribute.split("."):
        try:
            factory = getattr(factory, part)
        except AttributeError:
            raise ValueError(
                f"network {path!r}: module {module_name!r} has no {attribute!r}"
            ) from None
    if not callable(factory):
        raise TypeError(f"network {path!r} is not callable")
    return factory
