"""Tutorial 02 runs top to bottom in fast mode and prints its dictionaries and the T/d_mlp table."""


def test_tutorial_02_runs(run_tutorial, tmp_path):
    stdout = run_tutorial("02_reading_dictionaries.py")
    out = stdout
    for model in ("mlp", "unembed", "bottleneck"):
        assert f"{model} dictionary, 2 instance(s)" in out
    assert "key  slots" in out  # the printed tables
    assert "no lookup table found" in out  # the generalising MLP
    assert "T/d_mlp     T  train loss" in out
    for png in (
        "02_mlp_dictionary.png",
        "02_bottleneck_polygon.png",
        "02_superposed_dictionary.png",
    ):
        assert (tmp_path / png).stat().st_size > 0
