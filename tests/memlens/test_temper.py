"""Tempered SGLD and the LLC: ground truth on a regular model, sampler properties, bad input."""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass

import pytest
import torch
from transformer_lens.hook_points import HookPoint

import memlens
from memlens.data import Batch
from memlens.hooked import HookedToyModel, ToyConfig
from memlens.registry import MODELS
from memlens.temper import effective_sample_size, split_rhat

temper_module = sys.modules["memlens.temper"]  # memlens.temper is the function

NAME = "test-temper-linreg"


@dataclass(frozen=True)
class LinRegConfig(ToyConfig):
    d: int = 2


class LinReg(HookedToyModel):
    """y = w·x: a regular model with d parameters per instance (its LLC is d/2)."""

    Config = LinRegConfig

    def __init__(self, d: int, n_instances: int = 1, seed: int = 0):
        super().__init__(LinRegConfig(n_instances=n_instances, seed=seed, d=d))
        self.w = torch.nn.Parameter(torch.zeros(n_instances, d))
        self.hook_out = HookPoint()
        self.setup()

    @property
    def d_in(self) -> int:
        return self.cfg.d

    def forward(self, x):
        self.check_input(x)
        return self.hook_out((x * self.w).sum(-1, keepdim=True))

    def per_example_loss(self, batch: Batch):
        return ((self(batch.inputs) - batch.targets) ** 2).sum(-1)


@pytest.fixture(autouse=True, scope="module")
def registered():
    memlens.register_model(NAME)(LinReg)
    yield
    MODELS.unregister(NAME)


def regression(d: int, n: int = 10_000, n_instances: int = 1, seed: int = 0):
    """Gaussian inputs, y = x·w_true + 0.1 noise; the model sits at the least-squares fit w*."""
    g = torch.Generator().manual_seed(seed + d)
    x = torch.randn(n, n_instances, d, generator=g)
    w_true = torch.randn(n_instances, d, generator=g)
    y = (x * w_true).sum(-1, keepdim=True) + 0.1 * torch.randn(n, n_instances, 1, generator=g)
    model = LinReg(d, n_instances)
    with torch.no_grad():
        for i in range(n_instances):
            model.w[i] = torch.linalg.lstsq(x[:, i], y[:, i, 0]).solution
    return model, Batch(x, y)


@pytest.mark.parametrize("d, chains", [(2, 32), (10, 8), (50, 4)])
def test_llc_of_regular_model_is_half_its_dimension(d, chains):
    n = 10_000
    model, data = regression(d, n)
    nbeta = n / math.log(n)
    # the loss's Hessian is 2 Cov(x) = 2 I: a step of 0.1 / (nβ · 2) keeps the Euler bias ~2.5%
    eps = 0.1 / (2 * nbeta)
    res = memlens.estimate_llc(
        model,
        data,
        chains=chains,
        draws=1000,
        burnin=200,
        batch_size=256,
        step_size=eps,
        localization=1.0,
        seed=1,
        progress=False,
    )
    assert torch.allclose(res.nbeta, torch.tensor([nbeta], dtype=torch.float32))
    llc = float(res.llc.mean[0, 0])
    assert abs(llc - d / 2) < 0.1 * d / 2, f"λ̂ = {llc:.3f}, expected {d / 2}"
    assert float(res.diagnostics.rhat[0, 0]) < 1.1
    assert not bool(res.diagnostics.diverged.any())


def small(**kw):
    model, data = regression(3, n=2000, n_instances=2)
    args = dict(
        chains=3, draws=60, burnin=20, batch_size=64, step_size=2e-4, seed=5, progress=False
    )
    args.update(kw)
    return model, data, args


def test_same_seed_same_traces_and_chains_differ():
    model, data, args = small()
    a = memlens.temper(model, data, temperatures=[1.0, 4.0], **args)
    b = memlens.temper(model, data, temperatures=[1.0, 4.0], **args)
    assert a.traces.shape == (2, 3, 60, 2)
    assert torch.equal(a.traces, b.traces)
    c = memlens.temper(model, data, temperatures=[1.0, 4.0], **{**args, "seed": 6})
    assert not torch.equal(a.traces, c.traces)
    # chains are independent: no two chains share a trace, and their draw-to-draw loss
    # increments (own noise, own minibatches) are uncorrelated: |r| < 0.5, about 4 standard
    # errors for 40 increments, for every pair at every temperature and instance
    post = a.traces[:, :, 20:, :]
    x = post.diff(dim=2)
    x = x - x.mean(2, keepdim=True)
    for t in range(2):
        for i in range(2):
            for c1 in range(3):
                for c2 in range(c1 + 1, 3):
                    u, v = x[t, c1, :, i], x[t, c2, :, i]
                    r = float((u * v).sum() / (u.norm() * v.norm()))
                    assert abs(r) < 0.5, (t, i, c1, c2, r)
                    assert not torch.equal(post[t, c1, :, i], post[t, c2, :, i])


def test_batched_chains_equal_a_chain_run_alone():
    model, data, args = small()
    w_star = model.w.detach().clone()
    many = memlens.temper(model, data, temperatures=[2.0], **args)
    one = memlens.temper(model, data, temperatures=[2.0], **{**args, "chains": 1})
    torch.testing.assert_close(one.traces[0, 0], many.traces[0, 0], rtol=1e-5, atol=1e-6)
    # and the model at w* is untouched
    assert torch.equal(model.w, w_star)


def test_burnin_is_excluded_and_init_loss_is_full_data():
    model, data, args = small()
    res = memlens.temper(model, data, **args)
    init = memlens.evaluate(model, data)
    torch.testing.assert_close(res.init_loss, init)
    post = res.traces[0, :, 20:, :].double()
    expect = res.nbeta.double() * (post.mean(1) - init.double())  # [chain, inst]
    torch.testing.assert_close(res.llc.per_chain[0].double(), expect, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(res.llc.mean[0].double(), expect.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(res.llc.std[0].double(), expect.std(0), rtol=1e-4, atol=1e-5)
    # poisoning the burn-in draws changes nothing downstream
    res.traces[0, :, :20, :] = 1e9
    again = memlens.temper(model, data, **args)
    torch.testing.assert_close(again.llc.mean, res.llc.mean)


def test_temperature_scales_nbeta():
    model, data, args = small()
    res = memlens.temper(model, data, temperatures=[1.0, 10.0], nbeta=500.0, **args)
    torch.testing.assert_close(res.nbeta_eff, torch.tensor([[500.0, 500.0], [50.0, 50.0]]))


def test_divergence_flagged_excluded_and_all_diverged_raises():
    model, data, args = small()
    with pytest.raises(FloatingPointError, match="lower step_size"):
        memlens.temper(model, data, **{**args, "step_size": 10.0})
    # per-temperature step: the hot temperature gets a huge step and diverges, the other is fine
    with pytest.warns(RuntimeWarning, match="diverged"):
        res = memlens.temper(
            model, data, temperatures=[1.0, 2.0], **{**args, "step_size": [2e-4, 10.0]}
        )
    assert bool(res.diagnostics.diverged[1].all()) and not bool(res.diagnostics.diverged[0].any())
    assert torch.isnan(res.llc.mean[1]).all() and torch.isfinite(res.llc.mean[0]).all()


def test_tiny_step_warns_chains_barely_move():
    model, data, args = small()
    with pytest.warns(RuntimeWarning, match="diffusion"):
        res = memlens.temper(model, data, **{**args, "step_size": 1e-9})
    assert bool(res.diagnostics.barely_moving.all())


def test_rhat_and_ess_on_known_chains():
    g = torch.Generator().manual_seed(0)
    iid = torch.randn(4, 1000, generator=g).numpy()
    assert abs(split_rhat(iid) - 1) < 0.02
    assert 2500 < effective_sample_size(iid) < 5500
    shifted = iid + torch.arange(4)[:, None].numpy() * 3.0
    assert split_rhat(shifted) > 1.5
    ar = torch.zeros(4, 1000, dtype=torch.float64)
    e = torch.randn(4, 1000, generator=g, dtype=torch.float64)
    for k in range(1, 1000):
        ar[:, k] = 0.9 * ar[:, k - 1] + e[:, k]
    # AR(1) with ρ = 0.9: integrated autocorrelation time (1 + ρ) / (1 − ρ) = 19
    ess = effective_sample_size(ar.numpy())
    assert 4000 / 19 / 2 < ess < 4000 / 19 * 2


def test_calibrate_table_and_recommendation():
    model, data, args = small()
    cal = memlens.calibrate(
        model,
        data,
        step_sizes=[1e-9, 2e-4, 10.0],
        localizations=[1.0],
        chains=4,
        draws=300,
        burnin=100,
        batch_size=64,
        seed=0,
        progress=False,
    )
    assert [r["step_size"] for r in cal.rows] == [1e-9, 2e-4, 10.0]
    assert not cal.rows[0]["healthy"] and not cal.rows[2]["healthy"]
    assert cal.rows[2]["diverged"] == 1.0
    assert cal.recommended is not None and cal.recommended["step_size"] == 2e-4
    assert "recommended" in cal.table()
    assert cal.plot() is not None


@pytest.mark.user_errors
@pytest.mark.parametrize(
    "kw, match",
    [
        ({"temperatures": [1.0, -1.0]}, "temperatures"),
        ({"temperatures": [0.0]}, "temperatures"),
        ({"step_size": 0.0}, "step_size"),
        ({"step_size": -1e-3}, "step_size"),
        ({"chains": 0}, "chains"),
        ({"draws": 20, "burnin": 20}, "burnin"),
        ({"probes": ["no-such-probe"]}, "no-such-probe"),
        ({"batch_size": 0}, "batch_size"),
        ({"nbeta": -1.0}, "nbeta"),
    ],
)
def test_bad_input_raises_before_work(kw, match, monkeypatch):
    model, data, args = small()
    calls = []
    monkeypatch.setattr(temper_module, "_run", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match=match):
        memlens.temper(model, data, **{**args, **kw})
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = memlens.temper(model, data, temperatures=[0.5, 1.0, 2.0], **args)
    assert res.plot_trace() is not None
    spec = res.spectrum()
    assert spec.plot() is not None and spec.temperatures.tolist() == [0.5, 1.0, 2.0]
    d = res.to_dict()
    assert len(d["llc_mean"]) == 3 and "t=" in res.summary()
