"""The plugin registries: the generic :class:`Registry` and the probe group ``memlens.probes``.

The model group ``memlens.models`` (``MODELS``) lives beside :class:`~memlens.bundle.ModelBundle`
in :mod:`memlens.bundle`; :mod:`memlens.registry` gathers both for users. Built-in models and
probes are registered through entry points in ``pyproject.toml``, exactly as a third-party package
registers its own; ``register_model`` / ``register_probe`` cover classes defined
in a notebook. A model plugin is a :class:`~memlens.bundle.ModelBundle` (a bare model class is
wrapped in one). A duplicate name raises; a plugin that fails to import warns, naming it, and never
breaks ``import memlens``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

__all__ = [
    "Registry",
    "PROBES",
    "GROUPS",
    "register_probe",
    "get_probe",
    "list_probes",
    "entry_point_packages",
]

#: the entry-point groups of memlens plugins
GROUPS = ("memlens.models", "memlens.probes")


def entry_point_packages(groups: tuple[str, ...] = GROUPS) -> set[str]:
    """The top-level packages that installed plugins of ``groups`` live in, read off their entry
    points without importing any of them."""
    return {ep.value.split(":")[0].split(".")[0] for g in groups for ep in entry_points(group=g)}


class Registry:
    """A name -> class table backed by one entry-point group, loaded lazily on first use."""

    def __init__(self, group: str, kind: str, wrap: Callable[[Any], Any] | None = None):
        self.group = group
        self.kind = kind
        self._wrap = wrap or (lambda obj: obj)
        self._table: dict[str, Any] = {}
        self._sources: dict[str, str] = {}
        self._loaded = False

    # -- loading -------------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for ep in entry_points(group=self.group):
            try:
                obj = self._wrap(ep.load())
            except Exception as exc:  # a broken plugin must never break memlens
                warnings.warn(
                    f"memlens: could not load {self.kind} plugin {ep.name!r} ({ep.value}) from "
                    f"entry-point group {self.group!r}: {type(exc).__name__}: {exc}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            self._add(ep.name, obj, source=f"entry point {ep.value}")

    def _add(self, name: str, obj: Any, source: str) -> None:
        obj = self._wrap(obj)
        existing = self._table.get(name)
        if existing is not None:
            if existing is obj or existing == obj:
                return
            raise ValueError(
                f"duplicate {self.kind} name {name!r}: already registered by "
                f"{self._sources[name]}; refusing {source}"
            )
        self._table[name] = obj
        self._sources[name] = source

    def reload(self) -> None:
        """Forget entry points and read them again (decorator registrations are kept)."""
        keep = {
            k: (v, self._sources[k])
            for k, v in self._table.items()
            if not self._sources[k].startswith("entry point")
        }
        self._table.clear()
        self._sources.clear()
        self._loaded = False
        self._load_entry_points()
        for k, (v, src) in keep.items():
            self._add(k, v, src)

    # -- public --------------------------------------------------------------------------------
    def register(self, name: str) -> Callable[[Any], Any]:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def deco(obj: Any) -> Any:
            self._load_entry_points()
            where = getattr(getattr(obj, "model", obj), "__module__", "?")
            self._add(name, obj, source=f"register_{self.kind}({name!r}) in {where}")
            return obj

        return deco

    def unregister(self, name: str) -> None:
        self._table.pop(name, None)
        self._sources.pop(name, None)

    def get(self, name: str) -> Any:
        self._load_entry_points()
        try:
            return self._table[name]
        except KeyError:
            known = ", ".join(sorted(self._table)) or "(none)"
            raise ValueError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}") from None

    def find(self, name: str) -> Any | None:
        """What is registered as ``name``, or None."""
        self._load_entry_points()
        return self._table.get(name)

    def values(self) -> list[Any]:
        """Everything registered, in name order."""
        self._load_entry_points()
        return [self._table[k] for k in sorted(self._table)]

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._table)

    def name_of(self, obj: Any) -> str | None:
        """The name ``obj``'s exact class is registered under (a subclass is not its parent)."""
        self._load_entry_points()
        cls = obj if isinstance(obj, type) else type(obj)
        for k, v in self._table.items():
            if v is cls or getattr(v, "model", None) is cls:
                return k
        return None

    def source(self, name: str) -> str:
        self.get(name)
        return self._sources[name]


PROBES = Registry("memlens.probes", "probe")


def register_probe(name: str):
    """Decorator: register a :class:`memlens.Probe` subclass under ``name``."""
    return PROBES.register(name)


def get_probe(name: str):
    """The probe class registered as ``name``; a ``ValueError`` lists the known ones."""
    return PROBES.get(name)


def list_probes() -> list[str]:
    return PROBES.names()
