"""Any model with an instance axis: stacked parameter copies and a ``torch.func``-vmapped forward.

:class:`StackedModel` wraps a plain ``nn.Module`` (a TransformerLens ``TransformerBridge``, or any
module whose forward maps one instance's ``[batch, ...]`` input to its output) and a per-example
loss into a :class:`~memlens.hooked.HookedToyModel`:

* every trainable parameter ``p`` of the module becomes a parameter ``[inst, *p.shape]`` of the
  wrapper (stored under ``p``'s name with ``.`` written ``__``);
* ``forward(x [batch, inst, ...])`` runs the module on each instance's parameters (as
  ``torch.func.functional_call`` does), ``vmap``-ped over the instance axis: one batched pass,
  no loop. So ``memlens.train``, ``memlens.temper`` and ``estimate_llc`` (which expand the
  instance axis into chains x temperatures) run every chain in one step;
* the module's ``HookPoint``\\ s that its forward reaches are the wrapper's hooks, under the
  module's own names (e.g. ``blocks.0.hook_mlp_out``), laid out ``[batch, inst, ...]``. While a
  hook is attached the forward loops over instances outside ``vmap`` (hooks cannot see inside
  it), records each instance's activation and hands the stacked activation to the wrapper's
  hook: probes, ``run_with_cache`` and streaming probes read it. Hooks here *read*: a hook
  that returns a changed activation (an ablation) is refused with a ``NotImplementedError``.

The module itself is a template: its own parameters are never read (every call substitutes the
stacked copies), so ``expand`` and ``select_instances`` share it instead of rebuilding it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from memlens import validate
from memlens.data import Batch, as_batch, instance_generators
from memlens.hooked import HookedToyModel, ToyConfig

__all__ = ["StackedModel", "StackedConfig", "LossFn", "InitFn"]

#: ``loss_fn(output [batch, ...], target [batch, ...]) -> [batch]``: one instance's per-example loss
LossFn = Callable[[Tensor, Tensor], Tensor]
#: ``init(name, like, generator) -> tensor``: instance i's initial value of parameter ``name``
InitFn = Callable[[str, Tensor, torch.Generator], Tensor]


@dataclass(frozen=True)
class StackedConfig(ToyConfig):
    """A stacked model's config: the instance count and the initialisation seed."""


def _hook_points(module: nn.Module) -> dict[str, nn.Module]:
    """The module's hook points by name: its ``hook_dict`` when it has one (a TransformerLens
    bridge lists its aliases there, e.g. ``blocks.0.mlp.hook_post``), else its HookPoint
    submodules."""
    from transformer_lens.hook_points import HookPoint

    named = getattr(module, "hook_dict", None)
    if not isinstance(named, Mapping):
        named = dict(module.named_modules())
    return {n: m for n, m in named.items() if isinstance(m, HookPoint) and n}


def _fired(base: nn.Module, hooks: dict[str, nn.Module], x: Tensor) -> dict[str, nn.Module]:
    """The hooks a forward of ``base`` on ``x`` (one zero point) reaches: a bridge lists hooks
    its configuration never calls (``blocks.0.hook_mlp_in``, ...), which a cache would lack.
    Cached on the template; if the dry run fails, every hook is kept."""
    key = (tuple(x.shape), x.dtype)
    cache = base.__dict__.setdefault("_memlens_fired", {})
    if key not in cache:
        seen: dict[str, Tensor] = {}
        handles = [m.register_forward_hook(_recorder(seen, n)) for n, m in hooks.items()]
        try:
            with torch.no_grad():
                base(x)
            cache[key] = [n for n in hooks if n in seen]
        except (RuntimeError, ValueError, TypeError, IndexError):
            cache[key] = list(hooks)
        finally:
            for h in handles:
                h.remove()
    return {n: hooks[n] for n in cache[key]}


def _trainable(base: nn.Module) -> list[tuple[str, Tensor]]:
    """The template's trainable parameters, listed once per template (with their initial
    values)."""
    if "_memlens_trainable" not in base.__dict__:
        base.__dict__["_memlens_trainable"] = [
            (n, p.detach()) for n, p in base.named_parameters() if p.requires_grad
        ]
    return base.__dict__["_memlens_trainable"]


def _attribute(name: str) -> str:
    """A parameter's attribute name on the wrapper: dots as ``__``, a bridge's
    ``._original_component`` path segments dropped (``layers__0__mlp__fc_in__weight``)."""
    return name.replace("._original_component", "").replace(".", "__")


class StackedModel(HookedToyModel):
    """A plain module and a per-example loss with an instance axis (see the module docstring).

    Args:
        base: the module; ``base(x)`` maps one instance's input ``[batch, *input_shape]``.
        loss_fn: one instance's per-example loss, ``(output, target) -> [batch]``.
        n_instances: instances (copies of every parameter). seed: seeds ``init``.
        input_shape: the shape of one point's input (after the ``[batch, inst]`` axes).
        input_dtype: ``torch.long`` for token ids, or a floating dtype (the parameters').
        init: how instance i's parameters start (``init(name, base_param, generator)``, the
            generator seeded from ``(seed, i)``); None copies ``base``'s parameters to every
            instance.
        width: activation elements per point (sets the row chunk of ``loss``).
    """

    Config = StackedConfig
    input_dims = ("batch", "inst", "input")
    representation_hook = ""

    def __init__(
        self,
        base: nn.Module,
        loss_fn: LossFn,
        n_instances: int = 1,
        *,
        seed: int = 0,
        input_shape: Sequence[int] = (),
        input_dtype: torch.dtype = torch.float32,
        init: InitFn | None = None,
        width: int | None = None,
        cfg: ToyConfig | None = None,
        state: Mapping[str, Tensor] | None = None,
    ):
        if not isinstance(base, nn.Module):
            raise TypeError(f"base must be a torch.nn.Module, got {type(base).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if not isinstance(input_dtype, torch.dtype):
            raise TypeError(f"input_dtype must be a torch.dtype, got {input_dtype!r}")
        shape = tuple(input_shape)
        for s in shape:
            validate.positive_int("input_shape entries", s)
        super().__init__(
            cfg if cfg is not None else self.Config(n_instances=n_instances, seed=seed)
        )
        self.__dict__["_base"] = base  # a template, not a submodule: its parameters are unused
        self.__dict__["_loss_fn"] = loss_fn
        self.input_shape, self.input_dtype = shape, input_dtype
        self._width = int(width) if width is not None else max(1, math.prod(shape))
        self._names: list[tuple[str, str]] = []  # (attribute, the base module's name)
        trainable = _trainable(base)
        if not trainable:
            raise ValueError(f"base {type(base).__name__} has no trainable parameters")
        gens = None if init is None or state is not None else self._generators()
        for name, p in trainable:
            attr = _attribute(name)
            if hasattr(self, attr):
                raise ValueError(f"parameter {name!r} clashes with the wrapper's {attr!r}")
            if state is not None:
                value = torch.empty(self.n_instances, *p.shape, dtype=p.dtype)
            elif init is None:
                value = p.detach().expand(self.n_instances, *p.shape).clone()
            else:
                value = torch.stack([init(name, p.detach(), g).to(p.dtype) for g in gens])
            self.register_parameter(attr, nn.Parameter(value.to(p.device)))
            self._names.append((attr, name))
        dry = torch.zeros(1, *shape, dtype=input_dtype, device=trainable[0][1].device)
        self._base_hooks = _fired(base, _hook_points(base), dry)
        from transformer_lens.hook_points import HookPoint

        self._hooks = {n: HookPoint() for n in self._base_hooks}
        self.setup()
        for n, hp in self._hooks.items():  # names with dots: not submodules, added by hand
            hp.name = n
            self.mod_dict[n] = hp
            self.hook_dict[n] = hp
        if state is not None:
            self.load_state_dict(state)

    def _generators(self) -> list[torch.Generator]:
        return instance_generators(self.cfg.seed, self.n_instances, 100)

    # ---------------------------------------------------------------- shapes and validation
    @property
    def base(self) -> nn.Module:
        """The wrapped module (a template: its own parameters are not the model's)."""
        return self._base

    @property
    def d_in(self) -> int:
        return self.input_shape[-1] if self.input_shape else 1

    @property
    def width(self) -> int:
        return self._width

    def stacked_parameters(self) -> dict[str, Tensor]:
        """``{base parameter name: [inst, ...] parameter}``."""
        return {name: getattr(self, attr) for attr, name in self._names}

    def check_input(self, x: Tensor) -> None:
        want = (self.n_instances, *self.input_shape)
        if not isinstance(x, Tensor) or x.ndim != 1 + len(want) or tuple(x.shape[1:]) != want:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{type(self).__name__} expects input of shape [batch, inst={self.n_instances}"
                f"{''.join(f', {s}' for s in self.input_shape)}], got {got}"
            )
        if x.is_floating_point() != self.input_dtype.is_floating_point:
            raise ValueError(
                f"{type(self).__name__} expects {self.input_dtype} inputs, got {x.dtype}"
            )

    def check_batch(self, batch: Tensor | Batch, name: str = "data") -> Batch:
        """Validate a batch (shape, dtype, finiteness, instance count); return it as a Batch."""
        batch = as_batch(batch)
        if not isinstance(batch.inputs, Tensor):
            raise ValueError(f"{name} inputs must be a tensor, got {type(batch.inputs).__name__}")
        if batch.inputs.ndim >= 2 and batch.inputs.shape[1] != self.n_instances:
            raise ValueError(
                f"instance-count mismatch: the data has {batch.inputs.shape[1]} instances "
                f"(axis 1 of [batch, inst, ...]) but the model has n_instances={self.n_instances}"
            )
        if self.input_dtype.is_floating_point and batch.inputs.is_floating_point():
            if batch.inputs.dtype != self.input_dtype:
                batch = dataclasses.replace(batch, inputs=batch.inputs.to(self.input_dtype))
        validate.rows(name, batch)
        mask = batch.mask()
        for what, t in (("inputs", batch.inputs), ("targets", batch.targets)):
            if t is not None and t.is_floating_point():
                validate.finite_tensor(f"{name} {what}", t, mask)
        self.check_input(batch.inputs)
        if batch.targets is not None and tuple(batch.targets.shape[:2]) != tuple(
            batch.inputs.shape[:2]
        ):
            raise ValueError(
                f"{name} targets must start [batch, inst] = {tuple(batch.inputs.shape[:2])}, "
                f"got {tuple(batch.targets.shape)}"
            )
        self._check_targets(batch)
        return batch

    # ---------------------------------------------------------------- forward and loss
    def _call(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """The template on ``params`` (what ``torch.func.functional_call`` does, but writing the
        owners' ``_parameters`` directly: a bridge's components redirect ``setattr``, so
        ``functional_call`` leaves the substituted tensors behind in it)."""
        slots = self._slots()
        saved = [owner._parameters[leaf] for owner, leaf in slots.values()]
        try:
            for name, (owner, leaf) in slots.items():
                owner._parameters[leaf] = params[name]
            return self._base(x)
        finally:
            for (owner, leaf), old in zip(slots.values(), saved, strict=True):
                owner._parameters[leaf] = old

    def _slots(self) -> dict[str, tuple[nn.Module, str]]:
        """``{parameter name: (owning module, attribute)}`` of the template (cached on it)."""
        base = self._base
        if "_memlens_slots" not in base.__dict__:
            slots = {}
            for name, _ in _trainable(base):
                prefix, _, leaf = name.rpartition(".")
                slots[name] = (base.get_submodule(prefix) if prefix else base, leaf)
            base.__dict__["_memlens_slots"] = slots
        return base.__dict__["_memlens_slots"]

    def _hooked(self) -> list[str]:
        return [n for n, hp in self._hooks.items() if hp._forward_hooks]

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        names = self._hooked()
        if names:
            return self._forward_hooked(x, names)
        return torch.func.vmap(self._call, in_dims=(0, 1), out_dims=1)(self.stacked_parameters(), x)

    def _forward_hooked(self, x: Tensor, names: list[str]) -> Tensor:
        """One instance at a time outside ``vmap``; each hook sees the stacked activation."""
        params = self.stacked_parameters()
        acts: dict[str, list[Tensor]] = {n: [] for n in names}
        outs = []
        for i in range(self.n_instances):
            seen: dict[str, Tensor] = {}
            handles = [self._base_hooks[n].register_forward_hook(_recorder(seen, n)) for n in names]
            try:
                outs.append(self._call({k: v[i] for k, v in params.items()}, x[:, i]))
            finally:
                for h in handles:
                    h.remove()
            for n in seen:
                acts[n].append(seen[n])
        for n in seen:  # in the order the forward reached them
            stacked = torch.stack(acts[n], 1)
            if self._hooks[n](stacked) is not stacked:
                raise NotImplementedError(
                    f"a hook on {n!r} returned a changed activation: hooks on a "
                    f"{type(self).__name__} read activations, they cannot ablate or patch them"
                )
        return torch.stack(outs, 1)

    def run_instance(
        self, i: int, x: Tensor, fwd_hooks: Sequence[tuple[str, Callable]] = ()
    ) -> Tensor:
        """Instance ``i`` alone on ``x [batch, *input_shape]`` (no instance axis), with hooks
        ``(name, fn(act, hook))`` that may change the activation (ablations, patching), in the
        module's own layout. The hooks are removed on return."""
        validate.integer("i (the instance)", i, 0, self.n_instances - 1)
        unknown = [n for n, _ in fwd_hooks if n not in self._base_hooks]
        if unknown:
            raise ValueError(f"unknown hook(s) {unknown}; hooks: {list(self._base_hooks)}")
        handles = [
            self._base_hooks[n].register_forward_hook(
                lambda mod, inp, out, fn=fn, n=n: fn(out, hook=self._hooks[n])
            )
            for n, fn in fwd_hooks
        ]
        try:
            params = {k: v[i] for k, v in self.stacked_parameters().items()}
            return self._call(params, x)
        finally:
            for h in handles:
                h.remove()

    def per_example_loss(self, batch: Batch) -> Tensor:
        """``[batch, inst]``: ``loss_fn`` of each instance's output and target, vmapped."""
        target = batch.target
        if self._hooked():
            out = self(batch.inputs)
            return torch.func.vmap(self._loss_fn, in_dims=(1, 1), out_dims=1)(out, target)

        def one(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
            return self._loss_fn(self._call(params, x), y)

        return torch.func.vmap(one, in_dims=(0, 1, 1), out_dims=1)(
            self.stacked_parameters(), batch.inputs, target
        )

    # ---------------------------------------------------------------- instances and devices
    def with_instances(self, n: int, state: dict[str, Tensor]) -> StackedModel:
        """A model of this class with ``n`` instances holding ``state``, sharing the template."""
        new = type(self).__new__(type(self))
        StackedModel.__init__(
            new,
            self._base,
            self._loss_fn,
            cfg=dataclasses.replace(self.cfg, n_instances=n),
            input_shape=self.input_shape,
            input_dtype=self.input_dtype,
            width=self._width,
            state=state,
        )
        new._copy_extras(self)
        return new.to(self.device)

    def _copy_extras(self, other: StackedModel) -> None:
        """Subclasses copy attributes their ``__init__`` sets besides the stacked parameters."""

    def _apply(self, fn: Callable[..., Any], *args: Any, **kw: Any):
        self._base._apply(fn, *args, **kw)  # its buffers (masks, tables) follow the model
        return super()._apply(fn, *args, **kw)


def _recorder(seen: dict[str, Tensor], name: str) -> Callable[..., None]:
    def record(module: nn.Module, inputs: Any, output: Tensor) -> None:
        seen[name] = output

    return record
