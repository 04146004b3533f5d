"""``memlens quickstart``, ``list``, ``sweep`` and ``report``: the jobs over many models."""

from __future__ import annotations

import argparse
import time

from memlens.cli import command
from memlens.cli.values import (
    check_output_dir,
    csv,
    non_negative,
    positive,
    probe_arg,
    probe_specs,
    setting,
)

# ----------------------------------------------------------------------------- quickstart


def _quickstart_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="memlens-quickstart", help="report folder to write")
    p.add_argument("--seed", type=int, default=0, help="random seed of every model and sampler")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


@command(
    "quickstart",
    "the whole story: train, read the dictionary, D*, temper; report",
    _quickstart_args,
)
def _quickstart(ns: argparse.Namespace) -> int:
    check_output_dir("--out", ns.out)
    from memlens.app.quickstart import run

    run(out=ns.out, seed=ns.seed, progress=not ns.no_progress)
    return 0


# ----------------------------------------------------------------------------- list


@command("list", "list registered models and probes, with where each comes from", lambda p: None)
def _list(ns: argparse.Namespace) -> int:
    from memlens.registry import MODELS, PROBES

    for reg in (MODELS, PROBES):
        print(f"{reg.kind}s ({reg.group}):")
        for name in reg.names():
            extra = ""
            if reg is MODELS:
                presets = sorted(reg.get(name).presets)
                extra = f"  presets: {', '.join(presets) or 'none'}"
            print(f"  {name:16s} {reg.source(name)}{extra}")
    return 0


# ----------------------------------------------------------------------------- training options


def add_training_args(p: argparse.ArgumentParser, steps_help: str) -> None:
    """--steps, --lr, --weight-decay, --l1: each overrides the preset's value when given."""
    p.add_argument(
        "--steps", type=positive(int), default=None, help=f"{steps_help} (default: the preset's)"
    )
    p.add_argument(
        "--lr",
        type=positive(float),
        default=None,
        help="peak learning rate (default: the preset's)",
    )
    p.add_argument(
        "--weight-decay",
        type=non_negative,
        default=None,
        help="AdamW's decoupled weight decay (default: the preset's)",
    )
    p.add_argument(
        "--l1",
        type=non_negative,
        default=None,
        help="L1 penalty on the activations at the model's representation hook, per point "
        "(makes an MLP block memorise with one neuron per point; default: the preset's, "
        "usually 0)",
    )


def training_overrides(ns: argparse.Namespace) -> dict:
    pairs = (("steps", ns.steps), ("lr", ns.lr), ("weight_decay", ns.weight_decay), ("l1", ns.l1))
    return {k: v for k, v in pairs if v is not None}


def coerce_settings(bundle, settings: list[tuple[str, list]]) -> dict[str, list]:
    """``--set`` values, with text parsed as a bool where the setting is a bool (true/false, 1/0,
    yes/no) — anything else is refused there, never coerced."""
    from memlens.validate import parse_bool

    defaults = bundle.spec_keys()
    out = {}
    for key, values in settings:
        if isinstance(defaults.get(key), bool):
            values = [parse_bool(key, v) for v in values]
        out[key] = values
    return out


# ----------------------------------------------------------------------------- sweep


def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a registered model (see `memlens list`)")
    p.add_argument(
        "--preset",
        default="cpu",
        help="the model's preset to start from (`memlens list` shows them; e.g. smoke: "
        "seconds, cpu: minutes on a laptop, phase: T x a width for a phase diagram, paper: "
        "Anthropic's scale, for a GPU or a cluster)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="results folder (created; resumed if it holds the same sweep, refused if another)",
    )
    p.add_argument(
        "--T",
        type=csv(int),
        default=None,
        help="training-set sizes in points (default: the preset's)",
    )
    p.add_argument(
        "--seeds",
        type=csv(int),
        default=None,
        help="seeds of init and data (default: the preset's)",
    )
    p.add_argument(
        "--set",
        type=setting,
        action="append",
        default=[],
        metavar="AXIS=V1,V2",
        help="a grid axis, e.g. --set d_hidden=2,3 or --set sparsity=0.9,0.99 (one value fixes "
        "the setting)",
    )
    add_training_args(p, "optimizer steps per group")
    p.add_argument(
        "--probes",
        default=None,
        help="probes recorded per cell, comma-separated, or 'none' (default: the registered "
        "default probes that support the model, e.g. dimensionality and dictionary; the ones "
        "skipped are said)",
    )
    p.add_argument(
        "--probe-arg",
        type=probe_arg,
        action="append",
        default=[],
        metavar="[PROBE.]KEY=VALUE",
        help="an argument of a probe, e.g. --probe-arg dimensionality.hook=hook_pre",
    )
    p.add_argument(
        "--backend",
        default="local",
        help="where groups run: local (this process) or ray (a Ray cluster; "
        "pip install 'memlens[ray]')",
    )
    p.add_argument(
        "--address",
        default=None,
        help="with --backend ray: the cluster to join, 'auto' or HOST:PORT (default: start a "
        "local one)",
    )
    p.add_argument(
        "--no-resume", action="store_true", help="refuse an out/ that already holds results"
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _probe_names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    return [] if names in ([], ["none"]) else names


@command(
    "sweep", "train a grid of T x seeds (x widths) packed into instances; resumable", _sweep_args
)
def _sweep(ns: argparse.Namespace) -> int:
    check_output_dir("--out", ns.out)
    from memlens.registry import get_bundle
    from memlens.sweeps import sweep

    bundle = get_bundle(ns.model)
    grid = coerce_settings(bundle, ns.set)
    if ns.T is not None:
        grid["T"] = ns.T
    if ns.seeds is not None:
        grid["seed"] = ns.seeds
    from memlens.sweeps import default_probes, make_backend

    names = _probe_names(ns.probes)
    if names is None and ns.probe_arg:  # arguments of the default probes
        names = default_probes(bundle)[0]
    probes = None if names is None else probe_specs(names, ns.probe_arg)
    backend = make_backend(ns.backend, address=ns.address)
    t0 = time.perf_counter()
    rows = sweep(
        ns.model,
        grid,
        preset=ns.preset,
        train=training_overrides(ns),
        probes=probes,
        out=ns.out,
        resume=not ns.no_resume,
        progress=not ns.no_progress,
        backend=backend,
    )
    print(
        f"{len(rows)} cells in {ns.out}/results.jsonl ({time.perf_counter() - t0:.0f} s); "
        f"next: memlens report {ns.out}"
    )
    return 0


# ----------------------------------------------------------------------------- report


def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="a sweep's results folder")
    p.add_argument(
        "--figures",
        default=None,
        help="folder for the PNGs and summary.md (default: the results folder)",
    )
    p.add_argument(
        "--add-probes",
        default=None,
        help="first run these probes (comma-separated) on every finished cell and add their "
        "scalars to the table, e.g. for a sweep run with --probes none",
    )
    p.add_argument(
        "--probe-arg",
        type=probe_arg,
        action="append",
        default=[],
        metavar="[PROBE.]KEY=VALUE",
        help="an argument of a probe added with --add-probes",
    )


@command("report", "write a sweep's figures (PNG) and summary.md", _report_args)
def _report(ns: argparse.Namespace) -> int:
    from pathlib import Path

    if not (Path(ns.out) / "config.json").exists():
        raise FileNotFoundError(f"{ns.out} holds no sweep (no config.json)")
    check_output_dir("--figures", ns.figures or ns.out)
    added = probe_specs(_probe_names(ns.add_probes or ""), ns.probe_arg)
    from memlens.sweeps import add_probes, report

    if added:
        add_probes(ns.out, added, progress=True)
    rep = report(ns.out, ns.figures)
    print(Path(rep["summary"]).read_text())
    print("wrote " + ", ".join(rep["figures"]) + f", {rep['summary']}")
    return 0
