"""The public entry points: :func:`temper`, :func:`estimate_llc` and :func:`calibrate`.

Tempering a trained model w* samples the localised, tempered posterior (background.md §5)

    p(w) ∝ exp(−(nβ/t) L_n(w) − (γ/2) ‖w − w*‖²)

with SGLD (:mod:`memlens.sampling.sgld`) and estimates the local learning coefficient at
temperature t as λ̂ = (nβ/t) (E_w[L_n(w)] − L_n(w*)). nβ defaults to n / log n with n the number of
training points (per instance), not the batch size. Everything is validated before any work.
By default the sampler is preconditioned (a frozen diagonal M from the curvature at w*), chains
start dispersed (half at a hotter rung's posterior scale, so R-hat sees chains that never cross
between modes) and neighbouring rungs of a ladder swap states every 10 steps (replica exchange).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from memlens import threads
from memlens.data import Batch, as_batch
from memlens.data import mix_seed as _mix
from memlens.hooked import HookedToyModel, require_model
from memlens.sampling.calibration import auto_step
from memlens.sampling.config import SGLDConfig, check_int
from memlens.sampling.diagnostics import analyse_run, health, warn
from memlens.sampling.precondition import posterior_preconditioner
from memlens.sampling.results import Calibration, Tempering
from memlens.sampling.sgld import Plan, Setup, eval_schedule, sample
from memlens.sampling.streaming import ProbeDriver, resolve_streaming
from memlens.training import evaluate

__all__ = ["temper", "estimate_llc", "calibrate", "prepare"]

#: odd chains start with the posterior scale of the rung this many places hotter on the ladder,
#: so a rung just below a circuit's transition has chains started on both sides of it
HOTTER = 2


def _temperatures(temperatures: Any) -> Tensor:
    try:
        t = torch.as_tensor([1.0] if temperatures is None else temperatures, dtype=torch.float64)
    except (TypeError, ValueError):
        t = None
    if t is None or t.ndim != 1 or t.numel() == 0 or not bool((torch.isfinite(t) & (t > 0)).all()):
        raise ValueError(
            f"temperatures must be a non-empty list of positive numbers, got {temperatures!r}"
        )
    return t.float()


def prepare(model: HookedToyModel, data: Tensor | Batch, cfg: SGLDConfig) -> Setup:
    """Validate the model and data against ``cfg``; compute nβ, L_n(w*) and the evaluation set."""
    require_model(model)
    if not isinstance(data, (Tensor, Batch)):
        raise TypeError(
            f"data must be the training set, a Tensor [T, inst, feat] or a memlens.data.Batch; "
            f"got {type(data).__name__}"
        )
    data = model.check_batch(as_batch(data)).to(model.device)
    n_inst = model.n_instances
    n = data.n_points().to(torch.float64).cpu()
    if cfg.nbeta is None:
        if bool((n < 2).any()):
            raise ValueError("the default nβ = n / log n needs at least 2 training points")
        nb = n / torch.log(n)
    else:
        nb = torch.tensor(cfg.nbeta, dtype=torch.float64).flatten()
        if nb.numel() == 1:
            nb = nb.expand(n_inst).clone()
        if nb.numel() != n_inst:
            raise ValueError(
                f"nbeta must be one number or one per instance (n_instances={n_inst}), "
                f"got {len(nb)} values"
            )
    if isinstance(cfg.step_size, tuple):
        shape = torch.tensor(cfg.step_size).shape
        if len(shape) == 2 and shape[1] != n_inst:
            raise ValueError(
                f"step_size given per [temp][inst] needs {n_inst} values per temperature, got "
                f"shape {tuple(shape)}"
            )
    n_params = sum(p[0].numel() for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        init = evaluate(model, data, checked=True).detach().float().cpu()
        if cfg.batch_size is None or len(data) <= cfg.eval_size:
            eval_set, eval_init, full = data, init, True
        else:
            g = torch.Generator().manual_seed(_mix(cfg.seed, 47))
            u = torch.rand(cfg.eval_size, n_inst, generator=g)
            idx = (u * n[None, :]).long().clamp_max(len(data) - 1).to(model.device)
            eval_set = data.gather(idx)
            eval_init, full = model.loss(eval_set).detach().float().cpu(), False
    return Setup(model, data, nb, n_params, init, eval_set, eval_init, full)


def _steps(cfg: SGLDConfig, n_temps: int, n_inst: int) -> Tensor:
    """An explicit step size as ``[temp, inst]``."""
    e = torch.tensor(cfg.step_size, dtype=torch.float64)
    if e.ndim == 0:
        return e.expand(n_temps, n_inst).clone()
    if e.ndim == 1 and len(e) == n_temps:
        return e[:, None].expand(n_temps, n_inst).clone()
    if e.ndim == 2 and tuple(e.shape) == (n_temps, n_inst):
        return e
    raise ValueError(
        f"step_size must be 'auto', one number, one per temperature ({n_temps}) or "
        f"[temp][inst] ({n_temps} x {n_inst}); got shape {tuple(e.shape)}"
    )


def _sgld_work(model, data=None, temperatures=None, *, config=None, **settings) -> int:
    """Activation elements one SGLD step touches: rows x temperatures x chains x instances x width
    (an estimate for the thread policy)."""
    cfg = config or SGLDConfig
    chains = settings.get("chains", cfg.chains)
    rows = settings.get("batch_size", cfg.batch_size) or len(as_batch(data))
    n_temps = 1 if temperatures is None else len(temperatures)
    return rows * n_temps * chains * model.n_instances * model.width


@threads.managed(_sgld_work)
def temper(
    model: HookedToyModel,
    data: Tensor | Batch,
    temperatures: Sequence[float] | Tensor | None = None,
    *,
    probes: Any = (),
    probe_every: int = 1,
    keep_draws: bool = False,
    progress: bool = True,
    config: SGLDConfig | None = None,
    **settings: Any,
) -> Tempering:
    """Sample the localised tempered posterior around ``model``'s weights w* with batched SGLD.

    Args:
        model: the trained model (w*); it is not modified.
        data: its training set, ``[T, inst, feat]`` or a :class:`~memlens.data.Batch`.
        temperatures: the ladder t (default ``[1.0]``); rung t samples at inverse temperature
            ``nbeta / t``.
        probes: streaming probes (:class:`~memlens.probe.StreamingProbe`): instances, classes,
            registered names, or ``(name, {argument: value})``.
        probe_every: run the probes every this many kept draws.
        keep_draws: keep every kept draw's expanded weights (memory heavy).
        progress: show tqdm bars.
        config: an :class:`~memlens.sampling.SGLDConfig`; ``settings`` override its fields:
            ``chains`` (8), ``draws`` (200; unset, "auto" draws more, up to ``max_draws`` = 1600,
            where a cell's λ̂ has a standard error above ``precision`` = 3% of max(|λ̂|, 1)),
            ``burnin`` (draws // 4), ``thin``, ``step_size``
            (**"auto"**: chosen per temperature and instance so that λ̂ no longer depends on it and
            the chains mix; or a number, one per temperature, or [temp][inst]), ``localization``
            (γ = 1), ``nbeta`` (**n / log n, n the number of training points**), ``batch_size``
            (None: full batch), ``seed``, and the health thresholds (see SGLDConfig).
    Returns:
        a :class:`~memlens.sampling.Tempering`: λ̂, diagnostics on the evaluation-set loss,
        per-cell health with reasons, the resolved config and, with "auto", the calibration.
    Raises:
        ValueError (or TypeError) before any work on bad input; FloatingPointError if every chain
        diverged. Unhealthy cells raise RuntimeWarnings naming them.
    """
    cfg = SGLDConfig.make(config, **settings)
    temps = _temperatures(temperatures)
    check_int("probe_every", probe_every, 1)
    if not cfg.auto and isinstance(model, HookedToyModel):
        _steps(cfg, len(temps), model.n_instances)
    driver = ProbeDriver(resolve_streaming(probes))
    setup = prepare(model, data, cfg)
    base, cal = _base_plan(setup, temps, cfg, progress)
    base.probe_every, base.keep_draws = probe_every, keep_draws

    def run_at(thin: int, draws: int):
        burnin = cfg.burnin_at(draws)
        eval_every = cfg.eval_every or eval_schedule(setup, cfg.batch_size, thin, draws, burnin)
        plan = dataclasses.replace(base, thin=thin, draws=draws, burnin=burnin,
                                   eval_every=eval_every)  # fmt: skip
        if driver:
            driver.begin(model, setup.data, temps, cfg.chains)
        on_draw = driver.on_draw if driver else None
        run = sample(setup, plan, on_draw=on_draw, progress=progress, desc="temper")
        llc, diag = analyse_run(run, setup, cfg, nbeta=base.nbeta, burnin=burnin)
        return plan, run, llc, diag

    plan, run, llc, diag = run_at(base.thin, base.draws)
    seconds = run.seconds
    if cal is not None:  # redraw once, longer, if mixing or precision needs it
        thin = _more_steps(diag, cfg, plan.thin) if cfg.thin is None else plan.thin
        draws = _more_draws(llc, diag, cfg, thin / plan.thin) if cfg.draws is None else plan.draws
        if thin > plan.thin or draws > plan.draws:
            plan, run, llc, diag = run_at(thin, draws)
            seconds += run.seconds
            cal.thin = thin
        if cfg.draws is None and plan.draws >= cfg.max_draws:
            _warn_imprecise(llc, diag, cfg, plan.draws, temps)
    result = _result(setup, temps, cfg, plan, cal, run, llc, diag, seconds)
    if driver:
        result.probes = driver.end(result)
    warn(diag, result.health, [f"t={t:.3g}" for t in temps.tolist()], auto=cfg.auto)
    return result


def _result(setup, temps, cfg, plan, cal, run, llc, diag, seconds) -> Tempering:
    resolved = cfg.replace(step_size=plan.step.tolist(), thin=plan.thin, draws=plan.draws,
                           burnin=plan.burnin, nbeta=setup.nbeta.tolist())  # fmt: skip
    hl = health(llc, diag, max_rhat=cfg.max_rhat, min_ess=cfg.min_ess,
                bias_failed=None if cal is None else cal.bias_failed,
                dispersed=plan.start is not None)  # fmt: skip
    return Tempering(
        temperatures=temps,
        nbeta=setup.nbeta.float(),
        traces=run.loss,
        eval_traces=run.eval_loss,
        eval_draws=run.eval_draws,
        init_loss=setup.init_loss,
        llc=llc,
        diagnostics=diag,
        health=hl,
        config=resolved,
        calibration=cal,
        kept_draws=run.kept,
        seconds=seconds + (0.0 if cal is None else cal.seconds),
        swaps=run.swaps,
    )


def _base_plan(setup: Setup, temps: Tensor, cfg: SGLDConfig, progress: bool):
    """The run's plan (before its steps per draw are final) and, with "auto", the calibration:
    the preconditioner and the dispersed starts come from the Hessian's diagonal at w*."""
    nbeta = setup.nbeta[None, :] / temps[:, None].double()
    n_inst = setup.nbeta.numel()
    order = torch.argsort(temps).tolist()
    t_sorted = temps[order].double()
    extra = torch.empty(0, dtype=torch.float64)  # rungs beyond the top, same spacing (starts only)
    if cfg.dispersed and len(temps) > 1:
        r = float(t_sorted[-1] / t_sorted[-2])
        extra = t_sorted[-1] * r ** torch.arange(1, HOTTER + 1, dtype=torch.float64)
    scale = None  # [temp, inst, P]: per-coordinate posterior variance, M
    if cfg.preconditioned or cfg.dispersed:
        nb_all = torch.cat([nbeta, setup.nbeta[None, :] / extra[:, None]])
        # the starts need only the scale's order of magnitude: one blend where no step uses it
        iters = 3 if cfg.preconditioned else 1
        scale = posterior_preconditioner(setup, nb_all, cfg.localization, iters=iters,
                                         seed=cfg.seed)  # fmt: skip
    precond = scale[: len(temps)] if cfg.preconditioned else None
    cal: Calibration | None = None
    if cfg.auto:
        cal = auto_step(setup, temps, cfg, precond=precond, progress=progress)
        step, thin = cal.step_size, cal.thin
    else:
        step, thin = _steps(cfg, len(temps), n_inst), cfg.thin or 1
    start = None
    if cfg.dispersed:  # even chains: own rung's posterior scale; odd chains: that of the rung
        # HOTTER places up the ladder, extended past its top with the top's spacing
        up = order + list(range(len(temps), len(temps) + len(extra)))
        hotter = [up[min(order.index(a) + HOTTER, len(up) - 1)] for a in range(len(temps))]
        sd = scale.sqrt()
        start = torch.stack([sd[: len(temps)] if c % 2 == 0 else sd[hotter]
                             for c in range(cfg.chains)], 1)  # fmt: skip
    plan = Plan(
        nbeta=nbeta,
        step=step,
        gamma=cfg.localization,
        chains=cfg.chains,
        draws=cfg.n_draws,
        thin=thin,
        burnin=cfg.n_burnin,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        eval_every=1,
        precond=precond,
        swap_every=cfg.swap_every if len(temps) > 1 else 0,
        ladder=torch.argsort(temps).tolist(),
        start=start,
        integrator=cfg.integrator,
    )
    return plan, cal


def _more_steps(diag, cfg: SGLDConfig, thin: int) -> int:
    """When a live cell falls short of ``min_ess`` or R-hat: the steps per draw that would bring
    every live cell to ESS ≥ 2 x ``min_ess`` (ESS estimates scatter by tens of percent) and R-hat
    below threshold, within ``max_steps``; ``thin`` itself when nothing is needed or affordable."""
    live = ~diag.diverged.all(1)
    ess = diag.ess[live].double()
    rhat = diag.rhat[live].double()
    short = bool((~(ess >= cfg.min_ess)).any()) or bool((~(rhat <= cfg.max_rhat)).any())
    if not short:
        return thin
    factor = float((2.0 * cfg.min_ess / ess.clamp_min(1.0)).max()) if len(ess) else 1.0
    if bool((~(rhat <= cfg.max_rhat)).any()):
        factor = max(factor, 3.0)
    if not factor > 1.0:
        return thin
    return int(min(math.ceil(thin * min(factor, 9.0)), max(thin, cfg.max_steps // cfg.n_draws)))


def _precision_need(llc, diag, cfg: SGLDConfig) -> Tensor:
    """Per cell ``[temp, inst]``: (standard error of λ̂ / (``precision`` x max(|λ̂|, 1)))², the
    factor of draws that would bring it to the target (0 where no chain is live)."""
    live = ~diag.diverged.all(1)
    se, mean = llc.se.double(), llc.mean.double()
    need = (se / (cfg.precision * mean.abs().clamp_min(1.0))) ** 2
    return torch.where(live & torch.isfinite(need), need, torch.zeros_like(need))


def _more_draws(llc, diag, cfg: SGLDConfig, gain: float) -> int:
    """The draws per chain that bring every live cell's standard error of λ̂ to
    ``cfg.precision`` x max(|λ̂|, 1), with a margin of 1.2 (standard errors over a few chains
    scatter), if the steps per draw grow ``gain``-fold as well; within ``cfg.max_draws``. The
    first run's draws when every cell is precise enough (or more would not be allowed)."""
    n = cfg.n_draws
    need = float(_precision_need(llc, diag, cfg).max()) / max(gain, 1.0)
    if not need > 1.0:
        return n
    return max(n, min(_draws_for(n, need), cfg.max_draws))


def _draws_for(draws: int, need: float) -> int:
    """Draws per chain for a run of ``draws`` whose worst cell needs ``need`` times as many
    (see :func:`_precision_need`), with the margin of 1.2."""
    return math.ceil(draws * need * 1.2)


def _warn_imprecise(llc, diag, cfg: SGLDConfig, draws: int, temps: Tensor) -> None:
    """A RuntimeWarning naming the cells still less precise than ``cfg.precision`` after the
    most draws allowed, and the ``max_draws`` that would reach it."""
    need = _precision_need(llc, diag, cfg)
    short = (need > 1.0).nonzero().tolist()
    if not short:
        return
    rel = (llc.se.double() / llc.mean.double().abs().clamp_min(1.0)) * 100
    cells = ", ".join(f"t={float(temps[a]):.3g} inst {i} ({float(rel[a, i]):.1f}%)"
                      for a, i in short[:6])  # fmt: skip
    cells += f" (+{len(short) - 6} more)" if len(short) > 6 else ""
    want = _draws_for(draws, float(need.max()))
    warnings.warn(
        f"λ̂ is less precise than precision={cfg.precision:g} (standard error over max(|λ̂|, 1)) "
        f"after {draws} draws per chain at {cells}; pass max_draws={want} to reach it",
        RuntimeWarning,
        stacklevel=4,
    )


def estimate_llc(model: HookedToyModel, data: Tensor | Batch, **kw: Any) -> Tempering:
    """The LLC at one temperature (t = 1): :func:`temper` with ``temperatures=[1.0]``.

    ``result.llc.mean[0]`` is λ̂ per instance, ``result.llc.se[0]`` its standard error and
    ``result.health`` says whether to trust it.
    """
    if kw.get("temperatures") is not None:
        raise ValueError("estimate_llc runs one temperature; use memlens.temper for a ladder")
    kw.pop("temperatures", None)
    return temper(model, data, [1.0], **kw)


@threads.managed(_sgld_work)
def calibrate(
    model: HookedToyModel,
    data: Tensor | Batch,
    temperatures: Sequence[float] | Tensor | None = None,
    *,
    progress: bool = True,
    config: SGLDConfig | None = None,
    **settings: Any,
) -> Calibration:
    """The decision ``step_size="auto"`` makes, on its own: per temperature and instance, the
    grid of steps tried (λ̂, standard error, R-hat, ESS, divergences), the chosen step and why,
    and the SGLD steps per draw the run would use. ``table()``, ``summary()`` and ``plot()`` show
    it; a choice at the grid's edge is extended past and said so, and a step whose λ̂ still
    moves with ε is never chosen (such cells are marked as failing the bias test).

    ``settings`` are :class:`~memlens.sampling.SGLDConfig` fields (``chains``, ``draws`` and
    ``thin`` size the run the choice is for; ``step_size`` must stay "auto").
    """
    cfg = SGLDConfig.make(config, **settings)
    if not cfg.auto:
        raise ValueError(
            f"calibrate chooses the step size: leave step_size 'auto', got {cfg.step_size}"
        )
    temps = _temperatures(temperatures)
    setup = prepare(model, data, cfg)
    precond = None
    if cfg.preconditioned:
        nbeta = setup.nbeta[None, :] / temps[:, None].double()
        precond = posterior_preconditioner(setup, nbeta, cfg.localization, seed=cfg.seed)
    return auto_step(setup, temps, cfg, precond=precond, progress=progress)
