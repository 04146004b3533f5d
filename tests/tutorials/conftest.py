"""Run a tutorial script top to bottom in fast mode, in a subprocess, in a temporary folder."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[2] / "tutorials"


@pytest.fixture
def run_tutorial(tmp_path):
    """``run_tutorial("01_hooks_and_probes.py") -> stdout``; fails with its stderr if it fails.
    The script runs with ``MEMLENS_FAST=1`` (small sizes; ``fast=False``: the default mode), the
    Agg backend and memlens's own thread policy, with ``tmp_path`` as its working folder (its
    figures go under ``tutorial-output/<tutorial stem>/`` there)."""

    def run(name: str, fast: bool = True) -> str:
        env = {**os.environ, "MPLBACKEND": "Agg"}
        env.pop("MEMLENS_FAST", None)
        if fast:
            env["MEMLENS_FAST"] = "1"
        proc = subprocess.run(
            [sys.executable, str(TUTORIALS / name)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    return run
