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
