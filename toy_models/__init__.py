"""The three toy settings where memorisation lives in a transformer, as hookable models.

Each is a :class:`memlens.HookedToyModel` (a TransformerLens ``HookedRootModule``) with an
instance axis, shipped with its data recipe (a ``Task``) and registered as a
``memlens.ModelBundle`` through the ``memlens.models`` entry-point group.
"""

from toy_models.bottleneck import Bottleneck, BottleneckConfig, BottleneckTask
from toy_models.mlp import MLPBlock, MLPConfig, MLPTask
from toy_models.unembed import Unembed, UnembedConfig, UnembedTask

__all__ = [
    "Bottleneck",
    "BottleneckConfig",
    "BottleneckTask",
    "MLPBlock",
    "MLPConfig",
    "MLPTask",
    "Unembed",
    "UnembedConfig",
    "UnembedTask",
]
