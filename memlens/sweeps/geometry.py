"""The 2-d geometry of a memorising and a generalising cell: training points at the
representation hook and feature directions, for settings whose both are 2-d (e.g. a bottleneck with
m = 2). Which settings qualify comes from the model (its representation width and
``feature_directions()``), never from a setting's name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from memlens.plot import pyplot
from memlens.sweeps.figures import representation_width, setting_spec, settings, sweep_bundle
from memlens.sweeps.view import SweepView

__all__ = ["planar_setting", "geometry"]


def _is_planar(config: Mapping, cell: Mapping) -> bool:
    b = sweep_bundle(config)
    if b is None or b.make_task is None:
        return False
    W = b.build(setting_spec(config, cell)).feature_directions()
    return W is not None and W.shape[1] == 2 and representation_width(config, cell) == 2


def planar_setting(config: Mapping, rows: Sequence[Mapping]) -> str | None:
    """The first setting whose representation and feature directions are 2-d (None if none)."""
    for label, rs in settings(rows).items():
        if _is_planar(config, rs[0].get("cell", {})):
            return label
    return None


def geometry(
    out: str | os.PathLike | SweepView,
    rows: Sequence[Mapping],
    Ts: Sequence[int] | None = None,
    seed: int | None = None,
):
    """For models whose representation and feature directions are 2-d (e.g. a bottleneck with
    m = 2): the training points' vectors at the representation hook (top) and the feature
    directions W_i (bottom), at a few T (default: the smallest and the largest). ``out`` is the
    sweep folder or the :class:`~memlens.sweeps.view.SweepView` a report read once."""
    view = out if isinstance(out, SweepView) else SweepView.read(out)
    plt = pyplot()
    config = view.config
    label = planar_setting(config, rows)
    if label is None:
        raise ValueError(
            "geometry plots need a sweep whose models have a 2-d representation and 2-d feature "
            "directions (e.g. a bottleneck with d_hidden=2)"
        )
    rows = settings(rows)[label]
    hook = sweep_bundle(config).representation_hook
    allT = sorted({int(r["T"]) for r in rows})
    Ts = [allT[0], allT[-1]] if Ts is None else list(Ts)
    seed = rows[0]["seed"] if seed is None else seed
    fig, axes = plt.subplots(2, len(Ts), figsize=(3.6 * len(Ts), 7.4), squeeze=False)
    for j, T in enumerate(Ts):
        row = next((r for r in rows if int(r["T"]) == int(T) and r["seed"] == seed), None)
        if row is None:
            raise ValueError(f"no finished cell with T={T}, seed={seed} in {view.out}")
        model, train, _ = view.cell(row)
        W = model.feature_directions()[0].numpy()
        _, cache = model.run_with_cache(train.inputs, names_filter=hook)
        h = cache[hook][:, 0].detach().numpy()
        show = h[:400]
        ax = axes[0, j]
        for v in show:
            ax.plot([0, v[0]], [0, v[1]], color="tab:blue", lw=0.6, alpha=0.6)
        ax.scatter(show[:, 0], show[:, 1], s=8, color="tab:blue")
        ax.set_title(
            f"T = {T}: training points at {hook}\n({len(show)} of {len(h)} shown)", fontsize=9
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
            a.set_xlabel("coordinate 1 (activation units)")
            a.set_ylabel("coordinate 2 (activation units)")
            lim = max(np.abs(a.get_xlim()).max(), np.abs(a.get_ylim()).max())
            a.set(xlim=(-lim, lim), ylim=(-lim, lim))
    where = f", {label}" if label else ""
    fig.suptitle(
        f"2-d geometry, seed {seed}{where}: memorising (small T) vs generalising (large T)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig
