"""``step_size="auto"``: choose ε where λ̂ has stopped depending on it and the chains mix.

Why a test and not "the healthy setting with the most ESS": the step that mixes fastest is the
most biased one. For a quadratic direction of curvature a (of U = (nβ/t) L_n + (γ/2)‖w − w*‖²),
Euler–Maruyama SGLD's stationary variance is 1/(a(1 − εa/4)); memlens's Leimkuhler-Matthews step
(:mod:`.sgld`) is exact there, but anharmonic wells, minibatch noise and slow directions still move
λ̂ with ε. Slow directions (a small) need ≫ 1/(εa) steps to mix.

The procedure, per temperature t and instance:

1. **Seed.** The top Hessian eigenvalue h of L_n at w* (power iteration on Hessian-vector
   products) gives the stiffest curvature a = (nβ/t) h + γ; with a diagonal preconditioner M
   (:mod:`.precondition`), a is the top eigenvalue of M^{1/2} ((nβ/t) H + γ) M^{1/2}.
2. **Grid.** ε = s/a for s = 3, 1, 1/3 (preconditioned: 1, 1/3, 1/9). The grid points of a rung are
   *coupled*: they share their chains' noise, and the step 3ε takes one update per three of ε with
   the summed noise (a coarser discretisation of the same Brownian path), so every point covers
   the same physical time and λ̂(3ε) − λ̂(ε) is measured with a small error. Every rung x grid
   point x chain runs in one batched sampler.
3. **Bias test.** Taking the step bias as linear in ε, the bias of ε is (λ̂(3ε) − λ̂(ε))/2 (where it
   is O(ε²), as for the Leimkuhler-Matthews step on smooth wells, the true bias is Δ/8: the test is
   conservative).
   Going down the grid, the first pair whose bias is *certainly* within ``bias_tolerance`` of λ̂
   (|Δ/2| + z·se/2 ≤ tol·max(|λ̂|, 1), z = 2; an equivalence test), with both points mixed (no
   divergence, R-hat ≤ max_rhat, ESS ≥ 50 on the evaluation loss, not pure diffusion), picks ε.
4. **Adapt.** Undecided because the chains do not mix or the test cannot resolve the tolerance:
   more SGLD steps per draw, as many as the measured errors say are needed. Bias still too large
   at the bottom of the grid: one more point, ε/3. The answer at the top: one larger point, once.
   A cell whose decision would need more than 3/4 of ``max_steps`` per chain in one round is
   given up and fails the bias test (it keeps the smallest step that mixed and is flagged), unless,
   preconditioned, it failed for mixing alone: then it takes the smallest s decided at another
   rung of its instance. At most ``ROUNDS`` rounds; only undecided rungs are rerun.
5. **Steps per draw** for the run: enough that ESS ≥ 2 x ``min_ess`` is expected, from the
   autocorrelation time measured at the chosen step (within ``max_steps``); the run itself is
   redone once with more steps per draw if its own ESS or R-hat falls short.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from memlens.data import mix_seed as _mix
from memlens.sampling.config import SGLDConfig
from memlens.sampling.diagnostics import analyse_run, effective_sample_size
from memlens.sampling.precondition import preconditioned_curvature, top_curvature
from memlens.sampling.results import Calibration
from memlens.sampling.sgld import Plan, Setup, eval_schedule, sample

__all__ = ["top_curvature", "auto_step"]

GRID = (3.0, 1.0, 1 / 3)  # dimensionless steps s = ε · a_max
#: with a preconditioner every direction has curvature near a_max, so each carries the step bias
#: of s: the grid starts lower
GRID_PRECONDITIONED = (1.0, 1 / 3, 1 / 9)
RATIO = 3.0
ROUNDS = 6
CAL_CHAINS, CAL_DRAWS = 4, 48
MIN_ESS_CAL = 50.0
Z = 2.0
LLC_FLOOR = 0.5  # tolerances are relative to max(|λ̂|, LLC_FLOOR): one regular direction


def _measure(setup, cfg, temps, rungs, grids, curv, thin, progress, precond=None):
    """One batched run of every rung a in ``rungs`` x its grid ``grids[a]`` (descending s), the
    grid points of a rung coupled:
    they share their chains' noise and minibatches, and the step 3ε takes one update per three of
    ε with the summed noise, so every grid point covers the same physical time ε x steps and the
    differences of λ̂ between them are measured with little noise. Returns ({(temp, inst, s):
    row}, {(temp, inst, s_coarse): (Δ, standard error)})."""
    arms = [(a, j) for a in rungs for j in range(len(grids[a]))]
    strides = [round(grids[a][j] / grids[a][-1]) for a, j in arms]
    nbeta = torch.stack([setup.nbeta / temps[a].double() for a, _ in arms])
    step = torch.stack([grids[a][j] / curv[a] for a, j in arms])
    burnin = CAL_DRAWS // 4
    pre = None if precond is None else torch.stack([precond[a] for a, _ in arms])
    plan = Plan(
        nbeta=nbeta,
        step=step,
        gamma=cfg.localization,
        chains=CAL_CHAINS,
        draws=CAL_DRAWS,
        thin=thin,
        burnin=burnin,
        batch_size=cfg.batch_size,
        seed=_mix(cfg.seed, 61, thin),
        eval_every=eval_schedule(setup, cfg.batch_size, thin, CAL_DRAWS, burnin),
        stride=strides,
        stream=[a for a, _ in arms],
        precond=None if pre is None else pre,
        # with a preconditioner, chains start dispersed at their rung's posterior scale (coupled
        # grid points share the start) and R-hat, not the displacement, judges whether they moved
        start=None if pre is None else pre.sqrt()[:, None].expand(-1, CAL_CHAINS, -1, -1),
        integrator=cfg.integrator,
    )
    run = sample(setup, plan, progress=progress, desc=f"calibrate ({CAL_DRAWS}x{thin} steps)")
    llc, diag = analyse_run(run, setup, cfg, nbeta=nbeta, burnin=burnin)
    rows, pairs = {}, {}
    n_post = CAL_CHAINS * (CAL_DRAWS - burnin)
    for k, (a, j) in enumerate(arms):
        for i in range(setup.nbeta.numel()):
            div = float(diag.diverged[k, :, i].double().mean())
            rhat, ess = float(diag.rhat[k, i]), float(diag.ess[k, i])
            moving = pre is not None or not bool(diag.barely_moving[k, i])
            mixed = div == 0 and rhat <= cfg.max_rhat and ess >= MIN_ESS_CAL and moving
            steps_per_ess = thin * n_post / ess if ess == ess and ess > 0 else math.inf
            rows[(a, i, grids[a][j])] = {
                "temp": a,
                "temperature": float(temps[a]),
                "inst": i,
                "s": grids[a][j],
                "step_size": float(step[k, i]),
                "llc": float(llc.mean[k, i]),
                "llc_se": float(llc.se[k, i]),
                "rhat": rhat,
                "ess": ess,
                "diverged": div,
                "mixed": mixed,
                # autocorrelation time in SGLD steps of this grid point's own step size
                "tau_steps": steps_per_ess / strides[k],
                "thin": thin,
                "verdict": "mixed" if mixed else _why_not(div, rhat, ess, moving, cfg.max_rhat),
            }
            if j > 0:
                pairs[(a, i, grids[a][j - 1])] = _paired(run.loss, nbeta, k - 1, k, i, burnin)
    return rows, pairs


def _paired(loss: Tensor, nbeta: Tensor, hi: int, lo: int, i: int, burnin: int):
    """Δ = λ̂(arm hi) − λ̂(arm lo) from coupled chains, and its standard error (the larger of
    the spread over chains and the autocorrelation-corrected error of the paired trace)."""
    d = (
        loss[hi, :, burnin:, i].double() * nbeta[hi, i]
        - loss[lo, :, burnin:, i].double() * (nbeta[lo, i])
    )
    d = d[torch.isfinite(d).all(1)]
    if len(d) < 2:
        return math.nan, math.inf
    per_chain = d.mean(1)
    se = float(per_chain.std() / math.sqrt(len(d)))
    ess = effective_sample_size(d.numpy())
    if math.isfinite(ess) and ess > 0:
        se = max(se, float(d.std() / math.sqrt(ess)))
    return float(per_chain.mean()), se


def _why_not(div, rhat, ess, moving, max_rhat) -> str:
    if div > 0:
        return f"{div:.0%} chains diverged"
    if not moving:
        return "still pure diffusion"
    if not rhat <= max_rhat:
        return f"R-hat {rhat:.2f} > {max_rhat:g}"
    return f"ESS {ess:.0f} < {MIN_ESS_CAL:.0f}"


def _decide(rows: list[dict], pairs: list[tuple], tol: float) -> tuple:
    """The bias test down one cell's grid (``rows`` by descending s; ``pairs[k]`` = (Δ, se) of
    rows k and k + 1). An equivalence test on the step bias of ε, estimated as Δ/2 (the bias is
    linear in ε): the pair passes when |Δ/2| + z·se/2 ≤ tol·|λ̂| (ε's bias is certainly within the
    tolerance), fails when |Δ/2| − z·se/2 > tol·|λ̂|. Returns
    (status, index of the chosen row, reason, factor, test), status 'decided', 'more_steps',
    'extend_down' or 'extend_up'; ``factor`` estimates how many times more SGLD steps the cheapest
    undecided pair needs (errors fall as 1/√steps); ``test`` records the passed test."""
    last_fail, factor = None, math.inf
    for k in range(len(rows) - 1):
        hi, lo = rows[k], rows[k + 1]
        if not (hi["mixed"] and lo["mixed"]):
            if hi["diverged"] == 0 and lo["diverged"] == 0:
                ess = min(hi["ess"], lo["ess"])
                factor = min(factor, 2.0 * MIN_ESS_CAL / ess if ess > 0 else 9.0)
            continue
        delta, se = pairs[k]
        err = Z * se
        scale = max(abs(lo["llc"]), LLC_FLOOR)
        # taking the step bias as linear in ε (minibatch noise; an O(ε²) bias makes this
        # conservative), λ̂(3ε) − λ̂(ε) = 2·bias(ε): the bias of ε is Δ/2
        bias, bias_err, bound = delta / 2, err / 2, tol * scale
        if abs(bias) + bias_err <= bound:
            why = (
                f"ε = {lo['step_size']:.3g} (s = {lo['s']:.3g}): λ̂ = {lo['llc']:.4g}; its step "
                f"bias (λ̂(3ε) − λ̂(ε))/2 = {bias:+.2g} ± {bias_err:.2g} (coupled chains) is "
                f"within {tol:.0%} of λ̂; R-hat {lo['rhat']:.2f}, ESS {lo['ess']:.0f}"
            )
            if last_fail is not None:
                why += f"; larger steps moved λ̂ ({last_fail})"
            test = {"bias": bias, "bias_err": bias_err, "bound": bound, "coarse_s": hi["s"]}
            return ("extend_up" if k == 0 else "decided"), k + 1, why, 1.0, test
        if abs(bias) - bias_err > bound or abs(bias) > bound / 2:
            # certainly too biased, or borderline: a 3x smaller step (bias / 3) settles it sooner
            # than resolving this pair would
            last_fail = f"Δ = {delta:+.2g} ± {err:.2g} between s = {hi['s']:.3g} and {lo['s']:.3g}"
            continue
        factor = min(factor, 1.3 * (bias_err / max(bound - abs(bias), 0.3 * bound)) ** 2)
    mixed = [r for r in rows if r["mixed"]]
    if last_fail is not None and factor == math.inf and mixed and mixed[-1] is rows[-1]:
        why = f"λ̂ still moves with ε at the smallest step ({last_fail})"
        return "extend_down", None, why, 1.0, None
    why = "chains did not mix, or the test could not resolve the tolerance, at this budget"
    return "more_steps", None, why, factor, None


def _judge(todo, grids, n_i, results, paired, decided, failed, extended_up, thin, max_thin, cfg):
    """One round's verdict per undecided cell: record decisions in ``decided`` and cells beyond
    the budget in ``failed``; return the steps per draw wished for and the rungs whose grid grows
    up or down."""
    wish, grow_up, grow_down = [thin], set(), set()
    for a in todo:
        grid = grids[a]
        for i in range(n_i):
            if (a, i) in failed:
                continue
            rows = [results[(a, i, s)] for s in grid]
            pairs = [paired[(a, i, s)] for s in grid[:-1]]
            status, k, why, factor, test = _decide(rows, pairs, cfg.bias_tolerance)
            if status == "extend_up" and a in extended_up:
                status = "decided"
                why += "; at the top of the extended grid"
            if status == "decided":
                decided[(a, i)] = (grid[k], why, test)
                continue
            decided.pop((a, i), None)
            if status == "more_steps":
                f = factor if math.isfinite(factor) else RATIO
                need = math.ceil(thin * min(max(f, 1.5), 27.0))
            elif status == "extend_down":  # same physical time at a 3x smaller step
                ess = rows[-1]["ess"]
                need = math.ceil(thin * max(1.0, RATIO * 1.5 * MIN_ESS_CAL / max(ess, 1.0)))
            else:
                need = thin
            if need > max_thin:
                steps = need * CAL_DRAWS
                failed[(a, i)] = (
                    f"{why}; deciding would need ~{steps:.0f} SGLD steps per chain in one "
                    f"calibration round, beyond its budget (3/4 of max_steps = {cfg.max_steps}; "
                    f"max_steps = {math.ceil(steps * 4 / 3)} or more would let it try)"
                )
                continue
            wish.append(need)
            if status == "extend_down":
                grow_down.add(a)
            elif status == "extend_up":
                grow_up.add(a)
    return wish, grow_up, grow_down


def auto_step(
    setup: Setup,
    temps: Tensor,
    cfg: SGLDConfig,
    *,
    precond: Tensor | None = None,
    progress: bool = True,
) -> Calibration:
    """Choose ε per temperature and instance (and the steps per draw); see the module docstring.
    With a preconditioner ``precond`` ``[temp, inst, P]``, ε is the step of the preconditioned
    sampler and the curvature is that of the preconditioned posterior."""
    t0 = time.perf_counter()
    n_t, n_i = len(temps), setup.nbeta.numel()
    nbeta = setup.nbeta[None, :] / temps[:, None].double()
    if precond is None:
        curv = nbeta * top_curvature(setup, seed=cfg.seed)[None, :] + cfg.localization
    else:
        curv = preconditioned_curvature(setup, precond, nbeta, cfg.localization, seed=cfg.seed)
    curv = curv.clamp_min(1e-12)
    grid0 = GRID if precond is None else GRID_PRECONDITIONED
    grids = {a: list(grid0) for a in range(n_t)}
    max_thin = max(1, 3 * cfg.max_steps // (4 * CAL_DRAWS))  # a round: ≤ 3/4 of the run budget
    thin = min(max_thin, math.ceil(1 / grid0[-1]))  # a stiff relaxation time per draw
    extended_up: set[int] = set()
    results: dict = {}
    paired: dict = {}
    decided: dict[tuple[int, int], tuple] = {}  # (temp, inst) -> (chosen s, why, test)
    failed: dict[tuple[int, int], str] = {}  # (temp, inst) -> why the budget cannot decide it
    todo = list(range(n_t))
    for _ in range(ROUNDS):
        rows_new, pairs_new = _measure(setup, cfg, temps, todo, grids, curv, thin, progress,
                                       precond)  # fmt: skip
        measured_thin = thin
        results.update(rows_new)
        paired.update(pairs_new)
        wish, grow_up, grow_down = _judge(todo, grids, n_i, results, paired, decided, failed,
                                          extended_up, thin, max_thin, cfg)  # fmt: skip
        todo = [
            a for a in todo if any((a, i) not in decided and (a, i) not in failed
                                   for i in range(n_i))
        ]  # fmt: skip
        if not todo:
            break
        changed = max(wish) > thin
        thin = max(wish)
        for a in grow_up - extended_up:
            grids[a] = [grids[a][0] * RATIO] + grids[a]
            extended_up.add(a)
            changed = True
        for a in grow_down:
            grids[a] = grids[a] + [grids[a][-1] / RATIO]
            changed = True
        if not changed:
            break
    choices, tau = _choose(results, decided, failed, temps, curv, precond is not None)
    for r in results.values():
        r["verdict"] = r["verdict"] + (" (chosen)" if _is_chosen(r, choices) else "")
    post = cfg.chains * (cfg.n_draws - cfg.n_burnin)
    need = max(tau) * 2.0 * cfg.min_ess / post if tau and math.isfinite(max(tau)) else thin
    run_thin = cfg.thin or int(min(max(1, math.ceil(need)), max(1, cfg.max_steps // cfg.n_draws)))
    rows = sorted(results.values(), key=lambda r: (r["temp"], r["inst"], -r["s"]))
    return Calibration(
        temperatures=temps.detach().cpu().float(),
        curvature=curv.float(),
        rows=rows,
        choices=choices,
        thin=run_thin,
        calibration_thin=measured_thin,
        seconds=time.perf_counter() - t0,
        bias_tolerance=cfg.bias_tolerance,
        precond=precond,
    )


def _choose(results, decided, failed, temps, curv, preconditioned: bool):
    """Per (temperature, instance): the decided step, or a fallback. With a preconditioner, the
    dimensionless step s = ε·a has the same step bias in every direction whose preconditioned
    curvature is a, so a cell left undecided only because its chains did not mix within the
    calibration's budget (a transition, where replica exchange in the run does the mixing) takes
    the smallest s the bias test accepted at another rung of its instance, and says so."""
    n_t, n_i = curv.shape
    choices, tau = [], []
    for a in range(n_t):
        for i in range(n_i):
            rows = sorted((r for (b, j, _), r in results.items() if b == a and j == i),
                          key=lambda r: -r["s"])  # fmt: skip
            if (a, i) in decided:
                s_pick, why, test = decided[(a, i)]
                pick = next(r for r in rows if r["s"] == s_pick)
                tau.append(pick["tau_steps"])
                choices.append({**_choice(pick, True, why), **test})
                continue
            mixed = [r for r in rows if r["mixed"]]
            pick = mixed[-1] if mixed else rows[-1]
            reason = failed.get((a, i), "still undecided after the calibration rounds")
            peers = [decided[(b, j)][0] for (b, j) in decided if j == i]
            if preconditioned and peers and "still moves" not in reason:
                s_ref = min(peers)
                pick = next((r for r in rows if r["s"] == s_ref), None) or {
                    **rows[-1], "s": s_ref, "step_size": s_ref / float(curv[a, i]),
                    "llc": math.nan, "llc_se": math.nan, "rhat": math.nan,
                    "ess": math.nan}  # fmt: skip
                why = (
                    f"ε = {pick['step_size']:.3g} (s = {s_ref:.3g}): the smallest dimensionless "
                    "step the bias test accepted at another temperature of this instance (the "
                    f"preconditioner makes s comparable); this cell's own test did not decide "
                    f"({reason})"
                )
                choices.append(_choice(pick, True, why))
                continue
            why = (
                f"ε = {pick['step_size']:.3g} (s = {pick['s']:.3g}) is a fallback: no pair of "
                f"steps passed the bias test within the budget, so λ̂ here may be biased ({reason})"
            )
            choices.append(_choice(pick, False, why))
            if mixed:
                tau.append(pick["tau_steps"])
    return choices, tau


def _choice(row: dict, decided: bool, why: str) -> dict:
    keys = ("temp", "temperature", "inst", "s", "step_size", "llc", "llc_se", "rhat", "ess")
    return {**{k: row[k] for k in keys}, "decided": decided, "reason": why}


def _is_chosen(row: dict, choices: list[dict]) -> bool:
    return any(
        c["temp"] == row["temp"] and c["inst"] == row["inst"] and c["s"] == row["s"]
        for c in choices
    )
