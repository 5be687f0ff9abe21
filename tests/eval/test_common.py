import json

import torch
from torch import nn

from fasthpt.eval import common
from fasthpt.fileio import append_jsonl


def test_append_json_one_line_per_result(tmp_path):
    out = tmp_path / "sub" / "results.jsonl"
    append_jsonl(out, {"protocol": "knn", "top1": 0.5})
    append_jsonl(out, {"protocol": "linear", "top1": 0.75, "curve": [[1, 0.5]]})
    lines = out.read_text().splitlines()
    assert [json.loads(line)["protocol"] for line in lines] == ["knn", "linear"]


def test_state_dict_fingerprint_tracks_weights():
    torch.manual_seed(0)
    a = nn.Linear(4, 3)
    fp = common.sha256_state_dict(a)
    assert fp == common.sha256_state_dict(a)
    with torch.no_grad():
        a.bias[0] += 1e-3
    assert fp != common.sha256_state_dict(a)


def test_in_memory_module_stays_on_its_device():
    bb = common.resolve_backbone(nn.Linear(2, 2))
    assert bb.source == common.IN_MEMORY
    assert common.module_device(bb, "auto") == torch.device("cpu")
    assert common.module_device(bb, "cpu") == torch.device("cpu")


def test_random_backbone_is_repeatable_per_seed_and_leaves_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = common.resolve_backbone("random", "resnet_tiny", seed=0)
    assert torch.equal(torch.rand(1), expected_next)  # the caller's RNG stream is untouched
    b = common.resolve_backbone("random", "resnet_tiny", seed=0)
    c = common.resolve_backbone("random", "resnet_tiny", seed=1)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert a.arch == "resnet_tiny" and a.num_features == 256
