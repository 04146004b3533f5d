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

It prints the median wall time of each side over ``--repeats`` and their ratio, and checks that
both sides sample the same posterior (λ̂ agrees within the Monte Carlo error).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

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
    kw = dict(draws=ns.draws, step_size=1e-4, progress=False)
    warnings.simplefilter("ignore", RuntimeWarning)  # short chains: health warnings expected
    memlens.estimate_llc(model, train, chains=2, **kw)  # warm up both code paths

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
    print(
        f"fact transformer ({sum(p[0].numel() for p in model.parameters())} parameters), "
        f"T={len(train)}, {ns.chains} chains x {ns.draws} draws, {ns.threads} thread(s)"
    )
    print(f"  vmapped (one call, chains on the instance axis): {tv:.2f} s (median of {ns.repeats})")
    print(f"  loop over chains ({ns.chains} calls of 1 chain):     {tl:.2f} s")
    print(f"  ratio loop / vmapped: {tl / tv:.1f}x")
    print(f"  λ̂ vmapped {lam_v:.3f} ± {float(v.llc.se[0, 0]):.3f}, loop mean {lam_l:.3f}")


if __name__ == "__main__":
    main()
