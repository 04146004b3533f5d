"""Numerical faults in training: a loss explosion warns once, a NaN/inf restores the last finite
weights (fused and eager paths), and a packed sweep names its diverged cells, not instances."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import memlens as ml
import memlens.training as training
from memlens.fused import fused_step
from memlens.sweeps.cells import GroupJob, _name_cells
from toy_models import Bottleneck

X = ml.data.SparseFeatures(6, 0.5).sample(16, 2, seed=0)


def bn() -> Bottleneck:
    return Bottleneck(n_features=6, d_hidden=2, n_instances=2)


def explosion_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "exploded" in str(w.message)]


def test_a_loss_explosion_warns_once_naming_the_first_step_and_instances():
    """lr = 1e6 sends the loss from ~0.7 to ~1e22 without a NaN: one RuntimeWarning, naming the
    first step (and its instances) where the loss passed 10^3 x its start, as read off the
    returned history; a sane lr gives none."""
    m = bn()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        res = ml.train(m, X, steps=300, lr=1e6, progress=False)
    msgs = explosion_warnings(rec)
    assert len(msgs) == 1, msgs
    assert all(w.category is RuntimeWarning for w in rec if "exploded" in str(w.message))
    over = res.history > 1e3 * res.history[0]
    step = int(over.any(1).nonzero()[0])
    insts = over[step].nonzero().flatten().tolist()
    assert f"at step {step} " in msgs[0] and f"instance(s) {insts}" in msgs[0], msgs[0]
    assert bool(torch.isfinite(res.history).all())  # it exploded without becoming NaN

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ml.train(bn(), X, steps=300, lr=1e-2, progress=False)
    assert explosion_warnings(rec) == []


@pytest.mark.parametrize("path", ["fused", "eager"])
def test_a_nan_restores_the_weights_of_the_last_finite_check(path, monkeypatch):
    """A weight poisoned after step 129 makes the loss NaN from step 130; the check at step 200
    raises naming step 130 and instance 1, and leaves the model with exactly the weights of an
    independent 100-step run (the last check that passed), on both training paths."""
    if path == "eager":
        monkeypatch.setenv("MEMLENS_COMPILE", "0")
    assert (fused_step(bn()) is not None) == (path == "fused")
    ref = bn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the reference: the same run stopped after 100 steps (constant lr, so it is a prefix)
        ml.train(ref, X, steps=100, lr=1e-2, progress=False, schedule="constant")

    real_step = training.step_once
    calls = []

    def poisoning_step(model, opt, item, fused=None, graph=None):
        out = real_step(model, opt, item, fused, graph)
        calls.append(fused is not None)
        if len(calls) == 130:
            with torch.no_grad():
                model.W[1, 0, 0] = float("nan")
        return out

    monkeypatch.setattr(training, "step_once", poisoning_step)
    m = bn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FloatingPointError, match=r"step 130 in instance\(s\) \[1\]") as info:
            ml.train(m, X, steps=300, lr=1e-2, progress=False, schedule="constant")
    assert "after 100 steps" in str(info.value)
    assert all(c == (path == "fused") for c in calls)
    for name, p in m.named_parameters():
        assert bool(torch.isfinite(p).all()), name
        torch.testing.assert_close(p, dict(ref.named_parameters())[name], rtol=0, atol=0)


def test_an_overflowing_lr_restores_the_initial_weights():
    """lr = 1e30 overflows the loss at step 1: the error says the initial weights were restored,
    and they were (bit for bit)."""
    m = bn()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(FloatingPointError, match="restored to their initial values"):
        ml.train(m, X, steps=50, lr=1e30, progress=False)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_a_sweep_names_the_diverged_cells_not_packed_instances():
    """Instance i of a packed group is cell i: a divergence in instances [2, 0] is reported as
    those cells' grid values, in that order, and no packed index is left in the message."""
    cells = tuple(
        {"key": json.dumps({"T": t, "seed": s}, sort_keys=True)}
        for t, s in [(8, 0), (8, 1), (4, 0)]
    )
    job = GroupJob("bottleneck", 3, cells)
    err = _name_cells(job, training.Diverged("training loss became NaN/inf", 7, [2, 0], 0))
    msg = str(err)
    assert isinstance(err, FloatingPointError)
    assert 'cell(s) {"T": 4, "seed": 0}; {"T": 8, "seed": 0}' in msg, msg
    assert "instance" not in msg and "sweep group 3" in msg and "step 7" in msg


def test_a_diverging_sweep_names_its_cells(tmp_path):
    """End to end: lr = 1e30 in a 2-cell sweep; the error names cells by their T and seed."""
    with pytest.raises(FloatingPointError, match=r'cell\(s\) \{"T": \d, "seed": 0\}') as info:
        ml.sweep(
            "bottleneck",
            {"T": [4, 6]},
            task={"n_features": 6},
            train={"steps": 20, "lr": 1e30},
            probes=(),
            out=tmp_path / "s",
            progress=False,
        )
    assert "instance" not in str(info.value)
