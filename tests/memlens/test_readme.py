"""The README's Python example runs as written and shows what its comments and text claim:
a lookup table is found in every instance, each training point's D* is about m/T, every cell is
healthy, the coldest rung's undecided bias test and the too-coarse ladder are said in words."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
M, T, N_INST, TEMPS = 2, 8, 4, ("0.1", "1", "10")  # the example's d_hidden, T, instances, ladder
DSTAR_RTOL = 0.3  # "D* ≈ m/T": every point of instance 0 within 30% of m/T


def readme_example() -> str:
    section = (ROOT / "README.md").read_text().split("## A 10-line example", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def example_output(tmp_path_factory) -> str:
    code = readme_example()
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path_factory.mktemp("readme"),
                          env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def dstar_values(out: str) -> list[float]:
    """The first printed tensor: D* of instance 0's training points."""
    m = re.search(r"tensor\(\[([^\]]*)\]\)", out)
    assert m, "the example prints no D* tensor"
    return [float(v) for v in m.group(1).split(",")]


def lookup_lines(out: str) -> list[tuple[int, int, int, str]]:
    """``(instance, coverage %, read-back %, verdict)`` of each dictionary summary line."""
    rows = re.findall(r"^\s*inst (\d+): \d+ entries, coverage (\d+)%, read-back (\d+)%: (.*)$",
                      out, re.M)  # fmt: skip
    return [(int(i), int(c), int(r), v) for i, c, r, v in rows]


def cells(out: str) -> dict[tuple[str, int], str]:
    """``(temperature, instance) -> health`` from the tempering summary."""
    found = re.findall(r"^\s*t=(\S+) inst (\d+): λ̂ = \S+ .*: (.*)$", out, re.M)
    return {(t, int(i)): h for t, i, h in found}


def test_the_example_states_what_it_is_checked_against():
    code = readme_example()
    assert f"T={T}, n_instances={N_INST}" in code and f"d_hidden={M}" in code
    assert "D* ≈ m/T = 0.25" in code and M / T == 0.25
    assert f"temperatures=[{', '.join(TEMPS)}]" in code
    text = (ROOT / "README.md").read_text()
    assert (
        "a cell where it cannot within the budget\ntakes the dimensionless step decided at" in text
    )


def test_readme_example_finds_the_lookup_table(example_output):
    rows = lookup_lines(example_output)
    assert [i for i, *_ in rows] == list(range(N_INST)), example_output[-3000:]
    for i, coverage, read_back, verdict in rows:
        # found, not "no lookup table found": every training point has an entry of its own
        assert verdict == "a lookup table" and coverage >= 90, (i, coverage, read_back, verdict)


def test_readme_example_dstar_is_m_over_T(example_output):
    d = dstar_values(example_output)
    assert len(d) == T
    assert sum(d) == pytest.approx(M, abs=1e-3)  # Σ D* = rank of the hidden vectors = m
    for v in d:  # a memorised polygon: every point about m/T of a dimension
        assert abs(v - M / T) <= DSTAR_RTOL * M / T, d


def test_readme_example_is_healthy_and_says_what_it_could_not_decide(example_output):
    out = example_output
    health = cells(out)
    assert set(health) == {(t, i) for t in TEMPS for i in range(N_INST)}, out[-3000:]
    assert all(h == "healthy" for h in health.values()), health
    assert "every cell healthy" in out
    # the bias test decided most cells on their own; any other cell borrowed a step decided at
    # another rung of its instance and says so (the README says both)
    calib = out.split("step size auto (", 1)[1]
    own = 0
    for t in TEMPS:
        for i in range(N_INST):
            line = re.search(rf"^\s*t={re.escape(t)} inst {i}: (.*)$", calib, re.M).group(1)
            if "is within 5% of λ̂" in line:
                own += 1
            else:
                assert "accepted at another temperature of this instance" in line, line
                assert "this cell's own test did not decide" in line, line
    assert own > len(TEMPS) * N_INST / 2
    # the ladder is too coarse for replica exchange: the summary names the rungs to add
    assert "rarely swaps" in out and "add a rung at t ≈ 0.316" in out and "t ≈ 3.16" in out
    # the survival summary reads every rung (all healthy)
    survival = out.split("circuit survival", 1)[1]
    assert "UNHEALTHY" not in survival and "healthy chains only" in survival
