"""Characteristic temperatures: where a circuit's survival first falls below the threshold going
up a temperature ladder, their medians (with censoring), and comparisons between families."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["characteristic_temperature", "censored_median", "compare_ratios"]

#: two-sided 95% Student-t quantiles by degrees of freedom
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def censored_median(tc: Tensor, censored: Tensor) -> tuple[float, bool]:
    """Lower median of ``tc`` (NaN ignored; +inf counts as dying last) and whether it is
    censored (the median circuit died at or below the lowest healthy temperature)."""
    keep = ~torch.isnan(tc)
    x, c = tc[keep].double(), censored[keep]
    if not len(x):
        return math.nan, False
    order = torch.argsort(x, stable=True)
    k = order[(len(x) - 1) // 2]
    return float(x[k]), bool(c[k])


def characteristic_temperature(
    temps: Tensor, surv: Tensor, thr: float, use: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """First upward crossing of ``thr`` along ascending temperature, log-linearly interpolated,
    using only the temperatures where ``use [temp, inst]`` holds (all when None). ``surv`` is
    ``[temp, inst, circuit]``. Returns (temperatures ``[inst, circuit]``: +inf if never crossed,
    the lowest usable temperature if already below there, NaN without a usable temperature;
    censored: bool, already below ``thr`` at the lowest usable temperature)."""
    n_t, n_i, n_c = surv.shape
    use = torch.ones(n_t, n_i, dtype=torch.bool) if use is None else use.bool()
    out = torch.full((n_i, n_c), math.nan, dtype=torch.float64)
    censored = torch.zeros(n_i, n_c, dtype=torch.bool)
    order = torch.argsort(temps)
    for i in range(n_i):
        keep = [a for a in order.tolist() if bool(use[a, i])]
        if not keep:
            continue
        t = temps[keep].double().log()
        s = surv[keep, i].double()  # [temp, circuit]
        res = torch.full((n_c,), math.inf, dtype=torch.float64)
        decided = s[0] < thr
        censored[i] = decided
        res[decided] = float(t[0].exp())
        for k in range(1, len(t)):
            cross = (s[k] < thr) & ~decided
            frac = ((s[k - 1] - thr) / (s[k - 1] - s[k]).clamp_min(1e-12)).clamp(0, 1)
            res = torch.where(cross, (t[k - 1] + frac * (t[k] - t[k - 1])).exp(), res)
            decided |= cross
        out[i] = res
    return out, censored


def compare_ratios(early: str, late: str, per_inst: list[float], per_chain: list[float]) -> dict:
    """Summarise temperature ratios early/late: geometric mean over instances (seeds) with a 95%
    t-interval, the range over chains, and a verdict in words. The mean and interval are over
    the seeds with a finite ratio; a seed whose ratio is infinite (or 0: a family survived the
    whole healthy ladder) leaves the interval unbounded on that side."""
    logs = torch.tensor([math.log(r) for r in per_inst if 0 < r < math.inf], dtype=torch.float64)
    chains = torch.tensor([r for r in per_chain if r == r and 0 < r < math.inf])
    out = {"early": early, "late": late, "per_instance": per_inst, "per_chain": per_chain}
    out["geometric_mean"] = float(logs.mean().exp()) if len(logs) else math.nan
    if len(logs) >= 2:
        half = _T95.get(len(logs) - 1, 1.96) * float(logs.std()) / math.sqrt(len(logs))
        out["ci95"] = (math.exp(float(logs.mean()) - half), math.exp(float(logs.mean()) + half))
    else:
        out["ci95"] = (math.nan, math.nan)
    if len(logs) and any(r == math.inf for r in per_inst):  # censored: a family outlived the ladder
        out["ci95"] = (out["ci95"][0], math.inf)
    if len(logs) and any(r == 0 for r in per_inst):
        out["ci95"] = (0.0, out["ci95"][1])
    out["chain_range"] = (
        (float(chains.min()), float(chains.max())) if len(chains) else (math.nan, math.nan)
    )
    lo, hi = out["ci95"]
    g = out["geometric_mean"]
    known = [r for r in per_inst if r == r]
    below, above = sum(r < 1 for r in known), sum(r > 1 for r in known)
    out["seeds_earlier"], out["seeds_later"] = below, above
    signs = f"{early} earlier in {below}, later in {above} of {len(known)} seeds"
    size = f"ratio {g:.2g}, 95% CI [{lo:.2g}, {hi:.2g}]" if g == g else "no finite ratio"
    if not known:
        out["verdict"] = (
            f"cannot tell: no seed has uncensored medians for both {early} and {late} (a family "
            "dies below the lowest healthy temperature)"
        )
    elif hi < 1:
        out["verdict"] = (
            f"{early} circuits die first, at {g:.2g}x the temperature of {late} ({signs})"
        )
    elif lo > 1:
        out["verdict"] = (
            f"{early} circuits die LATER, at {g:.2g}x the temperature of {late} ({signs})"
        )
    elif len(known) >= 2 and below == len(known):
        out["verdict"] = (
            f"{early} circuits die first in every seed, but the size is not established ({size}; "
            f"{signs})"
        )
    elif len(known) >= 2 and above == len(known):
        out["verdict"] = (
            f"{early} circuits die LATER in every seed, but the size is not established ({size}; "
            f"{signs})"
        )
    else:
        out["verdict"] = f"no detectable difference ({size}; {signs})"
    return out
