"""Every point of the experiment is evaluated the same way: kNN with (k, t) chosen on val and a
linear probe on cached features with its checkpoint chosen on val, both reported on test.

The settings are the preset's (small-scale, named in each result as ``demo-<preset>``), not the
paper's 5,000-iteration augmented probe: the experiment evaluates dozens of backbones.

An evaluation is stored on disk (``store``), keyed by everything that changes its numbers: the
backbone file's sha256, the data (its generator fingerprint, splits and per-band statistics), the
evaluation settings, loader backend and device type. A later call of the demo (a second GPU run
that resumes from the first one's runs) reads it back instead of evaluating the backbone again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fasthpt.experiment.preset import DemoConfig, to_yaml


def evaluate(backbone: str, data: str, cfg: DemoConfig, cache: dict, store: Path | None = None) -> dict:
    """{"val": {"knn", "linear"}, "test": {"knn", "linear"}, "knn_k", "knn_t"} for one backbone file."""
    key = (backbone, data)
    if key in cache:
        return cache[key]
    path = _stored(backbone, data, cfg, store)
    if path is not None and path.is_file():
        cache[key] = json.loads(path.read_text())
        return cache[key]
    cache[key] = _evaluate(backbone, data, cfg)
    if path is not None:
        from fasthpt.fileio import atomic_write_json

        atomic_write_json(path, cache[key])
    return cache[key]


def _evaluate(backbone: str, data: str, cfg: DemoConfig) -> dict:
    from fasthpt.eval import run_knn, run_linear

    p, e = cfg.pretrain, cfg.eval
    common = dict(res=p.res, batch_size=e.batch_size, workers=p.workers, backend=_backend(cfg), progress=False,
                  quiet=True, settings_name=f"demo-{cfg.name}", trust=cfg.base.trust_checkpoint)
    knn = run_knn(backbone, data, k=list(e.knn_k), t=list(e.knn_t), **common)
    lin = run_linear(backbone, data, iters=e.linear_iters, lr=e.linear_lr,
                     eval_every=max(1, e.linear_iters // 10), precomputed=True,
                     **{**common, "batch_size": e.linear_batch})
    return {"val": {"knn": knn["val_top1"], "linear": lin["val_top1"]},
            "test": {"knn": knn["top1"], "linear": lin["top1"]}, "knn_k": knn["k"], "knn_t": knn["t"]}


def _backend(cfg: DemoConfig) -> str:
    return cfg.eval.backend or cfg.pretrain.backend


def _stored(backbone: str, data: str, cfg: DemoConfig, store: Path | None) -> Path | None:
    """Where the evaluation of ``backbone`` on ``data`` with ``cfg``'s settings is kept (None: nowhere)."""
    if store is None:
        return None
    from fasthpt.device import resolve_device
    from fasthpt.experiment.assets import sha256
    from fasthpt.manifest import MANIFEST

    manifest = json.loads((Path(data) / MANIFEST).read_text())
    identity = {
        "backbone": sha256(Path(backbone)),
        # what the data is, not when or how fast it was written (timing, created, workers)
        "data": {k: manifest.get(k) for k in ("fingerprint", "splits", "mean", "std", "storage", "bands", "dtype")},
        "eval": to_yaml(cfg.eval), "res": cfg.pretrain.res, "backend": _backend(cfg),
        "device": resolve_device().type, "trust": cfg.base.trust_checkpoint,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return Path(store) / f"{digest[:24]}.json"
