"""Tutorial 03 runs top to bottom in fast mode and writes its figures."""

import re


def test_tutorial_03_runs(run_tutorial, tmp_path):
    stdout = run_tutorial("03_double_descent.py")
    assert "16 cells in" in stdout
    assert re.search(r"test-loss peak at T = \d+", stdout)
    for f in ("03_double_descent.png", "03_geometry.png"):
        assert (tmp_path / f).stat().st_size > 0
    # the smallest T is memorised: its points form a T-gon, so mean D* = m/T = 2/3
    row = next(ln for ln in stdout.splitlines() if ln.split()[:1] == ["3"])
    assert abs(float(row.split()[4]) - 2 / 3) < 1e-3
