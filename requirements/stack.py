"""Requirement lists for the environments beside the pinned one (.venv), derived, never hand-kept.

pyproject.toml pins the stack that Composer 0.32.1 declares (torch < 2.7.1, torchvision < 0.22.1,
numpy < 2.3). The other environments install Composer with ``--no-deps`` and take everything else
from pyproject.toml and from Composer's own metadata, minus those three pins:

  python requirements/stack.py latest  COMPOSER_WHEEL   # .venv-latest (`make test-latest`)
  python requirements/stack.py bundle  COMPOSER_WHEEL FFCV_WHEEL   # what the GPU machine lacks

Each prints one requirement per line. Stdlib only: it runs before any environment exists.
"""

from __future__ import annotations

import re
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Composer's torch pin is what holds these three back; the other environments bring their own.
COMPOSER_PINNED = {"torch", "torchvision", "numpy", "mosaicml"}
# Built or fetched on their own by the GPU bundle (FFCV from source, DALI for CUDA 13).
BUILT_APART = {"ffcv", "nvidia-dali-cuda120"}
_NAME = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def name_of(requirement: str) -> str:
    """PEP 503 normalised project name of a requirement line ('Foo_Bar[x]>=1' -> 'foo-bar')."""
    match = _NAME.match(requirement)
    if not match:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def project_requirements(extras: tuple[str, ...] = ("dev", "ffcv")) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    return reqs


def wheel_requirements(wheel: str | Path) -> list[str]:
    """A wheel's unconditional Requires-Dist lines (extras and other markers dropped)."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        headers = Parser().parsestr(zf.read(meta).decode())
    return [r.split(";")[0].strip() for r in headers.get_all("Requires-Dist") or [] if ";" not in r]


def without(reqs: list[str], names: set[str]) -> list[str]:
    """``reqs`` less the projects in ``names``, each project once (the first line for it wins)."""
    kept: dict[str, str] = {}
    for req in reqs:
        name = name_of(req)
        if name not in names and name not in kept:
            kept[name] = req
    return list(kept.values())


def latest(composer_wheel: str) -> list[str]:
    # numpy unpinned: Composer's cap holds it at < 2.3; the GPU machines run numpy 2.5.
    return without(project_requirements() + wheel_requirements(composer_wheel), COMPOSER_PINNED) + ["numpy>=2"]


def bundle(composer_wheel: str, ffcv_wheel: str) -> list[str]:
    return without(latest(composer_wheel) + wheel_requirements(ffcv_wheel), BUILT_APART)


def main(argv: list[str]) -> int:
    kinds = {"latest": (latest, 1), "bundle": (bundle, 2)}
    if len(argv) < 1 or argv[0] not in kinds or len(argv) - 1 != kinds[argv[0]][1]:
        print("usage: stack.py latest COMPOSER_WHEEL | bundle COMPOSER_WHEEL FFCV_WHEEL", file=sys.stderr)
        return 2
    func, _ = kinds[argv[0]]
    print("\n".join(func(*argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
