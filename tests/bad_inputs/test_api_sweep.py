"""Bad inputs to sweeps, probes, checkpoints and io: ``memlens.sweep`` (grid, task, train, probes,
out), ``probing`` and the probes with their arguments, ``load`` / ``load_with_recipes`` on bad
files, and the io helpers. A sweep row must leave ``tmp_path`` exactly as it was (no folder, no
config.json) and run no group."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from refusal import Case, params

import memlens as ml
from memlens import io
from memlens.data import Batch, SparseFeatures
from memlens.persistence import load, load_with_recipes
from probes.dictionary import DictionaryProbe
from probes.dimensionality import (
    DimensionalityProbe,
    data_dimensionality,
    dims_per_feature,
    feature_dimensionality,
    max_data_dimensionality,
)
from toy_models import Bottleneck

pytestmark = pytest.mark.user_errors

NAN, INF = math.nan, math.inf
N_FEAT, N_INST, T = 5, 2, 8


def bn() -> Bottleneck:
    return Bottleneck(n_features=N_FEAT, d_hidden=2, n_instances=N_INST)


def X(value: float | None = None, at=(3, 1, 2)) -> torch.Tensor:
    x = SparseFeatures(N_FEAT, 0.5).sample(T, N_INST, seed=0)
    if value is not None:
        x[at] = value
    return x


# ------------------------------------------------------------------------------------ sweep
def run_sweep(tmp: Path, **kw):
    args = {
        "grid": {"T": [4, 8]},
        "task": {"n_features": N_FEAT},
        "train": {"steps": 5},
        "probes": (),
        "out": tmp / "sweep",
        "progress": False,
    } | kw
    return ml.sweep(args.pop("model", "bottleneck"), **args)


def _sw(case_id, field, exc=ValueError, setup=None, **kw):
    return Case(f"sweep-{case_id}", lambda tmp: run_sweep(tmp, **kw), exc, field, setup)


def _file(name: str, text: str = "not a folder"):
    return lambda tmp: (tmp / name).write_text(text)


CASES: list[Case] = [
    _sw("model-int", "model", model=3),
    _sw("model-unknown", "nope", model="nope"),
    _sw("grid-none", "grid", grid=None),
    _sw("grid-empty", "grid", grid={}),
    _sw("grid-list", "grid", grid=[4, 8]),
    _sw("grid-unknown-axis", "bogus", grid={"T": [4], "bogus": [1]}),
    _sw("grid-no-T", r"'T'", grid={"seed": [0, 1]}),
    _sw("grid-T-empty", r"'T'", grid={"T": []}),
    *[_sw(f"grid-T-{v!r}", r"\bT\b", grid={"T": [4, v]}) for v in (0, -2, 2.5, "8", True)],
    _sw("grid-T-repeated", "repeats", grid={"T": [4, 4]}),
    *[_sw(f"grid-seed-{v!r}", "seed", grid={"T": [4], "seed": [0, v]}) for v in (1.5, "1")],
    _sw("grid-lr-negative", r"lr.*-1", grid={"T": [4], "lr": [0.01, -1]}),
    _sw("grid-sparsity", "sparsity", grid={"T": [4], "sparsity": [0.5, 1.0]}),
    _sw("grid-n_test-axis", "n_test", grid={"T": [4], "n_test": [8]}),
    _sw("task-unknown", "bogus", task={"bogus": 1}),
    *[
        _sw(f"task-{k}-{v!r}", k, task={"n_features": N_FEAT, k: v})
        for k, v in (
            ("sparsity", 1.5),
            ("sparsity", NAN),
            ("normalize", "no"),
            ("normalize", 1),
            ("n_test", 0),
            ("n_features", 0),
            ("n_features", 2.5),
            ("d_hidden", 0),
            ("tied", "yes"),
            ("data_version", 7),
        )
    ],
    _sw("train-unknown", "bogus", train={"bogus": 1}),
    *[
        _sw(f"train-{k}-{v!r}", k, train={"steps": 5, k: v})
        for k, v in (
            ("lr", NAN),
            ("lr", -1),
            ("lr", INF),
            ("lr", "0.01"),
            ("weight_decay", -1),
            ("weight_decay", NAN),
            ("warmup", 50),
            ("warmup", -1),
            ("steps", 0),
            ("steps", 2.5),
            ("schedule", "linear"),
            ("batch_size", 0),
            ("l1", -1),
            ("l1", NAN),
        )
    ],
    _sw("probes-survival", "survival", probes=["survival"]),
    _sw("probes-unknown", "nope", probes=["nope"]),
    _sw("probes-int", "probes", probes=[3]),
    _sw("probes-bad-argument", "bogus", probes=[("dictionary", {"bogus": 1})]),
    _sw("probes-bad-value", "rtol", probes=[("dictionary", {"rtol": 5})]),
    _sw("probes-twice", "twice", probes=["dictionary", "dictionary"]),
    _sw("probes-bad-hook", "hook_nope", probes=[("dimensionality", {"hook": "hook_nope"})]),
    _sw("device", "device", device="gpu9"),
    _sw("backend-unknown", "backend", backend="nope"),
    _sw("backend-object", "backend", TypeError, backend=object()),
    _sw("preset-unknown", "nope", preset="nope"),
]
# an out that is a file, or under a file, or another sweep: refused before anything is written
CASES += [
    Case(
        "sweep-out-file",
        lambda tmp: run_sweep(tmp, out=tmp / "afile"),
        FileExistsError,
        r"out=.*afile",
        _file("afile"),
    ),
    Case(
        "sweep-out-under-file",
        lambda tmp: run_sweep(tmp, out=tmp / "afile" / "sub"),
        FileExistsError,
        r"out=.*afile",
        _file("afile"),
    ),
    Case(
        "sweep-out-other-sweep",
        lambda tmp: run_sweep(tmp, out=tmp / "s", grid={"T": [4]}),
        ValueError,
        r"different|holds",
        lambda tmp: run_sweep(tmp, out=tmp / "s", grid={"T": [8]}),
    ),
]


# ------------------------------------------------------------------------------------ probes
def _probe(*ps, model=None, train=None):
    with ml.probing(model or bn(), *ps, train=train) as got:
        return got


def _pr(case_id, field, fn, exc=ValueError):
    return Case(f"probe-{case_id}", lambda tmp: fn(), exc, field)


CASES += [
    _pr("probing-no-probes", "probe", lambda: _probe()),
    _pr(
        "probing-model",
        "HookedToyModel",
        lambda: ml.probing("m", "dimensionality").__enter__(),
        TypeError,
    ),
    _pr("probing-unknown", "nope", lambda: _probe("nope")),
    _pr("probing-int", "probe", lambda: _probe(3), TypeError),
    _pr("probing-bad-pair", "pair", lambda: _probe(("dictionary",))),
    _pr("probing-bad-argument", "bogus", lambda: _probe(("dictionary", {"bogus": 1}))),
    _pr(
        "probing-train-nan",
        r"data inputs.*\[3, 1, 2\]",
        lambda: _probe("dimensionality", train=X(NAN)),
    ),
    _pr(
        "probing-train-instances",
        "instance",
        lambda: _probe("dictionary", train=SparseFeatures(N_FEAT, 0.5).sample(T, 3)),
    ),
    *[
        _pr(f"dictionary-{k}-{v!r}", k, lambda k=k, v=v: DictionaryProbe(**{k: v}))
        for k, v in (
            ("rtol", -1),
            ("rtol", NAN),
            ("rtol", "0.2"),
            ("min_share", 2),
            ("max_code", 0),
            ("max_code", 1.5),
            ("value_threshold", -1),
            ("min_margin", NAN),
            ("min_margin", 3),
        )
    ],
    _pr("dictionary-train-str", "Tensor", lambda: DictionaryProbe(train="x"), TypeError),
    _pr(
        "dictionary-run-nan",
        r"data inputs.*\[0, 1, 4\]",
        lambda: DictionaryProbe().run(bn(), X(INF, (0, 1, 4))),
    ),
    _pr(
        "dictionary-run-targets-nan",
        r"data targets.*\[1, 0, 0\]",
        lambda: DictionaryProbe().run(bn(), Batch(X(), targets=X(NAN, (1, 0, 0)))),
    ),
    _pr("dimensionality-hook-empty", "hook", lambda: DimensionalityProbe(hook="")),
    _pr("dimensionality-hook-int", "hook", lambda: DimensionalityProbe(hook=3)),
    _pr(
        "dimensionality-hook-unknown",
        "hook_nope",
        lambda: _probe(DimensionalityProbe(hook="hook_nope")),
    ),
    _pr(
        "dimensionality-run-nan",
        r"data inputs.*\[3, 1, 2\]",
        lambda: DimensionalityProbe().run(bn(), X(NAN)),
    ),
    _pr("dimensionality-run-no-train", "train", lambda: DimensionalityProbe().run(bn())),
    _pr(
        "data_dim-2d", r"\[:, None\]", lambda: data_dimensionality(torch.ones(4, 3), n_instances=1)
    ),
    _pr(
        "data_dim-instances",
        "n_instances",
        lambda: data_dimensionality(torch.ones(4, 3, 2), n_instances=2),
    ),
    *[
        _pr(
            f"data_dim-n_instances-{v!r}",
            "n_instances",
            lambda v=v: data_dimensionality(torch.ones(4, 2, 3), n_instances=v),
        )
        for v in (0, 1.5, True, None)
    ],
    _pr(
        "data_dim-nan",
        r"H.*NaN.*\[2, 1, 0\]",
        lambda: data_dimensionality(
            torch.ones(4, 2, 3)
            .index_fill_(0, torch.tensor([2]), 1)
            .masked_fill_(_at((4, 2, 3), (2, 1, 0)), NAN),
            n_instances=2,
        ),
    ),
    _pr(
        "max_data_dim-inf",
        r"H.*\[0, 0, 1\]",
        lambda: max_data_dimensionality(
            torch.ones(4, 2, 3).masked_fill_(_at((4, 2, 3), (0, 0, 1)), INF), n_instances=2
        ),
    ),
    _pr(
        "max_data_dim-rtol",
        "rtol",
        lambda: max_data_dimensionality(torch.ones(4, 2, 3), n_instances=2, rtol=1.5),
    ),
    _pr(
        "max_data_dim-list", "H", lambda: max_data_dimensionality([[1.0]], n_instances=1), TypeError
    ),
    _pr("feature_dim-2d", r"\[None\]", lambda: feature_dimensionality(torch.ones(2, 5))),
    _pr(
        "feature_dim-nan",
        r"W.*\[1, 0, 3\]",
        lambda: feature_dimensionality(
            torch.ones(2, 2, 5).masked_fill_(_at((2, 2, 5), (1, 0, 3)), NAN)
        ),
    ),
    _pr(
        "dims_per_feature-nan",
        r"W.*\[0, 1, 1\]",
        lambda: dims_per_feature(torch.ones(2, 2, 5).masked_fill_(_at((2, 2, 5), (0, 1, 1)), NAN)),
    ),
]


def _at(shape, idx) -> torch.Tensor:
    m = torch.zeros(shape, dtype=torch.bool)
    m[idx] = True
    return m


# ------------------------------------------------------------------------------ checkpoints
def _save(tmp: Path, name: str = "m.pt", recipes=None) -> Path:
    m = bn()
    ml.save(m, tmp / name, recipes)
    return tmp / name


def _payload(**changes):
    def setup(tmp: Path):
        p = _save(tmp)
        payload = torch.load(p, weights_only=True) | changes
        payload = {k: v for k, v in payload.items() if v is not None}
        torch.save(payload, p)

    return setup


def _nan_weights(tmp: Path):
    p = _save(tmp)
    payload = torch.load(p, weights_only=True)
    payload["state_dict"]["W"][1, 0, 2] = NAN
    torch.save(payload, p)


def _truncate(tmp: Path):
    p = _save(tmp)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _ld(case_id, field, setup, exc=ValueError, fn=load, name="m.pt"):
    return Case(f"{fn.__name__}-{case_id}", lambda tmp: fn(tmp / name), exc, field, setup)


CASES += [
    _ld("missing", r"m\.pt", None, FileNotFoundError),
    _ld("missing-recipes", r"m\.pt", None, FileNotFoundError, load_with_recipes),
    _ld("truncated", r"m\.pt.*truncated", _truncate),
    _ld("truncated-recipes", r"m\.pt.*truncated", _truncate, fn=load_with_recipes),
    _ld("empty", r"m\.pt", lambda tmp: (tmp / "m.pt").write_bytes(b"")),
    _ld("text", r"m\.pt", lambda tmp: (tmp / "m.pt").write_text("hello")),
    _ld("directory", r"m\.pt", lambda tmp: (tmp / "m.pt").mkdir(), (ValueError, IsADirectoryError)),
    _ld("nan-weights", r"m\.pt.*\bW\b.*NaN", _nan_weights),
    _ld("nan-weights-recipes", r"m\.pt.*\bW\b.*NaN", _nan_weights, fn=load_with_recipes),
    _ld(
        "not-memlens",
        r"m\.pt.*memlens checkpoint",
        lambda tmp: torch.save({"state_dict": {}}, tmp / "m.pt"),
    ),
    _ld("no-model-name", r"m\.pt.*model name", _payload(model=None)),
    _ld("unknown-model", r"nope", _payload(model="nope")),
    _ld("bad-config", r"m\.pt.*config", _payload(config="{not json")),
    _ld(
        "config-bad-value",
        r"d_hidden",
        _payload(
            config='{"d_hidden": 0, "importance": null, "n_features": 5, "n_instances": 2, '
            '"seed": 0, "tied": true}'
        ),
    ),
    _ld("no-weights", r"m\.pt.*weights", _payload(state_dict=None)),
    _ld(
        "wrong-shape-weights",
        r"m\.pt.*weights do not fit",
        _payload(
            state_dict={
                "W": torch.zeros(2, 3, 5),
                "b": torch.zeros(2, 5),
                "importance": torch.ones(2, 5),
            }
        ),
    ),
    _ld("bad-recipes", r"m\.pt.*recipes", _payload(recipes="[not json"), fn=load_with_recipes),
    Case("load-device", lambda tmp: load(tmp / "m.pt", device="gpu9"), ValueError, "device", _save),
    Case(
        "save-recipes-count",
        lambda tmp: ml.save(bn(), tmp / "s.pt", recipes=[{"T": 4}]),
        ValueError,
        "recipes",
    ),
    Case(
        "save-into-file",
        lambda tmp: ml.save(bn(), tmp / "afile" / "s.pt"),
        (FileExistsError, NotADirectoryError, ValueError),
        "afile",
        _file("afile"),
    ),
    # io
    Case(
        "io-read_json-missing",
        lambda tmp: io.read_json(tmp / "x.json"),
        FileNotFoundError,
        r"x\.json",
    ),
    Case(
        "io-read_json-garbage",
        lambda tmp: io.read_json(tmp / "x.json"),
        ValueError,
        r"x\.json",
        _file("x.json", "{oops"),
    ),
    Case(
        "io-write_json-under-file",
        lambda tmp: io.write_json(tmp / "afile" / "x.json", {}),
        (FileExistsError, NotADirectoryError),
        "afile",
        _file("afile"),
    ),
    Case(
        "io-write_json-unserialisable",
        lambda tmp: io.write_json(tmp / "x.json", {"a": object()}),
        TypeError,
        "object",
    ),
]


@pytest.mark.parametrize("case", params(CASES))
def test_refused(case: Case, tmp_path):
    case.check(tmp_path)
