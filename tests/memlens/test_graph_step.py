"""The compiled training step for devices the fused kernels do not run on
(memlens.fused.graph_step): chosen off the CPU by default, forced on the CPU here, and the same
numbers as the eager step."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from memlens.data import SparseFeatures
from memlens.fused import GRAPH_ENV, graph_step
from toy_models import Bottleneck


def _model_and_data():
    model = Bottleneck(n_features=20, d_hidden=3, n_instances=2, seed=0)
    data = SparseFeatures(n_features=20, sparsity=0.8).sample(T=64, n_instances=2, seed=0)
    return model, data


def test_graph_step_is_chosen_off_the_cpu_only_unless_forced(monkeypatch):
    model, _ = _model_and_data()
    monkeypatch.delenv(GRAPH_ENV, raising=False)
    assert graph_step(model) is None  # a CPU model: the fused kernels or the eager step
    monkeypatch.setenv(GRAPH_ENV, "1")
    assert graph_step(model) is not None
    with model.hooks(fwd_hooks=[("hook_hidden", lambda a, hook: a)]):
        assert graph_step(model) is None  # hooks must run as written
    monkeypatch.setenv(GRAPH_ENV, "0")
    assert graph_step(model) is None


_SCRIPT = r"""
import json, os, torch
import torch._dynamo.utils as dynamo_utils
import memlens as ml
from memlens import training
from memlens.data import SparseFeatures
from memlens.fused import GRAPH_ENV
from toy_models import Bottleneck
torch.set_num_threads(1)
training.fused_step = lambda model: None  # the fused kernel out of the way: eager vs compiled
out = {}
for mode in ("0", "1"):
    os.environ[GRAPH_ENV] = mode
    model = Bottleneck(n_features=20, d_hidden=3, n_instances=2, seed=0)
    data = SparseFeatures(n_features=20, sparsity=0.8).sample(T=64, n_instances=2, seed=0)
    res = ml.train(model, data, steps=40, lr=1e-2, progress=False)
    out[mode] = {"history": res.history.tolist(), "W": model.W.detach().flatten().tolist(),
                 "graphs": int(dynamo_utils.counters["stats"]["unique_graphs"])}
print(json.dumps(out))
"""


def test_a_model_the_compiler_cannot_take_trains_eagerly_with_a_warning(monkeypatch):
    """A compile failure (on a GPU nobody here could test) falls back to the eager loss, once, with
    a warning, and gives the eager numbers."""
    from memlens import fused, native

    def broken(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("the compiler cannot take this model")

        return run

    monkeypatch.setattr(fused.torch, "compile", broken)
    monkeypatch.setattr(native, "_warned", False)
    monkeypatch.setenv(GRAPH_ENV, "1")
    model, data = _model_and_data()
    step = graph_step(model)
    with pytest.warns(RuntimeWarning, match="could not compile Bottleneck.loss"):
        first = step(data)
    torch.testing.assert_close(first, model.loss(data))
    torch.testing.assert_close(step(data), model.loss(data))  # eager from then on


@pytest.mark.slow
def test_compiled_step_trains_to_the_eager_numbers():
    """With the fused kernel out of the way, the compiled loss and its compiled backward give the
    eager step's losses and weights to float rounding, over 40 AdamW steps. (In a fresh
    interpreter: the test suite's runtime type checks cannot run on the compiler's fake tensors.)"""
    env = {k: v for k, v in os.environ.items() if k != GRAPH_ENV}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                          env=env, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    eager, compiled = out["0"], out["1"]
    assert eager["graphs"] == 0 and compiled["graphs"] >= 1  # compiled only when asked
    h0, h1 = torch.tensor(eager["history"]), torch.tensor(compiled["history"])
    assert not torch.equal(h0[0], h0[-1])  # it trained
    torch.testing.assert_close(h1, h0, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.tensor(compiled["W"]), torch.tensor(eager["W"]),
                               rtol=1e-4, atol=1e-6)  # fmt: skip
