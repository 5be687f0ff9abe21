"""The embedded generators: determinism, shapes, balance, errors, and that `sat` is learnable by a
CNN but not by a linear model on raw pixels."""

from __future__ import annotations

import numpy as np
import pytest

from dataprep.synthetic import DEFAULTS, EMBEDDED, get_generator
from fasthpt.errors import UserError


@pytest.mark.parametrize("name", EMBEDDED)
def test_same_seed_same_image_other_seed_differs(name):
    a = get_generator(name, num_images=40, image_size=32, seed=1)
    b = get_generator(name, num_images=40, image_size=32, seed=1)
    c = get_generator(name, num_images=40, image_size=32, seed=2)
    for i in (0, 7, 39):
        img_a, lab_a = a.render(i)
        img_b, lab_b = b.render(i)
        assert lab_a == lab_b and np.array_equal(img_a, img_b)
        assert not np.array_equal(img_a, c.render(i)[0])


@pytest.mark.parametrize("name", EMBEDDED)
def test_render_is_independent_of_order(name):
    gen = get_generator(name, num_images=30, image_size=32, seed=3)
    forward = [gen.render(i)[0] for i in range(5)]
    backward = [gen.render(i)[0] for i in reversed(range(5))][::-1]
    assert all(np.array_equal(f, b) for f, b in zip(forward, backward))
    assert not np.array_equal(forward[0], forward[1])


@pytest.mark.parametrize("name,size", [("sat", 32), ("sat", 48), ("natural", 40)])
def test_shapes_dtype_and_balanced_labels(name, size):
    gen = get_generator(name, num_images=3 * 16 + 5, image_size=size)
    n_cls = len(gen.classes)
    assert len(gen) == 3 * 16 + 5 and gen.name == name and gen.version
    labels = []
    for i in range(len(gen)):
        img, label = gen.render(i)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        labels.append(label)
    counts = np.bincount(labels, minlength=n_cls)
    assert counts.max() - counts.min() <= 1
    assert set(labels) <= set(range(n_cls))


def test_sat_has_many_classes_each_rendering_a_varied_image():
    gen = get_generator("sat", num_images=200, image_size=32)
    assert len(gen.classes) >= 10 and len(set(gen.classes)) == len(gen.classes)
    for c in range(len(gen.classes)):
        img, label = gen.render(c)
        assert label == c
        assert img.std() > 3.0, gen.classes[c]  # not a flat fill
        assert 0 < img.mean() < 255


def test_natural_uses_many_distinct_photos():
    gen = get_generator("natural", num_images=100, image_size=32)
    assert len(gen.classes) >= 8
    means = {gen.render(c)[1]: gen.render(c)[0].mean(axis=(0, 1)).round(1).tobytes()
             for c in range(len(gen.classes))}
    assert len(means) == len(gen.classes)
    assert len(set(means.values())) >= 8


def test_defaults_and_settings():
    for name in EMBEDDED:
        gen = get_generator(name)
        assert len(gen) == DEFAULTS[name]["num_images"]
        assert gen.render(0)[0].shape[0] == DEFAULTS[name]["image_size"]
        assert gen.settings["version"] == gen.version


@pytest.mark.parametrize("kwargs", [{"name": "imagenet"}, {"name": "sat", "num_images": 0},
                                    {"name": "sat", "image_size": 4}])
def test_bad_arguments_raise_user_error(kwargs):
    with pytest.raises(UserError):
        get_generator(**kwargs)


def test_index_out_of_range():
    with pytest.raises(IndexError):
        get_generator("sat", num_images=5, image_size=32).render(5)


def _dataset(n_train: int, n_test: int, size: int):
    import torch

    gen = get_generator("sat", num_images=n_train + n_test, image_size=size, seed=0)
    pairs = [gen.render(i) for i in range(n_train + n_test)]
    x = torch.tensor(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).float() / 255.0
    y = torch.tensor([p[1] for p in pairs])
    mean, std = x[:n_train].mean((0, 2, 3), keepdim=True), x[:n_train].std((0, 2, 3), keepdim=True)
    x = (x - mean) / std
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:], len(gen.classes)


def _accuracy(model, x, y) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _fit(model, x, y, steps_or_epochs: int, lr: float, batch: int | None):
    import torch
    import torch.nn.functional as F

    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(steps_or_epochs):
        model.train()
        order = torch.randperm(len(x)) if batch else torch.arange(len(x))
        for k in range(0, len(x), batch or len(x)):
            b = order[k:k + (batch or len(x))]
            xb = torch.where(torch.rand(len(b), 1, 1, 1) < 0.5, x[b].flip(3), x[b]) if batch else x[b]
            opt.zero_grad()
            F.cross_entropy(model(xb), y[b]).backward()
            opt.step()


@pytest.mark.slow
def test_sat_needs_a_cnn_linear_on_pixels_stays_far_below():
    """The learnability check: classes are learnable (a small CNN does well above chance)
    but not trivial (logistic regression on raw pixels stays far below the CNN)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: extra threads only contend on the shared 2 cores
    try:
        lin_acc, cnn_acc, n_cls = _linear_vs_cnn()
    finally:
        torch.set_num_threads(threads)
    print(f"sat 32px held-out accuracy: linear {lin_acc:.3f}, cnn {cnn_acc:.3f}, chance {1 / n_cls:.3f}")
    assert cnn_acc > 3.0 / n_cls
    assert cnn_acc - lin_acc > 0.15


def _linear_vs_cnn():
    import torch
    from torch import nn

    torch.manual_seed(0)
    xtr, ytr, xte, yte, n_cls = _dataset(480, 240, 32)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, n_cls))
    _fit(linear, xtr, ytr, 300, 1e-3, batch=None)  # full-batch; it fits the train set perfectly

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    cnn = nn.Sequential(block(3, 16), nn.MaxPool2d(2), block(16, 32), nn.MaxPool2d(2), block(32, 32),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, n_cls))
    _fit(cnn, xtr, ytr, 20, 3e-3, batch=64)
    return _accuracy(linear, xte, yte), _accuracy(cnn, xte, yte), n_cls


def test_difficulty_knob_changes_the_sensor_not_the_scene():
    clean = get_generator("sat", num_images=24, image_size=32, difficulty=0.0)
    harsh = get_generator("sat", num_images=24, image_size=32, difficulty=2.0)
    diffs = [np.abs(clean.render(i)[0].astype(int) - harsh.render(i)[0].astype(int)).mean()
             for i in range(12)]
    assert min(diffs) > 0.5
    assert clean.settings["difficulty"] == 0.0 and harsh.settings != clean.settings
    with pytest.raises(UserError):
        get_generator("sat", difficulty=-1.0)


def test_contact_sheet_writes_one_labelled_row_per_class(tmp_path):
    from PIL import Image

    from dataprep.synthetic.sheet import LABEL_W, PAD, main

    out = tmp_path / "sheet.png"
    assert main(["sat", str(out), "--per-class", "2", "--image-size", "32", "--palette"]) == 0
    n_cls = len(get_generator("sat", num_images=1, image_size=32).classes)
    assert Image.open(out).size == (LABEL_W + 2 * (32 + PAD), n_cls * (32 + PAD))
    assert [p.name for p in tmp_path.iterdir()] == ["sheet.png"]


@pytest.mark.parametrize("name", EMBEDDED)
def test_generator_survives_pickling_for_worker_processes(name):
    import pickle

    gen = get_generator(name, num_images=20, image_size=32, seed=5)
    clone = pickle.loads(pickle.dumps(gen))
    assert clone.settings == gen.settings
    assert np.array_equal(clone.render(13)[0], gen.render(13)[0])


def test_sat_target_is_six_of_sats_classes_and_shares_no_image_with_sat():
    n = 200
    target, sat = (get_generator(name, num_images=n, image_size=32) for name in ("sat-target", "sat"))
    assert set(target.classes) < set(sat.classes) and len(target.classes) == 6
    # with one random stream per index, image i of both would be the same scene wherever both
    # datasets draw the same class at index i: their own streams make them differ
    same_class = [i for i in range(n) if sat.classes[i % 13] == target.classes[i % 6]]
    assert same_class
    for i in same_class:
        assert not np.array_equal(sat.render(i)[0], target.render(i)[0])
