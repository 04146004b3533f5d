"""Each model's fused step gives eager autograd's losses and gradients, to float rounding.

Ground truth is ``model.loss(batch).sum().backward()``. Cases cover what sweeps use: full batches,
minibatches given as rows of a training set, padded packed batches (``lengths``, including an
instance with no rows), importance weights, tied and untied bottlenecks, widths that are not a
multiple of the kernel's 8-float vectors, and the kernel's generic (runtime) hidden width.
"""

from __future__ import annotations

import math

import pytest
import torch

from memlens.data import Batch, SparseFeatures
from toy_models import (
    Bottleneck,
    MLPBlock,
    MLPTask,
    Unembed,
    UnembedTask,
    bottleneck_kernel,
    unembed_kernel,
)

RTOL = 2e-5  # relative to the largest entry of each gradient (float32 sums in another order)


def eager(model, batch: Batch):
    model.zero_grad(set_to_none=True)
    losses = model.loss(batch)
    losses.sum().backward()
    return losses.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_matches(model, batch: Batch, rows=None):
    got = model.fused_loss_and_grads(batch, rows)
    assert got is not None, "the fused step declined a batch it should handle"
    losses, grads = got
    want_losses, want_grads = eager(model, batch if rows is None else batch.gather(rows))
    assert losses.shape == want_losses.shape == (model.n_instances,)
    torch.testing.assert_close(losses, want_losses, rtol=1e-5, atol=1e-7)
    assert set(grads) == set(want_grads)
    for name, want in want_grads.items():
        assert grads[name].shape == want.shape, name
        scale = float(want.abs().max()) or 1.0
        err = float((grads[name] - want).abs().max()) / scale
        assert err < RTOL, f"{name}: relative error {err:.2e}"


def padded(batch: Batch, lengths) -> Batch:
    return Batch(batch.inputs, batch.targets, batch.features, torch.tensor(lengths))


def bottleneck_case(n, m, T, inst, tied, importance, seed=0, sparsity=0.9):
    x = SparseFeatures(n, sparsity, normalize=True).sample(T, inst, seed=seed)
    imp = torch.rand(inst, n, generator=torch.Generator().manual_seed(seed)) if importance else None
    model = Bottleneck(n, m, n_instances=inst, tied=tied, importance=imp, seed=seed)
    with torch.no_grad():  # a bias puts some active outputs below the ReLU's kink
        model.b.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(seed + 1))
    return model, Batch(x, None, x)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("importance", [False, True])
@pytest.mark.parametrize(
    "n,m",
    [(200, 2), (37, 3), (5, 1), (20, 7), (64, 9)],  # 7, 9: the generic-width path; 37: n % 8 != 0
)
def test_bottleneck_full_padded_and_minibatch(tied, importance, n, m):
    model, batch = bottleneck_case(n, m, T=50, inst=4, tied=tied, importance=importance)
    assert_matches(model, batch)
    assert_matches(model, padded(batch, [50, 17, 0, 1]))  # instance 2 has no rows
    rows = torch.randint(0, 50, (23, 4), generator=torch.Generator().manual_seed(3))
    assert_matches(model, batch, rows)


def test_bottleneck_benchmark_scale_many_tiles():
    """n = 1000 spans many 8-feature blocks; T = 700 spans several row tiles and work items."""
    model, batch = bottleneck_case(
        1000, 2, T=700, inst=3, tied=True, importance=False, sparsity=0.99
    )
    assert_matches(model, batch)
    assert_matches(model, padded(batch, [700, 333, 64]))


def test_bottleneck_two_threads():
    """The OpenMP path (row ranges of one instance on different threads) gives the same sums."""
    model, batch = bottleneck_case(300, 2, T=400, inst=2, tied=False, importance=True)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert_matches(model, batch)
        assert_matches(model, padded(batch, [400, 129]))
    finally:
        torch.set_num_threads(before)


def test_bottleneck_nan_weight_gives_nan_loss_like_eager():
    """A NaN parameter must surface as a NaN loss (the trainer's divergence check relies on it)."""
    model, batch = bottleneck_case(50, 2, T=30, inst=3, tied=True, importance=False)
    with torch.no_grad():
        model.W[1].fill_(math.nan)
    losses, _ = model.fused_loss_and_grads(batch)
    want, _ = eager(model, batch)
    assert torch.isnan(losses[1]) and torch.isnan(want[1])
    torch.testing.assert_close(losses[[0, 2]], want[[0, 2]], rtol=1e-5, atol=1e-7)


def test_sparse_rows_round_trip_and_bad_rows():
    x = SparseFeatures(13, 0.6).sample(9, 3, seed=0)
    sp = bottleneck_kernel.to_sparse_rows(x)
    dense = torch.zeros(3 * 9, 13)
    rows = torch.repeat_interleave(torch.arange(27), sp.row_ptr.diff())
    dense[rows, sp.col.long()] = sp.val
    assert torch.equal(dense.view(3, 9, 13).transpose(0, 1), x)  # rows ordered (instance, t)
    picks = torch.tensor([[8, 0, 3], [2, 2, 7]])
    taken = bottleneck_kernel.take_rows(sp, picks)
    want = bottleneck_kernel.to_sparse_rows(ml_gather(x, picks))
    assert torch.equal(taken.row_ptr, want.row_ptr) and torch.equal(taken.val, want.val)
    for bad in (torch.tensor([[9, 0, 0]]), torch.tensor([[-1, 0, 0]]), torch.tensor([[0, 0]])):
        with pytest.raises(ValueError, match="rows must be"):
            bottleneck_kernel.take_rows(sp, bad)


def ml_gather(x, idx):
    return Batch(x, None, x).gather(idx).inputs


def test_bottleneck_declines_what_it_cannot_do():
    model, batch = bottleneck_case(20, 2, T=10, inst=2, tied=True, importance=False)
    other = Batch(batch.inputs, batch.inputs.flip(0), batch.inputs)  # targets other than inputs
    assert model.fused_loss_and_grads(other) is None
    wide, wbatch = bottleneck_case(80, 65, T=5, inst=1, tied=True, importance=False)
    assert wide.fused_loss_and_grads(wbatch) is None  # wider than the kernel's registers


def embedded_case(task_cls, model_cls, T, inst=4, **kw):
    task = task_cls(SparseFeatures(30, 0.8, normalize=True), 8, n_instances=inst, seed=1)
    batch = task.sample(T, seed=2)
    model = model_cls(**task.model_kwargs(), **kw, seed=3)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:  # biases: move some units across the ReLU's kink
                p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(4))
    return model, batch


@pytest.fixture(params=["kernel", "torch"])
def unembed_path(request, monkeypatch):
    """Unembed's two fused paths: the C++ kernel, and the blocked torch step used without it."""
    if request.param == "torch":
        monkeypatch.setattr(unembed_kernel, "_library", lambda: None)
    return request.param


CASES = {
    "mlp": (MLPTask, MLPBlock, {"d_mlp": 16}, False),
    "unembed-kernel": (UnembedTask, Unembed, {}, False),
    "unembed-torch": (UnembedTask, Unembed, {}, True),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("T", [7, 300, 5000])  # 5000: several row blocks per instance
def test_embedded_models_full_padded_and_minibatch(case, T, monkeypatch):
    task_cls, model_cls, kw, without_kernel = CASES[case]
    if without_kernel:
        monkeypatch.setattr(unembed_kernel, "_library", lambda: None)
    model, batch = embedded_case(task_cls, model_cls, T, **kw)
    assert_matches(model, batch)
    assert_matches(model, padded(batch, [T, max(1, T // 3), 0, 1]))
    rows = torch.randint(0, T, (13, 4), generator=torch.Generator().manual_seed(5))
    assert_matches(model, batch, rows)


def test_unembed_kernel_two_threads_and_bad_label():
    model, batch = embedded_case(UnembedTask, Unembed, 700, inst=2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert_matches(model, batch)
        assert_matches(model, padded(batch, [700, 300]))
    finally:
        torch.set_num_threads(before)
    bad = Batch(batch.inputs, batch.targets.clone(), None)
    bad.targets[3, 1] = model.cfg.d_vocab  # out of range: the kernel must not index with it
    rI, yI = bad.inputs.transpose(0, 1), bad.targets.t()
    assert (
        unembed_kernel.loss_and_grads(rI, yI, torch.tensor([700, 700]), model.W_U, model.b_U)
        is None
    )


def test_random_labels_unembed(unembed_path):
    task = UnembedTask(SparseFeatures(30, 0.8), 8, n_instances=3, labels="random")
    batch = task.sample(64, seed=0)
    assert_matches(Unembed(**task.model_kwargs(), seed=0), batch)
