import torch

from fasthpt.eval.augment import crop_resize_flip, random_resized_crop_flip, sample_boxes


def test_boxes_inside_image_with_scale_and_ratio():
    gen = torch.Generator().manual_seed(0)
    boxes = sample_boxes(2000, 40, 50, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), generator=gen)
    x0, y0, w, h = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (w >= 1).all() and (h >= 1).all()
    assert (x0 + w <= 50).all() and (y0 + h <= 40).all()
    frac = w * h / (40 * 50)
    assert frac.min() > 0.05 and frac.max() <= 1.0
    assert frac.std() > 0.1  # really random, not a constant crop


def test_full_box_is_identity_and_flip_mirrors():
    img = torch.randn(3, 2, 16, 16)
    full = torch.tensor([[0.0, 0.0, 16.0, 16.0]]).repeat(3, 1)
    same = crop_resize_flip(img, full, torch.zeros(3, dtype=torch.bool), 16)
    torch.testing.assert_close(same, img, atol=1e-5, rtol=1e-5)
    flipped = crop_resize_flip(img, full, torch.ones(3, dtype=torch.bool), 16)
    torch.testing.assert_close(flipped, img.flip(-1), atol=1e-5, rtol=1e-5)


def test_crop_picks_the_right_region():
    img = torch.arange(64.0).reshape(1, 1, 8, 8)
    no_flip = torch.zeros(1, dtype=torch.bool)
    # Same size: an exact copy of rows 4..7, columns 2..5.
    out = crop_resize_flip(img, torch.tensor([[2.0, 4.0, 4.0, 4.0]]), no_flip, 4)
    torch.testing.assert_close(out[0, 0], img[0, 0, 4:8, 2:6], atol=1e-4, rtol=0)
    # Half size: bilinear at pixel centres averages each 2x2 block.
    out = crop_resize_flip(img, torch.tensor([[0.0, 0.0, 8.0, 8.0]]), no_flip, 4)
    blocks = img[0, 0].reshape(4, 2, 4, 2).mean((1, 3))
    torch.testing.assert_close(out[0, 0], blocks, atol=1e-4, rtol=0)


def test_random_resized_crop_shape_and_repeatable():
    x = torch.randn(5, 3, 20, 20)
    a = random_resized_crop_flip(x, 12, generator=torch.Generator().manual_seed(3))
    b = random_resized_crop_flip(x, 12, generator=torch.Generator().manual_seed(3))
    assert a.shape == (5, 3, 12, 12)
    assert torch.equal(a, b)
