"""Packed sweep vs each cell trained as its own model, on a 24-cell smoke grid.

    python benchmarks/sweep_packing.py [--repeats 3]

Both arms train the same 24 cells (bottleneck smoke preset: n=40 features, m=2, T in
{3, 5, 8, 13, 21, 34} x 4 seeds, full batch, 200 AdamW steps) with the same data and
initialisation; probes are off so only training is timed. Prints the median wall time of each
arm over the repeats and the ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

from capacity import Capacity

import memlens
from memlens import sweeps
from memlens.registry import get_bundle
from memlens.sweeps.grid import make_cells
from memlens.training import train

B = get_bundle("bottleneck")
GRID = {"T": [3, 5, 8, 13, 21, 34], "seed": [0, 1, 2, 3]}
TASK = {"n_features": 40, "sparsity": 0.9, "d_hidden": 2, "n_test": 256}
TRAIN = {"steps": 200, "lr": 1e-2, "warmup": 10, "weight_decay": 1e-2}


def packed() -> float:
    out = tempfile.mkdtemp()
    try:
        t0 = time.perf_counter()
        rows = memlens.sweep(
            "bottleneck", GRID, task=TASK, train=TRAIN, probes=(), out=out, progress=False
        )
        assert len(rows) == 24
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(out)


def separate() -> float:
    cells = make_cells(*sweeps.normalise(B, GRID, TASK, TRAIN))
    assert len(cells) == 24
    t0 = time.perf_counter()
    for c in cells:
        model = B.build(c["spec"])
        tr_set, te_set = B.data(c["spec"])
        train(model, tr_set, test=te_set, progress=False, **TRAIN)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cap = Capacity()
    packed()  # warm-up (imports, allocator)
    a, b = [], []
    for _ in range(args.repeats):
        a.append(packed())
        b.append(separate())
    ma, mb = statistics.median(a), statistics.median(b)
    groups = sweeps.plan_groups(B, make_cells(*sweeps.normalise(B, GRID, TASK, TRAIN)))
    print(
        f"24 cells -> {len(groups)} packed groups; padding waste "
        f"{sum(x['padded'] for x in groups) / sum(x['useful'] for x in groups):.2f}x"
    )
    print(f"{'arm':32s} {'median s':>9s}   runs")
    print(f"{'packed sweep (memlens.sweep)':32s} {ma:9.2f}   {[round(x, 2) for x in a]}")
    print(f"{'each cell its own model':32s} {mb:9.2f}   {[round(x, 2) for x in b]}")
    print(cap.report())
    print(f"speed-up: {mb / ma:.1f}x (target >= 5x)")


if __name__ == "__main__":
    main()
