"""``ModelBundle``: everything the core knows about one kind of model, registered as one plugin.

The core never names a model. Sweeps, reports, the quickstart, the CLI and the dictionary probe
look a model up in the ``memlens.models`` registry and find its bundle:

* ``model``: the :class:`~memlens.hooked.HookedToyModel` subclass (its ``Config``, its
  ``representation_hook``, its ``circuits``);
* ``make_task`` and ``task_defaults``: the data recipe. A *spec* is a flat JSON-safe dict of task
  keys (``n_features``, ``sparsity``, ``normalize``, ``n_test``, and the plugin's own), model fields
  (``model_fields``, e.g. ``d_hidden``) and the cell's ``T`` and ``seed``. ``make_task(spec)``
  turns it into a one-instance :class:`~memlens.data.Task`, so any checkpoint that stores its spec
  can rebuild its training set;
* ``presets``: named ``{"grid", "task", "train"}`` settings for sweeps (``smoke``, ``cpu``, ...);
* ``title`` and ``loss_units`` for figures and tables; ``baseline(batch)``, the per-instance loss
  of the best constant predictor, for judging whether a loss means anything;
* ``read_dictionary(model, train, options)``: reads the memorised lookup table off the weights.

A third-party package registers its own bundle through the ``memlens.models`` entry-point group,
exactly as the built-in ones do (``bottleneck = "toy_models.bottleneck:BUNDLE"``). Registering a
bare model class still works (``@memlens.register_model("name")``); it can be trained, probed and
tempered, and the core says what to add where a data recipe is needed.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memlens import validate
from memlens.hooked import HookedToyModel
from memlens.planted import PLANT_KEYS, Planting
from memlens.plugins import Registry
from memlens.training_config import TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from memlens.data import Batch, Task

__all__ = [
    "ModelBundle",
    "Preset",
    "GENERIC_TASK_KEYS",
    "MODELS",
    "register_model",
    "get_model",
    "get_bundle",
    "bundle_of",
    "bundles_with",
    "list_models",
]

#: task keys every sparse-feature recipe understands, with their defaults
GENERIC_TASK_KEYS: dict[str, Any] = {
    "n_features": 100,
    "sparsity": 0.99,
    "normalize": True,
    "n_test": 2048,
    "data_version": 2,  # the sparse-feature generator (memlens.data.DATA_VERSION); 1 = memlens 0.1
    **PLANT_KEYS,  # planted memories (memlens.planted), for every model's recipe (issue 18)
}


@dataclass(frozen=True, eq=False)
class Preset(Mapping):
    """A named sweep setting of a model: ``grid`` (axis -> values, with ``T``), ``task`` (fixed
    spec keys) and ``train`` (fields of :class:`~memlens.training_config.TrainConfig`). Checked
    when its bundle is made; reads as the mapping ``{"grid", "task", "train"}`` too."""

    grid: Mapping[str, Any]
    task: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("grid", "task", "train"):
            if not isinstance(getattr(self, name), Mapping):
                raise ValueError(
                    f"a preset's {name} must be a mapping, got {getattr(self, name)!r}"
                )
        if "T" not in self.grid:
            raise ValueError(f"a preset's grid needs T (training-set sizes), got {dict(self.grid)}")
        known = {f.name for f in dataclasses.fields(TrainConfig)} - {"seed"}
        unknown = sorted(set(self.train) - known)
        if unknown:
            raise ValueError(
                f"a preset's train has unknown setting(s) {unknown}; known: {sorted(known)}"
            )
        if "steps" in self.train:
            TrainConfig.of(self.train)  # its values, by the one check of training settings

    @classmethod
    def of(cls, value: Preset | Mapping[str, Any]) -> Preset:
        if isinstance(value, Preset):
            return value
        if not isinstance(value, Mapping) or set(value) - {"grid", "task", "train"}:
            raise ValueError(f"a preset is a mapping with grid, task and train, got {value!r}")
        return cls(**value)

    def __getitem__(self, key: str) -> Mapping[str, Any]:
        if key not in ("grid", "task", "train"):
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self):
        return iter(("grid", "task", "train"))

    def __len__(self) -> int:
        return 3


@dataclass(frozen=True)
class ModelBundle:
    """One model plugin: the model class and what the core needs to train, sweep and read it."""

    model: type
    make_task: Callable[[Mapping[str, Any]], Task] | None = None
    task_defaults: Mapping[str, Any] = field(default_factory=dict)
    model_fields: tuple[str, ...] = ()
    presets: Mapping[str, Preset | Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    title: str = ""
    loss_units: str = "loss per point"
    baseline: Callable[[Batch], Any] | None = None
    read_dictionary: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        try:  # every preset typed and checked once, when the plugin is made
            presets = {k: Preset.of(v) for k, v in dict(self.presets).items()}
        except (ValueError, TypeError) as exc:
            raise ValueError(f"model {self.model.__name__}: bad preset: {exc}") from exc
        object.__setattr__(self, "presets", presets)

    # -------------------------------------------------------------------------- derived
    @property
    def name(self) -> str:
        return MODELS.name_of(self.model) or self.model.__name__

    @property
    def representation_hook(self) -> str:
        """The hook holding the learned representation (what dimensionality reads by default)."""
        return self.model.representation_hook

    @property
    def display_title(self) -> str:
        return self.title or self.name

    def _need_task(self, what: str) -> None:
        if self.make_task is None:
            raise ValueError(
                f"model {self.name!r} has no data recipe, so it cannot {what}: register a "
                "memlens.ModelBundle with make_task= and task_defaults= for it"
            )

    def spec_keys(self) -> dict[str, Any]:
        """Every key a spec may set (task keys and model fields), with its default."""
        self._need_task("build data from a spec")
        fields = {f.name: f.default for f in dataclasses.fields(self.model.Config)}
        return {
            **GENERIC_TASK_KEYS,
            **self.task_defaults,
            **{k: fields[k] for k in self.model_fields},
        }

    def full_spec(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """``spec`` with every missing key filled by its default; unknown keys raise."""
        keys = self.spec_keys()
        unknown = sorted(set(spec) - set(keys) - {"T", "seed"})
        if unknown:
            raise ValueError(
                f"unknown setting(s) {unknown} for model {self.name!r}; known: {sorted(keys)}"
            )
        validate.spec_values(spec, keys)  # kinds and ranges: no silent coercion
        return {**keys, **spec}

    # -------------------------------------------------------------------------- building
    def task(self, spec: Mapping[str, Any]) -> Task:
        """The one-instance data recipe of ``spec``."""
        self._need_task("build data")
        spec = self.full_spec(spec)
        return self.make_task(spec).plant(Planting.from_spec(spec))  # issue 18: planted points

    def build(self, spec: Mapping[str, Any]) -> HookedToyModel:
        """The model of ``spec`` alone (``n_instances=1``), initialised from ``spec['seed']``."""
        spec = self.full_spec(spec)
        kw = {k: spec[k] for k in self.model_fields}
        return self.model(**self.task(spec).model_kwargs(), **kw, seed=int(spec.get("seed", 0)))

    def data(self, spec: Mapping[str, Any]) -> tuple[Batch, Batch]:
        """``(train, test)`` of ``spec``: ``T`` training points and ``n_test`` fresh test points."""
        spec = self.full_spec(spec)
        if "T" not in spec:
            raise ValueError("a data spec needs T, the number of training points")
        return self.task(spec).split(
            int(spec["T"]), seed=int(spec.get("seed", 0)), n_test=int(spec["n_test"])
        )

    def preset(self, name: str) -> dict:
        """``{"grid", "task", "train"}`` of a named :class:`Preset`, as a deep-copied dict."""
        if name not in self.presets:
            known = sorted(self.presets) or "none"
            raise ValueError(f"unknown preset {name!r} for model {self.name!r}; known: {known}")
        return copy.deepcopy({k: dict(v) for k, v in self.presets[name].items()})


# ------------------------------------------------------------------------------ the model registry
def _as_bundle(obj: Any) -> ModelBundle:
    if isinstance(obj, ModelBundle):
        return obj
    if isinstance(obj, type) and issubclass(obj, HookedToyModel):
        return ModelBundle(model=obj)
    raise TypeError(
        f"a model plugin must be a memlens.ModelBundle or a HookedToyModel subclass, got {obj!r}"
    )


#: the ``memlens.models`` plugin group: name -> :class:`ModelBundle`
MODELS = Registry("memlens.models", "model", wrap=_as_bundle)


def register_model(name: str):
    """Decorator: register a :class:`memlens.HookedToyModel` subclass (or call it on a
    :class:`memlens.ModelBundle`) under ``name``. Returns what it was given."""
    return MODELS.register(name)


def get_model(name: str):
    """The model class registered as ``name``; a ``ValueError`` lists the known ones."""
    return MODELS.get(name).model


def get_bundle(name: str) -> ModelBundle:
    """The :class:`ModelBundle` registered as ``name``; a ``ValueError`` lists the known ones."""
    return MODELS.get(name)


def bundle_of(model: Any) -> ModelBundle:
    """The bundle of a model: a registered name is looked up (``bundle_of(name)``); a model
    instance or class gets its own class's bundle, else its nearest registered ancestor's (so a
    subclass inherits its parent's data recipe and dictionary reader), else a bare bundle of its
    class (trainable and probeable, with no data recipe). Anything else is refused."""
    if isinstance(model, str):
        return get_bundle(model)  # ValueError listing the known models
    cls = model if isinstance(model, type) else type(model)
    if not issubclass(cls, HookedToyModel):
        raise TypeError(
            f"bundle_of needs a registered model name, a HookedToyModel or its class, got {model!r}"
        )
    bundles = MODELS.values()
    for klass in cls.__mro__:
        for b in bundles:
            if b.model is klass:
                return b
    return ModelBundle(model=cls)


def bundles_with(preset: str, needed_by: str | None = None) -> list[ModelBundle]:
    """Registered bundles that define ``preset``, in name order. With ``needed_by`` (what needs
    one, in words), a ``ValueError`` saying so when none does."""
    found = [b for b in map(get_bundle, MODELS.names()) if preset in b.presets]
    if not found and needed_by is not None:
        raise ValueError(
            f"{needed_by} needs a registered model with a {preset!r} preset; none has one "
            "(memlens list shows each model's presets)"
        )
    return found


def list_models() -> list[str]:
    return MODELS.names()
