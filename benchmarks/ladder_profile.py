"""Where the 8 x 8 ladder call of benchmarks/llc_vs_canonical_interp.py spends its time.

Times memlens's default ladder call (replica exchange, frozen preconditioner) beside the plain
sampler (``swap_every=0, precondition=False, disperse=False``) and beside the default with the
Euler step (``integrator="euler"``), median of ``--repeats`` warm calls
on one thread, then profiles the default call and prints the share of its time in the SGLD
kernel (which picks its minibatch rows itself), the evaluation-set losses, the Langevin noise and
the swap proposals.

    python benchmarks/ladder_profile.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
import warnings

import torch
from llc_vs_devinterp import trained_workload

import memlens

PARTS = {  # (file suffix, function): what it is
    ("bottleneck_sgld.py", "advance"): "SGLD kernel (steps)",
    ("bottleneck_sgld.py", "losses"): "evaluation-set losses",
    ("random_streams.py", "take"): "Langevin noise (torch generators)",
    ("random_streams.py", "pair_noise"): "Leimkuhler-Matthews noise pairing",
    ("exchange.py", "propose"): "swap proposals",
    ("diagnostics.py", "analyse"): "diagnostics (R-hat, ESS, λ̂)",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, train, kw, temps, _ = trained_workload()
    kw = {**kw, "chains": 8}
    plain = {**kw, "swap_every": 0, "precondition": False, "disperse": False}
    euler = {**kw, "integrator": "euler"}
    warnings.simplefilter("ignore")

    def call(settings, seed):
        t0 = time.perf_counter()
        memlens.temper(model, train, temps, seed=seed, **settings)
        return time.perf_counter() - t0

    call(kw, 99), call(plain, 99), call(euler, 99)  # warm-up (kernel load)
    ts = {"default": [], "plain": [], "euler": []}
    for r in range(args.repeats):  # interleaved, so drift hits all
        ts["default"].append(call(kw, r))
        ts["plain"].append(call(plain, r))
        ts["euler"].append(call(euler, r))
    med = {k: statistics.median(v) for k, v in ts.items()}
    extra = med["default"] / med["plain"] - 1
    pairing = med["default"] / med["euler"] - 1
    print(
        f"8 temps x 8 chains x 200 draws, 1 thread, median of {args.repeats}: default "
        f"{med['default']:.3f} s, plain {med['plain']:.3f} s (swaps + preconditioner: "
        f"{extra:+.0%} per call); default with the Euler step {med['euler']:.3f} s (the "
        f"Leimkuhler-Matthews pairing: {pairing:+.1%})"
    )
    prof = cProfile.Profile()
    prof.enable()
    for r in range(args.repeats):
        memlens.temper(model, train, temps, seed=r, **kw)
    prof.disable()
    stats = pstats.Stats(prof).stats
    total = max(v[3] for k, v in stats.items() if k[2] == "temper")
    print("share of the default call (cProfile, cumulative):")
    for (suffix, fn), what in PARTS.items():
        cum = sum(v[3] for k, v in stats.items() if k[0].endswith(suffix) and k[2] == fn)
        print(f"  {what:45s} {cum / total:6.1%}")


if __name__ == "__main__":
    main()
