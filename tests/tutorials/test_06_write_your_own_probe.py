"""Tutorial 06 runs top to bottom in fast mode: a custom probe by name, in a sweep, shipped."""


def test_tutorial_06_runs(run_tutorial, tmp_path):
    stdout = run_tutorial("06_write_your_own_probe.py")
    out = stdout
    assert "'firing'" in out  # registered by the decorator
    assert out.count("frac_active") >= 3  # probing() summary and both sweep cells
    assert "my_probes.firing:FiringProbe" in out  # found through the entry point
