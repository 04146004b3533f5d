"""Dimensionality measures: closed forms, invariants, a brute-force sup, the trained pentagon, and
D* picking out memorised points."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import memlens as ml
from probes.dimensionality import (
    DimensionalityProbe,
    data_dimensionality,
    dims_per_feature,
    feature_dimensionality,
    max_data_dimensionality,
)
from toy_models import Bottleneck


def polygon(T: int, radius: float = 1.0, phase: float = 0.3) -> torch.Tensor:
    a = phase + 2 * math.pi * torch.arange(T, dtype=torch.float64) / T
    return radius * torch.stack([a.cos(), a.sin()], dim=-1)


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("T", [3, 5, 7, 12])
def test_regular_polygon_gives_m_over_T(T):
    H = polygon(T)
    assert torch.allclose(data_dimensionality(H), torch.full((T,), 2 / T, dtype=H.dtype))
    assert torch.allclose(max_data_dimensionality(H), torch.full((T,), 2 / T, dtype=H.dtype))
    # as features (columns of W), the same polygon: the pentagon gives 2/5 each
    W = H.T.contiguous()
    assert torch.allclose(feature_dimensionality(W), torch.full((T,), 2 / T, dtype=H.dtype))


def test_antipodal_pair_gives_one_half():
    H = torch.tensor([[1.0, 0.0], [-2.0, 0.0], [0.0, 3.0]])
    D, Ds = data_dimensionality(H), max_data_dimensionality(H)
    # the pair shares one dimension; the third point has its own
    assert torch.allclose(D[:2], torch.tensor([0.2, 0.8]))  # ‖h‖²-weighted: 1/5 and 4/5
    assert torch.allclose(Ds, torch.tensor([0.2, 0.8, 1.0]))
    Hsym = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert torch.allclose(data_dimensionality(Hsym), torch.tensor([0.5, 0.5]))
    assert torch.allclose(max_data_dimensionality(Hsym), torch.tensor([0.5, 0.5]))
    W = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(feature_dimensionality(W), torch.tensor([0.5, 0.5, 1.0]))


def test_orthogonal_features_and_unlearned_feature():
    W = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.5, 0.0]])
    assert torch.allclose(feature_dimensionality(W), torch.tensor([1.0, 1.0, 0.0]))
    assert torch.allclose(dims_per_feature(W), torch.tensor(2 / 4.25))


@pytest.mark.parametrize("shape,rank", [((40, 6), 6), ((40, 6), 3), ((5, 8), 5), ((30, 4), 1)])
def test_sum_of_leverage_is_rank(shape, rank):
    g = torch.Generator().manual_seed(0)
    T, m = shape
    H = torch.randn(T, rank, generator=g) @ torch.randn(rank, m, generator=g)
    Ds = max_data_dimensionality(H)
    assert float(Ds.sum()) == pytest.approx(torch.linalg.matrix_rank(H).item(), abs=1e-4)
    assert bool((Ds <= 1 + 1e-5).all()) and bool((Ds >= -1e-6).all())


def test_max_data_dim_matches_hat_matrix_and_brute_force_sup():
    g = torch.Generator().manual_seed(1)
    H = torch.randn(9, 2, generator=g, dtype=torch.float64)
    Ds = max_data_dimensionality(H)
    # brute force: sup over unit v on a dense angle grid of (v·h_i)² / Σ_j (v·h_j)²
    ang = torch.linspace(0, math.pi, 200_001, dtype=torch.float64)
    V = torch.stack([ang.cos(), ang.sin()], -1)  # [grid, 2]
    P = (V @ H.T) ** 2  # [grid, T]
    brute = (P / P.sum(-1, keepdim=True)).amax(0)
    assert torch.allclose(Ds, brute, atol=1e-7)
    # and the naive T×T hat matrix diag(H (HᵀH)⁻¹ Hᵀ)
    hat = torch.diagonal(H @ torch.linalg.pinv(H))
    assert torch.allclose(Ds, hat, atol=1e-10)
    # data dimensionality against its T×T definition
    Hn = H / H.norm(dim=-1, keepdim=True)
    naive = H.norm(dim=-1) ** 2 / ((Hn @ H.T) ** 2).sum(-1)
    assert torch.allclose(data_dimensionality(H), naive)


def test_rank_deficient_and_zero_rows():
    H = torch.tensor([[1.0, 1.0], [2.0, 2.0], [0.0, 0.0], [-1.0, -1.0]])  # rank 1
    Ds = max_data_dimensionality(H)
    assert torch.allclose(Ds, torch.tensor([1 / 6, 4 / 6, 0.0, 1 / 6]), atol=1e-6)
    assert data_dimensionality(H)[2] == 0
    assert torch.all(max_data_dimensionality(torch.zeros(4, 3)) == 0)


def test_scale_invariance_permutation_equivariance_and_batching():
    g = torch.Generator().manual_seed(2)
    H = torch.randn(3, 50, 5, generator=g)
    perm = torch.randperm(50, generator=g)
    for fn in (data_dimensionality, max_data_dimensionality):
        base = fn(H)
        assert base.shape == (3, 50)
        assert torch.allclose(fn(H * 7.5), base, atol=1e-5)
        assert torch.allclose(fn(H[:, perm]), base[:, perm], atol=1e-5)
        # instances are independent: batched equals one at a time
        for i in range(3):
            assert torch.allclose(fn(H[i]), base[i], atol=1e-6)
    W = torch.randn(2, 3, 10, generator=g)
    fd = feature_dimensionality(W)
    assert torch.allclose(feature_dimensionality(W * 0.01), fd, atol=1e-5)
    p10 = torch.randperm(10, generator=g)
    assert torch.allclose(feature_dimensionality(W[:, :, p10]), fd[:, p10], atol=1e-6)


@pytest.mark.user_errors
def test_bad_input():
    H = torch.randn(10, 3)
    H[4, 1] = float("nan")
    for fn in (data_dimensionality, max_data_dimensionality):
        with pytest.raises(ValueError, match="NaN"):
            fn(H)
    with pytest.raises(ValueError, match="shape"):
        max_data_dimensionality(torch.randn(10))
    with pytest.raises(ValueError, match="NaN"):
        feature_dimensionality(torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match="rtol"):
        max_data_dimensionality(torch.randn(4, 2), rtol=2.0)


# ---------------------------------------------------------------- the probe


def test_probe_context_and_run_agree_and_hooks_go_away():
    model = Bottleneck(n_features=6, d_hidden=3, n_instances=2, seed=0)
    x = ml.SparseFeatures(6, 0.5).sample(20, n_instances=2, seed=0)
    with ml.probing(model, "dimensionality", train=x) as (dim,):
        model(x)
    res = dim.result()
    H = torch.einsum("imn,tin->itm", model.W.detach(), x)
    assert torch.allclose(res.max_data_dim, max_data_dimensionality(H), atol=1e-6)
    assert torch.allclose(res.feature_dim, feature_dimensionality(model.W.detach()))
    assert res.max_data_dim.shape == (2, 20) and res.feature_dim.shape == (2, 6)
    again = ml.get_probe("dimensionality")(train=x).run(model, x)
    assert torch.allclose(again.max_data_dim, res.max_data_dim)
    s = again.scalars()
    assert {"mean_data_dim", "mean_max_data_dim", "dims_per_feature"} <= set(s)
    assert s["mean_max_data_dim"] == pytest.approx(3 / 20, abs=1e-5)  # Σ D* = m, full rank
    assert again.scalars(instance=1)["dims_per_feature"] == pytest.approx(
        float(dims_per_feature(model.W.detach()[1]))
    )
    assert all(len(h) == 0 for h in (hp.fwd_hooks for hp in model.hook_dict.values()))
    d = again.to_dict()
    assert len(d["max_data_dim"]) == 2 and "inst 1" in again.summary()


def test_probe_at_another_hook_has_no_feature_dim():
    from toy_models import MLPBlock

    model = MLPBlock(d_model=3, d_mlp=8, d_out=4, n_instances=1)
    x = torch.randn(12, 1, 3)
    res = DimensionalityProbe(hook="hook_post").run(model, ml.Batch(x, torch.zeros(12, 1, 4)))
    assert res.feature_dim is None and "dims_per_feature" not in res.scalars()
    assert res.max_data_dim.shape == (1, 12)


# ---------------------------------------------------------------- trained models


def test_pentagon_feature_dimensionality(pentagon):
    """TMS n=5, m=2, 1-S=0.05, infinite data: a regular pentagon, D_i ≈ 2/5, Σ D_i ≈ 2."""
    model = pentagon
    fd = feature_dimensionality(model.W.detach())  # [inst, 5]
    ok = ((fd - 0.4).abs() <= 0.03).all(-1) & ((fd.sum(-1) - 2).abs() <= 0.1)
    assert int(ok.sum()) > model.n_instances // 2, f"feature dims per instance: {fd}"


def test_max_data_dim_ranks_memorised_outliers_top():
    """Train a bottleneck on typical sparse points plus three outliers, each the only point that
    uses its feature. The model gives the outliers hidden directions of their own (it memorises
    them), and D* ranks them top (Olah; Hobbhahn), far above the typical point."""
    n, m, T, n_out = 8, 6, 200, 3
    # data_version=1: the data this claim was checked on (version 2's draw: 1 of 3 instances)
    x = ml.SparseFeatures(n, 0.7, normalize=True, data_version=1).sample(T, 3, seed=3)
    x[:, :, n - n_out :] = 0  # the last features are rare: only the outliers use them
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    for k in range(n_out):
        x[k] = 0
        x[k, :, n - n_out + k] = 1.0
    model = Bottleneck(n_features=n, d_hidden=m, n_instances=3, seed=0)
    ml.train(model, x, steps=1000, lr=1e-2, weight_decay=1e-2, warmup=100, progress=False)
    res = DimensionalityProbe().run(model, x)
    good = 0
    for i in range(3):
        ranks = res.max_data_dim[i].argsort(descending=True)
        top_is_outliers = set(ranks[:n_out].tolist()) == set(range(n_out))
        ratio = float(res.max_data_dim[i, :n_out].median() / res.max_data_dim[i].median())
        good += top_is_outliers and ratio > 5
    assert good >= 2, res.max_data_dim[:, :n_out]


def test_probe_plot(tmp_path, pentagon):
    x = ml.SparseFeatures(5, feature_probability=0.05).sample(300, n_instances=5, seed=1)
    res = DimensionalityProbe().run(pentagon, x)
    fig = res.plot(instances=[0, 1])
    fig.savefig(tmp_path / "dim.png")
    assert len(fig.axes) == 2 * 3  # stick plots of points and features, and the m=2 scatter
    assert fig.axes[0].get_xlabel() == "training point (sorted by D*)"
    assert np.isfinite(res.scalars()["mean_max_data_dim"])
