"""The solvable models' exact answers, checked against independent limits and hand cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from toy_models.switches import (
    Switches,
    aoyagi_llc,
    circuit_truth,
    deep_linear,
    polynomial,
    polynomial_llc,
    switch_data,
    switch_truth,
)


def brute_force(gain, sigma, b, gamma):
    """The same expectations on a plain uniform grid (an independent quadrature)."""
    w = np.linspace(-12 / math.sqrt(gamma), 12 / math.sqrt(gamma), 2_000_001)
    a = np.exp(-0.5 * (w / sigma) ** 2)
    logp = b * gain * a - 0.5 * gamma * w**2
    p = np.exp(logp - logp.max())
    ea = (p * a).sum() / p.sum()
    e2 = (p * (1 - a) ** 2).sum() / p.sum()
    return b * gain * (1 - ea), 1 - math.sqrt(e2)


@pytest.mark.parametrize("gain, b", [(1.0, 2.0), (5.0, 3.0), (0.5, 40.0), (20.0, 100.0)])
def test_switch_quadrature_matches_a_brute_force_grid(gain, b):
    r = circuit_truth(gain, 0.1, b, 1.0)
    llc, surv = brute_force(gain, 0.1, b, 1.0)
    assert abs(r["llc"] - llc) < 1e-3 * max(llc, 1e-3)
    assert abs(r["survival"] - surv) < 1e-4


def test_switch_limits_cold_regular_and_hot_gaussian():
    # cold: a quadratic well of curvature bΔ/σ² + γ: λ = (bΔ/σ²) / (2 (bΔ/σ² + γ)) → 1/2
    b, gain, s = 1e4, 1.0, 0.1
    k = b * gain / s**2
    assert abs(circuit_truth(gain, s, b, 1.0)["llc"] - k / (2 * (k + 1))) < 1e-3
    # hot: w ~ N(0, 1/γ), E[a] = 1/√(1 + 1/(γσ²)), λ = bΔ(1 − E[a])
    b = 1e-6
    ea = 1 / math.sqrt(1 + 1 / (1.0 * s**2))
    r = circuit_truth(gain, s, b, 1.0)
    assert abs(r["mean_activation"] - ea) < 1e-6
    assert abs(r["llc"] - b * gain * (1 - ea)) < 1e-9


def test_switch_model_loss_and_truth_factorise():
    model = Switches.build([[0.5, 4.0]], sigma=[[0.1, 0.2]])
    with torch.no_grad():
        model.w[0] = torch.tensor([0.05, -0.3])
    data = switch_data(model, 50)
    a = torch.exp(-0.5 * torch.tensor([0.05 / 0.1, -0.3 / 0.2]) ** 2)
    expect = -(torch.tensor([0.5, 4.0]) * a).sum()
    torch.testing.assert_close(model.loss(data)[0], expect)
    tr = switch_truth(model, 10.0, [0.3, 3.0])
    for j, t in enumerate([0.3, 3.0]):
        parts = [circuit_truth(g, s, 10.0 / t, 1.0)["llc"] for g, s in ((0.5, 0.1), (4.0, 0.2))]
        assert abs(float(tr["llc"][j, 0]) - sum(parts)) < 1e-6 * sum(parts)  # float32 gains
    # survival falls with temperature and crosses 0.5 at the characteristic temperature
    tc = tr["char_temp"][0]
    assert float(tc[0]) < float(tc[1])  # the weaker circuit dies first
    for k, (g, s) in enumerate(((0.5, 0.1), (4.0, 0.2))):
        assert abs(circuit_truth(g, s, 10.0 / float(tc[k]), 1.0)["survival"] - 0.5) < 1e-6


def test_switch_circuits_read_the_activation():
    model = Switches.build([[1.0, 2.0], [3.0, 4.0]])
    c = model.circuits(switch_data(model, 4))
    assert c.names == ["switch:0", "switch:1"]
    acts = {}
    with model.hooks(fwd_hooks=[("hook_act", lambda x, hook: acts.update(hook_act=x))]):
        model(c.inputs)
    torch.testing.assert_close(c.readout(acts), torch.ones(2, 2))  # a* = 1 at w* = 0
    with pytest.raises(ValueError, match="gains"):
        Switches.build([[1.0, -1.0]])


def test_aoyagi_formula_on_hand_cases():
    # full rank r = H: a regular model of dimension H(M + N) − H² (the GL(H) symmetry)
    assert aoyagi_llc(3, 2, 3, 2) == (2 * 6 - 4) / 2
    assert aoyagi_llc(5, 3, 4, 3) == (3 * 9 - 9) / 2
    assert aoyagi_llc(3, 2, 3, 1) == 3.5  # odd case: (2·3·6 − 0 − 9 + 1)/8
    assert aoyagi_llc(2, 5, 2, 1) == 2.0  # M + N < H + r: MN/2
    assert aoyagi_llc(6, 1, 2, 0) == (1 * 2 - 0 + 0) / 2  # M + H < N + r: (HM − Hr + Nr)/2
    assert aoyagi_llc(3, 2, 3, 1) < 4 * 3 / 2  # singular: below half the dimension


def test_deep_linear_sits_at_an_exact_rank_r_fit():
    model, data = deep_linear(4, 3, 3, 1, n=200, seed=2)
    assert float(model.loss(data)[0]) < 1e-10
    prod = model.B[0] @ model.A[0]
    assert int(torch.linalg.matrix_rank(prod.detach())) == 1
    with pytest.raises(ValueError, match="rank"):
        deep_linear(3, 2, 3, 3)


def test_polynomial_truths():
    model, data = polynomial(2, 1, n=1000)
    assert abs(polynomial_llc(model, data, 1e6, 1.0) - 1.0) < 1e-3  # d/2 when nβ ≫ γ
    sing, sdata = polynomial(2, 2, n=1000)
    assert abs(polynomial_llc(sing, sdata, 1e5, 1e-3) - 0.75) < 0.02  # 1/2 + 1/4
