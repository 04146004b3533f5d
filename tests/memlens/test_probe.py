"""The probe machinery: probing() hygiene, validation, and the third-party plugin path."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import memlens as ml
from memlens.probe import Probe, ProbeResult
from toy_models import Bottleneck, MLPBlock


class Recorder(Probe):
    """Keeps every activation at hook_hidden (a minimal user-defined probe)."""

    hooks = ("hook_hidden",)

    def result(self) -> ProbeResult:
        return ProbeResult()


def n_hooks(model) -> int:
    return sum(len(hp.fwd_hooks) + len(hp.bwd_hooks) for hp in model.hook_dict.values())


@pytest.fixture
def model():
    return Bottleneck(n_features=6, d_hidden=2, n_instances=3, seed=1)


@pytest.fixture
def x():
    return ml.SparseFeatures(6, 0.5).sample(10, n_instances=3, seed=0)


def test_hooks_removed_after_normal_exit_and_after_exception(model, x):
    with ml.probing(model, Recorder()) as (rec,):
        assert n_hooks(model) == 1
        model(x)
    assert n_hooks(model) == 0
    assert torch.equal(rec.acts["hook_hidden"][0], model.run_with_cache(x)[1]["hook_hidden"])
    with pytest.raises(RuntimeError, match="boom"):
        with ml.probing(model, Recorder(), "dimensionality"):
            assert n_hooks(model) == 2
            model(x)
            raise RuntimeError("boom")
    assert n_hooks(model) == 0
    # the forward pass itself raising (bad input inside the block) also releases the hooks
    with pytest.raises(ValueError):
        with ml.probing(model, Recorder()):
            model(torch.zeros(4, 3, 7))
    assert n_hooks(model) == 0


def test_contexts_nest(model, x):
    with ml.probing(model, Recorder()) as (outer,):
        model(x)
        with ml.probing(model, Recorder()) as (inner,):
            assert n_hooks(model) == 2
            model(x)
        assert n_hooks(model) == 1
        model(x)
    assert n_hooks(model) == 0
    assert len(outer.acts["hook_hidden"]) == 3
    assert len(inner.acts["hook_hidden"]) == 1


def test_unknown_hook_raises_before_anything_runs(model, x):
    ran = []

    class Bad(Probe):
        hooks = ("hook_hidden", "hook_nope")

        def capture(self, name, act):
            ran.append(name)

    with pytest.raises(ValueError, match="hook_nope") as err:
        with ml.probing(model, Recorder(), Bad()):
            ran.append("body")
    assert "hook_in" in str(err.value) and "hook_hidden" in str(err.value)
    assert ran == [] and n_hooks(model) == 0
    mlp = MLPBlock(d_model=3, d_mlp=4, d_out=2)
    with pytest.raises(ValueError, match="hook_post"):  # lists the model's own hooks
        with ml.probing(mlp, ("dimensionality", {"hook": "hook_hidden"})):  # not an MLP hook
            pass


def test_unknown_probe_name_lists_known_ones(model):
    with pytest.raises(ValueError, match="unknown probe 'nosuch'") as err:
        with ml.probing(model, "nosuch"):
            pass
    assert "dimensionality" in str(err.value) and "dictionary" in str(err.value)
    with pytest.raises(ValueError, match="dimensionality"):
        ml.get_probe("nosuch")
    assert {"dimensionality", "dictionary"} <= set(ml.list_probes())


def test_probes_change_neither_outputs_nor_weights(model, x):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ref = model(x).detach().clone()
    with ml.probing(model, "dimensionality", "dictionary", Recorder(), train=x):
        out = model(x)
    assert torch.equal(out, ref)
    ml.get_probe("dimensionality")(train=x).run(model, x).plot()
    ml.get_probe("dictionary")(train=x).run(model, x).summary()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(model(x), ref)


def test_training_set_that_does_not_fit_raises_before_hooks(model):
    wrong_inst = ml.SparseFeatures(6, 0.5).sample(10, n_instances=2, seed=0)
    with pytest.raises(ValueError, match="instance"):
        with ml.probing(model, "dimensionality", train=wrong_inst):
            pass
    wrong_feat = ml.SparseFeatures(5, 0.5).sample(10, n_instances=3, seed=0)
    with pytest.raises(ValueError, match="feat=6"):
        ml.get_probe("dictionary")(train=wrong_feat).run(model)
    assert n_hooks(model) == 0


def test_register_probe_decorator_and_duplicate():
    @ml.register_probe("test-recorder-xyz")
    class Local(Recorder):
        pass

    try:
        assert ml.get_probe("test-recorder-xyz") is Local
        with pytest.raises(ValueError, match="duplicate probe name 'dimensionality'"):
            ml.register_probe("dimensionality")(Recorder)
    finally:
        from memlens.registry import PROBES

        PROBES.unregister("test-recorder-xyz")


# ---------------------------------------------------------------- third-party entry points

PLUGIN = """
import torch
from memlens.probe import Probe, ProbeResult

class NormProbe(Probe):
    hooks = ("hook_hidden",)
    def result(self):
        r = ProbeResult()
        r.norm = float(torch.cat(self.acts["hook_hidden"]).norm())
        return r
"""


def make_distribution(root, name: str, entry_points: str, module: str | None = None):
    """A fake installed distribution: a module and ``<name>-0.1.dist-info`` with entry points."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    if module is not None:
        (root / f"{name}.py").write_text(module)


def run_python(root, code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONWARNINGS="default")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_third_party_probe_found_by_name(tmp_path):
    make_distribution(
        tmp_path, "thirdparty", "[memlens.probes]\nnorm = thirdparty:NormProbe\n", PLUGIN
    )
    r = run_python(
        tmp_path,
        """
        import memlens as ml
        from toy_models import Bottleneck
        m = Bottleneck(n_features=4, d_hidden=2)
        x = ml.SparseFeatures(4, 0.0).sample(5, n_instances=1)
        assert "norm" in ml.list_probes(), ml.list_probes()
        with ml.probing(m, "norm") as (p,):
            m(x)
        print(type(p).__module__, p.result().norm > 0)
        """,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["thirdparty", "True"]


def test_third_party_duplicate_name_raises(tmp_path):
    make_distribution(
        tmp_path, "dupplug", "[memlens.probes]\ndimensionality = dupplug:NormProbe\n", PLUGIN
    )
    r = run_python(
        tmp_path,
        """
        import memlens as ml
        try:
            ml.get_probe("dimensionality")
        except ValueError as e:
            print("RAISED", e)
        """,
    )
    assert r.returncode == 0, r.stderr
    assert "RAISED duplicate probe name 'dimensionality'" in r.stdout


def test_broken_plugin_warns_without_breaking_import(tmp_path):
    make_distribution(
        tmp_path,
        "brokenplug",
        "[memlens.probes]\nbroken = brokenplug:Missing\n",
        "raise ImportError('this plugin is broken on purpose')\n",
    )
    r = run_python(
        tmp_path,
        """
        import warnings
        import memlens as ml
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            names = ml.list_probes()
        print("NAMES", ",".join(names))
        print("WARN", " | ".join(str(x.message) for x in w))
        """,
    )
    assert r.returncode == 0, r.stderr
    names = r.stdout.split("NAMES ")[1].split()[0].split(",")
    assert "dimensionality" in names and "broken" not in names
    assert "'broken'" in r.stdout and "brokenplug" in r.stdout and "on purpose" in r.stdout
