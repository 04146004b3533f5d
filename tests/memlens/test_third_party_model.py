"""A third-party model through every path (issue 10's must-show), with no edit to memlens.

``tutorials/lookup_plugin`` (a soft key-value lookup, ``SoftLookup``) is installed as a
distribution the way pip leaves one: its module plus ``memlens_lookup-0.1.0.dist-info`` whose
``entry_points.txt`` is written from the plugin's own ``pyproject.toml``. A fresh interpreter with
that folder on its path then runs the ``memlens`` command (``memlens.cli.main``, one process so the
import is paid once): ``list``, ``sweep --preset smoke``, ``report``, ``probe`` with the dictionary
and dimensionality probes, and ``temper --probes survival``. The registry must find the model
through the entry point: the driver checks ``memlens_lookup`` is not imported before the CLI runs.

Every number the CLI prints or writes is checked against ground truth computed here from the
checkpoint's own weights and data recipe (the attention table, the rank of the hidden vectors).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib  # standard library from Python 3.11, which memlens requires
from pathlib import Path

import pytest
import torch

PLUGIN = Path(__file__).resolve().parents[2] / "tutorials" / "lookup_plugin"


def install_fake_distribution(site: Path) -> None:
    """What ``pip install tutorials/lookup_plugin`` leaves in site-packages, without pip."""
    meta = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
    site.mkdir(parents=True, exist_ok=True)
    for module in tomllib.loads((PLUGIN / "pyproject.toml").read_text())["tool"]["setuptools"][
        "py-modules"
    ]:
        shutil.copy(PLUGIN / f"{module}.py", site / f"{module}.py")
    info = site / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n"
    )
    groups = [
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
        for group, eps in meta["entry-points"].items()
    ]
    (info / "entry_points.txt").write_text("\n".join(groups))


DRIVER = r"""
import contextlib, io, json, sys
import torch

assert "memlens_lookup" not in sys.modules
from memlens.cli import main

def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    assert rc == 0, (argv, rc, err.getvalue())
    return out.getvalue()

runs = {"list": cli("list")}
assert "memlens_lookup" in sys.modules  # loaded through the entry point, by the registry
runs["sweep"] = cli("sweep", "--model", "lookup", "--preset", "smoke", "--out", "sw",
                    "--no-progress")
runs["report"] = cli("report", "sw")
rows = [json.loads(line) for line in open("sw/results.jsonl")]
cells = {}
for r in rows:
    ck, inst = "sw/" + r["checkpoint"], str(r["instance"])
    T = r["T"]
    cells[T] = {"row": r}
    cells[T]["dictionary"] = cli("probe", ck, "--instance", inst, "--probe", "dictionary",
                                 "--json", f"dic{T}.json")
    cells[T]["dimensionality"] = cli("probe", ck, "--instance", inst, "--probe",
                                     "dimensionality", "--json", f"dim{T}.json")
    # ground truth from the checkpoint itself: its weights, its data recipe
    from memlens.persistence import load_with_recipes
    from memlens.registry import bundle_of
    model, specs = load_with_recipes(ck)
    model = model.select_instances([r["instance"]])
    train, _ = bundle_of(model).data(specs[r["instance"]])
    with torch.no_grad():
        _, cache = model.run_with_cache(train.inputs)
    A = cache["hook_attn"][:, 0].double()  # [T, slots]
    cells[T]["truth"] = {
        # float32 activations resolve singular values down to ~1e-7 σ_max, no further (a slot no
        # point attends to has attention ~1e-9: numerically zero, not a dimension)
        "rank": int(torch.linalg.matrix_rank(A, rtol=1e-6)),
        "attn": A.tolist(),
        "value": (model.V[0].T + model.b[0]).tolist(),  # [slots, out]: what each slot returns
        "target": train.target[:, 0].tolist(),
        "out": cache["hook_out"][:, 0].tolist(),
        "representation_hook": bundle_of(model).representation_hook,
    }
T8 = cells[8]["row"]
runs["temper"] = cli("temper", "sw/" + T8["checkpoint"], "--instance", str(T8["instance"]),
                     "--probes", "survival", "--temperatures", "1,100", "--chains", "2",
                     "--draws", "30", "--step-size", "1e-5", "--seed", "0", "--json", "t.json",
                     "--no-progress")
json.dump({"runs": runs, "cells": cells}, open("driver.json", "w"))
"""


@pytest.fixture(scope="module")
def walk(tmp_path_factory):
    """Install the plugin, run the CLI walk-through once; its outputs and the ground truth."""
    tmp = tmp_path_factory.mktemp("third_party")
    install_fake_distribution(tmp / "site")
    work = tmp / "work"
    work.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp / "site"), os.environ.get("PYTHONPATH", "")]),
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(DRIVER)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((work / "driver.json").read_text())
    data["work"] = work
    return data


def test_list_shows_the_plugin_with_its_source(walk):
    line = next(ln for ln in walk["runs"]["list"].splitlines() if ln.split()[:1] == ["lookup"])
    assert "memlens_lookup:BUNDLE" in line  # found through the entry point in the dist-info
    assert "smoke" in line  # its presets


def test_sweep_and_report_use_the_plugins_recipe_and_names(walk):
    work = walk["work"]
    rows = {c["row"]["T"]: c["row"] for c in walk["cells"].values()}
    assert sorted(rows) == [8, 256]  # the plugin's smoke grid
    # T = 8 points, 32 slots: memorised to float precision; T = 256 > 32 slots cannot be
    assert rows[8]["train_loss"] < 1e-6
    assert rows[256]["train_loss"] > 100 * rows[8]["train_loss"]
    assert rows[256]["test_loss"] < rows[8]["test_loss"]  # more data generalises better
    summary = (work / "sw" / "summary.md").read_text()
    assert summary.startswith("# Sweep summary: lookup")
    table = {
        int(cols[1]): cols[2:]
        for ln in summary.splitlines()
        if ln.startswith("| ") and (cols := [c.strip() for c in ln.split("|")])[1].isdigit()
    }
    assert sorted(table) == [8, 256]
    head = [
        c.strip()
        for c in next(ln for ln in summary.splitlines() if ln.startswith("| T")).split("|")[2:]
    ]
    cov = head.index("dictionary.coverage")
    assert float(table[8][cov]) == pytest.approx(rows[8]["dictionary.coverage"], abs=1e-3)
    for name in ("double_descent", "dimensionality", "weight_norms", "dictionary"):
        png = work / "sw" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_dictionary_by_name_is_the_attention_table(walk):
    """A memorising lookup stores each point in a slot of its own: the probe's table must be the
    one read straight off the attention pattern and the slot values."""
    cell = walk["cells"]["8"]
    truth = cell["truth"]
    A = torch.tensor(truth["attn"])  # [T, slots]
    value, target = torch.tensor(truth["value"]), torch.tensor(truth["target"])
    top, slot = A.max(-1)
    own = A.argmax(0)[slot] == torch.arange(len(A))  # the slot's key datum is this datum
    err = (value[slot] - target).norm(dim=-1) / target.norm(dim=-1)
    res = json.loads((walk["work"] / "dic8.json").read_text())
    T = len(A)
    want_cov = float((own & (top >= 0.75)).float().mean())
    assert want_cov == 1.0  # ground truth: a table, each point its own slot
    assert res["scalars"]["coverage"] == pytest.approx(want_cov)
    assert res["scalars"]["read_back_accuracy"] == pytest.approx(
        float((err <= 0.25).float().mean())
    )
    assert res["scalars"]["read_back_accuracy"] >= 0.95
    slots = [e["slots"] for e in res["entries"]]
    assert sorted(e["key"] for e in res["entries"]) == list(range(T))
    assert {e["key"]: e["slots"] for e in res["entries"]} == {
        j: [f"slot:{k}"] for j, k in enumerate(slot.tolist())
    }
    assert len(set(map(tuple, slots))) == T  # distinct slots: a lookup table
    for e in res["entries"]:  # the target is the point itself: the slot returns what it stores
        active = (target[e["key"]] > 0).nonzero().flatten().tolist()
        assert sorted(e["key_features"]) == sorted(active)
        stored = value[slot[e["key"]]]  # the slot's value, read off V and b
        assert sorted(e["value_features"]) == sorted((stored > 0.1).nonzero().flatten().tolist())
        assert set(e["value_features"]) <= set(active)  # it writes only the point's features
        assert e["match"] == pytest.approx(float(top[e["key"]]), abs=1e-5)
    assert "100%" in cell["dictionary"]  # the printed summary says so too


def test_dimensionality_by_name_reads_the_plugins_hook(walk):
    """Σ D* is the rank of the hidden vectors at the plugin's representation hook (hook_attn);
    T = 8 points in general position in 32 slots give D* = 1 for every point."""
    for key, cell in walk["cells"].items():
        T = int(key)
        res = json.loads((walk["work"] / f"dim{T}.json").read_text())
        assert cell["truth"]["representation_hook"] == "hook_attn"
        assert "hook_attn" in cell["dimensionality"]
        dstar = res["max_data_dim"][0]
        assert len(dstar) == T
        assert all(-1e-6 <= d <= 1 + 1e-6 for d in dstar)
        assert sum(dstar) == pytest.approx(cell["truth"]["rank"], abs=1e-3)
    assert walk["cells"]["8"]["truth"]["rank"] == 8


def test_temper_with_survival_names_the_plugins_circuits(walk):
    res = json.loads((walk["work"] / "t.json").read_text())
    surv = res["probes"]["survival"]
    T = 8
    n_slots = 32
    assert surv["names"] == [f"slot:{k}" for k in range(n_slots)] + [f"datum:{j}" for j in range(T)]
    truth = walk["cells"]["8"]["truth"]
    A = torch.tensor(truth["attn"])
    key = A.argmax(0)  # each slot's key datum
    want_slot = A[key, torch.arange(n_slots)]  # slot k's attention on its key datum at w*
    out, target = torch.tensor(truth["out"]), torch.tensor(truth["target"])
    want_datum = (out * target).sum(-1) / (target**2).sum(-1)
    ref = torch.tensor(surv["reference"][0])
    assert torch.allclose(ref[:n_slots], want_slot.float(), atol=1e-4)
    assert torch.allclose(ref[n_slots:], want_datum.float(), atol=1e-4)
    assert torch.allclose(ref[n_slots:], torch.ones(T), atol=1e-3)  # memorised: reproduced
    # the active slot circuits are exactly the slots of the dictionary's table
    active = {n for n, a in zip(surv["names"], surv["active"][0], strict=True) if a}
    dic = json.loads((walk["work"] / "dic8.json").read_text())
    assert {n for n in active if n.startswith("slot:")} == {e["slots"][0] for e in dic["entries"]}
    assert surv["temperatures"] == [1.0, 100.0]
    # a step of 1e-5 barely moves the weights, and the chains start dispersed (the default): they
    # never meet, so R-hat flags every cell unhealthy, in words, instead of reporting survival
    assert res["health"]["ok"] == [[False], [False]]
    for reasons in res["health"]["reasons"]:
        assert any(r.startswith("R-hat") for r in reasons[0]), reasons
