"""memlens.sweeps: packing equals separate training, every bad input refused before any file,
grouping, presets, the backend seam. (The store's locking and recovery: test_store.py.)"""

from __future__ import annotations

import math
import pickle
import re
import statistics
from pathlib import Path

import pytest
import torch

import memlens
from memlens import sweeps as S
from memlens.registry import get_bundle
from memlens.sweeps.grid import make_cells
from memlens.training import train

B = get_bundle("bottleneck")

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
        spec = {**SMOKE_TASK, "T": r["T"], "seed": r["seed"]}
        alone = B.build(spec)
        tr, te = B.data(spec)
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
        B,
        {"T": [2, 3, 5, 9, 17, 33, 65, 129, 257, 513], "seed": [0, 1, 2]},
        SMOKE_TASK,
        SMOKE_TRAIN,
    )
    groups = S.plan_groups(B, make_cells(g, t, tr))
    assert sum(len(x["cells"]) for x in groups) == 30
    for x in groups:
        Ts = [c["spec"]["T"] for c in x["cells"]]
        assert x["padded"] == len(Ts) * max(Ts) and x["useful"] == sum(Ts)
        assert x["padded"] / x["useful"] <= S.MAX_WASTE < 2
    assert len(groups) < 30  # packing actually happened


BAD_INPUTS = [
    ({"grid": {"T": [3]}, "preset": "laptop"}, "unknown preset"),
    ({"grid": {"T": [3], "width": [2]}}, "unknown grid axis"),
    ({"grid": {}}, "non-empty"),
    ({"grid": {"T": []}}, "no values"),
    ({"grid": {"seed": [0]}}, "needs a 'T' axis"),
    ({"grid": {"T": [0]}}, "T .*positive int"),
    ({"grid": {"T": [3, 2.5]}}, "T .*positive int"),
    ({"grid": {"T": [3], "seed": [1.7]}}, "seed must be an int"),
    ({"grid": {"T": [3]}, "train": {"epochs": 3}}, "unknown train key"),
    ({"grid": {"T": [3]}, "probes": ("no-such-probe",)}, "unknown probe"),
    # issue 11's late failures: each passed the early checks and failed after config.json
    ({"grid": {"T": [3]}, "train": {"weight_decay": -1}}, "weight_decay"),
    ({"grid": {"T": [3]}, "train": {"lr": math.nan}}, "lr"),
    ({"grid": {"T": [3]}, "train": {"lr": math.inf}}, "lr"),
    ({"grid": {"T": [3]}, "train": {"lr": 0.0}}, "lr"),
    ({"grid": {"T": [3]}, "train": {**SMOKE_TRAIN, "warmup": 100}}, r"warmup .* \[0, steps=40\]"),
    ({"grid": {"T": [3], "lr": [0.01, -1]}}, "lr .*got -1"),
    ({"grid": {"T": [3]}, "probes": ("survival",)}, "'survival' streams over tempered"),
    ({"grid": {"T": [3]}, "task": {"n_test": 0}}, "n_test"),
    ({"grid": {"T": [3]}, "task": {"sparsity": 1.0}}, "sparsity"),
    ({"grid": {"T": [3], "sparsity": [0.5, -0.1]}}, "sparsity"),
    ({"grid": {"T": [3]}, "task": {"normalize": "no"}}, "normalize must be a bool"),
    ({"grid": {"T": [3]}, "task": {"tied": "yes"}}, "tied must be a bool"),
    ({"grid": {"T": [3]}, "task": {"n_features": 20.5}}, "n_features must be an int"),
    ({"grid": {"T": [3], "d_hidden": [2, 0]}}, "d_hidden"),
    ({"grid": {"T": [3]}, "train": {"steps": 10.0}}, "steps must be a positive int"),
    ({"grid": {"T": [3]}, "train": {"batch_size": 0}}, "batch_size"),
    ({"grid": {"T": [3]}, "train": {"l1": -1.0}}, "l1"),
    ({"grid": {"T": [3]}, "train": {"schedule": "linear"}}, "schedule"),
    ({"grid": {"T": [3]}, "probes": [("dimensionality", {"hook": "hook_nope"})]}, "hook_nope"),
    ({"grid": {"T": [3]}, "probes": [("dimensionality", {"bogus": 1})]}, "bogus"),
    ({"grid": {"T": [3]}, "probes": ["dimensionality", "dimensionality"]}, "given twice"),
    ({"grid": {"T": [3]}, "device": "nonsense"}, "device"),
    ({"grid": {"T": [3]}, "backend": "nope"}, "unknown backend"),
    ({"grid": {"T": [3]}, "lock_timeout": -1}, "lock_timeout"),
]


@pytest.mark.user_errors
@pytest.mark.parametrize("kwargs, match", BAD_INPUTS)
def test_bad_input_is_refused_before_any_work_or_file(tmp_path, monkeypatch, kwargs, match):
    def no_work(job):
        raise AssertionError("a group ran although the input was bad")

    monkeypatch.setattr(S.cells, "run_group", no_work)
    out = tmp_path / "sw"
    kw = {"task": SMOKE_TASK, "train": SMOKE_TRAIN, "probes": (), **kwargs}
    with pytest.raises(ValueError, match=match):
        memlens.sweep("bottleneck", out=out, progress=False, **kw)
    assert not out.exists()


def test_a_corrected_rerun_after_a_refused_one_works(tmp_path):
    out = tmp_path / "sw"
    kw = {"task": SMOKE_TASK, "probes": (), "out": out, "progress": False}
    with pytest.raises(ValueError, match="weight_decay"):
        memlens.sweep("bottleneck", {"T": [3]}, train={**SMOKE_TRAIN, "weight_decay": -1}, **kw)
    rows = memlens.sweep("bottleneck", {"T": [3]}, train={**SMOKE_TRAIN, "steps": 5}, **kw)
    assert len(rows) == 1 and rows[0]["T"] == 3


def test_out_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "afile"
    f.write_text("mine")
    with pytest.raises(FileExistsError, match="is a file"):
        memlens.sweep("bottleneck", {"T": [3]}, task=SMOKE_TASK, probes=(), out=f, progress=False)
    assert f.read_text() == "mine"


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
        b = get_bundle(model)
        # claims (issue 20): the final layer has no phase preset (its bump did not move with width)
        for name in ("paper", "cpu", "smoke") + (("phase",) if model != "unembed" else ()):
            p = b.preset(name)
            assert set(p) == {"grid", "task", "train"}
            cells = make_cells(*S.normalise(b, p["grid"], p["task"], p["train"]))
            S.grid.check_cells(b, cells)
        # the phase preset varies T and one more axis, so `memlens report` draws a phase diagram
        phase = b.preset("phase")["grid"] if model != "unembed" else None  # claims: see above
        assert (
            phase is None
            or len(phase["T"]) >= 5
            and any(len(v) >= 3 for a, v in phase.items() if a not in ("T", "seed"))
        )
    paper = B.preset("paper")
    assert paper["task"]["n_features"] == 10_000 and paper["task"]["sparsity"] == 0.999
    assert paper["train"] == {"steps": 50_000, "lr": 1e-3, "warmup": 2_500, "weight_decay": 1e-2}
    cpu = B.preset("cpu")
    assert cpu["task"]["n_features"] == 1000 and cpu["task"]["sparsity"] == 0.99
    assert len(cpu["grid"]["T"]) >= 12 and len(cpu["grid"]["seed"]) >= 3


@pytest.mark.parametrize("model", ["mlp", "unembed"])
def test_embedded_settings_sweep_and_pack(tmp_path, model):
    p = get_bundle(model).preset("smoke")
    rows = memlens.sweep(
        model,
        {"T": [3, 5], "seed": [0]},
        task=p["task"],
        train={**p["train"], "steps": 10, "warmup": 2},
        probes=(),
        out=tmp_path / model,
        progress=False,
    )
    assert [r["T"] for r in rows] == [3, 5]
    assert all(r["train_loss"] >= 0 and r["test_loss"] > 0 for r in rows)


# ----------------------------------------------------------------------------- the backend seam
def test_a_backend_runs_the_groups_and_the_driver_writes_them(tmp_path):
    """Any object with run(jobs) can run the groups: here out of order, with jobs and results
    crossing a pickle boundary as they would to and from worker processes. The driver alone
    writes the store, and the table is the same as the local backend's."""

    class Reversed:
        def __init__(self):
            self.seen = []

        def run(self, jobs):
            for job in reversed(list(jobs)):
                self.seen.append(job.index)
                result = S.run_group(pickle.loads(pickle.dumps(job)))
                yield pickle.loads(pickle.dumps(result))

    kw = dict(task=SMOKE_TASK, train=SMOKE_TRAIN, probes=(), progress=False)
    grid = {"T": [3, 10, 30], "seed": [0, 1]}
    backend = Reversed()
    rows = memlens.sweep("bottleneck", grid, out=tmp_path / "a", backend=backend, **kw)
    local = memlens.sweep("bottleneck", grid, out=tmp_path / "b", **kw)
    assert backend.seen == sorted(backend.seen, reverse=True) and len(backend.seen) >= 2
    assert [r["key"] for r in rows] == [r["key"] for r in local]
    for a, b in zip(rows, local, strict=True):
        assert a["test_loss"] == pytest.approx(b["test_loss"], rel=1e-5)
        assert a["checkpoint_sha256"] == b["checkpoint_sha256"]


# ----------------------------------------------------------------------------- figures
TIMES_TEN_TO_THE_ZERO = re.compile(r"(×|\\times)\s*10\s*(⁰|\^\{?0\}?)")


def _tick_labels(fig) -> list[str]:
    fig.canvas.draw()
    out = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            out += [t.get_text() for t in axis.get_ticklabels(which="both")]
    return out


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "sw"
    memlens.sweep("bottleneck", out=out, preset="smoke", progress=False)
    return out


def test_plain_tick_labels():
    from memlens.plot import plain_number

    cases = {3: "3", 30: "30", 2000: "2000", 0.003: "0.003", 0.0025: "0.0025", 1.25: "1.25"}
    cases |= {1e5: "10⁵", 5e-5: "5×10⁻⁵", 1e-8: "10⁻⁸", 2.5e6: "2.5×10⁶", 0.5: "0.5"}
    assert {v: plain_number(v) for v in cases} == cases


def test_report_figures_state_units_use_plain_ticks_and_mark_a_partial_sweep(smoke_sweep):
    config, rows = S.read_results(smoke_sweep)
    assert len(rows) == config["n_cells"] == 8
    from memlens.sweeps import figures as F
    from probes import sweep_curves as C

    for fn in (F.double_descent, C.dimensionality, F.weight_norms, C.dictionary):
        fig = fn(rows, config)
        labels = _tick_labels(fig)
        assert not [t for t in labels if TIMES_TEN_TO_THE_ZERO.search(t)], (fn.__name__, labels)
        for ax in fig.axes:
            assert "points" in ax.get_xlabel()  # T in training points
            assert re.search(r"loss per point|dimensions per|fraction of|norm", ax.get_ylabel())
        assert not any("PARTIAL" in t.get_text() for t in fig.texts)
        partial = fn(rows[:6], config)
        assert [t.get_text() for t in partial.texts if "PARTIAL" in t.get_text()] == [
            "PARTIAL: 6 of 8 cells finished"
        ], fn.__name__
    # S = 0.9 puts T(1-S) = 10 at T = 100, beyond the grid's T <= 24: the axis must not stretch
    fig = F.double_descent(rows, config)
    assert all(ax.get_xlim()[1] <= 24 * 1.5 for ax in fig.axes)


def test_dimensionality_figure_keeps_dstar_visible_and_the_legend_off_the_data(smoke_sweep):
    from probes import sweep_curves as C

    config, rows = S.read_results(smoke_sweep)
    fig = C.dimensionality(rows, config)
    ax = fig.axes[0]
    assert ax.get_title().startswith("Data and feature dimensionality at hook_hidden")
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    ref = next(v for k, v in lines.items() if k.startswith("min(m, T)/T"))
    dstar = lines["max data dim. D*"]
    assert dstar.get_zorder() > ref.get_zorder()  # D* is drawn over the bound it sits on
    # the bound is min(m, T)/T with m = 2, the width of hook_hidden
    assert list(ref.get_ydata()) == pytest.approx([2 / 3, 2 / 6, 2 / 12, 2 / 24])
    fig.canvas.draw()
    box = ax.get_legend().get_window_extent().transformed(ax.transAxes.inverted())
    assert box.x0 >= 1.0  # the legend sits right of the axes, not on the data


def test_dimensionality_figure_of_a_model_without_features(tmp_path):
    from probes import sweep_curves as C

    out = tmp_path / "u"
    p = get_bundle("unembed").preset("smoke")
    memlens.sweep(
        "unembed",
        {"T": [3, 6, 12], "seed": [0]},
        task=p["task"],
        train={**p["train"], "steps": 10, "warmup": 2},
        probes=("dimensionality",),
        out=out,
        progress=False,
    )
    config, rows = S.read_results(out)
    title = C.dimensionality(rows, config).axes[0].get_title()
    assert title.startswith("Data dimensionality at hook_logits") and "feature" not in title


def test_phase_diagram_cells_are_medians_over_seeds(tmp_path):
    from memlens.sweeps.phase import phase_axes, phase_grid

    out = tmp_path / "ph"
    grid = {"T": [3, 12], "d_hidden": [1, 2], "seed": [0, 1, 2]}
    memlens.sweep(
        "bottleneck",
        grid,
        task=SMOKE_TASK,
        train={**SMOKE_TRAIN, "steps": 20},
        probes=("dictionary",),
        out=out,
        progress=False,
    )
    config, rows = S.read_results(out)
    assert phase_axes(config) == ("d_hidden", [])
    Z = phase_grid(rows, [3, 12], [1, 2], "d_hidden", "test_loss")
    for i, m in enumerate([1, 2]):
        for j, T in enumerate([3, 12]):
            losses = [r["test_loss"] for r in rows if r["T"] == T and r["cell"]["d_hidden"] == m]
            assert len(losses) == 3 and Z[i, j] == pytest.approx(statistics.median(losses))
    rep = S.report(out)
    assert any(f.endswith("phase.png") for f in rep["figures"])
    assert "## d_hidden=1" in Path(rep["summary"]).read_text()


def test_a_bump_is_a_rise_after_a_descent():
    from memlens.sweeps.phase import bump

    assert bump([1.0, 0.9, 1.2, 0.8]) == 2  # descends, rises 33%, descends: a bump
    assert bump([2.0, 1.0, 1.5, 0.5]) == 2
    assert bump([1.1, 1.0, 1.02, 0.9]) is None  # a 2% wiggle is not a bump
    assert bump([1.0, 1.3, 1.4]) is None  # still rising at the largest T
    assert bump([1.0, 2.0]) is None  # too few values


def test_l1_reaches_the_trainer(tmp_path):
    """A sweep's l1 setting trains each cell exactly as memlens.train(..., l1=...) does alone."""
    mlp = get_bundle("mlp")
    task = {**mlp.preset("smoke")["task"], "n_test": 32}
    trn = {"steps": 30, "lr": 1e-2, "warmup": 3, "weight_decay": 0.0}
    rows = memlens.sweep(
        "mlp",
        {"T": [8], "l1": [0.0, 0.3]},
        task=task,
        train=trn,
        probes=(),
        out=tmp_path / "sw",
        progress=False,
    )
    for r in rows:
        spec = {**task, "T": 8, "seed": 0}
        alone = mlp.build(spec)
        tr, te = mlp.data(spec)
        res = train(alone, tr, test=te, progress=False, l1=r["cell"]["l1"], **trn)
        assert r["test_loss"] == pytest.approx(float(res.test_loss[0]), rel=1e-4)
    assert rows[0]["test_loss"] != pytest.approx(rows[1]["test_loss"], rel=1e-3)


def test_a_sweep_that_diverged_before_any_cell_finished_does_not_poison_its_folder(tmp_path):
    out = tmp_path / "sw"
    kw = {"task": SMOKE_TASK, "probes": (), "out": out, "progress": False}
    with pytest.raises(FloatingPointError, match=r'cell\(s\) \{"T": 3, "seed": 0\}'):
        memlens.sweep("bottleneck", {"T": [3]}, train={**SMOKE_TRAIN, "lr": 1e30}, **kw)
    with pytest.warns(S.StoreWarning, match="finished no cell; replaced it"):
        rows = memlens.sweep("bottleneck", {"T": [3]}, train=SMOKE_TRAIN, **kw)
    assert len(rows) == 1 and math.isfinite(rows[0]["test_loss"])
