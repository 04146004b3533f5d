"""Vmapped SGLD chains against a loop over chains, on the fact transformer (issue 21's must-show:
vmapped chains are >= 5x faster than a loop over chains).

    OMP_NUM_THREADS=1 python benchmarks/any_model_vmap.py --chains 16 --draws 40 --repeats 3

The model is a trained ``facts`` transformer (``TransformerBridge`` in a
:class:`memlens.stacked.StackedModel`, the ``smoke`` preset's shape and data). Both sides run
``memlens.estimate_llc`` with the same step size, draws and thread count:

* vmapped: one call with ``chains=C`` (every chain a copy on the instance axis, one
  ``functional_call`` + ``vmap`` forward and backward per SGLD step);
* loop: ``C`` calls with ``chains=1``, one after another (what a sampler without an instance axis
  does).

The sides alternate within each repeat (same load on both). It prints the median wall time of each
side over ``--repeats``, how loaded the machine was (``benchmarks/capacity.py``), whether both
sides sample the same posterior (λ̂ within the Monte Carlo error) and, last, ``speedup: R.Rx``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from capacity import Capacity

import memlens
from memlens.registry import get_bundle


def trained_model(steps: int):
    bundle = get_bundle("facts")
    preset = bundle.preset("smoke")
    spec = bundle.full_spec({**preset["task"], "T": preset["grid"]["T"][0], "seed": 0})
    model = bundle.build(spec)
    train, _ = bundle.data(spec)
    memlens.train(model, train, steps=steps, lr=1e-2, warmup=10, weight_decay=1e-3, progress=False)
    return model, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chains", type=int, default=16)
    ap.add_argument("--draws", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-steps", type=int, default=200)
    ns = ap.parse_args()
    torch.set_num_threads(ns.threads)
    model, train = trained_model(ns.train_steps)
    # chains start at w* on both sides: a dispersed start differs between one chain (even chains
    # only) and many (odd chains start wider), so λ̂ of short chains would differ for that reason
    kw = dict(draws=ns.draws, step_size=1e-4, disperse=False, progress=False)
    warnings.simplefilter("ignore", RuntimeWarning)  # short chains: health warnings expected
    memlens.estimate_llc(model, train, chains=2, **kw)  # warm up both code paths
    cap = Capacity(ns.threads)

    def vmapped():
        return memlens.estimate_llc(model, train, chains=ns.chains, seed=0, **kw)

    def loop():
        return [
            memlens.estimate_llc(model, train, chains=1, seed=1 + c, **kw) for c in range(ns.chains)
        ]

    times = {"vmapped": [], "loop": []}
    for _ in range(ns.repeats):
        for name, fn in (("vmapped", vmapped), ("loop", loop)):
            t0 = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t0)
            if name == "vmapped":
                v = out
            else:
                lo = out
    tv, tl = statistics.median(times["vmapped"]), statistics.median(times["loop"])
    lam_v = float(v.llc.mean[0, 0])
    lam_l = statistics.mean(float(r.llc.mean[0, 0]) for r in lo)
    se_l = statistics.pstdev(float(r.llc.mean[0, 0]) for r in lo) / ns.chains**0.5
    se_v = float(v.llc.se[0, 0])
    agree = abs(lam_v - lam_l) <= 3 * (se_v**2 + se_l**2) ** 0.5
    print(
        f"fact transformer ({sum(p[0].numel() for p in model.parameters())} parameters), "
        f"T={len(train)}, {ns.chains} chains x {ns.draws} draws, {ns.threads} thread(s)"
    )
    print(cap.report())
    print(f"  vmapped (one call, chains on the instance axis): {tv:.2f} s (median of {ns.repeats})")
    print(
        f"  loop over chains ({ns.chains} calls of 1 chain):     {tl:.2f} s (median of "
        f"{ns.repeats})"
    )
    print(
        f"  λ̂ vmapped {lam_v:.3f} ± {se_v:.3f}, loop {lam_l:.3f} ± {se_l:.3f} "
        f"({'agree' if agree else 'DISAGREE'} within 3 combined standard errors)"
    )
    print(
        f"speedup: {tl / tv:.1f}x vmapped chains vs a loop over {ns.chains} chains "
        f"(median of {ns.repeats}, {ns.threads} thread(s) each side)"
    )


if __name__ == "__main__":
    main()
