"""The `memlens` command: --help for every command, one-line errors with non-zero exit codes,
`memlens list`, and a train -> probe -> report round trip (in process, via cli.main)."""

from __future__ import annotations

import json

import pytest

from memlens import cli

COMMANDS = ["sweep", "report", "train", "probe", "temper", "list"]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_defaults(name, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert f"memlens {name}" in text
    if name in ("sweep", "train", "temper"):
        assert "default" in text  # units and defaults are spelled out
    if name == "temper":
        assert "step size" in text.lower()


@pytest.mark.parametrize(
    "argv, reason",
    [
        (["sweep", "--model", "bottleneck", "--preset", "laptop", "--out", "x"], "invalid choice"),
        (["sweep", "--model", "bottleneck", "--out", "x", "--T", "3,x"], "comma-separated"),
        (["sweep", "--model", "bottleneck", "--out", "x", "--steps", "-5"], "positive"),
        (["sweep", "--model", "resnet", "--preset", "smoke", "--out", "{tmp}/a"], "unknown model"),
        (
            [
                "sweep",
                "--model",
                "bottleneck",
                "--preset",
                "smoke",
                "--out",
                "{tmp}/b",
                "--set",
                "width=2",
            ],
            "unknown grid axis",
        ),
        (["report", "{tmp}/nothing"], "no sweep"),
        (["probe", "{tmp}/missing.pt"], "no checkpoint"),
        (["train", "--model", "bottleneck"], "required"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_nonzero_with_one_line(argv, reason, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code not in (0, None)
    err = capsys.readouterr().err.strip()
    assert reason in err
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_list_shows_models_and_probes(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("bottleneck", "mlp", "unembed", "dimensionality", "dictionary"):
        assert name in out
    assert "entry point" in out


def test_train_probe_and_sweep_report_round_trip(tmp_path, capsys):
    ck = tmp_path / "m.pt"
    assert (
        cli.main(
            [
                "train",
                "--model",
                "bottleneck",
                "--preset",
                "smoke",
                "--T",
                "5",
                "--steps",
                "20",
                "--out",
                str(ck),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "test loss" in capsys.readouterr().out
    js = tmp_path / "dim.json"
    assert cli.main(["probe", str(ck), "--probe", "dimensionality", "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    # training points' maximal data dimensionalities are leverage scores: they sum to rank <= m=2
    assert sum(res["max_data_dim"][0]) == pytest.approx(2.0, abs=1e-3)
    out = tmp_path / "sw"
    assert (
        cli.main(
            [
                "sweep",
                "--model",
                "bottleneck",
                "--preset",
                "smoke",
                "--out",
                str(out),
                "--T",
                "3,9",
                "--seeds",
                "0,1",
                "--steps",
                "10",
                "--probes",
                "dimensionality",
                "--no-progress",
            ]
        )
        == 0
    )
    assert cli.main(["report", str(out)]) == 0
    for f in (
        "double_descent.png",
        "dimensionality.png",
        "weight_norms.png",
        "geometry.png",
        "summary.md",
    ):
        assert (out / f).stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert "| 9 |" in summary and "4 of 4 finished" in summary
