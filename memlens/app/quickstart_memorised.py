"""The quickstart's step 3: which training points did the generalising model memorise?

The story's generalising model is trained with ``PLANTED`` points carrying private features
(active in no other training point, :mod:`memlens.planted`): only memorisation can fit them. Every
cheap detector of the ``memorised`` probe, and each point's loss rise under a short tempering run,
ranks the training points; the step prints each detector's AUROC against the planted points, the
best one and the planted points' ranks, and the fit check (did the model fit them?)."""

from __future__ import annotations

from typing import Any

from memlens.registry import get_probe

__all__ = ["PLANTED", "planted_spec", "memorised_step"]

#: points planted with private features (two each) in the generalising story model
PLANTED = 8
#: the detectors the quickstart runs (the characteristic temperature needs a ladder: see
#: ``memlens memorised`` and benchmarks/memorisation_detection.py)
DETECTORS = ("train_loss", "dstar", "dictionary", "tempering_rise")  # grad_norm: T backward passes
SGLD = {"chains": 2, "draws": 40, "thin": 3, "step_size": 3e-2}


def planted_spec(spec: dict) -> dict:
    return {**spec, "plant_private": PLANTED}


def memorised_step(bundle, model, train, spec: dict, seed: int) -> dict[str, Any]:
    """Run the detectors on ``model`` (trained on ``train``, recipe ``spec`` with planted points);
    print and return the numbers (AUROC per detector, the best, the planted points' ranks)."""
    from memlens.planted import fit_check

    res = get_probe("memorised").find(
        model, train, detectors=DETECTORS, temperature=10.0, seed=seed, progress=False, **SGLD
    )
    fc = fit_check(model, bundle.task(spec), len(train), seed)
    au = {d: float(a[0]) for d, a in res.auroc().items()}
    pk = {d: float(p[0]) for d, p in res.precision_at_k().items()}
    best, best_au = res.best()
    rep = "dstar"
    numbers = {
        "T": len(train),
        "planted": PLANTED,
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
    print(
        f"\n== 3. Which points are memorised? {PLANTED} of the generalising model's "
        f"{len(train)} points carry two private features each =="
    )
    print(
        f"Did it fit them? Their train loss {numbers['planted_loss']:.3g} vs "
        f"{numbers['control_loss']:.3g} on fresh points carrying the same private features "
        f"({numbers['fitted']:.0%} below half their control's): "
        + (
            "it memorised them."
            if numbers["fitted"] >= 0.5
            else "it did NOT memorise them, so the detectors below are finding the points it "
            "could not fit (a train-loss ranking finds those; see README, 'Which points are "
            "memorised?', for models that do memorise their planted points)."
        )
    )
    print(f"{'detector':28s} {'AUROC':>6s} {'precision@' + str(PLANTED):>13s}")
    for d in sorted(au, key=lambda d: -au[d]):
        tag = "  (reads the data, not the model)" if d in res.data_only else ""
        print(f"{d:28s} {au[d]:6.2f} {pk[d]:13.2f}{tag}")
    print(
        f"Best: {best} (AUROC {best_au:.2f}) ranks the planted points "
        f"{numbers['best_ranks']} of {len(train)}; D* at {numbers['hook']} ranks them "
        f"{numbers['dstar_ranks']} (AUROC {au[rep]:.2f})."
    )
    return {"numbers": numbers, "result": res}
