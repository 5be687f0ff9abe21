"""A lock lives exactly as long as the process that took it: after a kill -9 of a run (or a prep),
children it forked (loader workers) that are still alive do not keep its lock, so a relaunch is
not refused naming a dead pid; a process it started that does hold the lock is named as such."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fasthpt.errors import UserError
from fasthpt.run_folder import RunLock

ROOT = Path(__file__).resolve().parents[1]

HOLDER = """
import multiprocessing, os, subprocess, sys, time
from pathlib import Path

how, target = sys.argv[1], Path(sys.argv[2])
if target.name == "out":
    from dataprep.lock import output_lock
    held = output_lock(target, "ds")  # kept: a collected generator would release the lock
    held.__enter__()
    fd = None
else:
    from fasthpt.run_folder import RunLock
    fd = RunLock(target)._fd

up_r, up_w = os.pipe()

def stay(signal_up=False):
    if signal_up:  # the child runs (its at-fork handlers did): only then is the parent killed
        os.write(up_w, b"up")
    time.sleep(120)

if how == "fork":
    child = os.fork()
    if child == 0:
        stay(True)
        os._exit(0)
elif how == "mp-fork":  # how torch's DataLoader starts its workers on Linux
    proc = multiprocessing.get_context("fork").Process(target=stay, args=(True,), daemon=False)
    proc.start()
    child = proc.pid
else:  # a program it started and handed the descriptor (not a fork: nothing closes it there)
    child = subprocess.Popen(["sleep", "120"], pass_fds=[fd]).pid
    os.write(up_w, b"up")
os.read(up_r, 2)
print(os.getpid(), child, flush=True)
stay()
"""


def _kill_9_leaving_a_child(how: str, target: Path) -> tuple[int, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, how, str(target)], stdout=subprocess.PIPE, text=True,
                            env=env)
    parent, child = map(int, proc.stdout.readline().split())
    os.kill(parent, signal.SIGKILL)
    proc.wait(timeout=60)
    os.kill(child, 0)  # still alive: an orphan now
    return parent, child


@pytest.mark.parametrize("how", ["fork", "mp-fork"])
def test_a_run_lock_is_not_kept_by_a_forked_child_after_kill_9(tmp_path, how):
    run = tmp_path / "runs" / "r"
    _, child = _kill_9_leaving_a_child(how, run)
    try:
        RunLock(run).release()  # taken at once, while the orphan lives
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_prep_lock_is_not_kept_by_a_forked_child_after_kill_9(tmp_path):
    from dataprep.lock import output_lock

    out = tmp_path / "out"
    out.mkdir()
    _, child = _kill_9_leaving_a_child("fork", out)
    try:
        with output_lock(out, "ds"):
            pass
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_lock_held_by_what_a_dead_launch_started_says_the_launch_has_ended(tmp_path):
    run = tmp_path / "runs" / "r"
    parent, child = _kill_9_leaving_a_child("exec", run)
    try:
        with pytest.raises(UserError) as err:
            RunLock(run)
        assert f"(pid {parent} on " in str(err.value) and "which has ended" in str(err.value)
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_live_holder_is_named_without_saying_it_ended(tmp_path):
    first = RunLock(tmp_path / "r")
    try:
        with pytest.raises(UserError) as err:
            RunLock(tmp_path / "r")
        assert f"pid {os.getpid()} on " in str(err.value) and "ended" not in str(err.value)
    finally:
        first.release()


def test_the_child_side_closes_only_registered_descriptors(tmp_path):
    """In a forked child the lock's descriptor is gone and an ordinary one is not."""
    lock = RunLock(tmp_path / "r")
    other = os.open(tmp_path / "plain", os.O_RDWR | os.O_CREAT)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        def is_open(fd):
            try:
                os.fstat(fd)
                return True
            except OSError:
                return False

        os.write(write, f"{is_open(lock._fd)} {is_open(other)}".encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 100).decode() == "False True"
    for fd in (other, read, write):
        os.close(fd)
    lock.release()
