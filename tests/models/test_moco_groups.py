"""Shuffle-BN on one process: BN statistics per group in both encoders (GroupedBatchNorm2d, one
forward of the whole batch), a random reassignment of the key encoder's groups, the same numbers as
the per-chunk forward it replaced and as a real G-process (gloo) run, running statistics updated
once per step."""

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fasthpt.models.backbones import build_backbone
from fasthpt.models.moco import ComposerMoCo, GroupedBatchNorm2d, MoCo, set_bn_groups

SEED = 5


def _moco(groups: int, shuffle_bn: bool = False) -> MoCo:
    torch.manual_seed(0)
    return MoCo(build_backbone("resnet_tiny"), dim=8, mlp_hidden=16, queue_size=32, momentum=0.9,
                shuffle_bn=shuffle_bn, bn_groups=groups).train()


def _views(n: int = 8, side: int = 16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, side, side, generator=g), torch.randn(n, 3, side, side, generator=g)


class _Recorder(torch.nn.Module):
    """Stands in for an encoder: records the rows of each call, returns them as embeddings."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.unused = torch.nn.Parameter(torch.zeros(1))  # the momentum update needs one

    def forward(self, x):
        self.calls.append(x[:, 0, 0, 0].clone())
        return x.flatten(1)[:, :8]


def test_grouped_bn_normalises_each_group_with_its_own_statistics():
    bn = torch.nn.BatchNorm2d(3)
    set_bn_groups(bn, 2)
    assert isinstance(bn, GroupedBatchNorm2d) and bn.train()
    x = torch.cat([torch.randn(4, 3, 5, 5), torch.randn(4, 3, 5, 5) * 10 + 5])
    out = bn(x)
    for chunk in out.chunk(2):  # each group is standardised on its own
        torch.testing.assert_close(chunk.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    assert not torch.allclose(out, torch.nn.BatchNorm2d(3).train()(x), atol=1e-3)
    with pytest.raises(ValueError, match="equal BN groups"):
        bn(torch.randn(7, 3, 5, 5))
    bn.eval()  # eval mode: the running statistics, whatever the groups
    torch.testing.assert_close(bn(x), torch.nn.functional.batch_norm(x, bn.running_mean, bn.running_var, bn.weight,
                                                                      bn.bias, False, 0.0, bn.eps))


def test_running_statistics_update_once_per_step_from_one_group():
    """As one of the authors' devices (DDP keeps rank 0's buffers): one momentum step per forward,
    from the first group's mean and unbiased variance; a plain BN's state_dict keys."""
    bn = torch.nn.BatchNorm2d(3, momentum=0.1)
    set_bn_groups(bn, 4)
    x = torch.randn(8, 3, 6, 6) * 3 + 2
    bn.train()(x)
    first = x[:2]
    torch.testing.assert_close(bn.running_mean, 0.1 * first.mean((0, 2, 3)))
    torch.testing.assert_close(bn.running_var, 0.9 + 0.1 * first.var((0, 2, 3), unbiased=True))
    assert int(bn.num_batches_tracked) == 1
    assert set(bn.state_dict()) == set(torch.nn.BatchNorm2d(3).state_dict())


def _chunked_step(moco: MoCo, x, y, groups: int):
    """The per-chunk reference (the implementation before GroupedBatchNorm2d): each encoder called
    on each chunk with plain BatchNorm, the key chunks after the same random reassignment."""
    set_bn_groups(moco, 1)
    q = torch.nn.functional.normalize(torch.cat([moco.encoder_q(c) for c in x.chunk(groups)]), dim=1)
    moco.momentum_update()
    local = torch.randperm(y.shape[0])
    with torch.no_grad():
        k = torch.cat([moco.encoder_k(c) for c in y[local].chunk(groups)])
    k = torch.nn.functional.normalize(k, dim=1)[torch.argsort(local)]
    negatives = moco.queue.clone()
    moco.enqueue(k)
    return q, k, negatives


@pytest.mark.parametrize("groups", [2, 4])
def test_one_pass_equals_the_per_chunk_forward(groups):
    """Outputs, loss, the query encoder's gradients and the queue: the same within float tolerance."""
    x, y = _views(8, side=24)
    one, ref = _moco(groups), _moco(groups)
    torch.manual_seed(SEED)
    out = one(x, y)
    loss = ComposerMoCo(one).loss(out, None)
    loss.backward()
    torch.manual_seed(SEED)
    out_ref = _chunked_step(ref, x, y, groups)
    loss_ref = ComposerMoCo(ref).loss(out_ref, None)
    loss_ref.backward()
    for a, b in zip(out, out_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(one.queue, ref.queue, rtol=1e-4, atol=1e-5)
    for (name, p), r in zip(one.encoder_q.named_parameters(), ref.encoder_q.parameters()):
        torch.testing.assert_close(p.grad, r.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_key_groups_are_a_permutation_of_the_query_groups():
    moco = _moco(groups=2)
    moco.encoder_q, moco.encoder_k = _Recorder(), _Recorder()
    x, y = _views(8)
    x[:, 0, 0, 0] = torch.arange(8.0)
    y[:, 0, 0, 0] = torch.arange(8.0)
    torch.manual_seed(SEED)
    _, k, _ = moco(x, y)
    # one call per encoder with the whole batch; its BN groups are the call's contiguous halves
    (q_rows,), (k_rows,) = moco.encoder_q.calls, moco.encoder_k.calls
    q_groups = [set(c.tolist()) for c in q_rows.chunk(2)]
    k_groups = [set(c.tolist()) for c in k_rows.chunk(2)]
    assert q_groups == [{0, 1, 2, 3}, {4, 5, 6, 7}]
    assert len(k_groups) == 2 and set().union(*k_groups) == set(range(8))
    assert k_groups != q_groups  # SEED draws a permutation that mixes the groups
    # keys come back in the order of the views despite the reassignment
    want = torch.nn.functional.normalize(y.flatten(1)[:, :8], dim=1)
    torch.testing.assert_close(k, want)


def test_frozen_stages_are_frozen_in_the_key_encoder_too():
    """freeze_stages: the key encoder's frozen stages keep their BN statistics (eval mode), as the
    authors' (OpenSelfSup's frozen_stages applies to both encoders)."""
    from fasthpt.hpt import apply_mode

    moco = _moco(groups=2)
    apply_mode(moco, "full", freeze_stages=1)
    before = {k: v.clone() for k, v in moco.encoder_k.state_dict().items() if "running" in k}
    moco(*_views(8))
    after = moco.encoder_k.state_dict()
    frozen = [k for k in before if k.startswith(("backbone.bn1.", "backbone.layer1."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("backbone.layer2."))
    backbone_k = moco.encoder_k.backbone
    assert not backbone_k.bn1.training and not backbone_k.layer1[0].bn1.training and backbone_k.layer2[0].bn1.training


def test_one_group_is_plain_moco():
    a, b = _moco(groups=1), _moco(groups=1)
    x, y = _views()
    torch.manual_seed(SEED)
    qa, ka, _ = a(x, y)
    qb = torch.nn.functional.normalize(b.encoder_q(x), dim=1)
    torch.testing.assert_close(qa, qb)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# One process of a real 2-process run: its contiguous chunk of the batch, shuffle-BN across the
# processes (gloo), DDP's gradient average; rank 0 saves what the test compares.
_RANK_SCRIPT = """
import datetime, os, sys, torch, torch.distributed as dist
from fasthpt.models.backbones import build_backbone
from fasthpt.models.moco import ComposerMoCo, MoCo
rank, world, port, blob = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
torch.set_num_threads(1)
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300))
inp = torch.load(blob + ".in", weights_only=True)
x, y = inp["x"], inp["y"]
moco = MoCo(build_backbone("resnet_tiny"), dim=8, mlp_hidden=16, queue_size=32, momentum=0.9, shuffle_bn=True)
moco.load_state_dict(inp["state"])
moco.train()
n = x.shape[0] // world
torch.manual_seed(inp["seed"])  # rank 0's permutation is broadcast to all
q, k, negatives = moco(x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n])
loss = ComposerMoCo(moco).loss((q, k, negatives), None)
loss.backward()
grads = [p.grad.clone() for p in moco.encoder_q.parameters()]
for g in grads:
    dist.all_reduce(g)
    g /= world
def cat(t):
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.detach().contiguous())
    return torch.cat(parts)
out = {"q": cat(q), "k": cat(k), "loss": cat(loss.detach().view(1)).mean(), "grads": grads,
       "queue": moco.queue.clone()}
if rank == 0:
    torch.save(out, blob + ".out")
dist.barrier()
sys.stdout.flush()
os._exit(0)  # no process-group teardown: gloo's can wait on a peer that has already left
"""


@pytest.mark.timeout(900)
def test_grouped_run_equals_a_real_two_process_run_given_the_same_permutation(tmp_path):
    world, threads = 2, torch.get_num_threads()
    x, y = _views(16, side=32)
    single = _moco(groups=world)
    blob = str(tmp_path / "run")
    # each of the 2 processes holds the same weights with plain BN and the cross-process shuffle
    torch.save({"state": copy.deepcopy(single.state_dict()), "x": x, "y": y, "seed": SEED}, blob + ".in")
    torch.set_num_threads(1)  # the same reduction order as each single-threaded process below
    try:
        torch.manual_seed(SEED)
        q, k, negatives = single(x, y)
        loss = ComposerMoCo(single).loss((q, k, negatives), None)
        loss.backward()
    finally:
        torch.set_num_threads(threads)
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    port = str(_free_port())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(world), port, blob], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(world)]
    try:
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    ref = torch.load(blob + ".out", weights_only=True)
    tol = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(q.detach(), ref["q"], **tol)
    torch.testing.assert_close(k, ref["k"], **tol)
    torch.testing.assert_close(loss.detach(), ref["loss"], **tol)
    torch.testing.assert_close(single.queue, ref["queue"], **tol)
    for g, r in zip((p.grad for p in single.encoder_q.parameters()), ref["grads"]):
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-5)
