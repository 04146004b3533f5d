"""LLC accuracy on 2-parameter models with known answers: the old recommended step vs "auto".

The issue's case (n = 10^4, nβ = n / log n, γ = 1, full batch): a regular model, linear
regression at its least-squares fit (λ = d/2 = 1, exactly Σ_j nβσ_j/(2nβσ_j + γ) with γ), and a
singular one, f(x) = w1 x1 + w2² x2 with targets 0 at w* = 0 (λ = 1/2 + 1/4 = 3/4, exactly nβ E[L]
under the localised posterior, by quadrature). Before this change, ``memlens.calibrate`` over
ε in {1e-6, ..., 1e-2} recommended ε = 1e-3 for both (the largest step that did not diverge), and
``estimate_llc`` there gave λ̂ 124% and 80% too high with R-hat ≈ 1.00 (commit a4bad90). This
script runs that step and ``step_size="auto"`` side by side and prints the errors. The old step
runs twice: with the Euler-Maruyama step of that commit (``integrator="euler"``) and with
memlens's default Leimkuhler-Matthews step, exact on the regular model's Gaussian posterior.

    python benchmarks/llc_ground_truth.py [--chains 16] [--draws 300] [--seed 0] [--max-steps N]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from dataclasses import dataclass

import torch
from transformer_lens.hook_points import HookPoint

import memlens
from memlens.data import Batch
from memlens.hooked import HookedToyModel, ToyConfig

N, GAMMA, OLD_STEP = 10_000, 1.0, 1e-3


@dataclass(frozen=True)
class TwoConfig(ToyConfig):
    power: int = 1


class Two(HookedToyModel):
    """f(x) = w1 x1 + w2^p x2 with squared error (p = 1: regular, p = 2: singular)."""

    Config = TwoConfig

    def __init__(self, power: int = 1, n_instances: int = 1, seed: int = 0):
        super().__init__(TwoConfig(n_instances=n_instances, seed=seed, power=power))
        self.w = torch.nn.Parameter(torch.zeros(n_instances, 2))
        self.hook_out = HookPoint()
        self.setup()

    @property
    def d_in(self) -> int:
        return 2

    def forward(self, x):
        out = x[..., 0] * self.w[:, 0] + x[..., 1] * self.w[:, 1] ** self.cfg.power
        return self.hook_out(out[..., None])

    def per_example_loss(self, batch: Batch):
        return ((self(batch.inputs) - batch.targets) ** 2).sum(-1)


def regular(seed: int) -> tuple[Two, Batch, float]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 1, 2, generator=g)
    y = x @ torch.randn(2, 1, generator=g) + 0.1 * torch.randn(N, 1, 1, generator=g)
    model = Two(1)
    with torch.no_grad():
        model.w[0] = torch.linalg.lstsq(x[:, 0], y[:, 0, 0]).solution
    nb = N / math.log(N)
    sig = torch.linalg.eigvalsh(x[:, 0].double().T @ x[:, 0].double() / N)
    return model, Batch(x, y), float((nb * sig / (2 * nb * sig + GAMMA)).sum())


def singular(seed: int) -> tuple[Two, Batch, float]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 1, 2, generator=g)
    nb = N / math.log(N)
    s = x[:, 0].double().T @ x[:, 0].double() / N
    a = 8 / math.sqrt(2 * nb * float(s[0, 0]))  # a few posterior widths each way
    w1 = torch.linspace(-a, a, 1601, dtype=torch.float64)[:, None]
    b = 6 * (nb * float(s[1, 1])) ** -0.25
    w2 = torch.linspace(-b, b, 1601, dtype=torch.float64)[None, :]
    loss = s[0, 0] * w1**2 + 2 * s[0, 1] * w1 * w2**2 + s[1, 1] * w2**4
    logp = -nb * loss - GAMMA / 2 * (w1**2 + w2**2)
    p = (logp - logp.max()).exp()
    return Two(2), Batch(x, torch.zeros(N, 1, 1)), float(nb * (p * loss).sum() / p.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", type=int, default=16)
    ap.add_argument("--draws", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-steps", type=int, default=20_000, help="auto's budget per chain")
    args = ap.parse_args()
    torch.set_num_threads(1)
    kw = dict(
        chains=args.chains, draws=args.draws, localization=GAMMA, seed=args.seed, progress=False
    )
    print(
        f"n = {N}, nβ = n/log n = {N / math.log(N):.1f}, γ = {GAMMA}, full batch, "
        f"{args.chains} chains x {args.draws} draws"
    )
    print(
        f"{'model':10} {'truth':>7} {'ε=1e-3, Euler':>16} {'error':>7} {'ε=1e-3, LM':>16} "
        f"{'error':>7} {'auto':>16} {'error':>7} {'auto ε':>9} {'s':>6} {'seconds':>8}  "
        "health (auto)"
    )
    for name, make in (("regular", regular), ("singular", singular)):
        model, data, truth = make(args.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            old = memlens.estimate_llc(model, data, step_size=OLD_STEP, integrator="euler", **kw)
            lm = memlens.estimate_llc(model, data, step_size=OLD_STEP, **kw)
        t0 = time.perf_counter()
        new = memlens.estimate_llc(model, data, min_ess=400, max_steps=args.max_steps, **kw)
        dt = time.perf_counter() - t0
        lo, lo_se = float(old.llc.mean[0, 0]), float(old.llc.se[0, 0])
        lm_, lm_se = float(lm.llc.mean[0, 0]), float(lm.llc.se[0, 0])
        la, la_se = float(new.llc.mean[0, 0]), float(new.llc.se[0, 0])
        s = new.calibration.choices[0]["s"]
        print(
            f"{name:10} {truth:7.3f} {lo:9.3f} ± {lo_se:4.2f} {lo / truth - 1:+7.0%} "
            f"{lm_:9.3f} ± {lm_se:4.2f} {lm_ / truth - 1:+7.0%} "
            f"{la:9.3f} ± {la_se:4.2f} {la / truth - 1:+7.0%} {float(new.step_size[0, 0]):9.2g} "
            f"{s:6.3f} {dt:8.1f}  {new.health.describe(0, 0)}"
        )


if __name__ == "__main__":
    main()
