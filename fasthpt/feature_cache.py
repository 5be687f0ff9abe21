"""Where `fasthpt eval` caches frozen features inside a prepared dataset folder, and how its files
are named: one place, read by the evaluators (fasthpt.eval.common) that write the cache and by
`fasthpt prep`, which counts these files as the tool's own (a rebuild with --force removes them
with the data they were computed from) instead of refusing to delete them as a stranger's.

Standard library only: dataprep imports it without torch.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

FOLDER = (".cache", "features")  # below the dataset folder
# backbone fingerprint (16 hex) - dataset fingerprint (12 hex) - split - r<res> - backend - device .pt;
# written through fasthpt.fileio.atomic_path, whose temporary name is .<name>.<pid>.tmp
_NAME = re.compile(r"[0-9a-f]{16}-[0-9a-f]{12}-[A-Za-z0-9_+]+-r\d+-[a-z]+-[a-z]+\.pt")
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.\d+\.tmp")


def file_name(backbone_fingerprint: str, data_fingerprint: str, split: str, res: int, backend: str,
              device_type: str) -> str:
    return f"{backbone_fingerprint[:16]}-{data_fingerprint[:12]}-{split}-r{res}-{backend}-{device_type}.pt"


def is_cache_path(relative: str) -> bool:
    """Whether ``relative`` (a path below a dataset folder) is the feature cache's folder or one of
    its files (a finished one or one left half-written)."""
    parts = PurePosixPath(relative).parts
    if parts in (FOLDER[:1], FOLDER):
        return True
    if len(parts) != len(FOLDER) + 1 or parts[:-1] != FOLDER:
        return False
    name = parts[-1]
    temporary = _TEMPORARY.fullmatch(name)
    return bool(_NAME.fullmatch(temporary.group("name") if temporary else name))
