"""Shared trained models for the probe tests (session scoped so each trains once)."""

from __future__ import annotations

import pytest

import memlens as ml
from toy_models import Bottleneck

PENTAGON_INSTANCES = 5


@pytest.fixture(scope="session")
def pentagon() -> Bottleneck:
    """TMS reference point: n=5, m=2, uniform importance, 1-S=0.05, infinite data (fresh batches of
    1,024), AdamW lr 1e-3 constant. Several instances train at once; tests require a majority."""
    model = Bottleneck(n_features=5, d_hidden=2, n_instances=PENTAGON_INSTANCES, seed=0)
    data = ml.SparseFeatures(5, feature_probability=0.05)
    ml.train(model, data, steps=3000, lr=1e-3, batch_size=1024, schedule="constant", progress=False)
    return model.eval()
