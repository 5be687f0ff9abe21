"""Writing outputs so that no reader sees half of one, and the facts every result line carries.

- ``atomic_path(path)``: a temporary name beside ``path`` (the same folder, so the same file system:
  os.replace is then one rename(2), atomic on POSIX). On success the temporary file replaces
  ``path``; on any error, Ctrl-C included, it is removed. For writers that need a file name
  (a parquet writer, two files that must appear together).
- ``atomic_write_text / _bytes / _json``, ``atomic_torch_save``: a whole file through it, flushed
  to the disk (fsync) before the rename, so that after a crash the old file or the new one is
  there, never a truncated one.
- ``append_jsonl(path, *rows)``: JSON lines appended in one write(2) on an O_APPEND descriptor, so
  runs appending to the same file never interleave within a line.
- ``run_metadata()``: git commit, host, time and versions, the same keys in every result line.

Standard library only: dataprep and the scripts under bench/ use it without torch.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from fasthpt import __version__


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield ``.NAME.PID.tmp`` beside ``path`` (its folder created); see the module doc."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # still there only when writing or renaming failed


def _synced(fh) -> None:
    fh.flush()
    os.fsync(fh.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        _synced(fh)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_text(obj) -> str:
    """The layout of every JSON file written here: indent 1, values JSON cannot hold as str()."""
    return json.dumps(obj, indent=1, default=str) + "\n"


def printable_json(obj, indent: int | None = None) -> str:
    """``obj`` as strict JSON for a program to read: a float that is not finite (NaN: not measured)
    becomes null, which every JSON reader accepts (``NaN`` is not JSON)."""

    def strict(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: strict(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [strict(v) for v in o]
        return o

    return json.dumps(strict(obj), indent=indent, default=str, allow_nan=False)


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json_text(obj))


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """torch.save into the temporary file (streamed, not held in memory), then the rename."""
    import torch  # here, not at the top: the module stays importable without torch

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)
        _synced(fh)
    return Path(path)


def append_jsonl(path: str | os.PathLike, *rows: dict) -> None:
    """Append ``rows`` as JSON lines in one write. A last line left without its newline (a writer
    killed mid-line) is ended first, so the torn line stays one unreadable line of its own."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(row, default=str) + "\n" for row in rows).encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        os.write(fd, data)
    finally:
        os.close(fd)


@functools.cache  # one subprocess per process: every row of a run has the same commit
def git_sha() -> str:
    """Short commit of the checkout this package runs from; "unknown" outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def run_metadata() -> dict:
    """Where and when a result was measured: appended to every result line (benchmarks, evaluations)."""
    return {
        "git_sha": git_sha(), "host": platform.node(), "host_cpus": os.cpu_count(),
        "python": platform.python_version(), "torch": _version("torch"), "fasthpt": __version__,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
