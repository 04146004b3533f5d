"""Why tempering misses the MLP block's planted memories: a point's loss rise under SGLD follows
how sensitive its output is to the weights, and the planted points' outputs are less sensitive.

    python benchmarks/mlp_tempering_sensitivity.py          # about 1 min on 2 cores
    python benchmarks/mlp_tempering_sensitivity.py --steps  # λ̂ at t = 1 against ε (11 min)

The model is ``benchmarks/memorisation_detection.py``'s MLP block past its peak (T = 1000, 3
seeds, 10 points with another point's target). For a one-hidden-layer block ``out = W_out
relu(W_in x + b_in) + b_out``, the squared Frobenius norm of the Jacobian of a point's output with
respect to all weights is, in closed form,

    S = d_out (|h|^2 + 1) + (|x|^2 + 1) * sum_j [z_j > 0] |W_out[:, j]|^2,

the first-order size of the output's change under isotropic weight noise. The script prints the
AUROC of S for the planted points, tempers at t = 1 with the detection benchmark's fixed step, and
prints the cells' health, the Spearman correlation of each point's loss rise with S, and the AUROC
of the rise with S divided out. ``--steps`` instead prints λ̂ at t = 1 at that step and two smaller
ones (same physical time, 4 chains x 100 draws), with memlens's Leimkuhler-Matthews step and with
the Euler-Maruyama step: how far the fixed step is from the ε -> 0 answer under each.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memorisation_detection import SETTINGS, packed  # noqa: E402

from probes.memorised import auroc, find_memorised  # noqa: E402


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def sensitivity(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S, its d_out (|h|^2 + 1) part)``, each ``[inst, T]``: the squared Frobenius norm of the
    Jacobian of each point's output with respect to all of an MLP block's weights (docstring)."""
    W_in, b_in, W_out = (p.detach() for p in (model.W_in, model.b_in, model.W_out))
    z = torch.einsum("ijd,tid->tij", W_in, x) + b_in[None]  # [T, inst, d_mlp]
    S_out = W_out.shape[1] * ((z.relu() ** 2).sum(-1) + 1)
    S_in = ((x**2).sum(-1) + 1) * torch.einsum("tij,ij->ti", (z > 0).float(), (W_out**2).sum(1))
    return (S_in + S_out).T, S_out.T


def autograd_check(model, x: torch.Tensor, S: torch.Tensor, n: int = 4) -> float:
    """Largest relative difference between the closed-form S and the squared Frobenius norm of
    ``torch.func.jacrev`` of each instance's output, over its first ``n`` points (after checking
    that the formula's forward is the model's)."""

    def f(W_in, b_in, W_out, b_out, xi):
        return W_out @ torch.relu(W_in @ xi + b_in) + b_out

    worst = 0.0
    with torch.no_grad():
        out = model(x[:n])  # [n, inst, d_out]
    for i in range(x.shape[1]):
        W = [p.detach()[i] for p in (model.W_in, model.b_in, model.W_out, model.b_out)]
        for t in range(n):
            assert torch.allclose(f(*W, x[t, i]), out[t, i], atol=1e-5)
            J = torch.func.jacrev(f, argnums=(0, 1, 2, 3))(*W, x[t, i])
            fro = sum(float((j**2).sum()) for j in J)
            worst = max(worst, abs(fro - float(S[i, t])) / fro)
    return worst


def fmt(xs) -> str:
    return ", ".join(f"{float(v):.2f}" for v in xs)


def steps(model, train) -> None:
    import memlens

    eps0 = SETTINGS["mlp"]["step_size"]
    print("λ̂ at t = 1 per seed (4 chains x 100 draws; ε x thin fixed), and the cells' health")
    for eps, thin in ((eps0, 3), (eps0 / 3, 9), (eps0 / 10, 30)):
        for integrator in ("lm", "euler"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = memlens.temper(model, train, [1.0], chains=4, draws=100, thin=thin,
                                     step_size=eps, seed=0, progress=False,
                                     integrator=integrator)  # fmt: skip
            ok = int(res.health.ok.sum())
            print(f"  ε = {eps:.2g} {integrator:5s}: λ̂ {fmt(res.llc.mean[0])} (± "
                  f"{fmt(res.llc.se[0])}); {ok} of {res.health.ok.numel()} healthy")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", action="store_true", help="λ̂ at t = 1 against the step size")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, train, _, _ = packed("mlp", 1000, 3)
    if args.steps:
        steps(model, train)
        return
    x = train.inputs  # [T, inst, d_model]
    S, S_out = sensitivity(model, x)
    print(f"closed form checked against autograd on 4 points per seed: max relative difference "
          f"{autograd_check(model, x, S):.1e}")  # fmt: skip
    planted = train.planted.T
    print(f"planted points: {int(planted.sum())} of {planted.numel()} (3 seeds)")
    print(f"output sensitivity S: AUROC {fmt(auroc(S, planted))} per seed (planted mean "
          f"{float(S[planted].mean()):.0f} vs the rest {float(S[~planted].mean()):.0f}); its "
          f"|h|^2 part alone: {fmt(auroc(S_out, planted))}")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = find_memorised(model, train, detectors=["tempering_rise"], temperature=1.0, seed=0,
                             progress=False, chains=4, draws=100, thin=3,
                             step_size=SETTINGS["mlp"]["step_size"])  # fmt: skip
    rise = res.scores["tempering_rise"]
    ok = torch.tensor(res.extra["tempering"]["healthy"])
    rho = [spearman(rise[i].numpy(), S[i].numpy()) for i in range(len(rise))]
    print(f"tempering at t = 1 ({int(ok.sum())} of {ok.numel()} cells healthy): loss-rise AUROC "
          f"{fmt(auroc(rise, planted))}; Spearman of the rise with S per seed {fmt(rho)}; "
          f"AUROC of rise / S {fmt(auroc(rise / S, planted))}")  # fmt: skip


if __name__ == "__main__":
    main()
