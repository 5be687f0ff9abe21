"""Shared fixtures for the whole test suite.

- ``tiny_folder``: a folder-per-class image tree (4 classes x 15 images, 48x48 RGB, JPEG and PNG
  mixed), deterministic, each class with its own colour and pattern so a classifier can tell them
  apart.
- ``tiny_data``: that tree prepared by ``dataprep.prepare`` (both formats, 36 train / 12 val /
  12 test: 9 / 3 / 3 per class), the folder a loader or a trainer reads with ``load_manifest``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# tests/dataprep/ mirrors the package dataprep/: with tests/ on sys.path (pytest puts a rootdir
# conftest's folder there) `import dataprep` could resolve to that test folder as a namespace
# package. Put the repository root first so the real package always wins.
_ROOT = str(Path(__file__).resolve().parents[1])
if sys.path[:1] != [_ROOT]:
    sys.path.insert(0, _ROOT)

import pytest  # noqa: E402
from tiny_images import write_tiny_folder  # noqa: E402 (after the sys.path fix)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    return write_tiny_folder(tmp_path_factory.mktemp("tiny_src"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, tiny_folder) -> Path:
    from dataprep import prepare

    out = tmp_path_factory.mktemp("tiny_data")
    return prepare("tiny", out=out, src=tiny_folder, val_frac=0.2, test_frac=0.2, max_res=64,
                   workers=1, progress=False)
