"""Circuit survival at the temperature extremes, on small trained models; survival only from
healthy chains; the streaming-probe protocol."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import memlens
from memlens.data import SparseFeatures
from probes.characteristic import characteristic_temperature
from probes.survival import CircuitSurvivalProbe


@pytest.fixture(scope="module")
def trained():
    feats = SparseFeatures(n_features=8, sparsity=0.7)
    train = feats.sample(T=16, n_instances=2, seed=0)
    from toy_models import Bottleneck

    model = Bottleneck(n_features=8, d_hidden=3, n_instances=2, seed=0)
    memlens.train(model, train, steps=600, lr=3e-2, progress=False)
    return model, train


def test_every_circuit_survives_cold_and_none_survives_hot(trained):
    model, train = trained
    # nβ/t = 1e6 (cold: the posterior is a point) and 1e-3 (hot: only the localisation, γ = 1,
    # holds the weights, so they are w* + O(1) noise); steps sized to each temperature
    s = _extremes(model, train)
    n_circ = 8 + 16
    assert s.survival.shape == (2, 2, n_circ) and s.names[0] == "feature:0"
    cold, hot = s.survival[0][s.active], s.survival[1][s.active]
    assert s.active.sum() > 10
    assert cold.min() > 0.95, cold.min()
    assert hot.max() < s.threshold, hot.max()
    assert not s.noised_out[0].any() and s.noised_out[1][s.active].all()
    # every active circuit dies between the two temperatures
    tc = s.characteristic_temperature[s.active]
    assert ((tc > 1e-4) & (tc < 1e5)).all()
    assert "noised out" in s.summary() and s.plot() is not None
    assert set(s.to_dict()) >= {"survival", "noised_out", "characteristic_temperature", "healthy"}
    # per-chain characteristic temperatures (for confidence intervals) bracket the pooled one
    per_chain = s.characteristic_per_chain[:, s.active]
    assert per_chain.shape[0] == 2 and torch.isfinite(per_chain).all()


def test_characteristic_temperature_interpolates_in_log_t():
    temps = torch.tensor([1.0, 10.0, 100.0])
    surv = torch.tensor([[1.0, 0.9, 0.2], [0.4, 0.1, 0.0], [1.0, 1.0, 0.9]])[None]  # [1, 3, 3]
    surv = surv.permute(2, 0, 1)  # [temp, inst=1, circuit=3]
    tc, censored = characteristic_temperature(temps, surv, 0.5)
    tc, censored = tc[0], censored[0]
    # circuit 0 crosses 0.5 between t=10 (0.9) and t=100 (0.2): log10 t = 1 + 0.4/0.7
    assert torch.isclose(tc[0], torch.tensor(10 ** (1 + 0.4 / 0.7), dtype=torch.float64))
    assert tc[1] == 1.0 and censored.tolist() == [False, True, False]  # dead at the lowest t
    assert torch.isinf(tc[2])  # never dies


def test_bad_arguments_and_misuse(trained):
    model, train = trained
    with pytest.raises(ValueError, match="threshold"):
        CircuitSurvivalProbe(threshold=1.5)
    with pytest.raises((TypeError, ValueError)):
        with memlens.probing(model, "survival"):  # it streams over draws; it is no hook probe
            pass
    with pytest.raises(ValueError, match="memlens.temper"):
        CircuitSurvivalProbe().run(model, train)
    with pytest.raises(ValueError, match="no result"):
        CircuitSurvivalProbe().result()
    with pytest.raises(ValueError, match="threshold"):  # arguments by name are validated too
        memlens.temper(model, train, probes=[("survival", {"threshold": 2.0})], step_size=1e-4)


def test_a_temperature_whose_chains_all_diverged_has_no_survival(trained):
    model, train = trained
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = memlens.temper(
            model,
            train,
            [1e-4, 1.0],
            nbeta=100.0,
            chains=2,
            draws=40,
            step_size=[1e-8, 1e3],  # the second rung blows up
            disperse=False,  # the cold rung's tiny step cannot relax a dispersed start
            seed=0,
            probes=[("survival", {"threshold": 0.4})],
            progress=False,
        )
    s = res.probe("survival")
    assert s.threshold == 0.4  # the argument given by name reached the probe
    assert bool(res.diagnostics.diverged[1].all())
    assert torch.isnan(s.survival[1]).all() and not s.noised_out[1].any()
    assert s.chains_used[1].tolist() == [0, 0] and s.chains_used[0].tolist() == [2, 2]
    assert not s.healthy[1].any()
    text = s.summary()
    line = next(x for x in text.splitlines() if x.strip().startswith("t=1:"))
    assert "no healthy chains" in line and "noised out none" not in line
    # the cold rung still measures: every active circuit survives there
    assert s.survival[0][s.active].min() > 0.95
    # characteristic temperatures come from healthy rungs only: no circuit "dies" at t = 1
    assert not torch.isclose(s.characteristic_temperature[s.active], torch.tensor(1.0)).any()


def _extremes(model, train):
    """Temper at nβ/t = 1e6 (cold) and 1e-3 (hot: only the γ = 0.1 localisation holds w, a spread
    of 1/√γ ≈ 3 per weight, wider than a trained margin: at γ = 1 the final layer's widest
    margins on the default data survive the hot rung, 0.71 of the draws), with
    explicit steps sized to each temperature. These chains are far too short to pass the default
    health thresholds (characteristic temperatures are read from healthy cells only), so the
    thresholds are relaxed here: the extremes, not the sampler, are under test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _temper_extremes(model, train)


def _temper_extremes(model, train):
    return memlens.temper(
        model,
        train,
        [1e-4, 1e5],
        nbeta=100.0,
        chains=2,
        draws=80,
        burnin=30,
        step_size=[1e-8, 0.5],  # the hot rung relaxes at ε·γ/2 = 0.025 per step, as at γ = 1
        localization=0.1,
        min_ess=1.0,
        max_rhat=100.0,
        max_diffusion=1e9,
        # chains start at w* and stay on their rung: at ε = 1e-8 a dispersed start (or a state
        # swapped in from the hot rung) would never relax, and the extremes are under test
        disperse=False,
        swap_every=0,
        seed=0,
        probes=["survival"],
        progress=False,
    ).probe("survival")


def test_mlp_block_neuron_and_datum_circuits_at_the_extremes():
    from toy_models import MLPBlock, MLPTask

    train = MLPTask(SparseFeatures(n_features=8, sparsity=0.7), d_model=4, n_instances=2).sample(
        T=12, seed=0
    )
    model = MLPBlock(d_model=4, d_mlp=6, d_out=8, n_instances=2, seed=0)
    memlens.train(model, train, steps=400, lr=3e-2, progress=False)
    s = _extremes(model, train)
    assert s.survival.shape == (2, 2, 6 + 12)
    fams = set(s.families)
    assert fams == {"neuron", "datum"}
    for fam in fams:
        mask = torch.tensor([f == fam for f in s.families])[None] & s.active
        assert mask.sum() > 4, fam  # both families have live circuits at w*
        assert s.survival[0][mask].min() > 0.95, (fam, s.survival[0][mask].min())
        assert s.survival[1][mask].max() < s.threshold, (fam, s.survival[1][mask].max())


def test_unembed_datum_circuits_at_the_extremes():
    from toy_models import Unembed, UnembedTask

    task = UnembedTask(
        SparseFeatures(n_features=8, sparsity=0.7),
        d_model=4,
        n_instances=2,
        labels="random",
    )
    train = task.sample(T=12, seed=0)
    model = Unembed(d_model=4, d_vocab=task.d_vocab, n_instances=2, seed=0)
    memlens.train(model, train, steps=400, lr=3e-2, progress=False)
    s = _extremes(model, train)
    assert s.survival.shape == (2, 2, 12) and set(s.families) == {"datum"}
    assert s.active.sum() > 10  # most random labels are memorised (positive margin) at w*
    assert s.survival[0][s.active].min() > 0.95
    assert s.survival[1][s.active].max() < s.threshold
    assert not s.noised_out[0].any() and s.noised_out[1][s.active].all()


def test_family_comparison_verdicts():
    from probes.characteristic import compare_ratios

    first = compare_ratios("datum", "feature", [0.5, 0.6, 0.55], [0.4, 0.7])
    # geometric mean of 0.5, 0.6, 0.55, and a t-interval (2 dof) that stays below 1
    assert first["geometric_mean"] == pytest.approx((0.5 * 0.6 * 0.55) ** (1 / 3))
    assert first["ci95"][1] < 1 and "die first" in first["verdict"]
    assert first["chain_range"] == pytest.approx((0.4, 0.7))
    later = compare_ratios("datum", "feature", [3.0, 3.3, 2.9], [])
    assert "LATER" in later["verdict"]
    same = compare_ratios("datum", "feature", [0.9, 1.1], [])
    assert "no detectable difference" in same["verdict"]
    assert "cannot tell" in compare_ratios("a", "b", [math.nan], [])["verdict"]
    # two seeds where the late family survives the whole ladder: direction without size
    mixed = compare_ratios("datum", "neuron", [8.0, 3.0, math.inf, math.inf], [])
    assert mixed["seeds_later"] == 4 and "LATER in every seed" in mixed["verdict"]
    assert mixed["geometric_mean"] == pytest.approx(math.sqrt(24.0))
    # the two censored seeds leave the interval unbounded above, whatever the finite two say
    assert mixed["ci95"][1] == math.inf and mixed["ci95"][0] < 8.0
    # a seed where the early family outlives the ladder contradicts "die first"
    split = compare_ratios("datum", "feature", [0.5, 0.6, 0.55, math.inf], [])
    assert split["ci95"][1] == math.inf and "die first" not in split["verdict"]
