"""Sparse-feature data, finite training sets of T points, and the task (data recipe) base classes.

Conventions
-----------
* Tensors are laid out ``[batch, inst, ...]``.
* Each feature is 0 with probability ``sparsity`` (S) and U[0, 1] otherwise.
* Every instance draws from its own random stream, derived from ``(seed, instance index)``: instance
  ``i`` of ``sample(T, n, seed)`` is the same whatever ``n`` is, and instances never share data.
* The generator is versioned (``SparseFeatures(data_version=...)``): version 2, the default, draws
  only the active entries; version 1 is the original generator (two dense uniform draws per
  point), kept so that recipes recorded before version 2 rebuild their data exactly. A recipe
  without a ``data_version`` means version 1.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from memlens import validate
from memlens.batch import Batch, as_batch
from memlens.planted import Planting
from memlens.seeding import instance_generators, mix_seed

__all__ = [
    "Batch",
    "SparseFeatures",
    "Task",
    "EmbeddedTask",
    "instance_generators",
    "mix_seed",
    "as_batch",
    "DATA_VERSION",
    "DATA_VERSIONS",
]

DATA_VERSION = 2  # the generator new data sets use (recorded in sweep recipes)
DATA_VERSIONS = (1, 2)  # 1: two dense draws of [T, n] per instance; 2: only the active entries


def _active_entries(cells: int, p: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Each of ``cells`` cells is active with probability ``p``: the active cells' indices (int64,
    increasing) and their U[0, 1) values. The gaps between active cells are geometric, drawn by
    inversion (``1 + floor(log U / log(1 - p))``) in chunks, so the work is proportional to the
    number of active cells, not of cells."""
    if p >= 1.0:
        return torch.arange(cells), torch.rand(cells, generator=g)
    log_q = float(np.log1p(-p))
    mean = cells * p
    chunk = int(mean + 6.0 * mean**0.5 + 16)
    parts, last = [], -1.0
    while last < cells:
        u = 1.0 - torch.rand(chunk, dtype=torch.float64, generator=g)  # (0, 1]
        pos = last + torch.cumsum(torch.floor(torch.log(u) / log_q) + 1.0, 0)
        parts.append(pos)
        last = float(pos[-1])
    pos = torch.cat(parts)
    pos = pos[pos < cells].long()
    return pos, torch.rand(len(pos), generator=g)


def _per_instance(value, n_instances: int, name: str) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float32)
    if t.ndim == 0:
        return t.expand(n_instances).clone()
    if t.ndim != 1 or t.shape[0] != n_instances:
        raise ValueError(
            f"{name} was given per instance with {t.shape[0] if t.ndim == 1 else tuple(t.shape)} "
            f"values, but n_instances={n_instances}"
        )
    return t


def _reals(name: str, value: Any) -> Tensor:
    """Numbers (a number, a list, nested lists, an array or a tensor) as a float64 tensor;
    strings, bools and other types are refused rather than coerced."""
    if isinstance(value, Tensor):
        if value.dtype == torch.bool or value.is_complex():
            raise ValueError(f"{name} must hold real numbers, got a {value.dtype} tensor")
        return value.detach().to("cpu", torch.float64)

    def ok(v: Any) -> bool:
        if isinstance(v, (list, tuple)):
            return all(ok(x) for x in v)
        return isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))

    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not ok(value):
        raise ValueError(f"{name} must be a number or a list of numbers, got {value!r}")
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (ValueError, TypeError) as exc:  # ragged lists
        raise ValueError(f"{name} must be a number or a regular list of numbers: {exc}") from None


class SparseFeatures:
    """Sparse features: each is 0 with probability ``sparsity`` and U[0, 1] otherwise.

    Args:
        n_features: number of features n.
        sparsity: S in [0, 1), a float or one value per instance. Give this or
            ``feature_probability`` (= 1 - S), not both.
        importance: per-feature loss weights I_i, ``[feat]`` or ``[inst, feat]``; None means 1.
        normalize: rescale each nonzero point to unit L2 norm (the memorisation papers' setting).
        data_version: the generator (see the module docstring): 2 (default) draws only the
            active entries, geometric gaps between them, in time proportional to their number;
            1 rebuilds data recorded by earlier versions of memlens exactly.
    """

    def __init__(
        self,
        n_features: int,
        sparsity: float | Sequence[float] | None = None,
        *,
        feature_probability: float | Sequence[float] | None = None,
        importance: Sequence[float] | Sequence[Sequence[float]] | Tensor | None = None,
        normalize: bool = False,
        data_version: int = DATA_VERSION,
    ):
        validate.positive_int("n_features", n_features)
        if isinstance(data_version, bool) or data_version not in DATA_VERSIONS:
            raise ValueError(f"data_version must be one of {DATA_VERSIONS}, got {data_version!r}")
        if (sparsity is None) == (feature_probability is None):
            raise ValueError("give exactly one of sparsity=S or feature_probability=1-S")
        if sparsity is None:
            fp = _reals("feature_probability", feature_probability)
            if fp.numel() == 0 or not bool(((fp > 0) & (fp <= 1)).all()):
                raise ValueError(
                    f"feature_probability must be in (0, 1], got {feature_probability!r}"
                )
            sparsity = (1 - fp).tolist()
        s = _reals("sparsity", sparsity)
        if s.ndim > 1 or s.numel() == 0 or not bool(((s >= 0) & (s < 1)).all()):
            raise ValueError(f"sparsity must be in [0, 1) (0 = dense), got {sparsity!r}")
        self.n_features = int(n_features)
        self.sparsity = s.to(torch.float32)
        if importance is not None:
            imp = _reals("importance", importance).to(torch.float32)
            if imp.ndim not in (1, 2) or imp.shape[-1] != n_features:
                raise ValueError(
                    f"importance must have shape [feat={n_features}] or [inst, feat], got "
                    f"{tuple(imp.shape)}"
                )
            if not bool(torch.isfinite(imp).all()) or bool((imp < 0).any()):
                raise ValueError(f"importance must be finite and non-negative, got {importance!r}")
            importance = imp
        self.importance = importance
        self.normalize = validate.boolean("normalize", normalize)
        self.data_version = int(data_version)

    def __repr__(self) -> str:
        s = self.sparsity.tolist()
        return (
            f"SparseFeatures(n_features={self.n_features}, sparsity={s}, "
            f"normalize={self.normalize}, data_version={self.data_version})"
        )

    @property
    def per_instance_n(self) -> int | None:
        """The instance count fixed by per-instance sparsity or importance, if any."""
        if self.sparsity.ndim == 1:
            return self.sparsity.shape[0]
        if self.importance is not None and self.importance.ndim == 2:
            return self.importance.shape[0]
        return None

    def check_instances(self, n_instances: int | None) -> int:
        """The instance count to use: ``n_instances``, checked against per-instance settings."""
        fixed = self.per_instance_n
        if n_instances is None:
            return fixed or 1
        validate.positive_int("n_instances", n_instances)
        if fixed is not None and fixed != n_instances:
            raise ValueError(
                f"n_instances={n_instances} does not match the {fixed} per-instance values given "
                "for sparsity/importance"
            )
        return int(n_instances)

    def importance_tensor(self, n_instances: int) -> Tensor:
        """``[inst, feat]`` importance (ones when none was given)."""
        n_instances = self.check_instances(n_instances)
        if self.importance is None:
            return torch.ones(n_instances, self.n_features)
        return self.importance.expand(n_instances, self.n_features).clone()

    def _draw(self, T: int, gens: list[torch.Generator], sparsity: Tensor) -> Tensor:
        if self.data_version == 1:
            return self._draw_dense(T, gens, sparsity)
        n, inst = self.n_features, len(gens)
        flat, vals = [], []
        for i, g in enumerate(gens):
            pos, val = _active_entries(T * n, 1.0 - float(sparsity[i]), g)
            if self.normalize:
                norm2 = torch.zeros(T, dtype=torch.float64).index_add_(
                    0, pos // n, val.double() ** 2
                )
                val = val / norm2.sqrt().clamp_min(1e-12).float()[pos // n]
            flat.append((pos // n) * (inst * n) + i * n + pos % n)  # [T, inst, n] row-major
            vals.append(val)
        x = torch.zeros(T, inst, n)
        x.view(-1)[torch.cat(flat)] = torch.cat(vals)
        return x

    def _draw_dense(self, T: int, gens: list[torch.Generator], sparsity: Tensor) -> Tensor:
        """Data version 1: two dense uniform draws of ``[T, n]`` per instance."""
        cols = []
        for i, g in enumerate(gens):
            active = torch.rand(T, self.n_features, generator=g) >= sparsity[i]
            values = torch.rand(T, self.n_features, generator=g)
            cols.append(values * active)
        x = torch.stack(cols, dim=1)
        if self.normalize:
            x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return x

    def sample(
        self, T: int, n_instances: int | None = None, seed: int = 0
    ) -> Float[Tensor, "T inst feat"]:
        """A finite training set of ``T`` points per instance, ``[T, inst, feat]``.

        Raises ``ValueError`` before any work for a ``T`` that is not a positive int, a seed that
        is not an int (1.7 is refused, not truncated), or a set that would not fit in the memory
        available now."""
        validate.integer("T (the number of points)", T, 1)
        n = self.check_instances(n_instances)
        validate.seed("seed", seed)
        self._check_memory(f"T={int(T)} points", int(T), n)
        sparsity = self.sparsity.expand(n)
        return self._draw(int(T), instance_generators(seed, n, 1), sparsity)

    def batches(
        self, batch_size: int, seed: int = 0, n_instances: int | None = None
    ) -> Iterator[Float[Tensor, "batch inst feat"]]:
        """An infinite stream of fresh batches ``[batch_size, inst, feat]`` (infinite data).
        Its arguments are checked when it is called, not at the first batch."""
        validate.integer("batch_size", batch_size, 1)
        validate.seed("seed", seed)
        n = self.check_instances(n_instances)
        self._check_memory(f"batch_size={int(batch_size)}", int(batch_size), n)
        gens = instance_generators(seed, n, 2)
        sparsity = self.sparsity.expand(n)

        def stream() -> Iterator[Tensor]:
            while True:
                yield self._draw(int(batch_size), gens, sparsity)

        return stream()

    def _check_memory(self, what: str, rows: int, n_instances: int) -> None:
        """Refuse a draw of ``[rows, inst, feat]`` float32 that would not fit in memory (the dense
        result, plus as much again while it is built), before allocating anything."""
        validate.memory(what, 2 * rows * n_instances * self.n_features * 4)


class Task:
    """A data recipe: training sets of T points and fresh test sets, ``[batch, inst, ...]``.

    Subclasses (each model plugin ships its own, e.g. ``toy_models.MLPTask``) implement
    ``make_batch(features, seed)``, turning sparse features ``[T, inst, feat]`` into a
    :class:`Batch`, and ``model_kwargs()``, the dimensions a matching model needs.
    """

    #: points planted to be memorised in training sets (:mod:`memlens.planted`); see plant()
    planting: Planting = Planting()

    def __init__(self, features: SparseFeatures, n_instances: int | None = None):
        if not isinstance(features, SparseFeatures):
            raise TypeError(f"features must be a SparseFeatures, got {type(features).__name__}")
        self.features = features
        self.n_instances = features.check_instances(n_instances)

    def plant(self, planting: Planting | None = None, **kw: int) -> Task:
        """Plant memorised points in this task's training sets (``Planting`` or its fields:
        ``private``, ``private_features``, ``repeats``, ``random_labels``); returns the task."""
        if planting is not None and kw:
            raise ValueError("give a Planting or its fields, not both")
        if planting is not None and not isinstance(planting, Planting):
            raise TypeError(f"planting must be a memlens.planted.Planting, got {planting!r}")
        self.planting = planting if planting is not None else Planting(**kw)
        return self

    def make_batch(self, f: Float[Tensor, "T inst feat"], seed: int) -> Batch:
        """The points (inputs, targets) for sparse features ``f``; ``seed`` seeds any labels."""
        raise NotImplementedError

    def model_kwargs(self) -> dict:
        """Constructor arguments a matching model needs (its input and output sizes)."""
        raise NotImplementedError

    def sample(self, T: int, seed: int = 0) -> Batch:
        """``T`` points per instance (with the task's planted points, marked in ``planted``)."""
        if self.planting:
            self.planting.check(T, self.features.n_features)
        f = self.features.sample(T, self.n_instances, seed)
        return self.planting.apply(self, f, seed) if self.planting else self.make_batch(f, seed)

    def split(self, T: int, seed: int = 0, n_test: int = 2048) -> tuple[Batch, Batch]:
        """A training set of ``T`` points and a fresh test set of ``n_test`` points."""
        if isinstance(n_test, bool) or not isinstance(n_test, (int, np.integer)) or n_test <= 0:
            raise ValueError(f"n_test (test-set size) must be a positive int, got {n_test!r}")
        train = self.sample(T, seed)
        test = self.make_batch(
            self.features.sample(n_test, self.n_instances, mix_seed(seed, 77)), mix_seed(seed, 78)
        )
        return train, test

    def batches(self, batch_size: int, seed: int = 0) -> Iterator[Batch]:
        """An infinite stream of fresh batches (its arguments are checked when it is called)."""
        features = self.features.batches(batch_size, seed, self.n_instances)

        def stream() -> Iterator[Batch]:
            for k, f in enumerate(features):
                yield self.make_batch(f, mix_seed(seed, 3, k))

        return stream()


class EmbeddedTask(Task):
    """Base of tasks whose input is the features seen through a fixed random embedding,
    ``r = E f`` with ``E`` of shape ``[inst, d_model, feat]`` (one per instance, unit columns),
    so that with ``n_features > d_model`` the features sit in superposition."""

    def __init__(
        self, features: SparseFeatures, d_model: int, n_instances: int | None = None, seed: int = 0
    ):
        super().__init__(features, n_instances)
        if isinstance(d_model, bool) or not isinstance(d_model, (int, np.integer)) or d_model <= 0:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        if features.n_features <= d_model:
            raise ValueError(
                f"the embedding needs n_features > d_model so features sit in superposition; got "
                f"n_features={features.n_features}, d_model={d_model}"
            )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed (the embedding seed) must be an int, got {seed!r}")
        self.d_model = int(d_model)
        self.embed_seed = int(seed)
        gens = instance_generators(seed, self.n_instances, 5)
        E = torch.stack([torch.randn(d_model, features.n_features, generator=g) for g in gens])
        self.E: Float[Tensor, "inst d_model feat"] = E / E.norm(dim=1, keepdim=True)

    def embed(self, f: Float[Tensor, "batch inst feat"]) -> Float[Tensor, "batch inst d_model"]:
        return torch.einsum("imf,bif->bim", self.E.to(f.device), f)
