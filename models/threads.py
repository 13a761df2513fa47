"""PyTorch CPU thread count from the cores that are available and idle.

By default PyTorch starts one thread per core. When another process keeps one of those
cores busy, every parallel region waits for the slowest thread: on a 2-core machine
with one core busy, an epoch of ``cnn1`` on MNIST took 56 s with 2 threads and 1.5 s
with 1. So the default is the number of idle cores, never more than the available ones:

- available cores: the CPU affinity mask (``os.sched_getaffinity``), capped by a cgroup
  CPU quota (``cpu.max`` in cgroup v2, ``cpu.cfs_quota_us`` in v1), rounded up;
- idle cores: from ``/proc/stat``, the idle and iowait time of the cores in the affinity
  mask over a short interval (0.25 s), summed, and rounded down unless within 0.3 of
  the next whole core.

Where ``/proc/stat`` cannot be read the default is the available cores.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)

# Length of the /proc/stat measurement in seconds.
IDLE_SAMPLE_SECONDS = 0.25
# Measurement noise allowance added before rounding down: 1.7 idle cores give 2
# threads, 1.6 give 1, so a core that is more than 40 % busy is not used.
IDLE_ROUNDING = 0.3


def _affinity_cores() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """Return the cgroup CPU quota in cores, or None when unlimited or unknown."""
    try:
        fields = (root / "cpu.max").read_text().split()
        if len(fields) == 2 and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def available_cores() -> int:
    """Return the cores this process may use: affinity mask capped by the cgroup quota."""
    cores = len(_affinity_cores())
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def _read_core_times(
    cores: set[int], stat_path: Path = Path("/proc/stat")
) -> dict[int, tuple[int, int]]:
    """Return ``{core: (idle ticks, total ticks)}`` from /proc/stat for ``cores``."""
    times = {}
    with open(stat_path) as file:
        for line in file:
            name, *values = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            core = int(name[3:])
            if core not in cores:
                continue
            ticks = [int(value) for value in values[:8]]  # user .. steal; guest is in user
            idle = ticks[3] + ticks[4]  # idle + iowait
            times[core] = (idle, sum(ticks))
    return times


def idle_cores(interval: float = IDLE_SAMPLE_SECONDS) -> float | None:
    """Return the idle cores of the affinity mask over ``interval`` seconds (fractional).

    Returns None where ``/proc/stat`` is missing or unreadable.
    """
    cores = _affinity_cores()
    try:
        before = _read_core_times(cores)
        time.sleep(interval)
        after = _read_core_times(cores)
    except (OSError, ValueError):
        return None
    idle = 0.0
    for core, (idle_after, total_after) in after.items():
        if core not in before:
            continue
        idle_before, total_before = before[core]
        elapsed = total_after - total_before
        if elapsed > 0:
            idle += (idle_after - idle_before) / elapsed
        else:
            idle += 1.0  # no ticks at all: the core did nothing in the interval
    return idle if after else None


def default_threads() -> int:
    """Return the thread count that does not oversubscribe: idle cores, at least 1.

    A positive integer in the environment variable ``OMP_NUM_THREADS`` is used as it is,
    as PyTorch itself does.
    """
    requested = os.environ.get("OMP_NUM_THREADS", "").strip()
    if requested.isdigit() and int(requested) >= 1:
        return int(requested)
    available = available_cores()
    idle = idle_cores()
    if idle is None:
        return available
    return max(1, min(available, math.floor(idle + IDLE_ROUNDING)))


def configure_threads(n: int | None) -> int:
    """Set PyTorch's CPU threads to ``n``, or to :func:`default_threads` for ``None``.

    Returns the thread count set.

    Raises:
        ValueError: ``n`` is below 1.
    """
    import torch

    if n is None:
        n = default_threads()
    elif not isinstance(n, int) or n < 1:
        raise ValueError(f"thread count must be a positive integer, got {n!r}")
    torch.set_num_threads(n)
    logger.debug("using %d PyTorch threads (%d cores available)", n, available_cores())
    return n
