"""Per-(group, chain) random streams of the sampler, read in blocks (see :mod:`.sgld`)."""

from __future__ import annotations

import torch
from torch import Tensor

from memlens.data import Batch
from memlens.data import mix_seed as _mix

__all__ = ["Streams", "BLOCK_ELEMENTS", "minibatch_stream", "pair_noise"]

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

    def take(self, K: int) -> Tensor:
        """The next ``K`` steps' draws ``[K, copies, *shape]`` (what ``K`` calls of ``next``
        return, stacked): a view of the current block where it holds them all."""
        if self.pos == self.K:
            self._refill()
        if self.pos + K <= self.K:
            out = self.block[self.pos : self.pos + K]
            self.pos += K
            return out
        return torch.stack([self.next() for _ in range(K)])

    def _refill(self) -> None:
        # each generator fills its own contiguous slice in place (the values torch.randn /
        # torch.rand would return), and the block is the [K, copies, ...] view of that buffer:
        # no stacked copy (blocks are read through strides, e.g. by pair_noise)
        buf = torch.empty(len(self.gens), self.K, *self.shape, device=self.device)
        for g, part in zip(self.gens, buf, strict=True):
            if self.normal:
                part.normal_(generator=g)
            else:
                part.uniform_(generator=g)
        block = buf.transpose(0, 1)
        if self.index is not None:
            block = block.index_select(1, self.index)
        self.block = block if self.post is None else self.post(block)
        self.pos = 0

    def next(self) -> Tensor:
        if self.pos == self.K:
            self._refill()
        out = self.block[self.pos]
        self.pos += 1
        return out


def minibatch_stream(data: Batch, plan, groups, E: int, n_inst: int, steps: int):
    """A callable returning this step's minibatch of every row (one index_select per step)."""
    dev, b = data.inputs.device, plan.batch_size
    col = (torch.arange(E, device=dev) % n_inst)[:, None]
    n_pts = data.n_points().to(dev, torch.float32)[col[:, 0]][:, None]

    def flat_rows(u: Tensor) -> Tensor:
        """Uniforms [K, copies, batch, inst] -> rows of the flattened training set
        [K, E * batch], instance-major (see expand_batch)."""
        u = u.transpose(2, 3).reshape(u.shape[0], E, b)
        idx = (u * n_pts).long().clamp_max(len(data) - 1) * n_inst + col
        return idx.reshape(u.shape[0], E * b)

    picks = Streams(plan.seed, 43, groups, plan.chains, (b, n_inst), dev, False, steps,
                     post=flat_rows)  # fmt: skip
    flat_x = data.inputs.reshape(-1, *data.inputs.shape[2:])
    flat_y = None if data.targets is None else data.targets.reshape(-1, *data.targets.shape[2:])

    def next_batch() -> Batch:
        idx = picks.next()
        x = flat_x.index_select(0, idx).view(E, b, *flat_x.shape[1:]).transpose(0, 1)
        tg = None
        if flat_y is not None:
            tg = flat_y.index_select(0, idx).view(E, b, *flat_y.shape[1:]).transpose(0, 1)
        return Batch(x, tg, None, None)

    return next_batch


def pair_noise(prev: Tensor, xi: Tensor) -> Tensor:
    """The Leimkuhler-Matthews noise of ``K`` steps from their raw noise ``xi [K, *row]`` (any
    strides): ``(ξ_{k-1} + ξ_k) / 2``, contiguous, with ``prev`` ``[*row]`` the raw noise before
    the block (updated in place to the block's last)."""
    out = torch.empty(xi.shape, dtype=xi.dtype, device=xi.device)  # contiguous, whatever xi's
    torch.add(xi[1:], xi[:-1], out=out[1:])
    torch.add(xi[0], prev, out=out[0])
    out.mul_(0.5)
    prev.copy_(xi[-1])
    return out
