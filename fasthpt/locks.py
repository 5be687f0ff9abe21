"""What the tool's lock files share: descriptors that forked children do not keep, and whether the
process a lock file names is still alive.

An flock(2) lock belongs to the open file description, which fork(2) shares with the child: a loader
worker forked from a run (torch's DataLoader forks its workers) would hold the run's lock as long as
it lives, so after a kill -9 of the run its orphaned workers kept the lock for seconds and a
relaunch was refused naming a dead pid. A forked child closes the descriptors registered here as
soon as it exists (os.register_at_fork; the parent's copy keeps the lock), so a lock lives exactly
as long as the process that took it. Descriptors are already closed on exec (PEP 446).

Standard library only: dataprep's output lock uses it too.
"""

from __future__ import annotations

import os

_HELD: set[int] = set()


def _close_in_child() -> None:
    for fd in list(_HELD):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def keep_from_children(fd: int) -> int:
    """Register ``fd`` (a lock's descriptor) to be closed in every child forked from now on."""
    _HELD.add(fd)
    return fd


def close(fd: int) -> None:
    """Close a registered descriptor (which drops its lock)."""
    _HELD.discard(fd)
    os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
