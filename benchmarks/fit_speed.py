"""Time the Remez fitter against a linear-program minimax reference and record the results.

Run from the repository root:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fit_speed.py

The ranges are 64 per-channel ranges [lo, hi] with lo in [-5, -0.5] and hi in [0.5, 5]
(seed 0), fitted with ReLU at degrees 2, 4 and 8. The script measures the time per fit of
``fit_minimax`` called once per range, of ``fit_minimax_batch`` called once for all 64, and
of the discrete minimax linear program on 20,001 points solved with HiGHS (the reference of
the tests). Times are CPU time, medians over repeats, so other load on the machine inflates
them less than wall time. The table goes to ``benchmarks/fit_speed.md``, written atomically
and replacing an older one.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy
from numpy.polynomial import chebyshev as cheb
from scipy.optimize import linprog

from approx.remez import fit_minimax, fit_minimax_batch

DEGREES = (2, 4, 8)
N_RANGES = 64
N_SINGLE = 16  # ranges timed one call at a time
N_LINEAR_PROGRAM = 4  # ranges timed with the linear program (slow)
N_GRID = 20001
OUTPUT = Path(__file__).with_name("fit_speed.md")


def relu_linear_program(lo: float, hi: float, degree: int) -> float:
    """Return the discrete minimax error of ReLU on N_GRID points, solved as an LP."""
    mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    t = np.sort(np.append(-np.cos(np.linspace(0.0, np.pi, N_GRID)), -mid / half))
    values = np.maximum(mid + half * t, 0.0)
    vander = cheb.chebvander(t, degree)
    ones = np.ones((len(t), 1))
    objective = np.zeros(degree + 2)
    objective[-1] = 1.0
    result = linprog(
        objective,
        A_ub=np.block([[vander, -ones], [-vander, -ones]]),
        b_ub=np.concatenate([values, -values]),
        bounds=[(None, None)] * (degree + 1) + [(0.0, None)],
        method="highs",
        options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10},
    )
    if result.status != 0:
        raise RuntimeError(f"linear program failed on [{lo}, {hi}]: {result.message}")
    return float(result.fun)


def median_seconds(run, repeats: int, clock=time.process_time) -> float:
    """Return the median time of ``run()`` over ``repeats`` calls, CPU time by default."""
    times = []
    for _ in range(repeats):
        start = clock()
        run()
        times.append(clock() - start)
    return statistics.median(times)


def measure(degree: int, los: np.ndarray, his: np.ndarray, repeats: int) -> dict[str, float]:
    """Time one degree; return milliseconds per fit and the agreement with the LP."""

    def single() -> None:
        for lo, hi in zip(los[:N_SINGLE], his[:N_SINGLE], strict=True):
            fit_minimax("relu", lo, hi, degree)

    def batch() -> None:
        fit_minimax_batch("relu", los, his, degree)

    fits = fit_minimax_batch("relu", los, his, degree)
    assert all(fit.converged for fit in fits)

    start = time.process_time()
    lp_errors = [
        relu_linear_program(lo, hi, degree)
        for lo, hi in zip(los[:N_LINEAR_PROGRAM], his[:N_LINEAR_PROGRAM], strict=True)
    ]
    lp_seconds = (time.process_time() - start) / N_LINEAR_PROGRAM
    excess = max(
        (fit.max_error - lp_error) / lp_error
        for fit, lp_error in zip(fits[:N_LINEAR_PROGRAM], lp_errors, strict=True)
    )

    return {
        "single_ms": 1e3 * median_seconds(single, repeats) / N_SINGLE,
        "single_wall_ms": 1e3 * median_seconds(single, repeats, time.perf_counter) / N_SINGLE,
        "batch_ms": 1e3 * median_seconds(batch, repeats) / N_RANGES,
        "lp_ms": 1e3 * lp_seconds,
        "excess": excess,
        "iterations": statistics.mean(fit.iterations for fit in fits),
    }


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as file:
        file.write(text)
        temporary = Path(file.name)
    os.replace(temporary, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timing repeats (default: 7)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    los = -rng.uniform(0.5, 5.0, N_RANGES)
    his = rng.uniform(0.5, 5.0, N_RANGES)
    fit_minimax("relu", -1.0, 1.0, 2)  # import and first-call costs stay out of the timings

    rows = []
    for degree in DEGREES:
        result = measure(degree, los, his, args.repeats)
        rows.append(
            f"| {degree} | {result['single_ms']:.2f} | {result['single_wall_ms']:.2f} | "
            f"{result['batch_ms']:.3f} | "
            f"{result['lp_ms']:.0f} | {result['lp_ms'] / result['single_ms']:.0f} | "
            f"{result['lp_ms'] / result['batch_ms']:.0f} | {result['iterations']:.1f} | "
            f"{result['excess']:.1e} |"
        )
        print(rows[-1], flush=True)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    text = "\n".join(
        [
            "# Minimax fit speed",
            "",
            "Produced by `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fit_speed.py` on "
            f"{platform.machine()}, {os.cpu_count()} logical cores "
            f"(1-minute load average {load:.1f} when the run ended), "
            f"numpy {np.__version__}, scipy {scipy.__version__}, Python "
            f"{platform.python_version()}.",
            "",
            f"ReLU on {N_RANGES} ranges [lo, hi], lo uniform in [-5, -0.5] and hi uniform in "
            "[0.5, 5] (seed 0). Times are CPU milliseconds per fit (`time.process_time`), "
            f"medians over {args.repeats} repeats; single fits also show wall time, which the "
            f"shared machine inflates. Single: `fit_minimax` once per range ({N_SINGLE} ranges). "
            f"Batch: one `fit_minimax_batch` call on all {N_RANGES}. LP: the discrete minimax "
            f"problem on {N_GRID:,} points plus the kink, `scipy.optimize.linprog` with HiGHS "
            f"({N_LINEAR_PROGRAM} ranges, timed once). Excess: the largest (Remez max error - "
            "LP error) / LP error, positive because the LP bounds the error on its grid only.",
            "",
            "| degree | single CPU (ms/fit) | single wall (ms/fit) | batch CPU (ms/fit) | "
            "LP CPU (ms/fit) | LP / single | LP / batch | Remez iterations (mean) | "
            "excess over LP |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    write_atomically(OUTPUT, text)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
