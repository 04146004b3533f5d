"""The issue's "Must show" targets, through the default path: ``memlens.temper(model, data,
temperatures, probes=["survival"])`` with every sampler setting at its default, scored against
exactly solvable models (benchmarks/tempering_truth.py holds the models and the scoring; the
exact answers come from toy_models.switches by quadrature and Aoyagi's formula)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import tempering_truth as tt  # noqa: E402


@pytest.mark.slow
def test_one_circuit_per_instance():
    sc = tt.score_switches(tt.switch_models()["switches-1"])
    ok = sc["result"].health.ok
    assert sc["healthy"] >= 0.9, sc["result"].summary()
    assert sc["llc_err_healthy"] <= 0.10, sc["llc_err_healthy"]
    assert sc["tc_factor"] <= 1.5, sc["tc_ratio"]
    assert sc["false_green"] == 0.0, (ok & ~sc["right"]).nonzero().tolist()
    assert sc["false_red"] <= 0.2


@pytest.mark.slow
def test_all_circuits_in_one_instance_gains_spanning_1000x():
    model = tt.switch_models()["switches-8"]
    gains = model.gain[0]
    assert float(gains.max() / gains.min()) >= 1000
    sc = tt.score_switches(model)
    assert sc["healthy"] >= 0.8, sc["result"].summary()
    assert sc["llc_err_healthy"] <= 0.15, sc["llc_err_healthy"]
    assert sc["tc_factor"] <= 2.0, sc["tc_ratio"]
    assert sc["spearman"] == 1.0  # characteristic temperatures in the exact order
    assert sc["false_green"] == 0.0
    assert sc["false_red"] <= 0.2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dln-full", "dln-r1"])
def test_deep_linear_networks_match_aoyagi(name):
    model, data, exact = tt.llc_models()[name]
    sc = tt.score_llc(model, data, exact)
    assert sc["healthy"], sc["result"].health.describe(0, 0)
    assert abs(sc["err"]) <= 0.15, (sc["llc"], sc["exact"])
