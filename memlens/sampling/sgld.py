"""The batched SGLD engine: every arm (temperature, or calibration setting) x chain x instance in
one forward and one backward pass per step.

One step of localised, tempered SGLD on the copy in row ``e``, with a frozen diagonal
preconditioner ``M_e`` (a ``[P]`` vector; all ones without preconditioning),

    w ← w − (ε_e/2) M_e ⊙ ((nβ/t)_e ∇L(w) + γ (w − w*)) + √ε_e √M_e ⊙ (ξ_{k−1} + ξ_k)/2,

with ξ_k ~ N(0, I) the step's raw noise: the Leimkuhler-Matthews step (Leimkuhler & Matthews
2013), which reuses each draw in two consecutive steps. It costs what Euler-Maruyama costs and has
the same ε → 0 limit, but its stationary distribution on a quadratic well is exactly the target
(Euler's variance is 1/(a(1 − εa/4)) for curvature a): its bias on configurational averages such
as E[L_n] is O(ε²), not O(ε), with full-batch gradients (minibatch noise adds an O(ε) bias it
does not correct: benchmarks/step_bias.py). ``Engine.prev_xi`` carries ξ_{k−1} between steps (the
first from a stream of its own); a coarse arm pairs its summed noise the same way.
``Plan.integrator = "euler"`` takes the plain step, ξ_k alone (the peers' step, for comparisons).

is a handful of whole-buffer operations: every parameter of every copy lives in one flat buffer
``W [E, P]`` (row ``e = copy * n_inst + inst``, ``copy = arm * chains + chain``), the expanded
model's parameters are views into it, the gradient is gathered into one buffer ``G [E, P]``, and
the update is a few in-place ops on ``W``. There is no per-parameter or per-chain Python loop in the
step. :func:`advance` runs ``K`` such steps of every row and returns the per-step losses: it is the
boundary a fused kernel replaces. Between blocks, :func:`sample` records draws, runs the probes and
proposes replica exchanges (:mod:`memlens.sampling.exchange`) by swapping rows of ``W``. Chains may
start dispersed around w* (``Plan.start``), so that chains which never cross between modes
disagree and R-hat sees it.

Randomness. Each (arm, chain) pair owns a generator seeded from ``(seed, arm, chain)`` for its
Langevin noise and a key for its minibatch indices (a counter-based hash of the key and the step
number, :class:`~memlens.sampling.random_streams.MinibatchRows`, which a fused kernel computes
itself), so a chain's trace does not depend on how many chains or arms share the run (kept because
it costs nothing measurable: see below). The noise generators are read in blocks of ``K`` steps
(``K`` fixed by the per-chain sizes alone, so the numbers do not depend on the number of chains):
one call per chain per ``K`` steps, i.e. at most one call per step whenever ``K`` is at least the
number of chains; the step itself reads a slice of the block. Arms
may share a stream group (``Plan.stream``), which couples them (the calibration's bias test), and
may update only every ``stride`` steps with the summed noise (a coarser discretisation of the same
Brownian path).

Losses. ``Run.loss`` holds, per draw, the mean of the per-step losses over the ``thin`` steps since
the previous draw (minibatch or full-batch; unbiased for E_w[L_n(w)]): it feeds λ̂. ``Run.eval_loss``
holds the loss on one fixed evaluation set shared by all draws (the whole training set when it is
small) at every ``eval_every``-th draw: it feeds the diagnostics, which minibatch noise would
blind. With full-batch gradients the step's own loss is that evaluation, at no cost.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from memlens.data import Batch
from memlens.hooked import HookedToyModel
from memlens.sampling import fused_sgld
from memlens.sampling.random_streams import Streams as _Streams
from memlens.sampling.random_streams import minibatch_stream, pair_noise
from memlens.sampling.schedule import eval_schedule, next_event
from memlens.seeding import mix_seeds

#: the sampler advances between draws where nothing happens in blocks of at most this many
#: per-row losses (one kernel call per block where the model has a fused step)
CHUNK_ELEMENTS = 2**18

__all__ = ["Setup", "Plan", "Run", "Engine", "sample", "advance", "expand_batch", "eval_schedule"]


@dataclass
class Setup:
    """Validated inputs shared by the calibration and the run (see ``llc.prepare``)."""

    model: HookedToyModel
    data: Batch  # training set, on the model's device
    nbeta: Tensor  # [inst] float64: nβ at t = 1
    n_params: int  # trainable parameters per instance
    init_loss: Tensor  # [inst] L_n(w*) on the full training set
    eval_set: Batch  # fixed evaluation set for diagnostics
    eval_init: Tensor  # [inst] its loss at w*
    eval_is_full: bool  # the evaluation set is the whole training set


@dataclass
class Plan:
    """One batched sampler run. ``nbeta`` and ``step`` are per arm and instance."""

    nbeta: Tensor  # [arm, inst] effective inverse temperature nβ/t
    step: Tensor  # [arm, inst] ε
    gamma: float
    chains: int
    draws: int
    thin: int
    burnin: int
    batch_size: int | None
    seed: int
    eval_every: int
    probe_every: int = 1
    keep_draws: bool = False
    #: per arm: update every ``stride`` steps with the step ``step`` and the summed noise of those
    #: steps (a coarser discretisation of the same Brownian path); None: every step
    stride: list[int] | None = None
    #: per arm: the random stream group it reads (arms of one group share noise and minibatches,
    #: which couples them); None: one group per arm
    stream: list[int] | None = None
    #: forward hooks ``(hook name, fn)`` active on the expanded model during sampling (e.g. an
    #: ablation per arm); removed when sampling ends
    hooks: list | None = None
    #: [arm, inst, P] frozen diagonal preconditioner M; None: all ones
    precond: Tensor | None = None
    #: SGLD steps between replica-exchange proposals along ``ladder`` (0: never)
    swap_every: int = 0
    #: arm indices in order of increasing temperature (swaps are between neighbours here)
    ladder: list[int] | None = None
    #: [arm, chain, inst, P] standard deviation of each chain's start around w*; None: w*
    start: Tensor | None = None
    #: "lm" (Leimkuhler-Matthews: the mean of the previous and this step's noise) or "euler"
    integrator: str = "lm"

    @property
    def arms(self) -> int:
        return self.nbeta.shape[0]


@dataclass
class Run:
    """Raw output of :func:`sample` (CPU tensors)."""

    loss: Tensor  # [arm, chain, draw, inst] mean loss over each draw's interval
    eval_loss: Tensor  # [arm, chain, n_eval, inst] loss on the fixed evaluation set
    eval_draws: Tensor  # [n_eval] the draws at which it was evaluated
    finite: Tensor  # bool [arm, chain, inst]: final weights finite
    diffusion: Tensor  # [arm, chain, inst]: ‖w_end − w_burnin‖²_{M⁻¹} / (ε · steps · P), over
    # the steps after burn-in (pure diffusion: 1; an equilibrated chain: far below)
    kept: list[dict[str, Tensor]] | None
    seconds: float
    swaps: object = None  # exchange.SwapStats or None


def expand_batch(data: Batch, copies: int) -> Batch:
    """``data`` repeated along the instance axis for ``copies`` copies of the model, laid out
    ``[batch, inst, ...]`` but stored instance-major: the toy models' per-instance matmuls work
    instance-major, so every intermediate then shares one memory layout (about 15% faster)."""

    def rep(t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        return t.movedim(1, 0).repeat(copies, *([1] * (t.ndim - 1))).movedim(0, 1)

    lengths = None if data.lengths is None else data.lengths.repeat(copies)
    return Batch(rep(data.inputs), rep(data.targets), None, lengths)


def _flatten_parameters(expanded: HookedToyModel) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Move every trainable parameter of ``expanded`` into one buffer ``W [E, P]`` and its gradient
    into one buffer ``G [E, P]``: the parameters and their ``.grad`` become views into them, so the
    model reads what the sampler writes and backward accumulates straight into ``G``."""
    params = [p for p in expanded.parameters() if p.requires_grad]
    E = params[0].shape[0]
    W = torch.cat([p.detach().reshape(E, -1) for p in params], 1).contiguous()
    G = torch.zeros_like(W)
    off = 0
    for p in params:
        n = p[0].numel()
        p.data = W[:, off : off + n].view(p.shape)
        p.grad = G[:, off : off + n].view(p.shape)
        off += n
    return W, G, params


def _grads_in_place(params: list[Tensor], G: Tensor) -> bool:
    """Whether backward accumulated into the ``G`` views (PyTorch accumulates into an existing
    ``.grad`` in place outside grad mode); checked once, after the first backward."""
    lo, hi = G.data_ptr(), G.data_ptr() + G.numel() * G.element_size()
    return all(p.grad is not None and lo <= p.grad.data_ptr() < hi for p in params)


@dataclass
class Engine:
    """The state of one batched run: the flat buffers and the per-row constants of the step.

    ``W [E, P]`` the weights (the expanded model's parameters are views into it), ``W0`` w*,
    ``G`` the gradient buffer; ``half_eps_m = (ε/2)·M`` and ``sqrt_eps_m = √(ε/stride)·√M`` are
    ``[E, P]`` with a preconditioner, ``[E, 1]`` without; ``nb`` is nβ/t per row ``[E]``."""

    expanded: HookedToyModel
    params: list[Tensor]
    W: Tensor
    W0: Tensor
    G: Tensor
    nb: Tensor
    gamma: float
    half_eps_m: Tensor
    sqrt_eps_m: Tensor
    noise: _Streams
    batch: object  # a fixed Batch (full batch) or a callable () -> this step's minibatch
    due_table: Tensor | None = None  # [period, E, 1] coarse arms: whether each step updates
    acc_xi: Tensor | None = None
    #: [E, P] the previous update's raw noise (summed over a coarse arm's steps): the step adds
    #: the mean of it and this update's (the Leimkuhler-Matthews step; see the module docstring);
    #: None: the Euler-Maruyama step (``Plan.integrator == "euler"``)
    prev_xi: Tensor | None = None
    step: int = 0
    in_place: bool = True
    fused: object = None  # a fused_sgld.Stepper: the model's kernel takes the steps
    picks: object = None  # its minibatch rows (a MinibatchRows; fused, minibatch runs only)


def _rows(plan: Plan, n_inst: int, v: Tensor, dev) -> Tensor:
    """[arm, inst, *rest] -> [E, *rest] (row e = (arm · chains + chain) · n_inst + inst)."""
    v = v.to(dev, torch.float32)
    arms, chains = v.shape[0], plan.chains
    out = v[:, None].expand(arms, chains, *v.shape[1:])
    return out.reshape(arms * chains * n_inst, *v.shape[2:])


def build_engine(setup: Setup, plan: Plan) -> Engine:
    """Expand the model to every arm x chain x instance, flatten it, and precompute the step."""
    dev = setup.model.device
    arms, n_inst = plan.nbeta.shape
    copies = arms * plan.chains
    E = copies * n_inst
    expanded = setup.model.expand(copies)
    W, G, params = _flatten_parameters(expanded)
    W0 = W.detach().clone()
    P = W.shape[1]
    stride = torch.tensor(plan.stride or [1] * arms, dtype=torch.float64)
    r_e = _rows(plan, n_inst, stride[:, None].expand(arms, n_inst), dev)[:, None]
    eps = _rows(plan, n_inst, plan.step, dev)[:, None]
    half, root = eps / 2, (eps / r_e).sqrt()
    m = None if plan.precond is None else _rows(plan, n_inst, plan.precond, dev)
    if m is not None:
        half, root = half * m, root * m.sqrt()
    groups = plan.stream or list(range(arms))
    steps = plan.draws * plan.thin
    noise = _Streams(plan.seed, 41, groups, plan.chains, (n_inst, P), dev, steps)
    if plan.batch_size is None:
        batch = expand_batch(setup.data, copies)
    else:
        batch = minibatch_stream(setup.data, plan, groups, E, n_inst)
    eng = Engine(expanded, params, W, W0, G, _rows(plan, n_inst, plan.nbeta, dev), plan.gamma,
                 half.contiguous(), root.contiguous(), noise, batch)  # fmt: skip
    if bool((stride > 1).any()):  # an arm of stride r updates on the steps where (step+1) % r == 0
        period = int(stride.max())
        phase = torch.arange(1, period + 1, device=dev, dtype=torch.float32)[:, None, None]
        eng.due_table = (phase % r_e[None] == 0).float()
        eng.acc_xi = torch.zeros(E, P, device=dev)
    if plan.integrator == "lm":
        # the noise "before" the first step: one draw per (group, chain) from streams of their
        # own, so the step noise's streams are not shifted
        first = _Streams(plan.seed, 71, groups, plan.chains, (n_inst, P), dev, 1).next()
        eng.prev_xi = first.reshape(E, P) * r_e.sqrt()
    if plan.start is not None:
        _disperse(eng, plan, groups)
    eng.fused, eng.picks = fused_sgld.attach(setup, plan, eng, eps, m, groups)
    return eng


def _disperse(eng: Engine, plan: Plan, groups: list[int]) -> None:
    """Start each chain at w* + ``plan.start`` ⊙ ξ (ξ from the chain's own stream)."""
    arms, chains, n_inst, P = plan.start.shape
    dev = eng.W.device
    xi = torch.empty(arms, chains, n_inst, P)
    seeds = iter(mix_seeds([(plan.seed, 67, groups[a], c) for a in range(arms)
                            for c in range(chains)]))  # fmt: skip
    for a in range(arms):
        for c in range(chains):
            xi[a, c] = torch.randn(n_inst, P, generator=torch.Generator().manual_seed(next(seeds)))
    with torch.no_grad():
        eng.W.add_((plan.start * xi).reshape(-1, P).to(dev, eng.W.dtype))


def advance(eng: Engine, K: int, losses: Tensor) -> None:
    """K SGLD steps of every row of ``eng.W`` (the step of the module docstring); ``losses[k]``
    ``[E]`` receives step k's loss, at the weights before its update. This is the boundary a
    fused kernel may replace: it reads ``W, W0, M, ε, nβ, γ``, the noise block and the
    minibatch indices, and writes ``W`` and the per-step losses."""
    if eng.fused is not None:
        return fused_sgld.advance(eng, K, losses)
    W, G = eng.W, eng.G
    for k in range(K):
        batch = eng.batch if isinstance(eng.batch, Batch) else eng.batch()
        loss = eng.expanded.loss(batch)  # [E]
        G.zero_()
        if eng.in_place:
            loss.backward(eng.nb)  # d(Σ_e nβ_e L_e)/dW, accumulated into G
            if eng.step == 0 and not _grads_in_place(eng.params, G):  # pragma: no cover
                eng.in_place = False
                torch.cat([p.grad.reshape(W.shape[0], -1) for p in eng.params], 1, out=G)
        else:  # pragma: no cover (a torch change)
            grads = torch.autograd.grad((eng.nb * loss).sum(), eng.params)
            torch.cat([g.reshape(W.shape[0], -1) for g in grads], 1, out=G)
        xi = eng.noise.next().reshape(W.shape)
        with torch.no_grad():
            losses[k] = loss.detach()
            G.add_(W - eng.W0, alpha=eng.gamma)
            if eng.due_table is not None:
                due = eng.due_table[eng.step % eng.due_table.shape[0]]
                eng.acc_xi += xi
                W.addcmul_(eng.half_eps_m * due, G, value=-1.0)
                if eng.prev_xi is None:  # Euler-Maruyama
                    W.addcmul_(eng.sqrt_eps_m * due, eng.acc_xi)
                else:
                    W.addcmul_(eng.sqrt_eps_m * due, (eng.prev_xi + eng.acc_xi) * 0.5)
                    eng.prev_xi.copy_(torch.lerp(eng.prev_xi, eng.acc_xi, due))
                eng.acc_xi.mul_(1 - due)
            else:
                W.addcmul_(eng.half_eps_m, G, value=-1.0)
                if eng.prev_xi is not None:  # Leimkuhler-Matthews, as the fused step's
                    xi = pair_noise(eng.prev_xi, xi[None])[0]
                W.addcmul_(eng.sqrt_eps_m, xi)
        eng.step += 1


def sample(
    setup: Setup,
    plan: Plan,
    *,
    on_draw=None,
    progress: bool = True,
    desc: str = "SGLD",
) -> Run:
    """Sample every arm x chain x instance of ``plan`` in one batch; see the module docstring.

    ``on_draw(expanded, draw)`` is called under ``torch.no_grad()`` at every kept draw (after
    burn-in, every ``plan.probe_every`` draws) with the expanded model at the current weights.
    """
    from memlens.sampling.exchange import Exchange

    t0 = time.perf_counter()
    eng = build_engine(setup, plan)
    arms, n_inst = plan.nbeta.shape
    E, P = eng.W.shape
    dev = eng.W.device
    W_start = eng.W.detach().clone()
    copies = arms * plan.chains
    reuse_eval = plan.batch_size is None and setup.eval_is_full and plan.eval_every == 1
    eval_x = None if reuse_eval else expand_batch(setup.eval_set, copies)
    swap = Exchange.make(plan, eng, setup, eval_x) if plan.swap_every and arms > 1 else None
    eval_draws = [k for k in range(plan.draws) if k % plan.eval_every == plan.eval_every - 1]
    traces = torch.empty(plan.draws, E, device=dev)
    evals = torch.empty(len(eval_draws), E, device=dev)
    probing = on_draw is not None or plan.keep_draws
    span = max(1, CHUNK_ELEMENTS // (E * plan.thin))  # draws per block of steps, at most
    block = torch.empty(min(span, plan.draws) * plan.thin, E, device=dev)
    kept: list[dict[str, Tensor]] | None = [] if plan.keep_draws else None
    n_eval = 0
    bar = tqdm(total=plan.draws, desc=desc, disable=not progress, leave=False)
    k = 0
    with warnings.catch_warnings(), eng.expanded.hooks(fwd_hooks=plan.hooks or []):
        # the parameters are row slices of W, so their .grad views cannot be dense; PyTorch
        # warns (once) that this "may impair performance", and accumulates into them in place
        warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout")
        while k < plan.draws:
            # draws k..e in one block of steps: e is the next draw where anything happens
            nxt = eval_draws[n_eval] if n_eval < len(eval_draws) else plan.draws - 1
            e = next_event(plan, k, nxt, probing, swap, span)
            n = e - k + 1
            steps = block[: n * plan.thin]
            advance(eng, n * plan.thin, steps)
            torch.mean(steps.view(n, plan.thin, E), 1, out=traces[k : e + 1])
            bar.update(n)
            k = e
            fresh = None  # the loss on the evaluation set at the current weights, if read
            if n_eval < len(eval_draws) and eval_draws[n_eval] == k:
                with torch.no_grad():
                    evals[n_eval] = (
                        steps[-1]
                        if reuse_eval
                        else fused_sgld.eval_loss(eng, setup.eval_set, eval_x)
                    )
                fresh = None if reuse_eval else evals[n_eval]
                n_eval += 1
            if k >= plan.burnin and (k - plan.burnin) % plan.probe_every == 0:
                if on_draw is not None:
                    with torch.no_grad():
                        on_draw(eng.expanded, k)
                if kept is not None:
                    kept.append(
                        {n: v.detach().clone() for n, v in eng.expanded.state_dict().items()}
                    )
            if swap is not None:  # its batch is the evaluation set where one is read (Exchange)
                swap.maybe(eng.step, fresh)
            if k + 1 == plan.burnin:  # "barely moving" is judged after burn-in (starts disperse)
                W_start.copy_(eng.W)
            k += 1
    bar.close()
    return _finish(eng, plan, W_start, traces, evals, eval_draws, kept, swap, t0)


def _finish(eng, plan, W_start, traces, evals, eval_draws, kept, swap, t0) -> Run:
    arms, n_inst = plan.nbeta.shape
    E, P = eng.W.shape
    steps = (plan.draws - plan.burnin) * plan.thin
    with torch.no_grad():
        finite = torch.isfinite(eng.W).all(1)
        # squared distance travelled in the metric of the step's own noise (ε M per step)
        var_step = (eng.sqrt_eps_m**2).expand(E, P)
        msd = ((eng.W - W_start) ** 2 / var_step).sum(1) / P
        diffusion = (msd / steps).nan_to_num(float("inf"))

    def shaped(x: Tensor) -> Tensor:  # [draw, E] -> [arm, chain, draw, inst]
        x = x.detach().cpu().view(x.shape[0], arms, plan.chains, n_inst)
        return x.permute(1, 2, 0, 3).contiguous()

    return Run(
        loss=shaped(traces),
        eval_loss=shaped(evals),
        eval_draws=torch.tensor(eval_draws, dtype=torch.long),
        finite=finite.cpu().view(arms, plan.chains, n_inst),
        diffusion=diffusion.cpu().view(arms, plan.chains, n_inst),
        kept=kept,
        seconds=time.perf_counter() - t0,
        swaps=None if swap is None else swap.stats(),
    )
