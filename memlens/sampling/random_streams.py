"""Per-(group, chain) random streams of the sampler, read in blocks (see :mod:`.sgld`)."""

from __future__ import annotations

import torch
from torch import Tensor

from memlens.data import mix_seed as _mix

__all__ = ["Streams", "BLOCK_ELEMENTS"]

#: noise / index block per chain: at most this many floats, so blocks stay cache-sized
BLOCK_ELEMENTS = 2**16


class Streams:
    """Per-(group, chain) generators read in blocks of ``K`` steps (see the module docstring).
    ``next()`` returns this step's draw for every copy (arm x chain), ``[copies, *shape]``, passed
    through ``post`` (applied once per block, to the whole block ``[K, copies, *shape]``)."""

    def __init__(self, seed: int, salt: int, groups: list[int], chains: int, shape: tuple, dev,
                 normal: bool, steps: int, post=None):  # fmt: skip
        per_step = 1
        for s in shape:
            per_step *= s
        self.K = max(1, min(steps, BLOCK_ELEMENTS // per_step))
        self.shape, self.normal, self.post = shape, normal, post
        keys = sorted(set(groups))
        self.gens = []
        for a in keys:
            for c in range(chains):
                g = torch.Generator(device=dev)
                g.manual_seed(_mix(seed, salt, a, c))
                self.gens.append(g)
        rank = {a: k for k, a in enumerate(keys)}
        idx = [rank[a] * chains + c for a in groups for c in range(chains)]
        shared = len(keys) < len(groups)
        self.index = torch.tensor(idx, device=dev) if shared else None
        self.device = dev
        self.block: Tensor | None = None
        self.pos = self.K

    def next(self) -> Tensor:
        if self.pos == self.K:
            draw = torch.randn if self.normal else torch.rand
            block = torch.stack(
                [draw(self.K, *self.shape, generator=g, device=self.device) for g in self.gens], 1
            )
            if self.index is not None:
                block = block.index_select(1, self.index)
            self.block = block if self.post is None else self.post(block)
            self.pos = 0
        out = self.block[self.pos]
        self.pos += 1
        return out
