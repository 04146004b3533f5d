"""Tutorial 04 runs top to bottom in fast mode and writes its figures."""

import os
import subprocess
import sys
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parents[2] / "tutorials" / "04_maximal_data_dimensionality.py"


def test_tutorial_04_runs(tmp_path):
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
    assert proc.stdout.count("outlier / typical median D* ratio") == 2
    for f in ("04_dstar_by_T.png", "04_outliers.png"):
        assert (tmp_path / f).stat().st_size > 0
    # sum of D* is rank(H) = m = 2 for every T (leverage scores)
    rows = [ln.split() for ln in proc.stdout.splitlines() if ln.split()[:1] == ["4"]]
    assert rows and abs(float(rows[0][3]) - 2.0) < 1e-2
