"""Replica exchange, the preconditioner and dispersed starts: the Metropolis rule on a hand case,
the preconditioner on closed forms, and metastability seen (or cured) on an exactly solvable
switch circuit through the default path."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest
import torch

import memlens
from memlens.sampling.exchange import Exchange
from memlens.sampling.llc import prepare
from memlens.sampling.precondition import hessian_diagonal, posterior_preconditioner
from toy_models.switches import Switches, polynomial, switch_data, switch_truth


class FixedLoss:
    """An 'expanded model' whose loss per row is whatever ``values`` holds."""

    def __init__(self, values):
        self.values = values

    def loss(self, batch):
        return self.values


def test_swaps_follow_the_metropolis_rule_on_tempered_losses():
    # 2 rungs x 1 chain x 1 instance, one parameter: row 0 cold (β = 10), row 1 hot (β = 1)
    W = torch.tensor([[1.0], [2.0]])
    eng = SimpleNamespace(W=W, expanded=FixedLoss(torch.tensor([0.5, 0.0])))
    ex = Exchange(eng, torch.tensor([[10.0], [1.0]]), [0, 1], chains=1, every=1, batch=None, seed=0)
    # (β_cold − β_hot)(L_cold − L_hot) = 9 · 0.5 > 0: the lower loss moves to the cold rung, always
    ex.propose()
    assert W.flatten().tolist() == [2.0, 1.0]
    # now the cold rung holds the lower loss: log r = 9 · (0 − 0.5) = −4.5, accepted at rate e^−4.5
    eng.expanded = FixedLoss(torch.tensor([0.0, 0.5]))
    accepted = 0
    for _ in range(4000):
        W.copy_(torch.tensor([[2.0], [1.0]]))
        ex.sweep = 0  # always the pair (0, 1)
        ex.propose()
        accepted += int(W[0, 0] == 1.0)
    assert abs(accepted / 4000 - math.exp(-4.5)) < 4 * math.sqrt(math.exp(-4.5) / 4000)
    stats = ex.stats()
    assert stats.pairs == [(0, 1)] and 0 < float(stats.accept[0, 0]) < 0.1
    assert "rarely swaps" in stats.describe(torch.tensor([1.0, 10.0]))[0]
    assert "t ≈ 3.16" in stats.describe(torch.tensor([1.0, 10.0]))[0]  # the rung to add


def test_preconditioner_is_the_inverse_curvature_and_sees_quartic_walls():
    model, data = polynomial(2, 1, n=500)
    setup = prepare(model, data, memlens.SGLDConfig())
    x = data.inputs[:, 0].double()
    torch.testing.assert_close(hessian_diagonal(setup)[0], 2 * (x * x).mean(0), rtol=1e-4, atol=0)
    # the singular model: w2 enters as w2², so diag H = 0 at w* = 0; the blend gives the width
    # the quartic wall allows, M ≈ 1/√(12 nβ E[x2²]) (self-consistent: curvature 12 nβ S w2²)
    sing, sdata = polynomial(2, 2, n=500)
    s = prepare(sing, sdata, memlens.SGLDConfig())
    assert float(hessian_diagonal(s)[0, 1]) == 0.0
    M = posterior_preconditioner(s, s.nbeta[None], 1.0)
    s22 = float((sdata.inputs[:, 0, 1] ** 2).mean())
    guess = 1 / math.sqrt(12 * float(s.nbeta[0]) * s22)
    assert 0.3 * guess < float(M[0, 0, 1]) < 3 * guess


def temper_switch(**kw):
    """One switch circuit on a ladder around its transition, default sampler settings."""
    model = Switches.build([[2.0]])
    data = switch_data(model, 100)
    nb = 100 / math.log(100)
    tc = float(switch_truth(model, nb, [1.0])["char_temp"][0, 0])
    temps = [tc * 1.6**k for k in range(-3, 6)]  # the scorecard's ladder spacing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = memlens.temper(model, data, temps, probes=["survival"], progress=False, **kw)
    truth = switch_truth(model, nb, temps)
    return res, truth, tc


def right(res, truth):
    llc, se, lam = res.llc.mean.double(), res.llc.se.double(), truth["llc"]
    ok_llc = (llc - lam).abs() <= torch.maximum(3 * se, 0.1 * lam.abs())
    surv = res.probe("survival").survival.double()
    return ok_llc & ((surv - truth["survival"]).abs() <= 0.1).all(-1)


@pytest.mark.slow
def test_replica_exchange_crosses_the_transition_and_no_cell_is_falsely_green():
    res, truth, tc = temper_switch()
    good = right(res, truth)
    # every estimate is right and ≥ 90% of cells are healthy (the target)
    assert bool(good.all()), (res.llc.mean[:, 0], truth["llc"][:, 0])
    assert float(res.health.ok.double().mean()) >= 0.9, res.summary()
    ct = float(res.probe("survival").characteristic_temperature[0, 0])
    assert 1 / 1.5 < ct / tc < 1.5
    acc = res.swaps.accept[:, 0]
    assert bool((acc > 0.1).all()) and "swap acceptance" in res.summary()


@pytest.mark.slow
def test_without_swaps_no_cell_is_falsely_green():
    # without swaps, chains started on both sides of the transition (dispersed starts) cross
    # slowly: the cells where that biases λ̂ or survival must be flagged, never green. With the
    # precision rule capped at 800 draws one transition cell was off and green (a strict xfail:
    # R-hat over dispersed starts did not catch it); at the default cap of 1600 the chains run
    # long enough that no cell is off at all (8 of 9 healthy), so this no longer shows that R-hat
    # catches such a cell, only that the default path does not hand one out
    off, truth, _ = temper_switch(swap_every=0)
    assert off.swaps is None
    assert not bool((off.health.ok & ~right(off, truth)).any()), off.summary()


def test_with_an_evaluation_set_swaps_wait_for_its_evaluations(monkeypatch):
    """Minibatch ladder: a proposal reuses the sampler's evaluation-set losses (no forward pass of
    its own), at the first evaluation at least ``swap_every`` steps after the last proposal."""
    from memlens.data import SparseFeatures
    from memlens.sampling import fused_sgld
    from toy_models import Bottleneck

    data = SparseFeatures(n_features=12, sparsity=0.8).sample(T=600, n_instances=1, seed=0)
    model = Bottleneck(12, 3, seed=0)
    memlens.train(model, data, steps=200, lr=1e-2, batch_size=128, progress=False)
    proposals, evals = [], []
    real_propose, real_eval = Exchange.propose, fused_sgld.eval_loss

    def propose(self, known=None):
        proposals.append((self.eng.step, known is not None))
        return real_propose(self, known)

    def eval_loss(eng, *a):
        evals.append(eng.step)
        return real_eval(eng, *a)

    monkeypatch.setattr(Exchange, "propose", propose)
    monkeypatch.setattr(fused_sgld, "eval_loss", eval_loss)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = memlens.temper(model, data, [1.0, 2.0, 4.0], chains=2, draws=40, burnin=0, thin=1,
                             step_size=1e-3, batch_size=64, eval_every=3, swap_every=10,
                             progress=False)  # fmt: skip
    assert evals == [3 * (j + 1) for j in range(40 // 3)]  # one evaluation every 3 draws
    want, last = [], 0
    for s in evals:  # the rule: the first evaluation >= swap_every steps after the last proposal
        if s - last >= 10:
            want.append(s)
            last = s
    assert [s for s, _ in proposals] == want == [12, 24, 36]
    assert all(known for _, known in proposals)  # each reused the evaluation's losses
    assert int(res.swaps.tries.sum()) == len(want)
