"""The vectorised trainer."""

import math

import pytest
import torch

import memlens as ml
from memlens.data import Batch, SparseFeatures
from memlens.training import lr_at
from toy_models import Bottleneck, MLPBlock, MLPTask


def test_schedule_is_linear_warmup_then_cosine_to_zero():
    kw = dict(steps=100, lr=1.0, warmup=10, schedule="cosine")
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(55, **kw) == pytest.approx(0.5)  # halfway through the decay
    assert lr_at(99, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert lr_at(50, steps=100, lr=0.3, warmup=0, schedule="constant") == 0.3


def test_loss_is_sum_of_instances_so_each_gets_its_own_gradient():
    """One step on a 2-instance model equals one step on each instance alone."""
    x = SparseFeatures(8, 0.5).sample(16, 2, seed=0)
    both = Bottleneck(8, 3, n_instances=2, seed=1)
    ml.train(both, x, steps=3, lr=1e-2, progress=False)
    for i in range(2):
        alone = Bottleneck(8, 3, n_instances=2, seed=1).select_instances([i])
        ml.train(alone, x[:, i : i + 1], steps=3, lr=1e-2, progress=False)
        assert torch.allclose(alone.W.detach()[0], both.W.detach()[i], atol=1e-6)


def test_training_reduces_loss_and_reports_test_loss():
    task = MLPTask(SparseFeatures(12, 0.8, normalize=True), d_model=4, n_instances=2, seed=0)
    tr, te = task.split(8, seed=0, n_test=256)
    model = MLPBlock(4, 32, 12, n_instances=2)
    res = ml.train(model, tr, test=te, steps=400, lr=1e-2, warmup=20, progress=False)
    assert res.history.shape == (400, 2)
    assert (res.history[-1] < 0.05 * res.history[0]).all()
    assert torch.allclose(res.train_loss, model.loss(tr).detach(), atol=1e-6)
    assert res.test_loss is not None and (res.test_loss > 5 * res.train_loss).all()  # memorised
    assert "train loss" in res.summary()


def test_minibatches_respect_padding_lengths():
    """With lengths, an instance never trains on its padding rows."""
    x = torch.zeros(10, 2, 4)
    x[:, :, 0] = 1.0
    x[5:, 1] = float("nan")  # padding rows of instance 1: touching them would poison it
    batch = Batch(inputs=x, lengths=torch.tensor([10, 5]))
    model = Bottleneck(4, 2, n_instances=2)
    res = ml.train(model, batch, steps=20, batch_size=4, progress=False)
    assert torch.isfinite(res.train_loss).all() and torch.isfinite(model.W).all()


def test_non_finite_data_is_refused_before_any_step_naming_the_first_bad_index():
    x = torch.rand(8, 3, 5)
    x[2, 1, 0] = float("inf")
    model = Bottleneck(5, 2, n_instances=3)
    before = model.W.detach().clone()
    with pytest.raises(
        ValueError, match=r"data inputs contains NaN or inf \(first at index \[2, 1, 0\]"
    ):
        ml.train(model, x, steps=5, progress=False)
    assert torch.equal(model.W, before)  # refused before any step


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(steps=0), "steps"),
        (dict(steps=10, lr=-1.0), "lr"),
        (dict(steps=10, warmup=20), "warmup"),
        (dict(steps=10, schedule="linear"), "schedule"),
        (dict(steps=10, batch_size=0), "batch_size"),
    ],
)
def test_bad_arguments_raise_before_training(kw, match):
    m = Bottleneck(5, 2)
    before = m.W.detach().clone()
    with pytest.raises(ValueError, match=match):
        ml.train(m, torch.rand(4, 1, 5), progress=False, **kw)
    assert torch.equal(before, m.W)


def test_infinite_data_needs_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        ml.train(Bottleneck(5, 2), SparseFeatures(5, 0.5), steps=3, progress=False)
