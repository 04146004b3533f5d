"""``memlens train``, ``probe``, ``temper`` and ``calibrate``: the jobs on one model.

Every option is parsed and every path checked before a model is built or loaded; every setting is
validated by the Python API it is handed to, before any step runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from memlens.cli import command
from memlens.cli.jobs import add_training_args, coerce_settings, training_overrides
from memlens.cli.values import (
    check_output_dir,
    check_output_file,
    csv,
    positive,
    probe_arg,
    probe_specs,
    setting,
    step_size,
)

# ----------------------------------------------------------------------------- train


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a registered model (see `memlens list`)")
    p.add_argument(
        "--preset",
        default="cpu",
        help="the model's preset whose task and training settings to start from "
        "(`memlens list` shows them)",
    )
    p.add_argument("--T", type=positive(int), required=True, help="training-set size (points)")
    p.add_argument("--seed", type=int, default=0, help="seed of the init and the data")
    p.add_argument(
        "--set",
        type=setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a task or model setting, e.g. --set d_hidden=3 --set normalize=false",
    )
    add_training_args(p, "optimizer steps")
    p.add_argument("--out", required=True, help="checkpoint file to write (.pt)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


@command(
    "train", "train one model on T points and save a checkpoint with its data recipe", _train_args
)
def _train(ns: argparse.Namespace) -> int:
    out = check_output_file("--out", ns.out, force=ns.force)
    from memlens.persistence import save
    from memlens.registry import get_bundle
    from memlens.sweeps import normalise
    from memlens.training import TrainConfig, train

    bundle = get_bundle(ns.model)
    p = bundle.preset(ns.preset)
    sets = coerce_settings(bundle, ns.set)
    for key, values in sets.items():
        if len(values) != 1:
            raise ValueError(f"--set {key}: train takes one value, got {values} (sweep takes many)")
    task = {**p["task"], **{k: v[0] for k, v in sets.items()}}
    tr = {**p["train"], **training_overrides(ns)}
    _, task, tr = normalise(bundle, {"T": [ns.T], "seed": [ns.seed]}, task, tr)  # validates all
    spec = {**task, "T": ns.T, "seed": ns.seed}
    model = bundle.build(spec)
    train_set, test_set = bundle.data(spec)
    cfg = TrainConfig.of(tr, warmup=min(tr["warmup"], tr["steps"]), seed=ns.seed)
    res = train(model, train_set, cfg, test=test_set, progress=not ns.no_progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    save(model, out, recipes=[spec])
    print(
        f"{ns.model} T={ns.T} seed={ns.seed}: train loss {float(res.train_loss[0]):.4g}, "
        f"test loss {float(res.test_loss[0]):.4g} ({bundle.loss_units}; {res.seconds:.1f} s); "
        f"wrote {out}"
    )
    return 0


# ----------------------------------------------------------------------------- shared


def _checkpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint", help="a checkpoint from `memlens train` or a sweep's checkpoints/group-NNN.pt"
    )
    p.add_argument(
        "--instance",
        type=int,
        default=0,
        help="which instance of a packed checkpoint (0-based; `memlens probe` prints each "
        "instance's T and seed)",
    )


def check_checkpoint(path: str) -> None:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if p.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a folder; give a .pt file")


def load_instance(path: str, instance: int):
    """The model of one instance of a checkpoint, its training set and its spec."""
    from memlens.persistence import load_with_recipes
    from memlens.registry import bundle_of

    model, specs = load_with_recipes(path)
    if not 0 <= instance < model.n_instances:
        raise ValueError(f"--instance must be in [0, {model.n_instances}), got {instance}")
    if not specs:
        raise ValueError(f"{path} has no data recipe; write it with `memlens train` or a sweep")
    train_set, _ = bundle_of(model).data(specs[instance])
    return model.select_instances([instance]), train_set, specs[instance]


def _probe_opts(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--probe-arg",
        type=probe_arg,
        action="append",
        default=[],
        metavar="[PROBE.]KEY=VALUE",
        help=f"an argument of a {what}, e.g. --probe-arg dimensionality.hook=hook_pre",
    )


def _json_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", default=None, help="also write the full result as JSON to this file")
    p.add_argument("--force", action="store_true", help="overwrite --json if it exists")


# ----------------------------------------------------------------------------- probe


def _probe_args(p: argparse.ArgumentParser) -> None:
    _checkpoint_args(p)
    p.add_argument(
        "--probe", default="dimensionality", help="a registered probe (see `memlens list`)"
    )
    _probe_opts(p, "probe")
    _json_opts(p)
    p.add_argument("--figure", default=None, help="also draw the probe's figure to this PNG")


@command(
    "probe", "run a probe on one saved model and its training set; print the summary", _probe_args
)
def _probe(ns: argparse.Namespace) -> int:
    check_checkpoint(ns.checkpoint)
    json_out = ns.json and check_output_file("--json", ns.json, force=ns.force)
    fig_out = ns.figure and check_output_file("--figure", ns.figure, force=ns.force)
    from memlens.probe import resolve_probe
    from memlens.registry import get_probe

    (spec,) = probe_specs([ns.probe], ns.probe_arg)
    get_probe(ns.probe)  # an unknown probe fails before loading anything
    model, train_set, cell = load_instance(ns.checkpoint, ns.instance)
    probe = resolve_probe(spec, train=train_set)
    result = probe.run(model, train_set)
    where = f"instance {ns.instance}, T={cell['T']}, seed={cell['seed']}"
    print(f"{ns.probe} on {ns.checkpoint} [{where}]")
    print(result.summary())
    if json_out:
        _save_json(result.to_dict(), json_out)
    if fig_out:
        _save_figure(result.plot(), fig_out)
    return 0


def _save_json(data: dict, path: Path) -> None:
    from memlens.io import write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, data)
    print(f"wrote {path}")


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = getattr(fig, "figure", fig)  # an Axes gives its figure
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
    print(f"wrote {path}")


# ----------------------------------------------------------------------------- temper, calibrate


def _sampler_args(p: argparse.ArgumentParser) -> None:
    _checkpoint_args(p)
    p.add_argument(
        "--temperatures",
        type=csv(float),
        default=[1.0],
        help="temperatures t, comma-separated; rung t samples at inverse temperature nbeta/t, "
        "t = 1 is nbeta = n / log n (n: training points)",
    )
    p.add_argument(
        "--chains",
        type=positive(int),
        default=None,
        help="SGLD chains per temperature (default: 8)",
    )
    p.add_argument(
        "--draws",
        type=positive(int),
        default=None,
        help="kept draws per chain, burn-in included (default: 200; with the automatic step, "
        "up to 1600 where a cell's LLC has a standard error above 3%%)",
    )
    p.add_argument(
        "--localization",
        type=positive(float),
        default=None,
        help="gamma, the pull towards the trained weights w* (default: 1.0)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _sampler_settings(ns: argparse.Namespace) -> dict:
    pairs = (("chains", ns.chains), ("draws", ns.draws), ("localization", ns.localization))
    return {"seed": ns.seed, **{k: v for k, v in pairs if v is not None}}


def _temper_args(p: argparse.ArgumentParser) -> None:
    _sampler_args(p)
    p.add_argument(
        "--step-size",
        type=step_size,
        default="auto",
        help="SGLD step size epsilon: 'auto' chooses one per temperature where the LLC no longer "
        "changes with epsilon and the chains mix (what `memlens calibrate` shows); a number "
        "fixes it (too large biases the LLC up, too small leaves the chains unmixed)",
    )
    p.add_argument(
        "--probes",
        default="none",
        help="streaming probes run on the tempered draws, comma-separated, e.g. survival "
        "(which circuits are noised out at which temperature)",
    )
    _probe_opts(p, "streaming probe")
    _json_opts(p)
    p.add_argument(
        "--figures",
        default=None,
        help="folder for the loss traces, the LLC spectrum and each probe's figure (PNG)",
    )


def _check_temperatures(temps: list[float]) -> None:
    bad = [t for t in temps if not t > 0]
    if bad:
        raise ValueError(f"--temperatures must be positive, got {bad}")


@command(
    "temper",
    "SGLD-temper one saved model: local learning coefficient per temperature, health, probes",
    _temper_args,
)
def _temper(ns: argparse.Namespace) -> int:
    check_checkpoint(ns.checkpoint)
    _check_temperatures(ns.temperatures)
    json_out = ns.json and check_output_file("--json", ns.json, force=ns.force)
    figs = ns.figures and check_output_dir("--figures", ns.figures)
    names = [n.strip() for n in ns.probes.split(",") if n.strip() and n.strip() != "none"]
    probes = probe_specs(names, ns.probe_arg)
    from memlens.sampling import SGLDConfig, temper

    cfg = SGLDConfig.make(None, step_size=ns.step_size, **_sampler_settings(ns))  # validates
    model, train_set, _ = load_instance(ns.checkpoint, ns.instance)
    res = temper(
        model, train_set, ns.temperatures, probes=probes, config=cfg, progress=not ns.no_progress
    )
    print(res.summary())
    for name in res.probes:
        print(res.probe(name).summary())
    if json_out:
        _save_json(res.to_dict(), json_out)
    if figs:
        figs.mkdir(parents=True, exist_ok=True)
        _save_figure(res.plot_trace(), figs / "traces.png")
        if len(ns.temperatures) > 1:
            _save_figure(res.spectrum().plot(), figs / "spectrum.png")
        for name in res.probes:
            _save_figure(res.probe(name).plot(), figs / f"{name}.png")
    return 0


def _calibrate_args(p: argparse.ArgumentParser) -> None:
    _sampler_args(p)
    _json_opts(p)
    p.add_argument("--figure", default=None, help="also draw λ̂ against the step size to this PNG")


@command(
    "calibrate",
    "show the step size `temper --step-size auto` would choose per temperature, and why",
    _calibrate_args,
)
def _calibrate(ns: argparse.Namespace) -> int:
    check_checkpoint(ns.checkpoint)
    _check_temperatures(ns.temperatures)
    json_out = ns.json and check_output_file("--json", ns.json, force=ns.force)
    fig_out = ns.figure and check_output_file("--figure", ns.figure, force=ns.force)
    from memlens.sampling import SGLDConfig, calibrate

    cfg = SGLDConfig.make(None, **_sampler_settings(ns))
    model, train_set, _ = load_instance(ns.checkpoint, ns.instance)
    cal = calibrate(model, train_set, ns.temperatures, config=cfg, progress=not ns.no_progress)
    print(cal.table())
    print(cal.summary())
    if json_out:
        _save_json(cal.to_dict(), json_out)
    if fig_out:
        _save_figure(cal.plot(), fig_out)
    return 0
