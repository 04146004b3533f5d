"""A frozen diagonal preconditioner for stiff posteriors, and the curvature it leaves.

One step size must serve every direction of the posterior; when curvatures differ by orders of
magnitude (circuits of very different efficiency in one model), the stiffest sets the step and the
flattest never mixes. A diagonal preconditioner M rescales each coordinate by its own curvature:

    M = 1 / ((nβ/t) |diag H| + γ),

with diag H the Hessian's diagonal of L_n at w*, estimated with Hutchinson's estimator
E_z[z ⊙ Hz] over Rademacher z (exactly, from unit vectors, when there are few parameters). Not
from gradient noise: where the model fits its data exactly, per-example gradients vanish at w*
while the curvature does not. M is computed once per rung and instance and frozen for the run, so
the sampler keeps its stationary distribution exactly as ε → 0. Where the curvature at w*
understates the curvature a posterior's width away (a quartic direction, flat at w*), the
diagonal is blended with its value at points drawn at that width
(:func:`posterior_preconditioner`). The preconditioned posterior's top curvature (power
iteration on M^{1/2} A M^{1/2}, A = (nβ/t) H + γ) seeds ``step_size="auto"`` the way the plain
top curvature (:func:`top_curvature`) does without it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from memlens.data import mix_seed as _mix
from memlens.sampling.sgld import Setup, expand_batch

__all__ = [
    "top_curvature",
    "hessian_diagonal",
    "preconditioner",
    "preconditioned_curvature",
    "posterior_preconditioner",
]

#: at most this many training points enter the curvature estimates (the blend: BLEND_POINTS);
#: PROBE_POINTS with Hutchinson's probes, whose own noise (a median 23% per coordinate with 32
#: probes on the benchmark's TMS) exceeds that of the smaller subsample (15% from 1024 to 256)
MAX_POINTS = 1024
PROBE_POINTS = 256
BLEND_POINTS = 256


def _subset(setup: Setup, seed: int, max_points: int = MAX_POINTS):
    data = setup.data
    if len(data) > max_points:
        g = torch.Generator().manual_seed(_mix(seed, 53))
        idx = torch.randperm(len(data), generator=g)[:max_points].to(data.inputs.device)
        data = data.gather(idx[:, None].expand(-1, data.n_instances))
    return data


class _Hvp:
    """Hessian-vector products of L_n for every row of ``copies`` copies of the model at w*
    (row e = copy · n_inst + inst), with vectors as flat ``[E, P]`` tensors."""

    def __init__(self, setup: Setup, copies: int, seed: int, offset: Tensor | None = None,
                 max_points: int = MAX_POINTS):  # fmt: skip
        self.model = setup.model.expand(copies)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.sizes = [p[0].numel() for p in self.params]
        self.batch = expand_batch(_subset(setup, seed, max_points), copies)
        if offset is not None:  # evaluate at w* + offset (rows as in the flat buffer)
            with torch.no_grad():
                for p, d in zip(self.params, offset.split(self.sizes, 1), strict=True):
                    p.add_(d.reshape(p.shape).to(p))

    def __call__(self, v: Tensor) -> Tensor:
        vs = [x.reshape(p.shape) for x, p in zip(v.split(self.sizes, 1), self.params, strict=True)]
        grads = torch.autograd.grad(self.model.loss(self.batch).sum(), self.params,
                                    create_graph=True)  # fmt: skip
        dot = sum((g * x).sum() for g, x in zip(grads, vs, strict=True))
        hv = torch.autograd.grad(dot, self.params)
        return torch.cat([h.reshape(h.shape[0], -1) for h in hv], 1).detach()


def hessian_diagonal(setup: Setup, probes: int = 32, seed: int = 0) -> Tensor:
    """diag H of L_n at w*, ``[inst, P]`` float64: exact (unit vectors, on ``MAX_POINTS``) when
    P ≤ ``probes``, else Hutchinson's estimate over ``probes`` Rademacher vectors (on
    ``PROBE_POINTS``), all in one batched HVP."""
    P, n_inst = setup.n_params, setup.nbeta.numel()
    dev = setup.model.device
    exact = P <= probes
    copies = P if exact else probes
    hvp = _Hvp(setup, copies, seed, max_points=MAX_POINTS if exact else PROBE_POINTS)
    if exact:
        z = torch.eye(P, device=dev).repeat_interleave(n_inst, 0)  # row c·n_inst + i: e_c
    else:
        g = torch.Generator().manual_seed(_mix(seed, 73))
        z = (torch.randint(0, 2, (copies * n_inst, P), generator=g) * 2 - 1).float().to(dev)
    zh = (z * hvp(z)).double().view(copies, n_inst, P)
    return (zh.sum(0) if exact else zh.mean(0)).cpu()


def preconditioner(h_diag: Tensor, nbeta: Tensor, gamma: float) -> Tensor:
    """M ``[arm, inst, P]`` = 1 / ((nβ/t) |diag H| + γ) for ``nbeta [arm, inst]`` (effective),
    floored at 10⁻⁸ of each row's stiffest curvature (a parameter without curvature and γ = 0)."""
    a = nbeta.double()[:, :, None] * h_diag.abs()[None] + gamma
    a = torch.maximum(a, 1e-8 * a.amax(-1, keepdim=True) + 1e-30)
    return (1.0 / a).float()


def preconditioned_curvature(setup: Setup, M: Tensor, nbeta: Tensor, gamma: float,
                             iters: int = 30, seed: int = 0) -> Tensor:  # fmt: skip
    """Top eigenvalue of M^{1/2} ((nβ/t) H + γ) M^{1/2} per arm and instance (``[arm, inst]``,
    float64), by power iteration, every arm and instance in one batched HVP per iteration."""
    arms, n_inst, P = M.shape
    dev = setup.model.device
    hvp = _Hvp(setup, arms, seed)
    m = M.reshape(arms * n_inst, P).to(dev)
    root = m.sqrt()
    nb = nbeta.reshape(-1, 1).to(dev, torch.float32)
    g = torch.Generator().manual_seed(_mix(seed, 59))
    v = torch.randn(arms * n_inst, P, generator=g).to(dev)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
    lam = torch.zeros(arms * n_inst, dtype=torch.float64)
    for _ in range(iters):
        u = root * (nb * hvp(root * v) + gamma * root * v)
        lam = (u * v).sum(1).double().cpu()
        v = u / u.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return lam.abs().view(arms, n_inst)


def posterior_preconditioner(setup: Setup, nbeta: Tensor, gamma: float, *, iters: int = 3,
                             repeats: int = 4, seed: int = 0) -> Tensor:  # fmt: skip
    """M ``[arm, inst, P]`` from the larger of |diag H| at w* and its mean over points
    w* + √M ⊙ ξ drawn at the current posterior scale of each rung (``repeats`` points per
    coordinate, exact diagonals from unit vectors, or Rademacher probes for many parameters),
    iterated ``iters`` times with geometric damping. Directions flat at w* but walled a posterior
    width away (w⁴) get the step their walls allow; M never exceeds the w* value."""
    h0 = hessian_diagonal(setup, seed=seed)  # [inst, P]
    M = preconditioner(h0, nbeta, gamma)
    arms, n_inst, P = M.shape
    dev = setup.model.device
    exact = P <= 32
    width = P if exact else 8  # Rademacher probes per point when there are many parameters
    repeats = repeats if exact else 1
    copies = arms * repeats * width
    if exact:
        z = torch.eye(P).repeat_interleave(n_inst, 0).repeat(arms * repeats, 1)
    for it in range(iters):  # each arm its own stream: a rung's M does not depend on the ladder
        gens = [torch.Generator().manual_seed(_mix(seed, 79, it, k)) for k in range(arms)]
        xi = torch.stack([torch.randn(repeats * width, n_inst, P, generator=g) for g in gens])
        delta = (M.sqrt()[:, None] * xi).reshape(copies * n_inst, P)
        if not exact:
            z = torch.cat([torch.randint(0, 2, (repeats * width * n_inst, P), generator=g)
                           for g in gens]).float() * 2 - 1  # fmt: skip
        hvp = _Hvp(setup, copies, seed, offset=delta.to(dev), max_points=BLEND_POINTS)
        zh = (z.to(dev) * hvp(z.to(dev))).double().cpu().view(arms, repeats, width, n_inst, P)
        h = (zh.sum(2) if exact else zh.mean(2)).abs().mean(1)  # [arm, inst, P]
        a = nbeta.double()[:, :, None] * torch.maximum(h, h0.abs()[None]) + gamma
        M_new = (1.0 / torch.maximum(a, 1e-8 * a.amax(-1, keepdim=True) + 1e-30)).float()
        M = (M * M_new).sqrt()
    return M


def top_curvature(setup: Setup, iters: int = 30, max_points: int = 4096, seed: int = 0) -> Tensor:
    """Largest |eigenvalue| of the Hessian of L_n at w*, per instance (``[inst]``, float64), by
    power iteration on Hessian-vector products (double backprop) on at most ``max_points``
    training points."""
    model = setup.model.expand(1)
    data = setup.data
    if len(data) > max_points:
        g = torch.Generator().manual_seed(_mix(seed, 53))
        idx = torch.randperm(len(data), generator=g)[:max_points].to(data.inputs.device)
        data = data.gather(idx[:, None].expand(-1, data.n_instances))
    params = [p for p in model.parameters() if p.requires_grad]
    n_inst = model.n_instances
    g = torch.Generator().manual_seed(_mix(seed, 59))
    v = [torch.randn(p.shape, generator=g).to(p) for p in params]

    def per_inst(xs: list[Tensor]) -> Tensor:  # sum over each instance's coordinates
        return sum(x.reshape(n_inst, -1).sum(1) for x in xs)

    norm = per_inst([x * x for x in v]).sqrt().clamp_min(1e-30)
    v = [x / norm.view(-1, *([1] * (x.ndim - 1))) for x in v]
    lam = torch.zeros(n_inst, dtype=torch.float64)
    for _ in range(iters):
        grads = torch.autograd.grad(model.loss(data).sum(), params, create_graph=True)
        hv = torch.autograd.grad(
            sum((gr * x).sum() for gr, x in zip(grads, v, strict=True)), params
        )
        lam = per_inst([h * x for h, x in zip(hv, v, strict=True)]).detach().double().cpu()
        norm = per_inst([h.detach() ** 2 for h in hv]).sqrt().clamp_min(1e-30)
        v = [h.detach() / norm.view(-1, *([1] * (h.ndim - 1))) for h in hv]
    return lam.abs()
