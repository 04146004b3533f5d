"""Write ``sweep_v0_1/`` (beside this file) with memlens 0.1, the release before the sweeps split.

    git archive a4bad90 | tar -x -C /tmp/m01
    cd tests/memlens/data && OMP_NUM_THREADS=1 PYTHONPATH=/tmp/m01 python make_sweep_v0_1.py

memlens 0.1 registered models as classes, so this script registers the bottleneck itself (the
installed entry point names today's bundle, which 0.1 lacks).
"""

import warnings

import memlens
from toy_models.bottleneck import Bottleneck

warnings.simplefilter("ignore")
memlens.register_model("bottleneck")(Bottleneck)
rows = memlens.sweep(
    "bottleneck",
    {"T": [3, 8, 20], "seed": [0, 1]},
    task={"n_features": 20, "sparsity": 0.8, "d_hidden": 2, "n_test": 64},
    train={"steps": 40, "lr": 1e-2, "warmup": 4, "weight_decay": 1e-2},
    probes=("dimensionality",),
    out="sweep_v0_1",
    progress=False,
)
print(f"{len(rows)} cells written by memlens {memlens.__version__} from {memlens.__file__}")
