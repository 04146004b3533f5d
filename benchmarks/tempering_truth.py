"""Tempering scored against exactly solvable models, through the default path.

Every model is run with ``memlens.temper(model, data, temperatures, probes=["survival"])`` (or
``estimate_llc``) with every sampler setting at its default, and compared with its exact answer:

* ``switches-1``: 8 switch circuits, one per instance, gains spanning 1,000x (toy_models.switches):
  exact λ(t), survival and characteristic temperatures by 1-D quadrature;
* ``switches-8``: the same 8 circuits in one instance (a stiff model);
* ``dln-*``: two-layer deep linear networks at t = 1, λ from Aoyagi & Watanabe (2005), one
  full-rank and two rank-deficient;
* ``poly-*``: linear regression (regular) and the singular power-2 model, exact λ.

A cell's estimate is *right* when |λ̂ − λ| ≤ max(3 se, 10% |λ|) and, for the switches, every
circuit's survival is within max(3 se, 0.1) of the exact one (se over chains). False green: the
share of healthy cells that are not right; false red: the share of unhealthy cells that are right.

    python benchmarks/tempering_truth.py [--models switches-1,dln-r1,...] [--seed N]
                                               [--max-draws N]
    python benchmarks/tempering_truth.py --timing   # cost of swaps + preconditioner per step

``--timing`` runs the torch sampler (:func:`memlens.sampling.sgld.sample`) on the workload of
benchmarks/llc_vs_devinterp.py (bottleneck 20 -> 5, n = 10^4, minibatch 256, 8 temperatures x 8
chains x 200 draws) with the plain step and with replica exchange every 10 steps plus a
preconditioner, side by side, median of repeats, one thread; and the one-off set-up cost (the
Hessian diagonal and its blend) of ``temper``.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
import torch

import memlens
from toy_models.switches import (
    Switches,
    aoyagi_llc,
    deep_linear,
    polynomial,
    polynomial_llc,
    switch_data,
    switch_truth,
)

GAINS = [0.02 * 1000 ** (k / 7) for k in range(8)]  # 0.02 .. 20: 1,000x
N_SWITCH = 100
LLC_TOL, SURV_TOL, Z = 0.10, 0.10, 3.0


def switch_models() -> dict:
    return {
        "switches-1": Switches.build([[g] for g in GAINS]),
        "switches-8": Switches.build([GAINS]),
    }


def ladder(model: Switches, n: int = N_SWITCH, ratio: float = 1.6) -> list[float]:
    """Log-spaced temperatures from a quarter of the smallest exact characteristic temperature to
    four times the largest, ``ratio`` apart."""
    nb = n / math.log(n)
    tc = switch_truth(model, nb, [1.0])["char_temp"]
    lo, hi = float(tc.min()) / 4, float(tc.max()) * 4
    k = math.ceil(math.log(hi / lo) / math.log(ratio)) + 1
    return np.geomspace(lo, hi, k).tolist()


def spearman(x, y) -> float:
    rx = np.argsort(np.argsort(x))
    ry = np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def score_switches(model: Switches, temps=None, **settings) -> dict:
    """Temper ``model`` through the default path and score it against the quadrature."""
    temps = temps or ladder(model)
    data = switch_data(model, N_SWITCH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = memlens.temper(model, data, temps, probes=["survival"], progress=False, **settings)
    gamma = res.config.localization
    truth = switch_truth(model, res.nbeta.double(), temps, gamma)
    surv = res.probe("survival")
    ok = res.health.ok
    llc, se = res.llc.mean.double(), res.llc.se.double().nan_to_num(0.0)
    lam = truth["llc"]
    llc_err = (llc - lam).abs() / lam.abs()
    llc_right = (llc - lam).abs() <= torch.maximum(Z * se, LLC_TOL * lam.abs())
    s_chain = surv.survival_per_chain.double()  # [temp, chain, inst, circuit]
    s_se = s_chain.std(1) / math.sqrt(s_chain.shape[1])
    s_err = (surv.survival.double() - truth["survival"]).abs()
    s_right = (s_err <= torch.maximum(Z * s_se.nan_to_num(0.0), torch.tensor(SURV_TOL))).all(-1)
    right = llc_right & s_right
    tc = surv.characteristic_temperature.double()  # [inst, circuit]
    tc_true = truth["char_temp"]
    ratio = tc / tc_true
    return {
        "result": res,
        "truth": truth,
        "regions": _regions(torch.tensor(temps, dtype=torch.float64), tc_true, llc, lam, se, ok),
        "healthy": float(ok.double().mean()),
        "llc_err_healthy": float(llc_err[ok].max()) if ok.any() else math.nan,
        "llc_err_median": float(llc_err[ok].median()) if ok.any() else math.nan,
        "surv_err_max": float(s_err.max()),
        "tc_ratio": ratio.flatten().tolist(),
        "tc_factor": float(torch.maximum(ratio, 1 / ratio).max()),
        "spearman": spearman(tc.flatten().nan_to_num(1e30).numpy(), tc_true.flatten().numpy()),
        "false_green": _rate(ok & ~right, ok),
        "false_red": _rate(~ok & right, ~ok),
        "n_cells": ok.numel(),
        "right": right,
        "swap_accept": res.swaps.accept if res.swaps is not None else None,
        "seconds": res.seconds,
    }


def _regions(temps, tc_true, llc, lam, se, ok) -> dict:
    """Healthy cells by where t sits against each circuit's exact characteristic temperature (in
    its well, t < tc/3; at the transition; far above, t > 3 tc): count, mean relative error of λ̂
    (the bias), worst relative error, and the spread of (λ̂ − λ − bias)/se, which is 1 when the
    standard errors are calibrated."""
    r = temps[:, None] / tc_true.reshape(1, -1)  # one circuit per instance: [temp, inst]
    if r.shape != llc.shape:
        return {}
    rel = (llc - lam) / lam
    out = {}
    for name, mask in (("in well", r < 1 / 3), ("transition", (r >= 1 / 3) & (r <= 3)),
                       ("far above", r > 3)):  # fmt: skip
        m = mask & ok & (se > 0)
        if int(m.sum()) < 2:
            continue
        bias = float(rel[m].mean())
        z = (llc[m] - lam[m] * (1 + bias)) / se[m]
        out[name] = {"cells": int(m.sum()), "bias": bias, "worst": float(rel[m].abs().max()),
                     "z_std": float(z.std())}  # fmt: skip
    return out


def _rate(num: torch.Tensor, den: torch.Tensor) -> float:
    return float(num.sum() / den.sum()) if bool(den.any()) else 0.0


def llc_models() -> dict:
    """name -> (model, data, exact λ at t = 1 as a function of nβ and γ)."""
    out = {}
    for name, (n_in, h, n_out, r) in {"dln-full": (3, 2, 3, 2), "dln-r1": (3, 2, 3, 1),
                                      "dln-h3r1": (3, 3, 3, 1)}.items():  # fmt: skip
        model, data = deep_linear(n_in, h, n_out, r, n=1000, seed=1)
        out[name] = (model, data, lambda nb, g, a=(n_in, h, n_out, r): aoyagi_llc(*a))
    for name, power in (("poly-regular", 1), ("poly-singular", 2)):
        model, data = polynomial(2, power, n=1000)
        out[name] = (model, data, lambda nb, g, m=model, d=data: polynomial_llc(m, d, nb, g))
    return out


def score_llc(model, data, exact, **settings) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = memlens.estimate_llc(model, data, progress=False, **settings)
    lam = exact(float(res.nbeta[0]), res.config.localization)
    llc, se = float(res.llc.mean[0, 0]), float(res.llc.se[0, 0])
    ok = bool(res.health.ok[0, 0])
    right = abs(llc - lam) <= max(Z * se, LLC_TOL * abs(lam))
    return {"result": res, "exact": lam, "llc": llc, "se": se, "err": (llc - lam) / lam,
            "healthy": ok, "right": right, "seconds": res.seconds}  # fmt: skip


def timing(repeats: int = 5, swap_every: int = 10) -> None:
    import statistics

    from memlens.data import SparseFeatures
    from memlens.sampling.llc import prepare
    from memlens.sampling.precondition import posterior_preconditioner
    from memlens.sampling.sgld import Plan, sample
    from toy_models import Bottleneck

    n = 10_000
    train = SparseFeatures(n_features=20, sparsity=0.9).sample(T=n, n_instances=1, seed=0)
    model = Bottleneck(n_features=20, d_hidden=5, n_instances=1, seed=0)
    memlens.train(model, train, steps=2000, lr=1e-2, batch_size=1024, progress=False)
    cfg = memlens.SGLDConfig(batch_size=256)
    setup = prepare(model, train, cfg)
    temps = torch.logspace(0, 2, 8).double()
    nbeta = setup.nbeta[None, :] / temps[:, None]
    t0 = time.perf_counter()
    M = posterior_preconditioner(setup, nbeta, 1.0)
    setup_s = time.perf_counter() - t0
    base = dict(nbeta=nbeta, step=torch.full((8, 1), 3e-3), gamma=1.0, chains=8, draws=200,
                thin=1, burnin=0, batch_size=256, seed=0, eval_every=10)  # fmt: skip
    plain = Plan(**base)
    step_m = torch.full((8, 1), 3e-3) / M.amax(-1)  # the same largest per-coordinate step
    fancy = Plan(**{**base, "step": step_m}, precond=M, swap_every=swap_every,
                 ladder=list(range(8)))  # fmt: skip
    precond_only = Plan(**{**base, "step": step_m}, precond=M)
    times: dict[str, list[float]] = {"plain": [], "swaps+precond": [], "precond": []}
    sample(setup, plain, progress=False)  # warm-up
    swaps = None
    for _ in range(repeats):
        for name, plan in (("plain", plain), ("swaps+precond", fancy), ("precond", precond_only)):
            t0 = time.perf_counter()
            run = sample(setup, plan, progress=False)
            times[name].append(time.perf_counter() - t0)
            swaps = run.swaps if run.swaps is not None else swaps
    a, b = statistics.median(times["plain"]), statistics.median(times["swaps+precond"])
    c = statistics.median(times["precond"])
    print(f"torch sampler, 8 temps x 8 chains x 200 steps, minibatch 256, 1 thread: plain "
          f"{a:.3f} s, preconditioner alone {c:.3f} s ({c / a - 1:+.1%}), with swaps every "
          f"{swap_every} steps + preconditioner {b:.3f} s ({b / a - 1:+.1%}); "
          f"one-off preconditioner set-up {setup_s:.3f} s; swap acceptance "
          f"{', '.join(f'{x:.2f}' for x in swaps.accept[:, 0].tolist())}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="all")
    ap.add_argument("--timing", action="store_true")
    ap.add_argument("--swap-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0, help="the sampler's seed (default: its own, 0)")
    ap.add_argument("--max-draws", type=int, default=None, help="the sampler's max_draws (1600)")
    args = ap.parse_args()
    settings = {"seed": args.seed} if args.seed else {}
    if args.max_draws:
        settings["max_draws"] = args.max_draws
    if args.timing:
        timing(swap_every=args.swap_every)
        return
    want = None if args.models == "all" else set(args.models.split(","))
    green = red = n_ok = n_bad = 0
    print(f"{'model':14s} {'healthy':>8s} {'max|λ̂-λ|/λ':>12s} {'median':>7s} {'tc factor':>9s} "
          f"{'Spearman':>8s} {'f-green':>7s} {'f-red':>6s} {'s':>6s}")  # fmt: skip
    for name, model in switch_models().items():
        if want and name not in want:
            continue
        t0 = time.perf_counter()
        sc = score_switches(model, **settings)
        ok = sc["result"].health.ok
        green += int((ok & ~sc["right"]).sum())
        red += int((~ok & sc["right"]).sum())
        n_ok, n_bad = n_ok + int(ok.sum()), n_bad + int((~ok).sum())
        print(f"{name:14s} {sc['healthy']:8.0%} {sc['llc_err_healthy']:12.1%} "
              f"{sc['llc_err_median']:7.1%} {sc['tc_factor']:9.2f} {sc['spearman']:8.2f} "
              f"{sc['false_green']:7.0%} {sc['false_red']:6.0%} "
              f"{time.perf_counter() - t0:6.0f}")  # fmt: skip
        print("   char. temperature measured/exact per circuit: "
              + ", ".join(f"{r:.2f}" for r in sc["tc_ratio"]))  # fmt: skip
        c = sc["result"].config
        print(f"   {c.draws} draws per chain x {c.thin} SGLD steps per draw")
        for region, v in sc["regions"].items():
            print(f"   {region:10s}: {v['cells']:3d} healthy cells, λ̂ bias {v['bias']:+.1%}, worst "
                  f"{v['worst']:.1%}; (λ̂ − λ − bias)/se has std {v['z_std']:.2f}")  # fmt: skip
        res = sc["result"]
        if res.swaps is not None:
            acc = res.swaps.accept
            print(f"   swap acceptance per neighbour pair: min {float(acc.min()):.2f}, median "
                  f"{float(acc.median()):.2f}, max {float(acc.max()):.2f}")  # fmt: skip
    for name, (model, data, exact) in llc_models().items():
        if want and name not in want:
            continue
        t0 = time.perf_counter()
        sc = score_llc(model, data, exact, **settings)
        ok = sc["healthy"]
        green += int(ok and not sc["right"])
        red += int(not ok and sc["right"])
        n_ok, n_bad = n_ok + int(ok), n_bad + int(not ok)
        why = "" if ok else " -- " + sc["result"].health.describe(0, 0)
        print(f"{name:14s} {'yes' if ok else 'no':>8s} {abs(sc['err']):12.1%} "
              f"λ̂ {sc['llc']:.3f} ± {sc['se']:.3f} vs exact {sc['exact']:.3f} "
              f"({sc['result'].config.draws} draws) "
              f"{time.perf_counter() - t0:6.0f}s{why}")  # fmt: skip
    print(
        f"suite: false-green {green}/{n_ok} healthy cells ({green / max(n_ok, 1):.0%}), "
        f"false-red {red}/{n_bad} unhealthy cells ({red / max(n_bad, 1):.0%})"
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
