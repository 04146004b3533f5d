"""Vaintrob's bucket of circuits, measured: each circuit's loss contribution, complexity and
efficiency, and the characteristic temperature they predict.

A trained model is a bucket of circuits (background.md §5); each buys some loss reduction at some
complexity cost, and tempering noises out the least efficient first. Per circuit c (declared by
``model.circuits(train)``, removed by its ``ablations`` masks):

* **loss contribution** ΔL_c = L_n(w*, c ablated) − L_n(w*): the rise in the training loss when
  the circuit is ablated at its hook;
* **complexity** Δλ_c = λ̂(w*) − λ̂_c(w*), the drop in the local learning coefficient when the
  circuit is ablated during sampling (the weights that only served it stop mattering). All
  circuits and the intact model run as arms of one batched sampler whose chains share their noise
  (coupled), so these differences are measured with little noise; the step size and steps per
  draw come from ``step_size="auto"`` on the intact model;
* **efficiency** ΔL_c / Δλ_c, and the **predicted characteristic temperature**
  t̂_c = nβ ΔL_c / Δλ_c: the circuit survives while the loss it buys, (nβ/t) ΔL_c in units of the
  tempered posterior, outweighs its complexity Δλ_c.

Given a :class:`~probes.survival.SurvivalResult` of the same model, :func:`measure_bucket` also
compares t̂_c with the measured characteristic temperatures (healthy, uncensored, finite ones
only): a log-log scatter and Spearman's rank correlation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from memlens.data import Batch
from memlens.hooked import HookedToyModel
from memlens.probe import ProbeResult
from memlens.sampling import SGLDConfig, calibrate
from memlens.sampling.diagnostics import analyse
from memlens.sampling.llc import prepare
from memlens.sampling.sgld import Plan, expand_batch, sample

__all__ = ["BucketResult", "measure_bucket", "spearman"]


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN with fewer than 3 pairs."""
    if len(x) < 3:
        return math.nan

    def ranks(v: Tensor) -> Tensor:
        v = v.double()
        order = torch.argsort(v)
        r = torch.empty_like(v)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for val in torch.unique(v):  # average ranks of ties
            tie = v == val
            r[tie] = r[tie].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / den if den > 0 else math.nan


@dataclass
class BucketResult(ProbeResult):
    """Per circuit and instance: loss contribution, complexity, efficiency, predicted and
    measured characteristic temperature."""

    names: list[str]
    nbeta: Tensor  # [inst]
    loss_contribution: Tensor  # [inst, circuit] ΔL
    complexity: Tensor  # [inst, circuit] Δλ
    complexity_se: Tensor  # [inst, circuit]
    llc: Tensor  # [inst] λ̂ of the intact model
    predicted: Tensor  # [inst, circuit] t̂ = nβ ΔL / Δλ (NaN where Δλ is not resolved above 0)
    measured: Tensor | None = None  # [inst, circuit] characteristic temperatures (usable: finite)
    rank_correlation: float = math.nan  # Spearman between predicted and measured, pooled
    rank_correlation_per_instance: list[float] = field(default_factory=list)
    healthy: Tensor | None = None  # bool [inst]: the sampler cells behind Δλ
    health_reasons: list[str] = field(default_factory=list)

    @property
    def families(self) -> list[str]:
        return [n.split(":", 1)[0] for n in self.names]

    @property
    def efficiency(self) -> Tensor:
        return self.loss_contribution / self.complexity

    def pairs(self) -> tuple[Tensor, Tensor, Tensor]:
        """(predicted, measured, family index) over the usable (instance, circuit) pairs."""
        if self.measured is None:
            raise ValueError("no measured characteristic temperatures: pass survival=")
        ok = torch.isfinite(self.predicted) & torch.isfinite(self.measured) & (self.predicted > 0)
        fams = list(dict.fromkeys(self.families))
        fam = torch.tensor([fams.index(f) for f in self.families]).expand_as(ok)
        return self.predicted[ok], self.measured[ok], fam[ok]

    def summary(self, inst: int = 0) -> str:
        lines = [
            f"bucket of circuits (instance {inst}): λ̂ = {float(self.llc[inst]):.3g}, nβ = "
            f"{float(self.nbeta[inst]):.3g}; predicted characteristic temperature "
            "t̂ = nβ·ΔL/Δλ"
        ]
        if self.healthy is not None and not bool(self.healthy[inst]):
            lines.append(f"  UNHEALTHY sampler cell: {self.health_reasons[inst]}")
        for fam in dict.fromkeys(self.families):
            mask = torch.tensor([f == fam for f in self.families])
            dl, dlam = self.loss_contribution[inst][mask], self.complexity[inst][mask]
            pred = self.predicted[inst][mask]
            fin = pred[torch.isfinite(pred)]
            med = float(fin.median()) if len(fin) else math.nan
            lines.append(
                f"  {fam}: median ΔL {float(dl.median()):.3g}, median Δλ "
                f"{float(dlam.median()):.3g}, median t̂ {med:.3g} ({len(fin)}/{int(mask.sum())} "
                "resolved)"
            )
        if self.measured is not None:
            per = ", ".join(f"{r:.2f}" for r in self.rank_correlation_per_instance)
            lines.append(
                f"  predicted vs measured characteristic temperature: Spearman ρ = "
                f"{self.rank_correlation:.2f} pooled over {len(self.pairs()[0])} circuits "
                f"(per instance: {per})"
            )
        return "\n".join(lines)

    def plot(self, ax=None):
        """Measured against predicted characteristic temperature, log-log, per family."""
        import matplotlib.pyplot as plt

        fig = ax.figure if ax is not None else plt.figure(figsize=(5.5, 4.5))
        ax = ax or fig.add_subplot()
        pred, meas, fam = self.pairs()
        names = list(dict.fromkeys(self.families))
        for k, name in enumerate(names):
            sel = fam == k
            ax.loglog(pred[sel].numpy(), meas[sel].numpy(), "o", ms=4, alpha=0.7,
                      label=f"{name} ({int(sel.sum())})")  # fmt: skip
        if len(pred):
            lo = float(torch.cat([pred, meas]).min()) / 2
            hi = float(torch.cat([pred, meas]).max()) * 2
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="measured = predicted")
        ax.set(
            xlabel="predicted t̂ = nβ·ΔL/Δλ (dimensionless temperature)",
            ylabel="measured characteristic temperature (dimensionless)",
            title=f"bucket of circuits: Spearman ρ = {self.rank_correlation:.2f}",
        )
        ax.legend(fontsize=7)
        fig.tight_layout()
        return fig


def _ablation_hooks(masks: dict[str, Tensor], arms: int, chains: int) -> list:
    """Forward hooks multiplying each hook's activation by its arm's mask (arm 0: intact).

    Every forward pass these hooks see runs over the training set in order, possibly in row
    chunks (``HookedToyModel.loss`` chunks large batches), so each hook keeps its position in the
    training set and wraps around after T rows."""
    hooks = []
    for name, m in masks.items():  # m: [circuit, T, inst, ...]
        full = torch.cat([torch.ones_like(m[:1]), m])[:arms]  # [arm, T, inst, ...]
        full = full[:, None].expand(arms, chains, *full.shape[1:])  # [arm, chain, T, inst, ...]
        T = full.shape[2]
        full = full.movedim(2, 0).reshape(T, -1, *full.shape[4:])  # [T, arm*chain*inst, ...]
        hooks.append((name, _RowMask(full)))
    return hooks


class _RowMask:
    """A forward hook applying rows ``pos .. pos + batch`` of a mask, then advancing ``pos``."""

    def __init__(self, mask: Tensor):
        self.mask, self.pos = mask, 0

    def __call__(self, act: Tensor, hook) -> Tensor:
        n, T = act.shape[0], self.mask.shape[0]
        if self.pos + n > T:
            raise ValueError(f"ablation hook saw {n} rows at row {self.pos} of a {T}-point set")
        out = act * self.mask[self.pos : self.pos + n]
        self.pos = (self.pos + n) % T
        return out


def measure_bucket(
    model: HookedToyModel,
    train: Tensor | Batch,
    survival=None,
    *,
    temperature: float = 1.0,
    chains: int = 4,
    draws: int = 200,
    progress: bool = True,
    config: SGLDConfig | None = None,
    **settings,
) -> BucketResult:
    """Measure the bucket (see the module docstring) at ``temperature``; full-batch only (the
    ablation masks index training points). ``settings`` are SGLDConfig fields (``localization``,
    ``seed``, ``max_steps``, ...); the step size is chosen by the automatic calibration."""
    cfg = SGLDConfig.make(config, chains=chains, draws=draws, **settings)
    if cfg.batch_size is not None:
        raise ValueError(
            f"the bucket needs full-batch gradients (batch_size=None), got {cfg.batch_size}"
        )
    setup = prepare(model, train, cfg)
    circuits = model.circuits(setup.data)
    if not circuits.ablations:
        raise ValueError(f"{type(model).__name__}.circuits() declares no ablations")
    C, n_inst = len(circuits.names), model.n_instances
    arms = C + 1
    with torch.no_grad():  # ΔL: every ablation at once, one copy per arm
        once = model.expand(arms)
        with once.hooks(fwd_hooks=_ablation_hooks(circuits.ablations, arms, 1)):
            ablated = once.loss(expand_batch(setup.data, arms)).view(arms, n_inst).cpu()
    cal = calibrate(model, setup.data, [temperature], progress=progress, config=cfg)
    nb = setup.nbeta / float(temperature)
    plan = Plan(
        nbeta=nb[None].expand(arms, n_inst).clone(),
        step=cal.step_size[0][None].expand(arms, n_inst).clone(),
        gamma=cfg.localization,
        chains=cfg.chains,
        draws=cfg.n_draws,
        thin=cal.thin,
        burnin=cfg.n_burnin,
        batch_size=None,
        seed=cfg.seed,
        eval_every=1,
        stream=[0] * arms,  # coupled: every arm reads the same noise
        hooks=_ablation_hooks(circuits.ablations, arms, cfg.chains),
        # the calibrated step is that of the preconditioned sampler (when it is one)
        precond=None if cal.precond is None else cal.precond[0][None].expand(arms, -1, -1),
    )
    run = sample(setup, plan, progress=progress, desc="bucket")
    llc, diag = analyse(run.loss, run.eval_loss, run.eval_draws, run.finite, run.diffusion,
                        init_loss=ablated, eval_init=ablated, nbeta=plan.nbeta,
                        burnin=cfg.n_burnin, n_params=setup.n_params, blowup=cfg.blowup,
                        max_diffusion=cfg.max_diffusion)  # fmt: skip
    per_chain = llc.per_chain.double()  # [arm, chain, inst]
    diff = per_chain[:1] - per_chain[1:]  # [circuit, chain, inst], paired by chain
    dlam = diff.nanmean(1).T.float()  # [inst, circuit]
    n_ok = torch.isfinite(diff).sum(1).clamp_min(2).T
    dlam_se = (diff.nan_to_num(0).std(1).T / n_ok.sqrt()).float()
    dloss = (ablated[1:] - ablated[:1]).T.float()  # [inst, circuit]
    resolved = dlam > 2 * dlam_se
    predicted = torch.where(resolved, nb[:, None].float() * dloss / dlam, math.nan)
    ok0 = ~diag.diverged[0].any(0) & (diag.rhat[0] <= cfg.max_rhat)
    result = BucketResult(
        names=list(circuits.names),
        nbeta=nb.float(),
        loss_contribution=dloss,
        complexity=dlam,
        complexity_se=dlam_se,
        llc=llc.mean[0],
        predicted=predicted,
        healthy=ok0 & bool(~cal.bias_failed.any()),
        health_reasons=[
            "healthy" if bool(ok0[i]) else f"R-hat {float(diag.rhat[0, i]):.2f} or divergence"
            for i in range(n_inst)
        ],
    )
    if survival is not None:
        _compare(result, survival)
    return result


def _compare(result: BucketResult, survival) -> None:
    if list(survival.names) != result.names:
        raise ValueError("the survival result comes from different circuits than this model's")
    meas = survival.characteristic_temperature.clone()
    meas[survival.censored | ~survival.active | torch.isinf(meas)] = math.nan
    result.measured = meas
    pred, m, _ = result.pairs()
    result.rank_correlation = spearman(pred.log(), m.log())
    per = []
    for i in range(len(meas)):
        ok = torch.isfinite(result.predicted[i]) & torch.isfinite(meas[i])
        per.append(spearman(result.predicted[i][ok], meas[i][ok]))
    result.rank_correlation_per_instance = per
