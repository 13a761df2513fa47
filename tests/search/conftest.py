"""Shared fixtures of the search tests: a tiny trained checkpoint and study files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Images per split in the search tests: enough for accuracies well above chance.
LIMIT = 2000


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """cnn1 trained for one epoch on 2000 MNIST images (a few seconds on one core)."""
    import torch

    from models.checkpoint import save_checkpoint
    from models.datasets import load_dataset
    from models.networks import build_network
    from models.training import evaluate, train

    torch.set_num_threads(1)
    splits = load_dataset("mnist", limit=LIMIT)
    torch.manual_seed(0)  # the initial weights: train() seeds only what follows them
    model = build_network("cnn1", input_shape=splits.input_shape, num_classes=splits.num_classes)
    train(model, splits, validation=None, epochs=1, seed=0, progress=False)
    path = tmp_path_factory.mktemp("checkpoint") / "cnn1-tiny.pt"
    save_checkpoint(
        path,
        model,
        network="cnn1",
        dataset="mnist",
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        mean=splits.mean,
        std=splits.std,
        options={"epochs": 1, "limit": LIMIT},
        accuracies={"validation": evaluate(model, splits.validation).accuracy},
    )
    return path


def write_spec(
    folder: Path,
    checkpoint: Path,
    *,
    n_trials: int,
    extra: str = "",
    name: str = "tiny",
    storage: str | None = None,
    mlflow_uri: str | None = None,
    grace_period: int = 2,
) -> Path:
    """Write a small all-at-once study on cnn1 with heartbeats every second.

    The stores default to ``optuna.db`` and ``mlflow.db`` in ``folder``. ``grace_period`` is
    the seconds after which a trial without heartbeat is failed. ``extra`` is appended at the
    end, so it may add keys to the ``[tracking]`` table or start new tables.
    """
    storage = storage or f"sqlite:///{folder}/optuna.db"
    mlflow_uri = mlflow_uri or f"sqlite:///{folder}/mlflow.db"
    path = folder / f"{name}.toml"
    path.write_text(
        f"""
seed = 0
[network]
name = "cnn1"
checkpoint = "{checkpoint}"
[data]
dataset = "mnist"
limit = {LIMIT}
calibration_size = 256
[space]
degree = [2, 4]
percentile = [95.0, 100.0]
percentile_step = 0.5
[search]
sampler = "random"
pruner = "none"
n_trials = {n_trials}
heartbeat_interval = 1
grace_period = {grace_period}
[tracking]
storage = "{storage}"
mlflow_uri = "{mlflow_uri}"
figures = "none"
{extra}
"""
    )
    return path


def _command_line(*args: str) -> dict[str, Any]:
    """Return the arguments and environment of a polysearch subprocess on one thread."""
    return {
        "args": [sys.executable, "-m", "search", "--threads", "1", *args],
        "env": {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
    }


def polysearch(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the command line in a subprocess with one PyTorch thread."""
    return subprocess.run(
        **_command_line(*args),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_polysearch(
    *args: str, cwd: Path, new_session: bool = False, output: Path | None = None
) -> subprocess.Popen:
    """Start the command line in a subprocess without waiting for it.

    ``new_session`` puts it in a process group of its own, which a test can signal as a
    terminal's Ctrl-C does (``os.killpg``). With ``output``, standard output and error go to
    ``output/stdout`` and ``output/stderr`` instead of pipes, which outlive the process.
    """
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        streams = {name: open(output / name, "w") for name in streams}  # noqa: SIM115
    try:
        return subprocess.Popen(
            **_command_line(*args),
            cwd=cwd,
            text=True,
            start_new_session=new_session,
            **streams,
        )
    finally:
        if output is not None:
            for stream in streams.values():
                stream.close()
