"""Sparse-feature data and the three tasks."""

import pytest
import torch

from memlens.data import Batch, SparseFeatures
from toy_models import BottleneckTask, MLPTask, UnembedTask


def test_sparsity_and_value_distribution():
    x = SparseFeatures(50, 0.9).sample(4000, 2, seed=0)
    assert x.shape == (4000, 2, 50)
    active = x > 0
    frac = active.float().mean().item()
    n = active.numel()
    sd = (0.1 * 0.9 / n) ** 0.5
    assert abs(frac - 0.1) < 5 * sd  # P(active) = 1 - S
    vals = x[active]
    assert vals.max() <= 1 and vals.min() > 0
    assert abs(vals.mean().item() - 0.5) < 5 * (1 / 12 / vals.numel()) ** 0.5  # U[0, 1]


def test_per_instance_sparsity_and_feature_probability():
    x = SparseFeatures(40, [0.0, 0.5, 0.95]).sample(3000, seed=1)
    fr = (x > 0).float().mean(dim=(0, 2))
    assert torch.allclose(fr, torch.tensor([1.0, 0.5, 0.05]), atol=0.01)
    y = SparseFeatures(40, feature_probability=0.5).sample(3000, 1, seed=1)
    assert abs((y > 0).float().mean().item() - 0.5) < 0.01


def test_instances_draw_independent_reproducible_streams():
    f = SparseFeatures(30, 0.8)
    a = f.sample(100, 3, seed=7)
    assert torch.equal(a, f.sample(100, 3, seed=7))
    assert not torch.equal(a[:, 0], a[:, 1])
    assert torch.equal(a[:, :2], f.sample(100, 2, seed=7))  # independent of instance count
    assert not torch.equal(a, f.sample(100, 3, seed=8))
    b1, b2 = next(f.batches(16, seed=0, n_instances=2)), next(f.batches(16, seed=0, n_instances=2))
    assert torch.equal(b1, b2) and b1.shape == (16, 2, 30)


def test_normalize_gives_unit_norm_points():
    x = SparseFeatures(20, 0.7, normalize=True).sample(500, 2, seed=0)
    norms = x.norm(dim=-1)
    nonzero = norms > 0
    assert torch.allclose(norms[nonzero], torch.ones(int(nonzero.sum())), atol=1e-6)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, [0.5, 1.0]])
def test_sparsity_outside_unit_interval_raises(bad):
    with pytest.raises(ValueError, match="sparsity must be in \\[0, 1\\)"):
        SparseFeatures(10, bad)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="exactly one"):
        SparseFeatures(10, 0.5, feature_probability=0.5)
    with pytest.raises(ValueError, match="n_features"):
        SparseFeatures(0, 0.5)
    with pytest.raises(ValueError, match="n_instances=2 does not match the 3"):
        SparseFeatures(10, [0.1, 0.2, 0.3]).sample(5, 2)
    with pytest.raises(ValueError, match="importance"):
        SparseFeatures(10, 0.5, importance=[1.0] * 3)
    with pytest.raises(ValueError, match="n_features > d_model"):
        MLPTask(SparseFeatures(4, 0.5), d_model=4)


def test_mlp_task_embeds_features_and_targets_them():
    task = MLPTask(SparseFeatures(16, 0.8), d_model=6, n_instances=2, seed=3)
    train, test = task.split(50, seed=0, n_test=70)
    assert train.inputs.shape == (50, 2, 6) and train.targets.shape == (50, 2, 16)
    assert test.inputs.shape == (70, 2, 6)
    want = torch.einsum("imf,bif->bim", task.E, train.targets)
    assert torch.allclose(train.inputs, want)
    assert torch.allclose(task.E.norm(dim=1), torch.ones(2, 16))  # unit-norm feature directions
    assert not torch.equal(task.E[0], task.E[1])  # one embedding per instance
    assert not torch.equal(train.targets[:50], test.targets[:50])  # fresh test points


def test_unembed_rule_labels_are_largest_active_feature():
    feats = SparseFeatures(10, 0.8)
    task = UnembedTask(feats, d_model=4, n_instances=2, seed=0, labels="rule")
    b = task.sample(300, seed=1)
    f = b.features
    for t in range(300):
        for i in range(2):
            if f[t, i].max() > 0:
                assert b.targets[t, i] == f[t, i].argmax()
            else:
                assert b.targets[t, i] == 10  # the "no feature" token
    rnd = UnembedTask(feats, d_model=4, n_instances=2, labels="random").sample(2000, seed=1)
    counts = torch.bincount(rnd.targets.flatten(), minlength=11).float()
    assert counts.min() > 0.5 * counts.mean()  # all tokens used, roughly uniformly
    with pytest.raises(ValueError, match="labels"):
        UnembedTask(feats, d_model=4, labels="nope")


def test_batch_gather_and_mask():
    x = torch.arange(24.0).view(4, 2, 3)
    b = Batch(inputs=x, lengths=torch.tensor([4, 2]))
    assert b.mask().tolist() == [[1, 1], [1, 1], [1, 0], [1, 0]]
    g = b.gather(torch.tensor([[3, 1], [0, 0]]))
    assert torch.equal(g.inputs[0, 0], x[3, 0]) and torch.equal(g.inputs[0, 1], x[1, 1])
    auto = BottleneckTask(SparseFeatures(3, 0.1), 2).sample(5)
    assert auto.targets is None and auto.target is auto.inputs  # autoencoding
