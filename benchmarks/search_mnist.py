"""Search benchmark on MNIST: trial cost against a forward pass, and 100-trial searches.

Run from the repository root (about 10 minutes on 2 cores):

    .venv/bin/python benchmarks/search_mnist.py --threads 1

It measures, in one process, the median time of one forward pass of the validation split
through the original cnn2 and of one all-at-once trial without retraining (degree 8, 99.9th
percentile at every site, calibration cached as in a search), then runs
``polysearch search`` with 100 trials on cnn2 and cnn1 (fresh stores under
``outputs/search-benchmark/``), ``polysearch best`` on each, and writes
``benchmarks/search_mnist.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Test accuracy (%) the reference report gives for each network on MNIST.
REFERENCE = {
    "cnn1": {"all at once": 96.84},
    "cnn2": {"all at once": 94.04, "step-wise": 92.15, "step-wise + retraining": 95.20},
}


def measure_trial_cost(threads: int, repeats: int) -> dict:
    """Time a validation forward pass and an all-at-once trial on cnn2, in one process."""
    import torch

    torch.set_num_threads(threads)
    from approx.strategies import SiteSetting, approximate
    from models.training import evaluate
    from search.spec import load_spec
    from search.study import load_context

    spec = load_spec(ROOT / "studies" / "cnn2-mnist.toml")
    context = load_context(spec)
    validation = context.splits.validation
    settings = {site: SiteSetting(degree=8, percentile=99.9) for site in context.sites}
    inputs = validation.tensors[0]
    forward, evaluation, trial = [], [], []
    accuracy = None
    for _ in range(repeats):
        # The bare forward pass, in batches of 1000 as the trial evaluates.
        started = time.perf_counter()
        with torch.inference_mode():
            for start in range(0, len(inputs), 1000):
                context.model(inputs[start : start + 1000])
        forward.append(time.perf_counter() - started)
        started = time.perf_counter()
        evaluate(context.model, validation)
        evaluation.append(time.perf_counter() - started)
        started = time.perf_counter()
        result = approximate(
            context.model,
            settings,
            strategy="all-at-once",
            calibration_inputs=context.calibration_inputs,
            validation=validation,
            cache=context.cache,
        )
        trial.append(time.perf_counter() - started)
        accuracy = result.report.accuracy
    return {
        "validation_images": len(validation),
        "forward_s": statistics.median(forward),
        "evaluate_s": statistics.median(evaluation),
        "trial_s": statistics.median(trial),
        "ratio": statistics.median(trial) / statistics.median(forward),
        "trial_accuracy": accuracy,
        "forward_all_s": forward,
        "trial_all_s": trial,
    }


def run_search(network: str, folder: Path, threads: int, n_trials: int) -> dict:
    """Run a fresh search and ``best`` on one network; return timings and accuracies."""
    storage = f"sqlite:///{folder}/optuna.db"
    mlflow_uri = f"sqlite:///{folder}/mlflow.db"
    command = [
        sys.executable, "-m", "search", "--threads", str(threads), "--log-level", "WARNING",
        "search", f"studies/{network}-mnist.toml", "--n-trials", str(n_trials),
        "--storage", storage, "--mlflow-uri", mlflow_uri,
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    best = subprocess.run(
        [
            sys.executable,
            "-m",
            "search",
            "--threads",
            str(threads),
            "--log-level",
            "WARNING",
            "best",
            "--study",
            f"{network}-mnist",
            "--storage",
            storage,
            "--mlflow-uri",
            mlflow_uri,
            "--json",
        ],  # fmt: skip
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    entry = json.loads(best.stdout)
    return {"seconds": elapsed, "trials_per_minute": n_trials / elapsed * 60, "best": entry}


def write_report(path: Path, cost: dict, searches: dict, threads: int, n_trials: int) -> None:
    lines = [
        "# Search on MNIST",
        "",
        "Measured by `benchmarks/search_mnist.py --threads "
        f"{threads}` on {platform.machine()} with {threads} PyTorch thread(s), "
        "on a 2-core machine shared with other jobs (timings vary by about 30 % between runs).",
        "",
        "## Trial cost against one forward pass (cnn2)",
        "",
        f"Validation split: {cost['validation_images']} images. Medians of "
        f"{len(cost['trial_all_s'])} runs in one process; the calibration is cached, "
        "as in a search.",
        "",
        "| measurement | seconds |",
        "|---|---|",
        "| forward pass of the validation split, original network, batches of 1000 | "
        f"{cost['forward_s']:.2f} |",
        "| the same through `models.training.evaluate` (accuracy, non-finite count) | "
        f"{cost['evaluate_s']:.2f} |",
        "| all-at-once trial, degree 8, 99.9th percentile, no retraining | "
        f"{cost['trial_s']:.2f} |",
        f"| ratio trial / bare forward pass | {cost['ratio']:.2f} |",
        "",
        "## 100-trial searches (all at once, TPE, median pruner, no retraining; granularity as in "
        "`studies/<network>-mnist.toml`: layer for cnn2, channel for cnn1)",
        "",
        "| network | trials | minutes | trials per minute | best trial | validation % | test % "
        "| reference report, test % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for network, result in searches.items():
        best = result["best"]
        reference = ", ".join(f"{name} {value:.2f}" for name, value in REFERENCE[network].items())
        lines.append(
            f"| {network} | {n_trials} | {result['seconds'] / 60:.1f} | "
            f"{result['trials_per_minute']:.1f} | {best['trial']} | "
            f"{best['validation_accuracy']:.2f} | {best['test_accuracy']:.2f} | {reference} |"
        )
    # The configurations follow the table, so that its rows stay one table.
    lines.append("")
    for network, result in searches.items():
        params = ", ".join(f"{key} = {value}" for key, value in result["best"]["params"].items())
        lines.append(f"{network} best configuration: {params}.")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-trials", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--networks", nargs="+", default=["cnn2", "cnn1"])
    args = parser.parse_args()
    cost = measure_trial_cost(args.threads, args.repeats)
    print(json.dumps(cost, indent=2))
    folder = ROOT / "outputs" / "search-benchmark"
    if folder.exists():
        shutil.rmtree(folder)
    searches = {}
    for network in args.networks:
        network_folder = folder / network
        network_folder.mkdir(parents=True)
        searches[network] = run_search(network, network_folder, args.threads, args.n_trials)
        print(network, json.dumps(searches[network], indent=2))
    write_report(
        ROOT / "benchmarks" / "search_mnist.md", cost, searches, args.threads, args.n_trials
    )


if __name__ == "__main__":
    main()
