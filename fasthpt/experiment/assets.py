"""Bases shipped with fasthpt (fasthpt/assets/NAME.pt), each with its recipe in NAME.json.

The paper starts HPT from an existing model (ImageNet MoCo-v2 after 800 epochs: far more compute
than any target run). The embedded experiment does the same: its base was built once by
`fasthpt demo --build-base fasthpt/assets/NAME.pt` (`make demo-base`) with the chain its preset
names, and ships as plain tensors (read with weights_only=True like any checkpoint). Its JSON says
how it was built, on what, in how long, and the file's sha256, checked on every use.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from fasthpt.errors import UserError
from fasthpt.names import check_name

ASSETS = Path(__file__).resolve().parents[1] / "assets"
PREFIX = "embedded:"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def resolve(spec: str) -> tuple[str, dict | None]:
    """(checkpoint path, its recipe) for ``embedded:NAME``; (spec, None) for any other spec."""
    if not spec.startswith(PREFIX):
        return spec, None
    name = check_name(f"{PREFIX}NAME", spec[len(PREFIX):], f" (a base shipped in {ASSETS})")
    path, recipe = ASSETS / f"{name}.pt", ASSETS / f"{name}.json"
    rebuild = f"rebuild it with `fasthpt demo --build-base {path}` (make demo-base)"
    if not path.is_file() or not recipe.is_file():
        shipped = ", ".join(p.stem for p in sorted(ASSETS.glob("*.pt"))) or "none"
        raise UserError(f"no embedded base {name!r} in {ASSETS} (shipped: {shipped}); {rebuild}")
    meta = json.loads(recipe.read_text())
    if sha256(path) != meta.get("sha256"):
        raise UserError(f"{path} does not match the sha256 in {recipe.name}: it was changed or cut short; {rebuild}")
    return str(path), meta


def write(backbone: str, out: Path, recipe: dict) -> Path:
    """Copy ``backbone`` to ``out`` and its recipe (with the sha256) to ``out``.json, atomically."""
    out = Path(out)
    if out.suffix != ".pt":
        raise UserError(f"--build-base {out}: give a .pt path")
    from fasthpt.fileio import atomic_path, atomic_write_json

    with atomic_path(out) as tmp:
        shutil.copyfile(backbone, tmp)
        digest = sha256(tmp)
    atomic_write_json(out.with_suffix(".json"), {**recipe, "sha256": digest})
    return out
