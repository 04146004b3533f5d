"""Seeds: independent, reproducible random streams derived from integer tuples."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

__all__ = ["mix_seed", "mix_seeds", "instance_generators"]


def mix_seed(*ints: int) -> int:
    """A 63-bit seed from a tuple of ints (numpy's SeedSequence, so nearby seeds are unrelated)."""
    return _mixed(tuple(int(i) for i in ints))


@lru_cache(maxsize=1 << 16)
def _mixed(ints: tuple[int, ...]) -> int:  # SeedSequence costs ~50 µs; samplers ask for hundreds
    return int(
        np.random.SeedSequence([int(i) & 0xFFFFFFFF for i in ints]).generate_state(
            2, dtype=np.uint64
        )[0]
        >> np.uint64(1)
    )


# numpy's SeedSequence (pool of 4 uint32 words), its constants
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R, _M32 = 0xCA01F9DD, 0x4973F715, 0xFFFFFFFF


def mix_seeds(rows: list[tuple[int, ...]]) -> list[int]:
    """``[mix_seed(*r) for r in rows]`` (equal-length tuples), with numpy's SeedSequence hashing
    done once over all rows as uint32 array arithmetic: a sampler asks for hundreds of seeds per
    call (one per noise stream), and each SeedSequence costs ~25 µs of Python."""
    if not rows:
        return []
    if len({len(r) for r in rows}) != 1:
        raise ValueError("mix_seeds needs tuples of one length")
    words = np.array([[int(i) & _M32 for i in r] for r in rows], dtype=np.uint32)
    n, length = words.shape
    hc = _INIT_A

    def hashmix(v):
        nonlocal hc
        v = v ^ np.uint32(hc)
        hc = (hc * _MULT_A) & _M32
        v = v * np.uint32(hc)
        return v ^ (v >> np.uint32(16))

    def mix(x, y):
        r = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
        return r ^ (r >> np.uint32(16))

    zero = np.zeros(n, dtype=np.uint32)
    pool = [hashmix(words[:, i] if i < length else zero) for i in range(4)]
    for src in range(4):
        for dst in range(4):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(4, length):
        for dst in range(4):
            pool[dst] = mix(pool[dst], hashmix(words[:, src]))
    out, hb = [], _INIT_B
    for k in range(2):  # the first uint64 of generate_state: words 0 (low) and 1 (high)
        v = pool[k] ^ np.uint32(hb)
        hb = (hb * _MULT_B) & _M32
        v = v * np.uint32(hb)
        out.append(v ^ (v >> np.uint32(16)))
    state = out[0].astype(np.uint64) | (out[1].astype(np.uint64) << np.uint64(32))
    return [int(x) >> 1 for x in state.tolist()]


def instance_generators(seed: int, n_instances: int, *salt: int) -> list[torch.Generator]:
    """One independent CPU generator per instance, derived from ``(seed, *salt, instance)``."""
    return [torch.Generator().manual_seed(mix_seed(seed, *salt, i)) for i in range(n_instances)]
