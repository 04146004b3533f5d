"""Circuit survival under tempering: which circuits are noised out, and at what temperature.

Vaintrob's picture (background.md §5): a trained model is a bucket of circuits, and heating it
noises out the least efficient ones first. Each toy model declares its circuits
(``model.circuits(train)``, design.md §4): bottleneck ``feature:i`` and ``datum:j``, MLP block
``neuron:k`` and ``datum:j``, final layer ``datum:j``. A circuit's *activation* a is a number read
at the model's hooks for a fixed probe input.

This is a :class:`~memlens.probe.StreamingProbe`: at every kept draw of :func:`memlens.temper` the
sampler runs the circuits' probe inputs through all temperatures x chains x instances at once and
hands the hooks over as ``[temp, chain, batch, inst, ...]``. Against the activation a* at w* it
reports, from **healthy chains only** (diverged chains are left out per temperature):

* ``survival = clip(1 − RMS_draws(a − a*) / |a*|, 0, 1)``: 1 when the tempered draws reproduce
  the circuit, 0 once the noise in it is as large as the circuit itself. A temperature whose
  chains all diverged has no measurement: its survival is NaN and the summary says "no healthy
  chains". (``mean_ratio = E[a] / a*`` is reported too.)
* ``noised_out = survival < threshold`` (default 0.5);
* each circuit's *characteristic temperature*: where its survival first crosses the threshold
  going up the ladder of **healthy** cells (log-linear interpolation; +inf if it never does, the
  lowest healthy temperature if it is already dead there), overall and per chain (for confidence
  intervals);
* ``healthy [temp, inst]`` and the reasons, copied from the sampler's per-cell health, so figures
  and summaries never show an unconverged number as if it were converged.

Circuits inactive at w* (a* ≤ ``active_fraction`` x the largest a* of their family in that
instance) have no signal to lose: their survival is NaN and ``active`` marks them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from memlens.data import Batch
from memlens.hooked import Circuits, HookedToyModel
from memlens.probe import ProbeResult, StreamingProbe
from probes.characteristic import censored_median, characteristic_temperature, compare_ratios

__all__ = ["CircuitSurvivalProbe", "SurvivalResult"]


@dataclass
class SurvivalResult(ProbeResult):
    """Survival of every circuit at every temperature, per instance, from healthy chains."""

    temperatures: Float[Tensor, " temp"]
    names: list[str]
    reference: Float[Tensor, "inst circuit"]  # a* at w*
    mean_activation: Float[Tensor, "temp inst circuit"]  # E_draws[a] over healthy chains
    survival: Float[Tensor, "temp inst circuit"]  # NaN where inactive or no healthy chain
    survival_per_chain: Float[Tensor, "temp chain inst circuit"]  # NaN for diverged chains
    noised_out: Tensor  # bool [temp, inst, circuit]
    active: Tensor  # bool [inst, circuit]
    characteristic_temperature: Float[Tensor, "inst circuit"]
    characteristic_per_chain: Float[Tensor, "chain inst circuit"]
    censored: Tensor  # bool [inst, circuit]: already dead at the lowest healthy temperature
    censored_per_chain: Tensor  # bool [chain, inst, circuit]
    healthy: Tensor  # bool [temp, inst]: the sampler's health flag for the cell
    health_reasons: list[list[str]]  # [temp][inst]: "healthy" or the reasons
    chains_used: Tensor  # int [temp, inst]: non-diverged chains
    threshold: float = 0.5
    draws: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def families(self) -> list[str]:
        return [n.split(":", 1)[0] for n in self.names]

    @property
    def mean_ratio(self) -> Tensor:
        return self.mean_activation / self.reference[None]

    def family_mask(self, family: str) -> Tensor:
        return torch.tensor([f == family for f in self.families])

    def family_temperature(self, family: str, inst: int = 0) -> Tensor:
        """Characteristic temperatures of the active circuits of one family in one instance
        (a censored circuit's value is an upper bound: see ``censored``)."""
        mask = self.family_mask(family) & self.active[inst]
        return self.characteristic_temperature[inst][mask]

    def family_median(self, family: str, inst: int = 0) -> tuple[float, bool]:
        """(lower median characteristic temperature, whether it is only an upper bound because
        at least half the family is already dead at the lowest healthy temperature)."""
        mask = self.family_mask(family) & self.active[inst]
        return censored_median(self.characteristic_temperature[inst][mask],
                                self.censored[inst][mask])  # fmt: skip

    def family_median_per_chain(self, family: str, inst: int = 0) -> Tensor:
        """Per chain, the median characteristic temperature of the family's active circuits
        (``[chain]``; +inf counts as dying last; NaN for chains without a measurement or whose
        median is censored)."""
        mask = self.family_mask(family) & self.active[inst]
        tc = self.characteristic_per_chain[:, inst][:, mask]
        cens = self.censored_per_chain[:, inst][:, mask]
        out = torch.full((tc.shape[0],), math.nan, dtype=torch.float64)
        for c in range(tc.shape[0]):
            med, is_cens = censored_median(tc[c], cens[c])
            out[c] = math.nan if is_cens else med
        return out

    def compare_families(self, early: str, late: str) -> dict:
        """Do ``early`` circuits die before ``late`` ones, and by how much? Per instance (seed) and
        per chain, the ratio of the two families' median characteristic temperatures; overall,
        their geometric mean with a 95% t-interval over instances (seeds), how many seeds point
        each way, and the range over chains. Ratios below 1 mean ``early`` dies first. A family
        that survives the whole healthy ladder (median +inf) gives a ratio of 0 or +inf: it counts
        for the direction but not for the size; a median that is only an upper bound (half a
        family is dead at the lowest healthy temperature) counts for neither."""
        per_inst, per_chain = [], []
        for i in range(len(self.active)):
            (ma, ca), (mb, cb) = self.family_median(early, i), self.family_median(late, i)
            # a family surviving the ladder has median +inf: the ratio is then 0 or +inf (a sign
            # without a size); censored medians and inf/inf give no information
            ok = ma == ma and mb == mb and not ca and not cb and not (ma == mb == math.inf)
            per_inst.append((math.inf if mb != math.inf else 0.0) if ok and ma == math.inf
                            else (ma / mb if ok else math.nan))  # fmt: skip
            ca_, cb_ = self.family_median_per_chain(early, i), self.family_median_per_chain(late, i)
            per_chain += [float(x / y) for x, y in zip(ca_, cb_, strict=True)]
        return compare_ratios(early, late, per_inst, per_chain)

    def scalars(self) -> dict[str, float]:
        out = {}
        for fam in dict.fromkeys(self.families):
            tc = torch.cat([self.family_temperature(fam, i) for i in range(len(self.active))])
            tc = tc[torch.isfinite(tc)]
            if len(tc):
                out[f"median_tc_{fam}"] = float(tc.median())
            mask = self.family_mask(fam)
            surv = self.survival[..., mask]
            out[f"dead_fraction_{fam}"] = float(
                self.noised_out[..., mask].double().sum() / torch.isfinite(surv).sum().clamp_min(1)
            )
        return out

    def summary(self, inst: int = 0, max_names: int = 12) -> str:
        n_bad = int((~self.healthy[:, inst]).sum())
        lines = [
            f"circuit survival (instance {inst}; noised out = survival < {self.threshold}; "
            f"{int(self.active[inst].sum())}/{len(self.names)} circuits active at w*; "
            f"{self.draws} draws; healthy chains only"
            + (f"; {n_bad} unhealthy temperature(s) marked" if n_bad else "")
            + ")"
        ]
        seen: set[int] = set()
        for a in torch.argsort(self.temperatures).tolist():
            t = float(self.temperatures[a])
            if int(self.chains_used[a, inst]) == 0:
                lines.append(
                    f"  t={t:.3g}: no healthy chains (all diverged): survival not measured"
                )
                continue
            dead = [k for k in range(len(self.names)) if bool(self.noised_out[a, inst, k])]
            new = [k for k in dead if k not in seen]
            seen.update(dead)
            counts: dict[str, int] = {}
            for k in dead:
                counts[self.families[k]] = counts.get(self.families[k], 0) + 1
            txt = ", ".join(f"{v} {f}" for f, v in counts.items()) or "none"
            shown = ", ".join(self.names[k] for k in new[:max_names])
            more = f" (+{len(new) - max_names} more)" if len(new) > max_names else ""
            flag = "" if self.healthy[a, inst] else f" [UNHEALTHY: {self.health_reasons[a][inst]}]"
            lines.append(
                f"  t={t:.3g}: noised out {txt}" + (f"; newly: {shown}{more}" if new else "") + flag
            )
        for fam in dict.fromkeys(self.families):
            tc = self.family_temperature(fam, inst)
            med, cens = self.family_median(fam, inst)
            mask = self.family_mask(fam) & self.active[inst]
            n_cens = int(self.censored[inst][mask].sum())
            txt = "none" if med != med else ("≤ " if cens else "") + f"{med:.3g}"
            lines.append(
                f"  {fam}: {len(tc)} active, median characteristic temperature {txt}, "
                f"{int(torch.isinf(tc).sum())} survive the whole healthy ladder, {n_cens} dead "
                "at the lowest healthy temperature already"
            )
        return "\n".join(lines)

    def order(self, inst: int = 0) -> list[int]:
        """Circuit indices grouped by family, each family ordered by characteristic temperature
        (inactive circuits last)."""
        out = []
        for fam in dict.fromkeys(self.families):
            ks = [k for k, f in enumerate(self.families) if f == fam]
            tc = self.characteristic_temperature[inst]
            ks.sort(key=lambda k: (not bool(self.active[inst, k]), float(tc[k].nan_to_num(1e300))))
            out += ks
        return out

    def plot(self, ax=None, inst: int = 0):
        """Heat map of survival: circuits (grouped by family, ordered by characteristic
        temperature) x temperature (ascending); unhealthy temperatures hatched, temperatures
        without a healthy chain grey."""
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle

        order = self.order(inst)
        t_order = torch.argsort(self.temperatures)
        s = self.survival[t_order][:, inst][:, order].T.numpy()  # [circuit, temp]
        fig = (
            ax.figure
            if ax is not None
            else plt.figure(figsize=(6.8, 0.5 + min(9, 0.06 * len(order) + 3)))
        )
        ax = ax or fig.add_subplot()
        cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
        im = ax.imshow(
            np.ma.masked_invalid(s),
            aspect="auto",
            cmap=cmap,
            vmin=0,
            vmax=1,
            interpolation="nearest",
        )
        for col, a in enumerate(t_order.tolist()):
            if not bool(self.healthy[a, inst]):
                ax.add_patch(
                    Rectangle(
                        (col - 0.5, -0.5),
                        1,
                        len(order),
                        fill=False,
                        hatch="xx",
                        edgecolor="red",
                        lw=0,
                    )
                )
        temps = self.temperatures[t_order].tolist()
        step = max(1, len(temps) // 8)
        ax.set_xticks(range(0, len(temps), step))
        ax.set_xticklabels([f"{t:.2g}" for t in temps[::step]], rotation=45)
        fams = [self.families[k] for k in order]
        start = 0
        ticks, labels = [], []
        for k in range(1, len(fams) + 1):
            if k == len(fams) or fams[k] != fams[start]:
                ticks.append((start + k - 1) / 2)
                labels.append(f"{fams[start]} ({k - start})")
                if k < len(fams):
                    ax.axhline(k - 0.5, color="white", lw=2)
                start = k
        ax.set_yticks(ticks)
        ax.set_yticklabels(labels)
        ax.set(
            xlabel="temperature t (dimensionless, log-spaced; inverse temperature nβ/t)",
            ylabel="circuits (grouped by family; within a family\n"
            "ordered by characteristic temperature)",
            title=f"circuit survival, instance {inst}\n(grey: inactive or no healthy chain; "
            f"red hatching: unhealthy sampler cell;\nred line: survival = {self.threshold:g}, "
            "where a circuit is noised out)",
        )
        if np.isfinite(s).any() and s.shape[1] > 1:  # where survival crosses the threshold
            ax.contour(np.ma.masked_invalid(s), levels=[self.threshold], colors="red",
                       linewidths=1.2)  # fmt: skip
        bar = fig.colorbar(
            im, ax=ax, label=f"survival 1 − RMS(a − a*)/|a*| (noised out below {self.threshold})"
        )
        bar.ax.axhline(self.threshold, color="red", lw=2)
        fig.tight_layout()
        return fig


class CircuitSurvivalProbe(StreamingProbe):
    """Streams over :func:`memlens.temper` draws; see the module docstring.

    Args:
        threshold: survival below this marks a circuit noised out (default 0.5).
        active_fraction: a circuit is active at w* when a* exceeds this fraction of the largest
            a* in its family (per instance).
        train: accepted for the uniform probe constructor; the sampler passes the training set.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        active_fraction: float = 0.05,
        train: Tensor | Batch | None = None,
    ):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}")
        if not (0 < threshold < 1):
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        if not (0 <= active_fraction < 1):
            raise ValueError(f"active_fraction must be in [0, 1), got {active_fraction!r}")
        self.threshold = float(threshold)
        self.active_fraction = float(active_fraction)
        self._result: SurvivalResult | None = None

    def begin(
        self, model: HookedToyModel, data: Batch, temperatures: Tensor, chains: int
    ) -> Tensor:
        self.circuits: Circuits = model.circuits(data)
        self.temperatures = temperatures.detach().cpu().float()
        acts: dict[str, Tensor] = {}

        def keep(act: Tensor, hook) -> None:
            acts[hook.name] = act.detach()

        with torch.no_grad(), model.hooks(fwd_hooks=[(h, keep) for h in self.circuits.hooks]):
            model(self.circuits.inputs)
        self.ref = self.circuits.readout(acts).double()  # [inst, circuit]
        shape = (len(temperatures), chains, model.n_instances, len(self.circuits.names))
        self.sum = torch.zeros(shape, dtype=torch.float64, device=self.ref.device)
        self.sum_sq_dev = torch.zeros_like(self.sum)
        self.count = 0
        self._result = None
        return self.circuits.inputs

    def reads(self) -> tuple[str, ...]:
        return tuple(self.circuits.hooks)

    def on_draw(self, acts: dict[str, Tensor], draw: int) -> None:
        a = self.circuits.readout(acts).double()  # [temp, chain, inst, circuit]
        self.sum += a
        self.sum_sq_dev += (a - self.ref) ** 2
        self.count += 1

    def end(self, tempering) -> None:
        if self.count == 0:
            raise ValueError("the survival probe saw no draws (draws must exceed burnin)")
        ok = (~tempering.diagnostics.diverged).to(self.sum.device)  # [temp, chain, inst]
        ref = self.ref
        active = _active(ref, self.circuits.families, self.active_fraction)
        denom = ref.abs().clamp_min(1e-12)
        msd_c = self.sum_sq_dev / self.count  # [temp, chain, inst, circuit]
        surv_c = (1 - msd_c.sqrt() / denom).clamp(0, 1)
        surv_c = surv_c.masked_fill(~ok[..., None] | ~active[None, None], math.nan)
        w = ok[..., None].double()
        n_ok = w.sum(1)  # [temp, inst, 1]
        mean = (self.sum.nan_to_num(0) * w).sum(1) / n_ok.clamp_min(1) / self.count
        msd = (msd_c.nan_to_num(0) * w).sum(1) / n_ok.clamp_min(1)
        surv = (1 - msd.sqrt() / denom[None]).clamp(0, 1)
        surv = surv.masked_fill(~active[None] | (n_ok == 0), math.nan)
        mean = mean.masked_fill(n_ok == 0, math.nan)
        healthy = tempering.health.ok.clone()
        temps = self.temperatures.double()
        use = healthy & (n_ok[..., 0].cpu() > 0)  # [temp, inst]
        tc, cens = characteristic_temperature(temps, surv.cpu(), self.threshold, use)
        tc = tc.masked_fill(~active.cpu(), math.nan)
        per = [
            characteristic_temperature(
                temps, surv_c[:, c].cpu(), self.threshold, use & ok[:, c].cpu()
            )
            for c in range(surv_c.shape[1])
        ]
        tc_c = torch.stack([p[0] for p in per]).masked_fill(~active.cpu()[None], math.nan)
        cens_c = torch.stack([p[1] for p in per]) & active.cpu()[None]
        self._result = SurvivalResult(
            temperatures=self.temperatures,
            names=list(self.circuits.names),
            reference=ref.float().cpu(),
            mean_activation=mean.float().cpu(),
            survival=surv.float().cpu(),
            survival_per_chain=surv_c.float().cpu(),
            noised_out=(surv < self.threshold).cpu(),
            active=active.cpu(),
            characteristic_temperature=tc.float(),
            characteristic_per_chain=tc_c.float(),
            censored=cens & active.cpu(),
            censored_per_chain=cens_c,
            healthy=healthy,
            health_reasons=[
                [tempering.health.describe(a, i) for i in range(healthy.shape[1])]
                for a in range(healthy.shape[0])
            ],
            chains_used=n_ok[..., 0].long().cpu(),
            threshold=self.threshold,
            draws=self.count,
        )

    def result(self) -> SurvivalResult:
        if self._result is None:
            raise ValueError("no result yet: pass this probe to memlens.temper(..., probes=[...])")
        return self._result


def _active(ref: Tensor, families: list[str], fraction: float) -> Tensor:
    active = torch.zeros_like(ref, dtype=torch.bool)
    for fam in dict.fromkeys(families):
        mask = torch.tensor([f == fam for f in families], device=ref.device)
        top = ref[:, mask].max(1, keepdim=True).values.clamp_min(1e-12)
        active[:, mask] = ref[:, mask] > fraction * top
    return active
