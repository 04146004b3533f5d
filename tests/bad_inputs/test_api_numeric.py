"""Numeric fields over their whole bad range (Hypothesis): any non-positive, NaN or infinite lr,
any negative / NaN / inf weight_decay or l1, any sparsity outside [0, 1), any non-integral seed,
any bad step size, temperature or max_diffusion, is refused before work with the field named.
The good side is checked too, so a check cannot pass by refusing everything."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from refusal import assert_refused

import memlens as ml
from memlens.data import SparseFeatures
from memlens.sampling import SGLDConfig
from toy_models import Bottleneck

pytestmark = pytest.mark.user_errors
FAST = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

X = SparseFeatures(5, 0.5).sample(6, 2, seed=0)
nonfinite = st.sampled_from([math.nan, math.inf, -math.inf])
negative = st.floats(max_value=0, exclude_max=True, allow_nan=False, allow_infinity=False)
non_positive = negative | st.just(0.0) | st.just(-0.0) | st.integers(max_value=0)
not_a_number = st.text(max_size=5) | st.booleans() | st.none() | st.lists(st.floats(), max_size=2)


def fit(**kw):
    return ml.train(
        Bottleneck(n_features=5, d_hidden=2, n_instances=2), X, steps=3, progress=False, **kw
    )


@FAST
@given(v=non_positive | nonfinite | not_a_number | st.floats(min_value=1e38))
def test_train_lr(v, tmp_path):
    assert_refused(lambda: fit(lr=v), ValueError, r"\blr\b", tmp_path)


@FAST
@given(field=st.sampled_from(["weight_decay", "l1"]), v=negative | nonfinite | not_a_number)
def test_train_non_negative_fields(field, v, tmp_path):
    assert_refused(lambda: fit(**{field: v}), ValueError, field, tmp_path)


@FAST
@given(v=st.floats(allow_nan=True) | st.text(max_size=3) | st.booleans() | st.none())
def test_seeds_must_be_ints(v, tmp_path):
    """No float is a seed (1.0 neither: a seed is never truncated), nor a bool, string or None."""
    assert_refused(lambda: fit(seed=v), ValueError, "seed", tmp_path)
    assert_refused(lambda: SparseFeatures(5, 0.5).sample(4, 2, seed=v), ValueError, "seed")


@FAST
@given(s=st.floats(min_value=1.0) | negative | nonfinite | st.text(max_size=3) | st.booleans())
def test_sparsity_outside_0_1(s):
    assert_refused(lambda: SparseFeatures(4, s), ValueError, "sparsity")


@FAST
@given(s=st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_sparsity_inside_0_1_is_accepted(s):
    assert SparseFeatures(4, s).sample(2, 1).shape == (2, 1, 4)


@FAST
@given(
    field=st.sampled_from(["step_size", "max_diffusion", "localization", "blowup"]),
    v=negative | nonfinite | not_a_number,
)
def test_sampler_fields(field, v, tmp_path):
    model = Bottleneck(n_features=5, d_hidden=2, n_instances=2)
    kw = {"step_size": 1e-3, "chains": 2, "draws": 4, "progress": False, field: v}
    assert_refused(
        lambda: ml.temper(model, X, [1.0], **kw), (ValueError, TypeError), field, tmp_path
    )


@FAST
@given(t=st.lists(non_positive | nonfinite, min_size=1, max_size=3))
def test_temperatures(t, tmp_path):
    model = Bottleneck(n_features=5, d_hidden=2, n_instances=2)
    assert_refused(
        lambda: ml.temper(model, X, t, step_size=1e-3, progress=False),
        ValueError,
        "temperatures",
        tmp_path,
    )


@FAST
@given(v=st.floats(min_value=1e-6, max_value=10.0))
def test_good_sampler_values_are_accepted(v):
    cfg = SGLDConfig(step_size=v, max_diffusion=v, localization=v)
    assert cfg.step_size == pytest.approx(v) and cfg.max_diffusion == pytest.approx(v)


@FAST
@given(idx=st.tuples(st.integers(0, 5), st.integers(0, 1), st.integers(0, 4)), bad=nonfinite)
def test_nan_anywhere_in_the_data_is_named(idx, bad, tmp_path):
    """Wherever the NaN/inf sits, train names the tensor and that exact index."""
    x = X.clone()
    x[idx] = bad
    assert_refused(
        lambda: ml.train(
            Bottleneck(n_features=5, d_hidden=2, n_instances=2), x, steps=3, progress=False
        ),
        ValueError,
        rf"data inputs.*\[{idx[0]}, {idx[1]}, {idx[2]}\]",
        tmp_path,
    )
    assert bool(torch.isfinite(X).all())
