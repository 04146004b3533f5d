"""SparseFeatures' versioned generator: version 2 draws only the active entries and has the right
distribution; version 1 reproduces the original generator exactly; sweep recipes record the
version, and a recipe without one (written before versions) rebuilds version-1 data."""

from __future__ import annotations

import json

import pytest
import torch

import memlens
from memlens import io
from memlens.data import DATA_VERSION, SparseFeatures, _active_entries, instance_generators


def test_version_2_distribution():
    p, n, T = 0.1, 50, 8000
    x = SparseFeatures(n, 1 - p, data_version=2).sample(T, 2, seed=0)
    active = x != 0
    N = active.numel()
    assert abs(active.float().mean().item() - p) < 5 * (p * (1 - p) / N) ** 0.5
    per_feature = active.float().mean((0, 1))  # no position is favoured by the gap sampler
    assert float((per_feature - p).abs().max()) < 5 * (p * (1 - p) / (2 * T)) ** 0.5
    per_row = active.sum(-1).float()  # Binomial(n, p): mean np, variance np(1-p)
    assert per_row.mean().item() == pytest.approx(n * p, rel=0.02)
    assert per_row.var().item() == pytest.approx(n * p * (1 - p), rel=0.08)
    vals = x[active]
    assert 0 < float(vals.min()) and float(vals.max()) < 1
    q = torch.quantile(vals[:100_000], torch.tensor([0.25, 0.5, 0.75]))
    torch.testing.assert_close(q, torch.tensor([0.25, 0.5, 0.75]), atol=0.01, rtol=0)
    # neighbouring cells are independent: P(both active) = p^2
    both = (active[:, :, 1:] & active[:, :, :-1]).float().mean().item()
    assert both == pytest.approx(p * p, rel=0.1)


def test_gap_sampler_edges():
    g = torch.Generator().manual_seed(0)
    pos, val = _active_entries(1000, 1.0, g)
    assert torch.equal(pos, torch.arange(1000)) and len(val) == 1000
    pos, val = _active_entries(10**6, 1e-4, g)
    assert bool((pos[1:] > pos[:-1]).all()) and int(pos.max()) < 10**6
    assert abs(len(pos) - 100) < 5 * 10  # Binomial(1e6, 1e-4): mean 100, sd 10
    assert len(val) == len(pos)


def test_version_2_instances_streams_and_normalisation():
    a = SparseFeatures(40, 0.8, normalize=True).sample(30, 2, seed=3)
    b = SparseFeatures(40, 0.8, normalize=True).sample(30, 5, seed=3)
    assert torch.equal(a, b[:, :2])  # instance i does not depend on the instance count
    assert not torch.equal(b[:, 0], b[:, 1])
    sparse = SparseFeatures(5, 0.9, normalize=True).sample(200, 2, seed=3)
    norms, nonzero = sparse.norm(dim=-1), (sparse != 0).any(-1)
    assert 0 < int(nonzero.sum()) < nonzero.numel()  # both kinds of row occur
    torch.testing.assert_close(norms[nonzero], torch.ones(int(nonzero.sum())))
    assert float(norms[~nonzero].max()) == 0  # an empty point stays empty
    dense = SparseFeatures(7, 0.0).sample(9, 2, seed=0)
    assert bool((dense != 0).all())
    stream = SparseFeatures(40, 0.8).batches(16, seed=1, n_instances=2)
    first, second = next(stream), next(stream)
    assert first.shape == (16, 2, 40) and not torch.equal(first, second)
    again = next(SparseFeatures(40, 0.8).batches(16, seed=1, n_instances=2))
    assert torch.equal(first, again)


def test_version_1_is_the_original_generator():
    """The original algorithm, written out: two dense uniform draws per instance."""
    T, n, inst, S_ = 25, 30, 3, 0.7
    got = SparseFeatures(n, S_, normalize=True, data_version=1).sample(T, inst, seed=11)
    cols = []
    for g in instance_generators(11, inst, 1):
        active = torch.rand(T, n, generator=g) >= torch.tensor(S_, dtype=torch.float32)
        cols.append(torch.rand(T, n, generator=g) * active)
    x = torch.stack(cols, 1)
    assert torch.equal(got, x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    new = SparseFeatures(n, S_, normalize=True).sample(T, inst, seed=11)
    assert not torch.equal(got, new)  # the default is version 2


@pytest.mark.user_errors
def test_bad_version_is_refused():
    for bad in (0, 3, True, "2"):
        with pytest.raises(ValueError, match="data_version"):
            SparseFeatures(5, 0.5, data_version=bad)


SMOKE = {"n_features": 20, "sparsity": 0.8, "d_hidden": 2, "n_test": 32}
TRAIN = {"steps": 20, "lr": 1e-2, "warmup": 2}


def test_sweep_records_version_and_legacy_recipes_rebuild_version_1(tmp_path):
    out = tmp_path / "sw"
    memlens.sweep(
        "bottleneck", {"T": [3, 8]}, task=SMOKE, train=TRAIN, probes=(), out=out, progress=False
    )
    config = io.read_json(out / "config.json")
    assert config["task"]["data_version"] == DATA_VERSION
    model, specs = memlens.load_with_recipes(out / "checkpoints" / "group-000.pt")
    assert all(s["data_version"] == DATA_VERSION for s in specs)
    bundle = memlens.get_bundle("bottleneck")
    spec = {**config["task"], "T": 8, "seed": 0}
    assert bundle.task(spec).features.data_version == DATA_VERSION
    # a recipe written before data versions (memlens 0.1) rebuilds the 0.1 data
    legacy = {k: v for k, v in spec.items() if k != "data_version"}
    io.save_checkpoint(
        tmp_path / "old.pt",
        {
            "model": "bottleneck",
            "config": json.dumps(model.select_instances([0]).cfg.to_dict()),
            "state_dict": model.select_instances([0]).state_dict(),
            "cells": json.dumps([legacy]),
        },
    )
    _, (recipe,) = memlens.load_with_recipes(tmp_path / "old.pt")
    assert recipe["data_version"] == 1
    old = SparseFeatures(20, 0.8, normalize=True, data_version=1)
    assert torch.equal(bundle.data(recipe)[0].inputs, old.sample(8, 1, seed=0))


def test_resuming_a_sweep_recorded_before_versions_keeps_version_1(tmp_path):
    out = tmp_path / "sw"
    kw = dict(task=SMOKE, train=TRAIN, probes=(), out=out, progress=False)
    memlens.sweep("bottleneck", {"T": [3, 8]}, **kw)
    # make it look like an old folder: no data_version anywhere, one group not yet run
    config = io.read_json(out / "config.json")
    del config["task"]["data_version"]
    io.write_json(out / "config.json", config)
    rows = io.read_jsonl(out / "results.jsonl")
    last = max(r["group"] for r in rows)
    io.atomic_write_text(
        out / "results.jsonl",
        "".join(json.dumps(r) + "\n" for r in rows if r["group"] != last),
    )
    rows = memlens.sweep("bottleneck", {"T": [3, 8]}, **kw)  # resumes; no "different sweep"
    assert len(rows) == 2
    _, specs = memlens.load_with_recipes(out / "checkpoints" / f"group-{last:03d}.pt")
    assert all(s["data_version"] == 1 for s in specs)  # rebuilt with version 1, recorded as such
    assert io.read_json(out / "config.json")["task"].get("data_version", 1) == 1
