"""From raw traces to λ̂, convergence diagnostics and a per-cell health flag (with its reasons).

Diagnostics are computed on the loss on one fixed evaluation set shared by all draws
(``Run.eval_loss``: the full training loss whenever the training set is small enough), never on the
minibatch loss, whose draw-to-draw noise makes any chain look perfectly mixed.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "split_rhat",
    "effective_sample_size",
    "LLC",
    "Diagnostics",
    "Health",
    "analyse",
    "analyse_run",
    "health",
    "warn",
]


def split_rhat(x: np.ndarray) -> float:
    """Split R-hat (Gelman et al., BDA3 §11.4) of ``x`` ``[chains, draws]``; NaN if undefined."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"split_rhat expects [chains, draws], got shape {x.shape}")
    return float(_split_rhat_many(x[None])[0])


def _split_rhat_many(x: np.ndarray) -> np.ndarray:
    """:func:`split_rhat` of every ``x[c]`` of ``x`` ``[cells, chains, draws]`` at once."""
    cells, chains, draws = x.shape
    half = draws // 2
    if chains < 1 or half < 2:
        return np.full(cells, np.nan)
    xs = np.concatenate([x[:, :, :half], x[:, :, draws - half :]], axis=1)
    w = xs.var(axis=2, ddof=1).mean(axis=1)
    b = half * xs.mean(axis=2).var(axis=1, ddof=1)
    good = np.isfinite(w) & (w > 0)
    w = np.where(good, w, 1.0)
    var_plus = (half - 1) / half * w + b / half
    return np.where(good, np.sqrt(var_plus / w), np.nan)


def effective_sample_size(x: np.ndarray) -> float:
    """Multi-chain effective sample size of ``x`` ``[chains, draws]`` (split chains, Geyer's
    initial monotone sequence; the estimator of BDA3 §11.5 / Stan)."""
    x = np.asarray(x, dtype=np.float64)
    return float(_ess_many(x[None])[0])


def _ess_many(x: np.ndarray) -> np.ndarray:
    """:func:`effective_sample_size` of every ``x[c]`` of ``x`` ``[cells, chains, draws]`` at
    once: the same float operations in the same order as cell by cell (the transforms run per
    row, the Geyer sums are sequential cumulative sums), so the same numbers. Where ``w`` is
    finite and positive the pair sums are finite (every autocovariance is bounded by the
    variance, and ``var_plus`` ≥ ``w``·(n−1)/n), so the Geyer cut needs no NaN case."""
    cells = x.shape[0]
    half = x.shape[2] // 2
    if half < 4:
        return np.full(cells, np.nan)
    x = np.concatenate([x[:, :, :half], x[:, :, x.shape[2] - half :]], axis=1)
    _, m, n = x.shape
    xc = x - x.mean(axis=2, keepdims=True)
    f = np.fft.rfft(xc, n=2 * n, axis=2)
    # the power spectrum cell by cell: numpy's complex multiply rounds an element differently
    # depending on where it falls in one long vectorised loop, so the product of the whole batch
    # would differ in the last bit from a cell's own
    power = np.stack([f[c] * np.conj(f[c]) for c in range(cells)])
    acov = np.fft.irfft(power, axis=2)[:, :, :n] / n  # biased autocovariance per chain
    chain_var = acov[:, :, 0] * n / (n - 1)
    w = chain_var.mean(axis=1)
    good = np.isfinite(w) & (w > 0)
    var_plus = w * (n - 1) / n + (x.mean(axis=2).var(axis=1, ddof=1) if m > 1 else 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = 1.0 - (w[:, None] - acov.mean(axis=1)) / var_plus[:, None]
    rho[:, 0] = 1.0
    pairs = rho[:, : 2 * (n // 2)].reshape(cells, -1, 2).sum(axis=2)
    # Geyer: positive, monotonically non-increasing pair sums, up to the first non-positive one
    stop = np.logical_or.accumulate(pairs <= 0, axis=1)
    mono = np.minimum.accumulate(pairs, axis=1)
    total = np.where(stop, 0.0, mono).cumsum(axis=1)[:, -1]
    out = m * n / np.maximum(-1.0 + 2.0 * total, 1.0 / math.log10(max(m * n, 10)))
    return np.where(good, out, np.nan)


@dataclass
class LLC:
    """λ̂ per temperature and instance over healthy (non-diverged) chains."""

    mean: Float[Tensor, "temp inst"]
    std: Float[Tensor, "temp inst"]  # spread over chains
    se: Float[Tensor, "temp inst"]  # standard error of ``mean`` (chains and autocorrelation)
    per_chain: Float[Tensor, "temp chain inst"]  # NaN for diverged chains


@dataclass
class Diagnostics:
    """Convergence diagnostics per temperature and instance (post burn-in, evaluation-set loss)."""

    rhat: Float[Tensor, "temp inst"]  # split R-hat over non-diverged chains
    ess: Float[Tensor, "temp inst"]  # effective sample size of the evaluation-set loss
    frac_below_init: Float[Tensor, "temp inst"]  # fraction of evaluations below the loss at w*
    diverged: Tensor  # bool [temp, chain, inst]: NaN, inf or loss blow-up
    barely_moving: Tensor  # bool [temp, inst]: chains still pure diffusion
    diffusion: Float[Tensor, "temp chain inst"]  # ‖w_end − w*‖² / (ε · steps · d)
    negative: Tensor  # bool [temp, inst]: λ̂ below zero by more than 2 standard errors


#: kinds of health problem, in the order they are reported
PROBLEMS = ("diverged", "rhat", "ess", "barely_moving", "negative", "bias")


@dataclass
class Health:
    """Per (temperature, instance) cell: healthy or not, and why not."""

    ok: Tensor  # bool [temp, inst]
    reasons: list[list[list[str]]]  # [temp][inst] -> reasons in words (empty when healthy)
    kinds: dict[str, Tensor]  # problem kind (see PROBLEMS) -> bool [temp, inst]

    def describe(self, temp: int, inst: int) -> str:
        return "healthy" if self.ok[temp, inst] else "; ".join(self.reasons[temp][inst])

    def to_dict(self) -> dict:
        return {
            "ok": self.ok.tolist(),
            "reasons": self.reasons,
            "kinds": {k: v.tolist() for k, v in self.kinds.items()},
        }


def analyse(
    loss: Tensor,  # [arm, chain, draw, inst]
    eval_loss: Tensor,  # [arm, chain, n_eval, inst]
    eval_draws: Tensor,  # [n_eval]
    finite: Tensor,  # bool [arm, chain, inst]
    diffusion: Tensor,  # [arm, chain, inst]
    *,
    init_loss: Tensor,  # [inst] or [arm, inst]: the loss at w* each arm is measured against
    eval_init: Tensor,  # [inst] or [arm, inst]
    nbeta: Tensor,  # [arm, inst] effective
    burnin: int,
    n_params: int,
    blowup: float,
    max_diffusion: float,
) -> tuple[LLC, Diagnostics]:
    """λ̂ (from ``loss``) and diagnostics (from ``eval_loss``) of one sampler run."""
    arms, chains, draws, n_inst = loss.shape
    post = loss[:, :, burnin:, :].double()
    keep = eval_draws >= burnin
    post_eval = eval_loss[:, :, keep, :].double()
    init_d = init_loss.double().expand(arms, n_inst)
    ev0 = eval_init.double().expand(arms, n_inst)
    nb = nbeta.double()
    limit = init_d + blowup * (init_d.abs() + n_params / (2 * nb))  # [arm, inst]
    ok_trace = torch.isfinite(loss).all(2) & torch.isfinite(eval_loss).all(2) & finite
    # burn-in is excluded: chains may start dispersed, far up the loss, and relax during it
    big = (post.nan_to_num(float("inf")) > limit[:, None, None, :]).any(2)
    diverged = ~ok_trace | big
    per_chain = nb[:, None, :] * (post.mean(2) - init_d[:, None, :])
    per_chain = per_chain.masked_fill(diverged, float("nan"))
    ok = (~diverged).double()
    n_ok = ok.sum(1)
    mean = per_chain.nan_to_num(0.0).sum(1) / n_ok.clamp_min(1)
    dev2 = ((per_chain - mean[:, None, :]).nan_to_num(0.0) ** 2 * ok).sum(1)
    std = (dev2 / (n_ok - 1).clamp_min(1)).sqrt()
    mean = mean.masked_fill(n_ok == 0, float("nan"))
    std = std.masked_fill(n_ok < 2, float("nan"))
    below = (post_eval < ev0[:, None, None, :]).double().mean(2)
    frac_below = (below * ok).sum(1) / n_ok.clamp_min(1)
    rhat = torch.full((arms, n_inst), float("nan"), dtype=torch.float64)
    ess = torch.full_like(rhat, float("nan"))
    se_mc = torch.full_like(rhat, float("nan"))
    # host-side, after sampling: cells with the same surviving chains in one batch each
    post_np = post.permute(0, 3, 1, 2).numpy()  # [arm, inst, chain, draw]
    eval_np = post_eval.permute(0, 3, 1, 2).numpy()
    groups: dict[tuple[bool, ...], list[tuple[int, int]]] = {}
    for a, row in enumerate((~diverged).permute(0, 2, 1).tolist()):  # [arm][inst][chain]
        for i, alive in enumerate(row):
            if any(alive):
                groups.setdefault(tuple(alive), []).append((a, i))
    for alive, cells in groups.items():
        ca, ci = np.array(cells).T
        good = np.array(alive)
        x = eval_np[ca, ci][:, good]
        y = post_np[ca, ci][:, good]
        r, e, e_y = _split_rhat_many(x), _ess_many(x), _ess_many(y)
        var_y = y.reshape(len(cells), -1).var(axis=1, ddof=1) if y[0].size > 1 else None
        for k, (a, i) in enumerate(cells):
            rhat[a, i], ess[a, i] = float(r[k]), float(e[k])
            if var_y is not None and math.isfinite(e_y[k]):
                se_mc[a, i] = nb[a, i] * math.sqrt(float(var_y[k]) / float(e_y[k]))
    se_chain = std / n_ok.clamp_min(1).sqrt()
    se = torch.fmax(se_chain, se_mc)  # NaN only when both are
    med = diffusion.double().masked_fill(diverged, float("nan")).nanmean(1)
    barely = med > max_diffusion
    negative = (mean + 2 * se.nan_to_num(0.0)) < 0
    return (
        LLC(mean.float(), std.float(), se.float(), per_chain.float()),
        Diagnostics(
            rhat.float(),
            ess.float(),
            frac_below.float(),
            diverged,
            barely,
            diffusion.float(),
            negative,
        ),
    )


def health(
    llc: LLC,
    diag: Diagnostics,
    *,
    max_rhat: float,
    min_ess: float,
    bias_failed: Tensor | None = None,  # bool [temp, inst]
    dispersed: bool = False,
) -> Health:
    """Flag every cell that is not safe to read, with the reasons. With ``dispersed`` starts,
    chains that barely move disagree and R-hat flags them, so "barely moving" alone (which replica
    exchange and transitions trip while the estimate is right) is no longer a health problem."""
    temps, chains, n_inst = diag.diverged.shape
    n_div = diag.diverged.sum(1)
    live = n_div < chains
    kinds = {
        "diverged": n_div > 0,
        "rhat": ~(diag.rhat <= max_rhat) & live,
        "ess": ~(diag.ess >= min_ess) & live,
        "barely_moving": diag.barely_moving & live & (not dispersed),
        "negative": diag.negative & live,
        "bias": torch.zeros(temps, n_inst, dtype=torch.bool)
        if bias_failed is None
        else bias_failed,
    }
    reasons: list[list[list[str]]] = [[[] for _ in range(n_inst)] for _ in range(temps)]
    for a in range(temps):
        for i in range(n_inst):
            r = reasons[a][i]
            k = int(n_div[a, i])
            rh, es = float(diag.rhat[a, i]), float(diag.ess[a, i])
            if k == chains:
                r.append("no healthy chains: all diverged")
            elif k:
                r.append(f"{k}/{chains} chains diverged (step too large)")
            if kinds["rhat"][a, i]:
                r.append(f"R-hat {rh:.2f} > {max_rhat:g}" if rh == rh else "R-hat undefined")
            if kinds["ess"][a, i]:
                r.append(f"ESS {es:.0f} < {min_ess:g}" if es == es else "ESS undefined")
            if kinds["barely_moving"][a, i]:
                r.append("chains barely move (still pure diffusion)")
            if kinds["negative"][a, i]:
                r.append(
                    f"λ̂ = {float(llc.mean[a, i]):.3g} ± {float(llc.se[a, i]):.2g} is negative "
                    "beyond its error"
                )
            if kinds["bias"][a, i]:
                r.append("failed the step-size bias test (λ̂ still moves with ε)")
    ok = ~torch.stack(list(kinds.values())).any(0)
    return Health(ok, reasons, kinds)


_WARNINGS = {
    "diverged": "SGLD chains diverged at {cells} and were excluded from every estimate: lower "
    "step_size (or leave it 'auto')",
    "negative": "negative LLC beyond its error at {cells}: the sampler found lower loss than at "
    "w*, so w* is not a local minimum (train longer) or burn-in is too short",
    "rhat": "chains have not mixed (R-hat above threshold) at {cells}: raise draws or thin",
    "ess": "effective sample size below threshold at {cells}: raise draws or thin",
    "barely_moving": "chains barely move at {cells} (still pure diffusion, not equilibrated): "
    "raise step_size, draws or thin",
    "bias": "failed step-size bias test at {cells}: no step size within the budget gave a λ̂ "
    "that stopped moving with ε, so the estimate there is biased: raise max_steps (the result's "
    "calibration.summary() names the budget each such cell needs)",
}


_AUTO_DIVERGED = (
    "every SGLD chain diverged (NaN, inf or a loss blow-up) at the step step_size='auto' chose: "
    "the curvature at w* understates the posterior's away from it (a saturated cross entropy is "
    "flat at w*); raise localization (γ) or pass a smaller step_size"
)


def warn(diag: Diagnostics, hl: Health, labels: list[str], stacklevel: int = 3,
         auto: bool = False) -> None:  # fmt: skip
    """One RuntimeWarning per kind of problem, naming the cells; raise if every chain diverged
    (``auto``: the step was chosen by ``step_size="auto"``, so the advice differs)."""
    if bool(diag.diverged.all()):
        raise FloatingPointError(
            _AUTO_DIVERGED
            if auto
            else "every SGLD chain diverged (NaN, inf or a loss blow-up): lower step_size "
            "(or leave it 'auto')"
        )
    for kind in PROBLEMS:
        mask = hl.kinds[kind]
        if not bool(mask.any()):
            continue
        where = [f"{labels[a]} inst {i}" for a, i in mask.nonzero().tolist()]
        cells = ", ".join(where[:6]) + (f" (+{len(where) - 6} more)" if len(where) > 6 else "")
        warnings.warn(
            _WARNINGS[kind].format(cells=cells), RuntimeWarning, stacklevel=stacklevel + 1
        )


def analyse_run(run, setup, cfg, *, nbeta: Tensor, burnin: int):
    """:func:`analyse` on a sampler run (:func:`memlens.sampling.sgld.sample`), with the
    reference losses of its ``setup`` and the thresholds of its ``cfg`` (an SGLDConfig)."""
    return analyse(
        run.loss,
        run.eval_loss,
        run.eval_draws,
        run.finite,
        run.diffusion,
        init_loss=setup.init_loss,
        eval_init=setup.eval_init,
        nbeta=nbeta,
        burnin=burnin,
        n_params=setup.n_params,
        blowup=cfg.blowup,
        max_diffusion=cfg.max_diffusion,
    )
