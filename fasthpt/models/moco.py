"""MoCo-v2's state (He et al. 2020; Chen et al. 2020) and its thin Composer wrapper.

The loss is the pure function ``fasthpt.losses.infonce``; this module keeps what MoCo carries
between steps: the query and key encoders, the momentum (EMA) update, the queue of negatives and
its pointer, and shuffle-BN for the key encoder. Cross-process operations take the process group
from torch.distributed and are no-ops on one process, so everything runs in a CPU unit test. On
one process, ``bn_groups`` emulates the authors' several devices (4 GPUs x 64 images): each encoder
normalises each group separately (GroupedBatchNorm2d: one forward of the whole batch, statistics
per group), and the key encoder's groups are a random reassignment.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from composer.models import ComposerModel
from torch import nn

from fasthpt.losses import infonce


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (N x ...) from every process in rank order; ``x`` itself on one process."""
    if _world() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(_world())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


@torch.no_grad()
def batch_shuffle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shuffle-BN (MoCo, sec. 3.3): give each process a random slice of the global batch so the
    key encoder's BN statistics do not come from the same images as the query's. Returns (this
    process' shuffled slice, the permutation to undo it); (x, None) on one process."""
    if _world() == 1:
        return x, None
    full = gather(x)
    perm = torch.randperm(full.shape[0], device=x.device)
    dist.broadcast(perm, src=0)  # every process must use rank 0's permutation
    n, rank = x.shape[0], dist.get_rank()
    return full[perm[rank * n : (rank + 1) * n]], perm


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    """Undo ``batch_shuffle``: this process' rows of the key output, in its original order."""
    if perm is None:
        return x
    full = gather(x)
    n, rank = x.shape[0], dist.get_rank()
    inverse = torch.argsort(perm)
    return full[inverse[rank * n : (rank + 1) * n]]


@torch.no_grad()
def replicas_in_sync(tensors: list[torch.Tensor]) -> bool:
    """True when every process holds bit-identical ``tensors`` (a cheap end-of-run check that the
    key encoders and queues did not drift apart across processes)."""
    if _world() == 1:
        return True
    # Two float64 moments per tensor: a differing element changes them barring exact cancellation.
    moments = []
    for t in tensors:
        t = t.detach().double().flatten()
        moments += [t.sum(), (t * torch.arange(t.numel(), device=t.device, dtype=torch.float64).sin()).sum()]
    everyone = gather(torch.stack(moments).unsqueeze(0))
    return bool((everyone == everyone[0]).all())


def mlp_head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """MoCo-v2's projection: Linear(D, hidden) - ReLU - Linear(hidden, dim) (2048-2048-128 for R-50),
    initialised as the authors' neck (OpenSelfSup NonLinearNeckV1 under MOCO.init_weights:
    ``init_linear='kaiming'``, i.e. kaiming normal, fan_in, relu gain, bias 0)."""
    head = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))
    for m in head:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return head


class GroupedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in train mode, normalises each of ``groups`` equal chunks of the batch with
    that chunk's own statistics: what ``groups`` devices each holding one chunk compute (MoCo's
    per-GPU BN), inside ONE forward of the whole batch, so every convolution runs once on the full
    batch. Running statistics are updated once per step, from the first chunk: one device's view,
    which is what the authors' runs keep (DDP broadcasts rank 0's buffers). Eval mode, or
    ``groups`` 1: plain BatchNorm2d. Parameters and buffers are BatchNorm2d's (same state_dict)."""

    groups: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.groups <= 1:
            return super().forward(x)
        if x.shape[0] % self.groups:
            raise ValueError(f"batch of {x.shape[0]} does not split into {self.groups} equal BN groups")
        self._check_input_dim(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as nn.BatchNorm
                momentum = 1.0 / float(self.num_batches_tracked)
        out = [F.batch_norm(chunk, self.running_mean if i == 0 else None, self.running_var if i == 0 else None,
                            self.weight, self.bias, True, momentum, self.eps)
               for i, chunk in enumerate(x.chunk(self.groups))]
        return torch.cat(out)


def set_bn_groups(module: nn.Module, groups: int) -> None:
    """Make every BatchNorm2d of ``module`` normalise ``groups`` chunks of the batch separately in
    train mode (GroupedBatchNorm2d; its state_dict keys and values are unchanged)."""
    for m in module.modules():
        if type(m) is nn.BatchNorm2d or isinstance(m, GroupedBatchNorm2d):
            m.__class__ = GroupedBatchNorm2d
            m.groups = groups


class Encoder(nn.Module):
    """Backbone (pooled features) followed by the projection head."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class MoCo(nn.Module):
    """Query / key encoders, momentum update and the queue.

    forward(view_q N x 3 x H x W, view_k) -> (q N x dim, k N x dim, negatives K x dim): q and k
    L2-normalised, k without gradient, negatives a snapshot of the queue taken before this
    batch's keys (all processes' keys) are enqueued, as in MoCo's reference code.
    """

    def __init__(self, backbone: nn.Module, dim: int = 128, mlp_hidden: int = 0, queue_size: int = 65536,
                 momentum: float = 0.999, temperature: float = 0.2, shuffle_bn: bool = True, bn_groups: int = 1):
        super().__init__()
        width = backbone.num_features
        if bn_groups < 1:
            raise ValueError(f"bn_groups must be >= 1, got {bn_groups}")
        set_bn_groups(backbone, bn_groups)
        self.encoder_q = Encoder(backbone, mlp_head(width, mlp_hidden or width, dim))
        self.encoder_k = copy.deepcopy(self.encoder_q)  # MoCo: param_k.copy_(param_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.momentum, self.temperature, self.shuffle_bn = momentum, temperature, shuffle_bn
        self.bn_groups = bn_groups
        # Random unit vectors as the first negatives (MoCo's reference initialisation).
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.frozen_norms: list[str] = []  # module names kept in eval mode (hpt.freeze_stages)

    @property
    def backbone(self) -> nn.Module:
        """The query backbone: what HPT hands on (backbone.pt) and what the kNN monitor probes."""
        return self.encoder_q.backbone

    def train(self, mode: bool = True) -> MoCo:
        super().train(mode)
        for encoder in (self.encoder_q, self.encoder_k):  # the key encoder's stages are frozen alike
            modules = dict(encoder.named_modules())
            for name in self.frozen_norms:  # frozen stages keep their BN statistics (OpenSelfSup)
                modules[name].eval()
        return self

    @torch.no_grad()
    def momentum_update(self) -> None:
        """param_k <- m * param_k + (1 - m) * param_q (MoCo eq. 2); buffers are not averaged."""
        pk = list(self.encoder_k.parameters())
        pq = [p.detach() for p in self.encoder_q.parameters()]
        torch._foreach_mul_(pk, self.momentum)
        torch._foreach_add_(pk, pq, alpha=1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (M x dim, all processes' keys) at the pointer, wrapping around the end."""
        size = self.queue.shape[0]
        if keys.shape[0] > size:  # only the newest ``size`` keys can be kept
            keys = keys[-size:]
        # pointer arithmetic on the device: reading queue_ptr on the host would wait for the step's
        # forward to finish on a GPU (a host sync every step)
        idx = (torch.arange(keys.shape[0], device=keys.device) + self.queue_ptr) % size
        self.queue.index_copy_(0, idx, keys.to(self.queue.dtype))
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)

    @torch.no_grad()
    def keys(self, view_k: torch.Tensor) -> torch.Tensor:
        """Key embeddings in the order of ``view_k``. Shuffle-BN: across processes, each process
        encodes a random slice of the global batch; within a process split into ``bn_groups``, the
        samples are assigned to groups by a random permutation. Either way the key encoder's BN
        groups are not the query encoder's, so a batch cannot use BN statistics to find its
        positives (MoCo, sec. 3.3)."""
        perm = None
        if self.shuffle_bn:
            view_k, perm = batch_shuffle(view_k)
        local = None
        if self.training and self.bn_groups > 1:
            local = torch.randperm(view_k.shape[0], device=view_k.device)
            view_k = view_k[local]
        k = F.normalize(self.encoder_k(view_k), dim=1)
        if local is not None:
            k = k[torch.argsort(local)]
        return batch_unshuffle(k, perm)

    def forward(self, view_q: torch.Tensor, view_k: torch.Tensor):
        q = F.normalize(self.encoder_q(view_q), dim=1)
        if self.training:
            self.momentum_update()
        k = self.keys(view_k)
        negatives = self.queue.clone()
        if self.training:
            self.enqueue(gather(k))
        return q, k, negatives


class ComposerMoCo(ComposerModel):
    """Composer's contract: forward(batch) -> outputs, loss(outputs, batch) -> scalar."""

    def __init__(self, moco: MoCo):
        super().__init__()
        self.moco = moco

    def forward(self, batch):
        view_q, view_k = batch[0], batch[1]
        return self.moco(view_q, view_k)

    def loss(self, outputs, batch, *args, **kwargs) -> torch.Tensor:
        q, k, negatives = outputs
        return infonce(q, k, negatives, self.moco.temperature)

    def get_metrics(self, is_train: bool = False) -> dict:
        return {}
