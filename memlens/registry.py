"""The two plugin groups, ``memlens.models`` and ``memlens.probes``, gathered in one place for
users (``from memlens.registry import MODELS, get_bundle``).

The registries themselves live where they belong: the generic :class:`~memlens.plugins.Registry`
and the probe group in :mod:`memlens.plugins`; the model group beside
:class:`~memlens.bundle.ModelBundle` in :mod:`memlens.bundle`. Core modules import those directly;
this module sits above both and nothing in the core imports it.

Built-in models and probes are registered through entry points in ``pyproject.toml``, exactly as a
third-party package registers its own; ``register_model`` / ``register_probe`` cover classes defined
in a notebook. A duplicate name raises; a plugin that fails to import warns, naming it, and never
breaks ``import memlens``.
"""

from __future__ import annotations

from memlens.bundle import MODELS, bundle_of, get_bundle, get_model, list_models, register_model
from memlens.plugins import PROBES, Registry, get_probe, list_probes, register_probe

__all__ = [
    "Registry",
    "MODELS",
    "PROBES",
    "register_model",
    "register_probe",
    "get_model",
    "get_bundle",
    "bundle_of",
    "get_probe",
    "list_models",
    "list_probes",
]
