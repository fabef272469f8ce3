"""The test harness explains a daemon that does not die: its threads' kernel stacks are
printed once it outlives its kill by the grace period, and the wait then fails."""

from __future__ import annotations

import subprocess

import pytest

from mountkit import is_running, kernel_stacks, wait_for_daemon_exit


def test_a_process_that_outlives_the_grace_period_has_its_stacks_printed(
        capsys: pytest.CaptureFixture[str]) -> None:
    survivor = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(AssertionError, match="still alive"):
            wait_for_daemon_exit([survivor.pid], "the survivor", timeout=0.6,
                                 explain_after=0.2)
        printed = capsys.readouterr().err
        assert f"the survivor: process {survivor.pid} is still alive:" in printed
        assert f"task {survivor.pid}" in printed
        assert "comm: sleep" in printed
        assert "wchan: " in printed and "stack: " in printed
    finally:
        survivor.kill()
        survivor.wait()
    assert not is_running(survivor.pid)


def test_a_process_that_exits_in_time_is_not_explained(
        capsys: pytest.CaptureFixture[str]) -> None:
    quick = subprocess.Popen(["sleep", "0.1"])
    wait_for_daemon_exit([quick.pid], "the quick one", timeout=10, explain_after=5)
    quick.wait()
    assert "still alive" not in capsys.readouterr().err
    assert "is still alive" in kernel_stacks(1)  # any live process can be explained
