"""Fixtures of the approx tests: small MNIST splits and quickly trained networks."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch


@pytest.fixture(scope="session")
def trained_cnn2(mnist_small):
    """cnn2 trained for one epoch on 2000 MNIST images (about two seconds on one core)."""
    from models.networks import build_network
    from models.training import train

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_network("cnn2")
    train(model, mnist_small, validation=None, epochs=1, seed=0, progress=False)
    return model.eval()


@pytest.fixture(scope="session")
def trained_lenet5(mnist_small):
    """lenet5 (with BatchNorm) trained for one epoch on 2000 MNIST images."""
    from models.networks import build_network
    from models.training import train

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_network("lenet5")
    train(model, mnist_small, validation=None, epochs=1, seed=0, progress=False)
    return model.eval()


@pytest.fixture(scope="session")
def calibration_inputs(mnist_small) -> torch.Tensor:
    return mnist_small.train.tensors[0][:500]


@contextlib.contextmanager
def umask(mask: int):
    """Set the process umask to ``mask`` inside the block and restore it afterwards."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)
