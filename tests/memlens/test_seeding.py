"""Seeds: ``mix_seeds`` (the sampler's batched seed mixing) must give numpy's SeedSequence
exactly, since every noise stream, minibatch key and dispersed start is seeded from it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memlens.seeding import mix_seed, mix_seeds


def seed_sequence(*ints: int) -> int:
    """The definition, straight from numpy: the first uint64 of the state, shifted to 63 bits."""
    words = [int(i) & 0xFFFFFFFF for i in ints]
    return int(np.random.SeedSequence(words).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


ints = st.one_of(
    st.integers(0, 3), st.integers(-(2**63), 2**63 - 1), st.sampled_from([2**32 - 1, 2**31, -1])
)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 7).flatmap(lambda n: st.lists(st.tuples(*[ints] * n), min_size=1,
                                                     max_size=20)))  # fmt: skip
def test_mix_seeds_is_numpys_seed_sequence(rows):
    # tuples of 1-7 words: pool-filling (< 4), exact (4) and extra-entropy (> 4) paths
    assert mix_seeds(rows) == [seed_sequence(*r) for r in rows]
    assert mix_seeds(rows) == [mix_seed(*r) for r in rows]


def test_mix_seeds_refuses_ragged_rows_and_accepts_none():
    assert mix_seeds([]) == []
    with pytest.raises(ValueError, match="one length"):
        mix_seeds([(1, 2), (1, 2, 3)])
