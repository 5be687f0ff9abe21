"""Guards on a run folder (runs/<name>/), all checked before any heavy work: it can be written, it
holds no other config, one launch at a time uses it (a lock), and the checkpoint a relaunch
resumes from can be read. Plus what a stopped run says about where it can resume.

Composer writes checkpoints in place (``open(name, 'wb')`` + ``torch.save``,
composer/utils/checkpoint.py ``_write_checkpoint_file``), so a write cut short (full disk, kill)
leaves a file with a checkpoint's name; the readability check below is what tells them apart.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
import socket
import tempfile
import zipfile
from pathlib import Path

from fasthpt import locks
from fasthpt.config import RunConfig, config_differences, load_config
from fasthpt.errors import UserError

log = logging.getLogger("fasthpt.train")

LOCK_NAME = ".lock"
BACKBONE, CONFIG = "backbone.pt", "config.yaml"  # what a finished run folder holds (fasthpt.train)
_CHECKPOINT = re.compile(r"^ep\d+-ba(\d+)-rank0\.pt$")  # CheckpointSaver's default name, rank 0's file


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during a run; its text says where a relaunch resumes (the CLI prints it and
    exits with ``code``: 128 + the signal, 130 for Ctrl-C)."""

    def __init__(self, message: str, code: int = 130):
        super().__init__(message)
        self.code = code


def on_rank_zero(fn, *args):
    """``fn(*args)`` on global rank 0 only (the run folder is rank 0's); its result there, None on
    the other ranks. A UserError on rank 0 is raised on every rank: the others would otherwise wait
    for rank 0 at the next collective until the timeout."""
    from composer.utils import dist

    result, error = None, [None]
    if dist.get_global_rank() == 0:
        try:
            result = fn(*args)
        except UserError as exc:
            error[0] = str(exc)
    dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        raise UserError(error[0])
    return result


def claim(cfg: RunConfig) -> RunLock | None:
    """Before any heavy work, on rank 0: the run folder can be written, this launch holds its lock,
    and any config it already holds is this one's. The lock (rank 0's, None elsewhere) is released
    by the caller when the run ends."""

    def checks():
        check_writable(cfg.run_path)
        lock = RunLock(cfg.run_path)
        try:
            check_same_config(cfg, cfg.run_path / "config.yaml")
        except UserError:
            lock.release()
            raise
        return lock

    return on_rank_zero(checks)


def check_writable(run: Path) -> None:
    """The run folder and its checkpoints/ can be created and written: the nearest existing folder
    on each path is a folder, and a probe file can be made there (and is removed again)."""
    for target in (run, run / "checkpoints"):
        existing = target
        try:
            existing = _nearest_existing(target)
            if not existing.is_dir():
                raise UserError(f"{existing} is a file, not a folder; choose another run_dir= or name=")
            fd, probe = tempfile.mkstemp(prefix=".fasthpt-write-probe-", dir=existing)
            os.close(fd)
            os.unlink(probe)  # the probe this call made, nothing else
        except OSError as exc:
            raise UserError(f"cannot write in {existing} ({exc.strerror or exc}); choose another run_dir=") from None


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


class RunLock:
    """An exclusive, non-blocking ``flock`` on <run>/.lock, held by one process per launch for the
    whole run; a second launch of the same run is refused with the holder's pid. The kernel drops
    the lock when the holder exits, however it exits."""

    def __init__(self, run: Path):
        self.run, self.path = run, run / LOCK_NAME
        missing = []
        for folder in (run, *run.parents):
            if folder.exists():
                break
            missing.append(folder)
        self._created = missing  # deepest first; removed again when the launch wrote nothing else
        run.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = self._acquire()  # None once released

    def _acquire(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "pid unknown"
                os.close(fd)
                raise UserError(f"{self.run} is in use by another launch ({holder}{_ended(holder)}); wait for it "
                                f"to end, or choose another name=") from None
            except OSError as exc:  # a filesystem without flock (some network mounts)
                log.warning("cannot lock %s (%s): a second launch of this run would not be detected",
                            self.path, exc.strerror)
                break
            if _same_file(fd, self.path):  # else a releasing launch removed the file between open and flock
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        return locks.keep_from_children(fd)  # a forked loader worker must not outlive the launch holding it

    def release(self) -> None:
        """Remove the lock file (while still holding it: a launch that opened it meanwhile sees it
        gone and opens a new one) and drop the lock. A launch that created the run folder and
        wrote nothing else removes the folder too, so a refused run leaves no folder behind."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
            if self._created and not any(self.run.iterdir()):
                for folder in self._created:
                    folder.rmdir()
        except OSError:
            pass  # another process wrote there meanwhile: the folder stays
        finally:
            locks.close(self._fd)
            self._fd = None


def _ended(holder: str) -> str:
    """', which has ended: ...' when the lock file names a process of this machine that no longer
    exists (one it started, not forked from it, may still hold the lock for a moment)."""
    found = re.fullmatch(r"pid (\d+) on (.+)", holder)
    if not found or found.group(2) != socket.gethostname() or locks.pid_alive(int(found.group(1))):
        return ""
    return ", which has ended; a process it started still holds the lock: retry once that exits"


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def run_backbone(folder: Path) -> Path:
    """The backbone.pt of a run folder (what every command takes a run folder for); one line
    saying why when it has none."""
    if not (folder / BACKBONE).is_file():
        what = "the run has not finished" if (folder / CONFIG).is_file() else "not a fasthpt run folder"
        raise UserError(f"{folder} has no {BACKBONE} ({what}); give a run folder or a checkpoint file")
    return folder / BACKBONE


def check_same_config(cfg: RunConfig, saved: Path) -> None:
    """Refuse to continue a run folder whose config.yaml differs from ``cfg`` in a key outside
    ``fasthpt.config.RELAUNCH_MAY_CHANGE``, naming the keys (instead of Composer's size mismatches)."""
    if not saved.is_file():
        return
    try:
        old = load_config(saved)
    except UserError as exc:
        raise UserError(f"{saved} cannot be read as a run config ({exc}); choose another name= for a new run") from None
    diffs = config_differences(old, cfg)
    if diffs:
        shown = "; ".join(f"{key} {a!r} -> {b!r}" for key, a, b in diffs[:6])
        more = f" and {len(diffs) - 6} more" if len(diffs) > 6 else ""
        raise UserError(f"{saved.parent} holds a run with another config ({shown}{more}); relaunch with its config "
                        f"to continue it, or choose another name= for a new run")


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(batch, path) of rank 0's checkpoints in ``folder``, newest first (the inspection files of
    NonFiniteGuard and the latest-rank0.pt link are not among them)."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_file()]
    return sorted(found, reverse=True)


def readable(path: Path) -> bool:
    """A whole torch checkpoint: a zip archive (torch.save's format) whose every member matches its
    CRC and that holds the pickle record. Reads the file once and unpickles nothing."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            return any(n.endswith("data.pkl") for n in names) and archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError):
        return False


def newest_readable(folder: Path) -> tuple[tuple[int, Path] | None, list[Path]]:
    """The newest readable checkpoint (or None) and the unreadable ones newer than it."""
    found = checkpoints(folder)
    for i, (batch, path) in enumerate(found):
        if readable(path):
            return (batch, path), [p for _, p in found[:i]]
    return None, [p for _, p in found]


def resume_checkpoint(folder: Path) -> Path | None:
    """The checkpoint a relaunch continues from. Newer files that cannot be read (a write cut
    short) are renamed *.unreadable, so nothing takes them for checkpoints, and reported in one
    line; if none can be read, one error naming the folder."""
    best, bad = newest_readable(folder)
    if best is None and bad:
        raise UserError(f"no checkpoint in {folder} can be read ({len(bad)} found, cut short?); move them away "
                        f"to start this run over, or choose another name=")
    if best is None:
        return None
    for path in bad:
        os.replace(path, path.with_name(path.name + ".unreadable"))
    if bad:
        log.warning("checkpoint%s %s cannot be read (a write cut short?), renamed *.unreadable; resuming from "
                    "the previous one, %s (batch %d)", "s" * (len(bad) > 1), ", ".join(p.name for p in bad),
                    best[1], best[0])
    return best[1]


def resume_hint(cfg: RunConfig) -> str:
    """Where a relaunch of ``cfg`` would continue from, for the messages of a stopped run."""
    best, _ = newest_readable(cfg.run_path / "checkpoints")
    if best is None:
        return "no checkpoint yet: a relaunch starts over"
    how = "relaunch the same command" if cfg.train.autoresume else "relaunch with train.autoresume=true"
    return f"{how} to resume from {best[1]} (batch {best[0]})"


def write_failure(exc: BaseException, run: Path) -> str | None:
    """One line for a failed write into the run folder (full disk, quota), else None. torch.save's
    writer reports a short write as a RuntimeError from inline_container.cc without errno
    ("PytorchStreamWriter failed writing file ...", "unexpected pos ..."), so the free space is
    given as the evidence."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = exc.strerror.lower()
    elif isinstance(exc, RuntimeError) and any(s in str(exc) for s in ("PytorchStreamWriter failed", "unexpected pos")):
        what = "torch.save could not finish writing a checkpoint"
    else:
        return None
    try:
        free = f"{shutil.disk_usage(_nearest_existing(run)).free / 2**20:.0f} MiB free there"
    except OSError:
        free = "free space unknown"
    return f"writing into {run} failed: {what} ({free})"
