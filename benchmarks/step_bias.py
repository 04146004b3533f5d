"""The step's bias on the LLC benchmark's model: λ̂ at t = 1 against ε, Leimkuhler-Matthews
(memlens's default) beside Euler-Maruyama (the peers' step, ``integrator="euler"``), same seeds.

The model, data and nβ are benchmarks/llc_vs_devinterp.py's (TMS 20 -> 5, n = 10^4, minibatch 256);
each ε runs 8 chains x 400 draws with 100 burn-in draws and ``thin`` chosen so that every ε covers
the same physical time (ε x thin = 3e-3), on one thread. As ε -> 0 both steps go to the same λ; the
gap at the benchmark's ε = 3e-3 is each step's bias there.

    python benchmarks/step_bias.py
"""

from __future__ import annotations

import time
import warnings

import torch
from llc_vs_devinterp import trained_workload

import memlens

STEPS = ((3e-3, 1), (1e-3, 3), (3e-4, 10))  # (ε, SGLD steps per draw)


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    model, train, kw, _, _ = trained_workload()
    t0 = time.perf_counter()
    print("λ̂ at t = 1 (± standard error), 8 chains x 400 draws, burn-in 100")
    print(f"{'ε':>8s} {'Leimkuhler-Matthews':>22s} {'Euler-Maruyama':>18s}")
    for eps, thin in STEPS:
        cells = []
        for integrator in ("lm", "euler"):
            res = memlens.estimate_llc(model, train, **{**kw, "step_size": eps, "chains": 8,
                                       "draws": 400, "burnin": 100, "thin": thin,
                                       "integrator": integrator})  # fmt: skip
            cells.append(f"{float(res.llc.mean[0, 0]):.2f} ± {float(res.llc.se[0, 0]):.2f}")
        print(f"{eps:8.0e} {cells[0]:>22s} {cells[1]:>18s}")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
