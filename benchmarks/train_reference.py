"""Train the reference networks on MNIST with the default options and record the results.

Run from the repository root:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_reference.py --threads 1

The script trains cnn1, cnn2 and lenet5 with the defaults of ``polysearch train``: 10
epochs, Adam, one-cycle learning rate peaking at 7e-3, batch 128, seed 0. It saves
``checkpoints/<network>-mnist.pt``, replacing an older one, and writes validation and
test accuracy and wall time to ``benchmarks/train_reference.md``.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from models.checkpoint import save_checkpoint
from models.datasets import load_dataset
from models.networks import build_network
from models.threads import configure_threads
from models.training import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LR, evaluate, train

NETWORKS = ("cnn1", "cnn2", "lenet5")
# Test accuracy (%) each network must reach with the default options.
TARGETS = {"cnn1": 97.8, "cnn2": 98.6, "lenet5": 99.2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--lr", type=float, default=DEFAULT_LR["adam"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/train_reference.md"))
    args = parser.parse_args()

    threads = configure_threads(args.threads)
    splits = load_dataset("mnist", seed=args.seed)
    rows = []
    for network in args.networks:
        torch.manual_seed(args.seed)
        model = build_network(network, splits.input_shape, splits.num_classes)
        options = {
            "epochs": args.epochs,
            "batch_size": DEFAULT_BATCH_SIZE,
            "lr": args.lr,
            "optimizer": "adam",
            "seed": args.seed,
            "limit": None,
        }
        start = time.perf_counter()
        history = train(
            model,
            splits,
            epochs=args.epochs,
            lr=args.lr,
            seed=args.seed,
            device="cpu",
            progress=False,
        )
        seconds = time.perf_counter() - start
        validation = history[-1]["validation_accuracy"]
        test = evaluate(model, splits.test).accuracy
        save_checkpoint(
            args.checkpoints / f"{network}-mnist.pt",
            model,
            network=network,
            dataset="mnist",
            input_shape=splits.input_shape,
            num_classes=splits.num_classes,
            mean=splits.mean,
            std=splits.std,
            options=options,
            accuracies={"validation": validation, "test": test},
        )
        rows.append((network, validation, test, seconds))
        print(f"{network}: validation {validation:.2f} %, test {test:.2f} %, {seconds:.0f} s")

    lines = [
        "# Reference networks on MNIST",
        "",
        "Produced by `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_reference.py "
        f"--threads {threads}`",
        f"on {platform.processor() or platform.machine()}, {threads} PyTorch thread(s), "
        f"torch {torch.__version__}, CPU.",
        f"Options: {args.epochs} epochs, Adam, one-cycle learning rate peaking at {args.lr:g}, "
        f"batch {DEFAULT_BATCH_SIZE}, seed {args.seed}; MNIST split 50,000 train / "
        "10,000 validation / 10,000 test.",
        "",
        "| network | validation accuracy (%) | test accuracy (%) | target test (%) "
        "| target met | training time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for network, validation, test, seconds in rows:
        met = "yes" if test >= TARGETS[network] else "no"
        lines.append(
            f"| {network} | {validation:.2f} | {test:.2f} | {TARGETS[network]:.1f} | {met} "
            f"| {seconds:.0f} |"
        )
    # Sections after the table ("## ...") are written by hand and kept across runs.
    kept = ""
    if args.output.exists():
        previous = args.output.read_text()
        start = previous.find("\n## ")
        if start >= 0:
            kept = "\n" + previous[start + 1 :]
    args.output.write_text("\n".join(lines) + "\n" + kept)


if __name__ == "__main__":
    main()
