"""Resumable sweeps over grids (T, seed, width, sparsity, ...) packed into model instances.

    rows = memlens.sweep(name, {"T": [10, 100, 1000], "seed": [0, 1, 2]},   # name: memlens list
                         task={"n_features": 1000, "sparsity": 0.99},
                         train={"steps": 4000, "lr": 1e-2, "warmup": 200, "weight_decay": 1e-2},
                         out="runs/dd")
    memlens.sweeps.report("runs/dd")            # figures and summary.md

Every *cell* of the grid is one model trained on its own data. Cells whose models have the same
shapes and optimiser settings are packed as instances of one model and trained in one loop; each
instance is initialised and fed exactly as the cell would be alone (the bundle's ``build(spec)``
and ``data(spec)``), so a packed cell equals the cell trained alone up to float rounding. Data
sets of different sizes are padded to the group's largest T and masked, within ``MAX_WASTE``.

Modules, one job each:

* :mod:`~memlens.sweeps.grid`: grid normalisation, cells, checks of every cell, the packing plan;
* :mod:`~memlens.sweeps.cells`: a group's work (pack, train, probe) and reading a cell back;
* :mod:`~memlens.sweeps.run`: run and resume;
* :mod:`~memlens.sweeps.backends`: where groups run (local, Ray) and the failure model;
* :mod:`~memlens.sweeps.store`: the folder as a small database (lock, appends, recovery);
* :mod:`~memlens.sweeps.view`: a sweep folder read once, for its report;
* :mod:`~memlens.sweeps.figures`, :mod:`~memlens.sweeps.geometry`, :mod:`~memlens.sweeps.phase`,
  :mod:`~memlens.sweeps.reporting`: the sweep's figures and ``summary.md``.
"""

from memlens.sweeps.backends import BACKENDS, Backend, LocalBackend, make_backend
from memlens.sweeps.cells import GroupJob, GroupResult, cell_data, load_cell, run_group
from memlens.sweeps.grid import MAX_WASTE, TRAIN_DEFAULTS, TRAIN_KEYS, normalise, plan_groups
from memlens.sweeps.reporting import report
from memlens.sweeps.run import add_probes, default_probes, sweep
from memlens.sweeps.store import StoreWarning, SweepBusy, SweepStore, read_results

__all__ = [
    "sweep",
    "report",
    "read_results",
    "add_probes",
    "default_probes",
    "load_cell",
    "cell_data",
    "normalise",
    "plan_groups",
    "run_group",
    "GroupJob",
    "GroupResult",
    "Backend",
    "LocalBackend",
    "BACKENDS",
    "make_backend",
    "SweepStore",
    "SweepBusy",
    "StoreWarning",
    "MAX_WASTE",
    "TRAIN_KEYS",
    "TRAIN_DEFAULTS",
]
