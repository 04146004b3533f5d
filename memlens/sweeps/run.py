"""Run and resume a sweep: validate, lock the store, hand the unfinished groups to a backend
(:mod:`memlens.sweeps.backends`), and write each finished group (checkpoint, then its rows) as it
streams back; a failed group's cells are recorded as failed rows.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from memlens.bundle import get_bundle
from memlens.hooked import HookedToyModel
from memlens.persistence import load
from memlens.plugins import PROBES
from memlens.probe import resolve_probe
from memlens.sweeps.backends import (
    BACKENDS,
    TRIES,
    Backend,
    GroupFailure,
    LocalBackend,
    SweepFailed,
    attempt,
    failure_rows,
    make_backend,
)
from memlens.sweeps.cells import (
    GroupJob,
    GroupResult,
    canonical_probes,
    check_probes,
    load_cell,
    probe_label,
    probe_spec,
)
from memlens.sweeps.grid import check_cells, fold_fixed_axes, make_cells, normalise, plan_groups
from memlens.sweeps.store import SWEEP_FORMAT, SweepStore, read_results

__all__ = ["sweep", "add_probes", "default_probes"]
#: the failure model and the backends live in memlens.sweeps.backends; re-exported for old imports
_REEXPORTED = (BACKENDS, TRIES, Backend, GroupFailure, LocalBackend, SweepFailed, attempt)
_REEXPORTED += (failure_rows,)


def default_probes(bundle: Any) -> tuple[list[str], dict[str, str]]:
    """The probes a sweep of ``bundle``'s model runs when none are named: every registered probe
    marked ``default`` that supports the model; and ``{name: why}`` of the defaults skipped."""
    run, skipped = [], {}
    for name in PROBES.names():
        cls = PROBES.get(name)
        if not getattr(cls, "default", False):
            continue
        if cls.supports(bundle):
            run.append(name)
        else:
            need = getattr(cls, "requires", "") or "what this probe reads"
            skipped[name] = f"model {bundle.name!r} does not provide {need}"
    return run, skipped


def _device(device: Any) -> str:
    try:
        return str(torch.device(device))
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be a torch device such as 'cpu', got {device!r}") from exc


def _config(model: str, g, t, tr, probes, groups) -> dict:
    return {
        "format": SWEEP_FORMAT,
        "model": model,
        "grid": g,
        "task": t,
        "train": tr,
        "probes": probes,
        "added_probes": [],
        "n_cells": sum(len(x["cells"]) for x in groups),
        "n_groups": len(groups),
        "padding_waste": sum(x["padded"] for x in groups) / sum(x["useful"] for x in groups),
        "max_group_waste": max(x["padded"] / x["useful"] for x in groups),
    }


def sweep(
    model: str,
    grid: Mapping[str, Sequence] | None = None,
    *,
    task: Mapping[str, Any] | None = None,
    train: Mapping[str, Any] | None = None,
    probes: Sequence | None = None,
    out: str | os.PathLike,
    resume: bool = True,
    progress: bool = True,
    preset: str | None = None,
    device: str | torch.device = "cpu",
    backend: Backend | str | None = None,
    address: str | None = None,
    lock_timeout: float | None = None,
) -> list[dict]:
    """Train every cell of ``grid`` (packed into instances) and record its results in ``out/``.

    Args:
        model: a registered model name (``memlens list``).
        grid: axis -> values. ``T`` (training-set size, required), ``seed`` (init and data), any
            spec key of the model's bundle (``sparsity``, ``n_features``, a width, ...) and the
            train settings ``steps``, ``lr``, ``weight_decay``, ``warmup``, ``batch_size``, ``l1``.
        task: the fixed spec keys (data and model settings), e.g. ``{"n_features": 1000}``.
        train: keyword arguments of :func:`memlens.train`: steps, lr, weight_decay, warmup,
            schedule, batch_size (None: full batch), l1 (activation L1 coefficient).
        probes: registered probe names or ``(name, {argument: value})``; each cell records
            ``probe.scalars()``. None (default): every registered probe that is a default
            (``Probe.default``) and supports the model (``Probe.supports(bundle)``); the ones
            skipped are said on stderr and recorded in ``config.json``'s ``skipped_probes``.
        out: the results folder. resume: continue a sweep already there (False refuses it).
        preset: a preset of the model's bundle (e.g. ``cpu``, ``smoke``): fills grid, task and
            train (explicit ones override, key by key).
        device: where groups train. backend: where groups run: ``"local"`` (default: this
            process, one group after another), ``"ray"`` (a Ray task per group; the device is then
            the task's: cuda when Ray gives it a GPU, else cpu) or a backend object.
        address: with ``backend="ray"``, the cluster to join: None starts a local one for the
            sweep, ``"auto"`` or ``"HOST:PORT"`` joins a running one (``ray start --head``).
        lock_timeout: seconds to wait for another writer of ``out`` (None: as long as it takes,
            0: refuse at once).
    Returns:
        one row per cell of ``out/results.jsonl``, in grid order.

    Every argument and every cell is checked before any work and before any file is written.
    A group that fails twice (once for a divergence) is recorded as a row per cell with
    ``status: "failed"`` and its error; the others finish, then :class:`SweepFailed` (or
    ``FloatingPointError``) is raised. Rerunning the same command retries the failed groups.
    """
    bundle, cells, groups, config = _plan(model, grid, task, train, probes, preset, out)
    dev = _device(device)
    runner = make_backend(backend, address)
    store = SweepStore(out)
    store.check_target()
    store.check_before_lock(config, bundle.spec_keys())  # a quick refusal, without waiting

    with store.locked(lock_timeout, verbose=progress):
        keys = {c["key"] for c in cells}
        stored = store.open_sweep(config, keys, bundle.spec_keys(), resume)
        store.clean()
        done = store.done_groups(groups)
        run_probes = tuple(config["probes"]) + tuple(stored["added_probes"])
        jobs = [
            GroupJob(model, gi, tuple(grp["cells"]), run_probes, dev, progress)
            for gi, grp in enumerate(groups)
            if gi not in done
        ]
        if progress:
            print(
                f"sweep {model}: {config['n_cells']} cells in {len(groups)} groups "
                f"({len(done)} done); padding waste {config['padding_waste']:.2f}x "
                f"(worst group {config['max_group_waste']:.2f}x)",
                file=sys.stderr,
            )
        failed = _drive(store, runner.run(jobs), len(groups), len(done), model, progress)
    if failed:
        _raise_failed(model, failed, len(groups), out)
    order = {c["key"]: i for i, c in enumerate(cells)}
    _, rows = read_results(out)
    return sorted(rows, key=lambda r: order.get(r["key"], len(order)))


def _plan(model, grid, task, train, probes, preset, out) -> tuple[Any, list, list, dict]:
    """``(bundle, cells, groups, config)`` of a sweep, every argument and cell checked (before
    any work and before any file is written)."""
    if not isinstance(model, str):
        raise ValueError(f"model must be a registered model name, got {model!r}")
    bundle = get_bundle(model)  # ValueError listing the known models
    if preset is not None:
        p = bundle.preset(preset)
        grid = {**p["grid"], **(grid or {})}
        task = {**p["task"], **(task or {})}
        train = {**p["train"], **(train or {})}
    skipped: dict[str, str] = {}
    if probes is None:
        probes, skipped = default_probes(bundle)
        for name, why in skipped.items():  # said even without progress: results lack it
            print(f"sweep {model}: skipped default probe {name!r}: {why}", file=sys.stderr)
    probes = canonical_probes(probes)
    g, t, tr = normalise(bundle, grid, task, train)
    for k, v in SweepStore(out).legacy_settings(bundle.spec_keys()).items():
        if k not in (task or {}) and k not in g:
            t[k] = v  # continue a sweep recorded before key k existed on the data it used
    t, tr = fold_fixed_axes(g, t, tr)  # the stored task says what every cell ran with
    cells = make_cells(g, t, tr)
    check_cells(bundle, cells)
    first = min(cells, key=lambda c: c["spec"]["T"])
    first_train = bundle.task(first["spec"]).sample(first["spec"]["T"], seed=first["spec"]["seed"])
    check_probes(probes, bundle.build(first["spec"]), first_train)  # its training set alone
    groups = plan_groups(bundle, cells)
    config = {**_config(model, g, t, tr, probes, groups), "skipped_probes": skipped}
    return bundle, cells, groups, config


def _drive(
    store: SweepStore, results: Iterable[GroupResult | GroupFailure], total, done, model, progress
) -> list[GroupFailure]:
    """Write each group as it arrives: a finished one's checkpoint first, then its rows; a failed
    one's rows (status ``failed``). Returns the failures."""
    from tqdm.auto import tqdm

    failed = []
    with tqdm(total=total, initial=done, desc=f"sweep {model} groups", disable=not progress) as bar:
        for res in results:
            if isinstance(res, GroupFailure):
                store.append(failure_rows(res))
                failed.append(res)
                if progress:
                    print(f"sweep {model}: group {res.index} failed: {res.error}", file=sys.stderr)
            else:
                fields = store.save_group(res.index, res.model, res.recipes)
                store.append([{**r, **fields} for r in res.rows])
            bar.update(1)
    return failed


def _raise_failed(model: str, failed: Sequence[GroupFailure], n_groups: int, out) -> None:
    n_cells = sum(len(f.job.cells) for f in failed)
    what = "; ".join(
        f"group {f.index} ({', '.join(c['key'] for c in f.job.cells)}): {f.error}" for f in failed
    )
    msg = (
        f"sweep {model}: {len(failed)} of {n_groups} groups ({n_cells} cells) failed and are "
        f"recorded as failed in {Path(out) / 'results.jsonl'}; rerun the command to retry them. "
        f"{what}"
    )
    diverged = all(f.kind == "FloatingPointError" for f in failed)
    raise (FloatingPointError if diverged else SweepFailed)(msg)


def add_probes(
    out: str | os.PathLike,
    probes: Sequence,
    progress: bool = True,
    lock_timeout: float | None = None,
) -> list[dict]:
    """Run ``probes`` on every finished cell of a sweep and add their scalars to its table (for a
    probe that landed after the sweep ran). They are recorded in ``config.json``'s
    ``added_probes``, not in the sweep's identity, so the original sweep command still resumes
    (and runs them on the cells it adds)."""
    from tqdm.auto import tqdm

    store = SweepStore(out)
    config, rows = read_results(out)
    probes = canonical_probes(probes)
    if rows:
        model0, train0, _ = load_cell(out, rows[0])
        check_probes(probes, model0, train0)  # before any work
    with store.locked(lock_timeout, verbose=progress):
        config, rows = read_results(out, failed=True)  # failed rows are kept as they are
        groups: dict[str, HookedToyModel] = {}
        for r in tqdm(rows, desc="probing cells", disable=not progress):
            if r.get("status") == "failed":
                continue
            if r["checkpoint"] not in groups:
                groups = {r["checkpoint"]: load(Path(out) / r["checkpoint"])}  # one at a time
            model, train_set, _ = load_cell(out, r, config, groups[r["checkpoint"]])
            for p in probes:
                result = resolve_probe(probe_spec(p), train=train_set).run(model, train_set)
                for k, v in result.scalars().items():
                    r[f"{probe_label(p)}.{k}"] = float(v)
        store.rewrite_rows(rows)
        have = {probe_label(p) for p in config["probes"] + config["added_probes"]}
        config["added_probes"] += [p for p in probes if probe_label(p) not in have]
        store.write_config(config)
    return rows
