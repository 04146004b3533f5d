"""Tutorial 01 runs top to bottom in fast mode."""


def test_tutorial_01_runs(run_tutorial, tmp_path):
    stdout = run_tutorial("01_hooks_and_probes.py")
    assert "hook_hidden  (20, 4, 2)" in stdout
    assert "sum of D* per instance: [2. 2. 2. 2.]" in stdout  # Σ D* = rank(H) = m
    assert (tmp_path / "01_dimensionality.png").stat().st_size > 0
