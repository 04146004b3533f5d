"""Probes: plugins that attach to a model's hook points (or read its weights) and return results.

A probe names the hooks it reads, as ``hooks = ("hook_hidden",)`` or as a TransformerLens-style
``names_filter`` (a name, a list of names, or a predicate ``lambda name: name.endswith("post")``).
Inside :func:`probing` it receives the activations of every forward pass through TransformerLens
forward hooks, in the hook layout ``[batch, inst, ...]``; ``result()`` turns what it saw into a
:class:`ProbeResult`. A probe that needs only the weights implements ``read(model)``.

    with memlens.probing(model, name) as (probe,):     # name: a registered probe (memlens list)
        model(train)
    probe.result()

A probe named by string takes arguments as a ``(name, {kwargs})`` pair:

    with memlens.probing(mlp, (name, {"hook": "hook_pre"}), train=train) as (probe,):
        mlp(train.inputs)

Probes that stream over tempered draws derive from :class:`StreamingProbe` (itself a
:class:`Probe`).

A probe owns what it knows about sweeps: whether a sweep runs it by default (``default``), which
models it supports (:meth:`Probe.supports`), and what it adds to a sweep's report
(:meth:`Probe.sweep_report`: summary columns, phase-diagram panels, figures, summary lines). The
core's sweep and report code names no probe and no result field.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Union

from torch import Tensor

from memlens.data import Batch
from memlens.hooked import HookedToyModel
from memlens.io import jsonable
from memlens.plugins import PROBES

__all__ = [
    "Probe",
    "ProbeResult",
    "ProbeSpec",
    "SweepSection",
    "probing",
    "resolve_probe",
    "parse_probe_spec",
    "probe_specs",
    "is_probe_pair",
]

#: how a probe may be named: a registered name, ``(name, {kwargs})``, a class or an instance
ProbeSpec = Union[str, tuple, type, "Probe"]


@dataclasses.dataclass
class ProbeResult:
    """Base of every probe's result dataclass."""

    def to_dict(self) -> dict:
        """JSON-safe: tensors become lists."""
        return jsonable(self)

    def scalars(self) -> dict[str, float]:
        """A few scalar summaries (means over instances), recorded per cell by sweeps."""
        return {}

    def summary(self) -> str:
        return "\n".join(f"{k}: {v:.4g}" for k, v in self.scalars().items()) or repr(self)

    def plot(self, ax=None):
        raise NotImplementedError(f"{type(self).__name__} has no plot")


@dataclasses.dataclass
class SweepSection:
    """What a probe adds to a sweep's report (:meth:`Probe.sweep_report`).

    Attributes:
        columns: full column names (``"<label>.<scalar>"``) shown in ``summary.md``'s tables.
        phase: ``(column, title[, colour-bar label])`` of fractions in [0, 1], drawn as panels of
            ``phase.png``.
        figures: ``{name: figure}``, each written as ``<name>.png``.
        lines: lines of markdown added to ``summary.md``.
    """

    columns: tuple[str, ...] = ()
    phase: tuple[tuple[str, ...], ...] = ()
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    lines: list[str] = dataclasses.field(default_factory=list)


def _filter_fn(names_filter: Any) -> Callable[[str], bool] | None:
    """A TransformerLens ``names_filter`` (None, a name, a list of names, a predicate) as a
    predicate (None: no hooks)."""
    if names_filter is None:
        return None
    if isinstance(names_filter, str):
        return lambda n: n == names_filter
    if isinstance(names_filter, (list, tuple, set, frozenset)):
        wanted = set(names_filter)
        return lambda n: n in wanted
    if callable(names_filter):
        return names_filter
    raise ValueError(
        f"names_filter must be None, a hook name, a list of names or a callable, "
        f"got {names_filter!r}"
    )


class Probe:
    """Base class of every hook probe.

    Class (or instance) attributes:
        hooks: the hook names this probe reads (empty for weight-only probes).
        names_filter: alternatively, a TransformerLens-style filter on hook names.
    State:
        model: the model this probe is attached to (set by :func:`probing` or :meth:`read`).
        acts: ``{hook name: [activation, ...]}`` captured during forward passes.
        train: the training set the probe may use (``Batch``), if given.
    """

    hooks: ClassVar[tuple[str, ...]] = ()
    names_filter: ClassVar[Any] = None
    #: whether a sweep runs this probe when none are named (on the models it supports)
    default: ClassVar[bool] = False
    #: what a model must provide for this probe, said when a sweep skips it (see :meth:`supports`)
    requires: ClassVar[str] = ""

    # -- what the probe knows about models and sweeps (class-level: no instance needed) -------
    @classmethod
    def supports(cls, bundle: Any) -> bool:
        """Whether this probe can run on the models of ``bundle`` (a :class:`memlens.ModelBundle`);
        a sweep's default probes skip, and name, the ones that cannot."""
        return True

    @classmethod
    def sweep_report(cls, view: Any, label: str) -> SweepSection:
        """What this probe adds to a sweep's report. ``view`` is the sweep read once
        (:class:`memlens.sweeps.view.SweepView`: ``config``, ``rows``, ``settings``, ...);
        ``label`` prefixes this probe's columns (``f"{label}.{scalar}"``). Default: nothing."""
        return SweepSection()

    def __init__(self, train: Tensor | Batch | None = None):
        self.model: HookedToyModel | None = None
        self.train = train
        self.acts: dict[str, list[Tensor]] = {}

    @property
    def registered_name(self) -> str:
        return PROBES.name_of(self) or type(self).__name__

    def _names_filter(self) -> Callable[[str], bool] | None:
        # a lambda stored on the class would become a bound method when read through self
        if "names_filter" in vars(self):
            raw = vars(self)["names_filter"]
        else:
            raw = inspect.getattr_static(type(self), "names_filter")
            if isinstance(raw, (staticmethod, classmethod)):
                raw = raw.__func__
            elif inspect.isfunction(raw) and len(inspect.signature(raw).parameters) == 2:
                raw = raw.__get__(self)  # written as a method: def names_filter(self, name)
        return _filter_fn(raw)

    def hook_names(self, model: HookedToyModel) -> list[str]:
        """The hook names this probe attaches to on ``model``; raises on unknown names."""
        known = list(model.hook_dict)
        names = list(self.hooks)
        unknown = [n for n in names if n not in model.hook_dict]
        if unknown:
            raise ValueError(
                f"probe {self.registered_name!r} reads hook(s) {unknown} that "
                f"{type(model).__name__} lacks; its hooks are: {', '.join(known)}"
            )
        pred = self._names_filter()
        if pred is not None:
            names += [n for n in known if pred(n) and n not in names]
        return names

    def capture(self, name: str, act: Tensor) -> None:
        """Called with every activation at a hook this probe reads. Default: keep it."""
        self.acts.setdefault(name, []).append(act.detach())

    def bind(self, model: HookedToyModel) -> None:
        """Attach to ``model``: validate it (hooks, training set) before anything runs."""
        self.hook_names(model)
        if self.train is not None:
            self.train = model.check_batch(self.train)
        self.model = model

    def reset(self) -> None:
        self.acts = {}

    # -- results -------------------------------------------------------------------------------
    def read(self, model: HookedToyModel) -> ProbeResult:
        """Weights-only probes override this; it needs no forward pass."""
        raise NotImplementedError(
            f"probe {self.registered_name!r} reads activations; use it inside memlens.probing()"
        )

    def result(self) -> ProbeResult:
        raise NotImplementedError

    def run(self, model: HookedToyModel, train: Tensor | Batch | None = None) -> ProbeResult:
        """One call: attach to ``model``, run one forward pass over the training set if this probe
        reads hooks (otherwise just ``read`` the weights), and return the result."""
        if train is not None:
            self.train = train
        if not self.hook_names(model):
            self.bind(model)
            return self.read(model)
        if self.train is None:
            raise ValueError(f"probe {self.registered_name!r} reads activations: pass train=")
        self.reset()
        with probing(model, self):
            model(self.train.inputs)
        return self.result()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(hooks={list(self.hooks)})"


def is_probe_pair(p: Any) -> bool:
    """Whether ``p`` is one probe with arguments: ``(name or class, {argument: value})`` (or the
    ``[name, {...}]`` a JSON file holds), rather than a list of probes."""
    return isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[1], Mapping)


def parse_probe_spec(p: Any) -> tuple[Any, dict[str, Any]]:
    """The one parser of a probe spec: ``(what, kwargs)``, where ``what`` is a registered name, a
    class or an instance, from any of those or a ``(what, {argument: value})`` pair."""
    if is_probe_pair(p):
        return p[0], dict(p[1])
    if isinstance(p, (tuple, list)):
        raise ValueError(f"a probe with arguments is a (name, {{argument: value}}) pair, got {p!r}")
    return p, {}


def probe_specs(probes: Any) -> list[Any]:
    """A probe spec or a sequence of them as a list of specs (None: none)."""
    if probes is None:
        return []
    if isinstance(probes, (str, type, Probe)) or is_probe_pair(probes):
        return [probes]
    return list(probes)


def resolve_probe(p: ProbeSpec, **defaults: Any) -> Probe:
    """A probe instance from a registered name, a ``(name or class, {kwargs})`` pair, a class or
    an instance. ``defaults`` (e.g. ``train=``) are passed to constructors the pair leaves out."""
    p, kwargs = parse_probe_spec(p)
    if isinstance(p, Probe):
        if kwargs:
            raise ValueError(
                f"probe arguments {kwargs} need a probe name or class, not an instance"
            )
        return p
    if isinstance(p, str):
        p = PROBES.get(p)  # ValueError listing the known probes
    if not (isinstance(p, type) and issubclass(p, Probe)):
        raise TypeError(
            f"expected a probe name, a (name, kwargs) pair, a Probe subclass or instance, got {p!r}"
        )
    kw = {**defaults, **kwargs}
    params = inspect.signature(p.__init__).parameters
    takes_any = any(v.kind is inspect.Parameter.VAR_KEYWORD for v in params.values())
    unknown = [k for k in kwargs if k not in params and not takes_any]
    if unknown:
        allowed = [k for k in params if k != "self"]
        raise ValueError(
            f"probe {PROBES.name_of(p) or p.__name__!r} takes no argument(s) {unknown}; "
            f"its arguments are: {', '.join(allowed) or 'none'}"
        )
    kw = {k: v for k, v in kw.items() if k in params or takes_any}
    return p(**kw)


@contextlib.contextmanager
def probing(
    model: HookedToyModel, *probes: ProbeSpec, train: Tensor | Batch | None = None
) -> Iterator[tuple[Probe, ...]]:
    """Attach probes (instances, registered names, or ``(name, {kwargs})`` pairs) to ``model`` for
    the duration of the block.

    Yields the probes as a tuple, in the order given. Every probe is validated (its hooks exist,
    its training set fits the model) before any hook is added; all hooks are removed on exit, also
    when the block raises. Contexts nest: an inner ``probing`` removes only its own hooks.
    ``train`` is handed to probes built from names (e.g. the dictionary probe's training set).
    """
    if not isinstance(model, HookedToyModel):
        raise TypeError(f"probing() needs a memlens.HookedToyModel, got {type(model).__name__}")
    if not probes:
        raise ValueError("probing() needs at least one probe (a name or a Probe instance)")
    kw = {} if train is None else {"train": train}
    resolved = [resolve_probe(p, **kw) for p in probes]
    for p in resolved:
        if isinstance(p, StreamingProbe):
            raise TypeError(
                f"probe {type(p).__name__} streams over tempered draws: run it with "
                "memlens.temper(model, data, temperatures, probes=[...]), not memlens.probing"
            )
    fwd_hooks = []
    for p in resolved:
        names = p.hook_names(model)  # raises before anything is attached
        p.bind(model)
        fwd_hooks += [(n, _hook_fn(p, n)) for n in names]
    with model.hooks(fwd_hooks=fwd_hooks):
        yield tuple(resolved)


def _hook_fn(probe: Probe, name: str):
    def fn(act: Tensor, hook=None) -> None:
        probe.capture(name, act)
        return None

    return fn


# ---------------------------------------------------------------- streaming probes (tempering)
__all__ += ["StreamingProbe"]


class StreamingProbe(Probe, abc.ABC):
    """Base class of probes that stream over tempered SGLD draws (``memlens.temper(...,
    probes=[...])``), e.g. circuit survival.

    The sampler drives it in three calls:

    1. ``begin(model, data, temperatures, chains)`` once, with the trained model at w* and its
       training :class:`~memlens.data.Batch`. It returns the probe inputs ``[batch, inst, d_in]``
       to run through the sampled models at every kept draw (or ``None`` for no forward pass).
    2. ``on_draw(acts, draw)`` at every kept draw (after burn-in, every ``probe_every`` draws):
       ``acts[hook]`` is the activation at each hook in :meth:`reads`, already shaped
       ``[temp, chain, *hook layout]``, i.e. ``[temp, chain, batch, inst, ...]`` for a hook laid out
       ``[batch, inst, ...]``. The probe never reshapes the expanded model's instance axis itself.
    3. ``end(tempering)`` once, with the finished :class:`~memlens.sampling.Tempering` (its
       ``diagnostics.diverged`` and ``health`` say which chains and cells to trust).

    ``result()`` returns a :class:`ProbeResult`. Register a streaming probe like any probe
    (``memlens.probes`` entry point or ``@memlens.register_probe``); the sampler accepts it as an
    instance, a class, a registered name, or ``(name, {argument: value})``.
    """

    #: hooks whose activations ``on_draw`` receives (override :meth:`reads` when they depend on the
    #: model, which is known only in ``begin``)
    hooks: ClassVar[tuple[str, ...]] = ()

    def reads(self) -> tuple[str, ...]:
        """The hooks to capture at every draw (called after :meth:`begin`)."""
        return tuple(self.hooks)

    def run(self, model: HookedToyModel, train: Tensor | Batch | None = None) -> ProbeResult:
        """Streaming probes need tempered draws: this says how to get them."""
        name = self.registered_name
        raise ValueError(
            f"probe {name!r} streams over tempered SGLD draws and cannot run on one model: use "
            f"memlens.temper(model, train, probes=[{name!r}]) or `memlens temper`"
        )

    @abc.abstractmethod
    def begin(
        self, model: HookedToyModel, data: Batch, temperatures: Tensor, chains: int
    ) -> Tensor | None:
        """Prepare references at w*; return the probe inputs ``[batch, inst, d_in]`` (or None)."""

    @abc.abstractmethod
    def on_draw(self, acts: dict[str, Tensor], draw: int) -> None:
        """Accumulate one draw: ``acts[hook]`` is ``[temp, chain, *hook layout]``."""

    @abc.abstractmethod
    def end(self, tempering: Any) -> None:
        """Finish with the :class:`~memlens.sampling.Tempering` result (health, divergence)."""

    @abc.abstractmethod
    def result(self) -> ProbeResult:
        """The probe's result (after :meth:`end`)."""
