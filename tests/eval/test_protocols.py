"""End to end on the prepared tiny dataset (tests/conftest.py: 36 train / 12 val / 12 test): results
select on val and report test, cache, JSON lines, seeds, notices, the test split required up front."""

import json
import shutil

import pytest
import torch

from fasthpt import stats
from fasthpt.errors import UserError
from fasthpt.eval import paper
from fasthpt.eval.finetune import PAPER_LABELS, run_finetune
from fasthpt.eval.knn import run_knn
from fasthpt.eval.linear import run_linear
from fasthpt.eval.seeds import run_seeds
from fasthpt.models.backbones import build_backbone

FAST = dict(res=32, batch_size=16, workers=0, backend="torch", progress=False, quiet=True)


@pytest.fixture
def tiny_backbone():
    torch.manual_seed(0)
    return build_backbone("resnet_tiny")


def test_knn_selects_k_and_t_on_val_and_reports_test(tiny_data, tiny_backbone, tmp_path):
    out = tmp_path / "r.jsonl"
    cache = tmp_path / "cache"
    first = run_knn(tiny_backbone, tiny_data, k=[1, 5], t=[0.07, 0.5], cache_dir=cache, json_path=out, **FAST)
    second = run_knn(tiny_backbone, tiny_data, k=[1, 5], t=[0.07, 0.5], cache_dir=cache, json_path=out, **FAST)
    assert not first["features_cached"] and second["features_cached"]
    assert (first["num_train"], first["num_val"], first["num_test"]) == (36, 12, 12)
    assert len(list(cache.iterdir())) == 3  # train, val and test features, keyed by fingerprints
    grid = first["grid"]
    i, j = grid["k"].index(first["k"]), grid["t"].index(first["t"])
    assert first["val_top1"] == grid["val_top1"][i][j] == max(max(row) for row in grid["val_top1"])
    assert first["top1"] == grid["test_top1"][i][j] and first["top1"] == second["top1"]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["protocol"] for r in lines] == ["knn", "knn"]
    assert lines[0]["protocol_version"] == paper.PROTOCOL_VERSION and lines[0]["at_paper_settings"] is None
    for key in ("backbone_fingerprint", "dataset_fingerprint", "options", "wall_clock_s", "samples_per_s", "device"):
        assert key in lines[0]
    with torch.no_grad():  # other weights -> other fingerprint -> a fresh extraction
        next(tiny_backbone.parameters()).mul_(0.5)
    third = run_knn(tiny_backbone, tiny_data, k=5, t=0.07, cache_dir=cache, **FAST)
    assert not third["features_cached"] and third["backbone_fingerprint"] != first["backbone_fingerprint"]
    assert third["grid"]["k"] == [5] and third["k"] == 5


@pytest.mark.parametrize("precomputed", [True, False])
def test_linear_evaluates_val_and_test_from_iteration_0(tiny_data, tiny_backbone, tmp_path, precomputed):
    r = run_linear(tiny_backbone, tiny_data, iters=12, eval_every=4, precomputed=precomputed, cache_dir=tmp_path,
                   **FAST)
    assert r["mode"] == ("linear-precomputed" if precomputed else "linear")
    curves = r["curves"]
    assert curves["iter"] == [0, 4, 8, 12] and len(curves["val_top1"]) == len(curves["test_top1"]) == 4
    # 4 evaluations: the candidate is the last (ct > round(2) = 2); its test is reported
    assert r["best_iter"] == 12 and r["top1"] == curves["test_top1"][3] and r["val_top1"] == curves["val_top1"][3]
    assert r["final_test_top1"] == curves["test_top1"][-1]
    assert r["options"]["lr_effective"] == pytest.approx(30.0 * 16 / 512)
    assert r["settings"] == "custom" and r["settings_vs_paper"]["iters"] == [5000, 12]
    assert tiny_backbone.training  # the caller's module mode is restored


def test_linear_train_views_come_from_the_labelled_loader_of_the_chosen_backend(tiny_data, tiny_backbone, tmp_path,
                                                                               monkeypatch):
    """Every backend trains on RandomResizedCrop + flip of the whole image: the data API's labelled
    loader, asked for the run's backend (here torch; ffcv and dali are tested in tests/data)."""
    import fasthpt.data as data_api

    calls = []
    real = data_api.build_labelled_loader

    def spy(*args, **kw):
        calls.append(kw)
        return real(*args, **kw)

    monkeypatch.setattr(data_api, "build_labelled_loader", spy)
    r = run_linear(tiny_backbone, tiny_data, iters=3, eval_every=3, cache_dir=tmp_path, **FAST)
    assert [(c["split"], c["backend"], c["res"], c["batch_size"]) for c in calls] == [("train", "torch", 32, 16)]
    assert r["options"]["train_views"] == "RandomResizedCrop+flip of the whole image"


def test_batch_larger_than_the_train_split_is_clamped_with_a_notice(tiny_data, tiny_backbone, tmp_path, capsys):
    r = run_linear(tiny_backbone, tiny_data, iters=2, eval_every=1, precomputed=True, cache_dir=tmp_path,
                   **dict(FAST, batch_size=512, quiet=False))
    err = capsys.readouterr().err
    assert "note: --batch-size 512 is more than the 36 train images; using 36" in err
    assert r["notices"] == ["--batch-size 512 is more than the 36 train images; using 36"]
    assert r["options"]["batch_size"] == 36 and r["options"]["batch_size_requested"] == 512
    assert r["options"]["lr_effective"] == pytest.approx(30.0 * 36 / 512)


def test_finetune_reports_test_at_the_selected_val_and_leaves_caller_module_untouched(tiny_data, tiny_backbone):
    before = {k: v.clone() for k, v in tiny_backbone.state_dict().items()}
    r = run_finetune(tiny_backbone, tiny_data, labels=10, iters=2, accum_steps=2, eval_every=1, **FAST)
    assert r["mode"] == "finetune-10" and r["options"]["images_per_update"] == 20
    assert (r["options"]["updates"], r["options"]["batches"], r["curve_unit"]) == (2, 4, "batches")
    assert r["options"]["batch_size"] == 10 and r["notices"]  # the batch of 16 lowered to the 10 labelled images
    assert r["curves"]["iter"] == [1, 2, 3, 4]
    assert r["best_iter"] == 4 and r["top1"] == r["curves"]["test_top1"][3]  # 4 points: only the last is a candidate
    assert r["settings_vs_paper"]["accum_steps"] == [4, 2] and "lr" not in r["settings_vs_paper"]
    after = tiny_backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_labelled_subset_is_stratified_repeatable_and_seeded(tiny_data):
    from fasthpt.data import split_labels
    from fasthpt.eval import common
    from fasthpt.eval.finetune import labelled_subset

    ds = common.resolve_data(tiny_data)
    labels = split_labels(tiny_data, "train")
    a, b, c = labelled_subset(ds, 10, 3), labelled_subset(ds, 10, 3), labelled_subset(ds, 10, 4)
    assert sorted(torch.bincount(labels[a], minlength=4).tolist()) == [2, 2, 3, 3]
    assert torch.equal(a, b) and not torch.equal(a, c) and len(set(a.tolist())) == 10


def test_seeds_give_distinct_runs_and_a_summary_line(tiny_data, tiny_backbone, tmp_path):
    out = tmp_path / "r.jsonl"
    results, summary = run_seeds(run_linear, tiny_backbone, tiny_data, seed=5, seeds=3, json_path=out, iters=6,
                                 eval_every=2, precomputed=True, cache_dir=tmp_path / "cache", **FAST)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 4 and [r.get("summary") for r in lines] == [None, None, None, True]
    assert [r["options"]["seed"] for r in lines[:3]] == [5, 6, 7] == summary["seeds"]
    curves = [json.dumps(r["curves"]) for r in results]
    assert len(set(curves)) == 3  # each seed its own head init and batch order
    values = [r["top1"] for r in results]
    expected = stats.summarize(values)
    assert lines[3]["values"] == values and lines[3]["n"] == 3
    assert lines[3]["mean"] == pytest.approx(expected["mean"]) and lines[3]["std"] == pytest.approx(expected["std"])
    assert lines[3]["ci95"] == pytest.approx(expected["ci95"])
    assert lines[3]["protocol_version"] == paper.PROTOCOL_VERSION and lines[3]["mode"] == "linear-precomputed"


def fake_clock(monkeypatch, step_s: float = 100.0) -> None:
    """fasthpt.forecast reads a clock that advances ``step_s`` per reading: every timed step "takes" it."""
    from fasthpt import forecast

    ticks = iter(range(10**6))
    monkeypatch.setattr(forecast, "now", lambda: step_s * next(ticks))


def test_a_long_cpu_run_is_announced_from_its_first_timed_batches(tiny_data, tiny_backbone, tmp_path, monkeypatch,
                                                                  capsys):
    """The fake clock makes each batch 1000 s: the warm-up batch (val: one batch), then one timed batch
    (1000 s is past the 10 s that suffice), then the note."""
    fake_clock(monkeypatch, 1000.0)
    r = run_linear(tiny_backbone, tiny_data, iters=2, eval_every=2, cache_dir=tmp_path, **dict(FAST, quiet=False))
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]
    # 2 iterations x 16 train views + 12 val + 12 test extractions; the timed batch: the 12 test images,
    # 1000 s / 12 = 83.33 s per pass, 56 x 83.33 s = 78 min
    assert len(notes) == 1 and "about 78 min on this CPU: 56 image passes at 83.33 s each" in notes[0]
    # the fast mode extracts all 60 images once: 60 x 83.33 s
    assert "--precomputed trains on cached center-crop features instead (about 83 min)" in notes[0]
    assert r["notices"] == [notes[0][len("note: "):]]
    again = run_linear(tiny_backbone, tiny_data, iters=2, eval_every=2, precomputed=True, cache_dir=tmp_path, **FAST)
    assert "36 image passes" in again["notices"][0] and "--res" in again["notices"][0]  # val/test cached: train only
    ft = run_finetune(tiny_backbone, tiny_data, labels=8, iters=1, accum_steps=2, eval_every=2,
                      **dict(FAST, batch_size=8))
    assert "72 image passes" in ft["notices"][0] and "fewer --iters" in ft["notices"][0]  # 3 x 2 x 8 + 12 + 12


def test_finetune_says_its_cost_after_its_first_timed_batches_before_the_rest(tiny_data, tiny_backbone,
                                                                              monkeypatch):
    from fasthpt.eval import common

    fake_clock(monkeypatch, 1000.0)
    events = []
    real_batches, real_note = common.labelled_batches, common.note

    def counted(*args, **kw):
        for batch in real_batches(*args, **kw):
            events.append("batch")
            yield batch

    monkeypatch.setattr(common, "labelled_batches", counted)
    monkeypatch.setattr(common, "note", lambda message, quiet=False: events.append("note") or real_note(message, quiet))
    r = run_finetune(tiny_backbone, tiny_data, labels=8, iters=3, accum_steps=2, eval_every=100,
                     **dict(FAST, batch_size=8))
    assert events == ["batch", "batch", "note"] + ["batch"] * 4  # 6 batches: the note after the timed one
    assert "this fine-tuning on 8 labels will take about" in r["notices"][0]


def test_no_forecast_on_a_gpu_or_for_the_later_seeds():
    from fasthpt.eval import common

    assert common.forecast("x", 10**9, torch.device("cuda"), [], True, 1, "h") is None
    assert common.forecast("x", 10**9, torch.device("cpu"), [], True, 0, "h") is None  # a later seed of a series
    assert common.forecast("x", 10**9, torch.device("cpu"), [], True, 1, "h") is not None


def _without_test(tiny_data, tmp_path):
    """A copy of tiny_data as an older fasthpt prepared it: no test split in the manifest."""
    copy = tmp_path / "old"
    shutil.copytree(tiny_data, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for section in (manifest["splits"], manifest["files"]["ffcv"], manifest["files"]["wds"]):
        section.pop("test")
    manifest["schema"] = 2
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("protocol", [run_knn, run_linear, run_finetune])
def test_no_test_split_is_refused_before_any_work(tiny_data, tmp_path, protocol):
    data = _without_test(tiny_data, tmp_path)
    missing = tmp_path / "not-a-checkpoint.pt"  # the data is checked first: this is never opened
    kw = dict(FAST, cache_dir=tmp_path / "cache") if protocol is not run_finetune else dict(FAST, labels=8)
    with pytest.raises(UserError, match="no test split") as info:
        protocol(str(missing), data, json_path=tmp_path / "r.jsonl", **kw)
    assert len(str(info.value).splitlines()) == 1
    assert not (tmp_path / "cache").exists() and not (tmp_path / "r.jsonl").exists()


def test_cli_defaults_are_the_papers():
    import argparse

    from fasthpt.eval.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--backbone", "b.pt", "--data", "d"]
    lin = vars(parser.parse_args(["linear", *base]))
    ft = vars(parser.parse_args(["finetune", *base]))
    assert ft["labels"] is None and ft["labels_file"] is None  # run_finetune: 1000 stratified (PAPER_LABELS)
    ft["labels"] = PAPER_LABELS
    assert paper.settings_vs_paper("linear", lin) == {}
    assert paper.settings_vs_paper("finetune", ft) == {}
    assert paper.settings_vs_paper("finetune", {**ft, "lr": 0.001}) == {}  # the paper's other lr
    assert paper.settings_vs_paper("finetune", {**ft, "lr": 0.1}) == {"lr": [[0.01, 0.001], 0.1]}
    assert paper.settings_fields("linear", lin)["settings"] == "paper"
    assert paper.settings_fields("linear", {**lin, "iters": 300}, "demo-tiny")["settings"] == "demo-tiny"
    assert paper.settings_vs_paper("knn", {}) is None


@pytest.mark.gpu
def test_protocols_on_cuda_bf16(tiny_data, tmp_path):
    torch.manual_seed(0)
    net = build_backbone("resnet_tiny").cuda()
    opts = dict(FAST, device="cuda")
    assert run_knn(net, tiny_data, k=5, cache_dir=tmp_path, **opts)["device"].startswith("cuda")
    for precomputed in (True, False):
        r = run_linear(net, tiny_data, iters=6, eval_every=3, precomputed=precomputed, cache_dir=tmp_path, **opts)
        assert 0.0 <= r["top1"] <= 1.0
    r = run_finetune(net, tiny_data, labels=12, iters=2, accum_steps=2, **opts)
    assert 0.0 <= r["top1"] <= 1.0
