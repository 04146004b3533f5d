"""The batched SGLD engine: every arm (temperature, or calibration setting) x chain x instance in
one forward and one backward pass per step.

One step of localised, tempered SGLD on the copy in row ``e``,

    w ← w − (ε_e/2) ((nβ/t)_e ∇L(w) + γ (w − w*)) + √ε_e ξ,   ξ ~ N(0, I),

is a handful of whole-buffer operations: every parameter of every copy lives in one flat buffer
``W [E, P]`` (row ``e = copy * n_inst + inst``, ``copy = arm * chains + chain``), the expanded
model's parameters are views into it, the gradient is gathered into one buffer ``G [E, P]``, and
the update is three in-place ops on ``W``. There is no per-parameter or per-chain Python loop in the
step.

Randomness. Each (arm, chain) pair owns two generators seeded from ``(seed, arm, chain)``, one for
its Langevin noise and one for its minibatch indices, so a chain's trace does not depend on how many
chains or arms share the run (kept because it costs nothing measurable: see below). The generators
are read in blocks of ``K`` steps (``K`` fixed by the per-chain sizes alone, so the numbers do not
depend on the number of chains): one call per chain per ``K`` steps, i.e. at most one call per step
whenever ``K`` is at least the number of chains; the step itself reads a slice of the block. Arms
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

import math
import time
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from memlens.data import Batch
from memlens.data import mix_seed as _mix
from memlens.hooked import HookedToyModel
from memlens.sampling import fused_sgld

__all__ = ["Setup", "Plan", "Run", "sample", "expand_batch", "eval_schedule"]

#: noise / index block per chain: at most this many floats, so blocks stay cache-sized
BLOCK_ELEMENTS = 2**16


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
    diffusion: Tensor  # [arm, chain, inst]: ‖w_end − w*‖² / (ε · steps · P)
    kept: list[dict[str, Tensor]] | None
    seconds: float


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


class _Streams:
    """Per-(group, chain) generators read in blocks of ``K`` steps (see the module docstring).
    ``next()`` returns this step's draw for every copy (arm x chain), ``[copies, *shape]``, passed
    through ``post`` (applied once per block, to the whole block ``[K, copies, *shape]``)."""

    def __init__(self, seed: int, salt: int, groups: list[int], chains: int, shape: tuple, dev,
                 normal: bool, steps: int, post=None):  # fmt: skip
        per_step = 1
        for s in shape:
            per_step *= s
        self.K = max(1, min(steps, BLOCK_ELEMENTS // per_step))
        self.shape, self.normal, self.post = shape, normal, post
        keys = sorted(set(groups))
        self.gens = []
        for a in keys:
            for c in range(chains):
                g = torch.Generator(device=dev)
                g.manual_seed(_mix(seed, salt, a, c))
                self.gens.append(g)
        rank = {a: k for k, a in enumerate(keys)}
        idx = [rank[a] * chains + c for a in groups for c in range(chains)]
        shared = len(keys) < len(groups)
        self.index = torch.tensor(idx, device=dev) if shared else None
        self.device = dev
        self.block: Tensor | None = None
        self.pos = self.K

    def next(self) -> Tensor:
        if self.pos == self.K:
            draw = torch.randn if self.normal else torch.rand
            block = torch.stack(
                [draw(self.K, *self.shape, generator=g, device=self.device) for g in self.gens], 1
            )
            if self.index is not None:
                block = block.index_select(1, self.index)
            self.block = block if self.post is None else self.post(block)
            self.pos = 0
        out = self.block[self.pos]
        self.pos += 1
        return out


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
    t0 = time.perf_counter()
    model, data = setup.model, setup.data
    dev = model.device
    arms, n_inst = plan.nbeta.shape
    copies = arms * plan.chains
    E = copies * n_inst
    expanded = model.expand(copies)
    W, G, params = _flatten_parameters(expanded)
    W0 = W.detach().clone()
    P = W.shape[1]
    in_place = True

    def rows(v: Tensor) -> Tensor:  # [arm, inst] -> [E, 1]
        v = v.to(dev, torch.float32)
        return v[:, None, :].expand(arms, plan.chains, n_inst).reshape(E, 1)

    nb_e = rows(plan.nbeta).view(E)
    stride = torch.tensor(plan.stride or [1] * arms, dtype=torch.float64)
    coarse = bool((stride > 1).any())
    half_eps = rows(plan.step) / 2
    sqrt_eps = (rows(plan.step) / rows(stride[:, None].expand(arms, n_inst))).sqrt()
    gamma = float(plan.gamma)
    if coarse:  # an arm of stride r updates on the steps where (step + 1) % r == 0
        r_e = rows(stride[:, None].expand(arms, n_inst))
        period = int(stride.max())
        phase = torch.arange(1, period + 1, device=dev, dtype=torch.float32)[:, None, None]
        due_table = (phase % r_e[None] == 0).float()  # [period, E, 1]
        acc_xi = torch.zeros(E, P, device=dev)

    # fused SGLD (memlens.sampling.fused_sgld): the model's kernel takes the step; None: torch
    fused = fused_sgld.stepper(model, expanded, data, plan.batch_size, W, W0, 2 * half_eps, nb_e,
                               gamma, hooks=plan.hooks, stride=plan.stride)  # fmt: skip
    groups = plan.stream or list(range(arms))
    steps = plan.draws * plan.thin
    noise = _Streams(plan.seed, 41, groups, plan.chains, (n_inst, P), dev, True, steps)
    full = plan.batch_size is None
    if full:
        fixed = expand_batch(data, copies)
    else:
        b = plan.batch_size
        col = (torch.arange(E, device=dev) % n_inst)[:, None]
        n_pts = data.n_points().to(dev, torch.float32)[col[:, 0]][:, None]

        def flat_rows(u: Tensor) -> Tensor:
            """Uniforms [K, copies, batch, inst] -> rows of the flattened training set
            [K, E * batch], instance-major (see expand_batch), for one index_select per step."""
            u = u.transpose(2, 3).reshape(u.shape[0], E, b)
            idx = (u * n_pts).long().clamp_max(len(data) - 1) * n_inst + col
            return idx.reshape(u.shape[0], E * b)

        post = flat_rows if fused is None else None  # fused SGLD: its kernel reads the uniforms
        picks = _Streams(plan.seed, 43, groups, plan.chains, (b, n_inst), dev, False, steps,
                         post=post)  # fmt: skip
        flat_x = data.inputs.reshape(-1, *data.inputs.shape[2:])
        flat_y = None if data.targets is None else data.targets.reshape(-1, *data.targets.shape[2:])
    reuse_eval = full and setup.eval_is_full and plan.eval_every == 1
    eval_x = None if reuse_eval else expand_batch(setup.eval_set, copies)

    eval_draws = [k for k in range(plan.draws) if k % plan.eval_every == plan.eval_every - 1]
    traces = torch.empty(plan.draws, E, device=dev)
    evals = torch.empty(len(eval_draws), E, device=dev)
    acc = torch.zeros(E, device=dev)
    kept: list[dict[str, Tensor]] | None = [] if plan.keep_draws else None
    n_eval = 0
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
    with warnings.catch_warnings(), expanded.hooks(fwd_hooks=plan.hooks or []):
        # the parameters are row slices of W, so their .grad views cannot be dense; PyTorch
        # warns (once) that this "may impair performance", and accumulates into them in place
        warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout")
        for step in bar:
            if fused is not None:  # fused SGLD: same noise and minibatch streams as the torch step
                loss = fused.step(noise.next().reshape(E, P), None if full else picks.next())
                if plan.thin > 1:
                    acc += loss
            else:  # the torch step
                if full:
                    batch = fixed
                else:
                    idx = picks.next()
                    x = flat_x.index_select(0, idx).view(E, b, *flat_x.shape[1:]).transpose(0, 1)
                    tg = None
                    if flat_y is not None:
                        tg = flat_y.index_select(0, idx).view(E, b, *flat_y.shape[1:])
                        tg = tg.transpose(0, 1)
                    batch = Batch(x, tg, None, None)
                loss = expanded.loss(batch)  # [E], at the weights before this step's update
                G.zero_()
                if in_place:
                    loss.backward(nb_e)  # d(Σ_e nβ_e L_e)/dW, accumulated into G
                    if step == 0 and not _grads_in_place(params, G):  # pragma: no cover
                        in_place = False
                        torch.cat([p.grad.reshape(E, -1) for p in params], 1, out=G)
                else:  # pragma: no cover
                    grads = torch.autograd.grad((nb_e * loss).sum(), params)
                    torch.cat([g.reshape(E, -1) for g in grads], 1, out=G)
                xi = noise.next().reshape(E, P)
                with torch.no_grad():
                    if plan.thin > 1:
                        acc += loss
                    G.add_(W - W0, alpha=gamma)
                    if coarse:
                        due = due_table[step % period]
                        acc_xi += xi
                        W.addcmul_(half_eps * due, G, value=-1.0)
                        W.addcmul_(sqrt_eps * due, acc_xi)
                        acc_xi.mul_(1 - due)
                    else:
                        W.addcmul_(half_eps, G, value=-1.0)
                        W.addcmul_(sqrt_eps, xi)
            if step % plan.thin != plan.thin - 1:
                continue
            k = step // plan.thin
            if plan.thin > 1:
                torch.div(acc, plan.thin, out=traces[k])
                acc.zero_()
            else:
                traces[k] = loss.detach()
            if n_eval < len(eval_draws) and eval_draws[n_eval] == k:
                if reuse_eval:
                    evals[n_eval] = loss.detach()
                else:
                    with torch.no_grad():  # fused SGLD: the kernel's loss where it can
                        out = None if fused is None else fused.loss(setup.eval_set)
                        evals[n_eval] = expanded.loss(eval_x) if out is None else out
                n_eval += 1
            if k >= plan.burnin and (k - plan.burnin) % plan.probe_every == 0:
                if on_draw is not None:
                    with torch.no_grad():
                        on_draw(expanded, k)
                if kept is not None:
                    kept.append({n: v.detach().clone() for n, v in expanded.state_dict().items()})
    bar.close()
    with torch.no_grad():
        finite = torch.isfinite(W).all(1)
        msd = ((W - W0) ** 2).sum(1) / P
        diffusion = (msd / (sqrt_eps.view(E) ** 2 * steps)).nan_to_num(float("inf"))

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
    )


def eval_schedule(setup: Setup, batch_size: int | None, thin: int, draws: int, burnin: int) -> int:
    """Draws between evaluations of the diagnostic loss: every draw with full-batch gradients
    (free); with minibatches, as rarely as keeps its cost near a tenth of sampling, but at least
    40 evaluations per chain after burn-in."""
    if batch_size is None and setup.eval_is_full:
        return 1
    m = len(setup.eval_set)
    b = batch_size or len(setup.data)
    cost = m / (3 * b * thin)  # one forward on m points vs one draw interval (forward + backward)
    every = math.ceil(cost / 0.1)
    return max(1, min(every, (draws - burnin) // 40))
