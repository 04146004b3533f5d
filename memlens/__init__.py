"""memlens: hookable toy models and probes for studying how networks memorise and generalise.

>>> import memlens as ml
>>> from toy_models import Bottleneck
>>> data = ml.data.SparseFeatures(n_features=200, sparsity=0.95, normalize=True)
>>> train = data.sample(T=8, n_instances=4, seed=0)  # [T, inst, feat]
>>> model = Bottleneck(n_features=200, d_hidden=2, n_instances=4)
>>> run = ml.train(model, train, steps=2_000, lr=1e-2, weight_decay=1e-2, warmup=100)

The core never imports the plugin packages (``toy_models``, ``probes``): it finds them through
the registry (:mod:`memlens.registry`), as it finds a third party's.
"""

import importlib
from typing import TYPE_CHECKING, Any

# Public names are imported lazily (PEP 562): `import memlens` and `memlens --help` stay fast,
# and torch / transformer_lens load on first use of a model, a probe or a job.
_LAZY = {
    "data": ("memlens.data", None),
    "io": ("memlens.io", None),
    "registry": ("memlens.registry", None),
    "ModelBundle": ("memlens.bundle", "ModelBundle"),
    "Preset": ("memlens.bundle", "Preset"),
    "Batch": ("memlens.data", "Batch"),
    "SparseFeatures": ("memlens.data", "SparseFeatures"),
    "Circuits": ("memlens.hooked", "Circuits"),
    "HookedToyModel": ("memlens.hooked", "HookedToyModel"),
    "StackedModel": ("memlens.stacked", "StackedModel"),
    "ToyConfig": ("memlens.hooked", "ToyConfig"),
    "load": ("memlens.persistence", "load"),
    "load_with_recipes": ("memlens.persistence", "load_with_recipes"),
    "save": ("memlens.persistence", "save"),
    "Probe": ("memlens.probe", "Probe"),
    "ProbeResult": ("memlens.probe", "ProbeResult"),
    "probing": ("memlens.probe", "probing"),
    "SweepSection": ("memlens.probe", "SweepSection"),
    "sweeps": ("memlens.sweeps", None),
    "bundle_of": ("memlens.registry", "bundle_of"),
    "get_bundle": ("memlens.registry", "get_bundle"),
    "get_model": ("memlens.registry", "get_model"),
    "get_probe": ("memlens.registry", "get_probe"),
    "list_models": ("memlens.registry", "list_models"),
    "list_probes": ("memlens.registry", "list_probes"),
    "register_model": ("memlens.registry", "register_model"),
    "register_probe": ("memlens.registry", "register_probe"),
    "sweep": ("memlens.sweeps", "sweep"),
    "SGLDConfig": ("memlens.sampling", "SGLDConfig"),
    "Tempering": ("memlens.sampling", "Tempering"),
    "calibrate": ("memlens.sampling", "calibrate"),
    "estimate_llc": ("memlens.sampling", "estimate_llc"),
    "temper": ("memlens.sampling", "temper"),
    "TrainResult": ("memlens.training", "TrainResult"),
    "TrainConfig": ("memlens.training_config", "TrainConfig"),
    "evaluate": ("memlens.training", "evaluate"),
    "sparse_activations": ("memlens.training", "sparse_activations"),
    "train": ("memlens.training", "train"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'memlens' has no attribute {name!r}") from None
    mod = importlib.import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from memlens import data, io, sweeps
    from memlens.bundle import ModelBundle, Preset
    from memlens.data import Batch, SparseFeatures
    from memlens.hooked import Circuits, HookedToyModel, ToyConfig
    from memlens.persistence import load, load_with_recipes, save
    from memlens.probe import Probe, ProbeResult, SweepSection, probing
    from memlens.registry import (
        bundle_of,
        get_bundle,
        get_model,
        get_probe,
        list_models,
        list_probes,
        register_model,
        register_probe,
    )
    from memlens.sampling import SGLDConfig, Tempering, calibrate, estimate_llc, temper
    from memlens.stacked import StackedModel
    from memlens.sweeps import sweep
    from memlens.training import TrainResult, evaluate, sparse_activations, train
    from memlens.training_config import TrainConfig

__version__ = "0.1.0"

__all__ = [
    "temper",
    "estimate_llc",
    "calibrate",
    "Tempering",
    "SGLDConfig",
    "Batch",
    "Circuits",
    "ModelBundle",
    "Preset",
    "bundle_of",
    "get_bundle",
    "load_with_recipes",
    "HookedToyModel",
    "StackedModel",
    "Probe",
    "ProbeResult",
    "SparseFeatures",
    "ToyConfig",
    "TrainResult",
    "TrainConfig",
    "data",
    "evaluate",
    "get_model",
    "get_probe",
    "io",
    "list_models",
    "list_probes",
    "load",
    "save",
    "probing",
    "SweepSection",
    "sweeps",
    "register_model",
    "register_probe",
    "sweep",
    "train",
    "sparse_activations",
]
