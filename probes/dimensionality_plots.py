"""Figures of the dimensionality probe: D* per training point on a log axis (one result, or several
compared), feature dimensionalities, and the hidden plane for m = 2.

D* is in *dimensions*: the share of the m-dimensional hidden space a point owns (Σ D* = rank(H)).
A memorising model gives every point a dimension of its own (D* = 1 while T ≤ m); a generalising
one spreads T points over rank(H) shared dimensions, so the typical D* is near rank/T, with
outliers far above it. The reference line rank/T (= the mean D*) is drawn on every panel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["plot_result", "compare_max_data_dim"]

#: polytope fractions TMS features cluster at (background.md §3)
FRACTIONS = {1.0: "1", 0.75: "3/4", 2 / 3: "2/3", 0.5: "1/2", 0.4: "2/5", 0.375: "3/8"}
D_STAR_LABEL = "D* (hidden dimensions the point owns)"


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _plain_log_ticks(axis) -> None:
    """Log-axis tick labels as plain numbers (0.01, 0.1, 1), never '10⁻²' or '3×10⁰'."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _sorted(dstar: torch.Tensor) -> tuple[np.ndarray, np.ndarray, int]:
    """Point indices and D* sorted by D*, descending, without padding (NaN); and the count of
    points with D* = 0, which a log axis cannot show."""
    d = dstar.detach().double().cpu().numpy()
    idx = np.flatnonzero(~np.isnan(d))
    idx = idx[np.argsort(-d[idx], kind="stable")]
    zero = int((d[idx] <= 0).sum())
    idx = idx[d[idx] > 0]
    return idx, d[idx], zero


def _rank_axis(ax, n: int) -> None:
    from matplotlib.ticker import MaxNLocator

    if n > 30:
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.8 if n > 30 else 0.5, n * (1.25 if n > 30 else 1) + (0 if n > 30 else 0.5))


def _dstar_panel(ax, res, i: int, top: int) -> None:
    idx, d, zero = _sorted(res.max_data_dim[i])
    T = int((~res.max_data_dim[i].isnan()).sum())
    rank = float(res.rank()[i])
    x = np.arange(1, len(d) + 1)
    style = {"marker": "o", "ms": 3} if len(d) <= 200 else {}
    ax.plot(x, d, color="C3", lw=1.5, label="D*, sorted", zorder=3, **style)
    dd = res.data_dim[i].detach().double().cpu().numpy()[idx]
    ax.plot(
        x,
        np.where(dd > 0, dd, np.nan),
        ".",
        ms=2.5,
        color="C0",
        alpha=0.5,
        zorder=2,
        label="data dim. D of the same point (D ≤ D*)",
    )
    ax.axhline(rank / T, color="k", ls="--", lw=1, label="mean D* = rank/T", zorder=1)
    ax.annotate(
        f"rank/T = {rank:.3g}/{T}",
        (1, rank / T),
        xycoords=("axes fraction", "data"),
        xytext=(-3, 3),
        textcoords="offset points",
        ha="right",
        va="bottom",
        fontsize=7,
    )
    flat = len(d) == 0 or d[0] <= 1.05 * np.median(d)  # no point stands out: label none
    for r in range(0 if flat else min(top, len(d))):
        ax.annotate(
            f"#{idx[r]}",
            (x[r], d[r]),
            xytext=(6, 5 + 9 * r),
            textcoords="offset points",
            fontsize=7,
            color="C3",
            arrowprops={"arrowstyle": "-", "color": "C3", "lw": 0.5},
        )
    ax.set_yscale("log")
    _plain_log_ticks(ax.yaxis)
    lo = min(np.nanmin(d) if len(d) else 1.0, rank / T)
    ax.set_ylim(min(lo / 3, 0.05), 2.0)
    _rank_axis(ax, len(d))
    if len(d) and d.min() >= 0.99:
        msg = "every point owns a whole dimension"
    else:
        msg = f"top / median D* = {d[0] / np.median(d):.3g}" if len(d) else "no point with D* > 0"
    if zero:
        msg += f"; {zero} with D* = 0 not shown"
    m = res.hidden.shape[-1] if res.hidden is not None else "?"
    ax.set_title(f"inst {i}: {T} points, m = {m} hidden dims\n{msg}", fontsize=9)
    ax.set(xlabel="training point, sorted by D* (rank)", ylabel=D_STAR_LABEL)
    ax.grid(alpha=0.3, which="major")


def _features_panel(ax, res, i: int) -> None:
    D = res.feature_dim[i].cpu()
    x = torch.arange(len(D))
    ax.vlines(x, 0, D, color="k", lw=1.5)
    ax.plot(x, D, "o", color="C2", ms=4, label="feature dim. D_i")
    for k, (v, lab) in enumerate(FRACTIONS.items()):  # alternate sides: 2/5 and 3/8 are close
        ax.axhline(v, color="0.8", lw=0.6, ls="--")
        x_lab, ha = (len(D) - 0.5, "right") if k % 2 == 0 else (-0.5, "left")
        ax.text(x_lab, v, lab, fontsize=7, va="bottom", ha=ha, color="0.4")
    ax.set(
        xlabel="feature index",
        ylabel="D_i (hidden dimensions per feature)",
        ylim=(0, 1.1),
        title=f"inst {i}: feature dimensionality (Σ D_i = {float(D.sum()):.2f})",
    )


def _plane_panel(ax, res, i: int) -> None:
    h = res.hidden[:, i].cpu()
    d = res.max_data_dim[i]
    keep = ~d.isnan()
    c = d[keep].clamp_min(1e-6).log10()
    # a colour bar spans at least one decade, so near-equal values look equal (a 0.08-decade
    # bar once painted D* = 0.5 and 0.6 as opposite ends of the map)
    lo, hi = (float(c.min()), float(c.max())) if len(c) else (0.0, 1.0)
    mid, half = (lo + hi) / 2, max((hi - lo) / 2, 0.5)
    sc = ax.scatter(
        h[keep, 0],
        h[keep, 1],
        s=10,
        c=c,
        cmap="viridis",
        vmin=mid - half,
        vmax=mid + half,
        label="training points h_j",
    )
    if res.W is not None:
        W = res.W[i].cpu()
        for j in range(W.shape[1]):
            ax.plot([0, W[0, j]], [0, W[1, j]], color="C2", lw=1.2)
        ax.plot([], [], color="C2", label="feature directions W_i")
    ax.figure.colorbar(sc, ax=ax, label="log10 D*", shrink=0.85)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set(xlabel="hidden dim 0", ylabel="hidden dim 1", title=f"inst {i}: hidden plane")


def _figure_legend(fig, axes) -> None:
    """One legend for the figure, below the panels (never on the data)."""
    handles = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        ncol=min(len(handles), 3),
        fontsize=8,
        frameon=False,
    )


def plot_result(res, ax=None, instances: Sequence[int] | None = None, top: int = 3):
    """The figure of ``DimensionalityResult.plot`` (see there)."""
    if ax is not None:
        _dstar_panel(ax, res, 0 if not instances else instances[0], top)
        ax.legend(fontsize=7, loc="lower left")
        return ax.figure
    plt = _plt()
    insts = list(range(min(res.n_instances, 4))) if instances is None else list(instances)
    for i in insts:
        if not 0 <= i < res.n_instances:
            raise ValueError(f"instances must be in [0, {res.n_instances}), got {i}")
    m = None if res.hidden is None else res.hidden.shape[-1]
    cols = 1 + (res.feature_dim is not None) + (m == 2)
    fig, axes = plt.subplots(
        len(insts),
        cols,
        figsize=(max(4.8 * cols, 6.4), 3.4 * len(insts) + 0.8),
        squeeze=False,
        layout="constrained",
    )
    for r, i in enumerate(insts):
        _dstar_panel(axes[r, 0], res, i, top)
        c = 1
        if res.feature_dim is not None:
            _features_panel(axes[r, c], res, i)
            c += 1
        if m == 2:
            _plane_panel(axes[r, c], res, i)
    fig.suptitle(f"Maximal data dimensionality D* per training point, at {res.hook}", fontsize=11)
    _figure_legend(fig, axes.ravel())
    return fig


def compare_max_data_dim(
    results, labels: Sequence[str], instance: int | Sequence[int] = 0, ax=None
):
    """D* per training point of several results (e.g. a memorising and a generalising model) in
    one figure: left, each result's D* sorted (log-log), with its rank/T (the mean D*) as a dashed
    line of the same colour; right, the distribution of D* (fraction of points per log-spaced
    bin). ``instance`` picks the instance of every result, or one per result (to compare the
    instances of one packed sweep). With ``ax`` given, draws only the sorted curves there.
    Returns the figure; its legend sits below the panels, one entry per result."""
    from matplotlib.legend_handler import HandlerTuple

    results, labels = list(results), [str(lab) for lab in labels]
    if not results:
        raise ValueError("compare_max_data_dim needs at least one result")
    if len(labels) != len(results):
        raise ValueError(f"labels: need one per result ({len(results)}), got {len(labels)}")
    insts = [instance] * len(results) if isinstance(instance, int) else list(instance)
    if len(insts) != len(results):
        raise ValueError(f"instance: need one per result ({len(results)}), got {len(insts)}")
    for r, i in zip(results, insts, strict=True):
        if not hasattr(r, "max_data_dim"):
            raise TypeError(f"expected DimensionalityResult objects, got {type(r).__name__}")
        if not isinstance(i, int) or not 0 <= i < r.n_instances:
            raise ValueError(f"instance must be an int in [0, {r.n_instances}), got {i!r}")
    plt = _plt()
    if ax is None:
        fig, (ax, ax_h) = plt.subplots(1, 2, figsize=(10.5, 4.8), layout="constrained")
    else:
        fig, ax_h = ax.figure, None
    curves, handles, entries = [], [], []
    for k, (res, lab, i) in enumerate(zip(results, labels, insts, strict=True)):
        _, d, zero = _sorted(res.max_data_dim[i])
        T = int((~res.max_data_dim[i].isnan()).sum())
        rank = float(res.rank()[i])
        c = f"C{k % 10}"
        marker = "o" if len(d) <= 40 else None
        (curve,) = ax.plot(np.arange(1, len(d) + 1), d, color=c, lw=2, marker=marker, ms=3)
        (ref,) = ax.plot([1, max(T, 2)], [rank / T] * 2, color=c, ls="--", lw=1, gid="rank/T")
        med = f"median D* {np.median(d):.2g}" if len(d) else "no D* > 0"
        zeros = f", {zero} with D* = 0" if zero else ""
        handles.append((curve, ref))
        head = lab if f"T = {T}" in lab else f"{lab} (T = {T})"
        entries.append(f"{head}: {med}{zeros}; rank/T = {rank:.3g}/{T} = {rank / T:.2g}")
        curves.append((d, T, rank, c))
    lo = min([min(d.min(), rk / T) for d, T, rk, _ in curves if len(d)] + [1.0])
    ax.set(
        xscale="log",
        yscale="log",
        ylim=(lo / 3, 2.0),
        xlim=(0.8, max(T for _, T, *_ in curves) * 1.3),
        xlabel="training point, sorted by D* (rank)",
        ylabel=D_STAR_LABEL,
        title="D* of every training point, sorted (dashed: rank/T)",
    )
    _plain_log_ticks(ax.xaxis)
    _plain_log_ticks(ax.yaxis)
    ax.grid(alpha=0.3, which="major")
    legend = {"handler_map": {tuple: HandlerTuple(ndivide=None)}, "fontsize": 8}
    if ax_h is None:
        ax.legend(handles, entries, loc="lower left", **legend)
        return fig
    bins = np.logspace(np.log10(lo / 3), np.log10(2.0), 41)
    for d, T, rank, c in curves:
        if len(d):
            w = np.full(len(d), 1 / len(d))
            ax_h.hist(d, bins=bins, weights=w, color=c, alpha=0.3)
            ax_h.hist(d, bins=bins, weights=w, color=c, histtype="step", lw=1.5)
        ax_h.axvline(rank / T, color=c, ls="--", lw=1)
    ax_h.set(
        xscale="log",
        xlabel=D_STAR_LABEL,
        ylabel="fraction of training points",
        title="distribution of D* (dashed: rank/T)",
    )
    _plain_log_ticks(ax_h.xaxis)
    ax_h.grid(alpha=0.3, which="major")
    fig.legend(
        handles,
        entries,
        loc="outside lower center",
        ncol=1 if len(entries) < 4 else 2,
        frameon=False,
        **legend,
    )
    fig.suptitle("Maximal data dimensionality D* per training point")
    return fig
