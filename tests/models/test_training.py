"""Training and evaluation on small splits and on hand-built models with known outputs."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from models.networks import build_network
from models.training import NonFiniteLossError, evaluate, train


def test_train_short_run_beats_chance(mnist_small):
    torch.manual_seed(0)
    model = build_network("cnn1")

    history = train(model, mnist_small, epochs=2, seed=0, progress=False)

    assert [entry["epoch"] for entry in history] == [1, 2]
    # Chance is 10 %; 2000 images and two epochs reach well above 80 % for this network.
    assert history[-1]["validation_accuracy"] > 80.0
    assert evaluate(model, mnist_small.test).accuracy > 80.0
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert model.training  # train() leaves the mode it found


def test_train_sgd_beats_chance(mnist_small):
    torch.manual_seed(0)
    model = build_network("cnn1")

    history = train(model, mnist_small, epochs=2, optimizer="sgd", progress=False)

    assert history[-1]["validation_accuracy"] > 80.0


def test_train_same_seed_same_weights(mnist_small):
    subset = TensorDataset(*(t[:500] for t in mnist_small.train.tensors))
    weights = []
    for _ in range(2):
        torch.manual_seed(1)
        model = build_network("cnn1")
        train(model, subset, epochs=1, seed=4, progress=False)
        weights.append(model.state_dict())

    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_train_without_validation_reports_none(mnist_small):
    subset = TensorDataset(*(t[:256] for t in mnist_small.train.tensors))

    history = train(build_network("cnn1"), subset, epochs=1, progress=False)

    assert history[0]["validation_accuracy"] is None
    assert math.isfinite(history[0]["train_loss"])


def test_train_only_given_parameters_change(mnist_small):
    subset = TensorDataset(*(t[:256] for t in mnist_small.train.tensors))
    model = build_network("cnn2")
    model.conv1.weight.requires_grad_(False)  # a flag the caller set must survive
    before = {key: value.clone() for key, value in model.state_dict().items()}

    train(model, subset, epochs=1, parameters=model.fc1.parameters(), progress=False)

    after = model.state_dict()
    for key in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"):
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(before["fc1.weight"], after["fc1.weight"])
    assert model.conv1.weight.requires_grad is False
    assert model.conv2.weight.requires_grad is True


def test_train_non_finite_loss_raises():
    inputs = torch.ones(8, 1, 28, 28)
    inputs[3] = float("inf")
    dataset = TensorDataset(inputs, torch.zeros(8, dtype=torch.int64))

    with pytest.raises(NonFiniteLossError) as error:
        train(build_network("cnn1"), dataset, epochs=2, batch_size=8, progress=False)

    assert error.value.epoch == 1
    assert error.value.batch == 1
    assert isinstance(error.value, ValueError)


def test_train_on_epoch_receives_metrics(mnist_small):
    subset = TensorDataset(*(t[:128] for t in mnist_small.train.tensors))
    received = []

    train(
        build_network("cnn1"),
        subset,
        mnist_small.validation,
        epochs=2,
        on_epoch=received.append,
        progress=False,
    )

    assert [entry["epoch"] for entry in received] == [1, 2]
    assert all(0.0 <= entry["validation_accuracy"] <= 100.0 for entry in received)


def test_train_on_epoch_exception_stops(mnist_small):
    subset = TensorDataset(*(t[:128] for t in mnist_small.train.tensors))
    calls = []

    def stop(metrics):
        calls.append(metrics["epoch"])
        raise KeyError("stop")

    with pytest.raises(KeyError):
        train(build_network("cnn1"), subset, epochs=5, on_epoch=stop, progress=False)
    assert calls == [1]


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"optimizer": "rmsprop"}, "rmsprop"),
        ({"lr": -1.0}, "learning rate"),
        ({"lr": float("nan")}, "learning rate"),
    ],
)
def test_train_invalid_options_rejected(mnist_small, options, text):
    with pytest.raises(ValueError, match=text):
        train(build_network("cnn1"), mnist_small, progress=False, **options)


def test_train_rejects_foreign_parameters(mnist_small):
    other = nn.Linear(2, 2)

    with pytest.raises(ValueError, match="belong"):
        train(build_network("cnn1"), mnist_small, parameters=other.parameters(), progress=False)


class FixedLogits(nn.Module):
    """Returns the input rows themselves as logits."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x * self.scale


def test_evaluate_counts_non_finite_as_wrong():
    logits = torch.tensor(
        [
            [0.0, 5.0, 1.0],  # predicts 1, label 1: correct
            [9.0, 1.0, 0.0],  # predicts 0, label 0: correct
            [0.0, 1.0, 2.0],  # predicts 2, label 0: wrong
            [float("nan"), 7.0, 0.0],  # largest finite logit is the label, but NaN: wrong
            [0.0, float("inf"), 0.0],  # infinite: wrong
            [1.0, 0.0, 3.0],  # predicts 2, label 2: correct
        ]
    )
    labels = torch.tensor([1, 0, 0, 1, 1, 2])
    model = FixedLogits()

    result = evaluate(model, TensorDataset(logits, labels), batch_size=4)

    assert result.correct == 3
    assert result.total == 6
    assert result.nonfinite == 2
    assert result.accuracy == pytest.approx(50.0)
    assert model.training  # restored after evaluation


def test_evaluate_restores_eval_mode(mnist_small):
    model = build_network("lenet5").eval()

    evaluate(model, mnist_small.test)

    assert not model.training


def test_evaluate_empty_dataset_rejected():
    empty = TensorDataset(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64))

    with pytest.raises(ValueError, match="empty"):
        evaluate(FixedLogits(), empty)


def test_resolve_device_accepts_cpu():
    from models.training import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected


def test_resolve_device_rejects_unknown_name():
    from models.training import resolve_device

    with pytest.raises(ValueError, match=r"invalid device 'nosuch'; available devices: cpu"):
        resolve_device("nosuch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_resolve_device_rejects_missing_cuda():
    from models.training import resolve_device

    with pytest.raises(ValueError, match="device 'cuda:0': CUDA is not available"):
        resolve_device("cuda:0")


def test_resolve_device_rejects_missing_cuda_index():
    from models.training import resolve_device

    # No machine has 1000 GPUs, so this index fails with CUDA or without it.
    with pytest.raises(ValueError, match="device 'cuda:999'"):
        resolve_device("cuda:999")


def test_evaluate_rejects_unknown_device(mnist_small):
    with pytest.raises(ValueError, match="invalid device 'nosuch'"):
        evaluate(build_network("cnn1"), mnist_small.test, device="nosuch")
