"""fasthpt: fast Hierarchical PreTraining (Reed et al., WACV 2022).

MoCo-v2 self-supervised pretraining continued from an existing model (base -> source -> target),
with offline FFCV / WebDataset conversion, GPU/CPU DALI augmentation and a Composer training loop.
"""

__version__ = "0.1.0"
