"""The README's Python example runs as written, and reports its sampler's health in words."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_example_runs_and_names_unhealthy_cells(tmp_path):
    text = (ROOT / "README.md").read_text()
    section = text.split("## A 10-line example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "lookup table" in out  # the dictionary probe found the memorised table
    cells = re.findall(r"t=(\S+) inst (\d+): λ̂ = \S+ .*: (.*)$", out, re.M)
    assert len(cells) == 3 * 4  # every (temperature, instance) cell is reported
    for _t, _i, health in cells:  # each one healthy, or unhealthy with its reasons in words
        assert health == "healthy" or re.search(r"[a-z]{4,}", health)
    n_bad = sum(h != "healthy" for *_, h in cells)
    assert (f"{n_bad} unhealthy cell(s)" in out) if n_bad else ("every cell healthy" in out)
    if n_bad:  # the survival summary marks the unhealthy temperatures instead of reading them
        assert "UNHEALTHY" in out
