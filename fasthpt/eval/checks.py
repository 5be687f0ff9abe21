"""What no evaluation result is computed from, refused in one line (or, where a result still
stands, noted): an input side without pixels, a trivial task (fewer than two classes to train on
or to test), classes a protocol cannot score, features holding NaN or inf, and labels outside the
manifest's classes. ``ds`` / ``data``: a fasthpt.eval.common.Dataset."""

from __future__ import annotations

import torch

from fasthpt.errors import UserError
from fasthpt.manifest import MANIFEST


def check_res(res) -> int:
    """An input side in pixels: a positive integer (0 or less has no pixels to resize to)."""
    if isinstance(res, bool) or not isinstance(res, int) or res < 1:
        raise UserError(f"--res {res}: must be a positive number of pixels")
    return res


def _classes_in(ds, split: str) -> list[int] | None:
    """Labels of the classes with at least one image in ``split`` (None: the manifest does not say)."""
    per_class = ds.manifest.split(split).per_class
    return None if per_class is None else [c for c, n in enumerate(per_class) if n > 0]


def check_task(ds) -> None:
    """Refuse a trivial task: with fewer than two classes to train on or to test, every prediction
    is right (or the only one possible) by construction, which is no result."""
    m = ds.manifest
    if m.num_classes < 2:
        raise UserError(f"{ds.root} has {m.num_classes} class ({', '.join(m.classes) or 'none'}): any accuracy on it "
                        "is 1.0 by construction; the protocols need a dataset of at least 2 classes")
    for split in ("train", "test"):
        present = _classes_in(ds, split)
        if present is not None and len(present) < 2:
            more = " or a larger --test-frac" if split == "test" else ""
            raise UserError(f"{ds.root}: only {len(present)} of its {m.num_classes} classes has {split} images, so "
                            f"the task is trivial; re-run `fasthpt prep` with more images per class{more}")


def coverage(ds) -> list[str]:
    """What to note of the classes a protocol cannot score: with no test images (top-1 is over the
    others), no val images (the selection ignores them) or no train images (never predicted)."""
    names, notices = ds.manifest.classes, []
    effect = {"test": "top-1 is over the other classes", "val": "the selection on val ignores them",
              "train": "no protocol can predict them, so their test images always count as errors"}
    for split in ("test", "val", "train"):
        present = _classes_in(ds, split)
        missing = [names[c] for c in range(len(names)) if present is not None and c not in present]
        if missing:
            shown_names = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            notices.append(f"{len(missing)} of {len(names)} classes have no {split} images ({shown_names}; too few "
                           f"images for the split fractions): {effect[split]}")
    return notices


def outside_classes(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return (labels < 0) | (labels >= num_classes)


def check_features(feats: torch.Tensor, source: str, what: str) -> None:
    """Refuse features holding NaN or inf (a damaged checkpoint: a NaN feature is equally far from
    every neighbour, so kNN would report chance as a result, and embed would write NaNs)."""
    bad = ~torch.isfinite(feats).all(dim=1) if feats.numel() else torch.zeros(0, dtype=torch.bool)
    if bad.any():
        raise UserError(f"backbone {source} gives NaN or inf features for {int(bad.sum())} of {len(feats)} {what} "
                        "images; no result is computed from them (a damaged checkpoint: overflowing weights or "
                        "statistics?)")


def check_labels(labels: torch.Tensor, data, split: str) -> None:
    """Refuse labels outside the manifest's classes: the manifest does not describe these files."""
    check_label_range(labels, data.manifest.num_classes, f"{data.root}: the {split} split")


def check_label_range(labels: torch.Tensor, num_classes: int, where: str) -> None:
    """One line when ``labels`` hold a class index outside 0..num_classes-1 (else a vote or a loss
    would index past its classes: a traceback, or a silently wrong count)."""
    outside = outside_classes(labels, num_classes)
    if outside.any():
        found = sorted(set(labels[outside].tolist()))
        raise UserError(f"{where} holds label{'s' * (len(found) > 1)} {', '.join(map(str, found[:5]))} but its "
                        f"{MANIFEST} lists {num_classes} classes (labels 0..{num_classes - 1}): the manifest does not "
                        "describe these files; re-run `fasthpt prep ... --force`")
