"""Trials per minute of ``polysearch search`` with 1 and 2 workers, on SQLite and PostgreSQL.

Run from the repository root (PostgreSQL needs Debian's server binaries, see
``tests/scale/postgres.py``; runs as root or as any user)::

    .venv/bin/python benchmarks/scale_workers.py [--n-trials 30] [--limit 10000] [--repeats 1]

For each storage and worker count the script starts a fresh study through the real command
line: cnn1 trained for one epoch on ``--limit`` MNIST images and validated on as many, the
all-at-once strategy, random sampler, no pruner, no figures, one PyTorch thread per worker.
It then reads the trial times back from the Optuna storage. The throughput counts the trials
that finished after the ``--warmup`` first ones, over the time between the warm-up's last
trial and the study's last trial, so process start, data loading and calibration stay out of
it. The table also shows the median time of one trial, whose growth with two workers
measures contention for cores; the share of the workers' time spent inside trials, whose
rest goes to the stores and the sampler; the whole launch's wall time; and, measured just
before each study, the speed-up of two copies of a single-threaded PyTorch loop over one
copy, which is about the most two workers can gain on the machine at that moment.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.scale.postgres import PostgresServer  # noqa: E402

SPEC = """
seed = 0
[network]
name = "cnn1"
checkpoint = "{checkpoint}"
[data]
dataset = "mnist"
limit = {limit}
calibration_size = 1000
[space]
degree = [2, 8]
percentile = [90.0, 100.0]
percentile_step = 0.1
[search]
sampler = "random"
pruner = "none"
heartbeat_interval = 5
grace_period = 30
[tracking]
figures = "none"
"""


# A single-threaded PyTorch loop; its speed-up with two copies at once measures how much of two
# cores the machine has free at that moment (other processes share them).
SPIN = """
import time, torch
torch.set_num_threads(1)
x = torch.randn(256, 256)
started = time.perf_counter()
for _ in range(1500):
    x = torch.tanh(x @ x * 0.01)
print(time.perf_counter() - started)
"""


def free_core_speedup() -> float:
    """Return the throughput of two concurrent copies of ``SPIN`` over that of one copy."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}

    def start() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", SPIN], env=environment, stdout=subprocess.PIPE, text=True
        )

    single = float(start().communicate()[0])
    pair = [start(), start()]
    both = max(float(process.communicate()[0]) for process in pair)
    return 2 * single / both


def train_checkpoint(path: Path, limit: int) -> None:
    """Train cnn1 for one epoch on ``limit`` MNIST images and save it to ``path``."""
    import torch

    from models.checkpoint import save_checkpoint
    from models.datasets import load_dataset
    from models.networks import build_network
    from models.training import evaluate, train

    torch.set_num_threads(1)
    splits = load_dataset("mnist", limit=limit)
    torch.manual_seed(0)  # the initial weights: train() seeds only what follows them
    model = build_network("cnn1", input_shape=splits.input_shape, num_classes=splits.num_classes)
    train(model, splits, epochs=1, seed=0, progress=False)
    save_checkpoint(
        path,
        model,
        network="cnn1",
        dataset="mnist",
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        mean=splits.mean,
        std=splits.std,
        options={"epochs": 1, "limit": limit},
        accuracies={"validation": evaluate(model, splits.validation).accuracy},
    )


def run_search(
    spec: Path, storage: str, mlflow_uri: str, workers: int, n_trials: int, folder: Path
) -> float:
    """Run one launch through the command line and return its wall time in seconds."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "search",
            "--threads",
            "1",
            "--log-level",
            "WARNING",
            "search",
            str(spec),
            "--workers",
            str(workers),
            "--n-trials",
            str(n_trials),
            "--storage",
            storage,
            "--mlflow-uri",
            mlflow_uri,
        ],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
    )
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"search failed with status {result.returncode}:\n{result.stderr}")
    return elapsed


def measure(storage: str, warmup: int, workers: int) -> dict[str, float]:
    """Return throughput (trials per minute after the warm-up), the median trial time and
    the share of the workers' time spent inside trials after the warm-up."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name="bench", storage=storage)
    trials = [t for t in study.trials if t.state == TrialState.COMPLETE]
    ends = sorted(t.datetime_complete for t in trials)
    if len(ends) <= warmup + 1:
        raise ValueError(f"only {len(ends)} trials finished; raise --n-trials above {warmup + 1}")
    window = (ends[-1] - ends[warmup - 1]).total_seconds()
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
    # Time outside trials is spent in the stores (locks, sampler, bookkeeping) or waiting.
    inside = sum(
        (t.datetime_complete - max(t.datetime_start, ends[warmup - 1])).total_seconds()
        for t in trials
        if t.datetime_complete > ends[warmup - 1]
    )
    return {
        "trials": len(trials),
        "per_minute": 60.0 * (len(ends) - warmup) / window,
        "median_trial_s": statistics.median(durations),
        "inside_share": inside / (workers * window),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-trials", type=int, default=30, help="trials per study (30)")
    parser.add_argument(
        "--limit",
        type=int,
        default=10000,
        help="images per MNIST split; 10000 validates on the whole validation split (10000)",
    )
    parser.add_argument(
        "--warmup", type=int, default=4, help="first trials left out of the throughput (4)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="studies per setting (1)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="polysearch-bench-"))
    checkpoint = folder / "cnn1-tiny.pt"
    train_checkpoint(checkpoint, args.limit)
    spec = folder / "bench.toml"
    spec.write_text(SPEC.format(checkpoint=checkpoint, limit=args.limit))
    server = PostgresServer.create()
    server.start()
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}")
    print(
        f"{args.n_trials} trials per study on {args.limit} validation images, "
        f"throughput after the first {args.warmup}"
    )
    print()
    print(
        "| storage | workers | trials/min | speed-up | median trial (s) | time in trials "
        "| launch wall (s) | free-core speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|")
    try:
        number = 0
        for backend in ("sqlite", "postgresql"):
            baseline = None
            for workers in (1, 2):
                rates, medians, shares, walls, capacities = [], [], [], [], []
                for _ in range(args.repeats):
                    number += 1
                    capacities.append(free_core_speedup())
                    if backend == "sqlite":
                        run_folder = folder / f"run{number}"
                        run_folder.mkdir()
                        storage = f"sqlite:///{run_folder}/optuna.db"
                        mlflow_uri = f"sqlite:///{run_folder}/mlflow.db"
                    else:
                        storage = server.create_database(f"optuna_{number}")
                        mlflow_uri = server.create_database(f"mlflow_{number}")
                    walls.append(
                        run_search(spec, storage, mlflow_uri, workers, args.n_trials, folder)
                    )
                    result = measure(storage, args.warmup, workers)
                    rates.append(result["per_minute"])
                    medians.append(result["median_trial_s"])
                    shares.append(result["inside_share"])
                rate = statistics.mean(rates)
                baseline = baseline or rate
                print(
                    f"| {backend} | {workers} | {rate:.1f} | {rate / baseline:.2f}x | "
                    f"{statistics.mean(medians):.2f} | {100 * statistics.mean(shares):.0f} % | "
                    f"{statistics.mean(walls):.1f} | {statistics.mean(capacities):.2f}x |",
                    flush=True,
                )
    finally:
        server.remove()
        shutil.rmtree(folder, ignore_errors=True)
    print()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
