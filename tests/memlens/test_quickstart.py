"""`memlens quickstart` tells the whole story and writes its report folder, reproducibly."""

import json
import os
import re
import subprocess
import sys

import pytest

FIGURES = ["dictionary.png", "memorised_roc.png", "survival.png", "llc.png", "training.png"]


def _quickstart(out, seed=0):
    env = {**os.environ, "MPLBACKEND": "Agg"}  # threads: memlens's own policy, as a user runs it
    cmd = [
        sys.executable,
        "-m",
        "memlens.cli",
        "quickstart",
        "--out",
        str(out),
        "--seed",
        str(seed),
        "--no-progress",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs") / "report"
    return out, _quickstart(out)


def test_quickstart_writes_report_folder(first_run):
    out, stdout = first_run
    for name in FIGURES:
        assert (out / name).stat().st_size > 10_000, name  # a real figure, not an empty file
    summary = (out / "summary.md").read_text()
    for name in FIGURES:
        assert f"({name})" in summary  # summary.md links every figure
    assert (out / "config.json").exists() and (out / "results.json").exists()
    assert str(out.resolve()) in stdout  # it says where the folder is


def test_quickstart_memorising_dictionary_has_high_coverage(first_run):
    out, stdout = first_run
    m = re.search(r"memorising\s+T=\s*(\d+):.*dictionary coverage (\d+)%", stdout)
    assert m, stdout[-3000:]
    assert int(m.group(2)) >= 95
    table = stdout.split("dictionary (read from the weights):")[1]
    assert re.search(r"^\s+\d+\s+neuron \d+", table, re.M)  # entries are printed as a table
    g = re.search(r"generalising T=\s*\d+:.*dictionary coverage (\d+)%", stdout)
    assert int(g.group(1)) <= 20  # no lookup table when generalising
    assert "noised out" in stdout  # which circuits died at which temperature


def test_quickstart_same_seed_same_numbers(first_run, tmp_path):
    out, _ = first_run
    _quickstart(tmp_path / "again")
    a = json.loads((out / "results.json").read_text())
    b = json.loads((tmp_path / "again" / "results.json").read_text())
    assert a == b


NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?%?")


def _numbers_and_words(text: str):
    nums = NUMBER.findall(text)
    return [n.rstrip("%") for n in nums], NUMBER.sub("#", text).split()


def last_digit(number: str) -> float:
    """The value of one unit in the last printed digit: '0.0136' -> 1e-4, '1.18e-07' -> 1e-9,
    '69' -> 1 (how far apart two correct renderings of nearby values can be)."""
    mantissa, _, exp = number.lower().partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return 10.0 ** (-decimals + (int(exp) if exp else 0))


def test_last_digit_and_relative_tolerance():
    assert [last_digit(n) for n in ("0.0136", "1.18e-07", "69", "1.5", "2.5e+03")] == [
        1e-4, pytest.approx(1e-9), 1, 0.1, 100
    ]  # fmt: skip
    # a small number is checked relative to its size, not against an absolute 0.02
    assert not close("0.0136", "0.0236") and not close("1.18e-07", "2e-07")
    assert close("0.0136", "0.0137") and close("1.18e-07", "1.2e-07") and close("0.0", "0.1")


def close(quoted: str, fresh: str, rel: float = 0.05) -> bool:
    """Equal to 5% (relative), or to one unit of the last digit the README prints."""
    q, f = float(quoted), float(fresh)
    return abs(f - q) <= max(rel * abs(q), last_digit(quoted))


def test_readme_quotes_what_the_quickstart_writes(first_run):
    """The README's quickstart block (scripts/update_readme.py) renders a run's results.json:
    a fresh run gives the same words and, to float tolerance, the same numbers."""
    import importlib.util
    from pathlib import Path

    from memlens.app.quickstart_report import readme_section

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location(
        "update_readme", root / "scripts/update_readme.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    quoted = mod.readme_block((root / "README.md").read_text())
    out, stdout = first_run
    fresh = readme_section(json.loads((out / "results.json").read_text()))
    (qn, qw), (fn, fw) = _numbers_and_words(quoted), _numbers_and_words(fresh)
    assert qw == fw, "the README's quickstart block has other words: run scripts/update_readme.py"
    assert len(qn) == len(fn)
    for q, f in zip(qn, fn, strict=True):
        assert close(q, f), (q, f)  # relative: a train loss of 1e-7 is checked too
    for caveat in json.loads((out / "results.json").read_text())["caveats"]:
        assert caveat in stdout  # the caveats the README promises are printed by the run


def test_cli_probes_and_tempers_the_quickstart_checkpoints(first_run, tmp_path):
    """The quickstart's checkpoints carry their data recipes: the CLI reads their dictionary,
    and tempers them with the survival probe."""
    from memlens import cli

    out, _ = first_run
    ck = out / "mlp-memorising.pt"
    js = tmp_path / "dic.json"
    assert cli.main(["probe", str(ck), "--probe", "dictionary", "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    assert res["scalars"]["coverage"] >= 0.95  # the lookup table, read through the CLI
    argv = ["temper", str(ck), "--temperatures", "1,100", "--chains", "2", "--draws", "40"]
    argv += ["--probes", "survival", "--json", str(tmp_path / "t.json"), "--no-progress"]
    assert cli.main(argv) == 0
    t = json.loads((tmp_path / "t.json").read_text())
    assert "survival" in t["probes"]


def test_quickstart_says_which_points_are_memorised(first_run):
    """Step 3 scores every model detector against points planted with random labels in a
    generalising final layer, after checking that the model fitted them; no number it prints is
    one that any model would give (the mean D* was rank/T)."""
    out, stdout = first_run
    assert "Which points are memorised?" in stdout
    assert "mean D*" not in stdout and "rank =" not in stdout
    m = json.loads((out / "results.json").read_text())["memorised"]
    # the model fitted most planted points (else a detector would find the points it failed on)
    assert m["fitted"] >= 0.5 and m["planted_loss"] < m["control_loss"] / 2, m
    T, k, ranks = m["T"], m["planted"], sorted(m["best_ranks"])
    assert len(ranks) == k and len(set(ranks)) == k and all(1 <= r <= T for r in ranks)
    # the AUROC it prints is the one its ranks give (Mann-Whitney from the ranks, by hand)
    below = sum((T - r) - (k - 1 - i) for i, r in enumerate(ranks))
    assert abs(below / (k * (T - k)) - m["best_auroc"]) < 1e-6
    assert m["best"] in m["auroc"] and m["best"] not in m["data_only"]
    assert m["best_auroc"] >= 0.9, m["auroc"]
    assert f"ranks the planted points {m['best_ranks']}" in stdout
