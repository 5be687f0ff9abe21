"""Shuffle-BN on one process: BN statistics per group in both encoders, a random reassignment of
the key encoder's groups, and the same numbers as a real G-process (gloo) run."""

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fasthpt.models.backbones import build_backbone
from fasthpt.models.moco import ComposerMoCo, MoCo, grouped_forward

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


def test_grouped_forward_normalises_each_group_with_its_own_statistics():
    bn = torch.nn.BatchNorm1d(3).train()
    x = torch.cat([torch.randn(4, 3), torch.randn(4, 3) * 10 + 5])
    out = grouped_forward(bn, x, 2)
    for chunk in out.chunk(2):  # each group is standardised on its own
        torch.testing.assert_close(chunk.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    assert not torch.allclose(out, torch.nn.BatchNorm1d(3).train()(x), atol=1e-3)
    with pytest.raises(ValueError):
        grouped_forward(bn, torch.randn(7, 3), 2)


def test_key_groups_are_a_permutation_of_the_query_groups():
    moco = _moco(groups=2)
    moco.encoder_q, moco.encoder_k = _Recorder(), _Recorder()
    x, y = _views(8)
    x[:, 0, 0, 0] = torch.arange(8.0)
    y[:, 0, 0, 0] = torch.arange(8.0)
    torch.manual_seed(SEED)
    _, k, _ = moco(x, y)
    q_groups = [set(c.tolist()) for c in moco.encoder_q.calls]
    k_groups = [set(c.tolist()) for c in moco.encoder_k.calls]
    assert q_groups == [{0, 1, 2, 3}, {4, 5, 6, 7}]
    assert len(k_groups) == 2 and set().union(*k_groups) == set(range(8))
    assert k_groups != q_groups  # SEED draws a permutation that mixes the groups
    # keys come back in the order of the views despite the reassignment
    want = torch.nn.functional.normalize(y.flatten(1)[:, :8], dim=1)
    torch.testing.assert_close(k, want)


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
