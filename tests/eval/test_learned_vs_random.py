"""A backbone that has learned something must score above `random` under the protocols.

Data where random features are weak by construction: each image is coarse random colour noise
with one small disc whose colour is the class (the disc is ~9% of the image, so globally pooled
random features are dominated by the noise). A ResNet trained supervised for 80 steps learns to
find the disc; a random init cannot.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from fasthpt.eval.knn import run_knn
from fasthpt.eval.linear import run_linear
from fasthpt.models.backbones import build_backbone

SIZE = 48
COLOURS = np.array([[230, 40, 40], [40, 200, 60], [50, 70, 230], [230, 210, 40]], np.float32)
OPTS = dict(res=32, batch_size=32, workers=0, backend="torch", progress=False, quiet=True, use_cache=False)


def disc_image(label: int, index: int) -> np.ndarray:
    rng = np.random.default_rng(1000 * label + index)
    img = rng.uniform(0, 255, (SIZE // 4, SIZE // 4, 3)).repeat(4, 0).repeat(4, 1)
    cy, cx = rng.uniform(10, SIZE - 10, 2)
    y, x = np.mgrid[:SIZE, :SIZE]
    img[np.hypot(y - cy, x - cx) < 8] = COLOURS[label]
    return img.astype(np.uint8)


@pytest.fixture(scope="module")
def disc_data(tmp_path_factory):
    from dataprep import prepare

    src = tmp_path_factory.mktemp("disc_src")
    for label in range(len(COLOURS)):
        (src / f"c{label}").mkdir()
        for i in range(24):
            Image.fromarray(disc_image(label, i)).save(src / f"c{label}" / f"{i:03d}.png")
    return prepare("discs", out=tmp_path_factory.mktemp("disc_data"), src=src, val_frac=0.25, max_res=64,
                   workers=1, progress=False, formats=("wds",))


def train_supervised(data, steps: int) -> torch.nn.Module:
    from fasthpt.eval import common

    torch.manual_seed(0)
    net = build_backbone("resnet_tiny")
    head = torch.nn.Linear(net.num_features, len(COLOURS))
    opt = torch.optim.SGD([*net.parameters(), *head.parameters()], lr=0.05, momentum=0.9)
    batches = common.labelled_batches(common.resolve_data(data), res=32, batch_size=16, workers=0, device="cpu",
                                      backend="torch")
    for _ in range(steps):
        x, y = next(batches)
        loss = torch.nn.functional.cross_entropy(head(net(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


def test_trained_backbone_beats_random(disc_data):
    torch.manual_seed(0)
    random_net = build_backbone("resnet_tiny")
    trained = train_supervised(disc_data, steps=80)
    knn_random = run_knn(random_net, disc_data, k=5, **OPTS)["top1"]
    knn_trained = run_knn(trained, disc_data, k=5, **OPTS)["top1"]
    assert knn_trained >= knn_random + 0.2, (knn_trained, knn_random)
    lin = dict(iters=60, eval_every=20, precomputed=True, **OPTS)
    lin_random = run_linear(random_net, disc_data, **lin)["top1"]
    lin_trained = run_linear(trained, disc_data, **lin)["top1"]
    assert lin_trained >= lin_random + 0.2, (lin_trained, lin_random)
