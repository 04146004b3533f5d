"""Tempered SGLD and the LLC: ground truth through the default workflow (step_size="auto"),
the bias of the old recommendation, diagnostics that fail, sampler properties, bad input."""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from transformer_lens.hook_points import HookPoint

import memlens
import memlens.sampling.llc as llc_module
from memlens.data import Batch
from memlens.hooked import HookedToyModel, ToyConfig
from memlens.probe import ProbeResult, StreamingProbe
from memlens.sampling import SGLDConfig, effective_sample_size, split_rhat


@dataclass(frozen=True)
class PolyConfig(ToyConfig):
    d: int = 2
    power: int = 1


class Poly(HookedToyModel):
    """f(x) = Σ_j x_j w_j^p_j with p_1 = 1 and p_j = ``power`` for j > 1, squared error.

    ``power=1`` is linear regression, a regular model (λ = d/2). ``power=2`` with targets 0 and w*
    = 0 is singular: L = q(w_1, w_2², ...) for a positive-definite quadratic form q, so L is
    quasi-homogeneous with weights 1/2 (w_1) and 1/4 (the others) and λ = 1/2 + (d − 1)/4.
    """

    Config = PolyConfig

    def __init__(self, d: int = 2, power: int = 1, n_instances: int = 1, seed: int = 0):
        super().__init__(PolyConfig(n_instances=n_instances, seed=seed, d=d, power=power))
        self.w = torch.nn.Parameter(torch.zeros(n_instances, d))
        self.hook_out = HookPoint()
        self.setup()

    @property
    def d_in(self) -> int:
        return self.cfg.d

    def forward(self, x):
        self.check_input(x)
        p = self.cfg.power
        out = x[..., 0] * self.w[:, 0]  # d small: a sum of products beats a batched matmul
        for j in range(1, self.cfg.d):
            out = out + x[..., j] * self.w[:, j] ** p
        return self.hook_out(out[..., None])

    def per_example_loss(self, batch: Batch):
        return ((self(batch.inputs) - batch.targets) ** 2).sum(-1)


def regression(d: int, n: int = 1000, n_instances: int = 1, seed: int = 0, offset: float = 0.0):
    """Gaussian inputs, y = x·w_true + 0.1 noise; the model sits at the least-squares fit w*
    (shifted by ``offset`` in every coordinate, to put w* off the minimum)."""
    g = torch.Generator().manual_seed(seed + d)
    x = torch.randn(n, n_instances, d, generator=g)
    w_true = torch.randn(n_instances, d, generator=g)
    y = (x * w_true).sum(-1, keepdim=True) + 0.1 * torch.randn(n, n_instances, 1, generator=g)
    model = Poly(d, 1, n_instances)
    with torch.no_grad():
        for i in range(n_instances):
            model.w[i] = torch.linalg.lstsq(x[:, i], y[:, i, 0]).solution + offset
    return model, Batch(x, y)


def regular_llc(data: Batch, nbeta: float, gamma: float, inst: int = 0) -> float:
    """Exact λ of the localised posterior of linear regression at its least-squares fit:
    L = L* + δᵀΣδ with Σ = XᵀX/n, precision 2nβΣ + γI, so nβ E[δᵀΣδ] = Σ_j nβσ_j/(2nβσ_j + γ)."""
    x = data.inputs[:, inst].double()
    sig = torch.linalg.eigvalsh(x.T @ x / len(x))
    return float((nbeta * sig / (2 * nbeta * sig + gamma)).sum())


def singular(n: int = 1000, n_instances: int = 1, seed: int = 0):
    """The power-2 model at w* = 0 with targets 0 (realisable, so w* is the global minimum)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_instances, 2, generator=g)
    return Poly(2, 2, n_instances), Batch(x, torch.zeros(n, n_instances, 1))


def singular_llc(data: Batch, nbeta: float, gamma: float, inst: int = 0) -> float:
    """nβ E[L] under p(w) ∝ exp(−nβ L(w) − γ/2 ‖w‖²) for the 2-parameter power-2 model, by
    quadrature on a fine grid (L = S11 w1² + 2 S12 w1 w2² + S22 w2⁴ with S the input moments)."""
    x = data.inputs[:, inst].double()
    s = x.T @ x / len(x)
    a = 8 / math.sqrt(2 * nbeta * float(s[0, 0]))  # a few posterior widths each way
    b = 6 * (nbeta * float(s[1, 1])) ** -0.25
    w1 = torch.linspace(-a, a, 1601, dtype=torch.float64)[:, None]
    w2 = torch.linspace(-b, b, 1601, dtype=torch.float64)[None, :]
    loss = s[0, 0] * w1**2 + 2 * s[0, 1] * w1 * w2**2 + s[1, 1] * w2**4
    logp = -nbeta * loss - gamma / 2 * (w1**2 + w2**2)
    p = (logp - logp.max()).exp()
    return float(nbeta * (p * loss).sum() / p.sum())


def nbeta_of(n: int) -> float:
    return n / math.log(n)


def quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


# ------------------------------------------------------------------ ground truth, default workflow
@pytest.mark.parametrize("d", [2, 10])
def test_regular_model_gives_half_its_dimension(d):
    model, data = regression(d, n=1000)
    res = memlens.estimate_llc(model, data, chains=8, draws=300, seed=1, progress=False)
    truth = regular_llc(data, nbeta_of(1000), 1.0)  # d/2 up to the γ = 1 localisation
    assert abs(truth - d / 2) < 0.01 * d
    llc, se = float(res.llc.mean[0, 0]), float(res.llc.se[0, 0])
    assert abs(llc - truth) < max(0.1 * truth, 3 * se), (llc, se, truth)
    assert bool(res.health.ok.all()), res.health.describe(0, 0)
    assert res.calibration is not None and res.calibration.choices[0]["decided"]


def test_singular_model_within_20_percent_of_its_known_llc():
    model, data = singular(n=1000)
    res = memlens.estimate_llc(model, data, chains=16, draws=300, seed=2, progress=False)
    truth = singular_llc(data, nbeta_of(1000), 1.0)  # 0.742: λ = 3/4 < d/2 = 1, minus γ's pull
    assert abs(truth - 0.75) < 0.02
    llc = float(res.llc.mean[0, 0])
    assert abs(llc - truth) < 0.2 * truth, (llc, truth)
    assert bool(res.health.ok.all()), res.health.describe(0, 0)


@pytest.mark.slow
def test_old_recommendation_is_exact_under_the_lm_step_and_auto_agrees():
    """The issue's case: n = 10^4, nβ = n/log n, a 2-parameter regular model. The old calibrate
    recommended ε = 1e-3 (its largest healthy step), which puts ε·a ≈ 2.2 in the stiff directions:
    under Euler-Maruyama λ̂ came out about twice d/2. The posterior is Gaussian, where the
    Leimkuhler-Matthews step's stationary law is exact at any stable step (ε·a < 4): the same step
    now gives the closed form. The automatic step agrees with it too."""
    n = 10_000
    model, data = regression(2, n=n)
    truth = regular_llc(data, nbeta_of(n), 1.0)
    old = quiet(
        memlens.estimate_llc, model, data, step_size=1e-3, chains=8, draws=400,
        precondition=False, progress=False,
    )  # fmt: skip
    x = data.inputs[:, 0].double()
    a = 2 * nbeta_of(n) * torch.linalg.eigvalsh(x.T @ x / len(x)) + 1.0
    assert float(a.max()) * 1e-3 > 2.0  # where Euler's variance is 1/(1 − εa/4) ≥ 2x too large
    llc, se = float(old.llc.mean[0, 0]), float(old.llc.se[0, 0])
    assert abs(llc - truth) < max(3 * se, 0.05 * truth), (llc, se, truth)
    # asking for ESS ≥ 800 makes "auto" choose enough SGLD steps per draw for a 4% error
    new = memlens.estimate_llc(model, data, chains=16, draws=300, min_ess=800, seed=3,
                               progress=False)  # fmt: skip
    llc, se = float(new.llc.mean[0, 0]), float(new.llc.se[0, 0])
    assert bool(new.health.ok.all()), new.health.describe(0, 0)
    assert se < 0.06 * truth  # precise enough to see a bias of a fifth
    assert abs(llc - truth) < 3 * se, (llc, se, truth)
    # the chosen step sits well inside the Euler-stable range: ε·a ≤ 1/3
    choice = new.calibration.choices[0]
    assert choice["decided"] and choice["s"] <= 1 / 3 + 1e-9
    # ε is in the preconditioned metric (the step is ε·M per coordinate): the largest step taken
    # in parameter space is still far below the old recommendation
    M = new.calibration.precond
    assert M is not None
    assert float((new.step_size[0, 0] * M[0, 0]).max()) < 1e-3 / 5


def test_unset_draws_grow_until_the_llc_is_as_precise_as_asked():
    """With ``draws`` unset, "auto" redraws a run whose λ̂ is less precise than ``precision`` with
    more draws (standard errors fall as 1/√draws), up to ``max_draws``, and the longer run's λ̂
    still matches the closed form; an explicit ``draws`` is kept as given."""
    n = 10_000
    model, data = regression(2, n=n)
    truth = regular_llc(data, nbeta_of(n), 1.0)
    kw = dict(chains=4, seed=1, progress=False, precision=0.05, max_draws=800)
    fixed = quiet(memlens.estimate_llc, model, data, draws=200, **kw)
    grown = quiet(memlens.estimate_llc, model, data, **kw)
    assert fixed.config.draws == 200 and fixed.traces.shape[2] == 200
    se0 = float(fixed.llc.se[0, 0])
    need = (se0 / (0.05 * max(abs(float(fixed.llc.mean[0, 0])), 1.0))) ** 2
    assert need > 1  # the first run is not precise enough
    # the run was redrawn longer (its first run is ``fixed``: same seed, same 200 draws): as many
    # draws as the first run's error asks for, less any growth of the steps per draw
    want = math.ceil(200 * need / (grown.config.thin / fixed.config.thin) * 1.2)
    assert 200 < want < 800
    assert grown.config.draws == want and grown.traces.shape[2] == want
    assert grown.config.burnin == want // 4
    llc, se = float(grown.llc.mean[0, 0]), float(grown.llc.se[0, 0])
    assert se < se0 * math.sqrt(200 / want) * 1.6
    assert abs(llc - truth) < 3 * se, (llc, se, truth)
    # capped at max_draws; and with the precision already met, nothing is redrawn
    with pytest.warns(RuntimeWarning, match=r"less precise than precision=0.05") as rec:
        capped = memlens.estimate_llc(model, data, **{**kw, "max_draws": 300, "burnin": 30})
    assert capped.config.draws == 300
    assert capped.config.burnin == 30  # an explicit burn-in is kept by the redraw
    advice = [re.search(r"pass max_draws=(\d+)", str(w.message)) for w in rec]
    assert any(a and int(a.group(1)) > 300 for a in advice)  # names the draws that would do
    loose = quiet(memlens.estimate_llc, model, data, **{**kw, "precision": 0.5})
    assert loose.config.draws == 200


@pytest.mark.slow
def test_auto_step_grows_with_temperature_and_holds_at_every_rung():
    model, data = regression(3, n=1000)
    temps = [0.3, 2.0, 10.0]
    res = memlens.temper(model, data, temps, chains=8, draws=150, seed=4, progress=False)
    # hotter posteriors are flatter: the step in parameter space (ε·M, M the frozen diagonal
    # preconditioner; ε itself is dimensionless) grows with t
    eps = (res.step_size[:, 0, None] * res.calibration.precond[:, 0]).amax(1)
    assert bool((eps[1:] > eps[:-1]).all()), eps
    nb = nbeta_of(1000)
    for a, t in enumerate(temps):
        truth = regular_llc(data, nb / t, 1.0)
        llc, se = float(res.llc.mean[a, 0]), float(res.llc.se[a, 0])
        assert abs(llc - truth) < max(0.12 * truth, 3 * se), (t, llc, truth)
    assert all(c["decided"] for c in res.calibration.choices)
    assert "step size auto" in res.summary()


def test_calibrate_returns_the_decision_with_its_table_and_plot():
    model, data = regression(2, n=1000)
    cal = memlens.calibrate(model, data, chains=8, draws=200, seed=5, progress=False)
    res = memlens.estimate_llc(model, data, chains=8, draws=200, seed=5, progress=False)
    torch.testing.assert_close(cal.step_size, res.calibration.step_size)
    for c in cal.choices:  # never a step whose λ̂ still moves with ε
        assert c["decided"] and abs(c["bias"]) + c["bias_err"] <= c["bound"]
    steps = {r["s"] for r in cal.rows}
    assert len(steps) >= 3 and max(steps) > cal.choices[0]["s"]  # larger steps were tried
    big = max(cal.rows, key=lambda r: r["s"])
    assert big["llc"] > cal.choices[0]["llc"]  # ...and moved λ̂ up (the Euler bias)
    assert "(chosen)" in cal.table() and "ε =" in cal.summary()
    assert cal.plot() is not None
    with pytest.raises(ValueError, match="step_size"):
        memlens.calibrate(model, data, step_size=1e-3)


# ------------------------------------------------------------------ diagnostics that can fail
def test_negative_llc_warns_as_such():
    # w* sits off the least-squares fit: equilibrium loss is below L_n(w*), so λ̂ < 0
    model, data = regression(2, n=1000, offset=0.1)
    with pytest.warns(RuntimeWarning, match="negative LLC beyond its error"):
        res = memlens.estimate_llc(model, data, step_size=3e-4, chains=4, draws=400,
                                   progress=False)  # fmt: skip
    assert float(res.llc.mean[0, 0]) < -3 * float(res.llc.se[0, 0])
    assert bool(res.diagnostics.negative[0, 0]) and not bool(res.diagnostics.barely_moving[0, 0])
    assert "negative beyond its error" in res.health.describe(0, 0)


def test_high_rhat_warns():
    # a step far too small to cross from w* (off the minimum) to equilibrium within the run:
    # every chain still drifts down, so its two halves disagree
    model, data = regression(2, n=1000, offset=0.3)
    with pytest.warns(RuntimeWarning, match="R-hat"):
        res = memlens.estimate_llc(model, data, step_size=2e-6, chains=4, draws=200,
                                   progress=False)  # fmt: skip
    assert float(res.diagnostics.rhat[0, 0]) > 1.1
    assert not bool(res.health.ok[0, 0]) and "R-hat" in res.health.describe(0, 0)


def test_diagnostics_use_the_evaluation_loss_not_the_minibatch_loss():
    # under-mixed chains with minibatch gradients: the minibatch loss trace looks like white
    # noise (large ESS), the fixed evaluation-set loss shows the slow drift
    model, data = regression(2, n=1000)
    # (chains start at w*: dispersed starts would add a relaxation to both traces)
    res = quiet(memlens.estimate_llc, model, data, step_size=3e-6, batch_size=32, chains=4,
                draws=200, burnin=0, disperse=False, progress=False)  # fmt: skip
    minibatch_ess = effective_sample_size(res.traces[0, :, :, 0].numpy())
    assert minibatch_ess > 300  # what the old diagnostics reported
    assert float(res.diagnostics.ess[0, 0]) < 100  # what is true
    assert not bool(res.health.ok[0, 0])
    # at a true minimum the full-data loss never goes below L_n(w*) (minibatch noise did ~35%)
    ok = quiet(memlens.estimate_llc, model, data, step_size=3e-4, batch_size=32, chains=4,
               draws=200, progress=False)  # fmt: skip
    assert float(ok.diagnostics.frac_below_init[0, 0]) < 0.02


def test_rhat_and_ess_on_known_chains():
    g = torch.Generator().manual_seed(0)
    iid = torch.randn(4, 1000, generator=g).numpy()
    assert abs(split_rhat(iid) - 1) < 0.02
    assert 2500 < effective_sample_size(iid) < 5500
    shifted = iid + np.arange(4)[:, None] * 3.0
    assert split_rhat(shifted) > 1.5
    ar = torch.zeros(4, 1000, dtype=torch.float64)
    e = torch.randn(4, 1000, generator=g, dtype=torch.float64)
    for k in range(1, 1000):
        ar[:, k] = 0.9 * ar[:, k - 1] + e[:, k]
    # AR(1) with ρ = 0.9: integrated autocorrelation time (1 + ρ) / (1 − ρ) = 19
    ess = effective_sample_size(ar.numpy())
    assert 4000 / 19 / 2 < ess < 4000 / 19 * 2


# ------------------------------------------------------------------ sampler properties
def small(**kw):
    model, data = regression(3, n=500, n_instances=2)
    args = dict(chains=3, draws=60, burnin=20, batch_size=64, step_size=2e-4, seed=5,
                progress=False)  # fmt: skip
    args.update(kw)
    return model, data, args


def test_same_seed_same_traces_and_chains_independent():
    model, data, args = small()
    a = quiet(memlens.temper, model, data, [1.0, 4.0], **args)
    b = quiet(memlens.temper, model, data, [1.0, 4.0], **args)
    assert a.traces.shape == (2, 3, 60, 2)
    assert torch.equal(a.traces, b.traces)
    c = quiet(memlens.temper, model, data, [1.0, 4.0], **{**args, "seed": 6})
    assert not torch.equal(a.traces, c.traces)
    # chains are independent: their draw-to-draw loss increments are uncorrelated
    x = a.traces[:, :, 20:, :].diff(dim=2)
    x = x - x.mean(2, keepdim=True)
    for t in range(2):
        for i in range(2):
            for c1 in range(3):
                for c2 in range(c1 + 1, 3):
                    u, v = x[t, c1, :, i], x[t, c2, :, i]
                    assert abs(float((u * v).sum() / (u.norm() * v.norm()))) < 0.5


def test_without_burn_in_chains_start_at_w_star():
    """Dispersed starts need a burn-in to be forgotten: with burnin=0 every chain starts at w*
    (the run equals disperse=False), with a burn-in the default starts differ from w*."""
    model, data, args = small(burnin=0)
    default = quiet(memlens.temper, model, data, [1.0, 4.0], **args)
    at_w_star = quiet(memlens.temper, model, data, [1.0, 4.0], disperse=False, **args)
    torch.testing.assert_close(default.traces, at_w_star.traces, rtol=0, atol=0)
    args["burnin"] = 20
    default = quiet(memlens.temper, model, data, [1.0, 4.0], **args)
    at_w_star = quiet(memlens.temper, model, data, [1.0, 4.0], disperse=False, **args)
    assert not torch.equal(default.traces[:, :, 0], at_w_star.traces[:, :, 0])


def test_a_chains_trace_does_not_depend_on_how_many_chains_share_the_run():
    model, data, args = small()
    w_star = model.w.detach().clone()
    many = quiet(memlens.temper, model, data, [2.0, 5.0], swap_every=0, **args)  # no coupling
    one = quiet(memlens.temper, model, data, [2.0], **{**args, "chains": 1})
    torch.testing.assert_close(one.traces[0, 0], many.traces[0, 0], rtol=1e-5, atol=1e-6)
    assert torch.equal(model.w, w_star)  # the model at w* is untouched


def test_burnin_excluded_init_loss_full_data_and_llc_formula():
    model, data, args = small()
    res = quiet(memlens.temper, model, data, **args)
    init = memlens.evaluate(model, data)
    torch.testing.assert_close(res.init_loss, init)
    post = res.traces[0, :, 20:, :].double()
    expect = res.nbeta.double() * (post.mean(1) - init.double())  # [chain, inst]
    torch.testing.assert_close(res.llc.per_chain[0].double(), expect, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(res.llc.mean[0].double(), expect.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(res.llc.std[0].double(), expect.std(0), rtol=1e-4, atol=1e-5)


def test_temperature_scales_nbeta_and_config_is_stored_resolved():
    model, data, args = small()
    res = quiet(memlens.temper, model, data, [1.0, 10.0], nbeta=500.0, **args)
    torch.testing.assert_close(res.nbeta_eff, torch.tensor([[500.0, 500.0], [50.0, 50.0]]))
    cfg = res.config
    assert cfg.step_size == ((2e-4, 2e-4), (2e-4, 2e-4)) and cfg.thin == 1 and cfg.burnin == 20
    assert SGLDConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(dataclasses_frozen()):
        cfg.chains = 2


def dataclasses_frozen():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_divergence_flagged_excluded_and_all_diverged_raises():
    model, data, args = small()
    with pytest.raises(FloatingPointError, match="lower step_size"):
        memlens.temper(model, data, **{**args, "step_size": 10.0})
    with pytest.warns(RuntimeWarning, match="diverged"):
        res = memlens.temper(model, data, [1.0, 2.0], **{**args, "step_size": [2e-4, 10.0]})
    assert bool(res.diagnostics.diverged[1].all()) and not bool(res.diagnostics.diverged[0].any())
    assert torch.isnan(res.llc.mean[1]).all() and torch.isfinite(res.llc.mean[0]).all()
    assert "no healthy chains" in res.health.describe(1, 0)


def test_tiny_step_warns_chains_barely_move():
    model, data, args = small()
    with pytest.warns(RuntimeWarning, match="diffusion"):
        res = memlens.temper(model, data, **{**args, "step_size": 1e-9, "disperse": False})
    assert bool(res.diagnostics.barely_moving.all())
    # started dispersed, chains that barely move disagree with each other: R-hat flags them
    with pytest.warns(RuntimeWarning, match="R-hat"):
        res = memlens.temper(model, data, **{**args, "step_size": 1e-9})
    assert not bool(res.health.ok.any())


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"temperatures": [1.0, -1.0]}, "temperatures"),
        ({"temperatures": [0.0]}, "temperatures"),
        ({"step_size": 0.0}, "step_size"),
        ({"step_size": "fast"}, "step_size"),
        ({"step_size": [1e-3, 1e-3, 1e-3]}, "step_size"),
        ({"chains": 0}, "chains"),
        ({"draws": 20, "burnin": 20}, "burnin"),
        ({"probes": ["no-such-probe"]}, "no-such-probe"),
        ({"probes": ["dimensionality"]}, "StreamingProbe"),
        ({"batch_size": 0}, "batch_size"),
        ({"nbeta": -1.0}, "nbeta"),
        ({"localization": -1.0}, "localization"),
        ({"max_rhat": 0.9}, "max_rhat"),
        ({"bias_tolerance": 2.0}, "bias_tolerance"),
        ({"stepsize": 1e-3}, "unknown sampler setting"),
    ],
)
def test_bad_input_raises_before_work(kw, match, monkeypatch):
    model, data, args = small()
    calls = []
    monkeypatch.setattr(llc_module, "sample", lambda *a, **k: calls.append(1))
    monkeypatch.setattr(llc_module, "auto_step", lambda *a, **k: calls.append(1))
    temps = kw.pop("temperatures", None)
    with pytest.raises(ValueError, match=match):
        memlens.temper(model, data, temps, **{**args, **kw})
    assert not calls


def test_data_not_matching_model_raises():
    model, data, args = small()
    with pytest.raises(ValueError, match="instance"):
        memlens.temper(model, Batch(data.inputs[:, :1], data.targets[:, :1]), **args)
    with pytest.raises(ValueError, match="d_in|feat"):
        memlens.temper(model, Batch(data.inputs[..., :2], data.targets), **args)
    with pytest.raises(TypeError):
        memlens.temper(model, [1, 2, 3], **args)


def test_results_plot_and_serialise():
    model, data, args = small()
    res = quiet(memlens.temper, model, data, [0.5, 1.0, 2.0], **args)
    assert res.plot_trace() is not None
    spec = res.spectrum()
    assert spec.plot() is not None and spec.temperatures.tolist() == [0.5, 1.0, 2.0]
    d = res.to_dict()
    assert len(d["llc_mean"]) == 3 and "t=" in res.summary()
    assert len(d["health"]["ok"]) == 3 and d["config"]["step_size"][0][0] == 2e-4


# ------------------------------------------------------------------ streaming probes
class Recorder(StreamingProbe):
    """Records what the sampler hands over at every kept draw."""

    hooks = ("hook_out",)

    def begin(self, model, data, temperatures, chains):
        self.x, self.seen, self.ended = data.inputs[:5], [], None
        return self.x

    def on_draw(self, acts, draw):
        self.seen.append(acts["hook_out"].clone())

    def end(self, tempering):
        self.ended = tempering

    def result(self):
        return ProbeResult()


def test_streaming_probe_gets_temp_chain_batch_inst_activations_of_each_copy():
    model, data, args = small(chains=3, draws=30, burnin=10)
    rec = Recorder()
    res = quiet(memlens.temper, model, data, [1.0, 2.0], probes=[rec], keep_draws=True, **args)
    assert len(rec.seen) == 20 == len(res.kept_draws) and rec.ended is res
    acts = rec.seen[-1]
    assert acts.shape == (2, 3, 5, 2, 1)  # [temp, chain, batch, inst, out]
    w = res.kept_draws[-1]["w"]  # expanded [temps*chains*inst, d]: copy c of inst i at c*2 + i
    for a in range(2):
        for c in range(3):
            for i in range(2):
                own = rec.x[:, i] @ w[(a * 3 + c) * 2 + i]
                torch.testing.assert_close(acts[a, c, :, i, 0], own)
    assert res.probes == {"Recorder": rec}


def euler_llc(data: Batch, nbeta: float, gamma: float, eps: float, inst: int = 0) -> float:
    """λ̂ that full-batch Euler–Maruyama SGLD at step ε would give on linear regression, exactly:
    in the eigenbasis of A = 2nβΣ + γI its stationary variance is 1/(a(1 − εa/4)), so
    λ̂(ε) = Σ_j nβσ_j / (a_j (1 − ε a_j / 4)). The Leimkuhler-Matthews step's is 1/a: λ̂ = d/2-ish
    (``regular_llc``) at every stable step."""
    x = data.inputs[:, inst].double()
    sig = torch.linalg.eigvalsh(x.T @ x / len(x))
    a = 2 * nbeta * sig + gamma
    return float((nbeta * sig / (a * (1 - eps * a / 4))).sum())


def test_calibration_grid_is_exact_at_every_step_in_closed_form():
    """Every grid point of the coupled calibration (strides 1, 3, 9 on one Brownian path) gives
    the exact λ of the Gaussian posterior, whatever its step (the Leimkuhler-Matthews step has no
    step bias there), including the steps where Euler–Maruyama would be biased by more than 5%."""
    model, data = regression(3, n=1000)
    nb = nbeta_of(1000)
    cal = memlens.calibrate(
        model, data, chains=8, draws=200, seed=7, precondition=False, progress=False
    )  # fmt: skip  (the closed form is plain SGLD's)
    truth = regular_llc(data, nb, 1.0)
    euler_off = 0
    for r in cal.rows:
        if r["mixed"]:
            assert abs(r["llc"] - truth) < max(4 * r["llc_se"], 0.05 * truth), (r, truth)
            euler_off += euler_llc(data, nb, 1.0, r["step_size"]) > 1.05 * truth
    assert euler_off >= 1  # the grid reaches steps where the old step was measurably biased
    c = cal.choices[0]
    assert c["decided"]


def test_all_diverged_advice_depends_on_who_chose_the_step():
    """'lower step_size (or leave it auto)' is no advice when the step was already 'auto'."""
    from memlens.sampling.diagnostics import PROBLEMS, Diagnostics, Health, warn

    cell, chains = torch.ones(1, 1), torch.ones(1, 2, 1)
    diag = Diagnostics(rhat=cell, ess=cell, frac_below_init=cell, diverged=chains.bool(),
                       barely_moving=cell.bool(), diffusion=chains,
                       negative=cell.bool())  # fmt: skip
    hl = Health(~cell.bool(), [[["diverged"]]], {k: cell.bool() for k in PROBLEMS})
    with pytest.raises(FloatingPointError, match="leave it 'auto'"):
        warn(diag, hl, ["t=1"])
    with pytest.raises(FloatingPointError, match="raise localization") as err:
        warn(diag, hl, ["t=1"], auto=True)
    assert "leave it 'auto'" not in str(err.value)
