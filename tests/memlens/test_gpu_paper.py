"""benchmarks/gpu_paper.py, the prepared paper-preset run for a lent GPU, exercised on the CPU at a
tiny scale: it times every T, runs whole what the budget allows, and skips the rest."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_paper.py"
TINY = ["--device", "cpu", "--n-features", "100", "--steps", "60", "--T", "3,2321", "--seeds", "2"]


def _run(tmp_path: Path, *extra: str) -> list[str]:
    proc = subprocess.run([sys.executable, str(SCRIPT), *TINY, *extra, "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()


@pytest.mark.slow
def test_paper_run_times_every_T_and_runs_what_the_budget_allows(tmp_path):
    lines = _run(tmp_path / "all", "--budget", "300")
    assert re.fullmatch(r"grid: 2 of 2 T values run whole in \d+ s; whole grid estimated "
                        r"[\d.]+ min", lines[-1])  # fmt: skip
    assert any(ln.startswith("seconds per step by T: 3: ") and " 2321: " in ln for ln in lines)
    table = [ln for ln in lines if re.match(r"\| (3|2321) \|", ln)]
    assert len(table) == 2  # one row per T, both run whole
    assert (tmp_path / "all" / "T3").is_dir() and (tmp_path / "all" / "T2321").is_dir()
    # a budget no T fits: every T is timed, none is run whole, and the script says so
    lines = _run(tmp_path / "none", "--budget", "0.001")
    assert lines[-1].startswith("grid: 0 of 2 T values run whole")
    assert sum("skipped" in ln for ln in lines) == 2
