"""Phase diagrams: median test loss (and dictionary coverage) over T and a second grid axis.

Hobbhahn's reconstruction limits against data-set size, hidden size, number of features and
sparsity: when a sweep's grid has T and another axis with several values (a width such as
``d_hidden`` / ``d_mlp`` / ``d_model``, or ``sparsity``), each cell of the map is the median over
seeds of one (T, value) setting. A white star marks, in each row, a double-descent bump (see
:func:`bump`), so a peak that moves with the width shows as a slanted line of stars.
"""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np

from memlens.plot import PlainLogFormatter, plain_number, pyplot, stamp_partial
from memlens.sweeps.figures import loss_units, setting_title, value

__all__ = ["phase_axes", "phase_grid", "phase_diagram", "bump", "BUMP"]


def phase_axes(config: Mapping) -> tuple[str | None, list[str]]:
    """``(y axis, other axes)``: the first grid axis besides T and seed with several numeric
    values, and the remaining multi-valued axes (one row of panels per combination of them)."""
    multi = [
        a
        for a, vals in config.get("grid", {}).items()
        if a not in ("T", "seed")
        and len(vals) > 1
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
    ]
    others = [
        a
        for a, vals in config.get("grid", {}).items()
        if a not in ("T", "seed") and len(vals) > 1 and a not in multi[:1]
    ]
    return (multi[0] if multi else None), others


def phase_grid(
    rows: Sequence[Mapping], Ts: Sequence, ys: Sequence, y_axis: str, key: str
) -> np.ndarray:
    """``[len(ys), len(Ts)]`` medians over seeds of ``key``; NaN where no cell finished."""
    out = np.full((len(ys), len(Ts)), np.nan)
    for i, y in enumerate(ys):
        for j, T in enumerate(Ts):
            v = [
                value(r, key)
                for r in rows
                if int(r["T"]) == int(T) and r.get("cell", {}).get(y_axis) == y
            ]
            v = [x for x in v if np.isfinite(x)]
            if v:
                out[i, j] = float(np.median(v))
    return out


BUMP = 1.05  # a bump rises at least this factor above the lowest loss at smaller T


def bump(losses: Sequence[float] | np.ndarray) -> int | None:
    """The index of a double-descent bump in losses ordered by T: the largest loss at an interior
    T that is ``BUMP`` times the lowest loss at smaller T and above the largest-T loss; None if
    there is none (or fewer than 3 finished values)."""
    z = np.asarray(losses, dtype=float)
    if np.isfinite(z).sum() < 3 or not np.isfinite(z[[0, -1]]).all():
        return None
    k = int(np.nanargmax(z[1:-1])) + 1
    if z[k] >= BUMP * np.nanmin(z[:k]) and z[k] > z[-1]:
        return k
    return None


def _tick(v) -> str:
    """A grid value as a tick label: integers exactly, other numbers plainly."""
    return str(v) if isinstance(v, int) else plain_number(v)


def _panel(ax, Z, Ts, ys, y_axis, cmap, norm, label, fig, peaks=None):
    from matplotlib.colors import LogNorm

    masked = np.ma.masked_invalid(Z)
    cm = pyplot().get_cmap(cmap).with_extremes(bad="0.85")
    im = ax.pcolormesh(
        np.arange(len(Ts) + 1) - 0.5, np.arange(len(ys) + 1) - 0.5, masked, cmap=cm, norm=norm
    )
    ax.set_xticks(range(len(Ts)), [_tick(t) for t in Ts], rotation=45, fontsize=8)
    ax.set_yticks(range(len(ys)), [_tick(y) for y in ys], fontsize=8)
    ax.set_xlabel("T (training-set size, points)")
    ax.set_ylabel(y_axis)
    if Z.size <= 120:  # print each value, dark on light cells and light on dark ones
        for (i, j), z in np.ndenumerate(Z):
            if not np.isfinite(z):
                ax.text(j, i, "not run", ha="center", va="center", fontsize=6, color="0.3")
                continue
            r, g, b, _ = cm(norm(z))
            ink = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
            ax.text(j, i, f"{z:.3g}", ha="center", va="center", fontsize=6.5, color=ink)
    if peaks is not None:
        for i, row in enumerate(Z):
            k = bump(row)
            if k is not None:
                ax.plot(k + 0.3, i + 0.25, marker="*", ms=8, color="white", mec="black", mew=0.5)
    cb = fig.colorbar(im, ax=ax, label=textwrap.fill(label, 34))
    if isinstance(norm, LogNorm):
        cb.ax.yaxis.set_major_formatter(PlainLogFormatter())
        cb.ax.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))


def phase_diagram(rows: Sequence[Mapping], config: Mapping, panels: Sequence[tuple] = ()):
    """Heat maps of median test loss (log colour scale) over T x the first extra grid axis, and one
    more panel per ``(column, title[, colour-bar label])`` in ``panels`` (fractions in [0, 1], e.g.
    a probe's coverage; probes name theirs in :meth:`memlens.Probe.sweep_report`) that some row
    has; one row of panels per value of further axes."""
    from matplotlib.colors import LogNorm, Normalize

    y_axis, others = phase_axes(config)
    if y_axis is None:
        raise ValueError(
            "a phase diagram needs a grid axis besides T and seed with several numeric values "
            "(e.g. d_hidden, d_mlp, d_model or sparsity)"
        )
    grid = config["grid"]
    Ts, ys = sorted(grid["T"]), sorted(grid[y_axis])
    combos = list(itertools.product(*(grid[a] for a in others))) or [()]
    panels = [p for p in panels if any(np.isfinite(value(r, p[0])) for r in rows)]
    ncol = 1 + len(panels)
    plt = pyplot()
    fig, axes = plt.subplots(
        len(combos),
        ncol,
        figsize=(
            0.55 * len(Ts) * ncol + 3.2 * ncol,
            0.45 * len(ys) * len(combos) + 2.4 * len(combos),
        ),
        squeeze=False,
    )
    losses = [value(r, "test_loss") for r in rows]
    pos = [v for v in losses if np.isfinite(v) and v > 0]
    norm = LogNorm(min(pos), max(pos)) if pos else None
    for k, combo in enumerate(combos):
        rs = [
            r
            for r in rows
            if all(r.get("cell", {}).get(a) == v for a, v in zip(others, combo, strict=True))
        ]
        where = ", ".join(f"{a}={v}" for a, v in zip(others, combo, strict=True))
        Z = phase_grid(rs, Ts, ys, y_axis, "test_loss")
        _panel(axes[k, 0], Z, Ts, ys, y_axis, "magma", norm, loss_units(config), fig, peaks=True)
        axes[k, 0].set_title(
            f"median test loss (★ = bump: ≥ {BUMP:g}x the lowest loss at smaller T)"
            + (f"; {where}" if where else ""),
            fontsize=9,
        )
        for j, (key, title, *unit) in enumerate(panels, start=1):
            C = phase_grid(rs, Ts, ys, y_axis, key)
            label = unit[0] if unit else "fraction (0 to 1)"
            _panel(axes[k, j], C, Ts, ys, y_axis, "viridis", Normalize(0, 1), label, fig)
            axes[k, j].set_title(f"{title}{'; ' + where if where else ''}", fontsize=9)
    n_seeds = len(grid.get("seed", [0]))
    seeds = f"median over {n_seeds} seeds" if n_seeds > 1 else "one seed"
    fig.suptitle(
        f"Phase diagram: {setting_title(config)}, T x {y_axis} ({seeds})",
        fontsize=10,
    )
    fig.tight_layout()
    stamp_partial(fig, len(rows), int(config.get("n_cells", len(rows))))
    return fig
