"""Checkpoints: a network's weights with everything needed to rebuild and use it.

A checkpoint is a ``torch.save`` file of one dict: the format version, the network
name (a key of :data:`models.networks.NETWORKS` or an import path), the dataset, the
input shape, the number of classes, the normalisation (mean and std per channel), the
training options, the measured accuracies, the ``state_dict`` and the SHA-256 digest of
the state dict's tensors. It contains only tensors, numbers, strings, lists and dicts,
so it loads with ``weights_only=True``, which never runs code from the file.

Loading checks the digest, so flipped bytes inside a tensor are detected, and rejects
tensors with NaN or infinite values. Checkpoints written before the digest existed load
with a logged warning; ``polysearch train --overwrite`` writes them again with one.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from models.networks import build_network

logger = logging.getLogger(__name__)

# Terminal colour codes, which torch puts in some error messages.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

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
    content["state_dict_sha256"] = state_dict_digest(content["state_dict"])
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
        ValueError: ``path`` is not a readable checkpoint, its tensors do not match the
            stored SHA-256 digest or contain NaN or infinite values, or it contains another
            network than ``network``.
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
        raise ValueError(_unreadable_message(path, error)) from error
    if not isinstance(content, dict) or "state_dict" not in content:
        raise ValueError(
            f"checkpoint {path} is not a checkpoint written by polysearch train: it contains "
            "no state_dict"
        )
    if "configuration" in content and "network" not in content:
        raise ValueError(_approximated_message(path, content))
    missing = [key for key in METADATA_KEYS if key not in content]
    if missing:
        raise ValueError(
            f"checkpoint {path} is not a checkpoint written by polysearch train: it lacks "
            f"{', '.join(missing)}"
        )
    if content.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format version {content.get('format_version')!r}, "
            f"this version reads {FORMAT_VERSION}"
        )
    if network is not None and content["network"] != network:
        raise ValueError(
            f"checkpoint {path} contains network {content['network']!r}, not {network!r}"
        )

    _check_state_dict(path, content)

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
    if "state_dict_sha256" not in content:
        # Logged only for a file that loads, so a rejected one gives just its error.
        logger.warning(
            "checkpoint %s has no SHA-256 digest of its weights (written by an older "
            "polysearch), so damage inside a tensor goes undetected; "
            "`polysearch train --overwrite` writes it again with one",
            path,
        )
    model.eval()
    return model, metadata


def state_dict_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Return the SHA-256 hex digest of a state dict's names, dtypes, shapes and tensor bytes.

    The keys are hashed in sorted order, so the digest does not depend on the dict's order.

    Raises:
        TypeError: A key is not a string or a value is not a tensor.
    """
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key]
        if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state dict entry {key!r} is not a named tensor")
        tensor = tensor.detach().cpu().contiguous()
        header = f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0"
        digest.update(header.encode())
        # Viewing as bytes covers every dtype, bfloat16 included, which numpy lacks.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_state_dict(path: Path, content: dict) -> None:
    """Raise ValueError when the state dict is not tensors, fails its digest or is not finite."""
    state_dict = content["state_dict"]
    if not isinstance(state_dict, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor)
        for key, value in state_dict.items()
    ):
        raise ValueError(f"checkpoint {path}: state_dict is not a dict of named tensors")
    expected = content.get("state_dict_sha256")
    if expected is not None and state_dict_digest(state_dict) != expected:
        raise ValueError(
            f"checkpoint {path} is damaged: its weights do not match the SHA-256 digest "
            "stored when it was saved; train the network again or restore the file"
        )
    for key, tensor in state_dict.items():
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        nonfinite = int((~torch.isfinite(tensor)).sum())
        if nonfinite:
            verb = "is" if nonfinite == 1 else "are"
            raise ValueError(
                f"checkpoint {path}: {nonfinite} of {tensor.numel()} values {verb} NaN or "
                f"infinite in tensor {key}; train the network again or restore the file"
            )


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _unreadable_message(path: Path, error: BaseException) -> str:
    """Return one line that says why ``torch.load`` failed, without torch's long advice."""
    text = _ANSI_ESCAPE.sub("", str(error))
    rejected = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if rejected is not None:
        return (
            f"checkpoint {path} is not a checkpoint written by polysearch train: it contains "
            f"the pickled Python object {rejected.group(1)}, which a weights-only load rejects; "
            "train the network with polysearch train, or save only its state dict"
        )
    return f"checkpoint {path} is damaged or not a PyTorch checkpoint written by polysearch train"


def _approximated_message(path: Path, content: dict) -> str:
    """Return the error for a file written by ``polysearch apply``, naming its source."""
    original = content.get("checkpoint")
    source = f" {original}" if isinstance(original, str) and original else ""
    return (
        f"checkpoint {path} is an approximated network written by polysearch apply, not a "
        f"trained network from polysearch train; pass the original checkpoint{source}, and "
        "rebuild the approximated network with polysearch apply or approximate --config"
    )


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
