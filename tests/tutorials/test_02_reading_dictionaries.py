"""Tutorial 02 runs top to bottom in fast mode and prints its dictionaries and the T/d_mlp table."""

import os
import subprocess
import sys
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parents[2] / "tutorials" / "02_reading_dictionaries.py"


def test_tutorial_02_runs(tmp_path):
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
    for model in ("mlp", "unembed", "bottleneck"):
        assert f"{model} dictionary, 2 instance(s)" in out
    assert "key  slots" in out  # the printed tables
    assert "no lookup table found" in out  # the generalising MLP
    assert "T/d_mlp     T  train loss" in out
    for png in (
        "02_mlp_dictionary.png",
        "02_bottleneck_polygon.png",
        "02_superposed_dictionary.png",
    ):
        assert (tmp_path / png).stat().st_size > 0
