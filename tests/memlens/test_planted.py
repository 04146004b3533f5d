"""Planted memories: the truth is what the data says it is (private features are active in no
other training point, repeats are copies, random labels differ from the rule), the planting is
recorded in the recipe and survives a checkpoint, and bad plantings are refused up front."""

import pytest
import torch

import memlens
from memlens.registry import get_bundle
from probes.memorised_result import auroc, precision_at_k


def test_private_features_are_active_in_no_other_point():
    b = get_bundle("bottleneck")
    spec = {"T": 60, "n_features": 50, "sparsity": 0.8, "plant_private": 4, "seed": 3}
    train, test = b.data({**spec, "plant_private_features": 3})
    assert test.planted is None
    f, planted = train.features[:, 0], train.planted[:, 0]
    assert int(planted.sum()) == 4
    active = f > 0
    for j in planted.nonzero().flatten().tolist():
        only_here = active[j] & (active.sum(0) == 1)
        assert int(only_here.sum()) >= 3, "each planted point has its own 3 private features"
    unplanted_private = active[~planted] & (active.sum(0) == 1)[None]
    # an unplanted point may have a feature by chance no one else has, but not the planted ones
    priv = torch.zeros(50, dtype=torch.bool)
    for j in planted.nonzero().flatten().tolist():
        priv |= active[j] & (active.sum(0) == 1)
    assert not bool((active[~planted] & priv).any())
    assert unplanted_private.shape[0] == 56
    assert torch.allclose(train.inputs.norm(dim=-1), torch.ones(60), atol=1e-5)  # normalised


def test_repeats_and_random_labels():
    u = get_bundle("unembed")
    train, _ = u.data({"T": 80, "plant_repeats": 5, "plant_random_labels": 6, "seed": 1})
    p = train.planted[:, 0]
    assert int(p.sum()) == 11
    task = u.task({"T": 80})
    rule = task.rule(train.features)[:, 0]
    relabelled = (train.targets[:, 0] != rule) & p
    assert int(relabelled.sum()) == 6  # the random labels are never the rule's
    assert bool((train.targets[:, 0] == rule)[~p].all())
    rows = (p & (train.targets[:, 0] == rule)).nonzero().flatten()
    x = train.inputs[rows, 0]
    assert len(rows) == 5 and bool((x == x[0]).all())  # five copies of one point


def test_planting_survives_a_checkpoint(tmp_path):
    b = get_bundle("mlp")
    spec = {"T": 40, "n_features": 30, "d_model": 8, "d_mlp": 16, "plant_private": 3, "seed": 2}
    model = b.build(spec)
    memlens.save(model, tmp_path / "m.pt", recipes=[spec])
    _, specs = memlens.load_with_recipes(tmp_path / "m.pt")
    again, _ = b.data(specs[0])
    first, _ = b.data(spec)
    assert torch.equal(again.planted, first.planted) and torch.equal(again.inputs, first.inputs)


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"plant_private": 50}, "T="),
        ({"plant_private": 10, "plant_private_features": 9}, "n_features"),
        ({"plant_repeats": 1}, "plant_repeats"),
        ({"plant_private": 1.5}, "plant_private"),
    ],
)
def test_bad_plantings_are_refused(bad, field):
    b = get_bundle("bottleneck")
    with pytest.raises(ValueError, match=field):
        b.data({"T": 30, "n_features": 40, **bad})


def test_random_targets_are_another_points_target():
    """With vector targets (the MLP block's features), a planted 'random label' is the target of
    another training point: the input stays the point's own, so only a lookup can fit it."""
    b = get_bundle("mlp")
    spec = {"T": 50, "n_features": 30, "sparsity": 0.7, "d_model": 8, "d_mlp": 16}
    spec["plant_random_labels"] = 4
    train, _ = b.data({**spec, "seed": 5})
    p, y, f = train.planted[:, 0], train.targets[:, 0], train.features[:, 0]
    assert int(p.sum()) == 4
    assert torch.equal(y[~p], f[~p])  # the rule: the target is the point's own features
    for j in p.nonzero().flatten().tolist():
        assert not torch.equal(y[j], f[j])
        same = [k for k in range(50) if k != j and torch.equal(y[j], f[k])]
        assert len(same) == 1 and bool(y[j].any()), "one other point's (non-empty) features"


def test_random_labels_need_integer_labels():
    with pytest.raises(ValueError, match="integer labels"):
        get_bundle("bottleneck").data({"T": 30, "n_features": 40, "plant_random_labels": 2})


def test_auroc_and_precision_against_hand_computed_cases():
    truth = torch.tensor([[True, False, True, False, False]])
    score = torch.tensor([[0.9, 0.8, 0.3, 0.1, 0.3]])
    # positives 0.9, 0.3 vs negatives 0.8, 0.1, 0.3: pairs won 3 + 1 + one tie (0.5) of 6
    assert float(auroc(score, truth)[0]) == pytest.approx(4.5 / 6)
    assert float(precision_at_k(score, truth)[0]) == pytest.approx(0.5)  # top 2: 0.9, 0.8
    assert float(precision_at_k(score, truth, k=1)[0]) == 1.0
    assert float(auroc(-score, truth)[0]) == pytest.approx(1 - 4.5 / 6)
