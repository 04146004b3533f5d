"""Fused SGLD: a model that advances the sampler's flat buffer ``W [E, P]`` itself, in a kernel.

The torch step (:mod:`memlens.sampling.sgld`) costs a forward, a backward and a few whole-buffer
ops per step: for a toy model that is about 1 ms of dispatch against microseconds of arithmetic.
A model opts in to fused steps by defining

    sgld_kernel(data: Batch, batch_size: int | None) -> SGLDKernel | None

for copies of its own instances (row ``e`` of ``W`` is a copy of instance ``e % n_instances``,
its parameters in ``parameters()`` order, flattened), returning None where its kernel does not
apply. ``SGLDKernel.losses(W, batch)`` gives every row's loss ``[E]`` on a batch of the model's
instances (None: it cannot), and ``SGLDKernel.advance(W, W0, M, eps, nbeta, gamma, noise, idx)``
performs, in place, for
``k < K = noise.shape[0]`` and every row ``e``,

    w ← w − (ε_e/2) M_e ⊙ (nβ_e ∇L(w) + γ (w − w*)) + √ε_e · √M_e ⊙ η_k,e

(``M`` None: all ones), where ``L`` is the loss on minibatch ``idx[k, e]`` (rows of the flattened
``[T * inst]`` training set, the sampler's numbering) or on the full set (``idx`` None), and
returns the losses ``[K, E]`` at the weights before each step. ``η`` is the noise block as given:
the sampler passes its Leimkuhler-Matthews noise (ξ_{k−1} + ξ_k)/2 (see :mod:`.sgld`), so the
kernel needs no state of its own. The noise and the indices come
from the sampler's own random streams, so a fused run follows the same trajectory as the torch
step, to float rounding.

:func:`stepper` decides once per sampler run whether fused steps may be used: on the CPU, with
float32 parameters, no hook attached anywhere (hooks must see every activation), only while the
model's class has not overridden ``forward``, ``per_example_loss`` or ``loss`` below the class
that defines the kernel, and unless ``MEMLENS_COMPILE=0``. Everything the sampler does between
steps (evaluations, probes at draws, kept draws, row swaps) reads ``W`` as before, because the
kernel writes into it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from memlens.data import Batch
from memlens.fused import hooks_attached
from memlens.native import compile_enabled
from memlens.sampling.random_streams import MinibatchRows, minibatch_rows, pair_noise

__all__ = ["METHOD", "SGLDKernel", "Stepper", "stepper", "attach", "advance", "eval_loss"]

METHOD = "sgld_kernel"


@runtime_checkable
class SGLDKernel(Protocol):
    def advance(self, W: Tensor, W0: Tensor, M: Tensor | None, eps: Tensor, nbeta: Tensor,
                gamma: float, noise: Tensor, idx: Tensor | tuple | None) -> Tensor: ...  # fmt: skip

    def losses(self, W: Tensor, batch: Batch) -> Tensor | None: ...


class Stepper:
    """Fused steps for one sampler run: the fixed per-row settings, and the buffers."""

    def __init__(self, kernel: SGLDKernel, W: Tensor, W0: Tensor, eps: Tensor, nbeta: Tensor,
                 gamma: float, M: Tensor | None = None):  # fmt: skip
        E = W.shape[0]
        self.kernel, self.W, self.W0, self.gamma = kernel, W, W0, float(gamma)
        self.eps = eps.detach().to("cpu", torch.float32).reshape(E).contiguous()
        self.nbeta = nbeta.detach().to("cpu", torch.float32).reshape(E).contiguous()
        self.M = None if M is None else M.detach().to(torch.float32).contiguous()

    def advance(self, noise: Tensor, idx: Tensor | tuple | None) -> Tensor:
        """``noise.shape[0]`` steps (noise ``[K, E, P]``; minibatch rows ``[K, E, b]``, or
        ``(picks, s0)``: the rows :class:`~memlens.sampling.random_streams.MinibatchRows` picks
        for steps ``s0, s0 + 1, ...``, which the kernel computes itself; or None for full batch);
        the losses ``[K, E]``."""
        return self.kernel.advance(
            self.W, self.W0, self.M, self.eps, self.nbeta, self.gamma, noise, idx
        )

    def loss(self, batch: Batch) -> Tensor | None:
        """Every row's loss ``[E]`` on ``batch`` (of the model's own instances) at the current
        weights, or None where the kernel cannot read it (then evaluate eagerly)."""
        return self.kernel.losses(self.W, batch)

    def step(self, noise: Tensor, idx: Tensor | None) -> Tensor:
        """One step (noise ``[E, P]``; the minibatch as rows ``[E * b]``, or None); this step's
        losses ``[E]``."""
        return self.advance(noise[None], None if idx is None else idx[None])[0]


def _owner(cls: type, attr: str) -> type | None:
    for c in cls.__mro__:
        if attr in c.__dict__:
            return c
    return None


def stepper(model: torch.nn.Module, expanded: torch.nn.Module, data: Batch,
            batch_size: int | None, W: Tensor, W0: Tensor, eps: Tensor, nbeta: Tensor,
            gamma: float, *, hooks=None, stride=None,
            M: Tensor | None = None) -> Stepper | None:  # fmt: skip
    """Fused steps for this sampler run (``model``: the user's model, ``expanded``: its copies,
    whose parameters are views of ``W``), or None: take the torch step. ``stride`` (coarse arms)
    and ``hooks`` always take the torch step."""
    method = getattr(model, METHOD, None)
    if method is None or not compile_enabled():
        return None
    if hooks or (stride is not None and any(int(r) != 1 for r in stride)):
        return None
    cls = type(model)
    owner = _owner(cls, METHOD)
    for attr in ("forward", "per_example_loss", "loss"):
        if getattr(cls, attr, None) is not getattr(owner, attr, None):
            return None  # a subclass changed the maths; only the torch step knows it
    params = [*model.parameters(), *expanded.parameters()]
    if any(
        not p.requires_grad or p.device.type != "cpu" or p.dtype != torch.float32 for p in params
    ):
        return None  # a frozen parameter changes the row layout the kernel assumes
    if W.device.type != "cpu" or not W.is_contiguous() or hooks_attached(expanded):
        return None
    kernel = method(data, batch_size)
    if kernel is None:
        return None
    return Stepper(kernel, W, W0, eps, nbeta, gamma, M)


def attach(setup, plan, eng, eps: Tensor, M: Tensor | None, groups: list[int]):
    """``(stepper, picks)`` for the sampler's engine ``eng`` (see ``sgld.build_engine``):
    the fused stepper, or None (take the torch step), and with minibatches the
    :class:`~memlens.sampling.random_streams.MinibatchRows` whose rows the kernel computes (the
    torch step's minibatches come from the same keys, so both paths draw the same points)."""
    fused = stepper(setup.model, eng.expanded, setup.data, plan.batch_size, eng.W, eng.W0, eps,
                    eng.nb, plan.gamma, hooks=plan.hooks, stride=plan.stride, M=M)  # fmt: skip
    if fused is None or plan.batch_size is None:
        return fused, None
    picks: MinibatchRows = minibatch_rows(setup.data, plan, groups)
    return fused, picks


def advance(eng, K: int, losses: Tensor) -> None:
    """K fused steps of every row of ``eng.W`` (``sgld.advance``'s contract): the noise and
    minibatch blocks are read from the engine's streams, exactly as the torch step reads them."""
    E, P = eng.W.shape
    noise = eng.noise.take(K)  # [K, copies, inst, P], a strided view of the streams' block
    if eng.prev_xi is not None:  # the Leimkuhler-Matthews step (see sgld's docstring)
        noise = pair_noise(eng.prev_xi.view(noise.shape[1:]), noise)
    noise = noise.reshape(K, E, P).contiguous()  # a copy only for the Euler step
    idx = None if eng.picks is None else (eng.picks, eng.picks.take(K))
    losses[:K] = eng.fused.advance(noise, idx)
    eng.step += K


def eval_loss(eng, eval_set: Batch, eval_x: Batch) -> Tensor:
    """Every row's loss on the fixed evaluation set: the kernel's where it can, else eager."""
    out = None if eng.fused is None else eng.fused.loss(eval_set)
    return eng.expanded.loss(eval_x) if out is None else out
