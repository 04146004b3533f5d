"""The driver that runs :class:`~memlens.probe.StreamingProbe` s over tempered draws.

At every kept draw it runs each probe's inputs through the expanded model (all temperatures x
chains x instances at once), captures the hooks the probe reads, and hands them over reshaped from
the expanded ``[batch, temps*chains*inst, ...]`` to ``[temp, chain, batch, inst, ...]``. Hooks live
only inside that forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from memlens.data import Batch
from memlens.hooked import HookedToyModel
from memlens.plugins import PROBES
from memlens.probe import Probe, StreamingProbe, parse_probe_spec, probe_specs

__all__ = ["resolve_streaming", "ProbeDriver"]

ProbeSpec = str | StreamingProbe | type | tuple


def _build(p: Any, kwargs: dict) -> StreamingProbe:
    if isinstance(p, str):
        p = PROBES.get(p)  # ValueError listing the known probes
    if isinstance(p, StreamingProbe):
        if kwargs:
            raise ValueError(
                f"probe arguments {kwargs} need a probe name or class, not an instance"
            )
        return p
    if isinstance(p, type) and issubclass(p, StreamingProbe):
        try:
            return p(**kwargs)
        except TypeError as exc:
            raise ValueError(f"bad arguments {kwargs} for probe {p.__name__}: {exc}") from None
    cls = p if isinstance(p, type) else type(p)
    name = PROBES.name_of(cls) or cls.__name__  # the registered name a user typed, if any
    if (isinstance(p, type) and issubclass(p, Probe)) or isinstance(p, Probe):
        raise ValueError(
            f"probe {name} reads one model's hooks and cannot stream over tempering draws (it is "
            "not a memlens.probe.StreamingProbe); run it with memlens.probing instead"
        )
    raise TypeError(f"expected a streaming probe name, class or instance, got {p!r}")


def resolve_streaming(probes: ProbeSpec | Sequence[ProbeSpec]) -> list[StreamingProbe]:
    """Streaming probe instances from names, classes, instances or ``(name, {arg: value})``."""
    out = [_build(*parse_probe_spec(p)) for p in probe_specs(probes)]
    names = [p.registered_name for p in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"probe(s) {dup} given twice; results are looked up by name")
    return out


def _keeper(store: dict[str, Tensor]):
    def keep(act: Tensor, hook) -> None:
        store[hook.name] = act.detach()

    return keep


class ProbeDriver:
    """Runs streaming probes at every kept draw; see the module docstring."""

    def __init__(self, probes: list[StreamingProbe]):
        self.probes = probes
        self._inputs: list[Tensor | None] = []
        self._hooks: list[tuple[str, ...]] = []

    def __bool__(self) -> bool:
        return bool(self.probes)

    def begin(self, model: HookedToyModel, data: Batch, temperatures: Tensor, chains: int) -> None:
        self.temps, self.chains, self.n_inst = len(temperatures), chains, model.n_instances
        copies = self.temps * chains
        self._inputs, self._hooks = [], []
        for p in self.probes:
            x = p.begin(model, data, temperatures.clone(), chains)
            hooks = tuple(p.reads()) if x is not None else ()
            unknown = [h for h in hooks if h not in model.hook_dict]
            if unknown:
                raise ValueError(
                    f"probe {p.registered_name!r} reads hook(s) {unknown} that "
                    f"{type(model).__name__} lacks; its hooks are: {', '.join(model.hook_dict)}"
                )
            if x is not None:
                model.check_input(x)
                x = x.to(model.device).repeat(1, copies, *([1] * (x.ndim - 2)))
            self._inputs.append(x)
            self._hooks.append(hooks)

    def _shape(self, act: Tensor) -> Tensor:
        """``[batch, temps*chains*inst, ...]`` -> ``[temp, chain, batch, inst, ...]``."""
        a = act.reshape(act.shape[0], self.temps, self.chains, self.n_inst, *act.shape[2:])
        return a.movedim(0, 2)

    def on_draw(self, expanded: HookedToyModel, draw: int) -> None:
        for p, x, hooks in zip(self.probes, self._inputs, self._hooks, strict=True):
            acts: dict[str, Tensor] = {}
            if x is not None and hooks:
                fwd = [(h, _keeper(acts)) for h in hooks]
                with torch.no_grad(), expanded.hooks(fwd_hooks=fwd):
                    expanded(x)
            p.on_draw({h: self._shape(a) for h, a in acts.items()}, draw)

    def end(self, tempering: Any) -> dict[str, StreamingProbe]:
        for p in self.probes:
            p.end(tempering)
        return {p.registered_name: p for p in self.probes}
