"""Distributed dictionaries decompiled: coverage of a memorising MLP block trained without L1.

The quickstart's story model (the MLP block's ``story`` preset: d_mlp = 32, T = 16, 64 features,
2,000 AdamW steps) memorises with an L1 penalty on its activations as a lookup table the weights
give directly (coverage 100%). Without the penalty it memorises just as well but with a
distributed code, and the weight-level reader covers about a third of the points (the quickstart's
caveat). This benchmark trains that plain-AdamW model exactly as the quickstart does (the bundle's
data recipe and ``memlens.train``), once per seed, and reads its dictionary both ways:

* ``weights``: ``DictionaryProbe(train=...)`` (the reader in the model's bundle);
* ``decompiled``: ``DictionaryProbe(train=..., decompile=True)``: each point's code, found and
  checked by ablation at ``hook_post`` (``probes/decompile.py``).

It prints, per seed, both coverages and the decompiled codes' sizes (mean, median and largest,
against the number of neurons a point fires, and how many codes are as small as the exhaustive
minimum over every subset of a point's active neurons), and, as the false-positive check, the
decompiled coverage of the generalising story model (T = 2,048, also without L1), whose points all
have codes, fewer of them specific. The last line reads
``decompiled coverage: X% ± Y (mean ± 95% interval over N seeds; weights: Z%), code size ...``.

    python benchmarks/decompile_dictionary.py [--seeds 5] [--no-generalising]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import memlens as ml
from memlens.registry import bundle_of
from probes.dictionary import DictionaryProbe

T_CRIT = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def interval(xs: list[float]) -> float:
    """Half-width of the 95% t-interval of the mean (0 for one value)."""
    if len(xs) < 2:
        return 0.0
    return T_CRIT.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))


def fit(bundle, story: dict, T: int, seed: int):
    """The quickstart's route: the bundle's data recipe, then ``memlens.train`` without L1."""
    spec = {**story["task"], "T": T, "seed": seed}
    train, test = bundle.data(spec)
    model = bundle.build(spec)
    kw = {**story["train"], "l1": 0.0}
    res = ml.train(model, train, test=test, seed=seed, progress=False, **kw)
    return model, train, res


def exhaustive_minimum(model, train, most: int = 18) -> list[int | None]:
    """Per point of instance 0: the smallest subset of its active neurons whose read-back
    (b_out + Σ_S a_k W_out[:, k]) is within rtol = 0.25 of the model's output, by trying every
    subset; None for points firing more than ``most`` neurons (too many subsets)."""
    with torch.no_grad():
        _, cache = model.run_with_cache(train.inputs)
        A, W = cache["hook_post"][:, 0], model.W_out[0]
    out = []
    for a in A:
        act = (a > 0).nonzero().flatten()
        n = len(act)
        if n > most:
            out.append(None)
            continue
        C = (a[act] * W[:, act]).T  # [n, out]
        subsets = ((torch.arange(2**n)[:, None] >> torch.arange(n)) & 1).float()
        err = (subsets @ C - C.sum(0)).norm(dim=-1) / C.sum(0).norm()
        out.append(int(subsets[err <= 0.25].sum(-1).min()))
    return out


def read(model, train, exhaustive: bool = False) -> dict:
    weights = DictionaryProbe(train=train).run(model)
    t0 = time.perf_counter()
    dec = DictionaryProbe(train=train, decompile=True).run(model)
    seconds = time.perf_counter() - t0
    ok = dec.covered[0]
    sizes = dec.code_size[0][ok].float()
    _, cache = model.run_with_cache(train.inputs)
    fires = (cache["hook_post"][:, 0] > 0).sum(-1).float()  # neurons each point fires
    minimal = exhaustive_minimum(model, train) if exhaustive else []
    checked = [(int(dec.code_size[0, j]), m) for j, m in enumerate(minimal) if m is not None]
    return {
        "minimal": sum(size == m for size, m in checked),
        "checked": len(checked),
        "over": max((size - m for size, m in checked), default=0),
        "weights": weights.coverage,
        "decompiled": dec.coverage,
        "has_code": dec.scalars()["sparse_code_fraction"],
        "size_mean": float(sizes.mean()) if len(sizes) else float("nan"),
        "size_median": float(sizes.median()) if len(sizes) else float("nan"),
        "size_max": int(sizes.max()) if len(sizes) else 0,
        "fires": float(fires.mean()),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--no-generalising", action="store_true", help="skip the T = 2048 check")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    bundle = bundle_of("mlp")
    story = bundle.preset("story")
    T_mem, T_gen = story["grid"]["T"]
    d_mlp = story["task"]["d_mlp"]
    print(
        f"MLP block, story preset without L1: d_mlp = {d_mlp}, T = {T_mem}, "
        f"{story['train']['steps']} AdamW steps; codes at hook_post, rtol 0.25, no size cap"
    )
    print(
        "seed  train loss  weights  decompiled  has a code  code size mean/median/max  fires  "
        "minimal  time"
    )
    rows = []
    for seed in range(args.seeds):
        model, train, res = fit(bundle, story, T_mem, seed)
        r = read(model, train, exhaustive=True)
        rows.append(r)
        print(
            f"{seed:>4}  {float(res.train_loss[0]):>10.2g}  {r['weights']:>7.0%}  "
            f"{r['decompiled']:>10.0%}  {r['has_code']:>10.0%}  "
            f"{r['size_mean']:>13.1f} / {r['size_median']:.0f} / {r['size_max']:<3d}  "
            f"{r['fires']:>5.1f}  {r['minimal']:>3d}/{r['checked']:<3d}  {r['seconds']:.1f}s"
        )
    if not args.no_generalising:
        for seed in range(min(args.seeds, 3)):
            model, train, res = fit(bundle, story, T_gen, seed)
            g = read(model, train)
            print(
                f"generalising T = {T_gen}, seed {seed}: "
                f"train loss {float(res.train_loss[0]):.2g}, "
                f"decompiled coverage {g['decompiled']:.0%} (has a code {g['has_code']:.0%}, "
                f"codes of {g['size_mean']:.1f} of {g['fires']:.1f} firing neurons), "
                f"{g['seconds']:.0f}s"
            )
    cov = [r["decompiled"] for r in rows]
    w = [r["weights"] for r in rows]
    size = [r["size_mean"] for r in rows]
    fires = [r["fires"] for r in rows]
    minimal, checked = sum(r["minimal"] for r in rows), sum(r["checked"] for r in rows)
    print(
        f"code sizes: {minimal} of {checked} points' codes are as small as the exhaustive minimum "
        f"(every subset of their active neurons); the others at most "
        f"{max(r['over'] for r in rows)} neuron(s) over"
    )
    print(
        f"decompiled coverage: {statistics.mean(cov):.0%} ± {interval(cov):.0%} (mean ± 95% "
        f"interval over {len(rows)} seeds; weights: {statistics.mean(w):.0%}), code size "
        f"{statistics.mean(size):.1f} of {d_mlp} neurons "
        f"(a point fires {statistics.mean(fires):.1f})"
    )


if __name__ == "__main__":
    main()
