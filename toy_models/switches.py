"""Exactly solvable models for scoring the sampler: a bucket of switch circuits, and two-layer deep
linear networks (reduced-rank regression) with their known learning coefficient.

**Switches.** Circuit k of an instance owns one weight w_k and buys a loss gain Δ_k inside a
narrow well of width σ_k around w*_k = 0, and nothing outside it:

    L(w) = −Σ_k Δ_k a_k(w),   a_k(w) = exp(−w_k² / (2 σ_k²))      (hook_act reads a_k)

(the loss does not depend on the data: every training point is a row of ones, so n only sets the
default nβ = n / log n). The localised tempered posterior p(w) ∝ exp(−(nβ/t) L(w) − (γ/2)‖w‖²)
factorises over circuits, so every quantity the sampler reports has an exact value by 1-D
quadrature (:func:`switch_truth`): λ(t) = Σ_k (nβ/t) Δ_k (1 − E[a_k]), each circuit's survival
1 − √E[(1 − a_k)²] (what ``probes/survival.py`` measures, with a* = 1) and its characteristic
temperature, where that survival crosses 0.5. Cold, a circuit sits in its well (λ_k ≈ 1/2); hot,
it is noised out into the wide region held only by γ (λ_k → 0). The well is an entropic trap:
SGLD started in it at a temperature where the circuit is dead stays there, which is exactly the
metastability replica exchange must cure.

**Deep linear networks.** f(x) = B A x with A [H, N], B [M, H], targets y = B0 A0 x of rank r
(noise-free, so w* fits exactly), Gaussian inputs. The learning coefficient is Aoyagi & Watanabe
(2005)'s (:func:`aoyagi_llc`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from memlens.data import Batch
from memlens.hooked import Circuits, HookedToyModel, ToyConfig, check_positive_int

__all__ = [
    "Switches",
    "SwitchesConfig",
    "switch_data",
    "switch_truth",
    "circuit_truth",
    "DeepLinear",
    "DeepLinearConfig",
    "deep_linear",
    "aoyagi_llc",
    "Polynomial",
    "polynomial",
    "polynomial_llc",
]


@dataclass(frozen=True)
class SwitchesConfig(ToyConfig):
    n_circuits: int = 1

    def validate(self) -> None:
        super().validate()
        check_positive_int("n_circuits", self.n_circuits)


class Switches(HookedToyModel):
    """A bucket of independent switch circuits per instance (see the module docstring). The gains
    Δ and widths σ are buffers ``[inst, circuit]`` (set them with :meth:`build`); w* = 0."""

    Config = SwitchesConfig
    input_dims = ("batch", "inst", "circuit")
    circuit_families = ("switch",)

    def __init__(self, n_circuits: int = 1, n_instances: int = 1, seed: int = 0):
        super().__init__(SwitchesConfig(n_instances=n_instances, seed=seed, n_circuits=n_circuits))
        self.w = nn.Parameter(torch.zeros(n_instances, n_circuits))
        self.register_buffer("gain", torch.ones(n_instances, n_circuits))
        self.register_buffer("sigma", torch.full((n_instances, n_circuits), 0.1))
        self.hook_act = HookPoint()
        self.setup()

    @classmethod
    def build(cls, gains, sigma=0.1) -> Switches:
        """A model from gains ``[inst][circuit]`` (and widths, one number or the same shape)."""
        g = torch.as_tensor(gains, dtype=torch.float32)
        if g.ndim != 2 or not bool((g > 0).all()):
            raise ValueError(f"gains must be positive, shaped [inst][circuit]; got {gains!r}")
        s = torch.as_tensor(sigma, dtype=torch.float32).expand_as(g)
        if not bool((s > 0).all()):
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        model = cls(n_circuits=g.shape[1], n_instances=g.shape[0])
        model.gain.copy_(g)
        model.sigma.copy_(s)
        return model

    @property
    def d_in(self) -> int:
        return self.cfg.n_circuits

    def activation(self) -> Tensor:
        return torch.exp(-0.5 * (self.w / self.sigma) ** 2)  # [inst, circuit]

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.hook_act(x * self.activation())  # [batch, inst, circuit]

    def per_example_loss(self, batch: Batch) -> Tensor:
        return -(self(batch.inputs) * self.gain).sum(-1)

    def circuits(self, train) -> Circuits:
        ones = torch.ones(1, self.n_instances, self.d_in, device=self.device)
        names = [f"switch:{k}" for k in range(self.d_in)]
        return Circuits(names, ones, ("hook_act",), lambda acts: acts["hook_act"][..., 0, :, :])


def switch_data(model: Switches, n: int = 100) -> Batch:
    """``n`` training points (rows of ones): they set n, hence nβ = n / log n."""
    return Batch(torch.ones(n, model.n_instances, model.d_in), None)


def circuit_truth(gain: float, sigma: float, nbeta: float, gamma: float) -> dict:
    """Exact λ_k, E[a], survival 1 − √E[(1 − a)²] of one switch circuit at effective inverse
    temperature ``nbeta`` (= nβ/t), by quadrature on a sinh grid (resolves both the well, of width
    down to σ/√(nβΔ), and the wide region of width 1/√γ)."""
    b = nbeta * gain
    inner = sigma / math.sqrt(1.0 + b)
    outer = 12.0 / math.sqrt(gamma) if gamma > 0 else 50.0 * sigma
    c = inner / 20.0
    u = np.linspace(-math.asinh(outer / c), math.asinh(outer / c), 40001)
    w = c * np.sinh(u)
    jac = c * np.cosh(u)
    a = np.exp(-0.5 * (w / sigma) ** 2)
    logp = b * a - 0.5 * gamma * w**2
    p = np.exp(logp - logp.max()) * jac
    z = np.trapezoid(p, u)
    ea = np.trapezoid(p * a, u) / z
    e2 = np.trapezoid(p * (1 - a) ** 2, u) / z
    return {"llc": b * (1 - ea), "mean_activation": ea, "survival": max(0.0, 1 - math.sqrt(e2))}


def _char_temp(gain, sigma, nbeta, gamma, threshold) -> float:
    lo, hi = 1e-6, 1e9  # survival falls with t: bisect in log t
    for _ in range(80):
        mid = math.sqrt(lo * hi)
        s = circuit_truth(gain, sigma, nbeta / mid, gamma)["survival"]
        lo, hi = (mid, hi) if s >= threshold else (lo, mid)
    return math.sqrt(lo * hi)


def switch_truth(model: Switches, nbeta, temperatures, gamma: float = 1.0, threshold=0.5) -> dict:
    """Exact values for ``model`` at ``temperatures`` (nβ at t = 1 per instance or one number):
    ``llc [temp, inst]``, ``survival [temp, inst, circuit]``, ``char_temp [inst, circuit]``."""
    temps = [float(t) for t in temperatures]
    n_i, n_k = model.gain.shape
    nb = torch.as_tensor(nbeta, dtype=torch.float64).expand(n_i).tolist()
    llc = torch.zeros(len(temps), n_i, dtype=torch.float64)
    surv = torch.zeros(len(temps), n_i, n_k, dtype=torch.float64)
    tc = torch.zeros(n_i, n_k, dtype=torch.float64)
    for i in range(n_i):
        for k in range(n_k):
            g, s = float(model.gain[i, k]), float(model.sigma[i, k])
            for a, t in enumerate(temps):
                r = circuit_truth(g, s, nb[i] / t, gamma)
                llc[a, i] += r["llc"]
                surv[a, i, k] = r["survival"]
            tc[i, k] = _char_temp(g, s, nb[i], gamma, threshold)
    return {"llc": llc, "survival": surv, "char_temp": tc}


# ---------------------------------------------------------------------- deep linear networks
@dataclass(frozen=True)
class DeepLinearConfig(ToyConfig):
    n_in: int = 3
    hidden: int = 2
    n_out: int = 3


class DeepLinear(HookedToyModel):
    """f(x) = B A x per instance, squared error. Hooks: hook_hidden, hook_out."""

    Config = DeepLinearConfig
    input_dims = ("batch", "inst", "n_in")

    def __init__(self, n_in: int = 3, hidden: int = 2, n_out: int = 3, n_instances: int = 1,
                 seed: int = 0):  # fmt: skip
        cfg = DeepLinearConfig(n_instances=n_instances, seed=seed, n_in=n_in, hidden=hidden,
                               n_out=n_out)  # fmt: skip
        super().__init__(cfg)
        self.A = nn.Parameter(torch.zeros(n_instances, hidden, n_in))
        self.B = nn.Parameter(torch.zeros(n_instances, n_out, hidden))
        self.hook_hidden = HookPoint()
        self.hook_out = HookPoint()
        self.setup()

    @property
    def d_in(self) -> int:
        return self.cfg.n_in

    @property
    def width(self) -> int:
        return max(self.cfg.n_in, self.cfg.hidden, self.cfg.n_out)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        h = self.hook_hidden(torch.einsum("bin,ihn->bih", x, self.A))
        return self.hook_out(torch.einsum("bih,ioh->bio", h, self.B))

    def per_example_loss(self, batch: Batch) -> Tensor:
        return ((self(batch.inputs) - batch.targets) ** 2).sum(-1)


def deep_linear(n_in, hidden, n_out, rank, n=1000, n_instances=1, seed=0, scale=1.0):
    """A DLN sitting at a true parameter (A0, B0) whose product has rank ``rank`` ≤ ``hidden``,
    with noise-free targets on ``n`` Gaussian inputs. Returns (model, data)."""
    if not 0 <= rank <= hidden:
        raise ValueError(f"rank must be in [0, hidden={hidden}], got {rank}")
    g = torch.Generator().manual_seed(seed)
    model = DeepLinear(n_in, hidden, n_out, n_instances)
    with torch.no_grad():
        A = torch.randn(n_instances, hidden, n_in, generator=g) * scale
        B = torch.randn(n_instances, n_out, hidden, generator=g) * scale
        A[:, rank:] = 0.0  # the unused hidden units: their rows of A and columns of B are 0
        B[:, :, rank:] = 0.0
        model.A.copy_(A)
        model.B.copy_(B)
        x = torch.randn(n, n_instances, n_in, generator=g)
        y = model(x)
    return model, Batch(x, y.detach())


def aoyagi_llc(n_in: int, hidden: int, n_out: int, rank: int) -> float:
    """The learning coefficient of reduced-rank regression (Aoyagi & Watanabe 2005, Theorem 1),
    with N inputs, H hidden units, M outputs and true rank r."""
    N, H, M, r = n_in, hidden, n_out, rank
    if M + H < N + r:
        return (H * M - H * r + N * r) / 2
    if N + H < M + r:
        return (H * N - H * r + M * r) / 2
    if M + N < H + r:
        return M * N / 2
    s = 2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2
    return (s if (M + H + N + r) % 2 == 0 else s + 1) / 8


# ---------------------------------------------------------------------- polynomial regression
@dataclass(frozen=True)
class PolynomialConfig(ToyConfig):
    d: int = 2
    power: int = 1


class Polynomial(HookedToyModel):
    """f(x) = x_1 w_1 + Σ_{j>1} x_j w_j^p, squared error: ``power=1`` is linear regression (a
    regular model, λ = d/2); ``power=2`` at w* = 0 with zero targets is singular, λ = 1/2 +
    (d − 1)/4 (the model of tests/memlens/test_sampling.py)."""

    Config = PolynomialConfig
    input_dims = ("batch", "inst", "d")

    def __init__(self, d: int = 2, power: int = 1, n_instances: int = 1, seed: int = 0):
        super().__init__(PolynomialConfig(n_instances=n_instances, seed=seed, d=d, power=power))
        self.w = nn.Parameter(torch.zeros(n_instances, d))
        self.hook_out = HookPoint()
        self.setup()

    @property
    def d_in(self) -> int:
        return self.cfg.d

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        p = self.cfg.power
        out = x[..., 0] * self.w[:, 0]
        for j in range(1, self.cfg.d):
            out = out + x[..., j] * self.w[:, j] ** p
        return self.hook_out(out[..., None])

    def per_example_loss(self, batch: Batch) -> Tensor:
        return ((self(batch.inputs) - batch.targets) ** 2).sum(-1)


def polynomial(d: int, power: int, n: int = 1000, seed: int = 0):
    """(model, data): ``power=1``: linear regression at its least-squares fit (exact λ by
    :func:`polynomial_llc`); ``power=2``: the singular model at w* = 0 with zero targets."""
    g = torch.Generator().manual_seed(seed + d)
    x = torch.randn(n, 1, d, generator=g)
    model = Polynomial(d, power)
    if power == 2:
        return model, Batch(x, torch.zeros(n, 1, 1))
    y = (x * torch.randn(1, d, generator=g)).sum(-1, keepdim=True)
    y = y + 0.1 * torch.randn(n, 1, 1, generator=g)
    with torch.no_grad():
        model.w[0] = torch.linalg.lstsq(x[:, 0], y[:, 0, 0]).solution
    return model, Batch(x, y)


def polynomial_llc(model: Polynomial, data: Batch, nbeta: float, gamma: float) -> float:
    """Exact nβ E[L − L*] of the localised posterior: closed form for the regular model; a 2-D
    grid quadrature for the singular d = 2 model."""
    x = data.inputs[:, 0].double()
    s = x.T @ x / len(x)
    if model.cfg.power == 1:
        sig = torch.linalg.eigvalsh(s)
        return float((nbeta * sig / (2 * nbeta * sig + gamma)).sum())
    if model.cfg.d != 2:
        raise ValueError("the quadrature covers the singular model with d = 2")
    a = 8 / math.sqrt(2 * nbeta * float(s[0, 0]))
    b = 6 * (nbeta * float(s[1, 1])) ** -0.25
    w1 = torch.linspace(-a, a, 1601, dtype=torch.float64)[:, None]
    w2 = torch.linspace(-b, b, 1601, dtype=torch.float64)[None, :]
    loss = s[0, 0] * w1**2 + 2 * s[0, 1] * w1 * w2**2 + s[1, 1] * w2**4
    logp = -nbeta * loss - gamma / 2 * (w1**2 + w2**2)
    p = (logp - logp.max()).exp()
    return float(nbeta * (p * loss).sum() / p.sum())
