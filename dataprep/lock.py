"""One `fasthpt prep` at a time per output folder: an exclusive flock(2) on OUT/.DATASET.lock.

Two preps of one dataset would both build it and both report success while only the last rename
stays. The second now refuses at once (non-blocking). The kernel drops a flock when its process
ends, however it ends (kill -9 included), so a lock never outlives its prep. The lock file holds
the holder's pid, for the refusal message, and is removed by its holder on the way out.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from dataprep.sources import display_name
from fasthpt import locks
from fasthpt.errors import UserError

# File systems without flock(2) support (some network mounts): prep runs unlocked, with a warning.
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS}


@contextmanager
def output_lock(out: Path, dataset: str):
    path = out / f".{dataset}.lock"
    fd = _acquire(path, out / dataset)
    try:
        yield
    finally:
        if fd is not None:
            # Removed while still held: a prep that opened this file meanwhile either failed to
            # lock it or, locking it after us, sees it is no longer at `path` and retries.
            try:
                os.unlink(path)
            except OSError:
                pass
            locks.close(fd)


def _acquire(path: Path, dest: Path) -> int | None:
    """The locked file's descriptor; None where the file system has no flock (a warning says so)."""
    while True:
        fd = _open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd)
            os.close(fd)
            return _refuse(exc, holder, path, dest)
        if _same_file(fd, path):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return locks.keep_from_children(fd)  # a forked worker must not outlive the prep holding it
        os.close(fd)  # its holder removed it as we locked it: lock the file now at `path`


def _open(path: Path) -> int:
    try:
        # O_NOFOLLOW: the file is truncated once locked, so a link planted there must not lead it
        # to someone's data.
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EISDIR):
            raise
        raise UserError(f"{display_name(str(path))} is not a lock file of `fasthpt prep` (it is a "
                        "symbolic link or a folder); move it away") from None


def _refuse(exc: OSError, holder: str, path: Path, dest: Path) -> None:
    """None (prep then runs unlocked, with a warning) where the file system has no flock; else raise."""
    if exc.errno in _NO_LOCKS:
        print(f"warning: cannot lock {display_name(str(path))} ({exc.strerror}); make sure no other "
              f"`fasthpt prep` writes {display_name(str(dest))} now", file=sys.stderr)
        return None
    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
        raise exc
    pid = f" (pid {holder})" if holder else ""
    raise UserError(f"another `fasthpt prep`{pid} is writing {display_name(str(dest))}; "
                    "wait for it to finish") from None


def _holder(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else ""


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
