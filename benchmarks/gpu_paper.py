"""The bottleneck's ``paper`` preset (Anthropic's double descent) on one GPU, within a time budget.

    python benchmarks/gpu_paper.py                      # on cuda: ~8 min of a lent GPU
    python benchmarks/gpu_paper.py --device cpu --n-features 200 --steps 300 --budget 60  # the path

The preset is Anthropic's setting (background.md section 4): n = 10,000 features, S = 0.999, m = 2,
unit-norm points, 50,000 full-batch AdamW steps (lr 1e-3, 2,500 warm-up steps, cosine decay,
weight decay 1e-2), 20 training-set sizes T from 3 to 50,000; here 4 seeds per T, the paper's.
Every T is one ``memlens.sweep`` group (its seeds packed as instances), trained through
``memlens.train``, which on a GPU compiles the step (``memlens.fused.graph_step``).

1. A short run of every T (``--probe-steps``, after one warm-up run that absorbs the compile)
   gives the seconds per step at each T, and from them the whole grid's wall time at the full
   step count (compile excluded; printed).
2. Whole runs (every step) of as many T as the budget allows, in the order that answers the
   paper's questions first: the smallest T (the data T-gon, D ~ m/T), the T nearest 30 (weight
   norms peak there), the T nearest 2,000 (inside the test-loss bump), the largest T (the
   pentagon), then the rest from the middle out.
3. Per finished T, over seeds: test loss, weight norm, mean data dimensionality against m/T, and
   the stored features (norm >= 0.5) with their feature dimensionality (a pentagon: 5, each a
   little below 2/5). The last line: ``grid: A of B T values run whole in S s; whole grid
   estimated E min``.

Results land in ``--out`` (a resumable sweep folder per T: a second call skips finished groups).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from capacity import Capacity

import memlens
from memlens.registry import get_bundle
from probes.dimensionality import feature_dimensionality

STORED = 0.5  # a feature counts as stored when its norm is at least this


def priority(Ts: list[int]) -> list[int]:
    """The order in which whole runs answer the paper's questions (see the module docstring)."""
    order: list[int] = []
    for want in (min(Ts), 30, 2000, max(Ts)):
        best = min(Ts, key=lambda t: abs(math.log(t / want)))
        if best not in order:
            order.append(best)
    rest = sorted((t for t in Ts if t not in order), key=lambda t: abs(math.log(t / 300)))
    return order + rest


def run(T, seeds, task, train, device, out: Path, progress=False) -> list[dict]:
    return memlens.sweep("bottleneck", grid={"T": [T], "seed": seeds}, task=task, train=train,
                         probes=["dimensionality"], out=out, device=device,
                         progress=progress)  # fmt: skip


def geometry(rows: list[dict], out: Path) -> dict:
    """Stored features and their dimensionality, per seed, from the group's checkpoint."""
    stored, dims = [], []
    for r in rows:
        model = memlens.load(out / r["checkpoint"], device="cpu")
        W = model.W.detach()[r["instance"]]  # [m, n]
        norms = W.norm(dim=0)
        big = norms >= STORED
        stored.append(int(big.sum()))
        D = feature_dimensionality(W[None])[0]
        dims.append(sorted((round(float(d), 3) for d in D[big]), reverse=True)[:8])
    return {"stored": stored, "D": dims}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for whole runs")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=None, help="default: the preset's 50,000")
    ap.add_argument("--n-features", type=int, default=None, help="default: the preset's 10,000")
    ap.add_argument("--T", default=None, help="comma-separated subset of the preset's grid")
    ap.add_argument("--probe-steps", type=int, default=30)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.seeds < 1 or args.probe_steps < 1 or args.budget <= 0:
        raise SystemExit("--seeds and --probe-steps must be >= 1 and --budget > 0")
    cap = Capacity()
    p = get_bundle("bottleneck").preset("paper")
    task = dict(p["task"])
    if args.n_features:
        task["n_features"] = args.n_features
    train = dict(p["train"])
    steps = args.steps or train["steps"]
    if args.steps:  # keep the schedule's shape: warm-up 5% of the steps
        train.update(steps=steps, warmup=max(1, steps * train["warmup"] // p["train"]["steps"]))
    Ts = sorted(p["grid"]["T"])
    if args.T:
        want = {int(t) for t in args.T.split(",")}
        if not want <= set(Ts):
            raise SystemExit(f"--T must be among the preset's grid {Ts}")
        Ts = [t for t in Ts if t in want]
    seeds = list(range(args.seeds))
    out = Path(args.out or tempfile.mkdtemp(prefix="memlens-paper-"))
    print(
        f"paper preset on {args.device}: n = {task['n_features']}, S = {task['sparsity']}, "
        f"m = {task['d_hidden']}, {steps} steps, T in {Ts}, {len(seeds)} seeds; out {out}"
    )

    # 1. seconds per step at every T (a warm-up run first: the compile)
    probe = {**train, "steps": args.probe_steps, "warmup": 1}
    t0 = time.perf_counter()
    run(Ts[0], seeds, task, probe, args.device, out / "probe-warmup")
    print(f"warm-up run (compile, kernels): {time.perf_counter() - t0:.1f} s")
    per_step = {}
    for T in Ts:
        rows = run(T, seeds, task, probe, args.device, out / f"probe-T{T}")
        per_step[T] = statistics.median(r["train_seconds"] for r in rows) / args.probe_steps
    whole = sum(per_step[T] * steps for T in Ts)
    print("seconds per step by T: " + ", ".join(f"{T}: {per_step[T] * 1e3:.2f} ms" for T in Ts))
    print(f"the whole grid at {steps} steps: {whole / 60:.1f} min (compile excluded)")

    # 2. whole runs, most informative first, while the budget lasts
    t_start, done = time.perf_counter(), {}
    for T in priority(Ts):
        left = args.budget - (time.perf_counter() - t_start)
        if per_step[T] * steps > left:
            print(f"T = {T}: needs ~{per_step[T] * steps:.0f} s, {left:.0f} s left: skipped")
            continue
        rows = run(T, seeds, task, train, args.device, out / f"T{T}")
        done[T] = rows
    spent = time.perf_counter() - t_start

    # 3. the numbers, against the paper's
    print("\n| T | test loss | weight norm W | mean data dim (m/T) | stored features | their D |")
    print("|---|---|---|---|---|---|")
    m = task["d_hidden"]
    for T in sorted(done):
        rows = done[T]
        g = geometry(rows, out / f"T{T}")
        tl = [r["test_loss"] for r in rows]
        wn = [r["weight_norm"]["W"] for r in rows]
        dd = [r["dimensionality.mean_data_dim"] for r in rows]
        print(f"| {T} | {statistics.mean(tl):.4g} ± {statistics.pstdev(tl):.2g} "
              f"| {statistics.mean(wn):.3g} | {statistics.mean(dd):.3g} ({m / T:.3g}) "
              f"| {g['stored']} | {g['D']} |")  # fmt: skip
    print(
        "paper (background.md 4): small T, data T-gon with D ~ m/T; weight norms peak near T ~ 30; "
        "test-loss bump ~700 <= T <= 5,000; large T, a pentagon of 5 features each D a little "
        "below 2/5"
    )
    print(cap.report())
    print(f"grid: {len(done)} of {len(Ts)} T values run whole in {spent:.0f} s; whole grid "
          f"estimated {whole / 60:.1f} min")  # fmt: skip


if __name__ == "__main__":
    main()
