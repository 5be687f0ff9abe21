"""End to end on the prepared tiny dataset (tests/conftest.py): results, cache, JSON lines."""

import json

import pytest
import torch

from fasthpt.eval.finetune import run_finetune
from fasthpt.eval.knn import run_knn
from fasthpt.eval.linear import run_linear
from fasthpt.models.backbones import build_backbone

FAST = dict(res=32, batch_size=16, workers=0, backend="torch", progress=False, quiet=True)




@pytest.fixture
def tiny_backbone():
    torch.manual_seed(0)
    return build_backbone("resnet_tiny")


def test_knn_result_cache_and_json(tiny_data, tiny_backbone, tmp_path):
    out = tmp_path / "r.jsonl"
    cache = tmp_path / "cache"
    first = run_knn(tiny_backbone, tiny_data, k=5, cache_dir=cache, json_path=out, **FAST)
    second = run_knn(tiny_backbone, tiny_data, k=5, cache_dir=cache, json_path=out, **FAST)
    assert not first["features_cached"] and second["features_cached"]
    assert first["top1"] == second["top1"] and 0.0 <= first["top1"] <= 1.0
    assert (first["num_train"], first["num_val"]) == (36, 12)
    assert len(list(cache.iterdir())) == 2  # train + val features, keyed by fingerprints
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["protocol"] for r in lines] == ["knn", "knn"]
    for key in ("backbone_fingerprint", "dataset_fingerprint", "options", "wall_clock_s", "samples_per_s", "device"):
        assert key in lines[0]
    with torch.no_grad():  # other weights -> other fingerprint -> a fresh extraction
        next(tiny_backbone.parameters()).mul_(0.5)
    third = run_knn(tiny_backbone, tiny_data, k=5, cache_dir=cache, **FAST)
    assert not third["features_cached"] and third["backbone_fingerprint"] != first["backbone_fingerprint"]


@pytest.mark.parametrize("precomputed", [True, False])
def test_linear_modes(tiny_data, tiny_backbone, tmp_path, precomputed):
    r = run_linear(tiny_backbone, tiny_data, iters=12, eval_every=4, precomputed=precomputed,
                   cache_dir=tmp_path, **FAST)
    assert r["mode"] == ("linear-precomputed" if precomputed else "linear")
    assert [p[0] for p in r["curve"]] == [4, 8, 12]
    assert r["top1"] == max(p[1] for p in r["curve"]) and r["final_top1"] == r["curve"][-1][1]
    assert r["options"]["lr_effective"] == pytest.approx(30.0 * 16 / 512)
    assert tiny_backbone.training  # the caller's module mode is restored


def test_finetune_leaves_caller_module_untouched(tiny_data, tiny_backbone):
    before = {k: v.clone() for k, v in tiny_backbone.state_dict().items()}
    r = run_finetune(tiny_backbone, tiny_data, labels=10, iters=2, effective_batch=32, eval_every=1, **FAST)
    assert r["mode"] == "finetune-10" and r["options"]["accumulation"] == 2
    assert r["best_iter"] in (1, 2) and 0.0 <= r["top1"] <= 1.0
    after = tiny_backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_linear_without_shards_crops_on_device(tiny_data, tiny_backbone, tmp_path, monkeypatch):
    """FFCV-only data: train views are the eval loader's crops, shuffled and cropped on the device."""
    from fasthpt.eval import common, labelled

    real = common.resolve_data

    def ffcv_only(data):
        ds = real(data)
        ds.manifest.raw["formats"] = ["ffcv"]
        return ds

    def forbidden(*a, **k):
        raise AssertionError("the WDS labelled loader must not be used without shards")

    monkeypatch.setattr(common, "resolve_data", ffcv_only)
    monkeypatch.setattr(labelled, "labelled_train_batches", forbidden)
    r = run_linear(tiny_backbone, tiny_data, iters=6, eval_every=3, cache_dir=tmp_path, **FAST)
    assert r["mode"] == "linear" and [p[0] for p in r["curve"]] == [3, 6]


def test_labelled_subset_from_loader_is_stratified_and_repeatable(tiny_data):
    from fasthpt.eval import common
    from fasthpt.eval.finetune import collect_subset, stratified_ranks

    ds = common.resolve_data(tiny_data)
    per_class = ds.manifest.raw["splits"]["train"]["per_class"]

    def pick(seed):
        ranks = stratified_ranks(per_class, 10, seed)
        return collect_subset(common.eval_loader(ds, "train", 32, 8, 0, torch.device("cpu"), "torch"), ranks)

    x1, y1 = pick(3)
    x2, y2 = pick(3)
    x3, _ = pick(4)
    assert sorted(torch.bincount(y1, minlength=4).tolist()) == [2, 2, 3, 3]
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)


@pytest.mark.gpu
def test_protocols_on_cuda_bf16(tiny_data, tmp_path):
    torch.manual_seed(0)
    net = build_backbone("resnet_tiny").cuda()
    opts = dict(FAST, device="cuda")
    assert run_knn(net, tiny_data, k=5, cache_dir=tmp_path, **opts)["device"].startswith("cuda")
    for precomputed in (True, False):
        r = run_linear(net, tiny_data, iters=6, eval_every=3, precomputed=precomputed, cache_dir=tmp_path, **opts)
        assert 0.0 <= r["top1"] <= 1.0
    r = run_finetune(net, tiny_data, labels=12, iters=2, effective_batch=32, **opts)
    assert 0.0 <= r["top1"] <= 1.0
