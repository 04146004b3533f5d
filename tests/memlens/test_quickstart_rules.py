"""The quickstart's regime verdicts (the rules the README states) and each bundle's trivial
baseline (the best constant prediction), against hand-computed cases and closed forms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import memlens as ml
from memlens.app.quickstart_report import verdict
from memlens.registry import get_bundle

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


# ---------------------------------------------------------------- regime verdicts


def test_readme_states_the_rules_checked_here():
    assert (
        "Memorising: train loss ≤ 10% of the baseline and test ≥ 3× train; generalising: test "
        "≤ 1.1× train and ≤ 95% of the baseline." in README
    )


@pytest.mark.parametrize(
    "train,test,base,holds",
    [
        (0.09, 0.5, 1.0, True),  # 9% of the baseline, test 5.6x train
        (0.0999, 0.2998, 1.0, True),  # just inside both limits
        (0.11, 0.5, 1.0, False),  # 11% of the baseline: not memorised
        (0.05, 0.149, 1.0, False),  # test 2.98x train: no gap, not memorising
        (1e-8, 0.9, 1.0, True),
        (0.2, 1.0, 4.0, True),  # 5% of a larger baseline
    ],
)
def test_memorising_verdict(train, test, base, holds):
    ok, words = verdict("memorising", train, test, base, base)
    assert ok is holds
    assert words.startswith("yes (" if holds else "NO (")
    assert f"train {train / base:.1%} of baseline" in words


@pytest.mark.parametrize(
    "train,test,base_test,holds",
    [
        (0.50, 0.52, 1.0, True),  # 1.04x train, 52% of the baseline
        (0.50, 0.55, 1.0, True),  # 1.1x train exactly
        (0.50, 0.56, 1.0, False),  # 1.12x train: a gap, not generalising
        (0.90, 0.95, 1.0, True),  # 95% of the baseline exactly
        (0.90, 0.96, 1.0, False),  # 96% of the baseline: learned nothing
        (0.90, 0.96, 2.0, True),  # 48% of a larger baseline
    ],
)
def test_generalising_verdict(train, test, base_test, holds):
    ok, words = verdict("generalising", train, test, 1.0, base_test)
    assert ok is holds
    assert words.startswith("yes (" if holds else "NO (")
    assert f"test {test / base_test:.0%} of baseline" in words


# ---------------------------------------------------------------- baselines (closed forms)


def _squared_error_batch(setting: str, T: int = 300):
    b = get_bundle(setting)
    spec = {**b.preset("smoke")["task"], "T": T, "seed": 4}
    train, _ = b.data(spec)
    return b, train


@pytest.mark.parametrize("setting", ["bottleneck", "mlp"])
def test_squared_error_baseline_is_the_total_variance(setting):
    """Best constant under squared error summed over outputs: each output's mean, whose loss is
    the sum of the outputs' variances (numpy, population variance), per instance."""
    b, batch = _squared_error_batch(setting)
    y = batch.target.double().numpy()  # [T, inst, out]
    want = y.var(axis=0).sum(-1)  # [inst]
    got = np.asarray(b.baseline(batch), dtype=float)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # and no other constant does better: the mean is the minimiser
    g = np.random.default_rng(0)
    for _ in range(5):
        c = y.mean(0) + 0.05 * g.standard_normal(y.shape[1:])
        assert (((y - c) ** 2).sum(-1).mean(0) > got).all()


def test_cross_entropy_baseline_is_the_label_entropy_by_hand():
    """Labels 0, 0, 1, 3: p = (1/2, 1/4, 0, 1/4), entropy 1.5 ln 2 nats. Instance 1 has one
    label only: entropy 0."""
    b = get_bundle("unembed")
    labels = torch.tensor([[0, 2], [0, 2], [1, 2], [3, 2]])  # [T, inst]
    batch = ml.Batch(torch.zeros(4, 2, 3), labels)
    got = np.asarray(b.baseline(batch), dtype=float)
    np.testing.assert_allclose(got, [1.5 * np.log(2), 0.0], atol=1e-6)


def test_cross_entropy_baseline_is_the_best_constant_logits():
    """On a real task's labels: no constant logit vector (fitted by gradient descent from zero)
    has a lower mean cross-entropy than the baseline, and the fitted one comes within 1e-3."""
    b = get_bundle("unembed")
    spec = {**b.preset("smoke")["task"], "T": 200, "seed": 5}
    batch, _ = b.data(spec)
    y = batch.targets.long()  # [T, inst]
    base = torch.as_tensor(np.asarray(b.baseline(batch), dtype=float))
    V = int(y.max()) + 1
    logits = torch.zeros(y.shape[1], V, dtype=torch.float64, requires_grad=True)  # [inst, V]
    opt = torch.optim.Adam([logits], lr=0.1)
    for _ in range(1500):
        # the mean cross-entropy of each instance's constant prediction, from the labels
        ce = -torch.gather(torch.log_softmax(logits, -1), 1, y.T).mean(1)
        opt.zero_grad()
        ce.sum().backward()
        opt.step()
    ce = ce.detach()
    assert (ce >= base - 1e-6).all(), (ce, base)
    assert torch.allclose(ce, base, atol=1e-3), (ce, base)
