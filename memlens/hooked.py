"""``HookedToyModel``: the base class of every toy model (a TransformerLens ``HookedRootModule``).

A toy model carries an instance axis: every parameter's first dimension is ``n_instances``, and
every activation is laid out ``[batch, inst, ...]``. Instances never interact, so one optimizer step
trains a whole sweep, and SGLD chains and temperatures become instances of an expanded copy
(:meth:`HookedToyModel.expand`).
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from jaxtyping import Float, Shaped
from torch import Tensor
from transformer_lens import HookedRootModule

from memlens import io, threads, validate
from memlens.data import Batch, as_batch, instance_generators

LOSS_CHUNK_ELEMENTS = 2**20
threads.record_initial()  # PyTorch's thread count before memlens touched it (see memlens.threads)

#: (mask [rows, inst] or None, points per instance [inst]) of the batch whose loss is being
#: evaluated; set by ``HookedToyModel.loss`` around each row chunk (see :func:`loss_rows`)
_LOSS_ROWS: contextvars.ContextVar[tuple[Tensor | None, Tensor] | None] = contextvars.ContextVar(
    "memlens_loss_rows", default=None
)


def loss_rows() -> tuple[Tensor | None, Tensor] | None:
    """Inside :meth:`HookedToyModel.loss`: ``(mask, n_points)`` of the rows a hook sees (the mask
    ``[rows, inst]`` is None without padding) and the number of real points per instance of the
    whole batch; None outside a loss evaluation."""
    return _LOSS_ROWS.get()


def _rows(batch: Batch, a: int, b: int) -> Batch:
    return Batch(
        batch.inputs[a:b],
        None if batch.targets is None else batch.targets[a:b],
        None,
        None,
    )


__all__ = [
    "HookedToyModel",
    "ToyConfig",
    "Circuits",
    "loss_rows",
    "check_positive_int",
    "require_model",
]


def check_positive_int(name: str, value: Any) -> None:
    """Refuse anything but a positive int (configs call this for their sizes)."""
    validate.positive_int(name, value)


@dataclass(frozen=True)
class ToyConfig:
    """Fields every toy-model config has. Subclasses add their own and extend ``validate``."""

    n_instances: int = 1
    seed: int = 0  # initialisation seed; instance i initialises from (seed, i)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_positive_int("n_instances", self.n_instances)
        validate.seed("seed", self.seed)

    def to_dict(self) -> dict:
        return io.jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> ToyConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} fields {sorted(unknown)}; known: {sorted(names)}"
            )
        return cls(
            **{k: tuple(map(_tuplify, v)) if isinstance(v, list) else v for k, v in d.items()}
        )


def _tuplify(v: Any) -> Any:
    return tuple(map(_tuplify, v)) if isinstance(v, list) else v


@dataclass
class Circuits:
    """The named circuits of a trained model, read at the model's hooks for fixed probe inputs.

    ``readout(acts)`` maps ``{hook: activation}`` for ``inputs`` (one entry per name in ``hooks``)
    to ``[..., inst, circuit]``. Each activation has shape ``[..., n_probe, inst, ...]``, where
    leading dims index copies of the model (chains, temperatures), so one readout serves an
    expanded model too.
    """

    names: list[str]
    inputs: Shaped[Tensor, "probe inst d_in"]  # floats, or token ids (memlens.stacked)
    hooks: tuple[str, ...]
    readout: Callable[[dict[str, Tensor]], Tensor]
    #: optional: how to remove each circuit from a forward pass over the training set, as
    #: multiplicative masks ``{hook: [circuit, T, inst, ...]}`` on that hook's activation
    #: (used to measure a circuit's loss contribution and complexity, probes/bucket.py)
    ablations: dict[str, Tensor] | None = None

    @property
    def families(self) -> list[str]:
        return [n.split(":", 1)[0] for n in self.names]


class HookedToyModel(HookedRootModule):
    """Base class of every toy model.

    Subclasses set ``Config`` (a frozen dataclass deriving from :class:`ToyConfig`), create their
    parameters with a leading instance axis and their ``hook_*`` points, call ``self.setup()`` at
    the end of ``__init__``, and implement ``forward``, ``per_example_loss`` and ``circuits``.
    """

    Config: ClassVar[type[ToyConfig]] = ToyConfig
    #: names of the input dimension, for error messages: ("batch", "inst", "feat")
    input_dims: ClassVar[tuple[str, ...]] = ("batch", "inst", "feat")
    #: circuit families this model declares, e.g. ("feature", "datum") (see :class:`Circuits`)
    circuit_families: ClassVar[tuple[str, ...]] = ()
    #: the hook holding the learned representation (dimensionality reads it by default)
    representation_hook: ClassVar[str] = "hook_out"

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        if not isinstance(cfg, self.Config):
            raise TypeError(
                f"{type(self).__name__} needs a {self.Config.__name__}, got {type(cfg)}"
            )
        self.cfg = cfg

    # ---------------------------------------------------------------- shapes and validation
    @property
    def n_instances(self) -> int:
        return self.cfg.n_instances

    @property
    def d_in(self) -> int:
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def check_input(self, x: Tensor) -> None:
        """Raise a ``ValueError`` naming the expected ``[batch, inst, d_in]`` shape."""
        if (
            not isinstance(x, Tensor)
            or x.ndim != 3
            or x.shape[1] != self.n_instances
            or x.shape[2] != self.d_in
        ):
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            b, i, f = self.input_dims
            raise ValueError(
                f"{type(self).__name__} expects input of shape [{b}, {i}={self.n_instances}, "
                f"{f}={self.d_in}], got {got}"
            )

    def check_batch(self, batch: Tensor | Batch, name: str = "data") -> Batch:
        """Validate a training or test batch against this model; return it as a Batch.

        Inputs (and real-valued targets) of another floating dtype are converted to the model's;
        integer inputs, and NaN or inf anywhere, are refused naming ``name`` and the first bad
        index."""
        batch = as_batch(batch)
        if not isinstance(batch.inputs, Tensor):
            raise ValueError(f"{name} inputs must be a tensor, got {type(batch.inputs).__name__}")
        dtype = next(self.parameters()).dtype
        if not batch.inputs.is_floating_point():
            raise ValueError(
                f"{name} inputs must be floating point ({dtype}), got {batch.inputs.dtype}"
            )
        tgt = batch.targets
        if batch.inputs.dtype != dtype or (
            tgt is not None and tgt.is_floating_point() and tgt.dtype != dtype
        ):
            conv = None if tgt is None or not tgt.is_floating_point() else tgt.to(dtype)
            batch = Batch(
                batch.inputs.to(dtype),
                tgt if conv is None else conv,
                batch.features,
                batch.lengths,
            )
        validate.rows(name, batch)
        mask = batch.mask()  # padding rows of packed sweeps are never read: not checked
        validate.finite_tensor(f"{name} inputs", batch.inputs, mask)
        validate.finite_tensor(f"{name} targets", batch.targets, mask)
        if batch.inputs.ndim == 3 and batch.inputs.shape[1] != self.n_instances:
            raise ValueError(
                f"instance-count mismatch: the data has {batch.inputs.shape[1]} instances "
                f"(axis 1 of [batch, inst, ...]) but the model has n_instances={self.n_instances}"
            )
        self.check_input(batch.inputs)
        self._check_targets(batch)
        return batch

    def _check_targets(self, batch: Batch) -> None:
        pass

    def _init_per_instance(
        self, shape: Sequence[int], fn: Callable[[Tensor, torch.Generator], Any], salt: int = 0
    ) -> Tensor:
        """A parameter ``[inst, *shape]`` whose instance i is initialised from (seed, salt, i)."""
        gens = instance_generators(self.cfg.seed, self.n_instances, 100 + salt)
        out = torch.empty(self.n_instances, *shape)
        for i, g in enumerate(gens):
            fn(out[i], g)
        return out

    # ---------------------------------------------------------------- losses
    def per_example_loss(self, batch: Batch) -> Float[Tensor, "batch inst"]:
        raise NotImplementedError

    #: widest activation (elements per point per instance); sets the row chunk in ``loss``
    @property
    def width(self) -> int:
        return self.d_in

    def loss(self, batch: Tensor | Batch) -> Float[Tensor, " inst"]:
        """The per-instance loss: the mean over (unpadded) points of ``per_example_loss``.

        Large batches are evaluated in row chunks of about 2**20 activation elements: the same
        numbers, but every intermediate stays small and cache-resident instead of allocating
        (and page-faulting) a fresh [batch, inst, width] tensor per operation. Hooks therefore
        see one chunk per call; use ``forward`` / ``run_with_cache`` to see whole batches.
        While a chunk runs, :func:`loss_rows` tells hooks which rows of the whole batch they see
        (so a penalty on activations can be scaled by the whole batch, not the chunk).
        """
        batch = as_batch(batch)
        rows = max(1, LOSS_CHUNK_ELEMENTS // (self.n_instances * self.width))
        mask = batch.mask()
        n_points = batch.n_points().to(batch.inputs.device, batch.inputs.dtype)
        parts = []
        for a in range(0, len(batch), rows):
            chunk = batch if len(batch) <= rows else _rows(batch, a, a + rows)
            token = _LOSS_ROWS.set((None if mask is None else mask[a : a + rows], n_points))
            try:
                parts.append(self.per_example_loss(chunk))
            finally:
                _LOSS_ROWS.reset(token)
        per = parts[0] if len(parts) == 1 else torch.cat(parts)
        if mask is None:
            return per.mean(0)
        return torch.where(mask > 0, per, 0.0).sum(0) / mask.sum(0).clamp_min(1)

    # ---------------------------------------------------------------- geometry and circuits
    def feature_directions(self) -> Float[Tensor, "inst m feat"] | None:
        """Each feature's direction in the representation (columns), if the model has them (the
        bottleneck's ``W``); None otherwise. Feature dimensionality reads these."""
        return None

    def circuits(self, train: Tensor | Batch) -> Circuits:
        """The model's named circuits (:class:`Circuits`: ``family:index`` units read at a hook
        for a fixed probe input), with keys fixed at the current weights."""
        raise NotImplementedError(f"{type(self).__name__} declares no circuits")

    # ---------------------------------------------------------------- instances
    def with_instances(self, n: int, state: dict[str, Tensor]) -> HookedToyModel:
        """A new model of this kind with ``n`` instances holding the weights ``state``."""
        cfg = dataclasses.replace(self.cfg, n_instances=n)
        new = type(self).from_config(cfg)
        new.load_state_dict(state)
        return new.to(self.device)

    def expand(self, copies: int) -> HookedToyModel:
        """A new model with ``copies * n_instances`` instances: copy ``c`` of instance ``i`` is
        instance ``c * n_instances + i``. Used to batch SGLD chains and temperatures."""
        check_positive_int("copies", copies)
        state = {
            k: v.detach().repeat(copies, *([1] * (v.ndim - 1)))
            for k, v in self.state_dict().items()
        }
        return self.with_instances(copies * self.n_instances, state)

    def select_instances(self, idx: Sequence[int]) -> HookedToyModel:
        """A new model holding only the listed instances."""
        idx_t = torch.as_tensor(list(idx), dtype=torch.long)
        if idx_t.numel() == 0 or idx_t.min() < 0 or idx_t.max() >= self.n_instances:
            raise ValueError(
                f"instance indices must be in [0, {self.n_instances}), got {list(idx)}"
            )
        state = {k: v.detach()[idx_t.to(v.device)].clone() for k, v in self.state_dict().items()}
        return self.with_instances(len(idx_t), state)

    @classmethod
    def from_config(cls, cfg: ToyConfig) -> HookedToyModel:
        """Build from a config: ``__init__`` takes the config's fields as keyword arguments."""
        if not isinstance(cfg, cls.Config):
            raise TypeError(
                f"{cls.__name__}.from_config needs a {cls.Config.__name__}, got "
                f"{type(cfg).__name__}"
            )
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)})

    def extra_repr(self) -> str:
        return ", ".join(
            f"{k}={v}" for k, v in self.cfg.to_dict().items() if not isinstance(v, list)
        )


def require_model(model: Any) -> None:
    """Raise TypeError unless ``model`` is a :class:`HookedToyModel`, saying how to wrap any other
    module (:class:`memlens.StackedModel`)."""
    if not isinstance(model, HookedToyModel):
        raise TypeError(
            f"model must be a memlens.HookedToyModel, got {type(model).__name__}: wrap any other "
            "nn.Module as memlens.StackedModel(module, loss_fn, n_instances=..., input_shape=...) "
            "(README, 'From toy to transformer')"
        )
