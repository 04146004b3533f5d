"""Localised, tempered SGLD over batched chains and temperatures; the local learning coefficient.

Tempering a trained model w* samples the localised, tempered posterior (background.md §5)

    p(w) ∝ exp(−(nβ/t) L_n(w) − (γ/2) ‖w − w*‖²)

with stochastic-gradient Langevin dynamics, one step of which is

    Δw = −(ε/2) ((nβ/t) ∇L(w) + γ (w − w*)) + N(0, ε),

and estimates the local learning coefficient at temperature t as

    λ̂(w*) = (nβ/t) (E_w[L_n(w)] − L_n(w*)).

``nβ`` defaults to n / log n with n the number of **training points** (per instance), not the batch
size. ε is ``step_size``, γ is ``localization``, t runs over ``temperatures``.

Batching. Every step runs all temperatures × chains × model instances in one forward and one
backward pass through ``model.expand(temps * chains)``: copy ``c = t_index * chains + chain`` of
instance ``i`` is expanded instance ``c * n_instances + i``, so every per-instance tensor reshapes
to ``[temp, chain, inst, ...]``. Each (temperature, chain) pair owns a random stream seeded from
``(seed, temperature index, chain index)`` that draws its minibatch indices and its Langevin noise,
so chain ``k`` gives the same trace whether it runs alone or beside others. ``L_n(w*)`` is computed
on the full training set; the loss recorded at each draw is the minibatch loss at that draw (as in
devinterp). The first ``burnin`` of the ``draws`` recorded draws are kept in the traces (for
``plot_trace``) but excluded from every estimate and diagnostic.

Streaming probe protocol. A probe passed in ``probes=`` (a registered name, a class or an instance)
takes part through optional methods, looked up with ``getattr``:

* ``begin_tempering(model, data, temperatures, chains)``: called once before sampling with the
  trained model at w* (``data`` is the training :class:`~memlens.data.Batch`); compute references.
* ``on_draw(expanded, draw)`` (required): called under ``torch.no_grad()`` at every kept draw
  (after burn-in, every ``probe_every`` draws) with the expanded model holding the current weights
  of all temperatures × chains × instances. Run what you need through its hooks, e.g. with
  ``expanded.hooks(fwd_hooks=...)`` or ``memlens.probing(expanded, ...)``; reshape activations
  ``[batch, temps*chains*inst, ...]`` to ``[batch, temps, chains, inst, ...]``.
* ``end_tempering(tempering)``: called once with the finished :class:`Tempering`, whose
  ``diagnostics.diverged`` ``[temp, chain, inst]`` marks chains to leave out.

``Tempering.probe(name)`` then returns ``probe.result()``. Draws are not kept in memory unless
``keep_draws=True`` (then ``Tempering.kept_draws`` holds one expanded state dict per kept draw).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from memlens.data import Batch, as_batch
from memlens.data import mix_seed as _mix
from memlens.hooked import HookedToyModel
from memlens.io import jsonable
from memlens.probe import Probe, resolve_probe
from memlens.training import evaluate

__all__ = [
    "temper",
    "estimate_llc",
    "calibrate",
    "Tempering",
    "LLC",
    "Diagnostics",
    "Spectrum",
    "Calibration",
    "split_rhat",
    "effective_sample_size",
]

DEFAULT_BURNIN_FRACTION = 0.25


# ------------------------------------------------------------------------------ diagnostics
def split_rhat(x: np.ndarray) -> float:
    """Split R-hat (Gelman et al., BDA3 §11.4) of ``x`` ``[chains, draws]``; NaN if undefined."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"split_rhat expects [chains, draws], got shape {x.shape}")
    half = x.shape[1] // 2
    if x.shape[0] < 1 or half < 2:
        return float("nan")
    xs = np.concatenate([x[:, :half], x[:, x.shape[1] - half :]], axis=0)
    w = xs.var(axis=1, ddof=1).mean()
    b = half * xs.mean(axis=1).var(ddof=1)
    if not np.isfinite(w) or w <= 0:
        return float("nan")
    var_plus = (half - 1) / half * w + b / half
    return float(np.sqrt(var_plus / w))


def effective_sample_size(x: np.ndarray) -> float:
    """Multi-chain effective sample size of ``x`` ``[chains, draws]`` (split chains, Geyer's
    initial monotone sequence; the estimator of BDA3 §11.5 / Stan)."""
    x = np.asarray(x, dtype=np.float64)
    half = x.shape[1] // 2
    if half < 4:
        return float("nan")
    x = np.concatenate([x[:, :half], x[:, x.shape[1] - half :]], axis=0)
    m, n = x.shape
    xc = x - x.mean(axis=1, keepdims=True)
    f = np.fft.rfft(xc, n=2 * n, axis=1)
    acov = np.fft.irfft(f * np.conj(f), axis=1)[:, :n] / n  # biased autocovariance per chain
    chain_var = acov[:, 0] * n / (n - 1)
    w = chain_var.mean()
    if not np.isfinite(w) or w <= 0:
        return float("nan")
    var_plus = w * (n - 1) / n + (x.mean(axis=1).var(ddof=1) if m > 1 else 0.0)
    rho = 1.0 - (w - acov.mean(axis=0)) / var_plus
    rho[0] = 1.0
    pairs = rho[: 2 * (n // 2)].reshape(-1, 2).sum(axis=1)
    total, prev = 0.0, np.inf
    for p in pairs:  # Geyer: positive, monotonically non-increasing pair sums
        if p <= 0:
            break
        p = min(p, prev)
        total += p
        prev = p
    tau = max(-1.0 + 2.0 * total, 1.0 / math.log10(max(m * n, 10)))
    return float(m * n / tau)


# ------------------------------------------------------------------------------ results
@dataclass
class LLC:
    """Local learning coefficient per temperature and instance: mean and std over healthy chains."""

    mean: Float[Tensor, "temp inst"]
    std: Float[Tensor, "temp inst"]
    per_chain: Float[Tensor, "temp chain inst"]  # NaN for diverged chains


@dataclass
class Diagnostics:
    """Convergence diagnostics of the loss, per temperature and instance (post burn-in)."""

    rhat: Float[Tensor, "temp inst"]  # split R-hat over healthy chains
    ess: Float[Tensor, "temp inst"]  # effective sample size, all healthy chains together
    frac_below_init: Float[Tensor, "temp inst"]  # fraction of draws with loss < L_n(w*)
    diverged: Tensor  # bool [temp, chain, inst]: NaN, inf or loss blow-up
    barely_moving: Tensor  # bool [temp, inst]: chains still pure diffusion (see ``diffusion``)
    diffusion: Float[Tensor, "temp chain inst"]  # ‖w_end − w*‖² / (ε · steps · d)


@dataclass
class Spectrum:
    """λ̂ against log temperature for one instance: flat stretches and the jumps between them."""

    temperatures: Float[Tensor, " temp"]  # ascending
    llc: Float[Tensor, " temp"]
    llc_std: Float[Tensor, " temp"]
    jumps: list[dict]  # {"t_low", "t_high", "delta"}
    plateaus: list[dict]  # {"t_start", "t_end", "llc"}
    instance: int = 0

    def to_dict(self) -> dict:
        return jsonable(self)

    def summary(self) -> str:
        lines = [f"LLC spectrum (instance {self.instance}): {len(self.plateaus)} flat stretch(es)"]
        for p in self.plateaus:
            lines.append(f"  t in [{p['t_start']:.3g}, {p['t_end']:.3g}]: λ̂ ≈ {p['llc']:.3g}")
        for j in self.jumps:
            lines.append(
                f"  jump {j['delta']:+.3g} between t={j['t_low']:.3g} and {j['t_high']:.3g}"
            )
        return "\n".join(lines)

    def plot(self, ax=None):
        import matplotlib.pyplot as plt

        fig = ax.figure if ax is not None else plt.figure(figsize=(6, 4))
        ax = ax or fig.add_subplot()
        t = self.temperatures.numpy()
        ax.errorbar(
            t,
            self.llc.numpy(),
            yerr=self.llc_std.numpy(),
            fmt="o-",
            capsize=3,
            label="λ̂ (mean ± std over chains)",
        )
        for k, p in enumerate(self.plateaus):
            ax.hlines(
                p["llc"],
                p["t_start"],
                p["t_end"],
                colors="tab:green",
                lw=4,
                alpha=0.5,
                label="flat stretch" if k == 0 else None,
            )
        for k, j in enumerate(self.jumps):
            ax.axvspan(
                j["t_low"],
                j["t_high"],
                color="tab:red",
                alpha=0.12,
                label="jump" if k == 0 else None,
            )
        ax.set(
            xscale="log",
            xlabel="temperature t (dimensionless; inverse temperature nβ/t)",
            ylabel="local learning coefficient λ̂ (dimensionless)",
            title=f"LLC spectrum, instance {self.instance}",
        )
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig


@dataclass
class Tempering:
    """What :func:`temper` returns. Axes: ``temp`` follows ``temperatures`` as given."""

    temperatures: Float[Tensor, " temp"]
    nbeta: Float[Tensor, " inst"]  # nβ at t = 1, per instance
    traces: Float[Tensor, "temp chain draw inst"]  # minibatch loss at every draw (incl. burn-in)
    init_loss: Float[Tensor, " inst"]  # L_n(w*) on the full training set
    llc: LLC
    diagnostics: Diagnostics
    burnin: int
    config: dict = field(default_factory=dict)
    probes: dict[str, Any] = field(default_factory=dict)
    kept_draws: list[dict[str, Tensor]] | None = None
    seconds: float = 0.0

    @property
    def nbeta_eff(self) -> Float[Tensor, "temp inst"]:
        return self.nbeta[None, :] / self.temperatures[:, None]

    def probe(self, name: str):
        """The result of the streaming probe registered (or passed) under ``name``."""
        if name not in self.probes:
            raise ValueError(f"no probe {name!r} ran; probes here: {sorted(self.probes) or 'none'}")
        return self.probes[name].result()

    def summary(self) -> str:
        lines = [
            f"tempered {self.traces.shape[3]} instance(s) at {len(self.temperatures)} "
            f"temperature(s) x {self.traces.shape[1]} chains x {self.traces.shape[2]} draws "
            f"(burn-in {self.burnin}) in {self.seconds:.2f} s"
        ]
        d = self.diagnostics
        for a, t in enumerate(self.temperatures.tolist()):
            for i in range(self.traces.shape[3]):
                lines.append(
                    f"  t={t:.3g} inst {i}: λ̂ = {self.llc.mean[a, i]:.4g} ± "
                    f"{self.llc.std[a, i]:.2g}, R-hat {d.rhat[a, i]:.3f}, ESS {d.ess[a, i]:.0f}, "
                    f"below-init {d.frac_below_init[a, i]:.2f}, "
                    f"diverged {int(d.diverged[a, :, i].sum())}/{self.traces.shape[1]}"
                )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        out = {
            "temperatures": self.temperatures,
            "nbeta": self.nbeta,
            "init_loss": self.init_loss,
            "llc_mean": self.llc.mean,
            "llc_std": self.llc.std,
            "llc_per_chain": self.llc.per_chain,
            "rhat": self.diagnostics.rhat,
            "ess": self.diagnostics.ess,
            "frac_below_init": self.diagnostics.frac_below_init,
            "diverged": self.diagnostics.diverged,
            "burnin": self.burnin,
            "config": self.config,
            "seconds": self.seconds,
            "probes": {k: p.result().to_dict() for k, p in self.probes.items()},
        }
        return jsonable(out)

    def plot_trace(self, temp: int | None = None, inst: int = 0):
        """Loss traces of every chain, one panel per temperature; burn-in shaded."""
        import matplotlib.pyplot as plt

        temps = range(len(self.temperatures)) if temp is None else [temp]
        fig, axes = plt.subplots(1, len(temps), figsize=(3.2 * len(temps) + 1, 3.2), squeeze=False)
        for ax, a in zip(axes[0], temps, strict=True):
            tr = self.traces[a, :, :, inst].numpy()
            for c in range(tr.shape[0]):
                bad = bool(self.diagnostics.diverged[a, c, inst])
                ax.plot(
                    tr[c],
                    lw=0.7,
                    ls=":" if bad else "-",
                    label=f"chain {c}" + (" (diverged)" if bad else ""),
                )
            ax.axvspan(0, self.burnin, color="grey", alpha=0.2, label="burn-in")
            ax.axhline(float(self.init_loss[inst]), color="k", lw=1, ls="--", label="L_n(w*)")
            ax.set(
                xlabel="draw",
                ylabel="minibatch training loss",
                title=f"t={self.temperatures[a]:.3g}: λ̂={self.llc.mean[a, inst]:.3g}",
            )
        axes[0][0].legend(fontsize=6, ncol=2)
        fig.suptitle(f"SGLD loss traces, instance {inst}")
        fig.tight_layout()
        return fig

    def spectrum(self, inst: int = 0, *, z: float = 2.0, jump_fraction: float = 0.15) -> Spectrum:
        """λ̂ against log temperature (background §5, Vaintrob): flat stretches and jumps.

        A step between neighbouring temperatures is a *jump* when |Δλ̂| exceeds both ``z`` standard
        errors of the difference (chain std / √chains) and ``jump_fraction`` of the range of λ̂;
        the maximal runs without a jump are the flat stretches.
        """
        order = torch.argsort(self.temperatures)
        t = self.temperatures[order].double()
        lam = self.llc.mean[order, inst].double()
        sd = self.llc.std[order, inst].double()
        n_ok = (~self.diagnostics.diverged[order, :, inst]).sum(1).clamp_min(1).double()
        se = sd / n_ok.sqrt()
        finite = torch.isfinite(lam)
        rng = float(lam[finite].max() - lam[finite].min()) if finite.any() else 0.0
        jumps, plateaus, start = [], [], 0
        for k in range(len(t) - 1):
            d = float(lam[k + 1] - lam[k])
            se_d = float(torch.sqrt(se[k] ** 2 + se[k + 1] ** 2).nan_to_num(0.0))
            if abs(d) > z * se_d and abs(d) > jump_fraction * rng and rng > 0:
                jumps.append({"t_low": float(t[k]), "t_high": float(t[k + 1]), "delta": d})
                plateaus.append(_plateau(t, lam, start, k))
                start = k + 1
        plateaus.append(_plateau(t, lam, start, len(t) - 1))
        return Spectrum(t.float(), lam.float(), sd.float(), jumps, plateaus, inst)


def _plateau(t: Tensor, lam: Tensor, a: int, b: int) -> dict:
    return {"t_start": float(t[a]), "t_end": float(t[b]), "llc": float(lam[a : b + 1].nanmean())}


# ------------------------------------------------------------------------------ validation
def _positive(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    return float(v)


def _int(name: str, v: Any, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    return int(v)


def _prepare(model, data, nbeta, batch_size, probes) -> tuple[Batch, Tensor, list[Probe]]:
    if not isinstance(model, HookedToyModel):
        raise TypeError(f"model must be a memlens.HookedToyModel, got {type(model).__name__}")
    if not isinstance(data, (Tensor, Batch)):
        raise TypeError(
            f"data must be the training set, a Tensor [T, inst, feat] or a memlens.data.Batch; "
            f"got {type(data).__name__}"
        )
    data = model.check_batch(as_batch(data)).to(model.device)
    n = data.n_points().to(torch.float64)
    if nbeta is None:
        if bool((n < 2).any()):
            raise ValueError("the default nβ = n / log n needs at least 2 training points")
        nb = n / torch.log(n)
    else:
        nb = torch.as_tensor(nbeta, dtype=torch.float64).flatten()
        if nb.numel() == 1:
            nb = nb.expand(model.n_instances).clone()
        if nb.numel() != model.n_instances or not bool((torch.isfinite(nb) & (nb > 0)).all()):
            raise ValueError(
                f"nbeta must be positive, one number or one per instance "
                f"(n_instances={model.n_instances}), got {nbeta!r}"
            )
    if batch_size is not None:
        _int("batch_size", batch_size, 1)
    if isinstance(probes, (str, Probe)):
        probes = (probes,)
    resolved = []
    for p in probes:
        pr = resolve_probe(p)  # ValueError listing the known probes for an unknown name
        if not callable(getattr(pr, "on_draw", None)):
            raise ValueError(
                f"probe {pr.registered_name!r} cannot stream over tempering draws: it has no "
                "on_draw(expanded, draw) method (see the memlens.temper module docstring)"
            )
        resolved.append(pr)
    return data, nb.to(torch.float32), resolved


# ------------------------------------------------------------------------------ the sampler
def _expand_batch(data: Batch, copies: int) -> Batch:
    def rep(t):
        return None if t is None else t.repeat(1, copies, *([1] * (t.ndim - 2)))

    lengths = None if data.lengths is None else data.lengths.repeat(copies)
    return Batch(rep(data.inputs), rep(data.targets), None, lengths)


def _run(
    model: HookedToyModel,
    data: Batch,
    *,
    nbeta_arm: Tensor,  # [arm, inst]
    eps_arm: Tensor,  # [arm]
    gamma_arm: Tensor,  # [arm]
    chains: int,
    draws: int,
    burnin: int,
    thin: int,
    batch_size: int | None,
    seed: int,
    probes: list[Probe],
    probe_every: int,
    keep_draws: bool,
    progress: bool,
    desc: str,
):
    """Sample every arm (temperature or calibration setting) x chain x instance in one batch."""
    dev = model.device
    arms, n_inst = nbeta_arm.shape
    copies = arms * chains
    E = copies * n_inst
    expanded = model.expand(copies)
    params = [p for p in expanded.parameters() if p.requires_grad]
    anchors = [p.detach().clone() for p in params]
    per_inst = [p[0].numel() for p in params]
    P = sum(per_inst)

    def per_e(v: Tensor) -> Tensor:  # [arm, inst] or [arm] -> [E]
        v = v.to(dev, torch.float32)
        if v.ndim == 1:
            v = v[:, None].expand(arms, n_inst)
        return v[:, None, :].expand(arms, chains, n_inst).reshape(E)

    nb_e = per_e(nbeta_arm)
    eps_e = per_e(eps_arm)
    gam_e = per_e(gamma_arm)
    sqrt_eps_e = eps_e.sqrt()

    gens = []
    for a in range(arms):
        for c in range(chains):
            g = torch.Generator(device=dev)
            g.manual_seed(_mix(seed, 41, a, c))
            gens.append(g)

    full = batch_size is None
    if full:
        fixed = _expand_batch(data, copies)
    else:
        col = (torch.arange(E, device=dev) % n_inst)[None, :]
        n_pts = data.n_points().to(dev, torch.float32)
        n_pts_e = n_pts[col[0]][None, :]

    traces = torch.empty(draws, E, device=dev)
    kept: list[dict[str, Tensor]] | None = [] if keep_draws else None
    steps = draws * thin
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        if full:
            batch = fixed
        else:
            u = torch.stack(
                [torch.rand(batch_size, n_inst, generator=g, device=dev) for g in gens], dim=1
            ).reshape(batch_size, E)
            idx = (u * n_pts_e).long().clamp_max(len(data) - 1)
            batch = Batch(
                data.inputs[idx, col],
                None if data.targets is None else data.targets[idx, col],
                None,
                None,
            )
        noise = torch.stack(
            [torch.randn(n_inst, P, generator=g, device=dev) for g in gens], dim=0
        ).reshape(E, P)
        loss = expanded.loss(batch)  # [E]
        grads = torch.autograd.grad((nb_e * loss).sum(), params)
        is_draw = step % thin == thin - 1
        k = step // thin
        if is_draw:
            traces[k] = loss.detach()
            if k >= burnin and (k - burnin) % probe_every == 0:
                with torch.no_grad():
                    for pr in probes:
                        pr.on_draw(expanded, k)
                if kept is not None:
                    kept.append({n: v.detach().clone() for n, v in expanded.state_dict().items()})
        with torch.no_grad():
            off = 0
            for p, g, w0, size in zip(params, grads, anchors, per_inst, strict=True):
                shape = (E,) + (1,) * (p.ndim - 1)
                drift = g + gam_e.view(shape) * (p - w0)
                p.add_(-0.5 * eps_e.view(shape) * drift)
                p.add_(sqrt_eps_e.view(shape) * noise[:, off : off + size].view(p.shape))
                off += size
    bar.close()
    final_finite = torch.stack(
        [torch.isfinite(p.detach().reshape(E, -1)).all(1) for p in params]
    ).all(0)
    tr = traces.detach().cpu().view(draws, arms, chains, n_inst).permute(1, 2, 0, 3).contiguous()
    with torch.no_grad():
        msd = (
            sum(
                ((p - w0) ** 2).reshape(E, -1).sum(1) for p, w0 in zip(params, anchors, strict=True)
            )
            / P
        )
        diffusion = (msd / (eps_e * steps)).nan_to_num(float("inf"))
    diff = diffusion.cpu().view(arms, chains, n_inst)
    return tr, final_finite.cpu().view(arms, chains, n_inst), P, kept, diff


def _analyse(
    traces: Tensor,  # [arm, chain, draw, inst]
    init: Tensor,  # [inst]
    nbeta_arm: Tensor,  # [arm, inst]
    final_finite: Tensor,
    burnin: int,
    n_params: int,
    blowup: float,
    max_diffusion: float,
    diffusion: Tensor,
) -> tuple[LLC, Diagnostics]:
    arms, chains, draws, n_inst = traces.shape
    post = traces[:, :, burnin:, :].double()
    init_d = init.double()
    nb = nbeta_arm.double()
    limit = init_d[None, :] + blowup * (init_d.abs()[None, :] + n_params / (2 * nb))  # [arm,inst]
    finite = torch.isfinite(traces).all(2) & final_finite  # [arm, chain, inst]
    big = (traces.double().nan_to_num(float("inf")) > limit[:, None, None, :]).any(2)
    diverged = ~finite | big
    per_chain = nb[:, None, :] * (post.mean(2) - init_d[None, None, :])
    per_chain = per_chain.masked_fill(diverged, float("nan"))
    ok = (~diverged).double()
    n_ok = ok.sum(1)
    mean = per_chain.nan_to_num(0.0).sum(1) / n_ok.clamp_min(1)
    var = ((per_chain - mean[:, None, :]).nan_to_num(0.0) ** 2 * ok).sum(1) / (n_ok - 1).clamp_min(
        1
    )
    mean = mean.masked_fill(n_ok == 0, float("nan"))
    std = var.sqrt().masked_fill(n_ok < 2, float("nan"))
    below = (post < init_d[None, None, None, :]).double().mean(2)  # [arm, chain, inst]
    frac_below = (below * ok).sum(1) / n_ok.clamp_min(1)
    rhat = torch.full((arms, n_inst), float("nan"), dtype=torch.float64)
    ess = torch.full((arms, n_inst), float("nan"), dtype=torch.float64)
    post_np = post.numpy()
    for a in range(arms):  # diagnostics only: after sampling, on the host
        for i in range(n_inst):
            good = (~diverged[a, :, i]).numpy()
            if good.sum() >= 1:
                x = post_np[a, good, :, i]
                rhat[a, i] = split_rhat(x)
                ess[a, i] = effective_sample_size(x)
    med = diffusion.masked_fill(diverged, float("nan")).nanmean(1)
    barely = med > max_diffusion
    return (
        LLC(mean.float(), std.float(), per_chain.float()),
        Diagnostics(
            rhat.float(), ess.float(), frac_below.float(), diverged, barely, diffusion.float()
        ),
    )


def _warn(llc: LLC, diag: Diagnostics, labels: list[str]) -> None:
    d = diag.diverged
    if bool(d.all()):
        raise FloatingPointError(
            "every SGLD chain diverged (NaN, inf or a loss blow-up): lower step_size "
            "(or raise localization); memlens.calibrate helps choose them"
        )
    if bool(d.any()):
        where = [
            f"{labels[a]} inst {i}: {int(d[a, :, i].sum())}/{d.shape[1]} chains"
            for a in range(d.shape[0])
            for i in range(d.shape[2])
            if bool(d[a, :, i].any())
        ]
        warnings.warn(
            "SGLD chains diverged and were excluded from every estimate ("
            + "; ".join(where[:6])
            + ("; ..." if len(where) > 6 else "")
            + "): lower step_size or raise localization",
            RuntimeWarning,
            stacklevel=3,
        )
    neg = (llc.mean < 0) & ~diag.barely_moving
    if bool(neg.any()):
        warnings.warn(
            f"negative LLC estimate at {int(neg.sum())} (temperature, instance) cell(s): the "
            "sampler found lower loss than w* (w* is not a local minimum, or the chains are too "
            "short); train w* longer, raise localization, or lengthen burn-in",
            RuntimeWarning,
            stacklevel=3,
        )
    if bool(diag.barely_moving.any()):
        warnings.warn(
            f"chains barely move at {int(diag.barely_moving.sum())} (temperature, instance) "
            "cell(s) (still pure diffusion, the estimate is not equilibrated): raise step_size or "
            "draws",
            RuntimeWarning,
            stacklevel=3,
        )


def _check_common(chains, draws, burnin, thin, probe_every, blowup):
    chains = _int("chains", chains, 1)
    draws = _int("draws", draws, 1)
    if burnin is None:
        burnin = int(draws * DEFAULT_BURNIN_FRACTION)
    burnin = _int("burnin", burnin, 0)
    if draws <= burnin:
        raise ValueError(
            f"draws ({draws}) must exceed burnin ({burnin}): burn-in draws are discarded"
        )
    _int("thin", thin, 1)
    _int("probe_every", probe_every, 1)
    _positive("blowup", blowup)
    return chains, draws, burnin


def temper(
    model: HookedToyModel,
    data: Tensor | Batch,
    *,
    temperatures: Sequence[float] | Tensor | None = None,
    nbeta: float | Sequence[float] | None = None,
    chains: int = 8,
    draws: int = 200,
    burnin: int | None = None,
    thin: int = 1,
    step_size: float | Sequence[float],
    localization: float = 1.0,
    batch_size: int | None = None,
    seed: int = 0,
    probes: Sequence[str | Probe] = (),
    probe_every: int = 1,
    keep_draws: bool = False,
    blowup: float = 100.0,
    max_diffusion: float = 0.25,
    progress: bool = True,
) -> Tempering:
    """Sample the localised tempered posterior around ``model``'s weights w* with SGLD.

    Args:
        model: the trained model (w*); it is not modified.
        data: its training set, ``[T, inst, feat]`` or a :class:`~memlens.data.Batch`.
        temperatures: the ladder t (default ``[1.0]``); temperature t uses inverse temperature
            ``nbeta / t``.
        nbeta: nβ at t = 1, one number or one per instance. **Default: n / log n, with n the
            number of training points** (devinterp defaults to the batch size instead, which
            shrinks estimates about 100x).
        chains: independent chains per temperature and instance.
        draws: recorded draws per chain (one every ``thin`` SGLD steps), including burn-in.
        burnin: the first ``burnin`` draws are excluded from every estimate (default draws // 4).
        step_size: ε, the SGLD step size: one number, or one per temperature (hot temperatures
            have a flatter posterior and mix faster with larger steps).
        localization: γ, the pull towards w*.
        batch_size: minibatch size per chain and instance (drawn with replacement from that
            chain's own stream); ``None`` means full-batch gradients.
        seed: seeds every chain's noise and minibatch stream.
        probes: streaming probes (names, classes or instances), see the module docstring.
        probe_every: call probes every this many kept draws.
        keep_draws: keep every kept draw's expanded weights (memory heavy).
        blowup: a chain whose loss exceeds L_n(w*) + blowup·(|L_n(w*)| + d/(2 nβ/t)) is divergent.
        max_diffusion: chains whose squared distance from w* is still more than this fraction of
            pure diffusion's (ε · steps per coordinate) have not felt the loss or the
            localization yet: they "barely move" relative to the posterior and are warned about.
    Returns:
        a :class:`Tempering` (traces, init_loss, llc, diagnostics, probes).
    Raises:
        ValueError before any work on bad input; FloatingPointError if every chain diverged.
    """
    chains, draws, burnin = _check_common(chains, draws, burnin, thin, probe_every, blowup)
    if isinstance(step_size, (int, float)) and not isinstance(step_size, bool):
        eps_list = [_positive("step_size", step_size)]
    else:
        eps_list = [_positive("step_size", float(e)) for e in step_size]
    gamma = float(localization)
    if isinstance(localization, bool) or not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"localization must be a finite number >= 0, got {localization!r}")
    temps = torch.as_tensor([1.0] if temperatures is None else temperatures, dtype=torch.float64)
    if (
        temps.ndim != 1
        or temps.numel() == 0
        or not bool((torch.isfinite(temps) & (temps > 0)).all())
    ):
        raise ValueError(
            f"temperatures must be a non-empty list of positive numbers, got {temperatures!r}"
        )
    if len(eps_list) not in (1, len(temps)):
        raise ValueError(
            f"step_size must be one number or one per temperature ({len(temps)}), "
            f"got {len(eps_list)} values"
        )
    data, nb, probe_list = _prepare(model, data, nbeta, batch_size, probes)
    temps = temps.float()
    eps_arm = torch.tensor(eps_list).expand(len(temps)).clone()
    nbeta_arm = nb[None, :] / temps[:, None]
    return _temper_arms(
        model,
        data,
        nb,
        temps,
        nbeta_arm,
        eps_arm,
        torch.full((len(temps),), gamma),
        chains=chains,
        draws=draws,
        burnin=burnin,
        thin=thin,
        batch_size=batch_size,
        seed=seed,
        probes=probe_list,
        probe_every=probe_every,
        keep_draws=keep_draws,
        blowup=blowup,
        max_diffusion=max_diffusion,
        progress=progress,
        labels=[f"t={t:.3g}" for t in temps.tolist()],
        config={"step_size": eps_arm.tolist(), "localization": gamma},
    )


def _temper_arms(
    model,
    data,
    nb,
    temps,
    nbeta_arm,
    eps_arm,
    gamma_arm,
    *,
    chains,
    draws,
    burnin,
    thin,
    batch_size,
    seed,
    probes,
    probe_every,
    keep_draws,
    blowup,
    max_diffusion,
    progress,
    labels,
    config,
    warn=True,
) -> Tempering:
    t0 = time.perf_counter()
    init = evaluate(model, data).detach().float().cpu()
    for pr in probes:
        begin = getattr(pr, "begin_tempering", None)
        if begin is not None:
            begin(model, data, temps.clone(), chains)
    traces, final_finite, n_params, kept, diffusion = _run(
        model,
        data,
        nbeta_arm=nbeta_arm,
        eps_arm=eps_arm,
        gamma_arm=gamma_arm,
        chains=chains,
        draws=draws,
        burnin=burnin,
        thin=thin,
        batch_size=batch_size,
        seed=seed,
        probes=probes,
        probe_every=probe_every,
        keep_draws=keep_draws,
        progress=progress,
        desc="temper",
    )
    llc, diag = _analyse(
        traces,
        init,
        nbeta_arm.cpu(),
        final_finite,
        burnin,
        n_params,
        blowup,
        max_diffusion,
        diffusion,
    )
    result = Tempering(
        temperatures=temps.cpu(),
        nbeta=nb.cpu(),
        traces=traces,
        init_loss=init,
        llc=llc,
        diagnostics=diag,
        burnin=burnin,
        config={
            **config,
            "chains": chains,
            "draws": draws,
            "burnin": burnin,
            "thin": thin,
            "batch_size": batch_size,
            "seed": seed,
            "n_params_per_instance": n_params,
        },
        kept_draws=kept,
    )
    names = {}
    for pr in probes:
        end = getattr(pr, "end_tempering", None)
        if end is not None:
            end(result)
        names[pr.registered_name] = pr
    result.probes = names
    result.seconds = time.perf_counter() - t0
    if warn:
        _warn(llc, diag, labels)
    return result


def estimate_llc(model: HookedToyModel, data: Tensor | Batch, **kw: Any) -> Tempering:
    """The LLC at one temperature (t = 1): :func:`temper` with ``temperatures=[1.0]``.

    ``result.llc.mean[0]`` is λ̂ per instance and ``result.llc.std[0]`` its spread over chains.
    """
    if "temperatures" in kw and kw["temperatures"] is not None:
        raise ValueError("estimate_llc runs one temperature; use memlens.temper for a ladder")
    kw["temperatures"] = [1.0]
    return temper(model, data, **kw)


# ------------------------------------------------------------------------------ calibration
@dataclass
class Calibration:
    """A grid of (step size, localization) settings with LLC and diagnostics per setting."""

    rows: list[dict]
    recommended: dict | None

    def table(self) -> str:
        head = (
            f"{'step_size':>10} {'gamma':>7} {'llc':>9} {'std':>8} {'R-hat':>6} {'ESS':>7} "
            f"{'below':>6} {'div':>5}  verdict"
        )
        lines = [head]
        for r in self.rows:
            lines.append(
                f"{r['step_size']:>10.2g} {r['localization']:>7.3g} {r['llc']:>9.4g} "
                f"{r['llc_std']:>8.3g} {r['rhat']:>6.3f} {r['ess']:>7.0f} "
                f"{r['frac_below_init']:>6.2f} {r['diverged']:>5.2f}  "
                + ("healthy" if r["healthy"] else "; ".join(r["problems"]))
            )
        if self.recommended is not None:
            lines.append(
                f"recommended: step_size={self.recommended['step_size']:.3g}, "
                f"localization={self.recommended['localization']:.3g} "
                f"(healthy, highest ESS)"
            )
        else:
            lines.append("no healthy setting: try smaller step sizes or longer chains")
        return "\n".join(lines)

    def summary(self) -> str:
        return self.table()

    def to_dict(self) -> dict:
        return jsonable({"rows": self.rows, "recommended": self.recommended})

    def plot(self, ax=None):
        import matplotlib.pyplot as plt

        fig = ax.figure if ax is not None else plt.figure(figsize=(6.5, 4))
        ax = ax or fig.add_subplot()
        gammas = sorted({r["localization"] for r in self.rows})
        for g in gammas:
            rs = sorted(
                [r for r in self.rows if r["localization"] == g], key=lambda r: r["step_size"]
            )
            x = [r["step_size"] for r in rs]
            y = [r["llc"] for r in rs]
            e = [0 if not math.isfinite(r["llc_std"]) else r["llc_std"] for r in rs]
            line = ax.errorbar(x, y, yerr=e, fmt="-", capsize=3, label=f"γ = {g:g}")[0]
            for r in rs:
                ax.plot(
                    r["step_size"],
                    r["llc"],
                    "o" if r["healthy"] else "x",
                    ms=7,
                    color=line.get_color(),
                )
        if self.recommended is not None:
            ax.plot(
                self.recommended["step_size"],
                self.recommended["llc"],
                "*",
                ms=16,
                color="gold",
                markeredgecolor="k",
                label="recommended",
            )
        ax.plot([], [], "ko", label="healthy")
        ax.plot([], [], "kx", label="unhealthy (see table)")
        ax.set(
            xscale="log",
            xlabel="SGLD step size ε",
            ylabel="λ̂ (mean ± std over chains)",
            title="LLC calibration at t = 1 (γ: localisation strength)",
        )
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig


def calibrate(
    model: HookedToyModel,
    data: Tensor | Batch,
    step_sizes: Sequence[float],
    localizations: Sequence[float] = (1.0,),
    *,
    nbeta: float | Sequence[float] | None = None,
    chains: int = 4,
    draws: int = 200,
    burnin: int | None = None,
    thin: int = 1,
    batch_size: int | None = None,
    seed: int = 0,
    inst: int = 0,
    max_rhat: float = 1.1,
    blowup: float = 100.0,
    min_llc: float = 0.05,
    max_diffusion: float = 0.25,
    progress: bool = True,
) -> Calibration:
    """Run every (step size, localization) setting at t = 1, all in one batched sampler, and
    tabulate λ̂ and diagnostics for instance ``inst``.

    A setting is *healthy* when no chain diverged, split R-hat < ``max_rhat``, λ̂ > ``min_llc``
    (not negative) and the chains are not still pure diffusion. The fraction of draws below
    L_n(w*) is tabulated but not required (full-batch draws cannot fall below a local minimum).
    Among healthy settings the one with the highest ESS is
    recommended.
    """
    chains, draws, burnin = _check_common(chains, draws, burnin, thin, 1, blowup)
    eps = [_positive("step_sizes", float(s)) for s in step_sizes]
    gam = [float(g) for g in localizations]
    if not eps or not gam or any(not math.isfinite(g) or g < 0 for g in gam):
        raise ValueError(
            f"need at least one positive step size and one localization >= 0, got "
            f"step_sizes={step_sizes!r}, localizations={localizations!r}"
        )
    data, nb, _ = _prepare(model, data, nbeta, batch_size, ())
    _int("inst", inst, 0)
    if inst >= model.n_instances:
        raise ValueError(f"inst must be in [0, {model.n_instances}), got {inst}")
    grid = [(e, g) for g in gam for e in eps]
    eps_arm = torch.tensor([e for e, _ in grid])
    gamma_arm = torch.tensor([g for _, g in grid])
    nbeta_arm = nb[None, :].expand(len(grid), -1).clone()
    res = _temper_arms(
        model,
        data,
        nb,
        torch.ones(len(grid)),
        nbeta_arm,
        eps_arm,
        gamma_arm,
        chains=chains,
        draws=draws,
        burnin=burnin,
        thin=thin,
        batch_size=batch_size,
        seed=seed,
        probes=[],
        probe_every=1,
        keep_draws=False,
        blowup=blowup,
        max_diffusion=max_diffusion,
        progress=progress,
        labels=[],
        config={},
        warn=False,
    )
    rows = []
    d = res.diagnostics
    for a, (e, g) in enumerate(grid):
        div = float(d.diverged[a, :, inst].double().mean())
        llc, sd = float(res.llc.mean[a, inst]), float(res.llc.std[a, inst])
        rhat, ess = float(d.rhat[a, inst]), float(d.ess[a, inst])
        below = float(d.frac_below_init[a, inst])
        problems = []
        if div > 0:
            problems.append(f"{div:.0%} chains diverged: step too large")
        if bool(d.barely_moving[a, inst]):
            problems.append("chains still diffusing: step too small")
        if not math.isfinite(llc) or llc < min_llc:
            problems.append("λ̂ ≤ 0 or ~0: step too small / chain stuck")
        if not (rhat < max_rhat):
            problems.append(f"R-hat {rhat:.2f} ≥ {max_rhat}: not mixed")
        rows.append(
            {
                "step_size": e,
                "localization": g,
                "llc": llc,
                "llc_std": sd,
                "rhat": rhat,
                "ess": ess,
                "frac_below_init": below,
                "diverged": div,
                "healthy": not problems,
                "problems": problems,
            }
        )
    healthy = [r for r in rows if r["healthy"]]
    rec = max(healthy, key=lambda r: r["ess"]) if healthy else None
    return Calibration(rows, rec)
