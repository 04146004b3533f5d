"""Seeds: independent, reproducible random streams derived from integer tuples."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

__all__ = ["mix_seed", "instance_generators"]


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


def instance_generators(seed: int, n_instances: int, *salt: int) -> list[torch.Generator]:
    """One independent CPU generator per instance, derived from ``(seed, *salt, instance)``."""
    return [torch.Generator().manual_seed(mix_seed(seed, *salt, i)) for i in range(n_instances)]
