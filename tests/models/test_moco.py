import math

import pytest
import torch
import torch.nn.functional as F

from fasthpt.losses import infonce
from fasthpt.models.backbones import build_backbone
from fasthpt.models.moco import ComposerMoCo, MoCo, batch_shuffle, batch_unshuffle, gather


def reference_infonce(q, k, queue, t):
    """Written from MoCo's eq. (1), one row at a time, no vectorised shortcut."""
    total = 0.0
    for i in range(q.shape[0]):
        pos = math.exp(float(q[i] @ k[i]) / t)
        neg = sum(math.exp(float(q[i] @ queue[j]) / t) for j in range(queue.shape[0]))
        total += -math.log(pos / (pos + neg))
    return total / q.shape[0]


@pytest.mark.parametrize("n, d, kq, t", [(1, 4, 3, 0.2), (5, 8, 16, 0.2), (7, 16, 33, 0.07), (4, 128, 64, 1.0)])
def test_infonce_matches_hand_written_reference(n, d, kq, t):
    g = torch.Generator().manual_seed(n * 100 + d)
    q, k, queue = (F.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1) for m in (n, n, kq))
    got = infonce(q, k, queue, t)
    assert got.dim() == 0
    assert got.item() == pytest.approx(reference_infonce(q, k, queue, t), rel=1e-6)


def test_infonce_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        infonce(torch.randn(4, 8), torch.randn(3, 8), torch.randn(5, 8), 0.2)


def _moco(queue_size=10, dim=8, momentum=0.9):
    torch.manual_seed(0)
    return MoCo(build_backbone("resnet_tiny"), dim=dim, mlp_hidden=16, queue_size=queue_size, momentum=momentum)


def test_queue_starts_normalised_and_wraps_around():
    moco = _moco(queue_size=10, dim=8)
    assert torch.allclose(moco.queue.norm(dim=1), torch.ones(10))
    first = torch.arange(6 * 8, dtype=torch.float32).view(6, 8)
    moco.enqueue(first)
    assert int(moco.queue_ptr) == 6 and torch.equal(moco.queue[:6], first)
    old_6_to_10 = moco.queue[6:].clone()
    second = -torch.arange(6 * 8, dtype=torch.float32).view(6, 8) - 1
    moco.enqueue(second)  # 6 + 6 > 10: rows 6..9 then 0..1
    assert int(moco.queue_ptr) == 2
    assert torch.equal(moco.queue[6:10], second[:4]) and torch.equal(moco.queue[0:2], second[4:])
    assert torch.equal(moco.queue[2:6], first[2:6])
    assert not torch.equal(moco.queue[6:10], old_6_to_10)


def test_enqueue_more_keys_than_queue_keeps_the_newest():
    moco = _moco(queue_size=4, dim=8)
    keys = torch.randn(6, 8)
    moco.enqueue(keys)
    assert int(moco.queue_ptr) == 0 and torch.equal(moco.queue, keys[2:])


def test_momentum_update_is_exact():
    moco = _moco(momentum=0.9)
    with torch.no_grad():
        for p in moco.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    k_before = [p.clone() for p in moco.encoder_k.parameters()]
    q_now = [p.clone() for p in moco.encoder_q.parameters()]
    moco.momentum_update()
    for pk, k0, q0 in zip(moco.encoder_k.parameters(), k_before, q_now):
        torch.testing.assert_close(pk, 0.9 * k0 + 0.1 * q0, rtol=1e-6, atol=1e-7)
        assert not pk.requires_grad


def test_forward_keys_and_queue_semantics():
    moco = _moco(queue_size=12, dim=8).train()
    x, y = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    queue_before = moco.queue.clone()
    q, k, negatives = moco(x, y)
    assert torch.allclose(q.norm(dim=1), torch.ones(4)) and torch.allclose(k.norm(dim=1), torch.ones(4))
    assert q.requires_grad and not k.requires_grad and not negatives.requires_grad
    assert torch.equal(negatives, queue_before)  # this batch is scored against the old queue
    assert torch.equal(moco.queue[:4], k) and int(moco.queue_ptr) == 4
    loss = ComposerMoCo(moco).loss((q, k, negatives), None)
    loss.backward()
    assert all(p.grad is None for p in moco.encoder_k.parameters())
    assert all(p.grad is not None for p in moco.encoder_q.parameters())


def test_single_process_shuffle_and_gather_are_no_ops():
    x = torch.randn(5, 3)
    shuffled, perm = batch_shuffle(x)
    assert perm is None and torch.equal(shuffled, x) and torch.equal(batch_unshuffle(x, perm), x)
    assert torch.equal(gather(x), x)


def test_infonce_logits_stay_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(3)
    q, k, queue = (F.normalize(torch.randn(m, 32, generator=g), dim=1) for m in (6, 6, 50))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = infonce(q.bfloat16(), k.bfloat16(), queue, 0.2)
    want = infonce(q.bfloat16().float(), k.bfloat16().float(), queue, 0.2)
    assert got.dtype == torch.float32 and torch.allclose(got, want, rtol=1e-6, atol=1e-6)


def test_after_base_import_key_encoder_is_the_query_and_head_is_fresh(tmp_path):
    from fasthpt.models.backbones import load_backbone, save_backbone

    torch.manual_seed(1)
    trained = build_backbone("resnet_tiny")
    with torch.no_grad():
        for p in trained.parameters():
            p.mul_(1.5)
    save_backbone(trained, tmp_path / "backbone.pt")
    backbone, _ = load_backbone(str(tmp_path / "backbone.pt"), "resnet_tiny")
    moco = MoCo(backbone, dim=8, mlp_hidden=16, queue_size=16)
    q_state, k_state = moco.encoder_q.state_dict(), moco.encoder_k.state_dict()
    assert all(torch.equal(q_state[k], k_state[k]) for k in q_state)
    assert all(torch.equal(v, moco.backbone.state_dict()[k]) for k, v in trained.state_dict().items())
    torch.manual_seed(2)
    other = MoCo(build_backbone("resnet_tiny"), dim=8, mlp_hidden=16, queue_size=16)
    assert not torch.equal(moco.encoder_q.head[0].weight, other.encoder_q.head[0].weight)
    assert not torch.equal(moco.queue, other.queue)
