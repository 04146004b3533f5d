"""``report(out)``: a sweep's figures (PNG) and ``summary.md``.

The sweep is read once (:class:`~memlens.sweeps.view.SweepView`) and that view is handed to every
figure. The core draws what every sweep has (losses, weight norms, the 2-d geometry, the phase
diagram); each probe the sweep ran adds its own columns, figures, phase panels and summary lines
(:meth:`memlens.Probe.sweep_report`), so this module names no probe.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from memlens.plot import pyplot
from memlens.probe import SweepSection
from memlens.sweeps.figures import by_T, double_descent, find_peak, weight_norms
from memlens.sweeps.geometry import geometry, planar_setting
from memlens.sweeps.phase import phase_axes, phase_diagram
from memlens.sweeps.view import SweepView

__all__ = ["report", "SUMMARY_KEYS", "probe_sections"]

#: the core's columns of summary.md's tables (medians over seeds); each probe adds its own
SUMMARY_KEYS = ["train_loss", "test_loss", "weight_norm.total"]


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


def _shown(settings: dict, grid: dict) -> dict:
    """Fixed settings as the cells ran them: a key the grid varies shows ``"grid: [values]"``."""
    return {k: f"grid: {grid[k]}" if len(grid.get(k, ())) > 1 else v for k, v in settings.items()}


def probe_sections(view: SweepView) -> list[SweepSection]:
    """What each probe of the sweep adds to its report (nothing for one not registered here)."""
    return [cls.sweep_report(view, label) for label, cls in view.probes if cls is not None]


def _summary(view: SweepView, sections, written: list[Path]) -> list[str]:
    config, rows = view.config, view.rows
    n = len(rows)
    lines = [f"# Sweep summary: {config['model']}", ""]
    if n < config["n_cells"]:
        lines += [
            f"**PARTIAL: {n} of {config['n_cells']} cells finished.** Rerun the sweep command to "
            "finish it; the figures are stamped PARTIAL.",
            "",
        ]
    lines += _failed_lines(config, view.failed)
    skipped = config.get("skipped_probes") or {}
    lines += [
        f"- cells: {n} of {config['n_cells']} finished, in {config['n_groups']} groups; "
        f"padding waste {config['padding_waste']:.2f}x (worst group "
        f"{config['max_group_waste']:.2f}x)",
        f"- task: `{_shown(config['task'], config['grid'])}`",
        f"- train: `{_shown(config['train'], config['grid'])}`",
        f"- probes: `{config['probes']}`"
        + (f", added later: `{config['added_probes']}`" if config["added_probes"] else "")
        + "".join(f"; skipped {k!r}: {why}" for k, why in skipped.items()),
        f"- total time of the finished groups: {_total_seconds(rows):.0f} s",
    ]
    for sec in sections:
        lines += [f"- {x}" for x in sec.lines]
    keys = SUMMARY_KEYS + [c for sec in sections for c in sec.columns]
    for label, rs in view.settings.items():
        head = f"## {label}" if label else "## Medians over seeds"
        cols = {k: dict(zip(*by_T(rs, k)[:2], strict=True)) for k in keys}
        lines += [
            "",
            head,
            "",
            f"- {_peak_line(find_peak(rs), config)}",
            "",
            "| T | " + " | ".join(keys) + " |",
            "|" + "---|" * (len(keys) + 1),
        ]
        for T in sorted({float(r["T"]) for r in rs}):
            lines.append(f"| {T:.0f} | " + " | ".join(_fmt(cols[k].get(T)) for k in keys) + " |")
    lines += ["", "Figures: " + ", ".join(f"`{p.name}`" for p in written), ""]
    return lines


def _geometry_Ts(view: SweepView, label: str, peak: dict) -> tuple[list[int], object]:
    """The T of the geometry panels (smallest, the interior peak, largest) and their seed."""
    rs = view.settings[label]
    allT = sorted({int(r["T"]) for r in rs})
    Ts = [allT[0]]
    if peak.get("interior") and int(peak["T_peak"]) not in (allT[0], allT[-1]):
        Ts.append(int(peak["T_peak"]))
    Ts.append(allT[-1])
    seed = rs[0]["seed"]
    have = {int(r["T"]) for r in rs if r["seed"] == seed}
    return [T for T in dict.fromkeys(Ts) if T in have], seed


def report(out: str | os.PathLike, figures: str | os.PathLike | None = None) -> dict:
    """Write the sweep's figures (PNG) and ``summary.md`` into ``out/`` (or ``figures``).

    Always: ``double_descent.png`` and ``weight_norms.png``; ``geometry.png`` when a setting's
    representation and feature directions are 2-d; ``phase.png`` when the grid has an axis
    besides T and seed; and each probe's own figures (e.g. ``dimensionality.png``). A partial
    sweep is stamped PARTIAL in every figure and in the summary; cells whose group failed are
    listed with their error in the summary, counted in every figure's stamp and marked on the
    double-descent axis. Returns the paths written and the test-loss peak of each setting."""
    plt = pyplot()
    view = SweepView.read(out)
    if not view.rows:
        f = view.failed
        why = f" ({len(f)} failed: {f[0].get('error')})" if f else ""
        raise ValueError(f"{out} holds no finished cells yet{why}")
    rows, config = view.rows, view.figure_config
    dest = Path(figures) if figures is not None else Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    written = []

    def save(name, fig):
        fig.savefig(dest / f"{name}.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(dest / f"{name}.png")

    save("double_descent", double_descent(rows, config))
    sections = probe_sections(view)
    for sec in sections:
        for name, fig in sec.figures.items():
            save(name, fig)
    save("weight_norms", weight_norms(rows, config))
    peaks = {label: find_peak(rs) for label, rs in view.settings.items()}
    label = planar_setting(config, rows)
    if label is not None:
        Ts, seed = _geometry_Ts(view, label, peaks[label])
        save("geometry", geometry(view, view.settings[label], Ts, seed))
    if phase_axes(config)[0] is not None:
        panels = [p for sec in sections for p in sec.phase]
        save("phase", phase_diagram(rows, config, panels))
    (dest / "summary.md").write_text("\n".join(_summary(view, sections, written)))
    return {
        "figures": [str(p) for p in written],
        "summary": str(dest / "summary.md"),
        "peaks": peaks,
        "peak": next(iter(peaks.values())),
    }
