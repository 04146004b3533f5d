"""``Tempering``: what :func:`memlens.temper` returns: λ̂, diagnostics, per-cell health, the
resolved sampler config, the step-size calibration record, and the streaming probes' results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from memlens.io import jsonable
from memlens.sampling.calibration import Calibration
from memlens.sampling.config import SGLDConfig
from memlens.sampling.diagnostics import LLC, Diagnostics, Health
from memlens.sampling.spectrum import Spectrum, fit_spectrum

__all__ = ["Tempering"]


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
