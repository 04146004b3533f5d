"""Model persistence: :func:`save` a model (its registered name, config, weights and each
instance's data recipe) to one checkpoint file, and :func:`load` / :func:`load_with_recipes` it
back, finding its class by registry name.

This sits above the model registry (:mod:`memlens.bundle`), which sits above the model base class
(:mod:`memlens.hooked`): a model does not save itself, so the base class needs no registry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from memlens import io
from memlens.bundle import MODELS, bundle_of
from memlens.hooked import HookedToyModel, require_model

__all__ = ["save", "load", "load_with_recipes", "registered_name"]


def registered_name(model: HookedToyModel) -> str:
    """The name ``model``'s class is registered under; raises if it is not registered."""
    name = MODELS.name_of(model)
    if name is None:
        raise ValueError(
            f"{type(model).__name__} is not registered; register it with "
            "@memlens.register_model(name) so memlens.load can find it"
        )
    return name


def save(
    model: HookedToyModel, path: str | os.PathLike, recipes: Sequence[dict] | None = None
) -> None:
    """Write ``model``'s config (JSON), its weights and, if given, the data recipe of each instance
    (a spec per instance, see :class:`memlens.ModelBundle`) to ``path`` atomically. A checkpoint
    with recipes can be probed and tempered from the CLI."""
    require_model(model)
    name = registered_name(model)
    payload = {
        "model": name,
        "config": json.dumps(model.cfg.to_dict(), sort_keys=True),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if recipes is not None:
        bundle = bundle_of(model)  # complete specs: defaults (and the data version) recorded
        recipes = [bundle.full_spec(r) if bundle.make_task else dict(r) for r in recipes]
        if len(recipes) != model.n_instances:
            raise ValueError(
                f"recipes: {len(recipes)} data recipes for a model with "
                f"n_instances={model.n_instances}; give one per instance"
            )
        payload["recipes"] = json.dumps(io.jsonable(recipes), sort_keys=True)
    io.save_checkpoint(path, payload)


def _model_from_payload(path, payload: dict) -> HookedToyModel:
    name = payload.get("model")
    if not isinstance(name, str):
        raise ValueError(f"{path}: checkpoint has no model name")
    cls = MODELS.get(name).model  # ValueError listing the known models
    try:
        cfg = cls.Config.from_dict(json.loads(payload["config"]))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable config for model {name!r}: {exc}") from exc
    model = cls.from_config(cfg)
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: checkpoint has no weights (state_dict)")
    bad = [
        k for k, v in state.items() if isinstance(v, Tensor) and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise ValueError(f"{path}: weights {bad} hold NaN or inf; refusing to load a broken model")
    try:
        model.load_state_dict(state)
    except (KeyError, RuntimeError) as exc:
        raise ValueError(f"{path}: weights do not fit model {name!r}: {exc}") from exc
    return model


def load(path: str | os.PathLike, device: str | torch.device | None = None) -> HookedToyModel:
    """Load a model written by :meth:`HookedToyModel.save`; its class is found by registry name."""
    device = _device(device)
    model = _model_from_payload(path, io.load_checkpoint(path))
    return model.to(device) if device is not None else model


def _device(device: Any) -> torch.device | None:
    if device is None:
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be a torch device such as 'cpu', got {device!r}") from exc


def load_with_recipes(
    path: str | os.PathLike, device: str | torch.device | None = None
) -> tuple[HookedToyModel, list[dict]]:
    """``(model, recipes)``: the model and each instance's data recipe (a spec; rebuild the data
    with ``memlens.bundle_of(model).data(spec)``). ``recipes`` is empty when none was saved.
    Reads the ``cells`` of checkpoints written by memlens 0.1 sweeps and ``memlens train`` too."""
    device = _device(device)
    payload = io.load_checkpoint(path)
    model = _model_from_payload(path, payload)
    raw = payload.get("recipes", payload.get("cells"))
    try:
        recipes = json.loads(raw) if isinstance(raw, str) else []
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: unreadable data recipes ({exc})") from exc
    if not isinstance(recipes, list) or not all(isinstance(r, dict) for r in recipes):
        raise ValueError(f"{path}: data recipes must be a list of specs, got {recipes!r}")
    for r in recipes:  # written before data versions: memlens 0.1's generator
        r.setdefault("data_version", 1)
    return (model.to(device) if device is not None else model), recipes
