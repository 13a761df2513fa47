"""Training and evaluation of classification networks.

:func:`train` minimises cross-entropy with Adam (or SGD with momentum 0.9) under a
one-cycle learning-rate schedule; :func:`evaluate` measures accuracy in percent and
counts samples whose logits are not finite as wrong.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm import tqdm

logger = logging.getLogger(__name__)

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd")
# Peak learning rates of the one-cycle schedule, chosen on the MNIST reference networks
# (benchmarks/train_reference.py).
DEFAULT_LR = {"adam": 7e-3, "sgd": 0.1}
DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 128


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite.

    Attributes:
        epoch: 1-based epoch of the batch.
        batch: 1-based batch within the epoch.
    """

    def __init__(self, epoch: int, batch: int, loss: float):
        super().__init__(
            f"training loss is {loss} at epoch {epoch}, batch {batch}; "
            "lower the learning rate or check the inputs"
        )
        self.epoch = epoch
        self.batch = batch


@dataclass(frozen=True)
class Evaluation:
    """Accuracy of a network on a dataset.

    Attributes:
        accuracy: Correct predictions in percent of ``total``, in [0, 100].
        correct: Samples whose largest logit is the label (never one with a non-finite logit).
        total: Samples evaluated.
        nonfinite: Samples with at least one NaN or infinite logit, all counted as wrong.
    """

    accuracy: float
    correct: int
    total: int
    nonfinite: int


def available_devices() -> list[str]:
    """List the devices this machine can run on: ``cpu``, then ``cuda:N`` and ``mps``."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Check ``device`` and return it as a ``torch.device``.

    ``None`` means CUDA when available, else the CPU. A device is accepted only if this
    machine has it, so a wrong ``--device`` fails before any data is loaded.

    Raises:
        ValueError: ``device`` is not a device name (such as ``cpu``, ``cuda`` or
            ``cuda:1``), or this machine lacks it; the message lists the available devices.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = ", ".join(available_devices())
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"invalid device {str(device)!r}; available devices: {available}"
        ) from None
    if resolved.type == "cpu":
        return resolved
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(device)!r}: CUDA is not available on this machine; use cpu"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r} does not exist; available devices: {available}"
            )
        return resolved
    if resolved.type == "mps" and torch.backends.mps.is_available():
        return resolved
    raise ValueError(
        f"device {str(device)!r} is not available on this machine; available devices: {available}"
    )


def train(
    model: nn.Module,
    splits_or_train_dataset: object,
    validation: Dataset | None = None,
    *,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float | None = None,
    optimizer: str = "adam",
    seed: int = 0,
    device: str | torch.device | None = None,
    parameters: Iterable[nn.Parameter] | None = None,
    progress: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train ``model`` in place with cross-entropy and a one-cycle learning rate.

    Args:
        model: The network; it is moved to ``device`` and left in the mode (train or eval)
            it had on entry.
        splits_or_train_dataset: A :class:`models.datasets.DatasetSplits` (its train split
            is used, and its validation split unless ``validation`` is given) or a dataset
            of ``(input, label)`` pairs.
        validation: Dataset measured after every epoch; ``None`` skips the measurement.
        epochs: Passes over the training data (default 10).
        batch_size: Samples per step (default 128).
        lr: Peak learning rate of the one-cycle schedule (default 7e-3 for Adam, 0.1 for SGD).
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9).
        seed: Seeds the shuffling and ``torch.manual_seed``, so equal seeds give equal runs
            on the same device and thread count.
        device: Where to train; ``None`` means CUDA when available, else the CPU.
        parameters: Parameters to optimise; during training they get ``requires_grad=True``
            and all others ``False``, and every flag is restored afterwards. Batch-norm
            running statistics of every layer still update, as in any training-mode
            forward pass.
        progress: Show a tqdm bar; it stays quiet anyway when stderr is not a terminal.
        on_epoch: Called with each epoch's metrics; an exception it raises stops training.

    Returns:
        One dict per epoch: ``epoch`` (1-based), ``train_loss`` (mean cross-entropy over the
        epoch's samples), ``validation_accuracy`` (percent, or ``None`` without validation).

    Raises:
        ValueError: Invalid epochs, batch size, learning rate, optimizer or device, or
            empty data.
        NonFiniteLossError: The loss became NaN or infinite.
    """
    train_dataset, validation = _resolve_datasets(splits_or_train_dataset, validation)
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    lr = DEFAULT_LR[optimizer] if lr is None else lr
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"learning rate must be a positive number, got {lr!r}")
    if len(train_dataset) == 0:
        raise ValueError("the training dataset is empty")

    device = resolve_device(device)
    torch.manual_seed(seed)
    model.to(device)
    trainable = _select_parameters(model, parameters)
    torch_optimizer = _make_optimizer(optimizer, trainable, lr)
    steps_per_epoch = math.ceil(len(train_dataset) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        torch_optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(seed)
    loss_function = nn.CrossEntropyLoss()
    was_training = model.training
    saved_flags = _set_trainable(model, trainable)
    show_bar = progress and sys.stderr.isatty()
    history: list[dict] = []
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            total_loss, total_samples = 0.0, 0
            batches = _batches(train_dataset, batch_size, generator)
            bar = tqdm(
                batches,
                total=steps_per_epoch,
                desc=f"epoch {epoch}/{epochs}",
                leave=False,
                disable=not show_bar,
            )
            for batch_index, (inputs, labels) in enumerate(bar, start=1):
                inputs, labels = inputs.to(device), labels.to(device)
                loss = loss_function(model(inputs), labels)
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(epoch, batch_index, loss.item())
                torch_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch_optimizer.step()
                scheduler.step()
                total_loss += loss.item() * len(labels)
                total_samples += len(labels)
                bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            bar.close()

            metrics = {"epoch": epoch, "train_loss": total_loss / total_samples}
            metrics["validation_accuracy"] = (
                evaluate(model, validation, device=device).accuracy
                if validation is not None
                else None
            )
            history.append(metrics)
            logger.info(
                "epoch %d/%d: train loss %.4f, validation accuracy %s",
                epoch,
                epochs,
                metrics["train_loss"],
                "-"
                if metrics["validation_accuracy"] is None
                else f"{metrics['validation_accuracy']:.2f} %",
            )
            if on_epoch is not None:
                on_epoch(metrics)
    finally:
        for parameter, flag in saved_flags:
            parameter.requires_grad_(flag)
        model.train(was_training)
    return history


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 1000,
    device: str | torch.device | None = None,
) -> Evaluation:
    """Measure the accuracy of ``model`` on ``dataset`` of ``(input, label)`` pairs.

    The model runs in eval mode under ``torch.inference_mode`` on ``device``, and its
    training flag is restored afterwards. ``device=None`` means the device of the first
    parameter, or the CPU for a network without parameters. A sample whose logits contain NaN or an
    infinity is wrong, whatever its largest finite logit.

    Raises:
        ValueError: The dataset is empty, ``batch_size`` is below 1 or ``device`` is not
            available.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if len(dataset) == 0:
        raise ValueError("the dataset to evaluate is empty")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    else:
        device = resolve_device(device)
    was_training = model.training
    model.eval()
    correct = total = nonfinite = 0
    try:
        with torch.inference_mode():
            for inputs, labels in _batches(dataset, batch_size, None):
                inputs, labels = inputs.to(device), labels.to(device)
                logits = model(inputs)  # (B, classes)
                finite = torch.isfinite(logits).all(dim=1)
                hits = (logits.argmax(dim=1) == labels) & finite
                correct += int(hits.sum())
                nonfinite += int((~finite).sum())
                total += len(labels)
    finally:
        model.train(was_training)
    return Evaluation(
        accuracy=100.0 * correct / total, correct=correct, total=total, nonfinite=nonfinite
    )


def _resolve_datasets(
    splits_or_train_dataset: object, validation: Dataset | None
) -> tuple[Dataset, Dataset | None]:
    # DatasetSplits is recognised by its fields, so this module does not import datasets.
    if hasattr(splits_or_train_dataset, "train") and hasattr(
        splits_or_train_dataset, "validation"
    ):
        train_dataset = splits_or_train_dataset.train
        if validation is None:
            validation = splits_or_train_dataset.validation
        return train_dataset, validation
    if isinstance(splits_or_train_dataset, Dataset):
        return splits_or_train_dataset, validation
    raise TypeError(
        "expected DatasetSplits or a torch Dataset to train on, "
        f"got {type(splits_or_train_dataset).__name__}"
    )


def _batches(
    dataset: Dataset, batch_size: int, generator: torch.Generator | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(inputs, labels)`` batches, shuffled with ``generator`` when one is given."""
    if isinstance(dataset, TensorDataset):
        inputs, labels = dataset.tensors[0], dataset.tensors[1]
        if generator is not None:
            order = torch.randperm(len(inputs), generator=generator)
        else:
            order = torch.arange(len(inputs))
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            yield inputs[index], labels[index]
        return
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=generator is not None, generator=generator
    )
    yield from loader


def _select_parameters(
    model: nn.Module, parameters: Iterable[nn.Parameter] | None
) -> list[nn.Parameter]:
    if parameters is None:
        selected = [p for p in model.parameters() if p.requires_grad]
    else:
        selected = list(parameters)
        owned = {id(p) for p in model.parameters()}
        if any(id(p) not in owned for p in selected):
            raise ValueError("parameters must belong to the model being trained")
    if not selected:
        raise ValueError("the model has no parameters to train")
    return selected


def _set_trainable(
    model: nn.Module, trainable: list[nn.Parameter]
) -> list[tuple[nn.Parameter, bool]]:
    """Let only ``trainable`` require gradients; return every parameter's previous flag."""
    keep = {id(p) for p in trainable}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for parameter, _ in saved:
        parameter.requires_grad_(id(parameter) in keep)
    return saved


def _make_optimizer(name: str, parameters: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr)
    return torch.optim.SGD(parameters, lr=lr, momentum=0.9, nesterov=True)
