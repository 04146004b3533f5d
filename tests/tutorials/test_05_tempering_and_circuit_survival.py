"""Run tutorial 05 in fast mode in a subprocess and check its key outputs and stated results."""

import re

# the fast-mode results stated at the end of the tutorial
RHO, RATIO = 0.29, 4.3  # bucket: Spearman ρ; median predicted / measured characteristic temp.
VERDICT_BOTTLENECK = "no detectable difference"
VERDICT_MLP = "datum circuits die LATER"


def results(out: str, key: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(f"RESULT {key}")]


def test_tutorial_05_runs(run_tutorial, tmp_path):
    out = run_tutorial("05_tempering_and_circuit_survival.py")
    # the step size is chosen by the bias test, shown with its table
    assert "(chosen)" in out and "step bias" in out
    # the λ̂ lines of the summaries are printed (they were swallowed by a split on the header)
    assert re.search(r"\n  t=1 inst 0: λ̂ = [0-9.]+ ± ", out)
    # the ladder has at least 8 log-spaced temperatures even in fast mode, every cell's health
    # is reported, replica exchange reports each neighbour pair, and the verdicts come from
    # healthy cells
    assert "at 8 temperature(s)" in out
    assert "(temperature, seed) cells healthy" in out
    assert out.count("swap acceptance") >= 7 and "replica exchange, inst 0:" in out
    for family in ("feature", "datum", "neuron"):
        assert f"  {family:8s} seed 1: median characteristic temperature" in out
    assert out.count("datum vs ") == 2 and "95% CI over seeds" in out
    assert "LLC spectrum" in out
    assert "predicted vs measured characteristic temperature: Spearman" in out
    # the stated fast-mode results (recorded at the end of the tutorial), within tolerances
    llc = [float(re.search(r": ([0-9.]+) ±", x).group(1)) for x in results(out, "LLC t=1")]
    assert len(llc) == 2 and abs(llc[0] - 7.39) < 0.15 * 7.39 and abs(llc[1] - 6.39) < 0.15 * 6.39
    (bucket,) = results(out, "bucket Spearman")
    rho = float(re.search(r"Spearman (-?[0-9.]+)", bucket).group(1))
    ratio = float(re.search(r"temperature ([0-9.]+)$", bucket).group(1))
    assert abs(rho - RHO) < 0.3, bucket
    assert RATIO / 2 < ratio < RATIO * 2, bucket
    verdicts = results(out, "verdict")
    assert len(verdicts) == 2
    assert VERDICT_BOTTLENECK in verdicts[0] and VERDICT_MLP in verdicts[1], verdicts
    folder = tmp_path / "tutorial-output" / "05_tempering_and_circuit_survival"
    for png in ("05_calibration.png", "05_trace.png", "05_survival.png", "05_spectrum.png",
                "05_survival_mlp.png", "05_bucket.png"):  # fmt: skip
        assert (folder / png).stat().st_size > 10_000
