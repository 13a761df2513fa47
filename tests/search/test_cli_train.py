"""``polysearch train`` and ``polysearch evaluate`` through a real subprocess."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import time

import pytest

from models.checkpoint import load_checkpoint, save_checkpoint
from models.networks import build_network
from tests.search.conftest import start_polysearch


def write_untrained_checkpoint(path, network="cnn1"):
    save_checkpoint(
        path,
        build_network(network),
        network=network,
        dataset="mnist",
        input_shape=(1, 28, 28),
        num_classes=10,
        mean=(0.13,),
        std=(0.31,),
        options={"seed": 0},
        accuracies={},
    )


def stdout_value(output: str, label: str) -> float:
    """Return the number after ``label:`` in the command's output."""
    for line in output.splitlines():
        if line.startswith(f"{label}:"):
            return float(line.split(":")[1].split("%")[0])
    raise AssertionError(f"no line {label!r} in {output!r}")


def test_cli_train_evaluate_and_mlflow(tmp_path, run_cli, snapshot_files):
    from mlflow import MlflowClient

    trained = run_cli(
        "train", "--model", "cnn1", "--dataset", "mnist", "--epochs", "2", "--limit", "1000",
        cwd=tmp_path,
    )  # fmt: skip

    assert trained.returncode == 0, trained.stderr
    checkpoint = tmp_path / "checkpoints" / "cnn1-mnist.pt"
    assert checkpoint.is_file()
    validation = stdout_value(trained.stdout, "validation accuracy")
    test = stdout_value(trained.stdout, "test accuracy")
    # Chance is 10 %; two epochs on 1000 images reach far more.
    assert validation > 70.0
    assert test > 70.0
    _, metadata = load_checkpoint(checkpoint, network="cnn1")
    assert metadata["dataset"] == "mnist"
    assert metadata["options"]["epochs"] == 2
    assert metadata["options"]["limit"] == 1000
    assert round(metadata["accuracies"]["test"], 2) == test

    # The MLflow run: parameters, one train-loss value per epoch, final accuracies and the
    # checkpoint as an artifact under mlruns/artifacts.
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("training")
    assert experiment.artifact_location.startswith("file://")
    assert experiment.artifact_location.endswith("/mlruns/artifacts/training")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["network"] == "cnn1"
    assert run.data.params["epochs"] == "2"
    assert run.data.params["optimizer"] == "adam"
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in losses) == [1, 2]
    accuracies = client.get_metric_history(run.info.run_id, "validation_accuracy")
    assert len(accuracies) == 2
    assert run.data.metrics["test_accuracy"] == pytest.approx(test, abs=0.005)
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")]
    assert artifacts == ["checkpoint/cnn1-mnist.pt"]
    stored = list((tmp_path / "mlruns" / "artifacts").rglob("cnn1-mnist.pt"))
    assert [p.read_bytes() for p in stored] == [checkpoint.read_bytes()]

    # evaluate on the same limited split reproduces the accuracy train printed.
    evaluated = run_cli(
        "evaluate", "--checkpoint", str(checkpoint), "--limit", "1000", "--model", "cnn1",
        cwd=tmp_path,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    assert stdout_value(evaluated.stdout, "test accuracy") == test
    assert "/1000, 0 non-finite)" in evaluated.stdout

    # A second run must not replace the checkpoint or touch the MLflow store.
    before = snapshot_files(tmp_path)
    again = run_cli(
        "train", "--model", "cnn1", "--dataset", "mnist", "--epochs", "1", "--limit", "100",
        cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1
    assert "cnn1-mnist.pt already exists" in again.stderr
    assert "--overwrite" in again.stderr
    assert snapshot_files(tmp_path) == before


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "--model", "resnet9", "--dataset", "mnist"], "unknown network 'resnet9'"),
        (["train", "--model", "no_such_module:make", "--dataset", "mnist"], "no_such_module"),
        (["train", "--model", "cnn2", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (
            ["train", "--model", "lenet5", "--dataset", "cifar10", "--data-dir", "empty"],
            "empty/cifar-10-batches-py",
        ),
        (
            ["train", "--model", "lenet5", "--dataset", "caltech101", "--data-dir", "empty"],
            "empty/caltech101/101_ObjectCategories",
        ),
        (
            ["train", "--model", "cnn1", "--dataset", "mnist", "--data-dir", "nothing"],
            "data folder 'nothing' not found",
        ),
        (
            ["evaluate", "--checkpoint", "cnn1.pt", "--data-dir", "nothing"],
            "data folder 'nothing' not found",
        ),
        (
            ["calibrate", "--checkpoint", "cnn1.pt", "--data-dir", "nothing"],
            "data folder 'nothing' not found",
        ),
        (
            ["approximate", "--checkpoint", "cnn1.pt", "--data-dir", "nothing"],
            "data folder 'nothing' not found",
        ),
        (
            ["train", "--model", "cnn1", "--dataset", "mnist", "--output", "nosuch/c.pt"],
            "folder nosuch of --output does not exist; create it first",
        ),
        (
            ["approximate", "--checkpoint", "cnn1.pt", "--output", "nosuch/c.json"],
            "folder 'nosuch' of --output does not exist: create it first",
        ),
        (
            ["approximate", "--checkpoint", "cnn1.pt", "--output", "cnn1.pt"],
            "output file 'cnn1.pt' exists: pass --overwrite or another --output",
        ),
        (["evaluate", "--checkpoint", "absent.pt"], "checkpoint absent.pt not found"),
        (["evaluate", "--checkpoint", "damaged.pt"], "checkpoint damaged.pt is damaged"),
        (
            ["evaluate", "--checkpoint", "cnn1.pt", "--model", "cnn2"],
            "checkpoint cnn1.pt contains network 'cnn1', not 'cnn2'",
        ),
    ],
)
def test_cli_bad_input_one_line_exit_2(tmp_path, run_cli, snapshot_files, args, expected):
    (tmp_path / "empty").mkdir()
    (tmp_path / "damaged.pt").write_bytes(b"\x80\x04this is not a checkpoint")
    write_untrained_checkpoint(tmp_path / "cnn1.pt")
    (tmp_path / "checkpoints").mkdir()
    write_untrained_checkpoint(tmp_path / "checkpoints" / "cnn2-mnist.pt", "cnn2")
    before = snapshot_files(tmp_path)

    result = run_cli(*args, cwd=tmp_path)

    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"polysearch {args[0]}: error: ")
    assert expected in lines[0]
    assert result.stdout == ""
    assert snapshot_files(tmp_path) == before
    assert not (tmp_path / "mlruns").exists()


def test_cli_train_invalid_epochs(tmp_path, run_cli):
    result = run_cli(
        "train", "--model", "cnn1", "--dataset", "mnist", "--epochs", "0", cwd=tmp_path
    )

    assert result.returncode == 2
    assert "--epochs: must be at least 1, got 0" in result.stderr
    assert list(tmp_path.iterdir()) == []


CUDA_MISSING = "CUDA is not available on this machine; use cpu"


@pytest.mark.parametrize("command", ["train", "evaluate", "calibrate", "approximate"])
@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("nosuch", "invalid device 'nosuch'; available devices: cpu"),
        ("cuda", f"device 'cuda': {CUDA_MISSING}"),
    ],
)
def test_cli_device_unavailable_one_line_exit_2(
    tmp_path, run_cli, snapshot_files, command, device, expected
):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    write_untrained_checkpoint(tmp_path / "cnn1.pt")
    before = snapshot_files(tmp_path)
    if command == "train":
        args = ["train", "--model", "cnn1", "--dataset", "mnist", "--no-mlflow"]
    else:
        args = [command, "--checkpoint", "cnn1.pt"]

    result = run_cli(*args, "--device", device, cwd=tmp_path)

    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == f"polysearch {command}: error: {expected}"
    assert result.stdout == ""
    assert snapshot_files(tmp_path) == before


@pytest.mark.parametrize("command", ["evaluate", "calibrate", "approximate"])
def test_cli_damaged_weights_one_line_exit_2(tmp_path, run_cli, snapshot_files, command):
    import struct

    path = tmp_path / "cnn1.pt"
    write_untrained_checkpoint(path)
    weight = load_checkpoint(path)[0].fc1.weight.detach()
    data = bytearray(path.read_bytes())
    # torch.save stores tensor data uncompressed, so the weight's bytes appear verbatim.
    start = data.find(weight.reshape(-1)[:16].numpy().tobytes())
    assert start >= 0
    data[start : start + 4] = struct.pack("<f", 0.25)
    path.write_bytes(bytes(data))
    before = snapshot_files(tmp_path)

    result = run_cli(command, "--checkpoint", "cnn1.pt", "--limit", "100", cwd=tmp_path)

    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"polysearch {command}: error: checkpoint cnn1.pt is damaged")
    assert result.stdout == ""
    assert snapshot_files(tmp_path) == before


def test_cli_calibrate_singular_counts(tmp_path, run_cli):
    write_untrained_checkpoint(tmp_path / "cnn1.pt")  # cnn1 has one ReLU

    result = run_cli(
        "calibrate", "--checkpoint", "cnn1.pt", "--limit", "100", "--calibration-size", "1",
        "--plots", "figures", cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "1 site, 1 calibration image, 95th percentile ranges:"
    assert lines[-1] == "wrote 1 figure to figures"


def _training_run_statuses(database):
    if not database.exists():
        return []
    uri = f"{database.as_uri()}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
            return [status for (status,) in connection.execute("SELECT status FROM runs")]
    except sqlite3.Error:  # the tables may not exist yet
        return []


def test_cli_train_sigterm_kills_run(tmp_path):
    process = start_polysearch(
        "train", "--model", "cnn1", "--dataset", "mnist", "--epochs", "200", "--limit", "1000",
        cwd=tmp_path,
    )  # fmt: skip
    database = tmp_path / "mlruns" / "mlflow.db"
    deadline = time.monotonic() + 120
    try:
        while "RUNNING" not in _training_run_statuses(database):
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the training run never started"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "polysearch train: interrupted"
    assert _training_run_statuses(database) == ["KILLED"]
    assert not (tmp_path / "checkpoints" / "cnn1-mnist.pt").exists()
