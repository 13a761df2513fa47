"""CPU thread count: cgroup quotas, /proc/stat idle time and the chosen default."""

from __future__ import annotations

import os

import pytest
import torch

from models import threads


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_configure_threads_explicit_count():
    assert threads.configure_threads(1) == 1
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("count", [0, -2])
def test_configure_threads_invalid_count(count):
    with pytest.raises(ValueError, match=str(count)):
        threads.configure_threads(count)


def test_available_cores_within_affinity():
    assert 1 <= threads.available_cores() <= len(os.sched_getaffinity(0))


def test_default_threads_never_above_available():
    assert 1 <= threads.default_threads() <= threads.available_cores()


@pytest.mark.parametrize(
    ("content", "cores"),
    [("150000 100000\n", 1.5), ("max 100000\n", None), ("50000 100000", 0.5)],
)
def test_cgroup_v2_quota(tmp_path, content, cores):
    (tmp_path / "cpu.max").write_text(content)

    assert threads._cgroup_quota(tmp_path) == cores


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")

    assert threads._cgroup_quota(tmp_path) == 3.0


def test_cgroup_v1_unlimited(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")

    assert threads._cgroup_quota(tmp_path) is None


def test_available_cores_capped_by_quota(monkeypatch):
    monkeypatch.setattr(threads, "_affinity_cores", lambda: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "_cgroup_quota", lambda: 1.5)

    # A quota of 1.5 cores can keep two threads partly busy.
    assert threads.available_cores() == 2


def test_read_core_times_from_stat_file(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  30 0 30 300 10 0 0 0 0 0\n"
        "cpu0 10 0 10 100 5 0 0 0 0 0\n"
        "cpu1 20 0 20 200 5 1 2 3 0 0\n"
        "cpu2 0 0 0 0 0 0 0 0 0 0\n"
        "intr 1 2 3\n"
    )

    times = threads._read_core_times({0, 1}, stat)

    # idle = idle + iowait; total = user + nice + system + idle + iowait + irq + softirq + steal
    assert times == {0: (105, 125), 1: (205, 251)}


@pytest.mark.parametrize(
    ("idle", "available", "expected"),
    [
        (1.0, 2, 1),  # one of two cores busy
        (0.05, 2, 1),  # all busy: still one thread
        (1.75, 2, 2),  # measurement noise on two idle cores
        (1.6, 2, 1),  # a core 40 % busy is not used
        (3.9, 2, 2),  # never more than the available cores
        (None, 3, 3),  # no /proc/stat: the available cores
    ],
)
def test_default_threads_from_idle_cores(monkeypatch, idle, available, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "idle_cores", lambda: idle)
    monkeypatch.setattr(threads, "available_cores", lambda: available)

    assert threads.default_threads() == expected


@pytest.mark.parametrize(("value", "expected"), [("3", 3), ("1", 1), ("0", 2), ("x", 2), ("", 2)])
def test_default_threads_omp_num_threads(monkeypatch, value, expected):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    monkeypatch.setattr(threads, "idle_cores", lambda: 2.0)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)

    assert threads.default_threads() == expected


def test_idle_cores_sees_busy_process():
    import subprocess
    import sys

    core = min(os.sched_getaffinity(0))
    spin = (
        "import os, time\n"
        f"os.sched_setaffinity(0, {{{core}}})\n"
        "end = time.time() + 5\n"
        "while time.time() < end:\n"
        "    pass\n"
    )
    process = subprocess.Popen([sys.executable, "-c", spin])
    try:
        threads.time.sleep(0.5)
        idle = threads.idle_cores(0.5)
    finally:
        process.kill()
        process.wait()

    # The spinning process keeps one core busy, so at least half a core is not idle.
    assert idle is not None
    assert idle <= len(os.sched_getaffinity(0)) - 0.5
