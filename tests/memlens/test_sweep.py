"""memlens.sweep: packing equals separate training, resume after a kill, bad input, grouping."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import memlens
import memlens.sweep  # noqa: F401
from memlens.training import train

S = sys.modules["memlens.sweep"]

SMOKE_TASK = {"n_features": 20, "sparsity": 0.8, "d_hidden": 2, "n_test": 64}
SMOKE_TRAIN = {"steps": 40, "lr": 1e-2, "warmup": 4, "weight_decay": 1e-2}


def test_packed_cell_equals_cell_trained_alone(tmp_path):
    grid = {"T": [4, 7, 12], "seed": [0, 5]}
    rows = memlens.sweep(
        "bottleneck",
        grid,
        task=SMOKE_TASK,
        train=SMOKE_TRAIN,
        probes=(),
        out=tmp_path / "sw",
        progress=False,
    )
    assert len(rows) == 6
    # several cells share one packed model, with padding (different T in one group)
    groups = {}
    for r in rows:
        groups.setdefault(r["group"], set()).add(r["T"])
    assert any(len(ts) > 1 for ts in groups.values())
    for r in rows:
        spec = {
            **S.preset("bottleneck", "smoke")["task"],
            **SMOKE_TASK,
            "tied": True,
            "normalize": True,
            "data_version": memlens.data.DATA_VERSION,  # what the sweep recorded
            "T": r["T"],
            "seed": r["seed"],
        }
        alone = S.build_cell_model("bottleneck", spec)
        tr, te = S.cell_data("bottleneck", spec)
        res = train(alone, tr, test=te, progress=False, seed=0, **SMOKE_TRAIN)
        packed, _, _ = S.load_cell(tmp_path / "sw", r)
        for (name, a), b in zip(
            alone.state_dict().items(), packed.state_dict().values(), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
        assert r["train_loss"] == pytest.approx(float(res.train_loss[0]), rel=1e-4, abs=1e-6)
        assert r["test_loss"] == pytest.approx(float(res.test_loss[0]), rel=1e-4, abs=1e-6)
        # weight norms recorded per instance match the cell's own weights
        assert r["weight_norm"]["W"] == pytest.approx(float(alone.W.norm()), rel=1e-4)


def test_grouping_keeps_padding_waste_bounded():
    g, t, tr = S.normalise(
        "bottleneck",
        {"T": [2, 3, 5, 9, 17, 33, 65, 129, 257, 513], "seed": [0, 1, 2]},
        SMOKE_TASK,
        SMOKE_TRAIN,
    )
    groups = S.plan_groups("bottleneck", S._cells(g, t, tr))
    assert sum(len(x["cells"]) for x in groups) == 30
    for x in groups:
        Ts = [c["spec"]["T"] for c in x["cells"]]
        assert x["padded"] == len(Ts) * max(Ts) and x["useful"] == sum(Ts)
        assert x["padded"] / x["useful"] <= S.MAX_WASTE < 2
    assert len(groups) < 30  # packing actually happened


def _run_smoke(out, env_extra=None):
    code = (
        "import memlens\n"
        "memlens.sweep('bottleneck', {'T': [3, 10, 30, 100], 'seed': [0, 1]}, "
        f"task={SMOKE_TASK!r}, train={SMOKE_TRAIN!r}, probes=(), out={str(out)!r}, "
        "progress=False)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )


def _table(out):
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    drop = ("group_seconds", "train_seconds")
    return sorted(
        ({k: v for k, v in r.items() if k not in drop} for r in rows), key=lambda r: r["key"]
    )


def test_resume_after_kill_gives_same_table(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert _run_smoke(full).returncode == 0
    n_groups = json.loads((full / "config.json").read_text())["n_groups"]
    assert n_groups >= 3
    p = _run_smoke(killed, {S.EXIT_AFTER_ENV: "1"})
    assert p.returncode == 3  # died after the first group
    partial = _table(killed)
    assert 0 < len(partial) < len(_table(full))
    before = (killed / "results.jsonl").read_text()
    assert _run_smoke(killed).returncode == 0
    assert (killed / "results.jsonl").read_text().startswith(before)  # kept, not redone
    a, b = _table(full), _table(killed)
    assert [r["key"] for r in a] == [r["key"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for k in ("train_loss", "test_loss"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-7)
        assert ra["cell"] == rb["cell"]


@pytest.mark.user_errors
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"grid": {"T": [3]}, "preset": "laptop"}, "unknown preset"),
        ({"grid": {"T": [3], "width": [2]}}, "unknown grid axis"),
        ({"grid": {}}, "non-empty"),
        ({"grid": {"T": []}}, "no values"),
        ({"grid": {"seed": [0]}}, "needs a 'T' axis"),
        ({"grid": {"T": [0]}}, "positive ints"),
        ({"grid": {"T": [3]}, "task": {"sparsity": 1.0}}, "sparsity"),
        ({"grid": {"T": [3]}, "train": {"epochs": 3}}, "unknown train key"),
        ({"grid": {"T": [3]}, "probes": ("no-such-probe",)}, "unknown probe"),
    ],
)
def test_bad_input_raises_before_any_work(tmp_path, kwargs, match):
    out = tmp_path / "sw"
    kw = {"task": SMOKE_TASK, "train": SMOKE_TRAIN, "probes": (), **kwargs}
    with pytest.raises(ValueError, match=match):
        memlens.sweep("bottleneck", out=out, progress=False, **kw)
    assert not out.exists()


def test_unknown_model_raises(tmp_path):
    with pytest.raises(ValueError, match="unknown model"):
        memlens.sweep("resnet", {"T": [3]}, out=tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_out_holding_another_sweep_is_refused(tmp_path):
    out = tmp_path / "sw"
    kw = {
        "task": SMOKE_TASK,
        "train": {**SMOKE_TRAIN, "steps": 5},
        "probes": (),
        "out": out,
        "progress": False,
    }
    memlens.sweep("bottleneck", {"T": [3]}, **kw)
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(ValueError, match="different sweep"):
        memlens.sweep("bottleneck", {"T": [4]}, **kw)
    assert sorted(p.name for p in out.rglob("*")) == before
    # the same sweep resumes: nothing to do, same rows
    assert len(memlens.sweep("bottleneck", {"T": [3]}, **kw)) == 1


def test_presets_cover_every_setting():
    for model in ("bottleneck", "mlp", "unembed"):
        for name in ("paper", "cpu", "smoke"):
            p = S.preset(model, name)
            assert set(p) == {"grid", "task", "train"}
            S.normalise(model, p["grid"], p["task"], p["train"])
    paper = S.preset("bottleneck", "paper")
    assert paper["task"]["n_features"] == 10_000 and paper["task"]["sparsity"] == 0.999
    assert paper["train"] == {"steps": 50_000, "lr": 1e-3, "warmup": 2_500, "weight_decay": 1e-2}
    cpu = S.preset("bottleneck", "cpu")
    assert cpu["task"]["n_features"] == 1000 and cpu["task"]["sparsity"] == 0.99
    assert len(cpu["grid"]["T"]) >= 12 and len(cpu["grid"]["seed"]) >= 3


@pytest.mark.parametrize("model", ["mlp", "unembed"])
def test_embedded_settings_sweep_and_pack(tmp_path, model):
    p = S.preset(model, "smoke")
    rows = memlens.sweep(
        model,
        {"T": [3, 5], "seed": [0]},
        task=p["task"],
        train={**p["train"], "steps": 10},
        probes=(),
        out=tmp_path / model,
        progress=False,
    )
    assert [r["T"] for r in rows] == [3, 5]
    assert all(r["train_loss"] >= 0 and r["test_loss"] > 0 for r in rows)
