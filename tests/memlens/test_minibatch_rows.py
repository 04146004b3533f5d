"""The sampler's minibatch rows (memlens.sampling.random_streams.MinibatchRows): a counter-based
hash of each chain's key and the step number. The points are uniform over each instance's own
points, independent between chains, steps and minibatch slots, reproducible from the seed, and the
bottleneck's kernel picks exactly the rows the torch path picks."""

from __future__ import annotations

import math

import torch

from memlens.data import Batch, SparseFeatures
from memlens.sampling.random_streams import MinibatchRows, hash32
from toy_models import Bottleneck


def _rows(seed=0, chains=4, groups=(0, 1), batch=64, n_points=(50, 37), T=50):
    return MinibatchRows(seed, 43, list(groups), chains, batch, torch.tensor(n_points), T, "cpu")


def _chi2_ok(counts: torch.Tensor) -> bool:
    """Pearson's chi-square against uniform counts, within 5 sd of its mean (k − 1)."""
    k, n = counts.numel(), float(counts.sum())
    e = n / k
    chi2 = float(((counts.double() - e) ** 2 / e).sum())
    return abs(chi2 - (k - 1)) < 5 * math.sqrt(2 * (k - 1))


def test_hash32_matches_uint32_arithmetic():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2**32, (1000,), dtype=torch.int64, generator=g)
    out = hash32(x)
    M = 2**32 - 1
    for v, h in zip(x[:50].tolist(), out[:50].tolist(), strict=True):  # Python ints, exact
        v ^= v >> 16
        v = (v * 0x21F0AAAD) & M
        v ^= v >> 15
        v = (v * 0x735A2D97) & M
        v ^= v >> 15
        assert h == v
    assert bool(((out >= 0) & (out <= M)).all())


def test_rows_are_uniform_over_each_instances_own_points():
    picks = _rows(n_points=(50, 37), T=50)
    idx = picks.rows(0, 400)  # [K, E * b]
    copies, inst, b = 8, 2, 64
    idx = idx.view(400, copies, inst, b)
    for i, n in enumerate((50, 37)):
        r = idx[:, :, i]
        assert bool((r % inst == i).all())  # instance i's rows only
        t = r // inst
        assert int(t.min()) == 0 and int(t.max()) == n - 1  # padding (t >= 37) never drawn
        assert _chi2_ok(torch.bincount(t.flatten(), minlength=n))


def test_rows_are_independent_between_chains_steps_and_slots():
    picks = _rows(n_points=(16, 16), T=16)
    t = picks.rows(0, 2000).view(2000, 8, 2, 64) // 2
    # pairs of draws: (chain 0, chain 1) at the same step and slot, (step k, step k + 1), (slot 0,
    # slot 1): each pair's joint counts must be uniform over the 16 x 16 cells
    for a, b in [(t[:, 0, 0], t[:, 1, 0]), (t[:-1, 0, 0], t[1:, 0, 0]),
                 (t[:, 0, 0, 0], t[:, 0, 0, 1])]:  # fmt: skip
        joint = (a * 16 + b).flatten()
        assert _chi2_ok(torch.bincount(joint, minlength=256))


def test_rows_depend_on_the_seed_and_group_and_resume_by_step():
    a, b = _rows(seed=1), _rows(seed=1)
    assert torch.equal(a.rows(0, 5), b.rows(0, 5))
    assert not torch.equal(a.rows(0, 5), _rows(seed=2).rows(0, 5))
    # a copy's rows depend on its (group, chain) only: group 1 alone gives the second arm's rows
    solo = _rows(seed=1, groups=(1,)).rows(0, 5).view(5, 4, -1)
    assert torch.equal(solo, a.rows(0, 5).view(5, 8, -1)[:, 4:])
    # steps 3..4 read alone are steps 3..4 of the run
    assert torch.equal(a.rows(3, 2), a.rows(0, 5)[3:])
    s0 = a.take(3), a.take(2)
    assert s0 == (0, 3)


def test_kernel_picks_the_rows_the_torch_path_picks():
    n, inst, T, b, K = 9, 2, 40, 16, 5
    data = SparseFeatures(n_features=n, sparsity=0.6).sample(T=T, n_instances=inst, seed=0)
    lengths = torch.tensor([40, 23])
    model = Bottleneck(n, 3, n_instances=inst, seed=1)
    kernel = model.sgld_kernel(Batch(data, lengths=lengths), b)
    picks = MinibatchRows(7, 43, [0, 1, 2], 1, b, lengths, T, "cpu")
    W0 = torch.cat([p.detach().reshape(3 * inst, -1) for p in model.expand(3).parameters()], 1)
    W0 = W0.contiguous()
    E, P = W0.shape
    noise = torch.randn(K, E, P, generator=torch.Generator().manual_seed(2))
    args = (W0, None, torch.full((E,), 1e-2), torch.full((E,), 20.0), 1.0, noise)
    W1, W2 = W0.clone(), W0.clone()
    l1 = kernel.advance(W1, *args, (picks, 11))
    l2 = kernel.advance(W2, *args, picks.rows(11, K).view(K, E, b))
    assert torch.equal(W1, W2) and torch.equal(l1, l2)
    assert not torch.equal(W1, W0)
