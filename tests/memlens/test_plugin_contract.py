"""The plugin contract (issue 10): bundles, the probe protocol, one layout, and the defects fixed.

Each test here failed on memlens 0.1.0."""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

import pytest
import torch

import memlens as ml
from memlens import hooked, io
from memlens.data import SparseFeatures
from memlens.probe import Probe
from memlens.registry import MODELS, PROBES
from probes.dimensionality import DimensionalityProbe
from toy_models import Bottleneck, BottleneckTask, MLPBlock, MLPTask

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------- no names in the core
def test_core_names_no_builtin_model():
    pattern = re.compile(r"""['"](bottleneck|mlp|unembed)['"]""")
    hits = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in (ROOT / "memlens").rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


def _private_imports(path: Path) -> list[str]:
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0]
            in (
                "memlens",
                "probes",
                "toy_models",
            )
        ):
            bad += [f"{path.name}: {node.module}.{a.name}" for a in node.names if a.name[0] == "_"]
    return bad


def test_no_private_helper_is_imported_across_modules():
    files = [p for d in ("memlens", "probes", "toy_models") for p in (ROOT / d).rglob("*.py")]
    assert [b for p in files for b in _private_imports(p)] == []


def test_public_functions_do_not_shadow_their_modules():
    import importlib

    assert callable(ml.train) and callable(ml.sweep) and callable(ml.temper)
    # each job's module has a name of its own, importable without sys.modules tricks
    assert importlib.import_module("memlens.training").train is ml.train


# ------------------------------------------------------------------------- bundles
def test_builtin_models_are_bundles_with_recipes_and_presets():
    for name in ml.list_models():
        b = ml.get_bundle(name)
        if b.make_task is None:
            continue
        assert b.model is ml.get_model(name) and b.name == name
        assert {"smoke", "cpu", "paper"} <= set(b.presets)
        spec = {**b.preset("smoke")["task"], "T": 5, "seed": 3}
        model = b.build(spec)
        train, test = b.data(spec)
        assert model.n_instances == 1 and len(train) == 5 and len(test) == spec["n_test"]
        assert model.representation_hook in model.hook_dict
        # the same spec gives the same data and the same initial weights
        again = b.build(spec)
        assert all(
            torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters(), strict=True)
        )
        assert torch.equal(b.data(spec)[0].inputs, train.inputs)


def test_unknown_spec_key_names_it():
    b = ml.get_bundle("mlp")
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['d_hiden'\]"):
        b.build({"T": 3, "d_hiden": 4})


def test_checkpoint_carries_its_data_recipe(tmp_path):
    b = ml.get_bundle("bottleneck")
    spec = {**b.preset("smoke")["task"], "T": 7, "seed": 2}
    model = b.build(spec)
    ml.save(model, tmp_path / "m.pt", recipes=[spec])
    loaded, recipes = ml.load_with_recipes(tmp_path / "m.pt")
    assert recipes == [b.full_spec(spec)] and recipes[0]["data_version"] == 2
    assert torch.equal(ml.bundle_of(loaded).data(recipes[0])[0].inputs, b.data(spec)[0].inputs)
    with pytest.raises(ValueError, match="recipes: 2 data recipes for a model with n_inst"):
        ml.save(model, tmp_path / "x.pt", recipes=[spec, spec])


def test_checkpoint_of_memlens_0_1_still_loads_with_its_cells(tmp_path):
    """Sweeps and `memlens train` of 0.1 wrote the recipe as "cells" beside "sweep_model"."""
    spec = {"n_features": 40, "sparsity": 0.9, "normalize": True, "n_test": 16, "d_hidden": 2}
    spec |= {"tied": True, "T": 4, "seed": 1}
    model = Bottleneck(40, 2, seed=1)
    io.save_checkpoint(
        tmp_path / "old.pt",
        {
            "model": "bottleneck",
            "config": json.dumps(model.cfg.to_dict(), sort_keys=True),
            "state_dict": model.state_dict(),
            "sweep_model": "bottleneck",
            "cells": json.dumps([spec], sort_keys=True),
        },
    )
    loaded, recipes = ml.load_with_recipes(tmp_path / "old.pt")
    assert torch.equal(loaded.W, model.W) and recipes == [{**spec, "data_version": 1}]


def test_checkpoint_with_nan_weights_is_refused(tmp_path):
    model = Bottleneck(5, 2)
    with torch.no_grad():
        model.W[0, 0, 0] = float("nan")
    ml.save(model, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match=r"weights \['W'\] hold NaN or inf"):
        ml.load(tmp_path / "nan.pt")


def test_bare_model_class_registers_and_says_what_a_sweep_needs():
    class Bare(Bottleneck):
        pass

    ml.register_model("test-bare")(Bare)
    try:
        assert ml.get_model("test-bare") is Bare
        with pytest.raises(ValueError, match="has no data recipe"):
            ml.get_bundle("test-bare").data({"T": 3})
    finally:
        MODELS.unregister("test-bare")


def test_unregistered_subclass_does_not_report_its_parents_name():
    class MyDim(DimensionalityProbe):
        pass

    class MyBottleneck(Bottleneck):
        pass

    assert DimensionalityProbe().registered_name == "dimensionality"
    assert MyDim().registered_name == "MyDim"
    assert MODELS.name_of(MyBottleneck(4, 2)) is None
    assert PROBES.name_of(MyDim) is None
    # but it inherits its parent's data recipe and dictionary reader
    assert ml.bundle_of(MyBottleneck(4, 2)).read_dictionary is not None


# ------------------------------------------------------------------------- the probe protocol
def test_names_filter_lambda_works_as_documented():
    class Posts(Probe):
        names_filter = lambda name: name.endswith("post")  # noqa: E731  (as the docstring says)

        def result(self):
            return self.acts

    mlp = MLPBlock(d_model=3, d_mlp=4, d_out=2)
    with ml.probing(mlp, Posts()) as (p,):
        mlp(torch.randn(5, 1, 3))
    assert list(p.acts) == ["hook_post"] and p.acts["hook_post"][0].shape == (5, 1, 4)
    # TransformerLens's other forms: a name and a list of names
    for f in ("hook_pre", ["hook_pre"]):
        probe = Posts()
        probe.names_filter = f
        assert probe.hook_names(mlp) == ["hook_pre"]


def test_probe_by_name_takes_arguments_and_defaults_to_the_models_representation():
    task = MLPTask(SparseFeatures(12, 0.8, normalize=True), d_model=4, n_instances=2, seed=0)
    train = task.sample(30, seed=1)
    mlp = MLPBlock(d_mlp=8, **task.model_kwargs())
    # by name, no arguments: reads the MLP's representation hook, hook_post
    with ml.probing(mlp, "dimensionality", train=train) as (dim,):
        _, cache = mlp.run_with_cache(train.inputs)
    H = cache["hook_post"].double()  # [batch, inst, m]
    for i in range(2):
        Hi = H[:, i]
        lev = ((Hi @ torch.linalg.pinv(Hi.T @ Hi, hermitian=True)) * Hi).sum(-1)
        got = dim.result().max_data_dim[i].double()
        assert torch.allclose(got, lev, atol=1e-4)
    # with an argument, as a (name, kwargs) pair
    with ml.probing(mlp, ("dimensionality", {"hook": "hook_pre"}), train=train) as (pre,):
        mlp(train.inputs)
    assert pre.hook == "hook_pre" and pre.result().hidden.shape == (30, 2, 8)
    with pytest.raises(ValueError, match=r"takes no argument\(s\) \['hok'\]"):
        with ml.probing(mlp, ("dimensionality", {"hok": "hook_pre"})):
            pass
    with pytest.raises(ValueError, match="hook_post"):  # an unknown hook lists the model's own
        with ml.probing(mlp, ("dimensionality", {"hook": "hook_hidden"})):
            pass


# ------------------------------------------------------------------------- defects
def test_l1_penalty_does_not_grow_with_row_chunking(monkeypatch):
    """The L1 gradient of ``sparse_activations`` is that of coeff · mean_points Σ|a|, whether
    ``loss()`` evaluates the batch in one piece or in many row chunks."""
    task = MLPTask(SparseFeatures(12, 0.7, normalize=True), d_model=4, n_instances=2, seed=0)
    batch = task.sample(64, seed=3)

    def grads(chunk_elements, coeff):
        monkeypatch.setattr(hooked, "LOSS_CHUNK_ELEMENTS", chunk_elements)
        model = MLPBlock(d_mlp=16, **task.model_kwargs(), seed=4)
        with ml.sparse_activations(model, coeff):
            model.loss(batch).sum().backward()
        return model.W_in.grad.clone()

    coeff = 0.3
    whole, chunked = grads(2**20, coeff), grads(2 * 16 * 8, coeff)  # 8 rows per chunk
    assert torch.allclose(whole, chunked, atol=1e-5)
    # the ground truth: autograd through the explicit penalty
    model = MLPBlock(d_mlp=16, **task.model_kwargs(), seed=4)
    acts = []
    with model.hooks(fwd_hooks=[("hook_post", lambda a, hook: acts.append(a))]):
        out = model(batch.inputs)  # activations that keep their graph (run_with_cache detaches)
    data_loss = ((out - batch.targets) ** 2).sum(-1).mean(0).sum()
    (data_loss + coeff * acts[0].abs().sum(-1).mean(0).sum()).backward()
    assert torch.allclose(whole, model.W_in.grad, atol=1e-5)


def test_jsonable_writes_strict_json_and_reads_back_non_finite_values(tmp_path):
    obj = {"a": float("nan"), "b": float("inf"), "c": torch.tensor([1.0, -math.inf, math.nan])}
    io.write_json(tmp_path / "x.json", obj)
    text = (tmp_path / "x.json").read_text()

    def refuse(token):
        raise ValueError(f"non-JSON token {token}")

    back = json.loads(text, parse_constant=refuse)  # strict JSON: no NaN/Infinity tokens
    assert back["a"] is None and io.number(back["b"]) == math.inf
    c = [io.number(v) for v in back["c"]]
    assert c[0] == 1.0 and c[1] == -math.inf and math.isnan(c[2])
    assert 1e308 not in (back["b"], *back["c"])


def test_bottleneck_task_lives_with_its_model():
    task = BottleneckTask(SparseFeatures(6, 0.5), n_instances=2)
    assert Bottleneck(**task.model_kwargs(), d_hidden=2).n_instances == 2


def test_the_application_finds_its_models_by_preset():
    """The quickstart names no model: it takes the bundles with its presets, in name order, and
    a missing preset is refused with what needed it."""
    from memlens.bundle import bundles_with

    assert [b.name for b in bundles_with("story")] == ["mlp"]
    assert [b.name for b in bundles_with("memorised")] == ["unembed"]
    assert [b.name for b in bundles_with("quickstart")] == sorted(
        n for n in MODELS.names() if "quickstart" in ml.get_bundle(n).presets
    )
    assert bundles_with("no-such-preset") == []
    with pytest.raises(ValueError, match=r"the quickstart's step 3 needs .*'no-such-preset'"):
        bundles_with("no-such-preset", needed_by="the quickstart's step 3")
