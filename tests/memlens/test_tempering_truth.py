"""The issue's "Must show" targets, through the default path: ``memlens.temper(model, data,
temperatures, probes=["survival"])`` with every sampler setting at its default, scored against
exactly solvable models (benchmarks/tempering_truth.py holds the models and the scoring; the
exact answers come from toy_models.switches by quadrature and Aoyagi's formula)."""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import tempering_truth as tt  # noqa: E402


@functools.cache
def scored(name: str) -> dict:
    """The scorecard of one solvable switch model, computed once per test session."""
    return tt.score_switches(tt.switch_models()[name])


@pytest.mark.slow
def test_one_circuit_per_instance():
    sc = scored("switches-1")
    assert sc["healthy"] >= 0.9, sc["result"].summary()
    assert sc["tc_factor"] <= 1.5, sc["tc_ratio"]


@pytest.mark.slow
def test_one_circuit_per_instance_flags():
    sc = scored("switches-1")
    ok = sc["result"].health.ok
    assert sc["false_green"] == 0.0, (ok & ~sc["right"]).nonzero().tolist()
    assert sc["false_red"] <= 0.2


@pytest.mark.slow
def test_one_circuit_per_instance_llc_within_10_percent():
    """Met since unset ``draws`` grow until λ̂'s standard error is 3% (up to 1600 draws): seeds
    0-3 give 6.6%, 9.0%, 7.4% and 4.9% (python benchmarks/tempering_truth.py --models switches-1
    --seed N); with the cap at 800, seed 1 gave 11.8%."""
    sc = scored("switches-1")
    assert sc["llc_err_healthy"] <= 0.10
    assert sc["result"].config.draws > 200  # the transition cells asked for more draws


@pytest.mark.slow
def test_all_circuits_in_one_instance_gains_spanning_1000x():
    model = tt.switch_models()["switches-8"]
    gains = model.gain[0]
    assert float(gains.max() / gains.min()) >= 1000
    sc = scored("switches-8")
    assert sc["healthy"] >= 0.8, sc["result"].summary()
    assert sc["llc_err_healthy"] <= 0.15, sc["llc_err_healthy"]
    assert sc["tc_factor"] <= 2.0, sc["tc_ratio"]
    assert sc["spearman"] == 1.0  # characteristic temperatures in the exact order
    assert sc["false_green"] == 0.0


@pytest.mark.slow
def test_all_circuits_in_one_instance_false_red():
    assert scored("switches-8")["false_red"] <= 0.2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dln-full", "dln-r1", "dln-h3r1"])
def test_deep_linear_networks_match_aoyagi(name):
    model, data, exact = tt.llc_models()[name]
    sc = tt.score_llc(model, data, exact)
    assert sc["healthy"], sc["result"].health.describe(0, 0)
    assert abs(sc["err"]) <= 0.15, (sc["llc"], sc["exact"])


@pytest.mark.slow
def test_a_budget_too_small_to_decide_is_flagged_and_names_one_that_is_not():
    """3 -> 3 -> 3 at true rank 1 with max_steps = 1500: the calibration cannot decide its step
    within the budget, so the cell is flagged (not silently trusted), the calibration names the
    max_steps that would let it go on, and with that budget the cell is healthy and within 15%."""
    model, data, exact = tt.llc_models()["dln-h3r1"]
    short = tt.score_llc(model, data, exact, max_steps=1500)
    assert not short["healthy"]
    advice = re.search(r"max_steps = (\d+) or more", short["result"].calibration.summary())
    assert advice and int(advice.group(1)) > 1500
    enough = tt.score_llc(model, data, exact, max_steps=int(advice.group(1)))
    assert enough["healthy"], enough["result"].health.describe(0, 0)
    assert abs(enough["err"]) <= 0.15, (enough["llc"], enough["exact"])
