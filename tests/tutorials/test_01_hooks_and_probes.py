"""Tutorial 01 runs top to bottom in fast mode and shows what its text says: the hook layout,
an ablation that hurts, and D* that sums to the rank m = 2 but is shared out unevenly by this
non-memorising model (none above 3 m/T, some points near 0)."""

import re

import numpy as np

M, T = 2, 20  # the tutorial's hidden width and training-set size


def test_tutorial_01_runs(run_tutorial, tmp_path):
    out = run_tutorial("01_hooks_and_probes.py")
    assert "hook_hidden  (20, 4, 2)" in out  # [batch, inst, m]
    assert "sum of D* per instance: [2. 2. 2. 2.]" in out  # Σ D* = rank(H) = m
    train = [float(v) for v in re.findall(r"inst \d: train loss ([\d.e+-]+)", out)]
    assert len(train) == 4 and min(train) >= 0.3, train  # "this model does not memorise"
    clean = re.search(r"clean:\s+\[([^\]]*)\]", out).group(1).split()
    ablated = re.search(r"ablated:\s+\[([^\]]*)\]", out).group(1).split()
    assert all(float(a) > float(c) for a, c in zip(ablated, clean, strict=True))
    dstar = np.array(re.search(r"D\* of instance 0: \[([^\]]*)\]", out).group(1).split(), float)
    assert dstar.shape == (T,) and np.isclose(dstar.mean(), M / T, atol=1e-3)
    # shared out unevenly: some points near 0, none above 3 m/T (the text's stated bounds)
    assert dstar.min() <= 0.01 and 1.5 * M / T <= dstar.max() <= 3 * M / T, dstar
    fig = tmp_path / "tutorial-output" / "01_hooks_and_probes" / "dimensionality.png"
    assert fig.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == ["tutorial-output"]  # nothing else written
