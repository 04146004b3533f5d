"""The sweep-report curves of the built-in probes: dimensionality and the memorised dictionary
against T. Each probe class hands these to the report from its ``sweep_report`` hook
(:meth:`memlens.Probe.sweep_report`); the core's report names no probe."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from memlens.plot import log_axis
from memlens.probe import SweepSection
from memlens.sweeps.figures import (
    T_LABEL,
    colors,
    curve,
    finish,
    new_axes,
    representation_width,
    setting_title,
    settings,
    sweep_bundle,
    xlim,
)

__all__ = ["dimensionality", "dictionary", "dimensionality_section", "dictionary_section"]


def dimensionality(
    rows: Sequence[Mapping], config: Mapping | None = None, ax=None, prefix: str = "dimensionality"
):
    """Mean data dimensionality D and mean maximal data dimensionality D* of the training points
    (and, for models with feature directions, feature dimensionality) against T, with the bound
    min(m, T)/T on mean D* (m = the representation's width) as a thin reference line."""
    groups = settings(rows)
    many = len(groups) > 1
    fig, ax = new_axes(ax, (11.0, 5.0) if many else (7.6, 4.4))
    quantities = [
        (f"{prefix}.mean_max_data_dim", "max data dim. D*", "^", "-", "tab:purple", False),
        (f"{prefix}.mean_data_dim", "data dim. D", "o", "--", "tab:green", True),
        (f"{prefix}.mean_feature_dim", "feature dim. D_i", "v", "-.", "tab:olive", False),
        (
            f"{prefix}.dims_per_feature",
            "dims per feature m/‖W‖²",
            "s",
            ":",
            "tab:orange",
            False,
        ),
    ]
    drawn = set()
    palette = colors(len(groups))
    for color, (label, rs) in zip(palette, groups.items(), strict=True):
        pre = f"{label}: " if many else ""
        m = representation_width(config, rs[0].get("cell")) if config else None
        if m:
            T = np.array(sorted({int(r["T"]) for r in rs}), dtype=float)
            ax.plot(
                T,
                np.minimum(m, T) / T,
                color="0.55" if not many else color,
                lw=7,
                alpha=0.3,
                solid_capstyle="round",
                zorder=1,
                label=f"{pre}min(m, T)/T, the most mean D* can be (m = {m})",
            )
        for key, name, marker, ls, qcolor, hollow in quantities:
            if curve(ax, rs, key, f"{pre}{name}", color if many else qcolor, marker, ls, hollow):
                drawn.add(key)
    if not drawn:
        ax.text(
            0.5, 0.5, "no dimensionality probe in this sweep", transform=ax.transAxes, ha="center"
        )
    features = {f"{prefix}.mean_feature_dim", f"{prefix}.dims_per_feature"} & drawn
    what = "Data and feature dimensionality" if features else "Data dimensionality"
    log_axis(ax, "both")
    xlim(ax, rows)
    ax.set(xlabel=T_LABEL, ylabel="dimensions per point (or per feature)")
    hook = getattr(sweep_bundle(config), "representation_hook", None) if config else None
    where = f" at {hook}" if hook else ""
    finish(fig, ax, rows, config, f"{what}{where}: {setting_title(config)}", legend_outside=True)
    return fig


def dictionary(
    rows: Sequence[Mapping], config: Mapping | None = None, ax=None, prefix: str = "dictionary"
):
    """Dictionary coverage (training points with an entry) and read-back accuracy against T."""
    fig, ax = new_axes(ax)
    groups = settings(rows)
    many = len(groups) > 1
    ok = False
    for color, (label, rs) in zip(colors(len(groups)), groups.items(), strict=True):
        pre = f"{label}: " if many else ""
        ok |= curve(
            ax, rs, f"{prefix}.coverage", f"{pre}coverage", color if many else "tab:brown", "o"
        )
        ok |= curve(
            ax,
            rs,
            f"{prefix}.read_back_accuracy",
            f"{pre}read-back accuracy",
            color if many else "tab:cyan",
            "s",
            "--",
            True,
        )
    if not ok:
        ax.text(0.5, 0.5, "no dictionary probe in this sweep", transform=ax.transAxes, ha="center")
    log_axis(ax, "x")
    xlim(ax, rows)
    ax.set(xlabel=T_LABEL, ylabel="fraction of training points (0 to 1)", ylim=(-0.05, 1.05))
    finish(
        fig,
        ax,
        rows,
        config,
        f"Memorised dictionary read off the weights: {setting_title(config)}",
        legend_outside=many,
    )
    return fig


def dimensionality_section(view, label: str) -> SweepSection:
    """The dimensionality probe's part of a sweep report: D*, D and dims per feature in the
    summary's tables, and ``dimensionality.png``."""
    cols = ("mean_max_data_dim", "mean_data_dim", "dims_per_feature")
    return SweepSection(
        columns=tuple(f"{label}.{c}" for c in cols),
        figures={label: dimensionality(view.rows, view.figure_config, prefix=label)},
    )


def dictionary_section(view, label: str) -> SweepSection:
    """The dictionary probe's part of a sweep report: coverage and read-back accuracy in the
    summary's tables, coverage as a phase-diagram panel, and ``dictionary.png``."""
    return SweepSection(
        columns=(f"{label}.coverage", f"{label}.read_back_accuracy"),
        phase=((f"{label}.coverage", "dictionary coverage", "fraction of training points"),),
        figures={label: dictionary(view.rows, view.figure_config, prefix=label)},
    )
