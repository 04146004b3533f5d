"""Tutorial 01 runs top to bottom in fast mode."""

import os
import subprocess
import sys
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parents[2] / "tutorials" / "01_hooks_and_probes.py"


def test_tutorial_01_runs(tmp_path):
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
    assert "hook_hidden  (20, 4, 2)" in proc.stdout
    assert "sum of D* per instance: [2. 2. 2. 2.]" in proc.stdout  # Σ D* = rank(H) = m
    assert (tmp_path / "01_dimensionality.png").stat().st_size > 0
