"""Dimensionality measures: closed forms, invariants, a brute-force sup, float32 accuracy against a
float64 reference, the hook layout (and the refusal of any other), the trained pentagon, and D*
picking out memorised points."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import memlens as ml
import probes.dimensionality as dim
from probes.dimensionality import (
    DimensionalityProbe,
    compare_max_data_dim,
    data_and_max_data_dimensionality,
    data_dimensionality,
    dims_per_feature,
    feature_dimensionality,
    max_data_dimensionality,
)
from toy_models import Bottleneck


def polygon(T: int, radius: float = 1.0, phase: float = 0.3) -> torch.Tensor:
    """A regular T-gon in the plane, in the hook layout [T, 1, 2]."""
    a = phase + 2 * math.pi * torch.arange(T, dtype=torch.float64) / T
    return radius * torch.stack([a.cos(), a.sin()], dim=-1)[:, None]


def lev(H: torch.Tensor) -> torch.Tensor:
    """Reference leverage of [T, inst, m] rows in float64 via the T × T hat matrix: [inst, T]."""
    Hi = H.double().transpose(0, 1)
    return torch.diagonal(Hi @ torch.linalg.pinv(Hi), dim1=-2, dim2=-1)


def with_condition(T: int, m: int, inst: int, kappa: float, seed: int) -> torch.Tensor:
    """[T, inst, m] float32 activations whose singular values run log-evenly from 1 to 1/kappa."""
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(inst, T, m, generator=g, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(inst, m, m, generator=g, dtype=torch.float64))[0]
    s = torch.logspace(0, -math.log10(kappa), m, dtype=torch.float64)
    return ((U * s) @ V).transpose(0, 1).float()


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("T", [3, 5, 7, 12])
def test_regular_polygon_gives_m_over_T(T):
    H = polygon(T)
    want = torch.full((1, T), 2 / T, dtype=H.dtype)
    assert torch.allclose(data_dimensionality(H, n_instances=1), want)
    assert torch.allclose(max_data_dimensionality(H, n_instances=1), want)
    # as features (columns of W [inst, m, n]), the same polygon: the pentagon gives 2/5 each
    W = H.permute(1, 2, 0).contiguous()
    assert torch.allclose(feature_dimensionality(W), want)


def test_antipodal_pair_gives_one_half():
    H = torch.tensor([[1.0, 0.0], [-2.0, 0.0], [0.0, 3.0]])[:, None]
    D, Ds = data_and_max_data_dimensionality(H, n_instances=1)
    # the pair shares one dimension; the third point has its own
    assert torch.allclose(D[0, :2], torch.tensor([0.2, 0.8]))  # ‖h‖²-weighted: 1/5 and 4/5
    assert torch.allclose(Ds[0], torch.tensor([0.2, 0.8, 1.0]))
    Hsym = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])[:, None]
    assert torch.allclose(data_dimensionality(Hsym, n_instances=1), torch.tensor([[0.5, 0.5]]))
    assert torch.allclose(max_data_dimensionality(Hsym, n_instances=1), torch.tensor([[0.5, 0.5]]))
    W = torch.tensor([[[1.0, -1.0, 0.0], [0.0, 0.0, 1.0]]])
    assert torch.allclose(feature_dimensionality(W), torch.tensor([[0.5, 0.5, 1.0]]))


def test_orthogonal_features_and_unlearned_feature():
    W = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.5, 0.0]]])
    assert torch.allclose(feature_dimensionality(W), torch.tensor([[1.0, 1.0, 0.0]]))
    assert torch.allclose(dims_per_feature(W), torch.tensor([2 / 4.25]))


@pytest.mark.parametrize("shape,rank", [((40, 6), 6), ((40, 6), 3), ((5, 8), 5), ((30, 4), 1)])
def test_sum_of_leverage_is_rank(shape, rank):
    g = torch.Generator().manual_seed(0)
    T, m = shape
    H = torch.randn(T, 2, rank, generator=g) @ torch.randn(rank, m, generator=g)  # [T, 2, m]
    Ds = max_data_dimensionality(H, n_instances=2)
    for i in range(2):
        want = torch.linalg.matrix_rank(H[:, i]).item()
        assert float(Ds[i].sum()) == pytest.approx(want, abs=1e-4)
    assert bool((Ds <= 1 + 1e-5).all()) and bool((Ds >= -1e-6).all())


def test_max_data_dim_matches_hat_matrix_and_brute_force_sup():
    g = torch.Generator().manual_seed(1)
    H = torch.randn(9, 1, 2, generator=g, dtype=torch.float64)
    Ds = max_data_dimensionality(H, n_instances=1)[0]
    # brute force: sup over unit v on a dense angle grid of (v·h_i)² / Σ_j (v·h_j)²
    ang = torch.linspace(0, math.pi, 200_001, dtype=torch.float64)
    V = torch.stack([ang.cos(), ang.sin()], -1)  # [grid, 2]
    P = (V @ H[:, 0].T) ** 2  # [grid, T]
    brute = (P / P.sum(-1, keepdim=True)).amax(0)
    assert torch.allclose(Ds, brute, atol=1e-7)
    assert torch.allclose(Ds, lev(H)[0], atol=1e-10)  # the naive T×T hat matrix
    # data dimensionality against its T×T definition
    h = H[:, 0]
    naive = h.norm(dim=-1) ** 2 / (((h / h.norm(dim=-1, keepdim=True)) @ h.T) ** 2).sum(-1)
    assert torch.allclose(data_dimensionality(H, n_instances=1)[0], naive)


def test_rank_deficient_and_zero_rows():
    H = torch.tensor([[1.0, 1.0], [2.0, 2.0], [0.0, 0.0], [-1.0, -1.0]])[:, None]  # rank 1
    Ds = max_data_dimensionality(H, n_instances=1)
    assert torch.allclose(Ds, torch.tensor([[1 / 6, 4 / 6, 0.0, 1 / 6]]), atol=1e-6)
    assert data_dimensionality(H, n_instances=1)[0, 2] == 0
    assert torch.all(max_data_dimensionality(torch.zeros(4, 2, 3), n_instances=2) == 0)


def test_scale_invariance_permutation_equivariance_and_batching():
    g = torch.Generator().manual_seed(2)
    H = torch.randn(50, 3, 5, generator=g)  # [batch, inst, m]
    perm = torch.randperm(50, generator=g)
    for fn in (data_dimensionality, max_data_dimensionality):
        base = fn(H, n_instances=3)
        assert base.shape == (3, 50)
        assert torch.allclose(fn(H * 7.5, n_instances=3), base, atol=1e-5)
        assert torch.allclose(fn(H[perm], n_instances=3), base[:, perm], atol=1e-5)
        # instances are independent: batched equals one at a time
        for i in range(3):
            assert torch.allclose(fn(H[:, i : i + 1], n_instances=1)[0], base[i], atol=1e-6)
    W = torch.randn(2, 3, 10, generator=g)
    fd = feature_dimensionality(W)
    assert torch.allclose(feature_dimensionality(W * 0.01), fd, atol=1e-5)
    p10 = torch.randperm(10, generator=g)
    assert torch.allclose(feature_dimensionality(W[:, :, p10]), fd[:, p10], atol=1e-6)


def test_trailing_axes_are_flattened_and_dtypes():
    g = torch.Generator().manual_seed(3)
    H = torch.randn(30, 2, 3, 4, generator=g, dtype=torch.float64)  # e.g. [batch, inst, head, d]
    got = max_data_dimensionality(H, n_instances=2)
    assert got.dtype == torch.float64
    assert torch.allclose(got, lev(H.flatten(2)), atol=1e-10)
    Hi = torch.randint(-3, 4, (20, 1, 3))  # integers are measured as float32
    assert max_data_dimensionality(Hi, n_instances=1).dtype == torch.float32
    assert torch.allclose(max_data_dimensionality(Hi, n_instances=1).double(), lev(Hi), atol=1e-5)


# ---------------------------------------------------------------- the hook layout


def test_cache_activation_gives_hand_computed_leverage():
    """``cache["hook_hidden"]`` as is ([batch, inst, m]) gives the leverage computed by hand.
    Instance 0: h = (1,0), (0,2), (1,1): G = [[2,1],[1,5]], G⁻¹ = [[5,-1],[-1,2]]/9, so
    D* = 5/9, 8/9, 5/9 and D = ‖h‖⁴/hᵀGh = 1/2, 16/20, 4/9.
    Instance 1: h = (2,0), (0,1), (0,-1): D* = D = 1, 1/2, 1/2."""
    model = Bottleneck(n_features=3, d_hidden=2, n_instances=2)
    with torch.no_grad():
        model.W[0] = torch.tensor([[1.0, 0.0, 1.0], [0.0, 2.0, 1.0]])
        model.W[1] = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, -1.0]])
    x = torch.eye(3)[:, None].repeat(1, 2, 1)  # the three one-hot points, both instances
    _, cache = model.run_with_cache(x)
    H = cache["hook_hidden"]
    assert H.shape == (3, 2, 2)
    D, Ds = data_and_max_data_dimensionality(H, n_instances=model.n_instances)
    assert torch.allclose(Ds, torch.tensor([[5 / 9, 8 / 9, 5 / 9], [1.0, 0.5, 0.5]]), atol=1e-6)
    assert torch.allclose(D, torch.tensor([[0.5, 0.8, 4 / 9], [1.0, 0.5, 0.5]]), atol=1e-6)
    assert torch.allclose(max_data_dimensionality(H, n_instances=2), Ds)
    assert torch.allclose(data_dimensionality(H, n_instances=2), D)
    # and the probe reads the same numbers from the same hook
    res = DimensionalityProbe().run(model, x)
    assert torch.allclose(res.max_data_dim, Ds, atol=1e-6)
    assert torch.allclose(res.data_dim, D, atol=1e-6)


@pytest.mark.user_errors
def test_other_layouts_are_refused():
    H = torch.randn(50, 3, 4)  # [batch, inst, m]
    old = H.transpose(0, 1)  # the old [inst, T, m] layout
    for fn in (data_dimensionality, max_data_dimensionality, data_and_max_data_dimensionality):
        with pytest.raises(ValueError, match=r"transpose\(0, 1\)"):
            fn(old, n_instances=3)
        with pytest.raises(ValueError, match=r"\[batch, inst, \.\.\.\].*H\[:, None\]"):
            fn(H[:, 0], n_instances=1)  # 2-D: no instance axis
        with pytest.raises(ValueError, match="n_instances=5"):
            fn(H, n_instances=5)
        with pytest.raises(TypeError, match="n_instances"):
            fn(H)  # the instance count is required: shapes alone cannot tell the layouts apart
        for bad in (0, -1, True, 3.0, None):
            with pytest.raises(ValueError, match="n_instances must be a positive int"):
                fn(H, n_instances=bad)
        with pytest.raises(TypeError, match="torch.Tensor"):
            fn(H.numpy(), n_instances=3)
    for fn in (feature_dimensionality, dims_per_feature):
        with pytest.raises(ValueError, match=r"\[inst, m, n\].*W\[None\]"):
            fn(torch.randn(2, 5))


@pytest.mark.user_errors
def test_bad_values():
    H = torch.randn(10, 1, 3)
    H[4, 0, 1] = float("nan")
    for fn in (data_dimensionality, max_data_dimensionality):
        with pytest.raises(ValueError, match="NaN"):
            fn(H, n_instances=1)
        with pytest.raises(ValueError, match="NaN"):
            fn(H.double(), n_instances=1)
    Hinf = torch.ones(10, 1, 3)
    Hinf[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="inf"):
        max_data_dimensionality(Hinf, n_instances=1)
    with pytest.raises(ValueError, match="NaN"):
        feature_dimensionality(torch.full((1, 2, 3), float("nan")))
    for rtol in (2.0, -0.1, True, "1e-3"):
        with pytest.raises(ValueError, match=r"rtol must be a number in \[0, 1\)"):
            max_data_dimensionality(torch.randn(4, 1, 2), n_instances=1, rtol=rtol)


# ---------------------------------------------------------------- float32 accuracy


@pytest.mark.parametrize("kappa", [1.0, 10.0, 30.0, 100.0, 1e3, 1e4])
def test_float32_matches_float64_reference_across_condition_numbers(kappa):
    """float32 activations against a float64 hat matrix of the same numbers. The float32 Gram's
    error (δ ≲ 2e-7 of λ_max) moves D* by about δ·κ² relative, so the fast path is used only
    while κ² ≤ 1/FAST_MIN_EIG_RATIO (error ≲ 2e-4) and float64 beyond; either way the relative
    error stays below 1e-3 for every point."""
    H = with_condition(T=3000, m=8, inst=2, kappa=kappa, seed=int(kappa))
    D, Ds = data_and_max_data_dimensionality(H, n_instances=2)
    ref = lev(H)
    assert ((Ds.double() - ref).abs() / ref).max() < 1e-3
    h = H.double().transpose(0, 1)
    Dref = h.norm(dim=-1) ** 4 / ((h @ (h.transpose(1, 2) @ h)) * h).sum(-1)
    assert ((D.double() - Dref).abs() / Dref).max() < 1e-3
    assert torch.allclose(Ds.sum(-1), torch.full((2,), 8.0), atol=1e-3)


@pytest.mark.parametrize("T,m,rank", [(4000, 16, 5), (2000, 8, 7), (6, 16, 6), (3000, 12, 1)])
def test_float32_rank_deficient_sums_to_rank(T, m, rank):
    """H = A·B computed in float32 (rounding makes it numerically, not exactly, rank-deficient):
    Σ D* is the rank and every D* matches the float64 projection onto the row space of A."""
    g = torch.Generator().manual_seed(T + m)
    A = torch.randn(T, 2, rank, generator=g)
    H = torch.einsum("tir,irm->tim", A, torch.randn(2, rank, m, generator=g))  # [T, 2, m]
    Ds = max_data_dimensionality(H, n_instances=2)
    assert torch.allclose(Ds.sum(-1), torch.full((2,), float(rank)), atol=1e-3)
    assert torch.allclose(Ds.double(), lev(A), atol=1e-4)  # span(H) = span(A) in exact arithmetic


def test_fast_path_is_used_when_well_conditioned_and_chunking_changes_nothing(monkeypatch):
    H = with_condition(T=2000, m=6, inst=3, kappa=3.0, seed=0)
    assert dim._spectrum(H).dtype == torch.float32  # the fast float32 Gram
    assert dim._spectrum(with_condition(200, 6, 3, 1e3, 0)).dtype == torch.float64
    whole = data_and_max_data_dimensionality(H, n_instances=3)
    monkeypatch.setattr(dim, "CHUNK_ELEMENTS", 7 * 3 * 6)  # 7 rows per chunk: 286 chunks
    chunked = data_and_max_data_dimensionality(H, n_instances=3)
    for a, b in zip(whole, chunked, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_extreme_magnitudes_give_the_same_numbers():
    H = torch.randn(40, 2, 4, dtype=torch.float64)
    base = data_and_max_data_dimensionality(H, n_instances=2)
    for s in (1e-200, 1e200):  # squares leave float64's range: rescaled
        for a, b in zip(data_and_max_data_dimensionality(H * s, n_instances=2), base, strict=True):
            assert torch.allclose(a, b, rtol=1e-9)
    Hf = H.float()
    base32 = max_data_dimensionality(Hf, n_instances=2)
    for s in (1e-25, 1e25):  # squares leave float32's range: the float64 path
        got = max_data_dimensionality(Hf * s, n_instances=2)
        assert torch.allclose(got, base32, rtol=1e-4)


# ---------------------------------------------------------------- the probe


def test_probe_context_and_run_agree_and_hooks_go_away():
    model = Bottleneck(n_features=6, d_hidden=3, n_instances=2, seed=0)
    x = ml.SparseFeatures(6, 0.5).sample(20, n_instances=2, seed=0)
    with ml.probing(model, "dimensionality", train=x) as (dim_probe,):
        model(x)
    res = dim_probe.result()
    H = torch.einsum("imn,tin->tim", model.W.detach(), x)  # [batch, inst, m]
    assert torch.allclose(res.max_data_dim, max_data_dimensionality(H, n_instances=2), atol=1e-6)
    assert res.hidden.shape == (20, 2, 3)  # activations keep the hook layout
    assert torch.allclose(res.max_data_dim, max_data_dimensionality(res.hidden, n_instances=2))
    assert torch.allclose(res.feature_dim, feature_dimensionality(model.W.detach()))
    assert res.max_data_dim.shape == (2, 20) and res.feature_dim.shape == (2, 6)
    again = ml.get_probe("dimensionality")(train=x).run(model, x)
    assert torch.allclose(again.max_data_dim, res.max_data_dim)
    s = again.scalars()
    assert {"mean_data_dim", "mean_max_data_dim", "dims_per_feature"} <= set(s)
    assert s["mean_max_data_dim"] == pytest.approx(3 / 20, abs=1e-5)  # Σ D* = m, full rank
    assert again.scalars(instance=1)["dims_per_feature"] == pytest.approx(
        float(dims_per_feature(model.W.detach())[1])
    )
    assert all(len(h) == 0 for h in (hp.fwd_hooks for hp in model.hook_dict.values()))
    d = again.to_dict()
    assert len(d["max_data_dim"]) == 2 and "inst 1" in again.summary()


def test_probe_masks_padded_rows():
    """Instances packed with different T (Batch.lengths): padded rows are NaN and the real rows
    get the numbers of their own T alone."""
    model = Bottleneck(n_features=6, d_hidden=3, n_instances=2, seed=0)
    x = ml.SparseFeatures(6, 0.5).sample(20, n_instances=2, seed=1)
    res = DimensionalityProbe().run(model, ml.Batch(x, lengths=torch.tensor([20, 12])))
    assert bool(res.max_data_dim[1, 12:].isnan().all()) and not res.max_data_dim[0].isnan().any()
    H1 = torch.einsum("mn,tn->tm", model.W.detach()[1], x[:12, 1])[:, None]
    assert torch.allclose(res.max_data_dim[1, :12], max_data_dimensionality(H1, n_instances=1)[0])
    assert res.scalars(instance=1)["sum_max_data_dim"] == pytest.approx(3.0, abs=1e-4)


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
    """Train a bottleneck on typical sparse points (5 common features) plus three outliers, each
    the only point that uses its feature, with m = 7 hidden dimensions: room for the common
    features and two spare directions. The model gives the outliers hidden directions of their
    own (it memorises them), and D* ranks them top (Olah; Hobbhahn), far above the typical point.
    (With m = 6, one spare direction for three outliers, most instances store only one or two
    of them: 2 of 6 instances pass on the default data.)"""
    n, m, T, n_out, inst = 8, 7, 200, 3, 6
    x = ml.SparseFeatures(n, 0.7, normalize=True).sample(T, inst, seed=3)
    x[:, :, n - n_out :] = 0  # the last features are rare: only the outliers use them
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    for k in range(n_out):
        x[k] = 0
        x[k, :, n - n_out + k] = 1.0
    model = Bottleneck(n_features=n, d_hidden=m, n_instances=inst, seed=0)
    ml.train(model, x, steps=1000, lr=1e-2, weight_decay=1e-2, warmup=100, progress=False)
    res = DimensionalityProbe().run(model, x)
    good = 0
    for i in range(inst):
        ranks = res.max_data_dim[i].argsort(descending=True)
        top_is_outliers = set(ranks[:n_out].tolist()) == set(range(n_out))
        ratio = float(res.max_data_dim[i, :n_out].median() / res.max_data_dim[i].median())
        good += top_is_outliers and ratio > 5
    assert good >= 4, res.max_data_dim[:, :n_out]  # a clear majority of the 6 instances


# ---------------------------------------------------------------- figures


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_probe_plot(tmp_path, pentagon):
    x = ml.SparseFeatures(5, feature_probability=0.05).sample(300, n_instances=5, seed=1)
    res = DimensionalityProbe().run(pentagon, x)
    fig = res.plot(instances=[0, 1])
    fig.savefig(tmp_path / "dim.png")
    panels = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    assert len(panels) == 2 * 3  # D* per point, feature dimensionality, the m=2 hidden plane
    ax = panels[0]
    assert ax.get_yscale() == "log" and "sorted by D*" in ax.get_xlabel()
    # the curve is the sorted D* of instance 0, and the reference line sits at rank/T
    curve = ax.get_lines()[0].get_ydata()
    want = np.sort(res.max_data_dim[0].numpy())[::-1]
    assert np.allclose(curve, want[want > 0])
    ref = [ln for ln in ax.get_lines() if "rank/T" in str(ln.get_label())]
    assert ref and np.allclose(ref[0].get_ydata(), float(res.rank()[0]) / 300, rtol=1e-4)
    assert np.isfinite(res.scalars()["mean_max_data_dim"])


def test_compare_figure_separates_regimes(tmp_path):
    """A D*-per-point comparison of a 'memorising' result (every point owns a dimension: D* = 1)
    and a 'generalising' one (D* spread around rank/T): both distributions are drawn on a log
    axis with their rank/T references, and the legend sits outside the data."""
    model = Bottleneck(n_features=16, d_hidden=8, n_instances=1, seed=0)
    with torch.no_grad():
        model.W[0] = torch.cat([torch.eye(8), torch.randn(8, 8)], 1)
    mem = DimensionalityProbe().run(model, torch.eye(16)[:8, None])  # 8 orthogonal points
    big = ml.SparseFeatures(16, 0.8).sample(500, n_instances=1, seed=0)
    gen = DimensionalityProbe().run(model, big)
    assert torch.allclose(mem.max_data_dim, torch.ones(1, 8), atol=1e-5)
    fig = compare_max_data_dim([mem, gen], labels=["memorising", "generalising"])
    fig.savefig(tmp_path / "cmp.png")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    labels = [str(t.get_text()) for t in fig.legends[0].get_texts()]
    assert any("memorising" in t for t in labels) and any("generalising" in t for t in labels)
    refs = sorted(float(ln.get_ydata()[0]) for ln in ax.get_lines() if ln.get_gid() == "rank/T")
    assert np.allclose(refs, [8 / 500, 8 / 8], rtol=1e-4)
    renderer = fig.canvas.get_renderer()
    legend_box = fig.legends[0].get_window_extent(renderer)
    assert not any(_overlaps(legend_box, a.get_window_extent(renderer)) for a in fig.axes)
    with pytest.raises(ValueError, match="labels"):
        compare_max_data_dim([mem, gen], labels=["only one"])
    # the same figure from a result, for code that does not import this module (the quickstart)
    again = compare_max_data_dim([mem, gen], ["memorising", "generalising"])
    assert [t.get_text() for t in again.legends[0].get_texts()] == labels
