"""λ̂ against log temperature (Vaintrob): flat stretches, the jumps between them, and steady changes.

A *flat stretch* is a run of at least two neighbouring temperatures whose λ̂ are constant within
their errors: the run passes a χ² test against its weighted mean (p ≥ ``alpha``) and, from three
points on, shows no significant linear trend in log t. The curve is cut into the fewest such runs
(single points allowed) by dynamic programming, ties broken by the smaller total χ². Single points
between stretches are transitions: two stretches separated by at most one of them are joined by a
*jump*; three or more single points in a row are a *steady change*, not jumps. Unhealthy cells
(see :class:`~memlens.sampling.diagnostics.Health`) and points without an error are left out of
the fit and drawn hollow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from memlens.io import jsonable

__all__ = ["Spectrum", "fit_spectrum"]


@dataclass
class Spectrum:
    """The λ̂(t) curve of one instance, read as flat stretches, jumps and steady changes."""

    temperatures: Float[Tensor, " temp"]  # ascending
    llc: Float[Tensor, " temp"]
    llc_se: Float[Tensor, " temp"]
    used: Tensor  # bool [temp]: healthy, with a finite error, so part of the fit
    plateaus: list[dict] = field(default_factory=list)  # t_start, t_end, llc, llc_se, points, p
    jumps: list[dict] = field(default_factory=list)  # t_low, t_high, delta, delta_se
    steady: list[dict] = field(default_factory=list)  # t_start, t_end, change, points
    instance: int = 0
    reasons: list[str] = field(default_factory=list)  # why points were left out

    def to_dict(self) -> dict:
        return jsonable(self)

    def summary(self) -> str:
        n_out = int((~self.used).sum())
        lines = [
            f"LLC spectrum (instance {self.instance}): {len(self.plateaus)} flat stretch(es), "
            f"{len(self.jumps)} jump(s), {len(self.steady)} steady change(s)"
            + (f"; {n_out} unhealthy point(s) left out" if n_out else "")
        ]
        for p in self.plateaus:
            lines.append(
                f"  flat: t in [{p['t_start']:.3g}, {p['t_end']:.3g}] ({p['points']} points): "
                f"λ̂ = {p['llc']:.3g} ± {p['llc_se']:.2g} (χ² p = {p['p']:.2f})"
            )
        for j in self.jumps:
            lines.append(
                f"  jump {j['delta']:+.3g} ± {j['delta_se']:.2g} between t={j['t_low']:.3g} and "
                f"t={j['t_high']:.3g}"
            )
        for s in self.steady:
            lines.append(
                f"  steady change {s['change']:+.3g} over t in [{s['t_start']:.3g}, "
                f"{s['t_end']:.3g}] ({s['points']} points, no flat stretch)"
            )
        lines += [f"  left out: {r}" for r in self.reasons]
        return "\n".join(lines)

    def plot(self, ax=None):
        import matplotlib.pyplot as plt

        fig = ax.figure if ax is not None else plt.figure(figsize=(6.5, 4))
        ax = ax or fig.add_subplot()
        t, y, e = self.temperatures.numpy(), self.llc.numpy(), self.llc_se.numpy()
        u = self.used.numpy()
        ax.errorbar(
            t[u],
            y[u],
            yerr=e[u],
            fmt="o",
            capsize=3,
            color="tab:blue",
            label="λ̂ ± standard error (healthy)",
        )
        if (~u).any():
            ax.plot(t[~u], y[~u], "o", mfc="none", color="grey", label="unhealthy (not fitted)")
        for k, p in enumerate(self.plateaus):
            ax.fill_between(
                [p["t_start"], p["t_end"]],
                p["llc"] - p["llc_se"],
                p["llc"] + p["llc_se"],
                color="tab:green",
                alpha=0.35,
                label="flat stretch (mean ± se)" if k == 0 else None,
            )
        for k, j in enumerate(self.jumps):
            ax.axvspan(
                j["t_low"],
                j["t_high"],
                color="tab:red",
                alpha=0.12,
                label="jump" if k == 0 else None,
            )
        for k, s in enumerate(self.steady):
            ax.axvspan(
                s["t_start"],
                s["t_end"],
                color="tab:orange",
                alpha=0.08,
                hatch="//",
                label="steady change (no flat stretch)" if k == 0 else None,
            )
        ax.set(
            xscale="log",
            xlabel="temperature t (dimensionless; inverse temperature nβ/t)",
            ylabel="local learning coefficient λ̂ (dimensionless)",
            title=f"LLC spectrum, instance {self.instance}",
        )
        ax.legend(fontsize=7)
        fig.tight_layout()
        return fig


def _chi2_sf(x: float, dof: int) -> float:
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0), torch.tensor(x / 2.0)))


def _segment(y: Tensor, w: Tensor, lt: Tensor, alpha: float, z: float) -> tuple[bool, float]:
    """Is this run constant within its errors? Returns (ok, χ² about the weighted mean)."""
    mean = (w * y).sum() / w.sum()
    chi2 = float((w * (y - mean) ** 2).sum())
    if len(y) < 2:
        return True, 0.0
    if _chi2_sf(chi2, len(y) - 1) < alpha:
        return False, chi2
    if len(y) >= 3:  # weighted least-squares slope against log t
        xm = (w * lt).sum() / w.sum()
        sxx = (w * (lt - xm) ** 2).sum()
        slope = (w * (lt - xm) * (y - mean)).sum() / sxx
        if abs(float(slope)) > z / math.sqrt(float(sxx)):
            return False, chi2
    return True, chi2


def _segments(yy: Tensor, ww: Tensor, lt: Tensor, alpha: float, z: float) -> list[tuple[int, int]]:
    """The fewest flat segments ``[(i, j), ...]`` (then the least χ²) covering the K points, by
    dynamic programming over segment ends."""
    K = len(yy)
    best: list[tuple[int, float, int]] = [(0, 0.0, -1)] + [(10**9, math.inf, -1)] * K
    for j in range(1, K + 1):  # best[j]: fewest segments (then least χ²) covering points < j
        for i in range(j):
            good, chi2 = _segment(yy[i:j], ww[i:j], lt[i:j], alpha, z)
            if good:
                cand = (best[i][0] + 1, best[i][1] + chi2, i)
                if cand[:2] < best[j][:2]:
                    best[j] = cand
    segs, j = [], K
    while j > 0:
        i = best[j][2]
        segs.append((i, j))
        j = i
    segs.reverse()
    return segs


def fit_spectrum(
    temperatures: Tensor,
    llc: Tensor,
    se: Tensor,
    healthy: Tensor | None = None,
    *,
    alpha: float = 0.05,
    z: float = 2.0,
    instance: int = 0,
    reasons: list[str] | None = None,
) -> Spectrum:
    """Read one λ̂(t) curve (any order of temperatures); see the module docstring."""
    order = torch.argsort(temperatures)
    t = temperatures[order].double()
    y, e = llc[order].double(), se[order].double()
    ok = torch.ones_like(t, dtype=torch.bool) if healthy is None else healthy[order].bool()
    used = ok & torch.isfinite(y) & torch.isfinite(e) & (e > 0)
    idx = used.nonzero().flatten().tolist()
    yy, ww, lt = y[idx], 1 / e[idx] ** 2, t[idx].log()
    K = len(idx)
    segs = _segments(yy, ww, lt, alpha, z)

    def tval(k: int) -> float:
        return float(t[idx[k]])

    plateaus, jumps, steady = [], [], []
    last, between = None, 0  # the previous plateau and the single points since it
    run: list[int] = []  # consecutive single-point segments
    for i, j in segs + [(K, K)]:
        if j - i == 1:
            run.append(i)
            between += 1
            continue
        if len(run) >= 3:
            steady.append(
                {
                    "t_start": tval(run[0]),
                    "t_end": tval(run[-1]),
                    "change": float(yy[run[-1]] - yy[run[0]]),
                    "points": len(run),
                }
            )
        run = []
        if j == i:  # the sentinel
            break
        w = ww[i:j]
        m, m_se = float((w * yy[i:j]).sum() / w.sum()), float(w.sum() ** -0.5)
        _, chi2 = _segment(yy[i:j], w, lt[i:j], alpha, z)
        p = {
            "t_start": tval(i),
            "t_end": tval(j - 1),
            "llc": m,
            "llc_se": m_se,
            "points": j - i,
            "p": _chi2_sf(chi2, j - i - 1),
        }
        if last is not None and between <= 1:
            jumps.append(
                {
                    "t_low": last["t_end"],
                    "t_high": p["t_start"],
                    "delta": m - last["llc"],
                    "delta_se": math.hypot(m_se, last["llc_se"]),
                }
            )
        plateaus.append(p)
        last, between = p, 0
    return Spectrum(
        temperatures=t.float(),
        llc=y.float(),
        llc_se=e.float(),
        used=used,
        plateaus=plateaus,
        jumps=jumps,
        steady=steady,
        instance=instance,
        reasons=list(reasons or []),
    )
