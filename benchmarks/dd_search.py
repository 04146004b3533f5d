"""Search for data double descent in the three settings (issue 13, part 2).

    OMP_NUM_THREADS=1 python benchmarks/dd_search.py --setting mlp --stage coarse
    OMP_NUM_THREADS=1 python benchmarks/dd_search.py --setting unembed \\
        --vary sparsity=0.9,0.97 --vary labels=rule,random --set steps=2000
    python benchmarks/dd_search.py --table                # the table of everything run so far
    python benchmarks/dd_search.py --figure runs/dd-mlp --png docs/figures/dd_mlp_curve.png

A *configuration* is a setting's ``cpu`` preset (each model bundle's ``presets``) with some task and
training keys overridden (sparsity, n_features, d_model, d_mlp, normalize, labels, steps, lr,
weight_decay, warmup, schedule, ...), a T grid and seeds. Each configuration is one resumable
``memlens.sweep`` (packed instances, no probes) in ``OUT/runs/<id>/``; when it finishes, one row
with its curve and its peak statistics is appended to ``OUT/results.jsonl`` and the table is
printed. Re-running skips finished configurations and resumes unfinished ones.

The criterion (issue 13): the median-over-seeds test loss peaks at an interior T, at least 1.2x
the median test loss at BOTH ends of the T range. ``ratio`` is min(peak / small-T end,
peak / large-T end); ``seeds_ok`` counts seeds whose own curve rises 1.2x above both its own
ends at the median's peak T (a robustness check, not the criterion).

Stages (``--stage``) are the named lists of configurations the search ran, coarse to fine, kept
in ``benchmarks/dd_stages.py`` so the search can be rerun; ``--vary``/``--set`` run any other
configuration. The whole search (a few CPU-hours single-threaded):

    for st in coarse steps knobs vocab features refine; do for s in mlp unembed; do
        python benchmarks/dd_search.py --setting $s --stage $st; done; done
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import memlens
from memlens import io
from memlens.registry import get_bundle
from memlens.sweeps import TRAIN_KEYS

THRESHOLD = 1.2  # the criterion: peak >= 1.2x both ends
SETTINGS = ("bottleneck", "mlp", "unembed")
PRESETS = {s: get_bundle(s).presets for s in SETTINGS}  # each bundle's named presets
TASK_SEARCH_KEYS = {
    "bottleneck": ("n_features", "sparsity", "normalize", "d_hidden", "tied", "n_test"),
    "mlp": ("n_features", "sparsity", "normalize", "d_model", "d_mlp", "embed_seed", "n_test"),
    "unembed": ("n_features", "sparsity", "normalize", "d_model", "labels", "embed_seed", "n_test"),
}


# The cpu presets as they were when the search started (memlens.sweep.PRESETS then): every
# configuration of the search is this base with some keys overridden, so the stages below name the
# same configurations (and ids) whatever the presets become.
_T13 = [3, 5, 9, 17, 30, 53, 95, 169, 300, 533, 949, 1687, 3000]
_TRAIN0 = {"steps": 1000, "lr": 1e-2, "warmup": 50, "weight_decay": 1e-2}
SEARCH_BASE: dict[str, dict] = {
    "bottleneck": copy.deepcopy(PRESETS["bottleneck"]["cpu"]),
    "mlp": {
        "grid": {"T": _T13, "seed": [0, 1, 2]},
        "task": {"n_features": 100, "sparsity": 0.99, "d_model": 20, "d_mlp": 64, "n_test": 1000},
        "train": _TRAIN0,
    },
    "unembed": {
        "grid": {"T": _T13, "seed": [0, 1, 2]},
        "task": {"n_features": 100, "sparsity": 0.99, "d_model": 20, "n_test": 1000},
        "train": _TRAIN0,
    },
}


# ------------------------------------------------------------------------------ configurations
def log_T(lo: int, hi: int, n: int) -> list[int]:
    """``n`` log-spaced integer training-set sizes in [lo, hi] (duplicates removed)."""
    return sorted({int(round(v)) for v in np.geomspace(lo, hi, n)})


def make_config(
    setting: str,
    overrides: dict | None = None,
    T: list[int] | None = None,
    seeds: list[int] | None = None,
    base: str | None = None,
) -> dict:
    """A configuration: the setting's search base (:data:`SEARCH_BASE`, or the named preset
    ``base`` of each model bundle's ``presets``) with task/train keys overridden.

    Raises ``ValueError`` naming the key for keys the setting does not search over."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    p = copy.deepcopy(SEARCH_BASE[setting] if base is None else PRESETS[setting][base])
    task, train = p["task"], p["train"]
    for k, v in (overrides or {}).items():
        if k in TRAIN_KEYS:
            train[k] = v
        elif k in TASK_SEARCH_KEYS[setting]:
            task[k] = v
        else:
            raise ValueError(
                f"key {k!r} is not searched for setting {setting!r}; allowed: "
                f"{sorted(TASK_SEARCH_KEYS[setting]) + sorted(TRAIN_KEYS)}"
            )
    return {
        "setting": setting,
        "task": task,
        "train": train,
        "T": list(T if T is not None else p["grid"]["T"]),
        "seeds": list(seeds if seeds is not None else p["grid"]["seed"]),
    }


def config_id(cfg: dict) -> str:
    """A short stable name for a configuration (hash of its canonical JSON)."""
    blob = json.dumps(cfg, sort_keys=True, default=str)
    return cfg["setting"][:3] + "-" + hashlib.sha1(blob.encode()).hexdigest()[:10]


# ------------------------------------------------------------------------------ measuring
def curve(rows: list[dict]) -> dict[int, list[float]]:
    """``T -> test losses`` (one per seed, in seed order)."""
    out: dict[int, list[tuple[int, float]]] = {}
    for r in rows:
        out.setdefault(int(r["T"]), []).append((int(r["seed"]), float(r["test_loss"])))
    return {T: [v for _, v in sorted(vs)] for T, vs in sorted(out.items())}


def peak_stats(by_T: dict[int, list[float]], threshold: float = THRESHOLD) -> dict:
    """Peak statistics of a test-loss curve ``T -> [loss per seed]`` (median over seeds)."""
    Ts = sorted(by_T)
    if len(Ts) < 3:
        raise ValueError(f"a curve needs at least 3 T values to have an interior, got {Ts}")
    med = np.array([np.median(by_T[T]) for T in Ts])
    k = 1 + int(np.argmax(med[1:-1]))  # highest interior point
    r_small, r_large = med[k] / med[0], med[k] / med[-1]
    n_seeds = min(len(v) for v in by_T.values())
    seeds_ok = sum(
        by_T[Ts[k]][s] >= threshold * max(by_T[Ts[0]][s], by_T[Ts[-1]][s]) for s in range(n_seeds)
    )
    ratio = float(min(r_small, r_large))
    return {
        "T_peak": Ts[k],
        "peak": float(med[k]),
        "small_T_loss": float(med[0]),
        "large_T_loss": float(med[-1]),
        "ratio_small": float(r_small),
        "ratio_large": float(r_large),
        "ratio": ratio,
        "passes": bool(ratio >= threshold),
        "seeds_ok": int(seeds_ok),
        "n_seeds": int(n_seeds),
    }


def run_config(cfg: dict, out: Path, progress: bool = False) -> dict:
    """Train (or resume) a configuration's sweep and return its results row."""
    folder = out / "runs" / config_id(cfg)
    t0 = time.perf_counter()
    rows = memlens.sweep(
        cfg["setting"],
        {"T": cfg["T"], "seed": cfg["seeds"]},
        task=cfg["task"],
        train=cfg["train"],
        probes=(),
        out=folder,
        progress=progress,
    )
    c = curve(rows)
    return {
        "id": config_id(cfg),
        "config": cfg,
        **peak_stats(c),
        "curve": {str(T): v for T, v in c.items()},
        "train_loss_at_peak": float(
            np.median([r["train_loss"] for r in rows if r["T"] == peak_stats(c)["T_peak"]])
        ),
        "seconds": round(time.perf_counter() - t0, 1),
        "train_seconds": round(sum({r["group"]: r["train_seconds"] for r in rows}.values()), 1),
    }


def run_all(cfgs: list[dict], out: Path, progress: bool = False) -> list[dict]:
    """Run every configuration not yet in ``out/results.jsonl``; return all rows for them."""
    table = out / "results.jsonl"
    done = {r["id"]: r for r in io.read_jsonl(table)}
    rows = []
    for i, cfg in enumerate(cfgs, 1):
        cid = config_id(cfg)
        if cid not in done:
            print(f"[{i}/{len(cfgs)}] {cid}: {describe(cfg)}", flush=True)
            row = run_config(cfg, out, progress)
            io.append_jsonl(table, [row])
            done[cid] = row
            print("    " + format_row(row), flush=True)
        rows.append(done[cid])
    return rows


# ------------------------------------------------------------------------------ reporting
def describe(cfg: dict) -> str:
    """The keys where a configuration differs from its setting's cpu preset."""
    base = make_config(cfg["setting"])
    diff = {
        k: v
        for part in ("task", "train")
        for k, v in cfg[part].items()
        if base[part].get(k, "<unset>") != v
    }
    t = f"T={cfg['T'][0]}..{cfg['T'][-1]}({len(cfg['T'])})"
    if cfg["T"] == base["T"]:
        t = "T=preset"
    s = "" if cfg["seeds"] == base["seeds"] else f" seeds={len(cfg['seeds'])}"
    return (" ".join(f"{k}={v}" for k, v in diff.items()) or "preset") + f" {t}{s}"


def format_row(r: dict) -> str:
    ok = "PASS" if r["passes"] else "    "
    return (
        f"{ok} ratio {r['ratio']:5.2f} (small {r['ratio_small']:5.2f}, large "
        f"{r['ratio_large']:5.2f}) at T={r['T_peak']:<5d} seeds_ok {r['seeds_ok']}/"
        f"{r['n_seeds']}  loss {r['small_T_loss']:.3g}/{r['peak']:.3g}/{r['large_T_loss']:.3g}"
        f"  {r.get('seconds', r.get('wall_s', 0)):.0f}s"
    )


def print_table(rows: list[dict], setting: str | None = None) -> None:
    """One line per configuration, best ratio first within each setting."""
    for s in SETTINGS if setting is None else (setting,):
        mine = sorted((r for r in rows if r["config"]["setting"] == s), key=lambda r: -r["ratio"])
        if not mine:
            continue
        print(f"\n== {s}: {len(mine)} configurations, {sum(r['passes'] for r in mine)} pass")
        for r in mine:
            print(f"{r['id']}  {format_row(r)}  | {describe(r['config'])}")


def figure(folder: str | os.PathLike, png: str | os.PathLike, title: str | None = None):
    """The double-descent curve of a sweep folder: each seed faint, the median bold (log x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from memlens.sweeps import read_results

    config, rows = read_results(folder)
    setting = config["model"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    lines = (("test_loss", "tab:red", "test"), ("train_loss", "tab:blue", "train"))
    for key, color, label in lines:
        by = {}
        for r in rows:
            by.setdefault(int(r["seed"]), {})[int(r["T"])] = float(r[key])
        for _, pts in sorted(by.items()):
            Ts = sorted(pts)
            ax.plot(Ts, [pts[T] for T in Ts], color=color, alpha=0.3, lw=0.8)
        Ts = sorted({T for pts in by.values() for T in pts})
        med = [np.median([pts[T] for pts in by.values() if T in pts]) for T in Ts]
        ax.plot(Ts, med, color=color, lw=2.2, marker="o", ms=4, label=f"{label} loss, median")
    st = peak_stats(curve(rows))
    ax.axvline(st["T_peak"], color="gray", ls=":", lw=1)
    if setting == "unembed":  # the loss of a uniform guess over the vocabulary
        v = int(config["task"]["n_features"]) + 1
        ax.axhline(np.log(v), color="gray", ls="--", lw=1, label=f"uniform guess, ln {v}")
    ax.set_xscale("log")
    if setting != "unembed":
        ax.set_yscale("log")
    lo = min(st["small_T_loss"], st["large_T_loss"], st["peak"])
    bottom = lo / 30 if setting != "unembed" else 0
    ax.set_ylim(bottom=bottom)
    if setting != "unembed" and min(r["train_loss"] for r in rows) < bottom:
        ax.text(
            0.02,
            0.03,
            f"train loss below {bottom:.2g} (off the axis) where the points are memorised",
            transform=ax.transAxes,
            fontsize=7,
            color="tab:blue",
        )
    ax.set(xlabel="T (training-set size, points)", ylabel=get_bundle(setting).loss_units)
    n_seeds = len({r["seed"] for r in rows})
    ax.set_title(
        title
        or f"Double descent, {get_bundle(setting).title} (cpu preset)\n"
        f"test-loss peak at T = {st['T_peak']}: {st['ratio_small']:.2f}x small-T end, "
        f"{st['ratio_large']:.2f}x large-T end; faint: {n_seeds} seeds",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(png, dpi=130)
    plt.close(fig)
    return st


def preset_check(setting: str, out: Path, png: str | None = None, probes: bool = True) -> dict:
    """Run ``memlens sweep --model SETTING --preset cpu`` (the default path, resumable) and check
    the criterion on its table; optionally draw its curve. Prints the sweep's wall time (the sum of
    its groups' times, so a resumed sweep reports the whole)."""
    from memlens import cli
    from memlens.sweeps import read_results

    folder = out / f"preset-{setting}"
    argv = ["sweep", "--model", setting, "--preset", "cpu", "--out", str(folder)]
    if not probes:
        argv += ["--probes", "none"]
    if cli.main(argv) != 0:
        raise SystemExit(f"memlens {' '.join(argv)} failed")
    _, rows = read_results(folder)
    st = peak_stats(curve(rows))
    groups = {r["group"]: (r["group_seconds"], r["train_seconds"]) for r in rows}
    st["wall_s"] = round(sum(g for g, _ in groups.values()), 1)
    st["train_s"] = round(sum(t for _, t in groups.values()), 1)
    print(
        f"{setting} cpu preset ({len(rows)} cells, {len(groups)} groups): "
        f"{st['wall_s']:.0f} s wall ({st['train_s']:.0f} s training) -- {format_row(st)}"
    )
    if png:
        figure(folder, png)
        print(f"wrote {png}")
    return st


# ------------------------------------------------------------------------------ stages
def stage_configs(stage: str, setting: str) -> list[dict]:
    """The configurations of a stage of the search (``benchmarks/dd_stages.py``) for a setting."""
    from dd_stages import STAGES

    if stage not in STAGES or setting not in STAGES[stage]:
        have = {k: sorted(v) for k, v in STAGES.items()}
        raise ValueError(f"no stage {stage!r} for setting {setting!r}; stages: {have}")
    out = []
    for base, changes, (lo, hi, n, n_seeds) in STAGES[stage][setting]:
        for c in changes:
            out.append(make_config(setting, {**base, **c}, log_T(lo, hi, n), list(range(n_seeds))))
    return out


# ------------------------------------------------------------------------------ command line
def _value(s: str):
    try:
        return json.loads(s)
    except json.JSONDecodeError:
        return s


def _kv(s: str) -> tuple[str, list]:
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected KEY=V1,V2,..., got {s!r}")
    k, v = s.split("=", 1)
    return k, [_value(x) for x in v.split(",")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", choices=SETTINGS)
    ap.add_argument("--stage", help="a named list of configurations (benchmarks/dd_stages.py)")
    ap.add_argument("--vary", type=_kv, action="append", default=[], metavar="KEY=V1,V2")
    ap.add_argument("--set", type=_kv, action="append", default=[], metavar="KEY=V")
    ap.add_argument("--T", help="LO:HI:N log-spaced training-set sizes (default: the preset's)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default: preset's)")
    ap.add_argument("--out", default="runs/dd-search", help="results folder (default: %(default)s)")
    ap.add_argument("--table", action="store_true", help="print the table of all results")
    ap.add_argument("--figure", metavar="SWEEP_DIR", help="plot a sweep folder's curve")
    ap.add_argument(
        "--preset-check",
        choices=SETTINGS,
        help="run `memlens sweep --model SETTING --preset cpu` and check the criterion",
    )
    ap.add_argument("--no-probes", action="store_true", help="--preset-check without probes")
    ap.add_argument("--png", help="where --figure writes its PNG")
    ap.add_argument("--progress", action="store_true", help="show training progress bars")
    a = ap.parse_args(argv)
    out = Path(a.out)
    if a.preset_check:
        st = preset_check(a.preset_check, out, a.png, probes=not a.no_probes)
        return 0 if st["passes"] else 1
    if a.figure:
        if not a.png:
            ap.error("--figure needs --png")
        st = figure(a.figure, a.png)
        print(json.dumps(st))
        return 0
    if a.table and not (a.stage or a.vary or a.set):
        print_table(io.read_jsonl(out / "results.jsonl"), a.setting)
        return 0
    if a.setting is None:
        ap.error("--setting is required to run configurations")
    T = None
    if a.T:
        lo, hi, n = (int(x) for x in a.T.split(":"))
        T = log_T(lo, hi, n)
    seeds = None if a.seeds is None else list(range(a.seeds))
    if a.stage:
        try:
            cfgs = stage_configs(a.stage, a.setting)
        except ValueError as e:
            print(e)
            return 0
    else:
        fixed = {k: v[0] for k, v in a.set}
        axes = dict(a.vary)
        cfgs = [
            make_config(a.setting, {**fixed, **dict(zip(axes, combo, strict=True))}, T, seeds)
            for combo in itertools.product(*axes.values())
        ]
    rows = run_all(cfgs, out, a.progress)
    print_table(rows, a.setting)
    return 0


if __name__ == "__main__":
    sys.exit(main())
