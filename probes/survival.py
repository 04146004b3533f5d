"""Circuit survival under tempering: which circuits are noised out, and at what temperature.

Vaintrob's picture (background.md §5): a trained model is a bucket of circuits, and heating it
noises out the least efficient ones first. Each toy model declares its circuits
(``model.circuits(train)``, design.md §4): bottleneck ``feature:i`` and ``datum:j``, MLP block
``neuron:k`` and ``datum:j``, final layer ``datum:j``. A circuit's *activation* a is a number read
at the model's hooks for a fixed probe input.

This probe streams over :func:`memlens.temper`'s draws. At every kept draw it runs the circuits'
probe inputs through the expanded model (all temperatures x chains x instances at once) and
accumulates each circuit's activation. Against the activation a* at w* it reports

* ``survival = clip(1 − RMS_draws(a − a*) / |a*|, 0, 1)``: 1 when the tempered draws reproduce
  the circuit, 0 once the noise in it is as large as the circuit itself. (The plain ratio of mean
  activations, ``mean_ratio = E[a] / a*``, is reported too, but it does not fall to 0 when weights
  are noised: e.g. a tied bottleneck's ReLU(Wᵀ W x) grows in expectation under isotropic noise.)
* ``noised_out = survival < threshold`` (default threshold 0.5: the typical deviation exceeds half
  the circuit's activation);
* each circuit's *characteristic temperature*: where its survival first crosses the threshold
  going up the ladder (log-linear interpolation; +inf if it never does, the lowest temperature if
  it is already dead there).

Circuits inactive at w* (a* ≤ ``active_fraction`` x the largest a* of their family in that
instance, e.g. dead neurons or points the model never fitted) have no signal to lose: their
survival is NaN, they are never flagged, and ``active`` marks them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from memlens.data import Batch
from memlens.hooked import Circuits, HookedToyModel
from memlens.probe import Probe, ProbeResult

__all__ = ["CircuitSurvivalProbe", "SurvivalResult"]


@dataclass
class SurvivalResult(ProbeResult):
    """Survival of every circuit at every temperature, per instance."""

    temperatures: Float[Tensor, " temp"]
    names: list[str]
    reference: Float[Tensor, "inst circuit"]  # a* at w*
    mean_activation: Float[Tensor, "temp inst circuit"]  # E_draws[a]
    survival: Float[Tensor, "temp inst circuit"]  # NaN where inactive at w*
    noised_out: Tensor  # bool [temp, inst, circuit]
    active: Tensor  # bool [inst, circuit]
    characteristic_temperature: Float[Tensor, "inst circuit"]
    threshold: float = 0.5
    draws: int = 0

    @property
    def families(self) -> list[str]:
        return [n.split(":", 1)[0] for n in self.names]

    @property
    def mean_ratio(self) -> Tensor:
        return self.mean_activation / self.reference[None]

    def family_temperature(self, family: str, inst: int = 0) -> Tensor:
        """Characteristic temperatures of the active circuits of one family in one instance."""
        mask = torch.tensor([f == family for f in self.families]) & self.active[inst]
        return self.characteristic_temperature[inst][mask]

    def scalars(self) -> dict[str, float]:
        out = {}
        for fam in dict.fromkeys(self.families):
            tc = torch.cat([self.family_temperature(fam, i) for i in range(len(self.active))])
            tc = tc[torch.isfinite(tc)]
            if len(tc):
                out[f"median_tc_{fam}"] = float(tc.median())
            mask = torch.tensor([f == fam for f in self.families])
            surv = self.survival[..., mask]
            out[f"dead_fraction_{fam}"] = float(
                self.noised_out[..., mask].double().sum() / torch.isfinite(surv).sum().clamp_min(1)
            )
        return out

    def summary(self, inst: int = 0, max_names: int = 12) -> str:
        lines = [
            f"circuit survival (instance {inst}; noised out = survival < {self.threshold}; "
            f"{int(self.active[inst].sum())}/{len(self.names)} circuits active at w*; "
            f"{self.draws} draws)"
        ]
        seen: set[int] = set()
        for a in torch.argsort(self.temperatures).tolist():
            dead = [k for k in range(len(self.names)) if bool(self.noised_out[a, inst, k])]
            new = [k for k in dead if k not in seen]
            seen.update(dead)
            counts = {}
            for k in dead:
                counts[self.families[k]] = counts.get(self.families[k], 0) + 1
            txt = ", ".join(f"{v} {f}" for f, v in counts.items()) or "none"
            shown = ", ".join(self.names[k] for k in new[:max_names])
            more = f" (+{len(new) - max_names} more)" if len(new) > max_names else ""
            lines.append(
                f"  t={float(self.temperatures[a]):.3g}: noised out {txt}"
                + (f"; newly: {shown}{more}" if new else "")
            )
        for fam in dict.fromkeys(self.families):
            tc = self.family_temperature(fam, inst)
            fin = tc[torch.isfinite(tc)]
            med = f"{float(fin.median()):.3g}" if len(fin) else "none die"
            lines.append(
                f"  {fam}: {len(tc)} active, median characteristic temperature {med}, "
                f"{len(tc) - len(fin)} survive the whole ladder"
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
        temperature) x temperature (ascending)."""
        import matplotlib.pyplot as plt

        order = self.order(inst)
        t_order = torch.argsort(self.temperatures)
        s = self.survival[t_order][:, inst][:, order].T.numpy()  # [circuit, temp]
        fig = (
            ax.figure
            if ax is not None
            else plt.figure(figsize=(6.5, 0.5 + min(9, 0.06 * len(order) + 3)))
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
            title=f"circuit survival, instance {inst} (grey: inactive at w*)",
        )
        fig.colorbar(
            im, ax=ax, label=f"survival 1 − RMS(a − a*)/|a*| (noised out below {self.threshold})"
        )
        fig.tight_layout()
        return fig


class CircuitSurvivalProbe(Probe):
    """Streams over :func:`memlens.temper` draws; see the module docstring.

    Args:
        threshold: survival below this marks a circuit noised out (default 0.5).
        active_fraction: a circuit is active at w* when a* exceeds this fraction of the largest
            a* in its family (per instance).
    """

    hooks = ()

    def __init__(
        self,
        train: Tensor | Batch | None = None,
        threshold: float = 0.5,
        active_fraction: float = 0.05,
    ):
        super().__init__(train)
        if not (0 < threshold < 1):
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        if not (0 <= active_fraction < 1):
            raise ValueError(f"active_fraction must be in [0, 1), got {active_fraction!r}")
        self.threshold = float(threshold)
        self.active_fraction = float(active_fraction)
        self._result: SurvivalResult | None = None

    def read(self, model: HookedToyModel):
        raise ValueError(
            "the survival probe streams over tempered draws: use "
            "memlens.temper(model, train, ..., probes=['survival'])"
        )

    # -- the streaming protocol of memlens.temper ----------------------------------------------
    def begin_tempering(
        self, model: HookedToyModel, data: Batch, temperatures: Tensor, chains: int
    ) -> None:
        self.circuits: Circuits = model.circuits(data)
        self.temperatures = temperatures.detach().cpu().float()
        self.chains = int(chains)
        self.n_inst = model.n_instances
        self.ref = self._read(model, 1)[0].detach()  # [inst, circuit]
        n_c = len(self.circuits.names)
        shape = (len(temperatures), chains, self.n_inst, n_c)
        dev = self.ref.device
        self.sum = torch.zeros(shape, dtype=torch.float64, device=dev)
        self.sum_sq_dev = torch.zeros(shape, dtype=torch.float64, device=dev)
        self.count = 0
        self._inputs = None
        self._result = None

    def _read(self, model: HookedToyModel, copies: int) -> Tensor:
        """Circuit activations of every copy: ``[copies, inst, circuit]``."""
        c = self.circuits
        if self._inputs_for(copies) is None:
            self._inputs = (copies, c.inputs.repeat(1, copies, 1))
        x = self._inputs[1]
        acts: dict[str, Tensor] = {}

        def keep(act: Tensor, hook) -> None:
            acts[hook.name] = act.detach()

        with torch.no_grad(), model.hooks(fwd_hooks=[(h, keep) for h in c.hooks]):
            model(x)
        inst = self.n_inst
        shaped = {}
        for h, a in acts.items():  # [n_probe, copies*inst, ...] -> [copies, n_probe, inst, ...]
            a = a.reshape(a.shape[0], copies, inst, *a.shape[2:])
            shaped[h] = a.movedim(1, 0)
        return c.readout(shaped)

    def _inputs_for(self, copies: int):
        if getattr(self, "_inputs", None) is not None and self._inputs[0] == copies:
            return self._inputs
        return None

    def on_draw(self, expanded: HookedToyModel, draw: int) -> None:
        copies = expanded.n_instances // self.n_inst
        a = self._read(expanded, copies).double()  # [copies, inst, circuit]
        a = a.reshape(len(self.temperatures), self.chains, self.n_inst, -1)
        self.sum += a
        self.sum_sq_dev += (a - self.ref.double()) ** 2
        self.count += 1

    def end_tempering(self, tempering) -> None:
        if self.count == 0:
            raise ValueError("the survival probe saw no draws (draws must exceed burnin)")
        ok = (~tempering.diagnostics.diverged).to(self.sum.device).double()  # [temp, chain, inst]
        n_ok = ok.sum(1).clamp_min(1)[..., None]  # [temp, inst, 1]
        w = ok[..., None]
        mean = (self.sum.nan_to_num(0) * w).sum(1) / n_ok / self.count  # [temp, inst, circuit]
        msd = (self.sum_sq_dev.nan_to_num(0) * w).sum(1) / n_ok / self.count
        ref = self.ref.double()
        fams = self.circuits.families
        active = torch.zeros_like(ref, dtype=torch.bool)
        for fam in dict.fromkeys(fams):
            mask = torch.tensor([f == fam for f in fams], device=ref.device)
            top = ref[:, mask].max(1, keepdim=True).values.clamp_min(1e-12)
            active[:, mask] = ref[:, mask] > self.active_fraction * top
        surv = (1 - msd.sqrt() / ref.abs().clamp_min(1e-12)[None]).clamp(0, 1)
        surv = surv.masked_fill(~active[None], float("nan"))
        dead = surv < self.threshold  # NaN compares False
        tc = _characteristic(self.temperatures.double(), surv.cpu(), self.threshold)
        tc = tc.masked_fill(~active.cpu(), float("nan"))
        self._result = SurvivalResult(
            temperatures=self.temperatures,
            names=list(self.circuits.names),
            reference=ref.float().cpu(),
            mean_activation=mean.float().cpu(),
            survival=surv.float().cpu(),
            noised_out=dead.cpu(),
            active=active.cpu(),
            characteristic_temperature=tc.float(),
            threshold=self.threshold,
            draws=self.count,
        )

    def result(self) -> SurvivalResult:
        if self._result is None:
            raise ValueError("no result yet: pass this probe to memlens.temper(..., probes=[...])")
        return self._result


def _characteristic(temps: Tensor, surv: Tensor, thr: float) -> Tensor:
    """First upward crossing of ``thr`` along ascending temperature, log-linearly interpolated."""
    order = torch.argsort(temps)
    t = temps[order].log()
    s = surv[order].double()  # [temp, inst, circuit]
    out = torch.full(s.shape[1:], math.inf, dtype=torch.float64)
    decided = torch.zeros(s.shape[1:], dtype=torch.bool)
    below0 = s[0] < thr
    out[below0] = float(t[0].exp())
    decided |= below0
    for k in range(1, len(t)):
        cross = (s[k] < thr) & ~decided
        s0, s1 = s[k - 1], s[k]
        frac = ((s0 - thr) / (s0 - s1).clamp_min(1e-12)).clamp(0, 1)
        tk = (t[k - 1] + frac * (t[k] - t[k - 1])).exp()
        out = torch.where(cross, tk, out)
        decided |= cross
    return out
