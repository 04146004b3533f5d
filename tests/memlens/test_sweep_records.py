"""A sweep's records tell the truth: config.json's task and summary.md show the values the cells
ran with, also when a one-valued grid axis (``--set normalize=no``) overrides the preset."""

from __future__ import annotations

import json

from memlens import cli
from memlens.sweeps import read_results


def test_config_and_summary_show_the_task_values_the_cells_ran_with(tmp_path, capsys):
    out = tmp_path / "sw"
    argv = ["sweep", "--model", "bottleneck", "--preset", "smoke", "--out", str(out)]
    argv += ["--T", "3,6", "--seeds", "0", "--steps", "5", "--set", "normalize=no"]
    argv += ["--set", "d_hidden=1,2", "--probes", "none", "--no-progress"]
    assert cli.main(argv) == 0
    stored = json.loads((out / "config.json").read_text())
    assert stored["task"]["normalize"] is False  # the smoke preset says True
    config, rows = read_results(out)
    assert {r["cell"]["normalize"] for r in rows} == {False}  # what the cells ran with
    assert cli.main(["report", str(out)]) == 0
    summary = (out / "summary.md").read_text()
    task_line = next(ln for ln in summary.splitlines() if ln.startswith("- task:"))
    assert "'normalize': False" in task_line and "'normalize': True" not in task_line
    assert "'d_hidden': 'grid: [1, 2]'" in task_line  # a varied key is not shown as one value
    assert "'steps': 5" in next(ln for ln in summary.splitlines() if ln.startswith("- train:"))
    # the same command resumes the folder (its identity is unchanged by what it records)
    assert cli.main(argv) == 0
