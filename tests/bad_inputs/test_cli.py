"""Bad inputs to the ``memlens`` command: every row exits with status 2 and one line on stderr
that names the option (no traceback), before any training step, SGLD step or sweep group, and
leaves the working folder exactly as it was. Failures during the work exit 1, also in one line."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from refusal import no_work, snapshot

from memlens import cli

pytestmark = pytest.mark.user_errors

SW = ["sweep", "--model", "bottleneck", "--preset", "smoke", "--no-progress"]
TR = ["train", "--model", "bottleneck", "--preset", "smoke", "--T", "6", "--no-progress"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A small checkpoint with its data recipe (outside the rows' watched folders)."""
    path = tmp_path_factory.mktemp("ck") / "m.pt"
    assert cli.main([*TR, "--steps", "5", "--out", str(path)]) == 0
    return path


# (id, argv with {tmp} for the watched folder and {ck} for the checkpoint, field regex, setup)
ROWS: list[tuple] = [
    # -- sweep: options
    ("sweep-no-model", ["sweep", "--out", "{tmp}/o"], r"--model", None),
    ("sweep-no-out", ["sweep", "--model", "bottleneck"], r"--out", None),
    ("sweep-unknown-model", [*SW[:1], "--model", "resnet", "--out", "{tmp}/o"], r"resnet", None),
    ("sweep-unknown-preset", [*SW[:3], "--preset", "huge", "--out", "{tmp}/o"], r"huge", None),
    ("sweep-T-text", [*SW, "--out", "{tmp}/o", "--T", "3,x"], r"--T", None),
    ("sweep-T-float", [*SW, "--out", "{tmp}/o", "--T", "3.5"], r"--T", None),
    ("sweep-T-zero", [*SW, "--out", "{tmp}/o", "--T", "0,3"], r"\bT\b", None),
    ("sweep-T-negative", [*SW, "--out", "{tmp}/o", "--T", "-3"], r"--T|\bT\b", None),
    ("sweep-T-empty", [*SW, "--out", "{tmp}/o", "--T", ","], r"--T", None),
    ("sweep-seeds-text", [*SW, "--out", "{tmp}/o", "--seeds", "a"], r"--seeds", None),
    ("sweep-seeds-float", [*SW, "--out", "{tmp}/o", "--seeds", "1.5"], r"--seeds", None),
    ("sweep-steps-zero", [*SW, "--out", "{tmp}/o", "--steps", "0"], r"--steps", None),
    ("sweep-steps-negative", [*SW, "--out", "{tmp}/o", "--steps", "-5"], r"--steps", None),
    ("sweep-lr-nan", [*SW, "--out", "{tmp}/o", "--lr", "nan"], r"--lr", None),
    ("sweep-lr-inf", [*SW, "--out", "{tmp}/o", "--lr", "inf"], r"--lr", None),
    ("sweep-lr-negative", [*SW, "--out", "{tmp}/o", "--lr", "-1e-3"], r"--lr", None),
    ("sweep-lr-text", [*SW, "--out", "{tmp}/o", "--lr", "fast"], r"--lr", None),
    ("sweep-wd-negative", [*SW, "--out", "{tmp}/o", "--weight-decay=-1"], r"--weight-decay", None),
    ("sweep-l1-negative", [*SW, "--out", "{tmp}/o", "--l1=-0.1"], r"--l1", None),
    (
        "sweep-warmup-long",
        ["sweep", "--model", "mlp", "--preset", "smoke", "--out", "{tmp}/o", "--steps", "10"],
        r"warmup",
        None,
    ),  # fmt: skip
    ("sweep-set-no-equals", [*SW, "--out", "{tmp}/o", "--set", "sparsity"], r"--set", None),
    ("sweep-set-unknown", [*SW, "--out", "{tmp}/o", "--set", "width=2"], r"width", None),
    (
        "sweep-set-empty-value",
        [*SW, "--out", "{tmp}/o", "--set", "sparsity=0.9,"],
        r"sparsity",
        None,
    ),
    ("sweep-set-lr-negative", [*SW, "--out", "{tmp}/o", "--set", "lr=0.01,-1"], r"\blr\b", None),
    ("sweep-set-sparsity-1", [*SW, "--out", "{tmp}/o", "--set", "sparsity=1.0"], r"sparsity", None),
    (
        "sweep-set-bool-bad",
        [*SW, "--out", "{tmp}/o", "--set", "normalize=maybe"],
        r"normalize",
        None,
    ),
    ("sweep-set-n-test-0", [*SW, "--out", "{tmp}/o", "--set", "n_test=0"], r"n_test", None),
    ("sweep-set-d-hidden-0", [*SW, "--out", "{tmp}/o", "--set", "d_hidden=0"], r"d_hidden", None),
    ("sweep-probe-unknown", [*SW, "--out", "{tmp}/o", "--probes", "nope"], r"nope", None),
    ("sweep-probe-streaming", [*SW, "--out", "{tmp}/o", "--probes", "survival"], r"survival", None),
    (
        "sweep-probe-arg-form",
        [*SW, "--out", "{tmp}/o", "--probe-arg", "hook"],
        r"--probe-arg",
        None,
    ),
    ("sweep-probe-arg-which", [*SW, "--out", "{tmp}/o", "--probe-arg", "x.hook=a"], r"x", None),
    (
        "sweep-probe-arg-ambiguous",
        [*SW, "--out", "{tmp}/o", "--probe-arg", "hook=a"],
        r"PROBE",
        None,
    ),
    (
        "sweep-probe-arg-bad-hook",
        [*SW, "--out", "{tmp}/o", "--probes", "dimensionality", "--probe-arg", "hook=hook_nope"],
        r"hook_nope",
        None,
    ),  # fmt: skip
    (
        "sweep-backend-unknown",
        [*SW, "--out", "{tmp}/o", "--backend", "slurm"],
        r"slurm|backend",
        None,
    ),
    (
        "sweep-out-file",
        [*SW, "--out", "{tmp}/afile"],
        r"--out",
        lambda t: (t / "afile").write_text("x"),
    ),
    (
        "sweep-out-under-file",
        [*SW, "--out", "{tmp}/afile/o"],
        r"--out",
        lambda t: (t / "afile").write_text("x"),
    ),
    # -- report
    ("report-no-sweep", ["report", "{tmp}/nothing"], r"no sweep", None),
    (
        "report-figures-file",
        ["report", "{tmp}/sw", "--figures", "{tmp}/f"],
        r"--figures|config",
        lambda t: (t / "f").write_text("x"),
    ),  # fmt: skip
    # -- train
    ("train-no-T", ["train", "--model", "bottleneck", "--out", "{tmp}/m.pt"], r"--T", None),
    ("train-T-zero", [*TR[:-3], "--T", "0", "--out", "{tmp}/m.pt"], r"--T", None),
    ("train-seed-float", [*TR, "--seed", "1.5", "--out", "{tmp}/m.pt"], r"--seed", None),
    (
        "train-unknown-model",
        ["train", "--model", "resnet", "--T", "4", "--out", "{tmp}/m.pt"],
        r"resnet",
        None,
    ),
    ("train-unknown-preset", [*TR, "--preset", "huge", "--out", "{tmp}/m.pt"], r"huge", None),
    ("train-out-dir", [*TR, "--out", "{tmp}"], r"--out", None),
    (
        "train-out-exists",
        [*TR, "--out", "{tmp}/m.pt"],
        r"--force",
        lambda t: (t / "m.pt").write_text("x"),
    ),
    (
        "train-out-under-file",
        [*TR, "--out", "{tmp}/afile/m.pt"],
        r"--out",
        lambda t: (t / "afile").write_text("x"),
    ),
    ("train-set-many", [*TR, "--set", "d_hidden=2,3", "--out", "{tmp}/m.pt"], r"d_hidden", None),
    ("train-set-unknown", [*TR, "--set", "width=3", "--out", "{tmp}/m.pt"], r"width", None),
    ("train-set-bool", [*TR, "--set", "normalize=2", "--out", "{tmp}/m.pt"], r"normalize", None),
    ("train-lr-zero", [*TR, "--lr", "0", "--out", "{tmp}/m.pt"], r"--lr", None),
    ("train-steps-text", [*TR, "--steps", "many", "--out", "{tmp}/m.pt"], r"--steps", None),
    # -- probe
    ("probe-missing", ["probe", "{tmp}/missing.pt"], r"missing\.pt", None),
    ("probe-dir", ["probe", "{tmp}"], r"folder", None),
    ("probe-unknown", ["probe", "{ck}", "--probe", "nope"], r"nope", None),
    ("probe-streaming", ["probe", "{ck}", "--probe", "survival"], r"survival", None),
    ("probe-instance", ["probe", "{ck}", "--instance", "3"], r"--instance", None),
    (
        "probe-json-exists",
        ["probe", "{ck}", "--json", "{tmp}/r.json"],
        r"--force",
        lambda t: (t / "r.json").write_text("{}"),
    ),  # fmt: skip
    ("probe-json-dir", ["probe", "{ck}", "--json", "{tmp}"], r"--json", None),
    (
        "probe-figure-under-file",
        ["probe", "{ck}", "--figure", "{tmp}/afile/x.png"],
        r"--figure",
        lambda t: (t / "afile").write_text("x"),
    ),  # fmt: skip
    ("probe-arg-unknown", ["probe", "{ck}", "--probe-arg", "nohook=1"], r"nohook", None),
    ("probe-arg-bad-hook", ["probe", "{ck}", "--probe-arg", "hook=hook_nope"], r"hook_nope", None),
    (
        "probe-garbage-file",
        ["probe", "{tmp}/g.pt"],
        r"g\.pt",
        lambda t: (t / "g.pt").write_text("x"),
    ),
    # -- temper and calibrate
    ("temper-missing", ["temper", "{tmp}/missing.pt"], r"missing\.pt", None),
    ("temper-t-zero", ["temper", "{ck}", "--temperatures", "0,1"], r"--temperatures", None),
    ("temper-t-negative", ["temper", "{ck}", "--temperatures", "1,-1"], r"--temperatures", None),
    ("temper-t-text", ["temper", "{ck}", "--temperatures", "hot"], r"--temperatures", None),
    ("temper-step-text", ["temper", "{ck}", "--step-size", "big"], r"--step-size", None),
    ("temper-step-zero", ["temper", "{ck}", "--step-size", "0"], r"--step-size", None),
    ("temper-step-nan", ["temper", "{ck}", "--step-size", "nan"], r"--step-size", None),
    ("temper-chains-zero", ["temper", "{ck}", "--chains", "0"], r"--chains", None),
    ("temper-draws-one", ["temper", "{ck}", "--draws", "1"], r"draws", None),
    ("temper-gamma-negative", ["temper", "{ck}", "--localization=-1"], r"--localization", None),
    ("temper-seed-float", ["temper", "{ck}", "--seed", "0.5"], r"--seed", None),
    ("temper-probe-unknown", ["temper", "{ck}", "--probes", "nope"], r"nope", None),
    (
        "temper-probe-not-streaming",
        ["temper", "{ck}", "--probes", "dictionary"],
        r"dictionary",
        None,
    ),
    ("temper-instance", ["temper", "{ck}", "--instance", "-1"], r"--instance", None),
    (
        "temper-json-exists",
        ["temper", "{ck}", "--json", "{tmp}/t.json"],
        r"--force",
        lambda t: (t / "t.json").write_text("{}"),
    ),  # fmt: skip
    (
        "temper-figures-file",
        ["temper", "{ck}", "--figures", "{tmp}/f"],
        r"--figures",
        lambda t: (t / "f").write_text("x"),
    ),  # fmt: skip
    ("calibrate-t-zero", ["calibrate", "{ck}", "--temperatures", "0"], r"--temperatures", None),
    ("calibrate-chains-text", ["calibrate", "{ck}", "--chains", "x"], r"--chains", None),
    (
        "calibrate-figure-exists",
        ["calibrate", "{ck}", "--figure", "{tmp}/c.png"],
        r"--force",
        lambda t: (t / "c.png").write_text("x"),
    ),  # fmt: skip
    # -- quickstart and the command itself
    (
        "quickstart-out-file",
        ["quickstart", "--out", "{tmp}/afile"],
        r"--out",
        lambda t: (t / "afile").write_text("x"),
    ),
    ("quickstart-seed-text", ["quickstart", "--seed", "x", "--out", "{tmp}/q"], r"--seed", None),
    ("unknown-command", ["nonsense"], r"nonsense|invalid choice", None),
    ("unknown-option", ["list", "--colour"], r"--colour", None),
]


def _fill(argv: list[str], tmp: Path, ck: Path) -> list[str]:
    return [a.replace("{tmp}", str(tmp)).replace("{ck}", str(ck)) for a in argv]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_cli_refuses_in_one_line_before_any_work(row, tmp_path, ckpt, capsys):
    _id, argv, field, setup = row
    if setup is not None:
        setup(tmp_path)
    before = snapshot(tmp_path)
    calls: list[str] = []
    with no_work(calls):
        try:
            code = cli.main(_fill(argv, tmp_path, ckpt))
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, (code, err)
    assert not calls, f"work started before the refusal: {calls}"
    assert "Traceback" not in err and err.count("\n") <= 1, err  # argparse: usage + one line
    last = err.splitlines()[-1]
    assert re.search(r"error: ", last) and re.search(field, last), last
    assert snapshot(tmp_path) == before, "files changed under the working folder"


def test_table_size():
    assert len({r[0] for r in ROWS}) == len(ROWS) >= 80


@pytest.mark.parametrize(
    "argv, words",
    [
        (["temper", "{ck}", "--step-size", "1e3", "--chains", "2", "--draws", "20"], r"diverg"),
        ([*TR, "--lr", "1e30", "--steps", "200", "--out", "{tmp}/m.pt"], r"non-finite|diverg"),
    ],
    ids=["temper-huge-step", "train-huge-lr"],
)
def test_failures_during_the_work_exit_1_in_one_line(argv, words, tmp_path, ckpt, capsys):
    code = cli.main(
        _fill(argv, tmp_path, ckpt) + (["--no-progress"] if argv[0] == "temper" else [])
    )
    err = capsys.readouterr().err.strip()
    assert code == 1, (code, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert re.search(words, err, re.I), err
    assert not (tmp_path / "m.pt").exists()  # nothing half-written


def test_no_output_folder_is_left_by_a_refused_sweep(tmp_path, capsys):
    out = tmp_path / "o"
    assert cli.main([*SW, "--out", str(out), "--set", "lr=0.01,-1"]) == 2
    assert "lr" in capsys.readouterr().err
    assert not out.exists() and os.listdir(tmp_path) == []  # no config.json to poison a rerun
    assert cli.main([*SW, "--out", str(out), "--T", "3", "--seeds", "0", "--steps", "6"]) == 0
