"""The polysearch dispatcher: usage errors through a real subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _polysearch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "search", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["fit", "--degree", "2.5", "--range", "-3", "3"], "'2.5'"),
        (["nosuch"], "'nosuch'"),
        ([], "COMMAND"),
        (["fit", "--function", "relu", "--degree", "2", "--range", "1"], "--range"),
    ],
)
def test_cli_usage_error_one_line(args, named):
    result = _polysearch(*args)
    assert result.returncode == 2
    # One line, without argparse's usage block, naming the bad value or argument.
    assert result.stderr.count("\n") == 1
    assert named in result.stderr
    assert "usage:" not in result.stderr
    assert result.stdout == ""


def test_cli_help_lists_every_command():
    result = _polysearch("--help")
    assert result.returncode == 0
    for command in ("train", "evaluate", "fit", "calibrate", "approximate", "search", "best"):
        assert command in result.stdout
