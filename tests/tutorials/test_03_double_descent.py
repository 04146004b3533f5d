"""Tutorial 03 runs top to bottom in fast mode and writes its figures."""

import os
import re
import subprocess
import sys
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parents[2] / "tutorials" / "03_double_descent.py"


def test_tutorial_03_runs(tmp_path):
    env = {**os.environ, "MEMLENS_FAST": "1", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(TUTORIAL)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "16 cells in" in proc.stdout
    assert re.search(r"test-loss peak at T = \d+", proc.stdout)
    for f in ("03_double_descent.png", "03_geometry.png"):
        assert (tmp_path / f).stat().st_size > 0
    # the smallest T is memorised: its points form a T-gon, so mean D* = m/T = 2/3
    row = next(ln for ln in proc.stdout.splitlines() if ln.split()[:1] == ["3"])
    assert abs(float(row.split()[4]) - 2 / 3) < 1e-3
