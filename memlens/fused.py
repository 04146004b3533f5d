"""The fused training step: a model that computes its losses and gradients in one pass.

A model opts in by defining

    fused_loss_and_grads(batch: Batch, rows: Tensor | None = None)
        -> tuple[Tensor, dict[str, Tensor]] | None

returning the per-instance losses ``[inst]`` (exactly what ``model.loss`` gives) and the gradient
of their sum for every parameter, by name; ``rows`` (``[b, inst]``), when given, means the step's
batch is ``batch.gather(rows)``, which lets a model gather from data it has already prepared. It
returns ``None`` for a batch it cannot handle, and that step runs eagerly.

:func:`fused_step` decides once per training run whether the fused step may be used: on the CPU,
with float32 parameters, with no hook attached anywhere (hooks must see every activation, and only
the eager forward produces them), only while the model's class has not overridden ``forward``,
``per_example_loss`` or ``loss`` below the class that defines the fused step, and unless
``MEMLENS_COMPILE=0`` (see :mod:`memlens.native`) switches fused paths off.

Off the CPU (a CUDA model), where the fused kernels do not run, :func:`graph_step` compiles the
model's eager loss with ``torch.compile`` (its backward too), so a step is a few generated kernels
instead of one dispatch per operation; ``MEMLENS_GRAPH_STEP=1`` uses it on the CPU as well, ``=0``
(or ``MEMLENS_COMPILE=0``) never. The compiled loss is the eager maths: the same numbers to float
rounding.

Fused steps reuse what they derive from a fixed training set (a sparse copy, an instance-major
copy) through :class:`DerivedCache`, keyed on the tensor's identity and version.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn.modules import module as nn_module

from memlens.data import Batch
from memlens.native import COMPILE_ENV, compile_enabled, warn_fallback

__all__ = [
    "METHOD",
    "Rows",
    "fused_step",
    "graph_step",
    "GRAPH_ENV",
    "hooks_attached",
    "DerivedCache",
    "instance_major",
    "row_counts",
    "blocks",
    "gather_instance_major",
    "BLOCK_ELEMENTS",
]

BLOCK_ELEMENTS = 2**19  # activation elements per block of a blocked step (2 MB of float32)

METHOD = "fused_loss_and_grads"
FusedStep = Callable[..., "tuple[Tensor, dict[str, Tensor]] | None"]


@dataclass
class Rows:
    """A minibatch given as rows of a full training set: instance ``i`` takes ``idx[:, i]``."""

    full: Batch
    idx: Tensor

    def gather(self) -> Batch:
        """The minibatch itself (what the eager step trains on)."""
        return self.full.gather(self.idx)


def hooks_attached(model: torch.nn.Module) -> bool:
    """True if any forward/backward hook (global, on a module or on a parameter) is attached."""
    for name in (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    ):
        if getattr(nn_module, name, None):
            return True
    for mod in model.modules():
        for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
            if getattr(mod, name, None):
                return True
        if getattr(mod, "_backward_pre_hooks", None):
            return True
    for p in model.parameters():
        if getattr(p, "_backward_hooks", None) or getattr(p, "_post_accumulate_grad_hooks", None):
            return True
    return False


GRAPH_ENV = "MEMLENS_GRAPH_STEP"


def graph_step(model: torch.nn.Module) -> Callable[[Tensor | Batch], Tensor] | None:
    """``model.loss`` compiled with ``torch.compile`` for a training run, or None (use the eager
    loss): off the CPU by default (``MEMLENS_GRAPH_STEP`` unset or ``auto``), everywhere with
    ``1``, never with ``0`` or ``MEMLENS_COMPILE=0``; never while a hook is attached (hooks must
    run as written) or for a model without parameters."""
    mode = os.environ.get(GRAPH_ENV, "auto").strip().lower()
    if mode in ("0", "false", "no", "off") or not compile_enabled():
        return None
    params = list(model.parameters())
    if not params or hooks_attached(model):
        return None
    if mode == "auto" and all(p.device.type == "cpu" for p in params):
        return None
    # dynamic shapes: one compile serves every training-set size and every model of the class
    # (a sweep trains one model per packed group; per-shape graphs would hit torch's recompile
    # limit of 8 and fall back to the eager step)
    compiled = torch.compile(model.loss, dynamic=True)
    failed = False

    def loss(batch: Tensor | Batch) -> Tensor:
        nonlocal failed
        if not failed:
            try:
                return compiled(batch)
            except Exception as exc:  # noqa: BLE001 (any compiler failure: the eager loss)
                failed = True
                warn_fallback(
                    f"torch.compile could not compile {type(model).__name__}.loss "
                    f"({type(exc).__name__}: {str(exc)[:200]})"
                )
        return model.loss(batch)

    return loss


def _owner(cls: type, attr: str) -> type | None:
    for c in cls.__mro__:
        if attr in c.__dict__:
            return c
    return None


def fused_step(model: torch.nn.Module) -> FusedStep | None:
    """The model's fused step if it may be used for this training run, else None (train eagerly).

    Warns once per process when ``MEMLENS_COMPILE=0`` turns an available fused step off.
    """
    method = getattr(model, METHOD, None)
    if method is None:
        return None
    cls = type(model)
    owner = _owner(cls, METHOD)
    for attr in ("forward", "per_example_loss", "loss"):
        if getattr(cls, attr, None) is not getattr(owner, attr, None):
            return None  # a subclass changed the maths; only the eager path knows it
    params = list(model.parameters())
    if not params or any(p.device.type != "cpu" or p.dtype != torch.float32 for p in params):
        return None
    if hooks_attached(model):
        return None
    if not compile_enabled():
        warn_fallback(f"{COMPILE_ENV}=0 switches the fused training step off")
        return None
    return method


class DerivedCache:
    """Remembers one value derived from a tensor, for as long as that tensor lives unmodified.

    The key is the tensor object itself (held weakly) and its version counter, so an in-place
    change, or a new tensor at the same address, is a miss.
    """

    def __init__(self) -> None:
        self._ref: weakref.ref | None = None
        self._version = -1
        self._value: Any = None

    def get(self, t: Tensor, make: Callable[[], Any]) -> Any:
        """``make()``'s value for ``t``, computed once while ``t`` lives unmodified."""
        if self._ref is not None and self._ref() is t and self._version == t._version:
            return self._value
        self._ref, self._value = None, None  # free the old value before making the new one
        value = make()
        self._ref = weakref.ref(t, self._drop)  # the value dies with its tensor
        self._version, self._value = t._version, value
        return value

    def _drop(self, ref: weakref.ref) -> None:
        if ref is self._ref:
            self._ref, self._value = None, None


def instance_major(t: Tensor, cache: DerivedCache | None = None) -> Tensor:
    """``t`` ``[batch, inst, ...]`` as a contiguous ``[inst, batch, ...]`` tensor (cached)."""

    def make() -> Tensor:
        return t.transpose(0, 1).contiguous()

    return make() if cache is None else cache.get(t, make)


def row_counts(batch: Batch) -> Tensor:
    """``[inst]`` int64 rows each instance uses: its ``lengths`` (clamped to the batch), or all."""
    n = len(batch)
    if batch.lengths is None:
        return torch.full((batch.n_instances,), n, dtype=torch.long)
    return batch.lengths.to("cpu", torch.long).clamp(0, n)


def blocks(
    n_instances: int, n_rows: int, width: int, elements: int | None = None
) -> Iterator[tuple[slice, slice]]:
    """``(instances, rows)`` slices covering ``[n_instances, n_rows]`` in blocks of about
    ``elements`` activations of ``width``: whole instances while they fit, else row ranges.

    The default is :data:`BLOCK_ELEMENTS` on one thread, 4x that on several: each torch op ends
    in a barrier across threads, and on a busy machine fewer, larger ops stall far less (the MLP
    block's benchmark step, 2 threads, load 10: 1.9 s with 2**19, 0.95 s with 2**21)."""
    if elements is None:
        elements = BLOCK_ELEMENTS * (4 if torch.get_num_threads() > 1 else 1)
    per_instance = max(1, n_rows * width)
    group = max(1, min(n_instances, elements // per_instance))
    step = n_rows if group > 1 else max(1, min(n_rows, elements // max(1, width)))
    for i0 in range(0, n_instances, group):
        for r0 in range(0, n_rows, step):
            yield slice(i0, min(n_instances, i0 + group)), slice(r0, min(n_rows, r0 + step))


def gather_instance_major(full: Tensor, rows: Tensor) -> Tensor:
    """``[inst, b, ...]``: rows ``rows[:, i]`` of instance ``i`` of an instance-major ``full``."""
    idx = rows.t().to(full.device)
    idx = idx.view(*idx.shape, *([1] * (full.ndim - 2))).expand(-1, -1, *full.shape[2:])
    return torch.gather(full, 1, idx)
