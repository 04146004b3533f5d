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

from memlens import data, io
from memlens.data import Batch, SparseFeatures
from memlens.hooked import Circuits, HookedToyModel, ToyConfig, load
from memlens.probe import Probe, ProbeResult, probing
from memlens.registry import (
    get_model,
    get_probe,
    list_models,
    list_probes,
    register_model,
    register_probe,
)
from memlens.sampling import SGLDConfig, Tempering, calibrate, estimate_llc, temper
from memlens.sweep import sweep  # the function; the module is sys.modules['memlens.sweep']
from memlens.train import TrainResult, evaluate, sparse_activations, train

__version__ = "0.1.0"

__all__ = [
    "temper",
    "estimate_llc",
    "calibrate",
    "Tempering",
    "SGLDConfig",
    "Batch",
    "Circuits",
    "HookedToyModel",
    "Probe",
    "ProbeResult",
    "SparseFeatures",
    "ToyConfig",
    "TrainResult",
    "data",
    "evaluate",
    "get_model",
    "get_probe",
    "io",
    "list_models",
    "list_probes",
    "load",
    "probing",
    "register_model",
    "register_probe",
    "sweep",
    "train",
    "sparse_activations",
]
