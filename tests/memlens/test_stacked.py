"""``memlens.stacked.StackedModel``: any module with an instance axis through ``torch.func``.

Ground truth is the toy bottleneck, which has its own instance axis: the same weights wrapped as a
plain one-instance module must give the same outputs, hooks, training and λ̂."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformer_lens.hook_points import HookPoint

import memlens
from memlens.data import Batch, SparseFeatures
from memlens.stacked import StackedModel
from toy_models import Bottleneck


class PlainBottleneck(nn.Module):
    """The tied bottleneck as a plain module with no instance axis: ``[batch, feat]`` in and out,
    the same hook names as ``toy_models.Bottleneck``."""

    def __init__(self, n_features: int, d_hidden: int):
        super().__init__()
        self.W = nn.Parameter(torch.randn(d_hidden, n_features))
        self.b = nn.Parameter(torch.zeros(n_features))
        self.hook_in, self.hook_hidden = HookPoint(), HookPoint()
        self.hook_pre, self.hook_out = HookPoint(), HookPoint()

    def forward(self, x):
        h = self.hook_hidden(self.hook_in(x) @ self.W.T)
        return self.hook_out(torch.relu(self.hook_pre(h @ self.W + self.b)))


def sq_loss(out, target):
    return ((out - target) ** 2).sum(-1)


def wrap(toy: Bottleneck) -> StackedModel:
    """The toy's weights, instance by instance, in a StackedModel over a one-instance template."""
    n, m = toy.cfg.n_features, toy.cfg.d_hidden
    model = StackedModel(PlainBottleneck(n, m), sq_loss, toy.n_instances, input_shape=(n,))
    with torch.no_grad():
        model.W.copy_(toy.W)
        model.b.copy_(toy.b)
    return model


@pytest.fixture(scope="module")
def trained():
    data = SparseFeatures(8, 0.7, normalize=True)
    train = Batch(data.sample(16, 3, seed=0))
    toy = Bottleneck(8, 2, n_instances=3, seed=1)
    memlens.train(toy, train, steps=300, lr=3e-2, progress=False)
    return toy, train


def test_forward_hooks_and_loss_match_the_instance_axis_model(trained):
    toy, train = trained
    model = wrap(toy)
    assert set(model.hook_dict) == set(toy.hook_dict)  # the template's hook names
    x = train.inputs
    torch.testing.assert_close(model(x), toy(x))
    torch.testing.assert_close(model.loss(train), toy.loss(train))
    _, c1 = toy.run_with_cache(x)
    _, c2 = model.run_with_cache(x)  # the hooked path: one instance at a time, stacked
    for name in ("hook_hidden", "hook_out"):
        assert c2[name].shape == (16, 3, *c1[name].shape[2:])  # [batch, inst, ...]
        torch.testing.assert_close(c2[name], c1[name])
    assert not model._hooked()  # scoped: nothing left attached


class WithIdleHook(PlainBottleneck):
    """A template listing a hook its forward never calls (as a bridge lists ``hook_mlp_in``)."""

    def __init__(self, n_features: int, d_hidden: int):
        super().__init__(n_features, d_hidden)
        self.hook_idle = HookPoint()


def test_hooks_the_forward_never_reaches_are_not_listed(trained):
    toy, train = trained
    model = StackedModel(WithIdleHook(8, 2), sq_loss, 3, input_shape=(8,))
    assert "hook_idle" not in model.hook_dict and "hook_hidden" in model.hook_dict
    _, cache = model.run_with_cache(train.inputs)
    assert set(cache) == set(model.hook_dict)  # every listed hook is in a full cache


def test_expand_select_and_gradients(trained):
    toy, train = trained
    model = wrap(toy)
    big = model.expand(2)
    assert big.n_instances == 6 and big.base is model.base  # the template is shared
    torch.testing.assert_close(big.W[3:], model.W)
    torch.testing.assert_close(
        big.loss(Batch(train.inputs.repeat(1, 2, 1))), toy.loss(train).repeat(2)
    )
    one = model.select_instances([2])
    torch.testing.assert_close(one.W[0], model.W[2])
    g_toy = torch.autograd.grad(toy.loss(train).sum(), toy.W)[0]
    g = torch.autograd.grad(model.loss(train).sum(), model.W)[0]
    torch.testing.assert_close(g, g_toy)


def test_a_hook_that_changes_the_activation_is_refused(trained):
    toy, train = trained
    model = wrap(toy)
    with pytest.raises(NotImplementedError, match="hook_hidden"):
        with model.hooks(fwd_hooks=[("hook_hidden", lambda a, hook: a * 0)]):
            model(train.inputs)


def test_llc_of_the_vmapped_path_matches_the_instance_axis_path(trained):
    """Same data, same settings: with the same seed the two paths run the same chains (the same
    noise, the same parameter layout), so λ̂ agrees to float rounding; with independent seeds
    λ̂ agrees within the Monte Carlo error (4 combined standard errors of 8-chain estimates)."""
    toy, train = trained
    model = wrap(toy)
    kw = dict(chains=8, draws=300, step_size=0.05, progress=False)
    r_toy = memlens.estimate_llc(toy, train, seed=0, **kw)
    r_same = memlens.estimate_llc(model, train, seed=0, **kw)
    r_other = memlens.estimate_llc(model, train, seed=1, **kw)
    assert bool(r_toy.health.ok.all()) and bool(r_other.health.ok.all())
    a, se_a = r_toy.llc.mean[0], r_toy.llc.se[0]
    assert bool((a > 1).all())  # a real, positive λ̂, not a degenerate zero
    torch.testing.assert_close(r_same.llc.mean[0], a, rtol=1e-4, atol=1e-3 * float(se_a.min()))
    b, se_b = r_other.llc.mean[0], r_other.llc.se[0]
    assert bool(((a - b).abs() <= 4 * (se_a**2 + se_b**2).sqrt()).all()), (a, b, se_a, se_b)


def test_bad_base_and_inputs_are_refused(trained):
    toy, train = trained
    with pytest.raises(TypeError, match="base"):
        StackedModel("not a module", sq_loss)
    with pytest.raises(ValueError, match="no trainable parameters"):
        StackedModel(nn.ReLU(), sq_loss)
    model = wrap(toy)
    with pytest.raises(ValueError, match="instance-count mismatch"):
        model.check_batch(Batch(train.inputs[:, :2]))
    with pytest.raises(ValueError, match="expects input of shape"):
        model(train.inputs[..., :5])
