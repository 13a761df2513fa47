"""Checkpoints: a network's weights with everything needed to rebuild and use it.

A checkpoint is a ``torch.save`` file of one dict: the format version, the network
name (a key of :data:`models.networks.NETWORKS` or an import path), the dataset, the
input shape, the number of classes, the normalisation (mean and std per channel), the
training options, the measured accuracies and the ``state_dict``. It contains only
tensors, numbers, strings, lists and dicts, so it loads with ``weights_only=True``,
which never runs code from the file.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from models.networks import build_network

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
METADATA_KEYS = (
    "network",
    "dataset",
    "input_shape",
    "num_classes",
    "mean",
    "std",
    "options",
    "accuracies",
)


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    network: str,
    dataset: str,
    input_shape: Sequence[int],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    options: Mapping[str, object],
    accuracies: Mapping[str, float],
    overwrite: bool = True,
) -> None:
    """Write ``model``'s weights and metadata to ``path`` atomically.

    The file is written to a temporary file in the same folder and then moved into
    place, so ``path`` contains either the old content or the complete new one. Missing
    parent folders are created.

    Args:
        path: Destination file (``.pt`` by convention).
        model: The trained network; its ``state_dict`` is stored on the CPU.
        network: Name or import path that :func:`models.networks.build_network` accepts.
        dataset: Dataset name.
        input_shape: ``(C, H, W)`` of one input.
        num_classes: Number of classes.
        mean, std: Per-channel normalisation applied to the inputs.
        options: Training options (epochs, lr, ...): strings, numbers, booleans, None,
            and lists or dicts of those.
        accuracies: Accuracies in percent by split name (``validation``, ``test``).
        overwrite: Replace an existing file; with ``False`` an existing ``path`` raises.

    Raises:
        ValueError: ``path`` exists and ``overwrite`` is false, or a field is invalid.
        TypeError: ``options`` or ``accuracies`` hold values a weights-only load rejects.
    """
    path = Path(path)
    input_shape = [int(size) for size in input_shape]
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {input_shape}")
    if len(mean) != input_shape[0] or len(std) != input_shape[0]:
        raise ValueError(
            f"mean and std need one value per channel ({input_shape[0]}), "
            f"got {len(mean)} and {len(std)}"
        )
    _check_plain(options, "options")
    _check_plain(accuracies, "accuracies")
    if not overwrite and path.exists():
        raise ValueError(f"checkpoint {path} already exists; remove it or choose another path")

    content = {
        "format_version": FORMAT_VERSION,
        "network": str(network),
        "dataset": str(dataset),
        "input_shape": input_shape,
        "num_classes": int(num_classes),
        "mean": [float(value) for value in mean],
        "std": [float(value) for value in std],
        "options": dict(options),
        "accuracies": {str(key): float(value) for key, value in accuracies.items()},
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # mkstemp creates the file readable by its owner only; give it the usual mode.
        os.chmod(temporary, 0o666 & ~_current_umask())
        with os.fdopen(descriptor, "wb") as file:
            torch.save(content, file)
            file.flush()
            os.fsync(file.fileno())
        if overwrite:
            os.replace(temporary, path)
        else:
            # A hard link fails when ``path`` appeared meanwhile, unlike a rename.
            try:
                os.link(temporary, path)
            except FileExistsError:
                raise ValueError(
                    f"checkpoint {path} already exists; remove it or choose another path"
                ) from None
            os.unlink(temporary)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    logger.info("saved checkpoint %s", path)


def load_checkpoint(path: str | Path, *, network: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the network stored in ``path``.

    Args:
        path: A file written by :func:`save_checkpoint`.
        network: When given, the checkpoint must hold this network.

    Returns:
        The network on the CPU in eval mode, and the metadata dict with the keys
        ``network``, ``dataset``, ``input_shape`` (tuple), ``num_classes``, ``mean``,
        ``std`` (tuples), ``options`` and ``accuracies``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a readable checkpoint, or it contains another network
            than ``network``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    if not path.is_file():
        raise ValueError(f"checkpoint {path} is not a file")
    try:
        # Damaged files can make the loader warn before it fails; the error says enough.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many kinds on damaged input
        raise ValueError(
            f"checkpoint {path} is damaged or not a checkpoint ({_first_line(error)})"
        ) from error
    if not isinstance(content, dict) or "state_dict" not in content:
        raise ValueError(f"checkpoint {path} is not a polysearch checkpoint (no state_dict)")
    missing = [key for key in METADATA_KEYS if key not in content]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {', '.join(missing)}")
    if content.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format version {content.get('format_version')!r}, "
            f"this version reads {FORMAT_VERSION}"
        )
    if network is not None and content["network"] != network:
        raise ValueError(
            f"checkpoint {path} contains network {content['network']!r}, not {network!r}"
        )

    metadata = {key: content[key] for key in METADATA_KEYS}
    metadata["input_shape"] = tuple(metadata["input_shape"])
    metadata["mean"] = tuple(metadata["mean"])
    metadata["std"] = tuple(metadata["std"])
    model = build_network(
        metadata["network"],
        input_shape=metadata["input_shape"],
        num_classes=metadata["num_classes"],
    )
    try:
        model.load_state_dict(content["state_dict"])
    except RuntimeError as error:
        raise ValueError(
            f"checkpoint {path} does not match network {metadata['network']!r}: "
            f"{_first_line(error)}"
        ) from error
    model.eval()
    return model, metadata


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _check_plain(value: object, where: str) -> None:
    """Raise TypeError unless ``value`` is built from types a weights-only load accepts."""
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value) and where.startswith("accuracies"):
            raise ValueError(f"{where} must be finite numbers, got {value}")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} keys must be strings, got {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_plain(item, where)
        return
    raise TypeError(
        f"{where} contains {type(value).__name__} {value!r}; use strings, numbers, lists or dicts"
    )
