"""Figures for sweeps: the double-descent curve, dimensionality, weight norms, m=2 geometry.

Every function takes the rows of a sweep (``memlens.sweep`` or ``memlens.sweep.read_results``),
draws medians over seeds with the min-max range shaded, and returns the matplotlib figure.
``report(out)`` writes all of them as PNGs plus a ``summary.md``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from memlens.io import number

__all__ = [
    "by_T",
    "double_descent",
    "dimensionality",
    "weight_norms",
    "dictionary",
    "geometry",
    "find_peak",
    "report",
]


def _bundle(config: Mapping | None):
    """The registered bundle of a sweep's model, or None (unknown or unregistered model)."""
    name = (config or {}).get("model")
    if not name:
        return None
    from memlens.registry import MODELS

    try:
        return MODELS.get(name)
    except ValueError:
        return None


def _title(config: Mapping | None) -> str:
    b = _bundle(config)
    return b.display_title if b is not None else (config or {}).get("model", "")


def _loss_units(config: Mapping | None) -> str:
    b = _bundle(config)
    return b.loss_units if b is not None else "loss per point"


def _plt():
    import matplotlib

    if os.environ.get("MPLBACKEND") is None and matplotlib.get_backend().lower() != "agg":
        try:
            matplotlib.use("Agg")
        except Exception:  # an interactive session already chose a backend
            pass
    import matplotlib.pyplot as plt

    return plt


def by_T(
    rows: Sequence[Mapping], key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(T, median, lo, hi)`` of ``key`` over seeds at each T (rows lacking ``key`` skipped).

    ``key`` may be dotted into a nested dict (``"weight_norm.W"``)."""
    vals: dict[int, list[float]] = {}
    for r in rows:
        v = r.get(key)
        if v is None and "." in key:
            head, tail = key.split(".", 1)
            sub = r.get(head)
            v = sub.get(tail) if isinstance(sub, Mapping) else None
        v = number(v) if isinstance(v, (int, float, str)) or v is None else math.nan
        if not np.isfinite(v):
            continue
        vals.setdefault(int(r["T"]), []).append(float(v))
    Ts = np.array(sorted(vals), dtype=float)
    med = np.array([np.median(vals[int(t)]) for t in Ts])
    lo = np.array([min(vals[int(t)]) for t in Ts])
    hi = np.array([max(vals[int(t)]) for t in Ts])
    return Ts, med, lo, hi


def _band(ax, rows, key, label, color, marker="o"):
    T, med, lo, hi = by_T(rows, key)
    if len(T) == 0:
        return False
    ax.plot(T, med, marker=marker, ms=4, color=color, label=label)
    ax.fill_between(T, lo, hi, color=color, alpha=0.2, lw=0)
    return True


def _n_seeds(rows) -> int:
    return len({r.get("seed") for r in rows})


def _onset(config: Mapping | None) -> float | None:
    if not config:
        return None
    s = config.get("task", {}).get("sparsity")
    if "sparsity" in config.get("grid", {}) or s is None:
        return None
    return 10.0 / (1.0 - float(s))


def find_peak(rows: Sequence[Mapping]) -> dict:
    """Where median test loss peaks, and how far it rises above both ends of the T range."""
    T, med, _, _ = by_T(rows, "test_loss")
    if len(T) < 3:
        return {"T_peak": None}
    k = int(np.argmax(med))
    interior = 0 < k < len(T) - 1
    return {
        "T_peak": float(T[k]),
        "peak": float(med[k]),
        "small_T": float(med[0]),
        "large_T": float(med[-1]),
        "interior": interior,
        "rise_over_ends": float(med[k] - max(med[0], med[-1])),
    }


def double_descent(rows: Sequence[Mapping], config: Mapping | None = None, ax=None):
    """Train and test loss against T (log-log): median over seeds, min-max range shaded."""
    plt = _plt()
    fig = ax.figure if ax is not None else plt.figure(figsize=(6.4, 4.2))
    ax = ax or fig.add_subplot()
    _band(ax, rows, "train_loss", "train loss", "tab:blue")
    _band(ax, rows, "test_loss", "test loss (fresh points)", "tab:red", marker="s")
    onset = _onset(config)
    if onset is not None:
        ax.axvline(onset, color="gray", ls="--", lw=1, label=f"T(1-S) = 10  (T = {onset:.0f})")
    pk = find_peak(rows)
    if pk.get("interior"):
        ax.axvline(
            pk["T_peak"],
            color="tab:red",
            ls=":",
            lw=1,
            label=f"test-loss peak, T = {pk['T_peak']:.0f}",
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="T (training-set size, points)",
        ylabel=_loss_units(config),
    )
    ax.set_title(
        f"Double descent: {_title(config)}\nmedian over {_n_seeds(rows)} seeds, band = min-max",
        fontsize=10,
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def dimensionality(rows: Sequence[Mapping], config: Mapping | None = None, ax=None):
    """Data dimensionality (mean D and mean maximal D* of training points) and feature
    dimensionality (dimensions per feature, m/||W||_F^2) against T."""
    plt = _plt()
    fig = ax.figure if ax is not None else plt.figure(figsize=(6.4, 4.2))
    ax = ax or fig.add_subplot()
    any_ = False
    any_ |= _band(
        ax, rows, "dimensionality.mean_data_dim", "data dim. D (mean over points)", "tab:green"
    )
    any_ |= _band(
        ax,
        rows,
        "dimensionality.mean_max_data_dim",
        "max data dim. D* (mean over points)",
        "tab:purple",
        marker="^",
    )
    any_ |= _band(
        ax,
        rows,
        "dimensionality.mean_feature_dim",
        "feature dim. D_i (mean over features)",
        "tab:olive",
        marker="v",
    )
    any_ |= _band(
        ax,
        rows,
        "dimensionality.dims_per_feature",
        "feature dim.: dims per feature",
        "tab:orange",
        marker="s",
    )
    m = (config or {}).get("task", {}).get("d_hidden")
    T, *_ = by_T(rows, "test_loss")
    if m and len(T):
        ax.plot(T, m / T, "k--", lw=1, label=f"m/T (a regular T-gon, m = {m})")
    if not any_:
        ax.text(
            0.5, 0.5, "no dimensionality probe in this sweep", transform=ax.transAxes, ha="center"
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="T (training-set size, points)",
        ylabel="dimensionality (dimensions per point / feature)",
    )
    ax.set_title("Data vs feature dimensionality\nmedian over seeds, band = min-max", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def weight_norms(rows: Sequence[Mapping], config: Mapping | None = None, ax=None):
    """Frobenius norm of each weight matrix (per instance) against T."""
    plt = _plt()
    fig = ax.figure if ax is not None else plt.figure(figsize=(6.4, 4.2))
    ax = ax or fig.add_subplot()
    names = sorted({k for r in rows for k in r.get("weight_norm", {})} - {"total"})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, n in enumerate(names):
        _band(ax, rows, f"weight_norm.{n}", f"||{n}||_F", colors[i % len(colors)])
    ax.set(
        xscale="log", yscale="log", xlabel="T (training-set size, points)", ylabel="Frobenius norm"
    )
    ax.set_title("Weight norms against T\nmedian over seeds, band = min-max", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def dictionary(rows: Sequence[Mapping], config: Mapping | None = None, ax=None):
    """Dictionary coverage and read-back accuracy against T."""
    plt = _plt()
    fig = ax.figure if ax is not None else plt.figure(figsize=(6.4, 4.2))
    ax = ax or fig.add_subplot()
    ok = _band(
        ax,
        rows,
        "dictionary.coverage",
        "coverage (fraction of training points with an entry)",
        "tab:brown",
    )
    ok |= _band(
        ax, rows, "dictionary.read_back_accuracy", "read-back accuracy", "tab:cyan", marker="s"
    )
    if not ok:
        ax.text(0.5, 0.5, "no dictionary probe in this sweep", transform=ax.transAxes, ha="center")
    ax.set(
        xscale="log", xlabel="T (training-set size, points)", ylabel="fraction", ylim=(-0.05, 1.05)
    )
    ax.set_title(
        "Memorised dictionary read off the weights\nmedian over seeds, band = min-max", fontsize=10
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def _hidden_geometry(model, train) -> tuple[np.ndarray, np.ndarray]:
    """``(W [m, n], h [T, m])`` of a one-instance model: its feature directions and the training
    points' vectors at its representation hook."""
    W = model.feature_directions()[0]
    _, cache = model.run_with_cache(train.inputs, names_filter=model.representation_hook)
    h = cache[model.representation_hook][:, 0].detach()
    return W.numpy(), h.numpy()


def _has_geometry(out, config: Mapping) -> bool:
    """Whether a sweep's models have 2-d representations with feature directions."""
    from memlens.sweep import build_cell_model

    b = _bundle(config)
    if b is None or b.make_task is None:
        return False
    spec = {**config["task"], "T": 1, "seed": 0}
    spec = {k: v for k, v in spec.items() if k in b.spec_keys() or k in ("T", "seed")}
    model = build_cell_model(config["model"], spec)
    W = model.feature_directions()
    return W is not None and W.shape[1] == 2


def geometry(
    out: str | os.PathLike,
    rows: Sequence[Mapping],
    Ts: Sequence[int] | None = None,
    seed: int | None = None,
):
    """For models with 2-d representations and feature directions (an m=2 bottleneck): the
    vectors of training points (top) and feature directions
    W_i (bottom) at a small and a large T (on either side of the test-loss peak)."""
    from memlens.sweep import load_cell, read_results

    plt = _plt()
    config, _ = read_results(out)
    if not _has_geometry(out, config):
        raise ValueError(
            "geometry plots need a sweep whose models have feature directions in 2 dimensions "
            "(e.g. a bottleneck with d_hidden=2)"
        )
    allT = sorted({int(r["T"]) for r in rows})
    if Ts is None:
        Ts = [allT[0], allT[-1]]
    seed = rows[0]["seed"] if seed is None else seed
    fig, axes = plt.subplots(2, len(Ts), figsize=(3.6 * len(Ts), 7.2), squeeze=False)
    for j, T in enumerate(Ts):
        row = next((r for r in rows if int(r["T"]) == int(T) and r["seed"] == seed), None)
        if row is None:
            raise ValueError(f"no finished cell with T={T}, seed={seed} in {out}")
        model, train, _ = load_cell(out, row)
        W, h = _hidden_geometry(model, train)
        ax = axes[0, j]
        show = h if len(h) <= 400 else h[:400]
        for v in show:
            ax.plot([0, v[0]], [0, v[1]], color="tab:blue", lw=0.6, alpha=0.6)
        ax.scatter(show[:, 0], show[:, 1], s=8, color="tab:blue")
        ax.set_title(
            f"T = {T}: training points h = W x\n({len(show)} of {len(h)} shown)", fontsize=9
        )
        ax = axes[1, j]
        norms = np.linalg.norm(W, axis=0)
        order = np.argsort(-norms)
        for k, i in enumerate(order):
            strong = k < 12 and norms[i] > 0.25 * norms[order[0]]
            ax.plot(
                [0, W[0, i]],
                [0, W[1, i]],
                color="tab:orange" if strong else "0.75",
                lw=1.5 if strong else 0.4,
                zorder=3 if strong else 1,
            )
        ax.set_title(
            f"T = {T}: feature directions W_i\n(n = {W.shape[1]}; the 12 longest in orange)",
            fontsize=9,
        )
        for a in axes[:, j]:
            a.set_aspect("equal")
            a.axhline(0, color="0.85", lw=0.5)
            a.axvline(0, color="0.85", lw=0.5)
            a.set_xlabel("hidden dim 1")
            a.set_ylabel("hidden dim 2")
            lim = max(np.abs(a.get_xlim()).max(), np.abs(a.get_ylim()).max())
            a.set(xlim=(-lim, lim), ylim=(-lim, lim))
    fig.suptitle(
        f"m = 2 hidden geometry, seed {seed}: memorising (small T) vs generalising (large T)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def _total_seconds(rows) -> float:
    return sum({r["group"]: r.get("group_seconds", 0.0) for r in rows}.values())


def _fmt(v) -> str:
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.4g}"


def report(out: str | os.PathLike, figures: str | os.PathLike | None = None) -> dict:
    """Write the sweep's figures (PNG) and ``summary.md`` into ``out/`` (or ``figures``)."""
    from memlens.sweep import read_results

    plt = _plt()
    config, rows = read_results(out)
    if not rows:
        raise ValueError(f"{out} holds no finished cells yet")
    dest = Path(figures) if figures is not None else Path(out)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fn in [
        ("double_descent", double_descent),
        ("dimensionality", dimensionality),
        ("weight_norms", weight_norms),
        ("dictionary", dictionary),
    ]:
        fig = fn(rows, config)
        fig.savefig(dest / f"{name}.png", dpi=120)
        plt.close(fig)
        written.append(dest / f"{name}.png")
    pk = find_peak(rows)
    if "d_hidden" not in config.get("grid", {}) and _has_geometry(out, config):
        allT = sorted({int(r["T"]) for r in rows})
        Ts = [allT[0]]
        if pk.get("interior"):
            Ts.append(int(pk["T_peak"]))
        Ts.append(allT[-1])
        fig = geometry(out, rows, Ts)
        fig.savefig(dest / "geometry.png", dpi=120)
        plt.close(fig)
        written.append(dest / "geometry.png")
    keys = [
        "train_loss",
        "test_loss",
        "weight_norm.total",
        "dictionary.coverage",
        "dictionary.read_back_accuracy",
        "dimensionality.mean_max_data_dim",
        "dimensionality.mean_data_dim",
        "dimensionality.dims_per_feature",
    ]
    cols = {k: dict(zip(*by_T(rows, k)[:2], strict=False)) for k in keys}
    Ts = sorted({float(r["T"]) for r in rows})
    lines = [
        f"# Sweep summary: {config['model']}",
        "",
        f"- cells: {len(rows)} of {config['n_cells']} finished, in {config['n_groups']} groups; "
        f"padding waste {config['padding_waste']:.2f}x (worst group "
        f"{config['max_group_waste']:.2f}x)",
        f"- task: `{config['task']}`",
        f"- train: `{config['train']}`",
        f"- total time of the finished groups: {_total_seconds(rows):.0f} s",
    ]
    if pk.get("T_peak") is not None:
        onset = _onset(config)
        lines.append(
            f"- median test loss peaks at T = {pk['T_peak']:.0f} ({_fmt(pk['peak'])}; small-T end "
            f"{_fmt(pk['small_T'])}, large-T end {_fmt(pk['large_T'])}; "
            + ("an interior peak" if pk["interior"] else "at an end of the T range: no bump")
            + (
                f"); T(1-S) = 10 expects the onset of generalisation near T = {onset:.0f}"
                if onset
                else ")"
            )
        )
    lines += [
        "",
        "Medians over seeds:",
        "",
        "| T | " + " | ".join(keys) + " |",
        "|" + "---|" * (len(keys) + 1),
    ]
    for T in Ts:
        lines.append(f"| {T:.0f} | " + " | ".join(_fmt(cols[k].get(T)) for k in keys) + " |")
    lines += ["", "Figures: " + ", ".join(f"`{p.name}`" for p in written), ""]
    (dest / "summary.md").write_text("\n".join(lines))
    return {"figures": [str(p) for p in written], "summary": str(dest / "summary.md"), "peak": pk}
