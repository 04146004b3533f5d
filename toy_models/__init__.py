"""The three toy settings where memorisation lives in a transformer, as hookable models.

Each is a :class:`memlens.HookedToyModel` (a TransformerLens ``HookedRootModule``) with an
instance axis. They are registered through the ``memlens.models`` entry-point group.
"""

from toy_models.bottleneck import Bottleneck, BottleneckConfig
from toy_models.mlp import MLPBlock, MLPConfig
from toy_models.unembed import Unembed, UnembedConfig

__all__ = ["Bottleneck", "BottleneckConfig", "MLPBlock", "MLPConfig", "Unembed", "UnembedConfig"]
