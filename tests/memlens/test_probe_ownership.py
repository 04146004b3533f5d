"""Plugins own what they know: a sweep's default probes are the registered defaults that support
the model (the ones skipped are said, and why); each probe adds its own columns, figures and phase
panels to a sweep's report; the core names no built-in probe."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

import memlens as ml
from memlens import cli
from memlens.registry import MODELS
from toy_models import Bottleneck
from toy_models.bottleneck import BUNDLE

ROOT = Path(__file__).resolve().parents[2]
TINY = {"T": [3, 6], "seed": [0]}


class NoReader(Bottleneck):
    """A plugin model whose bundle ships no dictionary reader."""


@pytest.fixture
def no_reader_model():
    presets = {
        "tiny": {
            "grid": TINY,
            "task": dict(BUNDLE.presets["smoke"]["task"]),
            "train": {**BUNDLE.presets["smoke"]["train"], "steps": 10, "warmup": 2},
        }
    }
    bundle = dataclasses.replace(BUNDLE, model=NoReader, read_dictionary=None, presets=presets)
    ml.register_model("test-no-reader")(bundle)
    try:
        yield "test-no-reader"
    finally:
        MODELS.unregister("test-no-reader")


def test_the_core_names_no_builtin_probe():
    pattern = re.compile(r"""['"](dimensionality|dictionary|survival|bucket|memorised)['"]""")
    hits = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in (ROOT / "memlens").rglob("*.py")
        if p.relative_to(ROOT / "memlens").parts[0] not in ("app", "cli")  # the application
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


def test_default_probes_are_the_registered_defaults_that_support_the_model(no_reader_model):
    run, skipped = ml.sweeps.default_probes(ml.get_bundle("bottleneck"))
    assert {"dimensionality", "dictionary"} <= set(run) and skipped == {}
    assert "survival" not in run  # streams over tempered draws: not a default
    run, skipped = ml.sweeps.default_probes(ml.get_bundle(no_reader_model))
    assert "dimensionality" in run and "dictionary" not in run
    assert "dictionary reader" in skipped["dictionary"]


def test_cli_sweep_of_a_model_without_a_dictionary_reader_runs_and_says_what_it_skipped(
    no_reader_model, tmp_path, capsys
):
    out = tmp_path / "sw"
    argv = ["sweep", "--model", no_reader_model, "--preset", "tiny", "--out", str(out)]
    assert cli.main([*argv, "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "skipped default probe 'dictionary'" in err and "dictionary reader" in err
    config = json.loads((out / "config.json").read_text())
    assert "dictionary" not in config["probes"] and "dimensionality" in config["probes"]
    assert "dictionary" in config["skipped_probes"]
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("dimensionality.mean_max_data_dim" in r for r in rows)
    assert not any(k.startswith("dictionary.") for r in rows for k in r)
    assert cli.main(["report", str(out)]) == 0
    assert (out / "dimensionality.png").exists() and not (out / "dictionary.png").exists()
    summary = (out / "summary.md").read_text()
    assert "dimensionality.mean_max_data_dim" in summary and "dictionary.coverage" not in summary
    assert "skipped 'dictionary'" in summary


def test_a_probe_adds_its_own_report_section(tmp_path):
    """A probe defined here (not built in) puts its column in summary.md and its figure in the
    report, through its sweep_report hook; the core knows nothing about it."""
    from memlens.probe import Probe, ProbeResult, SweepSection
    from memlens.registry import PROBES

    @dataclasses.dataclass
    class R(ProbeResult):
        n: float

        def scalars(self):
            return {"n_params": self.n}

    class Count(Probe):
        def read(self, model):
            return R(float(sum(p[0].numel() for p in model.parameters())))

        @classmethod
        def sweep_report(cls, view, label):
            import matplotlib.pyplot as plt

            fig = plt.figure()
            return SweepSection(
                columns=(f"{label}.n_params",),
                figures={"param_count": fig},
                lines=[f"{label}: parameters per cell"],
            )

    ml.register_probe("test-count")(Count)
    try:
        out = tmp_path / "c"
        p = BUNDLE.presets["smoke"]
        ml.sweep(
            "bottleneck",
            TINY,
            task=p["task"],
            train={**p["train"], "steps": 5, "warmup": 1},
            probes=["test-count"],
            out=out,
            progress=False,
        )
        rep = ml.sweeps.report(out)
        assert str(out / "param_count.png") in rep["figures"]
        summary = (out / "summary.md").read_text()
        n = 2 * p["task"]["n_features"] * 1 + p["task"]["n_features"]  # W [m=1? no] checked below
        table = [ln for ln in summary.splitlines() if ln.startswith("| 3 |")]
        assert "test-count.n_params" in summary and "test-count: parameters per cell" in summary
        model = ml.get_bundle("bottleneck").build({**p["task"], "T": 3, "seed": 0})
        n = sum(q[0].numel() for q in model.parameters())
        assert table and f"| {n:.4g} |" in table[0] + " |"
    finally:
        PROBES.unregister("test-count")
