"""``SweepView``: a sweep folder read once, handed to every figure of its report.

The config and rows are read from disk once; settings, the model's bundle, the probes the sweep
ran (with their registered classes) and each group's checkpoint are worked out or loaded once and
kept, so figures that need cells' models (the geometry) do not read the folder again per T.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memlens.bundle import MODELS
from memlens.plugins import PROBES
from memlens.sweeps.cells import load_cell, probe_label
from memlens.sweeps.figures import settings
from memlens.sweeps.store import is_failed, read_results

__all__ = ["SweepView"]


@dataclass
class SweepView:
    """A sweep folder read once: its config, its finished and failed rows, and lazily, its
    settings, bundle, probes and group checkpoints."""

    out: Path
    config: dict
    rows: list[dict]
    failed: list[dict] = field(default_factory=list)
    _packed: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, out: str | os.PathLike) -> SweepView:
        """Read ``out`` (``config.json`` and ``results.jsonl``) once."""
        config, rows = read_results(out, failed=True)
        return cls(
            Path(out),
            config,
            [r for r in rows if not is_failed(r)],
            [r for r in rows if is_failed(r)],
        )

    @property
    def figure_config(self) -> dict:
        """The config figures take: the sweep's, with its failed cells (``failed_cells``)."""
        return {**self.config, "failed_cells": self.failed}

    @functools.cached_property
    def settings(self) -> dict[str, list[dict]]:
        """Finished rows by setting (grid values other than T and seed)."""
        return settings(self.rows)

    @functools.cached_property
    def bundle(self) -> Any:
        """The registered bundle of the sweep's model, or None when it is not registered here."""
        return MODELS.find(self.config.get("model", ""))

    @functools.cached_property
    def probes(self) -> list[tuple[str, Any]]:
        """``(label, probe class)`` of every probe the sweep ran (added ones too); the class is None
        for a probe not registered here (its columns stay in the table, unexplained)."""
        specs = list(self.config.get("probes", [])) + list(self.config.get("added_probes", []))
        return [(probe_label(p), PROBES.find(probe_label(p))) for p in specs]

    def cell(self, row: Mapping) -> tuple[Any, Any, Any]:
        """A finished cell's model (one instance) and its train and test data; each group's
        checkpoint is loaded once."""
        from memlens.persistence import load

        ck = row["checkpoint"]
        if ck not in self._packed:
            self._packed[ck] = load(self.out / ck)
        return load_cell(self.out, row, self.config, self._packed[ck])
