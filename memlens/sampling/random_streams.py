"""The sampler's randomness (see :mod:`.sgld`): per-(group, chain) noise streams read in blocks,
and each chain's minibatch rows from a counter-based hash."""

from __future__ import annotations

import torch
from torch import Tensor

from memlens.data import Batch
from memlens.seeding import mix_seeds

__all__ = [
    "Streams",
    "BLOCK_ELEMENTS",
    "MinibatchRows",
    "hash32",
    "minibatch_rows",
    "minibatch_stream",
    "pair_noise",
]

#: noise / index block per chain: at most this many floats, so blocks stay cache-sized
BLOCK_ELEMENTS = 2**16


class Streams:
    """Per-(group, chain) generators of standard normals read in blocks of ``K`` steps (see the
    module docstring). ``next()`` returns this step's draw for every copy (arm x chain),
    ``[copies, *shape]``."""

    def __init__(self, seed: int, salt: int, groups: list[int], chains: int, shape: tuple, dev,
                 steps: int):  # fmt: skip
        per_step = 1
        for s in shape:
            per_step *= s
        self.K = max(1, min(steps, BLOCK_ELEMENTS // per_step))
        self.shape = shape
        keys = sorted(set(groups))
        self.gens = []
        for k in mix_seeds([(seed, salt, a, c) for a in keys for c in range(chains)]):
            g = torch.Generator(device=dev)
            g.manual_seed(k)
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
        # each generator fills its own contiguous slice in place (the values torch.randn would
        # return), and the block is the [K, copies, ...] view of that buffer: no stacked copy
        # (blocks are read through strides, e.g. by pair_noise)
        buf = torch.empty(len(self.gens), self.K, *self.shape, device=self.device)
        for g, part in zip(self.gens, buf, strict=True):
            part.normal_(generator=g)
        block = buf.transpose(0, 1)
        if self.index is not None:
            block = block.index_select(1, self.index)
        self.block = block
        self.pos = 0

    def next(self) -> Tensor:
        if self.pos == self.K:
            self._refill()
        out = self.block[self.pos]
        self.pos += 1
        return out


#: the row hash's constants (Wellons' low-bias 32-bit integer hash) and the golden-ratio stride
_H1, _H2, _GOLDEN, _M32 = 0x21F0AAAD, 0x735A2D97, 0x9E3779B9, 0xFFFFFFFF


def hash32(x: Tensor) -> Tensor:
    """A 32-bit integer hash of int64 tensors holding values in [0, 2³²): both multipliers are
    below 2³¹, so no product leaves int64 (the kernel computes the same in uint32)."""
    x = x ^ (x >> 16)
    x = (x * _H1) & _M32
    x = x ^ (x >> 15)
    x = (x * _H2) & _M32
    return x ^ (x >> 15)


class MinibatchRows:
    """Each copy's (arm x chain) minibatch of every step, as rows of the flattened training set,
    from a counter-based hash rather than a stateful generator, so a fused kernel computes them
    itself from the copy's key and the step number (no random numbers pass through memory).

    For copy ``c`` (key ``k0, k1`` from ``mix_seed(seed, salt, group, chain)``), step ``s`` and
    entry ``q = j · inst + i`` (point ``j`` of the minibatch, instance ``i``)::

        h = hash32(k0 ^ hash32(s ^ k1));  u = hash32(h + q · 0x9E3779B9)   (mod 2³²)
        row = min(⌊u · n_points[i] / 2³²⌋, T − 1) · inst + i

    a point drawn uniformly, with replacement, from instance ``i``'s ``n_points[i]`` points."""

    def __init__(self, seed: int, salt: int, groups: list[int], chains: int, batch: int,
                 n_points: Tensor, T: int, dev):  # fmt: skip
        mixed = mix_seeds([(seed, salt, a, c) for a in groups for c in range(chains)])
        keys = [[k & _M32, (k >> 32) & _M32] for k in mixed]
        self.keys = torch.tensor(keys, dtype=torch.int64, device=dev)  # [copies, 2]
        #: the same keys as signed int32 (the kernel reads them as uint32)
        self.keys32 = (self.keys - ((self.keys >> 31) << 32)).to(torch.int32).contiguous()
        n_inst = n_points.numel()
        self.batch, self.n_inst, self.T = batch, n_inst, T
        self.n_points = n_points.to(dev, torch.int64).contiguous()
        q = torch.arange(batch * n_inst, dtype=torch.int64, device=dev).view(batch, n_inst)
        self._q = (q * _GOLDEN) & _M32  # [b, inst]
        self._col = torch.arange(n_inst, dtype=torch.int64, device=dev)
        self.step = 0

    def take(self, K: int) -> int:
        """``s0``: the next ``K`` steps start at step ``s0`` (a kernel computes their rows from
        ``keys32`` and ``s0``; :meth:`rows` computes them here)."""
        s0 = self.step
        self.step += K
        return s0

    def rows(self, s0: int, K: int) -> Tensor:
        """Steps ``s0 .. s0 + K − 1``'s rows ``[K, E · b]``, instance-major within each copy (row
        ``e = copy · inst + i`` takes ``[e · b, (e + 1) · b)``), as :func:`expand_batch` numbers."""
        s = torch.arange(s0, s0 + K, dtype=torch.int64, device=self.keys.device) & _M32
        k0, k1 = self.keys[:, 0], self.keys[:, 1]
        h = hash32(k0[None, :] ^ hash32(s[:, None] ^ k1[None, :]))  # [K, copies]
        u = hash32((h[:, :, None, None] + self._q) & _M32)  # [K, copies, b, inst]
        t = ((u * self.n_points) >> 32).clamp_max(self.T - 1)
        idx = t * self.n_inst + self._col
        return idx.transpose(2, 3).reshape(K, -1)


def minibatch_stream(data: Batch, plan, groups, E: int, n_inst: int):
    """A callable returning this step's minibatch of every row (one index_select per step), the
    points :class:`MinibatchRows` picks."""
    dev, b = data.inputs.device, plan.batch_size
    made: list[MinibatchRows] = []  # built on first use (a fused kernel picks its own rows)
    flat_x = data.inputs.reshape(-1, *data.inputs.shape[2:])
    flat_y = None if data.targets is None else data.targets.reshape(-1, *data.targets.shape[2:])

    def next_batch() -> Batch:
        if not made:
            made.append(minibatch_rows(data, plan, groups))
        picks = made[0]
        idx = picks.rows(picks.take(1), 1)[0].to(dev)
        x = flat_x.index_select(0, idx).view(E, b, *flat_x.shape[1:]).transpose(0, 1)
        tg = None
        if flat_y is not None:
            tg = flat_y.index_select(0, idx).view(E, b, *flat_y.shape[1:]).transpose(0, 1)
        return Batch(x, tg, None, None)

    return next_batch


def minibatch_rows(data: Batch, plan, groups) -> MinibatchRows:
    """The run's :class:`MinibatchRows` (salt 43, per group and chain)."""
    return MinibatchRows(plan.seed, 43, groups, plan.chains, plan.batch_size,
                         data.n_points(), len(data), data.inputs.device)  # fmt: skip


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
