"""``TrainConfig``: the settings of :func:`memlens.train`, one frozen, validated dataclass.

It is the one place training settings are checked: ``train`` (keyword or ``config=`` form), sweeps
(each cell's ``train`` settings), presets and the CLI all build a ``TrainConfig``, and a bad field
is refused once, here, naming it. It round-trips through JSON (``to_dict`` / ``from_dict``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from memlens import validate

__all__ = ["TrainConfig", "SCHEDULES", "MAX_LR"]

SCHEDULES = ("cosine", "constant")
#: AdamW's first step divides lr by 1 - beta1 = 0.1 in float32: a larger lr overflows inside it
MAX_LR = 3.4028234663852886e38 * 0.1


def _positive_int(name: str, v: Any, what: str = "") -> None:
    if not validate.is_int(v) or v <= 0:
        raise ValueError(f"{name}{what} must be a positive int, got {v!r}")


@dataclass(frozen=True)
class TrainConfig:
    """How :func:`memlens.train` trains.

    Attributes:
        steps: optimizer steps. lr: peak learning rate. weight_decay: AdamW's decoupled decay.
        warmup: steps of linear warmup (at most ``steps``); then cosine decay to 0
            (``schedule="cosine"``) or a constant rate (``schedule="constant"``).
        batch_size: points per instance per step; None means full batch.
        seed: seeds the minibatch stream (initialisation is seeded by the model's config).
        l1: coefficient of an L1 penalty on the activations at ``l1_hook`` (None: the model's
            representation hook).
    """

    steps: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 0
    schedule: str = "cosine"
    batch_size: int | None = None
    seed: int = 0
    l1: float = 0.0
    l1_hook: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse a bad field with a ``ValueError`` naming it, its value and what is allowed."""
        _positive_int("steps", self.steps)
        validate.real("lr", self.lr, 0, MAX_LR, low_open=True)
        validate.real("weight_decay", self.weight_decay, 0)
        if not validate.is_int(self.warmup) or not 0 <= self.warmup <= self.steps:
            raise ValueError(
                f"warmup must be an int in [0, steps={self.steps}], got {self.warmup!r}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.batch_size is not None:
            _positive_int("batch_size", self.batch_size, " (None: full batch)")
        validate.seed("seed", self.seed)
        validate.real("l1", self.l1, 0)
        if self.l1_hook is not None and not isinstance(self.l1_hook, str):
            raise ValueError(f"l1_hook must be a hook name or None, got {self.l1_hook!r}")

    @classmethod
    def of(cls, config: TrainConfig | Mapping[str, Any] | None = None, **settings: Any):
        """A config from a ``TrainConfig`` or a mapping, with ``settings`` replacing its fields;
        an unknown field is refused, naming it and the known ones."""
        base = config.to_dict() if isinstance(config, TrainConfig) else dict(config or {})
        if config is not None and not isinstance(config, (TrainConfig, Mapping)):
            raise TypeError(f"config must be a memlens.TrainConfig, got {type(config).__name__}")
        merged = {**base, **settings}
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(merged) - set(names))
        if unknown:
            raise TypeError(f"unknown training setting(s) {unknown}; known: {names}")
        if "steps" not in merged:
            raise TypeError("training needs steps (the number of optimizer steps)")
        return cls(**merged)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        return cls.of(d)
