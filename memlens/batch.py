"""``Batch``: the inputs, targets and bookkeeping of one set of points, ``[batch, inst, ...]``.

Re-exported by :mod:`memlens.data` (``from memlens.data import Batch`` keeps working).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int, Shaped
from torch import Tensor

__all__ = ["Batch", "as_batch"]


@dataclass
class Batch:
    """Inputs and targets for one set of points, ``[batch, inst, ...]``.

    ``targets=None`` means the task is autoencoding (targets are the inputs). ``features`` holds
    the underlying sparse features when the inputs are an embedding of them. ``lengths`` marks
    padding: instance ``i`` uses only its first ``lengths[i]`` rows (used by sweeps that pack
    data sets of different sizes into one model). ``planted`` is True on the points planted to be
    memorised (:mod:`memlens.planted`: private features, repeats, random labels), the ground
    truth the memorisation detectors are scored against; None when nothing was planted.
    """

    inputs: Shaped[Tensor, "batch inst d_in"]  # floats, or token ids (memlens.stacked models)
    targets: Tensor | None = None
    features: Float[Tensor, "batch inst feat"] | None = None
    lengths: Int[Tensor, " inst"] | None = None
    planted: Bool[Tensor, "batch inst"] | None = None

    @property
    def target(self) -> Tensor:
        return self.inputs if self.targets is None else self.targets

    @property
    def n_instances(self) -> int:
        return self.inputs.shape[1]

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def mask(self) -> Tensor | None:
        """``[batch, inst]`` 1.0 on real rows, 0.0 on padding; None when there is no padding."""
        if self.lengths is None:
            return None
        rows = torch.arange(len(self), device=self.inputs.device)[:, None]
        return (rows < self.lengths.to(self.inputs.device)[None, :]).to(self.inputs.dtype)

    def gather(self, idx: Int[Tensor, "b inst"]) -> Batch:
        """Rows ``idx[:, i]`` of instance ``i``, for every instance."""

        def g(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            index = idx.view(*idx.shape, *([1] * (t.ndim - 2))).expand(-1, -1, *t.shape[2:])
            return torch.gather(t, 0, index.to(t.device))

        return Batch(g(self.inputs), g(self.targets), g(self.features), None, g(self.planted))

    def instances(self, idx: Sequence[int] | Tensor) -> Batch:
        """Keep only the listed instances."""
        idx = torch.as_tensor(idx, dtype=torch.long)

        def s(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[:, idx.to(t.device)]

        lengths = None if self.lengths is None else self.lengths[idx.to(self.lengths.device)]
        return Batch(s(self.inputs), s(self.targets), s(self.features), lengths, s(self.planted))

    def to(self, device: torch.device | str) -> Batch:
        def m(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return Batch(
            m(self.inputs), m(self.targets), m(self.features), m(self.lengths), m(self.planted)
        )

    def n_points(self) -> Tensor:
        """``[inst]`` number of real points per instance."""
        if self.lengths is not None:
            return self.lengths
        return torch.full((self.n_instances,), len(self), dtype=torch.long)


def as_batch(data: Tensor | Batch) -> Batch:
    if isinstance(data, Batch):
        return data
    if isinstance(data, torch.Tensor):
        return Batch(inputs=data, targets=None, features=data)
    raise TypeError(
        f"expected a Tensor [batch, inst, feat] or a memlens.data.Batch, got {type(data)}"
    )
