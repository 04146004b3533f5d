"""Run tutorial 07 in fast mode in a subprocess and check the results it states."""

import json

import pytest


@pytest.mark.slow
def test_tutorial_07_runs(run_tutorial, tmp_path):
    out = run_tutorial("07_toy_to_transformer.py")
    folder = tmp_path / "tutorial-output" / "07_toy_to_transformer"
    r = json.loads((folder / "07_results.json").read_text())
    # the transformer learns the rule (held-out facts) and memorises the planted facts
    assert r["planted_train_acc"] == 1.0 and r["rule_train_acc"] == 1.0
    assert min(r["held_out_acc"]) >= 0.9
    # where: the reader names neurons for most planted facts; silencing them removes the fact
    # and keeps the rule facts
    assert r["planted_with_slots"] >= 12
    assert r["planted_removed"] == r["planted_with_slots"]
    assert r["rule_kept_mean"] >= 0.9
    # which facts look memorised (the memorised probe, against the planted facts): the best
    # detector finds them with AUROC >= 0.9 (mean over the 3 instances; >= 0.85 in each), and D*
    # at the residual stream does in every instance
    assert r["best_auroc"] >= 0.9 and min(r["best_auroc_per_instance"]) >= 0.85
    assert f"best detector: {r['best_detector']}, AUROC {r['best_auroc']:.2f}" in out
    assert min(r["auroc_dstar_resid"]) >= 0.9
    assert r["dstar_planted"] > 1.5 * r["dstar_rule"]
    assert {"train_loss", "grad_norm", "dstar", "tempering_rise"} <= set(r["auroc"])
    # tempering (γ = 300): every cell healthy, and planted facts are noised out more often than
    # rule facts at the lowest temperature and on average over the ladder
    assert r["healthy_cells"][0] == r["healthy_cells"][1]
    assert r["noised_out_planted"][0] > r["noised_out_rule"][0] + 0.2
    assert sum(r["noised_out_planted"]) > sum(r["noised_out_rule"])
    # capacity: the wider model stores more facts, and no model beats 2 bits per parameter
    cap = r["capacity"]
    assert sum(cap[-1]["facts_stored"]) > sum(cap[0]["facts_stored"])
    assert all(b <= 2.0 for row in cap for b in row["bits_per_param"])
    for png in (
        "07_attribution.png",
        "07_roc.png",
        "07_dstar.png",
        "07_survival.png",
        "07_capacity.png",
    ):
        assert (folder / png).stat().st_size > 10_000
