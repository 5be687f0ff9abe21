"""Which source a `fasthpt prep` request reads: ``--src`` (a folder, or a .zip / .tar of one) or,
without it, the embedded generator that ``--dataset`` names.

A module of its own so that the imports run one way: dataprep.sources (listing; folder and
generator sources) <- dataprep.archives (zip, tar) <- this module (the choice among them).
"""

from __future__ import annotations

import errno
from pathlib import Path

from dataprep.archives import open_archive
from dataprep.sources import FolderSource, GeneratorSource, display_name, not_regular
from fasthpt.errors import UserError

# Errors that only writing can raise (the scratch copy of a compressed tar): the output's problem.
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def open_source(dataset: str, src, *, num_images=None, image_size=None, seed=0, scratch: Path,
                class_depth: int | None = None):
    """--src wins when given; otherwise --dataset must name an embedded generator. ``class_depth``:
    how many folder levels below the shared root name a class (None: all of them)."""
    if src is None:
        return _embedded(dataset, num_images, image_size, seed)
    path = Path(src).expanduser()
    shown = display_name(str(src))
    if not path.exists():
        raise UserError(f"--src {shown}: no such file or folder")
    if path.is_dir():
        return FolderSource(dataset, path, class_depth)
    reason = not_regular(path.stat().st_mode)
    if reason:  # never opened: reading a FIFO waits forever for a writer
        raise UserError(f"--src {shown}: {reason}; give a folder, .zip or .tar archive")
    try:
        source = open_archive(dataset, path, scratch, class_depth)
    except OSError as exc:
        if exc.errno in _OUTPUT_ERRNOS:
            raise  # writing the scratch copy of a compressed tar, inside --out
        raise UserError(f"--src {shown}: cannot read it ({exc.strerror or exc})") from None
    if source is None:
        raise UserError(f"--src {shown}: not a folder, .zip or .tar archive")
    return source


def _embedded(dataset: str, num_images, image_size, seed: int):
    try:
        from dataprep import synthetic
    except ImportError:
        synthetic = None
    embedded = synthetic.EMBEDDED if synthetic else ("sat", "natural")
    if dataset not in embedded:
        raise UserError(
            f"unknown --dataset {dataset!r} without --src: embedded datasets are "
            f"{', '.join(embedded)}; for your own images pass --src DIR|ARCHIVE"
        )
    if synthetic is None:
        raise UserError(f"--dataset {dataset}: the embedded generators are missing (dataprep.synthetic)")
    gen = synthetic.get_generator(dataset, num_images=num_images, image_size=image_size, seed=seed)
    return GeneratorSource(gen, seed)
