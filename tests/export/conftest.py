"""Fixtures for `fasthpt export` / `fasthpt embed`: a resnet18 whose BatchNorm buffers are not the
identity (so a loader that dropped them would be caught), saved as a bare backbone.pt and inside a
run folder written by the project's own config writer.
"""

from __future__ import annotations

import json

import pytest
from export_helpers import perturbed, write_run


@pytest.fixture(scope="session")
def r18(tmp_path_factory):
    """(model in eval mode, path of its backbone.pt)."""
    from fasthpt.models.backbones import save_backbone

    model = perturbed("resnet18")
    return model, save_backbone(model, tmp_path_factory.mktemp("r18") / "backbone.pt")


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory):
    from fasthpt.models.backbones import save_backbone

    return save_backbone(perturbed("resnet_tiny"), tmp_path_factory.mktemp("tiny") / "backbone.pt")


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, r18, tiny_data):
    """runs/hpt-r18 with an eval result of its backbone (and one of another backbone) beside it."""
    from fasthpt.eval.common import sha256_file

    root = write_run(tmp_path_factory.mktemp("runs") / "hpt-r18", r18[1], tiny_data)
    mine = {"protocol": "knn", "top1": 0.75, "backbone_fingerprint": sha256_file(root / "backbone.pt")}
    other = {"protocol": "linear", "top1": 0.1, "backbone_fingerprint": "0" * 64}
    (root / "eval.jsonl").write_text(json.dumps(mine) + "\n" + json.dumps(other) + "\n")
    return root
