"""Reference networks: shapes, layer sizes, parameter counts, and user networks by path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.networks import NETWORKS, build_network, resolve_network

SHAPES = [(1, 28, 28), (3, 32, 32)]


def make_tiny(*, input_shape, num_classes):
    """Factory for the import-path tests: a linear layer over the flattened input."""
    channels, height, width = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, num_classes))


def make_not_a_module(*, input_shape, num_classes):
    return "not a network"


NOT_CALLABLE = 3


@pytest.mark.parametrize("name", sorted(NETWORKS))
@pytest.mark.parametrize("shape", SHAPES)
def test_network_output_shape(name, shape):
    model = build_network(name, shape, num_classes=7)

    logits = model(torch.randn(5, *shape))

    assert logits.shape == (5, 7)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("name", "shape", "layer", "features"),
    [
        # 6 channels x 26 x 26 after a 3x3 convolution of 28x28.
        ("cnn1", (1, 28, 28), "fc1", 4056),
        ("cnn1", (3, 32, 32), "fc1", 6 * 30 * 30),
        # 12 channels x 24 x 24 after two 3x3 convolutions of 28x28.
        ("cnn2", (1, 28, 28), "fc1", 6912),
        ("cnn2", (3, 32, 32), "fc1", 12 * 28 * 28),
        # 16 channels x 5 x 5 for both inputs.
        ("lenet5", (1, 28, 28), "fc1", 400),
        ("lenet5", (3, 32, 32), "fc1", 400),
    ],
)
def test_network_dense_input_size(name, shape, layer, features):
    model = build_network(name, shape)

    assert getattr(model, layer).in_features == features


@pytest.mark.parametrize(
    ("name", "count"),
    [
        # conv 1*6*9 + 6, dense 4056*10 + 10
        ("cnn1", 60 + 40_570),
        # conv 60, conv 6*12*9 + 12, dense 6912*10 + 10
        ("cnn2", 60 + 660 + 69_130),
        # conv 1*6*25 + 6, bn 12, conv 6*16*25 + 16, bn 32, dense 48120, 10164, 850
        ("lenet5", 156 + 12 + 2_416 + 32 + 48_120 + 10_164 + 850),
    ],
)
def test_network_parameter_count_mnist(name, count):
    model = build_network(name, (1, 28, 28), num_classes=10)

    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize(
    ("name", "relus"),
    [
        ("cnn1", ["relu1"]),
        ("cnn2", ["relu1", "relu2"]),
        ("lenet5", ["relu1", "relu2", "relu3", "relu4"]),
    ],
)
def test_network_relu_modules_distinct(name, relus):
    model = build_network(name)

    found = [n for n, module in model.named_modules() if isinstance(module, nn.ReLU)]
    assert found == relus
    for relu_name in relus:
        assert getattr(model, relu_name).inplace is False


def test_lenet5_layer_order():
    model = build_network("lenet5", (3, 32, 32), num_classes=101)

    assert model.conv1.padding == (0, 0)
    assert build_network("lenet5", (1, 28, 28)).conv1.padding == (2, 2)
    assert isinstance(model.bn1, nn.BatchNorm2d)
    assert isinstance(model.pool2, nn.MaxPool2d)
    assert model.fc3.out_features == 101


def test_network_import_path_builds_user_network():
    model = build_network("tests.models.test_networks:make_tiny", (1, 4, 4), num_classes=3)

    assert isinstance(model, nn.Sequential)
    assert model(torch.zeros(2, 1, 4, 4)).shape == (2, 3)


@pytest.mark.parametrize(
    ("name", "error", "text"),
    [
        ("resnet50", ValueError, "unknown network 'resnet50'"),
        ("no_such_package.models:build", ValueError, "no_such_package.models"),
        ("tests.models.test_networks:missing", ValueError, "has no 'missing'"),
        ("tests.models.test_networks:", ValueError, "package.module:factory"),
        ("tests.models.test_networks:NOT_CALLABLE", TypeError, "not callable"),
    ],
)
def test_network_bad_name_rejected(name, error, text):
    with pytest.raises(error, match=text.replace(".", r"\.")):
        resolve_network(name)


def test_network_factory_must_return_module():
    with pytest.raises(TypeError, match="returned str"):
        build_network("tests.models.test_networks:make_not_a_module")


@pytest.mark.parametrize("shape", [(1, 28), (1, 2, 2), (0, 28, 28)])
def test_network_invalid_shape_rejected(shape):
    with pytest.raises(ValueError, match="input_shape"):
        build_network("cnn2", shape)
