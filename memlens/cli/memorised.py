"""``memlens memorised CKPT``: which training points did the model memorise? Every detector of
the ``memorised`` probe ranks the points; when the checkpoint's recipe planted points (``--set
plant_private=10`` at ``memlens train``), each detector's AUROC and precision@k against them, and
a ROC figure."""

from __future__ import annotations

import argparse

from memlens.cli import command
from memlens.cli.models import check_checkpoint, load_instance
from memlens.cli.values import check_output_file, positive, step_size


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint from `memlens train` or a sweep")
    p.add_argument("--instance", type=int, default=0, help="which instance (0-based)")
    p.add_argument(
        "--detectors",
        type=_names,
        default=None,
        help="detectors to run, comma-separated (default: all; see probes.memorised.DETECTORS)",
    )
    p.add_argument(
        "--temperature", type=positive(float), default=10.0, help="tempering temperature t"
    )
    p.add_argument("--chains", type=positive(int), default=4, help="SGLD chains")
    p.add_argument("--draws", type=positive(int), default=100, help="SGLD draws per chain")
    p.add_argument(
        "--step-size",
        type=step_size,
        default="auto",
        help="SGLD step size of the tempering detectors: 'auto' (calibrated; minutes on a "
        "transformer) or a number, e.g. 1e-4 for the facts transformer",
    )
    p.add_argument(
        "--localization",
        type=positive(float),
        default=None,
        help="gamma, the pull towards the trained weights w* (default: 1.0; a transformer's "
        "fitted cross entropy needs a tighter one, e.g. 300)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--top", type=positive(int), default=10, help="points listed per detector")
    p.add_argument("--json", default=None, help="also write scores, ranks and AUROCs as JSON")
    p.add_argument("--figure", default=None, help="ROC figure (PNG; needs planted points)")
    p.add_argument("--force", action="store_true", help="overwrite --json/--figure")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


@command(
    "memorised", "rank training points by every memorisation detector (AUROC if planted)", _args
)
def _memorised(ns: argparse.Namespace) -> int:
    check_checkpoint(ns.checkpoint)
    json_out = ns.json and check_output_file("--json", ns.json, force=ns.force)
    fig_out = ns.figure and check_output_file("--figure", ns.figure, force=ns.force)
    from memlens.registry import get_probe

    probe = get_probe("memorised")  # found through the registry, like any plugin probe
    DETECTORS, find_memorised = probe.DETECTORS, probe.find
    bad = sorted(set(ns.detectors or ()) - set(DETECTORS))
    if bad:
        raise ValueError(f"--detectors: unknown {bad}; known: {', '.join(DETECTORS)}")
    model, train_set, cell = load_instance(ns.checkpoint, ns.instance)
    if fig_out and train_set.planted is None:
        raise ValueError("--figure draws ROC curves against planted points; this recipe has none")
    res = find_memorised(
        model,
        train_set,
        detectors=ns.detectors,
        temperature=ns.temperature,
        seed=ns.seed,
        progress=not ns.no_progress,
        chains=ns.chains,
        draws=ns.draws,
        step_size=ns.step_size,
        **({} if ns.localization is None else {"localization": ns.localization}),
    )
    print(
        f"memorised on {ns.checkpoint} [instance {ns.instance}, T={cell['T']}, seed={cell['seed']}]"
    )
    print(res.summary())
    print(f"top {ns.top} points per detector (1 = most likely memorised):")
    planted = None if res.planted is None else res.planted[0]
    for d, r in res.ranks().items():
        top = r[0].argsort()[: ns.top].tolist()
        marks = "" if planted is None else f"  ({sum(bool(planted[j]) for j in top)} planted)"
        print(f"  {d:<28} {top}{marks}")
    if json_out:
        from memlens.io import write_json

        json_out.parent.mkdir(parents=True, exist_ok=True)
        write_json(json_out, res.to_dict())
        print(f"wrote {json_out}")
    if fig_out:
        import matplotlib.pyplot as plt

        fig = res.plot().figure
        fig_out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(fig_out, dpi=130)
        plt.close(fig)
        print(f"wrote {fig_out}")
    return 0
