"""Tutorial 02 runs top to bottom in fast mode and shows what its text says: a lookup table in
each memorising model, a distributed code under plain AdamW (many more points per neuron, far
less coverage than with the L1 penalty) that the decompiler reads (coverage >= 90%, codes smaller
than the neurons a point fires, one entry checked by ablation), no table in the generalising
block, and a dictionary whose read-back falls as T passes d_mlp while most outputs keep a sparse
code."""

import re
from pathlib import Path

import numpy as np
import pytest

TEXT = (
    Path(__file__).resolve().parents[2] / "tutorials" / "02_reading_dictionaries.py"
).read_text()
# The results each mode's run prints, as the tutorial's text states them (shares of points):
# neurons' firing rate and dictionary coverage with the L1 penalty and under plain AdamW, the
# decompiled coverage of the plain-AdamW block, and the superposition table's read-back and
# sparse-code share at T = 1, 2 (, 4, 8) x d_mlp.
STATED = {
    "fast": {"l1_fire": 0.25, "l1_cov": 0.91, "plain_fire": 0.44, "plain_cov": 0.19,
             "decompiled": 0.97, "read_back": [0.47, 0.02], "sparse": [0.88, 0.84]},
    "default": {"l1_fire": 0.08, "l1_cov": 1.00, "plain_fire": 0.47, "plain_cov": 0.22,
                "decompiled": 0.97, "read_back": [0.84, 0.17, 0.0, 0.0],
                "sparse": [0.97, 0.95, 0.73, 0.78]},
}  # fmt: skip
TOL = 0.06  # absolute, on each share (float rounding of a different machine moves a point or two)


def pct(s: str) -> float:
    return float(s.rstrip("%")) / 100


def summaries(out: str, model: str) -> list[tuple[float, float, str]]:
    """``(coverage, read-back, verdict)`` per instance of the first ``MODEL dictionary`` block."""
    block = out.split(f"{model} dictionary, 2 instance(s)", 1)[1]
    rows = re.findall(r"^\s*inst \d: \d+ entries, coverage (\d+%), read-back (\d+%)[^:]*: (.*)$",
                      block, re.M)[:2]  # fmt: skip
    return [(pct(c), pct(r), v) for c, r, v in rows]


def printed(out: str) -> dict:
    """The shares of ``STATED`` as this run printed them."""
    rx = r"{}: train loss \S+, a neuron fires on (\d+%) of the points, dictionary coverage (\d+%)"
    l1_fire, l1_cov = map(pct, re.search(rx.format("with the L1 penalty"), out).groups())
    plain_fire, plain_cov = map(pct, re.search(rx.format("plain AdamW"), out).groups())
    decompiled = pct(re.search(r"plain AdamW, decompiled: coverage (\d+%)", out).group(1))
    table = re.findall(r"^\s+\d+\s+\d+\s+[\d.]+\s+(\d+%)\s+\d+%\s+(\d+%)\s+[\d.]+$",
                       out.split("T/d_mlp")[1], re.M)  # fmt: skip
    got = {"l1_fire": l1_fire, "l1_cov": l1_cov, "plain_fire": plain_fire,
           "plain_cov": plain_cov, "decompiled": decompiled}  # fmt: skip
    got["read_back"] = [pct(r) for r, _ in table]
    got["sparse"] = [pct(c) for _, c in table]
    return got


def assert_stated(out: str, mode: str) -> None:
    got = printed(out)
    for key, want in STATED[mode].items():
        g, w = np.atleast_1d(got[key]), np.atleast_1d(want)
        assert g.shape == w.shape and np.abs(g - w).max() <= TOL, (
            f"{mode}: {key} printed {got[key]}, the text states {want}"
        )
        for v in w:  # the text states each number the test asserts
            assert f"{round(v * 100)}%" in TEXT, (mode, key, v)


def test_tutorial_02_runs(run_tutorial, tmp_path):
    out = run_tutorial("02_reading_dictionaries.py")
    assert "key  slots" in out  # the printed tables
    # 1. the penalised MLP block: a lookup table in both instances
    for cov, _, verdict in summaries(out, "mlp"):
        assert verdict == "a lookup table" and cov >= 0.8, out[:3000]
    # ... and plain AdamW: a distributed code (each neuron fires on about half the points)
    rx = r"{}: train loss \S+, a neuron fires on (\d+%) of the points, dictionary coverage (\d+%)"
    l1_fire, l1_cov = map(pct, re.search(rx.format("with the L1 penalty"), out).groups())
    plain_fire, plain_cov = map(pct, re.search(rx.format("plain AdamW"), out).groups())
    assert 0.35 <= plain_fire <= 0.65 and plain_fire > l1_fire, (plain_fire, l1_fire)
    assert plain_cov <= l1_cov - 0.5, (plain_cov, l1_cov)
    # 1b. the decompiled distributed code: a table in both instances, >= 90% coverage
    block = out.split("mlp dictionary (decompiled at hook_post), 2 instance(s)", 1)[1]
    verdicts = re.findall(r"^\s*inst \d: .*coverage (\d+%).*: (.*)$", block, re.M)[:2]
    assert [v for _, v in verdicts] == ["a lookup table in distributed codes"] * 2, block[:800]
    rx = (r"plain AdamW, decompiled: coverage (\d+%) \(the weights: (\d+%)\), codes of ([\d.]+) "
          r"of 32 neurons on average \(a point fires ([\d.]+)\)")  # fmt: skip
    cov, weights, size, fires = re.search(rx, out).groups()
    assert pct(cov) >= 0.9 and pct(weights) == plain_cov and float(size) < float(fires), out
    rx = (r"point \d+: its code, neurons \[[\d, ]+\] with weights \[[\d., ]+\], reads back the "
          r"model's output with error ([\d.]+); on the other points the same neurons give errors "
          r"of ([\d.]+) or more")  # fmt: skip
    own, other = map(float, re.search(rx, out).groups())
    assert own <= 0.25 < other, (own, other)
    # 2.-3. the final layer reads back every label; the bottleneck covers most points
    assert all(c == 1 and r == 1 for c, r, _ in summaries(out, "unembed"))
    assert all(c >= 0.8 for c, _, _ in summaries(out, "bottleneck"))
    # 4. the generalising block: no table, said in words
    gen = out.split("T/d_mlp")[0].rsplit("mlp dictionary, 2 instance(s)", 1)[1]
    assert gen.count("no lookup table found") == 2
    # 5. superposition: read-back falls from T = d_mlp to 2 d_mlp; most outputs keep a code
    table = re.findall(r"^\s+(\d+)\s+(\d+)\s+([\d.]+)\s+(\d+%)\s+(\d+%)\s+(\d+%)\s+([\d.]+)$",
                       out.split("T/d_mlp")[1], re.M)  # fmt: skip
    assert [int(r[0]) for r in table] == [1, 2]
    (_, _, loss1, rb1, cov1, code1, _), (_, _, loss2, rb2, cov2, code2, _) = table
    assert pct(rb2) < pct(rb1) - 0.2 and pct(cov2) < pct(cov1)
    assert pct(code1) >= 0.8 and pct(code2) >= 0.8
    assert float(loss2) > float(loss1)  # the penalised model memorises less as T grows
    figures = tmp_path / "tutorial-output" / "02_reading_dictionaries"
    for png in (
        "mlp_dictionary.png",
        "mlp_decompiled.png",
        "bottleneck_polygon.png",
        "superposed_dictionary.png",
    ):
        assert (figures / png).stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == ["tutorial-output"]  # nothing else written
    assert_stated(out, "fast")


@pytest.mark.slow
def test_tutorial_02_default_mode_prints_what_its_text_states(run_tutorial):
    """The default run (what a reader runs; about 35 s) prints the numbers the text states."""
    assert_stated(run_tutorial("02_reading_dictionaries.py", fast=False), "default")
