"""``report(out)``: a sweep's figures (PNG) and ``summary.md``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from memlens.plot import pyplot
from memlens.sweeps.figures import (
    by_T,
    dictionary,
    dimensionality,
    double_descent,
    find_peak,
    settings,
    weight_norms,
)
from memlens.sweeps.geometry import geometry, planar_setting
from memlens.sweeps.phase import phase_axes, phase_diagram
from memlens.sweeps.store import is_failed, read_results

__all__ = ["report", "SUMMARY_KEYS"]

#: the columns of summary.md's tables (medians over seeds)
SUMMARY_KEYS = [
    "train_loss",
    "test_loss",
    "weight_norm.total",
    "dictionary.coverage",
    "dictionary.read_back_accuracy",
    "dimensionality.mean_max_data_dim",
    "dimensionality.mean_data_dim",
    "dimensionality.dims_per_feature",
]


def _fmt(v) -> str:
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.4g}"


def _total_seconds(rows) -> float:
    return sum({r.get("group"): r.get("group_seconds", 0.0) for r in rows}.values())


def _peak_line(pk: dict, config: dict) -> str:
    if pk.get("T_peak") is None:
        return "fewer than 3 values of T: no peak to find"
    where = "an interior peak" if pk["interior"] else "at an end of the T range: no bump"
    line = (
        f"median test loss peaks at T = {pk['T_peak']:.0f} ({_fmt(pk['peak'])}, "
        f"{pk['ratio_over_ends']:.2f}x the higher end; small-T end {_fmt(pk['small_T'])}, "
        f"large-T end {_fmt(pk['large_T'])}; {where})"
    )
    s = config.get("task", {}).get("sparsity")
    if s is not None and "sparsity" not in config.get("grid", {}):
        line += f"; T(1-S) = 10 expects generalisation to start near T = {10 / (1 - s):.0f}"
    return line


def _failed_lines(config: dict, failed: list[dict]) -> list[str]:
    """The failed cells, a line per group with its error."""
    if not failed:
        return []
    lines = [
        f"**FAILED: {len(failed)} of {config['n_cells']} cells** (their group failed twice; the "
        "figures mark them). Rerun the sweep command to retry them.",
        "",
    ]
    by_group: dict = {}
    for r in failed:
        by_group.setdefault(r.get("group"), []).append(r)
    for g, rs in sorted(by_group.items(), key=lambda x: str(x[0])):
        cells = ", ".join(f"`{r['key']}`" for r in rs)
        error = " ".join(str(rs[0].get("error", "no error recorded")).split())
        lines.append(f"- group {g}: {cells}: {error}")
    return [*lines, ""]


def _summary(config: dict, rows: list[dict], written: list[Path], failed=()) -> list[str]:
    n = len(rows)
    lines = [f"# Sweep summary: {config['model']}", ""]
    if n < config["n_cells"]:
        lines += [
            f"**PARTIAL: {n} of {config['n_cells']} cells finished.** Rerun the sweep command to "
            "finish it; the figures are stamped PARTIAL.",
            "",
        ]
    lines += _failed_lines(config, list(failed))
    lines += [
        f"- cells: {n} of {config['n_cells']} finished, in {config['n_groups']} groups; "
        f"padding waste {config['padding_waste']:.2f}x (worst group "
        f"{config['max_group_waste']:.2f}x)",
        f"- task: `{config['task']}`",
        f"- train: `{config['train']}`",
        f"- probes: `{config['probes']}`"
        + (f", added later: `{config['added_probes']}`" if config["added_probes"] else ""),
        f"- total time of the finished groups: {_total_seconds(rows):.0f} s",
    ]
    for label, rs in settings(rows).items():
        head = f"## {label}" if label else "## Medians over seeds"
        cols = {k: dict(zip(*by_T(rs, k)[:2], strict=True)) for k in SUMMARY_KEYS}
        lines += [
            "",
            head,
            "",
            f"- {_peak_line(find_peak(rs), config)}",
            "",
            "| T | " + " | ".join(SUMMARY_KEYS) + " |",
            "|" + "---|" * (len(SUMMARY_KEYS) + 1),
        ]
        for T in sorted({float(r["T"]) for r in rs}):
            lines.append(
                f"| {T:.0f} | " + " | ".join(_fmt(cols[k].get(T)) for k in SUMMARY_KEYS) + " |"
            )
    lines += ["", "Figures: " + ", ".join(f"`{p.name}`" for p in written), ""]
    return lines


def report(out: str | os.PathLike, figures: str | os.PathLike | None = None) -> dict:
    """Write the sweep's figures (PNG) and ``summary.md`` into ``out/`` (or ``figures``).

    Always: ``double_descent.png``, ``dimensionality.png``, ``weight_norms.png``,
    ``dictionary.png``; ``geometry.png`` when a setting's representation and feature directions
    are 2-d; ``phase.png`` when the grid has an axis besides T and seed. A partial sweep is
    stamped PARTIAL in every figure and in the summary; cells whose group failed are listed with
    their error in the summary, counted in every figure's stamp and marked on the double-descent
    axis. Returns the paths written and the test-loss peak of each setting."""
    plt = pyplot()
    config, rows = read_results(out, failed=True)
    failed = [r for r in rows if is_failed(r)]
    rows = [r for r in rows if not is_failed(r)]
    if not rows:
        why = f" ({len(failed)} failed: {failed[0].get('error')})" if failed else ""
        raise ValueError(f"{out} holds no finished cells yet{why}")
    config = {**config, "failed_cells": failed}
    dest = Path(figures) if figures is not None else Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    written = []

    def save(name, fig):
        fig.savefig(dest / f"{name}.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(dest / f"{name}.png")

    for name, fn in [
        ("double_descent", double_descent),
        ("dimensionality", dimensionality),
        ("weight_norms", weight_norms),
        ("dictionary", dictionary),
    ]:
        save(name, fn(rows, config))
    peaks = {label: find_peak(rs) for label, rs in settings(rows).items()}
    label = planar_setting(config, rows)
    if label is not None:
        rs = settings(rows)[label]
        allT = sorted({int(r["T"]) for r in rs})
        Ts = [allT[0]]
        pk = peaks[label]
        if pk.get("interior") and int(pk["T_peak"]) not in (allT[0], allT[-1]):
            Ts.append(int(pk["T_peak"]))
        Ts.append(allT[-1])
        seed = rs[0]["seed"]
        have = {int(r["T"]) for r in rs if r["seed"] == seed}
        save("geometry", geometry(out, rs, [T for T in dict.fromkeys(Ts) if T in have], seed))
    if phase_axes(config)[0] is not None:
        save("phase", phase_diagram(rows, config))
    (dest / "summary.md").write_text("\n".join(_summary(config, rows, written, failed)))
    return {
        "figures": [str(p) for p in written],
        "summary": str(dest / "summary.md"),
        "peaks": peaks,
        "peak": next(iter(peaks.values())),
    }
