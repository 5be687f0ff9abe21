"""Self-supervised losses as pure functions: tensors in, scalar out, no state."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, t: float) -> torch.Tensor:
    """MoCo's InfoNCE loss (He et al. 2020, eq. 1; MoCo-v2 t = 0.2).

    q: N x D query embeddings, k: N x D positive keys, queue: K x D negatives; all expected
    L2-normalised (cosine similarities). For each row i the logits are
    [q_i . k_i, q_i . queue_0, ..., q_i . queue_{K-1}] / t and the target class is 0 (the
    positive), so the loss is the mean cross-entropy over the N rows. Gradients flow into ``q``
    only when ``k`` and ``queue`` are detached (as MoCo's key encoder output is).
    Returns a 0-dim tensor.
    """
    if q.shape != k.shape or q.dim() != 2 or queue.dim() != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"infonce: q {tuple(q.shape)}, k {tuple(k.shape)}, queue {tuple(queue.shape)}")
    # float32 (or wider) logits even under bf16 autocast: with t = 0.2 a logit is up to 5, and
    # bf16's 8-bit mantissa would blur neighbouring negatives by ~0.02.
    # bf16's 8-bit mantissa would blur neighbouring negatives by ~0.02. Autocast would recast
    # the matmul to bf16 whatever its inputs, hence the disabled region.
    dtype = torch.promote_types(q.dtype, torch.float32)
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, queue = q.to(dtype), k.to(dtype), queue.to(dtype)
        pos = (q * k).sum(dim=1, keepdim=True)  # N x 1
        neg = q @ queue.T  # N x K
        logits = torch.cat([pos, neg], dim=1) / t
        target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, target)
