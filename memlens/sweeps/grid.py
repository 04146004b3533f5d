"""A sweep's grid: normalisation, every cell checked before any work, and the packing plan.

A *cell* is one model trained on its own data: ``{"key", "axes", "spec", "train"}``, where ``axes``
are the cell's grid values, ``spec`` its data-and-model recipe (the bundle's task keys and model
fields, ``T`` and ``seed``; see :class:`memlens.ModelBundle`) and ``train`` the keyword arguments
of :func:`memlens.train`. Cells with the same shapes and optimiser settings are *packed* as
instances of one model (a *group*), padded to the group's largest T within ``MAX_WASTE``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from memlens import validate
from memlens.bundle import ModelBundle
from memlens.training_config import TrainConfig

__all__ = [
    "TRAIN_KEYS",
    "TRAIN_DEFAULTS",
    "MAX_WASTE",
    "MAX_GROUP_ELEMENTS",
    "allowed_axes",
    "normalise",
    "make_cells",
    "check_cells",
    "plan_groups",
    "split_settings",
    "train_config",
    "fold_fixed_axes",
]

MAX_WASTE = 1.5  # padded rows / useful rows allowed in one group (the issue asks < 2)
MAX_GROUP_ELEMENTS = 2**25  # T_max * instances * width per activation, bounds memory

#: the train settings of a sweep (keyword arguments of memlens.train) and their defaults
TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 1000,
    "lr": 1e-3,
    "weight_decay": 1e-2,
    "warmup": 0,
    "schedule": "cosine",
    "batch_size": None,
    "l1": 0.0,
}
TRAIN_KEYS = tuple(TRAIN_DEFAULTS)
_TRAIN_AXES = ("steps", "lr", "weight_decay", "warmup", "batch_size", "l1")


def allowed_axes(bundle: ModelBundle) -> list[str]:
    """Grid axes a sweep of ``bundle``'s model may vary: T, seed, spec keys, train settings."""
    keys = set(bundle.spec_keys()) - {"n_test"}
    return sorted({"T", "seed"} | keys | set(_TRAIN_AXES))


def _values(axis: str, vals: Any) -> list:
    if isinstance(vals, (np.ndarray, torch.Tensor)):
        vals = vals.tolist()
    elif isinstance(vals, (str, bytes)) or not isinstance(vals, Sequence):
        vals = [vals]
    vals = [v.item() if isinstance(v, (np.generic, torch.Tensor)) else v for v in vals]
    if not vals:
        raise ValueError(f"grid axis {axis!r} has no values")
    if len(set(map(repr, vals))) != len(vals):
        raise ValueError(f"grid axis {axis!r} repeats values: {vals}")
    return list(vals)


def normalise(
    bundle: ModelBundle,
    grid: Mapping[str, Any] | None,
    task: Mapping[str, Any] | None,
    train: Mapping[str, Any] | None,
) -> tuple[dict, dict, dict]:
    """``(grid, task, train)`` with every key checked and every default filled in.

    ``grid`` maps axes to lists of values (``T`` required; ``seed`` defaults to ``[0]``), ``task``
    holds the fixed spec keys, ``train`` the fixed train settings. Unknown keys raise a
    ``ValueError`` naming them and the known ones."""
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(f"grid must be a non-empty mapping of axis -> values, got {grid!r}")
    axes = allowed_axes(bundle)
    unknown = [a for a in grid if a not in axes]
    if unknown:
        raise ValueError(
            f"unknown grid axis {unknown} for model {bundle.name!r}; allowed axes: {axes}"
        )
    g = {a: _values(a, v) for a, v in grid.items()}
    if "T" not in g:
        raise ValueError("grid needs a 'T' axis (training-set sizes)")
    g.setdefault("seed", [0])
    task = dict(task or {})
    known_task = bundle.spec_keys()
    bad = [k for k in task if k not in known_task]
    if bad:
        raise ValueError(
            f"unknown task key(s) {bad} for model {bundle.name!r}; known: {sorted(known_task)}"
        )
    train = dict(train or {})
    bad = [k for k in train if k not in TRAIN_KEYS]
    if bad:
        raise ValueError(f"unknown train key(s) {bad}; known: {list(TRAIN_KEYS)}")
    return g, {**known_task, **task}, {**TRAIN_DEFAULTS, **train}


def fold_fixed_axes(g: Mapping, t: Mapping, tr: Mapping) -> tuple[dict, dict]:
    """``(task, train)`` with each one-valued grid axis (besides T and seed) written in: the values
    every cell ran with (``--set normalize=no`` is a one-valued axis), so that a sweep's stored
    task and its summary say what the cells ran with. The cells are the same either way."""
    fixed = {a: v[0] for a, v in g.items() if a not in ("T", "seed") and len(v) == 1}
    task = {**t, **{k: v for k, v in fixed.items() if k not in TRAIN_KEYS}}
    train = {**tr, **{k: v for k, v in fixed.items() if k in TRAIN_KEYS}}
    return task, train


def make_cells(g: Mapping, t: Mapping, tr: Mapping) -> list[dict]:
    """Every cell of a normalised grid, in grid order: ``{"key", "axes", "spec", "train"}``."""
    names = list(g)
    out = []
    for combo in itertools.product(*(g[a] for a in names)):
        axes = dict(zip(names, combo, strict=True))
        spec = {**t, **{k: v for k, v in axes.items() if k not in TRAIN_KEYS}}
        trn = {**tr, **{k: v for k, v in axes.items() if k in TRAIN_KEYS}}
        key = json.dumps(axes, sort_keys=True)
        out.append({"key": key, "axes": axes, "spec": spec, "train": trn})
    return out


# ---------------------------------------------------------------------------- checks
def _where(cell: Mapping) -> str:
    return f" (cell {cell['key']})"


def train_config(tr: Mapping, seed: Any = 0, where: str = "") -> TrainConfig:
    """A cell's train settings as the :class:`~memlens.training_config.TrainConfig` it trains
    with (its seed is the cell's); a bad setting is refused by that one check, naming the field
    and ``where`` (the cell)."""
    try:
        return TrainConfig.of(tr, seed=seed)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"train setting {exc}{where}") from exc


def _check_spec_types(spec: Mapping, defaults: Mapping, where: str) -> None:
    """Each spec value has its default's kind (see :func:`memlens.validate.spec_values`)."""
    for k in ("T", "seed"):
        if k not in spec:
            raise ValueError(f"a cell's spec needs {k}{where}")
    validate.spec_values(spec, defaults, where)


def check_cells(bundle: ModelBundle, cells: Sequence[Mapping]) -> None:
    """Check every cell's train settings and spec, and build the model and the data recipe of
    every distinct setting once, so that anything the model or task refuses is refused now,
    before any work and before any file is written. Messages name the field and the cell."""
    defaults = bundle.spec_keys()
    seen: set[str] = set()
    for c in cells:
        where = _where(c)
        _check_spec_types(c["spec"], defaults, where)
        train_config(c["train"], c["spec"]["seed"], where)
        shape = json.dumps(
            {k: v for k, v in c["spec"].items() if k not in ("T", "seed")}, sort_keys=True
        )
        if shape in seen:
            continue
        seen.add(shape)
        try:
            bundle.build(c["spec"])
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"{exc}{where}") from exc


def split_settings(axes: Mapping) -> str:
    """A short label of a cell's grid values other than T and seed (``""`` if there are none)."""
    return ", ".join(f"{k}={v}" for k, v in axes.items() if k not in ("T", "seed"))


# ---------------------------------------------------------------------------- packing plan
def plan_groups(
    bundle: ModelBundle, cells: Sequence[dict], max_waste: float = MAX_WASTE
) -> list[dict]:
    """Pack cells into groups: same shapes and optimiser settings, T within ``max_waste``.

    Returns ``[{"cells": [cell, ...], "T_max", "useful", "padded"}]`` in a deterministic order
    (smallest T first, so an interrupted sweep already shows the small-T side)."""
    by_shape: dict[str, list[dict]] = {}
    for c in cells:
        shape = {k: v for k, v in c["spec"].items() if k not in ("T", "seed", "sparsity")}
        k = json.dumps({"shape": shape, "train": c["train"]}, sort_keys=True, default=str)
        by_shape.setdefault(k, []).append(c)
    groups = []
    for k in sorted(by_shape):
        cs = sorted(by_shape[k], key=lambda c: (-c["spec"]["T"], c["key"]))
        width = int(bundle.build({**cs[0]["spec"], "T": 1, "seed": 0}).width)
        cur: list[dict] = []
        for c in cs:
            T = c["spec"]["T"]
            if cur:
                t_max = cur[0]["spec"]["T"]
                useful = sum(x["spec"]["T"] for x in cur) + T
                n = len(cur) + 1
                if n * t_max > max_waste * useful or n * t_max * width > MAX_GROUP_ELEMENTS:
                    groups.append(cur)
                    cur = []
            cur.append(c)
        if cur:
            groups.append(cur)
    groups.sort(key=lambda g: (g[0]["spec"]["T"], len(g), g[0]["key"]))
    return [
        {
            "cells": g,
            "T_max": g[0]["spec"]["T"],
            "useful": sum(c["spec"]["T"] for c in g),
            "padded": len(g) * g[0]["spec"]["T"],
        }
        for g in groups
    ]
