"""The `memlens` command: --help for every command, one-line errors with non-zero exit codes,
`memlens list`, and a train -> probe -> report round trip (in process, via cli.main)."""

from __future__ import annotations

import json

import pytest

from memlens import cli

COMMANDS = ["sweep", "report", "train", "probe", "temper", "calibrate", "list", "quickstart"]


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
        (["sweep", "--model", "bottleneck", "--preset", "laptop", "--out", "x"], "unknown preset"),
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
        (["probe", "{tmp}/missing.pt"], "does not exist"),
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


def _train(ck, *extra):
    return cli.main(
        ["train", "--model", "bottleneck", "--preset", "smoke", "--T", "6", "--steps", "15",
         "--out", str(ck), "--no-progress", *extra]
    )  # fmt: skip


def _steps_run(monkeypatch) -> list:
    """Count optimizer steps taken through memlens.train (patched at its step helper)."""
    import memlens.training as training

    calls: list = []
    real = training.train.__wrapped__

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(training, "train", counting)
    return calls


@pytest.mark.user_errors
def test_train_refuses_to_overwrite_before_training_and_force_overwrites(
    tmp_path, capsys, monkeypatch
):
    ck = tmp_path / "m.pt"
    ck.write_bytes(b"precious")
    calls = _steps_run(monkeypatch)
    assert _train(ck) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "--force" in err and "Traceback" not in err
    assert ck.read_bytes() == b"precious" and calls == []  # nothing trained, nothing written
    assert _train(ck, "--force") == 0 and calls == [1]
    import memlens

    model = memlens.load(ck)  # a real checkpoint replaced the bytes
    assert model.n_instances == 1


@pytest.mark.user_errors
@pytest.mark.parametrize("where", ["folder", "file-parent", "read-only"])
def test_train_checks_its_output_path_before_any_work(where, tmp_path, capsys, monkeypatch):
    import os

    if where == "folder":
        out = tmp_path
    elif where == "file-parent":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "m.pt"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        out = ro / "m.pt"
    calls = _steps_run(monkeypatch)
    assert _train(out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("memlens train: error: --out") and "\n" not in err
    assert calls == []


def test_train_set_and_l1_reach_the_model(tmp_path, capsys):
    import memlens

    ck = tmp_path / "m.pt"
    assert _train(ck, "--set", "d_hidden=3", "--set", "normalize=false", "--l1", "0.01") == 0
    model, specs = memlens.load_with_recipes(ck)
    assert model.cfg.d_hidden == 3
    assert specs[0]["normalize"] is False and specs[0]["T"] == 6


@pytest.mark.user_errors
@pytest.mark.parametrize("value", ["maybe", "2", "tru"])
def test_bool_settings_parse_or_refuse(value, tmp_path, capsys):
    assert _train(tmp_path / "m.pt", "--set", f"normalize={value}") == 2
    err = capsys.readouterr().err
    assert "normalize" in err and not (tmp_path / "m.pt").exists()


def test_probe_args_reach_the_probe(tmp_path, capsys):
    ck = tmp_path / "m.pt"
    assert _train(ck) == 0
    capsys.readouterr()
    assert cli.main(["probe", str(ck), "--probe-arg", "hook=hook_out"]) == 0
    assert "dimensionality at hook_out" in capsys.readouterr().out
    assert cli.main(["probe", str(ck), "--probe-arg", "nohook=1"]) == 2
    assert "nohook" in capsys.readouterr().err


def test_temper_defaults_to_auto_steps_and_writes_json_and_figures(tmp_path, capsys):
    ck = tmp_path / "m.pt"
    assert _train(ck) == 0
    js, figs = tmp_path / "t.json", tmp_path / "figs"
    argv = ["temper", str(ck), "--temperatures", "1,10", "--chains", "2", "--draws", "20"]
    assert cli.main(argv + ["--json", str(js), "--figures", str(figs), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "step size auto" in out and "λ̂" in out
    res = json.loads(js.read_text())
    assert res["calibration"] is not None  # the default path calibrates
    assert len(res["llc_mean"]) == 2 and all(v > 0 for v in sum(res["llc_mean"], []))
    assert {p.name for p in figs.iterdir()} == {"traces.png", "spectrum.png"}
    assert cli.main(argv + ["--json", str(js)]) == 2  # exists: refused before sampling
    assert "--force" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(FileNotFoundError):
        cli.main(["probe", str(tmp_path / "missing.pt"), "--debug"])


def test_cli_reads_the_dictionary_of_an_l1_trained_mlp(tmp_path, capsys):
    """Through the CLI alone: an MLP block trained with the L1 penalty memorises with one or two
    neurons per point, and `memlens probe --probe dictionary` reads that table back."""
    ck, js = tmp_path / "mlp.pt", tmp_path / "dic.json"
    argv = ["train", "--model", "mlp", "--preset", "story", "--T", "16", "--out", str(ck)]
    assert cli.main(argv + ["--no-progress"]) == 0
    assert cli.main(["probe", str(ck), "--probe", "dictionary", "--json", str(js)]) == 0
    res = json.loads(js.read_text())["scalars"]
    assert res["coverage"] >= 0.9 and res["read_back_accuracy"] >= 0.9
    assert res["mean_code_size"] <= 3  # a lookup table: a few neurons per point
    capsys.readouterr()
    # the same model without the penalty memorises too, but its code is distributed
    assert cli.main(argv[:-1] + [str(tmp_path / "plain.pt"), "--l1", "0", "--no-progress"]) == 0
    assert cli.main(["probe", str(tmp_path / "plain.pt"), "--probe", "dictionary",
                     "--json", str(tmp_path / "plain.json")]) == 0  # fmt: skip
    plain = json.loads((tmp_path / "plain.json").read_text())["scalars"]
    assert plain["coverage"] < res["coverage"]
