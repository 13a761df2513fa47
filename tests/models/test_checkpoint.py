"""Checkpoint round trip, atomic writes and rejection of damaged or foreign files."""

from __future__ import annotations

import logging
import os
import stat
import struct

import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint, state_dict_digest
from models.networks import build_network

METADATA = {
    "network": "lenet5",
    "dataset": "cifar10",
    "input_shape": (3, 32, 32),
    "num_classes": 10,
    "mean": (0.49, 0.48, 0.45),
    "std": (0.25, 0.24, 0.26),
    "options": {"epochs": 3, "lr": 0.01, "optimizer": "adam", "limit": None, "tags": ["a"]},
    "accuracies": {"validation": 71.5, "test": 70.25},
}


def save(path, model=None, **changes):
    fields = {**METADATA, **changes}
    model = model or build_network(fields["network"], fields["input_shape"])
    save_checkpoint(path, model, **fields)
    return model


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_network("lenet5", (3, 32, 32))
    # Non-default batch-norm statistics must survive too.
    model.bn1.running_mean.fill_(0.5)
    path = tmp_path / "nested" / "lenet5.pt"
    save(path, model)

    loaded, metadata = load_checkpoint(path, network="lenet5")

    assert metadata == METADATA
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    inputs = torch.randn(4, 3, 32, 32)
    assert torch.equal(loaded(inputs), model.eval()(inputs))


def test_checkpoint_file_mode_follows_umask(tmp_path):
    path = tmp_path / "cnn1.pt"
    save(path, network="cnn1", input_shape=(1, 28, 28), mean=(0.1,), std=(0.3,))

    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_checkpoint_leaves_no_temporary_files(tmp_path):
    save(tmp_path / "a.pt")
    save(tmp_path / "a.pt")  # replacing is allowed by default

    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def test_checkpoint_no_overwrite_keeps_file(tmp_path):
    path = tmp_path / "a.pt"
    save(path)
    before = path.read_bytes()

    with pytest.raises(ValueError, match="already exists"):
        save(path, overwrite=False, accuracies={"test": 1.0})

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def test_checkpoint_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize(
    "content",
    [b"", b"not a checkpoint at all", b"PK\x03\x04" + b"\x00" * 40],
)
def test_checkpoint_damaged_file_rejected(tmp_path, content):
    path = tmp_path / "damaged.pt"
    path.write_bytes(content)

    with pytest.raises(ValueError, match="damaged.pt") as error:
        load_checkpoint(path)

    assert "\n" not in str(error.value)


def test_checkpoint_truncated_file_rejected(tmp_path):
    path = tmp_path / "cut.pt"
    save(path)
    path.write_bytes(path.read_bytes()[:5000])

    with pytest.raises(ValueError, match="cut.pt"):
        load_checkpoint(path)


def test_checkpoint_with_code_rejected(tmp_path):
    # The weights-only loader rejects a pickle that would run code.
    marker = tmp_path / "executed"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": RunsCode()}, path)

    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(path)
    assert not marker.exists()


def test_checkpoint_other_network_rejected(tmp_path):
    path = tmp_path / "lenet5.pt"
    save(path)

    with pytest.raises(ValueError, match="'lenet5', not 'cnn2'") as error:
        load_checkpoint(path, network="cnn2")

    assert "lenet5.pt" in str(error.value)


def test_checkpoint_plain_dict_rejected(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(build_network("cnn1").state_dict(), path)

    with pytest.raises(ValueError, match="weights.pt"):
        load_checkpoint(path)


def test_checkpoint_mismatched_weights_rejected(tmp_path):
    path = tmp_path / "wrong.pt"
    # cnn1 weights recorded as lenet5 cannot be loaded into lenet5.
    save(path, model=build_network("cnn1", (3, 32, 32)))

    with pytest.raises(ValueError, match="does not match network 'lenet5'"):
        load_checkpoint(path)


def test_checkpoint_options_must_be_plain(tmp_path):
    with pytest.raises(TypeError, match="device"):
        save(tmp_path / "a.pt", options={"device": torch.device("cpu")})

    assert not (tmp_path / "a.pt").exists()


def test_checkpoint_mean_length_checked(tmp_path):
    with pytest.raises(ValueError, match="one value per channel"):
        save(tmp_path / "a.pt", mean=(0.5,))


def overwrite_tensor_bytes(path, tensor, replacement: bytes) -> None:
    """Overwrite the first bytes of ``tensor``'s data inside the saved file ``path``."""
    data = bytearray(path.read_bytes())
    # torch.save stores tensor data uncompressed, so the tensor's bytes appear verbatim.
    start = data.find(tensor.reshape(-1)[:16].numpy().tobytes())
    assert start >= 0
    data[start : start + len(replacement)] = replacement
    path.write_bytes(bytes(data))


def save_cnn1(path, model=None):
    torch.manual_seed(0)
    model = model or build_network("cnn1")
    save(path, model, network="cnn1", input_shape=(1, 28, 28), mean=(0.1,), std=(0.3,))
    return model


def test_checkpoint_changed_weight_bytes_rejected(tmp_path):
    path = tmp_path / "cnn1.pt"
    model = save_cnn1(path)
    # A finite replacement: only the stored digest can tell that the weight changed.
    overwrite_tensor_bytes(path, model.fc1.weight.detach(), struct.pack("<f", 0.5))

    with pytest.raises(ValueError, match="do not match the SHA-256 digest") as error:
        load_checkpoint(path)

    assert "cnn1.pt is damaged" in str(error.value)


@pytest.mark.parametrize("name", ["fc1.weight", "conv1.bias"])
def test_checkpoint_nan_parameter_rejected(tmp_path, name):
    model = build_network("cnn1")
    with torch.no_grad():
        model.get_parameter(name).view(-1)[0] = float("nan")
    path = tmp_path / "nan.pt"
    save_cnn1(path, model)

    with pytest.raises(ValueError, match=f"NaN or infinite in tensor {name}") as error:
        load_checkpoint(path)

    assert "nan.pt" in str(error.value)
    assert "1 of" in str(error.value)


def test_checkpoint_infinite_buffer_rejected(tmp_path):
    model = build_network("lenet5", (3, 32, 32))
    model.bn1.running_var[2] = float("inf")
    path = tmp_path / "inf.pt"
    save(path, model)

    with pytest.raises(ValueError, match="in tensor bn1.running_var"):
        load_checkpoint(path)


def without_digest(path):
    content = torch.load(path, weights_only=True)
    del content["state_dict_sha256"]
    torch.save(content, path)


def test_checkpoint_without_digest_loads_with_warning(tmp_path, caplog):
    path = tmp_path / "old.pt"
    model = save_cnn1(path)
    without_digest(path)

    with caplog.at_level(logging.WARNING, logger="models.checkpoint"):
        loaded, _ = load_checkpoint(path)

    assert torch.equal(loaded.fc1.weight, model.fc1.weight)
    assert len(caplog.records) == 1
    assert "old.pt has no SHA-256 digest" in caplog.records[0].getMessage()


def test_checkpoint_without_digest_nan_rejected(tmp_path, caplog):
    path = tmp_path / "old.pt"
    model = save_cnn1(path)
    without_digest(path)
    overwrite_tensor_bytes(path, model.fc1.weight.detach(), struct.pack("<f", float("nan")))

    with caplog.at_level(logging.WARNING, logger="models.checkpoint"):
        with pytest.raises(ValueError, match="1 of 40560 values is NaN or infinite in tensor fc1"):
            load_checkpoint(path)

    # fc1.weight of cnn1 is 10 x (6 * 26 * 26) = 40560 values. The rejected file gives only
    # its error, not the missing-digest warning too.
    assert caplog.records == []


def test_state_dict_digest_ignores_order_sees_values():
    first = {"a": torch.zeros(3), "b": torch.ones(2, dtype=torch.int64)}
    reordered = {"b": first["b"].clone(), "a": first["a"].clone()}
    changed = {"a": torch.tensor([0.0, 0.0, 1e-30]), "b": first["b"]}
    renamed = {"c": first["a"], "b": first["b"]}
    retyped = {"a": torch.zeros(3, dtype=torch.float64), "b": first["b"]}

    assert state_dict_digest(first) == state_dict_digest(reordered)
    assert state_dict_digest(first) != state_dict_digest(changed)
    assert state_dict_digest(first) != state_dict_digest(renamed)
    assert state_dict_digest(first) != state_dict_digest(retyped)
    assert len(state_dict_digest(first)) == 64


def test_checkpoint_text_file_message(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("epoch 1: 97 %\n")

    with pytest.raises(ValueError) as error:
        load_checkpoint(path)

    assert str(error.value) == (
        f"checkpoint {path} is damaged or not a PyTorch checkpoint written by polysearch train"
    )


def test_checkpoint_pickled_module_message(tmp_path):
    path = tmp_path / "module.pt"
    torch.save(build_network("cnn1"), path)

    with pytest.raises(ValueError) as error:
        load_checkpoint(path)

    message = str(error.value)
    assert "\x1b" not in message
    assert "\n" not in message
    assert message.startswith(f"checkpoint {path} is not a checkpoint written by polysearch train")
    assert "pickled Python object models.networks.CNN1" in message


def test_checkpoint_applied_network_message(tmp_path):
    # The layout polysearch apply writes: the approximated state dict with its configuration.
    path = tmp_path / "approximated.pt"
    torch.save(
        {
            "configuration": {"format": "polysearch-configuration", "network": "CNN1"},
            "checkpoint": "checkpoints/cnn1-mnist.pt",
            "metadata": {"network": "cnn1", "dataset": "mnist"},
            "test_accuracy": 96.5,
            "state_dict": build_network("cnn1").state_dict(),
        },
        path,
    )

    with pytest.raises(ValueError) as error:
        load_checkpoint(path)

    message = str(error.value)
    assert message.startswith(f"checkpoint {path} is an approximated network written by")
    assert "pass the original checkpoint checkpoints/cnn1-mnist.pt" in message
