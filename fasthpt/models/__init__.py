"""Models: ResNet backbones and base-checkpoint import (``backbones``, ``checkpoint_formats``) and
MoCo-v2's state plus its Composer wrapper (``moco``). The loss itself is ``fasthpt.losses``."""
