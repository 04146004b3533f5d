"""Resumable sweeps over grids (T, seed, width, sparsity, ...) packed into model instances.

    rows = memlens.sweep("bottleneck", {"T": [10, 100, 1000], "seed": [0, 1, 2]},
                         task={"n_features": 1000, "sparsity": 0.99, "d_hidden": 2},
                         train={"steps": 4000, "lr": 1e-2, "warmup": 200, "weight_decay": 1e-2},
                         out="runs/dd")

Every *cell* of the grid is one model trained on its own data. Cells whose models have the same
shapes (and the same optimiser settings) are packed as instances of one model and trained in one
loop. Each instance is initialised and fed exactly as the cell would be on its own (the model with
``n_instances=1, seed=cell seed``; the data ``task.split(T, seed=cell seed)``), so a packed cell
equals the cell trained alone up to float rounding (full-batch training; see ``tests``).

Data sets of different sizes T are padded to the group's largest T and masked
(``Batch.lengths``). Cells are grouped by T so that the padded compute stays below
``MAX_WASTE`` (1.5x) the useful compute; the realised waste is stored in ``config.json`` and
printed.

Storage in ``out/``: ``config.json`` (the sweep: model, grid, task, train, probes, groups),
``results.jsonl`` (one row per cell) and ``checkpoints/group-NNN.pt`` (the packed model, with
the recipe of each instance's data), all written atomically as each group finishes. Re-running
skips finished groups; an ``out/`` holding a different sweep is refused.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memlens import data as D
from memlens import io
from memlens.hooked import HookedToyModel
from memlens.registry import MODELS, get_model, get_probe
from memlens.train import train as train_fn

__all__ = [
    "sweep",
    "PRESETS",
    "preset",
    "make_task",
    "cell_data",
    "build_cell_model",
    "load_cell",
    "plan_groups",
    "read_results",
    "add_probes",
    "save_cells",
    "load_cells",
]

MAX_WASTE = 1.5  # padded rows / useful rows allowed in one group (the issue asks < 2)
MAX_GROUP_ELEMENTS = 2**25  # T_max * instances * width per activation, bounds memory
SWEEP_FORMAT = "memlens-sweep-v1"
EXIT_AFTER_ENV = "MEMLENS_SWEEP_EXIT_AFTER"  # testing: os._exit after this many groups

# The data (task) keys each setting understands, with defaults.
TASK_KEYS: dict[str, dict[str, Any]] = {
    "bottleneck": {"n_features": 1000, "sparsity": 0.99, "normalize": True, "n_test": 2048},
    "mlp": {
        "n_features": 100,
        "sparsity": 0.99,
        "normalize": True,
        "d_model": 20,
        "embed_seed": 0,
        "n_test": 2048,
    },
    "unembed": {
        "n_features": 100,
        "sparsity": 0.99,
        "normalize": True,
        "d_model": 20,
        "embed_seed": 0,
        "labels": "rule",
        "n_test": 2048,
    },
}
TASK_CLASSES = {"bottleneck": D.BottleneckTask, "mlp": D.MLPTask, "unembed": D.UnembedTask}
TRAIN_KEYS = ("steps", "lr", "weight_decay", "warmup", "schedule", "batch_size")
TRAIN_DEFAULTS = {
    "steps": 1000,
    "lr": 1e-3,
    "weight_decay": 1e-2,
    "warmup": 0,
    "schedule": "cosine",
    "batch_size": None,
}


def _logspace(lo: float, hi: float, n: int) -> list[int]:
    vals = sorted({int(round(v)) for v in np.geomspace(lo, hi, n)})
    return vals


# --------------------------------------------------------------------------------------- presets
# paper: Anthropic's bottleneck scale (Henighan et al. 2023). cpu: n=1e3, S=0.99 (transition ~10x
# lower in T), the fewest steps that still show it. smoke: seconds, for tests.
PRESETS: dict[str, dict[str, dict]] = {
    "bottleneck": {
        "paper": {
            "grid": {"T": _logspace(3, 50_000, 20), "seed": [0, 1, 2]},
            "task": {"n_features": 10_000, "sparsity": 0.999, "d_hidden": 2},
            "train": {"steps": 50_000, "lr": 1e-3, "warmup": 2_500, "weight_decay": 1e-2},
        },
        "cpu": {
            "grid": {"T": _logspace(3, 1000, 12), "seed": [0, 1, 2]},
            "task": {"n_features": 1000, "sparsity": 0.99, "d_hidden": 2, "n_test": 1000},
            "train": {"steps": 1000, "lr": 1e-2, "warmup": 50, "weight_decay": 1e-2},
        },
        "smoke": {
            "grid": {"T": [3, 6, 12, 24], "seed": [0, 1]},
            "task": {"n_features": 40, "sparsity": 0.9, "d_hidden": 2, "n_test": 256},
            "train": {"steps": 60, "lr": 1e-2, "warmup": 5, "weight_decay": 1e-2},
        },
    },
    "mlp": {
        "paper": {
            "grid": {"T": _logspace(3, 50_000, 20), "seed": [0, 1, 2]},
            "task": {"n_features": 10_000, "sparsity": 0.999, "d_model": 100, "d_mlp": 256},
            "train": {"steps": 50_000, "lr": 1e-3, "warmup": 2_500, "weight_decay": 1e-2},
        },
        # ~20 active features of 100 (S = 0.8) seen through d_model = 20; weight decay 0.1 (it
        # clears the random init that masks the bump) and 3,000 steps: test loss peaks near
        # T ~ 2 d_mlp (benchmarks/dd_search.py)
        "cpu": {
            "grid": {"T": _logspace(3, 1000, 13), "seed": [0, 1, 2]},
            "task": {
                "n_features": 100,
                "sparsity": 0.8,
                "d_model": 20,
                "d_mlp": 64,
                "n_test": 1000,
            },
            "train": {"steps": 3000, "lr": 1e-2, "warmup": 50, "weight_decay": 0.1},
        },
        # the cpu preset scaled down (~9 active of 30 features, d_model 8): still a bump, T ~ 15
        "smoke": {
            "grid": {"T": _logspace(3, 400, 7), "seed": [0, 1]},
            "task": {"n_features": 30, "sparsity": 0.7, "d_model": 8, "d_mlp": 16, "n_test": 256},
            "train": {"steps": 1000, "lr": 1e-2, "warmup": 50, "weight_decay": 0.1},
        },
    },
    "unembed": {
        "paper": {
            "grid": {"T": _logspace(3, 50_000, 20), "seed": [0, 1, 2]},
            "task": {"n_features": 10_000, "sparsity": 0.999, "d_model": 100},
            "train": {"steps": 50_000, "lr": 1e-3, "warmup": 2_500, "weight_decay": 1e-2},
        },
        # the rule label (largest active feature) over 300 features, ~10 active (S = 0.967),
        # through d_model = 20: test loss peaks near T ~ 5 d_model (benchmarks/dd_search.py)
        "cpu": {
            "grid": {"T": _logspace(3, 3000, 13), "seed": [0, 1, 2]},
            "task": {
                "n_features": 300,
                "sparsity": 0.967,
                "d_model": 20,
                "labels": "rule",
                "n_test": 1000,
            },
            "train": {"steps": 1000, "lr": 3e-2, "warmup": 50, "weight_decay": 1e-2},
        },
        # the cpu preset scaled down (120 features, ~18 active, d_model 8): still a bump, T ~ 55
        "smoke": {
            "grid": {"T": _logspace(3, 1000, 7), "seed": [0, 1]},
            "task": {
                "n_features": 120,
                "sparsity": 0.85,
                "d_model": 8,
                "labels": "rule",
                "n_test": 256,
            },
            "train": {"steps": 1000, "lr": 3e-2, "warmup": 50, "weight_decay": 1e-2},
        },
    },
}


# Which hook a probe reads in each setting, where the probe takes a ``hook`` argument: the learned
# representation (the bottleneck's hidden vector, the MLP's neurons, the final layer's logits).
PROBE_KWARGS: dict[str, dict[str, dict]] = {
    "dimensionality": {"mlp": {"hook": "hook_post"}, "unembed": {"hook": "hook_logits"}},
}


def make_probe(name: str, model: str, train: D.Batch | None = None):
    """A probe instance for a setting (using :data:`PROBE_KWARGS`)."""
    kw = PROBE_KWARGS.get(name, {}).get(model, {})
    return get_probe(name)(train=train, **kw)


def preset(model: str, name: str) -> dict:  # noqa: D401
    """``{"grid", "task", "train"}`` of a named preset (``paper``, ``cpu``, ``smoke``)."""
    if model not in PRESETS:
        raise ValueError(f"no presets for model {model!r}; presets exist for {sorted(PRESETS)}")
    if name not in PRESETS[model]:
        raise ValueError(
            f"unknown preset {name!r} for model {model!r}; known presets: {sorted(PRESETS[model])}"
        )
    return copy.deepcopy(PRESETS[model][name])


_get_preset = preset


# ------------------------------------------------------------------------------ specs and cells
def _model_fields(model: str) -> dict[str, Any]:
    """Model config fields a cell may set (not derived from the task), with their defaults."""
    import dataclasses

    cls = get_model(model)
    derived = set(
        TASK_CLASSES[model](
            D.SparseFeatures(4, 0.5), **_task_ctor(model, {"d_model": 2})
        ).model_kwargs()
    ) | {"n_instances", "seed", "importance"}
    return {f.name: f.default for f in dataclasses.fields(cls.Config) if f.name not in derived}


def _task_ctor(model: str, spec: Mapping) -> dict:
    if model == "bottleneck":
        return {}
    kw = {"d_model": int(spec["d_model"]), "seed": int(spec.get("embed_seed", 0))}
    if model == "unembed":
        kw["labels"] = spec.get("labels", "rule")
    return kw


def _check_model(model: str) -> None:
    get_model(model)  # ValueError listing the known models
    if model not in TASK_CLASSES:
        raise ValueError(
            f"memlens.sweep knows the data for models {sorted(TASK_CLASSES)}, not {model!r}"
        )


def allowed_axes(model: str) -> list[str]:
    return sorted(
        {"T", "seed"}
        | set(TASK_KEYS[model])
        | set(_model_fields(model)) - {"n_test"}
        | {"lr", "weight_decay", "steps", "warmup"}
    )


def make_task(model: str, spec: Mapping) -> D.Task:
    """The one-instance task for a cell spec (task keys + grid values)."""
    feats = D.SparseFeatures(
        int(spec["n_features"]), float(spec["sparsity"]), normalize=bool(spec["normalize"])
    )
    return TASK_CLASSES[model](feats, n_instances=1, **_task_ctor(model, spec))


def cell_data(model: str, spec: Mapping) -> tuple[D.Batch, D.Batch]:
    """The cell's training set (T points) and test set, exactly as when trained alone."""
    return make_task(model, spec).split(
        int(spec["T"]), seed=int(spec["seed"]), n_test=int(spec["n_test"])
    )


def build_cell_model(model: str, spec: Mapping) -> HookedToyModel:
    """The cell's model on its own: ``n_instances=1``, initialised from the cell's seed."""
    task = make_task(model, spec)
    fields = _model_fields(model)
    kw = {k: spec[k] for k in fields if k in spec}
    return get_model(model)(**task.model_kwargs(), **kw, seed=int(spec["seed"]))


def _normalise(model, grid, task, train) -> tuple[dict, dict, dict]:
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(f"grid must be a non-empty mapping of axis -> values, got {grid!r}")
    axes = allowed_axes(model)
    unknown = [a for a in grid if a not in axes]
    if unknown:
        raise ValueError(f"unknown grid axis {unknown} for model {model!r}; allowed axes: {axes}")
    g = {}
    for a, vals in grid.items():
        if isinstance(vals, (str, bytes)) or not isinstance(vals, Sequence):
            vals = [vals] if not isinstance(vals, (np.ndarray, torch.Tensor)) else list(vals)
        vals = [v.item() if hasattr(v, "item") else v for v in vals]
        if not vals:
            raise ValueError(f"grid axis {a!r} has no values")
        if len(set(map(repr, vals))) != len(vals):
            raise ValueError(f"grid axis {a!r} repeats values: {vals}")
        g[a] = list(vals)
    if "T" not in g:
        raise ValueError("grid needs a 'T' axis (training-set sizes)")
    for T in g["T"]:
        if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
            raise ValueError(f"grid T values must be positive ints, got {T!r}")
    g.setdefault("seed", [0])
    for s in g["seed"]:
        if isinstance(s, bool) or not isinstance(s, int):
            raise ValueError(f"grid seed values must be ints, got {s!r}")
    task = dict(task or {})
    known_task = set(TASK_KEYS[model]) | set(_model_fields(model))
    bad = [k for k in task if k not in known_task]
    if bad:
        raise ValueError(
            f"unknown task key(s) {bad} for model {model!r}; known: {sorted(known_task)}"
        )
    t = {**TASK_KEYS[model], **{k: v for k, v in _model_fields(model).items()}, **task}
    if model == "bottleneck" and "d_hidden" not in task and "d_hidden" not in g:
        t["d_hidden"] = 2
    train = dict(train or {})
    bad = [k for k in train if k not in TRAIN_KEYS]
    if bad:
        raise ValueError(f"unknown train key(s) {bad}; known: {list(TRAIN_KEYS)}")
    tr = {**TRAIN_DEFAULTS, **train}
    return g, t, tr


def _cells(g: dict, t: dict, tr: dict) -> list[dict]:
    """Every cell: ``{"axes": {...}, "spec": task+axes, "train": train+axes}``."""
    names = list(g)
    out = []
    for combo in itertools.product(*(g[a] for a in names)):
        axes = dict(zip(names, combo, strict=False))
        spec = {**t, **{k: v for k, v in axes.items() if k not in TRAIN_KEYS}}
        trn = {**tr, **{k: v for k, v in axes.items() if k in TRAIN_KEYS}}
        out.append(
            {"axes": axes, "key": json.dumps(axes, sort_keys=True), "spec": spec, "train": trn}
        )
    return out


def _width(model: str, spec: Mapping) -> int:
    m = build_cell_model(model, {**spec, "T": 1, "seed": 0})
    return int(m.width)


def plan_groups(model: str, cells: list[dict], max_waste: float = MAX_WASTE) -> list[dict]:
    """Pack cells into groups: same shapes and optimiser settings, T within ``max_waste``.

    Returns ``[{"cells": [cell, ...], "T_max", "useful", "padded"}]`` in a deterministic order.
    """
    by_shape: dict[str, list[dict]] = {}
    for c in cells:
        shape = {k: v for k, v in c["spec"].items() if k not in ("T", "seed", "sparsity")}
        k = json.dumps({"shape": shape, "train": c["train"]}, sort_keys=True, default=str)
        by_shape.setdefault(k, []).append(c)
    groups = []
    for k in sorted(by_shape):
        cs = sorted(by_shape[k], key=lambda c: (-c["spec"]["T"], c["key"]))
        width = _width(model, cs[0]["spec"])
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
    # cheapest (smallest-T) groups first: an interrupted sweep already shows the small-T side
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


def _pack(model: str, cells: list[dict]) -> tuple[HookedToyModel, D.Batch, D.Batch]:
    """One model whose instance i is cell i's own model, and padded train / stacked test data."""
    singles = [build_cell_model(model, c["spec"]) for c in cells]
    packed = singles[0]._with_instances(
        len(cells),
        {k: torch.cat([s.state_dict()[k] for s in singles]) for k in singles[0].state_dict()},
    )
    trains, tests = zip(*(cell_data(model, c["spec"]) for c in cells), strict=False)
    T_max = max(len(b) for b in trains)

    def pad(t: torch.Tensor | None, n: int) -> torch.Tensor | None:
        if t is None:
            return None
        out = torch.zeros(n, *t.shape[1:], dtype=t.dtype)
        out[: len(t)] = t
        return out

    def stack(bs, n, lengths):
        return D.Batch(
            inputs=torch.cat([pad(b.inputs, n) for b in bs], 1),
            targets=None
            if bs[0].targets is None
            else torch.cat([pad(b.targets, n) for b in bs], 1),
            features=None,
            lengths=lengths,
        )

    lengths = torch.tensor([len(b) for b in trains], dtype=torch.long)
    train = stack(trains, T_max, None if bool((lengths == T_max).all()) else lengths)
    test = stack(tests, len(tests[0]), None)
    return packed, train, test


def _weight_norms(model: HookedToyModel) -> dict[str, torch.Tensor]:
    norms = {n: p.detach().flatten(1).norm(dim=1) for n, p in model.named_parameters()}
    norms["total"] = torch.stack([v**2 for v in norms.values()]).sum(0).sqrt()
    return norms


def _config(model, g, t, tr, probes, groups) -> dict:
    return {
        "format": SWEEP_FORMAT,
        "model": model,
        "grid": g,
        "task": t,
        "train": tr,
        "probes": list(probes),
        "n_cells": sum(len(x["cells"]) for x in groups),
        "n_groups": len(groups),
        "padding_waste": sum(x["padded"] for x in groups) / sum(x["useful"] for x in groups),
        "max_group_waste": max(x["padded"] / x["useful"] for x in groups),
    }


_IDENTITY = ("format", "model", "grid", "task", "train", "probes")


def read_results(out: str | os.PathLike) -> tuple[dict, list[dict]]:
    """``(config, rows)`` of a sweep folder."""
    out = Path(out)
    if not (out / "config.json").exists():
        raise FileNotFoundError(f"{out} holds no sweep (no config.json)")
    return io.read_json(out / "config.json"), io.read_jsonl(out / "results.jsonl")


def load_cell(out: str | os.PathLike, row: Mapping) -> tuple[HookedToyModel, D.Batch, D.Batch]:
    """A finished cell's model (one instance) and its train / test data."""
    from memlens.hooked import load

    cfg = io.read_json(Path(out) / "config.json")
    packed = load(Path(out) / row["checkpoint"])
    model = packed.select_instances([row["instance"]])
    spec = {**cfg["task"], **{k: v for k, v in row["cell"].items() if k not in TRAIN_KEYS}}
    tr, te = cell_data(cfg["model"], spec)
    return model, tr, te


def sweep(
    model: str,
    grid: Mapping[str, Sequence] | None = None,
    *,
    task: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
    probes: Sequence[str] = ("dimensionality", "dictionary"),
    out: str | os.PathLike,
    resume: bool = True,
    progress: bool = True,
    preset: str | None = None,
    device: str | torch.device = "cpu",
) -> list[dict]:
    """Train every cell of ``grid`` (packed into instances) and record its results in ``out/``.

    Args:
        model: a registered model name (``bottleneck``, ``mlp``, ``unembed``).
        grid: axis -> values. Axes: ``T`` (training-set size, required), ``seed`` (init + data),
            any task key (``sparsity``, ``n_features``, ``d_model``, ...), any model width
            (``d_hidden``, ``d_mlp``, ``tied``), and ``lr``/``weight_decay``/``steps``/``warmup``.
        task: the data and fixed model settings, e.g. ``{"n_features": 1000, "sparsity": 0.99,
            "d_hidden": 2}`` (bottleneck), plus ``d_model``, ``labels`` ("rule"/"random"),
            ``embed_seed`` for mlp/unembed, ``normalize`` (unit-norm points), ``n_test``.
        train: keyword arguments of :func:`memlens.train` (steps, lr, weight_decay, warmup,
            schedule, batch_size; full batch by default).
        probes: registered probe names; each cell records ``probe.scalars()``.
        out: the results folder. resume: skip cells already finished there (False refuses a
            non-empty ``out/``).
        preset: ``paper``/``cpu``/``smoke``: fills grid, task and train (explicit ones override,
            key by key).
    Returns:
        all rows of ``out/results.jsonl`` (one per cell), in grid order.
    """
    # ---------------------------------------------------------------- validate, before any work
    if not isinstance(model, str):
        raise ValueError(f"model must be a registered model name, got {model!r}")
    _check_model(model)
    if preset is not None:
        p = _get_preset(model, preset)
        grid = {**p["grid"], **(grid or {})}
        task = {**p["task"], **(task or {})}
        train = {**p["train"], **(train or {})}
    if isinstance(probes, str):
        probes = (probes,)
    probe_classes = [get_probe(n) for n in probes]
    g, t, tr = _normalise(model, grid, task, train)
    cells = _cells(g, t, tr)
    for c in cells[:1] + cells[-1:]:
        build_cell_model(model, {**c["spec"], "T": c["spec"]["T"]})  # config errors raise here
        make_task(model, c["spec"])
    for c in cells:  # cheap checks on every cell's training settings
        trn = c["train"]
        if not (isinstance(trn["steps"], int) and trn["steps"] > 0):
            raise ValueError(f"train steps must be a positive int, got {trn['steps']!r}")
        if not 0 <= float(c["spec"]["sparsity"]) < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {c['spec']['sparsity']!r}")
    probe_model = build_cell_model(model, cells[0]["spec"])
    del probe_classes
    for n in probes:
        make_probe(n, model).hook_names(probe_model)  # unknown hooks raise here
    groups = plan_groups(model, cells)
    config = _config(model, g, t, tr, probes, groups)
    out = Path(out)
    cfg_path, table = out / "config.json", out / "results.jsonl"
    if cfg_path.exists():
        old = io.read_json(cfg_path)
        mine = io.jsonable({k: config[k] for k in _IDENTITY})
        theirs = {k: old.get(k) for k in _IDENTITY}
        if json.dumps(mine, sort_keys=True) != json.dumps(theirs, sort_keys=True):
            diff = [
                k
                for k in _IDENTITY
                if json.dumps(mine[k], sort_keys=True) != json.dumps(theirs[k], sort_keys=True)
            ]
            raise ValueError(
                f"{out} holds a different sweep (its {', '.join(diff)} differ); refusing to mix "
                "tables: pick another out/ or delete that one"
            )
        if not resume:
            raise FileExistsError(f"{out} already holds this sweep; pass resume=True to continue")
    elif out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no sweep config; refusing to write")

    # ---------------------------------------------------------------- run
    io.write_json(cfg_path, config)
    done = {r["key"] for r in io.read_jsonl(table)}
    todo = [
        (gi, grp)
        for gi, grp in enumerate(groups)
        if not all(c["key"] in done for c in grp["cells"])
    ]
    if progress:
        print(
            f"sweep {model}: {config['n_cells']} cells in {len(groups)} groups "
            f"({len(groups) - len(todo)} done); padding waste {config['padding_waste']:.2f}x "
            f"(worst group {config['max_group_waste']:.2f}x)"
        )
    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(groups),
        initial=len(groups) - len(todo),
        desc=f"sweep {model} groups",
        disable=not progress,
    )
    exit_after = int(os.environ.get(EXIT_AFTER_ENV, "0") or 0)
    try:
        for n_run, (gi, grp) in enumerate(todo, 1):
            rows = _run_group(model, gi, grp, probes, out, progress, device)
            rows = [r for r in rows if r["key"] not in done]
            io.append_jsonl(table, rows)
            done |= {r["key"] for r in rows}
            bar.update(1)
            if exit_after and n_run >= exit_after:
                bar.close()
                os._exit(3)  # simulate a kill between groups (tests of resume)
    finally:
        bar.close()
    order = {c["key"]: i for i, c in enumerate(cells)}
    rows = sorted(io.read_jsonl(table), key=lambda r: order.get(r["key"], len(order)))
    return rows


def _run_group(model, gi, grp, probes, out, progress, device) -> list[dict]:
    cells = grp["cells"]
    t0 = time.perf_counter()
    packed, tr_batch, te_batch = _pack(model, cells)
    packed = packed.to(device)
    trn = cells[0]["train"]
    res = train_fn(
        packed,
        tr_batch.to(device),
        test=te_batch.to(device),
        steps=int(trn["steps"]),
        lr=float(trn["lr"]),
        weight_decay=float(trn["weight_decay"]),
        warmup=int(trn["warmup"]),
        schedule=trn["schedule"],
        batch_size=trn["batch_size"],
        seed=int(cells[0]["spec"]["seed"]),
        progress=progress,
        desc=f"group {gi} (T<={grp['T_max']}, {len(cells)} cells)",
    )
    packed = packed.cpu()
    train_seconds = time.perf_counter() - t0
    ckpt = Path("checkpoints") / f"group-{gi:03d}.pt"
    norms = _weight_norms(packed)
    rows = []
    for i, c in enumerate(cells):
        row = {
            "key": c["key"],
            "cell": c["axes"],
            "T": c["spec"]["T"],
            "seed": c["spec"]["seed"],
            "train_loss": float(res.train_loss[i]),
            "test_loss": float(res.test_loss[i]),
            "weight_norm": {k: float(v[i]) for k, v in norms.items()},
            "group": gi,
            "instance": i,
            "checkpoint": str(ckpt),
        }
        if probes:
            cell_model = packed.select_instances([i])
            cell_batch = cell_data(model, c["spec"])[0]
            for name in probes:
                result = make_probe(name, model, cell_batch).run(cell_model, cell_batch)
                for k, v in result.scalars().items():
                    row[f"{name}.{k}"] = float(v)
        rows.append(row)
    save_cells(out / ckpt, model, packed, [c["spec"] for c in cells])
    for r in rows:
        r["group_seconds"] = round(time.perf_counter() - t0, 3)
        r["train_seconds"] = round(train_seconds, 3)
    return rows


def save_cells(path: str | os.PathLike, model: str, packed: HookedToyModel, specs: list[dict]):
    """Save a (packed) model with the recipe of each instance's data, atomically. ``memlens.load``
    reads it as a model; :func:`load_cells` also rebuilds each instance's data."""
    if len(specs) != packed.n_instances:
        raise ValueError(f"{len(specs)} cell specs for a model with {packed.n_instances} instances")
    io.save_checkpoint(
        path,
        {
            "model": MODELS.name_of(packed),
            "config": json.dumps(packed.cfg.to_dict(), sort_keys=True),
            "state_dict": {k: v.detach().cpu() for k, v in packed.state_dict().items()},
            "sweep_model": model,
            "cells": json.dumps(specs, sort_keys=True, default=str),
        },
    )


def load_cells(path: str | os.PathLike) -> tuple[HookedToyModel, str | None, list[dict]]:
    """``(model, setting, specs)``: the model of a checkpoint and, when it was written by a sweep
    or ``memlens train``, each instance's data recipe (use :func:`cell_data`)."""
    from memlens.hooked import load

    model = load(path)
    payload = io.load_checkpoint(path)
    specs = json.loads(payload["cells"]) if "cells" in payload else []
    return model, payload.get("sweep_model"), specs


def add_probes(out: str | os.PathLike, probes: Sequence[str], progress: bool = True) -> list[dict]:
    """Run ``probes`` on every finished cell of a sweep and add their scalars to its table
    (for a probe that landed after the sweep ran). The table is rewritten atomically."""
    from tqdm.auto import tqdm

    out = Path(out)
    config, rows = read_results(out)
    for n in probes:
        make_probe(n, config["model"])  # unknown names raise before any work
    for r in tqdm(rows, desc="probing cells", disable=not progress):
        model, train_set, _ = load_cell(out, r)
        for name in probes:
            probe = make_probe(name, config["model"], train_set)
            for k, v in probe.run(model, train_set).scalars().items():
                r[f"{name}.{k}"] = float(v)
    config["probes"] = sorted(set(config["probes"]) | set(probes))
    io.atomic_write_text(
        out / "results.jsonl",
        "".join(json.dumps(io.jsonable(r), sort_keys=True) + "\n" for r in rows),
    )
    io.write_json(out / "config.json", config)
    return rows


def cell_spec(config: Mapping, row: Mapping) -> dict:
    """The full spec (task + axes) of a results row."""
    return {**config["task"], **{k: v for k, v in row["cell"].items() if k not in TRAIN_KEYS}}


def summarise(rows: list[dict], key: str) -> dict[int, tuple[float, float, float]]:
    """``T -> (median, min, max)`` of ``key`` over the rows (seeds) at each T."""
    by: dict[int, list[float]] = {}
    for r in rows:
        v = r.get(key) if "." not in key or key in r else r.get(key)
        if v is None:
            continue
        by.setdefault(r["T"], []).append(float(v))
    return {T: (float(np.median(v)), min(v), max(v)) for T, v in sorted(by.items())}
