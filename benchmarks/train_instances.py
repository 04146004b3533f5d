"""Vectorised instances vs a Python loop of single-instance models, side by side in one run.

Trains ``--instances`` bottleneck instances (n features, m hidden, T full-batch training points
each) in ONE model with memlens.train, and the same cells as a loop of single-instance models with
the same trainer. Prints seconds per run and the ratio, as the median of ``--repeats`` repeats.

    python benchmarks/train_instances.py                 # the issue's setting: 32 x (n=1000, m=2,
                                                         # T=1000), 2,000 full-batch steps
    python benchmarks/train_instances.py --steps 100     # same per-step ratio, ~20x faster

The per-step cost of both arms is constant after the first step, so the ratio does not depend on
--steps. A second row runs a small setting (n=100, T=100) where per-step overhead, rather than
arithmetic, dominates.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import memlens as ml
from toy_models import Bottleneck


def run(n: int, m: int, T: int, instances: int, steps: int, repeats: int) -> dict:
    data = ml.SparseFeatures(n, 0.99, normalize=True)
    x = data.sample(T, instances, seed=0)
    singles = [x[:, i : i + 1].contiguous() for i in range(instances)]
    kw = dict(steps=steps, lr=1e-3, weight_decay=1e-2, warmup=min(100, steps // 10), progress=False)
    vec_t, loop_t = [], []
    for r in range(repeats):
        model = Bottleneck(n, m, n_instances=instances, seed=r)
        t0 = time.perf_counter()
        ml.train(model, x, **kw)
        vec_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(instances):
            single = Bottleneck(n, m, n_instances=1, seed=r)
            ml.train(single, singles[i], **kw)
        loop_t.append(time.perf_counter() - t0)
    v, lp = statistics.median(vec_t), statistics.median(loop_t)
    return {
        "setting": f"{instances} x (n={n}, m={m}, T={T}), {steps} steps",
        "vectorised_s": v,
        "loop_s": lp,
        "ratio": lp / v,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2000, help="optimizer steps (default: 2000)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats; the median is reported")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = [
        run(1000, 2, 1000, args.instances, args.steps, args.repeats),
        run(100, 2, 100, args.instances, args.steps, args.repeats),
    ]
    print("\n| setting | vectorised (s) | loop of singles (s) | ratio |\n|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['setting']} | {r['vectorised_s']:.2f} | {r['loop_s']:.2f} | {r['ratio']:.1f}x |"
        )


if __name__ == "__main__":
    main()
