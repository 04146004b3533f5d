"""One cell or group of a sweep: its probes, its packed model and data, and training it.

:func:`run_group` is the unit of work a backend runs: it takes a :class:`GroupJob` (plain,
picklable data), trains the group's packed model, runs the probes on every cell and returns a
:class:`GroupResult`. It reads and writes no files, so a backend may run it anywhere; the driver
alone writes the store.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from memlens.bundle import get_bundle
from memlens.data import Batch
from memlens.hooked import HookedToyModel
from memlens.plugins import PROBES
from memlens.probe import is_probe_pair, parse_probe_spec, probe_specs, resolve_probe
from memlens.sweeps.grid import TRAIN_KEYS, train_config
from memlens.training import train as train_fn

__all__ = [
    "GroupJob",
    "GroupResult",
    "run_group",
    "canonical_probes",
    "probe_spec",
    "probe_label",
    "check_probes",
    "cell_data",
    "load_cell",
]


# ---------------------------------------------------------------------------- probes
def canonical_probes(probes: Any) -> list:
    """A sweep's probes as JSON: ``"name"`` or ``["name", {argument: value}]`` each. A sweep
    stores its probes in ``config.json``, so each must be a registered name."""
    out = []
    for p in probe_specs(probes):
        name, kw = parse_probe_spec(p)
        if not isinstance(name, str):
            raise ValueError(
                f"probes: a sweep records its probes in config.json, so give each as a registered "
                f"name or (name, {{argument: value}}), got {p!r}"
            )
        out.append(name if not is_probe_pair(p) else [name, kw])
    labels = [probe_label(p) for p in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ValueError(f"probes: {dup} given twice; each probe's columns are named after it")
    return out


def probe_spec(p: Any) -> Any:
    """The ``resolve_probe`` form of a canonical probe (a name or a ``(name, kwargs)`` tuple)."""
    return (p[0], dict(p[1])) if isinstance(p, list) else p


def probe_label(p: Any) -> str:
    """The column prefix of a probe's scalars: its name."""
    return p[0] if isinstance(p, list) else p


def check_probes(probes: Sequence, model: HookedToyModel, train: Batch) -> None:
    """Refuse, before any work, probes a sweep cannot record: unknown names, probes that stream
    over tempered draws (they belong to ``memlens.temper``), and any probe that fails on the
    untrained model of the sweep's first cell (bad arguments, hooks the model lacks)."""
    for p in probes:
        name = probe_label(p)
        cls = PROBES.get(name)  # ValueError listing the known probes
        if callable(getattr(cls, "on_draw", None)):
            raise ValueError(
                f"probes: {name!r} streams over tempered SGLD draws, so it runs in "
                "memlens.temper(..., probes=[...]), not in a sweep; sweeps record probes that "
                "read a trained model (e.g. dimensionality, dictionary)"
            )
        try:
            resolve_probe(probe_spec(p), train=train).run(model, train)
        except (ValueError, TypeError, KeyError, NotImplementedError, RuntimeError) as exc:
            raise ValueError(f"probes: {name!r} cannot run on this sweep's cells: {exc}") from exc


# ---------------------------------------------------------------------------- cells
def cell_data(model: str, spec: Mapping) -> tuple[Batch, Batch]:
    """A cell's training set (T points) and test set, exactly as when trained alone."""
    return get_bundle(model).data(spec)


def load_cell(
    out: str | os.PathLike,
    row: Mapping,
    config: Mapping | None = None,
    packed: HookedToyModel | None = None,
) -> tuple[HookedToyModel, Batch, Batch]:
    """A finished cell's model (one instance) and its train / test data. ``config`` (the sweep's)
    and ``packed`` (its group's loaded checkpoint) save reading them again for every cell."""
    from memlens.persistence import load
    from memlens.sweeps.store import read_results

    cfg = config if config is not None else read_results(out)[0]
    packed = packed if packed is not None else load(Path(out) / row["checkpoint"])
    model = packed.select_instances([row["instance"]])
    spec = {**cfg["task"], **{k: v for k, v in row["cell"].items() if k not in TRAIN_KEYS}}
    tr, te = cell_data(cfg["model"], spec)
    return model, tr, te


# ---------------------------------------------------------------------------- a group's work
@dataclass(frozen=True)
class GroupJob:
    """What a backend needs to run one packed group (plain data: it pickles)."""

    model: str
    index: int
    cells: tuple[dict, ...]  # each {"key", "axes", "spec", "train"}
    probes: tuple = ()
    device: str = "cpu"
    progress: bool = False


@dataclass
class GroupResult:
    """A finished group: its rows (no checkpoint fields yet), its packed model and recipes."""

    index: int
    rows: list[dict]
    model: HookedToyModel
    recipes: list[dict] = field(default_factory=list)


def pack(model: str, cells: Sequence[Mapping]) -> tuple[HookedToyModel, Batch, Batch]:
    """One model whose instance i is cell i's own model, and padded train / stacked test data."""
    bundle = get_bundle(model)
    singles = [bundle.build(c["spec"]) for c in cells]
    packed = singles[0].with_instances(
        len(cells),
        {k: torch.cat([s.state_dict()[k] for s in singles]) for k in singles[0].state_dict()},
    )
    trains, tests = zip(*(bundle.data(c["spec"]) for c in cells), strict=True)
    T_max = max(len(b) for b in trains)

    def pad(t: torch.Tensor, n: int) -> torch.Tensor:
        out = torch.zeros(n, *t.shape[1:], dtype=t.dtype)
        out[: len(t)] = t
        return out

    def stack(bs, n, lengths):
        targets = None if bs[0].targets is None else torch.cat([pad(b.targets, n) for b in bs], 1)
        return Batch(torch.cat([pad(b.inputs, n) for b in bs], 1), targets, None, lengths)

    lengths = torch.tensor([len(b) for b in trains], dtype=torch.long)
    train = stack(trains, T_max, None if bool((lengths == T_max).all()) else lengths)
    test = stack(tests, len(tests[0]), None)
    return packed, train, test


def _weight_norms(model: HookedToyModel) -> dict[str, torch.Tensor]:
    norms = {n: p.detach().flatten(1).norm(dim=1) for n, p in model.named_parameters()}
    norms["total"] = torch.stack([v**2 for v in norms.values()]).sum(0).sqrt()
    return norms


def _train_group(job: GroupJob, packed, tr_batch, te_batch):
    cfg = train_config(job.cells[0]["train"], job.cells[0]["spec"]["seed"])
    try:
        return train_fn(
            packed,
            tr_batch.to(job.device),
            cfg,
            test=te_batch.to(job.device),
            progress=job.progress,
            desc=f"group {job.index} (T<={max(c['spec']['T'] for c in job.cells)}, "
            f"{len(job.cells)} cells)",
        )
    except FloatingPointError as exc:  # name the cells, not the packed instances
        raise _name_cells(job, exc) from exc


def _name_cells(job: GroupJob, exc: FloatingPointError) -> FloatingPointError:
    """``exc`` with the packed instances it names replaced by the cells they hold (each cell's
    grid values, e.g. ``{"T": 8, "seed": 1}``)."""
    insts = getattr(exc, "instances", None)
    where = f"sweep group {job.index} ({len(job.cells)} cells)"
    if insts is None or not all(0 <= i < len(job.cells) for i in insts):
        cells = "; ".join(c["key"] for c in job.cells)
        return FloatingPointError(f"{where}: {exc}; the group's cells: {cells}")
    cells = "; ".join(job.cells[i]["key"] for i in insts)
    return FloatingPointError(f"{where}: {exc.describe(f'cell(s) {cells}')}")


def run_group(job: GroupJob) -> GroupResult:
    """Train one packed group and probe each of its cells. Reads and writes no files."""
    t0 = time.perf_counter()
    packed, tr_batch, te_batch = pack(job.model, job.cells)
    packed = packed.to(job.device)
    res = _train_group(job, packed, tr_batch, te_batch)
    packed = packed.cpu()
    train_seconds = time.perf_counter() - t0
    norms = _weight_norms(packed)
    bundle = get_bundle(job.model)
    rows = []
    for i, c in enumerate(job.cells):
        row = {
            "key": c["key"],
            "cell": c["axes"],
            "T": c["spec"]["T"],
            "seed": c["spec"]["seed"],
            "train_loss": float(res.train_loss[i]),
            "test_loss": float(res.test_loss[i]),
            "weight_norm": {k: float(v[i]) for k, v in norms.items()},
            "group": job.index,
            "instance": i,
        }
        if job.probes:
            cell_model = packed.select_instances([i])
            cell_train = bundle.data(c["spec"])[0]
            for p in job.probes:
                result = resolve_probe(probe_spec(p), train=cell_train).run(cell_model, cell_train)
                for k, v in result.scalars().items():
                    row[f"{probe_label(p)}.{k}"] = float(v)
        rows.append(row)
    seconds = round(time.perf_counter() - t0, 3)
    for r in rows:
        r["group_seconds"] = seconds
        r["train_seconds"] = round(train_seconds, 3)
    recipes = [json.loads(json.dumps(c["spec"], default=str)) for c in job.cells]
    return GroupResult(job.index, rows, packed, recipes)
