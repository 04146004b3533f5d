"""The sampler's diagnostics run over every cell at once: the batched R-hat and ESS must give,
bit for bit, what the textbook estimators give cell by cell (written out here in scalar form),
so batching never moves a health flag or a standard error."""

from __future__ import annotations

import math

import numpy as np
import pytest

from memlens.sampling.diagnostics import _ess_many, _split_rhat_many


def rhat_reference(x: np.ndarray) -> float:
    half = x.shape[1] // 2
    if x.shape[0] < 1 or half < 2:
        return float("nan")
    xs = np.concatenate([x[:, :half], x[:, x.shape[1] - half :]], axis=0)
    w = xs.var(axis=1, ddof=1).mean()
    b = half * xs.mean(axis=1).var(ddof=1)
    if not np.isfinite(w) or w <= 0:
        return float("nan")
    return float(np.sqrt(((half - 1) / half * w + b / half) / w))


def ess_reference(x: np.ndarray) -> float:
    half = x.shape[1] // 2
    if half < 4:
        return float("nan")
    x = np.concatenate([x[:, :half], x[:, x.shape[1] - half :]], axis=0)
    m, n = x.shape
    xc = x - x.mean(axis=1, keepdims=True)
    f = np.fft.rfft(xc, n=2 * n, axis=1)
    acov = np.fft.irfft(f * np.conj(f), axis=1)[:, :n] / n
    w = (acov[:, 0] * n / (n - 1)).mean()
    if not np.isfinite(w) or w <= 0:
        return float("nan")
    var_plus = w * (n - 1) / n + (x.mean(axis=1).var(ddof=1) if m > 1 else 0.0)
    rho = 1.0 - (w - acov.mean(axis=0)) / var_plus
    rho[0] = 1.0
    total, prev = 0.0, np.inf
    for p in rho[: 2 * (n // 2)].reshape(-1, 2).sum(axis=1):
        if p <= 0:
            break
        p = min(p, prev)
        total += p
        prev = p
    return float(m * n / max(-1.0 + 2.0 * total, 1.0 / math.log10(max(m * n, 10))))


def cells(rng, n_cells, chains, draws):
    """Chains of every kind a run produces: white noise, slow AR(1) (long Geyer sums), random
    walks (ESS at its floor), chains stuck at different levels (R-hat >> 1), constant chains."""
    out = np.empty((n_cells, chains, draws))
    for c in range(n_cells):
        kind = c % 5
        z = rng.standard_normal((chains, draws))
        if kind == 1:
            for t in range(1, draws):
                z[:, t] = 0.95 * z[:, t - 1] + z[:, t]
        elif kind == 2:
            z = z.cumsum(1)
        elif kind == 3:
            z = z + 5 * rng.standard_normal((chains, 1))
        elif kind == 4:
            z = np.full_like(z, 0.3)
        out[c] = z
    return out


@pytest.mark.parametrize("chains,draws", [(8, 200), (4, 40), (1, 60), (3, 9), (2, 7)])
def test_batched_diagnostics_equal_cell_by_cell(chains, draws):
    x = cells(np.random.default_rng(chains * 1000 + draws), 25, chains, draws)
    ess, rhat = _ess_many(x), _split_rhat_many(x)
    for c in range(len(x)):
        for got, want in ((ess[c], ess_reference(x[c])), (rhat[c], rhat_reference(x[c]))):
            assert (math.isnan(got) and math.isnan(want)) or got == want, (c, got, want)
    # and the estimators mean something: white noise has ESS near its size, stuck chains R-hat >> 1
    if chains == 8 and draws == 200:
        assert 0.7 * chains * draws < ess[0] < 1.3 * chains * draws
        assert rhat[3] > 1.5 and abs(rhat[0] - 1) < 0.05
