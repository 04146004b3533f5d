"""The quickstart's step 3: which training points did a generalising model memorise?

A final layer (the bundle with a ``memorised`` preset) learns a rule, the token of each point's
largest active feature, on ``T`` points; ``PLANTED`` of them carry a random label instead
(:mod:`memlens.planted`): only memorisation can fit those. The layer has room to
(its ``memorised`` preset: ~2 active of 64 features through 48 dimensions), so it does: the step
prints the fit check (the planted points' train loss against fresh points with random labels,
which the model never saw), each model detector's AUROC against the planted points, the best one
and the planted points' ranks. The story's MLP block is not used here: at 8 dimensions for 64
features and 32 neurons its generalising model fits no planted point (their loss is that of
points it never saw), so a detector would only find the points it could not fit."""

from __future__ import annotations

from typing import Any

import torch

from memlens.bundle import bundles_with
from memlens.registry import get_probe

__all__ = ["PLANTED", "MEMORISED_PRESET", "memorised_step"]

#: points planted with a random label among the rule-labelled ones
PLANTED = 8
#: the preset (task, T, training) of the model the step plants points in; the core names no model
MEMORISED_PRESET = "memorised"
#: the model detectors the quickstart runs (D* at the input hook reads the data, not the model,
#: and the characteristic temperature needs a ladder: see ``memlens memorised`` and
#: benchmarks/memorisation_detection.py; grad_norm costs T backward passes)
DETECTORS = ("train_loss", "dstar", "dictionary", "tempering_rise", "tempering_variance")
#: 4 chains x 100 draws: with 2 x 40 the sampler warns that the chains have not mixed (R-hat)
SGLD = {"chains": 4, "draws": 100, "thin": 3, "step_size": 3e-2}


def memorised_step(seed: int) -> dict[str, Any]:
    """Train the planted final layer, run the detectors on it; print and return the numbers (fit
    check, AUROC per detector, the best, the planted points' ranks) and the result."""
    from memlens.planted import fit_check
    from memlens.training import train

    bundle = bundles_with(MEMORISED_PRESET, needed_by="the quickstart's step 3")[0]
    preset = bundle.preset(MEMORISED_PRESET)
    spec = {
        **preset["task"],
        "T": preset["grid"]["T"][0],
        "plant_random_labels": PLANTED,
        "seed": seed,
    }
    data, test = bundle.data(spec)
    model = bundle.build(spec)
    fit = train(model, data, test=test, seed=seed, progress=False, **preset["train"])
    hooks = [h for h in model.hook_dict if h != "hook_in"]  # model hooks only
    res = get_probe("memorised").find(
        model, data, detectors=DETECTORS, hooks=hooks, seed=seed, progress=False, **SGLD
    )
    fc = fit_check(model, bundle.task(spec), len(data), seed)
    au = {d: float(a[0]) for d, a in res.auroc().items() if d not in res.data_only}
    pk = {d: float(p[0]) for d, p in res.precision_at_k().items() if d in au}
    best, best_au = res.best()
    rep = "dstar"
    rule = ~data.planted[:, 0]
    with torch.no_grad():
        own = model.per_example_loss(data)[:, 0].cpu()
    numbers = {
        "model": bundle.name,
        "T": len(data),
        "planted": PLANTED,
        "rule_loss": float(own[rule.cpu()].mean()),
        "test_loss": float(fit.test_loss[0]),
        "planted_loss": sum(fc.planted_loss[0]) / PLANTED,
        "control_loss": sum(fc.control_loss[0]) / PLANTED,
        "fitted": fc.fitted[0],
        "auroc": au,
        "precision_at_k": pk,
        "best": best,
        "best_auroc": best_au,
        "best_ranks": res.planted_ranks(best)[0],
        "dstar_ranks": res.planted_ranks(rep)[0],
        "hook": model.representation_hook,
        "data_only": res.data_only,
    }
    _print(numbers, bundle.title)
    return {"numbers": numbers, "result": res}


def _print(n: dict, title: str) -> None:
    print(
        f"\n== 3. Which points are memorised? A {title} learns a rule on {n['T']} points; "
        f"{n['planted']} of them carry a random label instead =="
    )
    print(
        f"The rule generalises (train loss {n['rule_loss']:.3g} on the rule points, test "
        f"{n['test_loss']:.3g}). Did it fit the random labels? Their train loss "
        f"{n['planted_loss']:.3g} vs {n['control_loss']:.3g} on fresh points with random labels "
        f"({n['fitted']:.0%} below half their control's): "
        + (
            "it memorised them."
            if n["fitted"] >= 0.5
            else "it did NOT memorise them, so the detectors below find the points it could not "
            "fit, not memorised ones."
        )
    )
    print(f"{'detector':28s} {'AUROC':>6s} {'precision@' + str(n['planted']):>13s}")
    for d in sorted(n["auroc"], key=lambda d: -n["auroc"][d]):
        print(f"{d:28s} {n['auroc'][d]:6.2f} {n['precision_at_k'][d]:13.2f}")
    print(
        f"Best: {n['best']} (AUROC {n['best_auroc']:.2f}) ranks the planted points "
        f"{n['best_ranks']} of {n['T']}; D* at {n['hook']} ranks them "
        f"{n['dstar_ranks']} (AUROC {n['auroc']['dstar']:.2f})."
    )
