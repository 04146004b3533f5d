"""Re-make the README's double-descent record on today's code and default data.

    python scripts/regenerate_double_descent.py                      # all three settings
    python scripts/regenerate_double_descent.py --settings bottleneck mlp
    python scripts/regenerate_double_descent.py --settings --phase    # only the phase presets

For each setting this runs the user's path, ``memlens sweep --model SETTING --preset cpu --out
OUT/dd-SETTING --probes none`` (resumable: a rerun reuses finished cells), then

* draws ``docs/figures/dd_SETTING_curve.png`` (each seed faint, the median bold; the same figure
  as ``python benchmarks/dd_search.py --figure``) and, for the bottleneck, copies ``memlens
  report``'s ``geometry.png`` (smallest T, peak T, largest T) to ``docs/figures/
  dd_bottleneck_geometry.png``;
* prints the README's numbers: the median-over-seeds test-loss peak T and the peak's ratio to
  the median at each end of the T range (the criterion is the smaller of the two, >= 1.2x);
* writes ``tests/toy_models/double_descent_expected.json``, which the slow tests in
  ``tests/toy_models/test_double_descent.py`` read: each setting's sub-grid (both ends and the
  peak T) and the ratios they must reproduce.

With ``--phase`` it also runs ``memlens sweep --preset phase`` for the bottleneck and the MLP
block and copies ``memlens report``'s ``phase.png`` to ``docs/figures/phase_SETTING.png``,
printing the peak T at each width and recording each width's median test-loss curve as
``SETTING_phase`` in the JSON (a slow test reruns its sub-grid: both ends and every width's peak
T). (The final layer has no phase preset: on its cpu preset's data the peak sat at T = 58 for
d_model = 8, 20 and 48, so a T x d_model diagram shows no bump moving with the width.)

Wall times are printed per setting (the machine's load is
printed too: the run is CPU-bound, so a loaded machine is slower, not different).

When the data generator's default changes, rerun this script and commit what it writes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("bottleneck", "mlp", "unembed")
EXPECTED = ROOT / "tests" / "toy_models" / "double_descent_expected.json"
FIGURES = ROOT / "docs" / "figures"


def _dd_search():
    """``benchmarks/dd_search.py`` (the peak statistics and the curve figure), by path."""
    spec = importlib.util.spec_from_file_location("dd_search", ROOT / "benchmarks" / "dd_search.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_sweep(setting: str, preset: str, folder: Path) -> float:
    """``memlens sweep --model SETTING --preset PRESET --out FOLDER --probes none``: seconds."""
    from memlens import cli

    argv = ["sweep", "--model", setting, "--preset", preset, "--out", str(folder)]
    t0 = time.perf_counter()
    if cli.main(argv + ["--probes", "none", "--no-progress"]) != 0:
        raise SystemExit(f"memlens {' '.join(argv)} failed")
    return time.perf_counter() - t0


def report(folder: Path) -> None:
    """``memlens report FOLDER``: its figures and summary.md, in the folder."""
    from memlens import cli

    if cli.main(["report", str(folder)]) != 0:
        raise SystemExit(f"memlens report {folder} failed")


def _figure_path(folder: Path, name: str) -> Path:
    hits = sorted(folder.rglob(f"{name}.png"))
    if not hits:
        raise SystemExit(f"memlens report wrote no {name}.png under {folder}")
    return hits[0]


def double_descent(setting: str, out: Path, figures: bool, dd) -> dict:
    from memlens.registry import get_bundle
    from memlens.sweeps import read_results

    folder = out / f"dd-{setting}"
    wall = run_sweep(setting, "cpu", folder)
    config, rows = read_results(folder)
    st = dd.peak_stats(dd.curve(rows))
    Ts = sorted({int(r["T"]) for r in rows})
    preset = get_bundle(setting).preset("cpu")
    assert Ts == sorted(preset["grid"]["T"]), (Ts, preset["grid"]["T"])
    rec = {
        "T_peak": st["T_peak"],
        "ratio_small": round(st["ratio_small"], 4),
        "ratio_large": round(st["ratio_large"], 4),
        "ratio": round(st["ratio"], 4),
        "seeds_ok": st["seeds_ok"],
        "n_seeds": st["n_seeds"],
        "subgrid": [Ts[0], st["T_peak"], Ts[-1]],
        "median_test_loss": {
            str(T): round(float(v), 6)
            for T, v in zip(
                Ts, [np.median(vs) for _, vs in sorted(dd.curve(rows).items())], strict=True
            )
        },
        "data_version": config["task"].get("data_version"),
        "wall_s": round(wall, 1),
    }
    if figures:
        dd.figure(folder, FIGURES / f"dd_{setting}_curve.png")
        if setting == "bottleneck":
            report(folder)
            shutil.copyfile(
                _figure_path(folder, "geometry"), FIGURES / "dd_bottleneck_geometry.png"
            )
    return rec


def phase(setting: str, out: Path, figures: bool, dd) -> dict:
    """The phase preset: the median test-loss peak T at each value of the width axis."""
    from memlens.sweeps import read_results

    folder = out / f"phase-{setting}"
    wall = run_sweep(setting, "phase", folder)
    config, rows = read_results(folder)
    axis = next(a for a in config["grid"] if a not in ("T", "seed"))
    peaks = {}
    for w in sorted({r["cell"][axis] for r in rows}):
        by = dd.curve([r for r in rows if r["cell"][axis] == w])
        Ts = sorted(by)
        med = np.array([np.median(by[T]) for T in Ts])
        k = int(np.argmax(med))
        peaks[str(w)] = {
            "T_peak": Ts[k],
            "interior": 0 < k < len(Ts) - 1,
            "ratio": round(float(med[k] / max(med[0], med[-1])), 3),
            "median_test_loss": {str(T): round(float(v), 6) for T, v in zip(Ts, med, strict=True)},
        }
    if figures:
        report(folder)
        shutil.copyfile(_figure_path(folder, "phase"), FIGURES / f"phase_{setting}.png")
    ends = [min(int(r["T"]) for r in rows), max(int(r["T"]) for r in rows)]
    return {
        "axis": axis,
        "peaks": peaks,
        # the slow test's sub-grid: both ends and every width's peak
        "subgrid": sorted({*ends, *(p["T_peak"] for p in peaks.values())}),
        "data_version": config["task"].get("data_version"),
        "wall_s": round(wall, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="*", choices=SETTINGS, default=list(SETTINGS))
    ap.add_argument("--out", default="runs/regenerate", help="sweep folders (default: %(default)s)")
    ap.add_argument("--no-figures", action="store_true", help="leave docs/figures alone")
    ap.add_argument(
        "--expected", default=str(EXPECTED), help="the tests' JSON (default: %(default)s)"
    )
    ap.add_argument(
        "--phase", action="store_true", help="also the bottleneck's and mlp's phase presets"
    )
    a = ap.parse_args(argv)
    out = Path(a.out)
    dd = _dd_search()
    path = Path(a.expected)
    expected = json.loads(path.read_text()) if path.exists() else {}
    for setting in a.settings:
        load = os.getloadavg()[0]
        rec = double_descent(setting, out, not a.no_figures, dd)
        rec["load_average"] = round(load, 1)
        rec["date"] = dt.date.today().isoformat()
        expected[setting] = rec
        path.write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
        print(
            f"{setting}: peak at T = {rec['T_peak']}: {rec['ratio_small']:.2f}x the small-T end, "
            f"{rec['ratio_large']:.2f}x the large-T end (criterion {rec['ratio']:.2f}x >= 1.2x; "
            f"{rec['seeds_ok']} of {rec['n_seeds']} seeds); sweep {rec['wall_s']:.0f} s wall "
            f"(load average {load:.1f} at its start)",
            flush=True,
        )
    if a.phase:
        for setting in ("bottleneck", "mlp"):  # the final layer has none (README)
            load = os.getloadavg()[0]
            ph = phase(setting, out, not a.no_figures, dd)
            ph["load_average"] = round(load, 1)
            ph["date"] = dt.date.today().isoformat()
            expected[f"{setting}_phase"] = ph
            path.write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")
            peaks = ", ".join(
                f"{ph['axis']} = {w}: T = {p['T_peak']}"
                + ("" if p["interior"] else " (not interior)")
                + f" ({p['ratio']:.2f}x)"
                for w, p in ph["peaks"].items()
            )
            print(f"{setting} phase preset: {peaks}; sweep {ph['wall_s']:.0f} s wall", flush=True)
    print("README: " + ", ".join(
        f"{s} {expected[s]['ratio']:.2f}x at T = {expected[s]['T_peak']}" for s in SETTINGS
        if s in expected
    ))  # fmt: skip
    print(f"wrote {path}" + ("" if a.no_figures else f" and {FIGURES}/dd_*"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
