"""The results: ``Tempering`` (what :func:`memlens.temper` returns: λ̂, diagnostics, per-cell
health, the resolved sampler config, the step-size record, the streaming probes' results) and
``Calibration`` (the record of ``step_size="auto"``, what :func:`memlens.calibrate` returns)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from memlens.io import jsonable
from memlens.sampling.config import SGLDConfig
from memlens.sampling.diagnostics import LLC, Diagnostics, Health
from memlens.sampling.spectrum import Spectrum, fit_spectrum

__all__ = ["Tempering", "Calibration"]


@dataclass
class Calibration:
    """The record of an automatic step-size choice: every grid point tried, and why each
    (temperature, instance) got its step. ``step_size`` is ``[temp, inst]``."""

    temperatures: Tensor  # [temp]
    curvature: Tensor  # [temp, inst] a = (nβ/t) h + γ at w*
    rows: list[dict]  # one per (temperature, instance, grid step) at its last measurement
    choices: list[dict]  # one per (temperature, instance)
    thin: int  # SGLD steps per draw chosen for the run
    calibration_thin: int
    seconds: float
    bias_tolerance: float
    precond: Tensor | None = None  # [temp, inst, P] the frozen preconditioner M (not serialised)

    @property
    def step_size(self) -> Tensor:
        n_t = len(self.temperatures)
        n_i = max(c["inst"] for c in self.choices) + 1
        out = torch.empty(n_t, n_i, dtype=torch.float64)
        for c in self.choices:
            out[c["temp"], c["inst"]] = c["step_size"]
        return out

    @property
    def bias_failed(self) -> Tensor:
        n_t = len(self.temperatures)
        n_i = max(c["inst"] for c in self.choices) + 1
        out = torch.zeros(n_t, n_i, dtype=torch.bool)
        for c in self.choices:
            out[c["temp"], c["inst"]] = not c["decided"]
        return out

    @property
    def recommended(self) -> list[dict]:
        """The decided choices (step size per temperature and instance)."""
        return [c for c in self.choices if c["decided"]]

    def table(self, inst: int | None = None) -> str:
        head = (
            f"{'t':>8} {'inst':>4} {'s=ε·a':>7} {'step ε':>9} {'λ̂':>9} {'± se':>7} "
            f"{'R-hat':>6} {'ESS':>6} {'div':>4}  verdict"
        )
        lines = [head]
        for r in self.rows:
            if inst is not None and r["inst"] != inst:
                continue
            lines.append(
                f"{r['temperature']:>8.3g} {r['inst']:>4d} {r['s']:>7.3g} {r['step_size']:>9.3g} "
                f"{r['llc']:>9.4g} {r['llc_se']:>7.2g} {r['rhat']:>6.3f} {r['ess']:>6.0f} "
                f"{r['diverged']:>4.0%}  {r['verdict']}"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        lines = [
            f"step size auto ({self.seconds:.1f} s of calibration; steps per draw {self.thin}, "
            f"calibrated at {self.calibration_thin}; bias tolerance {self.bias_tolerance:.0%}):"
        ]
        for c in self.choices:
            lines.append(f"  t={c['temperature']:.3g} inst {c['inst']}: {c['reason']}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return jsonable(
            {
                "temperatures": self.temperatures,
                "curvature": self.curvature,
                "rows": self.rows,
                "choices": self.choices,
                "thin": self.thin,
                "calibration_thin": self.calibration_thin,
                "seconds": self.seconds,
                "bias_tolerance": self.bias_tolerance,
            }
        )

    def plot(self, ax=None, inst: int = 0):
        """λ̂ against the dimensionless step s = ε·a per temperature: chosen steps starred,
        unhealthy grid points crossed."""
        import matplotlib.pyplot as plt

        fig = ax.figure if ax is not None else plt.figure(figsize=(6.5, 4.2))
        ax = ax or fig.add_subplot()
        cmap = plt.get_cmap("viridis")
        n_t = len(self.temperatures)
        for a in range(n_t):
            rs = sorted(
                (r for r in self.rows if r["temp"] == a and r["inst"] == inst),
                key=lambda r: r["s"],
            )
            if not rs:
                continue
            col = cmap(a / max(1, n_t - 1))
            x = [r["s"] for r in rs]
            y = [r["llc"] for r in rs]
            e = [r["llc_se"] if math.isfinite(r["llc_se"]) else 0.0 for r in rs]
            ax.errorbar(x, y, yerr=e, color=col, capsize=2, lw=1,
                        label=f"t = {self.temperatures[a]:.3g}")  # fmt: skip
            for r in rs:
                ax.plot(r["s"], r["llc"], "o" if r["mixed"] else "x", color=col, ms=5)
            c = next(c for c in self.choices if c["temp"] == a and c["inst"] == inst)
            ax.plot(c["s"], c["llc"], "*", ms=14, mfc="gold" if c["decided"] else "white",
                    mec="k")  # fmt: skip
        ax.plot([], [], "k*", mfc="gold", ms=10, label="chosen (bias test passed)")
        ax.plot([], [], "k*", mfc="white", ms=10, label="fallback (bias test failed)")
        ax.plot([], [], "kx", label="not mixed / diverged")
        ax.set(
            xscale="log",
            xlabel="dimensionless step s = ε · a  (a: top curvature of the posterior at w*)",
            ylabel="λ̂ (mean ± standard error)",
            title=f"step-size calibration, instance {inst}: λ̂ must stop moving with ε",
        )
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        return fig


@dataclass
class Tempering:
    """What :func:`memlens.temper` returns. Axes: ``temp`` follows ``temperatures`` as given."""

    temperatures: Float[Tensor, " temp"]
    nbeta: Float[Tensor, " inst"]  # nβ at t = 1, per instance
    traces: Float[Tensor, "temp chain draw inst"]  # loss per draw (mean over its SGLD steps)
    eval_traces: Float[Tensor, "temp chain eval inst"]  # evaluation-set loss (diagnostics)
    eval_draws: Tensor  # [eval] the draws at which the evaluation loss was taken
    init_loss: Float[Tensor, " inst"]  # L_n(w*) on the full training set
    llc: LLC
    diagnostics: Diagnostics
    health: Health
    config: SGLDConfig  # resolved: concrete step sizes [temp][inst], steps per draw, nβ
    calibration: Calibration | None = None  # the record of step_size="auto"
    probes: dict[str, Any] = field(default_factory=dict)
    kept_draws: list[dict[str, Tensor]] | None = None
    seconds: float = 0.0
    swaps: Any = None  # exchange.SwapStats: swap acceptance per neighbour pair of the ladder

    @property
    def burnin(self) -> int:
        return self.config.n_burnin

    @property
    def step_size(self) -> Float[Tensor, "temp inst"]:
        return torch.tensor(self.config.step_size, dtype=torch.float64)

    @property
    def nbeta_eff(self) -> Float[Tensor, "temp inst"]:
        return self.nbeta[None, :] / self.temperatures[:, None]

    def probe(self, name: str):
        """The result of the streaming probe registered (or passed) under ``name``."""
        if name not in self.probes:
            raise ValueError(f"no probe {name!r} ran; probes here: {sorted(self.probes) or 'none'}")
        return self.probes[name].result()

    def summary(self) -> str:
        c = self.config
        temps, chains, draws, n_inst = self.traces.shape
        n_bad = int((~self.health.ok).sum())
        lines = [
            f"tempered {n_inst} instance(s) at {temps} temperature(s) x {chains} chains x {draws} "
            f"draws (burn-in {c.n_burnin}, {c.thin} SGLD step(s) per draw, step size "
            f"{'auto' if self.calibration is not None else 'given'}) in {self.seconds:.2f} s; "
            + (f"{n_bad} unhealthy cell(s)" if n_bad else "every cell healthy")
        ]
        d = self.diagnostics
        for a, t in enumerate(self.temperatures.tolist()):
            for i in range(n_inst):
                lines.append(
                    f"  t={t:.3g} inst {i}: λ̂ = {self.llc.mean[a, i]:.4g} ± "
                    f"{self.llc.se[a, i]:.2g} (ε {self.step_size[a, i]:.2g}), R-hat "
                    f"{d.rhat[a, i]:.3f}, ESS {d.ess[a, i]:.0f}, below-init "
                    f"{d.frac_below_init[a, i]:.2f}, diverged {int(d.diverged[a, :, i].sum())}/"
                    f"{chains}: {self.health.describe(a, i)}"
                )
        if self.swaps is not None:
            for i in range(n_inst):
                lines.append(f"replica exchange, inst {i}:")
                lines += ["  " + x for x in self.swaps.describe(self.temperatures, i)]
        if self.calibration is not None:
            lines.append(self.calibration.summary())
        return "\n".join(lines)

    def to_dict(self) -> dict:
        out = {
            "temperatures": self.temperatures,
            "nbeta": self.nbeta,
            "init_loss": self.init_loss,
            "llc_mean": self.llc.mean,
            "llc_std": self.llc.std,
            "llc_se": self.llc.se,
            "llc_per_chain": self.llc.per_chain,
            "rhat": self.diagnostics.rhat,
            "ess": self.diagnostics.ess,
            "frac_below_init": self.diagnostics.frac_below_init,
            "diverged": self.diagnostics.diverged,
            "health": self.health.to_dict(),
            "config": self.config.to_dict(),
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "seconds": self.seconds,
            "probes": {k: p.result().to_dict() for k, p in self.probes.items()},
            "swaps": None if self.swaps is None else self.swaps.to_dict(),
        }
        return jsonable(out)

    def plot_trace(self, temp: int | None = None, inst: int = 0):
        """Evaluation-set loss of every chain, one panel per temperature; burn-in shaded,
        unhealthy temperatures titled as such."""
        import matplotlib.pyplot as plt

        temps = range(len(self.temperatures)) if temp is None else [temp]
        fig, axes = plt.subplots(1, len(temps), figsize=(3.2 * len(temps) + 1, 3.2), squeeze=False)
        x = self.eval_draws.numpy()
        for ax, a in zip(axes[0], temps, strict=True):
            tr = self.eval_traces[a, :, :, inst].numpy()
            for c in range(tr.shape[0]):
                bad = bool(self.diagnostics.diverged[a, c, inst])
                ax.plot(x, tr[c], lw=0.7, ls=":" if bad else "-",
                        label=f"chain {c}" + (" (diverged)" if bad else ""))  # fmt: skip
            ax.axvspan(0, self.burnin, color="grey", alpha=0.2, label="burn-in")
            ax.axhline(float(self.init_loss[inst]), color="k", lw=1, ls="--", label="L_n(w*)")
            ok = bool(self.health.ok[a, inst])
            ax.set(
                xlabel="draw",
                ylabel="evaluation-set loss (model's loss units)",
                title=f"t={self.temperatures[a]:.3g}: λ̂={self.llc.mean[a, inst]:.3g}"
                + ("" if ok else " (UNHEALTHY)"),
            )
            if not ok:
                ax.set_facecolor("#f3e3e3")
        axes[0][0].legend(fontsize=6, ncol=2)
        fig.suptitle(f"SGLD loss traces, instance {inst}")
        fig.tight_layout()
        return fig

    def spectrum(self, inst: int = 0, *, alpha: float = 0.05, z: float = 2.0) -> Spectrum:
        """λ̂ against log temperature, read as flat stretches, jumps and steady changes (a
        piecewise-constant fit with a χ² test, see :mod:`memlens.sampling.spectrum`); unhealthy
        cells are left out of the fit and marked."""
        ok = self.health.ok[:, inst]
        reasons = [
            f"t={float(t):.3g}: {self.health.describe(a, inst)}"
            for a, t in enumerate(self.temperatures)
            if not bool(ok[a])
        ]
        return fit_spectrum(
            self.temperatures,
            self.llc.mean[:, inst],
            self.llc.se[:, inst],
            ok,
            alpha=alpha,
            z=z,
            instance=inst,
            reasons=reasons,
        )
