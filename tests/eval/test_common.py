import json

import torch
from torch import nn

from fasthpt.eval import common


def test_append_json_one_line_per_result(tmp_path):
    out = tmp_path / "sub" / "results.jsonl"
    common.append_json({"protocol": "knn", "top1": 0.5}, out)
    common.append_json({"protocol": "linear", "top1": 0.75, "curve": [[1, 0.5]]}, out)
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
