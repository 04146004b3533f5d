"""The ``memlens`` command. Every subcommand is a thin layer over the Python API.

Subcommands register themselves in ``COMMANDS``: ``name -> (add_arguments, run)``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

COMMANDS: dict[
    str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {}


def command(name: str, help: str):
    def deco(add_arguments):
        def register(run):
            COMMANDS[name] = (add_arguments, run, help)
            return run

        return register

    return deco


def _quickstart_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", default="memlens-quickstart", help="report folder to write (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


@command("quickstart", "the whole story: train, read the dictionary, D*, temper; report")(
    _quickstart_args
)
def _quickstart(ns: argparse.Namespace) -> int:
    from memlens.quickstart import run

    run(out=ns.out, seed=ns.seed, progress=not ns.no_progress)
    return 0


def _list_args(p: argparse.ArgumentParser) -> None:
    pass


@command("list", "list registered models and probes, with where each comes from")(_list_args)
def _list(ns: argparse.Namespace) -> int:
    from memlens.registry import MODELS, PROBES

    for reg in (MODELS, PROBES):
        print(f"{reg.kind}s ({reg.group}):")
        for name in reg.names():
            print(f"  {name:16s} {reg.source(name)}")
    return 0


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {kind.__name__}s, got {text!r}"
            ) from None

    return parse


def _positive(kind):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return v

    return parse


def _axis(text: str):
    import json

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected AXIS=V1,V2,..., got {text!r}")
    k, v = text.split("=", 1)
    vals = []
    for x in v.split(","):
        try:
            vals.append(json.loads(x))
        except json.JSONDecodeError:
            vals.append(x)
    return k.strip(), vals


def _optimizer_args(p: argparse.ArgumentParser, steps_help: str) -> None:
    """--steps, --lr, --weight-decay: each overrides the preset's value when given."""
    p.add_argument(
        "--steps", type=_positive(int), default=None, help=f"{steps_help} (default: the preset's)"
    )
    p.add_argument(
        "--lr",
        type=_positive(float),
        default=None,
        help="peak learning rate (default: the preset's)",
    )
    p.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help="AdamW weight decay (default: the preset's)",
    )


def _sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="registered model: bottleneck, mlp or unembed (see `memlens list`)",
    )
    p.add_argument(
        "--preset",
        default="cpu",
        choices=["paper", "cpu", "smoke", "phase"],
        help="paper: Anthropic scale, n=10000, S=0.999, 50k full-batch steps (GPU); "
        "cpu: n=1000, S=0.99 (minutes on a laptop); smoke: seconds; "
        "phase: T x a width, for `memlens report`'s phase diagram (minutes)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="results folder (created; resumed if it holds "
        "the same sweep, refused if it holds another)",
    )
    p.add_argument(
        "--T",
        type=_csv(int),
        default=None,
        help="training-set sizes in points, comma-separated (default: the preset's)",
    )
    p.add_argument(
        "--seeds",
        type=_csv(int),
        default=None,
        help="seeds (init and data), comma-separated (default: the preset's)",
    )
    p.add_argument(
        "--set",
        type=_axis,
        action="append",
        default=[],
        metavar="AXIS=V1,V2",
        help="extra grid axis, e.g. --set d_hidden=2,3 or --set sparsity=0.9,0.99",
    )
    _optimizer_args(p, "optimizer steps per group")
    p.add_argument(
        "--probes",
        default="dimensionality,dictionary",
        help="probes recorded per cell, comma-separated, or 'none'",
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="refuse an out/ that already holds results instead of resuming",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


@command("sweep", "train a grid of T x seeds (x widths) packed into instances; resumable")(
    _sweep_args
)
def _sweep(ns: argparse.Namespace) -> int:
    import time

    from memlens.sweeps import sweep

    grid = {}
    if ns.T is not None:
        grid["T"] = ns.T
    if ns.seeds is not None:
        grid["seed"] = ns.seeds
    for k, v in ns.set:
        grid[k] = v
    train = {
        k: v
        for k, v in (("steps", ns.steps), ("lr", ns.lr), ("weight_decay", ns.weight_decay))
        if v is not None
    }
    probes = () if ns.probes.strip() in ("", "none") else tuple(ns.probes.split(","))
    t0 = time.perf_counter()
    rows = sweep(
        ns.model,
        grid,
        preset=ns.preset,
        train=train,
        probes=probes,
        out=ns.out,
        resume=not ns.no_resume,
        progress=not ns.no_progress,
    )
    print(
        f"{len(rows)} cells in {ns.out}/results.jsonl ({time.perf_counter() - t0:.0f} s); "
        f"next: memlens report {ns.out}"
    )
    return 0


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
        help="first run these probes (comma-separated) on every finished cell and "
        "add their scalars to the table, e.g. for a sweep run with --probes none",
    )


@command("report", "write a sweep's figures (PNG) and summary.md")(_report_args)
def _report(ns: argparse.Namespace) -> int:
    from memlens.sweeps import add_probes, report

    if ns.add_probes:
        add_probes(ns.out, [p for p in ns.add_probes.split(",") if p], progress=True)
    rep = report(ns.out, ns.figures)
    print(open(rep["summary"]).read())
    print("wrote " + ", ".join(rep["figures"]) + f", {rep['summary']}")
    return 0


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="registered model: bottleneck, mlp or unembed")
    p.add_argument(
        "--preset",
        default="cpu",
        choices=["paper", "cpu", "smoke", "phase"],
        help="task and training settings to start from (see `memlens sweep`)",
    )
    p.add_argument("--T", type=_positive(int), required=True, help="training-set size (points)")
    p.add_argument("--seed", type=int, default=0, help="seed of the init and the data")
    p.add_argument(
        "--set",
        type=_axis,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a task/model setting, e.g. --set d_hidden=3",
    )
    _optimizer_args(p, "optimizer steps")
    p.add_argument("--out", required=True, help="checkpoint file to write (.pt)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


@command("train", "train one model on T points and save a checkpoint (with its data recipe)")(
    _train_args
)
def _train(ns: argparse.Namespace) -> int:
    from memlens.registry import get_bundle
    from memlens.sweeps import normalise
    from memlens.training import train

    bundle = get_bundle(ns.model)
    p = bundle.preset(ns.preset)
    task = {**p["task"], **{k: (v[0] if len(v) == 1 else v) for k, v in ns.set}}
    tr = {
        **p["train"],
        **{
            k: v
            for k, v in (("steps", ns.steps), ("lr", ns.lr), ("weight_decay", ns.weight_decay))
            if v is not None
        },
    }
    _, t, tr = normalise(bundle, {"T": [ns.T], "seed": [ns.seed]}, task, tr)
    spec = {**t, "T": ns.T, "seed": ns.seed}
    model = bundle.build(spec)
    train_set, test_set = bundle.data(spec)
    res = train(
        model,
        train_set,
        test=test_set,
        steps=tr["steps"],
        lr=tr["lr"],
        weight_decay=tr["weight_decay"],
        warmup=min(tr["warmup"], tr["steps"]),
        schedule=tr["schedule"],
        batch_size=tr["batch_size"],
        l1=tr["l1"],
        seed=ns.seed,
        progress=not ns.no_progress,
    )
    model.save(ns.out, recipes=[spec])
    print(
        f"{ns.model} T={ns.T} seed={ns.seed}: train loss {float(res.train_loss[0]):.4g}, "
        f"test loss {float(res.test_loss[0]):.4g} ({res.seconds:.1f} s); wrote {ns.out}"
    )
    return 0


def _probe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "checkpoint", help="a checkpoint from `memlens train` or a sweep's checkpoints/group-NNN.pt"
    )
    p.add_argument(
        "--probe", default="dimensionality", help="registered probe name (see `memlens list`)"
    )
    p.add_argument(
        "--instance", type=int, default=0, help="which instance of a packed checkpoint (0-based)"
    )
    p.add_argument("--json", default=None, help="also write the full result as JSON here")


def _load_instance(path: str, instance: int):
    from memlens.hooked import load_with_recipes
    from memlens.registry import bundle_of

    model, specs = load_with_recipes(path)
    if not 0 <= instance < model.n_instances:
        raise ValueError(f"--instance must be in [0, {model.n_instances}), got {instance}")
    if not specs:
        raise ValueError(f"{path} has no data recipe; write it with `memlens train` or a sweep")
    train_set, _ = bundle_of(model).data(specs[instance])
    return model.select_instances([instance]), train_set, specs[instance]


@command("probe", "run a probe on one saved model and its training set; print the summary")(
    _probe_args
)
def _probe(ns: argparse.Namespace) -> int:
    from memlens.io import write_json
    from memlens.probe import resolve_probe
    from memlens.registry import get_probe

    get_probe(ns.probe)  # an unknown probe fails before loading anything
    model, train_set, spec = _load_instance(ns.checkpoint, ns.instance)
    result = resolve_probe(ns.probe, train=train_set).run(model, train_set)
    print(
        f"{ns.probe} on {ns.checkpoint} [instance {ns.instance}, T={spec['T']}, "
        f"seed={spec['seed']}]"
    )
    print(result.summary())
    if ns.json:
        write_json(ns.json, result.to_dict())
    return 0


def _temper_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a checkpoint from `memlens train` or a sweep")
    p.add_argument("--instance", type=int, default=0, help="which instance (0-based)")
    p.add_argument(
        "--temperatures",
        type=_csv(float),
        default=[1.0],
        help="temperatures t = 1/beta, comma-separated (t=1 is nbeta = n/log n)",
    )
    p.add_argument("--chains", type=_positive(int), default=4, help="SGLD chains per temperature")
    p.add_argument("--draws", type=_positive(int), default=200, help="SGLD draws per chain")
    p.add_argument(
        "--step-size",
        type=lambda v: v if v == "auto" else _positive(float)(v),
        default="auto",
        help="SGLD step size epsilon: 'auto' chooses, per temperature, a step where the LLC no "
        "longer changes with epsilon and the chains mix (what memlens.calibrate reports); a "
        "number fixes it (too large biases the LLC up, too small leaves the chains unmixed)",
    )
    p.add_argument(
        "--localization",
        type=float,
        default=1.0,
        help="gamma, pull towards w* (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


@command("temper", "SGLD-temper one saved model: local learning coefficient per temperature")(
    _temper_args
)
def _temper(ns: argparse.Namespace) -> int:
    from memlens.sampling import temper

    if any(t <= 0 for t in ns.temperatures):
        raise ValueError(f"temperatures must be positive, got {ns.temperatures}")
    model, train_set, _ = _load_instance(ns.checkpoint, ns.instance)
    res = temper(
        model,
        train_set,
        temperatures=ns.temperatures,
        chains=ns.chains,
        draws=ns.draws,
        step_size=ns.step_size,
        localization=ns.localization,
        seed=ns.seed,
        progress=not ns.no_progress,
    )
    print(res.summary())
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one-line reason, exit status 2
        self.exit(2, f"memlens: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="memlens",
        description="Hookable toy models and probes for "
        "memorisation, double descent and tempering.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (add_arguments, _, help_) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return 2
    _, run, _ = COMMANDS[ns.command]
    try:
        return int(run(ns) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"memlens {ns.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
