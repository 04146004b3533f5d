"""How many steps the bottleneck cpu preset needs to reach the pentagon at its largest T (issue 13,
part 5).

    OMP_NUM_THREADS=1 python benchmarks/dd_pentagon.py --lr 1e-2 --snapshots 1000,3000,10000,30000
    OMP_NUM_THREADS=1 python benchmarks/dd_pentagon.py --cosine 10000 --lr 1e-2 --warmup 500

The model and data are exactly the ``bottleneck`` ``cpu`` preset's cell at its largest T (n = 1000
features, S = 0.99, m = 2, unit-norm points, T = 1000, one model per seed). Infinite-data TMS with
uniform importance stores a pentagon: five features of norm ~1 at 72-degree gaps, each of feature
dimensionality a little below 2/5. For each seed the script reports

- the norms of the strongest features and how many have norm >= 0.5 (``n_big``; 5 for a pentagon),
- the feature dimensionality D_i = |W_i|^2 / sum_j (W_i^ . W_j)^2 of the five strongest, over all
  features and among the five alone, and the summed squared norm of the other features (each of
  which lowers the five's D through its overlap with them),
- the angular gaps between the five strongest, sorted by angle, and the largest deviation from 72,
- the test loss (fresh points, squared error summed over features).

``--snapshots`` trains once per seed at a constant learning rate after a linear warmup and measures
at each listed step (the AdamW update of ``memlens.train``, without restarting the optimiser).
``--cosine STEPS`` trains with ``memlens.train`` itself (warmup, then cosine decay to 0), the
schedule of the presets, and measures at the end.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from memlens.registry import get_bundle
from memlens.sweeps import cell_data
from memlens.training import evaluate, lr_at, train
from probes.dimensionality import feature_dimensionality

BIG = 0.5  # a feature counts as stored when its norm is at least this


def cell(seed: int, T: int | None = None) -> tuple[dict, torch.nn.Module, object, object]:
    """The cpu preset's bottleneck cell at the largest T (or ``T``) for ``seed``."""
    p = get_bundle("bottleneck").preset("cpu")
    T = T or max(p["grid"]["T"])
    spec = {"normalize": True, "n_test": 1000, **p["task"], "T": T, "seed": seed}
    model = get_bundle("bottleneck").build(spec)
    tr, te = cell_data("bottleneck", spec)
    return p, model, tr, te


def geometry(model, test) -> dict:
    """Pentagon measures of a one-instance bottleneck (see the module docstring)."""
    W = model.W.detach()[0]  # [m, n]
    norms = W.norm(dim=0)
    order = norms.argsort(descending=True)
    top = order[:5]
    D = feature_dimensionality(W)[top]
    D_alone = feature_dimensionality(W[:, top])  # the five among themselves
    rest = norms[order[5:]] ** 2
    ang = torch.atan2(W[1, top], W[0, top]).sort().values
    gaps = torch.diff(torch.cat([ang, ang[:1] + 2 * math.pi])) * 180 / math.pi
    return {
        "top_norms": [round(float(v), 3) for v in norms[order[:7]]],
        "n_big": int((norms >= BIG).sum()),
        "D_top5": [round(float(v), 3) for v in D],
        "D_top5_alone": [round(float(v), 3) for v in D_alone],
        "rest_norm2": round(float(rest.sum()), 2),
        "gaps_deg": [round(float(v), 1) for v in gaps],
        "max_gap_dev_deg": round(float((gaps - 72).abs().max()), 1),
        "test_loss": round(float(evaluate(model, test)[0]), 4),
    }


def is_pentagon(g: dict) -> bool:
    """Five stored features (and no sixth) at 72 +- 12 degrees, each D in [0.3, 0.45]."""
    return (
        g["n_big"] == 5
        and g["max_gap_dev_deg"] <= 12
        and all(0.3 <= d <= 0.45 for d in g["D_top5"])
    )


def snapshots(
    seed: int, lr: float, warmup: int, at: list[int], T: int | None, wd: float | None
) -> list[dict]:
    """Constant-lr AdamW (after warmup) on the preset's cell; geometry at each step in ``at``."""
    p, model, tr, te = cell(seed, T)
    wd = p["train"]["weight_decay"] if wd is None else wd
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    out, t0 = [], time.perf_counter()
    for step in range(max(at)):
        for gr in opt.param_groups:
            gr["lr"] = lr_at(step, steps=max(at), lr=lr, warmup=warmup, schedule="constant")
        loss = model.loss(tr).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step + 1 in at:
            g = geometry(model, te)
            out.append(
                {
                    "seed": seed,
                    "T": len(tr),
                    "step": step + 1,
                    "s": round(time.perf_counter() - t0),
                    **g,
                }
            )
            print(fmt(out[-1]), flush=True)
    return out


def cosine(seed: int, steps: int, lr: float, warmup: int, T: int | None, wd: float | None) -> dict:
    """``memlens.train`` with the preset's schedule (warmup, cosine to 0) for ``steps``."""
    p, model, tr, te = cell(seed, T)
    wd = p["train"]["weight_decay"] if wd is None else wd
    t0 = time.perf_counter()
    train(
        model,
        tr,
        steps=steps,
        lr=lr,
        warmup=warmup,
        weight_decay=wd,
        progress=False,
    )
    g = {
        "seed": seed,
        "T": len(tr),
        "step": steps,
        "s": round(time.perf_counter() - t0),
        **geometry(model, te),
    }
    print(fmt(g), flush=True)
    return g


def fmt(g: dict) -> str:
    return (
        f"T {g['T']} seed {g['seed']} step {g['step']:>6d} ({g['s']:>4d} s): "
        f"n_big {g['n_big']:>2d} "
        f"norms {g['top_norms']}  D_top5 {g['D_top5']} (alone {g['D_top5_alone']}; other "
        f"features' |W|^2 sum {g['rest_norm2']})  gaps {g['gaps_deg']} "
        f"(max dev {g['max_gap_dev_deg']})  test {g['test_loss']}  "
        f"{'PENTAGON' if is_pentagon(g) else ''}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lr", type=float, default=1e-2, help="peak learning rate")
    ap.add_argument("--warmup", type=int, default=50, help="linear warmup steps")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    ap.add_argument("--snapshots", default=None, help="steps to measure at, constant lr")
    ap.add_argument("--cosine", type=int, default=None, help="total steps, cosine schedule")
    ap.add_argument(
        "--weight-decay", type=float, default=None, help="AdamW weight decay (default: preset's)"
    )
    ap.add_argument("--T", type=int, default=None, help="training-set size (default: the largest)")
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    if (a.snapshots is None) == (a.cosine is None):
        ap.error("give exactly one of --snapshots and --cosine")
    if a.snapshots is not None:
        at = sorted(int(s) for s in a.snapshots.split(","))
        if at[0] <= a.warmup:
            ap.error(f"--snapshots must come after --warmup={a.warmup}, got {at[0]}")
        rows = [r for s in seeds for r in snapshots(s, a.lr, a.warmup, at, a.T, a.weight_decay)]
    else:
        rows = [cosine(s, a.cosine, a.lr, a.warmup, a.T, a.weight_decay) for s in seeds]
    n = sum(is_pentagon(r) for r in rows)
    print(f"{n}/{len(rows)} measurements are pentagons")


if __name__ == "__main__":
    main()
