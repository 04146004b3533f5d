"""Run tutorial 05 in fast mode in a subprocess and check its key outputs and stated results."""

import re
from pathlib import Path

TEXT = Path(__file__).resolve().parents[2] / "tutorials" / "05_tempering_and_circuit_survival.py"
# the fast-mode results stated at the end of the tutorial (the fast run prints them again to the
# last digit on the development machine; the tolerances allow another machine's float rounding)
RHO, RATIO = 0.22, 4.60  # bucket: Spearman ρ; median predicted / measured characteristic temp.
RHO_TOL = 0.08  # absolute: a seeded run moves a few of 93 circuits' ranks at most
LLC = (7.23, 6.12)  # λ̂ at t = 1 per seed, within 5%
VERDICT_RATIOS = (0.65, 4.6)  # bottleneck, MLP block: datum / feature (neuron) ratio, within 25%
VERDICT_BOTTLENECK = "datum circuits die first"
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
    assert len(llc) == 2 and all(abs(a - b) <= 0.05 * b for a, b in zip(llc, LLC, strict=True))
    (bucket,) = results(out, "bucket Spearman")
    rho = float(re.search(r"Spearman (-?[0-9.]+)", bucket).group(1))
    ratio = float(re.search(r"temperature ([0-9.]+)$", bucket).group(1))
    assert abs(rho - RHO) <= RHO_TOL, bucket
    assert abs(ratio - RATIO) <= 0.25 * RATIO, bucket
    verdicts = results(out, "verdict")
    assert len(verdicts) == 2
    assert VERDICT_BOTTLENECK in verdicts[0] and VERDICT_MLP in verdicts[1], verdicts
    for line, want in zip(verdicts, VERDICT_RATIOS, strict=True):
        got = float(re.search(r": ratio ([0-9.]+),", line).group(1))
        assert abs(got - want) <= 0.25 * want, (line, want)
    # the text states what the test asserts
    text = " ".join(line.lstrip("# ") for line in TEXT.read_text().splitlines())
    stated = f"gave λ̂ = {LLC[0]} ± 0.16 and {LLC[1]} ± 0.11"
    assert (
        stated in text and f"ratio {VERDICT_RATIOS[0]}, MLP-block ratio {VERDICT_RATIOS[1]}" in text
    )
    assert (
        f"Spearman ρ = {RHO} over 93 circuits" in text
        and f"predicted / measured {RATIO:.2f}" in text
    )
    folder = tmp_path / "tutorial-output" / "05_tempering_and_circuit_survival"
    for png in ("05_calibration.png", "05_trace.png", "05_survival.png", "05_spectrum.png",
                "05_survival_mlp.png", "05_bucket.png"):  # fmt: skip
        assert (folder / png).stat().st_size > 10_000
