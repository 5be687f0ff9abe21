"""No number that cannot be right is reported as a result: a temperature small enough to overflow
exp(sim / t), NaN / inf features (a negative BatchNorm variance, overflowing weights), labels the
manifest does not list, a one-class (trivial) task, classes without val / test images, --res <= 0."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from PIL import Image

from fasthpt.cli import main
from fasthpt.errors import UserError
from fasthpt.eval.knn import knn_accuracy, knn_grid_accuracy, knn_predict, run_knn
from fasthpt.eval.linear import run_linear
from fasthpt.models.backbones import build_backbone, save_backbone

FAST = dict(res=32, batch_size=16, workers=0, backend="torch", progress=False, quiet=True, use_cache=False)
CLI_FAST = ["--res", "32", "--backend", "torch", "--workers", "0", "--no-progress", "--no-cache"]
KNN_FAST = [*CLI_FAST, "--k", "5"]


def one_line(capsys, *argv) -> str:
    code = main(list(map(str, argv)))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _features(seed: int, n=60, m=40, d=16, c=5):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=gen)
    y = torch.randint(0, c, (n,), generator=gen)
    x = centers[y] + 0.8 * torch.randn(n, d, generator=gen)
    qy = torch.randint(0, c, (m,), generator=gen)
    q = centers[qy] + 0.8 * torch.randn(m, d, generator=gen)
    return x, y, q, qy, c


def _reference_scores(train, labels, queries, c, k, t):
    """float64 log-sum-exp per class: log sum_j exp(s_j / t) over the k nearest of that class, less the
    same m / t for every class of a query (m: its best similarity), which keeps it finite."""
    a = torch.nn.functional.normalize(train.double(), dim=1)
    b = torch.nn.functional.normalize(queries.double(), dim=1)
    sim, idx = (b @ a.T).topk(k, dim=1)
    out = torch.full((len(queries), c), -math.inf, dtype=torch.float64)
    for cls in range(c):
        mask = labels[idx] == cls
        logits = torch.where(mask, (sim - sim.max(1, keepdim=True).values) / t,
                             torch.tensor(-math.inf, dtype=torch.float64))
        out[:, cls] = torch.logsumexp(logits, dim=1)
    return out


@pytest.mark.parametrize("t", [1e-3, 1e-2, 3e-3, 1e-5, 1e-30, 5e-324])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_tiny_temperature_votes_like_its_exact_reference_not_like_ties(t, seed):
    x, y, q, qy, c = _features(seed)
    ref = _reference_scores(x, y, q, c, 10, t).argmax(1)
    got = knn_predict(x, y, q, c, k=10, t=t, chunk=7)
    assert torch.isfinite(got).all() and torch.equal(got.argmax(1), ref)
    # in the limit the nearest neighbour decides: 1-NN's answer, not "the lowest class index"
    if t <= 1e-5:
        assert torch.equal(got.argmax(1), knn_predict(x, y, q, c, k=1, t=0.07).argmax(1))
    grid = knn_grid_accuracy(x, y, q, qy, c, ks=[1, 10], ts=[t, 0.07])
    assert grid[1, 0].item() == pytest.approx(knn_accuracy(x, y, q, qy, c, k=10, t=t))
    assert grid[1, 0].item() == pytest.approx((ref == qy).float().mean().item())


def test_scaling_the_votes_changes_no_prediction_at_ordinary_temperatures():
    x, y, q, _, c = _features(3)
    for t in (0.05, 0.07, 0.5, 10.0):
        ref = _reference_scores(x, y, q, c, 20, t).argmax(1)
        assert torch.equal(knn_predict(x, y, q, c, k=20, t=t).argmax(1), ref)


@pytest.mark.parametrize("t", [0, -0.1, float("nan"), float("inf"), [0.07, float("nan")]])
def test_a_temperature_that_is_not_finite_and_positive_is_refused(tiny_data, t):
    with pytest.raises(UserError, match="a finite t > 0"):
        run_knn("random", tiny_data, arch="resnet_tiny", k=5, t=t, **FAST)


@pytest.mark.parametrize("protocol", ["knn", "linear", "finetune"])
@pytest.mark.parametrize("res", ["0", "-3", "x"])
def test_eval_res_that_is_not_a_positive_integer_is_a_usage_error(capsys, tiny_data, res, protocol):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", protocol, "--backbone", "random", "--arch", "resnet_tiny", "--data", str(tiny_data),
              f"--res={res}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and "Traceback" not in "".join(err)
    want = f"fasthpt eval {protocol}: error: argument --res: expected a positive number of pixels, got {res!r}"
    assert err[-1] == want


@pytest.mark.parametrize("res", [0, -1, 2.5, True])
def test_eval_api_refuses_a_res_that_is_not_a_positive_integer(tiny_data, res):
    with pytest.raises(UserError, match="must be a positive number of pixels"):
        run_knn("random", tiny_data, arch="resnet_tiny", k=5, **{**FAST, "res": res})


def _damaged(tmp_path, how: str):
    torch.manual_seed(0)
    model = build_backbone("resnet_tiny")
    bn = model.layer2[0].bn1
    if how == "negative_var":
        bn.running_var[3] = -0.5
    elif how == "all_negative_var":
        bn.running_var.fill_(-1.0)
    elif how == "huge_weights":  # finite, but the activations overflow float32 to inf (then NaN)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.Conv2d):
                    m.weight.mul_(1e12)
    return save_backbone(model, tmp_path / f"{how}.pt")


@pytest.mark.parametrize("how", ["negative_var", "all_negative_var"])
def test_a_negative_batchnorm_variance_is_refused_by_every_reader(tmp_path, capsys, tiny_data, how):
    path = _damaged(tmp_path, how)
    assert "negative BatchNorm running variance" in one_line(capsys, "eval", "knn", "--backbone", path, "--data",
                                                             tiny_data, *KNN_FAST)
    assert "layer2.0.bn1.running_var" in one_line(capsys, "embed", "--backbone", path, "--data", tiny_data, "--res",
                                                  32, "--out", tmp_path / "f.npy")
    assert "negative BatchNorm" in one_line(capsys, "export", path, "--to", "torchvision", "--out", tmp_path / "x.pth")
    from fasthpt.models.backbones import load_backbone

    with pytest.raises(UserError, match="negative BatchNorm"):  # as a pretraining base
        load_backbone(str(path), "resnet_tiny")
    assert not (tmp_path / "f.npy").exists() and not (tmp_path / "x.pth").exists()


def test_features_that_overflow_to_inf_or_nan_are_refused_not_reported(tmp_path, capsys, tiny_data):
    path = _damaged(tmp_path, "huge_weights")
    cache = tmp_path / "cache"
    err = one_line(capsys, "eval", "knn", "--backbone", path, "--data", tiny_data, "--res", 32, "--backend", "torch",
                   "--workers", 0, "--no-progress", "--k", 5, "--cache-dir", cache, "--json", tmp_path / "r.jsonl")
    assert "gives NaN or inf features" in err and "no result" in err
    assert not (tmp_path / "r.jsonl").exists() and not any(cache.glob("*.pt"))  # nothing cached, nothing reported
    with pytest.raises(UserError, match="NaN or inf features"):
        run_linear(str(path), tiny_data, iters=2, eval_every=1, precomputed=True, **FAST)
    err = one_line(capsys, "embed", "--backbone", path, "--data", tiny_data, "--res", 32, "--backend", "torch",
                   "--workers", 0, "--no-progress", "--out", tmp_path / "f.npy")
    assert "NaN or inf features" in err and not (tmp_path / "f.npy").exists()


def test_a_poisoned_cache_of_nan_features_is_recomputed_not_reported(tmp_path, tiny_data):
    first = run_knn("random", tiny_data, arch="resnet_tiny", k=5, cache_dir=tmp_path, **{**FAST, "use_cache": True})
    for path in tmp_path.glob("*.pt"):
        blob = torch.load(path, weights_only=True)
        blob["features"][0, 0] = float("nan")
        torch.save(blob, path)
    again = run_knn("random", tiny_data, arch="resnet_tiny", k=5, cache_dir=tmp_path, **{**FAST, "use_cache": True})
    assert not again["features_cached"] and again["top1"] == first["top1"]


def _fewer_classes(tmp_path, data, keep: int):
    """A copy of ``data`` whose manifest lists only its first ``keep`` classes (its counts still add up:
    the last one listed is said to hold the images of the others)."""
    copy = tmp_path / "data"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns(".cache"))
    raw = json.loads((copy / "manifest.json").read_text())
    raw["classes"] = raw["classes"][:keep]
    for entry in raw["splits"].values():
        entry["per_class"] = entry["per_class"][:keep - 1] + [sum(entry["per_class"][keep - 1:])]
    (copy / "manifest.json").write_text(json.dumps(raw))
    return copy


@pytest.mark.parametrize("keep", [2, 3])
def test_a_manifest_listing_fewer_classes_than_the_labels_is_one_line(tmp_path, capsys, tiny_data, keep):
    data = _fewer_classes(tmp_path, tiny_data, keep)
    err = one_line(capsys, "eval", "knn", "--backbone", "random", "--arch", "resnet_tiny", "--data", data, *KNN_FAST)
    assert f"lists {keep} classes" in err and "label" in err and "re-run `fasthpt prep" in err
    err = one_line(capsys, "eval", "linear", "--backbone", "random", "--arch", "resnet_tiny", "--data", data,
                   "--iters", 2, "--precomputed", "--batch-size", 16, *CLI_FAST)
    assert f"lists {keep} classes" in err
    err = one_line(capsys, "embed", "--backbone", "random", "--arch", "resnet_tiny", "--data", data, "--res", 32,
                   "--backend", "torch", "--workers", 0, "--no-progress", "--out", tmp_path / "f.npy")
    assert f"lists {keep} classes" in err


def _folder(root, sizes: dict[str, int]):
    from tiny_images import tiny_image

    for label, (name, n) in enumerate(sizes.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(tiny_image(label % 4, i, 32)).save(root / name / f"{i}.png")
    return root


def _prep(tmp_path, capsys, sizes, **kw):
    from dataprep import prepare

    data = prepare("d", out=tmp_path / "out", src=_folder(tmp_path / "src", sizes), workers=1, progress=False,
                   max_res=32, **kw)
    return data, capsys.readouterr().err


@pytest.mark.parametrize("n", [1, 3, 12])
def test_a_one_class_dataset_is_said_by_prep_and_refused_by_eval(tmp_path, capsys, n):
    data, err = _prep(tmp_path, capsys, {"only": n}, val_frac=0.2, test_frac=0.2) if n >= 3 else \
        _prep(tmp_path, capsys, {"only": n}, val_frac=0.0, test_frac=0.0)
    assert "warning: one class ('only')" in err and "`fasthpt eval` refuses it" in err
    if n < 3:
        return  # no test split: eval already says so
    err = one_line(capsys, "eval", "knn", "--backbone", "random", "--arch", "resnet_tiny", "--data", data, *KNN_FAST)
    assert "has 1 class (only)" in err and "1.0 by construction" in err
    with pytest.raises(UserError, match="1.0 by construction"):
        run_linear("random", data, arch="resnet_tiny", iters=2, **FAST)


def test_only_one_class_with_test_images_is_a_trivial_task(tmp_path, capsys):
    data, _ = _prep(tmp_path, capsys, {"big": 10, "small": 2})
    err = one_line(capsys, "eval", "knn", "--backbone", "random", "--arch", "resnet_tiny", "--data", data, *KNN_FAST)
    assert "only 1 of its 2 classes has test images" in err and "trivial" in err


@pytest.mark.parametrize("small", [{"one": 1}, {"two": 2}, {"one": 1, "two": 2}])
def test_classes_too_small_for_val_and_test_are_named_by_prep_and_kNN(tmp_path, capsys, small):
    data, err = _prep(tmp_path, capsys, {"a": 10, "b": 10, **small})
    for name, n in small.items():
        assert f"warning: class {name!r} has {n} image{'s' * (n > 1)}, none in val or test" in err, err
    assert "class 'a'" not in err
    result = run_knn("random", data, arch="resnet_tiny", k=3, **{**FAST, "quiet": False})
    err = capsys.readouterr().err
    names = ", ".join(small)
    line = f"{len(small)} of {2 + len(small)} classes have no test images ({names}"
    assert line in err and "top-1 is over the other classes" in err
    assert any(line in n for n in result["notices"]) and any("no val images" in n for n in result["notices"])


def test_labels_beyond_the_classes_are_one_line_in_every_vote_and_loss():
    """What the training's kNN monitor and the linear probe's train batches meet (no cache to check)."""
    from fasthpt.eval.linear import train_linear

    x, y, q, qy, c = _features(0)  # labels 0..4
    for call in (lambda: knn_predict(x, y, q, c - 1), lambda: knn_accuracy(x, y, q, qy, c - 1),
                 lambda: knn_grid_accuracy(x, y, q, qy, c - 1, ks=[5], ts=[0.07]),
                 lambda: knn_predict(x, y - 1, q, c)):
        with pytest.raises(UserError, match="the train split holds label"):
            call()
    batches = iter([(x[:8], torch.full((8,), c))] * 2)
    evals = {"val": (q, qy), "test": (q, qy)}
    with pytest.raises(UserError, match=f"lists {c} classes"):
        train_linear(batches, evals, x.shape[1], c, iters=2, lr=0.1, eval_every=1)
