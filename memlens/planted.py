"""Planted memories: training points that only memorisation can fit, with the truth known by
construction, as task options every model's data recipe understands.

A spec (or ``Task.plant(...)``) may plant, among the ``T`` training points of each instance:

* ``plant_private = P`` points with **private features**: ``plant_private_features = k`` features
  each (chosen at random, distinct across points) that are active, at values in U[0.5, 1), in that
  point and in no other training point (they are zeroed everywhere else in the training set);
* ``plant_repeats = R`` copies of **one repeated point** (R rows of the T are the same point;
  Henighan et al. and Jermyn: a repeated point is memorised once R is large against T/n);
* ``plant_random_labels = L`` points whose integer label (e.g. the final layer's rule token) is
  replaced by a **random other label** drawn from the labels of the training set; for a task with
  vector targets (e.g. the MLP block's features), whose target is replaced by **another training
  point's target** (a random lookup ``input -> someone else's output``).

The planted rows are disjoint and chosen at random per instance from the data seed, so a
checkpoint whose recipe records these keys rebuilds the same planted set. The training
:class:`~memlens.data.Batch` carries ``planted [T, inst]`` (True on every planted row); test sets
are never planted. :func:`fit_check` says whether a trained model did fit its planted points: their
train loss against fresh points made the same way (the same private features on fresh points,
fresh points, fresh points with random labels), which the model never saw.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from memlens import validate
from memlens.seeding import instance_generators, mix_seed

if TYPE_CHECKING:  # pragma: no cover
    from memlens.batch import Batch
    from memlens.data import Task

__all__ = ["Planting", "PLANT_KEYS", "FitCheck", "fit_check"]

#: the spec keys of a planting, with their defaults (nothing planted)
PLANT_KEYS: dict[str, int] = {
    "plant_private": 0,
    "plant_private_features": 2,
    "plant_repeats": 0,
    "plant_random_labels": 0,
}


@dataclass(frozen=True)
class Planting:
    """What to plant in a training set (see the module docstring); all zero plants nothing."""

    private: int = 0
    private_features: int = 2
    repeats: int = 0
    random_labels: int = 0

    def __post_init__(self) -> None:
        for name in ("private", "repeats", "random_labels"):
            validate.integer(f"plant_{name}", getattr(self, name), 0)
        validate.integer("plant_private_features", self.private_features, 1)
        if self.repeats == 1:
            raise ValueError("plant_repeats must be 0 (none) or at least 2 copies, got 1")

    def __bool__(self) -> bool:
        return bool(self.private or self.repeats or self.random_labels)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Planting:
        return cls(**{k[len("plant_") :]: spec.get(k, d) for k, d in PLANT_KEYS.items()})

    def to_spec(self) -> dict[str, int]:
        return {f"plant_{k}": v for k, v in asdict(self).items()}

    @property
    def n_planted(self) -> int:
        return self.private + self.repeats + self.random_labels

    def check(self, T: int, n_features: int) -> None:
        """Refuse a planting that does not fit ``T`` points of ``n_features`` features."""
        if self.n_planted > T:
            raise ValueError(
                f"plant_private + plant_repeats + plant_random_labels = {self.n_planted} planted "
                f"points do not fit among T={T} training points"
            )
        if self.private * self.private_features > n_features:
            raise ValueError(
                f"plant_private x plant_private_features = "
                f"{self.private * self.private_features} private features exceed "
                f"n_features={n_features}"
            )

    # ------------------------------------------------------------------------------ choices
    def choices(self, T: int, n_features: int, n_instances: int, seed: int) -> list[dict]:
        """Per instance: the planted rows of each kind and the private features (deterministic in
        ``seed``): ``{"private": [P], "features": [P, k], "repeats": [R], "labels": [L]}``."""

        self.check(T, n_features)
        out = []
        for g in instance_generators(seed, n_instances, 31):
            rows = torch.randperm(T, generator=g)
            feats = torch.randperm(n_features, generator=g)[: self.private * self.private_features]
            a, b = self.private, self.private + self.repeats
            out.append(
                {
                    "private": rows[:a],
                    "features": feats.view(self.private, self.private_features),
                    "repeats": rows[a:b],
                    "labels": rows[b : b + self.random_labels],
                    "gen": g,
                }
            )
        return out

    def apply(self, task: Task, f: Tensor, seed: int) -> Batch:
        """The training batch of features ``f [T, inst, feat]`` with this planting in it."""
        T, n_inst, n_feat = f.shape
        f = f.clone()
        planted = torch.zeros(T, n_inst, dtype=torch.bool)
        choices = self.choices(T, n_feat, n_inst, seed)
        for i, c in enumerate(choices):
            if self.private:
                f[:, i, c["features"].flatten()] = 0.0
                vals = 0.5 + 0.5 * torch.rand(c["features"].shape, generator=c["gen"])
                f[c["private"][:, None], i, c["features"]] = vals
                planted[c["private"], i] = True
            if self.repeats:
                f[c["repeats"], i] = f[c["repeats"][0], i].clone()
                planted[c["repeats"], i] = True
        if self.private and task.features.normalize:
            f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        batch = task.make_batch(f, seed)
        if self.random_labels:
            batch.targets = _relabel(batch.targets, [c["labels"] for c in choices], choices)
            for i, c in enumerate(choices):
                planted[c["labels"], i] = True
        batch.planted = planted.to(batch.inputs.device)
        return batch


def _relabel(y: Tensor | None, rows: list[Tensor], choices: list[dict]) -> Tensor:
    if (
        y is None
        or (y.is_floating_point() and y.ndim != 3)
        or (not y.is_floating_point() and y.ndim != 2)
    ):
        raise ValueError(
            "plant_random_labels needs a task with integer labels [batch, inst] (e.g. the final "
            "layer's tokens) or target vectors [batch, inst, out] (e.g. the MLP block's); this "
            "task's targets are "
            f"{'the inputs' if y is None else f'{y.dtype} of shape {tuple(y.shape)}'}"
        )
    if y.is_floating_point():
        return _swap_targets(y, rows, choices)
    y = y.clone()
    for i, (r, c) in enumerate(zip(rows, choices, strict=True)):
        labels = torch.unique(y[:, i].cpu())
        if len(labels) < 2:
            raise ValueError("plant_random_labels needs at least two distinct labels in the set")
        for j in r.tolist():
            others = labels[labels != y[j, i].cpu()]
            y[j, i] = others[torch.randint(len(others), (1,), generator=c["gen"])].to(y.device)
    return y


def _swap_targets(y: Tensor, rows: list[Tensor], choices: list[dict]) -> Tensor:
    """Vector targets: each planted row gets the target of another (random) training point, one
    whose target is not zero and differs from the row's own."""
    out = y.clone()
    for i, (r, c) in enumerate(zip(rows, choices, strict=True)):
        for j in r.tolist():
            ok = ((y[:, i] != y[j, i]).any(-1) & (y[:, i] != 0).any(-1)).nonzero().flatten()
            if not len(ok):
                raise ValueError(
                    "plant_random_labels needs two training points with different targets"
                )
            out[j, i] = y[ok[torch.randint(len(ok), (1,), generator=c["gen"])], i]
    return out


# ------------------------------------------------------------------------------ fit check


@dataclass
class FitCheck:
    """Per instance and planted row: the trained model's loss on the planted point and on fresh
    controls made the same way (mean over ``n_fresh``). ``fitted`` is the fraction of planted
    points whose train loss is below half their control's."""

    kinds: list[list[str]]  # [inst][planted row]: "private", "repeat" or "label"
    rows: list[list[int]]
    planted_loss: list[list[float]]
    control_loss: list[list[float]]

    @property
    def fitted(self) -> list[float]:
        return [
            sum(p < 0.5 * c for p, c in zip(pl, cl, strict=True)) / max(len(pl), 1)
            for pl, cl in zip(self.planted_loss, self.control_loss, strict=True)
        ]

    def summary(self) -> str:
        lines = []
        for i, (k, p, c) in enumerate(
            zip(self.kinds, self.planted_loss, self.control_loss, strict=True)
        ):
            for kind in sorted(set(k)):
                sel = [j for j, x in enumerate(k) if x == kind]
                mp = sum(p[j] for j in sel) / len(sel)
                mc = sum(c[j] for j in sel) / len(sel)
                lines.append(
                    f"instance {i}: {len(sel)} {kind} point(s): train loss {mp:.3g} vs "
                    f"{mc:.3g} on fresh controls"
                )
        return "\n".join(lines)


@torch.no_grad()
def fit_check(model, task: Task, T: int, seed: int = 0, n_fresh: int = 16) -> FitCheck:
    """Did ``model`` fit the points ``task.plant(...)`` planted in its ``T``-point training set
    (seed ``seed``)? Compares each planted point's loss with fresh controls (module docstring)."""

    p = task.planting
    if not p:
        raise ValueError("the task plants nothing: set plant_private/plant_repeats/... first")
    train = task.sample(T, seed)
    own = model.per_example_loss(train.to(model.device)).cpu()  # [T, inst]
    n_feat = task.features.n_features
    choices = p.choices(T, n_feat, task.n_instances, seed)
    fresh_f = task.features.sample(n_fresh, task.n_instances, mix_seed(seed, 91))
    all_private = torch.cat([c["features"].flatten() for c in choices]).unique()
    kinds, rows, pl, cl = [], [], [], []
    for i, c in enumerate(choices):
        k_i, r_i, p_i, c_i = [], [], [], []
        for n, j in enumerate(c["private"].tolist()):
            f = fresh_f.clone()
            f[:, :, all_private] = 0.0
            f[:, i, c["features"][n]] = train.features[j, i, c["features"][n]].cpu()
            k_i.append("private")
            r_i.append(j)
            c_i.append(_mean_loss(model, task, f, seed, i))
        for j in c["repeats"].tolist():
            k_i.append("repeat")
            r_i.append(j)
            c_i.append(_mean_loss(model, task, fresh_f, seed, i))
        for j in c["labels"].tolist():
            k_i.append("label")
            r_i.append(j)
            c_i.append(_mean_loss(model, task, fresh_f, seed, i, relabel=True))
        p_i = [float(own[j, i]) for j in r_i]
        kinds.append(k_i), rows.append(r_i), pl.append(p_i), cl.append(c_i)
    return FitCheck(kinds, rows, pl, cl)


def _mean_loss(model, task: Task, f: Tensor, seed: int, i: int, relabel: bool = False) -> float:
    if task.features.normalize:
        f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b = task.make_batch(f, seed)
    if relabel and b.targets.is_floating_point():  # another fresh point's target vector
        b.targets = b.targets.roll(1, dims=0)
    elif relabel:
        g = torch.Generator().manual_seed(seed + 17)
        y = b.targets.clone()
        labels = torch.unique(y[:, i])
        for j in range(len(y)):
            others = labels[labels != y[j, i]]
            if len(others):
                y[j, i] = others[torch.randint(len(others), (1,), generator=g)]
        b.targets = y
    return float(model.per_example_loss(b.to(model.device))[:, i].mean())
