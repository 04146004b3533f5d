"""Tutorial 04 runs top to bottom in fast mode, writes its figures and prints what it claims."""


def test_tutorial_04_runs(run_tutorial, tmp_path):
    stdout = run_tutorial("04_maximal_data_dimensionality.py")
    assert stdout.count("outlier / typical median D* ratio") == 2
    for f in ("04_dstar_by_T.png", "04_dimensionality.png", "04_outliers.png"):
        assert (tmp_path / f).stat().st_size > 0
    rows = [ln.split() for ln in stdout.splitlines() if ln.split()[:1] and ln.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == [4, 10, 25, 60, 150, 400]
    for r in rows:
        # sum of D* is rank(H) = m = 2 for every T (leverage scores), so mean D* = m/T
        assert abs(float(r[3]) - 2.0) < 1e-2 and abs(float(r[1]) - float(r[2])) < 1e-3
    # the narrative's claim: D* is even at small T (a T-gon), spread out at large T
    assert float(rows[0][4]) < 2 and float(rows[-1][4]) > 5 * float(rows[0][4])
