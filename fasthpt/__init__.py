"""fasthpt: fast Hierarchical PreTraining (Reed et al., WACV 2022).

MoCo-v2 self-supervised pretraining continued from an existing model (base -> source -> target),
with offline FFCV / WebDataset conversion, GPU/CPU DALI augmentation and a Composer training loop.

Dependencies point one way. The core (fasthpt.errors, fasthpt.fileio, fasthpt.manifest) imports
nothing else of the project; dataprep, the conversion stage, builds on it. The loaders
(fasthpt.data), models, training and evaluation never import dataprep: they read what it wrote
through fasthpt.manifest. Only the commands that run both stages do (fasthpt.cli, fasthpt.embed
with fasthpt.image_folder, fasthpt.experiment, fasthpt.demo). tests/test_imports.py checks it.
"""

__version__ = "0.1.0"
