"""Decompiling a distributed dictionary (``DictionaryProbe(decompile=True)``): a hand-built block
whose codes are known, a memorising MLP block trained without an L1 penalty whose codes are
checked by ablating every other neuron and running the model, a generalising block that has codes
but no specific ones, and bad input."""

from __future__ import annotations

import itertools

import pytest
import torch

import memlens as ml
from memlens.data import Batch, SparseFeatures
from probes.decompile import decompile
from probes.dictionary import DictionaryProbe
from toy_models import MLPBlock, MLPTask


def read_through(model, x, instance, keep):
    """The model's output on ``x`` with every neuron of ``instance`` but ``keep`` zeroed at
    hook_post (the other instances untouched)."""

    def ablate(act, hook=None):
        act = act.clone()
        off = torch.ones(act.shape[-1], dtype=torch.bool)
        off[list(keep)] = False
        act[:, instance, off] = 0
        return act

    return model.run_with_hooks(x, fwd_hooks=[("hook_post", ablate)]).detach()


# ---------------------------------------------------------------- a block with known codes


@pytest.fixture
def hand_built():
    """Points e_0, e_1, e_2, a duplicate of e_0 and a zero point. Neurons 2j and 2j+1 fire (a = 1)
    on e_j and write 0.5 e_j each; neuron 6 fires on every non-zero point and writes 0.1 (1,1,1).
    So y(e_j) = e_j + 0.1 (1,1,1): the pair {2j, 2j+1} reads it back with error
    ‖0.1 (1,1,1)‖ / ‖y‖ = 0.16, one neuron of the pair alone with error 0.56, and neuron 6 is
    never needed. Point 3 (= e_0) shares point 0's code, so neither code is specific; point 4
    writes nothing (trivial). Its targets are all ones, which the block does not fit."""
    model = MLPBlock(d_model=3, d_mlp=7, d_out=3, n_instances=1)
    with torch.no_grad():
        model.W_in.zero_()
        model.b_in.zero_()
        model.W_out.zero_()
        model.b_out.copy_(torch.tensor([[0.3, -0.2, 0.1]]))  # read-back keeps the bias
        for j in range(3):
            model.W_in[0, 2 * j, j] = model.W_in[0, 2 * j + 1, j] = 1.0
            model.W_out[0, j, 2 * j] = model.W_out[0, j, 2 * j + 1] = 0.5
        model.W_in[0, 6] = 1.0
        model.W_out[0, :, 6] = 0.1
    x = torch.cat([torch.eye(3), torch.eye(3)[:1], torch.zeros(1, 3)])[:, None]  # [5, 1, 3]
    # targets the model does not fit: read-back is judged against the model's own output
    return model, Batch(inputs=x, targets=torch.ones(5, 1, 3))


def test_hand_built_codes_are_the_known_pairs(hand_built):
    model, train = hand_built
    res = DictionaryProbe(train=train, decompile=True).run(model)
    assert res.method == "decompiled" and res.hook == "hook_post"
    assert res.trivial[0].tolist() == [False, False, False, False, True]
    # every non-trivial point has a code: its pair; only points 1 and 2 have specific ones
    assert res.sparse_code[0].tolist() == [True, True, True, True, False]
    assert res.code_size[0].tolist() == [2, 2, 2, 2, 0]
    assert res.covered[0].tolist() == [False, True, True, False, False]
    assert res.coverage == pytest.approx(2 / 4)  # the trivial point is left out
    y = model(train.inputs).detach()
    err = 0.1 * 3**0.5 / (y[0, 0] - model.b_out[0].detach()).norm()
    assert res.read_back_error[0, :4] == pytest.approx(torch.full((4,), float(err)), abs=1e-5)
    for j in range(4):
        pair = {2 * (j % 3), 2 * (j % 3) + 1}
        assert set(res.codes[0, j].nonzero().flatten().tolist()) == pair
        assert res.codes[0, j, sorted(pair)].tolist() == [1.0, 1.0]  # the activations
    assert [e.key for e in res.entries] == [1, 2]
    for e in res.entries:
        j = e.key
        assert sorted(e.slots) == [f"neuron:{2 * j}", f"neuron:{2 * j + 1}"]
        assert e.weights == [1.0, 1.0]
        # the value is the output read through the pair: b_out + e_j
        want = model.b_out[0].detach() + torch.eye(3)[j]
        assert torch.tensor(e.value) == pytest.approx(want, abs=1e-5)
        assert e.match == pytest.approx(1.0)  # the pair is silent on every other point
    # a cap below the pair's size leaves no code at all
    capped = decompile(model, train, max_code=1)
    assert capped.sparse_code.sum() == 0 and capped.coverage == 0


def test_other_hooks_do_not_see_the_decompilers_runs(hand_built):
    """A hook attached around the call (as another probe in the same probing block would be)
    sees no forward pass of the decompiler's, and still works after it."""
    model, train = hand_built
    seen = []

    def count(act, hook):
        seen.append(act.shape[0])

    with model.hooks(fwd_hooks=[("hook_post", count)]):
        res = decompile(model, train)
        assert seen == [] and res.coverage == pytest.approx(0.5)
        model(train.inputs)
        assert seen == [len(train)]
    model(train.inputs)
    assert seen == [len(train)]  # and it is gone after its block


# ---------------------------------------------------------------- a memorising block, plain AdamW


@pytest.fixture(scope="module")
def distributed_memoriser():
    """The quickstart's story MLP block at T = 16 <= d_mlp = 32, trained *without* its L1 penalty
    (800 steps, not the preset's 2,000, to keep the test short): it memorises (train loss ~1e-5)
    with a distributed code (a neuron fires on about half the
    points), which the weight-level reader mostly misses."""
    task = MLPTask(SparseFeatures(64, 0.9, normalize=True), d_model=8, n_instances=2, seed=0)
    train = task.sample(16, seed=1)
    model = MLPBlock(d_mlp=32, **task.model_kwargs())
    ml.train(model, train, steps=800, lr=1e-2, weight_decay=1e-2, warmup=100, progress=False)
    return model, train


def test_distributed_codes_read_back_the_models_own_output(distributed_memoriser):
    model, train = distributed_memoriser
    with ml.probing(model, ("dictionary", {"decompile": True}), train=train) as (dic,):
        pass  # the codes are found by hooked runs of their own, not this block's forward
    res = dic.result()
    weights = DictionaryProbe(train=train).run(model)
    assert weights.coverage <= 0.5, weights.summary()  # the table the weights give is partial
    assert res.coverage >= 0.9, res.summary()
    assert len(res.entries) == int(res.covered.sum())
    y = model(train.inputs).detach()  # [T, inst, out]
    y_off = model.b_out.detach()  # every neuron zeroed: the bias alone
    active = (model.run_with_cache(train.inputs)[1]["hook_post"] > 0).sum(-1)  # [T, inst]
    for e in res.entries:
        i, j = e.instance, e.key
        keep = [int(s.split(":")[1]) for s in e.slots]
        assert len(keep) == int(res.code_size[i, j]) < int(active[j, i])  # fewer than it fires
        # ground truth: zero every other neuron and run the model
        out = read_through(model, train.inputs, i, keep)[:, i]  # [T, out]
        scale = (y[:, i] - y_off[i]).norm(dim=-1)
        err = (out - y[:, i]).norm(dim=-1) / scale  # against the model's own output
        assert err[j] <= 0.25 and err[j] == pytest.approx(float(res.read_back_error[i, j]), 1e-3)
        assert torch.tensor(e.value) == pytest.approx(out[j], abs=1e-4)
        # ... and the code reads back no other training point
        others = torch.arange(len(err)) != j
        assert (err[others] > 0.25).all(), (e, err)
        acts = model.run_with_cache(train.inputs)[1]["hook_post"][j, i, keep]
        assert torch.tensor(e.weights) == pytest.approx(acts, abs=1e-4)


def test_codes_are_as_small_as_the_exhaustive_minimum(distributed_memoriser):
    """Ground truth for the code sizes: for every point firing at most 15 neurons, try every subset
    of its active neurons (the block's read-back through a subset S is b_out + Σ_S a_k W_out[:, k])
    and take the smallest whose error is within rtol = 0.25. The greedy search with pruning
    matches it on almost every point and is never more than one neuron over."""
    model, train = distributed_memoriser
    res = DictionaryProbe(train=train, decompile=True).run(model)
    _, cache = model.run_with_cache(train.inputs)
    A, W = cache["hook_post"].detach(), model.W_out.detach()
    same = checked = 0
    for i in range(model.n_instances):
        for j in range(len(train)):
            act = (A[j, i] > 0).nonzero().flatten()
            if len(act) > 15:
                continue
            C = (A[j, i, act] * W[i][:, act]).T  # [n, out]: each active neuron's write
            subsets = torch.tensor(list(itertools.product([0.0, 1.0], repeat=len(act))))
            err = (subsets @ C - C.sum(0)).norm(dim=-1) / C.sum(0).norm()
            smallest = int(subsets[err <= 0.25].sum(-1).min())
            size = int(res.code_size[i, j])
            assert smallest <= size <= smallest + 1, (i, j, size, smallest)
            same += size == smallest
            checked += 1
    assert checked >= 16 and same >= 0.9 * checked, (same, checked)


def test_generalising_block_has_codes_but_no_specific_ones():
    """T = 256 >> d_mlp = 16: every point's output has a code, but almost every code also reads
    back other points (the neurons are shared features), so the decompiler finds no table."""
    task = MLPTask(SparseFeatures(64, 0.9, normalize=True), d_model=8, n_instances=2, seed=0)
    train = task.sample(256, seed=1)
    model = MLPBlock(d_mlp=16, **task.model_kwargs())
    ml.train(model, train, steps=600, lr=1e-2, weight_decay=1e-2, warmup=50, progress=False)
    res = DictionaryProbe(train=train, decompile=True).run(model)
    assert res.scalars()["sparse_code_fraction"] >= 0.9, res.summary()
    assert res.coverage <= 0.1, res.summary()
    assert "no lookup table" in res.summary()


# ---------------------------------------------------------------- bad input


def test_decompile_refuses_bad_input(hand_built):
    model, train = hand_built
    with pytest.raises(ValueError, match="hook_nope.*hook_post"):
        decompile(model, train, hook="hook_nope")
    with pytest.raises(ValueError, match="needs the training set"):
        DictionaryProbe(decompile=True).run(model)
    with pytest.raises(ValueError, match="rtol"):
        decompile(model, train, rtol=1.5)
    with pytest.raises(ValueError, match="max_code"):
        decompile(model, train, max_code=0)
    with pytest.raises(ValueError, match="only used with decompile=True"):
        DictionaryProbe(train=train, hook="hook_post")
    with pytest.raises(TypeError, match="decompile"):
        DictionaryProbe(train=train, decompile="yes")
