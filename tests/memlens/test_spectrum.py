"""Reading λ̂(t): flat stretches are runs constant within their errors (a χ² fit), not a rule on
neighbouring differences. Synthetic curves with known structure."""

from __future__ import annotations

import pytest
import torch

from memlens.sampling import fit_spectrum


def noisy(values, se, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.tensor(values, dtype=torch.float64)
    return v + se * torch.randn(len(v), generator=g, dtype=torch.float64)


def test_known_steps_give_their_stretches_and_jumps():
    t = torch.logspace(-2, 3, 16)
    truth = torch.where(t < 0.1, 12.0, torch.where(t < 10, 6.0, 1.0))
    se = torch.full((16,), 0.2)
    spec = fit_spectrum(t, noisy(truth.tolist(), 0.2), se)
    assert len(spec.plateaus) == 3 and len(spec.jumps) == 2 and not spec.steady
    levels = [p["llc"] for p in spec.plateaus]
    assert levels == pytest.approx([12.0, 6.0, 1.0], abs=0.3)
    # each stretch covers exactly the temperatures of its level
    for p, lo, hi in zip(spec.plateaus, [0.0, 0.1, 10.0], [0.1, 10.0, 1e4], strict=True):
        inside = t[(t >= lo) & (t < hi)]
        assert p["t_start"] == pytest.approx(float(inside.min()), rel=1e-5)
        assert p["t_end"] == pytest.approx(float(inside.max()), rel=1e-5)
    assert [j["delta"] for j in spec.jumps] == pytest.approx([-6.0, -5.0], abs=0.4)
    assert spec.jumps[0]["t_low"] < 0.1 <= spec.jumps[0]["t_high"]
    assert spec.jumps[1]["t_low"] < 10 <= spec.jumps[1]["t_high"]
    assert "3 flat stretch(es)" in spec.summary() and spec.plot() is not None


def test_a_steady_decline_has_no_flat_stretch_and_no_jumps():
    # the curve: λ̂ falls from ~19.6 to ~0.85 over t in [0.46, 1000] (a power law)
    t = torch.logspace(-0.33, 3, 12)
    truth = 19.6 * (t / t[0]) ** (-0.41)
    spec = fit_spectrum(t, noisy(truth.tolist(), 0.05, seed=1), torch.full((12,), 0.05))
    assert float(truth[-1]) == pytest.approx(0.85, abs=0.05)
    assert spec.plateaus == [] and spec.jumps == []
    assert len(spec.steady) == 1 and spec.steady[0]["change"] < -15
    assert "no flat stretch" in spec.summary()


def test_a_single_point_is_not_a_stretch():
    t = torch.logspace(0, 2, 7)
    lam = torch.tensor([5.0, 5.0, 5.0, 9.0, 2.0, 2.0, 2.0])
    spec = fit_spectrum(t, lam, torch.full((7,), 0.1))
    assert [p["points"] for p in spec.plateaus] == [3, 3]  # the lone 9 is a transition
    assert len(spec.jumps) == 1 and spec.jumps[0]["delta"] == pytest.approx(-3.0)


def test_a_constant_curve_within_its_errors_is_one_stretch():
    t = torch.logspace(-1, 2, 10)
    spec = fit_spectrum(t, noisy([3.0] * 10, 0.3, seed=3), torch.full((10,), 0.3))
    assert len(spec.plateaus) == 1 and spec.plateaus[0]["points"] == 10
    assert spec.plateaus[0]["llc"] == pytest.approx(3.0, abs=0.3)


def test_unhealthy_points_are_left_out_and_marked():
    t = torch.logspace(0, 2, 6)
    lam = torch.tensor([4.0, 4.0, 40.0, 4.0, 4.0, 4.0])  # an unconverged outlier at t[2]
    healthy = torch.tensor([True, True, False, True, True, True])
    spec = fit_spectrum(t, lam, torch.full((6,), 0.1), healthy, reasons=["t=2.5: R-hat 1.8"])
    assert len(spec.plateaus) == 1 and spec.plateaus[0]["points"] == 5
    assert spec.used.tolist() == healthy.tolist()
    assert "R-hat 1.8" in spec.summary() and "1 unhealthy" in spec.summary()
    # without the health flag the outlier splits the curve
    assert len(fit_spectrum(t, lam, torch.full((6,), 0.1)).plateaus) == 2
