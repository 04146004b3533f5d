"""Fused SGLD (memlens.sampling.fused_sgld, the bottleneck's C++ kernel): the step it takes is the
step of HELPERS' SGLD math against autograd, a fused run follows the torch run's trajectory for the
same seed, its λ̂ agrees within standard errors, and it steps aside where it does not apply."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import memlens
import memlens.sampling.sgld as sgld_module
from memlens.data import Batch, SparseFeatures
from memlens.sampling import fused_sgld
from toy_models import Bottleneck


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(model.n_instances, -1) for p in model.parameters()], 1)


def _load(model, W):
    """Copy the rows of ``W`` into the model's parameters (row = instance); the parameters."""
    params = list(model.parameters())
    off = 0
    with torch.no_grad():
        for p in params:
            k = p[0].numel()
            p.copy_(W[:, off : off + k].view(p.shape))
            off += k
    return params


def _reference_step(model, W, W0, M, eps, nbeta, gamma, xi, batch):
    """One step of the HELPERS formula with autograd's gradient of ``model.loss`` (rows = the
    model's instances): w − (ε/2) M (nβ ∇L + γ (w − w*)) + √ε √M ξ; and the loss before it."""
    params = _load(model, W)
    loss = model.loss(batch)
    grads = torch.autograd.grad(loss.sum(), params)
    g = torch.cat([q.reshape(W.shape[0], -1) for q in grads], 1)
    e, nb = eps[:, None], nbeta[:, None]
    new = W - e / 2 * M * (nb * g + gamma * (W - W0)) + e.sqrt() * M.sqrt() * xi
    return new, loss.detach()


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("minibatch", [True, False])
@pytest.mark.parametrize("m", [3, 6])  # 3: the hidden-width-specialised pass; 6: the generic one
def test_kernel_step_is_the_preconditioned_sgld_step_on_autograd_gradients(tied, minibatch, m):
    n, inst, copies, T, b = 11, 2, 3, 40, 7
    data = SparseFeatures(n_features=n, sparsity=0.7).sample(T=T, n_instances=inst, seed=1)
    imp = torch.rand(n) + 0.5  # non-uniform importance
    model = Bottleneck(n, m, n_instances=inst, tied=tied, importance=imp, seed=2)
    kernel = model.sgld_kernel(Batch(data), b if minibatch else None)
    assert kernel is not None
    E = copies * inst
    expanded = model.expand(copies)
    g = torch.Generator().manual_seed(3)
    W0 = _flat(expanded)
    W = (W0 + 0.1 * torch.randn(W0.shape, generator=g)).contiguous()
    M = torch.rand(W.shape, generator=g) + 0.2
    eps = torch.rand(E, generator=g) * 1e-2 + 1e-3
    nbeta = torch.rand(E, generator=g) * 50 + 1
    K = 3
    noise = torch.randn(K, E, W.shape[1], generator=g)
    t = torch.randint(0, T, (K, E, b), generator=g)
    rows = t * inst + (torch.arange(E) % inst)[None, :, None]  # the sampler's row numbering
    ref = W.clone()
    out = W.clone()
    losses = kernel.advance(out, W0, M, eps, nbeta, 0.7, noise, rows if minibatch else None)
    for k in range(K):
        if minibatch:  # row e's minibatch: points t[k, e] of instance e % inst
            x = data.movedim(1, 0).repeat(copies, 1, 1)[torch.arange(E)[:, None], t[k]]
            batch = Batch(x.transpose(0, 1).contiguous())
        else:
            batch = Batch(data.repeat(1, copies, 1))
        ref, want = _reference_step(expanded, ref, W0, M, eps, nbeta, 0.7, noise[k], batch)
        torch.testing.assert_close(losses[k], want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert not torch.equal(out, W)  # it moved
    # the evaluation-set loss, no update: every row's loss on its instance's points
    ev = SparseFeatures(n_features=n, sparsity=0.7).sample(T=13, n_instances=inst, seed=4)
    _load(expanded, out)
    with torch.no_grad():
        want = expanded.loss(Batch(ev.repeat(1, copies, 1)))
    torch.testing.assert_close(kernel.losses(out, Batch(ev)), want, rtol=1e-5, atol=1e-6)


def _workload(inst=1):
    data = SparseFeatures(n_features=20, sparsity=0.9).sample(T=2000, n_instances=inst, seed=0)
    model = Bottleneck(n_features=20, d_hidden=5, n_instances=inst, seed=0)
    memlens.train(model, data, steps=300, lr=1e-2, batch_size=512, progress=False)
    return model, data


def _no_fused(monkeypatch):
    monkeypatch.setattr(sgld_module.fused_sgld, "stepper", lambda *a, **k: None)


@pytest.mark.parametrize(("batch_size", "integrator"), [(128, "lm"), (None, "lm"), (128, "euler")])
def test_fused_run_follows_the_torch_run_for_the_same_seed(batch_size, integrator, monkeypatch):
    model, data = _workload(inst=2)
    kw = dict(chains=2, draws=12, burnin=0, step_size=1e-3, batch_size=batch_size, seed=5,
              integrator=integrator)  # fmt: skip
    kw["progress"] = False
    calls = []
    real = fused_sgld.stepper

    def spy(*a, **k):
        s = real(*a, **k)
        calls.append(s)
        return s

    monkeypatch.setattr(sgld_module.fused_sgld, "stepper", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = memlens.temper(model, data, [1.0, 4.0], **kw)
        assert calls and calls[-1] is not None  # the kernel ran
        _no_fused(monkeypatch)
        torch_run = memlens.temper(model, data, [1.0, 4.0], **kw)
    torch.testing.assert_close(fused.traces, torch_run.traces, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fused.llc.mean, torch_run.llc.mean, rtol=1e-3, atol=1e-3)


def test_fused_llc_agrees_with_the_torch_llc_within_standard_errors(monkeypatch):
    model, data = _workload()
    n = len(data)
    kw = dict(nbeta=n / math.log(n), chains=4, draws=300, burnin=50, step_size=2e-3)
    kw.update(batch_size=256, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = memlens.estimate_llc(model, data, seed=1, **kw)
        _no_fused(monkeypatch)
        plain = memlens.estimate_llc(model, data, seed=2, **kw)  # independent noise
    a, b = float(fused.llc.mean[0, 0]), float(plain.llc.mean[0, 0])
    se = math.hypot(float(fused.llc.se[0, 0]), float(plain.llc.se[0, 0]))
    assert a > 0.5 and b > 0.5
    assert abs(a - b) < 3 * se, (a, b, se)


class _Changed(Bottleneck):
    def per_example_loss(self, batch):
        return 2 * super().per_example_loss(batch)


def _stepper(model, data, **kw):
    expanded = model.expand(2)
    W = _flat(expanded).contiguous()
    E = W.shape[0]
    return fused_sgld.stepper(model, expanded, Batch(data), 16, W, W.clone(), torch.ones(E),
                              torch.ones(E), 1.0, **kw)  # fmt: skip


def test_fused_steps_step_aside_where_they_do_not_apply(monkeypatch):
    data = SparseFeatures(n_features=8, sparsity=0.5).sample(T=30, n_instances=1, seed=0)
    assert _stepper(Bottleneck(8, 2), data) is not None
    assert _stepper(_Changed(8, 2), data) is None  # a subclass changed the loss
    assert _stepper(Bottleneck(8, 2), data, hooks=[("hook_hidden", lambda a, hook: a)]) is None
    assert _stepper(Bottleneck(8, 2), data, stride=[1, 2]) is None  # coarse arms
    assert _stepper(Bottleneck(8, 2), data.double()) is None
    frozen = Bottleneck(8, 2)
    frozen.b.requires_grad_(False)
    assert _stepper(frozen, data) is None  # the row layout would differ
    monkeypatch.setenv("MEMLENS_COMPILE", "0")
    assert _stepper(Bottleneck(8, 2), data) is None


def test_kernel_result_does_not_depend_on_the_thread_count():
    data = SparseFeatures(n_features=9, sparsity=0.8).sample(T=50, n_instances=1, seed=0)
    model = Bottleneck(9, 3, seed=1)
    kernel = model.sgld_kernel(Batch(data), 16)
    g = torch.Generator().manual_seed(0)
    W0 = _flat(model.expand(6)).contiguous()
    E, P = W0.shape
    noise = torch.randn(4, E, P, generator=g)
    idx = torch.randint(0, 50, (4, E, 16), generator=g)
    out = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            W = W0.clone()
            losses = kernel.advance(W, W0, None, torch.full((E,), 1e-2), torch.full((E,), 20.0),
                                    1.0, noise, idx)  # fmt: skip
            out.append((W, losses))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
    assert not torch.equal(out[0][0], W0)


@pytest.mark.parametrize("fused", [True, False])
def test_blocks_of_steps_give_the_run_of_one_draw_per_call(fused, monkeypatch):
    """The sampler advances between draws where nothing happens in one block (one kernel call);
    the blocks must end exactly where an evaluation, a kept draw, a swap proposal (every 4 steps
    at 3 steps per draw: not on a draw boundary) or the end of burn-in falls. Checked against the
    same run advanced one draw at a time: every trace, evaluation, swap and kept draw agrees."""
    model, data = _workload()
    if not fused:
        _no_fused(monkeypatch)
    kw = dict(chains=2, draws=23, burnin=7, thin=3, step_size=1e-3, batch_size=64, seed=3,
              swap_every=4, eval_every=5, progress=False)  # fmt: skip
    runs = []
    for chunk in (sgld_module.CHUNK_ELEMENTS, 1):  # 1: every draw its own call
        monkeypatch.setattr(sgld_module, "CHUNK_ELEMENTS", chunk)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs.append(memlens.temper(model, data, [1.0, 1.05, 1.1], keep_draws=True,
                                       probe_every=3, **kw))  # fmt: skip
    blocked, single = runs
    torch.testing.assert_close(blocked.traces, single.traces)
    torch.testing.assert_close(blocked.eval_traces, single.eval_traces)
    torch.testing.assert_close(blocked.swaps.accept, single.swaps.accept)
    # distance travelled since burn-in ended (draw 6, where nothing else happens)
    torch.testing.assert_close(blocked.diagnostics.diffusion, single.diagnostics.diffusion)
    assert float(single.swaps.accept.max()) > 0  # swaps happened, so their timing mattered
    assert len(blocked.kept_draws) == len(single.kept_draws) == 6  # draws 7, 10, ..., 22
    for a, b in zip(blocked.kept_draws, single.kept_draws, strict=True):
        for name in a:
            torch.testing.assert_close(a[name], b[name])
