"""The fused training step as memlens.train uses it: same weights as eager training, when it
applies (no hooks, CPU, unmodified maths), the MEMLENS_COMPILE switch and the one-warning
fallback, and the on-disk kernel cache."""

from __future__ import annotations

import warnings

import pytest
import torch

import memlens as ml
from memlens import fused as F
from memlens import native
from memlens.data import SparseFeatures
from toy_models import Bottleneck, MLPBlock, MLPTask, Unembed, UnembedTask


def _train_both(make_model, data, monkeypatch, **kw):
    """Train two copies of one initialisation, fused and eager; return (fused, eager, runs)."""
    models, runs = {}, {}
    for mode in ("1", "0"):
        monkeypatch.setenv(native.COMPILE_ENV, mode)
        models[mode] = make_model()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the MEMLENS_COMPILE=0 notice
            runs[mode] = ml.train(models[mode], data, progress=False, **kw)
    return models["1"], models["0"], runs


def _assert_same_training(fused, eager, runs, init):
    pairs = zip(eager.parameters(), init, strict=True)
    moved = max(float((p.detach() - q).abs().max()) for p, q in pairs)
    assert moved > 1e-2, "training did not move the weights; the comparison would be empty"
    for (name, a), b in zip(fused.named_parameters(), eager.parameters(), strict=True):
        err = float((a - b).detach().abs().max())
        assert err < 1e-3 * moved, f"{name}: fused and eager weights differ by {err:.2e}"
    torch.testing.assert_close(runs["1"].history, runs["0"].history, rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(runs["1"].train_loss, runs["0"].train_loss, rtol=1e-3, atol=1e-6)
    assert float(runs["0"].history[-1].mean()) < float(runs["0"].history[0].mean())


@pytest.mark.parametrize("batch_size", [None, 8])
@pytest.mark.parametrize("tied", [True, False])
def test_bottleneck_training_run_same_weights(monkeypatch, batch_size, tied):
    x = SparseFeatures(60, 0.9, normalize=True).sample(32, 3, seed=0)
    imp = torch.linspace(1.0, 0.2, 60)

    def make():
        return Bottleneck(60, 2, n_instances=3, tied=tied, importance=imp, seed=1)

    init = [p.detach().clone() for p in make().parameters()]
    kw = dict(steps=150, lr=1e-2, warmup=10, weight_decay=1e-2, batch_size=batch_size)
    fused, eager, runs = _train_both(make, x, monkeypatch, **kw)
    _assert_same_training(fused, eager, runs, init)


def test_padded_packed_sweep_group_same_weights(monkeypatch):
    """A packed group of different T (lengths mask), as memlens.sweep trains it."""
    x = SparseFeatures(40, 0.85, normalize=True).sample(24, 3, seed=2)
    batch = ml.Batch(x, None, None, torch.tensor([24, 15, 9]))
    init = [p.detach().clone() for p in Bottleneck(40, 2, n_instances=3, seed=4).parameters()]
    kw = dict(steps=150, lr=1e-2, warmup=10, weight_decay=1e-2)
    fused, eager, runs = _train_both(
        lambda: Bottleneck(40, 2, n_instances=3, seed=4), batch, monkeypatch, **kw
    )
    _assert_same_training(fused, eager, runs, init)


@pytest.mark.parametrize("task_cls,model_cls", [(MLPTask, MLPBlock), (UnembedTask, Unembed)])
def test_embedded_training_run_same_weights(monkeypatch, task_cls, model_cls):
    task = task_cls(SparseFeatures(24, 0.8, normalize=True), 6, n_instances=2, seed=0)
    train_set = task.sample(40, seed=1)
    extra = {"d_mlp": 12} if model_cls is MLPBlock else {}

    def make():
        return model_cls(**task.model_kwargs(), **extra, seed=2)

    init = [p.detach().clone() for p in make().parameters()]
    kw = dict(steps=150, lr=1e-2, warmup=10, weight_decay=1e-2)
    fused, eager, runs = _train_both(make, train_set, monkeypatch, **kw)
    _assert_same_training(fused, eager, runs, init)


def test_compile_switch_warns_once_and_trains(monkeypatch):
    monkeypatch.setenv(native.COMPILE_ENV, "0")
    native.reset_fallback_warning()
    x = SparseFeatures(30, 0.8).sample(16, 2, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = [
            ml.train(Bottleneck(30, 2, n_instances=2), x, steps=60, lr=1e-2, progress=False)
            for _ in range(3)
        ]
    ours = [w for w in caught if "falls back" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert issubclass(ours[0].category, RuntimeWarning)
    assert native.COMPILE_ENV in str(ours[0].message)
    assert ours[0].filename == __file__  # it points at the user's call, not at memlens
    for r in runs:
        assert float(r.history[-1].mean()) < float(r.history[0].mean())


def test_no_compiler_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setenv(native.COMPILE_ENV, "1")
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))  # nothing built there
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler on PATH
    monkeypatch.setattr(native, "_libraries", {})
    native.reset_fallback_warning()
    assert native.find_compiler() is None
    x = SparseFeatures(30, 0.8).sample(16, 2, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = [
            ml.train(Bottleneck(30, 2, n_instances=2), x, steps=60, lr=1e-2, progress=False)
            for _ in range(2)
        ]
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert "no C++ compiler" in str(caught[0].message)
    assert "falls back" in str(caught[0].message)
    for r in runs:
        assert float(r.history[-1].mean()) < float(r.history[0].mean())


def test_fused_step_applies_only_without_hooks_and_on_cpu():
    model = Bottleneck(20, 2, n_instances=2)
    assert F.fused_step(model) is not None
    calls = []

    def count(act, hook):
        calls.append(act.shape)
        return act

    x = SparseFeatures(20, 0.8).sample(8, 2, seed=0)
    with model.hooks(fwd_hooks=[("hook_hidden", count)]):
        assert F.fused_step(model) is None
        ml.train(model, x, steps=5, progress=False)
    assert len(calls) >= 5  # the hook saw every training step: the eager path ran
    assert F.fused_step(model) is not None  # and nothing stayed attached
    mlp = MLPBlock(4, 8, 4)
    with ml.sparse_activations(mlp, 0.1):
        assert F.fused_step(mlp) is None
    assert F.fused_step(model.to("meta")) is None  # any non-CPU device trains eagerly
    assert F.fused_step(Bottleneck(20, 2).double()) is None


def test_subclass_that_changes_the_maths_trains_eagerly():
    class Leaky(Bottleneck):
        def forward(self, x):
            return super().forward(x) * 0.5

    assert F.fused_step(Leaky(10, 2)) is None


PROBE_SOURCE = 'extern "C" int ml_probe(int x) { return 3 * x + 1; }\n'


def test_kernel_cache_is_reused_across_processes(monkeypatch, tmp_path):
    """A second process (here: an empty in-memory cache) loads the built library, no compile."""
    monkeypatch.setenv(native.COMPILE_ENV, "1")
    monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(native, "_libraries", {})
    lib = native.load_library("cache_probe", PROBE_SOURCE)
    assert lib is not None and lib.ml_probe(4) == 13
    built = list(tmp_path.glob("cache_probe-*.so"))
    assert len(built) == 1
    monkeypatch.setattr(native, "_libraries", {})

    def no_build(*args):
        raise AssertionError("rebuilt although the library was cached on disk")

    monkeypatch.setattr(native, "_build", no_build)
    assert native.load_library("cache_probe", PROBE_SOURCE).ml_probe(2) == 7
    # another source is another library: it needs a build (here one that fails -> a fallback)
    monkeypatch.setattr(native, "_build", lambda *args: "refused")
    native.reset_fallback_warning()
    with pytest.warns(RuntimeWarning, match="compiling the cache_probe kernel failed"):
        assert native.load_library("cache_probe", PROBE_SOURCE + "// v2\n") is None


def test_derived_cache_follows_identity_and_version():
    cache, made = F.DerivedCache(), []
    t = torch.zeros(3)

    def make():
        made.append(1)
        return t.sum()

    cache.get(t, make)
    cache.get(t, make)
    assert len(made) == 1
    t.add_(1)  # in-place change: a new version
    cache.get(t, make)
    assert len(made) == 2
    cache.get(t.clone(), make)  # another tensor, equal values
    assert len(made) == 3


@pytest.mark.parametrize(
    "inst,rows,width,elements",
    [(39, 3000, 100, 2**19), (5, 7, 3, 64), (3, 1000, 50, 100), (1, 1, 1, 1)],
)
def test_blocks_cover_every_row_of_every_instance_once(inst, rows, width, elements):
    seen = torch.zeros(inst, rows, dtype=torch.int32)
    for si, sr in F.blocks(inst, rows, width, elements):
        assert (si.stop - si.start) * (sr.stop - sr.start) * width <= max(elements, rows * width)
        seen[si, sr] += 1
    assert bool((seen == 1).all())
