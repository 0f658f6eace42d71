"""The run lock of a checkpoint: one run at a time, across processes; a killed run's lock file
is taken over; the lock file goes when the run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from hf_sae_steer.scoring.walk.checkpoint import CheckpointError
from hf_sae_steer.scoring.walk.run_lock import RunLock

HOLDER = """
import sys
from hf_sae_steer.scoring.walk.run_lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
sys.stdin.readline()
lock.release()
print("released", flush=True)
"""


def holder(path):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_another_process_holding_the_lock_refuses_this_one(tmp_path):
    path = tmp_path / "run.ckpt"
    proc = holder(path)
    try:
        with pytest.raises(CheckpointError, match=f"Checkpoint {path} is in use by another run"):
            RunLock(path).acquire()
    finally:
        proc.communicate("\n", timeout=60)
    assert not (tmp_path / "run.ckpt.lock").exists()
    with RunLock(path):  # free again
        assert (tmp_path / "run.ckpt.lock").read_text().strip() == str(os.getpid())
    assert list(tmp_path.iterdir()) == []


def test_a_killed_runs_lock_file_is_taken_over(tmp_path):
    path = tmp_path / "run.ckpt"
    proc = holder(path)
    proc.send_signal(signal.SIGKILL)  # kill -9: no cleanup, the file stays, the lock goes
    proc.wait(60)
    assert (tmp_path / "run.ckpt.lock").exists()
    with RunLock(path):
        with pytest.raises(CheckpointError, match="in use by another run"):
            RunLock(path).acquire()  # a second opener in the same process is refused too
    assert list(tmp_path.iterdir()) == []


def test_a_lock_that_cannot_be_created_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    with pytest.raises(CheckpointError, match="Cannot create the lock .*writable folder"):
        RunLock(blocker / "run.ckpt").acquire()
    assert blocker.read_text() == "mine"
