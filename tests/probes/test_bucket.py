"""Vaintrob's bucket of circuits: ablation masks, loss contributions against a hand computation,
complexities from coupled chains, and the rank correlation."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import memlens
from memlens.data import SparseFeatures
from probes.bucket import measure_bucket, spearman
from toy_models import Bottleneck


def test_spearman_on_known_rankings():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman(x, x**3) == pytest.approx(1.0)  # monotone: rank correlation 1
    assert spearman(x, -x) == pytest.approx(-1.0)
    # hand-computed: ranks (1,2,3,4,5) vs (2,1,4,3,5): 1 − 6·Σd²/(n(n²−1)) = 1 − 6·4/120 = 0.8
    assert spearman(x, torch.tensor([2.0, 1.0, 4.0, 3.0, 5.0])) == pytest.approx(0.8)
    assert math.isnan(spearman(x[:2], x[:2]))


@pytest.fixture(scope="module")
def trained():
    train = SparseFeatures(n_features=6, sparsity=0.6).sample(T=8, n_instances=2, seed=0)
    model = Bottleneck(n_features=6, d_hidden=2, n_instances=2, seed=0)
    memlens.train(model, train, steps=600, lr=3e-2, progress=False)
    return model, train


def test_ablation_masks_remove_exactly_their_circuit(trained):
    model, train = trained
    c = model.circuits(train)
    out, hid = c.ablations["hook_out"], c.ablations["hook_hidden"]
    assert out.shape == (6 + 8, 8, 2, 6) and hid.shape == (6 + 8, 8, 2, 2)
    for i in range(6):  # feature i: output i on every point, nothing else
        assert (out[i, :, :, i] == 0).all() and out[i].sum() == 8 * 2 * 5 and (hid[i] == 1).all()
    for j in range(8):  # datum j: point j's hidden vector, nothing else
        assert (hid[6 + j, j] == 0).all() and hid[6 + j].sum() == 7 * 2 * 2
        assert (out[6 + j] == 1).all()


def test_loss_contribution_and_complexity(trained):
    model, train = trained
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = measure_bucket(model, train, chains=4, draws=60, max_steps=1500, progress=False)
    # loss contribution of feature 2, by hand: zero output 2 of the trained model on every point
    with torch.no_grad():
        out = model(train)
        base = ((out - train) ** 2).sum(-1).mean(0)
        out[..., 2] = 0
        ablated = ((out - train) ** 2).sum(-1).mean(0)
    torch.testing.assert_close(b.loss_contribution[:, 2], ablated - base, rtol=1e-4, atol=1e-6)
    assert (b.loss_contribution >= -1e-6).all()  # removing a circuit never helps at a minimum
    # a used feature's weights carry complexity: ablating it lowers λ̂ beyond the noise
    used = b.loss_contribution[:, :6] > 1e-3
    assert used.any()
    assert (b.complexity[:, :6][used] > 2 * b.complexity_se[:, :6][used]).float().mean() > 0.5
    fin = torch.isfinite(b.predicted)
    torch.testing.assert_close(
        b.predicted[fin], (b.nbeta[:, None] * b.loss_contribution / b.complexity)[fin]
    )
    assert "Δλ" in b.summary()


def test_ablation_masks_follow_row_chunks(trained, monkeypatch):
    """HookedToyModel.loss evaluates big batches in row chunks; the ablation must too."""
    import memlens.hooked as hooked
    from memlens.sampling.sgld import expand_batch
    from probes.bucket import _ablation_hooks

    model, train = trained
    c = model.circuits(train)
    arms = len(c.names) + 1
    big = model.expand(arms)
    batch = expand_batch(memlens.data.as_batch(train), arms)
    with torch.no_grad(), big.hooks(fwd_hooks=_ablation_hooks(c.ablations, arms, 1)):
        whole = big.loss(batch)
    monkeypatch.setattr(hooked, "LOSS_CHUNK_ELEMENTS", 3 * arms * 2 * 6)  # 3-row chunks
    with torch.no_grad(), big.hooks(fwd_hooks=_ablation_hooks(c.ablations, arms, 1)):
        chunked = big.loss(batch)
    torch.testing.assert_close(chunked, whole)
