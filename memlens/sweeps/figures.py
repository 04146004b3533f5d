"""A sweep's curves against T: double descent and weight norms, and the pieces every curve is drawn
with (probes draw their own curves with them, in their :meth:`~memlens.Probe.sweep_report`).

Every curve function takes the rows of a sweep (``memlens.sweep`` or
``memlens.sweeps.read_results``) and its config, draws each seed faintly and the median over
seeds boldly (one colour per setting when the grid has axes besides T and seed), and returns the
matplotlib figure. Everything model-specific (titles, loss units, the representation hook and its
width, feature directions) comes from the model's bundle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from memlens.io import number
from memlens.plot import log_axis, pyplot, stamp_partial
from memlens.sweeps.grid import TRAIN_KEYS, split_settings

__all__ = [
    "value",
    "settings",
    "sweep_bundle",
    "setting_spec",
    "setting_title",
    "loss_units",
    "by_T",
    "find_peak",
    "representation_width",
    "double_descent",
    "weight_norms",
    "T_LABEL",
    "colors",
    "curve",
    "finish",
    "new_axes",
    "xlim",
]

T_LABEL = "T (training-set size, points)"


def sweep_bundle(config: Mapping | None):
    """The registered bundle of a sweep's model (None if it is not registered here)."""
    from memlens.bundle import MODELS

    try:
        return MODELS.get((config or {}).get("model", ""))
    except ValueError:
        return None


def setting_title(config) -> str:
    """The model's display title from its bundle (its name if it is not registered)."""
    b = sweep_bundle(config)
    return b.display_title if b is not None else (config or {}).get("model", "")


def loss_units(config) -> str:
    """The model's loss units from its bundle, for axis labels."""
    b = sweep_bundle(config)
    return b.loss_units if b is not None else "loss per point"


def value(row: Mapping, key: str) -> float:
    """``row[key]`` as a float (NaN if absent); ``key`` may be dotted (``"weight_norm.W"``)."""
    v = row.get(key)
    if v is None and "." in key:
        head, tail = key.split(".", 1)
        sub = row.get(head)
        v = sub.get(tail) if isinstance(sub, Mapping) else None
    return number(v) if isinstance(v, (int, float, str)) or v is None else math.nan


def _order(v) -> tuple:
    return (0, float(v), "") if isinstance(v, (int, float)) else (1, 0.0, str(v))


def settings(rows: Sequence[Mapping]) -> dict[str, list[Mapping]]:
    """Rows by setting: the label of their grid values other than T and seed (``""`` if none),
    settings in increasing order of those values."""
    out: dict[str, list[Mapping]] = {}
    keys: dict[str, tuple] = {}
    for r in rows:
        cell = r.get("cell", {})
        label = split_settings(cell)
        out.setdefault(label, []).append(r)
        keys.setdefault(label, tuple(_order(v) for k, v in cell.items() if k not in ("T", "seed")))
    return {label: out[label] for label in sorted(out, key=keys.__getitem__)}


def by_T(
    rows: Sequence[Mapping], key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(T, median, lo, hi)`` of ``key`` over the rows (seeds) at each T; non-finite skipped."""
    vals: dict[int, list[float]] = {}
    for r in rows:
        v = value(r, key)
        if np.isfinite(v):
            vals.setdefault(int(r["T"]), []).append(v)
    Ts = np.array(sorted(vals), dtype=float)
    med = np.array([np.median(vals[int(t)]) for t in Ts])
    lo = np.array([min(vals[int(t)]) for t in Ts])
    hi = np.array([max(vals[int(t)]) for t in Ts])
    return Ts, med, lo, hi


def find_peak(rows: Sequence[Mapping]) -> dict:
    """Where median test loss peaks over T (rows of one setting), and its ratio to both ends."""
    T, med, _, _ = by_T(rows, "test_loss")
    if len(T) < 3:
        return {"T_peak": None}
    k = int(np.argmax(med))
    ends = max(med[0], med[-1])
    return {
        "T_peak": float(T[k]),
        "peak": float(med[k]),
        "small_T": float(med[0]),
        "large_T": float(med[-1]),
        "interior": 0 < k < len(T) - 1,
        "rise_over_ends": float(med[k] - ends),
        "ratio_over_ends": float(med[k] / ends) if ends > 0 else math.inf,
    }


def setting_spec(config: Mapping, cell: Mapping | None = None) -> dict:
    """The spec of a cell's setting (its data and model settings; T = 1, seed 0)."""
    spec = {**config["task"], **(cell or {}), "T": 1, "seed": 0}
    return {k: v for k, v in spec.items() if k not in TRAIN_KEYS}


def representation_width(config: Mapping, cell: Mapping | None = None) -> int | None:
    """The width m of the model's representation hook for a cell's setting (None if unknown)."""
    b = sweep_bundle(config)
    if b is None or b.make_task is None:
        return None
    spec = setting_spec(config, cell)
    model = b.build(spec)
    x = b.task(spec).sample(1, seed=0)
    _, cache = model.run_with_cache(x.inputs, names_filter=model.representation_hook)
    return int(cache[model.representation_hook].shape[-1])


# ---------------------------------------------------------------------------- drawing
def colors(n: int) -> list:
    plt = pyplot()
    cyc = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return [cyc[i % len(cyc)] for i in range(n)]


def curve(ax, rows, key, label, color, marker="o", ls="-", hollow=False) -> bool:
    """Each seed as a faint line, the median over seeds bold; False if no row has ``key``.
    ``hollow`` draws larger open markers beneath the solid curves, so that curves lying on each
    other (D and D* of a memorising model) both stay visible."""
    T, med, _, _ = by_T(rows, key)
    if len(T) == 0:
        return False
    seeds = sorted({r.get("seed") for r in rows}, key=str)
    if len(seeds) > 1:
        for s in seeds:
            Ts, v, _, _ = by_T([r for r in rows if r.get("seed") == s], key)
            ax.plot(Ts, v, color=color, lw=0.7, alpha=0.35, zorder=2)
    style = (
        {"ms": 8, "mfc": "none", "mew": 1.3, "zorder": 3} if hollow else {"ms": 4.5, "zorder": 4}
    )
    ax.plot(T, med, marker=marker, lw=1.8, color=color, ls=ls, label=label, **style)
    return True


def _how(rows) -> str:
    n_seeds = len({r.get("seed") for r in rows})
    return f"median over {n_seeds} seeds (bold), each seed faint" if n_seeds > 1 else "one seed"


def _decorate(ax, title: str, legend_outside: bool = False) -> None:
    ax.set_title(title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        if legend_outside:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        else:
            ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")


def _failed(config) -> list:
    """The rows of cells whose group failed (``report`` passes them in ``config``)."""
    return list((config or {}).get("failed_cells") or [])


def _close(fig, rows, config) -> None:
    fig.tight_layout()
    if config is not None and "n_cells" in config:
        stamp_partial(fig, len(rows), int(config["n_cells"]))
        if _failed(config):
            fig.text(  # bottom left: the top holds the PARTIAL stamp and the title
                0.01,
                0.005,
                f"FAILED: {len(_failed(config))} cells, no result (see summary.md)",
                color="tab:red",
                fontsize=9,
                fontweight="bold",
                ha="left",
                va="bottom",
            )


def _mark_failed(ax, config) -> None:
    """A red x at the foot of the axis at the T of each failed cell (no result to draw)."""
    Ts = sorted({float(r["T"]) for r in _failed(config)})
    if Ts:
        ax.plot(
            Ts,
            [0.03] * len(Ts),
            "x",
            color="tab:red",
            ms=9,
            mew=2,
            transform=ax.get_xaxis_transform(),
            label="failed cell (no result)",
            zorder=5,
            clip_on=False,
        )


def finish(fig, ax, rows, config, title: str, legend_outside: bool = False) -> None:
    _decorate(ax, f"{title}\n{_how(rows)}", legend_outside)
    _close(fig, rows, config)


def xlim(ax, rows) -> None:
    Ts = [int(r["T"]) for r in rows]
    if Ts:
        ax.set_xlim(min(Ts) / 1.25, max(Ts) * 1.25)


def _onset(config: Mapping | None, rows) -> float | None:
    """T(1-S) = 10: where generalisation should start, if sparsity is fixed and the T range holds
    it (a line outside the range would only stretch the axis)."""
    s = (config or {}).get("task", {}).get("sparsity")
    if s is None or "sparsity" in (config or {}).get("grid", {}):
        return None
    onset = 10.0 / (1.0 - float(s))
    Ts = [int(r["T"]) for r in rows]
    return onset if Ts and min(Ts) <= onset <= max(Ts) else None


def new_axes(ax, size=(6.4, 4.2)):
    plt = pyplot()
    fig = ax.figure if ax is not None else plt.figure(figsize=size)
    return fig, ax or fig.add_subplot()


def double_descent(rows: Sequence[Mapping], config: Mapping | None = None, ax=None):
    """Test loss (left) and train loss (right) against T (log T; log loss where it spans a decade),
    per setting; each panel has its own y range, so train losses decades below do not flatten the
    test-loss bump. The interior
    test-loss peak and T(1-S) = 10 are marked where they fall inside the T range. With ``ax``
    given, both curves go on that one axis."""
    if ax is None:
        fig, axes = pyplot().subplots(1, 2, figsize=(11.5, 4.3))
    else:
        fig, axes = ax.figure, [ax, ax]
    groups = settings(rows)
    many = len(groups) > 1
    for color, (label, rs) in zip(colors(len(groups)), groups.items(), strict=True):
        pre = f"{label}: " if many else ""
        curve(axes[0], rs, "test_loss", f"{pre}test loss", color if many else "tab:red", "s")
        curve(
            axes[1], rs, "train_loss", f"{pre}train loss", color if many else "tab:blue", "o", "--"
        )
        pk = find_peak(rs)
        if pk.get("interior"):
            axes[0].plot(
                pk["T_peak"],
                pk["peak"],
                marker="*",
                ms=14,
                color=color if many else "tab:red",
                mec="black",
                mew=0.6,
                zorder=4,
                ls="none",
                label=None if many else f"interior peak, T = {pk['T_peak']:.0f}",
            )
    _mark_failed(axes[0], config)
    onset = _onset(config, rows)
    for a in {id(x): x for x in axes}.values():
        if onset is not None:
            a.axvline(onset, color="gray", ls="--", lw=1, label=f"T(1-S) = 10 (T = {onset:.0f})")
        lo, hi = a.dataLim.intervaly
        # a log y axis only where the losses span a decade; a narrower range reads better linear
        log_axis(a, "both" if lo > 0 and hi / lo >= 10 else "x")
        xlim(a, list(rows) + _failed(config))
        a.set(xlabel=T_LABEL, ylabel=loss_units(config))
    if ax is None:
        _decorate(axes[0], "test loss (fresh points)", legend_outside=False)
        _decorate(axes[1], "train loss (the T training points)", legend_outside=many)
        fig.suptitle(f"Double descent: {setting_title(config)} ({_how(rows)})", fontsize=10)
    else:
        _decorate(ax, f"Double descent: {setting_title(config)}\n{_how(rows)}", legend_outside=many)
    _close(fig, rows, config)
    return fig


def weight_norms(rows: Sequence[Mapping], config: Mapping | None = None, ax=None):
    """Frobenius norm of each weight matrix (per instance) against T."""
    fig, ax = new_axes(ax)
    names = sorted({k for r in rows for k in r.get("weight_norm", {})} - {"total"})
    groups = settings(rows)
    many = len(groups) > 1
    styles = ["-", "--", "-.", ":"]
    for color, (label, rs) in zip(colors(len(groups)), groups.items(), strict=True):
        for i, n in enumerate(names):
            c = color if many else colors(len(names))[i]
            pre = f"{label}: " if many else ""
            curve(
                ax, rs, f"weight_norm.{n}", f"{pre}‖{n}‖_F", c, "o", styles[i % 4] if many else "-"
            )
    log_axis(ax, "both")
    xlim(ax, rows)
    ax.set(xlabel=T_LABEL, ylabel="Frobenius norm (same units as the weights)")
    finish(fig, ax, rows, config, f"Weight norms: {setting_title(config)}", legend_outside=many)
    return fig
