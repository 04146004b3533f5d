"""Which points are memorised? In each setting, planted memories (ground truth by construction)
rank in the top k of the detector that finds them best there (benchmarks/memorisation_detection.py
measures every detector over seeds); the lookup plugin gets the planted-memory options and the
detectors with no code beyond its bundle. All through the public API a user calls."""

import pytest
import torch

import memlens
from memlens.planted import fit_check
from memlens.registry import get_bundle
from probes.memorised import find_memorised

#: setting -> (spec, training, the detector that finds the planted points there, SGLD settings,
#: the least fraction of planted points the model must have fitted, by the fit check).
CASES = {
    # a bottleneck past its peak region (test loss 0.9 against train 0.1): the model fits the
    # private features it was given (fit check), so its output, x', carries them, and in the
    # output space those features are private: D* at hook_out ranks the planted points first
    "bottleneck": (
        {"n_features": 100, "sparsity": 0.95, "d_hidden": 8, "T": 300, "plant_private": 5},
        {"steps": 3000, "lr": 3e-3, "weight_decay": 1e-2, "warmup": 50},
        "dstar:hook_out",
        {},
        0.8,
    ),
    # an MLP block (~2.5 active of 50 features through d_model = 24, 128 neurons) past its peak,
    # 5 points given another training point's target: it fits them (fit check) with neurons of
    # their own, at a higher loss than the rest, so the train loss ranks them first
    "mlp": (
        {
            "n_features": 50,
            "sparsity": 0.95,
            "d_model": 24,
            "d_mlp": 128,
            "T": 400,
            "plant_random_labels": 5,
        },
        {"steps": 2000, "lr": 1e-2, "weight_decay": 1e-2, "warmup": 50},
        "train_loss",
        {},
        0.6,
    ),
    # a final layer whose rule (the largest active feature, ~2 active of 64 through d_model = 48)
    # generalises, with 5 random labels among its 1,000 rule labels: it fits them (fit check) but
    # at a higher loss than the rule points, so the train loss ranks them first (the tempering
    # variance does nearly as well: benchmarks/memorisation_detection.py)
    "unembed": (
        {"n_features": 64, "sparsity": 0.97, "d_model": 48, "T": 1000, "plant_random_labels": 5},
        {"steps": 1000, "lr": 3e-2, "weight_decay": 1e-2, "warmup": 50},
        "train_loss",
        {},
        0.8,
    ),
}


def _trained(name, spec, tr):
    b = get_bundle(name)
    spec = {**spec, "seed": 0, "n_test": 256}
    model = b.build(spec)
    train, test = b.data(spec)
    memlens.train(model, train, progress=False, **tr)
    return model, train


@pytest.mark.parametrize("name", list(CASES))
def test_planted_points_rank_in_the_best_detectors_top_k(name):
    spec, tr, detector, sgld, min_fitted = CASES[name]
    model, train = _trained(name, spec, tr)
    assert int(train.planted.sum()) == 5
    # the model memorised them: their loss is below half their fresh controls'
    fc = fit_check(model, get_bundle(name).task({**spec, "seed": 0}), spec["T"], 0)
    assert fc.fitted[0] >= min_fitted, fc.summary()
    cheap = ["train_loss", "grad_norm", "dstar", "dictionary"]
    res = find_memorised(model, train, detectors=cheap, progress=False, **sgld)
    ranks = res.planted_ranks(detector)[0]
    k = 3 * 5
    hits = sum(r <= k for r in ranks)
    assert hits >= 4, f"{detector} ranks the planted points {ranks} of {spec['T']}"
    assert float(res.auroc()[detector][0]) >= 0.9
    assert res.best()[0] == detector


def test_tempering_finds_what_the_bottleneck_memorised():
    """Each point's loss rise under tempering at t = 10 ranks the memorised planted points high
    where D* at the hidden layer (the representation) does not."""
    spec, tr, _, _, _ = CASES["bottleneck"]
    model, train = _trained("bottleneck", spec, tr)
    res = find_memorised(
        model,
        train,
        detectors=["dstar", "tempering_rise"],
        hooks=["hook_hidden"],
        progress=False,
        step_size=0.1,
        thin=3,
        draws=40,
        chains=2,
    )
    au = {d: float(a[0]) for d, a in res.auroc().items()}
    assert au["tempering_rise"] >= 0.85, au
    assert au["dstar"] <= au["tempering_rise"] - 0.1, au


def test_a_plugin_gets_planted_memories_and_the_detectors(monkeypatch):
    """The lookup plugin (tutorials/lookup_plugin), registered as a user registers it, plants
    points from its spec and runs every cheap detector, with no code beyond its bundle."""
    from pathlib import Path

    from memlens.registry import MODELS

    monkeypatch.syspath_prepend(str(Path(__file__).parents[2] / "tutorials" / "lookup_plugin"))
    import memlens_lookup

    memlens.register_model("lookup-test")(memlens_lookup.BUNDLE)
    try:
        spec = {"T": 120, "n_features": 40, "plant_private": 4, "plant_repeats": 3, "seed": 0}
        b = get_bundle("lookup-test")
        model = b.build(spec)
        train, _ = b.data(spec)
        assert int(train.planted.sum()) == 7
        memlens.train(model, train, steps=400, lr=1e-2, warmup=20, progress=False)
        res = memlens.get_probe("memorised")(
            train=train, detectors=["train_loss", "grad_norm", "dstar", "dictionary"]
        ).run(model, train)
        assert {"train_loss", "grad_norm", "dstar", "dictionary"} <= set(res.scores)
        assert {f"dstar:{h}" for h in model.hook_dict} - {"dstar:hook_attn"} <= set(res.scores)
        for s in res.scores.values():
            assert s.shape == (1, 120)
        au = res.auroc()
        assert all(0.0 <= float(a[0]) <= 1.0 for a in au.values())
        # the three copies of the repeated point are one point: every detector that reads only
        # the model at w* gives them one score
        x = train.inputs[:, 0]
        copies = [
            j
            for j in range(120)
            if bool(train.planted[j, 0]) and bool((x == x[j]).all(-1).sum() == 3)
        ]
        assert len(copies) == 3
        for d in ("train_loss", "grad_norm"):
            s = res.scores[d][0, copies]
            assert torch.allclose(s, s[0].expand(3), rtol=1e-4), (d, s)
    finally:
        MODELS.unregister("lookup-test")


def _benchmark(stem: str):
    """A module of benchmarks/ (not a package), imported from its file."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{stem}.py"
    spec = importlib.util.spec_from_file_location(stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.user_errors
@pytest.mark.parametrize("plant", ["repeats=10", "plant_repeats=ten", "plant_repeats"])
def test_detection_benchmark_refuses_a_bad_planting_before_any_work(plant, capsys):
    """``benchmarks/memorisation_detection.py --plant`` takes plant_KEY=N pairs; anything else is
    refused by name before a model is trained."""
    with pytest.raises(SystemExit) as e:
        _benchmark("memorisation_detection").main(["--plant", plant])
    assert e.value.code == 2 and "--plant" in capsys.readouterr().err


def test_mlp_output_sensitivity_closed_form_matches_autograd():
    """benchmarks/mlp_tempering_sensitivity.py explains the MLP block's tempering scores by each
    point's output sensitivity, in closed form: it must equal the squared Frobenius norm of the
    output's Jacobian that autograd computes, per point and instance."""
    mod = _benchmark("mlp_tempering_sensitivity")
    b = get_bundle("mlp")
    model = b.build({"n_features": 30, "d_model": 12, "d_mlp": 16, "T": 6, "seed": 1})
    model.b_in.data.normal_()  # a mix of active and inactive neurons
    x = torch.randn(6, model.W_in.shape[0], 12)
    S, _ = mod.sensitivity(model, x)
    for i in range(x.shape[1]):  # the ground truth here is the test's own, not the benchmark's
        W = [p.detach()[i] for p in (model.W_in, model.b_in, model.W_out, model.b_out)]

        def f(W_in, b_in, W_out, b_out, xi):
            return W_out @ torch.relu(W_in @ xi + b_in) + b_out

        for t in range(6):
            J = torch.func.jacrev(f, argnums=(0, 1, 2, 3))(*W, x[t, i])
            want = sum(float((j**2).sum()) for j in J)
            assert float(S[i, t]) == pytest.approx(want, rel=1e-5), (i, t)
