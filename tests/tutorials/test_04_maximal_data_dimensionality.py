"""Tutorial 04 runs top to bottom in fast mode, writes its figures and prints what it claims:
the mean D* is rank/T, the spread grows with T, a single outlier gets no direction while a
repeated one does, and on planted memories D* at the representation fails where tempering works."""

import re
from pathlib import Path

import pytest

TEXT = Path(__file__).resolve().parents[2] / "tutorials" / "04_maximal_data_dimensionality.py"
TEXT = TEXT.read_text()
# What each mode's run prints, as the tutorial's text states it: detectors' AUROCs for the planted
# points, the outlier / typical D* ratio at R = 1 and R = 20, and max/median D* at the largest T.
STATED = {
    "fast": {
        "auroc": {"dstar": 0.76, "dstar:hook_out": 1.00, "tempering_rise": 0.99,
                  "train_loss": 0.29, "grad_norm": 0.28},
        "ratio": (0.085, 1.8e3),
        "spread": 30.4,
    },
    "default": {
        "auroc": {"dstar": 0.42, "dstar:hook_pre": 0.44, "dstar:hook_out": 0.61,
                  "tempering_variance": 0.97, "tempering_rise": 0.96, "train_loss": 0.63,
                  "grad_norm": 0.16},
        "ratio": (0.016, 1.9e4),
        "spread": 302.3,
    },
}  # fmt: skip
AUROC_TOL = 0.08  # absolute; a ratio within 1.5x; the spread within 25%


def assert_stated(stdout: str, mode: str) -> None:
    want = STATED[mode]
    au = {d: float(a) for d, a in re.findall(r"AUROC (\S+)\s+([0-9.]+)", stdout)}
    for d, w in want["auroc"].items():
        assert abs(au[d] - w) <= AUROC_TOL, f"{mode}: AUROC {d} printed {au[d]}, text states {w}"
        assert f"{w:.2f}" in TEXT, (mode, d, w)
    ratios = [float(x) for x in re.findall(r"ratio: ([0-9.e+-]+)x", stdout)]
    for got, w in zip(ratios, want["ratio"], strict=True):
        assert w / 1.5 <= got <= w * 1.5, f"{mode}: outlier ratio printed {ratios}, text {want}"
    rows = [ln.split() for ln in stdout.splitlines() if ln.split()[:1] and ln.split()[0].isdigit()]
    spread = float(rows[-1][4])
    assert abs(spread / want["spread"] - 1) <= 0.25, f"{mode}: max/median D* printed {spread}"
    assert f"{want['spread']:.0f}" in TEXT or f"{want['spread']:.1f}" in TEXT, want["spread"]


def test_tutorial_04_runs(run_tutorial, tmp_path):
    stdout = run_tutorial("04_maximal_data_dimensionality.py")
    out = tmp_path / "tutorial-output" / "04_maximal_data_dimensionality"
    for f in (
        "04_dstar_by_T.png",
        "04_dimensionality.png",
        "04_outliers.png",
        "04_planted_roc.png",
    ):
        assert (out / f).stat().st_size > 10_000, f
    rows = [ln.split() for ln in stdout.splitlines() if ln.split()[:1] and ln.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == [4, 10, 25, 60, 150, 400]
    for r in rows:
        # sum of D* is rank(H) = m = 2 for every T (leverage scores), so mean D* = m/T
        assert abs(float(r[3]) - 2.0) < 1e-2 and abs(float(r[1]) - float(r[2])) < 1e-3
    # the spread grows with T
    assert float(rows[0][4]) < 2 and float(rows[-1][4]) > 5 * float(rows[0][4])
    ratios = [float(x) for x in re.findall(r"ratio: ([0-9.e+-]+)x", stdout)]
    assert len(ratios) == 2 and ratios[0] < 1 and ratios[1] > 1000  # R = 1: none; R = 20: own
    au = {d: float(a) for d, a in re.findall(r"AUROC (\S+)\s+([0-9.]+)", stdout)}
    assert au["dstar:hook_in"] > 0.95  # the data: private features are rare by construction
    assert au["dstar:hook_out"] > 0.95  # the output: the model reproduced the private features
    # D* at the representation: well below tempering, which finds them
    assert au["tempering_rise"] >= 0.9 and au["dstar"] <= au["tempering_rise"] - 0.15
    assert au["train_loss"] < 0.5 and au["grad_norm"] < 0.5  # the baselines point the wrong way
    fitted = re.findall(r"train loss ([0-9.]+) vs ([0-9.]+) on fresh controls", stdout)
    assert fitted and all(float(a) < 0.5 * float(b) for a, b in fitted)
    assert_stated(stdout, "fast")


@pytest.mark.slow
def test_tutorial_04_default_mode_prints_what_its_text_states(run_tutorial):
    """The default run (what a reader runs; about 25 s) prints the numbers the text states."""
    assert_stated(run_tutorial("04_maximal_data_dimensionality.py", fast=False), "default")
