"""Evaluation protocols: kNN, linear probe, K-label fine-tuning; one JSON result per run.

    run_knn(backbone, data, **opts) -> dict
    run_linear(backbone, data, **opts) -> dict
    run_finetune(backbone, data, labels=K, **opts) -> dict
    run_seeds(run_x, backbone, data, seed=S, seeds=N, **opts) -> ([dict per seed], summary dict | None)

``backbone`` is a checkpoint path, ``random``, or an ``nn.Module`` (images -> N x D features).
Each protocol selects on val and reports test (``top1``); defaults are the paper's settings.
Imported lazily (PEP 562) so that the training kNN monitor's ``import fasthpt.eval.knn`` pulls in
nothing else.
"""

_API = {
    "run_knn": "fasthpt.eval.knn",
    "run_linear": "fasthpt.eval.linear",
    "run_finetune": "fasthpt.eval.finetune",
    "run_seeds": "fasthpt.eval.seeds",
}

__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'fasthpt.eval' has no attribute {name!r}")
