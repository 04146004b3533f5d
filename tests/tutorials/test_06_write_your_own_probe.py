"""Tutorial 06 runs top to bottom in fast mode: a custom probe by name, in a sweep, shipped."""

import os
import subprocess
import sys
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parents[2] / "tutorials" / "06_write_your_own_probe.py"


def test_tutorial_06_runs(tmp_path):
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
    out = proc.stdout
    assert "'firing'" in out  # registered by the decorator
    assert out.count("frac_active") >= 3  # probing() summary and both sweep cells
    assert "my_probes.firing:FiringProbe" in out  # found through the entry point
