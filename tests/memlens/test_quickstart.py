"""`memlens quickstart` tells the whole story and writes its report folder, reproducibly."""

import json
import os
import re
import subprocess
import sys

import pytest

FIGURES = ["dictionary.png", "max_data_dim.png", "survival.png", "llc.png"]


def _quickstart(out, seed=0):
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "memlens.cli",
        "quickstart",
        "--out",
        str(out),
        "--seed",
        str(seed),
        "--no-progress",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs") / "report"
    return out, _quickstart(out)


def test_quickstart_writes_report_folder(first_run):
    out, stdout = first_run
    for name in FIGURES:
        assert (out / name).stat().st_size > 10_000, name  # a real figure, not an empty file
    summary = (out / "summary.md").read_text()
    for name in FIGURES:
        assert f"({name})" in summary  # summary.md links every figure
    assert (out / "config.json").exists() and (out / "results.json").exists()
    assert str(out.resolve()) in stdout  # it says where the folder is


def test_quickstart_memorising_dictionary_has_high_coverage(first_run):
    out, stdout = first_run
    m = re.search(r"memorising\s+T=\s*(\d+):.*dictionary coverage (\d+)%", stdout)
    assert m, stdout[-3000:]
    assert int(m.group(2)) >= 95
    table = stdout.split("dictionary (read from the weights):")[1]
    assert re.search(r"^\s+\d+\s+neuron \d+", table, re.M)  # entries are printed as a table
    g = re.search(r"generalising T=\s*\d+:.*dictionary coverage (\d+)%", stdout)
    assert int(g.group(1)) <= 20  # no lookup table when generalising
    assert "noised out" in stdout  # which circuits died at which temperature


def test_quickstart_same_seed_same_numbers(first_run, tmp_path):
    out, _ = first_run
    _quickstart(tmp_path / "again")
    a = json.loads((out / "results.json").read_text())
    b = json.loads((tmp_path / "again" / "results.json").read_text())
    assert a == b
