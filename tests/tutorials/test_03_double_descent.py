"""Tutorial 03 runs top to bottom in fast mode and shows what its text says: memorised at the
smallest T, generalising at the largest, and an interior test-loss peak above both ends."""

import re
from pathlib import Path

import pytest

THRESHOLD = 1.1  # fast mode's peak over each end (recorded: 1.19x and 1.42x at T = 50)
TEXT = (Path(__file__).resolve().parents[2] / "tutorials" / "03_double_descent.py").read_text()
# each mode's peak as the tutorial's text states it: (T, x the small-T end, x the large-T end)
STATED = {"fast": (50, 1.19, 1.42), "default": (348, 2.23, 2.56)}
RATIO_RTOL = 0.10


def peak_line(stdout: str) -> tuple[int, float, float]:
    m = re.search(
        r"test-loss peak at T = (\d+): [\d.]+, ([\d.]+)x the small-T end \(([\d.]+)\) and "
        r"([\d.]+)x the large-T end \(([\d.]+)\)",
        stdout,
    )
    assert m, "no interior peak printed: " + stdout[-1500:]
    return int(m.group(1)), float(m.group(2)), float(m.group(4))


def assert_stated(stdout: str, mode: str) -> None:
    T, small, large = STATED[mode]
    got = peak_line(stdout)
    assert got[0] == T and got[1:] == pytest.approx((small, large), rel=RATIO_RTOL), (mode, got)
    text = " ".join(TEXT.split())
    assert f"peak at T = {T}, {small}x the small-T end and {large}x" in text or (
        f"peak at T = {T}, {small}x and {large}x" in text
    ), (mode, STATED[mode])


def table(stdout: str) -> dict[int, list[float]]:
    """T -> [train, test, coverage, mean D*, m/T] from the printed table."""
    rows = re.findall(r"^\s*(\d+)((?:\s+[\d.]+){5})$", stdout, re.M)
    return {int(T): [float(v) for v in rest.split()] for T, rest in rows}


def test_tutorial_03_runs(run_tutorial, tmp_path):
    stdout = run_tutorial("03_double_descent.py")
    assert "16 cells in" in stdout
    t = table(stdout)
    Ts = sorted(t)
    assert Ts == [3, 6, 12, 25, 50, 100, 200, 400], Ts
    assert t[3][0] < 1e-3  # the smallest T is memorised (train loss ~ 0) ...
    assert t[400][1] <= 1.1 * t[400][0]  # ... the largest generalises (test ~ train)
    T_peak, r_small, r_large = peak_line(stdout)
    assert Ts[0] < T_peak < Ts[-1]  # interior
    assert t[T_peak][1] == max(t[T][1] for T in Ts)  # the highest median test loss in the table
    assert r_small >= THRESHOLD and r_large >= THRESHOLD, (r_small, r_large)
    assert "no interior test-loss peak" not in stdout
    out = tmp_path / "tutorial-output" / "03_double_descent"
    for f in ("double_descent.png", "geometry.png"):
        assert (out / f).stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == ["tutorial-output"]  # nothing else written
    assert_stated(stdout, "fast")


@pytest.mark.slow
def test_tutorial_03_default_mode_prints_what_its_text_states(run_tutorial):
    """The default run (the bottleneck's `cpu` preset; about 15 s) prints the peak the text
    states."""
    assert_stated(run_tutorial("03_double_descent.py", fast=False), "default")
