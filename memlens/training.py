"""The vectorised trainer: every instance of a model in one AdamW step.

The loss that is backpropagated is the *sum* of the per-instance losses, so each instance gets
exactly the gradient of its own loss; AdamW is elementwise, so instances never interact.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from memlens import threads, validate
from memlens.data import Batch, SparseFeatures, Task, as_batch
from memlens.divergence import EXPLOSION_FACTOR, Diverged, Guard
from memlens.fused import Rows, fused_step, graph_step
from memlens.hooked import HookedToyModel, loss_rows, require_model
from memlens.training_config import MAX_LR, TrainConfig

__all__ = [
    "train",
    "TrainConfig",
    "MAX_LR",
    "TrainResult",
    "Diverged",
    "EXPLOSION_FACTOR",
    "lr_at",
    "evaluate",
    "sparse_activations",
    "step_once",
]

CHECK_EVERY = 100  # steps between finiteness checks (one host sync each)


@dataclass
class TrainResult:
    """What :func:`train` returns. Losses are per instance, in the model's loss units."""

    history: Float[Tensor, "steps inst"]  # the training (mini)batch loss at every step
    train_loss: Float[Tensor, " inst"]  # final loss on the whole training set (or last batch)
    test_loss: Float[Tensor, " inst"] | None = None
    steps: int = 0
    seconds: float = 0.0
    config: dict = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"trained {self.history.shape[1]} instance(s) for {self.steps} steps "
            f"in {self.seconds:.1f} s"
        ]
        for i in range(self.history.shape[1]):
            s = f"  inst {i}: train loss {self.train_loss[i]:.4g}"
            if self.test_loss is not None:
                s += f", test loss {self.test_loss[i]:.4g}"
            lines.append(s)
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "train_loss": self.train_loss.tolist(),
            "test_loss": None if self.test_loss is None else self.test_loss.tolist(),
            "steps": self.steps,
            "seconds": self.seconds,
            "config": self.config,
        }

    def plot(self, ax=None):
        import matplotlib.pyplot as plt

        fig = ax.figure if ax is not None else plt.figure(figsize=(6, 3.5))
        ax = ax or fig.add_subplot()
        ax.plot(self.history.numpy(), lw=0.8)
        ax.set(
            xlabel="step",
            ylabel="training loss",
            yscale="log",
            title=f"training loss, {self.history.shape[1]} instance(s)",
        )
        return fig


def lr_at(step: int, *, steps: int, lr: float, warmup: int, schedule: str) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to 0 at ``steps`` (or constant)."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if schedule == "constant":
        return lr
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def evaluate(
    model: HookedToyModel, data: Tensor | Batch, chunk: int = 16384, *, checked: bool = False
) -> Tensor:
    """Per-instance mean loss over a whole data set, in chunks of points (``checked``: ``data``
    is a Batch that ``model.check_batch`` returned, so it is not validated again)."""
    require_model(model)
    validate.integer("chunk", chunk, 1)
    if not checked:
        data = model.check_batch(data)
    n = len(data)
    if n <= chunk:
        return model.loss(data)
    total, count = 0.0, 0.0
    mask = data.mask()
    for a in range(0, n, chunk):
        sl = slice(a, a + chunk)
        part = Batch(
            data.inputs[sl], None if data.targets is None else data.targets[sl], None, None
        )
        per = model.per_example_loss(part)
        w = torch.ones_like(per) if mask is None else mask[sl]
        total = total + torch.where(w > 0, per, 0.0).sum(0)
        count = count + w.sum(0)
    return total / count.clamp_min(1)


def _stream(model, data, batch_size, seed) -> tuple[Iterator[Batch | Rows], Batch | None]:
    """The batches to train on (a minibatch of a finite set comes as its ``Rows``), and the
    finite training set (None for infinite data)."""
    if isinstance(data, (SparseFeatures, Task)):
        if batch_size is None:
            raise ValueError("infinite data (SparseFeatures or a Task) needs a batch_size")
        n = data.n_instances if isinstance(data, Task) else data.check_instances(model.n_instances)
        if n != model.n_instances:
            raise ValueError(
                f"instance-count mismatch: the data has {n} instances but the model "
                f"has n_instances={model.n_instances}"
            )
        if isinstance(data, SparseFeatures):
            gen = (as_batch(x) for x in data.batches(batch_size, seed, model.n_instances))
        else:
            gen = data.batches(batch_size, seed)
        first = model.check_batch(next(gen))

        def chain() -> Iterator[Batch]:
            yield first
            for b in gen:
                yield b.to(model.device)

        return chain(), None
    full = model.check_batch(data).to(model.device)
    if batch_size is None or batch_size >= len(full) and full.lengths is None:

        def same() -> Iterator[Batch]:
            while True:
                yield full

        return same(), full
    g = torch.Generator(device="cpu").manual_seed(seed)
    n_pts = full.n_points().to(torch.float32)

    def minibatches() -> Iterator[Rows]:
        while True:
            u = torch.rand(batch_size, model.n_instances, generator=g)
            idx = (u * n_pts).long().clamp_max(len(full) - 1).to(model.device)
            yield Rows(full, idx)

    return minibatches(), full


def _train_work(model, data=None, config=None, *args, batch_size=None, **kw) -> int:
    if isinstance(config, TrainConfig):
        batch_size = config.batch_size
    rows = batch_size or (len(as_batch(data)) if isinstance(data, (Tensor, Batch)) else 1)
    return rows * model.n_instances * model.width


@threads.managed(_train_work)
def train(
    model: HookedToyModel,
    data: Tensor | Batch | SparseFeatures | Task,
    config: TrainConfig | None = None,
    *,
    test: Tensor | Batch | None = None,
    progress: bool = True,
    desc: str = "train",
    **settings: Any,
) -> TrainResult:
    """Train every instance of ``model`` in one loop with AdamW.

    ``train(model, data, TrainConfig(steps=2000, lr=1e-2))`` and the keyword form
    ``train(model, data, steps=2000, lr=1e-2)`` are the same; keywords given with a config replace
    its fields. The settings (:class:`~memlens.training_config.TrainConfig`) are checked once, by
    the config, before any step.

    Args:
        data: a finite training set (``[T, inst, feat]`` tensor or a ``Batch``), or an infinite
            source (``SparseFeatures`` or a ``Task``; needs ``batch_size``).
        config: the training settings: steps, lr, weight_decay, warmup, schedule (``"cosine"``
            decays to 0 after the warmup, ``"constant"`` does not), batch_size (None: full batch),
            seed (the minibatch stream), l1 and l1_hook (an L1 penalty on the activations at
            ``l1_hook``, default the model's representation hook, averaged over points, see
            :func:`sparse_activations`; it shapes the gradient only, the reported losses are the
            task's).
        test: an optional test set; its loss is reported per instance at the end.
        progress: show a progress bar labelled ``desc``.

    On the CPU, a model with a fused step (``fused_loss_and_grads``: losses and gradients in one
    pass, see :mod:`memlens.fused`) uses it when no hook is attached (the L1 penalty is a hook, so
    it trains eagerly); otherwise, and with ``MEMLENS_COMPILE=0``, each step is the eager forward
    and autograd backward. Both give the same numbers to float rounding.

    Raises:
        ValueError before any step on bad arguments; :class:`Diverged` (a FloatingPointError)
        naming the step and the instances if a loss or weight becomes NaN or inf, after restoring
        the weights of the last finiteness check that passed (every ``CHECK_EVERY`` steps).
    Warns:
        RuntimeWarning, once, naming the step and the instances, when a finite loss passes
        ``EXPLOSION_FACTOR`` (10^3) x its starting value.
    """
    require_model(model)
    cfg = TrainConfig.of(config, **settings)
    validate.boolean("progress", progress)
    if not isinstance(desc, str):
        raise ValueError(f"desc (the progress bar's label) must be a string, got {desc!r}")
    return _run(model, data, cfg, test, progress, desc)


def _run(model, data, cfg: TrainConfig, test, progress: bool, desc: str) -> TrainResult:
    """The training loop of :func:`train`, on checked settings."""
    steps, l1, l1_hook = cfg.steps, cfg.l1, cfg.l1_hook
    penalty = (
        sparse_activations(model, l1, l1_hook) if l1 != 0 or l1_hook else contextlib.nullcontext()
    )
    penalty.__enter__()  # validates l1 and l1_hook now; the scoped hook is removed at the end
    try:
        if test is not None:
            test = model.check_batch(test, "test").to(model.device)
        stream, full = _stream(model, data, cfg.batch_size, cfg.seed)
    except BaseException:
        penalty.__exit__(None, None, None)
        raise
    params = [p for p in model.parameters() if p.requires_grad]
    # on a GPU, one fused AdamW kernel for every parameter (the CPU keeps torch's default)
    on_cuda = bool(params) and all(p.device.type == "cuda" for p in params)
    opt = torch.optim.AdamW(
        params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True if on_cuda else None
    )
    fused = fused_step(model)
    graph = graph_step(model) if fused is None else None
    history = torch.empty(steps, model.n_instances, device=model.device)
    guard = Guard(model)
    t0 = time.perf_counter()
    model.train()
    bar = tqdm(total=steps, desc=desc, disable=not progress, mininterval=0.5, leave=False)
    try:
        for step in range(steps):
            lr_now = lr_at(step, steps=steps, lr=cfg.lr, warmup=cfg.warmup, schedule=cfg.schedule)
            for group in opt.param_groups:
                group["lr"] = lr_now
            history[step] = step_once(model, opt, next(stream), fused, graph)
            if (step + 1) % CHECK_EVERY == 0 or step + 1 == steps:
                guard.check(history, step + 1)
                bar.update(step + 1 - bar.n)
                bar.set_postfix(loss=f"{history[step].mean().item():.3g}")
    finally:
        bar.close()
        penalty.__exit__(None, None, None)
    model.eval()
    train_loss = evaluate(model, full) if full is not None else history[-1].clone()
    test_loss = evaluate(model, test) if test is not None else None
    return TrainResult(
        history=history.cpu(),
        train_loss=train_loss.cpu(),
        test_loss=None if test_loss is None else test_loss.cpu(),
        steps=steps,
        seconds=time.perf_counter() - t0,
        config={k: v for k, v in cfg.to_dict().items() if k != "l1_hook"},
    )


def step_once(
    model: HookedToyModel,
    opt: torch.optim.Optimizer,
    item: Batch | Rows,
    fused: Callable | None = None,
    graph: Callable | None = None,
) -> Tensor:
    """One optimizer step on a batch (or on the ``Rows`` of a minibatch); returns the detached
    per-instance losses. ``fused`` is :func:`memlens.fused.fused_step`'s answer for the model:
    the fused step when it applies to this batch, else the forward (``graph``, the compiled loss
    of :func:`memlens.fused.graph_step`, where given, else the eager ``model.loss``) and the
    autograd backward."""
    out = None
    if fused is not None:
        out = fused(item.full, item.idx) if isinstance(item, Rows) else fused(item)
    if out is None:
        batch = item.gather() if isinstance(item, Rows) else item
        losses = (graph or model.loss)(batch)
        opt.zero_grad(set_to_none=True)
        losses.sum().backward()
    else:
        losses, grads = out
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.grad = grads[name]
    opt.step()
    return losses.detach()


@contextlib.contextmanager
def sparse_activations(
    model: HookedToyModel, coeff: float, hook: str | None = None
) -> Iterator[None]:
    """Training aid: add the gradient of an L1 penalty ``coeff · mean_points Σ_k |a_k|`` on the
    activations at ``hook`` (default: the model's representation hook) through a scoped hook; the
    reported loss is unchanged. Inside :meth:`HookedToyModel.loss` the mean runs over the whole
    batch's real points per instance (padding excluded), whatever the row chunking.

    Plain AdamW training of an MLP block memorises with a *distributed* code (each neuron fires on
    about half the points), which is no lookup table; an activation-sparsity penalty, like the
    L1 of sparse dictionary learning, makes each neuron store one or two points.
    ``memlens.train(..., l1=coeff)`` does the same.
    """
    require_model(model)
    validate.real("coeff (l1, the L1 coefficient)", coeff, 0)
    if hook is not None and not isinstance(hook, str):
        raise ValueError(f"hook (l1_hook) must be a hook name or None, got {hook!r}")
    hook = model.representation_hook if hook is None else hook
    if hook not in model.hook_dict:
        raise ValueError(
            f"{type(model).__name__} has no hook {hook!r}; hooks: {list(model.hook_dict)}"
        )

    def fn(act: Tensor, hook=None):
        if act.requires_grad and coeff > 0:
            rows = loss_rows()
            if rows is None:  # a plain forward pass: the mean over this batch
                w = torch.full(act.shape[:2], 1.0 / act.shape[0], device=act.device)
            else:
                mask, n_points = rows
                w = (1.0 / n_points.clamp_min(1))[None, :].expand(act.shape[:2])
                if mask is not None:
                    w = w * mask
            w = w.reshape(*act.shape[:2], *([1] * (act.ndim - 2))).to(act.dtype)
            sign = torch.sign(act.detach())
            act.register_hook(lambda g: g + coeff * sign * w)
        return act

    with model.hooks(fwd_hooks=[(hook, fn)]):
        yield
