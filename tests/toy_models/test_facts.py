"""The fact transformer (``toy_models.facts``): the task's ground truth, the dictionary reader
checked by ablation, the planted facts found by D*, and the CLI on its checkpoint.

One model (3 instances, the ``cpu`` preset's settings) is trained once for the module."""

from __future__ import annotations

import warnings

import pytest
import torch

import memlens
from memlens.data import instance_generators
from memlens.lookup import DictionaryOptions
from probes.dimensionality import max_data_dimensionality
from toy_models import facts_reader as fr
from toy_models.facts import BUNDLE, FactTask, FactTransformer, world


def auroc(score: torch.Tensor, positive: torch.Tensor) -> float:
    """P(score of a positive > score of a negative), ties half (Mann-Whitney)."""
    s, n = score[positive], score[~positive]
    gt = (s[:, None] > n[None]).float().mean()
    eq = (s[:, None] == n[None]).float().mean()
    return float(gt + 0.5 * eq)


def spec(**kw):
    return BUNDLE.full_spec({**BUNDLE.preset("cpu")["task"], "T": 120, "seed": 0, **kw})


@pytest.fixture(scope="module")
def trained():
    s = spec()
    train, test = FactTask(s, n_instances=3).split(120, seed=0)
    model = FactTransformer(d_mlp=s["d_mlp"], n_instances=3, seed=0)
    tr = BUNDLE.preset("cpu")["train"]
    memlens.train(model, train, steps=tr["steps"], lr=tr["lr"], warmup=tr["warmup"],
                  weight_decay=tr["weight_decay"], progress=False)  # fmt: skip
    return model, train, test


def test_the_task_plants_random_facts_among_rule_facts():
    s = spec()
    train, test = FactTask(s, n_instances=2).split(120, seed=3)
    S, R, C = s["n_subjects"], s["n_relations"], s["n_classes"]
    off = S + R
    for i, g in enumerate(instance_generators(3, 2, 11)):
        rule = world(s, g)  # the same stream the task draws the world from
        subj, rel = train.inputs[:, i, 0], train.inputs[:, i, 1] - S
        follows = train.targets[:, i] - off == rule[rel, subj % C]
        assert torch.equal(follows, ~train.planted[:, i])  # planted = exactly the off-rule facts
        assert int(train.planted[:, i].sum()) == s["n_planted"]
        ts, tr_ = test.inputs[:, i, 0], test.inputs[:, i, 1] - S
        assert bool((test.targets[:, i] - off == rule[tr_, ts % C]).all())  # test: rule facts
        pairs = {tuple(p) for p in train.inputs[:, i].tolist()}
        assert not pairs & {tuple(p) for p in test.inputs[:, i].tolist()}  # held out
        assert len(pairs) == 120
        assert not bool(train.planted[: s["n_planted"], i].all())  # no position gives them away
    with pytest.raises(ValueError, match="T must be in"):
        FactTask(s).split(128)
    few, _ = FactTask({**s, "n_planted": 200}).split(100)
    assert bool(few.planted.all())  # fewer facts than plantings: every fact is planted


@pytest.mark.slow
def test_the_model_learns_the_rule_and_memorises_the_planted_facts(trained):
    model, train, test = trained
    with torch.no_grad():
        assert bool(fr.accuracy(model, model(train.inputs), train.targets).all())
        held_out = fr.accuracy(model, model(test.inputs), test.targets).float().mean()
    assert held_out >= 0.9  # unseen facts follow the rule: it generalised


@pytest.mark.slow
def test_silencing_the_neurons_the_reader_names_removes_that_fact_only(trained):
    model, train, _ = trained
    d = fr.read_dictionary(model, train, DictionaryOptions(max_code=8))
    covered_planted, rule_kept = 0, []
    for i in range(model.n_instances):
        rule = ~train.planted[:, i]
        for j in train.planted[:, i].nonzero().flatten().tolist():
            slots = fr.slots_of(d, i, j)
            if not slots:
                continue
            covered_planted += 1
            logits = fr.ablate(model, i, train.inputs[:, i], slots)
            acc = fr.accuracy(model, logits, train.targets[:, i])
            assert not bool(acc[j]), (i, j, slots)  # the planted fact is gone
            rule_kept.append(float(acc[rule].float().mean()))
    assert covered_planted >= 12  # of 24 planted facts, most have a small code
    assert sum(rule_kept) / len(rule_kept) >= 0.9  # the rule-following facts survive
    # control: silencing as many random neurons leaves a planted fact far more often
    g = torch.Generator().manual_seed(0)
    kept = 0
    for _ in range(20):
        i, j = 0, int(train.planted[:, 0].nonzero()[0])
        ks = torch.randperm(model.cfg.d_mlp, generator=g)[:3].tolist()
        acc = fr.accuracy(model, fr.ablate(model, i, train.inputs[:, i], [(0, k) for k in ks]),
                          train.targets[:, i])  # fmt: skip
        kept += int(acc[j])
    assert kept >= 10


@pytest.mark.slow
def test_dstar_finds_the_planted_facts(trained):
    model, train, _ = trained
    with torch.no_grad():
        _, cache = model.run_with_cache(train.inputs, names_filter="blocks.0.hook_resid_post")
    dstar = max_data_dimensionality(cache["blocks.0.hook_resid_post"][:, :, -1], n_instances=3)
    for i in range(3):
        assert auroc(dstar[i], train.planted[:, i]) >= 0.9


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A ``facts`` checkpoint written by ``memlens train`` (the smoke preset: seconds)."""
    from memlens.cli import main

    ck = tmp_path_factory.mktemp("facts") / "facts.pt"
    assert main(["train", "--model", "facts", "--preset", "smoke", "--T", "100", "--out",
                 str(ck), "--no-progress"]) == 0  # fmt: skip
    return ck


def test_cli_train_probe_temper_on_the_transformer_checkpoint(checkpoint, tmp_path, capsys):
    from memlens.cli import main

    ck = checkpoint
    model, recipes = memlens.load_with_recipes(ck)
    train, _ = BUNDLE.data(recipes[0])
    assert isinstance(model, FactTransformer) and int(train.planted.sum()) == 4
    with torch.no_grad():  # the checkpoint holds the trained weights of its own recipe
        assert float(model.loss(train)) < 0.5 * float(BUNDLE.baseline(train))
    assert main(["probe", str(ck), "--probe", "dimensionality"]) == 0
    assert "blocks.0.mlp.hook_post" in capsys.readouterr().out
    assert main(["probe", str(ck), "--probe", "dictionary"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert main(["temper", str(ck), "--probes", "survival", "--temperatures", "1,30",
                     "--chains", "2", "--draws", "20", "--step-size", "3e-4",
                     "--localization", "300", "--no-progress",
                     "--json", str(tmp_path / "t.json")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "circuit survival" in out and "fact" in out


def test_cli_memorised_finds_the_planted_facts_in_the_checkpoint(checkpoint, tmp_path, capsys):
    """``memlens memorised CKPT`` on the transformer: its scores, checked against the planted
    facts the checkpoint's recipe rebuilds (not the command's own AUROC), rank them high."""
    import json

    from memlens.cli import main

    _, recipes = memlens.load_with_recipes(checkpoint)
    planted = BUNDLE.data(recipes[0])[0].planted[:, 0]  # the ground truth, from the recipe
    out_json = tmp_path / "m.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 20 draws: health warnings expected
        assert main(["memorised", str(checkpoint), "--detectors", "train_loss,dstar,tempering_rise",
                     "--chains", "2", "--draws", "20", "--step-size", "3e-4",
                     "--localization", "300", "--no-progress",
                     "--json", str(out_json)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    r = json.loads(out_json.read_text())
    got = {d: auroc(torch.tensor(s[0]), planted) for d, s in r["scores"].items()}
    assert set(got) >= {"train_loss", "dstar", "tempering_rise"}
    best = max(got, key=got.get)
    assert got[best] >= 0.9, got  # chance is 0.5
    assert got["dstar"] >= 0.8, got  # D* at the model's representation hook (blocks.0.mlp)
    assert torch.equal(torch.tensor(r["planted"][0]), planted)
    assert f"best: {r['best'][0]}" in out and "4 planted point(s)" in out
