"""A sweep's records: the formats of ``config.json`` (and upgrading an old one), what makes two
sweeps the same (:data:`IDENTITY`), and the rows of ``results.jsonl`` (duplicates, failed cells).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from memlens import io
from memlens.sweeps.grid import TRAIN_DEFAULTS, fold_fixed_axes

__all__ = [
    "SWEEP_FORMAT",
    "OLD_FORMATS",
    "IDENTITY",
    "LEGACY_SPEC",
    "StoreWarning",
    "warn_store",
    "canon",
    "upgrade_config",
    "dedupe",
    "spec_defaults",
    "is_failed",
]

SWEEP_FORMAT = "memlens-sweep-v2"
OLD_FORMATS = ("memlens-sweep-v1",)
IDENTITY = ("model", "grid", "task", "train", "probes")
#: spec keys a model gained after a sweep was recorded, with the value their absence means: the
#: one that reproduces the recorded data, not today's default (data generated before the sparse
#: features were versioned is version 1). Keys a bundle does not have are ignored.
LEGACY_SPEC: dict[str, Any] = {"data_version": 1}


class StoreWarning(UserWarning):
    """Something in a sweep folder was repaired or ignored (a torn line, a bad checkpoint, ...)."""


def warn_store(msg: str) -> None:
    """Warn (a :class:`StoreWarning`) about something repaired or ignored in a sweep folder."""
    warnings.warn(msg, StoreWarning, stacklevel=3)


def canon(obj: Any) -> str:
    """``obj`` as canonical JSON (sorted keys), to compare settings."""
    return json.dumps(io.jsonable(obj), sort_keys=True)


def upgrade_config(raw: Mapping, spec_defaults: Mapping | None = None) -> dict:
    """A config of any supported format in the current one: train settings added since (``l1``)
    get their defaults; spec keys the model gained get their :data:`LEGACY_SPEC` value, else their
    default; ``added_probes`` defaults to ``[]``. Unknown formats raise a ``ValueError`` that says
    what to do."""
    fmt = raw.get("format")
    if fmt != SWEEP_FORMAT and fmt not in OLD_FORMATS:
        raise ValueError(
            f"unknown sweep format {fmt!r} (this memlens reads {SWEEP_FORMAT!r} and "
            f"{', '.join(OLD_FORMATS)}); rerun the sweep into a new folder"
        )
    cfg = dict(raw)
    cfg["train"] = {**TRAIN_DEFAULTS, **cfg.get("train", {})}
    if spec_defaults is not None:
        task = cfg.get("task", {})
        legacy = {k: v for k, v in LEGACY_SPEC.items() if k in spec_defaults and k not in task}
        cfg["task"] = {**spec_defaults, **legacy, **task}
    if isinstance(cfg.get("grid"), Mapping):  # written before the task showed one-valued axes
        cfg["task"], cfg["train"] = fold_fixed_axes(cfg["grid"], cfg.get("task", {}), cfg["train"])
    cfg["probes"] = list(cfg.get("probes", []))
    cfg["added_probes"] = list(cfg.get("added_probes", []))
    cfg["format"] = SWEEP_FORMAT
    return cfg


def dedupe(rows: Sequence[Mapping], where: str = "") -> list[dict]:
    """One row per cell (the first), warning when the table held duplicates."""
    seen: set[str] = set()
    out = []
    for r in rows:
        if r.get("key") in seen:
            continue
        seen.add(r.get("key"))
        out.append(dict(r))
    if len(out) < len(rows):
        warn_store(
            f"{where}results.jsonl holds {len(rows) - len(out)} duplicate row(s) of cells already "
            "in the table (a 0.1-era race?); kept the first row of each cell"
        )
    return out


def spec_defaults(model: str) -> dict | None:
    """The spec keys of a registered model with their defaults (None: unknown or no recipe)."""
    from memlens.bundle import get_bundle

    try:
        bundle = get_bundle(model)
        return bundle.spec_keys() if bundle.make_task is not None else None
    except ValueError:
        return None


def is_failed(row: Mapping) -> bool:
    """Whether a row records a cell whose group failed (``status: "failed"``)."""
    return row.get("status") == "failed"
