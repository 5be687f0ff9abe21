"""Every point of the experiment is evaluated the same way: kNN with (k, t) chosen on val and a
linear probe on cached features with its checkpoint chosen on val, both reported on test.

The settings are the preset's (small-scale, named in each result as ``demo-<preset>``), not the
paper's 5,000-iteration augmented probe: the experiment evaluates dozens of backbones.
"""

from __future__ import annotations

from fasthpt.experiment.preset import DemoConfig


def evaluate(backbone: str, data: str, cfg: DemoConfig, cache: dict) -> dict:
    """{"val": {"knn", "linear"}, "test": {"knn", "linear"}, "knn_k", "knn_t"} for one backbone file."""
    from fasthpt.eval import run_knn, run_linear

    key = (backbone, data)
    if key in cache:
        return cache[key]
    p, e = cfg.pretrain, cfg.eval
    common = dict(res=p.res, batch_size=e.batch_size, workers=p.workers, backend=p.backend, progress=False,
                  quiet=True, settings_name=f"demo-{cfg.name}", trust=cfg.base.trust_checkpoint)
    knn = run_knn(backbone, data, k=list(e.knn_k), t=list(e.knn_t), **common)
    lin = run_linear(backbone, data, iters=e.linear_iters, lr=e.linear_lr,
                     eval_every=max(1, e.linear_iters // 10), precomputed=True,
                     **{**common, "batch_size": e.linear_batch})
    cache[key] = {"val": {"knn": knn["val_top1"], "linear": lin["val_top1"]},
                  "test": {"knn": knn["top1"], "linear": lin["top1"]}, "knn_k": knn["k"], "knn_t": knn["t"]}
    return cache[key]
