"""Run tutorial 05 in fast mode in a subprocess and check its key outputs."""


def test_tutorial_05_runs(run_tutorial, tmp_path):
    out = run_tutorial("05_tempering_and_circuit_survival.py")
    # the step size is chosen by the bias test, shown with its table
    assert "(chosen)" in out and "step bias" in out
    # the ladder has at least 8 log-spaced temperatures even in fast mode, every cell's health
    # is reported, and the verdicts come from healthy cells
    assert "at 8 temperature(s)" in out
    assert "(temperature, seed) cells healthy" in out
    for family in ("feature", "datum", "neuron"):
        assert f"  {family:8s} seed 1: median characteristic temperature" in out
    assert out.count("datum vs ") == 2 and "95% CI over seeds" in out
    assert "LLC spectrum" in out
    assert "predicted vs measured characteristic temperature: Spearman" in out
    for png in ("05_calibration.png", "05_trace.png", "05_survival.png", "05_spectrum.png",
                "05_survival_mlp.png", "05_bucket.png"):  # fmt: skip
        assert (tmp_path / png).stat().st_size > 10_000
