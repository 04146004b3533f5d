"""Tutorial 04 runs top to bottom in fast mode and writes its figures."""


def test_tutorial_04_runs(run_tutorial, tmp_path):
    stdout = run_tutorial("04_maximal_data_dimensionality.py")
    assert stdout.count("outlier / typical median D* ratio") == 2
    for f in ("04_dstar_by_T.png", "04_outliers.png"):
        assert (tmp_path / f).stat().st_size > 0
    # sum of D* is rank(H) = m = 2 for every T (leverage scores)
    rows = [ln.split() for ln in stdout.splitlines() if ln.split()[:1] == ["4"]]
    assert rows and abs(float(rows[0][3]) - 2.0) < 1e-2
